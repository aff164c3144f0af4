"""One copy and one rotary launch per variant on llama3-8b, between cudaProfilerStart/Stop, for ncu.

    ncu --clock-control none --profile-from-start off ... python3 scripts/dev/profile_llama.py
"""

import torch

from rope_triton import apply_rotary


def main():
    b, s, hq, hk, d = 4, 4096, 32, 8, 128
    q = torch.randn(b, s, hq, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16)
    ang = torch.rand(s, d // 2, device="cuda", dtype=torch.float64) * 6.28
    cos, sin = ang.cos().float(), ang.sin().float()
    src = torch.randn(q.numel() + k.numel(), device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    for _ in range(3):  # compile and warm up outside the profiled range
        dst.copy_(src)
        apply_rotary(q, k, cos, sin)
        apply_rotary(q, k, cos, sin, inplace=True)
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    dst.copy_(src)
    apply_rotary(q, k, cos, sin)
    apply_rotary(q, k, cos, sin, inplace=True)
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
