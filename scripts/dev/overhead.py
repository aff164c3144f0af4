"""Host wall time per call (decode shapes) against an empty Triton launch, on the GPU."""

import time

import torch
import triton
import triton.language as tl

import rope_triton


@triton.jit
def _empty(X):
    pass


def wall(fn, n=2000):
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1e6


def run_general(plan, ptrs):
    entry, plan.entry = plan.entry, None
    plan.launch(ptrs, 4000)
    plan.entry = entry


def main():
    x = torch.zeros(1, device="cuda")
    ang = torch.rand(8192, 64, device="cuda", dtype=torch.float64) * 6.28
    cos, sin = ang.cos().float(), ang.sin().float()
    for b in (64, 1):
        q = torch.randn(b, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, 1, 8, 128, device="cuda", dtype=torch.bfloat16)
        off = torch.randint(0, 8000, (b,), device="cuda")
        rows = {
            "empty triton launch": lambda: _empty[(1,)](x),
            "torch add_ (1 elem)": lambda: x.add_(1),
            "rope out-of-place, tensor offsets": lambda: rope_triton.apply_rotary(q, k, cos, sin, offsets=off),
            "rope in-place, tensor offsets": lambda: rope_triton.apply_rotary(q, k, cos, sin, offsets=off, inplace=True),
            "rope in-place, int offset": lambda: rope_triton.apply_rotary(q, k, cos, sin, offsets=4000, inplace=True),
        }
        from rope_triton import _launch, _ops

        # functional.apply_rotary's options tuple: layout, interleaved, rotary_dim, inplace, conjugate,
        # max_seqlen, freqs.
        opts = ("bshd", False, None, True, False, None, False)
        key = _launch.plan_key(q, k, cos, sin, None, None, None, 4000, None, opts)
        ptrs = _launch.addresses(q, k, q, k, cos, sin, None, None, None, None, None)
        parts = {
            "  part: signature (key + addresses)": lambda: _launch.signature(
                q, k, cos, sin, None, None, None, off, None, opts),
            "  part: addresses": lambda: _launch.addresses(q, k, q, k, cos, sin, None, None, None, off, None),
            "  part: Plan.launch": lambda: plan.launch(ptrs, 4000),
            "  part: compiled.run (general entry)": lambda: run_general(plan, ptrs),
            "  part: empty_like q,k": lambda: (torch.empty_like(q), torch.empty_like(k)),
            "  part: is_compiling+grad": lambda: (torch.compiler.is_compiling(), torch.is_grad_enabled()),
            # Single tensor queries and allocations, to see what a key or an output costs on this host.
            "  one: q.shape": lambda: q.shape,
            "  one: q.stride()": lambda: q.stride(),
            "  one: q.dtype": lambda: q.dtype,
            "  one: q.get_device()": lambda: q.get_device(),
            "  one: q.data_ptr()": lambda: q.data_ptr(),
            "  one: q.is_cuda": lambda: q.is_cuda,
            "  one: q.requires_grad": lambda: q.requires_grad,
            "  one: empty_like(q)": lambda: torch.empty_like(q),
            "  one: q.new_empty(shape)": lambda: q.new_empty(q.shape),
            "  one: empty(shape, dtype, device)": lambda: torch.empty(q.shape, dtype=q.dtype, device=q.device),
            "  one: empty_strided": lambda: torch.empty_strided(q.shape, q.stride(), dtype=q.dtype, device=q.device),
            "  one: _cuda_getDevice": lambda: torch._C._cuda_getDevice(),
            "  one: raw stream": lambda: torch._C._cuda_getCurrentRawStream(0),
            "  one: increment_version": lambda: torch.autograd.graph.increment_version([q, k]),
        }
        with torch.no_grad():
            for _ in range(2):
                for name, fn in rows.items():
                    print(f"batch {b:3d}  {name:36s} {wall(fn):6.1f} us/call")
            plan = _ops.PLANS.get(key)
            if plan is None:
                print(f"batch {b:3d}  no recorded plan for the parts' key (options tuple out of date?)")
            else:
                for name, fn in parts.items():
                    print(f"batch {b:3d}  {name:36s} {wall(fn):6.1f} us/call")


if __name__ == "__main__":
    main()
