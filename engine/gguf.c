/*
 * gguf.c - GGUF v2/v3 reader and GGUF v3 writer.
 *
 * Owns the byte format only: parsing and validating a file (mmap'd read-only
 * or a caller's buffer), lookups of keys and tensors, and writing a file
 * atomically. Every count, length, type, shape and offset read from a file is
 * checked before it is used; metadata allocations are capped. Depends on
 * libc and the block-size table of quant.h; knows nothing about models and
 * never prints. Assumes a little-endian host (as the format does).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "util.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c assumes a little-endian host"
#endif

#define GGUF_HEADER_BYTES 24
/* Smallest possible encodings, used to reject huge counts before allocating:
 * a kv is a key length (8), a value type (4) and at least one value byte; a
 * tensor info is a name length (8), n_dims (4), one dim (8), type (4) and
 * offset (8). */
#define GGUF_MIN_KV_BYTES 13
#define GGUF_MIN_TENSOR_BYTES 32
#define GGUF_META_CAP ((size_t)64 << 20)
#define GGUF_MAX_NEST 8

/* ---- value types ---------------------------------------------------------- */

static const struct {
    const char *name;
    size_t size; /* 0 = variable (string, array) */
} type_info[] = {
    [GGUF_TYPE_UINT8] = {"uint8", 1},     [GGUF_TYPE_INT8] = {"int8", 1},
    [GGUF_TYPE_UINT16] = {"uint16", 2},   [GGUF_TYPE_INT16] = {"int16", 2},
    [GGUF_TYPE_UINT32] = {"uint32", 4},   [GGUF_TYPE_INT32] = {"int32", 4},
    [GGUF_TYPE_FLOAT32] = {"float32", 4}, [GGUF_TYPE_BOOL] = {"bool", 1},
    [GGUF_TYPE_STRING] = {"string", 0},   [GGUF_TYPE_ARRAY] = {"array", 0},
    [GGUF_TYPE_UINT64] = {"uint64", 8},   [GGUF_TYPE_INT64] = {"int64", 8},
    [GGUF_TYPE_FLOAT64] = {"float64", 8},
};
_Static_assert(sizeof type_info / sizeof type_info[0] == GGUF_TYPE_COUNT,
               "type_info must cover gguf_type");

const char *gguf_type_name(gguf_type t)
{
    if ((unsigned)t >= GGUF_TYPE_COUNT)
        return "unknown";
    return type_info[t].name;
}

size_t gguf_type_size(gguf_type t)
{
    if ((unsigned)t >= GGUF_TYPE_COUNT)
        return 0;
    return type_info[t].size;
}

/* smallest encoding of one element of type t inside an array */
static size_t type_min_bytes(gguf_type t)
{
    if (t == GGUF_TYPE_STRING)
        return 8;
    if (t == GGUF_TYPE_ARRAY)
        return 12;
    return type_info[t].size;
}

static bool is_pow2(uint64_t v)
{
    return v != 0 && (v & (v - 1)) == 0;
}

/* Printable, bounded rendering of a name from a file for error messages. */
static const char *show(const char *s, size_t n, char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t k = 0; k < n && o + 5 < cap; k++) {
        unsigned char ch = (unsigned char)s[k];
        if (o + 8 >= cap && k + 1 < n) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (ch >= 0x20 && ch < 0x7f && ch != '\'' && ch != '\\') {
            buf[o++] = (char)ch;
        } else {
            snprintf(buf + o, cap - o, "\\x%02x", ch);
            o += 4;
        }
    }
    buf[o] = '\0';
    return buf;
}
#define SHOW_CAP 72

/* ---- reader structures ---------------------------------------------------- */

struct gguf_array {
    gguf_type type;         /* element type */
    uint64_t n;
    const uint8_t *data;    /* first element in the buffer */
    const uint8_t **strs;   /* STRING elements: each one's length prefix */
    gguf_array *sub;        /* ARRAY elements: the nested arrays */
};

typedef struct {
    char *key;              /* NUL-terminated copy */
    gguf_type type;
    const uint8_t *val;     /* scalar value bytes in the buffer */
    char *str;              /* STRING: NUL-terminated copy */
    size_t str_len;
    gguf_array arr;         /* ARRAY */
    size_t span_off;        /* type id + value bytes, for gguf_writer_copy_kv */
    size_t span_len;
} gguf_kv;

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char mem[];
} arena_block;

struct gguf_ctx {
    const uint8_t *base;
    size_t size;
    void *map;              /* owned mapping, or NULL for a caller's buffer */
    size_t map_size;
    uint32_t version;
    size_t alignment;
    size_t data_off;        /* start of the tensor data section */
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    gguf_tensor_info *tensors;
    int64_t *kv_hash;       /* open addressing, -1 = empty */
    int64_t *t_hash;
    size_t kv_hash_n, t_hash_n;
    arena_block *arena;
    size_t meta_bytes;      /* total metadata allocated, capped */
};

/* All metadata comes from a zeroed arena freed at once; total capped. */
static void *meta_alloc(gguf_ctx *ctx, size_t n, moe_status *st)
{
    arena_block *b = ctx->arena;
    size_t need = (n + 15) & ~(size_t)15;
    if (n > GGUF_META_CAP || ctx->meta_bytes + need > GGUF_META_CAP) {
        *st = moe_fail(MOE_ERR_NOMEM,
                       "GGUF metadata needs more than the %zu MiB limit",
                       GGUF_META_CAP >> 20);
        return NULL;
    }
    if (!b || b->cap - b->used < need) {
        size_t cap = need > 65536 ? need : 65536;
        b = calloc(1, sizeof *b + cap);
        if (!b) {
            *st = moe_fail(MOE_ERR_NOMEM, "out of memory reading GGUF metadata");
            return NULL;
        }
        b->cap = cap;
        if (ctx->arena && need > 65536) {
            /* keep the partly used block current */
            b->next = ctx->arena->next;
            ctx->arena->next = b;
        } else {
            b->next = ctx->arena;
            ctx->arena = b;
        }
    }
    void *p = b->mem + b->used;
    b->used += need;
    ctx->meta_bytes += need;
    return p;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static moe_status hash_new(gguf_ctx *ctx, int64_t n, int64_t **tab, size_t *tab_n)
{
    moe_status st = MOE_OK;
    size_t sz = 8;
    while (sz < (size_t)n * 2)
        sz *= 2;
    *tab = meta_alloc(ctx, sz * sizeof **tab, &st);
    if (!*tab)
        return st;
    memset(*tab, 0xff, sz * sizeof **tab);
    *tab_n = sz;
    return MOE_OK;
}

/* Index of name in the table; with insert, adds idx when absent and returns
 * -1, or returns the existing index when present. */
static int64_t hash_probe(int64_t *tab, size_t tab_n, const char *name,
                          const char *(*name_of)(const gguf_ctx *, int64_t),
                          const gguf_ctx *ctx, int64_t insert_idx)
{
    size_t mask = tab_n - 1;
    size_t h = (size_t)hash_str(name) & mask;
    for (;;) {
        int64_t v = tab[h];
        if (v < 0) {
            if (insert_idx >= 0)
                tab[h] = insert_idx;
            return -1;
        }
        if (strcmp(name_of(ctx, v), name) == 0)
            return v;
        h = (h + 1) & mask;
    }
}

static const char *kv_name_of(const gguf_ctx *ctx, int64_t i)
{
    return ctx->kv[i].key;
}

static const char *tensor_name_of(const gguf_ctx *ctx, int64_t i)
{
    return ctx->tensors[i].name;
}

/* ---- parsing -------------------------------------------------------------- */

typedef struct {
    gguf_ctx *ctx;
    const uint8_t *base;
    size_t size, pos;
} cursor;

static size_t cur_left(const cursor *c)
{
    return c->size - c->pos;
}

static moe_status truncated(const cursor *c, size_t need, const char *what)
{
    return moe_fail(MOE_ERR_FORMAT,
                    "truncated file: %s needs %zu bytes at offset %zu, file has %zu",
                    what, need, c->pos, c->size);
}

static moe_status rd_u32(cursor *c, uint32_t *v, const char *what)
{
    *v = 0;
    if (cur_left(c) < 4)
        return truncated(c, 4, what);
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return MOE_OK;
}

static moe_status rd_u64(cursor *c, uint64_t *v, const char *what)
{
    *v = 0;
    if (cur_left(c) < 8)
        return truncated(c, 8, what);
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return MOE_OK;
}

/* A length-prefixed string; on success *s points into the buffer. */
static moe_status rd_str(cursor *c, const char **s, size_t *len, const char *what)
{
    uint64_t n;
    moe_status st = rd_u64(c, &n, what);
    if (st != MOE_OK)
        return st;
    if (n > cur_left(c))
        return moe_fail(MOE_ERR_FORMAT,
                        "%s: string length %llu exceeds remaining %zu bytes",
                        what, (unsigned long long)n, cur_left(c));
    *s = (const char *)c->base + c->pos;
    *len = (size_t)n;
    c->pos += (size_t)n;
    return MOE_OK;
}

/* A name (key or tensor name): non-empty, no NUL byte, copied. */
static moe_status rd_name(cursor *c, char **out, const char *what)
{
    const char *s;
    size_t len;
    moe_status st = rd_str(c, &s, &len, what);
    if (st != MOE_OK)
        return st;
    if (len == 0)
        return moe_fail(MOE_ERR_FORMAT, "%s is empty", what);
    if (memchr(s, '\0', len))
        return moe_fail(MOE_ERR_FORMAT, "%s contains a NUL byte", what);
    *out = meta_alloc(c->ctx, len + 1, &st);
    if (!*out)
        return st;
    memcpy(*out, s, len);
    (*out)[len] = '\0';
    return MOE_OK;
}

static moe_status check_bools(const uint8_t *p, uint64_t n, const char *key)
{
    char kb[SHOW_CAP];
    for (uint64_t j = 0; j < n; j++)
        if (p[j] > 1)
            return moe_fail(MOE_ERR_FORMAT, "key '%s': bool value %u is not 0 or 1",
                            show(key, strlen(key), kb, sizeof kb), p[j]);
    return MOE_OK;
}

static moe_status parse_array(cursor *c, gguf_array *a, int depth, const char *key)
{
    char kb[SHOW_CAP], what[SHOW_CAP + 48];
    uint32_t et;
    uint64_t n;
    moe_status st;
    const char *k = show(key, strlen(key), kb, sizeof kb);

    snprintf(what, sizeof what, "key '%s' array type", k);
    if ((st = rd_u32(c, &et, what)) != MOE_OK)
        return st;
    if (et >= GGUF_TYPE_COUNT)
        return moe_fail(MOE_ERR_FORMAT, "key '%s': bad array element type %u", k, et);
    snprintf(what, sizeof what, "key '%s' array length", k);
    if ((st = rd_u64(c, &n, what)) != MOE_OK)
        return st;
    size_t min = type_min_bytes((gguf_type)et);
    if (n > cur_left(c) / min)
        return moe_fail(MOE_ERR_FORMAT,
                        "key '%s': array length %llu exceeds remaining %zu bytes",
                        k, (unsigned long long)n, cur_left(c));
    a->type = (gguf_type)et;
    a->n = n;
    a->data = c->base + c->pos;
    if (et == GGUF_TYPE_STRING) {
        a->strs = meta_alloc(c->ctx, (size_t)n * sizeof *a->strs, &st);
        if (!a->strs)
            return st;
        snprintf(what, sizeof what, "key '%s' string element", k);
        for (uint64_t j = 0; j < n; j++) {
            const char *s;
            size_t len;
            a->strs[j] = c->base + c->pos;
            if ((st = rd_str(c, &s, &len, what)) != MOE_OK)
                return st;
        }
    } else if (et == GGUF_TYPE_ARRAY) {
        if (depth >= GGUF_MAX_NEST)
            return moe_fail(MOE_ERR_FORMAT, "key '%s': arrays nested deeper than %d",
                            k, GGUF_MAX_NEST);
        a->sub = meta_alloc(c->ctx, (size_t)n * sizeof *a->sub, &st);
        if (!a->sub)
            return st;
        for (uint64_t j = 0; j < n; j++)
            if ((st = parse_array(c, &a->sub[j], depth + 1, key)) != MOE_OK)
                return st;
    } else {
        if (et == GGUF_TYPE_BOOL && (st = check_bools(a->data, n, key)) != MOE_OK)
            return st;
        c->pos += (size_t)n * min;
    }
    return MOE_OK;
}

static moe_status parse_kv(cursor *c, int64_t i)
{
    gguf_ctx *ctx = c->ctx;
    gguf_kv *kv = &ctx->kv[i];
    char what[SHOW_CAP + 48], kb[SHOW_CAP];
    uint32_t t;
    moe_status st;

    snprintf(what, sizeof what, "key %lld name", (long long)i);
    if ((st = rd_name(c, &kv->key, what)) != MOE_OK)
        return st;
    const char *k = show(kv->key, strlen(kv->key), kb, sizeof kb);
    if (hash_probe(ctx->kv_hash, ctx->kv_hash_n, kv->key, kv_name_of, ctx, i) >= 0)
        return moe_fail(MOE_ERR_FORMAT, "duplicate key '%s'", k);
    kv->span_off = c->pos;
    snprintf(what, sizeof what, "key '%s' type", k);
    if ((st = rd_u32(c, &t, what)) != MOE_OK)
        return st;
    if (t >= GGUF_TYPE_COUNT)
        return moe_fail(MOE_ERR_FORMAT, "key '%s': bad value type %u", k, t);
    kv->type = (gguf_type)t;
    snprintf(what, sizeof what, "key '%s' value", k);
    if (t == GGUF_TYPE_STRING) {
        const char *s;
        size_t len;
        if ((st = rd_str(c, &s, &len, what)) != MOE_OK)
            return st;
        kv->str = meta_alloc(ctx, len + 1, &st);
        if (!kv->str)
            return st;
        memcpy(kv->str, s, len);
        kv->str[len] = '\0';
        kv->str_len = len;
    } else if (t == GGUF_TYPE_ARRAY) {
        if ((st = parse_array(c, &kv->arr, 1, kv->key)) != MOE_OK)
            return st;
    } else {
        size_t sz = type_info[t].size;
        if (cur_left(c) < sz)
            return truncated(c, sz, what);
        kv->val = c->base + c->pos;
        if (t == GGUF_TYPE_BOOL && (st = check_bools(kv->val, 1, kv->key)) != MOE_OK)
            return st;
        c->pos += sz;
    }
    kv->span_len = c->pos - kv->span_off;
    return MOE_OK;
}

static moe_status parse_tensor_info(cursor *c, int64_t i)
{
    gguf_ctx *ctx = c->ctx;
    gguf_tensor_info *ti = &ctx->tensors[i];
    char what[SHOW_CAP + 48], nb[SHOW_CAP];
    char *name;
    uint32_t nd, type;
    uint64_t v;
    moe_status st;

    snprintf(what, sizeof what, "tensor %lld name", (long long)i);
    if ((st = rd_name(c, &name, what)) != MOE_OK)
        return st;
    ti->name = name;
    const char *n = show(name, strlen(name), nb, sizeof nb);
    if (hash_probe(ctx->t_hash, ctx->t_hash_n, name, tensor_name_of, ctx, i) >= 0)
        return moe_fail(MOE_ERR_FORMAT, "duplicate tensor name '%s'", n);
    snprintf(what, sizeof what, "tensor '%s' info", n);
    if ((st = rd_u32(c, &nd, what)) != MOE_OK)
        return st;
    if (nd < 1 || nd > GGUF_MAX_DIMS)
        return moe_fail(MOE_ERR_FORMAT, "tensor '%s': n_dims %u not in 1..%d",
                        n, nd, GGUF_MAX_DIMS);
    ti->n_dims = (int)nd;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        ti->ne[d] = 1;
    for (uint32_t d = 0; d < nd; d++) {
        if ((st = rd_u64(c, &v, what)) != MOE_OK)
            return st;
        if (v == 0)
            return moe_fail(MOE_ERR_FORMAT, "tensor '%s': dimension %u is 0", n, d);
        if (v > (uint64_t)INT64_MAX)
            return moe_fail(MOE_ERR_FORMAT, "tensor '%s': dimension %u is %llu, too large",
                            n, d, (unsigned long long)v);
        ti->ne[d] = (int64_t)v;
    }
    if ((st = rd_u32(c, &type, what)) != MOE_OK)
        return st;
    if (type > INT_MAX || !quant_type_supported((int)type))
        return moe_fail(MOE_ERR_UNSUPPORTED, "tensor '%s': unsupported type id %u",
                        n, type);
    ti->type = (moe_type)type;
    int64_t blk = quant_block_elems(ti->type);
    if (blk <= 0 || ti->ne[0] % blk != 0)
        return moe_fail(MOE_ERR_FORMAT,
                        "tensor '%s': row length %lld not a multiple of the %s block size %lld",
                        n, (long long)ti->ne[0], quant_type_name((int)type), (long long)blk);
    int64_t nel, rows;
    size_t row_bytes, nbytes;
    if (__builtin_mul_overflow(ti->ne[0], ti->ne[1], &nel) ||
        __builtin_mul_overflow(nel, ti->ne[2], &nel) ||
        __builtin_mul_overflow(nel, ti->ne[3], &nel) ||
        __builtin_mul_overflow(ti->ne[1], ti->ne[2], &rows) ||
        __builtin_mul_overflow(rows, ti->ne[3], &rows) ||
        !util_mul_size((size_t)(ti->ne[0] / blk), quant_block_bytes(ti->type), &row_bytes) ||
        !util_mul_size(row_bytes, (size_t)rows, &nbytes))
        return moe_fail(MOE_ERR_FORMAT,
                        "tensor '%s': shape [%lld, %lld, %lld, %lld] overflows", n,
                        (long long)ti->ne[0], (long long)ti->ne[1],
                        (long long)ti->ne[2], (long long)ti->ne[3]);
    ti->nbytes = nbytes;
    if ((st = rd_u64(c, &v, what)) != MOE_OK)
        return st;
    if (v % ctx->alignment != 0)
        return moe_fail(MOE_ERR_FORMAT, "tensor '%s': offset %llu not aligned to %zu",
                        n, (unsigned long long)v, ctx->alignment);
    ti->offset = v;
    return MOE_OK;
}

static moe_status parse_alignment(gguf_ctx *ctx)
{
    int64_t i = gguf_find_key(ctx, "general.alignment");
    uint32_t a;
    if (i < 0)
        return MOE_OK;
    if (ctx->kv[i].type != GGUF_TYPE_UINT32)
        return moe_fail(MOE_ERR_FORMAT, "general.alignment has type %s, expected uint32",
                        gguf_type_name(ctx->kv[i].type));
    memcpy(&a, ctx->kv[i].val, 4);
    if (!is_pow2(a))
        return moe_fail(MOE_ERR_FORMAT,
                        "general.alignment %u is not a non-zero power of two", a);
    ctx->alignment = a;
    return MOE_OK;
}

static moe_status parse(gguf_ctx *ctx)
{
    cursor c = {ctx, ctx->base, ctx->size, 0};
    const uint8_t *b = ctx->base;
    uint32_t version;
    uint64_t n_tensors, n_kv;
    moe_status st;

    if (ctx->size >= 4 && memcmp(b, "GGUF", 4) != 0)
        return moe_fail(MOE_ERR_FORMAT,
                        "not a GGUF file: magic bytes %02x %02x %02x %02x",
                        b[0], b[1], b[2], b[3]);
    if (ctx->size < GGUF_HEADER_BYTES)
        return moe_fail(MOE_ERR_FORMAT,
                        "truncated file: header needs %d bytes, file has %zu",
                        GGUF_HEADER_BYTES, ctx->size);
    c.pos = 4;
    rd_u32(&c, &version, "version");
    if (version == 1)
        return moe_fail(MOE_ERR_UNSUPPORTED, "GGUF version 1 is unsupported");
    if ((version & 0xffff) == 0 && version != 0)
        return moe_fail(MOE_ERR_UNSUPPORTED,
                        "big-endian GGUF (version %u) is unsupported",
                        __builtin_bswap32(version));
    if (version != 2 && version != 3)
        return moe_fail(MOE_ERR_UNSUPPORTED, "GGUF version %u is unsupported", version);
    ctx->version = version;
    rd_u64(&c, &n_tensors, "tensor count");
    rd_u64(&c, &n_kv, "key count");
    if (n_kv > cur_left(&c) / GGUF_MIN_KV_BYTES)
        return moe_fail(MOE_ERR_FORMAT, "key count %llu exceeds file size (%zu bytes)",
                        (unsigned long long)n_kv, ctx->size);
    if (n_tensors > cur_left(&c) / GGUF_MIN_TENSOR_BYTES)
        return moe_fail(MOE_ERR_FORMAT,
                        "tensor count %llu exceeds file size (%zu bytes)",
                        (unsigned long long)n_tensors, ctx->size);
    if (n_kv * GGUF_MIN_KV_BYTES + n_tensors * GGUF_MIN_TENSOR_BYTES > cur_left(&c))
        return moe_fail(MOE_ERR_FORMAT,
                        "%llu keys and %llu tensors exceed file size (%zu bytes)",
                        (unsigned long long)n_kv, (unsigned long long)n_tensors,
                        ctx->size);

    ctx->kv = meta_alloc(ctx, (size_t)n_kv * sizeof *ctx->kv, &st);
    if (!ctx->kv)
        return st;
    if ((st = hash_new(ctx, (int64_t)n_kv, &ctx->kv_hash, &ctx->kv_hash_n)) != MOE_OK)
        return st;
    for (uint64_t i = 0; i < n_kv; i++) {
        ctx->n_kv = (int64_t)i + 1; /* the key is looked up by its own hash probe */
        if ((st = parse_kv(&c, (int64_t)i)) != MOE_OK)
            return st;
    }
    ctx->n_kv = (int64_t)n_kv;
    if ((st = parse_alignment(ctx)) != MOE_OK)
        return st;

    ctx->tensors = meta_alloc(ctx, (size_t)n_tensors * sizeof *ctx->tensors, &st);
    if (!ctx->tensors)
        return st;
    if ((st = hash_new(ctx, (int64_t)n_tensors, &ctx->t_hash, &ctx->t_hash_n)) != MOE_OK)
        return st;
    for (uint64_t i = 0; i < n_tensors; i++) {
        ctx->n_tensors = (int64_t)i + 1;
        if ((st = parse_tensor_info(&c, (int64_t)i)) != MOE_OK)
            return st;
    }
    ctx->n_tensors = (int64_t)n_tensors;

    /* c.pos <= size and alignment <= 2^31, so this cannot overflow */
    ctx->data_off = (c.pos + ctx->alignment - 1) & ~(ctx->alignment - 1);
    for (uint64_t i = 0; i < n_tensors; i++) {
        gguf_tensor_info *ti = &ctx->tensors[i];
        char nb[SHOW_CAP];
        size_t start, end;
        if (ti->offset > SIZE_MAX || !util_add_size(ctx->data_off, ti->offset, &start) ||
            !util_add_size(start, ti->nbytes, &end))
            return moe_fail(MOE_ERR_FORMAT,
                            "tensor '%s' data at %zu + %llu (%zu bytes) outside file of %zu bytes",
                            show(ti->name, strlen(ti->name), nb, sizeof nb), ctx->data_off,
                            (unsigned long long)ti->offset, ti->nbytes, ctx->size);
        if (end > ctx->size)
            return moe_fail(MOE_ERR_FORMAT,
                            "tensor '%s' data [%zu, %zu) outside file of %zu bytes",
                            show(ti->name, strlen(ti->name), nb, sizeof nb), start, end,
                            ctx->size);
        ti->data = ctx->base + start;
    }
    return MOE_OK;
}

/* map (map_size bytes, or NULL) is the mapping data lies in, owned by the
 * context from here on */
static moe_status open_common(const void *data, size_t size, void *map, size_t map_size,
                              gguf_ctx **out)
{
    gguf_ctx *ctx = calloc(1, sizeof *ctx);
    moe_status st;
    *out = NULL;
    if (!ctx) {
        if (map)
            munmap(map, map_size);
        return moe_fail(MOE_ERR_NOMEM, "out of memory opening GGUF");
    }
    ctx->base = data;
    ctx->size = size;
    ctx->map = map;
    ctx->map_size = map_size;
    ctx->alignment = GGUF_DEFAULT_ALIGNMENT;
    st = parse(ctx);
    if (st != MOE_OK) {
        gguf_close(ctx);
        return st;
    }
    *out = ctx;
    return MOE_OK;
}

moe_status gguf_open_buffer(const void *data, size_t size, gguf_ctx **out)
{
    if (!out)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf_open_buffer: out is NULL");
    *out = NULL;
    if (!data && size)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf_open_buffer: data is NULL");
    return open_common(data ? data : "", size, NULL, 0, out);
}

/* the file's bytes into anonymous memory (size rounded up to 2 MiB, the
 * huge page), read-only afterwards, its length in *map_size; MAP_FAILED
 * and the error in *st on failure */
#define GGUF_HUGE_PAGE ((size_t)2 << 20)
static void *read_copy(int fd, size_t size, size_t *map_size, const char *path, moe_status *st)
{
    const size_t len = (size + GGUF_HUGE_PAGE - 1) / GGUF_HUGE_PAGE * GGUF_HUGE_PAGE;
    size_t got = 0;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) {
        *st = moe_fail(MOE_ERR_NOMEM, "cannot allocate %zu bytes to read '%s' into: %s", len,
                       path, strerror(errno));
        return MAP_FAILED;
    }
#ifdef MADV_HUGEPAGE
    madvise(map, len, MADV_HUGEPAGE); /* a hint: without THP, plain pages */
#endif
    while (got < size) {
        ssize_t r = pread(fd, (char *)map + got, size - got, (off_t)got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            *st = r < 0 ? moe_fail(MOE_ERR_IO, "cannot read '%s': %s", path, strerror(errno))
                        : moe_fail(MOE_ERR_IO, "'%s' shrank while being read (%zu of %zu bytes)",
                                   path, got, size);
            munmap(map, len);
            return MAP_FAILED;
        }
        got += (size_t)r;
    }
    mprotect(map, len, PROT_READ);
    *map_size = len;
    return map;
}

static moe_status open_path(const char *path, bool copy, gguf_ctx **out)
{
    struct stat sb;
    void *map = NULL;
    size_t map_size = 0;
    moe_status st = MOE_OK;
    int fd;
    if (!out || !path)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf_open: NULL argument");
    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return moe_fail(MOE_ERR_IO, "cannot open '%s': %s", path, strerror(errno));
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return moe_fail(MOE_ERR_IO, "cannot stat '%s': %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return moe_fail(MOE_ERR_IO, "'%s' is not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX / 2) {
        close(fd);
        return moe_fail(MOE_ERR_IO, "'%s' is too large to map", path);
    }
    if (sb.st_size > 0 && copy) {
        map = read_copy(fd, (size_t)sb.st_size, &map_size, path, &st);
        if (map == MAP_FAILED) {
            close(fd);
            return st;
        }
    } else if (sb.st_size > 0) {
        map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return moe_fail(MOE_ERR_IO, "cannot map '%s': %s", path, strerror(e));
        }
        map_size = (size_t)sb.st_size;
    }
    close(fd);
    return open_common(map ? map : "", (size_t)sb.st_size, map, map_size, out);
}

moe_status gguf_open(const char *path, gguf_ctx **out)
{
    return open_path(path, false, out);
}

moe_status gguf_open_copy(const char *path, gguf_ctx **out)
{
    return open_path(path, true, out);
}

void gguf_close(gguf_ctx *ctx)
{
    if (!ctx)
        return;
    while (ctx->arena) {
        arena_block *next = ctx->arena->next;
        free(ctx->arena);
        ctx->arena = next;
    }
    if (ctx->map)
        munmap(ctx->map, ctx->map_size);
    free(ctx);
}

/* ---- reader accessors ----------------------------------------------------- */

uint32_t gguf_version(const gguf_ctx *ctx) { return ctx->version; }
size_t gguf_alignment(const gguf_ctx *ctx) { return ctx->alignment; }
size_t gguf_file_size(const gguf_ctx *ctx) { return ctx->size; }
size_t gguf_data_offset(const gguf_ctx *ctx) { return ctx->data_off; }
int64_t gguf_n_kv(const gguf_ctx *ctx) { return ctx->n_kv; }

int64_t gguf_find_key(const gguf_ctx *ctx, const char *key)
{
    if (!key || ctx->n_kv == 0)
        return -1;
    return hash_probe(ctx->kv_hash, ctx->kv_hash_n, key, kv_name_of, ctx, -1);
}

static const gguf_kv *kv_at(const gguf_ctx *ctx, int64_t i)
{
    if (i < 0 || i >= ctx->n_kv)
        return NULL;
    return &ctx->kv[i];
}

/* The scalar bytes of kv i when it has exactly type t, else NULL. */
static const uint8_t *scalar(const gguf_ctx *ctx, int64_t i, gguf_type t)
{
    const gguf_kv *kv = kv_at(ctx, i);
    return kv && kv->type == t ? kv->val : NULL;
}

const char *gguf_kv_key(const gguf_ctx *ctx, int64_t i)
{
    const gguf_kv *kv = kv_at(ctx, i);
    return kv ? kv->key : NULL;
}

gguf_type gguf_kv_type(const gguf_ctx *ctx, int64_t i)
{
    const gguf_kv *kv = kv_at(ctx, i);
    return kv ? kv->type : GGUF_TYPE_COUNT;
}

#define SCALAR_GETTER(fn, ctype, gtype)                         \
    ctype fn(const gguf_ctx *ctx, int64_t i)                    \
    {                                                           \
        const uint8_t *p = scalar(ctx, i, gtype);               \
        ctype v = 0;                                            \
        if (p)                                                  \
            memcpy(&v, p, sizeof v);                            \
        return v;                                               \
    }
SCALAR_GETTER(gguf_kv_u8, uint8_t, GGUF_TYPE_UINT8)
SCALAR_GETTER(gguf_kv_i8, int8_t, GGUF_TYPE_INT8)
SCALAR_GETTER(gguf_kv_u16, uint16_t, GGUF_TYPE_UINT16)
SCALAR_GETTER(gguf_kv_i16, int16_t, GGUF_TYPE_INT16)
SCALAR_GETTER(gguf_kv_u32, uint32_t, GGUF_TYPE_UINT32)
SCALAR_GETTER(gguf_kv_i32, int32_t, GGUF_TYPE_INT32)
SCALAR_GETTER(gguf_kv_u64, uint64_t, GGUF_TYPE_UINT64)
SCALAR_GETTER(gguf_kv_i64, int64_t, GGUF_TYPE_INT64)
SCALAR_GETTER(gguf_kv_f32, float, GGUF_TYPE_FLOAT32)
SCALAR_GETTER(gguf_kv_f64, double, GGUF_TYPE_FLOAT64)
#undef SCALAR_GETTER

bool gguf_kv_bool(const gguf_ctx *ctx, int64_t i)
{
    const uint8_t *p = scalar(ctx, i, GGUF_TYPE_BOOL);
    return p && *p;
}

const char *gguf_kv_str(const gguf_ctx *ctx, int64_t i, size_t *len)
{
    const gguf_kv *kv = kv_at(ctx, i);
    if (!kv || kv->type != GGUF_TYPE_STRING) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = kv->str_len;
    return kv->str;
}

const gguf_array *gguf_kv_array(const gguf_ctx *ctx, int64_t i)
{
    const gguf_kv *kv = kv_at(ctx, i);
    return kv && kv->type == GGUF_TYPE_ARRAY ? &kv->arr : NULL;
}

gguf_type gguf_array_type(const gguf_array *a)
{
    return a ? a->type : GGUF_TYPE_COUNT;
}

uint64_t gguf_array_n(const gguf_array *a)
{
    return a ? a->n : 0;
}

const void *gguf_array_data(const gguf_array *a)
{
    if (!a || a->type == GGUF_TYPE_STRING || a->type == GGUF_TYPE_ARRAY)
        return NULL;
    return a->data;
}

const char *gguf_array_str(const gguf_array *a, uint64_t j, size_t *len)
{
    uint64_t n;
    if (!a || a->type != GGUF_TYPE_STRING || j >= a->n) {
        if (len)
            *len = 0;
        return NULL;
    }
    memcpy(&n, a->strs[j], 8);
    if (len)
        *len = (size_t)n;
    return (const char *)a->strs[j] + 8;
}

const gguf_array *gguf_array_elem(const gguf_array *a, uint64_t j)
{
    if (!a || a->type != GGUF_TYPE_ARRAY || j >= a->n)
        return NULL;
    return &a->sub[j];
}

gguf_type gguf_arr_type(const gguf_ctx *ctx, int64_t i)
{
    return gguf_array_type(gguf_kv_array(ctx, i));
}

uint64_t gguf_arr_n(const gguf_ctx *ctx, int64_t i)
{
    return gguf_array_n(gguf_kv_array(ctx, i));
}

const void *gguf_arr_data(const gguf_ctx *ctx, int64_t i)
{
    return gguf_array_data(gguf_kv_array(ctx, i));
}

const char *gguf_arr_str(const gguf_ctx *ctx, int64_t i, uint64_t j, size_t *len)
{
    return gguf_array_str(gguf_kv_array(ctx, i), j, len);
}

bool gguf_get_int(const gguf_ctx *ctx, const char *key, int64_t *out)
{
    int64_t i = gguf_find_key(ctx, key);
    const uint8_t *p;
    int64_t v;
    if (i < 0)
        return false;
    p = ctx->kv[i].val;
    switch (ctx->kv[i].type) {
    case GGUF_TYPE_UINT8: v = *p; break;
    case GGUF_TYPE_INT8: v = (int8_t)*p; break;
    case GGUF_TYPE_UINT16: v = gguf_kv_u16(ctx, i); break;
    case GGUF_TYPE_INT16: v = gguf_kv_i16(ctx, i); break;
    case GGUF_TYPE_UINT32: v = gguf_kv_u32(ctx, i); break;
    case GGUF_TYPE_INT32: v = gguf_kv_i32(ctx, i); break;
    case GGUF_TYPE_INT64: v = gguf_kv_i64(ctx, i); break;
    case GGUF_TYPE_UINT64: {
        uint64_t u = gguf_kv_u64(ctx, i);
        if (u > (uint64_t)INT64_MAX)
            return false;
        v = (int64_t)u;
        break;
    }
    default:
        return false;
    }
    if (out)
        *out = v;
    return true;
}

bool gguf_get_float(const gguf_ctx *ctx, const char *key, double *out)
{
    int64_t i = gguf_find_key(ctx, key), iv;
    double v;
    if (i < 0)
        return false;
    if (ctx->kv[i].type == GGUF_TYPE_FLOAT32)
        v = gguf_kv_f32(ctx, i);
    else if (ctx->kv[i].type == GGUF_TYPE_FLOAT64)
        v = gguf_kv_f64(ctx, i);
    else if (gguf_get_int(ctx, key, &iv))
        v = (double)iv;
    else
        return false;
    if (out)
        *out = v;
    return true;
}

bool gguf_get_bool(const gguf_ctx *ctx, const char *key, bool *out)
{
    int64_t i = gguf_find_key(ctx, key);
    if (i < 0 || ctx->kv[i].type != GGUF_TYPE_BOOL)
        return false;
    if (out)
        *out = gguf_kv_bool(ctx, i);
    return true;
}

const char *gguf_get_str(const gguf_ctx *ctx, const char *key)
{
    return gguf_kv_str(ctx, gguf_find_key(ctx, key), NULL);
}

int64_t gguf_n_tensors(const gguf_ctx *ctx) { return ctx->n_tensors; }

const gguf_tensor_info *gguf_tensor(const gguf_ctx *ctx, int64_t i)
{
    if (i < 0 || i >= ctx->n_tensors)
        return NULL;
    return &ctx->tensors[i];
}

const gguf_tensor_info *gguf_find_tensor(const gguf_ctx *ctx, const char *name)
{
    int64_t i;
    if (!name || ctx->n_tensors == 0)
        return NULL;
    i = hash_probe(ctx->t_hash, ctx->t_hash_n, name, tensor_name_of, ctx, -1);
    return i >= 0 ? &ctx->tensors[i] : NULL;
}

/* ---- formatting values ---------------------------------------------------- */

typedef struct {
    char *buf;
    size_t cap, len; /* len counts what would be written */
} fmt_out;

static void fmt_put(fmt_out *o, const char *s, size_t n)
{
    if (o->len < o->cap) {
        size_t room = o->cap - 1 - o->len, k = n < room ? n : room;
        memcpy(o->buf + o->len, s, k);
        o->buf[o->len + k] = '\0';
    }
    o->len += n;
}

static void fmt_printf(fmt_out *o, const char *f, ...) __attribute__((format(printf, 2, 3)));
static void fmt_printf(fmt_out *o, const char *f, ...)
{
    char tmp[64];
    va_list ap;
    va_start(ap, f);
    int k = vsnprintf(tmp, sizeof tmp, f, ap);
    va_end(ap);
    if (k > 0)
        fmt_put(o, tmp, (size_t)k < sizeof tmp ? (size_t)k : sizeof tmp - 1);
}

static void fmt_str(fmt_out *o, const char *s, size_t n)
{
    fmt_put(o, "\"", 1);
    for (size_t k = 0; k < n; k++) {
        unsigned char ch = (unsigned char)s[k];
        if (ch == '"' || ch == '\\')
            fmt_printf(o, "\\%c", ch);
        else if (ch == '\n')
            fmt_put(o, "\\n", 2);
        else if (ch == '\t')
            fmt_put(o, "\\t", 2);
        else if (ch < 0x20 || ch == 0x7f)
            fmt_printf(o, "\\x%02x", ch);
        else
            fmt_put(o, (const char *)&s[k], 1);
    }
    fmt_put(o, "\"", 1);
}

static void fmt_scalar(fmt_out *o, gguf_type t, const uint8_t *p)
{
    union {
        uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
        uint64_t u64; int64_t i64; float f32; double f64;
    } v;
    memcpy(&v, p, type_info[t].size);
    switch (t) {
    case GGUF_TYPE_UINT8: fmt_printf(o, "%u", v.u8); break;
    case GGUF_TYPE_INT8: fmt_printf(o, "%d", v.i8); break;
    case GGUF_TYPE_UINT16: fmt_printf(o, "%u", v.u16); break;
    case GGUF_TYPE_INT16: fmt_printf(o, "%d", v.i16); break;
    case GGUF_TYPE_UINT32: fmt_printf(o, "%u", v.u32); break;
    case GGUF_TYPE_INT32: fmt_printf(o, "%d", v.i32); break;
    case GGUF_TYPE_UINT64: fmt_printf(o, "%llu", (unsigned long long)v.u64); break;
    case GGUF_TYPE_INT64: fmt_printf(o, "%lld", (long long)v.i64); break;
    case GGUF_TYPE_FLOAT32: fmt_printf(o, "%.9g", (double)v.f32); break;
    case GGUF_TYPE_FLOAT64: fmt_printf(o, "%.17g", v.f64); break;
    case GGUF_TYPE_BOOL: fmt_put(o, v.u8 ? "true" : "false", v.u8 ? 4 : 5); break;
    default: break;
    }
}

static void fmt_array(fmt_out *o, const gguf_array *a, uint64_t max_elems)
{
    uint64_t shown = a->n < max_elems ? a->n : max_elems;
    fmt_put(o, "[", 1);
    for (uint64_t j = 0; j < shown; j++) {
        if (j)
            fmt_put(o, ", ", 2);
        if (a->type == GGUF_TYPE_STRING) {
            size_t len;
            const char *s = gguf_array_str(a, j, &len);
            fmt_str(o, s, len);
        } else if (a->type == GGUF_TYPE_ARRAY) {
            fmt_array(o, &a->sub[j], max_elems);
        } else {
            fmt_scalar(o, a->type, a->data + j * type_info[a->type].size);
        }
    }
    if (shown < a->n)
        fmt_printf(o, "%s... %llu total", shown ? ", " : "", (unsigned long long)a->n);
    fmt_put(o, "]", 1);
}

size_t gguf_kv_format(const gguf_ctx *ctx, int64_t i, char *buf, size_t n,
                      uint64_t max_elems)
{
    const gguf_kv *kv = kv_at(ctx, i);
    fmt_out o = {buf, n, 0};
    if (buf && n)
        buf[0] = '\0';
    if (!kv)
        return 0;
    if (kv->type == GGUF_TYPE_STRING)
        fmt_str(&o, kv->str, kv->str_len);
    else if (kv->type == GGUF_TYPE_ARRAY)
        fmt_array(&o, &kv->arr, max_elems);
    else
        fmt_scalar(&o, kv->type, kv->val);
    return o.len;
}

/* ---- writer --------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    bool oom;
} wbuf;

static void wb_put(wbuf *b, const void *data, size_t n)
{
    if (b->oom)
        return;
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void wb_u32(wbuf *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_put(b, &v, 8); }

static void wb_str(wbuf *b, const char *s, size_t len)
{
    wb_u64(b, len);
    wb_put(b, s, len);
}

typedef struct {
    char *key;
    uint8_t *val; /* value type id + value bytes, as in the file */
    size_t len;
} wkv;

typedef struct {
    char *name;
    moe_type type;
    int n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    const void *data;
    size_t nbytes;
    uint64_t offset;
} wtensor;

struct gguf_writer {
    size_t alignment;
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
};

gguf_writer *gguf_writer_new(void)
{
    gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].val);
    }
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* Take ownership of a serialized value (b) for key, replacing an old one. */
static moe_status wkv_set(gguf_writer *w, const char *key, wbuf *b)
{
    moe_status st = MOE_OK;
    if (!w || !key || !*key) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: empty key");
        goto fail;
    }
    if (b->oom) {
        st = moe_fail(MOE_ERR_NOMEM, "gguf writer: out of memory for key '%s'", key);
        goto fail;
    }
    if (strcmp(key, "general.alignment") == 0) {
        uint32_t t, a;
        memcpy(&t, b->p, 4);
        if (t != GGUF_TYPE_UINT32 || b->n != 8) {
            st = moe_fail(MOE_ERR_INVALID_ARG,
                          "gguf writer: general.alignment must be uint32");
            goto fail;
        }
        memcpy(&a, b->p + 4, 4);
        if (!is_pow2(a)) {
            st = moe_fail(MOE_ERR_INVALID_ARG,
                          "gguf writer: alignment %u is not a power of two", a);
            goto fail;
        }
        w->alignment = a;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            free(w->kv[i].val);
            w->kv[i].val = b->p;
            w->kv[i].len = b->n;
            return MOE_OK;
        }
    }
    char *k = strdup(key);
    wkv *kv = k ? util_room(w->kv, &w->cap_kv, w->n_kv, sizeof *kv, 16) : NULL;
    if (!kv) {
        free(k);
        st = moe_fail(MOE_ERR_NOMEM, "gguf writer: out of memory for key '%s'", key);
        goto fail;
    }
    w->kv = kv;
    w->kv[w->n_kv++] = (wkv){k, b->p, b->n};
    return MOE_OK;
fail:
    free(b->p);
    return st;
}

static moe_status set_scalar(gguf_writer *w, const char *key, gguf_type t,
                             const void *v)
{
    wbuf b = {0};
    wb_u32(&b, t);
    wb_put(&b, v, type_info[t].size);
    return wkv_set(w, key, &b);
}

void gguf_writer_set_alignment(gguf_writer *w, size_t alignment)
{
    bool has_kv = false;
    if (!w)
        return;
    w->alignment = alignment; /* validated by gguf_writer_write */
    for (size_t i = 0; i < w->n_kv; i++)
        has_kv |= strcmp(w->kv[i].key, "general.alignment") == 0;
    if (is_pow2(alignment) && alignment <= UINT32_MAX &&
        (has_kv || alignment != GGUF_DEFAULT_ALIGNMENT))
        gguf_writer_set_u32(w, "general.alignment", (uint32_t)alignment);
}

moe_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    return set_scalar(w, key, GGUF_TYPE_UINT32, &v);
}

moe_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v)
{
    return set_scalar(w, key, GGUF_TYPE_INT32, &v);
}

moe_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v)
{
    return set_scalar(w, key, GGUF_TYPE_UINT64, &v);
}

moe_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    return set_scalar(w, key, GGUF_TYPE_FLOAT32, &v);
}

moe_status gguf_writer_set_bool(gguf_writer *w, const char *key, bool v)
{
    uint8_t b = v ? 1 : 0;
    return set_scalar(w, key, GGUF_TYPE_BOOL, &b);
}

moe_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v)
{
    wbuf b = {0};
    if (!v)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: NULL string for key '%s'",
                        key ? key : "");
    wb_u32(&b, GGUF_TYPE_STRING);
    wb_str(&b, v, strlen(v));
    return wkv_set(w, key, &b);
}

moe_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem_type,
                               const void *data, uint64_t n)
{
    wbuf b = {0};
    size_t bytes;
    if ((unsigned)elem_type >= GGUF_TYPE_COUNT || type_info[elem_type].size == 0)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "gguf writer: key '%s': array element type %d is not numeric",
                        key ? key : "", (int)elem_type);
    if (n > SIZE_MAX || !util_mul_size((size_t)n, type_info[elem_type].size, &bytes))
        return moe_fail(MOE_ERR_NOMEM, "gguf writer: key '%s': array too large",
                        key ? key : "");
    if (n && !data)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: key '%s': NULL array data",
                        key ? key : "");
    if (elem_type == GGUF_TYPE_BOOL)
        for (uint64_t j = 0; j < n; j++)
            if (((const uint8_t *)data)[j] > 1)
                return moe_fail(MOE_ERR_INVALID_ARG,
                                "gguf writer: key '%s': bool element is not 0 or 1",
                                key ? key : "");
    wb_u32(&b, GGUF_TYPE_ARRAY);
    wb_u32(&b, elem_type);
    wb_u64(&b, n);
    wb_put(&b, data, bytes);
    return wkv_set(w, key, &b);
}

moe_status gguf_writer_set_arr_str(gguf_writer *w, const char *key,
                                   const char *const *strs, uint64_t n)
{
    wbuf b = {0};
    if (n && !strs)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: key '%s': NULL strings",
                        key ? key : "");
    wb_u32(&b, GGUF_TYPE_ARRAY);
    wb_u32(&b, GGUF_TYPE_STRING);
    wb_u64(&b, n);
    for (uint64_t j = 0; j < n; j++) {
        if (!strs[j]) {
            free(b.p);
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "gguf writer: key '%s': string %llu is NULL",
                            key ? key : "", (unsigned long long)j);
        }
        wb_str(&b, strs[j], strlen(strs[j]));
    }
    return wkv_set(w, key, &b);
}

moe_status gguf_writer_copy_kv(gguf_writer *w, const gguf_ctx *src, int64_t i)
{
    const gguf_kv *kv = src ? kv_at(src, i) : NULL;
    wbuf b = {0};
    if (!kv)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: no key %lld to copy",
                        (long long)i);
    /* The validated bytes of the value are self-contained (v2 and v3 encode
     * values identically), so copying them reproduces every type exactly. */
    wb_put(&b, src->base + kv->span_off, kv->span_len);
    return wkv_set(w, kv->key, &b);
}

moe_status gguf_writer_add_tensor(gguf_writer *w, const char *name, moe_type type,
                                  int n_dims, const int64_t *ne, const void *data)
{
    wtensor t = {0};
    int64_t rows = 1, blk;
    size_t row_bytes;
    if (!w || !name || !*name || !ne)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: bad tensor arguments");
    if (!quant_type_supported((int)type))
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: tensor '%s': unsupported type id %d",
                        name, (int)type);
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: tensor '%s': n_dims %d not in 1..%d",
                        name, n_dims, GGUF_MAX_DIMS);
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] < 1)
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "gguf writer: tensor '%s': dimension %d is %lld", name, d,
                            (long long)t.ne[d]);
        if (d > 0 && __builtin_mul_overflow(rows, t.ne[d], &rows))
            return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: tensor '%s': shape overflows",
                            name);
    }
    blk = quant_block_elems(type);
    if (blk <= 0 || t.ne[0] % blk != 0)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "gguf writer: tensor '%s': row length %lld not a multiple of %lld",
                        name, (long long)t.ne[0], (long long)blk);
    int64_t nel;
    if (__builtin_mul_overflow(t.ne[0], rows, &nel) ||
        !util_mul_size((size_t)(t.ne[0] / blk), quant_block_bytes(type), &row_bytes) ||
        !util_mul_size(row_bytes, (size_t)rows, &t.nbytes))
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: tensor '%s': shape overflows",
                        name);
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: duplicate tensor '%s'",
                            name);
    t.name = strdup(name);
    wtensor *ts = t.name ? util_room(w->t, &w->cap_t, w->n_t, sizeof *ts, 16) : NULL;
    if (!ts) {
        free(t.name);
        return moe_fail(MOE_ERR_NOMEM, "gguf writer: out of memory for tensor '%s'", name);
    }
    w->t = ts;
    t.type = type;
    t.n_dims = n_dims;
    t.data = data;
    w->t[w->n_t++] = t;
    return MOE_OK;
}

static bool write_all(int fd, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k = write(fd, b, n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        b += k;
        n -= (size_t)k;
    }
    return true;
}

static bool write_zeros(int fd, size_t n)
{
    static const uint8_t zeros[4096];
    while (n > 0) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        if (!write_all(fd, zeros, k))
            return false;
        n -= k;
    }
    return true;
}

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) & ~(a - 1);
}

moe_status gguf_writer_write(gguf_writer *w, const char *path)
{
    wbuf b = {0};
    char *tmp = NULL;
    int fd = -1;
    moe_status st = MOE_OK;
    size_t off = 0, a;

    if (!w || !path || !*path)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: NULL argument");
    a = w->alignment;
    if (!is_pow2(a) || a > UINT32_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG, "gguf writer: alignment %zu is not a power of two",
                        a);

    wb_put(&b, "GGUF", 4);
    wb_u32(&b, 3);
    wb_u64(&b, w->n_t);
    wb_u64(&b, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        wb_str(&b, w->kv[i].key, strlen(w->kv[i].key));
        wb_put(&b, w->kv[i].val, w->kv[i].len);
    }
    for (size_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        t->offset = off;
        wb_str(&b, t->name, strlen(t->name));
        wb_u32(&b, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++)
            wb_u64(&b, (uint64_t)t->ne[d]);
        wb_u32(&b, (uint32_t)t->type);
        wb_u64(&b, off);
        if (!util_add_size(off, t->nbytes, &off) || off > SIZE_MAX - a) {
            free(b.p);
            return moe_fail(MOE_ERR_NOMEM, "gguf writer: file size overflows");
        }
        off = align_up(off, a);
    }
    if (b.oom) {
        free(b.p);
        return moe_fail(MOE_ERR_NOMEM, "gguf writer: out of memory building header");
    }

    size_t plen = strlen(path);
    tmp = malloc(plen + 16);
    if (!tmp) {
        free(b.p);
        return moe_fail(MOE_ERR_NOMEM, "gguf writer: out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    fd = mkstemp(tmp);
    if (fd < 0) {
        st = moe_fail(MOE_ERR_IO, "cannot create a temp file next to '%s': %s", path,
                      strerror(errno));
        free(tmp);
        free(b.p);
        return st;
    }
    /* like the reference writer, a file without tensors ends at its header */
    if (fchmod(fd, 0644) != 0 || !write_all(fd, b.p, b.n) ||
        (w->n_t > 0 && !write_zeros(fd, align_up(b.n, a) - b.n)))
        goto io_fail;
    for (size_t i = 0; i < w->n_t; i++) {
        wtensor *t = &w->t[i];
        bool ok = t->data ? write_all(fd, t->data, t->nbytes) : write_zeros(fd, t->nbytes);
        if (!ok || !write_zeros(fd, align_up(t->nbytes, a) - t->nbytes))
            goto io_fail;
    }
    if (fsync(fd) != 0)
        goto io_fail;
    if (close(fd) != 0) {
        fd = -1;
        goto io_fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto io_fail;
    /* make the rename durable; failure here does not undo the write */
    {
        char *dir = strdup(path), *slash = dir ? strrchr(dir, '/') : NULL;
        if (dir) {
            const char *d = ".";
            if (slash) {
                *slash = '\0';
                d = slash == dir ? "/" : dir;
            }
            int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
            free(dir);
        }
    }
    free(tmp);
    free(b.p);
    return MOE_OK;

io_fail:
    st = moe_fail(MOE_ERR_IO, "cannot write '%s': %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(tmp);
    free(b.p);
    return st;
}
