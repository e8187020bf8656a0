/*
 * check_sampler.c - the sampler chain: each stage on hand-made logits with
 * exactly known survivors, greedy tie-break, penalty arithmetic, stage
 * order, seeded determinism, a chi-square check of the draw, order parsing.
 * Uses only the public sampler API of moe.h.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"

/* A sampler with every stage off, temp 1, and only the stages in spec. */
static moe_sampler *mk(moe_sampler_params *p, const char *spec, int32_t n_vocab)
{
    moe_sampler *s = NULL;
    ck_assert_int_eq(moe_sampler_parse_order(spec, p), MOE_OK);
    ck_assert_int_eq(moe_sampler_new(p, n_vocab, &s), MOE_OK);
    ck_assert_ptr_nonnull(s);
    return s;
}

static moe_sampler_params plain(void)
{
    moe_sampler_params p = moe_sampler_default_params();
    p.temp = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.typical_p = 1.0f;
    p.repeat_penalty = 1.0f;
    p.freq_penalty = 0.0f;
    p.presence_penalty = 0.0f;
    p.seed = 1234;
    return p;
}

/* Ids left after stage st, best first, as a compact string like "1,3". */
static const char *survivors(const moe_sampler *s, moe_sampler_stage st)
{
    static char buf[256];
    moe_candidate c[16];
    int32_t n = moe_sampler_stage_candidates(s, st, c, 16);
    size_t off = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%d", i ? "," : "",
                                (int)c[i].id);
    return buf;
}

static void probs_to_logits(const double *pr, float *l, int n)
{
    for (int i = 0; i < n; i++)
        l[i] = (float)log(pr[i]);
}

START_TEST(test_top_k)
{
    moe_sampler_params p = plain();
    const float logits[5] = { 1, 5, 3, 4, 2 };
    moe_candidate c[16];
    moe_sampler *s;
    p.top_k = 2;
    s = mk(&p, "top_k", 5);
    moe_sampler_sample(s, logits);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_K), "1,3");
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TOP_K, c, 16), 2);
    ck_assert_float_eq(c[0].logit, 5.0f);
    ck_assert_float_eq(c[1].logit, 4.0f);
    /* probabilities renormalized over the survivors */
    ck_assert_double_eq_tol(c[0].p, 1.0 / (1.0 + exp(-1.0)), 1e-6);
    ck_assert_double_eq_tol(c[0].p + c[1].p, 1.0, 1e-6);
    /* n_max limits the copy; stages that did not run report nothing */
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TOP_K, c, 1), 1);
    ck_assert_int_eq(c[0].id, 1);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TOP_P, c, 16), 0);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TEMP, c, 16), 0);
    /* k = 1 always picks the best */
    moe_sampler_free(s);
    p.top_k = 1;
    s = mk(&p, "top_k,temp", 5);
    for (int i = 0; i < 20; i++)
        ck_assert_int_eq(moe_sampler_sample(s, logits), 1);
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_top_k_large)
{
    /* partial selection on a big vocabulary agrees with a full ranking */
    enum { N = 50000 };
    float *l = malloc(N * sizeof *l);
    moe_sampler_params p = plain();
    moe_candidate c[16];
    moe_sampler *s;
    uint32_t x = 12345;
    ck_assert_ptr_nonnull(l);
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        l[i] = (float)(x >> 8) / (float)(1u << 24) * 20.0f - 10.0f;
    }
    l[777] = 50.0f;
    l[778] = 50.0f; /* tie: lower id first */
    l[10] = 49.0f;
    p.top_k = 40;
    s = mk(&p, "top_k", N);
    moe_sampler_sample(s, l);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TOP_K, c, 16), 16);
    ck_assert_int_eq(c[0].id, 777);
    ck_assert_int_eq(c[1].id, 778);
    ck_assert_int_eq(c[2].id, 10);
    for (int i = 3; i < 16; i++) {
        /* c[i] must have exactly i larger (or tied lower-id) logits */
        int rank = 0;
        for (int j = 0; j < N; j++)
            if (l[j] > c[i].logit || (l[j] == c[i].logit && j < c[i].id))
                rank++;
        ck_assert_int_eq(rank, i);
        ck_assert_float_eq(c[i].logit, l[c[i].id]);
    }
    moe_sampler_free(s);

    /* a k the snapshot shows whole: exactly the k best, best first */
    p.top_k = 10;
    s = mk(&p, "top_k", N);
    moe_sampler_sample(s, l);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TOP_K, c, 16), 10);
    ck_assert_int_eq(c[0].id, 777);
    for (int i = 1; i < 10; i++)
        ck_assert(c[i].logit < c[i - 1].logit ||
                  (c[i].logit == c[i - 1].logit && c[i].id > c[i - 1].id));
    {
        int above = 0; /* logits strictly better than the 10th */
        for (int j = 0; j < N; j++)
            above += l[j] > c[9].logit || (l[j] == c[9].logit && j < c[9].id);
        ck_assert_int_eq(above, 9);
    }
    moe_sampler_free(s);

    /* top_p alone on the big vocabulary keeps the exact prefix */
    p = plain();
    p.top_p = 0.5f;
    s = mk(&p, "top_p", N);
    moe_sampler_sample(s, l);
    {
        int32_t n = moe_sampler_stage_candidates(s, MOE_STAGE_TOP_P, c, 16);
        ck_assert_int_eq(n, 2); /* 777 and 778 together hold > 50% */
        ck_assert_int_eq(c[0].id, 777);
        ck_assert_int_eq(c[1].id, 778);
    }
    moe_sampler_free(s);
    free(l);
}
END_TEST

START_TEST(test_top_p)
{
    const double pr[4] = { 0.1, 0.4, 0.2, 0.3 };
    float l[4];
    moe_sampler_params p = plain();
    moe_sampler *s;
    probs_to_logits(pr, l, 4);
    p.top_p = 0.65f;
    s = mk(&p, "top_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_P), "1,3");
    moe_sampler_free(s);
    p.top_p = 0.75f;
    s = mk(&p, "top_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_P), "1,3,2");
    moe_sampler_free(s);
    p.top_p = 0.01f; /* at least one survives */
    s = mk(&p, "top_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_P), "1");
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_min_p)
{
    const double pr[4] = { 0.1, 0.4, 0.2, 0.3 };
    float l[4];
    moe_candidate c[16];
    moe_sampler_params p = plain();
    moe_sampler *s;
    probs_to_logits(pr, l, 4);
    p.min_p = 0.6f; /* threshold 0.24 */
    s = mk(&p, "min_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_MIN_P), "1,3");
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_MIN_P, c, 16), 2);
    ck_assert_double_eq_tol(c[0].p, 0.4 / 0.7, 1e-6);
    moe_sampler_free(s);
    p.min_p = 0.4f; /* threshold 0.16 */
    s = mk(&p, "min_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_MIN_P), "1,3,2");
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_typical_p)
{
    /* H = 1.75 ln2; |-log p - H| = 0.75, 0.25, 1.25, 1.25 (x ln2) */
    const double pr[4] = { 0.5, 0.25, 0.125, 0.125 };
    float l[4];
    moe_sampler_params p = plain();
    moe_sampler *s;
    probs_to_logits(pr, l, 4);
    p.typical_p = 0.2f;
    s = mk(&p, "typical_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TYPICAL_P), "1");
    moe_sampler_free(s);
    p.typical_p = 0.3f; /* 0.25 < 0.3: the most probable comes in too */
    s = mk(&p, "typical_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TYPICAL_P), "0,1");
    moe_sampler_free(s);
    p.typical_p = 0.8f; /* next: the tie 2/3 goes to the lower id */
    s = mk(&p, "typical_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TYPICAL_P), "0,1,2");
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_temp)
{
    const float l[3] = { 1, 2, 3 };
    moe_candidate c[16];
    moe_sampler_params p = plain();
    moe_sampler *s;
    p.temp = 0.5f;
    s = mk(&p, "temp", 3);
    moe_sampler_sample(s, l);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_TEMP, c, 16), 3);
    ck_assert_int_eq(c[0].id, 2);
    ck_assert_float_eq(c[0].logit, 6.0f);
    ck_assert_float_eq(c[1].logit, 4.0f);
    ck_assert_float_eq(c[2].logit, 2.0f);
    {
        double z = exp(6.0) + exp(4.0) + exp(2.0);
        ck_assert_double_eq_tol(c[0].p, exp(6.0) / z, 1e-6);
        ck_assert_double_eq_tol(c[2].p, exp(2.0) / z, 1e-6);
    }
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_greedy)
{
    const float l[4] = { 1, 3, 3, 2 };
    float l2[4] = { -1, -1, -1, -1 };
    moe_sampler_params p = moe_sampler_default_params();
    moe_sampler *s;
    p.temp = 0.0f;
    s = mk(&p, "penalties,top_k,typical_p,top_p,min_p,temp", 4);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(moe_sampler_sample(s, l), 1);
    ck_assert_int_eq(moe_sampler_sample(s, l2), 0);
    moe_sampler_free(s);
    /* greedy is argmax after penalties: penalizing 1 makes 2 win */
    p.repeat_penalty = 2.0f;
    s = mk(&p, "penalties,top_k,temp", 4);
    moe_sampler_accept(s, 1);
    ck_assert_int_eq(moe_sampler_sample(s, l), 2);
    moe_sampler_accept(s, 2); /* both 1 and 2 at 1.5: 3 (2.0) wins */
    ck_assert_int_eq(moe_sampler_sample(s, l), 3);
    moe_sampler_reset(s);
    ck_assert_int_eq(moe_sampler_sample(s, l), 1);
    moe_sampler_free(s);
    /* negative temp is greedy too */
    p = plain();
    p.temp = -1.0f;
    s = mk(&p, "temp", 4);
    ck_assert_int_eq(moe_sampler_sample(s, l), 1);
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_penalties)
{
    const float l[4] = { 2.0f, -2.0f, 1.0f, 0.5f };
    moe_candidate c[16];
    moe_sampler_params p = plain();
    moe_sampler *s;
    p.repeat_penalty = 2.0f;
    p.freq_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.penalty_last_n = 64;
    s = mk(&p, "penalties", 4);
    moe_sampler_accept(s, 0);
    moe_sampler_accept(s, 1);
    moe_sampler_accept(s, 0);
    moe_sampler_accept(s, 2);
    moe_sampler_sample(s, l);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_PENALTIES, c, 16), 4);
    /* 3: untouched 0.5; 0: 2/2 - (2*0.5+0.25) = -0.25; 2: 1/2 - 0.75 =
     * -0.25 (tie, higher id); 1: -2*2 - 0.75 = -4.75 */
    ck_assert_int_eq(c[0].id, 3);
    ck_assert_float_eq(c[0].logit, 0.5f);
    ck_assert_int_eq(c[1].id, 0);
    ck_assert_float_eq(c[1].logit, -0.25f);
    ck_assert_int_eq(c[2].id, 2);
    ck_assert_float_eq(c[2].logit, -0.25f);
    ck_assert_int_eq(c[3].id, 1);
    ck_assert_float_eq(c[3].logit, -4.75f);
    moe_sampler_free(s);

    /* the window: only the last 2 accepted tokens count */
    p.penalty_last_n = 2;
    p.freq_penalty = 1.0f;
    p.presence_penalty = 0.0f;
    p.repeat_penalty = 1.0f;
    s = mk(&p, "penalties", 4);
    moe_sampler_accept(s, 3);
    moe_sampler_accept(s, 3);
    moe_sampler_accept(s, 3);
    moe_sampler_accept(s, 0);
    moe_sampler_sample(s, l);
    ck_assert_int_eq(moe_sampler_stage_candidates(s, MOE_STAGE_PENALTIES, c, 16), 4);
    ck_assert_int_eq(c[0].id, 0);
    ck_assert_float_eq(c[0].logit, 1.0f);   /* 2 - 1*1 */
    ck_assert_int_eq(c[1].id, 2);
    ck_assert_int_eq(c[2].id, 3);
    ck_assert_float_eq(c[2].logit, -0.5f);  /* 0.5 - 1*1, not 3 */
    /* the caller's logits are not modified */
    ck_assert_float_eq(l[0], 2.0f);
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_order_matters)
{
    /* top_k(2) first renormalizes {0.4, 0.3} to {0.571, 0.429}, so top_p
     * 0.55 keeps one; top_p first keeps two (0.4 < 0.55 <= 0.7) */
    const double pr[4] = { 0.4, 0.3, 0.2, 0.1 };
    float l[4];
    moe_sampler_params p = plain();
    moe_sampler *s;
    probs_to_logits(pr, l, 4);
    p.top_k = 2;
    p.top_p = 0.55f;
    s = mk(&p, "top_k,top_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_K), "0,1");
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_P), "0");
    moe_sampler_free(s);
    s = mk(&p, "top_p,top_k", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_P), "0,1");
    ck_assert_str_eq(survivors(s, MOE_STAGE_TOP_K), "0,1");
    moe_sampler_free(s);

    /* temp before min_p sharpens the distribution and drops more */
    p = plain();
    p.temp = 0.25f;
    p.min_p = 0.3f;
    s = mk(&p, "min_p,temp", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_TEMP), "0,1,2");
    moe_sampler_free(s);
    s = mk(&p, "temp,min_p", 4);
    moe_sampler_sample(s, l);
    ck_assert_str_eq(survivors(s, MOE_STAGE_MIN_P), "0,1");
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_determinism)
{
    enum { NV = 100, NS = 300 };
    float l[NV];
    int32_t a[NS], b[NS];
    moe_sampler_params p = moe_sampler_default_params();
    moe_sampler *s1, *s2;
    int differ = 0;
    for (int i = 0; i < NV; i++)
        l[i] = (float)sin(i * 0.37) * 2.0f;
    p.seed = 42;
    p.top_k = 0;
    p.min_p = 0.0f;
    p.top_p = 1.0f;
    p.temp = 1.5f;
    ck_assert_int_eq(moe_sampler_new(&p, NV, &s1), MOE_OK);
    ck_assert_int_eq(moe_sampler_new(&p, NV, &s2), MOE_OK);
    for (int i = 0; i < NS; i++) {
        a[i] = moe_sampler_sample(s1, l);
        b[i] = moe_sampler_sample(s2, l);
        ck_assert_int_eq(a[i], b[i]);
        ck_assert(a[i] >= 0 && a[i] < NV);
    }
    moe_sampler_reset(s1);
    for (int i = 0; i < NS; i++)
        ck_assert_int_eq(moe_sampler_sample(s1, l), a[i]);
    moe_sampler_free(s2);
    p.seed = 43;
    ck_assert_int_eq(moe_sampler_new(&p, NV, &s2), MOE_OK);
    for (int i = 0; i < NS; i++)
        differ += moe_sampler_sample(s2, l) != a[i];
    ck_assert_int_gt(differ, NS / 2);
    moe_sampler_free(s1);
    moe_sampler_free(s2);
}
END_TEST

START_TEST(test_distribution)
{
    /* 20000 draws from {0.1, 0.2, 0.3, 0.4}; chi-square with 3 degrees of
     * freedom must stay under 16.27 (p = 0.001). Fixed seed: deterministic. */
    enum { N = 20000 };
    const double pr[4] = { 0.1, 0.2, 0.3, 0.4 };
    float l[4];
    int cnt[4] = { 0 };
    double chi2 = 0.0;
    moe_sampler_params p = plain();
    moe_sampler *s;
    probs_to_logits(pr, l, 4);
    s = mk(&p, "penalties,top_k,typical_p,top_p,min_p,temp", 4);
    for (int i = 0; i < N; i++) {
        int32_t t = moe_sampler_sample(s, l);
        ck_assert(t >= 0 && t < 4);
        cnt[t]++;
    }
    for (int i = 0; i < 4; i++) {
        double e = pr[i] * N;
        chi2 += (cnt[i] - e) * (cnt[i] - e) / e;
    }
    ck_assert_msg(chi2 < 16.27, "chi2 %.2f counts %d %d %d %d", chi2, cnt[0],
                  cnt[1], cnt[2], cnt[3]);
    moe_sampler_free(s);

    /* temperature 2 flattens: p ~ sqrt(pr), id 0 gets clearly more than 10% */
    memset(cnt, 0, sizeof cnt);
    p.temp = 2.0f;
    s = mk(&p, "temp", 4);
    for (int i = 0; i < N; i++)
        cnt[moe_sampler_sample(s, l)]++;
    {
        double z = sqrt(0.1) + sqrt(0.2) + sqrt(0.3) + sqrt(0.4);
        double e0 = sqrt(0.1) / z * N; /* ~3300 */
        ck_assert_msg(fabs(cnt[0] - e0) < 5.0 * sqrt(e0), "count %d vs %.0f",
                      cnt[0], e0);
    }
    moe_sampler_free(s);
}
END_TEST


/* Reference: softmax of l (length n) in double, ids sorted best first. */
static const float *ref_l;
static int ref_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (ref_l[x] != ref_l[y])
        return ref_l[x] > ref_l[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

START_TEST(test_large_sets)
{
    /* 5000 candidates, 12 dominant ones scattered: the mass selection runs
     * its partition loop, and the survivors fit in a 16-entry snapshot */
    enum { N = 5000, NS = 12 };
    static float l[N];
    static int32_t order[N];
    static double pr[N];
    const int32_t special[NS] = { 4999, 17, 2500, 3, 1234, 777, 4096, 42, 3000, 999, 1, 2222 };
    const float top_ps[] = { 0.2f, 0.45f, 0.7f, 0.9f, 0.97f };
    double z = 0.0, mx;
    uint32_t x = 99;
    for (int i = 0; i < N; i++) {
        x = x * 1664525u + 1013904223u;
        l[i] = -6.0f + (float)(x >> 8) / (float)(1u << 24);
    }
    for (int i = 0; i < NS; i++)
        l[special[i]] = 10.0f - 0.4f * (float)i;
    ref_l = l;
    for (int i = 0; i < N; i++)
        order[i] = i;
    qsort(order, N, sizeof order[0], ref_cmp);
    mx = l[order[0]];
    for (int i = 0; i < N; i++)
        z += exp(l[i] - mx);
    for (int i = 0; i < N; i++)
        pr[i] = exp(l[i] - mx) / z;
    for (size_t t = 0; t < sizeof top_ps / sizeof top_ps[0]; t++) {
        moe_sampler_params p = plain();
        moe_sampler *s;
        moe_candidate c[16];
        double cum = 0.0;
        int m = 0, n;
        while (cum < top_ps[t])
            cum += pr[order[m++]];
        ck_assert_int_le(m, 16);
        p.top_p = top_ps[t];
        s = mk(&p, "top_p,temp", N);
        for (int k = 0; k < 500; k++) {
            int32_t id = moe_sampler_sample(s, l);
            int rank = -1;
            for (int j = 0; j < m; j++)
                if (order[j] == id)
                    rank = j;
            ck_assert_msg(rank >= 0, "top_p %.2f sampled %d outside the %d survivors",
                          top_ps[t], id, m);
        }
        n = moe_sampler_stage_candidates(s, MOE_STAGE_TOP_P, c, 16);
        ck_assert_int_eq(n, m);
        for (int j = 0; j < n; j++)
            ck_assert_int_eq(c[j].id, order[j]);
        moe_sampler_free(s);

        /* typical_p on the same set keeps a set of exactly the target mass
         * ordered by |-log p - H|; check it against the reference */
        p = plain();
        p.typical_p = top_ps[t];
        s = mk(&p, "typical_p", N);
        moe_sampler_sample(s, l);
        {
            double h = 0.0, acc = 0.0;
            static int32_t byscore[N];
            static double score[N];
            int want = 0;
            for (int i = 0; i < N; i++)
                h -= pr[i] > 0 ? pr[i] * log(pr[i]) : 0.0;
            for (int i = 0; i < N; i++) {
                score[i] = fabs(-log(pr[i]) - h);
                byscore[i] = i;
            }
            /* selection sort of the first few by score is enough */
            for (int i = 0; i < 20; i++)
                for (int j = i + 1; j < N; j++)
                    if (score[byscore[j]] < score[byscore[i]]) {
                        int32_t tmp = byscore[i];
                        byscore[i] = byscore[j];
                        byscore[j] = tmp;
                    }
            while (acc < top_ps[t] && want < 20)
                acc += pr[byscore[want++]];
            n = moe_sampler_stage_candidates(s, MOE_STAGE_TYPICAL_P, c, 16);
            if (want <= 16) {
                ck_assert_int_eq(n, want);
                for (int j = 0; j < n; j++) {
                    bool found = false;
                    for (int k = 0; k < want; k++)
                        found |= byscore[k] == c[j].id;
                    ck_assert_msg(found, "typical %.2f kept %d", top_ps[t], c[j].id);
                }
            }
        }
        moe_sampler_free(s);
    }
}
END_TEST

START_TEST(test_deep_top_p)
{
    /* p_i ~ exp(-0.003 rank) over 5000 shuffled ids: top_p 0.5 keeps a few
     * hundred. Every draw must rank inside the kept set, and the last kept
     * one must come up too (each is drawn ~15 times in 10000). */
    enum { N = 5000, DRAWS = 10000 };
    static float l[N];
    static int32_t rank_of[N];
    const double top_p = 0.5;
    double z = 0.0, cum = 0.0, prev = 0.0;
    int m = 0, max_rank = -1, last_seen = 0;
    moe_sampler_params p = plain();
    moe_sampler *s;
    for (int r = 0; r < N; r++) {
        int id = (int)(((int64_t)r * 2713) % N); /* 2713 is coprime to N */
        l[id] = -0.003f * (float)r;
        rank_of[id] = r;
    }
    for (int r = 0; r < N; r++)
        z += exp(-0.003 * (float)r);
    while (cum < top_p) {
        prev = cum;
        cum += exp(-0.003 * (float)m++) / z;
    }
    /* the boundary is far from rounding trouble */
    ck_assert(cum - top_p > 1e-5 && top_p - prev > 1e-5);
    ck_assert_int_gt(m, 100);
    p.top_p = (float)top_p;
    s = mk(&p, "top_p,temp", N);
    for (int i = 0; i < DRAWS; i++) {
        int r = rank_of[moe_sampler_sample(s, l)];
        if (r > max_rank)
            max_rank = r;
        last_seen += r == m - 1;
    }
    ck_assert_msg(max_rank == m - 1, "kept ranks up to %d, expected %d", max_rank,
                  m - 1);
    ck_assert_int_gt(last_seen, 0);
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_banned_tokens)
{
    /* -inf logits are never drawn; NaN counts as -inf; all -inf is uniform */
    float l[6] = { -INFINITY, 0.0f, -INFINITY, 0.5f, NAN, -INFINITY };
    float all[3] = { -INFINITY, -INFINITY, -INFINITY };
    moe_sampler_params p = plain();
    moe_sampler *s;
    int seen[3] = { 0 };
    s = mk(&p, "top_p,min_p,temp", 6);
    for (int i = 0; i < 2000; i++) {
        int32_t t = moe_sampler_sample(s, l);
        ck_assert_msg(t == 1 || t == 3, "drew %d", t);
    }
    moe_sampler_free(s);
    s = mk(&p, "temp", 3);
    for (int i = 0; i < 300; i++)
        seen[moe_sampler_sample(s, all)]++;
    ck_assert(seen[0] > 50 && seen[1] > 50 && seen[2] > 50);
    moe_sampler_free(s);
}
END_TEST

START_TEST(test_parse_order)
{
    moe_sampler_params p = moe_sampler_default_params();
    moe_sampler_params keep;
    moe_sampler *s = NULL;
    ck_assert_int_eq(moe_sampler_parse_order("temp, min_p,top-k", &p), MOE_OK);
    ck_assert_int_eq(p.n_order, 3);
    ck_assert_int_eq(p.order[0], MOE_STAGE_TEMP);
    ck_assert_int_eq(p.order[1], MOE_STAGE_MIN_P);
    ck_assert_int_eq(p.order[2], MOE_STAGE_TOP_K);
    ck_assert_int_eq(moe_sampler_parse_order(
                         "penalties,top_k,typical_p,top_p,min_p,temp", &p), MOE_OK);
    ck_assert_int_eq(p.n_order, MOE_STAGE_COUNT);
    for (int i = 0; i < MOE_STAGE_COUNT; i++)
        ck_assert_str_eq(moe_sampler_stage_name(p.order[i]),
                         moe_sampler_stage_name(moe_sampler_default_params().order[i]));

    keep = p;
    ck_assert_int_eq(moe_sampler_parse_order("top_k,bogus,temp", &p),
                     MOE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "'bogus'"));
    ck_assert_int_eq(memcmp(&p, &keep, sizeof p), 0);
    ck_assert_int_eq(moe_sampler_parse_order("top_k,,temp", &p), MOE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "position 2"));
    ck_assert_int_eq(moe_sampler_parse_order("top_k,temp,top_k", &p),
                     MOE_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "top_k"));
    ck_assert_int_eq(moe_sampler_parse_order("", &p), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_sampler_parse_order("top_k,", &p), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(memcmp(&p, &keep, sizeof p), 0);
    ck_assert_str_eq(moe_sampler_stage_name(MOE_STAGE_TYPICAL_P), "typical_p");

    /* bad parameters are refused by moe_sampler_new */
    p.n_order = 2;
    p.order[0] = MOE_STAGE_TEMP;
    p.order[1] = MOE_STAGE_TEMP;
    ck_assert_int_eq(moe_sampler_new(&p, 10, &s), MOE_ERR_INVALID_ARG);
    ck_assert_ptr_null(s);
    p = moe_sampler_default_params();
    ck_assert_int_eq(moe_sampler_new(&p, 0, &s), MOE_ERR_INVALID_ARG);
    p.penalty_last_n = -5;
    ck_assert_int_eq(moe_sampler_new(&p, 10, &s), MOE_ERR_INVALID_ARG);
    moe_sampler_free(NULL);
}
END_TEST

Suite *sampler_suite(void);
Suite *sampler_suite(void)
{
    Suite *su = suite_create("sampler");
    TCase *tc = tcase_create("sampler");
    tcase_add_test(tc, test_top_k);
    tcase_add_test(tc, test_top_k_large);
    tcase_add_test(tc, test_top_p);
    tcase_add_test(tc, test_min_p);
    tcase_add_test(tc, test_typical_p);
    tcase_add_test(tc, test_temp);
    tcase_add_test(tc, test_greedy);
    tcase_add_test(tc, test_penalties);
    tcase_add_test(tc, test_order_matters);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_distribution);
    tcase_add_test(tc, test_large_sets);
    tcase_add_test(tc, test_deep_top_p);
    tcase_add_test(tc, test_banned_tokens);
    tcase_add_test(tc, test_parse_order);
    suite_add_tcase(su, tc);
    return su;
}
