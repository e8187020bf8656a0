/*
 * exit.h - early exit, logit lens and self-speculative decoding (see moe.h,
 * "early exit"): the per-context state both exit.c and speculate.c use, and
 * the hook forward.c calls. Internal to engine/.
 *
 * When an exit criterion is set, or a trace with a logit lens is on,
 * forward_batch hands the whole batch to exit_forward_batch, which drives
 * the layer loop itself (forward_embed / forward_layer / forward_kv_only /
 * forward_head). With neither, forward.c runs its own unchanged loop.
 */
#ifndef MOE_EXIT_H
#define MOE_EXIT_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"

/* HashEE table: bucket of every token id, -1 = runs all layers. */
struct moe_hash_table {
    int32_t n_vocab;
    int32_t n_buckets;
    int32_t *bucket; /* [n_vocab] */
};

typedef struct exit_state {
    moe_exit_params p;       /* p.hash points at own copy below */
    moe_hash_table *hash;    /* owned copy (HASH only) */
    moe_exit_stats stats;
    /* per batch, sized for ctx->n_batch rows */
    float *xs;               /* [n_batch][n_embd] each token's residual */
    int32_t *exit_at;        /* [n_batch] exit layer, -1 = still running */
    int32_t *last_exit;      /* [n_batch] exit layers of the last decode call */
    int32_t n_last;
    int32_t *patience_cnt;   /* [n_batch] */
    int32_t *prev_arg;       /* [n_batch] argmax at the previous layer */
    float *unc;              /* [n_batch] latest uncertainty (window) */
    float *exit_val;         /* [n_batch] criterion value where it fired */
    float *lens_logits;      /* [lens_rows][n_vocab] head outputs */
    int32_t lens_rows;
    /* logit-lens recording: every layer's residual of the batch's tokens */
    float *res;              /* [res_rows][n_layer][n_embd] */
    int32_t res_rows;
    /* self-speculative decoding */
    float *sp_h;             /* [sp_rows][n_embd] E-layer states of the drafts */
    float *sp_q;             /* [sp_rows][n_vocab] draft logits */
    float *sp_p;             /* [sp_rows][n_vocab] verification logits */
    float *sp_dist;          /* [2][n_vocab] probabilities while sampling */
    int32_t *sp_tok;         /* [sp_rows] */
    int32_t sp_rows;
    uint64_t sp_rng;
} exit_state;

/* True when forward_batch must hand the batch to exit_forward_batch. */
bool exit_active(const moe_ctx *ctx);
/* The batch with early exit and/or logit lens; same contract as
 * forward_batch (logits, ctx->pos advanced). */
moe_status exit_forward_batch(moe_ctx *ctx, const int32_t *tokens, int32_t n, bool all);
/* The context's exit state, created on first use (NULL: out of memory). */
exit_state *exit_state_get(moe_ctx *ctx);
void exit_state_free(exit_state *es);

/* Statistics of one logits row: probabilities' entropy (nats), max
 * probability and argmax (lowest id on ties). */
void exit_row_stats(const float *logits, int32_t n_vocab, float *entropy, float *pmax,
                    int32_t *argmax);

#endif
