/*
 * check_exit.c - early exit and the logit lens: criteria that never trigger
 * and depth = n_layer reproduce the full model's logits bit for bit (batch
 * and one token at a time, dense and MoE); the lens agrees with the final
 * logits at the last layer; exited tokens leave the keys/values of their
 * frozen state at every later layer; batch == one-by-one with mixed exits;
 * HashEE buckets on a hand-made frequency table, save/load, bad files; spec
 * parsing errors.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "moe.h"
#include "testutil.h"

static const char *const exit_models[] = {
    "models/real/stories260K.gguf",
    "models/synthetic/tiny-dense-llama.f32.gguf",
    "models/synthetic/tiny-mixtral.f32.gguf",
    "models/synthetic/tiny-qwen2moe.f32.gguf",
    "models/synthetic/tiny-granitemoe.f32.gguf",
};
#define N_EXIT_MODELS (int)(sizeof exit_models / sizeof exit_models[0])

#define N_TOK 24

static moe_model *load(const char *rel, const char *test)
{
    char path[1024];
    moe_model *m = NULL;
    moe_model_params mp = moe_model_default_params();
    if (!tu_shared(path, sizeof path, rel, test))
        return NULL;
    mp.n_threads = 2;
    ck_assert_msg(moe_model_load(path, &mp, &m) == MOE_OK, "%s", moe_last_error());
    return m;
}

static void test_tokens(const moe_model *m, int32_t *toks, int n)
{
    moe_model_info info;
    moe_model_get_info(m, &info);
    for (int i = 0; i < n; i++)
        toks[i] = (int32_t)((i * 7919 + 11) % info.n_vocab);
    if (moe_token_bos(m) >= 0)
        toks[0] = moe_token_bos(m);
}

/* Logits of N_TOK tokens as one batch (all rows) followed by 4 single
 * decodes, written to out ([N_TOK + 4][n_vocab]); exit layers to ex. */
static void run_model(moe_model *m, const char *spec, bool lens, float *out, int32_t *ex)
{
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    int32_t toks[N_TOK + 4];
    moe_model_info info;
    size_t nv;
    moe_model_get_info(m, &info);
    nv = (size_t)info.n_vocab;
    test_tokens(m, toks, N_TOK + 4);
    cp.n_ctx = 64;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    if (spec)
        ck_assert_msg(moe_ctx_set_exit_spec(c, spec) == MOE_OK, "%s: %s", spec,
                      moe_last_error());
    if (lens) {
        moe_trace_params tp = {.on = true, .lens_k = 5, .max_tokens = 0};
        ck_assert(moe_ctx_set_trace(c, &tp) == MOE_OK);
    }
    ck_assert(moe_ctx_decode(c, toks, N_TOK, true) == MOE_OK);
    for (int i = 0; i < N_TOK; i++) {
        memcpy(out + (size_t)i * nv, moe_ctx_logits(c, i), nv * sizeof(float));
        if (ex)
            ex[i] = moe_ctx_exit_layer(c, i);
    }
    for (int i = 0; i < 4; i++) {
        ck_assert(moe_ctx_decode(c, &toks[N_TOK + i], 1, false) == MOE_OK);
        memcpy(out + (size_t)(N_TOK + i) * nv, moe_ctx_logits(c, -1), nv * sizeof(float));
        if (ex)
            ex[N_TOK + i] = moe_ctx_exit_layer(c, -1);
    }
    if (lens) {
        /* the lens at the last layer is the final distribution */
        const int32_t L = info.n_layer;
        ck_assert_int_eq(moe_ctx_trace_count(c), N_TOK + 4);
        for (int i = 0; i < N_TOK + 4; i++) {
            const moe_trace_token *e = moe_ctx_trace_get(c, i);
            const float *z = out + (size_t)i * nv;
            int32_t am = 0;
            float psum = 0;
            for (int32_t v = 1; v < info.n_vocab; v++)
                if (z[v] > z[am])
                    am = v;
            ck_assert_int_eq(e->exit_layer, L - 1);
            ck_assert_int_eq(e->lens_id[(size_t)(L - 1) * 5], am);
            ck_assert_int_eq(e->lens_rank[L - 1], 0);
            for (int32_t l = 0; l < L; l++) {
                ck_assert(isfinite(e->lens_entropy[l]) && e->lens_entropy[l] >= -1e-4f);
                ck_assert(e->lens_rank[l] >= 0 && e->lens_rank[l] < info.n_vocab);
                ck_assert(e->lens_p[(size_t)l * 5] >= e->lens_p[(size_t)l * 5 + 4]);
            }
            for (int j = 0; j < 5; j++)
                psum += e->lens_p[(size_t)(L - 1) * 5 + j];
            ck_assert(psum > 0.0f && psum <= 1.0001f);
        }
    }
    moe_ctx_free(c);
}

/* Criteria that never trigger, depth = n_layer and the lens alone give the
 * exact logits of the plain forward pass. */
START_TEST(test_never_triggers)
{
    moe_model *m = load(exit_models[_i], "exit_never_triggers");
    moe_model_info info;
    float *ref, *got;
    int32_t ex[N_TOK + 4];
    char specs[6][64];
    size_t n_el;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    n_el = (size_t)(N_TOK + 4) * (size_t)info.n_vocab;
    ref = malloc(n_el * sizeof(float));
    got = malloc(n_el * sizeof(float));
    ck_assert(ref && got);
    run_model(m, NULL, false, ref, NULL);
    snprintf(specs[0], sizeof specs[0], "entropy:0");
    snprintf(specs[1], sizeof specs[1], "maxprob:1");
    snprintf(specs[2], sizeof specs[2], "patience:%d", info.n_layer);
    snprintf(specs[3], sizeof specs[3], "window:0:3");
    snprintf(specs[4], sizeof specs[4], "depth:%d", info.n_layer);
    snprintf(specs[5], sizeof specs[5], "none");
    for (int s = 0; s < 6; s++) {
        run_model(m, specs[s], false, got, ex);
        ck_assert_msg(memcmp(ref, got, n_el * sizeof(float)) == 0, "%s %s: logits differ",
                      exit_models[_i], specs[s]);
        for (int i = 0; i < N_TOK + 4; i++)
            ck_assert_int_eq(ex[i], info.n_layer - 1);
    }
    /* logit lens on, no criterion: same logits, consistent lens */
    run_model(m, NULL, true, got, NULL);
    ck_assert_msg(memcmp(ref, got, n_el * sizeof(float)) == 0, "%s lens: logits differ",
                  exit_models[_i]);
    /* a criterion together with the lens */
    run_model(m, "entropy:0", true, got, NULL);
    ck_assert(memcmp(ref, got, n_el * sizeof(float)) == 0);
    free(ref);
    free(got);
    moe_model_free(m);
}
END_TEST

/* Criteria that always trigger exit after layer 0: same logits as depth:1;
 * stats count one layer per token. */
START_TEST(test_always_triggers)
{
    moe_model *m = load("models/real/stories260K.gguf", "exit_always");
    moe_model_info info;
    float *ref, *got;
    int32_t ex[N_TOK + 4];
    static const char *const specs[] = {"entropy:1000", "maxprob:0", "window:1:2"};
    size_t n_el;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    n_el = (size_t)(N_TOK + 4) * (size_t)info.n_vocab;
    ref = malloc(n_el * sizeof(float));
    got = malloc(n_el * sizeof(float));
    ck_assert(ref && got);
    run_model(m, "depth:1", false, ref, ex);
    for (int i = 0; i < N_TOK + 4; i++)
        ck_assert_int_eq(ex[i], 0);
    for (int s = 0; s < 3; s++) {
        run_model(m, specs[s], false, got, ex);
        ck_assert_msg(memcmp(ref, got, n_el * sizeof(float)) == 0, "%s", specs[s]);
        for (int i = 0; i < N_TOK + 4; i++)
            ck_assert_int_eq(ex[i], 0);
    }
    /* "@N": no exit before layer N - always-true criteria exit exactly there */
    run_model(m, "depth:3", false, ref, NULL);
    run_model(m, "entropy:1000@2", false, got, ex);
    ck_assert(memcmp(ref, got, n_el * sizeof(float)) == 0);
    for (int i = 0; i < N_TOK + 4; i++)
        ck_assert_int_eq(ex[i], 2);
    run_model(m, "depth:1@2", false, got, ex);
    ck_assert(memcmp(ref, got, n_el * sizeof(float)) == 0);
    /* patience:1 exits after layer 1 at the earliest */
    run_model(m, "patience:1", false, got, ex);
    for (int i = 0; i < N_TOK + 4; i++)
        ck_assert(ex[i] >= 1 && ex[i] <= info.n_layer - 1);
    free(ref);
    free(got);
    moe_model_free(m);
}
END_TEST

/* A token that exits after layer e leaves, at every later layer, the keys
 * and values of its frozen state: rebuild them with the forward pieces. */
START_TEST(test_exited_kv)
{
    static const char *const models[] = {"models/real/stories260K.gguf",
                                         "models/synthetic/tiny-mixtral.f32.gguf"};
    moe_model *m = load(models[_i], "exit_kv");
    moe_ctx *a, *b;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_exit_stats stats;
    int32_t toks[N_TOK];
    const int32_t depth = 2;
    size_t n_kv, row;
    int32_t L;
    if (!m)
        return;
    L = m->hp.n_layer;
    ck_assert(L > depth);
    n_kv = (size_t)m->hp.n_head_kv * (size_t)m->hp.n_embd_head;
    test_tokens(m, toks, N_TOK);
    cp.n_ctx = 64;
    ck_assert(moe_ctx_new(m, &cp, &a) == MOE_OK);
    ck_assert(moe_ctx_new(m, &cp, &b) == MOE_OK);
    ck_assert(moe_ctx_set_exit_spec(a, "depth:2") == MOE_OK);
    ck_assert(moe_ctx_decode(a, toks, N_TOK, false) == MOE_OK);
    moe_ctx_exit_stats(a, &stats);
    ck_assert_int_eq(stats.n_tokens, N_TOK);
    ck_assert_int_eq(stats.layers_run, (int64_t)N_TOK * depth);
    ck_assert_int_eq(stats.layers_total, (int64_t)N_TOK * L);

    /* b: the first `depth` layers, then keys/values only from the state */
    forward_embed(b, toks, N_TOK);
    for (int32_t il = 0; il < depth; il++)
        forward_layer(b, il, N_TOK);
    for (int32_t il = depth; il < L; il++)
        forward_kv_only(b, il, N_TOK);
    row = (size_t)N_TOK * n_kv;
    for (int32_t il = 0; il < L; il++) {
        size_t off = (size_t)il * (size_t)a->n_ctx * n_kv;
        ck_assert_msg(memcmp(a->k_cache + off, b->k_cache + off, row * sizeof(float)) == 0,
                      "%s: keys of layer %d differ", models[_i], il);
        ck_assert_msg(memcmp(a->v_cache + off, b->v_cache + off, row * sizeof(float)) == 0,
                      "%s: values of layer %d differ", models[_i], il);
    }
    /* layer il's keys come from the input of layer il, so a token that
     * exits after layer e differs from the full model from layer e + 2 on */
    if (L > depth + 1) {
        moe_ctx *c;
        size_t off = (size_t)(L - 1) * (size_t)a->n_ctx * n_kv;
        ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
        ck_assert(moe_ctx_decode(c, toks, N_TOK, false) == MOE_OK);
        ck_assert(memcmp(a->k_cache + off, c->k_cache + off, row * sizeof(float)) != 0);
        moe_ctx_free(c);
    }
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(m);
}
END_TEST

static bool vec_close(const float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(x[i] - y[i]) <= 1e-4f + 1e-4f * fabsf(y[i])))
            return false;
    return true;
}

/* Mixed exits inside a batch (HashEE: some tokens after layer 0, some run
 * all layers) give the same logits, exit layers and cache as decoding the
 * tokens one at a time. */
START_TEST(test_batch_vs_single)
{
    static const char *const models[] = {"models/real/stories260K.gguf",
                                         "models/synthetic/tiny-qwen2moe.f32.gguf"};
    moe_model *m = load(models[_i], "exit_batch_single");
    moe_ctx *a, *b;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_exit_params ep = moe_exit_default_params();
    moe_hash_table *h;
    int64_t *counts;
    int32_t toks[N_TOK], n_zero = 0, n_full = 0;
    size_t nv, n_kv;
    int32_t L;
    if (!m)
        return;
    L = m->hp.n_layer;
    nv = (size_t)m->hp.n_vocab;
    n_kv = (size_t)m->hp.n_head_kv * (size_t)m->hp.n_embd_head;
    test_tokens(m, toks, N_TOK);
    /* every other token id of the batch is frequent (bucket 0 of L) */
    counts = calloc(nv, sizeof *counts);
    ck_assert(counts != NULL);
    for (int i = 1; i < N_TOK; i += 2)
        counts[toks[i]] = 1000 + i;
    ck_assert(moe_hash_from_counts(counts, NULL, (int32_t)nv, L, &h) == MOE_OK);
    ep.kind = MOE_EXIT_HASH;
    ep.hash = h;
    cp.n_ctx = 64;
    ck_assert(moe_ctx_new(m, &cp, &a) == MOE_OK);
    ck_assert(moe_ctx_new(m, &cp, &b) == MOE_OK);
    ck_assert(moe_ctx_set_exit(a, &ep) == MOE_OK);
    ck_assert(moe_ctx_set_exit(b, &ep) == MOE_OK);
    moe_hash_free(h); /* the contexts keep copies */
    ck_assert(moe_ctx_decode(a, toks, N_TOK, true) == MOE_OK);
    for (int i = 0; i < N_TOK; i++) {
        int32_t ea = moe_ctx_exit_layer(a, i), eb;
        ck_assert(moe_ctx_decode(b, &toks[i], 1, false) == MOE_OK);
        eb = moe_ctx_exit_layer(b, -1);
        ck_assert_int_eq(ea, eb);
        n_zero += ea < L - 1;
        n_full += ea == L - 1;
        /* a batch and a single row differ in the dot kernels' summation
         * order, hence a tolerance */
        ck_assert_msg(vec_close(moe_ctx_logits(a, i), moe_ctx_logits(b, -1), nv),
                      "%s: token %d logits differ", models[_i], i);
    }
    ck_assert(n_zero > 0 && n_full > 0);
    for (int32_t il = 0; il < L; il++) {
        size_t off = (size_t)il * (size_t)a->n_ctx * n_kv;
        ck_assert(vec_close(a->k_cache + off, b->k_cache + off, N_TOK * n_kv));
        ck_assert(vec_close(a->v_cache + off, b->v_cache + off, N_TOK * n_kv));
    }
    free(counts);
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(m);
}
END_TEST

/* The trace records the exit: layer, criterion, its value; layers after
 * the exit have no lens and no residual norm. */
START_TEST(test_trace_exit)
{
    moe_model *m = load("models/real/stories260K.gguf", "exit_trace");
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true, .lens_k = 3, .max_tokens = 0};
    int32_t toks[8];
    if (!m)
        return;
    test_tokens(m, toks, 8);
    cp.n_ctx = 32;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_set_trace(c, &tp) == MOE_OK);
    ck_assert(moe_ctx_set_exit_spec(c, "entropy:1000@2") == MOE_OK);
    ck_assert(moe_ctx_decode(c, toks, 6, false) == MOE_OK);
    ck_assert(moe_ctx_decode(c, toks + 6, 1, false) == MOE_OK);
    ck_assert(moe_ctx_set_exit_spec(c, "none") == MOE_OK);
    ck_assert(moe_ctx_decode(c, toks + 7, 1, false) == MOE_OK);
    ck_assert_int_eq(moe_ctx_trace_count(c), 8);
    for (int i = 0; i < 8; i++) {
        const moe_trace_token *e = moe_ctx_trace_get(c, i);
        const int32_t L = 5;
        if (i < 7) {
            ck_assert_int_eq(e->exit_layer, 2);
            ck_assert_int_eq(e->exit_kind, MOE_EXIT_ENTROPY);
            ck_assert(e->exit_value >= 0.0f && e->exit_value < 1000.0f);
            ck_assert(e->exit_value == e->lens_entropy[2]);
            for (int32_t l = 0; l < L; l++) {
                ck_assert(l <= 2 ? e->hnorm[l] > 0.0f : e->hnorm[l] == 0.0f);
                ck_assert(l <= 2 ? e->lens_rank[l] >= 0 : e->lens_rank[l] == -1);
                ck_assert(l <= 2 ? !isnan(e->lens_entropy[l]) : isnan(e->lens_entropy[l]));
            }
            ck_assert_int_eq(e->lens_rank[2], 0); /* its own final layer */
        } else {
            ck_assert_int_eq(e->exit_layer, L - 1);
            ck_assert_int_eq(e->exit_kind, MOE_EXIT_NONE);
            ck_assert(isnan(e->exit_value));
            ck_assert_int_eq(e->lens_rank[L - 1], 0);
        }
    }
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

/* HashEE buckets on a hand-made table of 10 token counts. */
START_TEST(test_hash_buckets)
{
    /*            id: 0  1  2  3  4  5  6  7  8  9   */
    const int64_t counts[10] = {5, 0, 9, 9, 1, 3, 7, 0, 2, 100};
    const bool special[10] = {[9] = true};
    /* seen, not special, by count then id: 2 3 6 0 5 8 4 (N = 7); with
     * B = 3 rank r gets floor(3r/7): 0 0 0 1 1 2 2 */
    const int32_t want[10] = {1, -1, 0, 0, 2, 1, 0, -1, 2, -1};
    /* 5 layers: bucket b runs ceil((b+1)*5/3) layers: 2, 4, 5 */
    const int32_t want_exit[10] = {3, 4, 1, 1, 4, 3, 1, 4, 4, 4};
    moe_hash_table *h, *g;
    char path[1024];
    FILE *f;

    ck_assert(moe_hash_from_counts(counts, special, 10, 3, &h) == MOE_OK);
    ck_assert_int_eq(moe_hash_n_buckets(h), 3);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(moe_hash_bucket(h, i), want[i]);
        ck_assert_int_eq(moe_hash_exit_layer(h, i, 5), want_exit[i]);
    }
    ck_assert_int_eq(moe_hash_bucket(h, 10), -1);
    ck_assert_int_eq(moe_hash_bucket(h, -1), -1);
    /* as many buckets as layers: bucket b exits after layer b */
    moe_hash_free(h);
    ck_assert(moe_hash_from_counts(counts, special, 10, 7, &h) == MOE_OK);
    ck_assert_int_eq(moe_hash_exit_layer(h, 2, 7), 0);
    ck_assert_int_eq(moe_hash_exit_layer(h, 4, 7), 6);
    ck_assert_int_eq(moe_hash_exit_layer(h, 0, 7), 3);

    /* save / load round trip */
    tu_tmp_path(path, sizeof path, "hash.txt");
    ck_assert(moe_hash_save(h, path) == MOE_OK);
    ck_assert_msg(moe_hash_load(path, &g) == MOE_OK, "%s", moe_last_error());
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(moe_hash_bucket(g, i), moe_hash_bucket(h, i));
    ck_assert_int_eq(moe_hash_n_buckets(g), 7);
    moe_hash_free(g);
    moe_hash_free(h);
    moe_hash_free(NULL);

    /* bad arguments and files */
    ck_assert(moe_hash_from_counts(counts, special, 10, 0, &h) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_hash_from_counts(counts, special, 10, 11, &h) == MOE_ERR_INVALID_ARG);
    {
        static const char *const bad[] = {
            "moe-hashee 2\nn_vocab 10\nn_buckets 3\n",
            "moe-hashee 1\nn_vocab 0\nn_buckets 3\n",
            "moe-hashee 1\nn_vocab 10\nn_buckets 3\n2 3\n",
            "moe-hashee 1\nn_vocab 10\nn_buckets 3\n10 0\n",
            "moe-hashee 1\nn_vocab 10\nn_buckets 3\n2 0\n2 1\n",
            "moe-hashee 1\nn_vocab 10\nn_buckets 3\n2 x\n",
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            f = fopen(path, "w");
            ck_assert(f != NULL);
            fputs(bad[i], f);
            fclose(f);
            g = (moe_hash_table *)1;
            ck_assert_msg(moe_hash_load(path, &g) == MOE_ERR_FORMAT, "case %zu", i);
            ck_assert(g == NULL);
            ck_assert(strchr(moe_last_error(), '\n') == NULL);
        }
    }
    ck_assert(moe_hash_load("/nonexistent/table", &g) == MOE_ERR_IO);
}
END_TEST

/* HashEE from a text: BOS/special tokens get no bucket, frequent words a
 * shallow one; a table of the wrong vocabulary is refused. */
START_TEST(test_hash_text)
{
    moe_model *m = load("models/real/stories260K.gguf", "exit_hash_text");
    const char *text = "the cat and the dog and the bird. the end.";
    moe_hash_table *h;
    moe_exit_params ep = moe_exit_default_params();
    moe_ctx *c;
    const int64_t counts[3] = {1, 2, 3};
    int32_t toks[64], n, best = -1, cnt[512] = {0};
    if (!m)
        return;
    ck_assert(moe_hash_from_text(m, text, strlen(text), 5, &h) == MOE_OK);
    ck_assert_int_eq(moe_hash_bucket(h, moe_token_bos(m)), -1);
    /* the most frequent token of the text is in bucket 0, an unseen one in none */
    n = moe_tokenize(m, text, strlen(text), toks, 64, false, false);
    ck_assert(n > 0);
    for (int32_t i = 0; i < n; i++)
        cnt[toks[i]]++;
    for (int32_t v = 0; v < 512; v++)
        if (best < 0 || cnt[v] > cnt[best])
            best = v;
    ck_assert(cnt[best] >= 4);
    ck_assert_int_eq(moe_hash_bucket(h, best), 0);
    for (int32_t v = 0; v < 512; v++)
        if (cnt[v] == 0)
            ck_assert_int_eq(moe_hash_bucket(h, v), -1);
    ck_assert(moe_ctx_new(m, NULL, &c) == MOE_OK);
    ep.kind = MOE_EXIT_HASH;
    ep.hash = h;
    ck_assert(moe_ctx_set_exit(c, &ep) == MOE_OK);
    ck_assert_int_eq(moe_ctx_get_exit(c).kind, MOE_EXIT_HASH);
    moe_hash_free(h);
    ck_assert(moe_hash_from_counts(counts, NULL, 3, 2, &h) == MOE_OK);
    ep.hash = h;
    ck_assert(moe_ctx_set_exit(c, &ep) == MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "vocabulary") != NULL);
    moe_hash_free(h);
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

START_TEST(test_bad_specs)
{
    static const char *const bad[] = {
        "",          "entropy",      "entropy:",  "entropy:x",   "entropy:-1",
        "maxprob:2", "patience:0",   "patience:1.5", "window:0.5", "window:2:1",
        "window:0.5:-1", "depth:0",  "depth:x",   "foo:1",       "none:3",
        "hash:",     "hash:/nonexistent/t", "hashtext:x",
    };
    moe_exit_params p;
    moe_hash_table *h = NULL;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(moe_exit_parse(bad[i], &p, &h) != MOE_OK, "'%s' accepted", bad[i]);
        ck_assert(h == NULL);
        ck_assert(moe_last_error()[0] != '\0');
        ck_assert(strchr(moe_last_error(), '\n') == NULL);
    }
    ck_assert(moe_exit_parse("window:0.25:3", &p, NULL) == MOE_OK);
    ck_assert_int_eq(p.kind, MOE_EXIT_WINDOW);
    ck_assert(p.threshold == 0.25f && p.window == 3);
    ck_assert(moe_exit_parse("maxprob:0.9@3", &p, NULL) == MOE_OK);
    ck_assert(p.kind == MOE_EXIT_MAXPROB && p.min_layer == 3 && p.threshold == 0.9f);
    ck_assert(moe_exit_parse("maxprob:0.9@", &p, NULL) != MOE_OK);
    ck_assert(moe_exit_parse("patience:2", &p, NULL) == MOE_OK);
    ck_assert_int_eq(p.min_layer, 0);
    ck_assert(p.kind == MOE_EXIT_PATIENCE && p.patience == 2);
    ck_assert_str_eq(moe_exit_kind_name(MOE_EXIT_MAXPROB), "maxprob");
    {
        moe_model *m = load("models/real/stories260K.gguf", "exit_bad_specs");
        moe_ctx *c;
        if (!m)
            return;
        ck_assert(moe_ctx_new(m, NULL, &c) == MOE_OK);
        ck_assert(moe_ctx_set_exit_spec(c, "depth:99") == MOE_ERR_INVALID_ARG);
        ck_assert(moe_ctx_set_exit_spec(c, "hashtext:/nonexistent/x") == MOE_ERR_IO);
        ck_assert(moe_ctx_set_exit_spec(c, "hashtext:") == MOE_ERR_INVALID_ARG);
        ck_assert_int_eq(moe_ctx_get_exit(c).kind, MOE_EXIT_NONE);
        moe_ctx_free(c);
        moe_model_free(m);
    }
}
END_TEST

Suite *exit_suite(void);
Suite *exit_suite(void)
{
    Suite *s = suite_create("exit");
    TCase *tc = tcase_create("exact");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_never_triggers, 0, N_EXIT_MODELS);
    tcase_add_test(tc, test_always_triggers);
    tcase_add_loop_test(tc, test_exited_kv, 0, 2);
    tcase_add_loop_test(tc, test_batch_vs_single, 0, 2);
    suite_add_tcase(s, tc);
    tc = tcase_create("hash");
    tcase_add_test(tc, test_trace_exit);
    tcase_add_test(tc, test_hash_buckets);
    tcase_add_test(tc, test_hash_text);
    tcase_add_test(tc, test_bad_specs);
    suite_add_tcase(s, tc);
    return s;
}
