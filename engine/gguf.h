/*
 * gguf.h - GGUF v2/v3 reader (read-only mmap) and v3 writer.
 *
 * Owns file parsing and validation; knows nothing about models. Every count,
 * length, offset, type and shape in the file is checked before use, and the
 * metadata the reader allocates is capped (64 MiB), so a hostile file fails
 * with a one-line message instead of crashing or exhausting memory. Keys,
 * tensor names and scalar string values are NUL-terminated copies; string
 * array elements, array data and tensor data point into the mapping (or the
 * caller's buffer). All of them live as long as the gguf_ctx. A ctx is
 * read-only after opening, so threads may share it.
 */
#ifndef MOE_GGUF_H
#define MOE_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe.h"
#include "quant.h"

typedef enum {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* "uint8", ..., "float64"; "unknown" for ids out of range. */
const char *gguf_type_name(gguf_type t);
/* Bytes of one scalar value; 0 for STRING, ARRAY and ids out of range. */
size_t gguf_type_size(gguf_type t);

typedef struct {
    const char *name;       /* NUL-terminated copy owned by the ctx */
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] = row length; unused dims are 1 */
    moe_type type;
    uint64_t offset;        /* relative to the data section */
    size_t nbytes;
    const void *data;       /* into the mapping */
} gguf_tensor_info;

typedef struct gguf_ctx gguf_ctx;

/* Open and validate a file. On failure returns a status (MOE_ERR_IO,
 * MOE_ERR_FORMAT, MOE_ERR_UNSUPPORTED for version 1, big-endian files or
 * unknown tensor types, MOE_ERR_NOMEM past the metadata cap), sets *out to
 * NULL and moe_last_error() to one line naming the problem. Accepted: GGUF
 * v2/v3 little-endian; keys and tensor names unique, non-empty, without NUL
 * bytes; bools 0 or 1; arrays nested at most 8 deep; general.alignment, when
 * present, a uint32 power of two; tensors with 1..4 dims each >= 1, a type
 * quant_type_supported() accepts, ne[0] a multiple of its block size, an
 * aligned offset and all bytes inside the file. */
moe_status gguf_open(const char *path, gguf_ctx **out);
/* As gguf_open, but the file is read into anonymous memory that asks for
 * transparent huge pages (madvise), then made read-only: streaming the
 * weights then takes far fewer TLB misses than through 4 KiB page-cache
 * pages, at the cost of reading the whole file up front and holding a
 * private copy. */
moe_status gguf_open_copy(const char *path, gguf_ctx **out);
/* Parse a buffer in memory (the buffer must outlive the ctx). For the fuzz
 * target and tests. */
moe_status gguf_open_buffer(const void *data, size_t size, gguf_ctx **out);
void gguf_close(gguf_ctx *ctx);

uint32_t gguf_version(const gguf_ctx *ctx);
size_t gguf_alignment(const gguf_ctx *ctx);
size_t gguf_file_size(const gguf_ctx *ctx);
/* File offset where the tensor data section starts (aligned end of the
 * header; may exceed the file size when there are no tensors). */
size_t gguf_data_offset(const gguf_ctx *ctx);

/* Key/value metadata */
int64_t gguf_n_kv(const gguf_ctx *ctx);
int64_t gguf_find_key(const gguf_ctx *ctx, const char *key); /* -1 if absent */
const char *gguf_kv_key(const gguf_ctx *ctx, int64_t i);
gguf_type gguf_kv_type(const gguf_ctx *ctx, int64_t i);
/* Scalars (the kv must have exactly that type, else 0/false/NULL) */
uint8_t gguf_kv_u8(const gguf_ctx *ctx, int64_t i);
int8_t gguf_kv_i8(const gguf_ctx *ctx, int64_t i);
uint16_t gguf_kv_u16(const gguf_ctx *ctx, int64_t i);
int16_t gguf_kv_i16(const gguf_ctx *ctx, int64_t i);
uint32_t gguf_kv_u32(const gguf_ctx *ctx, int64_t i);
int32_t gguf_kv_i32(const gguf_ctx *ctx, int64_t i);
uint64_t gguf_kv_u64(const gguf_ctx *ctx, int64_t i);
int64_t gguf_kv_i64(const gguf_ctx *ctx, int64_t i);
float gguf_kv_f32(const gguf_ctx *ctx, int64_t i);
double gguf_kv_f64(const gguf_ctx *ctx, int64_t i);
bool gguf_kv_bool(const gguf_ctx *ctx, int64_t i);
const char *gguf_kv_str(const gguf_ctx *ctx, int64_t i, size_t *len);
/* Arrays: element type (may be GGUF_TYPE_ARRAY for nested arrays), length,
 * raw data of a numeric array (little-endian packed elements, possibly
 * unaligned: memcpy out), string element j, nested array element j. */
gguf_type gguf_arr_type(const gguf_ctx *ctx, int64_t i);
uint64_t gguf_arr_n(const gguf_ctx *ctx, int64_t i);
const void *gguf_arr_data(const gguf_ctx *ctx, int64_t i);
const char *gguf_arr_str(const gguf_ctx *ctx, int64_t i, uint64_t j, size_t *len);

/* Arrays at any nesting depth, through a handle that lives as long as the
 * ctx. gguf_kv_array is NULL unless kv i is an array; the others return
 * GGUF_TYPE_COUNT / 0 / NULL for a NULL handle, the wrong element type or j
 * out of range. Scalar string kvs (gguf_kv_str, gguf_get_str) are
 * NUL-terminated copies; string array elements (gguf_arr_str,
 * gguf_array_str) point into the mapping and are NOT NUL-terminated: use
 * *len. */
typedef struct gguf_array gguf_array;
const gguf_array *gguf_kv_array(const gguf_ctx *ctx, int64_t i);
gguf_type gguf_array_type(const gguf_array *a);
uint64_t gguf_array_n(const gguf_array *a);
const void *gguf_array_data(const gguf_array *a); /* numeric elements only */
const char *gguf_array_str(const gguf_array *a, uint64_t j, size_t *len);
const gguf_array *gguf_array_elem(const gguf_array *a, uint64_t j);

/* Render kv i's value on one line into buf (snprintf-style: always
 * NUL-terminated when n > 0, returns the length the full text needs):
 * numbers in decimal, bools as true/false, strings double-quoted with
 * control bytes escaped, arrays as [a, b, ...] showing at most max_elems
 * elements per level, then "... N total". 0 and "" for i out of range. */
size_t gguf_kv_format(const gguf_ctx *ctx, int64_t i, char *buf, size_t n,
                      uint64_t max_elems);

/* Convenience lookups by key with type conversion between integer types;
 * return false when absent or of an incompatible type. */
bool gguf_get_int(const gguf_ctx *ctx, const char *key, int64_t *out);
bool gguf_get_float(const gguf_ctx *ctx, const char *key, double *out);
bool gguf_get_bool(const gguf_ctx *ctx, const char *key, bool *out);
const char *gguf_get_str(const gguf_ctx *ctx, const char *key); /* NUL-terminated copy or NULL */

/* Tensors */
int64_t gguf_n_tensors(const gguf_ctx *ctx);
const gguf_tensor_info *gguf_tensor(const gguf_ctx *ctx, int64_t i);
const gguf_tensor_info *gguf_find_tensor(const gguf_ctx *ctx, const char *name);

/* Writer: builds a GGUF v3 file in memory order of the calls, then writes it
 * atomically (temp file + rename). Data pointers given to add_tensor must
 * stay valid until gguf_writer_write returns. */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w);
/* A power of two (checked by gguf_writer_write); a value other than 32 is
 * also stored as the uint32 key general.alignment, and setting that key
 * (set_u32 or copy_kv) sets the alignment. */
void gguf_writer_set_alignment(gguf_writer *w, size_t alignment);
/* Setting an existing key replaces its value. */
moe_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
moe_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
moe_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v);
moe_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
moe_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
moe_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v);
/* Numeric array of elem_type, n elements packed in data (copied). */
moe_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type,
                               const void *data, uint64_t n);
moe_status gguf_writer_set_arr_str(gguf_writer *w, const char *key,
                                   const char *const *strs, uint64_t n);
/* Copy key i of a reader (any type, nested arrays included). */
moe_status gguf_writer_copy_kv(gguf_writer *w, const gguf_ctx *src, int64_t i);
/* ne[0] must be a multiple of the type's block size; data NULL writes zeros.
 * Tensors are laid out in call order, each at an aligned offset. */
moe_status gguf_writer_add_tensor(gguf_writer *w, const char *name, moe_type type,
                                  int n_dims, const int64_t *ne, const void *data);
moe_status gguf_writer_write(gguf_writer *w, const char *path);

#endif
