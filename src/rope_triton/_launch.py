"""Launcher: strides, block sizes and grid for :func:`rope_triton._kernels.rotary_kernel`.

Arguments arrive validated (:mod:`rope_triton._checks`); this module only maps them onto the kernel.
"""

from __future__ import annotations

import torch
import triton

from ._checks import POS_EXPLICIT, POS_OFFSETS, Problem
from ._kernels import rotary_kernel

# Per inner step a program holds BLOCK_T x BLOCK_H x BLOCK_HALF pairs; about this many keeps enough
# loads in flight without spilling (checked on the H200, see docs/performance.md).
_PAIRS_PER_STEP = 2048


def bshd_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """Strides of ``x`` in (batch, seq, head, dim) order; ``thd`` has batch stride 0."""
    st = x.stride()
    if layout == "bshd":
        return st[0], st[1], st[2], st[3]
    if layout == "bhsd":
        return st[0], st[2], st[1], st[3]
    if layout == "sbhd":
        return st[1], st[0], st[2], st[3]
    return 0, st[0], st[1], st[2]


def config(p: Problem) -> dict[str, int]:
    """Block sizes and warps for a problem: a fixed rule, no autotuning (deterministic, no warm-up cost)."""
    half = p.rotary_dim // 2
    block_half = triton.next_power_of_2(half)
    heads = max(p.heads_q, p.heads_k)
    block_h = min(triton.next_power_of_2(heads), max(1, _PAIRS_PER_STEP // block_half))
    n_tokens = p.batch * p.seqlen
    block_t = max(1, _PAIRS_PER_STEP // (block_h * block_half))
    # Keep the grid several waves deep: many small programs beat few large ones at the tail.
    block_t = min(block_t, max(1, triton.next_power_of_2(max(1, n_tokens // 1024))))
    tile = block_t * block_h * block_half
    return {
        "BLOCK_HALF": block_half,
        "BLOCK_H": block_h,
        "BLOCK_T": block_t,
        "num_warps": 4 if tile <= 2048 else 8,
    }


def launch(
    kernel,
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
    *,
    interleaved: bool,
    conjugate: bool,
    inplace: bool,
) -> None:
    """Rotate ``q`` (and ``k``) into ``q_out`` (and ``k_out``), which may be the inputs themselves.

    ``kernel`` is :data:`rotary_kernel` for eager calls or its ``torch.library.wrap_triton`` wrapper
    inside the registered op (so that torch.compile can trace it).
    """
    n_tokens = p.batch * p.seqlen
    if n_tokens == 0 or p.head_dim == 0 or (p.heads_q == 0 and p.heads_k == 0):
        return
    cfg = config(p)
    half = p.rotary_dim // 2
    tail = p.head_dim - p.rotary_dim
    has_k = k is not None and p.heads_k > 0
    kk, kko = (k, k_out) if has_k else (q, q_out)
    spos_b = spos_s = 0
    pos_arg = q  # any pointer: unused in mode 0
    if p.pos_mode == POS_EXPLICIT:
        pos_arg = positions
        if positions.dim() == 2:
            spos_b = positions.stride(0) if positions.shape[0] > 1 else 0
            spos_s = positions.stride(1)
        else:
            spos_s = positions.stride(0)
    elif p.pos_mode == POS_OFFSETS:
        pos_arg = offsets
        spos_b = offsets.stride(0)
    varlen = p.layout == "thd"
    grid = (triton.cdiv(n_tokens, cfg["BLOCK_T"]),)
    kernel[grid](
        q, kk, q_out, kko,
        cos, sin,
        cos if cos_lo is None else cos_lo,
        sin if sin_lo is None else sin_lo,
        pos_arg,
        cu_seqlens if varlen else q,
        n_tokens, p.seqlen, p.n_seqs,
        p.table_rows, p.offset,
        *bshd_strides(q, p.layout),
        *bshd_strides(kk, p.layout),
        *bshd_strides(q_out, p.layout),
        *bshd_strides(kko, p.layout),
        cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1),
        *((0, 0, 0, 0) if cos_lo is None else (*cos_lo.stride(), *sin_lo.stride())),
        spos_b, spos_s,
        HEADS_Q=p.heads_q,
        HEADS_K=p.heads_k if has_k else 0,
        HALF=half,
        BLOCK_HALF=cfg["BLOCK_HALF"],
        TAIL=tail,
        BLOCK_TAIL=triton.next_power_of_2(max(tail, 1)),
        BLOCK_T=cfg["BLOCK_T"],
        BLOCK_H=cfg["BLOCK_H"],
        INTERLEAVED=interleaved,
        CONJUGATE=conjugate,
        HAS_K=has_k,
        COPY_TAIL=tail > 0 and not inplace,
        POS_MODE=p.pos_mode,
        LO_BITS=p.lo_bits,
        VARLEN=varlen,
        SEARCH_STEPS=max(1, (p.n_seqs - 1).bit_length()) if varlen else 1,
        ROUND_BY_HAND=q.device.type == "cpu" and q.dtype == torch.bfloat16,
        num_warps=cfg["num_warps"],
    )
