/*
 * lb_bricks.c - bricks and EMoE in the `moe` module: m:bricks() lists a
 * loaded model's bricks, moe.emoe() splits a dense model's FFNs into
 * emergent experts, moe.bricks_open() gives an editable moe.Bricks handle
 * (merge, grow, prune experts, save as GGUF). Uses the public engine header
 * and Lua only; never tui/.
 */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "lb.h"

#define LB_BRICKS "moe.Bricks"

typedef struct {
    moe_bricks *b;
} lb_bricks;

/* m:bricks() -> list of {name, kind, layer, index, n_params, bytes} */
static int lb_model_bricks(lua_State *L)
{
    moe_model *model = lb_model_of(L, 1);
    const int32_t n = moe_model_n_bricks(model);
    lua_createtable(L, n > 0 ? n : 0, 0);
    for (int32_t i = 0; i < n; i++) {
        moe_brick br;
        if (moe_model_brick(model, i, &br) != MOE_OK)
            continue;
        lua_createtable(L, 0, 6);
        lua_pushstring(L, br.name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, moe_brick_kind_name(br.kind));
        lua_setfield(L, -2, "kind");
        lua_pushinteger(L, br.layer);
        lua_setfield(L, -2, "layer");
        lua_pushinteger(L, br.index);
        lua_setfield(L, -2, "index");
        lua_pushinteger(L, br.n_params);
        lua_setfield(L, -2, "n_params");
        lua_pushinteger(L, br.bytes);
        lua_setfield(L, -2, "bytes");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* moe.emoe(src, dst [, {n_expert = 8, k = 2, layers = {0-based ids},
 * seed, max_iter}]) -> {n_converted, n_ff, n_ff_exp, n_padding, mean_cos,
 * down_type} | nil, msg */
static int lb_emoe(lua_State *L)
{
    const char *src = luaL_checkstring(L, 1);
    const char *dst = luaL_checkstring(L, 2);
    moe_emoe_params p = moe_emoe_default_params();
    moe_emoe_report rep;
    bool *layers = NULL;
    moe_status st;
    lua_settop(L, 3);
    if (!lua_isnil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "n_expert") != LUA_TNIL)
            p.n_expert = (int32_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "k") != LUA_TNIL)
            p.n_expert_used = (int32_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "seed") != LUA_TNIL)
            p.seed = (uint64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "max_iter") != LUA_TNIL)
            p.max_iter = (int32_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, 3, "layers") != LUA_TNIL) {
            moe_model *m = NULL;
            moe_model_params mp = moe_model_default_params();
            moe_model_info info;
            const lua_Integer n = (luaL_checktype(L, -1, LUA_TTABLE), luaL_len(L, -1));
            /* the layer mask needs the block count of the source */
            st = moe_model_load(src, &mp, &m);
            if (st != MOE_OK)
                return lb_fail(L, st);
            moe_model_get_info(m, &info);
            moe_model_free(m);
            layers = lua_newuserdatauv(L, (size_t)info.n_layer * sizeof(bool), 0);
            memset(layers, 0, (size_t)info.n_layer * sizeof(bool));
            for (lua_Integer i = 1; i <= n; i++) {
                lua_Integer il;
                lua_rawgeti(L, -2, i);
                il = luaL_checkinteger(L, -1);
                lua_pop(L, 1);
                luaL_argcheck(L, il >= 0 && il < info.n_layer, 3, "layer out of range");
                layers[il] = true;
            }
            p.layers = layers;
            p.n_layers = info.n_layer;
        }
    }
    memset(&rep, 0, sizeof rep);
    st = moe_emoe_convert(src, dst, &p, &rep);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, rep.n_converted);
    lua_setfield(L, -2, "n_converted");
    lua_pushinteger(L, rep.n_ff);
    lua_setfield(L, -2, "n_ff");
    lua_pushinteger(L, rep.n_ff_exp);
    lua_setfield(L, -2, "n_ff_exp");
    lua_pushinteger(L, rep.n_padding);
    lua_setfield(L, -2, "n_padding");
    lua_pushnumber(L, rep.mean_cos);
    lua_setfield(L, -2, "mean_cos");
    lua_pushstring(L, rep.down_type ? rep.down_type : "");
    lua_setfield(L, -2, "down_type");
    return 1;
}

static moe_bricks *lb_check_bricks(lua_State *L, int idx)
{
    lb_bricks *b = luaL_checkudata(L, idx, LB_BRICKS);
    if (!b->b)
        luaL_error(L, "attempt to use a closed bricks editor");
    return b->b;
}

/* moe.bricks_open(path) -> Bricks | nil, msg */
static int lb_bricks_open(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lb_bricks *b = lua_newuserdatauv(L, sizeof *b, 0);
    moe_status st;
    b->b = NULL;
    luaL_setmetatable(L, LB_BRICKS);
    st = moe_bricks_open(path, &b->b);
    if (st != MOE_OK)
        return lb_fail(L, st);
    return 1;
}

static int lb_bricks_n_layer(lua_State *L)
{
    lua_pushinteger(L, moe_bricks_n_layer(lb_check_bricks(L, 1)));
    return 1;
}

static int lb_bricks_n_expert(lua_State *L)
{
    lua_pushinteger(L, moe_bricks_n_expert(lb_check_bricks(L, 1),
                                           (int32_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int lb_bricks_origin(lua_State *L)
{
    lua_pushinteger(L, moe_bricks_origin(lb_check_bricks(L, 1), (int32_t)luaL_checkinteger(L, 2),
                                         (int32_t)luaL_checkinteger(L, 3)));
    return 1;
}

static int32_t *lb_ids_arg(lua_State *L, int idx, int32_t *n)
{
    lua_Integer len;
    int32_t *ids;
    luaL_checktype(L, idx, LUA_TTABLE);
    len = luaL_len(L, idx);
    luaL_argcheck(L, len >= 1 && len < 1 << 20, idx, "need a non-empty list of expert ids");
    ids = lua_newuserdatauv(L, (size_t)len * sizeof(int32_t), 0);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_rawgeti(L, idx, i);
        ids[i - 1] = (int32_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    *n = (int32_t)len;
    return ids;
}

static int lb_bricks_result(lua_State *L, moe_status st)
{
    return lb_done(L, st);
}

/* b:merge(layer, {experts} [, {weights}]) -> true | nil, msg */
static int lb_bricks_merge(lua_State *L)
{
    moe_bricks *b = lb_check_bricks(L, 1);
    const int32_t layer = (int32_t)luaL_checkinteger(L, 2);
    int32_t n, nw = 0;
    const int32_t *ids;
    const float *w = NULL;
    lua_settop(L, 4);
    ids = lb_ids_arg(L, 3, &n);
    if (!lua_isnil(L, 4)) {
        w = lb_floats_arg(L, 4, &nw);
        luaL_argcheck(L, nw == n, 4, "one weight per expert");
    }
    return lb_bricks_result(L, moe_bricks_merge(b, layer, ids, w, n));
}

/* b:grow(layer, expert [, noise = 0 [, seed = 1]]) -> new id | nil, msg */
static int lb_bricks_grow(lua_State *L)
{
    moe_bricks *b = lb_check_bricks(L, 1);
    const int32_t layer = (int32_t)luaL_checkinteger(L, 2);
    const int32_t e = (int32_t)luaL_checkinteger(L, 3);
    const int32_t id = moe_bricks_n_expert(b, layer);
    moe_status st = moe_bricks_grow(b, layer, e, (float)luaL_optnumber(L, 4, 0.0),
                                    (uint64_t)luaL_optinteger(L, 5, 1));
    if (st != MOE_OK)
        return lb_fail(L, st);
    lua_pushinteger(L, id);
    return 1;
}

/* b:prune(layer, {experts}) -> true | nil, msg */
static int lb_bricks_prune(lua_State *L)
{
    moe_bricks *b = lb_check_bricks(L, 1);
    const int32_t layer = (int32_t)luaL_checkinteger(L, 2);
    int32_t n;
    const int32_t *ids;
    lua_settop(L, 3);
    ids = lb_ids_arg(L, 3, &n);
    return lb_bricks_result(L, moe_bricks_prune(b, layer, ids, n));
}

/* b:save(path) -> true | nil, msg */
static int lb_bricks_save(lua_State *L)
{
    moe_bricks *b = lb_check_bricks(L, 1);
    return lb_bricks_result(L, moe_bricks_save(b, luaL_checkstring(L, 2)));
}

static int lb_bricks_close(lua_State *L)
{
    lb_bricks *b = luaL_checkudata(L, 1, LB_BRICKS);
    moe_bricks_free(b->b);
    b->b = NULL;
    return 0;
}

static int lb_bricks_tostring(lua_State *L)
{
    lb_bricks *b = luaL_checkudata(L, 1, LB_BRICKS);
    if (b->b)
        lua_pushfstring(L, "moe.Bricks (%d layers)", moe_bricks_n_layer(b->b));
    else
        lua_pushstring(L, "moe.Bricks (closed)");
    return 1;
}

void lb_bricks_register(lua_State *L, int mod)
{
    static const luaL_Reg bricks_m[] = {
        {"n_layer", lb_bricks_n_layer}, {"n_expert", lb_bricks_n_expert},
        {"origin", lb_bricks_origin}, {"merge", lb_bricks_merge}, {"grow", lb_bricks_grow},
        {"prune", lb_bricks_prune}, {"save", lb_bricks_save}, {"close", lb_bricks_close},
        {"__gc", lb_bricks_close}, {"__close", lb_bricks_close},
        {"__tostring", lb_bricks_tostring}, {NULL, NULL}};
    mod = lua_absindex(L, mod);
    luaL_newmetatable(L, LB_BRICKS);
    luaL_setfuncs(L, bricks_m, 0);
    lb_finish_metatable(L, LB_BRICKS);
    lua_pop(L, 1);
    luaL_getmetatable(L, LB_MODEL);
    lua_pushcfunction(L, lb_model_bricks);
    lua_setfield(L, -2, "bricks");
    lua_pop(L, 1);
    lua_pushcfunction(L, lb_emoe);
    lua_setfield(L, mod, "emoe");
    lua_pushcfunction(L, lb_bricks_open);
    lua_setfield(L, mod, "bricks_open");
}
