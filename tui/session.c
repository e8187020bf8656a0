/*
 * session.c - session files of the studio: the versioned JSON schema of
 * docs/session-schema.md (write with cJSON, read back hostile-input safe),
 * the CSV of statistics, the atomic writer (temp file + fsync + rename) and
 * dispatch of exports by file extension. No curses.
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
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "studio.h"

#define SES_MAX_LAYER 4096
#define SES_MAX_EXPERT 4096
#define SES_MAX_SEL 256
#define SES_MAX_LENS 256
#define SES_MAX_VOCAB (1 << 22)

static void ses_err(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ses_err(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    if (!err || !n)
        return;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

bool tui_write_atomic(const char *path, const char *data, size_t len, char *err,
                      size_t errn)
{
    size_t pl = strlen(path);
    char *tmp = malloc(pl + 16);
    int fd;
    size_t off = 0;
    if (!tmp) {
        ses_err(err, errn, "out of memory");
        return false;
    }
    snprintf(tmp, pl + 16, "%s.tmp.XXXXXX", path);
    fd = mkstemp(tmp);
    if (fd < 0) {
        ses_err(err, errn, "cannot create a temp file beside '%s': %s", path, strerror(errno));
        free(tmp);
        return false;
    }
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            ses_err(err, errn, "writing '%s': %s", tmp, strerror(errno));
            goto fail;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        ses_err(err, errn, "fsync '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    fchmod(fd, 0644);
    if (close(fd) != 0) {
        fd = -1;
        ses_err(err, errn, "closing '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        ses_err(err, errn, "renaming to '%s': %s", path, strerror(errno));
        goto fail;
    }
    free(tmp);
    return true;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    return false;
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

static cJSON *ses_model(const tui_meta *m)
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

static cJSON *ses_settings(const tui_settings *s)
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

static cJSON *ses_token(const tui_doc *d, const tui_tok *t)
{
    const tui_dims *dm = &d->dims;
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

static cJSON *ses_pieces(const tui_doc *d)
{
    cJSON *o = cJSON_CreateObject();
    bool *mark;
    const tui_dims *dm = &d->dims;
    if (!o || d->n_vocab <= 0)
        return o;
    mark = calloc((size_t)d->n_vocab, 1);
    if (!mark)
        return o;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
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

static cJSON *ses_stats(const tui_doc *d)
{
    const tui_dims *dm = &d->dims;
    cJSON *o = cJSON_CreateObject(), *ly;
    tui_stats s;
    int64_t *load = NULL, *gload = NULL;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    if (!o)
        return NULL;
    tui_doc_stats(d, &s);
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
        tui_doc_load(d, false, load);
        tui_doc_load(d, true, gload);
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

char *tui_session_json(const tui_doc *d)
{
    cJSON *root = cJSON_CreateObject(), *a, *dm;
    char *out;
    if (!root)
        return NULL;
    js_str(root, "format", TUI_SESSION_FORMAT);
    cJSON_AddNumberToObject(root, "version", TUI_SESSION_VERSION);
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

bool tui_session_save(const tui_doc *d, const char *path, char *err, size_t errn)
{
    char *js = tui_session_json(d);
    bool ok;
    if (!js) {
        ses_err(err, errn, "out of memory");
        return false;
    }
    ok = tui_write_atomic(path, js, strlen(js), err, errn);
    free(js);
    return ok;
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

static void ses_read_meta(tui_meta *m, const cJSON *o)
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

static bool ses_read_settings(tui_settings *s, const cJSON *o)
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

static bool ses_read_token(tui_doc *d, const cJSON *o, int32_t index, char *err, size_t errn)
{
    const tui_dims *dm = &d->dims;
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    const cJSON *stages = cJSON_GetObjectItemCaseSensitive(o, "stages"), *it;
    bool traced = cJSON_IsArray(layers);
    tui_tok *t;
    int32_t il = 0;
    if (!cJSON_IsObject(o)) {
        ses_err(err, errn, "token %d is not an object", (int)index);
        return false;
    }
    t = tui_tok_new(dm, traced);
    if (!t) {
        ses_err(err, errn, "out of memory");
        return false;
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
            if (t->n_top < TUI_N_CAND &&
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
                if (t->n_cand[s] < TUI_N_CAND &&
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
    if (!t->text || !tui_doc_append(d, t)) {
        if (!t->text)
            tui_tok_free(t);
        ses_err(err, errn, "out of memory");
        return false;
    }
    t->pos = js_geti(o, "pos", 0, INT32_MAX, 0);
    return true;
}

bool tui_session_parse(tui_doc *d, const char *json, char *err, size_t errn)
{
    cJSON *root = cJSON_Parse(json), *it;
    const cJSON *model, *dims, *turns, *toks, *pieces;
    const char *fmt;
    int32_t idx = 0, max_id = -1;
    bool ok = false;
    if (!root) {
        ses_err(err, errn, "not valid JSON (near byte %ld)",
                cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - json) : -1L);
        return false;
    }
    fmt = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "format"));
    if (!fmt || strcmp(fmt, TUI_SESSION_FORMAT) != 0) {
        ses_err(err, errn, "not a moe-studio session (format is not \"%s\")",
                TUI_SESSION_FORMAT);
        goto out;
    }
    if (js_geti(root, "version", 0, INT32_MAX, -1) != TUI_SESSION_VERSION) {
        ses_err(err, errn, "session version %d is not supported (this build reads %d)",
                (int)js_geti(root, "version", 0, INT32_MAX, -1), TUI_SESSION_VERSION);
        goto out;
    }
    model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (cJSON_IsObject(model))
        ses_read_meta(&d->meta, model);
    if (!ses_read_settings(&d->set, cJSON_GetObjectItemCaseSensitive(root, "settings"))) {
        ses_err(err, errn, "out of memory");
        goto out;
    }
    dims = cJSON_GetObjectItemCaseSensitive(root, "dims");
    d->dims.n_layer = js_geti(dims, "n_layer", 0, SES_MAX_LAYER, 0);
    d->dims.n_expert = js_geti(dims, "n_expert", 0, SES_MAX_EXPERT, 0);
    d->dims.n_sel = js_geti(dims, "n_sel", 0, SES_MAX_SEL, 0);
    d->dims.lens_k = js_geti(dims, "lens_k", 0, SES_MAX_LENS, 0);
    if (d->dims.n_expert > 0 && d->dims.n_sel > d->dims.n_expert + 1) {
        ses_err(err, errn, "dims: n_sel %d exceeds n_expert + 1", (int)d->dims.n_sel);
        goto out;
    }
    turns = cJSON_GetObjectItemCaseSensitive(root, "turns");
    toks = cJSON_GetObjectItemCaseSensitive(root, "tokens");
    if (!cJSON_IsArray(toks)) {
        ses_err(err, errn, "no \"tokens\" array");
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
                bool okb = tui_doc_begin_turn(d, p ? p : "");
                free(p);
                if (!okb) {
                    ses_err(err, errn, "out of memory");
                    goto out;
                }
                tj = tj->next;
                ti++;
            }
            if (!ses_read_token(d, it, idx, err, errn))
                goto out;
            if (d->toks[idx]->id > max_id)
                max_id = d->toks[idx]->id;
            idx++;
        }
        for (; tj; tj = tj->next) {
            char *p = js_gets(tj, "prompt");
            bool okb = tui_doc_begin_turn(d, p ? p : "");
            free(p);
            if (!okb) {
                ses_err(err, errn, "out of memory");
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
            ses_err(err, errn, "out of memory");
            goto out;
        }
        cJSON_ArrayForEach(it, pieces) {
            char *end = NULL;
            long id = it->string ? strtol(it->string, &end, 10) : -1;
            if (id >= 0 && id < nv && end && !*end && cJSON_IsString(it) && !v[id])
                v[id] = strdup(it->valuestring);
        }
        tui_doc_set_vocab(d, v, nv);
    }
    ok = true;
out:
    cJSON_Delete(root);
    return ok;
}

bool tui_session_load(tui_doc *d, const char *path, char *err, size_t errn)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    bool ok;
    if (!f) {
        ses_err(err, errn, "cannot open '%s': %s", path, strerror(errno));
        return false;
    }
    for (;;) {
        if (cap - len < 65536) {
            char *nb;
            cap = cap ? cap * 2 : 1 << 16;
            if (cap > ((size_t)1 << 31) || !(nb = realloc(buf, cap + 1))) {
                ses_err(err, errn, "'%s' is too large", path);
                free(buf);
                fclose(f);
                return false;
            }
            buf = nb;
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    if (ferror(f)) {
        ses_err(err, errn, "reading '%s': %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return false;
    }
    fclose(f);
    buf[len] = '\0';
    ok = tui_session_parse(d, buf, err, errn);
    if (!ok && err && errn) {
        size_t el = strlen(err);
        char *copy = strdup(err);
        if (copy) {
            snprintf(err, errn, "'%s': %s", path, copy);
            free(copy);
        }
        (void)el;
    }
    free(buf);
    return ok;
}

/* ---- CSV and dispatch by extension ------------------------------------ */

bool tui_export_csv(const tui_doc *d, const char *path, char *err, size_t errn)
{
    const tui_dims *dm = &d->dims;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    int64_t *load = calloc(ne ? ne : 1, sizeof *load), *gload = calloc(ne ? ne : 1, sizeof *gload);
    double *psum = calloc(ne ? ne : 1, sizeof *psum);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    int32_t n_traced = 0;
    bool ok;
    if (!load || !gload || !psum || !m) {
        ses_err(err, errn, "out of memory");
        ok = false;
        goto out;
    }
    tui_doc_load(d, false, load);
    tui_doc_load(d, true, gload);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        if (!t->traced)
            continue;
        n_traced++;
        for (size_t k = 0; k < ne; k++)
            psum[k] += isfinite(t->probs[k]) ? t->probs[k] : 0;
    }
    fprintf(m, "layer,expert,load,load_gen,load_frac,mean_prob\n");
    for (int32_t il = 0; il < dm->n_layer; il++) {
        int64_t tot = 0;
        for (int32_t e = 0; e < dm->n_expert; e++)
            tot += load[(size_t)il * (size_t)dm->n_expert + (size_t)e];
        for (int32_t e = 0; e < dm->n_expert; e++) {
            size_t k = (size_t)il * (size_t)dm->n_expert + (size_t)e;
            fprintf(m, "%d,%d,%lld,%lld,%.6f,%.6f\n", (int)il, (int)e, (long long)load[k],
                    (long long)gload[k], tot ? (double)load[k] / (double)tot : 0.0,
                    n_traced ? psum[k] / n_traced : 0.0);
        }
    }
    if (fclose(m) != 0) {
        m = NULL;
        ses_err(err, errn, "out of memory");
        ok = false;
        goto out;
    }
    m = NULL;
    ok = tui_write_atomic(path, buf, len, err, errn);
out:
    if (m)
        fclose(m);
    free(buf);
    free(load);
    free(gload);
    free(psum);
    return ok;
}

static bool ses_has_ext(const char *path, const char *ext)
{
    size_t pl = strlen(path), el = strlen(ext);
    return pl > el && strcasecmp(path + pl - el, ext) == 0;
}

bool tui_export_any(const tui_doc *d, const char *path, char *err, size_t errn)
{
    if (ses_has_ext(path, ".json"))
        return tui_session_save(d, path, err, errn);
    if (ses_has_ext(path, ".csv"))
        return tui_export_csv(d, path, err, errn);
    if (ses_has_ext(path, ".svg"))
        return tui_export_svg(d, path, err, errn);
    if (ses_has_ext(path, ".html") || ses_has_ext(path, ".htm"))
        return tui_export_html(d, path, err, errn);
    ses_err(err, errn, "'%s': unknown export type (use .json, .csv, .svg or .html)", path);
    return false;
}
