"""Fusing an attention layer's q/k RMSNorm into its rotation, without copying the layer's forward.

Qwen3, Qwen3-MoE, Qwen3-VL, Gemma 3 and OLMo 2 attention layers normalize q and k (``self.q_norm``,
``self.k_norm``) and then hand them, reshaped, to ``apply_rotary_pos_emb``. A fused layer defers the
norm: while the layer's own forward runs (wrapped, not rewritten), its norm modules return their input
untouched and note it; the patched ``apply_rotary_pos_emb`` recognizes the noted tensors among its
arguments (views of the same memory) and normalizes and rotates them in one
:func:`rope_triton.qk_norm_rotary` call, with the norms' own weights (which get their gradients). A norm
that was deferred but never reached the rotation is an error raised when the layer's forward returns,
never a silently unnormalized result. Under ``torch.compile`` the layers run unfused.

How a norm module computes (its eps, and whether it scales by ``weight`` or ``1 + weight`` as Gemma's do)
is read off the module by running it once on a probe at patch time; a module that matches neither form
is left alone.
"""

from __future__ import annotations

import threading
import types

import torch
from torch import nn

_STATE = threading.local()  # .pending: the deferred norms of the layer running on this thread


class _Deferred:
    __slots__ = ("key", "module")

    def __init__(self, key: tuple, module: nn.Module) -> None:
        self.key, self.module = key, module


def _key(x: torch.Tensor) -> tuple:
    return (x.untyped_storage().data_ptr(), x.storage_offset(), x.numel(), x.dtype)


def norm_form(module: nn.Module) -> tuple[float, float] | None:
    """(eps, weight offset) of an RMSNorm module whose forward is ``x / rms(x) * (weight + offset)`` over
    the last dim with offset 0 or 1, found by running it on a probe; None for anything else."""
    weight = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.is_meta:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        return None
    gen = torch.Generator(device=weight.device).manual_seed(0)
    x = torch.randn(4, weight.numel(), generator=gen, device=weight.device)
    with torch.no_grad():
        y = type(module).forward(module, x).float()
        unit = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        for offset in (0.0, 1.0):
            want = unit * (weight.float() + offset)
            if y.shape == x.shape and torch.allclose(y, want, rtol=1e-2, atol=1e-4):
                return float(eps), offset
    return None


def install(attention: nn.Module) -> list[nn.Module] | None:
    """Fuse ``attention``'s q_norm and k_norm into its rotation; returns the modules whose forward was
    replaced (for :func:`uninstall`), or None when the layer has no such norms or they are not RMSNorms."""
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    if not isinstance(q_norm, nn.Module) or not isinstance(k_norm, nn.Module):
        return None
    forms = [norm_form(m) for m in (q_norm, k_norm)]
    if None in forms:
        return None
    for m, form in zip((q_norm, k_norm), forms, strict=True):
        m._rope_triton_norm = form
        m.forward = types.MethodType(_deferred_norm_forward, m)
    attention.forward = types.MethodType(_fusing_forward, attention)
    return [attention, q_norm, k_norm]


def uninstall(modules: list[nn.Module]) -> None:
    for m in modules:
        m.__dict__.pop("forward", None)
        m.__dict__.pop("_rope_triton_norm", None)


def _fusing_forward(self: nn.Module, *args, **kwargs):
    if torch.compiler.is_compiling():
        return type(self).forward(self, *args, **kwargs)
    outer = getattr(_STATE, "pending", None)
    _STATE.pending = []
    try:
        out = type(self).forward(self, *args, **kwargs)
        left = _STATE.pending
    finally:
        _STATE.pending = outer
    if left:
        raise RuntimeError(
            f"rope-triton: {type(self).__name__} normalized q or k (deferred to be fused with the rotation) "
            "but did not pass them to apply_rotary_pos_emb; patch this model with fuse_qk_norm=False"
        )
    return out


def _deferred_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    pending = getattr(_STATE, "pending", None)
    if pending is None or torch.compiler.is_compiling():
        return type(self).forward(self, x)
    pending.append(_Deferred(_key(x), self))
    return x.view(x.shape)


def take(q: torch.Tensor, k: torch.Tensor | None) -> tuple[nn.Module, nn.Module] | None:
    """The deferred norm modules of q and k (both, or None), taken off the pending list."""
    pending = getattr(_STATE, "pending", None)
    if not pending or k is None or torch.compiler.is_compiling():
        return None
    found = []
    for x in (q, k):
        key = _key(x)
        match = next((d for d in pending if d.key == key), None)
        if match is None:
            return None
        found.append(match)
    for d in found:
        pending.remove(d)
    return found[0].module, found[1].module
