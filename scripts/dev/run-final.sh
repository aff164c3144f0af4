#!/usr/bin/env bash
# Final device call: the whole suite on CUDA, host probes, quick benchmark.
export PYTHONUNBUFFERED=1
scripts/gpu-check --tests-only > $OUT/gpu-check.txt 2>&1
cp out/pytest.log out/junit.xml $OUT/ 2>/dev/null
grep -E "^(FAILED|ERROR)" out/pytest.log | head -30
tail -1 out/pytest.log
export PYTHONPATH=src
python3 scripts/dev/bwd_probe.py 2>&1 | tee $OUT/bwd_probe.txt
python3 scripts/dev/overhead.py 2>&1 | grep -v part | tee $OUT/overhead.txt | tail -10
python3 -m rope_triton.bench --quick --out $OUT/bench > $OUT/bench.log 2>&1; tail -45 $OUT/bench.log
