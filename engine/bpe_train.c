/*
 * bpe_train.c - byte-level BPE tokenizer training (moe_bpe_train): words
 * from the GPT-2 pre-tokenizer pattern (the engine's "gpt-2" pre), counted;
 * then the most frequent adjacent pair (ties: smaller left id, then smaller
 * right id) is merged, repeatedly, with incremental pair counts. Writes a
 * vocabulary-only GGUF the engine's tokenizer loads (tokenizer.ggml.model
 * "gpt2").
 *
 * Depends on unicode (regex, byte <-> code point mapping) and the GGUF
 * writer; knows nothing of models. Never prints.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "unicode.h"
#include "util.h"

#define BPE_RX "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define BPE_FIRST 1 /* token 0 is <|endoftext|>; byte b is token 1 + b */

/* ---- a hash map from byte strings (words) or id pairs to counts ----------- */

typedef struct {
    uint64_t key;  /* pair: (a << 32) | b; word: hash */
    int64_t count;
    int32_t word;  /* words: index into the word list, -1 = empty slot */
} bpe_slot;

typedef struct {
    bpe_slot *s;
    size_t cap, used;
} bpe_map;

static uint64_t bpe_hash(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static bool map_init(bpe_map *m, size_t cap)
{
    m->s = malloc(cap * sizeof *m->s);
    if (!m->s)
        return false;
    for (size_t i = 0; i < cap; i++)
        m->s[i].word = -1;
    m->cap = cap;
    m->used = 0;
    return true;
}

/* Pair map: slot of key (inserted with count 0 if absent). NULL on OOM. */
static bpe_slot *pair_slot(bpe_map *m, uint64_t key)
{
    size_t i;
    if ((m->used + 1) * 2 > m->cap) {
        bpe_map n;
        if (!map_init(&n, m->cap * 2))
            return NULL;
        for (size_t j = 0; j < m->cap; j++)
            if (m->s[j].word >= 0 && m->s[j].count > 0) {
                size_t k = bpe_hash(m->s[j].key) & (n.cap - 1);
                while (n.s[k].word >= 0)
                    k = (k + 1) & (n.cap - 1);
                n.s[k] = m->s[j];
                n.used++;
            }
        free(m->s);
        *m = n;
    }
    i = bpe_hash(key) & (m->cap - 1);
    while (m->s[i].word >= 0 && m->s[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (m->s[i].word < 0) {
        m->s[i].word = 0;
        m->s[i].key = key;
        m->s[i].count = 0;
        m->used++;
    }
    return &m->s[i];
}

/* ---- words --------------------------------------------------------------- */

typedef struct {
    int32_t *sym;   /* symbols of each word, concatenated */
    size_t n_sym, cap_sym;
    size_t *start;  /* [n_words + 1] */
    int32_t *len;   /* [n_words] current length (shrinks with merges) */
    int64_t *count; /* [n_words] occurrences */
    size_t n_words, cap_words;
    bpe_map index;  /* hash of bytes -> word */
} bpe_words;

static uint64_t bytes_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ^ n;
}

static bool word_equal(const bpe_words *w, size_t wi, const char *s, size_t n)
{
    const int32_t *sym = w->sym + w->start[wi];
    if ((size_t)w->len[wi] != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (sym[i] != BPE_FIRST + (unsigned char)s[i])
            return false;
    return true;
}

static bool word_add(bpe_words *w, const char *s, size_t n)
{
    bpe_map *m = &w->index;
    uint64_t h = bytes_hash(s, n);
    size_t i;
    if (n == 0)
        return true;
    if ((m->used + 1) * 2 > m->cap) {
        bpe_map nm;
        if (!map_init(&nm, m->cap * 2))
            return false;
        for (size_t j = 0; j < m->cap; j++)
            if (m->s[j].word >= 0) {
                size_t k = bpe_hash(m->s[j].key) & (nm.cap - 1);
                while (nm.s[k].word >= 0)
                    k = (k + 1) & (nm.cap - 1);
                nm.s[k] = m->s[j];
                nm.used++;
            }
        free(m->s);
        *m = nm;
    }
    i = bpe_hash(h) & (m->cap - 1);
    while (m->s[i].word >= 0) {
        if (m->s[i].key == h && word_equal(w, (size_t)m->s[i].word, s, n)) {
            w->count[m->s[i].word]++;
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
    if (w->n_words + 1 >= w->cap_words) {
        size_t nc = w->cap_words * 2;
        size_t *st = realloc(w->start, (nc + 1) * sizeof *st);
        int32_t *ln;
        int64_t *ct;
        if (st)
            w->start = st;
        ln = realloc(w->len, nc * sizeof *ln);
        if (ln)
            w->len = ln;
        ct = realloc(w->count, nc * sizeof *ct);
        if (ct)
            w->count = ct;
        if (!st || !ln || !ct)
            return false;
        w->cap_words = nc;
    }
    if (w->n_sym + n > w->cap_sym) {
        size_t nc = (w->n_sym + n) * 2;
        int32_t *sy = realloc(w->sym, nc * sizeof *sy);
        if (!sy)
            return false;
        w->sym = sy;
        w->cap_sym = nc;
    }
    w->start[w->n_words] = w->n_sym;
    for (size_t j = 0; j < n; j++)
        w->sym[w->n_sym++] = BPE_FIRST + (unsigned char)s[j];
    w->len[w->n_words] = (int32_t)n;
    w->count[w->n_words] = 1;
    m->s[i].key = h;
    m->s[i].word = (int32_t)w->n_words;
    m->s[i].count = 0;
    m->used++;
    w->n_words++;
    return true;
}

/* Split text with the GPT-2 pattern and count the words. Works in chunks
 * that end at a newline so the buffers stay small. */
static moe_status count_words(const char *text, size_t len, bpe_words *w)
{
    unicode_regex *re = NULL;
    moe_status st = unicode_regex_compile(BPE_RX, &re);
    uint32_t *cps = NULL;
    uint16_t *fl = NULL;
    size_t *sa = NULL, *sb = NULL;
    const size_t chunk = 1 << 16;
    if (st != MOE_OK)
        return st;
    cps = malloc((chunk + 8) * sizeof *cps);
    fl = malloc((chunk + 8) * sizeof *fl);
    sa = malloc((chunk + 8) * sizeof *sa);
    sb = malloc((chunk + 8) * sizeof *sb);
    if (!cps || !fl || !sa || !sb) {
        st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
        goto done;
    }
    for (size_t pos = 0; pos < len;) {
        size_t end = pos + chunk < len ? pos + chunk : len, ncp = 0, nseg;
        if (end < len) {
            size_t e = end;
            while (e > pos && text[e - 1] != '\n')
                e--;
            if (e > pos)
                end = e;
            else /* no newline: cut at a UTF-8 boundary */
                while (end > pos + 1 && ((unsigned char)text[end] & 0xC0) == 0x80)
                    end--;
        }
        for (size_t i = pos; i < end;) {
            uint32_t cp;
            i += unicode_utf8_decode(text + i, end - i, &cp);
            cps[ncp] = cp;
            fl[ncp] = unicode_flags(cp);
            ncp++;
        }
        sa[0] = ncp;
        nseg = unicode_regex_split(re, cps, fl, sa, 1, sb);
        /* words as bytes: re-encode code points (invalid UTF-8 becomes
         * U+FFFD, as the tokenizer does) */
        {
            char buf[4 * 256];
            size_t cp_pos = 0;
            for (size_t k = 0; k < nseg; k++) {
                size_t nb = 0;
                for (size_t i = cp_pos; i < cp_pos + sb[k]; i++) {
                    if (nb + 4 > sizeof buf)
                        break; /* very long words are cut for counting */
                    nb += unicode_utf8_encode(cps[i], buf + nb);
                }
                if (!word_add(w, buf, nb)) {
                    st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
                    goto done;
                }
                cp_pos += sb[k];
            }
        }
        pos = end;
    }
done:
    unicode_regex_free(re);
    free(cps);
    free(fl);
    free(sa);
    free(sb);
    return st;
}

/* ---- training ------------------------------------------------------------- */

static void pair_add(bpe_map *m, int32_t a, int32_t b, int64_t c, bool *oom)
{
    bpe_slot *s = pair_slot(m, ((uint64_t)(uint32_t)a << 32) | (uint32_t)b);
    if (!s)
        *oom = true;
    else
        s->count += c;
}

/* token text: the GPT-2 code point image of its bytes */
static char *token_text(const unsigned char *bytes, size_t n)
{
    char *s = malloc(n * 2 + 1), *p = s;
    if (!s)
        return NULL;
    for (size_t i = 0; i < n; i++)
        p += unicode_utf8_encode(unicode_byte_to_cpt(bytes[i]), p);
    *p = '\0';
    return s;
}

moe_status moe_bpe_train(const char *text, size_t len, int32_t n_vocab, const char *path,
                         moe_progress_fn progress, void *ud)
{
    bpe_words w;
    bpe_map pairs = {0};
    moe_status st = MOE_OK;
    unsigned char **tb = NULL; /* bytes of each token */
    size_t *tl = NULL;
    char **texts = NULL, **merges = NULL;
    int32_t *ttype = NULL, *merge_a = NULL, *merge_b = NULL;
    int32_t n_tok = BPE_FIRST + 256, n_merges = 0;
    bool oom = false;

    memset(&w, 0, sizeof w);
    if (!text || !path || n_vocab < BPE_FIRST + 256 || n_vocab > (1 << 20))
        return moe_fail(MOE_ERR_INVALID_ARG, "bpe: n_vocab must be in [%d, %d]", BPE_FIRST + 256,
                        1 << 20);
    w.cap_words = 1024;
    w.start = malloc((w.cap_words + 1) * sizeof *w.start);
    w.len = malloc(w.cap_words * sizeof *w.len);
    w.count = malloc(w.cap_words * sizeof *w.count);
    tb = calloc((size_t)n_vocab, sizeof *tb);
    tl = calloc((size_t)n_vocab, sizeof *tl);
    texts = calloc((size_t)n_vocab, sizeof *texts);
    merges = calloc((size_t)n_vocab, sizeof *merges);
    ttype = calloc((size_t)n_vocab, sizeof *ttype);
    merge_a = calloc((size_t)n_vocab, sizeof *merge_a);
    merge_b = calloc((size_t)n_vocab, sizeof *merge_b);
    if (!merge_a || !merge_b || !w.start || !w.len || !w.count || !tb || !tl || !texts || !merges || !ttype ||
        !map_init(&w.index, 1 << 12) || !map_init(&pairs, 1 << 16)) {
        st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
        goto done;
    }
    for (int b = 0; b < 256; b++) {
        tb[BPE_FIRST + b] = malloc(1);
        if (!tb[BPE_FIRST + b]) {
            st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
            goto done;
        }
        tb[BPE_FIRST + b][0] = (unsigned char)b;
        tl[BPE_FIRST + b] = 1;
    }
    if ((st = count_words(text, len, &w)) != MOE_OK)
        goto done;
    w.start[w.n_words] = w.n_sym;

    for (size_t i = 0; i < w.n_words; i++) {
        const int32_t *s = w.sym + w.start[i];
        for (int32_t j = 0; j + 1 < w.len[i]; j++)
            pair_add(&pairs, s[j], s[j + 1], w.count[i], &oom);
    }
    while (n_tok < n_vocab && !oom) {
        int64_t best_c = 0;
        uint64_t best_k = 0;
        int32_t a, b, c;
        for (size_t i = 0; i < pairs.cap; i++) {
            const bpe_slot *s = &pairs.s[i];
            if (s->word >= 0 && (s->count > best_c || (s->count == best_c && best_c > 0 &&
                                                        s->key < best_k))) {
                best_c = s->count;
                best_k = s->key;
            }
        }
        if (best_c < 2)
            break; /* nothing worth merging */
        a = (int32_t)(best_k >> 32);
        b = (int32_t)(best_k & 0xffffffffu);
        c = n_tok;
        tl[c] = tl[a] + tl[b];
        tb[c] = malloc(tl[c]);
        if (!tb[c]) {
            oom = true;
            break;
        }
        memcpy(tb[c], tb[a], tl[a]);
        memcpy(tb[c] + tl[a], tb[b], tl[b]);
        merge_a[n_merges] = a;
        merge_b[n_merges] = b;
        /* merge in every word, updating neighbour pair counts */
        for (size_t i = 0; i < w.n_words; i++) {
            int32_t *s = w.sym + w.start[i];
            int32_t n = w.len[i], o = 0;
            const int64_t cnt = w.count[i];
            bool hit = false;
            for (int32_t j = 0; j + 1 < n; j++)
                if (s[j] == a && s[j + 1] == b) {
                    hit = true;
                    break;
                }
            if (!hit)
                continue;
            for (int32_t j = 0; j < n;) {
                if (j + 1 < n && s[j] == a && s[j + 1] == b) {
                    if (o > 0) {
                        pair_add(&pairs, s[o - 1], a, -cnt, &oom);
                        pair_add(&pairs, s[o - 1], c, cnt, &oom);
                    }
                    if (j + 2 < n) {
                        pair_add(&pairs, b, s[j + 2], -cnt, &oom);
                        /* the right neighbour may itself start the next merge:
                         * then (c, a) replaces (b, a) when that happens */
                        pair_add(&pairs, c, s[j + 2], cnt, &oom);
                    }
                    pair_add(&pairs, a, b, -cnt, &oom);
                    s[o++] = c;
                    j += 2;
                } else {
                    s[o++] = s[j++];
                }
            }
            w.len[i] = o;
        }
        n_tok++;
        n_merges++;
        if (progress && !progress((double)n_tok, (double)n_vocab, ud)) {
            st = moe_fail(MOE_ERR_CANCELLED, "bpe: cancelled");
            goto done;
        }
    }
    if (oom) {
        st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
        goto done;
    }

    /* the vocabulary: token 0 <|endoftext|>, bytes, then merged tokens */
    texts[0] = malloc(14);
    if (texts[0])
        memcpy(texts[0], "<|endoftext|>", 14);
    ttype[0] = 3;
    for (int32_t i = BPE_FIRST; i < n_tok; i++) {
        texts[i] = token_text(tb[i], tl[i]);
        ttype[i] = 1;
    }
    for (int32_t i = 0; i < n_merges; i++) {
        const char *l = texts[merge_a[i]], *r = texts[merge_b[i]];
        size_t nl = l ? strlen(l) : 0, nr = r ? strlen(r) : 0;
        merges[i] = malloc(nl + nr + 2);
        if (merges[i]) {
            memcpy(merges[i], l, nl);
            merges[i][nl] = ' ';
            memcpy(merges[i] + nl + 1, r, nr + 1);
        }
    }
    for (int32_t i = 0; i < n_tok; i++)
        oom |= texts[i] == NULL;
    for (int32_t i = 0; i < n_merges; i++)
        oom |= merges[i] == NULL;
    if (oom) {
        st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
        goto done;
    }
    {
        gguf_writer *gw = gguf_writer_new();
        if (!gw) {
            st = moe_fail(MOE_ERR_NOMEM, "bpe: out of memory");
            goto done;
        }
        if ((st = gguf_writer_set_str(gw, "general.type", "vocab")) ||
            (st = gguf_writer_set_str(gw, "tokenizer.ggml.model", "gpt2")) ||
            (st = gguf_writer_set_str(gw, "tokenizer.ggml.pre", "gpt-2")) ||
            (st = gguf_writer_set_arr_str(gw, "tokenizer.ggml.tokens",
                                          (const char *const *)texts, (uint64_t)n_tok)) ||
            (st = gguf_writer_set_arr(gw, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, ttype,
                                      (uint64_t)n_tok)) ||
            (st = gguf_writer_set_arr_str(gw, "tokenizer.ggml.merges",
                                          (const char *const *)merges, (uint64_t)n_merges)) ||
            (st = gguf_writer_set_u32(gw, "tokenizer.ggml.bos_token_id", 0)) ||
            (st = gguf_writer_set_u32(gw, "tokenizer.ggml.eos_token_id", 0)) ||
            (st = gguf_writer_set_bool(gw, "tokenizer.ggml.add_bos_token", true)) ||
            (st = gguf_writer_set_bool(gw, "tokenizer.ggml.add_eos_token", false))) {
            /* st says what failed */
        }
        if (st == MOE_OK)
            st = gguf_writer_write(gw, path);
        gguf_writer_free(gw);
    }
done:
    free(w.sym);
    free(w.start);
    free(w.len);
    free(w.count);
    free(w.index.s);
    free(pairs.s);
    if (tb)
        for (int32_t i = 0; i < n_vocab; i++)
            free(tb[i]);
    free(tb);
    free(tl);
    if (texts)
        for (int32_t i = 0; i < n_vocab; i++)
            free(texts[i]);
    free(texts);
    if (merges)
        for (int32_t i = 0; i < n_vocab; i++)
            free(merges[i]);
    free(merges);
    free(ttype);
    free(merge_a);
    free(merge_b);
    return st;
}
