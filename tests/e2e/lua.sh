#!/bin/sh
# lua.sh - end-to-end tests of the Lua host in the real binary: `script`
# (arguments, exit status, error report), the `lua` REPL, the bundled
# plugins, and every workflow script of scripts/ on the ../shared models,
# each result checked by a Lua checker that recomputes what it can
# (log-likelihoods, cluster membership, argmaxes, BM25 hits).
# Fail-fast: the first failing check stops the script (exit 1); SKIPs as a
# whole (exit 77) without the reference models. Uses lib.sh only for the
# environment defaults and the scratch directory.
. "$(dirname "$0")/lib.sh"
STORIES=$SHARED/models/real/stories260K.gguf
MIXTRAL=$SHARED/models/synthetic/tiny-mixtral.f32.gguf
if [ ! -f "$STORIES" ] || [ ! -f "$MIXTRAL" ]; then
    echo "SKIP: lua e2e: $STORIES or $MIXTRAL absent"
    exit 77
fi
T=$tmp
export MOE_SHARED=$SHARED XDG_CONFIG_HOME=$T/config
fail() { echo "FAIL: $*"; exit 1; }
run_script() { # name, then args: runs scripts/<name>.lua, output in $T/<name>.txt
    name=$1; shift
    "$BIN" script "$SRC/scripts/$name.lua" "$@" > "$T/$name.txt" 2> "$T/$name.err" ||
        { cat "$T/$name.err"; fail "$name.lua exited with $?"; }
}
check() { # checker file, args
    "$BIN" script "$@" || fail "checker $1"
}

# ---- the hosts -------------------------------------------------------------
cat > "$T/args.lua" <<'EOF'
print(#arg, arg[0]:match('[^/]+$'), arg[1], arg[2], select('#', ...))
EOF
out=$("$BIN" script "$T/args.lua" one "two words") || fail "script args"
[ "$out" = "2	args.lua	one	two words	2" ] || fail "script args: '$out'"

printf 'error("deliberate")\n' > "$T/err.lua"
"$BIN" script "$T/err.lua" > /dev/null 2> "$T/err.txt" && fail "a failing script exits 0"
grep -q deliberate "$T/err.txt" && grep -q traceback "$T/err.txt" || fail "error report: $(cat "$T/err.txt")"
"$BIN" script "$T/nonexistent.lua" 2> /dev/null && fail "missing script exits 0"

out=$(printf '1 + 2\nx = 20\nx * 2\nmoe.version\n' | "$BIN" lua) || fail "repl"
[ "$(echo "$out" | sed -n 1p)" = 3 ] && [ "$(echo "$out" | sed -n 2p)" = 40 ] ||
    fail "repl output: $out"

# an unfinished chunk continues on the next lines
out=$(printf 'function twice(x)\n  return 2 * x\nend\ntwice(21)\n' | "$BIN" lua) || fail "repl multi-line"
[ "$out" = 42 ] || fail "repl multi-line: $out"

# the sandboxed top level refuses io
printf 'assert(io == nil and os == nil)\nprint("sandboxed")\n' > "$T/sb.lua"
[ "$("$BIN" script --sandbox "$T/sb.lua")" = sandboxed ] || fail "--sandbox"

# ---- bundled plugins, headless -----------------------------------------------
cat > "$T/plugins.lua" <<'EOF'
local ps = moe.plugins()
assert(#ps == 2, 'two bundled plugins, got ' .. #ps)
for _, p in ipairs(ps) do assert(p.enabled, p.name .. ': ' .. p.error) end
local m = assert(moe.load(arg[1]))
local c = m:context{n_ctx = 64}
assert(c:trace(true))
local text = c:generate('the cat', {n = 8})
print('TRACED', c:trace_count())
assert(moe.ui.run('route-top', '2'))
assert(moe.ui.run('token-stats'))
assert(moe.ui.press('F7'))
assert(not moe.ui.run('no-such-command'))
EOF
"$BIN" script --plugin-dir "$SRC/plugins" "$T/plugins.lua" "$MIXTRAL" > "$T/plugins.txt" 2>&1 ||
    { cat "$T/plugins.txt"; fail "bundled plugins"; }
grep -q '^== route-top ==' "$T/plugins.txt" || fail "route-top pane"
n=$(sed -n 's/^TRACED	//p' "$T/plugins.txt")
grep -q "routing of $n traced tokens" "$T/plugins.txt" || fail "route-watch saw the tokens: $(cat "$T/plugins.txt")"
grep -q '^layer  0: e' "$T/plugins.txt" || fail "route-top layers"
grep -q '8 tokens' "$T/plugins.txt" || fail "token-stats: $(cat "$T/plugins.txt")"
grep -q 'route-watch off' "$T/plugins.txt" || fail "key binding"

# a user plugin that misbehaves is disabled; the user's config opts in to io
mkdir -p "$T/config/moe-studio/plugins"
printf 'while true do end\n' > "$T/config/moe-studio/plugins/loop.lua"
printf 'moe.ui.command("hi", function() print("hi from user plugin", io ~= nil) end)\n' \
    > "$T/config/moe-studio/plugins/hi.lua"
printf 'local ps = moe.plugins()\nfor _, p in ipairs(ps) do print(p.name, p.enabled) end\nmoe.ui.run("hi")\n' > "$T/user.lua"
"$BIN" script --plugins "$T/user.lua" > "$T/user.txt" 2> "$T/user.err" || fail "user plugins"
grep -q '^loop	false' "$T/user.txt" || fail "runaway plugin not disabled: $(cat "$T/user.txt")"
grep -q 'instruction limit' "$T/user.err" || fail "runaway plugin error not logged"
grep -q '^hi from user plugin	false' "$T/user.txt" || fail "user plugin: $(cat "$T/user.txt")"
printf 'plugins_unsafe = true\n' > "$T/config/moe-studio/config.lua"
"$BIN" script --plugins "$T/user.lua" 2> /dev/null | grep -q '^hi from user plugin	true' ||
    fail "config opt-in"
rm "$T/config/moe-studio/config.lua"

# ---- prompt_calibration.lua ------------------------------------------------------
cat > "$T/check_pc.lua" <<'EOF'
local r = dofile(arg[1])
local m = assert(moe.load(arg[2], {threads = 1}))
local c = m:context{n_ctx = 512}
assert(#r.history >= 2, 'history recorded')
assert(r.stop_reason == arg[3], 'stop reason ' .. r.stop_reason)
assert(r.best.score >= r.start.score, 'best >= start')
local function score(prompt)
  local s = 0
  for _, e in ipairs(r.examples) do
    local t, n = c:loglik(prompt .. e.input, e.output)
    s = s + t / n
  end
  return s / #r.examples
end
assert(math.abs(score(r.start.prompt) - r.start.score) < 1e-6, 'start score recomputed')
assert(math.abs(score(r.best.prompt) - r.best.score) < 1e-6, 'best score recomputed')
for _, f in ipairs(r.final) do
  if f.step == 0 or f.step >= r.warmup then assert(f.score <= r.best.score) end
end
for _, e in ipairs(r.examples) do
  if e.boundary then assert(r.examples[e.of].output == e.output, 'boundary keeps its label') end
end
print('ok', #r.history, r.stop_reason, r.start.score, r.best.score)
EOF
run_script prompt_calibration --steps 4 --patience 2 --out "$T/pc.lua"
grep -q '^best prompt:' "$T/prompt_calibration.txt" || fail "calibration prints the best prompt"
grep -q '^step  rule' "$T/prompt_calibration.txt" || fail "calibration prints the history"
check "$T/check_pc.lua" "$T/pc.lua" "$STORIES" "$(sed -n 's/^stopped: \([a-z]*\).*/\1/p' "$T/prompt_calibration.txt")" > /dev/null
cat > "$T/task_pc.lua" <<'EOF'
return {
  intent = 'Name the animal of the story.',
  prompt = 'Animals.',
  examples = {
    { input = 'The dog wagged its', output = ' tail' },
    { input = 'The bird sang a', output = ' song' },
    { input = 'The cat said', output = ' meow' },
  },
  pool = { { input = 'The fish swam in the', output = ' water.' } },
}
EOF
run_script prompt_calibration --task "$T/task_pc.lua" --budget 30 --out "$T/pc2.lua"
check "$T/check_pc.lua" "$T/pc2.lua" "$STORIES" budget > /dev/null

# the meta-prompt path (the model proposes a prompt) and a user scoring function
run_script prompt_calibration --meta --steps 1 --out "$T/pc3.lua"
grep -q '^1 *meta ' "$T/prompt_calibration.txt" || fail "meta-prompt proposal missing"
check "$T/check_pc.lua" "$T/pc3.lua" "$STORIES" steps > /dev/null
cat > "$T/task_score.lua" <<'EOF'
return {
  prompt = 'x',
  examples = { { input = 'a', output = 'b' }, { input = 'c', output = 'd' } },
  pool = { { input = 'e', output = 'f' } },
  -- prefers long prompts: any rewrite that adds text must win
  score = function(ctx, context, output) return #context end,
}
EOF
run_script prompt_calibration --task "$T/task_score.lua" --steps 1 --out "$T/pc4.lua"
cat > "$T/check_score.lua" <<'EOF'
local r = dofile(arg[1])
assert(r.best.score > r.start.score, 'the user score picked a longer prompt')
assert(#r.best.prompt > #r.start.prompt)
EOF
check "$T/check_score.lua" "$T/pc4.lua"

# ---- codechain.lua ------------------------------------------------------------------
cat > "$T/check_cc.lua" <<'EOF'
local r = dofile(arg[1])
local k0 = tonumber(arg[2])
assert(#r.rounds == tonumber(arg[3]))
assert(r.seeds_passed == r.n_seeds - 1, 'the wrong seed is rejected')
local function d2(a, b) local s = 0 for t = 1, #a do s = s + (a[t] - b[t]) ^ 2 end return s end
for i, rd in ipairs(r.rounds) do
  local want = math.max(1, k0 - (i - 1))
  assert(rd.k_requested == want and rd.k == want, 'requested number of clusters')
  assert(#rd.centroids == want and #rd.reps == want and #rd.sizes == want)
  local sizes, sums = {}, {}
  for j = 1, want do sizes[j] = 0 end
  for p, a in ipairs(rd.assign) do sizes[a] = sizes[a] + 1 end
  for j = 1, want do assert(sizes[j] > 0 and sizes[j] == rd.sizes[j], 'cluster sizes') end
  for p, e in ipairs(rd.embeddings) do
    for j = 1, want do
      assert(d2(e, rd.centroids[rd.assign[p]]) <= d2(e, rd.centroids[j]) + 1e-9, 'nearest centroid')
    end
  end
  for j = 1, want do
    local rep = rd.reps[j]
    assert(rd.assign[rep] == j, 'representative is a member of its cluster')
    for p, e in ipairs(rd.embeddings) do
      if rd.assign[p] == j then
        assert(d2(rd.embeddings[rep], rd.centroids[j]) <= d2(e, rd.centroids[j]) + 1e-12,
               'representative is the member nearest the centroid')
      end
    end
  end
end
print('ok')
EOF
run_script codechain --samples 2 --tokens 24 --out "$T/cc.lua"
grep -q 'model samples passing the tests' "$T/codechain.txt" || fail "codechain report"
check "$T/check_cc.lua" "$T/cc.lua" 5 5 > /dev/null
run_script codechain --samples 1 --tokens 16 --rounds 2 --k-start 3 --out "$T/cc2.lua"
check "$T/check_cc.lua" "$T/cc2.lua" 3 2 > /dev/null

# ---- bricks.lua -----------------------------------------------------------------------
cat > "$T/check_br.lua" <<'EOF'
local r = dofile(arg[1])
assert(r.emoe_full and r.emoe_k, 'EMoE ran')
assert(math.abs(r.emoe_full.ppl - r.dense.ppl) / r.dense.ppl < 1e-3, 'EMoE with k = N is the dense model')
assert(r.emoe_full.n_expert == r.n_expert and r.emoe_k.n_expert_used == r.k)
assert(r.emoe_k.ppl ~= r.emoe_full.ppl, 'fewer experts change the output')
assert(r.pruned.n_expert == r.original.n_expert - 1)
assert(r.merged.n_expert == r.original.n_expert - 1)
assert(r.grown.n_expert == r.original.n_expert + 1)
assert(r.pruned.bytes < r.original.bytes and r.grown.bytes > r.original.bytes)
if r.pruned.pruned_load == 0 then
  assert(math.abs(r.pruned.ppl - r.original.ppl) <= 1e-6 * r.original.ppl)
end
assert(r.updated, 'update ran')
assert(r.updated.trainable > 0 and r.updated.trainable < r.updated.n_params, 'one brick per layer trained')
assert(r.updated.ce_last < r.updated.ce_first, 'training lowers the loss')
assert(r.updated.ppl < r.original.ppl, 'the trained text got likelier')
for _, x in ipairs(r.results) do assert(x.ppl >= 1 and x.ppl < math.huge, x.name) end
print('ok')
EOF
run_script bricks --dir "$T" --out "$T/br.lua"
check "$T/check_br.lua" "$T/br.lua" > /dev/null

# ---- aor.lua -----------------------------------------------------------------------------
cat > "$T/check_aor.lua" <<'EOF'
local r = dofile(arg[1])
local answered, by = 0, {}
for _, c in ipairs(r.chains) do
  if c.answer then
    answered = answered + 1
    by[c.answer] = by[c.answer] or {}
    table.insert(by[c.answer], c.score)
  end
end
local n = 0
for _, b in ipairs(r.buckets) do n = n + b.count end
assert(n == answered, 'buckets hold every answered chain')
local best, bs
for a, sc in pairs(by) do
  table.sort(sc, function(x, y) return x > y end)
  local s, k = 0, math.min(r.top, #sc)
  for i = 1, k do s = s + sc[i] end
  s = s / k
  if not bs or s > bs or (s == bs and a < best) then best, bs = a, s end
end
assert(best == r.answer, 'the answer with the best chains wins')
if arg[2] == 'early' then
  assert(#r.chains == r.min_chains and r.reason ~= 'budget', 'stops at once with margin 0')
else
  assert(r.reason == 'budget' or r.reason == 'unanimous', r.reason)
  if r.reason == 'budget' then assert(#r.chains == r.max_chains, 'sampled more while close') end
end
print('ok')
EOF
run_script aor --margin 0 --out "$T/aor0.lua"
check "$T/check_aor.lua" "$T/aor0.lua" early > /dev/null
run_script aor --margin 100 --max-chains 8 --out "$T/aor1.lua"
check "$T/check_aor.lua" "$T/aor1.lua" close > /dev/null
grep -q '^answer: ' "$T/aor.txt" || fail "aor prints the answer"

# ---- hag.lua -------------------------------------------------------------------------------
cat > "$T/check_hag.lua" <<'EOF'
local r = dofile(arg[1])
local m = assert(moe.load(arg[2], {threads = 1}))
local c = m:context{n_ctx = 256}
assert(#r.records == 3)
for _, rec in ipairs(r.records) do
  assert(#rec.tries == r.n_settings, 'every setting tried')
  local best
  for _, t in ipairs(rec.tries) do
    assert(math.abs(t.score - (t.fluency + r.diversity * t.distinct2)) < 1e-9)
    if not best or t.score > best.score then best = t end
  end
  assert(best.setting == rec.pick and best.text == rec.output, 'the best setting is picked')
  c:reset(); c:decode(rec.input)
  assert(math.abs(c:entropy() - rec.entropy) < 1e-9, 'entropy recomputed')
end
print('ok')
EOF
run_script hag --out "$T/hag.lua"
check "$T/check_hag.lua" "$T/hag.lua" "$STORIES" > /dev/null

# ---- active_retrieval.lua ---------------------------------------------------------------------
mkdir -p "$T/docs"
printf 'The fox lived in a den under an old oak tree.\n' > "$T/docs/fox.txt"
printf 'Lily had a red ball and played in the park.\n' > "$T/docs/lily.txt"
printf 'Tom saw a big ship with white sails.\n' > "$T/docs/ship.txt"
cat > "$T/check_ar.lua" <<'EOF'
local r = dofile(arg[1])
local m = assert(moe.load(arg[2], {threads = 1}))
local c = m:context{n_ctx = 256}
local ix = moe.util.bm25(r.docs)
local n_ret = 0
for _, rec in ipairs(r.records) do
  assert(rec.retrieved == (rec.max_entropy >= r.threshold), 'retrieve only when uncertain')
  c:reset(); c:decode(rec.question)
  assert(math.abs(c:entropy() - rec.entropies[1]) < 1e-9, 'uncertainty recomputed')
  if rec.retrieved then
    n_ret = n_ret + 1
    local hits = ix:search(rec.query, r.k)
    assert(#hits == #rec.hits and #hits > 0)
    for i, h in ipairs(hits) do assert(h.doc == rec.hits[i].doc, 'BM25 hits') end
  else
    assert(#rec.hits == 0 and rec.answer == rec.draft)
  end
end
if arg[3] == 'all' then assert(n_ret == #r.records) end
if arg[3] == 'none' then assert(n_ret == 0) end
print('ok', n_ret)
EOF
run_script active_retrieval --docs "$T/docs" --out "$T/ar.lua"
check "$T/check_ar.lua" "$T/ar.lua" "$STORIES" mixed > /dev/null
run_script active_retrieval --threshold 0 --out "$T/ar0.lua"
check "$T/check_ar.lua" "$T/ar0.lua" "$STORIES" all > /dev/null
run_script active_retrieval --threshold 1e9 --out "$T/ar9.lua"
check "$T/check_ar.lua" "$T/ar9.lua" "$STORIES" none > /dev/null

# ---- sessions headless: export a context's trace, import, convert, replay ----
cat > "$T/ses.lua" <<'EOF'
local m = assert(moe.load(arg[1], {threads = 1}))
local c = m:context{n_ctx = 64}
assert(c:trace{lens_k = 8})
local text, ids = c:generate('Once upon a time', {n = 6, eos = false})
local n_trace = c:trace_count()
local n = assert(moe.session_export(c, arg[2], {exit = 'none'}))
assert(n == n_trace, 'one record per trace entry: ' .. n .. ' vs ' .. n_trace)
local s = assert(moe.session_import(arg[2]))
assert(s.format == 'moe-studio-session' and s.version == 1)
assert(#s.tokens == n and #s.turns == 1 and s.turns[1].prompt:match('^ ?Once upon a time$'),
       'turn: ' .. tostring(s.turns[1] and s.turns[1].prompt))
assert(s.stats.n_gen == #ids and s.turns[1].n_gen == #ids, 'sampled records')
-- every record is the trace entry it came from
for i, t in ipairs(s.tokens) do
  local e = c:trace_get(i)
  assert(t.id == e.token and t.pos == e.pos and t.exit_layer == e.exit_layer)
  assert(t.text == s.pieces[t.id], 'pieces cover the ids')
  for il, l in ipairs(t.layers) do
    local el = e.layers[il]
    assert(l.moe == el.moe)
    if l.moe then
      assert(#l.experts == #el.sel and #l.experts > 0)
      for j, x in ipairs(l.experts) do assert(x == el.sel[j]) end
    end
  end
end
-- the log-probs of the sampled tokens are the model's: recompute them
local prompt = s.turns[1].n_prompt
c:trace(false)
c:reset()
local pre = {}
for i = 1, prompt do pre[i] = s.tokens[i].id end
c:decode(pre)
for i = prompt + 1, #s.tokens do
  local t = s.tokens[i]
  local lp = c:logprob(t.id)
  assert(math.abs(lp - t.logprob) < 1e-4, ('token %d: logprob %g vs %g'):format(i, t.logprob, lp))
  assert(#t.top == 8 and t.top[1][2] >= t.top[8][2] and #t.stages == 0)
  c:decode({t.id})
end
-- session_read works too, and errors are nil, msg
assert(moe.session_read(arg[2]).stats.n_tokens == n)
local bad, msg = moe.session_import(arg[2] .. '.missing')
assert(bad == nil and msg:find('cannot open'), msg)
print('session ok', n)
EOF
out=$("$BIN" script "$T/ses.lua" "$MIXTRAL" "$T/ses.json") || fail "session export/import: $out"
case $out in "session ok"*) ;; *) fail "session script: $out" ;; esac
# the studio's reader takes it as is: re-exporting is byte-identical
"$BIN" export -i "$T/ses.json" -o "$T/ses2.json" || fail "export -i of a script's session"
cmp -s "$T/ses.json" "$T/ses2.json" || fail "a script's session does not round-trip byte-identically"
"$BIN" export -i "$T/ses.json" -o "$T/ses.html" && [ -s "$T/ses.html" ] || fail "session to html"
# the sandbox has no session files
printf 'local ok, msg = moe.session_import("%s")\nassert(ok == nil and msg:find("sandbox"))\nprint("refused")\n' \
    "$T/ses.json" > "$T/ses_sb.lua"
[ "$("$BIN" script --sandbox "$T/ses_sb.lua")" = refused ] || fail "sandboxed session_import"
# replay opens it (tmux, when installed)
if command -v tmux >/dev/null 2>&1; then
    sock=moe-lua-e2e-$$
    ntok=$(grep -c '"exit_layer"' "$T/ses.json")
    tmux -L "$sock" new-session -d -s s -x 100 -y 30 \
        "TERM=xterm-256color $BIN replay $T/ses.json; echo REPLAY-EXITED rc=\$?; sleep 30"
    n=50; seen=
    while [ $n -gt 0 ]; do
        if tmux -L "$sock" capture-pane -p -t s | grep -Eq "replay(:| of) .*$ntok tokens"; then
            seen=1; break
        fi
        sleep 0.2; n=$((n - 1))
    done
    tmux -L "$sock" send-keys -t s q
    n=25; quit=
    while [ $n -gt 0 ]; do
        if tmux -L "$sock" capture-pane -p -t s | grep -q 'REPLAY-EXITED rc=0'; then quit=1; break; fi
        sleep 0.2; n=$((n - 1))
    done
    [ -n "$seen" ] || tmux -L "$sock" capture-pane -p -t s | head -n 5
    tmux -L "$sock" kill-server >/dev/null 2>&1
    [ -n "$seen" ] || fail "replay of a script's session did not open"
    [ -n "$quit" ] || fail "replay of a script's session did not quit cleanly"
else
    echo "SKIP: replay of a script's session: tmux is not installed"
fi

echo "lua e2e: hosts, plugins and 6 workflow scripts, headless sessions OK"
