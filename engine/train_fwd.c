/*
 * train_fwd.c - the trainer's forward and backward passes over a batch of
 * sequences: embedding, RMSNorm, RoPE attention with GQA (causal, per
 * sequence from position 0), dense SwiGLU or routed experts (softmax
 * router, top-k, Mixtral renormalisation, plain or EMoE unweighted
 * weights) with the switch / z / mutual-information balance losses, the LM
 * head and cross-entropy. Every matrix product goes through OpenBLAS sgemm.
 *
 * Owns the activation buffers of struct moe_trainer (train_impl.h); knows
 * nothing of files or the optimizer (train.c). Never prints.
 */
#include "config.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"
#include "train_impl.h"
#include "util.h"

void train_set_threads(int n)
{
    openblas_set_num_threads(n < 1 ? 1 : n);
}

/* ---- matrix products (row-major, W [out][in] as in GGUF) ---------------- */

/* Y[N][out] = X[N][in] W^T (+ beta Y) */
static void lin_fwd(const float *X, const float *W, float *Y, int64_t N, int64_t in, int64_t out,
                    float beta)
{
    if (N <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)out, (int)in, 1.0f, X,
                (int)in, W, (int)in, beta, Y, (int)out);
}

/* dX[N][in] = dY[N][out] W (+ beta dX) */
static void lin_bwd_x(const float *dY, const float *W, float *dX, int64_t N, int64_t in,
                      int64_t out, float beta)
{
    if (N <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)in, (int)out, 1.0f, dY,
                (int)out, W, (int)in, beta, dX, (int)in);
}

/* dW[out][in] += dY^T X */
static void lin_bwd_w(const float *dY, const float *X, float *dW, int64_t N, int64_t in,
                      int64_t out)
{
    if (N <= 0)
        return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)out, (int)in, (int)N, 1.0f, dY,
                (int)out, X, (int)in, 1.0f, dW, (int)in);
}

/* ---- buffers ------------------------------------------------------------- */

static void acts_free(train_acts *a)
{
    free(a->x); free(a->rms1); free(a->xn1); free(a->q); free(a->k); free(a->v);
    free(a->p); free(a->att); free(a->xm); free(a->rms2); free(a->xn2);
    free(a->hg); free(a->hu); free(a->rlog); free(a->prob); free(a->sel); free(a->w);
    free(a->slot); free(a->xg); free(a->g); free(a->u); free(a->y); free(a->f);
    memset(a, 0, sizeof *a);
}

static void *alloc_f(size_t n, size_t elem, bool *ok)
{
    void *p;
    size_t bytes;
    if (!util_mul_size(n ? n : 1, elem, &bytes)) {
        *ok = false;
        return NULL;
    }
    p = malloc(bytes);
    if (!p)
        *ok = false;
    return p;
}

void train_free_bufs(moe_trainer *t)
{
    if (t->acts)
        for (int il = 0; il < t->cfg.n_layer; il++)
            acts_free(&t->acts[il]);
    free(t->acts);
    free(t->xf); free(t->rmsf); free(t->xnf); free(t->logits);
    free(t->dx); free(t->dx2); free(t->dtmp); free(t->dq); free(t->dk); free(t->dv);
    free(t->datt); free(t->dp); free(t->dh1); free(t->dh2); free(t->dy); free(t->dlog);
    free(t->rope_cos); free(t->rope_sin);
    t->acts = NULL;
    t->xf = t->rmsf = t->xnf = t->logits = NULL;
    t->dx = t->dx2 = t->dtmp = t->dq = t->dk = t->dv = t->datt = t->dp = NULL;
    t->dh1 = t->dh2 = t->dy = t->dlog = t->rope_cos = t->rope_sin = NULL;
    t->cap_seq = t->cap_t = 0;
}

moe_status train_reserve(moe_trainer *t, int32_t n_seq, int32_t T)
{
    const moe_train_config *c = &t->cfg;
    const size_t E = (size_t)c->n_embd, hd = (size_t)t->n_embd_head;
    const size_t nq = (size_t)c->n_head * hd, nkv = (size_t)c->n_head_kv * hd;
    const size_t X = (size_t)(c->n_expert > 0 ? c->n_expert : 1);
    const size_t k = (size_t)(c->n_expert_used > 0 ? c->n_expert_used : 1);
    size_t N, S, hmax = 0;
    bool ok = true;

    if (n_seq < 1 || T < 1 || T > (1 << 16) || n_seq > (1 << 16))
        return moe_fail(MOE_ERR_INVALID_ARG, "train: bad batch shape %d x %d", n_seq, T);
    if (n_seq <= t->cap_seq && T <= t->cap_t)
        return MOE_OK;
    if ((int64_t)n_seq * T * (int64_t)(t->n_vocab > (int32_t)E ? t->n_vocab : (int32_t)E) >
        ((int64_t)1 << 31) - 1)
        return moe_fail(MOE_ERR_INVALID_ARG, "train: batch %d x %d too large", n_seq, T);
    train_free_bufs(t);
    N = (size_t)n_seq * (size_t)T;
    S = N * k;
    t->acts = calloc((size_t)c->n_layer, sizeof *t->acts);
    if (!t->acts)
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory");
    for (int il = 0; il < c->n_layer; il++) {
        train_acts *a = &t->acts[il];
        const train_layer *L = &t->layers[il];
        a->x = alloc_f(N * E, 4, &ok);
        a->rms1 = alloc_f(N, 4, &ok);
        a->xn1 = alloc_f(N * E, 4, &ok);
        a->q = alloc_f(N * nq, 4, &ok);
        a->k = alloc_f(N * nkv, 4, &ok);
        a->v = alloc_f(N * nkv, 4, &ok);
        a->p = alloc_f((size_t)n_seq * (size_t)c->n_head * (size_t)T * (size_t)T, 4, &ok);
        a->att = alloc_f(N * nq, 4, &ok);
        a->xm = alloc_f(N * E, 4, &ok);
        a->rms2 = alloc_f(N, 4, &ok);
        a->xn2 = alloc_f(N * E, 4, &ok);
        a->f = alloc_f(N * E, 4, &ok);
        if (L->moe) {
            const size_t F = (size_t)t->tens[L->gate_exps].ne[1];
            const size_t Xl = (size_t)t->tens[L->gate_inp].ne[1];
            a->rlog = alloc_f(N * Xl, 4, &ok);
            a->prob = alloc_f(N * Xl, 4, &ok);
            a->sel = alloc_f(N * k, 4, &ok);
            a->w = alloc_f(N * k, 4, &ok);
            a->slot = alloc_f(N * k, 4, &ok);
            a->xg = alloc_f(S * E, 4, &ok);
            a->g = alloc_f(S * F, 4, &ok);
            a->u = alloc_f(S * F, 4, &ok);
            a->y = alloc_f(S * E, 4, &ok);
            if (S * F > hmax)
                hmax = S * F;
        } else {
            const size_t F = (size_t)t->tens[L->ffn_gate].ne[1];
            a->hg = alloc_f(N * F, 4, &ok);
            a->hu = alloc_f(N * F, 4, &ok);
            if (N * F > hmax)
                hmax = N * F;
        }
    }
    t->xf = alloc_f(N * E, 4, &ok);
    t->rmsf = alloc_f(N, 4, &ok);
    t->xnf = alloc_f(N * E, 4, &ok);
    t->logits = alloc_f(N * (size_t)t->n_vocab, 4, &ok);
    t->dx = alloc_f(N * E, 4, &ok);
    t->dx2 = alloc_f(N * E, 4, &ok);
    t->dtmp = alloc_f(N * E, 4, &ok);
    t->dq = alloc_f(N * nq, 4, &ok);
    t->dk = alloc_f(N * nkv, 4, &ok);
    t->dv = alloc_f(N * nkv, 4, &ok);
    t->datt = alloc_f(N * nq, 4, &ok);
    t->dp = alloc_f((size_t)T * (size_t)T, 4, &ok);
    t->dh1 = alloc_f(hmax, 4, &ok);
    t->dh2 = alloc_f(hmax, 4, &ok);
    t->dy = alloc_f((S > N ? S : N) * E, 4, &ok);
    t->dlog = alloc_f(N * X * 2 + 2 * X, 4, &ok);
    t->rope_cos = alloc_f((size_t)T * hd, 4, &ok);
    t->rope_sin = alloc_f((size_t)T * hd, 4, &ok);
    if (!ok) {
        train_free_bufs(t);
        return moe_fail(MOE_ERR_NOMEM, "train: out of memory for a %d x %d batch", n_seq, T);
    }
    /* RoPE tables, the inference pass's angles so logits agree closely */
    for (int32_t pos = 0; pos < T; pos++)
        forward_rope_angles(pos, t->n_embd_head, c->rope_freq_base,
                            t->rope_cos + (size_t)pos * hd, t->rope_sin + (size_t)pos * hd);
    t->cap_seq = n_seq;
    t->cap_t = T;
    return MOE_OK;
}

/* ---- elementwise pieces -------------------------------------------------- */

static float rmsnorm_fwd(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0.0;
    float mean, scale;
    for (int64_t i = 0; i < n; i++)
        ss += (double)(x[i] * x[i]);
    mean = (float)(ss / (double)n);
    scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
    return scale;
}

/* dx += d/dx of rmsnorm given dy; dw += dy * x * r */
static void rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                        float r, int64_t n)
{
    double dot = 0.0;
    for (int64_t i = 0; i < n; i++)
        dot += (double)(dy[i] * w[i]) * x[i];
    {
        const float c = (float)(dot * (double)r * r * r / (double)n);
        for (int64_t i = 0; i < n; i++) {
            dx[i] += r * dy[i] * w[i] - c * x[i];
            dw[i] += dy[i] * x[i] * r;
        }
    }
}

/* Rotate pairs (2i, 2i+1) of each head; inverse rotation with sign -1. */
static void rope_apply(const moe_trainer *t, float *x, int32_t n_heads, int32_t pos, float sign)
{
    const int32_t hd = t->n_embd_head;
    const float *cs = t->rope_cos + (size_t)pos * (size_t)hd;
    const float *sn = t->rope_sin + (size_t)pos * (size_t)hd;
    for (int32_t h = 0; h < n_heads; h++) {
        float *v = x + (size_t)h * (size_t)hd;
        for (int32_t i = 0; i < hd / 2; i++) {
            const float c = cs[i], s = sign * sn[i];
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * c - x1 * s;
            v[2 * i + 1] = x0 * s + x1 * c;
        }
    }
}

static inline float silu(float x)
{
    return x / (1.0f + expf(-x));
}

/* ---- attention ------------------------------------------------------------ */

static void attn_fwd(moe_trainer *t, train_acts *a, int32_t n_seq, int32_t T)
{
    const moe_train_config *c = &t->cfg;
    const int32_t hd = t->n_embd_head, H = c->n_head, group = c->n_head / c->n_head_kv;
    const int64_t nq = (int64_t)H * hd, nkv = (int64_t)c->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int32_t s = 0; s < n_seq; s++)
        for (int32_t h = 0; h < H; h++) {
            const int32_t g = h / group;
            const float *Q = a->q + (size_t)s * T * nq + (size_t)h * hd;
            const float *K = a->k + (size_t)s * T * nkv + (size_t)g * hd;
            const float *V = a->v + (size_t)s * T * nkv + (size_t)g * hd;
            float *P = a->p + ((size_t)s * H + (size_t)h) * (size_t)T * (size_t)T;
            float *O = a->att + (size_t)s * T * nq + (size_t)h * hd;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, scale, Q, (int)nq, K,
                        (int)nkv, 0.0f, P, T);
            for (int32_t i = 0; i < T; i++) {
                float *row = P + (size_t)i * T, mx = -INFINITY, sum = 0.0f;
                for (int32_t j = 0; j <= i; j++)
                    mx = row[j] > mx ? row[j] : mx;
                for (int32_t j = 0; j <= i; j++) {
                    row[j] = expf(row[j] - mx);
                    sum += row[j];
                }
                for (int32_t j = 0; j <= i; j++)
                    row[j] /= sum;
                for (int32_t j = i + 1; j < T; j++)
                    row[j] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, V,
                        (int)nkv, 0.0f, O, (int)nq);
        }
}

/* datt -> dq (overwritten), dk, dv (accumulated; zeroed by the caller) */
static void attn_bwd(moe_trainer *t, const train_acts *a, int32_t n_seq, int32_t T)
{
    const moe_train_config *c = &t->cfg;
    const int32_t hd = t->n_embd_head, H = c->n_head, group = c->n_head / c->n_head_kv;
    const int64_t nq = (int64_t)H * hd, nkv = (int64_t)c->n_head_kv * hd;
    const float scale = 1.0f / sqrtf((float)hd);
    float *dP = t->dp;
    for (int32_t s = 0; s < n_seq; s++)
        for (int32_t h = 0; h < H; h++) {
            const int32_t g = h / group;
            const size_t qo = (size_t)s * T * nq + (size_t)h * hd;
            const size_t ko = (size_t)s * T * nkv + (size_t)g * hd;
            const float *P = a->p + ((size_t)s * H + (size_t)h) * (size_t)T * (size_t)T;
            const float *dO = t->datt + qo;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hd, 1.0f, dO, (int)nq,
                        a->v + ko, (int)nkv, 0.0f, dP, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, 1.0f, P, T, dO,
                        (int)nq, 1.0f, t->dv + ko, (int)nkv);
            for (int32_t i = 0; i < T; i++) {
                const float *pr = P + (size_t)i * T;
                float *dr = dP + (size_t)i * T, dot = 0.0f;
                for (int32_t j = 0; j <= i; j++)
                    dot += pr[j] * dr[j];
                for (int32_t j = 0; j <= i; j++)
                    dr[j] = pr[j] * (dr[j] - dot);
                for (int32_t j = i + 1; j < T; j++)
                    dr[j] = 0.0f;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, T, scale, dP, T,
                        a->k + ko, (int)nkv, 0.0f, t->dq + qo, (int)nq);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, T, scale, dP, T,
                        a->q + qo, (int)nq, 1.0f, t->dk + ko, (int)nkv);
        }
}

/* ---- feed-forward --------------------------------------------------------- */

/* SwiGLU of n rows: g, u pre-activations kept; y = (silu(g) * u) Wd^T.
 * tmp holds n * F floats. */
static void swiglu_fwd(const float *x, int64_t n, int64_t E, int64_t F, const float *Wg,
                       const float *Wu, const float *Wd, float *g, float *u, float *tmp,
                       float *y)
{
    lin_fwd(x, Wg, g, n, E, F, 0.0f);
    lin_fwd(x, Wu, u, n, E, F, 0.0f);
    for (int64_t i = 0; i < n * F; i++)
        tmp[i] = silu(g[i]) * u[i];
    lin_fwd(tmp, Wd, y, n, F, E, 0.0f);
}

/* Backward of swiglu_fwd given dy ([n][E]); adds weight gradients and
 * writes dx ([n][E], overwritten) unless dx is NULL. h1, h2: n * F. */
static void swiglu_bwd(const float *x, int64_t n, int64_t E, int64_t F, const float *Wg,
                       const float *Wu, const float *Wd, float *dWg, float *dWu, float *dWd,
                       const float *g, const float *u, const float *dy, float *h1, float *h2,
                       float *dx)
{
    for (int64_t i = 0; i < n * F; i++)
        h2[i] = silu(g[i]) * u[i];
    lin_bwd_w(dy, h2, dWd, n, F, E);
    lin_bwd_x(dy, Wd, h1, n, F, E, 0.0f); /* da */
    for (int64_t i = 0; i < n * F; i++) {
        const float sg = 1.0f / (1.0f + expf(-g[i]));
        const float da = h1[i];
        h1[i] = da * u[i] * sg * (1.0f + g[i] * (1.0f - sg)); /* dg */
        h2[i] = da * g[i] * sg;                               /* du */
    }
    lin_bwd_w(h1, x, dWg, n, E, F);
    lin_bwd_w(h2, x, dWu, n, E, F);
    if (dx) {
        lin_bwd_x(h1, Wg, dx, n, E, F, 0.0f);
        lin_bwd_x(h2, Wu, dx, n, E, F, 1.0f);
    }
}

void train_expert_fwd_bwd(moe_trainer *t, int32_t il, int32_t e, const float *x, int32_t n,
                          float *g, float *u, float *y, const float *dy)
{
    const train_layer *L = &t->layers[il];
    const int64_t E = t->cfg.n_embd, F = t->tens[L->gate_exps].ne[1];
    const size_t eo = (size_t)e * (size_t)(F * E);
    const float *Wg = t->params + t->tens[L->gate_exps].off + eo;
    const float *Wu = t->params + t->tens[L->up_exps].off + eo;
    const float *Wd = t->params + t->tens[L->down_exps].off + eo;
    swiglu_fwd(x, n, E, F, Wg, Wu, Wd, g, u, t->dh1, y);
    if (dy)
        swiglu_bwd(x, n, E, F, Wg, Wu, Wd, t->grads + t->tens[L->gate_exps].off + eo,
                   t->grads + t->tens[L->up_exps].off + eo,
                   t->grads + t->tens[L->down_exps].off + eo, g, u, dy, t->dh1, t->dh2, NULL);
}

/* Router of one token: probabilities, top-k (ties to the lower id) and
 * weights, by model_route itself (a softmax-gated file's rule), so the
 * trainer routes exactly as the engine will run the saved model. */
static void route_token(const moe_trainer *t, int32_t X, const float *l, float *p, int32_t *sel,
                        float *w)
{
    model_hparams hp = {0};
    hp.n_expert = X;
    hp.n_expert_used = t->cfg.n_expert_used;
    hp.gate = GATE_SOFTMAX;
    hp.norm_topk = t->cfg.norm_topk;
    hp.unweighted = t->cfg.unweighted;
    hp.expert_weights_scale = 1.0f;
    model_route(&hp, l, p, sel, w);
}

static void moe_fwd(moe_trainer *t, int32_t il, int64_t N, bool count_routes)
{
    const train_layer *L = &t->layers[il];
    train_acts *a = &t->acts[il];
    const int32_t k = t->cfg.n_expert_used;
    const int64_t E = t->cfg.n_embd;
    const int32_t X = (int32_t)t->tens[L->gate_inp].ne[1];
    const int64_t F = t->tens[L->gate_exps].ne[1];
    int32_t *start = (int32_t *)t->dlog, *cnt = start + X; /* scratch */
    int32_t n_slots = 0;

    lin_fwd(a->xn2, t->params + t->tens[L->gate_inp].off, a->rlog, N, E, X, 0.0f);
    memset(cnt, 0, (size_t)X * sizeof *cnt);
    for (int64_t i = 0; i < N; i++) {
        route_token(t, X, a->rlog + i * X, a->prob + i * X, a->sel + i * k, a->w + i * k);
        for (int32_t j = 0; j < k; j++)
            cnt[a->sel[i * k + j]]++;
    }
    if (count_routes && t->route_count)
        for (int32_t e = 0; e < X; e++)
            t->route_count[(size_t)il * (size_t)X + (size_t)e] += cnt[e];
    for (int32_t e = 0; e < X; e++) {
        start[e] = n_slots;
        n_slots += cnt[e];
        cnt[e] = 0;
    }
    for (int64_t i = 0; i < N; i++)
        for (int32_t j = 0; j < k; j++) {
            const int32_t e = a->sel[i * k + j];
            const int32_t s = start[e] + cnt[e]++;
            a->slot[i * k + j] = s;
            memcpy(a->xg + (size_t)s * E, a->xn2 + i * E, (size_t)E * sizeof(float));
        }
    for (int32_t e = 0; e < X; e++) {
        const size_t s0 = (size_t)start[e], eo = (size_t)e * (size_t)(F * E);
        if (!cnt[e])
            continue;
        swiglu_fwd(a->xg + s0 * E, cnt[e], E, F, t->params + t->tens[L->gate_exps].off + eo,
                   t->params + t->tens[L->up_exps].off + eo,
                   t->params + t->tens[L->down_exps].off + eo, a->g + s0 * F, a->u + s0 * F,
                   t->dh1, a->y + s0 * E);
    }
    memset(a->f, 0, (size_t)N * (size_t)E * sizeof(float));
    for (int64_t i = 0; i < N; i++)
        for (int32_t j = 0; j < k; j++) {
            const float w = a->w[i * k + j];
            const float *y = a->y + (size_t)a->slot[i * k + j] * E;
            float *o = a->f + i * E;
            for (int64_t d = 0; d < E; d++)
                o[d] += w * y[d];
        }
    /* balance losses of this layer */
    {
        double bal = 0.0, z = 0.0, hc = 0.0, hm = 0.0;
        double *pm = calloc((size_t)X, sizeof *pm);
        int64_t *load = calloc((size_t)X, sizeof *load);
        if (pm && load) {
            for (int64_t i = 0; i < N; i++) {
                const float *p = a->prob + i * X, *l = a->rlog + i * X;
                float mx = -INFINITY;
                double se = 0.0, lse;
                for (int32_t e = 0; e < X; e++) {
                    pm[e] += p[e];
                    mx = l[e] > mx ? l[e] : mx;
                    if (p[e] > 0)
                        hc -= (double)p[e] * log((double)p[e]);
                }
                for (int32_t e = 0; e < X; e++)
                    se += exp((double)(l[e] - mx));
                lse = mx + log(se);
                z += lse * lse;
                for (int32_t j = 0; j < k; j++)
                    load[a->sel[i * k + j]]++;
            }
            for (int32_t e = 0; e < X; e++) {
                const double P = pm[e] / (double)N, f = (double)load[e] / (double)(N * k);
                bal += f * P;
                if (P > 0)
                    hm -= P * log(P);
            }
            t->aux_bal += X * bal;
            t->aux_z += z / (double)N;
            t->aux_mi += -(hm - hc / (double)N);
        }
        free(pm);
        free(load);
    }
}

/* Backward of the MoE block: df = t->dx ([N][E]); writes dxn2 into t->dx2
 * (overwritten). */
static void moe_bwd(moe_trainer *t, int32_t il, int64_t N)
{
    const train_layer *L = &t->layers[il];
    const train_acts *a = &t->acts[il];
    const int32_t k = t->cfg.n_expert_used;
    const int64_t E = t->cfg.n_embd;
    const int32_t X = (int32_t)t->tens[L->gate_inp].ne[1];
    const int64_t F = t->tens[L->gate_exps].ne[1];
    const float *df = t->dx;
    float *dl = t->dlog;       /* [N][X] router logit gradient */
    float *dpm = dl + N * X;   /* [X] per-expert coefficients */
    float *lpm = dpm + X;      /* [X] log mean prob */
    const int n_moe = t->n_moe_layers > 0 ? t->n_moe_layers : 1;
    const float c_bal = t->par.w_balance / (float)n_moe, c_z = t->par.w_zloss / (float)n_moe,
                c_mi = t->par.w_mi / (float)n_moe;
    int32_t *start = (int32_t *)t->dq, *cnt = start + X; /* free here: attention is later */

    /* expert outputs: dy per slot, dw per choice */
    memset(dl, 0, (size_t)N * (size_t)X * sizeof(float));
    for (int64_t i = 0; i < N; i++) {
        float dw[64];
        float sumw = 0.0f, sump = 0.0f;
        for (int32_t j = 0; j < k; j++) {
            const int32_t s = a->slot[i * k + j];
            const float *y = a->y + (size_t)s * E;
            float *dy = t->dy + (size_t)s * E;
            const float w = a->w[i * k + j];
            double acc = 0.0;
            for (int64_t d = 0; d < E; d++) {
                dy[d] = w * df[i * E + d];
                acc += (double)df[i * E + d] * y[d];
            }
            dw[j] = (float)acc;
            sumw += w * dw[j];
            sump += a->prob[i * X + a->sel[i * k + j]];
        }
        /* dprob into dl (softmax backward below) */
        if (!t->cfg.unweighted) {
            for (int32_t j = 0; j < k; j++) {
                const int32_t e = a->sel[i * k + j];
                if (t->cfg.norm_topk)
                    dl[i * X + e] += (dw[j] - sumw) / sump;
                else
                    dl[i * X + e] += dw[j];
            }
        }
    }
    /* balance-loss gradients w.r.t. probabilities */
    {
        int64_t *load = calloc((size_t)X, sizeof *load);
        double *pm = calloc((size_t)X, sizeof *pm);
        if (load && pm) {
            for (int64_t i = 0; i < N; i++) {
                for (int32_t j = 0; j < k; j++)
                    load[a->sel[i * k + j]]++;
                for (int32_t e = 0; e < X; e++)
                    pm[e] += a->prob[i * X + e];
            }
            for (int32_t e = 0; e < X; e++) {
                const double f = (double)load[e] / (double)(N * k);
                const double P = pm[e] / (double)N;
                dpm[e] = (float)(c_bal * X * f / (double)N);
                lpm[e] = (float)log(P > 1e-30 ? P : 1e-30);
            }
        }
        free(load);
        free(pm);
    }
    for (int64_t i = 0; i < N; i++) {
        const float *p = a->prob + i * X, *l = a->rlog + i * X;
        float *g = dl + i * X, dot = 0.0f, mx = -INFINITY;
        double se = 0.0, lse;
        for (int32_t e = 0; e < X; e++) {
            const float lp = logf(p[e] > 1e-30f ? p[e] : 1e-30f);
            g[e] += dpm[e] + c_mi * (lpm[e] - lp) / (float)N;
            dot += p[e] * g[e];
            mx = l[e] > mx ? l[e] : mx;
        }
        for (int32_t e = 0; e < X; e++)
            se += exp((double)(l[e] - mx));
        lse = mx + log(se);
        for (int32_t e = 0; e < X; e++)
            g[e] = p[e] * (g[e] - dot) + c_z * 2.0f * (float)lse * p[e] / (float)N;
    }
    /* experts, grouped by slot ranges */
    memset(cnt, 0, (size_t)X * sizeof *cnt);
    for (int64_t i = 0; i < N * k; i++)
        cnt[a->sel[i]]++;
    {
        int32_t n_slots = 0;
        for (int32_t e = 0; e < X; e++) {
            start[e] = n_slots;
            n_slots += cnt[e];
        }
    }
    for (int32_t e = 0; e < X; e++) {
        const size_t s0 = (size_t)start[e], eo = (size_t)e * (size_t)(F * E);
        const train_tensor *tg = &t->tens[L->gate_exps], *tu = &t->tens[L->up_exps],
                           *td = &t->tens[L->down_exps];
        if (!cnt[e])
            continue;
        /* dxg overwrites dy rows of this expert (no longer needed after) */
        swiglu_bwd(a->xg + s0 * E, cnt[e], E, F, t->params + tg->off + eo,
                   t->params + tu->off + eo, t->params + td->off + eo, t->grads + tg->off + eo,
                   t->grads + tu->off + eo, t->grads + td->off + eo, a->g + s0 * F,
                   a->u + s0 * F, t->dy + s0 * E, t->dh1, t->dh2, t->dtmp);
        memcpy(t->dy + s0 * E, t->dtmp, (size_t)cnt[e] * (size_t)E * sizeof(float));
    }
    /* router */
    lin_bwd_w(dl, a->xn2, t->grads + t->tens[L->gate_inp].off, N, E, X);
    lin_bwd_x(dl, t->params + t->tens[L->gate_inp].off, t->dx2, N, E, X, 0.0f);
    for (int64_t i = 0; i < N; i++)
        for (int32_t j = 0; j < k; j++) {
            const float *g = t->dy + (size_t)a->slot[i * k + j] * E;
            float *o = t->dx2 + i * E;
            for (int64_t d = 0; d < E; d++)
                o[d] += g[d];
        }
}

/* ---- the whole pass -------------------------------------------------------- */

#define P_(ti) (t->params + t->tens[(ti)].off)
#define G_(ti) (t->grads + t->tens[(ti)].off)

double train_pass(moe_trainer *t, const int32_t *tokens, int32_t n_seq, int32_t T,
                  int32_t stride, bool targets, bool grad, bool count_routes)
{
    const moe_train_config *c = &t->cfg;
    const int64_t E = c->n_embd, hd = t->n_embd_head;
    const int64_t nq = (int64_t)c->n_head * hd, nkv = (int64_t)c->n_head_kv * hd;
    const int64_t N = (int64_t)n_seq * T, V = t->n_vocab;
    const int t_out = t->t_out >= 0 ? t->t_out : t->t_embd;
    double loss = 0.0;
    float *x;

    t->aux_bal = t->aux_z = t->aux_mi = 0.0;
    /* embedding */
    x = t->acts[0].x;
    for (int32_t s = 0; s < n_seq; s++)
        for (int32_t i = 0; i < T; i++)
            memcpy(x + ((int64_t)s * T + i) * E,
                   P_(t->t_embd) + (size_t)tokens[(size_t)s * stride + i] * (size_t)E,
                   (size_t)E * sizeof(float));

    for (int32_t il = 0; il < c->n_layer; il++) {
        const train_layer *L = &t->layers[il];
        train_acts *a = &t->acts[il];
        float *xnext = il + 1 < c->n_layer ? t->acts[il + 1].x : t->xf;
        for (int64_t i = 0; i < N; i++)
            a->rms1[i] = rmsnorm_fwd(a->xn1 + i * E, a->x + i * E, P_(L->attn_norm), E,
                                     c->norm_eps);
        lin_fwd(a->xn1, P_(L->wq), a->q, N, E, nq, 0.0f);
        lin_fwd(a->xn1, P_(L->wk), a->k, N, E, nkv, 0.0f);
        lin_fwd(a->xn1, P_(L->wv), a->v, N, E, nkv, 0.0f);
        for (int64_t i = 0; i < N; i++) {
            rope_apply(t, a->q + i * nq, c->n_head, (int32_t)(i % T), 1.0f);
            rope_apply(t, a->k + i * nkv, c->n_head_kv, (int32_t)(i % T), 1.0f);
        }
        attn_fwd(t, a, n_seq, T);
        memcpy(a->xm, a->x, (size_t)N * (size_t)E * sizeof(float));
        lin_fwd(a->att, P_(L->wo), a->xm, N, nq, E, 1.0f);
        for (int64_t i = 0; i < N; i++)
            a->rms2[i] = rmsnorm_fwd(a->xn2 + i * E, a->xm + i * E, P_(L->ffn_norm), E,
                                     c->norm_eps);
        if (L->moe) {
            moe_fwd(t, il, N, count_routes);
        } else {
            const int64_t F = t->tens[L->ffn_gate].ne[1];
            swiglu_fwd(a->xn2, N, E, F, P_(L->ffn_gate), P_(L->ffn_up), P_(L->ffn_down), a->hg,
                       a->hu, t->dh1, a->f);
        }
        for (int64_t i = 0; i < N * E; i++)
            xnext[i] = a->xm[i] + a->f[i];
    }
    for (int64_t i = 0; i < N; i++)
        t->rmsf[i] = rmsnorm_fwd(t->xnf + i * E, t->xf + i * E, P_(t->t_out_norm), E,
                                 c->norm_eps);
    lin_fwd(t->xnf, P_(t_out), t->logits, N, E, V, 0.0f);
    if (!targets)
        return 0.0;

    /* cross-entropy; with grad the logits become their gradient */
    for (int32_t s = 0; s < n_seq; s++)
        for (int32_t i = 0; i < T; i++) {
            float *l = t->logits + ((int64_t)s * T + i) * V;
            const int32_t y = tokens[(size_t)s * stride + i + 1];
            const float ly = l[y];
            float mx = -INFINITY, sc;
            double se = 0.0;
            for (int64_t v = 0; v < V; v++)
                mx = l[v] > mx ? l[v] : mx;
            /* exponentials once, kept for the gradient */
            for (int64_t v = 0; v < V; v++) {
                const float e = expf(l[v] - mx);
                se += e;
                if (grad)
                    l[v] = e;
            }
            loss += (double)mx + log(se) - ly;
            if (grad) {
                sc = (float)(1.0 / (se * (double)N));
                for (int64_t v = 0; v < V; v++)
                    l[v] *= sc;
                l[y] -= 1.0f / (float)N;
            }
        }
    loss /= (double)N;
    if (!grad)
        return loss;

    /* ---- backward ---- */
    lin_bwd_w(t->logits, t->xnf, G_(t_out), N, E, V);
    lin_bwd_x(t->logits, P_(t_out), t->dx2, N, E, V, 0.0f);
    memset(t->dx, 0, (size_t)N * (size_t)E * sizeof(float));
    for (int64_t i = 0; i < N; i++)
        rmsnorm_bwd(t->dx + i * E, G_(t->t_out_norm), t->dx2 + i * E, t->xf + i * E,
                    P_(t->t_out_norm), t->rmsf[i], E);

    for (int32_t il = c->n_layer - 1; il >= 0; il--) {
        const train_layer *L = &t->layers[il];
        const train_acts *a = &t->acts[il];
        /* FFN: df = dx; dxn2 -> dx2 */
        if (L->moe) {
            moe_bwd(t, il, N);
        } else {
            const int64_t F = t->tens[L->ffn_gate].ne[1];
            swiglu_bwd(a->xn2, N, E, F, P_(L->ffn_gate), P_(L->ffn_up), P_(L->ffn_down),
                       G_(L->ffn_gate), G_(L->ffn_up), G_(L->ffn_down), a->hg, a->hu, t->dx,
                       t->dh1, t->dh2, t->dx2);
        }
        for (int64_t i = 0; i < N; i++)
            rmsnorm_bwd(t->dx + i * E, G_(L->ffn_norm), t->dx2 + i * E, a->xm + i * E,
                        P_(L->ffn_norm), a->rms2[i], E);
        /* attention: dO = dx */
        lin_bwd_w(t->dx, a->att, G_(L->wo), N, nq, E);
        lin_bwd_x(t->dx, P_(L->wo), t->datt, N, nq, E, 0.0f);
        memset(t->dk, 0, (size_t)N * (size_t)nkv * sizeof(float));
        memset(t->dv, 0, (size_t)N * (size_t)nkv * sizeof(float));
        attn_bwd(t, a, n_seq, T);
        for (int64_t i = 0; i < N; i++) {
            rope_apply(t, t->dq + i * nq, c->n_head, (int32_t)(i % T), -1.0f);
            rope_apply(t, t->dk + i * nkv, c->n_head_kv, (int32_t)(i % T), -1.0f);
        }
        lin_bwd_w(t->dq, a->xn1, G_(L->wq), N, E, nq);
        lin_bwd_w(t->dk, a->xn1, G_(L->wk), N, E, nkv);
        lin_bwd_w(t->dv, a->xn1, G_(L->wv), N, E, nkv);
        lin_bwd_x(t->dq, P_(L->wq), t->dx2, N, E, nq, 0.0f);
        lin_bwd_x(t->dk, P_(L->wk), t->dx2, N, E, nkv, 1.0f);
        lin_bwd_x(t->dv, P_(L->wv), t->dx2, N, E, nkv, 1.0f);
        for (int64_t i = 0; i < N; i++)
            rmsnorm_bwd(t->dx + i * E, G_(L->attn_norm), t->dx2 + i * E, a->x + i * E,
                        P_(L->attn_norm), a->rms1[i], E);
    }
    for (int32_t s = 0; s < n_seq; s++)
        for (int32_t i = 0; i < T; i++) {
            float *g = G_(t->t_embd) + (size_t)tokens[(size_t)s * stride + i] * (size_t)E;
            const float *d = t->dx + ((int64_t)s * T + i) * E;
            for (int64_t j = 0; j < E; j++)
                g[j] += d[j];
        }
    return loss;
}
