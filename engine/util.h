/*
 * util.h - small internal helpers shared by engine modules: error detail,
 * logging, checked size arithmetic. Internal to engine/; not installed.
 */
#ifndef MOE_UTIL_H
#define MOE_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "moe.h"

/* Set this thread's error detail (printf-style) and return st. */
moe_status moe_fail(moe_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void moe_log(moe_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Checked arithmetic: return false on overflow. */
static inline bool util_mul_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool util_add_size(size_t a, size_t b, size_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

/* For arrays that double as they fill: when n == *cap, v is reallocated to
 * twice *cap elements of elem bytes (first when *cap is 0) and *cap
 * updated. Returns the array, or NULL when out of memory (v and *cap then
 * unchanged). */
void *util_room(void *v, size_t *cap, size_t n, size_t elem, size_t first);

/* Monotonic time in seconds. */
double util_now(void);

#endif
