/*
 * cmd_exit.c - `moe-studio exit`: early exit on a text. For each --exit
 * spec (and the full model first) the perplexity of the text, the mean exit
 * layer and the fraction of layer computations saved; --save-hash builds a
 * HashEE bucket table from the text. Also the helpers other commands use to
 * add `--exit SPEC` (cli_exit_setup, cli_exit_perplexity, cli_exit_report).
 * Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const exit_cmd = "exit";

bool cli_exit_setup(const char *cmd, moe_ctx *ctx, const char *spec)
{
    moe_status st = moe_ctx_set_exit_spec(ctx, spec);
    if (st != MOE_OK) {
        cli_fail(cmd, CLI_EXIT_USAGE, "--exit: %s", moe_last_error());
        return false;
    }
    moe_ctx_exit_reset_stats(ctx);
    return true;
}

/* log p(target) from one logits row */
static double log_prob(const float *z, int32_t n_vocab, int32_t target)
{
    float mx = -INFINITY;
    double sum = 0.0;
    for (int32_t v = 0; v < n_vocab; v++)
        mx = z[v] > mx ? z[v] : mx;
    for (int32_t v = 0; v < n_vocab; v++)
        sum += exp((double)z[v] - (double)mx);
    return (double)z[target] - (double)mx - log(sum);
}

bool cli_exit_perplexity(const char *cmd, moe_ctx *ctx, const int32_t *toks, int32_t n,
                         int32_t chunk, bool one_by_one, cli_exit_result *res)
{
    const moe_model *m = moe_ctx_model(ctx);
    moe_model_info info;
    moe_exit_stats es;
    double nll = 0.0;
    int64_t n_pred = 0, n_dec = 0;
    double t0;
    memset(res, 0, sizeof *res);
    moe_model_get_info(m, &info);
    if (chunk <= 1 || chunk > moe_ctx_n_ctx(ctx))
        chunk = moe_ctx_n_ctx(ctx);
    moe_ctx_exit_reset_stats(ctx);
    t0 = cli_now();
    for (int32_t s = 0; s + 1 < n; s += chunk) {
        int32_t len = n - s < chunk ? n - s : chunk;
        moe_status st;
        if (len < 2)
            break;
        moe_ctx_truncate(ctx, 0);
        if (!one_by_one) {
            st = moe_ctx_decode(ctx, toks + s, len, true);
            if (st != MOE_OK) {
                cli_fail_engine(cmd, st, "decoding tokens %d..%d failed", s, s + len);
                return false;
            }
        }
        n_dec += one_by_one ? len - 1 : len;
        for (int32_t i = 0; i + 1 < len; i++) {
            const float *z;
            if (one_by_one) {
                /* as in generation: one decode per token */
                st = moe_ctx_decode(ctx, toks + s + i, 1, false);
                if (st != MOE_OK) {
                    cli_fail_engine(cmd, st, "decoding token %d failed", s + i);
                    return false;
                }
            }
            z = moe_ctx_logits(ctx, one_by_one ? -1 : i);
            if (!z) {
                cli_fail(cmd, CLI_EXIT_FAIL, "engine kept no logits");
                return false;
            }
            nll -= log_prob(z, info.n_vocab, toks[s + i + 1]);
            n_pred++;
        }
    }
    res->seconds = cli_now() - t0;
    moe_ctx_exit_stats(ctx, &es);
    if (es.n_tokens == 0) {
        /* no criterion: the plain pass ran every layer of every token */
        es.n_tokens = n_dec;
        es.layers_run = n_dec * info.n_layer;
        es.layers_total = es.layers_run;
    }
    res->n_pred = n_pred;
    res->ppl = n_pred > 0 ? exp(nll / (double)n_pred) : 0.0;
    res->n_tokens = es.n_tokens;
    res->mean_exit_layer = es.n_tokens > 0 ? (double)es.layers_run / es.n_tokens - 1.0
                                           : info.n_layer - 1.0;
    res->saved = es.layers_total > 0 ? 1.0 - (double)es.layers_run / es.layers_total : 0.0;
    return true;
}

void cli_exit_report(FILE *f, const char *spec, const cli_exit_result *r)
{
    fprintf(f,
            "%-24s ppl %10.4f  mean exit layer %6.3f  layers saved %5.1f%%  (%lld tokens, "
            "%.0f tok/s)\n",
            spec, r->ppl, r->mean_exit_layer, 100.0 * r->saved, (long long)r->n_tokens,
            r->seconds > 0 ? r->n_tokens / r->seconds : 0.0);
}

static void exit_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio exit -m MODEL -f TEXT [--exit SPEC]... [options]\n"
            "  -m, --model MODEL     GGUF model\n"
            "  -f, --file TEXT       text to evaluate (BOS is added when the model says so)\n"
            "  -e, --exit SPEC       early-exit criterion (repeatable): entropy:T,\n"
            "                        maxprob:P, patience:N, hash:TABLE, hashtext:TEXT[:B],\n"
            "                        window:T:W, depth:L, none\n"
            "  -c, --ctx-size N      evaluate in chunks of N tokens (default: 256)\n"
            "  -t, --threads N       worker threads\n"
            "      --save-hash OUT   write a HashEE table built from TEXT to OUT\n"
            "      --buckets B       buckets of that table (default: the model's layers)\n"
            "      --one-by-one      decode one token per call, as in generation (shows\n"
            "                        the wall-time effect of exiting)\n"
            "Prints for the full model and each spec: perplexity, mean exit layer\n"
            "(0-based), fraction of layer computations saved.\n");
}

enum { EXIT_OPT_SAVE_HASH = 256, EXIT_OPT_BUCKETS, EXIT_OPT_ONE_BY_ONE };

#define EXIT_MAX_SPECS 64

int cmd_exit(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"file", required_argument, NULL, 'f'},
        {"exit", required_argument, NULL, 'e'},
        {"ctx-size", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 't'},
        {"save-hash", required_argument, NULL, EXIT_OPT_SAVE_HASH},
        {"buckets", required_argument, NULL, EXIT_OPT_BUCKETS},
        {"one-by-one", no_argument, NULL, EXIT_OPT_ONE_BY_ONE},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *model_path = NULL, *file = NULL, *save_hash = NULL;
    const char *specs[EXIT_MAX_SPECS];
    int n_specs = 0, n_ctx = 256, n_threads = 0, buckets = 0, c, rc = CLI_EXIT_FAIL;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_model_info info;
    char *text = NULL;
    size_t len = 0;
    int32_t *toks = NULL, n_toks = 0;
    bool one_by_one = false;
    moe_status st;

    while ((c = getopt_long(argc, argv, ":m:f:e:c:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': file = optarg; break;
        case 'e':
            if (n_specs == EXIT_MAX_SPECS)
                return cli_fail(exit_cmd, CLI_EXIT_USAGE, "at most %d --exit specs",
                                EXIT_MAX_SPECS);
            specs[n_specs++] = optarg;
            break;
        case 'c':
            if (!cli_parse_int(exit_cmd, "-c", optarg, 2, 1 << 20, &n_ctx))
                return CLI_EXIT_USAGE;
            break;
        case 't':
            if (!cli_parse_int(exit_cmd, "-t", optarg, 1, 1024, &n_threads))
                return CLI_EXIT_USAGE;
            break;
        case EXIT_OPT_SAVE_HASH: save_hash = optarg; break;
        case EXIT_OPT_ONE_BY_ONE: one_by_one = true; break;
        case EXIT_OPT_BUCKETS:
            if (!cli_parse_int(exit_cmd, "--buckets", optarg, 1, 1 << 24, &buckets))
                return CLI_EXIT_USAGE;
            break;
        case 'h': exit_usage(stdout); return CLI_OK;
        default: return cli_bad_option(exit_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(exit_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!model_path)
        return cli_fail(exit_cmd, CLI_EXIT_USAGE, "missing -m MODEL");
    if (!file)
        return cli_fail(exit_cmd, CLI_EXIT_USAGE, "missing -f TEXT");
    /* specs are checked before the (slow) work starts */
    for (int i = 0; i < n_specs; i++) {
        moe_exit_params p;
        moe_hash_table *h = NULL;
        if (strncmp(specs[i], "hashtext:", 9) == 0 || strncmp(specs[i], "hash:", 5) == 0)
            continue; /* tables may be written by --save-hash first */
        st = moe_exit_parse(specs[i], &p, &h);
        moe_hash_free(h);
        if (st != MOE_OK)
            return cli_fail(exit_cmd, CLI_EXIT_USAGE, "--exit: %s", moe_last_error());
    }

    text = cli_read_file(exit_cmd, file, &len);
    if (!text)
        return CLI_EXIT_FAIL;
    model = cli_load_model(exit_cmd, model_path, n_threads);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);
    if (save_hash) {
        moe_hash_table *h = NULL;
        st = moe_hash_from_text(model, text, len, buckets > 0 ? buckets : info.n_layer, &h);
        if (st == MOE_OK)
            st = moe_hash_save(h, save_hash);
        moe_hash_free(h);
        if (st != MOE_OK) {
            cli_fail_engine(exit_cmd, st, "cannot build the HashEE table");
            goto out;
        }
        printf("HashEE table (%d buckets) written to %s\n",
               buckets > 0 ? buckets : info.n_layer, save_hash);
    }
    if (!cli_tokenize(exit_cmd, model, text, len, moe_model_add_bos(model), false, &toks,
                      &n_toks))
        goto out;
    if (n_toks < 2) {
        cli_fail(exit_cmd, CLI_EXIT_FAIL, "the text gives %d tokens; need at least 2", n_toks);
        goto out;
    }
    cp.n_ctx = n_ctx;
    cp.n_threads = n_threads;
    st = moe_ctx_new(model, &cp, &ctx);
    if (st != MOE_OK) {
        cli_fail_engine(exit_cmd, st, "cannot create a context");
        goto out;
    }
    printf("model %s, %d layers, text %d tokens, chunks of %d\n", info.name ? info.name : "",
           info.n_layer, n_toks, moe_ctx_n_ctx(ctx));
    for (int i = -1; i < n_specs; i++) {
        cli_exit_result r;
        const char *spec = i < 0 ? "none" : specs[i];
        if (!cli_exit_setup(exit_cmd, ctx, spec)) {
            rc = CLI_EXIT_USAGE;
            goto out;
        }
        if (!cli_exit_perplexity(exit_cmd, ctx, toks, n_toks, moe_ctx_n_ctx(ctx), one_by_one,
                                 &r))
            goto out;
        cli_exit_report(stdout, spec, &r);
        fflush(stdout);
    }
    if (ferror(stdout)) {
        cli_fail(exit_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
out:
    moe_ctx_free(ctx);
    moe_model_free(model);
    free(toks);
    free(text);
    return rc;
}

/* ---- self-speculative decoding: greedy generation plain vs speculative ---- */

static int32_t spec_argmax(const float *z, int32_t n)
{
    int32_t a = 0;
    for (int32_t v = 1; v < n; v++)
        if (z[v] > z[a])
            a = v;
    return a;
}

bool cli_spec_bench(const char *cmd, moe_ctx *ctx, const moe_spec_params *sp, int n_gen,
                    int reps, cli_spec_bench_result *r)
{
    const moe_model *m = moe_ctx_model(ctx);
    moe_model_info info;
    int32_t *plain = NULL, *spec = NULL, bos = moe_token_bos(m);
    double *tp = NULL, *ts = NULL;
    moe_spec_stats stats = {0};
    moe_status st;
    bool ok = false;

    memset(r, 0, sizeof *r);
    moe_model_get_info(m, &info);
    if (bos < 0)
        bos = 0;
    if (n_gen + 1 > moe_ctx_n_ctx(ctx)) {
        cli_fail(cmd, CLI_EXIT_FAIL, "speculation: %d tokens do not fit the context", n_gen);
        return false;
    }
    plain = malloc((size_t)n_gen * sizeof *plain);
    spec = malloc((size_t)n_gen * sizeof *spec);
    tp = malloc((size_t)reps * sizeof *tp);
    ts = malloc((size_t)reps * sizeof *ts);
    if (!plain || !spec || !tp || !ts) {
        cli_fail(cmd, CLI_EXIT_FAIL, "out of memory");
        goto out;
    }
    r->identical = true;
    for (int rep = 0; rep < reps; rep++) {
        double t0, t1;
        int32_t id, got = 0;
        /* plain greedy from BOS */
        moe_ctx_truncate(ctx, 0);
        if ((st = moe_ctx_decode(ctx, &bos, 1, false)) != MOE_OK)
            goto engine_fail;
        id = spec_argmax(moe_ctx_logits(ctx, -1), info.n_vocab);
        t0 = cli_now();
        for (int i = 0; i < n_gen; i++) {
            if ((st = moe_ctx_decode(ctx, &id, 1, false)) != MOE_OK)
                goto engine_fail;
            id = spec_argmax(moe_ctx_logits(ctx, -1), info.n_vocab);
            plain[i] = id;
        }
        t1 = cli_now();
        tp[rep] = t1 > t0 ? n_gen / (t1 - t0) : 0.0;
        /* the same with speculation */
        moe_ctx_truncate(ctx, 0);
        if ((st = moe_ctx_decode(ctx, &bos, 1, false)) != MOE_OK)
            goto engine_fail;
        id = spec_argmax(moe_ctx_logits(ctx, -1), info.n_vocab);
        t0 = cli_now();
        while (got < n_gen) {
            int32_t n_out = 0;
            st = moe_ctx_speculate(ctx, sp, id, spec + got, n_gen - got, &n_out, &stats);
            if (st != MOE_OK)
                goto engine_fail;
            got += n_out;
            id = spec[got - 1];
        }
        t1 = cli_now();
        ts[rep] = t1 > t0 ? n_gen / (t1 - t0) : 0.0;
        r->identical = r->identical && memcmp(plain, spec, (size_t)n_gen * sizeof *spec) == 0;
    }
    r->plain_tok_s = cli_median(tp, reps);
    r->spec_tok_s = cli_median(ts, reps);
    r->speedup = r->plain_tok_s > 0 ? r->spec_tok_s / r->plain_tok_s : 0.0;
    r->drafted = stats.drafted;
    r->accepted = stats.accepted;
    r->steps = stats.steps;
    r->accept_rate = stats.drafted > 0 ? (double)stats.accepted / stats.drafted : 0.0;
    r->tokens_per_step = stats.steps > 0 ? (double)stats.emitted / stats.steps : 0.0;
    ok = true;
    goto out;
engine_fail:
    cli_fail_engine(cmd, st, "speculation benchmark failed");
out:
    free(plain);
    free(spec);
    free(tp);
    free(ts);
    return ok;
}
