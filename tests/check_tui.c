/*
 * check_tui.c - the studio's Check runner: layout and widget logic without a
 * terminal (pane rectangles, bars, heat levels, token flow, argument
 * splitting, sanitising, SHA-256), the session JSON (round trip, hostile
 * input, atomic writes), the generator on real models from ../shared
 * (SKIP when absent) and pane drawing into an off-screen curses screen.
 * Links tui/libstudio.a; run one case with CK_RUN_CASE=name.
 */
#include "config.h"

#include <check.h>
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../lua/host.h"
#include "testutil.h"
#include "ui.h"

/* ---- layout ------------------------------------------------------------- */

static void check_tiling(int lines, int cols)
{
    tui_layout l;
    long area = 0;
    tui_layout_compute(lines, cols, -1, &l);
    ck_assert(!l.too_small);
    ck_assert_int_eq(l.status.y, 0);
    ck_assert_int_eq(l.cmd.y, lines - 1);
    for (int i = 0; i < TUI_PANE_COUNT; i++) {
        const tui_rect *r = &l.pane[i];
        ck_assert_msg(r->h >= 3 && r->w >= 20, "pane %d is %dx%d at %dx%d", i, r->w, r->h,
                      cols, lines);
        ck_assert(r->y >= 1 && r->y + r->h <= lines - 1);
        ck_assert(r->x >= 0 && r->x + r->w <= cols);
        area += (long)r->h * r->w;
        for (int j = 0; j < i; j++) {
            const tui_rect *q = &l.pane[j];
            bool apart = r->x + r->w <= q->x || q->x + q->w <= r->x || r->y + r->h <= q->y ||
                         q->y + q->h <= r->y;
            ck_assert_msg(apart, "panes %d and %d overlap at %dx%d", i, j, cols, lines);
        }
    }
    ck_assert_int_eq(area, (long)(lines - 2) * cols);
}

START_TEST(layout_tiles)
{
    check_tiling(24, 80);
    check_tiling(16, 60);
    check_tiling(50, 132);
    check_tiling(60, 240);
}
END_TEST

START_TEST(layout_small_and_zoom)
{
    tui_layout l;
    tui_layout_compute(24, 59, -1, &l);
    ck_assert(l.too_small);
    tui_layout_compute(15, 80, -1, &l);
    ck_assert(l.too_small);
    for (int p = 0; p < TUI_PANE_COUNT; p++) {
        tui_layout_compute(24, 80, p, &l);
        for (int i = 0; i < TUI_PANE_COUNT; i++) {
            if (i == p) {
                ck_assert_int_eq(l.pane[i].h, 22);
                ck_assert_int_eq(l.pane[i].w, 80);
                ck_assert_int_eq(l.pane[i].y, 1);
            } else {
                ck_assert_int_eq(l.pane[i].h, 0);
            }
        }
    }
    ck_assert_str_eq(tui_pane_name(TUI_PANE_EXIT), "early exit");
}
END_TEST

START_TEST(bars_and_heat)
{
    ck_assert_int_eq(tui_bar_cells(0, 10, 8), 0);
    ck_assert_int_eq(tui_bar_cells(10, 10, 8), 8);
    ck_assert_int_eq(tui_bar_cells(5, 10, 8), 4);
    ck_assert_int_eq(tui_bar_cells(20, 10, 8), 8);
    ck_assert_int_eq(tui_bar_cells(1, 0, 8), 0);
    ck_assert_int_eq(tui_bar_cells(NAN, 1, 8), 0);
    ck_assert_int_eq(tui_heat_level(0, 1, 8), 0);
    ck_assert_int_eq(tui_heat_level(1e-9, 1, 8), 1);
    ck_assert_int_eq(tui_heat_level(1, 1, 8), 7);
    ck_assert_int_eq(tui_heat_level(0.5, 1, 8), 4);
    ck_assert_int_eq(tui_heat_char(0), ' ');
    ck_assert_int_eq(tui_heat_char(7), '#');
    ck_assert_int_eq(tui_heat_char(99), '#');
}
END_TEST

START_TEST(token_display_and_width)
{
    char buf[64];
    ck_assert(tui_tok_display("a\n", buf, sizeof buf));
    ck_assert_str_eq(buf, "a\xe2\x86\xb5");
    ck_assert(!tui_tok_display("\tb", buf, sizeof buf));
    ck_assert_str_eq(buf, "\xe2\x86\x92" "b");
    tui_tok_display("", buf, sizeof buf);
    ck_assert_int_eq(tui_str_width(buf), 1);
    ck_assert_int_eq(tui_str_width("abc"), 3);
    ck_assert_int_eq(tui_str_width("\xe6\x97\xa5\xe6\x9c\xac"), 4); /* two CJK */
    ck_assert_int_eq(tui_str_width("\xe2\x86\xb5"), 1);
}
END_TEST

static tui_tok *mk_tok(const char *text, bool sampled)
{
    tui_tok *t = tui_tok_new(NULL, false);
    t->text = strdup(text);
    t->sampled = sampled;
    return t;
}

START_TEST(transcript_flow)
{
    tui_doc d;
    tui_place pl[8];
    int32_t rows;
    tui_doc_init(&d);
    tui_doc_append(&d, mk_tok("Hello", false));  /* 0: row 0 col 0 */
    tui_doc_append(&d, mk_tok(" world", true));  /* 1: does not fit in 8: row 1 */
    tui_doc_append(&d, mk_tok("!\n", true));     /* 2: row 1 col 6, then a break */
    tui_doc_append(&d, mk_tok("x", true));       /* 3: row 2 col 0 */
    tui_doc_begin_turn(&d, "again");
    tui_doc_append(&d, mk_tok("y", false));      /* 4: new turn: row 3 */
    rows = tui_flow(&d, 8, pl);
    ck_assert_int_eq(pl[0].row, 0);
    ck_assert_int_eq(pl[0].width, 5);
    ck_assert_int_eq(pl[1].row, 1);
    ck_assert_int_eq(pl[1].col, 0);
    ck_assert_int_eq(pl[2].row, 1);
    ck_assert_int_eq(pl[2].col, 6);
    ck_assert_int_eq(pl[2].width, 2);
    ck_assert_int_eq(pl[3].row, 2);
    ck_assert_int_eq(pl[3].col, 0);
    ck_assert_int_eq(pl[4].row, 3);
    ck_assert_int_eq(rows, 4);
    ck_assert_int_eq(d.n_turn, 2);
    ck_assert_int_eq(d.turns[0].n_prompt, 1);
    ck_assert_int_eq(d.turns[0].n_gen, 3);
    ck_assert_int_eq(d.toks[4]->turn, 1);
    /* scrolling keeps a row in view */
    ck_assert_int_eq(tui_scroll_to(0, 3, 2), 2);
    ck_assert_int_eq(tui_scroll_to(5, 3, 2), 3);
    ck_assert_int_eq(tui_scroll_to(2, 3, 2), 2);
    tui_doc_free(&d);
}
END_TEST

START_TEST(split_args)
{
    char buf[] = "route  ban 3 \"a b\"  x";
    char *argv[8];
    int argc = tui_split_args(buf, argv, 8);
    ck_assert_int_eq(argc, 5);
    ck_assert_str_eq(argv[0], "route");
    ck_assert_str_eq(argv[1], "ban");
    ck_assert_str_eq(argv[2], "3");
    ck_assert_str_eq(argv[3], "a b");
    ck_assert_str_eq(argv[4], "x");
}
END_TEST

START_TEST(sanitize_and_sha)
{
    char *s = tui_sanitize("\x01" "a\xff\xc3\xa9\n", 6);
    char h[65];
    ck_assert_str_eq(s, "\\x01a\\xff\xc3\xa9\n");
    free(s);
    s = tui_sanitize("\xed\xa0\x80", 3); /* a surrogate is not UTF-8 */
    ck_assert_str_eq(s, "\\xed\\xa0\\x80");
    free(s);
    moe_sha256("abc", 3, h);
    ck_assert_str_eq(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    moe_sha256("", 0, h);
    ck_assert_str_eq(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    {
        /* 1,000 bytes: several blocks and the length in the padding */
        char big[1000];
        memset(big, 'a', sizeof big);
        moe_sha256(big, sizeof big, h);
        ck_assert_str_eq(h, "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
    }
}
END_TEST

/* ---- sessions --------------------------------------------------------------- */

static void mk_doc(tui_doc *d)
{
    tui_dims dm = {.n_layer = 3, .n_expert = 4, .n_sel = 3, .lens_k = 2};
    char **v = calloc(10, sizeof *v);
    tui_doc_init(d);
    d->dims = dm;
    d->meta.path = strdup("/x/m.gguf");
    d->meta.sha256 = strdup("00ff");
    d->meta.name = strdup("m");
    d->meta.arch = strdup("llama");
    d->meta.ftype = strdup("f32");
    d->meta.n_vocab = 10;
    d->meta.n_layer = 3;
    d->meta.n_expert = 4;
    d->meta.n_expert_used = 2;
    d->meta.n_params = 123456789012LL;
    for (int i = 0; i < 10; i++) {
        char b[16];
        snprintf(b, sizeof b, i == 3 ? "\"q\\%d\"" : " w%d", i);
        v[i] = strdup(b);
    }
    tui_doc_set_vocab(d, v, 10);
    d->set.sp.seed = 18446744073709551615ULL;
    d->set.sp.temp = 0.7f;
    tui_doc_begin_turn(d, "hi \"there\"");
    for (int i = 0; i < 5; i++) {
        tui_tok *t = tui_tok_new(&dm, i != 4);
        t->id = i + 1;
        t->pos = i;
        t->text = strdup(d->vocab[i + 1]);
        t->sampled = i >= 2;
        t->prompt = i < 2;
        t->time_ms = 0.1f * (float)i + 0.013f;
        if (t->sampled) {
            t->logprob = -0.3f * (float)i;
            t->n_stage = 2;
            t->stage[0] = MOE_STAGE_TOP_K;
            t->stage[1] = MOE_STAGE_TEMP;
            t->n_cand[0] = 3;
            t->n_cand[1] = 1;
            for (int j = 0; j < 3; j++) {
                t->cand[0][j].id = (i + j) % 10;
                t->cand[0][j].p = 1.0f / (float)(j + 3);
            }
            t->cand[1][0].id = t->id;
            t->cand[1][0].p = 1;
        }
        if (t->traced) {
            t->exit_layer = i % 3;
            for (int il = 0; il < 3; il++) {
                t->layer_moe[il] = il != 1;
                t->hnorm[il] = 1.5f * (float)(il + i);
                t->lens_entropy[il] = il == 2 && i == 0 ? NAN : 0.25f * (float)il;
                t->lens_id[il * 2] = (il + i) % 10;
                t->lens_p[il * 2] = 0.6f;
                if (il != 0) {
                    t->lens_id[il * 2 + 1] = 9;
                    t->lens_p[il * 2 + 1] = 0.123456789f;
                }
                if (il == 1)
                    continue;
                t->sel[il * 3] = (i + il) % 4;
                t->sel[il * 3 + 1] = (i + il + 1) % 4;
                t->sel_w[il * 3] = 0.625f;
                t->sel_w[il * 3 + 1] = 0.375f;
                for (int e = 0; e < 4; e++)
                    t->probs[il * 4 + e] = 0.1f * (float)(e + 1) / 1.0f;
            }
        }
        tui_doc_append(d, t);
    }
    tui_doc_begin_turn(d, "second");
}

START_TEST(session_round_trip)
{
    tui_doc d, e;
    char err[256], *j1, *j2;
    mk_doc(&d);
    j1 = tui_session_json(&d);
    ck_assert_ptr_nonnull(j1);
    tui_doc_init(&e);
    ck_assert_msg(tui_session_parse(&e, j1, err, sizeof err), "%s", err);
    ck_assert_int_eq(e.n_tok, 5);
    ck_assert_int_eq(e.n_turn, 2);
    ck_assert_int_eq(e.dims.n_sel, 3);
    ck_assert_int_eq(e.toks[1]->sel[2 * 3 + 1], (1 + 2 + 1) % 4);
    ck_assert(!e.toks[4]->traced);
    ck_assert(e.toks[3]->sampled);
    ck_assert_int_eq(e.toks[3]->n_cand[0], 3);
    ck_assert(isnan(e.toks[0]->lens_entropy[2]));
    ck_assert(e.set.sp.seed == 18446744073709551615ULL);
    ck_assert_str_eq(e.vocab[3], "\"q\\3\"");
    ck_assert_str_eq(e.turns[0].prompt, "hi \"there\"");
    j2 = tui_session_json(&e);
    ck_assert_ptr_nonnull(j2);
    ck_assert_str_eq(j1, j2);
    free(j1);
    free(j2);
    tui_doc_free(&d);
    tui_doc_free(&e);
}
END_TEST

START_TEST(session_bad_input)
{
    static const char *const bad[] = {
        "not json",
        "{\"format\":\"other\",\"version\":1,\"tokens\":[]}",
        "{\"format\":\"moe-studio-session\",\"version\":99,\"tokens\":[]}",
        "{\"format\":\"moe-studio-session\",\"version\":1}",
        "{\"format\":\"moe-studio-session\",\"version\":1,\"dims\":{\"n_layer\":2,"
        "\"n_expert\":2,\"n_sel\":9},\"tokens\":[]}",
        "{\"format\":\"moe-studio-session\",\"version\":1,\"tokens\":[3]}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tui_doc d;
        char err[256] = "";
        tui_doc_init(&d);
        ck_assert_msg(!tui_session_parse(&d, bad[i], err, sizeof err), "accepted %s", bad[i]);
        ck_assert_msg(err[0] != '\0', "no message for %s", bad[i]);
        tui_doc_free(&d);
    }
    /* out-of-range values are clipped, not trusted */
    {
        tui_doc d;
        char err[256];
        const char *js = "{\"format\":\"moe-studio-session\",\"version\":1,\"dims\":"
                         "{\"n_layer\":1,\"n_expert\":2,\"n_sel\":2,\"lens_k\":1},\"tokens\":"
                         "[{\"id\":1,\"exit_layer\":7,\"layers\":[{\"moe\":true,\"experts\":"
                         "[5,1,-3,0],\"weights\":[1,1,1,1],\"lens\":[[-1,2],[3,0.5]]},{}]}]}";
        tui_doc_init(&d);
        ck_assert_msg(tui_session_parse(&d, js, err, sizeof err), "%s", err);
        ck_assert_int_eq(d.toks[0]->sel[0], 1);
        ck_assert_int_eq(d.toks[0]->sel[1], 0);
        ck_assert_int_eq(d.toks[0]->exit_layer, 0);
        ck_assert_int_eq(d.toks[0]->lens_id[0], 3);
        tui_doc_free(&d);
    }
}
END_TEST

START_TEST(atomic_write)
{
    char path[512], bad[512], *txt;
    size_t len;
    tu_tmp_path(path, sizeof path, "atomic.json");
    ck_assert(tui_write_atomic(path, "old", 3, NULL, 0));
    ck_assert(tui_write_atomic(path, "new!", 4, NULL, 0));
    txt = tu_read_file(path, &len);
    ck_assert_int_eq(len, 4);
    ck_assert(memcmp(txt, "new!", 4) == 0);
    free(txt);
    /* a failing write (the target is a directory) leaves no temp file */
    tu_tmp_path(bad, sizeof bad, "adir");
    mkdir(bad, 0700);
    {
        char err[256] = "";
        ck_assert(!tui_write_atomic(bad, "x", 1, err, sizeof err));
        ck_assert(err[0] != '\0');
    }
    {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "ls %s.tmp.* >/dev/null 2>&1", bad);
        ck_assert_int_ne(system(cmd), 0);
    }
}
END_TEST

START_TEST(export_kinds)
{
    tui_doc d;
    char p[512], err[256], *txt;
    size_t len;
    mk_doc(&d);
    ck_assert(tui_export_any(&d, tu_tmp_path(p, sizeof p, "h.svg"), err, sizeof err));
    txt = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(strstr(txt, "<svg"));
    ck_assert_ptr_nonnull(strstr(txt, "expert load"));
    free(txt);
    ck_assert(tui_export_any(&d, tu_tmp_path(p, sizeof p, "r.html"), err, sizeof err));
    txt = tu_read_file(p, &len);
    ck_assert_ptr_nonnull(strstr(txt, "<svg"));
    ck_assert_ptr_nonnull(strstr(txt, "Transcript"));
    ck_assert_ptr_null(strstr(txt, "src=\"http")); /* self-contained */
    free(txt);
    ck_assert(tui_export_any(&d, tu_tmp_path(p, sizeof p, "s.csv"), err, sizeof err));
    txt = tu_read_file(p, &len);
    ck_assert(strncmp(txt, "layer,expert,load", 17) == 0);
    /* layer 0 expert 0: tokens 0 (sel 0,1), 3 (sel 3,0) -> load 2 */
    ck_assert_ptr_nonnull(strstr(txt, "\n0,0,2,"));
    free(txt);
    ck_assert(!tui_export_any(&d, tu_tmp_path(p, sizeof p, "x.doc"), err, sizeof err));
    tui_doc_free(&d);
}
END_TEST

/* ---- the generator on real models ---------------------------------------- */

static void sink(tui_tok *t, void *ud)
{
    tui_doc_append(ud, t);
}

static bool gen_doc(const char *model, int n, tui_doc *d, tui_gen *g)
{
    char err[512];
    int32_t nv;
    tui_gen_init(g);
    g->set.sp.temp = 0;
    if (!tui_gen_load(g, model, err, sizeof err)) {
        ck_abort_msg("%s", err);
        return false;
    }
    tui_doc_init(d);
    tui_gen_meta(g, &d->meta);
    d->dims = g->dims;
    {
        char **voc = tui_gen_vocab(g, &nv);
        tui_doc_set_vocab(d, voc, nv);
    }
    for (int i = 0; i < n; i++) {
        bool done;
        ck_assert_msg(tui_gen_step(g, sink, d, &done, err, sizeof err), "%s", err);
        if (done)
            break;
    }
    tui_settings_free(&d->set);
    tui_settings_copy(&d->set, &g->set);
    return true;
}

START_TEST(gen_stories)
{
    char p[512], *j1, *j2, err[256];
    tui_doc d, e;
    tui_gen g;
    size_t glen = 0;
    char *golden;
    if (!tu_shared(p, sizeof p, "models/real/stories260K.gguf", "gen_stories"))
        return;
    gen_doc(p, 12, &d, &g);
    ck_assert_int_eq(d.n_tok, 13); /* BOS + 12 */
    ck_assert(!d.toks[0]->sampled);
    ck_assert(d.toks[5]->sampled && d.toks[5]->traced);
    ck_assert_int_eq(d.toks[5]->exit_layer, 4);
    ck_assert(d.toks[5]->logprob <= 0);
    ck_assert_int_eq(d.toks[5]->pos, 5);
    ck_assert_int_eq(d.meta.n_layer, 5);
    ck_assert_int_eq(strlen(d.meta.sha256), 64);
    ck_assert_int_eq(d.toks[5]->n_top, TUI_N_CAND);
    /* greedy: the chosen token is the model's best candidate */
    ck_assert_int_eq(d.toks[5]->top[0].id, d.toks[5]->id);
    ck_assert(fabsf(logf(d.toks[5]->top[0].p) - d.toks[5]->logprob) < 1e-4f);
    ck_assert(d.toks[5]->top[1].p <= d.toks[5]->top[0].p);
    /* the text matches the golden greedy output */
    {
        char *txt = calloc(1, 4096);
        size_t off = 0;
        for (int32_t i = 1; i < d.n_tok; i++)
            off += (size_t)snprintf(txt + off, 4096 - off, "%s", d.toks[i]->text);
        tu_shared(p, sizeof p, "golden/stories260K.greedy200.txt", "gen_stories");
        golden = tu_read_file(p, &glen);
        ck_assert_ptr_nonnull(golden);
        ck_assert_msg(strncmp(golden, txt + (txt[0] == ' '), strlen(txt) - 1) == 0,
                      "'%s' vs golden", txt);
        free(golden);
        free(txt);
    }
    j1 = tui_session_json(&d);
    tui_doc_init(&e);
    ck_assert_msg(tui_session_parse(&e, j1, err, sizeof err), "%s", err);
    j2 = tui_session_json(&e);
    ck_assert_str_eq(j1, j2);
    free(j1);
    free(j2);
    tui_doc_free(&e);
    tui_doc_free(&d);
    tui_gen_free(&g);
}
END_TEST

START_TEST(gen_mixtral_route)
{
    char p[512], msg[512];
    tui_doc d;
    tui_gen g;
    char *av[4] = {(char *)"route", (char *)"ban", (char *)"0", NULL};
    if (!tu_shared(p, sizeof p, "models/synthetic/tiny-mixtral.f32.gguf", "gen_mixtral"))
        return;
    gen_doc(p, 4, &d, &g);
    ck_assert_int_eq(d.dims.n_expert, 8);
    for (int32_t i = 0; i < d.n_tok; i++) {
        int n = 0;
        for (int s = 0; s < d.dims.n_sel; s++) {
            int32_t e = d.toks[i]->sel[s];
            ck_assert(e >= -1 && e < 8);
            n += e >= 0;
        }
        ck_assert_int_eq(n, 2);
    }
    /* steering through the command: expert 0 never chosen afterwards */
    ck_assert_msg(tui_gen_command(&g, 3, av, msg, sizeof msg), "%s", msg);
    ck_assert_int_eq(g.set.n_route, 1);
    for (int i = 0; i < 6; i++) {
        bool done;
        ck_assert(tui_gen_step(&g, sink, &d, &done, msg, sizeof msg));
    }
    for (int32_t il = 0; il < d.dims.n_layer; il++)
        for (int s = 0; s < d.dims.n_sel; s++)
            ck_assert_int_ne(d.toks[d.n_tok - 1]->sel[il * d.dims.n_sel + s], 0);
    av[1] = (char *)"nonsense";
    ck_assert(!tui_gen_command(&g, 3, av, msg, sizeof msg));
    av[0] = (char *)"exit";
    av[1] = (char *)"depth:1";
    ck_assert_msg(tui_gen_command(&g, 2, av, msg, sizeof msg), "%s", msg);
    {
        bool done;
        ck_assert(tui_gen_step(&g, sink, &d, &done, msg, sizeof msg));
        ck_assert_int_eq(d.toks[d.n_tok - 1]->exit_layer, 0);
    }
    av[0] = (char *)"set";
    av[1] = (char *)"temp=bogus";
    ck_assert(!tui_gen_command(&g, 2, av, msg, sizeof msg));
    av[1] = (char *)"top_k=5";
    ck_assert(tui_gen_command(&g, 2, av, msg, sizeof msg));
    ck_assert_int_eq(g.set.sp.top_k, 5);
    tui_doc_free(&d);
    tui_gen_free(&g);
}
END_TEST

/* ---- panes drawn into an off-screen curses screen ------------------------ */

static char *row_text(WINDOW *w, int y, char *buf, int n)
{
    mvwinnstr(w, y, 0, buf, n - 1);
    return buf;
}

static bool win_has(WINDOW *w, const char *needle)
{
    int h, wd;
    char buf[512];
    getmaxyx(w, h, wd);
    (void)wd;
    for (int y = 0; y < h; y++)
        if (strstr(row_text(w, y, buf, sizeof buf), needle))
            return true;
    return false;
}

START_TEST(panes_follow_selection)
{
    FILE *out = fopen("/dev/null", "w"), *in = fopen("/dev/null", "r");
    SCREEN *scr = newterm("xterm-256color", out, in);
    tui_app a;
    WINDOW *w;
    if (!scr) {
        printf("SKIP: panes_follow_selection: no terminfo for xterm-256color\n");
        fclose(out);
        fclose(in);
        return;
    }
    set_term(scr);
    resize_term(24, 80);
    tui_colors_setup(0);
    tui_app_init(&a);
    tui_doc_free(&a.doc);
    mk_doc(&a.doc);
    a.replay = true;
    w = newwin(8, 60, 0, 0);
    /* token 0, layer 0: experts 0 and 1; token 1, layer 0: experts 1 and 2 */
    tui_app_select(&a, 0);
    werase(w);
    tui_draw_router(&a, w, 8, 60);
    ck_assert(win_has(w, "e0:.62 e1:.38"));
    ck_assert(win_has(w, "dense layer"));
    tui_app_select(&a, 1);
    werase(w);
    tui_draw_router(&a, w, 8, 60);
    ck_assert(win_has(w, "e1:.62 e2:.38"));
    ck_assert(win_has(w, "#1 ' w2'"));
    werase(w);
    tui_draw_exit(&a, w, 8, 60);
    ck_assert(win_has(w, "lens of #1"));
    ck_assert(win_has(w, "' w1' 0.60"));
    tui_app_select(&a, 3);
    werase(w);
    tui_draw_inspector(&a, w, 8, 60);
    ck_assert(win_has(w, "#3 pos 3 id 4"));
    ck_assert(win_has(w, "top_k"));
    werase(w);
    tui_draw_transcript(&a, w, 8, 60);
    ck_assert(win_has(w, " w1 w2\"q\\3\" w4 w5"));
    a.heat_mode = TUI_HEAT_CUM;
    werase(w);
    tui_draw_heatmap(&a, w, 8, 60);
    ck_assert(win_has(w, "cumulative load"));
    ck_assert(win_has(w, "L0"));
    tui_app_select(&a, 99); /* clamps */
    ck_assert_int_eq(a.sel, 4);
    ck_assert(tui_app_key(&a, KEY_LEFT));
    ck_assert_int_eq(a.sel, 3);
    ck_assert(!tui_app_key(&a, 'Q'));
    delwin(w);
    tui_app_free(&a);
    endwin();
    delscreen(scr);
    fclose(out);
    fclose(in);
}
END_TEST


/* ---- the studio's Lua side (lua_ui.c) without a terminal ------------------ */

static bool log_has(const tui_app *a, const char *needle)
{
    for (int i = 0; i < a->log_n; i++) {
        int k = (a->log_head - a->log_n + i + TUI_LOG_LINES) % TUI_LOG_LINES;
        if (a->log[k] && strstr(a->log[k], needle))
            return true;
    }
    return false;
}

static int log_count(const tui_app *a, const char *needle)
{
    int n = 0;
    for (int i = 0; i < a->log_n; i++) {
        int k = (a->log_head - a->log_n + i + TUI_LOG_LINES) % TUI_LOG_LINES;
        n += a->log[k] && strstr(a->log[k], needle);
    }
    return n;
}

static bool log_err_has(const tui_app *a, const char *needle)
{
    for (int i = 0; i < a->log_n; i++) {
        int k = (a->log_head - a->log_n + i + TUI_LOG_LINES) % TUI_LOG_LINES;
        if (a->log[k] && a->log_err[k] && strstr(a->log[k], needle))
            return true;
    }
    return false;
}

/* The value of a Lua expression as a string (caller frees). */
static char *lua_val(host *h, const char *expr)
{
    char *out = NULL;
    ck_assert_msg(host_eval(h, expr, &out), "eval %s: %s", expr, out ? out : "");
    return out;
}

START_TEST(lua_commands_panes_keys)
{
    tui_app a;
    host *h = host_new(NULL);
    char name[16];
    ck_assert_ptr_nonnull(h);
    tui_app_init(&a);
    tui_lua_attach(&a, h);
    tui_app_line(&a, ":lua 1+1");
    ck_assert(log_has(&a, "lua> 1+1"));
    ck_assert(log_has(&a, "= 2"));
    tui_app_line(&a, ":lua error('kaboom')");
    ck_assert(log_err_has(&a, "kaboom"));
    ck_assert_ptr_nonnull(a.lua_error); /* the traceback, for :traceback */
    ck_assert_ptr_nonnull(strstr(a.lua_error, "stack traceback"));
    tui_app_line(&a, ":traceback");
    ck_assert_int_eq(a.n_lpane, 1);
    ck_assert_str_eq(a.lpane[0].title, "lua error");
    /* a command registered from Lua gets the raw text after its name */
    tui_app_line(&a, ":lua moe.ui.command('hi', function(s) print('hi [' .. s .. ']') end, 'x')");
    tui_app_line(&a, ":hi  a \"b\"  c");
    ck_assert(log_has(&a, "hi [a \"b\"  c]"));
    tui_app_line(&a, ":nosuchthing");
    ck_assert(log_err_has(&a, "unknown command ':nosuchthing'"));
    /* a built-in wins over a Lua command of the same name */
    tui_app_line(&a, ":lua moe.ui.command('pane', function() print('LUA' .. 'PANE') end)");
    tui_app_line(&a, ":pane");
    ck_assert(!log_has(&a, "LUAPANE"));
    ck_assert(log_has(&a, "panes: 1 lua error"));
    /* text panes: reopened by title, set by id, shown in the inspector's place */
    tui_app_line(&a, ":lua pid = moe.ui.pane('notes', 'one\\ntwo')");
    ck_assert_int_eq(a.n_lpane, 2);
    ck_assert_int_eq(a.lpane_show, 2);
    ck_assert_str_eq(a.lpane[1].text, "one\ntwo");
    tui_app_line(&a, ":lua moe.ui.pane_set(pid, 'three')");
    ck_assert_str_eq(a.lpane[1].text, "three");
    tui_app_line(&a, ":lua moe.ui.pane('notes', 'four')");
    ck_assert_int_eq(a.n_lpane, 2);
    ck_assert_str_eq(a.lpane[1].text, "four");
    tui_app_line(&a, ":pane close");
    ck_assert_int_eq(a.lpane_show, 0);
    tui_app_line(&a, ":pane notes");
    ck_assert_int_eq(a.lpane_show, 2);
    /* progress bars */
    tui_app_line(&a, ":lua moe.ui.progress('job', 0.25)");
    ck_assert_str_eq(a.bar[0].label, "job");
    ck_assert(fabs(a.bar[0].frac - 0.25) < 1e-9);
    tui_app_line(&a, ":lua moe.ui.progress('job', -1)");
    ck_assert_ptr_null(a.bar[0].label);
    /* keys */
    ck_assert(tui_lua_key_name(KEY_F(7), true, name, sizeof name));
    ck_assert_str_eq(name, "F7");
    ck_assert(tui_lua_key_name(24, false, name, sizeof name));
    ck_assert_str_eq(name, "C-x");
    ck_assert(tui_lua_key_name(0xe9, false, name, sizeof name));
    ck_assert_str_eq(name, "\xc3\xa9");
    ck_assert(!tui_lua_key_name('\t', false, name, sizeof name));
    ck_assert(!tui_lua_key_name(KEY_LEFT, true, name, sizeof name));
    tui_app_line(&a, ":lua moe.ui.bind('F7', function(k) print('pressed ' .. k) end, 'demo')");
    ck_assert_int_eq(a.n_lkey, 1);
    ck_assert(tui_lua_key(&a, KEY_F(7), true));
    ck_assert(log_has(&a, "pressed F7"));
    ck_assert(!tui_lua_key(&a, KEY_F(8), true));
    /* notify goes to the log, errors in red */
    tui_app_line(&a, ":lua moe.ui.notify('careful', 'error')");
    ck_assert(log_err_has(&a, "careful"));
    tui_app_free(&a);
    host_free(h);
}
END_TEST

START_TEST(lua_events_from_records)
{
    tui_app a;
    host *h = host_new(NULL);
    char *v, path[512];
    char err[256];
    ck_assert_ptr_nonnull(h);
    tui_app_init(&a);
    tui_doc_free(&a.doc);
    mk_doc(&a.doc);
    tui_lua_attach(&a, h);
    free(lua_val(h, "got = {}; "
                    "moe.on('on_token', function(id, piece, pos) got[#got + 1] = "
                    "  string.format('tok %d %s %d', id, piece, pos) end); "
                    "moe.on('on_exit', function(pos, t, l, n) got[#got + 1] = "
                    "  string.format('exit %d %d %d %d', pos, t, l, n) end); "
                    "moe.on('on_route', function(e) local l0 = e.layers[1]; got[#got + 1] = "
                    "  string.format('route %d %s %d,%d %s', e.pos, tostring(e.prefill), "
                    "  l0.sel[1], l0.sel[2], tostring(e.layers[2].moe)) end)"));
    for (int i = 0; i < a.doc.n_tok; i++)
        tui_lua_token(&a, a.doc.toks[i]);
    v = lua_val(h, "table.concat(got, '|')");
    ck_assert_str_eq(v, "tok 1  w1 0|exit 0 1 0 3|route 0 true 0,1 false|"
                        "tok 2  w2 1|exit 1 2 1 3|route 1 true 1,2 false|"
                        "tok 3 \"q\\3\" 2|route 2 false 2,3 false|"
                        "tok 4  w4 3|exit 3 4 0 3|route 3 false 3,0 false|"
                        "tok 5  w5 4");
    free(v);
    /* a handler that replaces the document: the record is not used after */
    tui_lua_step(&a, "idle", 5, "generating");
    ck_assert(tui_session_save(&a.doc, tu_tmp_path(path, sizeof path, "lua_ev.json"), err,
                               sizeof err));
    free(lua_val(h, "got = {}; moe.on('on_step', function(w, i, info) "
                    "got[#got + 1] = w .. ' ' .. i .. ' ' .. tostring(info) end)"));
    tui_lua_step(&a, "idle", 5, "generating");
    v = lua_val(h, "table.concat(got, '|')");
    ck_assert_str_eq(v, "idle 5 generating");
    free(v);
    {
        char code[700];
        snprintf(code, sizeof code,
                 "got = {}; moe.on('on_token', function() "
                 "  if not imported then imported = true; assert(moe.session_import('%s')) end "
                 "end)", path);
        free(lua_val(h, code));
    }
    tui_lua_token(&a, a.doc.toks[0]);
    ck_assert(a.replay);
    v = lua_val(h, "table.concat(got, '|')");
    /* the first on_token handler ran, then the import stopped the rest */
    ck_assert_str_eq(v, "tok 1  w1 0");
    free(v);
    tui_app_free(&a);
    host_free(h);
}
END_TEST

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[700];
    FILE *f;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    f = fopen(p, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(lua_plugins_isolated)
{
    tui_app a;
    host_params hp = host_default_params();
    host *h;
    char dir[512];
    hp.plugin_instr_limit = 2000000;
    h = host_new(&hp);
    ck_assert_ptr_nonnull(h);
    tui_app_init(&a);
    tui_lua_attach(&a, h);
    tu_tmp_path(dir, sizeof dir, "lua_plugins");
    mkdir(dir, 0700);
    write_file(dir, "a_good.lua", "moe.ui.command('good', function() print('good ran') end)\n"
                                  "moe.ui.command('spin', function() while true do end end)\n");
    write_file(dir, "b_bad.lua", "local x = nil\nx.boom = 1\n");
    write_file(dir, "c_loop.lua", "while true do end\n");
    write_file(dir, "d_io.lua", "io.write('sandbox?')\n");
    write_file(dir, "e_sess.lua", "local ok, err = moe.session_export('/tmp/x.json')\n"
                                  "assert(not ok and err:find('sandboxed'), err)\n"
                                  "error('session refused')\n");
    ck_assert_int_eq(host_load_plugins(h, dir), 1);
    ck_assert_int_eq(host_plugin_count(h), 5);
    /* no files through the studio's session callback either */
    ck_assert(log_err_has(&a, "session refused"));
    ck_assert(log_err_has(&a, "plugin b_bad"));
    ck_assert(log_err_has(&a, "instruction limit exceeded"));
    ck_assert(log_err_has(&a, "plugin d_io")); /* no io in the sandbox */
    tui_app_line(&a, ":good");
    ck_assert(log_has(&a, "good ran"));
    /* Ctrl-C (the SIGINT flag) stops trusted code only ... */
    tui_sig_int = 1;
    tui_app_line(&a, ":lua while true do end");
    ck_assert(log_err_has(&a, "error: interrupted"));
    /* ... a runaway plugin command is stopped by its instruction limit and
     * the plugin disabled */
    tui_app_line(&a, ":spin");
    tui_sig_int = 0;
    ck_assert(log_err_has(&a, "plugin a_good disabled: instruction limit exceeded"));
    tui_app_line(&a, ":good"); /* its commands stop running */
    ck_assert_int_eq(log_count(&a, "good ran"), 1);
    tui_app_line(&a, ":plugins");
    ck_assert(log_has(&a, "plugins (0 of 5 on): a_good off, b_bad off, c_loop off, d_io off, "
                          "e_sess off"));
    ck_assert_int_eq(a.lpane_show, 1);
    ck_assert_ptr_nonnull(strstr(a.lpane[0].text, "c_loop           off"));
    ck_assert_ptr_nonnull(strstr(a.lpane[0].text, "instruction limit"));
    /* trusted :lua still works after all that */
    tui_app_line(&a, ":lua 6*7");
    ck_assert(log_has(&a, "= 42"));
    tui_app_free(&a);
    host_free(h);
}
END_TEST

static Suite *tui_suite(void)
{
    Suite *s = suite_create("tui");
    TCase *tc = tcase_create("logic");
    tcase_add_test(tc, layout_tiles);
    tcase_add_test(tc, layout_small_and_zoom);
    tcase_add_test(tc, bars_and_heat);
    tcase_add_test(tc, token_display_and_width);
    tcase_add_test(tc, transcript_flow);
    tcase_add_test(tc, split_args);
    tcase_add_test(tc, sanitize_and_sha);
    tcase_add_test(tc, session_round_trip);
    tcase_add_test(tc, session_bad_input);
    tcase_add_test(tc, atomic_write);
    tcase_add_test(tc, export_kinds);
    tcase_add_test(tc, panes_follow_selection);
    tcase_add_test(tc, lua_commands_panes_keys);
    tcase_add_test(tc, lua_events_from_records);
    tcase_add_test(tc, lua_plugins_isolated);
    suite_add_tcase(s, tc);
    tc = tcase_create("models");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, gen_stories);
    tcase_add_test(tc, gen_mixtral_route);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;
    setlocale(LC_ALL, "C.UTF-8");
    sr = srunner_create(tui_suite());
    srunner_set_log(sr, "tests/check_tui.check.log");
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
