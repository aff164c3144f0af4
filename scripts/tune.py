"""Sweep the launcher's block sizes and warps on the GPU for the benchmark's big shapes.

Prints, per shape and config, the median time and % of a same-bytes copy timed in the same run.
Usage: PYTHONPATH=src python3 scripts/tune.py [--shapes llama3-8b,d64]
"""

import argparse
import itertools

import torch
import triton
from triton.testing import do_bench

from rope_triton._core.checks import check
from rope_triton._core.kernels import rotary_kernel
from rope_triton._core.launch import config, launch

SHAPES = {  # name: (B, S, Hq, Hk, D, dtype)
    "llama3-8b": (4, 4096, 32, 8, 128, torch.bfloat16),
    "llama2-7b": (4, 4096, 32, 32, 128, torch.bfloat16),
    "long-32k": (1, 32768, 32, 8, 128, torch.bfloat16),
    "d64": (8, 2048, 16, 16, 64, torch.bfloat16),
    "fp32": (4, 4096, 32, 8, 128, torch.float32),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="only the default config, with and without EVICT")
    args = ap.parse_args()
    for name in args.shapes.split(","):
        b, s, hq, hk, d, dt = SHAPES[name]
        sets = [
            (torch.randn(b, s, hq, d, device="cuda", dtype=dt), torch.randn(b, s, hk, d, device="cuda", dtype=dt))
            for _ in range(args.sets)
        ]
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in sets]
        ang = torch.rand(s, d // 2, device="cuda", dtype=torch.float64) * 6.28
        cos, sin = ang.cos().float(), ang.sin().float()
        n = sets[0][0].numel() + sets[0][1].numel()
        src = torch.empty(n, device="cuda", dtype=dt).normal_()
        dst = torch.empty_like(src)
        p = check(sets[0][0], sets[0][1], cos, sin, positions=None, offsets=None, cu_seqlens=None,
                  max_seqlen=None, layout="bshd", rotary_dim=None, inplace=False)
        base = config(p, sets[0][0].element_size())
        half = triton.next_power_of_2(d // 2)
        cfgs = [dict(base), dict(base, EVICT="evict_first")]
        for bt, bh, nw in itertools.product((1, 2, 4, 8), (8, 16, 32), (2, 4, 8, 16)):
            if bh * half * bt > 8192 or bh > max(hq, hk) * 2:
                continue
            cfgs.append({"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": bt, "num_warps": nw})
        if args.quick:
            cfgs = cfgs[:2]
        i = [0]

        def make(cfg):
            def f():
                i[0] = (i[0] + 1) % args.sets
                (q, k), (qo, ko) = sets[i[0]], outs[i[0]]
                launch(rotary_kernel, p, q, k, qo, ko, cos, sin, None, None, None, None, None,
                       interleaved=False, conjugate=False, inplace=False, cfg=cfg)
            return f

        rows = []
        for rep in range(2):
            tc = do_bench(lambda: dst.copy_(src), warmup=25, rep=150, return_mode="median")
            for c in cfgs:
                t = do_bench(make(c), warmup=25, rep=150, return_mode="median")
                rows.append((rep, c, t, tc))
        best = {}
        for rep, c, t, tc in rows:
            key = tuple(sorted(c.items()))
            best.setdefault(key, []).append(tc / t * 100)
        ranked = sorted(best.items(), key=lambda kv: -min(kv[1]))
        print(f"== {name}: default {base}")
        for key, pcts in ranked[:6]:
            print(f"   {dict(key)}  % copy {' / '.join(f'{x:.1f}' for x in pcts)}")
        for c in cfgs[:2]:
            dk = tuple(sorted(c.items()))
            print(f"   {c} % copy {' / '.join(f'{x:.1f}' for x in best[dk])}")


if __name__ == "__main__":
    main()
