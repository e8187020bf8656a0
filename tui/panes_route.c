/*
 * panes_route.c - the trace widgets of the studio: router load (per layer:
 * the selected token's router probabilities and the cumulative load as bars,
 * plus its chosen experts and weights), expert heatmap (selected token /
 * cumulative / timeline of one layer; dense models: logit-lens confidence)
 * and early exit (exit-layer strip and the logit-lens table of the selected
 * token). Reads the app's document only.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ui.h"

/* Eighth blocks, lowest to full (index 0 = a thin base line). */
static const char *const pr_blocks[9] = {
    "\xe2\x8e\xbd", "\xe2\x96\x81", "\xe2\x96\x82", "\xe2\x96\x83", "\xe2\x96\x84",
    "\xe2\x96\x85", "\xe2\x96\x86", "\xe2\x96\x87", "\xe2\x96\x88"};

static void pr_block(WINDOW *w, double v, double vmax)
{
    int lvl = tui_bar_cells(v, vmax, 8);
    if (tui_color_depth == 0 && lvl == 0) {
        waddch(w, '.');
        return;
    }
    waddstr(w, pr_blocks[lvl]);
}

/* "e3:0.62 e5:0.38" for layer il of t into buf. */
static void pr_experts(const tui_doc *d, const tui_tok *t, int32_t il, char *buf, size_t n)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int32_t s = 0; s < d->dims.n_sel && off < n; s++) {
        size_t k = (size_t)il * (size_t)d->dims.n_sel + (size_t)s;
        if (t->sel[k] < 0)
            continue;
        char wb[32];
        snprintf(wb, sizeof wb, "%.2f", (double)t->sel_w[k]);
        off += (size_t)snprintf(buf + off, n - off, "%se%d:%s", off ? " " : "", (int)t->sel[k],
                                wb[0] == '0' && wb[1] == '.' ? wb + 1 : wb);
    }
}

static bool pr_is_sel(const tui_doc *d, const tui_tok *t, int32_t il, int32_t e)
{
    for (int32_t s = 0; s < d->dims.n_sel; s++)
        if (t->sel[(size_t)il * (size_t)d->dims.n_sel + (size_t)s] == e)
            return true;
    return false;
}

static void pr_title_tok(tui_app *a, char *buf, size_t n, const char *what)
{
    const tui_tok *t = tui_app_selected(a);
    char disp[128];
    if (!t) {
        snprintf(buf, n, "%s", what);
        return;
    }
    tui_tok_display(t->text, disp, sizeof disp);
    snprintf(buf, n, "#%d '%s' %s", (int)t->index, disp, what);
}

void tui_draw_router(tui_app *a, WINDOW *w, int h, int wd)
{
    const tui_doc *d = &a->doc;
    const tui_tok *t = tui_app_selected(a);
    int32_t nl = d->dims.n_layer, ne = d->dims.n_expert;
    char title[256], buf[256];
    int64_t *load = NULL;
    int top = a->scroll[TUI_PANE_ROUTER];
    bool cum;
    pr_title_tok(a, title, sizeof title, ne > 0 ? "probs | cumulative load" : "hidden norm");
    tui_draw_title(a, w, TUI_PANE_ROUTER, wd, title);
    if (!t || h < 2)
        return;
    if (!t->traced) {
        mvwaddstr(w, 1, 1, "(not evaluated: end-of-generation token)");
        return;
    }
    if (top > nl - (h - 1))
        top = nl - (h - 1) > 0 ? nl - (h - 1) : 0;
    a->scroll[TUI_PANE_ROUTER] = top;
    if (ne <= 0) { /* dense: per-layer hidden-state norm bars */
        double mx = 0;
        for (int32_t il = 0; il < nl; il++)
            mx = t->hnorm[il] > mx ? t->hnorm[il] : mx;
        for (int32_t il = top; il < nl && il - top + 1 < h; il++) {
            int cells = tui_bar_cells(t->hnorm[il], mx, wd - 16);
            mvwprintw(w, il - top + 1, 0, "L%-2d %8.2f ", (int)il, (double)t->hnorm[il]);
            wattrset(w, tui_attr(TUI_C_BAR));
            for (int c = 0; c < cells; c++)
                waddstr(w, pr_blocks[8]);
            wattrset(w, A_NORMAL);
        }
        return;
    }
    load = calloc((size_t)nl * (size_t)ne, sizeof *load);
    if (!load)
        return;
    tui_doc_load(d, false, load);
    /* room: "L00 " + ne + " | " + ne + " " + experts text */
    cum = wd >= 4 + 2 * ne + 3 + 13;
    for (int32_t il = top; il < nl && il - top + 1 < h; il++) {
        int64_t mx = 0;
        double pmx = 0;
        int col;
        wmove(w, il - top + 1, 0);
        wprintw(w, "L%-2d ", (int)il);
        if (!t->layer_moe[il]) {
            wattrset(w, tui_attr(TUI_C_DIM));
            waddstr(w, "dense layer");
            wattrset(w, A_NORMAL);
            continue;
        }
        for (int32_t e = 0; e < ne; e++) {
            double p = t->probs[(size_t)il * (size_t)ne + (size_t)e];
            pmx = p > pmx ? p : pmx;
            mx = load[(size_t)il * (size_t)ne + (size_t)e] > mx
                     ? load[(size_t)il * (size_t)ne + (size_t)e]
                     : mx;
        }
        for (int32_t e = 0; e < ne && 4 + e < wd; e++) {
            wattrset(w, tui_attr(pr_is_sel(d, t, il, e) ? TUI_C_BAR : TUI_C_DIM));
            pr_block(w, t->probs[(size_t)il * (size_t)ne + (size_t)e], pmx);
        }
        wattrset(w, A_NORMAL);
        col = 4 + ne;
        if (cum) {
            waddstr(w, " | ");
            wattrset(w, tui_attr(TUI_C_BAR_CUM));
            for (int32_t e = 0; e < ne; e++)
                pr_block(w, (double)load[(size_t)il * (size_t)ne + (size_t)e], (double)mx);
            wattrset(w, A_NORMAL);
            col += 3 + ne;
        }
        pr_experts(d, t, il, buf, sizeof buf);
        if (col + 1 < wd) {
            waddch(w, ' ');
            tui_put(w, buf, wd - col - 1);
        }
    }
    free(load);
}

static void pr_cell(WINDOW *w, double v, double vmax, int cw, bool mark)
{
    int lvl = tui_heat_level(v, vmax, 8);
    char ch = tui_heat_char(lvl);
    wattrset(w, tui_attr((tui_color)(TUI_C_HEAT0 + lvl)) | (mark ? A_BOLD : 0));
    for (int i = 0; i < cw; i++)
        waddch(w, (chtype)(mark && i == cw - 1 && cw > 1 ? '*' : ch));
    wattrset(w, A_NORMAL);
}

static const char *const pr_heat_names[TUI_HEAT_COUNT] = {
    [TUI_HEAT_TOKEN] = "selected token",
    [TUI_HEAT_CUM] = "cumulative load",
    [TUI_HEAT_TIMELINE] = "timeline",
};

/* Dense models: tokens x layers of logit-lens top-1 probability. */
static void pr_heat_dense(tui_app *a, WINDOW *w, int h, int wd)
{
    const tui_doc *d = &a->doc;
    int32_t nl = d->dims.n_layer, sel = a->sel < 0 ? d->n_tok - 1 : a->sel;
    int ncol = wd - 4, first = sel - ncol + 1;
    if (first < 0)
        first = 0;
    for (int32_t il = 0; il < nl && il + 1 < h; il++) {
        mvwprintw(w, il + 1, 0, "L%-2d ", (int)il);
        for (int32_t i = first; i < d->n_tok && i - first < ncol; i++) {
            const tui_tok *t = d->toks[i];
            double p = t->traced && d->dims.lens_k > 0 && t->lens_id[(size_t)il * (size_t)d->dims.lens_k] >= 0
                           ? t->lens_p[(size_t)il * (size_t)d->dims.lens_k]
                           : 0;
            pr_cell(w, p, 1.0, 1, i == sel);
        }
    }
}

void tui_draw_heatmap(tui_app *a, WINDOW *w, int h, int wd)
{
    const tui_doc *d = &a->doc;
    const tui_tok *t = tui_app_selected(a);
    int32_t nl = d->dims.n_layer, ne = d->dims.n_expert;
    char title[256];
    int cw;
    if (ne <= 0) {
        tui_draw_title(a, w, TUI_PANE_HEATMAP, wd, "dense: lens top-1 prob, tokens x layers");
        pr_heat_dense(a, w, h, wd);
        return;
    }
    if (a->heat_layer >= nl)
        a->heat_layer = nl - 1;
    if (a->heat_mode == TUI_HEAT_TIMELINE)
        snprintf(title, sizeof title, "%s L%d (m: mode, [ ]: layer)", pr_heat_names[a->heat_mode],
                 a->heat_layer);
    else
        snprintf(title, sizeof title, "%s (m: mode)", pr_heat_names[a->heat_mode]);
    tui_draw_title(a, w, TUI_PANE_HEATMAP, wd, title);
    if (h < 2)
        return;
    cw = (wd - 5) / (ne > 0 ? ne : 1);
    cw = cw > 4 ? 4 : cw < 1 ? 1 : cw;
    if (a->heat_mode == TUI_HEAT_CUM) {
        int64_t *load = calloc((size_t)nl * (size_t)ne, sizeof *load);
        if (!load)
            return;
        tui_doc_load(d, false, load);
        for (int32_t il = 0; il < nl && il + 1 < h; il++) {
            int64_t mx = 0;
            for (int32_t e = 0; e < ne; e++)
                mx = load[(size_t)il * (size_t)ne + (size_t)e] > mx ? load[(size_t)il * (size_t)ne + (size_t)e] : mx;
            mvwprintw(w, il + 1, 0, "L%-2d ", (int)il);
            for (int32_t e = 0; e < ne && 4 + (e + 1) * cw <= wd; e++)
                pr_cell(w, (double)load[(size_t)il * (size_t)ne + (size_t)e], (double)mx, cw,
                        false);
        }
        free(load);
    } else if (a->heat_mode == TUI_HEAT_TOKEN) {
        if (!t || !t->traced)
            return;
        for (int32_t il = 0; il < nl && il + 1 < h; il++) {
            mvwprintw(w, il + 1, 0, "L%-2d ", (int)il);
            for (int32_t e = 0; e < ne && 4 + (e + 1) * cw <= wd; e++)
                pr_cell(w, t->probs[(size_t)il * (size_t)ne + (size_t)e], 1.0, cw,
                        pr_is_sel(d, t, il, e));
        }
    } else {
        int32_t sel = a->sel < 0 ? d->n_tok - 1 : a->sel, rows = h - 1;
        int32_t first = sel - rows + 1;
        if (first < 0)
            first = 0;
        for (int32_t i = first; i < d->n_tok && i - first < rows; i++) {
            const tui_tok *r = d->toks[i];
            wattrset(w, i == sel ? tui_attr(TUI_C_SELECTED) : A_NORMAL);
            mvwprintw(w, i - first + 1, 0, "%4d", (int)i);
            wattrset(w, A_NORMAL);
            waddch(w, ' ');
            for (int32_t e = 0; r->traced && e < ne && 5 + (e + 1) * cw <= wd; e++)
                pr_cell(w, r->probs[(size_t)a->heat_layer * (size_t)ne + (size_t)e], 1.0, cw,
                        pr_is_sel(d, r, a->heat_layer, e));
        }
    }
}

void tui_draw_exit(tui_app *a, WINDOW *w, int h, int wd)
{
    const tui_doc *d = &a->doc;
    const tui_tok *t = tui_app_selected(a);
    int32_t nl = d->dims.n_layer, k = d->dims.lens_k;
    int32_t sel = a->sel < 0 ? d->n_tok - 1 : a->sel;
    char title[128], buf[256], q[160], pc[64];
    int ncol = wd - 6, first, y;
    snprintf(title, sizeof title, "exit layer of each token; lens of #%d", (int)sel);
    tui_draw_title(a, w, TUI_PANE_EXIT, wd, title);
    if (h < 2 || d->n_tok == 0)
        return;
    first = sel - ncol / 2;
    if (first + ncol > d->n_tok)
        first = d->n_tok - ncol;
    if (first < 0)
        first = 0;
    mvwaddstr(w, 1, 0, "exit ");
    for (int32_t i = first; i < d->n_tok && i - first < ncol; i++) {
        const tui_tok *r = d->toks[i];
        int lvl = r->traced && nl > 1 ? 1 + (int)(6.0 * r->exit_layer / (nl - 1)) : 0;
        char c = !r->traced ? '-' : r->exit_layer < 10 ? (char)('0' + r->exit_layer)
                                                        : (char)('a' + (r->exit_layer - 10) % 26);
        wattrset(w, i == sel ? tui_attr(TUI_C_SELECTED) : tui_attr((tui_color)(TUI_C_HEAT0 + lvl)));
        waddch(w, (chtype)c);
    }
    wattrset(w, A_NORMAL);
    if (!t || !t->traced) {
        mvwaddstr(w, 2, 1, "(token not evaluated)");
        return;
    }
    if (k <= 0) {
        mvwaddstr(w, 2, 1, "logit lens off (lens_k = 0)");
        return;
    }
    y = 2;
    for (int32_t il = a->scroll[TUI_PANE_EXIT]; il < nl && y < h; il++, y++) {
        int col;
        bool past = il > t->exit_layer;
        wmove(w, y, 0);
        wattrset(w, il == t->exit_layer ? tui_attr(TUI_C_EXIT) : past ? tui_attr(TUI_C_DIM) : A_NORMAL);
        snprintf(buf, sizeof buf, "L%-2d H%4.2f", (int)il,
                 (double)t->lens_entropy[il]);
        col = tui_put(w, buf, wd);
        wattrset(w, past ? tui_attr(TUI_C_DIM) : A_NORMAL);
        for (int32_t j = 0; j < k && col < wd; j++) {
            size_t ki = (size_t)il * (size_t)k + (size_t)j;
            char disp[128];
            if (t->lens_id[ki] < 0)
                break;
            tui_tok_display(tui_doc_piece(d, t->lens_id[ki], pc, sizeof pc), disp, sizeof disp);
            snprintf(q, sizeof q, " '%s' %.2f", disp, (double)t->lens_p[ki]);
            col += tui_put(w, q, wd - col);
        }
        wattrset(w, A_NORMAL);
    }
}
