/*
 * ui.h - the interactive studio: terminal layer (term.c), worker thread
 * (worker.c), the application state and screen manager (screen.c), panes
 * (panes_text.c, panes_route.c), the readline command line (cmdline.c) and
 * the command table (commands.c). Only tui/ includes this (curses inside).
 */
#ifndef MOE_UI_H
#define MOE_UI_H

#ifndef NCURSES_WIDECHAR
#define NCURSES_WIDECHAR 1
#endif
#include <curses.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "studio.h"

/* ---- terminal (term.c) ------------------------------------------------- */

typedef enum {
    TUI_C_NORMAL,
    TUI_C_TITLE,
    TUI_C_TITLE_FOCUS,
    TUI_C_STATUS,
    TUI_C_PROMPT,   /* prompt tokens */
    TUI_C_TOK_A,    /* generated tokens alternate A/B to show boundaries */
    TUI_C_TOK_B,
    TUI_C_SELECTED,
    TUI_C_BAR,      /* selected-token bars */
    TUI_C_BAR_CUM,  /* cumulative bars */
    TUI_C_DIM,
    TUI_C_ERROR,
    TUI_C_OK,
    TUI_C_EXIT,     /* exit-layer marker */
    TUI_C_HEAT0, TUI_C_HEAT1, TUI_C_HEAT2, TUI_C_HEAT3,
    TUI_C_HEAT4, TUI_C_HEAT5, TUI_C_HEAT6, TUI_C_HEAT7,
    TUI_C_COUNT
} tui_color;

/* Colour depth in use: 256, 8 or 0 (monochrome). */
extern int tui_color_depth;
extern volatile sig_atomic_t tui_sig_int;  /* Ctrl-C: stop generation */
extern volatile sig_atomic_t tui_sig_term; /* SIGTERM/SIGHUP: quit */

/* Start curses (setlocale, colours, keypad, signal handlers, atexit);
 * false when stdin/stdout is not a terminal or TERM is unusable. */
bool tui_term_init(char *err, size_t errn);
/* Leave curses; idempotent, safe from atexit and crash handlers. */
void tui_term_restore(void);
attr_t tui_attr(tui_color c);
/* Read end of the self-pipe signal handlers write to (poll it). */
int tui_term_signal_fd(void);
void tui_term_drain_signal_fd(void);
/* Choose colours for a depth (256, 8, 0) without a terminal (tests). */
void tui_colors_setup(int depth);

/* ---- worker thread (worker.c) ----------------------------------------- */

typedef enum {
    TUI_JOB_LOAD,
    TUI_JOB_PROMPT, /* text, then n tokens */
    TUI_JOB_GEN,    /* n tokens (< 0: until paused) */
    TUI_JOB_RESET,
    TUI_JOB_CMD,    /* argv: set / route / exit / bricks */
    TUI_JOB_QUIT,
    TUI_JOB_COUNT
} tui_job_kind;

typedef enum {
    TUI_EV_TOKEN,
    TUI_EV_TURN,
    TUI_EV_LOG,
    TUI_EV_LOADED,
    TUI_EV_SETTINGS,
    TUI_EV_BUSY,
    TUI_EV_IDLE,
    TUI_EV_RESET,
    TUI_EV_COUNT
} tui_ev_kind;

typedef struct tui_event {
    tui_ev_kind kind;
    tui_tok *tok;        /* TOKEN (owned) */
    char *msg;           /* LOG, TURN, BUSY */
    bool error;          /* LOG */
    tui_meta meta;       /* LOADED */
    tui_dims dims;       /* LOADED */
    char **vocab;        /* LOADED */
    int32_t n_vocab;
    tui_settings set;    /* LOADED, SETTINGS */
    bool has_set;
    int32_t pos, n_ctx;  /* context use after the event */
    struct tui_event *next;
} tui_event;

typedef struct tui_job {
    tui_job_kind kind;
    char *text;
    int32_t n;
    int argc;
    char **argv;
    unsigned epoch;
    struct tui_job *next;
} tui_job;

typedef struct {
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tui_job *jobs;
    tui_event *ev_head, *ev_tail;
    atomic_uint epoch; /* bumped by cancel: older generation jobs stop */
    int pipe_r, pipe_w;
    tui_gen gen;       /* touched only by the worker thread once started */
} tui_worker;

bool tui_worker_start(tui_worker *w, int n_threads);
/* Quit and join; frees the engine objects and pending items. */
void tui_worker_stop(tui_worker *w);
/* Queue a job (text/argv copied). */
bool tui_worker_post(tui_worker *w, tui_job_kind kind, const char *text, int32_t n, int argc,
                     char **argv);
/* Stop a running generation and drop queued generation jobs. */
void tui_worker_cancel(tui_worker *w);
/* Take all pending events, oldest first (caller frees with tui_event_free). */
tui_event *tui_worker_take(tui_worker *w);
void tui_event_free(tui_event *e);

/* ---- application ------------------------------------------------------- */

#define TUI_LOG_LINES 200

typedef enum {
    TUI_HEAT_TOKEN,    /* router probabilities of the selected token */
    TUI_HEAT_CUM,      /* cumulative load */
    TUI_HEAT_TIMELINE, /* tokens x experts of one layer */
    TUI_HEAT_COUNT
} tui_heat_mode;

/* Plugin text panes (moe.ui.pane), progress bars (moe.ui.progress) and
 * plugin key bindings (lua_ui.c). */
#define TUI_LUA_PANES 16
#define TUI_LUA_BARS 4
#define TUI_LUA_KEYS 64

typedef struct {
    int id;          /* > 0 */
    char *title;
    char *text;      /* lines separated by '\n' */
    int scroll;
} tui_lua_pane;

typedef struct {
    char *label;     /* NULL: slot free */
    double frac;
    unsigned seq;    /* last update (the newest is shown first) */
} tui_lua_bar;

typedef struct {
    char *key, *help;
} tui_lua_keyhelp;

struct host;

typedef struct tui_app {
    tui_doc doc;
    tui_worker *worker;  /* NULL in a pure replay */
    bool model_loaded;   /* the worker holds a model */
    char *model_path;    /* its path */
    bool replay;         /* doc came from a file: browse only */
    bool busy;           /* the worker is generating */
    char *busy_what;
    int32_t sel;         /* selected record, -1 = none */
    bool follow;         /* selection follows new tokens */
    int focus;           /* tui_pane_id */
    int zoom;            /* tui_pane_id or -1 */
    bool help;
    int help_scroll;
    bool quit;
    bool dirty;
    tui_layout lay;
    WINDOW *win[TUI_PANE_COUNT];
    WINDOW *status_w, *cmd_w;
    int lines, cols;
    char *log[TUI_LOG_LINES];
    bool log_err[TUI_LOG_LINES];
    int log_n, log_head, log_scroll;
    tui_heat_mode heat_mode;
    int heat_layer;
    int32_t tr_top;      /* transcript first row shown */
    int scroll[TUI_PANE_COUNT];
    bool cmd_active;
    int32_t ctx_pos, n_ctx;
    /* Lua (lua_ui.c); all of it is used on the UI thread only */
    struct host *lua;    /* NULL: no Lua host (not owned) */
    const char *cmd_rest; /* while a command runs: the text after its name */
    unsigned doc_gen;    /* bumped whenever the document is replaced */
    tui_lua_pane lpane[TUI_LUA_PANES];
    int n_lpane, lpane_next_id;
    int lpane_show;      /* 1-based pane shown in the inspector's place, 0 = none */
    tui_lua_bar bar[TUI_LUA_BARS];
    unsigned bar_seq;
    double bar_drawn;    /* monotonic seconds of the last eager status redraw */
    tui_lua_keyhelp lkey[TUI_LUA_KEYS];
    int n_lkey;
    char *lua_error;     /* the last Lua error with its traceback */
} tui_app;

void tui_app_init(tui_app *a);
void tui_app_free(tui_app *a);
void tui_log(tui_app *a, bool error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Apply one worker event to the document and view state. */
void tui_app_event(tui_app *a, tui_event *e);
/* The selected record (NULL when none). */
const tui_tok *tui_app_selected(const tui_app *a);
void tui_app_select(tui_app *a, int32_t i);
/* Key handling in normal mode; returns false when the key is not bound. */
bool tui_app_key(tui_app *a, int key);
/* Run the interactive loop until quit; returns an exit status. */
int tui_app_run(tui_app *a);

/* Replace the document by a saved session (browse mode); false with a
 * reason in err (the current document is kept). */
bool tui_app_import(tui_app *a, const char *path, char *err, size_t errn);

/* ---- Lua (lua_ui.c): the host_ui callbacks of the studio ---------------
 * tui_lua_attach points the host's UI at the app (log pane, text panes in
 * the inspector's place, progress bars in the status bar, plugin keys) and
 * lets Ctrl-C interrupt Lua. Events reach Lua only through these calls,
 * made by the UI thread from the worker's queued records: the engine
 * objects themselves are never handed to Lua. */
void tui_lua_attach(tui_app *a, struct host *h);
/* Free the panes, bars and key list (the host is the caller's). */
void tui_lua_free(tui_app *a);
/* on_token / on_exit / on_route for a record just added to the document. */
void tui_lua_token(tui_app *a, const tui_tok *t);
/* on_step(what, i, info) and on_session(action, path). */
void tui_lua_step(tui_app *a, const char *what, int64_t i, const char *info);
void tui_lua_session(tui_app *a, const char *action, const char *path);
/* A key nobody else took: run the plugin binding of its name ("F7", "C-x",
 * "g"); false when none is bound. */
bool tui_lua_key(tui_app *a, int key, bool is_keycode);
/* Name of a key as plugins bind it; false for keys that have none. */
bool tui_lua_key_name(int key, bool is_keycode, char *buf, size_t n);
/* Run a command a plugin registered; false when there is none of that name
 * (errors of the command itself are logged, and it counts as found). */
bool tui_lua_command(tui_app *a, const char *name, const char *args);
int tui_lua_command_count(tui_app *a);
bool tui_lua_command_get(tui_app *a, int i, const char **name, const char **help);
/* :lua CODE, :source FILE [ARGS], :plugins, :pane [N|close], :traceback */
void tui_lua_eval(tui_app *a, const char *code);
void tui_lua_source(tui_app *a, int argc, char **argv);
void tui_lua_plugins(tui_app *a);
void tui_lua_pane_cmd(tui_app *a, int argc, char **argv);
void tui_lua_traceback(tui_app *a);
/* Text panes: open (or replace, by title) and show; set the text of id. */
int tui_lua_pane_open(tui_app *a, const char *title, const char *text);
void tui_lua_pane_set(tui_app *a, int id, const char *text);
void tui_lua_progress(tui_app *a, const char *label, double frac);
/* Scroll the shown pane by d lines (PgUp/PgDn on the inspector's place). */
void tui_lua_pane_scroll(tui_app *a, int d);
/* The shown text pane, drawn in the inspector's rectangle. */
void tui_lua_draw_pane(tui_app *a, WINDOW *w, int h, int wd);
/* Progress bars into the right end of the status line. */
void tui_lua_draw_bars(tui_app *a, WINDOW *w, int wd);

/* ---- panes (panes_*.c) ------------------------------------------------- */

typedef void (*tui_draw_fn)(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_transcript(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_inspector(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_log(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_router(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_heatmap(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_exit(tui_app *a, WINDOW *w, int h, int wd);
void tui_draw_status(tui_app *a, WINDOW *w, int wd);
/* Title line of a pane (focus highlighted). */
void tui_draw_title(tui_app *a, WINDOW *w, int pane, int wd, const char *extra);
/* Write a UTF-8 string clipped to max columns; returns columns written. */
int tui_put(WINDOW *w, const char *s, int max);

/* ---- command line (cmdline.c) and commands (commands.c) ---------------- */

void tui_cmdline_init(tui_app *a);
void tui_cmdline_shutdown(void);
/* Open the command line with initial text (":" for a command). */
void tui_cmdline_open(tui_app *a, const char *initial);
void tui_cmdline_close(tui_app *a);
/* Feed one key (wide char or KEY_*) to readline. */
void tui_cmdline_key(tui_app *a, int key, bool is_keycode);
void tui_cmdline_draw(tui_app *a);
/* Handle one entered line (":cmd args" or text to generate from). */
void tui_app_line(tui_app *a, const char *line);

typedef struct {
    const char *name;
    const char *args;
    const char *help;
    void (*fn)(tui_app *a, int argc, char **argv);
} tui_cmd;
extern const tui_cmd tui_cmds[];
extern const size_t tui_n_cmds;

typedef struct {
    const char *keys;
    const char *help;
} tui_key_help;
extern const tui_key_help tui_keys_help[];
extern const size_t tui_n_keys_help;

#endif
