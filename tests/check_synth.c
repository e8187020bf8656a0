/*
 * check_synth.c - random-weight model files: metadata and tensor layout as
 * the shared reference files have them, a vocabulary SentencePiece can merge
 * into, weight scale, determinism by seed, fallback types, argument errors,
 * cancellation, and that the engine loads and runs the result.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "synth.h"
#include "testutil.h"

/* a quick shape of every architecture */
static const synth_shape small_granite = {
    "t-granite", "granitemoe", 300, 64, 64, 2, 4, 2, 0, 4, 2, 64
};
static const synth_shape small_olmoe = {
    "t-olmoe", "olmoe", 300, 64, 64, 1, 4, 4, 0, 4, 2, 64
};
static const synth_shape small_dense = {
    "t-dense", "llama", 300, 64, 64, 1, 4, 2, 96, 0, 0, 0
};

static int64_t kv_int(const gguf_ctx *g, const char *key)
{
    int64_t v = -1;
    ck_assert_msg(gguf_get_int(g, key, &v), "missing %s", key);
    return v;
}

static void check_tensor(const gguf_ctx *g, const char *name, moe_type type,
                         int n_dims, int64_t ne0, int64_t ne1, int64_t ne2)
{
    const gguf_tensor_info *t = gguf_find_tensor(g, name);
    ck_assert_msg(t != NULL, "missing tensor %s", name);
    ck_assert_msg(t->type == type, "%s: type %s, want %s", name,
                  quant_type_name(t->type), quant_type_name(type));
    ck_assert_int_eq(t->n_dims, n_dims);
    ck_assert_int_eq(t->ne[0], ne0);
    ck_assert_int_eq(t->ne[1], ne1);
    ck_assert_int_eq(t->ne[2], ne2);
}

START_TEST(test_shapes)
{
    const synth_shape *s = synth_find_shape("granite-moe-1b");
    int n = 0;
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s->arch, "granitemoe");
    ck_assert_int_eq(s->n_embd, 1024);
    ck_assert_int_eq(s->n_layer, 24);
    ck_assert_int_eq(s->n_expert, 32);
    ck_assert_int_eq(s->n_expert_used, 8);
    ck_assert_int_eq(s->n_ff_exp, 512);
    ck_assert_int_eq(s->n_vocab, 49155);
    s = synth_find_shape("olmoe-7b");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(s->n_expert, 64);
    ck_assert_ptr_nonnull(synth_find_shape("llama-1b"));
    ck_assert_ptr_nonnull(synth_find_shape("tiny-moe"));
    ck_assert_ptr_null(synth_find_shape("nope"));
    ck_assert_ptr_null(synth_find_shape(NULL));
    for (s = synth_shapes(); s->name; s++)
        n++;
    ck_assert_int_eq(n, 4);
}
END_TEST

START_TEST(test_tiny_moe_layout)
{
    char path[512];
    gguf_ctx *g = NULL;
    int64_t i;
    size_t len;
    const char *s;
    static char tok[512][32];
    tu_tmp_path(path, sizeof path, "tiny-moe.q8_0.gguf");
    ck_assert_int_eq(synth_write(synth_find_shape("tiny-moe"), MOE_TYPE_Q8_0, 1, path,
                                 NULL, NULL), MOE_OK);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_str_eq(gguf_get_str(g, "general.architecture"), "llama");
    ck_assert_int_eq(kv_int(g, "general.alignment"), 32);
    ck_assert_int_eq(kv_int(g, "llama.embedding_length"), 128);
    ck_assert_int_eq(kv_int(g, "llama.block_count"), 4);
    ck_assert_int_eq(kv_int(g, "llama.feed_forward_length"), 256);
    ck_assert_int_eq(kv_int(g, "llama.attention.head_count"), 4);
    ck_assert_int_eq(kv_int(g, "llama.attention.head_count_kv"), 2);
    ck_assert_int_eq(kv_int(g, "llama.expert_count"), 8);
    ck_assert_int_eq(kv_int(g, "llama.expert_used_count"), 2);
    ck_assert_int_eq(kv_int(g, "llama.rope.dimension_count"), 32);
    ck_assert_int_eq(kv_int(g, "llama.vocab_size"), 512);
    ck_assert_int_eq(kv_int(g, "tokenizer.ggml.bos_token_id"), 1);
    ck_assert_int_eq(kv_int(g, "tokenizer.ggml.eos_token_id"), 2);
    ck_assert_str_eq(gguf_get_str(g, "tokenizer.ggml.model"), "llama");

    check_tensor(g, "token_embd.weight", MOE_TYPE_Q8_0, 2, 128, 512, 1);
    check_tensor(g, "blk.0.attn_norm.weight", MOE_TYPE_F32, 1, 128, 1, 1);
    check_tensor(g, "blk.3.attn_k.weight", MOE_TYPE_Q8_0, 2, 128, 64, 1);
    check_tensor(g, "blk.3.ffn_gate_inp.weight", MOE_TYPE_F32, 2, 128, 8, 1);
    check_tensor(g, "blk.3.ffn_gate_exps.weight", MOE_TYPE_Q8_0, 3, 128, 256, 8);
    check_tensor(g, "blk.3.ffn_up_exps.weight", MOE_TYPE_Q8_0, 3, 128, 256, 8);
    check_tensor(g, "blk.3.ffn_down_exps.weight", MOE_TYPE_Q8_0, 3, 256, 128, 8);
    check_tensor(g, "output_norm.weight", MOE_TYPE_F32, 1, 128, 1, 1);
    check_tensor(g, "output.weight", MOE_TYPE_Q8_0, 2, 128, 512, 1);
    ck_assert_ptr_null(gguf_find_tensor(g, "blk.4.attn_q.weight"));
    ck_assert_int_eq(gguf_n_tensors(g), 1 + 4 * 10 + 2);

    /* vocabulary: specials, byte tokens, unique pieces that merge */
    i = gguf_find_key(g, "tokenizer.ggml.tokens");
    ck_assert_int_ge(i, 0);
    ck_assert_int_eq(gguf_arr_n(g, i), 512);
    for (uint64_t a = 0; a < 512; a++) {
        s = gguf_arr_str(g, i, a, &len);
        ck_assert(len > 0 && len < sizeof tok[a]);
        memcpy(tok[a], s, len);
        tok[a][len] = '\0';
    }
    ck_assert_str_eq(tok[0], "<unk>");
    ck_assert_str_eq(tok[1], "<s>");
    ck_assert_str_eq(tok[2], "</s>");
    ck_assert_str_eq(tok[3], "<0x00>");
    ck_assert_str_eq(tok[258], "<0xFF>");
    ck_assert_str_eq(tok[259], "\xe2\x96\x81");
    ck_assert_str_eq(tok[260], "!");
    for (int a = 0; a < 512; a++) {
        bool split = a < 259 + 95; /* specials, bytes, single characters */
        int dup = -1;
        for (int b = a + 1; b < 512 && dup < 0; b++)
            if (strcmp(tok[a], tok[b]) == 0)
                dup = b;
        ck_assert_msg(dup < 0, "pieces %d and %d are both '%s'", a, dup, tok[a]);
        /* every longer piece is two earlier pieces joined */
        for (int b = 259; b < a && !split; b++) {
            size_t lb = strlen(tok[b]);
            if (strncmp(tok[a], tok[b], lb) != 0)
                continue;
            for (int c = 259; c < a && !split; c++)
                split = strcmp(tok[a] + lb, tok[c]) == 0;
        }
        ck_assert_msg(split, "piece %d '%s' is not two earlier pieces", a, tok[a]);
    }
    {
        int64_t ti = gguf_find_key(g, "tokenizer.ggml.token_type");
        int64_t si = gguf_find_key(g, "tokenizer.ggml.scores");
        int32_t tt[512];
        float sc[512];
        ck_assert_int_eq(gguf_arr_type(g, ti), GGUF_TYPE_INT32);
        memcpy(tt, gguf_arr_data(g, ti), sizeof tt);
        memcpy(sc, gguf_arr_data(g, si), sizeof sc);
        ck_assert_int_eq(tt[0], 2);
        ck_assert_int_eq(tt[1], 3);
        ck_assert_int_eq(tt[100], 6);
        ck_assert_int_eq(tt[300], 1);
        for (int k = 260; k < 512; k++)
            ck_assert(sc[k] < sc[k - 1]);
    }

    /* weights: uniform within +-1/sqrt(row), not constant; norms near 1 */
    {
        const gguf_tensor_info *t = gguf_find_tensor(g, "blk.1.attn_q.weight");
        float row[128], lim = 1.0f / sqrtf(128.0f) * 1.01f;
        double ss = 0.0;
        quant_dequantize_row(MOE_TYPE_Q8_0, t->data, row, 128);
        for (int k = 0; k < 128; k++) {
            ck_assert(fabsf(row[k]) <= lim);
            ss += row[k] * row[k];
        }
        /* uniform(+-a): rms a/sqrt(3) = 0.051 */
        ck_assert_double_eq_tol(sqrt(ss / 128), 1.0 / sqrt(3.0 * 128), 0.01);
        t = gguf_find_tensor(g, "blk.1.ffn_norm.weight");
        memcpy(row, t->data, sizeof row);
        for (int k = 0; k < 128; k++)
            ck_assert(row[k] >= 0.89f && row[k] <= 1.11f);
    }
    s = gguf_get_str(g, "general.name");
    ck_assert_str_eq(s, "tiny-moe");
    gguf_close(g);
}
END_TEST

START_TEST(test_seed_determinism)
{
    char p1[512], p2[512], p3[512];
    size_t n1, n2, n3;
    char *a, *b, *c;
    const synth_shape *sh = &small_granite;
    tu_tmp_path(p1, sizeof p1, "det1.gguf");
    tu_tmp_path(p2, sizeof p2, "det2.gguf");
    tu_tmp_path(p3, sizeof p3, "det3.gguf");
    ck_assert_int_eq(synth_write(sh, MOE_TYPE_Q4_0, 42, p1, NULL, NULL), MOE_OK);
    ck_assert_int_eq(synth_write(sh, MOE_TYPE_Q4_0, 42, p2, NULL, NULL), MOE_OK);
    ck_assert_int_eq(synth_write(sh, MOE_TYPE_Q4_0, 43, p3, NULL, NULL), MOE_OK);
    a = tu_read_file(p1, &n1);
    b = tu_read_file(p2, &n2);
    c = tu_read_file(p3, &n3);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(c);
    ck_assert_uint_eq(n1, n2);
    ck_assert_uint_eq(n1, n3);
    ck_assert(memcmp(a, b, n1) == 0);
    ck_assert(memcmp(a, c, n1) != 0);
    free(a);
    free(b);
    free(c);
}
END_TEST

START_TEST(test_arch_extras)
{
    char path[512];
    gguf_ctx *g = NULL;
    double v;
    tu_tmp_path(path, sizeof path, "granite.gguf");
    ck_assert_int_eq(synth_write(&small_granite, MOE_TYPE_F16, 3, path, NULL, NULL),
                     MOE_OK);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_str_eq(gguf_get_str(g, "general.architecture"), "granitemoe");
    ck_assert(gguf_get_float(g, "granitemoe.embedding_scale", &v));
    ck_assert_double_eq_tol(v, 12.0, 1e-6);
    ck_assert(gguf_get_float(g, "granitemoe.residual_scale", &v));
    ck_assert_double_eq_tol(v, 0.22, 1e-6);
    ck_assert(gguf_get_float(g, "granitemoe.attention.scale", &v));
    ck_assert_double_eq_tol(v, 0.015625, 1e-9);
    ck_assert(gguf_get_float(g, "granitemoe.logit_scale", &v));
    ck_assert_double_eq_tol(v, 8.0, 1e-6);
    check_tensor(g, "blk.1.ffn_down_exps.weight", MOE_TYPE_F16, 3, 64, 64, 4);
    check_tensor(g, "blk.1.ffn_gate_inp.weight", MOE_TYPE_F32, 2, 64, 4, 1);
    ck_assert_ptr_null(gguf_find_tensor(g, "blk.0.attn_q_norm.weight"));
    gguf_close(g);

    tu_tmp_path(path, sizeof path, "olmoe.gguf");
    ck_assert_int_eq(synth_write(&small_olmoe, MOE_TYPE_Q8_0, 3, path, NULL, NULL),
                     MOE_OK);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    ck_assert_str_eq(gguf_get_str(g, "general.architecture"), "olmoe");
    check_tensor(g, "blk.0.attn_q_norm.weight", MOE_TYPE_F32, 1, 64, 1, 1);
    check_tensor(g, "blk.0.attn_k_norm.weight", MOE_TYPE_F32, 1, 64, 1, 1);
    ck_assert(!gguf_get_float(g, "olmoe.logit_scale", &v));
    gguf_close(g);

    tu_tmp_path(path, sizeof path, "dense.gguf");
    ck_assert_int_eq(synth_write(&small_dense, MOE_TYPE_Q8_0, 3, path, NULL, NULL),
                     MOE_OK);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    check_tensor(g, "blk.0.ffn_gate.weight", MOE_TYPE_Q8_0, 2, 64, 96, 1);
    check_tensor(g, "blk.0.ffn_down.weight", MOE_TYPE_Q8_0, 2, 96, 64, 1);
    ck_assert_int_eq(kv_int(g, "llama.feed_forward_length"), 96);
    ck_assert_int_eq(gguf_find_key(g, "llama.expert_count"), -1);
    ck_assert_ptr_null(gguf_find_tensor(g, "blk.0.ffn_gate_inp.weight"));
    gguf_close(g);
}
END_TEST

START_TEST(test_type_fallback)
{
    /* q4_k needs rows of 256: rows of n_embd 128 fall back to q8_0 */
    char path[512];
    gguf_ctx *g = NULL;
    tu_tmp_path(path, sizeof path, "tiny-q4k.gguf");
    ck_assert_int_eq(synth_write(synth_find_shape("tiny-moe"), MOE_TYPE_Q4_K, 5, path,
                                 NULL, NULL), MOE_OK);
    ck_assert_int_eq(gguf_open(path, &g), MOE_OK);
    check_tensor(g, "blk.0.ffn_gate_exps.weight", MOE_TYPE_Q8_0, 3, 128, 256, 8);
    check_tensor(g, "blk.0.ffn_down_exps.weight", MOE_TYPE_Q4_K, 3, 256, 128, 8);
    gguf_close(g);
}
END_TEST

static int cancel_calls;
static bool cancel_after_3(double done, double total, void *ud)
{
    (void)ud;
    ck_assert(done >= 0.0 && done <= total);
    return ++cancel_calls < 3;
}

/* Count directory entries whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

START_TEST(test_errors)
{
    char path[512], dir[512];
    synth_shape bad = small_dense;
    struct stat sb;
    char *slash;
    tu_tmp_path(path, sizeof path, "err.gguf");
    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    *slash = '\0';

    ck_assert_int_eq(synth_write(&small_dense, MOE_TYPE_Q8_K, 1, path, NULL, NULL),
                     MOE_ERR_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(moe_last_error(), "q8_k"));
    bad.arch = "gpt2";
    ck_assert_int_eq(synth_write(&bad, MOE_TYPE_Q8_0, 1, path, NULL, NULL),
                     MOE_ERR_UNSUPPORTED);
    bad = small_dense;
    bad.n_vocab = 100;
    ck_assert_int_eq(synth_write(&bad, MOE_TYPE_Q8_0, 1, path, NULL, NULL),
                     MOE_ERR_INVALID_ARG);
    bad = small_dense;
    bad.n_head_kv = 3;
    ck_assert_int_eq(synth_write(&bad, MOE_TYPE_Q8_0, 1, path, NULL, NULL),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(synth_write(NULL, MOE_TYPE_Q8_0, 1, path, NULL, NULL),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(synth_write(&small_dense, MOE_TYPE_Q8_0, 1,
                                 "/nonexistent-dir/x.gguf", NULL, NULL), MOE_ERR_IO);

    cancel_calls = 0;
    ck_assert_int_eq(synth_write(&small_dense, MOE_TYPE_Q8_0, 1, path,
                                 cancel_after_3, NULL), MOE_ERR_CANCELLED);
    ck_assert_int_eq(cancel_calls, 3);
    ck_assert_int_ne(stat(path, &sb), 0);
    ck_assert_int_eq(count_prefixed(dir, "err.gguf"), 0); /* no temp left */
}
END_TEST

START_TEST(test_model_runs)
{
    /* the engine loads a synthetic file, tokenizes with its vocabulary and
     * produces finite logits */
    char path[512];
    moe_model *m = NULL;
    moe_ctx *c = NULL;
    moe_model_params mp = moe_model_default_params();
    moe_ctx_params cp = moe_ctx_default_params();
    int32_t ids[64];
    const char *text = "the quick brown fox";
    const float *lg;
    int32_t n;
    tu_tmp_path(path, sizeof path, "run.gguf");
    ck_assert_int_eq(synth_write(synth_find_shape("tiny-moe"), MOE_TYPE_Q4_0, 9, path,
                                 NULL, NULL), MOE_OK);
    mp.n_threads = 1;
    ck_assert_msg(moe_model_load(path, &mp, &m) == MOE_OK, "%s", moe_last_error());
    {
        /* the weight span covers every tensor byte and stays inside the file */
        moe_model_info mi;
        size_t span = 0;
        ck_assert_ptr_nonnull(moe_model_weight_span(m, &span));
        moe_model_get_info(m, &mi);
        ck_assert_int_ge((int64_t)span, mi.weight_bytes);
        ck_assert_int_le((int64_t)span, mi.file_size);
    }
    n = moe_tokenize(m, text, strlen(text), ids, 64, true, false);
    ck_assert_int_gt(n, 1);
    ck_assert_int_lt(n, (int32_t)strlen(text)); /* merges happened */
    ck_assert_int_eq(ids[0], 1);
    cp.n_ctx = 64;
    ck_assert_int_eq(moe_ctx_new(m, &cp, &c), MOE_OK);
    ck_assert_int_eq(moe_ctx_decode(c, ids, n, false), MOE_OK);
    lg = moe_ctx_logits(c, -1);
    ck_assert_ptr_nonnull(lg);
    for (int i = 0; i < 512; i++)
        ck_assert(isfinite(lg[i]));
    moe_ctx_free(c);
    moe_model_free(m);
}
END_TEST

/* The weight-page probe: any alignment and length, rejects tiny/NULL regions. */
START_TEST(test_read_bandwidth_at)
{
    const size_t n = ((size_t)3 << 20) + 17;
    unsigned char *b = malloc(n + 1);
    double bw;
    ck_assert_ptr_nonnull(b);
    memset(b, 0xa5, n + 1);
    ck_assert(synth_read_bandwidth_at(NULL, n, 2) == 0.0);
    ck_assert(synth_read_bandwidth_at(b, 1000, 2) == 0.0);
    bw = synth_read_bandwidth_at(b + 1, n, 2); /* unaligned start */
    ck_assert(isfinite(bw) && bw > 0.0);
    bw = synth_read_bandwidth_at(b + 1, n, 1);
    ck_assert(isfinite(bw) && bw > 0.0);
    free(b);
}
END_TEST

Suite *synth_suite(void);
Suite *synth_suite(void)
{
    Suite *su = suite_create("synth");
    TCase *tc = tcase_create("synth");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_shapes);
    tcase_add_test(tc, test_tiny_moe_layout);
    tcase_add_test(tc, test_seed_determinism);
    tcase_add_test(tc, test_arch_extras);
    tcase_add_test(tc, test_type_fallback);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_model_runs);
    tcase_add_test(tc, test_read_bandwidth_at);
    suite_add_tcase(su, tc);
    return su;
}
