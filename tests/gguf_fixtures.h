/*
 * gguf_fixtures.h - a tiny GGUF byte builder for tests and fuzz seeds.
 *
 * Builds files byte by byte (independently of engine/gguf.c's writer), so
 * the reader can be tested against hand-made valid and malformed files. The
 * standard fixture records where each interesting field sits, so a test can
 * patch one field and expect one specific rejection.
 */
#ifndef MOE_GGUF_FIXTURES_H
#define MOE_GGUF_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *p;
    size_t n, cap;
} fx_buf;

void fx_free(fx_buf *b);
void fx_raw(fx_buf *b, const void *data, size_t n);
void fx_u8(fx_buf *b, uint8_t v);
void fx_u16(fx_buf *b, uint16_t v);
void fx_u32(fx_buf *b, uint32_t v);
void fx_u64(fx_buf *b, uint64_t v);
void fx_str(fx_buf *b, const char *s);
void fx_pad(fx_buf *b, size_t align);
/* Overwrite a field at offset off (little-endian). */
void fx_patch_u32(fx_buf *b, size_t off, uint32_t v);
void fx_patch_u64(fx_buf *b, size_t off, uint64_t v);

#define FX_N_TENSORS 3

/* Offsets of fields in the standard fixture. */
typedef struct {
    size_t magic, version, n_tensors, n_kv;
    size_t key0_len;           /* length of the first key's name */
    size_t align_type, align_val;
    size_t u8_type;            /* value type of test.u8 */
    size_t bool_val;           /* value of test.bool */
    size_t str_len;            /* length of test.str's value */
    size_t arr_type, arr_len;  /* element type and length of test.arr_i32 */
    size_t arr_str_len0;       /* length of test.arr_str element 0 */
    size_t arr_bool_val1;      /* element 1 of test.arr_bool */
    size_t t_name_len[FX_N_TENSORS], t_ndims[FX_N_TENSORS];
    size_t t_ne[FX_N_TENSORS][4], t_type[FX_N_TENSORS], t_off[FX_N_TENSORS];
    size_t header_end;         /* end of the tensor infos */
    size_t data_start;
    size_t data_end;           /* end of the last tensor's bytes */
} fx_marks;

typedef struct {
    uint32_t version;          /* 0 = 3 */
    uint32_t alignment;        /* 0 = no general.alignment key (32) */
    int dup_key;               /* repeat test.u8 as the last key */
    int dup_tensor;            /* name tensor 2 like tensor 0 */
    int nest_depth;            /* >0: add test.deep, arrays nested this deep */
    int tensor_type1;          /* type of tensor 1: 0 = q8_0 (8) */
} fx_opts;

/* The standard fixture: 3 tensors (f32 [4,3], q8_0 [64,2], f16 [8]) and
 * keys of every value type, including string, nested and empty arrays. */
void fx_standard(fx_buf *b, fx_marks *m, const fx_opts *o);
/* Number of keys fx_standard writes with these options. */
uint64_t fx_standard_n_kv(const fx_opts *o);

#endif
