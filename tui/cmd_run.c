/*
 * cmd_run.c - `moe-studio run`: tokenize a prompt, decode it, sample tokens
 * through the engine's sampler chain and stream the text to stdout as raw
 * bytes. Timing goes to stderr with --verbose.
 * Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static const char *const run_cmd = "run";

static void run_usage(FILE *f)
{
    moe_sampler_params d = moe_sampler_default_params();
    char order[160];
    size_t off = 0;
    order[0] = '\0';
    for (int32_t i = 0; i < d.n_order && i < MOE_STAGE_COUNT && off < sizeof order; i++)
        off += (size_t)snprintf(order + off, sizeof order - off, "%s%s", i ? "," : "",
                                moe_sampler_stage_name(d.order[i]));
    fprintf(f,
            "usage: moe-studio run -m MODEL [-p PROMPT | -f FILE] [-n N] [options]\n"
            "  -m, --model MODEL          GGUF model\n"
            "  -p, --prompt TEXT          prompt (default: empty, start from BOS)\n"
            "  -f, --file FILE            read the prompt from FILE\n"
            "  -n, --n-predict N          tokens to generate (default 128; -1: until\n"
            "                             end of generation or context full)\n"
            "      --temp T               temperature, 0 = greedy (default %g)\n"
            "      --top-k K              keep the K most likely tokens, 0 = off (default %d)\n"
            "      --top-p P              nucleus sampling, 1 = off (default %g)\n"
            "      --min-p P              drop tokens below P * max prob, 0 = off (default %g)\n"
            "      --typical P            locally typical sampling, 1 = off (default %g)\n"
            "      --repeat-penalty R     penalise recent tokens, 1 = off (default %g)\n"
            "      --repeat-last-n N      history the penalties look at (default %d)\n"
            "      --freq-penalty F       frequency penalty, 0 = off (default %g)\n"
            "      --presence-penalty P   presence penalty, 0 = off (default %g)\n"
            "      --sampler-order LIST   stage order (default %s)\n"
            "      --seed S               sampler seed (default %llu)\n"
            "  -t, --threads N            worker threads\n"
            "  -c, --ctx-size N           context length (default: the model's, max 4096)\n"
            "      --no-bos               do not add BOS to the prompt\n"
            "      --order O              summation order of float-weight products:\n"
            "                             reference (default, as the reference runtime: the\n"
            "                             prompt tiled, each generated token vector-dot),\n"
            "                             batch or token (logits independent of batching)\n"
            "      --verbose              timing line on stderr (with --exit: the exit\n"
            "                             layer of every token; with --speculate: the\n"
            "                             acceptance rate)\n"
            "      --exit SPEC            early exit: entropy:T, maxprob:P, patience:N,\n"
            "                             hash:TABLE, hashtext:TEXT[:B], window:T:W, depth:L\n"
            "      --speculate E:d        self-speculative decoding: draft d tokens with the\n"
            "                             first E layers, verify with the rest (temperature,\n"
            "                             top-k, top-p, min-p; no penalties)\n",
            (double)d.temp, (int)d.top_k, (double)d.top_p, (double)d.min_p,
            (double)d.typical_p, (double)d.repeat_penalty, (int)d.penalty_last_n,
            (double)d.freq_penalty, (double)d.presence_penalty, order,
            (unsigned long long)d.seed);
}

enum {
    RUN_OPT_TEMP = 256,
    RUN_OPT_TOP_K,
    RUN_OPT_TOP_P,
    RUN_OPT_MIN_P,
    RUN_OPT_TYPICAL,
    RUN_OPT_REPEAT_PENALTY,
    RUN_OPT_REPEAT_LAST_N,
    RUN_OPT_FREQ_PENALTY,
    RUN_OPT_PRESENCE_PENALTY,
    RUN_OPT_SAMPLER_ORDER,
    RUN_OPT_SEED,
    RUN_OPT_NO_BOS,
    RUN_OPT_VERBOSE,
    RUN_OPT_EXIT,
    RUN_OPT_SPECULATE,
    RUN_OPT_ORDER,
};

typedef struct {
    const char *model_path;
    const char *prompt;
    const char *prompt_file;
    int n_predict;
    int n_threads;
    int n_ctx;
    bool no_bos;
    bool verbose;
    moe_sampler_params sp;
    const char *exit_spec;
    const char *spec_spec;
    moe_spec_params spec;
    moe_order order;
} run_opts;

/* Parse argv into o; returns CLI_OK, or an exit code (help -> -1). */
static int run_parse(int argc, char **argv, run_opts *o)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"n-predict", required_argument, NULL, 'n'},
        {"threads", required_argument, NULL, 't'},
        {"ctx-size", required_argument, NULL, 'c'},
        {"temp", required_argument, NULL, RUN_OPT_TEMP},
        {"top-k", required_argument, NULL, RUN_OPT_TOP_K},
        {"top-p", required_argument, NULL, RUN_OPT_TOP_P},
        {"min-p", required_argument, NULL, RUN_OPT_MIN_P},
        {"typical", required_argument, NULL, RUN_OPT_TYPICAL},
        {"repeat-penalty", required_argument, NULL, RUN_OPT_REPEAT_PENALTY},
        {"repeat-last-n", required_argument, NULL, RUN_OPT_REPEAT_LAST_N},
        {"freq-penalty", required_argument, NULL, RUN_OPT_FREQ_PENALTY},
        {"presence-penalty", required_argument, NULL, RUN_OPT_PRESENCE_PENALTY},
        {"sampler-order", required_argument, NULL, RUN_OPT_SAMPLER_ORDER},
        {"seed", required_argument, NULL, RUN_OPT_SEED},
        {"no-bos", no_argument, NULL, RUN_OPT_NO_BOS},
        {"verbose", no_argument, NULL, RUN_OPT_VERBOSE},
        {"exit", required_argument, NULL, RUN_OPT_EXIT},
        {"speculate", required_argument, NULL, RUN_OPT_SPECULATE},
        {"order", required_argument, NULL, RUN_OPT_ORDER},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    moe_sampler_params *sp = &o->sp;
    moe_status st;
    int c, v;

    while ((c = getopt_long(argc, argv, ":m:p:f:n:t:c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_path = optarg; break;
        case 'p': o->prompt = optarg; break;
        case 'f': o->prompt_file = optarg; break;
        case 'n':
            if (!cli_parse_int(run_cmd, "-n", optarg, -1, INT_MAX, &o->n_predict))
                return CLI_EXIT_USAGE;
            break;
        case 't':
            if (!cli_parse_int(run_cmd, "-t", optarg, 1, 1024, &o->n_threads))
                return CLI_EXIT_USAGE;
            break;
        case 'c':
            if (!cli_parse_int(run_cmd, "-c", optarg, 1, 1 << 24, &o->n_ctx))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_TEMP:
            if (!cli_parse_float(run_cmd, "--temp", optarg, 0, 1e6, &sp->temp))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_TOP_K:
            if (!cli_parse_int(run_cmd, "--top-k", optarg, 0, INT_MAX, &v))
                return CLI_EXIT_USAGE;
            sp->top_k = v;
            break;
        case RUN_OPT_TOP_P:
            if (!cli_parse_float(run_cmd, "--top-p", optarg, 0, 1, &sp->top_p))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_MIN_P:
            if (!cli_parse_float(run_cmd, "--min-p", optarg, 0, 1, &sp->min_p))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_TYPICAL:
            if (!cli_parse_float(run_cmd, "--typical", optarg, 0, 1, &sp->typical_p))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_REPEAT_PENALTY:
            if (!cli_parse_float(run_cmd, "--repeat-penalty", optarg, 0, 1e6,
                                 &sp->repeat_penalty))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_REPEAT_LAST_N:
            if (!cli_parse_int(run_cmd, "--repeat-last-n", optarg, 0, 1 << 24, &v))
                return CLI_EXIT_USAGE;
            sp->penalty_last_n = v;
            break;
        case RUN_OPT_FREQ_PENALTY:
            if (!cli_parse_float(run_cmd, "--freq-penalty", optarg, -1e6, 1e6,
                                 &sp->freq_penalty))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_PRESENCE_PENALTY:
            if (!cli_parse_float(run_cmd, "--presence-penalty", optarg, -1e6, 1e6,
                                 &sp->presence_penalty))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_SAMPLER_ORDER:
            st = moe_sampler_parse_order(optarg, sp);
            if (st != MOE_OK) {
                cli_fail_engine(run_cmd, st, "bad --sampler-order '%s'", optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case RUN_OPT_SEED:
            if (!cli_parse_u64(run_cmd, "--seed", optarg, &sp->seed))
                return CLI_EXIT_USAGE;
            break;
        case RUN_OPT_NO_BOS: o->no_bos = true; break;
        case RUN_OPT_VERBOSE: o->verbose = true; break;
        case RUN_OPT_EXIT:
            if (strncmp(optarg, "hashtext:", 9) != 0) {
                moe_exit_params ep;
                moe_hash_table *h = NULL;
                st = moe_exit_parse(optarg, &ep, &h);
                moe_hash_free(h);
                if (st != MOE_OK)
                    return cli_fail(run_cmd, CLI_EXIT_USAGE, "--exit: %s", moe_last_error());
            }
            o->exit_spec = optarg;
            break;
        case RUN_OPT_SPECULATE:
            st = moe_spec_parse(optarg, &o->spec);
            if (st != MOE_OK)
                return cli_fail(run_cmd, CLI_EXIT_USAGE, "--speculate: %s", moe_last_error());
            o->spec_spec = optarg;
            break;
        case RUN_OPT_ORDER:
            if (!cli_parse_order(run_cmd, optarg, &o->order))
                return CLI_EXIT_USAGE;
            break;
        case 'h': run_usage(stdout); return -1;
        default: return cli_bad_option(run_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(run_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'",
                        argv[optind]);
    if (!o->model_path)
        return cli_fail(run_cmd, CLI_EXIT_USAGE, "missing -m MODEL");
    if (o->prompt && o->prompt_file)
        return cli_fail(run_cmd, CLI_EXIT_USAGE, "give -p or -f, not both");
    if (o->exit_spec && o->spec_spec)
        return cli_fail(run_cmd, CLI_EXIT_USAGE, "give --exit or --speculate, not both");
    if (o->spec_spec && (sp->repeat_penalty != 1.0f || sp->freq_penalty != 0.0f ||
                         sp->presence_penalty != 0.0f || sp->typical_p < 1.0f))
        return cli_fail(run_cmd, CLI_EXIT_USAGE,
                        "--speculate samples with --temp, --top-k, --top-p and --min-p only");
    return CLI_OK;
}

int cmd_run(int argc, char **argv)
{
    run_opts o = {.n_predict = 128, .sp = moe_sampler_default_params(),
                  .spec = moe_spec_default_params()};
    moe_spec_stats spec_stats = {0};
    int32_t spec_buf[64], spec_n = 0, spec_i = 0;
    int32_t *exit_layers = NULL, n_exit_rec = 0;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_sampler *smp = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_model_info info;
    moe_status st;
    char *file_text = NULL;
    const char *text;
    size_t text_len;
    int32_t *toks = NULL, n_toks = 0, n_gen = 0;
    bool strip_space, printed_any, ctx_full = false;
    double t0, t1, t2;
    int rc = run_parse(argc, argv, &o);

    if (rc != CLI_OK)
        return rc < 0 ? CLI_OK : rc;
    rc = CLI_EXIT_FAIL;

    if (o.prompt_file) {
        file_text = cli_read_file(run_cmd, o.prompt_file, &text_len);
        if (!file_text)
            return CLI_EXIT_FAIL;
        text = file_text;
    } else {
        text = o.prompt ? o.prompt : "";
        text_len = strlen(text);
    }

    model = cli_load_model(run_cmd, o.model_path, o.n_threads);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);

    if (text_len == 0) {
        /* An empty prompt starts from BOS alone. */
        int32_t bos = moe_token_bos(model);
        if (bos < 0) {
            cli_fail(run_cmd, CLI_EXIT_FAIL,
                     "empty prompt and the model has no BOS token to start from");
            goto out;
        }
        toks = malloc(sizeof *toks);
        if (!toks) {
            cli_fail(run_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        toks[0] = bos;
        n_toks = 1;
    } else if (!cli_tokenize(run_cmd, model, text, text_len, !o.no_bos, false,
                             &toks, &n_toks)) {
        goto out;
    }
    if (n_toks == 0) {
        cli_fail(run_cmd, CLI_EXIT_FAIL, "the prompt gives no tokens");
        goto out;
    }

    if (o.n_ctx > 0)
        cp.n_ctx = o.n_ctx;
    cp.n_threads = o.n_threads;
    cp.order = o.order;
    st = moe_ctx_new(model, &cp, &ctx);
    if (st != MOE_OK) {
        cli_fail_engine(run_cmd, st, "cannot create a context");
        goto out;
    }
    if (n_toks > moe_ctx_n_ctx(ctx)) {
        cli_fail(run_cmd, CLI_EXIT_FAIL,
                 "prompt of %d tokens does not fit the context of %d (use -c)",
                 n_toks, moe_ctx_n_ctx(ctx));
        goto out;
    }
    if (o.exit_spec && !cli_exit_setup(run_cmd, ctx, o.exit_spec)) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (o.spec_spec) {
        if (o.spec.n_exit > info.n_layer) {
            cli_fail(run_cmd, CLI_EXIT_USAGE, "--speculate: %d draft layers, the model has %d",
                     o.spec.n_exit, info.n_layer);
            rc = CLI_EXIT_USAGE;
            goto out;
        }
        o.spec.temp = o.sp.temp;
        o.spec.top_k = o.sp.top_k;
        o.spec.top_p = o.sp.top_p;
        o.spec.min_p = o.sp.min_p;
        o.spec.seed = o.sp.seed;
    }
    if (o.exit_spec && o.verbose) {
        exit_layers = malloc((size_t)(o.n_predict > 0 ? o.n_predict : moe_ctx_n_ctx(ctx)) *
                             sizeof *exit_layers);
        if (!exit_layers) {
            cli_fail(run_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
    }
    st = moe_sampler_new(&o.sp, info.n_vocab, &smp);
    if (st != MOE_OK) {
        cli_fail_engine(run_cmd, st, "cannot create the sampler");
        goto out;
    }

    fwrite(text, 1, text_len, stdout);
    fflush(stdout);
    printed_any = text_len > 0;
    /* SentencePiece pieces carry the word's leading space; the first piece
     * after BOS loses it when detokenized. */
    strip_space = text_len == 0 && cli_model_adds_space_prefix(model);

    t0 = cli_now();
    st = moe_ctx_decode(ctx, toks, n_toks, false);
    if (st != MOE_OK) {
        cli_fail_engine(run_cmd, st, "decoding the prompt failed");
        goto out;
    }
    t1 = cli_now();
    for (int32_t i = 0; i < n_toks; i++)
        moe_sampler_accept(smp, toks[i]);
    if (exit_layers) {
        /* the prompt's last batch (moe_ctx_decode splits at n_batch) */
        int32_t n_last = n_toks < 512 ? n_toks : (n_toks - 1) % 512 + 1;
        fprintf(stderr, "moe-studio run: exit layers of the prompt (%s, 0-based, %d = all):",
                o.exit_spec, info.n_layer - 1);
        for (int32_t i = 0; i < n_last; i++)
            fprintf(stderr, " %d", (int)moe_ctx_exit_layer(ctx, i));
        fputc('\n', stderr);
    }

    for (int i = 0; o.n_predict < 0 || i < o.n_predict; i++) {
        const float *logits = moe_ctx_logits(ctx, -1);
        const char *piece;
        size_t len = 0;
        int32_t id;
        if (!logits) {
            cli_fail(run_cmd, CLI_EXIT_FAIL, "engine kept no logits");
            goto out;
        }
        if (i > 0 && spec_i < spec_n)
            id = spec_buf[spec_i++]; /* chosen by the last speculation step */
        else
            id = moe_sampler_sample(smp, logits);
        if (id < 0 || id >= info.n_vocab) {
            cli_fail(run_cmd, CLI_EXIT_FAIL, "sampler returned token %d: %s",
                     (int)id, moe_last_error());
            goto out;
        }
        moe_sampler_accept(smp, id);
        if (moe_token_is_eog(model, id))
            break;
        piece = moe_token_piece(model, id, &len);
        if (piece && len > 0) {
            if (!printed_any && strip_space && piece[0] == ' ') {
                piece++;
                len--;
            }
            fwrite(piece, 1, len, stdout);
            fflush(stdout);
            printed_any = printed_any || len > 0;
        }
        n_gen++;
        if (o.n_predict >= 0 && i + 1 >= o.n_predict)
            break;
        if (o.spec_spec && spec_i < spec_n)
            continue; /* queued tokens before the last are already fed */
        if (moe_ctx_pos(ctx) >= moe_ctx_n_ctx(ctx)) {
            ctx_full = true;
            break;
        }
        if (o.spec_spec) {
            /* feed id plus drafts; the step queues the tokens that follow */
            {
                int32_t want = o.n_predict >= 0 ? o.n_predict - (i + 1) : 64;
                st = moe_ctx_speculate(ctx, &o.spec, id, spec_buf, want < 64 ? want : 64,
                                       &spec_n, &spec_stats);
            }
            spec_i = 0;
            if (st != MOE_OK) {
                cli_fail_engine(run_cmd, st, "speculation at token %d failed", n_gen);
                goto out;
            }
            continue;
        }
        st = moe_ctx_decode(ctx, &id, 1, false);
        if (st != MOE_OK) {
            cli_fail_engine(run_cmd, st, "decoding token %d failed", n_gen);
            goto out;
        }
        if (exit_layers)
            exit_layers[n_exit_rec++] = moe_ctx_exit_layer(ctx, -1);
    }
    t2 = cli_now();
    if (isatty(STDOUT_FILENO))
        fputc('\n', stdout);
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(run_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    if (ctx_full)
        fprintf(stderr, "moe-studio run: stopped: context of %d tokens is full\n",
                moe_ctx_n_ctx(ctx));
    if (o.verbose)
        fprintf(stderr,
                "moe-studio run: %s (%s): prompt %d tokens in %.1f ms (%.1f tok/s), "
                "generated %d tokens in %.1f ms (%.1f tok/s)\n",
                info.name ? info.name : "", info.arch ? info.arch : "", n_toks,
                (t1 - t0) * 1e3, (t1 > t0) ? n_toks / (t1 - t0) : 0.0, n_gen,
                (t2 - t1) * 1e3, (t2 > t1) ? n_gen / (t2 - t1) : 0.0);
    if (exit_layers) {
        moe_exit_stats es;
        moe_ctx_exit_stats(ctx, &es);
        fprintf(stderr, "moe-studio run: exit layers of the generated tokens:");
        for (int32_t i = 0; i < n_exit_rec; i++)
            fprintf(stderr, " %d", (int)exit_layers[i]);
        fputc('\n', stderr);
        fprintf(stderr,
                "moe-studio run: %lld tokens, mean exit layer %.3f, layers saved %.1f%%\n",
                (long long)es.n_tokens,
                es.n_tokens ? (double)es.layers_run / es.n_tokens - 1.0 : 0.0,
                es.layers_total ? 100.0 * (1.0 - (double)es.layers_run / es.layers_total)
                                : 0.0);
    }
    if (o.spec_spec && o.verbose)
        fprintf(stderr,
                "moe-studio run: speculate %d:%d: %lld steps, %lld of %lld drafts accepted "
                "(%.1f%%), %.2f tokens/step\n",
                o.spec.n_exit, o.spec.n_draft, (long long)spec_stats.steps,
                (long long)spec_stats.accepted, (long long)spec_stats.drafted,
                spec_stats.drafted ? 100.0 * spec_stats.accepted / spec_stats.drafted : 0.0,
                spec_stats.steps ? (double)spec_stats.emitted / spec_stats.steps : 0.0);
    rc = CLI_OK;
out:
    free(exit_layers);
    moe_sampler_free(smp);
    moe_ctx_free(ctx);
    moe_model_free(model);
    free(toks);
    free(file_text);
    return rc;
}
