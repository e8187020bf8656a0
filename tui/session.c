/*
 * session.c - session files of the studio: the JSON schema of
 * docs/session-schema.md and the atomic writer are the engine's
 * (engine/session.c; wrapped here with the studio's error buffers), the CSV
 * of statistics and dispatch of exports by file extension are here. No
 * curses.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "studio.h"

static void ses_err(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void ses_err(char *err, size_t n, const char *fmt, ...)
{
    va_list ap;
    if (!err || !n)
        return;
    va_start(ap, fmt);
    vsnprintf(err, n, fmt, ap);
    va_end(ap);
}

/* The engine's detail of a failure into err; returns false. */
static bool ses_fail(char *err, size_t n)
{
    ses_err(err, n, "%s", moe_last_error());
    return false;
}

bool tui_write_atomic(const char *path, const char *data, size_t len, char *err,
                      size_t errn)
{
    return moe_write_atomic(path, data, len) == MOE_OK || ses_fail(err, errn);
}

char *tui_session_json(const tui_doc *d)
{
    return moe_session_json(d);
}

bool tui_session_save(const tui_doc *d, const char *path, char *err, size_t errn)
{
    return moe_session_write(d, path) == MOE_OK || ses_fail(err, errn);
}

bool tui_session_parse(tui_doc *d, const char *json, char *err, size_t errn)
{
    return moe_session_parse(d, json) == MOE_OK || ses_fail(err, errn);
}

bool tui_session_load(tui_doc *d, const char *path, char *err, size_t errn)
{
    return moe_session_read(d, path) == MOE_OK || ses_fail(err, errn);
}

/* ---- CSV and dispatch by extension ------------------------------------ */

bool tui_export_csv(const tui_doc *d, const char *path, char *err, size_t errn)
{
    const tui_dims *dm = &d->dims;
    size_t ne = (size_t)dm->n_layer * (size_t)(dm->n_expert > 0 ? dm->n_expert : 0);
    int64_t *load = calloc(ne ? ne : 1, sizeof *load), *gload = calloc(ne ? ne : 1, sizeof *gload);
    double *psum = calloc(ne ? ne : 1, sizeof *psum);
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    int32_t n_traced = 0;
    bool ok;
    if (!load || !gload || !psum || !m) {
        ses_err(err, errn, "out of memory");
        ok = false;
        goto out;
    }
    tui_doc_load(d, false, load);
    tui_doc_load(d, true, gload);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        if (!t->traced)
            continue;
        n_traced++;
        for (size_t k = 0; k < ne; k++)
            psum[k] += isfinite(t->probs[k]) ? t->probs[k] : 0;
    }
    fprintf(m, "layer,expert,load,load_gen,load_frac,mean_prob\n");
    for (int32_t il = 0; il < dm->n_layer; il++) {
        int64_t tot = 0;
        for (int32_t e = 0; e < dm->n_expert; e++)
            tot += load[(size_t)il * (size_t)dm->n_expert + (size_t)e];
        for (int32_t e = 0; e < dm->n_expert; e++) {
            size_t k = (size_t)il * (size_t)dm->n_expert + (size_t)e;
            fprintf(m, "%d,%d,%lld,%lld,%.6f,%.6f\n", (int)il, (int)e, (long long)load[k],
                    (long long)gload[k], tot ? (double)load[k] / (double)tot : 0.0,
                    n_traced ? psum[k] / n_traced : 0.0);
        }
    }
    if (fclose(m) != 0) {
        m = NULL;
        ses_err(err, errn, "out of memory");
        ok = false;
        goto out;
    }
    m = NULL;
    ok = tui_write_atomic(path, buf, len, err, errn);
out:
    if (m)
        fclose(m);
    free(buf);
    free(load);
    free(gload);
    free(psum);
    return ok;
}

static bool ses_has_ext(const char *path, const char *ext)
{
    size_t pl = strlen(path), el = strlen(ext);
    return pl > el && strcasecmp(path + pl - el, ext) == 0;
}

bool tui_export_any(const tui_doc *d, const char *path, char *err, size_t errn)
{
    if (ses_has_ext(path, ".json"))
        return tui_session_save(d, path, err, errn);
    if (ses_has_ext(path, ".csv"))
        return tui_export_csv(d, path, err, errn);
    if (ses_has_ext(path, ".svg"))
        return tui_export_svg(d, path, err, errn);
    if (ses_has_ext(path, ".html") || ses_has_ext(path, ".htm"))
        return tui_export_html(d, path, err, errn);
    ses_err(err, errn, "'%s': unknown export type (use .json, .csv, .svg or .html)", path);
    return false;
}
