/*
 * gen_cmd.c - the engine-side studio commands, run on the thread that owns
 * the tui_gen (the worker): `set` (sampler options), `route` (router
 * steering and capacity of moe.h), `exit` (early-exit criterion) and
 * `bricks`. Each writes one line of result. No curses.
 */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "studio.h"

static bool gc_fail(char *m, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static bool gc_fail(char *m, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, n, fmt, ap);
    va_end(ap);
    return false;
}

static bool gc_int(const char *s, long lo, long hi, int32_t *out)
{
    char *end;
    long v;
    if (!s || !*s)
        return false;
    v = strtol(s, &end, 10);
    if (*end || v < lo || v > hi)
        return false;
    *out = (int32_t)v;
    return true;
}

static bool gc_float(const char *s, double lo, double hi, float *out)
{
    char *end;
    double v;
    if (!s || !*s)
        return false;
    v = strtod(s, &end);
    if (*end || !(v >= lo && v <= hi))
        return false;
    *out = (float)v;
    return true;
}

/* ---- set ---------------------------------------------------------------- */

static void gc_settings_line(const tui_gen *g, char *m, size_t n)
{
    const moe_sampler_params *p = &g->set.sp;
    snprintf(m, n,
             "temp=%g top_k=%d top_p=%g min_p=%g typical=%g repeat_penalty=%g "
             "repeat_last_n=%d freq_penalty=%g presence_penalty=%g seed=%llu n=%d exit=%s",
             (double)p->temp, (int)p->top_k, (double)p->top_p, (double)p->min_p,
             (double)p->typical_p, (double)p->repeat_penalty, (int)p->penalty_last_n,
             (double)p->freq_penalty, (double)p->presence_penalty,
             (unsigned long long)p->seed, (int)g->set.n_predict,
             g->set.exit_spec ? g->set.exit_spec : "none");
}

static bool gc_set_one(tui_gen *g, moe_sampler_params *p, const char *k, const char *v,
                       char *m, size_t n)
{
    int32_t iv;
    if (!v)
        return gc_fail(m, n, "set %s: missing value (set %s=VALUE)", k, k);
    if (!strcmp(k, "temp")) {
        if (!gc_float(v, 0, 1e6, &p->temp))
            return gc_fail(m, n, "set temp: '%s' is not a number >= 0", v);
    } else if (!strcmp(k, "top_k")) {
        if (!gc_int(v, 0, 1 << 30, &p->top_k))
            return gc_fail(m, n, "set top_k: '%s' is not an integer >= 0", v);
    } else if (!strcmp(k, "top_p")) {
        if (!gc_float(v, 0, 1, &p->top_p))
            return gc_fail(m, n, "set top_p: '%s' is not in [0, 1]", v);
    } else if (!strcmp(k, "min_p")) {
        if (!gc_float(v, 0, 1, &p->min_p))
            return gc_fail(m, n, "set min_p: '%s' is not in [0, 1]", v);
    } else if (!strcmp(k, "typical")) {
        if (!gc_float(v, 0, 1, &p->typical_p))
            return gc_fail(m, n, "set typical: '%s' is not in [0, 1]", v);
    } else if (!strcmp(k, "repeat_penalty")) {
        if (!gc_float(v, 0, 1e6, &p->repeat_penalty))
            return gc_fail(m, n, "set repeat_penalty: '%s' is not a number >= 0", v);
    } else if (!strcmp(k, "repeat_last_n")) {
        if (!gc_int(v, 0, 1 << 24, &p->penalty_last_n))
            return gc_fail(m, n, "set repeat_last_n: '%s' is not an integer >= 0", v);
    } else if (!strcmp(k, "freq_penalty")) {
        if (!gc_float(v, -1e6, 1e6, &p->freq_penalty))
            return gc_fail(m, n, "set freq_penalty: '%s' is not a number", v);
    } else if (!strcmp(k, "presence_penalty")) {
        if (!gc_float(v, -1e6, 1e6, &p->presence_penalty))
            return gc_fail(m, n, "set presence_penalty: '%s' is not a number", v);
    } else if (!strcmp(k, "seed")) {
        char *end;
        unsigned long long s = strtoull(v, &end, 10);
        if (!*v || *end)
            return gc_fail(m, n, "set seed: '%s' is not an unsigned integer", v);
        p->seed = s;
    } else if (!strcmp(k, "order")) {
        if (moe_sampler_parse_order(v, p) != MOE_OK)
            return gc_fail(m, n, "set order: %s", moe_last_error());
    } else if (!strcmp(k, "n")) {
        if (!gc_int(v, 1, 1 << 20, &iv))
            return gc_fail(m, n, "set n: '%s' is not an integer >= 1", v);
        g->set.n_predict = iv;
    } else {
        return gc_fail(m, n,
                       "set: unknown option '%s' (temp top_k top_p min_p typical "
                       "repeat_penalty repeat_last_n freq_penalty presence_penalty seed order n)",
                       k);
    }
    return true;
}

static bool gc_set(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    moe_sampler_params p = g->set.sp;
    int32_t old_n = g->set.n_predict;
    moe_sampler *smp = NULL;
    for (int i = 1; i < argc; i++) {
        char key[64], *eq = strchr(argv[i], '=');
        const char *val;
        if (eq) {
            snprintf(key, sizeof key, "%.*s", (int)(eq - argv[i]), argv[i]);
            val = eq + 1;
        } else {
            snprintf(key, sizeof key, "%s", argv[i]);
            val = i + 1 < argc ? argv[++i] : NULL;
        }
        if (!gc_set_one(g, &p, key, val, m, n)) {
            g->set.n_predict = old_n;
            return false;
        }
    }
    if (g->model && memcmp(&p, &g->set.sp, sizeof p) != 0) {
        moe_model_info info;
        moe_model_get_info(g->model, &info);
        if (moe_sampler_new(&p, info.n_vocab, &smp) != MOE_OK) {
            g->set.n_predict = old_n;
            return gc_fail(m, n, "set: %s", moe_last_error());
        }
        moe_sampler_free(g->smp);
        g->smp = smp;
    }
    g->set.sp = p;
    gc_settings_line(g, m, n);
    return true;
}

/* ---- route -------------------------------------------------------------- */

static bool gc_route_log(tui_gen *g, int argc, char **argv)
{
    char buf[256];
    size_t off = 0;
    char **r;
    buf[0] = '\0';
    for (int i = 0; i < argc && off < sizeof buf; i++)
        off += (size_t)snprintf(buf + off, sizeof buf - off, "%s%s", i ? " " : "", argv[i]);
    r = realloc(g->set.route, (size_t)(g->set.n_route + 1) * sizeof *r);
    if (!r)
        return false;
    g->set.route = r;
    r[g->set.n_route] = strdup(buf);
    if (r[g->set.n_route])
        g->set.n_route++;
    return true;
}

static void gc_route_show(tui_gen *g, char *m, size_t n)
{
    moe_capacity_params cap;
    moe_route_counters c;
    size_t off = 0;
    int32_t nl = g->dims.n_layer;
    off += (size_t)snprintf(m + off, n - off, "top-k per layer:");
    for (int32_t il = 0; il < nl && off < n; il++)
        off += (size_t)snprintf(m + off, n - off, " %d", (int)moe_route_get_top_k(g->ctx, il));
    if (moe_route_get_capacity(g->ctx, &cap) == MOE_OK && off < n)
        off += (size_t)snprintf(m + off, n - off, "; capacity %g", (double)cap.capacity_factor);
    moe_route_get_counters(g->ctx, &c);
    if (off < n)
        off += (size_t)snprintf(m + off, n - off, "; routed %lld dropped %lld; %d rules",
                                (long long)c.routed, (long long)c.dropped, (int)g->set.n_route);
}

static bool gc_layer_arg(tui_gen *g, int argc, char **argv, int at, int32_t *layer, char *m,
                         size_t n)
{
    *layer = -1;
    if (argc <= at)
        return true;
    if (!gc_int(argv[at], -1, g->dims.n_layer - 1, layer))
        return gc_fail(m, n, "route %s: layer '%s' is not in -1..%d", argv[1], argv[at],
                       g->dims.n_layer - 1);
    return true;
}

static bool gc_route(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    const char *sub = argc > 1 ? argv[1] : "show";
    int32_t layer = -1, e = 0, k = 0;
    float x = 0;
    moe_status st;
    if (g->dims.n_expert <= 0)
        return gc_fail(m, n, "route: the model is dense (no router to steer)");
    if (!strcmp(sub, "show")) {
        gc_route_show(g, m, n);
        return true;
    }
    if (!strcmp(sub, "reset")) {
        moe_route_reset(g->ctx);
        moe_route_reset_counters(g->ctx);
        tui_gen_clear_route(g);
        snprintf(m, n, "route: steering and capacity off");
        return true;
    }
    if (!strcmp(sub, "topk") || !strcmp(sub, "top_k")) {
        if (argc < 3 || !gc_int(argv[2], 0, g->dims.n_expert, &k))
            return gc_fail(m, n, "usage: route topk K [LAYER] (K in 0..%d)", g->dims.n_expert);
        if (!gc_layer_arg(g, argc, argv, 3, &layer, m, n))
            return false;
        st = moe_route_set_top_k(g->ctx, layer, k);
    } else if (!strcmp(sub, "temp")) {
        if (argc < 3 || !gc_float(argv[2], 1e-6, 1e6, &x))
            return gc_fail(m, n, "usage: route temp T [LAYER] (T > 0)");
        if (!gc_layer_arg(g, argc, argv, 3, &layer, m, n))
            return false;
        st = moe_route_set_temperature(g->ctx, layer, x);
    } else if (!strcmp(sub, "ban") || !strcmp(sub, "unban") || !strcmp(sub, "force") ||
               !strcmp(sub, "unforce")) {
        bool on = sub[0] != 'u';
        if (argc < 3 || !gc_int(argv[2], 0, g->dims.n_expert - 1, &e))
            return gc_fail(m, n, "usage: route %s EXPERT [LAYER] (EXPERT in 0..%d)", sub,
                           g->dims.n_expert - 1);
        if (!gc_layer_arg(g, argc, argv, 3, &layer, m, n))
            return false;
        st = strstr(sub, "ban") ? moe_route_ban(g->ctx, layer, e, on)
                                : moe_route_force(g->ctx, layer, e, on);
    } else if (!strcmp(sub, "scale")) {
        if (argc < 4 || !gc_int(argv[2], 0, g->dims.n_expert - 1, &e) ||
            !gc_float(argv[3], -1e6, 1e6, &x))
            return gc_fail(m, n, "usage: route scale EXPERT S [LAYER]");
        if (!gc_layer_arg(g, argc, argv, 4, &layer, m, n))
            return false;
        st = moe_route_set_scale(g->ctx, layer, e, x);
    } else if (!strcmp(sub, "capacity")) {
        moe_capacity_params cp = {.capacity_factor = 0, .drop = MOE_DROP_POSITION,
                                  .n_devices = 1, .rectify = MOE_RECTIFY_NONE};
        if (argc < 3 || !gc_float(argv[2], 0, 1e6, &cp.capacity_factor))
            return gc_fail(m, n, "usage: route capacity CF [position|score] [devices=D] "
                                 "[rectify=none|ir|fr|both]");
        for (int i = 3; i < argc; i++) {
            if (!strcmp(argv[i], "position"))
                cp.drop = MOE_DROP_POSITION;
            else if (!strcmp(argv[i], "score"))
                cp.drop = MOE_DROP_SCORE;
            else if (!strncmp(argv[i], "devices=", 8) &&
                     gc_int(argv[i] + 8, 1, g->dims.n_expert, &cp.n_devices))
                ;
            else if (!strcmp(argv[i], "rectify=none"))
                cp.rectify = MOE_RECTIFY_NONE;
            else if (!strcmp(argv[i], "rectify=ir"))
                cp.rectify = MOE_RECTIFY_IR;
            else if (!strcmp(argv[i], "rectify=fr"))
                cp.rectify = MOE_RECTIFY_FR;
            else if (!strcmp(argv[i], "rectify=both"))
                cp.rectify = MOE_RECTIFY_BOTH;
            else
                return gc_fail(m, n, "route capacity: unknown option '%s'", argv[i]);
        }
        st = moe_route_set_capacity(g->ctx, &cp);
    } else {
        return gc_fail(m, n, "route: unknown subcommand '%s' (show reset topk temp ban unban "
                             "force unforce scale capacity)", sub);
    }
    if (st != MOE_OK)
        return gc_fail(m, n, "route %s: %s", sub, moe_last_error());
    gc_route_log(g, argc - 1, argv + 1);
    snprintf(m, n, "route %s: ok (from the next token on)", sub);
    return true;
}

/* ---- exit --------------------------------------------------------------- */

static bool gc_exit(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    moe_exit_stats es;
    char *spec;
    if (argc < 2) {
        moe_ctx_exit_stats(g->ctx, &es);
        snprintf(m, n, "exit %s: %lld tokens, mean exit layer %.3f, layers saved %.1f%%",
                 g->set.exit_spec ? g->set.exit_spec : "none", (long long)es.n_tokens,
                 es.n_tokens ? (double)es.layers_run / es.n_tokens - 1.0 : 0.0,
                 es.layers_total ? 100.0 * (1.0 - (double)es.layers_run / es.layers_total)
                                 : 0.0);
        return true;
    }
    if (moe_ctx_set_exit_spec(g->ctx, argv[1]) != MOE_OK)
        return gc_fail(m, n, "exit %s: %s", argv[1], moe_last_error());
    spec = strdup(argv[1]);
    if (spec) {
        free(g->set.exit_spec);
        g->set.exit_spec = spec;
    }
    moe_ctx_exit_reset_stats(g->ctx);
    snprintf(m, n, "exit: criterion %s from the next token on", argv[1]);
    return true;
}

/* ---- bricks ------------------------------------------------------------- */

/* "3,5,7" into ids (at most max); returns the count or -1. */
static int gc_ids(const char *s, int32_t *ids, int max)
{
    int n = 0;
    char *end;
    while (*s && n < max) {
        long v = strtol(s, &end, 10);
        if (end == s || v < 0 || v > 1 << 20)
            return -1;
        ids[n++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static bool gc_bricks_list(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    int32_t nb = moe_model_n_bricks(g->model), count[MOE_BRICK_KIND_COUNT] = {0};
    size_t off = 0;
    const char *filter = argc > 2 ? argv[2] : NULL;
    for (int32_t i = 0; i < nb; i++) {
        moe_brick b;
        if (moe_model_brick(g->model, i, &b) != MOE_OK)
            continue;
        if (filter) {
            if (strncmp(b.name, filter, strlen(filter)) == 0 && off < n)
                off += (size_t)snprintf(m + off, n - off, "%s%s(%lld)", off ? " " : "", b.name,
                                        (long long)b.n_params);
        } else if (b.kind >= 0 && b.kind < MOE_BRICK_KIND_COUNT) {
            count[b.kind]++;
        }
    }
    if (filter) {
        if (off == 0)
            snprintf(m, n, "bricks: none named %s*", filter);
        return true;
    }
    off = (size_t)snprintf(m, n, "%d bricks:", (int)nb);
    for (int k = 0; k < MOE_BRICK_KIND_COUNT && off < n; k++)
        off += (size_t)snprintf(m + off, n - off, " %d %s", (int)count[k],
                                moe_brick_kind_name((moe_brick_kind)k));
    if (off < n)
        snprintf(m + off, n - off, " (bricks list blk.N for names)");
    return true;
}

static bool gc_bricks(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    const char *sub = argc > 1 ? argv[1] : "list";
    moe_model_info info;
    moe_bricks *b = NULL;
    moe_status st = MOE_OK;
    int32_t ids[64], nid = 0, l0, l1;
    const char *out;
    moe_model_get_info(g->model, &info);
    if (!strcmp(sub, "list"))
        return gc_bricks_list(g, argc, argv, m, n);
    if (!strcmp(sub, "emoe")) {
        moe_emoe_params ep = moe_emoe_default_params();
        moe_emoe_report rep;
        if (argc != 5 || !gc_int(argv[2], 1, 1 << 20, &ep.n_expert) ||
            !gc_int(argv[3], 1, 1 << 20, &ep.n_expert_used))
            return gc_fail(m, n, "usage: bricks emoe N K OUT.gguf (split the dense FFNs)");
        st = moe_emoe_convert(info.path, argv[4], &ep, &rep);
        if (st != MOE_OK)
            return gc_fail(m, n, "bricks emoe: %s", moe_last_error());
        snprintf(m, n, "bricks emoe: %d layers into %d experts (top-%d), mean cos %.3f -> %s "
                       "(:load it)", (int)rep.n_converted, (int)ep.n_expert,
                 (int)ep.n_expert_used, rep.mean_cos, argv[4]);
        return true;
    }
    if (strcmp(sub, "merge") && strcmp(sub, "prune") && strcmp(sub, "grow"))
        return gc_fail(m, n, "bricks: unknown subcommand '%s' (list [blk.N] | merge L|all "
                             "E,E.. OUT | prune L|all E,E.. OUT | grow L|all E NOISE OUT | "
                             "emoe N K OUT)", sub);
    if (info.n_expert <= 0)
        return gc_fail(m, n, "bricks %s: the model has no experts", sub);
    if (argc < 5 || (!strcmp(sub, "grow") && argc < 6))
        return gc_fail(m, n, "usage: bricks %s LAYER|all %s OUT.gguf", sub,
                       !strcmp(sub, "grow") ? "EXPERT NOISE" : "E,E,...");
    if (!strcmp(argv[2], "all")) {
        l0 = 0;
        l1 = info.n_layer - 1;
    } else if (gc_int(argv[2], 0, info.n_layer - 1, &l0)) {
        l1 = l0;
    } else {
        return gc_fail(m, n, "bricks %s: layer '%s' is not all or 0..%d", sub, argv[2],
                       info.n_layer - 1);
    }
    nid = gc_ids(argv[3], ids, 64);
    if (nid < 1)
        return gc_fail(m, n, "bricks %s: '%s' is not a list of expert ids", sub, argv[3]);
    out = argv[argc - 1];
    st = moe_bricks_open(info.path, &b);
    for (int32_t il = l0; st == MOE_OK && il <= l1; il++) {
        if (moe_bricks_n_expert(b, il) == 0)
            continue;
        if (!strcmp(sub, "merge"))
            st = moe_bricks_merge(b, il, ids, NULL, nid);
        else if (!strcmp(sub, "prune"))
            st = moe_bricks_prune(b, il, ids, nid);
        else {
            float noise = 0;
            if (!gc_float(argv[4], 0, 1e3, &noise)) {
                moe_bricks_free(b);
                return gc_fail(m, n, "bricks grow: noise '%s' is not a number >= 0", argv[4]);
            }
            st = moe_bricks_grow(b, il, ids[0], noise, g->set.sp.seed + (uint64_t)il);
        }
    }
    if (st == MOE_OK)
        st = moe_bricks_save(b, out);
    moe_bricks_free(b);
    if (st != MOE_OK)
        return gc_fail(m, n, "bricks %s: %s", sub, moe_last_error());
    snprintf(m, n, "bricks %s: wrote %s (:load it to use it)", sub, out);
    return true;
}

bool tui_gen_command(tui_gen *g, int argc, char **argv, char *m, size_t n)
{
    if (argc < 1)
        return gc_fail(m, n, "empty command");
    if (!strcmp(argv[0], "set") && argc == 1) {
        gc_settings_line(g, m, n);
        return true;
    }
    if (!strcmp(argv[0], "set") && !g->model) {
        /* sampler settings can be made before a model is loaded */
        return gc_set(g, argc, argv, m, n);
    }
    if (!g->ctx)
        return gc_fail(m, n, "%s: no model loaded (:load FILE.gguf)", argv[0]);
    if (!strcmp(argv[0], "set"))
        return gc_set(g, argc, argv, m, n);
    if (!strcmp(argv[0], "route"))
        return gc_route(g, argc, argv, m, n);
    if (!strcmp(argv[0], "exit"))
        return gc_exit(g, argc, argv, m, n);
    if (!strcmp(argv[0], "bricks"))
        return gc_bricks(g, argc, argv, m, n);
    return gc_fail(m, n, "unknown engine command '%s'", argv[0]);
}
