/*
 * quant.c - tensor element types: the type table, fp16/bf16 conversion, the
 * scalar reference for dequantize / quantize / dot products of every
 * supported type, and dispatch to the fast kernels of quant_x86.c.
 *
 * Owns: block arithmetic only. Must not depend on files, models or threads
 * (other than a pthread_once for kernel selection); never prints or aborts.
 *
 * Rounding. Activation types follow what the reference runtime does on x86
 * (its vector path), so our activations are bit-identical to its:
 *   q8_0/q8_1: d = amax/127, q = round-half-even(x * (127/amax)),
 *              q8_1 s = fp16(d * sum q);
 *   q8_k:      m = the value of largest |x| (first one), iscale = -127/m,
 *              q = min(127, round-half-even(iscale*x)), d = 1/iscale,
 *              bsums = sums of 16;
 *   f16/bf16:  round to nearest even.
 * Weight types q4_0, q4_1, q5_0, q5_1 use the reference rules exactly
 * (d = max/-8 and truncation of x/d + 8.5, etc.). The k-quants use a simple
 * non-searching rule (documented at quantize_kquant below): per group
 * min/max (or max-by-abs) scales, scales quantized with round-to-nearest,
 * then values re-rounded against the stored scales. Good enough for tests
 * and synthetic models; not bit-identical to the reference's search.
 *
 * Bad input (unsupported type, n not a multiple of the block) never
 * crashes: only whole blocks are processed, unsupported types give row size
 * 0, dequantize writes NaN, dot products return NaN.
 */
#include "config.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "quant.h"
#include "quant_impl.h"

/* The scalar dots define the summation order the fast kernels reproduce bit
 * for bit: no fused multiply-add may be introduced by the compiler. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- type table ---------------------------------------------------------- */

typedef struct {
    const char *name;
    int64_t blck;
    size_t bytes;
    moe_type dot_type;
} type_traits;

static const type_traits traits[MOE_TYPE_COUNT] = {
    [MOE_TYPE_F32] = {"f32", 1, 4, MOE_TYPE_F32},
    [MOE_TYPE_F16] = {"f16", 1, 2, MOE_TYPE_F16},
    [MOE_TYPE_BF16] = {"bf16", 1, 2, MOE_TYPE_BF16},
    [MOE_TYPE_Q4_0] = {"q4_0", QK32, sizeof(blk_q4_0), MOE_TYPE_Q8_0},
    [MOE_TYPE_Q4_1] = {"q4_1", QK32, sizeof(blk_q4_1), MOE_TYPE_Q8_1},
    [MOE_TYPE_Q5_0] = {"q5_0", QK32, sizeof(blk_q5_0), MOE_TYPE_Q8_0},
    [MOE_TYPE_Q5_1] = {"q5_1", QK32, sizeof(blk_q5_1), MOE_TYPE_Q8_1},
    [MOE_TYPE_Q8_0] = {"q8_0", QK32, sizeof(blk_q8_0), MOE_TYPE_Q8_0},
    [MOE_TYPE_Q8_1] = {"q8_1", QK32, sizeof(blk_q8_1), MOE_TYPE_Q8_1},
    [MOE_TYPE_Q2_K] = {"q2_k", QK_K, sizeof(blk_q2_k), MOE_TYPE_Q8_K},
    [MOE_TYPE_Q3_K] = {"q3_k", QK_K, sizeof(blk_q3_k), MOE_TYPE_Q8_K},
    [MOE_TYPE_Q4_K] = {"q4_k", QK_K, sizeof(blk_q4_k), MOE_TYPE_Q8_K},
    [MOE_TYPE_Q5_K] = {"q5_k", QK_K, sizeof(blk_q5_k), MOE_TYPE_Q8_K},
    [MOE_TYPE_Q6_K] = {"q6_k", QK_K, sizeof(blk_q6_k), MOE_TYPE_Q8_K},
    [MOE_TYPE_Q8_K] = {"q8_k", QK_K, sizeof(blk_q8_k), MOE_TYPE_Q8_K},
};
static_assert(sizeof traits / sizeof traits[0] == MOE_TYPE_COUNT,
              "one traits entry per type id");

bool quant_type_supported(int type)
{
    return type >= 0 && type < MOE_TYPE_COUNT && traits[type].name != NULL;
}

const char *quant_type_name(int type)
{
    return quant_type_supported(type) ? traits[type].name : "unknown";
}

int quant_type_from_name(const char *name)
{
    if (!name)
        return -1;
    for (int t = 0; t < MOE_TYPE_COUNT; t++) {
        const char *a = traits[t].name, *b = name;
        if (!a)
            continue;
        while (*a && *b && (*a == *b || (*b >= 'A' && *b <= 'Z' && *a == *b + ('a' - 'A'))))
            a++, b++;
        if (!*a && !*b)
            return t;
    }
    return -1;
}

int64_t quant_block_elems(moe_type type)
{
    return quant_type_supported((int)type) ? traits[type].blck : 0;
}

size_t quant_block_bytes(moe_type type)
{
    return quant_type_supported((int)type) ? traits[type].bytes : 0;
}

size_t quant_row_bytes(moe_type type, int64_t n)
{
    if (!quant_type_supported((int)type) || n < 0)
        return 0;
    return (size_t)(n / traits[type].blck) * traits[type].bytes;
}

moe_type quant_vec_dot_type(moe_type t)
{
    return quant_type_supported((int)t) ? traits[t].dot_type : MOE_TYPE_F32;
}

/* ---- fp16 / bf16 ----------------------------------------------------------- */

static inline uint32_t f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float u2f(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float quant_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0) { /* zero or subnormal: mant * 2^-24 is exact */
        float v = (float)mant * 0x1p-24f;
        return u2f(f2u(v) | sign);
    }
    if (exp == 31) /* inf / nan (payload kept) */
        return u2f(sign | 0x7F800000u | (mant << 13));
    return u2f(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t quant_f32_to_f16(float f)
{
    uint32_t x = f2u(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7FFFFFFFu;
    if (x > 0x7F800000u) /* nan: keep it quiet and non-zero */
        return (uint16_t)(sign | 0x7E00 | ((x >> 13) & 0x3FF));
    if (x >= 0x477FF000u) /* >= 65520 rounds to inf (ties to even) */
        return (uint16_t)(sign | 0x7C00);
    if (x < 0x38800000u) { /* below 2^-14: subnormal or zero */
        /* scaling by 2^24 is exact; rintf rounds half to even. The result
         * 1024 is correctly the smallest normal's encoding. */
        float v = rintf(u2f(x) * 0x1p24f);
        return (uint16_t)(sign | (uint16_t)v);
    }
    x += 0xFFFu + ((x >> 13) & 1); /* round half to even on bit 13 */
    return (uint16_t)(sign | ((x - 0x38000000u) >> 13));
}

float quant_bf16_to_f32(uint16_t h)
{
    return u2f((uint32_t)h << 16);
}

uint16_t quant_f32_to_bf16(float f)
{
    uint32_t x = f2u(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) /* nan: force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1)) >> 16);
}

#define F16(h) quant_f16_to_f32(h)

/* round half to even, for |v| < 2^22 (the reference's nearest_int) */
static inline int nearest_int(float v)
{
    return (int)rintf(v);
}

/* ---- dequantize ------------------------------------------------------------ */

static void deq_q4_0(const blk_q4_0 *b, float *y)
{
    float d = F16(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = d * ((b->qs[j] & 0xF) - 8);
        y[j + 16] = d * ((b->qs[j] >> 4) - 8);
    }
}

static void deq_q4_1(const blk_q4_1 *b, float *y)
{
    float d = F16(b->d), m = F16(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = d * (b->qs[j] & 0xF) + m;
        y[j + 16] = d * (b->qs[j] >> 4) + m;
    }
}

static inline uint32_t load_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

/* the 32 5-bit values of a q5 block */
static void q5_values(const uint8_t *qs, const uint8_t *qhb, int q[32])
{
    uint32_t qh = load_u32(qhb);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0xF) | (int)(((qh >> j) & 1) << 4);
        q[j + 16] = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
    }
}

static void deq_q5_0(const blk_q5_0 *b, float *y)
{
    float d = F16(b->d);
    int q[32];
    q5_values(b->qs, b->qh, q);
    for (int j = 0; j < 32; j++)
        y[j] = d * (q[j] - 16);
}

static void deq_q5_1(const blk_q5_1 *b, float *y)
{
    float d = F16(b->d), m = F16(b->m);
    int q[32];
    q5_values(b->qs, b->qh, q);
    for (int j = 0; j < 32; j++)
        y[j] = d * q[j] + m;
}

static void deq_q8_0(const blk_q8_0 *b, float *y)
{
    float d = F16(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = d * b->qs[j];
}

static void deq_q8_1(const blk_q8_1 *b, float *y)
{
    float d = F16(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = d * b->qs[j];
}

/* 2-bit (q2_k) and 3-bit (q3_k) values, element order of the k-quants */
static void q2_values(const uint8_t *qs, int q[QK_K])
{
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++)
                q[128 * h + 32 * j + l] = (qs[32 * h + l] >> (2 * j)) & 3;
}

static void deq_q2_k(const blk_q2_k *b, float *y)
{
    float d = F16(b->d), dmin = F16(b->dmin);
    int q[QK_K];
    q2_values(b->qs, q);
    for (int g = 0; g < 16; g++) {
        float dl = d * (b->scales[g] & 0xF), ml = dmin * (b->scales[g] >> 4);
        for (int l = 0; l < 16; l++)
            y[16 * g + l] = dl * q[16 * g + l] - ml;
    }
}

static void q3_values(const blk_q3_k *b, int q[QK_K])
{
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++) {
                int lo = (b->qs[32 * h + l] >> (2 * j)) & 3;
                int hi = (b->hmask[l] >> (4 * h + j)) & 1;
                q[128 * h + 32 * j + l] = (lo | hi << 2) - 4;
            }
}

static void deq_q3_k(const blk_q3_k *b, float *y)
{
    float d = F16(b->d);
    int8_t sc[16];
    int q[QK_K];
    quant_k3_scales(b->scales, sc);
    q3_values(b, q);
    for (int g = 0; g < 16; g++)
        for (int l = 0; l < 16; l++)
            y[16 * g + l] = d * sc[g] * q[16 * g + l];
}

static void deq_q4_k(const blk_q4_k *b, float *y)
{
    float d = F16(b->d), dmin = F16(b->dmin);
    for (int j = 0; j < 4; j++) {
        uint8_t s1, m1, s2, m2;
        quant_k4_scale_min(b->scales, 2 * j, &s1, &m1);
        quant_k4_scale_min(b->scales, 2 * j + 1, &s2, &m2);
        float d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
        for (int l = 0; l < 32; l++) {
            y[64 * j + l] = d1 * (b->qs[32 * j + l] & 0xF) - o1;
            y[64 * j + 32 + l] = d2 * (b->qs[32 * j + l] >> 4) - o2;
        }
    }
}

static void deq_q5_k(const blk_q5_k *b, float *y)
{
    float d = F16(b->d), dmin = F16(b->dmin);
    for (int j = 0; j < 4; j++) {
        uint8_t s1, m1, s2, m2;
        quant_k4_scale_min(b->scales, 2 * j, &s1, &m1);
        quant_k4_scale_min(b->scales, 2 * j + 1, &s2, &m2);
        float d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
        for (int l = 0; l < 32; l++) {
            int q1 = (b->qs[32 * j + l] & 0xF) | (((b->qh[l] >> (2 * j)) & 1) << 4);
            int q2 = (b->qs[32 * j + l] >> 4) | (((b->qh[l] >> (2 * j + 1)) & 1) << 4);
            y[64 * j + l] = d1 * q1 - o1;
            y[64 * j + 32 + l] = d2 * q2 - o2;
        }
    }
}

static void q6_values(const blk_q6_k *b, int q[QK_K])
{
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        int *o = q + 128 * h;
        for (int l = 0; l < 32; l++) {
            o[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
            o[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            o[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            o[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        }
    }
}

static void deq_q6_k(const blk_q6_k *b, float *y)
{
    float d = F16(b->d);
    int q[QK_K];
    q6_values(b, q);
    for (int i = 0; i < QK_K; i++)
        y[i] = d * b->scales[i / 16] * q[i];
}

static void deq_q8_k(const blk_q8_k *b, float *y)
{
    for (int i = 0; i < QK_K; i++)
        y[i] = b->d * b->qs[i];
}

void quant_dequantize_row(moe_type t, const void *src, float *dst, int64_t n)
{
    if (!quant_type_supported((int)t) || n <= 0) {
        for (int64_t i = 0; i < n; i++)
            dst[i] = NAN;
        return;
    }
    int64_t bk = traits[t].blck, nb = n / bk;
    size_t bs = traits[t].bytes;
    const uint8_t *p = src;
    switch (t) {
    case MOE_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case MOE_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = F16(((const uint16_t *)src)[i]);
        return;
    case MOE_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = quant_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    default:
        break;
    }
    for (int64_t i = 0; i < nb; i++, p += bs) {
        float *y = dst + i * bk;
        switch (t) {
        case MOE_TYPE_Q4_0: deq_q4_0((const blk_q4_0 *)p, y); break;
        case MOE_TYPE_Q4_1: deq_q4_1((const blk_q4_1 *)p, y); break;
        case MOE_TYPE_Q5_0: deq_q5_0((const blk_q5_0 *)p, y); break;
        case MOE_TYPE_Q5_1: deq_q5_1((const blk_q5_1 *)p, y); break;
        case MOE_TYPE_Q8_0: deq_q8_0((const blk_q8_0 *)p, y); break;
        case MOE_TYPE_Q8_1: deq_q8_1((const blk_q8_1 *)p, y); break;
        case MOE_TYPE_Q2_K: deq_q2_k((const blk_q2_k *)p, y); break;
        case MOE_TYPE_Q3_K: deq_q3_k((const blk_q3_k *)p, y); break;
        case MOE_TYPE_Q4_K: deq_q4_k((const blk_q4_k *)p, y); break;
        case MOE_TYPE_Q5_K: deq_q5_k((const blk_q5_k *)p, y); break;
        case MOE_TYPE_Q6_K: deq_q6_k((const blk_q6_k *)p, y); break;
        case MOE_TYPE_Q8_K: deq_q8_k((const blk_q8_k *)p, y); break;
        default: break;
        }
    }
    for (int64_t i = nb * bk; i < n; i++) /* partial block: not representable */
        dst[i] = NAN;
}

/* ---- quantize: legacy types ---------------------------------------------- */

/* value of largest magnitude (first one on ties) and its magnitude */
static float max_by_abs(const float *x, int n, float *amax_out)
{
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    *amax_out = amax;
    return max;
}

static void qz_q4_0(const float *x, blk_q4_0 *b)
{
    float amax, max = max_by_abs(x, 32, &amax);
    float d = max / -8, id = d != 0.0f ? 1.0f / d : 0.0f;
    b->d = quant_f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
        int q0 = (int8_t)(x[j] * id + 8.5f), q1 = (int8_t)(x[j + 16] * id + 8.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b->qs[j] = (uint8_t)(q0 | q1 << 4);
    }
}

static void min_max(const float *x, int n, float *mn, float *mx)
{
    float lo = x[0], hi = x[0];
    for (int j = 1; j < n; j++) {
        lo = x[j] < lo ? x[j] : lo;
        hi = x[j] > hi ? x[j] : hi;
    }
    *mn = lo;
    *mx = hi;
}

static void qz_q4_1(const float *x, blk_q4_1 *b)
{
    float mn, mx;
    min_max(x, 32, &mn, &mx);
    float d = (mx - mn) / 15, id = d != 0.0f ? 1.0f / d : 0.0f;
    b->d = quant_f32_to_f16(d);
    b->m = quant_f32_to_f16(mn);
    for (int j = 0; j < 16; j++) {
        int q0 = (int8_t)((x[j] - mn) * id + 0.5f);
        int q1 = (int8_t)((x[j + 16] - mn) * id + 0.5f);
        q0 = q0 > 15 ? 15 : q0;
        q1 = q1 > 15 ? 15 : q1;
        b->qs[j] = (uint8_t)(q0 | q1 << 4);
    }
}

static void pack_q5(const int q[32], uint8_t *qs, uint8_t *qhb)
{
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 0xF) | (q[j + 16] & 0xF) << 4);
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int k = 0; k < 4; k++)
        qhb[k] = (uint8_t)(qh >> (8 * k));
}

static void qz_q5_0(const float *x, blk_q5_0 *b)
{
    float amax, max = max_by_abs(x, 32, &amax);
    float d = max / -16, id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    b->d = quant_f32_to_f16(d);
    for (int j = 0; j < 32; j++) {
        q[j] = (int8_t)(x[j] * id + 16.5f);
        q[j] = q[j] > 31 ? 31 : q[j];
    }
    pack_q5(q, b->qs, b->qh);
}

static void qz_q5_1(const float *x, blk_q5_1 *b)
{
    float mn, mx;
    min_max(x, 32, &mn, &mx);
    float d = (mx - mn) / 31, id = d != 0.0f ? 1.0f / d : 0.0f;
    int q[32];
    b->d = quant_f32_to_f16(d);
    b->m = quant_f32_to_f16(mn);
    for (int j = 0; j < 32; j++)
        q[j] = (uint8_t)((x[j] - mn) * id + 0.5f);
    pack_q5(q, b->qs, b->qh);
}

/* q8_0 / q8_1 as the reference's x86 path; returns the sum of the quants
 * and the unrounded scale in *d_out */
static int qz_q8_32(const float *x, uint16_t *dh, int8_t *qs, float *d_out)
{
    float amax = 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; j++)
        amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *dh = quant_f32_to_f16(d);
    for (int j = 0; j < 32; j++) {
        qs[j] = (int8_t)nearest_int(x[j] * id);
        sum += qs[j];
    }
    *d_out = d;
    return sum;
}

static void qz_q8_0(const float *x, blk_q8_0 *b)
{
    float d;
    qz_q8_32(x, &b->d, b->qs, &d);
}

static void qz_q8_1(const float *x, blk_q8_1 *b)
{
    float d;
    int sum = qz_q8_32(x, &b->d, b->qs, &d);
    b->s = quant_f32_to_f16(d * (float)sum);
}

static void qz_q8_k(const float *x, blk_q8_k *b)
{
    float amax, max = max_by_abs(x, QK_K, &amax);
    if (amax == 0.0f) {
        memset(b, 0, sizeof *b);
        return;
    }
    float iscale = -127.0f / max;
    for (int j = 0; j < QK_K; j++) {
        int v = nearest_int(iscale * x[j]);
        b->qs[j] = (int8_t)(v > 127 ? 127 : v);
    }
    for (int g = 0; g < QK_K / 16; g++) {
        int s = 0;
        for (int l = 0; l < 16; l++)
            s += b->qs[16 * g + l];
        b->bsums[g] = (int16_t)s;
    }
    b->d = 1.0f / iscale;
}

/* ---- quantize: k-quant weights (simple rule) -------------------------------
 * Groups with a min (q2_k, q4_k, q5_k): scale = (max - min(0, min)) / nmax,
 * offset = -min(0, min). Symmetric groups (q3_k, q6_k): scale from the value
 * of largest magnitude mapped to the most negative level (as q4_0). The
 * group scales/offsets are quantized against a per-block fp16 super-scale
 * with round-to-nearest, then every value is rounded to nearest against
 * the scale actually stored (so the stored rounding error is consistent). */

static inline int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* quantize n group scales (>= 0) to 0..lmax against d = max/lmax (fp16) */
static uint16_t quant_scales_unsigned(const float *s, int n, int lmax, uint8_t *l)
{
    float mx = 0.0f;
    for (int g = 0; g < n; g++)
        mx = s[g] > mx ? s[g] : mx;
    uint16_t dh = quant_f32_to_f16(mx / lmax);
    float d = F16(dh), id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int g = 0; g < n; g++)
        l[g] = (uint8_t)clampi(nearest_int(s[g] * id), 0, lmax);
    return dh;
}

/* groups with min: x ~ d*ls*q - dmin*lm, q in 0..nmax; writes q[] and the
 * 8-bit scale/min levels; returns fp16 d and dmin */
static void quant_kgroups_min(const float *x, int ngroup, int gsize, int nmax,
                              int lmax, uint8_t *ls, uint8_t *lm, uint8_t *q,
                              uint16_t *dh, uint16_t *dminh)
{
    float sc[16], mn[16];
    for (int g = 0; g < ngroup; g++) {
        float lo, hi;
        min_max(x + g * gsize, gsize, &lo, &hi);
        lo = lo > 0.0f ? 0.0f : lo;
        sc[g] = (hi - lo) / nmax;
        mn[g] = -lo;
    }
    *dh = quant_scales_unsigned(sc, ngroup, lmax, ls);
    *dminh = quant_scales_unsigned(mn, ngroup, lmax, lm);
    float d = F16(*dh), dmin = F16(*dminh);
    for (int g = 0; g < ngroup; g++) {
        float ds = d * ls[g], off = dmin * lm[g], ids = ds > 0.0f ? 1.0f / ds : 0.0f;
        for (int l = 0; l < gsize; l++) {
            float v = (x[g * gsize + l] + off) * ids;
            q[g * gsize + l] = (uint8_t)clampi(nearest_int(v), 0, nmax);
        }
    }
}

/* symmetric groups: x ~ d*sc*q, q in -nq..nq-1, sc in -ns..ns-1 (signed) */
static uint16_t quant_kgroups_sym(const float *x, int ngroup, int gsize, int nq,
                                  int ns, int8_t *sc, int8_t *q)
{
    float s[16], amax, smax = 0.0f, smaxv = 0.0f;
    for (int g = 0; g < ngroup; g++) {
        s[g] = max_by_abs(x + g * gsize, gsize, &amax) / -(float)nq;
        if (fabsf(s[g]) > smax) {
            smax = fabsf(s[g]);
            smaxv = s[g];
        }
    }
    float iscale = smax > 0.0f ? -(float)ns / smaxv : 0.0f;
    uint16_t dh = quant_f32_to_f16(iscale != 0.0f ? 1.0f / iscale : 0.0f);
    float d = F16(dh);
    for (int g = 0; g < ngroup; g++) {
        sc[g] = (int8_t)clampi(nearest_int(s[g] * iscale), -ns, ns - 1);
        float ds = d * sc[g], ids = ds != 0.0f ? 1.0f / ds : 0.0f;
        for (int l = 0; l < gsize; l++)
            q[g * gsize + l] =
                (int8_t)clampi(nearest_int(x[g * gsize + l] * ids), -nq, nq - 1);
    }
    return dh;
}

/* k-quant element e = 128h + 32j + l -> byte 32h + l, bits 2j (q2/q3 low) */
static void pack_2bit(const uint8_t *q, uint8_t *qs)
{
    memset(qs, 0, QK_K / 4);
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, j = (e % 128) / 32, l = e % 32;
        qs[32 * h + l] |= (uint8_t)((q[e] & 3) << (2 * j));
    }
}

static void qz_q2_k(const float *x, blk_q2_k *b)
{
    uint8_t ls[16], lm[16], q[QK_K];
    quant_kgroups_min(x, 16, 16, 3, 15, ls, lm, q, &b->d, &b->dmin);
    for (int g = 0; g < 16; g++)
        b->scales[g] = (uint8_t)(ls[g] | lm[g] << 4);
    pack_2bit(q, b->qs);
}

static void qz_q3_k(const float *x, blk_q3_k *b)
{
    int8_t sc[16], q[QK_K];
    uint8_t u[QK_K];
    b->d = quant_kgroups_sym(x, 16, 16, 4, 32, sc, q);
    memset(b->scales, 0, sizeof b->scales);
    for (int g = 0; g < 16; g++) {
        int l = sc[g] + 32;
        b->scales[g % 8] |= (uint8_t)((l & 0xF) << (g < 8 ? 0 : 4));
        b->scales[8 + g % 4] |= (uint8_t)((l >> 4) << (2 * (g / 4)));
    }
    memset(b->hmask, 0, sizeof b->hmask);
    for (int e = 0; e < QK_K; e++) {
        u[e] = (uint8_t)(q[e] + 4);
        int h = e / 128, j = (e % 128) / 32, l = e % 32;
        b->hmask[l] |= (uint8_t)((u[e] >> 2) << (4 * h + j));
    }
    pack_2bit(u, b->qs);
}

static void pack_k4_scales(const uint8_t *ls, const uint8_t *lm, uint8_t *s)
{
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((ls[j] & 63) | (ls[j + 4] >> 4) << 6);
        s[j + 4] = (uint8_t)((lm[j] & 63) | (lm[j + 4] >> 4) << 6);
        s[j + 8] = (uint8_t)((ls[j + 4] & 0xF) | (lm[j + 4] & 0xF) << 4);
    }
}

static void qz_q4_k(const float *x, blk_q4_k *b)
{
    uint8_t ls[8], lm[8], q[QK_K];
    quant_kgroups_min(x, 8, 32, 15, 63, ls, lm, q, &b->d, &b->dmin);
    pack_k4_scales(ls, lm, b->scales);
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < 32; l++)
            b->qs[32 * j + l] = (uint8_t)(q[64 * j + l] | q[64 * j + 32 + l] << 4);
}

static void qz_q5_k(const float *x, blk_q5_k *b)
{
    uint8_t ls[8], lm[8], q[QK_K];
    quant_kgroups_min(x, 8, 32, 31, 63, ls, lm, q, &b->d, &b->dmin);
    pack_k4_scales(ls, lm, b->scales);
    memset(b->qh, 0, sizeof b->qh);
    for (int j = 0; j < 4; j++)
        for (int l = 0; l < 32; l++) {
            int q1 = q[64 * j + l], q2 = q[64 * j + 32 + l];
            b->qs[32 * j + l] = (uint8_t)((q1 & 0xF) | (q2 & 0xF) << 4);
            b->qh[l] |= (uint8_t)(((q1 >> 4) << (2 * j)) | ((q2 >> 4) << (2 * j + 1)));
        }
}

static void qz_q6_k(const float *x, blk_q6_k *b)
{
    int8_t q[QK_K];
    b->d = quant_kgroups_sym(x, 16, 16, 32, 128, b->scales, q);
    memset(b->ql, 0, sizeof b->ql);
    memset(b->qh, 0, sizeof b->qh);
    for (int e = 0; e < QK_K; e++) {
        int u = q[e] + 32, h = e / 128, r = e % 128, part = r / 32, l = r % 32;
        uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        /* part 0: ql[l] low, 1: ql[l+32] low, 2: ql[l] high, 3: ql[l+32] high */
        ql[l + 32 * (part & 1)] |= (uint8_t)((u & 0xF) << (4 * (part >> 1)));
        qh[l] |= (uint8_t)((u >> 4) << (2 * part));
    }
}


static void quantize_ref(moe_type t, const float *src, void *dst, int64_t n)
{
    int64_t bk = traits[t].blck, nb = n / bk;
    size_t bs = traits[t].bytes;
    uint8_t *p = dst;
    switch (t) {
    case MOE_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    case MOE_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = quant_f32_to_f16(src[i]);
        return;
    case MOE_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = quant_f32_to_bf16(src[i]);
        return;
    default:
        break;
    }
    for (int64_t i = 0; i < nb; i++, p += bs) {
        const float *x = src + i * bk;
        switch (t) {
        case MOE_TYPE_Q4_0: qz_q4_0(x, (blk_q4_0 *)p); break;
        case MOE_TYPE_Q4_1: qz_q4_1(x, (blk_q4_1 *)p); break;
        case MOE_TYPE_Q5_0: qz_q5_0(x, (blk_q5_0 *)p); break;
        case MOE_TYPE_Q5_1: qz_q5_1(x, (blk_q5_1 *)p); break;
        case MOE_TYPE_Q8_0: qz_q8_0(x, (blk_q8_0 *)p); break;
        case MOE_TYPE_Q8_1: qz_q8_1(x, (blk_q8_1 *)p); break;
        case MOE_TYPE_Q2_K: qz_q2_k(x, (blk_q2_k *)p); break;
        case MOE_TYPE_Q3_K: qz_q3_k(x, (blk_q3_k *)p); break;
        case MOE_TYPE_Q4_K: qz_q4_k(x, (blk_q4_k *)p); break;
        case MOE_TYPE_Q5_K: qz_q5_k(x, (blk_q5_k *)p); break;
        case MOE_TYPE_Q6_K: qz_q6_k(x, (blk_q6_k *)p); break;
        case MOE_TYPE_Q8_K: qz_q8_k(x, (blk_q8_k *)p); break;
        default: break;
        }
    }
}

/* ---- scalar dot products -----------------------------------------------------
 * Float accumulation follows the reference runtime's x86 kernels (AVX2 /
 * AVX512 builds), so results are bit-identical where its order is known:
 * quantized activations downstream turn 1-ulp differences into flipped
 * roundings. Fast kernels in quant_x86.c should reproduce the same order.
 *   q8_0:  8 lanes; lane l of block i is the integer sum of elements
 *          4l..4l+3; acc[l] = fma(d_w*d_a, (float)lane, acc[l]); hsum8.
 *   q4_0:  (reference repacks q4_0 weights on x86) per block the whole
 *          integer sum; acc = fma((float)isum, d_w*d_a, acc), in order.
 *   q6_k:  8 lanes over a super-block; lane l sums scale*q*a of elements e
 *          with (e % 32) / 4 == l; acc[l] = fma(d_a*d_w, (float)lane,
 *          acc[l]); hsum8.
 *   q5_k:  q6_k's lanes for the scale part; the min part as a float
 *          summs = fma(-d_a*dmin_w, (float)sum(m*bsums), summs); hsum8 + summs.
 *   q4_k:  (repacked on x86) per super-block whole integer sums;
 *          acc = fma((float)isum, d_w*d_a, acc), accm = fma((float)imin,
 *          dmin_w*d_a, accm); result acc - accm.
 *   f32:   16 lanes, one accumulator, fma, tree sum (n % 16 == 0); in
 *          the expert order see dot_f32_expert.
 *   f16/bf16: see dot_f16 below (dense and expert orders differ).
 *   quant_hsum8(v) = ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7)). */

float quant_hsum8(const float v[8])
{
    float a0 = v[0] + v[4], a1 = v[1] + v[5], a2 = v[2] + v[6], a3 = v[3] + v[7];
    return (a0 + a2) + (a1 + a3);
}

float quant_hsum16(const float v[16])
{
    float h[8];
    for (int l = 0; l < 8; l++)
        h[l] = v[l] + v[l + 8];
    return quant_hsum8(h);
}

static float dot_f32(int64_t n, const float *w, const float *a)
{
    if (n % 16 == 0) {
        float acc[16] = {0};
        for (int64_t i = 0; i < n; i += 16)
            for (int l = 0; l < 16; l++)
                acc[l] = fmaf(w[i + l], a[i + l], acc[l]);
        return quant_hsum16(acc);
    }
    return (float)quant_ref_dot_f32_wide(n, w, a);
}

double quant_ref_dot_f32_wide(int64_t n, const float *w, const float *a)
{
    double l[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++)
            l[k] += (double)w[i + k] * a[i + k];
    double s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    for (; i < n; i++)
        s += (double)w[i] * a[i];
    return s;
}

/* f16 / bf16. The reference multiplies these weights in two ways, and the
 * summation order differs:
 *   dense (tile kernel, n % 16 == 0 for f16, n % 32 for bf16):
 *     f16:  16 lanes, lane l takes elements e with e % 16 == l,
 *           acc[l] = fma(w, a, acc[l]), in order; hsum16.
 *     bf16: 16 lanes over steps of 32, lane l takes the pair 2l, 2l+1 of
 *           each step: acc[l] = fma(w[2l+1], a[2l+1], acc[l]), then
 *           fma(w[2l], a[2l], acc[l]) (a bf16 product is exact in float,
 *           so each is one rounded add); hsum16.
 *   expert (per-row vector dot; also dense when n does not divide, or
 *   when the weight's row count is no multiple of 4: forward.c mm_make):
 *     f16:  4 x 16 lanes over steps of 64 (accumulator j takes elements
 *           64i + 16j + l), fma; then acc0 += acc2, acc1 += acc3,
 *           acc0 += acc1 lane-wise, hsum16; the n % 64 leftovers are added
 *           in double as float products.
 *     bf16: 2 x 16 lanes of pairs over steps of 64 (the first 32 elements
 *           of a step to accumulator 0, the next 32 to accumulator 1,
 *           pairs as in the dense order); double(quant_hsum16(acc0)) +
 *           double(quant_hsum16(acc1)), the n % 64 leftovers as f16's. */
static inline float f16v(const uint16_t *p, int64_t i)
{
    return F16(p[i]);
}

static inline float bf16v(const uint16_t *p, int64_t i)
{
    return quant_bf16_to_f32(p[i]);
}

/* one 16-lane bf16 pair step over elements e0..e0+31 */
static void bf16_pairs16(float acc[16], const uint16_t *w, const uint16_t *a, int64_t e0)
{
    for (int l = 0; l < 16; l++) {
        int64_t e = e0 + 2 * l;
        acc[l] = fmaf(bf16v(w, e + 1), bf16v(a, e + 1), acc[l]);
        acc[l] = fmaf(bf16v(w, e), bf16v(a, e), acc[l]);
    }
}

static float f16p(const void *p, int64_t i)
{
    return f16v(p, i);
}

static float f32p(const void *p, int64_t i)
{
    return ((const float *)p)[i];
}

/* The vector dot's 4 x 16 lanes over the 64-element steps of n (element e
 * of a step in accumulator e / 16, lane e % 16; ld reads element i), then
 * acc0 += acc2, acc1 += acc3, acc0 += acc1 lane-wise and hsum16. *end is
 * the first element left over. */
static float vec4x16(int64_t n, const void *w, const void *a, float (*ld)(const void *, int64_t),
                     int64_t *end)
{
    float acc[4][16] = {{0}};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 16; l++) {
                int64_t e = i + 16 * j + l;
                acc[j][l] = fmaf(ld(w, e), ld(a, e), acc[j][l]);
            }
    for (int l = 0; l < 16; l++) {
        acc[0][l] += acc[2][l];
        acc[1][l] += acc[3][l];
    }
    for (int l = 0; l < 16; l++)
        acc[0][l] += acc[1][l];
    *end = i;
    return quant_hsum16(acc[0]);
}

static float dot_f16_expert(int64_t n, const uint16_t *w, const uint16_t *a)
{
    int64_t i;
    double s = vec4x16(n, w, a, f16p, &i);
    for (; i < n; i++)
        s += (double)(f16v(w, i) * f16v(a, i));
    return (float)s;
}

/* f32 in the expert (vector-dot) order: 4 x 16 lanes over steps of 64 as
 * f16's above, then the n % 64 leftovers added to that float sum one
 * unfused product at a time (not in double, and not fused: tiny-mixtral's
 * f32 logits, whose expert down rows have 96 elements, are bit-identical
 * to the reference's only so). */
static float dot_f32_expert(int64_t n, const float *w, const float *a)
{
    int64_t i;
    float s = vec4x16(n, w, a, f32p, &i);
    for (; i < n; i++)
        s += w[i] * a[i];
    return s;
}

static float dot_bf16_expert(int64_t n, const uint16_t *w, const uint16_t *a)
{
    float acc[2][16] = {{0}};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        bf16_pairs16(acc[0], w, a, i);
        bf16_pairs16(acc[1], w, a, i + 32);
    }
    double s = quant_hsum16(acc[0]);
    s += quant_hsum16(acc[1]);
    for (; i < n; i++)
        s += (double)(bf16v(w, i) * bf16v(a, i));
    return (float)s;
}

static float dot_f16(int64_t n, const uint16_t *w, const uint16_t *a)
{
    if (n % 16)
        return dot_f16_expert(n, w, a);
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i += 16)
        for (int l = 0; l < 16; l++)
            acc[l] = fmaf(f16v(w, i + l), f16v(a, i + l), acc[l]);
    return quant_hsum16(acc);
}

static float dot_bf16(int64_t n, const uint16_t *w, const uint16_t *a)
{
    if (n % 32)
        return dot_bf16_expert(n, w, a);
    float acc[16] = {0};
    for (int64_t i = 0; i < n; i += 32)
        bf16_pairs16(acc, w, a, i);
    return quant_hsum16(acc);
}

static float dot_q4_0(int64_t nb, const blk_q4_0 *w, const blk_q8_0 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += ((w[i].qs[j] & 0xF) - 8) * a[i].qs[j] +
                    ((w[i].qs[j] >> 4) - 8) * a[i].qs[j + 16];
        s = fmaf((float)isum, F16(w[i].d) * F16(a[i].d), s);
    }
    return s;
}

static float dot_q4_1(int64_t nb, const blk_q4_1 *w, const blk_q8_1 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += (w[i].qs[j] & 0xF) * a[i].qs[j] + (w[i].qs[j] >> 4) * a[i].qs[j + 16];
        s += F16(w[i].d) * F16(a[i].d) * (float)isum + F16(w[i].m) * F16(a[i].s);
    }
    return s;
}

static float dot_q5_0(int64_t nb, const blk_q5_0 *w, const blk_q8_0 *a)
{
    float s = 0.0f;
    int q[32];
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        q5_values(w[i].qs, w[i].qh, q);
        for (int j = 0; j < 32; j++)
            isum += (q[j] - 16) * a[i].qs[j];
        s += F16(w[i].d) * F16(a[i].d) * (float)isum;
    }
    return s;
}

static float dot_q5_1(int64_t nb, const blk_q5_1 *w, const blk_q8_1 *a)
{
    float s = 0.0f;
    int q[32];
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        q5_values(w[i].qs, w[i].qh, q);
        for (int j = 0; j < 32; j++)
            isum += q[j] * a[i].qs[j];
        s += F16(w[i].d) * F16(a[i].d) * (float)isum + F16(w[i].m) * F16(a[i].s);
    }
    return s;
}

static float dot_q8_0(int64_t nb, const blk_q8_0 *w, const blk_q8_0 *a)
{
    float acc[8] = {0};
    for (int64_t i = 0; i < nb; i++) {
        const float d = F16(w[i].d) * F16(a[i].d);
        for (int l = 0; l < 8; l++) {
            int lane = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                lane += w[i].qs[j] * a[i].qs[j];
            acc[l] = fmaf(d, (float)lane, acc[l]);
        }
    }
    return quant_hsum8(acc);
}

static float dot_q8_1(int64_t nb, const blk_q8_1 *w, const blk_q8_1 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < 32; j++)
            isum += w[i].qs[j] * a[i].qs[j];
        s += F16(w[i].d) * F16(a[i].d) * (float)isum;
    }
    return s;
}

/* sum over 16 groups of scale[g] * sum(q*a) within group g */
static int group16_dot(const int *q, const int8_t *a, const int *scale)
{
    int isum = 0;
    for (int g = 0; g < 16; g++) {
        int gs = 0;
        for (int l = 0; l < 16; l++)
            gs += q[16 * g + l] * a[16 * g + l];
        isum += scale[g] * gs;
    }
    return isum;
}

static float dot_q2_k(int64_t nb, const blk_q2_k *w, const blk_q8_k *a)
{
    float s = 0.0f;
    int q[QK_K], sc[16];
    for (int64_t i = 0; i < nb; i++) {
        int summs = 0;
        q2_values(w[i].qs, q);
        for (int g = 0; g < 16; g++) {
            sc[g] = w[i].scales[g] & 0xF;
            summs += (w[i].scales[g] >> 4) * a[i].bsums[g];
        }
        int isum = group16_dot(q, a[i].qs, sc);
        s += a[i].d * (F16(w[i].d) * (float)isum - F16(w[i].dmin) * (float)summs);
    }
    return s;
}

static float dot_q3_k(int64_t nb, const blk_q3_k *w, const blk_q8_k *a)
{
    float s = 0.0f;
    int q[QK_K], sc[16];
    int8_t sc8[16];
    for (int64_t i = 0; i < nb; i++) {
        q3_values(&w[i], q);
        quant_k3_scales(w[i].scales, sc8);
        for (int g = 0; g < 16; g++)
            sc[g] = sc8[g];
        int isum = group16_dot(q, a[i].qs, sc);
        s += a[i].d * F16(w[i].d) * (float)isum;
    }
    return s;
}

/* q4_k in the reference's vector-dot order: 8 integer lanes (lane l sums
 * elements 4l..4l+3 of every 32-element chunk, scaled), fused into 8 float
 * lanes per block; the mins in 4 float lanes, lane k taking the two
 * 32-element chunks 2k, 2k+1; then hsum8 + ((m0 + m2) + (m1 + m3)). */
static float dot_q4_k(int64_t nb, const blk_q4_k *w, const blk_q8_k *a)
{
    float acc[8] = {0}, accm[4] = {0};
    for (int64_t i = 0; i < nb; i++) {
        int lane[8] = {0};
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++)
            quant_k4_scale_min(w[i].scales, j, &sc[j], &mn[j]);
        for (int j = 0; j < 4; j++)
            for (int l = 0; l < 32; l++)
                lane[l / 4] += sc[2 * j] * (w[i].qs[32 * j + l] & 0xF) * a[i].qs[64 * j + l] +
                               sc[2 * j + 1] * (w[i].qs[32 * j + l] >> 4) * a[i].qs[64 * j + 32 + l];
        const float d = a[i].d * F16(w[i].d), dmin = -a[i].d * F16(w[i].dmin);
        for (int k = 0; k < 4; k++) {
            const int prod = mn[2 * k] * (a[i].bsums[4 * k] + a[i].bsums[4 * k + 1]) +
                             mn[2 * k + 1] * (a[i].bsums[4 * k + 2] + a[i].bsums[4 * k + 3]);
            accm[k] = fmaf(dmin, (float)prod, accm[k]);
        }
        for (int l = 0; l < 8; l++)
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return quant_hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]));
}

static float dot_q5_k(int64_t nb, const blk_q5_k *w, const blk_q8_k *a)
{
    float acc[8] = {0}, summs_f = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int lane[8] = {0}, summs = 0;
        for (int j = 0; j < 4; j++) {
            uint8_t s1, m1, s2, m2;
            quant_k4_scale_min(w[i].scales, 2 * j, &s1, &m1);
            quant_k4_scale_min(w[i].scales, 2 * j + 1, &s2, &m2);
            for (int l = 0; l < 32; l++) {
                int q1 = (w[i].qs[32 * j + l] & 0xF) | (((w[i].qh[l] >> (2 * j)) & 1) << 4);
                int q2 = (w[i].qs[32 * j + l] >> 4) | (((w[i].qh[l] >> (2 * j + 1)) & 1) << 4);
                lane[l / 4] += s1 * q1 * a[i].qs[64 * j + l] + s2 * q2 * a[i].qs[64 * j + 32 + l];
            }
            summs += m1 * (a[i].bsums[4 * j] + a[i].bsums[4 * j + 1]) +
                     m2 * (a[i].bsums[4 * j + 2] + a[i].bsums[4 * j + 3]);
        }
        const float d = a[i].d * F16(w[i].d), dmin = -a[i].d * F16(w[i].dmin);
        summs_f = fmaf(dmin, (float)summs, summs_f);
        for (int l = 0; l < 8; l++)
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return quant_hsum8(acc) + summs_f;
}

static float dot_q6_k(int64_t nb, const blk_q6_k *w, const blk_q8_k *a)
{
    float acc[8] = {0};
    int q[QK_K];
    for (int64_t i = 0; i < nb; i++) {
        int lane[8] = {0};
        q6_values(&w[i], q);
        for (int e = 0; e < QK_K; e++)
            lane[(e % 32) / 4] += w[i].scales[e / 16] * q[e] * a[i].qs[e];
        const float d = a[i].d * F16(w[i].d);
        for (int l = 0; l < 8; l++)
            acc[l] = fmaf(d, (float)lane[l], acc[l]);
    }
    return quant_hsum8(acc);
}

static float dot_q8_k(int64_t nb, const blk_q8_k *w, const blk_q8_k *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int isum = 0;
        for (int j = 0; j < QK_K; j++)
            isum += w[i].qs[j] * a[i].qs[j];
        s += w[i].d * a[i].d * (float)isum;
    }
    return s;
}

float quant_ref_dot(moe_type t, int64_t n, const void *w, const void *a)
{
    if (!quant_type_supported((int)t) || n < 0)
        return NAN;
    int64_t nb = n / traits[t].blck;
    switch (t) {
    case MOE_TYPE_F32: return dot_f32(n, w, a);
    case MOE_TYPE_F16: return dot_f16(n, w, a);
    case MOE_TYPE_BF16: return dot_bf16(n, w, a);
    case MOE_TYPE_Q4_0: return dot_q4_0(nb, w, a);
    case MOE_TYPE_Q4_1: return dot_q4_1(nb, w, a);
    case MOE_TYPE_Q5_0: return dot_q5_0(nb, w, a);
    case MOE_TYPE_Q5_1: return dot_q5_1(nb, w, a);
    case MOE_TYPE_Q8_0: return dot_q8_0(nb, w, a);
    case MOE_TYPE_Q8_1: return dot_q8_1(nb, w, a);
    case MOE_TYPE_Q2_K: return dot_q2_k(nb, w, a);
    case MOE_TYPE_Q3_K: return dot_q3_k(nb, w, a);
    case MOE_TYPE_Q4_K: return dot_q4_k(nb, w, a);
    case MOE_TYPE_Q5_K: return dot_q5_k(nb, w, a);
    case MOE_TYPE_Q6_K: return dot_q6_k(nb, w, a);
    case MOE_TYPE_Q8_K: return dot_q8_k(nb, w, a);
    default: return NAN;
    }
}

float quant_ref_dot_expert(moe_type t, int64_t n, const void *w, const void *a)
{
    if (t == MOE_TYPE_F16 && n >= 0)
        return dot_f16_expert(n, w, a);
    if (t == MOE_TYPE_BF16 && n >= 0)
        return dot_bf16_expert(n, w, a);
    if (t == MOE_TYPE_F32 && n >= 0)
        return dot_f32_expert(n, w, a);
    return quant_ref_dot(t, n, w, a);
}

/* ---- dispatch -------------------------------------------------------------- */

static quant_kernels g_kern;
static pthread_once_t g_kern_once = PTHREAD_ONCE_INIT;
static atomic_bool g_force_scalar;

static void kern_init(void)
{
    g_kern.name = "scalar";
    quant_x86_fill(&g_kern, NULL);
}

/* the fast kernel table, or NULL when scalar is forced */
static const quant_kernels *kern(void)
{
    if (atomic_load_explicit(&g_force_scalar, memory_order_relaxed))
        return NULL;
    pthread_once(&g_kern_once, kern_init);
    return &g_kern;
}

bool quant_kernels_select(const char *want)
{
    quant_kernels k = {.name = "scalar"};
    pthread_once(&g_kern_once, kern_init);
    if (want && !strcmp(want, "scalar")) {
        g_kern = k;
        return true;
    }
    if (!quant_x86_fill(&k, want))
        return false;
    g_kern = k;
    return true;
}

const char *quant_kernel_name(void)
{
    const quant_kernels *k = kern();
    return k ? k->name : "scalar";
}

void quant_force_scalar(bool on)
{
    atomic_store(&g_force_scalar, on);
}

bool quant_fast_kernels(void)
{
    const quant_kernels *k = kern();
    return k && strcmp(k->name, "scalar") != 0;
}

float quant_vec_dot_ref(moe_type t, int64_t n, const void *w, const void *act)
{
    return quant_ref_dot(t, n, w, act);
}

float quant_vec_dot(moe_type t, int64_t n, const void *w, const void *act)
{
    if (!quant_type_supported((int)t) || n < 0)
        return NAN;
    const quant_kernels *k = kern();
    if (k && k->dot[t])
        return k->dot[t](n, w, act);
    return quant_ref_dot(t, n, w, act);
}

double quant_dot_f32_wide(int64_t n, const float *w, const float *a)
{
    const quant_kernels *k = kern();
    if (k && k->dot_f32_wide)
        return k->dot_f32_wide(n, w, a);
    return quant_ref_dot_f32_wide(n, w, a);
}

void quant_quantize_row(moe_type t, const float *src, void *dst, int64_t n)
{
    if (!quant_type_supported((int)t) || n <= 0)
        return;
    const quant_kernels *k = kern();
    if (k && k->quantize[t])
        k->quantize[t](src, dst, n);
    else
        quantize_ref(t, src, dst, n);
}

/* Activation rows per pass over the weight rows: all of them while they fit
 * comfortably in L2, else chunks (weights are then re-read per chunk). */
#define GEMM_ACT_BYTES (512u * 1024u)

/* One activation row (a generated token) against weight rows r0..r1:
 * DECODE_STREAMS rows far apart at a time, each the type's dot, while the
 * next rows of every stream are prefetched (DECODE_PF_ROWS ahead), so
 * memory sees DECODE_STREAMS sequential streams with requests in flight.
 * The same dot per row as the plain loop: the same bits. */
#define DECODE_STREAMS 8
#define DECODE_PF_ROWS 2
static void decode_rows(quant_dot_fn dot, int64_t n, const uint8_t *wb, size_t wrb, int64_t r0,
                        int64_t r1, const void *act, float *out)
{
    const int64_t q = (r1 - r0) / DECODE_STREAMS;
    for (int64_t r = r0; r < r0 + q; r++) {
        /* the streams' rows DECODE_PF_ROWS ahead, the last ones at most */
        const int64_t rp = r + DECODE_PF_ROWS < r0 + q ? r + DECODE_PF_ROWS : r0 + q - 1;
        for (int k = 0; k < DECODE_STREAMS; k++) {
            const uint8_t *pf = wb + (size_t)(rp + k * q) * wrb;
            for (size_t b = 0; b < wrb; b += 64)
                __builtin_prefetch(pf + b);
        }
        for (int k = 0; k < DECODE_STREAMS; k++)
            out[r + k * q] = dot(n, wb + (size_t)(r + k * q) * wrb, act);
    }
    for (int64_t r = r0 + DECODE_STREAMS * q; r < r1; r++)
        out[r] = dot(n, wb + (size_t)r * wrb, act);
}

static void gemm(bool expert, moe_type t, int64_t n, const void *w, size_t w_row_bytes,
                 int64_t r0, int64_t r1, const void *act, size_t act_row_bytes, int64_t n_act,
                 float *out, int64_t n_rows_out)
{
    if (!quant_type_supported((int)t) || n < 0 || r0 < 0 || r1 <= r0 || n_act <= 0)
        return;
    const quant_kernels *k = kern();
    const bool vec_order = expert && (t == MOE_TYPE_F32 || t == MOE_TYPE_F16 ||
                                      t == MOE_TYPE_BF16);
    if (k && k->gemm[t] && !vec_order) {
        k->gemm[t](n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_act, out, n_rows_out);
        return;
    }
    quant_dot_fn dot = k && k->dot[t] ? k->dot[t] : NULL;
    quant_dot4_fn dot4 = k ? k->dot4[t] : NULL;
    float (*ref)(moe_type, int64_t, const void *, const void *) = quant_ref_dot;
    if (vec_order) {
        dot = k ? k->dot_expert[t] : NULL;
        dot4 = NULL;
        ref = quant_ref_dot_expert;
    }
    const uint8_t *wb = w, *ab = act;
    if (n_act == 1 && !vec_order && k && k->decode[t]) {
        k->decode[t](n, w, w_row_bytes, r0, r1, act, out);
        return;
    }
    if (n_act == 1 && dot && !vec_order) {
        decode_rows(dot, n, wb, w_row_bytes, r0, r1, act, out);
        return;
    }
    int64_t chunk = n_act;
    if (act_row_bytes > 0 && (size_t)n_act * act_row_bytes > GEMM_ACT_BYTES) {
        chunk = (int64_t)(GEMM_ACT_BYTES / act_row_bytes) & ~(int64_t)3;
        chunk = chunk < 4 ? 4 : chunk;
    }
    for (int64_t j0 = 0; j0 < n_act; j0 += chunk) {
        int64_t j1 = j0 + chunk < n_act ? j0 + chunk : n_act;
        /* one weight row at a time: interleaving adjacent rows (to get
         * independent FMA chains) was measured 2.5-3x slower from DRAM;
         * rows far apart are what the single-token path interleaves */
        for (int64_t r = r0; r < r1; r++) {
            const void *wr = wb + (size_t)r * w_row_bytes;
            int64_t j = j0;
            if (dot4)
                for (; j + 4 <= j1; j += 4) {
                    const void *a4[4];
                    float o[4];
                    for (int q = 0; q < 4; q++)
                        a4[q] = ab + (size_t)(j + q) * act_row_bytes;
                    dot4(n, wr, a4, o);
                    for (int q = 0; q < 4; q++)
                        out[(j + q) * n_rows_out + r] = o[q];
                }
            for (; j < j1; j++) {
                const void *ar = ab + (size_t)j * act_row_bytes;
                out[j * n_rows_out + r] = dot ? dot(n, wr, ar) : ref(t, n, wr, ar);
            }
        }
    }
}

void quant_gemm(moe_type t, int64_t n, const void *w, size_t w_row_bytes,
                int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                int64_t n_act, float *out, int64_t n_rows_out)
{
    gemm(false, t, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_act, out, n_rows_out);
}

void quant_gemm_expert(moe_type t, int64_t n, const void *w, size_t w_row_bytes,
                       int64_t r0, int64_t r1, const void *act, size_t act_row_bytes,
                       int64_t n_act, float *out, int64_t n_rows_out)
{
    gemm(true, t, n, w, w_row_bytes, r0, r1, act, act_row_bytes, n_act, out, n_rows_out);
}
