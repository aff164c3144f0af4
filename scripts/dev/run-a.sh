#!/usr/bin/env bash
# One device call: full benchmark, host-overhead parts, quick tune with/without EVICT.
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 scripts/dev/overhead.py 2>&1 | tee $OUT/overhead.txt
python3 scripts/tune.py --quick 2>&1 | tee $OUT/tune.txt
scripts/gpu-check --bench-only 2>&1 | tail -80
