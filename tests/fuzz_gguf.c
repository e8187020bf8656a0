/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader: parse a buffer, then
 * walk every key (all array depths, every string byte) and every tensor's
 * data, and copy all keys into a writer. Built by `make fuzz` with clang,
 * ASan and UBSan; `make fuzz-run` seeds it from tests/gguf_fixtures.c.
 */
#include "config.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint64_t sink;

static uint64_t touch(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = n;
    /* first, last and a stride of bytes: ASan flags any out-of-bounds one */
    for (size_t k = 0; k < n; k += 1 + k / 4)
        h = h * 31 + b[k];
    if (n)
        h += b[n - 1];
    return h;
}

static uint64_t walk_array(const gguf_array *a)
{
    gguf_type t = gguf_array_type(a);
    uint64_t n = gguf_array_n(a), h = t + n;
    if (t == GGUF_TYPE_STRING) {
        for (uint64_t j = 0; j < n; j++) {
            size_t len;
            const char *s = gguf_array_str(a, j, &len);
            h += touch(s, len);
        }
    } else if (t == GGUF_TYPE_ARRAY) {
        for (uint64_t j = 0; j < n; j++)
            h += walk_array(gguf_array_elem(a, j));
        if (gguf_array_elem(a, n) != NULL)
            __builtin_trap();
    } else {
        h += touch(gguf_array_data(a), (size_t)n * gguf_type_size(t));
    }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf_ctx *ctx = NULL;
    uint64_t h = 0;
    if (gguf_open_buffer(data, size, &ctx) != MOE_OK) {
        if (ctx || moe_last_error()[0] == '\0')
            __builtin_trap(); /* failures must leave no ctx and say why */
        return 0;
    }
    h += gguf_version(ctx) + gguf_alignment(ctx) + gguf_file_size(ctx);
    for (int64_t i = 0; i < gguf_n_kv(ctx); i++) {
        const char *key = gguf_kv_key(ctx, i);
        size_t len;
        int64_t iv;
        double dv;
        bool bv;
        if (gguf_find_key(ctx, key) != i)
            __builtin_trap();
        h += touch(key, strlen(key));
        switch (gguf_kv_type(ctx, i)) {
        case GGUF_TYPE_STRING: {
            const char *s = gguf_kv_str(ctx, i, &len);
            if (!s || s[len] != '\0')
                __builtin_trap();
            h += touch(s, len);
            break;
        }
        case GGUF_TYPE_ARRAY:
            h += walk_array(gguf_kv_array(ctx, i));
            h += gguf_arr_n(ctx, i) + (uintptr_t)gguf_arr_data(ctx, i);
            gguf_arr_str(ctx, i, 0, &len);
            break;
        default: {
            double f64 = gguf_kv_f64(ctx, i);
            float f32 = gguf_kv_f32(ctx, i);
            uint64_t bits64;
            uint32_t bits32;
            memcpy(&bits64, &f64, 8);
            memcpy(&bits32, &f32, 4);
            h += gguf_kv_u8(ctx, i) + (uint64_t)gguf_kv_i8(ctx, i) + gguf_kv_u16(ctx, i) +
                 (uint64_t)gguf_kv_i16(ctx, i) + gguf_kv_u32(ctx, i) +
                 (uint64_t)gguf_kv_i32(ctx, i) + gguf_kv_u64(ctx, i) +
                 (uint64_t)gguf_kv_i64(ctx, i) + bits64 + bits32 + gguf_kv_bool(ctx, i);
            break;
        }
        }
        char fb[96];
        size_t need = gguf_kv_format(ctx, i, fb, sizeof fb, 4);
        if (strlen(fb) != (need < sizeof fb ? need : sizeof fb - 1))
            __builtin_trap();
        h += need;
        h += gguf_get_int(ctx, key, &iv) + gguf_get_float(ctx, key, &dv) +
             gguf_get_bool(ctx, key, &bv) + (gguf_get_str(ctx, key) != NULL);
    }
    for (int64_t i = 0; i < gguf_n_tensors(ctx); i++) {
        const gguf_tensor_info *t = gguf_tensor(ctx, i);
        if (gguf_find_tensor(ctx, t->name) != t)
            __builtin_trap();
        if ((const uint8_t *)t->data < data ||
            t->nbytes > (size_t)(data + size - (const uint8_t *)t->data))
            __builtin_trap();
        h += touch(t->data, t->nbytes) + (uint64_t)t->ne[0] * (uint64_t)t->n_dims;
    }
    /* copying every key into a writer must succeed */
    gguf_writer *w = gguf_writer_new();
    if (w) {
        for (int64_t i = 0; i < gguf_n_kv(ctx); i++)
            if (gguf_writer_copy_kv(w, ctx, i) != MOE_OK)
                __builtin_trap();
        gguf_writer_free(w);
    }
    sink = h;
    gguf_close(ctx);
    return 0;
}
