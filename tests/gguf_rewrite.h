/*
 * gguf_rewrite.h - copy a GGUF file tensor by tensor with some tensors
 * replaced (a test fixture: a model with duplicated experts, a quantized
 * copy, ...). Uses engine/gguf.c's reader and writer; Check asserts.
 */
#ifndef MOE_GGUF_REWRITE_H
#define MOE_GGUF_REWRITE_H

#include "gguf.h"

/* Return the replacement data of tensor t (malloc'd; the rewrite frees it)
 * and set *type if it changes, or NULL to copy t as it is. The shape stays. */
typedef void *(*tr_tensor_fn)(const gguf_tensor_info *t, moe_type *type, void *arg);

/* Write dst: src's metadata, and its tensors in order through fn. */
void tr_rewrite(const char *src, const char *dst, tr_tensor_fn fn, void *arg);

#endif
