/*
 * cmd_emoe.c - `moe-studio emoe`: convert a dense model into an EMoE model
 * (moe_emoe_convert: balanced k-means of the gate rows into N experts,
 * unweighted top-K gating) and write it as a new GGUF. Headless; uses the
 * public engine API and cli helpers only (no curses, readline or Lua).
 */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char emoe_cmd[] = "emoe";

static void emoe_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio emoe -m DENSE.gguf --experts N --top-k K [--layers LIST]\n"
            "                       [--seed S] [--iter N] -o OUT.gguf\n"
            "\n"
            "Split the dense FFN of each chosen layer into N emergent experts: balanced\n"
            "k-means of the normalised gate rows, experts as contiguous blocks (zero\n"
            "padding when N does not divide n_ff), router rows = block means of the gate\n"
            "rows, top-K selection and an unweighted sum (K = N is the dense model).\n"
            "\n"
            "  -m, --model FILE    dense GGUF model\n"
            "  -e, --experts N     experts per converted layer\n"
            "  -k, --top-k K       experts each token uses (1..N)\n"
            "  -l, --layers LIST   layers to convert, e.g. 0,2-4 (default: all)\n"
            "      --seed S        k-means seed (default 1)\n"
            "      --iter N        k-means iterations (default 30)\n"
            "  -o, --output FILE   where to write (atomically)\n"
            "  -h, --help          this help\n");
}

/* "0,2-4" -> mask[n_layer]; prints the error and returns false when bad. */
static bool emoe_parse_layers(const char *s, bool *mask, int32_t n_layer)
{
    const char *p = s;
    memset(mask, 0, (size_t)n_layer * sizeof *mask);
    while (*p) {
        char *end;
        long a = strtol(p, &end, 10), b;
        if (end == p || a < 0 || a >= n_layer)
            goto bad;
        b = a;
        p = end;
        if (*p == '-') {
            b = strtol(p + 1, &end, 10);
            if (end == p + 1 || b < a || b >= n_layer)
                goto bad;
            p = end;
        }
        for (long i = a; i <= b; i++)
            mask[i] = true;
        if (*p == ',')
            p++;
        else if (*p)
            goto bad;
    }
    return true;
bad:
    cli_fail(emoe_cmd, CLI_EXIT_USAGE, "bad --layers '%s' (want e.g. 0,2-4 with layers < %d)", s,
             n_layer);
    return false;
}

int cmd_emoe(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"experts", required_argument, NULL, 'e'},
        {"top-k", required_argument, NULL, 'k'},
        {"layers", required_argument, NULL, 'l'},
        {"seed", required_argument, NULL, 'S'},
        {"iter", required_argument, NULL, 'I'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_path = NULL, *out = NULL, *layers = NULL;
    moe_emoe_params p = moe_emoe_default_params();
    moe_emoe_report rep;
    moe_model *model;
    moe_model_info info;
    bool *mask = NULL;
    bool have_n = false, have_k = false;
    moe_status st;
    double t0;
    int c, v;

    cli_getopt_reset();
    while ((c = getopt_long(argc, argv, ":m:e:k:l:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'e':
            if (!cli_parse_int(emoe_cmd, "--experts", optarg, 1, 4096, &v))
                return CLI_EXIT_USAGE;
            p.n_expert = v;
            have_n = true;
            break;
        case 'k':
            if (!cli_parse_int(emoe_cmd, "--top-k", optarg, 1, 4096, &v))
                return CLI_EXIT_USAGE;
            p.n_expert_used = v;
            have_k = true;
            break;
        case 'l': layers = optarg; break;
        case 'S':
            if (!cli_parse_u64(emoe_cmd, "--seed", optarg, &p.seed))
                return CLI_EXIT_USAGE;
            break;
        case 'I':
            if (!cli_parse_int(emoe_cmd, "--iter", optarg, 1, 10000, &v))
                return CLI_EXIT_USAGE;
            p.max_iter = v;
            break;
        case 'o': out = optarg; break;
        case 'h': emoe_usage(stdout); return CLI_OK;
        default: return cli_bad_option(emoe_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(emoe_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!model_path)
        return cli_fail(emoe_cmd, CLI_EXIT_USAGE, "-m MODEL is required");
    if (!have_n || !have_k)
        return cli_fail(emoe_cmd, CLI_EXIT_USAGE, "--experts N and --top-k K are required");
    if (!out)
        return cli_fail(emoe_cmd, CLI_EXIT_USAGE, "-o OUT is required");
    if (p.n_expert_used > p.n_expert)
        return cli_fail(emoe_cmd, CLI_EXIT_USAGE, "--top-k %d exceeds --experts %d",
                        p.n_expert_used, p.n_expert);

    /* Load once to validate the model and learn its layer count. */
    model = cli_load_model(emoe_cmd, model_path, 1);
    if (!model)
        return CLI_EXIT_FAIL;
    moe_model_get_info(model, &info);
    moe_model_free(model);
    if (info.n_expert > 0)
        return cli_fail(emoe_cmd, CLI_EXIT_FAIL, "'%s' already has %d experts; emoe needs a dense model",
                        model_path, info.n_expert);
    if (layers) {
        mask = calloc((size_t)info.n_layer, sizeof *mask);
        if (!mask)
            return cli_fail(emoe_cmd, CLI_EXIT_FAIL, "out of memory");
        if (!emoe_parse_layers(layers, mask, info.n_layer)) {
            free(mask);
            return CLI_EXIT_USAGE;
        }
        p.layers = mask;
        p.n_layers = info.n_layer;
    }
    t0 = cli_now();
    st = moe_emoe_convert(model_path, out, &p, &rep);
    free(mask);
    if (st != MOE_OK)
        return cli_fail_engine(emoe_cmd, st, "cannot convert '%s'", model_path);
    printf("wrote %s: %d of %d layers -> %d experts of %d rows (n_ff %d, %d padding rows), "
           "top-%d unweighted\n",
           out, rep.n_converted, info.n_layer, p.n_expert, rep.n_ff_exp, rep.n_ff, rep.n_padding,
           p.n_expert_used);
    printf("mean cosine of keys to their cluster: %.4f; ffn_down_exps type %s; %.2f s\n",
           rep.mean_cos, rep.down_type, cli_now() - t0);
    return CLI_OK;
}
