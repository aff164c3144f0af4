#!/usr/bin/env bash
# Session 7, last call: the final run (suite, full benchmark with Liger, host parts) at the session's last
# kernel, and the HF drop-in's per-row path after it stopped making views.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT
PYTHONPATH=src:scripts/dev timeout 120 python3 scripts/dev/hf_perbatch_probe.py > $OUT/hf-perbatch.txt 2>&1; cat $OUT/hf-perbatch.txt
bash scripts/dev/run-final.sh
