/*
 * moe.h - the public API of libmoe, the moe-studio engine.
 *
 * Everything the studio, the Lua host and the headless commands use from the
 * engine goes through this header. The engine never prints and never exits:
 * functions return a moe_status, and moe_last_error() gives a one-line detail
 * of the most recent failure on the calling thread.
 *
 * Ownership: every object returned through an out-pointer belongs to the
 * caller and is released by its *_free function; *_free(NULL) is a no-op.
 * Pointers returned by getters live as long as the object they came from.
 */
#ifndef MOE_H
#define MOE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status and errors ------------------------------------------------ */

typedef enum {
    MOE_OK = 0,
    MOE_ERR_IO,          /* open/read/write/mmap failed */
    MOE_ERR_FORMAT,      /* malformed file contents */
    MOE_ERR_UNSUPPORTED, /* valid but not handled (version, arch, type) */
    MOE_ERR_NOMEM,       /* allocation failed or size overflow */
    MOE_ERR_INVALID_ARG, /* caller passed something out of range */
    MOE_ERR_CANCELLED,   /* a progress callback asked to stop */
    MOE_ERR_FULL,        /* context (KV cache) full */
    MOE_STATUS_COUNT
} moe_status;

/* Static string naming the status code. */
const char *moe_strerror(moe_status st);
/* Detail of the last failure on this thread ("" if none). Valid until the
 * next failing engine call on the same thread. */
const char *moe_last_error(void);

typedef enum {
    MOE_LOG_DEBUG,
    MOE_LOG_INFO,
    MOE_LOG_WARN,
    MOE_LOG_ERROR,
    MOE_LOG_COUNT
} moe_log_level;

typedef void (*moe_log_fn)(moe_log_level level, const char *msg, void *ud);
/* Install the log callback (NULL = drop log messages). Not thread-safe with
 * respect to concurrent logging; set it once at start. */
void moe_log_set(moe_log_fn fn, void *ud);

/* A long operation calls this with done/total; returning false cancels it. */
typedef bool (*moe_progress_fn)(double done, double total, void *ud);

/* ---- models ------------------------------------------------------------ */

typedef struct moe_model moe_model;

typedef struct {
    int n_threads;       /* worker threads for matrix work (>= 1) */
} moe_model_params;

moe_model_params moe_model_default_params(void);

/* Load a GGUF model. The file is mapped read-only; weights are views. */
moe_status moe_model_load(const char *path, const moe_model_params *params,
                          moe_model **out);
void moe_model_free(moe_model *model);

typedef struct {
    const char *name;     /* general.name or the file's base name */
    const char *arch;     /* general.architecture */
    const char *path;
    const char *ftype;    /* dominant weight type, e.g. "q8_0" */
    int n_vocab;
    int n_ctx_train;
    int n_embd;
    int n_layer;
    int n_head;
    int n_head_kv;
    int n_embd_head;
    int n_ff;
    int n_expert;         /* 0 for a dense model */
    int n_expert_used;
    int n_ff_exp;
    bool has_shared_expert;
    int64_t n_params;
    int64_t weight_bytes; /* bytes of all tensors */
    int64_t file_size;
} moe_model_info;

void moe_model_get_info(const moe_model *model, moe_model_info *info);

/* Bytes of weights one generated token reads: everything but the embedding
 * table (one row of it) and, for MoE layers, only n_expert_used of the
 * n_expert experts. For bandwidth figures. */
int64_t moe_model_active_bytes_per_token(const moe_model *model);

/* Architectures the engine runs, as a NULL-terminated list. */
const char *const *moe_supported_archs(void);

/* ---- tokens ------------------------------------------------------------ */

/* Tokenize len bytes of text. add_bos: prepend BOS when the model's vocabulary
 * says so (add_bos_token); parse_special: recognise special-token texts such
 * as "<s>". Writes at most n_max ids; returns the number of tokens, or the
 * negated required count when n_max is too small, or INT32_MIN on error. */
int32_t moe_tokenize(const moe_model *model, const char *text, size_t len,
                     int32_t *out, int32_t n_max, bool add_bos,
                     bool parse_special);

/* Raw bytes a token stands for when detokenized (special tokens give their
 * text, byte tokens give their byte). Not NUL-terminated; *len is set. */
const char *moe_token_piece(const moe_model *model, int32_t id, size_t *len);
int32_t moe_token_bos(const moe_model *model);
int32_t moe_token_eos(const moe_model *model);
bool moe_token_is_eog(const moe_model *model, int32_t id);
bool moe_model_add_bos(const moe_model *model);

/* ---- contexts ---------------------------------------------------------- */

typedef struct moe_ctx moe_ctx;

typedef struct {
    int n_ctx;      /* KV cache length in tokens (0 = model's, capped 4096) */
    int n_threads;  /* 0 = model's */
    int n_batch;    /* max tokens per forward batch (0 = 512) */
} moe_ctx_params;

moe_ctx_params moe_ctx_default_params(void);
moe_status moe_ctx_new(moe_model *model, const moe_ctx_params *params,
                       moe_ctx **out);
void moe_ctx_free(moe_ctx *ctx);

/* Run n tokens at the current position, appending to the KV cache.
 * all_logits: keep logits for every token of this call; otherwise only the
 * last token's. Long inputs are split into n_batch chunks internally. */
moe_status moe_ctx_decode(moe_ctx *ctx, const int32_t *tokens, int32_t n,
                          bool all_logits);
/* Logits (n_vocab floats) of token i of the last decode call; i = -1 means
 * the last token. NULL if not kept. Valid until the next decode. */
const float *moe_ctx_logits(const moe_ctx *ctx, int32_t i);
int32_t moe_ctx_pos(const moe_ctx *ctx);
int32_t moe_ctx_n_ctx(const moe_ctx *ctx);
/* Forget the KV cache from position pos on (0 = all). */
void moe_ctx_truncate(moe_ctx *ctx, int32_t pos);
const moe_model *moe_ctx_model(const moe_ctx *ctx);

/* ---- traces ------------------------------------------------------------
 * A trace is the unit of observation: with tracing on, every token a
 * context evaluates gets one entry recording, per layer, what the router did
 * and (with a logit lens) what the model would predict there, plus the exit
 * decision. Views, scripts and session files all read these entries. */

typedef struct {
    bool on;            /* record entries */
    int32_t lens_k;     /* logit-lens top-k kept per layer (0 = no lens) */
    int32_t max_tokens; /* keep at most this many entries, oldest dropped (0 = all) */
} moe_trace_params;

typedef struct {
    int32_t n_layer;
    int32_t n_expert;   /* 0 for a dense model */
    int32_t n_sel;      /* expert slots per layer (n_expert_used + 1) */
    int32_t lens_k;
} moe_trace_dims;

/* One token. Arrays are row-major by layer: layer il's router
 * probabilities are router_probs[il * n_expert ...]. Rows of dense layers
 * are zero with layer_moe[il] false. Unused selection slots hold -1. */
typedef struct {
    int32_t pos;
    int32_t token;
    bool prefill;                /* evaluated as part of a multi-token batch */
    int32_t exit_layer;          /* last layer computed (n_layer - 1: all) */
    float time_ms;               /* this token's share of its batch's time */
    const bool *layer_moe;       /* [n_layer] */
    const float *router_logits;  /* [n_layer][n_expert] before steering */
    const float *router_probs;   /* [n_layer][n_expert] after steering */
    const int32_t *sel;          /* [n_layer][n_sel] chosen experts, best first */
    const float *sel_w;          /* [n_layer][n_sel] their final weights */
    const float *shexp_gate;     /* [n_layer] shared-expert gate, NAN if none */
    const float *hnorm;          /* [n_layer] L2 norm of the residual after the layer */
    const int32_t *lens_id;      /* [n_layer][lens_k] logit-lens top tokens */
    const float *lens_p;         /* [n_layer][lens_k] their probabilities */
    const float *lens_entropy;   /* [n_layer] entropy of the lens distribution (nats) */
    const int32_t *lens_rank;    /* [n_layer] rank there of the final layer's argmax */
} moe_trace_token;

moe_status moe_ctx_set_trace(moe_ctx *ctx, const moe_trace_params *params);
moe_trace_params moe_ctx_get_trace(const moe_ctx *ctx);
moe_trace_dims moe_ctx_trace_dims(const moe_ctx *ctx);
int32_t moe_ctx_trace_count(const moe_ctx *ctx);
/* Entry i, 0 = oldest kept. The pointer and its arrays stay valid until the
 * next decode, trace change or clear on this context. */
const moe_trace_token *moe_ctx_trace_get(const moe_ctx *ctx, int32_t i);
void moe_ctx_trace_clear(moe_ctx *ctx);

/* ---- sampling ---------------------------------------------------------- */

typedef enum {
    MOE_STAGE_PENALTIES,
    MOE_STAGE_TOP_K,
    MOE_STAGE_TYPICAL_P,
    MOE_STAGE_TOP_P,
    MOE_STAGE_MIN_P,
    MOE_STAGE_TEMP,
    MOE_STAGE_COUNT
} moe_sampler_stage;

typedef struct {
    float temp;             /* <= 0: greedy (argmax after penalties) */
    int32_t top_k;          /* <= 0: off */
    float top_p;            /* >= 1: off */
    float min_p;            /* <= 0: off */
    float typical_p;        /* >= 1: off */
    float repeat_penalty;   /* 1: off */
    float freq_penalty;     /* 0: off */
    float presence_penalty; /* 0: off */
    int32_t penalty_last_n; /* tokens of history the penalties look at */
    uint64_t seed;
    int32_t n_order;        /* stages in order[]; the chain runs them in turn */
    moe_sampler_stage order[MOE_STAGE_COUNT];
} moe_sampler_params;

typedef struct moe_sampler moe_sampler;

moe_sampler_params moe_sampler_default_params(void);
/* Parse a stage order such as "penalties,top_k,typical_p,top_p,min_p,temp". */
moe_status moe_sampler_parse_order(const char *spec, moe_sampler_params *p);
const char *moe_sampler_stage_name(moe_sampler_stage s);
moe_status moe_sampler_new(const moe_sampler_params *params, int32_t n_vocab,
                           moe_sampler **out);
void moe_sampler_free(moe_sampler *s);
/* Pick a token from logits (n_vocab floats, not modified). */
int32_t moe_sampler_sample(moe_sampler *s, const float *logits);
/* Record a token in the penalty history (prompt and sampled tokens). */
void moe_sampler_accept(moe_sampler *s, int32_t id);
void moe_sampler_reset(moe_sampler *s);

typedef struct {
    int32_t id;
    float logit;
    float p;
} moe_candidate;

/* After moe_sampler_sample: the candidates left after each stage that ran,
 * best first (at most n_max per stage). Returns the count for stage s or 0. */
int32_t moe_sampler_stage_candidates(const moe_sampler *s, moe_sampler_stage st,
                                     moe_candidate *out, int32_t n_max);

#ifdef __cplusplus
}
#endif
#endif /* MOE_H */
