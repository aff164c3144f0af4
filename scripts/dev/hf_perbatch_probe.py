"""Host and device time of the Hugging Face drop-in with per-row cos/sin (left-padded batches: every layer of
every decode step). Before session 7 the drop-in flattened the tables to (B * S, R) and built an arange of
per-row offsets per call (one more launch and allocation); now the (B, S, R) tables go to the kernel as
per-sequence tables. Both paths are timed here (the old one rebuilt from the public API), beside the
shared-table call and an empty Triton launch.

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/hf_perbatch_probe.py
"""

import torch
from overhead import _empty, wall  # (scripts/dev on PYTHONPATH)

from rope_triton import apply_rotary
from rope_triton.bench import cuda_device_time_us
from rope_triton.integrations.transformers import apply_rotary_pos_emb


def old_path(q, k, cos, sin):
    batch, seqlen, half = cos.shape[0], cos.shape[1], cos.shape[-1] // 2
    rows = [t[..., :half].flatten(0, 1) for t in (cos, sin)]
    offsets = torch.arange(0, batch * seqlen, seqlen, device=q.device)
    return apply_rotary(q, k, rows[0], rows[1], offsets=offsets, layout="bhsd")


def main():
    dev = torch.device("cuda")
    x = torch.zeros(1, device=dev)
    for b, s in ((64, 1), (8, 512)):
        q = torch.randn(b, 32, s, 128, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, 8, s, 128, device=dev, dtype=torch.bfloat16)
        pos = torch.randint(0, 4000, (b, s), device=dev).double()
        inv = 10000.0 ** (-torch.arange(0, 128, 2, device=dev, dtype=torch.float64) / 128)
        emb = torch.cat([pos[..., None] * inv] * 2, dim=-1)
        cos, sin = emb.cos().float(), emb.sin().float()
        new = apply_rotary_pos_emb(q, k, cos, sin)
        old = old_path(q, k, cos, sin)
        assert all(torch.equal(a, b) for a, b in zip(new, old)), "paths differ"
        rows = {
            "empty triton launch": lambda: _empty[(1,)](x),
            "drop-in, per-row tables (new)": lambda: apply_rotary_pos_emb(q, k, cos, sin),
            "flattened rows + arange offsets (old)": lambda: old_path(q, k, cos, sin),
            "drop-in, one table for the batch": lambda: apply_rotary_pos_emb(q, k, cos[:1], sin[:1]),
        }
        for _ in range(2):
            for name, fn in rows.items():
                dev_us = cuda_device_time_us(fn, warmup_ms=5, rep_ms=20)
                print(f"B{b:3d} S{s:4d}  {name:40s} host {wall(fn):6.1f} us/call   device {dev_us:7.2f} us")


if __name__ == "__main__":
    main()
