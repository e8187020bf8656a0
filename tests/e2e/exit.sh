#!/bin/sh
# exit.sh - end-to-end tests of early exit and self-speculative decoding in
# the headless commands: `run --exit SPEC --verbose` (exit layers per token),
# `run --speculate E:d` (greedy text identical to the golden one), `exit`
# (perplexity, mean exit layer, layers saved; HashEE table save and use),
# `bench --speculate` (acceptance and speed-up), and bad specs giving one
# error line.
#
# Environment (set by `make check`): MOE_BIN, MOE_SHARED (default ../shared).
# Checks that need MOE_SHARED print a SKIP line when it is absent.
# Prints "N passed, N failed, N skipped" last; exits non-zero on any failure.

. "$(dirname "$0")/lib.sh"
STORIES=$SHARED/models/real/stories260K.gguf
GOLDEN=$SHARED/golden/stories260K.greedy200.txt
MIXTRAL=$SHARED/models/synthetic/tiny-mixtral.f32.gguf

require_bin

# ---- usage and bad specs (no model needed: specs are checked first) -------
run_bin run --help
if [ "$rc" -eq 0 ] && grep -q -- '--exit SPEC' "$tmp/out" && grep -q -- '--speculate E:d' "$tmp/out"; then
    ok "run --help lists --exit and --speculate"
else
    bad "run --help lists --exit and --speculate"
fi
run_bin exit --help
if [ "$rc" -eq 0 ] && grep -q 'usage: moe-studio exit' "$tmp/out"; then ok "exit --help"; else bad "exit --help"; fi
run_bin --help
if grep -Eq '^  exit ' "$tmp/out"; then ok "usage lists exit"; else bad "usage lists exit"; fi

for spec in entropy entropy:x maxprob:2 patience:0 window:0.5 depth:0 frob:1 "hash:"; do
    expect_err "run --exit $spec" "--exit" -- run -m "$tmp/none.gguf" --exit "$spec"
done
expect_err "run --exit hash:missing" "missing-table" -- run -m "$tmp/none.gguf" --exit "hash:$tmp/missing-table"
for spec in 2 0:4 2:0 x:y 2:4:1; do
    expect_err "run --speculate $spec" "--speculate" -- run -m "$tmp/none.gguf" --speculate "$spec"
    expect_err "bench --speculate $spec" "--speculate" -- bench -m "$tmp/none.gguf" --speculate "$spec"
done
expect_err "run --exit with --speculate" "not both" -- run -m "$tmp/none.gguf" --exit depth:2 --speculate 2:2
expect_err "run --speculate with penalties" "--speculate" -- run -m "$tmp/none.gguf" --speculate 2:2 --repeat-penalty 1.1
expect_err "exit without -f" "-f" -- exit -m "$tmp/none.gguf"
expect_err "exit with a bad spec" "--exit" -- exit -m "$tmp/none.gguf" -f "$tmp/none.txt" --exit maxprob:7
printf 'moe-hashee 1\nn_vocab 512\nn_buckets 3\n5 9\n' >"$tmp/bad.table"
expect_err "run --exit hash:bad table" "bad.table" -- run -m "$tmp/none.gguf" --exit "hash:$tmp/bad.table"

if [ ! -f "$STORIES" ]; then
    skipped "stories260K checks: $STORIES absent"
    finish
fi

# ---- run --exit --verbose ----------------------------------------------------
run_bin run -m "$STORIES" -n 20 --temp 0 -p "Once upon a time" --exit depth:3 --verbose -t 1
if [ "$rc" -eq 0 ] && grep -q 'exit layers of the prompt (depth:3, 0-based, 4 = all): 2 2 2 2 2$' "$tmp/err" &&
    grep -Eq 'exit layers of the generated tokens:( 2){19}$' "$tmp/err" &&
    grep -q 'mean exit layer 2.000, layers saved 40.0%' "$tmp/err"; then
    ok "run --exit depth:3 --verbose prints exit layers"
else
    bad "run --exit depth:3 --verbose: exit $rc: $(cat "$tmp/err")"
fi
run_bin run -m "$STORIES" -n 200 --temp 0 --exit entropy:0 -t 1
if [ "$rc" -eq 0 ] && cmp -s "$tmp/out" "$GOLDEN"; then
    ok "run --exit entropy:0 (never exits) gives the golden text"
else
    bad "run --exit entropy:0: exit $rc, text differs from the golden file"
fi
run_bin run -m "$STORIES" -n 30 --temp 0 --exit patience:1 --verbose -t 1
if [ "$rc" -eq 0 ] && grep -q 'layers saved' "$tmp/err"; then ok "run --exit patience:1"; else bad "run --exit patience:1: $(cat "$tmp/err")"; fi
expect_err "run --exit depth beyond the model" "depth 9" -- run -m "$STORIES" --exit depth:9

# ---- run --speculate -----------------------------------------------------------
for s in 1:4 3:2 4:6; do
    run_bin run -m "$STORIES" -n 200 --temp 0 --speculate "$s" -t 1
    if [ "$rc" -eq 0 ] && cmp -s "$tmp/out" "$GOLDEN"; then
        ok "run --speculate $s gives the golden greedy text"
    else
        bad "run --speculate $s: exit $rc, text differs from the golden file $(head -n 2 "$tmp/err")"
    fi
done
run_bin run -m "$STORIES" -n 50 --temp 0.8 --speculate 3:3 --verbose -t 1
if [ "$rc" -eq 0 ] && grep -q 'drafts accepted' "$tmp/err" && [ -s "$tmp/out" ]; then
    ok "run --speculate with sampling"
else
    bad "run --speculate with sampling: exit $rc: $(head -n 2 "$tmp/err")"
fi
expect_err "run --speculate E beyond the model" "draft layers" -- run -m "$STORIES" --speculate 9:2

# ---- exit: perplexity, HashEE table --------------------------------------------
cp "$GOLDEN" "$tmp/text.txt"
run_bin exit -m "$STORIES" -f "$tmp/text.txt" -t 1 --save-hash "$tmp/h.table" --buckets 5 \
    --exit entropy:0 --exit depth:3 --exit "hash:$tmp/h.table" --exit "hashtext:$tmp/text.txt:5" \
    --exit window:0.3:2
if [ "$rc" -ne 0 ]; then
    bad "exit: exit $rc: $(cat "$tmp/err")"
else
    base=$(awk '$1 == "none" {print $3}' "$tmp/out")
    never=$(awk '$1 == "entropy:0" {print $3}' "$tmp/out")
    h1=$(grep '^hash:' "$tmp/out" | awk '{print $3, $7, $10}')
    h2=$(grep '^hashtext:' "$tmp/out" | awk '{print $3, $7, $10}')
    if [ -n "$base" ] && [ "$base" = "$never" ]; then ok "exit: entropy:0 has the full model's perplexity"; else bad "exit: perplexities $base / $never"; fi
    if grep -q '^depth:3 .*mean exit layer  2.000  layers saved  40.0%' "$tmp/out"; then ok "exit: depth:3 saves 40%"; else bad "exit: depth:3 line: $(grep '^depth' "$tmp/out")"; fi
    if [ -n "$h1" ] && [ "$h1" = "$h2" ]; then ok "exit: saved HashEE table == table built on the fly"; else bad "exit: hash '$h1' vs hashtext '$h2'"; fi
    if head -n 1 "$tmp/h.table" | grep -q '^moe-hashee 1$' && grep -q '^n_buckets 5$' "$tmp/h.table"; then ok "exit --save-hash writes a table"; else bad "exit --save-hash: $(head -n 3 "$tmp/h.table")"; fi
    if grep -q '^window:0.3:2 ' "$tmp/out"; then ok "exit: window criterion"; else bad "exit: no window line"; fi
fi

# ---- perplexity --exit -----------------------------------------------------------
run_bin perplexity -m "$STORIES" -f "$tmp/text.txt" -t 1 --exit depth:3
if [ "$rc" -eq 0 ] && grep -q '^early exit  depth:3: mean exit layer 2.000 (0-based), layers saved 40.0%' "$tmp/out"; then
    ok "perplexity --exit reports mean exit layer and layers saved"
else
    bad "perplexity --exit: exit $rc: $(cat "$tmp/out" "$tmp/err" | tail -n 3)"
fi
run_bin perplexity -m "$STORIES" -f "$tmp/text.txt" -t 1 --exit "entropy:1000@2" --json
if [ "$rc" -eq 0 ] && grep -q '"exit":{"spec":"entropy:1000@2","mean_exit_layer":2,' "$tmp/out"; then
    ok "perplexity --exit SPEC@N --json"
else
    bad "perplexity --exit --json: exit $rc: $(head -c 400 "$tmp/out") $(head -n 1 "$tmp/err")"
fi
expect_err "perplexity --exit bad spec" "--exit" -- perplexity -m "$STORIES" -f "$tmp/text.txt" --exit window:1

# ---- bench --speculate ---------------------------------------------------------
run_bin bench -m "$STORIES" -p 8 -n 32 --reps 1 -t 1 --speculate 4:3
if [ "$rc" -eq 0 ] && grep -Eq '^speculate 4:3 .*speed-up [0-9.]+x, acceptance [0-9.]+%.*output identical' "$tmp/out"; then
    ok "bench --speculate reports acceptance, speed-up, identical output"
else
    bad "bench --speculate: exit $rc: $(cat "$tmp/out" "$tmp/err" | tail -n 3)"
fi
if [ -f "$MIXTRAL" ]; then
    run_bin bench -m "$MIXTRAL" -p 8 -n 32 --reps 1 -t 1 --speculate 1:3 --json
    if [ "$rc" -eq 0 ] && grep -q '"spec_identical":true' "$tmp/out" && grep -q '"spec_accept_rate"' "$tmp/out"; then
        ok "bench --speculate --json on an MoE model"
    else
        bad "bench --speculate --json (mixtral): exit $rc: $(head -c 300 "$tmp/out") $(head -n 1 "$tmp/err")"
    fi
else
    skipped "mixtral bench: $MIXTRAL absent"
fi

finish
