"""PyTorch's elementwise copy and two flat Triton copies of llama3-8b's bytes, between
cudaProfilerStart/Stop, for ncu (launch shape, registers, occupancy, DRAM bytes, duration).

    ncu --clock-control none --profile-from-start off ... python3 scripts/dev/profile_copy.py
"""

import torch
import triton
from copy_sweep import N_BF16, _copy


def main():
    x = torch.randn(N_BF16, device="cuda").to(torch.bfloat16)
    y = torch.empty_like(x)
    launches = [lambda: torch.mul(x, 1, out=y)] + [
        lambda b=b, w=w: _copy[(triton.cdiv(N_BF16, b),)](x, y, N_BF16, BLOCK=b, MASK=True, LOAD_EVICT="",
                                                         LOAD_CACHE="", STORE_CACHE="", num_warps=w)
        for b, w in ((8192, 8), (1024, 4), (2048, 8))]
    for f in launches * 2:
        f()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for f in launches:
        f()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
