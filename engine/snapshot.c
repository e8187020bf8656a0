/*
 * snapshot.c - copies of a context's KV state (moe_ctx_snapshot /
 * moe_ctx_restore): the cached tokens, their key/value rows in every layer
 * and the last token's logits, so a script can branch from a prefix and
 * come back to it exactly. Depends on model.h and util.h; never prints.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "util.h"

struct moe_snapshot {
    const moe_model *model;
    int32_t pos;
    int32_t *tokens;  /* [pos] */
    float *kv;        /* [n_layer][2][pos][n_embd_kv] */
    float *logits;    /* [n_vocab] last token's logits, NULL if none */
};

static size_t snap_n_kv(const moe_model *m)
{
    return (size_t)m->hp.n_head_kv * (size_t)m->hp.n_embd_head;
}

moe_status moe_ctx_snapshot(const moe_ctx *c, moe_snapshot **out)
{
    moe_snapshot *s;
    const moe_model *m;
    size_t n_kv, n_layer, rows, bytes;
    const float *last;

    if (!c || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "snapshot needs a context and an output");
    *out = NULL;
    m = c->model;
    n_kv = snap_n_kv(m);
    n_layer = (size_t)m->hp.n_layer;
    if (!util_mul_size(n_layer * 2, (size_t)c->pos, &rows) ||
        !util_mul_size(rows, n_kv * sizeof(float), &bytes))
        return moe_fail(MOE_ERR_NOMEM, "snapshot size overflows");
    s = calloc(1, sizeof *s);
    if (!s)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for a snapshot");
    s->model = m;
    s->pos = c->pos;
    s->tokens = malloc((size_t)(c->pos > 0 ? c->pos : 1) * sizeof(int32_t));
    s->kv = malloc(bytes > 0 ? bytes : 1);
    if (!s->tokens || !s->kv)
        goto nomem;
    memcpy(s->tokens, c->tok_hist, (size_t)c->pos * sizeof(int32_t));
    for (size_t il = 0; il < n_layer; il++) {
        float *dk = s->kv + (il * 2) * (size_t)c->pos * n_kv;
        kv_get(c, (int32_t)il, 0, c->pos, dk, dk + (size_t)c->pos * n_kv);
    }
    last = c->pos > 0 ? moe_ctx_logits(c, -1) : NULL;
    if (last) {
        s->logits = malloc((size_t)m->hp.n_vocab * sizeof(float));
        if (!s->logits)
            goto nomem;
        memcpy(s->logits, last, (size_t)m->hp.n_vocab * sizeof(float));
    }
    *out = s;
    return MOE_OK;
nomem:
    moe_snapshot_free(s);
    return moe_fail(MOE_ERR_NOMEM, "out of memory for a snapshot of %d positions", c->pos);
}

moe_status moe_ctx_restore(moe_ctx *c, const moe_snapshot *s)
{
    const moe_model *m;
    size_t n_kv, n_layer;

    if (!c || !s)
        return moe_fail(MOE_ERR_INVALID_ARG, "restore needs a context and a snapshot");
    m = c->model;
    if (s->model != m)
        return moe_fail(MOE_ERR_INVALID_ARG, "snapshot was taken from another model");
    if (s->pos > c->n_ctx)
        return moe_fail(MOE_ERR_FULL, "snapshot of %d positions exceeds n_ctx %d", s->pos,
                        c->n_ctx);
    n_kv = snap_n_kv(m);
    n_layer = (size_t)m->hp.n_layer;
    memcpy(c->tok_hist, s->tokens, (size_t)s->pos * sizeof(int32_t));
    for (size_t il = 0; il < n_layer; il++) {
        const float *sk = s->kv + (il * 2) * (size_t)s->pos * n_kv;
        kv_put(c, (int32_t)il, 0, s->pos, sk, sk + (size_t)s->pos * n_kv);
    }
    c->pos = s->pos;
    if (s->logits) {
        memcpy(c->logits, s->logits, (size_t)m->hp.n_vocab * sizeof(float));
        c->n_logits = 1;
    } else {
        c->n_logits = 0;
    }
    c->logits_all = false;
    return MOE_OK;
}

int32_t moe_snapshot_pos(const moe_snapshot *s)
{
    return s ? s->pos : 0;
}

const int32_t *moe_snapshot_tokens(const moe_snapshot *s)
{
    return s ? s->tokens : NULL;
}

void moe_snapshot_free(moe_snapshot *s)
{
    if (!s)
        return;
    free(s->tokens);
    free(s->kv);
    free(s->logits);
    free(s);
}
