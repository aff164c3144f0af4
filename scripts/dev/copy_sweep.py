"""Why a Triton copy of llama3-8b's bytes runs at 95% of cudaMemcpy while PyTorch's elementwise kernel
runs at 100%: flat Triton copies over block size, warps and cache hints, against both, in one run.
Also prints the PTX load/store widths of our kernel at its rule config.

Usage: PYTHONPATH=src python3 scripts/dev/copy_sweep.py [--dtypes bfloat16,float32]
"""

import argparse
import re
import statistics

import torch
import triton
import triton.language as tl

from rope_triton.bench import cuda_device_time_us

N_BF16 = 4 * 4096 * (32 + 8) * 128  # llama3-8b: q and k elements


@triton.jit
def _copy(X, Y, n, BLOCK: tl.constexpr, MASK: tl.constexpr, LOAD_EVICT: tl.constexpr, LOAD_CACHE: tl.constexpr,
          STORE_CACHE: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    if MASK:
        x = tl.load(X + i, mask=i < n, eviction_policy=LOAD_EVICT, cache_modifier=LOAD_CACHE)
        tl.store(Y + i, x, mask=i < n, cache_modifier=STORE_CACHE)
    else:
        x = tl.load(X + i, eviction_policy=LOAD_EVICT, cache_modifier=LOAD_CACHE)
        tl.store(Y + i, x, cache_modifier=STORE_CACHE)


def cyc(calls):
    i = [0]

    def f():
        i[0] = (i[0] + 1) % len(calls)
        return calls[i[0]]()
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    for dname in args.dtypes.split(","):
        dt = getattr(torch, dname)
        n = N_BF16 * 2 // torch.empty((), dtype=dt).element_size()
        flats = [(torch.randn(n, device="cuda").to(dt), torch.empty(n, device="cuda", dtype=dt)) for _ in range(3)]
        jobs = {
            "cudaMemcpy (copy_)": cyc([lambda x=x, y=y: y.copy_(x) for x, y in flats]),
            "torch elementwise (mul 1)": cyc([lambda x=x, y=y: torch.mul(x, 1, out=y) for x, y in flats]),
        }

        def tcopy(block, warps, mask=True, evict="", lcache="", scache=""):
            return cyc([lambda x=x, y=y: _copy[(triton.cdiv(n, block),)](
                x, y, n, BLOCK=block, MASK=mask, LOAD_EVICT=evict, LOAD_CACHE=lcache, STORE_CACHE=scache,
                num_warps=warps) for x, y in flats])

        per_thread_16b = 16 // flats[0][0].element_size()
        for block in (512, 1024, 2048, 4096, 8192, 16384):
            for warps in (1, 2, 4, 8, 16):
                per = block // (32 * warps)
                if per_thread_16b // 2 <= per <= 8 * per_thread_16b:
                    jobs[f"triton {block}/{warps}w ({per}/thread)"] = tcopy(block, warps)
        for block, warps in ((8192, 8), (2048, 8), (1024, 4), (2048, 4)):
            jobs[f"triton {block}/{warps}w no mask"] = tcopy(block, warps, mask=False)
            jobs[f"triton {block}/{warps}w load evict_first"] = tcopy(block, warps, evict="evict_first")
            jobs[f"triton {block}/{warps}w load .cg"] = tcopy(block, warps, lcache=".cg")
            jobs[f"triton {block}/{warps}w store .cs"] = tcopy(block, warps, scache=".cs")
            jobs[f"triton {block}/{warps}w evict_first + .cs"] = tcopy(block, warps, evict="evict_first", scache=".cs")
        for f in jobs.values():
            f()
        torch.cuda.synchronize()
        times = {k: [] for k in jobs}
        for r in range(args.repeats):
            order = list(jobs)
            for key in order[r:] + order[:r]:
                times[key].append(cuda_device_time_us(jobs[key], rep_ms=60))
        mem = statistics.median(times["cudaMemcpy (copy_)"])
        gb = 2 * n * flats[0][0].element_size() / 1e9
        print(f"== copy of {dname} x {n} ({gb * 1e3:.0f} MB moved)")
        for key, ts in sorted(times.items(), key=lambda kv: statistics.median(kv[1])):
            t = statistics.median(ts)
            print(f"   {key:44s} {t:8.1f} us  {gb / t * 1e3:5.2f} TB/s  {100 * mem / t:5.1f}% of copy_  "
                  f"({' / '.join(f'{x:.1f}' for x in ts)})")
    # Load/store widths of our kernel at the llama3-8b rule (the PTX, since SASS needs nvdisasm).
    from rope_triton import apply_rotary
    from rope_triton._ops import PLANS
    q = torch.randn(4, 128, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(4, 128, 8, 128, device="cuda", dtype=torch.bfloat16)
    ang = torch.rand(128, 64, device="cuda", dtype=torch.float64)
    apply_rotary(q, k, ang.cos().float(), ang.sin().float())
    for key, plan in list(PLANS._plans.items())[:1]:
        ptx = plan.compiled.asm["ptx"]
        widths = {w: len(re.findall(w, ptx)) for w in (r"ld\.global[.a-z0-9:]*\.v4\.b32", r"ld\.global[.a-z0-9:]*\.v2\.b32",
                                                       r"st\.global[.a-z0-9:]*\.v4\.b32", r"st\.global[.a-z0-9:]*\.v2\.b32",
                                                       r"ld\.global[.a-z0-9:]*\.b32 ", r"ld\.global[.a-z0-9:]*\.b16 ")}
        print("our kernel (batch-4 llama3-8b rule, short seq) PTX global accesses:", widths)


if __name__ == "__main__":
    main()
