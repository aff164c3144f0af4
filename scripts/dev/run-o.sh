#!/usr/bin/env bash
# Session 7, call 3: k programs of 2x / 4x the rule's tokens on GQA / MQA shapes, tables and computed cos/sin.
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev
OUT=${OUT:-out}; export OUT
timeout 400 python3 scripts/dev/kblock_probe.py > $OUT/kblock-probe.txt 2>&1
grep -v "^Backend" $OUT/kblock-probe.txt
