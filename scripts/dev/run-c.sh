#!/usr/bin/env bash
# Session 2, second device call: GPU suite, decode host overhead (new replay), kernel variants against
# copies (scripts/dev/ceiling.py), quick benchmark with Liger (carry .whl). gpu-check writes under $OUT.
export PYTHONUNBUFFERED=1
OUT=${OUT:-out}; export OUT
scripts/gpu-check --tests-only > $OUT/gpu-check.txt 2>&1
grep -E "^(FAILED|ERROR)" $OUT/pytest.log | head -30
tail -1 $OUT/pytest.log
export PYTHONPATH=src
python3 scripts/dev/overhead.py > $OUT/overhead.txt 2>&1; grep -v "^batch   1" $OUT/overhead.txt | tail -12
python3 scripts/dev/ceiling.py 2>&1 | tee $OUT/ceiling.txt
scripts/gpu-check --bench-only --quick > $OUT/bench.txt 2>&1; tail -40 $OUT/bench.txt
