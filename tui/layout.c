/*
 * layout.c - the terminal-free logic of the studio's screen: pane
 * rectangles for a terminal size (with zoom), bar and heat scaling, token
 * display forms and the transcript flow (where each token goes), scrolling,
 * command-line word splitting and the text of expert lists. Pure functions
 * tested by tests/check_tui.c; no curses.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>

#include "studio.h"

static const char *const tui_pane_names[TUI_PANE_COUNT] = {
    [TUI_PANE_TRANSCRIPT] = "transcript",
    [TUI_PANE_ROUTER] = "router load",
    [TUI_PANE_HEATMAP] = "expert heatmap",
    [TUI_PANE_EXIT] = "early exit",
    [TUI_PANE_INSPECTOR] = "token inspector",
    [TUI_PANE_LOG] = "log",
};
_Static_assert(sizeof tui_pane_names / sizeof tui_pane_names[0] == TUI_PANE_COUNT,
               "one name per pane");

const char *tui_pane_name(tui_pane_id p)
{
    return p >= 0 && p < TUI_PANE_COUNT ? tui_pane_names[p] : "?";
}

static tui_rect tui_r(int y, int x, int h, int w)
{
    tui_rect r = {y, x, h, w};
    return r;
}

void tui_layout_compute(int lines, int cols, int zoom, tui_layout *o)
{
    int top = 1, H, logh, uh, lw, rw, ih, rh;
    memset(o, 0, sizeof *o);
    o->too_small = lines < TUI_MIN_LINES || cols < TUI_MIN_COLS;
    if (lines < 2 || cols < 1) {
        o->too_small = true;
        return;
    }
    o->status = tui_r(0, 0, 1, cols);
    o->cmd = tui_r(lines - 1, 0, 1, cols);
    if (o->too_small)
        return;
    H = lines - 2;
    if (zoom >= 0 && zoom < TUI_PANE_COUNT) {
        o->pane[zoom] = tui_r(top, 0, H, cols);
        return;
    }
    logh = H >= 40 ? 8 : H >= 28 ? 6 : 4;
    uh = H - logh;
    lw = cols / 2;
    rw = cols - lw;
    ih = uh >= 24 ? 10 : uh * 4 / 9;
    o->pane[TUI_PANE_TRANSCRIPT] = tui_r(top, 0, uh - ih, lw);
    o->pane[TUI_PANE_INSPECTOR] = tui_r(top + uh - ih, 0, ih, lw);
    rh = uh / 3;
    o->pane[TUI_PANE_ROUTER] = tui_r(top, lw, rh, rw);
    o->pane[TUI_PANE_HEATMAP] = tui_r(top + rh, lw, rh, rw);
    o->pane[TUI_PANE_EXIT] = tui_r(top + 2 * rh, lw, uh - 2 * rh, rw);
    o->pane[TUI_PANE_LOG] = tui_r(top + uh, 0, logh, cols);
}

int tui_bar_cells(double v, double vmax, int width)
{
    long c;
    if (!(v > 0) || !(vmax > 0) || width <= 0)
        return 0;
    c = lround(v / vmax * width);
    return c < 0 ? 0 : c > width ? width : (int)c;
}

int tui_heat_level(double v, double vmax, int levels)
{
    double x;
    int l;
    if (!(v > 0) || !(vmax > 0) || levels < 2)
        return 0;
    x = v / vmax;
    if (x > 1)
        x = 1;
    l = (int)ceil(x * (levels - 1));
    return l < 1 ? 1 : l > levels - 1 ? levels - 1 : l;
}

char tui_heat_char(int level)
{
    static const char ramp[] = " .:-=+*#";
    return ramp[level < 0 ? 0 : level > 7 ? 7 : level];
}

bool tui_tok_display(const char *text, char *buf, size_t n)
{
    size_t o = 0;
    bool nl = false;
    if (n == 0)
        return false;
    if (!text || !*text)
        text = "\xe2\x88\x85"; /* empty set sign for an empty piece */
    for (; *text && o + 4 < n; text++) {
        if (*text == '\n') {
            memcpy(buf + o, "\xe2\x86\xb5", 3);
            o += 3;
            nl = true;
        } else if (*text == '\t') {
            memcpy(buf + o, "\xe2\x86\x92", 3);
            o += 3;
        } else {
            buf[o++] = *text;
        }
    }
    buf[o] = '\0';
    return nl;
}

int tui_str_width(const char *s)
{
    mbstate_t st;
    size_t len = strlen(s);
    int w = 0;
    memset(&st, 0, sizeof st);
    while (len > 0) {
        wchar_t wc;
        size_t k = mbrtowc(&wc, s, len, &st);
        int cw;
        if (k == (size_t)-1 || k == (size_t)-2 || k == 0) {
            memset(&st, 0, sizeof st);
            w++;
            s++;
            len--;
            continue;
        }
        cw = wcwidth(wc);
        w += cw < 0 ? 1 : cw;
        s += k;
        len -= k;
    }
    return w;
}

int32_t tui_flow(const tui_doc *d, int width, tui_place *place)
{
    int32_t row = 0, col = 0, prev_turn = -1;
    char buf[256];
    if (width < 1)
        width = 1;
    for (int32_t i = 0; i < d->n_tok; i++) {
        const tui_tok *t = d->toks[i];
        bool nl = tui_tok_display(t->text, buf, sizeof buf);
        int w = tui_str_width(buf);
        if (w < 1)
            w = 1;
        if (w > width)
            w = width;
        if (i > 0 && t->turn != prev_turn && col > 0) {
            row++;
            col = 0;
        }
        prev_turn = t->turn;
        if (col + w > width && col > 0) {
            row++;
            col = 0;
        }
        place[i].row = row;
        place[i].col = col;
        place[i].width = w;
        col += w;
        if (nl) {
            row++;
            col = 0;
        }
    }
    return col > 0 || row == 0 ? row + 1 : row;
}

int32_t tui_scroll_to(int32_t top, int32_t sel_row, int32_t h)
{
    if (h < 1)
        h = 1;
    if (sel_row < top)
        top = sel_row;
    else if (sel_row >= top + h)
        top = sel_row - h + 1;
    return top < 0 ? 0 : top;
}

int tui_split_args(char *buf, char **argv, int max)
{
    int argc = 0;
    char *p = buf, *o;
    while (*p && argc < max) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        argv[argc++] = o = p;
        while (*p && *p != ' ' && *p != '\t') {
            if (*p == '"') {
                p++;
                while (*p && *p != '"')
                    *o++ = *p++;
                if (*p == '"')
                    p++;
            } else {
                *o++ = *p++;
            }
        }
        if (*p)
            p++;
        *o = '\0';
    }
    return argc;
}
