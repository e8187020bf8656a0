/*
 * gguf_fixtures.c - hand-made GGUF files for the reader's tests and the fuzz
 * seeds. Uses quant.h's block table only; not engine/gguf.c.
 *
 * Built with -DGGUF_FIXTURES_MAIN it is also `gguf_seeds DIR`, which writes
 * the fuzz seed corpus (see the fuzz-run rule in Makefile.am).
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf_fixtures.h"
#include "quant.h"

void fx_free(fx_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

void fx_raw(fx_buf *b, const void *data, size_t n)
{
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap - b->n < n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort(); /* test code: out of memory is fatal */
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, data, n);
    b->n += n;
}

void fx_u8(fx_buf *b, uint8_t v) { fx_raw(b, &v, 1); }
void fx_u16(fx_buf *b, uint16_t v) { fx_raw(b, &v, 2); }
void fx_u32(fx_buf *b, uint32_t v) { fx_raw(b, &v, 4); }
void fx_u64(fx_buf *b, uint64_t v) { fx_raw(b, &v, 8); }

void fx_str(fx_buf *b, const char *s)
{
    fx_u64(b, strlen(s));
    fx_raw(b, s, strlen(s));
}

void fx_pad(fx_buf *b, size_t align)
{
    while (b->n % align)
        fx_u8(b, 0);
}

void fx_patch_u32(fx_buf *b, size_t off, uint32_t v) { memcpy(b->p + off, &v, 4); }
void fx_patch_u64(fx_buf *b, size_t off, uint64_t v) { memcpy(b->p + off, &v, 8); }

/* gguf value type ids (kept local: the fixtures do not use gguf.h) */
enum { T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR,
       T_U64, T_I64, T_F64 };

static void key(fx_buf *b, const char *k, uint32_t type)
{
    fx_str(b, k);
    fx_u32(b, type);
}

uint64_t fx_standard_n_kv(const fx_opts *o)
{
    return 21 + (o->alignment ? 1 : 0) + (o->dup_key ? 1 : 0) + (o->nest_depth > 0 ? 1 : 0);
}

void fx_standard(fx_buf *b, fx_marks *m, const fx_opts *o)
{
    static const fx_opts defaults = {0};
    fx_marks scratch;
    if (!o)
        o = &defaults;
    if (!m)
        m = &scratch;
    memset(m, 0, sizeof *m);
    size_t align = o->alignment && (o->alignment & (o->alignment - 1)) == 0
                       ? o->alignment : 32;
    int type1 = o->tensor_type1 ? o->tensor_type1 : MOE_TYPE_Q8_0;
    const char *names[FX_N_TENSORS] = {"tok.weight", "q.weight",
                                       o->dup_tensor ? "tok.weight" : "norm"};
    const int types[FX_N_TENSORS] = {MOE_TYPE_F32, type1, MOE_TYPE_F16};
    const int n_dims[FX_N_TENSORS] = {2, 2, 1};
    const int64_t ne[FX_N_TENSORS][4] = {{4, 3, 1, 1}, {256, 2, 1, 1}, {8, 1, 1, 1}};
    size_t nbytes[FX_N_TENSORS], offs[FX_N_TENSORS], off = 0;

    fx_raw(b, "GGUF", 4);
    m->version = b->n;
    fx_u32(b, o->version ? o->version : 3);
    m->n_tensors = b->n;
    fx_u64(b, FX_N_TENSORS);
    m->n_kv = b->n;
    fx_u64(b, fx_standard_n_kv(o));

    m->key0_len = b->n;
    key(b, "general.architecture", T_STR);
    fx_str(b, "llama");
    if (o->alignment) {
        fx_str(b, "general.alignment");
        m->align_type = b->n;
        fx_u32(b, T_U32);
        m->align_val = b->n;
        fx_u32(b, o->alignment);
    }
    fx_str(b, "test.u8");
    m->u8_type = b->n;
    fx_u32(b, T_U8);
    fx_u8(b, 200);
    key(b, "test.i8", T_I8);
    fx_u8(b, (uint8_t)-5);
    key(b, "test.u16", T_U16);
    fx_u16(b, 65535);
    key(b, "test.i16", T_I16);
    fx_u16(b, (uint16_t)-300);
    key(b, "test.u32", T_U32);
    fx_u32(b, 4000000000u);
    key(b, "test.i32", T_I32);
    fx_u32(b, (uint32_t)-70000);
    key(b, "test.f32", T_F32);
    float f = 0.25f;
    fx_raw(b, &f, 4);
    key(b, "test.bool", T_BOOL);
    m->bool_val = b->n;
    fx_u8(b, 1);
    key(b, "test.u64", T_U64);
    fx_u64(b, 0xfedcba9876543210ull);
    key(b, "test.i64", T_I64);
    fx_u64(b, (uint64_t)-5000000000ll);
    key(b, "test.f64", T_F64);
    double d = -1.5;
    fx_raw(b, &d, 8);
    key(b, "test.str", T_STR);
    m->str_len = b->n;
    fx_str(b, "h\xc3\xa9llo");
    key(b, "test.empty_str", T_STR);
    fx_str(b, "");
    key(b, "test.arr_i32", T_ARR);
    m->arr_type = b->n;
    fx_u32(b, T_I32);
    m->arr_len = b->n;
    fx_u64(b, 3);
    for (int32_t i = 1; i <= 3; i++)
        fx_u32(b, (uint32_t)(i * -7));
    key(b, "test.arr_str", T_ARR);
    fx_u32(b, T_STR);
    fx_u64(b, 3);
    m->arr_str_len0 = b->n;
    fx_str(b, "a");
    fx_str(b, "");
    fx_str(b, "ccc");
    key(b, "test.arr_bool", T_ARR);
    fx_u32(b, T_BOOL);
    fx_u64(b, 2);
    fx_u8(b, 0);
    m->arr_bool_val1 = b->n;
    fx_u8(b, 1);
    key(b, "test.arr_empty", T_ARR);
    fx_u32(b, T_F32);
    fx_u64(b, 0);
    key(b, "test.arr_f64", T_ARR);
    fx_u32(b, T_F64);
    fx_u64(b, 2);
    d = 3.0;
    fx_raw(b, &d, 8);
    d = -0.0;
    fx_raw(b, &d, 8);
    /* [[7, 8] (uint16), ["x"], [[]] (array of one empty u64 array)] */
    key(b, "test.nested", T_ARR);
    fx_u32(b, T_ARR);
    fx_u64(b, 3);
    fx_u32(b, T_U16);
    fx_u64(b, 2);
    fx_u16(b, 7);
    fx_u16(b, 8);
    fx_u32(b, T_STR);
    fx_u64(b, 1);
    fx_str(b, "x");
    fx_u32(b, T_ARR);
    fx_u64(b, 1);
    fx_u32(b, T_U64);
    fx_u64(b, 0);
    key(b, "test.last", T_U32);
    fx_u32(b, 42);
    if (o->nest_depth > 0) {
        key(b, "test.deep", T_ARR);
        for (int k = 1; k < o->nest_depth; k++) {
            fx_u32(b, T_ARR);
            fx_u64(b, 1);
        }
        fx_u32(b, T_U8);
        fx_u64(b, 1);
        fx_u8(b, 9);
    }
    if (o->dup_key) {
        key(b, "test.u8", T_U8);
        fx_u8(b, 1);
    }

    for (int t = 0; t < FX_N_TENSORS; t++) {
        int64_t rows = ne[t][1] * ne[t][2] * ne[t][3];
        nbytes[t] = (size_t)(ne[t][0] / quant_block_elems((moe_type)types[t])) *
                    quant_block_bytes((moe_type)types[t]) * (size_t)rows;
        offs[t] = off;
        off = (off + nbytes[t] + align - 1) / align * align;
        m->t_name_len[t] = b->n;
        fx_str(b, names[t]);
        m->t_ndims[t] = b->n;
        fx_u32(b, (uint32_t)n_dims[t]);
        for (int k = 0; k < n_dims[t]; k++) {
            m->t_ne[t][k] = b->n;
            fx_u64(b, (uint64_t)ne[t][k]);
        }
        m->t_type[t] = b->n;
        fx_u32(b, (uint32_t)types[t]);
        m->t_off[t] = b->n;
        fx_u64(b, offs[t]);
    }
    m->header_end = b->n;
    fx_pad(b, align);
    m->data_start = b->n;
    for (int t = 0; t < FX_N_TENSORS; t++) {
        while (b->n < m->data_start + offs[t])
            fx_u8(b, 0);
        for (size_t k = 0; k < nbytes[t]; k++)
            fx_u8(b, (uint8_t)(k * 31 + (size_t)t * 7 + 1));
    }
    m->data_end = b->n;
    fx_pad(b, align);
}

#ifdef GGUF_FIXTURES_MAIN
/* gguf_seeds DIR: write the fuzz seed corpus. */
static void put(const char *dir, const char *name, const fx_buf *b)
{
    char path[4096];
    FILE *fp;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    fp = fopen(path, "wb");
    if (!fp || fwrite(b->p, 1, b->n, fp) != b->n || fclose(fp) != 0) {
        perror(path);
        exit(1);
    }
}

int main(int argc, char **argv)
{
    static const int types[] = {MOE_TYPE_F32, MOE_TYPE_F16, MOE_TYPE_BF16,
                                MOE_TYPE_Q4_0, MOE_TYPE_Q4_1, MOE_TYPE_Q5_0,
                                MOE_TYPE_Q5_1, MOE_TYPE_Q8_0, MOE_TYPE_Q2_K,
                                MOE_TYPE_Q3_K, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K,
                                MOE_TYPE_Q6_K, MOE_TYPE_Q8_K};
    char name[64];
    int n = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        fx_opts o = {0};
        fx_buf b = {0};
        o.tensor_type1 = types[i];
        if (!quant_type_supported(types[i]))
            continue;
        fx_standard(&b, NULL, &o);
        snprintf(name, sizeof name, "type-%s.gguf", quant_type_name(types[i]));
        put(argv[1], name, &b);
        fx_free(&b);
        n++;
    }
    const fx_opts variants[] = {
        {.version = 2}, {.alignment = 64}, {.alignment = 32}, {.alignment = 1},
        {.nest_depth = 3}, {.dup_key = 1}, {.dup_tensor = 1},
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        fx_buf b = {0};
        fx_standard(&b, NULL, &variants[i]);
        snprintf(name, sizeof name, "variant-%zu.gguf", i);
        put(argv[1], name, &b);
        fx_free(&b);
        n++;
    }
    printf("wrote %d seeds to %s\n", n, argv[1]);
    return 0;
}
#endif
