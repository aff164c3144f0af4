"""DTensor inputs: rotate each rank's local shard where it lies, and hand back DTensors of the same layout.

Sharded on the batch or the heads (data or tensor parallelism), a shard is rotated as it is; sharded on the
sequence (``Shard`` of the sequence dim: contiguous chunks), each rank's tokens start at its chunk's global
offset, which is added to ``offsets``. Nothing is gathered. (For the load-balanced zigzag layout of context
parallelism pass plain local tensors with ``cp_size``/``cp_rank``.)
"""

from __future__ import annotations

import math

import torch

from ._core.layouts import BSHD_AXES


def is_dtensor(x: object) -> bool:
    # (by name: torch.distributed.tensor is imported only when a DTensor is seen)
    return type(x).__name__ == "DTensor" and type(x).__module__.startswith("torch.distributed.tensor")


def local_call(fn, q, k, tables: dict, *, layout: str, positions, offsets, **kwargs):
    """``fn(q_local, k_local, **tables, positions=..., offsets=..., layout=..., **kwargs)`` on DTensor q
    (and k), returning DTensors placed as q and k."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    same = is_dtensor(k) and k.device_mesh == q.device_mesh and k.placements == q.placements
    if k is not None and not same:
        raise ValueError("k: with a DTensor q, expected a DTensor on the same mesh with the same placements")
    if layout not in BSHD_AXES:
        raise ValueError(f"layout: expected one of {tuple(BSHD_AXES)}, got {layout!r}")
    batch_axis, seq_axis, head_axis, _ = BSHD_AXES[layout]
    mesh, placements = q.device_mesh, tuple(q.placements)
    start = 0
    for mesh_dim, placement in enumerate(placements):
        if isinstance(placement, Replicate):
            continue
        dim = placement.dim % q.dim() if isinstance(placement, Shard) else None
        if dim in (batch_axis, head_axis):
            continue
        if dim is not None and dim == seq_axis and layout != "thd" and start == 0:
            # torch.chunk's split, as DTensor's Shard: ceil(S / n) tokens per rank, the last ones fewer.
            chunk = math.ceil(q.shape[seq_axis] / mesh.size(mesh_dim))
            start = mesh.get_local_rank(mesh_dim) * chunk
            if positions is not None:
                start = 0  # explicit positions are global already
            continue
        raise ValueError(
            f"q: DTensor placement {placement} on mesh dim {mesh_dim} is not supported (expected Replicate "
            f"or Shard of the batch, head or sequence dim of layout {layout!r})"
        )
    local_tables = {n: (t.to_local() if is_dtensor(t) else t) for n, t in tables.items()}
    if is_dtensor(positions):
        positions = positions.to_local()
    if start:
        offsets = start if offsets is None else offsets + start
    out_q, out_k = fn(
        q.to_local(), None if k is None else k.to_local(), **local_tables, positions=positions,
        offsets=offsets, layout=layout, **kwargs,
    )

    def wrap(out, like):
        if out is None:
            return None
        if kwargs.get("inplace"):
            return like
        stride = torch.empty(like.shape, device="meta").stride()  # outputs are contiguous in the layout
        return DTensor.from_local(out, mesh, placements, shape=like.shape, stride=stride)

    return wrap(out_q, q), wrap(out_k, k)
