#!/usr/bin/env bash
# Session 6, call 2: q-major order (every q program, then every k program) against the session-5 kernel.
# old = session-5 kernel (k_old.py, interleaved chunks); new = src. Per shape: the rule, the old rule
# (interleaved, 16 heads x 1 token) and for GQA shapes k programs with their own shape (kblocks).
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev:/tmp/site
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
OLD="QK_MAJOR=False,BLOCK_H=16,BLOCK_T=1"
KB="BLOCK_H=16,BLOCK_T=1,BLOCK_T_K=2,BLOCK_H_K=8"
timeout 300 python3 scripts/dev/variants.py old=scripts/dev/experiments/k_old.py new=src/rope_triton/_kernels.py \
  --shapes llama3-8b,long-32k,llama2-7b,d64,fp32,varlen,decode \
  --cfg llama3-8b:$OLD --cfg llama3-8b:$KB --cfg long-32k:$OLD --cfg long-32k:$KB \
  --cfg llama2-7b:$OLD --cfg d64:QK_MAJOR=False,BLOCK_H=16,BLOCK_T=2 --cfg fp32:QK_MAJOR=False,BLOCK_H=8,BLOCK_T=1 \
  --providers liger > $OUT/variants-qk.txt 2>&1
grep -v "^Backend" $OUT/variants-qk.txt
timeout 200 python3 -m pytest tests -q -n 8 -p no:cacheprovider > $OUT/pytest.log 2>&1; tail -3 $OUT/pytest.log
