/*
 * threads.h - a small persistent pthread pool for data-parallel kernels.
 * The calling thread takes part as thread 0. Depends on pthreads only.
 */
#ifndef MOE_THREADS_H
#define MOE_THREADS_H

typedef struct tp_pool tp_pool;
/* fn runs once on each of nth threads with ith in [0, nth). */
typedef void (*tp_fn)(void *arg, int ith, int nth);

tp_pool *tp_create(int n_threads); /* NULL on failure */
void tp_free(tp_pool *p);
int tp_n_threads(const tp_pool *p);
/* Run fn on all threads and wait for all of them. */
void tp_run(tp_pool *p, tp_fn fn, void *arg);

#endif
