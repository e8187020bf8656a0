/*
 * studio.h - the data of the moe-studio workbench that needs no terminal:
 * per-token records (tui_tok), the session document (tui_doc), session files
 * (JSON, SVG, HTML, CSV), the generator that drives the engine (tui_gen) and
 * the worker thread around it, the pane layout and widget helpers.
 *
 * Ownership: a tui_doc owns its records, turns, vocabulary table and model
 * metadata strings; tui_doc_free releases them. Records handed to
 * tui_doc_append become the document's. Nothing here includes curses.
 */
#ifndef MOE_STUDIO_H
#define MOE_STUDIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moe.h"

/* The document model and its JSON live in the engine (moe.h, "sessions",
 * engine/session.c); the studio uses them under its own names. */
#define TUI_SESSION_FORMAT MOE_SESSION_FORMAT
#define TUI_SESSION_VERSION MOE_SESSION_VERSION
#define TUI_N_CAND MOE_SESSION_N_CAND /* candidates kept per sampler stage */

/* ---- one token ------------------------------------------------------- */

typedef moe_session_cand tui_cand;
typedef moe_session_tok tui_tok;
typedef moe_session_dims tui_dims;

/* A record with its trace arrays allocated (zeroed, sel = -1) when traced. */
tui_tok *tui_tok_new(const tui_dims *d, bool traced);
void tui_tok_free(tui_tok *t);
/* Copy an engine trace entry into the record's arrays (dims must match). */
void tui_tok_set_trace(tui_tok *t, const tui_dims *d, const moe_trace_token *e);

/* ---- the document ---------------------------------------------------- */

typedef moe_session_meta tui_meta;
typedef moe_session_turn tui_turn;
typedef moe_session_settings tui_settings;
typedef moe_session tui_doc;

void tui_doc_init(tui_doc *d);
void tui_doc_free(tui_doc *d);
/* Drop tokens and turns (keeps model, settings and vocabulary). */
void tui_doc_clear(tui_doc *d);
void tui_settings_free(tui_settings *s);
void tui_settings_default(tui_settings *s);
/* Deep copy into dst (uninitialised); false on out of memory. */
bool tui_settings_copy(tui_settings *dst, const tui_settings *src);
void tui_meta_free(tui_meta *m);
/* Take ownership of t; false when out of memory (t freed). */
bool tui_doc_append(tui_doc *d, tui_tok *t);
/* Start a turn at the next record; false on out of memory. */
bool tui_doc_begin_turn(tui_doc *d, const char *prompt);
/* Display text of a token id ("#id" written to buf when unknown). */
const char *tui_doc_piece(const tui_doc *d, int32_t id, char *buf, size_t n);
/* Take a vocabulary (array of n malloc'd strings), freeing the old one. */
void tui_doc_set_vocab(tui_doc *d, char **vocab, int32_t n);
void tui_vocab_free(char **v, int32_t n);
bool tui_doc_set_route(tui_doc *d, char **route, int32_t n);

/* Aggregates of the records. load: [n_layer][n_expert] count of selections
 * over traced records (gen_only: sampled records only). */
void tui_doc_load(const tui_doc *d, bool gen_only, int64_t *load);
typedef moe_session_stats tui_stats;
void tui_doc_stats(const tui_doc *d, tui_stats *s);

/* Sanitize raw token bytes: valid UTF-8 kept except C0 controls and DEL,
 * which (like invalid bytes) become the 4 characters \xNN; '\n' and '\t'
 * kept. Returns a malloc'd string. */
char *tui_sanitize(const char *s, size_t len);

/* ---- session files (session.c, export_svg.c, export_html.c) ------------ */

/* Write the document as JSON (atomic: temp file + rename). */
bool tui_session_save(const tui_doc *d, const char *path, char *err, size_t errn);
/* The JSON text (malloc'd), or NULL on out of memory. */
char *tui_session_json(const tui_doc *d);
/* Load a session file into d (initialised, empty); d->has_model is false. */
bool tui_session_load(tui_doc *d, const char *path, char *err, size_t errn);
bool tui_session_parse(tui_doc *d, const char *json, char *err, size_t errn);
bool tui_export_csv(const tui_doc *d, const char *path, char *err, size_t errn);
bool tui_export_svg(const tui_doc *d, const char *path, char *err, size_t errn);
bool tui_export_html(const tui_doc *d, const char *path, char *err, size_t errn);
/* By the extension of path: .json .csv .svg .html/.htm. */
bool tui_export_any(const tui_doc *d, const char *path, char *err, size_t errn);
/* Write len bytes to path atomically (temp in the same directory, fsync,
 * rename); an existing file is replaced only when all went well. */
bool tui_write_atomic(const char *path, const char *data, size_t len, char *err,
                      size_t errn);
/* SVG of the heatmap (cumulative load and mean probability) as a string. */
char *tui_svg_heatmap(const tui_doc *d);
/* Lower-case hex SHA-256 of a file into out[65]; false on I/O error. */

/* ---- the generator (gen.c): engine state used by the worker thread and by
 * the headless export; only one thread may use a tui_gen at a time. ---- */

typedef void (*tui_tok_fn)(tui_tok *t, void *ud); /* takes ownership */

typedef struct {
    moe_model *model;
    moe_ctx *ctx;
    moe_sampler *smp;
    tui_settings set;    /* settings in effect (copied into documents) */
    tui_dims dims;
    int n_threads;
    bool have_logits;    /* the context holds logits for the next token */
    moe_candidate *cbuf; /* [TUI_N_CAND] */
    float *lp;           /* [n_vocab] scratch */
} tui_gen;

void tui_gen_init(tui_gen *g);
void tui_gen_free(tui_gen *g);
/* Load a model and make its context (replacing any), with tracing on. */
bool tui_gen_load(tui_gen *g, const char *path, char *err, size_t errn);
/* Metadata (with the file's SHA-256) and the display vocabulary. */
bool tui_gen_meta(const tui_gen *g, tui_meta *m);
char **tui_gen_vocab(const tui_gen *g, int32_t *n);
/* Evaluate text (BOS first when the context is empty and the model says
 * so); each prompt token goes to fn. */
bool tui_gen_prompt(tui_gen *g, const char *text, tui_tok_fn fn, void *ud, char *err,
                    size_t errn);
/* Sample and evaluate one token (from BOS when nothing was evaluated).
 * *done is set at end of generation or a full context. */
bool tui_gen_step(tui_gen *g, tui_tok_fn fn, void *ud, bool *done, char *err, size_t errn);
/* Forget the KV cache, trace and sampler history. */
void tui_gen_reset(tui_gen *g);
/* Forget the recorded route commands (not the engine's steering). */
void tui_gen_clear_route(tui_gen *g);
/* Engine commands (set, route, exit, bricks): run argv, write a one-line
 * result to msg; false on error. */
bool tui_gen_command(tui_gen *g, int argc, char **argv, char *msg, size_t n);

/* ---- layout and widget logic (layout.c) ------------------------------- */

typedef enum {
    TUI_PANE_TRANSCRIPT,
    TUI_PANE_ROUTER,
    TUI_PANE_HEATMAP,
    TUI_PANE_EXIT,
    TUI_PANE_INSPECTOR,
    TUI_PANE_LOG,
    TUI_PANE_COUNT
} tui_pane_id;

typedef struct {
    int y, x, h, w;
} tui_rect;

typedef struct {
    tui_rect status, cmd;
    tui_rect pane[TUI_PANE_COUNT]; /* h == 0: hidden */
    bool too_small;
} tui_layout;

#define TUI_MIN_COLS 60
#define TUI_MIN_LINES 16

const char *tui_pane_name(tui_pane_id p);
/* zoom: a pane id to give the whole pane area, or -1. */
void tui_layout_compute(int lines, int cols, int zoom, tui_layout *out);

/* Cells (0..width) a bar of value v in [0, vmax] fills, rounded. */
int tui_bar_cells(double v, double vmax, int width);
/* Heat level 0..levels-1 of v in [0, vmax] (0 only for v <= 0). */
int tui_heat_level(double v, double vmax, int levels);
/* Density character of a heat level out of 8 (" .:-=+*#"). */
char tui_heat_char(int level);

/* Transcript flow: where each token goes in a pane of width columns. */
typedef struct {
    int32_t row, col, width; /* width in columns (>= 1) */
} tui_place;
/* Display form of a token text: '\n' -> "\u21b5" (newline after it),
 * '\t' -> "\u2192". Writes to buf; returns true when a line break follows. */
bool tui_tok_display(const char *text, char *buf, size_t n);
/* Display columns of a UTF-8 string (wcwidth; invalid = 1). */
int tui_str_width(const char *s);
/* Fill place[0..n_tok) and return the number of rows. */
int32_t tui_flow(const tui_doc *d, int width, tui_place *place);
/* First row to show so that row sel_row is visible in h rows. */
int32_t tui_scroll_to(int32_t top, int32_t sel_row, int32_t h);

/* Command-line words: split a line by spaces, honouring "double quotes";
 * returns argc (<= max), words point into buf (modified). */
int tui_split_args(char *buf, char **argv, int max);

#endif
