/*
 * quant_impl.h - internal to the quant module (quant.c, quant_x86.c and the
 * quant tests): block structs exactly as GGUF stores them, and the kernel
 * table through which quant.c dispatches to fast paths.
 *
 * Block layouts are public facts of the GGUF format. fp16 fields are kept as
 * raw uint16_t bits. Element order inside a block is documented next to each
 * struct (it is what dequantize produces).
 */
#ifndef MOE_QUANT_IMPL_H
#define MOE_QUANT_IMPL_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#include "quant.h"

#define QK32 32  /* elements per block of the "legacy" types */
#define QK_K 256 /* elements per super-block of the k-quants */

/* q4_0: x = d * (q - 8); element j (0..15) in the low nibble of qs[j],
 * element j + 16 in the high nibble. */
typedef struct {
    uint16_t d;
    uint8_t qs[QK32 / 2];
} blk_q4_0;

/* q4_1: x = d * q + m; nibble order as q4_0 */
typedef struct {
    uint16_t d;
    uint16_t m;
    uint8_t qs[QK32 / 2];
} blk_q4_1;

/* q5_0: x = d * (q - 16); low 4 bits as q4_0, bit 4 of element j is bit j
 * of the little-endian uint32 qh. */
typedef struct {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK32 / 2];
} blk_q5_0;

/* q5_1: x = d * q + m; bits as q5_0 */
typedef struct {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK32 / 2];
} blk_q5_1;

/* q8_0: x = d * q */
typedef struct {
    uint16_t d;
    int8_t qs[QK32];
} blk_q8_0;

/* q8_1: x = d * q; s = d * sum(q) (fp16), used by q4_1/q5_1 dot products */
typedef struct {
    uint16_t d;
    uint16_t s;
    int8_t qs[QK32];
} blk_q8_1;

/* q2_k: 16 groups of 16; scales[g] low nibble = scale, high nibble = min;
 * x = d*sc*q - dmin*m, q 2 bits. Element 128*h + 32*j + l (h 0..1, j 0..3,
 * l 0..31) is bits 2j..2j+1 of qs[32*h + l]; its group is 8*h + 2*j + l/16. */
typedef struct {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} blk_q2_k;

/* q3_k: 16 groups of 16 with 6-bit scales (stored +32, packed in 12 bytes:
 * low nibbles of group g in scales[g % 8] (g < 8: low, else high nibble),
 * bits 4..5 in scales[8 + g % 4] at bit 2*(g / 4)). Element as in q2_k with
 * low 2 bits in qs, bit 2 in hmask[l] bit (4*h + j); x = d*(sc-32)*(q-4). */
typedef struct {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} blk_q3_k;

/* q4_k: 8 groups of 32 with 6-bit scale and min (packed, see
 * quant_k4_scale_min); x = d*sc*q - dmin*m. Element 64*j + l (l < 32) is the
 * low nibble of qs[32*j + l] (group 2j), 64*j + 32 + l the high nibble
 * (group 2j + 1). */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[QK_K / 2];
} blk_q4_k;

/* q5_k: as q4_k plus a 5th bit: element 64*j + l takes bit 2j of qh[l],
 * element 64*j + 32 + l bit 2j + 1. */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
} blk_q5_k;

/* q6_k: 16 groups of 16 with int8 scales; x = d*sc*(q-32). In half h
 * (elements 128h..), with ql = ql + 64h, qh = qh + 32h, for l < 32:
 * element l: ql[l] & 15 | (qh[l] & 3) << 4; element 32 + l: ql[32 + l] & 15
 * | (qh[l] >> 2 & 3) << 4; element 64 + l: ql[l] >> 4 | (qh[l] >> 4 & 3) << 4;
 * element 96 + l: ql[32 + l] >> 4 | (qh[l] >> 6) << 4. */
typedef struct {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;
} blk_q6_k;

/* q8_k: activations for k-quant dots; x = d*q, bsums[g] = sum of group g's
 * 16 quants. */
typedef struct {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
} blk_q8_k;

static_assert(sizeof(blk_q4_0) == 18, "q4_0 block");
static_assert(sizeof(blk_q4_1) == 20, "q4_1 block");
static_assert(sizeof(blk_q5_0) == 22, "q5_0 block");
static_assert(sizeof(blk_q5_1) == 24, "q5_1 block");
static_assert(sizeof(blk_q8_0) == 34, "q8_0 block");
static_assert(sizeof(blk_q8_1) == 36, "q8_1 block");
static_assert(sizeof(blk_q2_k) == 84, "q2_k block");
static_assert(sizeof(blk_q3_k) == 110, "q3_k block");
static_assert(sizeof(blk_q4_k) == 144, "q4_k block");
static_assert(sizeof(blk_q5_k) == 176, "q5_k block");
static_assert(sizeof(blk_q6_k) == 210, "q6_k block");
static_assert(sizeof(blk_q8_k) == 292, "q8_k block");

/* Unpack scale and min of group j (0..7) of a q4_k/q5_k block. */
static inline void quant_k4_scale_min(const uint8_t *s, int j, uint8_t *sc,
                                      uint8_t *m)
{
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

/* Unpack the 16 scales of a q3_k block, already minus 32. */
static inline void quant_k3_scales(const uint8_t *s, int8_t out[16])
{
    for (int g = 0; g < 16; g++) {
        int lo = g < 8 ? (s[g] & 0xF) : (s[g - 8] >> 4);
        int hi = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
        out[g] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* ---- fast kernel table ---------------------------------------------------
 * quant.c owns the table and the scalar entries; quant_x86.c overwrites the
 * entries it accelerates. A NULL entry means "use the scalar reference". */

typedef float (*quant_dot_fn)(int64_t n, const void *w, const void *act);
/* four dots of one weight row with four activation rows at once */
typedef void (*quant_dot4_fn)(int64_t n, const void *w, const void *const act[4],
                              float out[4]);
typedef void (*quant_quantize_fn)(const float *src, void *dst, int64_t n);
/* a whole quant_gemm (same arguments and results; every output equal to
 * the type's dot): register-tiled kernels for prompt batches */
typedef void (*quant_gemm_fn)(int64_t n, const void *w, size_t w_row_bytes, int64_t r0,
                              int64_t r1, const void *act, size_t act_row_bytes, int64_t n_act,
                              float *out, int64_t n_rows_out);

/* one activation row (a generated token) against weight rows r0..r1 into
 * out[r0..r1) (every output equal to the type's dot): several rows far
 * apart at once, so memory sees several streams and the rows' dependency
 * chains overlap */
typedef void (*quant_decode_fn)(int64_t n, const void *w, size_t w_row_bytes, int64_t r0,
                                int64_t r1, const void *act, float *out);

typedef struct {
    const char *name;
    quant_dot_fn dot[MOE_TYPE_COUNT];
    quant_dot4_fn dot4[MOE_TYPE_COUNT];
    /* f32/f16/bf16 in the expert order (quant_gemm_expert); others unused */
    quant_dot_fn dot_expert[MOE_TYPE_COUNT];
    quant_quantize_fn quantize[MOE_TYPE_COUNT];
    quant_gemm_fn gemm[MOE_TYPE_COUNT]; /* NULL: the dot/dot4 loop of quant.c */
    quant_decode_fn decode[MOE_TYPE_COUNT]; /* NULL: quant.c's decode_rows over dot */
    /* quant_dot_f32_wide (NULL: the scalar one) */
    double (*dot_f32_wide)(int64_t n, const float *w, const float *a);
} quant_kernels;

/* Fill in the fast kernels of the set named want ("avx512-vnni", "avx2"),
 * or of the best set this CPU supports when want is NULL; entries without a
 * fast kernel stay NULL. Returns false (ks untouched) when the set is not
 * available here. Defined in quant_x86.c (a stub on other CPUs). */
bool quant_x86_fill(quant_kernels *ks, const char *want);

/* Tests only (not thread-safe with running kernels): switch to the kernel
 * set named want ("scalar", "avx2", "avx512-vnni"; NULL = best). Returns
 * false if this CPU cannot run it. */
bool quant_kernels_select(const char *want);

/* The scalar quant_dot_f32_wide. */
double quant_ref_dot_f32_wide(int64_t n, const float *w, const float *a);

/* Scalar reference entry points used by the fast paths for odd tails. */
float quant_ref_dot(moe_type t, int64_t n, const void *w, const void *act);
/* The scalar reference in the expert order (quant_gemm_expert): differs
 * from quant_ref_dot for f32/f16/bf16 only. */
float quant_ref_dot_expert(moe_type t, int64_t n, const void *w, const void *act);

#endif
