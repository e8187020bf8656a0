#!/bin/sh
# train-default.sh - the exact recipe of the embedded default model,
# models/kjv-moe.gguf: a 6-layer MoE (n_embd 128, 4 heads / 2 KV heads,
# 8 experts top-2 of width 128, 2048-token byte-level BPE, context 256)
# trained by `moe-studio train` on the King James Bible from Debian's
# bible-kjv package (public domain), exported as f16 (about 6 MB).
#
# usage: scripts/train-default.sh [OUT.gguf]      (default models/kjv-moe.gguf)
# env:   MOE_BIN (default ./moe-studio), WORK (default train-default.d),
#        STEPS (default 4000; the committed model says in its
#        moestudio.train.step key how many it had)
#
# Needs: apt-get install bible-kjv. Deterministic: fixed seed, one BLAS
# thread (thread counts change float summation order). Resumable: if
# $WORK/kjv-moe.ckpt.gguf exists, training continues from it (optimizer
# state in .opt beside it; batches depend only on seed and step, so a
# resumed run matches an unbroken one). The committed model took 36 min
# (2184 s, 3751 tokens/s, nice 19 on a 2-core machine shared with other
# work): 4000 steps x 8 x 256 = 8.19 M tokens (~7.5 epochs); validation
# cross-entropy 3.703 (perplexity 40.6) on the held-out tail. A rerun
# (interrupted at step 250 and resumed) took ~30 min at ~4,600 tokens/s and
# reproduced the committed file byte for byte.
set -eu

BIN=${MOE_BIN:-./moe-studio}
OUT=${1:-models/kjv-moe.gguf}
WORK=${WORK:-train-default.d}
STEPS=${STEPS:-4000}
mkdir -p "$WORK"

# 1. the corpus: one verse per line, chapters separated by a blank line;
#    chapter headings ("Genesis 1") and verse numbers stripped, wrapped
#    lines joined.
if [ ! -s "$WORK/kjv.txt" ]; then
    command -v bible >/dev/null 2>&1 || {
        echo "train-default.sh: the 'bible' program is missing (apt-get install bible-kjv)" >&2
        exit 1
    }
    bible "Gen1:1-Rev22:21" | awk '
        function flush() { if (verse != "") { print verse; verse = "" } }
        {
            line = $0
            if (line == "") { blank = 1; next }
            if (blank && line ~ /^[1-3]? ?[A-Za-z][A-Za-z ]* [0-9]+$/) {
                flush(); if (nch++) print ""; blank = 0; next
            }
            blank = 0
            if (line ~ /^ *[0-9]+ /) { flush(); sub(/^ *[0-9]+ /, "", line); verse = line }
            else verse = verse " " line
        }
        END { flush() }' >"$WORK/kjv.txt.tmp"
    mv "$WORK/kjv.txt.tmp" "$WORK/kjv.txt"
fi

# 2. the vocabulary: 2048 byte-level BPE tokens learned on the corpus
if [ ! -s "$WORK/kjv-vocab.gguf" ]; then
    "$BIN" train --bpe-only 2048 --text "$WORK/kjv.txt" -o "$WORK/kjv-vocab.gguf"
fi

# 3. the model (resumes from the checkpoint when there is one)
CKPT="$WORK/kjv-moe.ckpt.gguf"
if [ -s "$CKPT" ]; then
    FROM="-m $CKPT"
else
    FROM="--vocab $WORK/kjv-vocab.gguf"
fi
# shellcheck disable=SC2086
"$BIN" train $FROM --text "$WORK/kjv.txt" --doc-bos --val-frac 0.05 \
    --name "kjv-moe" --seed 1 \
    --n-embd 128 --n-layer 6 --n-head 4 --n-head-kv 2 \
    --n-expert 8 --top-k 2 --n-ff-exp 128 --ctx 256 \
    --steps "$STEPS" --batch 8 --lr 3e-3 --lr-min 3e-4 --warmup 200 \
    --wd 0.1 --clip 1.0 --beta2 0.95 \
    --balance 0.01 --zloss 0.001 --mi 0.01 \
    --threads 1 --log-every 50 --eval-every 500 --eval-windows 64 \
    --save-every 250 -o "$CKPT" --export "$OUT" --export-type f16
