/*
 * train.c - the trainer object (moe.h "training"): parameter layout in one
 * flat f32 array with a tensor table in GGUF naming, initialisation,
 * loading from and saving to GGUF (the engine loads what this writes),
 * the AdamW optimizer with warm-up + cosine decay and clipping, its side
 * file for resuming, bricks (freezing, growing) and m2mKD distillation
 * steps. The passes themselves are in train_fwd.c.
 *
 * Depends on gguf (reader/writer), quant (conversions), tokenizer, model
 * (loading a checkpoint to continue from); never prints.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model.h"
#include "quant.h"
#include "train_impl.h"
#include "util.h"

#define TRAIN_MAX_K 64
#define TRAIN_MAX_EXPERTS 512

moe_train_config moe_train_default_config(void)
{
    moe_train_config c;
    memset(&c, 0, sizeof c);
    c.n_ctx_train = 256;
    c.n_embd = 128;
    c.n_layer = 4;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.n_ff = 384;
    c.n_expert = 8;
    c.n_expert_used = 2;
    c.n_ff_exp = 128;
    c.norm_eps = 1e-5f;
    c.rope_freq_base = 10000.0f;
    c.norm_topk = true;
    c.tied_output = true;
    c.init_std = 0.02f;
    c.seed = 1;
    return c;
}

moe_train_params moe_train_default_params(void)
{
    moe_train_params p;
    memset(&p, 0, sizeof p);
    p.lr = 3e-3f;
    p.lr_min = 3e-4f;
    p.warmup = 100;
    p.n_steps = 1000;
    p.beta1 = 0.9f;
    p.beta2 = 0.95f;
    p.adam_eps = 1e-8f;
    p.weight_decay = 0.1f;
    p.grad_clip = 1.0f;
    p.w_balance = 0.01f;
    p.w_zloss = 0.001f;
    p.w_mi = 0.0f;
    p.n_threads = 1; /* small matrices: a second BLAS thread measured slower */
    return p;
}

/* ---- random numbers --------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double rng_normal(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- layout --------------------------------------------------------------- */

static int add_tensor(moe_trainer *t, int cap, const char *name, int n_dims, int64_t ne0,
                      int64_t ne1, int64_t ne2)
{
    train_tensor *tt;
    if (t->n_tens >= cap)
        return -1;
    tt = &t->tens[t->n_tens];
    snprintf(tt->name, sizeof tt->name, "%s", name);
    tt->n_dims = n_dims;
    tt->ne[0] = ne0;
    tt->ne[1] = n_dims > 1 ? ne1 : 1;
    tt->ne[2] = n_dims > 2 ? ne2 : 1;
    tt->off = t->n_params;
    tt->n = (size_t)tt->ne[0] * (size_t)tt->ne[1] * (size_t)tt->ne[2];
    t->n_params += tt->n;
    return t->n_tens++;
}

/* Build the tensor table for t->cfg and layer_moe, allocate zeroed params,
 * grads, moments and an all-trainable mask. */
static moe_status layout_build(moe_trainer *t, const bool *layer_moe)
{
    const moe_train_config *c = &t->cfg;
    const int64_t E = c->n_embd, hd = t->n_embd_head;
    const int64_t nq = c->n_head * hd, nkv = c->n_head_kv * hd;
    const int cap = 3 + 12 * c->n_layer;
    char nm[64];

    t->tens = calloc((size_t)cap, sizeof *t->tens);
    t->layers = calloc((size_t)c->n_layer, sizeof *t->layers);
    if (!t->tens || !t->layers)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    t->n_tens = 0;
    t->n_params = 0;
    t->t_embd = add_tensor(t, cap, "token_embd.weight", 2, E, t->n_vocab, 1);
    t->t_out_norm = add_tensor(t, cap, "output_norm.weight", 1, E, 1, 1);
    t->t_out = c->tied_output ? -1 : add_tensor(t, cap, "output.weight", 2, E, t->n_vocab, 1);
    t->n_moe_layers = 0;
    for (int il = 0; il < c->n_layer; il++) {
        train_layer *L = &t->layers[il];
#define T_(field, suffix, nd, a, b, cc)                                          \
    do {                                                                        \
        snprintf(nm, sizeof nm, "blk.%d.%s.weight", il, suffix);                \
        L->field = add_tensor(t, cap, nm, nd, a, b, cc);                        \
    } while (0)
        L->moe = layer_moe[il];
        L->ffn_gate = L->ffn_up = L->ffn_down = -1;
        L->gate_inp = L->gate_exps = L->up_exps = L->down_exps = -1;
        T_(attn_norm, "attn_norm", 1, E, 1, 1);
        T_(wq, "attn_q", 2, E, nq, 1);
        T_(wk, "attn_k", 2, E, nkv, 1);
        T_(wv, "attn_v", 2, E, nkv, 1);
        T_(wo, "attn_output", 2, nq, E, 1);
        T_(ffn_norm, "ffn_norm", 1, E, 1, 1);
        if (L->moe) {
            const int64_t X = c->n_expert, F = c->n_ff_exp;
            T_(gate_inp, "ffn_gate_inp", 2, E, X, 1);
            T_(gate_exps, "ffn_gate_exps", 3, E, F, X);
            T_(up_exps, "ffn_up_exps", 3, E, F, X);
            T_(down_exps, "ffn_down_exps", 3, F, E, X);
            t->n_moe_layers++;
        } else {
            T_(ffn_gate, "ffn_gate", 2, E, c->n_ff, 1);
            T_(ffn_up, "ffn_up", 2, E, c->n_ff, 1);
            T_(ffn_down, "ffn_down", 2, c->n_ff, E, 1);
        }
#undef T_
    }
    t->params = calloc(t->n_params, sizeof(float));
    t->grads = calloc(t->n_params, sizeof(float));
    t->m = calloc(t->n_params, sizeof(float));
    t->v = calloc(t->n_params, sizeof(float));
    t->mask = malloc(t->n_params);
    t->route_count = calloc((size_t)c->n_layer * (size_t)(c->n_expert > 0 ? c->n_expert : 1),
                            sizeof(int64_t));
    if (!t->params || !t->grads || !t->m || !t->v || !t->mask || !t->route_count)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory for %zu parameters", t->n_params);
    memset(t->mask, 1, t->n_params);
    return MOE_OK;
}

static void layout_free(moe_trainer *t)
{
    free(t->tens);
    free(t->layers);
    free(t->params);
    free(t->grads);
    free(t->m);
    free(t->v);
    free(t->mask);
    free(t->route_count);
    t->tens = NULL;
    t->layers = NULL;
    t->params = t->grads = t->m = t->v = NULL;
    t->mask = NULL;
    t->route_count = NULL;
}


static moe_status check_config(const moe_train_config *c)
{
    if (c->n_embd < 2 || c->n_embd > 16384 || c->n_layer < 1 || c->n_layer > 256 ||
        c->n_head < 1 || c->n_head_kv < 1 || c->n_head % c->n_head_kv != 0 ||
        c->n_embd % c->n_head != 0 || (c->n_embd / c->n_head) % 2 != 0)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "train: bad shape (n_embd %d, n_layer %d, n_head %d, n_head_kv %d): "
                        "n_head must divide n_embd into an even head size and n_head_kv "
                        "must divide n_head",
                        c->n_embd, c->n_layer, c->n_head, c->n_head_kv);
    if (c->n_expert < 0 || c->n_expert > TRAIN_MAX_EXPERTS ||
        (c->n_expert > 0 && (c->n_expert_used < 1 || c->n_expert_used > c->n_expert ||
                             c->n_expert_used > TRAIN_MAX_K || c->n_ff_exp < 1)))
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "train: bad experts (n_expert %d, n_expert_used %d, n_ff_exp %d)",
                        c->n_expert, c->n_expert_used, c->n_ff_exp);
    if (c->n_expert == 0 && c->n_ff < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: a dense model needs n_ff >= 1");
    if (!(c->norm_eps > 0) || !(c->rope_freq_base > 0) || !(c->init_std >= 0) ||
        c->n_ctx_train < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: bad norm_eps, rope base, init_std or context");
    return MOE_OK;
}

static void init_weights(moe_trainer *t)
{
    uint64_t s = t->cfg.seed * 0x2545f4914f6cdd1dULL + 12345;
    const float out_scale = 1.0f / sqrtf(2.0f * (float)t->cfg.n_layer);
    for (int i = 0; i < t->n_tens; i++) {
        const train_tensor *tt = &t->tens[i];
        float *p = t->params + tt->off;
        if (tt->n_dims == 1) {
            for (size_t j = 0; j < tt->n; j++)
                p[j] = 1.0f;
        } else {
            float std = t->cfg.init_std;
            if (strstr(tt->name, "attn_output") || strstr(tt->name, "ffn_down"))
                std *= out_scale;
            for (size_t j = 0; j < tt->n; j++)
                p[j] = (float)(rng_normal(&s) * std);
        }
    }
}

/* ---- life cycle ------------------------------------------------------------- */

static moe_trainer *trainer_alloc(void)
{
    moe_trainer *t = calloc(1, sizeof *t);
    if (t)
        t->par = moe_train_default_params();
    return t;
}

moe_status moe_trainer_new(const moe_train_config *cfg, const char *vocab_path,
                           moe_trainer **out)
{
    moe_trainer *t;
    moe_status st;
    bool *lm = NULL;

    *out = NULL;
    if (!cfg || !vocab_path)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: no config or vocabulary");
    if ((st = check_config(cfg)) != MOE_OK)
        return st;
    t = trainer_alloc();
    if (!t)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    t->cfg = *cfg;
    t->cfg.name = NULL;
    if (cfg->name && (st = moe_trainer_set_name(t, cfg->name)) != MOE_OK)
        goto fail;
    if ((st = gguf_open(vocab_path, &t->src)) != MOE_OK ||
        (st = tok_load(t->src, &t->vocab)) != MOE_OK)
        goto fail;
    t->n_vocab = cfg->n_vocab > 0 ? cfg->n_vocab : tok_n_vocab(t->vocab);
    if (t->n_vocab < tok_n_vocab(t->vocab)) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "train: n_vocab %d is below the vocabulary's %d",
                      t->n_vocab, tok_n_vocab(t->vocab));
        goto fail;
    }
    t->cfg.n_vocab = t->n_vocab;
    t->n_embd_head = cfg->n_embd / cfg->n_head;
    lm = calloc((size_t)cfg->n_layer, sizeof *lm);
    if (!lm) {
        st = moe_fail(MOE_ERR_NOMEM, "train: out of memory");
        goto fail;
    }
    for (int il = 0; il < cfg->n_layer; il++)
        lm[il] = cfg->n_expert > 0;
    if ((st = layout_build(t, lm)) != MOE_OK)
        goto fail;
    free(lm);
    init_weights(t);
    *out = t;
    return MOE_OK;
fail:
    free(lm);
    moe_trainer_free(t);
    return st;
}

void moe_trainer_free(moe_trainer *t)
{
    if (!t)
        return;
    train_free_bufs(t);
    layout_free(t);
    free(t->name);
    if (t->src_model) {
        moe_model_free(t->src_model);
    } else {
        tok_free(t->vocab);
        gguf_close(t->src);
    }
    free(t);
}

/* ---- loading ---------------------------------------------------------------- */

static moe_status copy_mtensor(moe_trainer *t, int ti, const mtensor *mt)
{
    const train_tensor *tt = &t->tens[ti];
    const int64_t rows = tt->ne[1] * tt->ne[2];
    if (!mt->data || mt->ne[0] != tt->ne[0] || mt->ne[1] * mt->ne[2] != rows)
        return moe_fail(MOE_ERR_FORMAT, "train: tensor '%s' missing or of another shape",
                        tt->name);
    for (int64_t r = 0; r < rows; r++)
        quant_dequantize_row(mt->type, (const char *)mt->data + (size_t)r * mt->row_bytes,
                             t->params + tt->off + (size_t)r * (size_t)tt->ne[0], tt->ne[0]);
    return MOE_OK;
}

static moe_status load_optimizer(moe_trainer *t, const char *path);

moe_status moe_trainer_load(const char *path, moe_trainer **out)
{
    moe_model *m = NULL;
    moe_model_params mp = moe_model_default_params();
    moe_trainer *t = NULL;
    moe_status st;
    bool *lm = NULL;
    const model_hparams *hp;

    *out = NULL;
    if ((st = moe_model_load(path, &mp, &m)) != MOE_OK)
        return st;
    hp = &m->hp;
    if (hp->arch != ARCH_LLAMA || hp->n_rot != hp->n_embd_head || hp->gate != GATE_SOFTMAX ||
        hp->embd_scale != 1.0f || hp->residual_scale != 1.0f || hp->logit_scale != 1.0f ||
        hp->attn_scale != 0.0f || hp->expert_weights_scale != 1.0f || hp->n_ff_shexp > 0 ||
        hp->n_embd_head * hp->n_head != hp->n_embd || hp->n_embd_head % 2 != 0 ||
        hp->n_expert_used > TRAIN_MAX_K) {
        moe_model_free(m);
        return moe_fail(MOE_ERR_UNSUPPORTED,
                        "train: %s: only plain llama-architecture models (dense or Mixtral-style "
                        "MoE, full RoPE, no scales) can be trained", path);
    }
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer *L = &m->layers[il];
        if (L->bq.data || L->bk.data || L->bv.data || L->q_norm.data || L->gate_inp_shexp.data) {
            moe_model_free(m);
            return moe_fail(MOE_ERR_UNSUPPORTED, "train: %s: biases, q/k norms and shared "
                            "experts are not supported by the trainer", path);
        }
    }
    t = trainer_alloc();
    if (t)
        t->src_model = m; /* freed with t from here on */
    lm = calloc((size_t)hp->n_layer, sizeof *lm);
    if (!t || !lm) {
        st = moe_fail(MOE_ERR_NOMEM, "train: out of memory");
        goto fail;
    }
    t->src = m->gguf;
    t->vocab = m->vocab;
    t->src_is_model = true;
    t->n_vocab = hp->n_vocab;
    t->n_embd_head = hp->n_embd_head;
    t->cfg = moe_train_default_config();
    t->cfg.n_vocab = hp->n_vocab;
    t->cfg.n_ctx_train = hp->n_ctx_train;
    t->cfg.n_embd = hp->n_embd;
    t->cfg.n_layer = hp->n_layer;
    t->cfg.n_head = hp->n_head;
    t->cfg.n_head_kv = hp->n_head_kv;
    t->cfg.n_ff = hp->n_ff;
    t->cfg.n_expert = hp->n_expert;
    t->cfg.n_expert_used = hp->n_expert_used;
    t->cfg.n_ff_exp = hp->n_expert ? hp->n_ff_exp : 0;
    t->cfg.norm_eps = hp->norm_eps;
    t->cfg.rope_freq_base = hp->rope_freq_base;
    t->cfg.norm_topk = hp->norm_topk;
    t->cfg.unweighted = hp->unweighted;
    t->cfg.tied_output = m->output.data == m->tok_embd.data;
    for (int il = 0; il < hp->n_layer; il++)
        lm[il] = m->layers[il].gate_inp.data != NULL;
    if ((st = layout_build(t, lm)) != MOE_OK)
        goto fail;
    if ((st = copy_mtensor(t, t->t_embd, &m->tok_embd)) != MOE_OK ||
        (st = copy_mtensor(t, t->t_out_norm, &m->output_norm)) != MOE_OK ||
        (t->t_out >= 0 && (st = copy_mtensor(t, t->t_out, &m->output)) != MOE_OK))
        goto fail;
    for (int il = 0; il < hp->n_layer; il++) {
        const model_layer *ML = &m->layers[il];
        const train_layer *L = &t->layers[il];
        if ((st = copy_mtensor(t, L->attn_norm, &ML->attn_norm)) ||
            (st = copy_mtensor(t, L->wq, &ML->wq)) || (st = copy_mtensor(t, L->wk, &ML->wk)) ||
            (st = copy_mtensor(t, L->wv, &ML->wv)) || (st = copy_mtensor(t, L->wo, &ML->wo)) ||
            (st = copy_mtensor(t, L->ffn_norm, &ML->ffn_norm)))
            goto fail;
        if (L->moe) {
            if ((st = copy_mtensor(t, L->gate_inp, &ML->gate_inp)) ||
                (st = copy_mtensor(t, L->gate_exps, &ML->gate_exps)) ||
                (st = copy_mtensor(t, L->up_exps, &ML->up_exps)) ||
                (st = copy_mtensor(t, L->down_exps, &ML->down_exps)))
                goto fail;
        } else if ((st = copy_mtensor(t, L->ffn_gate, &ML->ffn_gate)) ||
                   (st = copy_mtensor(t, L->ffn_up, &ML->ffn_up)) ||
                   (st = copy_mtensor(t, L->ffn_down, &ML->ffn_down))) {
            goto fail;
        }
    }
    {
        int64_t v;
        if (gguf_get_int(m->gguf, "moestudio.train.step", &v) && v >= 0)
            t->step = v;
        if (gguf_get_int(m->gguf, "moestudio.train.tokens", &v) && v >= 0)
            t->tokens = v;
    }
    if ((st = load_optimizer(t, path)) != MOE_OK)
        goto fail;
    free(lm);
    *out = t;
    return MOE_OK;
fail:
    free(lm);
    if (t)
        moe_trainer_free(t);
    else
        moe_model_free(m);
    return st;
}

/* ---- accessors ----------------------------------------------------------------- */

void moe_trainer_get_config(const moe_trainer *t, moe_train_config *out)
{
    *out = t->cfg;
}

moe_status moe_trainer_set_name(moe_trainer *t, const char *name)
{
    char *d = NULL;
    if (name) {
        size_t n = strlen(name) + 1;
        if (!(d = malloc(n)))
            return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
        memcpy(d, name, n);
    }
    free(t->name);
    t->name = d;
    return MOE_OK;
}

void moe_trainer_get_params(const moe_trainer *t, moe_train_params *out)
{
    *out = t->par;
}

moe_status moe_trainer_set_params(moe_trainer *t, const moe_train_params *p)
{
    if (!p || !(p->lr >= 0) || !(p->lr_min >= 0) || p->warmup < 0 || p->n_steps < 1 ||
        !(p->beta1 >= 0 && p->beta1 < 1) || !(p->beta2 >= 0 && p->beta2 < 1) ||
        !(p->adam_eps > 0) || !(p->weight_decay >= 0) || !(p->grad_clip >= 0) ||
        !(p->w_balance >= 0) || !(p->w_zloss >= 0) || !(p->w_mi >= 0) || p->n_threads < 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: bad optimizer parameters");
    t->par = *p;
    return MOE_OK;
}

int64_t moe_trainer_n_params(const moe_trainer *t, bool trainable_only)
{
    int64_t n = 0;
    if (!trainable_only)
        return (int64_t)t->n_params;
    for (size_t i = 0; i < t->n_params; i++)
        n += t->mask[i];
    return n;
}

int64_t moe_trainer_step_count(const moe_trainer *t)
{
    return t->step;
}

int32_t moe_trainer_tokenize(const moe_trainer *t, const char *text, size_t len, int32_t *out,
                             int32_t n_max)
{
    return tok_encode(t->vocab, text, len, false, false, out, n_max);
}

int32_t moe_trainer_bos(const moe_trainer *t)
{
    return tok_bos(t->vocab);
}

/* ---- bricks ------------------------------------------------------------------- */

static void mark(moe_trainer *t, int ti, size_t off, size_t n)
{
    if (ti >= 0)
        memset(t->mask + t->tens[ti].off + off, 1, n);
}

static void mark_all(moe_trainer *t, int ti)
{
    if (ti >= 0)
        mark(t, ti, 0, t->tens[ti].n);
}

/* One brick of a spec for layer il ("attn", "ffn", "router", "expert.E",
 * "router.E", "" = the whole layer). */
static moe_status mark_layer(moe_trainer *t, int il, const char *part, const char *spec)
{
    const train_layer *L = &t->layers[il];
    char *end;
    long e;
    if (!*part || strcmp(part, "attn") == 0) {
        mark_all(t, L->attn_norm);
        mark_all(t, L->wq);
        mark_all(t, L->wk);
        mark_all(t, L->wv);
        mark_all(t, L->wo);
        if (*part)
            return MOE_OK;
    }
    if (!*part || strcmp(part, "ffn") == 0) {
        int list[] = {L->ffn_norm, L->ffn_gate, L->ffn_up, L->ffn_down,
                      L->gate_inp, L->gate_exps, L->up_exps, L->down_exps};
        for (size_t i = 0; i < sizeof list / sizeof list[0]; i++)
            mark_all(t, list[i]);
        return MOE_OK;
    }
    if (strcmp(part, "router") == 0) {
        if (!L->moe)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: brick '%s': layer %d is dense", spec, il);
        mark_all(t, L->gate_inp);
        return MOE_OK;
    }
    if (strncmp(part, "expert.", 7) == 0 || strncmp(part, "router.", 7) == 0) {
        e = strtol(part + 7, &end, 10);
        if (!L->moe)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: brick '%s': layer %d is dense", spec, il);
        if (end == part + 7 || *end || e < 0 || e >= t->tens[L->gate_inp].ne[1])
            return moe_fail(MOE_ERR_INVALID_ARG, "train: brick '%s': no such expert", spec);
        if (part[0] == 'r') {
            mark(t, L->gate_inp, (size_t)e * (size_t)t->cfg.n_embd, (size_t)t->cfg.n_embd);
        } else {
            const size_t n = t->tens[L->gate_exps].n / (size_t)t->tens[L->gate_exps].ne[2];
            mark(t, L->gate_exps, (size_t)e * n, n);
            mark(t, L->up_exps, (size_t)e * n, n);
            mark(t, L->down_exps, (size_t)e * n, n);
        }
        return MOE_OK;
    }
    return moe_fail(MOE_ERR_INVALID_ARG, "train: unknown brick '%s' (use all, embd, output, "
                    "blk.N, blk.N.attn, blk.N.ffn, blk.N.router, blk.N.router.E, "
                    "blk.N.expert.E)", spec);
}

moe_status moe_trainer_set_trainable(moe_trainer *t, const char *spec)
{
    char buf[256];
    const char *p = spec;
    moe_status st = MOE_OK;
    uint8_t *prev;
    if (!spec || !*spec || strcmp(spec, "all") == 0) {
        memset(t->mask, 1, t->n_params);
        return MOE_OK;
    }
    if (!(prev = malloc(t->n_params)))
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    memcpy(prev, t->mask, t->n_params);
    memset(t->mask, 0, t->n_params);
    while (*p) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof buf) {
            st = moe_fail(MOE_ERR_INVALID_ARG, "train: bad brick list '%s'", spec);
            break;
        }
        memcpy(buf, p, n);
        buf[n] = '\0';
        p += n + (p[n] == ',');
        if (strcmp(buf, "all") == 0) {
            memset(t->mask, 1, t->n_params);
        } else if (strcmp(buf, "embd") == 0) {
            mark_all(t, t->t_embd);
        } else if (strcmp(buf, "output") == 0) {
            mark_all(t, t->t_out_norm);
            mark_all(t, t->t_out);
        } else if (strncmp(buf, "blk.", 4) == 0) {
            const char *q = buf + 4, *part;
            int lo, hi;
            if (*q == '*') {
                lo = 0;
                hi = t->cfg.n_layer - 1;
                part = q + 1;
            } else {
                char *end;
                long il = strtol(q, &end, 10);
                if (end == q || il < 0 || il >= t->cfg.n_layer) {
                    st = moe_fail(MOE_ERR_INVALID_ARG, "train: brick '%s': no such layer", buf);
                    break;
                }
                lo = hi = (int)il;
                part = end;
            }
            if (*part == '.')
                part++;
            else if (*part) {
                st = moe_fail(MOE_ERR_INVALID_ARG, "train: unknown brick '%s'", buf);
                break;
            }
            for (int il = lo; il <= hi && st == MOE_OK; il++) {
                if (lo != hi && !t->layers[il].moe && strncmp(part, "ffn", 3) != 0 &&
                    strncmp(part, "attn", 4) != 0 && *part)
                    continue; /* blk.*.expert.E skips dense layers */
                st = mark_layer(t, il, part, buf);
            }
            if (st != MOE_OK)
                break;
        } else {
            st = moe_fail(MOE_ERR_INVALID_ARG, "train: unknown brick '%s'", buf);
            break;
        }
    }
    if (st != MOE_OK)
        memcpy(t->mask, prev, t->n_params); /* unchanged on error */
    free(prev);
    return st;
}

moe_status moe_trainer_grow(moe_trainer *t, int32_t src, float noise, uint64_t seed)
{
    moe_trainer old = *t;
    bool *lm;
    moe_status st;
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 7;
    char spec[32];

    if (t->n_moe_layers == 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: grow needs a model with MoE layers");
    if (src < 0 || src >= t->cfg.n_expert || t->cfg.n_expert + 1 > TRAIN_MAX_EXPERTS ||
        !(noise >= 0))
        return moe_fail(MOE_ERR_INVALID_ARG, "train: grow: bad source expert %d or noise", src);
    lm = calloc((size_t)t->cfg.n_layer, sizeof *lm);
    if (!lm)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    for (int il = 0; il < t->cfg.n_layer; il++)
        lm[il] = t->layers[il].moe;
    /* activations are sized for the old shape: drop them */
    t->tens = NULL;
    t->layers = NULL;
    t->params = t->grads = t->m = t->v = NULL;
    t->mask = NULL;
    t->route_count = NULL;
    t->cfg.n_expert++;
    st = layout_build(t, lm);
    free(lm);
    if (st != MOE_OK) {
        layout_free(t);
        *t = old;
        return st;
    }
    for (int i = 0; i < t->n_tens; i++) {
        const train_tensor *nt = &t->tens[i];
        const train_tensor *ot = &old.tens[i];
        float *dst = t->params + nt->off;
        const float *from = old.params + ot->off;
        size_t per, n_old;
        if (strstr(nt->name, "_exps.")) {
            per = (size_t)nt->ne[0] * (size_t)nt->ne[1]; /* one expert */
        } else if (strstr(nt->name, "ffn_gate_inp")) {
            per = (size_t)nt->ne[0]; /* one router row */
        } else {
            memcpy(dst, from, nt->n * sizeof(float));
            continue;
        }
        n_old = ot->n;
        memcpy(dst, from, n_old * sizeof(float));
        {
            const float *srcp = from + (size_t)src * per;
            double ss = 0.0, std;
            for (size_t j = 0; j < per; j++)
                ss += (double)srcp[j] * srcp[j];
            std = sqrt(ss / (double)per);
            for (size_t j = 0; j < per; j++)
                dst[n_old + j] = srcp[j] + (float)(noise * std * rng_normal(&s));
        }
    }
    free(old.tens);
    free(old.layers);
    free(old.params);
    free(old.grads);
    free(old.m);
    free(old.v);
    free(old.mask);
    free(old.route_count);
    train_free_bufs(t); /* activation buffers depend on n_expert */
    snprintf(spec, sizeof spec, "blk.*.expert.%d", t->cfg.n_expert - 1);
    st = moe_trainer_set_trainable(t, spec);
    if (st == MOE_OK) {
        /* and the new experts' router rows */
        for (int il = 0; il < t->cfg.n_layer; il++)
            if (t->layers[il].moe)
                mark(t, t->layers[il].gate_inp,
                     (size_t)(t->cfg.n_expert - 1) * (size_t)t->cfg.n_embd,
                     (size_t)t->cfg.n_embd);
    }
    return st;
}

/* ---- optimizer --------------------------------------------------------------- */

static double lr_at(const moe_train_params *p, int64_t step)
{
    double prog;
    if (step < p->warmup)
        return p->lr * (double)(step + 1) / (double)p->warmup;
    if (p->n_steps <= p->warmup)
        return p->lr;
    prog = (double)(step - p->warmup) / (double)(p->n_steps - p->warmup);
    if (prog > 1.0)
        prog = 1.0;
    return p->lr_min + 0.5 * (p->lr - p->lr_min) * (1.0 + cos(3.141592653589793 * prog));
}

static void adamw(moe_trainer *t, moe_train_stats *st)
{
    const moe_train_params *p = &t->par;
    double ss = 0.0, clip = 1.0, lr = lr_at(p, t->step), bc1, bc2;
    for (size_t i = 0; i < t->n_params; i++)
        if (t->mask[i])
            ss += (double)t->grads[i] * t->grads[i];
    st->grad_norm = sqrt(ss);
    if (p->grad_clip > 0 && st->grad_norm > p->grad_clip)
        clip = p->grad_clip / st->grad_norm;
    t->step++;
    bc1 = 1.0 - pow(p->beta1, (double)t->step);
    bc2 = 1.0 - pow(p->beta2, (double)t->step);
    for (int ti = 0; ti < t->n_tens; ti++) {
        const train_tensor *tt = &t->tens[ti];
        const float wd = tt->n_dims >= 2 ? p->weight_decay : 0.0f;
        const float b1 = p->beta1, b2 = p->beta2;
        const float a = (float)(lr / bc1), ib2 = (float)(1.0 / bc2), eps = p->adam_eps;
        const float dec = (float)(1.0 - lr * wd), c = (float)clip;
        float *w = t->params + tt->off, *g = t->grads + tt->off, *m = t->m + tt->off,
              *v = t->v + tt->off;
        const uint8_t *mk = t->mask + tt->off;
        for (size_t i = 0; i < tt->n; i++) {
            float gi;
            if (!mk[i])
                continue;
            gi = g[i] * c;
            m[i] = b1 * m[i] + (1.0f - b1) * gi;
            v[i] = b2 * v[i] + (1.0f - b2) * gi * gi;
            w[i] = w[i] * dec - a * m[i] / (sqrtf(v[i] * ib2) + eps);
        }
    }
    st->lr = lr;
}

static void fill_stats(moe_trainer *t, double ce, moe_train_stats *out)
{
    const int nm = t->n_moe_layers;
    memset(out, 0, sizeof *out);
    out->ce = ce;
    if (nm > 0) {
        out->balance = t->aux_bal / nm;
        out->zloss = t->aux_z / nm;
        out->mi = t->aux_mi / nm;
    }
    out->loss = ce + t->par.w_balance * out->balance + t->par.w_zloss * out->zloss +
                t->par.w_mi * out->mi;
    out->step = t->step;
    out->tokens = t->tokens;
    out->lr = lr_at(&t->par, t->step);
}

moe_status moe_trainer_step(moe_trainer *t, const int32_t *tokens, int32_t n_seq,
                            int32_t n_tok, moe_train_stats *out)
{
    moe_train_stats st;
    moe_status s;
    double ce;
    if (!tokens || (s = train_reserve(t, n_seq, n_tok)) != MOE_OK)
        return tokens ? s : moe_fail(MOE_ERR_INVALID_ARG, "train: no tokens");
    for (int64_t i = 0; i < (int64_t)n_seq * (n_tok + 1); i++)
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: token id %d out of range", tokens[i]);
    train_set_threads(t->par.n_threads);
    memset(t->grads, 0, t->n_params * sizeof(float));
    ce = train_pass(t, tokens, n_seq, n_tok, n_tok + 1, true, true, false);
    fill_stats(t, ce, &st);
    adamw(t, &st);
    t->tokens += (int64_t)n_seq * n_tok;
    st.step = t->step;
    st.tokens = t->tokens;
    if (!isfinite(st.loss))
        return moe_fail(MOE_ERR_INVALID_ARG, "train: loss is not finite at step %lld",
                        (long long)t->step);
    if (out)
        *out = st;
    return MOE_OK;
}

moe_status moe_trainer_eval(moe_trainer *t, const int32_t *tokens, int32_t n_seq,
                            int32_t n_tok, moe_train_stats *out)
{
    moe_status s;
    double ce;
    if (!tokens || (s = train_reserve(t, n_seq, n_tok)) != MOE_OK)
        return tokens ? s : moe_fail(MOE_ERR_INVALID_ARG, "train: no tokens");
    for (int64_t i = 0; i < (int64_t)n_seq * (n_tok + 1); i++)
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: token id %d out of range", tokens[i]);
    train_set_threads(t->par.n_threads);
    ce = train_pass(t, tokens, n_seq, n_tok, n_tok + 1, true, false, true);
    if (out)
        fill_stats(t, ce, out);
    return MOE_OK;
}

moe_status moe_trainer_route_load(const moe_trainer *t, int32_t il, double *frac)
{
    const int32_t X = t->cfg.n_expert;
    int64_t tot = 0;
    if (il < 0 || il >= t->cfg.n_layer || !t->layers[il].moe)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: layer %d is not an MoE layer", il);
    for (int32_t e = 0; e < X; e++)
        tot += t->route_count[(size_t)il * (size_t)X + (size_t)e];
    for (int32_t e = 0; e < X; e++)
        frac[e] = tot ? (double)t->route_count[(size_t)il * (size_t)X + (size_t)e] / (double)tot
                      : 0.0;
    return MOE_OK;
}

void moe_trainer_route_reset(moe_trainer *t)
{
    memset(t->route_count, 0,
           (size_t)t->cfg.n_layer * (size_t)(t->cfg.n_expert > 0 ? t->cfg.n_expert : 1) *
               sizeof(int64_t));
}

moe_status moe_trainer_logits(moe_trainer *t, const int32_t *tokens, int32_t n, float *out)
{
    moe_status s;
    if (!tokens || !out || (s = train_reserve(t, 1, n)) != MOE_OK)
        return (tokens && out) ? s : moe_fail(MOE_ERR_INVALID_ARG, "train: no tokens");
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: token id %d out of range", tokens[i]);
    train_set_threads(t->par.n_threads);
    train_pass(t, tokens, 1, n, n, false, false, false);
    memcpy(out, t->logits, (size_t)n * (size_t)t->n_vocab * sizeof(float));
    return MOE_OK;
}

/* ---- distillation ------------------------------------------------------------- */

moe_status moe_trainer_module_io(moe_trainer *t, const int32_t *tokens, int32_t n, int32_t il,
                                 float *x_in, float *y)
{
    moe_status s;
    const size_t bytes = (size_t)n * (size_t)t->cfg.n_embd * sizeof(float);
    if (il < 0 || il >= t->cfg.n_layer)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: no layer %d", il);
    if ((s = train_reserve(t, 1, n)) != MOE_OK)
        return s;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= t->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "train: token id %d out of range", tokens[i]);
    train_set_threads(t->par.n_threads);
    train_pass(t, tokens, 1, n, n, false, false, false);
    memcpy(x_in, t->acts[il].xn2, bytes);
    memcpy(y, t->acts[il].f, bytes);
    return MOE_OK;
}

moe_status moe_trainer_distill_step(moe_trainer *t, int32_t il, int32_t e, const float *x_in,
                                    const float *y, int32_t n, moe_train_stats *out)
{
    moe_train_stats st;
    moe_status s;
    char spec[48];
    const int64_t E = t->cfg.n_embd;
    train_acts *a;
    double mse = 0.0;
    if (il < 0 || il >= t->cfg.n_layer || !t->layers[il].moe || e < 0 || e >= t->cfg.n_expert)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: no expert %d in an MoE layer %d", e, il);
    if ((s = train_reserve(t, 1, n)) != MOE_OK)
        return s;
    snprintf(spec, sizeof spec, "blk.%d.expert.%d", il, e);
    if ((s = moe_trainer_set_trainable(t, spec)) != MOE_OK)
        return s;
    train_set_threads(t->par.n_threads);
    a = &t->acts[il];
    memset(t->grads, 0, t->n_params * sizeof(float));
    train_expert_fwd_bwd(t, il, e, x_in, n, a->g, a->u, a->y, NULL);
    for (int64_t i = 0; i < (int64_t)n * E; i++) {
        const float d = a->y[i] - y[i];
        mse += (double)d * d;
        t->dy[i] = 2.0f * d / (float)((int64_t)n * E);
    }
    mse /= (double)((int64_t)n * E);
    train_expert_fwd_bwd(t, il, e, x_in, n, a->g, a->u, a->y, t->dy);
    memset(&st, 0, sizeof st);
    st.loss = st.ce = mse;
    adamw(t, &st);
    t->tokens += n;
    st.step = t->step;
    st.tokens = t->tokens;
    if (out)
        *out = st;
    return MOE_OK;
}

/* ---- saving ---------------------------------------------------------------------- */

static moe_status set_hparams(moe_trainer *t, gguf_writer *w)
{
    const moe_train_config *c = &t->cfg;
    moe_status st;
    bool any_dense = false;
    for (int il = 0; il < c->n_layer; il++)
        any_dense |= !t->layers[il].moe;
#define CK(x)                                                                   \
    do {                                                                        \
        if ((st = (x)) != MOE_OK)                                               \
            return st;                                                          \
    } while (0)
    CK(gguf_writer_set_str(w, "general.architecture", "llama"));
    if (t->name || !t->src_is_model || !gguf_get_str(t->src, "general.name"))
        CK(gguf_writer_set_str(w, "general.name", t->name ? t->name : "moe-studio"));
    CK(gguf_writer_set_u32(w, "llama.context_length", (uint32_t)c->n_ctx_train));
    CK(gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)c->n_embd));
    CK(gguf_writer_set_u32(w, "llama.block_count", (uint32_t)c->n_layer));
    CK(gguf_writer_set_u32(w, "llama.feed_forward_length",
                           (uint32_t)(any_dense || c->n_expert == 0 ? c->n_ff : c->n_ff_exp)));
    CK(gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)c->n_head));
    CK(gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)c->n_head_kv));
    CK(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", c->norm_eps));
    CK(gguf_writer_set_f32(w, "llama.rope.freq_base", c->rope_freq_base));
    CK(gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)t->n_embd_head));
    CK(gguf_writer_set_u32(w, "llama.vocab_size", (uint32_t)t->n_vocab));
    if (c->n_expert > 0) {
        CK(gguf_writer_set_u32(w, "llama.expert_count", (uint32_t)c->n_expert));
        CK(gguf_writer_set_u32(w, "llama.expert_used_count", (uint32_t)c->n_expert_used));
        CK(gguf_writer_set_u32(w, "llama.expert_feed_forward_length", (uint32_t)c->n_ff_exp));
        CK(gguf_writer_set_bool(w, "llama.expert_weights_norm", c->norm_topk));
        if (c->unweighted)
            CK(gguf_writer_set_str(w, "moestudio.gating", "emoe-unweighted"));
    }
    CK(gguf_writer_set_u64(w, "moestudio.train.step", (uint64_t)t->step));
    CK(gguf_writer_set_u64(w, "moestudio.train.tokens", (uint64_t)t->tokens));
#undef CK
    return MOE_OK;
}

static moe_status save_optimizer(moe_trainer *t, const char *path)
{
    char opath[4096];
    gguf_writer *w;
    moe_status st;
    int64_t ne[1] = {(int64_t)t->n_params};
    const moe_train_params *p = &t->par;
    if (snprintf(opath, sizeof opath, "%s.opt", path) >= (int)sizeof opath)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: path too long");
    w = gguf_writer_new();
    if (!w)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    if ((st = gguf_writer_set_str(w, "general.type", "moestudio-optimizer")) ||
        (st = gguf_writer_set_u64(w, "moestudio.train.step", (uint64_t)t->step)) ||
        (st = gguf_writer_set_u64(w, "moestudio.train.tokens", (uint64_t)t->tokens)) ||
        (st = gguf_writer_set_u64(w, "moestudio.train.n_params", (uint64_t)t->n_params)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.lr", p->lr)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.lr_min", p->lr_min)) ||
        (st = gguf_writer_set_u64(w, "moestudio.train.warmup", (uint64_t)p->warmup)) ||
        (st = gguf_writer_set_u64(w, "moestudio.train.n_steps", (uint64_t)p->n_steps)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.beta1", p->beta1)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.beta2", p->beta2)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.weight_decay", p->weight_decay)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.grad_clip", p->grad_clip)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.w_balance", p->w_balance)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.w_zloss", p->w_zloss)) ||
        (st = gguf_writer_set_f32(w, "moestudio.train.w_mi", p->w_mi)) ||
        (st = gguf_writer_add_tensor(w, "adam.m", MOE_TYPE_F32, 1, ne, t->m)) ||
        (st = gguf_writer_add_tensor(w, "adam.v", MOE_TYPE_F32, 1, ne, t->v)))
        goto done;
    st = gguf_writer_write(w, opath);
done:
    gguf_writer_free(w);
    return st;
}

static moe_status load_optimizer(moe_trainer *t, const char *path)
{
    char opath[4096];
    gguf_ctx *g = NULL;
    const gguf_tensor_info *tm, *tv;
    int64_t v;
    double f;
    moe_status st;
    if (snprintf(opath, sizeof opath, "%s.opt", path) >= (int)sizeof opath ||
        access(opath, R_OK) != 0)
        return MOE_OK; /* nothing to resume: fresh moments */
    if ((st = gguf_open(opath, &g)) != MOE_OK)
        return st;
    tm = gguf_find_tensor(g, "adam.m");
    tv = gguf_find_tensor(g, "adam.v");
    if (!gguf_get_int(g, "moestudio.train.n_params", &v) || v != (int64_t)t->n_params || !tm ||
        !tv || tm->type != MOE_TYPE_F32 || tv->type != MOE_TYPE_F32 ||
        tm->ne[0] != (int64_t)t->n_params || tv->ne[0] != (int64_t)t->n_params) {
        gguf_close(g);
        return moe_fail(MOE_ERR_FORMAT, "train: %s does not match the model (%zu parameters)",
                        opath, t->n_params);
    }
    memcpy(t->m, tm->data, t->n_params * sizeof(float));
    memcpy(t->v, tv->data, t->n_params * sizeof(float));
    if (gguf_get_int(g, "moestudio.train.step", &v) && v >= 0)
        t->step = v;
    if (gguf_get_int(g, "moestudio.train.tokens", &v) && v >= 0)
        t->tokens = v;
#define GF(key, field)                                                          \
    if (gguf_get_float(g, "moestudio.train." key, &f) && isfinite(f))           \
        t->par.field = (float)f;
    GF("lr", lr) GF("lr_min", lr_min) GF("beta1", beta1) GF("beta2", beta2)
    GF("weight_decay", weight_decay) GF("grad_clip", grad_clip) GF("w_balance", w_balance)
    GF("w_zloss", w_zloss) GF("w_mi", w_mi)
#undef GF
    if (gguf_get_int(g, "moestudio.train.warmup", &v) && v >= 0)
        t->par.warmup = v;
    if (gguf_get_int(g, "moestudio.train.n_steps", &v) && v >= 1)
        t->par.n_steps = v;
    gguf_close(g);
    return MOE_OK;
}

moe_status moe_trainer_save(moe_trainer *t, const char *path, int type, bool with_optimizer)
{
    gguf_writer *w = gguf_writer_new();
    moe_status st = MOE_OK;
    char *qbuf = NULL;
    size_t qoff = 0, qcap = 0;

    if (!w)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    if (type != MOE_TYPE_F32 && type != MOE_TYPE_F16 && type != MOE_TYPE_Q8_0) {
        gguf_writer_free(w);
        return moe_fail(MOE_ERR_INVALID_ARG, "train: save type must be f32, f16 or q8_0");
    }
    /* metadata: the source's keys (all of a model's, or a vocabulary's
     * tokenizer.*), then ours on top */
    for (int64_t i = 0; i < gguf_n_kv(t->src) && st == MOE_OK; i++) {
        const char *key = gguf_kv_key(t->src, i);
        if (t->src_is_model ? strcmp(key, "general.alignment") != 0 &&
                                  strcmp(key, "general.file_type") != 0
                            : strncmp(key, "tokenizer.", 10) == 0)
            st = gguf_writer_copy_kv(w, t->src, i);
    }
    if (st == MOE_OK)
        st = set_hparams(t, w);
    if (st == MOE_OK && type != MOE_TYPE_F32)
        st = gguf_writer_set_u32(w, "general.file_type", type == MOE_TYPE_F16 ? 1u : 7u);
    if (st == MOE_OK && type != MOE_TYPE_F32) {
        for (int i = 0; i < t->n_tens; i++)
            qcap += quant_row_bytes((moe_type)type, t->tens[i].ne[0]) *
                        (size_t)(t->tens[i].ne[1] * t->tens[i].ne[2]) + 64;
        qbuf = malloc(qcap);
        if (!qbuf)
            st = moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    }
    for (int i = 0; i < t->n_tens && st == MOE_OK; i++) {
        const train_tensor *tt = &t->tens[i];
        const float *data = t->params + tt->off;
        moe_type ty = MOE_TYPE_F32;
        if (type != MOE_TYPE_F32 && tt->n_dims >= 2 && !strstr(tt->name, "ffn_gate_inp") &&
            tt->ne[0] % quant_block_elems((moe_type)type) == 0)
            ty = (moe_type)type;
        if (ty != MOE_TYPE_F32) {
            const size_t rb = quant_row_bytes(ty, tt->ne[0]);
            const int64_t rows = tt->ne[1] * tt->ne[2];
            char *dst = qbuf + qoff;
            for (int64_t r = 0; r < rows; r++)
                quant_quantize_row(ty, data + (size_t)r * (size_t)tt->ne[0],
                                   dst + (size_t)r * rb, tt->ne[0]);
            qoff += rb * (size_t)rows;
            st = gguf_writer_add_tensor(w, tt->name, ty, tt->n_dims, tt->ne, dst);
        } else {
            st = gguf_writer_add_tensor(w, tt->name, MOE_TYPE_F32, tt->n_dims, tt->ne, data);
        }
    }
    if (st == MOE_OK)
        st = gguf_writer_write(w, path);
    gguf_writer_free(w);
    free(qbuf);
    if (st == MOE_OK && with_optimizer)
        st = save_optimizer(t, path);
    return st;
}
