/*
 * term.c - the terminal layer of the studio: curses start and restore on
 * every exit path (normal, error, atexit, SIGINT/SIGTERM/SIGHUP, crash
 * handler that restores then re-raises), UTF-8 locale, the semantic colour
 * table (256 colours, 8 colours, monochrome) and the signal self-pipe.
 * Knows nothing of panes or the engine.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ui.h"

int tui_color_depth;
volatile sig_atomic_t tui_sig_int;
volatile sig_atomic_t tui_sig_term;

static volatile sig_atomic_t term_active;
static SCREEN *term_screen;
static int term_pipe[2] = {-1, -1};
static attr_t term_attr_tab[TUI_C_COUNT];

typedef struct {
    short fg256, bg256, fg8, bg8;
    attr_t extra;  /* added in colour modes */
    attr_t mono;   /* monochrome attributes */
} term_color_def;

/* -1 = terminal default colour */
static const term_color_def term_colors[TUI_C_COUNT] = {
    [TUI_C_NORMAL] = {-1, -1, -1, -1, 0, A_NORMAL},
    [TUI_C_TITLE] = {252, 238, COLOR_WHITE, COLOR_BLUE, 0, A_REVERSE},
    [TUI_C_TITLE_FOCUS] = {16, 45, COLOR_BLACK, COLOR_CYAN, A_BOLD, A_REVERSE | A_BOLD},
    [TUI_C_STATUS] = {16, 250, COLOR_BLACK, COLOR_WHITE, 0, A_REVERSE},
    [TUI_C_PROMPT] = {110, -1, COLOR_CYAN, -1, 0, A_BOLD},
    [TUI_C_TOK_A] = {255, 236, COLOR_WHITE, -1, 0, A_NORMAL},
    [TUI_C_TOK_B] = {255, 239, COLOR_YELLOW, -1, 0, A_UNDERLINE},
    [TUI_C_SELECTED] = {16, 214, COLOR_BLACK, COLOR_YELLOW, A_BOLD, A_REVERSE | A_BOLD},
    [TUI_C_BAR] = {214, -1, COLOR_YELLOW, -1, A_BOLD, A_BOLD},
    [TUI_C_BAR_CUM] = {75, -1, COLOR_CYAN, -1, 0, A_NORMAL},
    [TUI_C_DIM] = {244, -1, COLOR_WHITE, -1, A_DIM, A_DIM},
    [TUI_C_ERROR] = {203, -1, COLOR_RED, -1, A_BOLD, A_BOLD},
    [TUI_C_OK] = {114, -1, COLOR_GREEN, -1, 0, A_NORMAL},
    [TUI_C_EXIT] = {16, 203, COLOR_BLACK, COLOR_RED, A_BOLD, A_REVERSE},
    [TUI_C_HEAT0] = {240, 234, COLOR_WHITE, COLOR_BLACK, 0, A_NORMAL},
    [TUI_C_HEAT1] = {250, 17, COLOR_WHITE, COLOR_BLUE, 0, A_NORMAL},
    [TUI_C_HEAT2] = {255, 19, COLOR_WHITE, COLOR_BLUE, 0, A_NORMAL},
    [TUI_C_HEAT3] = {255, 25, COLOR_BLACK, COLOR_CYAN, 0, A_NORMAL},
    [TUI_C_HEAT4] = {16, 36, COLOR_BLACK, COLOR_GREEN, 0, A_NORMAL},
    [TUI_C_HEAT5] = {16, 148, COLOR_BLACK, COLOR_GREEN, 0, A_BOLD},
    [TUI_C_HEAT6] = {16, 214, COLOR_BLACK, COLOR_YELLOW, 0, A_BOLD},
    [TUI_C_HEAT7] = {16, 196, COLOR_WHITE, COLOR_RED, A_BOLD, A_BOLD},
};
_Static_assert(sizeof term_colors / sizeof term_colors[0] == TUI_C_COUNT,
               "one definition per semantic colour");

void tui_colors_setup(int depth)
{
    tui_color_depth = depth;
    for (int c = 0; c < TUI_C_COUNT; c++) {
        const term_color_def *d = &term_colors[c];
        if (depth == 0) {
            term_attr_tab[c] = d->mono;
            continue;
        }
        if (term_active) {
            short fg = depth >= 256 ? d->fg256 : d->fg8;
            short bg = depth >= 256 ? d->bg256 : d->bg8;
            init_pair((short)(c + 1), fg, bg);
        }
        term_attr_tab[c] = COLOR_PAIR(c + 1) | d->extra;
    }
}

attr_t tui_attr(tui_color c)
{
    return c >= 0 && c < TUI_C_COUNT ? term_attr_tab[c] : A_NORMAL;
}

int tui_term_signal_fd(void)
{
    return term_pipe[0];
}

void tui_term_drain_signal_fd(void)
{
    char buf[64];
    if (term_pipe[0] < 0)
        return;
    while (read(term_pipe[0], buf, sizeof buf) > 0)
        ;
}

static void term_poke(void)
{
    int saved = errno;
    if (term_pipe[1] >= 0) {
        ssize_t r = write(term_pipe[1], "s", 1);
        (void)r;
    }
    errno = saved;
}

static void term_on_int(int sig)
{
    (void)sig;
    tui_sig_int = 1;
    term_poke();
}

static void term_on_term(int sig)
{
    (void)sig;
    tui_sig_term = 1;
    term_poke();
}

static void term_on_crash(int sig)
{
    static const char msg[] = "moe-studio: crashed; terminal restored\n";
    if (term_active) {
        term_active = 0;
        endwin();
    }
    {
        ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)r;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

void tui_term_restore(void)
{
    if (!term_active)
        return;
    term_active = 0;
    curs_set(1);
    endwin();
    fflush(stdout);
}

static int term_pick_depth(void)
{
    const char *forced = getenv("MOE_STUDIO_COLORS");
    if (forced && *forced) {
        if (!strcmp(forced, "mono") || !strcmp(forced, "0"))
            return 0;
        if (!strcmp(forced, "8"))
            return has_colors() ? 8 : 0;
        if (!strcmp(forced, "256"))
            return has_colors() && COLORS >= 256 ? 256 : has_colors() ? 8 : 0;
    }
    if (getenv("NO_COLOR") && *getenv("NO_COLOR"))
        return 0;
    if (!has_colors())
        return 0;
    return COLORS >= 256 ? 256 : 8;
}

bool tui_term_init(char *err, size_t errn)
{
    struct sigaction sa;
    static bool atexit_done;
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) {
        snprintf(err, errn, "the studio needs a terminal (stdin and stdout are not one)");
        return false;
    }
    setlocale(LC_ALL, "");
    if (term_pipe[0] < 0) {
        if (pipe(term_pipe) != 0) {
            snprintf(err, errn, "pipe: %s", strerror(errno));
            return false;
        }
        for (int i = 0; i < 2; i++) {
            fcntl(term_pipe[i], F_SETFL, fcntl(term_pipe[i], F_GETFL) | O_NONBLOCK);
            fcntl(term_pipe[i], F_SETFD, FD_CLOEXEC);
        }
    }
    term_screen = newterm(NULL, stdout, stdin);
    if (!term_screen) {
        const char *t = getenv("TERM");
        snprintf(err, errn, "cannot start curses for TERM=%s", t ? t : "(unset)");
        return false;
    }
    set_term(term_screen);
    term_active = 1;
    if (!atexit_done) {
        atexit(tui_term_restore);
        atexit_done = true;
    }
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = term_on_int;
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = term_on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = term_on_crash;
    sa.sa_flags = SA_RESETHAND;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGABRT, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    cbreak();
    noecho();
    nonl();
    intrflush(stdscr, FALSE);
    keypad(stdscr, TRUE);
    set_escdelay(25);
    curs_set(0);
    if (has_colors()) {
        start_color();
        use_default_colors();
    }
    tui_colors_setup(term_pick_depth());
    return true;
}
