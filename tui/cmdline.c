/*
 * cmdline.c - the studio's command line: GNU readline in callback mode,
 * fed key by key from curses and drawn into its own one-line window (no
 * readline terminal I/O). History lives in $XDG_STATE_HOME/moe-studio/
 * history (fallback ~/.local/state/moe-studio/history); Tab completes
 * command names, their options and file paths; Emacs keys come from
 * readline. Completion lists go to the log pane.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <wchar.h>
#include <readline/history.h>
#include <readline/readline.h>

#include "ui.h"

static tui_app *cl_app;
static unsigned char cl_pending[16];
static int cl_npending;
static char cl_hist_path[1024];
static FILE *cl_null;
static char *cl_line;  /* line delivered by the handler, taken after feeding */
static bool cl_got_line;

static int cl_getc(FILE *f)
{
    (void)f;
    if (cl_npending == 0)
        return EOF;
    {
        int c = cl_pending[0];
        memmove(cl_pending, cl_pending + 1, (size_t)--cl_npending);
        return c;
    }
}

static int cl_input_available(void)
{
    return cl_npending > 0;
}

static void cl_redisplay(void)
{
    if (cl_app)
        cl_app->dirty = true;
}

static void cl_noprep(int meta)
{
    (void)meta;
}

static void cl_nodeprep(void)
{
}

static void cl_on_line(char *line)
{
    cl_got_line = true;
    cl_line = line; /* NULL on EOF (Ctrl-D on an empty line) */
}

/* ---- completion ---------------------------------------------------------- */

static const char *const cl_set_opts[] = {
    "temp=", "top_k=", "top_p=", "min_p=", "typical=", "repeat_penalty=", "repeat_last_n=",
    "freq_penalty=", "presence_penalty=", "seed=", "order=", "n=", NULL};
static const char *const cl_route_opts[] = {"show", "reset", "topk", "temp", "ban", "unban",
                                            "force", "unforce", "scale", "capacity", NULL};
static const char *const cl_exit_opts[] = {"none", "entropy:", "maxprob:", "patience:",
                                           "hash:", "hashtext:", "window:", "depth:", NULL};
static const char *const *cl_words;
static bool cl_colon;

static char *cl_gen_words(const char *text, int state)
{
    static int i;
    static size_t len;
    if (!state) {
        i = 0;
        len = strlen(text);
    }
    while (cl_words && cl_words[i]) {
        const char *w = cl_words[i++];
        if (strncmp(w, text, len) == 0)
            return strdup(w);
    }
    return NULL;
}

static char *cl_gen_cmds(const char *text, int state)
{
    static size_t i, len;
    const char *t = text[0] == ':' ? text + 1 : text;
    if (!state) {
        i = 0;
        len = strlen(t);
    }
    while (i < tui_n_cmds + (size_t)(cl_app ? tui_lua_command_count(cl_app) : 0)) {
        const char *n = NULL;
        if (i < tui_n_cmds)
            n = tui_cmds[i].name;
        else
            tui_lua_command_get(cl_app, (int)(i - tui_n_cmds), &n, NULL);
        i++;
        if (n && strncmp(n, t, len) == 0) {
            size_t nl = strlen(n);
            char *r = malloc(nl + 2);
            if (r)
                snprintf(r, nl + 2, "%s%s", cl_colon ? ":" : "", n);
            return r;
        }
    }
    return NULL;
}

static char **cl_complete(const char *text, int start, int end)
{
    char first[32] = "";
    const char *p = rl_line_buffer;
    size_t n = 0;
    (void)end;
    rl_attempted_completion_over = 1;
    if (!p || p[0] != ':')
        return NULL; /* plain text: nothing to complete */
    while (p[1 + n] && p[1 + n] != ' ' && n + 1 < sizeof first) {
        first[n] = p[1 + n];
        n++;
    }
    first[n] = '\0';
    if (start <= 1 + (int)n && strchr(rl_line_buffer, ' ') == NULL) {
        cl_colon = text[0] == ':';
        return rl_completion_matches(text, cl_gen_cmds);
    }
    if (!strcmp(first, "load") || !strcmp(first, "import") || !strcmp(first, "export") ||
        !strcmp(first, "source")) {
        rl_attempted_completion_over = 0; /* readline's file names */
        return NULL;
    }
    cl_words = !strcmp(first, "set") ? cl_set_opts
               : !strcmp(first, "route") ? cl_route_opts
               : !strcmp(first, "exit") ? cl_exit_opts
               : NULL;
    if (!cl_words)
        return NULL;
    if (cl_words != cl_set_opts)
        rl_completion_append_character = '\0';
    return rl_completion_matches(text, cl_gen_words);
}

static void cl_display_matches(char **matches, int n, int maxlen)
{
    char buf[512];
    size_t off = 0;
    (void)maxlen;
    buf[0] = '\0';
    for (int i = 1; i <= n && off < sizeof buf; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i > 1 ? "  " : "",
                                matches[i]);
    if (cl_app)
        tui_log(cl_app, false, "completions: %s", buf);
}

/* ---- setup, history ------------------------------------------------------ */

static void cl_history_path(void)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char dir[900];
    if (xdg && *xdg)
        snprintf(dir, sizeof dir, "%s/moe-studio", xdg);
    else if (home && *home)
        snprintf(dir, sizeof dir, "%s/.local/state/moe-studio", home);
    else
        return;
    /* mkdir -p */
    for (char *s = dir + 1; *s; s++) {
        if (*s == '/') {
            *s = '\0';
            mkdir(dir, 0700);
            *s = '/';
        }
    }
    mkdir(dir, 0700);
    snprintf(cl_hist_path, sizeof cl_hist_path, "%s/history", dir);
}

void tui_cmdline_init(tui_app *a)
{
    cl_app = a;
    cl_null = fopen("/dev/null", "w");
    rl_readline_name = "moe-studio";
    rl_catch_signals = 0;
    rl_catch_sigwinch = 0;
    rl_change_environment = 0;
    rl_getc_function = cl_getc;
    rl_input_available_hook = cl_input_available;
    rl_redisplay_function = cl_redisplay;
    rl_prep_term_function = cl_noprep;
    rl_deprep_term_function = cl_nodeprep;
    rl_instream = stdin;
    rl_outstream = cl_null ? cl_null : stderr;
    rl_attempted_completion_function = cl_complete;
    rl_completion_display_matches_hook = cl_display_matches;
    rl_variable_bind("bell-style", "none");
    rl_variable_bind("horizontal-scroll-mode", "on");
    using_history();
    stifle_history(1000);
    cl_history_path();
    if (cl_hist_path[0])
        read_history(cl_hist_path);
}

void tui_cmdline_shutdown(void)
{
    if (cl_app && cl_app->cmd_active)
        rl_callback_handler_remove();
    if (cl_hist_path[0])
        write_history(cl_hist_path);
    cl_app = NULL;
    if (cl_null) {
        fclose(cl_null);
        cl_null = NULL;
    }
}

void tui_cmdline_open(tui_app *a, const char *initial)
{
    if (a->cmd_active)
        return;
    a->cmd_active = true;
    rl_callback_handler_install("> ", cl_on_line);
    if (initial && *initial) {
        rl_insert_text(initial);
        rl_point = rl_end;
    }
    a->dirty = true;
}

void tui_cmdline_close(tui_app *a)
{
    if (!a->cmd_active)
        return;
    rl_replace_line("", 0);
    rl_callback_handler_remove();
    a->cmd_active = false;
    a->dirty = true;
}

static void cl_feed(int byte)
{
    if (cl_npending < (int)sizeof cl_pending)
        cl_pending[cl_npending++] = (unsigned char)byte;
    while (cl_npending > 0 && !cl_got_line)
        rl_callback_read_char();
}

static void cl_feed_seq(const char *s)
{
    for (; *s && !cl_got_line; s++)
        cl_feed((unsigned char)*s);
}

void tui_cmdline_key(tui_app *a, int key, bool is_keycode)
{
    cl_got_line = false;
    cl_line = NULL;
    if (is_keycode) {
        switch (key) {
        case KEY_LEFT: cl_feed_seq("\002"); break;       /* C-b */
        case KEY_RIGHT: cl_feed_seq("\006"); break;      /* C-f */
        case KEY_UP: cl_feed_seq("\020"); break;         /* C-p */
        case KEY_DOWN: cl_feed_seq("\016"); break;       /* C-n */
        case KEY_HOME: cl_feed_seq("\001"); break;       /* C-a */
        case KEY_END: cl_feed_seq("\005"); break;        /* C-e */
        case KEY_BACKSPACE: cl_feed_seq("\010"); break;  /* C-h */
        case KEY_DC: cl_feed_seq("\004"); break;         /* C-d */
        case KEY_ENTER: cl_feed_seq("\r"); break;
        default: break;
        }
    } else if (key == 27) {
        tui_cmdline_close(a);
        return;
    } else if (key == 4 && rl_end == 0) { /* C-d on an empty line closes */
        tui_cmdline_close(a);
        return;
    } else {
        char mb[8];
        mbstate_t st;
        size_t n;
        memset(&st, 0, sizeof st);
        n = wcrtomb(mb, (wchar_t)key, &st);
        if (n == (size_t)-1)
            return;
        for (size_t i = 0; i < n && !cl_got_line; i++)
            cl_feed((unsigned char)mb[i]);
    }
    cl_npending = 0;
    a->dirty = true;
    if (cl_got_line) {
        char *line = cl_line;
        cl_got_line = false;
        cl_line = NULL;
        /* the handler is still installed: remove it before running the line */
        rl_callback_handler_remove();
        a->cmd_active = false;
        if (line && *line) {
            add_history(line);
            if (cl_hist_path[0])
                append_history(1, cl_hist_path);
            tui_app_line(a, line);
        }
        free(line);
    }
}

void tui_cmdline_draw(tui_app *a)
{
    WINDOW *w = a->cmd_w;
    int wd, h, start = 0, cur;
    (void)h;
    if (!w)
        return;
    getmaxyx(w, h, wd);
    werase(w);
    if (!a->cmd_active) {
        wattrset(w, tui_attr(TUI_C_DIM));
        mvwaddstr(w, 0, 0, a->replay ? " replay  <-/->:select m:heatmap Tab:pane z:zoom ::command ?:help q:quit"
                                     : " spc:token r:run <-/->:select i:prompt ::command Tab:pane ?:help q:quit");
        wattrset(w, A_NORMAL);
        return;
    }
    cur = rl_point;
    if (cur + 3 > wd)
        start = cur + 3 - wd;
    mvwaddstr(w, 0, 0, "> ");
    if (rl_line_buffer)
        waddnstr(w, rl_line_buffer + start, wd - 3 > 0 ? wd - 3 : 0);
    wmove(w, 0, 2 + cur - start);
}
