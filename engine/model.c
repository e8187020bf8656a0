/*
 * model.c - loading a GGUF model: architecture, hyperparameters, weights
 * bound as views into the mapped file (every shape checked), the tokenizer;
 * contexts (KV cache and scratch); the public decode entry point.
 *
 * Compute lives in forward.c. Depends on gguf, quant, tokenizer, threads.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "router.h"
#include "exit.h"
#include "trace.h"
#include "util.h"

static const char *const arch_names[] = {
    [ARCH_LLAMA] = "llama",
    [ARCH_QWEN2] = "qwen2",
    [ARCH_QWEN2MOE] = "qwen2moe",
    [ARCH_QWEN3] = "qwen3",
    [ARCH_QWEN3MOE] = "qwen3moe",
    [ARCH_OLMOE] = "olmoe",
    [ARCH_GRANITE] = "granite",
    [ARCH_GRANITEMOE] = "granitemoe",
};
_Static_assert(sizeof arch_names / sizeof arch_names[0] == ARCH_COUNT,
               "arch_names must cover model_arch");

static const char *const arch_list[ARCH_COUNT + 1] = {
    "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "olmoe", "granite",
    "granitemoe", NULL,
};

const char *const *moe_supported_archs(void)
{
    return arch_list;
}

moe_model_params moe_model_default_params(void)
{
    moe_model_params p = {.n_threads = 2, .load = MOE_LOAD_AUTO};
    return p;
}

/* whether to copy the file into huge-page memory (moe_load_mode) */
static bool load_copy(const char *path, moe_load_mode mode)
{
    struct stat sb;
    char buf[128];
    bool thp;
    FILE *f;
    if (mode != MOE_LOAD_AUTO)
        return mode == MOE_LOAD_COPY;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || sb.st_size < MOE_LOAD_COPY_MIN)
        return false; /* gguf_open says what is wrong with the path */
    f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f)
        return false;
    thp = fgets(buf, sizeof buf, f) && !strstr(buf, "[never]");
    fclose(f);
    return thp;
}

/* ---- hyperparameters --------------------------------------------------- */

typedef struct {
    const gguf_ctx *g;
    const char *arch;
} kv_reader;

static bool kv_int(const kv_reader *r, const char *suffix, int64_t *out)
{
    char key[256];
    snprintf(key, sizeof key, "%s.%s", r->arch, suffix);
    return gguf_get_int(r->g, key, out);
}

static bool kv_float(const kv_reader *r, const char *suffix, double *out)
{
    char key[256];
    snprintf(key, sizeof key, "%s.%s", r->arch, suffix);
    return gguf_get_float(r->g, key, out);
}

/* Required positive integer hyperparameter within [lo, hi]. */
static moe_status kv_need(const kv_reader *r, const char *suffix, int64_t lo,
                          int64_t hi, int32_t *out)
{
    int64_t v;
    if (!kv_int(r, suffix, &v))
        return moe_fail(MOE_ERR_FORMAT, "missing metadata key '%s.%s'", r->arch,
                        suffix);
    if (v < lo || v > hi)
        return moe_fail(MOE_ERR_FORMAT, "metadata '%s.%s' = %lld out of range [%lld, %lld]",
                        r->arch, suffix, (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return MOE_OK;
}

static moe_status kv_opt(const kv_reader *r, const char *suffix, int64_t lo,
                         int64_t hi, int32_t def, int32_t *out)
{
    int64_t v;
    if (!kv_int(r, suffix, &v)) {
        *out = def;
        return MOE_OK;
    }
    if (v < lo || v > hi)
        return moe_fail(MOE_ERR_FORMAT, "metadata '%s.%s' = %lld out of range [%lld, %lld]",
                        r->arch, suffix, (long long)v, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return MOE_OK;
}

static float kv_float_or(const kv_reader *r, const char *suffix, float def)
{
    double v;
    return kv_float(r, suffix, &v) && isfinite(v) ? (float)v : def;
}

static bool arch_is_moe(model_arch a)
{
    return a == ARCH_QWEN2MOE || a == ARCH_QWEN3MOE || a == ARCH_OLMOE ||
           a == ARCH_GRANITEMOE;
}

static moe_status load_hparams(moe_model *m)
{
    model_hparams *hp = &m->hp;
    kv_reader r = {m->gguf, m->arch_name};
    moe_status st;
    const int32_t big = 1 << 24;
    int64_t tmp;

    memset(hp, 0, sizeof *hp);
    for (int a = 0; a < ARCH_COUNT; a++)
        if (strcmp(m->arch_name, arch_names[a]) == 0)
            hp->arch = (model_arch)a;

    if ((st = kv_need(&r, "embedding_length", 1, 1 << 16, &hp->n_embd)) ||
        (st = kv_need(&r, "block_count", 1, 4096, &hp->n_layer)) ||
        (st = kv_need(&r, "attention.head_count", 1, 4096, &hp->n_head)) ||
        (st = kv_opt(&r, "attention.head_count_kv", 1, 4096, hp->n_head, &hp->n_head_kv)) ||
        (st = kv_opt(&r, "context_length", 1, big, 2048, &hp->n_ctx_train)) ||
        (st = kv_opt(&r, "feed_forward_length", 0, big, 0, &hp->n_ff)) ||
        (st = kv_opt(&r, "expert_count", 0, 4096, 0, &hp->n_expert)) ||
        (st = kv_opt(&r, "expert_used_count", 0, 4096, 0, &hp->n_expert_used)))
        return st;
    if (hp->n_head % hp->n_head_kv != 0)
        return moe_fail(MOE_ERR_FORMAT, "head_count %d is not a multiple of head_count_kv %d",
                        hp->n_head, hp->n_head_kv);
    if ((st = kv_opt(&r, "attention.key_length", 1, 1 << 14,
                     hp->n_embd / hp->n_head, &hp->n_embd_head)))
        return st;
    if (hp->n_embd_head < 1)
        return moe_fail(MOE_ERR_FORMAT, "head dimension is 0 (n_embd %d, n_head %d)",
                        hp->n_embd, hp->n_head);
    if ((st = kv_opt(&r, "rope.dimension_count", 0, hp->n_embd_head, hp->n_embd_head,
                     &hp->n_rot)))
        return st;
    if (hp->n_rot % 2 != 0)
        return moe_fail(MOE_ERR_FORMAT, "rope.dimension_count %d is odd", hp->n_rot);
    if ((st = kv_opt(&r, "expert_feed_forward_length", 0, big, hp->n_ff, &hp->n_ff_exp)) ||
        (st = kv_opt(&r, "expert_shared_feed_forward_length", 0, big, 0, &hp->n_ff_shexp)))
        return st;
    if (hp->n_expert > 0 && (hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert))
        return moe_fail(MOE_ERR_FORMAT, "expert_used_count %d out of range [1, %d]",
                        hp->n_expert_used, hp->n_expert);
    if (arch_is_moe(hp->arch) && hp->n_expert == 0)
        return moe_fail(MOE_ERR_FORMAT, "architecture '%s' needs %s.expert_count",
                        m->arch_name, m->arch_name);
    if (hp->n_expert == 0)
        hp->n_expert_used = 0;

    hp->norm_eps = kv_float_or(&r, "attention.layer_norm_rms_epsilon", 1e-5f);
    hp->rope_freq_base = kv_float_or(&r, "rope.freq_base", 10000.0f);
    if (!(hp->norm_eps > 0) || !(hp->rope_freq_base > 0))
        return moe_fail(MOE_ERR_FORMAT, "bad rms epsilon or rope base in metadata");
    hp->expert_weights_scale = kv_float_or(&r, "expert_weights_scale", 1.0f);
    hp->embd_scale = kv_float_or(&r, "embedding_scale", 1.0f);
    hp->residual_scale = kv_float_or(&r, "residual_scale", 1.0f);
    hp->attn_scale = kv_float_or(&r, "attention.scale", 0.0f);
    hp->logit_scale = kv_float_or(&r, "logit_scale", 1.0f);
    if (hp->logit_scale == 0.0f)
        return moe_fail(MOE_ERR_FORMAT, "logit_scale is 0");
    hp->gate = GATE_SOFTMAX;
    if (kv_int(&r, "expert_gating_func", &tmp) && tmp == 2)
        hp->gate = GATE_SIGMOID;

    switch (hp->arch) {
    case ARCH_QWEN2:
    case ARCH_QWEN2MOE:
    case ARCH_QWEN3:
    case ARCH_QWEN3MOE:
    case ARCH_OLMOE:
        hp->rope = ROPE_NEOX;
        break;
    default:
        hp->rope = ROPE_NORM;
    }
    /* Qwen2-MoE and OLMoE keep the selected probabilities as they are. */
    hp->norm_topk = !(hp->arch == ARCH_QWEN2MOE || hp->arch == ARCH_OLMOE);
    {
        bool b;
        char key[256];
        snprintf(key, sizeof key, "%s.expert_weights_norm", m->arch_name);
        if (gguf_get_bool(m->gguf, key, &b))
            hp->norm_topk = b;
    }
    {
        /* our own namespace: models converted by `moe-studio emoe` */
        const char *g = gguf_get_str(m->gguf, "moestudio.gating");
        hp->unweighted = g && strcmp(g, "emoe-unweighted") == 0;
    }
    hp->qk_norm_full = hp->arch == ARCH_OLMOE;
    hp->qk_norm_head = hp->arch == ARCH_QWEN3 || hp->arch == ARCH_QWEN3MOE;
    return MOE_OK;
}

/* ---- weights ----------------------------------------------------------- */

/* Bind tensor `name` with expected shape ne (n_dims entries; trailing 1s are
 * accepted). required=false leaves t->data NULL when absent. */
static moe_status bind(moe_model *m, mtensor *t, const char *name, bool required,
                       int n_dims, int64_t ne0, int64_t ne1, int64_t ne2)
{
    const gguf_tensor_info *ti = gguf_find_tensor(m->gguf, name);
    int64_t want[4] = {ne0, n_dims > 1 ? ne1 : 1, n_dims > 2 ? ne2 : 1, 1};
    memset(t, 0, sizeof *t);
    if (!ti) {
        if (required)
            return moe_fail(MOE_ERR_FORMAT, "missing tensor '%s'", name);
        return MOE_OK;
    }
    for (int d = 0; d < 4; d++) {
        int64_t have = d < ti->n_dims ? ti->ne[d] : 1;
        if (have != want[d])
            return moe_fail(MOE_ERR_FORMAT,
                            "tensor '%s' has shape [%lld, %lld, %lld], expected [%lld, %lld, %lld]",
                            name, (long long)ti->ne[0],
                            (long long)(ti->n_dims > 1 ? ti->ne[1] : 1),
                            (long long)(ti->n_dims > 2 ? ti->ne[2] : 1), (long long)want[0],
                            (long long)want[1], (long long)want[2]);
    }
    if (!quant_type_supported((int)ti->type) || ti->type == MOE_TYPE_Q8_K)
        return moe_fail(MOE_ERR_UNSUPPORTED, "tensor '%s' has unsupported type %s", name,
                        quant_type_name((int)ti->type));
    t->type = ti->type;
    t->n_dims = n_dims;
    t->ne[0] = want[0];
    t->ne[1] = want[1];
    t->ne[2] = want[2];
    t->ne[3] = 1;
    t->row_bytes = quant_row_bytes(ti->type, ne0);
    t->data = ti->data;
    return MOE_OK;
}

/* Norm and bias vectors must be f32: they are read directly. */
static moe_status bind_f32(moe_model *m, mtensor *t, const char *name, bool required,
                           int64_t n)
{
    moe_status st = bind(m, t, name, required, 1, n, 1, 1);
    if (st == MOE_OK && t->data && t->type != MOE_TYPE_F32)
        return moe_fail(MOE_ERR_UNSUPPORTED, "tensor '%s' must be f32, is %s", name,
                        quant_type_name((int)t->type));
    return st;
}

static moe_status load_weights(moe_model *m)
{
    const model_hparams *hp = &m->hp;
    const int64_t n_embd = hp->n_embd, hd = hp->n_embd_head;
    const int64_t n_q = (int64_t)hp->n_head * hd, n_kv = (int64_t)hp->n_head_kv * hd;
    char name[128];
    moe_status st;
    bool has_shexp;

#define B(t, req, nd, a, b, c)                                                  \
    do {                                                                        \
        if ((st = bind(m, t, name, req, nd, a, b, c)) != MOE_OK)                \
            return st;                                                          \
    } while (0)
#define BF(t, req, n)                                                           \
    do {                                                                        \
        if ((st = bind_f32(m, t, name, req, n)) != MOE_OK)                      \
            return st;                                                          \
    } while (0)
#define NAME(...) snprintf(name, sizeof name, __VA_ARGS__)

    {
        const gguf_tensor_info *te = gguf_find_tensor(m->gguf, "token_embd.weight");
        if (!te)
            return moe_fail(MOE_ERR_FORMAT, "missing tensor 'token_embd.weight'");
        if (te->n_dims < 2 || te->ne[1] < 1 || te->ne[1] > (1 << 24))
            return moe_fail(MOE_ERR_FORMAT, "tensor 'token_embd.weight' has a bad shape");
        m->hp.n_vocab = (int32_t)te->ne[1];
    }
    NAME("token_embd.weight");
    B(&m->tok_embd, true, 2, n_embd, hp->n_vocab, 1);
    NAME("output_norm.weight");
    BF(&m->output_norm, true, n_embd);
    NAME("output.weight");
    B(&m->output, false, 2, n_embd, hp->n_vocab, 1);
    if (!m->output.data)
        m->output = m->tok_embd; /* tied embeddings */

    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for %d layers", hp->n_layer);
    NAME("blk.0.ffn_gate_inp_shexp.weight");
    has_shexp = gguf_find_tensor(m->gguf, name) != NULL;
    if (has_shexp && hp->n_ff_shexp == 0)
        m->hp.n_ff_shexp = hp->n_ff;

    for (int il = 0; il < hp->n_layer; il++) {
        model_layer *L = &m->layers[il];
        NAME("blk.%d.attn_norm.weight", il);
        BF(&L->attn_norm, true, n_embd);
        NAME("blk.%d.attn_q.weight", il);
        B(&L->wq, true, 2, n_embd, n_q, 1);
        NAME("blk.%d.attn_k.weight", il);
        B(&L->wk, true, 2, n_embd, n_kv, 1);
        NAME("blk.%d.attn_v.weight", il);
        B(&L->wv, true, 2, n_embd, n_kv, 1);
        NAME("blk.%d.attn_output.weight", il);
        B(&L->wo, true, 2, n_q, n_embd, 1);
        NAME("blk.%d.attn_q.bias", il);
        BF(&L->bq, false, n_q);
        NAME("blk.%d.attn_k.bias", il);
        BF(&L->bk, false, n_kv);
        NAME("blk.%d.attn_v.bias", il);
        BF(&L->bv, false, n_kv);
        if (hp->qk_norm_full) {
            NAME("blk.%d.attn_q_norm.weight", il);
            BF(&L->q_norm, true, n_q);
            NAME("blk.%d.attn_k_norm.weight", il);
            BF(&L->k_norm, true, n_kv);
        } else if (hp->qk_norm_head) {
            NAME("blk.%d.attn_q_norm.weight", il);
            BF(&L->q_norm, true, hd);
            NAME("blk.%d.attn_k_norm.weight", il);
            BF(&L->k_norm, true, hd);
        }
        NAME("blk.%d.ffn_norm.weight", il);
        BF(&L->ffn_norm, true, n_embd);
        NAME("blk.%d.ffn_gate_inp.weight", il);
        if (hp->n_expert > 0 && gguf_find_tensor(m->gguf, name)) {
            /* a routed layer (models converted by EMoE may keep some
             * layers dense, so this is decided per layer) */
            const int64_t ne = hp->n_expert, nf = hp->n_ff_exp;
            if (nf < 1)
                return moe_fail(MOE_ERR_FORMAT, "expert FFN width is 0");
            NAME("blk.%d.ffn_gate_inp.weight", il);
            B(&L->gate_inp, true, 2, n_embd, ne, 1);
            NAME("blk.%d.ffn_gate_exps.weight", il);
            B(&L->gate_exps, true, 3, n_embd, nf, ne);
            NAME("blk.%d.ffn_up_exps.weight", il);
            B(&L->up_exps, true, 3, n_embd, nf, ne);
            NAME("blk.%d.ffn_down_exps.weight", il);
            B(&L->down_exps, true, 3, nf, n_embd, ne);
            if (has_shexp) {
                const int64_t ns = hp->n_ff_shexp;
                NAME("blk.%d.ffn_gate_inp_shexp.weight", il);
                B(&L->gate_inp_shexp, true, 2, n_embd, 1, 1);
                NAME("blk.%d.ffn_gate_shexp.weight", il);
                B(&L->gate_shexp, true, 2, n_embd, ns, 1);
                NAME("blk.%d.ffn_up_shexp.weight", il);
                B(&L->up_shexp, true, 2, n_embd, ns, 1);
                NAME("blk.%d.ffn_down_shexp.weight", il);
                B(&L->down_shexp, true, 2, ns, n_embd, 1);
            }
        } else {
            if (hp->n_ff < 1)
                return moe_fail(MOE_ERR_FORMAT, "feed_forward_length is 0 in a dense layer");
            NAME("blk.%d.ffn_gate.weight", il);
            B(&L->ffn_gate, true, 2, n_embd, hp->n_ff, 1);
            NAME("blk.%d.ffn_up.weight", il);
            B(&L->ffn_up, true, 2, n_embd, hp->n_ff, 1);
            NAME("blk.%d.ffn_down.weight", il);
            B(&L->ffn_down, true, 2, hp->n_ff, n_embd, 1);
        }
    }
#undef B
#undef BF
#undef NAME
    return MOE_OK;
}

static void count_params(moe_model *m)
{
    int64_t n = gguf_n_tensors(m->gguf);
    int64_t counts[MOE_TYPE_COUNT] = {0};
    int64_t best = -1;
    m->n_params = 0;
    m->weight_bytes = 0;
    m->expert_bytes = 0;
    for (int64_t i = 0; i < n; i++) {
        const gguf_tensor_info *ti = gguf_tensor(m->gguf, i);
        int64_t ne = ti->ne[0] * ti->ne[1] * ti->ne[2] * ti->ne[3];
        m->n_params += ne;
        m->weight_bytes += (int64_t)ti->nbytes;
        if (strstr(ti->name, "_exps."))
            m->expert_bytes += (int64_t)ti->nbytes;
        if (ti->n_dims >= 2 && (unsigned)ti->type < MOE_TYPE_COUNT)
            counts[ti->type] += ne;
    }
    m->ftype = MOE_TYPE_F32;
    for (int t = 0; t < MOE_TYPE_COUNT; t++)
        if (counts[t] > best) {
            best = counts[t];
            m->ftype = (moe_type)t;
        }
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

moe_status moe_model_load(const char *path, const moe_model_params *params,
                          moe_model **out)
{
    moe_model *m;
    moe_status st;
    const char *arch, *name;
    bool known = false;

    *out = NULL;
    if (!path)
        return moe_fail(MOE_ERR_INVALID_ARG, "no model path given");
    m = calloc(1, sizeof *m);
    if (!m)
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    m->n_threads = params && params->n_threads > 0 ? params->n_threads : 1;
    m->path = dup_str(path);
    if (params && (params->load < MOE_LOAD_AUTO || params->load > MOE_LOAD_COPY)) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "unknown load mode %d", (int)params->load);
        goto fail;
    }
    m->copied = load_copy(path, params ? params->load : MOE_LOAD_AUTO);
    if ((st = (m->copied ? gguf_open_copy : gguf_open)(path, &m->gguf)) != MOE_OK)
        goto fail;
    arch = gguf_get_str(m->gguf, "general.architecture");
    if (!arch) {
        st = moe_fail(MOE_ERR_FORMAT, "%s: no general.architecture key", path);
        goto fail;
    }
    for (int a = 0; a < ARCH_COUNT; a++)
        known |= strcmp(arch, arch_names[a]) == 0;
    if (!known) {
        st = moe_fail(MOE_ERR_UNSUPPORTED,
                      "unsupported architecture '%.64s' (supported: llama, qwen2, qwen2moe, "
                      "qwen3, qwen3moe, olmoe, granite, granitemoe)", arch);
        goto fail;
    }
    m->arch_name = dup_str(arch);
    name = gguf_get_str(m->gguf, "general.name");
    if (!name) {
        name = strrchr(path, '/');
        name = name ? name + 1 : path;
    }
    m->name = dup_str(name);
    if (!m->path || !m->arch_name || !m->name) {
        st = moe_fail(MOE_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = load_hparams(m)) != MOE_OK || (st = load_weights(m)) != MOE_OK)
        goto fail;
    if ((st = tok_load(m->gguf, &m->vocab)) != MOE_OK)
        goto fail;
    if (tok_n_vocab(m->vocab) > m->hp.n_vocab) {
        st = moe_fail(MOE_ERR_FORMAT, "vocabulary has %d tokens but the embedding only %d",
                      tok_n_vocab(m->vocab), m->hp.n_vocab);
        goto fail;
    }
    count_params(m);
    *out = m;
    return MOE_OK;
fail:
    moe_model_free(m);
    return st;
}

void moe_model_free(moe_model *m)
{
    if (!m)
        return;
    tok_free(m->vocab);
    gguf_close(m->gguf);
    free(m->layers);
    free(m->path);
    free(m->name);
    free(m->arch_name);
    free(m);
}

void moe_model_get_info(const moe_model *m, moe_model_info *info)
{
    const model_hparams *hp = &m->hp;
    memset(info, 0, sizeof *info);
    info->name = m->name;
    info->arch = m->arch_name;
    info->path = m->path;
    info->ftype = quant_type_name((int)m->ftype);
    info->n_vocab = hp->n_vocab;
    info->n_ctx_train = hp->n_ctx_train;
    info->n_embd = hp->n_embd;
    info->n_layer = hp->n_layer;
    info->n_head = hp->n_head;
    info->n_head_kv = hp->n_head_kv;
    info->n_embd_head = hp->n_embd_head;
    info->n_ff = hp->n_ff;
    info->n_expert = hp->n_expert;
    info->n_expert_used = hp->n_expert_used;
    info->n_ff_exp = hp->n_expert ? hp->n_ff_exp : 0;
    info->has_shared_expert = m->layers && m->layers[0].gate_inp_shexp.data != NULL;
    info->n_params = m->n_params;
    info->weight_bytes = m->weight_bytes;
    info->file_size = (int64_t)gguf_file_size(m->gguf);
    info->copied = m->copied;
}

int64_t moe_model_active_bytes_per_token(const moe_model *m)
{
    int64_t dense = m->weight_bytes - m->expert_bytes;
    int64_t active = 0;
    /* The embedding is read one row per token, not whole. */
    dense -= (int64_t)(m->tok_embd.row_bytes * (size_t)m->hp.n_vocab);
    if (m->output.data == m->tok_embd.data)
        dense += (int64_t)(m->tok_embd.row_bytes * (size_t)m->hp.n_vocab);
    dense += (int64_t)m->tok_embd.row_bytes;
    if (m->hp.n_expert > 0)
        active = m->expert_bytes / m->hp.n_expert * m->hp.n_expert_used;
    return dense + active;
}

const void *moe_model_weight_span(const moe_model *m, size_t *size)
{
    const unsigned char *lo = NULL, *hi = NULL;
    int64_t n = gguf_n_tensors(m->gguf);
    for (int64_t i = 0; i < n; i++) {
        const gguf_tensor_info *ti = gguf_tensor(m->gguf, i);
        const unsigned char *d = ti->data;
        if (!d || ti->nbytes == 0)
            continue;
        if (!lo || d < lo)
            lo = d;
        if (!hi || d + ti->nbytes > hi)
            hi = d + ti->nbytes;
    }
    *size = lo ? (size_t)(hi - lo) : 0;
    return lo;
}

/* ---- tokens ------------------------------------------------------------ */

int32_t moe_tokenize(const moe_model *m, const char *text, size_t len, int32_t *out,
                     int32_t n_max, bool add_bos, bool parse_special)
{
    return tok_encode(m->vocab, text, len, add_bos && tok_add_bos(m->vocab), parse_special,
                      out, n_max);
}

const char *moe_token_piece(const moe_model *m, int32_t id, size_t *len)
{
    if (id < 0 || id >= tok_n_vocab(m->vocab)) {
        *len = 0;
        return "";
    }
    return tok_piece(m->vocab, id, len);
}

int32_t moe_token_bos(const moe_model *m)
{
    return tok_bos(m->vocab);
}

int32_t moe_token_eos(const moe_model *m)
{
    return tok_eos(m->vocab);
}

bool moe_token_is_eog(const moe_model *m, int32_t id)
{
    return tok_is_eog(m->vocab, id);
}

bool moe_model_add_bos(const moe_model *m)
{
    return tok_add_bos(m->vocab);
}

/* ---- contexts ---------------------------------------------------------- */

moe_ctx_params moe_ctx_default_params(void)
{
    moe_ctx_params p = {.n_ctx = 0, .n_threads = 0, .n_batch = 512};
    return p;
}

static void *xcalloc(size_t n, size_t size, bool *ok)
{
    void *p;
    if (!*ok)
        return NULL;
    p = calloc(n ? n : 1, size);
    if (!p)
        *ok = false;
    return p;
}

/* bytes of uninitialised memory on a 32-byte boundary (for aligned vector
 * loads), as xcalloc fails */
static void *xaligned32(size_t bytes, bool *ok)
{
    const size_t size = bytes ? (bytes + 31) & ~(size_t)31 : 32; /* a multiple of 32 */
    void *p;
    if (!*ok)
        return NULL;
    p = aligned_alloc(32, size);
    if (!p)
        *ok = false;
    return p;
}

moe_status moe_ctx_new(moe_model *m, const moe_ctx_params *params, moe_ctx **out)
{
    const model_hparams *hp = &m->hp;
    moe_ctx_params p = params ? *params : moe_ctx_default_params();
    moe_ctx *c;
    bool ok = true;
    size_t n_kv = (size_t)hp->n_head_kv * (size_t)hp->n_embd_head;
    size_t n_q = (size_t)hp->n_head * (size_t)hp->n_embd_head;
    size_t nb, n_hidden, kv_elems, max_in;
    int n_threads;

    *out = NULL;
    if (p.n_ctx <= 0)
        p.n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (p.n_ctx > (1 << 20))
        return moe_fail(MOE_ERR_INVALID_ARG, "context length %d too large", p.n_ctx);
    if (p.n_batch <= 0)
        p.n_batch = 512;
    if (p.n_batch > p.n_ctx)
        p.n_batch = p.n_ctx;
    n_threads = p.n_threads > 0 ? p.n_threads : m->n_threads;
    if (n_threads > 256)
        return moe_fail(MOE_ERR_INVALID_ARG, "%d threads is too many", n_threads);
    if ((unsigned)p.order > MOE_ORDER_TOKEN)
        return moe_fail(MOE_ERR_INVALID_ARG, "summation order %d out of range [0, %d]",
                        (int)p.order, (int)MOE_ORDER_TOKEN);
    c = calloc(1, sizeof *c);
    if (!c)
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    c->model = m;
    c->n_ctx = p.n_ctx;
    c->n_batch = p.n_batch;
    c->order = p.order;
    nb = (size_t)p.n_batch;
    n_hidden = (size_t)hp->n_ff;
    if (p.max_top_k < 0 || (hp->n_expert > 0 && p.max_top_k > hp->n_expert)) {
        free(c);
        return moe_fail(MOE_ERR_INVALID_ARG, "max_top_k %d out of range [0, %d]", p.max_top_k,
                        hp->n_expert);
    }
    if (hp->n_expert > 0)
        c->n_sel = (p.max_top_k > hp->n_expert_used ? p.max_top_k : hp->n_expert_used) + 1;
    if ((size_t)c->n_sel * (size_t)hp->n_ff_exp > n_hidden)
        n_hidden = (size_t)c->n_sel * (size_t)hp->n_ff_exp;
    if ((size_t)hp->n_ff_shexp > n_hidden)
        n_hidden = (size_t)hp->n_ff_shexp;
    kv_elems = (size_t)hp->n_layer * kv_ctx8(c) * n_kv;
    max_in = n_hidden > n_q ? n_hidden : n_q;
    if (max_in < (size_t)hp->n_embd)
        max_in = (size_t)hp->n_embd;

    c->pool = tp_create(n_threads);
    if (!c->pool)
        ok = false;
    c->tok_hist = xcalloc((size_t)p.n_ctx, sizeof(int32_t), &ok);
    c->k_cache = xcalloc(kv_elems, sizeof(float), &ok);
    c->v_cache = xcalloc(kv_elems, sizeof(float), &ok);
    c->x = xcalloc(nb * (size_t)hp->n_embd, sizeof(float), &ok);
    c->xn = xcalloc(nb * (size_t)hp->n_embd, sizeof(float), &ok);
    c->q = xcalloc(nb * n_q, sizeof(float), &ok);
    c->k = xcalloc(nb * n_kv, sizeof(float), &ok);
    c->v = xcalloc(nb * n_kv, sizeof(float), &ok);
    c->att = xcalloc(nb * n_q, sizeof(float), &ok);
    c->att_scores = xcalloc((size_t)n_threads * MOE_ATT_LANES * (size_t)p.n_ctx, sizeof(float), &ok);
    c->att_vacc = xaligned32((size_t)n_threads * MOE_ATT_VACC(hp->n_embd_head) * sizeof(float),
                             &ok);
    c->ffn_out = xcalloc(nb * (size_t)hp->n_embd, sizeof(float), &ok);
    c->hb = xcalloc(nb * n_hidden, sizeof(float), &ok);
    c->hb2 = xcalloc(nb * n_hidden, sizeof(float), &ok);
    c->rope_cs = xcalloc(nb * (size_t)(hp->n_rot > 0 ? hp->n_rot : 1), sizeof(float), &ok);
    c->rope_p0 = -1;
    if (hp->n_expert > 0) {
        size_t ne = (size_t)hp->n_expert, nu = (size_t)c->n_sel;
        c->router_logits = xcalloc(nb * ne, sizeof(float), &ok);
        c->router_probs = xcalloc(nb * ne, sizeof(float), &ok);
        c->sel = xcalloc(nb * nu, sizeof(int32_t), &ok);
        c->sel_w = xcalloc(nb * nu, sizeof(float), &ok);
        c->n_sel_tok = xcalloc(nb, sizeof(int32_t), &ok);
        c->shexp_gate = xcalloc(nb, sizeof(float), &ok);
        c->slot_of = xcalloc(nb * nu, sizeof(int32_t), &ok);
        c->exp_start = xcalloc(ne, sizeof(int32_t), &ok);
        c->exp_count = xcalloc(ne, sizeof(int32_t), &ok);
        c->x_gather = xcalloc(nb * nu * (size_t)hp->n_embd, sizeof(float), &ok);
        c->y_gather = xcalloc(nb * nu * (size_t)hp->n_embd, sizeof(float), &ok);
        if (nb * nu * (size_t)(hp->n_embd > hp->n_ff_exp ? hp->n_embd : hp->n_ff_exp) > nb * max_in)
            max_in = nu * (size_t)(hp->n_embd > hp->n_ff_exp ? hp->n_embd : hp->n_ff_exp);
    }
    /* activations converted for the dot kernels: worst case is f32-sized */
    c->act_q_bytes = nb * max_in * sizeof(float) + 4096;
    c->act_q = xcalloc(c->act_q_bytes, 1, &ok);
    c->n_logits_cap = 1;
    c->logits = xcalloc((size_t)hp->n_vocab, sizeof(float), &ok);
    if (!ok) {
        moe_ctx_free(c);
        return moe_fail(MOE_ERR_NOMEM, "out of memory for a context of %d tokens", p.n_ctx);
    }
    *out = c;
    return MOE_OK;
}

void moe_ctx_free(moe_ctx *c)
{
    if (!c)
        return;
    tp_free(c->pool);
    free(c->tok_hist);
    free(c->k_cache);
    free(c->v_cache);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->att_scores);
    free(c->att_vacc);
    free(c->ffn_out);
    free(c->hb);
    free(c->hb2);
    free(c->rope_cs);
    free(c->router_logits);
    free(c->router_probs);
    free(c->sel);
    free(c->sel_w);
    free(c->n_sel_tok);
    trace_free(c->trace);
    exit_state_free(c->exit);
    router_lab_free(c->route);
    free(c->shexp_gate);
    free(c->slot_of);
    free(c->exp_start);
    free(c->exp_count);
    free(c->x_gather);
    free(c->y_gather);
    free(c->act_q);
    free(c->logits);
    free(c);
}

moe_status moe_ctx_decode(moe_ctx *c, const int32_t *tokens, int32_t n, bool all_logits)
{
    const int32_t n_vocab = c->model->hp.n_vocab;
    if (n <= 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "decode of %d tokens", n);
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG, "token id %d out of range [0, %d)", tokens[i],
                            n_vocab);
    if ((int64_t)c->pos + n > c->n_ctx)
        return moe_fail(MOE_ERR_FULL, "context full: %d + %d tokens exceed n_ctx %d", c->pos,
                        n, c->n_ctx);
    if (all_logits && n > c->n_logits_cap) {
        float *nl = realloc(c->logits, (size_t)n * (size_t)n_vocab * sizeof(float));
        if (!nl)
            return moe_fail(MOE_ERR_NOMEM, "out of memory for %d rows of logits", n);
        c->logits = nl;
        c->n_logits_cap = n;
    }
    memcpy(c->tok_hist + c->pos, tokens, (size_t)n * sizeof(int32_t));
    c->logits_all = all_logits;
    c->n_logits = all_logits ? n : 1;
    for (int32_t done = 0; done < n;) {
        int32_t nb = n - done < c->n_batch ? n - done : c->n_batch;
        moe_status st;
        /* forward_batch writes logits rows at ctx->logits + offset */
        if (all_logits) {
            float *save = c->logits;
            c->logits = save + (size_t)done * (size_t)n_vocab;
            st = forward_batch(c, tokens + done, nb, true);
            c->logits = save;
        } else {
            st = forward_batch(c, tokens + done, nb, false);
        }
        if (st != MOE_OK)
            return st;
        done += nb;
    }
    return MOE_OK;
}

const float *moe_ctx_logits(const moe_ctx *c, int32_t i)
{
    const size_t nv = (size_t)c->model->hp.n_vocab;
    if (c->n_logits == 0)
        return NULL;
    if (i < 0)
        return c->logits + (size_t)(c->n_logits - 1) * nv;
    if (!c->logits_all)
        return NULL;
    if (i >= c->n_logits)
        return NULL;
    return c->logits + (size_t)i * nv;
}

int32_t moe_ctx_pos(const moe_ctx *c)
{
    return c->pos;
}

int32_t moe_ctx_n_ctx(const moe_ctx *c)
{
    return c->n_ctx;
}

void moe_ctx_truncate(moe_ctx *c, int32_t pos)
{
    if (pos < 0)
        pos = 0;
    if (pos < c->pos)
        c->pos = pos;
}

const moe_model *moe_ctx_model(const moe_ctx *c)
{
    return c->model;
}

/* ---- traces ------------------------------------------------------------ */

moe_trace_dims moe_ctx_trace_dims(const moe_ctx *c)
{
    const model_hparams *hp = &c->model->hp;
    moe_trace_dims d = {hp->n_layer, hp->n_expert, c->n_sel, 0};
    if (c->trace)
        d.lens_k = trace_dims(c->trace)->lens_k;
    return d;
}

moe_status moe_ctx_set_trace(moe_ctx *c, const moe_trace_params *p)
{
    moe_trace_dims d;
    trace_store *ts;
    if (!p || !p->on) {
        trace_free(c->trace);
        c->trace = NULL;
        return MOE_OK;
    }
    if (p->lens_k < 0 || p->lens_k > 1024 || p->max_tokens < 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "bad trace parameters (lens_k %d, max_tokens %d)",
                        p->lens_k, p->max_tokens);
    d = moe_ctx_trace_dims(c);
    d.lens_k = p->lens_k;
    ts = trace_new(&d, p, c->n_batch);
    if (!ts)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for a trace");
    trace_free(c->trace);
    c->trace = ts;
    return MOE_OK;
}

moe_trace_params moe_ctx_get_trace(const moe_ctx *c)
{
    moe_trace_params p = {0};
    if (c->trace)
        p = *trace_params(c->trace);
    return p;
}

int32_t moe_ctx_trace_count(const moe_ctx *c)
{
    return trace_count(c->trace);
}

const moe_trace_token *moe_ctx_trace_get(const moe_ctx *c, int32_t i)
{
    return c->trace ? trace_get(c->trace, i) : NULL;
}

void moe_ctx_trace_clear(moe_ctx *c)
{
    trace_clear(c->trace);
}
