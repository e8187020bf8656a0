/*
 * bricks.c - bricks (DESIGN.md "Bricks"): naming and sizing the functional
 * units of a loaded model (layers, attention heads, dense FFNs, routed
 * experts, shared experts), and editing a model file's routed experts:
 * merge (weighted average), grow (clone with noise), prune (remove), saved
 * as a new GGUF with the GGUF writer.
 *
 * The editor works on the file (gguf), not on a loaded model: untouched
 * experts are copied as their exact bytes, new ones are computed in f32 and
 * stored in the source tensor's type. Run-time disabling is the router
 * lab's ban (router.c), not here. Depends on model.h (for listing), gguf,
 * quant and util; never prints.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "model.h"
#include "quant.h"
#include "util.h"

/* ---- listing -------------------------------------------------------------- */

static const char *const brick_kind_names[] = {
    [MOE_BRICK_LAYER] = "layer",
    [MOE_BRICK_HEAD] = "head",
    [MOE_BRICK_FFN] = "ffn",
    [MOE_BRICK_EXPERT] = "expert",
    [MOE_BRICK_SHARED_EXPERT] = "shexp",
};
_Static_assert(sizeof brick_kind_names / sizeof brick_kind_names[0] == MOE_BRICK_KIND_COUNT,
               "brick_kind_names must cover moe_brick_kind");

const char *moe_brick_kind_name(moe_brick_kind k)
{
    return (unsigned)k < MOE_BRICK_KIND_COUNT ? brick_kind_names[k] : "unknown";
}

static bool brick_layer_moe(const moe_model *m, int32_t il)
{
    return m->layers[il].gate_inp.data != NULL;
}

/* Bricks of layer il after the layer brick itself. */
static int32_t brick_layer_count(const moe_model *m, int32_t il)
{
    int32_t n = 1 + m->hp.n_head;
    if (brick_layer_moe(m, il))
        n += m->hp.n_expert + (m->layers[il].gate_inp_shexp.data ? 1 : 0);
    else if (m->layers[il].ffn_gate.data)
        n += 1;
    return n;
}

int32_t moe_model_n_bricks(const moe_model *m)
{
    int32_t n = 0;
    if (!m)
        return 0;
    for (int32_t il = 0; il < m->hp.n_layer; il++)
        n += brick_layer_count(m, il);
    return n;
}

static int64_t mt_elems(const mtensor *t)
{
    return t->data ? t->ne[0] * t->ne[1] * t->ne[2] : 0;
}

static int64_t mt_bytes(const mtensor *t)
{
    return t->data ? (int64_t)t->row_bytes * t->ne[1] * t->ne[2] : 0;
}

/* "blk.<n>.<rest>" -> n, or -1 */
static int brick_block_of(const char *name, const char **rest)
{
    char *end;
    long v;
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    v = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || v < 0 || v > 1000000)
        return -1;
    if (rest)
        *rest = end + 1;
    return (int)v;
}

static void brick_layer_totals(const moe_model *m, int32_t il, int64_t *np, int64_t *nb)
{
    *np = 0;
    *nb = 0;
    for (int64_t i = 0; i < gguf_n_tensors(m->gguf); i++) {
        const gguf_tensor_info *t = gguf_tensor(m->gguf, i);
        if (brick_block_of(t->name, NULL) == il) {
            *np += t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3];
            *nb += (int64_t)t->nbytes;
        }
    }
}

moe_status moe_model_brick(const moe_model *m, int32_t i, moe_brick *b)
{
    int32_t il = 0, j;
    const model_layer *L;
    const model_hparams *hp;
    if (!m || !b || i < 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "brick %d out of range", i);
    hp = &m->hp;
    while (il < hp->n_layer && i >= brick_layer_count(m, il))
        i -= brick_layer_count(m, il++);
    if (il >= hp->n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "brick index out of range");
    L = &m->layers[il];
    memset(b, 0, sizeof *b);
    b->layer = il;
    b->index = -1;
    if (i == 0) {
        b->kind = MOE_BRICK_LAYER;
        brick_layer_totals(m, il, &b->n_params, &b->bytes);
        snprintf(b->name, sizeof b->name, "blk.%d", il);
        return MOE_OK;
    }
    j = i - 1;
    if (j < hp->n_head) {
        const int64_t hd = hp->n_embd_head, n_q = (int64_t)hp->n_head * hd;
        b->kind = MOE_BRICK_HEAD;
        b->index = j;
        b->n_params = hd * hp->n_embd + hp->n_embd * hd + (L->bq.data ? hd : 0);
        b->bytes = (int64_t)L->wq.row_bytes * hd + mt_bytes(&L->wo) * hd / n_q +
                   (L->bq.data ? hd * (int64_t)sizeof(float) : 0);
        snprintf(b->name, sizeof b->name, "blk.%d.head.%d", il, j);
        return MOE_OK;
    }
    j -= hp->n_head;
    if (!brick_layer_moe(m, il)) {
        b->kind = MOE_BRICK_FFN;
        b->n_params = mt_elems(&L->ffn_gate) + mt_elems(&L->ffn_up) + mt_elems(&L->ffn_down);
        b->bytes = mt_bytes(&L->ffn_gate) + mt_bytes(&L->ffn_up) + mt_bytes(&L->ffn_down);
        snprintf(b->name, sizeof b->name, "blk.%d.ffn", il);
        return MOE_OK;
    }
    if (j < hp->n_expert) {
        const int64_t ne = hp->n_expert;
        b->kind = MOE_BRICK_EXPERT;
        b->index = j;
        b->n_params = (mt_elems(&L->gate_exps) + mt_elems(&L->up_exps) +
                       mt_elems(&L->down_exps)) / ne + hp->n_embd;
        b->bytes = (mt_bytes(&L->gate_exps) + mt_bytes(&L->up_exps) + mt_bytes(&L->down_exps)) /
                       ne + (int64_t)L->gate_inp.row_bytes;
        snprintf(b->name, sizeof b->name, hp->unweighted ? "blk.%d.emoe.%d" : "blk.%d.expert.%d",
                 il, j);
        return MOE_OK;
    }
    b->kind = MOE_BRICK_SHARED_EXPERT;
    b->n_params = mt_elems(&L->gate_shexp) + mt_elems(&L->up_shexp) + mt_elems(&L->down_shexp) +
                  mt_elems(&L->gate_inp_shexp);
    b->bytes = mt_bytes(&L->gate_shexp) + mt_bytes(&L->up_shexp) + mt_bytes(&L->down_shexp) +
               mt_bytes(&L->gate_inp_shexp);
    snprintf(b->name, sizeof b->name, "blk.%d.shexp", il);
    return MOE_OK;
}

/* ---- the editor ------------------------------------------------------------ */

typedef struct {
    int32_t src;   /* expert id in the source file; -1: owned f32 below */
    float *gate;   /* [n_ff_exp][n_embd] */
    float *up;     /* [n_ff_exp][n_embd] */
    float *down;   /* [n_embd][n_ff_exp] */
    float *router; /* [n_embd] */
} brk_expert;

typedef struct {
    int32_t n;     /* experts now; 0 = dense layer */
    int32_t cap;
    brk_expert *e;
    const gguf_tensor_info *t_router, *t_gate, *t_up, *t_down;
} brk_layer;

struct moe_bricks {
    gguf_ctx *g;
    char arch[64];
    int32_t n_layer, n_expert, n_expert_used;
    int64_t n_embd, n_ff_exp;
    brk_layer *layers;
    char *ops;     /* "; "-separated history, malloc'd */
};

static void brk_expert_free(brk_expert *e)
{
    free(e->gate);
    free(e->up);
    free(e->down);
    free(e->router);
    memset(e, 0, sizeof *e);
    e->src = -1;
}

void moe_bricks_free(moe_bricks *b)
{
    if (!b)
        return;
    if (b->layers)
        for (int32_t il = 0; il < b->n_layer; il++) {
            for (int32_t e = 0; e < b->layers[il].n; e++)
                brk_expert_free(&b->layers[il].e[e]);
            free(b->layers[il].e);
        }
    free(b->layers);
    free(b->ops);
    gguf_close(b->g);
    free(b);
}

static moe_status brk_tensor(const moe_bricks *b, int32_t il, const char *suffix, int64_t ne0,
                             int64_t ne1, int64_t ne2, int n_dims,
                             const gguf_tensor_info **out)
{
    char name[96];
    const gguf_tensor_info *t;
    snprintf(name, sizeof name, "blk.%d.%s", il, suffix);
    t = gguf_find_tensor(b->g, name);
    if (!t)
        return moe_fail(MOE_ERR_FORMAT, "bricks: missing tensor '%s'", name);
    if (t->n_dims != n_dims || t->ne[0] != ne0 || t->ne[1] != ne1 ||
        (n_dims > 2 && t->ne[2] != ne2))
        return moe_fail(MOE_ERR_FORMAT, "bricks: tensor '%s' has an unexpected shape", name);
    if (!quant_type_supported((int)t->type) || t->type == MOE_TYPE_Q8_K)
        return moe_fail(MOE_ERR_UNSUPPORTED, "bricks: tensor '%s' has type %s", name,
                        quant_type_name((int)t->type));
    *out = t;
    return MOE_OK;
}

moe_status moe_bricks_open(const char *path, moe_bricks **out)
{
    moe_bricks *b;
    moe_status st;
    const char *arch;
    char key[128];
    int64_t v;
    bool any = false;

    if (!out)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks: no out pointer");
    *out = NULL;
    if (!path)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks: no path");
    b = calloc(1, sizeof *b);
    if (!b)
        return moe_fail(MOE_ERR_NOMEM, "bricks: out of memory");
    if ((st = gguf_open(path, &b->g)))
        goto fail;
    arch = gguf_get_str(b->g, "general.architecture");
    if (!arch || strlen(arch) >= sizeof b->arch) {
        st = moe_fail(MOE_ERR_FORMAT, "bricks: %s has no usable general.architecture", path);
        goto fail;
    }
    strcpy(b->arch, arch);
#define AKEY(s) (snprintf(key, sizeof key, "%s.%s", b->arch, s), key)
    if (!gguf_get_int(b->g, AKEY("expert_count"), &v) || v < 1 || v > 4096) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "bricks: %s has no routed experts", path);
        goto fail;
    }
    b->n_expert = (int32_t)v;
    if (!gguf_get_int(b->g, AKEY("expert_used_count"), &v) || v < 1 || v > b->n_expert) {
        st = moe_fail(MOE_ERR_FORMAT, "bricks: bad %s.expert_used_count", b->arch);
        goto fail;
    }
    b->n_expert_used = (int32_t)v;
    if (!gguf_get_int(b->g, AKEY("block_count"), &v) || v < 1 || v > 4096) {
        st = moe_fail(MOE_ERR_FORMAT, "bricks: bad %s.block_count", b->arch);
        goto fail;
    }
    b->n_layer = (int32_t)v;
    if (!gguf_get_int(b->g, AKEY("embedding_length"), &b->n_embd) || b->n_embd < 1 ||
        b->n_embd > (1 << 16)) {
        st = moe_fail(MOE_ERR_FORMAT, "bricks: bad %s.embedding_length", b->arch);
        goto fail;
    }
#undef AKEY
    {
        const char *ops = gguf_get_str(b->g, "moestudio.bricks.ops");
        size_t n = ops ? strlen(ops) : 0;
        b->ops = malloc(n + 1);
        if (!b->ops) {
            st = moe_fail(MOE_ERR_NOMEM, "bricks: out of memory");
            goto fail;
        }
        memcpy(b->ops, ops ? ops : "", n + 1);
    }
    b->layers = calloc((size_t)b->n_layer, sizeof *b->layers);
    if (!b->layers) {
        st = moe_fail(MOE_ERR_NOMEM, "bricks: out of memory");
        goto fail;
    }
    /* every tensor of a block named like a per-expert tensor must be one
     * we know how to edit */
    for (int64_t i = 0; i < gguf_n_tensors(b->g); i++) {
        const gguf_tensor_info *t = gguf_tensor(b->g, i);
        const char *rest;
        if (brick_block_of(t->name, &rest) >= 0 && strstr(rest, "exp") &&
            !strstr(rest, "shexp") && strcmp(rest, "ffn_gate_exps.weight") != 0 &&
            strcmp(rest, "ffn_up_exps.weight") != 0 && strcmp(rest, "ffn_down_exps.weight") != 0) {
            st = moe_fail(MOE_ERR_UNSUPPORTED, "bricks: per-expert tensor '%s' is not supported",
                          t->name);
            goto fail;
        }
    }
    for (int32_t il = 0; il < b->n_layer; il++) {
        brk_layer *L = &b->layers[il];
        char name[96];
        snprintf(name, sizeof name, "blk.%d.ffn_gate_inp.weight", il);
        if (!gguf_find_tensor(b->g, name))
            continue;
        {
            const gguf_tensor_info *t;
            snprintf(name, sizeof name, "blk.%d.ffn_gate_exps.weight", il);
            t = gguf_find_tensor(b->g, name);
            if (!t || t->n_dims != 3 || t->ne[1] < 1) {
                st = moe_fail(MOE_ERR_FORMAT, "bricks: layer %d has no usable '%s'", il, name);
                goto fail;
            }
            if (!any)
                b->n_ff_exp = t->ne[1];
            else if (t->ne[1] != b->n_ff_exp) {
                st = moe_fail(MOE_ERR_FORMAT, "bricks: layer %d expert width differs", il);
                goto fail;
            }
        }
        if ((st = brk_tensor(b, il, "ffn_gate_inp.weight", b->n_embd, b->n_expert, 1, 2,
                             &L->t_router)) ||
            (st = brk_tensor(b, il, "ffn_gate_exps.weight", b->n_embd, b->n_ff_exp, b->n_expert, 3,
                             &L->t_gate)) ||
            (st = brk_tensor(b, il, "ffn_up_exps.weight", b->n_embd, b->n_ff_exp, b->n_expert, 3,
                             &L->t_up)) ||
            (st = brk_tensor(b, il, "ffn_down_exps.weight", b->n_ff_exp, b->n_embd, b->n_expert, 3,
                             &L->t_down)))
            goto fail;
        L->n = L->cap = b->n_expert;
        L->e = calloc((size_t)L->cap, sizeof *L->e);
        if (!L->e) {
            st = moe_fail(MOE_ERR_NOMEM, "bricks: out of memory");
            goto fail;
        }
        for (int32_t e = 0; e < L->n; e++)
            L->e[e].src = e;
        any = true;
    }
    if (!any) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "bricks: %s has no routed layer", path);
        goto fail;
    }
    *out = b;
    return MOE_OK;
fail:
    moe_bricks_free(b);
    return st;
}

int32_t moe_bricks_n_layer(const moe_bricks *b)
{
    return b ? b->n_layer : 0;
}

int32_t moe_bricks_n_expert(const moe_bricks *b, int32_t layer)
{
    if (!b || layer < 0 || layer >= b->n_layer)
        return 0;
    return b->layers[layer].n;
}

int32_t moe_bricks_origin(const moe_bricks *b, int32_t layer, int32_t expert)
{
    if (!b || layer < 0 || layer >= b->n_layer || expert < 0 || expert >= b->layers[layer].n)
        return -1;
    return b->layers[layer].e[expert].src;
}

static size_t brk_slice_elems(const moe_bricks *b)
{
    return (size_t)b->n_ff_exp * (size_t)b->n_embd;
}

/* f32 copies of an expert's tensors (any of the outputs may be NULL). */
static void brk_fetch(const moe_bricks *b, const brk_layer *L, const brk_expert *x, float *gate,
                      float *up, float *down, float *router)
{
    const size_t ns = brk_slice_elems(b);
    if (x->src < 0) {
        if (gate)
            memcpy(gate, x->gate, ns * sizeof(float));
        if (up)
            memcpy(up, x->up, ns * sizeof(float));
        if (down)
            memcpy(down, x->down, ns * sizeof(float));
        if (router)
            memcpy(router, x->router, (size_t)b->n_embd * sizeof(float));
        return;
    }
    {
        const int64_t s = x->src, nfe = b->n_ff_exp, ne = b->n_embd;
        const size_t rb_g = quant_row_bytes(L->t_gate->type, ne);
        const size_t rb_u = quant_row_bytes(L->t_up->type, ne);
        const size_t rb_d = quant_row_bytes(L->t_down->type, nfe);
        const size_t rb_r = quant_row_bytes(L->t_router->type, ne);
        for (int64_t j = 0; j < nfe; j++) {
            if (gate)
                quant_dequantize_row(L->t_gate->type,
                                     (const char *)L->t_gate->data + (size_t)(s * nfe + j) * rb_g,
                                     gate + j * ne, ne);
            if (up)
                quant_dequantize_row(L->t_up->type,
                                     (const char *)L->t_up->data + (size_t)(s * nfe + j) * rb_u,
                                     up + j * ne, ne);
        }
        if (down)
            for (int64_t r = 0; r < ne; r++)
                quant_dequantize_row(L->t_down->type,
                                     (const char *)L->t_down->data + (size_t)(s * ne + r) * rb_d,
                                     down + r * nfe, nfe);
        if (router)
            quant_dequantize_row(L->t_router->type,
                                 (const char *)L->t_router->data + (size_t)s * rb_r, router, ne);
    }
}

static bool brk_alloc(const moe_bricks *b, brk_expert *x)
{
    const size_t ns = brk_slice_elems(b);
    x->src = -1;
    x->gate = malloc(ns * sizeof(float));
    x->up = malloc(ns * sizeof(float));
    x->down = malloc(ns * sizeof(float));
    x->router = malloc((size_t)b->n_embd * sizeof(float));
    if (x->gate && x->up && x->down && x->router)
        return true;
    brk_expert_free(x);
    return false;
}

static moe_status brk_check_layer(const moe_bricks *b, int32_t layer, const char *op)
{
    if (!b)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: no editor", op);
    if (layer < 0 || layer >= b->n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: layer %d out of range [0, %d)", op, layer,
                        b->n_layer);
    if (b->layers[layer].n == 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: layer %d has no routed experts", op,
                        layer);
    return MOE_OK;
}

/* ids distinct and in range */
static moe_status brk_check_ids(const brk_layer *L, int32_t layer, const int32_t *ids, int32_t n,
                                const char *op)
{
    if (!ids || n < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: no experts given", op);
    for (int32_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= L->n)
            return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: expert %d out of range [0, %d) in layer %d",
                            op, ids[i], L->n, layer);
        for (int32_t j = 0; j < i; j++)
            if (ids[j] == ids[i])
                return moe_fail(MOE_ERR_INVALID_ARG, "bricks %s: expert %d given twice", op, ids[i]);
    }
    return MOE_OK;
}

static moe_status brk_log(moe_bricks *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static moe_status brk_log(moe_bricks *b, const char *fmt, ...)
{
    char item[512];
    va_list ap;
    size_t n = strlen(b->ops), m;
    char *nb;
    va_start(ap, fmt);
    vsnprintf(item, sizeof item, fmt, ap);
    va_end(ap);
    m = strlen(item);
    nb = realloc(b->ops, n + m + 3);
    if (!nb)
        return moe_fail(MOE_ERR_NOMEM, "bricks: out of memory");
    if (n)
        memcpy(nb + n, "; ", 2), n += 2;
    memcpy(nb + n, item, m + 1);
    b->ops = nb;
    return MOE_OK;
}

/* remove expert id from layer L (ids above it move down by one) */
static void brk_remove(brk_layer *L, int32_t id)
{
    brk_expert_free(&L->e[id]);
    memmove(&L->e[id], &L->e[id + 1], (size_t)(L->n - id - 1) * sizeof *L->e);
    L->n--;
}

static void brk_ids_text(char *buf, size_t n, const int32_t *ids, int32_t k)
{
    size_t at = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < k && at + 16 < n; i++)
        at += (size_t)snprintf(buf + at, n - at, i ? ",%d" : "%d", ids[i]);
}

moe_status moe_bricks_merge(moe_bricks *b, int32_t layer, const int32_t *experts,
                            const float *weights, int32_t n)
{
    brk_layer *L;
    brk_expert acc;
    float *tg = NULL, *tu = NULL, *td = NULL, *tr = NULL;
    double wsum = 0.0;
    int32_t keep;
    moe_status st;
    const size_t ns = b ? brk_slice_elems(b) : 0;
    char ids[256];

    if ((st = brk_check_layer(b, layer, "merge")))
        return st;
    L = &b->layers[layer];
    if ((st = brk_check_ids(L, layer, experts, n, "merge")))
        return st;
    if (n < 2)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks merge: needs at least two experts");
    for (int32_t i = 0; i < n; i++) {
        float w = weights ? weights[i] : 1.0f;
        if (!(w > 0.0f) || !isfinite(w))
            return moe_fail(MOE_ERR_INVALID_ARG, "bricks merge: weight %g is not positive", w);
        wsum += w;
    }
    {
        /* copies of one source expert (e.g. grown with noise 0): their
         * average is that expert; keep its exact bytes */
        int32_t src = L->e[experts[0]].src;
        bool same = src >= 0;
        for (int32_t i = 1; i < n; i++)
            same &= L->e[experts[i]].src == src;
        if (same) {
            keep = experts[0];
            for (int32_t i = 1; i < n; i++)
                keep = experts[i] < keep ? experts[i] : keep;
            for (int32_t id = L->n - 1; id >= 0; id--)
                for (int32_t i = 0; i < n; i++)
                    if (experts[i] == id && id != keep)
                        brk_remove(L, id);
            brk_ids_text(ids, sizeof ids, experts, n);
            return brk_log(b, "merge %d:%s", layer, ids);
        }
    }
    if (!brk_alloc(b, &acc))
        return moe_fail(MOE_ERR_NOMEM, "bricks merge: out of memory");
    tg = malloc(ns * sizeof *tg);
    tu = malloc(ns * sizeof *tu);
    td = malloc(ns * sizeof *td);
    tr = malloc((size_t)b->n_embd * sizeof *tr);
    if (!tg || !tu || !td || !tr) {
        st = moe_fail(MOE_ERR_NOMEM, "bricks merge: out of memory");
        goto done;
    }
    for (int32_t i = 0; i < n; i++) {
        float w = (float)((weights ? weights[i] : 1.0f) / wsum);
        brk_fetch(b, L, &L->e[experts[i]], tg, tu, td, tr);
        for (size_t k = 0; k < ns; k++) {
            if (i == 0) {
                acc.gate[k] = w * tg[k];
                acc.up[k] = w * tu[k];
                acc.down[k] = w * td[k];
            } else {
                acc.gate[k] += w * tg[k];
                acc.up[k] += w * tu[k];
                acc.down[k] += w * td[k];
            }
        }
        for (int64_t k = 0; k < b->n_embd; k++)
            acc.router[k] = i == 0 ? w * tr[k] : acc.router[k] + w * tr[k];
    }
    /* the merged expert takes the lowest id; the others go */
    keep = experts[0];
    for (int32_t i = 1; i < n; i++)
        keep = experts[i] < keep ? experts[i] : keep;
    brk_expert_free(&L->e[keep]);
    L->e[keep] = acc;
    memset(&acc, 0, sizeof acc);
    for (int32_t id = L->n - 1; id >= 0; id--)
        for (int32_t i = 0; i < n; i++)
            if (experts[i] == id && id != keep)
                brk_remove(L, id);
    brk_ids_text(ids, sizeof ids, experts, n);
    if (weights) {
        char ws[256];
        size_t at = 0;
        ws[0] = '\0';
        for (int32_t i = 0; i < n && at + 20 < sizeof ws; i++)
            at += (size_t)snprintf(ws + at, sizeof ws - at, i ? ",%g" : "%g", weights[i]);
        st = brk_log(b, "merge %d:%s:%s", layer, ids, ws);
    } else {
        st = brk_log(b, "merge %d:%s", layer, ids);
    }
done:
    free(acc.gate);
    free(acc.up);
    free(acc.down);
    free(acc.router);
    free(tg);
    free(tu);
    free(td);
    free(tr);
    return st;
}

/* splitmix64 + Box-Muller */
static uint64_t brk_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double brk_gauss(uint64_t *s)
{
    double u1 = ((double)(brk_rng_next(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
    double u2 = (double)(brk_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void brk_perturb(float *v, size_t n, float noise, uint64_t *rng)
{
    double ss = 0.0;
    float rms;
    if (noise == 0.0f)
        return;
    for (size_t i = 0; i < n; i++)
        ss += (double)v[i] * v[i];
    rms = (float)sqrt(ss / (double)(n ? n : 1));
    for (size_t i = 0; i < n; i++)
        v[i] += noise * rms * (float)brk_gauss(rng);
}

moe_status moe_bricks_grow(moe_bricks *b, int32_t layer, int32_t expert, float noise,
                           uint64_t seed)
{
    brk_layer *L;
    brk_expert x;
    moe_status st;
    uint64_t rng = seed * 0x2545F4914F6CDD1Dull + (uint64_t)layer * 1000003u + (uint64_t)expert;
    const size_t ns = b ? brk_slice_elems(b) : 0;

    if ((st = brk_check_layer(b, layer, "grow")))
        return st;
    L = &b->layers[layer];
    if ((st = brk_check_ids(L, layer, &expert, 1, "grow")))
        return st;
    if (!(noise >= 0.0f) || !isfinite(noise))
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks grow: noise %g must be >= 0", noise);
    if (L->n >= 4096)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks grow: layer %d has 4096 experts", layer);
    if (noise == 0.0f && L->e[expert].src >= 0) {
        /* an exact copy: share the source bytes (no re-quantization) */
        memset(&x, 0, sizeof x);
        x.src = L->e[expert].src;
    } else if (!brk_alloc(b, &x)) {
        return moe_fail(MOE_ERR_NOMEM, "bricks grow: out of memory");
    } else {
        brk_fetch(b, L, &L->e[expert], x.gate, x.up, x.down, x.router);
    }
    brk_perturb(x.gate, ns, noise, &rng);
    brk_perturb(x.up, ns, noise, &rng);
    brk_perturb(x.down, ns, noise, &rng);
    brk_perturb(x.router, (size_t)b->n_embd, noise, &rng);
    if (L->n == L->cap) {
        int32_t cap = L->cap * 2 + 1;
        brk_expert *ne = realloc(L->e, (size_t)cap * sizeof *ne);
        if (!ne) {
            brk_expert_free(&x);
            return moe_fail(MOE_ERR_NOMEM, "bricks grow: out of memory");
        }
        L->e = ne;
        L->cap = cap;
    }
    L->e[L->n++] = x;
    return brk_log(b, "grow %d:%d:%g:%llu", layer, expert, noise, (unsigned long long)seed);
}

moe_status moe_bricks_prune(moe_bricks *b, int32_t layer, const int32_t *experts, int32_t n)
{
    brk_layer *L;
    moe_status st;
    char ids[256];
    if ((st = brk_check_layer(b, layer, "prune")))
        return st;
    L = &b->layers[layer];
    if ((st = brk_check_ids(L, layer, experts, n, "prune")))
        return st;
    if (n >= L->n)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "bricks prune: removing %d of %d experts would leave layer %d empty", n,
                        L->n, layer);
    for (int32_t id = L->n - 1; id >= 0; id--)
        for (int32_t i = 0; i < n; i++)
            if (experts[i] == id)
                brk_remove(L, id);
    brk_ids_text(ids, sizeof ids, experts, n);
    return brk_log(b, "prune %d:%s", layer, ids);
}

/* One 3-D expert tensor (or the router) of a layer, in the source type.
 * which: 0 router, 1 gate, 2 up, 3 down. */
static void *brk_build(const moe_bricks *b, const brk_layer *L, int which, size_t *bytes_out,
                       moe_status *st)
{
    const gguf_tensor_info *t =
        which == 0 ? L->t_router : which == 1 ? L->t_gate : which == 2 ? L->t_up : L->t_down;
    const int64_t row = which == 3 ? b->n_ff_exp : b->n_embd;
    const int64_t rows = which == 0 ? 1 : which == 3 ? b->n_embd : b->n_ff_exp;
    const size_t rb = quant_row_bytes(t->type, row), slice = rb * (size_t)rows;
    char *buf = malloc(slice * (size_t)L->n);
    if (!buf) {
        *st = moe_fail(MOE_ERR_NOMEM, "bricks save: out of memory");
        return NULL;
    }
    for (int32_t e = 0; e < L->n; e++) {
        const brk_expert *x = &L->e[e];
        char *dst = buf + (size_t)e * slice;
        if (x->src >= 0) {
            memcpy(dst, (const char *)t->data + (size_t)x->src * slice, slice);
            continue;
        }
        {
            const float *v = which == 0 ? x->router : which == 1 ? x->gate
                           : which == 2 ? x->up : x->down;
            for (int64_t r = 0; r < rows; r++) {
                if (t->type == MOE_TYPE_F32)
                    memcpy(dst + (size_t)r * rb, v + r * row, (size_t)row * sizeof(float));
                else
                    quant_quantize_row(t->type, v + r * row, dst + (size_t)r * rb, row);
            }
        }
    }
    *bytes_out = slice * (size_t)L->n;
    *st = MOE_OK;
    return buf;
}

moe_status moe_bricks_save(const moe_bricks *b, const char *path)
{
    gguf_writer *w = NULL;
    void **bufs = NULL;
    int32_t n_new = -1, n_bufs = 0;
    moe_status st = MOE_OK;
    char key[128];

    if (!b || !path)
        return moe_fail(MOE_ERR_INVALID_ARG, "bricks save: no editor or path");
    for (int32_t il = 0; il < b->n_layer; il++) {
        int32_t n = b->layers[il].n;
        if (n == 0)
            continue;
        if (n_new < 0)
            n_new = n;
        else if (n != n_new)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bricks save: layer %d has %d experts but an earlier layer %d; GGUF "
                            "stores one expert count, so change every routed layer alike",
                            il, n, n_new);
    }
    bufs = calloc((size_t)b->n_layer * 4, sizeof *bufs);
    w = gguf_writer_new();
    if (!bufs || !w) {
        st = moe_fail(MOE_ERR_NOMEM, "bricks save: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < gguf_n_kv(b->g); i++)
        if ((st = gguf_writer_copy_kv(w, b->g, i)))
            goto done;
#define AKEY(s) (snprintf(key, sizeof key, "%s.%s", b->arch, s), key)
    if ((st = gguf_writer_set_u32(w, AKEY("expert_count"), (uint32_t)n_new)) ||
        (st = gguf_writer_set_u32(w, AKEY("expert_used_count"),
                                  (uint32_t)(b->n_expert_used < n_new ? b->n_expert_used : n_new))))
        goto done;
#undef AKEY
    if (b->ops[0] && (st = gguf_writer_set_str(w, "moestudio.bricks.ops", b->ops)))
        goto done;
    for (int64_t i = 0; i < gguf_n_tensors(b->g); i++) {
        const gguf_tensor_info *t = gguf_tensor(b->g, i);
        const char *rest;
        int il = brick_block_of(t->name, &rest);
        int which = -1;
        if (il >= 0 && il < b->n_layer && b->layers[il].n > 0) {
            if (strcmp(rest, "ffn_gate_inp.weight") == 0)
                which = 0;
            else if (strcmp(rest, "ffn_gate_exps.weight") == 0)
                which = 1;
            else if (strcmp(rest, "ffn_up_exps.weight") == 0)
                which = 2;
            else if (strcmp(rest, "ffn_down_exps.weight") == 0)
                which = 3;
        }
        if (which < 0) {
            st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data);
        } else {
            size_t nbytes;
            int64_t ne[3] = {t->ne[0], t->ne[1], n_new};
            void *buf = brk_build(b, &b->layers[il], which, &nbytes, &st);
            if (!buf)
                goto done;
            bufs[n_bufs++] = buf;
            if (which == 0)
                ne[1] = n_new;
            st = gguf_writer_add_tensor(w, t->name, t->type, which == 0 ? 2 : 3, ne, buf);
        }
        if (st)
            goto done;
    }
    st = gguf_writer_write(w, path);
done:
    if (bufs)
        for (int32_t i = 0; i < n_bufs; i++)
            free(bufs[i]);
    free(bufs);
    gguf_writer_free(w);
    return st;
}
