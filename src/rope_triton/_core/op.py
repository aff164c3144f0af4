"""The op: runs a validated problem on the right backend, and tells autograd about it.

Three ways in, one kernel:
- eager on a GPU (or on the CPU under ``TRITON_INTERPRET=1``): the launcher is called directly, with no
  dispatcher hop (a registered custom op costs tens of microseconds per call in eager mode);
- under ``torch.compile``: the ``torch.library`` ops ``rope_triton::rotary`` / ``rope_triton::rotary_``,
  whose kernel launch ``wrap_triton`` makes traceable;
- on the CPU without the interpreter, or compiled for the CPU: :mod:`rope_triton.reference` in float32,
  same semantics.

Autograd: the gradient of a rotation is the conjugate rotation of the gradient, computed by the same
kernel. Nothing but the (small) tables and index tensors is saved.
"""

from __future__ import annotations

import contextlib
import os

import torch
from torch.library import triton_op, wrap_triton

from .. import reference
from . import cpu
from .checks import Problem, check
from .kernels import rotary_kernel
from .launch import LaunchPlans, addresses, launch, plan_key

# Replays of eager CUDA launches (see LaunchPlans): what keeps a decode step near the cost of a bare launch.
PLANS = LaunchPlans()


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device``: any CUDA device, or the CPU via the interpreter."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


def _run_reference(
    p, q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, interleaved, conjugate
):
    tables = dict(freqs=cos) if p.freqs else dict(cos=cos, sin=sin)
    yq, yk = reference.apply_rotary(
        q, k, **tables,
        cos_lo=cos_lo,
        sin_lo=sin_lo,
        positions=positions,
        offsets=offsets if offsets is not None else p.offset,
        cu_seqlens=cu_seqlens,
        layout=p.layout,
        interleaved=interleaved,
        rotary_dim=p.rotary_dim,
        conjugate=conjugate,
        compute_dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
    )
    q_out.copy_(yq)
    if k is not None:
        k_out.copy_(yk)


def replay(
    plan, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, *, inplace, offset=0, pointers=None
):
    """Replay a recorded launch on new tensors of the same signature; None if the plan does not apply.
    ``offsets`` may be the int offset itself; otherwise ``offset`` is the scalar one. ``pointers``: the
    inputs' addresses from :func:`rope_triton._core.launch.signature`, if already read."""
    if type(offsets) is int:
        offset, offsets = offsets, None
    if not 0 <= offset <= plan.max_offset:
        return None
    q_out = q if inplace else torch.empty_like(q)
    k_out = None if k is None else (k if inplace else torch.empty_like(k))
    # As in launch(): a k without heads is not passed (its pointer may be null).
    has_k = k is not None and plan.problem.heads_k > 0
    if pointers is None:
        args = addresses(
            q, k if has_k else None, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens
        )
    else:
        q_ptr, k_ptr, cos_ptr, sin_ptr, cos_lo_ptr, sin_lo_ptr, pos_ptr, cu_ptr, offsets_ptr = pointers
        if inplace:
            q_out_ptr, k_out_ptr = q_ptr, k_ptr
        else:
            q_out_ptr, k_out_ptr = q_out.data_ptr(), (k_out.data_ptr() if has_k else 0)
        args = (
            q_ptr, k_ptr if has_k else 0, q_out_ptr, k_out_ptr if has_k else 0, cos_ptr, sin_ptr, cos_lo_ptr,
            sin_lo_ptr, pos_ptr if positions is not None else offsets_ptr, cu_ptr,
        )
    plan.launch(args, offset)
    return q_out, k_out


def run(
    p: Problem,
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    *,
    interleaved: bool,
    conjugate: bool,
    inplace: bool,
    plan_key: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate without autograd; returns the outputs (the inputs themselves when ``inplace``).

    With ``plan_key`` (eager CUDA calls) the launch is recorded in :data:`PLANS` for replay.
    """
    compiling = torch.compiler.is_compiling()
    if compiling and q.device.type == "cuda":
        args = (
            cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens,
            p.offset, p.layout, interleaved, p.rotary_dim, conjugate, p.freqs,
        )
        if inplace:
            torch.ops.rope_triton.rotary_(q, k, *args)
            return q, k
        q_out, k_out = torch.ops.rope_triton.rotary(q, k, *args)
        return q_out, (k_out if k is not None else None)
    if plan_key is not None:
        plan = PLANS.get(plan_key)
        if plan is not None:
            out = replay(
                plan, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, inplace=inplace,
                offset=p.offset,
            )
            if out is not None:
                return out
    q_out = q if inplace else torch.empty_like(q)
    k_out = None if k is None else (k if inplace else torch.empty_like(k))
    # Compiling for the CPU traces the PyTorch path: the interpreter cannot run on fake tensors.
    if triton_runs_on(q.device) and not compiling:
        # Triton launches on the current device: tensors on another GPU need it switched (and such
        # launches are not recorded for replay, which uses the current device's context).
        other_gpu = q.is_cuda and q.get_device() != torch.cuda.current_device()
        with torch.cuda.device(q.device) if other_gpu else contextlib.nullcontext():
            launch(
                rotary_kernel, p, q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets,
                cu_seqlens,
                interleaved=interleaved, conjugate=conjugate, inplace=inplace,
                plans=PLANS if plan_key is not None and not other_gpu else None, plan_key=plan_key,
            )
    else:
        cpu.rotate(
            p, q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, interleaved,
            conjugate,
        )
    return q_out, k_out


class RotaryFunction(torch.autograd.Function):
    """Autograd for :func:`run`. Backward: the conjugate rotation of the incoming gradients."""

    @staticmethod
    def forward(
        ctx, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, p, interleaved, conjugate,
        inplace, key=None,
    ):
        q_out, k_out = run(
            p, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens,
            interleaved=interleaved, conjugate=conjugate, inplace=inplace, plan_key=key,
        )
        if inplace:
            ctx.mark_dirty(*(t for t in (q, k) if t is not None))
        ctx.save_for_backward(cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens)
        ctx.p, ctx.interleaved, ctx.conjugate = p, interleaved, conjugate
        ctx.has_k = k is not None
        return q_out, k_out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and ctx.has_k
        # Only the gradients autograd asks for are rotated (LoRA on q alone: k's bytes are not moved).
        if not need_k:
            grad_k = None
        p = ctx.p
        if not need_q:
            if grad_k is None:
                return (None,) * 14
            # k's gradient alone, rotated as the first tensor of a problem without k.
            grad_q, grad_k, p = grad_k, None, p._replace(heads_q=p.heads_k, heads_k=0)
        key = None
        if grad_q.is_cuda and not torch.compiler.is_compiling():
            # The backward launch of a training step repeats too: replay it like the forward's.
            # Not the int offset itself: it enters through scalar_offset's specialization, like forward's.
            options = ("backward", p._replace(offset=0), ctx.interleaved, not ctx.conjugate)
            scalar_offset = offsets if offsets is not None else (p.offset or None)
            key = plan_key(
                grad_q, grad_k, cos, sin, cos_lo, sin_lo, positions, scalar_offset, cu_seqlens, options
            )
        # Through RotaryFunction again, so that double backward works too.
        gq, gk = RotaryFunction.apply(
            grad_q, grad_k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens,
            p, ctx.interleaved, not ctx.conjugate, False, key,
        )
        if not need_q:
            return None, gq, *([None] * 12)
        return gq, gk, *([None] * 12)


def _op_problem(
    q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim, inplace, freqs
):
    return check(
        q, k, cos, sin,
        cos_lo=cos_lo,
        sin_lo=sin_lo,
        positions=positions,
        offsets=offsets if offsets is not None else (offset or None),
        cu_seqlens=cu_seqlens,
        max_seqlen=None,
        layout=layout,
        rotary_dim=rotary_dim,
        inplace=inplace,
        freqs=freqs,
    )


@triton_op("rope_triton::rotary", mutates_args=())
def _rotary_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    layout: str,
    interleaved: bool,
    rotary_dim: int,
    conjugate: bool,
    freqs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    # A custom op cannot return None: without k the second output is an empty tensor.
    p = _op_problem(
        q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim, False,
        freqs,
    )
    q_out = torch.empty_like(q)
    k_out = torch.empty_like(k) if k is not None else q.new_empty(0)
    launch(
        wrap_triton(rotary_kernel), p, q, k, q_out, k_out if k is not None else None,
        cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens,
        interleaved=interleaved, conjugate=conjugate, inplace=False,
    )
    return q_out, k_out


@triton_op("rope_triton::rotary_", mutates_args=("q", "k"))
def _rotary_inplace_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    offset: int,
    layout: str,
    interleaved: bool,
    rotary_dim: int,
    conjugate: bool,
    freqs: bool = False,
) -> None:
    p = _op_problem(
        q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim, True,
        freqs,
    )
    launch(
        wrap_triton(rotary_kernel), p, q, k, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens,
        interleaved=interleaved, conjugate=conjugate, inplace=True,
    )
