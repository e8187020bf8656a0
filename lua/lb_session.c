/*
 * lb_session.c - session files for Lua without the studio: build a session
 * from a context's trace and write it (moe.session_export(ctx, path)), and
 * read a session file into a Lua table shaped like its JSON
 * (moe.session_read, moe.session_import headless). The document model and
 * the JSON are the engine's (moe.h "sessions"). Uses the public engine
 * header and Lua only; never tui/.
 */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lb.h"

/* ---- export from a context ------------------------------------------------ */

/* Text of the prompt records of the turn that starts at record `start`. */
static void lbs_turn_prompt(lua_State *L, const moe_ctx *ctx, const moe_session *s,
                            int32_t start)
{
    const int32_t bos = moe_token_bos(moe_ctx_model(ctx));
    int32_t n = 0, k = 0;
    int32_t *ids;
    while (start + n < s->n_tok && s->toks[start + n]->prompt)
        n++;
    ids = lua_newuserdatauv(L, (size_t)(n > 0 ? n : 1) * sizeof *ids, 0);
    for (int32_t i = 0; i < n; i++) /* the typed text: without the BOS */
        if (!(s->toks[start + i]->pos == 0 && s->toks[start + i]->id == bos))
            ids[k++] = s->toks[start + i]->id;
    n = k;
    lb_push_detok(L, moe_ctx_model(ctx), ids, n);
    lua_remove(L, -2);
}

/* Fill s from ctx's trace: one record per entry, a new turn whenever prompt
 * records follow sampled ones (or start the session). */
static moe_status lbs_build(lua_State *L, moe_session *s, const moe_ctx *ctx, int opts)
{
    const int32_t n = moe_ctx_trace_count(ctx);
    const char *exit_spec = NULL;
    moe_status st;
    if (opts && lua_getfield(L, opts, "exit") != LUA_TNIL)
        exit_spec = luaL_checkstring(L, -1);
    if (exit_spec) {
        char *e = strdup(exit_spec);
        if (!e)
            luaL_error(L, "out of memory");
        free(s->set.exit_spec);
        s->set.exit_spec = e;
    }
    if (opts)
        lua_pop(L, 1);
    if (opts && lua_getfield(L, opts, "n_predict") != LUA_TNIL)
        s->set.n_predict = (int32_t)luaL_checkinteger(L, -1);
    if (opts)
        lua_pop(L, 1);
    st = moe_session_set_model(s, ctx, NULL);
    if (st != MOE_OK)
        return st;
    for (int32_t i = 0; i < n; i++) {
        const moe_trace_token *e = moe_ctx_trace_get(ctx, i);
        const bool prompt = e && (e->prefill || e->pos == 0);
        if (prompt && (s->n_tok == 0 || s->toks[s->n_tok - 1]->sampled) &&
            !moe_session_begin_turn(s, ""))
            luaL_error(L, "out of memory");
        st = moe_session_add_token_from_trace(s, ctx, i);
        if (st != MOE_OK)
            return st;
    }
    /* turn prompts: the detokenized prompt records */
    for (int32_t t = 0; t < s->n_turn; t++) {
        const char *txt;
        char *copy;
        lbs_turn_prompt(L, ctx, s, s->turns[t].start);
        txt = lua_tostring(L, -1);
        copy = strdup(txt ? txt : "");
        lua_pop(L, 1);
        if (!copy)
            luaL_error(L, "out of memory");
        free(s->turns[t].prompt);
        s->turns[t].prompt = copy;
    }
    return MOE_OK;
}

typedef struct {
    moe_session s;
    bool live;
} lbs_box;

static int lbs_box_gc(lua_State *L)
{
    lbs_box *b = lua_touserdata(L, 1);
    if (b && b->live) {
        moe_session_free(&b->s);
        b->live = false;
    }
    return 0;
}

/* A session freed by the GC even when a Lua error unwinds past us. */
static lbs_box *lbs_push_box(lua_State *L)
{
    lbs_box *b = lua_newuserdatauv(L, sizeof *b, 0);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, "moe.SessionBox")) {
        lua_pushcfunction(L, lbs_box_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    moe_session_init(&b->s);
    b->live = true;
    return b;
}

int lb_session_export_ctx(lua_State *L, int ctx_idx, const char *path, int opts)
{
    lb_ctx *c = lb_check_ctx(L, ctx_idx);
    lbs_box *b;
    moe_status st;
    int n;
    if (opts && lua_isnoneornil(L, opts))
        opts = 0;
    if (opts)
        luaL_checktype(L, opts, LUA_TTABLE);
    if (moe_ctx_trace_count(c->ctx) == 0) {
        lua_pushnil(L);
        lua_pushstring(L, "the context has no trace entries (c:trace(true) before decoding)");
        return 2;
    }
    b = lbs_push_box(L);
    st = lbs_build(L, &b->s, c->ctx, opts);
    if (st == MOE_OK)
        st = moe_session_write(&b->s, path);
    n = b->s.n_tok;
    moe_session_free(&b->s);
    b->live = false;
    lua_pop(L, 1);
    if (st != MOE_OK)
        return lb_fail(L, st);
    lua_pushinteger(L, n);
    return 1;
}

/* ---- a session file as a table -------------------------------------------- */

static void lbs_num(lua_State *L, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void lbs_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void lbs_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v ? v : "");
    lua_setfield(L, -2, k);
}

static void lbs_bool(lua_State *L, const char *k, bool v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

/* [[id, p], ...] as a list of two-element lists (ids 0-based, as in the file) */
static void lbs_pairs(lua_State *L, const int32_t *ids, size_t id_stride, const float *ps,
                      int32_t n)
{
    int32_t k = 0;
    lua_createtable(L, n, 0);
    for (int32_t j = 0; j < n; j++) {
        if (ids[(size_t)j * id_stride] < 0)
            continue;
        lua_createtable(L, 2, 0);
        lua_pushinteger(L, ids[(size_t)j * id_stride]);
        lua_rawseti(L, -2, 1);
        lua_pushnumber(L, ps[(size_t)j * id_stride]);
        lua_rawseti(L, -2, 2);
        lua_rawseti(L, -2, ++k);
    }
}

static void lbs_push_cands(lua_State *L, const moe_session_cand *c, int32_t n)
{
    lbs_pairs(L, &c[0].id, sizeof *c / sizeof(int32_t), &c[0].p, n);
}

static void lbs_push_token(lua_State *L, const moe_session *s, const moe_session_tok *t)
{
    const moe_session_dims *dm = &s->dims;
    lua_createtable(L, 0, 14);
    lbs_int(L, "i", t->index);
    lbs_int(L, "pos", t->pos);
    lbs_int(L, "id", t->id);
    lbs_str(L, "text", t->text);
    lbs_int(L, "turn", t->turn);
    lbs_bool(L, "prompt", t->prompt);
    lbs_num(L, "time_ms", t->time_ms);
    if (t->sampled) {
        lbs_num(L, "logprob", t->logprob);
        lbs_push_cands(L, t->top, t->n_top);
        lua_setfield(L, -2, "top");
        lua_createtable(L, t->n_stage, 0);
        for (int32_t st = 0; st < t->n_stage; st++) {
            lua_createtable(L, 0, 2);
            lbs_str(L, "stage", moe_sampler_stage_name((moe_sampler_stage)t->stage[st]));
            lbs_push_cands(L, t->cand[st], t->n_cand[st]);
            lua_setfield(L, -2, "cand");
            lua_rawseti(L, -2, st + 1);
        }
        lua_setfield(L, -2, "stages");
    }
    if (!t->traced)
        return;
    lbs_int(L, "exit_layer", t->exit_layer);
    lua_createtable(L, dm->n_layer, 0);
    for (int32_t il = 0; il < dm->n_layer; il++) {
        const size_t so = (size_t)il * (size_t)dm->n_sel;
        lua_createtable(L, 0, 7);
        lbs_bool(L, "moe", t->layer_moe[il]);
        if (t->layer_moe[il] && dm->n_expert > 0) {
            int32_t k = 0;
            lua_newtable(L); /* experts */
            lua_newtable(L); /* weights */
            for (int32_t j = 0; j < dm->n_sel; j++) {
                if (t->sel[so + (size_t)j] < 0)
                    continue;
                k++;
                lua_pushinteger(L, t->sel[so + (size_t)j]);
                lua_rawseti(L, -3, k);
                lua_pushnumber(L, t->sel_w[so + (size_t)j]);
                lua_rawseti(L, -2, k);
            }
            lua_setfield(L, -3, "weights");
            lua_setfield(L, -2, "experts");
            lb_push_floats(L, t->probs + (size_t)il * (size_t)dm->n_expert, dm->n_expert);
            lua_setfield(L, -2, "probs");
        }
        lbs_num(L, "hnorm", t->hnorm[il]);
        if (dm->lens_k > 0) {
            const size_t ko = (size_t)il * (size_t)dm->lens_k;
            lbs_num(L, "entropy", t->lens_entropy[il]);
            lbs_pairs(L, t->lens_id + ko, 1, t->lens_p + ko, dm->lens_k);
            lua_setfield(L, -2, "lens");
        }
        lua_rawseti(L, -2, il + 1);
    }
    lua_setfield(L, -2, "layers");
}

static void lbs_push_session(lua_State *L, const moe_session *s)
{
    const moe_session_meta *m = &s->meta;
    const moe_session_settings *set = &s->set;
    const moe_session_dims *dm = &s->dims;
    moe_session_stats stt;
    lua_createtable(L, 0, 9);
    lbs_str(L, "format", MOE_SESSION_FORMAT);
    lbs_int(L, "version", MOE_SESSION_VERSION);
    if (m->path) {
        lua_createtable(L, 0, 19);
        lbs_str(L, "path", m->path);
        lbs_str(L, "sha256", m->sha256);
        lbs_str(L, "name", m->name);
        lbs_str(L, "arch", m->arch);
        lbs_str(L, "ftype", m->ftype);
        lbs_int(L, "n_vocab", m->n_vocab);
        lbs_int(L, "n_ctx_train", m->n_ctx_train);
        lbs_int(L, "n_embd", m->n_embd);
        lbs_int(L, "n_layer", m->n_layer);
        lbs_int(L, "n_head", m->n_head);
        lbs_int(L, "n_head_kv", m->n_head_kv);
        lbs_int(L, "n_ff", m->n_ff);
        lbs_int(L, "n_expert", m->n_expert);
        lbs_int(L, "n_expert_used", m->n_expert_used);
        lbs_int(L, "n_ff_exp", m->n_ff_exp);
        lbs_bool(L, "has_shared_expert", m->has_shared_expert);
        lbs_int(L, "n_params", m->n_params);
        lbs_int(L, "file_size", m->file_size);
        lbs_int(L, "weight_bytes", m->weight_bytes);
        lua_setfield(L, -2, "model");
    }
    lua_createtable(L, 0, 6);
    {
        char buf[256];
        size_t off = 0;
        lua_createtable(L, 0, 11);
        lbs_num(L, "temp", set->sp.temp);
        lbs_int(L, "top_k", set->sp.top_k);
        lbs_num(L, "top_p", set->sp.top_p);
        lbs_num(L, "min_p", set->sp.min_p);
        lbs_num(L, "typical_p", set->sp.typical_p);
        lbs_num(L, "repeat_penalty", set->sp.repeat_penalty);
        lbs_num(L, "freq_penalty", set->sp.freq_penalty);
        lbs_num(L, "presence_penalty", set->sp.presence_penalty);
        lbs_int(L, "penalty_last_n", set->sp.penalty_last_n);
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)set->sp.seed);
        lbs_str(L, "seed", buf); /* a decimal string, as in the file */
        buf[0] = '\0';
        for (int32_t i = 0; i < set->sp.n_order && i < MOE_STAGE_COUNT && off < sizeof buf; i++)
            off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? "," : "",
                                    moe_sampler_stage_name(set->sp.order[i]));
        lbs_str(L, "order", buf);
        lua_setfield(L, -2, "sampler");
    }
    lbs_int(L, "n_ctx", set->n_ctx);
    lbs_int(L, "lens_k", set->lens_k);
    lbs_int(L, "n_predict", set->n_predict);
    lbs_str(L, "exit", set->exit_spec ? set->exit_spec : "none");
    lua_createtable(L, set->n_route, 0);
    for (int32_t i = 0; i < set->n_route; i++) {
        lua_pushstring(L, set->route[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "route");
    lua_setfield(L, -2, "settings");
    lua_createtable(L, 0, 4);
    lbs_int(L, "n_layer", dm->n_layer);
    lbs_int(L, "n_expert", dm->n_expert);
    lbs_int(L, "n_sel", dm->n_sel);
    lbs_int(L, "lens_k", dm->lens_k);
    lua_setfield(L, -2, "dims");
    lua_createtable(L, s->n_turn, 0);
    for (int32_t i = 0; i < s->n_turn; i++) {
        lua_createtable(L, 0, 4);
        lbs_str(L, "prompt", s->turns[i].prompt);
        lbs_int(L, "start", s->turns[i].start);
        lbs_int(L, "n_prompt", s->turns[i].n_prompt);
        lbs_int(L, "n_gen", s->turns[i].n_gen);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "turns");
    lua_createtable(L, s->n_tok, 0);
    for (int32_t i = 0; i < s->n_tok; i++) {
        lbs_push_token(L, s, s->toks[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "tokens");
    lua_newtable(L); /* pieces: every known display text, keyed by id */
    for (int32_t id = 0; id < s->n_vocab; id++)
        if (s->vocab[id]) {
            lua_pushstring(L, s->vocab[id]);
            lua_rawseti(L, -2, id);
        }
    lua_setfield(L, -2, "pieces");
    moe_session_stats_get(s, &stt);
    lua_createtable(L, 0, 9);
    lbs_int(L, "n_tokens", stt.n_tokens);
    lbs_int(L, "n_prompt", stt.n_prompt);
    lbs_int(L, "n_gen", stt.n_gen);
    lbs_int(L, "n_traced", stt.n_traced);
    lbs_num(L, "gen_ms", stt.gen_ms);
    lbs_num(L, "tok_s", stt.tok_s);
    lbs_num(L, "mean_logprob", stt.mean_logprob);
    lbs_num(L, "perplexity", stt.perplexity);
    lbs_num(L, "mean_exit_layer", stt.mean_exit_layer);
    lua_setfield(L, -2, "stats");
}

int lb_session_push_file(lua_State *L, const char *path)
{
    lbs_box *b = lbs_push_box(L);
    moe_status st = moe_session_read(&b->s, path);
    if (st != MOE_OK) {
        moe_session_free(&b->s);
        b->live = false;
        lua_pop(L, 1);
        return lb_fail(L, st);
    }
    lbs_push_session(L, &b->s);
    moe_session_free(&b->s);
    b->live = false;
    lua_remove(L, -2);
    return 1;
}
