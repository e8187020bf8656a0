/*
 * reeval.c - counterfactual evaluation of one cached position under the
 * current routing (moe_ctx_reeval), the comparison of two logit vectors
 * (moe_logits_compare) and their log-sum-exp (moe_logsumexp, also used by
 * the Lua binding). Runs the forward pieces of forward.c on one token and
 * puts back everything of the context it touches: the K/V rows at that
 * position, the position, the router counters; the trace is suspended.
 * Depends on model.h, router.h, util.h; never prints.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "router.h"
#include "util.h"

moe_status moe_ctx_reeval(moe_ctx *c, int32_t pos, float *out)
{
    const model_hparams *hp;
    size_t n_kv, n_layer, row_bytes;
    float *saved;
    struct trace_store *trace;
    int32_t pos_saved, tok;
    moe_route_counters cnt;

    if (!c || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "reeval needs a context and an output");
    if (pos < 0 || pos >= c->pos)
        return moe_fail(MOE_ERR_INVALID_ARG, "position %d is not cached (0..%d)", pos,
                        c->pos - 1);
    hp = &c->model->hp;
    n_kv = (size_t)hp->n_head_kv * (size_t)hp->n_embd_head;
    n_layer = (size_t)hp->n_layer;
    row_bytes = n_kv * sizeof(float);
    tok = c->tok_hist[pos];
    if (tok < 0 || tok >= hp->n_vocab)
        return moe_fail(MOE_ERR_INVALID_ARG, "cached token %d at %d out of range", tok, pos);
    saved = malloc(2 * n_layer * row_bytes);
    if (!saved)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for reeval");

    /* keys and values this pass overwrites: position pos of every layer */
    for (size_t il = 0; il < n_layer; il++)
        kv_get(c, (int32_t)il, pos, 1, saved + (2 * il) * n_kv, saved + (2 * il + 1) * n_kv);
    moe_route_get_counters(c, &cnt);
    trace = c->trace;
    pos_saved = c->pos;
    c->trace = NULL;
    c->pos = pos;

    forward_embed(c, &tok, 1);
    for (int32_t il = 0; il < hp->n_layer; il++)
        forward_layer(c, il, 1);
    forward_head(c, c->x, 1, out);

    c->pos = pos_saved;
    c->trace = trace;
    router_set_counters(c, &cnt);
    for (size_t il = 0; il < n_layer; il++)
        kv_put(c, (int32_t)il, pos, 1, saved + (2 * il) * n_kv, saved + (2 * il + 1) * n_kv);
    free(saved);
    return MOE_OK;
}

double moe_logsumexp(const float *v, int32_t n)
{
    double mx = -INFINITY, s = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (v[i] > mx)
            mx = v[i];
    if (!isfinite(mx))
        return mx;
    for (int32_t i = 0; i < n; i++)
        s += exp((double)v[i] - mx);
    return mx + log(s);
}

/* true when id j ranks before id i in v (larger value, ties to lower id) */
static bool ranks_before(const float *v, int32_t j, int32_t i)
{
    return v[j] > v[i] || (v[j] == v[i] && j < i);
}

#define COMPARE_MAX_K 256

void moe_logits_compare(const float *a, const float *b, int32_t n_vocab, int32_t k, double *kl,
                        int32_t *topk_changed)
{
    int32_t top[COMPARE_MAX_K];
    int32_t n_top = 0, changed = 0;
    if (kl)
        *kl = 0.0;
    if (topk_changed)
        *topk_changed = 0;
    if (!a || !b || n_vocab <= 0)
        return;
    if (kl) {
        const double la = moe_logsumexp(a, n_vocab), lb = moe_logsumexp(b, n_vocab);
        double s = 0.0;
        if (!isfinite(la) || !isfinite(lb)) {
            *kl = NAN;
            goto topk;
        }
        for (int32_t i = 0; i < n_vocab; i++) {
            const double lpa = (double)a[i] - la, lpb = (double)b[i] - lb;
            const double pa = exp(lpa);
            if (pa > 0.0)
                s += pa * (lpa - lpb);
        }
        *kl = s > 0.0 ? s : 0.0;
    }
topk:
    if (!topk_changed)
        return;
    if (k > n_vocab)
        k = n_vocab;
    if (k > COMPARE_MAX_K)
        k = COMPARE_MAX_K;
    if (k <= 0)
        return;
    /* a's top-k by insertion into a sorted list */
    for (int32_t i = 0; i < n_vocab; i++) {
        int32_t j;
        if (n_top == k && !ranks_before(a, i, top[k - 1]))
            continue;
        j = n_top < k ? n_top++ : k - 1;
        while (j > 0 && ranks_before(a, i, top[j - 1])) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
    /* each of them is in b's top-k iff fewer than k ids rank before it */
    for (int32_t x = 0; x < n_top; x++) {
        int32_t rank = 0;
        for (int32_t j = 0; j < n_vocab && rank < k; j++)
            rank += ranks_before(b, j, top[x]);
        changed += rank >= k;
    }
    *topk_changed = changed;
}
