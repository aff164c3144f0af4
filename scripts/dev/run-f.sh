#!/usr/bin/env bash
# Session 3, final device call: kernel variants against copies, then run-final.sh (suite, full benchmark
# with Liger, decode host overhead).
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
PYTHONPATH=src python3 scripts/dev/ceiling.py --shapes llama3-8b,llama2-7b,long-32k,d64,fp32,fp32-b4,decode \
    > "$OUT/ceiling.txt" 2>&1; echo "ceiling rc $?"
sed -E 's/ +\([0-9. /]*\)$//' "$OUT/ceiling.txt" | sed -E "s/\{'BLOCK_HALF.*\}//" | cut -c1-100
scripts/dev/run-final.sh
