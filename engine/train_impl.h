/*
 * train_impl.h - internal structures of the trainer shared by train.c
 * (parameters, optimizer, files, bricks) and train_fwd.c (the forward and
 * backward passes). Internal to engine/.
 */
#ifndef MOE_TRAIN_IMPL_H
#define MOE_TRAIN_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "moe.h"
#include "tokenizer.h"

/* One named tensor: a slice of the flat parameter array. ne[0] is the row
 * length (GGUF order): a matrix W [ne1][ne0] maps n_in = ne0 to ne1. */
typedef struct {
    char name[64];
    int n_dims;
    int64_t ne[3];
    size_t off;   /* first float in params / grads / m / v */
    size_t n;     /* floats */
} train_tensor;

/* Offsets (into the tensor table) of one layer's weights; -1 = absent. */
typedef struct {
    bool moe;
    int attn_norm, wq, wk, wv, wo, ffn_norm;
    int ffn_gate, ffn_up, ffn_down;           /* dense: [n_ff][n_embd] ... */
    int gate_inp, gate_exps, up_exps, down_exps;
} train_layer;

/* Saved activations of one layer for the backward pass (N = rows). */
typedef struct {
    float *x;      /* [N][n_embd] residual input of the layer */
    float *rms1;   /* [N] 1 / rms of x */
    float *xn1;    /* [N][n_embd] */
    float *q;      /* [N][n_head*hd] after RoPE */
    float *k, *v;  /* [N][n_head_kv*hd] (k after RoPE) */
    float *p;      /* [n_seq][n_head][T][T] attention probabilities */
    float *att;    /* [N][n_head*hd] */
    float *xm;     /* [N][n_embd] residual after attention */
    float *rms2;   /* [N] */
    float *xn2;    /* [N][n_embd] FFN input */
    /* dense FFN */
    float *hg, *hu; /* [N][n_ff] pre-activations */
    /* MoE */
    float *rlog;   /* [N][n_expert] router logits */
    float *prob;   /* [N][n_expert] */
    int32_t *sel;  /* [N][k] */
    float *w;      /* [N][k] final weights */
    int32_t *slot; /* [N][k] slot of each choice */
    float *xg;     /* [S][n_embd] gathered inputs, S = N*k slots */
    float *g, *u;  /* [S][n_ff_exp] */
    float *y;      /* [S][n_embd] expert outputs */
    float *f;      /* [N][n_embd] FFN output */
} train_acts;

struct moe_trainer {
    moe_train_config cfg;           /* cfg.name unused: see name */
    char *name;                     /* general.name to write, NULL = keep / default */
    moe_train_params par;
    int32_t n_vocab, n_embd_head;
    /* parameters */
    train_tensor *tens;
    int n_tens;
    int t_embd, t_out_norm, t_out;  /* t_out = -1 when tied */
    train_layer *layers;
    size_t n_params;
    float *params, *grads, *m, *v;
    uint8_t *mask;                  /* [n_params] 1 = trainable */
    int64_t step, tokens;
    /* vocabulary and metadata source */
    struct moe_model *src_model;    /* the checkpoint continued from (owns src, vocab) */
    gguf_ctx *src;                  /* model or vocab file the keys come from */
    bool src_is_model;              /* copy every key (not only tokenizer.*) */
    tok_vocab *vocab;
    /* routing counts of eval passes: [n_layer][n_expert] */
    int64_t *route_count;
    /* activations, sized for cap_rows rows of cap_t tokens */
    int32_t cap_seq, cap_t;
    train_acts *acts;               /* [n_layer] */
    float *xf, *rmsf, *xnf;         /* final norm: [N], [N][n_embd] */
    float *logits;                  /* [N][n_vocab] (then their gradient) */
    float *dx, *dx2, *dtmp;         /* [N][n_embd] */
    float *dq, *dk, *dv, *datt;     /* [N][...] */
    float *dp;                      /* [T][T] */
    float *dh1, *dh2;               /* [max(N*n_ff, S*n_ff_exp)] */
    float *dy;                      /* [S][n_embd] */
    float *dlog;                    /* [N][n_expert] */
    float *rope_cos, *rope_sin;     /* [cap_t][n_rot/2] */
    /* aux loss results of the last pass (sums over MoE layers) */
    double aux_bal, aux_z, aux_mi;
    int n_moe_layers;
};

/* train_fwd.c */
/* Make sure activation buffers hold n_seq sequences of T tokens. */
moe_status train_reserve(moe_trainer *t, int32_t n_seq, int32_t T);
/* Forward over tokens ([n_seq][stride], inputs tokens[s*stride + i], i < T)
 * leaving logits in t->logits; returns the mean cross-entropy against
 * targets tokens[s*stride + i + 1] when targets, else 0. With grad, the
 * backward pass adds d(total objective)/d(params) into t->grads. */
double train_pass(moe_trainer *t, const int32_t *tokens, int32_t n_seq, int32_t T,
                  int32_t stride, bool targets, bool grad, bool count_routes);
/* Expert e of layer il on n rows of x ([n][n_embd]) into y; with dy the
 * backward of that too (adds into grads). Uses the dh/dy buffers: the
 * caller reserves n rows. */
void train_expert_fwd_bwd(moe_trainer *t, int32_t il, int32_t e, const float *x, int32_t n,
                          float *g, float *u, float *y, const float *dy);
/* Free the activation buffers (train_reserve makes them again). */
void train_free_bufs(moe_trainer *t);
/* Threads for BLAS. */
void train_set_threads(int n);

#endif
