/*
 * gen.c - the studio's generator: owns the engine objects (model, context
 * with tracing, sampler), turns prompts and sampling steps into tui_tok
 * records (trace copy, sampler stage candidates, log-prob, timing) and runs
 * the engine commands set/route/exit/bricks. Used by the worker thread and
 * by the headless `moe-studio export`; one thread at a time. No curses.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "studio.h"

static void gen_msg(char *m, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void gen_msg(char *m, size_t n, const char *fmt, ...)
{
    va_list ap;
    if (!m || !n)
        return;
    va_start(ap, fmt);
    vsnprintf(m, n, fmt, ap);
    va_end(ap);
}

static double gen_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void tui_gen_init(tui_gen *g)
{
    memset(g, 0, sizeof *g);
    tui_settings_default(&g->set);
}

static void gen_close(tui_gen *g)
{
    moe_sampler_free(g->smp);
    moe_ctx_free(g->ctx);
    moe_model_free(g->model);
    free(g->cbuf);
    free(g->lp);
    g->smp = NULL;
    g->ctx = NULL;
    g->model = NULL;
    g->cbuf = NULL;
    g->lp = NULL;
    g->have_logits = false;
    memset(&g->dims, 0, sizeof g->dims);
}

void tui_gen_free(tui_gen *g)
{
    gen_close(g);
    tui_settings_free(&g->set);
}

void tui_gen_clear_route(tui_gen *g)
{
    for (int32_t i = 0; i < g->set.n_route; i++)
        free(g->set.route[i]);
    free(g->set.route);
    g->set.route = NULL;
    g->set.n_route = 0;
}

bool tui_gen_load(tui_gen *g, const char *path, char *err, size_t errn)
{
    moe_model_params mp = moe_model_default_params();
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true, .lens_k = g->set.lens_k, .max_tokens = 0};
    moe_model_info info;
    moe_trace_dims td;
    moe_status st;

    gen_close(g);
    tui_gen_clear_route(g);
    if (g->n_threads > 0)
        mp.n_threads = g->n_threads;
    st = moe_model_load(path, &mp, &g->model);
    if (st != MOE_OK) {
        gen_msg(err, errn, "cannot load '%s': %s: %s", path, moe_strerror(st), moe_last_error());
        g->model = NULL;
        return false;
    }
    moe_model_get_info(g->model, &info);
    cp.n_ctx = g->set.n_ctx;
    cp.n_threads = g->n_threads;
    cp.max_top_k = info.n_expert > 0 ? info.n_expert : 0;
    st = moe_ctx_new(g->model, &cp, &g->ctx);
    if (st == MOE_OK)
        st = moe_ctx_set_trace(g->ctx, &tp);
    if (st == MOE_OK)
        st = moe_sampler_new(&g->set.sp, info.n_vocab, &g->smp);
    g->cbuf = malloc(TUI_N_CAND * sizeof *g->cbuf);
    g->lp = malloc((size_t)info.n_vocab * sizeof *g->lp);
    if (st == MOE_OK && (!g->cbuf || !g->lp))
        st = MOE_ERR_NOMEM;
    if (st != MOE_OK) {
        gen_msg(err, errn, "cannot set up '%s': %s: %s", path, moe_strerror(st), moe_last_error());
        gen_close(g);
        return false;
    }
    if (g->set.exit_spec && strcmp(g->set.exit_spec, "none") != 0 &&
        moe_ctx_set_exit_spec(g->ctx, g->set.exit_spec) != MOE_OK) {
        free(g->set.exit_spec);
        g->set.exit_spec = strdup("none");
    }
    td = moe_ctx_trace_dims(g->ctx);
    g->dims.n_layer = td.n_layer;
    g->dims.n_expert = td.n_expert;
    g->dims.n_sel = td.n_sel;
    g->dims.lens_k = td.lens_k;
    g->set.n_ctx = moe_ctx_n_ctx(g->ctx);
    return true;
}

bool tui_gen_meta(const tui_gen *g, tui_meta *m)
{
    memset(m, 0, sizeof *m);
    if (!g->model)
        return false;
    return moe_session_meta_from_model(m, g->model, NULL) == MOE_OK;
}

char **tui_gen_vocab(const tui_gen *g, int32_t *n)
{
    *n = 0;
    if (!g->model)
        return NULL;
    return moe_session_vocab_from_model(g->model, n);
}

static char *gen_piece(const tui_gen *g, int32_t id)
{
    size_t len = 0;
    const char *p = moe_token_piece(g->model, id, &len);
    return tui_sanitize(p ? p : "", p ? len : 0);
}

bool tui_gen_prompt(tui_gen *g, const char *text, tui_tok_fn fn, void *ud, char *err,
                    size_t errn)
{
    size_t len = strlen(text);
    int32_t cap = (int32_t)(len + 8), n, pos0;
    int32_t *toks;
    bool first = moe_ctx_pos(g->ctx) == 0;
    double t0, t1;
    moe_status st;

    if (!g->ctx) {
        gen_msg(err, errn, "no model loaded (:load FILE.gguf)");
        return false;
    }
    toks = malloc((size_t)cap * sizeof *toks);
    if (!toks) {
        gen_msg(err, errn, "out of memory");
        return false;
    }
    n = moe_tokenize(g->model, text, len, toks, cap, first, false);
    if (n == INT32_MIN || n < 0) {
        gen_msg(err, errn, "cannot tokenize the text: %s", moe_last_error());
        free(toks);
        return false;
    }
    if (n == 0 && first) {
        int32_t bos = moe_token_bos(g->model);
        if (bos < 0) {
            gen_msg(err, errn, "empty context and the model has no BOS token to start from");
            free(toks);
            return false;
        }
        toks[n++] = bos;
    }
    if (n == 0) {
        free(toks);
        return true;
    }
    pos0 = moe_ctx_pos(g->ctx);
    if ((int64_t)pos0 + n > moe_ctx_n_ctx(g->ctx)) {
        gen_msg(err, errn, "%d tokens do not fit: context %d of %d used", (int)n, (int)pos0,
                (int)moe_ctx_n_ctx(g->ctx));
        free(toks);
        return false;
    }
    moe_ctx_trace_clear(g->ctx);
    t0 = gen_now();
    st = moe_ctx_decode(g->ctx, toks, n, false);
    t1 = gen_now();
    if (st != MOE_OK) {
        gen_msg(err, errn, "decoding the prompt failed: %s: %s", moe_strerror(st),
                moe_last_error());
        moe_ctx_truncate(g->ctx, pos0);
        g->have_logits = false;
        free(toks);
        return false;
    }
    for (int32_t i = 0; i < n; i++) {
        int32_t nt = moe_ctx_trace_count(g->ctx);
        const moe_trace_token *e = nt == n ? moe_ctx_trace_get(g->ctx, i) : NULL;
        tui_tok *t = tui_tok_new(&g->dims, e != NULL);
        moe_sampler_accept(g->smp, toks[i]);
        if (!t)
            continue;
        t->id = toks[i];
        t->pos = pos0 + i;
        t->prompt = true;
        t->text = gen_piece(g, toks[i]);
        t->time_ms = e ? e->time_ms : (float)((t1 - t0) * 1e3 / n);
        if (e)
            tui_tok_set_trace(t, &g->dims, e);
        if (!t->text) {
            tui_tok_free(t);
            continue;
        }
        fn(t, ud);
    }
    moe_ctx_trace_clear(g->ctx);
    g->have_logits = true;
    free(toks);
    return true;
}

bool tui_gen_step(tui_gen *g, tui_tok_fn fn, void *ud, bool *done, char *err, size_t errn)
{
    moe_model_info info;
    const float *logits;
    tui_tok *t;
    int32_t id;
    double t0, t1, mx, sum = 0;
    moe_status st;

    *done = false;
    if (!g->ctx) {
        gen_msg(err, errn, "no model loaded (:load FILE.gguf)");
        return false;
    }
    if (!g->have_logits && !tui_gen_prompt(g, "", fn, ud, err, errn))
        return false;
    if (moe_ctx_pos(g->ctx) >= moe_ctx_n_ctx(g->ctx)) {
        *done = true;
        gen_msg(err, errn, "context of %d tokens is full (:reset)", (int)moe_ctx_n_ctx(g->ctx));
        return true;
    }
    moe_model_get_info(g->model, &info);
    logits = moe_ctx_logits(g->ctx, -1);
    if (!logits) {
        gen_msg(err, errn, "the engine kept no logits");
        return false;
    }
    t0 = gen_now();
    id = moe_sampler_sample(g->smp, logits);
    if (id < 0 || id >= info.n_vocab) {
        gen_msg(err, errn, "sampler returned token %d: %s", (int)id, moe_last_error());
        return false;
    }
    t = tui_tok_new(&g->dims, !moe_token_is_eog(g->model, id));
    if (!t) {
        gen_msg(err, errn, "out of memory");
        return false;
    }
    t->id = id;
    t->sampled = true;
    t->pos = moe_ctx_pos(g->ctx);
    t->text = gen_piece(g, id);
    mx = logits[0];
    for (int32_t i = 1; i < info.n_vocab; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (int32_t i = 0; i < info.n_vocab; i++)
        sum += exp(logits[i] - mx);
    t->logprob = (float)(logits[id] - mx - log(sum));
    /* the model's own top candidates (insertion into a short sorted list) */
    for (int32_t i = 0; i < info.n_vocab; i++) {
        int32_t j = t->n_top < TUI_N_CAND ? t->n_top++ : TUI_N_CAND;
        if (j == TUI_N_CAND && logits[i] <= logits[t->top[TUI_N_CAND - 1].id])
            continue;
        if (j == TUI_N_CAND)
            j = TUI_N_CAND - 1;
        while (j > 0 && logits[i] > logits[t->top[j - 1].id]) {
            t->top[j] = t->top[j - 1];
            j--;
        }
        t->top[j].id = i;
    }
    for (int32_t j = 0; j < t->n_top; j++)
        t->top[j].p = (float)(exp(logits[t->top[j].id] - mx) / sum);
    for (int32_t s = 0; s < g->set.sp.n_order && s < MOE_STAGE_COUNT; s++) {
        moe_sampler_stage sg = g->set.sp.order[s];
        int32_t n = moe_sampler_stage_candidates(g->smp, sg, g->cbuf, TUI_N_CAND);
        if (n <= 0)
            continue;
        t->stage[t->n_stage] = sg;
        t->n_cand[t->n_stage] = n;
        for (int32_t j = 0; j < n; j++) {
            t->cand[t->n_stage][j].id = g->cbuf[j].id;
            t->cand[t->n_stage][j].p = g->cbuf[j].p;
        }
        t->n_stage++;
    }
    moe_sampler_accept(g->smp, id);
    if (!t->traced) { /* end of generation: not evaluated */
        t->time_ms = (float)((gen_now() - t0) * 1e3);
        *done = true;
        fn(t, ud);
        return true;
    }
    moe_ctx_trace_clear(g->ctx);
    st = moe_ctx_decode(g->ctx, &id, 1, false);
    t1 = gen_now();
    if (st != MOE_OK) {
        gen_msg(err, errn, "decoding token %d failed: %s: %s", (int)id, moe_strerror(st),
                moe_last_error());
        tui_tok_free(t);
        g->have_logits = false;
        return false;
    }
    if (moe_ctx_trace_count(g->ctx) >= 1)
        tui_tok_set_trace(t, &g->dims, moe_ctx_trace_get(g->ctx, moe_ctx_trace_count(g->ctx) - 1));
    else
        t->exit_layer = moe_ctx_exit_layer(g->ctx, -1);
    moe_ctx_trace_clear(g->ctx);
    t->time_ms = (float)((t1 - t0) * 1e3);
    fn(t, ud);
    return true;
}

void tui_gen_reset(tui_gen *g)
{
    if (!g->ctx)
        return;
    moe_ctx_truncate(g->ctx, 0);
    moe_ctx_trace_clear(g->ctx);
    moe_sampler_reset(g->smp);
    moe_ctx_exit_reset_stats(g->ctx);
    g->have_logits = false;
}
