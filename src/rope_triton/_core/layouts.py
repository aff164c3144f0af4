"""The tensor layouts: names, and which axis is batch, sequence, head and dim in each. No Triton."""

from __future__ import annotations

import torch

LAYOUTS = ("bshd", "bhsd", "sbhd", "thd")
# Which axis of a tensor in each layout is batch, seq, head and dim (thd: no batch axis). The one
# place the layouts are spelled out: validation, the launcher's strides and the module read it.
BSHD_AXES = {"bshd": (0, 1, 2, 3), "bhsd": (0, 2, 1, 3), "sbhd": (1, 0, 2, 3), "thd": (None, 0, 1, 2)}


def to_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """View ``x`` as (B, S, H, D); ``thd`` becomes (1, T, H, D). No copy."""
    if layout == "bshd":
        return x
    if layout == "bhsd":
        return x.transpose(1, 2)
    if layout == "sbhd":
        return x.transpose(0, 1)
    if layout == "thd":
        return x.unsqueeze(0)
    raise ValueError(f"layout: expected one of {LAYOUTS}, got {layout!r}")


def from_bshd(x: torch.Tensor, layout: str) -> torch.Tensor:
    """Inverse of :func:`to_bshd`."""
    if layout == "thd":
        return x.squeeze(0)
    if layout == "bshd":
        return x
    return x.transpose(0, 1) if layout == "sbhd" else x.transpose(1, 2)
