/*
 * status.c - status strings, per-thread error detail and the log callback.
 * Depends on libc only.
 */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "util.h"

static const char *const status_names[] = {
    [MOE_OK] = "ok",
    [MOE_ERR_IO] = "i/o error",
    [MOE_ERR_FORMAT] = "bad file format",
    [MOE_ERR_UNSUPPORTED] = "unsupported",
    [MOE_ERR_NOMEM] = "out of memory",
    [MOE_ERR_INVALID_ARG] = "invalid argument",
    [MOE_ERR_CANCELLED] = "cancelled",
    [MOE_ERR_FULL] = "context full",
};
_Static_assert(sizeof status_names / sizeof status_names[0] == MOE_STATUS_COUNT,
               "status_names must cover moe_status");

static _Thread_local char last_error[512];

static moe_log_fn log_fn;
static void *log_ud;

const char *moe_strerror(moe_status st)
{
    if ((unsigned)st >= MOE_STATUS_COUNT)
        return "unknown status";
    return status_names[st];
}

const char *moe_last_error(void)
{
    return last_error;
}

moe_status moe_fail(moe_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return st;
}

void moe_log_set(moe_log_fn fn, void *ud)
{
    log_fn = fn;
    log_ud = ud;
}

void moe_log(moe_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    if (!log_fn)
        return;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    log_fn(level, buf, log_ud);
}

void *util_room(void *v, size_t *cap, size_t n, size_t elem, size_t first)
{
    size_t want, bytes;
    void *nv;
    if (n < *cap)
        return v;
    want = *cap ? 2 * *cap : first;
    if (want <= *cap || !util_mul_size(want, elem, &bytes))
        return NULL;
    nv = realloc(v, bytes);
    if (nv)
        *cap = want;
    return nv;
}

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
