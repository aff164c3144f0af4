"""Does a shape's speed depend on where its tensors live? Session 5 saw llama2-7b's forward at 97.2% of a
copy in two full runs and 98.4% in a third, the same kernel, while its backward (the same kernel with the
opposite sign, on separately allocated gradients) stayed at 98.0-98.4% in all three.

For each of several fresh allocations of q, k and the outputs (each allocation followed by a spacer
allocation of a random size, so that addresses move), time the rule's kernel forward and conjugate, out
of place and in place, interleaved with a same-bytes ``copy_`` in every round. If the forward and the
conjugate move together across allocations, the spread is the addresses', not the direction's.

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/alloc_probe.py [--shapes llama2-7b,d64] [--allocs 6]
"""

import argparse
import torch
from probe_s3 import _setup
from rounds import copy_jobs, report, time_rounds

from rope_triton._kernels import rotary_kernel
from rope_triton._launch import launch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama2-7b,llama3-8b,d64")
    ap.add_argument("--allocs", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    for name in args.shapes.split(","):
        wl, p, offsets, cu, cfg = _setup(name, dev, 1)
        q0, k0 = wl.sets[0]
        keep = []  # every allocation stays alive, so that the next one lands elsewhere
        jobs = {}
        for a in range(args.allocs):
            q, k = q0.clone(), k0.clone()
            qo, ko = torch.empty_like(q), torch.empty_like(k)
            spacer = torch.empty(int(torch.randint(1, 64, (1,), generator=gen)) * 2**20, device=dev, dtype=torch.uint8)
            keep += [q, k, qo, ko, spacer]
            for conj in (False, True):
                for inplace in (False, True):
                    label = f"alloc {a} {'conj' if conj else 'fwd '} {'in place' if inplace else 'out     '}"
                    jobs[label] = [
                        lambda q=q, k=k, qo=qo, ko=ko, conj=conj, ip=inplace: launch(
                            rotary_kernel, p, q, k, q if ip else qo, k if ip else ko, wl.cos32, wl.sin32,
                            None, None, None, offsets, cu, interleaved=False, conjugate=conj, inplace=ip,
                            cfg=cfg)]
        jobs["copy_"] = copy_jobs(q0, k0)
        report(f"{name} (rule {cfg})", time_rounds(jobs, args.rounds), width=28)

if __name__ == "__main__":
    main()
