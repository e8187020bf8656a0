/*
 * cmd_route_stats.c - `moe-studio route-stats`: evaluate a text with the
 * trace on (independent chunks of -c tokens, forward batches of --batch:
 * the prefill phase), optionally greedy-decode -n more tokens one at a time
 * (the decode phase), and print the routing statistics of moe.h per MoE
 * layer and expert: load, importance, CV^2, balance loss, H(e|x), H(e), MI,
 * the tokens that pick each expert most and (with --layer or --json) the
 * co-activation matrix. --json prints one object with all of it.
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

static const char *const rs_cmd = "route-stats";

static void rs_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio route-stats -m MODEL -f FILE [--json] [--layer L] [options]\n"
            "  -m, --model MODEL   GGUF MoE model\n"
            "  -f, --file FILE     text to evaluate (BOS added when the model says so)\n"
            "      --json          one JSON object instead of the tables\n"
            "      --layer L       only layer L, with its co-activation matrix\n"
            "  -t, --threads N     worker threads (default: the engine's)\n"
            "  -c, --ctx N         tokens per chunk (default: the model's context, <= 512)\n"
            "      --batch N       tokens per forward batch (default: the chunk)\n"
            "      --max-tokens N  evaluate only the first N tokens of the text\n"
            "  -n, --decode N      then greedy-decode N tokens one at a time (decode phase)\n"
            "      --top N         tokens listed per expert (default 5)\n"
            "Statistics (moe.h, \"routing statistics\"): load = tokens selecting the\n"
            "expert, frac = share of all selections, imp = sum of router probabilities,\n"
            "cv2 = squared coefficient of variation over experts, balance = E*sum f*P\n"
            "(1 = balanced), H(e|x) = mean router entropy, H(e) = entropy of the mean\n"
            "distribution, MI = H(e) - H(e|x), in nats. Prefill and decode apart.\n");
}

enum { RS_OPT_JSON = 256, RS_OPT_LAYER, RS_OPT_BATCH, RS_OPT_MAX, RS_OPT_TOP };

static const char *const rs_phase_names[] = {
    [MOE_PHASE_PREFILL] = "prefill",
    [MOE_PHASE_DECODE] = "decode",
    [MOE_PHASE_ALL] = "all",
};
static_assert(sizeof rs_phase_names / sizeof rs_phase_names[0] == MOE_PHASE_COUNT,
              "a name for every phase");

/* A token's text made safe for JSON and terminals: valid UTF-8 kept,
 * control bytes and invalid bytes as \xNN. Caller frees. */
static char *rs_piece(const moe_model *m, int32_t id)
{
    size_t len = 0, o = 0;
    const unsigned char *p = (const unsigned char *)moe_token_piece(m, id, &len);
    char *out = malloc(4 * len + 1);
    if (!out)
        return NULL;
    for (size_t i = 0; p && i < len;) {
        size_t n = 0;
        unsigned char c = p[i];
        if (c >= 0x20 && c < 0x7f)
            n = 1;
        else if (c >= 0xc2 && c <= 0xf4) {
            size_t want = c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
            if (i + want <= len) {
                n = want;
                for (size_t j = 1; j < want; j++)
                    if ((p[i + j] & 0xc0) != 0x80)
                        n = 0;
            }
        }
        if (n) {
            memcpy(out + o, p + i, n);
            o += n;
            i += n;
        } else {
            o += (size_t)sprintf(out + o, "\\x%02x", c);
            i++;
        }
    }
    out[o] = '\0';
    return out;
}

static cJSON *rs_layer_json(const moe_route_stats *s, const moe_model *m, int32_t il,
                            moe_phase ph, int32_t n_expert, int top, int32_t *ids,
                            int64_t *counts, const moe_route_layer_stats *ls)
{
    cJSON *o = cJSON_CreateObject(), *ex, *co;
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "layer", il);
    cJSON_AddNumberToObject(o, "n_tokens", (double)ls->n_tokens);
    cJSON_AddNumberToObject(o, "n_assign", (double)ls->n_assign);
    cJSON_AddNumberToObject(o, "cv2_load", ls->cv2_load);
    cJSON_AddNumberToObject(o, "cv2_importance", ls->cv2_importance);
    cJSON_AddNumberToObject(o, "balance_loss", ls->balance_loss);
    cJSON_AddNumberToObject(o, "h_cond", ls->h_cond);
    cJSON_AddNumberToObject(o, "h_marg", ls->h_marg);
    cJSON_AddNumberToObject(o, "mi", ls->mi);
    ex = cJSON_AddArrayToObject(o, "experts");
    for (int32_t e = 0; ex && e < n_expert; e++) {
        moe_route_expert_stats es;
        cJSON *x = cJSON_CreateObject(), *tt;
        int32_t n = 0;
        if (!x)
            break;
        moe_route_stats_expert(s, il, e, ph, &es);
        cJSON_AddNumberToObject(x, "id", e);
        cJSON_AddNumberToObject(x, "load", (double)es.load);
        cJSON_AddNumberToObject(x, "load_frac", es.load_frac);
        cJSON_AddNumberToObject(x, "token_frac", es.token_frac);
        cJSON_AddNumberToObject(x, "importance", es.importance);
        cJSON_AddNumberToObject(x, "mean_prob", es.mean_prob);
        tt = cJSON_AddArrayToObject(x, "top_tokens");
        if (moe_route_stats_top_tokens(s, il, e, ph, top, ids, counts, &n) != MOE_OK)
            n = 0;
        for (int32_t j = 0; tt && j < n; j++) {
            cJSON *t = cJSON_CreateObject();
            char *piece = rs_piece(m, ids[j]);
            if (!t) {
                free(piece);
                break;
            }
            cJSON_AddNumberToObject(t, "id", ids[j]);
            cJSON_AddStringToObject(t, "piece", piece ? piece : "");
            cJSON_AddNumberToObject(t, "count", (double)counts[j]);
            cJSON_AddItemToArray(tt, t);
            free(piece);
        }
        cJSON_AddItemToArray(ex, x);
    }
    co = cJSON_AddArrayToObject(o, "coact");
    for (int32_t a = 0; co && a < n_expert; a++) {
        cJSON *row = cJSON_CreateArray();
        if (!row)
            break;
        for (int32_t b = 0; b < n_expert; b++)
            cJSON_AddItemToArray(row, cJSON_CreateNumber(
                                          (double)moe_route_stats_coact(s, il, a, b, ph)));
        cJSON_AddItemToArray(co, row);
    }
    return o;
}

static void rs_layer_text(const moe_route_stats *s, const moe_model *m, int32_t il,
                          moe_phase ph, int32_t n_expert, int top, bool coact, int32_t *ids,
                          int64_t *counts, const moe_route_layer_stats *ls)
{
    printf("\nlayer %d [%s]  tokens %lld  cv2(load) %.4f  cv2(imp) %.4f  balance %.4f  "
           "H(e|x) %.4f  H(e) %.4f  MI %.4f\n",
           il, rs_phase_names[ph], (long long)ls->n_tokens, ls->cv2_load, ls->cv2_importance,
           ls->balance_loss, ls->h_cond, ls->h_marg, ls->mi);
    printf("  %6s %8s %7s %10s  %s\n", "expert", "load", "frac", "imp", "top tokens");
    for (int32_t e = 0; e < n_expert; e++) {
        moe_route_expert_stats es;
        int32_t n = 0;
        moe_route_stats_expert(s, il, e, ph, &es);
        printf("  %6d %8lld %7.4f %10.3f ", e, (long long)es.load, es.load_frac, es.importance);
        if (moe_route_stats_top_tokens(s, il, e, ph, top, ids, counts, &n) != MOE_OK)
            n = 0;
        for (int32_t j = 0; j < n; j++) {
            size_t len = 0;
            const char *p = moe_token_piece(m, ids[j], &len);
            putchar(' ');
            cli_write_escaped(stdout, p ? p : "", p ? len : 0);
            printf("x%lld", (long long)counts[j]);
        }
        putchar('\n');
    }
    if (coact) {
        printf("  co-activation (tokens selecting both; diagonal = load)\n  %6s", "");
        for (int32_t b = 0; b < n_expert; b++)
            printf(" %6d", b);
        putchar('\n');
        for (int32_t a = 0; a < n_expert; a++) {
            printf("  %6d", a);
            for (int32_t b = 0; b < n_expert; b++)
                printf(" %6lld", (long long)moe_route_stats_coact(s, il, a, b, ph));
            putchar('\n');
        }
    }
}

static int32_t rs_argmax(const float *l, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[best])
            best = i;
    return best;
}

int cmd_route_stats(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"file", required_argument, NULL, 'f'},
        {"json", no_argument, NULL, RS_OPT_JSON},
        {"layer", required_argument, NULL, RS_OPT_LAYER},
        {"threads", required_argument, NULL, 't'},
        {"ctx", required_argument, NULL, 'c'},
        {"batch", required_argument, NULL, RS_OPT_BATCH},
        {"max-tokens", required_argument, NULL, RS_OPT_MAX},
        {"decode", required_argument, NULL, 'n'},
        {"top", required_argument, NULL, RS_OPT_TOP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *file = NULL;
    int c, rc = CLI_EXIT_FAIL, n_threads = 0, n_ctx = 0, n_batch = 0, max_tokens = 0;
    int n_decode = 0, top = 5, layer = -1;
    bool json = false;
    char *text = NULL;
    size_t text_len = 0;
    int32_t *toks = NULL, n_toks = 0, *ids = NULL;
    int64_t *counts = NULL, n_pre = 0, n_dec = 0;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_route_stats *stats = NULL;
    moe_model_info info;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true, .lens_k = 0, .max_tokens = 0};
    moe_trace_dims dims;
    moe_status s;

    while ((c = getopt_long(argc, argv, ":m:f:t:c:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 'f': file = optarg; break;
        case RS_OPT_JSON: json = true; break;
        case RS_OPT_LAYER:
            if (!cli_parse_int(rs_cmd, "--layer", optarg, 0, 1 << 20, &layer))
                return CLI_EXIT_USAGE;
            break;
        case 't':
            if (!cli_parse_int(rs_cmd, "-t", optarg, 1, 1024, &n_threads))
                return CLI_EXIT_USAGE;
            break;
        case 'c':
            if (!cli_parse_int(rs_cmd, "-c", optarg, 2, 1 << 20, &n_ctx))
                return CLI_EXIT_USAGE;
            break;
        case RS_OPT_BATCH:
            if (!cli_parse_int(rs_cmd, "--batch", optarg, 1, 1 << 20, &n_batch))
                return CLI_EXIT_USAGE;
            break;
        case RS_OPT_MAX:
            if (!cli_parse_int(rs_cmd, "--max-tokens", optarg, 1, 1 << 30, &max_tokens))
                return CLI_EXIT_USAGE;
            break;
        case 'n':
            if (!cli_parse_int(rs_cmd, "-n", optarg, 0, 1 << 20, &n_decode))
                return CLI_EXIT_USAGE;
            break;
        case RS_OPT_TOP:
            if (!cli_parse_int(rs_cmd, "--top", optarg, 0, 1000, &top))
                return CLI_EXIT_USAGE;
            break;
        case 'h': rs_usage(stdout); return CLI_OK;
        default: return cli_bad_option(rs_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(rs_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
    if (!path || !file)
        return cli_fail(rs_cmd, CLI_EXIT_USAGE, "missing %s", !path ? "-m MODEL" : "-f FILE");

    text = cli_read_file(rs_cmd, file, &text_len);
    if (!text)
        goto out;
    model = cli_load_model(rs_cmd, path, n_threads);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);
    if (info.n_expert <= 0) {
        rc = cli_fail(rs_cmd, CLI_EXIT_USAGE, "'%s' is a dense model: no router to measure",
                      path);
        goto out;
    }
    if (layer >= info.n_layer) {
        rc = cli_fail(rs_cmd, CLI_EXIT_USAGE, "--layer %d: the model has %d layers", layer,
                      info.n_layer);
        goto out;
    }
    if (!cli_tokenize(rs_cmd, model, text, text_len, true, false, &toks, &n_toks))
        goto out;
    if (max_tokens > 0 && n_toks > max_tokens)
        n_toks = max_tokens;
    if (n_toks < 1) {
        cli_fail(rs_cmd, CLI_EXIT_FAIL, "'%s' has no tokens", file);
        goto out;
    }
    if (n_ctx <= 0)
        n_ctx = info.n_ctx_train > 0 && info.n_ctx_train < 512 ? info.n_ctx_train : 512;
    if (n_decode >= n_ctx) {
        rc = cli_fail(rs_cmd, CLI_EXIT_USAGE, "-n %d must be below the chunk length %d",
                      n_decode, n_ctx);
        goto out;
    }
    if (n_batch <= 0 || n_batch > n_ctx)
        n_batch = n_ctx;
    cp.n_ctx = n_ctx;
    cp.n_batch = n_batch;
    cp.n_threads = n_threads;
    s = moe_ctx_new(model, &cp, &ctx);
    if (s == MOE_OK)
        s = moe_ctx_set_trace(ctx, &tp);
    if (s != MOE_OK) {
        cli_fail_engine(rs_cmd, s, "cannot create a traced context of %d tokens", n_ctx);
        goto out;
    }
    dims = moe_ctx_trace_dims(ctx);
    s = moe_route_stats_new(&dims, &stats);
    ids = malloc((size_t)(top > 0 ? top : 1) * sizeof *ids);
    counts = malloc((size_t)(top > 0 ? top : 1) * sizeof *counts);
    if (s != MOE_OK || !ids || !counts) {
        cli_fail(rs_cmd, CLI_EXIT_FAIL, "out of memory");
        goto out;
    }

    /* prefill: chunks of n_ctx tokens (the last one leaves room to decode) */
    for (int32_t start = 0; start < n_toks;) {
        int32_t room = n_ctx - (start + n_ctx >= n_toks ? n_decode : 0);
        int32_t len = n_toks - start < room ? n_toks - start : room;
        if (n_toks - start - len == 1 && len > 2)
            len--; /* a lone last token would count as a decode */
        moe_ctx_truncate(ctx, 0);
        s = moe_ctx_decode(ctx, toks + start, len, false);
        if (s == MOE_OK)
            s = moe_route_stats_add_trace(stats, ctx);
        if (s != MOE_OK) {
            cli_fail_engine(rs_cmd, s, "evaluation of the chunk at token %d failed", start);
            goto out;
        }
        moe_ctx_trace_clear(ctx);
        start += len;
    }
    /* decode: greedy continuation, one token per decode */
    for (int i = 0; i < n_decode; i++) {
        int32_t next = rs_argmax(moe_ctx_logits(ctx, -1), info.n_vocab);
        s = moe_ctx_decode(ctx, &next, 1, false);
        if (s != MOE_OK) {
            cli_fail_engine(rs_cmd, s, "decode %d failed", i);
            goto out;
        }
    }
    s = moe_route_stats_add_trace(stats, ctx);
    if (s != MOE_OK) {
        cli_fail_engine(rs_cmd, s, "statistics failed");
        goto out;
    }
    {
        moe_route_layer_stats ls;
        for (int32_t il = 0; il < info.n_layer; il++) {
            moe_route_stats_layer(stats, il, MOE_PHASE_PREFILL, &ls);
            n_pre = ls.n_tokens > n_pre ? ls.n_tokens : n_pre;
            moe_route_stats_layer(stats, il, MOE_PHASE_DECODE, &ls);
            n_dec = ls.n_tokens > n_dec ? ls.n_tokens : n_dec;
        }
    }

    if (json) {
        cJSON *o = cJSON_CreateObject(), *phs;
        char *out;
        if (!o) {
            cli_fail(rs_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        cJSON_AddStringToObject(o, "model", path);
        cJSON_AddStringToObject(o, "file", file);
        cJSON_AddNumberToObject(o, "n_layer", info.n_layer);
        cJSON_AddNumberToObject(o, "n_expert", info.n_expert);
        cJSON_AddNumberToObject(o, "top_k", info.n_expert_used);
        cJSON_AddNumberToObject(o, "n_prefill", (double)n_pre);
        cJSON_AddNumberToObject(o, "n_decode", (double)n_dec);
        phs = cJSON_AddObjectToObject(o, "phases");
        for (int ph = 0; phs && ph < 2; ph++) {
            cJSON *p = cJSON_AddObjectToObject(phs, rs_phase_names[ph]);
            cJSON *layers = p ? cJSON_AddArrayToObject(p, "layers") : NULL;
            for (int32_t il = 0; layers && il < info.n_layer; il++) {
                moe_route_layer_stats ls;
                cJSON *lj;
                if (layer >= 0 && il != layer)
                    continue;
                moe_route_stats_layer(stats, il, (moe_phase)ph, &ls);
                if (ls.n_tokens == 0)
                    continue;
                lj = rs_layer_json(stats, model, il, (moe_phase)ph, info.n_expert, top, ids,
                                   counts, &ls);
                if (lj)
                    cJSON_AddItemToArray(layers, lj);
            }
        }
        out = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (!out) {
            cli_fail(rs_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        printf("%s\n", out);
        free(out);
    } else {
        printf("model   %s (%s, %d experts, top-%d)\n", path, info.arch ? info.arch : "",
               info.n_expert, info.n_expert_used);
        printf("tokens  %lld prefill (chunks of <= %d, batch %d), %lld decode\n",
               (long long)n_pre, n_ctx, n_batch, (long long)n_dec);
        for (int ph = 0; ph < 2; ph++)
            for (int32_t il = 0; il < info.n_layer; il++) {
                moe_route_layer_stats ls;
                if (layer >= 0 && il != layer)
                    continue;
                moe_route_stats_layer(stats, il, (moe_phase)ph, &ls);
                if (ls.n_tokens == 0)
                    continue;
                rs_layer_text(stats, model, il, (moe_phase)ph, info.n_expert, top, layer >= 0,
                              ids, counts, &ls);
            }
    }
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(rs_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
out:
    free(ids);
    free(counts);
    free(text);
    free(toks);
    moe_route_stats_free(stats);
    moe_ctx_free(ctx);
    moe_model_free(model);
    return rc;
}
