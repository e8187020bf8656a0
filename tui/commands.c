/*
 * commands.c - the studio's `:` commands as one dispatch table (load, gen,
 * step, run, pause, reset, set, route, exit, bricks, export, import, lua,
 * source, plugins, pane, traceback, help, quit), the handling of an entered
 * line (text generates from it; unknown `:` commands go to the ones Lua
 * registered) and the key help shown by the overlay. Engine commands are
 * forwarded to the worker thread; nothing here touches the engine directly;
 * the Lua side is in lua_ui.c.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui.h"

static bool cm_need_model(tui_app *a, const char *what)
{
    if (a->replay) {
        tui_log(a, true, "%s: viewing an imported session (:reset to go back to the model, "
                         ":load FILE.gguf)", what);
        return false;
    }
    if (!a->model_loaded || !a->worker) {
        tui_log(a, true, "%s: no model loaded (:load FILE.gguf)", what);
        return false;
    }
    return true;
}

static void cm_load(tui_app *a, int argc, char **argv)
{
    if (argc < 2) {
        tui_log(a, true, "usage: :load FILE.gguf");
        return;
    }
    if (!a->worker) {
        tui_log(a, true, "load: no engine in this session");
        return;
    }
    tui_worker_cancel(a->worker);
    tui_worker_post(a->worker, TUI_JOB_LOAD, argv[1], 0, 0, NULL);
    tui_log(a, false, "loading %s ...", argv[1]);
}

static void cm_gen(tui_app *a, int argc, char **argv)
{
    long n = a->doc.set.n_predict > 0 ? a->doc.set.n_predict : 32;
    if (argc > 1) {
        char *end;
        n = strtol(argv[1], &end, 10);
        if (*end || n < 1 || n > 1000000) {
            tui_log(a, true, "gen: '%s' is not a token count >= 1", argv[1]);
            return;
        }
    }
    if (!cm_need_model(a, "gen"))
        return;
    tui_worker_post(a->worker, TUI_JOB_GEN, NULL, (int32_t)n, 0, NULL);
}

static void cm_step(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (cm_need_model(a, "step"))
        tui_worker_post(a->worker, TUI_JOB_GEN, NULL, 1, 0, NULL);
}

static void cm_run(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (!cm_need_model(a, "run"))
        return;
    if (a->busy) {
        tui_log(a, false, "already running (r or :pause stops)");
        return;
    }
    tui_worker_post(a->worker, TUI_JOB_GEN, NULL, -1, 0, NULL);
}

static void cm_pause(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (a->worker)
        tui_worker_cancel(a->worker);
}

static void cm_reset(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (a->replay) {
        a->replay = false;
        tui_doc_free(&a->doc);
        tui_doc_init(&a->doc);
        a->doc_gen++;
        a->sel = -1;
        a->follow = true;
        tui_log(a, false, "closed the imported session");
        if (a->model_loaded && a->model_path && a->worker)
            tui_worker_post(a->worker, TUI_JOB_LOAD, a->model_path, 0, 0, NULL);
        return;
    }
    if (!a->worker)
        return;
    tui_worker_cancel(a->worker);
    tui_worker_post(a->worker, TUI_JOB_RESET, NULL, 0, 0, NULL);
}

static void cm_engine(tui_app *a, int argc, char **argv)
{
    if (a->replay) {
        tui_log(a, true, "%s: viewing an imported session (:reset first)", argv[0]);
        return;
    }
    if (!a->worker) {
        tui_log(a, true, "%s: no engine in this session", argv[0]);
        return;
    }
    tui_worker_post(a->worker, TUI_JOB_CMD, NULL, 0, argc, argv);
}

static void cm_export(tui_app *a, int argc, char **argv)
{
    char err[512];
    if (argc < 2) {
        tui_log(a, true, "usage: :export FILE.json|FILE.svg|FILE.html|FILE.csv");
        return;
    }
    if (tui_export_any(&a->doc, argv[1], err, sizeof err)) {
        tui_log(a, false, "exported %d tokens to %s", (int)a->doc.n_tok, argv[1]);
        tui_lua_session(a, "export", argv[1]);
    } else
        tui_log(a, true, "export: %s", err);
}

bool tui_app_import(tui_app *a, const char *path, char *err, size_t errn)
{
    tui_doc d;
    tui_doc_init(&d);
    if (!tui_session_load(&d, path, err, errn)) {
        tui_doc_free(&d);
        return false;
    }
    if (a->worker)
        tui_worker_cancel(a->worker);
    tui_doc_free(&a->doc);
    a->doc = d;
    a->doc_gen++;
    a->replay = true;
    a->sel = d.n_tok > 0 ? 0 : -1;
    a->follow = false;
    a->tr_top = 0;
    a->dirty = true;
    tui_log(a, false, "imported %s: %d tokens, %d turns (browse with <- ->)", path,
            (int)d.n_tok, (int)d.n_turn);
    return true;
}

static void cm_import(tui_app *a, int argc, char **argv)
{
    char err[512];
    if (argc < 2) {
        tui_log(a, true, "usage: :import FILE.json");
        return;
    }
    if (!tui_app_import(a, argv[1], err, sizeof err)) {
        tui_log(a, true, "import: %s", err);
        return;
    }
    tui_lua_session(a, "import", argv[1]);
}

static void cm_lua(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tui_lua_eval(a, a->cmd_rest);
}

static void cm_source(tui_app *a, int argc, char **argv)
{
    tui_lua_source(a, argc, argv);
}

static void cm_plugins(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tui_lua_plugins(a);
}

static void cm_pane(tui_app *a, int argc, char **argv)
{
    tui_lua_pane_cmd(a, argc, argv);
}

static void cm_traceback(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    tui_lua_traceback(a);
}

static void cm_help(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    a->help = true;
    a->help_scroll = 0;
}

static void cm_quit(tui_app *a, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    a->quit = true;
}

const tui_cmd tui_cmds[] = {
    {"load", "FILE.gguf", "load a model (replaces the current one)", cm_load},
    {"gen", "[N]", "generate N tokens (default: set n=...)", cm_gen},
    {"step", "", "generate one token (key: space)", cm_step},
    {"run", "", "generate until paused (key: r)", cm_run},
    {"pause", "", "stop generating (keys: r, Ctrl-C)", cm_pause},
    {"reset", "", "clear the transcript and the context", cm_reset},
    {"set", "[KEY=VALUE...]", "sampler: temp top_k top_p min_p typical repeat_penalty "
                              "repeat_last_n freq_penalty presence_penalty seed order n",
     cm_engine},
    {"route", "SUB ...", "router: show reset topk K [L] temp T [L] ban|unban|force|unforce E [L] "
                         "scale E S [L] capacity CF [score] [devices=D] [rectify=ir|fr|both]",
     cm_engine},
    {"exit", "[SPEC]", "early exit: none entropy:T maxprob:P patience:N hash:F window:T:W depth:L",
     cm_engine},
    {"bricks", "...", "bricks (EMoE, merging, pruning)", cm_engine},
    {"export", "FILE", "save the session: .json .svg (heatmap) .html (report) .csv (stats)",
     cm_export},
    {"import", "FILE.json", "browse a saved session (no model needed)", cm_import},
    {"lua", "CODE", "run Lua code; an expression's value is shown (Ctrl-C stops it)", cm_lua},
    {"source", "FILE.lua [ARGS]", "run a Lua file (it may add commands, keys, panes)",
     cm_source},
    {"plugins", "", "list the plugins, their state and the Lua commands and keys", cm_plugins},
    {"pane", "[N|TITLE|close]", "list / show / hide Lua text panes (shown in the inspector's "
                                "place)", cm_pane},
    {"traceback", "", "the last Lua error with its traceback", cm_traceback},
    {"help", "", "this help (key: ?)", cm_help},
    {"quit", "", "leave the studio (key: q)", cm_quit},
};
const size_t tui_n_cmds = sizeof tui_cmds / sizeof tui_cmds[0];

const tui_key_help tui_keys_help[] = {
    {"space", "generate one token"},
    {"r", "run / pause generation"},
    {"<- ->  h l", "select the previous / next token (all panes follow)"},
    {"Home End", "first / last token (End follows new tokens)"},
    {"Tab S-Tab", "focus the next / previous pane"},
    {"z", "zoom the focused pane / unzoom"},
    {"PgUp PgDn", "scroll the focused pane (log, router, lens)"},
    {"m", "heatmap mode: selected token / cumulative / timeline"},
    {"[ ]", "heatmap timeline: previous / next layer"},
    {"i Enter", "type a prompt; Enter generates from it"},
    {":", "type a command (Tab completes, Up/Down history)"},
    {"Esc", "leave the command line / close help / back from a Lua pane"},
    {"Ctrl-C", "stop generation (not the program)"},
    {"Ctrl-L", "redraw the screen"},
    {"?", "this help"},
    {"q", "quit"},
};
const size_t tui_n_keys_help = sizeof tui_keys_help / sizeof tui_keys_help[0];

void tui_app_line(tui_app *a, const char *line)
{
    char *buf, *argv[32];
    int argc;
    while (*line == ' ')
        line++;
    if (line[0] != ':') {
        if (!*line || !cm_need_model(a, "prompt"))
            return;
        tui_worker_cancel(a->worker);
        tui_worker_post(a->worker, TUI_JOB_PROMPT, line,
                        a->doc.set.n_predict > 0 ? a->doc.set.n_predict : 32, 0, NULL);
        a->follow = true;
        return;
    }
    buf = strdup(line + 1);
    if (!buf)
        return;
    argc = tui_split_args(buf, argv, 32);
    if (argc > 0) {
        /* the raw text after the command's name (Lua code, plugin args) */
        const char *rest = line + 1;
        size_t i;
        while (*rest == ' ')
            rest++;
        while (*rest && *rest != ' ')
            rest++;
        while (*rest == ' ')
            rest++;
        a->cmd_rest = rest;
        for (i = 0; i < tui_n_cmds; i++)
            if (!strcmp(argv[0], tui_cmds[i].name)) {
                tui_cmds[i].fn(a, argc, argv);
                break;
            }
        /* then commands that Lua code registered (built-ins come first) */
        if (i == tui_n_cmds && !tui_lua_command(a, argv[0], rest))
            tui_log(a, true, "unknown command ':%s' (:help lists them)", argv[0]);
        a->cmd_rest = NULL;
    }
    free(buf);
}
