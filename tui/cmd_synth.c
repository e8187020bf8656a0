/*
 * cmd_synth.c - `moe-studio synth`: write a random-weight model of a known
 * shape (engine/synth.h), list the shapes, or write a small corpus of seed
 * files for the GGUF fuzzer. Headless; uses the engine API and cli helpers
 * only (no curses, readline or Lua).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "synth.h"

static const char synth_cmd[] = "synth";

enum { SYNTH_OPT_LIST = 256, SYNTH_OPT_FUZZ };

static void synth_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio synth --shape NAME [--type TYPE] [--seed N] -o FILE\n"
            "       moe-studio synth --list\n"
            "       moe-studio synth --fuzz-seeds DIR\n"
            "\n"
            "Write a model with random weights and a working SentencePiece-style\n"
            "vocabulary, for benchmarks and tests.\n"
            "\n"
            "  -s, --shape NAME     model shape (see --list)\n"
            "  -t, --type TYPE      weight type: q8_0 (default), q4_0, q4_k, f16, f32,\n"
            "                       also bf16 q4_1 q5_0 q5_1 q2_k q3_k q5_k q6_k;\n"
            "                       norms and the router stay f32\n"
            "      --seed N         random seed (default 1); same seed, same file\n"
            "  -o, --output FILE    where to write (atomically)\n"
            "  -q, --quiet          no progress on stderr\n"
            "      --list           print the known shapes\n"
            "      --fuzz-seeds DIR write tiny GGUF files (< 64 KiB) as fuzzer seeds\n"
            "  -h, --help           this help\n");
}

static int64_t synth_n_params(const synth_shape *s)
{
    const int64_t e = s->n_embd, hd = s->n_embd / s->n_head;
    const int64_t kv = hd * s->n_head_kv;
    int64_t per_layer = e * e * 2 + e * kv * 2 + e * 2;
    if (s->n_expert > 0)
        per_layer += (int64_t)s->n_expert * e * s->n_ff_exp * 3 + e * s->n_expert;
    else
        per_layer += e * s->n_ff * 3;
    if (strcmp(s->arch, "olmoe") == 0)
        per_layer += e + kv;
    return per_layer * s->n_layer + 2 * e * s->n_vocab + e;
}

/* "1.38B" or "3.2M" */
static const char *synth_fmt_params(char *buf, size_t n, int64_t p)
{
    if (p >= 1000000000)
        snprintf(buf, n, "%.2fB", (double)p / 1e9);
    else
        snprintf(buf, n, "%.1fM", (double)p / 1e6);
    return buf;
}

static void synth_list(void)
{
    printf("%-16s %-11s %6s %5s %6s %5s %3s %6s %9s %7s %6s\n", "shape", "arch",
           "n_embd", "layer", "head", "kv", "ff", "n_ff", "experts", "vocab",
           "params");
    for (const synth_shape *s = synth_shapes(); s->name; s++) {
        char ex[32], np[32];
        if (s->n_expert > 0)
            snprintf(ex, sizeof ex, "%d/%dx%d", s->n_expert_used, s->n_expert,
                     s->n_ff_exp);
        else
            snprintf(ex, sizeof ex, "-");
        printf("%-16s %-11s %6d %5d %6d %5d %3s %6d %9s %7d %6s\n", s->name,
               s->arch, s->n_embd, s->n_layer, s->n_head, s->n_head_kv,
               s->n_expert > 0 ? "moe" : "mlp", s->n_ff, ex, s->n_vocab,
               synth_fmt_params(np, sizeof np, synth_n_params(s)));
    }
}

typedef struct {
    double t0;
    int last_pct;
    bool show;
} synth_progress_state;

static bool synth_progress(double done, double total, void *ud)
{
    synth_progress_state *ps = ud;
    int pct = total > 0.0 ? (int)(100.0 * done / total) : 100;
    if (ps->show && pct != ps->last_pct) {
        ps->last_pct = pct;
        if (done >= total)
            fprintf(stderr, "\rwriting the file...  %.1f s", cli_now() - ps->t0);
        else
            fprintf(stderr, "\rgenerating %3d%%  %.1f s    ", pct, cli_now() - ps->t0);
        fflush(stderr);
    }
    return true;
}

/* Tiny models of every architecture, small enough for the fuzzer's
 * -max_len=65536, written with the same code as real files. */
static int synth_fuzz_seeds(const char *dir)
{
    static const struct {
        synth_shape shape;
        const char *type;
    } seeds[] = {
        { { "seed-moe", "llama", 300, 64, 32, 1, 2, 1, 0, 4, 2, 32 }, "q8_0" },
        { { "seed-moe-q4", "llama", 300, 64, 32, 1, 2, 1, 0, 4, 2, 32 }, "q4_0" },
        { { "seed-dense", "llama", 280, 64, 32, 2, 4, 2, 64, 0, 0, 0 }, "q8_0" },
        { { "seed-granitemoe", "granitemoe", 270, 64, 32, 1, 2, 2, 0, 4, 2, 32 }, "q8_0" },
        { { "seed-olmoe", "olmoe", 270, 64, 32, 1, 2, 2, 0, 4, 2, 32 }, "q4_1" },
    };
    struct stat sb;
    char path[4096];
    if (stat(dir, &sb) != 0)
        return cli_fail(synth_cmd, CLI_EXIT_FAIL, "cannot use '%s': %s", dir,
                        strerror(errno));
    if (!S_ISDIR(sb.st_mode))
        return cli_fail(synth_cmd, CLI_EXIT_FAIL, "'%s' is not a directory", dir);
    for (size_t i = 0; i < sizeof seeds / sizeof seeds[0]; i++) {
        moe_status st;
        snprintf(path, sizeof path, "%s/%s.%s.gguf", dir, seeds[i].shape.name,
                 seeds[i].type);
        st = synth_write(&seeds[i].shape, (moe_type)quant_type_from_name(seeds[i].type),
                         (uint64_t)i + 1, path, NULL, NULL);
        if (st != MOE_OK)
            return cli_fail_engine(synth_cmd, st, "cannot write '%s'", path);
        printf("%s\n", path);
    }
    return CLI_OK;
}

int cmd_synth(int argc, char **argv)
{
    static const struct option opts[] = {
        {"shape", required_argument, NULL, 's'},
        {"type", required_argument, NULL, 't'},
        {"seed", required_argument, NULL, 'S'},
        {"output", required_argument, NULL, 'o'},
        {"quiet", no_argument, NULL, 'q'},
        {"list", no_argument, NULL, SYNTH_OPT_LIST},
        {"fuzz-seeds", required_argument, NULL, SYNTH_OPT_FUZZ},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *shape_name = NULL, *type_name = "q8_0", *out = NULL, *fuzz_dir = NULL;
    uint64_t seed = 1;
    bool list = false, quiet = false;
    const synth_shape *shape;
    synth_progress_state ps;
    struct stat sb;
    char np[32];
    moe_status st;
    int type, c;

    cli_getopt_reset();
    while ((c = getopt_long(argc, argv, ":s:t:o:qh", opts, NULL)) != -1) {
        switch (c) {
        case 's': shape_name = optarg; break;
        case 't': type_name = optarg; break;
        case 'S':
            if (!cli_parse_u64(synth_cmd, "--seed", optarg, &seed))
                return CLI_EXIT_USAGE;
            break;
        case 'o': out = optarg; break;
        case 'q': quiet = true; break;
        case SYNTH_OPT_LIST: list = true; break;
        case SYNTH_OPT_FUZZ: fuzz_dir = optarg; break;
        case 'h': synth_usage(stdout); return CLI_OK;
        default: return cli_bad_option(synth_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(synth_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'",
                        argv[optind]);
    if (list) {
        synth_list();
        return CLI_OK;
    }
    if (fuzz_dir)
        return synth_fuzz_seeds(fuzz_dir);
    if (!shape_name)
        return cli_fail(synth_cmd, CLI_EXIT_USAGE,
                        "--shape is required (see 'moe-studio synth --list')");
    shape = synth_find_shape(shape_name);
    if (!shape) {
        char known[256];
        size_t n = 0;
        known[0] = '\0';
        for (const synth_shape *s = synth_shapes(); s->name && n < sizeof known; s++)
            n += (size_t)snprintf(known + n, sizeof known - n, "%s%s",
                                  n ? ", " : "", s->name);
        return cli_fail(synth_cmd, CLI_EXIT_USAGE, "unknown shape '%s' (known: %s)",
                        shape_name, known);
    }
    type = quant_type_from_name(type_name);
    if (type < 0)
        return cli_fail(synth_cmd, CLI_EXIT_USAGE, "unknown type '%s' (q8_0, q4_0, "
                        "q4_k, f16, f32, ...)", type_name);
    if (!out)
        return cli_fail(synth_cmd, CLI_EXIT_USAGE, "-o FILE is required");
    if (stat(out, &sb) == 0 && S_ISDIR(sb.st_mode))
        return cli_fail(synth_cmd, CLI_EXIT_USAGE, "'%s' is a directory", out);

    ps.t0 = cli_now();
    ps.last_pct = -1;
    ps.show = !quiet && isatty(STDERR_FILENO);
    st = synth_write(shape, (moe_type)type, seed, out, synth_progress, &ps);
    if (ps.show)
        fprintf(stderr, "\r%40s\r", "");
    if (st != MOE_OK)
        return cli_fail_engine(synth_cmd, st, "cannot write '%s'", out);
    if (stat(out, &sb) != 0)
        return cli_fail(synth_cmd, CLI_EXIT_FAIL, "'%s' vanished after writing: %s",
                        out, strerror(errno));
    printf("wrote %s: %s (%s), %s weights, seed %llu, %s params, %.1f MB, "
           "%.1f s\n", out, shape->name, shape->arch, quant_type_name(type),
           (unsigned long long)seed,
           synth_fmt_params(np, sizeof np, synth_n_params(shape)),
           (double)sb.st_size / 1e6, cli_now() - ps.t0);
    return CLI_OK;
}
