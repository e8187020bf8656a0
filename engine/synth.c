/*
 * synth.c - random-weight GGUF models of realistic shapes (granite-moe-1b,
 * olmoe-7b, llama-1b, tiny-moe) with a working SentencePiece-style
 * vocabulary, and the memory read-bandwidth probe used by `bench`.
 *
 * Tensors are generated and quantized one at a time by a thread pool into
 * a scratch mapping of an unlinked file beside the target (page cache the
 * kernel can write back, not pinned RAM), then the GGUF writer writes the
 * file atomically (temp + rename) from that mapping. Rows are seeded
 * independently, so the bytes do not depend on the thread count.
 *
 * Uses the gguf writer, quant (quantizers), threads and pthreads;
 * knows nothing about models' forward pass or the UI. Never prints.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "gguf.h"
#include "synth.h"
#include "threads.h"
#include "util.h"

/* ---- shapes ---------------------------------------------------------------- */

static const synth_shape synth_shape_table[] = {
    /* name              arch          vocab  ctx   embd lay head kv  n_ff  exp used ff_exp */
    { "granite-moe-1b", "granitemoe", 49155, 4096, 1024, 24, 16, 8, 0, 32, 8, 512 },
    { "olmoe-7b", "olmoe", 50304, 4096, 2048, 16, 16, 16, 0, 64, 8, 1024 },
    { "llama-1b", "llama", 32000, 4096, 2048, 16, 32, 8, 8192, 0, 0, 0 },
    { "tiny-moe", "llama", 512, 1024, 128, 4, 4, 2, 0, 8, 2, 256 },
    { NULL, NULL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 },
};

const synth_shape *synth_shapes(void)
{
    return synth_shape_table;
}

const synth_shape *synth_find_shape(const char *name)
{
    if (!name)
        return NULL;
    for (const synth_shape *s = synth_shape_table; s->name; s++)
        if (strcmp(s->name, name) == 0)
            return s;
    return NULL;
}

/* ---- random numbers -------------------------------------------------------- */

static inline uint64_t synth_mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Independent stream for row `row` of tensor `t`: the same file comes out
 * whatever the thread count. */
static uint64_t synth_row_state(uint64_t seed, int64_t t, int64_t row)
{
    uint64_t x = seed ^ ((uint64_t)t * 0xd1b54a32d192ed03ULL);
    uint64_t a = synth_mix(&x);
    x = a ^ ((uint64_t)row * 0xaef17502108ef2d9ULL);
    return synth_mix(&x);
}

/* n floats uniform in [center - scale, center + scale) */
static void synth_fill_uniform(uint64_t state, float *dst, int64_t n,
                               float center, float scale)
{
    const float k = scale * (1.0f / 2147483648.0f);
    int64_t i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t r = synth_mix(&state);
        dst[i] = center + (float)(int32_t)(uint32_t)r * k;
        dst[i + 1] = center + (float)(int32_t)(uint32_t)(r >> 32) * k;
    }
    if (i < n)
        dst[i] = center + (float)(int32_t)(uint32_t)synth_mix(&state) * k;
}

/* ---- vocabulary -------------------------------------------------------------- */

#define SYNTH_N_SPECIAL 3
#define SYNTH_MIN_VOCAB (SYNTH_N_SPECIAL + 256)

typedef struct {
    char **tokens;    /* [n] pointers into arena */
    char *arena;
    float *scores;    /* [n] */
    int32_t *types;   /* [n] */
    int32_t n;
} synth_vocab;

static void synth_vocab_free(synth_vocab *v)
{
    free(v->tokens);
    free(v->arena);
    free(v->scores);
    free(v->types);
    memset(v, 0, sizeof *v);
}

/* SentencePiece token types as stored in tokenizer.ggml.token_type */
enum { SYNTH_TT_NORMAL = 1, SYNTH_TT_UNKNOWN = 2, SYNTH_TT_CONTROL = 3,
       SYNTH_TT_BYTE = 6 };

/* <unk> <s> </s>, byte tokens <0x00>..<0xFF>, single characters ("▁" and
 * printable ASCII), then "▁"+word and word pieces of growing length over
 * lowercase letters in English frequency order. Every multi-character piece
 * is the concatenation of two earlier pieces, so SentencePiece merging
 * reaches it; all pieces are distinct valid UTF-8. Scores descend. */
static moe_status synth_vocab_build(synth_vocab *v, int32_t n)
{
    static const char letters[] = "etaoinshrdlcumwfgypbvkjxqz";
    static const char upper[] = "ETAOINSHRDLCUMWFGYPBVKJXQZ";
    const char *sp = "\xe2\x96\x81"; /* U+2581 */
    size_t cap, used = 0;
    int32_t k = 0, first_normal;
    char piece[32];

    memset(v, 0, sizeof *v);
    if (n < SYNTH_MIN_VOCAB)
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: vocabulary of %d tokens is "
                        "below the minimum %d", (int)n, SYNTH_MIN_VOCAB);
    /* longest piece: "▁" + 8 letters + NUL = 12 bytes; budget 16 each */
    cap = (size_t)n * 16;
    v->tokens = malloc((size_t)n * sizeof *v->tokens);
    v->arena = malloc(cap);
    v->scores = malloc((size_t)n * sizeof *v->scores);
    v->types = malloc((size_t)n * sizeof *v->types);
    if (!v->tokens || !v->arena || !v->scores || !v->types) {
        synth_vocab_free(v);
        return moe_fail(MOE_ERR_NOMEM, "synth: out of memory for the vocabulary");
    }
#define SYNTH_ADD(str, score, type)                                  \
    do {                                                             \
        size_t l_ = strlen(str) + 1;                                 \
        v->tokens[k] = v->arena + used;                              \
        memcpy(v->arena + used, (str), l_);                          \
        used += l_;                                                  \
        v->scores[k] = (score);                                      \
        v->types[k] = (type);                                        \
        k++;                                                         \
    } while (0)

    SYNTH_ADD("<unk>", 0.0f, SYNTH_TT_UNKNOWN);
    SYNTH_ADD("<s>", 0.0f, SYNTH_TT_CONTROL);
    SYNTH_ADD("</s>", 0.0f, SYNTH_TT_CONTROL);
    for (int b = 0; b < 256; b++) {
        snprintf(piece, sizeof piece, "<0x%02X>", b);
        SYNTH_ADD(piece, 0.0f, SYNTH_TT_BYTE);
    }
    first_normal = k;
    if (k < n)
        SYNTH_ADD(sp, -(float)(k - first_normal), SYNTH_TT_NORMAL);
    for (int c = 0x21; c < 0x7f && k < n; c++) {
        piece[0] = (char)c;
        piece[1] = '\0';
        SYNTH_ADD(piece, -(float)(k - first_normal), SYNTH_TT_NORMAL);
    }
    /* level 1: "▁x" and "▁X" */
    for (int i = 0; i < 26 && k < n; i++) {
        snprintf(piece, sizeof piece, "%s%c", sp, letters[i]);
        SYNTH_ADD(piece, -(float)(k - first_normal), SYNTH_TT_NORMAL);
    }
    for (int i = 0; i < 26 && k < n; i++) {
        snprintf(piece, sizeof piece, "%s%c", sp, upper[i]);
        SYNTH_ADD(piece, -(float)(k - first_normal), SYNTH_TT_NORMAL);
    }
    /* level L >= 2: every word w of L letters gives "▁w" (= "▁w[:-1]" + last)
     * and "w" (= w[:-1] + last) */
    for (int len = 2; k < n && len <= 8; len++) {
        int digit[8] = { 0 };
        for (;;) {
            char w[9];
            for (int i = 0; i < len; i++)
                w[i] = letters[digit[i]];
            w[len] = '\0';
            snprintf(piece, sizeof piece, "%s%s", sp, w);
            if (k < n)
                SYNTH_ADD(piece, -(float)(k - first_normal), SYNTH_TT_NORMAL);
            if (k < n)
                SYNTH_ADD(w, -(float)(k - first_normal), SYNTH_TT_NORMAL);
            if (k >= n)
                break;
            /* odometer, last letter fastest */
            int i = len - 1;
            while (i >= 0 && ++digit[i] == 26)
                digit[i--] = 0;
            if (i < 0)
                break;
        }
    }
#undef SYNTH_ADD
    if (k != n || used > cap) { /* 26^8 pieces cover any int32 vocabulary */
        synth_vocab_free(v);
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: cannot build %d tokens", (int)n);
    }
    v->n = n;
    return MOE_OK;
}

/* ---- the tensor plan ------------------------------------------------------- */

typedef enum {
    SYNTH_INIT_WEIGHT, /* uniform +-1/sqrt(row length) */
    SYNTH_INIT_NORM,   /* uniform 1 +- 0.1 */
    SYNTH_INIT_COUNT
} synth_init;

typedef struct {
    char name[64];
    moe_type type;
    int n_dims;
    int64_t ne[3];
    synth_init init;
    size_t nbytes;         /* bytes of data */
    size_t off;            /* offset in the scratch mapping */
} synth_tensor;

typedef struct {
    synth_tensor *t;
    size_t n, cap;
} synth_plan;

/* The weight type for a matrix with rows of n_in: the requested type when
 * the row length fits its block, else q8_0, else f32. */
static moe_type synth_weight_type(moe_type want, int64_t n_in)
{
    if (n_in % quant_block_elems(want) == 0)
        return want;
    if (n_in % quant_block_elems(MOE_TYPE_Q8_0) == 0 && want != MOE_TYPE_F16 &&
        want != MOE_TYPE_BF16)
        return MOE_TYPE_Q8_0;
    return MOE_TYPE_F32;
}

static moe_status synth_plan_add(synth_plan *p, const char *name, moe_type type,
                                 synth_init init, int n_dims, int64_t ne0,
                                 int64_t ne1, int64_t ne2)
{
    synth_tensor *t;
    synth_tensor *q = util_room(p->t, &p->cap, p->n, sizeof *q, 64);
    if (!q)
        return moe_fail(MOE_ERR_NOMEM, "synth: out of memory");
    p->t = q;
    t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->type = init == SYNTH_INIT_NORM ? MOE_TYPE_F32 : synth_weight_type(type, ne0);
    t->init = init;
    t->n_dims = n_dims;
    t->ne[0] = ne0;
    t->ne[1] = ne1;
    t->ne[2] = ne2;
    return MOE_OK;
}

static moe_status synth_plan_build(const synth_shape *sh, moe_type type,
                                   synth_plan *p)
{
    const int64_t n_embd = sh->n_embd, n_vocab = sh->n_vocab;
    const int64_t n_head_dim = sh->n_embd / sh->n_head;
    const int64_t n_embd_kv = n_head_dim * sh->n_head_kv;
    const bool qk_norm = strcmp(sh->arch, "olmoe") == 0;
    moe_status st;
    char nm[64];

#define ADD(init, nd, a, b, c)                                              \
    do {                                                                    \
        st = synth_plan_add(p, nm, type, init, nd, a, b, c);                \
        if (st != MOE_OK)                                                   \
            return st;                                                      \
    } while (0)

    snprintf(nm, sizeof nm, "token_embd.weight");
    ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_vocab, 1);
    for (int il = 0; il < sh->n_layer; il++) {
        snprintf(nm, sizeof nm, "blk.%d.attn_norm.weight", il);
        ADD(SYNTH_INIT_NORM, 1, n_embd, 1, 1);
        snprintf(nm, sizeof nm, "blk.%d.attn_q.weight", il);
        ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_embd, 1);
        snprintf(nm, sizeof nm, "blk.%d.attn_k.weight", il);
        ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_embd_kv, 1);
        snprintf(nm, sizeof nm, "blk.%d.attn_v.weight", il);
        ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_embd_kv, 1);
        if (qk_norm) {
            snprintf(nm, sizeof nm, "blk.%d.attn_q_norm.weight", il);
            ADD(SYNTH_INIT_NORM, 1, n_embd, 1, 1);
            snprintf(nm, sizeof nm, "blk.%d.attn_k_norm.weight", il);
            ADD(SYNTH_INIT_NORM, 1, n_embd_kv, 1, 1);
        }
        snprintf(nm, sizeof nm, "blk.%d.attn_output.weight", il);
        ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_embd, 1);
        snprintf(nm, sizeof nm, "blk.%d.ffn_norm.weight", il);
        ADD(SYNTH_INIT_NORM, 1, n_embd, 1, 1);
        if (sh->n_expert > 0) {
            const int64_t ne = sh->n_expert, nf = sh->n_ff_exp;
            /* the router is always f32 */
            snprintf(nm, sizeof nm, "blk.%d.ffn_gate_inp.weight", il);
            st = synth_plan_add(p, nm, MOE_TYPE_F32, SYNTH_INIT_WEIGHT, 2, n_embd, ne, 1);
            if (st != MOE_OK)
                return st;
            snprintf(nm, sizeof nm, "blk.%d.ffn_gate_exps.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 3, n_embd, nf, ne);
            snprintf(nm, sizeof nm, "blk.%d.ffn_up_exps.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 3, n_embd, nf, ne);
            snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 3, nf, n_embd, ne);
        } else {
            const int64_t nf = sh->n_ff;
            snprintf(nm, sizeof nm, "blk.%d.ffn_gate.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 2, n_embd, nf, 1);
            snprintf(nm, sizeof nm, "blk.%d.ffn_up.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 2, n_embd, nf, 1);
            snprintf(nm, sizeof nm, "blk.%d.ffn_down.weight", il);
            ADD(SYNTH_INIT_WEIGHT, 2, nf, n_embd, 1);
        }
    }
    snprintf(nm, sizeof nm, "output_norm.weight");
    ADD(SYNTH_INIT_NORM, 1, n_embd, 1, 1);
    snprintf(nm, sizeof nm, "output.weight");
    ADD(SYNTH_INIT_WEIGHT, 2, n_embd, n_vocab, 1);
#undef ADD
    return MOE_OK;
}

/* llama.cpp-compatible general.file_type for a file of mostly `t` */
static uint32_t synth_file_type(moe_type t)
{
    switch (t) {
    case MOE_TYPE_F32: return 0;
    case MOE_TYPE_F16: return 1;
    case MOE_TYPE_Q4_0: return 2;
    case MOE_TYPE_Q4_1: return 3;
    case MOE_TYPE_Q8_0: return 7;
    case MOE_TYPE_Q5_0: return 8;
    case MOE_TYPE_Q5_1: return 9;
    case MOE_TYPE_Q2_K: return 10;
    case MOE_TYPE_Q3_K: return 11;  /* Q3_K_S */
    case MOE_TYPE_Q4_K: return 14;  /* Q4_K_S */
    case MOE_TYPE_Q5_K: return 16;  /* Q5_K_S */
    case MOE_TYPE_Q6_K: return 18;
    case MOE_TYPE_BF16: return 32;
    default: return 0;
    }
}

static bool synth_weight_type_ok(moe_type t)
{
    switch (t) {
    case MOE_TYPE_F32: case MOE_TYPE_F16: case MOE_TYPE_BF16:
    case MOE_TYPE_Q4_0: case MOE_TYPE_Q4_1: case MOE_TYPE_Q5_0:
    case MOE_TYPE_Q5_1: case MOE_TYPE_Q8_0: case MOE_TYPE_Q2_K:
    case MOE_TYPE_Q3_K: case MOE_TYPE_Q4_K: case MOE_TYPE_Q5_K:
    case MOE_TYPE_Q6_K:
        return quant_type_supported((int)t);
    default:
        return false;
    }
}

static moe_status synth_check_shape(const synth_shape *sh)
{
    if (!sh->name || !sh->arch)
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: shape without name or arch");
    if (sh->n_embd < 1 || sh->n_layer < 1 || sh->n_head < 1 || sh->n_head_kv < 1 ||
        sh->n_ctx_train < 1 || sh->n_embd > (1 << 20) || sh->n_layer > 1000 ||
        sh->n_vocab > (1 << 24))
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: shape '%s': dimensions out of range",
                        sh->name);
    if (sh->n_embd % sh->n_head != 0 || sh->n_head % sh->n_head_kv != 0 ||
        (sh->n_embd / sh->n_head) % 2 != 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: shape '%s': n_embd %d, n_head %d, "
                        "n_head_kv %d do not divide evenly", sh->name, sh->n_embd,
                        sh->n_head, sh->n_head_kv);
    if (sh->n_expert > 0) {
        if (sh->n_expert_used < 1 || sh->n_expert_used > sh->n_expert ||
            sh->n_ff_exp < 1 || sh->n_expert > 1024)
            return moe_fail(MOE_ERR_INVALID_ARG, "synth: shape '%s': bad expert counts",
                            sh->name);
    } else if (sh->n_ff < 1) {
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: shape '%s': no FFN (n_ff and "
                        "n_expert are 0)", sh->name);
    }
    if (strcmp(sh->arch, "llama") != 0 && strcmp(sh->arch, "granitemoe") != 0 &&
        strcmp(sh->arch, "olmoe") != 0)
        return moe_fail(MOE_ERR_UNSUPPORTED, "synth: architecture '%s' not "
                        "handled (llama, granitemoe, olmoe)", sh->arch);
    if (strcmp(sh->arch, "llama") != 0 && sh->n_expert == 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: %s needs experts", sh->arch);
    return MOE_OK;
}

/* ---- metadata ---------------------------------------------------------------- */

static moe_status synth_set_kv(gguf_writer *w, const synth_shape *sh, moe_type type,
                               const synth_vocab *v)
{
    const char *a = sh->arch;
    char key[128], desc[160];
    moe_status st = MOE_OK;
    const bool granite = strcmp(a, "granitemoe") == 0;

#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", a, suffix), key)
#define TRY(expr)                        \
    do {                                 \
        if ((st = (expr)) != MOE_OK)     \
            return st;                   \
    } while (0)

    snprintf(desc, sizeof desc, "random weights (%s), seeded; moe-studio synth",
             quant_type_name(type));
    TRY(gguf_writer_set_str(w, "general.architecture", a));
    TRY(gguf_writer_set_u32(w, "general.alignment", GGUF_DEFAULT_ALIGNMENT));
    TRY(gguf_writer_set_str(w, "general.name", sh->name));
    TRY(gguf_writer_set_str(w, "general.description", desc));
    TRY(gguf_writer_set_u32(w, "general.file_type", synth_file_type(type)));
    if (type != MOE_TYPE_F32 && type != MOE_TYPE_F16 && type != MOE_TYPE_BF16)
        TRY(gguf_writer_set_u32(w, "general.quantization_version", 2));
    TRY(gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)sh->n_ctx_train));
    TRY(gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)sh->n_embd));
    TRY(gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)sh->n_layer));
    /* MoE files of this family store the expert FFN width here */
    TRY(gguf_writer_set_u32(w, KEY("feed_forward_length"),
                            (uint32_t)(sh->n_expert > 0 ? sh->n_ff_exp : sh->n_ff)));
    TRY(gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)sh->n_head));
    TRY(gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)sh->n_head_kv));
    TRY(gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"),
                            granite ? 1e-6f : 1e-5f));
    TRY(gguf_writer_set_f32(w, KEY("rope.freq_base"), 10000.0f));
    TRY(gguf_writer_set_u32(w, KEY("rope.dimension_count"),
                            (uint32_t)(sh->n_embd / sh->n_head)));
    if (sh->n_expert > 0) {
        TRY(gguf_writer_set_u32(w, KEY("expert_count"), (uint32_t)sh->n_expert));
        TRY(gguf_writer_set_u32(w, KEY("expert_used_count"), (uint32_t)sh->n_expert_used));
    }
    if (granite) {
        TRY(gguf_writer_set_f32(w, KEY("residual_scale"), 0.22f));
        TRY(gguf_writer_set_f32(w, KEY("embedding_scale"), 12.0f));
        TRY(gguf_writer_set_f32(w, KEY("attention.scale"), 0.015625f));
        TRY(gguf_writer_set_f32(w, KEY("logit_scale"), 8.0f));
    }
    TRY(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"));
    TRY(gguf_writer_set_str(w, "tokenizer.ggml.pre", "default"));
    TRY(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
                                (const char *const *)v->tokens, (uint64_t)v->n));
    TRY(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, v->scores,
                            (uint64_t)v->n));
    TRY(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, v->types,
                            (uint64_t)v->n));
    TRY(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1));
    TRY(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2));
    TRY(gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0));
    TRY(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true));
    TRY(gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)sh->n_vocab));
#undef KEY
#undef TRY
    return st;
}

/* ---- filling tensors ----------------------------------------------------------- */

typedef struct {
    const synth_tensor *t;
    uint8_t *dst;          /* the tensor's bytes in the mapping */
    size_t row_bytes;
    int64_t n_rows;
    int64_t index;         /* tensor number, part of the random stream */
    uint64_t seed;
    float **scratch;       /* [n_threads] rows of max_row floats */
} synth_job;

#define SYNTH_CHUNKS 64

/* Chunk `chunk` of SYNTH_CHUNKS covers a contiguous range of rows. */
static void synth_fill_rows(void *arg, int ith, int64_t chunk)
{
    const synth_job *j = arg;
    const synth_tensor *t = j->t;
    const int64_t n = t->ne[0];
    const int64_t r0 = j->n_rows * chunk / SYNTH_CHUNKS;
    const int64_t r1 = j->n_rows * (chunk + 1) / SYNTH_CHUNKS;
    float *row = j->scratch[ith];
    float center = t->init == SYNTH_INIT_NORM ? 1.0f : 0.0f;
    float scale = t->init == SYNTH_INIT_NORM ? 0.1f : 1.0f / sqrtf((float)n);

    for (int64_t r = r0; r < r1; r++) {
        uint8_t *out = j->dst + (size_t)r * j->row_bytes;
        uint64_t state = synth_row_state(j->seed, j->index, r);
        if (t->type == MOE_TYPE_F32) {
            synth_fill_uniform(state, (float *)(void *)out, n, center, scale);
        } else {
            synth_fill_uniform(state, row, n, center, scale);
            quant_quantize_row(t->type, row, out, n);
        }
    }
}

static int synth_n_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        return 1;
    return n > 8 ? 8 : (int)n;
}

/* Generate every planned tensor into scratch (plan->t[i].off on). */
static moe_status synth_fill(const synth_plan *plan, uint8_t *scratch_base,
                             uint64_t seed, moe_progress_fn progress, void *ud)
{
    tp_pool *pool = NULL;
    float **rows = NULL;
    int n_threads = synth_n_cpus();
    int64_t max_row = 1;
    double total = 0.0, done = 0.0;
    moe_status st;

    for (size_t i = 0; i < plan->n; i++) {
        if (plan->t[i].ne[0] > max_row)
            max_row = plan->t[i].ne[0];
        total += (double)plan->t[i].nbytes;
    }
    pool = tp_create(n_threads);
    rows = calloc((size_t)n_threads, sizeof *rows);
    if (!pool || !rows) {
        st = moe_fail(MOE_ERR_NOMEM, "synth: cannot start %d threads", n_threads);
        goto out;
    }
    for (int i = 0; i < n_threads; i++) {
        rows[i] = malloc((size_t)max_row * sizeof(float));
        if (!rows[i]) {
            st = moe_fail(MOE_ERR_NOMEM, "synth: out of memory");
            goto out;
        }
    }
    if (progress && !progress(0.0, total, ud)) {
        st = moe_fail(MOE_ERR_CANCELLED, "synth: cancelled");
        goto out;
    }
    for (size_t i = 0; i < plan->n; i++) {
        const synth_tensor *t = &plan->t[i];
        synth_job job;
        job.t = t;
        job.dst = scratch_base + t->off;
        job.row_bytes = quant_row_bytes(t->type, t->ne[0]);
        job.n_rows = t->ne[1] * t->ne[2];
        job.index = (int64_t)i;
        job.seed = seed;
        job.scratch = rows;
        tp_run_chunks(pool, SYNTH_CHUNKS, synth_fill_rows, &job);
        done += (double)t->nbytes;
        if (progress && !progress(done, total, ud)) {
            st = moe_fail(MOE_ERR_CANCELLED, "synth: cancelled");
            goto out;
        }
    }
    st = MOE_OK;
out:
    if (rows)
        for (int i = 0; i < n_threads; i++)
            free(rows[i]);
    free(rows);
    tp_free(pool);
    return st;
}

/* Scratch space for all tensor data: a mapping of an unlinked file next to
 * the target, so the kernel can write it back instead of holding it in RAM
 * when memory is short. */
static moe_status synth_scratch_map(const char *path, size_t size, uint8_t **out)
{
    size_t plen = strlen(path);
    char *name = malloc(plen + 16);
    int fd, e;
    void *m;
    *out = NULL;
    if (!name)
        return moe_fail(MOE_ERR_NOMEM, "synth: out of memory");
    memcpy(name, path, plen);
    memcpy(name + plen, ".synth.XXXXXX", 14);
    fd = mkstemp(name);
    if (fd < 0) {
        moe_status st = moe_fail(MOE_ERR_IO, "cannot create a scratch file next "
                                 "to '%s': %s", path, strerror(errno));
        free(name);
        return st;
    }
    unlink(name);
    free(name);
    /* reserve the blocks now: a full disk is an error here, not a SIGBUS
     * when a page of the mapping is first written */
    e = posix_fallocate(fd, 0, (off_t)size);
    if (e == EINVAL || e == EOPNOTSUPP)
        e = ftruncate(fd, (off_t)size) == 0 ? 0 : errno;
    if (e != 0) {
        close(fd);
        return moe_fail(MOE_ERR_IO, "cannot size a %zu-byte scratch file next to "
                        "'%s': %s", size, path, strerror(e));
    }
    m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return moe_fail(MOE_ERR_IO, "cannot map a %zu-byte scratch file: %s", size,
                        strerror(errno));
    *out = m;
    return MOE_OK;
}

moe_status synth_write(const synth_shape *shape, moe_type type, uint64_t seed,
                       const char *path, moe_progress_fn progress, void *ud)
{
    synth_vocab vocab = { 0 };
    synth_plan plan = { 0 };
    gguf_writer *w = NULL;
    uint8_t *scratch = NULL;
    size_t size = 0;
    moe_status st;

    if (!shape || !path || !*path)
        return moe_fail(MOE_ERR_INVALID_ARG, "synth: NULL argument");
    if (!synth_weight_type_ok(type))
        return moe_fail(MOE_ERR_UNSUPPORTED, "synth: weight type '%s' not supported "
                        "(f32, f16, bf16, q4_0, q4_1, q5_0, q5_1, q8_0, q2_k..q6_k)",
                        quant_type_name((int)type));
    if ((st = synth_check_shape(shape)) != MOE_OK)
        return st;
    if ((st = synth_vocab_build(&vocab, shape->n_vocab)) != MOE_OK)
        return st;
    if ((st = synth_plan_build(shape, type, &plan)) != MOE_OK)
        goto out;
    /* scratch layout: each tensor 64-byte aligned */
    for (size_t i = 0; i < plan.n; i++) {
        synth_tensor *t = &plan.t[i];
        size_t rows = (size_t)(t->ne[1] * t->ne[2]);
        if (!util_mul_size(quant_row_bytes(t->type, t->ne[0]), rows, &t->nbytes) ||
            !util_add_size(size, 63, &size)) {
            st = moe_fail(MOE_ERR_NOMEM, "synth: model size overflows");
            goto out;
        }
        size &= ~(size_t)63;
        t->off = size;
        if (!util_add_size(size, t->nbytes, &size)) {
            st = moe_fail(MOE_ERR_NOMEM, "synth: model size overflows");
            goto out;
        }
    }
    if ((st = synth_scratch_map(path, size, &scratch)) != MOE_OK)
        goto out;
    if ((st = synth_fill(&plan, scratch, seed, progress, ud)) != MOE_OK)
        goto out;

    w = gguf_writer_new();
    if (!w) {
        st = moe_fail(MOE_ERR_NOMEM, "synth: out of memory");
        goto out;
    }
    if ((st = synth_set_kv(w, shape, type, &vocab)) != MOE_OK)
        goto out;
    for (size_t i = 0; i < plan.n; i++) {
        const synth_tensor *t = &plan.t[i];
        st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne,
                                    scratch + t->off);
        if (st != MOE_OK)
            goto out;
    }
    st = gguf_writer_write(w, path); /* temp file + rename: atomic */
out:
    if (scratch)
        munmap(scratch, size);
    gguf_writer_free(w);
    free(plan.t);
    synth_vocab_free(&vocab);
    return st;
}

/* ---- memory read bandwidth ---------------------------------------------------- */

#define SYNTH_BW_BYTES ((size_t)1 << 30)

typedef struct {
    const float *p;
    size_t n;          /* floats, multiple of 64 */
    double sum;
    const unsigned char *b; /* synth_read_bandwidth_at: bytes to read */
    size_t nb;              /* multiple of 256 */
    uint64_t isum;
} synth_bw_part;

static double synth_sum_scalar(const float *p, size_t n)
{
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < n; i += 4) {
        a0 += p[i];
        a1 += p[i + 1];
        a2 += p[i + 2];
        a3 += p[i + 3];
    }
    return (double)a0 + a1 + a2 + a3;
}


/* Integer kernels for synth_read_bandwidth_at: the bytes are arbitrary
 * (quantized weights), so they are folded with integer adds, which take the
 * same time for every bit pattern (float adds of garbage could hit denormal
 * assists). Loads are unaligned-tolerant; n is a multiple of 256 bytes. */
static uint64_t synth_isum_scalar(const unsigned char *p, size_t n)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, t;
    for (size_t i = 0; i < n; i += 32) {
        memcpy(&t, p + i, 8); a0 += t;
        memcpy(&t, p + i + 8, 8); a1 += t;
        memcpy(&t, p + i + 16, 8); a2 += t;
        memcpy(&t, p + i + 24, 8); a3 += t;
    }
    return a0 + a1 + a2 + a3;
}

__attribute__((target("avx2"))) static uint64_t synth_isum_avx2(const unsigned char *p,
                                                                size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    uint64_t t[4];
    for (size_t i = 0; i < n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_loadu_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_loadu_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_loadu_si256((const __m256i *)(p + i + 96)));
    }
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1),
                                                       _mm256_add_epi64(a2, a3)));
    return t[0] + t[1] + t[2] + t[3];
}

__attribute__((target("avx512f"))) static uint64_t synth_isum_avx512(const unsigned char *p,
                                                                    size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 256) {
        a0 = _mm512_add_epi64(a0, _mm512_loadu_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_loadu_si512(p + i + 64));
        a2 = _mm512_add_epi64(a2, _mm512_loadu_si512(p + i + 128));
        a3 = _mm512_add_epi64(a3, _mm512_loadu_si512(p + i + 192));
    }
    return (uint64_t)_mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1),
                                                              _mm512_add_epi64(a2, a3)));
}

__attribute__((target("avx2"))) static double synth_sum_avx2(const float *p, size_t n)
{
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    float t[8];
    double s = 0.0;
    for (size_t i = 0; i < n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
    }
    _mm256_storeu_ps(t, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int i = 0; i < 8; i++)
        s += t[i];
    return s;
}

__attribute__((target("avx512f"))) static double synth_sum_avx512(const float *p,
                                                                  size_t n)
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_load_ps(p + i));
        a1 = _mm512_add_ps(a1, _mm512_load_ps(p + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_load_ps(p + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_load_ps(p + i + 48));
    }
    return (double)_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1),
                                                      _mm512_add_ps(a2, a3)));
}

static int synth_bw_isa(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        return 2;
    if (__builtin_cpu_supports("avx2"))
        return 1;
    return 0;
}

static void *synth_bw_touch(void *arg)
{
    synth_bw_part *pt = arg;
    float *p = (float *)(uintptr_t)pt->p;
    for (size_t i = 0; i < pt->n; i++)
        p[i] = (float)(i & 7) * 0.125f;
    return NULL;
}

static void *synth_bw_read(void *arg)
{
    synth_bw_part *pt = arg;
    switch (synth_bw_isa()) {
    case 2: pt->sum = synth_sum_avx512(pt->p, pt->n); break;
    case 1: pt->sum = synth_sum_avx2(pt->p, pt->n); break;
    default: pt->sum = synth_sum_scalar(pt->p, pt->n); break;
    }
    return NULL;
}

static void *synth_bw_iread(void *arg)
{
    synth_bw_part *pt = arg;
    switch (synth_bw_isa()) {
    case 2: pt->isum = synth_isum_avx512(pt->b, pt->nb); break;
    case 1: pt->isum = synth_isum_avx2(pt->b, pt->nb); break;
    default: pt->isum = synth_isum_scalar(pt->b, pt->nb); break;
    }
    return NULL;
}

/* Run fn on every part with one thread each (the caller runs part 0). */
static bool synth_bw_run(synth_bw_part *parts, int n, void *(*fn)(void *))
{
    pthread_t tid[64];
    int started = 1;
    bool ok = true;
    for (int i = 1; i < n; i++, started++)
        if (pthread_create(&tid[i], NULL, fn, &parts[i]) != 0) {
            ok = false;
            break;
        }
    fn(&parts[0]);
    for (int i = 1; i < started; i++)
        pthread_join(tid[i], NULL);
    return ok;
}

double synth_read_bandwidth(int n_threads)
{
    const size_t n_floats = SYNTH_BW_BYTES / sizeof(float);
    synth_bw_part parts[64];
    float *buf;
    double best = 0.0;
    volatile double sink = 0.0;

    if (n_threads < 1)
        n_threads = 1;
    if (n_threads > 64)
        n_threads = 64;
    buf = mmap(NULL, SYNTH_BW_BYTES, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED)
        return 0.0;
    for (int i = 0; i < n_threads; i++) {
        /* slices in whole 256-byte steps so every kernel sees full blocks */
        size_t a = n_floats / 64 * (size_t)i / (size_t)n_threads * 64;
        size_t b = n_floats / 64 * (size_t)(i + 1) / (size_t)n_threads * 64;
        parts[i].p = buf + a;
        parts[i].n = b - a;
        parts[i].sum = 0.0;
    }
    if (!synth_bw_run(parts, n_threads, synth_bw_touch))
        goto out;
    for (int pass = 0; pass < 3; pass++) {
        double t0 = util_now(), dt;
        if (!synth_bw_run(parts, n_threads, synth_bw_read))
            goto out;
        dt = util_now() - t0;
        for (int i = 0; i < n_threads; i++)
            sink += parts[i].sum;
        if (dt > 0.0 && (double)SYNTH_BW_BYTES / dt / 1e9 > best)
            best = (double)SYNTH_BW_BYTES / dt / 1e9;
    }
out:
    (void)sink;
    munmap(buf, SYNTH_BW_BYTES);
    return best;
}

/* Read bandwidth of the memory that is actually streamed (e.g. a model's
 * weight mapping), in GB/s.
 *
 * What the old probe (best of 3 passes over a fresh 1 GiB buffer) saw:
 * ~29 GB/s in some runs and ~45-50 GB/s in others. Not an artefact of the
 * buffer (it is written first, so no zero pages; THP on or off and 4K or
 * huge pages gave both values; each pass is ~30 ms, far above timer
 * resolution): repeated probes over one fixed region (a model's weight
 * pages) switch between the same two levels in phases lasting seconds, so
 * this VM's bandwidth itself drifts (host contention). A single probe after
 * the benchmark therefore lands in whichever phase is current. Callers that
 * relate a workload to it should probe next to each timed run, over the
 * pages the workload reads (the bench command does, per repetition).
 *
 * Method: the region [p, p+n) is split into n_threads contiguous slices, one
 * per thread, each folded with integer adds (unaligned loads, any bit
 * pattern costs the same). One untimed pass faults pages in and warms the
 * TLB; then timed passes (at least 5, until at least 0.2 s elapsed, at most
 * 31) each read every byte once; the result is the median pass, so a burst
 * or a stall in one pass does not move it. n should be much larger than the
 * last-level cache (otherwise this measures cache bandwidth). Returns 0 on
 * failure or when n < 1 MiB. */
double synth_read_bandwidth_at(const void *p, size_t n, int n_threads)
{
    synth_bw_part parts[64];
    double rate[31], tsum = 0.0;
    volatile uint64_t sink = 0;
    const unsigned char *b = p;
    size_t nblk;
    int np = 0;

    if (!p || n < ((size_t)1 << 20))
        return 0.0;
    if (n_threads < 1)
        n_threads = 1;
    if (n_threads > 64)
        n_threads = 64;
    nblk = n / 256;
    memset(parts, 0, sizeof parts);
    for (int i = 0; i < n_threads; i++) {
        size_t a = nblk * (size_t)i / (size_t)n_threads * 256;
        size_t e = nblk * (size_t)(i + 1) / (size_t)n_threads * 256;
        parts[i].b = b + a;
        parts[i].nb = e - a;
    }
    if (!synth_bw_run(parts, n_threads, synth_bw_iread))
        return 0.0;
    while (np < 31 && (np < 5 || tsum < 0.2)) {
        double t0 = util_now(), dt;
        if (!synth_bw_run(parts, n_threads, synth_bw_iread))
            return 0.0;
        dt = util_now() - t0;
        for (int i = 0; i < n_threads; i++)
            sink += parts[i].isum;
        tsum += dt;
        rate[np++] = dt > 0.0 ? (double)(nblk * 256) / dt / 1e9 : 0.0;
    }
    (void)sink;
    for (int i = 1; i < np; i++) /* insertion sort, np <= 31 */
        for (int j = i; j > 0 && rate[j - 1] > rate[j]; j--) {
            double t = rate[j];
            rate[j] = rate[j - 1];
            rate[j - 1] = t;
        }
    return rate[np / 2];
}
