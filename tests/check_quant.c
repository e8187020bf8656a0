/*
 * check_quant.c - tests of the quant module: type table, fp16/bf16
 * conversion, exact bytes of reference quantization, round-trip error
 * bounds per type, scalar dot products against float math on dequantized
 * data, fast kernels against the scalar reference, gemm against vec_dot.
 *
 * Tolerances (stated once, used below):
 *  - scalar integer dot vs double dot of the dequantized values: 2e-5 of
 *    sum |w_i a_i| (float accumulation over blocks); q4_1/q5_1 use 2e-3
 *    because the q8_1 block sum s is stored in fp16.
 *  - fast vs scalar: bit-identical for f32, f16, bf16, q4_0 ... q8_1,
 *    q4_k, q5_k, q6_k (the scalar order is the reference runtime's, see
 *    quant.c); 1e-5 of sum |w_i a_i| for the others (integer parts exact,
 *    only the float order differs).
 *  - gemm vs vec_dot: bit-identical (whatever the batch size, so batched
 *    and single-token decoding agree exactly); vs the reference 1e-5.
 *  - fast quantize of activation types: byte-identical to scalar.
 *
 * Setting MOE_QUANT_BENCH=1 adds a micro benchmark case that prints GB/s of
 * weight bytes for q8_0/q4_0/q4_k/q6_k dots, fast vs scalar.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gguf.h"
#include "quant.h"
#include "quant_impl.h"
#include "testutil.h"

static const moe_type all_types[] = {
    MOE_TYPE_F32,  MOE_TYPE_F16,  MOE_TYPE_BF16, MOE_TYPE_Q4_0, MOE_TYPE_Q4_1,
    MOE_TYPE_Q5_0, MOE_TYPE_Q5_1, MOE_TYPE_Q8_0, MOE_TYPE_Q8_1, MOE_TYPE_Q2_K,
    MOE_TYPE_Q3_K, MOE_TYPE_Q4_K, MOE_TYPE_Q5_K, MOE_TYPE_Q6_K, MOE_TYPE_Q8_K,
};
#define N_TYPES ((int)(sizeof all_types / sizeof all_types[0]))

/* deterministic pseudo-random numbers (xorshift) */
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double rng_u01(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * 0x1p-53;
}
static float rng_gauss(void)
{
    double u = rng_u01(), v = rng_u01();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}
static void fill_gauss(float *x, int64_t n, float scale, float offset)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rng_gauss() * scale + offset;
}

/* ---- table ------------------------------------------------------------- */

START_TEST(test_table)
{
    static const struct {
        moe_type t;
        const char *name;
        int64_t blck;
        size_t bytes;
        moe_type vt;
    } want[] = {
        {MOE_TYPE_F32, "f32", 1, 4, MOE_TYPE_F32},
        {MOE_TYPE_F16, "f16", 1, 2, MOE_TYPE_F16},
        {MOE_TYPE_BF16, "bf16", 1, 2, MOE_TYPE_BF16},
        {MOE_TYPE_Q4_0, "q4_0", 32, 18, MOE_TYPE_Q8_0},
        {MOE_TYPE_Q4_1, "q4_1", 32, 20, MOE_TYPE_Q8_1},
        {MOE_TYPE_Q5_0, "q5_0", 32, 22, MOE_TYPE_Q8_0},
        {MOE_TYPE_Q5_1, "q5_1", 32, 24, MOE_TYPE_Q8_1},
        {MOE_TYPE_Q8_0, "q8_0", 32, 34, MOE_TYPE_Q8_0},
        {MOE_TYPE_Q8_1, "q8_1", 32, 36, MOE_TYPE_Q8_1},
        {MOE_TYPE_Q2_K, "q2_k", 256, 84, MOE_TYPE_Q8_K},
        {MOE_TYPE_Q3_K, "q3_k", 256, 110, MOE_TYPE_Q8_K},
        {MOE_TYPE_Q4_K, "q4_k", 256, 144, MOE_TYPE_Q8_K},
        {MOE_TYPE_Q5_K, "q5_k", 256, 176, MOE_TYPE_Q8_K},
        {MOE_TYPE_Q6_K, "q6_k", 256, 210, MOE_TYPE_Q8_K},
        {MOE_TYPE_Q8_K, "q8_k", 256, 292, MOE_TYPE_Q8_K},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        ck_assert(quant_type_supported((int)want[i].t));
        ck_assert_str_eq(quant_type_name((int)want[i].t), want[i].name);
        ck_assert_int_eq(quant_type_from_name(want[i].name), (int)want[i].t);
        ck_assert_int_eq(quant_block_elems(want[i].t), want[i].blck);
        ck_assert_uint_eq(quant_block_bytes(want[i].t), want[i].bytes);
        ck_assert_uint_eq(quant_row_bytes(want[i].t, 4096),
                          (size_t)(4096 / want[i].blck) * want[i].bytes);
        ck_assert_int_eq((int)quant_vec_dot_type(want[i].t), (int)want[i].vt);
    }
    ck_assert_int_eq(quant_type_from_name("Q4_K"), MOE_TYPE_Q4_K);
    ck_assert_int_eq(quant_type_from_name("q4_k_m"), -1);
    ck_assert_int_eq(quant_type_from_name("q4?0"), -1); /* only letters fold case */
    ck_assert_int_eq(quant_type_from_name(""), -1);
    ck_assert_int_eq(quant_type_from_name(NULL), -1);
    ck_assert(!quant_type_supported(4));
    ck_assert(!quant_type_supported(-1));
    ck_assert(!quant_type_supported(MOE_TYPE_COUNT));
    ck_assert_str_eq(quant_type_name(4), "unknown");
    ck_assert_str_eq(quant_type_name(1000), "unknown");
    ck_assert_uint_eq(quant_row_bytes((moe_type)4, 64), 0);
    ck_assert(isnan(quant_vec_dot((moe_type)5, 32, "", "")));
}
END_TEST

/* ---- fp16 / bf16 ---------------------------------------------------------- */

START_TEST(test_f16_edges)
{
    static const struct {
        float f;
        uint16_t h;
    } c[] = {
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {1.0f, 0x3C00},
        {-2.0f, 0xC000},
        {65504.0f, 0x7BFF},
        {65519.0f, 0x7BFF},          /* below the halfway point */
        {65520.0f, 0x7C00},          /* halfway, ties to even = inf */
        {1e10f, 0x7C00},
        {-INFINITY, 0xFC00},
        {0x1p-14f, 0x0400},          /* smallest normal */
        {0x1p-24f, 0x0001},          /* smallest subnormal */
        {0x1p-25f, 0x0000},          /* tie -> even (0) */
        {0x1.8p-25f, 0x0001},        /* 0.75 ulp -> 1 */
        {0x1.8p-24f, 0x0002},        /* 1.5 -> 2 (tie to even) */
        {0x1.4p-23f, 0x0002},        /* 2.5 -> 2 (tie to even) */
        {0x1.ffcp-15f, 0x0400},      /* 1023.5 ulp: tie -> even = smallest normal */
        {0x1.ff8p-15f, 0x03FF},      /* largest subnormal */
        {1.0f + 0x1p-11f, 0x3C00},   /* tie -> even */
        {1.0f + 0x3p-11f, 0x3C02},   /* tie -> even (up) */
        {1.0f + 0x1.1p-11f, 0x3C01}, /* above tie */
        {0.1f, 0x2E66},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++)
        ck_assert_msg(quant_f32_to_f16(c[i].f) == c[i].h, "f16(%a) = %04x, want %04x",
                      (double)c[i].f, quant_f32_to_f16(c[i].f), c[i].h);
    ck_assert((quant_f32_to_f16(NAN) & 0x7C00) == 0x7C00 &&
              (quant_f32_to_f16(NAN) & 0x3FF) != 0);
    ck_assert(quant_f16_to_f32(0x0001) == 0x1p-24f);
    ck_assert(quant_f16_to_f32(0x03FF) == 0x3FFp-24f);
    ck_assert(quant_f16_to_f32(0x7C00) == INFINITY);
    ck_assert(isnan(quant_f16_to_f32(0x7E00)));
    ck_assert(signbit(quant_f16_to_f32(0x8000)));
    /* every non-NaN half survives the round trip exactly */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = quant_f16_to_f32((uint16_t)h);
        if (isnan(f))
            ck_assert(isnan(quant_f16_to_f32(quant_f32_to_f16(f))));
        else
            ck_assert_msg(quant_f32_to_f16(f) == h, "round trip of %04x", h);
    }
}
END_TEST

START_TEST(test_bf16_edges)
{
    static const struct {
        uint32_t f;
        uint16_t h;
    } c[] = {
        {0x3F800000u, 0x3F80}, /* 1 */
        {0x3F808000u, 0x3F80}, /* tie -> even */
        {0x3F818000u, 0x3F82}, /* tie -> even (up) */
        {0x3F808001u, 0x3F81}, /* above tie */
        {0x7F7FFFFFu, 0x7F80}, /* FLT_MAX rounds to inf */
        {0xFF800000u, 0xFF80}, /* -inf */
        {0x00000001u, 0x0000}, /* tiny subnormal */
        {0x80000000u, 0x8000},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        float f;
        memcpy(&f, &c[i].f, 4);
        ck_assert_msg(quant_f32_to_bf16(f) == c[i].h, "bf16(%08x) = %04x, want %04x",
                      c[i].f, quant_f32_to_bf16(f), c[i].h);
    }
    uint16_t n = quant_f32_to_bf16(NAN);
    ck_assert((n & 0x7F80) == 0x7F80 && (n & 0x7F) != 0);
    uint32_t snan = 0x7F800001u; /* signalling NaN with payload only in low bits */
    float fs;
    memcpy(&fs, &snan, 4);
    ck_assert(isnan(quant_bf16_to_f32(quant_f32_to_bf16(fs))));
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = quant_bf16_to_f32((uint16_t)h);
        if (!isnan(f))
            ck_assert(quant_f32_to_bf16(f) == h);
    }
}
END_TEST

/* ---- exact bytes of the reference rounding ------------------------------- */

START_TEST(test_q8_0_known)
{
    /* amax 127 -> d = 1 (fp16 3c00), q = round-half-even(x) */
    float x[32] = {127, 62.5f, -62.5f, 0.49f, 63.5f, -1.5f, 2.5f, -127};
    static const int8_t want[32] = {127, 62, -62, 0, 64, -2, 2, -127};
    blk_q8_0 b;
    for (int f = 0; f < 2; f++) {
        quant_force_scalar(f == 0);
        memset(&b, 0xAA, sizeof b);
        quant_quantize_row(MOE_TYPE_Q8_0, x, &b, 32);
        ck_assert_uint_eq(b.d, 0x3C00);
        ck_assert_mem_eq(b.qs, want, 32);
    }
    quant_force_scalar(false);
    /* all zeros: d = 0, q = 0 */
    memset(x, 0, sizeof x);
    quant_quantize_row(MOE_TYPE_Q8_0, x, &b, 32);
    ck_assert_uint_eq(b.d, 0);
    for (int j = 0; j < 32; j++)
        ck_assert_int_eq(b.qs[j], 0);
    /* q8_1: s = fp16(d * sum q) = 127 + 62 - 62 = 127 -> 0x57F0 */
    float y[32] = {127, 62.4f, -62.4f};
    blk_q8_1 c;
    quant_quantize_row(MOE_TYPE_Q8_1, y, &c, 32);
    ck_assert_uint_eq(c.d, 0x3C00);
    ck_assert_uint_eq(c.s, 0x57F0);
}
END_TEST

START_TEST(test_q4_0_known)
{
    /* max-by-abs -8 -> d = 1, q = min(15, trunc(x + 8.5)) */
    float x[32] = {-8, 7, 7.6f, 0.4f, -0.6f, 0.5f, -7.9f, 3};
    /* elements 16.. : 1, -1, 0 ... */
    x[16] = 1;
    x[17] = -1;
    static const uint8_t q[32] = {0, 15, 15, 8, 7, 9, 0, 11, 8, 8, 8, 8, 8, 8, 8, 8,
                                  9, 7, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};
    blk_q4_0 b;
    quant_quantize_row(MOE_TYPE_Q4_0, x, &b, 32);
    ck_assert_uint_eq(b.d, 0x3C00);
    for (int j = 0; j < 16; j++)
        ck_assert_uint_eq(b.qs[j], (unsigned)(q[j] | q[j + 16] << 4));
    /* positive max 4 -> d = -0.5 (fp16 b800): x=4 -> 0, x=-4 -> 15 */
    float y[32] = {4, -4, 0};
    quant_quantize_row(MOE_TYPE_Q4_0, y, &b, 32);
    ck_assert_uint_eq(b.d, 0xB800);
    ck_assert_uint_eq(b.qs[0], 0x80);
    ck_assert_uint_eq(b.qs[1], 0x8F);
    ck_assert_uint_eq(b.qs[2], 0x88);
    float z[32];
    quant_dequantize_row(MOE_TYPE_Q4_0, &b, z, 32);
    ck_assert(z[0] == 4.0f && z[1] == -3.5f && z[2] == 0.0f);
}
END_TEST

START_TEST(test_q8_k_known)
{
    float x[256] = {0};
    x[0] = -127;
    x[1] = 5.5f; /* tie -> 6 (even) */
    x[17] = -3;
    x[200] = 100.4f;
    blk_q8_k b;
    for (int f = 0; f < 2; f++) {
        quant_force_scalar(f == 0);
        memset(&b, 0x55, sizeof b);
        quant_quantize_row(MOE_TYPE_Q8_K, x, &b, 256);
        ck_assert(b.d == 1.0f);
        ck_assert_int_eq(b.qs[0], -127);
        ck_assert_int_eq(b.qs[1], 6);
        ck_assert_int_eq(b.qs[17], -3);
        ck_assert_int_eq(b.qs[200], 100);
        ck_assert_int_eq(b.bsums[0], -121);
        ck_assert_int_eq(b.bsums[1], -3);
        ck_assert_int_eq(b.bsums[12], 100);
        ck_assert_int_eq(b.bsums[2], 0);
    }
    quant_force_scalar(false);
    /* positive max: iscale = -127/max, so d is negative and q = -x */
    memset(x, 0, sizeof x);
    x[3] = 127;
    x[4] = -2;
    quant_quantize_row(MOE_TYPE_Q8_K, x, &b, 256);
    ck_assert(b.d == -1.0f);
    ck_assert_int_eq(b.qs[3], -127);
    ck_assert_int_eq(b.qs[4], 2);
}
END_TEST

/* ---- round trip ------------------------------------------------------------ */

/* rel-RMSE bound of quantize -> dequantize for N(0.1, 1) data (measured values
 * are about 60-70% of these) */
static double rmse_bound(moe_type t)
{
    switch (t) {
    case MOE_TYPE_F32: return 0.0;
    case MOE_TYPE_F16: return 4e-4;
    case MOE_TYPE_BF16: return 3e-3;
    case MOE_TYPE_Q8_0: case MOE_TYPE_Q8_1: return 0.008;
    case MOE_TYPE_Q8_K: return 0.01;
    case MOE_TYPE_Q6_K: return 0.025;
    case MOE_TYPE_Q5_0: return 0.06;
    case MOE_TYPE_Q5_1: case MOE_TYPE_Q5_K: return 0.05;
    case MOE_TYPE_Q4_0: return 0.12;
    case MOE_TYPE_Q4_1: case MOE_TYPE_Q4_K: return 0.10;
    case MOE_TYPE_Q3_K: return 0.22;
    case MOE_TYPE_Q2_K: return 0.45;
    default: return 0.0;
    }
}

START_TEST(test_round_trip)
{
    const int64_t n = 4096;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    void *q = malloc(quant_row_bytes(MOE_TYPE_F32, n));
    fill_gauss(x, n, 1.0f, 0.1f);
    for (int i = 0; i < N_TYPES; i++) {
        moe_type t = all_types[i];
        quant_quantize_row(t, x, q, n);
        quant_dequantize_row(t, q, y, n);
        double se = 0, ss = 0;
        for (int64_t k = 0; k < n; k++) {
            se += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
            ss += (double)x[k] * x[k];
        }
        double rel = sqrt(se / ss);
        ck_assert_msg(rel <= rmse_bound(t), "%s rel-RMSE %.5f > %.5f", quant_type_name((int)t),
                      rel, rmse_bound(t));
        /* and quantization is not the identity (the bound is meaningful) */
        if (t != MOE_TYPE_F32)
            ck_assert_msg(rel > rmse_bound(t) / 20, "%s rel-RMSE %.6f suspiciously low",
                          quant_type_name((int)t), rel);
    }
    free(x);
    free(y);
    free(q);
}
END_TEST

/* ---- dot products ----------------------------------------------------------- */

typedef struct {
    int64_t n;
    void *w, *a;         /* quantized weight row, activation row */
    float *wf, *af;      /* their dequantized values */
    double exact, sabs;  /* double dot of dequantized values, sum |terms| */
} dot_case;

static void dot_case_make(dot_case *c, moe_type t, int64_t n, float offset)
{
    moe_type vt = quant_vec_dot_type(t);
    float *x = malloc(n * sizeof *x);
    c->n = n;
    c->w = malloc(quant_row_bytes(t, n));
    c->a = malloc(quant_row_bytes(vt, n));
    c->wf = malloc(n * sizeof(float));
    c->af = malloc(n * sizeof(float));
    fill_gauss(x, n, 0.05f, offset);
    quant_quantize_row(t, x, c->w, n);
    fill_gauss(x, n, 2.0f, 0.3f);
    quant_quantize_row(vt, x, c->a, n);
    quant_dequantize_row(t, c->w, c->wf, n);
    quant_dequantize_row(vt, c->a, c->af, n);
    c->exact = c->sabs = 0;
    for (int64_t k = 0; k < n; k++) {
        c->exact += (double)c->wf[k] * c->af[k];
        c->sabs += fabs((double)c->wf[k] * c->af[k]);
    }
    free(x);
}

static void dot_case_free(dot_case *c)
{
    free(c->w);
    free(c->a);
    free(c->wf);
    free(c->af);
}

START_TEST(test_dot_ref_vs_float)
{
    for (int i = 0; i < N_TYPES; i++) {
        moe_type t = all_types[i];
        dot_case c;
        dot_case_make(&c, t, 2048, 0.02f);
        double tol = (t == MOE_TYPE_Q4_1 || t == MOE_TYPE_Q5_1) ? 2e-3 : 2e-5;
        float r = quant_vec_dot_ref(t, c.n, c.w, c.a);
        ck_assert_msg(fabs(r - c.exact) <= tol * c.sabs, "%s: ref %.7g exact %.7g (sabs %.4g)",
                      quant_type_name((int)t), (double)r, c.exact, c.sabs);
        dot_case_free(&c);
    }
}
END_TEST

/* types whose fast dots reproduce the scalar reference bit for bit */
static bool exact_order(moe_type t)
{
    switch (t) {
    case MOE_TYPE_F32: case MOE_TYPE_F16: case MOE_TYPE_BF16: return true;
    case MOE_TYPE_Q4_0: case MOE_TYPE_Q4_1: case MOE_TYPE_Q5_0: case MOE_TYPE_Q5_1:
    case MOE_TYPE_Q8_0: case MOE_TYPE_Q8_1: case MOE_TYPE_Q4_K: case MOE_TYPE_Q5_K:
    case MOE_TYPE_Q6_K:
        return true;
    default: return false;
    }
}

/* kernel sets tried by the fast-path tests (those the CPU lacks are skipped) */
static const char *const ksets[] = {"avx512-vnni", "avx2", NULL};
#define N_KSETS ((int)(sizeof ksets / sizeof ksets[0]))

START_TEST(test_dot_fast_vs_ref)
{
    /* odd block counts (1056 = 33 blocks of 32, 96 = 3) become 1280 for
     * the 256-element types; 172 (stories260K's n_ff) and 40 are no
     * multiple of 16 for the float types and become 1280 for the others */
    static const int64_t sizes[] = {256, 512, 4096, 768, 1056, 96, 172, 40};
    if (!quant_kernels_select(ksets[_i]))
        return; /* CPU lacks this set */
    for (int i = 0; i < N_TYPES; i++)
        for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
            moe_type t = all_types[i];
            int64_t n = sizes[s] % quant_block_elems(t) ? 1280 : sizes[s];
            dot_case c;
            dot_case_make(&c, t, n, s & 1 ? -0.03f : 0.0f);
            float r = quant_vec_dot_ref(t, c.n, c.w, c.a);
            float f = quant_vec_dot(t, c.n, c.w, c.a);
            /* types with a defined reference order: bit-identical */
            if (exact_order(t))
                ck_assert_msg(f == r, "%s n=%lld [%s]: fast %.9g != ref %.9g",
                              quant_type_name((int)t), (long long)c.n, quant_kernel_name(),
                              (double)f, (double)r);
            ck_assert_msg(fabs((double)f - r) <= 1e-5 * c.sabs,
                          "%s n=%lld [%s]: fast %.8g ref %.8g", quant_type_name((int)t),
                          (long long)c.n, quant_kernel_name(), (double)f, (double)r);
            /* the expert order (quant_gemm_expert): bit-identical too */
            float re = quant_ref_dot_expert(t, c.n, c.w, c.a), fe = -1.0f;
            quant_gemm_expert(t, c.n, c.w, quant_row_bytes(t, c.n), 0, 1, c.a,
                              quant_row_bytes(quant_vec_dot_type(t), c.n), 1, &fe, 1);
            if (exact_order(t))
                ck_assert_msg(fe == re, "%s n=%lld [%s]: expert fast %.9g != ref %.9g",
                              quant_type_name((int)t), (long long)c.n, quant_kernel_name(),
                              (double)fe, (double)re);
            ck_assert_msg(fabs((double)fe - r) <= 1e-5 * c.sabs, "%s n=%lld: expert %.8g ref %.8g",
                          quant_type_name((int)t), (long long)c.n, (double)fe, (double)r);
            dot_case_free(&c);
        }
    quant_kernels_select(NULL);
}
END_TEST

/* extreme quants: a weight row of all -128 / 127 (q8_0 sign trick) and
 * all-15 nibbles */
START_TEST(test_dot_extremes)
{
    blk_q8_0 w[8], a[8];
    for (int i = 0; i < 8; i++) {
        w[i].d = a[i].d = 0x3C00;
        for (int j = 0; j < 32; j++) {
            w[i].qs[j] = (int8_t)(j & 1 ? -128 : 127);
            a[i].qs[j] = (int8_t)(j & 2 ? -127 : 127);
        }
    }
    float r = quant_vec_dot_ref(MOE_TYPE_Q8_0, 256, w, a);
    float f = quant_vec_dot(MOE_TYPE_Q8_0, 256, w, a);
    ck_assert(r == f);
    ck_assert(r == 8.0f * 8 * (127 * 127 - 128 * 127 - 127 * 127 + 128 * 127) / 1.0f);
    blk_q4_k k;
    blk_q8_k b;
    memset(&k, 0xFF, sizeof k);
    k.d = k.dmin = 0x3C00;
    memset(b.qs, 127, sizeof b.qs);
    for (int g = 0; g < 16; g++)
        b.bsums[g] = 16 * 127;
    b.d = 1.0f;
    r = quant_vec_dot_ref(MOE_TYPE_Q4_K, 256, &k, &b);
    f = quant_vec_dot(MOE_TYPE_Q4_K, 256, &k, &b);
    /* all scales/mins 63, all q 15: 63*127*256*(15 - 1) */
    ck_assert(r == 63.0f * 127 * 256 * 14);
    ck_assert(f == r);
}
END_TEST

/* gemm against vec_dot (exactly) and the reference: 7 activation rows
 * (4-row blocks plus a tail), then 1 (the single-token paths: rows far
 * apart at once, 8 streams for q8_0, 4 for q4_0 and the k-quants, 8 for the other
 * types' decode_rows, each with a tail) and 3; rows r0..r1 not a multiple
 * of 4 or 8; an odd number of 32-blocks where the type allows */
static void gemm_check(int64_t n_act)
{
    const int64_t rows = 21, r0 = 2, r1 = 20;
    for (int i = 0; i < N_TYPES; i++) {
        moe_type t = all_types[i], vt = quant_vec_dot_type(t);
        int64_t n = quant_block_elems(t) == QK_K ? 512 : 544;
        size_t wrb = quant_row_bytes(t, n), arb = quant_row_bytes(vt, n);
        uint8_t *w = malloc(wrb * rows), *a = malloc(arb * n_act);
        float *x = malloc(n * sizeof *x), *out = malloc(sizeof(float) * rows * n_act);
        for (int64_t r = 0; r < rows; r++) {
            fill_gauss(x, n, 0.05f, 0.0f);
            quant_quantize_row(t, x, w + r * wrb, n);
        }
        for (int64_t j = 0; j < n_act; j++) {
            fill_gauss(x, n, 1.0f, 0.1f);
            quant_quantize_row(vt, x, a + j * arb, n);
        }
        for (int64_t k = 0; k < rows * n_act; k++)
            out[k] = -12345.0f;
        quant_gemm(t, n, w, wrb, r0, r1, a, arb, n_act, out, rows);
        for (int64_t j = 0; j < n_act; j++)
            for (int64_t r = 0; r < rows; r++) {
                float o = out[j * rows + r];
                if (r < r0 || r >= r1) {
                    ck_assert(o == -12345.0f);
                    continue;
                }
                float d = quant_vec_dot(t, n, w + r * wrb, a + j * arb);
                float s = quant_vec_dot_ref(t, n, w + r * wrb, a + j * arb);
                double sabs = 0;
                float *wf = malloc(n * sizeof *wf), *af = malloc(n * sizeof *af);
                quant_dequantize_row(t, w + r * wrb, wf, n);
                quant_dequantize_row(vt, a + j * arb, af, n);
                for (int64_t k = 0; k < n; k++)
                    sabs += fabs((double)wf[k] * af[k]);
                free(wf);
                free(af);
                /* gemm and vec_dot: bit-identical (batch = single-token) */
                ck_assert_msg(o == d && fabs((double)o - s) <= 1e-5 * sabs,
                              "%s gemm[%lld,%lld] %.9g dot %.9g ref %.9g", quant_type_name((int)t),
                              (long long)j, (long long)r, (double)o, (double)d, (double)s);
            }
        free(w);
        free(a);
        free(x);
        free(out);
    }
}

START_TEST(test_gemm_vs_dot)
{
    if (!quant_kernels_select(ksets[_i]))
        return;
    gemm_check(7);
    gemm_check(1);
    gemm_check(3);
    quant_kernels_select(NULL);
}
END_TEST

/* fast quantize of activation types must give the scalar bytes exactly */
START_TEST(test_quantize_fast_exact)
{
    static const moe_type act_types[] = {MOE_TYPE_Q8_0, MOE_TYPE_Q8_1, MOE_TYPE_Q8_K,
                                         MOE_TYPE_F16, MOE_TYPE_BF16, MOE_TYPE_F32};
    const int64_t n = 4096;
    if (!quant_kernels_select(ksets[_i]))
        return;
    float *x = malloc(n * sizeof *x);
    fill_gauss(x, n, 3.0f, 0.0f);
    x[7] = 0.0f;
    for (int k = 256; k < 512; k++) /* an all-zero super-block */
        x[k] = 0.0f;
    x[1000] = 1e-9f; /* tiny values, f16 subnormals */
    x[1001] = -70000.0f; /* f16 overflow */
    for (size_t i = 0; i < sizeof act_types / sizeof act_types[0]; i++) {
        moe_type t = act_types[i];
        size_t rb = quant_row_bytes(t, n);
        uint8_t *f = malloc(rb), *s = malloc(rb);
        quant_force_scalar(false);
        quant_quantize_row(t, x, f, n);
        quant_force_scalar(true);
        quant_quantize_row(t, x, s, n);
        quant_force_scalar(false);
        ck_assert_msg(memcmp(f, s, rb) == 0, "%s: fast quantize differs from scalar",
                      quant_type_name((int)t));
        free(f);
        free(s);
    }
    free(x);
    quant_kernels_select(NULL);
}
END_TEST

START_TEST(test_bad_input)
{
    float x[40], y[40];
    uint8_t q[64];
    fill_gauss(x, 40, 1.0f, 0.0f);
    /* n not a multiple of the block: only whole blocks, tail NaN */
    quant_quantize_row(MOE_TYPE_Q8_0, x, q, 40);
    quant_dequantize_row(MOE_TYPE_Q8_0, q, y, 40);
    ck_assert(fabsf(y[0] - x[0]) < 0.05f);
    ck_assert(isnan(y[35]));
    quant_dequantize_row((moe_type)4, q, y, 8);
    ck_assert(isnan(y[0]));
    quant_quantize_row((moe_type)39, x, q, 32); /* no-op, no crash */
    ck_assert(!isnan(quant_vec_dot(MOE_TYPE_Q8_0, 0, q, q)));
    ck_assert(quant_vec_dot(MOE_TYPE_Q8_0, 0, q, q) == 0.0f);
}
END_TEST

START_TEST(test_kernel_name)
{
    const char *k = quant_kernel_name();
    ck_assert(!strcmp(k, "avx512-vnni") || !strcmp(k, "avx2") || !strcmp(k, "scalar"));
    quant_force_scalar(true);
    ck_assert_str_eq(quant_kernel_name(), "scalar");
    quant_force_scalar(false);
    ck_assert_str_eq(quant_kernel_name(), k);
}
END_TEST

/* ---- real files: the same model quantized by the reference runtime --------
 * Every tensor of the q8_0 / q4_0 / q6_k / q4_k_m / bf16 files, dequantized,
 * must match the f16 file within that type's quantization error (a layout
 * mistake gives rel-RMSE ~1). Bounds: measured worst cases are q8_0 0.0054,
 * q4_0 0.086, q4_k 0.072, q5_k 0.036, q6_k 0.018, bf16 0.0017. */
static double file_bound(moe_type t)
{
    switch (t) {
    case MOE_TYPE_F32: return 0.0;
    case MOE_TYPE_BF16: return 0.003;
    case MOE_TYPE_Q8_0: return 0.008;
    case MOE_TYPE_Q6_K: return 0.025;
    case MOE_TYPE_Q5_K: return 0.05;
    case MOE_TYPE_Q4_K: return 0.10;
    case MOE_TYPE_Q4_0: return 0.12;
    default: return -1.0;
    }
}

START_TEST(test_real_files)
{
    static const char *const variants[] = {"q8_0", "q4_0", "q6_k", "q4_k_m", "bf16"};
    char path[1024];
    const char *rel = "models/synthetic/tiny-mixtral-256.f16.gguf";
    if (!tu_shared(path, sizeof path, rel, "quant real files"))
        return;
    gguf_ctx *ref = NULL;
    ck_assert_int_eq(gguf_open(path, &ref), MOE_OK);
    int seen[MOE_TYPE_COUNT] = {0};
    for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
        char relx[128];
        snprintf(relx, sizeof relx, "models/synthetic/tiny-mixtral-256.%s.gguf", variants[v]);
        if (!tu_shared(path, sizeof path, relx, "quant real files"))
            continue;
        gguf_ctx *g = NULL;
        ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
        for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
            const gguf_tensor_info *t = gguf_tensor(g, i);
            const gguf_tensor_info *u = gguf_find_tensor(ref, t->name);
            ck_assert_ptr_nonnull(u);
            double bound = file_bound(t->type);
            ck_assert_msg(bound >= 0, "%s: unexpected type %s", t->name, quant_type_name((int)t->type));
            int64_t ne0 = t->ne[0], rows = 1;
            for (int d = 1; d < GGUF_MAX_DIMS; d++)
                rows *= t->ne[d];
            ck_assert_int_eq(u->ne[0], ne0);
            float *x = malloc(sizeof(float) * ne0), *y = malloc(sizeof(float) * ne0);
            double se = 0, ss = 0;
            size_t rbx = quant_row_bytes(t->type, ne0), rbu = quant_row_bytes(u->type, ne0);
            for (int64_t r = 0; r < rows; r++) {
                quant_dequantize_row(u->type, (const uint8_t *)u->data + r * rbu, x, ne0);
                quant_dequantize_row(t->type, (const uint8_t *)t->data + r * rbx, y, ne0);
                for (int64_t k = 0; k < ne0; k++) {
                    se += ((double)x[k] - y[k]) * ((double)x[k] - y[k]);
                    ss += (double)x[k] * x[k];
                }
            }
            free(x);
            free(y);
            double relerr = ss > 0 ? sqrt(se / ss) : sqrt(se);
            ck_assert_msg(relerr <= bound, "%s.%s (%s): rel-RMSE %.5f > %.5f", variants[v], t->name,
                          quant_type_name((int)t->type), relerr, bound);
            seen[t->type]++;
        }
        gguf_close(g);
    }
    gguf_close(ref);
    static const moe_type must[] = {MOE_TYPE_Q8_0, MOE_TYPE_Q4_0, MOE_TYPE_Q4_K,
                                    MOE_TYPE_Q5_K, MOE_TYPE_Q6_K, MOE_TYPE_BF16};
    for (size_t k = 0; k < sizeof must / sizeof must[0]; k++)
        ck_assert_msg(seen[must[k]] > 0, "no %s tensor checked", quant_type_name((int)must[k]));
}
END_TEST

/* ---- micro benchmark (MOE_QUANT_BENCH=1) ------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts); /* CPU time: robust to a shared machine */
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* GB/s of weight bytes through vec_dot (rows x n, weights ~ L2 sized) and
 * through quant_gemm with 8 activation rows; prints one line per type. */
static void quant_bench(moe_type t, int64_t n, int64_t rows)
{
    moe_type vt = quant_vec_dot_type(t);
    size_t wrb = quant_row_bytes(t, n), arb = quant_row_bytes(vt, n);
    uint8_t *w = malloc(wrb * rows), *a = malloc(arb * 8);
    float *x = malloc(n * sizeof *x), *out = malloc(sizeof(float) * rows * 8);
    volatile float sink = 0;
    for (int64_t r = 0; r < rows; r++) {
        fill_gauss(x, n, 0.05f, 0.0f);
        quant_quantize_row(t, x, w + r * wrb, n);
    }
    for (int j = 0; j < 8; j++) {
        fill_gauss(x, n, 1.0f, 0.0f);
        quant_quantize_row(vt, x, a + j * arb, n);
    }
    double gbs[2], gemm_gbs[2];
    for (int f = 0; f < 2; f++) {
        quant_force_scalar(f == 1);
        int reps = 0;
        double t0 = now_s(), t1;
        do {
            for (int64_t r = 0; r < rows; r++)
                sink += quant_vec_dot(t, n, w + r * wrb, a);
            reps++;
            t1 = now_s();
        } while (t1 - t0 < 0.25);
        gbs[f] = (double)reps * rows * wrb / (t1 - t0) / 1e9;
        reps = 0;
        t0 = now_s();
        do {
            quant_gemm(t, n, w, wrb, 0, rows, a, arb, 8, out, rows);
            reps++;
            t1 = now_s();
        } while (t1 - t0 < 0.25);
        gemm_gbs[f] = (double)reps * rows * wrb * 8 / (t1 - t0) / 1e9;
    }
    quant_force_scalar(false);
    printf("bench %-5s n=%lld rows=%lld: vec_dot %6.2f GB/s (scalar %5.2f, x%.1f); "
           "gemm x8 %6.2f GB/s-equiv (scalar %5.2f, x%.1f) [%s]\n",
           quant_type_name((int)t), (long long)n, (long long)rows, gbs[0], gbs[1],
           gbs[0] / gbs[1], gemm_gbs[0], gemm_gbs[1], gemm_gbs[0] / gemm_gbs[1],
           quant_kernel_name());
    fflush(stdout);
    (void)sink;
    free(w);
    free(a);
    free(x);
    free(out);
}

START_TEST(test_bench)
{
    static const moe_type bt[] = {MOE_TYPE_Q8_0, MOE_TYPE_Q4_0, MOE_TYPE_Q4_K,
                                  MOE_TYPE_Q6_K, MOE_TYPE_Q5_K, MOE_TYPE_F16};
    for (size_t i = 0; i < sizeof bt / sizeof bt[0]; i++)
        quant_bench(bt[i], 1024, 256);
    /* a matrix far larger than the caches: DRAM streaming rate */
    quant_bench(MOE_TYPE_Q8_0, 4096, 16384);
    ck_assert(1); /* measurement only; runs on request */
}
END_TEST

Suite *quant_suite(void);

Suite *quant_suite(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_table);
    tcase_add_test(tc, test_f16_edges);
    tcase_add_test(tc, test_bf16_edges);
    tcase_add_test(tc, test_q8_0_known);
    tcase_add_test(tc, test_q4_0_known);
    tcase_add_test(tc, test_q8_k_known);
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_dot_ref_vs_float);
    tcase_add_loop_test(tc, test_dot_fast_vs_ref, 0, N_KSETS);
    tcase_add_test(tc, test_dot_extremes);
    tcase_add_loop_test(tc, test_gemm_vs_dot, 0, N_KSETS);
    tcase_add_loop_test(tc, test_quantize_fast_exact, 0, N_KSETS);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_kernel_name);
    tcase_add_test(tc, test_real_files);
    suite_add_tcase(s, tc);
    if (getenv("MOE_QUANT_BENCH")) {
        TCase *tb = tcase_create("bench");
        tcase_set_timeout(tb, 120);
        tcase_add_test(tb, test_bench);
        suite_add_tcase(s, tb);
    }
    return s;
}
