/*
 * threads.c - persistent worker pool for the forward pass.
 *
 * A forward pass dispatches hundreds of small parallel jobs per token, so
 * wake-up latency matters: workers spin briefly on a generation counter
 * before sleeping on a condition variable. Chunks are claimed through an
 * atomic counter. A worker joins a job only while it is open; the caller
 * closes it once every chunk is claimed and then waits only for workers
 * that joined, never for one that has not been scheduled yet.
 * Depends on pthreads and C11 atomics only.
 */
#include "config.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threads.h"

#define TP_SPIN_ITERS 4000  /* worker spins before sleeping */
#define TP_WAIT_SPINS 20000 /* caller spins before yielding */

/* ctrl word: generation in the high 32 bits, bit 31 = open, bits 0-30 =
 * workers inside the job */
#define TP_OPEN ((uint64_t)1 << 31)
#define TP_ACTIVE_MASK (TP_OPEN - 1)

struct tp_pool {
    int n_threads;
    pthread_t *tids;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t ctrl;
    atomic_int stop;
    atomic_int_fast64_t next; /* next chunk to claim */
    int64_t n_chunks;
    tp_chunk_fn fn;
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

static void tp_claim_all(tp_pool *p, int ith)
{
    for (;;) {
        int64_t c = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (c >= p->n_chunks)
            return;
        p->fn(p->arg, ith, c);
    }
}

static void *tp_main(void *arg)
{
    tp_worker *w = arg;
    tp_pool *p = w->pool;
    int ith = w->ith;
    uint64_t seen_gen = 0;
    free(w);
    for (;;) {
        uint64_t ctrl;
        long spins = 0;
        while (((ctrl = atomic_load_explicit(&p->ctrl, memory_order_acquire)) >> 32) ==
                   seen_gen &&
               !atomic_load(&p->stop)) {
            if (++spins < TP_SPIN_ITERS) {
                if (spins % 256 == 0)
                    sched_yield();
                else
                    tp_pause();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while ((atomic_load(&p->ctrl) >> 32) == seen_gen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            break;
        seen_gen = ctrl >> 32;
        /* join while the job is open and still the one we saw */
        while ((ctrl >> 32) == seen_gen && (ctrl & TP_OPEN)) {
            if (atomic_compare_exchange_weak_explicit(&p->ctrl, &ctrl, ctrl + 1,
                                                      memory_order_acq_rel,
                                                      memory_order_acquire)) {
                tp_claim_all(p, ith);
                atomic_fetch_sub_explicit(&p->ctrl, 1, memory_order_release);
                break;
            }
        }
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
    if (!p->tids) {
        p->n_threads = 1;
        tp_free(p);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        tp_worker *w = malloc(sizeof *w);
        if (w) {
            w->pool = p;
            w->ith = i;
        }
        if (!w || pthread_create(&p->tids[i], NULL, tp_main, w) != 0) {
            free(w);
            p->n_threads = i; /* join the ones started */
            tp_free(p);
            return NULL;
        }
    }
    return p;
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

void tp_run_chunks(tp_pool *p, int64_t n_chunks, tp_chunk_fn fn, void *arg)
{
    uint64_t ctrl, gen;
    if (n_chunks <= 0)
        return;
    if (!p || p->n_threads == 1 || n_chunks == 1) {
        for (int64_t c = 0; c < n_chunks; c++)
            fn(arg, 0, c);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    p->n_chunks = n_chunks;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    /* publish: new generation, open, nobody inside */
    gen = (atomic_load(&p->ctrl) >> 32) + 1;
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->ctrl, gen << 32 | TP_OPEN, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    tp_claim_all(p, 0);

    /* close: late workers must not join any more */
    ctrl = atomic_load(&p->ctrl);
    while (!atomic_compare_exchange_weak(&p->ctrl, &ctrl, ctrl & ~TP_OPEN))
        ;
    /* wait for the workers that joined (they hold claimed chunks) */
    for (long spins = 0; atomic_load_explicit(&p->ctrl, memory_order_acquire) & TP_ACTIVE_MASK;
         spins++) {
        if (spins < TP_WAIT_SPINS)
            tp_pause();
        else
            sched_yield();
    }
}
