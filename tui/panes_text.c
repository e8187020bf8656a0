/*
 * panes_text.c - the text widgets of the studio: pane titles, transcript
 * (token boundaries visible, selection highlighted, kept in view), token
 * inspector (sampler stages, chosen token, log-prob), log and status bar.
 * Draws into the window it is given; owns no state beyond the app's.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wchar.h>

#include "ui.h"

int tui_put(WINDOW *w, const char *s, int max)
{
    mbstate_t st;
    size_t len = strlen(s), off = 0;
    int cols = 0;
    memset(&st, 0, sizeof st);
    while (off < len) {
        wchar_t wc;
        size_t k = mbrtowc(&wc, s + off, len - off, &st);
        int cw;
        if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
            memset(&st, 0, sizeof st);
            k = 1;
            cw = 1;
            if (cols + cw > max)
                break;
            waddch(w, '?');
        } else {
            cw = wcwidth(wc);
            if (cw < 0)
                cw = 1;
            if (cols + cw > max)
                break;
            if (wc < 0x20)
                waddch(w, '?');
            else
                waddnstr(w, s + off, (int)k);
        }
        cols += cw;
        off += k;
    }
    return cols;
}

void tui_draw_title(tui_app *a, WINDOW *w, int pane, int wd, const char *extra)
{
    char buf[512];
    attr_t at = tui_attr(a->focus == pane ? TUI_C_TITLE_FOCUS : TUI_C_TITLE);
    snprintf(buf, sizeof buf, " %s%s%s%s", tui_pane_name((tui_pane_id)pane),
             extra && *extra ? "  " : "", extra ? extra : "",
             a->zoom == pane ? "  [zoom]" : "");
    wattrset(w, at);
    mvwhline(w, 0, 0, ' ', wd);
    wmove(w, 0, 0);
    tui_put(w, buf, wd);
    wattrset(w, A_NORMAL);
}

/* Quoted, escaped display of a token text into buf (for one-line views). */
static const char *pt_quote(const char *text, char *buf, size_t n)
{
    char disp[256];
    tui_tok_display(text, disp, sizeof disp);
    snprintf(buf, n, "'%s'", disp);
    return buf;
}

void tui_draw_transcript(tui_app *a, WINDOW *w, int h, int wd)
{
    tui_doc *d = &a->doc;
    tui_place *pl;
    int32_t rows, sel = a->sel, top;
    char extra[128];
    snprintf(extra, sizeof extra, "%d tokens, %d turns", (int)d->n_tok, (int)d->n_turn);
    tui_draw_title(a, w, TUI_PANE_TRANSCRIPT, wd, extra);
    if (h < 2)
        return;
    if (d->n_tok == 0) {
        wattrset(w, tui_attr(TUI_C_DIM));
        if (!a->model_loaded && !a->replay) {
            mvwaddstr(w, 1, 1, "No model loaded.");
            mvwaddstr(w, 2, 1, "Type :load FILE.gguf (Tab completes), :import S.json");
        } else {
            mvwaddstr(w, 1, 1, "space: one token from BOS   r: run/pause");
            mvwaddstr(w, 2, 1, "i: type a prompt   ?: help   q: quit");
        }
        wattrset(w, A_NORMAL);
        return;
    }
    pl = malloc((size_t)d->n_tok * sizeof *pl);
    if (!pl)
        return;
    rows = tui_flow(d, wd, pl);
    if (sel < 0 || sel >= d->n_tok)
        sel = d->n_tok - 1;
    top = tui_scroll_to(a->tr_top, pl[sel].row, h - 1);
    if (a->follow && rows - top > h - 1)
        top = rows - (h - 1);
    a->tr_top = top;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        char disp[256];
        attr_t at;
        int y = pl[i].row - top + 1;
        if (y < 1 || y >= h)
            continue;
        tui_tok_display(t->text, disp, sizeof disp);
        if (i == a->sel)
            at = tui_attr(TUI_C_SELECTED);
        else if (!t->sampled)
            at = tui_attr(TUI_C_PROMPT) | ((i & 1) ? A_UNDERLINE : 0);
        else
            at = tui_attr((i & 1) ? TUI_C_TOK_B : TUI_C_TOK_A);
        wattrset(w, at);
        wmove(w, y, pl[i].col);
        tui_put(w, disp, pl[i].width);
    }
    wattrset(w, A_NORMAL);
    free(pl);
}

void tui_draw_inspector(tui_app *a, WINDOW *w, int h, int wd)
{
    const tui_tok *t = tui_app_selected(a);
    tui_doc *d = &a->doc;
    char buf[512], q[300], pc[64];
    int y = 1;
    tui_draw_title(a, w, TUI_PANE_INSPECTOR, wd, NULL);
    if (!t || h < 2)
        return;
    snprintf(buf, sizeof buf, "#%d pos %d id %d %s", (int)t->index, (int)t->pos, (int)t->id,
             pt_quote(t->text, q, sizeof q));
    wattrset(w, tui_attr(TUI_C_SELECTED));
    mvwaddch(w, y, 0, ' ');
    tui_put(w, buf, wd - 1);
    wattrset(w, A_NORMAL);
    y++;
    if (y < h) {
        if (t->sampled)
            snprintf(buf, sizeof buf, "sampled  logprob %.4f (p %.4f)  %.2f ms  exit L%d",
                     (double)t->logprob, exp((double)t->logprob), (double)t->time_ms,
                     (int)t->exit_layer);
        else
            snprintf(buf, sizeof buf, "prompt token  %.3f ms  exit L%d", (double)t->time_ms,
                     (int)t->exit_layer);
        wmove(w, y++, 1);
        tui_put(w, buf, wd - 1);
    }
    for (int32_t s = -1; t->sampled && s < t->n_stage && y < h; s++, y++) {
        int col, nc = s < 0 ? t->n_top : t->n_cand[s];
        const tui_cand *cs = s < 0 ? t->top : t->cand[s];
        wmove(w, y, 1);
        wattrset(w, tui_attr(TUI_C_DIM));
        snprintf(buf, sizeof buf, "%-10s",
                 s < 0 ? "model" : moe_sampler_stage_name((moe_sampler_stage)t->stage[s]));
        col = 1 + tui_put(w, buf, wd - 1);
        wattrset(w, A_NORMAL);
        for (int32_t j = 0; j < nc && col < wd - 1; j++) {
            const tui_cand *c = &cs[j];
            snprintf(buf, sizeof buf, " %s %.3f",
                     pt_quote(tui_doc_piece(d, c->id, pc, sizeof pc), q, sizeof q), (double)c->p);
            if (c->id == t->id)
                wattrset(w, tui_attr(TUI_C_BAR));
            col += tui_put(w, buf, wd - 1 - col);
            wattrset(w, A_NORMAL);
        }
    }
    if (!t->sampled && y < h) {
        wattrset(w, tui_attr(TUI_C_DIM));
        mvwaddstr(w, y, 1, "(no sampler stages: this token came from the prompt)");
        wattrset(w, A_NORMAL);
    }
}

/* One row of s in width columns: returns its byte length and sets *next
 * to where the following row starts (after a space when the row breaks at
 * one, mid-word only when a word is longer than the row). */
static size_t pt_wrap_row(const char *s, int width, const char **next)
{
    mbstate_t st;
    const size_t len = strlen(s);
    size_t off = 0, brk = 0;
    int cols = 0;
    memset(&st, 0, sizeof st);
    while (off < len) {
        wchar_t wc;
        size_t k = mbrtowc(&wc, s + off, len - off, &st);
        int cw = 1;
        if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
            memset(&st, 0, sizeof st);
            k = 1;
        } else {
            cw = wcwidth(wc);
            if (cw < 0)
                cw = 1;
        }
        if (cols + cw > width)
            break;
        if (s[off] == ' ')
            brk = off;
        cols += cw;
        off += k;
    }
    if (off >= len) {
        *next = s + len;
        return len;
    }
    if (brk > 0) {
        *next = s + brk + 1;
        return brk;
    }
    if (off == 0)
        off = 1;
    *next = s + off;
    return off;
}

#define PT_LOG_WRAP 3 /* rows a long log line may take */

static int pt_log_rows(const char *s, int width)
{
    int rows = 0;
    do {
        pt_wrap_row(s, width, &s);
        rows++;
    } while (*s && rows < PT_LOG_WRAP);
    return rows;
}

void tui_draw_log(tui_app *a, WINDOW *w, int h, int wd)
{
    int n = h - 1, last, first, rows = 0, y = 1, skip;
    char extra[32] = "";
    if (a->log_scroll > 0)
        snprintf(extra, sizeof extra, "scrolled %d", a->log_scroll);
    tui_draw_title(a, w, TUI_PANE_LOG, wd, extra);
    if (n <= 0 || wd < 2)
        return;
    if (a->log_scroll > a->log_n - n)
        a->log_scroll = a->log_n - n > 0 ? a->log_n - n : 0;
    /* newest shown entry, then back while the rows fill the pane; long
     * lines wrap at spaces (up to PT_LOG_WRAP rows each) */
    last = a->log_n - 1 - a->log_scroll;
    first = last + 1;
    while (first > 0 && rows < n) {
        int k = (a->log_head - a->log_n + first - 1 + TUI_LOG_LINES) % TUI_LOG_LINES;
        rows += pt_log_rows(a->log[k] ? a->log[k] : "", wd - 1);
        first--;
    }
    skip = rows > n ? rows - n : 0;
    for (int i = first; i <= last && y <= n; i++) {
        int k = (a->log_head - a->log_n + i + TUI_LOG_LINES) % TUI_LOG_LINES;
        const char *s = a->log[k] ? a->log[k] : "";
        int r = 0;
        wattrset(w, a->log_err[k] ? tui_attr(TUI_C_ERROR) : A_NORMAL);
        do {
            char row[1024];
            const char *next;
            size_t len = pt_wrap_row(s, wd - 1, &next);
            r++;
            if (r == PT_LOG_WRAP)
                len = strlen(s); /* the last row is clipped */
            if (len >= sizeof row)
                len = sizeof row - 1;
            if (skip > 0) {
                skip--;
            } else {
                memcpy(row, s, len);
                row[len] = '\0';
                wmove(w, y++, 1);
                tui_put(w, row, wd - 1);
            }
            s = next;
        } while (*s && r < PT_LOG_WRAP && y <= n);
    }
    wattrset(w, A_NORMAL);
}

static double pt_rss_mib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

void tui_draw_status(tui_app *a, WINDOW *w, int wd)
{
    const tui_meta *m = &a->doc.meta;
    tui_stats s;
    char buf[512];
    char moe[32] = "dense";
    tui_doc_stats(&a->doc, &s);
    if (m->n_expert > 0)
        snprintf(moe, sizeof moe, "%dx top-%d", (int)m->n_expert, (int)m->n_expert_used);
    wattrset(w, tui_attr(TUI_C_STATUS));
    mvwhline(w, 0, 0, ' ', wd);
    if (m->path)
        /* the state comes early: a narrow terminal clips the end */
        snprintf(buf, sizeof buf,
                 " %s%s | %s | %s %s %.2fM | %s | ctx %d/%d | %.0f tok/s | %.0f MiB "
                 "| ?:help",
                 a->replay ? "replay: " : "", m->name ? m->name : "",
                 a->busy ? (a->busy_what ? a->busy_what : "busy") : "idle",
                 m->arch ? m->arch : "", m->ftype ? m->ftype : "", (double)m->n_params / 1e6,
                 moe, a->replay ? (int)s.n_tokens : (int)a->ctx_pos,
                 a->replay ? (int)a->doc.set.n_ctx : (int)a->n_ctx, s.tok_s, pt_rss_mib());
    else
        snprintf(buf, sizeof buf, " moe-studio | no model | :load FILE.gguf | mem %.0f MiB | ?:help",
                 pt_rss_mib());
    wmove(w, 0, 0);
    tui_put(w, buf, wd);
    wattrset(w, A_NORMAL);
    tui_lua_draw_bars(a, w, wd);
}
