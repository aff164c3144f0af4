#!/usr/bin/env bash
# Session 3, loads-first kernel: program-shape sweep (fwd/conj), then the suite, full benchmark, host parts.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
PYTHONPATH=src:scripts/dev python3 scripts/dev/probe_s3.py --sweep > "$OUT/sweep.txt" 2>&1; echo "sweep rc $?"
scripts/dev/run-final.sh > "$OUT/final.txt" 2>&1; echo "final rc $?"
tail -4 "$OUT/final.txt"
sed -E 's/ +set [01] +/ /' "$OUT/sweep.txt" | cut -c1-60
