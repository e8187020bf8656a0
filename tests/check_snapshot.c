/*
 * check_snapshot.c - KV snapshots (moe_ctx_snapshot / moe_ctx_restore) and
 * embeddings (moe_ctx_embed): exact restore after the cache changed,
 * restore into another context, refusal across models; embeddings leave
 * the context as it was and do not depend on the batch size.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "testutil.h"

static moe_model *snap_load(const char *rel, const char *test)
{
    char path[512];
    moe_model_params mp = moe_model_default_params();
    moe_model *m = NULL;
    if (!tu_shared(path, sizeof path, rel, test))
        return NULL;
    mp.n_threads = 1;
    ck_assert_int_eq(moe_model_load(path, &mp, &m), MOE_OK);
    return m;
}

static moe_ctx *snap_ctx(moe_model *m, int n_batch)
{
    moe_ctx_params cp = moe_ctx_default_params();
    moe_ctx *c = NULL;
    cp.n_ctx = 64;
    cp.n_batch = n_batch;
    ck_assert_int_eq(moe_ctx_new(m, &cp, &c), MOE_OK);
    return c;
}

START_TEST(test_snapshot_restore)
{
    moe_model *m = snap_load("models/synthetic/tiny-mixtral.f32.gguf", "snapshot");
    moe_model_info info;
    const int32_t prompt[] = {1, 10, 20, 30, 40};
    const int32_t other[] = {7, 7, 7, 7, 7, 7};
    moe_snapshot *s = NULL;
    moe_ctx *c, *c2;
    float *ref, *ref_next;
    int32_t next;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    c = snap_ctx(m, 512);
    c2 = snap_ctx(m, 512);
    ref = malloc((size_t)info.n_vocab * sizeof(float));
    ref_next = malloc((size_t)info.n_vocab * sizeof(float));
    ck_assert_int_eq(moe_ctx_decode(c, prompt, 5, false), MOE_OK);
    memcpy(ref, moe_ctx_logits(c, -1), (size_t)info.n_vocab * sizeof(float));
    ck_assert_int_eq(moe_ctx_snapshot(c, &s), MOE_OK);
    ck_assert_int_eq(moe_snapshot_pos(s), 5);
    ck_assert_int_eq(memcmp(moe_snapshot_tokens(s), prompt, sizeof prompt), 0);
    next = 99;
    ck_assert_int_eq(moe_ctx_decode(c, &next, 1, false), MOE_OK);
    memcpy(ref_next, moe_ctx_logits(c, -1), (size_t)info.n_vocab * sizeof(float));
    /* change the cache below the snapshot's length, then restore */
    moe_ctx_truncate(c, 2);
    ck_assert_int_eq(moe_ctx_decode(c, other, 6, false), MOE_OK);
    ck_assert_int_eq(moe_ctx_restore(c, s), MOE_OK);
    ck_assert_int_eq(moe_ctx_pos(c), 5);
    ck_assert_int_eq(memcmp(moe_ctx_logits(c, -1), ref, (size_t)info.n_vocab * sizeof(float)), 0);
    ck_assert_int_eq(moe_ctx_decode(c, &next, 1, false), MOE_OK);
    ck_assert_int_eq(memcmp(moe_ctx_logits(c, -1), ref_next,
                            (size_t)info.n_vocab * sizeof(float)), 0);
    /* into another context of the same model */
    ck_assert_int_eq(moe_ctx_restore(c2, s), MOE_OK);
    ck_assert_int_eq(moe_ctx_decode(c2, &next, 1, false), MOE_OK);
    ck_assert_int_eq(memcmp(moe_ctx_logits(c2, -1), ref_next,
                            (size_t)info.n_vocab * sizeof(float)), 0);
    moe_snapshot_free(s);
    moe_snapshot_free(NULL);
    /* another model's snapshot is refused */
    {
        moe_model *m2 = snap_load("models/synthetic/tiny-dense-llama.f32.gguf", "snapshot");
        if (m2) {
            moe_ctx *c3 = snap_ctx(m2, 512);
            const int32_t one = 1;
            moe_snapshot *s2 = NULL;
            ck_assert_int_eq(moe_ctx_decode(c3, &one, 1, false), MOE_OK);
            ck_assert_int_eq(moe_ctx_snapshot(c3, &s2), MOE_OK);
            ck_assert_int_eq(moe_ctx_restore(c, s2), MOE_ERR_INVALID_ARG);
            moe_snapshot_free(s2);
            moe_ctx_free(c3);
            moe_model_free(m2);
        }
    }
    free(ref);
    free(ref_next);
    moe_ctx_free(c);
    moe_ctx_free(c2);
    moe_model_free(m);
}
END_TEST

START_TEST(test_embed)
{
    moe_model *m = snap_load("models/synthetic/tiny-mixtral.f32.gguf", "embed");
    moe_model_info info;
    const int32_t toks[] = {1, 11, 22, 33, 44, 55, 66};
    const int32_t pre[] = {1, 5, 6};
    moe_trace_params tp = {true, 0, 0};
    moe_route_counters k0, k1;
    moe_ctx *c, *cb;
    float *e_all, *e_small, *e_l0, *lg;
    double diff = 0.0, d0 = 0.0;
    if (!m)
        return;
    moe_model_get_info(m, &info);
    c = snap_ctx(m, 512);
    cb = snap_ctx(m, 2); /* the same tokens in batches of 2 */
    e_all = malloc((size_t)info.n_embd * sizeof(float));
    e_small = malloc((size_t)info.n_embd * sizeof(float));
    e_l0 = malloc((size_t)info.n_embd * sizeof(float));
    lg = malloc((size_t)info.n_vocab * sizeof(float));
    ck_assert_int_eq(moe_ctx_set_trace(c, &tp), MOE_OK);
    ck_assert_int_eq(moe_ctx_decode(c, pre, 3, false), MOE_OK);
    memcpy(lg, moe_ctx_logits(c, -1), (size_t)info.n_vocab * sizeof(float));
    moe_route_get_counters(c, &k0);
    moe_ctx_truncate(c, 0);
    moe_ctx_trace_clear(c);
    ck_assert_int_eq(moe_ctx_decode(c, pre, 3, false), MOE_OK);
    ck_assert_int_eq(moe_ctx_embed(c, toks, 7, -1, e_all), MOE_OK);
    /* the context is as it was */
    ck_assert_int_eq(moe_ctx_pos(c), 3);
    ck_assert_int_eq(moe_ctx_trace_count(c), 3);
    ck_assert_int_eq(memcmp(moe_ctx_logits(c, -1), lg, (size_t)info.n_vocab * sizeof(float)), 0);
    moe_route_get_counters(c, &k1);
    ck_assert(memcmp(&k0, &k1, sizeof k0) == 0);
    /* same tokens after the same prefix in batches of 2 */
    ck_assert_int_eq(moe_ctx_decode(cb, pre, 3, false), MOE_OK);
    ck_assert_int_eq(moe_ctx_embed(cb, toks, 7, -1, e_small), MOE_OK);
    ck_assert_int_eq(moe_ctx_embed(cb, toks, 7, 0, e_l0), MOE_OK);
    for (int i = 0; i < info.n_embd; i++) {
        diff = fmax(diff, fabs((double)e_all[i] - e_small[i]));
        d0 = fmax(d0, fabs((double)e_all[i] - e_l0[i]));
    }
    ck_assert_msg(diff < 1e-4, "batch size changed the embedding by %g", diff);
    ck_assert_msg(d0 > 1e-3, "layer 0 and the last layer give the same embedding");
    ck_assert_int_eq(moe_ctx_embed(c, toks, 7, info.n_layer, e_l0), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_ctx_embed(c, toks, 0, 0, e_l0), MOE_ERR_INVALID_ARG);
    free(e_all);
    free(e_small);
    free(e_l0);
    free(lg);
    moe_ctx_free(c);
    moe_ctx_free(cb);
    moe_model_free(m);
}
END_TEST

Suite *snapshot_suite(void);
Suite *snapshot_suite(void)
{
    Suite *s = suite_create("snapshot");
    TCase *tc = tcase_create("snapshot");
    tcase_add_test(tc, test_snapshot_restore);
    tcase_add_test(tc, test_embed);
    suite_add_tcase(s, tc);
    return s;
}
