/*
 * host.h - the embedded Lua 5.4 host of moe-studio: one Lua state with the
 * `moe` module, a protected-call helper with a traceback, a sandbox for
 * plugins (own _ENV each, text chunks only, no io/os unless the user's
 * config opts in), an instruction-count limit and a memory cap, plugin
 * loading, the event registry (on_token, on_route, on_exit, on_step,
 * on_session) and the studio's UI registry (commands, keys, panes, notify,
 * progress).
 *
 * Threading: a host and everything reached from it belong to one thread
 * (the studio's UI thread). Engine events from a worker are queued by the
 * studio and delivered with host_emit_* on that thread.
 *
 * Errors: nothing here raises into C or exits. Failures of Lua code are
 * reported through the log callback (host_ui.log; default: stderr) as one
 * message with a traceback and turned into a false/NULL return.
 *
 * Ownership: host_new returns a host the caller frees with host_free
 * (host_free(NULL) is a no-op). Strings returned by getters live until the
 * next call that changes the corresponding registry. Uses the public engine
 * header and Lua only; never tui/.
 */
#ifndef MOE_LUA_HOST_H
#define MOE_LUA_HOST_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lua.h>

#include "moe.h"

typedef struct host host;

typedef struct {
    /* true: the top-level state gets every standard library (scripts, the
     * REPL, :lua); false: the top level is sandboxed like a plugin. */
    bool trusted;
    /* Cap on the bytes the whole Lua heap may hold (0 = none), enforced
     * while Lua code runs (inside host_pcall; the host's own small
     * allocations between calls are never refused). Engine objects
     * (models, contexts) are not Lua heap and are not counted. */
    size_t mem_limit;
    /* Per protected call into plugin (sandboxed) code: instructions it may
     * run (0 = unlimited) and bytes by which it may grow the heap (0 =
     * unlimited). Exceeding either raises an error in that code. */
    int64_t plugin_instr_limit;
    size_t plugin_mem_limit;
    /* Plugins see io, os, require and the whole global table (the user's
     * config opts in with `plugins_unsafe = true`). */
    bool plugins_unsafe;
} host_params;

/* trusted, no heap cap, 50M instructions and 64 MiB per plugin call. */
host_params host_default_params(void);

host *host_new(const host_params *params);
void host_free(host *h);
/* The Lua state (for embedding code that wants to push its own values). */
lua_State *host_lua(host *h);
/* The host of a state created by host_new (NULL for any other state). */
host *host_from_lua(lua_State *L);

/* ---- the studio's side: callbacks the UI implements ------------------
 * Every member may be NULL. With no UI set (headless): log and notify
 * print to stderr / stdout, print() writes to stdout, a pane prints
 * "== title ==" and its text to stdout, progress is a no-op, sessions
 * fail with "nil, msg" (they need the studio); commands and
 * key bindings are still registered and can be run with host_run_command /
 * host_run_key (or moe.ui.run from Lua). */
typedef struct {
    void *ud;
    /* Errors and messages of the host and of Lua code (tracebacks, plugin
     * failures), one message per call (may contain newlines). */
    void (*log)(void *ud, moe_log_level level, const char *msg);
    /* print() from Lua: one line, without its newline. */
    void (*print)(void *ud, const char *line);
    /* moe.ui.notify(msg, level) */
    void (*notify)(void *ud, moe_log_level level, const char *msg);
    /* moe.ui.pane(title, text): open a text pane; returns its id (> 0), or
     * 0 when none could be opened. pane_set replaces its text. */
    int (*pane_open)(void *ud, const char *title, const char *text);
    void (*pane_set)(void *ud, int id, const char *text);
    /* moe.ui.progress(label, frac): 0..1, or < 0 when finished. */
    void (*progress)(void *ud, const char *label, double frac);
    /* A command or key binding was added (for completion, help, key maps). */
    void (*command_added)(void *ud, const char *name, const char *help);
    void (*key_bound)(void *ud, const char *key, const char *help);
    /* moe.session_export(path) / moe.session_import(path): the studio owns
     * session files; action is "export" or "import". Return true on
     * success, else false with a one-line reason in err. The host emits
     * on_session(action, path) after a success. */
    bool (*session)(void *ud, const char *action, const char *path, char *err,
                    size_t err_size);
} host_ui;

/* Copy the callbacks (NULL: back to headless behaviour). */
void host_set_ui(host *h, const host_ui *ui);
bool host_headless(const host *h);

/* ---- running code ----------------------------------------------------- */

/* Call the function below nargs arguments on the stack with a traceback
 * handler (lua_pcall semantics otherwise). On error the message with its
 * traceback is logged (prefixed with `what` when not NULL), the stack is
 * popped to below the function and the status is returned; nothing is
 * pushed. plugin: index of the plugin whose code this is (-1 = trusted
 * code); plugin code runs under the instruction limit and memory cap, and a
 * plugin whose code fails is disabled. */
int host_pcall(host *h, int nargs, int nresults, int plugin, const char *what);

/* Run a file as the top-level script with arg = {[0] = path, args...}
 * (also passed as `...`). Returns true when it ran without error. */
bool host_run_file(host *h, const char *path, int argc, char **argv);
/* Run a chunk of text. */
bool host_run_string(host *h, const char *code, const char *chunkname);
/* REPL/`:lua` evaluation: try `return <line>` first, then the line as a
 * statement; the results are converted with tostring and joined by tabs
 * into *out (malloc'd, caller frees; "" when there are none). On error
 * returns false and *out holds the message (also logged). out may be NULL. */
bool host_eval(host *h, const char *line, char **out);

/* Interrupt flag (e.g. set by a SIGINT handler; NULL = none): while it is
 * non-zero, trusted Lua code that runs raises "interrupted" within about a
 * thousand instructions. Plugin code is not interrupted (its instruction
 * limit stops it; an interrupt would disable it). The host only reads the
 * flag; the owner clears it. Lets the studio stop a runaway `:lua`. */
void host_set_interrupt(host *h, volatile sig_atomic_t *flag);

/* true while sandboxed plugin code runs (for callbacks that give access to
 * files, e.g. host_ui.session, and must refuse it to the sandbox). */
bool host_in_sandbox(const host *h);

/* true when code is an unfinished chunk (a REPL should read more lines). */
bool host_incomplete(host *h, const char *code);

/* ---- configuration and plugins ---------------------------------------- */

/* $XDG_CONFIG_HOME/moe-studio (or ~/.config/moe-studio) into buf. */
const char *host_config_dir(char *buf, size_t n);
/* Directory of the bundled plugins: $MOE_PLUGIN_DIR, else the installed
 * data directory, else plugins/ beside the executable. */
const char *host_bundled_plugin_dir(char *buf, size_t n);

/* Read the user's config (a Lua file run in an empty sandbox; it only sets
 * variables): plugins_unsafe (boolean), plugin_instructions (number),
 * plugin_memory_mb (number), plugins_disabled (list of names). A missing
 * file is not an error. Call before host_load_plugins. Returns false (and
 * logs) when the file exists but fails. */
bool host_load_config(host *h, const char *path);

/* Load every *.lua of dir (sorted by name) as a plugin: its own _ENV,
 * sandboxed unless plugins_unsafe, limits on. A plugin that fails to load is
 * kept in the list, disabled, with its error logged. A missing dir is not
 * an error. Returns the number of plugins loaded and enabled. */
int host_load_plugins(host *h, const char *dir);

typedef struct {
    const char *name;  /* file name without .lua */
    const char *path;
    bool enabled;
    const char *error; /* why it was disabled ("" if enabled) */
} host_plugin_info;

int host_plugin_count(const host *h);
bool host_plugin_get(const host *h, int i, host_plugin_info *out);
/* Disable a plugin: its handlers, commands and keys stop running. */
void host_plugin_disable(host *h, int i, const char *why);

/* ---- commands and keys registered from Lua ---------------------------- */

int host_command_count(host *h);
/* Name and help of command i (0-based); false when out of range. */
bool host_command_get(host *h, int i, const char **name, const char **help);
/* Run a command with its argument string (everything after the name).
 * Returns false when it is unknown or failed (logged). */
bool host_run_command(host *h, const char *name, const char *args);
/* Run the handler bound to a key name ("F5", "C-x", "g"); false when no
 * handler is bound (or it failed). */
bool host_run_key(host *h, const char *key);

/* ---- events -----------------------------------------------------------
 * Handlers registered with moe.on(event, fn); several per event, called in
 * registration order; a failing handler is reported (and its plugin
 * disabled) and the others still run. Each returns the number of handlers
 * that ran without error. */
typedef enum {
    HOST_EV_TOKEN,
    HOST_EV_ROUTE,
    HOST_EV_EXIT,
    HOST_EV_STEP,
    HOST_EV_SESSION,
    HOST_EV_COUNT
} host_event;

const char *host_event_name(host_event ev);
bool host_has_handlers(host *h, host_event ev);
/* on_token(id, piece, pos) */
int host_emit_token(host *h, const moe_model *model, int32_t id, int32_t pos);
/* on_token(id, piece, pos) with the piece given as text (len bytes): for
 * hosts that must not touch the model (the studio passes the token record's
 * display text from its UI thread while the worker owns the model). */
int host_emit_token_text(host *h, int32_t id, const char *piece, size_t len, int32_t pos);
/* on_route(entry): entry is the table ctx:trace_get() gives */
int host_emit_route(host *h, const moe_trace_dims *dims, const moe_trace_token *tok);
/* on_exit(pos, token, exit_layer, n_layer) */
int host_emit_exit(host *h, int32_t pos, int32_t token, int32_t exit_layer, int32_t n_layer);
/* on_step(what, i, info): info is a string (may be NULL) */
int host_emit_step(host *h, const char *what, int64_t i, const char *info);
/* on_session(action, path): action "export" / "import" */
int host_emit_session(host *h, const char *action, const char *path);

#endif
