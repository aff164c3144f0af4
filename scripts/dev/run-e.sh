#!/usr/bin/env bash
# Session 3, second device call: split-program variants against copies, then the GPU suite.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
PYTHONPATH=src python3 scripts/dev/ceiling.py > "$OUT/ceiling.txt" 2>&1; echo "ceiling rc $?"
scripts/gpu-check --tests-only > "$OUT/gpu-check.txt" 2>&1; echo "tests rc $?"
tail -3 "$OUT/gpu-check.txt"
sed -E 's/ +\(.*\)$//' "$OUT/ceiling.txt" | cut -c1-100
