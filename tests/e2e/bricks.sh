#!/bin/sh
# bricks.sh - end-to-end tests of `moe-studio emoe` and `moe-studio bricks`:
# usage errors (one line, exit 2), EMoE conversion of stories260K that
# reloads as an MoE and with K = N scores the same perplexity as the dense
# model, brick listing (table, JSON that parses and adds up, load on a
# text), run-time disabling (load 0), and edits saved and reloaded: pruning
# never-selected experts keeps the text's logits, grow + merge back is the
# original, non-uniform expert counts are refused.
#
# Environment (set by `make check`): MOE_BIN, MOE_SHARED (default
# ../shared). Checks that need MOE_SHARED (or python3) print SKIP when absent.
# Prints "N passed, N failed, N skipped" last; exits non-zero on any failure.

. "$(dirname "$0")/lib.sh"
MIX=$SHARED/models/synthetic/tiny-mixtral.f32.gguf
STORIES=$SHARED/models/real/stories260K.gguf

# ---- usage errors (no data needed) ----
expect_exit "emoe without -m" 2 "-m MODEL is required" -- emoe --experts 4 --top-k 2 -o "$tmp/x.gguf"
expect_exit "emoe without --experts" 2 "--experts N and --top-k K" -- emoe -m x.gguf -o "$tmp/x.gguf"
expect_exit "emoe top-k > experts" 2 "exceeds" -- emoe -m x.gguf --experts 4 --top-k 5 -o "$tmp/x.gguf"
expect_exit "emoe bad option" 2 "" -- emoe --bogus
expect_exit "bricks without -m" 2 "-m MODEL is required" -- bricks
expect_exit "bricks op without -o" 2 "need -o" -- bricks -m x.gguf --prune 0:1
expect_exit "bricks bad merge" 2 "bad --merge" -- bricks -m x.gguf --merge 0:1 -o "$tmp/x.gguf"
expect_exit "bricks bad grow" 2 "bad --grow" -- bricks -m x.gguf --grow 0:1,2 -o "$tmp/x.gguf"
expect_exit "bricks bad kind" 2 "bad --kind" -- bricks -m x.gguf --kind heads
expect_exit "bricks disable with -o" 2 "run-time ban" -- bricks -m x.gguf --disable 0:1 -o "$tmp/x.gguf"
expect_ok "emoe --help" "usage: moe-studio emoe" -- emoe --help
expect_ok "bricks --help" "usage: moe-studio bricks" -- bricks --help

if [ ! -f "$STORIES" ] || [ ! -f "$MIX" ]; then
    skipped "model checks: $SHARED/models absent"
    finish
fi

cat >"$tmp/text.txt" <<'EOF'
Once upon a time, there was a little dog named Max. Max liked to run in the
park with his friend Sue. One day, Sue found a big stick and threw it far.
Max ran and ran, but he could not find the stick. He was sad. Then a bird
said, "Look under the tree!" Max looked and saw the stick. He was so happy.
EOF
printf 'Once upon a time.' >"$tmp/short.txt"

# ---- EMoE ----
expect_exit "emoe on an MoE model" 1 "already has 8 experts" -- emoe -m "$MIX" --experts 4 --top-k 2 -o "$tmp/x.gguf"
expect_exit "emoe bad layers" 2 "bad --layers" -- emoe -m "$STORIES" --experts 4 --top-k 2 --layers 0,9 -o "$tmp/x.gguf"
expect_ok "emoe N=8 K=8" "5 of 5 layers -> 8 experts of 22 rows \\(n_ff 172, 4 padding rows\\)" -- \
    emoe -m "$STORIES" --experts 8 --top-k 8 -o "$tmp/e8.gguf"
expect_ok "emoe model info" "n_expert +8" -- info -m "$tmp/e8.gguf"
expect_ok "emoe layers subset" "2 of 5 layers" -- \
    emoe -m "$STORIES" --experts 8 --top-k 2 --layers 1,3 -o "$tmp/e8k2.gguf"
if "$BIN" perplexity --help >/dev/null 2>&1; then
    "$BIN" perplexity -m "$STORIES" -f "$tmp/text.txt" --json >"$tmp/pd" 2>/dev/null
    "$BIN" perplexity -m "$tmp/e8.gguf" -f "$tmp/text.txt" --json >"$tmp/pe" 2>/dev/null
    "$BIN" perplexity -m "$tmp/e8k2.gguf" -f "$tmp/text.txt" --json >"$tmp/pk" 2>/dev/null
    if [ "$have_python" = yes ]; then
        if python3 - "$tmp/pd" "$tmp/pe" "$tmp/pk" <<'EOF'
import json, sys
d, e, k = (json.load(open(p)) for p in sys.argv[1:4])
pd, pe, pk = d["perplexity"], e["perplexity"], k["perplexity"]
assert abs(pd - pe) <= 1e-4 * pd, (pd, pe)
assert pk > pd * 1.001, (pd, pk)   # K < N on two layers is a different model
EOF
        then ok "emoe K=N perplexity equals dense, K<N differs"
        else bad "emoe perplexity: $(cat "$tmp/pd" "$tmp/pe" "$tmp/pk" | head -c 400)"; fi
    else
        skipped "emoe perplexity: no python3"
    fi
else
    skipped "emoe perplexity: no perplexity command"
fi
expect_ok "bricks on EMoE model names groups" "blk\\.1\\.emoe\\.0 " -- \
    bricks -m "$tmp/e8k2.gguf" --kind expert --text "$tmp/text.txt"

# ---- listing ----
expect_ok "bricks list" "^blk\\.0\\.head\\.3 +head " -- bricks -m "$MIX"
expect_ok "bricks list with load" "^blk\\.2\\.expert\\.7 +expert .* [0-9]+ +0\\.[0-9]+" -- \
    bricks -m "$MIX" --kind expert --text "$tmp/text.txt"
run_bin bricks -m "$MIX" --json --text "$tmp/text.txt"
if [ "$rc" -ne 0 ]; then
    bad "bricks --json: exit $rc"
elif [ "$have_python" = yes ]; then
    if python3 - "$tmp/out" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
b = j["bricks"]
assert j["n_bricks"] == len(b) == 3 * (1 + 4 + 8), len(b)
ex = [x for x in b if x["kind"] == "expert"]
assert len(ex) == 24
for il in range(3):
    loads = [x["load"] for x in ex if x["layer"] == il]
    assert sum(loads) == 2 * j["text_tokens"], (il, loads, j["text_tokens"])
    assert all(sum(t["count"] for t in x["top_tokens"]) <= x["load"] for x in ex)
EOF
    then ok "bricks --json parses, loads add up to k * tokens"
    else bad "bricks --json content"; fi
else
    skipped "bricks --json: no python3"
fi
expect_ok "bricks --disable shows load 0" "^blk\\.1\\.expert\\.3 +expert .* 0 +0\\.0000" -- \
    bricks -m "$MIX" --kind expert --text "$tmp/text.txt" --disable 1:3

# ---- edits ----
expect_ok "prune-unused keeps logits" "8 -> 7 experts.*" -- \
    bricks -m "$MIX" --prune-unused "$tmp/short.txt" --text "$tmp/short.txt" -o "$tmp/p.gguf"
if grep -Eq "max \\|logit difference\\| ([0-9.]+e-0[6-9]|0)$" "$tmp/out"; then
    ok "prune-unused: max |dlogit| < 1e-5"
else
    bad "prune-unused: $(tail -n 1 "$tmp/out")"
fi
expect_ok "pruned model reloads" "n_expert +7" -- info -m "$tmp/p.gguf"
expect_ok "grow + merge back is the original" "max \\|logit difference\\| 0$" -- \
    bricks -m "$MIX" --grow '*:3:0' --merge '*:3,8' --text "$tmp/text.txt" -o "$tmp/gm.gguf"
expect_ok "grow with noise" "8 -> 9 experts" -- \
    bricks -m "$MIX" --grow '*:2:0.05' --seed 3 -o "$tmp/g.gguf"
expect_ok "prune-least" "8 -> 6 experts" -- \
    bricks -m "$MIX" --prune-least "2:$tmp/text.txt" -o "$tmp/pl.gguf"
expect_exit "one layer merged cannot be saved" 1 "one expert count" -- \
    bricks -m "$MIX" --merge 1:0,1:0.3,0.7 -o "$tmp/x.gguf"
expect_exit "prune out of range" 1 "out of range" -- bricks -m "$MIX" --prune '*:8' -o "$tmp/x.gguf"
expect_exit "bricks on a dense model" 1 "no routed experts" -- \
    bricks -m "$STORIES" --prune '*:0' -o "$tmp/x.gguf"

finish
