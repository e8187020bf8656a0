/*
 * trace.h - per-token trace storage of a context (see moe.h, "traces"), and
 * the hooks forward.c, the router and early exit call while a batch runs.
 * Internal to engine/.
 */
#ifndef MOE_TRACE_H
#define MOE_TRACE_H

#include <stdint.h>

#include "moe.h"

typedef struct trace_store trace_store;

/* Writable view of an entry (same layout as moe_trace_token). */
typedef struct {
    moe_trace_token pub;
    bool *layer_moe;
    float *router_logits, *router_probs, *sel_w, *shexp_gate, *hnorm;
    int32_t *sel;
    int32_t *lens_id, *lens_rank;
    float *lens_p, *lens_entropy;
} trace_entry;

trace_store *trace_new(const moe_trace_dims *dims, const moe_trace_params *p,
                       int32_t n_batch);
void trace_free(trace_store *ts);
const moe_trace_params *trace_params(const trace_store *ts);
const moe_trace_dims *trace_dims(const trace_store *ts);
int32_t trace_count(const trace_store *ts);
const moe_trace_token *trace_get(const trace_store *ts, int32_t i);
void trace_clear(trace_store *ts);

/* Hooks for one batch of n tokens starting at pos. begin reserves entries
 * (current entry t of the batch is trace_cur(ts, t)); end fills timing. */
moe_status trace_begin(trace_store *ts, const int32_t *tokens, int32_t n, int32_t pos);
trace_entry *trace_cur(trace_store *ts, int32_t t);
/* Early exit runs a batch in pieces: while a piece starting at batch row
 * base runs, trace_cur(ts, t) means row base + t. trace_begin resets it. */
void trace_set_base(trace_store *ts, int32_t base);
void trace_end(trace_store *ts, int32_t n, double seconds);

#endif
