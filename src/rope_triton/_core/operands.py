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


class NormOperands(NamedTuple):
    """A normalization fused before (or after) the rotation: its tensors and options.

    ``kind``: 1 normalizes each head over head_dim, 2 each token over all its heads. ``weight_q``/
    ``weight_k``: (head_dim,) or (heads * head_dim,) weights, or None. Backward: ``grad_q``/``grad_k`` are the
    output gradients (contiguous in the layout; q and k of the Operands are then the saved inputs) and
    ``dw`` receives each program's partial weight gradient, one row per program."""

    kind: int
    eps: float
    weight_offset: float
    after_rope: bool
    weight_q: torch.Tensor | None = None
    weight_k: torch.Tensor | None = None
    grad_q: torch.Tensor | None = None
    grad_k: torch.Tensor | None = None
    dw: torch.Tensor | None = None
