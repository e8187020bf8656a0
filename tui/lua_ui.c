/*
 * lua_ui.c - the studio's side of the Lua host (lua/host.h): the host_ui
 * callbacks (log and print into the log pane, notify, text panes shown in
 * the inspector's place, progress bars in the status bar, sessions), the
 * :lua / :source / :plugins / :pane / :traceback commands, plugin commands
 * and key bindings, and the delivery of engine events to Lua handlers.
 *
 * Threading: everything here runs on the UI thread. Engine events reach
 * Lua as copies: the worker's token records (tui_tok) after they were
 * queued and appended to the document; the engine's model and context are
 * never handed to Lua (plugins that want an engine load their own).
 * Owns the panes, bars and key list of tui_app; not the host.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../lua/host.h"
#include "ui.h"

/* ---- small helpers ------------------------------------------------------ */

static char *lu_strdup(const char *s)
{
    return strdup(s ? s : "");
}

/* Log text line by line (Lua output may hold newlines); prefix goes before
 * the first line only. */
static void lu_log_lines(tui_app *a, bool error, const char *prefix, const char *text)
{
    const char *p = text ? text : "";
    bool first = true;
    for (;;) {
        const char *nl = strchr(p, '\n');
        const int len = nl ? (int)(nl - p) : (int)strlen(p);
        tui_log(a, error, "%s%.*s", first && prefix ? prefix : "", len, p);
        first = false;
        if (!nl)
            break;
        p = nl + 1;
    }
}

static double lu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ---- host_ui callbacks ---------------------------------------------------- */

static void lu_cb_log(void *ud, moe_log_level lvl, const char *msg)
{
    tui_app *a = ud;
    const char *nl = strchr(msg, '\n');
    /* the log pane gets the headline; :traceback shows the whole message */
    if (nl && lvl >= MOE_LOG_WARN) {
        char *m = lu_strdup(msg);
        if (m) {
            free(a->lua_error);
            a->lua_error = m;
        }
    }
    tui_log(a, lvl >= MOE_LOG_WARN, "%.*s", nl ? (int)(nl - msg) : (int)strlen(msg), msg);
}

static void lu_cb_print(void *ud, const char *line)
{
    lu_log_lines(ud, false, NULL, line);
}

static void lu_cb_notify(void *ud, moe_log_level lvl, const char *msg)
{
    lu_log_lines(ud, lvl >= MOE_LOG_WARN, NULL, msg);
}

static int lu_cb_pane_open(void *ud, const char *title, const char *text)
{
    return tui_lua_pane_open(ud, title, text);
}

static void lu_cb_pane_set(void *ud, int id, const char *text)
{
    tui_lua_pane_set(ud, id, text);
}

static void lu_cb_progress(void *ud, const char *label, double frac)
{
    tui_lua_progress(ud, label, frac);
}

static void lu_cb_key_bound(void *ud, const char *key, const char *help)
{
    tui_app *a = ud;
    int i;
    for (i = 0; i < a->n_lkey; i++)
        if (!strcmp(a->lkey[i].key, key))
            break;
    if (i == TUI_LUA_KEYS)
        return;
    if (i == a->n_lkey) {
        a->lkey[i].key = lu_strdup(key);
        if (!a->lkey[i].key)
            return;
        a->n_lkey++;
    }
    free(a->lkey[i].help);
    a->lkey[i].help = lu_strdup(help);
}

static void lu_cb_command_added(void *ud, const char *name, const char *help)
{
    tui_app *a = ud;
    (void)name;
    (void)help;
    a->dirty = true;
}

static bool lu_cb_session(void *ud, const char *action, const char *path, char *err,
                          size_t errn)
{
    tui_app *a = ud;
    if (a->lua && host_in_sandbox(a->lua)) {
        /* session files are files: not for the sandbox (no io there) */
        snprintf(err, errn, "session files are not available to sandboxed plugins "
                            "(plugins_unsafe = true in config.lua allows them)");
        return false;
    }
    if (!strcmp(action, "export")) {
        if (!tui_export_any(&a->doc, path, err, errn))
            return false;
        tui_log(a, false, "exported %d tokens to %s", (int)a->doc.n_tok, path);
        return true;
    }
    if (!strcmp(action, "import"))
        return tui_app_import(a, path, err, errn);
    snprintf(err, errn, "unknown session action '%s'", action);
    return false;
}

void tui_lua_attach(tui_app *a, struct host *h)
{
    host_ui ui;
    a->lua = h;
    if (!h)
        return;
    memset(&ui, 0, sizeof ui);
    ui.ud = a;
    ui.log = lu_cb_log;
    ui.print = lu_cb_print;
    ui.notify = lu_cb_notify;
    ui.pane_open = lu_cb_pane_open;
    ui.pane_set = lu_cb_pane_set;
    ui.progress = lu_cb_progress;
    ui.command_added = lu_cb_command_added;
    ui.key_bound = lu_cb_key_bound;
    ui.session = lu_cb_session;
    host_set_ui(h, &ui);
    host_set_interrupt(h, &tui_sig_int);
}

void tui_lua_free(tui_app *a)
{
    for (int i = 0; i < a->n_lpane; i++) {
        free(a->lpane[i].title);
        free(a->lpane[i].text);
    }
    a->n_lpane = 0;
    a->lpane_show = 0;
    for (int i = 0; i < TUI_LUA_BARS; i++) {
        free(a->bar[i].label);
        a->bar[i].label = NULL;
    }
    for (int i = 0; i < a->n_lkey; i++) {
        free(a->lkey[i].key);
        free(a->lkey[i].help);
    }
    a->n_lkey = 0;
    free(a->lua_error);
    a->lua_error = NULL;
}

/* ---- events ----------------------------------------------------------------- */

void tui_lua_token(tui_app *a, const tui_tok *t)
{
    host *h = a->lua;
    const unsigned gen = a->doc_gen;
    const tui_dims d = a->doc.dims;
    int32_t id, pos, exit_layer;
    if (!h || !t)
        return;
    id = t->id;
    pos = t->pos;
    exit_layer = t->traced ? t->exit_layer : -1;
    if (host_has_handlers(h, HOST_EV_TOKEN)) {
        host_emit_token_text(h, id, t->text ? t->text : "", t->text ? strlen(t->text) : 0,
                             pos);
        /* a handler may have replaced the document (moe.session_import) */
        if (a->doc_gen != gen)
            return;
    }
    if (exit_layer >= 0 && exit_layer < d.n_layer - 1 && host_has_handlers(h, HOST_EV_EXIT)) {
        host_emit_exit(h, pos, id, exit_layer, d.n_layer);
        if (a->doc_gen != gen)
            return;
    }
    if (t->traced && host_has_handlers(h, HOST_EV_ROUTE)) {
        /* a trace entry made of the record's copies (no router logits,
         * shared-expert gates or lens ranks: the studio does not keep them) */
        moe_trace_dims td;
        moe_trace_token tt;
        memset(&td, 0, sizeof td);
        memset(&tt, 0, sizeof tt);
        td.n_layer = d.n_layer;
        td.n_expert = d.n_expert;
        td.n_sel = d.n_sel;
        td.lens_k = d.lens_k;
        tt.pos = pos;
        tt.token = id;
        tt.prefill = t->prompt;
        tt.exit_layer = t->exit_layer;
        tt.exit_value = NAN;
        tt.time_ms = t->time_ms;
        tt.layer_moe = t->layer_moe;
        tt.router_probs = t->probs;
        tt.sel = t->sel;
        tt.sel_w = t->sel_w;
        tt.hnorm = t->hnorm;
        tt.lens_id = t->lens_id;
        tt.lens_p = t->lens_p;
        tt.lens_entropy = t->lens_entropy;
        host_emit_route(h, &td, &tt);
    }
}

void tui_lua_step(tui_app *a, const char *what, int64_t i, const char *info)
{
    if (a->lua)
        host_emit_step(a->lua, what, i, info);
}

void tui_lua_session(tui_app *a, const char *action, const char *path)
{
    if (a->lua)
        host_emit_session(a->lua, action, path);
}

/* ---- keys -------------------------------------------------------------------- */

bool tui_lua_key_name(int key, bool is_keycode, char *buf, size_t n)
{
    if (n < 8)
        return false;
    if (is_keycode) {
        if (key >= KEY_F(1) && key <= KEY_F(24)) {
            snprintf(buf, n, "F%d", key - KEY_F0);
            return true;
        }
        if (key == KEY_IC || key == KEY_DC) {
            snprintf(buf, n, "%s", key == KEY_IC ? "Insert" : "Delete");
            return true;
        }
        return false;
    }
    if (key >= 1 && key <= 26 && key != '\t' && key != '\n' && key != '\r') {
        snprintf(buf, n, "C-%c", 'a' + key - 1);
        return true;
    }
    if (key < 0x20 || key == 0x7f || key > 0x10ffff || (key >= 0xd800 && key <= 0xdfff))
        return false;
    /* the character itself, UTF-8 */
    if (key < 0x80) {
        buf[0] = (char)key;
        buf[1] = '\0';
    } else if (key < 0x800) {
        buf[0] = (char)(0xc0 | (key >> 6));
        buf[1] = (char)(0x80 | (key & 0x3f));
        buf[2] = '\0';
    } else if (key < 0x10000) {
        buf[0] = (char)(0xe0 | (key >> 12));
        buf[1] = (char)(0x80 | ((key >> 6) & 0x3f));
        buf[2] = (char)(0x80 | (key & 0x3f));
        buf[3] = '\0';
    } else {
        buf[0] = (char)(0xf0 | (key >> 18));
        buf[1] = (char)(0x80 | ((key >> 12) & 0x3f));
        buf[2] = (char)(0x80 | ((key >> 6) & 0x3f));
        buf[3] = (char)(0x80 | (key & 0x3f));
        buf[4] = '\0';
    }
    return true;
}

bool tui_lua_key(tui_app *a, int key, bool is_keycode)
{
    char name[16];
    bool bound = false;
    if (!a->lua || !tui_lua_key_name(key, is_keycode, name, sizeof name))
        return false;
    for (int i = 0; i < a->n_lkey && !bound; i++)
        bound = !strcmp(a->lkey[i].key, name);
    if (!bound)
        return false;
    host_run_key(a->lua, name); /* a failure is logged by the host */
    a->dirty = true;
    return true;
}

/* ---- commands ------------------------------------------------------------------ */

int tui_lua_command_count(tui_app *a)
{
    return a->lua ? host_command_count(a->lua) : 0;
}

bool tui_lua_command_get(tui_app *a, int i, const char **name, const char **help)
{
    return a->lua && host_command_get(a->lua, i, name, help);
}

bool tui_lua_command(tui_app *a, const char *name, const char *args)
{
    const int n = tui_lua_command_count(a);
    for (int i = 0; i < n; i++) {
        const char *cn = NULL;
        if (tui_lua_command_get(a, i, &cn, NULL) && cn && !strcmp(cn, name)) {
            host_run_command(a->lua, name, args ? args : "");
            a->dirty = true;
            return true;
        }
    }
    return false;
}

static bool lu_need_host(tui_app *a, const char *what)
{
    if (a->lua)
        return true;
    tui_log(a, true, "%s: the Lua host is not running", what);
    return false;
}

void tui_lua_eval(tui_app *a, const char *code)
{
    char *out = NULL;
    if (!lu_need_host(a, "lua"))
        return;
    while (code && *code == ' ')
        code++;
    if (!code || !*code) {
        tui_log(a, true, "usage: :lua CODE (an expression's value is shown)");
        return;
    }
    tui_log(a, false, "lua> %s", code);
    if (host_eval(a->lua, code, &out) && out && *out)
        lu_log_lines(a, false, "= ", out);
    /* errors were logged by the host (headline here, :traceback for more) */
    free(out);
    a->dirty = true;
}

void tui_lua_source(tui_app *a, int argc, char **argv)
{
    if (!lu_need_host(a, "source"))
        return;
    if (argc < 2) {
        tui_log(a, true, "usage: :source FILE.lua [ARGS...]");
        return;
    }
    if (host_run_file(a->lua, argv[1], argc - 2, argv + 2))
        tui_log(a, false, "sourced %s", argv[1]);
    a->dirty = true;
}

void tui_lua_plugins(tui_app *a)
{
    const int n = a->lua ? host_plugin_count(a->lua) : 0;
    size_t cap = 4096, off = 0;
    char *text, sum[1024];
    size_t so = 0;
    int n_on = 0;
    if (!lu_need_host(a, "plugins"))
        return;
    text = malloc(cap);
    if (!text)
        return;
    text[0] = '\0';
    sum[0] = '\0';
#define LU_ADD(...)                                                              \
    do {                                                                         \
        int k_ = snprintf(text + off, cap - off, __VA_ARGS__);                   \
        if (k_ > 0 && (size_t)k_ >= cap - off) {                                 \
            char *nt_ = realloc(text, cap * 2 + (size_t)k_);                     \
            if (!nt_)                                                            \
                break;                                                           \
            text = nt_;                                                          \
            cap = cap * 2 + (size_t)k_;                                          \
            k_ = snprintf(text + off, cap - off, __VA_ARGS__);                   \
        }                                                                        \
        if (k_ > 0)                                                              \
            off += (size_t)k_;                                                   \
    } while (0)
    for (int i = 0; i < n; i++) {
        host_plugin_info pi;
        if (!host_plugin_get(a->lua, i, &pi))
            continue;
        n_on += pi.enabled;
        LU_ADD("%-16s %s  %s\n", pi.name, pi.enabled ? "on " : "off", pi.path);
        if (!pi.enabled && pi.error[0])
            LU_ADD("    %s\n", pi.error);
        if (so < sizeof sum)
            so += (size_t)snprintf(sum + so, sizeof sum - so, "%s%s %s", i ? ", " : "",
                                   pi.name, pi.enabled ? "on" : "off");
    }
    if (n == 0)
        LU_ADD("(no plugins: see docs/lua-api.md, Plugins)\n");
    {
        const int nc = tui_lua_command_count(a);
        if (nc > 0) {
            LU_ADD("\nLua commands:\n");
            for (int i = 0; i < nc; i++) {
                const char *cn = NULL, *ch = NULL;
                if (tui_lua_command_get(a, i, &cn, &ch))
                    LU_ADD("  :%-14s %s\n", cn ? cn : "", ch ? ch : "");
            }
        }
        if (a->n_lkey > 0) {
            LU_ADD("\nLua keys:\n");
            for (int i = 0; i < a->n_lkey; i++)
                LU_ADD("  %-15s %s\n", a->lkey[i].key, a->lkey[i].help ? a->lkey[i].help : "");
        }
    }
#undef LU_ADD
    tui_log(a, false, "plugins (%d of %d on): %s", n_on, n, n ? sum : "none");
    tui_lua_pane_open(a, "plugins", text);
    free(text);
}

static int lu_pane_index(const tui_app *a, int id)
{
    for (int i = 0; i < a->n_lpane; i++)
        if (a->lpane[i].id == id)
            return i;
    return -1;
}

void tui_lua_pane_cmd(tui_app *a, int argc, char **argv)
{
    if (argc < 2) {
        char buf[512];
        size_t o = 0;
        buf[0] = '\0';
        for (int i = 0; i < a->n_lpane && o < sizeof buf; i++)
            o += (size_t)snprintf(buf + o, sizeof buf - o, "%s%d %s%s", i ? ", " : "",
                                  a->lpane[i].id, a->lpane[i].title,
                                  a->lpane_show == i + 1 ? " (shown)" : "");
        tui_log(a, false, "panes: %s (:pane N shows one, :pane close)",
                a->n_lpane ? buf : "none");
        return;
    }
    if (!strcmp(argv[1], "close")) {
        a->lpane_show = 0;
        a->dirty = true;
        return;
    }
    for (int i = 0; i < a->n_lpane; i++) {
        char idbuf[16];
        snprintf(idbuf, sizeof idbuf, "%d", a->lpane[i].id);
        if (!strcmp(argv[1], idbuf) || !strcmp(argv[1], a->lpane[i].title)) {
            a->lpane_show = i + 1;
            a->dirty = true;
            return;
        }
    }
    tui_log(a, true, "pane: no pane '%s' (:pane lists them)", argv[1]);
}

void tui_lua_traceback(tui_app *a)
{
    if (!a->lua_error) {
        tui_log(a, false, "traceback: no Lua error so far");
        return;
    }
    tui_lua_pane_open(a, "lua error", a->lua_error);
}

/* ---- text panes and progress bars ---------------------------------------------- */

static int lu_count_lines(const char *text)
{
    int n = 0;
    for (const char *s = text; s && *s; s++)
        n += *s == '\n';
    if (text && *text && text[strlen(text) - 1] != '\n')
        n++;
    return n;
}

int tui_lua_pane_open(tui_app *a, const char *title, const char *text)
{
    tui_lua_pane *p = NULL;
    char *t, *x;
    int i;
    for (i = 0; i < a->n_lpane; i++)
        if (!strcmp(a->lpane[i].title, title)) {
            p = &a->lpane[i];
            break;
        }
    if (!p) {
        if (a->n_lpane == TUI_LUA_PANES) {
            /* full: the oldest goes */
            free(a->lpane[0].title);
            free(a->lpane[0].text);
            memmove(&a->lpane[0], &a->lpane[1], (TUI_LUA_PANES - 1) * sizeof a->lpane[0]);
            a->n_lpane--;
        }
        t = lu_strdup(title);
        if (!t)
            return 0;
        i = a->n_lpane++;
        p = &a->lpane[i];
        memset(p, 0, sizeof *p);
        p->title = t;
        p->id = ++a->lpane_next_id;
    }
    x = lu_strdup(text);
    if (x) {
        free(p->text);
        p->text = x;
    }
    p->scroll = 0;
    a->lpane_show = i + 1;
    a->dirty = true;
    return p->id;
}

void tui_lua_pane_set(tui_app *a, int id, const char *text)
{
    const int i = lu_pane_index(a, id);
    char *x;
    if (i < 0)
        return;
    x = lu_strdup(text);
    if (!x)
        return;
    free(a->lpane[i].text);
    a->lpane[i].text = x;
    a->dirty = true;
}

static void lu_draw_status_now(tui_app *a)
{
    const double now = lu_now();
    if (!a->status_w || a->lay.status.w <= 0 || now - a->bar_drawn < 0.05)
        return;
    /* Lua keeps the UI thread busy: show the bar now, not when it returns */
    a->bar_drawn = now;
    werase(a->status_w);
    tui_draw_status(a, a->status_w, a->lay.status.w);
    wnoutrefresh(a->status_w);
    doupdate();
}

void tui_lua_progress(tui_app *a, const char *label, double frac)
{
    int slot = -1, oldest = 0;
    for (int i = 0; i < TUI_LUA_BARS; i++)
        if (a->bar[i].label && !strcmp(a->bar[i].label, label))
            slot = i;
    if (frac < 0 || isnan(frac)) {
        if (slot >= 0) {
            free(a->bar[slot].label);
            a->bar[slot].label = NULL;
            a->dirty = true;
        }
        return;
    }
    if (slot < 0) {
        for (int i = 0; i < TUI_LUA_BARS && slot < 0; i++)
            if (!a->bar[i].label)
                slot = i;
        if (slot < 0) {
            for (int i = 1; i < TUI_LUA_BARS; i++)
                if (a->bar[i].seq < a->bar[oldest].seq)
                    oldest = i;
            slot = oldest;
            free(a->bar[slot].label);
            a->bar[slot].label = NULL;
        }
        a->bar[slot].label = lu_strdup(label);
        if (!a->bar[slot].label)
            return;
    }
    a->bar[slot].frac = frac > 1 ? 1 : frac;
    a->bar[slot].seq = ++a->bar_seq;
    a->dirty = true;
    lu_draw_status_now(a);
}

void tui_lua_draw_bars(tui_app *a, WINDOW *w, int wd)
{
    int newest = -1, n = 0, cells, len, x;
    char bar[24], seg[96];
    for (int i = 0; i < TUI_LUA_BARS; i++)
        if (a->bar[i].label) {
            n++;
            if (newest < 0 || a->bar[i].seq > a->bar[newest].seq)
                newest = i;
        }
    if (newest < 0)
        return;
    cells = tui_bar_cells(a->bar[newest].frac, 1.0, 10);
    for (int i = 0; i < 10; i++)
        bar[i] = i < cells ? '#' : '-';
    bar[10] = '\0';
    len = snprintf(seg, sizeof seg, " %.16s [%s] %3d%%%s ", a->bar[newest].label, bar,
                   (int)lround(a->bar[newest].frac * 100), n > 1 ? " +" : "");
    x = wd - tui_str_width(seg);
    if (x < 0 || len <= 0)
        return;
    wattrset(w, tui_attr(TUI_C_TITLE_FOCUS));
    wmove(w, 0, x);
    tui_put(w, seg, wd - x);
    wattrset(w, A_NORMAL);
}

void tui_lua_draw_pane(tui_app *a, WINDOW *w, int h, int wd)
{
    const int idx = a->lpane_show - 1;
    const tui_lua_pane *p;
    char title[256], line[1024];
    const char *s;
    int n_lines, y, skip;
    if (idx < 0 || idx >= a->n_lpane) {
        tui_draw_inspector(a, w, h, wd);
        return;
    }
    p = &a->lpane[idx];
    n_lines = lu_count_lines(p->text);
    snprintf(title, sizeof title, " %s  (%d/%d, Esc: inspector)%s", p->title, idx + 1,
             a->n_lpane,
             a->zoom == TUI_PANE_INSPECTOR ? "  [zoom]" : "");
    wattrset(w, tui_attr(a->focus == TUI_PANE_INSPECTOR ? TUI_C_TITLE_FOCUS : TUI_C_TITLE));
    mvwhline(w, 0, 0, ' ', wd);
    wmove(w, 0, 0);
    tui_put(w, title, wd);
    wattrset(w, A_NORMAL);
    skip = p->scroll;
    if (skip > n_lines - (h - 1))
        skip = n_lines - (h - 1) > 0 ? n_lines - (h - 1) : 0;
    s = p->text ? p->text : "";
    for (y = 1; *s && y < h;) {
        const char *nl = strchr(s, '\n');
        const size_t len = nl ? (size_t)(nl - s) : strlen(s);
        if (skip > 0) {
            skip--;
        } else {
            size_t o = 0;
            for (size_t k = 0; k < len && o + 3 < sizeof line; k++) {
                if (s[k] == '\t') {
                    line[o++] = ' ';
                    line[o++] = ' ';
                } else {
                    line[o++] = s[k];
                }
            }
            line[o] = '\0';
            wmove(w, y++, 1);
            tui_put(w, line, wd - 1);
        }
        if (!nl)
            break;
        s = nl + 1;
    }
}

void tui_lua_pane_scroll(tui_app *a, int d)
{
    tui_lua_pane *p;
    int max;
    if (a->lpane_show < 1 || a->lpane_show > a->n_lpane)
        return;
    p = &a->lpane[a->lpane_show - 1];
    max = lu_count_lines(p->text) - 1;
    p->scroll += d;
    if (p->scroll > max)
        p->scroll = max;
    if (p->scroll < 0)
        p->scroll = 0;
    a->dirty = true;
}
