/*
 * session.c - sessions (docs/session-schema.md): the document model (per-
 * token records with their trace copies, turns, settings, model metadata,
 * display vocabulary, aggregates), its JSON form written with cJSON and read
 * back hostile-input safe, the atomic file writer, and records built from a
 * context's trace for headless callers. The only engine module that uses
 * cJSON. Must not depend on curses, readline, Lua or anything in tui/.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe.h"
#include "util.h"

moe_session_tok *moe_session_tok_new(const moe_session_dims *d, bool traced)
{
    moe_session_tok *t = calloc(1, sizeof *t);
    size_t nl, ns, ne, nk, bytes;
    char *p;
    if (!t)
        return NULL;
    t->exit_layer = -1;
    if (!traced || !d || d->n_layer <= 0)
        return t;
    nl = (size_t)d->n_layer;
    ns = nl * (size_t)(d->n_sel > 0 ? d->n_sel : 0);
    ne = nl * (size_t)(d->n_expert > 0 ? d->n_expert : 0);
    nk = nl * (size_t)(d->lens_k > 0 ? d->lens_k : 0);
    /* floats/ints first (4-byte aligned), bools last */
    bytes = (ns * 2 + ne + nl * 2 + nk * 2) * 4 + nl;
    t->blob = calloc(1, bytes ? bytes : 1);
    if (!t->blob) {
        free(t);
        return NULL;
    }
    p = t->blob;
    t->sel = (int32_t *)(void *)p; p += ns * 4;
    t->sel_w = (float *)(void *)p; p += ns * 4;
    t->probs = (float *)(void *)p; p += ne * 4;
    t->hnorm = (float *)(void *)p; p += nl * 4;
    t->lens_entropy = (float *)(void *)p; p += nl * 4;
    t->lens_id = (int32_t *)(void *)p; p += nk * 4;
    t->lens_p = (float *)(void *)p; p += nk * 4;
    t->layer_moe = (bool *)(void *)p;
    for (size_t i = 0; i < ns; i++)
        t->sel[i] = -1;
    for (size_t i = 0; i < nk; i++)
        t->lens_id[i] = -1;
    t->traced = true;
    return t;
}

void moe_session_tok_free(moe_session_tok *t)
{
    if (!t)
        return;
    free(t->blob);
    free(t->text);
    free(t);
}

void moe_session_tok_set_trace(moe_session_tok *t, const moe_session_dims *d, const moe_trace_token *e)
{
    size_t nl = (size_t)d->n_layer;
    if (!t->traced || !e)
        return;
    t->pos = e->pos;
    t->exit_layer = e->exit_layer;
    for (size_t il = 0; il < nl; il++) {
        t->layer_moe[il] = e->layer_moe ? e->layer_moe[il] : false;
        t->hnorm[il] = e->hnorm ? e->hnorm[il] : 0.0f;
        t->lens_entropy[il] = e->lens_entropy ? e->lens_entropy[il] : 0.0f;
    }
    if (d->n_sel > 0 && e->sel) {
        memcpy(t->sel, e->sel, nl * (size_t)d->n_sel * sizeof *t->sel);
        memcpy(t->sel_w, e->sel_w, nl * (size_t)d->n_sel * sizeof *t->sel_w);
    }
    if (d->n_expert > 0 && e->router_probs)
        memcpy(t->probs, e->router_probs, nl * (size_t)d->n_expert * sizeof *t->probs);
    if (d->lens_k > 0 && e->lens_id) {
        memcpy(t->lens_id, e->lens_id, nl * (size_t)d->lens_k * sizeof *t->lens_id);
        memcpy(t->lens_p, e->lens_p, nl * (size_t)d->lens_k * sizeof *t->lens_p);
    }
}

void moe_session_meta_free(moe_session_meta *m)
{
    free(m->path);
    free(m->sha256);
    free(m->name);
    free(m->arch);
    free(m->ftype);
    memset(m, 0, sizeof *m);
}

void moe_session_settings_default(moe_session_settings *s)
{
    memset(s, 0, sizeof *s);
    s->sp = moe_sampler_default_params();
    s->n_ctx = 0;
    s->lens_k = 5;
    s->n_predict = 32;
    s->exit_spec = strdup("none");
}

bool moe_session_settings_copy(moe_session_settings *dst, const moe_session_settings *src)
{
    memset(dst, 0, sizeof *dst);
    dst->sp = src->sp;
    dst->n_ctx = src->n_ctx;
    dst->lens_k = src->lens_k;
    dst->n_predict = src->n_predict;
    dst->exit_spec = strdup(src->exit_spec ? src->exit_spec : "none");
    if (src->n_route > 0) {
        dst->route = calloc((size_t)src->n_route, sizeof *dst->route);
        if (!dst->route)
            return false;
        for (int32_t i = 0; i < src->n_route; i++)
            if ((dst->route[i] = strdup(src->route[i])))
                dst->n_route++;
    }
    return dst->exit_spec != NULL;
}

void moe_session_settings_free(moe_session_settings *s)
{
    free(s->exit_spec);
    for (int32_t i = 0; i < s->n_route; i++)
        free(s->route[i]);
    free(s->route);
    s->exit_spec = NULL;
    s->route = NULL;
    s->n_route = 0;
}

void moe_session_init(moe_session *d)
{
    memset(d, 0, sizeof *d);
    moe_session_settings_default(&d->set);
}

void moe_session_vocab_free(char **v, int32_t n)
{
    if (!v)
        return;
    for (int32_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void moe_session_clear(moe_session *d)
{
    for (int32_t i = 0; i < d->n_tok; i++)
        moe_session_tok_free(d->toks[i]);
    for (int32_t i = 0; i < d->n_turn; i++)
        free(d->turns[i].prompt);
    d->n_tok = 0;
    d->n_turn = 0;
}

void moe_session_free(moe_session *d)
{
    moe_session_clear(d);
    free(d->toks);
    free(d->turns);
    moe_session_vocab_free(d->vocab, d->n_vocab);
    moe_session_meta_free(&d->meta);
    moe_session_settings_free(&d->set);
    memset(d, 0, sizeof *d);
}

bool moe_session_append(moe_session *d, moe_session_tok *t)
{
    if (d->n_tok == d->cap_tok) {
        int32_t cap = d->cap_tok ? d->cap_tok * 2 : 256;
        moe_session_tok **n = realloc(d->toks, (size_t)cap * sizeof *n);
        if (!n) {
            moe_session_tok_free(t);
            return false;
        }
        d->toks = n;
        d->cap_tok = cap;
    }
    t->index = d->n_tok;
    if (d->n_turn == 0 && !moe_session_begin_turn(d, "")) {
        moe_session_tok_free(t);
        return false;
    }
    t->turn = d->n_turn - 1;
    d->toks[d->n_tok++] = t;
    if (t->sampled)
        d->turns[d->n_turn - 1].n_gen++;
    else
        d->turns[d->n_turn - 1].n_prompt++;
    return true;
}

bool moe_session_begin_turn(moe_session *d, const char *prompt)
{
    moe_session_turn *tn;
    if (d->n_turn == d->cap_turn) {
        int32_t cap = d->cap_turn ? d->cap_turn * 2 : 16;
        moe_session_turn *n = realloc(d->turns, (size_t)cap * sizeof *n);
        if (!n)
            return false;
        d->turns = n;
        d->cap_turn = cap;
    }
    tn = &d->turns[d->n_turn];
    memset(tn, 0, sizeof *tn);
    tn->prompt = strdup(prompt ? prompt : "");
    if (!tn->prompt)
        return false;
    tn->start = d->n_tok;
    d->n_turn++;
    return true;
}

void moe_session_set_vocab(moe_session *d, char **vocab, int32_t n)
{
    moe_session_vocab_free(d->vocab, d->n_vocab);
    d->vocab = vocab;
    d->n_vocab = vocab ? n : 0;
}

bool moe_session_set_route(moe_session *d, char **route, int32_t n)
{
    char **copy = NULL;
    if (n > 0) {
        copy = calloc((size_t)n, sizeof *copy);
        if (!copy)
            return false;
        for (int32_t i = 0; i < n; i++)
            if (!(copy[i] = strdup(route[i]))) {
                moe_session_vocab_free(copy, n);
                return false;
            }
    }
    for (int32_t i = 0; i < d->set.n_route; i++)
        free(d->set.route[i]);
    free(d->set.route);
    d->set.route = copy;
    d->set.n_route = n;
    return true;
}

const char *moe_session_piece(const moe_session *d, int32_t id, char *buf, size_t n)
{
    if (id >= 0 && id < d->n_vocab && d->vocab[id])
        return d->vocab[id];
    snprintf(buf, n, "#%d", (int)id);
    return buf;
}

void moe_session_load(const moe_session *d, bool gen_only, int64_t *load)
{
    const moe_session_dims *dm = &d->dims;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    memset(load, 0, ne * sizeof *load);
    if (dm->n_expert <= 0)
        return;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const moe_session_tok *t = d->toks[i];
        if (!t->traced || (gen_only && !t->sampled))
            continue;
        for (int32_t il = 0; il < dm->n_layer; il++)
            for (int32_t s = 0; s < dm->n_sel; s++) {
                int32_t e = t->sel[(size_t)il * (size_t)dm->n_sel + (size_t)s];
                if (e >= 0 && e < dm->n_expert)
                    load[(size_t)il * (size_t)dm->n_expert + (size_t)e]++;
            }
    }
}

void moe_session_stats_get(const moe_session *d, moe_session_stats *s)
{
    double lp = 0, ex = 0;
    memset(s, 0, sizeof *s);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const moe_session_tok *t = d->toks[i];
        s->n_tokens++;
        if (t->sampled) {
            s->n_gen++;
            s->gen_ms += t->time_ms;
            lp += t->logprob;
        } else {
            s->n_prompt++;
        }
        if (t->traced) {
            s->n_traced++;
            ex += t->exit_layer;
        }
    }
    s->tok_s = s->gen_ms > 0 ? s->n_gen / (s->gen_ms / 1e3) : 0;
    s->mean_logprob = s->n_gen ? lp / s->n_gen : 0;
    s->perplexity = s->n_gen ? exp(-s->mean_logprob) : 0;
    s->mean_exit_layer = s->n_traced ? ex / s->n_traced : 0;
}

char *moe_session_sanitize(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    char *out = malloc(4 * len + 1);
    size_t o = 0;
    if (!out)
        return NULL;
    for (size_t i = 0; p && i < len;) {
        size_t n = 0;
        unsigned char c = p[i];
        if ((c >= 0x20 && c < 0x7f) || c == '\n' || c == '\t') {
            n = 1;
        } else if (c >= 0xc2 && c <= 0xf4) {
            size_t want = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
            if (i + want <= len) {
                n = want;
                for (size_t j = 1; j < want; j++)
                    if ((p[i + j] & 0xc0) != 0x80)
                        n = 0;
                /* overlongs and surrogates */
                if (n == 3 && c == 0xe0 && p[i + 1] < 0xa0)
                    n = 0;
                if (n == 3 && c == 0xed && p[i + 1] >= 0xa0)
                    n = 0;
                if (n == 4 && c == 0xf0 && p[i + 1] < 0x90)
                    n = 0;
                if (n == 4 && c == 0xf4 && p[i + 1] >= 0x90)
                    n = 0;
            }
        }
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            o += (size_t)snprintf(out + o, 5, "\\x%02x", c);
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

/* ---- records from a context's trace (headless callers) -------------------- */

static char *ses_strdup0(const char *v)
{
    return strdup(v ? v : "");
}

char **moe_session_vocab_from_model(const moe_model *model, int32_t *n)
{
    moe_model_info info;
    char **v;
    *n = 0;
    moe_model_get_info(model, &info);
    v = calloc((size_t)(info.n_vocab > 0 ? info.n_vocab : 1), sizeof *v);
    if (!v)
        return NULL;
    for (int32_t i = 0; i < info.n_vocab; i++) {
        size_t len = 0;
        const char *piece = moe_token_piece(model, i, &len);
        if (!(v[i] = moe_session_sanitize(piece ? piece : "", piece ? len : 0))) {
            moe_session_vocab_free(v, i);
            return NULL;
        }
    }
    *n = info.n_vocab;
    return v;
}

moe_status moe_session_meta_from_model(moe_session_meta *m, const moe_model *model,
                                       const char *sha256)
{
    moe_model_info info;
    moe_model_get_info(model, &info);
    moe_session_meta_free(m);
    m->path = ses_strdup0(info.path);
    {
        /* NULL: fingerprint the model file now */
        char hex[65];
        if (!sha256 && moe_sha256_file(info.path, hex))
            sha256 = hex;
        m->sha256 = ses_strdup0(sha256);
    }
    m->name = ses_strdup0(info.name);
    m->arch = ses_strdup0(info.arch);
    m->ftype = ses_strdup0(info.ftype);
    m->n_vocab = info.n_vocab;
    m->n_ctx_train = info.n_ctx_train;
    m->n_embd = info.n_embd;
    m->n_layer = info.n_layer;
    m->n_head = info.n_head;
    m->n_head_kv = info.n_head_kv;
    m->n_ff = info.n_ff;
    m->n_expert = info.n_expert;
    m->n_expert_used = info.n_expert_used;
    m->n_ff_exp = info.n_ff_exp;
    m->has_shared_expert = info.has_shared_expert;
    m->n_params = info.n_params;
    m->file_size = info.file_size;
    m->weight_bytes = info.weight_bytes;
    if (!m->path || !m->sha256 || !m->name || !m->arch || !m->ftype)
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    return MOE_OK;
}

moe_status moe_session_set_model(moe_session *d, const moe_ctx *ctx, const char *sha256)
{
    const moe_model *model = ctx ? moe_ctx_model(ctx) : NULL;
    moe_trace_dims td;
    moe_trace_params tp;
    moe_status st;
    char **v;
    int32_t n_vocab;
    if (!model)
        return moe_fail(MOE_ERR_INVALID_ARG, "session: no context");
    td = moe_ctx_trace_dims(ctx);
    tp = moe_ctx_get_trace(ctx);
    if (d->n_tok > 0 && (td.n_layer != d->dims.n_layer || td.n_expert != d->dims.n_expert ||
                         td.n_sel != d->dims.n_sel || td.lens_k != d->dims.lens_k))
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "session: the context's trace dims differ from the records'");
    if (!(v = moe_session_vocab_from_model(model, &n_vocab)))
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    st = moe_session_meta_from_model(&d->meta, model, sha256);
    moe_session_set_vocab(d, v, n_vocab);
    d->dims.n_layer = td.n_layer;
    d->dims.n_expert = td.n_expert;
    d->dims.n_sel = td.n_sel;
    d->dims.lens_k = td.lens_k;
    d->set.n_ctx = moe_ctx_n_ctx(ctx);
    d->set.lens_k = tp.lens_k;
    return st;
}

moe_status moe_session_add_token_from_trace(moe_session *d, const moe_ctx *ctx, int32_t i)
{
    const moe_trace_token *e = ctx ? moe_ctx_trace_get(ctx, i) : NULL;
    const moe_trace_token *prev = ctx && i > 0 ? moe_ctx_trace_get(ctx, i - 1) : NULL;
    const moe_session_dims *dm = &d->dims;
    moe_trace_dims td;
    moe_session_tok *t;
    size_t len = 0;
    const char *piece;
    if (!e)
        return moe_fail(MOE_ERR_INVALID_ARG, "session: no trace entry %d", (int)i);
    td = moe_ctx_trace_dims(ctx);
    if (td.n_layer != dm->n_layer || td.n_expert != dm->n_expert || td.n_sel != dm->n_sel ||
        td.lens_k != dm->lens_k)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "session: trace dims differ (call moe_session_set_model first)");
    if (!(t = moe_session_tok_new(dm, true)))
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    moe_session_tok_set_trace(t, dm, e);
    t->id = e->token;
    piece = moe_token_piece(moe_ctx_model(ctx), e->token, &len);
    t->text = moe_session_sanitize(piece ? piece : "", piece ? len : 0);
    t->prompt = e->prefill || e->pos == 0;
    t->sampled = !t->prompt;
    t->time_ms = e->time_ms;
    if (t->sampled) {
        t->logprob = NAN;
        /* the lens at the exit layer of the previous token is the
         * distribution this token was drawn from */
        if (prev && prev->lens_id && prev->lens_p && dm->lens_k > 0 && prev->exit_layer >= 0 &&
            prev->exit_layer < dm->n_layer && prev->pos + 1 == e->pos) {
            size_t o = (size_t)prev->exit_layer * (size_t)dm->lens_k;
            for (int32_t k = 0; k < dm->lens_k; k++) {
                int32_t id = prev->lens_id[o + (size_t)k];
                float p = prev->lens_p[o + (size_t)k];
                if (id < 0)
                    continue;
                if (id == t->id)
                    t->logprob = p > 0 ? logf(p) : -INFINITY;
                if (t->n_top < MOE_SESSION_N_CAND) {
                    t->top[t->n_top].id = id;
                    t->top[t->n_top].p = p;
                    t->n_top++;
                }
            }
        }
    }
    if (!t->text) {
        moe_session_tok_free(t);
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    }
    if (!moe_session_append(d, t))
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    return MOE_OK;
}

/* ---- session files ------------------------------------------------------ */

#define SES_MAX_LAYER 4096
#define SES_MAX_EXPERT 4096
#define SES_MAX_SEL 256
#define SES_MAX_LENS 256
#define SES_MAX_VOCAB (1 << 22)

moe_status moe_write_atomic(const char *path, const void *data, size_t len)
{
    const char *bytes = data;
    moe_status st = MOE_ERR_IO;
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    int fd;
    size_t off = 0;
    if (!tmp) {
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    }
    snprintf(tmp, pl + 16, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        st = moe_fail(MOE_ERR_IO, "cannot create a temp file beside '%s': %s", path,
                      strerror(errno));
        free(tmp);
        return st;
    }
    while (off < len) {
        ssize_t w = write(fd, bytes + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            st = moe_fail(MOE_ERR_IO, "writing '%s': %s", tmp, strerror(errno));
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        st = moe_fail(MOE_ERR_IO, "fsync '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    fchmod(fd, 0644);
    if (close(fd) != 0) {
        fd = -1;
        st = moe_fail(MOE_ERR_IO, "closing '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        st = moe_fail(MOE_ERR_IO, "renaming to '%s': %s", path, strerror(errno));
        goto fail;
    }
    free(tmp);
    return MOE_OK;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return st;
}

/* ---- writing ---------------------------------------------------------- */

static void js_num(cJSON *o, const char *k, double v)
{
    if (isfinite(v))
        cJSON_AddNumberToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

static cJSON *js_numv(double v)
{
    return isfinite(v) ? cJSON_CreateNumber(v) : cJSON_CreateNull();
}

static void js_str(cJSON *o, const char *k, const char *v)
{
    cJSON_AddStringToObject(o, k, v ? v : "");
}

static cJSON *ses_pair(int32_t id, float p)
{
    cJSON *a = cJSON_CreateArray();
    if (a) {
        cJSON_AddItemToArray(a, cJSON_CreateNumber(id));
        cJSON_AddItemToArray(a, js_numv(p));
    }
    return a;
}

static cJSON *ses_model(const moe_session_meta *m)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    js_str(o, "path", m->path);
    js_str(o, "sha256", m->sha256);
    js_str(o, "name", m->name);
    js_str(o, "arch", m->arch);
    js_str(o, "ftype", m->ftype);
    cJSON_AddNumberToObject(o, "n_vocab", m->n_vocab);
    cJSON_AddNumberToObject(o, "n_ctx_train", m->n_ctx_train);
    cJSON_AddNumberToObject(o, "n_embd", m->n_embd);
    cJSON_AddNumberToObject(o, "n_layer", m->n_layer);
    cJSON_AddNumberToObject(o, "n_head", m->n_head);
    cJSON_AddNumberToObject(o, "n_head_kv", m->n_head_kv);
    cJSON_AddNumberToObject(o, "n_ff", m->n_ff);
    cJSON_AddNumberToObject(o, "n_expert", m->n_expert);
    cJSON_AddNumberToObject(o, "n_expert_used", m->n_expert_used);
    cJSON_AddNumberToObject(o, "n_ff_exp", m->n_ff_exp);
    cJSON_AddBoolToObject(o, "has_shared_expert", m->has_shared_expert);
    cJSON_AddNumberToObject(o, "n_params", (double)m->n_params);
    cJSON_AddNumberToObject(o, "file_size", (double)m->file_size);
    cJSON_AddNumberToObject(o, "weight_bytes", (double)m->weight_bytes);
    return o;
}

static cJSON *ses_settings(const moe_session_settings *s)
{
    cJSON *o = cJSON_CreateObject(), *sp, *r;
    char buf[256];
    size_t off = 0;
    if (!o)
        return NULL;
    sp = cJSON_AddObjectToObject(o, "sampler");
    if (sp) {
        js_num(sp, "temp", s->sp.temp);
        cJSON_AddNumberToObject(sp, "top_k", s->sp.top_k);
        js_num(sp, "top_p", s->sp.top_p);
        js_num(sp, "min_p", s->sp.min_p);
        js_num(sp, "typical_p", s->sp.typical_p);
        js_num(sp, "repeat_penalty", s->sp.repeat_penalty);
        js_num(sp, "freq_penalty", s->sp.freq_penalty);
        js_num(sp, "presence_penalty", s->sp.presence_penalty);
        cJSON_AddNumberToObject(sp, "penalty_last_n", s->sp.penalty_last_n);
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)s->sp.seed);
        js_str(sp, "seed", buf);
        buf[0] = '\0';
        for (int32_t i = 0; i < s->sp.n_order && i < MOE_STAGE_COUNT && off < sizeof buf; i++)
            off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                                    moe_sampler_stage_name(s->sp.order[i]));
        js_str(sp, "order", buf);
    }
    cJSON_AddNumberToObject(o, "n_ctx", s->n_ctx);
    cJSON_AddNumberToObject(o, "lens_k", s->lens_k);
    cJSON_AddNumberToObject(o, "n_predict", s->n_predict);
    js_str(o, "exit", s->exit_spec ? s->exit_spec : "none");
    r = cJSON_AddArrayToObject(o, "route");
    for (int32_t i = 0; r && i < s->n_route; i++)
        cJSON_AddItemToArray(r, cJSON_CreateString(s->route[i]));
    return o;
}

static cJSON *ses_token(const moe_session *d, const moe_session_tok *t)
{
    const moe_session_dims *dm = &d->dims;
    cJSON *o = cJSON_CreateObject(), *a;
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "i", t->index);
    cJSON_AddNumberToObject(o, "pos", t->pos);
    cJSON_AddNumberToObject(o, "id", t->id);
    js_str(o, "text", t->text);
    cJSON_AddNumberToObject(o, "turn", t->turn);
    cJSON_AddBoolToObject(o, "prompt", t->prompt);
    js_num(o, "time_ms", t->time_ms);
    if (t->sampled) {
        js_num(o, "logprob", t->logprob);
        a = cJSON_AddArrayToObject(o, "top");
        for (int32_t j = 0; a && j < t->n_top; j++)
            cJSON_AddItemToArray(a, ses_pair(t->top[j].id, t->top[j].p));
        a = cJSON_AddArrayToObject(o, "stages");
        for (int32_t s = 0; a && s < t->n_stage; s++) {
            cJSON *so = cJSON_CreateObject(), *c;
            if (!so)
                break;
            js_str(so, "stage", moe_sampler_stage_name((moe_sampler_stage)t->stage[s]));
            c = cJSON_AddArrayToObject(so, "cand");
            for (int32_t j = 0; c && j < t->n_cand[s]; j++)
                cJSON_AddItemToArray(c, ses_pair(t->cand[s][j].id, t->cand[s][j].p));
            cJSON_AddItemToArray(a, so);
        }
    }
    if (!t->traced)
        return o;
    cJSON_AddNumberToObject(o, "exit_layer", t->exit_layer);
    a = cJSON_AddArrayToObject(o, "layers");
    for (int32_t il = 0; a && il < dm->n_layer; il++) {
        cJSON *lo = cJSON_CreateObject(), *ids, *ws, *ps, *ls;
        size_t so = (size_t)il * (size_t)dm->n_sel;
        if (!lo)
            break;
        cJSON_AddBoolToObject(lo, "moe", t->layer_moe[il]);
        if (t->layer_moe[il] && dm->n_expert > 0) {
            ids = cJSON_AddArrayToObject(lo, "experts");
            ws = cJSON_AddArrayToObject(lo, "weights");
            for (int32_t s = 0; ids && ws && s < dm->n_sel; s++) {
                if (t->sel[so + (size_t)s] < 0)
                    continue;
                cJSON_AddItemToArray(ids, cJSON_CreateNumber(t->sel[so + (size_t)s]));
                cJSON_AddItemToArray(ws, js_numv(t->sel_w[so + (size_t)s]));
            }
            ps = cJSON_AddArrayToObject(lo, "probs");
            for (int32_t e = 0; ps && e < dm->n_expert; e++)
                cJSON_AddItemToArray(
                    ps, js_numv(t->probs[(size_t)il * (size_t)dm->n_expert + (size_t)e]));
        }
        js_num(lo, "hnorm", t->hnorm[il]);
        if (dm->lens_k > 0) {
            js_num(lo, "entropy", t->lens_entropy[il]);
            ls = cJSON_AddArrayToObject(lo, "lens");
            for (int32_t k = 0; ls && k < dm->lens_k; k++) {
                size_t ki = (size_t)il * (size_t)dm->lens_k + (size_t)k;
                if (t->lens_id[ki] >= 0)
                    cJSON_AddItemToArray(ls, ses_pair(t->lens_id[ki], t->lens_p[ki]));
            }
        }
        cJSON_AddItemToArray(a, lo);
    }
    return o;
}

static void ses_mark(bool *mark, int32_t n, int32_t id)
{
    if (id >= 0 && id < n)
        mark[id] = true;
}

static cJSON *ses_pieces(const moe_session *d)
{
    cJSON *o = cJSON_CreateObject();
    bool *mark;
    const moe_session_dims *dm = &d->dims;
    if (!o || d->n_vocab <= 0)
        return o;
    mark = calloc((size_t)d->n_vocab, 1);
    if (!mark)
        return o;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const moe_session_tok *t = d->toks[i];
        ses_mark(mark, d->n_vocab, t->id);
        for (int32_t j = 0; t->sampled && j < t->n_top; j++)
            ses_mark(mark, d->n_vocab, t->top[j].id);
        for (int32_t s = 0; t->sampled && s < t->n_stage; s++)
            for (int32_t j = 0; j < t->n_cand[s]; j++)
                ses_mark(mark, d->n_vocab, t->cand[s][j].id);
        if (t->traced)
            for (size_t k = 0; k < (size_t)dm->n_layer * (size_t)dm->lens_k; k++)
                ses_mark(mark, d->n_vocab, t->lens_id[k]);
    }
    for (int32_t id = 0; id < d->n_vocab; id++)
        if (mark[id] && d->vocab[id]) {
            char key[16];
            snprintf(key, sizeof key, "%d", (int)id);
            cJSON_AddStringToObject(o, key, d->vocab[id]);
        }
    free(mark);
    return o;
}

static cJSON *ses_stats(const moe_session *d)
{
    const moe_session_dims *dm = &d->dims;
    cJSON *o = cJSON_CreateObject(), *ly;
    moe_session_stats s;
    int64_t *load = NULL, *gload = NULL;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    if (!o)
        return NULL;
    moe_session_stats_get(d, &s);
    cJSON_AddNumberToObject(o, "n_tokens", s.n_tokens);
    cJSON_AddNumberToObject(o, "n_prompt", s.n_prompt);
    cJSON_AddNumberToObject(o, "n_gen", s.n_gen);
    cJSON_AddNumberToObject(o, "n_traced", s.n_traced);
    js_num(o, "gen_ms", s.gen_ms);
    js_num(o, "tok_s", s.tok_s);
    js_num(o, "mean_logprob", s.mean_logprob);
    js_num(o, "perplexity", s.perplexity);
    js_num(o, "mean_exit_layer", s.mean_exit_layer);
    ly = cJSON_AddArrayToObject(o, "layers");
    if (!ly || ne == 0)
        return o;
    load = calloc(ne, sizeof *load);
    gload = calloc(ne, sizeof *gload);
    if (load && gload) {
        moe_session_load(d, false, load);
        moe_session_load(d, true, gload);
        for (int32_t il = 0; il < dm->n_layer; il++) {
            cJSON *lo = cJSON_CreateObject(), *la, *ga;
            if (!lo)
                break;
            cJSON_AddNumberToObject(lo, "layer", il);
            la = cJSON_AddArrayToObject(lo, "load");
            ga = cJSON_AddArrayToObject(lo, "load_gen");
            for (int32_t e = 0; la && ga && e < dm->n_expert; e++) {
                size_t k = (size_t)il * (size_t)dm->n_expert + (size_t)e;
                cJSON_AddItemToArray(la, cJSON_CreateNumber((double)load[k]));
                cJSON_AddItemToArray(ga, cJSON_CreateNumber((double)gload[k]));
            }
            cJSON_AddItemToArray(ly, lo);
        }
    }
    free(load);
    free(gload);
    return o;
}

char *moe_session_json(const moe_session *d)
{
    cJSON *root = cJSON_CreateObject(), *a, *dm;
    char *out;
    if (!root)
        return NULL;
    js_str(root, "format", MOE_SESSION_FORMAT);
    cJSON_AddNumberToObject(root, "version", MOE_SESSION_VERSION);
    if (d->meta.path)
        cJSON_AddItemToObject(root, "model", ses_model(&d->meta));
    else
        cJSON_AddNullToObject(root, "model");
    cJSON_AddItemToObject(root, "settings", ses_settings(&d->set));
    dm = cJSON_AddObjectToObject(root, "dims");
    if (dm) {
        cJSON_AddNumberToObject(dm, "n_layer", d->dims.n_layer);
        cJSON_AddNumberToObject(dm, "n_expert", d->dims.n_expert);
        cJSON_AddNumberToObject(dm, "n_sel", d->dims.n_sel);
        cJSON_AddNumberToObject(dm, "lens_k", d->dims.lens_k);
    }
    a = cJSON_AddArrayToObject(root, "turns");
    for (int32_t i = 0; a && i < d->n_turn; i++) {
        cJSON *t = cJSON_CreateObject();
        if (!t)
            break;
        js_str(t, "prompt", d->turns[i].prompt);
        cJSON_AddNumberToObject(t, "start", d->turns[i].start);
        cJSON_AddNumberToObject(t, "n_prompt", d->turns[i].n_prompt);
        cJSON_AddNumberToObject(t, "n_gen", d->turns[i].n_gen);
        cJSON_AddItemToArray(a, t);
    }
    a = cJSON_AddArrayToObject(root, "tokens");
    for (int32_t i = 0; a && i < d->n_tok; i++)
        cJSON_AddItemToArray(a, ses_token(d, d->toks[i]));
    cJSON_AddItemToObject(root, "pieces", ses_pieces(d));
    cJSON_AddItemToObject(root, "stats", ses_stats(d));
    out = cJSON_Print(root);
    cJSON_Delete(root);
    return out;
}

moe_status moe_session_write(const moe_session *d, const char *path)
{
    char *js = moe_session_json(d);
    moe_status st;
    if (!js)
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    st = moe_write_atomic(path, js, strlen(js));
    free(js);
    return st;
}

/* ---- reading (every value hostile until checked) ------------------------ */

static double js_getf(const cJSON *o, const char *k, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (cJSON_IsNumber(v))
        return v->valuedouble;
    if (cJSON_IsNull(v))
        return NAN;
    return def;
}

static int32_t js_geti(const cJSON *o, const char *k, int32_t lo, int32_t hi, int32_t def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    double x;
    if (!cJSON_IsNumber(v))
        return def;
    x = v->valuedouble;
    if (!(x >= lo && x <= hi))
        return def;
    return (int32_t)x;
}

static char *js_gets(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring ? strdup(v->valuestring) : NULL;
}

static bool js_pair(const cJSON *a, int32_t *id, float *p)
{
    const cJSON *x = cJSON_GetArrayItem(a, 0), *y = cJSON_GetArrayItem(a, 1);
    if (!cJSON_IsArray(a) || !cJSON_IsNumber(x) || !(x->valuedouble >= 0) ||
        x->valuedouble >= SES_MAX_VOCAB)
        return false;
    *id = (int32_t)x->valuedouble;
    *p = cJSON_IsNumber(y) ? (float)y->valuedouble : NAN;
    return true;
}

static void ses_read_meta(moe_session_meta *m, const cJSON *o)
{
    m->path = js_gets(o, "path");
    m->sha256 = js_gets(o, "sha256");
    m->name = js_gets(o, "name");
    m->arch = js_gets(o, "arch");
    m->ftype = js_gets(o, "ftype");
    if (!m->path)
        m->path = strdup("");
    m->n_vocab = js_geti(o, "n_vocab", 0, SES_MAX_VOCAB, 0);
    m->n_ctx_train = js_geti(o, "n_ctx_train", 0, INT32_MAX, 0);
    m->n_embd = js_geti(o, "n_embd", 0, INT32_MAX, 0);
    m->n_layer = js_geti(o, "n_layer", 0, SES_MAX_LAYER, 0);
    m->n_head = js_geti(o, "n_head", 0, INT32_MAX, 0);
    m->n_head_kv = js_geti(o, "n_head_kv", 0, INT32_MAX, 0);
    m->n_ff = js_geti(o, "n_ff", 0, INT32_MAX, 0);
    m->n_expert = js_geti(o, "n_expert", 0, SES_MAX_EXPERT, 0);
    m->n_expert_used = js_geti(o, "n_expert_used", 0, SES_MAX_EXPERT, 0);
    m->n_ff_exp = js_geti(o, "n_ff_exp", 0, INT32_MAX, 0);
    m->has_shared_expert = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "has_shared_expert"));
    m->n_params = (int64_t)fmax(0, js_getf(o, "n_params", 0));
    m->file_size = (int64_t)fmax(0, js_getf(o, "file_size", 0));
    m->weight_bytes = (int64_t)fmax(0, js_getf(o, "weight_bytes", 0));
}

static bool ses_read_settings(moe_session_settings *s, const cJSON *o)
{
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(o, "sampler");
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "route"), *it;
    char *str;
    if (cJSON_IsObject(sp)) {
        s->sp.temp = (float)js_getf(sp, "temp", s->sp.temp);
        s->sp.top_k = js_geti(sp, "top_k", INT32_MIN, INT32_MAX, s->sp.top_k);
        s->sp.top_p = (float)js_getf(sp, "top_p", s->sp.top_p);
        s->sp.min_p = (float)js_getf(sp, "min_p", s->sp.min_p);
        s->sp.typical_p = (float)js_getf(sp, "typical_p", s->sp.typical_p);
        s->sp.repeat_penalty = (float)js_getf(sp, "repeat_penalty", s->sp.repeat_penalty);
        s->sp.freq_penalty = (float)js_getf(sp, "freq_penalty", s->sp.freq_penalty);
        s->sp.presence_penalty = (float)js_getf(sp, "presence_penalty", s->sp.presence_penalty);
        s->sp.penalty_last_n = js_geti(sp, "penalty_last_n", 0, INT32_MAX, s->sp.penalty_last_n);
        if ((str = js_gets(sp, "seed"))) {
            s->sp.seed = strtoull(str, NULL, 10);
            free(str);
        }
        if ((str = js_gets(sp, "order"))) {
            moe_sampler_params tmp = s->sp;
            if (*str && moe_sampler_parse_order(str, &tmp) == MOE_OK)
                s->sp = tmp;
            free(str);
        }
    }
    s->n_ctx = js_geti(o, "n_ctx", 0, INT32_MAX, 0);
    s->lens_k = js_geti(o, "lens_k", 0, SES_MAX_LENS, s->lens_k);
    s->n_predict = js_geti(o, "n_predict", -1, INT32_MAX, s->n_predict);
    if ((str = js_gets(o, "exit"))) {
        free(s->exit_spec);
        s->exit_spec = str;
    }
    if (cJSON_IsArray(r)) {
        int n = cJSON_GetArraySize(r);
        s->route = calloc((size_t)(n > 0 ? n : 1), sizeof *s->route);
        if (!s->route)
            return false;
        cJSON_ArrayForEach(it, r) {
            if (cJSON_IsString(it) && it->valuestring && s->n_route < n)
                s->route[s->n_route++] = strdup(it->valuestring);
        }
    }
    return true;
}

static moe_status ses_read_token(moe_session *d, const cJSON *o, int32_t index)
{
    const moe_session_dims *dm = &d->dims;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(o, "stages"), *it;
    bool traced = cJSON_IsArray(layers);
    moe_session_tok *t;
    int32_t il = 0;
    if (!cJSON_IsObject(o)) {
        return moe_fail(MOE_ERR_FORMAT, "token %d is not an object", (int)index);
    }
    t = moe_session_tok_new(dm, traced);
    if (!t) {
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    }
    t->pos = js_geti(o, "pos", 0, INT32_MAX, 0);
    t->id = js_geti(o, "id", 0, SES_MAX_VOCAB - 1, 0);
    t->text = js_gets(o, "text");
    if (!t->text)
        t->text = strdup("");
    t->prompt = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "prompt"));
    t->time_ms = (float)js_getf(o, "time_ms", 0);
    if (cJSON_IsArray(stages)) {
        t->sampled = true;
        t->logprob = (float)js_getf(o, "logprob", 0);
        cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(o, "top")) {
            if (t->n_top < MOE_SESSION_N_CAND &&
                js_pair(it, &t->top[t->n_top].id, &t->top[t->n_top].p))
                t->n_top++;
        }
        cJSON_ArrayForEach(it, stages) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(it, "cand"), *ci;
            const char *name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(it, "stage"));
            int32_t st = -1, s = t->n_stage;
            for (int k = 0; name && k < MOE_STAGE_COUNT; k++)
                if (strcmp(name, moe_sampler_stage_name((moe_sampler_stage)k)) == 0)
                    st = k;
            if (st < 0 || s >= MOE_STAGE_COUNT)
                continue;
            t->stage[s] = st;
            cJSON_ArrayForEach(ci, c) {
                if (t->n_cand[s] < MOE_SESSION_N_CAND &&
                    js_pair(ci, &t->cand[s][t->n_cand[s]].id, &t->cand[s][t->n_cand[s]].p))
                    t->n_cand[s]++;
            }
            t->n_stage++;
        }
    }
    if (traced) {
        t->exit_layer = js_geti(o, "exit_layer", -1, dm->n_layer - 1, dm->n_layer - 1);
        cJSON_ArrayForEach(it, layers) {
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(it, "experts");
            const cJSON *ws = cJSON_GetObjectItemCaseSensitive(it, "weights");
            const cJSON *ps = cJSON_GetObjectItemCaseSensitive(it, "probs");
            const cJSON *ls = cJSON_GetObjectItemCaseSensitive(it, "lens"), *x;
            int32_t s = 0, e = 0, k = 0;
            if (il >= dm->n_layer)
                break;
            t->layer_moe[il] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(it, "moe"));
            t->hnorm[il] = (float)js_getf(it, "hnorm", 0);
            t->lens_entropy[il] = (float)js_getf(it, "entropy", 0);
            cJSON_ArrayForEach(x, ids) {
                if (s < dm->n_sel && cJSON_IsNumber(x) && x->valuedouble >= 0 &&
                    x->valuedouble < dm->n_expert) {
                    const cJSON *w = cJSON_GetArrayItem(ws, s);
                    size_t si = (size_t)il * (size_t)dm->n_sel + (size_t)s;
                    t->sel[si] = (int32_t)x->valuedouble;
                    t->sel_w[si] = cJSON_IsNumber(w) ? (float)w->valuedouble : NAN;
                    s++;
                }
            }
            cJSON_ArrayForEach(x, ps) {
                if (e < dm->n_expert)
                    t->probs[(size_t)il * (size_t)dm->n_expert + (size_t)e++] =
                        cJSON_IsNumber(x) ? (float)x->valuedouble : NAN;
            }
            cJSON_ArrayForEach(x, ls) {
                size_t ki = (size_t)il * (size_t)dm->lens_k + (size_t)k;
                if (k < dm->lens_k && js_pair(x, &t->lens_id[ki], &t->lens_p[ki]))
                    k++;
            }
            il++;
        }
    }
    if (!t->text || !moe_session_append(d, t)) {
        if (!t->text)
            moe_session_tok_free(t);
        return moe_fail(MOE_ERR_NOMEM, "out of memory");
    }
    t->pos = js_geti(o, "pos", 0, INT32_MAX, 0);
    return MOE_OK;
}

moe_status moe_session_parse(moe_session *d, const char *json)
{
    cJSON *root = cJSON_Parse(json), *it;
    const cJSON *model, *dims, *turns, *toks, *pieces;
    const char *fmt;
    int32_t idx = 0, max_id = -1;
    moe_status st = MOE_ERR_FORMAT;
    if (!root) {
        return moe_fail(MOE_ERR_FORMAT, "not valid JSON (near byte %ld)",
                        cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - json) : -1L);
    }
    fmt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "format"));
    if (!fmt || strcmp(fmt, MOE_SESSION_FORMAT) != 0) {
        st = moe_fail(MOE_ERR_FORMAT, "not a moe-studio session (format is not \"%s\")",
                MOE_SESSION_FORMAT);
        goto out;
    }
    if (js_geti(root, "version", 0, INT32_MAX, -1) != MOE_SESSION_VERSION) {
        st = moe_fail(MOE_ERR_UNSUPPORTED, "session version %d is not supported (this build reads %d)",
                (int)js_geti(root, "version", 0, INT32_MAX, -1), MOE_SESSION_VERSION);
        goto out;
    }
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsObject(model))
        ses_read_meta(&d->meta, model);
    if (!ses_read_settings(&d->set, cJSON_GetObjectItemCaseSensitive(root, "settings"))) {
        st = moe_fail(MOE_ERR_NOMEM, "out of memory");
        goto out;
    }
    dims = cJSON_GetObjectItemCaseSensitive(root, "dims");
    d->dims.n_layer = js_geti(dims, "n_layer", 0, SES_MAX_LAYER, 0);
    d->dims.n_expert = js_geti(dims, "n_expert", 0, SES_MAX_EXPERT, 0);
    d->dims.n_sel = js_geti(dims, "n_sel", 0, SES_MAX_SEL, 0);
    d->dims.lens_k = js_geti(dims, "lens_k", 0, SES_MAX_LENS, 0);
    if (d->dims.n_expert > 0 && d->dims.n_sel > d->dims.n_expert + 1) {
        st = moe_fail(MOE_ERR_FORMAT, "dims: n_sel %d exceeds n_expert + 1", (int)d->dims.n_sel);
        goto out;
    }
    turns = cJSON_GetObjectItemCaseSensitive(root, "turns");
    toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(toks)) {
        st = moe_fail(MOE_ERR_FORMAT, "no \"tokens\" array");
        goto out;
    }
    /* turns first (records are attributed to the turn open when appended) */
    {
        int n_turn = cJSON_IsArray(turns) ? cJSON_GetArraySize(turns) : 0;
        int ti = 0;
        const cJSON *tj = n_turn ? turns->child : NULL;
        cJSON_ArrayForEach(it, toks) {
            while (tj && js_geti(tj, "start", 0, INT32_MAX, 0) <= idx) {
                char *p = js_gets(tj, "prompt");
                bool okb = moe_session_begin_turn(d, p ? p : "");
                free(p);
                if (!okb) {
                    st = moe_fail(MOE_ERR_NOMEM, "out of memory");
                    goto out;
                }
                tj = tj->next;
                ti++;
            }
            if ((st = ses_read_token(d, it, idx)) != MOE_OK)
                goto out;
            if (d->toks[idx]->id > max_id)
                max_id = d->toks[idx]->id;
            idx++;
        }
        for (; tj; tj = tj->next) {
            char *p = js_gets(tj, "prompt");
            bool okb = moe_session_begin_turn(d, p ? p : "");
            free(p);
            if (!okb) {
                st = moe_fail(MOE_ERR_NOMEM, "out of memory");
                goto out;
            }
        }
        (void)ti;
    }
    pieces = cJSON_GetObjectItemCaseSensitive(root, "pieces");
    cJSON_ArrayForEach(it, pieces) {
        long id = it->string ? strtol(it->string, NULL, 10) : -1;
        if (id > max_id && id < SES_MAX_VOCAB)
            max_id = (int32_t)id;
    }
    {
        int32_t nv = d->meta.n_vocab > max_id ? d->meta.n_vocab : max_id + 1;
        char **v = nv > 0 ? calloc((size_t)nv, sizeof *v) : NULL;
        if (nv > 0 && !v) {
            st = moe_fail(MOE_ERR_NOMEM, "out of memory");
            goto out;
        }
        cJSON_ArrayForEach(it, pieces) {
            char *end = NULL;
            long id = it->string ? strtol(it->string, &end, 10) : -1;
            if (id >= 0 && id < nv && end && !*end && cJSON_IsString(it) && !v[id])
                v[id] = strdup(it->valuestring);
        }
        moe_session_set_vocab(d, v, nv);
    }
    st = MOE_OK;
out:
    cJSON_Delete(root);
    return st;
}

moe_status moe_session_read(moe_session *d, const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    moe_status st;
    if (!f)
        return moe_fail(MOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    for (;;) {
        if (cap - len < 65536) {
            char *nb;
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > ((size_t)1 << 31) || !(nb = realloc(buf, cap + 1))) {
                free(buf);
                fclose(f);
                return moe_fail(MOE_ERR_NOMEM, "'%s' is too large", path);
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        st = moe_fail(MOE_ERR_IO, "reading '%s': %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return st;
    }
    fclose(f);
    buf[len] = '\0';
    st = moe_session_parse(d, buf);
    if (st != MOE_OK) {
        char *copy = strdup(moe_last_error());
        if (copy) {
            moe_fail(st, "'%s': %s", path, copy);
            free(copy);
        }
    }
    free(buf);
    return st;
}
