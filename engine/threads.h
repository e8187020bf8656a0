/*
 * threads.h - a small persistent pthread pool for data-parallel kernels.
 *
 * Work is cut into chunks that threads claim one at a time, so a thread
 * that the OS does not schedule (a shared, oversubscribed machine) holds
 * back no more than the chunk it is in: the caller takes part and finishes
 * whatever the others did not claim. Depends on pthreads only.
 */
#ifndef MOE_THREADS_H
#define MOE_THREADS_H

#include <stdint.h>

typedef struct tp_pool tp_pool;
/* Process chunk number `chunk`; ith (0 = the calling thread) identifies the
 * executing thread, e.g. for per-thread scratch. */
typedef void (*tp_chunk_fn)(void *arg, int ith, int64_t chunk);

tp_pool *tp_create(int n_threads); /* NULL on failure */
void tp_free(tp_pool *p);
int tp_n_threads(const tp_pool *p);
/* Run fn on chunks 0..n_chunks-1, each exactly once, and wait for all. */
void tp_run_chunks(tp_pool *p, int64_t n_chunks, tp_chunk_fn fn, void *arg);

#endif
