"""Public functional API."""

from __future__ import annotations

import torch

from ._core.checks import check
from ._core.launch import signature
from ._core.op import PLANS, RotaryFunction, RotaryViewFunction, replay, run


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


def _inplace_on_views(
    q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, p, interleaved, conjugate
):
    """In place with autograd where q or k is a view (of a fused qkv activation, a transpose, ...)."""
    _refuse_views_autograd_cannot_rebase(q, k)
    _refuse_inplace_on_leaves(q, k)
    if torch.compiler.is_compiling():
        # AOT autograd cannot trace a Function that modifies a view in place: rotate out of place and copy
        # into the views, which functionalization turns back into one in-place update.
        q_out, k_out = RotaryFunction.apply(
            q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, p, interleaved, conjugate, False,
        )
        q.copy_(q_out)
        if k is not None:
            k.copy_(k_out)
        return q, k
    # A Function that modifies a view in place may return that one tensor only: one Function per tensor,
    # k rotated as the first tensor of a problem without k.
    tables = (cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens)
    q_out = RotaryViewFunction.apply(q, *tables, p._replace(heads_k=0), interleaved, conjugate)
    if k is None:
        return q_out, None
    k_problem = p._replace(heads_q=p.heads_k, heads_k=0)
    return q_out, RotaryViewFunction.apply(k, *tables, k_problem, interleaved, conjugate)


def apply_rotary(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor | None = None,
    sin: torch.Tensor | None = None,
    *,
    freqs: torch.Tensor | None = None,
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
    positions : torch.Tensor, optional
        Explicit table row of every token, int32 or int64: (B, S) (or (1, S), (S,), broadcast over the
        batch), or (T,) for ``"thd"``. Exclusive with ``offsets``.
    offsets : int or torch.Tensor, optional
        Added to each token's index in its sequence (KV-cache decoding, chunked prefill): an int, or an
        int tensor of shape (B,), or (num_seqs,) for ``"thd"``.
    cu_seqlens : torch.Tensor, optional
        ``"thd"`` only (and required there): int32/int64 (num_seqs + 1,) sequence boundaries, 0 first,
        non-decreasing, total tokens last (checked when held on the host: no device sync); positions
        restart at 0 in every sequence.
    max_seqlen : int, optional
        ``"thd"`` only: the longest sequence, used to check on the host that positions fit the table
        (without it, tokens past the table come out NaN).
    layout : {"bshd", "bhsd", "sbhd", "thd"}
    interleaved : bool
        ``False``: pairs (i, i + R/2), the NeoX / Llama / Hugging Face ``rotate_half`` convention.
        ``True``: pairs (2i, 2i + 1), the GPT-J / Meta convention.
    rotary_dim : int, optional
        Even, 0 < R <= D; default ``2 * cos.shape[-1]``. Dimensions past R pass through unchanged.
    inplace : bool
        Write into q and k and return them (autograd is told). Otherwise the inputs are never modified.
        q and k must not share memory then. They may be views, e.g. slices of one fused qkv activation,
        also with autograd (except views autograd cannot track, which PyTorch's in-place ops refuse too).
    conjugate : bool
        Rotate by -theta (the inverse rotation).
    cos_lo, sin_lo : torch.Tensor, optional
        Split tables for exact angles at any length in little memory (see
        :func:`rope_triton.angles.split_tables`): ``cos_lo``/``sin_lo`` of shape (2**b, >= R/2) hold the
        angles of positions 0 .. 2**b - 1, and ``cos``/``sin`` then hold those of positions
        0, 2**b, 2 * 2**b, ...; the kernel combines rows p >> b and p & (2**b - 1) by the angle-addition
        formulas. The tables then cover ``cos.shape[0] * 2**b`` positions. cos/sin are 2-D then.

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
    if freqs is not None:
        if cos is not None or sin is not None:
            raise ValueError("freqs: cos/sin tables and freqs are exclusive, got both")
        # The freq table travels in the tables' slots (both), flagged by the options.
        cos = sin = freqs
    elif cos is None or sin is None:
        missing = "cos" if cos is None else "sin"
        raise TypeError(f"{missing}: expected cos and sin tables (or freqs=...), got None")
    is_tensor = isinstance(q, torch.Tensor) and (k is None or isinstance(k, torch.Tensor))
    needs_grad = is_tensor and torch.is_grad_enabled() and (
        q.requires_grad or (k is not None and k.requires_grad)
    )
    key = p = None
    plain_options = (
        type(layout) is str and type(interleaved) is bool and type(inplace) is bool
        and type(conjugate) is bool
        and (rotary_dim is None or type(rotary_dim) is int)
        and (max_seqlen is None or type(max_seqlen) is int)
    )
    if is_tensor and plain_options and q.is_cuda and not torch.compiler.is_compiling():
        # Hot path: a signature validated and launched before skips validation and is replayed.
        options = (layout, interleaved, rotary_dim, inplace, conjugate, max_seqlen, freqs is not None)
        key, pointers = signature(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, options)
        plan = PLANS.get(key) if key is not None else None
        if plan is not None:
            p = PLANS.problem_if_valid(plan, offsets)
            if p is not None and not needs_grad:
                out = replay(
                    plan, q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, inplace=inplace,
                    pointers=pointers,
                )
                if inplace:
                    torch.autograd.graph.increment_version([t for t in (q, k) if t is not None])
                return out
    if p is None:
        p = check(
            q, k, cos, sin,
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
        )
    offsets_t = offsets if isinstance(offsets, torch.Tensor) else None
    if needs_grad:
        if inplace:
            if _is_view(q) or _is_view(k):
                return _inplace_on_views(
                    q, k, cos, sin, cos_lo, sin_lo, positions, offsets_t, cu_seqlens, p, interleaved,
                    conjugate,
                )
            _refuse_inplace_on_leaves(q, k)
        return RotaryFunction.apply(
            q, k, cos, sin, cos_lo, sin_lo, positions, offsets_t, cu_seqlens, p, interleaved, conjugate,
            inplace, key,
        )
    out = run(
        p, q, k, cos, sin, cos_lo, sin_lo, positions, offsets_t, cu_seqlens,
        interleaved=interleaved, conjugate=conjugate, inplace=inplace, plan_key=key,
    )
    if inplace:
        # The kernel writes through raw pointers: bump the version counters so that autograd can tell
        # if a saved tensor was overwritten.
        torch.autograd.graph.increment_version([t for t in (q, k) if t is not None])
    return out
