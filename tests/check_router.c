/*
 * check_router.c - the router lab on the synthetic MoE models of ../shared:
 * steering (ban, force, top-k, temperature, scale) seen exactly in traces
 * and logits, the default path staying bit-identical, simulated capacity
 * with the Rectify-Router treatments (identities of the counters, outputs
 * that change), counterfactual re-evaluation leaving the context as it was,
 * logit comparison on hand-computed cases, and bad calls.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "moe.h"
#include "testutil.h"

#define MIXTRAL "models/synthetic/tiny-mixtral.f32.gguf"
#define QWEN2MOE "models/synthetic/tiny-qwen2moe.f32.gguf"
#define OLMOE "models/synthetic/tiny-olmoe.f32.gguf"
#define STORIES "models/real/stories260K.gguf"

/* A fixed English text of roughly 150-200 tokens for the tiny models. */
static const char rt_text[] =
    "Once upon a time there was a little girl who lived in a village near the "
    "forest. Whenever she went out, the little girl wore a red riding cloak, so "
    "everyone in the village called her Little Red Riding Hood. One morning she "
    "asked her mother if she could go to visit her grandmother, as it had been "
    "a while since they had seen each other. That is a good idea, her mother "
    "said. So they packed a nice basket for her to take to her grandmother.";

typedef struct {
    moe_model *model;
    int32_t toks[512];
    int32_t n;
    int32_t n_vocab;
    int32_t n_layer;
    int32_t n_expert;
    int32_t k;
} rt_fix;

static bool rt_open(rt_fix *f, const char *rel, const char *test)
{
    char path[1024];
    moe_model_info info;
    memset(f, 0, sizeof *f);
    if (!tu_shared(path, sizeof path, rel, test))
        return false;
    ck_assert(moe_model_load(path, NULL, &f->model) == MOE_OK);
    moe_model_get_info(f->model, &info);
    f->n_vocab = info.n_vocab;
    f->n_layer = info.n_layer;
    f->n_expert = info.n_expert;
    f->k = info.n_expert_used;
    f->n = moe_tokenize(f->model, rt_text, strlen(rt_text), f->toks, 512, true, false);
    ck_assert_int_gt(f->n, 100);
    if (f->n > 200)
        f->n = 200;
    return true;
}

static moe_ctx *rt_ctx(const rt_fix *f, int32_t n_batch, int32_t max_top_k)
{
    moe_ctx *c = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    cp.n_ctx = 256;
    cp.n_batch = n_batch;
    cp.n_threads = 1;
    cp.max_top_k = max_top_k;
    ck_assert(moe_ctx_new(f->model, &cp, &c) == MOE_OK);
    return c;
}

static void rt_trace_on(moe_ctx *c)
{
    moe_trace_params tp = {.on = true, .lens_k = 0, .max_tokens = 0};
    ck_assert(moe_ctx_set_trace(c, &tp) == MOE_OK);
}

/* Decode all tokens from position 0 keeping all logits; copy them out
 * ([n][n_vocab], malloc'd) and return the summed next-token NLL. */
static double rt_eval(moe_ctx *c, const rt_fix *f, float **logits_out)
{
    double nll = 0.0;
    float *all = malloc((size_t)f->n * (size_t)f->n_vocab * sizeof *all);
    ck_assert(all != NULL);
    moe_ctx_truncate(c, 0);
    ck_assert(moe_ctx_decode(c, f->toks, f->n, true) == MOE_OK);
    for (int32_t i = 0; i < f->n; i++) {
        const float *l = moe_ctx_logits(c, i);
        double mx = -INFINITY, s = 0.0;
        ck_assert(l != NULL);
        memcpy(all + (size_t)i * f->n_vocab, l, (size_t)f->n_vocab * sizeof *l);
        if (i + 1 == f->n)
            break;
        for (int32_t v = 0; v < f->n_vocab; v++)
            mx = l[v] > mx ? l[v] : mx;
        for (int32_t v = 0; v < f->n_vocab; v++)
            s += exp(l[v] - mx);
        nll -= l[f->toks[i + 1]] - mx - log(s);
    }
    if (logits_out)
        *logits_out = all;
    else
        free(all);
    return nll;
}

static bool rt_same(const float *a, const float *b, size_t n)
{
    return memcmp(a, b, n * sizeof *a) == 0;
}

/* ---- default path --------------------------------------------------------- */

/* A context whose router lab exists but is idle (steering set and lifted,
 * reset, capacity 0) gives the very same logits as one never steered. */
START_TEST(test_default_bit_identical)
{
    static const char *const models[] = {MIXTRAL, QWEN2MOE, OLMOE};
    rt_fix f;
    moe_ctx *a, *b;
    float *la, *lb;
    moe_capacity_params cp = {0};
    if (!rt_open(&f, models[_i], "default_bit_identical"))
        return;
    a = rt_ctx(&f, 64, 0);
    b = rt_ctx(&f, 64, 0);
    ck_assert(moe_route_ban(b, -1, 1, true) == MOE_OK);
    ck_assert(moe_route_set_temperature(b, 0, 3.0f) == MOE_OK);
    ck_assert(moe_route_ban(b, -1, 1, false) == MOE_OK);
    ck_assert(moe_route_set_temperature(b, 0, 1.0f) == MOE_OK);
    ck_assert(moe_route_set_capacity(b, &cp) == MOE_OK);
    rt_eval(a, &f, &la);
    rt_eval(b, &f, &lb);
    ck_assert(rt_same(la, lb, (size_t)f.n * f.n_vocab));
    free(lb);
    /* steering changes logits; reset brings the same logits back */
    ck_assert(moe_route_force(b, -1, 3, true) == MOE_OK);
    rt_eval(b, &f, &lb);
    ck_assert(!rt_same(la, lb, (size_t)f.n * f.n_vocab));
    free(lb);
    moe_route_reset(b);
    rt_eval(b, &f, &lb);
    ck_assert(rt_same(la, lb, (size_t)f.n * f.n_vocab));
    free(la);
    free(lb);
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(f.model);
}
END_TEST

/* ---- steering ------------------------------------------------------------ */

/* Sum over the trace of "expert e selected at MoE layer il". */
static int64_t rt_count_sel(moe_ctx *c, int32_t il, int32_t e, int32_t *n_tok)
{
    moe_trace_dims d = moe_ctx_trace_dims(c);
    int64_t hits = 0;
    *n_tok = moe_ctx_trace_count(c);
    for (int32_t i = 0; i < *n_tok; i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        for (int32_t j = 0; j < d.n_sel; j++)
            hits += t->sel[(size_t)il * d.n_sel + j] == e;
    }
    return hits;
}

START_TEST(test_ban_force)
{
    rt_fix f;
    moe_ctx *c;
    int32_t n_tok;
    moe_trace_dims d;
    if (!rt_open(&f, MIXTRAL, "ban_force"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_trace_on(c);
    /* unsteered, expert 5 is chosen somewhere in layer 1 and 0 somewhere in 2 */
    rt_eval(c, &f, NULL);
    ck_assert_int_gt(rt_count_sel(c, 1, 5, &n_tok), 0);
    ck_assert_int_lt(rt_count_sel(c, 2, 0, &n_tok), n_tok);

    /* ban 5 everywhere, force 0 at layer 2 only */
    moe_ctx_trace_clear(c);
    ck_assert(moe_route_ban(c, -1, 5, true) == MOE_OK);
    ck_assert(moe_route_force(c, 2, 0, true) == MOE_OK);
    rt_eval(c, &f, NULL);
    d = moe_ctx_trace_dims(c);
    for (int32_t il = 0; il < f.n_layer; il++)
        ck_assert_int_eq(rt_count_sel(c, il, 5, &n_tok), 0);
    ck_assert_int_eq(n_tok, f.n);
    ck_assert_int_eq(rt_count_sel(c, 2, 0, &n_tok), n_tok);
    ck_assert_int_lt(rt_count_sel(c, 1, 0, &n_tok), n_tok);
    /* weights: selected probabilities renormalised over the selection
     * (Mixtral renormalises), the forced one keeping its own probability */
    for (int32_t i = 0; i < n_tok; i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        const float *p = t->router_probs + (size_t)2 * f.n_expert;
        const int32_t *sel = t->sel + (size_t)2 * d.n_sel;
        const float *w = t->sel_w + (size_t)2 * d.n_sel;
        float sum = p[sel[0]] + p[sel[1]];
        ck_assert_int_eq(sel[2], -1);
        ck_assert(sel[0] != sel[1]);
        ck_assert(p[sel[0]] >= p[sel[1]]); /* best first */
        ck_assert_float_eq_tol(w[0], p[sel[0]] / sum, 1e-6);
        ck_assert_float_eq_tol(w[1], p[sel[1]] / sum, 1e-6);
    }
    /* forcing replaces a ban and vice versa */
    ck_assert(moe_route_force(c, -1, 5, true) == MOE_OK);
    moe_ctx_trace_clear(c);
    rt_eval(c, &f, NULL);
    ck_assert_int_eq(rt_count_sel(c, 0, 5, &n_tok), n_tok);
    /* too many forced experts for the slots */
    ck_assert(moe_route_force(c, 2, 1, true) == MOE_ERR_INVALID_ARG);
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* Qwen2-MoE does not renormalise: a forced expert's weight is its raw
 * probability. */
START_TEST(test_force_no_renorm)
{
    rt_fix f;
    moe_ctx *c;
    moe_trace_dims d;
    if (!rt_open(&f, QWEN2MOE, "force_no_renorm"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_trace_on(c);
    ck_assert(moe_route_force(c, -1, 7, true) == MOE_OK);
    ck_assert(moe_route_ban(c, -1, 6, true) == MOE_OK);
    rt_eval(c, &f, NULL);
    d = moe_ctx_trace_dims(c);
    for (int32_t i = 0; i < moe_ctx_trace_count(c); i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        for (int32_t il = 0; il < f.n_layer; il++) {
            const float *p = t->router_probs + (size_t)il * f.n_expert;
            bool seen = false;
            for (int32_t j = 0; j < 2; j++) {
                int32_t e = t->sel[(size_t)il * d.n_sel + j];
                ck_assert(e >= 0 && e != 6);
                seen |= e == 7;
                ck_assert_float_eq(t->sel_w[(size_t)il * d.n_sel + j], p[e]);
            }
            ck_assert(seen);
        }
    }
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

START_TEST(test_top_k_override)
{
    rt_fix f;
    moe_ctx *c;
    moe_trace_dims d;
    static const int32_t ks[] = {1, 3, 8};
    if (!rt_open(&f, MIXTRAL, "top_k_override"))
        return;
    c = rt_ctx(&f, 64, 0);
    ck_assert(moe_route_set_top_k(c, -1, 3) == MOE_ERR_INVALID_ARG); /* 3 slots only */
    ck_assert(strstr(moe_last_error(), "max_top_k") != NULL);
    moe_ctx_free(c);
    c = rt_ctx(&f, 64, 8);
    rt_trace_on(c);
    for (size_t x = 0; x < sizeof ks / sizeof ks[0]; x++) {
        moe_ctx_trace_clear(c);
        ck_assert(moe_route_set_top_k(c, 1, ks[x]) == MOE_OK);
        ck_assert_int_eq(moe_route_get_top_k(c, 1), ks[x]);
        ck_assert_int_eq(moe_route_get_top_k(c, 0), 2);
        rt_eval(c, &f, NULL);
        d = moe_ctx_trace_dims(c);
        ck_assert_int_eq(d.n_sel, 9);
        for (int32_t i = 0; i < moe_ctx_trace_count(c); i++) {
            const moe_trace_token *t = moe_ctx_trace_get(c, i);
            for (int32_t il = 0; il < f.n_layer; il++) {
                int32_t want = il == 1 ? ks[x] : 2, got = 0;
                float wsum = 0.0f;
                for (int32_t j = 0; j < d.n_sel; j++)
                    if (t->sel[(size_t)il * d.n_sel + j] >= 0) {
                        got++;
                        wsum += t->sel_w[(size_t)il * d.n_sel + j];
                    }
                ck_assert_int_eq(got, want);
                ck_assert_float_eq_tol(wsum, 1.0f, 1e-5);
            }
        }
    }
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

START_TEST(test_temperature)
{
    rt_fix f;
    moe_ctx *c;
    if (!rt_open(&f, OLMOE, "temperature"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_trace_on(c);
    ck_assert(moe_route_set_temperature(c, -1, 2.5f) == MOE_OK);
    ck_assert(moe_route_set_temperature(c, 1, 0.5f) == MOE_OK);
    rt_eval(c, &f, NULL);
    for (int32_t i = 0; i < moe_ctx_trace_count(c); i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        for (int32_t il = 0; il < f.n_layer; il++) {
            const float *l = t->router_logits + (size_t)il * f.n_expert;
            const float *p = t->router_probs + (size_t)il * f.n_expert;
            const double temp = il == 1 ? 0.5 : 2.5;
            double mx = -INFINITY, s = 0.0;
            for (int32_t e = 0; e < f.n_expert; e++)
                mx = l[e] / temp > mx ? l[e] / temp : mx;
            for (int32_t e = 0; e < f.n_expert; e++)
                s += exp(l[e] / temp - mx);
            for (int32_t e = 0; e < f.n_expert; e++)
                ck_assert_double_eq_tol(p[e], exp(l[e] / temp - mx) / s, 1e-6);
        }
    }
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* Scale 0 on every expert = an MoE output of zero = all experts banned;
 * a scale of 1 on everything is the unsteered model. */
START_TEST(test_scale)
{
    rt_fix f;
    moe_ctx *a, *b;
    float *l0, *la, *lb;
    if (!rt_open(&f, MIXTRAL, "scale"))
        return;
    a = rt_ctx(&f, 64, 0);
    b = rt_ctx(&f, 64, 0);
    rt_eval(a, &f, &l0);
    for (int32_t e = 0; e < f.n_expert; e++) {
        ck_assert(moe_route_set_scale(a, -1, e, 0.0f) == MOE_OK);
        ck_assert(moe_route_ban(b, -1, e, true) == MOE_OK);
    }
    rt_eval(a, &f, &la);
    rt_eval(b, &f, &lb);
    ck_assert(rt_same(la, lb, (size_t)f.n * f.n_vocab));
    ck_assert(!rt_same(la, l0, (size_t)f.n * f.n_vocab));
    free(la);
    for (int32_t e = 0; e < f.n_expert; e++)
        ck_assert(moe_route_set_scale(a, -1, e, 1.0f) == MOE_OK);
    rt_eval(a, &f, &la);
    ck_assert(rt_same(la, l0, (size_t)f.n * f.n_vocab));
    /* doubling one expert changes outputs */
    ck_assert(moe_route_set_scale(a, 0, 2, 2.0f) == MOE_OK);
    free(la);
    rt_eval(a, &f, &la);
    ck_assert(!rt_same(la, l0, (size_t)f.n * f.n_vocab));
    free(l0);
    free(la);
    free(lb);
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(f.model);
}
END_TEST

/* ---- capacity ------------------------------------------------------------- */

/* n_expert * C summed over the batches of n tokens split by n_batch. */
static int64_t rt_slots(const rt_fix *f, float cf, int32_t n_batch)
{
    int64_t s = 0;
    for (int32_t done = 0; done < f->n; done += n_batch) {
        int32_t nb = f->n - done < n_batch ? f->n - done : n_batch;
        s += (int64_t)f->n_expert * (int64_t)ceil((double)cf * f->k * nb / f->n_expert);
    }
    return s * f->n_layer;
}

START_TEST(test_capacity_huge_is_identity)
{
    rt_fix f;
    moe_ctx *a, *b;
    float *l0, *l1;
    moe_route_counters cnt;
    moe_capacity_params cp = {.capacity_factor = 1000.0f, .drop = MOE_DROP_POSITION,
                              .n_devices = 2, .rectify = MOE_RECTIFY_NONE};
    if (!rt_open(&f, MIXTRAL, "capacity_huge"))
        return;
    a = rt_ctx(&f, 64, 0);
    b = rt_ctx(&f, 64, 0);
    rt_eval(a, &f, &l0);
    for (int r = 0; r < 2; r++) {
        cp.rectify = r ? MOE_RECTIFY_IR : MOE_RECTIFY_NONE;
        cp.drop = r ? MOE_DROP_SCORE : MOE_DROP_POSITION;
        ck_assert(moe_route_set_capacity(b, &cp) == MOE_OK);
        moe_route_reset_counters(b);
        rt_eval(b, &f, &l1);
        ck_assert(rt_same(l0, l1, (size_t)f.n * f.n_vocab));
        free(l1);
        moe_route_get_counters(b, &cnt);
        ck_assert_int_eq(cnt.routed, (int64_t)f.n * f.k * f.n_layer);
        ck_assert_int_eq(cnt.dropped, 0);
        ck_assert_int_eq(cnt.rerouted, 0);
        ck_assert_int_eq(cnt.filled, 0);
        ck_assert_int_eq(cnt.routed + cnt.padded, rt_slots(&f, cp.capacity_factor, 64));
    }
    /* FR with room everywhere: every token's (k+1)-th choice is filled */
    cp.rectify = MOE_RECTIFY_FR;
    ck_assert(moe_route_set_capacity(b, &cp) == MOE_OK);
    moe_route_reset_counters(b);
    rt_eval(b, &f, &l1);
    moe_route_get_counters(b, &cnt);
    ck_assert_int_eq(cnt.filled, (int64_t)f.n * f.n_layer);
    ck_assert(!rt_same(l0, l1, (size_t)f.n * f.n_vocab));
    free(l0);
    free(l1);
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(f.model);
}
END_TEST

START_TEST(test_capacity_small)
{
    static const moe_rectify modes[] = {MOE_RECTIFY_NONE, MOE_RECTIFY_IR, MOE_RECTIFY_FR,
                                        MOE_RECTIFY_BOTH};
    rt_fix f;
    moe_ctx *c;
    double nll0, nll[4];
    moe_route_counters cnt;
    moe_trace_dims d;
    if (!rt_open(&f, MIXTRAL, "capacity_small"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_trace_on(c);
    nll0 = rt_eval(c, &f, NULL);
    d = moe_ctx_trace_dims(c);
    for (int m = 0; m < 4; m++) {
        moe_capacity_params cp = {.capacity_factor = 0.5f, .drop = MOE_DROP_POSITION,
                                  .n_devices = 1, .rectify = modes[m]};
        bool short_sum = false;
        ck_assert(moe_route_set_capacity(c, &cp) == MOE_OK);
        moe_route_reset_counters(c);
        moe_ctx_trace_clear(c);
        nll[m] = rt_eval(c, &f, NULL);
        moe_route_get_counters(c, &cnt);
        ck_assert_int_eq(cnt.routed, (int64_t)f.n * f.k * f.n_layer);
        ck_assert_int_gt(cnt.dropped, 0);
        ck_assert_int_eq(cnt.routed - cnt.dropped + cnt.padded, rt_slots(&f, 0.5f, 64));
        ck_assert(cnt.filled <= cnt.padded);
        /* one device: IR always finds a target, so every drop is rerouted */
        ck_assert_int_eq(cnt.rerouted, modes[m] & MOE_RECTIFY_IR ? cnt.dropped : 0);
        if (modes[m] & MOE_RECTIFY_FR)
            ck_assert_int_gt(cnt.filled, 0);
        else
            ck_assert_int_eq(cnt.filled, 0);
        ck_assert(nll[m] != nll0);
        /* weights: plain drops leave some tokens with less than 1 in total;
         * IR renormalises over the reached set, so every token sums to 1 */
        for (int32_t i = 0; i < moe_ctx_trace_count(c); i++) {
            const moe_trace_token *t = moe_ctx_trace_get(c, i);
            for (int32_t il = 0; il < f.n_layer; il++) {
                float s = 0.0f;
                for (int32_t j = 0; j < d.n_sel; j++)
                    s += t->sel_w[(size_t)il * d.n_sel + j];
                if (s < 1.0f - 1e-5f)
                    short_sum = true;
                /* FR alone: a filled token has k + 1 experts weighted by
                 * its probabilities renormalised over all of them */
                if (modes[m] == MOE_RECTIFY_FR && t->sel[(size_t)il * d.n_sel + f.k] >= 0) {
                    const float *p = t->router_probs + (size_t)il * f.n_expert;
                    float ps = 0.0f;
                    for (int32_t j = 0; j <= f.k; j++)
                        ps += p[t->sel[(size_t)il * d.n_sel + j]];
                    for (int32_t j = 0; j <= f.k; j++)
                        ck_assert_float_eq_tol(t->sel_w[(size_t)il * d.n_sel + j],
                                               p[t->sel[(size_t)il * d.n_sel + j]] / ps, 1e-6);
                }
                if (modes[m] & MOE_RECTIFY_IR)
                    ck_assert_float_eq_tol(s, 1.0f, 1e-5);
            }
        }
        ck_assert(short_sum == !(modes[m] & MOE_RECTIFY_IR));
    }
    /* score-prioritised dropping and 4 devices change the picture again */
    {
        moe_capacity_params cp = {.capacity_factor = 0.5f, .drop = MOE_DROP_SCORE,
                                  .n_devices = 4, .rectify = MOE_RECTIFY_IR};
        ck_assert(moe_route_set_capacity(c, &cp) == MOE_OK);
        moe_route_reset_counters(c);
        ck_assert(rt_eval(c, &f, NULL) != nll[1]);
        moe_route_get_counters(c, &cnt);
        ck_assert(cnt.rerouted > 0 && cnt.rerouted <= cnt.dropped);
    }
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* Exact mechanics at the first layer (its inputs do not depend on routing):
 * which assignments are kept (by position or by top score), where IR sends
 * drops (one expert per device with D = n_expert), what FR adds. */
static bool rt_has(const int32_t *sel, int32_t n, int32_t e)
{
    for (int32_t j = 0; j < n; j++)
        if (sel[j] == e)
            return true;
    return false;
}

typedef struct {
    float key;
    int32_t pos;
} rt_ord;

static int rt_ord_cmp(const void *a, const void *b)
{
    const rt_ord *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->pos - y->pos;
}

START_TEST(test_capacity_mechanics)
{
    enum { NB = 64 };
    rt_fix f;
    moe_ctx *c;
    moe_trace_dims d;
    int32_t(*orig)[2], (*cap_sel)[9], *cand;
    float(*orig_w)[2], (*cap_w)[3];
    float *top, *prob0;
    moe_capacity_params cp = {.capacity_factor = 0.5f, .n_devices = 8};
    if (!rt_open(&f, MIXTRAL, "capacity_mechanics"))
        return;
    c = rt_ctx(&f, NB, 0);
    rt_trace_on(c);
    rt_eval(c, &f, NULL);
    d = moe_ctx_trace_dims(c);
    ck_assert_int_eq(d.n_sel, 3);
    orig = malloc((size_t)f.n * sizeof *orig);
    cap_sel = malloc((size_t)f.n * sizeof *cap_sel);
    cand = malloc((size_t)f.n * sizeof *cand);
    orig_w = malloc((size_t)f.n * sizeof *orig_w);
    cap_w = malloc((size_t)f.n * sizeof *cap_w);
    top = malloc((size_t)f.n * sizeof *top);
    prob0 = malloc((size_t)f.n * (size_t)f.n_expert * sizeof *prob0);
    for (int32_t p = 0; p < f.n; p++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, p);
        const float *pr = t->router_probs; /* layer 0 */
        orig[p][0] = t->sel[0];
        orig[p][1] = t->sel[1];
        orig_w[p][0] = t->sel_w[0];
        orig_w[p][1] = t->sel_w[1];
        top[p] = pr[t->sel[0]];
        memcpy(prob0 + (size_t)p * f.n_expert, pr, (size_t)f.n_expert * sizeof *pr);
        cand[p] = -1;
        for (int32_t e = 0; e < f.n_expert; e++)
            if (!rt_has(orig[p], 2, e) && (cand[p] < 0 || pr[e] > pr[cand[p]]))
                cand[p] = e;
    }
    for (int mode = 0; mode < 4; mode++) {
        /* 0: none by position, 1: none by score, 2: IR (8 devices), 3: FR */
        cp.drop = mode == 1 ? MOE_DROP_SCORE : MOE_DROP_POSITION;
        cp.rectify = mode == 2 ? MOE_RECTIFY_IR : mode == 3 ? MOE_RECTIFY_FR : MOE_RECTIFY_NONE;
        ck_assert(moe_route_set_capacity(c, &cp) == MOE_OK);
        moe_ctx_trace_clear(c);
        rt_eval(c, &f, NULL);
        for (int32_t p = 0; p < f.n; p++) {
            const moe_trace_token *t = moe_ctx_trace_get(c, p);
            for (int32_t j = 0; j < 3; j++) {
                cap_sel[p][j] = t->sel[j];
                cap_w[p][j] = t->sel_w[j];
            }
            /* plain drop: what is kept keeps its weight exactly */
            for (int32_t j = 0; mode < 2 && j < 3; j++)
                for (int32_t i = 0; i < 2; i++)
                    if (cap_sel[p][j] == orig[p][i])
                        ck_assert(cap_w[p][j] == orig_w[p][i]);
        }
        for (int32_t b0 = 0; b0 < f.n; b0 += NB) {
            const int32_t nb = f.n - b0 < NB ? f.n - b0 : NB;
            const int64_t cap = (int64_t)ceil(0.5 * 2 * nb / 8.0);
            rt_ord ord[NB];
            for (int32_t i = 0; i < nb; i++) {
                ord[i].key = mode == 1 ? top[b0 + i] : 0.0f;
                ord[i].pos = b0 + i;
            }
            qsort(ord, (size_t)nb, sizeof ord[0], rt_ord_cmp);
            /* the first cap claimants of each expert keep it, the rest lose it */
            for (int32_t e = 0; e < f.n_expert; e++) {
                int64_t seen = 0;
                for (int32_t i = 0; i < nb; i++) {
                    const int32_t p = ord[i].pos;
                    if (!rt_has(orig[p], 2, e))
                        continue;
                    ck_assert_msg(rt_has(cap_sel[p], 3, e) == (seen < cap),
                                  "mode %d pos %d expert %d rank %lld cap %lld", mode, p, e,
                                  (long long)seen, (long long)cap);
                    seen++;
                }
            }
            /* FR: an expert's padding goes to the candidates most probable
             * for it */
            for (int32_t e = 0; mode == 3 && e < f.n_expert; e++) {
                int64_t claim = 0, room;
                int32_t n_c = 0;
                for (int32_t i = 0; i < nb; i++)
                    claim += rt_has(orig[b0 + i], 2, e);
                room = cap - (claim < cap ? claim : cap);
                for (int32_t i = 0; i < nb; i++)
                    if (cand[b0 + i] == e) {
                        ord[n_c].key = prob0[(size_t)(b0 + i) * f.n_expert + e];
                        ord[n_c++].pos = b0 + i;
                    }
                qsort(ord, (size_t)n_c, sizeof ord[0], rt_ord_cmp);
                for (int32_t r = 0; r < n_c; r++)
                    ck_assert(rt_has(cap_sel[ord[r].pos], 3, e) == (r < room));
            }
            for (int32_t i = 0; i < nb; i++) {
                const int32_t p = b0 + i;
                const int32_t h = i * 8 / nb; /* the one expert on the token's device */
                bool lost = false;
                for (int32_t j = 0; j < 3; j++) {
                    const int32_t e = cap_sel[p][j];
                    if (e < 0 || rt_has(orig[p], 2, e))
                        continue;
                    /* an expert it did not choose: only IR's h or FR's candidate */
                    if (mode == 2)
                        ck_assert_int_eq(e, h);
                    else if (mode == 3)
                        ck_assert_int_eq(e, cand[p]);
                    else
                        ck_abort_msg("mode %d added expert %d at %d", mode, e, p);
                }
                for (int32_t j = 0; j < 2; j++)
                    lost |= !rt_has(cap_sel[p], 3, orig[p][j]);
                /* IR: a token that lost experts reaches h, unless h is one
                 * of those it lost */
                if (mode == 2 && lost &&
                    !(rt_has(orig[p], 2, h) && !rt_has(cap_sel[p], 3, h)))
                    ck_assert(rt_has(cap_sel[p], 3, h));
                /* IR weights: p_e * multiplicity over the reached multiset,
                 * h counted once per drop, renormalised (DESIGN.md formula) */
                if (mode == 2 && lost && rt_has(cap_sel[p], 3, h)) {
                    const float *pr = prob0 + (size_t)p * f.n_expert;
                    float mult[3], sum = 0.0f;
                    int32_t r = 0;
                    for (int32_t j = 0; j < 2; j++)
                        r += !rt_has(cap_sel[p], 3, orig[p][j]);
                    for (int32_t j = 0; j < 3; j++) {
                        const int32_t e = cap_sel[p][j];
                        mult[j] = e < 0 ? 0.0f
                                        : (float)rt_has(orig[p], 2, e) + (e == h ? (float)r : 0);
                        sum += e < 0 ? 0.0f : pr[e] * mult[j];
                    }
                    for (int32_t j = 0; j < 3; j++)
                        if (cap_sel[p][j] >= 0)
                            ck_assert_float_eq_tol(cap_w[p][j], pr[cap_sel[p][j]] * mult[j] / sum,
                                                   1e-6);
                }
            }
        }
    }
    free(orig);
    free(cap_sel);
    free(cand);
    free(top);
    free(prob0);
    free(orig_w);
    free(cap_w);
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* IR weights with top-4 (OLMoE, 16 experts, one per device): a token that
 * keeps some experts and loses r >= 2 gets h with multiplicity r, weighted
 * by the file's rule (this file does not renormalise: raw p * r). */
START_TEST(test_ir_multiplicity)
{
    enum { NB = 64, K = 4, MAXE = 16 };
    rt_fix f;
    moe_ctx *c;
    moe_trace_dims d;
    int32_t(*orig)[K];
    int n_checked = 0;
    bool renorm;
    moe_capacity_params cp = {.capacity_factor = 0.5f, .n_devices = 16,
                              .rectify = MOE_RECTIFY_IR};
    if (!rt_open(&f, OLMOE, "ir_multiplicity"))
        return;
    ck_assert_int_eq(f.k, K);
    ck_assert_int_eq(f.n_expert, MAXE);
    c = rt_ctx(&f, NB, 0);
    rt_trace_on(c);
    rt_eval(c, &f, NULL);
    d = moe_ctx_trace_dims(c);
    orig = malloc((size_t)f.n * sizeof *orig);
    for (int32_t p = 0; p < f.n; p++)
        for (int32_t j = 0; j < K; j++)
            orig[p][j] = moe_ctx_trace_get(c, p)->sel[j];
    /* does the file renormalise the top-k weights? (tiny-olmoe: no) */
    {
        const moe_trace_token *t = moe_ctx_trace_get(c, 0);
        float ws = 0.0f;
        for (int32_t j = 0; j < K; j++)
            ws += t->sel_w[j];
        renorm = fabsf(ws - 1.0f) < 1e-5f;
    }
    ck_assert(moe_route_set_capacity(c, &cp) == MOE_OK);
    moe_ctx_trace_clear(c);
    rt_eval(c, &f, NULL);
    for (int32_t p = 0; p < f.n; p++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, p);
        const int32_t nb = f.n - p / NB * NB < NB ? f.n - p / NB * NB : NB;
        const int32_t h = (p % NB) * 16 / nb;
        const float *pr = t->router_probs;
        float mult[K + 1], sum = 0.0f;
        int32_t r = 0, kept = 0;
        for (int32_t j = 0; j < K; j++) {
            bool in = rt_has(t->sel, d.n_sel, orig[p][j]);
            r += !in;
            kept += in && orig[p][j] != h;
        }
        if (r < 2 || !kept || !rt_has(t->sel, d.n_sel, h))
            continue;
        for (int32_t j = 0; j < d.n_sel; j++) {
            const int32_t e = t->sel[j];
            mult[j] = e < 0 ? 0.0f : (float)rt_has(orig[p], K, e) + (e == h ? (float)r : 0);
            sum += e < 0 ? 0.0f : pr[e] * mult[j];
        }
        for (int32_t j = 0; j < d.n_sel; j++)
            if (t->sel[j] >= 0)
                ck_assert_float_eq_tol(t->sel_w[j],
                                       pr[t->sel[j]] * mult[j] / (renorm ? sum : 1.0f), 1e-5);
        n_checked++;
    }
    ck_assert_int_gt(n_checked, 0);
    free(orig);
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* ---- counterfactual ------------------------------------------------------ */

START_TEST(test_reeval)
{
    rt_fix f;
    moe_ctx *c, *ref;
    float *one_by_one, *out, *last;
    size_t kv_bytes;
    float *k_copy, *v_copy;
    const int32_t n = 40;
    double kl;
    int32_t changed;
    if (!rt_open(&f, MIXTRAL, "reeval"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_trace_on(c);
    one_by_one = malloc((size_t)n * f.n_vocab * sizeof *one_by_one);
    out = malloc((size_t)f.n_vocab * sizeof *out);
    last = malloc((size_t)f.n_vocab * sizeof *last);
    for (int32_t i = 0; i < n; i++) {
        ck_assert(moe_ctx_decode(c, &f.toks[i], 1, false) == MOE_OK);
        memcpy(one_by_one + (size_t)i * f.n_vocab, moe_ctx_logits(c, -1),
               (size_t)f.n_vocab * sizeof *out);
    }
    memcpy(last, moe_ctx_logits(c, -1), (size_t)f.n_vocab * sizeof *last);
    kv_bytes = (size_t)f.n_layer * (size_t)c->n_ctx *
               (size_t)(c->model->hp.n_head_kv * c->model->hp.n_embd_head) * sizeof(float);
    k_copy = malloc(kv_bytes);
    v_copy = malloc(kv_bytes);
    memcpy(k_copy, c->k_cache, kv_bytes);
    memcpy(v_copy, c->v_cache, kv_bytes);

    /* default steering: the same logits, bit for bit, and nothing moved */
    for (int32_t p = 0; p < n; p++) {
        ck_assert(moe_ctx_reeval(c, p, out) == MOE_OK);
        ck_assert_msg(rt_same(out, one_by_one + (size_t)p * f.n_vocab, (size_t)f.n_vocab),
                      "position %d", p);
    }
    ck_assert_int_eq(moe_ctx_pos(c), n);
    ck_assert_int_eq(moe_ctx_trace_count(c), n);
    ck_assert(memcmp(k_copy, c->k_cache, kv_bytes) == 0);
    ck_assert(memcmp(v_copy, c->v_cache, kv_bytes) == 0);
    ck_assert(rt_same(last, moe_ctx_logits(c, -1), (size_t)f.n_vocab));

    /* a counterfactual: ban the top expert position 20 chose at layer 0 */
    ck_assert(moe_route_ban(c, 0, moe_ctx_trace_get(c, 20)->sel[0], true) == MOE_OK);
    ck_assert(moe_ctx_reeval(c, 20, out) == MOE_OK);
    moe_logits_compare(one_by_one + (size_t)20 * f.n_vocab, out, f.n_vocab, 10, &kl, &changed);
    ck_assert(kl > 1e-6);
    ck_assert(memcmp(k_copy, c->k_cache, kv_bytes) == 0);
    ck_assert(memcmp(v_copy, c->v_cache, kv_bytes) == 0);
    ck_assert_int_eq(moe_ctx_trace_count(c), n);
    moe_route_reset(c);

    /* the context continues as if nothing happened */
    ref = rt_ctx(&f, 64, 0);
    ck_assert(moe_ctx_decode(ref, f.toks, n + 1, false) == MOE_OK);
    ck_assert(moe_ctx_decode(c, &f.toks[n], 1, false) == MOE_OK);
    ck_assert_float_eq_tol(moe_ctx_logits(c, -1)[5], moe_ctx_logits(ref, -1)[5], 1e-4);

    /* bad positions */
    ck_assert(moe_ctx_reeval(c, n + 1, out) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_ctx_reeval(c, -1, out) == MOE_ERR_INVALID_ARG);
    free(one_by_one);
    free(out);
    free(last);
    free(k_copy);
    free(v_copy);
    moe_ctx_free(c);
    moe_ctx_free(ref);
    moe_model_free(f.model);
}
END_TEST

/* Re-evaluating a position that was part of a batch: same logits up to
 * rounding of the batched kernels. */
START_TEST(test_reeval_batched)
{
    rt_fix f;
    moe_ctx *c;
    float *all, *out;
    double max_err = 0.0;
    if (!rt_open(&f, OLMOE, "reeval_batched"))
        return;
    c = rt_ctx(&f, 64, 0);
    rt_eval(c, &f, &all);
    out = malloc((size_t)f.n_vocab * sizeof *out);
    for (int32_t p = 0; p < f.n; p += 17) {
        ck_assert(moe_ctx_reeval(c, p, out) == MOE_OK);
        for (int32_t v = 0; v < f.n_vocab; v++) {
            double e = fabs(out[v] - all[(size_t)p * f.n_vocab + v]);
            max_err = e > max_err ? e : max_err;
        }
    }
    ck_assert_msg(max_err < 1e-4, "max error %g", max_err);
    free(all);
    free(out);
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

/* Hand-computed comparisons. */
START_TEST(test_logits_compare)
{
    /* p = (1/2, 1/2), q = (3/4, 1/4): KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3) */
    const float a[2] = {0.0f, 0.0f};
    const float b[2] = {(float)log(3.0), 0.0f};
    const float x[5] = {5, 4, 3, 2, 1}, y[5] = {1, 2, 3, 4, 5};
    const float t1[4] = {1, 1, 0, 0}, t2[4] = {0, 1, 1, 0};
    double kl;
    int32_t ch;
    moe_logits_compare(a, b, 2, 1, &kl, &ch);
    ck_assert_double_eq_tol(kl, 0.5 * log(4.0 / 3.0), 1e-7);
    ck_assert_int_eq(ch, 0); /* top-1 of both is id 0 (a's tie goes to the lower id) */
    moe_logits_compare(x, x, 5, 3, &kl, &ch);
    ck_assert_double_eq_tol(kl, 0.0, 1e-12);
    ck_assert_int_eq(ch, 0);
    /* a's top-2 {0, 1}, b's top-2 {4, 3}: both missing */
    moe_logits_compare(x, y, 5, 2, &kl, &ch);
    ck_assert_int_eq(ch, 2);
    /* top-3: {0, 1, 2} vs {4, 3, 2}: two missing */
    moe_logits_compare(x, y, 5, 3, NULL, &ch);
    ck_assert_int_eq(ch, 2);
    /* ties go to the lower id: t1 top-1 {0}, t2 top-1 {1} */
    moe_logits_compare(t1, t2, 4, 1, NULL, &ch);
    ck_assert_int_eq(ch, 1);
    /* k larger than the vocabulary: everything is in both */
    moe_logits_compare(x, y, 5, 99, NULL, &ch);
    ck_assert_int_eq(ch, 0);
}
END_TEST

START_TEST(test_bad_calls)
{
    rt_fix f;
    moe_ctx *c;
    moe_capacity_params cp = {.capacity_factor = 1.0f, .n_devices = 99};
    float out[4];
    if (!rt_open(&f, MIXTRAL, "router_bad_calls"))
        return;
    c = rt_ctx(&f, 64, 0);
    ck_assert(moe_route_ban(c, 3, 0, true) == MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "layer 3") != NULL);
    ck_assert(moe_route_ban(c, -2, 0, true) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_force(c, 0, 8, true) == MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "expert 8") != NULL);
    ck_assert(moe_route_set_temperature(c, 0, 0.0f) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_temperature(c, 0, NAN) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_scale(c, 0, 0, INFINITY) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_top_k(c, 0, -1) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_top_k(c, 0, 9) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_capacity(c, &cp) == MOE_ERR_INVALID_ARG);
    cp.n_devices = 1;
    cp.capacity_factor = -1.0f;
    ck_assert(moe_route_set_capacity(c, &cp) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_route_set_capacity(c, NULL) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_ctx_reeval(c, 0, out) == MOE_ERR_INVALID_ARG); /* nothing cached */
    moe_ctx_free(c);
    moe_model_free(f.model);
    /* a dense model has nothing to steer */
    if (!rt_open(&f, STORIES, "router_bad_calls_dense"))
        return;
    c = rt_ctx(&f, 64, 0);
    ck_assert(moe_route_ban(c, 0, 0, true) == MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "no experts") != NULL);
    ck_assert(moe_route_set_top_k(c, -1, 1) == MOE_ERR_INVALID_ARG);
    moe_route_reset(c);
    {
        moe_route_counters cnt;
        moe_route_get_counters(c, &cnt);
        ck_assert_int_eq(cnt.routed, 0);
    }
    moe_ctx_free(c);
    moe_model_free(f.model);
}
END_TEST

Suite *router_suite(void);
Suite *router_suite(void)
{
    Suite *s = suite_create("router");
    TCase *tc = tcase_create("steering");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_default_bit_identical, 0, 3);
    tcase_add_test(tc, test_ban_force);
    tcase_add_test(tc, test_force_no_renorm);
    tcase_add_test(tc, test_top_k_override);
    tcase_add_test(tc, test_temperature);
    tcase_add_test(tc, test_scale);
    suite_add_tcase(s, tc);
    tc = tcase_create("capacity");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_capacity_huge_is_identity);
    tcase_add_test(tc, test_capacity_small);
    tcase_add_test(tc, test_capacity_mechanics);
    tcase_add_test(tc, test_ir_multiplicity);
    suite_add_tcase(s, tc);
    tc = tcase_create("counterfactual");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_reeval);
    tcase_add_test(tc, test_reeval_batched);
    tcase_add_test(tc, test_logits_compare);
    tcase_add_test(tc, test_bad_calls);
    suite_add_tcase(s, tc);
    return s;
}
