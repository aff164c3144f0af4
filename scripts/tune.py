"""Sweep the launch rule's program shapes and warps on a GPU, timed against a same-bytes copy in one run.

Usage: PYTHONPATH=src python3 scripts/tune.py [--shapes llama3-8b,gptj] [--sets 3] [--list]
Prints, per shape, the rule's choice and the best programs found, each as % of the copy (two rounds).
"""

import argparse
import itertools
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout's package first

from rope_triton._core import kernels  # noqa: E402
from rope_triton._core.checks import check  # noqa: E402
from rope_triton._core.kernels import rotary_kernel  # noqa: E402
from rope_triton._core.launch import config, launch  # noqa: E402
from rope_triton._core.operands import Operands  # noqa: E402

SHAPES = {  # name: (B, S, Hq, Hk, D, rotary_dim, interleaved, dtype)
    "llama3-8b": (4, 4096, 32, 8, 128, 128, False, torch.bfloat16),
    "llama2-7b": (4, 4096, 32, 32, 128, 128, False, torch.bfloat16),
    "d64": (8, 2048, 16, 16, 64, 64, False, torch.bfloat16),
    "fp32": (2, 4096, 32, 8, 128, 128, False, torch.float32),
    "gptj": (4, 2048, 16, 16, 256, 64, True, torch.bfloat16),
}


def variants(hq: int, hk: int, d: int) -> list[dict]:
    """Program shapes to time: both orders, tokens x heads per program up to 16K elements, 1-8 warps."""
    out = []
    for order, bt, bh, warps in itertools.product(
        (kernels.ORDER_TOKENS, kernels.ORDER_Q_FIRST), (1, 2, 4, 8), (1, 2, 4, 8, 16), (1, 2, 4, 8)
    ):
        if bh <= 2 * max(hq, hk) and bt * bh * d <= 16384:
            out.append({"PROGRAM": (order, bt, bh, bt, bh), "num_warps": warps})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--sets", type=int, default=3)
    ap.add_argument("--list", action="store_true", help="print the rule and the variants, time nothing")
    args = ap.parse_args()
    for name in args.shapes.split(","):
        b, s, hq, hk, d, r, interleaved, dt = SHAPES[name]
        if args.list:
            q, k = torch.empty(b, s, hq, d, dtype=dt), torch.empty(b, s, hk, d, dtype=dt)
            cos = torch.empty(s, r // 2)
            p = check(q, k, cos, cos, positions=None, offsets=None, cu_seqlens=None, max_seqlen=None,
                      layout="bshd", rotary_dim=r, inplace=False, interleaved=interleaved)
            print(f"== {name}\nrule {config(p, q.element_size())}")
            for c in variants(hq, hk, d):
                print(f"   {c}")
            continue
        sets = [(torch.randn(b, s, hq, d, device="cuda", dtype=dt), torch.randn(b, s, hk, d, device="cuda", dtype=dt))
                for _ in range(args.sets)]
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in sets]
        ang = torch.rand(s, r // 2, device="cuda", dtype=torch.float64) * 6.28
        cos, sin = ang.cos().float(), ang.sin().float()
        n = sets[0][0].numel() + sets[0][1].numel()
        src = torch.empty(n, device="cuda", dtype=dt).normal_()
        dst = torch.empty_like(src)
        p = check(sets[0][0], sets[0][1], cos, sin, positions=None, offsets=None, cu_seqlens=None,
                  max_seqlen=None, layout="bshd", rotary_dim=r, inplace=False, interleaved=interleaved)
        base = config(p, sets[0][0].element_size())
        cfgs = [base, *variants(hq, hk, d)]
        i = [0]

        def make(cfg):
            def f():
                i[0] = (i[0] + 1) % args.sets
                (q, k), (qo, ko) = sets[i[0]], outs[i[0]]
                launch(rotary_kernel, p, Operands(q, k, cos, sin), qo, ko, interleaved=interleaved,
                       conjugate=False, cfg=cfg)
            return f

        pcts = {}
        for _ in range(2):
            tc = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
            for c in cfgs:
                t = do_bench(make(c), warmup=10, rep=60, return_mode="median")
                pcts.setdefault(repr(c), []).append(tc / t * 100)
        print(f"== {name}: rule {base} % copy {' / '.join(f'{x:.1f}' for x in pcts[repr(base)])}")
        for key, got in sorted(pcts.items(), key=lambda kv: -min(kv[1]))[:5]:
            print(f"   {key}  % copy {' / '.join(f'{x:.1f}' for x in got)}")


if __name__ == "__main__":
    main()
