"""Providers timed by ``rope-triton bench``: rope-triton itself and the peers it is measured against.

Every provider works on the same input sets: q and k in the canonical layout of the shape (``bshd``, or
``thd`` for packed sequences). Peers written for Hugging Face's (B, H, S, D) get a transposed view of
the same storage, which is what a Hugging Face attention layer hands them
(``q_proj(x).view(B, S, H, D).transpose(1, 2)``): every provider reads the same bytes in the same order.

A provider is built once per shape into an :class:`Impl`, which answers three questions:
``forward`` / ``backward`` (for the correctness check, on inputs it must not modify) and ``timed`` (a
zero-argument callable for one pass on one input set, with all set-up done outside of it).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import torch

from ..functional import apply_rotary, qk_norm_rotary
from .shapes import NORM_EPS

if TYPE_CHECKING:
    from .shapes import Workload

PASSES = ("fwd", "bwd", "fwdbwd")

# A correct RoPE in any of the compared styles (fp32 or bf16 math, fp32 or bf16 tables) stays within
# about 3 ulps of the pair's norm (see error_stats); a wrong one is off by about 2**mantissa_bits.
ULP_TOLERANCE = 8.0

Pair = tuple[torch.Tensor, torch.Tensor]


# --------------------------------------------------------------------------------------------------
# Hugging Face's formula, written out (transformers' rotate_half / apply_rotary_pos_emb).
# --------------------------------------------------------------------------------------------------


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's ``rotate_half``: (x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """GPT-J's pairing: (x[2i], x[2i + 1]) -> (-x[2i + 1], x[2i])."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def hf_partial_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> Pair:
    """Hugging Face's eager RoPE on the first ``cos.shape[-1]`` dims (GPT-J, GPT-NeoX partial rotary): rotate
    them, then concatenate the dims that pass through; GPT-J pairs adjacent dims."""
    width = cos.shape[-1]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    turn = rotate_every_two if interleaved else rotate_half

    def one(x):
        rot = x[..., :width]
        return torch.cat((rot * cos + turn(rot) * sin, x[..., width:]), dim=-1)

    return one(q), one(k)


def diffusers_apply_rotary_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> Pair:
    """diffusers' ``apply_rotary_emb`` with real cos/sin (FLUX, HunyuanVideo, Wan): adjacent pairs, the
    arithmetic in float32 on float32 (B or 1, S, D) tables, on (B, H, S, D) tensors."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)

    def one(x):
        real, imag = x.reshape(*x.shape[:-1], -1, 2).unbind(-1)
        turned = torch.stack((-imag, real), dim=-1).flatten(3)
        return (x.float() * cos + turned.float() * sin).to(x.dtype)

    return one(q), one(k)


def hf_rotary_cos_sin(
    inv_freq: torch.Tensor, position_ids: torch.Tensor, dtype: torch.dtype, attention_scaling: float = 1.0
) -> Pair:
    """Hugging Face's rotary embedding module (``LlamaRotaryEmbedding.forward``): (B, S, D) cos and sin of
    ``position_ids`` (B, S), computed in float32 and returned in ``dtype``."""
    inv_freq_expanded = inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded.float() @ position_ids_expanded.float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * attention_scaling
    sin = emb.sin() * attention_scaling
    return cos.to(dtype=dtype), sin.to(dtype=dtype)


def hf_apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, unsqueeze_dim: int = 1
) -> Pair:
    """Hugging Face's eager RoPE: ``q * cos + rotate_half(q) * sin`` on (B, H, S, D) tensors.

    Parameters
    ----------
    q, k : torch.Tensor
        (B, Hq, S, D) and (B, Hk, S, D).
    cos, sin : torch.Tensor
        Full-width tables already gathered per position, (B or 1, S, D), in the dtype of q.
    unsqueeze_dim : int
        Where the head axis goes in cos and sin (1 for (B, H, S, D) inputs).

    Returns
    -------
    (q_embed, k_embed) : tuple of torch.Tensor
    """
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


# --------------------------------------------------------------------------------------------------
# Correctness.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """Error of one provider's result against the float64 reference."""

    max_abs: float
    max_ulp: float
    ok: bool
    note: str = ""

    @staticmethod
    def worst(results: Sequence[CheckResult]) -> CheckResult:
        """Combine the checks of several passes into the worst of them."""
        return CheckResult(
            max(r.max_abs for r in results),
            max(r.max_ulp for r in results),
            all(r.ok for r in results),
            "; ".join(r.note for r in results if r.note),
        )


def ulp_scale(
    ref: torch.Tensor, *, interleaved: bool = False, rotary_dim: int = 0, norm: str = ""
) -> torch.Tensor:
    """The magnitude whose ulp is each element's unit in :func:`error_stats`, same shape as ``ref``.

    The norm of the element's rotation pair: ``(i, i + R/2)``, or ``(2i, 2i + 1)`` when ``interleaved``,
    over the first ``R = rotary_dim`` (0: all) dims of the last axis; a dim past them is copied, and is its
    own unit. With a ``norm`` (``"rms"``: over the last axis, the head; ``"rms_heads"``: over the last two,
    a token's heads) the unit is at least the RMS of the pair norms over that group.
    """
    width = ref.shape[-1]
    rotated = min(rotary_dim or width, width) // 2 * 2
    rot = ref[..., :rotated]
    if interleaved:
        pair = torch.hypot(rot[..., 0::2], rot[..., 1::2])
        pair = torch.stack((pair, pair), dim=-1).flatten(-2)
    else:
        pair = torch.hypot(rot[..., : rotated // 2], rot[..., rotated // 2 :])
        pair = torch.cat((pair, pair), dim=-1)
    scale = torch.cat((pair, ref[..., rotated:].abs()), dim=-1)
    if norm and scale.numel():
        group = (-2, -1) if norm == "rms_heads" else (-1,)
        rms = scale.pow(2).mean(dim=group, keepdim=True).sqrt()
        scale = torch.maximum(scale, rms)
    return scale


def error_stats(
    outs: Sequence[torch.Tensor],
    refs: Sequence[torch.Tensor],
    dtype: torch.dtype,
    *,
    interleaved: bool = False,
    rotary_dim: int = 0,
    norm: str = "",
) -> CheckResult:
    """Max absolute error and max error in ulps of ``dtype`` of ``outs`` against float64 ``refs``.

    The ulp of an element is taken at the norm of its rotation pair (:func:`ulp_scale`) rather than at the
    element itself: a rotation preserves that norm, and every rounding error of a correct kernel scales
    with it. At the element itself, outputs that happen to land near zero would report hundreds of ulps
    for a perfectly rounded fp32 computation. The pairing must be the workload's (GPT-J and diffusion
    shapes pair adjacent dims): against the wrong partner a correct result is off by hundreds.

    After a fused RMSNorm (``norm``) the unit is at least the RMS of the pair norms over the normalized
    group: the norm couples its elements (its backward is ``(w g - xhat mean(xhat w g)) / rms``), so an
    element can cancel far below the group's scale while a peer that rounds its intermediates to
    ``dtype`` (as Hugging Face's eager code does) is off by about an ulp of that scale. A kernel that
    rounds once stays within half an ulp of the element's own pair, so the larger unit hides nothing of
    it; a missing normalization is still off by far more.

    Parameters
    ----------
    outs : sequence of torch.Tensor
        Results in ``dtype``, same shapes as ``refs`` (..., heads, head_dim).
    refs : sequence of torch.Tensor
        float64 reference results.
    dtype : torch.dtype
        Output dtype whose ulp is the unit.
    interleaved, rotary_dim, norm
        The workload's pairing, rotated dims and fused norm (:func:`check_kwargs`).

    Returns
    -------
    CheckResult
        ``ok`` when every element is finite and within :data:`ULP_TOLERANCE` ulps.
    """
    finfo = torch.finfo(dtype)
    max_abs = max_ulp = 0.0
    finite = True
    for out, ref in zip(outs, refs, strict=True):
        if tuple(out.shape) != tuple(ref.shape):
            note = f"shape {tuple(out.shape)} != {tuple(ref.shape)}"
            return CheckResult(float("nan"), float("nan"), False, note)
        out64 = out.detach().to(torch.float64)
        finite = finite and bool(torch.isfinite(out64).all())
        diff = (out64 - ref).abs()
        scale = ulp_scale(ref, interleaved=interleaved, rotary_dim=rotary_dim, norm=norm)
        scale = scale.clamp_min(finfo.tiny)
        # frexp gives scale = m * 2**e with m in [0.5, 1): the ulp is eps * 2**(e - 1), exactly.
        _, exponent = torch.frexp(scale)
        ulp = torch.ldexp(torch.full_like(scale, finfo.eps), exponent - 1)
        if diff.numel():
            max_abs = max(max_abs, diff.max().item())
            max_ulp = max(max_ulp, (diff / ulp).max().item())
    if not finite:
        return CheckResult(float("nan"), float("nan"), False, "non-finite output")
    ok = max_ulp <= ULP_TOLERANCE
    return CheckResult(max_abs, max_ulp, ok, "" if ok else f"error {max_ulp:.3g} ulp > {ULP_TOLERANCE:g}")


def check_kwargs(wl: Workload) -> dict:
    """:func:`error_stats`' description of the workload's outputs: how its dims pair (interleaved for
    GPT-J and for multi-axis presets that say so), how many are rotated, and its fused norm."""
    ma = wl.multi_axis
    if ma is not None:
        return {"interleaved": ma.interleaved, "rotary_dim": ma.rotary_dim, "norm": wl.spec.norm}
    return {"interleaved": wl.spec.interleaved, "rotary_dim": wl.spec.rotary_dim, "norm": wl.spec.norm}


# --------------------------------------------------------------------------------------------------
# Implementations.
# --------------------------------------------------------------------------------------------------


def _normal_like(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.empty_like(x).normal_(generator=gen)


def _leaf(x: torch.Tensor) -> torch.Tensor:
    # A new leaf over the same storage: no copy, and the set's own tensor stays grad-free.
    return x.detach().requires_grad_()


class Impl:
    """One provider built for one workload. Subclasses implement the three methods."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> Pair:
        """Rotated (q, k) in the canonical layout; ``q`` and ``k`` are left unchanged."""
        raise NotImplementedError

    def backward(self, q: torch.Tensor, k: torch.Tensor, gq: torch.Tensor, gk: torch.Tensor) -> Pair:
        """Gradients wrt (q, k) for output gradients (gq, gk), all in the canonical layout."""
        raise NotImplementedError

    def timed(self, pass_: str, q: torch.Tensor, k: torch.Tensor) -> Callable[[], object]:
        """A callable that does one ``pass_`` ("fwd", "bwd", "fwdbwd") on the input set (q, k)."""
        raise NotImplementedError


class AutogradImpl(Impl):
    """A differentiable ``fn(q, k) -> (q_out, k_out)``; backward is timed through autograd.

    - fwd: ``fn`` on inputs that do not require grad (no graph is recorded).
    - bwd: the forward graph is recorded once per input set outside the timed region; the timed call is
      ``torch.autograd.grad(outputs, (q, k), grads, retain_graph=True)``, i.e. the backward alone.
    - fwdbwd: forward on leaves that require grad, then ``torch.autograd.grad`` (graph freed).

    Parameters
    ----------
    fn : callable
        Takes and returns tensors in the provider's native layout.
    to_native, from_native : callable
        Views between the canonical layout and the native one (no copies).
    gen : torch.Generator
        Draws the output gradients.
    mutates_inputs : bool
        ``fn`` writes into its inputs (Liger): the check runs it on clones.
    params : tuple of torch.Tensor
        Parameters ``fn`` uses whose gradients a training step needs too (norm weights): the timed
        backward asks for them.
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], Pair],
        to_native: Callable[[torch.Tensor], torch.Tensor],
        from_native: Callable[[torch.Tensor], torch.Tensor],
        gen: torch.Generator,
        *,
        mutates_inputs: bool = False,
        params: tuple = (),
    ) -> None:
        self.fn, self.to_native, self.from_native = fn, to_native, from_native
        self.gen, self.mutates_inputs, self.params = gen, mutates_inputs, tuple(params)

    def _call(self, q: torch.Tensor, k: torch.Tensor) -> Pair:
        return self.fn(self.to_native(q), self.to_native(k))

    def forward(self, q, k):
        if self.mutates_inputs:
            q, k = q.clone(), k.clone()
        q_out, k_out = self._call(q, k)
        return self.from_native(q_out), self.from_native(k_out)

    def backward(self, q, k, gq, gk):
        leaves = (_leaf(q.clone()), _leaf(k.clone()))
        outs = self._call(*leaves)
        # Clones: a provider may rotate the incoming gradient in place (Liger does).
        grads = (self.to_native(gq).clone(), self.to_native(gk).clone())
        dq, dk = torch.autograd.grad(outs, leaves, grads)
        return dq, dk

    def timed(self, pass_, q, k):
        if pass_ == "fwd":
            # Views taken here, not per call: what a decode step pays on the host is the provider's own.
            return partial(self.fn, self.to_native(q), self.to_native(k))
        if pass_ == "bwd" and self.mutates_inputs:
            # Liger's forward writes into its inputs and returns views of them: the recorded graph must
            # own its memory, or the set's next in-place forward (same version counter) invalidates it.
            leaves = (_leaf(q.clone()), _leaf(k.clone()))
        else:
            leaves = (_leaf(q), _leaf(k))
        outs = self._call(*leaves)
        grads = tuple(_normal_like(o, self.gen) for o in outs)
        wrt = leaves + self.params
        if pass_ == "bwd":
            return partial(torch.autograd.grad, outs, wrt, grads, retain_graph=True)
        del outs  # fwdbwd records a fresh graph on every call

        def fwdbwd():
            return torch.autograd.grad(self._call(*leaves), wrt, grads)

        return fwdbwd


class InplaceImpl(Impl):
    """rope-triton with ``inplace=True``; backward is the conjugate rotation of the gradients in place.

    Timed calls rotate the set's own buffers again on every call: a rotation keeps the values in range,
    so the data stays realistic however many calls are made.
    """

    def __init__(self, wl: Workload) -> None:
        self.call = partial(apply_rotary, inplace=True, **_rope_kwargs(wl, wl.cos_sin_mode))
        self.gen = wl.gen

    def forward(self, q, k):
        return self.call(q.clone(), k.clone())

    def backward(self, q, k, gq, gk):
        return self.call(gq.clone(), gk.clone(), conjugate=True)

    def _pass(self, q, k, conjugate: bool) -> Callable[[], object]:
        return partial(self.call, q, k, conjugate=conjugate)

    def timed(self, pass_, q, k):
        fwd = self._pass(q, k, False)
        if pass_ == "fwd":
            return fwd
        bwd = self._pass(_normal_like(q, self.gen), _normal_like(k, self.gen), True)
        if pass_ == "bwd":
            return bwd

        def fwdbwd():
            fwd()
            return bwd()

        return fwdbwd


class GraphImpl(InplaceImpl):
    """rope-triton's in-place rotation captured in a CUDA graph (:class:`rope_triton.CapturedRotary`): the
    timed call is the graph's replay, which is what a decode step that keeps q and k in fixed buffers pays.
    Backward: the conjugate rotation captured the same way."""

    def __init__(self, wl: Workload) -> None:
        super().__init__(wl)
        self.kwargs = _rope_kwargs(wl, wl.cos_sin_mode)

    def _captured(self, q, k, conjugate=False):
        from ..graphs import CapturedRotary

        return CapturedRotary(q, k, inplace=True, conjugate=conjugate, **self.kwargs)

    def forward(self, q, k):
        return self._captured(q.clone(), k.clone()).replay()

    def backward(self, q, k, gq, gk):
        return self._captured(gq.clone(), gk.clone(), conjugate=True).replay()

    def _pass(self, q, k, conjugate: bool) -> Callable[[], object]:
        return self._captured(q, k, conjugate=conjugate).replay


def _needs_cuda_and_tensor_offsets(wl: Workload, requested: bool) -> str | None:
    if wl.device.type != "cuda":
        return "CUDA graphs: a GPU only"
    if wl.spec.kind != "decode" and not requested:
        return "decode shapes by default (elsewhere the host cost hides behind the GPU time)"
    return None


# --------------------------------------------------------------------------------------------------
# Layout views for the Hugging Face style peers.
# --------------------------------------------------------------------------------------------------


def _bshd_to_bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _thd_to_bhsd(x: torch.Tensor) -> torch.Tensor:
    # Packed tokens become one (1, H, T, D) batch; per-token cos/sin carry the restarting positions.
    return x.unsqueeze(0).transpose(1, 2)


def _bhsd_to_thd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).squeeze(0)


def hf_views(wl: Workload) -> tuple[Callable, Callable]:
    """(to_native, from_native) between the workload's canonical layout and (B, H, S, D)."""
    if wl.layout == "thd":
        return _thd_to_bhsd, _bhsd_to_thd
    return _bshd_to_bhsd, _bshd_to_bhsd


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


# --------------------------------------------------------------------------------------------------
# Provider table.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provider:
    """A named way to rotate q and k.

    Attributes
    ----------
    name : str
    description : str
    build : callable
        ``build(workload) -> Impl``.
    skip_reason : callable
        ``skip_reason(workload, requested) -> str or None``: why it cannot (or should not) run here;
        ``requested`` is True when the user named it in ``--providers``.
    """

    name: str
    description: str
    build: Callable[[Workload], Impl]
    skip_reason: Callable[[Workload, bool], str | None]


def _always(wl: Workload, requested: bool) -> str | None:
    return None


def _rotation_only(skip: Callable[[Workload, bool], str | None]) -> Callable[[Workload, bool], str | None]:
    """A provider of the rotation alone: not run on shapes with a fused norm."""

    def skip_reason(wl: Workload, requested: bool) -> str | None:
        if wl.spec.norm:
            return "rotation alone: this shape normalizes q and k first"
        return skip(wl, requested)

    return skip_reason


def _rope_kwargs(wl: Workload, mode: str) -> dict:
    """apply_rotary's arguments besides q and k for an angle source: ``"tables"``, ``"freqs"``, or
    ``"multi-axis"`` (the positions of a multi-axis shape). Multi-axis shapes read as ``"tables"`` get one
    row per token, (B or 1, S, R/2): Hugging Face's tables, halved."""
    if mode == "multi-axis":
        return dict(wl.rope_kwargs)
    if wl.multi_axis is not None:
        pairs = wl.multi_axis.interleaved
        return {"cos": wl.cos32, "sin": wl.sin32, "layout": wl.layout, "interleaved": pairs}
    tables = {"freqs": wl.freqs} if mode == "freqs" else {"cos": wl.cos32, "sin": wl.sin32}
    return {**tables, **wl.rope_kwargs}


def cos_sin_read(provider: str, wl: Workload) -> str:
    """What a rope-triton provider reads on this workload: ``"tables"`` or ``"freqs"``; ``""`` for peers."""
    return {
        "rope-triton": wl.cos_sin_mode, "rope-triton-inplace": wl.cos_sin_mode,
        "rope-triton-graph": wl.cos_sin_mode,
        "rope-triton-tables": "tables", "rope-triton-freqs": "freqs",
    }.get(provider, "")


def _build_rope(wl: Workload, mode: str | None = None) -> Impl:
    kwargs = _rope_kwargs(wl, mode or wl.cos_sin_mode)
    if wl.spec.norm:
        wq, wk = wl.norm_weights

        def fn(q, k):
            return qk_norm_rotary(q, k, wq, wk, norm=wl.spec.norm, eps=NORM_EPS, **kwargs)

        return AutogradImpl(fn, _identity, _identity, wl.gen, params=wl.norm_weights)
    return AutogradImpl(partial(apply_rotary, **kwargs), _identity, _identity, wl.gen)


def _unless_default(mode: str) -> Callable[[Workload, bool], str | None]:
    def skip_reason(wl: Workload, requested: bool) -> str | None:
        if wl.cos_sin_mode == mode and not requested:
            return f"the same as rope-triton on this shape (it reads {mode})"
        if wl.multi_axis is not None and mode == "freqs":
            return "the same as rope-triton on a multi-axis shape (computed from the positions)"
        return None

    return skip_reason


def _hf_formula(wl: Workload) -> Callable:
    # Looked up at call time, so that a patched formula (tests) is the one that runs.
    if wl.multi_axis is not None and wl.multi_axis.interleaved:
        return diffusers_apply_rotary_emb
    if wl.spec.rotary_dim:
        return partial(hf_partial_rotary, interleaved=wl.spec.interleaved)
    return lambda q, k, cos, sin: hf_apply_rotary_pos_emb(q, k, cos, sin)


def hf_qk_norm(x: torch.Tensor, weight: torch.Tensor, norm: str) -> torch.Tensor:
    """transformers' q/k RMSNorm on (B, S, H, D): Qwen3's over each head (the normalized values rounded to
    the input dtype before the weight), OLMo 2's over each token's H * D values (weight applied in
    float32)."""
    shape = x.shape
    if norm == "rms_heads":
        x = x.reshape(*shape[:-2], -1)
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + NORM_EPS)
    out = (weight * h).to(x.dtype) if norm == "rms_heads" else weight * h.to(x.dtype)
    return out.view(shape)


def hf_norm_rope(q, k, wq, wk, cos, sin, norm: str) -> Pair:
    """The attention layers' q/k norm on the projections' (B, S, H, D), then the transpose to (B, H, S, D)
    and the RoPE, as transformers' Qwen3 / OLMo 2 run them. Takes and returns (B, H, S, D) views (of the
    (B, S, H, D) projections)."""
    q = hf_qk_norm(q.transpose(1, 2), wq, norm).transpose(1, 2)
    k = hf_qk_norm(k.transpose(1, 2), wk, norm).transpose(1, 2)
    return hf_apply_rotary_pos_emb(q, k, cos, sin)


def _build_hf_norm(wl: Workload, compiled: bool = False) -> Impl:
    cos, sin, norm = wl.hf_cos, wl.hf_sin, wl.spec.norm
    formula = compile_replayable(hf_norm_rope) if compiled else hf_norm_rope

    def fn(q, k):
        return formula(q, k, *wl.norm_weights, cos, sin, norm)

    return AutogradImpl(fn, *hf_views(wl), wl.gen, params=wl.norm_weights)


def _build_hf_eager(wl: Workload) -> Impl:
    if wl.spec.norm:
        return _build_hf_norm(wl)
    cos, sin = wl.hf_cos, wl.hf_sin
    formula = _hf_formula(wl)

    def fn(q, k):
        return formula(q, k, cos, sin)

    return AutogradImpl(fn, *hf_views(wl), wl.gen)


def multi_axis_cos_sin(ma, positions: torch.Tensor, dtype: torch.dtype) -> Pair:
    """Multi-axis cos/sin as the models build them in eager PyTorch (Qwen-VL's rotary module and
    ``apply_multimodal_rotary_pos_emb`` / ``apply_interleaved_mrope``, diffusers' per-axis
    ``get_1d_rotary_pos_embed``): every pair's angle as a float32 product of its axis's position and its
    inverse frequency, full width (B or 1, S, R), in ``dtype`` (float32 for adjacent pairs, as diffusers)."""
    inv_freq = ma.inv_freq.to(device=positions.device, dtype=torch.float32)
    axis = ma.axis.to(positions.device)
    theta = positions.float()[axis].movedim(0, -1) * inv_freq  # (..., S, R/2)
    theta = theta.reshape(-1, positions.shape[-1], inv_freq.numel())
    wide = torch.repeat_interleave(theta, 2, dim=-1) if ma.interleaved else torch.cat((theta, theta), dim=-1)
    if ma.interleaved:
        dtype = torch.float32  # (diffusers keeps its tables in float32)
    return (wide.cos() * ma.attention_factor).to(dtype), (wide.sin() * ma.attention_factor).to(dtype)


def _build_hf_eager_rotary(wl: Workload) -> Impl:
    inv_freq, position_ids = wl.inv_freq, wl.position_ids
    if wl.multi_axis is not None:
        formula, ma, positions = _hf_formula(wl), wl.multi_axis, wl.axis_positions

        def fn_multi_axis(q, k):
            return formula(q, k, *multi_axis_cos_sin(ma, positions, q.dtype))

        return AutogradImpl(fn_multi_axis, *hf_views(wl), wl.gen)

    def fn(q, k):
        # What rope-triton does inside its call, Hugging Face does in its rotary module: each token's
        # cos/sin from its position, then the formula.
        cos, sin = hf_rotary_cos_sin(inv_freq, position_ids, q.dtype)
        return hf_apply_rotary_pos_emb(q, k, cos, sin)

    return AutogradImpl(fn, *hf_views(wl), wl.gen)


def _build_rope_hf(wl: Workload) -> Impl:
    from ..integrations.transformers import apply_rotary_pos_emb

    cos, sin = wl.hf_cos, wl.hf_sin

    def fn(q, k):
        return apply_rotary_pos_emb(q, k, cos, sin)

    return AutogradImpl(fn, *hf_views(wl), wl.gen)


def _cpu_by_default(wl: Workload, requested: bool) -> str | None:
    if wl.device.type == "cuda" and not requested and wl.multi_axis is None:
        return "run on a CPU by default; name it in --providers to run it on CUDA"
    return None


def compile_replayable(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)`` whose backward can be run again on one recorded graph.

    The bwd pass times ``torch.autograd.grad(..., retain_graph=True)`` on one forward graph, replayed. A
    compiled backward may be built to free or reuse the activations its forward saved ("donated buffers":
    intermediates such as cos/sin built inside the graph, or a norm's statistics), and then refuses a
    retained graph. ``torch._functorch.config.donated_buffer`` is read twice: when the forward is compiled
    (at its first call under autograd) to list those buffers, and again at every backward run with a
    retained graph, where a graph compiled with the flag off (no list) is refused unless it is off then
    too (the check's backward, which frees its graph, comes first). A patch around the compile and the
    first call is therefore not enough: the flag is turned off for this process, before compiling. Without
    donation the backward computes the same; it only holds the saved activations until the graph is freed.
    """
    from torch._functorch import config as functorch_config

    if hasattr(functorch_config, "donated_buffer"):  # (older torch: no donation, nothing to turn off)
        functorch_config.donated_buffer = False
    return torch.compile(fn, dynamic=False)


def _build_compile(wl: Workload) -> Impl:
    # Each shape would add recompilations to one cache and, past the recompile limit, silently fall
    # back to eager: start every shape from an empty cache.
    torch._dynamo.reset()
    if wl.spec.norm:
        return _build_hf_norm(wl, compiled=True)
    if wl.multi_axis is not None:
        # Positions -> rotated q and k, all of it compiled (cos/sin built inside the graph).
        formula, ma, positions = _hf_formula(wl), wl.multi_axis, wl.axis_positions
        whole = compile_replayable(lambda q, k: formula(q, k, *multi_axis_cos_sin(ma, positions, q.dtype)))
        return AutogradImpl(whole, *hf_views(wl), wl.gen)
    compiled = compile_replayable(
        partial(hf_partial_rotary, interleaved=wl.spec.interleaved) if wl.spec.rotary_dim
        else hf_apply_rotary_pos_emb
    )
    cos, sin = wl.hf_cos, wl.hf_sin

    def fn(q, k):
        return compiled(q, k, cos, sin)

    return AutogradImpl(fn, *hf_views(wl), wl.gen)


def _skip_compile(wl: Workload, requested: bool) -> str | None:
    if wl.device.type != "cuda" and not requested:
        return "skipped on CPU (compiling takes ~30 s a variant); name it in --providers to run it"
    return None


def mrope_sections(ma) -> list[int] | None:
    """The ``mrope_section`` of a sectioned 3-axis M-RoPE (Qwen2-VL: consecutive blocks of pairs on axes
    0, 1, 2, every axis with the same frequencies as 1-D RoPE), or None for any other multi-axis layout."""
    axis = ma.axis.tolist()
    runs = [len(list(group)) for _, group in itertools.groupby(axis)]
    blocks = [a for a, _ in itertools.groupby(axis)]
    if ma.n_axes != 3 or ma.interleaved or blocks != [0, 1, 2]:
        return None
    return runs


def _build_liger_mrope(wl: Workload) -> Impl:
    from liger_kernel.transformers.qwen2vl_mrope import liger_multimodal_rotary_pos_emb

    ma, sections = wl.multi_axis, mrope_sections(wl.multi_axis)
    # Per-axis full-width tables (3, B or 1, S, R) in the model dtype, as Qwen2-VL's rotary module built
    # them for apply_multimodal_rotary_pos_emb (built here, outside the timed calls, like hf-eager's).
    pos = wl.axis_positions.reshape(3, -1, wl.axis_positions.shape[-1]).double()
    theta = pos[..., None] * ma.inv_freq.to(pos.device)
    wide = torch.cat((theta, theta), dim=-1)
    cos, sin = ((f(wide) * ma.attention_factor).to(wl.dtype) for f in (torch.cos, torch.sin))

    def fn(q, k):
        return liger_multimodal_rotary_pos_emb(q, k, cos, sin, sections)[:2]

    return AutogradImpl(fn, *hf_views(wl), wl.gen, mutates_inputs=True)


def _build_liger(wl: Workload) -> Impl:
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    if wl.multi_axis is not None:
        return _build_liger_mrope(wl)
    cos, sin = wl.hf_cos, wl.hf_sin
    if wl.spec.norm:
        from liger_kernel.transformers.functional import liger_rms_norm

        wq, wk = wl.norm_weights

        def norm(x, w):  # (B, H, S, D) view of the (B, S, H, D) projection
            x = x.transpose(1, 2)
            flat = x.reshape(*x.shape[:-2], -1) if wl.spec.norm == "rms_heads" else x
            return liger_rms_norm(flat, w, NORM_EPS).view(x.shape).transpose(1, 2)

        def fn_norm(q, k):
            # Liger's RMSNorm (its Llama casting), then its RoPE (which rotates in place).
            return liger_rotary_pos_emb(norm(q, wq), norm(k, wk), cos, sin)[:2]

        return AutogradImpl(fn_norm, *hf_views(wl), wl.gen, params=wl.norm_weights)

    def fn(q, k):
        # Liger rotates q and k in place (and returns more than two tensors in some versions).
        return liger_rotary_pos_emb(q, k, cos, sin)[:2]

    return AutogradImpl(fn, *hf_views(wl), wl.gen, mutates_inputs=True)


def _skip_liger(wl: Workload, requested: bool) -> str | None:
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel not installed (pip install 'rope-triton[bench]')"
    if wl.device.type != "cuda":
        return "needs a CUDA device"
    if wl.spec.rotary_dim:
        return "rotates whole heads in NeoX pairs only"
    if wl.multi_axis is not None and mrope_sections(wl.multi_axis) is None:
        return "Liger's qwen2vl_mrope takes sectioned 3-axis M-RoPE only (Qwen2-VL / Qwen2.5-VL text)"
    return None


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider(
            "rope-triton",
            "apply_rotary, out of place, autograd backward; cos/sin as RotaryEmbedding picks for the shape "
            "(float32 tables, or freqs= for long sequences few share); norm shapes: qk_norm_rotary",
            _build_rope,
            _always,
        ),
        Provider(
            "rope-triton-inplace",
            "apply_rotary(inplace=True), cos/sin as rope-triton; backward: conjugate rotation of the grads "
            "in place",
            lambda wl: InplaceImpl(wl),
            _rotation_only(_always),
        ),
        Provider(
            "rope-triton-graph",
            "rope-triton-inplace captured in a CUDA graph (rope_triton.CapturedRotary), timed by its replay",
            lambda wl: GraphImpl(wl),
            _rotation_only(_needs_cuda_and_tensor_offsets),
        ),
        Provider(
            "rope-triton-tables",
            "apply_rotary(cos, sin) with float32 tables, out of place (run where rope-triton uses freqs=)",
            partial(_build_rope, mode="tables"),
            _unless_default("tables"),
        ),
        Provider(
            "rope-triton-freqs",
            "apply_rotary(freqs=freq_table(...)): cos/sin computed in the kernel, out of place (run where "
            "rope-triton reads tables)",
            partial(_build_rope, mode="freqs"),
            _unless_default("freqs"),
        ),
        Provider("hf-eager", "q*cos + rotate_half(q)*sin, eager, (B,H,S,D) (norm shapes: transformers' "
                 "q/k RMSNorm first)", _build_hf_eager, _always),
        Provider(
            "hf-eager-rotary",
            "hf-eager with its cos/sin built from the positions in the call, as Hugging Face's rotary "
            "embedding module does (rope-triton builds its rows in the call too)",
            _build_hf_eager_rotary,
            _rotation_only(_cpu_by_default),
        ),
        Provider(
            "rope-triton-hf",
            "rope_triton.integrations.transformers.apply_rotary_pos_emb on hf-eager's (B,S,D) tables: what "
            "a model patched with rope_triton.integrations.transformers.patch runs in every layer",
            _build_rope_hf,
            _rotation_only(_cpu_by_default),
        ),
        Provider("torch-compile", "the hf-eager function under torch.compile (multi-axis shapes: "
                 "hf-eager-rotary's, positions to output)", _build_compile, _skip_compile),
        Provider("liger", "liger_kernel.transformers.rope.liger_rotary_pos_emb (norm shapes: after "
                 "liger_rms_norm of q and k; sectioned M-RoPE: its qwen2vl_mrope on per-axis tables)",
                 _build_liger, _skip_liger),
    )
}


def check_impl(impl: Impl, wl: Workload, passes: Sequence[str]) -> dict[str, CheckResult]:
    """Check ``impl`` against the workload's float64 references for the directions ``passes`` need.

    Parameters
    ----------
    impl : Impl
    wl : Workload
        Supplies the check inputs (fresh random tensors, not the timed sets) and the references.
    passes : sequence of str

    Returns
    -------
    dict
        ``{"fwd": CheckResult, "bwd": CheckResult}``, the keys that ``passes`` need.
    """
    q, k, gq, gk = wl.check_inputs
    units = check_kwargs(wl)
    results = {}
    if any(p in ("fwd", "fwdbwd") for p in passes):
        results["fwd"] = error_stats(impl.forward(q, k), wl.ref_fwd, wl.dtype, **units)
    if any(p in ("bwd", "fwdbwd") for p in passes):
        results["bwd"] = error_stats(impl.backward(q, k, gq, gk), wl.ref_bwd, wl.dtype, **units)
    return results
