"""Public functional API."""

from __future__ import annotations

import torch

from ._core import norm_op, op
from .angles.multi_axis import MultiAxis
from .distributed import is_dtensor, local_call


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
    interleaved: bool | None = None,
    rotary_dim: int | None = None,
    inplace: bool = False,
    conjugate: bool = False,
    cos_lo: torch.Tensor | None = None,
    sin_lo: torch.Tensor | None = None,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate queries and keys by their positions' angles (rotary position embedding), in one launch.

    Notation: B batch, S sequence, H heads (``Hq`` for q, ``Hk`` for k), D head_dim, R rotary_dim,
    T total tokens of a packed batch, P table rows (positions).

    Parameters
    ----------
    q : torch.Tensor
        Queries, float32, float16 or bfloat16 (or float64, computed in float64), any strides. Shape by
        ``layout``: ``"bshd"`` (B, S, Hq, D), ``"bhsd"`` (B, Hq, S, D), ``"sbhd"`` (S, B, Hq, D),
        ``"thd"`` (T, Hq, D).
    k : torch.Tensor or None
        Keys in the same layout and dtype, with the same B, S and D; Hk may differ from Hq (GQA, MQA).
        ``None`` rotates q alone.
    cos, sin : torch.Tensor
        Tables of shape (P, >= R/2), any float dtype (float32 recommended); row p holds cos and sin of
        position p's angles. Only the first R/2 columns are read. They are constants: no gradient flows
        to them. Leave them out when ``freqs`` is given. Per-sequence tables: shape (B, P, >= R/2) (for
        ``"thd"`` (num_seqs, P, >= R/2)), each batch row (packed sequence) reading its own; a first dim of
        1, or stride 0, shares one table. Hugging Face's (B, S, R) cos/sin (``cat(freqs, freqs)``, as its
        rotary embedding returns them, e.g. for left-padded batches) are read as they are, without a copy,
        with ``rotary_dim=R``: only their first R/2 columns are read.
    freqs : torch.Tensor, optional
        Instead of tables: :func:`rope_triton.angles.freq_table` of the frequencies, shape (4, >= R/2).
        The kernel computes each position's cos/sin itself (exact angles at any position up to 2**31 - 2,
        cos/sin within ~2 float32 ulps), reading no table rows: for long sequences, whose tables are
        megabytes read on every call. Not for float64 q and k.
    multi_axis : rope_triton.angles.MultiAxis, optional
        Multi-axis RoPE (M-RoPE of Qwen2-VL / Qwen2.5-VL / Qwen3-VL, 2-D vision, N-D diffusion; presets in
        :mod:`rope_triton.angles`) instead of tables: pair i turns by ``positions[axis[i]] * inv_freq[i]``,
        computed in the kernel as with ``freqs`` (``freqs=multi_axis.freq_table(device)`` is the same
        call). ``positions`` then have a leading axis dim; without positions every axis is at the
        token's index plus ``offsets`` (text tokens, decode). The pairing and rotary_dim are the
        MultiAxis's.
    positions : torch.Tensor, optional
        Explicit table row of every token, int32 or int64: (B, S) (or (1, S), (S,), broadcast over the
        batch), or (T,) for ``"thd"``. Exclusive with ``offsets``. With a multi-axis table: (n_axes, B,
        S) (or (n_axes, 1, S), (n_axes, S) shared by the batch), (n_axes, T) for ``"thd"``; integers, or
        floats for presets with fractional coordinates (diffusion models' ids).
    offsets : int or torch.Tensor, optional
        Added to each token's index in its sequence (KV-cache decoding, chunked prefill): an int, or an
        int tensor of shape (B,), or (num_seqs,) for ``"thd"``.
    cu_seqlens : torch.Tensor, optional
        ``"thd"`` only (and required there): int32/int64 (num_seqs + 1,) sequence boundaries; positions
        restart at 0 in every sequence.
    max_seqlen : int, optional
        ``"thd"`` only: the longest sequence, used to check on the host that positions fit the table
        (without it, tokens past the table come out NaN).
    layout : {"bshd", "bhsd", "sbhd", "thd"}
    interleaved : bool, optional
        ``False`` (default): pairs (i, i + R/2), the NeoX / Llama / Hugging Face ``rotate_half``
        convention. ``True``: pairs (2i, 2i + 1), the GPT-J / Meta convention. With ``multi_axis``, its
        pairing.
    rotary_dim : int, optional
        Even, 0 < R <= D; default ``2 * cos.shape[-1]``. Dimensions past R pass through unchanged.
    inplace : bool
        Write into q and k and return them (autograd is told). Otherwise the inputs are never modified.
        q and k must not share memory then.
    conjugate : bool
        Rotate by -theta (the inverse rotation).
    cos_lo, sin_lo : torch.Tensor, optional
        Split tables for exact angles at any length in little memory (see
        :func:`rope_triton.angles.split_tables`): ``cos_lo``/``sin_lo`` of shape (2**b, >= R/2) hold the
        angles of positions 0 .. 2**b - 1, and ``cos``/``sin`` then hold those of positions
        0, 2**b, 2 * 2**b, ...; the kernel combines rows p >> b and p & (2**b - 1) by the angle-addition
        formulas. The tables then cover ``cos.shape[0] * 2**b`` positions. cos/sin are 2-D then.
    cp_size, cp_rank : int
        Context parallelism: q and k hold rank ``cp_rank``'s shard of sequences split over ``cp_size``
        ranks in the load-balanced ("zigzag") layout of Transformer Engine and Megatron: each sequence
        (each packed one for ``"thd"``) cut into ``2 * cp_size`` chunks, this rank holding chunks
        ``cp_rank`` and ``2 * cp_size - 1 - cp_rank``. The kernel rotates every token by its global
        position (:func:`rope_triton.context_parallel.rank_positions` states them); local sequences must
        have even lengths (a device-side ``cu_seqlens`` with an odd one gives NaN for its tokens). Not
        with explicit ``positions``. DTensor q and k (sharded on batch, heads or, in contiguous chunks,
        the sequence) are rotated shard by shard and come back as DTensors placed alike
        (:mod:`rope_triton.distributed`).

    Returns
    -------
    (q_out, k_out) : tuple of torch.Tensor
        Same shapes, dtype and layout as q and k; ``k_out`` is None when ``k`` is None. The pair (x1, x2)
        becomes (x1 cos - x2 sin, x2 cos + x1 sin), computed in float32. A device-side position outside
        the table yields NaN for that token (it is never read out of bounds).

    Examples
    --------
    >>> import torch, rope_triton
    >>> q, k = torch.randn(2, 16, 8, 64), torch.randn(2, 16, 2, 64)  # GQA: 8 query heads, 2 kv heads
    >>> angle = torch.arange(16.0)[:, None] * 10000.0 ** (-torch.arange(32) / 32)
    >>> q_rot, k_rot = rope_triton.apply_rotary(q, k, angle.cos(), angle.sin())
    >>> q_rot.shape, k_rot.shape
    (torch.Size([2, 16, 8, 64]), torch.Size([2, 16, 2, 64]))
    """
    if is_dtensor(q):
        return local_call(
            apply_rotary, q, k, dict(cos=cos, sin=sin, freqs=freqs, cos_lo=cos_lo, sin_lo=sin_lo),
            layout=layout, positions=positions, offsets=offsets, multi_axis=multi_axis, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, interleaved=interleaved, rotary_dim=rotary_dim, inplace=inplace,
            conjugate=conjugate, cp_size=cp_size, cp_rank=cp_rank,
        )
    freqs, interleaved, rotary_dim = _angle_args(
        q, cos, sin, freqs, multi_axis, positions, interleaved, rotary_dim
    )
    return op.apply(
        q, k, cos, sin, freqs=freqs, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim, inplace=inplace,
        conjugate=conjugate, cos_lo=cos_lo, sin_lo=sin_lo, cp_size=cp_size, cp_rank=cp_rank,
    )


def _angle_args(q, cos, sin, freqs, multi_axis, positions, interleaved, rotary_dim):
    """(freqs, interleaved, rotary_dim) once the angle source is checked: tables, freqs or multi_axis."""
    if multi_axis is not None:
        return _multi_axis_args(q, cos, sin, freqs, multi_axis, positions, interleaved, rotary_dim)
    if freqs is not None:
        if cos is not None or sin is not None:
            raise ValueError("freqs: cos/sin tables and freqs are exclusive, got both")
    elif cos is None or sin is None:
        missing = "cos" if cos is None else "sin"
        raise TypeError(f"{missing}: expected cos and sin tables (or freqs=...), got None")
    return freqs, (False if interleaved is None else interleaved), rotary_dim


def _multi_axis_args(q, cos, sin, freqs, multi_axis, positions, interleaved, rotary_dim):
    """(freqs, interleaved, rotary_dim) of a ``multi_axis`` call, after checking the arguments against it."""
    if not isinstance(multi_axis, MultiAxis):
        raise TypeError(
            f"multi_axis: expected a rope_triton.angles.MultiAxis, got {type(multi_axis).__name__}"
        )
    if cos is not None or sin is not None or freqs is not None:
        raise ValueError("multi_axis: cos/sin tables, freqs and multi_axis are exclusive, got more than one")
    if interleaved is not None and interleaved != multi_axis.interleaved:
        pairs = "adjacent (2i, 2i + 1)" if multi_axis.interleaved else "half-split (i, i + R/2)"
        raise ValueError(f"interleaved: the MultiAxis pairs dims {pairs}, got interleaved={interleaved!r}")
    if rotary_dim is not None and rotary_dim != multi_axis.rotary_dim:
        raise ValueError(
            f"rotary_dim: expected the MultiAxis's {multi_axis.rotary_dim} (or None), got {rotary_dim}"
        )
    if isinstance(positions, torch.Tensor):
        if positions.dim() < 2 or positions.shape[0] != multi_axis.n_axes:
            raise ValueError(
                f"positions: expected a leading axis dim of n_axes = {multi_axis.n_axes}, (n_axes, B, S) or "
                f"(n_axes, S) ((n_axes, T) packed), got shape {tuple(positions.shape)}"
            )
        if multi_axis.integer_positions and positions.is_floating_point():
            raise ValueError(
                "positions: this MultiAxis takes integer positions (token indices), got dtype "
                f"{positions.dtype}"
            )
    device = q.device if isinstance(q, torch.Tensor) else None
    return multi_axis.freq_table(device), multi_axis.interleaved, multi_axis.rotary_dim


def qk_norm_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_weight: torch.Tensor | None,
    k_weight: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    eps: float = 1e-6,
    norm: str = "rms",
    weight_offset: float = 0.0,
    norm_after_rope: bool = False,
    freqs: torch.Tensor | None = None,
    multi_axis: MultiAxis | None = None,
    positions: torch.Tensor | None = None,
    offsets: int | torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    max_seqlen: int | None = None,
    layout: str = "bshd",
    interleaved: bool | None = None,
    rotary_dim: int | None = None,
    inplace: bool = False,
    cos_lo: torch.Tensor | None = None,
    sin_lo: torch.Tensor | None = None,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalize q and k (RMSNorm of Qwen3, Gemma 3, OLMo 2; Llama 4's L2 norm) and rotate them, in one
    launch: q and k are read once and written once, forward and backward.

    Notation as in :func:`apply_rotary`: B batch, S sequence, Hq/Hk heads, D head_dim, R rotary_dim.

    Parameters
    ----------
    q, k : torch.Tensor
        As in :func:`apply_rotary` (any strides: slices of a fused qkv projection are read in place).
    q_weight, k_weight : torch.Tensor or None
        The norms' weights, any float dtype: (D,) for ``norm="rms"``, (Hq * D,) / (Hk * D,) for
        ``"rms_heads"``; None for no weight (always for ``"l2"``). Gradients flow to them.
    cos, sin, freqs, multi_axis, positions, offsets, cu_seqlens, max_seqlen, layout, interleaved,
    rotary_dim, cos_lo, sin_lo, cp_size, cp_rank
        The angles, layout and context-parallel shard, as in :func:`apply_rotary`.
    eps : float
        Added to the mean square, > 0 (a head of zeros stays zeros).
    norm : {"rms", "rms_heads", "l2"}
        ``"rms"``: each head over its D values, ``x / sqrt(mean(x**2) + eps) * (weight + weight_offset)``
        (Qwen3, Qwen3-MoE, Gemma 3, OLMo 2's per-head variants). ``"rms_heads"``: each token over all its
        heads' values at once (OLMo 2's q_norm/k_norm over the whole projection). ``"l2"``: Llama 4's
        ``L2Norm``, the same without a weight (put it after the rotation with ``norm_after_rope=True``).
    weight_offset : float
        Added to the weight: 1.0 for Gemma's ``(1 + weight)``.
    norm_after_rope : bool
        Rotate first, then normalize (Llama 4). Without a weight the order makes no difference.
    inplace : bool
        Write into q and k. With autograd the inputs are still needed by the backward: the result is then
        computed out of place and copied back (autograd is told).

    Returns
    -------
    (q_out, k_out) : tuple of torch.Tensor
        q's and k's shapes and dtypes. Statistics and rotation in float32 (float64 for float64 inputs),
        rounded once.

    Examples
    --------
    >>> import torch, rope_triton
    >>> q, k = torch.randn(2, 16, 8, 64), torch.randn(2, 16, 2, 64)
    >>> angle = torch.arange(16.0)[:, None] * 10000.0 ** (-torch.arange(32) / 32)
    >>> qw, kw = torch.ones(64), torch.ones(64)
    >>> q_out, k_out = rope_triton.qk_norm_rotary(q, k, qw, kw, angle.cos(), angle.sin())
    >>> q_out.pow(2).mean(-1).allclose(torch.ones(2, 16, 8), atol=1e-4)
    True
    """
    freqs, interleaved, rotary_dim = _angle_args(
        q, cos, sin, freqs, multi_axis, positions, interleaved, rotary_dim
    )
    return norm_op.apply(
        q, k, q_weight, k_weight, cos, sin, norm=norm, eps=eps, weight_offset=weight_offset,
        norm_after_rope=norm_after_rope, freqs=freqs, multi_axis=multi_axis, positions=positions,
        offsets=offsets, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, layout=layout, interleaved=interleaved,
        rotary_dim=rotary_dim, inplace=inplace, cos_lo=cos_lo, sin_lo=sin_lo, cp_size=cp_size,
        cp_rank=cp_rank,
    )
