/*
 * check_model.c - the forward pass against the reference runtime's outputs in
 * ../shared/golden: prompt tokens, top-10 logits at every prompt position,
 * greedy continuations; KV-cache consistency (batch vs one token at a time);
 * thread-count independence; errors for bad models and bad calls.
 */
#include "config.h"

#include <check.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"
#include "model.h"
#include "moe.h"
#include "quant.h"
#include "quant_impl.h"
#include "synth.h"
#include "testutil.h"

typedef struct {
    const char *pattern; /* substring of the golden file name */
    double tol;          /* absolute logit tolerance */
} tol_rule;

/* Tolerances from the engine-core issue, by weight type. */
static const tol_rule tol_rules[] = {
    {".q4_0.", 0.15}, {".q4_k_m.", 0.15}, {".q8_0.", 5e-2}, {".q6_k.", 5e-2},
    {".f16.", 2e-2},  {".bf16.", 2e-2},   {"", 1e-3},
};

static double tol_for(const char *name)
{
    for (size_t i = 0; i < sizeof tol_rules / sizeof tol_rules[0]; i++)
        if (strstr(name, tol_rules[i].pattern))
            return tol_rules[i].tol;
    return 1e-3;
}

/* Models whose every golden logit we reproduce to the digits the reference
 * printed (6 decimals): the same arithmetic in the same order, so a change
 * that moves one rounding anywhere in the forward pass shows here long
 * before it reaches the tolerances above. The others (stories260K,
 * olmoe, qwen2moe, granitemoe) are within tolerance but not exact:
 * see the note on issue 2. */
static const char *const exact_models[] = {
    "tiny-dense-llama.f32.",       "tiny-mixtral.f32.",          "tiny-mixtral-256.f16.",
    "tiny-mixtral-256.bf16.",      "tiny-mixtral-256.q8_0.",     "tiny-mixtral-256.q4_0.",
    "tiny-mixtral-256.q6_k.",      "tiny-mixtral-256.q4_k_m.",   NULL,
};

static bool exact_for(const char *name)
{
    for (size_t i = 0; exact_models[i]; i++)
        if (strncmp(name, exact_models[i], strlen(exact_models[i])) == 0)
            return true;
    return false;
}

/* x as the reference prints it (%.6f), read back */
static double printed6(float x)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%.6f", (double)x);
    return strtod(buf, NULL);
}

typedef struct {
    int32_t id;
    float logit;
} idlogit;

static int cmp_desc(const void *a, const void *b)
{
    const idlogit *x = a, *y = b;
    if (x->logit != y->logit)
        return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}

static void top_n(const float *logits, int32_t n_vocab, idlogit *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = (idlogit){-1, -INFINITY};
    for (int32_t v = 0; v < n_vocab; v++) {
        if (logits[v] <= out[n - 1].logit)
            continue;
        out[n - 1] = (idlogit){v, logits[v]};
        qsort(out, (size_t)n, sizeof *out, cmp_desc);
    }
}

/* Map a golden file's "model" path to the file under $MOE_SHARED. */
static const char *model_path(const cJSON *j, char *buf, size_t n)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "model");
    const char *rel;
    if (!cJSON_IsString(m) || !(rel = strstr(m->valuestring, "models/")))
        return NULL;
    return tu_shared(buf, n, rel, "golden");
}

typedef struct {
    int files;
    int positions;
    int greedy_checked;
    int greedy_matched;
    double max_err;
    int failed_files;      /* files outside their tolerance */
    int exact_files;       /* files required to match to the printed digit */
    char first_failure[512];
} golden_stats;

/* Record a failure of the current file (first message kept). */
static void golden_fail(golden_stats *gs, bool *file_failed, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void golden_fail(golden_stats *gs, bool *file_failed, const char *fmt, ...)
{
    va_list ap;
    if (!*file_failed)
        gs->failed_files++;
    *file_failed = true;
    if (gs->first_failure[0])
        return;
    va_start(ap, fmt);
    vsnprintf(gs->first_failure, sizeof gs->first_failure, fmt, ap);
    va_end(ap);
}

static void check_one_golden(const char *path, const char *fname, golden_stats *gs)
{
    size_t len;
    char *txt = tu_read_file(path, &len);
    cJSON *j;
    char mpath[1024];
    moe_model *model = NULL;
    moe_ctx *ctx = NULL;
    moe_model_params mp = moe_model_default_params();
    const cJSON *jtok, *jtopk, *jgreedy, *jprompt;
    int32_t toks[512], n_tok;
    int n_ref;
    const double tol = tol_for(fname);
    double max_err = 0.0;
    const bool exact = exact_for(fname);
    bool quant = tol > 1e-3;
    bool file_failed = false;
    int n_inexact = 0; /* logits not equal to the printed reference */
    int n_g = 0, matched = 0;
    bool real = strstr(fname, "stories260K") != NULL;
    int32_t n_vocab;

    ck_assert_msg(txt != NULL, "cannot read %s", path);
    j = cJSON_Parse(txt);
    ck_assert_msg(j != NULL, "bad JSON in %s", path);
    if (!model_path(j, mpath, sizeof mpath)) {
        cJSON_Delete(j);
        free(txt);
        return;
    }
    mp.n_threads = 2;
    ck_assert_msg(moe_model_load(mpath, &mp, &model) == MOE_OK, "%s: %s", mpath,
                  moe_last_error());
    ck_assert(moe_ctx_new(model, NULL, &ctx) == MOE_OK);
    n_vocab = (int32_t)cJSON_GetObjectItem(j, "n_vocab")->valueint;
    {
        moe_model_info info;
        moe_model_get_info(model, &info);
        ck_assert_int_eq(info.n_vocab, n_vocab);
    }

    /* 1. prompt tokens */
    jprompt = cJSON_GetObjectItem(j, "prompt");
    jtok = cJSON_GetObjectItem(j, "tokens");
    n_ref = cJSON_GetArraySize(jtok);
    n_tok = moe_tokenize(model, jprompt->valuestring, strlen(jprompt->valuestring), toks, 512,
                         true, false);
    ck_assert_msg(n_tok == n_ref, "%s: %d tokens, reference %d", fname, n_tok, n_ref);
    for (int i = 0; i < n_ref; i++)
        ck_assert_msg(toks[i] == cJSON_GetArrayItem(jtok, i)->valueint,
                      "%s: token %d is %d, reference %d", fname, i, toks[i],
                      cJSON_GetArrayItem(jtok, i)->valueint);

    /* 2. logits at every prompt position */
    ck_assert(moe_ctx_decode(ctx, toks, n_tok, true) == MOE_OK);
    jtopk = cJSON_GetObjectItem(j, "prompt_topk");
    ck_assert_int_eq(cJSON_GetArraySize(jtopk), n_tok);
    for (int p = 0; p < n_tok; p++) {
        const float *lg = moe_ctx_logits(ctx, p);
        const cJSON *row = cJSON_GetArrayItem(jtopk, p);
        int nk = cJSON_GetArraySize(row);
        idlogit ours[10];
        idlogit ref[10];
        ck_assert(lg != NULL);
        ck_assert_int_eq(nk, 10);
        for (int r = 0; r < nk; r++) {
            const cJSON *pair = cJSON_GetArrayItem(row, r);
            ref[r].id = cJSON_GetArrayItem(pair, 0)->valueint;
            ref[r].logit = (float)cJSON_GetArrayItem(pair, 1)->valuedouble;
            double err = fabs((double)lg[ref[r].id] - ref[r].logit);
            if (err > max_err)
                max_err = err;
            if (printed6(lg[ref[r].id]) != cJSON_GetArrayItem(pair, 1)->valuedouble)
                n_inexact++;
            if (err > tol)
                golden_fail(gs, &file_failed,
                            "%s: pos %d token %d logit %.6f, reference %.6f (tol %g)", fname, p,
                            ref[r].id, lg[ref[r].id], ref[r].logit, tol);
        }
        /* Ranks agree; a swap is allowed only between reference logits that
         * are tied (1e-4) or, for quantized weights, within twice the
         * tolerance (quantization error reorders near-ties). */
        top_n(lg, n_vocab, ours, 10);
        for (int r = 0; r < 10; r++) {
            double gap;
            if (ours[r].id == ref[r].id)
                continue;
            gap = fabs((double)ref[r].logit - (double)lg[ref[r].id]) +
                  fabs((double)ours[r].logit - (double)ref[r].logit);
            if (gap > (quant ? 2 * tol : 1e-4) + tol)
                golden_fail(gs, &file_failed,
                            "%s: pos %d rank %d is token %d (%.6f), reference %d (%.6f)", fname,
                            p, r, ours[r].id, ours[r].logit, ref[r].id, ref[r].logit);
        }
        gs->positions++;
    }

    /* 3. greedy continuation */
    jgreedy = cJSON_GetObjectItem(j, "greedy");
    if (jgreedy) {
        bool after_tie = false; /* past a near-tie of the reference's */
        n_g = cJSON_GetArraySize(jgreedy);
        for (int i = 0; i < n_g; i++) {
            const float *lg = moe_ctx_logits(ctx, -1);
            idlogit best[2];
            int32_t ref_id = cJSON_GetArrayItem(jgreedy, i)->valueint;
            top_n(lg, n_vocab, best, 2);
            if (best[0].id != ref_id) {
                /* A disagreement is acceptable only at or after a near-tie
                 * (random weights) or for quantized files; never for stories260K
                 * or a file reproduced exactly (its near-ties fall the same
                 * way: generated tokens sum as the reference's do). */
                bool near_tie = best[0].logit - best[1].logit < 1e-3 + 2 * 1e-3;
                if (!after_tie && (real || exact || !(quant || near_tie)))
                    golden_fail(gs, &file_failed,
                                "%s: greedy step %d gives %d, reference %d (top-2 gap %.6f)",
                                fname, i, best[0].id, ref_id, best[0].logit - best[1].logit);
                break;
            }
            if (!real && !exact && !quant && best[0].logit - best[1].logit < 1e-3)
                after_tie = true; /* the paths may diverge from here on: still
                                   * compared and counted, no longer required */
            matched++;
            ck_assert(moe_ctx_decode(ctx, &best[0].id, 1, false) == MOE_OK);
        }
        if ((real || exact) && matched != n_g)
            golden_fail(gs, &file_failed, "%s: only %d of %d greedy tokens agree", fname,
                        matched, n_g);
        gs->greedy_checked += n_g;
        gs->greedy_matched += matched;
    }
    if (exact && n_inexact > 0)
        golden_fail(gs, &file_failed, "%s: %d of %d logits differ from the printed reference "
                    "(this model is reproduced exactly)", fname, n_inexact, 10 * n_tok);
    if (exact)
        gs->exact_files++;
    printf("golden: %-34s tokens %2d  max|dlogit| %.2e (tol %.2g)  %s %4d/%-4d  greedy "
           "%2d/%d%s\n",
           fname, n_tok, max_err, tol, exact ? "exact" : "equal", 10 * n_tok - n_inexact,
           10 * n_tok, matched, n_g, file_failed ? "  FAIL" : "");
    if (max_err > gs->max_err)
        gs->max_err = max_err;
    gs->files++;
    moe_ctx_free(ctx);
    moe_model_free(model);
    cJSON_Delete(j);
    free(txt);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

START_TEST(test_golden_all)
{
    char dir[1024];
    DIR *d;
    struct dirent *de;
    char *names[256];
    int n = 0;
    golden_stats gs = {0};
    if (!tu_shared(dir, sizeof dir, "golden", "golden"))
        return;
    d = opendir(dir);
    ck_assert(d != NULL);
    while ((de = readdir(d)) && n < 256)
        if (strstr(de->d_name, ".json"))
            names[n++] = strdup(de->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    ck_assert_msg(n >= 30, "only %d golden files", n);
    for (int i = 0; i < n; i++) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        check_one_golden(path, names[i], &gs);
        free(names[i]);
    }
    printf("golden: %d files (%d of them reproduced exactly), %d prompt positions, greedy "
           "%d/%d tokens agree, max|dlogit| %.2e, %d files fail\n",
           gs.files, gs.exact_files, gs.positions, gs.greedy_matched, gs.greedy_checked,
           gs.max_err, gs.failed_files);
    fflush(stdout);
    ck_assert_int_eq(gs.files, n);
    ck_assert_msg(gs.failed_files == 0, "%d golden files fail; first: %s", gs.failed_files,
                  gs.first_failure);
}
END_TEST

/* The same tokens decoded in one batch, in batches of two and one at a time
 * (exercises the KV cache). Each summation order (moe_order) gives the same
 * bits however the tokens are batched, where it should: BATCH's batches of
 * two equal its one batch, TOKEN's batch equals REFERENCE's single-token
 * decodes, REFERENCE's batch equals BATCH's; thread counts do not change
 * them. REFERENCE's single tokens and its batch, which sum in different
 * orders, agree within a tolerance. */
static void check_incremental(const char *rel, float tol, int n_threads)
{
    char path[1024];
    moe_model *model;
    moe_ctx *a, *b, *c2, *t;
    float max_d = 0.0f;
    moe_model_params mp = moe_model_default_params();
    moe_ctx_params cp = moe_ctx_default_params();
    int32_t toks[40];
    int32_t n_vocab;
    moe_model_info info;
    if (!tu_shared(path, sizeof path, rel, "incremental"))
        return;
    mp.n_threads = n_threads;
    ck_assert_msg(moe_model_load(path, &mp, &model) == MOE_OK, "%s", moe_last_error());
    moe_model_get_info(model, &info);
    n_vocab = info.n_vocab;
    for (int i = 0; i < 40; i++)
        toks[i] = (int32_t)((i * 7919 + 3) % n_vocab);
    cp.n_batch = 16; /* force chunking of the 40-token batch */
    ck_assert(moe_ctx_new(model, &cp, &a) == MOE_OK);
    cp.order = MOE_ORDER_TOKEN;
    ck_assert(moe_ctx_new(model, &cp, &t) == MOE_OK);
    cp.order = MOE_ORDER_REFERENCE;
    cp.n_threads = 1;
    ck_assert(moe_ctx_new(model, &cp, &b) == MOE_OK);
    cp.order = MOE_ORDER_BATCH;
    ck_assert(moe_ctx_new(model, &cp, &c2) == MOE_OK);
    ck_assert(moe_ctx_decode(a, toks, 40, true) == MOE_OK);
    ck_assert(moe_ctx_decode(t, toks, 40, true) == MOE_OK);
    ck_assert_int_eq(moe_ctx_pos(a), 40);
    for (int i = 0; i < 40; i++) {
        const float *la = moe_ctx_logits(a, i), *lt = moe_ctx_logits(t, i), *lb;
        ck_assert(moe_ctx_decode(b, &toks[i], 1, false) == MOE_OK);
        lb = moe_ctx_logits(b, -1);
        for (int32_t v = 0; v < n_vocab; v++) {
            ck_assert_msg(lt[v] == lb[v], "%s: pos %d token %d token-order batch %.9g vs single %.9g",
                          rel, i, v, lt[v], lb[v]);
            if (fabsf(la[v] - lb[v]) > max_d)
                max_d = fabsf(la[v] - lb[v]);
        }
    }
    printf("incremental: %s: batch vs single tokens max |dlogit| %.3g\n", rel, max_d);
    ck_assert_msg(max_d <= tol, "%s: batch vs single tokens differ by %.6f", rel, max_d);
    for (int i = 0; i < 40; i += 2) {
        ck_assert(moe_ctx_decode(c2, &toks[i], 2, true) == MOE_OK);
        for (int k = 0; k < 2; k++) {
            const float *la = moe_ctx_logits(a, i + k), *lc = moe_ctx_logits(c2, k);
            for (int32_t v = 0; v < n_vocab; v++)
                ck_assert_msg(la[v] == lc[v], "%s: pos %d token %d batch %.9g vs pairs %.9g",
                              rel, i + k, v, la[v], lc[v]);
        }
    }
    /* truncate and redo the tail: first one token, then (truncated again
     * to the same position) as a batch, which must not reuse what was
     * derived for the single token at that position (rope angles) */
    moe_ctx_truncate(b, 20);
    ck_assert_int_eq(moe_ctx_pos(b), 20);
    ck_assert(moe_ctx_decode(b, &toks[20], 1, false) == MOE_OK);
    moe_ctx_truncate(b, 20);
    ck_assert(moe_ctx_decode(b, &toks[20], 20, false) == MOE_OK);
    {
        const float *la = moe_ctx_logits(a, 39), *lb = moe_ctx_logits(b, -1);
        for (int32_t v = 0; v < n_vocab; v++)
            ck_assert(fabsf(la[v] - lb[v]) <= tol);
    }
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_ctx_free(c2);
    moe_ctx_free(t);
    moe_model_free(model);
}

START_TEST(test_incremental)
{
    /* tolerances of REFERENCE's batch against its single tokens (their
     * float products and their attention's weighted sums sum in other
     * orders): the f32 models measured at most 8.6e-6; q8_0 0.0788 and
     * q4_k_m 0.339, where a 1-ulp difference flips an expert or a Q8_K
     * rounding downstream */
    static const struct {
        const char *rel;
        float tol;
    } models[] = {
        {"models/real/stories260K.gguf", 1e-4f},
        {"models/synthetic/tiny-mixtral.f32.gguf", 1e-4f},
        {"models/synthetic/tiny-qwen2moe.f32.gguf", 1e-4f},
        {"models/synthetic/tiny-olmoe.f32.gguf", 1e-4f},
        {"models/synthetic/tiny-granitemoe.f32.gguf", 1e-4f},
        {"models/synthetic/tiny-mixtral-256.q4_k_m.gguf", 0.5f},
        {"models/synthetic/tiny-mixtral-256.q8_0.gguf", 0.2f},
    };
    check_incremental(models[_i].rel, models[_i].tol, 2);
}
END_TEST

/* The scalar kernels and the fast ones (SIMD matmuls, the FMA forms of the
 * attention's softmax and weighted sum) follow the same order, so a whole
 * forward pass gives the same bits with the scalar kernels and with each
 * SIMD kernel set: a 139-token batch, then one more token through the
 * single-token path, then 300 tokens summed in the single-token order.
 * 140 positions take the attention's weighted sum over several tiles of
 * positions (64 each, forward.c). */
static const char *const same_bits_models[] = {
    "models/real/stories260K.gguf",
    "models/synthetic/tiny-dense-llama.f32.gguf",
    "models/synthetic/tiny-qwen2moe.f32.gguf",
    "models/synthetic/tiny-olmoe.f32.gguf",
    "models/synthetic/tiny-granitemoe.f32.gguf",
    "models/synthetic/tiny-mixtral-256.f16.gguf",
    "models/synthetic/tiny-mixtral-256.bf16.gguf",
    "models/synthetic/tiny-mixtral-256.q8_0.gguf",
    "models/synthetic/tiny-mixtral-256.q6_k.gguf",
    "models/synthetic/tiny-mixtral-256.q4_k_m.gguf",
    "models/synthetic/tiny-mixtral-256.q4_0.gguf",
};

/* decode toks[0..SB_N-1) as one batch and toks[SB_N-1] alone, then (in a
 * context of the single-token order) all SB_T tokens as one batch, whose
 * weighted sums run over several 256-position spans and end at every
 * offset inside a 64-position block; all SB_ROWS rows of logits into out
 * ([SB_ROWS][n_vocab]) */
#define SB_N 140
#define SB_T 300
#define SB_ROWS (SB_N + SB_T)
static void decode_sb(moe_model *model, const int32_t *toks, int32_t n_vocab, float *out)
{
    moe_ctx_params cp = moe_ctx_default_params();
    moe_ctx *c;
    cp.n_threads = 2;
    cp.n_ctx = SB_T;
    ck_assert(moe_ctx_new(model, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_decode(c, toks, SB_N - 1, true) == MOE_OK);
    for (int i = 0; i < SB_N - 1; i++)
        memcpy(out + (size_t)i * (size_t)n_vocab, moe_ctx_logits(c, i),
               (size_t)n_vocab * sizeof(float));
    ck_assert(moe_ctx_decode(c, toks + SB_N - 1, 1, false) == MOE_OK);
    memcpy(out + (size_t)(SB_N - 1) * (size_t)n_vocab, moe_ctx_logits(c, -1),
           (size_t)n_vocab * sizeof(float));
    moe_ctx_free(c);
    cp.order = MOE_ORDER_TOKEN;
    ck_assert(moe_ctx_new(model, &cp, &c) == MOE_OK);
    ck_assert(moe_ctx_decode(c, toks, SB_T, true) == MOE_OK);
    for (int i = 0; i < SB_T; i++)
        memcpy(out + (size_t)(SB_N + i) * (size_t)n_vocab, moe_ctx_logits(c, i),
               (size_t)n_vocab * sizeof(float));
    moe_ctx_free(c);
}

/* every SIMD kernel set this CPU has, each against the scalar pass */
static const char *const same_bits_ksets[] = {"avx512-vnni", "avx2"};

/* Decode the SB_N-token pass of model once with the scalar kernels and
 * once with each SIMD kernel set the CPU has; every logit must have the
 * same bits. name labels the messages. */
static void check_same_bits(moe_model *model, const char *name)
{
    moe_model_info info;
    int32_t toks[SB_T];
    float *fast, *ref;
    int n_sets = 0;
    moe_model_get_info(model, &info);
    for (int i = 0; i < SB_T; i++)
        toks[i] = (int32_t)((i * 7919 + 3) % info.n_vocab);
    fast = malloc((size_t)SB_ROWS * (size_t)info.n_vocab * sizeof(float));
    ref = malloc((size_t)SB_ROWS * (size_t)info.n_vocab * sizeof(float));
    ck_assert(fast && ref);
    quant_force_scalar(true);
    ck_assert(!quant_fast_kernels());
    decode_sb(model, toks, info.n_vocab, ref);
    quant_force_scalar(false);
    for (size_t k = 0; k < sizeof same_bits_ksets / sizeof same_bits_ksets[0]; k++) {
        const char *kname = same_bits_ksets[k];
        if (!quant_kernels_select(kname))
            continue; /* CPU lacks this set */
        ck_assert_str_eq(quant_kernel_name(), kname);
        ck_assert(quant_fast_kernels());
        decode_sb(model, toks, info.n_vocab, fast);
        quant_kernels_select(NULL);
        for (int i = 0; i < SB_ROWS; i++)
            for (int32_t v = 0; v < info.n_vocab; v++) {
                float a = fast[(size_t)i * (size_t)info.n_vocab + (size_t)v];
                float b = ref[(size_t)i * (size_t)info.n_vocab + (size_t)v];
                ck_assert_msg(memcmp(&a, &b, sizeof a) == 0,
                              "%s: %s position %d token %d: %s kernels %a, scalar %a", name,
                              i < SB_N ? "reference order" : "token order",
                              i < SB_N ? i : i - SB_N, v, kname, a, b);
            }
        printf("scalar vs fast (%s): %s: %d + %d positions x %d logits, same bits\n", kname,
               name, SB_N, SB_T, info.n_vocab);
        n_sets++;
    }
    if (n_sets == 0)
        printf("SKIP scalar vs fast: %s: this CPU has no SIMD kernel set\n", name);
    fflush(stdout);
    free(fast);
    free(ref);
}

START_TEST(test_scalar_same_bits)
{
    char path[1024];
    moe_model *model;
    moe_model_params mp = moe_model_default_params();
    if (!tu_shared(path, sizeof path, same_bits_models[_i], "scalar vs fast"))
        return;
    mp.n_threads = 2;
    ck_assert_msg(moe_model_load(path, &mp, &model) == MOE_OK, "%s", moe_last_error());
    check_same_bits(model, same_bits_models[_i]);
    moe_model_free(model);
}
END_TEST

/* Heads narrower than one 8-float slice (head dim 4) over more positions
 * than one tile of the weighted sum: the SIMD pass runs (it once divided
 * by hd / 8 = 0) and gives the scalar pass's bits. Needs no ../shared. */
START_TEST(test_narrow_heads)
{
    static const synth_shape narrow = {"t-narrow", "llama", 300, 256, 16, 1, 4, 2, 32, 0, 0, 0};
    char path[512];
    moe_model *model;
    moe_model_params mp = moe_model_default_params();
    tu_tmp_path(path, sizeof path, "narrow-heads.gguf");
    ck_assert_msg(synth_write(&narrow, MOE_TYPE_F32, 7, path, NULL, NULL) == MOE_OK, "%s",
                  moe_last_error());
    ck_assert(moe_model_load(path, &mp, &model) == MOE_OK);
    check_same_bits(model, "synth head dim 4");
    moe_model_free(model);
    unlink(path);
}
END_TEST

/* The attention softmax's FMA form (8 lanes, its exponential's branches
 * as blends) against the plain one, bit for bit, on rows whose spread
 * reaches each of the exponential's ranges: 2^n scaled once, in two steps
 * below 2^-126, and 0 below e^-133 (|n| > 192). */
START_TEST(test_att_softmax_forms)
{
    static const int32_t lens[] = {1, 5, 16, 17, 40, 129, 1000};
    static const float spreads[] = {0.5f, 20.0f, 90.0f, 100.0f, 135.0f, 200.0f, 1000.0f};
    float *a = malloc(1000 * sizeof(float)), *b = malloc(1000 * sizeof(float));
    uint32_t r = 12345;
    int n_rows = 0;
    ck_assert(a && b);
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
        for (size_t si = 0; si < sizeof spreads / sizeof spreads[0]; si++) {
            const int32_t n = lens[li];
            for (int32_t p = 0; p < n; p++) {
                r = r * 1664525u + 1013904223u;
                a[p] = 3.0f - spreads[si] * (float)(r >> 8) / 16777216.0f;
            }
            a[n / 2] = 3.0f;                  /* the maximum, twice when n > 2 */
            a[n - 1] = n > 2 ? 3.0f : a[n - 1];
            memcpy(b, a, (size_t)n * sizeof(float));
            forward_att_softmax(a, n, true);
            forward_att_softmax(b, n, false);
            for (int32_t p = 0; p < n; p++)
                ck_assert_msg(memcmp(&a[p], &b[p], sizeof a[p]) == 0,
                              "length %d spread %g position %d: fast %a, plain %a", n,
                              (double)spreads[si], p, a[p], b[p]);
            n_rows++;
        }
    printf("attention softmax: %d rows, FMA form and plain form give the same bits\n", n_rows);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_bad_calls)
{
    char path[1024];
    moe_model *model;
    moe_ctx *ctx;
    moe_ctx_params cp = moe_ctx_default_params();
    int32_t tok[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int32_t bad = 100000;
    if (!tu_shared(path, sizeof path, "models/real/stories260K.gguf", "bad_calls"))
        return;
    ck_assert(moe_model_load(path, NULL, &model) == MOE_OK);
    cp.n_ctx = 6;
    ck_assert(moe_ctx_new(model, &cp, &ctx) == MOE_OK);
    ck_assert(moe_ctx_decode(ctx, &bad, 1, false) == MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "out of range") != NULL);
    ck_assert(moe_ctx_decode(ctx, tok, 8, false) == MOE_ERR_FULL);
    ck_assert(strstr(moe_last_error(), "context full") != NULL);
    ck_assert_int_eq(moe_ctx_pos(ctx), 0);
    ck_assert(moe_ctx_decode(ctx, tok, 6, false) == MOE_OK);
    ck_assert(moe_ctx_logits(ctx, 0) == NULL); /* only the last row was kept */
    ck_assert(moe_ctx_logits(ctx, -1) != NULL);
    moe_ctx_free(ctx);
    moe_model_free(model);
    moe_model_free(NULL);
    moe_ctx_free(NULL);
}
END_TEST

/* The load modes (moe_load_mode): mapped and copied models compute the
 * same bits; AUTO maps a file this small; an unknown mode is refused. */
START_TEST(test_load_modes)
{
    char path[1024];
    moe_model *mm, *mc, *bad = (moe_model *)0x1;
    moe_model_params mp = moe_model_default_params();
    moe_model_info info;
    moe_ctx *a, *b;
    moe_ctx_params cp = moe_ctx_default_params();
    int32_t toks[6] = {1, 400, 7, 93, 211, 5};
    if (!tu_shared(path, sizeof path, "models/real/stories260K.gguf", "load modes"))
        return;
    ck_assert_int_eq(mp.load, MOE_LOAD_AUTO);
    ck_assert(moe_model_load(path, &mp, &mm) == MOE_OK);
    moe_model_get_info(mm, &info);
    ck_assert(!info.copied); /* under MOE_LOAD_COPY_MIN */
    mp.load = MOE_LOAD_COPY;
    ck_assert_msg(moe_model_load(path, &mp, &mc) == MOE_OK, "%s", moe_last_error());
    moe_model_get_info(mc, &info);
    ck_assert(info.copied);
    ck_assert(moe_ctx_new(mm, &cp, &a) == MOE_OK);
    ck_assert(moe_ctx_new(mc, &cp, &b) == MOE_OK);
    ck_assert(moe_ctx_decode(a, toks, 6, false) == MOE_OK);
    ck_assert(moe_ctx_decode(b, toks, 6, false) == MOE_OK);
    ck_assert(memcmp(moe_ctx_logits(a, -1), moe_ctx_logits(b, -1),
                     (size_t)info.n_vocab * sizeof(float)) == 0);
    moe_ctx_free(a);
    moe_ctx_free(b);
    moe_model_free(mm);
    moe_model_free(mc);
    mp.load = (moe_load_mode)7;
    ck_assert_int_eq(moe_model_load(path, &mp, &bad), MOE_ERR_INVALID_ARG);
    ck_assert_ptr_null(bad);
    ck_assert_msg(strstr(moe_last_error(), "unknown load mode 7"), "%s", moe_last_error());
}
END_TEST

/* Models that are valid GGUF but not runnable give one clear message. */
START_TEST(test_bad_models)
{
    char path[512];
    moe_model *model = (moe_model *)0x1;
    gguf_writer *w;
    float norm[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    int64_t ne1[1] = {8};

    /* unknown architecture */
    w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "gpt-j");
    gguf_writer_add_tensor(w, "output_norm.weight", MOE_TYPE_F32, 1, ne1, norm);
    tu_tmp_path(path, sizeof path, "arch.gguf");
    ck_assert(gguf_writer_write(w, path) == MOE_OK);
    gguf_writer_free(w);
    ck_assert(moe_model_load(path, NULL, &model) == MOE_ERR_UNSUPPORTED);
    ck_assert(model == NULL);
    ck_assert_msg(strstr(moe_last_error(), "unsupported architecture 'gpt-j'") &&
                      strstr(moe_last_error(), "qwen2moe"),
                  "%s", moe_last_error());

    /* llama without hyperparameters */
    w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_add_tensor(w, "output_norm.weight", MOE_TYPE_F32, 1, ne1, norm);
    tu_tmp_path(path, sizeof path, "nohp.gguf");
    ck_assert(gguf_writer_write(w, path) == MOE_OK);
    gguf_writer_free(w);
    ck_assert(moe_model_load(path, NULL, &model) == MOE_ERR_FORMAT);
    ck_assert_msg(strstr(moe_last_error(), "llama.embedding_length") != NULL, "%s",
                  moe_last_error());

    /* missing tensor */
    w = gguf_writer_new();
    gguf_writer_set_str(w, "general.architecture", "llama");
    gguf_writer_set_u32(w, "llama.embedding_length", 8);
    gguf_writer_set_u32(w, "llama.block_count", 1);
    gguf_writer_set_u32(w, "llama.attention.head_count", 2);
    gguf_writer_set_u32(w, "llama.feed_forward_length", 16);
    gguf_writer_add_tensor(w, "output_norm.weight", MOE_TYPE_F32, 1, ne1, norm);
    tu_tmp_path(path, sizeof path, "notensor.gguf");
    ck_assert(gguf_writer_write(w, path) == MOE_OK);
    gguf_writer_free(w);
    ck_assert(moe_model_load(path, NULL, &model) == MOE_ERR_FORMAT);
    ck_assert_msg(strstr(moe_last_error(), "missing tensor 'token_embd.weight'") != NULL, "%s",
                  moe_last_error());

    /* missing file */
    ck_assert(moe_model_load("/nonexistent/x.gguf", NULL, &model) == MOE_ERR_IO);
    ck_assert(strstr(moe_last_error(), "/nonexistent/x.gguf") != NULL);
}
END_TEST

Suite *model_suite(void);
Suite *model_suite(void)
{
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("golden");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_golden_all);
    tcase_add_loop_test(tc, test_incremental, 0, 7);
    tcase_add_loop_test(tc, test_scalar_same_bits, 0,
                        (int)(sizeof same_bits_models / sizeof same_bits_models[0]));
    tcase_add_test(tc, test_att_softmax_forms);
    tcase_add_test(tc, test_narrow_heads);
    suite_add_tcase(s, tc);
    tc = tcase_create("errors");
    tcase_add_test(tc, test_bad_calls);
    tcase_add_test(tc, test_bad_models);
    tcase_add_test(tc, test_load_modes);
    suite_add_tcase(s, tc);
    return s;
}
