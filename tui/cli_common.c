/*
 * cli_common.c - helpers shared by the headless subcommands: one-line error
 * reporting, getopt plumbing, number parsing, file reading, model loading,
 * tokenizing, escaping, timing. Uses the public engine API (moe.h) only.
 * Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

/* ---- errors ----------------------------------------------------------- */

static void cli_vprint_line(const char *cmd, const char *fmt, va_list ap,
                            const char *tail)
{
    char msg[1024];
    vsnprintf(msg, sizeof msg, fmt, ap);
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    fprintf(stderr, "moe-studio %s: %s%s\n", cmd, msg, tail ? tail : "");
    fflush(stderr);
}

int cli_fail(const char *cmd, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli_vprint_line(cmd, fmt, ap, NULL);
    va_end(ap);
    return code;
}

int cli_fail_engine(const char *cmd, moe_status st, const char *fmt, ...)
{
    char tail[768];
    const char *detail = moe_last_error();
    va_list ap;
    if (detail && *detail)
        snprintf(tail, sizeof tail, ": %s: %s", moe_strerror(st), detail);
    else
        snprintf(tail, sizeof tail, ": %s", moe_strerror(st));
    for (char *p = tail; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    va_start(ap, fmt);
    cli_vprint_line(cmd, fmt, ap, tail);
    va_end(ap);
    return CLI_EXIT_FAIL;
}

int cli_bad_option(const char *cmd, int c, char **argv)
{
    const char *arg = optind > 0 ? argv[optind - 1] : "";
    /* A long option is named by its text, a short one by optopt. */
    bool is_short = optopt > 0 && optopt < 256 && strncmp(arg, "--", 2) != 0;
    if (c == ':') {
        if (is_short)
            return cli_fail(cmd, CLI_EXIT_USAGE, "option -%c needs a value", optopt);
        return cli_fail(cmd, CLI_EXIT_USAGE, "option '%s' needs a value", arg);
    }
    if (is_short)
        return cli_fail(cmd, CLI_EXIT_USAGE,
                        "unknown option -%c (try 'moe-studio %s --help')",
                        optopt, cmd);
    return cli_fail(cmd, CLI_EXIT_USAGE,
                    "unknown option '%s' (try 'moe-studio %s --help')", arg, cmd);
}

void cli_getopt_reset(void)
{
    optind = 0; /* GNU: full re-initialisation */
    opterr = 0;
}

/* ---- option values ---------------------------------------------------- */

bool cli_parse_int(const char *cmd, const char *opt, const char *s,
                   long min, long max, int *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end) {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: '%s' is not an integer", opt, s);
        return false;
    }
    if (v < min || v > max || v < INT_MIN || v > INT_MAX) {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: %ld is out of range [%ld, %ld]",
                 opt, v, min, max);
        return false;
    }
    *out = (int)v;
    return true;
}

bool cli_parse_u64(const char *cmd, const char *opt, const char *s,
                   uint64_t *out)
{
    char *end;
    unsigned long long v;
    errno = 0;
    if (*s == '-') {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: '%s' must not be negative", opt, s);
        return false;
    }
    v = strtoull(s, &end, 0);
    if (errno || end == s || *end) {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: '%s' is not an unsigned integer", opt, s);
        return false;
    }
    *out = (uint64_t)v;
    return true;
}

bool cli_parse_float(const char *cmd, const char *opt, const char *s,
                     double min, double max, float *out)
{
    char *end;
    double v;
    errno = 0;
    v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: '%s' is not a number", opt, s);
        return false;
    }
    if (v < min || v > max) {
        cli_fail(cmd, CLI_EXIT_USAGE, "%s: %g is out of range [%g, %g]",
                 opt, v, min, max);
        return false;
    }
    *out = (float)v;
    return true;
}

/* ---- files and models ------------------------------------------------- */

bool cli_parse_layer_prefix(const char **s, int32_t *layer, long max)
{
    char *end;
    long v;
    if (**s == '*') {
        *layer = -1;
        (*s)++;
    } else {
        v = strtol(*s, &end, 10);
        if (end == *s || v < 0 || v > max)
            return false;
        *layer = (int32_t)v;
        *s = end;
    }
    if (**s != ':')
        return false;
    (*s)++;
    return true;
}

char *cli_read_file(const char *cmd, const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL, *nb;
    size_t n = 0, cap = 0, got;
    if (!f) {
        cli_fail(cmd, CLI_EXIT_FAIL, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 65536;
            nb = realloc(buf, cap + 1);
            if (!nb) {
                cli_fail(cmd, CLI_EXIT_FAIL, "out of memory reading '%s'", path);
                goto fail;
            }
            buf = nb;
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        cli_fail(cmd, CLI_EXIT_FAIL, "cannot read '%s': %s", path, strerror(errno));
        goto fail;
    }
    fclose(f);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
fail:
    fclose(f);
    free(buf);
    return NULL;
}

bool cli_parse_load(const char *cmd, const char *what, const char *s, moe_load_mode *out)
{
    static const char *const names[] = {"auto", "mmap", "copy"};
    for (int i = 0; i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (moe_load_mode)i;
            return true;
        }
    cli_fail(cmd, CLI_EXIT_USAGE, "%s: unknown load mode '%s' (auto, mmap or copy)", what, s);
    return false;
}

bool cli_parse_order(const char *cmd, const char *s, moe_order *out)
{
    static const char *const names[] = {"reference", "batch", "token"};
    for (int i = 0; i < 3; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = (moe_order)i;
            return true;
        }
    cli_fail(cmd, CLI_EXIT_USAGE, "--order: unknown summation order '%s' (reference, batch or token)",
             s);
    return false;
}

bool cli_env_load(const char *cmd, moe_load_mode *out)
{
    const char *env = getenv("MOE_LOAD");
    *out = MOE_LOAD_AUTO;
    return !env || !*env || cli_parse_load(cmd, "MOE_LOAD", env, out);
}

moe_model *cli_load_model(const char *cmd, const char *path, int n_threads)
{
    moe_load_mode load;
    if (!cli_env_load(cmd, &load))
        return NULL;
    return cli_load_model_as(cmd, path, n_threads, load);
}

moe_model *cli_load_model_as(const char *cmd, const char *path, int n_threads,
                             moe_load_mode load)
{
    moe_model_params mp = moe_model_default_params();
    moe_model *model = NULL;
    moe_status st;
    mp.load = load;
    if (n_threads > 0)
        mp.n_threads = n_threads;
    st = moe_model_load(path, &mp, &model);
    if (st != MOE_OK) {
        cli_fail_engine(cmd, st, "cannot load '%s'", path);
        moe_model_free(model);
        return NULL;
    }
    return model;
}

bool cli_tokenize(const char *cmd, const moe_model *model, const char *text,
                  size_t len, bool add_bos, bool parse_special,
                  int32_t **ids, int32_t *n)
{
    int32_t cap, r;
    int32_t *buf;
    size_t want = len + 8;
    *ids = NULL;
    *n = 0;
    if (want > INT32_MAX / 2) {
        cli_fail(cmd, CLI_EXIT_FAIL, "text too long to tokenize (%zu bytes)", len);
        return false;
    }
    cap = (int32_t)want;
    for (int attempt = 0; attempt < 2; attempt++) {
        buf = malloc((size_t)cap * sizeof *buf);
        if (!buf) {
            cli_fail(cmd, CLI_EXIT_FAIL, "out of memory tokenizing");
            return false;
        }
        r = moe_tokenize(model, text, len, buf, cap, add_bos, parse_special);
        if (r == INT32_MIN) {
            free(buf);
            cli_fail(cmd, CLI_EXIT_FAIL, "cannot tokenize: %s",
                     *moe_last_error() ? moe_last_error() : "tokenizer error");
            return false;
        }
        if (r >= 0) {
            *ids = buf;
            *n = r;
            return true;
        }
        free(buf);
        cap = -r;
    }
    cli_fail(cmd, CLI_EXIT_FAIL, "tokenizer size query was inconsistent");
    return false;
}

bool cli_model_adds_space_prefix(const moe_model *model)
{
    int32_t ids[8];
    size_t len = 0;
    const char *piece;
    int32_t n = moe_tokenize(model, "a", 1, ids, 8, false, false);
    if (n < 1)
        return false;
    piece = moe_token_piece(model, ids[0], &len);
    return piece && len > 0 && piece[0] == ' ';
}

/* ---- output ----------------------------------------------------------- */

/* Length of a valid UTF-8 sequence starting at s (at most n bytes), or 0. */
static size_t cli_utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF) {
        len = 2;
        cp = s[0] & 0x1F;
    } else if (s[0] >= 0xE0 && s[0] <= 0xEF) {
        len = 3;
        cp = s[0] & 0x0F;
    } else if (s[0] >= 0xF0 && s[0] <= 0xF4) {
        len = 4;
        cp = s[0] & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
        return 0;
    return len;
}

void cli_write_escaped(FILE *f, const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    fputc('\'', f);
    while (i < len) {
        unsigned char c = u[i];
        size_t ul;
        switch (c) {
        case '\n': fputs("\\n", f); i++; continue;
        case '\t': fputs("\\t", f); i++; continue;
        case '\r': fputs("\\r", f); i++; continue;
        case '\\': fputs("\\\\", f); i++; continue;
        case '\'': fputs("\\'", f); i++; continue;
        default: break;
        }
        if (c >= 0x20 && c < 0x7F) {
            fputc(c, f);
            i++;
        } else if (c >= 0x80 && (ul = cli_utf8_len(u + i, len - i)) > 0) {
            fwrite(u + i, 1, ul, f);
            i += ul;
        } else {
            fprintf(f, "\\x%02x", c);
            i++;
        }
    }
    fputc('\'', f);
}

char *cli_hex(const char *s, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    char *out = malloc(len * 2 + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        out[2 * i] = digits[c >> 4];
        out[2 * i + 1] = digits[c & 15];
    }
    out[len * 2] = '\0';
    return out;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cli_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double cli_median(double *v, int n)
{
    if (n <= 0)
        return 0.0;
    qsort(v, (size_t)n, sizeof *v, cli_cmp_double);
    if (n % 2)
        return v[n / 2];
    return 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- the embedded default model ----------------------------------------- */

#ifndef MOE_PKGDATADIR
#define MOE_PKGDATADIR "/usr/local/share/moe-studio"
#endif
#ifndef MOE_TOP_SRCDIR
#define MOE_TOP_SRCDIR "."
#endif
#define CLI_DEFAULT_MODEL "kjv-moe.gguf"

static bool cli_file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    fclose(f);
    return true;
}

const char *cli_default_model_path(void)
{
    static char buf[4096];
    const char *env = getenv("MOE_DEFAULT_MODEL");
    char exe[4096];
    ssize_t n;
    if (env && *env && cli_file_exists(env)) {
        snprintf(buf, sizeof buf, "%s", env);
        return buf;
    }
    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        char *slash;
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if (snprintf(buf, sizeof buf, "%s/models/" CLI_DEFAULT_MODEL, exe) <
                    (int)sizeof buf && cli_file_exists(buf))
                return buf;
        }
    }
    snprintf(buf, sizeof buf, "%s/models/" CLI_DEFAULT_MODEL, MOE_TOP_SRCDIR);
    if (cli_file_exists(buf))
        return buf;
    snprintf(buf, sizeof buf, "%s/models/" CLI_DEFAULT_MODEL, MOE_PKGDATADIR);
    if (cli_file_exists(buf))
        return buf;
    return NULL;
}
