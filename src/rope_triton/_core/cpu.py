"""The CPU path: what :func:`rope_triton.apply_rotary` runs on CPU tensors when the Triton interpreter is off.

Same semantics and accuracy contract as the kernel: every layout, GQA, interleaved or half-split pairs,
partial rotary (the tail passes through bit for bit), conjugate, positions / offsets / cu_seqlens,
per-sequence tables, split tables and ``freqs``; float32 math (float64 for float64 data) rounded once to
the output dtype; a position outside the table gives NaN for that token.

Written for few CPU cores, where a decode step is a handful of small ops and a prefill moves megabytes:

- each token's cos/sin rows are gathered once (a slice of the table when the positions are a range
  shared by the batch, else one ``index_select``) and broadcast over the heads;
- the arithmetic runs on dense tensors only: the input is converted to float32 in its own memory order;
  half-split pairs are multiplied by cos over the whole head (a (2, R/2) view of it), then each half adds
  its sin term read straight from the other half: two half-width ``addcmul_``, whose ``value`` carries
  the sign, in fewer passes over memory than swapping the halves into a copy (a ``roll`` is two strided
  copies) and multiplying that by a signed sin; only float32 (float64) data rotated in place, whose
  halves the first write overwrites, swaps them into a copy first. Interleaved pairs, which are adjacent,
  take one complex multiply;
- one ``copy_`` into the output rounds the result once; float32 data is rotated straight into the output;
- a small q and k (a decode step) share one float32 buffer: half the ops; large ones go in blocks;
- a decode step costs about as much in per-call overhead as in arithmetic: its rows are gathered straight
  into their broadcast shape, and its buffers are split, not sliced, into q's and k's heads.

:mod:`rope_triton.reference` stays the independent, plain oracle of the tests; nothing is shared with it.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..angles.fixed_point import (
    FREQ_AXIS_ROW,
    FREQ_CHUNK_BITS,
    FREQ_CHUNKS,
    FREQ_FRAC_BITS,
    FREQ_MAX_POSITION,
)
from ..angles.tables import freq_table_factor
from .checks import POS_EXPLICIT, POS_OFFSETS, Problem
from .layouts import to_bshd

_F64 = torch.float64

# The sign of sin for each half of a pair, (2, 1), where the halves are swapped into a copy (float32 or
# float64 data rotated in place): the rotation y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin multiplies the
# partners (x2, x1) by (-sin, +sin), the conjugate rotation by (+sin, -sin).
_SIGNS = {
    (dtype, conjugate): torch.tensor([[1.0], [-1.0]] if conjugate else [[-1.0], [1.0]], dtype=dtype)
    for dtype in (torch.float32, _F64)
    for conjugate in (False, True)
}
_SWAP = torch.tensor([1, 0])


def rotate(
    p: Problem,
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    interleaved: bool,
    conjugate: bool,
) -> None:
    """Rotate ``q`` (and ``k``) into ``q_out`` (and ``k_out``), which may be the inputs themselves.

    Arguments as validated by :func:`rope_triton._core.checks.check` (``p``); with ``p.freqs``, ``cos`` is
    the freq table (and ``sin`` the same tensor). ``offsets`` is the tensor of per-sequence offsets or
    None (the scalar one is ``p.offset``).
    """
    if p.batch * p.seqlen == 0:
        return
    wdtype = _F64 if q.dtype == _F64 else torch.float32
    factors = _factors(p, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, interleaved, conjugate,
                       wdtype)
    if (
        k is not None and p.heads_k and q.dtype != wdtype and torch.get_num_threads() > 1
        and not torch.compiler.is_compiling()
        and _rotate_together(q, k, q_out, k_out, p, factors, interleaved, wdtype)
    ):
        return
    _rotate_one(q, q_out, p, factors, interleaved, wdtype)
    if k is not None and p.heads_k:
        _rotate_one(k, k_out, p, factors, interleaved, wdtype)


def _factors(p, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, interleaved, conjugate, wdtype):
    """The rotation's factors in ``wdtype``: ``(cos, sin, sign)`` for half-split pairs, ``(cos + i sin,)``
    for interleaved ones. Each token's rows with a unit axis for the heads, broadcast over them (and over
    the batch when shared): (1 or B, S, 1, R/2); cos of half-split pairs with one more unit axis, (1 or B,
    S, 1, 1, R/2), for both halves of the (..., 2, R/2) pairs."""
    half = p.rotary_dim // 2
    c, s = _decode_rows(p, cos, sin, cos_lo, offsets, half, wdtype, interleaved)
    if c is None:
        c, s = _cos_sin(p, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, half, wdtype)
        c = c.view(*c.shape[:2], 1, half) if interleaved else c.view(*c.shape[:2], 1, 1, half)
        s = s.view(*s.shape[:2], 1, half)
    if interleaved:
        return (torch.complex(c, s.neg() if conjugate else s),)
    # The sign of sin in the first half's rotation: y1 = x1 cos - x2 sin, y2 = x2 cos + x1 sin (the
    # conjugate rotation flips both signs).
    return c, s, 1.0 if conjugate else -1.0


def norm_rotate(
    p: Problem,
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    weights: tuple[torch.Tensor | None, torch.Tensor | None],
    per_token: bool,
    eps: float,
    weight_offset: float,
    angles: tuple,
    interleaved: bool,
) -> None:
    """:func:`rope_triton.qk_norm_rotary` with the norm before the rotation (or after it, without weights:
    the same): q and k normalized and weighted in float32 (float64 data: float64), rotated in that
    precision and rounded once into ``q_out`` and ``k_out`` (which may be q and k).

    ``per_token``: one root mean square over all heads of a token (``rms_heads``), else one per head.
    ``angles``: :func:`rotate`'s arguments from ``cos`` to ``cu_seqlens``. q's and k's heads share one
    float32 buffer, normalized in place (a reduction and two multiplies, no squared copy), in blocks of
    tokens as :func:`rotate` does. Not differentiable (in-place ops): autograd takes the plain formulation.
    """
    # Hugging Face's decode step, (B, H, 1, D): heads on axis 1 as they are (the factors' (B, 1, 1, ...)
    # broadcast the same way in either order), one view less per tensor; else (B, S, H, D) views.
    axis = 1 if p.layout == "bhsd" and p.seqlen == 1 else 2
    tensors = ((q, q_out, weights[0]), (k, k_out, weights[1]))
    parts = [(x, y, w) if axis == 1 else (to_bshd(x, p.layout), to_bshd(y, p.layout), w)
             for x, y, w in tensors if x is not None]
    parts = [part for part in parts if part[0].shape[axis]]  # (k without heads)
    if p.batch * p.seqlen == 0 or not parts:
        return
    wdtype = _F64 if q.dtype == _F64 else torch.float32
    factors = _factors(p, *angles, interleaved, False, wdtype)
    rot = p.rotary_dim
    heads = [x.shape[axis] for x, _, _ in parts]
    # (a per-token weight is (H, D), viewed over the heads axis and any axes between it and the head dim)
    ws = [None if w is None else (w.to(wdtype) + weight_offset if weight_offset else w.to(wdtype))
          for _, _, w in parts]
    if per_token:
        ws = [w if w is None else w.view(h, *(1,) * (2 - axis), p.head_dim)
              for w, h in zip(ws, heads, strict=True)]
    d0, d1 = (p.batch, 1) if axis == 1 else parts[0][0].shape[:2]
    partial = rot < p.head_dim
    # (blocks of whole tokens: a token's heads, q's and k's, are never cut)
    for index in _blocks((d0, d1, 1, min(sum(heads) * p.head_dim, _BLOCK))):
        # (a decode step is one block: its cost is its number of ops, and index () would add views)
        xs, ys = ([x for x, _, _ in parts], [y for _, y, _ in parts]) if index == () else (
            [x[index] for x, _, _ in parts], [y[index] for _, y, _ in parts]
        )
        shape = list(xs[0].shape)
        shape[axis] = sum(heads)
        buf = torch.empty(shape, dtype=wdtype)
        chunks = buf.split_with_sizes(heads, axis) if len(parts) > 1 else (buf,)
        for chunk, x in zip(chunks, xs, strict=True):
            chunk.copy_(x)
        # 1 / rms from the norm (a reduction, no squared copy), applied in place: every head at once
        for chunk, count in ((buf, p.head_dim),) if not per_token else (
            (chunk, h * p.head_dim) for chunk, h in zip(chunks, heads, strict=True)
        ):
            rms = torch.linalg.vector_norm(chunk, dim=(axis, -1) if per_token else -1, keepdim=True)
            chunk.mul_(rms.square_().mul_(1 / count).add_(eps).rsqrt_())
        for chunk, w in zip(chunks, ws, strict=True):
            if w is not None:
                chunk.mul_(w)
        block_factors = factors if index == () else _take(factors, index)
        pairs = buf[..., :rot] if partial else buf
        if interleaved:
            (turn,) = block_factors
            rotated = pairs if _complex_view_ok(pairs) else pairs.contiguous()  # (an odd head_dim)
            torch.view_as_complex(rotated.unflatten(-1, (rot // 2, 2))).mul_(turn)
        else:
            rotated = _turn_halves(pairs, block_factors)
        outs = rotated.split_with_sizes(heads, axis) if len(parts) > 1 else (rotated,)
        for y, out, chunk in zip(ys, outs, chunks, strict=True):
            (y[..., :rot] if partial else y).copy_(out)  # the one rounding to the output dtype
            if partial:
                y[..., rot:].copy_(chunk[..., rot:])


# ---- rotation ------------------------------------------------------------------------------------------


def _memory_order(x: torch.Tensor) -> list[int] | None:
    """The (batch, seq, head) dims of a (B, S, H, D) view from the outermost in memory to the innermost
    (None: in that order already): permuted so, a dense tensor of any layout is contiguous, and elementwise
    ops sweep it in order."""
    s0, s1, s2, _ = x.stride()
    if s0 >= s1 >= s2:
        return None
    return sorted(range(3), key=lambda d: (-x.stride(d), d))


def _rotate_together(q, k, q_out, k_out, p, factors, interleaved, wdtype) -> bool:
    """Rotate small q and k (a decode step) in one float32 buffer of their heads side by side: half the
    ops of rotating them one after the other, each larger (on several threads, ops on k's few heads alone
    barely split; on one, the copies into the buffer cost more than they save). False, having done
    nothing, for a large problem or heads not innermost in memory."""
    rot, heads = p.rotary_dim, (p.heads_q, p.heads_k)
    if p.batch * p.seqlen * (heads[0] + heads[1]) * rot > _BLOCK:
        return False
    # (no views where they can be spared: on a decode step, whose ops are a few microseconds each, every
    # call counts)
    if p.layout == "bhsd" and p.seqlen == 1 and (p.batch == 1 or q.stride(0) >= q.stride(1)):
        # Hugging Face's decode step, (B, H, 1, D): the heads are axis 1, and the factors' (B, 1, 1, ...)
        # broadcast the same way in either order.
        xq, xk, yq, yk, axis = q, k, q_out, k_out, 1
    else:
        xq, xk, yq, yk = (q, k, q_out, k_out) if p.layout == "bshd" else (
            to_bshd(t, p.layout) for t in (q, k, q_out, k_out)
        )
        order = _memory_order(xq)
        if order is not None:
            if order[2] != 2:
                return False
            xq, xk, yq, yk = (t.permute(*order, 3) for t in (xq, xk, yq, yk))
            factors = _permuted(factors, order)
        axis = 2
    partial = rot < p.head_dim
    shape = list(xq.shape[:3]) + [rot]
    shape[axis] = heads[0] + heads[1]
    buf = torch.empty(shape, dtype=wdtype)
    bq, bk = buf.split_with_sizes(heads, axis)
    bq.copy_(xq[..., :rot] if partial else xq)
    bk.copy_(xk[..., :rot] if partial else xk)
    rotated = _rotate_buffer(buf, factors, interleaved)
    if rotated is not buf:
        bq, bk = rotated.split_with_sizes(heads, axis)
    (yq[..., :rot] if partial else yq).copy_(bq)  # the one rounding to the output dtype
    (yk[..., :rot] if partial else yk).copy_(bk)
    if partial and q_out is not q:
        yq[..., rot:].copy_(xq[..., rot:])
        yk[..., rot:].copy_(xk[..., rot:])
    return True


def _rotate_buffer(buf, factors, interleaved):
    """The rotation of ``buf`` (float32 or float64; contiguous for interleaved pairs): ``buf`` itself,
    rotated in place, for interleaved pairs; a new tensor of its shape and strides for half-split ones."""
    if interleaved:
        *dims, rot = buf.shape
        (turn,) = factors
        _as_complex(buf, dims, rot // 2).mul_(turn)
        return buf
    return _turn_halves(buf, factors)


def _turn_halves(x, factors, out=None):
    """Half-split pairs ``x`` (..., R) rotated into ``out`` (a new tensor if None), which must not overlap
    ``x``: ``x cos`` over both halves, then each half's sin term read straight from the other half.
    Fewer passes over memory than swapping the halves into a copy first (a roll is two strided copies):
    two half-width ``addcmul_``, no partner tensor, and no signed copy of sin (``value`` carries it)."""
    c, s, sign = factors
    # (cos is half as wide as the pairs: both halves multiply by it through a (2, R/2) view, no wide copy)
    pairs = x.unflatten(-1, (2, s.shape[-1]))
    if out is None:
        y = torch.mul(pairs, c)
    else:
        y = out.unflatten(-1, (2, s.shape[-1]))
        torch.mul(pairs, c, out=y)
    x1, x2 = pairs.unbind(-2)
    y1, y2 = y.unbind(-2)
    y1.addcmul_(x2, s, value=sign)
    y2.addcmul_(x1, s, value=-sign)
    return y.flatten(-2) if out is None else out


def _rotate_one(
    x: torch.Tensor,
    out: torch.Tensor,
    p: Problem,
    factors: tuple[torch.Tensor, ...],
    interleaved: bool,
    wdtype: torch.dtype,
) -> None:
    xb, ob = to_bshd(x, p.layout), to_bshd(out, p.layout)
    order = _memory_order(xb)
    if order is not None:
        xb, ob = xb.permute(*order, 3), ob.permute(*order, 3)
        factors = _permuted(factors, order)
    rot = p.rotary_dim
    partial = rot < p.head_dim
    xr = xb[..., :rot] if partial else xb
    yr = ob[..., :rot] if partial else ob
    if xr.numel() <= _BLOCK:
        _rotate_block(xr, yr, factors, interleaved, wdtype)
    else:
        for index in _blocks(xr.shape):
            _rotate_block(xr[index], yr[index], _take(factors, index), interleaved, wdtype)
    if partial and out is not x:
        ob[..., rot:].copy_(xb[..., rot:])


# Elements of a block: tensors of more are rotated block by block, so that the float32 temporaries stay
# a few MB, in the caches and in memory the allocator reuses (a q of 1 x 512 tokens x 32 heads x 128, bf16,
# one thread: 1.1 ms in blocks of 128 tokens against 1.5 ms at once, and 4 ms when each call's 8 MB
# temporaries come back from the system as fresh pages).
_BLOCK = 1 << 19


def _blocks(shape: torch.Size) -> list[tuple[slice, ...]]:
    """Index tuples over the first three dims of ``shape`` (the last one whole) cutting it into blocks of
    at most about :data:`_BLOCK` elements along its outermost dims; ``[()]`` for a small tensor."""
    per = [0, 0, 0]
    size = shape[3]
    for d in (2, 1, 0):
        per[d] = size
        size *= shape[d]
    if size <= _BLOCK:
        return [()]
    d = next(d for d in range(3) if per[d] <= _BLOCK)
    step = max(1, _BLOCK // per[d])
    outer = itertools.product(*(range(shape[i]) for i in range(d)))
    return [
        (*(slice(i, i + 1) for i in idx), slice(a, a + step))
        for idx in outer
        for a in range(0, shape[d], step)
    ]


def _take(factors: tuple, index: tuple[slice, ...]) -> tuple:
    """The factors of a block: sliced where they vary, whole where they broadcast (size 1)."""
    return tuple(
        f[tuple(sl if f.shape[i] != 1 else slice(None) for i, sl in enumerate(index))]
        if isinstance(f, torch.Tensor) else f
        for f in factors
    )


def _permuted(factors: tuple, order: list[int]) -> tuple:
    """The factors with their (batch, seq, head) dims in ``order`` (the sign of sin is a number)."""
    return tuple(
        f.permute(*order, *range(3, f.dim())) if isinstance(f, torch.Tensor) else f for f in factors
    )


def _rotate_block(xr, yr, factors, interleaved, wdtype):
    *dims, rot = xr.shape
    half = rot // 2
    # Straight into the output for float32 (float64) data; not when traced by torch.compile, whose
    # dynamo takes no `out=` tensor that is a view.
    direct = xr.dtype == wdtype and not torch.compiler.is_compiling()
    if direct and interleaved and _complex_view_ok(xr) and _complex_view_ok(yr):
        # Pairs are adjacent: one complex multiply straight into the output (in place too).
        (turn,) = factors
        torch.mul(_as_complex(xr, dims, half), turn, out=_as_complex(yr, dims, half))
    elif direct and not interleaved:
        if yr.data_ptr() != xr.data_ptr():
            _turn_halves(xr, factors, out=yr)
        else:
            # In place: the partners are a copy, taken before the first write.
            c, s, sign = factors
            partner = _partners(xr.view(*dims, 2, half))
            torch.mul(xr.view(*dims, 2, half), c, out=yr.view(*dims, 2, half))
            signed = torch.mul(s.unsqueeze(-2), _SIGNS[wdtype, sign > 0])
            yr.view(*dims, 2, half).addcmul_(partner, signed)
    else:
        if interleaved:
            buf = torch.empty(xr.shape, dtype=wdtype)  # contiguous: a complex view of its pairs
            buf.copy_(xr)
        else:
            # A dense x keeps its strides: a contiguous conversion (a copy for float32 x when compiling).
            buf = xr.to(wdtype, copy=xr.dtype == wdtype)
        yr.copy_(_rotate_buffer(buf, factors, interleaved))  # the one rounding to the output dtype


def _partners(pairs: torch.Tensor) -> torch.Tensor:
    """(x2, x1) for every pair (x1, x2) of ``pairs`` (..., 2, R/2), a new tensor of that shape.

    On one thread an ``index_select`` over the pair axis of a 3-D view (5-D views run 3 to 7 times slower),
    the fastest swap; it runs on one thread only, though, and with more the next op, split across threads,
    then reads half its input from another core's cache (a decode step's q: 0.9 ms instead of 0.1), so
    there the halves are rolled, which splits as the other ops do.
    """
    if not torch.compiler.is_compiling() and torch.get_num_threads() == 1:
        return pairs.reshape(-1, 2, pairs.shape[-1]).index_select(1, _SWAP).view(pairs.shape)
    return pairs.roll(1, -2)


def _complex_view_ok(t: torch.Tensor) -> bool:
    return t.stride(-1) == 1 and all(st % 2 == 0 for st in t.stride()[:-1]) and t.storage_offset() % 2 == 0


def _as_complex(t: torch.Tensor, dims: list[int], half: int) -> torch.Tensor:
    return torch.view_as_complex(t.view(*dims, half, 2))


# ---- positions and table rows --------------------------------------------------------------------------


def _decode_rows(p, cos, sin, cos_lo, offsets, half, wdtype, interleaved):
    """A decode step's rows, (B, 1, 1, R/2) (cos of half-split pairs (B, 1, 1, 1, R/2)), with the fewest ops:
    one token per sequence at its offset, one row of each table (2-D, in ``wdtype``). (None, None) for
    anything else, or for an offset off the table (the general path then gives that token NaN)."""
    if (
        p.seqlen != 1 or p.pos_mode != POS_OFFSETS or p.layout == "thd" or cos_lo is not None or p.freqs
        or cos.dim() != 2 or cos.dtype != wdtype or sin.dtype != wdtype or torch.compiler.is_compiling()
    ):
        return None, None
    if cos.shape[-1] != half:
        cos, sin = cos[:, :half], sin[:, :half]
    try:
        c, s = cos.index_select(0, offsets), sin.index_select(0, offsets)
    except IndexError:
        return None, None
    return c.view(-1, 1, 1, half) if interleaved else c.view(-1, 1, 1, 1, half), s.view(-1, 1, 1, half)


def _cos_sin(p, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, half, wdtype):
    """Each token's cos and sin, (1 or B, S, R/2) in ``wdtype``; NaN rows for positions off the table."""
    if p.n_axes:
        return _axis_rows(cos, positions, p, half, wdtype)
    start, pos, seq = _positions(p, positions, offsets, cu_seqlens)
    if p.freqs:
        c, s = _freq_rows(cos, start, pos, p.seqlen, half, wdtype)
    elif cos_lo is not None:
        c, s = _split_rows(cos, sin, cos_lo, sin_lo, start, pos, p.seqlen, half, wdtype)
    else:
        c, s = _table_rows(cos, sin, start, pos, seq, p.seqlen, half)
        # (Mixed dtypes in the rotation's ops would run them on a slow path: rows are converted first, by
        # .float() / .double(), whose host cost is 60% of .to(dtype)'s: a decode step of Hugging Face's
        # bf16 tables converts two tiny rows.)
        if c.dtype != wdtype:
            c = c.float() if wdtype == torch.float32 else c.double()
        if s.dtype != wdtype:
            s = s.float() if wdtype == torch.float32 else s.double()
    return c, s


def _positions(p, positions, offsets, cu_seqlens):
    """(start, pos, seq): positions ``start .. start + S - 1`` shared by the batch (pos None), or ``pos``
    of shape (1 or B, S), int32 or int64; ``seq``: (B or 1, S) sequence of each token (which per-sequence
    table it reads), None when it is the batch row."""
    thd = p.layout == "thd"
    if p.pos_mode == POS_EXPLICIT:
        pos = positions
        if thd or pos.dim() == 1:
            pos = pos.reshape(1, -1)
        elif pos.shape[0] == 1 or pos.stride(0) == 0:
            pos = pos[:1]
        seq = _packed_sequences(cu_seqlens, p.seqlen)[0] if thd and p.table_batch else None
        return None, pos, seq
    if not thd:
        if p.pos_mode != POS_OFFSETS:
            return p.offset, None, None
        if p.seqlen == 1:
            return None, offsets.reshape(-1, 1), None
        return None, offsets.reshape(-1, 1).long() + torch.arange(p.seqlen), None
    seq, in_seq = _packed_sequences(cu_seqlens, p.seqlen)
    if p.pos_mode == POS_OFFSETS:
        pos = in_seq + offsets.long()[seq]
    else:
        pos = in_seq + p.offset
    return None, pos, seq


def _packed_sequences(cu_seqlens, total):
    """(seq, index in seq) of each packed token, (1, T) int64: the last sequence starting at or before it
    (the first one for tokens before cu_seqlens[0], which get negative positions)."""
    cu = cu_seqlens.long()
    token = torch.arange(total)
    seq = (torch.searchsorted(cu, token, right=True) - 1).clamp_(0, cu.numel() - 2)
    return seq.unsqueeze(0), (token - cu[seq]).unsqueeze(0)


def _table_rows(cos, sin, start, pos, seq, seqlen, half):
    """Rows of ``cos[..., :half]`` and ``sin[..., :half]`` for the tokens, (1 or B, S, half): rows
    ``start .. start + S - 1``, or rows ``pos``, NaN where off the table."""
    if cos.shape[-1] != half:
        cos, sin = cos[..., :half], sin[..., :half]
    cos, sin = _one_table(cos), _one_table(sin)
    if pos is None:
        return _rows(cos, start, None, seq, seqlen), _rows(sin, start, None, seq, seqlen)
    if cos.dim() == 2 and sin.dim() == 2 and not torch.compiler.is_compiling():
        # A decode step's path: index_select checks the bounds itself (IndexError: see below).
        flat = pos.view(-1) if pos.is_contiguous() else pos.reshape(-1)
        try:
            c, s = cos.index_select(0, flat), sin.index_select(0, flat)
        except IndexError:
            pass
        else:
            return c.view(*pos.shape, half), s.view(*pos.shape, half)
    pos, outside, _ = _clamp(pos, cos.shape[-2])
    c, s = _rows(cos, None, pos, seq, seqlen), _rows(sin, None, pos, seq, seqlen)
    return (c, s) if outside is None else _nan_rows(outside, c, s)


def _one_table(table):
    """A per-sequence table that every sequence shares (first dim 1, or stride 0) as one 2-D table."""
    if table.dim() == 3 and (table.shape[0] == 1 or table.stride(0) == 0):
        return table[0]
    return table


def _rows(table, start, pos, seq, seqlen):
    """Rows ``start .. start + S - 1`` of ``table``, or rows ``pos`` (inside it): (1 or B, S, half)."""
    if table.dim() == 2:
        if pos is None:
            return table[start : start + seqlen].unsqueeze(0)
        return table.index_select(0, pos.reshape(-1)).view(*pos.shape, table.shape[-1])
    # Per-sequence tables: (sequences, rows, half).
    if pos is None:
        return table if start == 0 and seqlen == table.shape[1] else table[:, start : start + seqlen]
    if seq is None:  # the batch row is the sequence
        seq = torch.arange(table.shape[0]).unsqueeze(1)
    return table[seq, pos]


def _clamp(pos, rows):
    """``pos`` clamped to ``[0, rows)``, where it was outside ((1 or B, S) bool, or None if nowhere), and
    its largest value (None when traced by torch.compile: the graph cannot branch on the data, so it
    clamps and masks always)."""
    if not torch.compiler.is_compiling():
        bounds = torch.aminmax(pos)
        lo, hi = bounds.min.item(), bounds.max.item()
        if lo >= 0 and hi < rows:
            return pos, None, hi
    return pos.clamp(0, max(rows - 1, 0)), (pos < 0) | (pos >= rows), None


def _nan_rows(outside, c, s):
    """NaN rows where ``outside`` (the kernel loads NaN for positions off the table)."""
    outside = outside.unsqueeze(-1)
    return c.masked_fill(outside, float("nan")), s.masked_fill(outside, float("nan"))


def _range_or(pos, start, seqlen):
    return torch.arange(start, start + seqlen).unsqueeze(0) if pos is None else pos.long()


def _split_rows(cos, sin, cos_lo, sin_lo, start, pos, seqlen, half, wdtype):
    """cos/sin from split tables by the angle-addition formulas, in ``wdtype`` (as the kernel)."""
    pos = _range_or(pos, start, seqlen)
    lo_rows = cos_lo.shape[0]
    bits = lo_rows.bit_length() - 1
    pos, outside, _ = _clamp(pos, cos.shape[0] << bits)
    hi, lo = pos >> bits, pos & (lo_rows - 1)
    ch, sh = (_rows(t[:, :half], None, hi, None, seqlen).to(wdtype) for t in (cos, sin))
    cl, sl = (_rows(t[:, :half], None, lo, None, seqlen).to(wdtype) for t in (cos_lo, sin_lo))
    c = ch * cl - sh * sl
    s = sh * cl + ch * sl
    return (c, s) if outside is None else _nan_rows(outside, c, s)


# A range of positions longer than this takes its cos/sin from the angles of every _FREQ_GROUP-th position
# and of the first _FREQ_GROUP ones, combined by the angle-addition formulas (in float64): 512 positions
# need the trigonometry of 48 instead of 512.
_FREQ_GROUP = 32


def _freq_rows(freqs, start, pos, seqlen, half, wdtype):
    """cos/sin of a freq table's angles at the positions, times its attention factor, in ``wdtype``
    (float32; freqs refuse float64 data): from the exact angles, in float64, rounded once."""
    freqs = freqs[:, :half]
    amplitude = freq_table_factor(freqs).to(_F64)
    if pos is None and seqlen > _FREQ_GROUP:
        # Positions start + g a + b, 0 <= b < g: e^{i angle} = e^{i angle(start + g a)} e^{i angle(b)}.
        g = _FREQ_GROUP
        n = -(-seqlen // g)
        coarse = _unit_turns(freqs, start + g * torch.arange(n), start + g * (n - 1), amplitude)
        fine = _unit_turns(freqs, torch.arange(g), g - 1, None)
        z = (coarse.unsqueeze(1) * fine).reshape(n * g, half)[:seqlen].unsqueeze(0)
        return z.real.to(wdtype), z.imag.to(wdtype)
    if pos is None:
        pos, outside, top = torch.arange(start, start + seqlen).unsqueeze(0), None, start + seqlen - 1
    else:
        pos, outside, top = _clamp(pos.long(), FREQ_MAX_POSITION + 1)
    theta = _angles(freqs, pos, top)
    c = (torch.cos(theta) * amplitude).to(wdtype)
    s = (torch.sin(theta) * amplitude).to(wdtype)
    return (c, s) if outside is None else _nan_rows(outside, c, s)


def _axis_rows(freqs, positions, p, half, wdtype):
    """cos/sin of a multi-axis freq table at positions (n_axes, B or 1, S) or (n_axes, S) or, packed,
    (n_axes, T): each pair at its own axis's position, fractional ones included, as the kernel does (an
    exact int64 sum of turns), (1 or B, S, R/2) in ``wdtype``; NaN where a position is off the table or an
    axis id has no positions."""
    freqs = freqs[:, :half]
    n_axes = positions.shape[0]
    pos = positions.reshape(n_axes, -1, positions.shape[-1])  # (n_axes, B or 1, S)
    axis = freqs[FREQ_AXIS_ROW]
    valid_axis = (axis >= 0) & (axis < n_axes)
    per_pair = pos[axis.clamp(0, n_axes - 1)].movedim(0, -1)  # (B or 1, S, R/2)
    if per_pair.is_floating_point():
        value = per_pair.to(_F64)
        whole = value.floor()
        frac_turns = ((value - whole) * freqs[0].to(_F64) + 0.5).floor().to(torch.int64)
        whole = whole.clamp(-1, FREQ_MAX_POSITION + 1).to(torch.int64)
    else:
        whole, frac_turns = per_pair.long(), None
    outside = (whole < 0) | (whole > FREQ_MAX_POSITION) | ~valid_axis
    whole = whole.clamp(0, FREQ_MAX_POSITION)
    acc = (whole & _CHUNK_MASK) * freqs[0]
    for k in range(1, FREQ_CHUNKS):
        acc += ((whole >> (FREQ_CHUNK_BITS * k)) & _CHUNK_MASK) * freqs[k]
    if frac_turns is not None:
        acc += frac_turns
    theta = (acc & _TURN_MASK).to(_F64) * _RADIANS
    amplitude = freq_table_factor(freqs).to(_F64)
    nan = torch.tensor(float("nan"), dtype=_F64)
    c = torch.where(outside, nan, torch.cos(theta) * amplitude).to(wdtype)
    s = torch.where(outside, nan, torch.sin(theta) * amplitude).to(wdtype)
    return c, s


def _unit_turns(freqs, positions, top, amplitude):
    """amplitude * e^{i angle} at ``positions`` (1-D), complex128 of shape (positions, pairs)."""
    theta = _angles(freqs, positions, top)
    c, s = torch.cos(theta), torch.sin(theta)
    if amplitude is not None:
        c, s = c * amplitude, s * amplitude
    return torch.complex(c, s)


_CHUNK_MASK = (1 << FREQ_CHUNK_BITS) - 1
_TURN_MASK = (1 << FREQ_FRAC_BITS) - 1
_RADIANS = 2 * math.pi / (1 << FREQ_FRAC_BITS)  # exact: 2 pi rounded, scaled by a power of two


def _angles(freqs, pos, top):
    """The float64 angles of a freq table at int64 positions in [0, ``top``], shape (*pos.shape, pairs):
    :func:`rope_triton.angles.freq_table_angles`, with only the 12-bit chunks that ``top`` needs (all
    when ``top`` is None)."""
    chunks = FREQ_CHUNKS if top is None else max(1, -(-max(top, 1).bit_length() // FREQ_CHUNK_BITS))
    p = pos.unsqueeze(-1)
    if chunks == 1:
        acc = p * freqs[0]
    else:
        acc = (p & _CHUNK_MASK) * freqs[0]
        for k in range(1, chunks):
            acc += ((p >> (FREQ_CHUNK_BITS * k)) & _CHUNK_MASK) * freqs[k]
    return (acc & _TURN_MASK).to(_F64) * _RADIANS
