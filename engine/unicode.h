/*
 * unicode.h - the Unicode facts the tokenizers need: UTF-8 decoding,
 * general categories and White_Space, lowercase and NFD base letters,
 * GPT-2's byte <-> code point mapping,
 * and a small backtracking regex matcher over code points used for BPE
 * pre-tokenization (the subset those patterns use: alternation, (?: ),
 * (?! ), (?= ), classes with \p{L} \p{N} \p{P} \p{S} \p{M} \p{Z} \p{C} \s,
 * greedy ? * + {n,m}, $).
 *
 * Internal to engine/; depends on libc only (and util.h for error detail).
 */
#ifndef MOE_UNICODE_H
#define MOE_UNICODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe.h"

/* Major general categories (values fixed: the generated table uses them). */
typedef enum {
    UNICODE_CAT_UNASSIGNED = 0, /* Cn */
    UNICODE_CAT_L = 1,          /* letters */
    UNICODE_CAT_N = 2,          /* numbers */
    UNICODE_CAT_P = 3,          /* punctuation */
    UNICODE_CAT_S = 4,          /* symbols */
    UNICODE_CAT_M = 5,          /* marks */
    UNICODE_CAT_Z = 6,          /* separators */
    UNICODE_CAT_C = 7,          /* Cc Cf Cs Co */
    UNICODE_CAT_COUNT
} unicode_cat;

/* Class bits of one code point: bit (1 << category), plus UNICODE_FLAG_SPACE
 * for the White_Space property. */
#define UNICODE_FLAG_SPACE (1u << 8)

unicode_cat unicode_category(uint32_t cp);
bool unicode_is_space(uint32_t cp);
uint16_t unicode_flags(uint32_t cp);
/* Simple lowercase (first code point of the full lowercase mapping). */
uint32_t unicode_tolower(uint32_t cp);
/* First code point of the canonical decomposition (NFD), e.g. U+00FC ü ->
 * u; cp itself when it has none. WordPiece uses it to drop accents. */
uint32_t unicode_nfd_base(uint32_t cp);

/* Length of a UTF-8 sequence from its lead byte (1 for continuation bytes). */
size_t unicode_utf8_len(unsigned char lead);
/* Decode one code point from s[0..len) (len >= 1). Invalid or truncated
 * sequences decode as U+FFFD consuming one byte. Returns bytes consumed. */
size_t unicode_utf8_decode(const char *s, size_t len, uint32_t *cp);
/* Encode cp (<= 0x10FFFF) into out; returns the byte count (1-4). */
size_t unicode_utf8_encode(uint32_t cp, char out[4]);

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the others to
 * U+0100 upwards in byte order. */
uint32_t unicode_byte_to_cpt(uint8_t b);
/* Inverse; -1 if cp is not the image of a byte. */
int unicode_cpt_to_byte(uint32_t cp);

/* ---- regex ------------------------------------------------------------- */

typedef struct unicode_regex unicode_regex;

/* Compile a pattern (UTF-8). Unsupported syntax -> MOE_ERR_UNSUPPORTED with
 * a detail naming the offset. The caller frees with unicode_regex_free. */
moe_status unicode_regex_compile(const char *pattern, unicode_regex **out);
void unicode_regex_free(unicode_regex *re);

/* Anchored match of re at pos against cps[0..end) whose class bits are
 * fl[0..end). Returns the end of the match (leftmost-first alternation,
 * greedy quantifiers, as in ECMAScript/PCRE), or SIZE_MAX if none. */
size_t unicode_regex_match(const unicode_regex *re, const uint32_t *cps,
                           const uint16_t *fl, size_t pos, size_t end);

/* One pre-tokenizer pass: every segment (lengths seg_in[0..n_in), covering
 * cps from 0) is searched for non-empty matches left to right; matches and
 * the unmatched gaps between them both become segments, written to seg_out
 * (room for as many entries as there are code points). Returns the count. */
size_t unicode_regex_split(const unicode_regex *re, const uint32_t *cps, const uint16_t *fl,
                           const size_t *seg_in, size_t n_in, size_t *seg_out);

#endif
