#!/usr/bin/env bash
# Session 6, call 3: computed cos/sin under the q-major rule (long-32k, llama3-8b), then the final run.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT
PYTHONPATH=src:scripts/dev timeout 150 python3 scripts/dev/freqs_probe.py --shapes long-32k,llama3-8b > $OUT/freqs-probe-qk.txt 2>&1
cat $OUT/freqs-probe-qk.txt
bash scripts/dev/run-final.sh
