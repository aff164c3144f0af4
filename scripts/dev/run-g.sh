#!/usr/bin/env bash
# Session 3, last device call: the suite on CUDA, the full benchmark (carry .whl for Liger), decode host parts.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
scripts/dev/run-final.sh
