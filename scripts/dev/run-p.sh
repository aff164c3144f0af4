#!/usr/bin/env bash
# Session 7, call 5: llama2-7b (k as wide as q) ran 97.9-98.2% of a copy on this session's machines
# (98.7-98.9 in session 6's two runs): program shapes of the same bytes, k programs of 2 tokens, table hints,
# the old order; llama3-8b's q programs as 2 tokens x 8 heads.
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev
OUT=${OUT:-out}; export OUT
timeout 300 python3 scripts/dev/variants.py new=src/rope_triton/_kernels.py --shapes llama2-7b,llama3-8b --repeats 3 \
  --cfg llama2-7b:BLOCK_T_K=2 --cfg llama2-7b:BLOCK_T=2,BLOCK_H=8,BLOCK_T_K=2,BLOCK_H_K=8 \
  --cfg llama2-7b:BLOCK_T=2,BLOCK_H=8,BLOCK_T_K=4,BLOCK_H_K=8 --cfg llama2-7b:TABLE_EVICT= \
  --cfg llama2-7b:QK_MAJOR=False --cfg llama2-7b:BLOCK_H=8,BLOCK_H_K=8,num_warps=2 \
  --cfg llama3-8b:BLOCK_T=2,BLOCK_H=8 \
  > $OUT/variants-llama2.txt 2>&1
grep -v "^Backend" $OUT/variants-llama2.txt
