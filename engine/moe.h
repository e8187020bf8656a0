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

/* How a model's file gets into memory. */
typedef enum {
    MOE_LOAD_AUTO = 0, /* COPY for files of MOE_LOAD_COPY_MIN bytes or more
                          when the kernel offers transparent huge pages,
                          else MMAP */
    MOE_LOAD_MMAP,     /* mapped read-only from the page cache: instant,
                          shared between processes */
    MOE_LOAD_COPY,     /* read into private memory backed by transparent huge
                          pages: the whole file read up front, then weights
                          stream with far fewer TLB misses */
} moe_load_mode;

#define MOE_LOAD_COPY_MIN ((int64_t)64 << 20)

typedef struct {
    int n_threads;       /* worker threads for matrix work (>= 1) */
    moe_load_mode load;  /* default MOE_LOAD_AUTO */
} moe_model_params;

moe_model_params moe_model_default_params(void);

/* Load a GGUF model, as params->load says (mapped or copied, read-only
 * either way); weights are views into it. */
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
    bool copied;          /* read into huge-page memory, not mapped (moe_load_mode) */
} moe_model_info;

void moe_model_get_info(const moe_model *model, moe_model_info *info);

/* Bytes of weights one generated token reads: everything but the embedding
 * table (one row of it) and, for MoE layers, only n_expert_used of the
 * n_expert experts. For bandwidth figures. */
int64_t moe_model_active_bytes_per_token(const moe_model *model);
/* The contiguous byte range of the mapping that holds every tensor (start
 * returned, length in *size; NULL and 0 when there are none). For measuring
 * the read bandwidth of the very pages decode streams. */
const void *moe_model_weight_span(const moe_model *model, size_t *size);

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

/* Summation order of the products with float weights (f32, f16, bf16;
 * quantized weights sum alike either way). The reference runtime sums a
 * forward batch of two or more tokens in its tiled kernel's order and a
 * batch of one token in its vector dot's order, so there a token's logits
 * can differ in the last bits with how it was batched. */
typedef enum {
    MOE_ORDER_REFERENCE = 0, /* as the reference (the default) */
    MOE_ORDER_BATCH,         /* always the tiled order */
    MOE_ORDER_TOKEN,         /* always the vector-dot order */
} moe_order;

typedef struct {
    int n_ctx;      /* KV cache length in tokens (0 = model's, capped 4096) */
    int n_threads;  /* 0 = model's */
    int n_batch;    /* max tokens per forward batch (0 = 512) */
    int max_top_k;  /* most experts per token router steering may ask for
                     * (0 = the model's n_expert_used); sizes the expert
                     * slots of the context and its traces */
    moe_order order; /* BATCH and TOKEN make every token's logits independent
                      * of batching (TOKEN's equal REFERENCE's decode) */
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
    int32_t n_sel;      /* expert slots per layer: max(n_expert_used, max_top_k) + 1 */
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
    int32_t exit_kind;           /* moe_exit_kind in force (MOE_EXIT_NONE = 0) */
    float exit_value;            /* what the criterion measured where it fired:
                                  * entropy, max prob, unchanged layers, HashEE
                                  * bucket, window maximum or depth; NAN if the
                                  * token ran all layers */
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

/* ---- router lab: steering, capacity, counterfactuals ------------------
 * Steering changes what the router of MoE layers decides, from the next
 * decoded token on; it can change between any two decodes. layer = -1 means
 * every layer; expert ids are per layer. The setters fail with
 * MOE_ERR_INVALID_ARG on a dense model or an id out of range. With nothing
 * set, routing is the model's own, bit for bit.
 *
 * One token of a steered layer is routed as follows:
 *  1. probabilities from the router logits divided by the layer's
 *     temperature T (softmax(l / T), or sigmoid(l / T) for sigmoid gates);
 *     traces record the raw logits and these probabilities;
 *  2. selection: every forced expert, then the most probable free experts
 *     until k are chosen (k = the layer's top-k, raised to the number of
 *     forced experts; fewer when bans leave fewer than k); banned experts
 *     never; ties go to the lower id; the list is ordered best first;
 *  3. weights: the selected probabilities (a forced expert keeps its own),
 *     renormalised to sum 1 over the selection when the model does so
 *     ({arch}.expert_weights_norm, default per architecture: Mixtral and
 *     Granite yes, OLMoE and Qwen2-MoE no; bans then renormalise over what
 *     is left),
 *     1 each for unweighted (EMoE) gating, times the file's expert weight
 *     scale, then times each expert's steering scale.
 * A layer whose experts are all banned has an MoE output of zero (a shared
 * expert still runs). */

/* Turn all steering and capacity simulation off (counters are kept). */
void moe_route_reset(moe_ctx *ctx);
/* Use k experts per token (0 = the model's n_expert_used). k may exceed
 * n_expert_used only up to the context's max_top_k (moe_ctx_params). */
moe_status moe_route_set_top_k(moe_ctx *ctx, int32_t layer, int32_t k);
/* Top-k in effect at a layer (0 for a dense model or a bad layer). */
int32_t moe_route_get_top_k(const moe_ctx *ctx, int32_t layer);
/* Divide router logits by t before the probabilities (1 = off; t > 0). */
moe_status moe_route_set_temperature(moe_ctx *ctx, int32_t layer, float t);
/* on: ban (force) the expert, replacing a force (ban) of it; off: lift a
 * ban (force) of it. At most max(n_expert_used, max_top_k) forced experts
 * per layer. */
moe_status moe_route_ban(moe_ctx *ctx, int32_t layer, int32_t expert, bool on);
moe_status moe_route_force(moe_ctx *ctx, int32_t layer, int32_t expert, bool on);
/* Multiply an expert's final weight, i.e. its contribution, by scale
 * (1 = off; 0 keeps it selected but silent; finite). */
moe_status moe_route_set_scale(moe_ctx *ctx, int32_t layer, int32_t expert, float scale);

/* Simulated expert capacity (DESIGN.md, Rectify-Router), applied to each
 * forward batch (the tokens of one internal batch of moe_ctx_decode, at
 * most n_batch) of every MoE layer after steering:
 *  - capacity C = ceil(capacity_factor * k * n_tokens / n_expert), k the
 *    layer's top-k;
 *  - tokens claim their experts in order (by position, or batch-prioritised:
 *    by the token's top selected probability, highest first, ties by
 *    position); an assignment beyond C is dropped; each expert then has
 *    C - accepted padding slots;
 *  - NONE: a dropped assignment is removed; the token keeps its other
 *    experts with their weights unchanged (residual only for that share);
 *  - FR: each token's (k+1)-th choice (best free expert it did not select)
 *    is a candidate; an expert's padding slots go to its candidates with
 *    the highest probability for it;
 *  - IR: experts sit on D devices (expert e on device e*D/n_expert), tokens
 *    too (token t of the batch on device t*D/n_tokens); a token's dropped
 *    assignments go to h, its most probable expert on its own device that
 *    is not banned and not one it was dropped from (no capacity check; none
 *    found: plain drop);
 *  - a token that gained experts (IR, FR) is weighted by the architecture's
 *    rule over its reached multiset, h counted once per drop: with
 *    renormalisation o = (sum_R p_j E_j + r p_h E_h + p_f E_f) /
 *    (sum_R p_j + r p_h + p_f), which for IR is DESIGN.md's formula.
 * A single-token batch never drops (C >= 1), but FR still fills. */
typedef enum {
    MOE_DROP_POSITION, /* earlier tokens of a batch claim capacity first */
    MOE_DROP_SCORE,    /* batch-prioritised: highest top score first */
    MOE_DROP_COUNT
} moe_drop_policy;

typedef enum {
    MOE_RECTIFY_NONE = 0, /* dropped: residual only */
    MOE_RECTIFY_IR = 1,   /* intra-device rectification */
    MOE_RECTIFY_FR = 2,   /* fill-in rectification */
    MOE_RECTIFY_BOTH = 3,
    MOE_RECTIFY_COUNT
} moe_rectify;

typedef struct {
    float capacity_factor; /* 0 = no capacity limit */
    moe_drop_policy drop;
    int32_t n_devices;     /* 1..n_expert simulated devices (0 = 1) */
    moe_rectify rectify;
} moe_capacity_params;

moe_status moe_route_set_capacity(moe_ctx *ctx, const moe_capacity_params *p);
moe_status moe_route_get_capacity(const moe_ctx *ctx, moe_capacity_params *out);

/* Accumulated over every MoE layer and batch with capacity on, until
 * moe_route_reset_counters. Per batch and layer, routed - dropped + padded
 * = n_expert * C; filled <= padded; rerouted <= dropped. */
typedef struct {
    int64_t routed;    /* (token, expert) assignments asked for */
    int64_t dropped;   /* over capacity */
    int64_t padded;    /* empty capacity slots after dropping */
    int64_t rerouted;  /* dropped assignments sent elsewhere by IR */
    int64_t filled;    /* padding slots given to (k+1)-th choices by FR */
} moe_route_counters;

void moe_route_get_counters(const moe_ctx *ctx, moe_route_counters *out);
void moe_route_reset_counters(moe_ctx *ctx);

/* Counterfactual: evaluate the token at cached position pos (< moe_ctx_pos)
 * again under the current steering, as if the positions before it were as
 * cached, and write its logits (n_vocab) to out. The KV cache, position,
 * logits, counters and trace of the context are left as they were. With
 * the steering the position was first evaluated under and a one-token
 * batch then, the logits are the same bit for bit. */
moe_status moe_ctx_reeval(moe_ctx *ctx, int32_t pos, float *out);

/* log(sum_i exp(v[i])) of n logits, computed in double around the
 * maximum (-inf when every value is -inf, NaN/+inf passed through). */
double moe_logsumexp(const float *v, int32_t n);

/* Compare two logit vectors: KL(p_a || p_b) of their softmaxes (nats),
 * and how many of a's top-k ids are missing from b's top-k (ties to the
 * lower id; k is clamped to [0, min(n_vocab, 256)]). */
void moe_logits_compare(const float *a, const float *b, int32_t n_vocab,
                        int32_t k, double *kl, int32_t *topk_changed);

/* ---- routing statistics -------------------------------------------------
 * Accumulated from trace entries (moe_ctx_set_trace, then
 * moe_route_stats_add_trace or moe_route_stats_add per entry), per MoE layer
 * and expert, with prefill entries (evaluated in multi-token batches) and
 * decode entries kept apart. Definitions, for one layer and phase, over the
 * N tokens routed there, p_t the router probabilities of token t as traced
 * (after steering), q_t = p_t / sum(p_t), and the selected experts as
 * traced (after capacity):
 *   load_e      tokens that selected e;  A = sum_e load_e (assignments)
 *   load_frac_e load_e / A;  token_frac_e = load_e / N
 *   importance_e sum_t p_t(e);  mean_prob_e = importance_e / N
 *   cv2_load, cv2_importance  population variance / mean^2 over experts
 *   balance_loss  n_expert * sum_e load_frac_e * mean_prob_e  (1 = balanced)
 *   h_cond = H(e|x) = mean_t H(q_t);  h_marg = H(e) = H(mean_t q_t)
 *   mi = h_marg - h_cond (ModuleFormer's mutual information), nats
 *   coact(e1, e2)  tokens that selected both (coact(e, e) = load_e). */

typedef struct moe_route_stats moe_route_stats;

typedef enum {
    MOE_PHASE_PREFILL,
    MOE_PHASE_DECODE,
    MOE_PHASE_ALL,      /* both together (queries only) */
    MOE_PHASE_COUNT
} moe_phase;

typedef struct {
    int64_t n_tokens;       /* N */
    int64_t n_assign;       /* A */
    double cv2_load;
    double cv2_importance;
    double balance_loss;
    double h_cond;
    double h_marg;
    double mi;
} moe_route_layer_stats;

typedef struct {
    int64_t load;
    double load_frac;
    double token_frac;
    double importance;
    double mean_prob;
} moe_route_expert_stats;

/* dims: those of the traces to add (moe_ctx_trace_dims); n_expert > 0. */
moe_status moe_route_stats_new(const moe_trace_dims *dims, moe_route_stats **out);
void moe_route_stats_free(moe_route_stats *s);
void moe_route_stats_clear(moe_route_stats *s);
moe_trace_dims moe_route_stats_dims(const moe_route_stats *s);
/* Add one entry (layers with layer_moe false are skipped). Remembers the
 * token's selections (n_layer * n_sel ints) for top-token queries. */
moe_status moe_route_stats_add(moe_route_stats *s, const moe_trace_token *tok);
/* Add every trace entry a context holds now. */
moe_status moe_route_stats_add_trace(moe_route_stats *s, const moe_ctx *ctx);
/* All-zero results for a layer no token was routed at. */
moe_status moe_route_stats_layer(const moe_route_stats *s, int32_t layer, moe_phase ph,
                                 moe_route_layer_stats *out);
moe_status moe_route_stats_expert(const moe_route_stats *s, int32_t layer, int32_t expert,
                                  moe_phase ph, moe_route_expert_stats *out);
/* Co-activation count; 0 for ids out of range. */
int64_t moe_route_stats_coact(const moe_route_stats *s, int32_t layer, int32_t e1,
                              int32_t e2, moe_phase ph);
/* The (at most n_max) token ids that selected the expert most often, with
 * their counts, most frequent first (ties to the lower id); *n_out = how
 * many were written. */
moe_status moe_route_stats_top_tokens(const moe_route_stats *s, int32_t layer,
                                      int32_t expert, moe_phase ph, int32_t n_max,
                                      int32_t *ids, int64_t *counts, int32_t *n_out);

/* ---- EMoE and bricks ----------------------------------------------------
 * EMoE (DESIGN.md): split the dense FFN of chosen layers of a dense model
 * into N experts without new parameters. The L2-normalised rows of
 * ffn_gate (n_ff keys of n_embd) are clustered by balanced spherical
 * k-means (cosine similarity; every cluster gets floor(n_ff/N) or that + 1
 * rows), gate/up rows and down columns are permuted so each expert is one
 * contiguous block of n_ff_exp = ceil(n_ff/N) rows, smaller experts padded
 * with zero gate/up rows and zero down columns (silu(0) * 0 = 0, so padding
 * adds exactly nothing), and the router row of expert e is the mean of its
 * real (un-normalised) gate rows. The file gets {arch}.expert_count = N,
 * expert_used_count = K, expert_feed_forward_length = n_ff_exp and
 * moestudio.gating = "emoe-unweighted": the engine selects the top-K router
 * logits and sums the selected experts with weight 1, so K = N is the dense
 * model. Unconverted layers keep their dense tensors. Types: gate/up rows
 * are moved as raw bytes (exact for every type), ffn_down is re-quantized
 * to its source type when n_ff_exp is a multiple of the type's block,
 * else written f32; the router is f32. */

typedef struct {
    int32_t n_expert;       /* N, 1..n_ff (default 8) */
    int32_t n_expert_used;  /* K, 1..N (default 2) */
    const bool *layers;     /* [n_layers] convert layer il when true; NULL = all */
    int32_t n_layers;       /* entries of layers: the model's block_count */
    uint64_t seed;          /* k-means++ seeding (layer il uses seed + il) */
    int32_t max_iter;       /* k-means iterations (<= 0: 30) */
    moe_progress_fn progress; /* per layer; may be NULL */
    void *progress_ud;
} moe_emoe_params;

typedef struct {
    int32_t n_converted;    /* layers converted */
    int32_t n_ff, n_ff_exp;
    int32_t n_padding;      /* zero rows per converted layer: N * n_ff_exp - n_ff */
    double mean_cos;        /* mean cosine of a key to its cluster's mean
                             * direction, averaged over converted layers */
    const char *down_type;  /* type written for ffn_down_exps (static string) */
} moe_emoe_report;

moe_emoe_params moe_emoe_default_params(void);
/* Convert the dense GGUF at src into dst (written atomically). rep may be
 * NULL. Fails with MOE_ERR_INVALID_ARG on a model that already has experts
 * or parameters out of range. */
moe_status moe_emoe_convert(const char *src, const char *dst, const moe_emoe_params *p,
                            moe_emoe_report *rep);
/* The clustering step alone: n rows of dim floats (not modified; they are
 * L2-normalised internally) into n_clusters balanced clusters, written to
 * assign[n]; clusters are numbered by their lowest row. mean_cos may be
 * NULL. Deterministic for a seed. */
moe_status moe_emoe_cluster(const float *rows, int64_t n, int64_t dim, int32_t n_clusters,
                            uint64_t seed, int32_t max_iter, int32_t *assign,
                            double *mean_cos);
/* Expert layout of a clustering: perm[c * n_per + j] = the source row in
 * slot j of expert c (rows ascending), -1 for padding slots at the end of
 * a block. perm has n_clusters * n_per entries; fails when a cluster has
 * more than n_per rows. */
moe_status moe_emoe_layout(const int32_t *assign, int64_t n, int32_t n_clusters,
                           int64_t n_per, int32_t *perm);

/* Bricks: named functional units of a loaded model. Per layer, in order:
 * the layer itself (every tensor of blk.L), its attention heads (head h:
 * rows h*hd.. of attn_q (+ bias) and the matching columns of attn_output;
 * the K/V projections are shared by a group of heads and count only in
 * the layer), then the dense FFN, or the routed experts (gate/up/down
 * slices plus the expert's router row; called "emoe" groups in EMoE
 * models) and the shared expert (with its gate). Names: "blk.3",
 * "blk.3.head.2", "blk.3.ffn", "blk.3.expert.5" / "blk.3.emoe.5",
 * "blk.3.shexp". Bytes of a slice of a quantized tensor are its share of
 * the tensor's bytes. Run-time disabling of an expert is the router lab's
 * ban (moe_route_ban). */
typedef enum {
    MOE_BRICK_LAYER,
    MOE_BRICK_HEAD,
    MOE_BRICK_FFN,
    MOE_BRICK_EXPERT,
    MOE_BRICK_SHARED_EXPERT,
    MOE_BRICK_KIND_COUNT
} moe_brick_kind;

typedef struct {
    moe_brick_kind kind;
    int32_t layer;
    int32_t index;          /* head or expert id; -1 otherwise */
    int64_t n_params;
    int64_t bytes;
    char name[40];
} moe_brick;

const char *moe_brick_kind_name(moe_brick_kind k);
int32_t moe_model_n_bricks(const moe_model *model);
moe_status moe_model_brick(const moe_model *model, int32_t i, moe_brick *out);

/* An editable copy of a model file's routed experts. Operations act on
 * one MoE layer's experts (ids are the current ones, renumbered after
 * each operation); unchanged experts keep their exact bytes, new ones are
 * computed in f32 and stored in the source tensor's type.
 *  - merge: experts[0..n) (n >= 2, distinct) become one expert, the
 *    weighted average of their gate, up and down weights (weights > 0,
 *    normalised to sum 1; NULL = equal) and of their router rows (so the
 *    merged logit is the weighted mean of theirs: linear in x, which a
 *    log-sum-exp of the logits would not be). It takes the lowest id of
 *    the group; the others are removed.
 *  - grow: append a clone of an expert, every weight w of each tensor
 *    (gate, up, down, router row) plus noise * rms(tensor) * z, z
 *    standard normal from seed (noise 0: an exact copy of the bytes).
 *  - prune: remove experts (at least one must remain).
 * GGUF stores one expert count, so saving needs every MoE layer to have
 * the same number of experts (apply an operation to every layer, e.g.
 * prune the same number in each); expert_used_count becomes min(K, count).
 * Exactness, where the architecture renormalises the selected weights
 * (Mixtral, Granite): pruning experts a text never selected leaves that
 * text's outputs unchanged; merging an exact duplicate D of expert E gives
 * the duplicated model with D banned (with top-k >= 2 the duplicated model
 * itself differs: D ties with E and takes a second slot; under top-1 it is
 * the same model); a grown model with its clone banned is the original.
 * Softmax gates without renormalisation (OLMoE, Qwen2-MoE) keep removed
 * experts in the denominator, so their selected weights change slightly.
 * Operations are recorded in the key moestudio.bricks.ops. */
typedef struct moe_bricks moe_bricks;

moe_status moe_bricks_open(const char *path, moe_bricks **out);
void moe_bricks_free(moe_bricks *b);
int32_t moe_bricks_n_layer(const moe_bricks *b);
/* Experts now in layer il; 0 for a dense layer or il out of range. */
int32_t moe_bricks_n_expert(const moe_bricks *b, int32_t layer);
/* Source id of expert e of a layer: the expert of the input file whose
 * bytes it keeps (a noise-0 clone, or a merge of copies of one expert,
 * keeps its source's id); -1 for experts computed by merge or grow. */
int32_t moe_bricks_origin(const moe_bricks *b, int32_t layer, int32_t expert);
moe_status moe_bricks_merge(moe_bricks *b, int32_t layer, const int32_t *experts,
                            const float *weights, int32_t n);
/* The clone gets id moe_bricks_n_expert(b, layer) (before the call). */
moe_status moe_bricks_grow(moe_bricks *b, int32_t layer, int32_t expert, float noise,
                           uint64_t seed);
moe_status moe_bricks_prune(moe_bricks *b, int32_t layer, const int32_t *experts, int32_t n);
moe_status moe_bricks_save(const moe_bricks *b, const char *path);

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

/* ---- early exit --------------------------------------------------------
 * Logit lens: the final norm + LM head applied to any layer's residual. With
 * a trace whose lens_k > 0, every evaluated token records per layer the
 * lens top-k, entropy and the rank there of the token's final argmax.
 *
 * Early exit: after each layer a criterion may stop a token; its residual is
 * frozen and the rest of the layers only compute keys and values from it, so
 * later tokens still attend to it. Its logits are the head of the frozen
 * state. The exit layer (last layer computed, n_layer - 1 = all) goes into
 * the trace and into moe_ctx_exit_layer(). A batch is evaluated layer by
 * layer for all its tokens; with a criterion that never triggers the
 * logits are bit-identical to those without early exit.
 *
 * Spec strings (moe_exit_parse):
 *   "none"           off
 *   "entropy:T"      exit when the lens entropy (nats) < T
 *   "maxprob:P"      exit when the lens top probability > P
 *   "patience:N"     exit when the lens argmax stayed the same for N
 *                    consecutive layers (PABEE)
 *   "hash:FILE"      HashEE with the bucket table in FILE (moe_hash_save)
 *   "hashtext:FILE[:B]"  HashEE with a table built from the text in FILE,
 *                    B buckets (default n_layer); moe_ctx_set_exit_spec only
 *   "window:T:W"     token-level window: a token exits at a layer when the
 *                    maximum normalised entropy (entropy / ln n_vocab, 0..1)
 *                    over the tokens of its batch within W positions is < T;
 *                    tokens that already exited count with their last value
 *   "depth:L"        run only the first L layers (SortedNet-style)
 *   "SPEC@N"         any of the above, but no exit before layer N (0-based):
 *                    e.g. "entropy:0.5@2" (the lens of the first layers
 *                    of tied-embedding models is confidently wrong)
 * No criterion exits at the last layer (there is nothing left to skip). */

typedef enum {
    MOE_EXIT_NONE,
    MOE_EXIT_ENTROPY,
    MOE_EXIT_MAXPROB,
    MOE_EXIT_PATIENCE,
    MOE_EXIT_HASH,
    MOE_EXIT_WINDOW,
    MOE_EXIT_DEPTH,
    MOE_EXIT_COUNT
} moe_exit_kind;

/* HashEE bucket table. Built from token counts: the tokens seen at least once
 * that are not special are sorted by count (descending, ties by id) and cut
 * into B equal parts; the token of rank r (0-based, N such tokens) gets
 * bucket floor(r * B / N). Bucket b (0 = most frequent) runs the first
 * ceil((b + 1) * n_layer / B) layers, i.e. exits after layer
 * ceil((b + 1) * n_layer / B) - 1. Unseen and special tokens have no bucket
 * and run all layers. File format (text, one item per line):
 *   moe-hashee 1
 *   n_vocab <V>
 *   n_buckets <B>
 *   <token id> <bucket>      one line per token that has a bucket
 */
typedef struct moe_hash_table moe_hash_table;

typedef struct {
    moe_exit_kind kind;
    float threshold;   /* ENTROPY: nats; MAXPROB: probability; WINDOW: 0..1 */
    int32_t patience;  /* PATIENCE: consecutive unchanged layers, >= 1 */
    int32_t window;    /* WINDOW: half width in tokens, >= 0 */
    int32_t depth;     /* DEPTH: layers to run, 1..n_layer */
    int32_t min_layer; /* no exit before this layer (0-based; 0 = any) */
    const moe_hash_table *hash; /* HASH: borrowed; the context keeps a copy */
} moe_exit_params;

moe_exit_params moe_exit_default_params(void);
const char *moe_exit_kind_name(moe_exit_kind kind);
/* Parse a spec string (see above). For "hash:FILE" the table is loaded and
 * returned in *hash_out (caller frees with moe_hash_free; out->hash points
 * at it). hash_out may be NULL only for specs that load no table.
 * "hashtext:" needs a model: use moe_ctx_set_exit_spec. */
moe_status moe_exit_parse(const char *spec, moe_exit_params *out,
                          moe_hash_table **hash_out);
/* Set the criterion (NULL or MOE_EXIT_NONE: off) from the next decode on. */
moe_status moe_ctx_set_exit(moe_ctx *ctx, const moe_exit_params *p);
/* Parse and set a spec string, including "hashtext:FILE[:B]". */
moe_status moe_ctx_set_exit_spec(moe_ctx *ctx, const char *spec);
moe_exit_params moe_ctx_get_exit(const moe_ctx *ctx);
/* Exit layer of token i of the last decode call (-1: its last token);
 * n_layer - 1 when it ran all layers; -1 when i is out of range. A decode
 * longer than n_batch runs in batches: i counts in the last batch then. */
int32_t moe_ctx_exit_layer(const moe_ctx *ctx, int32_t i);

typedef struct {
    int64_t n_tokens;     /* tokens evaluated since the last reset */
    int64_t layers_run;   /* sum over them of layers fully computed */
    int64_t layers_total; /* n_tokens * n_layer */
} moe_exit_stats;

/* Counters of the decodes that ran with a criterion (or a lens) since the
 * last reset (plain decodes are not counted): mean exit layer = layers_run / n_tokens - 1, fraction of layer
 * computations saved = 1 - layers_run / layers_total. */
void moe_ctx_exit_stats(const moe_ctx *ctx, moe_exit_stats *out);
void moe_ctx_exit_reset_stats(moe_ctx *ctx);

/* counts: [n_vocab] occurrences; special: [n_vocab] or NULL. */
moe_status moe_hash_from_counts(const int64_t *counts, const bool *special,
                                int32_t n_vocab, int32_t n_buckets,
                                moe_hash_table **out);
/* Count the tokens of a text (no BOS) with the model's tokenizer; the
 * model's special tokens get no bucket. */
moe_status moe_hash_from_text(const moe_model *model, const char *text, size_t len,
                              int32_t n_buckets, moe_hash_table **out);
moe_status moe_hash_save(const moe_hash_table *h, const char *path);
moe_status moe_hash_load(const char *path, moe_hash_table **out);
void moe_hash_free(moe_hash_table *h);
int32_t moe_hash_n_buckets(const moe_hash_table *h);
/* Bucket of a token, -1 when it has none (or id out of range). */
int32_t moe_hash_bucket(const moe_hash_table *h, int32_t token);
/* Layer after which the token exits with n_layer layers (n_layer - 1: all). */
int32_t moe_hash_exit_layer(const moe_hash_table *h, int32_t token, int32_t n_layer);

/* ---- self-speculative decoding (LayerSkip) ------------------------------
 * Draft tokens with the first n_exit layers + final norm + LM head, verify
 * them with one batched pass of the remaining layers over the drafts
 * (reusing their n_exit-layer states and keys/values), accept the longest
 * agreeing prefix plus one token (greedy: the output is that of plain
 * greedy decoding) or by rejection sampling: accept draft x with
 * probability min(1, p(x)/q(x)), else draw from normalise(max(0, p - q)).
 * Sampling: top-k, top-p, min-p, then temperature (the sampler's default
 * order; no penalties, no typical-p). Tokens
 * evaluated by a speculation step are not traced and exit criteria do not
 * apply to them. */

typedef struct {
    int32_t n_exit;  /* E: draft layers, 1..n_layer */
    int32_t n_draft; /* d: drafts per step, >= 1 */
    float temp;      /* <= 0: greedy */
    int32_t top_k;   /* <= 0: off */
    float top_p;     /* >= 1: off */
    float min_p;     /* <= 0: off */
    uint64_t seed;
} moe_spec_params;

typedef struct {
    int64_t steps;    /* verification passes */
    int64_t drafted;  /* draft tokens proposed */
    int64_t accepted; /* of them accepted */
    int64_t emitted;  /* tokens produced (accepted + one per step) */
} moe_spec_stats;

moe_spec_params moe_spec_default_params(void);
/* Parse "E:d" (e.g. "2:4") into p->n_exit / p->n_draft. */
moe_status moe_spec_parse(const char *spec, moe_spec_params *p);
/* One step. `next` is the token plain decoding would feed next (chosen
 * from the current logits); it is decoded together with up to n_max - 1
 * drafts. Writes the n_out (1..n_max) tokens that follow it to out; the
 * last of them is again the token to feed next, and moe_ctx_logits(ctx, -1)
 * is the full model's distribution it was chosen from, exactly as if the
 * tokens had been decoded one at a time. stats (may be NULL) accumulates. */
moe_status moe_ctx_speculate(moe_ctx *ctx, const moe_spec_params *p, int32_t next,
                             int32_t *out, int32_t n_max, int32_t *n_out,
                             moe_spec_stats *stats);

/* ---- snapshots and embeddings (for scripts: snapshot.c, embed.c) --------
 * A snapshot copies a context's cached tokens, their key/value rows in
 * every layer and the last token's logits; restoring it into a context of
 * the same model (the same one or another with n_ctx >= its length) puts
 * the cache, position and last logits back exactly, whatever was decoded or
 * truncated in between. Traces, steering and exit settings are not part of
 * it. Memory: 2 * n_layer * pos * n_embd_kv floats. */
typedef struct moe_snapshot moe_snapshot;

moe_status moe_ctx_snapshot(const moe_ctx *ctx, moe_snapshot **out);
moe_status moe_ctx_restore(moe_ctx *ctx, const moe_snapshot *snap);
int32_t moe_snapshot_pos(const moe_snapshot *snap);
/* The pos cached tokens; lives as long as the snapshot. */
const int32_t *moe_snapshot_tokens(const moe_snapshot *snap);
void moe_snapshot_free(moe_snapshot *snap);

/* Embedding of n tokens: the mean over them of the residual stream after
 * layer `layer` (0-based; -1 = the last layer), written to out[n_embd].
 * The tokens are evaluated after the cached positions (so they attend to
 * whatever the context holds; truncate to 0 first for a context-free
 * embedding) and then forgotten: position, logits, router counters and
 * trace are left as they were. Needs pos + n <= n_ctx. */
moe_status moe_ctx_embed(moe_ctx *ctx, const int32_t *tokens, int32_t n, int32_t layer,
                         float *out);

/* ---- training ------------------------------------------------------------
 * Training small llama-family models (dense or MoE, Mixtral-style experts,
 * optionally EMoE unweighted gating) in f32 on the CPU: forward and backward
 * of embedding, RMSNorm, RoPE attention with GQA, SwiGLU, the top-k router
 * and cross-entropy; AdamW with linear warm-up and cosine decay, global
 * gradient-norm clipping; balance losses per MoE layer (averaged over MoE
 * layers, then weighted):
 *   switch   n_expert * sum_e f_e * P_e (f_e share of assignments, P_e mean
 *            router probability; 1 = balanced; gradient through P_e)
 *   z-loss   mean over tokens of logsumexp(router logits)^2
 *   mi       -(H(mean_t p_t) - mean_t H(p_t)) (ModuleFormer's mutual
 *            information, negated so that minimising it balances load and
 *            sharpens each token's choice).
 * Checkpoints are GGUF files moe_model_load runs (architecture "llama",
 * f32 weights, or f16/q8_0 on export); the AdamW state goes to a side file
 * "<checkpoint>.opt" (GGUF) so training can resume. Bricks (training only
 * part of a model) are named by spec strings, comma separated:
 *   all | embd | output | blk.N | blk.N.attn | blk.N.ffn | blk.N.router |
 *   blk.N.router.E | blk.N.expert.E        (N may be '*' = every layer)
 * A trainer is not thread-safe; each call sets OpenBLAS (process-wide) to
 * the trainer's n_threads. */

typedef struct moe_trainer moe_trainer;

typedef struct {
    const char *name;      /* general.name written (NULL = "moe-studio") */
    int32_t n_vocab;       /* 0 = the vocabulary's size */
    int32_t n_ctx_train;   /* context length written to the file */
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;     /* divides n_head (GQA) */
    int32_t n_ff;          /* dense FFN width (dense models) */
    int32_t n_expert;      /* 0 = dense model; else every layer is MoE */
    int32_t n_expert_used;
    int32_t n_ff_exp;      /* width of each expert */
    float norm_eps;
    float rope_freq_base;
    bool norm_topk;        /* renormalise selected weights to sum 1 (Mixtral) */
    bool unweighted;       /* EMoE: selected experts summed with weight 1 */
    bool tied_output;      /* LM head shares the embedding (no output.weight) */
    float init_std;        /* std of random matrices (0.02) */
    uint64_t seed;
} moe_train_config;

typedef struct {
    float lr;              /* peak learning rate */
    float lr_min;          /* floor of the cosine decay */
    int64_t warmup;        /* linear warm-up steps */
    int64_t n_steps;       /* cosine decay reaches lr_min here */
    float beta1, beta2, adam_eps;
    float weight_decay;    /* decoupled, on matrices only */
    float grad_clip;       /* max global gradient L2 norm (0 = off) */
    float w_balance;       /* weight of the switch balance loss */
    float w_zloss;         /* weight of the router z-loss */
    float w_mi;            /* weight of the mutual-information loss */
    int n_threads;         /* OpenBLAS threads (>= 1) */
} moe_train_params;

typedef struct {
    int64_t step;          /* optimizer steps taken (after this one) */
    int64_t tokens;        /* tokens trained on so far */
    double loss;           /* objective: ce + weighted balance losses */
    double ce;             /* cross-entropy, nats per token */
    double balance, zloss, mi; /* unweighted, mean over MoE layers */
    double grad_norm;      /* global norm before clipping */
    double lr;             /* learning rate used */
} moe_train_stats;

moe_train_config moe_train_default_config(void);
moe_train_params moe_train_default_params(void);

/* A new randomly initialised model with the tokenizer of vocab_path (any
 * GGUF with tokenizer.ggml.* keys, e.g. one moe_bpe_train wrote). */
moe_status moe_trainer_new(const moe_train_config *cfg, const char *vocab_path,
                           moe_trainer **out);
/* Continue from a GGUF model the engine loads (llama architecture without
 * biases, q/k norms, shared experts or scales; dense and MoE layers may
 * mix; any weight type, converted to f32), and from "<path>.opt" when it
 * exists and matches (optimizer state and step). */
moe_status moe_trainer_load(const char *path, moe_trainer **out);
void moe_trainer_free(moe_trainer *t);
void moe_trainer_get_config(const moe_trainer *t, moe_train_config *out);
moe_status moe_trainer_set_params(moe_trainer *t, const moe_train_params *p);
/* The optimizer settings in effect (those of a resumed run's side file). */
void moe_trainer_get_params(const moe_trainer *t, moe_train_params *out);
/* Parameters in all, and in the trainable bricks. */
int64_t moe_trainer_n_params(const moe_trainer *t, bool trainable_only);
int64_t moe_trainer_step_count(const moe_trainer *t);
/* Tokenize with the model's vocabulary (no BOS); moe_tokenize's contract. */
int32_t moe_trainer_tokenize(const moe_trainer *t, const char *text, size_t len,
                             int32_t *out, int32_t n_max);
int32_t moe_trainer_bos(const moe_trainer *t); /* -1 if none */

/* general.name written by moe_trainer_save (NULL: keep the source's). */
moe_status moe_trainer_set_name(moe_trainer *t, const char *name);
/* Train only the bricks of spec (see above; NULL or "all" = everything);
 * on error the trainable set is left as it was. */
moe_status moe_trainer_set_trainable(moe_trainer *t, const char *spec);
/* Grow: add one expert to every MoE layer, a copy of expert src plus
 * Gaussian noise of relative size noise (router row too), and make the new
 * experts (and their router rows) the only trainable bricks. The optimizer
 * state restarts. */
moe_status moe_trainer_grow(moe_trainer *t, int32_t src, float noise, uint64_t seed);

/* One AdamW step on n_seq sequences of n_tok + 1 tokens each
 * (tokens[s * (n_tok + 1) + i]; inputs i < n_tok, targets i >= 1). */
moe_status moe_trainer_step(moe_trainer *t, const int32_t *tokens, int32_t n_seq,
                            int32_t n_tok, moe_train_stats *out);
/* The same losses without changing anything (validation). Also
 * accumulates routing counts for moe_trainer_route_load. */
moe_status moe_trainer_eval(moe_trainer *t, const int32_t *tokens, int32_t n_seq,
                            int32_t n_tok, moe_train_stats *out);
/* Share of assignments (sum 1) per expert of MoE layer il since the last
 * reset (counted by moe_trainer_eval); frac holds n_expert values. */
moe_status moe_trainer_route_load(const moe_trainer *t, int32_t il, double *frac);
void moe_trainer_route_reset(moe_trainer *t);
/* Logits ([n][n_vocab]) of one sequence of n tokens from position 0. */
moe_status moe_trainer_logits(moe_trainer *t, const int32_t *tokens, int32_t n,
                              float *out);
/* Write the model atomically, matrices as GGUF type `type`: 0 (f32), 1
 * (f16) or 8 (q8_0, where the row length allows; the router and norms stay
 * f32); with_optimizer also writes "<path>.opt". */
moe_status moe_trainer_save(moe_trainer *t, const char *path, int type,
                            bool with_optimizer);

/* Module-to-module distillation (m2mKD style). module_io runs the teacher
 * on one sequence and gives, for layer il, the FFN block's input (after the
 * FFN norm) and output, each [n][n_embd]. distill_step trains expert e of
 * the student's MoE layer il to map x_in to y (mean squared error per
 * element) with one AdamW step on that expert alone. */
moe_status moe_trainer_module_io(moe_trainer *teacher, const int32_t *tokens, int32_t n,
                                 int32_t il, float *x_in, float *y);
moe_status moe_trainer_distill_step(moe_trainer *student, int32_t il, int32_t e,
                                    const float *x_in, const float *y, int32_t n,
                                    moe_train_stats *out);

/* Byte-level BPE tokenizer training (GPT-2 style: 256 byte tokens, then
 * merges learned on words split by the "gpt-2" pre-tokenizer, most frequent
 * pair first, ties by the lexicographically smaller pair). Writes a
 * vocabulary-only GGUF (tokenizer.ggml.model "gpt2", pre "gpt-2", tokens,
 * token_type, merges, "<|endoftext|>" as token 0 = BOS = EOS, add_bos
 * true) with n_vocab tokens (fewer when the text runs out of pairs). */
moe_status moe_bpe_train(const char *text, size_t len, int32_t n_vocab, const char *path,
                         moe_progress_fn progress, void *ud);

/* ---- sessions ------------------------------------------------------------
 * A session is what the studio shows and what session files hold
 * (docs/session-schema.md, format "moe-studio-session" version 1): model
 * metadata, settings, turns, per-token records with their trace copies and
 * the display text of every referenced token. The studio keeps its document
 * in a moe_session; headless callers (Lua scripts) build one from a
 * context's trace. The structs are plain data with documented ownership so
 * views can read them directly; change them through the functions below.
 *
 * Ownership: a moe_session owns its records, turns, vocabulary and the
 * strings of meta and set; moe_session_free releases them. A record handed
 * to moe_session_append becomes the session's (freed on failure too). */

#define MOE_SESSION_FORMAT "moe-studio-session"
#define MOE_SESSION_VERSION 1
#define MOE_SESSION_N_CAND 8 /* candidates kept per sampler stage and in top */

typedef struct {
    int32_t id;
    float p;
} moe_session_cand;

typedef struct {
    int32_t n_layer, n_expert, n_sel, lens_k;
} moe_session_dims;

/* One token. The per-layer arrays exist when traced (one allocation, blob)
 * and are sized by the session's dims. */
typedef struct {
    int32_t index;   /* position in the session (set by moe_session_append) */
    int32_t pos;     /* position in the KV cache */
    int32_t id;
    int32_t turn;
    char *text;      /* display text: valid UTF-8, bad bytes as \xNN (owned) */
    bool prompt;     /* from the user's text, not sampled */
    bool sampled;    /* logprob and candidates are set */
    bool traced;     /* the per-layer arrays are set */
    float logprob;   /* ln p(token) under the model's distribution */
    int32_t n_top;   /* the model's most probable tokens (softmax of logits) */
    moe_session_cand top[MOE_SESSION_N_CAND];
    float time_ms;   /* engine time of this token (sampling + its forward) */
    int32_t exit_layer; /* last layer computed; -1 when not traced */
    int32_t n_stage;
    int32_t stage[MOE_STAGE_COUNT];  /* moe_sampler_stage, in chain order */
    int32_t n_cand[MOE_STAGE_COUNT];
    moe_session_cand cand[MOE_STAGE_COUNT][MOE_SESSION_N_CAND];
    void *blob;
    bool *layer_moe;     /* [n_layer] */
    int32_t *sel;        /* [n_layer][n_sel], -1 unused */
    float *sel_w;        /* [n_layer][n_sel] */
    float *probs;        /* [n_layer][n_expert] router probabilities */
    float *hnorm;        /* [n_layer] */
    int32_t *lens_id;    /* [n_layer][lens_k], -1 unused */
    float *lens_p;       /* [n_layer][lens_k] */
    float *lens_entropy; /* [n_layer] */
} moe_session_tok;

typedef struct {
    char *path, *sha256, *name, *arch, *ftype; /* owned; path NULL = no model */
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
    int32_t n_expert, n_expert_used, n_ff_exp;
    bool has_shared_expert;
    int64_t n_params, file_size, weight_bytes;
} moe_session_meta;

typedef struct {
    char *prompt;      /* the text typed (may be ""; owned) */
    int32_t start;     /* first record of the turn */
    int32_t n_prompt;  /* records from the prompt */
    int32_t n_gen;     /* sampled records */
} moe_session_turn;

typedef struct {
    moe_sampler_params sp;
    int32_t n_ctx;
    int32_t lens_k;
    int32_t n_predict;   /* tokens generated after a typed prompt */
    char *exit_spec;     /* "none" or an exit spec (owned) */
    char **route;        /* route commands in effect, in order (owned) */
    int32_t n_route;
} moe_session_settings;

typedef struct {
    bool has_model;      /* for the application (a live model); not written */
    moe_session_meta meta;
    moe_session_dims dims;
    moe_session_settings set;
    moe_session_tok **toks;
    int32_t n_tok, cap_tok;
    moe_session_turn *turns;
    int32_t n_turn, cap_turn;
    char **vocab;        /* [n_vocab] display texts, NULL where unknown */
    int32_t n_vocab;
} moe_session;

typedef struct {
    int32_t n_tokens, n_prompt, n_gen, n_traced;
    double gen_ms, tok_s, mean_logprob, perplexity, mean_exit_layer;
} moe_session_stats;

/* Records: traced ones get zeroed arrays (sel and lens_id -1). NULL on
 * out of memory. set_trace copies an engine trace entry (dims must match). */
moe_session_tok *moe_session_tok_new(const moe_session_dims *d, bool traced);
void moe_session_tok_free(moe_session_tok *t);
void moe_session_tok_set_trace(moe_session_tok *t, const moe_session_dims *d,
                               const moe_trace_token *e);

void moe_session_settings_default(moe_session_settings *s);
/* Deep copy into dst (uninitialised); false on out of memory. */
bool moe_session_settings_copy(moe_session_settings *dst, const moe_session_settings *src);
void moe_session_settings_free(moe_session_settings *s);
void moe_session_meta_free(moe_session_meta *m);

/* A session value (not a handle): init before use, free after. */
void moe_session_init(moe_session *s);
void moe_session_free(moe_session *s);
/* Drop records and turns (keeps model, settings and vocabulary). */
void moe_session_clear(moe_session *s);
/* Take ownership of t; false on out of memory (t freed). */
bool moe_session_append(moe_session *s, moe_session_tok *t);
/* Start a turn at the next record; false on out of memory. */
bool moe_session_begin_turn(moe_session *s, const char *prompt);
/* Take a vocabulary (array of n malloc'd strings), freeing the old one. */
void moe_session_set_vocab(moe_session *s, char **vocab, int32_t n);
void moe_session_vocab_free(char **v, int32_t n);
bool moe_session_set_route(moe_session *s, char **route, int32_t n);
/* Display text of a token id ("#id" written to buf when unknown). */
const char *moe_session_piece(const moe_session *s, int32_t id, char *buf, size_t n);
/* load: [n_layer][n_expert] selections over traced records (gen_only:
 * sampled records only). */
void moe_session_load(const moe_session *s, bool gen_only, int64_t *load);
void moe_session_stats_get(const moe_session *s, moe_session_stats *out);
/* Raw token bytes as display text: valid UTF-8 kept except C0 controls and
 * DEL, which (like invalid bytes) become the 4 characters \xNN; '\n' and
 * '\t' kept. malloc'd; NULL on out of memory. */
char *moe_session_sanitize(const char *bytes, size_t len);

/* The display vocabulary of a model (n_vocab moe_session_sanitize'd
 * pieces, free with moe_session_vocab_free); NULL (*n = 0) on out of
 * memory. */
char **moe_session_vocab_from_model(const moe_model *model, int32_t *n);
/* Fill meta (initialised; freed first) from a model; sha256 NULL = compute
 * it from the model file ("" if unreadable). MOE_ERR_NOMEM when a string
 * could not be copied (meta then still needs moe_session_meta_free). */
moe_status moe_session_meta_from_model(moe_session_meta *m, const moe_model *model,
                                       const char *sha256);
/* Fill meta (freed first), dims (from the context's trace) and the display
 * vocabulary from a model and its context; sha256 NULL = compute it from
 * the model file ("" if unreadable). Records already present must have been
 * made with the same dims. */
moe_status moe_session_set_model(moe_session *s, const moe_ctx *ctx, const char *sha256);
/* Append one record per trace entry i of ctx: prefill entries as prompt
 * records, the others as sampled ones whose logprob and top come from the
 * previous entry's last-layer logit lens when it ran every layer (a token
 * outside the lens' top gets a NaN logprob, written null); no sampler
 * stages are known. Call moe_session_set_model first. */
moe_status moe_session_add_token_from_trace(moe_session *s, const moe_ctx *ctx, int32_t i);

/* The JSON text (malloc'd, free with free()), or NULL on out of memory.
 * Statistics are computed from the records. */
char *moe_session_json(const moe_session *s);
/* Parse JSON into s (initialised, empty); every value is checked. */
moe_status moe_session_parse(moe_session *s, const char *json);
/* Atomic write (temp file beside path, fsync, rename) / read of a file. */
moe_status moe_session_write(const moe_session *s, const char *path);
moe_status moe_session_read(moe_session *s, const char *path);
/* Write len bytes to path atomically; an existing file is replaced only
 * when everything succeeded. */
moe_status moe_write_atomic(const char *path, const void *data, size_t len);

/* ---- fingerprints ------------------------------------------------------ */

/* SHA-256 of a buffer / a whole file as 64 lower-case hex digits + NUL.
 * moe_sha256_file returns false (out = "") when the file cannot be read. */
void moe_sha256(const void *data, size_t len, char out[65]);
bool moe_sha256_file(const char *path, char out[65]);

#ifdef __cplusplus
}
#endif
#endif /* MOE_H */
