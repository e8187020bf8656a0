/*
 * embed.c - text embeddings from a context (moe_ctx_embed): the mean over a
 * run of tokens of the residual stream after a chosen layer. Runs the
 * forward pieces of forward.c (embed, then layers 0..layer) after the cached
 * positions and puts back what it touches: the position, the router
 * counters; the trace is suspended. Depends on model.h, router.h, util.h;
 * never prints.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "router.h"
#include "util.h"

moe_status moe_ctx_embed(moe_ctx *c, const int32_t *tokens, int32_t n, int32_t layer,
                         float *out)
{
    const model_hparams *hp;
    struct trace_store *trace;
    moe_route_counters cnt;
    int32_t pos_saved;
    double *acc;
    size_t n_embd;

    if (!c || !tokens || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "embed needs a context, tokens and an output");
    hp = &c->model->hp;
    n_embd = (size_t)hp->n_embd;
    if (n <= 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "embed of %d tokens", n);
    if (layer < 0)
        layer = hp->n_layer - 1;
    if (layer >= hp->n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "layer %d out of range [0, %d)", layer,
                        hp->n_layer);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= hp->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "token id %d out of range [0, %d)", tokens[i],
                            hp->n_vocab);
    if ((int64_t)c->pos + n > c->n_ctx)
        return moe_fail(MOE_ERR_FULL, "context full: %d + %d tokens exceed n_ctx %d", c->pos, n,
                        c->n_ctx);
    acc = calloc(n_embd, sizeof(double));
    if (!acc)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for an embedding of %zu", n_embd);

    moe_route_get_counters(c, &cnt);
    trace = c->trace;
    pos_saved = c->pos;
    c->trace = NULL;
    for (int32_t done = 0; done < n;) {
        const int32_t nb = n - done < c->n_batch ? n - done : c->n_batch;
        forward_embed(c, tokens + done, nb);
        for (int32_t il = 0; il <= layer; il++)
            forward_layer(c, il, nb);
        for (int32_t t = 0; t < nb; t++) {
            const float *x = c->x + (size_t)t * n_embd;
            for (size_t i = 0; i < n_embd; i++)
                acc[i] += x[i];
        }
        c->pos += nb; /* later chunks attend to earlier ones */
        done += nb;
    }
    c->pos = pos_saved;
    c->trace = trace;
    router_set_counters(c, &cnt);
    for (size_t i = 0; i < n_embd; i++)
        out[i] = (float)(acc[i] / n);
    free(acc);
    return MOE_OK;
}
