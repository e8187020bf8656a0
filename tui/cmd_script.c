/*
 * cmd_script.c - the headless Lua hosts: `moe-studio script FILE.lua [args]`
 * runs a script with the full standard library and the `moe` module,
 * printing to stdout; `moe-studio lua` is a REPL (readline when stdin is a
 * terminal, plain lines otherwise). Both can load the plugins too. Uses the
 * Lua host header (lua/host.h) and readline; no curses.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "../lua/host.h"
#include "cli.h"

typedef struct {
    bool plugins;          /* bundled + user plugins */
    const char *plugin_dir; /* an extra plugin directory */
    bool no_config;
    bool sandbox;          /* run the top level sandboxed like a plugin */
} script_opts;

static void script_usage(FILE *f, const char *cmd)
{
    if (strcmp(cmd, "lua") == 0)
        fprintf(f, "usage: moe-studio lua [--plugins] [--plugin-dir DIR] [--no-config]\n"
                   "An interactive Lua prompt with the moe module; expressions are printed.\n");
    else
        fprintf(f,
                "usage: moe-studio script [options] FILE.lua [args...]\n"
                "Run a Lua script headless with the moe module (arg[1..] = args).\n"
                "options:\n"
                "  --plugins          load the bundled and the user's plugins first\n"
                "  --plugin-dir DIR   load the plugins in DIR first\n"
                "  --no-config        ignore $XDG_CONFIG_HOME/moe-studio/config.lua\n"
                "  --sandbox          run the script in the plugin sandbox with its limits\n");
}

/* Parse options; returns the index of the first operand, or -1 (exit code
 * in *rc). */
static int script_parse(int argc, char **argv, script_opts *o, int *rc)
{
    static const struct option longs[] = {
        {"plugins", no_argument, NULL, 'p'}, {"plugin-dir", required_argument, NULL, 'd'},
        {"no-config", no_argument, NULL, 'n'}, {"sandbox", no_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    memset(o, 0, sizeof *o);
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:h", longs, NULL)) != -1) {
        switch (c) {
        case 'p':
            o->plugins = true;
            break;
        case 'd':
            o->plugin_dir = optarg;
            break;
        case 'n':
            o->no_config = true;
            break;
        case 's':
            o->sandbox = true;
            break;
        case 'h':
            script_usage(stdout, argv[0]);
            *rc = CLI_OK;
            return -1;
        default:
            *rc = cli_bad_option(argv[0], c, argv);
            return -1;
        }
    }
    return optind;
}

static host *script_host(const char *cmd, const script_opts *o)
{
    host_params p = host_default_params();
    host *h;
    char dir[4096], path[4200];
    p.trusted = !o->sandbox;
    h = host_new(&p);
    if (!h) {
        cli_fail(cmd, CLI_EXIT_FAIL, "cannot start the Lua host");
        return NULL;
    }
    if (!o->no_config) {
        snprintf(path, sizeof path, "%s/config.lua", host_config_dir(dir, sizeof dir));
        host_load_config(h, path);
    }
    if (o->plugins) {
        host_load_plugins(h, host_bundled_plugin_dir(dir, sizeof dir));
        snprintf(path, sizeof path, "%s/plugins", host_config_dir(dir, sizeof dir));
        host_load_plugins(h, path);
    }
    if (o->plugin_dir)
        host_load_plugins(h, o->plugin_dir);
    return h;
}

int cmd_script(int argc, char **argv)
{
    script_opts o;
    int rc = CLI_OK, first;
    host *h;
    bool ok;
    first = script_parse(argc, argv, &o, &rc);
    if (first < 0)
        return rc;
    if (first >= argc) {
        script_usage(stderr, argv[0]);
        return CLI_EXIT_USAGE;
    }
    h = script_host(argv[0], &o);
    if (!h)
        return CLI_EXIT_FAIL;
    ok = host_run_file(h, argv[first], argc - first - 1, argv + first + 1);
    host_free(h);
    fflush(stdout);
    return ok ? CLI_OK : CLI_EXIT_FAIL;
}

static void repl_line(host *h, const char *line)
{
    char *out = NULL;
    if (!line[0])
        return;
    if (host_eval(h, line, &out) && out && out[0])
        printf("%s\n", out);
    fflush(stdout);
    free(out);
}

int cmd_lua(int argc, char **argv)
{
    script_opts o;
    int rc = CLI_OK, first;
    host *h;
    first = script_parse(argc, argv, &o, &rc);
    if (first < 0)
        return rc;
    if (first < argc)
        return cli_fail(argv[0], CLI_EXIT_USAGE, "unexpected argument '%s'", argv[first]);
    h = script_host(argv[0], &o);
    if (!h)
        return CLI_EXIT_FAIL;
    if (isatty(STDIN_FILENO)) {
        char *line;
        printf("moe-studio %s, %s; the moe module is loaded. Ctrl-D quits.\n", PACKAGE_VERSION,
               LUA_RELEASE);
        rl_readline_name = "moe-studio";
        while ((line = readline("lua> "))) {
            /* unfinished chunks (a function, a loop) continue on more lines */
            while (host_incomplete(h, line)) {
                char *more = readline("  >> ");
                char *joined;
                size_t n;
                if (!more)
                    break;
                n = strlen(line) + strlen(more) + 2;
                joined = malloc(n);
                if (!joined) {
                    free(more);
                    break;
                }
                snprintf(joined, n, "%s\n%s", line, more);
                free(line);
                free(more);
                line = joined;
            }
            if (line[0])
                add_history(line);
            repl_line(h, line);
            free(line);
        }
        printf("\n");
    } else {
        char buf[65536];
        size_t used = 0;
        char *chunk = NULL;
        while (fgets(buf, sizeof buf, stdin)) {
            size_t n = strlen(buf);
            char *nc = realloc(chunk, used + n + 1);
            if (!nc)
                break;
            chunk = nc;
            memcpy(chunk + used, buf, n + 1);
            used += n;
            if (host_incomplete(h, chunk))
                continue;
            chunk[strcspn(chunk, "\r")] = '\0';
            used = strlen(chunk);
            while (used > 0 && chunk[used - 1] == '\n')
                chunk[--used] = '\0';
            repl_line(h, chunk);
            used = 0;
            chunk[0] = '\0';
        }
        if (chunk && chunk[0])
            repl_line(h, chunk);
        free(chunk);
    }
    host_free(h);
    return CLI_OK;
}
