#!/usr/bin/env bash
# Final device call of a session: whole suite on CUDA and the full benchmark (carry .whl for Liger; set
# ROPE_TRITON_GIT_COMMIT=$(git rev-parse HEAD) in the call: the device copy's .git is stale),
# then the decode host-overhead parts. gpu-check writes under $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT
scripts/gpu-check --full > $OUT/gpu-check.txt 2>&1
grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head -30
tail -1 $OUT/pytest.log
PYTHONPATH=src python3 scripts/dev/overhead.py > $OUT/overhead.txt 2>&1
grep -E "^batch  64" $OUT/overhead.txt | tail -11
grep -E "^│ [a-z0-9-]+ +│ [a-z0-9]+ +│ (rope-triton|liger|torch-compile|copy)" $OUT/gpu-check.txt | cut -c1-120 | awk 'NR%1==0' | head -120
tail -8 $OUT/gpu-check.txt
# The device returns a limited number of files: keep the results (csv, json, png) and the logs.
rm -f $OUT/junit.xml $OUT/gpu.txt
