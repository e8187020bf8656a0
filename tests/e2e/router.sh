#!/bin/sh
# router.sh - end-to-end tests of `moe-studio route-stats` and
# `moe-studio perplexity`: usage, one-line errors with the right exit codes
# on bad input, readable tables, JSON that parses and adds up, and the
# routing options changing perplexity (capacity, rectify, ban, top-k).
#
# Environment (set by `make check`): MOE_BIN (the binary), MOE_SHARED (the
# reference data, default ../shared). Checks that need MOE_SHARED (or
# python3) print a SKIP line when it is absent.
# Prints "N passed, N failed, N skipped" last; exits non-zero on any failure.

. "$(dirname "$0")/lib.sh"
MIX=$SHARED/models/synthetic/tiny-mixtral.f32.gguf
OLMOE=$SHARED/models/synthetic/tiny-olmoe.f32.gguf
STORIES=$SHARED/models/real/stories260K.gguf

ERR_PREFIX='^moe-studio (perplexity|route-stats): '
require_bin

# ---- usage and errors that need no model ------------------------------------
expect_ok "usage lists route-stats" '^  route-stats ' --
expect_ok "usage lists perplexity" '^  perplexity ' --
expect_ok "perplexity --help" 'usage: moe-studio perplexity' -- perplexity --help
expect_ok "perplexity --help lists rectify" '--rectify MODE' -- perplexity --help
expect_ok "route-stats --help" 'usage: moe-studio route-stats' -- route-stats --help
expect_exit "perplexity without -m" 2 "-m MODEL" -- perplexity -f x.txt
expect_exit "perplexity without -f" 2 "-f FILE" -- perplexity -m x.gguf
expect_exit "route-stats without -f" 2 "-f FILE" -- route-stats -m x.gguf
expect_exit "perplexity: unknown option" 2 "--frob" -- perplexity --frob
expect_exit "perplexity: option missing its value" 2 "--capacity" -- perplexity -m x --capacity
expect_exit "perplexity: bad --rectify" 2 "rectify.*sideways" -- perplexity -m x -f y --rectify sideways
expect_exit "perplexity: bad --drop" 2 "--drop" -- perplexity -m x -f y --drop random
expect_exit "perplexity: bad --ban" 2 "--ban.*x:1" -- perplexity -m x -f y --ban x:1
expect_exit "perplexity: --ban without an expert" 2 "--ban" -- perplexity -m x -f y --ban 1
expect_exit "perplexity: bad --scale" 2 "--scale" -- perplexity -m x -f y --scale '*:1'
expect_exit "perplexity: --top-k 0" 2 "--top-k" -- perplexity -m x -f y --top-k 0
expect_exit "perplexity: --router-temp 0" 2 "--router-temp" -- perplexity -m x -f y --router-temp 0
expect_exit "perplexity: negative capacity" 2 "--capacity" -- perplexity -m x -f y --capacity -1
expect_exit "route-stats: --layer not a number" 2 "--layer" -- route-stats -m x -f y --layer two
expect_exit "perplexity: missing text file" 1 "nope\.txt" -- perplexity -m x.gguf -f "$tmp/nope.txt"
printf 'In the beginning God created the heaven and the earth.\n' >"$tmp/short.txt"
expect_exit "perplexity: missing model" 1 "missing\.gguf" -- perplexity -m "$tmp/missing.gguf" -f "$tmp/short.txt"
expect_exit "route-stats: missing model" 1 "missing\.gguf" -- route-stats -m "$tmp/missing.gguf" -f "$tmp/short.txt"

if [ ! -f "$MIX" ] || [ ! -f "$OLMOE" ] || [ ! -f "$STORIES" ]; then
    skipped "perplexity/route-stats on models: $SHARED models absent (set MOE_SHARED)"
    finish
fi

# A text of a few hundred tokens, written here (no fixture file).
i=0
: >"$tmp/text.txt"
while [ $i -lt 12 ]; do
    printf 'And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. %d\n' $i >>"$tmp/text.txt"
    i=$((i + 1))
done
: >"$tmp/empty.txt"

# ---- errors that need a model -----------------------------------------------
expect_exit "perplexity: empty text" 1 "at least 2" -- perplexity -m "$MIX" -f "$tmp/empty.txt"
expect_exit "perplexity: routing on a dense model" 2 "dense" -- perplexity -m "$STORIES" -f "$tmp/text.txt" --ban '*:0'
expect_exit "perplexity: --ban layer out of range" 2 "--ban 7:0: layer 7" -- perplexity -m "$MIX" -f "$tmp/text.txt" --ban 7:0
expect_exit "perplexity: --force expert out of range" 2 "expert 8" -- perplexity -m "$MIX" -f "$tmp/text.txt" --force '*:8'
expect_exit "perplexity: --top-k above n_expert" 2 "--top-k 9" -- perplexity -m "$MIX" -f "$tmp/text.txt" --top-k 9
expect_exit "perplexity: too many devices" 2 "devices" -- perplexity -m "$MIX" -f "$tmp/text.txt" --capacity 1 --devices 9
expect_exit "route-stats: dense model" 2 "dense" -- route-stats -m "$STORIES" -f "$tmp/text.txt"
expect_exit "route-stats: --layer out of range" 2 "--layer 3" -- route-stats -m "$MIX" -f "$tmp/text.txt" --layer 3

# ---- perplexity -----------------------------------------------------------
expect_ok "perplexity of a dense model" '^perplexity +[0-9]+\.[0-9]+' -- perplexity -m "$STORIES" -f "$tmp/text.txt"
expect_ok "perplexity table" '^routed 0 +dropped 0' -- perplexity -m "$MIX" -f "$tmp/text.txt" -t 1
expect_ok "perplexity with capacity" 'dropped [1-9]' -- perplexity -m "$MIX" -f "$tmp/text.txt" --capacity 0.5 --rectify ir -t 1

if [ "$have_python" != yes ]; then
    skipped "perplexity/route-stats --json checks: python3 absent"
else
    ppl() { # ppl NAME ARGS... -> $tmp/NAME.json
        name=$1
        shift
        "$BIN" perplexity -m "$MIX" -f "$tmp/text.txt" -t 1 --batch 64 --json "$@" >"$tmp/$name.json" 2>"$tmp/err" ||
            bad "perplexity $name: $(cat "$tmp/err")"
    }
    ppl base
    ppl huge --capacity 1000
    ppl small --capacity 0.5
    ppl ir --capacity 0.5 --rectify ir --devices 2
    ppl fr --capacity 0.5 --rectify fr --drop score
    ppl both --capacity 0.5 --rectify both
    ppl ban --ban '*:0' --ban 1:3
    ppl topk --top-k 4
    ppl steer --router-temp 2 --scale '*:2:0.5' --force 0:1
    if python3 - "$tmp" >"$tmp/py" 2>&1 <<'EOF'
import json, sys, os
d = sys.argv[1]
r = {n: json.load(open(os.path.join(d, n + ".json")))
     for n in ("base", "huge", "small", "ir", "fr", "both", "ban", "topk", "steer")}
errs = []
b = r["base"]
for k in ("perplexity", "nll_mean", "n_tokens", "n_scored", "counters", "capacity"):
    if k not in b:
        errs.append("missing " + k)
if b["n_scored"] != b["n_tokens"] - b["n_chunks"]:
    errs.append("n_scored %d != tokens - chunks" % b["n_scored"])
if not (1 < b["perplexity"] < 1e6):
    errs.append("implausible perplexity %r" % b["perplexity"])
if r["huge"]["perplexity"] != b["perplexity"]:
    errs.append("capacity 1000 changed perplexity")
if r["huge"]["counters"]["dropped"] != 0:
    errs.append("capacity 1000 dropped")
for n in ("small", "ir", "fr", "both"):
    c = r[n]["counters"]
    if c["dropped"] <= 0:
        errs.append(n + ": nothing dropped")
    if r[n]["perplexity"] == b["perplexity"]:
        errs.append(n + ": perplexity unchanged")
    if c["filled"] > c["padded"] or c["rerouted"] > c["dropped"]:
        errs.append(n + ": inconsistent counters %r" % c)
    if c["routed"] != r["small"]["counters"]["routed"]:
        errs.append(n + ": routed differs")
if r["small"]["counters"]["rerouted"] or r["small"]["counters"]["filled"]:
    errs.append("plain drop rerouted or filled")
if r["ir"]["counters"]["rerouted"] <= 0 or r["ir"]["counters"]["filled"]:
    errs.append("ir counters %r" % r["ir"]["counters"])
if r["fr"]["counters"]["filled"] <= 0 or r["fr"]["counters"]["rerouted"]:
    errs.append("fr counters %r" % r["fr"]["counters"])
c = r["both"]["counters"]
if c["filled"] <= 0 or c["rerouted"] != c["dropped"]:
    errs.append("both counters %r" % c)
if r["small"]["capacity"]["rectify"] != "none" or r["fr"]["capacity"]["drop"] != "score":
    errs.append("capacity echo wrong")
for n in ("ban", "topk", "steer"):
    if r[n]["perplexity"] == b["perplexity"]:
        errs.append(n + ": perplexity unchanged")
print("; ".join(errs))
sys.exit(1 if errs else 0)
EOF
    then ok "perplexity --json: capacity/rectify/steering change outputs, counters consistent"
    else bad "perplexity --json: $(cat "$tmp/py")"
    fi

    # ---- route-stats --json -------------------------------------------------
    run_bin route-stats -m "$OLMOE" -f "$tmp/text.txt" -t 1 --json -n 6 --top 3
    if [ "$rc" -ne 0 ]; then
        bad "route-stats --json: exit $rc: $(head -n 2 "$tmp/err")"
    elif python3 - "$tmp/out" >"$tmp/py" 2>&1 <<'EOF'
import json, sys, math
o = json.load(open(sys.argv[1]))
errs = []
E, k = o["n_expert"], o["top_k"]
if o["n_decode"] != 6:
    errs.append("n_decode %r" % o["n_decode"])
for ph in ("prefill", "decode"):
    layers = o["phases"][ph]["layers"]
    if len(layers) != o["n_layer"]:
        errs.append("%s: %d layers" % (ph, len(layers)))
    for L in layers:
        ex = L["experts"]
        if len(ex) != E:
            errs.append("experts %d" % len(ex))
        if sum(e["load"] for e in ex) != L["n_assign"] or L["n_assign"] != L["n_tokens"] * k:
            errs.append("loads do not add up at layer %d" % L["layer"])
        if abs(sum(e["load_frac"] for e in ex) - 1) > 1e-9:
            errs.append("load fractions do not sum to 1")
        if abs(L["mi"] - (L["h_marg"] - L["h_cond"])) > 1e-9 or L["mi"] < -1e-9:
            errs.append("mi inconsistent")
        if L["h_marg"] > math.log(E) + 1e-9:
            errs.append("H(e) above log E")
        co = L["coact"]
        for a in range(E):
            if co[a][a] != ex[a]["load"]:
                errs.append("coact diagonal != load")
                break
            if sum(co[a][b] for b in range(E) if b != a) != ex[a]["load"] * (k - 1):
                errs.append("coact row sum != load*(k-1)")
                break
        for e in ex:
            tt = e["top_tokens"]
            if len(tt) > 3 or any(tt[i]["count"] < tt[i + 1]["count"] for i in range(len(tt) - 1)):
                errs.append("top tokens not sorted or too many")
                break
            if e["load"] > 0 and not tt:
                errs.append("loaded expert without top tokens")
                break
if o["n_prefill"] + o["n_decode"] < 100:
    errs.append("too few tokens")
print("; ".join(sorted(set(errs))))
sys.exit(1 if errs else 0)
EOF
    then ok "route-stats --json parses and adds up (loads, fractions, MI, co-activation)"
    else bad "route-stats --json: $(cat "$tmp/py")"
    fi
fi

# ---- route-stats tables -----------------------------------------------------
expect_ok "route-stats table" '^layer 0 \[prefill\] +tokens [0-9]+ +cv2\(load\)' -- route-stats -m "$MIX" -f "$tmp/text.txt" -t 1
expect_ok "route-stats --layer prints co-activation" 'co-activation' -- route-stats -m "$MIX" -f "$tmp/text.txt" -t 1 --layer 1 -n 4
if grep -q '^layer 0 ' "$tmp/out"; then bad "route-stats --layer 1 printed layer 0"; else ok "route-stats --layer 1 prints only layer 1"; fi
if grep -q '^layer 1 \[decode\]' "$tmp/out"; then ok "route-stats -n prints the decode phase"; else bad "route-stats -n: no decode phase"; fi

finish
