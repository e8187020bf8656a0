/*
 * exit.c - early exit and the logit lens (see moe.h, "early exit"): exit
 * criteria and their spec strings, HashEE bucket tables (build, save, load),
 * and the layer loop that runs a batch when a criterion or a lens is on.
 *
 * The loop goes layer by layer over the whole batch. A layer runs over
 * contiguous runs of rows: running tokens get forward_layer, tokens that
 * exited get forward_kv_only from their frozen residual (so later tokens
 * attend to them at every layer). With one run of all rows this is exactly
 * forward.c's loop, so criteria that never trigger change no bit.
 * Depends on model.h, forward.c's pieces and trace.h; never on router.c
 * internals or the UI.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exit.h"
#include "model.h"
#include "tokenizer.h"
#include "trace.h"
#include "util.h"

#define EXIT_LENS_CHUNK 16

/* ---- parameters -------------------------------------------------------- */

static const char *const exit_kind_names[] = {
    [MOE_EXIT_NONE] = "none",         [MOE_EXIT_ENTROPY] = "entropy",
    [MOE_EXIT_MAXPROB] = "maxprob",   [MOE_EXIT_PATIENCE] = "patience",
    [MOE_EXIT_HASH] = "hash",         [MOE_EXIT_WINDOW] = "window",
    [MOE_EXIT_DEPTH] = "depth",
};
_Static_assert(sizeof exit_kind_names / sizeof exit_kind_names[0] == MOE_EXIT_COUNT,
               "exit_kind_names");

moe_exit_params moe_exit_default_params(void)
{
    moe_exit_params p = {.kind = MOE_EXIT_NONE, .threshold = 0.0f, .patience = 1,
                         .window = 0, .depth = 0, .min_layer = 0, .hash = NULL};
    return p;
}

const char *moe_exit_kind_name(moe_exit_kind kind)
{
    if ((int)kind < 0 || kind >= MOE_EXIT_COUNT)
        return "?";
    return exit_kind_names[kind];
}

/* Whole-string number parsers. */
static bool parse_float(const char *s, float *out)
{
    char *end;
    double v;
    if (!s || !*s)
        return false;
    errno = 0;
    v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v > 1e30 || v < -1e30)
        return false;
    *out = (float)v;
    return true;
}

static bool parse_int(const char *s, long lo, long hi, int32_t *out)
{
    char *end;
    long v;
    if (!s || !*s)
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = (int32_t)v;
    return true;
}

moe_status moe_exit_parse(const char *spec, moe_exit_params *out, moe_hash_table **hash_out)
{
    moe_exit_params p = moe_exit_default_params();
    char buf[64];
    const char *colon, *arg;
    size_t kl;

    if (hash_out)
        *hash_out = NULL;
    if (!spec || !out)
        return moe_fail(MOE_ERR_INVALID_ARG, "no exit spec given");
    {
        /* "SPEC@N": no exit before layer N */
        const char *at = strrchr(spec, '@');
        if (at && at[1] && strspn(at + 1, "0123456789") == strlen(at + 1)) {
            moe_status st;
            size_t sl = (size_t)(at - spec);
            char *base = malloc(sl + 1);
            if (!base)
                return moe_fail(MOE_ERR_NOMEM, "out of memory");
            memcpy(base, spec, sl);
            base[sl] = '\0';
            if (!parse_int(at + 1, 0, 1 << 20, &p.min_layer)) {
                free(base);
                return moe_fail(MOE_ERR_INVALID_ARG, "bad exit spec '%.60s': bad @layer", spec);
            }
            st = moe_exit_parse(base, out, hash_out);
            free(base);
            if (st == MOE_OK)
                out->min_layer = p.min_layer;
            return st;
        }
    }
    colon = strchr(spec, ':');
    kl = colon ? (size_t)(colon - spec) : strlen(spec);
    arg = colon ? colon + 1 : NULL;
    if (kl >= sizeof buf)
        return moe_fail(MOE_ERR_INVALID_ARG, "bad exit spec '%.40s': unknown criterion", spec);
    memcpy(buf, spec, kl);
    buf[kl] = '\0';

    if (strcmp(buf, "none") == 0 || strcmp(buf, "off") == 0) {
        if (arg)
            return moe_fail(MOE_ERR_INVALID_ARG, "bad exit spec '%s': 'none' takes no value",
                            spec);
    } else if (strcmp(buf, "entropy") == 0) {
        p.kind = MOE_EXIT_ENTROPY;
        if (!parse_float(arg, &p.threshold) || p.threshold < 0)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected entropy:T with T >= 0 (nats)", spec);
    } else if (strcmp(buf, "maxprob") == 0) {
        p.kind = MOE_EXIT_MAXPROB;
        if (!parse_float(arg, &p.threshold) || p.threshold < 0 || p.threshold > 1)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected maxprob:P with 0 <= P <= 1", spec);
    } else if (strcmp(buf, "patience") == 0) {
        p.kind = MOE_EXIT_PATIENCE;
        if (!parse_int(arg, 1, 1 << 20, &p.patience))
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected patience:N with N >= 1", spec);
    } else if (strcmp(buf, "depth") == 0) {
        p.kind = MOE_EXIT_DEPTH;
        if (!parse_int(arg, 1, 1 << 20, &p.depth))
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected depth:L with L >= 1", spec);
    } else if (strcmp(buf, "window") == 0) {
        const char *c2 = arg ? strchr(arg, ':') : NULL;
        char tb[64];
        p.kind = MOE_EXIT_WINDOW;
        if (!c2 || (size_t)(c2 - arg) >= sizeof tb)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected window:T:W (0 <= T <= 1, W >= 0)",
                            spec);
        memcpy(tb, arg, (size_t)(c2 - arg));
        tb[c2 - arg] = '\0';
        if (!parse_float(tb, &p.threshold) || p.threshold < 0 || p.threshold > 1 ||
            !parse_int(c2 + 1, 0, 1 << 20, &p.window))
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected window:T:W (0 <= T <= 1, W >= 0)",
                            spec);
    } else if (strcmp(buf, "hash") == 0) {
        moe_status st;
        p.kind = MOE_EXIT_HASH;
        if (!arg || !*arg)
            return moe_fail(MOE_ERR_INVALID_ARG, "bad exit spec '%s': expected hash:FILE",
                            spec);
        if (!hash_out)
            return moe_fail(MOE_ERR_INVALID_ARG, "exit spec '%s' loads a table: no place for it",
                            spec);
        st = moe_hash_load(arg, hash_out);
        if (st != MOE_OK)
            return st;
        p.hash = *hash_out;
    } else if (strcmp(buf, "hashtext") == 0) {
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "exit spec '%s' needs a model (set it on a context)", spec);
    } else {
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "bad exit spec '%.60s': unknown criterion '%s' (entropy, maxprob, "
                        "patience, hash, hashtext, window, depth, none)",
                        spec, buf);
    }
    *out = p;
    return MOE_OK;
}

/* ---- HashEE tables ----------------------------------------------------- */

static moe_hash_table *hash_alloc(int32_t n_vocab, int32_t n_buckets)
{
    moe_hash_table *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->bucket = malloc((size_t)n_vocab * sizeof *h->bucket);
    if (!h->bucket) {
        free(h);
        return NULL;
    }
    for (int32_t i = 0; i < n_vocab; i++)
        h->bucket[i] = -1;
    h->n_vocab = n_vocab;
    h->n_buckets = n_buckets;
    return h;
}

void moe_hash_free(moe_hash_table *h)
{
    if (!h)
        return;
    free(h->bucket);
    free(h);
}

static moe_hash_table *hash_copy(const moe_hash_table *src)
{
    moe_hash_table *h = hash_alloc(src->n_vocab, src->n_buckets);
    if (h)
        memcpy(h->bucket, src->bucket, (size_t)src->n_vocab * sizeof *h->bucket);
    return h;
}

typedef struct {
    int64_t count;
    int32_t id;
} hash_rank;

static int hash_rank_cmp(const void *a, const void *b)
{
    const hash_rank *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

moe_status moe_hash_from_counts(const int64_t *counts, const bool *special, int32_t n_vocab,
                                int32_t n_buckets, moe_hash_table **out)
{
    moe_hash_table *h;
    hash_rank *r;
    int64_t n_seen = 0;

    *out = NULL;
    if (!counts || n_vocab <= 0 || n_vocab > (1 << 24))
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: bad vocabulary size %d", n_vocab);
    if (n_buckets < 1 || n_buckets > n_vocab)
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: %d buckets (need 1..%d)", n_buckets,
                        n_vocab);
    h = hash_alloc(n_vocab, n_buckets);
    r = malloc((size_t)n_vocab * sizeof *r);
    if (!h || !r) {
        moe_hash_free(h);
        free(r);
        return moe_fail(MOE_ERR_NOMEM, "HashEE: out of memory");
    }
    for (int32_t i = 0; i < n_vocab; i++)
        if (counts[i] > 0 && !(special && special[i]))
            r[n_seen++] = (hash_rank){counts[i], i};
    qsort(r, (size_t)n_seen, sizeof *r, hash_rank_cmp);
    for (int64_t k = 0; k < n_seen; k++)
        h->bucket[r[k].id] = (int32_t)(k * n_buckets / n_seen);
    free(r);
    *out = h;
    return MOE_OK;
}

moe_status moe_hash_from_text(const moe_model *m, const char *text, size_t len, int32_t n_buckets,
                              moe_hash_table **out)
{
    const int32_t n_vocab = m->hp.n_vocab;
    int64_t *counts = NULL;
    bool *special = NULL;
    int32_t *toks = NULL, n;
    moe_status st;

    *out = NULL;
    if (len > (size_t)INT32_MAX / 2)
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: text of %zu bytes is too long", len);
    n = moe_tokenize(m, text, len, NULL, 0, false, false);
    if (n == INT32_MIN)
        return moe_fail(MOE_ERR_NOMEM, "HashEE: tokenizing the text failed: %s",
                        moe_last_error());
    if (n < 0)
        n = -n;
    if (n == 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: the text gives no tokens");
    toks = malloc((size_t)n * sizeof *toks);
    counts = calloc((size_t)n_vocab, sizeof *counts);
    special = calloc((size_t)n_vocab, sizeof *special);
    if (!toks || !counts || !special) {
        st = moe_fail(MOE_ERR_NOMEM, "HashEE: out of memory");
        goto out;
    }
    n = moe_tokenize(m, text, len, toks, n, false, false);
    if (n < 0) {
        st = moe_fail(MOE_ERR_NOMEM, "HashEE: tokenizing the text failed");
        goto out;
    }
    for (int32_t i = 0; i < n; i++)
        if (toks[i] >= 0 && toks[i] < n_vocab)
            counts[toks[i]]++;
    for (int32_t i = 0; i < n_vocab; i++)
        special[i] = tok_is_special(m->vocab, i) || moe_token_is_eog(m, i) ||
                     i == moe_token_bos(m);
    st = moe_hash_from_counts(counts, special, n_vocab, n_buckets, out);
out:
    free(toks);
    free(counts);
    free(special);
    return st;
}

moe_status moe_hash_save(const moe_hash_table *h, const char *path)
{
    FILE *f;
    bool ok;
    if (!h || !path)
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: nothing to save");
    f = fopen(path, "w");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    ok = fprintf(f, "moe-hashee 1\nn_vocab %d\nn_buckets %d\n", h->n_vocab, h->n_buckets) > 0;
    for (int32_t i = 0; ok && i < h->n_vocab; i++)
        if (h->bucket[i] >= 0)
            ok = fprintf(f, "%d %d\n", i, h->bucket[i]) > 0;
    ok = fclose(f) == 0 && ok;
    if (!ok)
        return moe_fail(MOE_ERR_IO, "error writing '%s'", path);
    return MOE_OK;
}

/* One line without its newline into buf; false at EOF; *too_long when the
 * line does not fit. */
static bool read_line(FILE *f, char *buf, size_t n, bool *too_long)
{
    size_t l;
    *too_long = false;
    if (!fgets(buf, (int)n, f))
        return false;
    l = strlen(buf);
    if (l > 0 && buf[l - 1] == '\n')
        buf[--l] = '\0';
    else if (!feof(f))
        *too_long = true;
    if (l > 0 && buf[l - 1] == '\r')
        buf[--l] = '\0';
    return true;
}

static bool header_int(const char *line, const char *key, long lo, long hi, int32_t *out)
{
    size_t kl = strlen(key);
    return strncmp(line, key, kl) == 0 && line[kl] == ' ' && parse_int(line + kl + 1, lo, hi, out);
}

moe_status moe_hash_load(const char *path, moe_hash_table **out)
{
    FILE *f;
    char line[128];
    bool long_line;
    int32_t n_vocab = 0, n_buckets = 0;
    int64_t lineno = 3;
    moe_hash_table *h = NULL;
    moe_status st = MOE_OK;

    *out = NULL;
    if (!path)
        return moe_fail(MOE_ERR_INVALID_ARG, "HashEE: no table file given");
    f = fopen(path, "r");
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot open HashEE table '%s': %s", path, strerror(errno));
    if (!read_line(f, line, sizeof line, &long_line) || long_line ||
        strcmp(line, "moe-hashee 1") != 0) {
        st = moe_fail(MOE_ERR_FORMAT, "'%s' is not a HashEE table (no 'moe-hashee 1' line)",
                      path);
        goto out;
    }
    if (!read_line(f, line, sizeof line, &long_line) || long_line ||
        !header_int(line, "n_vocab", 1, 1 << 24, &n_vocab) ||
        !read_line(f, line, sizeof line, &long_line) || long_line ||
        !header_int(line, "n_buckets", 1, n_vocab, &n_buckets)) {
        st = moe_fail(MOE_ERR_FORMAT, "HashEE table '%s': bad n_vocab / n_buckets header",
                      path);
        goto out;
    }
    h = hash_alloc(n_vocab, n_buckets);
    if (!h) {
        st = moe_fail(MOE_ERR_NOMEM, "HashEE: out of memory");
        goto out;
    }
    while (read_line(f, line, sizeof line, &long_line)) {
        char *sp, *end;
        long id, b;
        lineno++;
        if (long_line) {
            st = moe_fail(MOE_ERR_FORMAT, "HashEE table '%s' line %lld: too long", path,
                          (long long)lineno);
            goto out;
        }
        if (line[0] == '\0')
            continue;
        errno = 0;
        id = strtol(line, &sp, 10);
        if (sp == line || *sp != ' ' || errno) {
            st = moe_fail(MOE_ERR_FORMAT, "HashEE table '%s' line %lld: expected 'id bucket'",
                          path, (long long)lineno);
            goto out;
        }
        b = strtol(sp + 1, &end, 10);
        if (end == sp + 1 || *end || errno) {
            st = moe_fail(MOE_ERR_FORMAT, "HashEE table '%s' line %lld: expected 'id bucket'",
                          path, (long long)lineno);
            goto out;
        }
        if (id < 0 || id >= n_vocab || b < 0 || b >= n_buckets) {
            st = moe_fail(MOE_ERR_FORMAT,
                          "HashEE table '%s' line %lld: token %ld / bucket %ld out of range",
                          path, (long long)lineno, id, b);
            goto out;
        }
        if (h->bucket[id] >= 0) {
            st = moe_fail(MOE_ERR_FORMAT, "HashEE table '%s' line %lld: token %ld listed twice",
                          path, (long long)lineno, id);
            goto out;
        }
        h->bucket[id] = (int32_t)b;
    }
    if (ferror(f)) {
        st = moe_fail(MOE_ERR_IO, "error reading HashEE table '%s'", path);
        goto out;
    }
    *out = h;
    h = NULL;
out:
    moe_hash_free(h);
    fclose(f);
    return st;
}

int32_t moe_hash_n_buckets(const moe_hash_table *h)
{
    return h ? h->n_buckets : 0;
}

int32_t moe_hash_bucket(const moe_hash_table *h, int32_t token)
{
    if (!h || token < 0 || token >= h->n_vocab)
        return -1;
    return h->bucket[token];
}

int32_t moe_hash_exit_layer(const moe_hash_table *h, int32_t token, int32_t n_layer)
{
    int32_t b = moe_hash_bucket(h, token);
    int64_t layers;
    if (b < 0 || n_layer <= 0)
        return n_layer - 1;
    layers = ((int64_t)(b + 1) * n_layer + h->n_buckets - 1) / h->n_buckets;
    if (layers > n_layer)
        layers = n_layer;
    return (int32_t)layers - 1;
}

/* ---- context state ----------------------------------------------------- */

void exit_state_free(exit_state *es)
{
    if (!es)
        return;
    moe_hash_free(es->hash);
    free(es->xs);
    free(es->exit_at);
    free(es->last_exit);
    free(es->patience_cnt);
    free(es->prev_arg);
    free(es->unc);
    free(es->exit_val);
    free(es->lens_logits);
    free(es->res);
    free(es->sp_h);
    free(es->sp_q);
    free(es->sp_p);
    free(es->sp_dist);
    free(es->sp_tok);
    free(es);
}

exit_state *exit_state_get(moe_ctx *c)
{
    const model_hparams *hp = &c->model->hp;
    const size_t nb = (size_t)c->n_batch;
    exit_state *es;
    int32_t ch;
    if (c->exit)
        return c->exit;
    es = calloc(1, sizeof *es);
    if (!es)
        return NULL;
    es->p = moe_exit_default_params();
    ch = EXIT_LENS_CHUNK > hp->n_layer ? EXIT_LENS_CHUNK : hp->n_layer;
    es->lens_rows = ch < c->n_batch ? ch : c->n_batch;
    es->xs = malloc(nb * (size_t)hp->n_embd * sizeof(float));
    es->exit_at = malloc(nb * sizeof(int32_t));
    es->last_exit = malloc(nb * sizeof(int32_t));
    es->patience_cnt = malloc(nb * sizeof(int32_t));
    es->prev_arg = malloc(nb * sizeof(int32_t));
    es->unc = malloc(nb * sizeof(float));
    es->exit_val = malloc(nb * sizeof(float));
    es->lens_logits = malloc((size_t)es->lens_rows * (size_t)hp->n_vocab * sizeof(float));
    if (!es->xs || !es->exit_at || !es->last_exit || !es->patience_cnt || !es->prev_arg ||
        !es->unc || !es->exit_val || !es->lens_logits) {
        exit_state_free(es);
        return NULL;
    }
    c->exit = es;
    return es;
}

moe_status moe_ctx_set_exit(moe_ctx *c, const moe_exit_params *p)
{
    const model_hparams *hp = &c->model->hp;
    moe_exit_params np = p ? *p : moe_exit_default_params();
    moe_hash_table *h = NULL;
    exit_state *es;

    if (np.min_layer < 0)
        return moe_fail(MOE_ERR_INVALID_ARG, "minimum exit layer %d < 0", np.min_layer);
    switch (np.kind) {
    case MOE_EXIT_NONE:
        break;
    case MOE_EXIT_ENTROPY:
        if (!(np.threshold >= 0))
            return moe_fail(MOE_ERR_INVALID_ARG, "entropy threshold %g < 0", (double)np.threshold);
        break;
    case MOE_EXIT_MAXPROB:
        if (!(np.threshold >= 0 && np.threshold <= 1))
            return moe_fail(MOE_ERR_INVALID_ARG, "max-probability threshold %g not in [0, 1]",
                            (double)np.threshold);
        break;
    case MOE_EXIT_PATIENCE:
        if (np.patience < 1)
            return moe_fail(MOE_ERR_INVALID_ARG, "patience %d < 1", np.patience);
        break;
    case MOE_EXIT_WINDOW:
        if (!(np.threshold >= 0 && np.threshold <= 1) || np.window < 0)
            return moe_fail(MOE_ERR_INVALID_ARG, "window threshold %g / width %d out of range",
                            (double)np.threshold, np.window);
        break;
    case MOE_EXIT_DEPTH:
        if (np.depth < 1 || np.depth > hp->n_layer)
            return moe_fail(MOE_ERR_INVALID_ARG, "depth %d not in 1..%d (the model's layers)",
                            np.depth, hp->n_layer);
        break;
    case MOE_EXIT_HASH:
        if (!np.hash)
            return moe_fail(MOE_ERR_INVALID_ARG, "HashEE criterion without a table");
        if (np.hash->n_vocab != hp->n_vocab)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "HashEE table is for a vocabulary of %d tokens, the model has %d",
                            np.hash->n_vocab, hp->n_vocab);
        h = hash_copy(np.hash);
        if (!h)
            return moe_fail(MOE_ERR_NOMEM, "HashEE: out of memory");
        break;
    default:
        return moe_fail(MOE_ERR_INVALID_ARG, "unknown exit criterion %d", (int)np.kind);
    }
    if (np.kind == MOE_EXIT_NONE && !c->exit)
        return MOE_OK;
    es = exit_state_get(c);
    if (!es) {
        moe_hash_free(h);
        return moe_fail(MOE_ERR_NOMEM, "out of memory for early exit");
    }
    moe_hash_free(es->hash);
    es->hash = h;
    np.hash = h;
    es->p = np;
    return MOE_OK;
}

moe_status moe_ctx_set_exit_spec(moe_ctx *c, const char *spec)
{
    moe_exit_params p;
    moe_hash_table *h = NULL;
    moe_status st;

    if (spec && strncmp(spec, "hashtext:", 9) == 0 && strrchr(spec, '@')) {
        /* "hashtext:FILE[:B]@N" */
        const char *at = strrchr(spec, '@');
        int32_t min_layer;
        if (parse_int(at + 1, 0, 1 << 20, &min_layer)) {
            size_t sl = (size_t)(at - spec);
            char *base = malloc(sl + 1);
            if (!base)
                return moe_fail(MOE_ERR_NOMEM, "out of memory");
            memcpy(base, spec, sl);
            base[sl] = '\0';
            st = moe_ctx_set_exit_spec(c, base);
            free(base);
            if (st == MOE_OK)
                c->exit->p.min_layer = min_layer;
            return st;
        }
    }
    if (spec && strncmp(spec, "hashtext:", 9) == 0) {
        const char *arg = spec + 9, *last = strrchr(arg, ':');
        char *path;
        int32_t n_buckets = c->model->hp.n_layer;
        size_t pl = strlen(arg), len = 0, cap = 0;
        char *text = NULL;
        FILE *f;
        if (last && parse_int(last + 1, 1, 1 << 24, &n_buckets))
            pl = (size_t)(last - arg);
        else if (last && last[1] != '\0' && strspn(last + 1, "0123456789-+") == strlen(last + 1))
            return moe_fail(MOE_ERR_INVALID_ARG, "bad exit spec '%s': bucket count '%s'", spec,
                            last + 1);
        if (pl == 0)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "bad exit spec '%s': expected hashtext:FILE[:BUCKETS]", spec);
        path = malloc(pl + 1);
        if (!path)
            return moe_fail(MOE_ERR_NOMEM, "out of memory");
        memcpy(path, arg, pl);
        path[pl] = '\0';
        f = fopen(path, "rb");
        if (!f) {
            st = moe_fail(MOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
            free(path);
            return st;
        }
        for (;;) {
            size_t got;
            if (len + 4096 > cap) {
                char *nt = realloc(text, cap ? cap * 2 : 65536);
                if (!nt) {
                    free(text);
                    fclose(f);
                    free(path);
                    return moe_fail(MOE_ERR_NOMEM, "out of memory reading a text");
                }
                text = nt;
                cap = cap ? cap * 2 : 65536;
            }
            got = fread(text + len, 1, cap - len, f);
            len += got;
            if (got == 0)
                break;
        }
        st = ferror(f) ? moe_fail(MOE_ERR_IO, "error reading '%s'", path) : MOE_OK;
        fclose(f);
        free(path);
        if (st == MOE_OK)
            st = moe_hash_from_text(c->model, text, len, n_buckets, &h);
        free(text);
        if (st != MOE_OK)
            return st;
        p = moe_exit_default_params();
        p.kind = MOE_EXIT_HASH;
        p.hash = h;
    } else {
        st = moe_exit_parse(spec, &p, &h);
        if (st != MOE_OK)
            return st;
    }
    st = moe_ctx_set_exit(c, &p);
    moe_hash_free(h);
    return st;
}

moe_exit_params moe_ctx_get_exit(const moe_ctx *c)
{
    return c->exit ? c->exit->p : moe_exit_default_params();
}

int32_t moe_ctx_exit_layer(const moe_ctx *c, int32_t i)
{
    const exit_state *es = c->exit;
    if (!es || es->n_last <= 0 || !exit_active(c))
        return i >= -1 ? c->model->hp.n_layer - 1 : -1;
    if (i == -1)
        i = es->n_last - 1;
    if (i < 0 || i >= es->n_last)
        return -1;
    return es->last_exit[i];
}

void moe_ctx_exit_stats(const moe_ctx *c, moe_exit_stats *out)
{
    if (c->exit)
        *out = c->exit->stats;
    else
        memset(out, 0, sizeof *out);
}

void moe_ctx_exit_reset_stats(moe_ctx *c)
{
    if (c->exit)
        memset(&c->exit->stats, 0, sizeof c->exit->stats);
}

/* ---- lens ---------------------------------------------------------------- */

void exit_row_stats(const float *z, int32_t n_vocab, float *entropy, float *pmax, int32_t *argmax)
{
    float mx = -INFINITY;
    int32_t am = 0;
    double sum = 0.0, wz = 0.0;
    for (int32_t v = 0; v < n_vocab; v++)
        if (z[v] > mx) {
            mx = z[v];
            am = v;
        }
    for (int32_t v = 0; v < n_vocab; v++) {
        const float d = z[v] - mx;
        const float e = expf(d);
        sum += e;
        wz += (double)e * d;
    }
    /* H = -sum p log p with p = e/sum, log p = d - log(sum) */
    if (entropy)
        *entropy = (float)(log(sum) - wz / sum);
    if (pmax)
        *pmax = (float)(1.0 / sum);
    if (argmax)
        *argmax = am;
}

/* Record layer il of a trace entry from a lens logits row; final = the
 * token's final argmax (-1: unknown, rank not recorded). One pass for the
 * maximum, one for the sums, the top-k and the rank. */
static void lens_record(trace_entry *e, int32_t il, int32_t k, const float *z, int32_t n_vocab,
                        int32_t final)
{
    int32_t *ids = e->lens_id + (size_t)il * (size_t)k;
    float *ps = e->lens_p + (size_t)il * (size_t)k;
    const float zf = final >= 0 ? z[final] : INFINITY;
    float mx = -INFINITY;
    double sum = 0.0, wz = 0.0;
    int32_t rank = 0, n_top = 0;
    for (int32_t v = 0; v < n_vocab; v++)
        mx = z[v] > mx ? z[v] : mx;
    for (int32_t v = 0; v < n_vocab; v++) {
        const float zv = z[v], d = zv - mx, ex = expf(d);
        int32_t j;
        sum += ex;
        wz += (double)ex * d;
        if (zv > zf || (zv == zf && v < final))
            rank++;
        /* insertion into the top-k (descending, ties to the lower id) */
        if (n_top == k && !(zv > z[ids[k - 1]]))
            continue;
        j = n_top < k ? n_top++ : k - 1;
        while (j > 0 && zv > z[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = v;
    }
    for (int32_t j = 0; j < n_top; j++)
        ps[j] = (float)(expf(z[ids[j]] - mx) / sum);
    e->lens_entropy[il] = (float)(log(sum) - wz / sum);
    e->lens_rank[il] = final >= 0 ? rank : -1;
}

/* Lens for the trace: every layer token t computed (res rows 0..exit). */
static void lens_trace_token(moe_ctx *c, exit_state *es, int32_t t, int32_t exit_layer,
                             int32_t k)
{
    const model_hparams *hp = &c->model->hp;
    const size_t ne = (size_t)hp->n_embd, nv = (size_t)hp->n_vocab;
    const float *res = es->res + (size_t)t * (size_t)hp->n_layer * ne;
    trace_entry *e = trace_cur(c->trace, t);
    int32_t final = -1, l1 = exit_layer + 1;
    while (l1 > 0) {
        int32_t l0 = l1 - es->lens_rows > 0 ? l1 - es->lens_rows : 0;
        forward_head(c, res + (size_t)l0 * ne, l1 - l0, es->lens_logits);
        if (final < 0)
            exit_row_stats(es->lens_logits + (size_t)(l1 - 1 - l0) * nv, hp->n_vocab, NULL, NULL,
                           &final);
        for (int32_t l = l0; l < l1; l++)
            lens_record(e, l, k, es->lens_logits + (size_t)(l - l0) * nv, hp->n_vocab, final);
        l1 = l0;
    }
}

/* ---- the layer loop -------------------------------------------------------- */

bool exit_active(const moe_ctx *c)
{
    if (c->exit && c->exit->p.kind != MOE_EXIT_NONE)
        return true;
    return c->trace && trace_dims(c->trace)->lens_k > 0;
}

static bool kind_needs_lens(moe_exit_kind k)
{
    return k == MOE_EXIT_ENTROPY || k == MOE_EXIT_MAXPROB || k == MOE_EXIT_PATIENCE ||
           k == MOE_EXIT_WINDOW;
}

/* Run layer il over the batch: runs of still-running rows get the whole
 * layer, runs of exited rows only keys and values. */
static void run_layer(moe_ctx *c, exit_state *es, int32_t il, int32_t n, int32_t pos0)
{
    const size_t ne = (size_t)c->model->hp.n_embd;
    int32_t t = 0;
    while (t < n) {
        const bool active = es->exit_at[t] < 0;
        const int32_t s = t;
        while (t < n && (es->exit_at[t] < 0) == active)
            t++;
        memcpy(c->x, es->xs + (size_t)s * ne, (size_t)(t - s) * ne * sizeof(float));
        c->pos = pos0 + s;
        if (c->trace)
            trace_set_base(c->trace, s);
        if (active) {
            forward_layer(c, il, t - s);
            memcpy(es->xs + (size_t)s * ne, c->x, (size_t)(t - s) * ne * sizeof(float));
        } else {
            forward_kv_only(c, il, t - s);
        }
    }
    c->pos = pos0;
    if (c->trace)
        trace_set_base(c->trace, 0);
}

/* After layer il (not the last): decide which running rows exit there. */
static void decide(moe_ctx *c, exit_state *es, const int32_t *tokens, int32_t il, int32_t n)
{
    const model_hparams *hp = &c->model->hp;
    const moe_exit_params *p = &es->p;
    const size_t ne = (size_t)hp->n_embd, nv = (size_t)hp->n_vocab;
    const double log_v = log((double)hp->n_vocab > 1 ? hp->n_vocab : 2);
    int32_t *hit = es->patience_cnt; /* reused below only for non-patience kinds */

    if (p->kind == MOE_EXIT_HASH || p->kind == MOE_EXIT_DEPTH) {
        for (int32_t t = 0; t < n; t++) {
            int32_t e;
            if (es->exit_at[t] >= 0)
                continue;
            e = p->kind == MOE_EXIT_DEPTH ? p->depth - 1
                                          : moe_hash_exit_layer(es->hash, tokens[t], hp->n_layer);
            if (il >= e && il >= p->min_layer) {
                es->exit_at[t] = il;
                es->exit_val[t] = p->kind == MOE_EXIT_DEPTH
                                      ? (float)p->depth
                                      : (float)moe_hash_bucket(es->hash, tokens[t]);
            }
        }
        return;
    }
    if (!kind_needs_lens(p->kind))
        return;

    /* lens over running rows, in chunks of contiguous rows */
    for (int32_t t = 0; t < n;) {
        int32_t s, m;
        if (es->exit_at[t] >= 0) {
            t++;
            continue;
        }
        s = t;
        while (t < n && es->exit_at[t] < 0 && t - s < es->lens_rows)
            t++;
        m = t - s;
        forward_head(c, es->xs + (size_t)s * ne, m, es->lens_logits);
        for (int32_t j = 0; j < m; j++) {
            const int32_t r = s + j;
            float h, pm;
            int32_t am;
            bool stop = false;
            float val = NAN;
            exit_row_stats(es->lens_logits + (size_t)j * nv, hp->n_vocab, &h, &pm, &am);
            switch (p->kind) {
            case MOE_EXIT_ENTROPY:
                stop = h < p->threshold;
                val = h;
                break;
            case MOE_EXIT_MAXPROB:
                stop = pm > p->threshold;
                val = pm;
                break;
            case MOE_EXIT_PATIENCE:
                if (il > 0 && am == es->prev_arg[r])
                    es->patience_cnt[r]++;
                else
                    es->patience_cnt[r] = 0;
                es->prev_arg[r] = am;
                stop = es->patience_cnt[r] >= p->patience;
                val = (float)es->patience_cnt[r];
                break;
            case MOE_EXIT_WINDOW: es->unc[r] = (float)(h / log_v); break;
            default: break;
            }
            if (stop && il >= p->min_layer) {
                es->exit_at[r] = il;
                es->exit_val[r] = val;
            }
        }
    }
    if (p->kind != MOE_EXIT_WINDOW)
        return;
    /* window: decide all rows on this layer's values, then apply */
    for (int32_t t = 0; t < n; t++) {
        int32_t lo = t - p->window > 0 ? t - p->window : 0;
        int32_t hi = t + p->window < n - 1 ? t + p->window : n - 1;
        float mx = 0.0f;
        hit[t] = 0;
        if (es->exit_at[t] >= 0)
            continue;
        for (int32_t s = lo; s <= hi; s++)
            mx = es->unc[s] > mx ? es->unc[s] : mx;
        hit[t] = mx < p->threshold && il >= p->min_layer;
        if (hit[t])
            es->exit_val[t] = mx;
    }
    for (int32_t t = 0; t < n; t++)
        if (hit[t])
            es->exit_at[t] = il;
}

moe_status exit_forward_batch(moe_ctx *c, const int32_t *tokens, int32_t n, bool all)
{
    const model_hparams *hp = &c->model->hp;
    const size_t ne = (size_t)hp->n_embd;
    const int32_t n_layer = hp->n_layer, pos0 = c->pos;
    const int32_t first_out = all ? 0 : n - 1;
    const double t0 = c->trace ? util_now() : 0.0;
    const int32_t lens_k = c->trace ? trace_dims(c->trace)->lens_k : 0;
    exit_state *es = exit_state_get(c);
    int64_t run = 0;

    if (!es)
        return moe_fail(MOE_ERR_NOMEM, "out of memory for early exit");
    if (lens_k > 0 && es->res_rows < n) {
        float *nr = realloc(es->res, (size_t)n * (size_t)n_layer * ne * sizeof(float));
        if (!nr)
            return moe_fail(MOE_ERR_NOMEM, "out of memory for the logit lens of %d tokens", n);
        es->res = nr;
        es->res_rows = n;
    }
    if (c->trace) {
        moe_status st = trace_begin(c->trace, tokens, n, c->pos);
        if (st != MOE_OK)
            return st;
    }
    forward_embed(c, tokens, n);
    memcpy(es->xs, c->x, (size_t)n * ne * sizeof(float));
    for (int32_t t = 0; t < n; t++) {
        es->exit_at[t] = -1;
        es->patience_cnt[t] = 0;
        es->prev_arg[t] = -1;
        es->unc[t] = 1.0f;
        es->exit_val[t] = NAN;
    }
    for (int32_t il = 0; il < n_layer; il++) {
        run_layer(c, es, il, n, pos0);
        if (lens_k > 0)
            for (int32_t t = 0; t < n; t++)
                if (es->exit_at[t] < 0)
                    memcpy(es->res + ((size_t)t * (size_t)n_layer + (size_t)il) * ne,
                           es->xs + (size_t)t * ne, ne * sizeof(float));
        if (il < n_layer - 1)
            decide(c, es, tokens, il, n);
    }
    for (int32_t t = 0; t < n; t++) {
        if (es->exit_at[t] < 0)
            es->exit_at[t] = n_layer - 1;
        es->last_exit[t] = es->exit_at[t];
        run += es->exit_at[t] + 1;
    }
    es->n_last = n;
    es->stats.n_tokens += n;
    es->stats.layers_run += run;
    es->stats.layers_total += (int64_t)n * n_layer;

    forward_head(c, es->xs + (size_t)first_out * ne, n - first_out, c->logits);
    if (c->trace) {
        for (int32_t t = 0; t < n; t++) {
            moe_trace_token *pub = &trace_cur(c->trace, t)->pub;
            pub->exit_layer = es->exit_at[t];
            pub->exit_kind = (int32_t)es->p.kind;
            pub->exit_value = es->exit_val[t];
            if (lens_k > 0)
                lens_trace_token(c, es, t, es->exit_at[t], lens_k);
        }
    }
    c->pos = pos0 + n;
    if (c->trace)
        trace_end(c->trace, n, util_now() - t0);
    return MOE_OK;
}
