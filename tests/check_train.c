/*
 * check_train.c - the trainer (engine/train*.c, bpe_train.c): every backward
 * pass against central finite differences (dense with GQA, MoE with
 * Mixtral renormalisation, plain top-k weights and EMoE unweighted gating,
 * each with all three balance losses on), a tiny overfit, the engine
 * running a checkpoint with the trainer's logits, resuming bit for bit,
 * freezing bricks, growing an expert, m2mKD distillation, the BPE trainer's
 * vocabulary in the engine's tokenizer, and bad arguments.
 *
 * Finite differences: parameters are perturbed by +-eps (eps = 1e-2, on
 * weights of std 0.3 so gradients are well above float noise); a coordinate
 * passes when |fd - analytic| <= 2e-3 + 2e-2 * |analytic|. Coordinates
 * whose perturbation changes any top-k selection are skipped (the loss is
 * not differentiable there); at most a quarter may be skipped.
 */
#include "config.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "moe.h"
#include "testutil.h"
#include "tokenizer.h"
#include "train_impl.h"

static const char corpus[] =
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And the Spirit of God moved upon the face of the waters.\n"
    "And God said, Let there be light: and there was light.\n"
    "And God saw the light, that it was good: and God divided the light from the darkness.\n"
    "And God called the light Day, and the darkness he called Night.\n"
    "And the evening and the morning were the first day.\n"
    "And God said, Let there be a firmament in the midst of the waters, and let it divide "
    "the waters from the waters.\n"
    "And God made the firmament, and divided the waters which were under the firmament from "
    "the waters which were above the firmament: and it was so.\n"
    "And God called the firmament Heaven. And the evening and the morning were the second "
    "day.\n"
    "And God said, Let the waters under the heaven be gathered together unto one place, and "
    "let the dry land appear: and it was so.\n";

/* a vocabulary trained on the corpus, written once per run */
static const char *vocab_path(void)
{
    static char path[512];
    if (!path[0]) {
        tu_tmp_path(path, sizeof path, "vocab.gguf");
        ck_assert_int_eq(moe_bpe_train(corpus, strlen(corpus), 320, path, NULL, NULL), MOE_OK);
    }
    return path;
}

static moe_train_config small_config(int n_expert)
{
    moe_train_config c = moe_train_default_config();
    c.n_embd = 16;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_head_kv = 2;
    c.n_ff = 24;
    c.n_expert = n_expert;
    c.n_expert_used = n_expert ? 2 : 0;
    c.n_ff_exp = 12;
    c.n_ctx_train = 64;
    c.seed = 7;
    return c;
}

static moe_trainer *make(const moe_train_config *c)
{
    moe_trainer *t = NULL;
    moe_status st = moe_trainer_new(c, vocab_path(), &t);
    ck_assert_msg(st == MOE_OK, "trainer_new: %s", moe_last_error());
    return t;
}

static int32_t *corpus_tokens(moe_trainer *t, int32_t *n)
{
    int32_t cap = (int32_t)sizeof corpus;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    *n = moe_trainer_tokenize(t, corpus, strlen(corpus), ids, cap);
    ck_assert_int_gt(*n, 10);
    return ids;
}

/* ---- finite differences ------------------------------------------------------ */

static double objective(moe_trainer *t, const int32_t *tok, int32_t n_seq, int32_t T)
{
    double ce = train_pass(t, tok, n_seq, T, T + 1, true, false, false);
    int nm = t->n_moe_layers ? t->n_moe_layers : 1;
    return ce + (t->par.w_balance * t->aux_bal + t->par.w_zloss * t->aux_z +
                 t->par.w_mi * t->aux_mi) / nm;
}

/* selections of every MoE layer, to notice a perturbation that flips one */
static uint64_t sel_hash(const moe_trainer *t, int64_t N)
{
    uint64_t h = 1469598103934665603ULL;
    for (int il = 0; il < t->cfg.n_layer; il++)
        if (t->layers[il].moe)
            for (int64_t i = 0; i < N * t->cfg.n_expert_used; i++)
                h = (h ^ (uint64_t)t->acts[il].sel[i]) * 1099511628211ULL;
    return h;
}

static void grad_check(moe_train_config c, float w_bal, float w_z, float w_mi)
{
    moe_trainer *t;
    moe_train_params p = moe_train_default_params();
    const int32_t n_seq = 2, T = 7;
    int32_t tok[2 * 8], n_corp;
    int32_t *ids;
    const double eps = 1e-2;
    int checked = 0, skipped = 0, failed = 0;
    double worst = 0.0;
    uint64_t rs = 99, base_sel;

    c.init_std = 0.3f;
    t = make(&c);
    p.w_balance = w_bal;
    p.w_zloss = w_z;
    p.w_mi = w_mi;
    p.n_threads = 1;
    ck_assert_int_eq(moe_trainer_set_params(t, &p), MOE_OK);
    ids = corpus_tokens(t, &n_corp);
    for (int i = 0; i < n_seq * (T + 1); i++)
        tok[i] = ids[(i * 5) % n_corp];
    free(ids);
    /* norms away from 1 so their gradients are exercised too */
    for (int ti = 0; ti < t->n_tens; ti++)
        if (t->tens[ti].n_dims == 1)
            for (size_t j = 0; j < t->tens[ti].n; j++)
                t->params[t->tens[ti].off + j] = 1.0f + 0.3f * (float)((int)(j * 37 % 11) - 5) / 5;

    ck_assert_int_eq(train_reserve(t, n_seq, T), MOE_OK);
    train_set_threads(1);
    memset(t->grads, 0, t->n_params * sizeof(float));
    train_pass(t, tok, n_seq, T, T + 1, true, true, false);
    base_sel = sel_hash(t, (int64_t)n_seq * T);

    for (int ti = 0; ti < t->n_tens; ti++) {
        const train_tensor *tt = &t->tens[ti];
        const int n_try = tt->n < 24 ? (int)tt->n : 24;
        for (int k = 0; k < n_try; k++) {
            size_t j;
            float *w, old;
            double lp, lm, fd, an, err;
            uint64_t sp, sm;
            rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
            j = tt->n < 24 ? (size_t)k : (size_t)(rs >> 33) % tt->n;
            w = t->params + tt->off + j;
            old = *w;
            *w = (float)(old + eps);
            lp = objective(t, tok, n_seq, T);
            sp = sel_hash(t, (int64_t)n_seq * T);
            *w = (float)(old - eps);
            lm = objective(t, tok, n_seq, T);
            sm = sel_hash(t, (int64_t)n_seq * T);
            *w = old;
            if (sp != base_sel || sm != base_sel) {
                skipped++;
                continue;
            }
            fd = (lp - lm) / (2 * eps);
            an = t->grads[tt->off + j];
            err = fabs(fd - an);
            checked++;
            if (err > 2e-3 + 2e-2 * fabs(an)) {
                failed++;
                if (failed < 8)
                    fprintf(stderr, "grad %s[%zu]: fd %.6g analytic %.6g\n", tt->name, j, fd,
                            an);
            }
            if (err > worst)
                worst = err;
        }
    }
    moe_trainer_free(t);
    if (getenv("MOE_TRAIN_VERBOSE"))
        fprintf(stderr, "grad check: %d checked, %d skipped, worst |fd - analytic| %.3g\n",
                checked, skipped, worst);
    ck_assert_msg(failed == 0, "%d of %d gradient coordinates off (worst %.3g)", failed,
                  checked, worst);
    ck_assert_msg(skipped * 4 <= checked + skipped, "too many skipped: %d of %d", skipped,
                  checked + skipped);
    ck_assert_int_gt(checked, 100);
}

START_TEST(test_grad_dense)
{
    moe_train_config c = small_config(0);
    c.tied_output = false;
    grad_check(c, 0, 0, 0);
}
END_TEST

START_TEST(test_grad_moe)
{
    grad_check(small_config(4), 0.5f, 0.1f, 0.5f);
}
END_TEST

START_TEST(test_grad_moe_plain_weights)
{
    moe_train_config c = small_config(4);
    c.norm_topk = false;
    c.n_expert_used = 3;
    grad_check(c, 0.5f, 0.1f, 0.5f);
}
END_TEST

START_TEST(test_grad_emoe)
{
    moe_train_config c = small_config(4);
    c.unweighted = true;
    grad_check(c, 0.5f, 0.1f, 0.5f);
}
END_TEST

/* ---- training behaviour ------------------------------------------------------- */

/* a few hundred tokens memorised: cross-entropy below 0.5 nats in 300
 * steps of 4 windows of 64 tokens (from ~5.8 = ln 320); about a second */
START_TEST(test_overfit)
{
    moe_train_config c = small_config(4);
    moe_train_params p = moe_train_default_params();
    moe_train_stats st;
    moe_trainer *t;
    int32_t n, *ids;
    const int32_t T = 64, n_seq = 4;
    int32_t batch[4 * 65];
    c.n_embd = 48;
    t = make(&c);
    p.lr = 1e-2f;
    p.lr_min = 1e-3f;
    p.warmup = 10;
    p.n_steps = 300;
    p.weight_decay = 0.0f;
    ck_assert_int_eq(moe_trainer_set_params(t, &p), MOE_OK);
    ids = corpus_tokens(t, &n);
    ck_assert_int_ge(n, 250); /* a few hundred tokens */
    for (int step = 0; step < 300; step++) {
        for (int s = 0; s < n_seq; s++) {
            int32_t start = (int32_t)(((int64_t)step * 7 + s * 31) % (n - T - 1));
            memcpy(batch + s * (T + 1), ids + start, (size_t)(T + 1) * sizeof(int32_t));
        }
        ck_assert_int_eq(moe_trainer_step(t, batch, n_seq, T, &st), MOE_OK);
    }
    ck_assert_int_eq(st.step, 300);
    if (getenv("MOE_TRAIN_VERBOSE"))
        fprintf(stderr, "overfit: %d tokens, cross-entropy %.3f after 300 steps\n", n, st.ce);
    ck_assert_msg(st.ce < 0.5, "cross-entropy %.3f after 300 steps", st.ce);
    free(ids);
    moe_trainer_free(t);
}
END_TEST

static void train_steps(moe_trainer *t, const int32_t *ids, int32_t n, int steps, int first,
                        moe_train_stats *st)
{
    const int32_t T = 16;
    int32_t batch[2 * 17];
    for (int k = first; k < first + steps; k++) {
        for (int s = 0; s < 2; s++)
            memcpy(batch + s * (T + 1), ids + (k * 5 + s * 13) % (n - T - 1),
                   (size_t)(T + 1) * sizeof(int32_t));
        ck_assert_int_eq(moe_trainer_step(t, batch, 2, T, st), MOE_OK);
    }
}

/* the engine runs a saved checkpoint with the trainer's logits */
START_TEST(test_engine_logits)
{
    for (int variant = 0; variant < 3; variant++) {
        moe_train_config c = small_config(variant == 1 ? 0 : 4);
        moe_train_stats st;
        moe_trainer *t;
        moe_model *m = NULL;
        moe_ctx *ctx = NULL;
        char path[512];
        int32_t n, *ids;
        const int32_t L = 24;
        float *lt;
        double worst = 0.0;
        c.unweighted = variant == 2;
        c.tied_output = variant != 1;
        t = make(&c);
        ids = corpus_tokens(t, &n);
        train_steps(t, ids, n, 5, 0, &st);
        tu_tmp_path(path, sizeof path, "logits.gguf");
        ck_assert_int_eq(moe_trainer_save(t, path, 0, false), MOE_OK);
        lt = malloc((size_t)L * (size_t)t->n_vocab * sizeof *lt);
        ck_assert_int_eq(moe_trainer_logits(t, ids, L, lt), MOE_OK);
        ck_assert_msg(moe_model_load(path, NULL, &m) == MOE_OK, "%s", moe_last_error());
        ck_assert_int_eq(moe_ctx_new(m, NULL, &ctx), MOE_OK);
        ck_assert_int_eq(moe_ctx_decode(ctx, ids, L, true), MOE_OK);
        for (int32_t i = 0; i < L; i++) {
            const float *le = moe_ctx_logits(ctx, i);
            for (int32_t v = 0; v < t->n_vocab; v++) {
                double d = fabs((double)le[v] - lt[(size_t)i * t->n_vocab + v]);
                worst = d > worst ? d : worst;
            }
        }
        ck_assert_msg(worst < 1e-4, "variant %d: engine and trainer logits differ by %.3g",
                      variant, worst);
        /* a trainer loaded from the checkpoint gives the same logits again */
        {
            moe_trainer *t2 = NULL;
            float *l2 = malloc((size_t)L * (size_t)t->n_vocab * sizeof *l2);
            ck_assert_int_eq(moe_trainer_load(path, &t2), MOE_OK);
            ck_assert_int_eq(moe_trainer_logits(t2, ids, L, l2), MOE_OK);
            ck_assert_int_eq(memcmp(l2, lt, (size_t)L * (size_t)t->n_vocab * sizeof *l2), 0);
            ck_assert_int_eq(moe_trainer_step_count(t2), 5);
            moe_trainer_free(t2);
            free(l2);
        }
        moe_ctx_free(ctx);
        moe_model_free(m);
        free(lt);
        free(ids);
        moe_trainer_free(t);
    }
}
END_TEST

/* 3 + 3 steps with a checkpoint between equal 6 steps, bit for bit */
START_TEST(test_resume)
{
    moe_train_config c = small_config(4);
    moe_train_params p = moe_train_default_params();
    moe_train_stats a, b;
    moe_trainer *t1, *t2, *t3 = NULL;
    char path[512];
    int32_t n, *ids;
    p.warmup = 2;
    p.n_steps = 6;
    p.n_threads = 1;
    t1 = make(&c);
    t2 = make(&c);
    ck_assert_int_eq(moe_trainer_set_params(t1, &p), MOE_OK);
    ck_assert_int_eq(moe_trainer_set_params(t2, &p), MOE_OK);
    ids = corpus_tokens(t1, &n);
    train_steps(t1, ids, n, 6, 0, &a);
    train_steps(t2, ids, n, 3, 0, &b);
    tu_tmp_path(path, sizeof path, "resume.gguf");
    ck_assert_int_eq(moe_trainer_save(t2, path, 0, true), MOE_OK);
    moe_trainer_free(t2);
    ck_assert_msg(moe_trainer_load(path, &t3) == MOE_OK, "%s", moe_last_error());
    ck_assert_int_eq(t3->par.n_steps, 6);
    ck_assert_int_eq(t3->par.warmup, 2);
    t3->par.n_threads = 1;
    train_steps(t3, ids, n, 3, 3, &b);
    ck_assert_int_eq(b.step, 6);
    ck_assert_int_eq(b.tokens, a.tokens);
    ck_assert_int_eq(t1->n_params, t3->n_params);
    ck_assert_int_eq(memcmp(t1->params, t3->params, t1->n_params * sizeof(float)), 0);
    free(ids);
    moe_trainer_free(t1);
    moe_trainer_free(t3);
}
END_TEST

/* training one expert changes that expert only */
START_TEST(test_freeze)
{
    moe_train_config c = small_config(4);
    moe_train_stats st;
    moe_trainer *t = make(&c);
    float *before;
    int32_t n, *ids;
    size_t changed_in = 0, changed_out = 0;
    const train_layer *L;
    size_t per, lo;
    ck_assert_int_eq(moe_trainer_set_trainable(t, "blk.1.expert.3"), MOE_OK);
    per = t->tens[t->layers[1].gate_exps].n / 4;
    ck_assert_int_eq(moe_trainer_n_params(t, true), (int64_t)(3 * per));
    ck_assert_int_ne(moe_trainer_set_trainable(t, "blk.9.expert.0"), MOE_OK);
    ck_assert_int_ne(moe_trainer_set_trainable(t, "blk.1.expert.4"), MOE_OK);
    ck_assert_int_ne(moe_trainer_set_trainable(t, "blk.1.wings"), MOE_OK);
    ck_assert_int_eq(moe_trainer_n_params(t, true), (int64_t)(3 * per)); /* unchanged */
    ck_assert_int_eq(moe_trainer_set_trainable(t, "blk.1.expert.3"), MOE_OK);
    before = malloc(t->n_params * sizeof *before);
    memcpy(before, t->params, t->n_params * sizeof *before);
    ids = corpus_tokens(t, &n);
    train_steps(t, ids, n, 3, 0, &st);
    L = &t->layers[1];
    for (size_t i = 0; i < t->n_params; i++) {
        bool in = false;
        int list[] = {L->gate_exps, L->up_exps, L->down_exps};
        for (int k = 0; k < 3; k++) {
            lo = t->tens[list[k]].off + 3 * per;
            in |= i >= lo && i < lo + per;
        }
        if (t->params[i] != before[i])
            *(in ? &changed_in : &changed_out) += 1;
    }
    ck_assert_uint_eq(changed_out, 0);
    ck_assert_uint_gt(changed_in, per); /* the expert was routed to and moved */
    /* the whole-layer and wildcard forms */
    ck_assert_int_eq(moe_trainer_set_trainable(t, "blk.*.router,embd"), MOE_OK);
    ck_assert_int_eq(moe_trainer_n_params(t, true),
                     (int64_t)(t->tens[t->t_embd].n + 2 * t->tens[L->gate_inp].n));
    free(before);
    free(ids);
    moe_trainer_free(t);
}
END_TEST

/* grow: a fifth expert, trained alone, saved, run by the engine */
START_TEST(test_grow)
{
    moe_train_config c = small_config(4);
    moe_train_stats st;
    moe_trainer *t = make(&c);
    moe_model *m = NULL;
    moe_model_info info;
    char path[512];
    int32_t n, *ids;
    float *before;
    ids = corpus_tokens(t, &n);
    train_steps(t, ids, n, 2, 0, &st);
    ck_assert_int_ne(moe_trainer_grow(t, 9, 0.1f, 1), MOE_OK);
    ck_assert_int_eq(moe_trainer_grow(t, 1, 0.1f, 1), MOE_OK);
    ck_assert_int_eq(t->cfg.n_expert, 5);
    {
        const size_t per = t->tens[t->layers[0].gate_exps].n / 5;
        ck_assert_int_eq(moe_trainer_n_params(t, true), (int64_t)(2 * (3 * per + 16)));
        /* the new expert starts near its source */
        const float *w = t->params + t->tens[t->layers[0].up_exps].off;
        double d = 0, s = 0;
        for (size_t i = 0; i < per; i++) {
            d += fabs(w[4 * per + i] - w[1 * per + i]);
            s += fabs(w[1 * per + i]);
        }
        ck_assert(d > 0 && d < 0.3 * s);
    }
    before = malloc(t->n_params * sizeof *before);
    memcpy(before, t->params, t->n_params * sizeof *before);
    train_steps(t, ids, n, 2, 2, &st);
    ck_assert_int_eq(memcmp(before, t->params, (size_t)t->tens[t->layers[0].gate_inp].off * 4), 0);
    tu_tmp_path(path, sizeof path, "grow.gguf");
    ck_assert_int_eq(moe_trainer_save(t, path, 0, false), MOE_OK);
    ck_assert_msg(moe_model_load(path, NULL, &m) == MOE_OK, "%s", moe_last_error());
    moe_model_get_info(m, &info);
    ck_assert_int_eq(info.n_expert, 5);
    moe_model_free(m);
    free(before);
    free(ids);
    moe_trainer_free(t);
}
END_TEST

/* m2mKD: a student expert learns a teacher's dense FFN block */
START_TEST(test_distill)
{
    moe_train_config ct = small_config(0), cs = small_config(4);
    moe_train_params p = moe_train_default_params();
    moe_trainer *teacher, *student;
    moe_train_stats st;
    int32_t n, *ids;
    const int32_t L = 32;
    float *x, *y;
    double first = 0, last = 0;
    ct.seed = 3;
    ct.init_std = 0.2f;
    teacher = make(&ct);
    student = make(&cs);
    p.lr = 1e-2f;
    p.warmup = 1;
    p.n_steps = 60;
    p.weight_decay = 0;
    ck_assert_int_eq(moe_trainer_set_params(student, &p), MOE_OK);
    ids = corpus_tokens(teacher, &n);
    x = malloc((size_t)L * 16 * sizeof *x);
    y = malloc((size_t)L * 16 * sizeof *y);
    ck_assert_int_eq(moe_trainer_module_io(teacher, ids, L, 1, x, y), MOE_OK);
    for (int k = 0; k < 60; k++) {
        ck_assert_int_eq(moe_trainer_distill_step(student, 0, 2, x, y, L, &st), MOE_OK);
        if (k == 0)
            first = st.loss;
        last = st.loss;
    }
    ck_assert_msg(last < 0.3 * first, "distillation MSE %.4g -> %.4g", first, last);
    ck_assert_int_ne(moe_trainer_distill_step(student, 0, 4, x, y, L, &st), MOE_OK);
    free(x);
    free(y);
    free(ids);
    moe_trainer_free(teacher);
    moe_trainer_free(student);
}
END_TEST

/* quantized export loads and stays close */
START_TEST(test_save_types)
{
    moe_train_config c = small_config(4);
    moe_trainer *t;
    moe_model *m = NULL;
    char path[512];
    c.n_embd = 32;
    c.n_ff_exp = 32;
    t = make(&c);
    tu_tmp_path(path, sizeof path, "q8.gguf");
    ck_assert_int_eq(moe_trainer_save(t, path, 8, false), MOE_OK);
    ck_assert_msg(moe_model_load(path, NULL, &m) == MOE_OK, "%s", moe_last_error());
    {
        moe_model_info info;
        moe_model_get_info(m, &info);
        ck_assert_str_eq(info.ftype, "q8_0");
    }
    moe_model_free(m);
    ck_assert_int_ne(moe_trainer_save(t, path, 2, false), MOE_OK);
    moe_trainer_free(t);
}
END_TEST

/* a real pretrained model: the trainer's forward equals the engine's (which
 * matches the reference runtime) on stories260K */
START_TEST(test_real_model_logits)
{
    char path[512];
    moe_trainer *t = NULL;
    moe_model *m = NULL;
    moe_ctx *ctx = NULL;
    int32_t ids[40];
    float *lt;
    double worst = 0.0;
    if (!tu_shared(path, sizeof path, "models/real/stories260K.gguf", "test_real_model_logits"))
        return;
    ck_assert_msg(moe_trainer_load(path, &t) == MOE_OK, "%s", moe_last_error());
    ck_assert_msg(moe_model_load(path, NULL, &m) == MOE_OK, "%s", moe_last_error());
    ck_assert_int_eq(moe_tokenize(m, "Once upon a time, there was a little girl named Lily.", 52,
                                  ids, 40, true, false) > 10, 1);
    {
        const int32_t n = moe_tokenize(m, "Once upon a time, there was a little girl named Lily.",
                                       52, ids, 40, true, false);
        lt = malloc((size_t)n * 512 * sizeof *lt);
        ck_assert_int_eq(moe_trainer_logits(t, ids, n, lt), MOE_OK);
        ck_assert_int_eq(moe_ctx_new(m, NULL, &ctx), MOE_OK);
        ck_assert_int_eq(moe_ctx_decode(ctx, ids, n, true), MOE_OK);
        for (int32_t i = 0; i < n; i++)
            for (int32_t v = 0; v < 512; v++) {
                double d = fabs((double)moe_ctx_logits(ctx, i)[v] - lt[(size_t)i * 512 + v]);
                worst = d > worst ? d : worst;
            }
    }
    ck_assert_msg(worst < 1e-3, "stories260K: trainer and engine logits differ by %.3g", worst);
    free(lt);
    moe_ctx_free(ctx);
    moe_model_free(m);
    moe_trainer_free(t);
}
END_TEST

START_TEST(test_bad_args)
{
    moe_train_config c = small_config(4);
    moe_trainer *t = NULL;
    moe_train_params p = moe_train_default_params();
    int32_t bad[5] = {1, 2, 99999, 3, 4};
    c.n_head = 3;
    ck_assert_int_eq(moe_trainer_new(&c, vocab_path(), &t), MOE_ERR_INVALID_ARG);
    ck_assert_ptr_null(t);
    c = small_config(4);
    c.n_expert_used = 5;
    ck_assert_int_eq(moe_trainer_new(&c, vocab_path(), &t), MOE_ERR_INVALID_ARG);
    c = small_config(4);
    ck_assert_int_ne(moe_trainer_new(&c, "/nonexistent/vocab.gguf", &t), MOE_OK);
    t = make(&c);
    ck_assert_int_eq(moe_trainer_step(t, bad, 1, 4, NULL), MOE_ERR_INVALID_ARG);
    p.lr = -1;
    ck_assert_int_eq(moe_trainer_set_params(t, &p), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_trainer_grow(t, 0, -1.0f, 1), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(moe_trainer_save(t, "/nonexistent-dir/x.gguf", 0, false) == MOE_OK, 0);
    moe_trainer_free(t);
    moe_trainer_free(NULL);
    {
        /* architectures with biases / shared experts are refused */
        char path[512];
        if (tu_shared(path, sizeof path, "models/synthetic/tiny-qwen2moe.f32.gguf",
                      "test_bad_args")) {
            t = NULL;
            ck_assert_int_eq(moe_trainer_load(path, &t), MOE_ERR_UNSUPPORTED);
            ck_assert_ptr_null(t);
        }
    }
}
END_TEST

/* the BPE vocabulary: loads in the engine's tokenizer, round-trips bytes,
 * compresses, and merges what is frequent */
START_TEST(test_bpe)
{
    gguf_ctx *g = NULL;
    tok_vocab *v = NULL;
    int32_t ids[1024], n;
    char back[2048];
    const char *probe = "And God said, Let there be light: \xc3\xa9 and there was light.\n";
    ck_assert_int_eq(gguf_open(vocab_path(), &g), MOE_OK);
    ck_assert_int_eq(tok_load(g, &v), MOE_OK);
    ck_assert_int_eq(tok_n_vocab(v), 320);
    ck_assert_int_eq(tok_bos(v), 0);
    n = tok_encode(v, corpus, strlen(corpus), false, false, ids, 1024);
    ck_assert_int_gt(n, 0);
    ck_assert_int_lt(n, (int32_t)strlen(corpus) / 2);
    ck_assert_uint_eq(tok_decode(v, ids, (size_t)n, false, back, sizeof back), strlen(corpus));
    ck_assert_str_eq(back, corpus);
    n = tok_encode(v, probe, strlen(probe), false, false, ids, 1024);
    tok_decode(v, ids, (size_t)n, false, back, sizeof back);
    ck_assert_str_eq(back, probe);
    /* " God" is frequent enough to be one token */
    n = tok_encode(v, " God", 4, false, false, ids, 1024);
    ck_assert_int_eq(n, 1);
    tok_free(v);
    gguf_close(g);
    ck_assert_int_ne(moe_bpe_train(corpus, strlen(corpus), 100, "/tmp/x.gguf", NULL, NULL),
                     MOE_OK);
    /* hostile text: invalid UTF-8, NUL bytes, nothing at all */
    {
        static const char junk[] = "\xff\xfe abc \xc3 \x00\x00 abc abc \xe2\x82 abc\n\n\n";
        char jp[512];
        tu_tmp_path(jp, sizeof jp, "junk-vocab.gguf");
        ck_assert_int_eq(moe_bpe_train(junk, sizeof junk - 1, 300, jp, NULL, NULL), MOE_OK);
        ck_assert_int_eq(gguf_open(jp, &g), MOE_OK);
        ck_assert_int_eq(tok_load(g, &v), MOE_OK);
        ck_assert_int_ge(tok_n_vocab(v), 257);
        tok_free(v);
        gguf_close(g);
        ck_assert_int_eq(moe_bpe_train("", 0, 300, jp, NULL, NULL), MOE_OK);
    }
}
END_TEST

Suite *train_suite(void);
Suite *train_suite(void)
{
    Suite *s = suite_create("train");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_bpe);
    tcase_add_test(tc, test_grad_dense);
    tcase_add_test(tc, test_grad_moe);
    tcase_add_test(tc, test_grad_moe_plain_weights);
    tcase_add_test(tc, test_grad_emoe);
    tcase_add_test(tc, test_overfit);
    tcase_add_test(tc, test_engine_logits);
    tcase_add_test(tc, test_resume);
    tcase_add_test(tc, test_freeze);
    tcase_add_test(tc, test_grow);
    tcase_add_test(tc, test_distill);
    tcase_add_test(tc, test_save_types);
    tcase_add_test(tc, test_real_model_logits);
    tcase_add_test(tc, test_bad_args);
    suite_add_tcase(s, tc);
    return s;
}
