"""What limits the big shapes: our kernel's variants against copies of the same bytes, one run.

Rows (each the median over 2 interleaved repeats of rope_triton.bench.cuda_device_time_us, 3 input sets):
cudaMemcpy (copy_), torch elementwise copy (mul by 1), flat Triton copies (16 KB and 4 KB programs), our
kernel at the launcher's rule, with tables of row stride 0 (no table traffic beyond L1: a bound, not a
fix), with the module's split tables, without the table eviction hint, session 2's whole-token rule, and
other program shapes. Session 2 also tried persistent grids (81-88%, removed); session 3 tried (seq, batch)
token order (0.5-6 points slower: it trades the table's reuse for DRAM locality; removed).
Usage: PYTHONPATH=src python3 scripts/dev/ceiling.py [--shapes llama3-8b,fp32]
"""

import argparse
import statistics

import torch
import triton
import triton.language as tl
from copy_sweep import cyc

from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch
from rope_triton.bench import cuda_device_time_us
from rope_triton.bench_shapes import SHAPES as BENCH_SHAPES
from rope_triton.freqs import default_low_bits, split_tables

# (B, S, Hq, Hk, D, dtype) of the benchmark's shapes; "fp32-b4" is llama3-8b itself in float32.
SHAPES = {n: (v.batch, v.seqlen, v.heads_q, v.heads_k, v.head_dim, v.dtype) for n, v in BENCH_SHAPES.items()
          if v.kind != "varlen"}
SHAPES["fp32-b4"] = (4, 4096, 32, 8, 128, torch.float32)


@triton.jit
def _flat_copy(X, Y, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i, mask=i < n), mask=i < n)


def _v04_rule(p, itemsize):
    """Session 2's rule for large shapes: whole-token programs, 2 KB half-tiles, 8 warps from 64 pairs."""
    block_half = triton.next_power_of_2(p.rotary_dim // 2)
    pairs = max(block_half, 2048 // itemsize)
    block_h = min(triton.next_power_of_2(max(p.heads_q, p.heads_k)), max(1, pairs // block_half))
    block_t = min(max(1, pairs // (block_h * block_half)),
                  max(1, triton.next_power_of_2(max(1, p.batch * p.seqlen // 2048))))
    tile = block_t * block_h * block_half
    return {"BLOCK_HALF": block_half, "BLOCK_H": block_h, "BLOCK_T": block_t,
            "num_warps": 8 if tile * itemsize >= 2048 and block_half >= 64 else 4}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,llama2-7b,long-32k,d64,fp32,fp32-b4,decode,decode-1")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
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
        itemsize = sets[0][0].element_size()
        variants = {"rule " + str(base): (dict(base), "full")}
        variants["rule, table row stride 0"] = (dict(base), "flat")
        variants["rule, split tables (module's)"] = (dict(base), "split")
        variants["rule without table evict_last"] = ({**base, "TABLE_EVICT": ""}, "full")
        if not decode:
            variants["v0.4 rule (whole tokens, 2 KB halves)"] = (_v04_rule(p, itemsize), "full")
            # Whole-token programs (q's chunks then k's in one program), 16 bytes per thread.
            for bh in (8, 16):
                if bh <= max(hq, hk):
                    nw = max(1, bh * half * itemsize // 512)
                    variants[f"whole tokens T1 H{bh} w{nw} + table evict_last"] = (
                        {"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": 1, "num_warps": nw, "TABLE_EVICT": "evict_last"},
                        "full")
            # Split programs of 2 and 8 KB.
            head_bytes = 2 * half * itemsize
            for kb in (2, 8):
                heads = kb * 1024 // head_bytes
                bt, bh = max(1, heads // max(hq, hk)), min(heads, triton.next_power_of_2(max(hq, hk)))
                nw = max(1, bt * bh * half * itemsize // 512)
                variants[f"split T{bt} H{bh} w{nw} ({kb} KB) + table evict_last"] = (
                    {"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": bt, "num_warps": nw, "SPLIT_HEADS": True,
                     "TABLE_EVICT": "evict_last"}, "full")

        lo_bits = default_low_bits(rows)
        split = tuple(t.cuda() for t in split_tables(
            1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d), rows, low_bits=lo_bits))
        p_split = check(sets[0][0], sets[0][1], split[0], split[1], positions=None, offsets=offsets, cu_seqlens=None,
                        max_seqlen=None, layout="bshd", rotary_dim=None, inplace=False, cos_lo=split[2], sin_lo=split[3])

        def ours(cfg, tables):
            c, sn, cl, sl = {"full": (cos, sin, None, None), "flat": (cos0, sin0, None, None), "split": split}[tables]
            pp = p_split if tables == "split" else p
            return cyc([lambda q=q, k=k, qo=qo, ko=ko: launch(
                rotary_kernel, pp, q, k, qo, ko, c, sn, cl, sl, None, offsets, None,
                interleaved=False, conjugate=False, inplace=False, cfg=cfg) for (q, k), (qo, ko) in zip(sets, outs)])

        jobs = {
            "cudaMemcpy (copy_)": cyc([lambda x=x, y=y: y.copy_(x) for x, y in flats]),
            "torch elementwise (mul 1)": cyc([lambda x=x, y=y: torch.mul(x, 1, out=y) for x, y in flats]),
            "triton flat copy 8192/8w": cyc([lambda x=x, y=y: _flat_copy[(triton.cdiv(n, 8192),)](x, y, n, BLOCK=8192, num_warps=8)
                                             for x, y in flats]),
            "triton flat copy 2048/8w": cyc([lambda x=x, y=y: _flat_copy[(triton.cdiv(n, 2048),)](x, y, n, BLOCK=2048, num_warps=8)
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
