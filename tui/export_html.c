/*
 * export_html.c - `:export report.html`: one self-contained HTML file (no
 * external resources) with the model and statistics, the SVG heatmaps,
 * per-layer expert load charts, the exit-layer strip and the transcript
 * (hover a token for its id, log-prob, experts and exit layer). No curses.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "studio.h"

static void html_esc(FILE *f, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\n': fputs("&#8629;<br>", f); break;
        default: fputc(*s, f);
        }
    }
}

static void html_stats(FILE *f, const tui_doc *d)
{
    tui_stats s;
    const tui_meta *m = &d->meta;
    tui_doc_stats(d, &s);
    fputs("<h2>Model and statistics</h2>\n<table>\n", f);
    if (m->path) {
        fputs("<tr><th>model</th><td>", f);
        html_esc(f, m->path);
        fputs("</td></tr>\n<tr><th>sha256</th><td>", f);
        html_esc(f, m->sha256);
        fprintf(f, "</td></tr>\n<tr><th>arch</th><td>");
        html_esc(f, m->arch);
        fprintf(f, " (%s)</td></tr>\n", m->ftype ? m->ftype : "");
        fprintf(f, "<tr><th>shape</th><td>%d layers, n_embd %d, %d experts (top-%d), "
                   "vocab %d, %.3f M parameters</td></tr>\n",
                m->n_layer, m->n_embd, m->n_expert, m->n_expert_used, m->n_vocab,
                m->n_params / 1e6);
    }
    fprintf(f, "<tr><th>tokens</th><td>%d (%d prompt, %d generated)</td></tr>\n",
            s.n_tokens, s.n_prompt, s.n_gen);
    fprintf(f, "<tr><th>speed</th><td>%.1f tok/s</td></tr>\n", s.tok_s);
    fprintf(f, "<tr><th>mean log-prob</th><td>%.4f (perplexity %.3f)</td></tr>\n",
            s.mean_logprob, s.perplexity);
    fprintf(f, "<tr><th>mean exit layer</th><td>%.3f of %d</td></tr>\n", s.mean_exit_layer,
            d->dims.n_layer - 1);
    fputs("<tr><th>settings</th><td>exit ", f);
    html_esc(f, d->set.exit_spec);
    fprintf(f, ", temp %.3g, top-k %d, top-p %.3g, seed %llu", (double)d->set.sp.temp,
            (int)d->set.sp.top_k, (double)d->set.sp.top_p,
            (unsigned long long)d->set.sp.seed);
    for (int32_t i = 0; i < d->set.n_route; i++) {
        fputs(", route ", f);
        html_esc(f, d->set.route[i]);
    }
    fputs("</td></tr>\n</table>\n", f);
}

static void html_load(FILE *f, const tui_doc *d)
{
    const tui_dims *dm = &d->dims;
    size_t n = (size_t)dm->n_layer * (size_t)dm->n_expert;
    int64_t *load;
    if (dm->n_expert <= 0 || n == 0)
        return;
    load = calloc(n, sizeof *load);
    if (!load)
        return;
    tui_doc_load(d, false, load);
    fputs("<h2>Expert load per layer</h2>\n<div class=\"charts\">\n", f);
    for (int32_t il = 0; il < dm->n_layer; il++) {
        int64_t mx = 1;
        for (int32_t e = 0; e < dm->n_expert; e++)
            mx = load[(size_t)il * (size_t)dm->n_expert + (size_t)e] > mx
                     ? load[(size_t)il * (size_t)dm->n_expert + (size_t)e]
                     : mx;
        fprintf(f, "<div class=\"chart\"><b>layer %d</b>\n", il);
        for (int32_t e = 0; e < dm->n_expert; e++) {
            int64_t v = load[(size_t)il * (size_t)dm->n_expert + (size_t)e];
            fprintf(f, "<div class=\"row\"><span>e%d</span><div class=\"bar\" "
                       "style=\"width:%.1f%%\"></div> %lld</div>\n",
                    e, 80.0 * (double)v / (double)mx, (long long)v);
        }
        fputs("</div>\n", f);
    }
    fputs("</div>\n", f);
    free(load);
}

static void html_tok_title(FILE *f, const tui_doc *d, const tui_tok *t)
{
    fprintf(f, "#%d id %d", t->index, t->id);
    if (t->sampled)
        fprintf(f, ", logprob %.3f", (double)t->logprob);
    if (t->traced) {
        fprintf(f, ", exit layer %d", t->exit_layer);
        for (int32_t il = 0; il < d->dims.n_layer && d->dims.n_expert > 0; il++) {
            if (!t->layer_moe[il])
                continue;
            fprintf(f, ", L%d:", il);
            for (int32_t s = 0; s < d->dims.n_sel; s++) {
                int32_t e = t->sel[(size_t)il * (size_t)d->dims.n_sel + (size_t)s];
                if (e >= 0)
                    fprintf(f, " e%d", e);
            }
        }
    }
}

static void html_body(FILE *f, const tui_doc *d)
{
    char *svg = tui_svg_heatmap(d);
    int32_t nl = d->dims.n_layer;
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>moe-studio report"
          "</title>\n<style>\nbody{font-family:sans-serif;margin:2em;color:#222}\n"
          "table{border-collapse:collapse}th,td{text-align:left;padding:2px 8px;"
          "border-bottom:1px solid #ddd}\n.charts{display:flex;flex-wrap:wrap;gap:1em}\n"
          ".chart{width:260px;font-size:12px}.row{display:flex;align-items:center;gap:4px}\n"
          ".row span{width:3em}.bar{height:10px;background:#1f6fb4}\n"
          ".strip span{display:inline-block;width:10px;height:18px;margin-right:1px}\n"
          ".tx{font-family:monospace;white-space:pre-wrap;line-height:1.6}\n"
          ".tx span{border-right:1px solid #bbb}.tx .p{background:#eef}\n"
          ".tx .g{background:#efe}\n</style></head><body>\n"
          "<h1>moe-studio session report</h1>\n", f);
    html_stats(f, d);
    if (svg) {
        fputs("<h2>Heatmaps</h2>\n", f);
        fputs(svg, f);
        free(svg);
    }
    html_load(f, d);
    fputs("<h2>Exit layer per token</h2>\n<div class=\"strip\">", f);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        double x = t->traced && nl > 1 ? (double)t->exit_layer / (nl - 1) : 0;
        int c = (int)lround(40 + 200 * (1 - x));
        fprintf(f, "<span style=\"background:rgb(%d,%d,255)\" title=\"#%d exit %d\"></span>",
                c, c, i, t->exit_layer);
    }
    fputs("</div>\n<h2>Transcript</h2>\n<div class=\"tx\">", f);
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        fprintf(f, "<span class=\"%s\" title=\"", t->prompt || !t->sampled ? "p" : "g");
        html_tok_title(f, d, t);
        fputs("\">", f);
        html_esc(f, t->text);
        fputs("</span>", f);
    }
    fputs("</div>\n</body></html>\n", f);
}

bool tui_export_html(const tui_doc *d, const char *path, char *err, size_t errn)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    bool ok;
    if (!f) {
        snprintf(err, errn, "out of memory");
        return false;
    }
    html_body(f, d);
    if (fclose(f) != 0) {
        free(buf);
        snprintf(err, errn, "out of memory");
        return false;
    }
    ok = tui_write_atomic(path, buf, len, err, errn);
    free(buf);
    return ok;
}
