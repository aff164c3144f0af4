"""The op: runs a validated problem on the right backend, and tells autograd about it.

Three ways in, one kernel:
- eager on a GPU (or on the CPU under ``TRITON_INTERPRET=1``): the launcher is called directly, with no
  dispatcher hop (a registered custom op costs tens of microseconds per call in eager mode); a repeat of a
  validated signature replays its recorded launch (:class:`~rope_triton._core.launch.LaunchPlans`);
- under ``torch.compile``: the ``torch.library`` ops ``rope_triton::rotary`` / ``rope_triton::rotary_``,
  whose kernel launch ``wrap_triton`` makes traceable;
- on the CPU without the interpreter, or compiled for the CPU: :mod:`rope_triton._core.cpu`, the same
  semantics in plain PyTorch ops.

Autograd: the gradient of a rotation is the conjugate rotation of the gradient, computed by the same
kernel. Nothing but the (small) tables and index tensors is saved.
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.library import triton_op, wrap_triton

from .. import reference
from . import cpu
from .checks import POS_EXPLICIT, Problem, check, check_call, check_tensor, is_int  # noqa: F401 (modules)
from .kernels import rotary_kernel
from .launch import LaunchPlans, launch, prefers_freqs, signature  # noqa: F401 (prefers_freqs: for modules)
from .operands import Operands

# Set by TRITON_INTERPRET=1 when triton was first imported: the kernel object is the interpreter's.
_INTERPRETED = type(rotary_kernel).__name__ == "InterpretedFunction"
# Replays of eager CUDA launches: what keeps a decode step near the cost of a bare Triton launch.
PLANS = LaunchPlans()
# Validated problems of eager calls on the CPU path, by the same keys: a decode step there skips
# validation too (calls with cu_seqlens always validate: their boundaries are checked on the host).
PROBLEMS: dict = {}
_PROBLEMS_CAPACITY = 512


def clear_launch_cache() -> None:
    """Forget every recorded launch (they are replayed for calls of the same signature).

    Examples
    --------
    >>> import rope_triton
    >>> rope_triton.clear_launch_cache()
    """
    PLANS.clear()
    PROBLEMS.clear()


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernel can run on ``device``: any CUDA device, or the CPU via the interpreter
    (which Triton chose when the kernel was defined, from ``TRITON_INTERPRET``)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and _INTERPRETED


def _new_out(x: torch.Tensor) -> torch.Tensor:
    # Contiguous in the call's layout: the kernel derives an out-of-place output's strides from its shape.
    # (empty_like: a third of the host time of torch.empty(shape, dtype=, device=))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _explicit_cp_positions(p: Problem, ops: Operands) -> tuple[Problem, Operands]:
    pos = reference.token_positions(
        p.batch, p.seqlen, ops.q.device, offsets=ops.offsets if ops.offsets is not None else p.offset,
        cu_seqlens=ops.cu_seqlens, cp_size=p.cp[0], cp_rank=p.cp[1],
    )
    pos = pos[0] if p.layout == "thd" else pos.contiguous()
    return p._replace(pos_mode=POS_EXPLICIT, offset=0, cp=(1, 0)), ops._replace(positions=pos, offsets=None)


def _run_plain(p, q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, interleaved,
               conjugate) -> None:
    tables = dict(freqs=cos) if p.freqs else dict(cos=cos, sin=sin)
    yq, yk = reference.apply_rotary(
        q, k, **tables, cos_lo=cos_lo, sin_lo=sin_lo, positions=positions,
        offsets=offsets if offsets is not None else p.offset, cu_seqlens=cu_seqlens, layout=p.layout,
        interleaved=interleaved, rotary_dim=p.rotary_dim, conjugate=conjugate,
        compute_dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
    )
    q_out.copy_(yq)
    if k is not None:
        k_out.copy_(yk)


def replay(plan, ops: Operands, offset: int, inplace: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Launch a recorded plan on new tensors of the same signature."""
    q, k = ops.q, ops.k
    has_k = k is not None and plan.problem.heads_k > 0
    q_out = None if inplace else _new_out(q)
    k_out = None if inplace or k is None else _new_out(k)
    # (split tables have a plan only where their low rows follow the high rows: cos's pointer reads both)
    plan.launch((
        q, k if has_k else None, q_out, k_out if has_k else None, ops.cos, ops.sin,
        ops.positions if ops.positions is not None else ops.offsets, ops.cu_seqlens,
    ), offset)
    return (q, k) if inplace else (q_out, k_out)


def run(
    p: Problem, ops: Operands, *, interleaved: bool, conjugate: bool, inplace: bool,
    plan_key: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate without autograd; returns the outputs (the inputs themselves when ``inplace``). With
    ``plan_key`` (eager CUDA calls) the launch is recorded in :data:`PLANS` for replay."""
    q, k = ops.q, ops.k
    # Traced: by torch.compile, or by make_fx / export, which run this code itself on fake tensors.
    compiling = torch.compiler.is_compiling() or isinstance(q, FakeTensor)
    if compiling and q.device.type == "cuda":
        args = (
            ops.cos, ops.sin, ops.cos_lo, ops.sin_lo, ops.positions, ops.offsets, ops.cu_seqlens,
            p.offset, p.layout, interleaved, p.rotary_dim, conjugate, p.freqs, *p.cp,
        )
        if inplace:
            torch.ops.rope_triton.rotary_(q, k, *args)
            return q, k
        q_out, k_out = torch.ops.rope_triton.rotary(q, k, *args)
        return q_out, (k_out if k is not None else None)
    if plan_key is not None and q.is_cuda:  # (a CPU call's key names a validated problem, not a launch)
        plan = PLANS.get(plan_key)
        # A plan launches on the current device's stream: it was recorded on the tensors' device.
        if plan is not None and q.get_device() == torch.cuda.current_device():
            return replay(plan, ops, p.offset, inplace)
    q_out = None if inplace else _new_out(q)
    k_out = None if inplace or k is None else _new_out(k)
    # Compiling for the CPU traces the PyTorch path: the interpreter cannot run on fake tensors.
    if triton_runs_on(q.device) and not compiling:
        # Triton launches on the current device: tensors on another GPU need it switched (and such
        # launches are not recorded for replay, which uses the current device's stream).
        other_gpu = q.is_cuda and q.get_device() != torch.cuda.current_device()
        with torch.cuda.device(q.device) if other_gpu else contextlib.nullcontext():
            launch(
                rotary_kernel, p, ops, q_out, k_out, interleaved=interleaved, conjugate=conjugate,
                plans=PLANS if plan_key is not None and not other_gpu else None, plan_key=plan_key,
            )
    else:
        # Eager: the CPU path tuned for few cores. Traced (torch.compile for the CPU, make_fx): the plain
        # formulation, which traces under dynamic shapes too, and which inductor fuses anyway.
        # (multi-axis positions: the CPU path's own formulation, which the plain one does not have)
        rotate = _run_plain if compiling and not p.n_axes else cpu.rotate
        if p.cp[0] > 1:
            # The CPU path takes the zigzag positions as explicit ones (the kernel computes them).
            p, ops = _explicit_cp_positions(p, ops)
        rotate(
            p, q, k, q if inplace else q_out, k if inplace else k_out, ops.cos, ops.sin, ops.cos_lo,
            ops.sin_lo, ops.positions, ops.offsets, ops.cu_seqlens, interleaved, conjugate,
        )
    return (q, k) if inplace else (q_out, k_out)


class RotaryFunction(torch.autograd.Function):
    """Autograd for :func:`run`. Backward: the conjugate rotation of the incoming gradients."""

    @staticmethod
    def forward(ctx, q, k, p, ops, interleaved, conjugate, inplace, key=None):
        q_out, k_out = run(
            p, ops._replace(q=q, k=k), interleaved=interleaved, conjugate=conjugate, inplace=inplace,
            plan_key=key,
        )
        if inplace:
            ctx.mark_dirty(*(t for t in (q, k) if t is not None))
        ctx.save_for_backward(ops.cos, ops.sin, ops.cos_lo, ops.sin_lo, ops.positions, ops.offsets,
                              ops.cu_seqlens)
        ctx.p, ctx.interleaved, ctx.conjugate = p, interleaved, conjugate
        ctx.has_k = k is not None
        return q_out, k_out

    @staticmethod
    def backward(ctx, grad_q, grad_k):
        tables = ctx.saved_tensors
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and ctx.has_k
        # Only the gradients autograd asks for are rotated (LoRA on q alone: k's bytes are not moved).
        if not need_k:
            grad_k = None
        p = ctx.p
        if not need_q:
            if grad_k is None:
                return (None,) * 8
            # k's gradient alone, rotated as the first tensor of a problem without k.
            grad_q, grad_k, p = grad_k, None, p._replace(heads_q=p.heads_k, heads_k=0)
        ops = Operands(grad_q, grad_k, *tables)
        key = None
        if grad_q.is_cuda and not torch.compiler.is_compiling():
            # The backward launch of a training step repeats too: replay it like the forward's.
            options = ("backward", p._replace(offset=0), ctx.interleaved, not ctx.conjugate)
            key = signature(ops, p.offset if ops.offsets is None else None, options)
        # Through RotaryFunction again, so that double backward works too.
        gq, gk = RotaryFunction.apply(grad_q, grad_k, p, ops, ctx.interleaved, not ctx.conjugate, False, key)
        if not need_q:
            return None, gq, *([None] * 6)
        return gq, gk, *([None] * 6)


def _plain_options(layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen) -> bool:
    # Exact types only: a key holding 1 where True was validated would match it (1 == True).
    return (
        type(layout) is str and type(interleaved) is bool and type(inplace) is bool
        and type(conjugate) is bool
        and (rotary_dim is None or type(rotary_dim) is int)
        and (max_seqlen is None or type(max_seqlen) is int)
    )


def _one_buffer(q, k) -> bool:
    # In place on q and k of one buffer is validated every time: whether they overlap depends on where they
    # lie in it, which the signature does not hold.
    return k is not None and q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr()


def _replay_known(q, k, table, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, max_seqlen, layout,
                  interleaved, rotary_dim, inplace, conjugate, freqs, cp):
    """The hot path of eager calls (a decode step): the replay of a signature validated and run before,
    without autograd: its recorded launch on a GPU, its validated problem on the CPU path. None when the
    call must take the full path."""
    if k is not None and type(k) is not torch.Tensor:
        return None
    if torch.is_grad_enabled() and (q.requires_grad or (k is not None and k.requires_grad)):
        return None
    if not _plain_options(layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen):
        return None
    if torch.compiler.is_compiling() or (inplace and _one_buffer(q, k)):
        return None
    offsets_t = offsets if type(offsets) is torch.Tensor else None
    tensors = (q, k, table, sin, cos_lo, sin_lo, positions, offsets_t, cu_seqlens)
    options = (layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen, freqs, cp)
    offset = offsets if type(offsets) is int else 0
    if q.is_cuda:
        key = signature(tensors, offsets, options)
        plan = PLANS.get(key) if key is not None else None
        if plan is None or q.get_device() != torch.cuda.current_device():
            return None
        if not 0 <= offset <= plan.problem.max_offset:
            return None
        out = replay(plan, Operands(*tensors), offset, inplace)
    else:
        # (calls with cu_seqlens always validate: their boundaries are checked on the host; context
        # parallel ones take their zigzag positions as explicit ones there)
        if cu_seqlens is not None or cp[0] > 1 or _INTERPRETED or q.device.type != "cpu":
            return None
        key = signature(tensors, offsets, ("cpu", *options))
        p = PROBLEMS.get(key) if key is not None else None
        if p is None or not 0 <= offset <= p.max_offset:
            return None
        if offset != p.offset:
            p = p._replace(offset=offset)
        q_out = q if inplace else _new_out(q)
        k_out = k if inplace or k is None else _new_out(k)
        cpu.rotate(p, q, k, q_out, k_out, table, sin, cos_lo, sin_lo, positions, offsets_t, None, interleaved,
                   conjugate)
        out = q_out, k_out
    if inplace:
        torch.autograd.graph.increment_version([q] if k is None else [q, k])
    return out


def apply(
    q, k, cos, sin, *, freqs, positions, offsets, cu_seqlens, max_seqlen, layout, interleaved, rotary_dim,
    inplace, conjugate, cos_lo, sin_lo, cp_size=1, cp_rank=0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`rope_triton.apply_rotary` after its table arguments were sorted out: the replay of a known
    signature, or validation, then autograd or a plain run."""
    cp = (cp_size, cp_rank)
    if type(q) is torch.Tensor and type(cp_size) is int and type(cp_rank) is int:
        out = _replay_known(q, k, cos if freqs is None else freqs, sin, cos_lo, sin_lo, positions, offsets,
                            cu_seqlens, max_seqlen, layout, interleaved, rotary_dim, inplace, conjugate,
                            freqs is not None, cp)
        if out is not None:
            return out
    is_tensor = isinstance(q, torch.Tensor) and (k is None or isinstance(k, torch.Tensor))
    needs_grad = is_tensor and torch.is_grad_enabled() and (
        q.requires_grad or (k is not None and k.requires_grad)
    )
    offsets_t = offsets if isinstance(offsets, torch.Tensor) else None
    table = cos if freqs is None else freqs
    ops = Operands(q, k, table, sin, cos_lo, sin_lo, positions, offsets_t, cu_seqlens)
    key = p = None
    plain = (
        is_tensor and _plain_options(layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen)
        and type(cp_size) is int and type(cp_rank) is int
        and not torch.compiler.is_compiling() and not (inplace and _one_buffer(q, k))
    )
    offset = offsets if type(offsets) is int else 0
    if plain and q.is_cuda:
        # Recorded for replay once validated and launched; with autograd the validation is skipped.
        key = signature(ops, offsets, (layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen,
                                       freqs is not None, cp))
        plan = PLANS.get(key) if key is not None else None
        if plan is not None and 0 <= offset <= plan.problem.max_offset:
            p = plan.problem._replace(offset=offset)
    elif plain and cu_seqlens is None and q.device.type == "cpu" and not triton_runs_on(q.device):
        options = (
            "cpu", layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen, freqs is not None, cp,
        )
        key = signature(ops, offsets, options)
        known = PROBLEMS.get(key) if key is not None else None
        if known is not None and 0 <= offset <= known.max_offset:
            p = known._replace(offset=offset)
    if p is None:
        table = freqs if freqs is not None else cos
        p = check(
            q, k, table, table if freqs is not None else sin,
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
            conjugate=conjugate,
            freqs=freqs is not None,
            cp_size=cp_size,
            cp_rank=cp_rank,
        )
        if key is not None and q.device.type == "cpu":
            if len(PROBLEMS) >= _PROBLEMS_CAPACITY:
                PROBLEMS.clear()
            PROBLEMS[key] = p
    if needs_grad:
        if inplace:
            if _is_view(q) or _is_view(k):
                return _inplace_on_views(p, ops, interleaved, conjugate)
            _refuse_inplace_on_leaves(q, k)
        return RotaryFunction.apply(q, k, p, ops, interleaved, conjugate, inplace, key)
    out = run(p, ops, interleaved=interleaved, conjugate=conjugate, inplace=inplace, plan_key=key)
    if inplace:
        # The kernel writes through raw pointers: bump the version counters so that autograd can tell
        # if a saved tensor was overwritten.
        torch.autograd.graph.increment_version([t for t in (q, k) if t is not None])
    return out


class RotaryViewFunction(torch.autograd.Function):
    """Autograd for the in-place rotation of one tensor alone (q, or k as the first tensor of a problem
    without k): a Function that modifies a view in place may return that one tensor only, so views are
    rotated one per Function. Backward as :class:`RotaryFunction`'s."""

    @staticmethod
    def forward(ctx, x, p, ops, interleaved, conjugate):
        run(p, ops._replace(q=x, k=None), interleaved=interleaved, conjugate=conjugate, inplace=True)
        ctx.mark_dirty(x)
        ctx.save_for_backward(ops.cos, ops.sin, ops.cos_lo, ops.sin_lo, ops.positions, ops.offsets,
                              ops.cu_seqlens)
        ctx.p, ctx.interleaved, ctx.conjugate = p, interleaved, conjugate
        return x

    @staticmethod
    def backward(ctx, grad):
        ops = Operands(grad, None, *ctx.saved_tensors)
        # Out of place, through RotaryFunction: double backward works too.
        g, _ = RotaryFunction.apply(grad, None, ctx.p, ops, ctx.interleaved, not ctx.conjugate, False)
        return g, None, None, None, None


def _is_view(t: torch.Tensor | None) -> bool:
    return t is not None and t._base is not None


def _refuse_views_autograd_cannot_rebase(q, k) -> None:
    # PyTorch's own in-place ops refuse these views before writing; a custom Function is refused only
    # after its forward ran, i.e. after the kernel wrote the rotation. (Dynamo cannot trace the query;
    # under torch.compile the mutation is functionalized anyway.)
    get_creation_meta = getattr(torch._C._autograd, "_get_creation_meta", None)
    if torch.compiler.is_compiling() or get_creation_meta is None:
        return
    metas = torch._C._autograd.CreationMeta
    created = {
        metas.MULTI_OUTPUT_NODE: "by a function that returns several views (split, chunk, unbind, ...); "
        "slice it instead, e.g. qkv[:, :, :heads_q]",
        metas.NO_GRAD_MODE: "in no_grad mode while grad mode is enabled now",
        metas.INFERENCE_MODE: "in inference mode",
        metas.IN_CUSTOM_FUNCTION: "inside a custom autograd Function",
    }
    for name, t in (("q", q), ("k", k)):
        if _is_view(t):
            why = created.get(get_creation_meta(t))
            if why is not None:
                raise RuntimeError(
                    f"{name}: inplace=True with autograd needs a view autograd can track, got a view created "
                    f"{why}"
                )


def _inplace_on_views(p: Problem, ops: Operands, interleaved: bool, conjugate: bool):
    """In place with autograd where q or k is a view (of a fused qkv activation, a transpose, ...)."""
    q, k = ops.q, ops.k
    _refuse_views_autograd_cannot_rebase(q, k)
    _refuse_inplace_on_leaves(q, k)
    if torch.compiler.is_compiling():
        # AOT autograd cannot trace a Function that modifies a view in place: rotate out of place and copy
        # into the views, which functionalization turns back into one in-place update.
        q_out, k_out = RotaryFunction.apply(q, k, p, ops, interleaved, conjugate, False)
        q.copy_(q_out)
        if k is not None:
            k.copy_(k_out)
        return q, k
    # A Function that modifies a view in place may return that one tensor only: one Function per tensor,
    # k rotated as the first tensor of a problem without k.
    q_out = RotaryViewFunction.apply(q, p._replace(heads_k=0), ops, interleaved, conjugate)
    if k is None:
        return q_out, None
    k_problem = p._replace(heads_q=p.heads_k, heads_k=0)
    return q_out, RotaryViewFunction.apply(k, k_problem, ops, interleaved, conjugate)


def _refuse_inplace_on_leaves(q, k) -> None:
    # As PyTorch's own in-place ops do, before anything is written (autograd would only object after).
    for name, t in (("q", q), ("k", k)):
        if t is None or not t.requires_grad:
            continue
        if t.is_leaf:
            raise RuntimeError(
                f"{name}: a leaf Variable that requires grad "
                "is being used in an in-place operation."
            )
        if t._base is not None and t._base.is_leaf:
            raise RuntimeError(
                f"{name}: a view of a leaf Variable that requires grad is being used in an in-place "
                "operation."
            )


def _op_problem(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim,
                inplace, freqs, cp_size=1, cp_rank=0):
    return check(
        q, k, cos, cos if freqs else sin,
        cp_size=cp_size,
        cp_rank=cp_rank,
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
    conjugate: bool,
    freqs: bool = False,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    # A custom op cannot return None: without k the second output is an empty tensor.
    p = _op_problem(
        q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim, False,
        freqs, cp_size, cp_rank,
    )
    q_out = _new_out(q)
    k_out = _new_out(k) if k is not None else q.new_empty(0)
    ops = Operands(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens)
    launch(wrap_triton(rotary_kernel), p, ops, q_out, k_out if k is not None else None,
           interleaved=interleaved, conjugate=conjugate)
    return q_out, k_out


@triton_op("rope_triton::rotary_", mutates_args=("q", "k"))
def _rotary_inplace_op(
    q: torch.Tensor,
    k: torch.Tensor | None,
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
    conjugate: bool,
    freqs: bool = False,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> None:
    p = _op_problem(
        q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, offset, layout, rotary_dim, True,
        freqs, cp_size, cp_rank,
    )
    ops = Operands(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens)
    launch(wrap_triton(rotary_kernel), p, ops, None, None, interleaved=interleaved, conjugate=conjugate)
