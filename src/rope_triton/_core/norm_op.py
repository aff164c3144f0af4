"""The fused QK-norm + rotation op: runs a validated problem, tells autograd, registers for torch.compile.

Forward: one launch of the rotary kernel with its norm prologue (``NORM``): q and k are read once and
written once. Backward: one launch as well, reading the saved inputs and the output gradients and writing
the input gradients, plus one row of partial weight gradients per program, summed here in a fixed order
(bitwise deterministic, no atomics). Where the kernel does not run, eager inference on the CPU takes the
CPU path (:func:`rope_triton._core.cpu.norm_rotate`), and autograd and torch.compile for the CPU take
:func:`rope_triton.reference.qk_norm_rotary` in float32, differentiable.
"""

from __future__ import annotations

import contextlib

import torch
import triton
from torch.autograd.function import once_differentiable
from torch.library import triton_op, wrap_triton

from .. import reference
from . import cpu, kernels
from .checks import NORM_KINDS, Problem, check, check_norm
from .kernels import rotary_kernel
from .launch import launch, norm_config, signature
from .op import (
    _INTERPRETED,
    _PROBLEMS_CAPACITY,
    PROBLEMS,
    _explicit_cp_positions,
    _new_out,
    _one_buffer,
    _plain_options,
    triton_runs_on,
)
from .operands import NormOperands, Operands

_NORM_NAMES = {1: "rms", 2: "rms_heads"}


def _compiling(q: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return torch.compiler.is_compiling() or isinstance(q, FakeTensor)


def run_forward(
    p: Problem, ops: Operands, nrm: NormOperands, *, interleaved: bool, inplace: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Normalize and rotate without autograd; returns the outputs (the inputs themselves when ``inplace``)."""
    q, k = ops.q, ops.k
    if _compiling(q):
        q_out, k_out = torch.ops.rope_triton.qk_norm_rotary(
            q, k, nrm.weight_q, nrm.weight_k, *_op_args(p, ops, nrm, interleaved)
        )
        k_out = k_out if k is not None else None
        if inplace:
            q.copy_(q_out)
            if k is not None:
                k.copy_(k_out)
            return q, k
        return q_out, k_out
    q_out = None if inplace else _new_out(q)
    k_out = None if inplace or k is None else _new_out(k)
    with _on_device(q):
        launch(rotary_kernel, p, ops, q_out, k_out, interleaved=interleaved, conjugate=False, norm=nrm)
    return (q, k) if inplace else (q_out, k_out)


def run_backward(
    p: Problem,
    ops: Operands,
    nrm: NormOperands,
    grad_q: torch.Tensor,
    grad_k: torch.Tensor | None,
    *,
    interleaved: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients of q, k (``ops.q``/``ops.k``: the forward's inputs) and of the weights."""
    q, k = ops.q, ops.k
    if _compiling(q):
        gq, gk, dwq, dwk = torch.ops.rope_triton.qk_norm_rotary_backward(
            q, k, nrm.weight_q, nrm.weight_k, grad_q, grad_k, *_op_args(p, ops, nrm, interleaved)
        )
        return gq, (gk if k is not None else None), _or_none(dwq, nrm.weight_q), _or_none(dwk, nrm.weight_k)
    with _on_device(q):
        return _backward(launch, rotary_kernel, p, ops, nrm, grad_q, grad_k, interleaved)


def _on_device(x: torch.Tensor):
    # Triton launches on the current device: tensors on another GPU need it switched.
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _or_none(t: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor | None:
    return None if weight is None else t


def _backward(launcher, kernel, p, ops, nrm, grad_q, grad_k, interleaved, cfg=None):
    q, k = ops.q, ops.k
    has_k = k is not None and p.heads_k > 0
    # The kernel reads output gradients contiguous in the layout (as it writes its outputs).
    grad_q = grad_q.contiguous()
    grad_k = grad_k.contiguous() if has_k else None
    gq, gk = _new_out(q), (_new_out(k) if k is not None else None)
    cfg = cfg or norm_config(p, q.element_size(), nrm, backward=True)
    order, block_tq, block_hq, block_tk, block_hk = cfg["PROGRAM"]
    q_chunks = triton.cdiv(p.heads_q, block_hq)
    k_chunks = triton.cdiv(p.heads_k, block_hk) if has_k else 0
    loop = cfg.get("NORM_LOOP", 1)
    n_q = triton.cdiv(p.batch * p.seqlen, block_tq * loop) * q_chunks
    n_k = triton.cdiv(p.batch * p.seqlen, block_tk * loop) * k_chunks
    row = p.head_dim * (max(p.heads_q, p.heads_k) if nrm.kind == 2 else 1)
    weighted = nrm.weight_q is not None or (has_k and nrm.weight_k is not None)
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    dw = torch.empty(n_q + n_k, row, dtype=acc, device=q.device) if weighted else None
    run = nrm._replace(grad_q=grad_q, grad_k=grad_k, dw=dw)
    if p.batch * p.seqlen > 0:
        launcher(kernel, p, ops, gq, gk, interleaved=interleaved, conjugate=True, norm=run, cfg=cfg)
    dwq = dwk = None
    if dw is not None:
        # A program's row is its grid index: q's programs first, or each token block's q then k chunks.
        if order == kernels.ORDER_Q_FIRST:
            q_rows, k_rows = dw[:n_q], dw[n_q:]
        else:
            rows = dw.view(triton.cdiv(p.batch * p.seqlen, block_tq * loop), q_chunks + k_chunks, row)
            q_rows, k_rows = rows[:, :q_chunks], rows[:, q_chunks:]
        if nrm.weight_q is not None:
            dwq = q_rows.sum(tuple(range(q_rows.dim() - 1)))[: nrm.weight_q.numel()].to(nrm.weight_q.dtype)
        if has_k and nrm.weight_k is not None:
            dwk = k_rows.sum(tuple(range(k_rows.dim() - 1)))[: nrm.weight_k.numel()].to(nrm.weight_k.dtype)
    if p.batch * p.seqlen == 0:  # nothing launched: empty inputs have zero gradients
        dwq = None if nrm.weight_q is None else torch.zeros_like(nrm.weight_q)
        dwk = None if nrm.weight_k is None or not has_k else torch.zeros_like(nrm.weight_k)
    return gq, gk, dwq, dwk


class NormRotaryFunction(torch.autograd.Function):
    """Autograd for :func:`run_forward` (out of place; in place with autograd copies the result back)."""

    @staticmethod
    def forward(ctx, q, k, weight_q, weight_k, p, ops, nrm, interleaved):
        ops = ops._replace(q=q, k=k)
        nrm = nrm._replace(weight_q=weight_q, weight_k=weight_k)
        q_out, k_out = run_forward(p, ops, nrm, interleaved=interleaved, inplace=False)
        ctx.save_for_backward(
            q,
            k,
            weight_q,
            weight_k,
            ops.cos,
            ops.sin,
            ops.cos_lo,
            ops.sin_lo,
            ops.positions,
            ops.offsets,
            ops.cu_seqlens,
        )
        ctx.p, ctx.nrm, ctx.interleaved = p, nrm._replace(weight_q=None, weight_k=None), interleaved
        return q_out, k_out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_q, grad_k):
        q, k, weight_q, weight_k, *tables = ctx.saved_tensors
        ops = Operands(q, k, *tables)
        nrm = ctx.nrm._replace(weight_q=weight_q, weight_k=weight_k)
        if k is not None and grad_k is None:
            grad_k = torch.zeros_like(k)
        gq, gk, dwq, dwk = run_backward(ctx.p, ops, nrm, grad_q, grad_k, interleaved=ctx.interleaved)
        need = ctx.needs_input_grad
        return (
            gq if need[0] else None,
            gk if need[1] else None,
            dwq if need[2] else None,
            dwk if need[3] else None,
            None,
            None,
            None,
            None,
        )


def _cpu_forward(p, q, k, q_weight, k_weight, kind, eps, weight_offset, ops, interleaved, inplace):
    if p.cp[0] > 1:
        p, ops = _explicit_cp_positions(p, ops)  # (the CPU path takes zigzag positions as explicit)
    q_out = q if inplace else _new_out(q)
    k_out = k if inplace or k is None else _new_out(k)
    cpu.norm_rotate(
        p, q, k, q_out, k_out, (q_weight, k_weight if k is not None else None), kind == 2, eps, weight_offset,
        (ops.cos, ops.cos if ops.sin is None else ops.sin, *ops[4:]), interleaved,
    )
    if inplace:
        torch.autograd.graph.increment_version([t for t in (q, k) if t is not None])
    return q_out, k_out


def _cpu_key(q, k, q_weight, k_weight, table, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, max_seqlen,
             layout, interleaved, rotary_dim, inplace, freqs, multi_axis, cp_size, norm_options):
    """The key of an eager CPU-path call in :data:`PROBLEMS` (that of :func:`rope_triton.apply_rotary`'s
    calls plus the norm's options and weights), or None for a call that must validate every time."""
    if (
        type(q) is not torch.Tensor or q.device.type != "cpu" or _INTERPRETED or cu_seqlens is not None
        or multi_axis is not None or cp_size != 1 or (k is not None and type(k) is not torch.Tensor)
        or _compiling(q) or not _plain_options(layout, interleaved, rotary_dim, inplace, False, max_seqlen)
        or any(w is not None and type(w) is not torch.Tensor for w in (q_weight, k_weight))
        or (inplace and _one_buffer(q, k))
        or (torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, q_weight, k_weight)
        ))
    ):
        return None
    norm, eps, weight_offset, after = norm_options
    if type(norm) is not str or type(after) is not bool or any(
        type(x) not in (int, float) for x in (eps, weight_offset)
    ):
        return None
    options = ("cpu", "norm", layout, interleaved, rotary_dim, inplace, max_seqlen, freqs, norm, eps,
               weight_offset, after)
    offsets_t = offsets if type(offsets) is torch.Tensor else None
    tensors = (q, k, table, sin, cos_lo, sin_lo, positions, offsets_t, None, q_weight, k_weight)
    return signature(tensors, offsets, options)


def apply(
    q,
    k,
    q_weight,
    k_weight,
    cos,
    sin,
    *,
    norm,
    eps,
    weight_offset,
    norm_after_rope,
    freqs,
    multi_axis,
    positions,
    offsets,
    cu_seqlens,
    max_seqlen,
    layout,
    interleaved,
    rotary_dim,
    inplace,
    cos_lo,
    sin_lo,
    cp_size=1,
    cp_rank=0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`rope_triton.qk_norm_rotary` after its table arguments were sorted out (``freqs`` is the
    ``multi_axis``'s table when that is given)."""
    table = freqs if freqs is not None else cos
    key = _cpu_key(
        q, k, q_weight, k_weight, table, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, max_seqlen,
        layout, interleaved, rotary_dim, inplace, freqs is not None, multi_axis, cp_size,
        (norm, eps, weight_offset, norm_after_rope),
    )
    known = PROBLEMS.get(key) if key is not None else None
    if known is not None:
        offset = offsets if type(offsets) is int else 0
        p, kind, eps, weight_offset, after = known
        if 0 <= offset <= p.max_offset:
            # A repeat of a validated call (a decode step): straight to the CPU path.
            return _cpu_forward(p._replace(offset=offset), q, k, q_weight, k_weight, kind, eps, weight_offset,
                                Operands(q, k, table, sin, cos_lo, sin_lo, positions,
                                         offsets if type(offsets) is torch.Tensor else None, None),
                                interleaved, inplace)
    p = check(
        q,
        k,
        table,
        table if freqs is not None else sin,
        positions=positions,
        offsets=offsets,
        cu_seqlens=cu_seqlens,
        max_seqlen=max_seqlen,
        layout=layout,
        rotary_dim=rotary_dim,
        inplace=inplace,
        cos_lo=cos_lo,
        sin_lo=sin_lo,
        interleaved=interleaved,
        freqs=freqs is not None,
        cp_size=cp_size,
        cp_rank=cp_rank,
    )
    kind, eps, weight_offset, after = check_norm(
        p, q, k, q_weight, k_weight, norm, eps, weight_offset, norm_after_rope
    )
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, q_weight, k_weight)
    )
    ops = Operands(
        q,
        k,
        table,
        None if freqs is not None else sin,
        cos_lo,
        sin_lo,
        positions,
        offsets if isinstance(offsets, torch.Tensor) else None,
        cu_seqlens,
    )
    if (
        q.device.type == "cpu" and not triton_runs_on(q.device) and not _compiling(q) and not grads
        and not (after and (q_weight is not None or k_weight is not None))
    ):
        # Eager inference on the CPU: the CPU path, a few dense ops (the plain formulation below moves
        # several times the bytes: a patched model on a CPU must not be slower than an unpatched one).
        if key is not None:
            if len(PROBLEMS) >= _PROBLEMS_CAPACITY:
                PROBLEMS.clear()
            PROBLEMS[key] = (p, kind, eps, weight_offset, after)
        return _cpu_forward(p, q, k, q_weight, k_weight, kind, eps, weight_offset, ops, interleaved, inplace)
    if not triton_runs_on(q.device) or (_compiling(q) and q.device.type != "cuda"):
        angles = dict(cos=cos, sin=sin, cos_lo=cos_lo, sin_lo=sin_lo, positions=positions, offsets=offsets)
        if multi_axis is not None:
            angles = dict(
                multi_axis=multi_axis,
                positions=_axis_positions(p, q, multi_axis, positions, offsets, cu_seqlens),
            )
        elif freqs is not None:
            angles = dict(freqs=freqs, positions=positions, offsets=offsets)
        return reference.qk_norm_rotary(
            q,
            k,
            q_weight,
            k_weight,
            **angles,
            norm=norm,
            eps=eps,
            weight_offset=weight_offset,
            norm_after_rope=after,
            layout=layout,
            inplace=inplace,
            cu_seqlens=cu_seqlens,
            compute_dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
            interleaved=interleaved,
            rotary_dim=p.rotary_dim,
            **({} if p.cp[0] == 1 else {"cp_size": p.cp[0], "cp_rank": p.cp[1]}),
        )
    nrm = NormOperands(kind, eps, weight_offset, after, q_weight, k_weight if k is not None else None)
    if not grads:
        out = run_forward(p, ops, nrm, interleaved=interleaved, inplace=inplace)
        if inplace:
            torch.autograd.graph.increment_version([t for t in (q, k) if t is not None])
        return out
    if not inplace:
        return NormRotaryFunction.apply(q, k, nrm.weight_q, nrm.weight_k, p, ops, nrm, interleaved)
    # The backward needs the inputs, which an in-place write would destroy: it gets copies, and the result
    # goes back into q and k by copies autograd tracks (views of a fused qkv activation included).
    q_in, k_in = q.clone(), (k.clone() if k is not None else None)
    q_out, k_out = NormRotaryFunction.apply(q_in, k_in, nrm.weight_q, nrm.weight_k, p, ops, nrm, interleaved)
    q.copy_(q_out)
    if k is not None:
        k.copy_(k_out)
    return q, k


def _axis_positions(p, q, multi_axis, positions, offsets, cu_seqlens):
    """Multi-axis positions for the plain path: without them every axis is at the token's index (plus
    ``offsets``), as in the kernel."""
    if positions is not None:
        return positions
    pos = reference.token_positions(p.batch, p.seqlen, q.device, offsets=offsets, cu_seqlens=cu_seqlens)
    pos = pos.expand(multi_axis.n_axes, *pos.shape)
    return pos[:, 0] if p.layout == "thd" else pos


# ---- torch.compile: the registered ops -------------------------------------------------------------------


def _op_args(p: Problem, ops: Operands, nrm: NormOperands, interleaved: bool) -> tuple:
    return (
        ops.cos,
        ops.sin,
        ops.cos_lo,
        ops.sin_lo,
        ops.positions,
        ops.offsets,
        ops.cu_seqlens,
        p.offset,
        p.layout,
        interleaved,
        p.rotary_dim,
        p.freqs,
        _NORM_NAMES[nrm.kind],
        nrm.eps,
        nrm.weight_offset,
        nrm.after_rope,
        *p.cp,
    )


def _op_inputs(
    q,
    k,
    weight_q,
    weight_k,
    cos,
    sin,
    cos_lo,
    sin_lo,
    positions,
    offsets,
    cu_seqlens,
    offset,
    layout,
    rotary_dim,
    freqs,
    norm,
    eps,
    weight_offset,
    after_rope,
    cp_size=1,
    cp_rank=0,
):
    p = check(
        q,
        k,
        cos,
        cos if freqs else sin,
        cos_lo=cos_lo,
        sin_lo=sin_lo,
        positions=positions,
        offsets=offsets if offsets is not None else (offset or None),
        cu_seqlens=cu_seqlens,
        max_seqlen=None,
        layout=layout,
        rotary_dim=rotary_dim,
        inplace=False,
        freqs=freqs,
        cp_size=cp_size,
        cp_rank=cp_rank,
    )
    nrm = NormOperands(NORM_KINDS[norm], eps, weight_offset, after_rope, weight_q, weight_k)
    return p, Operands(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens), nrm


@triton_op("rope_triton::qk_norm_rotary", mutates_args=())
def _qk_norm_rotary_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
    weight_q: torch.Tensor | None,
    weight_k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor | None,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    layout: str,
    interleaved: bool,
    rotary_dim: int,
    freqs: bool,
    norm: str,
    eps: float,
    weight_offset: float,
    after_rope: bool,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    p, ops, nrm = _op_inputs(
        q,
        k,
        weight_q,
        weight_k,
        cos,
        sin,
        cos_lo,
        sin_lo,
        positions,
        offsets,
        cu_seqlens,
        offset,
        layout,
        rotary_dim,
        freqs,
        norm,
        eps,
        weight_offset,
        after_rope,
        cp_size,
        cp_rank,
    )
    q_out = _new_out(q)
    k_out = _new_out(k) if k is not None else q.new_empty(0)
    launch(
        wrap_triton(rotary_kernel),
        p,
        ops,
        q_out,
        k_out if k is not None else None,
        interleaved=interleaved,
        conjugate=False,
        norm=nrm,
    )
    return q_out, k_out


@triton_op("rope_triton::qk_norm_rotary_backward", mutates_args=())
def _qk_norm_rotary_backward_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
    weight_q: torch.Tensor | None,
    weight_k: torch.Tensor | None,
    grad_q: torch.Tensor,
    grad_k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor | None,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    layout: str,
    interleaved: bool,
    rotary_dim: int,
    freqs: bool,
    norm: str,
    eps: float,
    weight_offset: float,
    after_rope: bool,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    p, ops, nrm = _op_inputs(
        q,
        k,
        weight_q,
        weight_k,
        cos,
        sin,
        cos_lo,
        sin_lo,
        positions,
        offsets,
        cu_seqlens,
        offset,
        layout,
        rotary_dim,
        freqs,
        norm,
        eps,
        weight_offset,
        after_rope,
        cp_size,
        cp_rank,
    )
    gq, gk, dwq, dwk = _backward(launch, wrap_triton(rotary_kernel), p, ops, nrm, grad_q, grad_k, interleaved)
    empty = q.new_empty(0)
    return (
        gq,
        (gk if gk is not None else empty),
        (dwq if dwq is not None else empty),
        (dwk if dwk is not None else empty),
    )
