/*
 * cmd_studio.c - entry points of the interactive studio and its session
 * commands: `moe-studio [-m MODEL] [-t N]` (the workbench), `moe-studio
 * replay FILE.json` (browse a saved session without the model) and the
 * headless `moe-studio export` (generate and write a session, or convert a
 * saved session to JSON/SVG/HTML/CSV). Wires term, worker, cmdline, the
 * Lua host (with its plugins) and screen together; owns no drawing.
 */
#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../lua/host.h"
#include "cli.h"
#include "ui.h"

#ifndef MOE_PKGDATADIR
#define MOE_PKGDATADIR "/usr/local/share/moe-studio"
#endif
#ifndef MOE_TOP_SRCDIR
#define MOE_TOP_SRCDIR "."
#endif

static bool studio_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The bundled plugins: $MOE_PLUGIN_DIR, else plugins/ beside the binary
 * (build tree), else the installed data directory, else the source tree
 * (an out-of-tree build). NULL when none exists. */
static const char *studio_plugin_dir(char *buf, size_t n)
{
    const char *env = getenv("MOE_PLUGIN_DIR");
    char exe[PATH_MAX];
    ssize_t len;
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return buf;
    }
    len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        char *slash;
        exe[len] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            if (snprintf(buf, n, "%s/plugins", exe) < (int)n && studio_is_dir(buf))
                return buf;
        }
    }
    snprintf(buf, n, "%s/plugins", MOE_PKGDATADIR);
    if (studio_is_dir(buf))
        return buf;
    snprintf(buf, n, "%s/plugins", MOE_TOP_SRCDIR);
    return studio_is_dir(buf) ? buf : NULL;
}

/* The Lua host of a studio session: trusted top level (:lua, :source),
 * the user's config, then the bundled and the user's plugins in their
 * sandboxes. Every failure is logged; the studio runs without Lua only
 * when the host cannot be created at all. */
static host *studio_lua(tui_app *a)
{
    host_params hp = host_default_params();
    host *h = host_new(&hp);
    char dir[PATH_MAX], path[PATH_MAX + 32];
    int n_ok = 0, n_all;
    if (!h) {
        tui_log(a, true, "Lua: cannot start the host (out of memory)");
        return NULL;
    }
    tui_lua_attach(a, h);
    host_config_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.lua", dir);
    host_load_config(h, path);
    if (studio_plugin_dir(path, sizeof path))
        n_ok += host_load_plugins(h, path);
    snprintf(path, sizeof path, "%s/plugins", dir);
    n_ok += host_load_plugins(h, path);
    n_all = host_plugin_count(h);
    if (n_all > n_ok)
        tui_log(a, true, "Lua: %d plugin%s loaded, %d disabled (:plugins lists them)", n_ok,
                n_ok == 1 ? "" : "s", n_all - n_ok);
    else if (n_all > 0)
        tui_log(a, false, "Lua: %d plugin%s loaded (:plugins lists them)", n_ok,
                n_ok == 1 ? "" : "s");
    /* a plugin pane opened while loading is not what the user asked for */
    a->lpane_show = 0;
    return h;
}

static int studio_session(tui_app *a, int n_threads, const char *model, const char *cmd)
{
    char err[512];
    tui_worker w;
    host *lua;
    int rc;
    if (!tui_term_init(err, sizeof err)) {
        tui_app_free(a);
        return cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
    }
    if (!tui_worker_start(&w, n_threads)) {
        tui_term_restore();
        tui_app_free(a);
        return cli_fail(cmd, CLI_EXIT_FAIL, "cannot start the worker thread");
    }
    a->worker = &w;
    tui_cmdline_init(a);
    lua = studio_lua(a);
    if (model) {
        tui_worker_post(&w, TUI_JOB_LOAD, model, 0, 0, NULL);
        tui_log(a, false, "loading %s ...", model);
    } else if (!a->replay) {
        tui_log(a, false, "no model loaded: type :load FILE.gguf (Tab completes paths); ? for help");
    }
    rc = tui_app_run(a);
    tui_cmdline_shutdown();
    tui_term_restore();
    tui_worker_stop(&w);
    a->worker = NULL;
    if (lua) {
        host_set_ui(lua, NULL); /* Lua's last words (__gc) go to stdout */
        host_free(lua);
    }
    tui_app_free(a);
    return rc;
}

static void studio_usage(FILE *f)
{
    fprintf(f, "usage: moe-studio studio [-m MODEL] [-t N]\n"
               "       moe-studio [-m MODEL] [-t N]\n"
               "  Opens the interactive studio (a terminal is needed).\n"
               "  -m, --model MODEL   GGUF model to load (default: the bundled models/kjv-moe.gguf;\n"
               "                      $MOE_DEFAULT_MODEL overrides it; :load FILE inside)\n"
               "  -t, --threads N     worker threads\n"
               "Inside: ? lists keys and commands.\n");
}

int cmd_studio(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL;
    int c, n_threads = 0;
    tui_app a;
    while ((c = getopt_long(argc, argv, ":m:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 't':
            if (!cli_parse_int("studio", "-t", optarg, 1, 1024, &n_threads))
                return CLI_EXIT_USAGE;
            break;
        case 'h': studio_usage(stdout); return CLI_OK;
        default: return cli_bad_option("studio", c, argv);
        }
    }
    if (optind < argc)
        return cli_fail("studio", CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (model && access(model, R_OK) != 0)
        return cli_fail("studio", CLI_EXIT_FAIL, "cannot read model '%s'", model);
    if (!model)
        model = cli_default_model_path(); /* the embedded KJV MoE, NULL if not found */
    tui_app_init(&a);
    return studio_session(&a, n_threads, model, "studio");
}

int cmd_replay(int argc, char **argv)
{
    char err[512];
    tui_app a;
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: moe-studio replay SESSION.json\n"
               "  Browse a saved session (from :export or moe-studio export) in every view,\n"
               "  without the model.\n");
        return CLI_OK;
    }
    if (argc != 2)
        return cli_fail("replay", CLI_EXIT_USAGE, "usage: moe-studio replay SESSION.json");
    tui_app_init(&a);
    tui_doc_free(&a.doc);
    tui_doc_init(&a.doc);
    if (!tui_session_load(&a.doc, argv[1], err, sizeof err)) {
        tui_app_free(&a);
        return cli_fail("replay", CLI_EXIT_FAIL, "%s", err);
    }
    a.replay = true;
    a.follow = false;
    a.sel = a.doc.n_tok > 0 ? 0 : -1;
    tui_log(&a, false, "replay of %s: %d tokens, %d turns; <- -> select tokens, ? help",
            argv[1], (int)a.doc.n_tok, (int)a.doc.n_turn);
    return studio_session(&a, 0, NULL, "replay");
}

/* ---- headless export -------------------------------------------------------- */

static void export_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio export -m MODEL [-p PROMPT] [-n N] -o FILE [options]\n"
            "       moe-studio export -i SESSION.json -o FILE\n"
            "  Generates like the studio and writes the session (.json, see\n"
            "  docs/session-schema.md), the heatmap (.svg), a report (.html) or the\n"
            "  statistics (.csv), chosen by FILE's extension; -i converts a saved session.\n"
            "  -m, --model MODEL     GGUF model\n"
            "  -p, --prompt TEXT     prompt (default: start from BOS)\n"
            "  -n, --n-predict N     tokens to generate (default 32)\n"
            "  -o, --output FILE     where to write\n"
            "  -i, --input FILE      a saved session instead of a model\n"
            "      --temp T          temperature, 0 = greedy (default 0.8)\n"
            "      --top-k K         top-k (0 = off)\n"
            "      --top-p P         top-p (1 = off)\n"
            "      --seed S          sampler seed\n"
            "      --exit SPEC       early-exit criterion (see moe-studio run --help)\n"
            "      --lens K          logit-lens tokens kept per layer (default 5)\n"
            "  -c, --ctx-size N      context length\n"
            "  -t, --threads N       worker threads\n");
}

typedef struct {
    tui_doc *doc;
    int n;
} export_sink;

static void export_on_tok(tui_tok *t, void *ud)
{
    export_sink *s = ud;
    if (tui_doc_append(s->doc, t))
        s->n++;
}

enum { EX_TEMP = 256, EX_TOPK, EX_TOPP, EX_SEED, EX_EXIT, EX_LENS };

int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},   {"prompt", required_argument, NULL, 'p'},
        {"n-predict", required_argument, NULL, 'n'}, {"output", required_argument, NULL, 'o'},
        {"input", required_argument, NULL, 'i'},   {"threads", required_argument, NULL, 't'},
        {"ctx-size", required_argument, NULL, 'c'}, {"temp", required_argument, NULL, EX_TEMP},
        {"top-k", required_argument, NULL, EX_TOPK}, {"top-p", required_argument, NULL, EX_TOPP},
        {"seed", required_argument, NULL, EX_SEED}, {"exit", required_argument, NULL, EX_EXIT},
        {"lens", required_argument, NULL, EX_LENS}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *cmd = "export", *model = NULL, *prompt = "", *out = NULL, *in = NULL;
    const char *exit_spec = NULL;
    int c, n = 32, v, rc = CLI_EXIT_FAIL;
    tui_gen g;
    tui_doc d;
    char err[512];
    export_sink sink;

    tui_gen_init(&g);
    tui_doc_init(&d);
    while ((c = getopt_long(argc, argv, ":m:p:n:o:i:t:c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'p': prompt = optarg; break;
        case 'o': out = optarg; break;
        case 'i': in = optarg; break;
        case 'n':
            if (!cli_parse_int(cmd, "-n", optarg, 0, 1 << 20, &n))
                goto usage;
            break;
        case 't':
            if (!cli_parse_int(cmd, "-t", optarg, 1, 1024, &g.n_threads))
                goto usage;
            break;
        case 'c':
            if (!cli_parse_int(cmd, "-c", optarg, 1, 1 << 24, &g.set.n_ctx))
                goto usage;
            break;
        case EX_TEMP:
            if (!cli_parse_float(cmd, "--temp", optarg, 0, 1e6, &g.set.sp.temp))
                goto usage;
            break;
        case EX_TOPK:
            if (!cli_parse_int(cmd, "--top-k", optarg, 0, INT_MAX, &v))
                goto usage;
            g.set.sp.top_k = v;
            break;
        case EX_TOPP:
            if (!cli_parse_float(cmd, "--top-p", optarg, 0, 1, &g.set.sp.top_p))
                goto usage;
            break;
        case EX_SEED:
            if (!cli_parse_u64(cmd, "--seed", optarg, &g.set.sp.seed))
                goto usage;
            break;
        case EX_EXIT: exit_spec = optarg; break;
        case EX_LENS:
            if (!cli_parse_int(cmd, "--lens", optarg, 0, 64, &v))
                goto usage;
            g.set.lens_k = v;
            break;
        case 'h':
            export_usage(stdout);
            rc = CLI_OK;
            goto out;
        default:
            rc = cli_bad_option(cmd, c, argv);
            goto out;
        }
    }
    if (optind < argc) {
        rc = cli_fail(cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (!out || (!model && !in) || (model && in)) {
        rc = cli_fail(cmd, CLI_EXIT_USAGE, "%s",
                      !out ? "missing -o FILE" : "give -m MODEL or -i SESSION.json (one of them)");
        goto out;
    }
    if (in) {
        if (!tui_session_load(&d, in, err, sizeof err)) {
            cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
            goto out;
        }
    } else {
        if (!tui_gen_load(&g, model, err, sizeof err)) {
            cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
            goto out;
        }
        if (exit_spec) {
            char *av[2] = {(char *)"exit", (char *)exit_spec};
            if (!tui_gen_command(&g, 2, av, err, sizeof err)) {
                rc = cli_fail(cmd, CLI_EXIT_USAGE, "--exit: %s", err);
                goto out;
            }
        }
        tui_gen_meta(&g, &d.meta);
        d.has_model = true;
        d.dims = g.dims;
        {
            int32_t nv = 0;
            char **voc = tui_gen_vocab(&g, &nv);
            tui_doc_set_vocab(&d, voc, nv);
        }
        sink.doc = &d;
        sink.n = 0;
        if (!tui_doc_begin_turn(&d, prompt) ||
            (*prompt && !tui_gen_prompt(&g, prompt, export_on_tok, &sink, err, sizeof err))) {
            cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
            goto out;
        }
        for (int i = 0; i < n; i++) {
            bool done = false;
            err[0] = '\0';
            if (!tui_gen_step(&g, export_on_tok, &sink, &done, err, sizeof err)) {
                cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
                goto out;
            }
            if (done)
                break;
        }
        tui_settings_free(&d.set);
        if (!tui_settings_copy(&d.set, &g.set)) {
            cli_fail(cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
    }
    if (!tui_export_any(&d, out, err, sizeof err)) {
        cli_fail(cmd, CLI_EXIT_FAIL, "%s", err);
        goto out;
    }
    rc = CLI_OK;
    goto out;
usage:
    rc = CLI_EXIT_USAGE;
out:
    tui_doc_free(&d);
    tui_gen_free(&g);
    return rc;
}
