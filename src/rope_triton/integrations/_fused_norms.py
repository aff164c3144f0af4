"""Fusing an attention layer's q/k norm into its rotation, without copying the layer's forward.

Norm before the rotation: Qwen3, Qwen3-MoE, Qwen3-VL, Gemma 3, OLMo 2 and OLMoE attention layers normalize
q and k (``self.q_norm``, ``self.k_norm``) and then hand them, reshaped, to ``apply_rotary_pos_emb``. A
fused layer defers the norm: while the layer's own forward runs (wrapped, not rewritten), its norm modules
return their input untouched and note it; the patched ``apply_rotary_pos_emb`` recognizes the noted
tensors among its arguments (views of the same memory) and normalizes and rotates them in one
:func:`rope_triton.qk_norm_rotary` call, with the norms' own weights (which get their gradients). A norm
that was deferred but never reached the rotation is an error raised when the layer's forward returns,
never a silently unnormalized result.

Norm after the rotation: Llama 4 attention layers (those that rotate at all) rotate q and k with
``apply_rotary_emb`` and then pass each through one weightless norm, ``self.qk_norm``
(``x / sqrt(mean(x**2) + eps)``, Llama 4's "L2 norm"). The same mechanism runs the other way round: the
patched rotation, seeing that the running layer has such a norm, normalizes as it rotates (the same one
call, ``norm="l2"`` after the rotation) and notes its outputs; the norm module, handed a noted output,
returns it untouched. A noted output that never reaches the norm is the error here (the model's own code
did not normalize it), raised when the layer's forward returns.

Under ``torch.compile`` the layers run unfused.

How a norm module computes (its eps, and whether it scales by ``weight``, ``1 + weight`` as Gemma's do, or
nothing) is read off the module by running it once on a probe at patch time; a module that matches none
of these forms is left alone.
"""

from __future__ import annotations

import threading
import types

import torch
from torch import nn

_STATE = threading.local()
# .pending: what the layer running on this thread has noted and not yet matched (deferred norms, or
# outputs of the rotation normalized ahead of their norm); .after: that layer's norm that follows the
# rotation, for the rotation to apply (None when its norms come first, or it has none).


class _Noted:
    __slots__ = ("after", "key", "module")

    def __init__(self, key: tuple, module: nn.Module, after: bool) -> None:
        self.key, self.module, self.after = key, module, after


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


def weightless_eps(module: nn.Module) -> float | None:
    """eps of a norm module without parameters whose forward is ``x / sqrt(mean(x**2) + eps)`` over the
    last dim (Llama 4's ``qk_norm``), found by running it on a probe; None for anything else."""
    if next(module.parameters(), None) is not None:
        return None
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
        return None
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 16, generator=gen)
    with torch.no_grad():
        y = type(module).forward(module, x)
        want = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y.float(), want, 1e-2, 1e-4):
            return float(eps)
    return None


def install(attention: nn.Module, *, after_rope: bool = False) -> dict[str, nn.Module] | None:
    """Fuse ``attention``'s q/k norms into its rotation: ``q_norm`` and ``k_norm`` (RMSNorms) before it,
    or with ``after_rope`` its weightless ``qk_norm`` after it. Returns the modules whose forward was
    replaced, keyed by their names under ``attention`` (``""`` for itself; for :func:`uninstall`), or
    None when the layer has no such norms."""
    if after_rope:
        norm = getattr(attention, "qk_norm", None)
        if not isinstance(norm, nn.Module):
            return None
        eps = weightless_eps(norm)
        if eps is None:
            return None
        norm._rope_triton_norm = (eps, None)
        norm.forward = types.MethodType(_passing_norm_forward, norm)
        attention._rope_triton_after = "qk_norm"
        attention.forward = types.MethodType(_fusing_forward, attention)
        return {"": attention, "qk_norm": norm}
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
    return {"": attention, "q_norm": q_norm, "k_norm": k_norm}


def uninstall(modules: dict[str, nn.Module]) -> None:
    for m in modules.values():
        for name in ("forward", "_rope_triton_norm", "_rope_triton_after"):
            m.__dict__.pop(name, None)


def _fusing_forward(self: nn.Module, *args, **kwargs):
    if torch.compiler.is_compiling():
        return type(self).forward(self, *args, **kwargs)
    outer = getattr(_STATE, "pending", None), getattr(_STATE, "after", None)
    after = self.__dict__.get("_rope_triton_after")
    _STATE.pending, _STATE.after = [], (getattr(self, after) if after else None)
    try:
        out = type(self).forward(self, *args, **kwargs)
        left = _STATE.pending
    finally:
        _STATE.pending, _STATE.after = outer
    if any(n.after for n in left):
        raise RuntimeError(
            f"rope-triton: {type(self).__name__} rotated q or k with its {after} fused into the rotation, "
            f"but did not pass them to {after} afterwards; patch this model with fuse_qk_norm=False"
        )
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
    pending.append(_Noted(_key(x), self, after=False))
    return x.view(x.shape)


def _passing_norm_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # A rotation output normalized already passes; anything else is normalized here, as the model would.
    pending = getattr(_STATE, "pending", None)
    if pending and isinstance(x, torch.Tensor) and not torch.compiler.is_compiling():
        key = (*_key(x), x.shape[-1])  # (the norm runs over the last dim: the same head width)
        match = next((n for n in pending if n.after and n.module is self and n.key == key), None)
        if match is not None:
            pending.remove(match)
            return x.view(x.shape)
    return type(self).forward(self, x)


def take(q: torch.Tensor, k: torch.Tensor | None) -> tuple[nn.Module, nn.Module] | None:
    """The deferred norm modules of q and k (both, or None), taken off the pending list."""
    pending = getattr(_STATE, "pending", None)
    if not pending or k is None or torch.compiler.is_compiling():
        return None
    found = []
    for x in (q, k):
        key = _key(x)
        match = next((d for d in pending if not d.after and d.key == key), None)
        if match is None:
            return None
        found.append(match)
    for d in found:
        pending.remove(d)
    return found[0].module, found[1].module


def norm_after(k: torch.Tensor | None) -> nn.Module | None:
    """The running layer's norm that follows its rotation (for the rotation to apply to q and k), or
    None: rotate only."""
    if k is None or getattr(_STATE, "pending", None) is None or torch.compiler.is_compiling():
        return None
    return getattr(_STATE, "after", None)


def normalized(module: nn.Module, outputs: tuple[torch.Tensor, ...]) -> None:
    """Note rotation outputs that ``module`` (the layer's norm after the rotation) was applied to already."""
    _STATE.pending.extend(_Noted((*_key(t), t.shape[-1]), module, after=True) for t in outputs)
