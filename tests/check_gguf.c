/*
 * check_gguf.c - the GGUF reader and writer: every value type of a
 * hand-made fixture, every shared model and vocab file, a table of malformed
 * files (each rejected with its own message), truncation at every byte,
 * allocation limits, writer setters and rejections, atomic writes, and
 * byte-exact round trips of the shared files.
 */
#include "config.h"

#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "gguf_fixtures.h"
#include "testutil.h"

static const char *const shared_files[] = {
    "models/real/stories260K.gguf",
    "models/synthetic/tiny-dense-llama.f32.gguf",
    "models/synthetic/tiny-granitemoe.f32.gguf",
    "models/synthetic/tiny-mixtral.f32.gguf",
    "models/synthetic/tiny-olmoe.f32.gguf",
    "models/synthetic/tiny-qwen2moe.f32.gguf",
    "models/synthetic/tiny-mixtral-256.f16.gguf",
    "models/synthetic/tiny-mixtral-256.bf16.gguf",
    "models/synthetic/tiny-mixtral-256.q8_0.gguf",
    "models/synthetic/tiny-mixtral-256.q4_0.gguf",
    "models/synthetic/tiny-mixtral-256.q6_k.gguf",
    "models/synthetic/tiny-mixtral-256.q4_k_m.gguf",
    "vocab/ggml-vocab-bert-bge.gguf",
    "vocab/ggml-vocab-deepseek-llm.gguf",
    "vocab/ggml-vocab-falcon.gguf",
    "vocab/ggml-vocab-gpt-2.gguf",
    "vocab/ggml-vocab-llama-spm.gguf",
    "vocab/ggml-vocab-mpt.gguf",
    "vocab/ggml-vocab-phi-3.gguf",
    "vocab/ggml-vocab-starcoder.gguf",
};
#define N_SHARED (sizeof shared_files / sizeof shared_files[0])

static gguf_ctx *open_fixture(const fx_buf *b)
{
    gguf_ctx *ctx = NULL;
    moe_status st = gguf_open_buffer(b->p, b->n, &ctx);
    ck_assert_msg(st == MOE_OK, "fixture rejected: %s", moe_last_error());
    return ctx;
}

static int64_t key_of(const gguf_ctx *ctx, const char *key)
{
    int64_t i = gguf_find_key(ctx, key);
    ck_assert_msg(i >= 0, "key %s missing", key);
    return i;
}

/* ---- the standard fixture, every accessor ------------------------------- */

START_TEST(test_fixture_values)
{
    fx_buf b = {0};
    fx_marks m;
    fx_standard(&b, &m, NULL);
    gguf_ctx *ctx = open_fixture(&b);
    size_t len;
    int64_t iv;
    double dv;
    bool bv;

    ck_assert_uint_eq(gguf_version(ctx), 3);
    ck_assert_uint_eq(gguf_alignment(ctx), 32);
    ck_assert_uint_eq(gguf_file_size(ctx), b.n);
    ck_assert_uint_eq(gguf_data_offset(ctx), m.data_start);
    ck_assert_int_eq(gguf_n_kv(ctx), 21);
    ck_assert_str_eq(gguf_kv_key(ctx, 0), "general.architecture");
    ck_assert_str_eq(gguf_get_str(ctx, "general.architecture"), "llama");
    ck_assert_uint_eq(gguf_kv_u8(ctx, key_of(ctx, "test.u8")), 200);
    ck_assert_int_eq(gguf_kv_i8(ctx, key_of(ctx, "test.i8")), -5);
    ck_assert_uint_eq(gguf_kv_u16(ctx, key_of(ctx, "test.u16")), 65535);
    ck_assert_int_eq(gguf_kv_i16(ctx, key_of(ctx, "test.i16")), -300);
    ck_assert_uint_eq(gguf_kv_u32(ctx, key_of(ctx, "test.u32")), 4000000000u);
    ck_assert_int_eq(gguf_kv_i32(ctx, key_of(ctx, "test.i32")), -70000);
    ck_assert(gguf_kv_f32(ctx, key_of(ctx, "test.f32")) == 0.25f);
    ck_assert(gguf_kv_bool(ctx, key_of(ctx, "test.bool")));
    ck_assert_uint_eq(gguf_kv_u64(ctx, key_of(ctx, "test.u64")), 0xfedcba9876543210ull);
    ck_assert_int_eq(gguf_kv_i64(ctx, key_of(ctx, "test.i64")), -5000000000ll);
    ck_assert(gguf_kv_f64(ctx, key_of(ctx, "test.f64")) == -1.5);
    const char *s = gguf_kv_str(ctx, key_of(ctx, "test.str"), &len);
    ck_assert_uint_eq(len, 6);
    ck_assert_str_eq(s, "h\xc3\xa9llo");
    s = gguf_kv_str(ctx, key_of(ctx, "test.empty_str"), &len);
    ck_assert_uint_eq(len, 0);
    ck_assert_str_eq(s, "");

    /* wrong-type and out-of-range access gives zero values, not crashes */
    ck_assert_uint_eq(gguf_kv_u32(ctx, key_of(ctx, "test.u8")), 0);
    ck_assert_ptr_null(gguf_kv_str(ctx, key_of(ctx, "test.u8"), &len));
    ck_assert_uint_eq(len, 0);
    ck_assert_ptr_null(gguf_kv_key(ctx, 21));
    ck_assert_ptr_null(gguf_kv_key(ctx, -1));
    ck_assert_int_eq(gguf_kv_type(ctx, 99), GGUF_TYPE_COUNT);
    ck_assert_int_eq(gguf_find_key(ctx, "absent"), -1);
    ck_assert_ptr_null(gguf_get_str(ctx, "test.u8"));

    /* conversions */
    ck_assert(gguf_get_int(ctx, "test.u8", &iv) && iv == 200);
    ck_assert(gguf_get_int(ctx, "test.i16", &iv) && iv == -300);
    ck_assert(gguf_get_int(ctx, "test.u32", &iv) && iv == 4000000000ll);
    ck_assert(gguf_get_int(ctx, "test.i64", &iv) && iv == -5000000000ll);
    ck_assert(!gguf_get_int(ctx, "test.u64", &iv)); /* > INT64_MAX */
    ck_assert(!gguf_get_int(ctx, "test.f32", &iv));
    ck_assert(!gguf_get_int(ctx, "test.str", &iv));
    ck_assert(!gguf_get_int(ctx, "absent", &iv));
    ck_assert(gguf_get_float(ctx, "test.f32", &dv) && dv == 0.25);
    ck_assert(gguf_get_float(ctx, "test.f64", &dv) && dv == -1.5);
    ck_assert(gguf_get_float(ctx, "test.i32", &dv) && dv == -70000.0);
    ck_assert(!gguf_get_float(ctx, "test.arr_f64", &dv));
    ck_assert(gguf_get_bool(ctx, "test.bool", &bv) && bv);
    ck_assert(!gguf_get_bool(ctx, "test.u8", &bv));

    /* arrays */
    int64_t i = key_of(ctx, "test.arr_i32");
    ck_assert_int_eq(gguf_kv_type(ctx, i), GGUF_TYPE_ARRAY);
    ck_assert_int_eq(gguf_arr_type(ctx, i), GGUF_TYPE_INT32);
    ck_assert_uint_eq(gguf_arr_n(ctx, i), 3);
    int32_t ai[3];
    memcpy(ai, gguf_arr_data(ctx, i), sizeof ai);
    ck_assert(ai[0] == -7 && ai[1] == -14 && ai[2] == -21);
    ck_assert_ptr_null(gguf_arr_str(ctx, i, 0, &len));

    i = key_of(ctx, "test.arr_str");
    ck_assert_int_eq(gguf_arr_type(ctx, i), GGUF_TYPE_STRING);
    ck_assert_uint_eq(gguf_arr_n(ctx, i), 3);
    ck_assert_ptr_null(gguf_arr_data(ctx, i));
    s = gguf_arr_str(ctx, i, 0, &len);
    ck_assert(len == 1 && memcmp(s, "a", 1) == 0);
    s = gguf_arr_str(ctx, i, 1, &len);
    ck_assert(s && len == 0);
    s = gguf_arr_str(ctx, i, 2, &len);
    ck_assert(len == 3 && memcmp(s, "ccc", 3) == 0);
    ck_assert_ptr_null(gguf_arr_str(ctx, i, 3, &len));

    i = key_of(ctx, "test.arr_bool");
    ck_assert_int_eq(gguf_arr_type(ctx, i), GGUF_TYPE_BOOL);
    ck_assert_uint_eq(((const uint8_t *)gguf_arr_data(ctx, i))[1], 1);
    i = key_of(ctx, "test.arr_empty");
    ck_assert_int_eq(gguf_arr_type(ctx, i), GGUF_TYPE_FLOAT32);
    ck_assert_uint_eq(gguf_arr_n(ctx, i), 0);
    i = key_of(ctx, "test.arr_f64");
    double ad[2];
    memcpy(ad, gguf_arr_data(ctx, i), sizeof ad);
    ck_assert(ad[0] == 3.0 && ad[1] == 0.0);

    /* nested: [[7, 8], ["x"], [[]]] */
    const gguf_array *a = gguf_kv_array(ctx, key_of(ctx, "test.nested"));
    ck_assert_ptr_nonnull(a);
    ck_assert_int_eq(gguf_array_type(a), GGUF_TYPE_ARRAY);
    ck_assert_uint_eq(gguf_array_n(a), 3);
    ck_assert_ptr_null(gguf_array_data(a));
    const gguf_array *e0 = gguf_array_elem(a, 0), *e1 = gguf_array_elem(a, 1),
                     *e2 = gguf_array_elem(a, 2);
    ck_assert_int_eq(gguf_array_type(e0), GGUF_TYPE_UINT16);
    uint16_t u16[2];
    memcpy(u16, gguf_array_data(e0), sizeof u16);
    ck_assert(u16[0] == 7 && u16[1] == 8);
    s = gguf_array_str(e1, 0, &len);
    ck_assert(len == 1 && s[0] == 'x');
    ck_assert_int_eq(gguf_array_type(e2), GGUF_TYPE_ARRAY);
    ck_assert_int_eq(gguf_array_type(gguf_array_elem(e2, 0)), GGUF_TYPE_UINT64);
    ck_assert_uint_eq(gguf_array_n(gguf_array_elem(e2, 0)), 0);
    ck_assert_ptr_null(gguf_array_elem(a, 3));
    ck_assert_ptr_null(gguf_kv_array(ctx, key_of(ctx, "test.u8")));
    ck_assert_uint_eq(gguf_array_n(NULL), 0);

    /* one-line rendering */
    char fb[128];
    static const struct {
        const char *key;
        uint64_t max;
        const char *want;
    } fmts[] = {
        {"test.u8", 8, "200"},           {"test.i8", 8, "-5"},
        {"test.u16", 8, "65535"},        {"test.i16", 8, "-300"},
        {"test.u32", 8, "4000000000"},   {"test.i32", 8, "-70000"},
        {"test.f32", 8, "0.25"},         {"test.bool", 8, "true"},
        {"test.u64", 8, "18364758544493064720"}, {"test.i64", 8, "-5000000000"},
        {"test.f64", 8, "-1.5"},         {"test.str", 8, "\"h\xc3\xa9llo\""},
        {"test.empty_str", 8, "\"\""},   {"test.arr_i32", 8, "[-7, -14, -21]"},
        {"test.arr_i32", 2, "[-7, -14, ... 3 total]"},
        {"test.arr_i32", 0, "[... 3 total]"},
        {"test.arr_str", 8, "[\"a\", \"\", \"ccc\"]"},
        {"test.arr_bool", 8, "[false, true]"}, {"test.arr_empty", 8, "[]"},
        {"test.arr_f64", 8, "[3, -0]"},
        {"test.nested", 8, "[[7, 8], [\"x\"], [[]]]"},
        {"test.nested", 1, "[[7, ... 2 total], ... 3 total]"},
    };
    for (size_t k = 0; k < sizeof fmts / sizeof fmts[0]; k++) {
        size_t need = gguf_kv_format(ctx, key_of(ctx, fmts[k].key), fb, sizeof fb,
                                     fmts[k].max);
        ck_assert_msg(strcmp(fb, fmts[k].want) == 0, "%s: '%s' want '%s'", fmts[k].key,
                      fb, fmts[k].want);
        ck_assert_uint_eq(need, strlen(fmts[k].want));
    }
    ck_assert_uint_eq(gguf_kv_format(ctx, key_of(ctx, "test.arr_i32"), fb, 5, 8), 14);
    ck_assert_str_eq(fb, "[-7,");
    ck_assert_uint_eq(gguf_kv_format(ctx, 99, fb, sizeof fb, 8), 0);
    ck_assert_str_eq(fb, "");

    /* tensors */
    ck_assert_int_eq(gguf_n_tensors(ctx), 3);
    const gguf_tensor_info *t = gguf_tensor(ctx, 0);
    ck_assert_str_eq(t->name, "tok.weight");
    ck_assert(t->n_dims == 2 && t->ne[0] == 4 && t->ne[1] == 3 && t->ne[2] == 1 &&
              t->ne[3] == 1);
    ck_assert_int_eq(t->type, MOE_TYPE_F32);
    ck_assert_uint_eq(t->nbytes, 48);
    ck_assert_uint_eq(t->offset, 0);
    ck_assert_ptr_eq(t->data, b.p + m.data_start);
    t = gguf_find_tensor(ctx, "q.weight");
    ck_assert_ptr_eq(t, gguf_tensor(ctx, 1));
    ck_assert_int_eq(t->type, MOE_TYPE_Q8_0);
    ck_assert_uint_eq(t->nbytes, 2 * 8 * 34);
    ck_assert_uint_eq(t->offset, 64);
    ck_assert_uint_eq(((const uint8_t *)t->data)[1], 31 + 7 + 1);
    t = gguf_find_tensor(ctx, "norm");
    ck_assert(t && t->n_dims == 1 && t->type == MOE_TYPE_F16 && t->nbytes == 16);
    ck_assert_uint_eq((const uint8_t *)t->data + t->nbytes - b.p, m.data_end);
    ck_assert_ptr_null(gguf_find_tensor(ctx, "tok"));
    ck_assert_ptr_null(gguf_tensor(ctx, 3));
    gguf_close(ctx);
    gguf_close(NULL);
    fx_free(&b);
}
END_TEST

START_TEST(test_fixture_variants)
{
    /* v2, explicit alignments, nesting up to the limit, every tensor type */
    static const fx_opts ok[] = {
        {.version = 2}, {.alignment = 64}, {.alignment = 1}, {.alignment = 32},
        {.nest_depth = 8}, {.tensor_type1 = MOE_TYPE_Q4_K}, {.tensor_type1 = MOE_TYPE_Q6_K},
        {.tensor_type1 = MOE_TYPE_Q4_0}, {.tensor_type1 = MOE_TYPE_BF16},
    };
    for (size_t k = 0; k < sizeof ok / sizeof ok[0]; k++) {
        fx_buf b = {0};
        fx_marks m;
        fx_standard(&b, &m, &ok[k]);
        gguf_ctx *ctx = open_fixture(&b);
        size_t align = ok[k].alignment ? ok[k].alignment : 32;
        ck_assert_uint_eq(gguf_version(ctx), ok[k].version ? ok[k].version : 3);
        ck_assert_uint_eq(gguf_alignment(ctx), align);
        ck_assert_uint_eq(gguf_data_offset(ctx), m.data_start);
        ck_assert_uint_eq(gguf_data_offset(ctx) % align, 0);
        ck_assert_int_eq((int64_t)gguf_n_kv(ctx), (int64_t)fx_standard_n_kv(&ok[k]));
        const gguf_tensor_info *t = gguf_tensor(ctx, 1);
        ck_assert_int_eq(t->type, ok[k].tensor_type1 ? ok[k].tensor_type1 : MOE_TYPE_Q8_0);
        ck_assert_uint_eq(t->nbytes, 2 * quant_row_bytes(t->type, 256));
        ck_assert_uint_eq(t->offset % align, 0);
        if (ok[k].nest_depth) {
            const gguf_array *a = gguf_kv_array(ctx, key_of(ctx, "test.deep"));
            for (int d = 1; d < ok[k].nest_depth; d++)
                a = gguf_array_elem(a, 0);
            ck_assert_int_eq(gguf_array_type(a), GGUF_TYPE_UINT8);
            ck_assert_uint_eq(*(const uint8_t *)gguf_array_data(a), 9);
        }
        gguf_close(ctx);
        fx_free(&b);
    }
}
END_TEST

/* ---- malformed files ------------------------------------------------------ */

#define MK(f) offsetof(fx_marks, f)
#define NOPATCH SIZE_MAX

typedef struct {
    size_t mark;   /* offsetof a field in fx_marks, or NOPATCH */
    int delta;     /* added to the marked offset */
    int width;     /* 1, 4 or 8 */
    uint64_t value;
} patch;

typedef struct {
    const char *name;
    fx_opts opts;
    patch p[2];
    moe_status st;
    const char *msg;  /* expected substrings of moe_last_error() */
    const char *msg2;
} reject_case;

#define P(f, w, v) {MK(f), 0, w, v}
#define PD(f, d, w, v) {MK(f), d, w, v}
#define NP {NOPATCH, 0, 0, 0}

static const reject_case reject_cases[] = {
    {"version 1", {0}, {P(version, 4, 1), NP}, MOE_ERR_UNSUPPORTED,
     "GGUF version 1 is unsupported", NULL},
    {"version 4", {0}, {P(version, 4, 4), NP}, MOE_ERR_UNSUPPORTED,
     "GGUF version 4 is unsupported", NULL},
    {"version 0", {0}, {P(version, 4, 0), NP}, MOE_ERR_UNSUPPORTED,
     "GGUF version 0 is unsupported", NULL},
    {"big-endian", {0}, {P(version, 4, 0x03000000), NP}, MOE_ERR_UNSUPPORTED,
     "big-endian GGUF (version 3) is unsupported", NULL},
    {"magic", {0}, {P(magic, 4, 0x58554747), NP}, MOE_ERR_FORMAT,
     "not a GGUF file: magic bytes 47 47 55 58", NULL},
    {"huge key count", {0}, {P(n_kv, 8, 1000000000000000000ull), NP}, MOE_ERR_FORMAT,
     "key count 1000000000000000000 exceeds file size", NULL},
    {"max key count", {0}, {P(n_kv, 8, UINT64_MAX), NP}, MOE_ERR_FORMAT,
     "key count 18446744073709551615 exceeds file size", NULL},
    {"huge tensor count", {0}, {P(n_tensors, 8, 1ull << 40), NP}, MOE_ERR_FORMAT,
     "tensor count 1099511627776 exceeds file size", NULL},
    {"huge key length", {0}, {P(key0_len, 8, 1ull << 40), NP}, MOE_ERR_FORMAT,
     "key 0 name: string length 1099511627776 exceeds remaining", NULL},
    {"empty key", {0}, {P(key0_len, 8, 0), NP}, MOE_ERR_FORMAT, "key 0 name is empty",
     NULL},
    {"NUL in key", {0}, {PD(key0_len, 8, 1, 0), NP}, MOE_ERR_FORMAT,
     "key 0 name contains a NUL byte", NULL},
    {"bad value type", {0}, {P(u8_type, 4, 13), NP}, MOE_ERR_FORMAT,
     "key 'test.u8': bad value type 13", NULL},
    {"huge value type", {0}, {P(u8_type, 4, UINT32_MAX), NP}, MOE_ERR_FORMAT,
     "key 'test.u8': bad value type 4294967295", NULL},
    {"bool 2", {0}, {P(bool_val, 1, 2), NP}, MOE_ERR_FORMAT,
     "key 'test.bool': bool value 2 is not 0 or 1", NULL},
    {"bool array 7", {0}, {P(arr_bool_val1, 1, 7), NP}, MOE_ERR_FORMAT,
     "key 'test.arr_bool': bool value 7 is not 0 or 1", NULL},
    {"huge string", {0}, {P(str_len, 8, 1ull << 50), NP}, MOE_ERR_FORMAT,
     "key 'test.str' value: string length 1125899906842624 exceeds remaining", NULL},
    {"bad array type", {0}, {P(arr_type, 4, 99), NP}, MOE_ERR_FORMAT,
     "key 'test.arr_i32': bad array element type 99", NULL},
    {"huge array", {0}, {P(arr_len, 8, 1ull << 60), NP}, MOE_ERR_FORMAT,
     "key 'test.arr_i32': array length 1152921504606846976 exceeds remaining", NULL},
    {"max array", {0}, {P(arr_len, 8, UINT64_MAX), NP}, MOE_ERR_FORMAT,
     "key 'test.arr_i32': array length 18446744073709551615 exceeds remaining", NULL},
    {"huge string element", {0}, {P(arr_str_len0, 8, 1ull << 45), NP}, MOE_ERR_FORMAT,
     "key 'test.arr_str' string element: string length 35184372088832 exceeds", NULL},
    {"nesting too deep", {.nest_depth = 9}, {NP, NP}, MOE_ERR_FORMAT,
     "key 'test.deep': arrays nested deeper than 8", NULL},
    {"duplicate key", {.dup_key = 1}, {NP, NP}, MOE_ERR_FORMAT,
     "duplicate key 'test.u8'", NULL},
    {"alignment 0", {.alignment = 32}, {P(align_val, 4, 0), NP}, MOE_ERR_FORMAT,
     "general.alignment 0 is not a non-zero power of two", NULL},
    {"alignment 24", {.alignment = 32}, {P(align_val, 4, 24), NP}, MOE_ERR_FORMAT,
     "general.alignment 24 is not a non-zero power of two", NULL},
    {"alignment type", {.alignment = 32}, {P(align_type, 4, 5), NP}, MOE_ERR_FORMAT,
     "general.alignment has type int32, expected uint32", NULL},
    {"huge tensor name", {0}, {P(t_name_len[0], 8, 1ull << 40), NP}, MOE_ERR_FORMAT,
     "tensor 0 name: string length 1099511627776 exceeds remaining", NULL},
    {"empty tensor name", {0}, {P(t_name_len[1], 8, 0), NP}, MOE_ERR_FORMAT,
     "tensor 1 name is empty", NULL},
    {"duplicate tensor", {.dup_tensor = 1}, {NP, NP}, MOE_ERR_FORMAT,
     "duplicate tensor name 'tok.weight'", NULL},
    {"n_dims 0", {0}, {P(t_ndims[0], 4, 0), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight': n_dims 0 not in 1..4", NULL},
    {"n_dims 5", {0}, {P(t_ndims[0], 4, 5), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight': n_dims 5 not in 1..4", NULL},
    {"dimension 0", {0}, {P(t_ne[0][1], 8, 0), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight': dimension 1 is 0", NULL},
    {"negative dimension", {0}, {P(t_ne[0][0], 8, 1ull << 63), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight': dimension 0 is 9223372036854775808, too large", NULL},
    {"element count overflow", {0}, {P(t_ne[0][1], 8, 1ull << 62), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight': shape [4, 4611686018427387904, 1, 1] overflows", NULL},
    {"byte count overflow", {0}, {P(t_ne[0][0], 8, 1ull << 62), P(t_ne[0][1], 8, 1)},
     MOE_ERR_FORMAT, "tensor 'tok.weight': shape [4611686018427387904, 1, 1, 1] overflows",
     NULL},
    {"unsupported type 77", {0}, {P(t_type[0], 4, 77), NP}, MOE_ERR_UNSUPPORTED,
     "tensor 'tok.weight': unsupported type id 77", NULL},
    {"removed type 4", {0}, {P(t_type[1], 4, 4), NP}, MOE_ERR_UNSUPPORTED,
     "tensor 'q.weight': unsupported type id 4", NULL},
    {"huge type", {0}, {P(t_type[2], 4, 0x80000000u), NP}, MOE_ERR_UNSUPPORTED,
     "tensor 'norm': unsupported type id 2147483648", NULL},
    {"row not a block multiple", {0}, {P(t_ne[1][0], 8, 33), NP}, MOE_ERR_FORMAT,
     "tensor 'q.weight': row length 33 not a multiple of the q8_0 block size 32", NULL},
    {"row not a k-block multiple", {.tensor_type1 = MOE_TYPE_Q4_K},
     {P(t_ne[1][0], 8, 128), NP}, MOE_ERR_FORMAT,
     "tensor 'q.weight': row length 128 not a multiple of the q4_k block size 256", NULL},
    {"misaligned offset", {0}, {P(t_off[1], 8, 13), NP}, MOE_ERR_FORMAT,
     "tensor 'q.weight': offset 13 not aligned to 32", NULL},
    {"misaligned offset 64", {.alignment = 64}, {P(t_off[2], 8, 32), NP}, MOE_ERR_FORMAT,
     "tensor 'norm': offset 32 not aligned to 64", NULL},
    {"offset outside file", {0}, {P(t_off[2], 8, 1u << 20), NP}, MOE_ERR_FORMAT,
     "tensor 'norm' data [", "outside file of"},
    {"offset wraps", {0}, {P(t_off[2], 8, UINT64_MAX - 31), NP}, MOE_ERR_FORMAT,
     "tensor 'norm' data at ", "+ 18446744073709551584 (16 bytes) outside file of"},
    {"data past end", {0}, {P(t_ne[0][1], 8, 1ull << 40), NP}, MOE_ERR_FORMAT,
     "tensor 'tok.weight' data [", "outside file of"},
    {"control chars escaped", {0}, {PD(t_name_len[0], 11, 1, '\n'), P(t_type[0], 4, 77)},
     MOE_ERR_UNSUPPORTED, "tensor 'tok\\x0aweight': unsupported type id 77", NULL},
};

static void expect_reject(const void *data, size_t n, moe_status st, const char *msg,
                          const char *msg2, const char *what)
{
    gguf_ctx *ctx = (gguf_ctx *)1;
    moe_status got = gguf_open_buffer(data, n, &ctx);
    const char *err = moe_last_error();
    ck_assert_msg(got != MOE_OK, "%s: accepted", what);
    ck_assert_ptr_null(ctx);
    ck_assert_msg(got == st, "%s: status %s, want %s (%s)", what, moe_strerror(got),
                  moe_strerror(st), err);
    ck_assert_msg(strstr(err, msg), "%s: message '%s' lacks '%s'", what, err, msg);
    ck_assert_msg(!msg2 || strstr(err, msg2), "%s: message '%s' lacks '%s'", what, err,
                  msg2);
    ck_assert_msg(!strchr(err, '\n'), "%s: message is not one line", what);
}

START_TEST(test_reject_table)
{
    const reject_case *c = &reject_cases[_i];
    fx_buf b = {0};
    fx_marks m;
    fx_standard(&b, &m, &c->opts);
    for (int k = 0; k < 2; k++) {
        if (c->p[k].mark == NOPATCH)
            continue;
        size_t off;
        memcpy(&off, (const char *)&m + c->p[k].mark, sizeof off);
        off += (size_t)c->p[k].delta;
        ck_assert_msg(off + (size_t)c->p[k].width <= b.n, "%s: patch outside", c->name);
        memcpy(b.p + off, &c->p[k].value, (size_t)c->p[k].width);
    }
    expect_reject(b.p, b.n, c->st, c->msg, c->msg2, c->name);
    fx_free(&b);
}
END_TEST

/* Every prefix shorter than the end of the last tensor's data must fail. */
START_TEST(test_truncation)
{
    fx_buf b = {0};
    fx_marks m;
    char what[64];
    fx_standard(&b, &m, NULL);
    for (size_t n = 0; n < m.data_end; n++) {
        /* a fresh copy of exactly n bytes, so ASan-less runs still notice
         * reads past the end through the valgrind-free path */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, b.p, n);
        gguf_ctx *ctx = NULL;
        moe_status st = gguf_open_buffer(cut, n, &ctx);
        const char *err = moe_last_error();
        snprintf(what, sizeof what, "prefix %zu", n);
        ck_assert_msg(st == MOE_ERR_FORMAT, "%s: status %s (%s)", what, moe_strerror(st),
                      err);
        ck_assert_msg(strstr(err, "truncated file") || strstr(err, "exceed") ||
                          strstr(err, "outside file"),
                      "%s: unexpected message '%s'", what, err);
        free(cut);
    }
    for (size_t n = m.data_end; n <= b.n; n++) {
        gguf_ctx *ctx = NULL;
        ck_assert_msg(gguf_open_buffer(b.p, n, &ctx) == MOE_OK, "prefix %zu: %s", n,
                      moe_last_error());
        gguf_close(ctx);
    }
    /* counts each plausible, together too many for the file */
    {
        uint64_t left = b.n - 24, nk = left / 13, nt = left / 32;
        char want[96];
        fx_buf c = {0};
        fx_raw(&c, b.p, b.n);
        fx_patch_u64(&c, m.n_kv, nk);
        fx_patch_u64(&c, m.n_tensors, nt);
        snprintf(want, sizeof want, "%llu keys and %llu tensors exceed file size",
                 (unsigned long long)nk, (unsigned long long)nt);
        expect_reject(c.p, c.n, MOE_ERR_FORMAT, want, NULL, "counts together");
        fx_free(&c);
    }
    expect_reject(b.p, 0, MOE_ERR_FORMAT,
                  "truncated file: header needs 24 bytes, file has 0", NULL, "empty");
    expect_reject(b.p, 10, MOE_ERR_FORMAT,
                  "truncated file: header needs 24 bytes, file has 10", NULL, "10 bytes");
    expect_reject(b.p, 3, MOE_ERR_FORMAT,
                  "truncated file: header needs 24 bytes, file has 3", NULL, "3 bytes");
    expect_reject(b.p, m.header_end - 4, MOE_ERR_FORMAT,
                  "truncated file: tensor 'norm' info needs 8 bytes at offset", NULL,
                  "in the last offset");
    expect_reject(b.p, m.t_type[1] + 2, MOE_ERR_FORMAT,
                  "truncated file: tensor 'q.weight' info needs 4 bytes", NULL,
                  "in a type");
    {
        char want[96];
        snprintf(want, sizeof want, "tensor 'norm' data [%zu, %zu) outside file of %zu bytes",
                 m.data_end - 16, m.data_end, m.data_end - 1);
        expect_reject(b.p, m.data_end - 1, MOE_ERR_FORMAT, want, NULL, "in the data");
    }
    /* inside the keys, with counts small enough to pass the early check */
    fx_patch_u64(&b, m.n_tensors, 0);
    fx_patch_u64(&b, m.n_kv, 2);
    expect_reject(b.p, m.u8_type + 4, MOE_ERR_FORMAT,
                  "truncated file: key 'test.u8' value needs 1 bytes", NULL,
                  "before a value");
    fx_patch_u64(&b, m.n_kv, 15);
    expect_reject(b.p, m.arr_type + 2, MOE_ERR_FORMAT,
                  "truncated file: key 'test.arr_i32' array type needs 4 bytes", NULL,
                  "in an array type");
    expect_reject(b.p, m.arr_len + 8 + 5, MOE_ERR_FORMAT,
                  "key 'test.arr_i32': array length 3 exceeds remaining 5 bytes", NULL,
                  "in array data");
    fx_free(&b);
}
END_TEST

/* Huge but individually plausible metadata hits the allocation cap. */
START_TEST(test_metadata_cap)
{
    fx_buf b = {0};
    const uint64_t n = 2000000; /* 12 bytes each in the file, 40 in memory */
    fx_raw(&b, "GGUF", 4);
    fx_u32(&b, 3);
    fx_u64(&b, 0);
    fx_u64(&b, 1);
    fx_str(&b, "big");
    fx_u32(&b, GGUF_TYPE_ARRAY);
    fx_u32(&b, GGUF_TYPE_ARRAY);
    fx_u64(&b, n);
    for (uint64_t j = 0; j < n; j++) {
        fx_u32(&b, GGUF_TYPE_UINT8);
        fx_u64(&b, 0);
    }
    expect_reject(b.p, b.n, MOE_ERR_NOMEM, "GGUF metadata needs more than the 64 MiB limit",
                  NULL, "metadata cap");
    /* a tenth of it is fine */
    fx_patch_u64(&b, 4 + 4 + 8 + 8 + 8 + 3 + 4 + 4, n / 10);
    b.n = 4 + 4 + 8 + 8 + 8 + 3 + 4 + 4 + 8 + (size_t)(n / 10) * 12;
    gguf_ctx *ctx = open_fixture(&b);
    ck_assert_uint_eq(gguf_arr_n(ctx, 0), n / 10);
    gguf_close(ctx);
    fx_free(&b);
}
END_TEST

START_TEST(test_open_errors)
{
    char path[512];
    gguf_ctx *ctx = (gguf_ctx *)1;
    moe_status st = gguf_open("/nonexistent/dir/x.gguf", &ctx);
    ck_assert_int_eq(st, MOE_ERR_IO);
    ck_assert_ptr_null(ctx);
    ck_assert(strstr(moe_last_error(), "cannot open '/nonexistent/dir/x.gguf'"));
    st = gguf_open("/", &ctx);
    ck_assert_int_eq(st, MOE_ERR_IO);
    ck_assert(strstr(moe_last_error(), "'/' is not a regular file"));

    tu_tmp_path(path, sizeof path, "empty.gguf");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    st = gguf_open(path, &ctx);
    ck_assert_int_eq(st, MOE_ERR_FORMAT);
    ck_assert(strstr(moe_last_error(), "header needs 24 bytes, file has 0"));

    /* a valid file through mmap */
    fx_buf b = {0};
    fx_standard(&b, NULL, NULL);
    f = fopen(path, "wb");
    ck_assert(fwrite(b.p, 1, b.n, f) == b.n);
    fclose(f);
    st = gguf_open(path, &ctx);
    ck_assert_msg(st == MOE_OK, "%s", moe_last_error());
    ck_assert_int_eq(gguf_n_tensors(ctx), 3);
    ck_assert(memcmp(gguf_tensor(ctx, 2)->data,
                     b.p + (gguf_data_offset(ctx) + gguf_tensor(ctx, 2)->offset), 16) == 0);
    gguf_close(ctx);
    /* the same file read into memory (gguf_open_copy): the same tensors
     * and bytes, and the same errors */
    st = gguf_open_copy(path, &ctx);
    ck_assert_msg(st == MOE_OK, "%s", moe_last_error());
    ck_assert_int_eq(gguf_n_tensors(ctx), 3);
    ck_assert_int_eq(gguf_file_size(ctx), b.n);
    for (int64_t i = 0; i < 3; i++)
        ck_assert(memcmp(gguf_tensor(ctx, i)->data,
                         b.p + (gguf_data_offset(ctx) + gguf_tensor(ctx, i)->offset),
                         gguf_tensor(ctx, i)->nbytes) == 0);
    {
        const gguf_tensor_info *t2 = gguf_tensor(ctx, 2);
        const off_t cut = (off_t)(gguf_data_offset(ctx) + t2->offset + t2->nbytes - 1);
        gguf_close(ctx);
        ck_assert(truncate(path, cut) == 0); /* the last tensor's last byte gone */
    }
    st = gguf_open_copy(path, &ctx);
    ck_assert_int_eq(st, MOE_ERR_FORMAT);
    ck_assert_ptr_null(ctx);
    ck_assert_msg(strstr(moe_last_error(), "outside file"), "%s", moe_last_error());
    unlink(path);
    st = gguf_open_copy(path, &ctx);
    ck_assert_int_eq(st, MOE_ERR_IO);
    ck_assert(strstr(moe_last_error(), "cannot open"));
    fx_free(&b);
    ck_assert_int_eq(gguf_open_buffer(NULL, 5, &ctx), MOE_ERR_INVALID_ARG);
}
END_TEST

/* ---- shared files --------------------------------------------------------- */

static void check_tensors_sane(const gguf_ctx *ctx, const char *rel)
{
    for (int64_t i = 0; i < gguf_n_tensors(ctx); i++) {
        const gguf_tensor_info *t = gguf_tensor(ctx, i);
        int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        ck_assert_msg(t->n_dims >= 1 && t->n_dims <= 4, "%s: %s", rel, t->name);
        ck_assert_msg(t->nbytes == quant_row_bytes(t->type, t->ne[0]) * (size_t)rows,
                      "%s: %s nbytes", rel, t->name);
        ck_assert_msg(t->offset % gguf_alignment(ctx) == 0, "%s: %s", rel, t->name);
        ck_assert_msg(gguf_data_offset(ctx) + t->offset + t->nbytes <= gguf_file_size(ctx),
                      "%s: %s", rel, t->name);
        ck_assert_ptr_eq(gguf_find_tensor(ctx, t->name), t);
    }
    for (int64_t i = 0; i < gguf_n_kv(ctx); i++)
        ck_assert_int_eq(gguf_find_key(ctx, gguf_kv_key(ctx, i)), i);
}

START_TEST(test_shared_files)
{
    char path[1024];
    int found = 0;
    for (size_t k = 0; k < N_SHARED; k++) {
        gguf_ctx *ctx;
        if (!tu_shared(path, sizeof path, shared_files[k], "gguf shared files"))
            continue;
        found++;
        moe_status st = gguf_open(path, &ctx);
        ck_assert_msg(st == MOE_OK, "%s: %s", shared_files[k], moe_last_error());
        ck_assert_uint_eq(gguf_version(ctx), 3);
        ck_assert_msg(gguf_get_str(ctx, "general.architecture"), "%s", shared_files[k]);
        int64_t tok = gguf_find_key(ctx, "tokenizer.ggml.tokens");
        ck_assert_int_eq(gguf_arr_type(ctx, tok), GGUF_TYPE_STRING);
        ck_assert_uint_gt(gguf_arr_n(ctx, tok), 100);
        ck_assert_int_eq(gguf_n_tensors(ctx) == 0, strncmp(shared_files[k], "vocab/", 6) == 0);
        check_tensors_sane(ctx, shared_files[k]);
        gguf_close(ctx);
    }
    if (!found)
        return;

    /* facts about the real model */
    if (tu_shared(path, sizeof path, "models/real/stories260K.gguf", "gguf stories260K")) {
        gguf_ctx *ctx;
        int64_t v;
        size_t len;
        ck_assert_int_eq(gguf_open(path, &ctx), MOE_OK);
        ck_assert_int_eq(gguf_n_tensors(ctx), 47);
        ck_assert_int_eq(gguf_n_kv(ctx), 21);
        ck_assert_str_eq(gguf_get_str(ctx, "general.architecture"), "llama");
        ck_assert(gguf_get_int(ctx, "llama.embedding_length", &v) && v == 64);
        ck_assert(gguf_get_int(ctx, "llama.block_count", &v) && v == 5);
        ck_assert(gguf_get_int(ctx, "llama.attention.head_count_kv", &v) && v == 4);
        int64_t i = gguf_find_key(ctx, "tokenizer.ggml.tokens");
        ck_assert_uint_eq(gguf_arr_n(ctx, i), 512);
        const char *s = gguf_arr_str(ctx, i, 1, &len);
        ck_assert(len == 3 && memcmp(s, "<s>", 3) == 0);
        const gguf_tensor_info *t = gguf_find_tensor(ctx, "token_embd.weight");
        ck_assert(t && t->type == MOE_TYPE_F32 && t->ne[0] == 64 && t->ne[1] == 512);
        t = gguf_find_tensor(ctx, "blk.4.ffn_down.weight");
        ck_assert(t && t->ne[0] == 172 && t->ne[1] == 64);
        gguf_close(ctx);
    }
    if (tu_shared(path, sizeof path, "models/synthetic/tiny-mixtral-256.q4_k_m.gguf",
                  "gguf q4_k_m")) {
        gguf_ctx *ctx;
        ck_assert_int_eq(gguf_open(path, &ctx), MOE_OK);
        const gguf_tensor_info *t = gguf_find_tensor(ctx, "blk.0.ffn_down_exps.weight");
        ck_assert(t && t->n_dims == 3 && t->ne[2] == 8 && t->type == MOE_TYPE_Q4_K);
        t = gguf_find_tensor(ctx, "output.weight");
        ck_assert(t && t->type == MOE_TYPE_Q6_K);
        t = gguf_find_tensor(ctx, "blk.0.attn_k.weight");
        ck_assert(t && t->type == MOE_TYPE_Q8_0);
        gguf_close(ctx);
    }
}
END_TEST

/* ---- writer --------------------------------------------------------------- */

/* Deep comparison of two arrays through the public API. */
static void same_array(const gguf_array *a, const gguf_array *b, const char *key)
{
    ck_assert_msg(gguf_array_type(a) == gguf_array_type(b), "%s: element type", key);
    ck_assert_msg(gguf_array_n(a) == gguf_array_n(b), "%s: length", key);
    gguf_type t = gguf_array_type(a);
    uint64_t n = gguf_array_n(a);
    if (t == GGUF_TYPE_STRING) {
        for (uint64_t j = 0; j < n; j++) {
            size_t la, lb;
            const char *sa = gguf_array_str(a, j, &la), *sb = gguf_array_str(b, j, &lb);
            ck_assert_msg(la == lb && memcmp(sa, sb, la) == 0, "%s[%llu]", key,
                          (unsigned long long)j);
        }
    } else if (t == GGUF_TYPE_ARRAY) {
        for (uint64_t j = 0; j < n; j++)
            same_array(gguf_array_elem(a, j), gguf_array_elem(b, j), key);
    } else {
        ck_assert_msg(memcmp(gguf_array_data(a), gguf_array_data(b),
                             (size_t)n * gguf_type_size(t)) == 0, "%s: data", key);
    }
}

static void same_ctx(const gguf_ctx *a, const gguf_ctx *b)
{
    ck_assert_int_eq(gguf_n_kv(a), gguf_n_kv(b));
    for (int64_t i = 0; i < gguf_n_kv(a); i++) {
        const char *key = gguf_kv_key(a, i);
        ck_assert_str_eq(key, gguf_kv_key(b, i));
        gguf_type t = gguf_kv_type(a, i);
        ck_assert_msg(t == gguf_kv_type(b, i), "%s: type", key);
        if (t == GGUF_TYPE_STRING) {
            size_t la, lb;
            const char *sa = gguf_kv_str(a, i, &la), *sb = gguf_kv_str(b, i, &lb);
            ck_assert_msg(la == lb && memcmp(sa, sb, la) == 0, "%s: value", key);
        } else if (t == GGUF_TYPE_ARRAY) {
            same_array(gguf_kv_array(a, i), gguf_kv_array(b, i), key);
        } else {
            ck_assert_msg(gguf_kv_u64(a, i) == gguf_kv_u64(b, i) &&
                              gguf_kv_u32(a, i) == gguf_kv_u32(b, i) &&
                              gguf_kv_u16(a, i) == gguf_kv_u16(b, i) &&
                              gguf_kv_u8(a, i) == gguf_kv_u8(b, i) &&
                              gguf_kv_bool(a, i) == gguf_kv_bool(b, i) &&
                              memcmp(&(double){gguf_kv_f64(a, i)},
                                     &(double){gguf_kv_f64(b, i)}, 8) == 0,
                          "%s: value", key);
        }
    }
    ck_assert_int_eq(gguf_n_tensors(a), gguf_n_tensors(b));
    for (int64_t i = 0; i < gguf_n_tensors(a); i++) {
        const gguf_tensor_info *ta = gguf_tensor(a, i), *tb = gguf_tensor(b, i);
        ck_assert_str_eq(ta->name, tb->name);
        ck_assert_int_eq(ta->type, tb->type);
        ck_assert_int_eq(ta->n_dims, tb->n_dims);
        ck_assert(memcmp(ta->ne, tb->ne, sizeof ta->ne) == 0);
        ck_assert_uint_eq(ta->nbytes, tb->nbytes);
        ck_assert_msg(memcmp(ta->data, tb->data, ta->nbytes) == 0, "%s: data", ta->name);
    }
}

static void write_copy(const gguf_ctx *src, const char *path)
{
    gguf_writer *w = gguf_writer_new();
    ck_assert_ptr_nonnull(w);
    for (int64_t i = 0; i < gguf_n_kv(src); i++)
        ck_assert_msg(gguf_writer_copy_kv(w, src, i) == MOE_OK, "%s", moe_last_error());
    for (int64_t i = 0; i < gguf_n_tensors(src); i++) {
        const gguf_tensor_info *t = gguf_tensor(src, i);
        ck_assert_msg(gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne,
                                             t->data) == MOE_OK,
                      "%s", moe_last_error());
    }
    ck_assert_msg(gguf_writer_write(w, path) == MOE_OK, "%s", moe_last_error());
    gguf_writer_free(w);
}

static bool same_file(const char *p1, const char *p2)
{
    size_t n1, n2;
    char *a = tu_read_file(p1, &n1), *b = tu_read_file(p2, &n2);
    bool same = a && b && n1 == n2 && memcmp(a, b, n1) == 0;
    free(a);
    free(b);
    return same;
}

/* read -> write -> read: same kvs and tensors; write again: same bytes.
 * Files laid out like the reference writer's come back byte-identical. */
static void roundtrip(const char *src_path, bool expect_identical)
{
    char p1[512], p2[512];
    gguf_ctx *a, *b;
    tu_tmp_path(p1, sizeof p1, "rt1.gguf");
    tu_tmp_path(p2, sizeof p2, "rt2.gguf");
    ck_assert_msg(gguf_open(src_path, &a) == MOE_OK, "%s", moe_last_error());
    write_copy(a, p1);
    ck_assert_msg(gguf_open(p1, &b) == MOE_OK, "%s: %s", src_path, moe_last_error());
    same_ctx(a, b);
    ck_assert_uint_eq(gguf_alignment(a), gguf_alignment(b));
    write_copy(b, p2);
    ck_assert_msg(same_file(p1, p2), "%s: rewrite differs", src_path);
    if (expect_identical)
        ck_assert_msg(same_file(src_path, p1), "%s: copy differs from the original",
                      src_path);
    gguf_close(a);
    gguf_close(b);
    unlink(p1);
    unlink(p2);
}

START_TEST(test_roundtrip_shared)
{
    char path[1024];
    for (size_t k = 0; k < N_SHARED; k++)
        if (tu_shared(path, sizeof path, shared_files[k], "gguf round trip"))
            roundtrip(path, true);
}
END_TEST

START_TEST(test_roundtrip_fixture)
{
    static const fx_opts opts[] = {{0}, {.alignment = 64}, {.alignment = 1},
                                   {.version = 2}, {.nest_depth = 8}};
    char path[512];
    tu_tmp_path(path, sizeof path, "fixture.gguf");
    for (size_t k = 0; k < sizeof opts / sizeof opts[0]; k++) {
        fx_buf b = {0};
        fx_standard(&b, NULL, &opts[k]);
        FILE *f = fopen(path, "wb");
        ck_assert(f && fwrite(b.p, 1, b.n, f) == b.n);
        fclose(f);
        /* the fixture pads like the writer, so v3 copies are identical */
        roundtrip(path, opts[k].version == 0);
        fx_free(&b);
    }
    unlink(path);
}
END_TEST

START_TEST(test_writer_values)
{
    char path[512];
    gguf_writer *w = gguf_writer_new();
    gguf_ctx *ctx;
    const uint8_t u8s[3] = {1, 2, 255};
    const int16_t i16s[2] = {-1, 300};
    const double f64s[2] = {1.5, -2.25};
    const uint8_t bools[2] = {1, 0};
    const char *strs[3] = {"x", "", "long string"};
    float f32[2 * 4];
    uint8_t q8[2 * 34];
    size_t len;
    int64_t v;

    for (int k = 0; k < 8; k++)
        f32[k] = (float)k * 0.5f;
    for (int k = 0; k < 68; k++)
        q8[k] = (uint8_t)(k * 3);
    tu_tmp_path(path, sizeof path, "writer.gguf");
    ck_assert_int_eq(gguf_writer_set_str(w, "general.architecture", "test"), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "a.u32", 7), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_i32(w, "a.i32", -7), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u64(w, "a.u64", 1ull << 40), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_f32(w, "a.f32", 0.125f), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_bool(w, "a.bool", true), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.u8s", GGUF_TYPE_UINT8, u8s, 3), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.i16s", GGUF_TYPE_INT16, i16s, 2), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.f64s", GGUF_TYPE_FLOAT64, f64s, 2), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.bools", GGUF_TYPE_BOOL, bools, 2), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr(w, "a.empty", GGUF_TYPE_INT32, NULL, 0), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "a.strs", strs, 3), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_str(w, "a.esc", "q\"\n\x01\\"), MOE_OK);
    /* replacing keeps the position and changes the type */
    ck_assert_int_eq(gguf_writer_set_str(w, "a.u32", "now a string"), MOE_OK);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "f", MOE_TYPE_F32, 2, (int64_t[]){4, 2},
                                            f32), MOE_OK);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "q", MOE_TYPE_Q8_0, 2, (int64_t[]){32, 2},
                                            q8), MOE_OK);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "z", MOE_TYPE_F16, 3,
                                            (int64_t[]){2, 3, 5}, NULL), MOE_OK);
    ck_assert_msg(gguf_writer_write(w, path) == MOE_OK, "%s", moe_last_error());
    gguf_writer_free(w);
    gguf_writer_free(NULL);

    ck_assert_msg(gguf_open(path, &ctx) == MOE_OK, "%s", moe_last_error());
    ck_assert_uint_eq(gguf_version(ctx), 3);
    ck_assert_int_eq(gguf_n_kv(ctx), 13);
    char fb[64];
    gguf_kv_format(ctx, key_of(ctx, "a.esc"), fb, sizeof fb, 4);
    ck_assert_str_eq(fb, "\"q\\\"\\n\\x01\\\\\"");
    ck_assert_str_eq(gguf_kv_key(ctx, 1), "a.u32");
    ck_assert_str_eq(gguf_get_str(ctx, "a.u32"), "now a string");
    ck_assert(gguf_get_int(ctx, "a.i32", &v) && v == -7);
    ck_assert(gguf_get_int(ctx, "a.u64", &v) && v == 1ll << 40);
    ck_assert(gguf_kv_f32(ctx, key_of(ctx, "a.f32")) == 0.125f);
    ck_assert(gguf_kv_bool(ctx, key_of(ctx, "a.bool")));
    int64_t i = key_of(ctx, "a.u8s");
    ck_assert(gguf_arr_type(ctx, i) == GGUF_TYPE_UINT8 && gguf_arr_n(ctx, i) == 3);
    ck_assert(memcmp(gguf_arr_data(ctx, i), u8s, 3) == 0);
    i = key_of(ctx, "a.i16s");
    ck_assert(memcmp(gguf_arr_data(ctx, i), i16s, 4) == 0);
    i = key_of(ctx, "a.f64s");
    ck_assert(memcmp(gguf_arr_data(ctx, i), f64s, 16) == 0);
    i = key_of(ctx, "a.bools");
    ck_assert(gguf_arr_type(ctx, i) == GGUF_TYPE_BOOL);
    ck_assert_uint_eq(gguf_arr_n(ctx, key_of(ctx, "a.empty")), 0);
    i = key_of(ctx, "a.strs");
    const char *s = gguf_arr_str(ctx, i, 2, &len);
    ck_assert(len == 11 && memcmp(s, "long string", 11) == 0);
    gguf_arr_str(ctx, i, 1, &len);
    ck_assert_uint_eq(len, 0);
    const gguf_tensor_info *t = gguf_find_tensor(ctx, "f");
    ck_assert(t && t->nbytes == sizeof f32 && memcmp(t->data, f32, sizeof f32) == 0);
    t = gguf_find_tensor(ctx, "q");
    ck_assert(t && t->offset == 32 && t->nbytes == 68 && memcmp(t->data, q8, 68) == 0);
    t = gguf_find_tensor(ctx, "z");
    ck_assert(t && t->n_dims == 3 && t->ne[2] == 5 && t->offset == 128 && t->nbytes == 60);
    for (size_t k = 0; k < t->nbytes; k++)
        ck_assert_uint_eq(((const uint8_t *)t->data)[k], 0);
    ck_assert_uint_eq(gguf_file_size(ctx) % 32, 0);
    gguf_close(ctx);
    unlink(path);
}
END_TEST

START_TEST(test_writer_alignment)
{
    char path[512];
    gguf_ctx *ctx;
    float x[3] = {1, 2, 3};
    tu_tmp_path(path, sizeof path, "align.gguf");
    for (size_t align = 1; align <= 4096; align *= 8) {
        gguf_writer *w = gguf_writer_new();
        gguf_writer_set_alignment(w, align);
        ck_assert_int_eq(gguf_writer_add_tensor(w, "a", MOE_TYPE_F32, 1, (int64_t[]){3}, x),
                         MOE_OK);
        ck_assert_int_eq(gguf_writer_add_tensor(w, "b", MOE_TYPE_F32, 1, (int64_t[]){3}, x),
                         MOE_OK);
        ck_assert_msg(gguf_writer_write(w, path) == MOE_OK, "%s", moe_last_error());
        gguf_writer_free(w);
        ck_assert_msg(gguf_open(path, &ctx) == MOE_OK, "%s", moe_last_error());
        ck_assert_uint_eq(gguf_alignment(ctx), align);
        ck_assert_int_eq(gguf_find_key(ctx, "general.alignment") >= 0, align != 32);
        ck_assert_uint_eq(gguf_data_offset(ctx) % align, 0);
        ck_assert_uint_eq(gguf_tensor(ctx, 1)->offset, (12 + align - 1) / align * align);
        ck_assert(memcmp(gguf_tensor(ctx, 1)->data, x, 12) == 0);
        gguf_close(ctx);
    }
    /* setting the key sets the alignment; bad values are refused */
    gguf_writer *w = gguf_writer_new();
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 16), MOE_OK);
    ck_assert_int_eq(gguf_writer_set_u32(w, "general.alignment", 12), MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "alignment 12 is not a power of two"));
    ck_assert_int_eq(gguf_writer_set_u64(w, "general.alignment", 16), MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "general.alignment must be uint32"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "a", MOE_TYPE_F32, 1, (int64_t[]){3}, x),
                     MOE_OK);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "b", MOE_TYPE_F32, 1, (int64_t[]){3}, x),
                     MOE_OK);
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    ck_assert_int_eq(gguf_open(path, &ctx), MOE_OK);
    ck_assert_uint_eq(gguf_tensor(ctx, 1)->offset, 16);
    gguf_close(ctx);
    gguf_writer_set_alignment(w, 24);
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "alignment 24 is not a power of two"));
    gguf_writer_free(w);
    unlink(path);
}
END_TEST

START_TEST(test_writer_rejects)
{
    gguf_writer *w = gguf_writer_new();
    float x[64] = {0};
    const char *strs[2] = {"a", NULL};
    ck_assert_int_eq(gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 1, (int64_t[]){4}, x),
                     MOE_OK);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "t", MOE_TYPE_F32, 1, (int64_t[]){4}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "duplicate tensor 't'"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", (moe_type)77, 1, (int64_t[]){4}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "unsupported type id 77"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", MOE_TYPE_F32, 0, (int64_t[]){4}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "n_dims 0 not in 1..4"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", MOE_TYPE_F32, 5,
                                            (int64_t[]){1, 1, 1, 1, 1}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", MOE_TYPE_Q8_0, 1, (int64_t[]){33}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "row length 33 not a multiple of 32"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", MOE_TYPE_F32, 2, (int64_t[]){4, 0}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "dimension 1 is 0"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "u", MOE_TYPE_F32, 2,
                                            (int64_t[]){1ll << 40, 1ll << 40}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "shape overflows"));
    ck_assert_int_eq(gguf_writer_add_tensor(w, "", MOE_TYPE_F32, 1, (int64_t[]){4}, x),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(gguf_writer_set_arr(w, "k", GGUF_TYPE_STRING, x, 1),
                     MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "is not numeric"));
    ck_assert_int_eq(gguf_writer_set_arr(w, "k", GGUF_TYPE_BOOL, (uint8_t[]){0, 2}, 2),
                     MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(gguf_writer_set_arr_str(w, "k", strs, 2), MOE_ERR_INVALID_ARG);
    ck_assert(strstr(moe_last_error(), "string 1 is NULL"));
    ck_assert_int_eq(gguf_writer_set_u32(w, "", 1), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(gguf_writer_set_str(w, "k", NULL), MOE_ERR_INVALID_ARG);
    ck_assert_int_eq(gguf_writer_copy_kv(w, NULL, 0), MOE_ERR_INVALID_ARG);
    gguf_writer_free(w);
}
END_TEST

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    int n = 0;
    ck_assert_ptr_nonnull(d);
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* A failed write never clobbers the existing file and leaves no temp file. */
START_TEST(test_writer_atomic)
{
    char dir[512], path[600];
    static float big[1 << 16];
    gguf_ctx *ctx;
    tu_tmp_path(dir, sizeof dir, "atomic");
    ck_assert(mkdir(dir, 0700) == 0 || errno == EEXIST);
    snprintf(path, sizeof path, "%s/m.gguf", dir);

    gguf_writer *w = gguf_writer_new();
    gguf_writer_set_str(w, "general.name", "first");
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    gguf_writer_free(w);

    /* an I/O failure halfway (file size limit) */
    w = gguf_writer_new();
    gguf_writer_set_str(w, "general.name", "second");
    gguf_writer_add_tensor(w, "big", MOE_TYPE_F32, 1, (int64_t[]){1 << 16}, big);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl, old;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    rl = old;
    rl.rlim_cur = 100000;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
    moe_status st = gguf_writer_write(w, path);
    ck_assert_int_eq(st, MOE_ERR_IO);
    ck_assert_msg(strstr(moe_last_error(), "cannot write"), "%s", moe_last_error());
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(gguf_open(path, &ctx), MOE_OK);
    ck_assert_str_eq(gguf_get_str(ctx, "general.name"), "first");
    gguf_close(ctx);

    /* an unwritable place */
    st = gguf_writer_write(w, "/nonexistent/dir/m.gguf");
    ck_assert_int_eq(st, MOE_ERR_IO);
    ck_assert(strstr(moe_last_error(), "cannot create a temp file"));

    /* success replaces the file */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    ck_assert_int_eq(gguf_writer_write(w, path), MOE_OK);
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(gguf_open(path, &ctx), MOE_OK);
    ck_assert_str_eq(gguf_get_str(ctx, "general.name"), "second");
    ck_assert_uint_eq(gguf_find_tensor(ctx, "big")->nbytes, sizeof big);
    gguf_close(ctx);
    gguf_writer_free(w);
    unlink(path);
    rmdir(dir);
}
END_TEST

START_TEST(test_type_names)
{
    ck_assert_str_eq(gguf_type_name(GGUF_TYPE_UINT8), "uint8");
    ck_assert_str_eq(gguf_type_name(GGUF_TYPE_FLOAT64), "float64");
    ck_assert_str_eq(gguf_type_name(GGUF_TYPE_ARRAY), "array");
    ck_assert_str_eq(gguf_type_name(GGUF_TYPE_COUNT), "unknown");
    ck_assert_uint_eq(gguf_type_size(GGUF_TYPE_INT16), 2);
    ck_assert_uint_eq(gguf_type_size(GGUF_TYPE_STRING), 0);
    ck_assert_uint_eq(gguf_type_size((gguf_type)99), 0);
}
END_TEST

Suite *gguf_suite(void);
Suite *gguf_suite(void)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("reader");
    tcase_add_test(tc, test_fixture_values);
    tcase_add_test(tc, test_fixture_variants);
    tcase_add_loop_test(tc, test_reject_table, 0,
                        (int)(sizeof reject_cases / sizeof reject_cases[0]));
    tcase_add_test(tc, test_truncation);
    tcase_add_test(tc, test_metadata_cap);
    tcase_add_test(tc, test_open_errors);
    tcase_add_test(tc, test_shared_files);
    tcase_add_test(tc, test_type_names);
    suite_add_tcase(s, tc);
    tc = tcase_create("writer");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_roundtrip_shared);
    tcase_add_test(tc, test_roundtrip_fixture);
    tcase_add_test(tc, test_writer_values);
    tcase_add_test(tc, test_writer_alignment);
    tcase_add_test(tc, test_writer_rejects);
    tcase_add_test(tc, test_writer_atomic);
    suite_add_tcase(s, tc);
    return s;
}
