#!/usr/bin/env bash
# Session 7, call 8: per-sequence cos/sin tables (TABLE_BATCH; the HF drop-in passes (B, S, R) tables as they
# are). GPU suite, the drop-in's per-row path old vs new (host and device), and the dense shapes beside the
# copy (2-D tables: the kernel's SASS differs only in constant-bank loads, offline_sass).
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT
scripts/gpu-check --tests-only > $OUT/gpu-check.txt 2>&1
grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head -20; tail -1 $OUT/pytest.log
PYTHONPATH=src:scripts/dev timeout 120 python3 scripts/dev/hf_perbatch_probe.py > $OUT/hf-perbatch.txt 2>&1; cat $OUT/hf-perbatch.txt
ROPE_TRITON_GIT_COMMIT=${ROPE_TRITON_GIT_COMMIT:-} scripts/gpu-check --bench-only --shapes llama3-8b,llama2-7b,d64,varlen,decode \
  --providers rope-triton,rope-triton-inplace > $OUT/bench-check.txt 2>&1
grep -E "^│ [a-z0-9-]+ +│ [a-z0-9]+ +│ (rope-triton|copy)" $OUT/bench-check.txt | cut -c1-110
rm -f $OUT/junit.xml $OUT/gpu.txt
