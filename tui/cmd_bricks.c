/*
 * cmd_bricks.c - `moe-studio bricks`: list a model's bricks (layers,
 * attention heads, dense FFNs, experts / EMoE groups, shared experts) with
 * their sizes and, given a text, the experts' load and the tokens that use
 * them most; disable experts at run time (the router's ban); merge, grow
 * and prune experts and save the result as a new GGUF, checked by
 * reloading it and comparing it with the input on the text.
 *
 * Operations run in command-line order on an editor of the input file
 * (moe_bricks_*). Loads for --prune-unused / --prune-least are measured on
 * the input model and followed through the renumbering of earlier
 * operations (moe_bricks_origin). Uses the public engine API and cli
 * helpers only (no curses, readline or Lua).
 */
#include "config.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char bk_cmd[] = "bricks";

enum {
    BK_OPT_JSON = 256,
    BK_OPT_KIND,
    BK_OPT_TOP,
    BK_OPT_DISABLE,
    BK_OPT_MERGE,
    BK_OPT_GROW,
    BK_OPT_PRUNE,
    BK_OPT_PRUNE_UNUSED,
    BK_OPT_PRUNE_LEAST,
    BK_OPT_SEED,
    BK_OPT_MAX,
};

static void bk_usage(FILE *f)
{
    fprintf(f,
            "usage: moe-studio bricks -m MODEL [--text FILE] [--json] [--kind LIST] [--top N]\n"
            "                         [--disable L:E]...\n"
            "       moe-studio bricks -m MODEL [operations...] -o OUT.gguf [--text FILE]\n"
            "\n"
            "List the bricks of a model: layers, attention heads, dense FFNs, routed\n"
            "experts (EMoE groups in EMoE models) and shared experts, with parameters and\n"
            "bytes; with --text, how often each expert is selected and by which tokens.\n"
            "\n"
            "  -m, --model FILE       GGUF model\n"
            "  -f, --text FILE        text to measure expert load on (BOS added)\n"
            "      --max-tokens N     use at most N tokens of the text (default 4096)\n"
            "      --json             one JSON object instead of the table\n"
            "      --kind LIST        kinds to list: layer,head,ffn,expert,shexp (default all)\n"
            "      --top N            tokens shown per expert (default 5)\n"
            "      --disable L:E      ban expert E of layer L at run time (repeatable; the\n"
            "                         load then shows it unused; not saved in files)\n"
            "operations (in order; L is a layer or '*' for every routed layer):\n"
            "      --merge L:E1,E2[,..][:W1,W2,..]  weighted average into the lowest id\n"
            "                         (router row = weighted mean of the rows; equal weights\n"
            "                         by default)\n"
            "      --grow L:E[:NOISE] append a clone of E, weights + NOISE * rms * N(0,1)\n"
            "                         (default noise 0.01; --seed S)\n"
            "      --prune L:E1,E2,.. remove experts\n"
            "      --prune-unused FILE  in every routed layer remove experts the text never\n"
            "                         selects, as many per layer as the layer with fewest\n"
            "                         (GGUF keeps one expert count)\n"
            "      --prune-least N:FILE remove the N least-loaded experts of every layer\n"
            "                         (load, then router importance, on the text)\n"
            "      --seed S           noise seed for --grow (default 1)\n"
            "  -o, --output FILE      write the edited model; with --text, the input and\n"
            "                         the output are compared on the text\n"
            "  -h, --help             this help\n"
            "Saving needs every routed layer to end with the same number of experts.\n");
}

/* ---- argument parsing ---------------------------------------------------- */

typedef struct {
    int id;            /* BK_OPT_MERGE, _GROW, _PRUNE, _PRUNE_UNUSED, _PRUNE_LEAST */
    const char *arg;
    int32_t layer;     /* -1 = every routed layer */
    int32_t ids[64];
    float w[64];
    int32_t n_ids, n_w;
    float noise;
    int32_t count;     /* _PRUNE_LEAST */
    const char *file;  /* _PRUNE_UNUSED, _PRUNE_LEAST */
} bk_op;

static bool bk_int_list(const char **s, int32_t *out, int32_t *n, int32_t max)
{
    *n = 0;
    for (;;) {
        char *end;
        long v = strtol(*s, &end, 10);
        if (end == *s || v < 0 || v > 100000 || *n >= max)
            return false;
        out[(*n)++] = (int32_t)v;
        *s = end;
        if (**s != ',')
            return true;
        (*s)++;
    }
}

static bool bk_float_list(const char **s, float *out, int32_t *n, int32_t max)
{
    *n = 0;
    for (;;) {
        char *end;
        double v = strtod(*s, &end);
        if (end == *s || !isfinite(v) || *n >= max)
            return false;
        out[(*n)++] = (float)v;
        *s = end;
        if (**s != ',')
            return true;
        (*s)++;
    }
}

static bool bk_parse_op(int id, const char *arg, bk_op *op)
{
    const char *s = arg;
    memset(op, 0, sizeof *op);
    op->id = id;
    op->arg = arg;
    op->noise = 0.01f;
    switch (id) {
    case BK_OPT_PRUNE_UNUSED:
        op->file = arg;
        op->layer = -1;
        return *arg != '\0';
    case BK_OPT_PRUNE_LEAST: {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096 || *end != ':' || end[1] == '\0')
            return false;
        op->count = (int32_t)v;
        op->file = end + 1;
        op->layer = -1;
        return true;
    }
    default:
        break;
    }
    if (!cli_parse_layer_prefix(&s, &op->layer, 100000) ||
        !bk_int_list(&s, op->ids, &op->n_ids, 64))
        return false;
    if ((id == BK_OPT_GROW && op->n_ids != 1) || (id == BK_OPT_MERGE && op->n_ids < 2))
        return false;
    if (*s == ':' && (id == BK_OPT_MERGE || id == BK_OPT_GROW)) {
        s++;
        if (!bk_float_list(&s, op->w, &op->n_w, 64))
            return false;
        if (id == BK_OPT_GROW) {
            if (op->n_w != 1 || op->w[0] < 0)
                return false;
            op->noise = op->w[0];
            op->n_w = 0;
        } else if (op->n_w != op->n_ids) {
            return false;
        }
    }
    return *s == '\0';
}

/* ---- measuring on a text -------------------------------------------------- */

typedef struct {
    const char *path;          /* text file */
    int32_t *toks;
    int32_t n;
} bk_text;

static bool bk_load_text(const moe_model *m, const char *path, int max_tokens, bk_text *t)
{
    size_t len;
    char *text = cli_read_file(bk_cmd, path, &len);
    bool ok;
    t->path = path;
    t->toks = NULL;
    t->n = 0;
    if (!text)
        return false;
    ok = cli_tokenize(bk_cmd, m, text, len, true, false, &t->toks, &t->n);
    free(text);
    if (!ok)
        return false;
    if (t->n < 2) {
        cli_fail(bk_cmd, CLI_EXIT_FAIL, "'%s' has fewer than 2 tokens", path);
        return false;
    }
    if (t->n > max_tokens)
        t->n = max_tokens;
    return true;
}

typedef struct {
    int32_t layer, expert;
} bk_ban;

/* Evaluate a text in independent chunks of min(training context, 1024)
 * tokens: routing statistics
 * (when stats != NULL), perplexity (when ppl != NULL) and the logits of the
 * first chunk (when first != NULL; malloc'd, *n_first rows). */
static bool bk_measure(moe_model *m, const bk_text *t, const bk_ban *bans, int n_bans,
                       moe_route_stats **stats, double *ppl, float **first, int32_t *n_first)
{
    moe_ctx *c = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true};
    moe_model_info info;
    moe_status st;
    double nll = 0.0;
    int64_t n_pred = 0;
    bool ok = false;
    moe_model_get_info(m, &info);
    /* chunks of at most the training context (and 1024) tokens */
    cp.n_ctx = info.n_ctx_train < 1024 ? info.n_ctx_train : 1024;
    if (t->n < cp.n_ctx)
        cp.n_ctx = t->n;
    if ((st = moe_ctx_new(m, &cp, &c))) {
        cli_fail_engine(bk_cmd, st, "cannot make a context");
        return false;
    }
    for (int i = 0; i < n_bans; i++)
        if ((st = moe_route_ban(c, bans[i].layer, bans[i].expert, true))) {
            cli_fail_engine(bk_cmd, st, "cannot disable expert %d of layer %d", bans[i].expert,
                            bans[i].layer);
            goto done;
        }
    if (stats) {
        moe_trace_dims d;
        *stats = NULL;
        if (info.n_expert > 0) {
            if ((st = moe_ctx_set_trace(c, &tp))) {
                cli_fail_engine(bk_cmd, st, "cannot trace");
                goto done;
            }
            d = moe_ctx_trace_dims(c);
            if ((st = moe_route_stats_new(&d, stats))) {
                cli_fail_engine(bk_cmd, st, "cannot collect statistics");
                goto done;
            }
        }
    }
    for (int32_t at = 0; at < t->n; at += cp.n_ctx) {
        int32_t n = t->n - at < cp.n_ctx ? t->n - at : cp.n_ctx;
        moe_ctx_truncate(c, 0);
        if (stats && *stats)
            moe_ctx_trace_clear(c);
        if ((st = moe_ctx_decode(c, t->toks + at, n, true))) {
            cli_fail_engine(bk_cmd, st, "cannot evaluate '%s'", t->path);
            goto done;
        }
        if (stats && *stats && (st = moe_route_stats_add_trace(*stats, c))) {
            cli_fail_engine(bk_cmd, st, "cannot collect statistics");
            goto done;
        }
        for (int32_t i = 0; i + 1 < n; i++) {
            const float *l = moe_ctx_logits(c, i);
            double mx = -INFINITY, sum = 0.0;
            for (int32_t v = 0; v < info.n_vocab; v++)
                mx = l[v] > mx ? l[v] : mx;
            for (int32_t v = 0; v < info.n_vocab; v++)
                sum += exp((double)l[v] - mx);
            nll += mx + log(sum) - l[t->toks[at + i + 1]];
            n_pred++;
        }
        if (first && at == 0) {
            *first = malloc((size_t)n * (size_t)info.n_vocab * sizeof(float));
            if (!*first) {
                cli_fail(bk_cmd, CLI_EXIT_FAIL, "out of memory");
                goto done;
            }
            for (int32_t i = 0; i < n; i++)
                memcpy(*first + (size_t)i * info.n_vocab, moe_ctx_logits(c, i),
                       (size_t)info.n_vocab * sizeof(float));
            *n_first = n;
        }
    }
    if (ppl)
        *ppl = n_pred ? exp(nll / (double)n_pred) : NAN;
    ok = true;
done:
    moe_ctx_free(c);
    if (!ok && stats) {
        moe_route_stats_free(*stats);
        *stats = NULL;
    }
    return ok;
}

/* ---- listing ----------------------------------------------------------------- */

static bool bk_kind_on(const char *kinds, moe_brick_kind k)
{
    const char *name = moe_brick_kind_name(k), *p = kinds;
    size_t n = strlen(name);
    if (!kinds)
        return true;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        if (len == 4 && strncmp(p, "emoe", 4) == 0 && k == MOE_BRICK_EXPERT)
            return true;
        p += len + (e ? 1 : 0);
    }
    return false;
}

static bool bk_kinds_valid(const char *kinds)
{
    const char *p = kinds;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        bool known = len == 4 && strncmp(p, "emoe", 4) == 0;
        for (int k = 0; k < MOE_BRICK_KIND_COUNT; k++) {
            const char *name = moe_brick_kind_name((moe_brick_kind)k);
            known |= len == strlen(name) && strncmp(p, name, len) == 0;
        }
        if (!known)
            return false;
        p += len + (e ? 1 : 0);
    }
    return true;
}

static void bk_human(char *buf, size_t n, int64_t v)
{
    if (v >= 10 * 1024 * 1024)
        snprintf(buf, n, "%.1fM", (double)v / (1024.0 * 1024.0));
    else if (v >= 10 * 1024)
        snprintf(buf, n, "%.1fK", (double)v / 1024.0);
    else
        snprintf(buf, n, "%lld", (long long)v);
}

static int bk_list(moe_model *m, const char *kinds, const moe_route_stats *stats, int top,
                   bool json, const bk_text *text)
{
    moe_model_info info;
    int32_t n = moe_model_n_bricks(m);
    int32_t ids[64];
    int64_t counts[64];
    cJSON *root = NULL, *arr = NULL;
    if (top > 64)
        top = 64;
    moe_model_get_info(m, &info);
    if (json) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "model", info.path);
        cJSON_AddNumberToObject(root, "n_bricks", n);
        cJSON_AddNumberToObject(root, "n_params", (double)info.n_params);
        if (text)
            cJSON_AddNumberToObject(root, "text_tokens", text->n);
        arr = cJSON_AddArrayToObject(root, "bricks");
    } else {
        printf("%s: %d bricks, %lld parameters%s\n", info.name, n, (long long)info.n_params,
               stats ? " (load: tokens selecting the expert / all tokens)" : "");
        printf("%-20s %-7s %10s %10s", "brick", "kind", "params", "bytes");
        if (stats)
            printf(" %8s %7s %9s  %s", "load", "frac", "imp", "top tokens");
        putchar('\n');
    }
    for (int32_t i = 0; i < n; i++) {
        moe_brick b;
        moe_route_expert_stats es;
        bool has_load;
        int32_t nt = 0;
        char p1[32], p2[32];
        if (moe_model_brick(m, i, &b) != MOE_OK || !bk_kind_on(kinds, b.kind))
            continue;
        has_load = stats && b.kind == MOE_BRICK_EXPERT &&
                   moe_route_stats_expert(stats, b.layer, b.index, MOE_PHASE_ALL, &es) == MOE_OK;
        if (has_load &&
            moe_route_stats_top_tokens(stats, b.layer, b.index, MOE_PHASE_ALL, top, ids, counts,
                                       &nt) != MOE_OK)
            nt = 0;
        if (json) {
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", b.name);
            cJSON_AddStringToObject(o, "kind", moe_brick_kind_name(b.kind));
            cJSON_AddNumberToObject(o, "layer", b.layer);
            cJSON_AddNumberToObject(o, "index", b.index);
            cJSON_AddNumberToObject(o, "params", (double)b.n_params);
            cJSON_AddNumberToObject(o, "bytes", (double)b.bytes);
            if (has_load) {
                cJSON *tt = cJSON_AddArrayToObject(o, "top_tokens");
                cJSON_AddNumberToObject(o, "load", (double)es.load);
                cJSON_AddNumberToObject(o, "load_frac", es.load_frac);
                cJSON_AddNumberToObject(o, "token_frac", es.token_frac);
                cJSON_AddNumberToObject(o, "importance", es.importance);
                for (int32_t j = 0; j < nt; j++) {
                    size_t len = 0;
                    const char *pc = moe_token_piece(m, ids[j], &len);
                    char *piece = malloc(len + 1);
                    cJSON *to = cJSON_CreateObject();
                    if (piece) {
                        memcpy(piece, pc, len);
                        piece[len] = '\0';
                    }
                    cJSON_AddNumberToObject(to, "id", ids[j]);
                    cJSON_AddStringToObject(to, "piece", piece ? piece : "");
                    cJSON_AddNumberToObject(to, "count", (double)counts[j]);
                    cJSON_AddItemToArray(tt, to);
                    free(piece);
                }
            }
            cJSON_AddItemToArray(arr, o);
            continue;
        }
        bk_human(p1, sizeof p1, b.n_params);
        bk_human(p2, sizeof p2, b.bytes);
        printf("%-20s %-7s %10s %10s", b.name, moe_brick_kind_name(b.kind), p1, p2);
        if (has_load) {
            printf(" %8lld %7.4f %9.2f ", (long long)es.load, es.token_frac, es.importance);
            for (int32_t j = 0; j < nt; j++) {
                size_t len = 0;
                const char *pc = moe_token_piece(m, ids[j], &len);
                putchar(' ');
                cli_write_escaped(stdout, pc, len);
                printf("x%lld", (long long)counts[j]);
            }
        }
        putchar('\n');
    }
    if (json) {
        char *s = cJSON_PrintUnformatted(root);
        if (s)
            printf("%s\n", s);
        free(s);
        cJSON_Delete(root);
    }
    return CLI_OK;
}

/* ---- operations -------------------------------------------------------------- */

/* Loads of the input model on an op's text: load[layer][expert] and
 * importance, from a fresh measurement. */
static bool bk_loads(moe_model *m, const char *file, int max_tokens, int64_t **load,
                     double **imp, int32_t *n_layer, int32_t *n_expert)
{
    bk_text t;
    moe_route_stats *s = NULL;
    moe_model_info info;
    bool ok;
    moe_model_get_info(m, &info);
    if (!bk_load_text(m, file, max_tokens, &t))
        return false;
    ok = bk_measure(m, &t, NULL, 0, &s, NULL, NULL, NULL);
    free(t.toks);
    if (!ok)
        return false;
    *n_layer = info.n_layer;
    *n_expert = info.n_expert;
    *load = calloc((size_t)info.n_layer * (size_t)info.n_expert, sizeof **load);
    *imp = calloc((size_t)info.n_layer * (size_t)info.n_expert, sizeof **imp);
    if (!*load || !*imp) {
        moe_route_stats_free(s);
        cli_fail(bk_cmd, CLI_EXIT_FAIL, "out of memory");
        return false;
    }
    for (int32_t il = 0; il < info.n_layer; il++)
        for (int32_t e = 0; e < info.n_expert; e++) {
            moe_route_expert_stats es;
            if (moe_route_stats_expert(s, il, e, MOE_PHASE_ALL, &es) == MOE_OK) {
                (*load)[(size_t)il * info.n_expert + e] = es.load;
                (*imp)[(size_t)il * info.n_expert + e] = es.importance;
            }
        }
    moe_route_stats_free(s);
    return true;
}

/* Candidates of one layer for load-based pruning: current experts with a
 * source id (merged / grown ones have no measured load), least loaded
 * first (load, then importance, then higher id). Returns how many. */
static int32_t bk_rank(const moe_bricks *b, int32_t il, const int64_t *load, const double *imp,
                       int32_t n_expert, int32_t *order, int64_t *ld)
{
    int32_t n = 0;
    for (int32_t e = 0; e < moe_bricks_n_expert(b, il); e++) {
        int32_t src = moe_bricks_origin(b, il, e);
        if (src >= 0 && src < n_expert)
            order[n++] = e;
    }
    /* insertion sort: a handful of experts */
    for (int32_t i = 1; i < n; i++)
        for (int32_t j = i; j > 0; j--) {
            size_t a = (size_t)il * n_expert + moe_bricks_origin(b, il, order[j - 1]);
            size_t c = (size_t)il * n_expert + moe_bricks_origin(b, il, order[j]);
            bool swap = load[c] < load[a] || (load[c] == load[a] && (imp[c] < imp[a] ||
                        (imp[c] == imp[a] && order[j] > order[j - 1])));
            if (!swap)
                break;
            int32_t tmp = order[j];
            order[j] = order[j - 1];
            order[j - 1] = tmp;
        }
    for (int32_t i = 0; i < n; i++)
        ld[i] = load[(size_t)il * n_expert + moe_bricks_origin(b, il, order[i])];
    return n;
}

static bool bk_apply(moe_bricks *b, moe_model *m, const bk_op *op, uint64_t seed, int max_tokens)
{
    const int32_t n_layer = moe_bricks_n_layer(b);
    moe_status st = MOE_OK;
    if (op->id == BK_OPT_PRUNE_UNUSED || op->id == BK_OPT_PRUNE_LEAST) {
        int64_t *load = NULL, *ld = NULL;
        double *imp = NULL;
        int32_t nl, ne, per = 1 << 30, *order = NULL;
        bool ok = false;
        if (!bk_loads(m, op->file, max_tokens, &load, &imp, &nl, &ne))
            return false;
        order = malloc(4096 * sizeof *order);
        ld = malloc(4096 * sizeof *ld);
        if (!order || !ld) {
            cli_fail(bk_cmd, CLI_EXIT_FAIL, "out of memory");
            goto out;
        }
        if (op->id == BK_OPT_PRUNE_LEAST)
            per = op->count;
        else
            for (int32_t il = 0; il < n_layer; il++) {
                int32_t n, unused = 0;
                if (moe_bricks_n_expert(b, il) == 0)
                    continue;
                n = bk_rank(b, il, load, imp, ne, order, ld);
                while (unused < n && ld[unused] == 0)
                    unused++;
                per = unused < per ? unused : per;
            }
        if (per == 0) {
            fprintf(stderr, "moe-studio bricks: %s: some layer uses every expert; nothing pruned\n",
                    op->arg);
            ok = true;
            goto out;
        }
        for (int32_t il = 0; il < n_layer && st == MOE_OK; il++) {
            int32_t n;
            if (moe_bricks_n_expert(b, il) == 0)
                continue;
            n = bk_rank(b, il, load, imp, ne, order, ld);
            if (n < per) {
                cli_fail(bk_cmd, CLI_EXIT_FAIL, "%s: layer %d has only %d measured experts", op->arg,
                         il, n);
                goto out;
            }
            st = moe_bricks_prune(b, il, order, per);
        }
        if (st != MOE_OK) {
            cli_fail_engine(bk_cmd, st, "%s", op->arg);
            goto out;
        }
        fprintf(stderr, "moe-studio bricks: %s: pruned %d expert%s per layer\n", op->arg, per,
                per == 1 ? "" : "s");
        ok = true;
    out:
        free(load);
        free(imp);
        free(order);
        free(ld);
        return ok;
    }
    if (op->layer >= n_layer) {
        cli_fail(bk_cmd, CLI_EXIT_FAIL, "%s: layer %d out of range [0, %d)", op->arg, op->layer,
                 n_layer);
        return false;
    }
    for (int32_t il = 0; il < n_layer && st == MOE_OK; il++) {
        if (op->layer >= 0 && il != op->layer)
            continue;
        if (op->layer < 0 && moe_bricks_n_expert(b, il) == 0)
            continue;
        switch (op->id) {
        case BK_OPT_MERGE:
            st = moe_bricks_merge(b, il, op->ids, op->n_w ? op->w : NULL, op->n_ids);
            break;
        case BK_OPT_GROW:
            st = moe_bricks_grow(b, il, op->ids[0], op->noise, seed);
            break;
        case BK_OPT_PRUNE:
            st = moe_bricks_prune(b, il, op->ids, op->n_ids);
            break;
        default:
            break;
        }
    }
    if (st != MOE_OK) {
        cli_fail_engine(bk_cmd, st, "%s", op->arg);
        return false;
    }
    return true;
}

/* ---- the command ---------------------------------------------------------------- */

int cmd_bricks(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},
        {"text", required_argument, NULL, 'f'},
        {"max-tokens", required_argument, NULL, BK_OPT_MAX},
        {"json", no_argument, NULL, BK_OPT_JSON},
        {"kind", required_argument, NULL, BK_OPT_KIND},
        {"top", required_argument, NULL, BK_OPT_TOP},
        {"disable", required_argument, NULL, BK_OPT_DISABLE},
        {"merge", required_argument, NULL, BK_OPT_MERGE},
        {"grow", required_argument, NULL, BK_OPT_GROW},
        {"prune", required_argument, NULL, BK_OPT_PRUNE},
        {"prune-unused", required_argument, NULL, BK_OPT_PRUNE_UNUSED},
        {"prune-least", required_argument, NULL, BK_OPT_PRUNE_LEAST},
        {"seed", required_argument, NULL, BK_OPT_SEED},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL, *text_path = NULL, *kinds = NULL, *out = NULL;
    bool json = false;
    int top = 5, max_tokens = 4096, c, rc = CLI_EXIT_FAIL;
    uint64_t seed = 1;
    bk_op *ops = NULL;
    bk_ban *bans = NULL;
    int n_ops = 0, n_bans = 0;
    moe_model *model = NULL, *edited = NULL;
    moe_bricks *ed = NULL;
    moe_route_stats *stats = NULL;
    bk_text text = {0};
    moe_status st;

    ops = calloc((size_t)argc + 1, sizeof *ops);
    bans = calloc((size_t)argc + 1, sizeof *bans);
    if (!ops || !bans) {
        free(ops);
        free(bans);
        return cli_fail(bk_cmd, CLI_EXIT_FAIL, "out of memory");
    }
    cli_getopt_reset();
    while ((c = getopt_long(argc, argv, ":m:f:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': path = optarg; break;
        case 'f': text_path = optarg; break;
        case 'o': out = optarg; break;
        case BK_OPT_JSON: json = true; break;
        case BK_OPT_KIND:
            if (!bk_kinds_valid(optarg)) {
                rc = cli_fail(bk_cmd, CLI_EXIT_USAGE,
                              "bad --kind '%s' (want a list of layer,head,ffn,expert,shexp)", optarg);
                goto done;
            }
            kinds = optarg;
            break;
        case BK_OPT_TOP:
            if (!cli_parse_int(bk_cmd, "--top", optarg, 0, 64, &top)) {
                rc = CLI_EXIT_USAGE;
                goto done;
            }
            break;
        case BK_OPT_MAX:
            if (!cli_parse_int(bk_cmd, "--max-tokens", optarg, 2, 1 << 24, &max_tokens)) {
                rc = CLI_EXIT_USAGE;
                goto done;
            }
            break;
        case BK_OPT_SEED:
            if (!cli_parse_u64(bk_cmd, "--seed", optarg, &seed)) {
                rc = CLI_EXIT_USAGE;
                goto done;
            }
            break;
        case BK_OPT_DISABLE: {
            const char *s = optarg;
            int32_t id[1], n = 0;
            if (!cli_parse_layer_prefix(&s, &bans[n_bans].layer, 100000) ||
                !bk_int_list(&s, id, &n, 1) || *s) {
                rc = cli_fail(bk_cmd, CLI_EXIT_USAGE, "bad --disable '%s' (want L:E)", optarg);
                goto done;
            }
            bans[n_bans++].expert = id[0];
            break;
        }
        case BK_OPT_MERGE:
        case BK_OPT_GROW:
        case BK_OPT_PRUNE:
        case BK_OPT_PRUNE_UNUSED:
        case BK_OPT_PRUNE_LEAST:
            if (!bk_parse_op(c, optarg, &ops[n_ops])) {
                rc = cli_fail(bk_cmd, CLI_EXIT_USAGE, "bad --%s '%s' (see --help)",
                              c == BK_OPT_MERGE ? "merge" : c == BK_OPT_GROW ? "grow"
                              : c == BK_OPT_PRUNE ? "prune" : c == BK_OPT_PRUNE_UNUSED
                              ? "prune-unused" : "prune-least", optarg);
                goto done;
            }
            n_ops++;
            break;
        case 'h':
            bk_usage(stdout);
            rc = CLI_OK;
            goto done;
        default:
            rc = cli_bad_option(bk_cmd, c, argv);
            goto done;
        }
    }
    if (optind < argc) {
        rc = cli_fail(bk_cmd, CLI_EXIT_USAGE, "unexpected argument '%s'", argv[optind]);
        goto done;
    }
    if (!path) {
        rc = cli_fail(bk_cmd, CLI_EXIT_USAGE, "-m MODEL is required");
        goto done;
    }
    if (n_ops > 0 && !out) {
        rc = cli_fail(bk_cmd, CLI_EXIT_USAGE, "operations need -o OUT");
        goto done;
    }
    if (out && n_bans > 0) {
        rc = cli_fail(bk_cmd, CLI_EXIT_USAGE,
                      "--disable is a run-time ban and is not saved; use --prune to remove experts");
        goto done;
    }
    model = cli_load_model(bk_cmd, path, 0);
    if (!model)
        goto done;
    /* expand '*' bans to every layer */
    if (n_bans > 0) {
        moe_model_info info;
        bk_ban *all;
        int n_all = 0;
        moe_model_get_info(model, &info);
        if (info.n_expert == 0) {
            cli_fail(bk_cmd, CLI_EXIT_FAIL, "--disable: '%s' has no experts", path);
            goto done;
        }
        all = calloc((size_t)n_bans * (size_t)info.n_layer, sizeof *all);
        if (!all) {
            cli_fail(bk_cmd, CLI_EXIT_FAIL, "out of memory");
            goto done;
        }
        for (int i = 0; i < n_bans; i++)
            for (int32_t il = 0; il < info.n_layer; il++)
                if (bans[i].layer < 0 || bans[i].layer == il)
                    all[n_all++] = (bk_ban){il, bans[i].expert};
        free(bans);
        bans = all;
        n_bans = n_all;
    }
    if (text_path && !bk_load_text(model, text_path, max_tokens, &text))
        goto done;

    if (!out) {
        if (text_path && !bk_measure(model, &text, bans, n_bans, &stats, NULL, NULL, NULL))
            goto done;
        rc = bk_list(model, kinds, stats, top, json, text_path ? &text : NULL);
        goto done;
    }

    /* edit, save, reload, compare */
    if ((st = moe_bricks_open(path, &ed))) {
        cli_fail_engine(bk_cmd, st, "cannot edit '%s'", path);
        goto done;
    }
    for (int i = 0; i < n_ops; i++)
        if (!bk_apply(ed, model, &ops[i], seed, max_tokens))
            goto done;
    if ((st = moe_bricks_save(ed, out))) {
        cli_fail_engine(bk_cmd, st, "cannot save '%s'", out);
        goto done;
    }
    edited = cli_load_model(bk_cmd, out, 0);
    if (!edited)
        goto done;
    {
        moe_model_info a, b;
        double p0 = NAN, p1 = NAN, mx = 0.0;
        moe_model_get_info(model, &a);
        moe_model_get_info(edited, &b);
        if (text_path) {
            float *l0 = NULL, *l1 = NULL;
            int32_t n0 = 0, n1 = 0;
            bool ok = bk_measure(model, &text, NULL, 0, NULL, &p0, &l0, &n0) &&
                      bk_measure(edited, &text, NULL, 0, NULL, &p1, &l1, &n1);
            if (ok && a.n_vocab == b.n_vocab && n0 == n1)
                for (size_t i = 0; i < (size_t)n0 * (size_t)a.n_vocab; i++)
                    mx = fmax(mx, fabs((double)l0[i] - l1[i]));
            free(l0);
            free(l1);
            if (!ok)
                goto done;
        }
        if (json) {
            cJSON *root = cJSON_CreateObject();
            char *js;
            cJSON_AddStringToObject(root, "output", out);
            cJSON_AddNumberToObject(root, "n_expert_before", a.n_expert);
            cJSON_AddNumberToObject(root, "n_expert", b.n_expert);
            cJSON_AddNumberToObject(root, "n_expert_used", b.n_expert_used);
            cJSON_AddNumberToObject(root, "n_params_before", (double)a.n_params);
            cJSON_AddNumberToObject(root, "n_params", (double)b.n_params);
            if (text_path) {
                cJSON_AddNumberToObject(root, "text_tokens", text.n);
                cJSON_AddNumberToObject(root, "ppl_before", p0);
                cJSON_AddNumberToObject(root, "ppl", p1);
                cJSON_AddNumberToObject(root, "max_abs_dlogit", mx);
            }
            js = cJSON_PrintUnformatted(root);
            if (js)
                printf("%s\n", js);
            free(js);
            cJSON_Delete(root);
        } else {
            printf("wrote %s: %d -> %d experts per routed layer (top-%d), %lld -> %lld parameters\n",
                   out, a.n_expert, b.n_expert, b.n_expert_used, (long long)a.n_params,
                   (long long)b.n_params);
            if (text_path)
                printf("on %s (%d tokens): perplexity %.4f -> %.4f, max |logit difference| %.3g\n",
                       text_path, text.n, p0, p1, mx);
        }
    }
    rc = CLI_OK;
done:
    moe_route_stats_free(stats);
    moe_bricks_free(ed);
    moe_model_free(edited);
    moe_model_free(model);
    free(text.toks);
    free(ops);
    free(bans);
    return rc;
}
