"""Plain-PyTorch rotary embedding with the same signature and semantics as :func:`rope_triton.apply_rotary`.

It is the oracle of the test suite (run in float64) and the CPU path when the Triton interpreter is off
(run in float32). It imports no Triton and shares no code with the kernel: positions are gathered with
ordinary indexing and the rotation is written out pair by pair.

Notation: B batch, S sequence, H heads, D head_dim, R rotary_dim, T total tokens of a packed batch.
"""

from __future__ import annotations

import torch

from ._core.layouts import BSHD_AXES, LAYOUTS, from_bshd, to_bshd  # noqa: F401 (re-exported for tests)
from .angles.fixed_point import FREQ_MAX_POSITION
from .angles.multi_axis import MultiAxis
from .angles.multi_axis import angles as multi_axis_angles
from .angles.tables import freq_table_angles, freq_table_factor
from .context_parallel import zigzag_positions


def token_positions(
    batch: int,
    seqlen: int,
    device: torch.device,
    *,
    positions: torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> torch.Tensor:
    """Table row of every token, int64 of shape (B, S) (for ``thd``: (1, T)).

    Default: index within its sequence (for packed sequences restarting at 0 at every ``cu_seqlens``
    boundary), or with ``cp_size > 1`` its global position under zigzag context-parallel sharding
    (:mod:`rope_triton.context_parallel`); plus ``offsets`` (per batch or per packed sequence); or the
    explicit ``positions``.
    """
    if positions is not None:
        pos = positions.to(device=device, dtype=torch.int64)
        return pos.reshape(1, seqlen) if cu_seqlens is not None else pos.expand(batch, seqlen)
    if cu_seqlens is not None:
        cu = cu_seqlens.to(device=device, dtype=torch.int64)
        token = torch.arange(seqlen, device=device)
        # Sequence of each token: the last start at or before it.
        seq = torch.searchsorted(cu, token, right=True) - 1
        seq = seq.clamp(0, cu.numel() - 2)
        pos = token - cu[seq]
        if cp_size > 1:
            pos = zigzag_positions(pos, (cu[1:] - cu[:-1])[seq], cp_size, cp_rank)
        if offsets is not None:
            pos = pos + (offsets.to(device, torch.int64)[seq] if torch.is_tensor(offsets) else int(offsets))
        return pos.unsqueeze(0)
    pos = torch.arange(seqlen, device=device, dtype=torch.int64)
    if cp_size > 1:
        pos = zigzag_positions(pos, seqlen, cp_size, cp_rank)
    pos = pos.expand(batch, seqlen)
    if offsets is not None:
        if torch.is_tensor(offsets):
            pos = pos + offsets.to(device, torch.int64).reshape(batch, 1)
        else:
            pos = pos + int(offsets)
    return pos


def token_sequences(
    batch: int, seqlen: int, device: torch.device, cu_seqlens: torch.Tensor | None
) -> torch.Tensor:
    """Sequence of every token, int64 of shape (B, S) (its batch row), or (1, T) for ``thd`` (its packed
    sequence): which table of per-sequence cos/sin it reads."""
    if cu_seqlens is None:
        return torch.arange(batch, device=device).reshape(batch, 1).expand(batch, seqlen)
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    token = torch.arange(seqlen, device=device)
    return (torch.searchsorted(cu, token, right=True) - 1).clamp(0, cu.numel() - 2).unsqueeze(0)


def gather_rows(
    table: torch.Tensor, pos: torch.Tensor, width: int, dtype: torch.dtype, seq: torch.Tensor | None = None
) -> torch.Tensor:
    """Rows ``pos`` of ``table[:, :width]`` in ``dtype``; rows outside the table read as NaN. A 3-D
    ``table`` (sequences, rows, columns) is per sequence: token i reads ``table[seq[i]]`` (every token
    the one table when its first dim is 1)."""
    rows = table.shape[-2]
    inside = (pos >= 0) & (pos < rows)
    row = pos.clamp(0, max(rows - 1, 0))
    if table.dim() == 3:
        which = seq if table.shape[0] > 1 else torch.zeros_like(row)
        picked = table[..., :width].to(dtype)[which, row]
    else:
        picked = table[:, :width].to(dtype)[row]
    return torch.where(inside.unsqueeze(-1), picked, torch.full_like(picked, float("nan")))


def freq_rows(
    freqs: torch.Tensor, pos: torch.Tensor, width: int, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the angles a ``freq_table`` gives positions ``pos`` (first ``width`` pairs), times its
    attention factor, computed in float64; positions outside [0, 2**31 - 2] read as NaN."""
    inside = ((pos >= 0) & (pos <= FREQ_MAX_POSITION)).unsqueeze(-1)
    theta = freq_table_angles(freqs[:, :width], pos.clamp(0, FREQ_MAX_POSITION))
    amplitude = freq_table_factor(freqs)[:width].to(device=pos.device, dtype=torch.float64)
    nan = torch.full_like(theta, float("nan"))
    cos = torch.where(inside, torch.cos(theta) * amplitude, nan)
    sin = torch.where(inside, torch.sin(theta) * amplitude, nan)
    return cos.to(dtype), sin.to(dtype)


def multi_axis_rows(
    multi_axis: MultiAxis,
    positions: torch.Tensor,
    batch: int,
    seqlen: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every token's multi-axis angles times the attention factor, computed in float64.

    ``positions``: (n_axes, B, S), (n_axes, 1, S) or (n_axes, S) (the same for every batch row) or, for
    ``thd``,
    (n_axes, T). Returns (B, S, R/2) (for ``thd``: (1, T, R/2)) in ``dtype``.
    """
    if not torch.is_tensor(positions) or positions.dim() not in (2, 3):
        got = tuple(positions.shape) if torch.is_tensor(positions) else positions
        raise ValueError(
            f"positions must have shape (n_axes, B, S) or (n_axes, T) with multi_axis, got {got}"
        )
    theta = multi_axis_angles(multi_axis, positions)
    if theta.shape[-2] != seqlen or theta.dim() == 3 and theta.shape[0] not in (1, batch):
        raise ValueError(
            f"positions must have shape (n_axes, B={batch}, S={seqlen}), (n_axes, 1, S), (n_axes, S) or "
            "for thd "
            f"(n_axes, T={seqlen}), got {tuple(positions.shape)}"
        )
    theta = theta.expand(batch, seqlen, theta.shape[-1])
    factor = multi_axis.attention_factor
    return (torch.cos(theta) * factor).to(dtype), (torch.sin(theta) * factor).to(dtype)


def rotate(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool, conjugate: bool
) -> torch.Tensor:
    """Rotate the last dim of ``x`` (width R) by angles whose cos/sin have width R/2.

    ``x``: (..., H, R); ``cos``, ``sin``: (..., 1, R/2). Pairs are (i, i + R/2) unless ``interleaved``,
    then (2i, 2i + 1). Rotation: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin; ``conjugate`` negates sin.
    """
    if conjugate:
        sin = -sin
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    else:
        x1, x2 = x.chunk(2, dim=-1)
    y1 = x1 * cos - x2 * sin
    y2 = x2 * cos + x1 * sin
    if interleaved:
        return torch.stack((y1, y2), dim=-1).flatten(-2)
    return torch.cat((y1, y2), dim=-1)


def _rotate_one(
    x: torch.Tensor,
    cos_rows: torch.Tensor,
    sin_rows: torch.Tensor,
    rotary_dim: int,
    *,
    layout: str,
    interleaved: bool,
    conjugate: bool,
    compute_dtype: torch.dtype,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    xb = to_bshd(x, layout)
    rot = rotate(
        xb[..., :rotary_dim].to(compute_dtype),
        cos_rows.unsqueeze(-2),
        sin_rows.unsqueeze(-2),
        interleaved=interleaved,
        conjugate=conjugate,
    ).to(out_dtype)
    # The tail is not computed on, so it passes through bit for bit.
    out = torch.cat((rot, xb[..., rotary_dim:].to(out_dtype)), dim=-1)
    return from_bshd(out, layout)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    freqs: torch.Tensor | None = None,
    multi_axis: MultiAxis | None = None,
    positions: torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    layout: str = "bshd",
    interleaved: bool = False,
    rotary_dim: int | None = None,
    inplace: bool = False,
    conjugate: bool = False,
    cos_lo: torch.Tensor | None = None,
    sin_lo: torch.Tensor | None = None,
    cp_size: int = 1,
    cp_rank: int = 0,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotary embedding in plain PyTorch; see :func:`rope_triton.apply_rotary` for the arguments.

    Inputs are not validated here (the public function does that). Differentiable through autograd.

    Parameters
    ----------
    multi_axis : MultiAxis, optional
        Multi-axis RoPE (:mod:`rope_triton.angles.multi_axis`) instead of ``cos``/``sin``/``freqs``:
        token angles are ``positions[axis[i]] * inv_freq[i]`` in float64, ``positions`` is required, of
        shape (n_axes, B, S), (n_axes, S) or for ``thd`` (n_axes, T), and the pairing is the
        MultiAxis's (``interleaved`` is ignored). ``rotary_dim`` defaults to ``multi_axis.rotary_dim``
        and must equal it; a wider head passes its tail through. ``offsets`` is not supported with it.
    compute_dtype : torch.dtype
        Dtype of the arithmetic (``torch.float64`` for a test oracle).
    out_dtype : torch.dtype, optional
        Dtype of the result; default the input's. With ``compute_dtype=out_dtype=torch.float64`` the
        result is the exact rotation of the given inputs by the given tables.

    Examples
    --------
    >>> q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    >>> cos, sin = torch.ones(4, 4), torch.zeros(4, 4)
    >>> apply_rotary(q, None, cos, sin, compute_dtype=torch.float64)[0].equal(q)
    True

    Multi-axis (M-RoPE) positions, (n_axes, B, S):

    >>> from rope_triton.angles import mrope
    >>> pos = torch.zeros(3, 1, 4, dtype=torch.int64)
    >>> apply_rotary(q, None, multi_axis=mrope(8, [2, 1, 1]), positions=pos,
    ...              compute_dtype=torch.float64)[0].equal(q)
    True
    """
    if multi_axis is not None:
        if rotary_dim is not None and rotary_dim != multi_axis.rotary_dim:
            raise ValueError(
                f"rotary_dim must equal multi_axis.rotary_dim = {multi_axis.rotary_dim}, got {rotary_dim}"
            )
        if positions is None:
            raise ValueError("positions: required with multi_axis, shape (n_axes, B, S) or (n_axes, T)")
        if offsets is not None:
            raise ValueError("offsets: not supported with multi_axis; add them to positions")
        rotary_dim = multi_axis.rotary_dim
        interleaved = multi_axis.interleaved
    elif rotary_dim is None:
        rotary_dim = 2 * (cos if freqs is None else freqs).shape[-1]
    half = rotary_dim // 2
    qb = to_bshd(q, layout)
    batch, seqlen = qb.shape[0], qb.shape[1]
    if multi_axis is not None:
        cos_rows, sin_rows = multi_axis_rows(multi_axis, positions, batch, seqlen, compute_dtype)
    else:
        pos = token_positions(
            batch, seqlen, q.device, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens,
            cp_size=cp_size, cp_rank=cp_rank,
        )
        if freqs is not None:
            cos_rows, sin_rows = freq_rows(freqs, pos, half, compute_dtype)
        elif cos_lo is None:
            seq = token_sequences(batch, seqlen, q.device, cu_seqlens) if cos.dim() == 3 else None
            cos_rows = gather_rows(cos, pos, half, compute_dtype, seq)
            sin_rows = gather_rows(sin, pos, half, compute_dtype, seq)
        else:
            # Split tables: angle(p) = angle(high part) + angle(low part), by the angle-addition formulas.
            lo_rows = cos_lo.shape[0]
            pos_hi = torch.where(pos >= 0, pos // lo_rows, -1)
            ch, sh = (gather_rows(t, pos_hi, half, compute_dtype) for t in (cos, sin))
            cl, sl = (gather_rows(t, pos % lo_rows, half, compute_dtype) for t in (cos_lo, sin_lo))
            cos_rows, sin_rows = ch * cl - sh * sl, sh * cl + ch * sl

    def one(x: torch.Tensor) -> torch.Tensor:
        return _rotate_one(
            x,
            cos_rows,
            sin_rows,
            rotary_dim,
            layout=layout,
            interleaved=interleaved,
            conjugate=conjugate,
            compute_dtype=compute_dtype,
            out_dtype=out_dtype or x.dtype,
        )

    q_out = one(q)
    k_out = one(k) if k is not None else None
    if inplace:
        q_out = q.copy_(q_out)
        k_out = k.copy_(k_out) if k is not None else None
    return q_out, k_out


def qk_norm_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    norm: str = "rms",
    eps: float = 1e-6,
    weight_offset: float = 0.0,
    norm_after_rope: bool = False,
    layout: str = "bshd",
    inplace: bool = False,
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
    **rotary,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalize then rotate (or rotate then normalize) in plain PyTorch; see
    :func:`rope_triton.qk_norm_rotary` for the arguments (``rotary``: those of :func:`apply_rotary`).

    ``norm="rms"`` and ``"l2"`` divide each head by the root mean square of its head_dim values (plus
    ``eps``), ``"rms_heads"`` each token by that of all its heads' values; the weight (plus
    ``weight_offset``) scales the result. Differentiable through autograd.

    Examples
    --------
    >>> q = torch.randn(1, 4, 2, 8, dtype=torch.float64)
    >>> cos, sin = torch.ones(4, 4), torch.zeros(4, 4)
    >>> y, _ = qk_norm_rotary(q, None, None, None, cos, sin, eps=0.0, compute_dtype=torch.float64)
    >>> torch.allclose(y.pow(2).mean(-1), torch.ones(1, 4, 2, dtype=torch.float64))
    True
    """

    def normalize(x: torch.Tensor) -> torch.Tensor:
        xb = to_bshd(x, layout).to(compute_dtype)
        dims = (-2, -1) if norm == "rms_heads" else (-1,)
        return from_bshd(xb * torch.rsqrt(xb.pow(2).mean(dims, keepdim=True) + eps), layout)

    def weigh(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        if w is None:
            return x
        xb = to_bshd(x, layout)
        w = w.to(compute_dtype) + weight_offset
        return from_bshd(xb * (w.view(xb.shape[-2:]) if norm == "rms_heads" else w), layout)

    def rotate_exactly(a: torch.Tensor, b: torch.Tensor | None):
        return apply_rotary(
            a, b, cos, sin, layout=layout, compute_dtype=compute_dtype, out_dtype=compute_dtype, **rotary
        )

    nq = normalize(q)
    nk = normalize(k) if k is not None else None
    if norm_after_rope:
        rq, rk = rotate_exactly(nq, nk)
        yq, yk = weigh(rq, q_weight), (weigh(rk, k_weight) if k is not None else None)
    else:
        yq, yk = rotate_exactly(weigh(nq, q_weight), weigh(nk, k_weight) if k is not None else None)
    yq = yq.to(out_dtype or q.dtype)
    yk = yk.to(out_dtype or k.dtype) if k is not None else None
    if inplace:
        yq = q.copy_(yq)
        yk = k.copy_(yk) if k is not None else None
    return yq, yk
