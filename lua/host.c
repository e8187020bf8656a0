/*
 * host.c - the Lua host: state creation with a counting allocator (memory
 * cap), the instruction-count hook, the protected-call helper with a
 * traceback, the plugin sandbox and loader, the user's config, the event
 * registry and the UI registry (commands, keys, panes, notify, progress)
 * with its headless fallbacks. Uses the public engine header and Lua only;
 * must not depend on tui/ (the studio plugs in through host_ui).
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "host.h"
#include "lb.h"

#ifndef MOE_PKGDATADIR
#define MOE_PKGDATADIR "/usr/local/share/moe-studio"
#endif

#define HOST_HOOK_EVERY 1000 /* instructions between two hook calls */
#define HOST_MAX_PLUGINS 256

/* registry keys */
#define REG_HANDLERS "moe.handlers" /* event name -> list of {fn, plugin, id} */
#define REG_COMMANDS "moe.commands" /* list of {name, help, fn, plugin} */
#define REG_KEYS "moe.keys"         /* key -> {fn, plugin, help} */
#define REG_MODULE "moe.module"
#define REG_PLUGIN_ENVS "moe.plugin_envs" /* plugin index + 1 -> _ENV */

typedef struct {
    char *name;
    char *path;
    bool enabled;
    char *error;
} host_plugin;

struct host {
    lua_State *L;
    host_params p;
    host_ui ui;
    bool has_ui;
    /* memory */
    size_t mem_used;
    size_t mem_call_cap; /* 0 = none; limit of the current plugin call */
    int depth;           /* protected calls under way: limits apply only
                          * inside them, so the host's own bookkeeping
                          * outside never meets an unprotected error */
    bool mem_hit;
    /* instructions */
    bool instr_on;
    int64_t instr_left;
    bool instr_hit;
    /* whose code runs now: plugin index, -1 = trusted */
    int cur_plugin;
    int next_handler_id;
    volatile sig_atomic_t *intr; /* interrupt flag (host_set_interrupt) */
    host_plugin plugins[HOST_MAX_PLUGINS];
    int n_plugins;
    char **disabled_names; /* from the config */
    int n_disabled_names;
};

static const char *const host_event_names[HOST_EV_COUNT] = {
    [HOST_EV_TOKEN] = "on_token",
    [HOST_EV_ROUTE] = "on_route",
    [HOST_EV_EXIT] = "on_exit",
    [HOST_EV_STEP] = "on_step",
    [HOST_EV_SESSION] = "on_session",
};
_Static_assert(sizeof host_event_names / sizeof host_event_names[0] == HOST_EV_COUNT,
               "one name per event");

const char *host_event_name(host_event ev)
{
    return ev >= 0 && ev < HOST_EV_COUNT ? host_event_names[ev] : "?";
}

/* ---- messages --------------------------------------------------------- */

static void host_logf(host *h, moe_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void host_logf(host *h, moe_log_level lvl, const char *fmt, ...)
{
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (h->has_ui && h->ui.log) {
        h->ui.log(h->ui.ud, lvl, buf);
        return;
    }
    fprintf(stderr, "moe-studio lua: %s\n", buf);
    fflush(stderr);
}

static char *host_strdup(const char *s)
{
    size_t n = strlen(s ? s : "") + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s ? s : "", n);
    return d;
}

/* ---- allocator and hook ----------------------------------------------- */

static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    host *h = ud;
    const size_t old = ptr ? osize : 0;
    void *np;
    if (nsize == 0) {
        free(ptr);
        h->mem_used -= old;
        return NULL;
    }
    if (nsize > old && h->depth > 0) {
        const size_t grow = nsize - old;
        if ((h->p.mem_limit && h->mem_used + grow > h->p.mem_limit) ||
            (h->mem_call_cap && h->mem_used + grow > h->mem_call_cap)) {
            h->mem_hit = true;
            return NULL;
        }
    }
    np = realloc(ptr, nsize);
    if (!np)
        return NULL;
    h->mem_used = h->mem_used - old + nsize;
    return np;
}

static void host_hook(lua_State *L, lua_Debug *ar)
{
    host *h = host_from_lua(L);
    (void)ar;
    /* trusted code only: plugins have their instruction limit, and a
     * Ctrl-C meant for a generation must not disable a plugin whose event
     * handler happens to run at that moment */
    if (h && h->intr && *h->intr && h->cur_plugin < 0)
        luaL_error(L, "interrupted");
    if (!h || !h->instr_on)
        return;
    h->instr_left -= lua_gethookcount(L);
    if (h->instr_left <= 0) {
        h->instr_hit = true;
        /* keep raising at every instruction so a pcall loop cannot go on */
        lua_sethook(L, host_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "instruction limit exceeded (%I instructions)",
                   (lua_Integer)h->p.plugin_instr_limit);
    }
}

void lb_charge(lua_State *L, int64_t tokens)
{
    host *h = host_from_lua(L);
    if (!h || !h->instr_on || tokens <= 0)
        return;
    h->instr_left -= tokens * LB_TOKEN_COST;
    if (h->instr_left <= 0) {
        h->instr_hit = true;
        lua_sethook(L, host_hook, LUA_MASKCOUNT, 1);
        luaL_error(L, "instruction limit exceeded (%I instructions; engine work counts %d "
                      "per token)", (lua_Integer)h->p.plugin_instr_limit, LB_TOKEN_COST);
    }
}

/* ---- protected calls -------------------------------------------------- */

static int host_msgh(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) {
        if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
            msg = lua_tostring(L, -1);
        else
            msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    }
    luaL_traceback(L, L, msg, 1);
    return 1;
}

host *host_from_lua(lua_State *L)
{
    host *h;
    if (!L)
        return NULL;
    memcpy(&h, lua_getextraspace(L), sizeof h);
    return h;
}

host *lb_host(lua_State *L)
{
    return host_from_lua(L);
}

int host_pcall(host *h, int nargs, int nresults, int plugin, const char *what)
{
    lua_State *L = h->L;
    const int fn = lua_gettop(L) - nargs;
    const int saved_plugin = h->cur_plugin;
    const bool saved_on = h->instr_on;
    const int64_t saved_left = h->instr_left;
    const size_t saved_cap = h->mem_call_cap;
    /* plugin code, and everything in an untrusted host, runs limited */
    const bool limited = plugin >= 0 || !h->p.trusted;
    int64_t start_left = 0;
    int st;

    if (plugin >= 0 && (plugin >= h->n_plugins || !h->plugins[plugin].enabled)) {
        lua_settop(L, fn - 1);
        return LUA_ERRRUN;
    }
    lua_pushcfunction(L, host_msgh);
    lua_insert(L, fn);
    if (limited) {
        if (plugin >= 0)
            h->cur_plugin = plugin;
        if (h->p.plugin_instr_limit > 0) {
            int64_t left = h->p.plugin_instr_limit;
            if (saved_on && saved_left < left)
                left = saved_left;
            h->instr_on = true;
            h->instr_left = left;
        }
        if (h->p.plugin_mem_limit > 0) {
            size_t cap = h->mem_used + h->p.plugin_mem_limit;
            if (saved_cap && saved_cap < cap)
                cap = saved_cap;
            h->mem_call_cap = cap;
        }
    }
    start_left = h->instr_left;
    h->mem_hit = false;
    h->depth++;
    st = lua_pcall(L, nargs, nresults, fn);
    h->depth--;
    lua_remove(L, fn);

    if (st != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        char first[512];
        const char *who = plugin >= 0 ? h->plugins[plugin].name : NULL;
        if (!msg)
            msg = "(error object is not a string)";
        if (st == LUA_ERRMEM && h->mem_hit)
            msg = lua_pushfstring(L, "%s (memory cap reached: %I bytes in use)", msg,
                                  (lua_Integer)h->mem_used);
        host_logf(h, MOE_LOG_ERROR, "%s%s%s%s: %s", who ? "plugin " : "", who ? who : "",
                  who ? ": " : "", what ? what : "error", msg);
        if (plugin >= 0) {
            size_t i = 0;
            while (msg[i] && msg[i] != '\n' && i + 1 < sizeof first) {
                first[i] = msg[i];
                i++;
            }
            first[i] = '\0';
            host_plugin_disable(h, plugin, first);
        }
        lua_pop(L, st == LUA_ERRMEM && h->mem_hit ? 2 : 1);
    }
    /* give back the budget consumed here to an enclosing limited call */
    if (limited) {
        const int64_t used = h->instr_on ? start_left - h->instr_left : 0;
        h->instr_on = saved_on;
        h->instr_left = saved_on ? saved_left - used : 0;
        h->mem_call_cap = saved_cap;
        h->cur_plugin = saved_plugin;
    }
    if (h->instr_hit && !(h->instr_on && h->instr_left <= 0)) {
        h->instr_hit = false;
        lua_sethook(L, host_hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
    }
    return st;
}

/* ---- print and the sandbox --------------------------------------------- */

static void host_emit_line(host *h, const char *line)
{
    if (h->has_ui && h->ui.print) {
        h->ui.print(h->ui.ud, line);
        return;
    }
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
}

static int host_print(lua_State *L)
{
    host *h = lb_host(L);
    luaL_Buffer b;
    const int n = lua_gettop(L);
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(L, i, &len);
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_addvalue(&b);
        (void)s;
        (void)len;
    }
    luaL_pushresult(&b);
    host_emit_line(h, lua_tostring(L, -1));
    return 0;
}

/* load(chunk [, name [, mode [, env]]]) for plugins: text only, default env
 * the plugin's own (upvalue 1). */
static int host_safe_load(lua_State *L)
{
    const int n = lua_gettop(L);
    size_t len;
    const char *name;
    int st;
    if (lua_type(L, 1) == LUA_TSTRING) {
        const char *s = lua_tolstring(L, 1, &len);
        name = luaL_optstring(L, 2, "=(load)");
        st = luaL_loadbufferx(L, s, len, name, "t");
    } else {
        return luaL_error(L, "sandboxed load takes a string chunk only");
    }
    if (st != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    if (n >= 4)
        lua_pushvalue(L, 4);
    else
        lua_pushvalue(L, lua_upvalueindex(1));
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return 1;
}

static int host_safe_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    if (lua_type(L, 1) == LUA_TSTRING) /* the shared string library */
        return 0;
    if (!lua_getmetatable(L, 1))
        return 0;
    luaL_getmetafield(L, 1, "__metatable");
    return 1;
}

static int host_safe_collectgarbage(lua_State *L)
{
    static const char *const ok[] = {"collect", "count", "step", "isrunning", NULL};
    const int opt = luaL_checkoption(L, 1, "collect", ok);
    switch (opt) {
    case 1:
        lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT, 0) +
                              (lua_Number)lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0);
        return 1;
    case 2:
        lua_pushboolean(L, lua_gc(L, LUA_GCSTEP, 0));
        return 1;
    case 3:
        lua_pushboolean(L, lua_gc(L, LUA_GCISRUNNING, 0));
        return 1;
    default:
        lua_gc(L, LUA_GCCOLLECT, 0);
        lua_pushinteger(L, 0);
        return 1;
    }
}

/* Copy the table at idx (one level) and push the copy. */
static void host_copy_table(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
}

/* Push a copy of the moe module for one environment: its subtables are
 * copied too, so a plugin that replaces moe.x changes only its own view. */
static void host_push_module_copy(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, REG_MODULE);
    host_copy_table(L, -1);
    lua_remove(L, -2);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            host_copy_table(L, -1);
            lua_pushvalue(L, -3);
            lua_insert(L, -2);
            lua_rawset(L, -5);
        }
        lua_pop(L, 1);
    }
}

/* Push a fresh environment: sandboxed (base minus dofile/loadfile/require,
 * text-only load; string, table, math, utf8, coroutine copies; moe) or,
 * when unsafe, a table that falls back on the globals. */
static void host_push_env(host *h, bool unsafe)
{
    static const char *const base[] = {
        "assert", "error", "ipairs", "next", "pairs", "pcall", "rawequal", "rawget",
        "rawlen", "rawset", "select", "setmetatable", "tonumber", "tostring", "type",
        "xpcall", "_VERSION", NULL};
    static const char *const libs[] = {"string", "table", "math", "utf8", "coroutine", NULL};
    lua_State *L = h->L;
    lua_newtable(L); /* env */
    if (unsafe) {
        lua_newtable(L);
        lua_pushglobaltable(L);
        lua_setfield(L, -2, "__index");
        lua_setmetatable(L, -2);
        host_push_module_copy(L);
        lua_setfield(L, -2, "moe");
        return;
    }
    lua_pushglobaltable(L);
    for (int i = 0; base[i]; i++) {
        lua_getfield(L, -1, base[i]);
        lua_setfield(L, -3, base[i]);
    }
    for (int i = 0; libs[i]; i++) {
        lua_getfield(L, -1, libs[i]);
        if (lua_type(L, -1) == LUA_TTABLE) {
            host_copy_table(L, -1);
            lua_setfield(L, -4, libs[i]);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1); /* globals */
    lua_pushcfunction(L, host_print);
    lua_setfield(L, -2, "print");
    lua_pushcfunction(L, host_safe_getmetatable);
    lua_setfield(L, -2, "getmetatable");
    lua_pushcfunction(L, host_safe_collectgarbage);
    lua_setfield(L, -2, "collectgarbage");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, host_safe_load, 1);
    lua_setfield(L, -2, "load");
    host_push_module_copy(L);
    lua_setfield(L, -2, "moe");
    lua_pushvalue(L, -1);
    lua_setfield(L, -2, "_G");
}

/* ---- state ------------------------------------------------------------ */

host_params host_default_params(void)
{
    host_params p;
    memset(&p, 0, sizeof p);
    p.trusted = true;
    p.mem_limit = 0;
    p.plugin_instr_limit = 50 * 1000 * 1000;
    p.plugin_mem_limit = (size_t)64 << 20;
    p.plugins_unsafe = false;
    return p;
}

static int host_open_all(lua_State *L)
{
    host *h = lb_host(L);
    const int trusted = lua_toboolean(L, 1);
    if (trusted)
        luaL_openlibs(L);
    else {
        static const luaL_Reg safe[] = {{LUA_GNAME, luaopen_base},
                                        {LUA_TABLIBNAME, luaopen_table},
                                        {LUA_STRLIBNAME, luaopen_string},
                                        {LUA_MATHLIBNAME, luaopen_math},
                                        {LUA_UTF8LIBNAME, luaopen_utf8},
                                        {LUA_COLIBNAME, luaopen_coroutine},
                                        {NULL, NULL}};
        for (const luaL_Reg *r = safe; r->func; r++) {
            luaL_requiref(L, r->name, r->func, 1);
            lua_pop(L, 1);
        }
    }
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_KEYS);
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_PLUGIN_ENVS);
    lb_open_moe(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, REG_MODULE);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "moe");
    if (trusted) {
        luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "moe");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, host_print);
    lua_setglobal(L, "print");
    if (!trusted) {
        /* the top level of an untrusted host is a sandbox too */
        static const char *const drop[] = {"dofile", "loadfile", "require", "load",
                                           "collectgarbage", "getmetatable", NULL};
        for (int i = 0; drop[i]; i++) {
            lua_pushnil(L);
            lua_setglobal(L, drop[i]);
        }
        lua_pushcfunction(L, host_safe_getmetatable);
        lua_setglobal(L, "getmetatable");
        lua_pushcfunction(L, host_safe_collectgarbage);
        lua_setglobal(L, "collectgarbage");
        lua_pushglobaltable(L);
        lua_pushcclosure(L, host_safe_load, 1);
        lua_setglobal(L, "load");
    }
    (void)h;
    return 0;
}

host *host_new(const host_params *params)
{
    host *h = calloc(1, sizeof *h);
    lua_State *L;
    if (!h)
        return NULL;
    h->p = params ? *params : host_default_params();
    h->cur_plugin = -1;
    h->next_handler_id = 1;
    L = lua_newstate(host_alloc, h);
    if (!L) {
        free(h);
        return NULL;
    }
    h->L = L;
    memcpy(lua_getextraspace(L), &h, sizeof h);
    lua_sethook(L, host_hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
    lua_pushcfunction(L, host_open_all);
    lua_pushboolean(L, h->p.trusted);
    if (host_pcall(h, 1, 0, -1, "starting the Lua host") != LUA_OK) {
        host_free(h);
        return NULL;
    }
    return h;
}

void host_free(host *h)
{
    if (!h)
        return;
    if (h->L)
        lua_close(h->L);
    for (int i = 0; i < h->n_plugins; i++) {
        free(h->plugins[i].name);
        free(h->plugins[i].path);
        free(h->plugins[i].error);
    }
    for (int i = 0; i < h->n_disabled_names; i++)
        free(h->disabled_names[i]);
    free(h->disabled_names);
    free(h);
}

lua_State *host_lua(host *h)
{
    return h ? h->L : NULL;
}

void host_set_ui(host *h, const host_ui *ui)
{
    if (ui) {
        h->ui = *ui;
        h->has_ui = true;
    } else {
        memset(&h->ui, 0, sizeof h->ui);
        h->has_ui = false;
    }
}

void host_set_interrupt(host *h, volatile sig_atomic_t *flag)
{
    h->intr = flag;
}

bool host_in_sandbox(const host *h)
{
    return h->cur_plugin >= 0 && !h->p.plugins_unsafe;
}

bool host_headless(const host *h)
{
    return !h->has_ui;
}

/* ---- running code ----------------------------------------------------- */

bool host_run_file(host *h, const char *path, int argc, char **argv)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    int st;
    lua_createtable(L, argc, 1);
    lua_pushstring(L, path);
    lua_rawseti(L, -2, 0);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setglobal(L, "arg");
    st = luaL_loadfilex(L, path, "t");
    if (st != LUA_OK) {
        host_logf(h, MOE_LOG_ERROR, "%s", lua_tostring(L, -1));
        lua_settop(L, top);
        return false;
    }
    luaL_checkstack(L, argc + 1, "script arguments");
    for (int i = 0; i < argc; i++)
        lua_pushstring(L, argv[i]);
    st = host_pcall(h, argc, 0, -1, NULL);
    lua_settop(L, top);
    return st == LUA_OK;
}

bool host_run_string(host *h, const char *code, const char *chunkname)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    int st = luaL_loadbufferx(L, code, strlen(code), chunkname ? chunkname : "=(string)", "t");
    if (st != LUA_OK) {
        host_logf(h, MOE_LOG_ERROR, "%s", lua_tostring(L, -1));
        lua_settop(L, top);
        return false;
    }
    st = host_pcall(h, 0, 0, -1, NULL);
    lua_settop(L, top);
    return st == LUA_OK;
}

bool host_eval(host *h, const char *line, char **out)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    const char *ret = lua_pushfstring(L, "return %s", line);
    int st = luaL_loadbufferx(L, ret, strlen(ret), "=(lua)", "t");
    if (out)
        *out = NULL;
    if (st != LUA_OK) {
        lua_pop(L, 1);
        st = luaL_loadbufferx(L, line, strlen(line), "=(lua)", "t");
    }
    if (st != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        host_logf(h, MOE_LOG_ERROR, "%s", msg);
        if (out)
            *out = host_strdup(msg);
        lua_settop(L, top);
        return false;
    }
    lua_remove(L, -2); /* the "return ..." string */
    st = host_pcall(h, 0, LUA_MULTRET, -1, NULL);
    if (st != LUA_OK) {
        if (out)
            *out = host_strdup("error (see log)");
        lua_settop(L, top);
        return false;
    }
    if (out) {
        luaL_Buffer b;
        const int n = lua_gettop(L) - top;
        luaL_buffinit(L, &b);
        for (int i = 1; i <= n; i++) {
            luaL_tolstring(L, top + i, NULL);
            if (i > 1)
                luaL_addchar(&b, '\t');
            luaL_addvalue(&b);
        }
        luaL_pushresult(&b);
        *out = host_strdup(lua_tostring(L, -1));
    }
    lua_settop(L, top);
    return true;
}

bool host_incomplete(host *h, const char *code)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    bool inc = false;
    /* A line that compiles as an expression ("x", "m:info().n_layer") is
     * complete: the REPL evaluates it as `return <line>`. */
    lua_pushfstring(L, "return %s;", code);
    if (luaL_loadbufferx(L, lua_tostring(L, -1), lua_rawlen(L, -1), "=(lua)", "t") == LUA_OK) {
        lua_settop(L, top);
        return false;
    }
    lua_settop(L, top);
    if (luaL_loadbufferx(L, code, strlen(code), "=(lua)", "t") == LUA_ERRSYNTAX) {
        size_t n;
        const char *msg = lua_tolstring(L, -1, &n);
        inc = msg && n >= 5 && strcmp(msg + n - 5, "<eof>") == 0;
    }
    lua_settop(L, top);
    return inc;
}

/* ---- config and plugins ----------------------------------------------- */

const char *host_config_dir(char *buf, size_t n)
{
    const char *xdg = getenv("XDG_CONFIG_HOME");
    const char *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, n, "%s/moe-studio", xdg);
    else
        snprintf(buf, n, "%s/.config/moe-studio", home && *home ? home : ".");
    return buf;
}

static bool host_is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *host_bundled_plugin_dir(char *buf, size_t n)
{
    const char *env = getenv("MOE_PLUGIN_DIR");
    char exe[PATH_MAX];
    ssize_t len;
    if (env && *env) {
        snprintf(buf, n, "%s", env);
        return buf;
    }
    snprintf(buf, n, "%s/plugins", MOE_PKGDATADIR);
    if (host_is_dir(buf))
        return buf;
    len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len > 0) {
        char *slash;
        exe[len] = '\0';
        slash = strrchr(exe, '/');
        if (slash) {
            *slash = '\0';
            snprintf(buf, n, "%s/plugins", exe);
        }
    }
    return buf;
}

bool host_load_config(host *h, const char *path)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    FILE *f = fopen(path, "r");
    int st;
    if (!f)
        return errno == ENOENT;
    fclose(f);
    st = luaL_loadfilex(L, path, "t");
    if (st != LUA_OK) {
        host_logf(h, MOE_LOG_ERROR, "config: %s", lua_tostring(L, -1));
        lua_settop(L, top);
        return false;
    }
    lua_newtable(L); /* an empty environment: the config only sets variables */
    lua_pushvalue(L, -1);
    lua_setupvalue(L, -3, 1);
    lua_insert(L, -2);
    /* the config is the user's own file but has no business looping */
    {
        const bool on = h->instr_on;
        const int64_t left = h->instr_left;
        h->instr_on = true;
        h->instr_left = 1000000;
        st = host_pcall(h, 0, 0, -1, "config");
        h->instr_on = on;
        h->instr_left = left;
    }
    if (st != LUA_OK) {
        lua_settop(L, top);
        return false;
    }
    lua_getfield(L, -1, "plugins_unsafe");
    if (!lua_isnil(L, -1))
        h->p.plugins_unsafe = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "plugin_instructions");
    if (lua_isnumber(L, -1))
        h->p.plugin_instr_limit = (int64_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, -1, "plugin_memory_mb");
    if (lua_isnumber(L, -1) && lua_tonumber(L, -1) >= 0)
        h->p.plugin_mem_limit = (size_t)(lua_tonumber(L, -1) * 1048576.0);
    lua_pop(L, 1);
    lua_getfield(L, -1, "plugins_disabled");
    if (lua_type(L, -1) == LUA_TTABLE) {
        const lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n && n < 10000; i++) {
            char **nd;
            lua_rawgeti(L, -1, i);
            if (lua_type(L, -1) == LUA_TSTRING &&
                (nd = realloc(h->disabled_names,
                              (size_t)(h->n_disabled_names + 1) * sizeof *nd))) {
                h->disabled_names = nd;
                nd[h->n_disabled_names] = host_strdup(lua_tostring(L, -1));
                if (nd[h->n_disabled_names])
                    h->n_disabled_names++;
            }
            lua_pop(L, 1);
        }
    }
    lua_settop(L, top);
    return true;
}

static int host_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool host_config_disables(const host *h, const char *name)
{
    for (int i = 0; i < h->n_disabled_names; i++)
        if (strcmp(h->disabled_names[i], name) == 0)
            return true;
    return false;
}

/* Load one plugin file; returns true when it ran. */
static bool host_load_plugin(host *h, const char *path, const char *name)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    const int idx = h->n_plugins;
    host_plugin *pl;
    int st;

    if (idx >= HOST_MAX_PLUGINS) {
        host_logf(h, MOE_LOG_ERROR, "plugin %s: too many plugins (%d)", name,
                  HOST_MAX_PLUGINS);
        return false;
    }
    pl = &h->plugins[idx];
    pl->name = host_strdup(name);
    pl->path = host_strdup(path);
    pl->error = host_strdup("");
    pl->enabled = true;
    if (!pl->name || !pl->path || !pl->error) {
        free(pl->name);
        free(pl->path);
        free(pl->error);
        return false;
    }
    h->n_plugins++;
    if (host_config_disables(h, name)) {
        host_plugin_disable(h, idx, "disabled by the config");
        return false;
    }
    st = luaL_loadfilex(L, path, "t");
    if (st != LUA_OK) {
        const char *msg = lua_tostring(L, -1);
        host_logf(h, MOE_LOG_ERROR, "plugin %s: %s", name, msg);
        host_plugin_disable(h, idx, msg);
        lua_settop(L, top);
        return false;
    }
    host_push_env(h, h->p.plugins_unsafe);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_PLUGIN_ENVS);
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, idx + 1);
    lua_pop(L, 1);
    lua_setupvalue(L, -2, 1); /* _ENV */
    st = host_pcall(h, 0, 0, idx, "loading");
    lua_settop(L, top);
    return st == LUA_OK;
}

int host_load_plugins(host *h, const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int ok = 0;
    if (!d)
        return 0;
    while ((e = readdir(d))) {
        const size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0 && e->d_name[0] != '.') {
            if (n == cap) {
                char **nn = realloc(names, (cap ? cap * 2 : 16) * sizeof *nn);
                if (!nn)
                    break;
                names = nn;
                cap = cap ? cap * 2 : 16;
            }
            names[n] = host_strdup(e->d_name);
            if (names[n])
                n++;
        }
    }
    closedir(d);
    if (n)
        qsort(names, n, sizeof *names, host_cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        char name[256];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        snprintf(name, sizeof name, "%.*s", (int)(strlen(names[i]) - 4), names[i]);
        if (host_load_plugin(h, path, name))
            ok++;
        free(names[i]);
    }
    free(names);
    return ok;
}

int host_plugin_count(const host *h)
{
    return h->n_plugins;
}

bool host_plugin_get(const host *h, int i, host_plugin_info *out)
{
    if (i < 0 || i >= h->n_plugins)
        return false;
    out->name = h->plugins[i].name;
    out->path = h->plugins[i].path;
    out->enabled = h->plugins[i].enabled;
    out->error = h->plugins[i].error ? h->plugins[i].error : "";
    return true;
}

void host_plugin_disable(host *h, int i, const char *why)
{
    host_plugin *pl;
    char *e;
    if (i < 0 || i >= h->n_plugins)
        return;
    pl = &h->plugins[i];
    if (pl->enabled)
        host_logf(h, MOE_LOG_WARN, "plugin %s disabled: %s", pl->name, why ? why : "");
    pl->enabled = false;
    e = host_strdup(why ? why : "disabled");
    if (e) {
        free(pl->error);
        pl->error = e;
    }
}

static bool host_owner_enabled(const host *h, int plugin)
{
    return plugin < 0 || (plugin < h->n_plugins && h->plugins[plugin].enabled);
}

/* ---- events ----------------------------------------------------------- */

bool host_has_handlers(host *h, host_event ev)
{
    lua_State *L = h->L;
    bool any;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
    lua_getfield(L, -1, host_event_name(ev));
    any = lua_type(L, -1) == LUA_TTABLE && luaL_len(L, -1) > 0;
    lua_pop(L, 2);
    return any;
}

int host_dispatch(host *h, host_event ev, int nargs)
{
    lua_State *L = h->L;
    const int args = lua_gettop(L) - nargs + 1;
    int ok = 0;
    lua_Integer n;
    luaL_checkstack(L, nargs + 8, "event arguments");
    lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
    lua_getfield(L, -1, host_event_name(ev));
    lua_remove(L, -2);
    if (lua_type(L, -1) != LUA_TTABLE) {
        lua_settop(L, args - 1);
        return 0;
    }
    /* a copy, so handlers may add or remove handlers while we run */
    n = luaL_len(L, -1);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        lua_rawseti(L, -2, i);
    }
    lua_remove(L, -2);
    for (lua_Integer i = 1; i <= n; i++) {
        int plugin;
        char what[64];
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "plugin");
        plugin = (int)lua_tointeger(L, -1);
        lua_pop(L, 1);
        lua_getfield(L, -1, "removed");
        if (lua_toboolean(L, -1) || !host_owner_enabled(h, plugin)) {
            lua_pop(L, 2);
            continue;
        }
        lua_pop(L, 1);
        lua_getfield(L, -1, "fn");
        lua_remove(L, -2);
        for (int a = 0; a < nargs; a++)
            lua_pushvalue(L, args + a);
        snprintf(what, sizeof what, "%s handler", host_event_name(ev));
        if (host_pcall(h, nargs, 0, plugin, what) == LUA_OK)
            ok++;
    }
    lua_settop(L, args - 1);
    return ok;
}

int host_emit_token(host *h, const moe_model *model, int32_t id, int32_t pos)
{
    lua_State *L = h->L;
    size_t len = 0;
    const char *piece = model ? moe_token_piece(model, id, &len) : NULL;
    if (!host_has_handlers(h, HOST_EV_TOKEN))
        return 0;
    lua_pushinteger(L, id);
    lua_pushlstring(L, piece ? piece : "", piece ? len : 0);
    lua_pushinteger(L, pos);
    return host_dispatch(h, HOST_EV_TOKEN, 3);
}

int host_emit_token_text(host *h, int32_t id, const char *piece, size_t len, int32_t pos)
{
    lua_State *L = h->L;
    if (!host_has_handlers(h, HOST_EV_TOKEN))
        return 0;
    lua_pushinteger(L, id);
    lua_pushlstring(L, piece ? piece : "", piece ? len : 0);
    lua_pushinteger(L, pos);
    return host_dispatch(h, HOST_EV_TOKEN, 3);
}

int host_emit_route(host *h, const moe_trace_dims *dims, const moe_trace_token *tok)
{
    if (!host_has_handlers(h, HOST_EV_ROUTE))
        return 0;
    lb_push_trace_entry(h->L, dims, tok);
    return host_dispatch(h, HOST_EV_ROUTE, 1);
}

int host_emit_exit(host *h, int32_t pos, int32_t token, int32_t exit_layer, int32_t n_layer)
{
    lua_State *L = h->L;
    if (!host_has_handlers(h, HOST_EV_EXIT))
        return 0;
    lua_pushinteger(L, pos);
    lua_pushinteger(L, token);
    lua_pushinteger(L, exit_layer);
    lua_pushinteger(L, n_layer);
    return host_dispatch(h, HOST_EV_EXIT, 4);
}

int host_emit_step(host *h, const char *what, int64_t i, const char *info)
{
    lua_State *L = h->L;
    if (!host_has_handlers(h, HOST_EV_STEP))
        return 0;
    lua_pushstring(L, what ? what : "");
    lua_pushinteger(L, (lua_Integer)i);
    if (info)
        lua_pushstring(L, info);
    else
        lua_pushnil(L);
    return host_dispatch(h, HOST_EV_STEP, 3);
}

int host_emit_session(host *h, const char *action, const char *path)
{
    lua_State *L = h->L;
    if (!host_has_handlers(h, HOST_EV_SESSION))
        return 0;
    lua_pushstring(L, action ? action : "");
    lua_pushstring(L, path ? path : "");
    return host_dispatch(h, HOST_EV_SESSION, 2);
}

static int host_event_arg(lua_State *L, int idx)
{
    const char *name = luaL_checkstring(L, idx);
    for (int e = 0; e < HOST_EV_COUNT; e++)
        if (strcmp(name, host_event_names[e]) == 0 ||
            strcmp(name, host_event_names[e] + 3) == 0)
            return e;
    return luaL_argerror(L, idx,
                         lua_pushfstring(L, "unknown event '%s' (on_token, on_route, on_exit, "
                                            "on_step, on_session)", name));
}

/* moe.on(event, fn) -> id */
static int lb_on(lua_State *L)
{
    host *h = lb_host(L);
    const int ev = host_event_arg(L, 1);
    const int id = h->next_handler_id++;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
    if (lua_getfield(L, -1, host_event_names[ev]) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, host_event_names[ev]);
    }
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "fn");
    lua_pushinteger(L, h->cur_plugin);
    lua_setfield(L, -2, "plugin");
    lua_pushinteger(L, id);
    lua_setfield(L, -2, "id");
    lua_rawseti(L, -2, luaL_len(L, -2) + 1);
    lua_pushinteger(L, id);
    return 1;
}

/* moe.off(id) -> true when a handler was removed */
static int lb_off(lua_State *L)
{
    const lua_Integer id = luaL_checkinteger(L, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_HANDLERS);
    for (int e = 0; e < HOST_EV_COUNT; e++) {
        lua_Integer n;
        if (lua_getfield(L, -1, host_event_names[e]) != LUA_TTABLE) {
            lua_pop(L, 1);
            continue;
        }
        n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_Integer hid;
            lua_rawgeti(L, -1, i);
            lua_getfield(L, -1, "id");
            hid = lua_tointeger(L, -1);
            lua_pop(L, 1);
            if (hid == id) {
                lua_pushboolean(L, 1);
                lua_setfield(L, -2, "removed");
                lua_pop(L, 1);
                for (lua_Integer j = i; j < n; j++) {
                    lua_rawgeti(L, -1, j + 1);
                    lua_rawseti(L, -2, j);
                }
                lua_pushnil(L);
                lua_rawseti(L, -2, n);
                lua_pushboolean(L, 1);
                return 1;
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pushboolean(L, 0);
    return 1;
}

/* moe.emit(event, ...) -> handlers that ran without error */
static int lb_emit(lua_State *L)
{
    host *h = lb_host(L);
    const int ev = host_event_arg(L, 1);
    const int nargs = lua_gettop(L) - 1;
    lua_pushinteger(L, host_dispatch(h, (host_event)ev, nargs));
    return 1;
}

static int lb_level_arg(lua_State *L, int idx, moe_log_level def)
{
    static const char *const names[] = {"debug", "info", "warn", "error", NULL};
    if (lua_isnoneornil(L, idx))
        return (int)def;
    return luaL_checkoption(L, idx, NULL, names);
}

static const char *lb_level_name(moe_log_level l)
{
    static const char *const names[MOE_LOG_COUNT] = {
        [MOE_LOG_DEBUG] = "debug", [MOE_LOG_INFO] = "info", [MOE_LOG_WARN] = "warn",
        [MOE_LOG_ERROR] = "error"};
    return l < MOE_LOG_COUNT ? names[l] : "?";
}

/* moe.log(msg [, level]) */
static int lb_log(lua_State *L)
{
    host *h = lb_host(L);
    const char *msg = luaL_checkstring(L, 1);
    const moe_log_level lvl = (moe_log_level)lb_level_arg(L, 2, MOE_LOG_INFO);
    host_logf(h, lvl, "%s", msg);
    return 0;
}

/* moe.plugins() -> list of {name, path, enabled, error} */
static int lb_plugins(lua_State *L)
{
    host *h = lb_host(L);
    lua_createtable(L, h->n_plugins, 0);
    for (int i = 0; i < h->n_plugins; i++) {
        lua_createtable(L, 0, 4);
        lua_pushstring(L, h->plugins[i].name);
        lua_setfield(L, -2, "name");
        lua_pushstring(L, h->plugins[i].path);
        lua_setfield(L, -2, "path");
        lua_pushboolean(L, h->plugins[i].enabled);
        lua_setfield(L, -2, "enabled");
        lua_pushstring(L, h->plugins[i].error ? h->plugins[i].error : "");
        lua_setfield(L, -2, "error");
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* moe.limits() -> {mem_used, mem_limit, plugin_instructions, plugin_memory,
 * sandboxed, plugin} (what applies to the calling code) */
static int lb_limits(lua_State *L)
{
    host *h = lb_host(L);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, (lua_Integer)h->mem_used);
    lua_setfield(L, -2, "mem_used");
    lua_pushinteger(L, (lua_Integer)h->p.mem_limit);
    lua_setfield(L, -2, "mem_limit");
    lua_pushinteger(L, (lua_Integer)h->p.plugin_instr_limit);
    lua_setfield(L, -2, "plugin_instructions");
    lua_pushinteger(L, (lua_Integer)h->p.plugin_mem_limit);
    lua_setfield(L, -2, "plugin_memory");
    lua_pushboolean(L, !h->p.plugins_unsafe);
    lua_setfield(L, -2, "sandboxed");
    if (h->cur_plugin >= 0)
        lua_pushstring(L, h->plugins[h->cur_plugin].name);
    else
        lua_pushnil(L);
    lua_setfield(L, -2, "plugin");
    return 1;
}

/* ---- UI registry ------------------------------------------------------ */

/* moe.ui.command(name, fn [, help]) */
static int lb_ui_command(lua_State *L)
{
    host *h = lb_host(L);
    const char *name = luaL_checkstring(L, 1);
    const char *help = luaL_optstring(L, 3, "");
    lua_Integer n, slot;
    luaL_checktype(L, 2, LUA_TFUNCTION);
    luaL_argcheck(L, name[0] && !strpbrk(name, " \t\n"), 1, "a command name is one word");
    lua_getfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    n = luaL_len(L, -1);
    slot = n + 1;
    for (lua_Integer i = 1; i <= n; i++) { /* same name: replace */
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        if (strcmp(lua_tostring(L, -1), name) == 0)
            slot = i;
        lua_pop(L, 2);
    }
    lua_createtable(L, 0, 4);
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, help);
    lua_setfield(L, -2, "help");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "fn");
    lua_pushinteger(L, h->cur_plugin);
    lua_setfield(L, -2, "plugin");
    lua_rawseti(L, -2, slot);
    if (h->has_ui && h->ui.command_added)
        h->ui.command_added(h->ui.ud, name, help);
    return 0;
}

/* moe.ui.bind(key, fn [, help]) */
static int lb_ui_bind(lua_State *L)
{
    host *h = lb_host(L);
    const char *key = luaL_checkstring(L, 1);
    const char *help = luaL_optstring(L, 3, "");
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_getfield(L, LUA_REGISTRYINDEX, REG_KEYS);
    lua_createtable(L, 0, 3);
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "fn");
    lua_pushstring(L, help);
    lua_setfield(L, -2, "help");
    lua_pushinteger(L, h->cur_plugin);
    lua_setfield(L, -2, "plugin");
    lua_setfield(L, -2, key);
    if (h->has_ui && h->ui.key_bound)
        h->ui.key_bound(h->ui.ud, key, help);
    return 0;
}

/* moe.ui.pane(title, text) -> id */
static int lb_ui_pane(lua_State *L)
{
    host *h = lb_host(L);
    const char *title = luaL_checkstring(L, 1);
    const char *text = luaL_optstring(L, 2, "");
    static int headless_ids;
    if (h->has_ui && h->ui.pane_open) {
        lua_pushinteger(L, h->ui.pane_open(h->ui.ud, title, text));
        return 1;
    }
    printf("== %s ==\n%s%s", title, text, text[0] && text[strlen(text) - 1] != '\n' ? "\n" : "");
    fflush(stdout);
    lua_pushinteger(L, ++headless_ids);
    return 1;
}

/* moe.ui.pane_set(id, text) */
static int lb_ui_pane_set(lua_State *L)
{
    host *h = lb_host(L);
    const int id = (int)luaL_checkinteger(L, 1);
    const char *text = luaL_checkstring(L, 2);
    if (h->has_ui && h->ui.pane_set) {
        h->ui.pane_set(h->ui.ud, id, text);
        return 0;
    }
    printf("== pane %d ==\n%s%s", id, text, text[0] && text[strlen(text) - 1] != '\n' ? "\n" : "");
    fflush(stdout);
    return 0;
}

/* moe.ui.notify(msg [, level]) */
static int lb_ui_notify(lua_State *L)
{
    host *h = lb_host(L);
    const char *msg = luaL_checkstring(L, 1);
    const moe_log_level lvl = (moe_log_level)lb_level_arg(L, 2, MOE_LOG_INFO);
    if (h->has_ui && h->ui.notify) {
        h->ui.notify(h->ui.ud, lvl, msg);
        return 0;
    }
    printf("[%s] %s\n", lb_level_name(lvl), msg);
    fflush(stdout);
    return 0;
}

/* moe.ui.progress(label, frac) */
static int lb_ui_progress(lua_State *L)
{
    host *h = lb_host(L);
    const char *label = luaL_checkstring(L, 1);
    const double frac = luaL_checknumber(L, 2);
    if (h->has_ui && h->ui.progress)
        h->ui.progress(h->ui.ud, label, frac);
    return 0;
}

/* Push the command record named name; false (nothing pushed) if none. */
static bool host_find_command(host *h, const char *name)
{
    lua_State *L = h->L;
    lua_Integer n;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    n = luaL_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_getfield(L, -1, "name");
        if (strcmp(lua_tostring(L, -1), name) == 0) {
            lua_pop(L, 1);
            lua_remove(L, -2);
            return true;
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    return false;
}

int host_command_count(host *h)
{
    lua_State *L = h->L;
    lua_Integer n;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    n = luaL_len(L, -1);
    lua_pop(L, 1);
    return (int)n;
}

bool host_command_get(host *h, int i, const char **name, const char **help)
{
    lua_State *L = h->L;
    bool ok = false;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    if (lua_rawgeti(L, -1, i + 1) == LUA_TTABLE) {
        /* the strings stay alive: the record holds them */
        lua_getfield(L, -1, "name");
        if (name)
            *name = lua_tostring(L, -1);
        lua_getfield(L, -2, "help");
        if (help)
            *help = lua_tostring(L, -1);
        lua_pop(L, 2);
        ok = true;
    }
    lua_pop(L, 2);
    return ok;
}

/* Call the record on top ({fn, plugin}) with nargs arguments above it. */
static bool host_call_record(host *h, int nargs, const char *what)
{
    lua_State *L = h->L;
    const int rec = lua_gettop(L) - nargs;
    int plugin;
    lua_getfield(L, rec, "plugin");
    plugin = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (!host_owner_enabled(h, plugin)) {
        lua_settop(L, rec - 1);
        return false;
    }
    lua_getfield(L, rec, "fn");
    lua_replace(L, rec);
    return host_pcall(h, nargs, 0, plugin, what) == LUA_OK;
}

bool host_run_command(host *h, const char *name, const char *args)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    char what[96];
    bool ok;
    if (!host_find_command(h, name)) {
        host_logf(h, MOE_LOG_WARN, "unknown command '%s'", name);
        return false;
    }
    lua_pushstring(L, args ? args : "");
    snprintf(what, sizeof what, "command %s", name);
    ok = host_call_record(h, 1, what);
    lua_settop(L, top);
    return ok;
}

bool host_run_key(host *h, const char *key)
{
    lua_State *L = h->L;
    const int top = lua_gettop(L);
    char what[96];
    bool ok;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_KEYS);
    if (lua_getfield(L, -1, key) != LUA_TTABLE) {
        lua_settop(L, top);
        return false;
    }
    lua_remove(L, -2);
    lua_pushstring(L, key);
    snprintf(what, sizeof what, "key %s", key);
    ok = host_call_record(h, 1, what);
    lua_settop(L, top);
    return ok;
}

/* moe.ui.run(name [, args]) -> true | nil, msg  (runs a registered command) */
static int lb_ui_run(lua_State *L)
{
    host *h = lb_host(L);
    const char *name = luaL_checkstring(L, 1);
    const char *args = luaL_optstring(L, 2, "");
    if (!host_find_command(h, name)) {
        lua_pushnil(L);
        lua_pushfstring(L, "unknown command '%s'", name);
        return 2;
    }
    lua_pushstring(L, args);
    if (!host_call_record(h, 1, name)) {
        lua_pushnil(L);
        lua_pushfstring(L, "command '%s' failed", name);
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

/* moe.ui.press(key) -> true when a handler ran */
static int lb_ui_press(lua_State *L)
{
    host *h = lb_host(L);
    lua_pushboolean(L, host_run_key(h, luaL_checkstring(L, 1)));
    return 1;
}

/* moe.ui.commands() -> list of {name, help} */
static int lb_ui_commands(lua_State *L)
{
    lua_Integer n;
    lua_getfield(L, LUA_REGISTRYINDEX, REG_COMMANDS);
    n = luaL_len(L, -1);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -2, i);
        lua_createtable(L, 0, 2);
        lua_getfield(L, -2, "name");
        lua_setfield(L, -2, "name");
        lua_getfield(L, -2, "help");
        lua_setfield(L, -2, "help");
        lua_rawseti(L, -3, i);
        lua_pop(L, 1);
    }
    return 1;
}

static int lb_ui_headless(lua_State *L)
{
    lua_pushboolean(L, host_headless(lb_host(L)));
    return 1;
}

/* Session files are files: refused where there is no io (plugins unless
 * plugins_unsafe, and the top level of an untrusted host). */
static bool lb_session_refused(const host *h)
{
    return host_in_sandbox(h) || !h->p.trusted;
}

static int lb_session_sandboxed(lua_State *L)
{
    lua_pushnil(L);
    lua_pushstring(L, "session files are not available to sandboxed plugins "
                      "(plugins_unsafe = true in config.lua allows them)");
    return 2;
}

/* moe.session_export(path) / moe.session_import(path) in the studio (its
 * document) -> true | nil, msg. Headless (or with a Context first):
 * moe.session_export(ctx, path [, opts]) -> n_records | nil, msg (the
 * engine writes the context's trace); moe.session_import(path) -> table. */
static int lb_session(lua_State *L, const char *action)
{
    host *h = lb_host(L);
    const bool with_ctx = !strcmp(action, "export") && luaL_testudata(L, 1, LB_CTX);
    const char *path = luaL_checkstring(L, with_ctx ? 2 : 1);
    char err[512];
    int nret;
    err[0] = '\0';
    if (lb_session_refused(h))
        return lb_session_sandboxed(L);
    if (with_ctx) {
        nret = lb_session_export_ctx(L, 1, path, lua_isnoneornil(L, 3) ? 0 : 3);
        if (lua_isnil(L, -nret))
            return nret;
        host_emit_session(h, action, path);
        return nret;
    }
    if (!h->has_ui || !h->ui.session) {
        if (!strcmp(action, "import")) {
            nret = lb_session_push_file(L, path);
            if (!lua_isnil(L, -nret))
                host_emit_session(h, action, path);
            return nret;
        }
        lua_pushnil(L);
        lua_pushstring(L, "headless, export a context: moe.session_export(ctx, path)");
        return 2;
    }
    if (!h->ui.session(h->ui.ud, action, path, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err[0] ? err : "session failed");
        return 2;
    }
    host_emit_session(h, action, path);
    lua_pushboolean(L, 1);
    return 1;
}

static int lb_session_export(lua_State *L)
{
    return lb_session(L, "export");
}

static int lb_session_import(lua_State *L)
{
    return lb_session(L, "import");
}

/* moe.session_read(path) -> table | nil, msg (studio or headless) */
static int lb_session_read(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    if (lb_session_refused(lb_host(L)))
        return lb_session_sandboxed(L);
    return lb_session_push_file(L, path);
}

void lb_host_register(lua_State *L, int mod)
{
    static const luaL_Reg fns[] = {
        {"on", lb_on}, {"off", lb_off}, {"emit", lb_emit}, {"log", lb_log},
        {"plugins", lb_plugins}, {"limits", lb_limits},
        {"session_export", lb_session_export}, {"session_import", lb_session_import},
        {"session_read", lb_session_read}, {NULL, NULL}};
    static const luaL_Reg ui[] = {
        {"command", lb_ui_command}, {"bind", lb_ui_bind}, {"pane", lb_ui_pane},
        {"pane_set", lb_ui_pane_set}, {"notify", lb_ui_notify},
        {"progress", lb_ui_progress}, {"run", lb_ui_run}, {"press", lb_ui_press},
        {"commands", lb_ui_commands}, {"headless", lb_ui_headless}, {NULL, NULL}};
    mod = lua_absindex(L, mod);
    lua_pushvalue(L, mod);
    luaL_setfuncs(L, fns, 0);
    lua_pop(L, 1);
    luaL_newlib(L, ui);
    lua_setfield(L, mod, "ui");
}
