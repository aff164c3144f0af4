#!/usr/bin/env bash
# Session 2, first device call: GPU suite (pending fixes), ncu profile of llama3-8b, decode host overhead.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}
scripts/gpu-check --tests-only > $OUT/gpu-check.txt 2>&1
cp out/pytest.log out/junit.xml $OUT/ 2>/dev/null
grep -E "^(FAILED|ERROR)" out/pytest.log | head -30
tail -1 out/pytest.log
scripts/dev/ncu.sh 2>&1 | tail -100
export PYTHONPATH=src
python3 scripts/dev/overhead.py 2>&1 | tee $OUT/overhead.txt | tail -24
