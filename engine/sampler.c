/*
 * sampler.c - the token sampler: a configurable chain of stages (penalties,
 * top-k, typical-p, top-p, min-p, temperature) followed by a draw from the
 * softmax with a seeded xoshiro256** generator, plus per-stage candidate
 * snapshots for the token inspector.
 *
 * Owns moe_sampler_* from moe.h. Depends on libc/libm only; knows nothing of
 * models or contexts (it sees an array of n_vocab logits). All buffers are
 * allocated in moe_sampler_new; sampling never allocates.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

#define SAMPLER_STAGE_CAND 16        /* candidates kept per stage snapshot */
#define SAMPLER_MAX_LAST_N (1 << 20) /* sanity cap on penalty_last_n */

typedef struct {
    double score;
    moe_candidate c;
} sampler_scored;

struct moe_sampler {
    moe_sampler_params params;
    int32_t n_vocab;

    /* working candidate set: cand[0..n_cand) */
    moe_candidate *cand;     /* [n_vocab] */
    sampler_scored *scored;  /* [n_vocab] scratch for typical_p */
    int32_t n_cand;
    int32_t n_sorted;        /* cand[0..n_sorted) are the n_sorted best, in order */
    bool probs_valid;        /* cand[i].p is the softmax over the current set */

    /* penalty history: ring of the last penalty_last_n accepted tokens */
    int32_t *hist;           /* [penalty_last_n] */
    int32_t hist_cap, hist_len, hist_pos;
    int32_t *counts;         /* [n_vocab], all zero between calls */

    /* snapshots after each stage that ran in the last sample call */
    moe_candidate snap[MOE_STAGE_COUNT][SAMPLER_STAGE_CAND];
    int32_t snap_n[MOE_STAGE_COUNT];

    uint64_t rng[4];
};

static const char *const stage_names[] = {
    [MOE_STAGE_PENALTIES] = "penalties",
    [MOE_STAGE_TOP_K] = "top_k",
    [MOE_STAGE_TYPICAL_P] = "typical_p",
    [MOE_STAGE_TOP_P] = "top_p",
    [MOE_STAGE_MIN_P] = "min_p",
    [MOE_STAGE_TEMP] = "temp",
};
_Static_assert(sizeof stage_names / sizeof stage_names[0] == MOE_STAGE_COUNT,
               "stage_names must cover moe_sampler_stage");

/* ---- random numbers: xoshiro256** seeded through splitmix64 ------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(uint64_t st[4])
{
    uint64_t result = rotl64(st[1] * 5, 7) * 9;
    uint64_t t = st[1] << 17;
    st[2] ^= st[0];
    st[3] ^= st[1];
    st[1] ^= st[2];
    st[0] ^= st[3];
    st[2] ^= t;
    st[3] = rotl64(st[3], 45);
    return result;
}

static void rng_seed(uint64_t st[4], uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        st[i] = splitmix64(&x);
}

/* uniform double in [0, 1) with 53 random bits */
static double rng_uniform(uint64_t st[4])
{
    return (double)(rng_next(st) >> 11) * 0x1.0p-53;
}

/* ---- parameters ---------------------------------------------------------- */

moe_sampler_params moe_sampler_default_params(void)
{
    moe_sampler_params p;
    memset(&p, 0, sizeof p);
    p.temp = 0.8f;
    p.top_k = 40;
    p.top_p = 0.95f;
    p.min_p = 0.05f;
    p.typical_p = 1.0f;
    p.repeat_penalty = 1.0f;
    p.freq_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.penalty_last_n = 64;
    p.seed = 0x5eed5eedULL;
    p.n_order = MOE_STAGE_COUNT;
    p.order[0] = MOE_STAGE_PENALTIES;
    p.order[1] = MOE_STAGE_TOP_K;
    p.order[2] = MOE_STAGE_TYPICAL_P;
    p.order[3] = MOE_STAGE_TOP_P;
    p.order[4] = MOE_STAGE_MIN_P;
    p.order[5] = MOE_STAGE_TEMP;
    return p;
}

const char *moe_sampler_stage_name(moe_sampler_stage s)
{
    if ((unsigned)s >= MOE_STAGE_COUNT)
        return "unknown";
    return stage_names[s];
}

/* Match one stage name (len bytes); accepts '-' for '_' and "temperature". */
static int stage_from_name(const char *name, size_t len)
{
    char buf[32];
    if (len == 0 || len >= sizeof buf)
        return -1;
    for (size_t i = 0; i < len; i++)
        buf[i] = name[i] == '-' ? '_' : name[i];
    buf[len] = '\0';
    if (strcmp(buf, "temperature") == 0)
        return MOE_STAGE_TEMP;
    for (int s = 0; s < MOE_STAGE_COUNT; s++)
        if (strcmp(buf, stage_names[s]) == 0)
            return s;
    return -1;
}

moe_status moe_sampler_parse_order(const char *spec, moe_sampler_params *p)
{
    moe_sampler_stage order[MOE_STAGE_COUNT];
    bool seen[MOE_STAGE_COUNT] = { false };
    int32_t n = 0;
    const char *c;

    if (!spec || !p)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler order: no spec given");
    c = spec;
    for (;;) {
        const char *start, *end;
        int st;
        while (*c == ' ' || *c == '\t')
            c++;
        start = c;
        while (*c && *c != ',')
            c++;
        end = c;
        while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        if (end == start) {
            if (n == 0 && !*c)
                return moe_fail(MOE_ERR_INVALID_ARG, "sampler order: empty");
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "sampler order: empty stage name at position %d",
                            (int)n + 1);
        }
        st = stage_from_name(start, (size_t)(end - start));
        if (st < 0)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "sampler order: unknown stage '%.*s' (known: "
                            "penalties, top_k, typical_p, top_p, min_p, temp)",
                            (int)(end - start > 40 ? 40 : end - start), start);
        if (seen[st])
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "sampler order: stage '%s' given twice",
                            stage_names[st]);
        seen[st] = true;
        order[n++] = (moe_sampler_stage)st;
        if (!*c)
            break;
        c++; /* skip ',' */
    }
    p->n_order = n;
    for (int32_t i = 0; i < n; i++)
        p->order[i] = order[i];
    return MOE_OK;
}

static moe_status check_params(const moe_sampler_params *p)
{
    bool seen[MOE_STAGE_COUNT] = { false };
    if (p->n_order < 0 || p->n_order > MOE_STAGE_COUNT)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: n_order %d out of range",
                        (int)p->n_order);
    for (int32_t i = 0; i < p->n_order; i++) {
        unsigned st = (unsigned)p->order[i];
        if (st >= MOE_STAGE_COUNT)
            return moe_fail(MOE_ERR_INVALID_ARG, "sampler: bad stage id %u", st);
        if (seen[st])
            return moe_fail(MOE_ERR_INVALID_ARG, "sampler: stage '%s' given twice",
                            stage_names[st]);
        seen[st] = true;
    }
    if (p->penalty_last_n < 0 || p->penalty_last_n > SAMPLER_MAX_LAST_N)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: penalty_last_n %d out of "
                        "range [0, %d]", (int)p->penalty_last_n, SAMPLER_MAX_LAST_N);
    if (!(p->repeat_penalty > 0.0f) || !isfinite(p->repeat_penalty))
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: repeat_penalty must be > 0");
    if (!isfinite(p->freq_penalty) || !isfinite(p->presence_penalty))
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: penalties must be finite");
    if (isnan(p->temp) || isnan(p->top_p) || isnan(p->min_p) ||
        isnan(p->typical_p))
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: NaN parameter");
    return MOE_OK;
}

/* ---- lifetime ------------------------------------------------------------ */

moe_status moe_sampler_new(const moe_sampler_params *params, int32_t n_vocab,
                           moe_sampler **out)
{
    moe_sampler *s = NULL;
    moe_status st;

    if (!out)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: no out pointer");
    *out = NULL;
    if (!params)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: no params");
    if (n_vocab < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "sampler: n_vocab %d < 1", (int)n_vocab);
    st = check_params(params);
    if (st != MOE_OK)
        return st;

    s = calloc(1, sizeof *s);
    if (!s)
        return moe_fail(MOE_ERR_NOMEM, "sampler: out of memory");
    s->params = *params;
    s->n_vocab = n_vocab;
    s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
    s->scored = malloc((size_t)n_vocab * sizeof *s->scored);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    s->hist_cap = params->penalty_last_n;
    s->hist = malloc((size_t)(s->hist_cap > 0 ? s->hist_cap : 1) * sizeof *s->hist);
    if (!s->cand || !s->scored || !s->counts || !s->hist) {
        moe_sampler_free(s);
        return moe_fail(MOE_ERR_NOMEM, "sampler: out of memory for %d-token "
                        "vocabulary", (int)n_vocab);
    }
    moe_sampler_reset(s);
    *out = s;
    return MOE_OK;
}

void moe_sampler_free(moe_sampler *s)
{
    if (!s)
        return;
    free(s->cand);
    free(s->scored);
    free(s->counts);
    free(s->hist);
    free(s);
}

void moe_sampler_reset(moe_sampler *s)
{
    if (!s)
        return;
    s->hist_len = 0;
    s->hist_pos = 0;
    s->n_cand = 0;
    memset(s->snap_n, 0, sizeof s->snap_n);
    rng_seed(s->rng, s->params.seed);
}

void moe_sampler_accept(moe_sampler *s, int32_t id)
{
    if (!s || id < 0 || id >= s->n_vocab || s->hist_cap <= 0)
        return;
    s->hist[s->hist_pos] = id;
    s->hist_pos = (s->hist_pos + 1) % s->hist_cap;
    if (s->hist_len < s->hist_cap)
        s->hist_len++;
}

/* ---- candidate-set helpers ---------------------------------------------- */

/* Total order "a before b": larger logit first, then lower id. NaN logits
 * were replaced by -inf when the set was built. */
static inline bool cand_before(const moe_candidate *a, const moe_candidate *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

/* Locally typical order: |(-log p) - H| ascending, then the usual order. */
static inline bool scored_before(const sampler_scored *a, const sampler_scored *b)
{
    return a->score < b->score || (a->score == b->score && cand_before(&a->c, &b->c));
}

#define CAND_PROB(x) ((x)->p)
#define SCORED_PROB(x) ((x)->c.p)

/*
 * In-place ordering helpers for an array of T under the strict total order
 * BEFORE (no two elements compare equal, ids are unique), best first. No
 * allocation (glibc qsort may malloc), and selection instead of sorting
 * where a stage only needs a best-first set:
 *   P_sort(c, n)                 full sort (quicksort, heapsort fallback)
 *   P_select(c, n, k)            c[0..k) become the k best, in any order
 *   P_select_mass(c, n, target)  smallest m whose best-m mass >= target;
 *                                c[0..m) become those m, in any order
 */
#define SAMPLER_ORDER_FUNCS(P, T, BEFORE, PROB)                                 \
    static inline void P##_swap(T *a, T *b)                                     \
    {                                                                           \
        T t_ = *a;                                                              \
        *a = *b;                                                                \
        *b = t_;                                                                \
    }                                                                           \
    /* median-of-three pivot, Lomuto partition of c[lo..hi]; returns the     \
     * pivot's final index i; *mass = sum of PROB over c[lo..i) */             \
    static int32_t P##_partition(T *c, int32_t lo, int32_t hi, double *mass)    \
    {                                                                           \
        int32_t mid = lo + (hi - lo) / 2, i = lo;                               \
        double m = 0.0;                                                         \
        T pivot;                                                                \
        if (BEFORE(&c[mid], &c[lo]))                                            \
            P##_swap(&c[mid], &c[lo]);                                          \
        if (BEFORE(&c[hi], &c[lo]))                                             \
            P##_swap(&c[hi], &c[lo]);                                           \
        if (BEFORE(&c[mid], &c[hi]))                                            \
            P##_swap(&c[mid], &c[hi]);                                          \
        pivot = c[hi];                                                          \
        for (int32_t j = lo; j < hi; j++)                                       \
            if (BEFORE(&c[j], &pivot)) {                                        \
                m += PROB(&c[j]);                                               \
                P##_swap(&c[i++], &c[j]);                                       \
            }                                                                   \
        P##_swap(&c[i], &c[hi]);                                                \
        *mass = m;                                                              \
        return i;                                                               \
    }                                                                           \
    static void P##_insertion(T *c, int32_t n)                                  \
    {                                                                           \
        for (int32_t i = 1; i < n; i++) {                                       \
            T x = c[i];                                                         \
            int32_t j = i;                                                      \
            while (j > 0 && BEFORE(&x, &c[j - 1])) {                            \
                c[j] = c[j - 1];                                                \
                j--;                                                            \
            }                                                                   \
            c[j] = x;                                                           \
        }                                                                       \
    }                                                                           \
    /* heap with the worst element at the root */                              \
    static void P##_sift(T *c, int32_t n, int32_t i)                            \
    {                                                                           \
        for (;;) {                                                              \
            int32_t w = i, l = 2 * i + 1, r = l + 1;                            \
            if (l < n && BEFORE(&c[w], &c[l]))                                  \
                w = l;                                                          \
            if (r < n && BEFORE(&c[w], &c[r]))                                  \
                w = r;                                                          \
            if (w == i)                                                         \
                return;                                                         \
            P##_swap(&c[i], &c[w]);                                             \
            i = w;                                                              \
        }                                                                       \
    }                                                                           \
    static void P##_heapsort(T *c, int32_t n)                                   \
    {                                                                           \
        for (int32_t i = n / 2 - 1; i >= 0; i--)                                \
            P##_sift(c, n, i);                                                  \
        for (int32_t e = n - 1; e > 0; e--) {                                   \
            P##_swap(&c[0], &c[e]);                                             \
            P##_sift(c, e, 0);                                                  \
        }                                                                       \
    }                                                                           \
    static void P##_sort_rec(T *c, int32_t n, int depth)                        \
    {                                                                           \
        double unused_;                                                         \
        while (n > 16) {                                                        \
            int32_t p;                                                          \
            if (depth-- <= 0) {                                                 \
                P##_heapsort(c, n);                                             \
                return;                                                         \
            }                                                                   \
            p = P##_partition(c, 0, n - 1, &unused_);                           \
            if (p < n - 1 - p) {                                                \
                P##_sort_rec(c, p, depth);                                      \
                c += p + 1;                                                     \
                n -= p + 1;                                                     \
            } else {                                                            \
                P##_sort_rec(c + p + 1, n - p - 1, depth);                      \
                n = p;                                                          \
            }                                                                   \
        }                                                                       \
        P##_insertion(c, n);                                                    \
    }                                                                           \
    __attribute__((unused)) static void P##_sort(T *c, int32_t n)               \
    {                                                                           \
        int depth = 8;                                                          \
        for (int32_t k = n; k > 1; k >>= 1)                                     \
            depth += 2;                                                         \
        P##_sort_rec(c, n, depth);                                              \
    }                                                                           \
    static void P##_select(T *c, int32_t n, int32_t k)                          \
    {                                                                           \
        int32_t lo = 0, hi = n - 1;                                             \
        double unused_;                                                         \
        if (k <= 0 || k >= n)                                                   \
            return;                                                             \
        while (hi - lo > 16) {                                                  \
            int32_t i = P##_partition(c, lo, hi, &unused_);                     \
            if (i == k || i == k - 1)                                           \
                return;                                                         \
            if (i > k)                                                          \
                hi = i - 1;                                                     \
            else                                                                \
                lo = i + 1;                                                     \
        }                                                                       \
        P##_insertion(c + lo, hi - lo + 1);                                     \
    }                                                                           \
    static int32_t P##_select_mass(T *c, int32_t n, double target)              \
    {                                                                           \
        int32_t lo = 0, hi = n - 1; /* the boundary lies in c[lo..hi] */        \
        double acc = 0.0;           /* mass of c[0..lo) */                      \
        if (n <= 1 || target <= 0.0)                                            \
            return n < 1 ? n : (P##_select(c, n, 1), 1);                        \
        while (hi - lo > 16) {                                                  \
            double lm;                                                          \
            int32_t i = P##_partition(c, lo, hi, &lm);                          \
            if (acc + lm >= target) {                                           \
                hi = i - 1;                                                     \
            } else if (acc + lm + PROB(&c[i]) >= target) {                      \
                return i + 1;                                                   \
            } else {                                                            \
                acc += lm + PROB(&c[i]);                                        \
                lo = i + 1;                                                     \
            }                                                                   \
        }                                                                       \
        P##_insertion(c + lo, hi - lo + 1);                                     \
        for (int32_t i = lo; i <= hi; i++) {                                    \
            acc += PROB(&c[i]);                                                 \
            if (acc >= target)                                                  \
                return i + 1;                                                   \
        }                                                                       \
        /* rounding: the next element in order is c[hi + 1] (a pivot) */       \
        return hi + 2 < n ? hi + 2 : n;                                         \
    }

SAMPLER_ORDER_FUNCS(cand, moe_candidate, cand_before, CAND_PROB)
SAMPLER_ORDER_FUNCS(scored, sampler_scored, scored_before, SCORED_PROB)

/* Make cand[0..m) the m best candidates in order (m clamped to n_cand). */
static void sort_prefix(moe_sampler *s, int32_t m)
{
    int32_t ns = s->n_sorted;
    if (m > s->n_cand)
        m = s->n_cand;
    if (m <= ns)
        return;
    cand_select(s->cand + ns, s->n_cand - ns, m - ns);
    cand_sort(s->cand + ns, m - ns);
    s->n_sorted = m;
}

/* e^x for x <= 0 (0 below -87, so -inf logits get exactly 0), relative
 * error ~2e-7; branch-free so the softmax loop vectorizes. */
static inline float sampler_exp_neg(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: round to nearest */
    float kf, r, p;
    int32_t ki;
    union { uint32_t u; float f; } sc;
    bool under = !(x >= -87.0f);
    x = under ? -87.0f : x;
    kf = (x * 1.44269504088896341f + shifter) - shifter;
    r = x - kf * 0.693145751953125f - kf * 1.428606765330187e-06f;
    p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 +
        r * (1.0f / 120 + r * (1.0f / 720))))));
    ki = (int32_t)kf;
    sc.u = (uint32_t)(ki + 127) << 23;
    return under ? 0.0f : p * sc.f;
}

/* cand[i].p = softmax of the logits over the current set. */
static void ensure_probs(moe_sampler *s)
{
    float mx = -INFINITY;
    double sum = 0.0;
    int32_t n = s->n_cand;
    if (s->probs_valid)
        return;
    if (s->n_sorted > 0)
        mx = s->cand[0].logit;
    else
        for (int32_t i = 0; i < n; i++)
            if (s->cand[i].logit > mx)
                mx = s->cand[i].logit;
    if (mx == -INFINITY) {
        /* every logit is -inf: uniform over the set */
        for (int32_t i = 0; i < n; i++)
            s->cand[i].p = 1.0f / (float)n;
        s->probs_valid = true;
        return;
    }
    {
        /* exps first (vectorizable), then a sum in four lanes */
        double acc[4] = { 0.0, 0.0, 0.0, 0.0 };
        int32_t i = 0;
        for (i = 0; i < n; i++)
            s->cand[i].p = sampler_exp_neg(s->cand[i].logit - mx);
        for (i = 0; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++)
                acc[j] += s->cand[i + j].p;
        for (; i < n; i++)
            acc[0] += s->cand[i].p;
        sum = acc[0] + acc[1] + acc[2] + acc[3];
    }
    {
        const float inv = (float)(1.0 / sum);
        for (int32_t i = 0; i < n; i++)
            s->cand[i].p *= inv;
    }
    s->probs_valid = true;
}

/* Rescale the probabilities of the current set to sum to 1. */
static void renorm(moe_sampler *s)
{
    double sum = 0.0;
    if (!s->probs_valid)
        return;
    for (int32_t i = 0; i < s->n_cand; i++)
        sum += s->cand[i].p;
    if (sum > 0.0)
        for (int32_t i = 0; i < s->n_cand; i++)
            s->cand[i].p = (float)(s->cand[i].p / sum);
    else
        s->probs_valid = false;
}

/* Keep the prefix cand[0..n) (at least one) and renormalize. */
static void truncate_renorm(moe_sampler *s, int32_t n)
{
    if (n < 1)
        n = 1;
    if (n >= s->n_cand)
        return;
    s->n_cand = n;
    if (s->n_sorted > n)
        s->n_sorted = n;
    renorm(s);
}

/* Record the best SAMPLER_STAGE_CAND candidates after stage st. */
static void snapshot(moe_sampler *s, moe_sampler_stage st)
{
    moe_candidate *out = s->snap[st];
    int32_t n = 0;
    ensure_probs(s);
    if (s->n_sorted >= SAMPLER_STAGE_CAND || s->n_sorted == s->n_cand) {
        n = s->n_cand < SAMPLER_STAGE_CAND ? s->n_cand : SAMPLER_STAGE_CAND;
        memcpy(out, s->cand, (size_t)n * sizeof *out);
    } else {
        /* insertion into a small sorted array; most candidates are rejected
         * by one comparison with the current last entry */
        for (int32_t i = 0; i < s->n_cand; i++) {
            const moe_candidate *c = &s->cand[i];
            int32_t j;
            if (n == SAMPLER_STAGE_CAND && !cand_before(c, &out[n - 1]))
                continue;
            j = n < SAMPLER_STAGE_CAND ? n++ : n - 1;
            while (j > 0 && cand_before(c, &out[j - 1])) {
                out[j] = out[j - 1];
                j--;
            }
            out[j] = *c;
        }
    }
    s->snap_n[st] = n;
}

/* ---- stages ---------------------------------------------------------------- */

static bool penalties_active(const moe_sampler_params *p)
{
    return p->repeat_penalty != 1.0f || p->freq_penalty != 0.0f ||
           p->presence_penalty != 0.0f;
}

static void stage_penalties(moe_sampler *s)
{
    const moe_sampler_params *p = &s->params;
    int32_t n = s->hist_len;
    if (n == 0)
        return;
    for (int32_t i = 0; i < n; i++)
        s->counts[s->hist[i]]++;
    for (int32_t i = 0; i < s->n_cand; i++) {
        moe_candidate *c = &s->cand[i];
        int32_t cnt = s->counts[c->id];
        if (cnt == 0)
            continue;
        if (p->repeat_penalty != 1.0f)
            c->logit = c->logit > 0.0f ? c->logit / p->repeat_penalty
                                       : c->logit * p->repeat_penalty;
        c->logit -= (float)cnt * p->freq_penalty + p->presence_penalty;
    }
    for (int32_t i = 0; i < n; i++)
        s->counts[s->hist[i]] = 0;
    s->n_sorted = 0;
    s->probs_valid = false;
}

static void stage_top_k(moe_sampler *s)
{
    int32_t k = s->params.top_k;
    if (k >= s->n_cand)
        return;
    if (s->n_sorted == 0 && (int64_t)k * 16 <= s->n_cand) {
        /* small k: one pass keeping a heap of the k best (worst at the
         * root); most candidates lose one well-predicted comparison */
        moe_candidate *c = s->cand;
        for (int32_t i = k / 2 - 1; i >= 0; i--)
            cand_sift(c, k, i);
        for (int32_t i = k; i < s->n_cand; i++)
            if (cand_before(&c[i], &c[0])) {
                cand_swap(&c[0], &c[i]);
                cand_sift(c, k, 0);
            }
        cand_heapsort(c, k);
        s->n_cand = k;
        s->n_sorted = k;
    } else if (s->n_sorted < k) {
        cand_select(s->cand + s->n_sorted, s->n_cand - s->n_sorted, k - s->n_sorted);
        s->n_cand = k;
        sort_prefix(s, k);
    } else {
        s->n_cand = k;
        s->n_sorted = k;
    }
    s->probs_valid = false;
}

static void stage_top_p(moe_sampler *s)
{
    const double top_p = s->params.top_p;
    const int32_t ns = s->n_sorted;
    double cum = 0.0;
    int32_t m;
    ensure_probs(s);
    /* through the sorted prefix first, then select by mass in the rest */
    for (int32_t i = 0; i < ns; i++) {
        cum += s->cand[i].p;
        if (cum >= top_p) {
            truncate_renorm(s, i + 1);
            return;
        }
    }
    if (ns == s->n_cand)
        return; /* rounding left the sum short of top_p: keep all */
    m = ns + cand_select_mass(s->cand + ns, s->n_cand - ns, top_p - cum);
    if (m < s->n_cand) {
        s->n_cand = m;
        renorm(s);
    }
}

static void stage_min_p(moe_sampler *s)
{
    float pmax = 0.0f, thresh;
    int32_t n = 0;
    ensure_probs(s);
    if (s->n_sorted > 0)
        pmax = s->cand[0].p;
    else
        for (int32_t i = 0; i < s->n_cand; i++)
            if (s->cand[i].p > pmax)
                pmax = s->cand[i].p;
    thresh = s->params.min_p * pmax;
    /* order-preserving compaction; p grows with the logit, so the kept set
     * is a best-first set and a sorted prefix stays a sorted prefix */
    for (int32_t i = 0; i < s->n_cand; i++)
        if (s->cand[i].p >= thresh)
            s->cand[n++] = s->cand[i];
    if (n < 1)
        n = 1; /* unreachable unless p is all zero; keep the first */
    if (n == s->n_cand)
        return;
    s->n_cand = n;
    if (s->n_sorted > n)
        s->n_sorted = n;
    renorm(s);
}

/* Locally typical sampling: order by |(-log p) - H| (ties: the usual
 * candidate order), keep the smallest such set with mass >= typical_p. */
static void stage_typical_p(moe_sampler *s)
{
    double h = 0.0;
    int32_t n = s->n_cand, keep;
    ensure_probs(s);
    for (int32_t i = 0; i < n; i++) {
        double p = s->cand[i].p;
        if (p > 0.0)
            h -= p * log(p);
    }
    for (int32_t i = 0; i < n; i++) {
        double p = s->cand[i].p;
        s->scored[i].c = s->cand[i];
        s->scored[i].score = p > 0.0 ? fabs(-log(p) - h) : INFINITY;
    }
    keep = scored_select_mass(s->scored, n, s->params.typical_p);
    if (keep >= n)
        return;
    for (int32_t i = 0; i < keep; i++)
        s->cand[i] = s->scored[i].c;
    s->n_cand = keep;
    s->n_sorted = 0;
    renorm(s);
}

static void stage_temp(moe_sampler *s)
{
    float t = s->params.temp;
    if (t == 1.0f)
        return;
    for (int32_t i = 0; i < s->n_cand; i++)
        s->cand[i].logit /= t;
    s->probs_valid = false; /* order is unchanged: n_sorted stays */
}

/* Does stage st do anything with these parameters? */
static bool stage_enabled(const moe_sampler *s, moe_sampler_stage st)
{
    const moe_sampler_params *p = &s->params;
    switch (st) {
    case MOE_STAGE_PENALTIES: return penalties_active(p) && s->hist_cap > 0;
    case MOE_STAGE_TOP_K: return p->top_k > 0;
    case MOE_STAGE_TYPICAL_P: return p->typical_p < 1.0f;
    case MOE_STAGE_TOP_P: return p->top_p < 1.0f;
    case MOE_STAGE_MIN_P: return p->min_p > 0.0f;
    case MOE_STAGE_TEMP: return p->temp > 0.0f;
    case MOE_STAGE_COUNT: break;
    }
    return false;
}

static void run_stage(moe_sampler *s, moe_sampler_stage st)
{
    switch (st) {
    case MOE_STAGE_PENALTIES: stage_penalties(s); break;
    case MOE_STAGE_TOP_K: stage_top_k(s); break;
    case MOE_STAGE_TYPICAL_P: stage_typical_p(s); break;
    case MOE_STAGE_TOP_P: stage_top_p(s); break;
    case MOE_STAGE_MIN_P: stage_min_p(s); break;
    case MOE_STAGE_TEMP: stage_temp(s); break;
    case MOE_STAGE_COUNT: break;
    }
}

/* ---- sampling ------------------------------------------------------------ */

int32_t moe_sampler_sample(moe_sampler *s, const float *logits)
{
    const moe_sampler_params *p;
    bool greedy;
    int32_t n;

    if (!s || !logits)
        return -1;
    p = &s->params;
    greedy = !(p->temp > 0.0f);
    n = s->n_vocab;
    for (int32_t i = 0; i < n; i++) {
        float l = logits[i];
        s->cand[i].id = i;
        s->cand[i].logit = isnan(l) ? -INFINITY : l;
        s->cand[i].p = 0.0f;
    }
    s->n_cand = n;
    s->n_sorted = 0;
    s->probs_valid = false;
    memset(s->snap_n, 0, sizeof s->snap_n);

    for (int32_t i = 0; i < p->n_order; i++) {
        moe_sampler_stage st = p->order[i];
        if (greedy && st != MOE_STAGE_PENALTIES)
            continue;
        if (!stage_enabled(s, st))
            continue;
        run_stage(s, st);
        snapshot(s, st);
    }

    if (greedy) {
        const moe_candidate *best = &s->cand[0];
        for (int32_t i = 1; i < s->n_cand; i++)
            if (cand_before(&s->cand[i], best))
                best = &s->cand[i];
        return best->id;
    }

    ensure_probs(s);
    {
        double u = rng_uniform(s->rng), cum = 0.0, total = 0.0;
        for (int32_t i = 0; i < s->n_cand; i++)
            total += s->cand[i].p;
        u *= total;
        for (int32_t i = 0; i < s->n_cand; i++) {
            cum += s->cand[i].p;
            if (u < cum)
                return s->cand[i].id;
        }
        /* rounding: the last candidate with nonzero probability */
        for (int32_t i = s->n_cand - 1; i > 0; i--)
            if (s->cand[i].p > 0.0f)
                return s->cand[i].id;
        return s->cand[0].id;
    }
}

int32_t moe_sampler_stage_candidates(const moe_sampler *s, moe_sampler_stage st,
                                     moe_candidate *out, int32_t n_max)
{
    int32_t n;
    if (!s || (unsigned)st >= MOE_STAGE_COUNT || !out || n_max <= 0)
        return 0;
    n = s->snap_n[st] < n_max ? s->snap_n[st] : n_max;
    memcpy(out, s->snap[st], (size_t)n * sizeof *out);
    return n;
}
