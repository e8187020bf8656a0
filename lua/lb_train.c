/*
 * lb_train.c - the "updating" brick operation in the `moe` module: a
 * moe.Trainer handle over the engine's trainer (load a checkpoint, choose
 * the trainable bricks, AdamW steps and evaluation on texts or token
 * lists, grow an expert, save). Uses the public engine header and Lua
 * only; never tui/.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lb.h"

#define LB_TRAINER "moe.Trainer"

/* GGUF tensor type ids (a public fact of the format) */
enum { LB_GGUF_F32 = 0, LB_GGUF_F16 = 1, LB_GGUF_Q8_0 = 8 };

typedef struct {
    moe_trainer *t;
} lb_trainer;

static moe_trainer *lb_check_trainer(lua_State *L, int idx)
{
    lb_trainer *t = luaL_checkudata(L, idx, LB_TRAINER);
    if (!t->t)
        luaL_error(L, "attempt to use a closed trainer");
    return t->t;
}

/* moe.trainer_load(path) -> Trainer | nil, msg */
static int lb_trainer_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lb_trainer *t = lua_newuserdatauv(L, sizeof *t, 0);
    moe_status st;
    t->t = NULL;
    luaL_setmetatable(L, LB_TRAINER);
    st = moe_trainer_load(path, &t->t);
    if (st != MOE_OK)
        return lb_fail(L, st);
    return 1;
}

static float lb_tfield(lua_State *L, int t, const char *k, float def)
{
    float v = def;
    if (lua_getfield(L, t, k) != LUA_TNIL)
        v = (float)luaL_checknumber(L, -1);
    lua_pop(L, 1);
    return v;
}

/* t:set_params{lr, lr_min, warmup, n_steps, weight_decay, grad_clip,
 * w_balance, w_zloss, w_mi, threads} -> true | nil, msg */
static int lb_trainer_set_params(lua_State *L)
{
    moe_trainer *t = lb_check_trainer(L, 1);
    moe_train_params p;
    moe_status st;
    luaL_checktype(L, 2, LUA_TTABLE);
    moe_trainer_get_params(t, &p);
    p.lr = lb_tfield(L, 2, "lr", p.lr);
    p.lr_min = lb_tfield(L, 2, "lr_min", p.lr_min);
    p.warmup = (int64_t)lb_tfield(L, 2, "warmup", (float)p.warmup);
    p.n_steps = (int64_t)lb_tfield(L, 2, "n_steps", (float)p.n_steps);
    p.weight_decay = lb_tfield(L, 2, "weight_decay", p.weight_decay);
    p.grad_clip = lb_tfield(L, 2, "grad_clip", p.grad_clip);
    p.w_balance = lb_tfield(L, 2, "w_balance", p.w_balance);
    p.w_zloss = lb_tfield(L, 2, "w_zloss", p.w_zloss);
    p.w_mi = lb_tfield(L, 2, "w_mi", p.w_mi);
    p.n_threads = (int)lb_tfield(L, 2, "threads", (float)p.n_threads);
    st = moe_trainer_set_params(t, &p);
    return lb_done(L, st);
}

/* t:trainable(spec) -> true | nil, msg */
static int lb_trainer_trainable(lua_State *L)
{
    moe_trainer *t = lb_check_trainer(L, 1);
    moe_status st = moe_trainer_set_trainable(t, luaL_optstring(L, 2, "all"));
    return lb_done(L, st);
}

/* t:n_params([trainable_only]) -> count */
static int lb_trainer_n_params(lua_State *L)
{
    lua_pushinteger(L, moe_trainer_n_params(lb_check_trainer(L, 1), lua_toboolean(L, 2)));
    return 1;
}

/* Sequences for a step: from a text (tokenized, BOS first when the model
 * has one) or a list of ids, cut into n_seq rows of n_tok + 1 tokens
 * (n_seq default: as many as fit, at least 1). Pushes the buffer. */
static int32_t *lb_train_batch(lua_State *L, moe_trainer *t, int idx, int opts, int32_t *n_seq,
                               int32_t *n_tok)
{
    int32_t n = 0, *ids;
    lua_Integer want_tok = 32, want_seq = 0;
    if (!lua_isnoneornil(L, opts)) {
        luaL_checktype(L, opts, LUA_TTABLE);
        if (lua_getfield(L, opts, "n_tok") != LUA_TNIL)
            want_tok = luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, opts, "n_seq") != LUA_TNIL)
            want_seq = luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    luaL_argcheck(L, want_tok >= 1 && want_tok <= 1 << 16, opts, "n_tok out of range");
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        const int32_t bos = moe_trainer_bos(t);
        int32_t cap = (int32_t)(len + 8 < (1u << 28) ? len + 8 : 1u << 28);
        int32_t got;
        ids = lua_newuserdatauv(L, (size_t)cap * sizeof(int32_t), 0);
        if (bos >= 0)
            ids[n++] = bos;
        got = moe_trainer_tokenize(t, s, len, ids + n, cap - n);
        if (got < 0)
            luaL_error(L, "tokenize failed: %s", moe_last_error());
        n += got;
    } else {
        lua_Integer len;
        luaL_checktype(L, idx, LUA_TTABLE);
        len = luaL_len(L, idx);
        luaL_argcheck(L, len >= 0 && len < 1 << 28, idx, "token list too long");
        ids = lua_newuserdatauv(L, (size_t)(len > 0 ? len : 1) * sizeof(int32_t), 0);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, idx, i);
            ids[n++] = (int32_t)luaL_checkinteger(L, -1);
            lua_pop(L, 1);
        }
    }
    if (n < want_tok + 1)
        luaL_error(L, "%d tokens are fewer than one sequence of n_tok + 1 = %d", (int)n,
                   (int)want_tok + 1);
    if (want_seq <= 0)
        want_seq = n / (want_tok + 1);
    if (want_seq * (want_tok + 1) > n)
        luaL_error(L, "%d tokens are fewer than %d sequences of %d", (int)n, (int)want_seq,
                   (int)want_tok + 1);
    *n_seq = (int32_t)want_seq;
    *n_tok = (int32_t)want_tok;
    return ids;
}

static void lb_push_train_stats(lua_State *L, const moe_train_stats *s)
{
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, s->step);
    lua_setfield(L, -2, "step");
    lua_pushinteger(L, s->tokens);
    lua_setfield(L, -2, "tokens");
    lua_pushnumber(L, s->loss);
    lua_setfield(L, -2, "loss");
    lua_pushnumber(L, s->ce);
    lua_setfield(L, -2, "ce");
    lua_pushnumber(L, s->balance);
    lua_setfield(L, -2, "balance");
    lua_pushnumber(L, s->zloss);
    lua_setfield(L, -2, "zloss");
    lua_pushnumber(L, s->mi);
    lua_setfield(L, -2, "mi");
    lua_pushnumber(L, s->grad_norm);
    lua_setfield(L, -2, "grad_norm");
    lua_pushnumber(L, s->lr);
    lua_setfield(L, -2, "lr");
}

typedef moe_status (*lb_train_fn)(moe_trainer *t, const int32_t *ids, int32_t n_seq,
                                  int32_t n_tok, moe_train_stats *s);

/* Run one training step or evaluation on the batch in args 2-3. */
static int lb_trainer_run(lua_State *L, lb_train_fn fn)
{
    moe_trainer *t = lb_check_trainer(L, 1);
    moe_train_stats s;
    int32_t n_seq, n_tok;
    const int32_t *ids;
    moe_status st;
    lua_settop(L, 3);
    ids = lb_train_batch(L, t, 2, 3, &n_seq, &n_tok);
    memset(&s, 0, sizeof s);
    st = fn(t, ids, n_seq, n_tok, &s);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lb_push_train_stats(L, &s);
    return 1;
}

/* t:step(text | ids [, {n_tok = 32, n_seq}]) -> stats | nil, msg */
static int lb_trainer_step(lua_State *L)
{
    return lb_trainer_run(L, moe_trainer_step);
}

/* t:eval(text | ids [, {n_tok, n_seq}]) -> stats | nil, msg */
static int lb_trainer_eval(lua_State *L)
{
    return lb_trainer_run(L, moe_trainer_eval);
}

/* t:grow(src_expert [, noise = 0.01 [, seed = 1]]) -> true | nil, msg */
static int lb_trainer_grow(lua_State *L)
{
    moe_trainer *t = lb_check_trainer(L, 1);
    moe_status st = moe_trainer_grow(t, (int32_t)luaL_checkinteger(L, 2),
                                     (float)luaL_optnumber(L, 3, 0.01),
                                     (uint64_t)luaL_optinteger(L, 4, 1));
    return lb_done(L, st);
}

/* t:save(path [, type = 'f32'|'f16'|'q8_0' [, with_optimizer = false]]) */
static int lb_trainer_save(lua_State *L)
{
    static const char *const types[] = {"f32", "f16", "q8_0", NULL};
    static const int ids[] = {LB_GGUF_F32, LB_GGUF_F16, LB_GGUF_Q8_0};
    moe_trainer *t = lb_check_trainer(L, 1);
    const char *path = luaL_checkstring(L, 2);
    const int ty = luaL_checkoption(L, 3, "f32", types);
    moe_status st = moe_trainer_save(t, path, ids[ty], lua_toboolean(L, 4));
    return lb_done(L, st);
}

static int lb_trainer_steps(lua_State *L)
{
    lua_pushinteger(L, moe_trainer_step_count(lb_check_trainer(L, 1)));
    return 1;
}

static int lb_trainer_close(lua_State *L)
{
    lb_trainer *t = luaL_checkudata(L, 1, LB_TRAINER);
    moe_trainer_free(t->t);
    t->t = NULL;
    return 0;
}

static int lb_trainer_tostring(lua_State *L)
{
    lb_trainer *t = luaL_checkudata(L, 1, LB_TRAINER);
    if (t->t)
        lua_pushfstring(L, "moe.Trainer (%I parameters)",
                        (lua_Integer)moe_trainer_n_params(t->t, false));
    else
        lua_pushstring(L, "moe.Trainer (closed)");
    return 1;
}

void lb_train_register(lua_State *L, int mod)
{
    static const luaL_Reg tm[] = {
        {"set_params", lb_trainer_set_params}, {"trainable", lb_trainer_trainable},
        {"n_params", lb_trainer_n_params}, {"step", lb_trainer_step},
        {"eval", lb_trainer_eval}, {"grow", lb_trainer_grow}, {"save", lb_trainer_save},
        {"steps", lb_trainer_steps}, {"close", lb_trainer_close}, {"__gc", lb_trainer_close},
        {"__close", lb_trainer_close}, {"__tostring", lb_trainer_tostring}, {NULL, NULL}};
    mod = lua_absindex(L, mod);
    luaL_newmetatable(L, LB_TRAINER);
    luaL_setfuncs(L, tm, 0);
    lb_finish_metatable(L, LB_TRAINER);
    lua_pop(L, 1);
    lua_pushcfunction(L, lb_trainer_load);
    lua_setfield(L, mod, "trainer_load");
}
