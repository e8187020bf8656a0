/*
 * main.c - entry point of moe-studio: dispatches the subcommand named by the
 * first argument through a table, prints usage and the version. Owns no
 * command logic itself (see cmd_*.c); must not touch the engine directly.
 */
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} tui_command;

static const tui_command tui_commands[] = {
    {"info", cmd_info, "show a model's architecture, hyperparameters and size"},
    {"run", cmd_run, "generate text from a prompt"},
    {"tokenize", cmd_tokenize, "show the tokens of a text"},
    {"eval", cmd_eval, "prompt logits (top-k per position) and greedy tokens"},
    {"bench", cmd_bench, "prompt and generation speed, weight and memory bandwidth"},
    {"synth", cmd_synth, "write random-weight models of realistic shapes"},
    {"route-stats", cmd_route_stats, "router load, balance, entropy, co-activation on a text"},
    {"perplexity", cmd_perplexity, "perplexity of a text, with router steering and capacity"},
    {"exit", cmd_exit, "early exit on a text: perplexity, mean exit layer, layers saved"},
    {"train", cmd_train, "train or continue a small dense/MoE model; BPE vocabularies"},
    {"emoe", cmd_emoe, "split a dense model's FFNs into emergent experts (EMoE)"},
    {"bricks", cmd_bricks, "list, merge, grow, prune experts and other bricks"},
    {"script", cmd_script, "run a Lua script headless (moe module, workflows)"},
    {"lua", cmd_lua, "interactive Lua prompt with the moe module"},
    {"studio", cmd_studio, "the interactive workbench (also: moe-studio [-m MODEL])"},
    {"replay", cmd_replay, "browse a saved session in the studio without the model"},
    {"export", cmd_export, "generate headless and write a session (.json .svg .html .csv)"},
};

static void tui_usage(FILE *f)
{
    fprintf(f,
            "moe-studio %s - a workbench for studying mixture-of-experts models\n"
            "\n"
            "usage: moe-studio [-m MODEL] [-t N]     (the studio, in a terminal)\n"
            "       moe-studio <command> [options]\n"
            "       moe-studio help [command]\n"
            "       moe-studio --version\n"
            "\n"
            "commands:\n",
            PACKAGE_VERSION);
    for (size_t i = 0; i < sizeof tui_commands / sizeof tui_commands[0]; i++)
        fprintf(f, "  %-12s %s\n", tui_commands[i].name, tui_commands[i].summary);
    fprintf(f, "\nRun 'moe-studio <command> --help' for a command's options.\n");
}

static const tui_command *tui_find_command(const char *name)
{
    for (size_t i = 0; i < sizeof tui_commands / sizeof tui_commands[0]; i++)
        if (strcmp(tui_commands[i].name, name) == 0)
            return &tui_commands[i];
    return NULL;
}

int main(int argc, char **argv)
{
    const tui_command *c;
    const char *name;

    if (argc < 2) {
        /* the studio in a terminal; usage when piped */
        if (isatty(STDIN_FILENO) && isatty(STDOUT_FILENO))
            return cmd_studio(argc, argv);
        tui_usage(stdout);
        return 0;
    }
    name = argv[1];
    /* only studio options (-m MODEL, -t N): open the studio */
    if (!strcmp(name, "-m") || !strcmp(name, "-t") || !strncmp(name, "--model", 7) ||
        !strncmp(name, "--threads", 9) || !strncmp(name, "-m", 2)) {
        cli_getopt_reset();
        return cmd_studio(argc, argv);
    }
    if (strcmp(name, "help") == 0 || strcmp(name, "--help") == 0 ||
        strcmp(name, "-h") == 0) {
        if (argc > 2 && strcmp(name, "help") == 0) {
            char help_opt[] = "--help";
            char *sub_argv[3];
            c = tui_find_command(argv[2]);
            if (!c) {
                fprintf(stderr, "moe-studio help: unknown command '%s'\n", argv[2]);
                return CLI_EXIT_USAGE;
            }
            sub_argv[0] = argv[2];
            sub_argv[1] = help_opt;
            sub_argv[2] = NULL;
            cli_getopt_reset();
            return c->fn(2, sub_argv);
        }
        tui_usage(stdout);
        return 0;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0 ||
        strcmp(name, "version") == 0) {
        printf("moe-studio %s\n", PACKAGE_VERSION);
        return 0;
    }
    c = tui_find_command(name);
    if (!c) {
        if (name[0] == '-')
            fprintf(stderr, "moe-studio: unknown option '%s' (try 'moe-studio --help')\n",
                    name);
        else
            fprintf(stderr, "moe-studio: unknown command '%s' (try 'moe-studio --help')\n",
                    name);
        return CLI_EXIT_USAGE;
    }
    cli_getopt_reset();
    return c->fn(argc - 1, argv + 1);
}
