/*
 * emoe.c - EMoE: split the dense FFNs of a model into N emergent experts
 * without new parameters (DESIGN.md "EMoE"), written as a new GGUF file.
 *
 * Owns balanced spherical k-means over the L2-normalised gate-projection
 * rows ("keys"), the permutation of gate/up rows and down columns into
 * contiguous, equally sized expert blocks (zero padding when N does not
 * divide n_ff), the router rows (block means of the raw gate rows) and the
 * writing of the converted file with the GGUF writer. Depends on gguf,
 * quant and util only; knows nothing about contexts or the forward pass.
 * Never prints.
 *
 * Types: gate and up rows are moved as raw bytes (any type; an all-zero
 * block decodes to zeros in every GGUF type, so padding rows are zero
 * bytes). ffn_down is dequantized, its columns permuted, and re-quantized
 * to the source type when n_ff_exp is a multiple of that type's block
 * size, else written as f32. The router (ffn_gate_inp) is always f32.
 */
#include "config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"
#include "util.h"

/* ---- a small deterministic PRNG (splitmix64) ---------------------------- */

static uint64_t emoe_rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0, 1) */
static double emoe_rng_unif(uint64_t *s)
{
    return (double)(emoe_rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

moe_emoe_params moe_emoe_default_params(void)
{
    moe_emoe_params p;
    memset(&p, 0, sizeof p);
    p.n_expert = 8;
    p.n_expert_used = 2;
    p.seed = 1;
    p.max_iter = 30;
    return p;
}

/* ---- balanced spherical k-means ----------------------------------------- */

typedef struct {
    float sim;
    int32_t row;
    int32_t c;
} emoe_pair;

static int emoe_pair_cmp(const void *a, const void *b)
{
    const emoe_pair *x = a, *y = b;
    if (x->sim != y->sim)
        return x->sim > y->sim ? -1 : 1;
    if (x->row != y->row)
        return x->row < y->row ? -1 : 1;
    return x->c < y->c ? -1 : x->c > y->c;
}

typedef struct {
    float gain;
    int32_t row;
} emoe_gain;

static int emoe_gain_cmp(const void *a, const void *b)
{
    const emoe_gain *x = a, *y = b;
    if (x->gain != y->gain)
        return x->gain > y->gain ? -1 : 1;
    return x->row < y->row ? -1 : x->row > y->row;
}

static void emoe_normalise(float *v, int64_t dim)
{
    double ss = 0.0;
    for (int64_t i = 0; i < dim; i++)
        ss += (double)v[i] * v[i];
    if (ss > 0.0) {
        float inv = (float)(1.0 / sqrt(ss));
        for (int64_t i = 0; i < dim; i++)
            v[i] *= inv;
    }
}

/* Cosine of unit vectors: 8 float lanes (vectorisable, deterministic). */
static float emoe_dot(const float *a, const float *b, int64_t dim)
{
    float acc[8] = {0};
    int64_t i = 0;
    double s = 0.0;
    for (; i + 8 <= dim; i += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < dim; i++)
        s += (double)a[i] * b[i];
    for (int j = 0; j < 8; j++)
        s += acc[j];
    return (float)s;
}

/* k-means++ seeding on the unit sphere: distance 1 - cos, weights d^2. */
static void emoe_seed_centroids(const float *keys, int64_t n, int64_t dim, int32_t nc,
                                uint64_t *rng, float *cent, double *dist)
{
    int64_t first = (int64_t)(emoe_rng_unif(rng) * (double)n);
    if (first >= n)
        first = n - 1;
    memcpy(cent, keys + first * dim, (size_t)dim * sizeof(float));
    for (int64_t i = 0; i < n; i++) {
        double d = 1.0 - emoe_dot(keys + i * dim, cent, dim);
        dist[i] = d > 0 ? d * d : 0.0;
    }
    for (int32_t c = 1; c < nc; c++) {
        double tot = 0.0, r, acc = 0.0;
        int64_t pick = n - 1;
        for (int64_t i = 0; i < n; i++)
            tot += dist[i];
        r = emoe_rng_unif(rng) * tot;
        if (tot > 0.0) {
            for (int64_t i = 0; i < n; i++) {
                acc += dist[i];
                if (acc > r && dist[i] > 0.0) {
                    pick = i;
                    break;
                }
            }
        } else {
            pick = (int64_t)(emoe_rng_unif(rng) * (double)n);
            if (pick >= n)
                pick = n - 1;
        }
        memcpy(cent + (int64_t)c * dim, keys + pick * dim, (size_t)dim * sizeof(float));
        for (int64_t i = 0; i < n; i++) {
            double d = 1.0 - emoe_dot(keys + i * dim, cent + (int64_t)c * dim, dim);
            d = d > 0 ? d * d : 0.0;
            if (d < dist[i])
                dist[i] = d;
        }
    }
}

/* Greedy balanced assignment: (row, cluster) pairs by similarity, best
 * first; a cluster takes rows until it has `small` of them, and `n_big`
 * clusters may take one more. Every row ends up assigned (see below). */
static void emoe_assign_greedy(const float *sim, int64_t n, int32_t nc, emoe_pair *pairs,
                               int32_t *assign, int32_t *count)
{
    const int64_t small = n / nc, n_big = n % nc;
    int64_t big_used = 0, done = 0;
    for (int64_t i = 0; i < n; i++)
        for (int32_t c = 0; c < nc; c++) {
            emoe_pair *p = &pairs[i * nc + c];
            p->sim = sim[i * nc + c];
            p->row = (int32_t)i;
            p->c = c;
        }
    qsort(pairs, (size_t)(n * nc), sizeof *pairs, emoe_pair_cmp);
    for (int64_t i = 0; i < n; i++)
        assign[i] = -1;
    memset(count, 0, (size_t)nc * sizeof *count);
    for (int64_t k = 0; k < n * nc && done < n; k++) {
        const emoe_pair *p = &pairs[k];
        if (assign[p->row] >= 0)
            continue;
        if (count[p->c] < small || (count[p->c] == small && big_used < n_big)) {
            if (count[p->c] == small)
                big_used++;
            count[p->c]++;
            assign[p->row] = p->c;
            done++;
        }
    }
    /* Cannot happen (a rejected pair means a full cluster, and clusters
     * never empty again, so a left-over row would mean all were full with
     * fewer than n rows placed); kept so the invariant is local. */
    for (int64_t i = 0; i < n; i++)
        for (int32_t c = 0; assign[i] < 0 && c < nc; c++)
            if (count[c] < small || (count[c] == small && big_used < n_big)) {
                if (count[c] == small)
                    big_used++;
                count[c]++;
                assign[i] = c;
            }
}

/* Pairwise exchange: for each pair of clusters, swap the rows that gain
 * most by moving across while the summed gain is positive. Sizes stay, so
 * the member lists (mem, cluster c at mem[start[c] .. start[c + 1]), pos =
 * a row's place in mem) are built once per pass and updated in place. */
static bool emoe_swap_pass(const float *sim, int64_t n, int32_t nc, int32_t *assign,
                           emoe_gain *ga, emoe_gain *gb, int32_t *mem, int64_t *start,
                           int64_t *pos)
{
    bool any = false;
    memset(start, 0, (size_t)(nc + 1) * sizeof *start);
    for (int64_t i = 0; i < n; i++)
        start[assign[i] + 1]++;
    for (int32_t c = 0; c < nc; c++)
        start[c + 1] += start[c];
    for (int64_t i = 0; i < n; i++) {
        int64_t at = start[assign[i]]++;
        mem[at] = (int32_t)i;
        pos[i] = at;
    }
    for (int32_t c = nc; c > 0; c--)
        start[c] = start[c - 1];
    start[0] = 0;
    for (int32_t a = 0; a < nc; a++)
        for (int32_t b = a + 1; b < nc; b++) {
            int64_t na = 0, nb = 0;
            for (int64_t k = start[a]; k < start[a + 1]; k++) {
                int64_t i = mem[k];
                ga[na].gain = sim[i * nc + b] - sim[i * nc + a];
                ga[na++].row = (int32_t)i;
            }
            for (int64_t k = start[b]; k < start[b + 1]; k++) {
                int64_t i = mem[k];
                gb[nb].gain = sim[i * nc + a] - sim[i * nc + b];
                gb[nb++].row = (int32_t)i;
            }
            qsort(ga, (size_t)na, sizeof *ga, emoe_gain_cmp);
            qsort(gb, (size_t)nb, sizeof *gb, emoe_gain_cmp);
            for (int64_t j = 0; j < na && j < nb; j++) {
                int32_t ra = ga[j].row, rb = gb[j].row;
                int64_t pa = pos[ra], pb = pos[rb];
                if ((double)ga[j].gain + (double)gb[j].gain <= 1e-7)
                    break;
                assign[ra] = b;
                assign[rb] = a;
                mem[pa] = rb;
                mem[pb] = ra;
                pos[ra] = pb;
                pos[rb] = pa;
                any = true;
            }
        }
    return any;
}

moe_status moe_emoe_cluster(const float *rows, int64_t n, int64_t dim, int32_t n_clusters,
                            uint64_t seed, int32_t max_iter, int32_t *assign,
                            double *mean_cos)
{
    float *keys = NULL, *cent = NULL, *sim = NULL;
    double *dist = NULL;
    emoe_pair *pairs = NULL;
    emoe_gain *ga = NULL, *gb = NULL;
    int32_t *cur = NULL, *count = NULL, *relabel = NULL, *first = NULL, *mem = NULL;
    int64_t *start = NULL, *pos = NULL;
    double best = -INFINITY;
    uint64_t rng = seed ^ 0x5EEDull;
    moe_status st = MOE_OK;
    size_t nk, nsim;

    if (!rows || !assign || n < 1 || dim < 1 || n_clusters < 1 || n_clusters > n ||
        n > INT32_MAX)
        return moe_fail(MOE_ERR_INVALID_ARG,
                        "emoe clustering: bad arguments (%lld rows, dim %lld, %d clusters)",
                        (long long)n, (long long)dim, n_clusters);
    if (max_iter <= 0)
        max_iter = 30;
    if (!util_mul_size((size_t)n, (size_t)dim, &nk) ||
        !util_mul_size((size_t)n, (size_t)n_clusters, &nsim) ||
        nsim > SIZE_MAX / sizeof(emoe_pair))
        return moe_fail(MOE_ERR_NOMEM, "emoe clustering: size overflow");
    keys = malloc(nk * sizeof *keys);
    cent = malloc((size_t)n_clusters * (size_t)dim * sizeof *cent);
    sim = malloc(nsim * sizeof *sim);
    dist = malloc((size_t)n * sizeof *dist);
    pairs = malloc(nsim * sizeof *pairs);
    ga = malloc((size_t)n * sizeof *ga);
    gb = malloc((size_t)n * sizeof *gb);
    cur = malloc((size_t)n * sizeof *cur);
    count = malloc((size_t)n_clusters * sizeof *count);
    relabel = malloc((size_t)n_clusters * sizeof *relabel);
    first = malloc((size_t)n_clusters * sizeof *first);
    mem = malloc((size_t)n * sizeof *mem);
    pos = malloc((size_t)n * sizeof *pos);
    start = malloc(((size_t)n_clusters + 1) * sizeof *start);
    if (!keys || !cent || !sim || !dist || !pairs || !ga || !gb || !cur || !count ||
        !relabel || !first || !mem || !pos || !start) {
        st = moe_fail(MOE_ERR_NOMEM, "emoe clustering: out of memory for %lld rows",
                      (long long)n);
        goto done;
    }
    memcpy(keys, rows, nk * sizeof *keys);
    for (int64_t i = 0; i < n; i++)
        emoe_normalise(keys + i * dim, dim);
    emoe_seed_centroids(keys, n, dim, n_clusters, &rng, cent, dist);

    for (int32_t it = 0; it < max_iter; it++) {
        double obj = 0.0;
        bool changed = it == 0;
        for (int64_t i = 0; i < n; i++)
            for (int32_t c = 0; c < n_clusters; c++)
                sim[i * n_clusters + c] =
                    emoe_dot(keys + i * dim, cent + (int64_t)c * dim, dim);
        emoe_assign_greedy(sim, n, n_clusters, pairs, cur, count);
        for (int pass = 0; pass < 8; pass++)
            if (!emoe_swap_pass(sim, n, n_clusters, cur, ga, gb, mem, start, pos))
                break;
        for (int64_t i = 0; i < n; i++)
            obj += sim[i * n_clusters + cur[i]];
        if (obj > best + 1e-9) {
            for (int64_t i = 0; i < n; i++)
                changed |= assign[i] != cur[i];
            best = obj;
            memcpy(assign, cur, (size_t)n * sizeof *assign);
        } else {
            changed = false;
        }
        if (!changed && it > 0)
            break;
        /* new centroids: normalised means of the members */
        memset(cent, 0, (size_t)n_clusters * (size_t)dim * sizeof *cent);
        for (int64_t i = 0; i < n; i++) {
            float *cv = cent + (int64_t)assign[i] * dim;
            const float *kv = keys + i * dim;
            for (int64_t d = 0; d < dim; d++)
                cv[d] += kv[d];
        }
        for (int32_t c = 0; c < n_clusters; c++)
            emoe_normalise(cent + (int64_t)c * dim, dim);
    }

    /* Mean cosine of the keys to their (final) cluster mean direction. */
    memset(cent, 0, (size_t)n_clusters * (size_t)dim * sizeof *cent);
    for (int64_t i = 0; i < n; i++) {
        float *cv = cent + (int64_t)assign[i] * dim;
        for (int64_t d = 0; d < dim; d++)
            cv[d] += keys[i * dim + d];
    }
    for (int32_t c = 0; c < n_clusters; c++)
        emoe_normalise(cent + (int64_t)c * dim, dim);
    if (mean_cos) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++)
            s += emoe_dot(keys + i * dim, cent + (int64_t)assign[i] * dim, dim);
        *mean_cos = s / (double)n;
    }

    /* Deterministic labels: clusters ordered by their lowest row index. */
    for (int32_t c = 0; c < n_clusters; c++)
        first[c] = -1;
    {
        int32_t next = 0;
        for (int64_t i = 0; i < n; i++)
            if (first[assign[i]] < 0) {
                first[assign[i]] = (int32_t)i;
                relabel[assign[i]] = next++;
            }
        for (int64_t i = 0; i < n; i++)
            assign[i] = relabel[assign[i]];
    }
done:
    free(keys);
    free(cent);
    free(sim);
    free(dist);
    free(pairs);
    free(ga);
    free(gb);
    free(cur);
    free(count);
    free(relabel);
    free(first);
    free(mem);
    free(pos);
    free(start);
    return st;
}

moe_status moe_emoe_layout(const int32_t *assign, int64_t n, int32_t n_clusters,
                           int64_t n_per, int32_t *perm)
{
    int64_t *fill;
    if (!assign || !perm || n < 1 || n_clusters < 1 || n_per < 1 ||
        n_per > INT64_MAX / n_clusters || n_per * n_clusters < n)
        return moe_fail(MOE_ERR_INVALID_ARG, "emoe layout: bad arguments");
    fill = calloc((size_t)n_clusters, sizeof *fill);
    if (!fill)
        return moe_fail(MOE_ERR_NOMEM, "emoe layout: out of memory");
    for (int64_t s = 0; s < n_per * n_clusters; s++)
        perm[s] = -1;
    for (int64_t i = 0; i < n; i++) {
        int32_t c = assign[i];
        if (c < 0 || c >= n_clusters || fill[c] >= n_per) {
            free(fill);
            return moe_fail(MOE_ERR_INVALID_ARG,
                            "emoe layout: row %lld has cluster %d (full or out of range)",
                            (long long)i, c);
        }
        perm[(int64_t)c * n_per + fill[c]++] = (int32_t)i;
    }
    free(fill);
    return MOE_OK;
}

/* ---- conversion ---------------------------------------------------------- */

typedef struct {
    void *gate_inp, *gate, *up, *down; /* owned tensor data */
    moe_type down_type;
} emoe_layer_out;

static bool emoe_has_suffix(const char *name, int il, const char *suffix)
{
    char buf[96];
    snprintf(buf, sizeof buf, "blk.%d.%s", il, suffix);
    return strcmp(name, buf) == 0;
}

/* Parse "blk.<n>.<rest>"; returns n or -1. */
static int emoe_block_of(const char *name, const char **rest)
{
    char *end;
    long v;
    if (strncmp(name, "blk.", 4) != 0)
        return -1;
    v = strtol(name + 4, &end, 10);
    if (end == name + 4 || *end != '.' || v < 0 || v > 100000)
        return -1;
    *rest = end + 1;
    return (int)v;
}

static moe_status emoe_need_2d(const gguf_ctx *g, const char *name, int64_t ne0, int64_t ne1,
                               const gguf_tensor_info **out)
{
    const gguf_tensor_info *t = gguf_find_tensor(g, name);
    if (!t)
        return moe_fail(MOE_ERR_FORMAT, "emoe: missing tensor '%s'", name);
    if (t->n_dims != 2 || t->ne[0] != ne0 || t->ne[1] != ne1)
        return moe_fail(MOE_ERR_FORMAT, "emoe: tensor '%s' is not [%lld, %lld]", name,
                        (long long)ne0, (long long)ne1);
    if (!quant_type_supported((int)t->type) || t->type == MOE_TYPE_Q8_K)
        return moe_fail(MOE_ERR_UNSUPPORTED, "emoe: tensor '%s' has type %s", name,
                        quant_type_name((int)t->type));
    *out = t;
    return MOE_OK;
}

/* Convert one layer: cluster, permute, fill the owned buffers of lo. */
static moe_status emoe_convert_layer(const gguf_ctx *g, int il, int64_t n_embd, int64_t n_ff,
                                     int32_t ne, int64_t nfe, const moe_emoe_params *p,
                                     emoe_layer_out *lo, double *cos_out)
{
    const gguf_tensor_info *tg, *tu, *td;
    char name[96];
    float *G = NULL, *D = NULL, *row = NULL, *router;
    int32_t *assign = NULL, *perm = NULL, *cnt = NULL;
    moe_status st;
    size_t rb_g, rb_u, rb_d;
    int64_t n_slots = (int64_t)ne * nfe;

    snprintf(name, sizeof name, "blk.%d.ffn_gate.weight", il);
    if ((st = emoe_need_2d(g, name, n_embd, n_ff, &tg)))
        return st;
    snprintf(name, sizeof name, "blk.%d.ffn_up.weight", il);
    if ((st = emoe_need_2d(g, name, n_embd, n_ff, &tu)))
        return st;
    snprintf(name, sizeof name, "blk.%d.ffn_down.weight", il);
    if ((st = emoe_need_2d(g, name, n_ff, n_embd, &td)))
        return st;
    rb_g = quant_row_bytes(tg->type, n_embd);
    rb_u = quant_row_bytes(tu->type, n_embd);
    rb_d = quant_row_bytes(td->type, n_ff);
    lo->down_type = nfe % quant_block_elems(td->type) == 0 ? td->type : MOE_TYPE_F32;

    G = malloc((size_t)n_ff * (size_t)n_embd * sizeof *G);
    D = malloc((size_t)n_embd * (size_t)n_ff * sizeof *D);
    row = calloc((size_t)(nfe > n_ff ? nfe : n_ff), sizeof *row);
    assign = malloc((size_t)n_ff * sizeof *assign);
    perm = malloc((size_t)n_slots * sizeof *perm);
    cnt = calloc((size_t)ne, sizeof *cnt);
    lo->gate_inp = calloc((size_t)ne * (size_t)n_embd, sizeof(float));
    lo->gate = calloc((size_t)n_slots, rb_g);
    lo->up = calloc((size_t)n_slots, rb_u);
    lo->down = calloc((size_t)ne * (size_t)n_embd, quant_row_bytes(lo->down_type, nfe));
    if (!G || !D || !row || !assign || !perm || !cnt || !lo->gate_inp || !lo->gate ||
        !lo->up || !lo->down) {
        st = moe_fail(MOE_ERR_NOMEM, "emoe: out of memory converting layer %d", il);
        goto done;
    }
    for (int64_t i = 0; i < n_ff; i++)
        quant_dequantize_row(tg->type, (const char *)tg->data + (size_t)i * rb_g,
                             G + i * n_embd, n_embd);
    for (int64_t r = 0; r < n_embd; r++)
        quant_dequantize_row(td->type, (const char *)td->data + (size_t)r * rb_d,
                             D + r * n_ff, n_ff);

    if ((st = moe_emoe_cluster(G, n_ff, n_embd, ne, p->seed + (uint64_t)il, p->max_iter,
                               assign, cos_out)) ||
        (st = moe_emoe_layout(assign, n_ff, ne, nfe, perm)))
        goto done;

    /* gate / up rows as raw bytes; padding rows stay zero bytes */
    for (int64_t s = 0; s < n_slots; s++) {
        if (perm[s] < 0)
            continue;
        memcpy((char *)lo->gate + (size_t)s * rb_g,
               (const char *)tg->data + (size_t)perm[s] * rb_g, rb_g);
        memcpy((char *)lo->up + (size_t)s * rb_u,
               (const char *)tu->data + (size_t)perm[s] * rb_u, rb_u);
    }
    /* down: expert e, output row r holds D[r][perm[e*nfe + j]], j < nfe */
    {
        size_t rb_o = quant_row_bytes(lo->down_type, nfe);
        for (int32_t e = 0; e < ne; e++)
            for (int64_t r = 0; r < n_embd; r++) {
                char *dst = (char *)lo->down + ((size_t)e * (size_t)n_embd + (size_t)r) * rb_o;
                for (int64_t j = 0; j < nfe; j++) {
                    int32_t src = perm[(int64_t)e * nfe + j];
                    row[j] = src < 0 ? 0.0f : D[r * n_ff + src];
                }
                if (lo->down_type == MOE_TYPE_F32)
                    memcpy(dst, row, (size_t)nfe * sizeof(float));
                else
                    quant_quantize_row(lo->down_type, row, dst, nfe);
            }
    }
    /* router rows: mean of each block's real (un-normalised) gate rows */
    router = lo->gate_inp;
    for (int64_t s = 0; s < n_slots; s++) {
        int32_t e = (int32_t)(s / nfe);
        if (perm[s] < 0)
            continue;
        cnt[e]++;
        for (int64_t d = 0; d < n_embd; d++)
            router[(int64_t)e * n_embd + d] += G[(int64_t)perm[s] * n_embd + d];
    }
    for (int32_t e = 0; e < ne; e++)
        for (int64_t d = 0; d < n_embd; d++)
            router[(int64_t)e * n_embd + d] /= (float)cnt[e];
    st = MOE_OK;
done:
    free(G);
    free(D);
    free(row);
    free(assign);
    free(perm);
    free(cnt);
    return st;
}

moe_status moe_emoe_convert(const char *src, const char *dst, const moe_emoe_params *params,
                            moe_emoe_report *rep)
{
    moe_emoe_params p = params ? *params : moe_emoe_default_params();
    gguf_ctx *g = NULL;
    gguf_writer *w = NULL;
    emoe_layer_out *lo = NULL;
    int32_t *conv_list = NULL;
    moe_status st;
    const char *arch;
    char key[160];
    int64_t n_embd = 0, n_ff = 0, n_layer = 0, v, nfe;
    int32_t n_conv = 0;
    double cos_sum = 0.0;

    if (rep)
        memset(rep, 0, sizeof *rep);
    if (!src || !dst)
        return moe_fail(MOE_ERR_INVALID_ARG, "emoe: no input or output path");
    if ((st = gguf_open(src, &g)))
        return st;
    arch = gguf_get_str(g, "general.architecture");
    if (!arch) {
        st = moe_fail(MOE_ERR_FORMAT, "emoe: %s has no general.architecture", src);
        goto done;
    }
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if (gguf_get_int(g, ARCH_KEY("expert_count"), &v) && v > 0) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "emoe: %s already has %lld experts (needs a dense model)",
                      src, (long long)v);
        goto done;
    }
    if (!gguf_get_int(g, ARCH_KEY("embedding_length"), &n_embd) ||
        !gguf_get_int(g, ARCH_KEY("feed_forward_length"), &n_ff) ||
        !gguf_get_int(g, ARCH_KEY("block_count"), &n_layer) || n_embd < 1 || n_ff < 1 ||
        n_layer < 1 || n_embd > (1 << 16) || n_ff > (1 << 24) || n_layer > 4096) {
        st = moe_fail(MOE_ERR_FORMAT,
                      "emoe: %s lacks valid %s.embedding_length / feed_forward_length / block_count",
                      src, arch);
        goto done;
    }
    if (p.n_expert < 1 || p.n_expert > n_ff || p.n_expert > 4096) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "emoe: %d experts out of range [1, %lld]", p.n_expert,
                      (long long)(n_ff < 4096 ? n_ff : 4096));
        goto done;
    }
    if (p.n_expert_used < 1 || p.n_expert_used > p.n_expert) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "emoe: top-k %d out of range [1, %d]",
                      p.n_expert_used, p.n_expert);
        goto done;
    }
    if (p.layers && p.n_layers != n_layer) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "emoe: layer mask has %d entries, the model %lld layers",
                      p.n_layers, (long long)n_layer);
        goto done;
    }
    nfe = (n_ff + p.n_expert - 1) / p.n_expert;
    lo = calloc((size_t)n_layer, sizeof *lo);
    conv_list = calloc((size_t)n_layer, sizeof *conv_list);
    if (!lo || !conv_list) {
        st = moe_fail(MOE_ERR_NOMEM, "emoe: out of memory");
        goto done;
    }
    for (int64_t il = 0; il < n_layer; il++) {
        double c = 0.0;
        if (p.layers && !p.layers[il])
            continue;
        if (p.progress && !p.progress((double)n_conv, (double)n_layer, p.progress_ud)) {
            st = moe_fail(MOE_ERR_CANCELLED, "emoe: cancelled");
            goto done;
        }
        if ((st = emoe_convert_layer(g, (int)il, n_embd, n_ff, p.n_expert, nfe, &p, &lo[il], &c)))
            goto done;
        cos_sum += c;
        conv_list[n_conv++] = (int32_t)il;
    }
    if (n_conv == 0) {
        st = moe_fail(MOE_ERR_INVALID_ARG, "emoe: no layer selected for conversion");
        goto done;
    }

    w = gguf_writer_new();
    if (!w) {
        st = moe_fail(MOE_ERR_NOMEM, "emoe: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < gguf_n_kv(g); i++)
        if ((st = gguf_writer_copy_kv(w, g, i)))
            goto done;
    if ((st = gguf_writer_set_u32(w, ARCH_KEY("expert_count"), (uint32_t)p.n_expert)) ||
        (st = gguf_writer_set_u32(w, ARCH_KEY("expert_used_count"), (uint32_t)p.n_expert_used)) ||
        (st = gguf_writer_set_u32(w, ARCH_KEY("expert_feed_forward_length"), (uint32_t)nfe)) ||
        (st = gguf_writer_set_str(w, "moestudio.gating", "emoe-unweighted")) ||
        (st = gguf_writer_set_arr(w, "moestudio.emoe.layers", GGUF_TYPE_INT32, conv_list,
                                  (uint64_t)n_conv)) ||
        (st = gguf_writer_set_u32(w, "moestudio.emoe.n_ff", (uint32_t)n_ff)) ||
        (st = gguf_writer_set_u64(w, "moestudio.emoe.seed", p.seed)))
        goto done;
#undef ARCH_KEY

    for (int64_t i = 0; i < gguf_n_tensors(g); i++) {
        const gguf_tensor_info *t = gguf_tensor(g, i);
        const char *rest;
        int il = emoe_block_of(t->name, &rest);
        if (il >= 0 && il < n_layer && lo[il].gate) {
            if (strcmp(rest, "ffn_up.weight") == 0 || strcmp(rest, "ffn_down.weight") == 0)
                continue;
            if (emoe_has_suffix(t->name, il, "ffn_gate.weight")) {
                const gguf_tensor_info *tu;
                int64_t ne_r[2] = {n_embd, p.n_expert};
                int64_t ne_gu[3] = {n_embd, nfe, p.n_expert};
                int64_t ne_d[3] = {nfe, n_embd, p.n_expert};
                char nm[96];
                snprintf(nm, sizeof nm, "blk.%d.ffn_up.weight", il);
                tu = gguf_find_tensor(g, nm);
                snprintf(nm, sizeof nm, "blk.%d.ffn_gate_inp.weight", il);
                if ((st = gguf_writer_add_tensor(w, nm, MOE_TYPE_F32, 2, ne_r, lo[il].gate_inp)))
                    goto done;
                snprintf(nm, sizeof nm, "blk.%d.ffn_gate_exps.weight", il);
                if ((st = gguf_writer_add_tensor(w, nm, t->type, 3, ne_gu, lo[il].gate)))
                    goto done;
                snprintf(nm, sizeof nm, "blk.%d.ffn_up_exps.weight", il);
                if ((st = gguf_writer_add_tensor(w, nm, tu->type, 3, ne_gu, lo[il].up)))
                    goto done;
                snprintf(nm, sizeof nm, "blk.%d.ffn_down_exps.weight", il);
                if ((st = gguf_writer_add_tensor(w, nm, lo[il].down_type, 3, ne_d, lo[il].down)))
                    goto done;
                continue;
            }
        }
        if ((st = gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data)))
            goto done;
    }
    if ((st = gguf_writer_write(w, dst)))
        goto done;
    if (rep) {
        rep->n_converted = n_conv;
        rep->n_ff = (int32_t)n_ff;
        rep->n_ff_exp = (int32_t)nfe;
        rep->n_padding = (int32_t)((int64_t)p.n_expert * nfe - n_ff);
        rep->mean_cos = cos_sum / n_conv;
        rep->down_type = "";
        for (int64_t il = 0; il < n_layer; il++)
            if (lo[il].gate) {
                rep->down_type = quant_type_name((int)lo[il].down_type);
                break;
            }
    }
    if (p.progress)
        p.progress((double)n_layer, (double)n_layer, p.progress_ud);
done:
    if (lo)
        for (int64_t il = 0; il < n_layer; il++) {
            free(lo[il].gate_inp);
            free(lo[il].gate);
            free(lo[il].up);
            free(lo[il].down);
        }
    free(lo);
    free(conv_list);
    gguf_writer_free(w);
    gguf_close(g);
    return st;
}
