#!/usr/bin/env bash
# Session 6, call 8: program sizes under the q-major rule (8 KB programs, 2-warp 4 KB programs) and two
# decode rule variants, against the rule, beside Liger.
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev:/tmp/site
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl 2>/dev/null
timeout 280 python3 scripts/dev/variants.py new=src/rope_triton/_kernels.py --shapes llama3-8b,llama2-7b,d64,decode \
  --cfg llama3-8b:num_warps=2 --cfg llama3-8b:BLOCK_T=2,BLOCK_T_K=4,num_warps=8 \
  --cfg llama2-7b:num_warps=2 --cfg llama2-7b:BLOCK_T=2,BLOCK_T_K=2,num_warps=8 \
  --cfg d64:num_warps=2 --cfg d64:BLOCK_T=4,BLOCK_T_K=4,num_warps=8 \
  --cfg decode:BLOCK_H=16 --cfg decode:num_warps=2 --cfg decode:BLOCK_H=16,num_warps=8 \
  --providers liger 2>&1 | grep -v "^Backend" > $OUT/variants-size.txt
cat $OUT/variants-size.txt
