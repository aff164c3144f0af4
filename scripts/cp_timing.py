"""Time a context-parallel rank's RoPE against the dense call of its local size, per rank (torchrun).

Usage: torchrun --nproc-per-node 2 scripts/cp_timing.py [--seqlen 32768]
Each rank holds its zigzag shard (seqlen / world tokens of a Llama-3-8B-shaped q and k, bf16) and times
apply_rotary with cp_size/cp_rank and without (the same bytes, positions 0..local-1), with do_bench.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout's package first

import rope_triton  # noqa: E402
from rope_triton import angles  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqlen", type=int, default=32768)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    dist.init_process_group("nccl")
    local = args.seqlen // world
    q = torch.randn(1, local, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, local, 8, 128, device="cuda", dtype=torch.bfloat16)
    freqs = angles.freq_table(angles.inv_freq_and_scale(128, base=500000.0)[0], device="cuda")
    cp = do_bench(lambda: rope_triton.apply_rotary(q, k, freqs=freqs, cp_size=world, cp_rank=rank))
    dense = do_bench(lambda: rope_triton.apply_rotary(q, k, freqs=freqs))
    src = torch.empty(q.numel() + k.numel(), device="cuda", dtype=torch.bfloat16)  # reads and writes as many
    dst = torch.empty_like(src)
    copy = do_bench(lambda: dst.copy_(src))
    line = (
        f"rank {rank}/{world} {torch.cuda.get_device_name()}: local {local} tokens, cp {cp * 1e3:.1f} us, "
        f"dense {dense * 1e3:.1f} us (cp/dense {cp / dense:.3f}), same-bytes copy {copy * 1e3:.1f} us"
    )
    lines = [None] * world
    dist.all_gather_object(lines, line)
    if rank == 0:
        print("\n".join(lines))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
