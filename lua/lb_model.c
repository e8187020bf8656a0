/*
 * lb_model.c - the `moe` module table and its model side: moe.load, the
 * moe.Model handle (info, tokens, contexts), the moe.Sampler handle, and
 * the helpers every binding shares (errors, token arguments, float lists).
 * Uses the public engine header and Lua only; never tui/.
 */
#include "config.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lb.h"

/* ---- shared helpers ---------------------------------------------------- */

int lb_fail(lua_State *L, moe_status st)
{
    const char *detail = moe_last_error();
    lua_pushnil(L);
    if (detail && *detail)
        lua_pushfstring(L, "%s: %s", moe_strerror(st), detail);
    else
        lua_pushstring(L, moe_strerror(st));
    return 2;
}

int lb_done(lua_State *L, moe_status st)
{
    if (st != MOE_OK)
        return lb_fail(L, st);
    lua_pushboolean(L, 1);
    return 1;
}

void lb_finish_metatable(lua_State *L, const char *name)
{
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "__index");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__metatable"); /* getmetatable() gives the name only */
}

void lb_push_floats(lua_State *L, const float *v, int32_t n)
{
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_pushnumber(L, v[i]);
        lua_rawseti(L, -2, i + 1);
    }
}

float *lb_floats_arg(lua_State *L, int idx, int32_t *n)
{
    lua_Integer len;
    float *v;
    idx = lua_absindex(L, idx);
    luaL_checktype(L, idx, LUA_TTABLE);
    len = luaL_len(L, idx);
    luaL_argcheck(L, len >= 0 && len < INT32_MAX / 4, idx, "list too long");
    v = lua_newuserdatauv(L, (size_t)(len > 0 ? len : 1) * sizeof(float), 0);
    for (lua_Integer i = 1; i <= len; i++) {
        int isnum;
        lua_Number x;
        lua_rawgeti(L, idx, i);
        x = lua_tonumberx(L, -1, &isnum);
        if (!isnum)
            luaL_error(L, "bad argument #%d: element %d is not a number", idx, (int)i);
        v[i - 1] = (float)x;
        lua_pop(L, 1);
    }
    *n = (int32_t)len;
    return v;
}

int32_t *lb_tokens_arg(lua_State *L, int idx, const moe_model *model, bool bos, int32_t *n)
{
    moe_model_info info;
    idx = lua_absindex(L, idx);
    moe_model_get_info(model, &info);
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t len;
        const char *s = lua_tolstring(L, idx, &len);
        int32_t cap = (int32_t)(len + 8 < INT32_MAX / 8 ? len + 8 : INT32_MAX / 8);
        int32_t *buf = lua_newuserdatauv(L, (size_t)cap * sizeof(int32_t), 0);
        int32_t got = moe_tokenize(model, s, len, buf, cap, bos, false);
        if (got == INT32_MIN)
            luaL_error(L, "tokenize failed: %s", moe_last_error());
        if (got < 0) {
            lua_pop(L, 1);
            cap = -got;
            buf = lua_newuserdatauv(L, (size_t)cap * sizeof(int32_t), 0);
            got = moe_tokenize(model, s, len, buf, cap, bos, false);
            if (got < 0)
                luaL_error(L, "tokenize failed: %s", moe_last_error());
        }
        *n = got;
        return buf;
    }
    if (lua_type(L, idx) == LUA_TTABLE) {
        const lua_Integer len = luaL_len(L, idx);
        int32_t *buf;
        luaL_argcheck(L, len >= 0 && len < INT32_MAX / 8, idx, "token list too long");
        buf = lua_newuserdatauv(L, (size_t)(len > 0 ? len : 1) * sizeof(int32_t), 0);
        for (lua_Integer i = 1; i <= len; i++) {
            int isnum;
            lua_Integer id;
            lua_rawgeti(L, idx, i);
            id = lua_tointegerx(L, -1, &isnum);
            lua_pop(L, 1);
            if (!isnum || id < 0 || id >= info.n_vocab)
                luaL_error(L, "bad argument #%d: token %d is not an id in [0, %d)", idx,
                           (int)i, info.n_vocab);
            buf[i - 1] = (int32_t)id;
        }
        *n = (int32_t)len;
        return buf;
    }
    luaL_typeerror(L, idx, "string or list of token ids");
    return NULL;
}

void lb_push_detok(lua_State *L, const moe_model *model, const int32_t *ids, int32_t n)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int32_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *p = moe_token_piece(model, ids[i], &len);
        if (p)
            luaL_addlstring(&b, p, len);
    }
    luaL_pushresult(&b);
}

/* ---- Model ------------------------------------------------------------- */

void lb_model_unref(lb_model_ref *ref)
{
    if (ref && --ref->refs == 0) {
        moe_model_free(ref->model);
        free(ref);
    }
}

void lb_push_model_ref(lua_State *L, lb_model_ref *ref)
{
    lb_model *m = lua_newuserdatauv(L, sizeof *m, 0);
    m->ref = NULL;
    luaL_setmetatable(L, LB_MODEL);
    m->ref = ref;
    ref->refs++;
}

lb_model *lb_check_model(lua_State *L, int idx)
{
    lb_model *m = luaL_checkudata(L, idx, LB_MODEL);
    if (!m->ref)
        luaL_error(L, "attempt to use a closed model");
    return m;
}

moe_model *lb_model_of(lua_State *L, int idx)
{
    return lb_check_model(L, idx)->ref->model;
}

/* moe.load(path [, {threads = n}]) -> Model | nil, msg */
static int lb_load(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    moe_model_params p = moe_model_default_params();
    moe_model *model = NULL;
    lb_model_ref *ref;
    moe_status st;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        static const char *const loads[] = {"auto", "mmap", "copy", NULL};
        if (lua_getfield(L, 2, "threads") != LUA_TNIL)
            p.n_threads = (int)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        luaL_argcheck(L, p.n_threads >= 1 && p.n_threads <= 256, 2, "threads out of range");
        if (lua_getfield(L, 2, "load") != LUA_TNIL)
            p.load = (moe_load_mode)luaL_checkoption(L, -1, NULL, loads);
        lua_pop(L, 1);
    }
    ref = malloc(sizeof *ref);
    if (!ref)
        return luaL_error(L, "out of memory");
    st = moe_model_load(path, &p, &model);
    if (st != MOE_OK) {
        free(ref);
        return lb_fail(L, st);
    }
    ref->model = model;
    ref->refs = 0;
    lb_push_model_ref(L, ref);
    return 1;
}

static int lb_model_close(lua_State *L)
{
    lb_model *m = luaL_checkudata(L, 1, LB_MODEL);
    if (m->ref) {
        lb_model_unref(m->ref);
        m->ref = NULL;
    }
    return 0;
}

static int lb_model_tostring(lua_State *L)
{
    lb_model *m = luaL_checkudata(L, 1, LB_MODEL);
    if (!m->ref) {
        lua_pushstring(L, "moe.Model (closed)");
    } else {
        moe_model_info info;
        moe_model_get_info(m->ref->model, &info);
        lua_pushfstring(L, "moe.Model (%s, %s, %d layers)", info.name, info.arch, info.n_layer);
    }
    return 1;
}

static void lb_setint(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void lb_setstr(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v ? v : "");
    lua_setfield(L, -2, k);
}

/* m:info() -> table */
static int lb_model_info(lua_State *L)
{
    moe_model *model = lb_model_of(L, 1);
    moe_model_info i;
    moe_model_get_info(model, &i);
    lua_createtable(L, 0, 20);
    lb_setstr(L, "name", i.name);
    lb_setstr(L, "arch", i.arch);
    lb_setstr(L, "path", i.path);
    lb_setstr(L, "ftype", i.ftype);
    lb_setint(L, "n_vocab", i.n_vocab);
    lb_setint(L, "n_ctx_train", i.n_ctx_train);
    lb_setint(L, "n_embd", i.n_embd);
    lb_setint(L, "n_layer", i.n_layer);
    lb_setint(L, "n_head", i.n_head);
    lb_setint(L, "n_head_kv", i.n_head_kv);
    lb_setint(L, "n_embd_head", i.n_embd_head);
    lb_setint(L, "n_ff", i.n_ff);
    lb_setint(L, "n_expert", i.n_expert);
    lb_setint(L, "n_expert_used", i.n_expert_used);
    lb_setint(L, "n_ff_exp", i.n_ff_exp);
    lua_pushboolean(L, i.has_shared_expert);
    lua_setfield(L, -2, "has_shared_expert");
    lb_setint(L, "n_params", i.n_params);
    lb_setint(L, "weight_bytes", i.weight_bytes);
    lb_setint(L, "file_size", i.file_size);
    lua_pushboolean(L, i.copied);
    lua_setfield(L, -2, "copied");
    lb_setint(L, "bos", moe_token_bos(model));
    lb_setint(L, "eos", moe_token_eos(model));
    return 1;
}

/* m:tokenize(text [, {bos = true, special = false}]) -> list of ids */
static int lb_model_tokenize(lua_State *L)
{
    moe_model *model = lb_model_of(L, 1);
    size_t len;
    const char *s = luaL_checklstring(L, 2, &len);
    bool bos = true, special = false;
    int32_t cap, got, *buf;
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        if (lua_getfield(L, 3, "bos") != LUA_TNIL)
            bos = lua_toboolean(L, -1);
        if (lua_getfield(L, 3, "special") != LUA_TNIL)
            special = lua_toboolean(L, -1);
        lua_pop(L, 2);
    }
    cap = (int32_t)(len + 8 < INT32_MAX / 8 ? len + 8 : INT32_MAX / 8);
    buf = lua_newuserdatauv(L, (size_t)cap * sizeof(int32_t), 0);
    got = moe_tokenize(model, s, len, buf, cap, bos, special);
    if (got < 0 && got != INT32_MIN) {
        cap = -got;
        buf = lua_newuserdatauv(L, (size_t)cap * sizeof(int32_t), 0);
        got = moe_tokenize(model, s, len, buf, cap, bos, special);
    }
    if (got < 0)
        return lb_fail(L, MOE_ERR_INVALID_ARG);
    lua_createtable(L, got, 0);
    for (int32_t i = 0; i < got; i++) {
        lua_pushinteger(L, buf[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* m:detokenize(ids) -> string */
static int lb_model_detokenize(lua_State *L)
{
    moe_model *model = lb_model_of(L, 1);
    int32_t n;
    const int32_t *ids;
    luaL_checktype(L, 2, LUA_TTABLE);
    ids = lb_tokens_arg(L, 2, model, false, &n);
    lb_push_detok(L, model, ids, n);
    return 1;
}

/* m:piece(id) -> string */
static int lb_model_piece(lua_State *L)
{
    moe_model *model = lb_model_of(L, 1);
    const lua_Integer id = luaL_checkinteger(L, 2);
    moe_model_info info;
    size_t len = 0;
    const char *p;
    moe_model_get_info(model, &info);
    luaL_argcheck(L, id >= 0 && id < info.n_vocab, 2, "token id out of range");
    p = moe_token_piece(model, (int32_t)id, &len);
    lua_pushlstring(L, p ? p : "", p ? len : 0);
    return 1;
}

static int lb_model_bos(lua_State *L)
{
    lua_pushinteger(L, moe_token_bos(lb_model_of(L, 1)));
    return 1;
}

static int lb_model_eos(lua_State *L)
{
    lua_pushinteger(L, moe_token_eos(lb_model_of(L, 1)));
    return 1;
}

static int lb_model_is_eog(lua_State *L)
{
    lua_pushboolean(L, moe_token_is_eog(lb_model_of(L, 1), (int32_t)luaL_checkinteger(L, 2)));
    return 1;
}

static int lb_model_n_vocab(lua_State *L)
{
    moe_model_info info;
    moe_model_get_info(lb_model_of(L, 1), &info);
    lua_pushinteger(L, info.n_vocab);
    return 1;
}

/* ---- Sampler ------------------------------------------------------------ */

typedef struct {
    moe_sampler *s;
} lb_sampler;

moe_sampler *lb_check_sampler(lua_State *L, int idx)
{
    lb_sampler *s = luaL_checkudata(L, idx, LB_SAMPLER);
    if (!s->s)
        luaL_error(L, "attempt to use a closed sampler");
    return s->s;
}

static float lb_optfield_num(lua_State *L, int t, const char *k, float def)
{
    float v = def;
    if (lua_getfield(L, t, k) != LUA_TNIL) {
        if (!lua_isnumber(L, -1))
            luaL_error(L, "sampler field '%s' must be a number", k);
        v = (float)lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

moe_sampler *lb_new_sampler(lua_State *L, int idx, int32_t n_vocab)
{
    moe_sampler_params p = moe_sampler_default_params();
    lb_sampler *ud;
    moe_status st;
    if (!lua_isnoneornil(L, idx)) {
        idx = lua_absindex(L, idx);
        luaL_checktype(L, idx, LUA_TTABLE);
        p.temp = lb_optfield_num(L, idx, "temp", p.temp);
        p.top_k = (int32_t)lb_optfield_num(L, idx, "top_k", (float)p.top_k);
        p.top_p = lb_optfield_num(L, idx, "top_p", p.top_p);
        p.min_p = lb_optfield_num(L, idx, "min_p", p.min_p);
        p.typical_p = lb_optfield_num(L, idx, "typical_p", p.typical_p);
        p.repeat_penalty = lb_optfield_num(L, idx, "repeat_penalty", p.repeat_penalty);
        p.freq_penalty = lb_optfield_num(L, idx, "freq_penalty", p.freq_penalty);
        p.presence_penalty = lb_optfield_num(L, idx, "presence_penalty", p.presence_penalty);
        p.penalty_last_n = (int32_t)lb_optfield_num(L, idx, "penalty_last_n",
                                                    (float)p.penalty_last_n);
        if (lua_getfield(L, idx, "seed") != LUA_TNIL)
            p.seed = (uint64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
        if (lua_getfield(L, idx, "order") != LUA_TNIL) {
            const char *order = luaL_checkstring(L, -1);
            if (moe_sampler_parse_order(order, &p) != MOE_OK)
                luaL_error(L, "bad sampler order '%s': %s", order, moe_last_error());
        }
        lua_pop(L, 1);
    }
    ud = lua_newuserdatauv(L, sizeof *ud, 0);
    ud->s = NULL;
    luaL_setmetatable(L, LB_SAMPLER);
    st = moe_sampler_new(&p, n_vocab, &ud->s);
    if (st != MOE_OK)
        luaL_error(L, "sampler: %s: %s", moe_strerror(st), moe_last_error());
    return ud->s;
}

/* m:sampler([params]) -> Sampler */
static int lb_model_sampler(lua_State *L)
{
    moe_model_info info;
    moe_model_get_info(lb_model_of(L, 1), &info);
    lb_new_sampler(L, 2, info.n_vocab);
    return 1;
}

/* s:sample(ctx [, i]) or s:sample(logits_list) -> id */
static int lb_sampler_sample(lua_State *L)
{
    moe_sampler *s = lb_check_sampler(L, 1);
    const float *logits;
    if (lua_type(L, 2) == LUA_TTABLE) {
        int32_t n;
        logits = lb_floats_arg(L, 2, &n);
    } else {
        lb_ctx *c = lb_check_ctx(L, 2);
        logits = moe_ctx_logits(c->ctx, (int32_t)luaL_optinteger(L, 3, -1));
        if (!logits)
            return luaL_error(L, "no logits kept for that token (decode first)");
    }
    lua_pushinteger(L, moe_sampler_sample(s, logits));
    return 1;
}

static int lb_sampler_accept(lua_State *L)
{
    moe_sampler_accept(lb_check_sampler(L, 1), (int32_t)luaL_checkinteger(L, 2));
    return 0;
}

static int lb_sampler_reset(lua_State *L)
{
    moe_sampler_reset(lb_check_sampler(L, 1));
    return 0;
}

/* s:candidates(stage [, n]) -> list of {id, logit, p} after that stage */
static int lb_sampler_candidates(lua_State *L)
{
    static const char *const stages[] = {"penalties", "top_k", "typical_p", "top_p",
                                         "min_p", "temp", NULL};
    moe_sampler *s = lb_check_sampler(L, 1);
    const int st = luaL_checkoption(L, 2, NULL, stages);
    const lua_Integer nmax = luaL_optinteger(L, 3, 10);
    moe_candidate *c;
    int32_t n;
    luaL_argcheck(L, nmax > 0 && nmax <= 1 << 20, 3, "count out of range");
    c = lua_newuserdatauv(L, (size_t)nmax * sizeof *c, 0);
    n = moe_sampler_stage_candidates(s, (moe_sampler_stage)st, c, (int32_t)nmax);
    lua_createtable(L, n, 0);
    for (int32_t i = 0; i < n; i++) {
        lua_createtable(L, 0, 3);
        lua_pushinteger(L, c[i].id);
        lua_setfield(L, -2, "id");
        lua_pushnumber(L, c[i].logit);
        lua_setfield(L, -2, "logit");
        lua_pushnumber(L, c[i].p);
        lua_setfield(L, -2, "p");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

static int lb_sampler_close(lua_State *L)
{
    lb_sampler *s = luaL_checkudata(L, 1, LB_SAMPLER);
    moe_sampler_free(s->s);
    s->s = NULL;
    return 0;
}

static int lb_sampler_tostring(lua_State *L)
{
    lb_sampler *s = luaL_checkudata(L, 1, LB_SAMPLER);
    lua_pushstring(L, s->s ? "moe.Sampler" : "moe.Sampler (closed)");
    return 1;
}

/* moe.time() -> monotonic seconds (scripts in a sandbox have no os.clock) */
static int lb_time(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    return 1;
}

/* moe.strerror(): the engine's detail of the last failure */
static int lb_last_error(lua_State *L)
{
    lua_pushstring(L, moe_last_error());
    return 1;
}

/* moe.archs() -> list of architectures the engine runs */
static int lb_archs(lua_State *L)
{
    const char *const *a = moe_supported_archs();
    lua_newtable(L);
    for (int i = 0; a && a[i]; i++) {
        lua_pushstring(L, a[i]);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

void lb_model_register(lua_State *L, int mod)
{
    static const luaL_Reg model_m[] = {
        {"info", lb_model_info}, {"tokenize", lb_model_tokenize},
        {"detokenize", lb_model_detokenize}, {"piece", lb_model_piece},
        {"bos", lb_model_bos}, {"eos", lb_model_eos}, {"is_eog", lb_model_is_eog},
        {"n_vocab", lb_model_n_vocab}, {"sampler", lb_model_sampler},
        {"close", lb_model_close}, {"__gc", lb_model_close}, {"__close", lb_model_close},
        {"__tostring", lb_model_tostring}, {NULL, NULL}};
    static const luaL_Reg sampler_m[] = {
        {"sample", lb_sampler_sample}, {"accept", lb_sampler_accept},
        {"reset", lb_sampler_reset}, {"candidates", lb_sampler_candidates},
        {"close", lb_sampler_close}, {"__gc", lb_sampler_close},
        {"__close", lb_sampler_close}, {"__tostring", lb_sampler_tostring}, {NULL, NULL}};
    static const luaL_Reg fns[] = {{"load", lb_load}, {"time", lb_time},
                                   {"last_error", lb_last_error}, {"archs", lb_archs},
                                   {NULL, NULL}};
    mod = lua_absindex(L, mod);
    luaL_newmetatable(L, LB_MODEL);
    luaL_setfuncs(L, model_m, 0);
    lb_finish_metatable(L, LB_MODEL);
    lua_pop(L, 1);
    luaL_newmetatable(L, LB_SAMPLER);
    luaL_setfuncs(L, sampler_m, 0);
    lb_finish_metatable(L, LB_SAMPLER);
    lua_pop(L, 1);
    lua_pushvalue(L, mod);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
}

int lb_open_moe(lua_State *L)
{
    int mod;
    lua_newtable(L);
    mod = lua_gettop(L);
    lua_pushstring(L, PACKAGE_VERSION);
    lua_setfield(L, mod, "version");
    lb_model_register(L, mod);
    lb_ctx_register(L, mod);
    lb_util_register(L, mod);
    lb_bricks_register(L, mod);
    lb_train_register(L, mod);
    lb_host_register(L, mod);
    return 1;
}
