/*
 * tokenizer.h - tokenizers read from GGUF metadata: SentencePiece-style
 * ("llama": scores, byte fallback), byte-level BPE ("gpt2": merges, with
 * the pre-tokenizer named by tokenizer.ggml.pre) and WordPiece ("bert":
 * lowercased, accents dropped, greedy longest match). Special tokens,
 * add-BOS rules, detokenization to raw bytes.
 *
 * Depends on gguf.h only for loading; the vocabulary copies what it needs, so
 * it may outlive the gguf_ctx.
 */
#ifndef MOE_TOKENIZER_H
#define MOE_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "moe.h"

typedef struct tok_vocab tok_vocab;

typedef enum {
    TOK_KIND_SPM,  /* tokenizer.ggml.model = "llama" */
    TOK_KIND_BPE,  /* tokenizer.ggml.model = "gpt2" */
    TOK_KIND_WPM,  /* tokenizer.ggml.model = "bert" (WordPiece) */
    TOK_KIND_COUNT
} tok_kind;

/* Load from tokenizer.ggml.* keys. Unknown model or pre-tokenizer -> error
 * naming it. */
moe_status tok_load(const gguf_ctx *g, tok_vocab **out);
void tok_free(tok_vocab *v);

tok_kind tok_get_kind(const tok_vocab *v);
int32_t tok_n_vocab(const tok_vocab *v);
int32_t tok_bos(const tok_vocab *v);  /* -1 if none */
int32_t tok_eos(const tok_vocab *v);  /* -1 if none */
bool tok_add_bos(const tok_vocab *v); /* the vocabulary's add-BOS rule */
bool tok_is_eog(const tok_vocab *v, int32_t id);
bool tok_is_special(const tok_vocab *v, int32_t id); /* control/user-defined */

/* Encode len bytes. add_bos: prepend BOS (if the vocab has one; for
 * WordPiece that is [CLS], and [SEP] is not appended - see tok_add_eos).
 * parse_special: match special-token texts in the input. Returns the count
 * written (<= n_max) or -(count needed) when n_max is too small.
 * (INT32_MIN, with moe_last_error() set, when memory runs out.)
 * User-defined tokens (type 4) split the text even without parse_special. */
int32_t tok_encode(const tok_vocab *v, const char *text, size_t len, bool add_bos,
                   bool parse_special, int32_t *out, int32_t n_max);

/* Raw bytes of one token (special tokens render as their text). */
const char *tok_piece(const tok_vocab *v, int32_t id, size_t *len);
/* The token's text as stored in the vocabulary (e.g. "▁Once", "Ġthe"). */
const char *tok_text(const tok_vocab *v, int32_t id);

/* More of the vocabulary's rules and per-token data. */
bool tok_add_eos(const tok_vocab *v);          /* tokenizer.ggml.add_eos_token */
bool tok_add_space_prefix(const tok_vocab *v); /* SPM: prepend U+2581 */
int tok_type(const tok_vocab *v, int32_t id);  /* GGUF token type 1..6, 0 if bad id */
float tok_score(const tok_vocab *v, int32_t id);

/* Detokenize: concatenate the pieces of ids[0..n) into buf (at most cap
 * bytes, NUL-terminated when cap > 0, truncated if short). skip_special
 * drops control/unknown tokens (e.g. BOS). SPM vocabularies that add a
 * space prefix lose the leading space of the first piece. Returns the full
 * length (excluding the NUL), so a caller can size buf with a first call. */
size_t tok_decode(const tok_vocab *v, const int32_t *ids, size_t n, bool skip_special, char *buf,
                  size_t cap);

#endif
