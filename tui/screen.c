/*
 * screen.c - the studio's screen manager: application state, worker events
 * into the document, the key table of normal mode, focus and zoom, layout
 * and windows (relayout on KEY_RESIZE), the help overlay, batched drawing
 * (wnoutrefresh + doupdate) and the one event loop (poll on the terminal,
 * the signal pipe and the worker pipe). Worker events reach Lua handlers
 * from here (tui_lua_*), on this thread, after the document took them.
 */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ui.h"

void tui_app_init(tui_app *a)
{
    memset(a, 0, sizeof *a);
    tui_doc_init(&a->doc);
    a->sel = -1;
    a->follow = true;
    a->zoom = -1;
    a->focus = TUI_PANE_TRANSCRIPT;
    a->heat_mode = TUI_HEAT_TOKEN;
}

void tui_app_free(tui_app *a)
{
    tui_lua_free(a);
    tui_doc_free(&a->doc);
    for (int i = 0; i < TUI_LOG_LINES; i++)
        free(a->log[i]);
    free(a->busy_what);
    free(a->model_path);
    memset(a, 0, sizeof *a);
}

void tui_log(tui_app *a, bool error, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    for (char *p = buf; *p; p++)
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    free(a->log[a->log_head]);
    a->log[a->log_head] = strdup(buf);
    a->log_err[a->log_head] = error;
    a->log_head = (a->log_head + 1) % TUI_LOG_LINES;
    if (a->log_n < TUI_LOG_LINES)
        a->log_n++;
    a->dirty = true;
}

const tui_tok *tui_app_selected(const tui_app *a)
{
    if (a->doc.n_tok == 0)
        return NULL;
    if (a->sel < 0 || a->sel >= a->doc.n_tok)
        return a->doc.toks[a->doc.n_tok - 1];
    return a->doc.toks[a->sel];
}

void tui_app_select(tui_app *a, int32_t i)
{
    if (a->doc.n_tok == 0) {
        a->sel = -1;
        return;
    }
    if (i < 0)
        i = 0;
    if (i >= a->doc.n_tok)
        i = a->doc.n_tok - 1;
    a->sel = i;
    a->follow = i == a->doc.n_tok - 1;
    a->dirty = true;
}

static void app_take_settings(tui_app *a, tui_event *e)
{
    if (!e->has_set)
        return;
    tui_settings_free(&a->doc.set);
    a->doc.set = e->set;
    memset(&e->set, 0, sizeof e->set);
}

void tui_app_event(tui_app *a, tui_event *e)
{
    a->dirty = true;
    if (e->n_ctx > 0 && !a->replay) {
        a->ctx_pos = e->pos;
        a->n_ctx = e->n_ctx;
    }
    switch (e->kind) {
    case TUI_EV_TOKEN: {
        tui_tok *t = e->tok;
        if (a->replay)
            break;
        e->tok = NULL;
        if (tui_doc_append(&a->doc, t)) {
            if (a->follow)
                a->sel = a->doc.n_tok - 1;
            tui_lua_token(a, t); /* the document's record now */
        }
        break;
    }
    case TUI_EV_TURN:
        if (!a->replay && tui_doc_begin_turn(&a->doc, e->msg ? e->msg : ""))
            tui_lua_step(a, "turn", a->doc.n_turn, e->msg);
        break;
    case TUI_EV_LOG:
        tui_log(a, e->error, "%s", e->msg ? e->msg : "");
        break;
    case TUI_EV_LOADED:
        tui_doc_free(&a->doc);
        tui_doc_init(&a->doc);
        a->doc.has_model = true;
        a->doc.meta = e->meta;
        memset(&e->meta, 0, sizeof e->meta);
        a->doc.dims = e->dims;
        tui_doc_set_vocab(&a->doc, e->vocab, e->n_vocab);
        e->vocab = NULL;
        app_take_settings(a, e);
        a->model_loaded = true;
        a->replay = false;
        a->sel = -1;
        a->follow = true;
        a->tr_top = 0;
        free(a->model_path);
        a->model_path = a->doc.meta.path ? strdup(a->doc.meta.path) : NULL;
        a->doc_gen++;
        tui_log(a, false, "loaded %s (%s, %d layers, %d experts top-%d, vocab %d)",
                a->doc.meta.path, a->doc.meta.arch, (int)a->doc.meta.n_layer,
                (int)a->doc.meta.n_expert, (int)a->doc.meta.n_expert_used,
                (int)a->doc.meta.n_vocab);
        tui_lua_step(a, "load", 0, a->doc.meta.path);
        break;
    case TUI_EV_SETTINGS:
        if (!a->replay)
            app_take_settings(a, e);
        break;
    case TUI_EV_BUSY:
        a->busy = true;
        free(a->busy_what);
        a->busy_what = e->msg;
        e->msg = NULL;
        break;
    case TUI_EV_IDLE:
        if (a->busy) {
            a->busy = false;
            tui_lua_step(a, "idle", a->doc.n_tok, a->busy_what);
        }
        break;
    case TUI_EV_RESET:
        if (a->replay)
            break;
        tui_doc_clear(&a->doc);
        a->sel = -1;
        a->follow = true;
        a->tr_top = 0;
        tui_log(a, false, "reset: transcript and context cleared");
        tui_lua_step(a, "reset", 0, NULL);
        break;
    default:
        break;
    }
}

/* ---- keys of normal mode ------------------------------------------------- */

typedef struct {
    int key;
    void (*fn)(tui_app *a);
} app_key;

static void k_step(tui_app *a)
{
    if (a->busy) {
        tui_log(a, false, "generating: r or Ctrl-C stops first");
        return;
    }
    tui_app_line(a, ":step");
}

static void k_run(tui_app *a)
{
    if (a->busy && a->worker) {
        tui_worker_cancel(a->worker);
        tui_log(a, false, "paused");
    } else {
        tui_app_line(a, ":run");
    }
}

static void k_left(tui_app *a) { tui_app_select(a, (a->sel < 0 ? a->doc.n_tok - 1 : a->sel) - 1); }
static void k_right(tui_app *a) { tui_app_select(a, (a->sel < 0 ? a->doc.n_tok - 1 : a->sel) + 1); }
static void k_home(tui_app *a) { tui_app_select(a, 0); }
static void k_end(tui_app *a) { tui_app_select(a, a->doc.n_tok - 1); a->follow = true; }

static int app_visible_next(tui_app *a, int dir)
{
    int f = a->focus;
    for (int i = 0; i < TUI_PANE_COUNT; i++) {
        f = (f + dir + TUI_PANE_COUNT) % TUI_PANE_COUNT;
        if (a->zoom >= 0 || a->lay.pane[f].h > 0)
            return f;
    }
    return a->focus;
}

static void k_tab(tui_app *a)
{
    a->focus = app_visible_next(a, 1);
    if (a->zoom >= 0)
        a->zoom = a->focus;
}

static void k_btab(tui_app *a)
{
    a->focus = app_visible_next(a, -1);
    if (a->zoom >= 0)
        a->zoom = a->focus;
}

static void k_zoom(tui_app *a) { a->zoom = a->zoom >= 0 ? -1 : a->focus; }
static void k_help(tui_app *a) { a->help = true; a->help_scroll = 0; }
static void k_quit(tui_app *a) { a->quit = true; }
static void k_colon(tui_app *a) { tui_cmdline_open(a, ":"); }
static void k_prompt(tui_app *a) { tui_cmdline_open(a, NULL); }
static void k_mode(tui_app *a) { a->heat_mode = (tui_heat_mode)((a->heat_mode + 1) % TUI_HEAT_COUNT); }
static void k_lprev(tui_app *a) { if (a->heat_layer > 0) a->heat_layer--; a->heat_mode = TUI_HEAT_TIMELINE; }
static void k_lnext(tui_app *a)
{
    if (a->heat_layer + 1 < a->doc.dims.n_layer)
        a->heat_layer++;
    a->heat_mode = TUI_HEAT_TIMELINE;
}

static void k_scroll(tui_app *a, int d)
{
    if (a->focus == TUI_PANE_INSPECTOR && a->lpane_show > 0) {
        tui_lua_pane_scroll(a, d);
    } else if (a->focus == TUI_PANE_LOG) {
        a->log_scroll -= d;
        if (a->log_scroll < 0)
            a->log_scroll = 0;
    } else {
        a->scroll[a->focus] += d;
        if (a->scroll[a->focus] < 0)
            a->scroll[a->focus] = 0;
        if (a->scroll[a->focus] >= a->doc.dims.n_layer)
            a->scroll[a->focus] = a->doc.dims.n_layer > 0 ? a->doc.dims.n_layer - 1 : 0;
    }
}

static void k_pgup(tui_app *a) { k_scroll(a, -3); }
static void k_pgdn(tui_app *a) { k_scroll(a, 3); }
static void k_redraw(tui_app *a) { clearok(curscr, TRUE); a->dirty = true; }

static const app_key app_keys[] = {
    {' ', k_step}, {'r', k_run}, {KEY_LEFT, k_left}, {'h', k_left}, {KEY_RIGHT, k_right},
    {'l', k_right}, {KEY_HOME, k_home}, {'g', k_home}, {KEY_END, k_end}, {'G', k_end},
    {'\t', k_tab}, {KEY_BTAB, k_btab}, {'z', k_zoom}, {'?', k_help}, {'q', k_quit},
    {':', k_colon}, {'i', k_prompt}, {'\r', k_prompt}, {'\n', k_prompt}, {KEY_ENTER, k_prompt},
    {'m', k_mode}, {'[', k_lprev}, {']', k_lnext}, {KEY_PPAGE, k_pgup}, {KEY_NPAGE, k_pgdn},
    {KEY_UP, k_pgup}, {KEY_DOWN, k_pgdn}, {12, k_redraw},
};

bool tui_app_key(tui_app *a, int key)
{
    for (size_t i = 0; i < sizeof app_keys / sizeof app_keys[0]; i++)
        if (app_keys[i].key == key) {
            app_keys[i].fn(a);
            a->dirty = true;
            return true;
        }
    return false;
}

/* ---- windows and drawing ------------------------------------------------- */

static const tui_draw_fn app_draw_fns[TUI_PANE_COUNT] = {
    [TUI_PANE_TRANSCRIPT] = tui_draw_transcript,
    [TUI_PANE_ROUTER] = tui_draw_router,
    [TUI_PANE_HEATMAP] = tui_draw_heatmap,
    [TUI_PANE_EXIT] = tui_draw_exit,
    [TUI_PANE_INSPECTOR] = tui_draw_inspector,
    [TUI_PANE_LOG] = tui_draw_log,
};
_Static_assert(sizeof app_draw_fns / sizeof app_draw_fns[0] == TUI_PANE_COUNT,
               "one draw function per pane");

static WINDOW *app_newwin(const tui_rect *r)
{
    return r->h > 0 && r->w > 0 ? newwin(r->h, r->w, r->y, r->x) : NULL;
}

static void app_relayout(tui_app *a)
{
    getmaxyx(stdscr, a->lines, a->cols);
    tui_layout_compute(a->lines, a->cols, a->zoom, &a->lay);
    for (int i = 0; i < TUI_PANE_COUNT; i++) {
        if (a->win[i])
            delwin(a->win[i]);
        a->win[i] = a->lay.too_small ? NULL : app_newwin(&a->lay.pane[i]);
    }
    if (a->status_w)
        delwin(a->status_w);
    if (a->cmd_w)
        delwin(a->cmd_w);
    a->status_w = app_newwin(&a->lay.status);
    a->cmd_w = app_newwin(&a->lay.cmd);
    if (!a->cmd_w)
        a->cmd_w = newwin(1, 1, 0, 0);
    keypad(a->cmd_w, TRUE);
    nodelay(a->cmd_w, TRUE);
    werase(stdscr);
    wnoutrefresh(stdscr);
    a->dirty = true;
}

static void app_draw_help(tui_app *a)
{
    int h = a->lines - 4, w = a->cols - 8, y = 1, skip = a->help_scroll;
    WINDOW *hw;
    if (h < 5 || w < 30)
        return;
    hw = newwin(h, w, 2, 4);
    if (!hw)
        return;
    werase(hw);
    box(hw, 0, 0);
    mvwaddstr(hw, 0, 2, " moe-studio help (Esc/q/? closes, Up/Down scrolls) ");
#define HELP_LINE(...)                                  \
    do {                                                \
        if (skip > 0) {                                 \
            skip--;                                     \
        } else if (y < h - 1) {                         \
            char hl[512];                               \
            snprintf(hl, sizeof hl, __VA_ARGS__);       \
            wmove(hw, y++, 2);                          \
            tui_put(hw, hl, w - 4);                     \
        }                                               \
    } while (0)
    HELP_LINE("Keys");
    for (size_t i = 0; i < tui_n_keys_help; i++)
        HELP_LINE("  %-12s %s", tui_keys_help[i].keys, tui_keys_help[i].help);
    HELP_LINE("%s", "");
    HELP_LINE("Commands (type : first; text without : generates from it)");
    for (size_t i = 0; i < tui_n_cmds; i++)
        HELP_LINE("  :%-7s %-15s %s", tui_cmds[i].name, tui_cmds[i].args, tui_cmds[i].help);
    if (tui_lua_command_count(a) > 0 || a->n_lkey > 0) {
        HELP_LINE("%s", "");
        HELP_LINE("From Lua (plugins, :source)");
        for (int i = 0; i < tui_lua_command_count(a); i++) {
            const char *cn = NULL, *ch = NULL;
            if (tui_lua_command_get(a, i, &cn, &ch))
                HELP_LINE("  :%-23s %s", cn ? cn : "", ch ? ch : "");
        }
        for (int i = 0; i < a->n_lkey; i++)
            HELP_LINE("  key %-20s %s", a->lkey[i].key, a->lkey[i].help ? a->lkey[i].help : "");
    }
#undef HELP_LINE
    wnoutrefresh(hw);
    delwin(hw);
}

static void app_draw(tui_app *a)
{
    if (a->lay.too_small) {
        werase(stdscr);
        mvwprintw(stdscr, 0, 0, "moe-studio: terminal %dx%d is too small (need %dx%d)",
                  a->cols, a->lines, TUI_MIN_COLS, TUI_MIN_LINES);
        wnoutrefresh(stdscr);
    } else {
        for (int i = 0; i < TUI_PANE_COUNT; i++) {
            WINDOW *w = a->win[i];
            if (!w)
                continue;
            werase(w);
            if (i == TUI_PANE_INSPECTOR && a->lpane_show > 0)
                tui_lua_draw_pane(a, w, a->lay.pane[i].h, a->lay.pane[i].w);
            else
                app_draw_fns[i](a, w, a->lay.pane[i].h, a->lay.pane[i].w);
            wnoutrefresh(w);
        }
        if (a->status_w) {
            werase(a->status_w);
            tui_draw_status(a, a->status_w, a->lay.status.w);
            wnoutrefresh(a->status_w);
        }
    }
    if (a->help)
        app_draw_help(a);
    if (a->cmd_w && a->lay.cmd.h > 0) {
        tui_cmdline_draw(a);
        wnoutrefresh(a->cmd_w);
    }
    curs_set(a->cmd_active && !a->help ? 1 : 0);
    doupdate();
    a->dirty = false;
}

static void app_help_key(tui_app *a, int key)
{
    if (key == KEY_UP || key == 'k')
        a->help_scroll = a->help_scroll > 0 ? a->help_scroll - 1 : 0;
    else if (key == KEY_DOWN || key == 'j')
        a->help_scroll++;
    else if (key == KEY_PPAGE)
        a->help_scroll = a->help_scroll > 10 ? a->help_scroll - 10 : 0;
    else if (key == KEY_NPAGE)
        a->help_scroll += 10;
    else
        a->help = false;
    a->dirty = true;
}

static void app_drain_events(tui_app *a)
{
    tui_event *e;
    if (!a->worker)
        return;
    e = tui_worker_take(a->worker);
    while (e) {
        tui_event *n = e->next;
        tui_app_event(a, e);
        tui_event_free(e);
        e = n;
    }
}

static void app_read_keys(tui_app *a)
{
    wint_t wch;
    int r;
    while (!a->quit && (r = wget_wch(a->cmd_w, &wch)) != ERR) {
        bool code = r == KEY_CODE_YES;
        int key = (int)wch;
        if (code && key == KEY_RESIZE) {
            app_relayout(a);
            continue;
        }
        if (a->help) {
            app_help_key(a, key);
        } else if (a->cmd_active) {
            tui_cmdline_key(a, key, code);
        } else if (key == 27) {
            /* Esc: back from a Lua text pane to the inspector */
            if (a->lpane_show > 0) {
                a->lpane_show = 0;
                a->dirty = true;
            }
        } else if (!tui_app_key(a, key) && !tui_lua_key(a, key, code)) {
            continue;
        }
        if (!a->lay.too_small) {
            /* zoom and focus changes may need new windows */
            tui_layout nl;
            tui_layout_compute(a->lines, a->cols, a->zoom, &nl);
            if (memcmp(&nl, &a->lay, sizeof nl) != 0)
                app_relayout(a);
        }
    }
}

int tui_app_run(tui_app *a)
{
    app_relayout(a);
    app_draw(a);
    while (!a->quit) {
        struct pollfd fds[3];
        int nfds = 0, r;
        fds[nfds].fd = STDIN_FILENO;
        fds[nfds++].events = POLLIN;
        fds[nfds].fd = tui_term_signal_fd();
        fds[nfds++].events = POLLIN;
        if (a->worker) {
            fds[nfds].fd = a->worker->pipe_r;
            fds[nfds++].events = POLLIN;
        }
        r = poll(fds, (nfds_t)nfds, a->busy ? 100 : 500);
        if (r < 0 && errno != EINTR)
            break;
        tui_term_drain_signal_fd();
        if (tui_sig_term) {
            tui_log(a, false, "terminated by a signal");
            break;
        }
        if (tui_sig_int) {
            tui_sig_int = 0;
            if (a->cmd_active)
                tui_cmdline_close(a);
            if (a->worker)
                tui_worker_cancel(a->worker);
            tui_log(a, false, "interrupted: generation stopped (q quits)");
        }
        app_drain_events(a);
        app_read_keys(a);
        if (a->busy)
            a->dirty = true; /* tok/s, memory */
        if (a->dirty && !a->quit)
            app_draw(a);
    }
    return tui_sig_term ? 128 + 15 : 0;
}
