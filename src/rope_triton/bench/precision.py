"""``rope-triton precision``: how far RoPE outputs land from the exact rotation, at 4k, 128k and 1M positions.

For each base, input dtype and starting position p0 it rotates random normal q of shape
(1, tokens, heads, head_dim) at positions p0 .. p0 + tokens - 1 three ways and compares each with a float64
rotation by exact angles (float64 ``p * inv_freq``, float64 cos/sin) of the same inputs:

- ``rope-triton``: :class:`rope_triton.RotaryEmbedding` (split tables built from float64 angles);
- ``hf``: Hugging Face's method: float32 angles ``float32(p) * float32(inv_freq)``, float32 cos/sin cast
  to the input dtype, then ``q * cos + rotate_half(q) * sin`` in the input dtype;
- ``floor`` (bf16 only): the exact result rounded once to bf16, the best any bf16 output can do.

Metrics: max |out - ref| and the relative error ||out - ref|| / ||ref|| over all tested elements.

    python -m rope_triton.bench.precision [--device cuda] [--json out.json]

On a CPU without ``TRITON_INTERPRET=1`` rope-triton runs its PyTorch path (same float32 arithmetic on
the same tables), in a few seconds. This module imports no Triton until :func:`main` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import torch

DEFAULT_POSITIONS = (4096, 131072, 2**20 - 64)
DEFAULT_BASES = (10000.0, 500000.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
METHODS = ("rope-triton", "hf", "floor")


def exact_rotation(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """float64 rotate-half RoPE of ``x`` (B, S, H, D) at ``positions`` (S,) with exact float64 angles."""
    d = x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=x.device) / d)
    theta = positions.to(torch.float64)[:, None] * inv  # (S, D/2); float64 keeps ~1e-10 rad at 1M
    c, s = theta.cos()[:, None, :], theta.sin()[:, None, :]
    x = x.to(torch.float64)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def hf_rotation(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Hugging Face's arithmetic (LlamaRotaryEmbedding + apply_rotary_pos_emb), written out."""
    d = x.shape[-1]
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    freqs = positions.to(torch.float32)[:, None] * inv_freq  # float32 angles
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype)[:, None, :], emb.sin().to(x.dtype)[:, None, :]
    rotated_half = torch.cat((-x[..., d // 2 :], x[..., : d // 2]), dim=-1)
    return x * cos + rotated_half * sin


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """``max_abs``: max |out - ref|; ``rel``: ||out - ref|| / ||ref|| (2-norms over all elements)."""
    err = out.to(torch.float64) - ref
    return {"max_abs": err.abs().max().item(), "rel": (err.norm() / ref.norm()).item()}


def measure(
    *,
    positions: tuple[int, ...] = DEFAULT_POSITIONS,
    bases: tuple[float, ...] = DEFAULT_BASES,
    dtypes: tuple[str, ...] = ("fp32", "bf16"),
    tokens: int = 64,
    heads: int = 8,
    head_dim: int = 128,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict]:
    """One row per (base, dtype, p0): the errors of each method (``floor`` is None for fp32)."""
    from ..modules import RotaryEmbedding  # imports Triton: only when measuring

    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    max_pos = max(positions) + tokens
    rows = []
    for base in bases:
        rope = RotaryEmbedding(head_dim, base=base, max_positions=max_pos, device=device)
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            for p0 in positions:
                pos = torch.arange(p0, p0 + tokens, device=device)
                x = torch.randn(1, tokens, heads, head_dim, generator=gen, dtype=torch.float64).to(
                    device, dtype
                )
                ref = exact_rotation(x, pos, base)
                ours, _ = rope(x, positions=pos, layout="bshd")
                row = {
                    "base": base,
                    "dtype": dtype_name,
                    "position": p0,
                    "tokens": tokens,
                    "rope-triton": errors(ours, ref),
                    "hf": errors(hf_rotation(x, pos, base), ref),
                    "floor": errors(ref.to(dtype), ref) if dtype != torch.float32 else None,
                }
                rows.append(row)
    return rows


def _cell(e: dict | None) -> str:
    return "-" if e is None else f"{e['max_abs']:.2e} / {e['rel']:.2e}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table: base, dtype, position, then 'max abs / rel' for each method."""
    header = ["base", "dtype", "position", *METHODS]
    body = [
        [
            f"{r['base']:g}",
            r["dtype"],
            f"{r['position']}..{r['position'] + r['tokens'] - 1}",
            *(_cell(r[m]) for m in METHODS),
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rope-triton precision",
        description=(
            "Error of rope-triton, Hugging Face's float32-angle method and (bf16) the rounding floor "
            "against float64 RoPE with exact angles, at positions near 4k, 128k and 1M."
        ),
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    p.add_argument("--positions", type=int, nargs="+", default=list(DEFAULT_POSITIONS),
                   help="first position p0 of each run of tokens (default: %(default)s)")  # fmt: skip
    p.add_argument("--bases", type=float, nargs="+", default=list(DEFAULT_BASES), help="rope_theta values")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES), help="input dtypes")
    p.add_argument("--tokens", type=int, default=64, help="tokens per position run (default: %(default)s)")
    p.add_argument("--heads", type=int, default=8, help="heads (default: %(default)s)")
    p.add_argument("--head-dim", type=int, default=128, help="head_dim (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write ``--json``); returns 0."""
    args = _parser().parse_args(argv)
    if args.tokens < 1 or args.heads < 1 or args.head_dim < 2 or args.head_dim % 2:
        _parser().error("--tokens and --heads must be >= 1 and --head-dim even")
    if min(args.positions) < 0 or max(args.positions) + args.tokens > 2**24:
        _parser().error(
            "positions must be in [0, 2**24 - tokens] (float32 holds integers exactly below 2**24)"
        )
    if any(not math.isfinite(b) or b <= 1 for b in args.bases):
        _parser().error("--bases must be finite and > 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = measure(
        positions=tuple(args.positions),
        bases=tuple(args.bases),
        dtypes=tuple(args.dtypes),
        tokens=args.tokens,
        heads=args.heads,
        head_dim=args.head_dim,
        device=device,
        seed=args.seed,
    )
    print(f"RoPE error vs float64 exact angles (max abs / relative), head_dim {args.head_dim}, "
          f"{args.heads} heads, positions p0..p0+{args.tokens - 1}, device {device}")  # fmt: skip
    print(format_table(rows))
    if args.json:
        config = {
            k: getattr(args, k)
            for k in ("positions", "bases", "dtypes", "tokens", "heads", "head_dim", "seed")
        }
        with open(args.json, "w") as f:
            json.dump({"device": device, "config": config, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
