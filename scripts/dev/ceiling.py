"""What limits the big shapes: our kernel's variants against copies of the same bytes, one run.

Rows (each the median over 2 interleaved repeats of rope_triton.bench.cuda_device_time_us, 3 input sets):
cudaMemcpy (copy_), torch elementwise copy (mul by 1), a flat Triton copy, our kernel with the default
rule, with tables of row stride 0 (no table traffic beyond L1), other block shapes. (A persistent grid,
tried in session 2 at 4 and 8 programs per SM with 1-3 pipeline stages, ran at 81-88%: removed.)
Usage: PYTHONPATH=src python3 scripts/dev/ceiling.py [--shapes llama3-8b,fp32]
"""

import argparse
import statistics

import torch
import triton
import triton.language as tl

from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch
from rope_triton.bench import cuda_device_time_us
from rope_triton.bench_shapes import SHAPES as BENCH_SHAPES

# (B, S, Hq, Hk, D, dtype) of the benchmark's shapes; "fp32-b4" is llama3-8b itself in float32.
SHAPES = {n: (v.batch, v.seqlen, v.heads_q, v.heads_k, v.head_dim, v.dtype) for n, v in BENCH_SHAPES.items()
          if v.kind != "varlen"}
SHAPES["fp32-b4"] = (4, 4096, 32, 8, 128, torch.float32)


@triton.jit
def _flat_copy(X, Y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i, mask=i < n), mask=i < n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,fp32-b4,llama2-7b,decode,decode-1")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for name in args.shapes.split(","):
        b, s, hq, hk, d, dt = SHAPES[name]
        sets = [(torch.randn(b, s, hq, d, device="cuda", dtype=dt), torch.randn(b, s, hk, d, device="cuda", dtype=dt))
                for _ in range(3)]
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in sets]
        decode = s == 1
        rows = 8192 if decode else s
        offsets = torch.randint(0, rows - 1, (b,), device="cuda") if decode else None
        ang = torch.rand(rows, d // 2, device="cuda", dtype=torch.float64) * 6.28
        cos, sin = ang.cos().float(), ang.sin().float()
        cos0, sin0 = cos[:1].expand(rows, d // 2), sin[:1].expand(rows, d // 2)
        n = sets[0][0].numel() + sets[0][1].numel()
        flats = [(torch.randn(n, device="cuda").to(dt), torch.empty(n, device="cuda", dtype=dt)) for _ in range(3)]
        p = check(sets[0][0], sets[0][1], cos, sin, positions=None, offsets=offsets, cu_seqlens=None,
                  max_seqlen=None, layout="bshd", rotary_dim=None, inplace=False)
        base = config(p, sets[0][0].element_size())
        half = base["BLOCK_HALF"]
        variants = {"rule " + str(base): (dict(base), False)}
        variants["rule, table row stride 0"] = (dict(base), True)
        if decode:
            variants["T1 H16 w8 (v0.3 rule)"] = ({"BLOCK_HALF": half, "BLOCK_H": 16, "BLOCK_T": 1, "num_warps": 8}, False)
            for bh, nw in ((4, 1), (4, 2), (8, 1), (8, 2), (8, 4), (16, 2), (16, 4), (32, 4), (32, 8)):
                variants[f"split H{bh} w{nw}"] = (
                    {"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": 1, "num_warps": nw, "SPLIT_HEADS": True}, False)
        for bt, bh, nw in () if decode else ((8, 4, 8), (16, 2, 8), (4, 8, 4), (8, 4, 4), (1, 16, 2), (1, 32, 4), (2, 8, 4)):
            variants[f"T{bt} H{bh} w{nw}"] = ({"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": bt, "num_warps": nw}, False)

        def cyc(calls):
            i = [0]

            def f():
                i[0] = (i[0] + 1) % len(calls)
                return calls[i[0]]()
            return f

        def ours(cfg, flat_table):
            c, sn = (cos0, sin0) if flat_table else (cos, sin)
            return cyc([lambda q=q, k=k, qo=qo, ko=ko: launch(
                rotary_kernel, p, q, k, qo, ko, c, sn, None, None, None, offsets, None,
                interleaved=False, conjugate=False, inplace=False, cfg=cfg) for (q, k), (qo, ko) in zip(sets, outs)])

        jobs = {
            "cudaMemcpy (copy_)": cyc([lambda x=x, y=y: y.copy_(x) for x, y in flats]),
            "torch elementwise (mul 1)": cyc([lambda x=x, y=y: torch.mul(x, 1, out=y) for x, y in flats]),
            "triton flat copy 8192/8w": cyc([lambda x=x, y=y: _flat_copy[(triton.cdiv(n, 8192),)](x, y, n, BLOCK=8192, num_warps=8)
                                             for x, y in flats]),
        }
        for vname, (cfg, flat) in variants.items():
            jobs[vname] = ours(cfg, flat)
        for f in jobs.values():
            f()
        torch.cuda.synchronize()
        times = {k: [] for k in jobs}
        for r in range(args.repeats):
            for key in list(jobs)[r:] + list(jobs)[:r]:
                times[key].append(cuda_device_time_us(jobs[key]))
        mem = statistics.median(times["cudaMemcpy (copy_)"])
        gb = 2 * n * sets[0][0].element_size() / 1e9
        print(f"== {name} ({gb * 1e3:.0f} MB moved)")
        for key, ts in times.items():
            t = statistics.median(ts)
            print(f"   {key:48s} {t:8.1f} us  {gb / t * 1e3:5.2f} TB/s  {100 * mem / t:5.1f}% of copy_  "
                  f"({' / '.join(f'{x:.1f}' for x in ts)})")


if __name__ == "__main__":
    main()
