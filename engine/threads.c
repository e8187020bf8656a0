/*
 * threads.c - persistent worker pool for the forward pass.
 *
 * A forward pass dispatches hundreds of small parallel jobs per token, so
 * wake-up latency matters more than idle CPU: workers spin on a generation
 * counter for a while before sleeping on a condition variable. Depends on
 * pthreads and C11 atomics only.
 */
#include "config.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threads.h"

#define TP_SPIN_ITERS 4000 /* worker spins before sleeping */
#define TP_WAIT_SPINS 20000  /* caller spins before yielding */

struct tp_pool {
    int n_threads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;      /* bumped once per job */
    atomic_int n_done;    /* workers finished with the current job */
    atomic_int stop;
    tp_fn fn;
    void *arg;
};

typedef struct {
    tp_pool *pool;
    int ith;
} tp_worker;

static inline void tp_pause(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *tp_main(void *p)
{
    tp_worker *w = p;
    tp_pool *pool = w->pool;
    int ith = w->ith;
    unsigned seen = 0;
    free(w);
    for (;;) {
        unsigned g;
        long spins = 0;
        while ((g = atomic_load_explicit(&pool->gen, memory_order_acquire)) == seen &&
               !atomic_load(&pool->stop)) {
            if (++spins < TP_SPIN_ITERS) {
                if (spins % 256 == 0)
                    sched_yield();
                else
                    tp_pause();
                continue;
            }
            pthread_mutex_lock(&pool->mu);
            while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv, &pool->mu);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop))
            break;
        seen = g;
        pool->fn(pool->arg, ith, pool->n_threads);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

tp_pool *tp_create(int n_threads)
{
    tp_pool *p;
    if (n_threads < 1)
        n_threads = 1;
    p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->tids = calloc((size_t)n_threads, sizeof *p->tids);
    if (!p->tids)
        goto fail;
    for (int i = 1; i < n_threads; i++) {
        tp_worker *w = malloc(sizeof *w);
        if (!w)
            goto fail_threads;
        w->pool = p;
        w->ith = i;
        if (pthread_create(&p->tids[i], NULL, tp_main, w) != 0) {
            free(w);
            goto fail_threads;
        }
        continue;
    fail_threads:
        p->n_threads = i; /* join the ones started */
        tp_free(p);
        return NULL;
    }
    return p;
fail:
    free(p->tids);
    free(p);
    return NULL;
}

void tp_free(tp_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->tids[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->tids);
    free(p);
}

int tp_n_threads(const tp_pool *p)
{
    return p ? p->n_threads : 1;
}

void tp_run(tp_pool *p, tp_fn fn, void *arg)
{
    int n_workers;
    if (!p || p->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    n_workers = p->n_threads - 1;
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->n_done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n_threads);
    /* Spin briefly, then yield: on an oversubscribed machine a worker may
     * be waiting for this very core. */
    for (long spins = 0;
         atomic_load_explicit(&p->n_done, memory_order_acquire) < n_workers; spins++) {
        if (spins < TP_WAIT_SPINS)
            tp_pause();
        else
            sched_yield();
    }
}
