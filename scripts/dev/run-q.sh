#!/usr/bin/env bash
# Session 7, call 6: llama2-7b ran 98.7 / 98.9% with 2 KB programs at 2 warps (8 heads) against 98.3 / 98.2 for
# the rule's 4 KB at 4 warps. The same halving (_PROGRAM_BYTES 2048: same bytes per thread, half the
# program) on every dense shape, and computed cos/sin on long-32k and llama3-8b.
export PYTHONUNBUFFERED=1 PYTHONPATH=src:scripts/dev
OUT=${OUT:-out}; export OUT
H="num_warps=2"
timeout 300 python3 scripts/dev/variants.py new=src/rope_triton/_kernels.py --shapes llama2-7b,llama3-8b,d64,fp32,varlen --repeats 3 \
  --cfg llama2-7b:BLOCK_H=8,BLOCK_H_K=8,$H \
  --cfg llama3-8b:BLOCK_H=8,BLOCK_T_K=2,$H --cfg llama3-8b:BLOCK_H=8,$H \
  --cfg d64:BLOCK_T=1,BLOCK_T_K=1,$H \
  --cfg fp32:BLOCK_H=4,BLOCK_T_K=2,BLOCK_H_K=4,$H --cfg fp32:BLOCK_H=4,BLOCK_T_K=4,BLOCK_H_K=4,$H \
  --cfg varlen:BLOCK_T=4,BLOCK_H=2,$H --cfg varlen:BLOCK_T=2,BLOCK_H=4,$H \
  > $OUT/variants-2k.txt 2>&1
grep -v "^Backend" $OUT/variants-2k.txt
