"""How many tokens should a k program take when k has fewer heads than q (GQA, MQA)? Session 7's first calls:
llama3-8b's k programs of 4 tokens x 8 heads ran 0.5-1.0 points closer to the copy than the rule's 2 x 8 at
the same 4 warps, float32's 4 x 8 0.7 points (out of place) where 2 x 8 was level, 8 x 8 lost 6 points on
llama3-8b; d64 (k as wide as q) lost with larger k programs.

For GQA / MQA shapes of several head ratios, tables and computed cos/sin: the rule against k programs of 2x
and 4x the rule's tokens (warps as the rule), forward out of place and in place, interleaved with the
same-bytes copy.

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/kblock_probe.py [--shapes llama3-8b,qwen-28-4,...]
"""

import argparse

import torch
from rounds import copy_jobs, report, time_rounds

from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch
from rope_triton.bench_shapes import SHAPES, ShapeSpec, build_workload

EXTRA = {
    "qwen-28-4": ShapeSpec("qwen-28-4", 4, 4096, 28, 4, 128),
    "mqa-32-1": ShapeSpec("mqa-32-1", 4, 4096, 32, 1, 128),
    "l70b-64-8": ShapeSpec("l70b-64-8", 2, 4096, 64, 8, 128),
    "fp16-32-8": ShapeSpec("fp16-32-8", 4, 4096, 32, 8, 128, dtype=torch.float16),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,fp32,long-32k,qwen-28-4,mqa-32-1,l70b-64-8")
    ap.add_argument("--freqs", default="llama3-8b,long-32k", help="shapes also timed with computed cos/sin")
    ap.add_argument("--factors", default="2,4")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda")
    for name in args.shapes.split(","):
        wl = build_workload(SHAPES.get(name) or EXTRA[name], dev, n_sets=2)
        q0, k0 = wl.sets[0]
        common = dict(positions=None, offsets=None, cu_seqlens=None, max_seqlen=None, layout="bshd",
                      rotary_dim=None, inplace=False)
        sources = [("tables", check(q0, k0, wl.cos32, wl.sin32, **common), wl.cos32, wl.sin32)]
        if name in args.freqs.split(","):
            sources.append(("freqs", check(q0, k0, wl.freqs, wl.freqs, freqs=True, **common), wl.freqs, wl.freqs))
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]
        jobs = {}
        for src, p, cos, sin in sources:
            rule = config(p, q0.element_size())
            cfgs = {"rule": rule}
            if rule.get("QK_MAJOR"):
                for f in map(int, args.factors.split(",")):
                    cfgs[f"k {f}x tokens"] = {**rule, "BLOCK_T_K": rule["BLOCK_T_K"] * f}
            for cname, cfg in cfgs.items():
                shape = f"q {cfg['BLOCK_T']}x{cfg['BLOCK_H']} k {cfg.get('BLOCK_T_K')}x{cfg.get('BLOCK_H_K')} w{cfg['num_warps']}"
                for ip in (False, True):
                    jobs[f"{src:6s} {cname:12s} {shape:20s} {'in ' if ip else 'out'}"] = [
                        lambda p=p, cos=cos, sin=sin, cfg=cfg, q=q, k=k, qo=qo, ko=ko, ip=ip: launch(
                            rotary_kernel, p, q, k, q if ip else qo, k if ip else ko, cos, sin, None, None, None,
                            None, None, interleaved=False, conjugate=False, inplace=ip, cfg=cfg)
                        for (q, k), (qo, ko) in zip(wl.sets, outs)]
        jobs["copy_"] = copy_jobs(q0, k0, 2)
        report(f"{name} {tuple(q0.shape)} k {tuple(k0.shape)} {q0.dtype}",
               time_rounds(jobs, args.rounds, rep_ms=20, rotate=True), width=48)
        del wl, outs, jobs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
