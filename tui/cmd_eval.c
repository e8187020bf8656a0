/*
 * cmd_eval.c - `moe-studio eval`: run a prompt through the model and report,
 * for every prompt position, the top-k logits, plus optional greedy tokens
 * continuing the prompt. --json prints one object shaped like the golden
 * reference files (model, prompt, n_vocab, tokens, pieces_hex, prompt_topk,
 * greedy), logits with %.6f. Must not depend on curses, readline or Lua.
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *const eval_cmd = "eval";

static void eval_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio eval -m MODEL (-p TEXT | -f FILE) [--top-k K] [--greedy N]\n"
            "                       [--order O] [--json]\n"
            "  -m, --model MODEL  GGUF model\n"
            "  -p, --prompt TEXT  prompt (BOS added when the model says so)\n"
            "  -f, --file FILE    read the prompt from FILE\n"
            "      --top-k K      logits reported per prompt position (default 10)\n"
            "      --greedy N     also decode N greedy tokens after the prompt\n"
            "  -t, --threads N    worker threads (default 1)\n"
            "      --order O      summation order of float-weight products: reference\n"
            "                     (default: the prompt batch tiled, each greedy token\n"
            "                     vector-dot, as the reference runtime), batch or token\n"
            "      --json         one JSON object: model, prompt, n_vocab, tokens,\n"
            "                     pieces_hex, prompt_topk [[[id, logit], ...], ...],\n"
            "                     greedy (with --greedy)\n");
}

enum { EVAL_OPT_TOP_K = 256, EVAL_OPT_GREEDY, EVAL_OPT_JSON, EVAL_OPT_ORDER };

/* The k largest logits, best first; ties keep the lower id first. */
static int eval_topk(const float *logits, int n_vocab, int k, int32_t *ids,
                     float *vals)
{
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float v = logits[i];
        int j;
        if (n == k && !(v > vals[n - 1]))
            continue;
        j = n < k ? n++ : k - 1;
        while (j > 0 && v > vals[j - 1]) {
            vals[j] = vals[j - 1];
            ids[j] = ids[j - 1];
            j--;
        }
        vals[j] = v;
        ids[j] = i;
    }
    return n;
}

static int32_t eval_argmax(const float *logits, int n_vocab)
{
    int32_t best = 0;
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

static cJSON *eval_logit_json(float v)
{
    char buf[64];
    if (!isfinite(v))
        return cJSON_CreateNull();
    snprintf(buf, sizeof buf, "%.6f", (double)v);
    return cJSON_CreateRaw(buf);
}

int cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"prompt", required_argument, NULL, 'p'},
        {"file", required_argument, NULL, 'f'},
        {"threads", required_argument, NULL, 't'},
        {"top-k", required_argument, NULL, EVAL_OPT_TOP_K},
        {"greedy", required_argument, NULL, EVAL_OPT_GREEDY},
        {"json", no_argument, NULL, EVAL_OPT_JSON},
        {"order", required_argument, NULL, EVAL_OPT_ORDER},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *prompt = NULL, *file = NULL;
    char *file_text = NULL, *json_text = NULL;
    size_t prompt_len;
    int top_k = 10, n_greedy = 0, n_threads = 1, c, rc = CLI_EXIT_FAIL;
    bool json = false;
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_model_info info;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_status st;
    int32_t *toks = NULL, *greedy = NULL, *top_ids = NULL, n_toks = 0;
    float *top_vals = NULL;
    cJSON *root = NULL, *arr;

    while ((c = getopt_long(argc, argv, ":m:p:f:t:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': file = optarg; break;
        case 't':
            if (!cli_parse_int(eval_cmd, "-t", optarg, 1, 1024, &n_threads))
                return CLI_EXIT_USAGE;
            break;
        case EVAL_OPT_TOP_K:
            if (!cli_parse_int(eval_cmd, "--top-k", optarg, 1, 1 << 20, &top_k))
                return CLI_EXIT_USAGE;
            break;
        case EVAL_OPT_GREEDY:
            if (!cli_parse_int(eval_cmd, "--greedy", optarg, 0, 1 << 20, &n_greedy))
                return CLI_EXIT_USAGE;
            break;
        case EVAL_OPT_JSON: json = true; break;
        case EVAL_OPT_ORDER:
            if (!cli_parse_order(eval_cmd, optarg, &cp.order))
                return CLI_EXIT_USAGE;
            break;
        case 'h': eval_usage(stdout); return CLI_OK;
        default: return cli_bad_option(eval_cmd, c, argv);
        }
    }
    if (optind < argc)
        return cli_fail(eval_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'",
                        argv[optind]);
    if (!path)
        return cli_fail(eval_cmd, CLI_EXIT_USAGE, "missing -m MODEL");
    if (prompt && file)
        return cli_fail(eval_cmd, CLI_EXIT_USAGE, "give -p or -f, not both");
    if (!prompt && !file)
        return cli_fail(eval_cmd, CLI_EXIT_USAGE, "missing -p TEXT (or -f FILE)");

    if (file) {
        file_text = cli_read_file(eval_cmd, file, &prompt_len);
        if (!file_text)
            return CLI_EXIT_FAIL;
        prompt = file_text;
    } else {
        prompt_len = strlen(prompt);
    }

    model = cli_load_model(eval_cmd, path, n_threads);
    if (!model)
        goto out;
    moe_model_get_info(model, &info);
    if (info.n_vocab <= 0) {
        cli_fail(eval_cmd, CLI_EXIT_FAIL, "model reports n_vocab %d", info.n_vocab);
        goto out;
    }
    if (top_k > info.n_vocab)
        top_k = info.n_vocab;
    if (!cli_tokenize(eval_cmd, model, prompt, prompt_len, true, false, &toks, &n_toks))
        goto out;
    if (n_toks == 0) {
        cli_fail(eval_cmd, CLI_EXIT_FAIL, "the prompt gives no tokens");
        goto out;
    }
    if ((int64_t)n_toks + n_greedy > INT_MAX / 2) {
        cli_fail(eval_cmd, CLI_EXIT_USAGE, "prompt plus --greedy is too long");
        goto out;
    }

    cp.n_ctx = n_toks + n_greedy;
    cp.n_threads = n_threads;
    st = moe_ctx_new(model, &cp, &ctx);
    if (st != MOE_OK) {
        cli_fail_engine(eval_cmd, st, "cannot create a context of %d tokens", cp.n_ctx);
        goto out;
    }
    st = moe_ctx_decode(ctx, toks, n_toks, true);
    if (st != MOE_OK) {
        cli_fail_engine(eval_cmd, st, "decoding the prompt failed");
        goto out;
    }

    top_ids = malloc((size_t)top_k * sizeof *top_ids);
    top_vals = malloc((size_t)top_k * sizeof *top_vals);
    greedy = malloc(((size_t)n_greedy + 1) * sizeof *greedy);
    root = cJSON_CreateObject();
    if (!top_ids || !top_vals || !greedy || !root)
        goto nomem;
    cJSON_AddStringToObject(root, "model", path);
    /* cJSON strings are NUL-terminated: a prompt with NUL bytes is cut there
     * in the JSON echo (its tokens are still those of the whole text). */
    cJSON_AddStringToObject(root, "prompt", prompt);
    cJSON_AddNumberToObject(root, "n_vocab", info.n_vocab);
    arr = cJSON_AddArrayToObject(root, "tokens");
    for (int32_t i = 0; arr && i < n_toks; i++)
        cJSON_AddItemToArray(arr, cJSON_CreateNumber(toks[i]));
    arr = cJSON_AddArrayToObject(root, "pieces_hex");
    for (int32_t i = 0; arr && i < n_toks; i++) {
        size_t len = 0;
        const char *piece = moe_token_piece(model, toks[i], &len);
        char *hex = cli_hex(piece ? piece : "", piece ? len : 0);
        if (!hex)
            goto nomem;
        cJSON_AddItemToArray(arr, cJSON_CreateString(hex));
        free(hex);
    }
    arr = cJSON_AddArrayToObject(root, "prompt_topk");
    if (!arr)
        goto nomem;
    for (int32_t i = 0; i < n_toks; i++) {
        const float *logits = moe_ctx_logits(ctx, i);
        cJSON *pos = cJSON_CreateArray();
        int n;
        if (!pos)
            goto nomem;
        cJSON_AddItemToArray(arr, pos);
        if (!logits) {
            cli_fail(eval_cmd, CLI_EXIT_FAIL, "engine kept no logits for position %d",
                     (int)i);
            goto out;
        }
        n = eval_topk(logits, info.n_vocab, top_k, top_ids, top_vals);
        for (int j = 0; j < n; j++) {
            cJSON *pair = cJSON_CreateArray();
            if (!pair)
                goto nomem;
            cJSON_AddItemToArray(pair, cJSON_CreateNumber(top_ids[j]));
            cJSON_AddItemToArray(pair, eval_logit_json(top_vals[j]));
            cJSON_AddItemToArray(pos, pair);
        }
    }

    if (n_greedy > 0) {
        const float *logits = moe_ctx_logits(ctx, -1);
        arr = cJSON_AddArrayToObject(root, "greedy");
        if (!arr)
            goto nomem;
        for (int i = 0; i < n_greedy; i++) {
            if (!logits) {
                cli_fail(eval_cmd, CLI_EXIT_FAIL, "engine kept no logits");
                goto out;
            }
            greedy[i] = eval_argmax(logits, info.n_vocab);
            cJSON_AddItemToArray(arr, cJSON_CreateNumber(greedy[i]));
            if (i + 1 == n_greedy)
                break;
            st = moe_ctx_decode(ctx, &greedy[i], 1, false);
            if (st != MOE_OK) {
                cli_fail_engine(eval_cmd, st, "decoding greedy token %d failed", i);
                goto out;
            }
            logits = moe_ctx_logits(ctx, -1);
        }
    }

    if (json) {
        json_text = cJSON_PrintUnformatted(root);
        if (!json_text)
            goto nomem;
        printf("%s\n", json_text);
    } else {
        cJSON *topk = cJSON_GetObjectItem(root, "prompt_topk");
        for (int32_t i = 0; i < n_toks; i++) {
            size_t len = 0;
            const char *piece = moe_token_piece(model, toks[i], &len);
            cJSON *pos = cJSON_GetArrayItem(topk, i), *pair;
            printf("%4d %6d ", (int)i, (int)toks[i]);
            cli_write_escaped(stdout, piece ? piece : "", piece ? len : 0);
            printf(" ->");
            cJSON_ArrayForEach(pair, pos) {
                cJSON *id = cJSON_GetArrayItem(pair, 0);
                cJSON *lv = cJSON_GetArrayItem(pair, 1);
                printf(" %d:%s", (int)id->valuedouble,
                       cJSON_IsRaw(lv) ? lv->valuestring : "nan");
            }
            putchar('\n');
        }
        if (n_greedy > 0) {
            printf("greedy:");
            for (int i = 0; i < n_greedy; i++)
                printf(" %d", (int)greedy[i]);
            putchar('\n');
        }
    }
    fflush(stdout);
    if (ferror(stdout)) {
        cli_fail(eval_cmd, CLI_EXIT_FAIL, "error writing to stdout");
        goto out;
    }
    rc = CLI_OK;
    goto out;
nomem:
    cli_fail(eval_cmd, CLI_EXIT_FAIL, "out of memory");
out:
    free(json_text);
    cJSON_Delete(root);
    free(top_ids);
    free(top_vals);
    free(greedy);
    free(toks);
    moe_ctx_free(ctx);
    moe_model_free(model);
    free(file_text);
    return rc;
}
