"""One copy and one rotary launch (out of place, in place) per shape, between cudaProfilerStart/Stop, for ncu.
Default llama3-8b and llama2-7b: after session 6's q-major order llama2-7b ran at 98.7-98.9% of a copy
and llama3-8b at 97.8-98.0 (GQA: k's programs have their own block shape); what differs in the profile?

    ncu --clock-control none --profile-from-start off ... python3 scripts/dev/profile_llama.py [SHAPE ...]
"""

import sys

import torch

from rope_triton import apply_rotary
from rope_triton.bench_shapes import SHAPES


def main():
    names = sys.argv[1:] or ["llama3-8b", "llama2-7b"]
    runs = []
    for name in names:
        spec = SHAPES[name]
        b, s, hq, hk, d = spec.batch, spec.seqlen, spec.heads_q, spec.heads_k, spec.head_dim
        q = torch.randn(b, s, hq, d, device="cuda", dtype=spec.dtype)
        k = torch.randn(b, s, hk, d, device="cuda", dtype=spec.dtype)
        ang = torch.rand(s, d // 2, device="cuda", dtype=torch.float64) * 6.28
        cos, sin = ang.cos().float(), ang.sin().float()
        src = torch.randn(q.numel() + k.numel(), device="cuda", dtype=spec.dtype)
        runs.append((q, k, cos, sin, src, torch.empty_like(src)))
    for _ in range(3):  # compile and warm up outside the profiled range
        for q, k, cos, sin, src, dst in runs:
            dst.copy_(src)
            apply_rotary(q, k, cos, sin)
            apply_rotary(q, k, cos, sin, inplace=True)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for q, k, cos, sin, src, dst in runs:
        dst.copy_(src)
        apply_rotary(q, k, cos, sin)
        apply_rotary(q, k, cos, sin, inplace=True)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
