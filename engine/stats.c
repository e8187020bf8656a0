/*
 * stats.c - routing statistics over trace entries (moe.h, "routing
 * statistics"): per MoE layer and expert, prefill and decode kept apart,
 * load, importance, CV^2, switch balance loss, router entropy and mutual
 * information, co-activation, and the tokens that pick each expert most.
 * Reads moe_trace_token values only (never a context's internals), so
 * hand-built traces work the same. Depends on libc/libm; never prints.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "util.h"

/* accumulators of one (phase, layer) */
typedef struct {
    int64_t n_tok;     /* tokens routed at this layer */
    int64_t n_assign;  /* (token, expert) selections */
    double h_sum;      /* sum of per-token router entropies */
    int64_t *load;     /* [n_expert] */
    double *imp;       /* [n_expert] sum of raw probabilities */
    double *qsum;      /* [n_expert] sum of normalised probabilities */
    int64_t *coact;    /* [n_expert][n_expert] tokens selecting both */
} stats_acc;

/* one remembered token: what it selected, for top-token queries */
typedef struct {
    int32_t token;
    uint8_t phase;
} stats_tok;

struct moe_route_stats {
    moe_trace_dims d;
    stats_acc *acc;     /* [2 phases][n_layer] */
    int64_t *load_buf, *coact_buf;
    double *imp_buf, *qsum_buf;
    stats_tok *toks;    /* [n_toks] */
    int32_t *tok_sel;   /* [n_toks][n_layer][n_sel] */
    int64_t n_toks, cap_toks;
};

double stats_entropy(const float *p, int32_t n)
{
    double sum = 0.0, h = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] > 0.0f)
            sum += p[i];
    if (!(sum > 0.0))
        return 0.0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] > 0.0f) {
            double q = p[i] / sum;
            h -= q * log(q);
        }
    return h > 0.0 ? h : 0.0;
}

double stats_cv2(const double *v, int32_t n)
{
    double mean = 0.0, var = 0.0;
    if (n <= 0)
        return 0.0;
    for (int32_t i = 0; i < n; i++)
        mean += v[i];
    mean /= n;
    if (mean == 0.0)
        return 0.0;
    for (int32_t i = 0; i < n; i++)
        var += (v[i] - mean) * (v[i] - mean);
    var /= n;
    return var / (mean * mean);
}

static double entropy_d(const double *p, int32_t n)
{
    double sum = 0.0, h = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] > 0.0)
            sum += p[i];
    if (!(sum > 0.0))
        return 0.0;
    for (int32_t i = 0; i < n; i++)
        if (p[i] > 0.0) {
            double q = p[i] / sum;
            h -= q * log(q);
        }
    return h > 0.0 ? h : 0.0;
}

moe_status moe_route_stats_new(const moe_trace_dims *dims, moe_route_stats **out)
{
    moe_route_stats *s;
    size_t nl, ne, n_acc;
    if (!out)
        return moe_fail(MOE_ERR_INVALID_ARG, "no output for routing statistics");
    *out = NULL;
    if (!dims || dims->n_layer <= 0 || dims->n_layer > 100000 || dims->n_expert <= 0 ||
        dims->n_expert > 65536 || dims->n_sel <= 0 || dims->n_sel > dims->n_expert + 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "routing statistics need an MoE model's trace "
                                             "dimensions");
    s = calloc(1, sizeof *s);
    if (!s)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
    s->d = *dims;
    nl = (size_t)dims->n_layer;
    ne = (size_t)dims->n_expert;
    n_acc = 2 * nl;
    s->acc = calloc(n_acc, sizeof *s->acc);
    s->load_buf = calloc(n_acc * ne, sizeof *s->load_buf);
    s->imp_buf = calloc(n_acc * ne, sizeof *s->imp_buf);
    s->qsum_buf = calloc(n_acc * ne, sizeof *s->qsum_buf);
    s->coact_buf = calloc(n_acc * ne * ne, sizeof *s->coact_buf);
    if (!s->acc || !s->load_buf || !s->imp_buf || !s->qsum_buf || !s->coact_buf) {
        moe_route_stats_free(s);
        return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
    }
    for (size_t i = 0; i < n_acc; i++) {
        s->acc[i].load = s->load_buf + i * ne;
        s->acc[i].imp = s->imp_buf + i * ne;
        s->acc[i].qsum = s->qsum_buf + i * ne;
        s->acc[i].coact = s->coact_buf + i * ne * ne;
    }
    *out = s;
    return MOE_OK;
}

void moe_route_stats_free(moe_route_stats *s)
{
    if (!s)
        return;
    free(s->acc);
    free(s->load_buf);
    free(s->imp_buf);
    free(s->qsum_buf);
    free(s->coact_buf);
    free(s->toks);
    free(s->tok_sel);
    free(s);
}

void moe_route_stats_clear(moe_route_stats *s)
{
    size_t n_acc, ne;
    if (!s)
        return;
    n_acc = 2 * (size_t)s->d.n_layer;
    ne = (size_t)s->d.n_expert;
    for (size_t i = 0; i < n_acc; i++) {
        s->acc[i].n_tok = 0;
        s->acc[i].n_assign = 0;
        s->acc[i].h_sum = 0.0;
    }
    memset(s->load_buf, 0, n_acc * ne * sizeof *s->load_buf);
    memset(s->imp_buf, 0, n_acc * ne * sizeof *s->imp_buf);
    memset(s->qsum_buf, 0, n_acc * ne * sizeof *s->qsum_buf);
    memset(s->coact_buf, 0, n_acc * ne * ne * sizeof *s->coact_buf);
    s->n_toks = 0;
}

moe_trace_dims moe_route_stats_dims(const moe_route_stats *s)
{
    return s->d;
}

moe_status moe_route_stats_add(moe_route_stats *s, const moe_trace_token *tok)
{
    int32_t nl, ne, ns, ph;
    int32_t *keep;
    if (!s || !tok || !tok->layer_moe || !tok->router_probs || !tok->sel)
        return moe_fail(MOE_ERR_INVALID_ARG, "incomplete trace entry");
    nl = s->d.n_layer;
    ne = s->d.n_expert;
    ns = s->d.n_sel;
    ph = tok->prefill ? MOE_PHASE_PREFILL : MOE_PHASE_DECODE;
    if (s->n_toks == s->cap_toks) {
        int64_t nc = s->cap_toks ? s->cap_toks * 2 : 256;
        stats_tok *nt;
        int32_t *nsel;
        size_t per = (size_t)nl * (size_t)ns;
        if ((uint64_t)nc > SIZE_MAX / (per * sizeof(int32_t)))
            return moe_fail(MOE_ERR_NOMEM, "too many tokens for routing statistics");
        nt = realloc(s->toks, (size_t)nc * sizeof *nt);
        if (!nt)
            return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
        s->toks = nt;
        nsel = realloc(s->tok_sel, (size_t)nc * per * sizeof *nsel);
        if (!nsel)
            return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
        s->tok_sel = nsel;
        s->cap_toks = nc;
    }
    s->toks[s->n_toks].token = tok->token;
    s->toks[s->n_toks].phase = (uint8_t)ph;
    keep = s->tok_sel + (size_t)s->n_toks * (size_t)nl * (size_t)ns;
    s->n_toks++;

    for (int32_t il = 0; il < nl; il++) {
        stats_acc *a = &s->acc[(size_t)ph * (size_t)nl + (size_t)il];
        const float *p = tok->router_probs + (size_t)il * ne;
        const int32_t *sel = tok->sel + (size_t)il * ns;
        int32_t *ks = keep + (size_t)il * ns;
        double psum = 0.0;
        int32_t m = 0;
        if (!tok->layer_moe[il]) {
            for (int32_t j = 0; j < ns; j++)
                ks[j] = -1;
            continue;
        }
        /* selected experts, valid and each once */
        for (int32_t j = 0; j < ns; j++) {
            int32_t e = sel[j];
            bool dup = false;
            if (e < 0 || e >= ne)
                continue;
            for (int32_t i = 0; i < m; i++)
                dup |= ks[i] == e;
            if (!dup)
                ks[m++] = e;
        }
        for (int32_t j = m; j < ns; j++)
            ks[j] = -1;
        a->n_tok++;
        a->n_assign += m;
        for (int32_t i = 0; i < m; i++) {
            a->load[ks[i]]++;
            for (int32_t j = 0; j < m; j++)
                if (j != i)
                    a->coact[(size_t)ks[i] * ne + ks[j]]++;
        }
        for (int32_t e = 0; e < ne; e++) {
            a->imp[e] += p[e];
            if (p[e] > 0.0f)
                psum += p[e];
        }
        if (psum > 0.0)
            for (int32_t e = 0; e < ne; e++)
                if (p[e] > 0.0f)
                    a->qsum[e] += p[e] / psum;
        a->h_sum += stats_entropy(p, ne);
    }
    return MOE_OK;
}

moe_status moe_route_stats_add_trace(moe_route_stats *s, const moe_ctx *ctx)
{
    const int32_t n = moe_ctx_trace_count(ctx);
    moe_trace_dims d = moe_ctx_trace_dims(ctx);
    if (d.n_layer != s->d.n_layer || d.n_expert != s->d.n_expert || d.n_sel != s->d.n_sel)
        return moe_fail(MOE_ERR_INVALID_ARG, "trace dimensions differ from the statistics'");
    for (int32_t i = 0; i < n; i++) {
        moe_status st = moe_route_stats_add(s, moe_ctx_trace_get(ctx, i));
        if (st != MOE_OK)
            return st;
    }
    return MOE_OK;
}

static bool phase_ok(const moe_route_stats *s, int32_t layer, moe_phase ph)
{
    return s && layer >= 0 && layer < s->d.n_layer && (unsigned)ph < MOE_PHASE_COUNT;
}

/* value of accumulator field for a phase (ALL = prefill + decode) */
#define ACC(s, ph, il) (&(s)->acc[(size_t)(ph) * (size_t)(s)->d.n_layer + (size_t)(il)])

static int64_t acc_n_tok(const moe_route_stats *s, moe_phase ph, int32_t il)
{
    if (ph == MOE_PHASE_ALL)
        return ACC(s, 0, il)->n_tok + ACC(s, 1, il)->n_tok;
    return ACC(s, ph, il)->n_tok;
}

static int64_t acc_load(const moe_route_stats *s, moe_phase ph, int32_t il, int32_t e)
{
    if (ph == MOE_PHASE_ALL)
        return ACC(s, 0, il)->load[e] + ACC(s, 1, il)->load[e];
    return ACC(s, ph, il)->load[e];
}

static double acc_imp(const moe_route_stats *s, moe_phase ph, int32_t il, int32_t e)
{
    if (ph == MOE_PHASE_ALL)
        return ACC(s, 0, il)->imp[e] + ACC(s, 1, il)->imp[e];
    return ACC(s, ph, il)->imp[e];
}

static double acc_qsum(const moe_route_stats *s, moe_phase ph, int32_t il, int32_t e)
{
    if (ph == MOE_PHASE_ALL)
        return ACC(s, 0, il)->qsum[e] + ACC(s, 1, il)->qsum[e];
    return ACC(s, ph, il)->qsum[e];
}

moe_status moe_route_stats_layer(const moe_route_stats *s, int32_t layer, moe_phase ph,
                                 moe_route_layer_stats *out)
{
    const int32_t ne = s ? s->d.n_expert : 0;
    double *load, *imp, *mean, h_sum, fp = 0.0;
    int64_t n_tok, n_assign = 0;
    if (!out || !phase_ok(s, layer, ph))
        return moe_fail(MOE_ERR_INVALID_ARG, "layer %d or phase %d out of range", layer, ph);
    memset(out, 0, sizeof *out);
    n_tok = acc_n_tok(s, ph, layer);
    out->n_tokens = n_tok;
    if (n_tok == 0)
        return MOE_OK;
    load = malloc(3 * (size_t)ne * sizeof *load);
    if (!load)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
    imp = load + ne;
    mean = imp + ne;
    for (int32_t e = 0; e < ne; e++) {
        load[e] = (double)acc_load(s, ph, layer, e);
        imp[e] = acc_imp(s, ph, layer, e);
        mean[e] = acc_qsum(s, ph, layer, e) / (double)n_tok;
        n_assign += acc_load(s, ph, layer, e);
    }
    h_sum = ph == MOE_PHASE_ALL ? ACC(s, 0, layer)->h_sum + ACC(s, 1, layer)->h_sum
                                : ACC(s, ph, layer)->h_sum;
    for (int32_t e = 0; e < ne && n_assign > 0; e++)
        fp += (load[e] / (double)n_assign) * (imp[e] / (double)n_tok);
    out->n_assign = n_assign;
    out->cv2_load = stats_cv2(load, ne);
    out->cv2_importance = stats_cv2(imp, ne);
    out->balance_loss = ne * fp;
    out->h_cond = h_sum / (double)n_tok;
    out->h_marg = entropy_d(mean, ne);
    out->mi = out->h_marg - out->h_cond;
    free(load);
    return MOE_OK;
}

moe_status moe_route_stats_expert(const moe_route_stats *s, int32_t layer, int32_t expert,
                                  moe_phase ph, moe_route_expert_stats *out)
{
    int64_t n_tok, n_assign = 0;
    if (!out || !phase_ok(s, layer, ph) || expert < 0 || expert >= s->d.n_expert)
        return moe_fail(MOE_ERR_INVALID_ARG, "layer %d, expert %d or phase %d out of range",
                        layer, expert, ph);
    memset(out, 0, sizeof *out);
    n_tok = acc_n_tok(s, ph, layer);
    for (int32_t e = 0; e < s->d.n_expert; e++)
        n_assign += acc_load(s, ph, layer, e);
    out->load = acc_load(s, ph, layer, expert);
    out->importance = acc_imp(s, ph, layer, expert);
    if (n_assign > 0)
        out->load_frac = (double)out->load / (double)n_assign;
    if (n_tok > 0) {
        out->token_frac = (double)out->load / (double)n_tok;
        out->mean_prob = out->importance / (double)n_tok;
    }
    return MOE_OK;
}

int64_t moe_route_stats_coact(const moe_route_stats *s, int32_t layer, int32_t e1, int32_t e2,
                              moe_phase ph)
{
    const size_t ne = s ? (size_t)s->d.n_expert : 0;
    if (!phase_ok(s, layer, ph) || e1 < 0 || e2 < 0 || (size_t)e1 >= ne || (size_t)e2 >= ne)
        return 0;
    if (e1 == e2)
        return acc_load(s, ph, layer, e1);
    if (ph == MOE_PHASE_ALL)
        return ACC(s, 0, layer)->coact[(size_t)e1 * ne + e2] +
               ACC(s, 1, layer)->coact[(size_t)e1 * ne + e2];
    return ACC(s, ph, layer)->coact[(size_t)e1 * ne + e2];
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

moe_status moe_route_stats_top_tokens(const moe_route_stats *s, int32_t layer, int32_t expert,
                                      moe_phase ph, int32_t n_max, int32_t *ids,
                                      int64_t *counts, int32_t *n_out)
{
    const size_t nl = s ? (size_t)s->d.n_layer : 0, ns = s ? (size_t)s->d.n_sel : 0;
    int32_t *list;
    int64_t n = 0;
    int32_t got = 0;
    if (!n_out || !phase_ok(s, layer, ph) || expert < 0 || expert >= s->d.n_expert ||
        n_max < 0 || (n_max > 0 && (!ids || !counts)))
        return moe_fail(MOE_ERR_INVALID_ARG, "bad top-token query");
    *n_out = 0;
    if (n_max == 0 || s->n_toks == 0)
        return MOE_OK;
    list = malloc((size_t)s->n_toks * sizeof *list);
    if (!list)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for routing statistics");
    for (int64_t i = 0; i < s->n_toks; i++) {
        const int32_t *ks = s->tok_sel + ((size_t)i * nl + (size_t)layer) * ns;
        if (ph != MOE_PHASE_ALL && s->toks[i].phase != (uint8_t)ph)
            continue;
        for (size_t j = 0; j < ns; j++)
            if (ks[j] == expert) {
                list[n++] = s->toks[i].token;
                break;
            }
    }
    qsort(list, (size_t)n, sizeof *list, cmp_i32);
    /* runs of equal ids; keep the n_max largest counts, ties to lower id */
    for (int64_t i = 0; i < n;) {
        int64_t j = i;
        int32_t pos;
        while (j < n && list[j] == list[i])
            j++;
        pos = got < n_max ? got++ : n_max;
        while (pos > 0 && counts[pos - 1] < j - i) {
            if (pos < n_max) {
                ids[pos] = ids[pos - 1];
                counts[pos] = counts[pos - 1];
            }
            pos--;
        }
        if (pos < n_max) {
            ids[pos] = list[i];
            counts[pos] = j - i;
        }
        i = j;
    }
    free(list);
    *n_out = got;
    return MOE_OK;
}
