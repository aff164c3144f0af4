"""Where does the out-of-place backward's time go? Host wall per call of autograd paths (H200)."""

import time

import torch
from overhead import wall

import rope_triton
from rope_triton import _ops


def main():
    for b, s in ((64, 1), (4, 4096)):
        q = torch.randn(b, s, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(b, s, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        ang = torch.rand(max(s, 8192), 64, device="cuda", dtype=torch.float64) * 6.28
        cos, sin = ang.cos().float(), ang.sin().float()
        qo, ko = rope_triton.apply_rotary(q, k, cos, sin)
        gq, gk = torch.randn_like(qo), torch.randn_like(ko)
        x = torch.randn_like(q, requires_grad=True)
        y = x * 2
        timings = {}
        orig = _ops.RotaryFunction.backward

        def timed_backward(ctx, a, b_):
            t = time.perf_counter()
            r = orig(ctx, a, b_)
            timings.setdefault("inside backward", []).append(time.perf_counter() - t)
            return r

        rows = {
            "forward (grad-enabled)": lambda: rope_triton.apply_rotary(q, k, cos, sin),
            "autograd.grad ours": lambda: torch.autograd.grad((qo, ko), (q, k), (gq, gk), retain_graph=True),
            "autograd.grad x*2": lambda: torch.autograd.grad(y, x, gq.new_ones(()).expand_as(y), retain_graph=True),
            "direct conj kernel": lambda: rope_triton.apply_rotary(gq, gk, cos, sin, conjugate=True),
        }
        for name, fn in rows.items():
            print(f"B{b} S{s}  {name:28s} {wall(fn, 200):8.1f} us/call")
        _ops.RotaryFunction.backward = staticmethod(timed_backward)
        w = wall(rows["autograd.grad ours"], 200)
        _ops.RotaryFunction.backward = staticmethod(orig)
        inside = sorted(timings["inside backward"])[len(timings["inside backward"]) // 2] * 1e6
        print(f"B{b} S{s}  autograd.grad ours (timed)    {w:8.1f} us/call, median inside backward {inside:.1f} us")


if __name__ == "__main__":
    main()
