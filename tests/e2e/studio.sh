#!/bin/sh
# studio.sh - end-to-end tests of the interactive studio inside tmux: open
# stories260K and a small MoE model, generate (keys and commands), move the
# selection and check that the router pane shows that token's recorded
# experts (read back from the exported session), resize, Ctrl-C, export,
# quit with the terminal restored (also on SIGTERM and a crash), replay a
# saved session; headless `export` and its JSON round trip; Lua in the
# studio (:lua, :source, :plugins, plugin commands and panes fed by engine
# events, a plugin failing at load, a runaway plugin, Ctrl-C in :lua).
#
# Each check uses its own tmux server (-L), TERM=xterm-256color and bounded
# waits. SKIPs when tmux or the reference models are absent.
# Prints "N passed, N failed, N skipped" last; exits non-zero on any failure.

BIN=${MOE_BIN:-./moe-studio}
SHARED=${MOE_SHARED:-../shared}
STORIES=$SHARED/models/real/stories260K.gguf
MIXTRAL=$SHARED/models/synthetic/tiny-mixtral.f32.gguf

pass=0
fail=0
skip=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/moe-studio-e2e-XXXXXX") || exit 1
SOCK=moe-e2e-$$-0
nsock=0
cleanup() {
    i=0
    while [ $i -le $nsock ]; do
        tmux -L "moe-e2e-$$-$i" kill-server >/dev/null 2>&1
        i=$((i + 1))
    done
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

ok() { pass=$((pass + 1)); echo "PASS: $1"; }
bad() { fail=$((fail + 1)); echo "FAIL: $1"; }
skipped() { skip=$((skip + 1)); echo "SKIP: $1"; }
finish() {
    echo "$pass passed, $fail failed, $skip skipped"
    [ "$fail" -eq 0 ]
    exit $?
}

# ---- headless export (no tmux needed) ------------------------------------
if [ -f "$MIXTRAL" ]; then
    if "$BIN" export -m "$MIXTRAL" -p "Once upon a time" -n 8 --temp 0 -o "$tmp/h.json" \
        2>"$tmp/err" && grep -q '"format":[[:space:]]*"moe-studio-session"' "$tmp/h.json"; then
        ok "export -m writes a session"
    else
        bad "export -m: $(head -n 2 "$tmp/err")"
    fi
    if "$BIN" export -i "$tmp/h.json" -o "$tmp/h2.json" 2>"$tmp/err" &&
        cmp -s "$tmp/h.json" "$tmp/h2.json"; then
        ok "re-exporting an imported session gives the same JSON"
    else
        bad "session round trip differs: $(head -n 2 "$tmp/err")"
    fi
    for ext in svg html csv; do
        if "$BIN" export -i "$tmp/h.json" -o "$tmp/h.$ext" 2>"$tmp/err" && [ -s "$tmp/h.$ext" ]; then
            ok "export to .$ext"
        else
            bad "export to .$ext: $(head -n 2 "$tmp/err")"
        fi
    done
    grep -q '<svg' "$tmp/h.html" && ! grep -q 'src="http' "$tmp/h.html" &&
        ok "the HTML report is self-contained" || bad "the HTML report is not self-contained"
    # an existing file survives a failed export
    echo keep >"$tmp/keep.json"
    "$BIN" export -i "$tmp/missing.json" -o "$tmp/keep.json" 2>"$tmp/err"
    rc=$?
    if [ $rc -ne 0 ] && [ $rc -lt 128 ] && [ "$(cat "$tmp/keep.json")" = keep ] &&
        [ "$(wc -l <"$tmp/err")" -eq 1 ]; then
        ok "failed export: one-line error, old file kept"
    else
        bad "failed export: rc $rc, $(cat "$tmp/err")"
    fi
else
    skipped "headless export: $MIXTRAL absent"
fi
"$BIN" export -o "$tmp/x.json" >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && ok "export without -m/-i is a usage error" || bad "export without -m/-i"
"$BIN" replay "$tmp/nope.json" >/dev/null 2>"$tmp/err"
rc=$?
[ $rc -ne 0 ] && [ $rc -lt 128 ] && grep -q nope.json "$tmp/err" &&
    ok "replay of a missing file fails cleanly" || bad "replay of a missing file: rc $rc"

if ! command -v tmux >/dev/null 2>&1; then
    skipped "studio in tmux: tmux is not installed"
    finish
fi
if [ ! -f "$STORIES" ] || [ ! -f "$MIXTRAL" ]; then
    skipped "studio in tmux: $SHARED models absent"
    finish
fi

export TERM=xterm-256color
export XDG_STATE_HOME="$tmp/state"
# the user's plugins and config are the test's own (the bundled plugins are
# found beside the binary, or in the source tree)
export XDG_CONFIG_HOME="$tmp/config"
unset MOE_PLUGIN_DIR
mkdir -p "$XDG_CONFIG_HOME/moe-studio/plugins"
T() { tmux -L "$SOCK" "$@"; }
cap() { T capture-pane -p -t s 2>/dev/null; }
# wait_for REGEX [SECONDS]: poll the screen until it matches
wait_for() {
    n=$(( ${2:-10} * 5 ))
    while [ $n -gt 0 ]; do
        if cap | grep -Eq -- "$1"; then return 0; fi
        sleep 0.2
        n=$((n - 1))
    done
    return 1
}
# start CMD...: a fresh server (own socket) with the studio; its exit status
# is printed after it
start() {
    T kill-server >/dev/null 2>&1
    nsock=$((nsock + 1))
    SOCK=moe-e2e-$$-$nsock
    T new-session -d -s s -x 80 -y 24 \
        "$*; echo STUDIO-EXITED rc=\$?; tput cnorm >/dev/null 2>&1; sleep 60"
}
restored() {
    wait_for 'STUDIO-EXITED rc=0' 5 && [ "$(T display -p -t s '#{alternate_on}')" = 0 ]
}
keys() { T send-keys -t s "$@"; }
# the studio of this test's own server: the child of the pane's shell
studio_pid() {
    ppid=$(T display -p -t s '#{pane_pid}' 2>/dev/null)
    [ -n "$ppid" ] && pgrep -n -P "$ppid" 2>/dev/null
}

# ---- stories260K: generate with keys and a prompt, export, quit ----------
start "$BIN -m $STORIES"
if wait_for 'loaded .*stories260K' 10; then ok "studio opens stories260K"; else
    bad "studio did not load stories260K"; cap | head -n 30; fi
# one key at a time: space is refused while a step is still running
n_ok=0
for want in 2 3 4; do
    keys Space
    wait_for "transcript +$want tokens" 10 && wait_for ' idle ' 10 && n_ok=$((n_ok + 1))
done
[ $n_ok -eq 3 ] && ok "space generates tokens (BOS + 3)" || bad "space did not generate"
keys i
keys -l "Once upon a time"
keys Enter
wait_for 'transcript +[0-9][0-9]+ tokens, 2 turns' 10 && ok "typed text generates a turn" ||
    bad "typed text did not generate"
wait_for ' idle ' 10
keys -l ":export $tmp/stories.json"
keys Enter
wait_for 'exported [0-9]+ tokens' 5 && [ -s "$tmp/stories.json" ] && ok ":export writes the session" ||
    bad ":export failed"
keys -l ":frobnicate"
keys Enter
wait_for "unknown command ':frobnicate'" 3 && ok "unknown commands are reported in the log" ||
    bad "no error for an unknown command"
keys -l ":lua 1+1"
keys Enter
wait_for '^ = 2$' 5 && ok ":lua 1+1 shows 2 in the log" || { bad ":lua 1+1"; cap | tail -n 5; }
keys '?'
wait_for 'moe-studio help' 3 && ok "? opens the help overlay" || bad "no help overlay"
keys Escape
wait_for 'transcript +[0-9]+ tokens' 3
# Ctrl-C during a run: from an empty context (512 tokens to go), C-c as soon
# as the run shows; it must stop the run early and leave the studio alive.
# stories260K runs ~1000 tok/s here: when the run ended on its own (EOS or a
# full context) before C-c arrived, that attempt proves nothing either way
# and is retried (3 attempts, each bounded).
ctrlc=""
for attempt in 1 2 3; do
    keys -l ":reset"
    keys Enter
    wait_for 'ctx 0/512' 10 || { ctrlc="no reset"; break; }
    keys r
    n=100
    while [ $n -gt 0 ] && ! cap | grep -Eq ' running \| .* ctx [1-9]'; do
        sleep 0.05
        n=$((n - 1))
    done
    keys C-c
    if [ $n -eq 0 ] || ! wait_for 'interrupted: generation stopped' 10 || ! wait_for ' idle ' 10; then
        ctrlc="run seen: $n"
        break
    fi
    if cap | grep -Eq 'end of generation|is full|ctx 512/512'; then
        ctrlc="the run ended before C-c ($attempt attempts)"
        continue
    fi
    cap | grep -Eq 'ctx [1-9][0-9]*/512' && ctrlc=ok || ctrlc="no context use"
    break
done
if [ "$ctrlc" = ok ]; then
    ok "Ctrl-C stops generation, not the program ($(cap | grep -Eo 'ctx [0-9]+/512' | head -n 1), attempt $attempt)"
else
    bad "Ctrl-C: $ctrlc"
    cap | head -n 2
    cap | tail -n 5
fi
keys q
restored && ok "q quits and restores the terminal" || { bad "terminal not restored after q"; cap | tail -n 5; }
grep -q ':export' "$tmp/state/moe-studio/history" 2>/dev/null &&
    ok "history saved under XDG_STATE_HOME" || bad "no history file"

# ---- tiny-mixtral: routing views follow the selection --------------------
start "$BIN -m $MIXTRAL"
wait_for 'loaded .*tiny-mixtral' 10 || bad "studio did not load tiny-mixtral"
keys -l ":set temp=0"
keys Enter
keys -l ":gen 6"
keys Enter
if wait_for 'transcript +7 tokens' 10; then ok ":gen 6 generates (BOS + 6)"; else bad ":gen 6"; fi
wait_for ' idle ' 10
# the bundled plugins saw the tokens: worker -> queue -> UI thread -> Lua
keys -l ":route-top"
keys Enter
wait_for 'routing of 7 traced tokens' 5 && cap | grep -Eq 'layer +0: e[0-9]+ [0-9]+%' &&
    ok "route_watch's pane shows the routing of the generated tokens" ||
    { bad ":route-top"; cap | head -n 20; }
keys -l ":token-stats"
keys Enter
wait_for '7 tokens, [0-9.]+ tok/s' 5 && ok "token_stats counted the tokens (on_token)" ||
    bad ":token-stats"
keys Escape
keys -l ":export $tmp/mix.json"
keys Enter
wait_for 'exported 7 tokens' 5 || bad ":export of the MoE session"
# expected layer-0 experts of token i, formatted like the router pane
experts() {
    python3 - "$tmp/mix.json" "$1" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
t = d["tokens"][int(sys.argv[2])]["layers"][0]
def f(w):
    s = "%.2f" % w
    return s[1:] if s.startswith("0.") else s
print(" ".join("e%d:%s" % (e, f(w)) for e, w in zip(t["experts"], t["weights"])))
EOF
}
if command -v python3 >/dev/null 2>&1; then
    moved=0
    for i in 6 5 4 3; do
        want=$(experts $i)
        if wait_for "router load +#$i " 3 && cap | grep -E '^.{40}L0 ' | grep -qF -- "$want"; then
            moved=$((moved + 1))
        else
            bad "router pane for token $i does not show '$want'"
            cap | head -n 8
        fi
        keys Left
    done
    [ $moved -eq 4 ] && ok "router pane shows each selected token's recorded experts"
    keys m
    wait_for 'cumulative load' 3 && ok "m switches the heatmap mode" || bad "heatmap mode"
else
    skipped "selection vs recorded experts: python3 absent"
fi
keys -l ":route ban 0"
keys Enter
wait_for 'route ban: ok' 5 && ok ":route ban is applied" || bad ":route ban"
keys -l ":exit depth:2"
keys Enter
wait_for 'exit: criterion depth:2' 5 && ok ":exit sets the criterion" || bad ":exit"
keys -l ":bricks"
keys Enter
wait_for '[0-9]+ bricks:' 5 && ok ":bricks lists the model's bricks" || bad ":bricks"
T resize-window -t s -x 120 -y 40
wait_for 'cumulative load' 3
sleep 0.3
if [ "$(cap | wc -l)" -ge 40 ] && cap | grep -q 'token inspector' && cap | grep -q 'early exit'; then
    ok "resize to 120x40 relayouts"
else
    bad "resize to 120x40"
fi
T resize-window -t s -x 50 -y 12
wait_for 'too small' 3 && ok "a tiny terminal shows 'too small'" || bad "no message when too small"
T resize-window -t s -x 80 -y 24
wait_for 'router load' 3 && ok "back to 80x24" || bad "resize back to 80x24"
keys z
wait_for '\[zoom\]' 3 && ok "z zooms the focused pane" || bad "zoom"
keys z
keys q
restored && ok "quit after resize restores the terminal" || bad "terminal not restored"

# ---- replay a saved session without the model ----------------------------
start "$BIN replay $tmp/mix.json"
if wait_for 'replay: .* 7 tokens' 5 || wait_for 'replay of .*7 tokens' 5; then
    ok "replay opens the saved session"
else
    bad "replay did not open"
    cap | head -n 5
fi
if command -v python3 >/dev/null 2>&1; then
    keys Right
    want=$(experts 1)
    wait_for "router load +#1 " 3 && cap | grep -qF -- "$want" &&
        ok "replay: the router pane shows token 1's recorded experts" ||
        bad "replay: token 1 should show '$want'"
fi
keys Space
wait_for 'viewing an imported session' 3 && ok "replay refuses to generate" || bad "replay generated"
keys q
restored && ok "replay quits cleanly" || bad "replay: terminal not restored"

# ---- Lua: plugins that fail, :source, commands, Ctrl-C in :lua ----------
cfgp="$XDG_CONFIG_HOME/moe-studio/plugins"
printf "error('bad plugin boom')\n" >"$cfgp/bad.lua"
printf 'local n = 0\nwhile true do n = n + 1 end\n' >"$cfgp/loop.lua"
cat >"$tmp/hello.lua" <<'EOF'
moe.ui.command('hello', function(args) moe.ui.notify('hello from lua: ' .. args) end, 'greet')
moe.ui.bind('F6', function() moe.ui.notify('F6 from lua') end, 'demo key')
moe.ui.progress('e2e', 0.5)
EOF
start "$BIN -m $STORIES"
if wait_for 'loaded .*stories260K' 30; then
    ok "the studio starts with a failing and a runaway plugin"
else
    bad "the studio did not start with the bad plugins"
    cap | tail -n 6
fi
keys BTab
keys z
# (long lines wrap in the log: the path and the message may be on two rows)
if wait_for 'log +\[zoom\]' 3 && wait_for 'plugin bad disabled:' 3 &&
    cap | grep -q 'bad plugin boom'; then
    ok "a plugin failing at load is reported in the log and disabled"
else
    bad "no error for the failing plugin"
    cap | tail -n 12
fi
cap | grep -q 'plugin loop disabled: instruction limit exceeded' &&
    ok "a runaway plugin is stopped by the instruction limit" ||
    bad "the runaway plugin was not reported"
keys z
keys Tab
keys -l ":plugins"
keys Enter
wait_for 'plugins \(2 of 4 on\): route_watch on, token_stats on, bad off, loop off' 5 &&
    ok ":plugins lists the bundled and the user's plugins with their state" ||
    { bad ":plugins"; cap | tail -n 5; }
keys Space
wait_for 'transcript +2 tokens' 10 && ok "the studio works on after the plugin failures" ||
    bad "no generation after the plugin failures"
keys -l ":source $tmp/hello.lua"
keys Enter
wait_for "sourced $tmp/hello.lua" 5 && wait_for 'e2e \[#####-----\] +50%' 3 &&
    ok ":source runs a file (its progress bar is in the status bar)" || bad ":source"
keys -l ":hello world"
keys Enter
wait_for 'hello from lua: world' 5 && ok "a command registered by a sourced script runs" ||
    bad ":hello from the sourced script"
keys F6
wait_for 'F6 from lua' 5 && ok "a key bound from Lua runs" || bad "F6 bound from Lua"
keys -l ":lua error('oops from e2e')"
keys Enter
wait_for 'error: .*oops from e2e' 5 && ok ":lua errors go to the log" || bad ":lua error"
keys -l ":lua while true do end"
keys Enter
sleep 0.5
keys C-c
if wait_for 'error: interrupted' 10 && keys -l ":lua 20+22" && keys Enter &&
    wait_for '^ = 42$' 5; then
    ok "Ctrl-C stops a runaway :lua; the studio goes on"
else
    bad "Ctrl-C in :lua"
    cap | tail -n 5
fi
keys q
restored && ok "quit after Lua restores the terminal" || bad "terminal not restored after Lua"
rm -f "$cfgp/bad.lua" "$cfgp/loop.lua"

# ---- signals: SIGTERM and a crash restore the terminal -------------------
start "$BIN -m $STORIES"
wait_for 'loaded' 20
pid=$(studio_pid)
if [ -n "$pid" ]; then
    kill -TERM "$pid"
    if wait_for 'STUDIO-EXITED rc=143' 10 && [ "$(T display -p -t s '#{alternate_on}')" = 0 ]; then
        ok "SIGTERM restores the terminal"
    else
        bad "SIGTERM"
    fi
else
    skipped "SIGTERM: no studio process under the pane"
fi
start "$BIN -m $STORIES"
wait_for 'loaded' 20
pid=$(studio_pid)
if [ -n "$pid" ]; then
    kill -SEGV "$pid"
    if wait_for 'crashed; terminal restored' 10 && [ "$(T display -p -t s '#{alternate_on}')" = 0 ]; then
        ok "a crash restores the terminal before dying"
    else
        bad "crash handler"
    fi
else
    skipped "crash: no studio process under the pane"
fi
T kill-server >/dev/null 2>&1
finish
