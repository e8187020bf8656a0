/*
 * quant.h - tensor element types of the GGUF format: block layouts,
 * dequantize, quantize (reference rounding) and dot products, with a scalar
 * reference path and fast x86 paths chosen at run time.
 *
 * Knows nothing about files or models. Block layouts are public facts of the
 * format; the code is our own.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Type ids as stored in GGUF tensor infos. */
typedef enum {
    MOE_TYPE_F32 = 0,
    MOE_TYPE_F16 = 1,
    MOE_TYPE_Q4_0 = 2,
    MOE_TYPE_Q4_1 = 3,
    MOE_TYPE_Q5_0 = 6,
    MOE_TYPE_Q5_1 = 7,
    MOE_TYPE_Q8_0 = 8,
    MOE_TYPE_Q8_1 = 9,
    MOE_TYPE_Q2_K = 10,
    MOE_TYPE_Q3_K = 11,
    MOE_TYPE_Q4_K = 12,
    MOE_TYPE_Q5_K = 13,
    MOE_TYPE_Q6_K = 14,
    MOE_TYPE_Q8_K = 15,
    MOE_TYPE_BF16 = 30,
    MOE_TYPE_COUNT = 40 /* one past the largest id the table covers */
} moe_type;

/* true for ids this engine can store, convert and multiply */
bool quant_type_supported(int type);
/* "f32", "q4_k", ...; "unknown" otherwise */
const char *quant_type_name(int type);
/* parse a name as printed by quant_type_name; -1 if unknown */
int quant_type_from_name(const char *name);
/* elements per block (1 for f32/f16/bf16, 32, or 256) */
int64_t quant_block_elems(moe_type type);
/* bytes per block */
size_t quant_block_bytes(moe_type type);
/* bytes of a row of n elements (n must be a multiple of the block size) */
size_t quant_row_bytes(moe_type type, int64_t n);

/* The type activations are converted to before a dot product with a row of
 * weights of type t (as the reference runtime does): f32->f32, f16->f16,
 * bf16->bf16, q4_0/q5_0/q8_0->q8_0, q4_1/q5_1->q8_1, k-quants->q8_k. */
moe_type quant_vec_dot_type(moe_type t);

void quant_dequantize_row(moe_type t, const void *src, float *dst, int64_t n);
/* Quantize with the reference rounding. dst holds quant_row_bytes(t, n). */
void quant_quantize_row(moe_type t, const float *src, void *dst, int64_t n);

/* Dot product of a weight row of type t with an activation row already
 * converted to quant_vec_dot_type(t); n elements. Fast path when the CPU
 * has one, else the scalar reference. */
float quant_vec_dot(moe_type t, int64_t n, const void *w, const void *act);
/* f32 dot summed in double, not rounded: products (exact in double) go to
 * 8 double lanes, lane l taking elements i with i % 8 == l of the first
 * n - n % 8, combined as ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)), then
 * the tail in order. The f32 dot of rows of n % 16 != 0 is this value
 * rounded to float; EMoE sums expert pieces with it. Same bits on every
 * kernel set. */
double quant_dot_f32_wide(int64_t n, const float *w, const float *a);
/* Always the scalar reference (for tests and as the fallback). */
float quant_vec_dot_ref(moe_type t, int64_t n, const void *w, const void *act);

/* Matrix-matrix: out[j*n_rows_out + r] = dot(row r of w, act row j) for rows
 * r in [r0, r1) and n_act activation rows. w rows are w_row_bytes apart, act
 * rows act_row_bytes apart. The fast path blocks over activations so each
 * weight row is read once per block. */
void quant_gemm(moe_type t, int64_t n, const void *w, size_t w_row_bytes,
                int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                int64_t n_act, float *out, int64_t n_rows_out);

/* As quant_gemm, in the order of the reference runtime's per-row vector
 * dot: it sums f32/f16/bf16 expert matmuls that way, and dense ones whose
 * weight has a row count not divisible by 4 (its tile kernel declines
 * those), in a different order than the tile kernel of its other dense
 * matmuls. Quantized activations downstream make 1-ulp differences
 * visible. Same as quant_gemm for every other type. */
void quant_gemm_expert(moe_type t, int64_t n, const void *w, size_t w_row_bytes,
                       int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                       int64_t n_act, float *out, int64_t n_rows_out);

/* Which kernel set is in use: "avx512-vnni", "avx2", "scalar". */
const char *quant_kernel_name(void);
/* Force the scalar kernels (tests, debugging). */
void quant_force_scalar(bool on);
/* True when the fast (SIMD) kernel table is in use: not forced scalar and
 * not selected as "scalar". Other hand-vectorised code (attention) follows
 * it, so forcing scalar runs every scalar form. */
bool quant_fast_kernels(void);

/* fp16/bf16 conversions */
float quant_f16_to_f32(uint16_t h);
uint16_t quant_f32_to_f16(float f);
float quant_bf16_to_f32(uint16_t h);
uint16_t quant_f32_to_bf16(float f);

/* The reference runtime's horizontal sums of vector accumulators, in its
 * order: quant_hsum8(v) = ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)),
 * quant_hsum16(v) = quant_hsum8(v[l] + v[l + 8]). */
float quant_hsum8(const float v[8]);
float quant_hsum16(const float v[16]);

#endif
