/*
 * worker.c - the studio's generation thread. It alone touches the engine
 * (model, context, sampler in a tui_gen) once started: the UI thread posts
 * jobs (load, prompt, generate, reset, engine commands) and drains events
 * (token records with their trace copies, log lines, state changes) from a
 * mutex-protected queue; a pipe wakes the UI's poll(). Engine commands are
 * also run between two tokens of a running generation. No curses calls.
 */
#include "config.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ui.h"

static void wk_push(tui_worker *w, tui_event *e)
{
    ssize_t r;
    pthread_mutex_lock(&w->mu);
    if (w->ev_tail)
        w->ev_tail->next = e;
    else
        w->ev_head = e;
    w->ev_tail = e;
    pthread_mutex_unlock(&w->mu);
    r = write(w->pipe_w, "e", 1);
    (void)r;
}

static tui_event *wk_event(tui_worker *w, tui_ev_kind kind)
{
    tui_event *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->kind = kind;
    if (w->gen.ctx) {
        e->pos = moe_ctx_pos(w->gen.ctx);
        e->n_ctx = moe_ctx_n_ctx(w->gen.ctx);
    }
    return e;
}

static void wk_log(tui_worker *w, bool error, const char *msg)
{
    tui_event *e = wk_event(w, TUI_EV_LOG);
    if (!e)
        return;
    e->error = error;
    e->msg = strdup(msg);
    wk_push(w, e);
}

static void wk_simple(tui_worker *w, tui_ev_kind kind, const char *msg)
{
    tui_event *e = wk_event(w, kind);
    if (!e)
        return;
    e->msg = msg ? strdup(msg) : NULL;
    wk_push(w, e);
}

static void wk_settings(tui_worker *w)
{
    tui_event *e = wk_event(w, TUI_EV_SETTINGS);
    if (!e)
        return;
    e->has_set = tui_settings_copy(&e->set, &w->gen.set);
    wk_push(w, e);
}

static void wk_on_tok(tui_tok *t, void *ud)
{
    tui_worker *w = ud;
    tui_event *e = wk_event(w, TUI_EV_TOKEN);
    if (!e) {
        tui_tok_free(t);
        return;
    }
    e->tok = t;
    wk_push(w, e);
}

static void wk_free_job(tui_job *j)
{
    if (!j)
        return;
    free(j->text);
    for (int i = 0; i < j->argc; i++)
        free(j->argv[i]);
    free(j->argv);
    free(j);
}

static void wk_run_cmd(tui_worker *w, tui_job *j)
{
    char msg[512];
    bool ok = tui_gen_command(&w->gen, j->argc, j->argv, msg, sizeof msg);
    wk_log(w, !ok, msg);
    wk_settings(w);
}

/* Run queued engine commands (between two tokens). */
static void wk_inline_cmds(tui_worker *w)
{
    for (;;) {
        tui_job **pp, *j = NULL;
        pthread_mutex_lock(&w->mu);
        for (pp = &w->jobs; *pp; pp = &(*pp)->next)
            if ((*pp)->kind == TUI_JOB_CMD) {
                j = *pp;
                *pp = j->next;
                break;
            }
        pthread_mutex_unlock(&w->mu);
        if (!j)
            return;
        wk_run_cmd(w, j);
        wk_free_job(j);
    }
}

static void wk_generate(tui_worker *w, int32_t n, unsigned epoch)
{
    char err[512];
    bool done = false;
    wk_simple(w, TUI_EV_BUSY, n < 0 ? "running" : "generating");
    for (int32_t i = 0; n < 0 || i < n; i++) {
        if (atomic_load(&w->epoch) != epoch)
            break;
        wk_inline_cmds(w);
        err[0] = '\0';
        if (!tui_gen_step(&w->gen, wk_on_tok, w, &done, err, sizeof err)) {
            wk_log(w, true, err);
            break;
        }
        if (done) {
            wk_log(w, false, err[0] ? err : "end of generation");
            break;
        }
    }
    wk_simple(w, TUI_EV_IDLE, NULL);
}

static void wk_load(tui_worker *w, const char *path)
{
    char err[512];
    tui_event *e;
    wk_simple(w, TUI_EV_BUSY, "loading");
    if (!tui_gen_load(&w->gen, path, err, sizeof err)) {
        wk_log(w, true, err);
        wk_simple(w, TUI_EV_IDLE, NULL);
        return;
    }
    e = wk_event(w, TUI_EV_LOADED);
    if (e) {
        tui_gen_meta(&w->gen, &e->meta);
        e->dims = w->gen.dims;
        e->vocab = tui_gen_vocab(&w->gen, &e->n_vocab);
        e->has_set = tui_settings_copy(&e->set, &w->gen.set);
        wk_push(w, e);
    }
    wk_simple(w, TUI_EV_IDLE, NULL);
}

static void *wk_main(void *arg)
{
    tui_worker *w = arg;
    char err[512];
    for (;;) {
        tui_job *j;
        pthread_mutex_lock(&w->mu);
        while (!w->jobs)
            pthread_cond_wait(&w->cv, &w->mu);
        j = w->jobs;
        w->jobs = j->next;
        pthread_mutex_unlock(&w->mu);
        switch (j->kind) {
        case TUI_JOB_QUIT:
            wk_free_job(j);
            return NULL;
        case TUI_JOB_LOAD:
            wk_load(w, j->text);
            break;
        case TUI_JOB_PROMPT:
            if (atomic_load(&w->epoch) != j->epoch)
                break;
            if (!w->gen.ctx) {
                wk_log(w, true, "no model loaded (:load FILE.gguf)");
                break;
            }
            wk_simple(w, TUI_EV_TURN, j->text);
            if (!tui_gen_prompt(&w->gen, j->text, wk_on_tok, w, err, sizeof err)) {
                wk_log(w, true, err);
                break;
            }
            if (j->n != 0)
                wk_generate(w, j->n, j->epoch);
            break;
        case TUI_JOB_GEN:
            if (atomic_load(&w->epoch) == j->epoch)
                wk_generate(w, j->n, j->epoch);
            break;
        case TUI_JOB_RESET:
            tui_gen_reset(&w->gen);
            wk_simple(w, TUI_EV_RESET, NULL);
            break;
        case TUI_JOB_CMD:
            wk_run_cmd(w, j);
            break;
        default:
            break;
        }
        wk_free_job(j);
    }
}

bool tui_worker_start(tui_worker *w, int n_threads)
{
    int p[2];
    memset(w, 0, sizeof *w);
    w->pipe_r = w->pipe_w = -1;
    tui_gen_init(&w->gen);
    w->gen.n_threads = n_threads;
    if (pipe(p) != 0)
        return false;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    w->pipe_r = p[0];
    w->pipe_w = p[1];
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    atomic_init(&w->epoch, 0);
    if (pthread_create(&w->th, NULL, wk_main, w) != 0) {
        close(p[0]);
        close(p[1]);
        return false;
    }
    w->started = true;
    return true;
}

bool tui_worker_post(tui_worker *w, tui_job_kind kind, const char *text, int32_t n, int argc,
                     char **argv)
{
    tui_job *j = calloc(1, sizeof *j), **pp;
    if (!j)
        return false;
    j->kind = kind;
    j->n = n;
    if (text && !(j->text = strdup(text)))
        goto fail;
    if (argc > 0) {
        j->argv = calloc((size_t)argc, sizeof *j->argv);
        if (!j->argv)
            goto fail;
        for (int i = 0; i < argc; i++) {
            if (!(j->argv[i] = strdup(argv[i])))
                goto fail;
            j->argc++;
        }
    }
    pthread_mutex_lock(&w->mu);
    j->epoch = atomic_load(&w->epoch);
    for (pp = &w->jobs; *pp; pp = &(*pp)->next)
        ;
    *pp = j;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    return true;
fail:
    wk_free_job(j);
    return false;
}

void tui_worker_cancel(tui_worker *w)
{
    tui_job **pp;
    pthread_mutex_lock(&w->mu);
    atomic_fetch_add(&w->epoch, 1);
    for (pp = &w->jobs; *pp;) {
        tui_job *j = *pp;
        if (j->kind == TUI_JOB_GEN || j->kind == TUI_JOB_PROMPT) {
            *pp = j->next;
            wk_free_job(j);
        } else {
            pp = &j->next;
        }
    }
    pthread_mutex_unlock(&w->mu);
}

tui_event *tui_worker_take(tui_worker *w)
{
    tui_event *e;
    char buf[256];
    while (read(w->pipe_r, buf, sizeof buf) > 0)
        ;
    pthread_mutex_lock(&w->mu);
    e = w->ev_head;
    w->ev_head = w->ev_tail = NULL;
    pthread_mutex_unlock(&w->mu);
    return e;
}

void tui_event_free(tui_event *e)
{
    if (!e)
        return;
    tui_tok_free(e->tok);
    free(e->msg);
    tui_meta_free(&e->meta);
    tui_vocab_free(e->vocab, e->n_vocab);
    tui_settings_free(&e->set);
    free(e);
}

void tui_worker_stop(tui_worker *w)
{
    tui_event *e;
    if (!w->started)
        return;
    tui_worker_cancel(w);
    tui_worker_post(w, TUI_JOB_QUIT, NULL, 0, 0, NULL);
    pthread_join(w->th, NULL);
    w->started = false;
    while (w->jobs) {
        tui_job *j = w->jobs;
        w->jobs = j->next;
        wk_free_job(j);
    }
    e = tui_worker_take(w);
    while (e) {
        tui_event *n = e->next;
        tui_event_free(e);
        e = n;
    }
    tui_gen_free(&w->gen);
    close(w->pipe_r);
    close(w->pipe_w);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}
