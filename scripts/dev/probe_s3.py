"""Session 3 probe: why long-32k's backward (conjugate) ran at 91% while its forward ran at 96%, what
the split rule does to varlen (a binary search per program), and whether table bytes explain d64's gap
to Liger. Each row: median device time per input set (rope_triton.bench.cuda_device_time_us).

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/probe_s3.py
"""

import statistics

import torch
from ceiling import _v04_rule

from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch
from rope_triton.bench import cuda_device_time_us
from rope_triton.bench_shapes import SHAPES, build_workload


def _setup(name, dev, n_sets):
    """A benchmark shape's workload, its validated problem, offsets, cu_seqlens and the launcher's rule."""
    wl = build_workload(SHAPES[name], dev, n_sets=n_sets)
    kw = wl.rope_kwargs
    offsets, cu = kw.get("offsets"), kw.get("cu_seqlens")
    q0, k0 = wl.sets[0]
    p = check(q0, k0, wl.cos32, wl.sin32, positions=None, offsets=offsets, cu_seqlens=cu,
              max_seqlen=kw.get("max_seqlen"), layout=kw["layout"], rotary_dim=None, inplace=False)
    return wl, p, offsets, cu, config(p, q0.element_size())


def shapes_sweep(dev):
    """Programs of the rule's bytes split as T tokens x H heads, forward and conjugate, out of place."""
    for name in ("long-32k", "llama3-8b", "llama2-7b", "varlen", "d64", "fp32"):
        wl, p, offsets, cu, base = _setup(name, dev, 2)
        q0, k0 = wl.sets[0]
        isz = q0.element_size()
        per_program = base["BLOCK_T"] * base["BLOCK_H"]
        variants = {"v0.4 whole tokens": _v04_rule(p, isz)}
        for t in (1, 2, 4, 8):
            h = per_program // t
            if 1 <= h <= 2 * max(p.heads_q, p.heads_k):
                variants[f"split T{t} H{h} w{base['num_warps']}"] = {**base, "BLOCK_T": t, "BLOCK_H": h}
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]
        jobs = {}
        for vname, cfg in variants.items():
            for conj in (False, True):
                for i, ((q, k), (qo, ko)) in enumerate(zip(wl.sets, outs)):
                    jobs[f"{vname:22s} {'conj' if conj else 'fwd ':4s} set {i}"] = (
                        lambda cfg=cfg, q=q, k=k, qo=qo, ko=ko, conj=conj: launch(
                            rotary_kernel, p, q, k, qo, ko, wl.cos32, wl.sin32, None, None, None, offsets, cu,
                            interleaved=False, conjugate=conj, inplace=False, cfg=cfg))
        report(name, jobs, q0, k0, dev)


def report(name, jobs, q0, k0, dev):
    n = q0.numel() + k0.numel()
    src, dst = torch.randn(n, device=dev).to(q0.dtype), torch.empty(n, device=dev, dtype=q0.dtype)
    jobs["copy_"] = lambda: dst.copy_(src)
    for f in jobs.values():
        f()
    torch.cuda.synchronize()
    times = {k: [] for k in jobs}
    for r in range(2):
        keys = list(jobs)
        for key in keys[r::2] + keys[1 - r::2]:
            times[key].append(cuda_device_time_us(jobs[key], warmup_ms=10, rep_ms=40))
    copy_us = statistics.median(times["copy_"])
    print(f"== {name}: copy_ {copy_us:.1f} us")
    for key, ts in times.items():
        t = statistics.median(ts)
        print(f"   {key:70s} {t:8.1f} us {100 * copy_us / t:6.1f}%")


def main():
    import sys
    dev = torch.device("cuda")
    if "--sweep" in sys.argv:
        return shapes_sweep(dev)
    for name in ("long-32k", "llama3-8b", "varlen", "d64"):
        wl, p, offsets, cu, base = _setup(name, dev, 3)
        q0, k0 = wl.sets[0]
        isz = q0.element_size()
        half = base["BLOCK_HALF"]
        variants = {"rule": base, "rule, no table hint": {**base, "TABLE_EVICT": ""}}
        if name == "varlen":
            variants["v0.4 whole tokens"] = _v04_rule(p, isz)
            variants["split T2 H8 w4"] = {**base, "BLOCK_T": 2, "BLOCK_H": 8, "num_warps": 4}
            variants["split T4 H4 w4"] = {**base, "BLOCK_T": 4, "BLOCK_H": 4, "num_warps": 4}
            variants["whole T1 H16 w4"] = {"BLOCK_HALF": half, "BLOCK_H": 16, "BLOCK_T": 1, "num_warps": 4,
                                           "TABLE_EVICT": "evict_last"}
        if name == "d64":
            variants["split T1 H16 w2"] = {**base, "BLOCK_T": 1, "num_warps": 2}
        tables = {"fp32 tables": (wl.cos32, wl.sin32)}
        if name == "d64":
            tables["bf16 tables (diagnostic)"] = (wl.cos32.bfloat16(), wl.sin32.bfloat16())
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]
        jobs = {}
        for vname, cfg in variants.items():
            for tname, (c, s) in tables.items():
                if tname != "fp32 tables" and vname != "rule":
                    continue
                for conj in (False, True):
                    for inplace in (False, True):
                        if inplace and vname not in ("rule", "rule, no table hint"):
                            continue
                        for i, ((q, k), (qo, ko)) in enumerate(zip(wl.sets, outs)):
                            label = f"{vname:22s} {tname:26s} {'conj' if conj else 'fwd ':4s} " \
                                    f"{'in ' if inplace else 'out'} set {i}"
                            jobs[label] = (lambda cfg=cfg, q=q, k=k, qo=qo, ko=ko, c=c, s=s, conj=conj, ip=inplace:
                                           launch(rotary_kernel, p, q, k, q if ip else qo, k if ip else ko, c, s,
                                                  None, None, None, offsets, cu, interleaved=False, conjugate=conj,
                                                  inplace=ip, cfg=cfg))
        report(name, jobs, q0, k0, dev)


if __name__ == "__main__":
    main()
