/*
 * lb_util.c - numeric helpers the workflow scripts need, in C for speed:
 * moe.util.kmeans (k-means++ seeding, Lloyd iterations, empty-cluster
 * repair, representatives), cosine similarity, normalisation, the mean of
 * vectors, and a small BM25 index over local documents (moe.BM25 handle).
 * Depends on libc, libm and Lua only.
 */
#include "config.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

/* ---- vectors ------------------------------------------------------------ */

/* Read a list of equal-length number lists into a userdata matrix pushed on
 * the stack ([n][d] doubles). */
static double *lb_matrix_arg(lua_State *L, int idx, int32_t *n_out, int32_t *d_out)
{
    lua_Integer n, d = -1;
    double *m;
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    n = luaL_len(L, idx);
    luaL_argcheck(L, n >= 1 && n < (1 << 24), idx, "need a non-empty list of vectors");
    lua_rawgeti(L, idx, 1);
    if (lua_type(L, -1) == LUA_TTABLE)
        d = luaL_len(L, -1);
    lua_pop(L, 1);
    luaL_argcheck(L, d >= 1 && d < (1 << 24) && n * d < ((lua_Integer)1 << 31), idx,
                  "vectors must be non-empty lists of numbers");
    m = lua_newuserdatauv(L, (size_t)n * (size_t)d * sizeof(double), 0);
    for (lua_Integer i = 0; i < n; i++) {
        lua_rawgeti(L, idx, i + 1);
        if (lua_type(L, -1) != LUA_TTABLE || luaL_len(L, -1) != d)
            luaL_error(L, "bad argument #%d: vector %d is not a list of %d numbers", idx,
                       (int)(i + 1), (int)d);
        for (lua_Integer j = 0; j < d; j++) {
            int isnum;
            lua_rawgeti(L, -1, j + 1);
            m[i * d + j] = lua_tonumberx(L, -1, &isnum);
            if (!isnum)
                luaL_error(L, "bad argument #%d: vector %d has a non-number", idx, (int)(i + 1));
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    *n_out = (int32_t)n;
    *d_out = (int32_t)d;
    return m;
}

static double *lb_vector_arg(lua_State *L, int idx, int32_t *d_out)
{
    lua_Integer d;
    double *v;
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    d = luaL_len(L, idx);
    luaL_argcheck(L, d >= 1 && d < (1 << 28), idx, "need a non-empty list of numbers");
    v = lua_newuserdatauv(L, (size_t)d * sizeof(double), 0);
    for (lua_Integer j = 0; j < d; j++) {
        int isnum;
        lua_rawgeti(L, idx, j + 1);
        v[j] = lua_tonumberx(L, -1, &isnum);
        if (!isnum)
            luaL_error(L, "bad argument #%d: element %d is not a number", idx, (int)(j + 1));
        lua_pop(L, 1);
    }
    *d_out = (int32_t)d;
    return v;
}

static void lb_push_doubles(lua_State *L, const double *v, int32_t n)
{
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

static double lb_cos(const double *a, const double *b, int32_t d)
{
    double ab = 0.0, aa = 0.0, bb = 0.0;
    for (int32_t i = 0; i < d; i++) {
        ab += a[i] * b[i];
        aa += a[i] * a[i];
        bb += b[i] * b[i];
    }
    return aa > 0.0 && bb > 0.0 ? ab / sqrt(aa * bb) : 0.0;
}

/* moe.util.cosine(a, b) -> similarity in [-1, 1] (0 for a zero vector) */
static int lb_util_cosine(lua_State *L)
{
    int32_t da, db;
    const double *a = lb_vector_arg(L, 1, &da);
    const double *b = lb_vector_arg(L, 2, &db);
    luaL_argcheck(L, da == db, 2, "vectors of different lengths");
    lua_pushnumber(L, lb_cos(a, b, da));
    return 1;
}

/* moe.util.normalize(v) -> v / |v| (a zero vector stays zero) */
static int lb_util_normalize(lua_State *L)
{
    int32_t d;
    double *v = lb_vector_arg(L, 1, &d);
    double ss = 0.0;
    for (int32_t i = 0; i < d; i++)
        ss += v[i] * v[i];
    if (ss > 0.0)
        for (int32_t i = 0; i < d; i++)
            v[i] /= sqrt(ss);
    lb_push_doubles(L, v, d);
    return 1;
}

/* moe.util.mean(vectors) -> their element-wise mean */
static int lb_util_mean(lua_State *L)
{
    int32_t n, d;
    const double *m = lb_matrix_arg(L, 1, &n, &d);
    double *acc = lua_newuserdatauv(L, (size_t)d * sizeof(double), 0);
    for (int32_t j = 0; j < d; j++)
        acc[j] = 0.0;
    for (int32_t i = 0; i < n; i++)
        for (int32_t j = 0; j < d; j++)
            acc[j] += m[(size_t)i * d + j];
    for (int32_t j = 0; j < d; j++)
        acc[j] /= n;
    lb_push_doubles(L, acc, d);
    return 1;
}

/* ---- k-means ---------------------------------------------------------------- */

static uint64_t lb_rng_next(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double lb_rng_unit(uint64_t *s)
{
    return (double)(lb_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static double lb_dist2(const double *a, const double *b, int32_t d)
{
    double s = 0.0;
    for (int32_t i = 0; i < d; i++) {
        const double t = a[i] - b[i];
        s += t * t;
    }
    return s;
}

/* moe.util.kmeans(points, k [, {iters = 100, seed = 1, cosine = false}]) ->
 *   {assign = {cluster of each point, 1..k}, centroids = {...},
 *    sizes = {...}, reps = {index of the member nearest each centroid},
 *    inertia = sum of squared distances, iters = iterations run}
 * k-means++ seeding, Lloyd iterations until no point moves; an empty
 * cluster takes the point farthest from its centroid. With cosine the
 * points are L2-normalised first (spherical k-means on directions). */
static int lb_util_kmeans(lua_State *L)
{
    int32_t n, d, k, iters = 100, it;
    double *x, *c, *dist;
    int32_t *assign, *size;
    uint64_t seed = 1;
    bool cosine = false;
    double inertia = 0.0;

    lua_settop(L, 3);
    x = lb_matrix_arg(L, 1, &n, &d);
    k = (int32_t)luaL_checkinteger(L, 2);
    luaL_argcheck(L, k >= 1 && k <= n, 2, "k must be in 1..#points");
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "iters") != LUA_TNIL)
            iters = (int32_t)luaL_checkinteger(L, -1);
        if (lua_getfield(L, 3, "seed") != LUA_TNIL)
            seed = (uint64_t)luaL_checkinteger(L, -1);
        lua_getfield(L, 3, "cosine");
        cosine = lua_toboolean(L, -1);
        lua_pop(L, 3);
        luaL_argcheck(L, iters >= 1, 3, "iters must be >= 1");
    }
    if (cosine)
        for (int32_t i = 0; i < n; i++) {
            double ss = 0.0, *p = x + (size_t)i * d;
            for (int32_t j = 0; j < d; j++)
                ss += p[j] * p[j];
            if (ss > 0.0)
                for (int32_t j = 0; j < d; j++)
                    p[j] /= sqrt(ss);
        }
    c = lua_newuserdatauv(L, (size_t)k * (size_t)d * sizeof(double), 0);
    dist = lua_newuserdatauv(L, (size_t)n * sizeof(double), 0);
    assign = lua_newuserdatauv(L, (size_t)n * sizeof(int32_t), 0);
    size = lua_newuserdatauv(L, (size_t)k * sizeof(int32_t), 0);

    /* k-means++ seeding */
    {
        int32_t first = (int32_t)(lb_rng_next(&seed) % (uint64_t)n);
        memcpy(c, x + (size_t)first * d, (size_t)d * sizeof(double));
        for (int32_t i = 0; i < n; i++)
            dist[i] = lb_dist2(x + (size_t)i * d, c, d);
        for (int32_t j = 1; j < k; j++) {
            double tot = 0.0, r;
            int32_t pick = n - 1;
            for (int32_t i = 0; i < n; i++)
                tot += dist[i];
            r = lb_rng_unit(&seed) * tot;
            if (tot > 0.0) {
                for (int32_t i = 0; i < n; i++) {
                    r -= dist[i];
                    if (r < 0.0) {
                        pick = i;
                        break;
                    }
                }
            } else {
                pick = j; /* all points coincide with centres: any distinct index */
            }
            memcpy(c + (size_t)j * d, x + (size_t)pick * d, (size_t)d * sizeof(double));
            for (int32_t i = 0; i < n; i++) {
                const double dd = lb_dist2(x + (size_t)i * d, c + (size_t)j * d, d);
                if (dd < dist[i])
                    dist[i] = dd;
            }
        }
    }
    for (int32_t i = 0; i < n; i++)
        assign[i] = -1;
    for (it = 0; it < iters; it++) {
        int32_t moved = 0;
        for (int32_t i = 0; i < n; i++) {
            int32_t best = 0;
            double bd = INFINITY;
            for (int32_t j = 0; j < k; j++) {
                const double dd = lb_dist2(x + (size_t)i * d, c + (size_t)j * d, d);
                if (dd < bd) {
                    bd = dd;
                    best = j;
                }
            }
            dist[i] = bd;
            if (assign[i] != best) {
                assign[i] = best;
                moved++;
            }
        }
        /* empty clusters take the worst-served point */
        for (int32_t j = 0; j < k; j++)
            size[j] = 0;
        for (int32_t i = 0; i < n; i++)
            size[assign[i]]++;
        for (int32_t j = 0; j < k; j++) {
            if (size[j] == 0) {
                int32_t far = -1;
                for (int32_t i = 0; i < n; i++)
                    if (size[assign[i]] > 1 && (far < 0 || dist[i] > dist[far]))
                        far = i;
                if (far >= 0) {
                    size[assign[far]]--;
                    assign[far] = j;
                    size[j] = 1;
                    dist[far] = 0.0;
                    moved++;
                }
            }
        }
        /* update */
        memset(c, 0, (size_t)k * (size_t)d * sizeof(double));
        for (int32_t i = 0; i < n; i++)
            for (int32_t t = 0; t < d; t++)
                c[(size_t)assign[i] * d + t] += x[(size_t)i * d + t];
        for (int32_t j = 0; j < k; j++)
            if (size[j] > 0)
                for (int32_t t = 0; t < d; t++)
                    c[(size_t)j * d + t] /= size[j];
        if (moved == 0)
            break;
    }
    inertia = 0.0;
    for (int32_t i = 0; i < n; i++) {
        dist[i] = lb_dist2(x + (size_t)i * d, c + (size_t)assign[i] * d, d);
        inertia += dist[i];
    }
    lua_createtable(L, 0, 6);
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_pushinteger(L, assign[i] + 1);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "assign");
    lua_createtable(L, k, 0);
    for (int32_t j = 0; j < k; j++) {
        lb_push_doubles(L, c + (size_t)j * d, d);
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "centroids");
    lua_createtable(L, k, 0);
    for (int32_t j = 0; j < k; j++) {
        lua_pushinteger(L, size[j]);
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "sizes");
    lua_createtable(L, k, 0);
    for (int32_t j = 0; j < k; j++) {
        int32_t rep = -1;
        for (int32_t i = 0; i < n; i++)
            if (assign[i] == j && (rep < 0 || dist[i] < dist[rep]))
                rep = i;
        lua_pushinteger(L, rep + 1); /* 0 only for an empty cluster */
        lua_rawseti(L, -2, j + 1);
    }
    lua_setfield(L, -2, "reps");
    lua_pushnumber(L, inertia);
    lua_setfield(L, -2, "inertia");
    lua_pushinteger(L, it < iters ? it + 1 : iters);
    lua_setfield(L, -2, "iters");
    return 1;
}

/* ---- BM25 -------------------------------------------------------------------- */

typedef struct {
    int32_t term;
    int32_t tf;
} bm_posting;

typedef struct {
    /* term dictionary: open addressing, keys owned */
    char **keys;
    int32_t *ids;
    size_t cap;
    int32_t n_terms;
    int32_t *df;       /* [n_terms] documents containing the term */
    int32_t df_cap;
    /* documents: sorted (term, tf) lists */
    bm_posting **docs;
    int32_t *doc_n;    /* postings of each doc */
    int32_t *doc_len;  /* words of each doc */
    int32_t n_docs;
    double avg_len;
    double k1, b;
} bm25;

static uint64_t bm_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static void bm_free(bm25 *ix)
{
    if (!ix)
        return;
    for (size_t i = 0; i < ix->cap; i++)
        free(ix->keys ? ix->keys[i] : NULL);
    free(ix->keys);
    free(ix->ids);
    free(ix->df);
    for (int32_t i = 0; i < ix->n_docs; i++)
        free(ix->docs[i]);
    free(ix->docs);
    free(ix->doc_n);
    free(ix->doc_len);
    memset(ix, 0, sizeof *ix);
}

/* id of a term; add: insert when absent (returns -1 on OOM or absent) */
static int32_t bm_term(bm25 *ix, const char *w, size_t n, bool add)
{
    size_t i;
    if (add && ((size_t)ix->n_terms + 1) * 2 > ix->cap) {
        const size_t ncap = ix->cap ? ix->cap * 2 : 256;
        char **nk = calloc(ncap, sizeof *nk);
        int32_t *ni = calloc(ncap, sizeof *ni);
        if (!nk || !ni) {
            free(nk);
            free(ni);
            return -1;
        }
        for (size_t j = 0; j < ix->cap; j++)
            if (ix->keys[j]) {
                size_t p = bm_hash(ix->keys[j], strlen(ix->keys[j])) & (ncap - 1);
                while (nk[p])
                    p = (p + 1) & (ncap - 1);
                nk[p] = ix->keys[j];
                ni[p] = ix->ids[j];
            }
        free(ix->keys);
        free(ix->ids);
        ix->keys = nk;
        ix->ids = ni;
        ix->cap = ncap;
    }
    if (!ix->cap)
        return -1;
    i = bm_hash(w, n) & (ix->cap - 1);
    while (ix->keys[i]) {
        if (strlen(ix->keys[i]) == n && memcmp(ix->keys[i], w, n) == 0)
            return ix->ids[i];
        i = (i + 1) & (ix->cap - 1);
    }
    if (!add)
        return -1;
    if (ix->n_terms == ix->df_cap) {
        const int32_t nc = ix->df_cap ? ix->df_cap * 2 : 256;
        int32_t *nd = realloc(ix->df, (size_t)nc * sizeof *nd);
        if (!nd)
            return -1;
        ix->df = nd;
        ix->df_cap = nc;
    }
    ix->keys[i] = malloc(n + 1);
    if (!ix->keys[i])
        return -1;
    memcpy(ix->keys[i], w, n);
    ix->keys[i][n] = '\0';
    ix->ids[i] = ix->n_terms;
    ix->df[ix->n_terms] = 0;
    return ix->n_terms++;
}

/* Words: runs of ASCII letters/digits and non-ASCII bytes, lower-cased. */
static size_t bm_next_word(const char *s, size_t len, size_t *pos, char *out, size_t max)
{
    size_t n = 0;
    while (*pos < len && !(isalnum((unsigned char)s[*pos]) || (unsigned char)s[*pos] >= 0x80))
        (*pos)++;
    while (*pos < len && (isalnum((unsigned char)s[*pos]) || (unsigned char)s[*pos] >= 0x80)) {
        if (n < max)
            out[n++] = (char)tolower((unsigned char)s[*pos]);
        (*pos)++;
    }
    return n;
}

static int bm_cmp_posting(const void *a, const void *b)
{
    const bm_posting *x = a, *y = b;
    return (x->term > y->term) - (x->term < y->term);
}

static int lb_bm25_gc(lua_State *L)
{
    bm25 *ix = luaL_checkudata(L, 1, LB_BM25);
    bm_free(ix);
    return 0;
}

/* moe.util.bm25(docs [, {k1 = 1.2, b = 0.75}]) -> BM25 index */
static int lb_util_bm25(lua_State *L)
{
    lua_Integer nd;
    bm25 *ix;
    double total = 0.0;
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    nd = luaL_len(L, 1);
    luaL_argcheck(L, nd >= 1 && nd < (1 << 24), 1, "need a non-empty list of documents");
    ix = lua_newuserdatauv(L, sizeof *ix, 1);
    memset(ix, 0, sizeof *ix);
    luaL_setmetatable(L, LB_BM25);
    ix->k1 = 1.2;
    ix->b = 0.75;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "k1") != LUA_TNIL)
            ix->k1 = luaL_checknumber(L, -1);
        if (lua_getfield(L, 2, "b") != LUA_TNIL)
            ix->b = luaL_checknumber(L, -1);
        lua_pop(L, 2);
    }
    ix->docs = calloc((size_t)nd, sizeof *ix->docs);
    ix->doc_n = calloc((size_t)nd, sizeof *ix->doc_n);
    ix->doc_len = calloc((size_t)nd, sizeof *ix->doc_len);
    if (!ix->docs || !ix->doc_n || !ix->doc_len)
        return luaL_error(L, "out of memory");
    for (lua_Integer d = 0; d < nd; d++) {
        size_t len, pos = 0, cap = 0, wl;
        const char *s;
        char w[128];
        bm_posting *p = NULL;
        int32_t np = 0;
        lua_rawgeti(L, 1, d + 1);
        s = lua_tolstring(L, -1, &len);
        if (!s)
            return luaL_error(L, "bad argument #1: document %d is not a string", (int)(d + 1));
        while ((wl = bm_next_word(s, len, &pos, w, sizeof w)) > 0) {
            const int32_t t = bm_term(ix, w, wl, true);
            if (t < 0) {
                free(p);
                return luaL_error(L, "out of memory");
            }
            if ((size_t)np == cap) {
                bm_posting *q = realloc(p, (cap ? cap * 2 : 32) * sizeof *q);
                if (!q) {
                    free(p);
                    return luaL_error(L, "out of memory");
                }
                p = q;
                cap = cap ? cap * 2 : 32;
            }
            p[np].term = t;
            p[np].tf = 1;
            np++;
        }
        ix->doc_len[d] = np;
        total += np;
        /* merge duplicates into term frequencies */
        if (np > 0) {
            int32_t u = 0;
            qsort(p, (size_t)np, sizeof *p, bm_cmp_posting);
            for (int32_t i = 1; i < np; i++) {
                if (p[i].term == p[u].term)
                    p[u].tf++;
                else
                    p[++u] = p[i];
            }
            np = u + 1;
            for (int32_t i = 0; i < np; i++)
                ix->df[p[i].term]++;
        }
        ix->docs[d] = p;
        ix->doc_n[d] = np;
        ix->n_docs = (int32_t)d + 1;
        lua_pop(L, 1);
    }
    ix->avg_len = total / (double)nd;
    lua_pushvalue(L, 1); /* keep the documents for idx:doc(i) */
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static bm25 *lb_check_bm25(lua_State *L, int idx)
{
    bm25 *ix = luaL_checkudata(L, idx, LB_BM25);
    if (!ix->docs)
        luaL_error(L, "attempt to use a closed BM25 index");
    return ix;
}

/* idx:search(query [, k = 5]) -> list of {doc = index, score}, best first;
 * documents sharing no word with the query are left out. */
static int lb_bm25_search(lua_State *L)
{
    bm25 *ix = lb_check_bm25(L, 1);
    size_t len, pos = 0, wl;
    const char *q = luaL_checklstring(L, 2, &len);
    const lua_Integer k = luaL_optinteger(L, 3, 5);
    int32_t *qt, nq = 0, *order, n_hit = 0;
    double *score;
    char w[128];
    luaL_argcheck(L, k >= 1, 3, "k must be >= 1");
    qt = lua_newuserdatauv(L, (len / 2 + 2) * sizeof(int32_t), 0);
    while ((wl = bm_next_word(q, len, &pos, w, sizeof w)) > 0) {
        const int32_t t = bm_term(ix, w, wl, false);
        bool dup = false;
        for (int32_t i = 0; i < nq; i++)
            dup |= qt[i] == t;
        if (t >= 0 && !dup)
            qt[nq++] = t;
    }
    score = lua_newuserdatauv(L, (size_t)ix->n_docs * sizeof(double), 0);
    order = lua_newuserdatauv(L, (size_t)ix->n_docs * sizeof(int32_t), 0);
    for (int32_t d = 0; d < ix->n_docs; d++) {
        double s = 0.0;
        bool hit = false;
        for (int32_t i = 0; i < nq; i++) {
            bm_posting key = {qt[i], 0};
            const bm_posting *p = bsearch(&key, ix->docs[d], (size_t)ix->doc_n[d],
                                          sizeof key, bm_cmp_posting);
            if (p) {
                const double df = ix->df[qt[i]];
                const double idf = log(1.0 + (ix->n_docs - df + 0.5) / (df + 0.5));
                const double norm = ix->k1 * (1.0 - ix->b + ix->b * ix->doc_len[d] /
                                                                (ix->avg_len > 0 ? ix->avg_len : 1));
                s += idf * p->tf * (ix->k1 + 1.0) / (p->tf + norm);
                hit = true;
            }
        }
        score[d] = s;
        if (hit) {
            int32_t j = n_hit++;
            while (j > 0 && (score[order[j - 1]] < s)) {
                order[j] = order[j - 1];
                j--;
            }
            order[j] = d;
        }
    }
    if (n_hit > k)
        n_hit = (int32_t)k;
    lua_createtable(L, n_hit, 0);
    for (int32_t i = 0; i < n_hit; i++) {
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, order[i] + 1);
        lua_setfield(L, -2, "doc");
        lua_pushnumber(L, score[order[i]]);
        lua_setfield(L, -2, "score");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* idx:doc(i) -> the text of document i */
static int lb_bm25_doc(lua_State *L)
{
    bm25 *ix = lb_check_bm25(L, 1);
    const lua_Integer i = luaL_checkinteger(L, 2);
    luaL_argcheck(L, i >= 1 && i <= ix->n_docs, 2, "document index out of range");
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, i);
    return 1;
}

static int lb_bm25_count(lua_State *L)
{
    lua_pushinteger(L, lb_check_bm25(L, 1)->n_docs);
    return 1;
}

static int lb_bm25_tostring(lua_State *L)
{
    bm25 *ix = luaL_checkudata(L, 1, LB_BM25);
    lua_pushfstring(L, "moe.BM25 (%d documents, %d terms)", ix->n_docs, ix->n_terms);
    return 1;
}

/* moe.util.words(text) -> list of the lower-cased words BM25 indexes */
static int lb_util_words(lua_State *L)
{
    size_t len, pos = 0, wl;
    const char *s = luaL_checklstring(L, 1, &len);
    char w[128];
    int i = 0;
    lua_newtable(L);
    while ((wl = bm_next_word(s, len, &pos, w, sizeof w)) > 0) {
        lua_pushlstring(L, w, wl);
        lua_rawseti(L, -2, ++i);
    }
    return 1;
}

void lb_util_register(lua_State *L, int mod)
{
    static const luaL_Reg fns[] = {
        {"kmeans", lb_util_kmeans}, {"cosine", lb_util_cosine},
        {"normalize", lb_util_normalize}, {"mean", lb_util_mean}, {"bm25", lb_util_bm25},
        {"words", lb_util_words}, {NULL, NULL}};
    static const luaL_Reg bm_m[] = {
        {"search", lb_bm25_search}, {"doc", lb_bm25_doc}, {"count", lb_bm25_count},
        {"close", lb_bm25_gc}, {"__gc", lb_bm25_gc}, {"__close", lb_bm25_gc},
        {"__tostring", lb_bm25_tostring}, {NULL, NULL}};
    mod = lua_absindex(L, mod);
    luaL_newmetatable(L, LB_BM25);
    luaL_setfuncs(L, bm_m, 0);
    lb_finish_metatable(L, LB_BM25);
    lua_pop(L, 1);
    luaL_newlib(L, fns);
    lua_setfield(L, mod, "util");
}
