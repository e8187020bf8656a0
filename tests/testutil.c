/*
 * testutil.c - helpers shared by the Check suites.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

const char *tu_shared(char *buf, size_t n, const char *rel, const char *test)
{
    const char *root = getenv("MOE_SHARED");
    struct stat st;
    if (!root || !*root)
        root = "../shared";
    snprintf(buf, n, "%s/%s", root, rel);
    if (stat(buf, &st) != 0) {
        printf("SKIP: %s: %s absent\n", test, buf);
        fflush(stdout);
        return NULL;
    }
    return buf;
}

const char *tu_tmp_path(char *buf, size_t n, const char *name)
{
    static char dir[256];
    if (!dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/moe-check-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(dir)) {
            perror("mkdtemp");
            abort();
        }
    }
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}

char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long sz;
    if (!f)
        return NULL;
    if (fseek(f, 0, SEEK_END) != 0 || (sz = ftell(f)) < 0 ||
        fseek(f, 0, SEEK_SET) != 0)
        goto out;
    buf = malloc((size_t)sz + 1);
    if (!buf)
        goto out;
    if (fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        buf = NULL;
        goto out;
    }
    buf[sz] = '\0';
    if (len)
        *len = (size_t)sz;
out:
    fclose(f);
    return buf;
}
