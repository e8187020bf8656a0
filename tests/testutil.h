/*
 * testutil.h - helpers shared by the Check suites: where ../shared is,
 * SKIP reporting, temp paths.
 */
#ifndef MOE_TESTUTIL_H
#define MOE_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>

/* Path of a file under $MOE_SHARED (default ../shared) written into buf;
 * returns NULL and prints "SKIP: <test>: <path> absent" if it is missing. */
const char *tu_shared(char *buf, size_t n, const char *rel, const char *test);
/* A fresh path in a per-run temp directory (created on first use). */
const char *tu_tmp_path(char *buf, size_t n, const char *name);
/* Read a whole file; caller frees. NULL on failure. */
char *tu_read_file(const char *path, size_t *len);

#endif
