/*
 * forward.c - the transformer forward pass over a batch of tokens: embedding,
 * RMSNorm, attention with RoPE and a KV cache (GQA), dense SwiGLU or routed
 * experts (through model_route), the LM head.
 *
 * All matrix work goes through mm_run(): a list of (weight rows x activation
 * rows) tasks split across the thread pool by cost, so one dispatch covers,
 * e.g., all selected experts of a layer. Activations are converted once per
 * weight type to what the dot kernels take (as the reference runtime does).
 * Nothing is allocated here: the context owns every buffer.
 */
#include "config.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "exit.h"
#include "model.h"
#include "router.h"
#include "trace.h"
#include "util.h"

/* ---- matrix tasks ------------------------------------------------------ */

typedef struct {
    moe_type type;
    int64_t n_in;          /* row length */
    const void *w;         /* first row */
    size_t w_row_bytes;
    int64_t n_rows;        /* output rows */
    const void *act;       /* n_act rows, converted to quant_vec_dot_type */
    size_t act_row_bytes;
    int64_t n_act;
    float *out;            /* out[j * out_stride + r] */
    int64_t out_stride;
    bool vec_order;        /* the reference's vector-dot order (quant_gemm_expert):
                            * a routed expert, or a weight its tile kernel declines */
} mm_task;

#define MM_MAX_TASKS 1024

typedef struct {
    const mm_task *tasks;
    int n_tasks;
    int64_t total_cost;
    int64_t n_chunks;
} mm_job;

static int64_t mm_row_bound(const mm_task *t, int64_t c0, int64_t b)
{
    int64_t r;
    if (b <= c0)
        return 0;
    r = (b - c0 + t->n_act - 1) / t->n_act;
    return r > t->n_rows ? t->n_rows : r;
}

/* Chunk `chunk` covers cost units [lo, hi) of the job; cost = rows x
 * activation rows, laid out task after task. */
static void mm_chunk(void *arg, int ith, int64_t chunk)
{
    const mm_job *job = arg;
    const int64_t lo = job->total_cost * chunk / job->n_chunks;
    const int64_t hi = job->total_cost * (chunk + 1) / job->n_chunks;
    int64_t c0 = 0;
    (void)ith;
    for (int i = 0; i < job->n_tasks; i++) {
        const mm_task *t = &job->tasks[i];
        int64_t cost = t->n_rows * t->n_act;
        if (c0 + cost > lo && c0 < hi) {
            int64_t r0 = mm_row_bound(t, c0, lo), r1 = mm_row_bound(t, c0, hi);
            if (r1 > r0)
                (t->vec_order ? quant_gemm_expert : quant_gemm)(t->type, t->n_in, t->w,
                                                             t->w_row_bytes, r0, r1, t->act,
                                                             t->act_row_bytes, t->n_act,
                                                             t->out, t->out_stride);
        }
        c0 += cost;
        if (c0 >= hi)
            break;
    }
}

/* Below this many multiply-adds a job runs on the calling thread: waking
 * workers costs more than it saves. */
#define MM_MIN_PARALLEL_MACS (1 << 16)
/* Chunks per thread: small enough that an unscheduled thread holds back
 * little, large enough that claiming one is cheap next to computing it. */
#define MM_CHUNKS_PER_THREAD 16
#define MM_MIN_CHUNK_COST 16

static void mm_run(moe_ctx *c, const mm_task *tasks, int n_tasks)
{
    mm_job job = {tasks, n_tasks, 0, 1};
    int64_t macs = 0, max_chunks;
    for (int i = 0; i < n_tasks; i++) {
        job.total_cost += tasks[i].n_rows * tasks[i].n_act;
        macs += tasks[i].n_rows * tasks[i].n_act * tasks[i].n_in;
    }
    if (job.total_cost == 0)
        return;
    if (macs < MM_MIN_PARALLEL_MACS || tp_n_threads(c->pool) == 1) {
        mm_chunk(&job, 0, 0);
        return;
    }
    max_chunks = (int64_t)tp_n_threads(c->pool) * MM_CHUNKS_PER_THREAD;
    job.n_chunks = job.total_cost / MM_MIN_CHUNK_COST;
    if (job.n_chunks > max_chunks)
        job.n_chunks = max_chunks;
    if (job.n_chunks < 1)
        job.n_chunks = 1;
    tp_run_chunks(c->pool, job.n_chunks, mm_chunk, &job);
}

/* ---- row-parallel helpers ---------------------------------------------- */

/* Split n rows into chunks of at least min_rows for the pool; fn gets the
 * chunk and computes rows [ch * per, ...) itself (rows_range). Small jobs
 * or one thread: a single chunk on the calling thread. row_work is a row's
 * cost in simple float operations (its element count for a copy or a
 * multiply-add over it). */
typedef struct {
    int64_t n;   /* rows */
    int64_t per; /* rows per chunk */
} rows_part;

#define ROWS_MIN_PARALLEL_WORK (1 << 15)

static void rows_run(moe_ctx *c, rows_part *part, int64_t n, int64_t row_work, int64_t min_rows,
                     tp_chunk_fn fn, void *arg)
{
    const int nt = tp_n_threads(c->pool);
    int64_t n_chunks = 1;
    part->n = n;
    part->per = n;
    if (n <= 0)
        return;
    if (nt > 1 && n * row_work >= ROWS_MIN_PARALLEL_WORK) {
        int64_t per = (n + (int64_t)nt * 4 - 1) / ((int64_t)nt * 4);
        if (per < min_rows)
            per = min_rows;
        part->per = per;
        n_chunks = (n + per - 1) / per;
    }
    if (n_chunks == 1)
        fn(arg, 0, 0);
    else
        tp_run_chunks(c->pool, n_chunks, fn, arg);
}

static void rows_range(const rows_part *part, int64_t ch, int64_t *r0, int64_t *r1)
{
    *r0 = ch * part->per;
    *r1 = *r0 + part->per < part->n ? *r0 + part->per : part->n;
}

typedef struct {
    rows_part part;
    moe_type vt;
    const float *x;
    int64_t n_in;
    char *buf;
    size_t row_bytes;
} conv_job;

static void conv_chunk(void *arg, int ith, int64_t ch)
{
    const conv_job *job = arg;
    int64_t r0, r1;
    (void)ith;
    rows_range(&job->part, ch, &r0, &r1);
    for (int64_t j = r0; j < r1; j++)
        quant_quantize_row(job->vt, job->x + j * job->n_in, job->buf + (size_t)j * job->row_bytes,
                           job->n_in);
}

/* Convert n rows of f32 activations (n_in each, stride n_in) for weights of
 * type t into buf. Returns the converted rows and their stride in bytes. */
static const void *act_convert(moe_ctx *c, moe_type t, const float *x, int64_t n, int64_t n_in,
                               void *buf, size_t *row_bytes)
{
    moe_type vt = quant_vec_dot_type(t);
    conv_job job;
    if (vt == MOE_TYPE_F32) {
        *row_bytes = (size_t)n_in * sizeof(float);
        return x;
    }
    *row_bytes = quant_row_bytes(vt, n_in);
    job.vt = vt;
    job.x = x;
    job.n_in = n_in;
    job.buf = buf;
    job.row_bytes = *row_bytes;
    rows_run(c, &job.part, n, n_in, 4, conv_chunk, &job);
    return buf;
}

static mm_task mm_make(const moe_ctx *c, const mtensor *w, int64_t expert, const void *act,
                       size_t act_row_bytes, int64_t n_act, float *out, int64_t out_stride)
{
    mm_task t;
    t.type = w->type;
    t.n_in = w->ne[0];
    t.w_row_bytes = w->row_bytes;
    t.n_rows = w->ne[1];
    t.w = (const char *)w->data + (size_t)expert * (size_t)w->ne[1] * w->row_bytes;
    t.act = act;
    t.act_row_bytes = act_row_bytes;
    t.n_act = n_act;
    t.out = out;
    t.out_stride = out_stride;
    /* the reference's tile kernel takes float weights only in whole groups
     * of 4 rows and of 2 or more tokens; others (an output head of 509 rows,
     * a generated token) go through its vector dot, whose order
     * quant_gemm_expert follows */
    t.vec_order = w->ne[1] % 4 != 0 || c->token_order;
    return t;
}

/* mm_make for one routed expert's matrix (the reference runs these through
 * its per-expert path, whose f32/f16/bf16 summation order differs) */
static mm_task mm_make_expert(const moe_ctx *c, const mtensor *w, int64_t expert,
                              const void *act, size_t act_row_bytes, int64_t n_act, float *out,
                              int64_t out_stride)
{
    mm_task t = mm_make(c, w, expert, act, act_row_bytes, n_act, out, out_stride);
    t.vec_order = true;
    return t;
}

/* y[n][rows] = W x[n][n_in] for one weight. */
static void matmul(moe_ctx *c, const mtensor *w, const float *x, int64_t n, float *y)
{
    size_t rb;
    const void *act = act_convert(c, w->type, x, n, w->ne[0], c->act_q, &rb);
    mm_task t = mm_make(c, w, 0, act, rb, n, y, w->ne[1]);
    mm_run(c, &t, 1);
}

/* ---- elementwise pieces ------------------------------------------------ */

/* Rounding follows the reference runtime step by step (float squares summed
 * in double, float mean, float reciprocal square root, scale then weight):
 * quantized activations downstream turn 1-ulp differences into flipped
 * roundings, so matching the reference closely needs the same arithmetic. */
static void rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    float mean, scale;
    for (int64_t i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    mean = (float)(ss / (double)n);
    scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

static void add_bias(float *y, const mtensor *b, int64_t n, int64_t rows)
{
    const float *bv = b->data;
    if (!bv)
        return;
    for (int64_t j = 0; j < n; j++)
        for (int64_t i = 0; i < rows; i++)
            y[j * rows + i] += bv[i];
}

void forward_rope_angles(int32_t pos, int32_t n_rot, float base, float *cs, float *sn)
{
    const float theta_scale = powf(base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int32_t i = 0; i < n_rot / 2; i++) {
        cs[i] = cosf(theta);
        sn[i] = sinf(theta);
        theta *= theta_scale;
    }
}

/* The RoPE angles of positions p0 .. p0+n-1 into c->rope_cs (n <= n_batch;
 * per position n_rot / 2 cosines, then as many sines), unless it holds them
 * already: they depend on the position only, so one table serves every
 * head of every layer. */
static void rope_table(moe_ctx *c, int32_t p0, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    if (c->rope_p0 == p0 && c->rope_n >= n)
        return;
    if (n > c->n_batch) /* callers pass at most a batch */
        n = c->n_batch;
    for (int32_t t = 0; t < n; t++) {
        float *cs = c->rope_cs + (size_t)t * (size_t)hp->n_rot;
        forward_rope_angles(p0 + t, hp->n_rot, hp->rope_freq_base, cs, cs + hp->n_rot / 2);
    }
    c->rope_p0 = p0;
    c->rope_n = n;
}

/* Rotate the first n_rot dims of each of n_heads heads of one token by the
 * angles cs (cosines), sn (sines) of rope_table. The reference's compiler
 * fuses each pair's first product into the subtraction or addition
 * (x0 c - x1 s and x0 s + x1 c as fma(x0, c, -(x1 s)) and fma(x0, s,
 * x1 c)); tiny-dense-llama's logits are bit-identical to its only so. The
 * FMA clone has the instruction; the default one calls the C library. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
__attribute__((target_clones("fma", "default")))
#endif
#endif
static void rope(float *x, int32_t n_heads, int32_t hd, int32_t n_rot, rope_kind kind,
                 const float *cs, const float *sn)
{
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * (size_t)hd;
        for (int32_t i = 0; i < n_rot / 2; i++) {
            int32_t a = kind == ROPE_NEOX ? i : 2 * i;
            int32_t b = kind == ROPE_NEOX ? i + n_rot / 2 : 2 * i + 1;
            float x0 = v[a], x1 = v[b];
            v[a] = fmaf(x0, cs[i], -(x1 * sn[i]));
            v[b] = fmaf(x0, sn[i], x1 * cs[i]);
        }
    }
}

/* ---- attention --------------------------------------------------------- */

/* Attention of query rows, in the reference runtime's order (its
 * non-fused path: a score matrix, a softmax, a weighted sum of values).
 * Matching it bit for bit matters for 8- and 16-bit activations: the
 * attention output is re-rounded before the output projection, so 1-ulp
 * differences flip roundings downstream. Per query row (a token and a
 * head):
 *   scores  s_p = (k_p . q summed in order, multiplies and adds unfused)
 *           * scale, for every position p the row sees;
 *   softmax m = max s_p; e_p = att_vexp(s_p - m) in blocks of 16
 *           positions (the last block padded with zeros); sum = the
 *           blocks' hsum16 added in double; w_p = e_p * (float)(1 / sum);
 *   values  o[d] = 16 chains of fma(w_p, v_p[d], .) in position order,
 *           position p in chain p % 16; then hsum16 of the chains.
 *           A generated token's weighted sum (a batch summed in the
 *           single-token order, moe_order) is instead the reference's
 *           vector dot over its positions padded to a multiple of 32 (the
 *           padding weighs 0): below np = pad32(n) & ~63, 64 chains,
 *           position p in chain p % 64, reduced to 16 lanes as
 *           (c_l + c_l+32) + (c_l+16 + c_l+48), then hsum16; positions np..n-1
 *           then added one unfused product at a time (att_wsum_vec_ref).
 * hsum16 is quant_hsum16 (quant.h).
 *
 * The scores come first, for ATT_TB query rows x ATT_PB positions at a
 * time: one vector lane per query row (a token and a head of one kv
 * group; see attn_chunk), ATT_PU positions in flight, so the in-order
 * sum of every (row, position) pair is its own lane of its own
 * accumulator and stays exactly the scalar chain above (FP contraction is
 * off for that kernel). Each row's scores then go to its own scratch row
 * for the softmax and the weighted sum. */

#define ATT_TB MOE_ATT_LANES /* query rows per chunk = vector lanes */
#define ATT_PB 128 /* positions per score block */
#define ATT_PU 8   /* positions per step of the score kernel */
#define ATT_PF 32  /* positions the score kernel prefetches ahead (rows
                      * contiguous in the cache, past what the hardware
                      * prefetcher runs ahead by itself) */
#define ATT_MAX_HD 256 /* wider heads take attn_chunk_row */
#define ATT_MIN_PARALLEL_WORK (1 << 12) /* see attention() */

typedef float att_vec __attribute__((vector_size(ATT_TB * sizeof(float))));

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
/* sc[j][i] = (sum over d in order of k_j[d] * q_i[d]) * scale, for np
 * positions j and ATT_TB rows i (qt[d][i]); the keys kb start at a block
 * of 8 positions (key d of position j at kb[KV_K(j, d, hd)]), so
 * ATT_PU = 8 positions are one block. */
_Static_assert(ATT_PU == 8, "the score kernel takes one key block per step");
#if defined(__x86_64__) && defined(__GNUC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
__attribute__((target_clones("avx2", "default")))
#endif
#endif
static void attn_scores(float *sc, const float *qt, const float *kb, int32_t np, int32_t hd,
                        float scale)
{
    att_vec *out = (att_vec *)sc;
    const att_vec *q = (const att_vec *)qt;
    int32_t j = 0;
    for (; j + ATT_PU <= np; j += ATT_PU) {
        const float *kj = kb + (size_t)j * (size_t)hd;
        att_vec a[ATT_PU]; /* in registers: the u loops are unrolled */
        for (int32_t o = 0; o < 8 * hd; o += 16)
            __builtin_prefetch(kj + (size_t)ATT_PF * (size_t)hd + (size_t)o);
#pragma GCC unroll 8
        for (int u = 0; u < ATT_PU; u++)
            a[u] = (att_vec){0};
        for (int32_t d = 0; d < hd; d++) {
            const att_vec qd = q[d];
#pragma GCC unroll 8
            for (int u = 0; u < ATT_PU; u++) {
                att_vec prod = qd * kj[(size_t)d * 8 + (size_t)u];
                a[u] = a[u] + prod;
            }
        }
#pragma GCC unroll 8
        for (int u = 0; u < ATT_PU; u++)
            out[j + u] = a[u] * scale;
    }
    for (; j < np; j++) {
        att_vec a = {0};
        for (int32_t d = 0; d < hd; d++) {
            att_vec prod = q[d] * kb[KV_K(j, d, hd)];
            a = a + prod;
        }
        out[j] = a * scale;
    }
}

/* one row's score against np positions, the scalar form of attn_scores
 * (kb as there) */
static void attn_scores_row(float *sc, const float *q, const float *kb, int32_t np, int32_t hd,
                            float scale)
{
    for (int32_t j = 0; j < np; j++) {
        float s = 0.0f;
        for (int32_t d = 0; d < hd; d++) {
            float prod = kb[KV_K(j, d, hd)] * q[d];
            s = s + prod;
        }
        sc[j] = s * scale;
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* the scores of rows q0 and, when two, q1 (see attn_scores_tok) */
static inline __attribute__((always_inline, target("avx2"))) void
scores_tok_rows(float *o0, float *o1, const float *q0, const float *q1, const bool two,
                const float *kb, int32_t np, int32_t hd, float scale)
{
    const __m256 vs = _mm256_set1_ps(scale);
    const int32_t nb = np / 8;
    const size_t blk = 8 * (size_t)hd; /* floats per key block */
    int32_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        const float *k0 = kb + (size_t)b * blk;
        __m256 a0[4], a1[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++)
            a0[u] = a1[u] = _mm256_setzero_ps();
        for (int32_t d = 0; d < hd; d++) {
            const __m256 qa = _mm256_set1_ps(q0[d]), qb = _mm256_set1_ps(two ? q1[d] : 0.0f);
            __builtin_prefetch(k0 + (size_t)ATT_PF * (size_t)hd + (size_t)d * 32);
            __builtin_prefetch(k0 + (size_t)ATT_PF * (size_t)hd + (size_t)d * 32 + 16);
#pragma GCC unroll 4
            for (int u = 0; u < 4; u++) {
                const __m256 kv = _mm256_loadu_ps(k0 + (size_t)u * blk + (size_t)d * 8);
                a0[u] = _mm256_add_ps(a0[u], _mm256_mul_ps(kv, qa));
                if (two)
                    a1[u] = _mm256_add_ps(a1[u], _mm256_mul_ps(kv, qb));
            }
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; u++) {
            _mm256_storeu_ps(o0 + (size_t)(b + u) * 8, _mm256_mul_ps(a0[u], vs));
            if (two)
                _mm256_storeu_ps(o1 + (size_t)(b + u) * 8, _mm256_mul_ps(a1[u], vs));
        }
    }
    for (; b < nb; b++) {
        const float *k0 = kb + (size_t)b * blk;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int32_t d = 0; d < hd; d++) {
            const __m256 kv = _mm256_loadu_ps(k0 + (size_t)d * 8);
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(kv, _mm256_set1_ps(q0[d])));
            if (two)
                a1 = _mm256_add_ps(a1, _mm256_mul_ps(kv, _mm256_set1_ps(q1[d])));
        }
        _mm256_storeu_ps(o0 + (size_t)b * 8, _mm256_mul_ps(a0, vs));
        if (two)
            _mm256_storeu_ps(o1 + (size_t)b * 8, _mm256_mul_ps(a1, vs));
    }
    if (nb * 8 < np) {
        attn_scores_row(o0 + nb * 8, q0, kb + (size_t)nb * blk, np - nb * 8, hd, scale);
        if (two)
            attn_scores_row(o1 + nb * 8, q1, kb + (size_t)nb * blk, np - nb * 8, hd, scale);
    }
}

/* The scores of one token's nh rows (q[i], hd floats each) against np
 * positions, into out[i][0..np): the same in-order chains as
 * attn_scores_row, but a vector lane per position: a key block gives one
 * dim of 8 positions per load, and 4 blocks x 2 rows of chains run at a
 * time (1 row for the last of an odd count). For generation, where
 * attn_scores would fill only the lanes of the kv group's heads. (No FMA
 * in this target: the products and sums stay unfused.) */
__attribute__((target("avx2"))) static void attn_scores_tok(float *const *out,
                                                            const float *const *q, int nh,
                                                            const float *kb, int32_t np,
                                                            int32_t hd, float scale)
{
    int h = 0;
    for (; h + 2 <= nh; h += 2)
        scores_tok_rows(out[h], out[h + 1], q[h], q[h + 1], true, kb, np, hd, scale);
    if (h < nh)
        scores_tok_rows(out[h], NULL, q[h], NULL, false, kb, np, hd, scale);
}
#define ATT_SCORES_TOK 1
#endif
#pragma GCC pop_options

/* 2^e as a float, for -126 <= e <= 127 */
static inline float att_pow2(int e)
{
    uint32_t b = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* x * 2^e rounded once (as ldexpf), for |e| <= 192 and x near 1 */
static inline float att_scale2(float x, int e)
{
    if (e < -126)
        return (x * att_pow2(e + 100)) * att_pow2(-100);
    if (e > 127)
        return (x * att_pow2(e - 100)) * att_pow2(100);
    return x * att_pow2(e);
}

/* e^x as the reference's 16-wide vector exponential computes it, step by
 * step (so the weights carry its roundings): n = round(x / ln2) by the
 * 1.5 * 2^23 shift; b = x - n ln2 with ln2 in a high and a low part;
 * j = 1 + b + ... as a degree-5 polynomial with Horner pairs in b and b^2;
 * the result j * 2^n; for |n| > 192, 0 (x < 0) or infinity. The
 * coefficients are the published minimax ones for this scheme (about 1.5
 * ulp). */
static inline float att_vexp(float x)
{
    const float shift = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, shift);
    const float n = z - shift;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u,
                              fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)),
                         u, fmaf(0x1.ffffecp-1f, b, 1.0f));
    if (fabsf(n) > 192.0f)
        return n <= 0.0f ? 0.0f : INFINITY;
    return att_scale2(j, (int)n);
}

/* Scores in w[0..n) to softmax weights, as described above. n > 0. The
 * plain form; att_softmax_fma gives the same bits. */
static void att_softmax_ref(float *w, int32_t n)
{
    float mx = -INFINITY;
    double sum = 0.0;
    for (int32_t p = 0; p < n; p++)
        mx = w[p] > mx ? w[p] : mx;
    for (int32_t p = 0; p < n; p += 16) {
        float e[16];
        for (int l = 0; l < 16; l++)
            e[l] = p + l < n ? att_vexp(w[p + l] - mx) : 0.0f;
        for (int l = 0; l < 16 && p + l < n; l++)
            w[p + l] = e[l];
        sum += (double)quant_hsum16(e);
    }
    {
        const float inv = (float)(1.0 / sum);
        for (int32_t p = 0; p < n; p++)
            w[p] *= inv;
    }
}

/* o[d] = sum over p < n of w[p] * v_p[d] (v_p at v + p * v_stride), in
 * 16 chains as described above: chain l takes the positions p = l, l + 16,
 * ... in order; o[d] = hsum16 of the chains. */
static void att_wsum_ref(float *o, const float *w, const float *v, size_t v_stride, int32_t n,
                         int32_t hd)
{
    for (int32_t d = 0; d < hd; d++) {
        float ch[16];
        for (int l = 0; l < 16; l++) {
            float a = 0.0f;
            for (int32_t p = l; p < n; p += 16)
                a = fmaf(w[p], v[(size_t)p * v_stride + (size_t)d], a);
            ch[l] = a;
        }
        o[d] = quant_hsum16(ch);
    }
}

/* the single-token weighted sum adds its last positions unfused, as the
 * reference's vector dot does (here and in att_wsum_vec_fma) */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
/* positions of n that the single-token weighted sum takes in its 64 chains
 * (the rest are added one at a time): those below pad32(n) & ~63, which
 * may end inside the last 64-position block */
static int32_t att_vec_np(int32_t n)
{
    const int32_t np = ((n + 31) & ~31) & ~63;
    return np < n ? np : n;
}

/* the 64 chains' sums to o: ch[c] of chain c (ch_stride floats apart) */
static float att_vec_reduce(const float *ch, size_t ch_stride)
{
    float r[16];
    for (int l = 0; l < 16; l++)
        r[l] = (ch[(size_t)l * ch_stride] + ch[(size_t)(l + 32) * ch_stride]) +
               (ch[(size_t)(l + 16) * ch_stride] + ch[(size_t)(l + 48) * ch_stride]);
    return quant_hsum16(r);
}

/* o[d] = sum over p < n of w[p] * v_p[d] in the single-token order (see
 * the top of this section) */
static void att_wsum_vec_ref(float *o, const float *w, const float *v, size_t v_stride,
                             int32_t n, int32_t hd)
{
    const int32_t np = att_vec_np(n);
    for (int32_t d = 0; d < hd; d++) {
        float ch[64], s;
        for (int c = 0; c < 64; c++) {
            float a = 0.0f;
            for (int32_t p = c; p < np; p += 64)
                a = fmaf(w[p], v[(size_t)p * v_stride + (size_t)d], a);
            ch[c] = a;
        }
        s = att_vec_reduce(ch, 1);
        for (int32_t p = np; p < n; p++)
            s += w[p] * v[(size_t)p * v_stride + (size_t)d];
        o[d] = s;
    }
}

#pragma GCC pop_options

#if defined(__x86_64__) && defined(__GNUC__)
#define ATT_WSUM_X86 1
/* The same for the rows of a chunk (lanes, at most ATT_TB), which share
 * their values: lane i has o[i] (NULL = unused), weights w[i] over its
 * first lim[i] positions. 8 dims at a time. Positions go in tiles of
 * att_wt() (whole 16-position blocks) that stay in L1 while every lane and
 * every 8-dim slice of them is summed, the next tile being prefetched
 * meanwhile (the cache keeps a head's value rows contiguous, kv_at, so a
 * tile is one run of memory). A slice's 16 chains go through registers 8
 * at a time, kept between tiles in acc[lane][chain][dim]. Each chain still
 * takes its positions in order, and the chains are summed in hsum16's
 * order, lane-wise. */
#define ATT_VT_FLOATS 4096 /* a tile of values: 16 KB at v_stride = hd */
#define ATT_WT_MAX 64      /* positions per tile, at most */
static int32_t att_wt(int32_t hd)
{
    int32_t wt = ATT_VT_FLOATS / hd / 16 * 16;
    return wt < 16 ? 16 : wt > ATT_WT_MAX ? ATT_WT_MAX : wt;
}

__attribute__((target("avx2,fma"))) static void att_wsum_fma(float *const *o,
                                                             const float *const *w,
                                                             const int32_t *lim, int n_lanes,
                                                             const float *v, size_t v_stride,
                                                             int32_t hd)
{
    const int32_t hd8 = hd & ~7, wt = att_wt(hd);
    float acc[ATT_TB * 16 * ATT_MAX_HD] __attribute__((aligned(32)));
    int32_t n = 0;
    for (int i = 0; i < n_lanes; i++) {
        if (!o[i])
            continue;
        if (lim[i] > n)
            n = lim[i];
        memset(acc + (size_t)i * 16 * (size_t)hd8, 0, 16 * (size_t)hd8 * sizeof(float));
    }
    for (int32_t t0 = 0; t0 < n; t0 += wt) {
        const int32_t t1 = n - t0 < wt ? n : t0 + wt;
        const float *vt = v + (size_t)t0 * v_stride;
        /* the next tile is fetched while this one is summed: a slice's
         * share of it per slice of the first lane */
        const char *pf = (const char *)(v + (size_t)t1 * v_stride);
        size_t pf_step = t1 < n && hd8 > 0 ? (size_t)(n - t1 < wt ? n - t1 : wt) * v_stride *
                                                 sizeof(float) / (size_t)(hd8 / 8)
                                           : 0;
        for (int i = 0; i < n_lanes; i++) {
            const int32_t e = lim[i] < t1 ? lim[i] : t1;
            const float *wi = w[i];
            float *ai = acc + (size_t)i * 16 * (size_t)hd8;
            if (!o[i] || e <= t0)
                continue;
            /* chains h .. h + 7 of slice d, in registers (the l loops
             * are unrolled) */
            for (int32_t d = 0; d < hd8; d += 8) {
                for (size_t b = 0; b < pf_step; b += 64)
                    __builtin_prefetch(pf + b);
                pf += pf_step;
                for (int h = 0; h < 16; h += 8) {
                    __m256 ch[8];
                    int32_t p0 = t0;
#pragma GCC unroll 8
                    for (int l = 0; l < 8; l++)
                        ch[l] = _mm256_load_ps(ai + (size_t)(h + l) * (size_t)hd8 + (size_t)d);
                    for (; p0 + 16 <= e; p0 += 16) {
                        const float *vp = vt + (size_t)(p0 + h - t0) * v_stride + (size_t)d;
#pragma GCC unroll 8
                        for (int l = 0; l < 8; l++)
                            ch[l] = _mm256_fmadd_ps(_mm256_set1_ps(wi[p0 + h + l]),
                                                    _mm256_loadu_ps(vp + (size_t)l * v_stride),
                                                    ch[l]);
                    }
#pragma GCC unroll 8
                    for (int l = 0; l < 8; l++)
                        if (p0 + h + l < e)
                            ch[l] = _mm256_fmadd_ps(
                                _mm256_set1_ps(wi[p0 + h + l]),
                                _mm256_loadu_ps(vt + (size_t)(p0 + h + l - t0) * v_stride +
                                                (size_t)d),
                                ch[l]);
#pragma GCC unroll 8
                    for (int l = 0; l < 8; l++)
                        _mm256_store_ps(ai + (size_t)(h + l) * (size_t)hd8 + (size_t)d, ch[l]);
                }
            }
            pf_step = 0; /* the first lane fetched it all */
        }
    }
    for (int i = 0; i < n_lanes; i++) {
        const float *ai = acc + (size_t)i * 16 * (size_t)hd8;
        if (!o[i])
            continue;
        for (int32_t d = 0; d < hd8; d += 8) {
            __m256 h[8];
            for (int l = 0; l < 8; l++)
                h[l] = _mm256_add_ps(_mm256_load_ps(ai + (size_t)l * (size_t)hd8 + (size_t)d),
                                     _mm256_load_ps(ai + (size_t)(l + 8) * (size_t)hd8 +
                                                    (size_t)d));
            _mm256_storeu_ps(o[i] + d,
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(h[0], h[4]),
                                                         _mm256_add_ps(h[2], h[6])),
                                           _mm256_add_ps(_mm256_add_ps(h[1], h[5]),
                                                         _mm256_add_ps(h[3], h[7]))));
        }
        if (hd8 < hd)
            att_wsum_ref(o[i] + hd8, w[i], v + hd8, v_stride, lim[i], hd - hd8);
    }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
/* att_wsum_vec_ref for the used lanes of a chunk (o[i] NULL = unused),
 * which share their values, 8 dims at a time. Positions go in spans of
 * ATT_VSPAN (whole 64-position blocks); within a span, each 8-dim slice
 * takes each lane's 64 chains 8 at a time into registers (from
 * acc[lane][chain][dim], the thread's att_wsum_scratch, kept between
 * spans; the first span starts the chains at 0) and adds the span's blocks,
 * so a chain gets ATT_VSPAN / 64 products per load and store, and the
 * lanes read the same values one after the other, from L1. */
#define ATT_VSPAN 256
__attribute__((target("avx2,fma"))) static void
att_wsum_vec_fma(float *const *o, const float *const *w, const int32_t *lim, int n_lanes,
                 const float *v, size_t v_stride, int32_t hd, float *acc)
{
    const int32_t hd8 = hd & ~7;
    int32_t np[ATT_TB], np_max = 0;
    int lane[ATT_TB], nl = 0;
    for (int i = 0; i < n_lanes; i++)
        if (o[i]) {
            lane[nl++] = i;
            np[i] = att_vec_np(lim[i]);
            np_max = np[i] > np_max ? np[i] : np_max;
        }
    if (nl == 0)
        return;
    for (int32_t s0 = 0; s0 < np_max; s0 += ATT_VSPAN) {
        const int32_t s1 = np_max - s0 < ATT_VSPAN ? np_max : s0 + ATT_VSPAN;
        /* the next span is fetched while this one is summed, a share of
         * it per (slice, chain group) step */
        const char *pf = (const char *)(v + (size_t)s1 * v_stride);
        const int32_t n_next = np_max - s1 < ATT_VSPAN ? np_max - s1 : ATT_VSPAN;
        const size_t pf_step = n_next > 0 && hd8 > 0
                                   ? ((size_t)n_next * v_stride * sizeof(float) /
                                          ((size_t)hd8 / 8 * 8) + 63) & ~(size_t)63
                                   : 0;
        for (int32_t d = 0; d < hd8; d += 8)
            for (int h = 0; h < 64; h += 8, pf += pf_step) {
                for (size_t b = 0; b < pf_step; b += 64)
                    __builtin_prefetch(pf + b);
                for (int k = 0; k < nl; k++) {
                    const int i = lane[k];
                    const int32_t e = np[i] < s1 ? np[i] : s1;
                    const float *wi = w[i];
                    float *ak = acc + (size_t)k * 64 * (size_t)hd8;
                    __m256 ch[8];
                    int32_t p0 = s0;
                    if (e <= s0)
                        continue;
#pragma GCC unroll 8
                    for (int l = 0; l < 8; l++)
                        ch[l] = s0 == 0 ? _mm256_setzero_ps()
                                        : _mm256_load_ps(ak + (size_t)(h + l) * (size_t)hd8 +
                                                         (size_t)d);
                    for (; p0 + 64 <= e; p0 += 64) {
                        const float *vp = v + (size_t)(p0 + h) * v_stride + (size_t)d;
#pragma GCC unroll 8
                        for (int l = 0; l < 8; l++)
                            ch[l] = _mm256_fmadd_ps(_mm256_set1_ps(wi[p0 + h + l]),
                                                    _mm256_loadu_ps(vp + (size_t)l * v_stride),
                                                    ch[l]);
                    }
                    /* the last block when the chains end inside it */
                    for (int l = 0; l < 8 && p0 + h + l < e; l++)
                        ch[l] = _mm256_fmadd_ps(
                            _mm256_set1_ps(wi[p0 + h + l]),
                            _mm256_loadu_ps(v + (size_t)(p0 + h + l) * v_stride + (size_t)d),
                            ch[l]);
#pragma GCC unroll 8
                    for (int l = 0; l < 8; l++)
                        _mm256_store_ps(ak + (size_t)(h + l) * (size_t)hd8 + (size_t)d, ch[l]);
                }
            }
    }
    for (int k = 0; k < nl; k++) {
        const int i = lane[k];
        const float *ak = acc + (size_t)k * 64 * (size_t)hd8;
        for (int32_t d = 0; d < hd8; d += 8) {
            __m256 r[16], t[8], sum = _mm256_setzero_ps();
            for (int l = 0; l < 16 && np[i] > 0; l++)
                r[l] = _mm256_add_ps(
                    _mm256_add_ps(_mm256_load_ps(ak + (size_t)l * (size_t)hd8 + (size_t)d),
                                  _mm256_load_ps(ak + (size_t)(l + 32) * (size_t)hd8 + (size_t)d)),
                    _mm256_add_ps(_mm256_load_ps(ak + (size_t)(l + 16) * (size_t)hd8 + (size_t)d),
                                  _mm256_load_ps(ak + (size_t)(l + 48) * (size_t)hd8 + (size_t)d)));
            /* quant_hsum16 lane-wise: hsum8 of r[l] + r[l + 8] */
            for (int l = 0; l < 8 && np[i] > 0; l++)
                t[l] = _mm256_add_ps(r[l], r[l + 8]);
            if (np[i] > 0) /* acc holds this lane's chains only when it has some */
                sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(t[0], t[4]), _mm256_add_ps(t[2], t[6])),
                                _mm256_add_ps(_mm256_add_ps(t[1], t[5]), _mm256_add_ps(t[3], t[7])));
            /* the positions past the chains, one unfused product at a
             * time per dim: the 8 dims' sums side by side, lane-wise the
             * same operations as the scalar loop */
            for (int32_t p = np[i]; p < lim[i]; p++)
                sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_set1_ps(w[i][p]),
                                                       _mm256_loadu_ps(v + (size_t)p * v_stride +
                                                                       (size_t)d)));
            _mm256_storeu_ps(o[i] + d, sum);
        }
        if (hd8 < hd)
            att_wsum_vec_ref(o[i] + hd8, w[i], v + hd8, v_stride, lim[i], hd - hd8);
    }
}
#pragma GCC pop_options

/* att_vexp on 8 lanes: the same operations, the branches as blends */
__attribute__((target("avx2,fma"))) static inline __m256 att_vexp8(__m256 x)
{
    const __m256 shift = _mm256_set1_ps(0x1.8p23f), zero = _mm256_setzero_ps();
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 neg = _mm256_xor_ps(n, _mm256_set1_ps(-0.0f));
    const __m256 b = _mm256_fmadd_ps(neg, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                     _mm256_fmadd_ps(neg, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b,
                                        _mm256_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b,
                                        _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.ffffecp-1f), b, _mm256_set1_ps(1.0f)));
    /* att_scale2(j, n): 2^e from its exponent bits, in two steps of 2^100
     * below -126 and above 127 */
    const __m256i e = _mm256_cvttps_epi32(n);
    const __m256i e127 = _mm256_add_epi32(e, _mm256_set1_epi32(127));
    const __m256 p_mid = _mm256_castsi256_ps(_mm256_slli_epi32(e127, 23));
    const __m256 p_lo = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(e127, _mm256_set1_epi32(100)), 23));
    const __m256 p_hi = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_sub_epi32(e127, _mm256_set1_epi32(100)), 23));
    const __m256 lo = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(-126), e));
    const __m256 hi = _mm256_castsi256_ps(_mm256_cmpgt_epi32(e, _mm256_set1_epi32(127)));
    __m256 r = _mm256_mul_ps(j, p_mid);
    r = _mm256_blendv_ps(r, _mm256_mul_ps(_mm256_mul_ps(j, p_lo), _mm256_set1_ps(0x1p-100f)), lo);
    r = _mm256_blendv_ps(r, _mm256_mul_ps(_mm256_mul_ps(j, p_hi), _mm256_set1_ps(0x1p100f)), hi);
    /* |n| > 192: 0 for n <= 0, else infinity */
    const __m256 far = _mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), n),
                                     _mm256_set1_ps(192.0f), _CMP_GT_OQ);
    const __m256 sat = _mm256_blendv_ps(_mm256_set1_ps(INFINITY), zero,
                                        _mm256_cmp_ps(n, zero, _CMP_LE_OQ));
    return _mm256_blendv_ps(r, sat, far);
}

/* att_softmax_ref, 8 lanes at a time: the maximum per lane and then over
 * the lanes (any order gives the same weights: only a zero's sign could
 * differ, and it cannot change w - max's exponential), att_vexp8 on
 * 16-position blocks (the last padded with zeros), each block's hsum16 in
 * vector form, the sum in double, the scaling. */
__attribute__((target("avx2,fma"))) static void att_softmax_fma(float *w, int32_t n)
{
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    float m[8], mx = -INFINITY;
    double sum = 0.0;
    int32_t p = 0;
    for (; p + 8 <= n; p += 8)
        m8 = _mm256_max_ps(_mm256_loadu_ps(w + p), m8);
    _mm256_storeu_ps(m, m8);
    for (int l = 0; l < 8; l++)
        mx = m[l] > mx ? m[l] : mx;
    for (; p < n; p++)
        mx = w[p] > mx ? w[p] : mx;
    const __m256 vmx = _mm256_set1_ps(mx);
    for (p = 0; p < n; p += 16) {
        float x[16] __attribute__((aligned(32)));
        const int32_t k = n - p < 16 ? n - p : 16;
        __m256 e0, e1, h;
        __m128 s;
        if (k == 16) {
            e0 = att_vexp8(_mm256_sub_ps(_mm256_loadu_ps(w + p), vmx));
            e1 = att_vexp8(_mm256_sub_ps(_mm256_loadu_ps(w + p + 8), vmx));
            _mm256_storeu_ps(w + p, e0);
            _mm256_storeu_ps(w + p + 8, e1);
        } else {
            for (int l = 0; l < 16; l++)
                x[l] = l < k ? w[p + l] - mx : 0.0f;
            e0 = att_vexp8(_mm256_load_ps(x));
            e1 = att_vexp8(_mm256_load_ps(x + 8));
            _mm256_store_ps(x, e0);
            _mm256_store_ps(x + 8, e1);
            for (int l = 0; l < 16; l++)
                x[l] = l < k ? x[l] : 0.0f;
            memcpy(w + p, x, (size_t)k * sizeof(float));
            e0 = _mm256_load_ps(x);
            e1 = _mm256_load_ps(x + 8);
        }
        h = _mm256_add_ps(e0, e1);
        s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sum += (double)_mm_cvtss_f32(s);
    }
    {
        const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
        for (p = 0; p + 8 <= n; p += 8)
            _mm256_storeu_ps(w + p, _mm256_mul_ps(_mm256_loadu_ps(w + p), inv));
        for (; p < n; p++)
            w[p] *= _mm256_cvtss_f32(inv);
    }
}
#endif

/* The FMA forms of the softmax and the weighted sum, or the plain ones
 * when the CPU lacks FMA or the scalar kernels are forced (quant.h); the
 * two give the same bits (check_model compares whole forward passes). */
static bool att_fast(void)
{
#ifdef ATT_WSUM_X86
    return quant_fast_kernels() && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

static void att_softmax(float *w, int32_t n, bool fast)
{
#ifdef ATT_WSUM_X86
    if (fast) {
        att_softmax_fma(w, n);
        return;
    }
#endif
    (void)fast;
    att_softmax_ref(w, n);
}

void forward_att_softmax(float *w, int32_t n, bool fast)
{
    att_softmax(w, n, fast && att_fast());
}

/* SwiGLU of one row, g[i] = silu(g[i]) * u[i] for i < n, as the reference
 * computes it: blocks of 16 with its vector exponential (att_vexp), silu =
 * x / (1 + e^(0 - x)); the n % 16 tail with the C library's expf. With
 * all_vec the tail too takes the vector form: EMoE experts, whose rows are
 * pieces of a dense row most of which took that form (see
 * down_exact_chunk). */
static void swiglu_row_ref(float *g, const float *u, int64_t n, bool all_vec)
{
    const int64_t nv = all_vec ? n : n - n % 16;
    int64_t i = 0;
    for (; i < nv; i++)
        g[i] = g[i] / (1.0f + att_vexp(0.0f - g[i])) * u[i];
    for (; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

#ifdef ATT_WSUM_X86
__attribute__((target("avx2,fma"))) static void swiglu_row_fma(float *g, const float *u,
                                                               int64_t n, bool all_vec)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    const int64_t nv = n - n % 16;
    int64_t i = 0;
    for (; i < nv; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = att_vexp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)),
                                              _mm256_loadu_ps(u + i)));
    }
    swiglu_row_ref(g + i, u + i, n - i, all_vec); /* the tail: fewer than 16 */
}
#endif

/* swiglu_row_* over n rows of n_ff */
static void swiglu_rows(float *g, const float *u, int64_t n, int64_t n_ff, bool fast,
                        bool all_vec)
{
    for (int64_t r = 0; r < n; r++) {
#ifdef ATT_WSUM_X86
        if (fast) {
            swiglu_row_fma(g + r * n_ff, u + r * n_ff, n_ff, all_vec);
            continue;
        }
#endif
        swiglu_row_ref(g + r * n_ff, u + r * n_ff, n_ff, all_vec);
    }
    (void)fast;
}

/* att_wsum_ref for each used lane, or att_wsum_fma for all of them; in
 * the single-token order (tok) att_wsum_vec_ref / att_wsum_vec_fma, whose
 * chains live in acc (att_wsum_scratch) */
static void att_wsum(float *const *o, const float *const *w, const int32_t *lim, int n_lanes,
                     const float *v, size_t v_stride, int32_t hd, bool fast, bool tok,
                     float *acc)
{
#ifdef ATT_WSUM_X86
    if (fast && hd <= ATT_MAX_HD) {
        if (tok)
            att_wsum_vec_fma(o, w, lim, n_lanes, v, v_stride, hd, acc);
        else
            att_wsum_fma(o, w, lim, n_lanes, v, v_stride, hd);
        return;
    }
#endif
    (void)acc;
    for (int i = 0; i < n_lanes; i++)
        if (o[i])
            (tok ? att_wsum_vec_ref : att_wsum_ref)(o[i], w[i], v, v_stride, lim[i], hd);
}

typedef struct {
    moe_ctx *c;
    int32_t il;
    int32_t n;     /* tokens in the batch */
    int32_t pos0;  /* position of the first */
    bool fast;     /* att_fast(), once per dispatch */
} attn_job;

/* Lanes of a chunk: heads of one kv group (they share k and v) times
 * consecutive tokens. att_lanes gives heads per chunk (hl), head subsets
 * per group (n_hsub) and tokens per chunk (tb). */
static void att_lanes(int32_t group, int32_t *hl, int32_t *n_hsub, int32_t *tb)
{
    *hl = group < ATT_TB ? group : ATT_TB;
    *n_hsub = (group + *hl - 1) / *hl;
    *tb = ATT_TB / *hl;
}

static int64_t att_n_chunks(const model_hparams *hp, int32_t n)
{
    int32_t hl, n_hsub, tb;
    att_lanes(hp->n_head / hp->n_head_kv, &hl, &n_hsub, &tb);
    return (int64_t)((n + tb - 1) / tb) * hp->n_head_kv * n_hsub;
}

/* floats per scratch row of scores: every position of the context */
static size_t att_sc_stride(const moe_ctx *c)
{
    return (size_t)c->n_ctx;
}

/* what both attention chunk kernels derive from the job: head geometry,
 * score scale and this layer's K and V caches */
typedef struct {
    int32_t hd, n_head, group;
    size_t n_q;
    size_t kv_head; /* floats from one kv head's cache rows to the next */
    float scale;
    bool fast; /* attn_job.fast */
    const float *kc, *vc;
} att_geom;

static void att_geom_init(const attn_job *job, att_geom *ag)
{
    const moe_ctx *c = job->c;
    const model_hparams *hp = &c->model->hp;
    ag->hd = hp->n_embd_head;
    ag->n_head = hp->n_head;
    ag->group = hp->n_head / hp->n_head_kv;
    ag->kv_head = kv_ctx8(c) * (size_t)ag->hd;
    ag->n_q = (size_t)ag->n_head * (size_t)ag->hd;
    ag->scale = hp->attn_scale > 0 ? hp->attn_scale : 1.0f / sqrtf((float)ag->hd);
    ag->kc = c->k_cache + kv_at(c, job->il, 0, 0);
    ag->vc = c->v_cache + kv_at(c, job->il, 0, 0);
    ag->fast = job->fast;
}

/* this thread's scratch rows of scores, one per lane (ATT_TB rows of
 * att_sc_stride floats; see moe_ctx.att_scores) */
static float *att_scratch(const moe_ctx *c, int ith)
{
    return c->att_scores + (size_t)ith * ATT_TB * att_sc_stride(c);
}

/* thread ith's chains of the single-token weighted sum (att_wsum_vec_fma;
 * see moe_ctx.att_vacc) */
static float *att_wsum_scratch(const moe_ctx *c, int ith)
{
    return c->att_vacc + (size_t)ith * MOE_ATT_VACC(c->model->hp.n_embd_head);
}

/* One chunk = tb consecutive tokens x hl heads of one kv group, one
 * (token, head) row per lane. Chunks go kv group by kv group, so the
 * chunks both threads claim next read the keys and values already in
 * their caches; within a group the last token blocks (the most positions)
 * come first. */
static void attn_chunk(void *arg, int ith, int64_t it)
{
    const attn_job *job = arg;
    moe_ctx *c = job->c;
    att_geom ag;
    att_geom_init(job, &ag);
    const int32_t hd = ag.hd, group = ag.group;
    const size_t n_q = ag.n_q, stride = att_sc_stride(c);
    const float scale = ag.scale, *kc = ag.kc, *vc = ag.vc;
    int32_t hl, n_hsub, tb;
    att_lanes(group, &hl, &n_hsub, &tb);
    const int32_t n_blocks = (job->n + tb - 1) / tb;
    const int32_t per_group = n_blocks * n_hsub;
    const int32_t g = (int32_t)(it / per_group), r = (int32_t)(it % per_group);
    const int32_t b = n_blocks - 1 - r / n_hsub, hs = r % n_hsub;
    const int32_t t0 = b * tb;
    const size_t kv_off = (size_t)g * ag.kv_head;
    float qt[ATT_MAX_HD * ATT_TB] __attribute__((aligned(64)));
    float sc[ATT_PB * ATT_TB] __attribute__((aligned(64)));
    float *rows = att_scratch(c, ith);
    float *orow[ATT_TB];
    const float *wrow[ATT_TB];
    int32_t lim[ATT_TB]; /* positions lane i sees; 0 = unused lane */
    int32_t n_pos_max = 0;
    bool scored = false; /* by the single-token kernel */

    for (int32_t i = 0; i < ATT_TB; i++) {
        const int32_t t = t0 + i / hl, hi = hs * hl + i % hl;
        const bool used = i / hl < tb && t < job->n && hi < group;
        const int32_t h = g * group + hi;
        lim[i] = used ? job->pos0 + t + 1 : 0;
        orow[i] = used ? c->att + (size_t)t * n_q + (size_t)h * (size_t)hd : NULL;
        for (int32_t d = 0; d < hd; d++)
            qt[d * ATT_TB + i] = used ? c->q[(size_t)t * n_q + (size_t)h * (size_t)hd + (size_t)d]
                                      : 0.0f;
        if (lim[i] > n_pos_max)
            n_pos_max = lim[i];
    }
#ifdef ATT_SCORES_TOK
    if (job->n == 1 && ag.fast) {
        /* one token: its used lanes are the first ones, every one seeing
         * all n_pos_max positions */
        float *srow[ATT_TB];
        const float *qrow[ATT_TB];
        int nh = 0;
        for (; nh < ATT_TB && orow[nh]; nh++) {
            srow[nh] = rows + (size_t)nh * stride;
            qrow[nh] = c->q + (size_t)(g * group + hs * hl + nh) * (size_t)hd;
        }
        attn_scores_tok(srow, qrow, nh, kc + kv_off, n_pos_max, hd, scale);
        scored = true;
    }
#endif
    /* scores, block by block, into each lane's scratch row */
    for (int32_t pb = 0; !scored && pb < n_pos_max; pb += ATT_PB) {
        const int32_t np = n_pos_max - pb < ATT_PB ? n_pos_max - pb : ATT_PB;
        attn_scores(sc, qt, kc + kv_off + (size_t)pb * (size_t)hd, np, hd, scale);
        for (int32_t i = 0; i < ATT_TB; i++)
            for (int32_t j = 0; j < np && pb + j < lim[i]; j++)
                rows[(size_t)i * stride + (size_t)(pb + j)] = sc[j * ATT_TB + i];
    }
    for (int32_t i = 0; i < ATT_TB; i++) {
        float *wi = rows + (size_t)i * stride;
        if (orow[i])
            att_softmax(wi, lim[i], ag.fast);
        wrow[i] = wi;
    }
    att_wsum(orow, wrow, lim, ATT_TB, vc + kv_off, (size_t)hd, hd, ag.fast, c->token_order,
             att_wsum_scratch(c, ith));
}

/* Heads wider than ATT_MAX_HD: one chunk = one (token, head) pair, the
 * scalar form of the same order. */
static void attn_chunk_row(void *arg, int ith, int64_t it)
{
    const attn_job *job = arg;
    moe_ctx *c = job->c;
    att_geom ag;
    att_geom_init(job, &ag);
    const int32_t hd = ag.hd, n_head = ag.n_head, group = ag.group;
    const size_t n_q = ag.n_q;
    const int32_t t = (int32_t)(it / n_head), h = (int32_t)(it % n_head);
    const size_t kv_off = (size_t)(h / group) * ag.kv_head;
    const int32_t n_pos = job->pos0 + t + 1;
    float *w = att_scratch(c, ith);

    attn_scores_row(w, c->q + (size_t)t * n_q + (size_t)h * (size_t)hd, ag.kc + kv_off, n_pos,
                    hd, ag.scale);
    att_softmax(w, n_pos, ag.fast);
    float *o = c->att + (size_t)t * n_q + (size_t)h * (size_t)hd;
    const float *wc = w;
    att_wsum(&o, &wc, &n_pos, 1, ag.vc + kv_off, (size_t)hd, hd, ag.fast, c->token_order,
             NULL);
}

/* Norm, q/k/v projections, q/k norms and RoPE for the n tokens in ctx->x
 * at positions ctx->pos..; k and v are appended to layer il's cache. With
 * want_q false only k and v are made (tokens that exited earlier still
 * leave keys and values for later tokens to attend to). */
static void attention_qkv(moe_ctx *c, int32_t il, int32_t n, bool want_q)
{
    const moe_model *m = c->model;
    const model_hparams *hp = &m->hp;
    const model_layer *L = &m->layers[il];
    const int32_t hd = hp->n_embd_head;
    const int64_t n_q = (int64_t)hp->n_head * hd, n_kv = (int64_t)hp->n_head_kv * hd;
    const int64_t n_embd = hp->n_embd;
    mm_task tasks[3];
    int n_tasks = 0;
    size_t rb;
    const void *act;

    for (int32_t t = 0; t < n; t++)
        rmsnorm(c->xn + t * n_embd, c->x + t * n_embd, L->attn_norm.data, n_embd, hp->norm_eps);

    /* q, k, v in one dispatch when they share a weight type */
    if (L->wq.type == L->wk.type && L->wq.type == L->wv.type) {
        act = act_convert(c, L->wq.type, c->xn, n, n_embd, c->act_q, &rb);
        if (want_q)
            tasks[n_tasks++] = mm_make(c, &L->wq, 0, act, rb, n, c->q, n_q);
        tasks[n_tasks++] = mm_make(c, &L->wk, 0, act, rb, n, c->k, n_kv);
        tasks[n_tasks++] = mm_make(c, &L->wv, 0, act, rb, n, c->v, n_kv);
        mm_run(c, tasks, n_tasks);
    } else {
        if (want_q)
            matmul(c, &L->wq, c->xn, n, c->q);
        matmul(c, &L->wk, c->xn, n, c->k);
        matmul(c, &L->wv, c->xn, n, c->v);
    }
    if (want_q)
        add_bias(c->q, &L->bq, n, n_q);
    add_bias(c->k, &L->bk, n, n_kv);
    add_bias(c->v, &L->bv, n, n_kv);

    rope_table(c, c->pos, n);
    for (int32_t t = 0; t < n; t++) {
        float *q = c->q + t * n_q, *k = c->k + t * n_kv;
        if (hp->qk_norm_full) {
            if (want_q)
                rmsnorm(q, q, L->q_norm.data, n_q, hp->norm_eps);
            rmsnorm(k, k, L->k_norm.data, n_kv, hp->norm_eps);
        } else if (hp->qk_norm_head) {
            for (int32_t h = 0; want_q && h < hp->n_head; h++)
                rmsnorm(q + h * hd, q + h * hd, L->q_norm.data, hd, hp->norm_eps);
            for (int32_t h = 0; h < hp->n_head_kv; h++)
                rmsnorm(k + h * hd, k + h * hd, L->k_norm.data, hd, hp->norm_eps);
        }
        const float *cs = c->rope_cs + (size_t)t * (size_t)hp->n_rot, *sn = cs + hp->n_rot / 2;
        if (want_q)
            rope(q, hp->n_head, hd, hp->n_rot, hp->rope, cs, sn);
        rope(k, hp->n_head_kv, hd, hp->n_rot, hp->rope, cs, sn);
    }
    kv_put(c, il, c->pos, n, c->k, c->v);
}

void kv_put(moe_ctx *c, int32_t il, int32_t p, int32_t n, const float *k, const float *v)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t hd = hp->n_embd_head;
    const size_t n_kv = (size_t)hp->n_head_kv * (size_t)hd;
    for (int32_t g = 0; g < hp->n_head_kv; g++) {
        float *kh = c->k_cache + kv_at(c, il, g, 0);
        for (int32_t t = 0; t < n; t++) {
            const size_t src = (size_t)t * n_kv + (size_t)g * (size_t)hd;
            for (int32_t d = 0; d < hd; d++)
                kh[KV_K(p + t, d, hd)] = k[src + (size_t)d];
            memcpy(c->v_cache + kv_at(c, il, g, p + t), v + src, (size_t)hd * sizeof(float));
        }
    }
}

void kv_get(const moe_ctx *c, int32_t il, int32_t p, int32_t n, float *k, float *v)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t hd = hp->n_embd_head;
    const size_t n_kv = (size_t)hp->n_head_kv * (size_t)hd;
    for (int32_t g = 0; g < hp->n_head_kv; g++) {
        const float *kh = c->k_cache + kv_at(c, il, g, 0);
        for (int32_t t = 0; t < n; t++) {
            const size_t dst = (size_t)t * n_kv + (size_t)g * (size_t)hd;
            for (int32_t d = 0; d < hd; d++)
                k[dst + (size_t)d] = kh[KV_K(p + t, d, hd)];
            memcpy(v + dst, c->v_cache + kv_at(c, il, g, p + t), (size_t)hd * sizeof(float));
        }
    }
}

static void attention(moe_ctx *c, int32_t il, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    const int64_t n_embd = hp->n_embd;
    attn_job job = {c, il, n, c->pos, att_fast()};
    tp_chunk_fn fn = attn_chunk_row;
    int64_t n_chunks = (int64_t)n * hp->n_head;

    attention_qkv(c, il, n, true);
    if (hp->n_embd_head <= ATT_MAX_HD) {
        fn = attn_chunk;
        n_chunks = att_n_chunks(hp, n);
    }
    /* work ~ tokens x heads x positions x head size. Attention has a fixed
     * cost per chunk (query transpose, chain set-up, softmax) on top, so it
     * pays to split sooner than a matmul: measured on granite-moe-1b
     * decoding at 40-64 positions, 1.1 ms of attention per token on one
     * thread against 0.55-0.62 ms split; at 0-24 positions, 0.47 against
     * 0.35 ms. */
    if ((int64_t)n * hp->n_head * (c->pos + n) * hp->n_embd_head < ATT_MIN_PARALLEL_WORK)
        for (int64_t it = 0; it < n_chunks; it++)
            fn(&job, 0, it);
    else
        tp_run_chunks(c->pool, n_chunks, fn, &job);
    matmul(c, &c->model->layers[il].wo, c->att, n, c->ffn_out);
    for (int64_t i = 0; i < (int64_t)n * n_embd; i++)
        c->x[i] += c->ffn_out[i] * hp->residual_scale;
}

void forward_kv_only(moe_ctx *c, int32_t il, int32_t n)
{
    attention_qkv(c, il, n, false);
}

/* ---- feed-forward ------------------------------------------------------ */

/* Dense SwiGLU of n rows of xn into out. */
static void ffn_dense(moe_ctx *c, const mtensor *wg, const mtensor *wu, const mtensor *wd,
                      const float *xn, int32_t n, float *out)
{
    const int64_t n_ff = wg->ne[1], n_embd = wg->ne[0];
    mm_task tasks[2];
    size_t rb;
    const void *act = act_convert(c, wg->type, xn, n, n_embd, c->act_q, &rb);
    if (wg->type == wu->type) {
        tasks[0] = mm_make(c, wg, 0, act, rb, n, c->hb, n_ff);
        tasks[1] = mm_make(c, wu, 0, act, rb, n, c->hb2, n_ff);
        mm_run(c, tasks, 2);
    } else {
        tasks[0] = mm_make(c, wg, 0, act, rb, n, c->hb, n_ff);
        mm_run(c, tasks, 1);
        matmul(c, wu, xn, n, c->hb2);
    }
    swiglu_rows(c->hb, c->hb2, n, n_ff, att_fast(), false);
    matmul(c, wd, c->hb, n, out);
}

/* hb = silu(hb) * hb2 over rows of n_ff. An element costs an exp and a
 * division, about SWIGLU_WORK simple operations (16 us for 4096 elements
 * here), so one token's 8 x 512 of granite-moe is split across threads. */
#define SWIGLU_WORK 8
typedef struct {
    rows_part part;
    float *hb;
    const float *hb2;
    int64_t n_ff;
    bool fast;    /* att_fast() */
    bool all_vec; /* swiglu_row_ref */
} swiglu_job;

static void swiglu_chunk(void *arg, int ith, int64_t ch)
{
    const swiglu_job *job = arg;
    int64_t r0, r1;
    (void)ith;
    rows_range(&job->part, ch, &r0, &r1);
    swiglu_rows(job->hb + r0 * job->n_ff, job->hb2 + r0 * job->n_ff, r1 - r0, job->n_ff,
                job->fast, job->all_vec);
}

/* o[i] += w * y[i]: multiply, then add (element by element, so vectors
 * keep the result) */
static void vec_axpy(float *restrict o, const float *restrict y, float w, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        o[i] += w * y[i];
}

/* the experts' outputs summed back per token, in choice order like the
 * reference */
typedef struct {
    rows_part part;
    moe_ctx *c;
    int64_t n_embd;
} wsum_job;

static void wsum_chunk(void *arg, int ith, int64_t ch)
{
    const wsum_job *job = arg;
    moe_ctx *c = job->c;
    const int64_t n_embd = job->n_embd;
    const int32_t ns = c->n_sel;
    int64_t r0, r1;
    (void)ith;
    rows_range(&job->part, ch, &r0, &r1);
    memset(c->ffn_out + (size_t)r0 * (size_t)n_embd, 0,
           (size_t)(r1 - r0) * (size_t)n_embd * sizeof(float));
    for (int64_t t = r0; t < r1; t++)
        for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
            vec_axpy(c->ffn_out + (size_t)t * n_embd,
                     c->y_gather + (size_t)c->slot_of[t * ns + j] * n_embd, c->sel_w[t * ns + j],
                     n_embd);
}

/* EMoE layers (unweighted gating) with f32 down weights: each token's
 * selected experts' down projections and their weighted sum in one double
 * accumulation per output (quant_dot_f32_wide), rounded once. The dense f32
 * dot over n_ff is that double sum too when n_ff is no multiple of 16, so
 * with K = N the converted layer's down projection gives the dense one's
 * bits for the same inputs instead of one float rounding per expert piece
 * (the inputs differ in the last bit now and then: swiglu_row_ref). */
typedef struct {
    rows_part part;
    moe_ctx *c;
    const mtensor *wd;
} down_exact_job;

static void down_exact_chunk(void *arg, int ith, int64_t ch)
{
    const down_exact_job *job = arg;
    moe_ctx *c = job->c;
    const mtensor *wd = job->wd;
    const int64_t nf = wd->ne[0], n_embd = wd->ne[1];
    const int32_t ns = c->n_sel;
    int64_t r0, r1;
    (void)ith;
    rows_range(&job->part, ch, &r0, &r1);
    for (int64_t t = r0; t < r1; t++) {
        float *o = c->ffn_out + (size_t)t * (size_t)n_embd;
        for (int64_t i = 0; i < n_embd; i++) {
            double s = 0.0;
            for (int32_t j = 0; j < c->n_sel_tok[t]; j++) {
                const int64_t e = c->sel[t * ns + j];
                const float *w = (const float *)((const char *)wd->data +
                                                  (size_t)(e * n_embd + i) * wd->row_bytes);
                const float *h = c->hb + (size_t)c->slot_of[t * ns + j] * (size_t)nf;
                s += (double)c->sel_w[t * ns + j] * quant_dot_f32_wide(nf, w, h);
            }
            o[i] = (float)s;
        }
    }
}

/* The tasks of expert tensor w (and, when w2 is not NULL, of w2 right
 * after each of w's, so gate and up of one expert sit side by side) for
 * every expert used in this batch: its exp_count[e] activation rows start
 * at slot_start[e] (rows of rb bytes in act), its outputs at that slot of
 * out (out2), n_out floats a row. Fills tasks and returns their count. */
static int expert_tasks(const moe_ctx *c, const mtensor *w, const mtensor *w2, const void *act,
                        size_t rb, const int32_t *slot_start, float *out, float *out2,
                        int64_t n_out, mm_task *tasks)
{
    int n_tasks = 0;
    for (int32_t e = 0; e < c->model->hp.n_expert; e++) {
        const int32_t cnt = c->exp_count[e];
        const void *a = (const char *)act + (size_t)slot_start[e] * rb;
        const size_t o = (size_t)slot_start[e] * (size_t)n_out;
        if (!cnt)
            continue;
        tasks[n_tasks++] = mm_make_expert(c, w, e, a, rb, cnt, out + o, n_out);
        if (w2)
            tasks[n_tasks++] = mm_make_expert(c, w2, e, a, rb, cnt, out2 + o, n_out);
    }
    return n_tasks;
}

/* the routed experts' down projections, then their weighted sum per token */
static void ffn_moe_down(moe_ctx *c, const model_layer *L, int32_t n, int32_t n_slots,
                         const int32_t *slot_start)
{
    const int32_t ns = c->n_sel;
    const int64_t n_embd = c->model->hp.n_embd, nf = c->model->hp.n_ff_exp;
    mm_task tasks[MM_MAX_TASKS];
    size_t rb;
    const void *act = act_convert(c, L->down_exps.type, c->hb, n_slots, nf, c->act_q, &rb);
    mm_run(c, tasks,
           expert_tasks(c, &L->down_exps, NULL, act, rb, slot_start, c->y_gather, NULL, n_embd,
                        tasks));

    /* weighted sum back per token, in choice order like the reference */
    {
        wsum_job wj = {{0, 0}, c, n_embd};
        rows_run(c, &wj.part, n, n_embd * ns, 2, wsum_chunk, &wj);
    }
}

/* The routed experts' input: each token's normed row (xn) converted once
 * for weights of type t, then copied to every slot the token has, in rows
 * of *rb bytes grouped by expert (x_gather; a converted row is never
 * larger than the float row). Decoding a token thus converts one row, not
 * one per chosen expert; the rows are the same bytes either way. */
static const void *expert_input(moe_ctx *c, moe_type t, int32_t n, size_t *rb)
{
    const int32_t ns = c->n_sel;
    const char *tok = act_convert(c, t, c->xn, n, c->model->hp.n_embd, c->act_q, rb);
    char *dst = (char *)c->x_gather;
    for (int32_t k = 0; k < n; k++)
        for (int32_t j = 0; j < c->n_sel_tok[k]; j++)
            memcpy(dst + (size_t)c->slot_of[k * ns + j] * *rb, tok + (size_t)k * *rb, *rb);
    return dst;
}

static void ffn_moe(moe_ctx *c, int32_t il, int32_t n)
{
    const moe_model *m = c->model;
    const model_hparams *hp = &m->hp;
    const model_layer *L = &m->layers[il];
    const int32_t ne = hp->n_expert, ns = c->n_sel;
    const int64_t n_embd = hp->n_embd, nf = hp->n_ff_exp;
    mm_task tasks[MM_MAX_TASKS];
    const bool same = L->up_exps.type == L->gate_exps.type;
    int32_t n_slots = 0;
    int32_t *slot_start = c->exp_start;
    size_t rb;
    const void *act;

    /* router logits for every token (f32 weights usually), then the
     * routing decision: (expert, weight) lists of n_sel_tok[t] entries */
    matmul(c, &L->gate_inp, c->xn, n, c->router_logits);
    router_select(c, il, n);

    /* group (token, choice) pairs by expert: slots are contiguous per expert */
    memset(c->exp_count, 0, (size_t)ne * sizeof(int32_t));
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
            c->exp_count[c->sel[t * ns + j]]++;
    for (int32_t e = 0; e < ne; e++) {
        slot_start[e] = n_slots;
        n_slots += c->exp_count[e];
        c->exp_count[e] = 0;
    }
    for (int32_t t = 0; t < n; t++)
        for (int32_t j = 0; j < c->n_sel_tok[t]; j++) {
            int32_t e = c->sel[t * ns + j];
            int32_t s = slot_start[e] + c->exp_count[e]++;
            c->slot_of[t * ns + j] = s;
        }

    /* gate and up for every used expert in one dispatch */
    act = expert_input(c, L->gate_exps.type, n, &rb);
    mm_run(c, tasks,
           expert_tasks(c, &L->gate_exps, same ? &L->up_exps : NULL, act, rb, slot_start,
                        c->hb, c->hb2, nf, tasks));
    if (!same) {
        act = expert_input(c, L->up_exps.type, n, &rb);
        mm_run(c, tasks,
               expert_tasks(c, &L->up_exps, NULL, act, rb, slot_start, c->hb2, NULL, nf, tasks));
    }
    {
        swiglu_job sj = {{0, 0}, c->hb, c->hb2, nf, att_fast(), hp->unweighted};
        rows_run(c, &sj.part, n_slots, nf * SWIGLU_WORK, 4, swiglu_chunk, &sj);
    }

    if (hp->unweighted && L->down_exps.type == MOE_TYPE_F32) {
        down_exact_job dj = {{0, 0}, c, &L->down_exps};
        rows_run(c, &dj.part, n, n_embd * nf * ns, 1, down_exact_chunk, &dj);
    } else {
        ffn_moe_down(c, L, n, n_slots, slot_start);
    }

    /* shared expert (qwen2moe) */
    if (L->gate_inp_shexp.data) {
        float *tmp = c->x_gather; /* free again: reuse as [n][n_embd] */
        matmul(c, &L->gate_inp_shexp, c->xn, n, c->shexp_gate);
        ffn_dense(c, &L->gate_shexp, &L->up_shexp, &L->down_shexp, c->xn, n, tmp);
        for (int32_t t = 0; t < n; t++) {
            float g = 1.0f / (1.0f + expf(-c->shexp_gate[t]));
            if (c->trace)
                trace_cur(c->trace, t)->shexp_gate[il] = g;
            for (int64_t i = 0; i < n_embd; i++)
                c->ffn_out[(size_t)t * n_embd + i] += g * tmp[(size_t)t * n_embd + i];
        }
    }
}

/* ---- the whole pass ---------------------------------------------------- */

bool forward_token_order(const moe_ctx *c, int32_t n)
{
    return c->order == MOE_ORDER_TOKEN || (c->order == MOE_ORDER_REFERENCE && n == 1);
}

void forward_embed(moe_ctx *c, const int32_t *tokens, int32_t n)
{
    const moe_model *m = c->model;
    const model_hparams *hp = &m->hp;
    const int64_t n_embd = hp->n_embd;
    c->token_order = forward_token_order(c, n);
    for (int32_t t = 0; t < n; t++) {
        float *x = c->x + t * n_embd;
        quant_dequantize_row(m->tok_embd.type,
                             (const char *)m->tok_embd.data + (size_t)tokens[t] * m->tok_embd.row_bytes,
                             x, n_embd);
        if (hp->embd_scale != 1.0f)
            for (int64_t i = 0; i < n_embd; i++)
                x[i] *= hp->embd_scale;
    }
}

void forward_layer(moe_ctx *c, int32_t il, int32_t n)
{
    const moe_model *m = c->model;
    const model_hparams *hp = &m->hp;
    const model_layer *L = &m->layers[il];
    const int64_t n_embd = hp->n_embd;

    attention(c, il, n);
    for (int32_t t = 0; t < n; t++)
        rmsnorm(c->xn + t * n_embd, c->x + t * n_embd, L->ffn_norm.data, n_embd, hp->norm_eps);
    if (L->gate_inp.data)
        ffn_moe(c, il, n);
    else
        ffn_dense(c, &L->ffn_gate, &L->ffn_up, &L->ffn_down, c->xn, n, c->ffn_out);
    for (int64_t i = 0; i < (int64_t)n * n_embd; i++)
        c->x[i] += c->ffn_out[i] * hp->residual_scale;
    if (c->trace)
        for (int32_t t = 0; t < n; t++) {
            const float *x = c->x + t * n_embd;
            double ss = 0.0;
            for (int64_t i = 0; i < n_embd; i++)
                ss += (double)x[i] * x[i];
            trace_cur(c->trace, t)->hnorm[il] = (float)sqrt(ss);
        }
}

void forward_head(moe_ctx *c, const float *x, int32_t n_out, float *logits)
{
    const moe_model *m = c->model;
    const model_hparams *hp = &m->hp;
    const int64_t n_embd = hp->n_embd;
    for (int32_t t = 0; t < n_out; t++)
        rmsnorm(c->xn + t * n_embd, x + t * n_embd, m->output_norm.data, n_embd, hp->norm_eps);
    matmul(c, &m->output, c->xn, n_out, logits);
    if (hp->logit_scale != 1.0f)
        for (int64_t i = 0; i < (int64_t)n_out * hp->n_vocab; i++)
            logits[i] /= hp->logit_scale;
}

moe_status forward_batch(moe_ctx *c, const int32_t *tokens, int32_t n, bool all)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t first_out = all ? 0 : n - 1;
    const double t0 = c->trace ? util_now() : 0.0;

    if (exit_active(c)) /* early exit or logit lens: exit.c drives the layers */
        return exit_forward_batch(c, tokens, n, all);
    if (c->trace) {
        moe_status st = trace_begin(c->trace, tokens, n, c->pos);
        if (st != MOE_OK)
            return st;
    }
    forward_embed(c, tokens, n);
    for (int32_t il = 0; il < hp->n_layer; il++)
        forward_layer(c, il, n);
    forward_head(c, c->x + (size_t)first_out * (size_t)hp->n_embd, n - first_out, c->logits);
    c->pos += n;
    if (c->trace)
        trace_end(c->trace, n, util_now() - t0);
    return MOE_OK;
}
