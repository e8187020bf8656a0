/*
 * check_tokenizer.c - tokenizers against reference vectors and hand-made
 * vocabularies: every input of the shared ggml-vocab-*.gguf.inp/.out test
 * vectors (SentencePiece and BPE families), round trips through the
 * detokenizer, the golden prompts (ids and pieces) of every shared model,
 * add-BOS rules, special-token parsing, n_max handling, unknown model /
 * pre-tokenizer errors, Unicode tables and the pre-tokenizer regex engine,
 * and the speed of 1 MB of text. Shared files are read in place (SKIP when
 * absent); the hand-made vocabularies are written with the GGUF writer.
 */
#include "config.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "testutil.h"
#include "tokenizer.h"
#include "unicode.h"
#include "util.h"

#define SEP "\n__ggml_vocab_test__\n"

static tok_vocab *load_path(const char *path)
{
    gguf_ctx *g = NULL;
    tok_vocab *v = NULL;
    ck_assert_msg(gguf_open(path, &g) == MOE_OK, "%s: %s", path, moe_last_error());
    ck_assert_msg(tok_load(g, &v) == MOE_OK, "%s: %s", path, moe_last_error());
    gguf_close(g); /* the vocabulary must outlive the file */
    return v;
}

/* NULL (and a SKIP line) when the shared file is absent */
static tok_vocab *load_shared(const char *rel, const char *test)
{
    char path[1024];
    if (!tu_shared(path, sizeof path, rel, test))
        return NULL;
    return load_path(path);
}

/* encode into a fresh array; *n = count */
static int32_t *enc(const tok_vocab *v, const char *s, size_t len, bool bos, bool special,
                    int32_t *n)
{
    int32_t need = tok_encode(v, s, len, bos, special, NULL, 0);
    ck_assert_int_ne(need, INT32_MIN);
    if (need < 0)
        need = -need;
    int32_t *ids = malloc(((size_t)need + 1) * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    *n = tok_encode(v, s, len, bos, special, ids, need);
    ck_assert_int_eq(*n, need);
    return ids;
}

static void fmt_ids(char *buf, size_t cap, const int32_t *ids, int32_t n)
{
    size_t w = 0;
    buf[0] = '\0';
    for (int32_t i = 0; i < n && w + 16 < cap; i++)
        w += (size_t)snprintf(buf + w, cap - w, " %d", (int)ids[i]);
}

/* ---- shared test vectors ------------------------------------------------- */

static const char *const vocab_names[] = {
    "llama-spm", "phi-3", "gpt-2", "deepseek-llm", "falcon", "mpt", "starcoder", "bert-bge",
};
#define N_VOCABS (int)(sizeof vocab_names / sizeof vocab_names[0])

START_TEST(test_vocab_vectors)
{
    const char *name = vocab_names[_i];
    char rel[256], path[1024], tname[300];
    snprintf(tname, sizeof tname, "tokenizer vectors %s", name);
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", name);
    tok_vocab *v = load_shared(rel, tname);
    if (!v)
        return;
    size_t ni, no;
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.inp", name);
    ck_assert_ptr_nonnull(tu_shared(path, sizeof path, rel, tname));
    char *inp = tu_read_file(path, &ni);
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf.out", name);
    ck_assert_ptr_nonnull(tu_shared(path, sizeof path, rel, tname));
    char *out = tu_read_file(path, &no);
    ck_assert_ptr_nonnull(inp);
    ck_assert_ptr_nonnull(out);

    /* every input ends with SEP; line k of .out holds the ids of input k */
    int n_in = 0, n_match = 0, n_round = 0;
    char *ip = inp, *op = out, *inp_end = inp + ni;
    char first_fail[2048] = "";
    for (;;) {
        char *e = strstr(ip, SEP);
        if (!e)
            break;
        ck_assert_msg(ip < inp_end, "input past the end");
        char *nl = strchr(op, '\n');
        ck_assert_msg(nl != NULL, "%s: .out has fewer lines than inputs", name);
        *nl = '\0';
        int32_t exp[4096], n_exp = 0;
        for (char *q = op; *q;) {
            char *qe;
            long x = strtol(q, &qe, 10);
            if (qe == q)
                break;
            ck_assert_int_lt(n_exp, 4096);
            exp[n_exp++] = (int32_t)x;
            q = qe;
        }
        size_t len = (size_t)(e - ip);
        int32_t n;
        int32_t *ids = enc(v, ip, len, false, false, &n);
        bool ok = n == n_exp && memcmp(ids, exp, (size_t)n * sizeof *ids) == 0;
        n_match += ok;
        if (!ok && !first_fail[0]) {
            char a[900], b[900];
            fmt_ids(a, sizeof a, exp, n_exp);
            fmt_ids(b, sizeof b, ids, n);
            snprintf(first_fail, sizeof first_fail, "input %d \"%.*s\": want%s got%s", n_in,
                     (int)(len > 60 ? 60 : len), ip, a, b);
        }
        /* detokenize(tokenize(x)) == x (SPM's added leading space removed) */
        char *dec = malloc(len + 64);
        ck_assert_ptr_nonnull(dec);
        size_t dl = tok_decode(v, ids, (size_t)n, false, dec, len + 64);
        n_round += dl == len && memcmp(dec, ip, len) == 0;
        free(dec);
        free(ids);
        n_in++;
        ip = e + strlen(SEP);
        op = nl + 1;
    }
    /* WordPiece lowercases and drops accents and spaces: no round trip */
    bool lossy = tok_get_kind(v) == TOK_KIND_WPM;
    if (lossy)
        printf("tokenizer: ggml-vocab-%s: %d/%d inputs match\n", name, n_match, n_in);
    else
        printf("tokenizer: ggml-vocab-%s: %d/%d inputs match, %d/%d round trips\n", name,
               n_match, n_in, n_round, n_in);
    fflush(stdout);
    ck_assert_int_gt(n_in, 0);
    ck_assert_msg(ip == inp_end, "%s: trailing text after the last separator", name);
    ck_assert_msg(*op == '\0', "%s: .out has more lines than inputs", name);
    ck_assert_msg(n_match == n_in, "%s: %d/%d match; first failure: %s", name, n_match, n_in,
                  first_fail);
    if (!lossy)
        ck_assert_int_eq(n_round, n_in);
    free(inp);
    free(out);
    tok_free(v);
}
END_TEST

/* Random texts from pieces that exercise the pre-tokenizers (contractions,
 * digit runs, whitespace kinds, accents, CJK, emoji, marks, NBSP): valid
 * UTF-8 must round-trip through every SPM/BPE vocabulary, and for SPM even
 * arbitrary bytes without spaces do (byte fallback). */
static uint32_t lcg(uint32_t *st)
{
    *st = *st * 1664525u + 1013904223u;
    return *st >> 8;
}

START_TEST(test_random_round_trip)
{
    static const char *const bits[] = {
        "a", "Z", "hello", " world", "'s", "'LL", "0", "12345", " ", "  ", "\t", "\n", "\r\n",
        "!", "...", "$", "<", "|", "\xc3\xa9", "\xe4\xb8\x80", "\xf0\x9f\xa6\x99", "\xcc\x81",
        "\xc2\xa0", "\xe3\x80\x80", "\xd0\xbd\xd0\xb5", "\xe1\x9e\x80", "_", "__",
    }; /* (not U+2581: SentencePiece itself decodes it as a space) */
    const char *name = vocab_names[_i];
    char rel[256], tname[300];
    snprintf(tname, sizeof tname, "tokenizer random %s", name);
    snprintf(rel, sizeof rel, "vocab/ggml-vocab-%s.gguf", name);
    tok_vocab *v = load_shared(rel, tname);
    if (!v)
        return;
    bool spm = tok_get_kind(v) == TOK_KIND_SPM;
    uint32_t st = 12345u + (uint32_t)_i;
    char text[512], dec[1024];
    for (int iter = 0; iter < 300; iter++) {
        size_t len = 0;
        int n_bits = (int)(lcg(&st) % 24);
        bool raw = spm && iter % 3 == 0;
        for (int b = 0; b < n_bits; b++) {
            if (raw) {
                /* no spaces: like the reference, SPM escapes them before
                 * splitting characters, so a broken lead byte right before
                 * one swallows part of the U+2581 */
                char c = (char)(lcg(&st) & 0xff);
                text[len++] = c == ' ' ? 'x' : c;
            } else {
                const char *p = bits[lcg(&st) % (sizeof bits / sizeof bits[0])];
                memcpy(text + len, p, strlen(p));
                len += strlen(p);
            }
        }
        for (int special = 0; special < 2; special++) {
            int32_t n;
            int32_t *ids = enc(v, text, len, special, special, &n);
            for (int32_t i = 0; i < n; i++)
                ck_assert(ids[i] >= 0 && ids[i] < tok_n_vocab(v));
            size_t dl = tok_decode(v, ids, (size_t)n, true, dec, sizeof dec);
            if (tok_get_kind(v) != TOK_KIND_WPM)
                ck_assert_msg(dl == len && memcmp(dec, text, len) == 0,
                              "%s: round trip of %zu bytes gave %zu (iteration %d)", name, len,
                              dl, iter);
            free(ids);
        }
    }
    tok_free(v);
}
END_TEST

/* ---- golden prompts -------------------------------------------------------- */

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

static void check_golden(const char *dir, const char *file)
{
    char path[2048], rel[512];
    size_t len;
    ck_assert_int_lt(snprintf(path, sizeof path, "%s/%s", dir, file), (int)sizeof path);
    char *js = tu_read_file(path, &len);
    ck_assert_ptr_nonnull(js);
    cJSON *root = cJSON_Parse(js);
    ck_assert_msg(root != NULL, "%s: bad JSON", file);
    const cJSON *jm = cJSON_GetObjectItem(root, "model");
    const cJSON *jp = cJSON_GetObjectItem(root, "prompt");
    const cJSON *jt = cJSON_GetObjectItem(root, "tokens");
    const cJSON *jh = cJSON_GetObjectItem(root, "pieces_hex");
    ck_assert(cJSON_IsString(jm) && cJSON_IsString(jp) && cJSON_IsArray(jt) && cJSON_IsArray(jh));
    /* "model" is the generator's path; the part from "models/" is ours */
    const char *m = strstr(jm->valuestring, "models/");
    ck_assert_msg(m != NULL, "%s: model path %s", file, jm->valuestring);
    snprintf(rel, sizeof rel, "%s", m);
    tok_vocab *v = load_shared(rel, file);
    if (!v)
        goto out;
    int32_t n;
    const char *prompt = jp->valuestring;
    int32_t *ids = enc(v, prompt, strlen(prompt), tok_add_bos(v), true, &n);
    ck_assert_msg(n == cJSON_GetArraySize(jt), "%s: %d tokens, want %d", file, n,
                  cJSON_GetArraySize(jt));
    for (int32_t i = 0; i < n; i++) {
        const cJSON *t = cJSON_GetArrayItem(jt, i);
        ck_assert_msg(ids[i] == (int32_t)t->valuedouble, "%s: token %d is %d, want %d", file, i,
                      ids[i], (int)t->valuedouble);
        const char *hex = cJSON_GetArrayItem(jh, i)->valuestring;
        size_t pl, hl = strlen(hex);
        const char *p = tok_piece(v, ids[i], &pl);
        ck_assert_msg(pl * 2 == hl, "%s: piece %d has %zu bytes, want %zu", file, i, pl, hl / 2);
        for (size_t k = 0; k < pl; k++)
            ck_assert_int_eq((unsigned char)p[k], hexval(hex[2 * k]) * 16 + hexval(hex[2 * k + 1]));
    }
    free(ids);
    tok_free(v);
out:
    cJSON_Delete(root);
    free(js);
}

START_TEST(test_golden_prompts)
{
    char dir[1024];
    if (!tu_shared(dir, sizeof dir, "golden", "tokenizer golden prompts"))
        return;
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 5 || strcmp(de->d_name + l - 5, ".json") != 0)
            continue;
        check_golden(dir, de->d_name);
        n++;
    }
    closedir(d);
    printf("tokenizer: %d golden prompts match (tokens and pieces)\n", n);
    ck_assert_int_gt(n, 0);
}
END_TEST

/* ---- rules on the shared vocabularies ----------------------------------- */

START_TEST(test_add_bos_rules)
{
    tok_vocab *spm = load_shared("vocab/ggml-vocab-llama-spm.gguf", "tokenizer add_bos");
    tok_vocab *bpe = load_shared("vocab/ggml-vocab-gpt-2.gguf", "tokenizer add_bos");
    tok_vocab *ds = load_shared("vocab/ggml-vocab-deepseek-llm.gguf", "tokenizer add_bos");
    if (!spm || !bpe || !ds) {
        tok_free(spm);
        tok_free(bpe);
        tok_free(ds);
        return;
    }
    int32_t n, *ids;
    /* llama SPM: add_bos_token true; BOS only when asked */
    ck_assert(tok_add_bos(spm));
    ck_assert_int_eq(tok_bos(spm), 1);
    ck_assert_int_eq(tok_eos(spm), 2);
    ids = enc(spm, "Hello", 5, true, false, &n);
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], 1);
    ck_assert_int_eq(ids[1], 15043); /* "▁Hello" */
    free(ids);
    ids = enc(spm, "Hello", 5, false, false, &n);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(ids[0], 15043);
    free(ids);
    /* the empty text gives just BOS, or nothing */
    ids = enc(spm, "", 0, true, false, &n);
    ck_assert_int_eq(n, 1);
    ck_assert_int_eq(ids[0], 1);
    free(ids);
    ids = enc(spm, "", 0, false, false, &n);
    ck_assert_int_eq(n, 0);
    free(ids);
    /* GPT-2: no add_bos_token key -> BPE default false */
    ck_assert(!tok_add_bos(bpe));
    ck_assert_int_eq(tok_bos(bpe), 50256);
    ck_assert(tok_is_eog(bpe, 50256));
    ck_assert(!tok_is_eog(bpe, 15496));
    ids = enc(bpe, "Hello", 5, true, false, &n); /* forced */
    ck_assert_int_eq(n, 2);
    ck_assert_int_eq(ids[0], 50256);
    free(ids);
    /* deepseek-llm says add_bos_token true */
    ck_assert(tok_add_bos(ds));
    ck_assert_int_eq(tok_bos(ds), 100000);
    ck_assert_int_eq(tok_get_kind(ds), TOK_KIND_BPE);
    ck_assert_int_eq(tok_get_kind(spm), TOK_KIND_SPM);
    tok_free(spm);
    tok_free(bpe);
    tok_free(ds);

    /* BERT: [CLS] from cls_token_id, [SEP] as the EOS of tok_add_eos */
    tok_vocab *wpm = load_shared("vocab/ggml-vocab-bert-bge.gguf", "tokenizer add_bos");
    if (!wpm)
        return;
    ck_assert_int_eq(tok_get_kind(wpm), TOK_KIND_WPM);
    ck_assert(tok_add_bos(wpm) && tok_add_eos(wpm));
    ck_assert_int_eq(tok_bos(wpm), 101);
    ck_assert_int_eq(tok_eos(wpm), 102);
    ids = enc(wpm, "Hello, World", 12, true, false, &n);
    int32_t want[] = {101, 7592, 1010, 2088};
    ck_assert_int_eq(n, 4);
    ck_assert_mem_eq(ids, want, sizeof want);
    free(ids);
    char buf[64];
    tok_decode(wpm, want, 4, true, buf, sizeof buf);
    ck_assert_str_eq(buf, "hello , world");
    tok_free(wpm);
}
END_TEST

START_TEST(test_parse_special)
{
    tok_vocab *spm = load_shared("vocab/ggml-vocab-llama-spm.gguf", "tokenizer parse_special");
    tok_vocab *bpe = load_shared("vocab/ggml-vocab-gpt-2.gguf", "tokenizer parse_special");
    tok_vocab *mpt = load_shared("vocab/ggml-vocab-mpt.gguf", "tokenizer parse_special");
    tok_vocab *phi = load_shared("vocab/ggml-vocab-phi-3.gguf", "tokenizer parse_special");
    if (!spm || !bpe || !mpt || !phi) {
        tok_free(spm);
        tok_free(bpe);
        tok_free(mpt);
        tok_free(phi);
        return;
    }
    int32_t n, *ids;
    const char *t = "a<|endoftext|>b";
    ids = enc(bpe, t, strlen(t), false, true, &n);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[0], 64); /* "a" */
    ck_assert_int_eq(ids[1], 50256);
    ck_assert_int_eq(ids[2], 65); /* "b" */
    free(ids);
    ids = enc(bpe, t, strlen(t), false, false, &n);
    ck_assert_int_gt(n, 3);
    for (int32_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], 50256);
    free(ids);
    ck_assert(tok_is_special(bpe, 50256));
    ck_assert_str_eq(tok_text(bpe, 50256), "<|endoftext|>");

    /* SPM: a special token ends a span; the next span gets the space prefix */
    t = "Hello</s>world";
    ids = enc(spm, t, strlen(t), false, true, &n);
    int32_t want[] = {15043, 2, 3186}; /* ▁Hello </s> ▁world */
    ck_assert_int_eq(n, 3);
    ck_assert_mem_eq(ids, want, sizeof want);
    free(ids);
    ids = enc(spm, t, strlen(t), false, false, &n);
    for (int32_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], 2);
    free(ids);
    size_t pl;
    ck_assert_str_eq(tok_piece(spm, 1, &pl), "<s>");
    ck_assert_uint_eq(pl, 3);
    ck_assert_str_eq(tok_piece(spm, 15043, &pl), " Hello");
    ck_assert_str_eq(tok_piece(spm, 13, &pl), "\n"); /* <0x0A> */

    /* MPT: user-defined whitespace tokens split the text even when
     * parse_special is off, longest first */
    ids = enc(mpt, "a    b", 6, false, false, &n);
    ck_assert_int_eq(n, 3);
    ck_assert_int_eq(ids[1], 50274); /* four spaces */
    ck_assert_int_eq(tok_type(mpt, 50274), 4);
    free(ids);

    /* Phi-3 (by its general.name): special tokens eat the whitespace after
     * them; the reference runtime gives these 8 ids for this chat turn */
    t = "<|user|>\nSYS\nHI<|end|>\n<|assistant|>\n";
    ids = enc(phi, t, strlen(t), true, true, &n);
    int32_t want_phi[] = {1, 32010, 317, 21554, 13, 17628, 32007, 32001};
    ck_assert_int_eq(n, 8);
    ck_assert_mem_eq(ids, want_phi, sizeof want_phi);
    free(ids);
    /* the same rule does not apply to other SPM vocabularies */
    t = "</s>\nHI";
    ids = enc(spm, t, strlen(t), false, true, &n);
    ck_assert_int_eq(ids[0], 2);
    ck_assert_int_eq(ids[2], 13); /* "\n" kept: </s> ▁ <0x0A> ... */
    free(ids);
    tok_free(spm);
    tok_free(bpe);
    tok_free(mpt);
    tok_free(phi);
}
END_TEST

START_TEST(test_n_max)
{
    tok_vocab *v = load_shared("vocab/ggml-vocab-gpt-2.gguf", "tokenizer n_max");
    if (!v)
        return;
    int32_t buf[8] = {-7, -7, -7, -7, -7, -7, -7, -7};
    const char *t = "Hello world, this is a test";
    int32_t need = tok_encode(v, t, strlen(t), false, false, buf, 2);
    ck_assert_int_eq(need, -7);
    ck_assert_int_eq(buf[0], -7); /* nothing written when it does not fit */
    ck_assert_int_eq(tok_encode(v, t, strlen(t), false, false, buf, 7), 7);
    ck_assert_int_eq(buf[0], 15496);
    ck_assert_int_eq(buf[7], -7);
    char s[8];
    size_t full = tok_decode(v, buf, 7, false, s, sizeof s);
    ck_assert_uint_eq(full, strlen(t));
    ck_assert_str_eq(s, "Hello w"); /* truncated, NUL-terminated */
    tok_free(v);
}
END_TEST

START_TEST(test_speed_1mb)
{
    tok_vocab *spm = load_shared("vocab/ggml-vocab-llama-spm.gguf", "tokenizer speed");
    tok_vocab *bpe = load_shared("vocab/ggml-vocab-gpt-2.gguf", "tokenizer speed");
    char path[1024];
    if (!spm || !bpe ||
        !tu_shared(path, sizeof path, "vocab/ggml-vocab-gpt-2.gguf.inp", "tokenizer speed")) {
        tok_free(spm);
        tok_free(bpe);
        return;
    }
    size_t n_in;
    char *inp = tu_read_file(path, &n_in);
    ck_assert_ptr_nonnull(inp);
    size_t cap = (size_t)1 << 20, len = 0;
    char *text = malloc(cap);
    ck_assert_ptr_nonnull(text);
    while (len < cap) {
        size_t k = n_in < cap - len ? n_in : cap - len;
        memcpy(text + len, inp, k);
        len += k;
    }
    /* cut at a UTF-8 boundary */
    while (len > 0 && ((unsigned char)text[len - 1] & 0xC0) == 0x80)
        len--;
    if (len > 0 && (unsigned char)text[len - 1] >= 0xC0)
        len--;
    tok_vocab *vs[2] = {spm, bpe};
    for (int k = 0; k < 2; k++) {
        double t0 = util_now();
        int32_t n = tok_encode(vs[k], text, len, false, false, NULL, 0);
        double dt = util_now() - t0;
        ck_assert_int_lt(n, 0);
        int32_t *ids = malloc((size_t)(-n) * sizeof *ids);
        ck_assert_ptr_nonnull(ids);
        ck_assert_int_eq(tok_encode(vs[k], text, len, false, false, ids, -n), -n);
        char *dec = malloc(len + 1);
        ck_assert_ptr_nonnull(dec);
        ck_assert_uint_eq(tok_decode(vs[k], ids, (size_t)(-n), false, dec, len + 1), len);
        ck_assert_mem_eq(dec, text, len);
        printf("tokenizer: %s: %zu bytes -> %d tokens in %.3f s\n", k ? "gpt-2" : "llama-spm",
               len, -n, dt);
        fflush(stdout);
        /* "well under a second" with headroom for a busy 2-core machine */
        ck_assert_msg(dt < 1.5, "1 MB took %.2f s", dt);
        free(ids);
        free(dec);
    }
    free(text);
    free(inp);
    tok_free(spm);
    tok_free(bpe);

    /* long whitespace runs must stay linear in the pre-tokenizer (deepseek's
     * "\\s+$" tried at every space of a run not at the end) */
    tok_vocab *ds = load_shared("vocab/ggml-vocab-deepseek-llm.gguf", "tokenizer speed");
    if (!ds)
        return;
    size_t wl = 100002;
    char *ws = malloc(wl);
    ck_assert_ptr_nonnull(ws);
    memset(ws, ' ', wl);
    ws[0] = 'a';
    ws[wl - 1] = '1';
    double t0 = util_now();
    int32_t n = tok_encode(ds, ws, wl, false, false, NULL, 0);
    double dt = util_now() - t0;
    printf("tokenizer: deepseek-llm: 100000-space run in %.3f s\n", dt);
    ck_assert_int_lt(n, 0);
    ck_assert_msg(dt < 1.0, "a 100000-space run took %.2f s", dt);
    free(ws);
    tok_free(ds);
}
END_TEST

/* ---- hand-made vocabularies ---------------------------------------------- */

/* SPM: <unk> <s> </s>, 256 byte tokens, then the given pieces and scores */
static const char *write_spm(const char *name, const char *const *pieces, const float *scores,
                             int n_pieces)
{
    static char path[1024];
    int n = 3 + 256 + n_pieces;
    char **toks = calloc((size_t)n, sizeof *toks);
    float *sc = calloc((size_t)n, sizeof *sc);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    ck_assert(toks && sc && ty);
    toks[0] = strdup("<unk>");
    ty[0] = 2;
    toks[1] = strdup("<s>");
    ty[1] = 3;
    toks[2] = strdup("</s>");
    ty[2] = 3;
    for (int b = 0; b < 256; b++) {
        toks[3 + b] = malloc(8);
        snprintf(toks[3 + b], 8, "<0x%02X>", b);
        ty[3 + b] = 6;
    }
    for (int i = 0; i < n_pieces; i++) {
        toks[259 + i] = strdup(pieces[i]);
        sc[259 + i] = scores[i];
        ty[259 + i] = 1;
    }
    gguf_writer *w = gguf_writer_new();
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
                                             (const char *const *)toks, (uint64_t)n), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_TYPE_FLOAT32, sc,
                                         (uint64_t)n), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, ty,
                                         (uint64_t)n), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0), MOE_OK);
    tu_tmp_path(path, sizeof path, name);
    ck_assert_msg(gguf_writer_write(w, path) == MOE_OK, "%s", moe_last_error());
    gguf_writer_free(w);
    for (int i = 0; i < n; i++)
        free(toks[i]);
    free(toks);
    free(sc);
    free(ty);
    return path;
}

static void expect_ids(const tok_vocab *v, const char *text, bool special, const int32_t *want,
                       int32_t n_want)
{
    int32_t n;
    int32_t *ids = enc(v, text, strlen(text), false, special, &n);
    char a[512], b[512];
    fmt_ids(a, sizeof a, want, n_want);
    fmt_ids(b, sizeof b, ids, n);
    ck_assert_msg(n == n_want && memcmp(ids, want, (size_t)n * sizeof *ids) == 0,
                  "\"%s\": want%s got%s", text, a, b);
    free(ids);
}

START_TEST(test_spm_handmade)
{
    /* ids: 259 ▁  260 a  261 b  262 c  263 ab  264 ▁a  265 bc  266 ▁ab  267 aa */
    static const char *const pieces[] = {"\xe2\x96\x81", "a", "b", "c", "ab",
                                         "\xe2\x96\x81" "a", "bc", "\xe2\x96\x81" "ab", "aa"};
    static const float scores[] = {-10, -10, -10, -10, -1, -2, -3, -4, -5};
    tok_vocab *v = load_path(write_spm("spm.gguf", pieces, scores, 9));
    ck_assert_int_eq(tok_n_vocab(v), 268);
    ck_assert(tok_add_bos(v)); /* SPM default */
    ck_assert(tok_add_space_prefix(v));
    /* ▁ a b c: "ab" (-1) beats "▁a" (-2) and "bc" (-3); then "▁ab" (-4) */
    expect_ids(v, "abc", false, (const int32_t[]){266, 262}, 2);
    /* ▁ b c: "bc" */
    expect_ids(v, "bc", false, (const int32_t[]){259, 265}, 2);
    /* ▁ a a a: "▁a" (-2) beats "aa" (-5); then a a -> "aa" */
    expect_ids(v, "aaa", false, (const int32_t[]){264, 267}, 2);
    /* equal scores: the leftmost pair merges first (b a a a: two "aa" ties) */
    expect_ids(v, "b aaa", false, (const int32_t[]){259, 261, 264, 267}, 4);
    expect_ids(v, "b aaaa", false, (const int32_t[]){259, 261, 264, 267, 260}, 5);
    /* unknown characters fall back to bytes: é = C3 A9 -> <0xC3> <0xA9> */
    expect_ids(v, "\xc3\xa9", false, (const int32_t[]){259, 3 + 0xC3, 3 + 0xA9}, 3);
    /* newline and tab are bytes, spaces are ▁ */
    expect_ids(v, "a\nb", false, (const int32_t[]){264, 3 + 0x0A, 261}, 3);
    /* detokenize: ▁ -> space, bytes -> raw */
    int32_t ids[] = {1, 264, 3 + 0xC3, 3 + 0xA9, 259, 265};
    char buf[64];
    ck_assert_uint_eq(tok_decode(v, ids, 6, true, buf, sizeof buf), 6);
    ck_assert_str_eq(buf, "a\xc3\xa9 bc");
    tok_decode(v, ids, 6, false, buf, sizeof buf);
    ck_assert_str_eq(buf, "<s> a\xc3\xa9 bc"); /* special text; space prefix is kept after it */
    ck_assert_str_eq(tok_text(v, 264), "\xe2\x96\x81" "a");
    ck_assert(tok_score(v, 263) == -1.0f);
    tok_free(v);

    /* a token with U+2581 inside joins words: merging must see the whole
     * text at once (▁ b ▁ a: "b▁" (-0.5) beats "▁a" (-2)) */
    static const char *const pieces2[] = {"\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a",
                                          "b\xe2\x96\x81"};
    static const float scores2[] = {-10, -10, -10, -2, -0.5f};
    v = load_path(write_spm("spm2.gguf", pieces2, scores2, 5));
    expect_ids(v, "b a", false, (const int32_t[]){259, 263, 260}, 3);
    expect_ids(v, "a a", false, (const int32_t[]){262, 262}, 2);
    tok_free(v);
}
END_TEST

/* BPE: the 256 byte characters in byte order, then merge results, then
 * specials */
static const char *write_bpe(const char *name, const char *pre, const char *const *merges,
                             int n_merges, bool add_bos_key)
{
    static char path[1024];
    int n_extra = n_merges + 2;
    int n = 256 + n_extra;
    char **toks = calloc((size_t)n, sizeof *toks);
    int32_t *ty = calloc((size_t)n, sizeof *ty);
    ck_assert(toks && ty);
    for (int b = 0; b < 256; b++) {
        toks[b] = calloc(1, 5);
        unicode_utf8_encode(unicode_byte_to_cpt((uint8_t)b), toks[b]);
        ty[b] = 1;
    }
    for (int i = 0; i < n_merges; i++) { /* "x y" -> "xy" */
        const char *sp = strchr(merges[i], ' ');
        toks[256 + i] = malloc(strlen(merges[i]));
        memcpy(toks[256 + i], merges[i], (size_t)(sp - merges[i]));
        strcpy(toks[256 + i] + (sp - merges[i]), sp + 1);
        ty[256 + i] = 1;
    }
    toks[256 + n_merges] = strdup("<|end|>");
    ty[256 + n_merges] = 3;
    toks[257 + n_merges] = strdup("xyz");
    ty[257 + n_merges] = 4;
    gguf_writer *w = gguf_writer_new();
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.pre", pre), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens",
                                             (const char *const *)toks, (uint64_t)n), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_TYPE_INT32, ty,
                                         (uint64_t)n), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges,
                                             (uint64_t)n_merges), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id",
                                         (uint32_t)(256 + n_merges)), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id",
                                         (uint32_t)(256 + n_merges)), MOE_OK);
    if (add_bos_key)
        ck_assert_int_eq(gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", true), MOE_OK);
    tu_tmp_path(path, sizeof path, name);
    ck_assert_msg(gguf_writer_write(w, path) == MOE_OK, "%s", moe_last_error());
    gguf_writer_free(w);
    for (int i = 0; i < n; i++)
        free(toks[i]);
    free(toks);
    free(ty);
    return path;
}

START_TEST(test_bpe_handmade)
{
    /* ranks: 0 "a b", 1 "b c", 2 "ab c", 3 "\xc4\xa0 ab" (Ġ = space) */
    static const char *const merges[] = {"a b", "b c", "ab c", "\xc4\xa0 ab"};
    tok_vocab *v = load_path(write_bpe("bpe.gguf", "gpt-2", merges, 4, true));
    int32_t ab = 256, bc = 257, abc = 258, sp_ab = 259, end = 260, xyz = 261;
    int32_t a = 'a' /* printable bytes map to themselves: id == byte here */;
    ck_assert(tok_add_bos(v));
    ck_assert_int_eq(tok_bos(v), end);
    ck_assert(tok_is_eog(v, end));
    ck_assert(tok_is_special(v, xyz));
    /* a b c: "a b" (0) first, then "ab c" (2) */
    expect_ids(v, "abc", false, (const int32_t[]){abc}, 1);
    /* b c a b: "a b" (0) before "b c" (1): [b c ab] -> [bc ab] */
    expect_ids(v, "bcab", false, (const int32_t[]){bc, ab}, 2);
    /* words are split before merging: " ab" is one word -> Ġab */
    expect_ids(v, "ab ab", false, (const int32_t[]){ab, sp_ab}, 2);
    /* unmerged bytes map through bytes_to_unicode (space -> Ġ = 0x120) */
    expect_ids(v, "a  ", false, (const int32_t[]){a, ' ', ' '}, 3);
    int32_t nl = (int32_t)0x0A; /* byte 0x0A's character is its own token id 10 */
    expect_ids(v, "\n", false, (const int32_t[]){nl}, 1);
    /* control token only with parse_special; user-defined always */
    expect_ids(v, "<|end|>", true, (const int32_t[]){end}, 1);
    expect_ids(v, "axyzb", false, (const int32_t[]){a, xyz, 'b'}, 3);
    int32_t n;
    int32_t *ids = enc(v, "<|end|>", 7, false, false, &n);
    ck_assert_int_eq(n, 7); /* words "<|", "end", "|>", no merges: 7 bytes */
    for (int32_t i = 0; i < n; i++)
        ck_assert_int_ne(ids[i], end);
    free(ids);
    /* invalid UTF-8 becomes U+FFFD (EF BF BD bytes) before BPE */
    expect_ids(v, "\xff", false, (const int32_t[]){0xEF, 0xBF, 0xBD}, 3);
    /* pieces map characters back to bytes */
    size_t pl;
    ck_assert_str_eq(tok_piece(v, sp_ab, &pl), " ab");
    ck_assert_str_eq(tok_text(v, sp_ab), "\xc4\xa0" "ab");
    ck_assert_str_eq(tok_piece(v, end, &pl), "<|end|>");
    tok_free(v);

    /* "abc" is a token that the merges cannot reach (a b first, then no
     * "ab c"): GPT-2 stops at ab c, llama3's pre-tokenizer takes whole-word
     * tokens as they are */
    static const char *const merges2[] = {"a b", "b c", "a bc"};
    v = load_path(write_bpe("bpe_gpt2.gguf", "gpt-2", merges2, 3, false));
    ck_assert(!tok_add_bos(v));
    expect_ids(v, "abc", false, (const int32_t[]){256, 'c'}, 2);
    tok_free(v);
    v = load_path(write_bpe("bpe_llama3.gguf", "llama3", merges2, 3, false));
    expect_ids(v, "abc", false, (const int32_t[]){258}, 1);
    expect_ids(v, "abcab", false, (const int32_t[]){256, 'c', 256}, 3);
    expect_ids(v, "12345", false, (const int32_t[]){'1', '2', '3', '4', '5'}, 5);
    tok_free(v);
}
END_TEST

START_TEST(test_load_errors)
{
    static const char *const merges[] = {"a b"};
    const char *p = write_bpe("badpre.gguf", "no-such-pre", merges, 1, false);
    gguf_ctx *g = NULL;
    tok_vocab *v = (tok_vocab *)1;
    ck_assert_int_eq(gguf_open(p, &g), MOE_OK);
    ck_assert_int_eq(tok_load(g, &v), MOE_ERR_UNSUPPORTED);
    ck_assert_ptr_null(v);
    const char *msg = moe_last_error();
    ck_assert_msg(strstr(msg, "no-such-pre") && strstr(msg, "qwen2") && strstr(msg, "gpt-2"),
                  "message: %s", msg);
    gguf_close(g);

    /* unknown tokenizer model */
    gguf_writer *w = gguf_writer_new();
    char path[1024];
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "t5"), MOE_OK);
    tu_tmp_path(path, sizeof path, "t5.gguf");
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    gguf_writer_free(w);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_int_eq(tok_load(g, &v), MOE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "t5"));
    gguf_close(g);

    /* no token list */
    w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), MOE_OK);
    tu_tmp_path(path, sizeof path, "notokens.gguf");
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    gguf_writer_free(w);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_int_eq(tok_load(g, &v), MOE_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "tokenizer.ggml.tokens"));
    gguf_close(g);

    /* a token list that is not an array of strings */
    w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "tokenizer.ggml.tokens", 7), MOE_OK);
    tu_tmp_path(path, sizeof path, "tokensu32.gguf");
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    gguf_writer_free(w);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_int_eq(tok_load(g, &v), MOE_ERR_FORMAT);
    ck_assert_msg(strstr(moe_last_error(), "tokenizer.ggml.tokens is not a string array"),
                  "message: %s", moe_last_error());
    gguf_close(g);

    /* a BPE vocabulary without merges, and one whose merges are not strings */
    for (int bad = 0; bad < 2; bad++) {
        static const char *const toks[] = {"a", "b", "ab"};
        w = gguf_writer_new();
        ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"), MOE_OK);
        ck_assert_int_eq(gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, 3), MOE_OK);
        if (bad)
            ck_assert_int_eq(gguf_writer_set_str(w, "tokenizer.ggml.merges", "a b"), MOE_OK);
        tu_tmp_path(path, sizeof path, bad ? "mergesstr.gguf" : "nomerges.gguf");
        ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
        gguf_writer_free(w);
        ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
        ck_assert_int_eq(tok_load(g, &v), MOE_ERR_FORMAT);
        ck_assert_msg(strstr(moe_last_error(), bad ? "tokenizer.ggml.merges is not a string array"
                                                   : "BPE vocabulary without tokenizer.ggml.merges"),
                      "message: %s", moe_last_error());
        gguf_close(g);
    }
    tok_free(NULL);
}
END_TEST

/* ---- Unicode tables and the regex engine ------------------------------- */

START_TEST(test_unicode_tables)
{
    ck_assert_int_eq(unicode_category('A'), UNICODE_CAT_L);
    ck_assert_int_eq(unicode_category(0x4E00), UNICODE_CAT_L);  /* 一 */
    ck_assert_int_eq(unicode_category(0x0430), UNICODE_CAT_L);  /* Cyrillic а */
    ck_assert_int_eq(unicode_category('7'), UNICODE_CAT_N);
    ck_assert_int_eq(unicode_category(0x00BD), UNICODE_CAT_N);  /* ½ */
    ck_assert_int_eq(unicode_category(0x0661), UNICODE_CAT_N);  /* Arabic-Indic 1 */
    ck_assert_int_eq(unicode_category('!'), UNICODE_CAT_P);
    ck_assert_int_eq(unicode_category(0x2014), UNICODE_CAT_P);  /* — */
    ck_assert_int_eq(unicode_category('$'), UNICODE_CAT_S);
    ck_assert_int_eq(unicode_category(0x1F600), UNICODE_CAT_S); /* 😀 */
    ck_assert_int_eq(unicode_category(0x0301), UNICODE_CAT_M);  /* combining acute */
    ck_assert_int_eq(unicode_category(0x17D2), UNICODE_CAT_M);  /* Khmer coeng */
    ck_assert_int_eq(unicode_category(' '), UNICODE_CAT_Z);
    ck_assert_int_eq(unicode_category('\n'), UNICODE_CAT_C);
    ck_assert_int_eq(unicode_category(0x0378), UNICODE_CAT_UNASSIGNED);
    ck_assert_int_eq(unicode_category(0x10FFFF), UNICODE_CAT_UNASSIGNED);
    ck_assert_int_eq(unicode_category(0x110000), UNICODE_CAT_UNASSIGNED);
    ck_assert(unicode_is_space('\t') && unicode_is_space(0x85) && unicode_is_space(0xA0) &&
              unicode_is_space(0x3000) && unicode_is_space(0x2009));
    ck_assert(!unicode_is_space('a') && !unicode_is_space(0x200B) && !unicode_is_space(0x1C));

    /* GPT-2 byte mapping: a bijection onto 188 printable bytes + U+0100.. */
    int seen[512] = {0};
    for (int b = 0; b < 256; b++) {
        uint32_t cp = unicode_byte_to_cpt((uint8_t)b);
        ck_assert_uint_lt(cp, 512);
        ck_assert_int_eq(seen[cp]++, 0);
        ck_assert_int_eq(unicode_cpt_to_byte(cp), b);
    }
    ck_assert_uint_eq(unicode_byte_to_cpt(' '), 0x120);  /* Ġ */
    ck_assert_uint_eq(unicode_byte_to_cpt('\n'), 0x10A); /* Ċ */
    ck_assert_uint_eq(unicode_byte_to_cpt('a'), 'a');
    ck_assert_int_eq(unicode_cpt_to_byte(0x4E00), -1);

    /* UTF-8 */
    uint32_t cp;
    char buf[4];
    ck_assert_uint_eq(unicode_utf8_decode("\xe2\x96\x81", 3, &cp), 3);
    ck_assert_uint_eq(cp, 0x2581);
    ck_assert_uint_eq(unicode_utf8_decode("\xf0\x9f\x98\x80", 4, &cp), 4);
    ck_assert_uint_eq(cp, 0x1F600);
    ck_assert_uint_eq(unicode_utf8_decode("\xe2\x96", 2, &cp), 1); /* truncated */
    ck_assert_uint_eq(cp, 0xFFFD);
    ck_assert_uint_eq(unicode_utf8_decode("\x80", 1, &cp), 1);
    ck_assert_uint_eq(cp, 0xFFFD);
    ck_assert_uint_eq(unicode_utf8_encode(0x1F600, buf), 4);
    ck_assert_mem_eq(buf, "\xf0\x9f\x98\x80", 4);
    ck_assert_uint_eq(unicode_utf8_len(0xE2), 3);
    ck_assert_uint_eq(unicode_utf8_len(0x80), 1);
}
END_TEST

/* split s by the patterns in order; result as "a|b|c" */
static void split(const char *const *pats, int n_pats, const char *s, char *out, size_t cap)
{
    uint32_t cps[256];
    uint16_t fl[256];
    size_t segs[256], tmp[256], ncp = 0, nseg = 1;
    const char *p = s;
    while (*p) {
        size_t k = unicode_utf8_decode(p, strlen(p), &cps[ncp]);
        fl[ncp] = unicode_flags(cps[ncp]);
        ncp++;
        p += k;
    }
    segs[0] = ncp;
    for (int i = 0; i < n_pats; i++) {
        unicode_regex *re = NULL;
        ck_assert_msg(unicode_regex_compile(pats[i], &re) == MOE_OK, "%s", moe_last_error());
        size_t n2 = unicode_regex_split(re, cps, fl, segs, nseg, tmp);
        memcpy(segs, tmp, n2 * sizeof *segs);
        nseg = n2;
        unicode_regex_free(re);
    }
    size_t w = 0, c = 0;
    for (size_t k = 0; k < nseg; k++) {
        if (k && w + 1 < cap)
            out[w++] = '|';
        for (size_t i = c; i < c + segs[k]; i++) {
            char b[4];
            size_t bl = unicode_utf8_encode(cps[i], b);
            for (size_t j = 0; j < bl && w + 1 < cap; j++)
                out[w++] = b[j];
        }
        c += segs[k];
    }
    out[w] = '\0';
}

START_TEST(test_regex)
{
    static const char *const gpt2[] = {
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"};
    static const char *const llama3[] = {
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
        "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"};
    static const char *const two[] = {"\\p{N}", "[a-c]+|x$"};
    char out[512];
    split(gpt2, 1, "Hello world  foo\n", out, sizeof out);
    ck_assert_str_eq(out, "Hello| world| | foo|\n");
    split(gpt2, 1, "I'll say 12345!!", out, sizeof out);
    ck_assert_str_eq(out, "I|'ll| say| 12345|!!");
    split(gpt2, 1, "caf\xc3\xa9 \xe4\xb8\x80\xe4\xba\x8c", out, sizeof out);
    ck_assert_str_eq(out, "caf\xc3\xa9| \xe4\xb8\x80\xe4\xba\x8c");
    split(llama3, 1, "I'LL 12345\n\n  x", out, sizeof out);
    ck_assert_str_eq(out, "I|'LL| |123|45|\n\n| | x");
    /* gaps between matches are kept; $ is the end of each segment */
    split(two, 2, "zab1cx", out, sizeof out);
    ck_assert_str_eq(out, "z|ab|1|c|x");
    split(two, 2, "xa", out, sizeof out);
    ck_assert_str_eq(out, "x|a");

    uint32_t cps[3] = {'a', 'b', 'c'};
    uint16_t fl[3] = {unicode_flags('a'), unicode_flags('b'), unicode_flags('c')};
    unicode_regex *re = NULL;
    ck_assert_int_eq(unicode_regex_compile("a(?:b|bc)?(?=c)|abc", &re), MOE_OK);
    ck_assert_uint_eq(unicode_regex_match(re, cps, fl, 0, 3), 2); /* leftmost-first */
    ck_assert_uint_eq(unicode_regex_match(re, cps, fl, 1, 3), SIZE_MAX);
    unicode_regex_free(re);
    ck_assert_int_eq(unicode_regex_compile("[bc]{2}", &re), MOE_OK);
    ck_assert_uint_eq(unicode_regex_match(re, cps, fl, 1, 3), 3);
    ck_assert_uint_eq(unicode_regex_match(re, cps, fl, 1, 2), SIZE_MAX);
    unicode_regex_free(re);

    /* unsupported or malformed patterns are errors, not crashes */
    static const char *const bad[] = {"(?<=a)b", "[abc", "a)", "(ab)+", "\\p{Xx}", "a{3,1}", "*a",
                                      "a+?"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        re = (unicode_regex *)1;
        ck_assert_msg(unicode_regex_compile(bad[i], &re) != MOE_OK, "%s accepted", bad[i]);
        ck_assert_ptr_null(re);
        ck_assert_str_ne(moe_last_error(), "");
    }
    unicode_regex_free(NULL);
}
END_TEST

Suite *tokenizer_suite(void);

Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("tokenizer");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_vocab_vectors, 0, N_VOCABS);
    tcase_add_loop_test(tc, test_random_round_trip, 0, N_VOCABS);
    tcase_add_test(tc, test_golden_prompts);
    tcase_add_test(tc, test_add_bos_rules);
    tcase_add_test(tc, test_parse_special);
    tcase_add_test(tc, test_n_max);
    tcase_add_test(tc, test_speed_1mb);
    tcase_add_test(tc, test_spm_handmade);
    tcase_add_test(tc, test_bpe_handmade);
    tcase_add_test(tc, test_load_errors);
    tcase_add_test(tc, test_unicode_tables);
    tcase_add_test(tc, test_regex);
    suite_add_tcase(s, tc);
    return s;
}
