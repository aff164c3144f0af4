"""Launcher: block sizes, grid and arguments of :func:`rope_triton._core.kernels.rotary_kernel`, and replays
of recorded launches.

Arguments arrive validated (:mod:`rope_triton._core.checks`); this module only maps them onto the kernel.
The launch rule is fixed (no autotuning: deterministic, and no seconds of benchmarking at the first call);
the program sizes and orders below were measured on H100 and H200 GPUs (``docs/design.md``).
"""

from __future__ import annotations

import torch
import triton

from . import kernels
from .checks import POS_EXPLICIT, POS_OFFSETS, Problem
from .layouts import BSHD_AXES
from .operands import NormOperands, Operands

# q/k bytes one program reads (both halves of its tokens x heads), one 16-byte vector per thread and half:
# the shape of the fastest flat Triton copies (2-4 KB programs run at the speed of cudaMemcpy, 16 KB programs
# 5% slower). 2 KB programs at 2 warps beat 4 KB at 4 warps by 0.3-0.8 points of a copy on the dense shapes.
_PROGRAM_BYTES = 2048
# With cos/sin computed in the kernel (freqs=): 4 KB programs at half the warps (2-byte data); 2 KB programs
# of one warp run 2-3 points slower.
_FREQS_PROGRAM_BYTES = 4096
# At most this many tokens (a decode step), each program takes one token and one chunk of heads of about
# _DECODE_CHUNK_BYTES per half, with _DECODE_WARPS warps: all chunks in flight at once.
_FEW_TOKENS = 256
_THD_TOKENS = 4
_DECODE_CHUNK_BYTES = 1024
_DECODE_WARPS = 4


# Computing cos/sin in the kernel (freqs=) costs about 1.3 points of a same-bytes copy on large shapes with
# 128-wide rotations; reading table rows costs about their share of the bytes moved when nothing reuses them
# from the L2. Break-even near a 1.3% share. Narrower rotations pay more (64 wide: about 4 points), so
# rotations narrower than 128 take that figure.
FREQS_MIN_TABLE_SHARE = 0.013
FREQS_MIN_TABLE_SHARE_NARROW = 0.04


def prefers_freqs(
    n_tokens: int,
    n_sequences: int,
    heads: int,
    head_dim: int,
    rotary_dim: int,
    itemsize: int,
    *,
    split_tables: bool = False,
) -> bool:
    """Whether computing cos/sin in the kernel (``freqs=``) is expected to beat reading float32 table rows.

    Parameters
    ----------
    n_tokens : int
        Tokens of the call (batch x sequence, or packed tokens).
    n_sequences : int
        How many sequences share the same positions (the batch for dense layouts): each table row is read
        from DRAM once and reused from the L2 by the others.
    heads : int
        q heads plus k heads.
    head_dim, rotary_dim : int
    itemsize : int
        Bytes per element of q and k.
    split_tables : bool
        The alternative is split tables (``cos_lo``/``sin_lo``), whose angle sum costs more than computing
        cos/sin (3-13 points of a copy on large shapes).

    Returns
    -------
    bool
        False for a decode step (at most 256 tokens: latency-bound, and the table path is about 1 us
        shorter there); otherwise True against split tables, and against full
        tables when the rows' share of the bytes moved exceeds :data:`FREQS_MIN_TABLE_SHARE`
        (:data:`FREQS_MIN_TABLE_SHARE_NARROW` for rotary_dim < 128).

    Examples
    --------
    >>> prefers_freqs(32768, 1, 40, 128, 128, 2)  # long-32k: rows are 2.5% of the bytes
    True
    >>> prefers_freqs(4 * 4096, 4, 40, 128, 128, 2)  # llama3-8b: rows shared by the 4 sequences
    False
    """
    if n_tokens <= _FEW_TOKENS or heads <= 0 or rotary_dim <= 0:
        return False
    if split_tables:
        return True
    row_bytes = rotary_dim // 2 * 2 * 4  # float32 cos and sin
    token_bytes = 2 * heads * head_dim * itemsize  # read and written
    threshold = FREQS_MIN_TABLE_SHARE if rotary_dim >= 128 else FREQS_MIN_TABLE_SHARE_NARROW
    return row_bytes > threshold * max(1, n_sequences) * token_bytes


def _qk_major(p: Problem, itemsize: int) -> bool:
    """Whether a large call's programs go q first, then k (see :func:`config`). Not for packed sequences
    (varlen 98.4% with a token block's chunks together against 97.2%), nor when table rows that no other
    sequence shares are past FREQS_MIN_TABLE_SHARE of the bytes: the k programs would read them again,
    after the q programs pushed them out of the L2 (long-32k with tables 94.4-94.9% against 95.9-96.9%).
    Rows count as shared by the batch for default positions and positions broadcast over it."""
    if p.layout == "thd" or p.heads_k == 0:  # (q alone: nothing to order; q-major measured level)
        return False
    if p.freqs:
        return True
    shared = p.rows_shared
    row_bytes = p.rotary_dim // 2 * 2 * 4
    token_bytes = 2 * (p.heads_q + p.heads_k) * p.head_dim * itemsize
    return row_bytes <= FREQS_MIN_TABLE_SHARE * shared * token_bytes


def bshd_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int]:
    """Strides of ``x`` in (batch, seq, head) order; ``thd`` has batch stride 0."""
    st = x.stride()
    return tuple(0 if axis is None else st[axis] for axis in BSHD_AXES[layout][:3])


def config(p: Problem, itemsize: int = 2, inplace: bool = False) -> dict:
    """The launch rule: ``PROGRAM`` (order, tokens and heads of a q program, of a k program) and
    ``num_warps`` for a problem."""
    block_half = triton.next_power_of_2(p.rotary_dim // 2)
    # Bytes each head of a token moves in each direction: its rotated dims, and out of place the dims past
    # rotary_dim too (copied through). Programs are sized by what they move (GPT-J's 64 of 256 dims).
    head_bytes = (p.head_dim if p.head_dim > p.rotary_dim and not inplace else 2 * block_half) * itemsize
    heads = max(p.heads_q, p.heads_k)
    n_tokens = p.batch * p.seqlen
    if n_tokens <= _FEW_TOKENS:
        # Decode: one token per program, small chunks of heads (a single wave: latency, not bandwidth),
        # q/k loads issued before the position and angle loads (one round trip less per program).
        block_h = min(triton.next_power_of_2(heads), max(1, _DECODE_CHUNK_BYTES // (itemsize * block_half)))
        return {"PROGRAM": (kernels.ORDER_DECODE, 1, block_h, 1, block_h), "num_warps": _DECODE_WARPS}
    # Programs of about _PROGRAM_BYTES (one chunk of heads of a block of tokens each), 16 bytes per thread
    # in each half-tile (computed cos/sin: _FREQS_PROGRAM_BYTES).
    program_bytes = _FREQS_PROGRAM_BYTES if p.freqs else _PROGRAM_BYTES
    per_program = max(1, program_bytes // head_bytes)
    # Keep the grid many waves deep when tokens are few.
    waves_cap = max(1, triton.next_power_of_2(max(1, n_tokens // 2048)))

    def dense_block(n_heads: int) -> tuple[int, int]:
        # All heads of a token first, then more tokens.
        block_h = min(triton.next_power_of_2(max(1, n_heads)), per_program)
        return min(max(1, per_program // block_h), waves_cap), block_h

    if p.layout == "thd" and not p.freqs:
        # Packed sequences: blocks of _THD_TOKENS tokens, fewer heads each (about 2-4 points of a copy
        # better than one token and many heads). Not with computed cos/sin: each thread would compute the
        # cos/sin of several tokens (one token per program is 20 points faster there).
        block_t = min(_THD_TOKENS, per_program, waves_cap)
        block_h = min(triton.next_power_of_2(heads), max(1, per_program // min(_THD_TOKENS, per_program)))
        q_block = k_block = (block_t, block_h)
        elements = block_t * block_h
        order = kernels.ORDER_TOKENS
    elif _qk_major(p, itemsize):
        # Every q program, then every k program, k's chunks of heads sized for k: the programs in flight
        # read one tensor and write one, as a copy's do (0.5-2 points of a copy better on the dense
        # shapes). k's programs must be full: chunks of q's width on few kv heads cost 3-4 points.
        q_block, k_block = dense_block(p.heads_q), dense_block(p.heads_k)
        elements = max(q_block[0] * q_block[1], k_block[0] * k_block[1])
        if p.heads_k < p.heads_q:
            # k narrower than q (GQA, MQA): twice the tokens per k program, at the same warps (0.2-1.0
            # points on every GQA / MQA shape measured; four times the tokens loses 2-7 points).
            k_block = (2 * k_block[0], k_block[1])
        order = kernels.ORDER_Q_FIRST
    else:
        q_block = k_block = dense_block(heads)
        elements = q_block[0] * q_block[1]
        order = kernels.ORDER_TOKENS
    warps = max(1, min(8, elements * head_bytes // 1024))
    if p.freqs and itemsize < 4:
        # cos/sin computed in the kernel: every thread computes the pairs of its own 16-byte slices, and the
        # threads covering other heads repeat them. Half the warps: two vectors per thread and half the
        # repeated work (about 60 points of a copy better than the full warps).
        warps = max(1, warps // 2)
    return {"PROGRAM": (order, *q_block, *k_block), "num_warps": warps}


_NO_NORM = (0, 0.0, False, 1)
# A fused norm's programs hold whole heads; per-token norms hold every head of their tokens. Their size in
# elements of one tensor (the backward holds the input and the gradient).
_NORM_PROGRAM_ELEMENTS = 2048
# Backward: each program's partial weight gradient is a row of float32 written and summed on the host. A
# program takes this many token blocks in turn, at most, so that the rows stay about 1/256 of the bytes
# the backward moves; but the grid keeps at least _NORM_MIN_PROGRAMS programs (a few per SM).
# (H100, Qwen3-8B's backward: 16 blocks at twice the forward's warps 216.6 us, 4 blocks 231.5 us, 64
# blocks 287-321 us; OLMo 2 7B's: 64 blocks, 391 us, 383 at twice the warps, 4 blocks 469-481 us.)
_NORM_ROWS_SHARE = 256
_NORM_MIN_PROGRAMS = 512


def norm_config(p: Problem, itemsize: int, norm: NormOperands, *, backward: bool = False) -> dict:
    """The launch rule of a fused norm: programs of whole heads (every head of a token for a per-token
    norm), q's programs before k's, k's blocks as many elements as q's (more tokens when k has fewer
    heads), one warp per 2 KB of a tensor. Backward with weights: ``NORM_LOOP`` token blocks per program."""
    head = triton.next_power_of_2(p.head_dim)
    heads = max(p.heads_q, p.heads_k)
    if norm.kind == 2:
        block_h = triton.next_power_of_2(max(1, heads))
    else:
        block_h = min(triton.next_power_of_2(max(1, heads)), max(1, _NORM_PROGRAM_ELEMENTS // head))
    n_tokens = p.batch * p.seqlen
    waves_cap = max(1, triton.next_power_of_2(max(1, n_tokens // 2048)))
    block_t = min(max(1, _NORM_PROGRAM_ELEMENTS // (block_h * head)), waves_cap)
    if n_tokens <= _FEW_TOKENS:
        block_t = 1
    # (H100, Qwen3-8B's and OLMo 2 7B's shapes: 2 KB per warp 1.8-4.5 points ahead of 1 KB, forward)
    warps = max(1, min(8, block_t * block_h * head * itemsize // 2048))
    if n_tokens <= _FEW_TOKENS or not p.heads_k:
        program = (kernels.ORDER_TOKENS, block_t, block_h, block_t, block_h)
    else:
        # q-major as in config(): 1.8 points (per-head norm) and 3.6 (per-token) of the copy ahead of q and
        # k chunks side by side, forward; k's chunks sized for k (a per-token norm still takes all its heads).
        block_hk = min(triton.next_power_of_2(p.heads_k), block_h)
        program = (kernels.ORDER_Q_FIRST, block_t, block_h, max(1, block_t * block_h // block_hk), block_hk)
    cfg = {"PROGRAM": program, "num_warps": warps}
    moved = 3 * n_tokens * (p.heads_q + p.heads_k) * p.head_dim * itemsize
    if backward and moved and (norm.weight_q is not None or norm.weight_k is not None):
        _, bt_q, bh_q, bt_k, bh_k = program
        programs = triton.cdiv(n_tokens, bt_q) * triton.cdiv(p.heads_q, bh_q)
        if p.heads_k:
            programs += triton.cdiv(n_tokens, bt_k) * triton.cdiv(p.heads_k, bh_k)
        # (rows in float32; float64 for float64 data)
        row = head * (heads if norm.kind == 2 else 1) * max(4, itemsize)
        loop = triton.next_power_of_2(max(1, triton.cdiv(programs * row * _NORM_ROWS_SHARE, moved)))
        cap = max(1, programs // _NORM_MIN_PROGRAMS)
        cfg["NORM_LOOP"] = min(loop, 1 << (cap.bit_length() - 1))
        # (each program holds the input and the gradient, and loops: twice the forward's warps)
        cfg["num_warps"] = min(8, 2 * warps)
    return cfg


def _norm_weight(p: Problem, norm: NormOperands, q: torch.Tensor, has_k: bool) -> torch.Tensor | None:
    """The kernel's one weight operand: q's weight then k's, each plus the weight offset (Gemma's 1 + w)
    in the compute dtype, as the kernel would add it; ones stand in for a missing one. None without
    weights. (One small copy per call: a kernel of 30 parameters takes one weight pointer.)"""
    weights = [(norm.weight_q, p.heads_q)] + ([(norm.weight_k, p.heads_k)] if has_k else [])
    if all(w is None for w, _ in weights):
        return None
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    if all(w is not None for w, _ in weights):
        # The common case in one op (the cast fused into the copy), plus one for an offset.
        total = sum(w.numel() for w, _ in weights)
        weight = torch.cat([w for w, _ in weights], out=torch.empty(total, dtype=compute, device=q.device))
        return weight.add_(norm.weight_offset) if norm.weight_offset else weight
    parts = []
    for w, heads in weights:
        if w is None:
            size = p.head_dim * (heads if norm.kind == 2 else 1)
            parts.append(torch.ones(size, dtype=compute, device=q.device))
        else:
            parts.append(w.to(compute) + norm.weight_offset if norm.weight_offset else w.to(compute))
    return torch.cat(parts)


def _kernel_pos_mode(p: Problem, positions: torch.Tensor | None) -> int:
    if p.pos_mode == POS_OFFSETS:
        return kernels.POS_OFFSETS
    if p.pos_mode != POS_EXPLICIT:
        return kernels.POS_OFFSET
    if p.n_axes:
        # (n_axes, seq), or (n_axes, 1 or broadcast, seq): one row of positions per axis for the batch.
        shared = positions.dim() == 2 or positions.shape[1] == 1 or positions.stride(1) == 0
        return kernels.POS_SHARED if p.layout != "thd" and shared else kernels.POS_TOKENS
    if p.layout != "thd" and (positions.dim() == 1 or positions.shape[0] == 1 or positions.stride(0) == 0):
        return kernels.POS_SHARED
    return kernels.POS_TOKENS


def stacked_rows(hi: torch.Tensor, lo: torch.Tensor) -> bool:
    """Whether 2-D table ``lo``'s rows follow ``hi``'s in one storage with the same strides (split tables
    built by :class:`rope_triton.RotaryEmbedding`): the kernel then reads both through ``hi``'s pointer."""
    # (plain tensors only: traced ones have no storage address, and get a copy that inductor can fuse)
    return (
        type(hi) is torch.Tensor and type(lo) is torch.Tensor
        and hi.dtype == lo.dtype and hi.stride() == lo.stride() and hi.stride(-1) == 1
        and hi.untyped_storage().data_ptr() == lo.untyped_storage().data_ptr()
        and lo.storage_offset() == hi.storage_offset() + hi.shape[0] * hi.stride(0)
    )


def _stack_rows(hi: torch.Tensor, lo: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The high rows then the low rows of split tables, as one tensor; and whether that took a copy."""
    if stacked_rows(hi, lo):
        return hi.as_strided((hi.shape[0] + lo.shape[0], hi.shape[1]), hi.stride()), False
    return torch.cat([hi, lo.to(hi.dtype)]), True


def kernel_operands(p: Problem, ops: Operands) -> tuple[Operands, bool]:
    """``ops`` as the kernel reads them: the last dim of every table contiguous, cos and sin with one set
    of strides, split tables stacked under cos and sin (high rows, then low rows), per-sequence tables one
    after another, positions and offsets contiguous, tables shared by the batch as 2-D. Returns the
    operands and whether any of them had to be copied (small tensors only: q and k are handled by
    :func:`launch`)."""
    cos, sin, cos_lo, sin_lo, positions, offsets = (
        ops.cos, ops.sin, ops.cos_lo, ops.sin_lo, ops.positions, ops.offsets,
    )
    copied = False
    if cos.dim() == 3 and sin is not None and (
        (cos.shape[0] == 1 or cos.stride(0) == 0) and (sin.shape[0] == 1 or sin.stride(0) == 0)
    ):
        cos, sin = cos[0], sin[0]  # one table for every sequence
    tables = [cos] if sin is None else [cos, sin]
    if cos_lo is not None:
        tables += [cos_lo, sin_lo]
    # Per-sequence tables are read table_rows rows apart.
    apart = cos.dim() == 2 or cos.stride(0) == cos.shape[1] * cos.stride(1)
    if not apart or any(t.stride(-1) != 1 and t.shape[-1] > 1 for t in tables) or any(
        t.stride() != tables[0].stride() for t in tables[1:]
    ):
        tables = [t.contiguous() for t in tables]
        copied = True
        if len({t.stride() for t in tables}) > 1:  # e.g. a 3-D table expanded over the batch, and a 2-D one
            raise ValueError("sin: expected the layout of cos, got tables of different strides")
    cos, sin = tables[0], (None if sin is None else tables[1])
    if cos_lo is not None:
        (cos, copied_cos), (sin, copied_sin) = _stack_rows(cos, tables[2]), _stack_rows(sin, tables[3])
        copied = copied or copied_cos or copied_sin
        cos_lo = sin_lo = None
    if positions is not None:
        shared = _kernel_pos_mode(p, positions) == kernels.POS_SHARED
        if p.n_axes and shared and positions.dim() == 3:
            positions = positions[:, 0]  # (n_axes, seq)
        elif not p.n_axes and shared and positions.dim() == 2:
            positions = positions[0]
        if not positions.is_contiguous():
            positions, copied = positions.contiguous(), True
    if offsets is not None and not offsets.is_contiguous():
        offsets, copied = offsets.contiguous(), True
    return ops._replace(cos=cos, sin=sin, cos_lo=cos_lo, sin_lo=sin_lo, positions=positions,
                        offsets=offsets), copied


def kernel_call(
    p: Problem, ops: Operands, q_out: torch.Tensor | None, k_out: torch.Tensor | None, *,
    interleaved: bool, conjugate: bool, cfg: dict | None = None, norm: NormOperands | None = None,
) -> tuple[tuple[int, int, int], list, dict, int]:
    """Grid, runtime arguments, constexpr arguments and warps of a launch; ``q_out``/``k_out`` None for in
    place. ``ops`` as returned by :func:`kernel_operands`, q and k with dim stride 1."""
    cfg = cfg or (config(p, ops.q.element_size(), inplace=q_out is None) if norm is None
                  else norm_config(p, ops.q.element_size(), norm))
    has_k = ops.k is not None and p.heads_k > 0
    order, bt_q, bh_q, bt_k, bh_k = cfg["PROGRAM"]
    if not has_k:
        bt_k, bh_k = bt_q, bh_q
    table = ops.cos
    if p.freqs:
        source = kernels.ANGLES_COMPUTED
    elif p.lo_bits:
        source = kernels.ANGLES_SPLIT
    else:
        source = kernels.ANGLES_SEQ_ROWS if table.dim() == 3 else kernels.ANGLES_ROWS
    args = [
        ops.q, ops.k if has_k else None, q_out, k_out if has_k else None,
        ops.cos, ops.sin,
        ops.positions if ops.positions is not None else ops.offsets,
        ops.cu_seqlens,
        p.seqlen, p.n_seqs, p.table_rows, p.offset,
        *bshd_strides(ops.q, p.layout),
        *(bshd_strides(ops.k, p.layout) if has_k else (0, 0, 0)),
        table.stride(-2),
        *((None,) * 4 if norm is None else (_norm_weight(p, norm, ops.q, has_k), norm.grad_q,
                                            norm.grad_k if has_k else None, norm.dw)),
    ]
    # (int(): under torch.compile with dynamic shapes a size may be a SymInt; a constexpr is specialized on)
    search_steps = max(1, (int(p.n_seqs) - 1).bit_length()) if p.layout == "thd" else 1
    consts = {
        "SHAPE": (int(p.heads_q), int(p.heads_k) if has_k else 0, int(p.head_dim), int(p.rotary_dim)),
        "INTERLEAVED": interleaved,
        "LAYOUT": p.layout,
        "ANGLES": (source, int(p.lo_bits), bool(conjugate)),
        "POS_MODE": (
            _kernel_pos_mode(p, ops.positions), int(p.n_axes), int(p.cp[0]), int(p.cp[1]), search_steps,
        ),
        "PROGRAM": (order, int(bt_q), int(bh_q), int(bt_k), int(bh_k)),
        "NORM": _NO_NORM if norm is None else (
            int(norm.kind), float(norm.eps), bool(norm.after_rope), int(cfg.get("NORM_LOOP", 1)),
        ),
    }
    n_tokens = p.batch * p.seqlen
    loop = consts["NORM"][3]  # (a backward program of a fused norm takes `loop` token blocks in turn)
    programs = triton.cdiv(n_tokens, bt_q * loop) * triton.cdiv(p.heads_q, bh_q)
    if has_k:
        programs += triton.cdiv(n_tokens, bt_k * loop) * triton.cdiv(p.heads_k, bh_k)
    return (programs, 1, 1), args, consts, cfg["num_warps"]


def launch(
    kernel, p: Problem, ops: Operands, q_out: torch.Tensor | None, k_out: torch.Tensor | None, *,
    interleaved: bool, conjugate: bool, cfg: dict | None = None, plans: LaunchPlans | None = None,
    plan_key: tuple | None = None, norm: NormOperands | None = None,
):
    """Rotate ``ops.q`` (and ``ops.k``) into ``q_out`` (and ``k_out``), or in place where those are None.
    Out-of-place outputs must be contiguous in the layout (``torch.empty(q.shape)``).

    Returns the compiled kernel of a direct launch, or None. ``cfg`` overrides :func:`config` (for tuning).
    With ``plans`` and ``plan_key`` the launch is recorded for :meth:`LaunchPlans.replay` when nothing had
    to be copied. ``kernel`` is :data:`rotary_kernel` for eager calls or its ``torch.library.wrap_triton``
    wrapper inside the registered op (so that torch.compile can trace it).
    """
    if p.batch * p.seqlen == 0 or p.head_dim == 0 or (p.heads_q == 0 and p.heads_k == 0):
        return None
    q, k = ops.q, ops.k
    if q.stride(-1) != 1 or (k is not None and k.stride(-1) != 1):
        # The kernel reads 16-byte vectors along the head dim: rotate contiguous copies (rare layouts).
        qc, kc = q.contiguous(), (None if k is None else k.contiguous())
        qo = torch.empty(q.shape, dtype=q.dtype, device=q.device) if q_out is None else q_out
        ko = None if k is None else (torch.empty(k.shape, dtype=k.dtype, device=k.device)
                                     if k_out is None else k_out)
        launch(kernel, p, ops._replace(q=qc, k=kc), qo, ko, interleaved=interleaved, conjugate=conjugate,
               cfg=cfg, norm=norm)
        if q_out is None:
            q.copy_(qo)
            if k is not None:
                k.copy_(ko)
        return None
    kops, copied = kernel_operands(p, ops)
    grid, args, consts, warps = kernel_call(p, kops, q_out, k_out, interleaved=interleaved,
                                            conjugate=conjugate, cfg=cfg, norm=norm)
    compiled = kernel[grid](*args, **consts, num_warps=warps)
    if plans is not None and plan_key is not None and not copied:
        plans.record(plan_key, compiled, grid, args, consts, p)
    return compiled


_OFFSET_ARG = kernels.rotary_kernel.arg_names.index("offset")
_TENSOR_ARGS = 8  # Q .. CU


class Plan:
    """One recorded launch: the compiled kernel and every argument but the tensors and the int offset."""

    __slots__ = ("runner", "middle", "tail", "problem")

    def __init__(self, compiled, grid: tuple[int, int, int], values: list, problem: Problem) -> None:
        self.runner = compiled[grid]  # Triton's launcher of a compiled kernel, stream taken per call
        self.middle = tuple(values[_TENSOR_ARGS:_OFFSET_ARG])
        self.tail = tuple(values[_OFFSET_ARG + 1:])
        self.problem = problem

    def launch(self, tensors: tuple, offset: int) -> None:
        """Launch with these tensors (in the kernel's order, Q .. CU) and int offset."""
        self.runner(*tensors, *self.middle, offset, *self.tail)


class LaunchPlans:
    """Replays of compiled launches, keyed by everything that decides one (shapes, strides, dtypes,
    devices, 16-byte alignment, options): a repeat call skips validation and Triton's argument binding,
    which is what a decode step (microseconds of GPU work) pays for. Used for eager CUDA calls only; an
    entry is made only after the full path validated and launched the same signature. Bounded: when full,
    it is cleared. :func:`rope_triton.clear_launch_cache` empties it.
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._plans: dict = {}

    def get(self, key) -> Plan | None:
        return self._plans.get(key)

    def __len__(self) -> int:
        return len(self._plans)

    def clear(self) -> None:
        self._plans.clear()

    def record(self, key, compiled, grid, args: list, consts: dict, problem: Problem) -> None:
        if not hasattr(compiled, "__getitem__"):
            return
        if len(self._plans) >= self.capacity:
            self._plans.clear()
        values = dict(zip(kernels.rotary_kernel.arg_names, args, strict=False))  # constexprs come next
        values.update(consts)
        ordered = [values[n] for n in kernels.rotary_kernel.arg_names]
        self._plans[key] = Plan(compiled, grid, ordered, problem)


def signature(ops: Operands | tuple, offsets, options: tuple) -> tuple | None:
    """The plan key of a call (what decides a launch besides the data: see :class:`LaunchPlans`), or None
    for arguments of unusual types (they take the validating path, which explains what is wrong).
    ``offsets`` as an int enters the key only through what Triton specializes an int on (== 1, divisible
    by 16, int64)."""
    key = [options]
    for t in ops:
        if t is None:
            key.append(None)
        elif isinstance(t, torch.Tensor):
            key.append((t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() % 16))
        else:
            return None
    if len(ops) > 5 and ops[4] is not None:  # split tables: read through cos only where stacked
        key.append(stacked_rows(ops[2], ops[4]) and stacked_rows(ops[3], ops[5]))
    if type(offsets) is int:
        key.append((offsets == 1, offsets % 16 == 0, offsets >= 2**31))
    elif offsets is not None and not isinstance(offsets, torch.Tensor):
        return None
    return tuple(key)
