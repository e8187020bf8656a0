/*
 * synth.h - random-weight models of realistic shapes, for benchmarks and
 * tests (`moe-studio synth`), and a memory read-bandwidth probe for `bench`.
 * Uses the GGUF writer and the quantizers; knows nothing of the UI.
 */
#ifndef MOE_SYNTH_H
#define MOE_SYNTH_H

#include <stdint.h>

#include "moe.h"
#include "quant.h"

typedef struct {
    const char *name;   /* "granite-moe-1b", "olmoe-7b", "llama-1b", "tiny-moe" */
    const char *arch;   /* GGUF architecture written */
    int n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv;
    int n_ff;           /* dense FFN (0 for pure MoE) */
    int n_expert, n_expert_used, n_ff_exp;
} synth_shape;

/* NULL-terminated table of known shapes; lookup by name (NULL if unknown). */
const synth_shape *synth_shapes(void);
const synth_shape *synth_find_shape(const char *name);

/* Write a random-weight model (weights of type `type`, norms f32) with a
 * working SentencePiece-style vocabulary to path, atomically. */
moe_status synth_write(const synth_shape *shape, moe_type type, uint64_t seed,
                       const char *path, moe_progress_fn progress, void *ud);

/* Measured memory read bandwidth in GB/s using n_threads threads streaming a
 * buffer much larger than the last-level cache. */
double synth_read_bandwidth(int n_threads);
/* Median read bandwidth in GB/s of streaming the bytes [p, p+n) (e.g. the
 * weight mapping decode reads) with n_threads threads; see synth.c for the
 * method. 0 on failure or n < 1 MiB. */
double synth_read_bandwidth_at(const void *p, size_t n, int n_threads);

#endif
