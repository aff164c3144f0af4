"""Kernel versions side by side: each NAME=FILE is a copy of ``_kernels.py`` (for example from another
branch: ``git show BRANCH:src/rope_triton/_kernels.py > /tmp/v/k_BRANCH.py``), timed on the benchmark's
shapes at the launcher's rule, forward and conjugate, out of place and in place, interleaved with a
same-bytes ``copy_`` (median device time over input sets and repeats, rope_triton.bench.cuda_device_time_us).

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/variants.py main=/tmp/v/k_main.py conj=/tmp/v/k_conj.py
       [--shapes llama3-8b,d64] [--cfg d64:BLOCK_T=1,num_warps=2]
"""

import argparse
import importlib.util
import torch
from probe_s3 import _setup
from rounds import copy_jobs, report, time_rounds

from rope_triton._launch import launch
from rope_triton.bench_providers import PROVIDERS


def _load(name, path):
    # Named inside the package, so that the copy's relative imports (``from .freqs import ...``) resolve.
    spec = importlib.util.spec_from_file_location(f"rope_triton._kernels_variant_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.rotary_kernel


def _value(text):
    return {"True": True, "False": False}.get(text, int(text) if text.lstrip("-").isdigit() else text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kernels", nargs="+", help="NAME=FILE")
    ap.add_argument("--shapes", default="llama3-8b,llama2-7b,long-32k,d64,fp32,varlen,decode")
    ap.add_argument("--sets", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cfg", action="append", default=[], help="SHAPE:KEY=VALUE,...: an extra rule variant")
    ap.add_argument("--providers", default="", help="benchmark providers timed alongside, e.g. liger,rope-triton")
    args = ap.parse_args()
    kernels = {n: _load(n, f) for n, f in (a.split("=", 1) for a in args.kernels)}
    dev = torch.device("cuda")
    for shape in args.shapes.split(","):
        wl, p, offsets, cu, base = _setup(shape, dev, args.sets)
        cfgs = {"rule": base}
        for extra in args.cfg:
            sname, kv = extra.split(":", 1)
            if sname == shape:
                upd = {k: _value(v) for k, v in (x.split("=") for x in kv.split(","))}
                cfgs[kv] = {**base, **upd}
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]
        jobs = {}
        for kname, kern in kernels.items():
            for cname, cfg in cfgs.items():
                for conj in (False, True):
                    for ip in (False, True):
                        label = f"{kname:6s} {cname:28s} {'conj' if conj else 'fwd '} {'in ' if ip else 'out'}"
                        fns = [lambda kern=kern, cfg=cfg, q=q, k=k, qo=qo, ko=ko, conj=conj, ip=ip: launch(
                            kern, p, q, k, q if ip else qo, k if ip else ko, wl.cos32, wl.sin32, None, None, None,
                            offsets, cu, interleaved=False, conjugate=conj, inplace=ip, cfg=cfg)
                            for (q, k), (qo, ko) in zip(wl.sets, outs)]
                        jobs[label] = fns
        for name in filter(None, args.providers.split(",")):
            impl = PROVIDERS[name].build(wl)
            for pass_ in ("fwd", "bwd"):
                jobs[f"provider {name} {pass_}"] = [impl.timed(pass_, q, k) for q, k in wl.sets]
        q0, k0 = wl.sets[0]
        jobs["copy_"] = copy_jobs(q0, k0, args.sets)
        times = time_rounds(jobs, args.repeats, rep_ms=25, rotate=True)
        report(f"{shape} (rule {base})", times, width=48)

if __name__ == "__main__":
    main()
