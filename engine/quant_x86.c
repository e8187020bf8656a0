/*
 * quant_x86.c - fast x86 kernels for quant.c: dot products (one activation
 * row, or four activation rows per pass over a weight row for prompt
 * batches) and the quantizers of the activation types. Chosen at run time;
 * no special compiler flags: every function carries its own target
 * attribute.
 *
 * Two kernel sets are compiled from the same source by including this file
 * into itself twice: "avx2" (AVX2 + FMA + F16C; int8 products through
 * vpmaddubsw/vpmaddwd) and "avx512-vnni" (adds AVX512F/BW/DQ/VL + VNNI:
 * vpdpbusd / vpdpwssd on 256-bit vectors). For f32, f16
 * and bf16 (both orders), the 32-element types, q4_k, q5_k and q6_k the
 * results are bit-identical to the scalar reference of quant.c, whose float
 * order follows the reference runtime; q2_k, q3_k and q8_k equal it up to
 * the order of float additions (integer parts exact). Quantizers are bit-identical to the
 * scalar ones. A dot gives the same bits whichever entry computes it (dot,
 * dot4), so batched and single-token decoding agree exactly.
 *
 * Owns: SIMD code only. Depends on quant_impl.h; never prints or aborts.
 */
#include "config.h"

#include "quant_impl.h"

#if defined(__x86_64__) || defined(__i386__)
#ifndef QX_PASS

/* Float results must not depend on the compiler fusing a*b+c (GCC does by
 * default when FMA is enabled): the dots must equal the scalar reference
 * bit for bit. Explicit _mm*_fmadd_* are the intended FMAs; every product
 * that is later added goes through QX_NOFUSE, an empty asm that hides the
 * value's origin. (A "#pragma GCC optimize" would also do, but it stops
 * GCC from unrolling the kernels' small loops.) */
#define QX_NOFUSE(v) __asm__("" : "+x"(v))

/* Small constant-count loops (over the 1 or 4 activation rows, the 8 blocks
 * of a reduction, the parts of a super-block) must be unrolled so their
 * accumulators stay in registers; GCC does that only at -O3 on its own and
 * the build uses -O2. */
#define QX_UNROLL _Pragma("GCC unroll 8")

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

/* a*b + c with one rounding (the scalar reference's fmaf) */
static inline QX_ALWAYS QX_TARGET float QX(fma1)(float a, float b, float c)
{
    return _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(b), _mm_set_ss(c)));
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

/* One row (_dot) and four activation rows (_dot4) through NAME##_rows. */
#define QX_ROW_WRAPPERS(NAME)                                                             \
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
        QX_UNROLL for (int k = 0; k < na; k++) {                                                    \
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
        QX_UNROLL for (int k = 0; k < na; k++)                                                      \
            out[k] = QX(hsum)(_mm256_add_ps(acc[k], accb[k]));                            \
    }                                                                                     \
    QX_ROW_WRAPPERS(NAME)

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

/* steps of 8 elements; "blocks" of 8 so the driver's tail handles n % 8 via
 * the scalar remainder below */
#define QX_FLOAT_STEP(NAME, LD)                                                         \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_step)(const void *w, const void **a, \
                                                           int64_t i, int na, __m256 *acc) \
    {                                                                                   \
        __m256 wv = QX(LD)(w, 8 * i);                                                   \
        QX_UNROLL for (int k = 0; k < na; k++)                                                    \
            acc[k] = _mm256_fmadd_ps(wv, QX(LD)(a[k], 8 * i), acc[k]);                  \
    }

QX_FLOAT_STEP(f32, ld_f32)
QX_FLOAT_STEP(f16, ld_f16)
QX_DRIVER(f32, void, void, 8)
QX_DRIVER(f16, void, void, 8)

/* quant_dot_f32_wide: two vectors of 4 double lanes (elements i..i+3 and
 * i+4..i+7 of each step of 8); a product of two floats is exact in double,
 * so the FMA is the scalar "l += (double)w * a" */
static QX_TARGET double QX(dot_f32_wide)(int64_t n, const float *w, const float *a)
{
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        lo = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(w + i)),
                             _mm256_cvtps_pd(_mm_loadu_ps(a + i)), lo);
        hi = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm_loadu_ps(w + i + 4)),
                             _mm256_cvtps_pd(_mm_loadu_ps(a + i + 4)), hi);
    }
    __m256d h = _mm256_add_pd(lo, hi); /* lanes l + l+4 */
    __m128d p = _mm_add_pd(_mm256_castpd256_pd128(h), _mm256_extractf128_pd(h, 1));
    double s = _mm_cvtsd_f64(p) + _mm_cvtsd_f64(_mm_unpackhi_pd(p, p));
    for (; i < n; i++)
        s += (double)w[i] * a[i];
    return s;
}

/* vec4x16 of quant.c: the 16-lane accumulator j is (acc[2j], acc[2j+1]);
 * ld loads 8 elements from an index */
static inline QX_ALWAYS QX_TARGET float QX(vec4x16)(int64_t n, const void *w, const void *a,
                                                    __m256 (*ld)(const void *, int64_t),
                                                    int64_t *end)
{
    __m256 acc[8];
    QX_UNROLL for (int j = 0; j < 8; j++)
        acc[j] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        QX_UNROLL for (int j = 0; j < 8; j++)
            acc[j] = _mm256_fmadd_ps(ld(w, i + 8 * j), ld(a, i + 8 * j), acc[j]);
    QX_UNROLL for (int j = 0; j < 4; j++)
        acc[j] = _mm256_add_ps(acc[j], acc[j + 4]);
    acc[0] = _mm256_add_ps(acc[0], acc[2]);
    acc[1] = _mm256_add_ps(acc[1], acc[3]);
    *end = i;
    return QX(hsum)(_mm256_add_ps(acc[0], acc[1]));
}

/* f32 in the vector-dot order (quant_gemm_expert; see dot_f32_expert in
 * quant.c): vec4x16, then the n % 64 leftovers added to the float sum one
 * unfused product at a time */
static QX_TARGET float QX(dote_f32)(int64_t n, const void *wv, const void *av)
{
    const float *w = wv, *a = av;
    int64_t i;
    float s = QX(vec4x16)(n, w, a, QX(ld_f32), &i);
    for (; i < n; i++) {
        float p = w[i] * a[i];
        QX_NOFUSE(p);
        s += p;
    }
    return s;
}

/* f32 rows of n % 16 != 0 elements: the wide dot rounded once, like the
 * scalar reference, so a row split into pieces (EMoE experts summed in
 * double) reproduces it */
static QX_TARGET float QX(dotf_f32)(int64_t n, const void *w, const void *a)
{
    if (n % 16)
        return (float)QX(dot_f32_wide)(n, w, a);
    return QX(f32_dot)(n, w, a);
}

static QX_TARGET void QX(dotf4_f32)(int64_t n, const void *w, const void *const a[4],
                                    float out[4])
{
    if (n % 16) {
        for (int k = 0; k < 4; k++)
            out[k] = (float)QX(dot_f32_wide)(n, w, a[k]);
        return;
    }
    QX(f32_dot4)(n, w, a, out);
}

/* f16 / bf16, bit-identical to the scalar reference of quant.c in both of
 * its orders (see the comment above its dot_f16): a 16-lane accumulator is
 * a pair of vectors (lanes 0..7, 8..15), hsum16 = hsum(lo + hi).
 *   f16 dense:   the generic driver above (its two accumulators take
 *                alternate 8-element steps: exactly 16 lanes, one chain);
 *   bf16 dense:  pairs (2l, 2l+1) of a 32-element step into lane l;
 *   f16 expert:  4 x 16 lanes over 64-element steps;
 *   bf16 expert: 2 x 16 lanes of pairs over 64-element steps.
 * The pair step is done with two FMAs (odd element first): a bf16 product
 * is exact in float, so that is the reference's dot-product instruction
 * except that subnormals are not flushed. */

static inline QX_ALWAYS QX_TARGET double QX(f16_tail)(int64_t i, int64_t n, const uint16_t *w,
                                                      const uint16_t *a, bool bf)
{
    double s = 0.0;
    for (; i < n; i++) {
        float x = bf ? quant_bf16_to_f32(w[i]) : QX(h2f)(w[i]);
        float y = bf ? quant_bf16_to_f32(a[i]) : QX(h2f)(a[i]);
        float p = x * y;
        QX_NOFUSE(p);
        s += (double)p;
    }
    return s;
}

static QX_TARGET float QX(dote_f16)(int64_t n, const void *wv, const void *av)
{
    const uint16_t *w = wv, *a = av;
    int64_t i;
    double s = QX(vec4x16)(n, w, a, QX(ld_f16), &i);
    return (float)(s + QX(f16_tail)(i, n, w, a, false));
}

static QX_TARGET float QX(dotf_f16)(int64_t n, const void *w, const void *a)
{
    if (n % 16)
        return QX(dote_f16)(n, w, a);
    return QX(f16_dot)(n, w, a);
}

static QX_TARGET void QX(dotf4_f16)(int64_t n, const void *w, const void *const a[4],
                                    float out[4])
{
    if (n % 16) {
        for (int k = 0; k < 4; k++)
            out[k] = QX(dote_f16)(n, w, a[k]);
        return;
    }
    QX(f16_dot4)(n, w, a, out);
}

/* the 16 bf16 values at p as two float vectors: elements 2l+1 and 2l */
static inline QX_ALWAYS QX_TARGET void QX(ld_bf16_pairs)(const uint16_t *p, __m256 *odd,
                                                         __m256 *even)
{
    __m256i v = QX(load256)(p);
    *odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xFFFF0000u)));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* one 32-element pair step of activation rows a[k] (k < na) into the 16-lane
 * accumulators (lo[k], hi[k]) */
static inline QX_ALWAYS QX_TARGET void QX(bf16_pstep)(const uint16_t *w, const uint16_t *const *a,
                                                      int64_t e0, int na, __m256 *lo, __m256 *hi)
{
    __m256 wo0, we0, wo1, we1;
    QX(ld_bf16_pairs)(w + e0, &wo0, &we0);
    QX(ld_bf16_pairs)(w + e0 + 16, &wo1, &we1);
    QX_UNROLL for (int k = 0; k < na; k++) {
        __m256 ao0, ae0, ao1, ae1;
        QX(ld_bf16_pairs)(a[k] + e0, &ao0, &ae0);
        QX(ld_bf16_pairs)(a[k] + e0 + 16, &ao1, &ae1);
        lo[k] = _mm256_fmadd_ps(we0, ae0, _mm256_fmadd_ps(wo0, ao0, lo[k]));
        hi[k] = _mm256_fmadd_ps(we1, ae1, _mm256_fmadd_ps(wo1, ao1, hi[k]));
    }
}

static QX_TARGET float QX(dote_bf16)(int64_t n, const void *wv, const void *av)
{
    const uint16_t *w = wv, *const a[1] = {av};
    __m256 lo[2], hi[2];
    lo[0] = lo[1] = hi[0] = hi[1] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        QX(bf16_pstep)(w, a, i, 1, &lo[0], &hi[0]);
        QX(bf16_pstep)(w, a, i + 32, 1, &lo[1], &hi[1]);
    }
    double s = QX(hsum)(_mm256_add_ps(lo[0], hi[0]));
    s += QX(hsum)(_mm256_add_ps(lo[1], hi[1]));
    return (float)(s + QX(f16_tail)(i, n, w, a[0], true));
}

static inline QX_ALWAYS QX_TARGET void QX(bf16_rows)(int64_t n, const void *wv,
                                                     const void *const *av, int na, float *out)
{
    const uint16_t *w = wv, *a[4] = {0};
    __m256 lo[4], hi[4];
    QX_UNROLL for (int k = 0; k < na; k++) {
        a[k] = av[k];
        lo[k] = hi[k] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < n; i += 32)
        QX(bf16_pstep)(w, a, i, na, lo, hi);
    QX_UNROLL for (int k = 0; k < na; k++)
        out[k] = QX(hsum)(_mm256_add_ps(lo[k], hi[k]));
}

static QX_TARGET float QX(dotf_bf16)(int64_t n, const void *w, const void *a)
{
    if (n % 32)
        return QX(dote_bf16)(n, w, a);
    const void *av[1] = {a};
    float o;
    QX(bf16_rows)(n, w, av, 1, &o);
    return o;
}

static QX_TARGET void QX(dotf4_bf16)(int64_t n, const void *w, const void *const a[4],
                                     float out[4])
{
    if (n % 32) {
        for (int k = 0; k < 4; k++)
            out[k] = QX(dote_bf16)(n, w, a[k]);
        return;
    }
    QX(bf16_rows)(n, w, a, 4, out);
}

/* ---- q8_0, q8_1, q4_0, q4_1, q5_0, q5_1 (blocks of 32) --------------------- */

/* Legacy (32-element) types, bit-identical to the scalar reference of
 * quant.c, whose float order follows the reference runtime (see the comment
 * above its scalar dots; exact agreement avoids flipped Q8 roundings
 * downstream):
 *   q8_0: 8 lanes (lane l = integer sum of elements 4l..4l+3),
 *         acc = fma(dw*da, lane, acc) per block, then hsum8;
 *   q4_0: whole block sums, acc = fma(isum, dw*da, acc) in block order;
 *   q4_1, q5_0, q5_1, q8_1: s += (dw*da)*isum (+ mw*sa), in block order.
 * The sequential chains stay cheap by reducing eight blocks' integer sums
 * at once. */

/* lane sums (8 x int32) of block i: the integer dot is their total */
#define QX_SIGNED_INT(NAME, WT, AT, UNPACK)                                               \
    static inline QX_ALWAYS QX_TARGET __m256i QX(NAME##_int)(const WT *w, const AT *a,    \
                                                             int64_t i)                   \
    {                                                                                     \
        __m256i q = UNPACK;                                                               \
        __m256i s = _mm256_sign_epi8(QX(load256)(a[i].qs), q);                            \
        return DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(q, q), s);                 \
    }
#define QX_UNSIGNED_INT(NAME, WT, UNPACK)                                                 \
    static inline QX_ALWAYS QX_TARGET __m256i QX(NAME##_int)(const WT *w, const blk_q8_1 *a, \
                                                             int64_t i)                   \
    {                                                                                     \
        __m256i q = UNPACK;                                                               \
        return DPBUSD(_mm256_setzero_si256(), q, QX(load256)(a[i].qs));                   \
    }

QX_SIGNED_INT(q8_1, blk_q8_1, blk_q8_1, QX(load256)(w[i].qs))
QX_SIGNED_INT(q4_0, blk_q4_0, blk_q8_0,
              _mm256_sub_epi8(QX(nibbles32)(w[i].qs), _mm256_set1_epi8(8)))
QX_SIGNED_INT(q5_0, blk_q5_0, blk_q8_0,
              _mm256_sub_epi8(QX(nibbles32)(w[i].qs),
                              _mm256_andnot_si256(QX(bits32)(w[i].qh), _mm256_set1_epi8(16))))
QX_UNSIGNED_INT(q4_1, blk_q4_1, QX(nibbles32)(w[i].qs))
QX_UNSIGNED_INT(q5_1, blk_q5_1,
                _mm256_or_si256(QX(nibbles32)(w[i].qs),
                                _mm256_and_si256(QX(bits32)(w[i].qh), _mm256_set1_epi8(16))))

/* eight fp16 values stride bytes apart, as floats */
static inline QX_ALWAYS QX_TARGET __m256 QX(h8)(const void *p, size_t stride)
{
    const uint8_t *b = p;
    uint16_t v[8];
    for (int k = 0; k < 8; k++)
        memcpy(&v[k], b + (size_t)k * stride, 2);
    __m128i h = _mm_cvtsi32_si128(v[0]);
    h = _mm_insert_epi16(h, v[1], 1);
    h = _mm_insert_epi16(h, v[2], 2);
    h = _mm_insert_epi16(h, v[3], 3);
    h = _mm_insert_epi16(h, v[4], 4);
    h = _mm_insert_epi16(h, v[5], 5);
    h = _mm_insert_epi16(h, v[6], 6);
    h = _mm_insert_epi16(h, v[7], 7);
    return _mm256_cvtph_ps(h);
}

/* totals of eight lane-sum vectors: [sum p0, ..., sum p7] */
static inline QX_ALWAYS QX_TARGET __m256i QX(reduce8)(const __m256i *p)
{
    __m256i h01 = _mm256_hadd_epi32(p[0], p[1]), h23 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i h45 = _mm256_hadd_epi32(p[4], p[5]), h67 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i lo = _mm256_hadd_epi32(h01, h23), hi = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(lo, hi, 0x20),
                            _mm256_permute2x128_si256(lo, hi, 0x31));
}

/* q4_0, two blocks b and b + 1 at once: lanes 0..3 of the result sum to
 * block b's integer dot, lanes 4..7 to block b + 1's. The weights' nibbles
 * stay in place ([lo_b | lo_b1], [hi_b | hi_b1]); the activations are
 * regrouped to match instead. */
/* the weights' part: the pair's low and high nibbles minus 8 */
static inline QX_ALWAYS QX_TARGET void QX(q4_0_wpair)(const blk_q4_0 *w, int64_t b, __m256i *lo,
                                                      __m256i *hi)
{
    const __m256i m4 = _mm256_set1_epi8(0xF), k8 = _mm256_set1_epi8(8);
    __m256i x = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)w[b + 1].qs),
                                 _mm_loadu_si128((const __m128i *)w[b].qs));
    *lo = _mm256_sub_epi8(_mm256_and_si256(x, m4), k8);
    *hi = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(x, 4), m4), k8);
}

/* the activations' part, given the weights' */
static inline QX_ALWAYS QX_TARGET __m256i QX(q4_0_apair)(const blk_q8_0 *a, int64_t b, __m256i lo,
                                                         __m256i hi)
{
    __m256i a0 = QX(load256)(a[b].qs), a1 = QX(load256)(a[b + 1].qs);
    __m256i alo = _mm256_permute2x128_si256(a0, a1, 0x20);
    __m256i ahi = _mm256_permute2x128_si256(a0, a1, 0x31);
    __m256i p = DPBUSD(_mm256_setzero_si256(), _mm256_sign_epi8(lo, lo), _mm256_sign_epi8(alo, lo));
    return DPBUSD(p, _mm256_sign_epi8(hi, hi), _mm256_sign_epi8(ahi, hi));
}

static inline QX_ALWAYS QX_TARGET __m256i QX(q4_0_pair)(const blk_q4_0 *w, const blk_q8_0 *a,
                                                        int64_t b)
{
    __m256i lo, hi;
    QX(q4_0_wpair)(w, b, &lo, &hi);
    return QX(q4_0_apair)(a, b, lo, hi);
}

/* totals of eight blocks from four pair vectors: [t0, ..., t7] */
static inline QX_ALWAYS QX_TARGET __m256i QX(reduce4pairs)(const __m256i *v)
{
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    return _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline QX_ALWAYS QX_TARGET int QX(hsum_i128)(__m128i t)
{
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4E));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xB1));
    return _mm_cvtsi128_si32(t);
}

static inline QX_ALWAYS QX_TARGET int QX(hsum_i32)(__m256i v)
{
    return QX(hsum_i128)(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

/* HAS_M: q4_1/q5_1 (weights carry m, activations s); FMA: q4_0's chain
 * acc = fma(isum, d, acc) instead of s += d*isum */
#define QX_SDRIVER(NAME, WT, AT, HAS_M, FMA, MF, SF)                                      \
    static inline QX_ALWAYS QX_TARGET float QX(NAME##_row)(int64_t n, const WT *w,        \
                                                           const AT *a)                   \
    {                                                                                     \
        int64_t nb = n / QK32, i = 0;                                                     \
        float s = 0.0f;                                                                   \
        __m128 sv = _mm_setzero_ps(); /* q4_0 chain: lane 0 */                        \
        for (; i + 8 <= nb; i += 8) {                                                     \
            __m256i p[8];                                                                 \
            float t[8];                                                                    \
            __m256 isum;                                                              \
            if (FMA) { /* q4_0: two blocks per vector */                              \
                QX_UNROLL for (int b = 0; b < 4; b++)                                 \
                    p[b] = QX(q4_0_pair)((const blk_q4_0 *)(const void *)w,           \
                                         (const blk_q8_0 *)(const void *)a, i + 2 * b);\
                isum = _mm256_cvtepi32_ps(QX(reduce4pairs)(p));                       \
            } else {                                                                  \
                QX_UNROLL for (int b = 0; b < 8; b++)                                 \
                    p[b] = QX(NAME##_int)(w, a, i + b);                               \
                isum = _mm256_cvtepi32_ps(QX(reduce8)(p));                            \
            }                                                                         \
            if (FMA) {                                                                    \
                _mm256_storeu_ps(t, isum);                                                \
                QX_UNROLL for (int b = 0; b < 8; b++)                                               \
                    sv = _mm_fmadd_ss(_mm_load_ss(&t[b]),                             \
                                      _mm_set_ss(QX(h2f)(w[i + b].d) * QX(h2f)(a[i + b].d)), sv);\
                continue;                                                                 \
            }                                                                             \
            __m256 d = _mm256_mul_ps(QX(h8)(&w[i].d, sizeof(WT)), QX(h8)(&a[i].d, sizeof(AT))); \
            __m256 v = _mm256_mul_ps(d, isum);                                            \
            QX_NOFUSE(v);                                                                 \
            if (HAS_M) {                                                                  \
                __m256 ms = _mm256_mul_ps(QX(h8)(&w[i].MF, sizeof(WT)),                   \
                                          QX(h8)(&a[i].SF, sizeof(AT)));                  \
                QX_NOFUSE(ms);                                                            \
                v = _mm256_add_ps(v, ms);                                                 \
            }                                                                             \
            _mm256_storeu_ps(t, v);                                                       \
            QX_UNROLL for (int b = 0; b < 8; b++)                                                   \
                s += t[b];                                                                \
        }                                                                                 \
        for (; i < nb; i++) {                                                             \
            float d = QX(h2f)(w[i].d) * QX(h2f)(a[i].d);                                  \
            float isum = (float)QX(hsum_i32)(QX(NAME##_int)(w, a, i));                    \
            if (FMA) {                                                                    \
                sv = _mm_fmadd_ss(_mm_set_ss(isum), _mm_set_ss(d), sv);               \
                continue;                                                                 \
            }                                                                             \
            float v = d * isum;                                                           \
            QX_NOFUSE(v);                                                                 \
            if (HAS_M) {                                                                  \
                float ms = QX(h2f)(w[i].MF) * QX(h2f)(a[i].SF);                           \
                QX_NOFUSE(ms);                                                            \
                v += ms;                                                                  \
            }                                                                             \
            s += v;                                                                       \
        }                                                                                 \
        return FMA ? _mm_cvtss_f32(sv) : s;                                           \
    }                                                                                     \
    static QX_TARGET float QX(NAME##_dot)(int64_t n, const void *w, const void *a)        \
    {                                                                                     \
        return QX(NAME##_row)(n, w, a);                                                   \
    }                                                                                     \
    static QX_TARGET void QX(NAME##_dot4)(int64_t n, const void *w, const void *const a[4], \
                                          float out[4])                                   \
    {                                                                                     \
        QX_UNROLL for (int k = 0; k < 4; k++)                                                       \
            out[k] = QX(NAME##_row)(n, w, a[k]);                                          \
    }

/* q8_0: 8-lane FMA accumulation, one accumulator per activation row */
static inline QX_ALWAYS QX_TARGET void QX(q8_0_rows)(int64_t n, const void *wv,
                                                     const void *const *av, int na,
                                                     float *out)
{
    const blk_q8_0 *w = wv;
    const blk_q8_0 *a[4] = {0};
    __m256 acc[4];
    QX_UNROLL for (int k = 0; k < na; k++) {
        a[k] = av[k];
        acc[k] = _mm256_setzero_ps();
    }
    int64_t nb = n / QK32;
    for (int64_t i = 0; i < nb; i++) {
        __m256i q = QX(load256)(w[i].qs), aq = _mm256_sign_epi8(q, q);
        float dw = QX(h2f)(w[i].d);
        QX_UNROLL for (int k = 0; k < na; k++) {
            __m256i p = DPBUSD(_mm256_setzero_si256(), aq,
                               _mm256_sign_epi8(QX(load256)(a[k][i].qs), q));
            acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * QX(h2f)(a[k][i].d)),
                                     _mm256_cvtepi32_ps(p), acc[k]);
        }
    }
    QX_UNROLL for (int k = 0; k < na; k++)
        out[k] = QX(hsum)(acc[k]);
}

static QX_TARGET float QX(q8_0_dot)(int64_t n, const void *w, const void *a)
{
    const void *av[1] = {a};
    float o;
    QX(q8_0_rows)(n, w, av, 1, &o);
    return o;
}

static QX_TARGET void QX(q8_0_dot4)(int64_t n, const void *w, const void *const a[4],
                                    float out[4])
{
    QX(q8_0_rows)(n, w, a, 4, out);
}

#if QX_PASS == 2
/* q8_0 gemm (VNNI): register tiles of up to 4 weight rows x 4 activation
 * rows, so each loaded block serves several outputs. Every output keeps the
 * chain of q8_0_rows (acc = fma(dw*da, lanes, acc) per block in order, then
 * hsum8), so tiles, dot and dot4 give the same bits. Integer lanes in the
 * offset form: (a + 128 as u8) * w minus 128 * (lane sum of w), exact for
 * any bytes, one vpdpbusd per (row, activation) pair. Per group of four
 * weight rows, the corrections and the rows' scales (as floats) are
 * tabulated once; the activations' scales once per call. */
#define QX_DECODE_STREAMS 8 /* decode: rows read at once, far apart */
#define QX_GEMM_MAXB 256                 /* blocks per row with tables */
#define QX_GEMM_ACT_SCALES (16 * 1024)   /* activation scales per pass */
#define QX_GEMM_ACT_BYTES (512u * 1024u) /* activation bytes per pass (L2) */

static inline QX_ALWAYS QX_TARGET void QX(q8_0_tile)(int64_t nb, const uint8_t *w, size_t wrb,
                                                     const __m256i *corr, const float *dwt,
                                                     const uint8_t *a, size_t arb,
                                                     const float *dat, float *prod, int nr,
                                                     int nc, float *out, int64_t ostride)
{
    const blk_q8_0 *wr[4] = {0}, *ar[4] = {0};
    __m256 acc[4][4];
    const __m256i off = _mm256_set1_epi8((char)0x80);
    /* the scale products dw*da of every block first, so the main loop
     * takes them as broadcast memory operands of its FMAs */
    for (int64_t i = 0; i < nb; i++) {
        __m128 dw = _mm_load_ps(dwt + 4 * i);
        QX_UNROLL for (int c = 0; c < nc; c++)
            _mm_store_ps(prod + 16 * i + 4 * c,
                         _mm_mul_ps(dw, _mm_broadcast_ss(dat + (size_t)c * (size_t)nb + i)));
    }
    QX_UNROLL for (int r = 0; r < nr; r++) {
        wr[r] = (const blk_q8_0 *)(const void *)(w + (size_t)r * wrb);
        QX_UNROLL for (int c = 0; c < nc; c++)
            acc[r][c] = _mm256_setzero_ps();
    }
    QX_UNROLL for (int c = 0; c < nc; c++)
        ar[c] = (const blk_q8_0 *)(const void *)(a + (size_t)c * arb);
    for (int64_t i = 0; i < nb; i++) {
        __m256i wq[4];
        const float *d = prod + 16 * i;
        QX_UNROLL for (int r = 0; r < nr; r++)
            wq[r] = QX(load256)(wr[r][i].qs);
        QX_UNROLL for (int c = 0; c < nc; c++) {
            __m256i aq = _mm256_xor_si256(QX(load256)(ar[c][i].qs), off);
            QX_UNROLL for (int r = 0; r < nr; r++) {
                __m256i p = DPBUSD(_mm256_load_si256(corr + 4 * i + r), aq, wq[r]);
                acc[r][c] = _mm256_fmadd_ps(_mm256_broadcast_ss(d + 4 * c + r),
                                            _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    QX_UNROLL for (int r = 0; r < nr; r++)
        QX_UNROLL for (int c = 0; c < nc; c++)
            out[(int64_t)c * ostride + r] = QX(hsum)(acc[r][c]);
}

static QX_TARGET void QX(q8_0_gemm)(int64_t n, const void *w, size_t wrb, int64_t r0, int64_t r1,
                                    const void *act, size_t arb, int64_t n_act, float *out,
                                    int64_t n_rows_out)
{
    const int64_t nb = n / QK32;
    const uint8_t *wb = w, *ab = act;
    if (n_act == 1 && nb <= QX_GEMM_MAXB) {
        /* decode: QX_DECODE_STREAMS FMA chains over rows far apart (as many
         * DRAM streams, with software prefetch, and independent chains that
         * hide the FMA latency). Measured here on granite-moe-1b q8_0, 2
         * threads, tokens/s relative to 2 streams: 4 -> 1.17x, 6 -> 1.22x,
         * 8 -> 1.27x, 10 -> 1.26x, 12 and 16 -> 1.17x (adjacent rows
         * interleaved stream 2.5x slower from DRAM than one row).
         * The activation's part is done once: its scales as floats, and per
         * block -128 x the lane sums of its quants, so that the weights go
         * into vpdpbusd as unsigned (q + 128) with one xor and the lanes come
         * out as the exact sums of q * a (what the sign trick gives). */
        const blk_q8_0 *av = (const blk_q8_0 *)act;
        __m256i negc[QX_GEMM_MAXB];
        float da[QX_GEMM_MAXB];
        const __m256i off = _mm256_set1_epi8((char)0x80);
        for (int64_t i = 0; i < nb; i++) {
            negc[i] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       DPBUSD(_mm256_setzero_si256(), off, QX(load256)(av[i].qs)));
            da[i] = QX(h2f)(av[i].d);
        }
        int64_t r = r0;
        const int64_t q = (r1 - r0) / QX_DECODE_STREAMS;
        for (; r < r0 + q; r++) {
            const blk_q8_0 *ws[QX_DECODE_STREAMS];
            __m256 acc[QX_DECODE_STREAMS];
            QX_UNROLL for (int k = 0; k < QX_DECODE_STREAMS; k++) {
                ws[k] = (const blk_q8_0 *)(const void *)(wb + (size_t)(r + k * q) * wrb);
                acc[k] = _mm256_setzero_ps();
            }
            for (int64_t i = 0; i < nb; i++) {
                const __m256i aq = QX(load256)(av[i].qs);
                const __m256i nc = _mm256_load_si256(&negc[i]);
                const float a = da[i];
                QX_UNROLL for (int k = 0; k < QX_DECODE_STREAMS; k++) {
                    _mm_prefetch((const char *)&ws[k][i + 12], _MM_HINT_T0);
                    __m256i p = DPBUSD(nc, _mm256_xor_si256(QX(load256)(ws[k][i].qs), off), aq);
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(QX(h2f)(ws[k][i].d) * a),
                                             _mm256_cvtepi32_ps(p), acc[k]);
                }
            }
            QX_UNROLL for (int k = 0; k < QX_DECODE_STREAMS; k++)
                out[r + k * q] = QX(hsum)(acc[k]);
        }
        for (r = r0 + QX_DECODE_STREAMS * q; r < r1; r++)
            out[r] = QX(q8_0_dot)(n, wb + (size_t)r * wrb, ab);
        return;
    }
    if (nb > QX_GEMM_MAXB || nb == 0) { /* rows too long for the tables */
        for (int64_t r = r0; r < r1; r++)
            for (int64_t j = 0; j < n_act; j++)
                out[j * n_rows_out + r] = QX(q8_0_dot)(n, wb + (size_t)r * wrb,
                                                       ab + (size_t)j * arb);
        return;
    }
    __m256i corr[4 * QX_GEMM_MAXB];
    _Alignas(16) float dwt[4 * QX_GEMM_MAXB];
    _Alignas(16) float prod[16 * QX_GEMM_MAXB];
    float dat[QX_GEMM_ACT_SCALES];
    const __m256i zero = _mm256_setzero_si256(), off = _mm256_set1_epi8((char)0x80);
    int64_t chunk = (int64_t)(QX_GEMM_ACT_BYTES / arb);
    if (chunk > QX_GEMM_ACT_SCALES / nb)
        chunk = QX_GEMM_ACT_SCALES / nb;
    chunk = chunk < 4 ? 4 : chunk & ~(int64_t)3;
    for (int64_t j0 = 0; j0 < n_act; j0 += chunk) {
        int64_t j1 = j0 + chunk < n_act ? j0 + chunk : n_act;
        for (int64_t j = j0; j < j1; j++) {
            const blk_q8_0 *ar = (const blk_q8_0 *)(const void *)(ab + (size_t)j * arb);
            for (int64_t i = 0; i < nb; i++)
                dat[(j - j0) * nb + i] = QX(h2f)(ar[i].d);
        }
        for (int64_t r = r0; r < r1; r += 4) {
            int nr = r1 - r < 4 ? (int)(r1 - r) : 4;
            const uint8_t *wp = wb + (size_t)r * wrb;
            for (int q = 0; q < 4; q++) {
                /* rows past the group's end repeat its last row (unused) */
                const blk_q8_0 *b =
                    (const blk_q8_0 *)(const void *)(wp + (size_t)(q < nr ? q : nr - 1) * wrb);
                for (int64_t i = 0; i < nb; i++) {
                    corr[4 * i + q] = _mm256_sub_epi32(
                        zero, DPBUSD(zero, off, QX(load256)(b[i].qs)));
                    dwt[4 * i + q] = QX(h2f)(b[i].d);
                }
            }
            for (int64_t j = j0; j < j1; j += 4) {
                int nc = j1 - j < 4 ? (int)(j1 - j) : 4;
                const uint8_t *ap = ab + (size_t)j * arb;
                const float *dp = dat + (j - j0) * nb;
                float *op = out + j * n_rows_out + r;
#define QX_T(R, C)                                                                        \
    case (R) * 8 + (C):                                                                   \
        QX(q8_0_tile)(nb, wp, wrb, corr, dwt, ap, arb, dp, prod, R, C, op, n_rows_out);         \
        break;
                switch (nr * 8 + nc) {
                    QX_T(4, 4) QX_T(4, 3) QX_T(4, 2) QX_T(4, 1)
                    QX_T(3, 4) QX_T(3, 3) QX_T(3, 2) QX_T(3, 1)
                    QX_T(2, 4) QX_T(2, 3) QX_T(2, 2) QX_T(2, 1)
                    QX_T(1, 4) QX_T(1, 3) QX_T(1, 2) QX_T(1, 1)
                default:
                    break;
                }
#undef QX_T
            }
        }
    }
}
#undef QX_GEMM_MAXB
#undef QX_GEMM_ACT_SCALES
#undef QX_GEMM_ACT_BYTES
#endif /* QX_PASS == 2 */

/* MF, SF: the weight's m and the activation's s fields (HAS_M only; the
 * others name d, never read) */
QX_SDRIVER(q8_1, blk_q8_1, blk_q8_1, 0, 0, d, d)
QX_SDRIVER(q4_0, blk_q4_0, blk_q8_0, 0, 1, d, d)
QX_SDRIVER(q5_0, blk_q5_0, blk_q8_0, 0, 0, d, d)
QX_SDRIVER(q4_1, blk_q4_1, blk_q8_1, 1, 0, m, s)
QX_SDRIVER(q5_1, blk_q5_1, blk_q8_1, 1, 0, m, s)

/* q4_0_row for one weight row and four activation rows: each pair of
 * blocks' nibbles unpacked once for the four; per activation the same
 * integer sums, products dw * da (as vectors) and chain as q4_0_row, the
 * four chains interleaved. */
static QX_TARGET void QX(q4_0_dot4x)(int64_t n, const void *wv, const void *const av[4],
                                     float out[4])
{
    const blk_q4_0 *w = wv;
    const blk_q8_0 *a[4] = {av[0], av[1], av[2], av[3]};
    const int64_t nb = n / QK32;
    __m128 sv[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
    int64_t i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i p[4][4];
        float t[4][8], d[4][8];
        const __m256 dw = QX(h8)(&w[i].d, sizeof(blk_q4_0));
        QX_UNROLL for (int b = 0; b < 4; b++) {
            __m256i lo, hi;
            QX(q4_0_wpair)(w, i + 2 * b, &lo, &hi);
            QX_UNROLL for (int k = 0; k < 4; k++)
                p[k][b] = QX(q4_0_apair)(a[k], i + 2 * b, lo, hi);
        }
        QX_UNROLL for (int k = 0; k < 4; k++) {
            _mm256_storeu_ps(t[k], _mm256_cvtepi32_ps(QX(reduce4pairs)(p[k])));
            _mm256_storeu_ps(d[k], _mm256_mul_ps(dw, QX(h8)(&a[k][i].d, sizeof(blk_q8_0))));
        }
        QX_UNROLL for (int b = 0; b < 8; b++)
            QX_UNROLL for (int k = 0; k < 4; k++)
                sv[k] = _mm_fmadd_ss(_mm_load_ss(&t[k][b]), _mm_load_ss(&d[k][b]), sv[k]);
    }
    for (; i < nb; i++)
        QX_UNROLL for (int k = 0; k < 4; k++) {
            float dd = QX(h2f)(w[i].d) * QX(h2f)(a[k][i].d);
            float isum = (float)QX(hsum_i32)(QX(q4_0_int)(w, a[k], i));
            sv[k] = _mm_fmadd_ss(_mm_set_ss(isum), _mm_set_ss(dd), sv[k]);
        }
    QX_UNROLL for (int k = 0; k < 4; k++)
        out[k] = _mm_cvtss_f32(sv[k]);
}

/* q4_0_row for QX_Q40_STREAMS weight rows far apart and one activation
 * row (a generated token): per 8 blocks, each row's integer sums and scale
 * products dw * da as vectors (the same products), then the rows' chains
 * sv = fma(isum, d, sv) block by block, interleaved so they overlap; the
 * next rows of every stream prefetched. Every output equals q4_0_dot. */
#define QX_Q40_STREAMS 4
#define QX_Q40_MAXB 256 /* blocks per row with the table of da */
#define QX_Q40_PF 2     /* rows prefetched ahead */
static QX_TARGET void QX(q4_0_decode)(int64_t n, const void *wv, size_t wrb, int64_t r0,
                                      int64_t r1, const void *act, float *out)
{
    const uint8_t *wb = wv;
    const blk_q8_0 *a = act;
    const int64_t nb = n / QK32, q = (r1 - r0) / QX_Q40_STREAMS;
    float da[QX_Q40_MAXB];
    int64_t r = r0;
    if (nb > QX_Q40_MAXB) { /* rows too long for the table */
        for (; r < r1; r++)
            out[r] = QX(q4_0_dot)(n, wb + (size_t)r * wrb, act);
        return;
    }
    for (int64_t i = 0; i < nb; i++)
        da[i] = QX(h2f)(a[i].d);
    for (; r < r0 + q; r++) {
        const blk_q4_0 *ws[QX_Q40_STREAMS];
        __m128 sv[QX_Q40_STREAMS];
        const int64_t rp = r + QX_Q40_PF < r0 + q ? r + QX_Q40_PF : r0 + q - 1;
        QX_UNROLL for (int k = 0; k < QX_Q40_STREAMS; k++) {
            const uint8_t *pf = wb + (size_t)(rp + k * q) * wrb;
            for (size_t b = 0; b < wrb; b += 64)
                _mm_prefetch((const char *)(pf + b), _MM_HINT_T0);
            ws[k] = (const blk_q4_0 *)(const void *)(wb + (size_t)(r + k * q) * wrb);
            sv[k] = _mm_setzero_ps();
        }
        int64_t i = 0;
        for (; i + 8 <= nb; i += 8) {
            float t[QX_Q40_STREAMS][8], d[QX_Q40_STREAMS][8];
            const __m256 a8 = _mm256_loadu_ps(da + i);
            QX_UNROLL for (int k = 0; k < QX_Q40_STREAMS; k++) {
                __m256i p[4];
                QX_UNROLL for (int b = 0; b < 4; b++)
                    p[b] = QX(q4_0_pair)(ws[k], a, i + 2 * b);
                _mm256_storeu_ps(t[k], _mm256_cvtepi32_ps(QX(reduce4pairs)(p)));
                _mm256_storeu_ps(d[k], _mm256_mul_ps(QX(h8)(&ws[k][i].d, sizeof(blk_q4_0)), a8));
            }
            QX_UNROLL for (int b = 0; b < 8; b++)
                QX_UNROLL for (int k = 0; k < QX_Q40_STREAMS; k++)
                    sv[k] = _mm_fmadd_ss(_mm_load_ss(&t[k][b]), _mm_load_ss(&d[k][b]), sv[k]);
        }
        for (; i < nb; i++)
            QX_UNROLL for (int k = 0; k < QX_Q40_STREAMS; k++) {
                float dd = QX(h2f)(ws[k][i].d) * da[i];
                float isum = (float)QX(hsum_i32)(QX(q4_0_int)(ws[k], a, i));
                sv[k] = _mm_fmadd_ss(_mm_set_ss(isum), _mm_set_ss(dd), sv[k]);
            }
        QX_UNROLL for (int k = 0; k < QX_Q40_STREAMS; k++)
            out[r + k * q] = _mm_cvtss_f32(sv[k]);
    }
    for (r = r0 + QX_Q40_STREAMS * q; r < r1; r++)
        out[r] = QX(q4_0_dot)(n, wb + (size_t)r * wrb, act);
}



/* ---- k-quants against q8_k ---------------------------------------------------- */

/* acc[k] += d8*(d * isum[k]) - d8*(dmin * msum[k]) */
static inline QX_ALWAYS QX_TARGET void QX(kfinish)(const blk_q8_k **a, int64_t i, int na,
                                                   float d, float dmin, const __m256i *isum,
                                                   const __m256i *msum, __m256 *acc)
{
    QX_UNROLL for (int k = 0; k < na; k++) {
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
/* q4_k / q5_k / q6_k: integer lanes in the reference order. lanes[k] lane l
 * = sum over the 32-element chunks of scale * q * a for the chunk's
 * elements 4l..4l+3 (q6_k: q - 32); imin[k] lane c = sum of m * bsums over
 * the 32-element chunks 2c, 2c + 1 (q4_k, q5_k; q6_k: 0). Exact integers;
 * the float part is applied by the driver. */
static inline QX_ALWAYS QX_TARGET void QX(k45_kl)(const uint8_t *scales, const uint8_t *qs,
                                                  const uint8_t *qh, const blk_q8_k **a,
                                                  int64_t i, int na, __m256i *lanes, __m128i *imin)
{
    __m128i sm = QX(k4_unpack)(scales); /* 8 scales, 8 mins */
    uint8_t sc[16];
    _mm_storeu_si128((__m128i *)sc, sm);
    /* mins per 16-element bsum group: group g of 32 covers bsums 2g, 2g+1 */
    __m128i m8 = _mm_srli_si128(sm, 8);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    QX_UNROLL for (int k = 0; k < na; k++) {
        lanes[k] = _mm256_setzero_si256();
        __m256i mb = _mm256_madd_epi16(QX(bsums)(&a[k][i]), m16); /* chunk c: m_c * bsums */
        mb = _mm256_hadd_epi32(mb, mb); /* 128-bit halves: [c0+c1, c2+c3, ..], [c4+c5, ..] */
        imin[k] = _mm_unpacklo_epi64(_mm256_castsi256_si128(mb), _mm256_extracti128_si256(mb, 1));
    }
    const __m256i m4 = _mm256_set1_epi8(0xF), b4 = _mm256_set1_epi8(0x10);
    __m256i hb = qh ? QX(load256)(qh) : _mm256_setzero_si256();
    QX_UNROLL for (int j = 0; j < 4; j++) {
        __m256i raw = QX(load256)(qs + 32 * j);
        __m256i lo = _mm256_and_si256(raw, m4);
        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m4);
        if (qh) {
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(hb, 4), b4));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(hb, 3), b4));
            hb = _mm256_srli_epi16(hb, 2);
        }
        __m256i s1 = _mm256_set1_epi16(sc[2 * j]), s2 = _mm256_set1_epi16(sc[2 * j + 1]);
        QX_UNROLL for (int k = 0; k < na; k++) {
            const int8_t *q8 = a[k][i].qs + 64 * j;
            lanes[k] = DPWSSD(lanes[k], _mm256_maddubs_epi16(lo, QX(load256)(q8)), s1);
            lanes[k] = DPWSSD(lanes[k], _mm256_maddubs_epi16(hi, QX(load256)(q8 + 32)), s2);
        }
    }
}

static inline QX_ALWAYS QX_TARGET void QX(q4_k_kl)(const blk_q4_k *w, const blk_q8_k **a,
                                                   int64_t i, int na, __m256i *lanes, __m128i *imin)
{
    QX(k45_kl)(w[i].scales, w[i].qs, NULL, a, i, na, lanes, imin);
}

static inline QX_ALWAYS QX_TARGET void QX(q5_k_kl)(const blk_q5_k *w, const blk_q8_k **a,
                                                   int64_t i, int na, __m256i *lanes, __m128i *imin)
{
    QX(k45_kl)(w[i].scales, w[i].qs, w[i].qh, a, i, na, lanes, imin);
}

static inline QX_ALWAYS QX_TARGET void QX(q6_k_kl)(const blk_q6_k *w, const blk_q8_k **a,
                                                   int64_t i, int na, __m256i *lanes, __m128i *imin)
{
    const blk_q6_k *b = &w[i];
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    const __m256i k32 = _mm256_set1_epi8(32);
    QX_UNROLL for (int k = 0; k < na; k++) {
        lanes[k] = _mm256_setzero_si256();
        imin[k] = _mm_setzero_si128();
    }
    QX_UNROLL for (int h = 0; h < 2; h++) {
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
        QX_UNROLL for (int t = 0; t < 4; t++) {
            int g = 8 * h + 2 * t;
            __m256i s = QX(scale2)(b->scales[g], b->scales[g + 1]);
            QX_UNROLL for (int k = 0; k < na; k++) {
                __m256i a8 = QX(load256)(a[k][i].qs + 128 * h + 32 * t);
                /* pairs of (q - 32) * a, lane-local like the reference */
                __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(q[t], a8),
                                             _mm256_maddubs_epi16(k32, a8));
                lanes[k] = DPWSSD(lanes[k], p, s);
            }
        }
    }
}

static inline QX_ALWAYS QX_TARGET void QX(q2_k_step)(const blk_q2_k *w, const blk_q8_k **a,
                                                     int64_t i, int na, __m256 *acc)
{
    const blk_q2_k *b = &w[i];
    __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
    __m256i m16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), _mm_set1_epi8(0xF)));
    __m256i isum[4], msum[4];
    QX_UNROLL for (int k = 0; k < na; k++) {
        isum[k] = _mm256_setzero_si256();
        msum[k] = _mm256_madd_epi16(QX(bsums)(&a[k][i]), m16);
    }
    const __m256i m3 = _mm256_set1_epi8(3);
    QX_UNROLL for (int h = 0; h < 2; h++) {
        __m256i r = QX(load256)(b->qs + 32 * h);
        QX_UNROLL for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_and_si256(r, m3);
            r = _mm256_srli_epi16(r, 2);
            int g = 8 * h + 2 * j;
            __m256i s = QX(scale2)(b->scales[g] & 0xF, b->scales[g + 1] & 0xF);
            QX_UNROLL for (int k = 0; k < na; k++) {
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
    QX_UNROLL for (int k = 0; k < na; k++) /* -4 * sum_g sc[g] * bsums[g] */
        isum[k] = _mm256_slli_epi32(
            _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_madd_epi16(QX(bsums)(&a[k][i]), sc16)),
            2);
    const __m256i m3 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256i hm = QX(load256)(b->hmask);
    QX_UNROLL for (int h = 0; h < 2; h++) {
        __m256i r = QX(load256)(b->qs + 32 * h);
        QX_UNROLL for (int j = 0; j < 4; j++) {
            __m256i hb = _mm256_slli_epi16(_mm256_and_si256(hm, one), 2);
            __m256i q = _mm256_or_si256(_mm256_and_si256(r, m3), hb);
            r = _mm256_srli_epi16(r, 2);
            hm = _mm256_srli_epi16(hm, 1);
            int g = 8 * h + 2 * j;
            __m256i s = QX(scale2)(sc[g], sc[g + 1]);
            QX_UNROLL for (int k = 0; k < na; k++) {
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
    QX_UNROLL for (int k = 0; k < na; k++)
        isum[k] = _mm256_setzero_si256();
    for (int c = 0; c < 8; c++) {
        __m256i q = QX(load256)(w[i].qs + 32 * c), aq = _mm256_sign_epi8(q, q);
        QX_UNROLL for (int k = 0; k < na; k++)
            isum[k] = DPBUSD(isum[k], aq, _mm256_sign_epi8(QX(load256)(a[k][i].qs + 32 * c), q));
    }
    QX_UNROLL for (int k = 0; k < na; k++)
        acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(w[i].d * a[k][i].d), _mm256_cvtepi32_ps(isum[k]),
                                 acc[k]);
}

QX_DRIVER(q2_k, blk_q2_k, blk_q8_k, QK_K)
QX_DRIVER(q3_k, blk_q3_k, blk_q8_k, QK_K)
/* one block's float step of q4_k / q5_k / q6_k (MODE below): d8 the
 * activation's scale, dw and dmin the weight block's (dmin unused by 6) */
static inline QX_ALWAYS QX_TARGET void QX(kl_float)(int mode, float d8, float dw, float dmin,
                                                    __m256i lanes, __m128i imin, __m256 *acc,
                                                    __m128 *accm, float *s0)
{
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d8 * dw), _mm256_cvtepi32_ps(lanes), *acc);
    if (mode == 4)
        *accm = _mm_fmadd_ps(_mm_set1_ps(-d8 * dmin), _mm_cvtepi32_ps(imin), *accm);
    if (mode == 5)
        *s0 = QX(fma1)(-d8 * dmin, (float)QX(hsum_i128)(imin), *s0);
}

/* a row's result from its float accumulators (MODE below) */
static inline QX_ALWAYS QX_TARGET float QX(kl_finish)(int mode, __m256 acc, __m128 accm, float s0)
{
    if (mode == 4) {
        __m128 m = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
        s0 = _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
    }
    return QX(hsum)(acc) + s0;
}

/* float part of q4_k / q5_k / q6_k, in the reference order (quant.c):
 *   MODE 6: acc = fma(d8*dw, lanes, acc) per block; hsum8
 *   MODE 5: as 6, plus summs = fma(-d8*dmin, sum of imin, summs); hsum8 + summs
 *   MODE 4: as 6, plus accm = fma(-d8*dmin, imin, accm) in 4 lanes;
 *           hsum8 + ((m0 + m2) + (m1 + m3)) */
#define QX_KLDRIVER(NAME, KL, WT, MODE, DMINF)                                                 \
    static inline QX_ALWAYS QX_TARGET void QX(NAME##_rows)(                              \
        int64_t n, const void *wv, const void *const *av, int na, float *out)             \
    {                                                                                     \
        const WT *w = wv;                                                                 \
        const blk_q8_k *a[4] = {0};                                                       \
        __m256 acc[4];                                                                    \
        __m128 accm[4];                                                                   \
        float s0[4];                                                                      \
        QX_UNROLL for (int k = 0; k < na; k++) {                                                    \
            a[k] = av[k];                                                                 \
            acc[k] = _mm256_setzero_ps();                                                 \
            accm[k] = _mm_setzero_ps();                                                   \
            s0[k] = 0.0f;                                                                 \
        }                                                                                 \
        int64_t nb = n / QK_K;                                                            \
        for (int64_t i = 0; i < nb; i++) {                                                \
            __m256i lanes[4];                                                             \
            __m128i imin[4];                                                              \
            QX(KL)(w, a, i, na, lanes, imin);                                             \
            float dw = QX(h2f)(w[i].d), dmin = QX(h2f)(w[i].DMINF);                       \
            QX_UNROLL for (int k = 0; k < na; k++)                                        \
                QX(kl_float)(MODE, a[k][i].d, dw, dmin, lanes[k], imin[k], &acc[k],       \
                             &accm[k], &s0[k]);                                           \
        }                                                                                 \
        QX_UNROLL for (int k = 0; k < na; k++)                                            \
            out[k] = QX(kl_finish)(MODE, acc[k], accm[k], s0[k]);                         \
    }                                                                                     \
    QX_ROW_WRAPPERS(NAME)

/* The single-token form of NAME##_rows (one activation row, na = 1):
 * QX_KD_STREAMS weight rows far apart go through the block loop together,
 * each with exactly the operations of NAME##_rows, so their chains overlap
 * and memory sees as many streams; the next rows of every stream are
 * prefetched (QX_KD_PF rows ahead, inside the streams). Rows left over go
 * through NAME##_dot. */
#define QX_KD_STREAMS 4
#define QX_KD_PF 2
#define QX_KLDECODE(NAME, KL, WT, MODE, DMINF)                                            \
    static QX_TARGET void QX(NAME##_decode)(int64_t n, const void *wv, size_t wrb,        \
                                            int64_t r0, int64_t r1, const void *act,      \
                                            float *out)                                   \
    {                                                                                     \
        const uint8_t *wb = wv;                                                           \
        const blk_q8_k *a[1] = {act};                                                     \
        const int64_t nb = n / QK_K, q = (r1 - r0) / QX_KD_STREAMS;                       \
        for (int64_t r = r0; r < r0 + q; r++) {                                           \
            const WT *ws[QX_KD_STREAMS];                                                  \
            __m256 acc[QX_KD_STREAMS];                                                    \
            __m128 accm[QX_KD_STREAMS];                                                   \
            float s0[QX_KD_STREAMS];                                                      \
            const int64_t rp = r + QX_KD_PF < r0 + q ? r + QX_KD_PF : r0 + q - 1;         \
            QX_UNROLL for (int k = 0; k < QX_KD_STREAMS; k++) {                           \
                const uint8_t *pf = wb + (size_t)(rp + k * q) * wrb;                      \
                for (size_t b = 0; b < wrb; b += 64)                                      \
                    _mm_prefetch((const char *)(pf + b), _MM_HINT_T0);                    \
                ws[k] = (const WT *)(const void *)(wb + (size_t)(r + k * q) * wrb);       \
                acc[k] = _mm256_setzero_ps();                                             \
                accm[k] = _mm_setzero_ps();                                               \
                s0[k] = 0.0f;                                                             \
            }                                                                             \
            for (int64_t i = 0; i < nb; i++) {                                            \
                const float d8 = a[0][i].d;                                               \
                QX_UNROLL for (int k = 0; k < QX_KD_STREAMS; k++) {                       \
                    __m256i lanes[1];                                                     \
                    __m128i imin[1];                                                      \
                    QX(KL)(ws[k], a, i, 1, lanes, imin);                                  \
                    QX(kl_float)(MODE, d8, QX(h2f)(ws[k][i].d), QX(h2f)(ws[k][i].DMINF),  \
                                 lanes[0], imin[0], &acc[k], &accm[k], &s0[k]);           \
                }                                                                         \
            }                                                                             \
            QX_UNROLL for (int k = 0; k < QX_KD_STREAMS; k++)                             \
                out[r + k * q] = QX(kl_finish)(MODE, acc[k], accm[k], s0[k]);             \
        }                                                                                 \
        for (int64_t r = r0 + QX_KD_STREAMS * q; r < r1; r++)                             \
            out[r] = QX(NAME##_dot)(n, wb + (size_t)r * wrb, act);                        \
    }

/* DMINF: the dmin field (q6_k has none and passes d: MODE 6 never reads it) */
QX_KLDRIVER(q4_k, q4_k_kl, blk_q4_k, 4, dmin)
QX_KLDRIVER(q5_k, q5_k_kl, blk_q5_k, 5, dmin)
QX_KLDRIVER(q6_k, q6_k_kl, blk_q6_k, 6, d)
QX_KLDECODE(q4_k, q4_k_kl, blk_q4_k, 4, dmin)
QX_KLDECODE(q5_k, q5_k_kl, blk_q5_k, 5, dmin)
QX_KLDECODE(q6_k, q6_k_kl, blk_q6_k, 6, d)
QX_DRIVER(q8_k, blk_q8_k, blk_q8_k, QK_K)


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
    ks->dot_f32_wide = QX(dot_f32_wide);
    ks->dot[MOE_TYPE_F16] = QX(dotf_f16);
    ks->dot[MOE_TYPE_BF16] = QX(dotf_bf16);
    ks->dot4[MOE_TYPE_F32] = QX(dotf4_f32);
    ks->dot4[MOE_TYPE_F16] = QX(dotf4_f16);
    ks->dot4[MOE_TYPE_BF16] = QX(dotf4_bf16);
    ks->dot_expert[MOE_TYPE_F32] = QX(dote_f32);
    ks->dot_expert[MOE_TYPE_F16] = QX(dote_f16);
    ks->dot_expert[MOE_TYPE_BF16] = QX(dote_bf16);
#define QX_SET(T, NAME)                    \
    ks->dot[T] = QX(NAME##_dot);           \
    ks->dot4[T] = QX(NAME##_dot4);
    QX_SET(MOE_TYPE_Q8_0, q8_0)
#if QX_PASS == 2
    ks->gemm[MOE_TYPE_Q8_0] = QX(q8_0_gemm);
#endif
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
    ks->decode[MOE_TYPE_Q4_0] = QX(q4_0_decode);
    ks->dot4[MOE_TYPE_Q4_0] = QX(q4_0_dot4x);
    ks->decode[MOE_TYPE_Q4_K] = QX(q4_k_decode);
    ks->decode[MOE_TYPE_Q5_K] = QX(q5_k_decode);
    ks->decode[MOE_TYPE_Q6_K] = QX(q6_k_decode);
    ks->quantize[MOE_TYPE_Q8_0] = QX(quant_q8_0);
    ks->quantize[MOE_TYPE_Q8_1] = QX(quant_q8_1);
    ks->quantize[MOE_TYPE_Q8_K] = QX(quant_q8_k);
    ks->quantize[MOE_TYPE_F16] = QX(quant_f16);
    ks->quantize[MOE_TYPE_BF16] = QX(quant_bf16);
}

#undef DPBUSD
#undef DPWSSD
#undef QX_DRIVER
#undef QX_KLDRIVER
#undef QX_KLDECODE
#undef QX_SDRIVER
#undef QX_FLOAT_STEP
#undef QX_SIGNED_INT
#undef QX_UNSIGNED_INT

#endif /* QX_PASS */

#else /* not x86 */

bool quant_x86_fill(quant_kernels *ks, const char *want)
{
    (void)ks;
    (void)want;
    return false;
}

#endif
