/*
 * router.c - routing decisions of MoE layers (see router.h) and the router
 * lab that changes them: steering (top-k override, ban / force, router
 * temperature, expert output scale) and simulated expert capacity with
 * dropping and Rectify-Router (IR, FR). The one place where logits become
 * (expert, weight) lists, so the lab can observe and change every decision.
 * Depends on model.h, trace.h and util.h only; never prints.
 *
 * With no steering and no capacity set (ctx->route NULL or idle) the path is
 * exactly the model's own routing, so outputs stay bit-identical.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "trace.h"
#include "util.h"

/* ---- the model's own routing ------------------------------------------ */

/* The softmax's last step as the reference runtime takes it for a row of
 * a few experts: the exponentials summed in double, then each multiplied
 * by the float reciprocal of that sum (not divided by a float sum; the
 * two differ in the last bit often enough to move quantized activations
 * downstream). */
static void softmax_normalise(float *p, int32_t n)
{
    double tot = 0.0;
    for (int32_t e = 0; e < n; e++)
        tot += (double)p[e];
    const float inv = (float)(1.0 / tot);
    for (int32_t e = 0; e < n; e++)
        p[e] *= inv;
}

void model_route(const model_hparams *hp, const float *logits, float *probs, int32_t *sel,
                 float *weight)
{
    const int32_t ne = hp->n_expert, k = hp->n_expert_used;
    double sum = 0.0;
    if (hp->gate == GATE_SIGMOID) {
        for (int32_t e = 0; e < ne; e++)
            probs[e] = 1.0f / (1.0f + expf(-logits[e]));
    } else {
        float mx = -INFINITY;
        for (int32_t e = 0; e < ne; e++)
            mx = logits[e] > mx ? logits[e] : mx;
        for (int32_t e = 0; e < ne; e++)
            probs[e] = expf(logits[e] - mx);
        softmax_normalise(probs, ne);
    }
    /* top-k by probability, ties to the lower expert id */
    for (int32_t j = 0; j < k; j++) {
        int32_t best = -1;
        for (int32_t e = 0; e < ne; e++) {
            bool taken = false;
            for (int32_t i = 0; i < j; i++)
                taken |= sel[i] == e;
            if (!taken && (best < 0 || probs[e] > probs[best]))
                best = e;
        }
        sel[j] = best;
        weight[j] = probs[best];
        sum += (double)probs[best];
    }
    if (hp->unweighted) {
        for (int32_t j = 0; j < k; j++)
            weight[j] = 1.0f;
        return;
    }
    if (hp->norm_topk && sum > 0.0)
        for (int32_t j = 0; j < k; j++)
            weight[j] /= (float)sum;
    for (int32_t j = 0; j < k; j++)
        weight[j] *= hp->expert_weights_scale;
}

/* ---- router lab state --------------------------------------------------- */

enum { ROUTE_FREE = 0, ROUTE_BAN = 1, ROUTE_FORCE = 2, ROUTE_MODE_COUNT };

/* A sort key: token t (and expert e) ordered by key, descending. */
typedef struct {
    float key;
    int32_t t;
    int32_t e;
} route_key;

struct route_lab {
    int32_t n_layer, n_expert, n_sel, n_batch;
    bool any;          /* some layer is steered or capacity is on */
    bool *layer_on;    /* [n_layer] layer has steering */
    int32_t *top_k;    /* [n_layer] 0 = the model's n_expert_used */
    float *temp;       /* [n_layer] 1 = off */
    uint8_t *mode;     /* [n_layer][n_expert] ROUTE_FREE / _BAN / _FORCE */
    float *scale;      /* [n_layer][n_expert] 1 = off */
    moe_capacity_params cap;
    moe_route_counters cnt;
    /* scratch of one batch, allocated with the lab */
    int32_t *cand;     /* [n_batch] (k+1)-th choice of each token, -1 = none */
    route_key *order;  /* [n_batch] token priority */
    route_key *fill;   /* [n_batch] FR candidates */
    int32_t *kept;     /* [n_expert] assignments each expert accepted */
    uint8_t *dropped;  /* [n_batch][n_sel] 1 = this choice was dropped */
    int32_t *n_drop;   /* [n_batch] dropped choices of each token */
    int32_t *fill_e;   /* [n_batch] expert FR gave the token, -1 = none */
    int32_t *ir_h;     /* [n_batch] IR target of the token, -1 = none */
    float *mult;       /* [n_sel] multiplicities of one token's list */
};

void router_lab_free(route_lab *lab)
{
    if (!lab)
        return;
    free(lab->layer_on);
    free(lab->top_k);
    free(lab->temp);
    free(lab->mode);
    free(lab->scale);
    free(lab->cand);
    free(lab->order);
    free(lab->fill);
    free(lab->kept);
    free(lab->dropped);
    free(lab->n_drop);
    free(lab->fill_e);
    free(lab->ir_h);
    free(lab->mult);
    free(lab);
}

static void lab_defaults(route_lab *lab)
{
    const size_t nl = (size_t)lab->n_layer, ne = (size_t)lab->n_expert;
    for (size_t il = 0; il < nl; il++) {
        lab->layer_on[il] = false;
        lab->top_k[il] = 0;
        lab->temp[il] = 1.0f;
    }
    memset(lab->mode, ROUTE_FREE, nl * ne);
    for (size_t i = 0; i < nl * ne; i++)
        lab->scale[i] = 1.0f;
    memset(&lab->cap, 0, sizeof lab->cap);
    lab->cap.n_devices = 1;
    lab->any = false;
}

/* The lab of ctx, created on first use. */
static moe_status lab_get(moe_ctx *c, route_lab **out)
{
    const model_hparams *hp = &c->model->hp;
    route_lab *lab;
    size_t nl, ne, nb, ns;
    *out = c->route;
    if (c->route)
        return MOE_OK;
    if (hp->n_expert <= 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "the model has no experts to route");
    lab = calloc(1, sizeof *lab);
    if (!lab)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for router state");
    lab->n_layer = hp->n_layer;
    lab->n_expert = hp->n_expert;
    lab->n_sel = c->n_sel;
    lab->n_batch = c->n_batch;
    nl = (size_t)hp->n_layer;
    ne = (size_t)hp->n_expert;
    nb = (size_t)c->n_batch;
    ns = (size_t)c->n_sel;
    lab->layer_on = calloc(nl, sizeof *lab->layer_on);
    lab->top_k = calloc(nl, sizeof *lab->top_k);
    lab->temp = calloc(nl, sizeof *lab->temp);
    lab->mode = calloc(nl * ne, sizeof *lab->mode);
    lab->scale = calloc(nl * ne, sizeof *lab->scale);
    lab->cand = calloc(nb, sizeof *lab->cand);
    lab->order = calloc(nb, sizeof *lab->order);
    lab->fill = calloc(nb, sizeof *lab->fill);
    lab->kept = calloc(ne, sizeof *lab->kept);
    lab->dropped = calloc(nb * ns, sizeof *lab->dropped);
    lab->n_drop = calloc(nb, sizeof *lab->n_drop);
    lab->fill_e = calloc(nb, sizeof *lab->fill_e);
    lab->ir_h = calloc(nb, sizeof *lab->ir_h);
    lab->mult = calloc(ns, sizeof *lab->mult);
    if (!lab->mult || !lab->layer_on || !lab->top_k || !lab->temp || !lab->mode || !lab->scale ||
        !lab->cand || !lab->order || !lab->fill || !lab->kept || !lab->dropped ||
        !lab->n_drop || !lab->fill_e || !lab->ir_h) {
        router_lab_free(lab);
        return moe_fail(MOE_ERR_NOMEM, "out of memory for router state");
    }
    lab_defaults(lab);
    c->route = lab;
    *out = lab;
    return MOE_OK;
}

/* Recompute the per-layer "steered" flags and the global one. */
static void lab_refresh(route_lab *lab)
{
    const int32_t ne = lab->n_expert;
    bool any = lab->cap.capacity_factor > 0.0f;
    for (int32_t il = 0; il < lab->n_layer; il++) {
        bool on = lab->top_k[il] != 0 || lab->temp[il] != 1.0f;
        for (int32_t e = 0; e < ne && !on; e++)
            on = lab->mode[(size_t)il * ne + e] != ROUTE_FREE ||
                 lab->scale[(size_t)il * ne + e] != 1.0f;
        lab->layer_on[il] = on;
        any |= on;
    }
    lab->any = any;
}

/* Check layer (-1 = all) and expert (-1 = none asked); sets [*l0, *l1). */
static moe_status lab_range(const moe_ctx *c, int32_t layer, int32_t expert, bool need_expert,
                            int32_t *l0, int32_t *l1)
{
    const model_hparams *hp = &c->model->hp;
    if (hp->n_expert <= 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "the model has no experts to route");
    if (layer < -1 || layer >= hp->n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "layer %d out of range [-1, %d)", layer,
                        hp->n_layer);
    if (need_expert && (expert < 0 || expert >= hp->n_expert))
        return moe_fail(MOE_ERR_INVALID_ARG, "expert %d out of range [0, %d)", expert,
                        hp->n_expert);
    *l0 = layer < 0 ? 0 : layer;
    *l1 = layer < 0 ? hp->n_layer : layer + 1;
    return MOE_OK;
}

/* ---- public steering API ------------------------------------------------ */

void moe_route_reset(moe_ctx *c)
{
    if (c && c->route)
        lab_defaults(c->route);
}

moe_status moe_route_set_top_k(moe_ctx *c, int32_t layer, int32_t k)
{
    int32_t l0 = 0, l1 = 0;
    route_lab *lab;
    moe_status st = lab_range(c, layer, -1, false, &l0, &l1);
    if (st != MOE_OK)
        return st;
    if (k < 0 || k > c->model->hp.n_expert)
        return moe_fail(MOE_ERR_INVALID_ARG, "top-k %d out of range [0, %d]", k,
                        c->model->hp.n_expert);
    if (k > c->n_sel - 1)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "top-k %d exceeds this context's %d expert slots (create it with "
                        "max_top_k >= %d)",
                        k, c->n_sel - 1, k);
    if ((st = lab_get(c, &lab)) != MOE_OK)
        return st;
    for (int32_t il = l0; il < l1; il++)
        lab->top_k[il] = k == c->model->hp.n_expert_used ? 0 : k;
    lab_refresh(lab);
    return MOE_OK;
}

moe_status moe_route_set_temperature(moe_ctx *c, int32_t layer, float t)
{
    int32_t l0 = 0, l1 = 0;
    route_lab *lab;
    moe_status st = lab_range(c, layer, -1, false, &l0, &l1);
    if (st != MOE_OK)
        return st;
    if (!(t > 0.0f) || !isfinite(t))
        return moe_fail(MOE_ERR_INVALID_ARG, "router temperature %g must be > 0", (double)t);
    if ((st = lab_get(c, &lab)) != MOE_OK)
        return st;
    for (int32_t il = l0; il < l1; il++)
        lab->temp[il] = t;
    lab_refresh(lab);
    return MOE_OK;
}

static moe_status set_mode(moe_ctx *c, int32_t layer, int32_t expert, uint8_t mode, bool on)
{
    int32_t l0 = 0, l1 = 0;
    route_lab *lab;
    moe_status st = lab_range(c, layer, expert, true, &l0, &l1);
    const int32_t ne = c->model->hp.n_expert;
    if (st != MOE_OK)
        return st;
    if ((st = lab_get(c, &lab)) != MOE_OK)
        return st;
    if (mode == ROUTE_FORCE && on)
        for (int32_t il = l0; il < l1; il++) {
            int32_t n_force = 1;
            for (int32_t e = 0; e < ne; e++)
                n_force += e != expert && lab->mode[(size_t)il * ne + e] == ROUTE_FORCE;
            if (n_force > c->n_sel - 1)
                return moe_fail(MOE_ERR_INVALID_ARG,
                                "layer %d: %d forced experts exceed the %d expert slots "
                                "(needs max_top_k >= %d)",
                                il, n_force, c->n_sel - 1, n_force);
        }
    for (int32_t il = l0; il < l1; il++) {
        uint8_t *m = &lab->mode[(size_t)il * ne + expert];
        if (on)
            *m = mode;
        else if (*m == mode)
            *m = ROUTE_FREE;
    }
    lab_refresh(lab);
    return MOE_OK;
}

moe_status moe_route_ban(moe_ctx *c, int32_t layer, int32_t expert, bool on)
{
    return set_mode(c, layer, expert, ROUTE_BAN, on);
}

moe_status moe_route_force(moe_ctx *c, int32_t layer, int32_t expert, bool on)
{
    return set_mode(c, layer, expert, ROUTE_FORCE, on);
}

moe_status moe_route_set_scale(moe_ctx *c, int32_t layer, int32_t expert, float scale)
{
    int32_t l0 = 0, l1 = 0;
    route_lab *lab;
    moe_status st = lab_range(c, layer, expert, true, &l0, &l1);
    if (st != MOE_OK)
        return st;
    if (!isfinite(scale))
        return moe_fail(MOE_ERR_INVALID_ARG, "expert scale must be finite");
    if ((st = lab_get(c, &lab)) != MOE_OK)
        return st;
    for (int32_t il = l0; il < l1; il++)
        lab->scale[(size_t)il * c->model->hp.n_expert + expert] = scale;
    lab_refresh(lab);
    return MOE_OK;
}

moe_status moe_route_set_capacity(moe_ctx *c, const moe_capacity_params *p)
{
    route_lab *lab;
    moe_capacity_params q;
    moe_status st;
    if (!p)
        return moe_fail(MOE_ERR_INVALID_ARG, "no capacity parameters");
    q = *p;
    if (!(q.capacity_factor >= 0.0f) || !isfinite(q.capacity_factor))
        return moe_fail(MOE_ERR_INVALID_ARG, "capacity factor %g must be >= 0",
                        (double)q.capacity_factor);
    if ((unsigned)q.drop >= MOE_DROP_COUNT)
        return moe_fail(MOE_ERR_INVALID_ARG, "bad drop policy %d", (int)q.drop);
    if ((unsigned)q.rectify >= MOE_RECTIFY_COUNT)
        return moe_fail(MOE_ERR_INVALID_ARG, "bad rectify mode %d", (int)q.rectify);
    if (q.n_devices == 0)
        q.n_devices = 1;
    if (c->model->hp.n_expert <= 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "the model has no experts to route");
    if (q.n_devices < 1 || q.n_devices > c->model->hp.n_expert)
        return moe_fail(MOE_ERR_INVALID_ARG, "%d devices out of range [1, %d]", q.n_devices,
                        c->model->hp.n_expert);
    if ((st = lab_get(c, &lab)) != MOE_OK)
        return st;
    lab->cap = q;
    lab_refresh(lab);
    return MOE_OK;
}

moe_status moe_route_get_capacity(const moe_ctx *c, moe_capacity_params *out)
{
    if (!out)
        return moe_fail(MOE_ERR_INVALID_ARG, "no output");
    memset(out, 0, sizeof *out);
    out->n_devices = 1;
    if (c->route)
        *out = c->route->cap;
    return MOE_OK;
}

void moe_route_get_counters(const moe_ctx *c, moe_route_counters *out)
{
    memset(out, 0, sizeof *out);
    if (c->route)
        *out = c->route->cnt;
}

void moe_route_reset_counters(moe_ctx *c)
{
    if (c->route)
        memset(&c->route->cnt, 0, sizeof c->route->cnt);
}

void router_set_counters(moe_ctx *c, const moe_route_counters *cnt)
{
    if (c->route)
        c->route->cnt = *cnt;
}

int32_t moe_route_get_top_k(const moe_ctx *c, int32_t layer)
{
    const model_hparams *hp = &c->model->hp;
    if (hp->n_expert <= 0 || layer < 0 || layer >= hp->n_layer)
        return 0;
    if (c->route && c->route->top_k[layer])
        return c->route->top_k[layer];
    return hp->n_expert_used;
}

/* ---- steered routing of one token --------------------------------------- */

static float prob_of(const model_hparams *hp, float z, float mx)
{
    return hp->gate == GATE_SIGMOID ? 1.0f / (1.0f + expf(-z)) : expf(z - mx);
}

/* Weights of an (expert, multiplicity) list by the architecture's rule:
 * probability x multiplicity, renormalised to sum 1 over the list when the
 * architecture renormalises (weight 1 x multiplicity for unweighted EMoE
 * gating), times the file's expert weight scale and the steering scale. */
static void weigh(const model_hparams *hp, const float *probs, const float *scale,
                  const int32_t *sel, const float *mult, int32_t n, float *w)
{
    double sum = 0.0;
    for (int32_t j = 0; j < n; j++) {
        w[j] = probs[sel[j]] * mult[j];
        sum += (double)w[j];
    }
    if (hp->unweighted) {
        for (int32_t j = 0; j < n; j++)
            w[j] = mult[j] * scale[sel[j]];
        return;
    }
    if (hp->norm_topk && sum > 0.0)
        for (int32_t j = 0; j < n; j++)
            w[j] /= (float)sum;
    for (int32_t j = 0; j < n; j++)
        w[j] *= hp->expert_weights_scale * scale[sel[j]];
}

/* Route one token of layer il under the lab's steering. Writes probs, sel
 * and w (best first), returns the number of selected experts; *cand gets
 * the best expert left out (the (k+1)-th choice; -1 if none). */
static int32_t route_steered(route_lab *lab, const model_hparams *hp, int32_t il,
                             int32_t ns, const float *logits, float *probs, int32_t *sel,
                             float *w, int32_t *cand)
{
    const int32_t ne = hp->n_expert;
    const uint8_t *mode = lab->mode + (size_t)il * ne;
    const float *scale = lab->scale + (size_t)il * ne;
    const float temp = lab->temp[il];
    int32_t k = lab->top_k[il] ? lab->top_k[il] : hp->n_expert_used;
    int32_t n_force = 0, n_ban = 0, n = 0;
    float mx = -INFINITY, *one = lab->mult;

    /* probabilities of the tempered logits, same arithmetic as model_route */
    for (int32_t e = 0; e < ne; e++) {
        float z = temp == 1.0f ? logits[e] : logits[e] / temp;
        mx = z > mx ? z : mx;
        n_force += mode[e] == ROUTE_FORCE;
        n_ban += mode[e] == ROUTE_BAN;
    }
    for (int32_t e = 0; e < ne; e++) {
        float z = temp == 1.0f ? logits[e] : logits[e] / temp;
        probs[e] = prob_of(hp, z, mx);
    }
    if (hp->gate != GATE_SIGMOID)
        softmax_normalise(probs, ne);

    /* forced experts first, then the best free ones; banned never */
    if (k < n_force)
        k = n_force;
    if (k > ne - n_ban)
        k = ne - n_ban;
    if (k > ns - 1)
        k = ns - 1;
    for (int32_t j = 0; j <= k; j++) {
        int32_t best = -1;
        bool best_forced = false;
        for (int32_t e = 0; e < ne; e++) {
            bool taken = false, forced = mode[e] == ROUTE_FORCE;
            if (mode[e] == ROUTE_BAN)
                continue;
            for (int32_t i = 0; i < n; i++)
                taken |= sel[i] == e;
            if (taken)
                continue;
            if (best < 0 || (forced && !best_forced) ||
                (forced == best_forced && probs[e] > probs[best])) {
                best = e;
                best_forced = forced;
            }
        }
        if (j == k) {
            *cand = best;
            break;
        }
        sel[n++] = best;
    }
    /* best first by probability (stable: ties keep the lower id first) */
    for (int32_t i = 1; i < n; i++) {
        int32_t e = sel[i], j = i;
        while (j > 0 && (probs[sel[j - 1]] < probs[e] ||
                         (probs[sel[j - 1]] == probs[e] && sel[j - 1] > e))) {
            sel[j] = sel[j - 1];
            j--;
        }
        sel[j] = e;
    }
    for (int32_t j = 0; j < n; j++)
        one[j] = 1.0f;
    weigh(hp, probs, scale, sel, one, n, w);
    return n;
}

/* The best free expert token t did not select (FR candidate), or -1. */
static int32_t next_choice(const route_lab *lab, int32_t il, int32_t ne, const float *probs,
                           const int32_t *sel, int32_t n_sel)
{
    const uint8_t *mode = lab->mode + (size_t)il * ne;
    int32_t best = -1;
    for (int32_t e = 0; e < ne; e++) {
        bool taken = false;
        if (mode[e] == ROUTE_BAN)
            continue;
        for (int32_t i = 0; i < n_sel; i++)
            taken |= sel[i] == e;
        if (!taken && (best < 0 || probs[e] > probs[best]))
            best = e;
    }
    return best;
}

/* ---- capacity and Rectify-Router ----------------------------------------- */

static int key_cmp(const void *a, const void *b)
{
    const route_key *x = a, *y = b;
    if (x->e != y->e)
        return x->e < y->e ? -1 : 1;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return (x->t > y->t) - (x->t < y->t);
}

/* Apply expert capacity to the n tokens' selections of layer il (see moe.h
 * "capacity" for the rules). Rewrites sel/sel_w/n_sel_tok of tokens that
 * lose or gain experts; others are left bit for bit. */
static void capacity_apply(moe_ctx *c, route_lab *lab, int32_t il, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t ne = hp->n_expert, ns = c->n_sel;
    const int32_t k = lab->top_k[il] ? lab->top_k[il] : hp->n_expert_used;
    const int32_t n_dev = lab->cap.n_devices > 0 ? lab->cap.n_devices : 1;
    const bool ir = lab->cap.rectify & MOE_RECTIFY_IR, fr = lab->cap.rectify & MOE_RECTIFY_FR;
    const float *scale = lab->scale + (size_t)il * ne;
    const uint8_t *mode = lab->mode + (size_t)il * ne;
    double capd = ceil((double)lab->cap.capacity_factor * (double)k * (double)n / (double)ne);
    int64_t cap = capd > (double)INT32_MAX ? INT32_MAX : (int64_t)capd;
    int32_t n_fill = 0;

    /* claim order: by position, or by each token's top score */
    for (int32_t t = 0; t < n; t++) {
        const float *pr = c->router_probs + (size_t)t * ne;
        const int32_t *sel = c->sel + (size_t)t * ns;
        float top = -INFINITY;
        for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
            top = pr[sel[j]] > top ? pr[sel[j]] : top;
        lab->order[t].key = lab->cap.drop == MOE_DROP_SCORE ? top : 0.0f;
        lab->order[t].t = t;
        lab->order[t].e = 0;
        lab->n_drop[t] = 0;
        lab->fill_e[t] = -1;
        lab->ir_h[t] = -1;
    }
    if (lab->cap.drop == MOE_DROP_SCORE)
        qsort(lab->order, (size_t)n, sizeof *lab->order, key_cmp);
    memset(lab->kept, 0, (size_t)ne * sizeof *lab->kept);
    for (int32_t i = 0; i < n; i++) {
        const int32_t t = lab->order[i].t;
        for (int32_t j = 0; j < c->n_sel_tok[t]; j++) {
            const int32_t e = c->sel[(size_t)t * ns + j];
            uint8_t *d = &lab->dropped[(size_t)t * ns + j];
            lab->cnt.routed++;
            if (lab->kept[e] < cap) {
                lab->kept[e]++;
                *d = 0;
            } else {
                *d = 1;
                lab->n_drop[t]++;
                lab->cnt.dropped++;
            }
        }
    }
    for (int32_t e = 0; e < ne; e++)
        lab->cnt.padded += cap - lab->kept[e];

    /* FR: padding slots of each expert go to the tokens whose (k+1)-th
     * choice it is, highest probability for that expert first */
    if (fr) {
        for (int32_t t = 0; t < n; t++)
            if (lab->cand[t] >= 0) {
                route_key *q = &lab->fill[n_fill++];
                q->e = lab->cand[t];
                q->key = c->router_probs[(size_t)t * ne + q->e];
                q->t = t;
            }
        qsort(lab->fill, (size_t)n_fill, sizeof *lab->fill, key_cmp);
        for (int32_t i = 0; i < n_fill; i++) {
            const route_key *q = &lab->fill[i];
            if (lab->kept[q->e] < cap) {
                lab->kept[q->e]++;
                lab->fill_e[q->t] = q->e;
                lab->cnt.filled++;
            }
        }
    }

    /* IR: a token's dropped choices go to the best expert on its own device
     * (not banned, not one it was dropped from); no capacity check there */
    if (ir)
        for (int32_t t = 0; t < n; t++) {
            const float *pr = c->router_probs + (size_t)t * ne;
            const int32_t dev = (int32_t)((int64_t)t * n_dev / n);
            int32_t h = -1;
            if (!lab->n_drop[t])
                continue;
            for (int32_t e = 0; e < ne; e++) {
                bool was_dropped = false;
                if ((int32_t)((int64_t)e * n_dev / ne) != dev || mode[e] == ROUTE_BAN)
                    continue;
                for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
                    was_dropped |= c->sel[(size_t)t * ns + j] == e &&
                                   lab->dropped[(size_t)t * ns + j];
                if (!was_dropped && (h < 0 || pr[e] > pr[h]))
                    h = e;
            }
            if (h >= 0) {
                lab->ir_h[t] = h;
                lab->cnt.rerouted += lab->n_drop[t];
            }
        }

    /* rewrite the lists of tokens that lost or gained experts */
    for (int32_t t = 0; t < n; t++) {
        int32_t *sel = c->sel + (size_t)t * ns;
        float *w = c->sel_w + (size_t)t * ns;
        const uint8_t *d = lab->dropped + (size_t)t * ns;
        const float *pr = c->router_probs + (size_t)t * ne;
        int32_t m = 0, r = lab->n_drop[t];
        float *mult = lab->mult;
        if (!r && lab->fill_e[t] < 0)
            continue;
        if (lab->ir_h[t] < 0 && lab->fill_e[t] < 0) {
            /* plain drop: the token just loses those experts' shares */
            for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
                if (!d[j]) {
                    sel[m] = sel[j];
                    w[m++] = w[j];
                }
        } else {
            /* gained experts: weights by the architecture's rule over the
             * reached multiset (IR target counted once per drop) */
            const int32_t extra[2] = {lab->ir_h[t], lab->fill_e[t]};
            for (int32_t j = 0; j < c->n_sel_tok[t]; j++)
                if (!d[j]) {
                    sel[m] = sel[j];
                    mult[m++] = 1.0f;
                }
            for (int32_t x = 0; x < 2; x++) {
                const float add = x == 0 ? (float)r : 1.0f;
                int32_t i = 0;
                if (extra[x] < 0)
                    continue;
                while (i < m && sel[i] != extra[x])
                    i++;
                if (i == m) {
                    sel[m] = extra[x];
                    mult[m++] = add;
                } else {
                    mult[i] += add;
                }
            }
            /* best first by probability */
            for (int32_t i = 1; i < m; i++) {
                int32_t e = sel[i], j = i;
                float mu = mult[i];
                while (j > 0 && (pr[sel[j - 1]] < pr[e] ||
                                 (pr[sel[j - 1]] == pr[e] && sel[j - 1] > e))) {
                    sel[j] = sel[j - 1];
                    mult[j] = mult[j - 1];
                    j--;
                }
                sel[j] = e;
                mult[j] = mu;
            }
            weigh(hp, pr, scale, sel, mult, m, w);
        }
        for (int32_t j = m; j < ns; j++) {
            sel[j] = -1;
            w[j] = 0.0f;
        }
        c->n_sel_tok[t] = m;
    }
}

/* ---- per-layer entry point ---------------------------------------------- */

void router_select(moe_ctx *c, int32_t il, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    const int32_t ne = hp->n_expert, k = hp->n_expert_used, ns = c->n_sel;
    route_lab *lab = c->route && c->route->any ? c->route : NULL;
    const bool steer = lab && lab->layer_on[il];
    const bool capacity = lab && lab->cap.capacity_factor > 0.0f;
    for (int32_t t = 0; t < n; t++) {
        const float *lg = c->router_logits + (size_t)t * ne;
        float *pr = c->router_probs + (size_t)t * ne;
        int32_t *sel = c->sel + (size_t)t * ns;
        float *w = c->sel_w + (size_t)t * ns;
        int32_t m = k;
        if (steer) {
            int32_t cand = -1;
            m = route_steered(lab, hp, il, ns, lg, pr, sel, w, &cand);
            if (capacity)
                lab->cand[t] = cand;
        } else {
            model_route(hp, lg, pr, sel, w);
            if (capacity)
                lab->cand[t] = next_choice(lab, il, ne, pr, sel, k);
        }
        for (int32_t j = m; j < ns; j++) {
            sel[j] = -1;
            w[j] = 0.0f;
        }
        c->n_sel_tok[t] = m;
    }
    if (capacity)
        capacity_apply(c, lab, il, n);
    if (c->trace)
        for (int32_t t = 0; t < n; t++) {
            trace_entry *e = trace_cur(c->trace, t);
            e->layer_moe[il] = true;
            memcpy(e->router_logits + (size_t)il * ne, c->router_logits + (size_t)t * ne,
                   (size_t)ne * sizeof(float));
            memcpy(e->router_probs + (size_t)il * ne, c->router_probs + (size_t)t * ne,
                   (size_t)ne * sizeof(float));
            memcpy(e->sel + (size_t)il * ns, c->sel + (size_t)t * ns, (size_t)ns * sizeof(int32_t));
            memcpy(e->sel_w + (size_t)il * ns, c->sel_w + (size_t)t * ns,
                   (size_t)ns * sizeof(float));
        }
}
