/*
 * check_lua.c - the Lua layer's Check runner: the `moe` module bindings
 * (models, contexts, generation, log-likelihood, embeddings, snapshots,
 * traces, routing, utilities, events) and the host's sandbox (denied
 * functions, instruction limit, memory cap, error isolation between
 * handlers and plugins, config opt-in, UI registry). Links lua/libmoelua.a
 * and the engine, not the studio. Run one suite with CK_RUN_SUITE=name.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../lua/host.h"
#include "testutil.h"

/* ---- a capturing UI ------------------------------------------------------ */

typedef struct {
    char log[16384];
    char out[16384];
    int n_errors;
    int n_notify;
    int n_panes;
    int n_commands;
    int n_keys;
    double last_progress;
} cap_ui;

static void cap_append(char *buf, size_t n, const char *s)
{
    size_t len = strlen(buf);
    snprintf(buf + len, n - len, "%s\n", s);
}

static void cap_log(void *ud, moe_log_level lvl, const char *msg)
{
    cap_ui *c = ud;
    if (lvl == MOE_LOG_ERROR)
        c->n_errors++;
    cap_append(c->log, sizeof c->log, msg);
}

static void cap_print(void *ud, const char *line)
{
    cap_ui *c = ud;
    cap_append(c->out, sizeof c->out, line);
}

static void cap_notify(void *ud, moe_log_level lvl, const char *msg)
{
    cap_ui *c = ud;
    (void)lvl;
    c->n_notify++;
    cap_append(c->out, sizeof c->out, msg);
}

static int cap_pane(void *ud, const char *title, const char *text)
{
    cap_ui *c = ud;
    (void)title;
    (void)text;
    return ++c->n_panes;
}

static void cap_progress(void *ud, const char *label, double frac)
{
    cap_ui *c = ud;
    (void)label;
    c->last_progress = frac;
}

static void cap_command(void *ud, const char *name, const char *help)
{
    cap_ui *c = ud;
    (void)name;
    (void)help;
    c->n_commands++;
}

static void cap_key(void *ud, const char *key, const char *help)
{
    cap_ui *c = ud;
    (void)key;
    (void)help;
    c->n_keys++;
}

static bool cap_session(void *ud, const char *action, const char *path, char *err, size_t n)
{
    cap_ui *c = ud;
    if (strstr(path, "bad")) {
        snprintf(err, n, "cannot %s %s", action, path);
        return false;
    }
    cap_append(c->out, sizeof c->out, action);
    return true;
}

static cap_ui g_cap;

static host *new_host(bool trusted)
{
    host_params p = host_default_params();
    host_ui ui;
    host *h;
    p.trusted = trusted;
    p.plugin_instr_limit = 2000000;
    p.plugin_mem_limit = (size_t)8 << 20;
    h = host_new(&p);
    ck_assert_ptr_nonnull(h);
    memset(&g_cap, 0, sizeof g_cap);
    memset(&ui, 0, sizeof ui);
    ui.ud = &g_cap;
    ui.log = cap_log;
    ui.print = cap_print;
    ui.notify = cap_notify;
    ui.pane_open = cap_pane;
    ui.progress = cap_progress;
    ui.command_added = cap_command;
    ui.key_bound = cap_key;
    ui.session = cap_session;
    host_set_ui(h, &ui);
    return h;
}

/* Run Lua code that must succeed; the log is shown when it does not. */
static void run_ok(host *h, const char *code)
{
    bool ok = host_run_string(h, code, "=test");
    ck_assert_msg(ok, "Lua failed:\n%s", g_cap.log);
}

/* Set a global string in the state. */
static void set_global(host *h, const char *name, const char *value)
{
    lua_State *L = host_lua(h);
    lua_pushstring(L, value);
    lua_setglobal(L, name);
}

static bool model_path(char *buf, size_t n, const char *rel, const char *test)
{
    return tu_shared(buf, n, rel, test) != NULL;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* A fresh directory under the per-run temp directory. */
static const char *tmp_dir(char *buf, size_t n, const char *name)
{
    tu_tmp_path(buf, n, name);
    mkdir(buf, 0700);
    return buf;
}

/* ---- bindings ------------------------------------------------------------- */

START_TEST(test_model_basics)
{
    char path[512];
    host *h;
    if (!model_path(path, sizeof path, "models/real/stories260K.gguf", "model_basics"))
        return;
    h = new_host(true);
    set_global(h, "PATH", path);
    run_ok(h, "local m = assert(moe.load(PATH))\n"
              "local i = m:info()\n"
              "assert(i.n_vocab == 512 and i.n_layer == 5 and i.n_embd == 64, 'info')\n"
              "assert(i.arch == 'llama' and i.n_expert == 0)\n"
              "local ids = m:tokenize('Once upon a time')\n"
              "assert(ids[1] == m:bos() and #ids > 2, 'bos first')\n"
              "local text = m:detokenize(ids)\n"
              "assert(text:find('Once upon a time', 1, true), 'round trip: ' .. text)\n"
              "assert(m:piece(ids[2]) ~= '')\n"
              "assert(tostring(m):find('stories260K'))\n"
              "assert(getmetatable(m) == 'moe.Model', 'metatable guarded')\n"
              /* runtime failure: nil, msg */
              "local x, msg = moe.load('/nonexistent/model.gguf')\n"
              "assert(x == nil and type(msg) == 'string' and #msg > 0, 'nil, msg')\n"
              /* programmer errors raise */
              "assert(not pcall(moe.load, {}), 'bad type raises')\n"
              "assert(not i.copied, 'a small file is mapped')\n"
              "local c = assert(moe.load(PATH, {load = 'copy'}))\n"
              "assert(c:info().copied, 'load = copy')\n"
              "c:close()\n"
              "local ok2, e2 = pcall(moe.load, PATH, {load = 'huge'})\n"
              "assert(not ok2 and e2:find('huge'), 'bad load mode raises')\n"
              "assert(not pcall(m.piece, m, 100000), 'id out of range raises')\n"
              "m:close()\n"
              "local ok, err = pcall(m.info, m)\n"
              "assert(not ok and err:find('closed'), 'closed model raises')\n"
              "m:close() -- twice is fine\n");
    host_free(h);
}
END_TEST

START_TEST(test_generate_golden)
{
    char path[512], gold[512];
    char *golden;
    lua_State *L;
    host *h;
    if (!model_path(path, sizeof path, "models/real/stories260K.gguf", "generate_golden") ||
        !model_path(gold, sizeof gold, "golden/stories260K.greedy200.txt", "generate_golden"))
        return;
    golden = tu_read_file(gold, NULL);
    ck_assert_ptr_nonnull(golden);
    h = new_host(true);
    L = host_lua(h);
    set_global(h, "PATH", path);
    set_global(h, "GOLDEN", golden);
    /* greedy from BOS must reproduce the reference text; the per-token
     * callback sees every token and can stop */
    run_ok(h, "local m = assert(moe.load(PATH))\n"
              "local c <close> = assert(m:context{n_ctx = 256})\n"
              "assert(c:decode({m:bos()}))\n"
              "local seen = 0\n"
              "local text, ids, why = c:generate{n = 60, on_token = function(id, piece, pos)\n"
              "  seen = seen + 1; assert(pos == seen, 'pos ' .. pos) end}\n"
              "assert(why == 'length' and #ids == 60 and seen == 60, why)\n"
              "text = text:gsub('^ ', '') -- SentencePiece: the first piece carries a space\n"
              "assert(GOLDEN:sub(1, #text) == text, 'greedy text differs: ' .. text)\n"
              "assert(c:pos() == 61)\n"
              "c:reset(); assert(c:pos() == 0)\n"
              "local n = 0\n"
              "local t2, ids2, why2 = c:generate({m:bos()}, {n = 50, on_token = function()\n"
              "  n = n + 1; return n < 3 end})\n"
              "assert(why2 == 'callback' and #ids2 == 3, why2)\n"
              "assert(GOLDEN:sub(1, #t2 - 1) == t2:sub(2))\n"
              /* a stop string */
              "c:reset()\n"
              "local t3, _, why3 = c:generate({m:bos()}, {n = 100, stop = 'Lily'})\n"
              "assert(why3 == 'stop' and t3:find('Lily'), why3)\n"
              /* sampler handle, seeded: same seed, same text */
              "local function samp(seed)\n"
              "  c:reset(); local s <close> = m:sampler{temp = 0.9, top_k = 40, seed = seed}\n"
              "  return (c:generate({m:bos()}, {n = 30, sampler = s})) end\n"
              "assert(samp(7) == samp(7), 'seeded sampling repeats')\n"
              /* step */
              "c:reset(); c:decode({m:bos()})\n"
              "local g <close> = m:sampler{temp = 0}\n"
              "local id, piece = c:step(g)\n"
              "assert(' ' .. GOLDEN:sub(1, #piece - 1) == piece, 'step piece')\n");
    (void)L;
    free(golden);
    host_free(h);
}
END_TEST

START_TEST(test_loglik_snapshot_embed)
{
    char path[512];
    host *h;
    if (!model_path(path, sizeof path, "models/real/stories260K.gguf", "loglik"))
        return;
    h = new_host(true);
    set_global(h, "PATH", path);
    run_ok(h,
           "local m = assert(moe.load(PATH))\n"
           "local c = assert(m:context{n_ctx = 128})\n"
           /* loglik equals the sum of step-by-step log-probabilities */
           "local total, n, per, greedy = c:loglik('Once upon a time', ' there was a girl')\n"
           "local jt = m:tokenize('Once upon a time there was a girl')\n"
           "local ct = m:tokenize('Once upon a time')\n"
           "local cont = {}\n"
           "for i = 1, #ct do assert(jt[i] == ct[i]) end\n"
           "for i = #ct + 1, #jt do cont[#cont + 1] = jt[i] end\n"
           "assert(n == #cont and #per == n, 'joint tokenization split')\n"
           "local t2 = c:loglik(ct, cont)\n"
           "assert(math.abs(t2 - total) < 1e-9, 'token lists give the same')\n"
           "c:reset(); c:decode('Once upon a time')\n"
           "local s, g = 0, 0\n"
           "for i = 1, #cont do\n"
           "  s = s + c:logprob(cont[i]); if c:argmax() == cont[i] then g = g + 1 end\n"
           "  c:decode({cont[i]})\n"
           "end\n"
           "assert(math.abs(s - total) < 1e-3, ('loglik %g vs %g'):format(total, s))\n"
           "assert(g == greedy and total < 0)\n"
           /* a likelier continuation scores higher than noise */
           "local good = c:loglik('Once upon a time, there was a little', ' girl')\n"
           "local bad = c:loglik('Once upon a time, there was a little', ' xylophone')\n"
           "assert(good > bad, 'good continuation beats a bad one')\n"
           /* snapshot / restore: same logits, same continuation, even after
            * truncating and decoding something else */
           "c:reset(); c:decode('One day, a cat')\n"
           "local l0 = c:logits()\n"
           "local snap <close> = assert(c:snapshot())\n"
           "assert(snap:pos() == c:pos() and #snap:tokens() == c:pos())\n"
           "local a = c:generate(nil, {n = 12})\n"
           "c:truncate(2); c:decode(' dog dog dog dog dog')\n"
           "assert(c:restore(snap))\n"
           "local l1 = c:logits()\n"
           "for i = 1, #l0 do assert(l0[i] == l1[i], 'logits restored exactly') end\n"
           "local b = c:generate(nil, {n = 12})\n"
           "assert(a == b, 'same continuation after restore')\n"
           /* embeddings: deterministic, by layer, leave the context alone with keep */
           "local e1 = c:embed('the cat sat', 2)\n"
           "local e2 = c:embed('the cat sat', 2)\n"
           "local e3 = c:embed('the cat sat', 4)\n"
           "assert(#e1 == 64 and #e3 == 64)\n"
           "for i = 1, #e1 do assert(e1[i] == e2[i]) end\n"
           "assert(moe.util.cosine(e1, e2) > 0.9999)\n"
           "assert(moe.util.cosine(e1, e3) < 0.9999, 'another layer, another vector')\n"
           "c:reset(); c:decode('Hello there'); local p, lg = c:pos(), c:logits()\n"
           "local ek = c:embed(' friend', -1, {keep = true})\n"
           "assert(c:pos() == p, 'keep: position unchanged')\n"
           "local lg2 = c:logits(); for i = 1, #lg do assert(lg[i] == lg2[i]) end\n"
           "assert(not pcall(c.embed, c, 'x', 99), 'bad layer raises')\n"
           /* a full context is a runtime failure */
           "local small = assert(m:context{n_ctx = 8})\n"
           "local ok, msg = small:decode(('a b c d e f g h i j k'))\n"
           "assert(ok == nil and msg:find('full'), tostring(msg))\n"
           "small:close()\n"
           /* summation orders: "token" gives a batch the bits of single
            * tokens; an unknown order raises */
           "local t = assert(m:context{n_ctx = 64, order = 'token'})\n"
           "local ids = m:tokenize('One day, a cat sat')\n"
           "assert(t:decode(ids, {all = true}))\n"
           "local batch = {}; for i = 1, #ids do batch[i] = t:logits(i - 1) end\n"
           "c:reset()\n"
           "for i = 1, #ids do\n"
           "  c:decode({ids[i]}); local l = c:logits()\n"
           "  for v = 1, #l do assert(l[v] == batch[i][v], 'token order: batch = single') end\n"
           "end\n"
           "assert(not pcall(m.context, m, {order = 'tiled'}), 'unknown order raises')\n"
           "t:close(); c:close(); m:close()\n");
    host_free(h);
}
END_TEST

START_TEST(test_routing_trace)
{
    char path[512];
    host *h;
    if (!model_path(path, sizeof path, "models/synthetic/tiny-mixtral.f32.gguf", "routing"))
        return;
    h = new_host(true);
    set_global(h, "PATH", path);
    run_ok(h,
           "local m = assert(moe.load(PATH))\n"
           "local info = m:info(); assert(info.n_expert == 8 and info.n_expert_used == 2)\n"
           "local c = assert(m:context{n_ctx = 64, max_top_k = 4})\n"
           "assert(c:trace{lens_k = 3})\n"
           "local routes, exits = 0, 0\n"
           "local id = moe.on('on_route', function(e) routes = routes + 1 end)\n"
           "assert(c:decode('the quick brown fox'))\n"
           "local n = c:trace_count(); assert(n == c:pos() and routes == n)\n"
           "local e = c:trace_get(1)\n"
           "assert(e.pos == 0 and #e.layers == info.n_layer)\n"
           "local L0 = e.layers[1]\n"
           "assert(L0.moe and #L0.sel == 2 and #L0.probs == 8 and #L0.lens == 3)\n"
           "local sw = L0.w[1] + L0.w[2]; assert(math.abs(sw - 1) < 1e-5, 'mixtral renormalises')\n"
           /* ban the expert layer 0 liked most: it is never chosen again */
           "local banned = L0.sel[1]\n"
           "assert(c:route_ban(0, banned))\n"
           "c:reset(); c:trace_clear()\n"
           "assert(c:decode('the quick brown fox jumps over'))\n"
           "for i = 1, c:trace_count() do\n"
           "  for _, x in ipairs(c:trace_get(i).layers[1].sel) do assert(x ~= banned, 'banned') end\n"
           "end\n"
           "local st = assert(c:route_stats())\n"
           "assert(st[1].experts[banned + 1].load == 0, 'no load on the banned expert')\n"
           "assert(st[1].n_tokens == c:trace_count())\n"
           /* a bad expert id is a runtime failure of the engine: nil, msg */
           "local ok, msg = c:route_ban(0, 99)\n"
           "assert(ok == nil and type(msg) == 'string')\n"
           "assert(c:route_top_k(-1, 3)); assert(c:route_get_top_k(0) == 3)\n"
           "c:route_reset(); assert(c:route_get_top_k(0) == 2)\n"
           /* counterfactual re-evaluation of a cached position */
           "c:reset(); c:decode({m:bos()}); c:decode({5}, {all = true})\n"
           "local base = c:logits()\n"
           "local same = assert(c:reeval(1))\n"
           "local kl0 = moe.logits_compare(base, same, 5)\n"
           "assert(kl0 < 1e-6, 'reeval without steering is the same')\n"
           "assert(c:route_force(-1, 3))\n"
           "local forced = assert(c:reeval(1))\n"
           "local kl1, changed = moe.logits_compare(base, forced, 5)\n"
           "assert(kl1 > 0, 'forcing an expert changes the logits')\n"
           /* early exit: spec errors are runtime failures, stats count */
           "local okx, mx = c:set_exit('bogus:1')\n"
           "assert(okx == nil and mx)\n"
           "assert(c:set_exit('depth:1'))\n"
           "moe.on('on_exit', function(pos, tok, layer, nl) exits = exits + 1;\n"
           "  assert(layer == 0 and nl == info.n_layer) end)\n"
           "c:route_reset(); c:reset(); c:exit_reset_stats()\n"
           "assert(c:decode('a b c'))\n"
           "local es = c:exit_stats()\n"
           "assert(es.n_tokens == c:pos() and es.saved > 0.5, 'depth 1 skips layers')\n"
           "assert(exits == c:pos(), 'on_exit for every token ' .. exits)\n"
           "assert(moe.off(id) and not moe.off(id))\n");
    host_free(h);
}
END_TEST

START_TEST(test_bricks_binding)
{
    char path[512], dense[512], out[512], emoe[512];
    host *h;
    if (!model_path(path, sizeof path, "models/synthetic/tiny-mixtral.f32.gguf", "bricks") ||
        !model_path(dense, sizeof dense, "models/real/stories260K.gguf", "bricks"))
        return;
    h = new_host(true);
    set_global(h, "PATH", path);
    set_global(h, "DENSE", dense);
    set_global(h, "OUT", tu_tmp_path(out, sizeof out, "pruned.gguf"));
    set_global(h, "EMOE", tu_tmp_path(emoe, sizeof emoe, "emoe.gguf"));
    run_ok(h,
           "local m = assert(moe.load(PATH))\n"
           "local info = m:info()\n"
           "local n = 0\n"
           "for _, b in ipairs(m:bricks()) do if b.kind == 'expert' then n = n + 1\n"
           "  assert(b.name == ('blk.%d.expert.%d'):format(b.layer, b.index) and b.bytes > 0) end end\n"
           "assert(n == info.n_layer * info.n_expert, 'one brick per expert')\n"
           "local b <close> = assert(moe.bricks_open(PATH))\n"
           "assert(b:n_layer() == info.n_layer and b:n_expert(0) == info.n_expert)\n"
           "for il = 0, b:n_layer() - 1 do assert(b:prune(il, {0})) end\n"
           "assert(b:n_expert(0) == info.n_expert - 1 and b:origin(0, 0) == 1)\n"
           "local id = assert(b:grow(0, 0, 0, 1)); assert(id == info.n_expert - 1)\n"
           "local ok, msg = b:save(OUT)\n"
           "assert(ok == nil and msg, 'uneven expert counts cannot be saved')\n"
           "assert(b:prune(0, {id}))\n"
           "assert(b:save(OUT))\n"
           "local p = assert(moe.load(OUT)); assert(p:info().n_expert == info.n_expert - 1)\n"
           "assert(not pcall(b.prune, b, 0, {}), 'empty list raises')\n"
           "local x, err = moe.bricks_open('/nonexistent.gguf'); assert(x == nil and err)\n"
           /* EMoE of the dense model: k = N gives the dense logits */
           "local rep = assert(moe.emoe(DENSE, EMOE, {n_expert = 4, k = 4, layers = {0, 1}}))\n"
           "assert(rep.n_converted == 2)\n"
           "local d = assert(moe.load(DENSE)); local e = assert(moe.load(EMOE))\n"
           "assert(e:info().n_expert == 4)\n"
           "local cd, ce = d:context{n_ctx = 32}, e:context{n_ctx = 32}\n"
           "cd:decode('Once upon a time'); ce:decode('Once upon a time')\n"
           "local kl = moe.logits_compare(cd:logits(), ce:logits(), 5)\n"
           "assert(kl < 1e-6, 'EMoE with k = N is the dense model: ' .. kl)\n"
           "local r2, m2 = moe.emoe(PATH, EMOE, {n_expert = 4})\n"
           "assert(r2 == nil and m2, 'an MoE model cannot be split again')\n"
           /* updating: train one brick */
           "local t <close> = assert(moe.trainer_load(PATH))\n"
           "assert(t:trainable('blk.0.expert.1'))\n"
           "assert(t:n_params(true) > 0 and t:n_params(true) < t:n_params())\n"
           "local ok2, bad = t:trainable('blk.99.nothing'); assert(ok2 == nil and bad)\n"
           "assert(t:set_params{lr = 1e-3, warmup = 0, n_steps = 4, threads = 1})\n"
           "local txt = 'the quick brown fox jumps over the lazy dog and runs far away'\n"
           "local e0 = assert(t:eval(txt, {n_tok = 8}))\n"
           "for i = 1, 4 do assert(t:step(txt, {n_tok = 8})) end\n"
           "local e1 = assert(t:eval(txt, {n_tok = 8}))\n"
           "assert(t:steps() == 4 and e1.ce < e0.ce, 'training lowers the loss')\n"
           "assert(not pcall(t.step, t, 'x', {n_tok = 8}), 'too few tokens raises')\n");
    host_free(h);
}
END_TEST

START_TEST(test_util)
{
    host *h = new_host(true);
    run_ok(h,
           "local U = moe.util\n"
           /* three well separated blobs: k-means finds them, reps are members */
           "local pts = {}\n"
           "for c = 0, 2 do for i = 1, 6 do\n"
           "  pts[#pts + 1] = {c * 10 + (i % 3) * 0.1, -c * 10 + (i % 2) * 0.1} end end\n"
           "local r = U.kmeans(pts, 3, {seed = 3})\n"
           "assert(#r.assign == 18 and #r.centroids == 3 and #r.reps == 3)\n"
           "for j = 1, 3 do assert(r.sizes[j] == 6, 'blob size') end\n"
           "for i = 1, 18, 6 do for t = i, i + 5 do assert(r.assign[t] == r.assign[i]) end end\n"
           "for j = 1, 3 do assert(r.assign[r.reps[j]] == j, 'rep is a member') end\n"
           "assert(r.inertia < 1)\n"
           "local r1 = U.kmeans(pts, 1); assert(r1.sizes[1] == 18)\n"
           "local r18 = U.kmeans(pts, 18); for j = 1, 18 do assert(r18.sizes[j] == 1) end\n"
           "assert(not pcall(U.kmeans, pts, 19), 'k > n raises')\n"
           "assert(not pcall(U.kmeans, {{1, 2}, {1}}, 1), 'ragged raises')\n"
           "assert(math.abs(U.cosine({1, 0}, {0, 1})) < 1e-12)\n"
           "assert(math.abs(U.cosine({1, 2}, {2, 4}) - 1) < 1e-12)\n"
           "local nv = U.normalize({3, 4}); assert(math.abs(nv[1] - 0.6) < 1e-12)\n"
           "local mv = U.mean({{1, 2}, {3, 4}}); assert(mv[1] == 2 and mv[2] == 3)\n"
           /* BM25: the document with the rare query word wins */
           "local ix = U.bm25({'the cat sat on the mat', 'the dog barked at the mailman',\n"
           "  'a zebra is a striped horse', 'the the the the'})\n"
           "assert(ix:count() == 4)\n"
           "local hits = ix:search('striped zebra')\n"
           "assert(#hits == 1 and hits[1].doc == 3 and hits[1].score > 0)\n"
           "local h2 = ix:search('the cat')\n"
           "assert(h2[1].doc == 1, 'cat and the beat the alone')\n"
           "assert(#ix:search('nothing matches here') == 0)\n"
           "assert(ix:doc(2):find('dog'))\n"
           "local w = U.words('Hello, World! x2'); assert(#w == 3 and w[1] == 'hello')\n");
    host_free(h);
}
END_TEST

START_TEST(test_events_isolation)
{
    host *h = new_host(true);
    int ok;
    /* several handlers per event; a failing one is reported and the others
     * still run, in registration order */
    run_ok(h, "order = {}\n"
              "moe.on('on_step', function(w, i) order[#order + 1] = 'a' .. i end)\n"
              "moe.on('on_step', function() error('boom') end)\n"
              "moe.on('step', function(w, i, info) order[#order + 1] = 'c' .. i .. (info or '') end)\n");
    ok = host_emit_step(h, "calib", 1, "x");
    ck_assert_int_eq(ok, 2);
    ck_assert_int_eq(g_cap.n_errors, 1);
    ck_assert_ptr_nonnull(strstr(g_cap.log, "boom"));
    ck_assert_ptr_nonnull(strstr(g_cap.log, "on_step handler"));
    ck_assert_ptr_nonnull(strstr(g_cap.log, "traceback"));
    run_ok(h, "assert(#order == 2 and order[1] == 'a1' and order[2] == 'c1x', table.concat(order, ','))\n"
              "assert(moe.emit('on_step', 'w', 2) == 2)\n"
              "assert(#order == 4)\n"
              "assert(not pcall(moe.on, 'on_nothing', print), 'unknown event raises')\n"
              "local tokens = {}\n"
              "moe.on('on_token', function(id, piece, pos) tokens[#tokens + 1] = piece end)\n"
              "moe.on('on_session', function(a, p) tokens.session = a .. ':' .. p end)\n"
              "_G.tokens = tokens\n");
    run_ok(h, "assert(moe.session_export('/tmp/s.json'))\n"
              "assert(tokens.session == 'export:/tmp/s.json', 'on_session after export')\n"
              "local ok, msg = moe.session_import('/tmp/bad.json')\n"
              "assert(ok == nil and msg:find('cannot import'))\n");
    ck_assert_int_eq(host_emit_token(h, NULL, 7, 0), 1);
    ck_assert_int_eq(host_emit_session(h, "export", "/tmp/x.json"), 1);
    run_ok(h, "assert(#tokens == 1 and tokens.session == 'export:/tmp/x.json')\n");
    /* errors in trusted code: false, logged, host still usable */
    g_cap.n_errors = 0;
    ck_assert(!host_run_string(h, "error('top level')", "=t"));
    ck_assert_int_eq(g_cap.n_errors, 1);
    ck_assert(!host_run_string(h, "this is not lua", "=t"));
    run_ok(h, "assert(1 + 1 == 2)");
    host_free(h);
}
END_TEST

START_TEST(test_eval_repl)
{
    host *h = new_host(true);
    char *out = NULL;
    ck_assert(host_eval(h, "1 + 2, 'x'", &out));
    ck_assert_str_eq(out, "3\tx");
    free(out);
    ck_assert(host_eval(h, "y = 5", &out));
    ck_assert_str_eq(out, "");
    free(out);
    ck_assert(host_eval(h, "y * 2", &out));
    ck_assert_str_eq(out, "10");
    free(out);
    ck_assert(!host_eval(h, "nosuch.field", &out));
    free(out);
    host_free(h);
}
END_TEST

/* ---- sandbox -------------------------------------------------------------- */

START_TEST(test_plugin_denied)
{
    char dir[512], p[600];
    host *h;
    host_plugin_info info;
    tmp_dir(dir, sizeof dir, "plugins_denied");
    /* each denied thing is probed; the plugin records what it could see */
    snprintf(p, sizeof p, "%s/a_probe.lua", dir);
    write_file(p, "probe = {io = io, os = os, require = require, dofile = dofile,\n"
                  "  loadfile = loadfile, package = package, debug = debug}\n"
                  "local bin = string.dump and string.dump(function() return 1 end)\n"
                  "local f, err = load(bin)\n"
                  "assert(f == nil and err, 'binary chunk refused')\n"
                  "assert(load('return 41 + 1')() == 42, 'text chunks work')\n"
                  "assert(getmetatable('') == nil, 'string metatable hidden')\n"
                  "assert(not pcall(collectgarbage, 'stop'), 'gc stays on')\n"
                  "assert(string.upper('a') == 'A' and math.floor(1.5) == 1 and utf8 and coroutine)\n"
                  "for k, v in pairs(probe) do error('plugin can see ' .. k) end\n"
                  "string.upper = nil -- its own copy only\n"
                  "shared_global = 1\n"
                  "moe.load = nil\n"
                  "moe.ui.command('probe', function(args) moe.ui.notify('probe ' .. args) end, 'help')\n");
    snprintf(p, sizeof p, "%s/b_exec.lua", dir);
    write_file(p, "os.execute('touch /tmp/should-not-exist')\n");
    snprintf(p, sizeof p, "%s/c_io.lua", dir);
    write_file(p, "local f = io.open('/etc/passwd')\n");
    snprintf(p, sizeof p, "%s/d_other.lua", dir);
    write_file(p, "assert(shared_global == nil, 'plugins do not share globals')\n"
                  "assert(string.upper('a') == 'A', 'string lib not shared')\n"
                  "assert(type(moe.load) == 'function', 'moe module not shared')\n"
                  "moe.ui.bind('F9', function(key) moe.ui.progress('x', 0.5) end, 'half')\n");
    snprintf(p, sizeof p, "%s/e_syntax.lua", dir);
    write_file(p, "this is not lua\n");
    snprintf(p, sizeof p, "%s/notes.txt", dir);
    write_file(p, "not a plugin\n");
    h = new_host(true);
    ck_assert_int_eq(host_load_plugins(h, dir), 2);
    ck_assert_int_eq(host_plugin_count(h), 5);
    ck_assert(host_plugin_get(h, 0, &info));
    ck_assert_str_eq(info.name, "a_probe");
    ck_assert_msg(info.enabled, "probe failed: %s\n%s", info.error, g_cap.log);
    ck_assert(host_plugin_get(h, 1, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "os"));
    ck_assert(host_plugin_get(h, 2, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "io"));
    ck_assert(host_plugin_get(h, 3, &info));
    ck_assert_msg(info.enabled, "%s", info.error);
    ck_assert(host_plugin_get(h, 4, &info));
    ck_assert(!info.enabled);
    ck_assert(!host_plugin_get(h, 5, &info));
    /* the plugins' commands and keys reach the UI */
    ck_assert_int_eq(g_cap.n_commands, 1);
    ck_assert_int_eq(g_cap.n_keys, 1);
    ck_assert_int_eq(host_command_count(h), 1);
    ck_assert(host_run_command(h, "probe", "now"));
    ck_assert_ptr_nonnull(strstr(g_cap.out, "probe now"));
    ck_assert(!host_run_command(h, "nosuch", ""));
    ck_assert(host_run_key(h, "F9"));
    ck_assert(g_cap.last_progress == 0.5);
    ck_assert(!host_run_key(h, "F10"));
    /* trusted code still has everything */
    run_ok(h, "assert(io and os and require and string.upper)\n"
              "local ps = moe.plugins(); assert(#ps == 5 and ps[1].enabled and not ps[2].enabled)\n");
    host_free(h);
}
END_TEST

START_TEST(test_instruction_limit)
{
    char dir[512], p[600];
    host *h;
    host_plugin_info info;
    tmp_dir(dir, sizeof dir, "plugins_loop");
    snprintf(p, sizeof p, "%s/a_loop.lua", dir);
    write_file(p, "while true do end\n");
    snprintf(p, sizeof p, "%s/b_sneaky.lua", dir);
    /* catching the limit error with pcall must not let it go on */
    write_file(p, "while true do pcall(function() while true do end end) end\n");
    snprintf(p, sizeof p, "%s/c_handler.lua", dir);
    write_file(p, "moe.on('on_step', function() local x = 0 while true do x = x + 1 end end)\n");
    snprintf(p, sizeof p, "%s/d_fine.lua", dir);
    write_file(p, "count = 0\nmoe.on('on_step', function() count = count + 1 end)\n"
                  "moe.ui.command('count', function() moe.ui.notify('count=' .. count) end)\n");
    snprintf(p, sizeof p, "%s/e_engine.lua", dir);
    write_file(p, "moe.ui.command('spin', function(path)\n"
                  "  local m = assert(moe.load(path, {threads = 1}))\n"
                  "  local c = m:context{n_ctx = 32}\n"
                  "  while true do c:reset() c:decode('Once upon a time') end\n"
                  "end)\n");
    h = new_host(true);
    ck_assert_int_eq(host_load_plugins(h, dir), 3);
    ck_assert(host_plugin_get(h, 0, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "instruction limit"));
    ck_assert(host_plugin_get(h, 1, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "instruction limit"));
    /* the runaway handler is stopped and disabled; the fine one runs */
    ck_assert_int_eq(host_emit_step(h, "s", 1, NULL), 1);
    ck_assert(host_plugin_get(h, 2, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "instruction limit"));
    ck_assert_int_eq(host_emit_step(h, "s", 2, NULL), 1);
    ck_assert(host_run_command(h, "count", ""));
    ck_assert_ptr_nonnull(strstr(g_cap.out, "count=2"));
    /* engine work counts against the limit too */
    {
        char mp[512];
        if (model_path(mp, sizeof mp, "models/real/stories260K.gguf", "instruction_limit")) {
            host_plugin_info pi;
            int idx = host_plugin_count(h) - 1;
            ck_assert(host_plugin_get(h, idx, &pi));
            ck_assert_str_eq(pi.name, "e_engine");
            ck_assert(pi.enabled);
            ck_assert(!host_run_command(h, "spin", mp));
            ck_assert(host_plugin_get(h, idx, &pi));
            ck_assert(!pi.enabled);
            ck_assert_ptr_nonnull(strstr(pi.error, "instruction limit"));
        }
    }
    /* trusted code has no instruction limit */
    run_ok(h, "local x = 0 for i = 1, 5000000 do x = x + i end assert(x > 0)");
    host_free(h);
}
END_TEST

START_TEST(test_memory_cap)
{
    char dir[512], p[600];
    host *h;
    host_plugin_info info;
    lua_State *L;
    tmp_dir(dir, sizeof dir, "plugins_mem");
    snprintf(p, sizeof p, "%s/a_hog.lua", dir);
    write_file(p, "local t = {}\nfor i = 1, 1e9 do t[i] = string.rep('x', 1000) .. i end\n");
    snprintf(p, sizeof p, "%s/b_fine.lua", dir);
    write_file(p, "local t = {} for i = 1, 1000 do t[i] = i end ok_fine = #t\n");
    h = new_host(true);
    ck_assert_int_eq(host_load_plugins(h, dir), 1);
    ck_assert(host_plugin_get(h, 0, &info));
    ck_assert(!info.enabled);
    ck_assert_msg(strstr(info.error, "memory") != NULL, "error: %s", info.error);
    ck_assert(host_plugin_get(h, 1, &info));
    ck_assert(info.enabled);
    /* the hog's garbage is collectable: the heap is back under the cap */
    L = host_lua(h);
    lua_gc(L, LUA_GCCOLLECT, 0);
    ck_assert_int_lt(lua_gc(L, LUA_GCCOUNT, 0), 8 * 1024);
    /* the whole-state cap applies to trusted code too */
    host_free(h);
    {
        host_params hp = host_default_params();
        hp.mem_limit = (size_t)4 << 20;
        h = host_new(&hp);
        ck_assert_ptr_nonnull(h);
        host_set_ui(h, NULL);
        ck_assert(!host_run_string(h, "local t = {} for i = 1, 1e8 do t[i] = {} end", "=hog"));
        ck_assert(host_run_string(h, "collectgarbage() local t = {1, 2, 3}", "=after"));
        host_free(h);
    }
}
END_TEST

START_TEST(test_config_opt_in)
{
    char dir[512], cfg[600], p[600];
    host *h;
    host_plugin_info info;
    tmp_dir(dir, sizeof dir, "plugins_unsafe");
    snprintf(p, sizeof p, "%s/a_io.lua", dir);
    write_file(p, "assert(io and os and os.time, 'io/os after opt-in')\n");
    snprintf(p, sizeof p, "%s/b_off.lua", dir);
    write_file(p, "error('should not run')\n");
    tmp_dir(cfg, sizeof cfg, "config_unsafe");
    strcat(cfg, "/config.lua");
    write_file(cfg, "plugins_unsafe = true\nplugins_disabled = {'b_off'}\n"
                    "plugin_instructions = 123456\n");
    h = new_host(true);
    /* without the config: denied */
    ck_assert_int_eq(host_load_plugins(h, dir), 0);
    host_free(h);
    h = new_host(true);
    ck_assert(host_load_config(h, cfg));
    ck_assert_int_eq(host_load_plugins(h, dir), 1);
    ck_assert(host_plugin_get(h, 0, &info));
    ck_assert_msg(info.enabled, "%s", info.error);
    ck_assert(host_plugin_get(h, 1, &info));
    ck_assert(!info.enabled);
    ck_assert_ptr_nonnull(strstr(info.error, "config"));
    run_ok(h, "assert(moe.limits().plugin_instructions == 123456)");
    /* a config that loops or fails is reported, not fatal */
    write_file(cfg, "while true do end\n");
    ck_assert(!host_load_config(h, cfg));
    ck_assert(host_load_config(h, "/nonexistent/config.lua"));
    host_free(h);
}
END_TEST

START_TEST(test_untrusted_top_level)
{
    host_params p = host_default_params();
    host *h;
    p.trusted = false;
    p.plugin_instr_limit = 1000000;
    p.plugin_mem_limit = (size_t)4 << 20;
    h = host_new(&p);
    ck_assert_ptr_nonnull(h);
    host_set_ui(h, NULL);
    ck_assert(host_run_string(h,
                              "assert(io == nil and os == nil and require == nil and\n"
                              "  dofile == nil and loadfile == nil and package == nil)\n"
                              "assert(moe and moe.util and string and table)\n",
                              "=sandbox"));
    /* the untrusted top level runs under the plugin limits */
    ck_assert(!host_run_string(h, "while true do end", "=loop"));
    ck_assert(!host_run_string(h, "local t = {} for i = 1, 1e9 do t[i] = ('x'):rep(100) .. i end",
                               "=hog"));
    ck_assert(host_run_string(h, "assert(1 + 1 == 2)", "=after"));
    host_free(h);
}
END_TEST

static Suite *lua_bind_suite(void)
{
    Suite *s = suite_create("lua_bind");
    TCase *tc = tcase_create("bind");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_model_basics);
    tcase_add_test(tc, test_generate_golden);
    tcase_add_test(tc, test_loglik_snapshot_embed);
    tcase_add_test(tc, test_routing_trace);
    tcase_add_test(tc, test_bricks_binding);
    tcase_add_test(tc, test_util);
    tcase_add_test(tc, test_events_isolation);
    tcase_add_test(tc, test_eval_repl);
    suite_add_tcase(s, tc);
    return s;
}

static Suite *lua_sandbox_suite(void)
{
    Suite *s = suite_create("lua_sandbox");
    TCase *tc = tcase_create("sandbox");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_plugin_denied);
    tcase_add_test(tc, test_instruction_limit);
    tcase_add_test(tc, test_memory_cap);
    tcase_add_test(tc, test_config_opt_in);
    tcase_add_test(tc, test_untrusted_top_level);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(lua_bind_suite());
    int failed;
    srunner_add_suite(sr, lua_sandbox_suite());
    srunner_set_log(sr, "tests/check_lua.check.log");
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
