/*
 * lb_ctx.c - the moe.Context handle: decoding, logits, sampling steps and
 * generation with a per-token callback, log-likelihood of a continuation,
 * embeddings, KV snapshots, traces, router steering and statistics, early
 * exit; the moe.Snapshot handle. Emits on_token / on_route / on_exit through
 * the host. Uses the public engine header and Lua only; never tui/.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

typedef struct {
    moe_snapshot *s;
} lb_snapshot;

lb_ctx *lb_check_ctx(lua_State *L, int idx)
{
    lb_ctx *c = luaL_checkudata(L, idx, LB_CTX);
    if (!c->ctx)
        luaL_error(L, "attempt to use a closed context");
    return c;
}

static moe_ctx *lb_ctx_of(lua_State *L, int idx)
{
    return lb_check_ctx(L, idx)->ctx;
}

static int32_t lb_n_layer(const moe_ctx *ctx)
{
    moe_model_info info;
    moe_model_get_info(moe_ctx_model(ctx), &info);
    return info.n_layer;
}

static int32_t lb_n_vocab(const moe_ctx *ctx)
{
    moe_model_info info;
    moe_model_get_info(moe_ctx_model(ctx), &info);
    return info.n_vocab;
}

/* m:context([{n_ctx, n_batch, threads, max_top_k, order}]) -> Context | nil, msg */
static int lb_model_context(lua_State *L)
{
    lb_model *m = lb_check_model(L, 1);
    moe_ctx_params p = moe_ctx_default_params();
    lb_ctx *c;
    moe_status st;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        if (lua_getfield(L, 2, "n_ctx") != LUA_TNIL)
            p.n_ctx = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "n_batch") != LUA_TNIL)
            p.n_batch = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "threads") != LUA_TNIL)
            p.n_threads = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "max_top_k") != LUA_TNIL)
            p.max_top_k = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 2, "order") != LUA_TNIL) {
            static const char *const orders[] = {"reference", "batch", "token", NULL};
            p.order = (moe_order)luaL_checkoption(L, -1, NULL, orders);
        }
        lua_pop(L, 1);
        luaL_argcheck(L, p.n_ctx >= 0 && p.n_batch >= 0 && p.n_threads >= 0 &&
                             p.max_top_k >= 0, 2, "negative context parameter");
    }
    c = lua_newuserdatauv(L, sizeof *c, 1);
    c->ctx = NULL;
    c->ref = NULL;
    luaL_setmetatable(L, LB_CTX);
    st = moe_ctx_new(m->ref->model, &p, &c->ctx);
    if (st != MOE_OK)
        return lb_fail(L, st);
    c->ref = m->ref;
    c->ref->refs++;
    lua_pushvalue(L, 1); /* c:model() gives the same handle back */
    lua_setiuservalue(L, -2, 1);
    return 1;
}

static int lb_ctx_close(lua_State *L)
{
    lb_ctx *c = luaL_checkudata(L, 1, LB_CTX);
    if (c->ctx) {
        moe_ctx_free(c->ctx);
        c->ctx = NULL;
    }
    if (c->ref) {
        lb_model_unref(c->ref);
        c->ref = NULL;
    }
    return 0;
}

static int lb_ctx_tostring(lua_State *L)
{
    lb_ctx *c = luaL_checkudata(L, 1, LB_CTX);
    if (!c->ctx)
        lua_pushstring(L, "moe.Context (closed)");
    else
        lua_pushfstring(L, "moe.Context (pos %d of %d)", moe_ctx_pos(c->ctx),
                        moe_ctx_n_ctx(c->ctx));
    return 1;
}

static int lb_ctx_model(lua_State *L)
{
    lb_check_ctx(L, 1);
    lua_getiuservalue(L, 1, 1);
    return 1;
}

static int lb_ctx_pos(lua_State *L)
{
    lua_pushinteger(L, moe_ctx_pos(lb_ctx_of(L, 1)));
    return 1;
}

static int lb_ctx_n_ctx(lua_State *L)
{
    lua_pushinteger(L, moe_ctx_n_ctx(lb_ctx_of(L, 1)));
    return 1;
}

static int lb_ctx_reset(lua_State *L)
{
    moe_ctx_truncate(lb_ctx_of(L, 1), 0);
    return 0;
}

static int lb_ctx_truncate(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const lua_Integer pos = luaL_checkinteger(L, 2);
    luaL_argcheck(L, pos >= 0 && pos <= moe_ctx_pos(ctx), 2, "position out of range");
    moe_ctx_truncate(ctx, (int32_t)pos);
    return 0;
}

/* ---- events after a decode ----------------------------------------------- */

void lb_after_decode(lua_State *L, moe_ctx *ctx, int32_t n)
{
    host *h = lb_host(L);
    if (!h || n <= 0)
        return;
    if (host_has_handlers(h, HOST_EV_EXIT)) {
        const int32_t nl = lb_n_layer(ctx);
        const int32_t pos0 = moe_ctx_pos(ctx) - n;
        for (int32_t i = 0; i < n; i++) {
            const int32_t el = moe_ctx_exit_layer(ctx, n == 1 ? -1 : i);
            const moe_trace_token *t = NULL;
            int32_t tok = -1;
            const int32_t cnt = moe_ctx_trace_count(ctx);
            if (el < 0 || el >= nl - 1)
                continue;
            if (cnt >= n - i)
                t = moe_ctx_trace_get(ctx, cnt - (n - i));
            if (t)
                tok = t->token;
            host_emit_exit(h, pos0 + i, tok, el, nl);
        }
    }
    if (host_has_handlers(h, HOST_EV_ROUTE) && moe_ctx_get_trace(ctx).on) {
        const moe_trace_dims d = moe_ctx_trace_dims(ctx);
        const int32_t cnt = moe_ctx_trace_count(ctx);
        for (int32_t i = cnt - n < 0 ? 0 : cnt - n; i < cnt; i++) {
            const moe_trace_token *t = moe_ctx_trace_get(ctx, i);
            if (t)
                host_emit_route(h, &d, t);
        }
    }
}

/* c:decode(tokens | text [, {all = false}]) -> true | nil, msg
 * A text is tokenized with BOS when the context is empty. */
static int lb_ctx_decode(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const moe_model *model = moe_ctx_model(ctx);
    bool all = false;
    int32_t n;
    const int32_t *toks;
    moe_status st;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_getfield(L, 3, "all");
        all = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    toks = lb_tokens_arg(L, 2, model, moe_ctx_pos(ctx) == 0, &n);
    if (n == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lb_charge(L, n);
    st = moe_ctx_decode(ctx, toks, n, all);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lb_after_decode(L, ctx, n);
    lua_pushboolean(L, 1);
    return 1;
}

static const float *lb_logits_at(lua_State *L, moe_ctx *ctx, int idx)
{
    const lua_Integer i = luaL_optinteger(L, idx, -1);
    const float *l = moe_ctx_logits(ctx, (int32_t)(i < -1 ? -1 : i));
    if (!l)
        luaL_error(L, "no logits kept for token %d of the last decode", (int)i);
    return l;
}

static int32_t lb_argmax(const float *v, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* c:logits([i]) -> list of n_vocab floats (l[id + 1]) */
static int lb_ctx_logits(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    lb_push_floats(L, lb_logits_at(L, ctx, 2), lb_n_vocab(ctx));
    return 1;
}

static int lb_ctx_argmax(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    lua_pushinteger(L, lb_argmax(lb_logits_at(L, ctx, 2), lb_n_vocab(ctx)));
    return 1;
}

/* c:logprob(id [, i]) -> log p(id) */
static int lb_ctx_logprob(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const int32_t nv = lb_n_vocab(ctx);
    const lua_Integer id = luaL_checkinteger(L, 2);
    const float *l = lb_logits_at(L, ctx, 3);
    luaL_argcheck(L, id >= 0 && id < nv, 2, "token id out of range");
    lua_pushnumber(L, (double)l[id] - moe_logsumexp(l, nv));
    return 1;
}

/* c:entropy([i]) -> entropy (nats) of the softmax */
static int lb_ctx_entropy(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const int32_t nv = lb_n_vocab(ctx);
    const float *l = lb_logits_at(L, ctx, 2);
    const double lse = moe_logsumexp(l, nv);
    double h = 0.0;
    for (int32_t i = 0; i < nv; i++) {
        const double lp = (double)l[i] - lse;
        const double p = exp(lp);
        if (p > 0.0)
            h -= p * lp;
    }
    lua_pushnumber(L, h);
    return 1;
}

/* c:top(k [, i]) -> list of {id, logit, p}, best first */
static int lb_ctx_top(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const int32_t nv = lb_n_vocab(ctx);
    lua_Integer k = luaL_checkinteger(L, 2);
    const float *l = lb_logits_at(L, ctx, 3);
    const double lse = moe_logsumexp(l, nv);
    int32_t *ids;
    int32_t n = 0;
    luaL_argcheck(L, k >= 1, 2, "k must be >= 1");
    if (k > nv)
        k = nv;
    if (k > 1024)
        k = 1024;
    ids = lua_newuserdatauv(L, (size_t)k * sizeof(int32_t), 0);
    for (int32_t i = 0; i < nv; i++) { /* insertion into a sorted top-k */
        int32_t j;
        if (n == k && !(l[i] > l[ids[n - 1]]))
            continue;
        j = n < k ? n++ : n - 1;
        while (j > 0 && l[ids[j - 1]] < l[i]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, ids[i]);
        lua_setfield(L, -2, "id");
        lua_pushnumber(L, l[ids[i]]);
        lua_setfield(L, -2, "logit");
        lua_pushnumber(L, exp((double)l[ids[i]] - lse));
        lua_setfield(L, -2, "p");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* c:sample(sampler) -> id  (from the last logits; accepted into its history) */
static int lb_ctx_sample(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    moe_sampler *s = lb_check_sampler(L, 2);
    int32_t id = moe_sampler_sample(s, lb_logits_at(L, ctx, 3));
    moe_sampler_accept(s, id);
    lua_pushinteger(L, id);
    return 1;
}

/* c:step(sampler) -> id, piece | nil, msg: sample from the last logits,
 * decode the token, emit on_token */
static int lb_ctx_step(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    moe_sampler *s = lb_check_sampler(L, 2);
    const moe_model *model = moe_ctx_model(ctx);
    const float *l = moe_ctx_logits(ctx, -1);
    int32_t id, pos;
    size_t len = 0;
    const char *piece;
    moe_status st;
    if (!l || moe_ctx_pos(ctx) == 0)
        return luaL_error(L, "nothing to continue from: decode a prompt first");
    lb_charge(L, 1);
    id = moe_sampler_sample(s, l);
    moe_sampler_accept(s, id);
    pos = moe_ctx_pos(ctx);
    st = moe_ctx_decode(ctx, &id, 1, false);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lb_after_decode(L, ctx, 1);
    host_emit_token(lb_host(L), model, id, pos);
    piece = moe_token_piece(model, id, &len);
    lua_pushinteger(L, id);
    lua_pushlstring(L, piece ? piece : "", piece ? len : 0);
    return 2;
}

/* c:generate([prompt] [, opts]) -> text, ids, reason | nil, msg
 * opts: n (32), sampler (Sampler or params table; default greedy),
 * eos (true: stop at end-of-generation), stop (string), on_token(id, piece,
 * pos) returning false to stop. reason: "length", "eos", "stop",
 * "callback", "full". */
static int lb_ctx_generate(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const moe_model *model = moe_ctx_model(ctx);
    const int32_t nv = lb_n_vocab(ctx);
    lua_Integer n_gen = 32;
    bool stop_eos = true;
    const char *stop = NULL;
    int opts = 3, cb = 0, ids_t;
    moe_sampler *s;
    const char *reason = "length";
    int32_t n_out = 0;

    if (lua_type(L, 2) == LUA_TTABLE && lua_isnoneornil(L, 3) && lua_rawlen(L, 2) == 0) {
        /* generate(opts) with no prompt: a table with no list part */
        lua_pushnil(L);
        lua_insert(L, 2);
    }
    lua_settop(L, 3);
    if (!lua_isnil(L, opts)) {
        luaL_checktype(L, opts, LUA_TTABLE);
        if (lua_getfield(L, opts, "n") != LUA_TNIL)
            n_gen = luaL_checkinteger(L, -1);
        if (lua_getfield(L, opts, "eos") != LUA_TNIL)
            stop_eos = lua_toboolean(L, -1);
        if (lua_getfield(L, opts, "stop") != LUA_TNIL)
            stop = luaL_checkstring(L, -1);
        lua_pop(L, 3);
        if (lua_getfield(L, opts, "on_token") != LUA_TNIL) {
            luaL_checktype(L, -1, LUA_TFUNCTION);
            cb = lua_gettop(L);
        } else {
            lua_pop(L, 1);
        }
    }
    luaL_argcheck(L, n_gen >= 0, opts, "n must be >= 0");
    /* the sampler: a handle, a params table, or greedy */
    if (!lua_isnil(L, opts) && lua_getfield(L, opts, "sampler") != LUA_TNIL) {
        if (lua_type(L, -1) == LUA_TTABLE)
            s = lb_new_sampler(L, -1, nv);
        else
            s = lb_check_sampler(L, -1);
    } else {
        if (!lua_isnil(L, opts))
            lua_pop(L, 1);
        lua_newtable(L);
        lua_pushnumber(L, 0.0);
        lua_setfield(L, -2, "temp");
        s = lb_new_sampler(L, -1, nv);
    }
    if (!lua_isnil(L, 2)) {
        int32_t n;
        const int32_t *toks = lb_tokens_arg(L, 2, model, moe_ctx_pos(ctx) == 0, &n);
        if (n > 0) {
            moe_status st;
            lb_charge(L, n);
            st = moe_ctx_decode(ctx, toks, n, false);
            if (st != MOE_OK)
                return lb_fail(L, st);
            lb_after_decode(L, ctx, n);
            for (int32_t i = 0; i < n; i++)
                moe_sampler_accept(s, toks[i]);
        }
        lua_pop(L, 1);
    }
    if (moe_ctx_pos(ctx) == 0 || !moe_ctx_logits(ctx, -1))
        return luaL_error(L, "nothing to continue from: give a prompt");
    lua_newtable(L); /* the ids; the text is built from them at the end */
    ids_t = lua_gettop(L);
    for (lua_Integer step = 0; step < n_gen; step++) {
        int32_t id, pos;
        size_t len = 0;
        const char *piece;
        moe_status st;
        if (moe_ctx_pos(ctx) >= moe_ctx_n_ctx(ctx)) {
            reason = "full";
            break;
        }
        lb_charge(L, 1);
        id = moe_sampler_sample(s, moe_ctx_logits(ctx, -1));
        moe_sampler_accept(s, id);
        if (stop_eos && moe_token_is_eog(model, id)) {
            reason = "eos";
            break;
        }
        pos = moe_ctx_pos(ctx);
        st = moe_ctx_decode(ctx, &id, 1, false);
        if (st != MOE_OK)
            return lb_fail(L, st);
        lua_pushinteger(L, id);
        lua_rawseti(L, ids_t, ++n_out);
        lb_after_decode(L, ctx, 1);
        host_emit_token(lb_host(L), model, id, pos);
        piece = moe_token_piece(model, id, &len);
        if (cb) {
            bool go;
            lua_pushvalue(L, cb);
            lua_pushinteger(L, id);
            lua_pushlstring(L, piece ? piece : "", piece ? len : 0);
            lua_pushinteger(L, pos);
            lua_call(L, 3, 1);
            go = lua_isnil(L, -1) || lua_toboolean(L, -1);
            lua_pop(L, 1);
            if (!go) {
                reason = "callback";
                break;
            }
        }
        if (stop) {
            const int32_t *ids = lua_newuserdatauv(L, (size_t)n_out * sizeof(int32_t), 0);
            int32_t *w = (int32_t *)ids;
            for (int32_t i = 0; i < n_out; i++) {
                lua_rawgeti(L, ids_t, i + 1);
                w[i] = (int32_t)lua_tointeger(L, -1);
                lua_pop(L, 1);
            }
            lb_push_detok(L, model, ids, n_out);
            if (strstr(lua_tostring(L, -1), stop)) {
                lua_pop(L, 2);
                reason = "stop";
                break;
            }
            lua_pop(L, 2);
        }
    }
    {
        int32_t *ids = lua_newuserdatauv(L, (size_t)(n_out > 0 ? n_out : 1) * sizeof(int32_t), 0);
        for (int32_t i = 0; i < n_out; i++) {
            lua_rawgeti(L, ids_t, i + 1);
            ids[i] = (int32_t)lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        lb_push_detok(L, model, ids, n_out);
        lua_remove(L, -2);
    }
    lua_pushvalue(L, ids_t);
    lua_pushstring(L, reason);
    return 3;
}

/* Reads the {keep = bool} option at stack index idx (absent = false) and,
 * unless keep, empties ctx's cache. */
static void lb_keep_or_reset(lua_State *L, int idx, moe_ctx *ctx)
{
    bool keep = false;
    if (!lua_isnoneornil(L, idx)) {
        luaL_checktype(L, idx, LUA_TTABLE);
        lua_getfield(L, idx, "keep");
        keep = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    if (!keep)
        moe_ctx_truncate(ctx, 0);
}

/* log p(tok) under logits l: stored as per[i], counted in *n_greedy when
 * tok is the argmax; returned */
static double lb_score_token(lua_State *L, int per, lua_Integer i, const float *l, int32_t nv,
                             int32_t tok, int32_t *n_greedy)
{
    double lp = (double)l[tok] - moe_logsumexp(l, nv);
    *n_greedy += lb_argmax(l, nv) == tok;
    lua_pushnumber(L, lp);
    lua_rawseti(L, per, i);
    return lp;
}

/* c:loglik(context, continuation [, {keep = false}]) ->
 *   total, n, per_token, n_greedy | nil, msg
 * Starts from an empty cache unless keep (then the context text may be ""
 * and the continuation follows what is cached). */
static int lb_ctx_loglik(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const moe_model *model = moe_ctx_model(ctx);
    const int32_t nv = lb_n_vocab(ctx);
    int32_t n_c, n_x, n_greedy = 0;
    const int32_t *c_toks, *x_toks;
    double total = 0.0;
    int per;
    moe_status st;
    lb_keep_or_reset(L, 4, ctx);
    if (lua_type(L, 2) == LUA_TSTRING && lua_type(L, 3) == LUA_TSTRING) {
        /* tokenize the joined text and split it where it stops matching the
         * context's own tokens, so a continuation is tokenized as the model
         * would see it after the context (no second space prefix, merges
         * across the boundary go to the continuation) */
        int32_t n_j, k = 0;
        const int32_t *j_toks;
        lua_pushvalue(L, 2);
        lua_pushvalue(L, 3);
        lua_concat(L, 2);
        c_toks = lb_tokens_arg(L, 2, model, moe_ctx_pos(ctx) == 0, &n_c);
        j_toks = lb_tokens_arg(L, -2, model, moe_ctx_pos(ctx) == 0, &n_j);
        while (k < n_c && k < n_j && c_toks[k] == j_toks[k])
            k++;
        c_toks = j_toks;
        n_c = k;
        x_toks = j_toks + k;
        n_x = n_j - k;
    } else {
        c_toks = lb_tokens_arg(L, 2, model, moe_ctx_pos(ctx) == 0, &n_c);
        x_toks = lb_tokens_arg(L, 3, model, false, &n_x);
    }
    lb_charge(L, (int64_t)n_c + n_x);
    if (n_c > 0) {
        st = moe_ctx_decode(ctx, c_toks, n_c, false);
        if (st != MOE_OK)
            return lb_fail(L, st);
    }
    if (moe_ctx_pos(ctx) == 0 || !moe_ctx_logits(ctx, -1))
        return luaL_error(L, "loglik needs a non-empty context to condition on");
    lua_createtable(L, n_x, 0);
    per = lua_gettop(L);
    if (n_x > 0)
        total += lb_score_token(L, per, 1, moe_ctx_logits(ctx, -1), nv, x_toks[0], &n_greedy);
    if (n_x > 1) {
        st = moe_ctx_decode(ctx, x_toks, n_x - 1, true);
        if (st != MOE_OK)
            return lb_fail(L, st);
        for (int32_t i = 1; i < n_x; i++)
            total += lb_score_token(L, per, i + 1, moe_ctx_logits(ctx, i - 1), nv, x_toks[i],
                                    &n_greedy);
    }
    lua_pushnumber(L, total);
    lua_pushinteger(L, n_x);
    lua_pushvalue(L, per);
    lua_pushinteger(L, n_greedy);
    return 4;
}

/* c:embed(text | ids [, layer [, {keep = false}]]) -> list of n_embd | nil, msg */
static int lb_ctx_embed(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const moe_model *model = moe_ctx_model(ctx);
    moe_model_info info;
    const lua_Integer layer = luaL_optinteger(L, 3, -1);
    int32_t n;
    const int32_t *toks;
    float *out;
    moe_status st;
    moe_model_get_info(model, &info);
    luaL_argcheck(L, layer >= -1 && layer < info.n_layer, 3, "layer out of range");
    lb_keep_or_reset(L, 4, ctx);
    toks = lb_tokens_arg(L, 2, model, moe_ctx_pos(ctx) == 0, &n);
    if (n == 0)
        return luaL_error(L, "embed of an empty text");
    lb_charge(L, n);
    out = lua_newuserdatauv(L, (size_t)info.n_embd * sizeof(float), 0);
    st = moe_ctx_embed(ctx, toks, n, (int32_t)layer, out);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lb_push_floats(L, out, info.n_embd);
    return 1;
}

/* ---- snapshots ------------------------------------------------------------ */

static int lb_ctx_snapshot(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    lb_snapshot *s = lua_newuserdatauv(L, sizeof *s, 0);
    moe_status st;
    s->s = NULL;
    luaL_setmetatable(L, LB_SNAPSHOT);
    st = moe_ctx_snapshot(ctx, &s->s);
    if (st != MOE_OK)
        return lb_fail(L, st);
    return 1;
}

static moe_snapshot *lb_check_snapshot(lua_State *L, int idx)
{
    lb_snapshot *s = luaL_checkudata(L, idx, LB_SNAPSHOT);
    if (!s->s)
        luaL_error(L, "attempt to use a closed snapshot");
    return s->s;
}

static int lb_ctx_restore(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    moe_status st = moe_ctx_restore(ctx, lb_check_snapshot(L, 2));
    return lb_done(L, st);
}

static int lb_snapshot_pos(lua_State *L)
{
    lua_pushinteger(L, moe_snapshot_pos(lb_check_snapshot(L, 1)));
    return 1;
}

static int lb_snapshot_tokens(lua_State *L)
{
    moe_snapshot *s = lb_check_snapshot(L, 1);
    const int32_t n = moe_snapshot_pos(s);
    const int32_t *t = moe_snapshot_tokens(s);
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_pushinteger(L, t[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int lb_snapshot_close(lua_State *L)
{
    lb_snapshot *s = luaL_checkudata(L, 1, LB_SNAPSHOT);
    moe_snapshot_free(s->s);
    s->s = NULL;
    return 0;
}

static int lb_snapshot_tostring(lua_State *L)
{
    lb_snapshot *s = luaL_checkudata(L, 1, LB_SNAPSHOT);
    if (s->s)
        lua_pushfstring(L, "moe.Snapshot (%d positions)", moe_snapshot_pos(s->s));
    else
        lua_pushstring(L, "moe.Snapshot (closed)");
    return 1;
}

/* ---- traces ---------------------------------------------------------------- */

void lb_push_trace_entry(lua_State *L, const moe_trace_dims *d, const moe_trace_token *t)
{
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, t->pos);
    lua_setfield(L, -2, "pos");
    lua_pushinteger(L, t->token);
    lua_setfield(L, -2, "token");
    lua_pushboolean(L, t->prefill);
    lua_setfield(L, -2, "prefill");
    lua_pushinteger(L, t->exit_layer);
    lua_setfield(L, -2, "exit_layer");
    lua_pushnumber(L, t->time_ms);
    lua_setfield(L, -2, "time_ms");
    lua_createtable(L, d->n_layer, 0);
    for (int32_t il = 0; il < d->n_layer; il++) {
        const bool is_moe = t->layer_moe && t->layer_moe[il];
        lua_createtable(L, 0, 10);
        lua_pushinteger(L, il);
        lua_setfield(L, -2, "layer");
        lua_pushboolean(L, is_moe);
        lua_setfield(L, -2, "moe");
        if (t->hnorm) {
            lua_pushnumber(L, t->hnorm[il]);
            lua_setfield(L, -2, "hnorm");
        }
        if (is_moe && d->n_expert > 0) {
            const size_t ro = (size_t)il * (size_t)d->n_expert;
            const size_t so = (size_t)il * (size_t)d->n_sel;
            int32_t k = 0;
            if (t->router_probs) {
                lb_push_floats(L, t->router_probs + ro, d->n_expert);
                lua_setfield(L, -2, "probs");
            }
            if (t->router_logits) {
                lb_push_floats(L, t->router_logits + ro, d->n_expert);
                lua_setfield(L, -2, "logits");
            }
            lua_newtable(L); /* sel */
            lua_newtable(L); /* w */
            for (int32_t j = 0; j < d->n_sel && t->sel; j++) {
                if (t->sel[so + j] < 0)
                    continue;
                k++;
                lua_pushinteger(L, t->sel[so + j]);
                lua_rawseti(L, -3, k);
                lua_pushnumber(L, t->sel_w ? t->sel_w[so + j] : 0.0);
                lua_rawseti(L, -2, k);
            }
            lua_setfield(L, -3, "w");
            lua_setfield(L, -2, "sel");
            if (t->shexp_gate && !isnan(t->shexp_gate[il])) {
                lua_pushnumber(L, t->shexp_gate[il]);
                lua_setfield(L, -2, "shexp_gate");
            }
        }
        if (d->lens_k > 0 && t->lens_id) {
            const size_t lo = (size_t)il * (size_t)d->lens_k;
            lua_createtable(L, d->lens_k, 0);
            for (int32_t j = 0; j < d->lens_k; j++) {
                lua_createtable(L, 0, 2);
                lua_pushinteger(L, t->lens_id[lo + j]);
                lua_setfield(L, -2, "id");
                lua_pushnumber(L, t->lens_p ? t->lens_p[lo + j] : 0.0);
                lua_setfield(L, -2, "p");
                lua_rawseti(L, -2, j + 1);
            }
            lua_setfield(L, -2, "lens");
            if (t->lens_entropy) {
                lua_pushnumber(L, t->lens_entropy[il]);
                lua_setfield(L, -2, "entropy");
            }
            if (t->lens_rank) {
                lua_pushinteger(L, t->lens_rank[il]);
                lua_setfield(L, -2, "rank");
            }
        }
        lua_rawseti(L, -2, il + 1);
    }
    lua_setfield(L, -2, "layers");
}

/* c:trace(true | false | {lens_k, max_tokens}) -> true | nil, msg */
static int lb_ctx_trace(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    moe_trace_params p;
    moe_status st;
    memset(&p, 0, sizeof p);
    if (lua_type(L, 2) == LUA_TTABLE) {
        p.on = true;
        if (lua_getfield(L, 2, "lens_k") != LUA_TNIL)
            p.lens_k = (int32_t)luaL_checkinteger(L, -1);
        if (lua_getfield(L, 2, "max_tokens") != LUA_TNIL)
            p.max_tokens = (int32_t)luaL_checkinteger(L, -1);
        lua_pop(L, 2);
        luaL_argcheck(L, p.lens_k >= 0 && p.max_tokens >= 0, 2, "negative trace parameter");
    } else {
        luaL_checktype(L, 2, LUA_TBOOLEAN);
        p.on = lua_toboolean(L, 2);
    }
    st = moe_ctx_set_trace(ctx, &p);
    return lb_done(L, st);
}

static int lb_ctx_trace_count(lua_State *L)
{
    lua_pushinteger(L, moe_ctx_trace_count(lb_ctx_of(L, 1)));
    return 1;
}

/* c:trace_get(i) -> entry (i = 1 oldest kept, negative from the end) */
static int lb_ctx_trace_get(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    lua_Integer i = luaL_checkinteger(L, 2);
    const int32_t n = moe_ctx_trace_count(ctx);
    const moe_trace_dims d = moe_ctx_trace_dims(ctx);
    const moe_trace_token *t;
    if (i < 0)
        i = n + 1 + i;
    luaL_argcheck(L, i >= 1 && i <= n, 2, "trace entry out of range");
    t = moe_ctx_trace_get(ctx, (int32_t)(i - 1));
    if (!t)
        return luaL_error(L, "trace entry %d missing", (int)i);
    lb_push_trace_entry(L, &d, t);
    return 1;
}

static int lb_ctx_trace_clear(lua_State *L)
{
    moe_ctx_trace_clear(lb_ctx_of(L, 1));
    return 0;
}

/* ---- routing ----------------------------------------------------------------- */

static int lb_status_result(lua_State *L, moe_status st)
{
    return lb_done(L, st);
}

static int lb_ctx_route_reset(lua_State *L)
{
    moe_route_reset(lb_ctx_of(L, 1));
    return 0;
}

static int lb_ctx_route_top_k(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    return lb_status_result(L, moe_route_set_top_k(ctx, (int32_t)luaL_checkinteger(L, 2),
                                                   (int32_t)luaL_checkinteger(L, 3)));
}

static int lb_ctx_route_get_top_k(lua_State *L)
{
    lua_pushinteger(L, moe_route_get_top_k(lb_ctx_of(L, 1), (int32_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int lb_ctx_route_temperature(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    return lb_status_result(L, moe_route_set_temperature(ctx, (int32_t)luaL_checkinteger(L, 2),
                                                         (float)luaL_checknumber(L, 3)));
}

static int lb_ctx_route_ban(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const bool on = lua_isnoneornil(L, 4) ? true : lua_toboolean(L, 4);
    return lb_status_result(L, moe_route_ban(ctx, (int32_t)luaL_checkinteger(L, 2),
                                             (int32_t)luaL_checkinteger(L, 3), on));
}

static int lb_ctx_route_force(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const bool on = lua_isnoneornil(L, 4) ? true : lua_toboolean(L, 4);
    return lb_status_result(L, moe_route_force(ctx, (int32_t)luaL_checkinteger(L, 2),
                                               (int32_t)luaL_checkinteger(L, 3), on));
}

static int lb_ctx_route_scale(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    return lb_status_result(L, moe_route_set_scale(ctx, (int32_t)luaL_checkinteger(L, 2),
                                                   (int32_t)luaL_checkinteger(L, 3),
                                                   (float)luaL_checknumber(L, 4)));
}

/* c:route_capacity({factor, drop = "position"|"score", devices, rectify =
 * "none"|"ir"|"fr"|"both"}) */
static int lb_ctx_route_capacity(lua_State *L)
{
    static const char *const drops[] = {"position", "score", NULL};
    static const char *const rects[] = {"none", "ir", "fr", "both", NULL};
    moe_ctx *ctx = lb_ctx_of(L, 1);
    moe_capacity_params p;
    memset(&p, 0, sizeof p);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (lua_getfield(L, 2, "factor") != LUA_TNIL)
        p.capacity_factor = (float)luaL_checknumber(L, -1);
    if (lua_getfield(L, 2, "devices") != LUA_TNIL)
        p.n_devices = (int32_t)luaL_checkinteger(L, -1);
    lua_getfield(L, 2, "drop");
    p.drop = (moe_drop_policy)luaL_checkoption(L, -1, "position", drops);
    lua_getfield(L, 2, "rectify");
    p.rectify = (moe_rectify)luaL_checkoption(L, -1, "none", rects);
    lua_pop(L, 4);
    return lb_status_result(L, moe_route_set_capacity(ctx, &p));
}

static int lb_ctx_route_counters(lua_State *L)
{
    moe_route_counters c;
    moe_route_get_counters(lb_ctx_of(L, 1), &c);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, c.routed);
    lua_setfield(L, -2, "routed");
    lua_pushinteger(L, c.dropped);
    lua_setfield(L, -2, "dropped");
    lua_pushinteger(L, c.padded);
    lua_setfield(L, -2, "padded");
    lua_pushinteger(L, c.rerouted);
    lua_setfield(L, -2, "rerouted");
    lua_pushinteger(L, c.filled);
    lua_setfield(L, -2, "filled");
    return 1;
}

static int lb_ctx_route_reset_counters(lua_State *L)
{
    moe_route_reset_counters(lb_ctx_of(L, 1));
    return 0;
}

/* c:reeval(pos) -> logits list | nil, msg */
static int lb_ctx_reeval(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const int32_t nv = lb_n_vocab(ctx);
    float *out = lua_newuserdatauv(L, (size_t)nv * sizeof(float), 0);
    moe_status st = moe_ctx_reeval(ctx, (int32_t)luaL_checkinteger(L, 2), out);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lb_push_floats(L, out, nv);
    return 1;
}

/* c:route_stats([phase]) -> list by layer + 1 of {layer, n_tokens, cv2_load,
 * cv2_importance, balance_loss, h_cond, h_marg, mi, experts = {{load,
 * load_frac, token_frac, importance, mean_prob}, ...}} for the MoE layers of
 * what the trace holds | nil, msg */
static int lb_ctx_route_stats(lua_State *L)
{
    static const char *const phases[] = {"prefill", "decode", "all", NULL};
    moe_ctx *ctx = lb_ctx_of(L, 1);
    const moe_phase ph = (moe_phase)luaL_checkoption(L, 2, "all", phases);
    const moe_trace_dims d = moe_ctx_trace_dims(ctx);
    moe_route_stats *s = NULL;
    moe_status st;
    if (d.n_expert <= 0) {
        lua_pushnil(L);
        lua_pushstring(L, "the model has no experts");
        return 2;
    }
    st = moe_route_stats_new(&d, &s);
    if (st == MOE_OK)
        st = moe_route_stats_add_trace(s, ctx);
    if (st != MOE_OK) {
        moe_route_stats_free(s);
        return lb_fail(L, st);
    }
    lua_createtable(L, d.n_layer, 0);
    for (int32_t il = 0; il < d.n_layer; il++) {
        moe_route_layer_stats ls;
        if (moe_route_stats_layer(s, il, ph, &ls) != MOE_OK)
            continue;
        lua_createtable(L, 0, 10);
        lua_pushinteger(L, il);
        lua_setfield(L, -2, "layer");
        lua_pushinteger(L, ls.n_tokens);
        lua_setfield(L, -2, "n_tokens");
        lua_pushinteger(L, ls.n_assign);
        lua_setfield(L, -2, "n_assign");
        lua_pushnumber(L, ls.cv2_load);
        lua_setfield(L, -2, "cv2_load");
        lua_pushnumber(L, ls.cv2_importance);
        lua_setfield(L, -2, "cv2_importance");
        lua_pushnumber(L, ls.balance_loss);
        lua_setfield(L, -2, "balance_loss");
        lua_pushnumber(L, ls.h_cond);
        lua_setfield(L, -2, "h_cond");
        lua_pushnumber(L, ls.h_marg);
        lua_setfield(L, -2, "h_marg");
        lua_pushnumber(L, ls.mi);
        lua_setfield(L, -2, "mi");
        lua_createtable(L, d.n_expert, 0);
        for (int32_t e = 0; e < d.n_expert; e++) {
            moe_route_expert_stats es;
            memset(&es, 0, sizeof es);
            moe_route_stats_expert(s, il, e, ph, &es);
            lua_createtable(L, 0, 5);
            lua_pushinteger(L, es.load);
            lua_setfield(L, -2, "load");
            lua_pushnumber(L, es.load_frac);
            lua_setfield(L, -2, "load_frac");
            lua_pushnumber(L, es.token_frac);
            lua_setfield(L, -2, "token_frac");
            lua_pushnumber(L, es.importance);
            lua_setfield(L, -2, "importance");
            lua_pushnumber(L, es.mean_prob);
            lua_setfield(L, -2, "mean_prob");
            lua_rawseti(L, -2, e + 1);
        }
        lua_setfield(L, -2, "experts");
        lua_rawseti(L, -2, il + 1);
    }
    moe_route_stats_free(s);
    return 1;
}

/* ---- early exit ---------------------------------------------------------------- */

static int lb_ctx_set_exit(lua_State *L)
{
    moe_ctx *ctx = lb_ctx_of(L, 1);
    return lb_status_result(L, moe_ctx_set_exit_spec(ctx, luaL_optstring(L, 2, "none")));
}

static int lb_ctx_exit_layer(lua_State *L)
{
    lua_pushinteger(L, moe_ctx_exit_layer(lb_ctx_of(L, 1), (int32_t)luaL_optinteger(L, 2, -1)));
    return 1;
}

static int lb_ctx_exit_stats(lua_State *L)
{
    moe_exit_stats s;
    moe_ctx_exit_stats(lb_ctx_of(L, 1), &s);
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, s.n_tokens);
    lua_setfield(L, -2, "n_tokens");
    lua_pushinteger(L, s.layers_run);
    lua_setfield(L, -2, "layers_run");
    lua_pushinteger(L, s.layers_total);
    lua_setfield(L, -2, "layers_total");
    lua_pushnumber(L, s.n_tokens > 0 ? (double)s.layers_run / (double)s.n_tokens - 1.0 : 0.0);
    lua_setfield(L, -2, "mean_exit_layer");
    lua_pushnumber(L, s.layers_total > 0 ? 1.0 - (double)s.layers_run / (double)s.layers_total
                                         : 0.0);
    lua_setfield(L, -2, "saved");
    return 1;
}

static int lb_ctx_exit_reset_stats(lua_State *L)
{
    moe_ctx_exit_reset_stats(lb_ctx_of(L, 1));
    return 0;
}

/* moe.logits_compare(a, b [, k]) -> kl, topk_changed */
static int lb_logits_compare(lua_State *L)
{
    int32_t na, nb, changed = 0;
    double kl = 0.0;
    const float *a = (lua_settop(L, 3), lb_floats_arg(L, 1, &na));
    const float *b = lb_floats_arg(L, 2, &nb);
    const lua_Integer k = luaL_optinteger(L, 3, 10);
    luaL_argcheck(L, na == nb && na > 0, 2, "logit lists of different lengths");
    moe_logits_compare(a, b, na, (int32_t)k, &kl, &changed);
    lua_pushnumber(L, kl);
    lua_pushinteger(L, changed);
    return 2;
}

void lb_ctx_register(lua_State *L, int mod)
{
    static const luaL_Reg ctx_m[] = {
        {"model", lb_ctx_model}, {"pos", lb_ctx_pos}, {"n_ctx", lb_ctx_n_ctx},
        {"reset", lb_ctx_reset}, {"truncate", lb_ctx_truncate}, {"decode", lb_ctx_decode},
        {"eval", lb_ctx_decode}, {"logits", lb_ctx_logits}, {"argmax", lb_ctx_argmax},
        {"logprob", lb_ctx_logprob}, {"entropy", lb_ctx_entropy}, {"top", lb_ctx_top},
        {"sample", lb_ctx_sample}, {"step", lb_ctx_step}, {"generate", lb_ctx_generate},
        {"loglik", lb_ctx_loglik}, {"embed", lb_ctx_embed}, {"snapshot", lb_ctx_snapshot},
        {"restore", lb_ctx_restore}, {"trace", lb_ctx_trace},
        {"trace_count", lb_ctx_trace_count}, {"trace_get", lb_ctx_trace_get},
        {"trace_clear", lb_ctx_trace_clear}, {"route_reset", lb_ctx_route_reset},
        {"route_top_k", lb_ctx_route_top_k}, {"route_get_top_k", lb_ctx_route_get_top_k},
        {"route_temperature", lb_ctx_route_temperature}, {"route_ban", lb_ctx_route_ban},
        {"route_force", lb_ctx_route_force}, {"route_scale", lb_ctx_route_scale},
        {"route_capacity", lb_ctx_route_capacity}, {"route_counters", lb_ctx_route_counters},
        {"route_reset_counters", lb_ctx_route_reset_counters}, {"reeval", lb_ctx_reeval},
        {"route_stats", lb_ctx_route_stats}, {"set_exit", lb_ctx_set_exit},
        {"exit_layer", lb_ctx_exit_layer}, {"exit_stats", lb_ctx_exit_stats},
        {"exit_reset_stats", lb_ctx_exit_reset_stats}, {"close", lb_ctx_close},
        {"__gc", lb_ctx_close}, {"__close", lb_ctx_close}, {"__tostring", lb_ctx_tostring},
        {NULL, NULL}};
    static const luaL_Reg snap_m[] = {
        {"pos", lb_snapshot_pos}, {"tokens", lb_snapshot_tokens}, {"close", lb_snapshot_close},
        {"__gc", lb_snapshot_close}, {"__close", lb_snapshot_close},
        {"__tostring", lb_snapshot_tostring}, {NULL, NULL}};
    mod = lua_absindex(L, mod);
    luaL_newmetatable(L, LB_CTX);
    luaL_setfuncs(L, ctx_m, 0);
    lb_finish_metatable(L, LB_CTX);
    lua_pop(L, 1);
    luaL_newmetatable(L, LB_SNAPSHOT);
    luaL_setfuncs(L, snap_m, 0);
    lb_finish_metatable(L, LB_SNAPSHOT);
    lua_pop(L, 1);
    luaL_getmetatable(L, LB_MODEL);
    lua_pushcfunction(L, lb_model_context);
    lua_setfield(L, -2, "context");
    lua_pop(L, 1);
    lua_pushcfunction(L, lb_logits_compare);
    lua_setfield(L, mod, "logits_compare");
}
