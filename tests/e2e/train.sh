#!/bin/sh
# train.sh - end-to-end tests of `moe-studio train`: a BPE vocabulary, a new
# MoE model trained a few steps (progress, validation, routing lines), the
# engine running the checkpoint, resuming equal to an unbroken run byte for
# byte, training one brick, growing an expert, m2mKD distillation, a q8_0
# export, the default-model lookup, and one-line errors.
#
# Environment (set by `make check`): MOE_BIN, MOE_SRCDIR. Needs no ../shared.
# Prints "N passed, N failed, N skipped" last; exits non-zero on any failure.

. "$(dirname "$0")/lib.sh"

# a small text: a few verses, repeated with variations, chapters apart
i=0
: >"$tmp/text.txt"
while [ $i -lt 30 ]; do
    cat >>"$tmp/text.txt" <<EOF
In the beginning God created the heaven and the earth, and day $i was good.
And the earth was without form, and void; and darkness was upon the face of the deep.
And God said, Let there be light: and there was light.
And God saw the light, that it was good: and God divided the light from the darkness.

EOF
    i=$((i + 1))
done

COMMON="--text $tmp/text.txt --doc-bos --n-embd 32 --n-layer 2 --n-head 4 --n-head-kv 2
  --n-expert 4 --top-k 2 --n-ff-exp 32 --ctx 32 --batch 4 --threads 1 --seed 3 --log-every 5"

# 1. vocabulary
run_bin train --bpe-only 300 --text "$tmp/text.txt" -o "$tmp/vocab.gguf"
if [ "$rc" -eq 0 ] && [ -s "$tmp/vocab.gguf" ]; then ok "bpe vocabulary"; else bad "bpe vocabulary ($(cat "$tmp/err"))"; fi

# 2. a new model, 30 steps
# shellcheck disable=SC2086
run_bin train --vocab "$tmp/vocab.gguf" $COMMON --steps 30 -o "$tmp/a.gguf" --balance 0.01 --zloss 0.001 --mi 0.01
if [ "$rc" -eq 0 ] && grep -q "^step 30/30  loss .* tok/s .* ETA" "$tmp/err" &&
    grep -q "^validation: ce .* perplexity" "$tmp/out" && grep -q "^  layer 1:" "$tmp/out" &&
    [ -s "$tmp/a.gguf" ] && [ -s "$tmp/a.gguf.opt" ]; then
    ok "train 30 steps: progress, validation, routing, checkpoint"
else
    bad "train 30 steps (rc $rc: $(tail -3 "$tmp/err"))"
fi
first=$(grep "^step 5/30" "$tmp/err" | sed 's/.* ce \([0-9.]*\).*/\1/')
last=$(grep "^step 30/30" "$tmp/err" | sed 's/.* ce \([0-9.]*\).*/\1/')
if [ -n "$first" ] && [ -n "$last" ] && awk "BEGIN { exit !($last < $first - 0.5) }"; then
    ok "loss falls ($first -> $last)"
else
    bad "loss falls ($first -> $last)"
fi

# 3. the engine runs it
run_bin run -m "$tmp/a.gguf" -n 12 --temp 0 -p "And God"
if [ "$rc" -eq 0 ] && [ -s "$tmp/out" ]; then ok "engine runs the checkpoint"; else bad "engine runs the checkpoint ($(cat "$tmp/err"))"; fi
run_bin info -m "$tmp/a.gguf"
if [ "$rc" -eq 0 ] && grep -q "llama" "$tmp/out"; then ok "info on the checkpoint"; else bad "info on the checkpoint"; fi

# 4. resume: 15 + 15 steps == 30 steps, byte for byte
# shellcheck disable=SC2086
run_bin train --vocab "$tmp/vocab.gguf" $COMMON --steps 30 -o "$tmp/b.gguf" --balance 0.01 --zloss 0.001 --mi 0.01 --warmup 3
# shellcheck disable=SC2086
run_bin train --vocab "$tmp/vocab.gguf" $COMMON --steps 30 -o "$tmp/c.gguf" --balance 0.01 --zloss 0.001 --mi 0.01 --warmup 3 --stop-at 15
rc1=$rc
# shellcheck disable=SC2086
run_bin train -m "$tmp/c.gguf" $COMMON --steps 30 -o "$tmp/c.gguf"
if [ "$rc1" -eq 0 ] && [ "$rc" -eq 0 ] && grep -q "now at step 30$" "$tmp/out" &&
    cmp -s "$tmp/b.gguf" "$tmp/c.gguf"; then
    ok "resumed run equals the unbroken one"
else
    bad "resumed run equals the unbroken one (rc $rc1/$rc: $(tail -2 "$tmp/err"))"
fi

# 5. bricks: one expert
# shellcheck disable=SC2086
run_bin train -m "$tmp/a.gguf" $COMMON --steps 40 -o "$tmp/d.gguf" --train-only blk.1.expert.2
if [ "$rc" -eq 0 ] && grep -q "(3072 trainable)" "$tmp/err"; then ok "train one expert"; else bad "train one expert ($(head -3 "$tmp/err"))"; fi

# 6. grow
# shellcheck disable=SC2086
run_bin train -m "$tmp/a.gguf" $COMMON --steps 40 -o "$tmp/e.gguf" --grow 1:0.05
if [ "$rc" -eq 0 ] && grep -q "(6208 trainable)" "$tmp/err" &&
    "$BIN" info -m "$tmp/e.gguf" 2>/dev/null | grep -q "^n_expert  *5$"; then
    ok "grow to 5 experts, only the new one trained"
else
    bad "grow ($(tail -2 "$tmp/err"))"
fi

# 7. distillation: the dense teacher's layer-1 FFN into expert 0 of layer 0
# shellcheck disable=SC2086
run_bin train --vocab "$tmp/vocab.gguf" --text "$tmp/text.txt" --n-embd 32 --n-layer 2 --n-head 4 \
    --n-expert 0 --n-ff 64 --ctx 32 --steps 5 --threads 1 -o "$tmp/teacher.gguf"
rc1=$rc
# shellcheck disable=SC2086
run_bin train -m "$tmp/a.gguf" $COMMON --steps 60 -o "$tmp/f.gguf" --lr 1e-2 \
    --distill-from "$tmp/teacher.gguf" --distill-layer 0:1 --distill-expert 0
if [ "$rc1" -eq 0 ] && [ "$rc" -eq 0 ] && grep -q "^distilled layer 0 expert 0" "$tmp/out"; then
    ok "m2mKD distillation"
else
    bad "m2mKD distillation ($(tail -2 "$tmp/err"))"
fi

# 7b. EMoE: split the dense teacher's layer 1 (moe-studio emoe), fine-tune
# the split layer with unweighted gating; the file keeps its gating key
if "$BIN" emoe --help >/dev/null 2>&1; then
    run_bin emoe -m "$tmp/teacher.gguf" --experts 4 --top-k 2 --layers 1 -o "$tmp/split.gguf"
    rc1=$rc
    # shellcheck disable=SC2086
    run_bin train -m "$tmp/split.gguf" --text "$tmp/text.txt" --ctx 32 --batch 4 --threads 1 \
        --steps 25 --train-only blk.1.ffn -o "$tmp/split-ft.gguf"
    if [ "$rc1" -eq 0 ] && [ "$rc" -eq 0 ] && grep -q "^  layer 1:" "$tmp/out" &&
        ! grep -q "^  layer 0:" "$tmp/out" &&
        "$BIN" info -m "$tmp/split-ft.gguf" 2>/dev/null | grep -q "^n_expert  *4$" &&
        grep -q "emoe-unweighted" "$tmp/split-ft.gguf"; then
        ok "EMoE split model fine-tuned (dense + unweighted MoE layers)"
    else
        bad "EMoE fine-tune (rc $rc1/$rc: $(tail -2 "$tmp/err"))"
    fi
else
    skip=$((skip + 1))
    echo "SKIP: EMoE fine-tune: no emoe command"
fi

# 8. q8_0 export
# shellcheck disable=SC2086
run_bin train -m "$tmp/a.gguf" $COMMON --steps 30 -o "$tmp/g.gguf" --export "$tmp/g8.gguf" --export-type q8_0
if [ "$rc" -eq 0 ] && "$BIN" info -m "$tmp/g8.gguf" | grep -q "q8_0"; then ok "q8_0 export"; else bad "q8_0 export"; fi

# 9. errors: one line each
expect_err "no text" "no training text" -- train -o "$tmp/x.gguf"
expect_err "no vocabulary" "vocab" -- train --text "$tmp/text.txt" -o "$tmp/x.gguf"
expect_err "bad brick" "brick" -- train -m "$tmp/a.gguf" --text "$tmp/text.txt" -o "$tmp/x.gguf" --train-only blk.7
expect_err "bad export type" "export-type" -- train --export-type q4_0 --text "$tmp/text.txt" -o "$tmp/x.gguf"
expect_err "bad shape" "n_head" -- train --vocab "$tmp/vocab.gguf" --text "$tmp/text.txt" -o "$tmp/x.gguf" --n-head 3
expect_err "missing model" "cannot|No such|open" -- train -m "$tmp/none.gguf" --text "$tmp/text.txt" -o "$tmp/x.gguf"

# 10. the committed default model loads and writes English
DEF="$SRC/models/kjv-moe.gguf"
if [ -s "$DEF" ]; then
    run_bin run -m "$DEF" -n 24 --temp 0 -p "And the LORD"
    if [ "$rc" -eq 0 ] && grep -q "[a-z][a-z]* [a-z][a-z]* [a-z]" "$tmp/out"; then
        ok "default model writes text"
    else
        bad "default model writes text ($(cat "$tmp/err"))"
    fi
else
    skipped "default model: $DEF absent"
fi

finish
