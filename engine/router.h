/*
 * router.h - the router of MoE layers: for each token of a batch, logits ->
 * probabilities -> top-k -> weights, plus everything the router lab does to
 * that decision (steering, simulated capacity with dropping and
 * Rectify-Router). forward.c calls router_select once per MoE layer and
 * executes whatever (expert, weight) list it produces. Internal to engine/.
 */
#ifndef MOE_ROUTER_H
#define MOE_ROUTER_H

#include <stdint.h>

#include "model.h"

/* The model's own routing of one token (no steering): probs gets n_expert
 * values; sel/weight get n_expert_used entries, best first. */
void model_route(const model_hparams *hp, const float *logits, float *probs,
                 int32_t *sel, float *weight);

/* Route the n tokens of layer il: reads ctx->router_logits ([n][n_expert]),
 * writes ctx->router_probs, ctx->sel / ctx->sel_w ([n][n_sel] with unused
 * slots -1 / 0) and ctx->n_sel_tok[t]; applies the steering and capacity
 * state of ctx->route (none when NULL: the model's own routing, bit for
 * bit); records the trace when on. */
void router_select(moe_ctx *ctx, int32_t il, int32_t n);

/* State of the router lab hung off moe_ctx.route (allocated by the first
 * moe_route_* call that needs it, freed by moe_ctx_free). NULL-safe. */
typedef struct route_lab route_lab;
void router_lab_free(route_lab *lab);

/* Overwrite the counters (moe_ctx_reeval restores them after its pass). */
void router_set_counters(moe_ctx *ctx, const moe_route_counters *cnt);

#endif
