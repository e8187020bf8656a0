/*
 * check_bricks.c - bricks on the synthetic MoE models of ../shared and
 * stories260K: listing (counts, kinds, sizes adding up), saving without
 * changes (bit-identical logits and bytes), merging an exact duplicate
 * expert (= the model with the duplicate banned; = the model under top-1),
 * pruning experts a text never selected (same logits on that text),
 * growing with noise 0 then merging back (the original bytes), growing with
 * noise (clone near its source; banned, the original logits), disabling an
 * expert with the router's ban (never selected), and bad calls.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "gguf_rewrite.h"
#include "moe.h"
#include "testutil.h"

#define MIXTRAL "models/synthetic/tiny-mixtral.f32.gguf"
#define QWEN2MOE "models/synthetic/tiny-qwen2moe.f32.gguf"
#define OLMOE "models/synthetic/tiny-olmoe.f32.gguf"
#define STORIES "models/real/stories260K.gguf"

static const char bk_text[] =
    "Once upon a time there was a little girl who lived in a village near the "
    "forest. Whenever she went out, the little girl wore a red riding cloak, so "
    "everyone in the village called her Little Red Riding Hood.";

typedef struct {
    int32_t layer, expert;
} bk_ban;

typedef struct {
    float *logits;   /* [n][n_vocab] */
    int32_t *sel;    /* [n][n_layer][n_sel] from the trace */
    int32_t n, n_vocab, n_layer, n_sel, n_expert;
} bk_run;

/* Evaluate the first n_max tokens of bk_text (all logits, traced). */
static void bk_eval(const char *path, int32_t n_max, int32_t top_k, const bk_ban *bans,
                    int32_t n_bans, bk_run *r)
{
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true};
    moe_trace_dims d;
    moe_model_info info;
    int32_t toks[256];
    memset(r, 0, sizeof *r);
    ck_assert_int_eq(moe_model_load(path, NULL, &m), MOE_OK);
    moe_model_get_info(m, &info);
    r->n = moe_tokenize(m, bk_text, strlen(bk_text), toks, 256, true, false);
    ck_assert_int_gt(r->n, 8);
    if (n_max > 0 && r->n > n_max)
        r->n = n_max;
    cp.n_ctx = 256;
    cp.n_threads = 1;
    ck_assert_int_eq(moe_ctx_new(m, &cp, &c), MOE_OK);
    ck_assert_int_eq(moe_ctx_set_trace(c, &tp), MOE_OK);
    if (top_k > 0)
        ck_assert_int_eq(moe_route_set_top_k(c, -1, top_k), MOE_OK);
    for (int32_t i = 0; i < n_bans; i++)
        ck_assert_int_eq(moe_route_ban(c, bans[i].layer, bans[i].expert, true), MOE_OK);
    ck_assert_int_eq(moe_ctx_decode(c, toks, r->n, true), MOE_OK);
    d = moe_ctx_trace_dims(c);
    r->n_vocab = info.n_vocab;
    r->n_layer = d.n_layer;
    r->n_sel = d.n_sel;
    r->n_expert = d.n_expert;
    r->logits = malloc((size_t)r->n * (size_t)r->n_vocab * sizeof(float));
    r->sel = malloc((size_t)r->n * (size_t)(d.n_layer * d.n_sel) * sizeof(int32_t));
    ck_assert(r->logits && r->sel);
    for (int32_t i = 0; i < r->n; i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        memcpy(r->logits + (size_t)i * r->n_vocab, moe_ctx_logits(c, i),
               (size_t)r->n_vocab * sizeof(float));
        memcpy(r->sel + (size_t)i * d.n_layer * d.n_sel, t->sel,
               (size_t)(d.n_layer * d.n_sel) * sizeof(int32_t));
    }
    moe_ctx_free(c);
    moe_model_free(m);
}

static void bk_free(bk_run *r)
{
    free(r->logits);
    free(r->sel);
}

static double bk_diff(const bk_run *a, const bk_run *b)
{
    double mx = 0.0;
    ck_assert_int_eq(a->n, b->n);
    for (size_t i = 0; i < (size_t)a->n * (size_t)a->n_vocab; i++) {
        double d = fabs((double)a->logits[i] - b->logits[i]);
        mx = d > mx ? d : mx;
    }
    return mx;
}

static bool bk_same_tensors(const char *pa, const char *pb, bool experts_only)
{
    gguf_ctx *a = NULL, *b = NULL;
    bool same = true;
    ck_assert_int_eq(gguf_open(pa, &a), MOE_OK);
    ck_assert_int_eq(gguf_open(pb, &b), MOE_OK);
    if (!experts_only)
        same = gguf_n_tensors(a) == gguf_n_tensors(b);
    for (int64_t i = 0; same && i < gguf_n_tensors(a); i++) {
        const gguf_tensor_info *ta = gguf_tensor(a, i), *tb = gguf_find_tensor(b, ta->name);
        if (experts_only && !strstr(ta->name, "_exps") && !strstr(ta->name, "gate_inp."))
            continue;
        same = tb && ta->type == tb->type && ta->nbytes == tb->nbytes &&
               memcmp(ta->ne, tb->ne, sizeof ta->ne) == 0 &&
               memcmp(ta->data, tb->data, ta->nbytes) == 0;
    }
    gguf_close(a);
    gguf_close(b);
    return same;
}

START_TEST(test_list_sizes)
{
    static const char *const files[] = {MIXTRAL, QWEN2MOE, OLMOE, STORIES};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[1024];
        moe_model *m = NULL;
        moe_model_info info;
        moe_brick b;
        int64_t layer_params = 0, inner = 0, n_layer_seen = 0;
        int32_t n, want, hd;
        if (!tu_shared(path, sizeof path, files[f], "test_list_sizes"))
            return;
        ck_assert_int_eq(moe_model_load(path, NULL, &m), MOE_OK);
        moe_model_get_info(m, &info);
        hd = info.n_embd_head;
        n = moe_model_n_bricks(m);
        want = info.n_layer * (1 + info.n_head +
                               (info.n_expert ? info.n_expert + (info.has_shared_expert ? 1 : 0) : 1));
        ck_assert_int_eq(n, want);
        for (int32_t i = 0; i < n; i++) {
            ck_assert_int_eq(moe_model_brick(m, i, &b), MOE_OK);
            ck_assert(b.n_params > 0 && b.bytes > 0);
            switch (b.kind) {
            case MOE_BRICK_LAYER:
                if (n_layer_seen)
                    ck_assert_msg(inner <= layer_params, "%s: parts exceed the layer", path);
                ck_assert_int_eq(b.layer, n_layer_seen);
                n_layer_seen++;
                layer_params = b.n_params;
                inner = 0;
                break;
            case MOE_BRICK_HEAD:
                ck_assert_int_eq(b.n_params, 2 * (int64_t)hd * info.n_embd +
                                                 (info.has_shared_expert ? hd : 0));
                ck_assert_int_eq(b.bytes, b.n_params * 4); /* f32 files */
                inner += b.n_params;
                break;
            case MOE_BRICK_EXPERT:
                ck_assert_int_eq(b.n_params, 3 * (int64_t)info.n_embd * info.n_ff_exp + info.n_embd);
                ck_assert_int_eq(b.bytes, b.n_params * 4);
                ck_assert(strstr(b.name, ".expert.") != NULL);
                inner += b.n_params;
                break;
            case MOE_BRICK_FFN:
                ck_assert_int_eq(b.n_params, 3 * (int64_t)info.n_embd * info.n_ff);
                inner += b.n_params;
                break;
            default:
                inner += b.n_params;
            }
        }
        ck_assert_int_eq(n_layer_seen, info.n_layer);
        ck_assert_int_eq(moe_model_brick(m, n, &b), MOE_ERR_INVALID_ARG);
        ck_assert_int_eq(moe_model_brick(m, 1, &b), MOE_OK);
        ck_assert_str_eq(b.name, "blk.0.head.0");
        ck_assert_str_eq(moe_brick_kind_name(b.kind), "head");
        moe_model_free(m);
    }
}
END_TEST

START_TEST(test_save_roundtrip)
{
    static const char *const files[] = {MIXTRAL, QWEN2MOE, OLMOE};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[1024], out[1024];
        moe_bricks *b = NULL;
        bk_run r0, r1;
        if (!tu_shared(path, sizeof path, files[f], "test_save_roundtrip"))
            return;
        tu_tmp_path(out, sizeof out, "bricks-roundtrip.gguf");
        ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
        ck_assert_int_eq(moe_bricks_save(b, out), MOE_OK);
        moe_bricks_free(b);
        ck_assert(bk_same_tensors(path, out, false));
        bk_eval(path, 0, 0, NULL, 0, &r0);
        bk_eval(out, 0, 0, NULL, 0, &r1);
        ck_assert(memcmp(r0.logits, r1.logits, (size_t)r0.n * r0.n_vocab * sizeof(float)) == 0);
        bk_free(&r0);
        bk_free(&r1);
    }
}
END_TEST

/* tr_rewrite: expert 1 of every routed layer becomes expert 0 (weights and
 * router row) */
static void *bk_dup_tensor(const gguf_tensor_info *t, moe_type *type, void *arg)
{
    (void)type;
    (void)arg;
    if (!strstr(t->name, "_exps.weight") && !strstr(t->name, "ffn_gate_inp.weight"))
        return NULL;
    int64_t n_e = strstr(t->name, "_exps") ? t->ne[2] : t->ne[1];
    size_t slice = t->nbytes / (size_t)n_e;
    char *buf = malloc(t->nbytes);
    ck_assert_ptr_nonnull(buf);
    memcpy(buf, t->data, t->nbytes);
    memcpy(buf + slice, buf, slice);
    return buf;
}

/* Write a copy of src where expert 1 of every routed layer is expert 0. */
static void bk_write_dup(const char *src, const char *dst)
{
    tr_rewrite(src, dst, bk_dup_tensor, NULL);
}

START_TEST(test_merge_duplicates)
{
    char path[1024], dup[1024], merged[1024], merged_eq[1024];
    static const int32_t pair[2] = {1, 0};
    static const float half[2] = {0.5f, 0.5f};
    moe_bricks *b = NULL;
    bk_ban bans[3];
    bk_run rd, rm, rdb, rmk;
    double d1, d2;
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_merge_duplicates"))
        return;
    tu_tmp_path(dup, sizeof dup, "bricks-dup.gguf");
    tu_tmp_path(merged, sizeof merged, "bricks-merged.gguf");
    tu_tmp_path(merged_eq, sizeof merged_eq, "bricks-merged-eq.gguf");
    bk_write_dup(path, dup);

    ck_assert_int_eq(moe_bricks_open(dup, &b), MOE_OK);
    for (int32_t il = 0; il < 3; il++) {
        ck_assert_int_eq(moe_bricks_merge(b, il, pair, half, 2), MOE_OK);
        ck_assert_int_eq(moe_bricks_n_expert(b, il), 7);
        ck_assert_int_eq(moe_bricks_origin(b, il, 0), -1);
        ck_assert_int_eq(moe_bricks_origin(b, il, 1), 2);
    }
    ck_assert_int_eq(moe_bricks_save(b, merged), MOE_OK);
    moe_bricks_free(b);
    /* equal weights by default */
    ck_assert_int_eq(moe_bricks_open(dup, &b), MOE_OK);
    for (int32_t il = 0; il < 3; il++)
        ck_assert_int_eq(moe_bricks_merge(b, il, pair, NULL, 2), MOE_OK);
    ck_assert_int_eq(moe_bricks_save(b, merged_eq), MOE_OK);
    moe_bricks_free(b);
    ck_assert(bk_same_tensors(merged, merged_eq, false));

    /* the merged expert is expert 0, bit for bit: the original file
     * without its expert 1 */
    ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
    for (int32_t il = 0; il < 3; il++) {
        static const int32_t one = 1;
        ck_assert_int_eq(moe_bricks_prune(b, il, &one, 1), MOE_OK);
    }
    ck_assert_int_eq(moe_bricks_save(b, dup), MOE_OK); /* reuse path: pruned original */
    moe_bricks_free(b);
    ck_assert(bk_same_tensors(dup, merged, true));
    bk_write_dup(path, dup);

    /* top-1: the duplicate never wins a tie, the merged model is the same */
    bk_eval(dup, 0, 1, NULL, 0, &rd);
    bk_eval(merged, 0, 1, NULL, 0, &rm);
    d1 = bk_diff(&rd, &rm);
    ck_assert_msg(d1 <= 1e-6, "top-1: merged vs duplicated max |dlogit| %g", d1);
    /* model's top-2: merged = duplicated model with the duplicate banned */
    for (int32_t il = 0; il < 3; il++)
        bans[il] = (bk_ban){il, 1};
    bk_eval(dup, 0, 0, bans, 3, &rdb);
    bk_eval(merged, 0, 0, NULL, 0, &rmk);
    d2 = bk_diff(&rdb, &rmk);
    ck_assert_msg(d2 <= 1e-5, "top-2: merged vs duplicate banned max |dlogit| %g", d2);
    printf("bricks: merge of a duplicate: top-1 max |dlogit| %.2e, top-2 vs banned %.2e\n", d1,
           d2);
    bk_free(&rd);
    bk_free(&rm);
    bk_free(&rdb);
    bk_free(&rmk);
}
END_TEST

/* Prune, in every layer, experts that the first n tokens never selected;
 * the logits of those tokens stay. Mixtral renormalises the selected
 * weights, so the removed experts' softmax mass cancels out. */
START_TEST(test_prune_unused)
{
    char path[1024], out[1024];
    moe_bricks *b = NULL;
    bk_run r0, r1;
    int32_t n = 0, m = 0;
    double d;
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_prune_unused"))
        return;
    tu_tmp_path(out, sizeof out, "bricks-pruned.gguf");
    bk_eval(path, 0, 0, NULL, 0, &r0);
    /* the longest prefix leaving >= 2 experts unused in every layer */
    for (int32_t len = r0.n; len >= 4 && n == 0; len--) {
        int32_t min_unused = 1 << 30;
        for (int32_t il = 0; il < r0.n_layer; il++) {
            bool used[64] = {false};
            int32_t unused = 0;
            for (int32_t t = 0; t < len; t++)
                for (int32_t j = 0; j < r0.n_sel; j++) {
                    int32_t e = r0.sel[((size_t)t * r0.n_layer + il) * r0.n_sel + j];
                    if (e >= 0)
                        used[e] = true;
                }
            for (int32_t e = 0; e < r0.n_expert; e++)
                unused += !used[e];
            min_unused = unused < min_unused ? unused : min_unused;
        }
        if (min_unused >= 2) {
            n = len;
            m = min_unused;
        }
    }
    ck_assert_msg(n >= 4, "no prefix leaves experts unused");
    bk_free(&r0);
    bk_eval(path, n, 0, NULL, 0, &r0);
    ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
    for (int32_t il = 0; il < r0.n_layer; il++) {
        bool used[64] = {false};
        int32_t ids[64], k = 0;
        for (int32_t t = 0; t < n; t++)
            for (int32_t j = 0; j < r0.n_sel; j++) {
                int32_t e = r0.sel[((size_t)t * r0.n_layer + il) * r0.n_sel + j];
                if (e >= 0)
                    used[e] = true;
            }
        for (int32_t e = r0.n_expert - 1; e >= 0 && k < m; e--)
            if (!used[e])
                ids[k++] = e;
        ck_assert_int_eq(moe_bricks_prune(b, il, ids, k), MOE_OK);
    }
    ck_assert_int_eq(moe_bricks_save(b, out), MOE_OK);
    bk_eval(out, n, 0, NULL, 0, &r1);
    ck_assert_int_eq(r1.n_expert, r0.n_expert - m);
    d = bk_diff(&r0, &r1);
    ck_assert_msg(d <= 1e-5, "pruned %d unused experts per layer: max |dlogit| %g", m, d);
    /* and the same experts chosen, through the renumbering */
    for (int32_t t = 0; t < n; t++)
        for (int32_t il = 0; il < r0.n_layer; il++)
            for (int32_t j = 0; j < r0.n_sel; j++) {
                int32_t e1 = r1.sel[((size_t)t * r1.n_layer + il) * r1.n_sel + j];
                int32_t e0 = r0.sel[((size_t)t * r0.n_layer + il) * r0.n_sel + j];
                ck_assert_int_eq(e1 < 0 ? -1 : moe_bricks_origin(b, il, e1), e0);
            }
    printf("bricks: pruned %d never-selected experts per layer (%d tokens): max |dlogit| %.2e\n",
           m, n, d);
    moe_bricks_free(b);
    bk_free(&r0);
    bk_free(&r1);
}
END_TEST

/* grow with noise 0 (a clone sharing its source's bytes) and merge the
 * clone back: the original file's tensors, also for a K-quant file whose
 * re-quantization would not be the identity. */
START_TEST(test_grow_merge_back)
{
    static const char *const files[] = {QWEN2MOE, "models/synthetic/tiny-mixtral-256.q4_k_m.gguf"};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[1024], out[1024];
        moe_bricks *b = NULL;
        int32_t n_layer;
        if (!tu_shared(path, sizeof path, files[f], "test_grow_merge_back"))
            return;
        tu_tmp_path(out, sizeof out, "bricks-grow-back.gguf");
        ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
        n_layer = moe_bricks_n_layer(b);
        for (int32_t il = 0; il < n_layer; il++) {
            int32_t pair[2];
            ck_assert_int_eq(moe_bricks_grow(b, il, 3, 0.0f, 5), MOE_OK);
            ck_assert_int_eq(moe_bricks_n_expert(b, il), 9);
            ck_assert_int_eq(moe_bricks_origin(b, il, 8), 3);
            pair[0] = 8;
            pair[1] = 3;
            ck_assert_int_eq(moe_bricks_merge(b, il, pair, (const float[]){0.5f, 0.5f}, 2), MOE_OK);
            ck_assert_int_eq(moe_bricks_origin(b, il, 3), 3);
        }
        ck_assert_int_eq(moe_bricks_save(b, out), MOE_OK);
        moe_bricks_free(b);
        ck_assert(bk_same_tensors(path, out, false));
    }
}
END_TEST

/* merge of two different experts: the weighted average of each tensor
 * and of the router rows, stored at the lower id. */
START_TEST(test_merge_weighted)
{
    char path[1024], out[1024];
    moe_bricks *b = NULL;
    gguf_ctx *g0 = NULL, *g1 = NULL;
    static const int32_t pair[2] = {5, 2};
    static const char *const names[] = {"blk.1.ffn_gate_exps.weight", "blk.1.ffn_up_exps.weight",
                                        "blk.1.ffn_down_exps.weight", "blk.1.ffn_gate_inp.weight"};
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_merge_weighted"))
        return;
    tu_tmp_path(out, sizeof out, "bricks-merge-w.gguf");
    ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
    for (int32_t il = 0; il < 3; il++)
        ck_assert_int_eq(moe_bricks_merge(b, il, pair, (const float[]){3.0f, 1.0f}, 2), MOE_OK);
    ck_assert_int_eq(moe_bricks_save(b, out), MOE_OK);
    moe_bricks_free(b);
    ck_assert_int_eq(gguf_open(path, &g0), MOE_OK);
    ck_assert_int_eq(gguf_open(out, &g1), MOE_OK);
    for (int k = 0; k < 4; k++) {
        const gguf_tensor_info *a = gguf_find_tensor(g0, names[k]), *m = gguf_find_tensor(g1, names[k]);
        const size_t ns = k == 3 ? (size_t)a->ne[0] : (size_t)(a->ne[0] * a->ne[1]);
        const float *A = a->data, *M = m->data;
        ck_assert_int_eq(k == 3 ? m->ne[1] : m->ne[2], 7);
        for (size_t i = 0; i < ns; i++) {
            /* merged at id 2 = 0.75 * E5 + 0.25 * E2; E3, E4 moved down one
             * place, E5's slot is gone: old 6 is new 5 */
            ck_assert(fabsf(M[2 * ns + i] - (0.75f * A[5 * ns + i] + 0.25f * A[2 * ns + i])) <= 1e-6f);
            ck_assert(M[3 * ns + i] == A[3 * ns + i] && M[5 * ns + i] == A[6 * ns + i]);
        }
    }
    gguf_close(g0);
    gguf_close(g1);
}
END_TEST

/* grow with noise: the clone is near its source; with the clone banned the
 * grown model computes what the original did. */
START_TEST(test_grow_noise)
{
    char path[1024], out[1024], out2[1024];
    moe_bricks *b = NULL;
    gguf_ctx *g = NULL;
    const gguf_tensor_info *t;
    bk_ban bans[3];
    bk_run r0, r1;
    double d;
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_grow_noise"))
        return;
    tu_tmp_path(out, sizeof out, "bricks-grow.gguf");
    tu_tmp_path(out2, sizeof out2, "bricks-grow2.gguf");
    for (int rep = 0; rep < 2; rep++) {
        ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
        for (int32_t il = 0; il < 3; il++)
            ck_assert_int_eq(moe_bricks_grow(b, il, 2, 0.01f, 42), MOE_OK);
        ck_assert_int_eq(moe_bricks_save(b, rep ? out2 : out), MOE_OK);
        moe_bricks_free(b);
    }
    ck_assert(bk_same_tensors(out, out2, false)); /* deterministic for a seed */
    ck_assert_int_eq(gguf_open(out, &g), MOE_OK);
    t = gguf_find_tensor(g, "blk.1.ffn_up_exps.weight");
    ck_assert(t && t->ne[2] == 9);
    {
        const size_t ns = (size_t)(t->ne[0] * t->ne[1]);
        const float *src = (const float *)t->data + 2 * ns, *cl = (const float *)t->data + 8 * ns;
        double ss = 0.0, sd = 0.0;
        for (size_t i = 0; i < ns; i++) {
            ss += (double)src[i] * src[i];
            sd += (double)(cl[i] - src[i]) * (cl[i] - src[i]);
        }
        ck_assert_msg(sqrt(sd / ss) > 0.008 && sqrt(sd / ss) < 0.012,
                      "relative noise %g, want ~0.01", sqrt(sd / ss));
    }
    gguf_close(g);
    for (int32_t il = 0; il < 3; il++)
        bans[il] = (bk_ban){il, 8};
    bk_eval(path, 0, 0, NULL, 0, &r0);
    bk_eval(out, 0, 0, bans, 3, &r1);
    d = bk_diff(&r0, &r1);
    ck_assert_msg(d <= 1e-5, "grown model with the clone banned: max |dlogit| %g", d);
    bk_free(&r0);
    bk_free(&r1);
}
END_TEST

/* Disabling = the router's ban: the most used expert of a layer is never
 * selected there once banned, and the other layers still route freely. */
START_TEST(test_disable)
{
    char path[1024];
    bk_run r0, r1;
    int32_t cnt[64] = {0}, top = 0;
    bk_ban ban;
    if (!tu_shared(path, sizeof path, OLMOE, "test_disable"))
        return;
    bk_eval(path, 0, 0, NULL, 0, &r0);
    for (int32_t t = 0; t < r0.n; t++)
        for (int32_t j = 0; j < r0.n_sel; j++) {
            int32_t e = r0.sel[((size_t)t * r0.n_layer + 1) * r0.n_sel + j];
            if (e >= 0)
                cnt[e]++;
        }
    for (int32_t e = 1; e < r0.n_expert; e++)
        top = cnt[e] > cnt[top] ? e : top;
    ck_assert_int_gt(cnt[top], 0);
    ban = (bk_ban){1, top};
    bk_eval(path, 0, 0, &ban, 1, &r1);
    for (int32_t t = 0; t < r1.n; t++)
        for (int32_t j = 0; j < r1.n_sel; j++) {
            ck_assert_int_ne(r1.sel[((size_t)t * r1.n_layer + 1) * r1.n_sel + j], top);
            /* layer 0 comes before the ban and routes as before */
            ck_assert_int_eq(r1.sel[((size_t)t * r1.n_layer + 0) * r1.n_sel + j],
                             r0.sel[((size_t)t * r0.n_layer + 0) * r0.n_sel + j]);
        }
    bk_free(&r0);
    bk_free(&r1);
}
END_TEST

START_TEST(test_bad_calls)
{
    char path[1024], dense[1024], out[1024];
    moe_bricks *b = NULL;
    int32_t ids[3] = {0, 0, 1};
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_bad_calls") ||
        !tu_shared(dense, sizeof dense, STORIES, "test_bad_calls"))
        return;
    tu_tmp_path(out, sizeof out, "bricks-bad.gguf");
    ck_assert_int_eq(moe_bricks_open(dense, &b), MOE_ERR_INVALID_ARG);
    ck_assert_ptr_null(b);
    ck_assert_int_eq(moe_bricks_open("/nonexistent.gguf", &b), MOE_ERR_IO);
    ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
    ck_assert_int_eq(moe_bricks_n_layer(b), 3);
    ck_assert_int_eq(moe_bricks_merge(b, 0, ids, NULL, 1), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_bricks_merge(b, 0, ids, NULL, 2), MOE_ERR_INVALID_ARG); /* twice */
    ck_assert_int_eq(moe_bricks_merge(b, 0, ids + 1, (const float[]){1.0f, 0.0f}, 2),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_bricks_merge(b, 3, ids + 1, NULL, 2), MOE_ERR_INVALID_ARG);
    ids[2] = 8;
    ck_assert_int_eq(moe_bricks_prune(b, 0, ids + 2, 1), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_bricks_grow(b, 0, 0, -1.0f, 1), MOE_ERR_INVALID_ARG);
    {
        int32_t all[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        ck_assert_int_eq(moe_bricks_prune(b, 0, all, 8), MOE_ERR_INVALID_ARG);
        ck_assert(strstr(moe_last_error(), "empty") != NULL);
        ck_assert_int_eq(moe_bricks_prune(b, 0, all, 7), MOE_OK);
    }
    ck_assert_int_eq(moe_bricks_n_expert(b, 0), 1);
    ck_assert_int_eq(moe_bricks_save(b, out), MOE_ERR_INVALID_ARG); /* 1 vs 8 experts */
    ck_assert(strstr(moe_last_error(), "one expert count") != NULL);
    moe_bricks_free(b);
    moe_bricks_free(NULL);
}
END_TEST

/* Prune down to one expert per layer: expert_used_count is capped. */
START_TEST(test_prune_caps_k)
{
    char path[1024], out[1024];
    moe_bricks *b = NULL;
    moe_model *m = NULL;
    moe_model_info info;
    int32_t ids[7] = {1, 2, 3, 4, 5, 6, 7};
    if (!tu_shared(path, sizeof path, MIXTRAL, "test_prune_caps_k"))
        return;
    tu_tmp_path(out, sizeof out, "bricks-one.gguf");
    ck_assert_int_eq(moe_bricks_open(path, &b), MOE_OK);
    for (int32_t il = 0; il < 3; il++)
        ck_assert_int_eq(moe_bricks_prune(b, il, ids, 7), MOE_OK);
    ck_assert_int_eq(moe_bricks_save(b, out), MOE_OK);
    moe_bricks_free(b);
    ck_assert_int_eq(moe_model_load(out, NULL, &m), MOE_OK);
    moe_model_get_info(m, &info);
    ck_assert_int_eq(info.n_expert, 1);
    ck_assert_int_eq(info.n_expert_used, 1);
    moe_model_free(m);
}
END_TEST

Suite *bricks_suite(void);

Suite *bricks_suite(void)
{
    Suite *s = suite_create("bricks");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_list_sizes);
    tcase_add_test(tc, test_save_roundtrip);
    tcase_add_test(tc, test_merge_duplicates);
    tcase_add_test(tc, test_prune_unused);
    tcase_add_test(tc, test_merge_weighted);
    tcase_add_test(tc, test_grow_merge_back);
    tcase_add_test(tc, test_grow_noise);
    tcase_add_test(tc, test_disable);
    tcase_add_test(tc, test_bad_calls);
    tcase_add_test(tc, test_prune_caps_k);
    suite_add_tcase(s, tc);
    return s;
}
