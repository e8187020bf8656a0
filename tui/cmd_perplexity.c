/*
 * cmd_perplexity.c - `moe-studio perplexity`: perplexity of a text (exp of
 * the mean of -log p(next token)), evaluated in independent chunks of -c
 * tokens and forward batches of --batch tokens, under router steering and
 * simulated expert capacity (Rectify-Router), with the capacity counters.
 *
 * Options live in one table (ppl_options): name, value, id, help. getopt's
 * option array and the usage text are both made from it, and ppl_option()
 * handles each id; to add an option, add a row, an id and a case. Routing
 * options are kept as a list and applied once the context exists.
 * Uses the public engine API only; must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <assert.h>
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const ppl_cmd = "perplexity";

enum {
    PPL_OPT_MODEL = 'm',
    PPL_OPT_FILE = 'f',
    PPL_OPT_CTX = 'c',
    PPL_OPT_THREADS = 't',
    PPL_OPT_MAX_TOKENS = 'n',
    PPL_OPT_HELP = 'h',
    PPL_OPT_BATCH = 256,
    PPL_OPT_JSON,
    PPL_OPT_TOP_K,
    PPL_OPT_TEMP,
    PPL_OPT_BAN,
    PPL_OPT_FORCE,
    PPL_OPT_SCALE,
    PPL_OPT_CAPACITY,
    PPL_OPT_DROP,
    PPL_OPT_DEVICES,
    PPL_OPT_RECTIFY,
    PPL_OPT_EXIT,
};

typedef struct {
    const char *name;    /* long option; NULL: a heading line (help text) */
    const char *value;   /* value placeholder; NULL: a flag */
    int id;              /* short option char or PPL_OPT_* */
    const char *help;
} ppl_opt;

static const ppl_opt ppl_options[] = {
    {"model", "MODEL", PPL_OPT_MODEL, "GGUF model"},
    {"file", "FILE", PPL_OPT_FILE, "text to score (BOS added when the model says so)"},
    {"ctx", "N", PPL_OPT_CTX, "tokens per chunk; chunks are scored independently\n"
                              "(default: the model's context, at most 512)"},
    {"batch", "N", PPL_OPT_BATCH, "tokens per forward batch, the batch capacity is\n"
                                  "computed over (default: the chunk)"},
    {"max-tokens", "N", PPL_OPT_MAX_TOKENS, "score only the first N tokens of the text"},
    {"threads", "N", PPL_OPT_THREADS, "worker threads (default: the engine's)"},
    {"json", NULL, PPL_OPT_JSON, "one JSON object instead of the table"},
    {NULL, NULL, 0, "routing (L is a layer or '*' for all layers, E an expert):"},
    {"top-k", "[L:]K", PPL_OPT_TOP_K, "K experts per token"},
    {"router-temp", "[L:]T", PPL_OPT_TEMP, "divide router logits by T before softmax"},
    {"ban", "L:E", PPL_OPT_BAN, "never select expert E (repeatable)"},
    {"force", "L:E", PPL_OPT_FORCE, "always select expert E (repeatable)"},
    {"scale", "L:E:S", PPL_OPT_SCALE, "multiply expert E's output by S (repeatable)"},
    {"capacity", "F", PPL_OPT_CAPACITY, "capacity factor: ceil(F*k*tokens/experts) per\n"
                                        "expert and batch (default: no limit)"},
    {"drop", "POLICY", PPL_OPT_DROP, "position (default) or score (highest top score\n"
                                     "claims capacity first)"},
    {"devices", "D", PPL_OPT_DEVICES, "simulated devices the experts are spread over (1)"},
    {"rectify", "MODE", PPL_OPT_RECTIFY, "none (default), ir, fr or both"},
    {NULL, NULL, 0, "early exit (cmd_exit.c):"},
    {"exit", "SPEC", PPL_OPT_EXIT, "entropy:T, maxprob:P, patience:N, hash:TABLE,\n"
                                   "hashtext:TEXT[:B], window:T:W, depth:L; SPEC@N:\n"
                                   "no exit before layer N. Adds mean exit layer\n"
                                   "and the fraction of layer computations saved"},
    {"help", NULL, PPL_OPT_HELP, "this help"},
};
#define PPL_N_OPTIONS (sizeof ppl_options / sizeof ppl_options[0])

static void ppl_usage(FILE *f)
{
    fprintf(f, "usage: moe-studio perplexity -m MODEL -f FILE [options]\n");
    for (size_t i = 0; i < PPL_N_OPTIONS; i++) {
        const ppl_opt *o = &ppl_options[i];
        char left[64];
        const char *h;
        if (!o->name) {
            fprintf(f, "%s\n", o->help);
            continue;
        }
        if (o->id < 256)
            snprintf(left, sizeof left, "-%c, --%s%s%s", o->id, o->name, o->value ? " " : "",
                     o->value ? o->value : "");
        else
            snprintf(left, sizeof left, "    --%s%s%s", o->name, o->value ? " " : "",
                     o->value ? o->value : "");
        fprintf(f, "  %-24s ", left);
        for (h = o->help; *h; h++) {
            fputc(*h, f);
            if (*h == '\n')
                fprintf(f, "  %-24s ", "");
        }
        fputc('\n', f);
    }
}

/* A steering request, applied once the context exists. */
typedef struct {
    int id;          /* PPL_OPT_TOP_K, _TEMP, _BAN, _FORCE, _SCALE */
    const char *arg; /* as given, for messages */
    int32_t layer;   /* -1 = all */
    int32_t expert;
    float value;
} ppl_route_op;

typedef struct {
    const char *model, *file;
    int n_ctx, n_batch, n_threads, max_tokens;
    bool json;
    ppl_route_op *ops;
    int n_ops;
    int max_top_k;
    moe_capacity_params cap;
    const char *exit_spec;
} ppl_state;

/* Parse "[L:]K", "[L:]T", "L:E" or "L:E:S" for a routing option. */
static bool ppl_route_arg(const char *opt, const char *arg, ppl_route_op *op)
{
    const char *s = arg;
    char *end;
    op->layer = -1;
    op->expert = -1;
    op->value = 0.0f;
    op->arg = arg;
    if (op->id == PPL_OPT_TOP_K || op->id == PPL_OPT_TEMP) {
        if (strchr(arg, ':') && !cli_parse_layer_prefix(&s, &op->layer, 1000000))
            goto bad;
        if (op->id == PPL_OPT_TOP_K) {
            long k = strtol(s, &end, 10);
            if (end == s || *end || k < 1 || k > 65536)
                goto bad;
            op->value = (float)k;
        } else {
            double t = strtod(s, &end);
            if (end == s || *end || !(t > 0.0) || !isfinite(t))
                goto bad;
            op->value = (float)t;
        }
        return true;
    }
    if (!cli_parse_layer_prefix(&s, &op->layer, 1000000))
        goto bad;
    {
        long e = strtol(s, &end, 10);
        if (end == s || e < 0 || e > 65536)
            goto bad;
        op->expert = (int32_t)e;
        s = end;
    }
    if (op->id == PPL_OPT_SCALE) {
        double v;
        if (*s != ':')
            goto bad;
        s++;
        v = strtod(s, &end);
        if (end == s || *end || !isfinite(v))
            goto bad;
        op->value = (float)v;
        return true;
    }
    if (*s)
        goto bad;
    return true;
bad:
    cli_fail(ppl_cmd, CLI_EXIT_USAGE, "%s: bad value '%s' (expected %s)", opt, arg,
             op->id == PPL_OPT_TOP_K   ? "[L:]K with K >= 1"
             : op->id == PPL_OPT_TEMP  ? "[L:]T with T > 0"
             : op->id == PPL_OPT_SCALE ? "L:E:S, L a layer or '*'"
                                       : "L:E, L a layer or '*'");
    return false;
}

/* Handle one parsed option; false after printing a usage error. */
static bool ppl_option(ppl_state *st, int id, const char *arg)
{
    switch (id) {
    case PPL_OPT_MODEL: st->model = arg; return true;
    case PPL_OPT_FILE: st->file = arg; return true;
    case PPL_OPT_CTX: return cli_parse_int(ppl_cmd, "-c", arg, 2, 1 << 20, &st->n_ctx);
    case PPL_OPT_BATCH: return cli_parse_int(ppl_cmd, "--batch", arg, 1, 1 << 20, &st->n_batch);
    case PPL_OPT_MAX_TOKENS:
        return cli_parse_int(ppl_cmd, "--max-tokens", arg, 2, 1 << 30, &st->max_tokens);
    case PPL_OPT_THREADS: return cli_parse_int(ppl_cmd, "-t", arg, 1, 1024, &st->n_threads);
    case PPL_OPT_JSON: st->json = true; return true;
    case PPL_OPT_TOP_K:
    case PPL_OPT_TEMP:
    case PPL_OPT_BAN:
    case PPL_OPT_FORCE:
    case PPL_OPT_SCALE: {
        ppl_route_op *op = &st->ops[st->n_ops];
        const char *name = id == PPL_OPT_TOP_K  ? "--top-k"
                           : id == PPL_OPT_TEMP ? "--router-temp"
                           : id == PPL_OPT_BAN  ? "--ban"
                           : id == PPL_OPT_FORCE ? "--force"
                                                 : "--scale";
        op->id = id;
        if (!ppl_route_arg(name, arg, op))
            return false;
        if (id == PPL_OPT_TOP_K && (int)op->value > st->max_top_k)
            st->max_top_k = (int)op->value;
        st->n_ops++;
        return true;
    }
    case PPL_OPT_CAPACITY:
        return cli_parse_float(ppl_cmd, "--capacity", arg, 0.0, 1e6, &st->cap.capacity_factor);
    case PPL_OPT_DROP:
        if (strcmp(arg, "position") == 0)
            st->cap.drop = MOE_DROP_POSITION;
        else if (strcmp(arg, "score") == 0)
            st->cap.drop = MOE_DROP_SCORE;
        else {
            cli_fail(ppl_cmd, CLI_EXIT_USAGE, "--drop: '%s' is not position or score", arg);
            return false;
        }
        return true;
    case PPL_OPT_DEVICES:
        return cli_parse_int(ppl_cmd, "--devices", arg, 1, 65536, &st->cap.n_devices);
    case PPL_OPT_EXIT: st->exit_spec = arg; return true;
    case PPL_OPT_RECTIFY:
        if (strcmp(arg, "none") == 0)
            st->cap.rectify = MOE_RECTIFY_NONE;
        else if (strcmp(arg, "ir") == 0)
            st->cap.rectify = MOE_RECTIFY_IR;
        else if (strcmp(arg, "fr") == 0)
            st->cap.rectify = MOE_RECTIFY_FR;
        else if (strcmp(arg, "both") == 0)
            st->cap.rectify = MOE_RECTIFY_BOTH;
        else {
            cli_fail(ppl_cmd, CLI_EXIT_USAGE, "--rectify: '%s' is not none, ir, fr or both",
                     arg);
            return false;
        }
        return true;
    default: return false;
    }
}

/* Apply the routing requests to the context; usage error on a bad id. */
static bool ppl_apply_routing(const ppl_state *st, moe_ctx *ctx, bool capacity_given)
{
    for (int i = 0; i < st->n_ops; i++) {
        const ppl_route_op *op = &st->ops[i];
        moe_status s = MOE_OK;
        const char *name = "";
        switch (op->id) {
        case PPL_OPT_TOP_K:
            name = "--top-k";
            s = moe_route_set_top_k(ctx, op->layer, (int32_t)op->value);
            break;
        case PPL_OPT_TEMP:
            name = "--router-temp";
            s = moe_route_set_temperature(ctx, op->layer, op->value);
            break;
        case PPL_OPT_BAN:
            name = "--ban";
            s = moe_route_ban(ctx, op->layer, op->expert, true);
            break;
        case PPL_OPT_FORCE:
            name = "--force";
            s = moe_route_force(ctx, op->layer, op->expert, true);
            break;
        case PPL_OPT_SCALE:
            name = "--scale";
            s = moe_route_set_scale(ctx, op->layer, op->expert, op->value);
            break;
        default: break;
        }
        if (s != MOE_OK) {
            cli_fail(ppl_cmd, CLI_EXIT_USAGE, "%s %s: %s", name, op->arg, moe_last_error());
            return false;
        }
    }
    if (capacity_given) {
        moe_status s = moe_route_set_capacity(ctx, &st->cap);
        if (s != MOE_OK) {
            cli_fail(ppl_cmd, CLI_EXIT_USAGE, "capacity: %s", moe_last_error());
            return false;
        }
    }
    return true;
}

static const char *const ppl_drop_names[] = {
    [MOE_DROP_POSITION] = "position",
    [MOE_DROP_SCORE] = "score",
};
static_assert(sizeof ppl_drop_names / sizeof ppl_drop_names[0] == MOE_DROP_COUNT,
              "a name for every drop policy");
static const char *const ppl_rectify_names[] = {
    [MOE_RECTIFY_NONE] = "none",
    [MOE_RECTIFY_IR] = "ir",
    [MOE_RECTIFY_FR] = "fr",
    [MOE_RECTIFY_BOTH] = "both",
};
static_assert(sizeof ppl_rectify_names / sizeof ppl_rectify_names[0] == MOE_RECTIFY_COUNT,
              "a name for every rectify mode");

int cmd_perplexity(int argc, char **argv)
{
    struct option lopts[PPL_N_OPTIONS + 1];
    char sopts[3 * PPL_N_OPTIONS + 2];
    size_t n_lopts = 0, n_s = 0;
    ppl_state st;
    int c, rc = CLI_EXIT_FAIL;
    bool capacity_given = false;
    char *text = NULL;
    size_t text_len = 0;
    int32_t *toks = NULL, n_toks = 0;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_model_info info;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_route_counters cnt;
    moe_exit_stats exs;
    double nll = 0.0, t0, secs;
    int64_t n_scored = 0;
    int n_chunks = 0;
    moe_status s;

    memset(&st, 0, sizeof st);
    st.cap.n_devices = 1;
    st.ops = calloc((size_t)(argc > 0 ? argc : 1), sizeof *st.ops);
    if (!st.ops)
        return cli_fail(ppl_cmd, CLI_EXIT_FAIL, "out of memory");

    /* getopt tables from ppl_options */
    sopts[n_s++] = ':';
    for (size_t i = 0; i < PPL_N_OPTIONS; i++) {
        const ppl_opt *o = &ppl_options[i];
        if (!o->name)
            continue;
        lopts[n_lopts].name = o->name;
        lopts[n_lopts].has_arg = o->value ? required_argument : no_argument;
        lopts[n_lopts].flag = NULL;
        lopts[n_lopts].val = o->id;
        n_lopts++;
        if (o->id < 256) {
            sopts[n_s++] = (char)o->id;
            if (o->value)
                sopts[n_s++] = ':';
        }
    }
    memset(&lopts[n_lopts], 0, sizeof lopts[n_lopts]);
    sopts[n_s] = '\0';

    while ((c = getopt_long(argc, argv, sopts, lopts, NULL)) != -1) {
        if (c == PPL_OPT_HELP) {
            ppl_usage(stdout);
            rc = CLI_OK;
            goto out;
        }
        if (c == '?' || c == ':') {
            rc = cli_bad_option(ppl_cmd, c, argv);
            goto out;
        }
        if (c == PPL_OPT_CAPACITY || c == PPL_OPT_DROP || c == PPL_OPT_DEVICES ||
            c == PPL_OPT_RECTIFY)
            capacity_given = true;
        if (!ppl_option(&st, c, optarg)) {
            rc = CLI_EXIT_USAGE;
            goto out;
        }
    }
    if (optind < argc) {
        rc = cli_fail(ppl_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
        goto out;
    }
    if (!st.model || !st.file) {
        rc = cli_fail(ppl_cmd, CLI_EXIT_USAGE, "missing %s",
                      !st.model ? "-m MODEL" : "-f FILE");
        goto out;
    }

    text = cli_read_file(ppl_cmd, st.file, &text_len);
    if (!text)
        goto out;
    model = cli_load_model(ppl_cmd, st.model, st.n_threads);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);
    if (!cli_tokenize(ppl_cmd, model, text, text_len, true, false, &toks, &n_toks))
        goto out;
    if (st.max_tokens > 0 && n_toks > st.max_tokens)
        n_toks = st.max_tokens;
    if (n_toks < 2) {
        cli_fail(ppl_cmd, CLI_EXIT_FAIL, "'%s' has %d token%s; perplexity needs at least 2",
                 st.file, n_toks, n_toks == 1 ? "" : "s");
        goto out;
    }
    if (st.n_ctx <= 0)
        st.n_ctx = info.n_ctx_train > 0 && info.n_ctx_train < 512 ? info.n_ctx_train : 512;
    if (st.n_batch <= 0 || st.n_batch > st.n_ctx)
        st.n_batch = st.n_ctx;
    if (info.n_expert <= 0 && (st.n_ops > 0 || capacity_given)) {
        rc = cli_fail(ppl_cmd, CLI_EXIT_USAGE,
                      "routing options need an MoE model ('%s' is dense)", st.model);
        goto out;
    }
    if (st.max_top_k > info.n_expert && info.n_expert > 0) {
        rc = cli_fail(ppl_cmd, CLI_EXIT_USAGE, "--top-k %d exceeds the model's %d experts",
                      st.max_top_k, info.n_expert);
        goto out;
    }

    cp.n_ctx = st.n_ctx;
    cp.n_batch = st.n_batch;
    cp.n_threads = st.n_threads;
    cp.max_top_k = st.max_top_k;
    s = moe_ctx_new(model, &cp, &ctx);
    if (s != MOE_OK) {
        cli_fail_engine(ppl_cmd, s, "cannot create a context of %d tokens", cp.n_ctx);
        goto out;
    }
    if (!ppl_apply_routing(&st, ctx, capacity_given)) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }
    if (st.exit_spec && !cli_exit_setup(ppl_cmd, ctx, st.exit_spec)) {
        rc = CLI_EXIT_USAGE;
        goto out;
    }

    /* independent chunks of n_ctx tokens; every next token of a chunk is
     * predicted from the ones before it in the chunk */
    t0 = cli_now();
    for (int32_t start = 0; start + 1 < n_toks; start += st.n_ctx) {
        int32_t len = n_toks - start < st.n_ctx ? n_toks - start : st.n_ctx;
        if (len < 2)
            break;
        moe_ctx_truncate(ctx, 0);
        s = moe_ctx_decode(ctx, toks + start, len, true);
        if (s != MOE_OK) {
            cli_fail_engine(ppl_cmd, s, "decode of chunk at token %d failed", start);
            goto out;
        }
        for (int32_t i = 0; i + 1 < len; i++) {
            const float *l = moe_ctx_logits(ctx, i);
            double mx = -INFINITY, sum = 0.0;
            for (int32_t v = 0; v < info.n_vocab; v++)
                mx = l[v] > mx ? l[v] : mx;
            for (int32_t v = 0; v < info.n_vocab; v++)
                sum += exp((double)l[v] - mx);
            nll += mx + log(sum) - (double)l[toks[start + i + 1]];
            n_scored++;
        }
        n_chunks++;
    }
    secs = cli_now() - t0;
    moe_route_get_counters(ctx, &cnt);
    moe_ctx_exit_stats(ctx, &exs);

    if (st.json) {
        cJSON *o = cJSON_CreateObject(), *r, *k;
        char *out;
        if (!o) {
            cli_fail(ppl_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        cJSON_AddStringToObject(o, "model", st.model);
        cJSON_AddStringToObject(o, "file", st.file);
        cJSON_AddNumberToObject(o, "n_tokens", n_toks);
        cJSON_AddNumberToObject(o, "n_scored", (double)n_scored);
        cJSON_AddNumberToObject(o, "n_ctx", st.n_ctx);
        cJSON_AddNumberToObject(o, "n_batch", st.n_batch);
        cJSON_AddNumberToObject(o, "n_chunks", n_chunks);
        cJSON_AddNumberToObject(o, "perplexity", exp(nll / (double)n_scored));
        cJSON_AddNumberToObject(o, "nll_mean", nll / (double)n_scored);
        cJSON_AddNumberToObject(o, "seconds", secs);
        r = cJSON_AddObjectToObject(o, "capacity");
        if (r) {
            cJSON_AddNumberToObject(r, "factor", st.cap.capacity_factor);
            cJSON_AddStringToObject(r, "drop", ppl_drop_names[st.cap.drop]);
            cJSON_AddNumberToObject(r, "devices", st.cap.n_devices);
            cJSON_AddStringToObject(r, "rectify", ppl_rectify_names[st.cap.rectify]);
        }
        k = cJSON_AddObjectToObject(o, "counters");
        if (k) {
            cJSON_AddNumberToObject(k, "routed", (double)cnt.routed);
            cJSON_AddNumberToObject(k, "dropped", (double)cnt.dropped);
            cJSON_AddNumberToObject(k, "padded", (double)cnt.padded);
            cJSON_AddNumberToObject(k, "rerouted", (double)cnt.rerouted);
            cJSON_AddNumberToObject(k, "filled", (double)cnt.filled);
        }
        if (st.exit_spec && (r = cJSON_AddObjectToObject(o, "exit"))) {
            cJSON_AddStringToObject(r, "spec", st.exit_spec);
            cJSON_AddNumberToObject(r, "mean_exit_layer",
                                    exs.n_tokens ? (double)exs.layers_run / exs.n_tokens - 1.0
                                                 : info.n_layer - 1.0);
            cJSON_AddNumberToObject(r, "layers_saved",
                                    exs.layers_total
                                        ? 1.0 - (double)exs.layers_run / exs.layers_total
                                        : 0.0);
        }
        out = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!out) {
            cli_fail(ppl_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        printf("%s\n", out);
        free(out);
    } else {
        printf("model       %s (%s, %s)\n", st.model, info.arch ? info.arch : "",
               info.ftype ? info.ftype : "");
        printf("text        %s: %d tokens, %d chunk%s of <= %d, batch %d\n", st.file, n_toks,
               n_chunks, n_chunks == 1 ? "" : "s", st.n_ctx, st.n_batch);
        printf("perplexity  %.4f\n", exp(nll / (double)n_scored));
        printf("nll/token   %.6f over %lld predictions (%.2f s)\n", nll / (double)n_scored,
               (long long)n_scored, secs);
        if (capacity_given)
            printf("capacity    factor %g, drop by %s, %d device%s, rectify %s\n",
                   (double)st.cap.capacity_factor, ppl_drop_names[st.cap.drop],
                   st.cap.n_devices, st.cap.n_devices == 1 ? "" : "s",
                   ppl_rectify_names[st.cap.rectify]);
        if (st.exit_spec)
            printf("early exit  %s: mean exit layer %.3f (0-based), layers saved %.1f%%\n",
                   st.exit_spec,
                   exs.n_tokens ? (double)exs.layers_run / exs.n_tokens - 1.0
                                : info.n_layer - 1.0,
                   exs.layers_total ? 100.0 * (1.0 - (double)exs.layers_run / exs.layers_total)
                                    : 0.0);
        if (info.n_expert > 0)
            printf("routed %lld  dropped %lld  padded %lld  rerouted %lld  filled %lld\n",
                   (long long)cnt.routed, (long long)cnt.dropped, (long long)cnt.padded,
                   (long long)cnt.rerouted, (long long)cnt.filled);
    }
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(ppl_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
out:
    free(st.ops);
    free(text);
    free(toks);
    moe_ctx_free(ctx);
    moe_model_free(model);
    return rc;
}
