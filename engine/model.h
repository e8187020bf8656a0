/*
 * model.h - internal structures of a loaded model and a context: the
 * blueprint (hyperparameters), the weights (views into the mmap) and the run
 * state (KV cache, scratch buffers). Shared by model.c (loading) and
 * forward.c (compute). Internal to engine/.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "gguf.h"
#include "moe.h"
#include "quant.h"
#include "threads.h"
#include "tokenizer.h"

typedef enum {
    ARCH_LLAMA,
    ARCH_QWEN2,
    ARCH_QWEN2MOE,
    ARCH_QWEN3,
    ARCH_QWEN3MOE,
    ARCH_OLMOE,
    ARCH_GRANITE,
    ARCH_GRANITEMOE,
    ARCH_COUNT
} model_arch;

typedef enum {
    ROPE_NORM, /* rotate pairs (2i, 2i+1) */
    ROPE_NEOX, /* rotate pairs (i, i + n_rot/2) */
    ROPE_COUNT
} rope_kind;

typedef enum {
    GATE_SOFTMAX,
    GATE_SIGMOID,
    GATE_COUNT
} gate_kind;

/* A weight: a view into the mapped file. ne[0] is the row length. */
typedef struct {
    moe_type type;
    int n_dims;
    int64_t ne[4];
    size_t row_bytes;      /* bytes of one row of ne[0] elements */
    const void *data;      /* NULL when the tensor is absent */
} mtensor;

/* Blueprint */
typedef struct {
    model_arch arch;
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t n_embd_head;   /* head dimension of q/k/v */
    int32_t n_rot;         /* rotated dimensions of each head */
    int32_t n_ff;          /* dense FFN width */
    int32_t n_expert;      /* 0 = dense */
    int32_t n_expert_used;
    int32_t n_ff_exp;      /* expert FFN width */
    int32_t n_ff_shexp;    /* shared expert FFN width (qwen2moe) */
    float norm_eps;
    float rope_freq_base;
    rope_kind rope;
    gate_kind gate;
    bool norm_topk;        /* renormalise the selected weights to sum 1 */
    bool unweighted;       /* EMoE: sum the selected experts with weight 1 */
    float expert_weights_scale; /* 1 unless the file says otherwise */
    float embd_scale;      /* granite: multiplies embeddings */
    float residual_scale;  /* granite: multiplies each block's output */
    float attn_scale;      /* kq scale; 0 = 1/sqrt(n_embd_head) */
    float logit_scale;     /* granite: logits are divided by it; 1 = off */
    bool qk_norm_full;     /* olmoe: RMS norm over all of q / k */
    bool qk_norm_head;     /* qwen3: RMS norm per head */
} model_hparams;

typedef struct {
    mtensor attn_norm;      /* [n_embd] */
    mtensor wq, wk, wv;     /* [n_embd] -> [n_head*hd], [n_head_kv*hd] */
    mtensor bq, bk, bv;     /* biases (qwen2 family), optional */
    mtensor q_norm, k_norm; /* olmoe: [n_embd]/[n_embd_kv]; qwen3: [hd] */
    mtensor wo;             /* [n_head*hd] -> [n_embd] */
    mtensor ffn_norm;       /* [n_embd] */
    /* dense FFN */
    mtensor ffn_gate, ffn_up; /* [n_embd] -> [n_ff] */
    mtensor ffn_down;         /* [n_ff] -> [n_embd] */
    /* experts */
    mtensor gate_inp;         /* [n_embd] -> [n_expert], router */
    mtensor gate_exps, up_exps; /* [n_embd, n_ff_exp, n_expert] */
    mtensor down_exps;          /* [n_ff_exp, n_embd, n_expert] */
    /* shared expert (qwen2moe) */
    mtensor gate_inp_shexp;   /* [n_embd] -> 1 */
    mtensor gate_shexp, up_shexp, down_shexp;
} model_layer;

struct moe_model {
    char *path;
    char *name;
    char *arch_name;
    gguf_ctx *gguf;
    bool copied;          /* file read into huge-page memory (MOE_LOAD_COPY) */
    tok_vocab *vocab;
    model_hparams hp;
    mtensor tok_embd;   /* [n_embd, n_vocab] */
    mtensor output_norm;
    mtensor output;     /* [n_embd, n_vocab]; = tok_embd when tied */
    model_layer *layers;
    int n_threads;
    int64_t n_params;
    int64_t weight_bytes;
    int64_t expert_bytes; /* bytes of all routed-expert tensors */
    moe_type ftype;
};

/* The router of one MoE layer for one token: logits -> probabilities ->
 * top-k -> weights. Every MoE layer goes through this one function, so the
 * router lab can observe and steer it. probs holds n_expert values on
 * return; sel/weight hold n_expert_used entries, best first. */
void model_route(const model_hparams *hp, const float *logits, float *probs,
                 int32_t *sel, float *weight);

/* Run state */
/* query rows per attention chunk: one vector lane each (forward.c) */
#define MOE_ATT_LANES 8
/* floats of one thread's chains in the single-token weighted sum: 64
 * chains of every lane for each of the head's whole 8-float slices */
#define MOE_ATT_VACC(hd) ((size_t)MOE_ATT_LANES * 64 * (size_t)((hd) & ~7))

struct moe_ctx {
    moe_model *model;
    tp_pool *pool;
    int32_t n_ctx;
    int32_t n_batch;
    moe_order order;      /* summation order asked for (moe_ctx_params) */
    bool token_order;     /* this pass sums float products in the vector-dot
                           * order: set by forward_embed (forward_token_order) */
    int32_t pos;          /* tokens in the KV cache */
    int32_t *tok_hist;    /* [n_ctx] the token at each cached position */
    float *k_cache;       /* per layer and kv head, blocks of 8 positions
                             [n_embd_head][8]: kv_at(), KV_K() */
    float *v_cache;       /* [n_layer][n_head_kv][n_ctx8][n_embd_head]: kv_at() */
    /* scratch for a batch of up to n_batch tokens */
    float *x;             /* [n_batch][n_embd] residual stream */
    float *xn;            /* [n_batch][n_embd] normed */
    float *q;             /* [n_batch][n_head*hd] */
    float *k;             /* [n_batch][n_embd_kv] */
    float *v;             /* [n_batch][n_embd_kv] */
    float *att;           /* [n_batch][n_head*hd] attention output */
    float *att_scores;    /* [n_threads][MOE_ATT_LANES][n_ctx] attention scratch */
    float *att_vacc;      /* [n_threads][MOE_ATT_VACC(n_embd_head)], 32-byte aligned */
    float *ffn_out;       /* [n_batch][n_embd] */
    float *hb;            /* [n_batch][max(n_ff, n_sel*n_ff_exp, n_ff_shexp)] */
    float *hb2;           /* same */
    float *rope_cs;       /* [n_batch][cos x n_rot/2, sin x n_rot/2] of positions rope_p0.. */
    int32_t rope_p0;      /* first position in rope_cs (-1: none yet) */
    int32_t rope_n;       /* positions in rope_cs */
    struct trace_store *trace; /* NULL when tracing is off */
    struct route_lab *route;   /* router lab state (router.c); NULL = none */
    float *router_logits; /* [n_batch][n_expert] */
    float *router_probs;  /* [n_batch][n_expert] */
    int32_t n_sel;        /* selection slots per token: max(n_expert_used, max_top_k) + 1 */
    int32_t *sel;         /* [n_batch][n_sel] chosen experts, -1 = empty */
    float *sel_w;         /* [n_batch][n_sel] their weights */
    int32_t *n_sel_tok;   /* [n_batch] entries used in each row */
    float *shexp_gate;    /* [n_batch] */
    float *x_gather;      /* [n_batch*n_sel][n_embd] rows grouped by expert */
    float *y_gather;      /* [n_batch*n_sel][n_embd] expert outputs */
    void *act_q;          /* activations converted for the dot kernels */
    size_t act_q_bytes;
    float *logits;        /* [n_logits][n_vocab] */
    int32_t n_logits_cap;
    int32_t n_logits;     /* rows valid in logits */
    bool logits_all;
    int32_t *slot_of;     /* [n_batch*n_sel] slot of (token, choice) */
    int32_t *exp_start;   /* [n_expert] first slot of each expert */
    int32_t *exp_count;   /* [n_expert] slots of each expert */
    struct exit_state *exit; /* early exit / lens / speculation (exit.c), lazy */
};

/* Positions in the KV cache, rounded up to whole 8-position key blocks. */
static inline size_t kv_ctx8(const moe_ctx *c)
{
    return ((size_t)c->n_ctx + 7) & ~(size_t)7;
}
/* Where layer il's values (v_cache) of kv head g at position p start: each
 * head's positions lie contiguous, so attention streams them. Its keys
 * (k_cache) start at kv_at(c, il, g, 0) too, then key d of position p is at
 * KV_K(p, d, hd) from there: blocks of 8 positions, each dim's 8 keys side
 * by side, so a vector holds one dim of 8 positions. */
static inline size_t kv_at(const moe_ctx *c, int32_t il, int32_t g, int32_t p)
{
    const model_hparams *hp = &c->model->hp;
    return (((size_t)il * (size_t)hp->n_head_kv + (size_t)g) * kv_ctx8(c) + (size_t)p) *
           (size_t)hp->n_embd_head;
}
#define KV_K(p, d, hd) \
    (((size_t)(p) & ~(size_t)7) * (size_t)(hd) + (size_t)(d) * 8 + ((size_t)(p) & 7))
/* Copy the keys and values of n positions from p on, as token rows of
 * n_embd_kv floats (kv head after kv head), into layer il's cache
 * (kv_put) or out of it (kv_get). */
void kv_put(moe_ctx *c, int32_t il, int32_t p, int32_t n, const float *k, const float *v);
void kv_get(const moe_ctx *c, int32_t il, int32_t p, int32_t n, float *k, float *v);

/* forward.c: run n tokens (n <= n_batch) at ctx->pos; writes logits for all
 * tokens (all = true) or only the last one; advances ctx->pos. */
moe_status forward_batch(moe_ctx *ctx, const int32_t *tokens, int32_t n, bool all);
/* The pieces forward_batch is made of, for passes that stop early or start
 * late (early exit, self-speculation). They act on ctx->x ([n][n_embd]) at
 * positions ctx->pos .. ctx->pos + n - 1 and do not advance ctx->pos. */
void forward_embed(moe_ctx *ctx, const int32_t *tokens, int32_t n);
/* Whether a pass over n tokens sums float products in the vector-dot order
 * (moe_order): forward_embed sets ctx->token_order from it; self-speculation,
 * whose batch stands in for single-token decodes, asks for n = 1. */
bool forward_token_order(const moe_ctx *ctx, int32_t n);
void forward_layer(moe_ctx *ctx, int32_t il, int32_t n);
/* Only the keys and values of layer il for the n rows of ctx->x (a token
 * that exited before il copies its hidden state upward this way). */
void forward_kv_only(moe_ctx *ctx, int32_t il, int32_t n);
/* Final norm + LM head of n_out rows of x ([n_out][n_embd]) into logits
 * ([n_out][n_vocab]). Uses ctx->xn as scratch: x must not alias it. */
void forward_head(moe_ctx *ctx, const float *x, int32_t n_out, float *logits);
/* The attention's softmax on n > 0 scores in place, in its FMA form when
 * fast is true and the CPU has it, else the plain one (tests compare the
 * two). */
void forward_att_softmax(float *w, int32_t n, bool fast);
/* RoPE angles of position pos: cos and sin of pos * theta_scale^i for the
 * n_rot / 2 rotated pairs, theta_scale = base^(-2 / n_rot) and its powers
 * built by repeated multiplication (the inference and training passes both
 * take them from here, so they rotate alike). */
void forward_rope_angles(int32_t pos, int32_t n_rot, float base, float *cs, float *sn);

#endif
