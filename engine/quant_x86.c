/*
 * quant_x86.c - fast x86 kernels for quant.c: dot products (one activation
 * row; four activation rows per pass over a weight row for prompt batches;
 * four weight rows per call for decode) and the quantizers of the
 * activation types. Chosen at run time; no special compiler flags: every
 * function carries its own target attribute.
 *
 * Two kernel sets are compiled from the same source by including this file
 * into itself twice: "avx2" (AVX2 + FMA + F16C; int8 products through
 * vpmaddubsw/vpmaddwd) and "avx512-vnni" (adds AVX512F/BW/DQ/VL + VNNI:
 * vpdpbusd / vpdpwssd, with 512-bit kernels for q8_0, q4_0, q4_k, q5_k and
 * q6_k). Results equal the scalar reference up to the order of float
 * additions (integer parts are exact); quantizers are bit-identical to the
 * scalar ones. Within one kernel set, a dot gives the same bits whichever
 * entry computes it (dot, dot4, dotr4): every driver sums blocks in the
 * same order into the same two accumulators, so batched and single-token
 * decoding agree exactly.
 *
 * Owns: SIMD code only. Depends on quant_impl.h; never prints or aborts.
 */
#include "config.h"

#include "quant_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#ifndef QX_PASS

#include <cpuid.h>
#include <immintrin.h>
#include <string.h>

#define QX_ALWAYS __attribute__((always_inline))

/* pass 1: AVX2 */
#define QX_PASS 1
#define QX_TARGET __attribute__((target("avx2,fma,f16c")))
#define QX(name) name##_avx2
#include "quant_x86.c"
#undef QX_PASS
#undef QX_TARGET
#undef QX

/* pass 2: AVX512VL + VNNI */
#define QX_PASS 2
#define QX_TARGET \
    __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define QX(name) name##_vnni
#include "quant_x86.c"
#undef QX_PASS
#undef QX_TARGET
#undef QX

static bool cpu_has_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return false;
    return (c & (1u << 29)) != 0;
}

bool quant_x86_fill(quant_kernels *ks, const char *want)
{
    __builtin_cpu_init();
    bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                cpu_has_f16c();
    bool vnni = avx2 && __builtin_cpu_supports("avx512f") &&
                __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
    if (want ? !strcmp(want, "avx512-vnni") && vnni : vnni) {
        fill_vnni(ks);
        return true;
    }
    if (want ? !strcmp(want, "avx2") && avx2 : avx2) {
        fill_avx2(ks);
        return true;
    }
    return false;
}

#else /* QX_PASS: the kernels, compiled once per pass */

/* ---- primitives ------------------------------------------------------------ */

#if QX_PASS == 2
/* acc += sum of 4 u8*s8 products per int32 lane */
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32((acc), (u), (s))
/* acc += sum of 2 s16*s16 products per int32 lane */
#define DPWSSD(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#else
/* No saturation in vpmaddubsw for our operands: one side is at most 128
 * (|q8| of the sign trick) or 63 (k-quants), the other at most 127 in
 * magnitude (our activations never hold -128). */
#define DPBUSD(acc, u, s) \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)), _mm256_set1_epi16(1)))
#define DPWSSD(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#endif

static inline QX_ALWAYS QX_TARGET float QX(hsum)(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline QX_ALWAYS QX_TARGET float QX(h2f)(uint16_t h)
{
    return _cvtsh_ss(h);
}

static inline QX_ALWAYS QX_TARGET __m256i QX(load256)(const void *p)
{
    return _mm256_loadu_si256((const __m256i *)p);
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles (elements 0..15), then high */
static inline QX_ALWAYS QX_TARGET __m256i QX(nibbles32)(const uint8_t *qs)
{
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m4), _mm_and_si128(raw, m4));
}

/* 32 bits (little-endian bytes) -> 0xFF in byte j where bit j is set */
static inline QX_ALWAYS QX_TARGET __m256i QX(bits32)(const uint8_t *qh)
{
    uint32_t x;
    memcpy(&x, qh, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* int16 vector: lanes 0..7 = a, lanes 8..15 = b (scales of two groups of
 * 16 elements as laid out by vpmaddubsw) */
static inline QX_ALWAYS QX_TARGET __m256i QX(scale2)(int a, int b)
{
    return _mm256_set_m128i(_mm_set1_epi16((short)b), _mm_set1_epi16((short)a));
}

/* ---- generic driver ------------------------------------------------------
 * NAME##_step(w, a, i, na, acc, accb) folds block i of the weight row into
 * the float accumulators acc[k] (per activation row k < na); accb is a
 * second set used to break the dependency chain when na == 1. */
#define QX_DRIVER(NAME, WT, AT, BLK)                                                      \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_rows)(                              \
        int64_t n, const void *wv, const void *const *av, int na, float *out)             \
    {                                                                                     \
        const WT *w = wv;                                                                 \
        const AT *a[4] = {0};                                                             \
        __m256 acc[4], accb[4];                                                           \
        for (int k = 0; k < na; k++) {                                                    \
            a[k] = av[k];                                                                 \
            acc[k] = accb[k] = _mm256_setzero_ps();                                       \
        }                                                                                 \
        int64_t nb = n / (BLK), i = 0;                                                    \
        for (; i + 2 <= nb; i += 2) {                                                     \
            QX(NAME##_step)(w, a, i, na, acc);                                            \
            QX(NAME##_step)(w, a, i + 1, na, accb);                                       \
        }                                                                                 \
        if (i < nb)                                                                       \
            QX(NAME##_step)(w, a, i, na, acc);                                            \
        for (int k = 0; k < na; k++)                                                      \
            out[k] = QX(hsum)(_mm256_add_ps(acc[k], accb[k]));                            \
    }                                                                                     \
    static QX_TARGET float QX(NAME##_dot)(int64_t n, const void *w, const void *a)        \
    {                                                                                     \
        const void *av[1] = {a};                                                          \
        float o;                                                                          \
        QX(NAME##_rows)(n, w, av, 1, &o);                                                 \
        return o;                                                                         \
    }                                                                                     \
    static QX_TARGET void QX(NAME##_dot4)(int64_t n, const void *w, const void *const a[4], \
                                          float out[4])                                   \
    {                                                                                     \
        QX(NAME##_rows)(n, w, a, 4, out);                                                 \
    }

/* ---- float types -------------------------------------------------------------- */

/* 8 elements of each type as floats */
static inline QX_ALWAYS QX_TARGET __m256 QX(ld_f32)(const void *p, int64_t i)
{
    return _mm256_loadu_ps((const float *)p + i);
}
static inline QX_ALWAYS QX_TARGET __m256 QX(ld_f16)(const void *p, int64_t i)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)p + i)));
}
static inline QX_ALWAYS QX_TARGET __m256 QX(ld_bf16)(const void *p, int64_t i)
{
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* steps of 8 elements; "blocks" of 8 so the driver's tail handles n % 8 via
 * the scalar remainder below */
#define QX_FLOAT_STEP(NAME, LD)                                                         \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_step)(const void *w, const void **a, \
                                                           int64_t i, int na, __m256 *acc) \
    {                                                                                   \
        __m256 wv = QX(LD)(w, 8 * i);                                                   \
        for (int k = 0; k < na; k++)                                                    \
            acc[k] = _mm256_fmadd_ps(wv, QX(LD)(a[k], 8 * i), acc[k]);                  \
    }

QX_FLOAT_STEP(f32, ld_f32)
QX_FLOAT_STEP(f16, ld_f16)
QX_FLOAT_STEP(bf16, ld_bf16)
QX_DRIVER(f32, void, void, 8)
QX_DRIVER(f16, void, void, 8)
QX_DRIVER(bf16, void, void, 8)

/* the float dots cover n % 8 leftovers with the scalar reference */
#define QX_FLOAT_DOTS(NAME, T, ET)                                                        \
    static QX_TARGET float QX(dotf_##NAME)(int64_t n, const void *w, const void *a)       \
    {                                                                                     \
        int64_t m = n & ~(int64_t)7;                                                      \
        float s = QX(NAME##_dot)(m, w, a);                                                \
        if (m < n)                                                                        \
            s += quant_ref_dot(T, n - m, (const ET *)w + m, (const ET *)a + m);           \
        return s;                                                                         \
    }                                                                                     \
    static QX_TARGET void QX(dotf4_##NAME)(int64_t n, const void *w, const void *const a[4], \
                                           float out[4])                                  \
    {                                                                                     \
        int64_t m = n & ~(int64_t)7;                                                      \
        QX(NAME##_dot4)(m, w, a, out);                                                    \
        if (m < n)                                                                        \
            for (int k = 0; k < 4; k++)                                                   \
                out[k] += quant_ref_dot(T, n - m, (const ET *)w + m, (const ET *)a[k] + m); \
    }

QX_FLOAT_DOTS(f32, MOE_TYPE_F32, float)
QX_FLOAT_DOTS(f16, MOE_TYPE_F16, uint16_t)
QX_FLOAT_DOTS(bf16, MOE_TYPE_BF16, uint16_t)

/* ---- q8_0, q8_1, q4_0, q4_1, q5_0, q5_1 (blocks of 32) --------------------- */

/* signed weights q (int8): sign trick, |q| * (a with q's sign) */
#define QX_SIGNED_STEP(NAME, WT, AT, UNPACK)                                              \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_step)(const WT *w, const AT **a,     \
                                                           int64_t i, int na, __m256 *acc) \
    {                                                                                     \
        __m256i q = UNPACK;                                                               \
        __m256i aq = _mm256_sign_epi8(q, q);                                              \
        float dw = QX(h2f)(w[i].d);                                                       \
        for (int k = 0; k < na; k++) {                                                    \
            __m256i s = _mm256_sign_epi8(QX(load256)(a[k][i].qs), q);                     \
            __m256i p = DPBUSD(_mm256_setzero_si256(), aq, s);                            \
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * QX(h2f)(a[k][i].d)),             \
                                     _mm256_cvtepi32_ps(p), acc[k]);                      \
        }                                                                                 \
    }

/* unsigned weights q (0..31) with an offset m: d*q + m against q8_1 */
#define QX_UNSIGNED_STEP(NAME, WT, UNPACK)                                                \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_step)(const WT *w, const blk_q8_1 **a, \
                                                           int64_t i, int na, __m256 *acc) \
    {                                                                                     \
        __m256i q = UNPACK;                                                               \
        float dw = QX(h2f)(w[i].d), mw = QX(h2f)(w[i].m);                                 \
        for (int k = 0; k < na; k++) {                                                    \
            __m256i p = DPBUSD(_mm256_setzero_si256(), q, QX(load256)(a[k][i].qs));       \
            __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(dw * QX(h2f)(a[k][i].d)),           \
                                       _mm256_cvtepi32_ps(p), acc[k]);                    \
            /* m * s, added in lane 0 */                                                  \
            acc[k] = _mm256_add_ps(v, _mm256_castps128_ps256(                             \
                                          _mm_set_ss(mw * QX(h2f)(a[k][i].s))));          \
        }                                                                                 \
    }

QX_SIGNED_STEP(q8_0, blk_q8_0, blk_q8_0, QX(load256)(w[i].qs))
QX_SIGNED_STEP(q8_1, blk_q8_1, blk_q8_1, QX(load256)(w[i].qs))
QX_SIGNED_STEP(q4_0, blk_q4_0, blk_q8_0,
               _mm256_sub_epi8(QX(nibbles32)(w[i].qs), _mm256_set1_epi8(8)))
QX_SIGNED_STEP(q5_0, blk_q5_0, blk_q8_0,
               _mm256_sub_epi8(QX(nibbles32)(w[i].qs),
                               _mm256_andnot_si256(QX(bits32)(w[i].qh), _mm256_set1_epi8(16))))
QX_UNSIGNED_STEP(q4_1, blk_q4_1, QX(nibbles32)(w[i].qs))
QX_UNSIGNED_STEP(q5_1, blk_q5_1,
                 _mm256_or_si256(QX(nibbles32)(w[i].qs),
                                 _mm256_and_si256(QX(bits32)(w[i].qh), _mm256_set1_epi8(16))))

QX_DRIVER(q8_0, blk_q8_0, blk_q8_0, QK32)
QX_DRIVER(q8_1, blk_q8_1, blk_q8_1, QK32)
QX_DRIVER(q4_0, blk_q4_0, blk_q8_0, QK32)
QX_DRIVER(q5_0, blk_q5_0, blk_q8_0, QK32)
QX_DRIVER(q4_1, blk_q4_1, blk_q8_1, QK32)
QX_DRIVER(q5_1, blk_q5_1, blk_q8_1, QK32)

#if QX_PASS == 2
/* 512-bit variants for q8_0 and q4_0 weights (the generation hot path): two
 * blocks per zmm; sign trick through a byte mask. */

/* [dw0*da0 x8 | dw1*da1 x8] */
static inline QX_ALWAYS QX_TARGET __m512 QX(zscale)(__m128 dw, uint16_t a0, uint16_t a1)
{
    __m128i ha = _mm_cvtsi32_si128((int)(a0 | (uint32_t)a1 << 16));
    __m128 s = _mm_mul_ps(dw, _mm_cvtph_ps(ha));
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(s));
}

static inline QX_ALWAYS QX_TARGET __m512i QX(zload2)(const int8_t *p0, const int8_t *p1)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(QX(load256)(p0)), QX(load256)(p1), 1);
}

/* q: 64 signed weights of blocks i, i+1 */
static inline QX_ALWAYS QX_TARGET void QX(zstep)(__m512i q, uint16_t d0, uint16_t d1,
                                                 const blk_q8_0 **a, int64_t i, int na,
                                                 __m512 *acc)
{
    __m512i aq = _mm512_abs_epi8(q);
    __mmask64 neg = _mm512_movepi8_mask(q);
    __m128 dw = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(d0 | (uint32_t)d1 << 16)));
    for (int k = 0; k < na; k++) {
        __m512i av = QX(zload2)(a[k][i].qs, a[k][i + 1].qs);
        __m512i s = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), aq, s);
        acc[k] = _mm512_fmadd_ps(QX(zscale)(dw, a[k][i].d, a[k][i + 1].d), _mm512_cvtepi32_ps(p),
                                 acc[k]);
    }
}

static inline QX_ALWAYS QX_TARGET __m512i QX(zq8_0)(const blk_q8_0 *w, int64_t i)
{
    return QX(zload2)(w[i].qs, w[i + 1].qs);
}

static inline QX_ALWAYS QX_TARGET __m512i QX(zq4_0)(const blk_q4_0 *w, int64_t i)
{
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256i raw = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)w[i + 1].qs),
                                   _mm_loadu_si128((const __m128i *)w[i].qs));
    __m256i lo = _mm256_and_si256(raw, m4), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); /* lo0 lo1 hi0 hi1 */
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));          /* lo0 hi0 lo1 hi1 */
    return _mm512_sub_epi8(z, _mm512_set1_epi8(8));
}

#define QX_ZDRIVER(NAME, WT)                                                              \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_zrows)(                             \
        int64_t n, const void *wv, const void *const *av, int na, float *out)             \
    {                                                                                     \
        const WT *w = wv;                                                                 \
        const blk_q8_0 *a[4] = {0};                                                       \
        __m512 acc[4], accb[4];                                                           \
        for (int k = 0; k < na; k++) {                                                    \
            a[k] = av[k];                                                                 \
            acc[k] = accb[k] = _mm512_setzero_ps();                                       \
        }                                                                                 \
        int64_t nb = n / QK32, i = 0;                                                     \
        for (; i + 4 <= nb; i += 4) {                                                     \
            QX(zstep)(QX(z##NAME)(w, i), w[i].d, w[i + 1].d, a, i, na, acc);              \
            QX(zstep)(QX(z##NAME)(w, i + 2), w[i + 2].d, w[i + 3].d, a, i + 2, na, accb); \
        }                                                                                 \
        if (i + 2 <= nb) {                                                                \
            QX(zstep)(QX(z##NAME)(w, i), w[i].d, w[i + 1].d, a, i, na, acc);              \
            i += 2;                                                                       \
        }                                                                                 \
        for (int k = 0; k < na; k++) {                                                    \
            __m512 t = _mm512_add_ps(acc[k], accb[k]);                                    \
            out[k] = QX(hsum)(_mm256_add_ps(_mm512_castps512_ps256(t),                    \
                                            _mm512_extractf32x8_ps(t, 1)));               \
        }                                                                                 \
        if (i < nb) { /* odd last block */                                                \
            __m256 t[4];                                                                  \
            for (int k = 0; k < na; k++)                                                  \
                t[k] = _mm256_setzero_ps();                                               \
            QX(NAME##_step)(w, a, i, na, t);                                              \
            for (int k = 0; k < na; k++)                                                  \
                out[k] += QX(hsum)(t[k]);                                                 \
        }                                                                                 \
    }                                                                                     \
    static QX_TARGET float QX(NAME##_zdot)(int64_t n, const void *w, const void *a)       \
    {                                                                                     \
        const void *av[1] = {a};                                                          \
        float o;                                                                          \
        QX(NAME##_zrows)(n, w, av, 1, &o);                                                \
        return o;                                                                         \
    }                                                                                     \
    static QX_TARGET void QX(NAME##_zdot4)(int64_t n, const void *w, const void *const a[4], \
                                           float out[4])                                  \
    {                                                                                     \
        QX(NAME##_zrows)(n, w, a, 4, out);                                                \
    }

QX_ZDRIVER(q8_0, blk_q8_0)
QX_ZDRIVER(q4_0, blk_q4_0)
#undef QX_ZDRIVER

/* four consecutive weight rows against one activation row (decode): saves
 * the indirect calls; each row goes through exactly the code of the single
 * dot so results are bit-identical. (The rows are read one after the
 * other: interleaving four row streams was measured 2.5x slower from DRAM.) */
#define QX_ZDRIVER_R4(NAME, WT)                                                           \
    static QX_TARGET void QX(NAME##_zdotr4)(int64_t n, const void *wv, size_t wstride,    \
                                            const void *av, float out[4])                 \
    {                                                                                     \
        const void *a[1] = {av};                                                          \
        for (int r = 0; r < 4; r++)                                                       \
            QX(NAME##_zrows)(n, (const uint8_t *)wv + (size_t)r * wstride, a, 1, &out[r]); \
    }

QX_ZDRIVER_R4(q8_0, blk_q8_0)
QX_ZDRIVER_R4(q4_0, blk_q4_0)
#undef QX_ZDRIVER_R4
#endif


/* ---- k-quants against q8_k ---------------------------------------------------- */

/* acc[k] += d8*(d * isum[k]) - d8*(dmin * msum[k]) */
static inline QX_ALWAYS QX_TARGET void QX(kfinish)(const blk_q8_k **a, int64_t i, int na,
                                                   float d, float dmin, const __m256i *isum,
                                                   const __m256i *msum, __m256 *acc)
{
    for (int k = 0; k < na; k++) {
        float d8 = a[k][i].d;
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d8 * d), _mm256_cvtepi32_ps(isum[k]), acc[k]);
        if (msum)
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(-d8 * dmin), _mm256_cvtepi32_ps(msum[k]),
                                     acc[k]);
    }
}

static inline QX_ALWAYS QX_TARGET __m256i QX(bsums)(const blk_q8_k *a)
{
    return QX(load256)(a->bsums);
}

/* The 8 scales (bytes 0..7) and 8 mins (8..15) of a q4_k/q5_k block, as
 * quant_k4_scale_min, in SIMD. Reads 16 bytes at s: the 12 scale bytes and
 * the first 4 bytes after them (inside the same block). With u0..u2 the
 * three 32-bit words: [u0 & 3f.., (u2 & 0f..) | (u0 >> 6 & 03..) << 4,
 * u1 & 3f.., (u2 >> 4 & 0f..) | (u1 >> 6 & 03..) << 4]. */
static inline QX_ALWAYS QX_TARGET __m128i QX(k4_unpack)(const uint8_t *s)
{
    __m128i x = _mm_loadu_si128((const __m128i *)s);
    __m128i a = _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 1, 2, 0)); /* u0 u2 u1 u2 */
    __m128i b = _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 1, 0, 0)); /* u0 u0 u1 u1 */
    __m128i lo = _mm_and_si128(a, _mm_set1_epi32(0x3F3F3F3F));
    __m128i hi = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)),
                               _mm_set1_epi32(0x0F0F0F0F));
    hi = _mm_or_si128(hi, _mm_slli_epi32(_mm_and_si128(_mm_srli_epi32(b, 6),
                                                       _mm_set1_epi32(0x03030303)), 4));
    return _mm_blend_epi32(lo, hi, 0xA);
}

/* q4_k / q5_k share everything but the 5th bit */
static inline QX_ALWAYS QX_TARGET void QX(k45_step)(const uint8_t *scales, uint16_t dh,
                                                    uint16_t dminh, const uint8_t *qs,
                                                    const uint8_t *qh, const blk_q8_k **a,
                                                    int64_t i, int na, __m256 *acc)
{
    /* unpack the 8 scales and 8 mins (6 bits each) with 32-bit masks:
     * u bytes 0..7 = scales, 8..15 = mins (as quant_k4_scale_min) */
    __m128i sm = QX(k4_unpack)(scales);
    uint8_t sc[16];
    _mm_storeu_si128((__m128i *)sc, sm);
    /* mins per 16-element bsum group: group g of 32 covers bsums 2g, 2g+1 */
    __m128i m8 = _mm_srli_si128(sm, 8);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    __m256i isum[4], msum[4];
    for (int k = 0; k < na; k++) {
        isum[k] = _mm256_setzero_si256();
        msum[k] = _mm256_madd_epi16(QX(bsums)(&a[k][i]), m16);
    }
    const __m256i m4 = _mm256_set1_epi8(0xF), b4 = _mm256_set1_epi8(0x10);
    __m256i hb = qh ? QX(load256)(qh) : _mm256_setzero_si256();
    for (int j = 0; j < 4; j++) {
        __m256i raw = QX(load256)(qs + 32 * j);
        __m256i lo = _mm256_and_si256(raw, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if (qh) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
            hb = _mm256_srli_epi16(hb, 2);
        }
        __m256i s1 = _mm256_set1_epi16(sc[2 * j]), s2 = _mm256_set1_epi16(sc[2 * j + 1]);
        for (int k = 0; k < na; k++) {
            const int8_t *q8 = a[k][i].qs + 64 * j;
            isum[k] = DPWSSD(isum[k], _mm256_maddubs_epi16(lo, QX(load256)(q8)), s1);
            isum[k] = DPWSSD(isum[k], _mm256_maddubs_epi16(hi, QX(load256)(q8 + 32)), s2);
        }
    }
    QX(kfinish)(a, i, na, QX(h2f)(dh), QX(h2f)(dminh), isum, msum, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q4_k_step)(const blk_q4_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    QX(k45_step)(w[i].scales, w[i].d, w[i].dmin, w[i].qs, NULL, a, i, na, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q5_k_step)(const blk_q5_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    QX(k45_step)(w[i].scales, w[i].d, w[i].dmin, w[i].qs, w[i].qh, a, i, na, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q6_k_step)(const blk_q6_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    const blk_q6_k *b = &w[i];
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    __m256i isum[4];
    for (int k = 0; k < na; k++) /* -32 * sum_g sc[g] * bsums[g] */
        isum[k] = _mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(QX(bsums)(&a[k][i]), sc16)),
            5);
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m256i qa = QX(load256)(b->ql + 64 * h), qb = QX(load256)(b->ql + 64 * h + 32);
        __m256i qh = QX(load256)(b->qh + 32 * h);
        __m256i q[4];
        q[0] = _mm256_or_si256(_mm256_and_si256(qa, m4),
                               _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
        q[1] = _mm256_or_si256(_mm256_and_si256(qb, m4),
                               _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
        q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), m4),
                               _mm256_and_si256(qh, m30));
        q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qb, 4), m4),
                               _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
        for (int t = 0; t < 4; t++) {
            int g = 8 * h + 2 * t;
            __m256i s = QX(scale2)(b->scales[g], b->scales[g + 1]);
            for (int k = 0; k < na; k++) {
                __m256i a8 = QX(load256)(a[k][i].qs + 128 * h + 32 * t);
                isum[k] = DPWSSD(isum[k], _mm256_maddubs_epi16(q[t], a8), s);
            }
        }
    }
    QX(kfinish)(a, i, na, QX(h2f)(b->d), 0.0f, isum, NULL, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q2_k_step)(const blk_q2_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    const blk_q2_k *b = &w[i];
    __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0xF)));
    __m256i isum[4], msum[4];
    for (int k = 0; k < na; k++) {
        isum[k] = _mm256_setzero_si256();
        msum[k] = _mm256_madd_epi16(QX(bsums)(&a[k][i]), m16);
    }
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
        __m256i r = QX(load256)(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_and_si256(r, m3);
            r = _mm256_srli_epi16(r, 2);
            int g = 8 * h + 2 * j;
            __m256i s = QX(scale2)(b->scales[g] & 0xF, b->scales[g + 1] & 0xF);
            for (int k = 0; k < na; k++) {
                __m256i a8 = QX(load256)(a[k][i].qs + 128 * h + 32 * j);
                isum[k] = DPWSSD(isum[k], _mm256_maddubs_epi16(q, a8), s);
            }
        }
    }
    QX(kfinish)(a, i, na, QX(h2f)(b->d), QX(h2f)(b->dmin), isum, msum, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q3_k_step)(const blk_q3_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    const blk_q3_k *b = &w[i];
    int8_t sc[16];
    quant_k3_scales(b->scales, sc);
    __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
    __m256i isum[4];
    for (int k = 0; k < na; k++) /* -4 * sum_g sc[g] * bsums[g] */
        isum[k] = _mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(QX(bsums)(&a[k][i]), sc16)),
            2);
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256i hm = QX(load256)(b->hmask);
    for (int h = 0; h < 2; h++) {
        __m256i r = QX(load256)(b->qs + 32 * h);
        for (int j = 0; j < 4; j++) {
            __m256i hb = _mm256_slli_epi16(_mm256_and_si256(hm, one), 2);
            __m256i q = _mm256_or_si256(_mm256_and_si256(r, m3), hb);
            r = _mm256_srli_epi16(r, 2);
            hm = _mm256_srli_epi16(hm, 1);
            int g = 8 * h + 2 * j;
            __m256i s = QX(scale2)(sc[g], sc[g + 1]);
            for (int k = 0; k < na; k++) {
                __m256i a8 = QX(load256)(a[k][i].qs + 128 * h + 32 * j);
                isum[k] = DPWSSD(isum[k], _mm256_maddubs_epi16(q, a8), s);
            }
        }
    }
    QX(kfinish)(a, i, na, QX(h2f)(b->d), 0.0f, isum, NULL, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q8_k_step)(const blk_q8_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    __m256i isum[4];
    for (int k = 0; k < na; k++)
        isum[k] = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        __m256i q = QX(load256)(w[i].qs + 32 * c), aq = _mm256_sign_epi8(q, q);
        for (int k = 0; k < na; k++)
            isum[k] = DPBUSD(isum[k], aq, _mm256_sign_epi8(QX(load256)(a[k][i].qs + 32 * c), q));
    }
    for (int k = 0; k < na; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[i].d * a[k][i].d), _mm256_cvtepi32_ps(isum[k]),
                                 acc[k]);
}

QX_DRIVER(q2_k, blk_q2_k, blk_q8_k, QK_K)
QX_DRIVER(q3_k, blk_q3_k, blk_q8_k, QK_K)
QX_DRIVER(q4_k, blk_q4_k, blk_q8_k, QK_K)
QX_DRIVER(q5_k, blk_q5_k, blk_q8_k, QK_K)
QX_DRIVER(q6_k, blk_q6_k, blk_q8_k, QK_K)
QX_DRIVER(q8_k, blk_q8_k, blk_q8_k, QK_K)

#if QX_PASS == 2
/* 512-bit k-quant kernels: 64 weights per zmm (two groups of 32 for
 * q4_k/q5_k, four groups of 16 for q6_k); group scales applied to the int16
 * pair sums of vpmaddubsw with vpdpwssd, the scale vector picked from the
 * block's scales with one vpermw. */

static inline QX_ALWAYS QX_TARGET __m512i QX(zjoin)(__m256i lo, __m256i hi)
{
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* acc[k] += d8*d*isum[k] - d8*dmin*msum[k] (msum: 8 int32 lanes) */
static inline QX_ALWAYS QX_TARGET void QX(kzfinish)(const blk_q8_k **a, int64_t i, int na,
                                                    float d, float dmin, const __m512i *isum,
                                                    const __m256i *msum, __m512 *acc)
{
    for (int k = 0; k < na; k++) {
        float d8 = a[k][i].d;
        __m512 v = _mm512_cvtepi32_ps(isum[k]);
        if (msum) {
            __m256 m = _mm256_mul_ps(_mm256_set1_ps(-d8 * dmin), _mm256_cvtepi32_ps(msum[k]));
            acc[k] = _mm512_add_ps(acc[k], _mm512_zextps256_ps512(m));
        }
        acc[k] = _mm512_fmadd_ps(_mm512_set1_ps(d8 * d), v, acc[k]);
    }
}

static inline QX_ALWAYS QX_TARGET void QX(k45_zstep)(const uint8_t *scales, uint16_t dh,
                                                     uint16_t dminh, const uint8_t *qs,
                                                     const uint8_t *qh, const blk_q8_k **a,
                                                     int64_t i, int na, __m512 *acc)
{
    __m128i sm = QX(k4_unpack)(scales); /* 8 scales, 8 mins */
    __m512i sc16 = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(sm));
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_srli_si128(sm, 8), _mm_srli_si128(sm, 8)));
    __m512i isum[4];
    __m256i msum[4];
    for (int k = 0; k < na; k++) {
        isum[k] = _mm512_setzero_si512();
        msum[k] = _mm256_madd_epi16(QX(bsums)(&a[k][i]), m16);
    }
    const __m512i m4 = _mm512_set1_epi8(0xF), b4 = _mm512_set1_epi8(0x10);
    __m512i hb = _mm512_setzero_si512();
    if (qh) {
        __m256i h = QX(load256)(qh);
        hb = QX(zjoin)(h, _mm256_srli_epi16(h, 1));
    }
    for (int j = 0; j < 4; j++) {
        __m256i raw = QX(load256)(qs + 32 * j);
        __m512i q = _mm512_and_si512(QX(zjoin)(raw, _mm256_srli_epi16(raw, 4)), m4);
        if (qh) {
            q = _mm512_or_si512(q, _mm512_and_si512(_mm512_slli_epi16(hb, 4), b4));
            hb = _mm512_srli_epi16(hb, 2);
        }
        __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * j)),
                                         _mm256_set1_epi16((short)(2 * j + 1)), 1);
        __m512i s = _mm512_permutexvar_epi16(idx, sc16);
        for (int k = 0; k < na; k++) {
            __m512i a8 = _mm512_loadu_si512((const void *)(a[k][i].qs + 64 * j));
            isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(q, a8), s);
        }
    }
    QX(kzfinish)(a, i, na, QX(h2f)(dh), QX(h2f)(dminh), isum, msum, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q4_k_zstep)(const blk_q4_k *w, const blk_q8_k **a,
                                                      int64_t i, int na, __m512 *acc)
{
    QX(k45_zstep)(w[i].scales, w[i].d, w[i].dmin, w[i].qs, NULL, a, i, na, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q5_k_zstep)(const blk_q5_k *w, const blk_q8_k **a,
                                                      int64_t i, int na, __m512 *acc)
{
    QX(k45_zstep)(w[i].scales, w[i].d, w[i].dmin, w[i].qs, w[i].qh, a, i, na, acc);
}

static inline QX_ALWAYS QX_TARGET void QX(q6_k_zstep)(const blk_q6_k *w, const blk_q8_k **a,
                                                      int64_t i, int na, __m512 *acc)
{
    const blk_q6_k *b = &w[i];
    __m256i sc16y = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    __m512i sc16 = _mm512_castsi256_si512(sc16y);
    __m512i isum[4];
    for (int k = 0; k < na; k++) /* -32 * sum_g sc[g] * bsums[g] */
        isum[k] = _mm512_zextsi256_si512(_mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(QX(bsums)(&a[k][i]), sc16y)),
            5));
    const __m512i m4 = _mm512_set1_epi8(0xF), m30 = _mm512_set1_epi8(0x30);
    for (int h = 0; h < 2; h++) {
        __m512i l = QX(zjoin)(QX(load256)(b->ql + 64 * h), QX(load256)(b->ql + 64 * h + 32));
        __m256i qh = QX(load256)(b->qh + 32 * h);
        __m512i hh = QX(zjoin)(qh, _mm256_srli_epi16(qh, 2));
        __m512i q[2];
        q[0] = _mm512_or_si512(_mm512_and_si512(l, m4), _mm512_and_si512(_mm512_slli_epi16(hh, 4), m30));
        q[1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(l, 4), m4), _mm512_and_si512(hh, m30));
        for (int t = 0; t < 2; t++) {
            int g = 8 * h + 4 * t; /* groups g..g+3, 8 int16 lanes each */
            __m512i idx = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_set_m128i(_mm_set1_epi16((short)(g + 1)),
                                                        _mm_set1_epi16((short)g))),
                _mm256_set_m128i(_mm_set1_epi16((short)(g + 3)), _mm_set1_epi16((short)(g + 2))), 1);
            __m512i s = _mm512_permutexvar_epi16(idx, sc16);
            for (int k = 0; k < na; k++) {
                __m512i a8 = _mm512_loadu_si512((const void *)(a[k][i].qs + 128 * h + 64 * t));
                isum[k] = _mm512_dpwssd_epi32(isum[k], _mm512_maddubs_epi16(q[t], a8), s);
            }
        }
    }
    QX(kzfinish)(a, i, na, QX(h2f)(b->d), 0.0f, isum, NULL, acc);
}

#define QX_KZDRIVER(NAME, WT)                                                             \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_kzrows)(                            \
        int64_t n, const void *wv, const void *const *av, int na, float *out)             \
    {                                                                                     \
        const WT *w = wv;                                                                 \
        const blk_q8_k *a[4] = {0};                                                       \
        __m512 acc[4], accb[4];                                                           \
        for (int k = 0; k < na; k++) {                                                    \
            a[k] = av[k];                                                                 \
            acc[k] = accb[k] = _mm512_setzero_ps();                                       \
        }                                                                                 \
        int64_t nb = n / QK_K, i = 0;                                                     \
        for (; i + 2 <= nb; i += 2) {                                                     \
            QX(NAME##_zstep)(w, a, i, na, acc);                                           \
            QX(NAME##_zstep)(w, a, i + 1, na, accb);                                      \
        }                                                                                 \
        if (i < nb)                                                                       \
            QX(NAME##_zstep)(w, a, i, na, acc);                                           \
        for (int k = 0; k < na; k++)                                                      \
            out[k] = _mm512_reduce_add_ps(_mm512_add_ps(acc[k], accb[k]));                \
    }                                                                                     \
    static QX_TARGET float QX(NAME##_kzdot)(int64_t n, const void *w, const void *a)      \
    {                                                                                     \
        const void *av[1] = {a};                                                          \
        float o;                                                                          \
        QX(NAME##_kzrows)(n, w, av, 1, &o);                                               \
        return o;                                                                         \
    }                                                                                     \
    static QX_TARGET void QX(NAME##_kzdot4)(int64_t n, const void *w, const void *const a[4], \
                                            float out[4])                                 \
    {                                                                                     \
        QX(NAME##_kzrows)(n, w, a, 4, out);                                               \
    }

QX_KZDRIVER(q4_k, blk_q4_k)
QX_KZDRIVER(q5_k, blk_q5_k)
QX_KZDRIVER(q6_k, blk_q6_k)
#undef QX_KZDRIVER
#endif

/* ---- quantizers of the activation types ------------------------------------ */

/* 32 int32 (4 vectors) -> 32 int8 in order */
static inline QX_ALWAYS QX_TARGET __m256i QX(pack32)(__m256i v0, __m256i v1, __m256i v2,
                                                     __m256i v3)
{
    __m256i a = _mm256_packs_epi32(v0, v1), b = _mm256_packs_epi32(v2, v3);
    __m256i c = _mm256_packs_epi16(a, b);
    return _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline QX_ALWAYS QX_TARGET __m256 QX(abs_ps)(__m256 v)
{
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

static inline QX_ALWAYS QX_TARGET float QX(hmax)(__m256 v)
{
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* one block of 32 as q8_0/q8_1: returns sum of the quants, d in *d_out */
static inline QX_ALWAYS QX_TARGET int QX(q8_32)(const float *x, uint16_t *dh, int8_t *qs,
                                                float *d_out)
{
    __m256 v[4];
    for (int c = 0; c < 4; c++)
        v[c] = _mm256_loadu_ps(x + 8 * c);
    __m256 m = _mm256_max_ps(_mm256_max_ps(QX(abs_ps)(v[0]), QX(abs_ps)(v[1])),
                             _mm256_max_ps(QX(abs_ps)(v[2]), QX(abs_ps)(v[3])));
    float amax = QX(hmax)(m);
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    *dh = quant_f32_to_f16(d);
    *d_out = d;
    __m256 idv = _mm256_set1_ps(id);
    __m256i q[4];
    for (int c = 0; c < 4; c++) /* cvtps rounds half to even, as rintf */
        q[c] = _mm256_cvtps_epi32(_mm256_mul_ps(v[c], idv));
    _mm256_storeu_si256((__m256i *)qs, QX(pack32)(q[0], q[1], q[2], q[3]));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    return _mm_cvtsi128_si32(t);
}

static QX_TARGET void QX(quant_q8_0)(const float *src, void *dst, int64_t n)
{
    blk_q8_0 *b = dst;
    float d;
    for (int64_t i = 0; i < n / QK32; i++)
        QX(q8_32)(src + QK32 * i, &b[i].d, b[i].qs, &d);
}

static QX_TARGET void QX(quant_q8_1)(const float *src, void *dst, int64_t n)
{
    blk_q8_1 *b = dst;
    float d;
    for (int64_t i = 0; i < n / QK32; i++) {
        int sum = QX(q8_32)(src + QK32 * i, &b[i].d, b[i].qs, &d);
        b[i].s = quant_f32_to_f16(d * (float)sum);
    }
}

static QX_TARGET void QX(quant_q8_k)(const float *src, void *dst, int64_t n)
{
    blk_q8_k *b = dst;
    for (int64_t i = 0; i < n / QK_K; i++, b++) {
        const float *x = src + QK_K * i;
        __m256 m = _mm256_setzero_ps();
        for (int c = 0; c < QK_K / 8; c++)
            m = _mm256_max_ps(m, QX(abs_ps)(_mm256_loadu_ps(x + 8 * c)));
        float amax = QX(hmax)(m);
        if (amax == 0.0f) {
            memset(b, 0, sizeof *b);
            continue;
        }
        float max = 0.0f; /* the first value of largest magnitude */
        for (int j = 0; j < QK_K; j++)
            if (x[j] == amax || x[j] == -amax) {
                max = x[j];
                break;
            }
        float iscale = -127.0f / max;
        __m256 is = _mm256_set1_ps(iscale);
        for (int c = 0; c < QK_K / 32; c++) {
            __m256i q[4];
            for (int u = 0; u < 4; u++)
                q[u] = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 32 * c + 8 * u), is));
            /* packs saturates at 127 = the reference's min(127, v) */
            _mm256_storeu_si256((__m256i *)(b->qs + 32 * c), QX(pack32)(q[0], q[1], q[2], q[3]));
            /* bsums: the two groups of 16 in this chunk */
            __m256i s01 = _mm256_add_epi32(q[0], q[1]), s23 = _mm256_add_epi32(q[2], q[3]);
            __m256i h = _mm256_hadd_epi32(s01, s23); /* [01a 01b 23a 23b | ...] */
            h = _mm256_hadd_epi32(h, h);
            __m128i t = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
            b->bsums[2 * c] = (int16_t)_mm_cvtsi128_si32(t);
            b->bsums[2 * c + 1] = (int16_t)_mm_extract_epi32(t, 1);
        }
        b->d = 1.0f / iscale;
    }
}

static QX_TARGET void QX(quant_f16)(const float *src, void *dst, int64_t n)
{
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = quant_f32_to_f16(src[i]);
}

static QX_TARGET void QX(quant_bf16)(const float *src, void *dst, int64_t n)
{
    uint16_t *y = dst;
    int64_t i = 0;
    const __m256i abs = _mm256_set1_epi32(0x7FFFFFFF), inf = _mm256_set1_epi32(0x7F800000);
    const __m256i one = _mm256_set1_epi32(1), bias = _mm256_set1_epi32(0x7FFF);
    const __m256i quiet = _mm256_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
        __m256i r[2];
        for (int u = 0; u < 2; u++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(src + i + 8 * u));
            __m256i rnd = _mm256_add_epi32(x, _mm256_add_epi32(bias, _mm256_and_si256(
                                                                         _mm256_srli_epi32(x, 16), one)));
            rnd = _mm256_srli_epi32(rnd, 16);
            __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), quiet);
            __m256i isnan = _mm256_cmpgt_epi32(_mm256_and_si256(x, abs), inf);
            r[u] = _mm256_blendv_epi8(rnd, nan, isnan);
        }
        __m256i p = _mm256_packus_epi32(r[0], r[1]);
        p = _mm256_permute4x64_epi64(p, 0xD8);
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++)
        y[i] = quant_f32_to_bf16(src[i]);
}

static void QX(fill)(quant_kernels *ks)
{
    ks->name = QX_PASS == 2 ? "avx512-vnni" : "avx2";
    ks->dot[MOE_TYPE_F32] = QX(dotf_f32);
    ks->dot[MOE_TYPE_F16] = QX(dotf_f16);
    ks->dot[MOE_TYPE_BF16] = QX(dotf_bf16);
    ks->dot4[MOE_TYPE_F32] = QX(dotf4_f32);
    ks->dot4[MOE_TYPE_F16] = QX(dotf4_f16);
    ks->dot4[MOE_TYPE_BF16] = QX(dotf4_bf16);
#define QX_SET(T, NAME)                    \
    ks->dot[T] = QX(NAME##_dot);           \
    ks->dot4[T] = QX(NAME##_dot4);
    QX_SET(MOE_TYPE_Q8_0, q8_0)
    QX_SET(MOE_TYPE_Q8_1, q8_1)
    QX_SET(MOE_TYPE_Q4_0, q4_0)
    QX_SET(MOE_TYPE_Q4_1, q4_1)
    QX_SET(MOE_TYPE_Q5_0, q5_0)
    QX_SET(MOE_TYPE_Q5_1, q5_1)
    QX_SET(MOE_TYPE_Q2_K, q2_k)
    QX_SET(MOE_TYPE_Q3_K, q3_k)
    QX_SET(MOE_TYPE_Q4_K, q4_k)
    QX_SET(MOE_TYPE_Q5_K, q5_k)
    QX_SET(MOE_TYPE_Q6_K, q6_k)
    QX_SET(MOE_TYPE_Q8_K, q8_k)
#undef QX_SET
#if QX_PASS == 2
    ks->dot[MOE_TYPE_Q8_0] = QX(q8_0_zdot);
    ks->dot4[MOE_TYPE_Q8_0] = QX(q8_0_zdot4);
    ks->dot[MOE_TYPE_Q4_0] = QX(q4_0_zdot);
    ks->dot4[MOE_TYPE_Q4_0] = QX(q4_0_zdot4);
    ks->dotr4[MOE_TYPE_Q8_0] = QX(q8_0_zdotr4);
    ks->dotr4[MOE_TYPE_Q4_0] = QX(q4_0_zdotr4);
    ks->dot[MOE_TYPE_Q4_K] = QX(q4_k_kzdot);
    ks->dot4[MOE_TYPE_Q4_K] = QX(q4_k_kzdot4);
    ks->dot[MOE_TYPE_Q5_K] = QX(q5_k_kzdot);
    ks->dot4[MOE_TYPE_Q5_K] = QX(q5_k_kzdot4);
    ks->dot[MOE_TYPE_Q6_K] = QX(q6_k_kzdot);
    ks->dot4[MOE_TYPE_Q6_K] = QX(q6_k_kzdot4);
#endif
    ks->quantize[MOE_TYPE_Q8_0] = QX(quant_q8_0);
    ks->quantize[MOE_TYPE_Q8_1] = QX(quant_q8_1);
    ks->quantize[MOE_TYPE_Q8_K] = QX(quant_q8_k);
    ks->quantize[MOE_TYPE_F16] = QX(quant_f16);
    ks->quantize[MOE_TYPE_BF16] = QX(quant_bf16);
}

#undef DPBUSD
#undef DPWSSD
#undef QX_DRIVER
#undef QX_FLOAT_STEP
#undef QX_FLOAT_DOTS
#undef QX_SIGNED_STEP
#undef QX_UNSIGNED_STEP

#endif /* QX_PASS */

#else /* not x86 */

bool quant_x86_fill(quant_kernels *ks, const char *want)
{
    (void)ks;
    (void)want;
    return false;
}

#endif
