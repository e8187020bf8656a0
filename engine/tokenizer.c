/*
 * tokenizer.c - vocabularies from GGUF tokenizer.ggml.* metadata and the
 * tokenizers moe-studio runs: SentencePiece-style ("llama": score-ordered
 * bigram merges of UTF-8 characters, byte fallback), byte-level BPE
 * ("gpt2": regex pre-tokenizer named by tokenizer.ggml.pre, rank-ordered
 * merges over GPT-2's byte alphabet) and WordPiece ("bert": lowercase,
 * accents dropped, punctuation and CJK split, greedy longest match).
 * Special-token splitting, add-BOS rules, detokenization.
 *
 * Depends on gguf.h (loading only; everything is copied), unicode.h and
 * libc. Never prints; failures return a status with moe_fail().
 */
#include "config.h"

#include "tokenizer.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"
#include "util.h"

/* GGUF token types (tokenizer.ggml.token_type) */
enum {
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

/* per-token flags */
enum {
    TF_LSTRIP = 1, /* a matched special token eats whitespace to its left */
    TF_RSTRIP = 2, /* ... and to its right */
    TF_EOG = 4,
};

/* ---- pre-tokenizers --------------------------------------------------------
 * The regex lists are the published pre-tokenization patterns of each model
 * family; each pattern splits every segment left by the previous ones. */

typedef enum {
    PRE_DEFAULT,
    PRE_GPT2,
    PRE_LLAMA3,
    PRE_DEEPSEEK_LLM,
    PRE_DEEPSEEK_CODER,
    PRE_DEEPSEEK3,
    PRE_FALCON,
    PRE_STARCODER,
    PRE_QWEN2,
    PRE_BLOOM,
    PRE_VIKING,
    PRE_COUNT
} tok_pre;

#define PRE_MAX_REGEX 6

#define RX_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define RX_LLAMA3_HEAD                                                                     \
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
#define RX_LLAMA3_TAIL " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define RX_CJK "[\xe4\xb8\x80-\xe9\xbe\xa5\xe0\xa0\x80-\xe4\xb8\x80\xea\xb0\x80-\xed\x9f\xbf]+"

static const char *const pre_regex[PRE_COUNT][PRE_MAX_REGEX] = {
    [PRE_DEFAULT] = {"[\\p{P}\\$\\+<=>\\^~\\|]+", RX_GPT2, "\\p{N}+", "[0-9][0-9][0-9]"},
    [PRE_GPT2] = {RX_GPT2},
    [PRE_LLAMA3] = {RX_LLAMA3_HEAD "\\p{N}{1,3}|" RX_LLAMA3_TAIL},
    [PRE_DEEPSEEK_LLM] =
        {
            "[\r\n]",
            "\\s?[A-Za-z\xc2\xb5\xc3\x80-\xc3\x96\xc3\x98-\xc3\xb6\xc3\xb8-\xc6\xba\xc6\xbc-\xc6\xbf"
            "\xc7\x84-\xca\x93\xca\x95-\xca\xaf\xcd\xb0-\xcd\xb3\xcd\xb6\xcd\xb7\xcd\xbb-\xcd\xbd"
            "\xcd\xbf\xce\x86\xce\x88-\xce\x8a\xce\x8c\xce\x8e-\xce\xa1\xce\xa3-\xcf\xb5\xcf\xb7-"
            "\xd2\x81\xd2\x8a-\xd4\xaf\xd4\xb1-\xd5\x96\xe1\x82\xa0-\xe1\x83\x85\xe1\x8e\xa0-\xe1"
            "\x8f\xb5\xe1\x8f\xb8-\xe1\x8f\xbd\xe1\xb2\x90-\xe1\xb2\xba\xe1\xb2\xbd-\xe1\xb2\xbf\xe1"
            "\xb4\x80-\xe1\xb4\xab\xe1\xb5\xab-\xe1\xb5\xb7\xe1\xb5\xb9-\xe1\xb6\x9a\xe1\xb8\x80-\xe1"
            "\xbc\x95\xe1\xbc\x98-\xe1\xbc\x9d\xe1\xbc\xa0-\xe1\xbd\x85\xe1\xbd\x88-\xe1\xbd\x8d\xe1"
            "\xbd\x90-\xe1\xbd\x97\xe1\xbd\x99\xe1\xbd\x9b\xe1\xbd\x9d\xe1\xbd\x9f-\xe1\xbd\xbd\xe1"
            "\xbe\x80-\xe1\xbe\xb4\xe1\xbe\xb6-\xe1\xbe\xbc\xe1\xbe\xbe\xe1\xbf\x82-\xe1\xbf\x84\xe1"
            "\xbf\x86-\xe1\xbf\x8c\xe1\xbf\x90-\xe1\xbf\x93\xe1\xbf\x96-\xe1\xbf\x9b\xe1\xbf\xa0-\xe1"
            "\xbf\xac\xe1\xbf\xb2-\xe1\xbf\xb4\xe1\xbf\xb6-\xe1\xbf\xbc\xe2\x84\x82\xe2\x84\x87\xe2"
            "\x84\x8a-\xe2\x84\x93\xe2\x84\x95\xe2\x84\x99-\xe2\x84\x9d\xe2\x84\xa4\xe2\x84\xa6\xe2"
            "\x84\xa8\xe2\x84\xaa-\xe2\x84\xad\xe2\x84\xaf-\xe2\x84\xb4\xe2\x84\xb9\xe2\x84\xbc-\xe2"
            "\x84\xbf\xe2\x85\x85-\xe2\x85\x89\xe2\x85\x8e\xe2\x86\x83\xe2\x86\x84\xe2\xb0\x80-\xe2"
            "\xb1\xbb\xe2\xb1\xbe-\xe2\xb3\xa4\xe2\xb3\xab-\xe2\xb3\xae\xe2\xb3\xb2\xe2\xb3\xb3\xea"
            "\x99\x80-\xea\x99\xad\xea\x9a\x80-\xea\x9a\x9b\xea\x9c\xa2-\xea\x9d\xaf\xea\x9d\xb1-\xea"
            "\x9e\x87\xea\x9e\x8b-\xea\x9e\x8e\xea\xad\xb0-\xea\xae\xbf\xef\xac\x80-\xef\xac\x86\xef"
            "\xac\x93-\xef\xac\x97\xef\xbc\xa1-\xef\xbc\xba\xef\xbd\x81-\xef\xbd\x9a\xf0\x90\x90\x80-"
            "\xf0\x90\x91\x8f\xf0\x90\x92\xb0-\xf0\x90\x93\x93\xf0\x90\x93\x98-\xf0\x90\x93\xbb\xf0"
            "\x90\xb2\x80-\xf0\x90\xb2\xb2\xf0\x90\xb3\x80-\xf0\x90\xb3\xb2\xf0\x91\xa2\xa0-\xf0\x91"
            "\xa3\x9f\xf0\x9e\xa4\x80-\xf0\x9e\xa5\x83]+",
            "\\s?[!-/:-~\xef\xbc\x81-\xef\xbc\x8f\xef\xbc\x9a-\xef\xbd\x9e\xe2\x80\x98-\xe2\x80\x9f"
            "\xe3\x80\x80-\xe3\x80\x82]+",
            "\\s+$",
            RX_CJK,
            "\\p{N}+",
        },
    [PRE_DEEPSEEK_CODER] = {"[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", RX_CJK, "\\p{N}"},
    [PRE_DEEPSEEK3] =
        {
            "\\p{N}{1,3}",
            "[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-\xe3\x83\xbf]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"
            "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
        },
    [PRE_FALCON] = {"[\\p{P}\\$\\+<=>\\^~\\|`]+", RX_GPT2, "[0-9][0-9][0-9]"},
    [PRE_STARCODER] = {"\\p{N}", RX_GPT2},
    [PRE_QWEN2] = {RX_LLAMA3_HEAD "\\p{N}|" RX_LLAMA3_TAIL},
    [PRE_BLOOM] = {" ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4"
                   "\xdb\x94\xd8\x8c)]+"},
    [PRE_VIKING] = {" ?[^(\\s|.,!?\xe2\x80\xa6\xe3\x80\x82\xef\xbc\x8c\xe3\x80\x81\xe0\xa5\xa4"
                    "\xdb\x94\xd8\x8c)]+",
                    "\\p{N}"},
};

static const struct {
    const char *name;
    tok_pre pre;
} pre_names[] = {
    {"default", PRE_DEFAULT},
    {"gpt-2", PRE_GPT2},
    {"mpt", PRE_GPT2},
    {"olmo", PRE_GPT2},
    {"phi-2", PRE_GPT2},
    {"jais", PRE_GPT2},
    {"roberta-bpe", PRE_GPT2},
    {"llama3", PRE_LLAMA3},
    {"llama-v3", PRE_LLAMA3},
    {"llama-bpe", PRE_LLAMA3},
    {"falcon3", PRE_LLAMA3},
    {"dbrx", PRE_LLAMA3},
    {"smaug-bpe", PRE_LLAMA3},
    {"chatglm-bpe", PRE_LLAMA3},
    {"deepseek-llm", PRE_DEEPSEEK_LLM},
    {"deepseek-coder", PRE_DEEPSEEK_CODER},
    {"deepseek-v3", PRE_DEEPSEEK3},
    {"falcon", PRE_FALCON},
    {"starcoder", PRE_STARCODER},
    {"refact", PRE_STARCODER},
    {"command-r", PRE_STARCODER},
    {"smollm", PRE_STARCODER},
    {"codeshell", PRE_STARCODER},
    {"exaone", PRE_STARCODER},
    {"qwen2", PRE_QWEN2},
    {"stablelm2", PRE_QWEN2},
    {"deepseek-r1-qwen", PRE_QWEN2},
    {"bloom", PRE_BLOOM},
    {"poro-chat", PRE_BLOOM},
    {"gpt3-finnish", PRE_BLOOM},
    {"viking", PRE_VIKING},
};

/* ---- the vocabulary ------------------------------------------------------ */

typedef struct {
    uint64_t key;   /* left id << 32 | right id; 0 = empty slot (ids shifted by 1) */
    int32_t rank;
    int32_t result; /* id of the merged token */
} tok_merge;

struct tok_vocab {
    tok_kind kind;
    int32_t n_vocab;

    char *text;          /* all token texts, each NUL-terminated */
    size_t *text_off;    /* [n_vocab + 1] */
    char *piece;         /* detokenized bytes of each token */
    size_t *piece_off;   /* [n_vocab + 1] */
    float *score;        /* [n_vocab] */
    uint8_t *type;       /* [n_vocab] */
    uint8_t *flags;      /* [n_vocab] TF_* */

    int32_t *tmap;       /* open-addressing text -> id, -1 empty */
    size_t tmap_mask;

    tok_merge *merges;   /* open-addressing pair -> rank */
    size_t merges_mask;

    int32_t byte_tok[256]; /* SPM: <0xXX>; BPE: the byte's mapped character; -1 none */
    char byte_utf8[256][4]; /* BPE: the byte's mapped character, UTF-8 */
    uint8_t byte_utf8_len[256];

    tok_pre pre;
    unicode_regex *re[PRE_MAX_REGEX];
    int n_re;
    bool ignore_merges;
    bool add_space_prefix;
    bool spm_split_ok;   /* no token has U+2581 after another character */
    size_t max_token_len; /* WPM: longest token text in bytes */

    int32_t bos, eos, unk, eot, eom;
    bool add_bos, add_eos;

    int32_t *special;    /* control/user-defined/unknown ids, longest text first */
    size_t n_special;
    size_t *special_lens; /* distinct special text lengths */
    size_t n_special_lens;
    uint8_t special_first[256 / 8];      /* bitmap of first bytes of 1-byte specials */
    uint8_t *special_pair;               /* bitmap [65536/8] of 2-byte prefixes */
};

static inline size_t tlen(const tok_vocab *v, int32_t id)
{
    return v->text_off[id + 1] - v->text_off[id] - 1;
}

static inline const char *ttext(const tok_vocab *v, int32_t id)
{
    return v->text + v->text_off[id];
}

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

/* id of the token whose text is s[0..n), or -1 */
static int32_t tok_lookup(const tok_vocab *v, const char *s, size_t n)
{
    size_t i = (size_t)hash_bytes(s, n) & v->tmap_mask;
    for (;;) {
        int32_t id = v->tmap[i];
        if (id < 0)
            return -1;
        if (tlen(v, id) == n && memcmp(ttext(v, id), s, n) == 0)
            return id;
        i = (i + 1) & v->tmap_mask;
    }
}

static uint64_t hash_pair(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return k;
}

static const tok_merge *merge_find(const tok_vocab *v, int32_t l, int32_t r)
{
    if (!v->merges || l < 0 || r < 0)
        return NULL;
    uint64_t key = ((uint64_t)(uint32_t)(l + 1) << 32) | (uint32_t)(r + 1);
    size_t i = (size_t)hash_pair(key) & v->merges_mask;
    for (;;) {
        const tok_merge *m = &v->merges[i];
        if (m->key == 0)
            return NULL;
        if (m->key == key)
            return m;
        i = (i + 1) & v->merges_mask;
    }
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

void tok_free(tok_vocab *v)
{
    if (!v)
        return;
    free(v->text);
    free(v->text_off);
    free(v->piece);
    free(v->piece_off);
    free(v->score);
    free(v->type);
    free(v->flags);
    free(v->tmap);
    free(v->merges);
    for (int i = 0; i < v->n_re; i++)
        unicode_regex_free(v->re[i]);
    free(v->special);
    free(v->special_lens);
    free(v->special_pair);
    free(v);
}

/* integer array element j of kv i, any integer element type */
static bool arr_int(const gguf_ctx *g, int64_t i, uint64_t j, int64_t *out)
{
    const unsigned char *d = gguf_arr_data(g, i);
    if (!d)
        return false;
    switch (gguf_arr_type(g, i)) {
    case GGUF_TYPE_INT8: *out = (int8_t)d[j]; return true;
    case GGUF_TYPE_UINT8: *out = d[j]; return true;
    case GGUF_TYPE_INT16: { int16_t x; memcpy(&x, d + 2 * j, 2); *out = x; return true; }
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, d + 2 * j, 2); *out = x; return true; }
    case GGUF_TYPE_INT32: { int32_t x; memcpy(&x, d + 4 * j, 4); *out = x; return true; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, d + 4 * j, 4); *out = x; return true; }
    case GGUF_TYPE_INT64: { int64_t x; memcpy(&x, d + 8 * j, 8); *out = x; return true; }
    case GGUF_TYPE_UINT64: { uint64_t x; memcpy(&x, d + 8 * j, 8); *out = (int64_t)x; return true; }
    default: return false;
    }
}

/* optional token id key: -1 when absent; error when out of range */
static moe_status load_id(const gguf_ctx *g, const tok_vocab *v, const char *key, int32_t *out)
{
    int64_t x;
    *out = -1;
    if (gguf_find_key(g, key) < 0)
        return MOE_OK;
    if (!gguf_get_int(g, key, &x))
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: %s is not an integer", key);
    if (x < 0 || x >= v->n_vocab) {
        /* a few converters write -1 or out-of-range ids for "none" */
        return MOE_OK;
    }
    *out = (int32_t)x;
    return MOE_OK;
}

/* The string array under key: its index in *ki and its length in *n; an
 * error naming the problem when it is missing (message `missing`) or is
 * not an array of strings. */
static moe_status str_array(const gguf_ctx *g, const char *key, const char *missing, int64_t *ki,
                            uint64_t *n)
{
    *ki = gguf_find_key(g, key);
    if (*ki < 0)
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: %s", missing);
    if (gguf_kv_type(g, *ki) != GGUF_TYPE_ARRAY || gguf_arr_type(g, *ki) != GGUF_TYPE_STRING)
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: %s is not a string array", key);
    *n = gguf_arr_n(g, *ki);
    return MOE_OK;
}

static moe_status load_tokens(const gguf_ctx *g, tok_vocab *v)
{
    int64_t ki;
    uint64_t n;
    moe_status st = str_array(g, "tokenizer.ggml.tokens", "tokenizer.ggml.tokens missing", &ki, &n);
    if (st != MOE_OK)
        return st;
    if (n == 0 || n > (uint64_t)INT32_MAX - 1)
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: %llu tokens is out of range",
                        (unsigned long long)n);
    v->n_vocab = (int32_t)n;

    size_t total = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t len;
        if (!gguf_arr_str(g, ki, j, &len))
            return moe_fail(MOE_ERR_FORMAT, "tokenizer: token %llu unreadable", (unsigned long long)j);
        if (!util_add_size(total, len + 1, &total))
            return moe_fail(MOE_ERR_NOMEM, "tokenizer: token texts too large");
    }
    v->text = malloc(total);
    v->text_off = malloc((n + 1) * sizeof *v->text_off);
    v->score = calloc(n, sizeof *v->score);
    v->type = malloc(n);
    v->flags = calloc(n, 1);
    if (!v->text || !v->text_off || !v->score || !v->type || !v->flags)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory for %llu tokens",
                        (unsigned long long)n);
    size_t off = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t len;
        const char *s = gguf_arr_str(g, ki, j, &len);
        v->text_off[j] = off;
        memcpy(v->text + off, s, len);
        v->text[off + len] = '\0';
        off += len + 1;
    }
    v->text_off[n] = off;

    /* token types (default normal) */
    memset(v->type, TT_NORMAL, n);
    int64_t ti = gguf_find_key(g, "tokenizer.ggml.token_type");
    if (ti >= 0) {
        if (gguf_kv_type(g, ti) != GGUF_TYPE_ARRAY || gguf_arr_n(g, ti) != n)
            return moe_fail(MOE_ERR_FORMAT,
                            "tokenizer: tokenizer.ggml.token_type has %llu entries, want %llu",
                            (unsigned long long)gguf_arr_n(g, ti), (unsigned long long)n);
        for (uint64_t j = 0; j < n; j++) {
            int64_t t;
            if (!arr_int(g, ti, j, &t))
                return moe_fail(MOE_ERR_FORMAT, "tokenizer: token_type is not an integer array");
            if (t < TT_NORMAL || t > TT_BYTE)
                t = TT_NORMAL; /* undefined type: treat as normal */
            v->type[j] = (uint8_t)t;
        }
    }

    int64_t si = gguf_find_key(g, "tokenizer.ggml.scores");
    if (si >= 0) {
        if (gguf_kv_type(g, si) != GGUF_TYPE_ARRAY || gguf_arr_type(g, si) != GGUF_TYPE_FLOAT32 ||
            gguf_arr_n(g, si) != n)
            return moe_fail(MOE_ERR_FORMAT,
                            "tokenizer: tokenizer.ggml.scores is not %llu float32 values",
                            (unsigned long long)n);
        memcpy(v->score, gguf_arr_data(g, si), n * sizeof(float));
    }

    /* text -> id; a later duplicate replaces an earlier one */
    size_t cap = pow2_at_least(2 * n);
    v->tmap = malloc(cap * sizeof *v->tmap);
    if (!v->tmap)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory for the token map");
    memset(v->tmap, 0xff, cap * sizeof *v->tmap);
    v->tmap_mask = cap - 1;
    for (int32_t id = 0; id < v->n_vocab; id++) {
        size_t len = tlen(v, id);
        size_t i = (size_t)hash_bytes(ttext(v, id), len) & v->tmap_mask;
        while (v->tmap[i] >= 0) {
            int32_t o = v->tmap[i];
            if (tlen(v, o) == len && memcmp(ttext(v, o), ttext(v, id), len) == 0)
                break;
            i = (i + 1) & v->tmap_mask;
        }
        v->tmap[i] = id;
    }
    return MOE_OK;
}

static moe_status load_merges(const gguf_ctx *g, tok_vocab *v)
{
    int64_t mi;
    uint64_t n;
    moe_status st = str_array(g, "tokenizer.ggml.merges",
                              "BPE vocabulary without tokenizer.ggml.merges", &mi, &n);
    if (st != MOE_OK)
        return st;
    if (n > (uint64_t)INT32_MAX)
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: too many merges");
    size_t cap = pow2_at_least(2 * (size_t)n + 1);
    v->merges = calloc(cap, sizeof *v->merges);
    if (!v->merges)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory for %llu merges",
                        (unsigned long long)n);
    v->merges_mask = cap - 1;
    char *buf = NULL;
    size_t buf_cap = 0;
    for (uint64_t j = 0; j < n; j++) {
        size_t len;
        const char *s = gguf_arr_str(g, mi, j, &len);
        if (!s)
            continue;
        /* "left right": split at the first space after the first byte */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp)
            continue;
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        int32_t l = tok_lookup(v, s, nl), r = tok_lookup(v, sp + 1, nr);
        if (l < 0 || r < 0)
            continue;
        if (nl + nr > buf_cap) {
            free(buf);
            buf_cap = 2 * (nl + nr);
            buf = malloc(buf_cap);
            if (!buf)
                return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory");
        }
        memcpy(buf, s, nl);
        memcpy(buf + nl, sp + 1, nr);
        int32_t res = tok_lookup(v, buf, nl + nr);
        if (res < 0)
            continue;
        uint64_t key = ((uint64_t)(uint32_t)(l + 1) << 32) | (uint32_t)(r + 1);
        size_t i = (size_t)hash_pair(key) & v->merges_mask;
        while (v->merges[i].key != 0 && v->merges[i].key != key)
            i = (i + 1) & v->merges_mask;
        if (v->merges[i].key == key)
            continue; /* the first (lowest) rank of a duplicate wins */
        v->merges[i].key = key;
        v->merges[i].rank = (int32_t)j;
        v->merges[i].result = res;
    }
    free(buf);
    return MOE_OK;
}

static int parse_byte_token(const char *s, size_t n)
{
    /* "<0xXX>" */
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    int b = 0;
    for (int k = 3; k < 5; k++) {
        char c = s[k];
        int d = c >= '0' && c <= '9' ? c - '0'
              : c >= 'A' && c <= 'F' ? c - 'A' + 10
              : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return -1;
        b = b * 16 + d;
    }
    return b;
}

/* Detokenized bytes of every token, computed once. */
static moe_status build_pieces(tok_vocab *v)
{
    size_t total = v->text_off[v->n_vocab]; /* pieces are never longer than texts + NULs */
    v->piece = malloc(total + 1);
    v->piece_off = malloc(((size_t)v->n_vocab + 1) * sizeof *v->piece_off);
    if (!v->piece || !v->piece_off)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory for pieces");
    size_t off = 0;
    for (int32_t id = 0; id < v->n_vocab; id++) {
        const char *s = ttext(v, id);
        size_t n = tlen(v, id);
        char *o = v->piece + off;
        size_t w = 0;
        v->piece_off[id] = off;
        switch (v->type[id]) {
        case TT_NORMAL:
            if (v->kind != TOK_KIND_BPE) {
                for (size_t i = 0; i < n;) {
                    if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                        o[w++] = ' ';
                        i += 3;
                    } else {
                        o[w++] = s[i++];
                    }
                }
            } else {
                for (size_t i = 0; i < n;) {
                    uint32_t cp;
                    size_t k = unicode_utf8_decode(s + i, n - i, &cp);
                    int b = unicode_cpt_to_byte(cp);
                    if (b >= 0) {
                        o[w++] = (char)b;
                    } else {
                        memcpy(o + w, s + i, k); /* not a byte image: keep as is */
                        w += k;
                    }
                    i += k;
                }
            }
            break;
        case TT_BYTE: {
            int b = parse_byte_token(s, n);
            if (b >= 0) {
                o[w++] = (char)b;
            } else {
                memcpy(o, s, n);
                w = n;
            }
            break;
        }
        case TT_UNUSED:
            break;
        default: /* control, user-defined, unknown: their text */
            memcpy(o, s, n);
            w = n;
            break;
        }
        o[w] = '\0'; /* w <= n, so this fits in the token's own slot */
        off += w + 1;
    }
    v->piece_off[v->n_vocab] = off;
    return MOE_OK;
}

typedef struct {
    size_t len;
    int32_t id;
} len_id;

/* longest text first, then lowest id */
static int cmp_len_id(const void *a, const void *b)
{
    const len_id *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_size_desc(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x > y ? -1 : x < y;
}

static bool name_contains(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && tolower((unsigned char)p[i]) == needle[i])
            i++;
        if (i == n)
            return true;
    }
    return false;
}

static moe_status build_specials(tok_vocab *v, const gguf_ctx *g)
{
    size_t n = 0;
    for (int32_t id = 0; id < v->n_vocab; id++) {
        uint8_t t = v->type[id];
        if ((t == TT_CONTROL || t == TT_USER || t == TT_UNKNOWN) && tlen(v, id) > 0)
            n++;
    }
    v->special = malloc((n ? n : 1) * sizeof *v->special);
    v->special_lens = malloc((n ? n : 1) * sizeof *v->special_lens);
    v->special_pair = calloc(65536 / 8, 1);
    if (!v->special || !v->special_lens || !v->special_pair)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory");
    for (int32_t id = 0; id < v->n_vocab; id++) {
        uint8_t t = v->type[id];
        if ((t == TT_CONTROL || t == TT_USER || t == TT_UNKNOWN) && tlen(v, id) > 0)
            v->special[v->n_special++] = id;
    }
    len_id *tmp = malloc((n ? n : 1) * sizeof *tmp);
    if (!tmp)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < v->n_special; i++)
        tmp[i] = (len_id){tlen(v, v->special[i]), v->special[i]};
    qsort(tmp, v->n_special, sizeof *tmp, cmp_len_id);
    for (size_t i = 0; i < v->n_special; i++)
        v->special[i] = tmp[i].id;
    free(tmp);
    for (size_t i = 0; i < v->n_special; i++) {
        int32_t id = v->special[i];
        size_t len = tlen(v, id);
        const unsigned char *s = (const unsigned char *)ttext(v, id);
        if (len == 1)
            v->special_first[s[0] / 8] |= (uint8_t)(1u << (s[0] % 8));
        else
            v->special_pair[(s[0] << 8 | s[1]) / 8] |= (uint8_t)(1u << ((s[0] << 8 | s[1]) % 8));
        bool seen = false;
        for (size_t k = 0; k < v->n_special_lens; k++)
            seen |= v->special_lens[k] == len;
        if (!seen)
            v->special_lens[v->n_special_lens++] = len;
    }
    qsort(v->special_lens, v->n_special_lens, sizeof *v->special_lens, cmp_size_desc);

    /* Whitespace-stripping rules the reference runtime keys on names (they
     * are not in the file): Phi-3's special tokens swallow whitespace after
     * them, except <unk>, <s> and <|endoftext|>; some BERT-family masks
     * swallow whitespace before them. */
    const char *name = gguf_get_str(g, "general.name");
    const char *pre = gguf_get_str(g, "tokenizer.ggml.pre");
    const char *arch = gguf_get_str(g, "general.architecture");
    const char *mask = NULL;
    if ((pre && (name_contains(pre, "jina-v2-de") || name_contains(pre, "jina-v2-es") ||
                 name_contains(pre, "jina-v2-code"))) ||
        (arch && (name_contains(arch, "nomic-bert-moe") || name_contains(arch, "jina-bert-v3")))) {
        mask = "<mask>";
    } else if (name && (name_contains(name, "phi-3") || name_contains(name, "phi3"))) {
        for (size_t i = 0; i < v->n_special; i++)
            v->flags[v->special[i]] |= TF_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (size_t k = 0; k < sizeof keep / sizeof keep[0]; k++) {
            int32_t id = tok_lookup(v, keep[k], strlen(keep[k]));
            if (id >= 0)
                v->flags[id] &= (uint8_t)~TF_RSTRIP;
        }
    } else if (name && name_contains(name, "modern-bert")) {
        mask = "[MASK]";
    }
    if (mask) {
        int32_t id = tok_lookup(v, mask, strlen(mask));
        if (id >= 0)
            v->flags[id] |= TF_LSTRIP;
    }
    return MOE_OK;
}

static void build_eog(tok_vocab *v)
{
    static const char *const eog_texts[] = {
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|eom_id|>",
        "<EOT>", "<|END_OF_TURN_TOKEN|>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    };
    if (v->eos >= 0)
        v->flags[v->eos] |= TF_EOG;
    if (v->eot >= 0)
        v->flags[v->eot] |= TF_EOG;
    if (v->eom >= 0)
        v->flags[v->eom] |= TF_EOG;
    for (size_t k = 0; k < sizeof eog_texts / sizeof eog_texts[0]; k++) {
        int32_t id = tok_lookup(v, eog_texts[k], strlen(eog_texts[k]));
        if (id >= 0 && (v->type[id] == TT_CONTROL || v->type[id] == TT_USER))
            v->flags[id] |= TF_EOG;
    }
}

static bool is_ws_mark(const char *s)
{
    return memcmp(s, "\xe2\x96\x81", 3) == 0;
}

/* The SPM merge order is global, but a merge never joins symbols across a
 * point that no token spans. When no token contains U+2581 right after
 * another character, the escaped text can be cut before every U+2581 that
 * follows something else, and the pieces merged one at a time with the
 * same result (and a small, cache-friendly heap). */
static bool spm_words_independent(const tok_vocab *v)
{
    for (int32_t id = 0; id < v->n_vocab; id++) {
        const char *t = ttext(v, id);
        size_t n = tlen(v, id);
        for (size_t k = 1; k + 3 <= n; k++)
            if (is_ws_mark(t + k) && (k < 3 || !is_ws_mark(t + k - 3)))
                return false;
    }
    return true;
}

static moe_status unknown_pre(const char *pre)
{
    char list[1024];
    size_t w = 0;
    list[0] = '\0';
    for (size_t i = 0; i < sizeof pre_names / sizeof pre_names[0]; i++) {
        int k = snprintf(list + w, sizeof list - w, "%s%s", i ? ", " : "", pre_names[i].name);
        if (k < 0 || (size_t)k >= sizeof list - w)
            break;
        w += (size_t)k;
    }
    return moe_fail(MOE_ERR_UNSUPPORTED,
                    "tokenizer: unknown pre-tokenizer tokenizer.ggml.pre = \"%s\" (supported: %s)",
                    pre, list);
}

moe_status tok_load(const gguf_ctx *g, tok_vocab **out)
{
    moe_status st;
    *out = NULL;
    const char *model = gguf_get_str(g, "tokenizer.ggml.model");
    if (!model)
        return moe_fail(MOE_ERR_FORMAT, "tokenizer: tokenizer.ggml.model missing");
    tok_kind kind;
    if (strcmp(model, "llama") == 0)
        kind = TOK_KIND_SPM;
    else if (strcmp(model, "gpt2") == 0)
        kind = TOK_KIND_BPE;
    else if (strcmp(model, "bert") == 0)
        kind = TOK_KIND_WPM;
    else
        return moe_fail(MOE_ERR_UNSUPPORTED,
                        "tokenizer: unsupported tokenizer.ggml.model \"%s\" (supported: llama, "
                        "gpt2, bert)",
                        model);

    /* resolve the pre-tokenizer before allocating anything */
    tok_pre pre = PRE_DEFAULT;
    if (kind == TOK_KIND_BPE) {
        const char *pname = gguf_get_str(g, "tokenizer.ggml.pre");
        if (pname) {
            size_t i, n = sizeof pre_names / sizeof pre_names[0];
            for (i = 0; i < n; i++)
                if (strcmp(pname, pre_names[i].name) == 0)
                    break;
            if (i == n)
                return unknown_pre(pname);
            pre = pre_names[i].pre;
        }
    }

    tok_vocab *v = calloc(1, sizeof *v);
    if (!v)
        return moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory");
    v->kind = kind;
    v->pre = pre;
    if ((st = load_tokens(g, v)) != MOE_OK)
        goto fail;
    if (kind == TOK_KIND_BPE && (st = load_merges(g, v)) != MOE_OK)
        goto fail;

    if ((st = load_id(g, v, "tokenizer.ggml.bos_token_id", &v->bos)) != MOE_OK ||
        (st = load_id(g, v, "tokenizer.ggml.eos_token_id", &v->eos)) != MOE_OK ||
        (st = load_id(g, v, "tokenizer.ggml.unknown_token_id", &v->unk)) != MOE_OK ||
        (st = load_id(g, v, "tokenizer.ggml.eot_token_id", &v->eot)) != MOE_OK ||
        (st = load_id(g, v, "tokenizer.ggml.eom_token_id", &v->eom)) != MOE_OK)
        goto fail;

    if (kind == TOK_KIND_WPM) {
        /* BERT frames inputs as [CLS] ... [SEP] */
        int32_t cls, sep;
        if ((st = load_id(g, v, "tokenizer.ggml.cls_token_id", &cls)) != MOE_OK ||
            (st = load_id(g, v, "tokenizer.ggml.seperator_token_id", &sep)) != MOE_OK)
            goto fail;
        if (v->bos < 0)
            v->bos = cls;
        if (v->eos < 0)
            v->eos = sep;
        for (int32_t id = 0; id < v->n_vocab; id++)
            if (tlen(v, id) > v->max_token_len)
                v->max_token_len = tlen(v, id);
    }

    v->add_bos = kind != TOK_KIND_BPE;
    v->add_eos = kind == TOK_KIND_WPM;
    v->add_space_prefix = kind == TOK_KIND_SPM;
    bool b;
    if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b))
        v->add_bos = b;
    if (gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b))
        v->add_eos = b;
    if (gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &b))
        v->add_space_prefix = b;
    if (v->bos < 0)
        v->add_bos = false;

    /* byte tokens */
    for (int k = 0; k < 256; k++) {
        v->byte_tok[k] = -1;
        if (kind == TOK_KIND_SPM) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", k);
            v->byte_tok[k] = tok_lookup(v, name, 6);
        } else {
            size_t n = unicode_utf8_encode(unicode_byte_to_cpt((uint8_t)k), v->byte_utf8[k]);
            v->byte_utf8_len[k] = (uint8_t)n;
            v->byte_tok[k] = tok_lookup(v, v->byte_utf8[k], n);
        }
    }

    if (kind == TOK_KIND_SPM)
        v->spm_split_ok = spm_words_independent(v);
    if (kind == TOK_KIND_BPE) {
        for (int i = 0; i < PRE_MAX_REGEX && pre_regex[pre][i]; i++) {
            if ((st = unicode_regex_compile(pre_regex[pre][i], &v->re[i])) != MOE_OK)
                goto fail;
            v->n_re = i + 1;
        }
        v->ignore_merges = pre == PRE_LLAMA3;
    }

    if ((st = build_pieces(v)) != MOE_OK || (st = build_specials(v, g)) != MOE_OK)
        goto fail;
    build_eog(v);
    *out = v;
    return MOE_OK;
fail:
    tok_free(v);
    return st;
}

tok_kind tok_get_kind(const tok_vocab *v) { return v->kind; }
int32_t tok_n_vocab(const tok_vocab *v) { return v->n_vocab; }
int32_t tok_bos(const tok_vocab *v) { return v->bos; }
int32_t tok_eos(const tok_vocab *v) { return v->eos; }
bool tok_add_bos(const tok_vocab *v) { return v->add_bos; }
bool tok_add_eos(const tok_vocab *v) { return v->add_eos; }
bool tok_add_space_prefix(const tok_vocab *v) { return v->add_space_prefix; }

bool tok_is_eog(const tok_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n_vocab && (v->flags[id] & TF_EOG);
}

bool tok_is_special(const tok_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n_vocab && (v->type[id] == TT_CONTROL || v->type[id] == TT_USER);
}

int tok_type(const tok_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n_vocab ? v->type[id] : 0;
}

float tok_score(const tok_vocab *v, int32_t id)
{
    return id >= 0 && id < v->n_vocab ? v->score[id] : 0.0f;
}

const char *tok_piece(const tok_vocab *v, int32_t id, size_t *len)
{
    if (id < 0 || id >= v->n_vocab) {
        if (len)
            *len = 0;
        return "";
    }
    if (len)
        *len = v->piece_off[id + 1] - v->piece_off[id] - 1;
    return v->piece + v->piece_off[id];
}

const char *tok_text(const tok_vocab *v, int32_t id)
{
    if (id < 0 || id >= v->n_vocab)
        return "";
    return ttext(v, id);
}

/* ---- encoding ------------------------------------------------------------ */

typedef struct {
    int32_t *v;
    size_t n, cap;
    bool oom;
} ibuf;

static void ib_push(ibuf *b, int32_t x)
{
    int32_t *nv = util_room(b->v, &b->cap, b->n, sizeof *nv, 64);
    if (!nv) {
        b->oom = true;
        return;
    }
    b->v = nv;
    b->v[b->n++] = x;
}

/* a span of the input: raw text (id < 0) or a matched special token */
typedef struct {
    size_t off, len;
    int32_t id;
} frag;

typedef struct {
    frag *v;
    size_t n, cap;
} fbuf;

static bool fb_push(fbuf *b, size_t off, size_t len, int32_t id)
{
    frag *nv = util_room(b->v, &b->cap, b->n, sizeof *nv, 16);
    if (!nv)
        return false;
    b->v = nv;
    b->v[b->n++] = (frag){off, len, id};
    return true;
}

/* first occurrence of needle (nl >= 1 bytes) in hay[0..n), or NULL */
static const char *find_bytes(const char *hay, size_t n, const char *needle, size_t nl)
{
    const char *p = hay, *end = hay + n;
    while ((size_t)(end - p) >= nl) {
        p = memchr(p, needle[0], (size_t)(end - p) - nl + 1);
        if (!p)
            return NULL;
        if (memcmp(p, needle, nl) == 0)
            return p;
        p++;
    }
    return NULL;
}

static bool special_allowed(const tok_vocab *v, int32_t id, bool parse_special)
{
    /* user-defined tokens always split the text; control/unknown only on request */
    return parse_special || v->type[id] == TT_USER;
}

/* Split text into raw spans and special tokens: specials are taken longest
 * text first, each one at its leftmost non-overlapping occurrences in the
 * raw spans left by the longer ones. */
static bool partition(const tok_vocab *v, const char *text, size_t len, bool parse_special,
                      fbuf *out)
{
    out->n = 0;
    if (len == 0)
        return true;
    if (!fb_push(out, 0, len, -1))
        return false;
    if (v->n_special == 0)
        return true;

    /* which specials occur anywhere at all (cheap prefilter) */
    uint8_t *occurs = NULL;
    const unsigned char *u = (const unsigned char *)text;
    bool any = false;
    for (size_t i = 0; i < len; i++) {
        bool c1 = v->special_first[u[i] / 8] & (1u << (u[i] % 8));
        bool c2 = i + 1 < len && (v->special_pair[(u[i] << 8 | u[i + 1]) / 8] &
                                  (1u << ((u[i] << 8 | u[i + 1]) % 8)));
        if (!c1 && !c2)
            continue;
        for (size_t k = 0; k < v->n_special_lens; k++) {
            size_t l = v->special_lens[k];
            if (l > len - i || (l == 1 && !c1) || (l > 1 && !c2))
                continue;
            int32_t id = tok_lookup(v, text + i, l);
            if (id < 0 || (v->type[id] != TT_CONTROL && v->type[id] != TT_USER &&
                           v->type[id] != TT_UNKNOWN) ||
                !special_allowed(v, id, parse_special))
                continue;
            if (!occurs) {
                occurs = calloc((size_t)v->n_vocab / 8 + 1, 1);
                if (!occurs)
                    return false;
            }
            occurs[id / 8] |= (uint8_t)(1u << (id % 8));
            any = true;
        }
    }
    if (!any) {
        free(occurs);
        return true;
    }

    fbuf next = {0};
    bool ok = true;
    for (size_t s = 0; s < v->n_special && ok; s++) {
        int32_t id = v->special[s];
        if (!(occurs[id / 8] & (1u << (id % 8))))
            continue;
        const char *tt = ttext(v, id);
        size_t tl = tlen(v, id);
        next.n = 0;
        for (size_t f = 0; f < out->n && ok; f++) {
            frag fr = out->v[f];
            if (fr.id >= 0) {
                ok = fb_push(&next, fr.off, fr.len, fr.id);
                continue;
            }
            size_t off = fr.off, rem = fr.len;
            for (;;) {
                const char *hit = rem >= tl ? find_bytes(text + off, rem, tt, tl) : NULL;
                if (!hit) {
                    if (rem > 0)
                        ok = ok && fb_push(&next, off, rem, -1);
                    break;
                }
                size_t m = (size_t)(hit - text);
                size_t left = m - off;
                if (v->flags[id] & TF_LSTRIP)
                    while (left > 0 && isspace((unsigned char)text[off + left - 1]))
                        left--;
                if (left > 0)
                    ok = ok && fb_push(&next, off, left, -1);
                ok = ok && fb_push(&next, m, tl, id);
                size_t roff = m + tl, rlen = off + rem - roff;
                if (v->flags[id] & TF_RSTRIP)
                    while (rlen > 0 && isspace((unsigned char)text[roff])) {
                        roff++;
                        rlen--;
                    }
                off = roff;
                rem = rlen;
                if (!ok)
                    break;
            }
        }
        fbuf t = *out;
        *out = next;
        next = t;
    }
    free(next.v);
    free(occurs);
    return ok;
}

/* bigram candidates of both tokenizers: SPM orders by score (key = -score),
 * BPE by merge rank; ties go to the leftmost */
typedef struct {
    double key;
    int32_t left, right;
    uint32_t size;   /* bytes of the pair when it was queued */
    int32_t result;
} bigram;

typedef struct {
    bigram *v;
    size_t n, cap;
    bool oom;
} bheap;

static bool bg_before(const bigram *a, const bigram *b)
{
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static void bh_push(bheap *h, bigram x)
{
    bigram *nv = util_room(h->v, &h->cap, h->n, sizeof *nv, 64);
    if (!nv) {
        h->oom = true;
        return;
    }
    h->v = nv;
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(&x, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = x;
}

static bigram bh_pop(bheap *h)
{
    bigram top = h->v[0];
    bigram last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && bg_before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!bg_before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}

/* texts handed to the merge loops are shorter than INT32_MAX / 2 bytes */
typedef struct {
    uint32_t off, n;   /* bytes of the symbol in the working text */
    int32_t prev, next;
    int32_t id;        /* BPE: token id of the symbol (-1 if none) */
} sym;

typedef struct {
    sym *v;
    size_t n, cap;
} sbuf;

static bool sb_reserve(sbuf *b, size_t n)
{
    if (n <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < n)
        cap *= 2;
    sym *nv = realloc(b->v, cap * sizeof *nv);
    if (!nv)
        return false;
    b->v = nv;
    b->cap = cap;
    return true;
}

typedef struct {
    const tok_vocab *v;
    ibuf out;
    bheap heap;
    sbuf syms;
    char *work;         /* SPM: escaped text; BPE: the normalized UTF-8 */
    size_t work_cap;
    uint32_t *cps;
    uint16_t *fl;
    size_t *seg_a, *seg_b;
    size_t cp_cap;
    bool oom;
} enc_state;

static bool grow_work(enc_state *e, size_t n)
{
    if (n <= e->work_cap)
        return true;
    char *w = realloc(e->work, n);
    if (!w)
        return false;
    e->work = w;
    e->work_cap = n;
    return true;
}

static void spm_try_bigram(enc_state *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    const sym *sl = &e->syms.v[l], *sr = &e->syms.v[r];
    uint32_t n = sl->n + sr->n;
    int32_t id = tok_lookup(e->v, e->work + sl->off, n);
    if (id < 0)
        return;
    bh_push(&e->heap, (bigram){-(double)e->v->score[id], l, r, n, id});
}

/* merge symbols [start, end) by score, then emit their tokens */
static void spm_merge(enc_state *e, size_t start, size_t end)
{
    const tok_vocab *v = e->v;
    e->heap.n = 0;
    for (size_t i = start + 1; i < end; i++)
        spm_try_bigram(e, (int32_t)i - 1, (int32_t)i);
    while (e->heap.n > 0 && !e->heap.oom) {
        bigram bg = bh_pop(&e->heap);
        sym *l = &e->syms.v[bg.left], *r = &e->syms.v[bg.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != bg.size)
            continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            e->syms.v[r->next].prev = bg.left;
        spm_try_bigram(e, l->prev, bg.left);
        spm_try_bigram(e, bg.left, l->next);
    }
    if (e->heap.oom) {
        e->oom = true;
        return;
    }
    for (int32_t i = (int32_t)start; i != -1; i = e->syms.v[i].next) {
        const sym *sy = &e->syms.v[i];
        int32_t id = tok_lookup(v, e->work + sy->off, sy->n);
        if (id >= 0) {
            ib_push(&e->out, id);
            continue;
        }
        for (size_t k = 0; k < sy->n; k++) {
            int32_t b = v->byte_tok[(unsigned char)e->work[sy->off + k]];
            if (b < 0)
                b = v->unk;
            if (b >= 0)
                ib_push(&e->out, b);
        }
    }
}

/* SentencePiece BPE over one raw span */
static void spm_tokenize(enc_state *e, const char *s, size_t len, bool prefix_space)
{
    const tok_vocab *v = e->v;
    /* escape: optional leading space, every ' ' -> U+2581 (3 bytes) */
    size_t cap;
    if (!util_mul_size(len + 1, 3, &cap) || !grow_work(e, cap)) {
        e->oom = true;
        return;
    }
    size_t w = 0;
    if (prefix_space) {
        memcpy(e->work + w, "\xe2\x96\x81", 3);
        w += 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(e->work + w, "\xe2\x96\x81", 3);
            w += 3;
        } else {
            e->work[w++] = s[i];
        }
    }
    if (w == 0)
        return;
    if (w > (size_t)INT32_MAX / 2) {
        e->oom = true;
        return;
    }
    /* UTF-8 characters */
    e->syms.n = 0;
    if (!sb_reserve(&e->syms, w)) {
        e->oom = true;
        return;
    }
    for (size_t off = 0; off < w;) {
        size_t n = unicode_utf8_len((unsigned char)e->work[off]);
        if (n > w - off)
            n = w - off;
        int32_t idx = (int32_t)e->syms.n;
        e->syms.v[e->syms.n++] =
            (sym){(uint32_t)off, (uint32_t)n, idx - 1, off + n == w ? -1 : idx + 1, -1};
        off += n;
    }
    /* merge word by word when that is exact (see spm_words_independent) */
    size_t nsym = e->syms.n;
    for (size_t start = 0; start < nsym;) {
        size_t end = start + 1;
        if (v->spm_split_ok) {
            while (end < nsym) {
                size_t off = e->syms.v[end].off;
                if (e->syms.v[end].n == 3 && is_ws_mark(e->work + off) &&
                    (off < 3 || !is_ws_mark(e->work + off - 3)))
                    break;
                end++;
            }
        } else {
            end = nsym;
        }
        e->syms.v[start].prev = -1;
        e->syms.v[end - 1].next = -1;
        spm_merge(e, start, end);
        if (e->oom)
            return;
        start = end;
    }
}

static void bpe_try_bigram(enc_state *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0)
        return;
    const sym *sl = &e->syms.v[l], *sr = &e->syms.v[r];
    const tok_merge *m = merge_find(e->v, sl->id, sr->id);
    if (!m)
        return;
    bh_push(&e->heap, (bigram){(double)m->rank, l, r, sl->n + sr->n, m->result});
}

static void bpe_emit_unmerged(enc_state *e, unsigned char byte)
{
    /* no token for this byte's character: try the bytes of its UTF-8 form */
    const tok_vocab *v = e->v;
    for (size_t k = 0; k < v->byte_utf8_len[byte]; k++) {
        int32_t id = tok_lookup(v, &v->byte_utf8[byte][k], 1);
        if (id >= 0)
            ib_push(&e->out, id);
    }
}

/* one pre-tokenized word (bytes w[0..n)) */
static void bpe_word(enc_state *e, const char *w, size_t n)
{
    const tok_vocab *v = e->v;
    if (v->ignore_merges && n <= 1024) {
        /* a word that is a whole token is taken as is (tokens are shorter
         * than 1024 bytes; each byte is at most 2 bytes once mapped) */
        char buf[2048];
        size_t bl = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char b = (unsigned char)w[i];
            memcpy(buf + bl, v->byte_utf8[b], v->byte_utf8_len[b]);
            bl += v->byte_utf8_len[b];
            if (i + 1 == n) {
                int32_t id = tok_lookup(v, buf, bl);
                if (id >= 0) {
                    ib_push(&e->out, id);
                    return;
                }
            }
        }
    }
    e->syms.n = 0;
    if (!sb_reserve(&e->syms, n)) {
        e->oom = true;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        int32_t idx = (int32_t)i;
        e->syms.v[e->syms.n++] = (sym){(uint32_t)i, 1, idx - 1, i + 1 == n ? -1 : idx + 1,
                                       v->byte_tok[(unsigned char)w[i]]};
    }
    e->heap.n = 0;
    for (size_t i = 1; i < n; i++)
        bpe_try_bigram(e, (int32_t)i - 1, (int32_t)i);
    while (e->heap.n > 0 && !e->heap.oom) {
        bigram bg = bh_pop(&e->heap);
        sym *l = &e->syms.v[bg.left], *r = &e->syms.v[bg.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != bg.size)
            continue;
        l->n += r->n;
        l->id = bg.result;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            e->syms.v[r->next].prev = bg.left;
        bpe_try_bigram(e, l->prev, bg.left);
        bpe_try_bigram(e, bg.left, l->next);
    }
    if (e->heap.oom) {
        e->oom = true;
        return;
    }
    for (int32_t i = 0; i != -1; i = e->syms.v[i].next) {
        const sym *sy = &e->syms.v[i];
        if (sy->id >= 0)
            ib_push(&e->out, sy->id);
        else
            bpe_emit_unmerged(e, (unsigned char)w[sy->off]);
    }
}

static void bpe_tokenize(enc_state *e, const char *s, size_t len)
{
    const tok_vocab *v = e->v;
    if (len == 0)
        return;
    if (len > (size_t)INT32_MAX / 8) {
        e->oom = true;
        return;
    }
    /* code points (invalid UTF-8 -> U+FFFD), their class bits */
    if (len > e->cp_cap) {
        size_t cap = len;
        uint32_t *c = realloc(e->cps, cap * sizeof *c);
        if (c)
            e->cps = c;
        uint16_t *f = realloc(e->fl, cap * sizeof *f);
        if (f)
            e->fl = f;
        size_t *a = realloc(e->seg_a, cap * sizeof *a);
        if (a)
            e->seg_a = a;
        size_t *b = realloc(e->seg_b, cap * sizeof *b);
        if (b)
            e->seg_b = b;
        if (!c || !f || !a || !b) {
            e->oom = true;
            return;
        }
        e->cp_cap = cap;
    }
    size_t ncp = 0;
    bool valid = true;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t k = unicode_utf8_decode(s + i, len - i, &cp);
        if (cp == 0xFFFD && !(k == 3 && memcmp(s + i, "\xef\xbf\xbd", 3) == 0))
            valid = false;
        e->cps[ncp] = cp;
        e->fl[ncp] = unicode_flags(cp);
        ncp++;
        i += k;
    }
    /* the words are re-encoded from the code points: only differs from the
     * input where it was not valid UTF-8 */
    const char *txt = s;
    if (!valid) {
        size_t need;
        if (!util_mul_size(ncp, 4, &need) || !grow_work(e, need)) {
            e->oom = true;
            return;
        }
        size_t w = 0;
        for (size_t i = 0; i < ncp; i++)
            w += unicode_utf8_encode(e->cps[i], e->work + w);
        txt = e->work;
    }
    size_t *segs = e->seg_a, *tmp = e->seg_b, nseg = 1;
    segs[0] = ncp;
    for (int r = 0; r < v->n_re; r++) {
        size_t n2 = unicode_regex_split(v->re[r], e->cps, e->fl, segs, nseg, tmp);
        size_t *t = segs;
        segs = tmp;
        tmp = t;
        nseg = n2;
    }
    size_t cp_pos = 0, byte_pos = 0;
    for (size_t k = 0; k < nseg && !e->oom; k++) {
        size_t nb = 0;
        for (size_t i = cp_pos; i < cp_pos + segs[k]; i++) {
            uint32_t cp = e->cps[i];
            nb += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        }
        bpe_word(e, txt + byte_pos, nb);
        cp_pos += segs[k];
        byte_pos += nb;
    }
}

/* ---- WordPiece ---- */

static bool is_cjk_ideograph(uint32_t cp)
{
    return (cp >= 0x4E00 && cp <= 0x9FFF) || (cp >= 0x3400 && cp <= 0x4DBF) ||
           (cp >= 0x20000 && cp <= 0x2A6DF) || (cp >= 0x2A700 && cp <= 0x2B73F) ||
           (cp >= 0x2B740 && cp <= 0x2B81F) || (cp >= 0x2B920 && cp <= 0x2CEAF) ||
           (cp >= 0xF900 && cp <= 0xFAFF) || (cp >= 0x2F800 && cp <= 0x2FA1F);
}

/* one word w[0..n) (starting with U+2581): greedy longest match, or [UNK]
 * for the whole word when some position matches nothing */
static void wpm_word(enc_state *e, const char *w, size_t n)
{
    const tok_vocab *v = e->v;
    size_t start = e->out.n;
    for (size_t i = 0; i < n;) {
        size_t j = n - i > v->max_token_len ? i + v->max_token_len : n;
        int32_t id = -1;
        for (; j > i; j--)
            if ((id = tok_lookup(v, w + i, j - i)) >= 0)
                break;
        if (id < 0) {
            e->out.n = start;
            break;
        }
        ib_push(&e->out, id);
        i = j;
    }
    if (e->out.n == start && v->unk >= 0)
        ib_push(&e->out, v->unk);
}

static void wpm_tokenize(enc_state *e, const char *s, size_t len)
{
    size_t cap;
    if (!util_mul_size(len + 2, 4, &cap) || !grow_work(e, cap)) {
        e->oom = true;
        return;
    }
    char *w = e->work;
    size_t wl = 3;
    memcpy(w, "\xe2\x96\x81", 3);
    for (size_t i = 0; i < len && !e->oom;) {
        uint32_t cp;
        i += unicode_utf8_decode(s + i, len - i, &cp);
        cp = unicode_nfd_base(cp);
        uint16_t fl = unicode_flags(cp);
        if (fl & UNICODE_FLAG_SPACE) {
            if (wl > 3)
                wpm_word(e, w, wl);
            wl = 3;
            continue;
        }
        if (cp == 0 || cp == 0xFFFD || (fl & (1u << UNICODE_CAT_C)))
            continue;
        char b[4];
        size_t bl = unicode_utf8_encode(unicode_tolower(cp), b);
        if ((fl & (1u << UNICODE_CAT_P)) || (cp < 0x7F && (fl & (1u << UNICODE_CAT_S))) ||
            is_cjk_ideograph(cp)) {
            if (wl > 3)
                wpm_word(e, w, wl);
            memcpy(w + 3, b, bl);
            wpm_word(e, w, 3 + bl);
            wl = 3;
        } else {
            memcpy(w + wl, b, bl);
            wl += bl;
        }
    }
    if (wl > 3)
        wpm_word(e, w, wl);
}

int32_t tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_bos,
                   bool parse_special, int32_t *out, int32_t n_max)
{
    enc_state e = {.v = v};
    fbuf frags = {0};
    int32_t ret;

    if (add_bos && v->bos >= 0)
        ib_push(&e.out, v->bos);
    if (!text)
        len = 0;
    if (!partition(v, text, len, parse_special, &frags)) {
        e.oom = true;
    } else if (v->kind == TOK_KIND_SPM) {
        bool prev_special = true; /* the first span gets the space prefix */
        for (size_t f = 0; f < frags.n && !e.oom; f++) {
            if (frags.v[f].id >= 0) {
                ib_push(&e.out, frags.v[f].id);
                prev_special = true;
            } else {
                spm_tokenize(&e, text + frags.v[f].off, frags.v[f].len,
                             v->add_space_prefix && prev_special);
                prev_special = false;
            }
        }
    } else {
        for (size_t f = 0; f < frags.n && !e.oom; f++) {
            if (frags.v[f].id >= 0)
                ib_push(&e.out, frags.v[f].id);
            else if (v->kind == TOK_KIND_BPE)
                bpe_tokenize(&e, text + frags.v[f].off, frags.v[f].len);
            else
                wpm_tokenize(&e, text + frags.v[f].off, frags.v[f].len);
        }
    }

    if (e.oom || e.out.oom) {
        ret = INT32_MIN;
        moe_fail(MOE_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", len);
    } else if (e.out.n > (size_t)INT32_MAX) {
        ret = INT32_MIN;
        moe_fail(MOE_ERR_INVALID_ARG, "tokenizer: %zu tokens do not fit an int32 count", e.out.n);
    } else if (e.out.n > (size_t)(n_max < 0 ? 0 : n_max)) {
        ret = -(int32_t)e.out.n;
    } else {
        if (e.out.n)
            memcpy(out, e.out.v, e.out.n * sizeof *out);
        ret = (int32_t)e.out.n;
    }
    free(e.out.v);
    free(e.heap.v);
    free(e.syms.v);
    free(e.work);
    free(e.cps);
    free(e.fl);
    free(e.seg_a);
    free(e.seg_b);
    free(frags.v);
    return ret;
}

size_t tok_decode(const tok_vocab *v, const int32_t *ids, size_t n, bool skip_special, char *buf,
                  size_t cap)
{
    size_t w = 0;
    bool first = true;
    bool strip = (v->kind == TOK_KIND_SPM && v->add_space_prefix) || v->kind == TOK_KIND_WPM;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= v->n_vocab)
            continue;
        if (skip_special && (v->type[id] == TT_CONTROL || v->type[id] == TT_UNKNOWN))
            continue;
        size_t len;
        const char *p = tok_piece(v, id, &len);
        if (first && strip && len > 0 && p[0] == ' ') {
            p++;
            len--;
        }
        first = false;
        for (size_t k = 0; k < len; k++, w++)
            if (w < cap)
                buf[w] = p[k];
    }
    if (cap > 0)
        buf[w < cap ? w : cap - 1] = '\0';
    return w;
}
