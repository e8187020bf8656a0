/*
 * cli.h - the headless subcommands of moe-studio (info, run, tokenize, eval,
 * bench, synth) and the helpers they share: one-line error reporting, option
 * parsing, model loading, tokenizing, escaping and timing.
 *
 * Conventions: every command takes (argc, argv) with argv[0] the command name,
 * parses with getopt_long, prints results to stdout and reports a failure as
 * exactly one line "moe-studio <cmd>: <problem>" on stderr. Exit status:
 * 0 success, 1 runtime failure, 2 usage error.
 */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "moe.h"

enum { CLI_OK = 0, CLI_EXIT_FAIL = 1, CLI_EXIT_USAGE = 2 };

/* ---- subcommands ---- */
int cmd_info(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_route_stats(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_exit(int argc, char **argv);
/* the interactive studio and its sessions (cmd_studio.c) */
int cmd_studio(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_export(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_emoe(int argc, char **argv);
int cmd_bricks(int argc, char **argv);
int cmd_script(int argc, char **argv); /* cmd_script.c: headless Lua */
int cmd_lua(int argc, char **argv);

/* ---- early exit (cmd_exit.c), for any command with --exit SPEC ---- */
typedef struct {
    double ppl;             /* exp(mean negative log-likelihood) */
    int64_t n_pred;         /* predictions scored */
    int64_t n_tokens;       /* tokens evaluated */
    double mean_exit_layer; /* 0-based; n_layer - 1 = all layers */
    double saved;           /* fraction of layer computations skipped */
    double seconds;         /* wall time of the evaluation */
} cli_exit_result;
/* Set the context's exit criterion from a spec and reset its counters;
 * prints the one-line error and returns false on a bad spec. */
bool cli_exit_setup(const char *cmd, moe_ctx *ctx, const char *spec);
/* Perplexity of toks[0..n) in independent chunks of `chunk` tokens (<= 1:
 * the context length) with the context's current criterion, plus its exit
 * counters; one_by_one: one decode call per token (as in generation)
 * instead of one batch per chunk. Prints the error, false on failure. */
bool cli_exit_perplexity(const char *cmd, moe_ctx *ctx, const int32_t *toks, int32_t n,
                         int32_t chunk, bool one_by_one, cli_exit_result *res);
/* One line: spec, perplexity, mean exit layer, layers saved. */
void cli_exit_report(FILE *f, const char *spec, const cli_exit_result *r);

typedef struct {
    double plain_tok_s, spec_tok_s; /* greedy generation, medians */
    double speedup;                 /* spec_tok_s / plain_tok_s */
    double accept_rate;             /* accepted / drafted */
    double tokens_per_step;         /* tokens per verification pass */
    int64_t drafted, accepted, steps;
    bool identical;                 /* speculative tokens == plain tokens */
} cli_spec_bench_result;
/* Greedy generation of n_gen tokens from BOS, plain then with speculation,
 * reps times, in ctx (n_ctx > n_gen). Prints the error, false on failure. */
bool cli_spec_bench(const char *cmd, moe_ctx *ctx, const moe_spec_params *sp, int n_gen,
                    int reps, cli_spec_bench_result *r);

/* ---- errors ---- */
/* Print "moe-studio <cmd>: <message>\n" to stderr (newlines in the message
 * become spaces, so it stays one line) and return code. */
int cli_fail(const char *cmd, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Same, with ": <status>: <moe_last_error()>" appended; returns CLI_EXIT_FAIL. */
int cli_fail_engine(const char *cmd, moe_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Report what getopt_long returned for a bad option ('?' or ':') as one line
 * naming the option; returns CLI_EXIT_USAGE. Call with opterr = 0 and an
 * optstring starting with ':'. */
int cli_bad_option(const char *cmd, int c, char **argv);
/* Reset getopt for a fresh parse of a subcommand's argv. */
void cli_getopt_reset(void);

/* ---- option values (print the one-line error themselves) ---- */
bool cli_parse_int(const char *cmd, const char *opt, const char *s,
                   long min, long max, int *out);
bool cli_parse_u64(const char *cmd, const char *opt, const char *s,
                   uint64_t *out);
bool cli_parse_float(const char *cmd, const char *opt, const char *s,
                     double min, double max, float *out);
/* "L:" or "*:" at *s -> *layer (L in [0, max], -1 for '*'); advances *s
 * past the ':'. Prints nothing; false when malformed. */
bool cli_parse_layer_prefix(const char **s, int32_t *layer, long max);

/* ---- files and models ---- */
/* Read a whole file into a NUL-terminated malloc'd buffer (caller frees).
 * Prints the error and returns NULL on failure. */
char *cli_read_file(const char *cmd, const char *path, size_t *len);
/* Load a model with n_threads (<= 0: engine default). Prints the error
 * (naming the path and the engine's detail) and returns NULL on failure. */
moe_model *cli_load_model(const char *cmd, const char *path, int n_threads);
/* As cli_load_model with an explicit load mode (cli_load_model takes it
 * from MOE_LOAD: auto, mmap or copy; auto when unset). */
moe_model *cli_load_model_as(const char *cmd, const char *path, int n_threads,
                             moe_load_mode load);
/* "auto", "mmap" or "copy" to *out; false (with a one-line error naming
 * what, e.g. "--load" or "MOE_LOAD") for anything else. */
bool cli_parse_load(const char *cmd, const char *what, const char *s, moe_load_mode *out);
/* "reference", "batch" or "token" (moe_order) to *out; false, with a
 * one-line error, for anything else. */
bool cli_parse_order(const char *cmd, const char *s, moe_order *out);
/* The load mode MOE_LOAD asks for (auto when unset or empty); false, with
 * the error printed, when it names none. */
bool cli_env_load(const char *cmd, moe_load_mode *out);
/* Tokenize len bytes; *ids is malloc'd (caller frees, may be non-NULL even
 * when *n == 0). Prints the error and returns false on failure. */
bool cli_tokenize(const char *cmd, const moe_model *model, const char *text,
                  size_t len, bool add_bos, bool parse_special,
                  int32_t **ids, int32_t *n);
/* true when the tokenizer prefixes text with a space (SentencePiece style),
 * so the first piece after BOS carries a space that detokenizing drops. */
bool cli_model_adds_space_prefix(const moe_model *model);

/* ---- output ---- */
/* Write bytes as a single-quoted, escaped string: printable ASCII and valid
 * UTF-8 as is; \n \t \r \\ \' and \xNN for everything else. */
void cli_write_escaped(FILE *f, const char *s, size_t len);
/* Lower-case hex of len bytes into a malloc'd string (caller frees). */
char *cli_hex(const char *s, size_t len);
/* Monotonic time in seconds. */
double cli_now(void);
/* Median of n doubles (sorts v in place); 0 for n == 0. */
double cli_median(double *v, int n);

/* ---- the embedded default model (models/kjv-moe.gguf) ---- */
/* Path of the default model, the first that exists of: $MOE_DEFAULT_MODEL,
 * <dir of the running binary>/models/kjv-moe.gguf (build tree), the source
 * tree's models/ (VPATH builds), $(pkgdatadir)/models/kjv-moe.gguf
 * (installed). NULL when none exists. The string is static. */
const char *cli_default_model_path(void);

#endif
