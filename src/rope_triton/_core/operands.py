"""The tensors of one call, carried together from the public API to the launcher."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Operands(NamedTuple):
    """Everything a call reads besides its options. With computed cos/sin (``Problem.freqs``), ``cos`` is
    the freq table and ``sin`` is None. ``offsets`` is a tensor or None (an int offset is in the Problem)."""

    q: torch.Tensor
    k: torch.Tensor | None
    cos: torch.Tensor
    sin: torch.Tensor | None
    cos_lo: torch.Tensor | None = None
    sin_lo: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    offsets: torch.Tensor | None = None
    cu_seqlens: torch.Tensor | None = None
