/*
 * check_emoe.c - EMoE conversion: balanced k-means gives exactly balanced
 * clusters and finds planted clusters; the expert layout is a bijection
 * onto the rows with padding at block ends; the converted stories260K
 * loads as an MoE whose logits with K = N equal the dense model's (all
 * layers, layer subsets, uneven and even expert sizes); its tensors are the
 * original rows permuted, router rows the block means; K < N routes K
 * experts with weight 1; bad calls fail cleanly.
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
#include "quant.h"
#include "testutil.h"

#define STORIES "models/real/stories260K.gguf"
#define MIXTRAL "models/synthetic/tiny-mixtral.f32.gguf"
#define DENSE "models/synthetic/tiny-dense-llama.f32.gguf"

static const char em_text[] =
    "Once upon a time, there was a little girl named Lily. She loved to play "
    "outside in the sun. One day, she saw a big red ball in the park. She ran "
    "to it and kicked it very high. Her friend Tom laughed and said, \"Can I "
    "play too?\" Lily smiled and they played together all day.";

/* xorshift for test data */
static uint64_t em_rng = 88172645463325252ull;
static float em_randf(void)
{
    em_rng ^= em_rng << 13;
    em_rng ^= em_rng >> 7;
    em_rng ^= em_rng << 17;
    return (float)((em_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static void em_check_balanced(const int32_t *assign, int64_t n, int32_t nc)
{
    int64_t *cnt = calloc((size_t)nc, sizeof *cnt);
    int64_t lo = n / nc, big = 0;
    ck_assert_ptr_nonnull(cnt);
    for (int64_t i = 0; i < n; i++) {
        ck_assert_int_ge(assign[i], 0);
        ck_assert_int_lt(assign[i], nc);
        cnt[assign[i]]++;
    }
    for (int32_t c = 0; c < nc; c++) {
        ck_assert_msg(cnt[c] == lo || cnt[c] == lo + 1, "cluster %d has %lld rows (want %lld/%lld)",
                      c, (long long)cnt[c], (long long)lo, (long long)lo + 1);
        big += cnt[c] == lo + 1;
    }
    ck_assert_int_eq(big, n % nc);
    free(cnt);
}

START_TEST(test_cluster_balanced)
{
    static const struct {
        int64_t n, dim;
        int32_t nc;
    } cases[] = {{172, 64, 8}, {172, 64, 16}, {64, 16, 8}, {100, 8, 7}, {37, 5, 37}, {10, 3, 1}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int64_t n = cases[k].n, dim = cases[k].dim;
        float *rows = malloc((size_t)(n * dim) * sizeof *rows);
        int32_t *a = malloc((size_t)n * sizeof *a), *b = malloc((size_t)n * sizeof *b);
        double cos;
        ck_assert_ptr_nonnull(rows);
        for (int64_t i = 0; i < n * dim; i++)
            rows[i] = em_randf();
        ck_assert_int_eq(moe_emoe_cluster(rows, n, dim, cases[k].nc, 7, 30, a, &cos), MOE_OK);
        em_check_balanced(a, n, cases[k].nc);
        ck_assert(cos > 0.0 && cos <= 1.0 + 1e-9);
        /* clusters numbered by their lowest row: row 0 is in cluster 0 */
        ck_assert_int_eq(a[0], 0);
        /* deterministic for a seed */
        ck_assert_int_eq(moe_emoe_cluster(rows, n, dim, cases[k].nc, 7, 30, b, NULL), MOE_OK);
        ck_assert(memcmp(a, b, (size_t)n * sizeof *a) == 0);
        free(rows);
        free(a);
        free(b);
    }
}
END_TEST

/* 4 planted directions, 16 noisy rows each, shuffled: recovered exactly. */
START_TEST(test_cluster_planted)
{
    enum { NC = 4, PER = 16, N = NC * PER, DIM = 32 };
    static float centers[NC][DIM], rows[N][DIM];
    int32_t truth[N], assign[N], map[NC];
    for (int c = 0; c < NC; c++)
        for (int d = 0; d < DIM; d++)
            centers[c][d] = em_randf();
    for (int i = 0; i < N; i++) {
        int c = (i * 7) % NC; /* interleaved, not in blocks */
        float scale = 0.5f + (float)(i % 5); /* norms differ: keys are normalised */
        truth[i] = c;
        for (int d = 0; d < DIM; d++)
            rows[i][d] = scale * (centers[c][d] + 0.05f * em_randf());
    }
    ck_assert_int_eq(moe_emoe_cluster(&rows[0][0], N, DIM, NC, 3, 30, assign, NULL), MOE_OK);
    for (int c = 0; c < NC; c++)
        map[c] = -1;
    for (int i = 0; i < N; i++) {
        if (map[truth[i]] < 0)
            map[truth[i]] = assign[i];
        ck_assert_msg(map[truth[i]] == assign[i], "row %d: planted cluster split", i);
    }
}
END_TEST

START_TEST(test_layout_bijection)
{
    enum { N = 172, NC = 8 };
    const int64_t per = (N + NC - 1) / NC; /* 22 */
    float rows[N * 4];
    int32_t assign[N], perm[NC * 22], seen[N];
    int64_t pads = 0;
    for (int i = 0; i < N * 4; i++)
        rows[i] = em_randf();
    ck_assert_int_eq(moe_emoe_cluster(rows, N, 4, NC, 1, 20, assign, NULL), MOE_OK);
    ck_assert_int_eq(moe_emoe_layout(assign, N, NC, per, perm), MOE_OK);
    memset(seen, 0, sizeof seen);
    for (int32_t c = 0; c < NC; c++) {
        bool in_pad = false;
        int32_t prev = -1;
        for (int64_t j = 0; j < per; j++) {
            int32_t r = perm[c * per + j];
            if (r < 0) {
                in_pad = true;
                pads++;
                continue;
            }
            ck_assert_msg(!in_pad, "expert %d: a row after padding", c);
            ck_assert_int_lt(r, N);
            ck_assert_int_eq(assign[r], c);
            ck_assert_int_gt(r, prev); /* ascending within a block */
            prev = r;
            seen[r]++;
        }
    }
    for (int i = 0; i < N; i++)
        ck_assert_int_eq(seen[i], 1);
    ck_assert_int_eq(pads, NC * per - N);
    /* a block that is too small fails */
    ck_assert_int_eq(moe_emoe_layout(assign, N, NC, per - 1, perm), MOE_ERR_INVALID_ARG);
}
END_TEST

/* Logits of all positions of em_text under model path, into out [n][n_vocab]. */
static int32_t em_logits(const char *path, int32_t top_k, float **out, int32_t *n_vocab)
{
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_model_info info;
    int32_t toks[256], n;
    ck_assert_int_eq(moe_model_load(path, NULL, &m), MOE_OK);
    moe_model_get_info(m, &info);
    n = moe_tokenize(m, em_text, strlen(em_text), toks, 256, true, false);
    ck_assert_int_gt(n, 40);
    cp.n_ctx = 256;
    cp.n_threads = 1;
    ck_assert_int_eq(moe_ctx_new(m, &cp, &c), MOE_OK);
    if (top_k > 0)
        ck_assert_int_eq(moe_route_set_top_k(c, -1, top_k), MOE_OK);
    ck_assert_int_eq(moe_ctx_decode(c, toks, n, true), MOE_OK);
    *out = malloc((size_t)n * (size_t)info.n_vocab * sizeof(float));
    ck_assert_ptr_nonnull(*out);
    for (int32_t i = 0; i < n; i++)
        memcpy(*out + (size_t)i * info.n_vocab, moe_ctx_logits(c, i),
               (size_t)info.n_vocab * sizeof(float));
    *n_vocab = info.n_vocab;
    moe_ctx_free(c);
    moe_model_free(m);
    return n;
}

/* Max and mean |a - b| and whether every row's argmax agrees. */
static double em_max_diff(const float *a, const float *b, int32_t n, int32_t nv, double *mean,
                          bool *same_argmax)
{
    double mx = 0.0, sum = 0.0;
    *same_argmax = true;
    for (int32_t t = 0; t < n; t++) {
        int32_t ia = 0, ib = 0;
        for (int32_t v = 0; v < nv; v++) {
            size_t i = (size_t)t * (size_t)nv + (size_t)v;
            double d = fabs((double)a[i] - b[i]);
            mx = d > mx ? d : mx;
            sum += d;
            ia = a[i] > a[(size_t)t * nv + ia] ? v : ia;
            ib = b[i] > b[(size_t)t * nv + ib] ? v : ib;
        }
        *same_argmax &= ia == ib;
    }
    *mean = sum / ((double)n * nv);
    return mx;
}

/* Convert stories260K with K = N and compare with the dense logits. */
static void em_exact_case(const char *dense, int32_t nexp, const bool *layers, int32_t n_conv_want)
{
    char out[1024];
    moe_emoe_params p = moe_emoe_default_params();
    moe_emoe_report rep;
    moe_model *m;
    moe_model_info info;
    float *ld, *le;
    int32_t nv, n1, n2;
    double diff, mean;
    bool same;
    tu_tmp_path(out, sizeof out, "emoe-exact.gguf");
    p.n_expert = nexp;
    p.n_expert_used = nexp;
    p.layers = layers;
    p.n_layers = 5;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, &rep), MOE_OK);
    ck_assert_int_eq(rep.n_converted, n_conv_want);
    ck_assert_int_eq(rep.n_ff, 172);
    ck_assert_int_eq(rep.n_ff_exp, (172 + nexp - 1) / nexp);
    ck_assert_int_eq(rep.n_padding, rep.n_ff_exp * nexp - 172);
    ck_assert_str_eq(rep.down_type, "f32");
    ck_assert_int_eq(moe_model_load(out, NULL, &m), MOE_OK);
    moe_model_get_info(m, &info);
    ck_assert_int_eq(info.n_expert, nexp);
    ck_assert_int_eq(info.n_expert_used, nexp);
    ck_assert_int_eq(info.n_ff_exp, rep.n_ff_exp);
    moe_model_free(m);
    n1 = em_logits(dense, 0, &ld, &nv);
    n2 = em_logits(out, 0, &le, &nv);
    ck_assert_int_eq(n1, n2);
    /* The issue asks for 1e-5. The down projections still give the dense
     * bits (forward.c, down_exact_chunk), but the dense swiglu follows the
     * reference runtime (the exponential of the last n_ff % 16 = 12
     * elements of a row from the C library, the rest from its vector
     * form) and the expert rows are other pieces, all taking the vector
     * form. Measured up to 9.54e-6 on logits of about 17 (5 ulps); bit-
     * identical while the dense swiglu used expf throughout. */
    diff = em_max_diff(ld, le, n1, nv, &mean, &same);
    printf("emoe: N = K = %d, %d converted layers: max |logit diff| %.3g, mean %.3g\n", nexp,
           n_conv_want, diff, mean);
    ck_assert_msg(diff <= 1e-5 && same,
                  "N = K = %d: max |logit diff| %g, mean %g, argmax %s", nexp, diff, mean,
                  same ? "same" : "differs");
    free(ld);
    free(le);
}

START_TEST(test_convert_exact_all_layers)
{
    char dense[1024];
    if (!tu_shared(dense, sizeof dense, STORIES, "test_convert_exact_all_layers"))
        return;
    em_exact_case(dense, 8, NULL, 5);  /* 172 = 4*22 + 4*21: uneven */
    em_exact_case(dense, 4, NULL, 5);  /* 172 = 4*43: even */
    em_exact_case(dense, 16, NULL, 5); /* 172 = 12*11 + 4*10 */
}
END_TEST

START_TEST(test_convert_exact_layer_subsets)
{
    char dense[1024];
    static const bool only_1_3[5] = {false, true, false, true, false};
    static const bool only_0[5] = {true, false, false, false, false};
    static const bool only_4[5] = {false, false, false, false, true};
    if (!tu_shared(dense, sizeof dense, STORIES, "test_convert_exact_layer_subsets"))
        return;
    em_exact_case(dense, 8, only_1_3, 2);
    em_exact_case(dense, 8, only_0, 1);
    em_exact_case(dense, 5, only_4, 1);
}
END_TEST

/* The written tensors: every original gate/up row exactly once in the
 * expert blocks, padding rows zero, down columns following the same
 * permutation, router rows = mean of the block's real gate rows, and the
 * unconverted layers' dense tensors untouched. */
START_TEST(test_convert_tensors)
{
    char dense[1024], out[1024];
    static const bool only_2[5] = {false, false, true, false, false};
    moe_emoe_params p = moe_emoe_default_params();
    gguf_ctx *gd = NULL, *ge = NULL;
    const gguf_tensor_info *tg, *tu, *td, *eg, *eu, *ed, *er, *t;
    const int64_t n_embd = 64, n_ff = 172, ne = 8, nfe = 22;
    const float *G, *U, *D, *EG, *EU, *ED, *ER;
    int64_t found = 0;
    if (!tu_shared(dense, sizeof dense, STORIES, "test_convert_tensors"))
        return;
    tu_tmp_path(out, sizeof out, "emoe-tensors.gguf");
    p.n_expert = (int32_t)ne;
    p.n_expert_used = 3;
    p.layers = only_2;
    p.n_layers = 5;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_OK);
    ck_assert_int_eq(gguf_open(dense, &gd), MOE_OK);
    ck_assert_int_eq(gguf_open(out, &ge), MOE_OK);
    ck_assert_str_eq(gguf_get_str(ge, "moestudio.gating"), "emoe-unweighted");
    tg = gguf_find_tensor(gd, "blk.2.ffn_gate.weight");
    tu = gguf_find_tensor(gd, "blk.2.ffn_up.weight");
    td = gguf_find_tensor(gd, "blk.2.ffn_down.weight");
    eg = gguf_find_tensor(ge, "blk.2.ffn_gate_exps.weight");
    eu = gguf_find_tensor(ge, "blk.2.ffn_up_exps.weight");
    ed = gguf_find_tensor(ge, "blk.2.ffn_down_exps.weight");
    er = gguf_find_tensor(ge, "blk.2.ffn_gate_inp.weight");
    ck_assert(tg && tu && td && eg && eu && ed && er);
    ck_assert_ptr_null(gguf_find_tensor(ge, "blk.2.ffn_gate.weight"));
    ck_assert_ptr_null(gguf_find_tensor(ge, "blk.2.ffn_down.weight"));
    ck_assert_int_eq(eg->n_dims, 3);
    ck_assert(eg->ne[0] == n_embd && eg->ne[1] == nfe && eg->ne[2] == ne);
    ck_assert(ed->ne[0] == nfe && ed->ne[1] == n_embd && ed->ne[2] == ne);
    ck_assert(er->ne[0] == n_embd && er->ne[1] == ne && er->type == MOE_TYPE_F32);
    G = tg->data;
    U = tu->data;
    D = td->data;
    EG = eg->data;
    EU = eu->data;
    ED = ed->data;
    ER = er->data;
    for (int64_t e = 0; e < ne; e++) {
        double mean[64] = {0};
        int64_t real = 0;
        for (int64_t j = 0; j < nfe; j++) {
            const float *row = EG + (e * nfe + j) * n_embd;
            int64_t src = -1;
            for (int64_t i = 0; i < n_ff && src < 0; i++)
                if (memcmp(row, G + i * n_embd, (size_t)n_embd * sizeof(float)) == 0)
                    src = i;
            if (src < 0) {
                /* padding: zero gate and up rows, zero down column */
                for (int64_t d = 0; d < n_embd; d++) {
                    ck_assert(row[d] == 0.0f);
                    ck_assert(EU[(e * nfe + j) * n_embd + d] == 0.0f);
                    ck_assert(ED[(e * n_embd + d) * nfe + j] == 0.0f);
                }
                continue;
            }
            found++;
            real++;
            ck_assert(memcmp(EU + (e * nfe + j) * n_embd, U + src * n_embd,
                             (size_t)n_embd * sizeof(float)) == 0);
            for (int64_t d = 0; d < n_embd; d++) {
                ck_assert(ED[(e * n_embd + d) * nfe + j] == D[d * n_ff + src]);
                mean[d] += row[d];
            }
        }
        ck_assert(real == 21 || real == 22);
        for (int64_t d = 0; d < n_embd; d++)
            ck_assert_msg(fabs(ER[e * n_embd + d] - mean[d] / (double)real) < 1e-6,
                          "router row %lld differs from its block mean", (long long)e);
    }
    ck_assert_int_eq(found, n_ff);
    /* other layers: dense tensors byte-identical */
    t = gguf_find_tensor(ge, "blk.1.ffn_down.weight");
    ck_assert_ptr_nonnull(t);
    ck_assert(memcmp(t->data, gguf_find_tensor(gd, "blk.1.ffn_down.weight")->data, t->nbytes) == 0);
    ck_assert_ptr_null(gguf_find_tensor(ge, "blk.1.ffn_gate_inp.weight"));
    gguf_close(gd);
    gguf_close(ge);
}
END_TEST

/* K < N: the trace shows K experts per converted layer, all with weight 1,
 * the K largest router logits, and dense layers unrouted. */
START_TEST(test_convert_topk_unweighted)
{
    char dense[1024], out[1024];
    static const bool layers[5] = {true, true, false, true, true};
    moe_emoe_params p = moe_emoe_default_params();
    moe_model *m;
    moe_ctx *c;
    moe_ctx_params cp = moe_ctx_default_params();
    moe_trace_params tp = {.on = true};
    moe_trace_dims dims;
    int32_t toks[256], n;
    if (!tu_shared(dense, sizeof dense, STORIES, "test_convert_topk_unweighted"))
        return;
    tu_tmp_path(out, sizeof out, "emoe-topk.gguf");
    p.n_expert = 8;
    p.n_expert_used = 2;
    p.layers = layers;
    p.n_layers = 5;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_OK);
    ck_assert_int_eq(moe_model_load(out, NULL, &m), MOE_OK);
    cp.n_ctx = 256;
    cp.n_threads = 1;
    ck_assert_int_eq(moe_ctx_new(m, &cp, &c), MOE_OK);
    ck_assert_int_eq(moe_ctx_set_trace(c, &tp), MOE_OK);
    n = moe_tokenize(m, em_text, strlen(em_text), toks, 256, true, false);
    ck_assert_int_eq(moe_ctx_decode(c, toks, n, false), MOE_OK);
    dims = moe_ctx_trace_dims(c);
    ck_assert_int_eq(moe_ctx_trace_count(c), n);
    for (int32_t i = 0; i < n; i++) {
        const moe_trace_token *t = moe_ctx_trace_get(c, i);
        for (int32_t il = 0; il < 5; il++) {
            const float *lg = t->router_logits + il * dims.n_expert;
            const int32_t *sel = t->sel + il * dims.n_sel;
            ck_assert(t->layer_moe[il] == layers[il]);
            if (!layers[il])
                continue;
            ck_assert(sel[0] >= 0 && sel[1] >= 0 && sel[2] == -1);
            ck_assert(t->sel_w[il * dims.n_sel] == 1.0f && t->sel_w[il * dims.n_sel + 1] == 1.0f);
            for (int32_t e = 0; e < 8; e++)
                if (e != sel[0] && e != sel[1])
                    ck_assert(lg[e] <= lg[sel[1]] && lg[sel[1]] <= lg[sel[0]]);
        }
    }
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

/* tr_rewrite: every 2-D f32 weight whose rows allow it, as q8_0 */
static void *em_q8_tensor(const gguf_tensor_info *t, moe_type *type, void *arg)
{
    (void)arg;
    if (t->n_dims != 2 || t->type != MOE_TYPE_F32 || t->ne[0] % 32 != 0)
        return NULL;
    size_t rb = quant_row_bytes(MOE_TYPE_Q8_0, t->ne[0]);
    char *b = malloc(rb * (size_t)t->ne[1]);
    ck_assert_ptr_nonnull(b);
    for (int64_t r = 0; r < t->ne[1]; r++)
        quant_quantize_row(MOE_TYPE_Q8_0, (const float *)t->data + r * t->ne[0],
                           b + (size_t)r * rb, t->ne[0]);
    *type = MOE_TYPE_Q8_0;
    return b;
}

/* Write src with every 2-D f32 weight whose rows allow it as q8_0. */
static void em_write_q8(const char *src, const char *dst)
{
    tr_rewrite(src, dst, em_q8_tensor, NULL);
}

/* Quantized input (tiny-dense-llama as q8_0, n_ff 128): gate/up rows keep
 * their q8_0 bytes; ffn_down_exps is re-quantized to q8_0 when n_ff_exp is
 * a multiple of 32 (N = 4) and f32 otherwise (N = 8). Logits stay close
 * but not exact: down columns regroup into other q8_0 blocks (N = 4), or
 * its activations are no longer quantized to q8_0 (f32 down, N = 8);
 * measured max |dlogit| 0.12 and 0.10 on logits up to 4.4. */
START_TEST(test_convert_quantized)
{
    char src[1024], q8[1024], out[1024];
    static const int32_t ns[2] = {4, 8};
    if (!tu_shared(src, sizeof src, DENSE, "test_convert_quantized"))
        return;
    tu_tmp_path(q8, sizeof q8, "emoe-dense-q8.gguf");
    tu_tmp_path(out, sizeof out, "emoe-q8-out.gguf");
    em_write_q8(src, q8);
    for (int k = 0; k < 2; k++) {
        moe_emoe_params p = moe_emoe_default_params();
        moe_emoe_report rep;
        gguf_ctx *gd = NULL, *ge = NULL;
        const gguf_tensor_info *tg, *eg, *ed;
        float *ld, *le;
        int32_t nv, n1, n2;
        double mean, diff;
        bool same;
        p.n_expert = ns[k];
        p.n_expert_used = ns[k];
        ck_assert_int_eq(moe_emoe_convert(q8, out, &p, &rep), MOE_OK);
        ck_assert_str_eq(rep.down_type, k == 0 ? "q8_0" : "f32");
        ck_assert_int_eq(gguf_open(q8, &gd), MOE_OK);
        ck_assert_int_eq(gguf_open(out, &ge), MOE_OK);
        tg = gguf_find_tensor(gd, "blk.0.ffn_gate.weight");
        eg = gguf_find_tensor(ge, "blk.0.ffn_gate_exps.weight");
        ed = gguf_find_tensor(ge, "blk.0.ffn_down_exps.weight");
        ck_assert(tg && eg && ed);
        ck_assert(tg->type == MOE_TYPE_Q8_0 && eg->type == MOE_TYPE_Q8_0);
        ck_assert(ed->type == (k == 0 ? MOE_TYPE_Q8_0 : MOE_TYPE_F32));
        /* every source gate row appears among the expert rows, byte for byte */
        {
            const size_t rb = quant_row_bytes(MOE_TYPE_Q8_0, tg->ne[0]);
            for (int64_t i = 0; i < tg->ne[1]; i++) {
                bool found = false;
                for (int64_t j = 0; j < eg->ne[1] * eg->ne[2] && !found; j++)
                    found = memcmp((const char *)tg->data + (size_t)i * rb,
                                   (const char *)eg->data + (size_t)j * rb, rb) == 0;
                ck_assert_msg(found, "gate row %lld lost", (long long)i);
            }
        }
        gguf_close(gd);
        gguf_close(ge);
        n1 = em_logits(q8, 0, &ld, &nv);
        n2 = em_logits(out, 0, &le, &nv);
        ck_assert_int_eq(n1, n2);
        diff = em_max_diff(ld, le, n1, nv, &mean, &same);
        ck_assert_msg(diff < 0.25 && mean < 0.03, "q8_0, N = %d: max |dlogit| %g, mean %g", ns[k],
                      diff, mean);
        free(ld);
        free(le);
    }
}
END_TEST

START_TEST(test_convert_bad_args)
{
    char dense[1024], mix[1024], out[1024];
    moe_emoe_params p = moe_emoe_default_params();
    static const bool none[5] = {false};
    if (!tu_shared(dense, sizeof dense, STORIES, "test_convert_bad_args") ||
        !tu_shared(mix, sizeof mix, MIXTRAL, "test_convert_bad_args"))
        return;
    tu_tmp_path(out, sizeof out, "emoe-bad.gguf");
    p.n_expert = 173; /* > n_ff */
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_ERR_INVALID_ARG);
    p.n_expert = 8;
    p.n_expert_used = 9;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_ERR_INVALID_ARG);
    p.n_expert_used = 0;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_ERR_INVALID_ARG);
    p.n_expert_used = 2;
    ck_assert_int_eq(moe_emoe_convert(mix, out, &p, NULL), MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "experts") != NULL);
    p.layers = none;
    p.n_layers = 5;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_ERR_INVALID_ARG);
    p.n_layers = 4;
    ck_assert_int_eq(moe_emoe_convert(dense, out, &p, NULL), MOE_ERR_INVALID_ARG);
    p.layers = NULL;
    ck_assert_int_eq(moe_emoe_convert("/nonexistent/x.gguf", out, &p, NULL), MOE_ERR_IO);
    ck_assert_int_eq(moe_emoe_cluster(NULL, 4, 4, 2, 1, 1, NULL, NULL), MOE_ERR_INVALID_ARG);
}
END_TEST

Suite *emoe_suite(void);

Suite *emoe_suite(void)
{
    Suite *s = suite_create("emoe");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_cluster_balanced);
    tcase_add_test(tc, test_cluster_planted);
    tcase_add_test(tc, test_layout_bijection);
    tcase_add_test(tc, test_convert_exact_all_layers);
    tcase_add_test(tc, test_convert_exact_layer_subsets);
    tcase_add_test(tc, test_convert_tensors);
    tcase_add_test(tc, test_convert_topk_unweighted);
    tcase_add_test(tc, test_convert_quantized);
    tcase_add_test(tc, test_convert_bad_args);
    suite_add_tcase(s, tc);
    return s;
}
