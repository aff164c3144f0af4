#!/usr/bin/env bash
# Session 3, verification: the GPU suite after the Python-side changes, decode host parts, decode bench rows.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT; mkdir -p "$OUT"
scripts/gpu-check --tests-only > "$OUT/gpu-check.txt" 2>&1; echo "tests rc $?"; tail -1 "$OUT/pytest.log"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.log" | head -10
PYTHONPATH=src python3 scripts/dev/overhead.py > "$OUT/overhead.txt" 2>&1
grep -E "^batch  64" "$OUT/overhead.txt" | head -16
PYTHONPATH=src python3 -m rope_triton.bench --shapes decode,decode-1 --providers rope-triton,rope-triton-inplace \
    --passes fwd --no-plot --out "$OUT/bench" > "$OUT/bench.log" 2>&1
grep -E "rope-triton" "$OUT/bench.log" | tail -4 | cut -c1-140
