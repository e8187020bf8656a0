/*
 * trace.c - storage of per-token traces: fixed-size slots in blocks of
 * TRACE_BLOCK entries, reused as a ring when a maximum is set, so tracing
 * allocates once per block, never per token. Depends on libc only.
 */
#include "config.h"

#include <math.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

#include "trace.h"
#include "util.h"

#define TRACE_BLOCK 256

struct trace_store {
    moe_trace_params p;
    moe_trace_dims d;
    size_t slot_bytes;
    char **blocks;
    int64_t n_blocks;
    int64_t start;   /* physical index of entry 0 */
    int64_t count;
    int64_t cap;     /* slots allocated */
    trace_entry **cur; /* [n_batch] entries of the running batch */
    int32_t n_batch;
    int32_t base;      /* trace_cur(t) is cur[base + t] (trace_set_base) */
};

static size_t align_up(size_t n)
{
    return (n + 15) & ~(size_t)15;
}

/* Byte layout of one slot: the entry header, then its arrays. */
static size_t slot_layout(const moe_trace_dims *d, trace_entry *e, char *base)
{
    const size_t L = (size_t)d->n_layer, E = (size_t)d->n_expert, S = (size_t)d->n_sel;
    const size_t K = (size_t)d->lens_k;
    size_t off = align_up(sizeof(trace_entry));
#define PLACE(field, type, count)                                                           \
    do {                                                                                    \
        if (e)                                                                              \
            e->field = (type *)(void *)(base + off);                                        \
        off += align_up(sizeof(type) * (count));                                            \
    } while (0)
    PLACE(layer_moe, bool, L);
    PLACE(router_logits, float, L * E);
    PLACE(router_probs, float, L * E);
    PLACE(sel, int32_t, L * S);
    PLACE(sel_w, float, L * S);
    PLACE(shexp_gate, float, L);
    PLACE(hnorm, float, L);
    PLACE(lens_id, int32_t, L * K);
    PLACE(lens_p, float, L * K);
    PLACE(lens_entropy, float, L);
    PLACE(lens_rank, int32_t, L);
#undef PLACE
    return off;
}

trace_store *trace_new(const moe_trace_dims *dims, const moe_trace_params *p, int32_t n_batch)
{
    trace_store *ts = calloc(1, sizeof *ts);
    if (!ts)
        return NULL;
    ts->p = *p;
    ts->d = *dims;
    ts->slot_bytes = slot_layout(dims, NULL, NULL);
    ts->n_batch = n_batch;
    ts->cur = calloc((size_t)n_batch, sizeof *ts->cur);
    if (!ts->cur) {
        free(ts);
        return NULL;
    }
    return ts;
}

void trace_free(trace_store *ts)
{
    if (!ts)
        return;
    for (int64_t b = 0; b < ts->n_blocks; b++)
        free(ts->blocks[b]);
    free(ts->blocks);
    free(ts->cur);
    free(ts);
}

const moe_trace_params *trace_params(const trace_store *ts)
{
    return &ts->p;
}

const moe_trace_dims *trace_dims(const trace_store *ts)
{
    return &ts->d;
}

int32_t trace_count(const trace_store *ts)
{
    return ts ? (int32_t)ts->count : 0;
}

static trace_entry *slot(const trace_store *ts, int64_t phys)
{
    return (trace_entry *)(void *)(ts->blocks[phys / TRACE_BLOCK] +
                                   (size_t)(phys % TRACE_BLOCK) * ts->slot_bytes);
}

const moe_trace_token *trace_get(const trace_store *ts, int32_t i)
{
    if (!ts || i < 0 || i >= ts->count)
        return NULL;
    return &slot(ts, (ts->start + i) % ts->cap)->pub;
}

void trace_clear(trace_store *ts)
{
    if (!ts)
        return;
    ts->start = 0;
    ts->count = 0;
}

static bool grow(trace_store *ts)
{
    char **nb = realloc(ts->blocks, (size_t)(ts->n_blocks + 1) * sizeof *nb);
    char *blk;
    if (!nb)
        return false;
    ts->blocks = nb;
    blk = calloc(TRACE_BLOCK, ts->slot_bytes);
    if (!blk)
        return false;
    ts->blocks[ts->n_blocks++] = blk;
    for (int64_t i = 0; i < TRACE_BLOCK; i++) {
        char *base = blk + (size_t)i * ts->slot_bytes;
        trace_entry *e = (trace_entry *)(void *)base;
        slot_layout(&ts->d, e, base);
        e->pub.layer_moe = e->layer_moe;
        e->pub.router_logits = e->router_logits;
        e->pub.router_probs = e->router_probs;
        e->pub.sel = e->sel;
        e->pub.sel_w = e->sel_w;
        e->pub.shexp_gate = e->shexp_gate;
        e->pub.hnorm = e->hnorm;
        e->pub.lens_id = e->lens_id;
        e->pub.lens_p = e->lens_p;
        e->pub.lens_entropy = e->lens_entropy;
        e->pub.lens_rank = e->lens_rank;
    }
    ts->cap += TRACE_BLOCK;
    return true;
}

static void entry_reset(const trace_store *ts, trace_entry *e)
{
    const size_t L = (size_t)ts->d.n_layer, E = (size_t)ts->d.n_expert;
    const size_t S = (size_t)ts->d.n_sel, K = (size_t)ts->d.lens_k;
    memset(e->layer_moe, 0, L * sizeof(bool));
    memset(e->router_logits, 0, L * E * sizeof(float));
    memset(e->router_probs, 0, L * E * sizeof(float));
    for (size_t i = 0; i < L * S; i++) {
        e->sel[i] = -1;
        e->sel_w[i] = 0.0f;
    }
    for (size_t i = 0; i < L; i++) {
        e->shexp_gate[i] = NAN;
        e->hnorm[i] = 0.0f;
        e->lens_entropy[i] = NAN;
        e->lens_rank[i] = -1;
    }
    for (size_t i = 0; i < L * K; i++) {
        e->lens_id[i] = -1;
        e->lens_p[i] = 0.0f;
    }
}

moe_status trace_begin(trace_store *ts, const int32_t *tokens, int32_t n, int32_t pos)
{
    const int64_t limit = ts->p.max_tokens > 0 ? ts->p.max_tokens : INT64_MAX;
    if (n > ts->n_batch)
        return moe_fail(MOE_ERR_INVALID_ARG, "trace batch of %d exceeds %d", n, ts->n_batch);
    ts->base = 0;
    for (int32_t t = 0; t < n; t++) {
        trace_entry *e;
        int64_t phys;
        if (ts->count >= limit) {
            /* ring: drop the oldest */
            ts->start = (ts->start + 1) % ts->cap;
            ts->count--;
        }
        if (ts->count >= ts->cap) {
            /* only reached without wrap-around (start == 0) */
            if (ts->start != 0 || !grow(ts))
                return moe_fail(MOE_ERR_NOMEM, "out of memory for trace entries");
        }
        phys = (ts->start + ts->count) % ts->cap;
        e = slot(ts, phys);
        entry_reset(ts, e);
        e->pub.pos = pos + t;
        e->pub.token = tokens[t];
        e->pub.prefill = n > 1;
        e->pub.exit_layer = ts->d.n_layer - 1;
        e->pub.exit_kind = 0;
        e->pub.exit_value = NAN;
        e->pub.time_ms = 0.0f;
        ts->cur[t] = e;
        ts->count++;
    }
    return MOE_OK;
}

trace_entry *trace_cur(trace_store *ts, int32_t t)
{
    return ts->cur[ts->base + t];
}

void trace_set_base(trace_store *ts, int32_t base)
{
    ts->base = base;
}

void trace_end(trace_store *ts, int32_t n, double seconds)
{
    for (int32_t t = 0; t < n; t++)
        ts->cur[t]->pub.time_ms = (float)(seconds * 1000.0 / n);
}
