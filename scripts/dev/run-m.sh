#!/usr/bin/env bash
# Session 7, call 1: where llama3-8b's last ~2% go. gap_probe (fixed cost or share of the bytes?), then ncu
# on llama3-8b and llama2-7b beside a copy.
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev
OUT=${OUT:-out}; export OUT
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv,noheader
timeout 200 python3 scripts/dev/gap_probe.py > $OUT/gap-probe.txt 2>&1
grep -v "^Backend" $OUT/gap-probe.txt
timeout 300 bash scripts/dev/ncu.sh llama3-8b llama2-7b
