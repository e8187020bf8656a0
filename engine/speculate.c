/*
 * speculate.c - self-speculative decoding (LayerSkip, see moe.h): draft with
 * the first E layers + final norm + LM head, verify all drafts in one batched
 * pass of layers E..n_layer-1 started from the drafts' saved E-layer states,
 * accept greedily or by rejection sampling, roll the cache back.
 *
 * The drafts' keys and values of layers < E are exactly what a full pass
 * writes (the same computation on the same inputs), so verification only
 * overwrites layers >= E; rejected positions are dropped by moving ctx->pos
 * back. Depends on model.h, forward.c's pieces and exit.h (buffers);
 * never prints.
 */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "exit.h"
#include "model.h"
#include "util.h"

/* LM heads with at least this many weights are applied to all verified
 * rows at once. */
#define SPEC_HEAD_BATCH_MIN ((int64_t)1 << 20)

moe_spec_params moe_spec_default_params(void)
{
    moe_spec_params p = {.n_exit = 1, .n_draft = 4, .temp = 0.0f, .top_k = 0, .top_p = 1.0f,
                         .min_p = 0.0f, .seed = 0x5EEDULL};
    return p;
}

moe_status moe_spec_parse(const char *spec, moe_spec_params *p)
{
    char *end;
    long e, d;
    if (!spec || !p)
        return moe_fail(MOE_ERR_INVALID_ARG, "no speculation spec given");
    errno = 0;
    e = strtol(spec, &end, 10);
    if (end == spec || *end != ':' || errno || e < 1 || e > (1 << 20))
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "bad speculation spec '%.60s': expected E:d (draft layers E >= 1, "
                        "drafts d >= 1)",
                        spec);
    {
        const char *ds = end + 1;
        d = strtol(ds, &end, 10);
        if (end == ds || *end || errno || d < 1 || d > 4096)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad speculation spec '%.60s': expected E:d (draft layers E >= 1, "
                            "drafts 1 <= d <= 4096)",
                            spec);
    }
    p->n_exit = (int32_t)e;
    p->n_draft = (int32_t)d;
    return MOE_OK;
}

/* ---- sampling distributions --------------------------------------------- */

static uint64_t spec_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static double spec_uniform(uint64_t *s)
{
    return (double)(spec_rand(s) >> 11) * (1.0 / 9007199254740992.0);
}

typedef struct {
    float z;
    int32_t id;
} spec_pair;

static int spec_pair_cmp(const void *a, const void *b)
{
    const spec_pair *x = a, *y = b;
    if (x->z != y->z)
        return x->z > y->z ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

/* The sampling distribution, stages in the sampler's default order: keep
 * the top_k most likely tokens, then the smallest prefix whose probability
 * reaches top_p, then those with p >= min_p * p_max (all measured at
 * temperature 1), then softmax(z / temp) over what is left. idx is scratch
 * of n_vocab pairs (used only when top-k / top-p are on). */
static void spec_dist(const moe_spec_params *p, const float *z, int32_t nv, float *probs,
                      spec_pair *idx)
{
    float mx = -INFINITY;
    double sum = 0.0;
    for (int32_t v = 0; v < nv; v++)
        mx = z[v] > mx ? z[v] : mx;
    for (int32_t v = 0; v < nv; v++) {
        probs[v] = expf(z[v] - mx);
        sum += probs[v];
    }
    if ((p->top_k > 0 && p->top_k < nv) || p->top_p < 1.0f) {
        int32_t keep = p->top_k > 0 && p->top_k < nv ? p->top_k : nv;
        double cum = 0.0, ksum = 0.0;
        for (int32_t v = 0; v < nv; v++)
            idx[v] = (spec_pair){z[v], v};
        qsort(idx, (size_t)nv, sizeof *idx, spec_pair_cmp);
        for (int32_t j = 0; j < keep; j++)
            ksum += probs[idx[j].id];
        if (p->top_p < 1.0f)
            for (int32_t j = 0; j < keep; j++) {
                cum += probs[idx[j].id] / ksum;
                if (cum >= p->top_p) {
                    keep = j + 1;
                    break;
                }
            }
        for (int32_t j = keep; j < nv; j++)
            probs[idx[j].id] = 0.0f;
    }
    /* min-p (probs[] are relative to the max, which has 1) and temperature */
    sum = 0.0;
    for (int32_t v = 0; v < nv; v++) {
        if (probs[v] > 0.0f && !(p->min_p > 0.0f && probs[v] < p->min_p))
            probs[v] = expf((z[v] - mx) / p->temp);
        else
            probs[v] = 0.0f;
        sum += probs[v];
    }
    for (int32_t v = 0; v < nv; v++)
        probs[v] = (float)(probs[v] / sum);
}

static int32_t spec_draw(const float *probs, int32_t nv, uint64_t *rng)
{
    double u = spec_uniform(rng), cum = 0.0, total = 0.0;
    int32_t last = 0;
    for (int32_t v = 0; v < nv; v++)
        total += probs[v];
    u *= total;
    for (int32_t v = 0; v < nv; v++) {
        if (probs[v] > 0.0f)
            last = v;
        cum += probs[v];
        if (u < cum)
            return v;
    }
    return last;
}

static int32_t spec_argmax(const float *z, int32_t nv)
{
    int32_t am;
    exit_row_stats(z, nv, NULL, NULL, &am);
    return am;
}

/* ---- buffers --------------------------------------------------------------- */

static moe_status spec_reserve(moe_ctx *c, exit_state *es, int32_t rows)
{
    const model_hparams *hp = &c->model->hp;
    const size_t ne = (size_t)hp->n_embd, nv = (size_t)hp->n_vocab;
    float *h, *q, *p;
    int32_t *t;
    if (!es->sp_dist) {
        /* two distributions + a sort scratch of n_vocab pairs */
        es->sp_dist = malloc(2 * nv * sizeof(float) + nv * sizeof(spec_pair));
        if (!es->sp_dist)
            return moe_fail(MOE_ERR_NOMEM, "out of memory for speculation");
    }
    if (es->sp_rows >= rows)
        return MOE_OK;
    h = realloc(es->sp_h, (size_t)rows * ne * sizeof(float));
    if (h)
        es->sp_h = h;
    q = realloc(es->sp_q, (size_t)rows * nv * sizeof(float));
    if (q)
        es->sp_q = q;
    p = realloc(es->sp_p, (size_t)rows * nv * sizeof(float));
    if (p)
        es->sp_p = p;
    t = realloc(es->sp_tok, (size_t)rows * sizeof(int32_t));
    if (t)
        es->sp_tok = t;
    if (!h || !q || !p || !t)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for %d speculation rows", rows);
    es->sp_rows = rows;
    return MOE_OK;
}

/* ---- one step -------------------------------------------------------------- */

moe_status moe_ctx_speculate(moe_ctx *c, const moe_spec_params *p, int32_t next, int32_t *out,
                             int32_t n_max, int32_t *n_out, moe_spec_stats *stats)
{
    const model_hparams *hp = &c->model->hp;
    const size_t ne = (size_t)hp->n_embd, nv = (size_t)hp->n_vocab;
    const int32_t n_layer = hp->n_layer, P = c->pos;
    struct trace_store *saved_trace;
    const bool greedy = !(p && p->temp > 0.0f);
    exit_state *es;
    int32_t d, E, k = 0, bonus = -1;
    moe_status st;

    if (n_out)
        *n_out = 0;
    if (!p || !out || !n_out || n_max < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "speculate: bad arguments");
    E = p->n_exit;
    if (E < 1 || E > n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "speculate: draft layers %d not in 1..%d", E,
                        n_layer);
    if (p->n_draft < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "speculate: %d drafts (need >= 1)", p->n_draft);
    if (!greedy && !(p->top_p > 0.0f))
        return moe_fail(MOE_ERR_INVALID_ARG, "speculate: top-p %g must be > 0",
                        (double)p->top_p);
    if (next < 0 || next >= hp->n_vocab)
        return moe_fail(MOE_ERR_INVALID_ARG, "speculate: token id %d out of range [0, %d)",
                        next, hp->n_vocab);
    if (P >= c->n_ctx)
        return moe_fail(MOE_ERR_FULL, "context full: %d tokens", c->n_ctx);
    d = p->n_draft;
    if (d > n_max - 1)
        d = n_max - 1;
    if (d > c->n_ctx - P - 1)
        d = c->n_ctx - P - 1;
    if (d > c->n_batch - 1)
        d = c->n_batch - 1;
    es = exit_state_get(c);
    if (!es)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for speculation");
    st = spec_reserve(c, es, d + 1);
    if (st != MOE_OK)
        return st;
    if (es->sp_rng == 0)
        es->sp_rng = p->seed ? p->seed : 0x9E3779B97F4A7C15ULL;

    /* tokens of a step are not traced: forward_layer must not write into
     * the entries of an earlier batch */
    saved_trace = c->trace;
    c->trace = NULL;

    /* draft: the first E layers, one token at a time */
    es->sp_tok[0] = next;
    for (int32_t i = 0; i <= d; i++) {
        c->pos = P + i;
        c->tok_hist[P + i] = es->sp_tok[i];
        forward_embed(c, &es->sp_tok[i], 1);
        for (int32_t il = 0; il < E; il++)
            forward_layer(c, il, 1);
        memcpy(es->sp_h + (size_t)i * ne, c->x, ne * sizeof(float));
        if (i < d) {
            float *q = es->sp_q + (size_t)i * nv;
            forward_head(c, es->sp_h + (size_t)i * ne, 1, q);
            if (greedy) {
                es->sp_tok[i + 1] = spec_argmax(q, hp->n_vocab);
            } else {
                spec_dist(p, q, hp->n_vocab, es->sp_dist, (spec_pair *)(void *)(es->sp_dist + 2 * nv));
                es->sp_tok[i + 1] = spec_draw(es->sp_dist, hp->n_vocab, &es->sp_rng);
            }
        }
    }

    /* verify: layers E.. over all d + 1 rows at once, summed as the single
     * tokens of plain decoding are (moe_order), so it gives their bits */
    memcpy(c->x, es->sp_h, (size_t)(d + 1) * ne * sizeof(float));
    c->token_order = forward_token_order(c, 1);
    c->pos = P;
    for (int32_t il = E; il < n_layer; il++)
        forward_layer(c, il, d + 1);
    /* a large LM head is read once for all rows; a small one (in cache)
     * row by row, which keeps each product below the size at which the
     * engine wakes its worker threads (a wake-up costs more than it) */
    if ((int64_t)ne * (int64_t)nv >= SPEC_HEAD_BATCH_MIN)
        forward_head(c, c->x, d + 1, es->sp_p);
    else
        for (int32_t i = 0; i <= d; i++)
            forward_head(c, c->x + (size_t)i * ne, 1, es->sp_p + (size_t)i * nv);

    /* accept */
    if (greedy) {
        while (k < d && spec_argmax(es->sp_p + (size_t)k * nv, hp->n_vocab) == es->sp_tok[k + 1])
            k++;
        bonus = spec_argmax(es->sp_p + (size_t)k * nv, hp->n_vocab);
    } else {
        float *pd = es->sp_dist, *qd = es->sp_dist + nv;
        spec_pair *idx = (spec_pair *)(void *)(es->sp_dist + 2 * nv);
        for (; k < d; k++) {
            const int32_t x = es->sp_tok[k + 1];
            spec_dist(p, es->sp_p + (size_t)k * nv, hp->n_vocab, pd, idx);
            spec_dist(p, es->sp_q + (size_t)k * nv, hp->n_vocab, qd, idx);
            if (qd[x] > 0.0f && spec_uniform(&es->sp_rng) < (double)pd[x] / (double)qd[x])
                continue;
            /* rejected: draw from normalise(max(0, p - q)) */
            {
                double tot = 0.0;
                for (size_t v = 0; v < nv; v++) {
                    float r = pd[v] - qd[v];
                    pd[v] = r > 0.0f ? r : 0.0f;
                    tot += pd[v];
                }
                if (!(tot > 0.0))
                    spec_dist(p, es->sp_p + (size_t)k * nv, hp->n_vocab, pd, idx);
                bonus = spec_draw(pd, hp->n_vocab, &es->sp_rng);
            }
            break;
        }
        if (bonus < 0) {
            spec_dist(p, es->sp_p + (size_t)d * nv, hp->n_vocab, pd, idx);
            bonus = spec_draw(pd, hp->n_vocab, &es->sp_rng);
        }
    }

    for (int32_t i = 0; i < k; i++)
        out[i] = es->sp_tok[i + 1];
    out[k] = bonus;
    *n_out = k + 1;

    /* commit: positions P..P+k hold next and the accepted drafts */
    c->pos = P + k + 1;
    memcpy(c->logits, es->sp_p + (size_t)k * nv, nv * sizeof(float));
    c->n_logits = 1;
    c->logits_all = false;
    c->trace = saved_trace;
    if (stats) {
        stats->steps++;
        stats->drafted += d;
        stats->accepted += k;
        stats->emitted += k + 1;
    }
    return MOE_OK;
}
