/*
 * check_speculate.c - self-speculative decoding: greedy output with
 * speculation equals plain greedy decoding for 128 tokens (stories260K and
 * the synthetic dense and MoE models, several draft depths and lengths),
 * the cache/position/logits after a step are those of plain decoding;
 * sampling with a full-depth draft accepts everything; bad arguments.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "testutil.h"

#define N_GEN 128

static const char *const spec_models[] = {
    "models/real/stories260K.gguf",
    "models/synthetic/tiny-dense-llama.f32.gguf",
    "models/synthetic/tiny-mixtral.f32.gguf",
    "models/synthetic/tiny-qwen2moe.f32.gguf",
    "models/synthetic/tiny-olmoe.f32.gguf",
    "models/synthetic/tiny-granitemoe.f32.gguf",
};
#define N_SPEC_MODELS (int)(sizeof spec_models / sizeof spec_models[0])

static int32_t argmax(const float *z, int32_t n)
{
    int32_t a = 0;
    for (int32_t v = 1; v < n; v++)
        if (z[v] > z[a])
            a = v;
    return a;
}

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

/* Prompt: BOS (or token 1) + 3 fixed tokens. */
static int32_t prompt(const moe_model *m, int32_t *p)
{
    moe_model_info info;
    moe_model_get_info(m, &info);
    p[0] = moe_token_bos(m) >= 0 ? moe_token_bos(m) : 1;
    p[1] = 17 % info.n_vocab;
    p[2] = 301 % info.n_vocab;
    p[3] = 42 % info.n_vocab;
    return 4;
}

static void plain_greedy(moe_model *m, int32_t *out, float *last_logits)
{
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_model_info info;
    int32_t p[4], n = prompt(m, p), id;
    moe_model_get_info(m, &info);
    cp.n_ctx = 256;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_decode(c, p, n, false) == MOE_OK);
    id = argmax(moe_ctx_logits(c, -1), info.n_vocab);
    for (int i = 0; i < N_GEN; i++) {
        ck_assert(moe_ctx_decode(c, &id, 1, false) == MOE_OK);
        id = argmax(moe_ctx_logits(c, -1), info.n_vocab);
        out[i] = id;
    }
    memcpy(last_logits, moe_ctx_logits(c, -1), (size_t)info.n_vocab * sizeof(float));
    moe_ctx_free(c);
}

/* Speculative greedy: the same N_GEN tokens; returns the stats. */
static moe_spec_stats spec_greedy(moe_model *m, int32_t E, int32_t d, int32_t *out,
                                  float *last_logits)
{
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_spec_params sp = moe_spec_default_params();
    moe_spec_stats st = {0};
    moe_model_info info;
    int32_t p[4], n = prompt(m, p), id, got = 0, buf[64];
    moe_model_get_info(m, &info);
    cp.n_ctx = 256;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_decode(c, p, n, false) == MOE_OK);
    id = argmax(moe_ctx_logits(c, -1), info.n_vocab);
    sp.n_exit = E;
    sp.n_draft = d;
    while (got < N_GEN) {
        int32_t n_out = 0, want = N_GEN - got;
        ck_assert_msg(moe_ctx_speculate(c, &sp, id, buf, want < 64 ? want : 64, &n_out, &st) ==
                          MOE_OK,
                      "%s", moe_last_error());
        ck_assert(n_out >= 1 && n_out <= d + 1 && n_out <= want);
        memcpy(out + got, buf, (size_t)n_out * sizeof(int32_t));
        got += n_out;
        id = buf[n_out - 1];
        /* position: prompt + every token fed so far */
        ck_assert_int_eq(moe_ctx_pos(c), n + got);
        ck_assert_int_eq(argmax(moe_ctx_logits(c, -1), info.n_vocab), id);
    }
    memcpy(last_logits, moe_ctx_logits(c, -1), (size_t)info.n_vocab * sizeof(float));
    moe_ctx_free(c);
    return st;
}

START_TEST(test_greedy_equal)
{
    moe_model *m = load(spec_models[_i], "speculate_greedy");
    moe_model_info info;
    int32_t ref[N_GEN], got[N_GEN];
    float *lr, *lg;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    lr = malloc((size_t)info.n_vocab * sizeof(float));
    lg = malloc((size_t)info.n_vocab * sizeof(float));
    ck_assert(lr && lg);
    plain_greedy(m, ref, lr);
    {
        const int32_t cfg[][2] = {{1, 4}, {info.n_layer - 1, 3}, {info.n_layer / 2, 6},
                                  {info.n_layer, 2}, {1, 1}};
        for (size_t k = 0; k < sizeof cfg / sizeof cfg[0]; k++) {
            moe_spec_stats st;
            if (cfg[k][0] < 1)
                continue;
            st = spec_greedy(m, cfg[k][0], cfg[k][1], got, lg);
            for (int i = 0; i < N_GEN; i++)
                ck_assert_msg(got[i] == ref[i], "%s E=%d d=%d: token %d: %d vs plain %d",
                              spec_models[_i], cfg[k][0], cfg[k][1], i, got[i], ref[i]);
            /* verification runs layers >= E as a batch, summed as single
             * tokens are (moe_order), so even the last bits agree */
            for (int32_t v = 0; v < info.n_vocab; v++)
                ck_assert_msg(lr[v] == lg[v], "%s E=%d d=%d: final logit %d: %.9g vs %.9g",
                              spec_models[_i], cfg[k][0], cfg[k][1], v, (double)lg[v],
                              (double)lr[v]);
            ck_assert_int_eq(st.emitted, N_GEN);
            ck_assert(st.accepted <= st.drafted);
            ck_assert_int_eq(st.emitted, st.accepted + st.steps);
            if (cfg[k][0] == info.n_layer) /* the draft is the full model */
                ck_assert_int_eq(st.accepted, st.drafted);
        }
    }
    free(lr);
    free(lg);
    moe_model_free(m);
}
END_TEST

/* Sampling: with E = n_layer draft and target agree, so every draft is
 * accepted; with E = 1 the tokens are valid and positions consistent; the
 * same seed gives the same tokens. */
START_TEST(test_sampling)
{
    moe_model *m = load("models/real/stories260K.gguf", "speculate_sampling");
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_spec_params sp = moe_spec_default_params();
    moe_model_info info;
    int32_t first[2][64];
    if (!m)
        return;
    moe_model_get_info(m, &info);
    cp.n_ctx = 256;
    sp.temp = 0.8f;
    sp.top_k = 40;
    sp.top_p = 0.95f;
    for (int run = 0; run < 3; run++) {
        moe_spec_stats st = {0};
        int32_t id = moe_token_bos(m), got = 0, buf[8];
        ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
        ck_assert(moe_ctx_decode(c, &id, 1, false) == MOE_OK);
        id = argmax(moe_ctx_logits(c, -1), info.n_vocab);
        sp.n_exit = run == 0 ? info.n_layer : 1;
        sp.n_draft = 4;
        while (got < 64) {
            int32_t n_out;
            ck_assert(moe_ctx_speculate(c, &sp, id, buf, 64 - got < 8 ? 64 - got : 8, &n_out,
                                        &st) == MOE_OK);
            for (int32_t i = 0; i < n_out; i++) {
                ck_assert(buf[i] >= 0 && buf[i] < info.n_vocab);
                if (run > 0)
                    first[run - 1][got + i] = buf[i];
            }
            got += n_out;
            id = buf[n_out - 1];
            ck_assert_int_eq(moe_ctx_pos(c), 1 + got);
        }
        if (run == 0)
            ck_assert_int_eq(st.accepted, st.drafted);
        else
            ck_assert(st.accepted < st.drafted); /* a 1-layer draft is not the model */
        moe_ctx_free(c);
    }
    ck_assert(memcmp(first[0], first[1], sizeof first[0]) == 0);
    moe_model_free(m);
}
END_TEST

/* Rejection sampling keeps the target distribution: the first token a step
 * yields after a fixed `next` is distributed like the full model's
 * (top-k 5, temperature 1), although the 1-layer draft proposes from a very
 * different one (accepting drafts blindly would give that one instead). */
START_TEST(test_sampling_distribution)
{
    moe_model *m = load("models/real/stories260K.gguf", "speculate_distribution");
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_spec_params sp = moe_spec_default_params();
    moe_model_info info;
    int32_t pr[4], n, next, buf[4], n_out, top[5];
    double p[5], emp[5] = {0}, sum = 0.0, tv = 0.0;
    const int trials = 1500;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    cp.n_ctx = 64;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    n = prompt(m, pr);
    ck_assert(moe_ctx_decode(c, pr, n, false) == MOE_OK);
    next = argmax(moe_ctx_logits(c, -1), info.n_vocab);
    /* target: the full model after `next`, top 5 at temperature 1 */
    ck_assert(moe_ctx_decode(c, &next, 1, false) == MOE_OK);
    {
        const float *z = moe_ctx_logits(c, -1);
        for (int j = 0; j < 5; j++) {
            int32_t best = -1;
            for (int32_t v = 0; v < info.n_vocab; v++) {
                bool taken = false;
                for (int i = 0; i < j; i++)
                    taken |= top[i] == v;
                if (!taken && (best < 0 || z[v] > z[best]))
                    best = v;
            }
            top[j] = best;
        }
        for (int j = 0; j < 5; j++)
            sum += p[j] = exp((double)z[top[j]] - (double)z[top[0]]);
        for (int j = 0; j < 5; j++)
            p[j] /= sum;
    }
    sp.n_exit = 1;
    sp.n_draft = 1;
    sp.temp = 1.0f;
    sp.top_k = 5;
    for (int t = 0; t < trials; t++) {
        moe_ctx_truncate(c, n);
        ck_assert(moe_ctx_speculate(c, &sp, next, buf, 2, &n_out, NULL) == MOE_OK);
        for (int j = 0; j < 5; j++)
            if (buf[0] == top[j])
                emp[j] += 1.0 / trials;
    }
    for (int j = 0; j < 5; j++)
        tv += fabs(emp[j] - p[j]) / 2;
    ck_assert_msg(tv < 0.05, "total variation %.3f (p0 %.3f vs %.3f)", tv, p[0], emp[0]);
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

START_TEST(test_bad_args)
{
    moe_model *m = load("models/real/stories260K.gguf", "speculate_bad_args");
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_spec_params sp = moe_spec_default_params();
    int32_t buf[8], n_out, bos;
    static const char *const bad[] = {"", "2", "0:4", "2:0", "x:1", "2:4:1", "2:", ":3"};
    if (!m)
        return;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(moe_spec_parse(bad[i], &sp) == MOE_ERR_INVALID_ARG, "'%s'", bad[i]);
        ck_assert(strchr(moe_last_error(), '\n') == NULL);
    }
    ck_assert(moe_spec_parse("3:5", &sp) == MOE_OK);
    ck_assert(sp.n_exit == 3 && sp.n_draft == 5);
    cp.n_ctx = 8;
    ck_assert(moe_ctx_new(m, &cp, &c) == MOE_OK);
    bos = moe_token_bos(m);
    sp.n_exit = 0;
    ck_assert(moe_ctx_speculate(c, &sp, bos, buf, 8, &n_out, NULL) == MOE_ERR_INVALID_ARG);
    sp.n_exit = 99;
    ck_assert(moe_ctx_speculate(c, &sp, bos, buf, 8, &n_out, NULL) == MOE_ERR_INVALID_ARG);
    sp.n_exit = 1;
    ck_assert(moe_ctx_speculate(c, &sp, 100000, buf, 8, &n_out, NULL) == MOE_ERR_INVALID_ARG);
    ck_assert(moe_ctx_speculate(c, &sp, bos, buf, 0, &n_out, NULL) == MOE_ERR_INVALID_ARG);
    /* the context limits the drafts; a full context is an error */
    sp.n_draft = 20;
    for (int i = 0; i < 8 && moe_ctx_pos(c) < 8;) {
        ck_assert(moe_ctx_speculate(c, &sp, bos, buf, 8, &n_out, NULL) == MOE_OK);
        ck_assert(moe_ctx_pos(c) <= 8);
        i += n_out;
    }
    ck_assert_int_eq(moe_ctx_pos(c), 8);
    ck_assert(moe_ctx_speculate(c, &sp, bos, buf, 8, &n_out, NULL) == MOE_ERR_FULL);
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

Suite *speculate_suite(void);
Suite *speculate_suite(void)
{
    Suite *s = suite_create("speculate");
    TCase *tc = tcase_create("greedy");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_greedy_equal, 0, N_SPEC_MODELS);
    tcase_add_test(tc, test_sampling);
    tcase_add_test(tc, test_sampling_distribution);
    tcase_add_test(tc, test_bad_args);
    suite_add_tcase(s, tc);
    return s;
}
