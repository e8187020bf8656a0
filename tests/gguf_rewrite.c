/*
 * gguf_rewrite.c - see gguf_rewrite.h.
 */
#include "config.h"

#include <check.h>
#include <stdlib.h>

#include "gguf_rewrite.h"

void tr_rewrite(const char *src, const char *dst, tr_tensor_fn fn, void *arg)
{
    gguf_ctx *g = NULL;
    gguf_writer *w = gguf_writer_new();
    void **bufs;
    int64_t nb = 0;
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(gguf_open(src, &g), MOE_OK);
    bufs = calloc((size_t)gguf_n_tensors(g) + 1, sizeof *bufs);
    ck_assert_ptr_nonnull(bufs);
    for (int64_t i = 0; i < gguf_n_kv(g); i++)
        ck_assert_int_eq(gguf_writer_copy_kv(w, g, i), MOE_OK);
    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_info *t = gguf_tensor(g, i);
        moe_type type = t->type;
        void *data = fn(t, &type, arg);
        if (data)
            bufs[nb++] = data;
        ck_assert_int_eq(gguf_writer_add_tensor(w, t->name, type, t->n_dims, t->ne,
                                                data ? data : t->data),
                         MOE_OK);
    }
    ck_assert_int_eq(gguf_writer_write(w, dst), MOE_OK);
    gguf_writer_free(w);
    gguf_close(g);
    while (nb > 0)
        free(bufs[--nb]);
    free(bufs);
}
