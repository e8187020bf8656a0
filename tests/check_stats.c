/*
 * check_stats.c - routing statistics (moe_route_stats_*) on a hand-built
 * trace with known answers, worked out by hand in the comments below, plus
 * the statistics of a real traced run on a synthetic MoE model.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "stats.h"
#include "testutil.h"

/*
 * The hand-built trace: 2 layers (layer 0 dense, layer 1 MoE), 4 experts,
 * 3 selection slots (top-2 + a spare).
 *
 *   entry  phase    token  layer-1 probs            selected
 *   T1     prefill  10     .25  .25  .25  .25       0 1
 *   T2     prefill  10     .5   .5   0    0         0 1
 *   T3     prefill  20     1    0    0    0         0 2
 *   T4     prefill  30     0    0    .5   .5        2 3
 *   T5     decode   10     .25  .25  .25  .25       3       (one slot left)
 *
 * Prefill, layer 1 (N = 4):
 *   load = (3, 2, 2, 1), A = 8, load_frac = (3/8, 2/8, 2/8, 1/8)
 *   importance = (1.75, .75, .75, .75), mean_prob = (.4375, .1875, .1875, .1875)
 *   cv2_load: mean 2, deviations (1, 0, 0, -1), var 2/4 = .5 -> .5 / 4 = .125
 *   cv2_importance: mean 1, deviations (.75, -.25, -.25, -.25),
 *     var (.5625 + 3 * .0625) / 4 = .1875 -> .1875 / 1 = .1875
 *   balance = 4 * (3/8 * .4375 + 2/8 * .1875 + 2/8 * .1875 + 1/8 * .1875)
 *           = 4 * .28125 = 1.125
 *   H(e|x) = (ln 4 + ln 2 + 0 + ln 2) / 4 = ln 2
 *   H(e) = H(.4375, .1875, .1875, .1875)
 *        = -(.4375 ln .4375 + 3 * .1875 ln .1875) = 1.3032836...
 *   MI = H(e) - H(e|x) = 0.6101364...
 *   coact: (0,1) 2 [T1, T2], (0,2) 1 [T3], (2,3) 1 [T4], others 0
 *   top tokens of expert 0: 10 x2, 20 x1; of expert 2: 20 x1, 30 x1 (tie,
 *   lower id first)
 * Decode, layer 1 (N = 1): load (0, 0, 0, 1), A = 1;
 *   cv2_load: mean .25, var (3 * .0625 + .5625) / 4 = .1875 -> 3
 *   cv2_importance 0 (all .25); balance = 4 * (1 * .25) = 1;
 *   H(e|x) = H(e) = ln 4, MI = 0
 * All, layer 1 (N = 5): load (3, 2, 2, 2), A = 9; top tokens of expert 3:
 *   10 x1, 30 x1.
 * Layer 0 is dense in every entry: no tokens, all zero.
 */

#define NL 2
#define NE 4
#define NS 3

typedef struct {
    bool prefill;
    int32_t token;
    float p[NE];
    int32_t sel[NS];
} st_row;

static const st_row st_rows[] = {
    {true, 10, {.25f, .25f, .25f, .25f}, {0, 1, -1}},
    {true, 10, {.5f, .5f, 0, 0}, {0, 1, -1}},
    {true, 20, {1, 0, 0, 0}, {0, 2, -1}},
    {true, 30, {0, 0, .5f, .5f}, {2, 3, -1}},
    {false, 10, {.25f, .25f, .25f, .25f}, {3, -1, -1}},
};
#define N_ROWS ((int)(sizeof st_rows / sizeof st_rows[0]))

/* Backing arrays of the hand-built entries. */
static bool st_moe[N_ROWS][NL];
static float st_logits[N_ROWS][NL * NE];
static float st_probs[N_ROWS][NL * NE];
static int32_t st_sel[N_ROWS][NL * NS];
static float st_w[N_ROWS][NL * NS];

static moe_route_stats *st_build(void)
{
    moe_trace_dims d = {.n_layer = NL, .n_expert = NE, .n_sel = NS, .lens_k = 0};
    moe_route_stats *s = NULL;
    ck_assert(moe_route_stats_new(&d, &s) == MOE_OK);
    for (int i = 0; i < N_ROWS; i++) {
        moe_trace_token t;
        memset(&t, 0, sizeof t);
        st_moe[i][0] = false;
        st_moe[i][1] = true;
        for (int j = 0; j < NS; j++) {
            st_sel[i][j] = -1; /* dense layer 0 */
            st_sel[i][NS + j] = st_rows[i].sel[j];
            st_w[i][NS + j] = st_rows[i].sel[j] >= 0 ? 0.5f : 0.0f;
        }
        memcpy(&st_probs[i][NE], st_rows[i].p, sizeof st_rows[i].p);
        t.pos = i;
        t.token = st_rows[i].token;
        t.prefill = st_rows[i].prefill;
        t.layer_moe = st_moe[i];
        t.router_logits = st_logits[i];
        t.router_probs = st_probs[i];
        t.sel = st_sel[i];
        t.sel_w = st_w[i];
        ck_assert(moe_route_stats_add(s, &t) == MOE_OK);
    }
    return s;
}

/* expected layer statistics */
typedef struct {
    int32_t layer;
    moe_phase ph;
    int64_t n_tokens, n_assign;
    double cv2_load, cv2_imp, balance, h_cond, h_marg;
} st_layer_case;

#define LN2 0.69314718055994531
#define HMIX (-(0.4375 * log(0.4375) + 3 * 0.1875 * log(0.1875)))

START_TEST(test_layer_table)
{
    const st_layer_case cases[] = {
        {1, MOE_PHASE_PREFILL, 4, 8, 0.125, 0.1875, 1.125, LN2, HMIX},
        {1, MOE_PHASE_DECODE, 1, 1, 3.0, 0.0, 1.0, 2 * LN2, 2 * LN2},
        {0, MOE_PHASE_PREFILL, 0, 0, 0, 0, 0, 0, 0},
        {0, MOE_PHASE_ALL, 0, 0, 0, 0, 0, 0, 0},
    };
    moe_route_stats *s = st_build();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const st_layer_case *c = &cases[i];
        moe_route_layer_stats ls;
        ck_assert(moe_route_stats_layer(s, c->layer, c->ph, &ls) == MOE_OK);
        ck_assert_int_eq(ls.n_tokens, c->n_tokens);
        ck_assert_int_eq(ls.n_assign, c->n_assign);
        ck_assert_double_eq_tol(ls.cv2_load, c->cv2_load, 1e-9);
        ck_assert_double_eq_tol(ls.cv2_importance, c->cv2_imp, 1e-9);
        ck_assert_double_eq_tol(ls.balance_loss, c->balance, 1e-9);
        ck_assert_double_eq_tol(ls.h_cond, c->h_cond, 1e-7);
        ck_assert_double_eq_tol(ls.h_marg, c->h_marg, 1e-7);
        ck_assert_double_eq_tol(ls.mi, c->h_marg - c->h_cond, 1e-7);
    }
    ck_assert_double_eq_tol(HMIX - LN2, 0.6101364, 1e-6);
    moe_route_stats_free(s);
}
END_TEST

typedef struct {
    moe_phase ph;
    int32_t expert;
    int64_t load;
    double load_frac, importance, mean_prob;
} st_expert_case;

START_TEST(test_expert_table)
{
    const st_expert_case cases[] = {
        {MOE_PHASE_PREFILL, 0, 3, 3.0 / 8, 1.75, 0.4375},
        {MOE_PHASE_PREFILL, 1, 2, 2.0 / 8, 0.75, 0.1875},
        {MOE_PHASE_PREFILL, 3, 1, 1.0 / 8, 0.75, 0.1875},
        {MOE_PHASE_DECODE, 3, 1, 1.0, 0.25, 0.25},
        {MOE_PHASE_DECODE, 0, 0, 0.0, 0.25, 0.25},
        {MOE_PHASE_ALL, 3, 2, 2.0 / 9, 1.0, 0.2},
        {MOE_PHASE_ALL, 0, 3, 3.0 / 9, 2.0, 0.4},
    };
    moe_route_stats *s = st_build();
    moe_route_expert_stats es;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const st_expert_case *c = &cases[i];
        ck_assert(moe_route_stats_expert(s, 1, c->expert, c->ph, &es) == MOE_OK);
        ck_assert_int_eq(es.load, c->load);
        ck_assert_double_eq_tol(es.load_frac, c->load_frac, 1e-9);
        ck_assert_double_eq_tol(es.importance, c->importance, 1e-6);
        ck_assert_double_eq_tol(es.mean_prob, c->mean_prob, 1e-6);
    }
    ck_assert(moe_route_stats_expert(s, 1, 4, MOE_PHASE_ALL, &es) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_stats_expert(s, 2, 0, MOE_PHASE_ALL, &es) == MOE_ERR_INVALID_ARG);
    moe_route_stats_free(s);
}
END_TEST

START_TEST(test_coact_table)
{
    /* prefill co-activation of layer 1; the diagonal is the load */
    static const int64_t want[NE][NE] = {
        {3, 2, 1, 0},
        {2, 2, 0, 0},
        {1, 0, 2, 1},
        {0, 0, 1, 1},
    };
    moe_route_stats *s = st_build();
    for (int a = 0; a < NE; a++)
        for (int b = 0; b < NE; b++)
            ck_assert_int_eq(moe_route_stats_coact(s, 1, a, b, MOE_PHASE_PREFILL), want[a][b]);
    /* the decode token selected one expert: no pairs */
    ck_assert_int_eq(moe_route_stats_coact(s, 1, 3, 2, MOE_PHASE_DECODE), 0);
    ck_assert_int_eq(moe_route_stats_coact(s, 1, 3, 3, MOE_PHASE_ALL), 2);
    ck_assert_int_eq(moe_route_stats_coact(s, 1, 0, 9, MOE_PHASE_ALL), 0);
    moe_route_stats_free(s);
}
END_TEST

typedef struct {
    moe_phase ph;
    int32_t expert, n_max, n_out;
    int32_t ids[3];
    int64_t counts[3];
} st_top_case;

START_TEST(test_top_tokens_table)
{
    const st_top_case cases[] = {
        {MOE_PHASE_PREFILL, 0, 3, 2, {10, 20}, {2, 1}},
        {MOE_PHASE_PREFILL, 0, 1, 1, {10}, {2}},
        {MOE_PHASE_PREFILL, 2, 3, 2, {20, 30}, {1, 1}},
        {MOE_PHASE_PREFILL, 2, 1, 1, {20}, {1}},
        {MOE_PHASE_DECODE, 3, 3, 1, {10}, {1}},
        {MOE_PHASE_ALL, 3, 3, 2, {10, 30}, {1, 1}},
        {MOE_PHASE_ALL, 0, 3, 2, {10, 20}, {2, 1}},
        {MOE_PHASE_DECODE, 0, 3, 0, {0}, {0}},
    };
    moe_route_stats *s = st_build();
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const st_top_case *c = &cases[i];
        int32_t ids[3] = {-7, -7, -7}, n = -1;
        int64_t counts[3] = {0, 0, 0};
        ck_assert(moe_route_stats_top_tokens(s, 1, c->expert, c->ph, c->n_max, ids, counts,
                                             &n) == MOE_OK);
        ck_assert_int_eq(n, c->n_out);
        for (int32_t j = 0; j < n; j++) {
            ck_assert_int_eq(ids[j], c->ids[j]);
            ck_assert_int_eq(counts[j], c->counts[j]);
        }
        if (n < 3)
            ck_assert_int_eq(ids[n], -7); /* nothing written past n */
    }
    moe_route_stats_clear(s);
    {
        moe_route_layer_stats ls;
        int32_t n = -1, ids[1];
        int64_t counts[1];
        ck_assert(moe_route_stats_layer(s, 1, MOE_PHASE_ALL, &ls) == MOE_OK);
        ck_assert_int_eq(ls.n_tokens, 0);
        ck_assert(moe_route_stats_top_tokens(s, 1, 0, MOE_PHASE_ALL, 1, ids, counts, &n) ==
                  MOE_OK);
        ck_assert_int_eq(n, 0);
    }
    moe_route_stats_free(s);
}
END_TEST

START_TEST(test_helpers)
{
    const float p2[2] = {2.0f, 2.0f}, p1[3] = {0.0f, 5.0f, 0.0f};
    const double v[4] = {1, 1, 1, 1}, w[2] = {0, 2}, z[2] = {0, 0};
    ck_assert_double_eq_tol(stats_entropy(p2, 2), LN2, 1e-12); /* normalised */
    ck_assert_double_eq_tol(stats_entropy(p1, 3), 0.0, 1e-12);
    ck_assert_double_eq_tol(stats_cv2(v, 4), 0.0, 1e-12);
    ck_assert_double_eq_tol(stats_cv2(w, 2), 1.0, 1e-12); /* mean 1, var 1 */
    ck_assert_double_eq_tol(stats_cv2(z, 2), 0.0, 1e-12);
    {
        moe_trace_dims bad = {.n_layer = 2, .n_expert = 0, .n_sel = 1};
        moe_route_stats *s = (moe_route_stats *)1;
        ck_assert(moe_route_stats_new(&bad, &s) == MOE_ERR_INVALID_ARG);
        ck_assert(s == NULL);
        moe_route_stats_free(NULL);
    }
}
END_TEST

/* A traced run of a synthetic MoE model: the statistics agree with the
 * trace they came from (loads add up to tokens x top-k, fractions to 1,
 * MI within [0, H(e)]), and prefill and decode land apart. */
START_TEST(test_real_trace)
{
    char path[1024];
    moe_model *m;
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true};
    moe_trace_dims d;
    moe_route_stats *s;
    moe_model_info info;
    int32_t toks[64];
    int32_t n;
    const char *text = "The quick brown fox jumps over the lazy dog again and again.";
    if (!tu_shared(path, sizeof path, "models/synthetic/tiny-olmoe.f32.gguf", "stats_real"))
        return;
    ck_assert(moe_model_load(path, NULL, &m) == MOE_OK);
    moe_model_get_info(m, &info);
    cp.n_ctx = 128;
    cp.n_threads = 1;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_set_trace(c, &tp) == MOE_OK);
    n = moe_tokenize(m, text, strlen(text), toks, 64, true, false);
    ck_assert_int_gt(n, 5);
    ck_assert(moe_ctx_decode(c, toks, n - 3, false) == MOE_OK);
    for (int32_t i = n - 3; i < n; i++)
        ck_assert(moe_ctx_decode(c, &toks[i], 1, false) == MOE_OK);
    d = moe_ctx_trace_dims(c);
    ck_assert(moe_route_stats_new(&d, &s) == MOE_OK);
    ck_assert(moe_route_stats_add_trace(s, c) == MOE_OK);
    for (int32_t il = 0; il < info.n_layer; il++) {
        moe_route_layer_stats pre, dec, all;
        double frac = 0.0;
        int64_t load = 0;
        ck_assert(moe_route_stats_layer(s, il, MOE_PHASE_PREFILL, &pre) == MOE_OK);
        ck_assert(moe_route_stats_layer(s, il, MOE_PHASE_DECODE, &dec) == MOE_OK);
        ck_assert(moe_route_stats_layer(s, il, MOE_PHASE_ALL, &all) == MOE_OK);
        ck_assert_int_eq(pre.n_tokens, n - 3);
        ck_assert_int_eq(dec.n_tokens, 3);
        ck_assert_int_eq(all.n_tokens, n);
        ck_assert_int_eq(all.n_assign, (int64_t)n * info.n_expert_used);
        ck_assert(all.mi >= -1e-9 && all.mi <= all.h_marg + 1e-9);
        ck_assert(all.h_marg <= log((double)info.n_expert) + 1e-9);
        for (int32_t e = 0; e < info.n_expert; e++) {
            moe_route_expert_stats es;
            ck_assert(moe_route_stats_expert(s, il, e, MOE_PHASE_ALL, &es) == MOE_OK);
            frac += es.load_frac;
            load += es.load;
        }
        ck_assert_double_eq_tol(frac, 1.0, 1e-9);
        ck_assert_int_eq(load, all.n_assign);
    }
    moe_route_stats_free(s);
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

Suite *stats_suite(void);
Suite *stats_suite(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("hand_built");
    tcase_add_test(tc, test_layer_table);
    tcase_add_test(tc, test_expert_table);
    tcase_add_test(tc, test_coact_table);
    tcase_add_test(tc, test_top_tokens_table);
    tcase_add_test(tc, test_helpers);
    suite_add_tcase(s, tc);
    tc = tcase_create("traced");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_real_trace);
    suite_add_tcase(s, tc);
    return s;
}
