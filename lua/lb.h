/*
 * lb.h - internals shared by the Lua host (host.c) and the binding modules
 * of the `moe` module (lb_model.c, lb_ctx.c, lb_util.c). Not for tui/: the
 * studio uses host.h only.
 *
 * Conventions of the bindings: handles are full userdata with metatables
 * named "moe.Model", "moe.Context", "moe.Sampler", "moe.Snapshot",
 * "moe.BM25" (each with __gc, __close, __tostring and a __metatable guard);
 * programmer errors (wrong types, closed handles, ids out of range) raise;
 * runtime failures of the engine return nil, "status: detail". Engine ids
 * (tokens, positions, layers, experts) are 0-based; Lua lists are 1-based.
 */
#ifndef MOE_LUA_LB_H
#define MOE_LUA_LB_H

#include <stdbool.h>
#include <stdint.h>

#include <lauxlib.h>
#include <lua.h>

#include "host.h"
#include "moe.h"

#define LB_MODEL "moe.Model"
#define LB_CTX "moe.Context"
#define LB_SAMPLER "moe.Sampler"
#define LB_SNAPSHOT "moe.Snapshot"
#define LB_BM25 "moe.BM25"

/* A model shared by its Model handle and every Context made from it: freed
 * when the handle is closed (or collected) and no context uses it. */
typedef struct {
    moe_model *model;
    int refs;     /* the handle (while open) + live contexts */
} lb_model_ref;

typedef struct {
    lb_model_ref *ref; /* NULL once closed */
} lb_model;

typedef struct {
    moe_ctx *ctx;      /* NULL once closed */
    lb_model_ref *ref;
} lb_ctx;

/* Create the module table (functions of every lb_ module) and leave it on
 * the stack. */
int lb_open_moe(lua_State *L);
void lb_model_register(lua_State *L, int mod);
void lb_ctx_register(lua_State *L, int mod);
void lb_util_register(lua_State *L, int mod);
void lb_bricks_register(lua_State *L, int mod); /* after lb_model_register */
void lb_train_register(lua_State *L, int mod);
/* moe.on/off/emit/log/plugins and moe.ui.* (host.c) */
void lb_host_register(lua_State *L, int mod);

/* Push nil and "status: detail"; returns 2. */
int lb_fail(lua_State *L, moe_status st);
/* The result of a call that only succeeds or fails: true (returns 1) for
 * MOE_OK, else lb_fail. */
int lb_done(lua_State *L, moe_status st);
/* Set a metatable's common fields (__name, __index = itself, __metatable
 * guard) after luaL_newmetatable and luaL_setfuncs. */
void lb_finish_metatable(lua_State *L, const char *name);

lb_model *lb_check_model(lua_State *L, int idx); /* raises when closed */
moe_model *lb_model_of(lua_State *L, int idx);
/* Push a new Model handle for a ref (takes one reference). */
void lb_push_model_ref(lua_State *L, lb_model_ref *ref);
void lb_model_unref(lb_model_ref *ref);
lb_ctx *lb_check_ctx(lua_State *L, int idx);   /* raises when closed */
moe_sampler *lb_check_sampler(lua_State *L, int idx);
/* moe.sampler(params table) constructor, also used by ctx:generate for an
 * options table: builds params from the table at idx (raises on bad
 * fields) and pushes a new Sampler. */
moe_sampler *lb_new_sampler(lua_State *L, int idx, int32_t n_vocab);

/* Tokens from the value at idx: a string (tokenized; bos: add BOS when the
 * model says so) or a list of ids (checked against n_vocab). The buffer is
 * a userdata pushed on the stack (freed by the GC). Raises on bad input. */
int32_t *lb_tokens_arg(lua_State *L, int idx, const moe_model *model, bool bos, int32_t *n);
/* Push the text of tokens (concatenated pieces). */
void lb_push_detok(lua_State *L, const moe_model *model, const int32_t *ids, int32_t n);
/* Push a float array as a Lua list. */
void lb_push_floats(lua_State *L, const float *v, int32_t n);
/* Read a list of numbers at idx into a userdata buffer pushed on the
 * stack; *n gets its length. Raises on non-numbers. */
float *lb_floats_arg(lua_State *L, int idx, int32_t *n);

/* Push a trace entry as a table (see docs/lua-api.md, ctx:trace_get). */
void lb_push_trace_entry(lua_State *L, const moe_trace_dims *d, const moe_trace_token *t);
/* After a decode of n tokens through the bindings: emit on_exit for tokens
 * that left early and on_route for their trace entries (only when
 * handlers are registered). */
void lb_after_decode(lua_State *L, moe_ctx *ctx, int32_t n);

/* Under a plugin's instruction limit, engine work counts too: each token a
 * binding evaluates costs LB_TOKEN_COST instructions; raises when the
 * budget is spent (a no-op for trusted code). */
#define LB_TOKEN_COST 10000
void lb_charge(lua_State *L, int64_t tokens);

/* lb_session.c: write a session built from the trace of the Context at
 * ctx_idx (opts: index of an options table or 0); pushes the number of
 * records or nil, msg. Push a session file as a table or nil, msg. */
int lb_session_export_ctx(lua_State *L, int ctx_idx, const char *path, int opts);
int lb_session_push_file(lua_State *L, const char *path);

/* host.c: the host of a state, and event dispatch with the arguments on
 * top of the stack (popped); returns handlers run without error. */
host *lb_host(lua_State *L);
int host_dispatch(host *h, host_event ev, int nargs);

#endif
