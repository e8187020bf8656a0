/*
 * export_svg.c - pictures of a session as standalone SVG: the expert heatmap
 * (layers x experts: cumulative load and mean router probability) and the
 * timeline (tokens x layers: logit-lens top-1 probability, exit layer
 * marked). Used by `:export FILE.svg` and embedded by the HTML report.
 * No curses.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "studio.h"

/* A ramp from dark blue through green to yellow/red, t in [0, 1]. */
static void svg_rgb(double t, char out[8])
{
    static const unsigned char stops[5][3] = {
        {0x14, 0x1e, 0x3c}, {0x1f, 0x6f, 0xb4}, {0x2c, 0xa0, 0x5a}, {0xf0, 0xc0, 0x28},
        {0xe0, 0x3c, 0x28}};
    double x;
    int i;
    if (!(t > 0))
        t = 0;
    if (t > 1)
        t = 1;
    x = t * 4;
    i = (int)x;
    if (i >= 4)
        i = 3;
    x -= i;
    snprintf(out, 8, "#%02x%02x%02x",
             (int)lround(stops[i][0] + (stops[i + 1][0] - stops[i][0]) * x),
             (int)lround(stops[i][1] + (stops[i + 1][1] - stops[i][1]) * x),
             (int)lround(stops[i][2] + (stops[i + 1][2] - stops[i][2]) * x));
}

/* One grid: rows x cols values in [0, vmax], at (x0, y0), cell w x h. */
static void svg_grid(FILE *f, const double *v, int rows, int cols, double vmax, int x0,
                     int y0, int cw, int ch, const char *row_label, const char *unit)
{
    char col[8];
    for (int r = 0; r < rows; r++) {
        fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"l\" text-anchor=\"end\">%s%d</text>\n",
                x0 - 4, y0 + r * ch + ch * 2 / 3, row_label, r);
        for (int c = 0; c < cols; c++) {
            double x = v[(size_t)r * (size_t)cols + (size_t)c];
            svg_rgb(vmax > 0 ? x / vmax : 0, col);
            fprintf(f,
                    "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\">"
                    "<title>%s%d, %d: %.4g%s</title></rect>\n",
                    x0 + c * cw, y0 + r * ch, cw - 1, ch - 1, col, row_label, r, c, x, unit);
        }
    }
}

static void svg_body(FILE *f, const tui_doc *d, int *height, int *width)
{
    const tui_dims *dm = &d->dims;
    int nl = dm->n_layer, ne = dm->n_expert, y = 30, w = 200;
    int n_tr = 0;
    fprintf(f, "<style>text{font-family:monospace;font-size:11px;fill:#222}"
               ".t{font-size:13px;font-weight:bold}</style>\n");
    if (ne > 0 && nl > 0) {
        size_t n = (size_t)nl * (size_t)ne;
        int64_t *load = calloc(n, sizeof *load);
        double *v = calloc(n, sizeof *v), *pm = calloc(n, sizeof *pm), vmax = 0;
        int cw = ne <= 16 ? 24 : ne <= 64 ? 10 : 4;
        if (load && v && pm) {
            tui_doc_load(d, false, load);
            for (size_t k = 0; k < n; k++) {
                v[k] = (double)load[k];
                vmax = v[k] > vmax ? v[k] : vmax;
            }
            fprintf(f, "<text x=\"10\" y=\"%d\" class=\"t\">expert load (tokens routed, "
                       "layers x experts, max %.0f)</text>\n", y - 8, vmax);
            svg_grid(f, v, nl, ne, vmax, 50, y, cw, 16, "L", " tokens");
            y += nl * 16 + 40;
            for (int32_t i = 0; i < d->n_tok; i++) {
                const tui_tok *t = d->toks[i];
                if (!t->traced)
                    continue;
                n_tr++;
                for (size_t k = 0; k < n; k++)
                    pm[k] += isfinite(t->probs[k]) ? t->probs[k] : 0;
            }
            vmax = 0;
            for (size_t k = 0; k < n; k++) {
                pm[k] = n_tr ? pm[k] / n_tr : 0;
                vmax = pm[k] > vmax ? pm[k] : vmax;
            }
            fprintf(f, "<text x=\"10\" y=\"%d\" class=\"t\">mean router probability "
                       "(layers x experts, max %.3f)</text>\n", y - 8, vmax);
            svg_grid(f, pm, nl, ne, vmax, 50, y, cw, 16, "L", "");
            y += nl * 16 + 40;
            if (50 + ne * cw + 20 > w)
                w = 50 + ne * cw + 20;
        }
        free(load);
        free(v);
        free(pm);
    }
    if (nl > 0 && d->n_tok > 0) {
        int nt = d->n_tok, cw = nt <= 64 ? 10 : nt <= 256 ? 4 : 2;
        fprintf(f, "<text x=\"10\" y=\"%d\" class=\"t\">timeline: tokens x layers, "
                   "logit-lens top-1 probability; black = exit layer</text>\n", y - 8);
        for (int il = 0; il < nl; il++) {
            char col[8];
            fprintf(f, "<text x=\"46\" y=\"%d\" class=\"l\" text-anchor=\"end\">L%d</text>\n",
                    y + il * 12 + 9, il);
            for (int32_t i = 0; i < nt; i++) {
                const tui_tok *t = d->toks[i];
                double p = 0;
                if (!t->traced)
                    continue;
                if (dm->lens_k > 0 && t->lens_id[(size_t)il * (size_t)dm->lens_k] >= 0)
                    p = t->lens_p[(size_t)il * (size_t)dm->lens_k];
                svg_rgb(p, col);
                fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"11\" fill=\"%s\"%s/>\n",
                        50 + i * cw, y + il * 12, cw > 2 ? cw - 1 : cw,
                        il == t->exit_layer && t->exit_layer < nl - 1 ? "#000000" : col,
                        "");
            }
        }
        y += nl * 12 + 20;
        if (50 + nt * cw + 20 > w)
            w = 50 + nt * cw + 20;
    }
    *height = y;
    *width = w;
}

char *tui_svg_heatmap(const tui_doc *d)
{
    char *body = NULL, *out = NULL;
    size_t blen = 0, olen = 0;
    int h = 0, w = 0;
    FILE *f = open_memstream(&body, &blen);
    if (!f)
        return NULL;
    svg_body(f, d, &h, &w);
    if (fclose(f) != 0) {
        free(body);
        return NULL;
    }
    f = open_memstream(&out, &olen);
    if (!f) {
        free(body);
        return NULL;
    }
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n",
            w, h, w, h);
    fputs(body, f);
    fputs("</svg>\n", f);
    free(body);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

bool tui_export_svg(const tui_doc *d, const char *path, char *err, size_t errn)
{
    char *s = tui_svg_heatmap(d);
    bool ok;
    if (!s) {
        snprintf(err, errn, "out of memory");
        return false;
    }
    ok = tui_write_atomic(path, s, strlen(s), err, errn);
    free(s);
    return ok;
}
