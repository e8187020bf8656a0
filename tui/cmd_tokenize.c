/*
 * cmd_tokenize.c - `moe-studio tokenize`: the token ids of a text, either on
 * one line (--ids) or one token per line with its escaped piece.
 * Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const tok_cmd = "tokenize";

static void tokenize_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio tokenize -m MODEL [-f FILE | TEXT] [--ids] [--bos] [--special]\n"
            "  -m, --model MODEL  GGUF model (its vocabulary is used)\n"
            "  -f, --file FILE    tokenize the contents of FILE\n"
            "      --ids          print the ids space separated on one line\n"
            "      --bos          add BOS when the model's vocabulary asks for it\n"
            "      --special      recognise special-token texts such as <s>\n"
            "Without --ids: one line per token, \"id<TAB>'piece'\" (escaped).\n");
}

enum { TOK_OPT_IDS = 256, TOK_OPT_BOS, TOK_OPT_SPECIAL };

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"file", required_argument, NULL, 'f'},
        {"ids", no_argument, NULL, TOK_OPT_IDS},
        {"bos", no_argument, NULL, TOK_OPT_BOS},
        {"special", no_argument, NULL, TOK_OPT_SPECIAL},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *file = NULL, *text;
    bool ids = false, bos = false, special = false;
    char *file_text = NULL;
    size_t text_len;
    moe_model *model = NULL;
    int32_t *toks = NULL, n = 0;
    int c, rc = CLI_EXIT_FAIL;

    while ((c = getopt_long(argc, argv, ":m:f:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 'f': file = optarg; break;
        case TOK_OPT_IDS: ids = true; break;
        case TOK_OPT_BOS: bos = true; break;
        case TOK_OPT_SPECIAL: special = true; break;
        case 'h': tokenize_usage(stdout); return CLI_OK;
        default: return cli_bad_option(tok_cmd, c, argv);
        }
    }
    if (!path)
        return cli_fail(tok_cmd, CLI_EXIT_USAGE, "missing -m MODEL");
    if (file && optind < argc)
        return cli_fail(tok_cmd, CLI_EXIT_USAGE, "give -f FILE or TEXT, not both");
    if (!file && optind >= argc)
        return cli_fail(tok_cmd, CLI_EXIT_USAGE, "missing TEXT (or -f FILE)");
    if (optind + 1 < argc)
        return cli_fail(tok_cmd, CLI_EXIT_USAGE,
                        "unexpected argument '%s' (quote the text)", argv[optind + 1]);

    if (file) {
        file_text = cli_read_file(tok_cmd, file, &text_len);
        if (!file_text)
            return CLI_EXIT_FAIL;
        text = file_text;
    } else {
        text = argv[optind];
        text_len = strlen(text);
    }

    model = cli_load_model_as(tok_cmd, path, 1, MOE_LOAD_MMAP); /* no weights used */
    if (!model)
        goto out;
    if (!cli_tokenize(tok_cmd, model, text, text_len, bos, special, &toks, &n))
        goto out;

    if (ids) {
        for (int32_t i = 0; i < n; i++)
            printf("%s%d", i ? " " : "", (int)toks[i]);
        putchar('\n');
    } else {
        for (int32_t i = 0; i < n; i++) {
            size_t len = 0;
            const char *piece = moe_token_piece(model, toks[i], &len);
            printf("%d\t", (int)toks[i]);
            cli_write_escaped(stdout, piece ? piece : "", piece ? len : 0);
            putchar('\n');
        }
    }
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(tok_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
out:
    free(toks);
    moe_model_free(model);
    free(file_text);
    return rc;
}
