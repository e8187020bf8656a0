/*
 * cmd_bench.c - `moe-studio bench`: prompt-processing speed (one batch of p
 * tokens), generation speed (n single-token decodes), the weight bandwidth
 * generation achieves (bytes of weights a token reads, active experts only,
 * over the time per token) and the machine's read bandwidth measured in the
 * same run. Medians over --reps. Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cli.h"
#include "synth.h"

static const char *const bench_cmd = "bench";

static void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio bench -m MODEL [-t THREADS] [-p N] [-n N] [-d N] [--reps R]\n"
            "                        [--load MODE] [--json]\n"
            "  -m, --model MODEL     GGUF model\n"
            "  -t, --threads N       worker threads (default: online CPUs)\n"
            "  -p, --n-prompt N      prompt tokens decoded as one batch (default 128)\n"
            "  -n, --n-gen N         single-token decodes for generation (default 64)\n"
            "  -d, --depth N         generate after N context tokens (default 0)\n"
            "      --load MODE       auto, mmap or copy (moe_load_mode; default auto,\n"
            "                        or MOE_LOAD)\n"
            "      --reps R          repetitions; medians are reported (default 3)\n"
            "      --trace           record router traces while decoding (overhead check)\n"
            "      --json            one JSON object with pp_tok_s, tg_tok_s,\n"
            "                        tg_weight_gb_s, read_bw_gb_s, threads, model, ...\n"
            "      --speculate E:d   also greedy generation of N tokens from BOS, plain and\n"
            "                        self-speculative (draft with E layers, d drafts):\n"
            "                        acceptance rate and speed-up\n");
}

enum { BENCH_OPT_REPS = 256, BENCH_OPT_JSON, BENCH_OPT_SPECULATE, BENCH_OPT_TRACE, BENCH_OPT_LOAD };

/* xorshift64*: deterministic token ids for the benchmark batches. */
static uint64_t bench_rand(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

int cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"threads", required_argument, NULL, 't'},
        {"n-prompt", required_argument, NULL, 'p'},
        {"n-gen", required_argument, NULL, 'n'},
        {"depth", required_argument, NULL, 'd'},
        {"load", required_argument, NULL, BENCH_OPT_LOAD},
        {"reps", required_argument, NULL, BENCH_OPT_REPS},
        {"json", no_argument, NULL, BENCH_OPT_JSON},
        {"trace", no_argument, NULL, BENCH_OPT_TRACE},
        {"speculate", required_argument, NULL, BENCH_OPT_SPECULATE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int n_threads = 0, n_prompt = 128, n_gen = 64, depth = 0, reps = 3, n_toks, c;
    int rc = CLI_EXIT_FAIL;
    moe_load_mode load;
    bool json = false, trace = false;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_model_info info;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_status st;
    int32_t *toks = NULL;
    const void *wspan;
    size_t wspan_n = 0;
    double *pp = NULL, *tg = NULL, *bw = NULL, pp_med, tg_med, read_bw, weight_gb_s;
    int64_t active_bytes;
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    moe_spec_params spec = moe_spec_default_params();
    bool do_spec = false;
    cli_spec_bench_result sr = {0};

    if (!cli_env_load(bench_cmd, &load))
        return CLI_EXIT_USAGE;
    while ((c = getopt_long(argc, argv, ":m:t:p:n:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 't':
            if (!cli_parse_int(bench_cmd, "-t", optarg, 1, 1024, &n_threads))
                return CLI_EXIT_USAGE;
            break;
        case 'p':
            if (!cli_parse_int(bench_cmd, "-p", optarg, 1, 1 << 16, &n_prompt))
                return CLI_EXIT_USAGE;
            break;
        case 'n':
            if (!cli_parse_int(bench_cmd, "-n", optarg, 1, 1 << 16, &n_gen))
                return CLI_EXIT_USAGE;
            break;
        case 'd':
            if (!cli_parse_int(bench_cmd, "-d", optarg, 0, 1 << 20, &depth))
                return CLI_EXIT_USAGE;
            break;
        case BENCH_OPT_LOAD:
            if (!cli_parse_load(bench_cmd, "--load", optarg, &load))
                return CLI_EXIT_USAGE;
            break;
        case BENCH_OPT_REPS:
            if (!cli_parse_int(bench_cmd, "--reps", optarg, 1, 1000, &reps))
                return CLI_EXIT_USAGE;
            break;
        case BENCH_OPT_JSON: json = true; break;
        case BENCH_OPT_TRACE: trace = true; break;
        case BENCH_OPT_SPECULATE:
            if (moe_spec_parse(optarg, &spec) != MOE_OK)
                return cli_fail(bench_cmd, CLI_EXIT_USAGE, "--speculate: %s", moe_last_error());
            do_spec = true;
            break;
        case 'h': bench_usage(stdout); return CLI_OK;
        default: return cli_bad_option(bench_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(bench_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'",
                        argv[optind]);
    if (!path)
        return cli_fail(bench_cmd, CLI_EXIT_USAGE, "missing -m MODEL");
    if (n_threads <= 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = ncpu > 0 && ncpu < 1024 ? (int)ncpu : 1;
    }

    model = cli_load_model_as(bench_cmd, path, n_threads, load);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);
    if (info.n_vocab <= 0) {
        cli_fail(bench_cmd, CLI_EXIT_FAIL, "model reports n_vocab %d", info.n_vocab);
        goto out;
    }

    n_toks = n_prompt > depth + n_gen ? n_prompt : depth + n_gen;
    cp.n_ctx = n_toks + 1;
    cp.n_threads = n_threads;
    cp.n_batch = n_prompt;
    st = moe_ctx_new(model, &cp, &ctx);
    if (st != MOE_OK) {
        cli_fail_engine(bench_cmd, st, "cannot create a context of %d tokens", cp.n_ctx);
        goto out;
    }
    if (trace) {
        /* a ring of n_ctx entries: no allocation once it is full */
        moe_trace_params tp = {.on = true, .lens_k = 0, .max_tokens = cp.n_ctx};
        st = moe_ctx_set_trace(ctx, &tp);
        if (st != MOE_OK) {
            cli_fail_engine(bench_cmd, st, "cannot turn the trace on");
            goto out;
        }
    }

    toks = malloc((size_t)n_toks * sizeof *toks);
    pp = malloc((size_t)reps * sizeof *pp);
    bw = malloc((size_t)reps * sizeof *bw);
    tg = malloc((size_t)reps * sizeof *tg);
    if (!toks || !pp || !tg || !bw) {
        cli_fail(bench_cmd, CLI_EXIT_FAIL, "out of memory");
        goto out;
    }
    for (int i = 0; i < n_toks; i++)
        toks[i] = (int32_t)(bench_rand(&rng) % (uint64_t)info.n_vocab);

    /* Warm-up: fault the mapped weights in and start the workers. */
    st = moe_ctx_decode(ctx, toks, 1, false);
    if (st != MOE_OK) {
        cli_fail_engine(bench_cmd, st, "warm-up decode failed");
        goto out;
    }

    wspan = moe_model_weight_span(model, &wspan_n);
    for (int r = 0; r < reps; r++) {
        double t0, t1;
        moe_ctx_truncate(ctx, 0);
        t0 = cli_now();
        st = moe_ctx_decode(ctx, toks, n_prompt, false);
        t1 = cli_now();
        if (st != MOE_OK) {
            cli_fail_engine(bench_cmd, st, "prompt decode failed");
            goto out;
        }
        pp[r] = t1 > t0 ? n_prompt / (t1 - t0) : 0.0;
    }
    /* the context generation starts from, made once (untimed) */
    moe_ctx_truncate(ctx, 0);
    if (depth > 0 && (st = moe_ctx_decode(ctx, toks, depth, false)) != MOE_OK) {
        cli_fail_engine(bench_cmd, st, "decode of the %d depth tokens failed", depth);
        goto out;
    }
    for (int r = 0; r < reps; r++) {
        double t0, t1;
        moe_ctx_truncate(ctx, depth);
        t0 = cli_now();
        for (int i = 0; i < n_gen; i++) {
            st = moe_ctx_decode(ctx, &toks[depth + i], 1, false);
            if (st != MOE_OK) {
                cli_fail_engine(bench_cmd, st, "generation decode %d failed", i);
                goto out;
            }
        }
        t1 = cli_now();
        tg[r] = t1 > t0 ? n_gen / (t1 - t0) : 0.0;
        /* The machine's bandwidth drifts between regimes lasting seconds, so
         * the probe runs right after each generation rep, over the weight
         * pages themselves (synth_read_bandwidth_at); the median is reported. */
        bw[r] = synth_read_bandwidth_at(wspan, wspan_n, n_threads);
    }
    if (do_spec) {
        if (spec.n_exit > info.n_layer) {
            cli_fail(bench_cmd, CLI_EXIT_USAGE, "--speculate: %d draft layers, the model has %d",
                     spec.n_exit, info.n_layer);
            rc = CLI_EXIT_USAGE;
            goto out;
        }
        if (!cli_spec_bench(bench_cmd, ctx, &spec, n_gen, reps, &sr))
            goto out;
    }
    pp_med = cli_median(pp, reps);
    tg_med = cli_median(tg, reps);

    active_bytes = moe_model_active_bytes_per_token(model);
    weight_gb_s = active_bytes > 0 ? (double)active_bytes * tg_med / 1e9 : 0.0;
    read_bw = cli_median(bw, reps);
    if (read_bw <= 0.0)
        read_bw = synth_read_bandwidth(n_threads);

    if (json) {
        cJSON *o = cJSON_CreateObject();
        char *s;
        if (!o) {
            cli_fail(bench_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        cJSON_AddStringToObject(o, "model", path);
        cJSON_AddStringToObject(o, "arch", info.arch ? info.arch : "");
        cJSON_AddStringToObject(o, "ftype", info.ftype ? info.ftype : "");
        cJSON_AddNumberToObject(o, "threads", n_threads);
        cJSON_AddNumberToObject(o, "n_prompt", n_prompt);
        cJSON_AddNumberToObject(o, "n_gen", n_gen);
        cJSON_AddNumberToObject(o, "depth", depth);
        cJSON_AddStringToObject(o, "load", info.copied ? "copy" : "mmap");
        cJSON_AddNumberToObject(o, "reps", reps);
        cJSON_AddBoolToObject(o, "trace", trace);
        cJSON_AddNumberToObject(o, "pp_tok_s", pp_med);
        cJSON_AddNumberToObject(o, "tg_tok_s", tg_med);
        cJSON_AddNumberToObject(o, "active_bytes_per_token", (double)active_bytes);
        cJSON_AddNumberToObject(o, "tg_weight_gb_s", weight_gb_s);
        cJSON_AddNumberToObject(o, "read_bw_gb_s", read_bw);
        if (do_spec) {
            cJSON_AddNumberToObject(o, "spec_exit_layers", spec.n_exit);
            cJSON_AddNumberToObject(o, "spec_drafts", spec.n_draft);
            cJSON_AddNumberToObject(o, "spec_plain_tok_s", sr.plain_tok_s);
            cJSON_AddNumberToObject(o, "spec_tok_s", sr.spec_tok_s);
            cJSON_AddNumberToObject(o, "spec_speedup", sr.speedup);
            cJSON_AddNumberToObject(o, "spec_accept_rate", sr.accept_rate);
            cJSON_AddNumberToObject(o, "spec_tokens_per_step", sr.tokens_per_step);
            cJSON_AddBoolToObject(o, "spec_identical", sr.identical);
        }
        s = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!s) {
            cli_fail(bench_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        printf("%s\n", s);
        free(s);
    } else {
        printf("model            %s (%s, %s)\n", path, info.arch ? info.arch : "",
               info.ftype ? info.ftype : "");
        printf("threads          %d%s\n", n_threads, trace ? " (trace on)" : "");
        printf("load             %s\n",
               info.copied ? "copied into huge-page memory" : "mapped from the file");
        printf("pp%-5d          %.1f tok/s (median of %d)\n", n_prompt, pp_med, reps);
        printf("tg%-5d          %.1f tok/s (median of %d", n_gen, tg_med, reps);
        if (depth > 0)
            printf(", after %d tokens", depth);
        printf(")\n");
        printf("weights/token    %.2f MiB (active experts only)\n",
               (double)active_bytes / (1024.0 * 1024.0));
        printf("tg weight bw     %.2f GB/s", weight_gb_s);
        if (read_bw > 0)
            printf(" (%.0f%% of read bandwidth)", 100.0 * weight_gb_s / read_bw);
        printf("\nread bandwidth   %.2f GB/s (measured, %d threads)\n", read_bw,
               n_threads);
        if (do_spec) {
            printf("greedy plain     %.1f tok/s (%d tokens from BOS, median of %d)\n",
                   sr.plain_tok_s, n_gen, reps);
            printf("speculate %d:%-4d %.1f tok/s, speed-up %.2fx, acceptance %.1f%% "
                   "(%lld of %lld drafts), %.2f tokens/step, output %s\n",
                   spec.n_exit, spec.n_draft, sr.spec_tok_s, sr.speedup,
                   100.0 * sr.accept_rate, (long long)sr.accepted, (long long)sr.drafted,
                   sr.tokens_per_step, sr.identical ? "identical" : "DIFFERENT");
        }
    }
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(bench_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
out:
    free(toks);
    free(pp);
    free(tg);
    free(bw);
    moe_ctx_free(ctx);
    moe_model_free(model);
    return rc;
}
