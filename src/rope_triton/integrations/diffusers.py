"""diffusers integration: a drop-in ``apply_rotary_emb`` and :func:`patch`, which makes a loaded model
(FLUX, HunyuanVideo, and every other diffusers model that rotates with ``diffusers.models.embeddings.
apply_rotary_emb``) use it.

>>> from rope_triton.integrations.diffusers import patch, unpatch
>>> patch(transformer)  # doctest: +SKIP
['diffusers.models.embeddings.apply_rotary_emb',
 'diffusers.models.transformers.transformer_flux.apply_rotary_emb']

diffusers is never imported here. Scope of a patch: as with the transformers integration, the module
attributes are swapped, so while one model is patched every model that looks the function up in those
modules uses rope-triton; the last :func:`unpatch` (or the garbage collection of the last patched model)
puts the original back. Models with their own rotary function (Wan's, say) keep it: only the shared
function is swapped, and :func:`patch` says which it changed.
"""

from __future__ import annotations

import sys
import types
import weakref

import torch
from torch import nn

from ..functional import apply_rotary
from . import _swap

__all__ = ["apply_rotary_emb", "patch", "unpatch"]

_FUNCTION = "apply_rotary_emb"
_EMBEDDINGS = "diffusers.models.embeddings"
_LAYOUTS = {1: "bshd", 2: "bhsd"}  # sequence_dim -> layout of x


def apply_rotary_emb(
    x: torch.Tensor,
    freqs_cis: tuple[torch.Tensor, torch.Tensor] | torch.Tensor,
    use_real: bool = True,
    use_real_unbind_dim: int = -1,
    sequence_dim: int = 2,
) -> torch.Tensor:
    """Drop-in for ``diffusers.models.embeddings.apply_rotary_emb``.

    Parameters
    ----------
    x : torch.Tensor
        (batch, heads, seq, head_dim) for ``sequence_dim=2``, (batch, seq, heads, head_dim) for
        ``sequence_dim=1``; any strides.
    freqs_cis : (cos, sin) or complex torch.Tensor
        ``use_real=True``: two (seq, R) float tables, R <= head_dim; with ``use_real_unbind_dim=-1`` (FLUX,
        HunyuanVideo, CogVideoX) they hold every angle twice in a row (``repeat_interleave``) and pairs are
        adjacent dims (2i, 2i + 1); with ``-2`` they hold ``cat(freqs, freqs)`` and pairs are (i, i + R/2).
        ``use_real=False``: a complex (seq, R/2) tensor of ``exp(i angle)``, adjacent pairs; x is then
        (batch, seq, heads, head_dim).
    use_real, use_real_unbind_dim, sequence_dim
        As in diffusers.

    Returns
    -------
    torch.Tensor
        A new tensor of x's shape and dtype, computed in float32 and rounded once (diffusers rounds once
        too).

    Examples
    --------
    >>> x = torch.randn(1, 2, 5, 8)
    >>> angle = torch.arange(5.0)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001])
    >>> cos, sin = angle.cos().repeat_interleave(2, -1), angle.sin().repeat_interleave(2, -1)
    >>> apply_rotary_emb(x, (cos, sin)).shape
    torch.Size([1, 2, 5, 8])
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x: expected a 4-D tensor, got {getattr(x, 'shape', type(x).__name__)}")
    if not use_real:
        if not (isinstance(freqs_cis, torch.Tensor) and freqs_cis.is_complex() and freqs_cis.dim() == 2):
            raise ValueError(
                "freqs_cis: with use_real=False expected a complex (seq, rotary_dim / 2) tensor, got "
                f"{_describe(freqs_cis)}"
            )
        cos, sin = freqs_cis.real, freqs_cis.imag  # strided views: the launcher packs them
        return _rotate(x, cos, sin, "bshd", interleaved=True, rotary_dim=2 * cos.shape[-1])
    if sequence_dim not in _LAYOUTS:
        raise ValueError(f"sequence_dim: expected 1 or 2, got {sequence_dim!r}")
    if use_real_unbind_dim not in (-1, -2):
        raise ValueError(f"use_real_unbind_dim: expected -1 or -2, got {use_real_unbind_dim!r}")
    if not isinstance(freqs_cis, (tuple, list)) or len(freqs_cis) != 2:
        raise ValueError(
            f"freqs_cis: with use_real=True expected a (cos, sin) pair, got {_describe(freqs_cis)}"
        )
    cos, sin = freqs_cis
    width = cos.shape[-1]
    if cos.dim() != 2 or sin.shape != cos.shape or width % 2 or width > x.shape[-1]:
        raise ValueError(
            "freqs_cis: expected two (seq, rotary_dim) tables of the same shape, rotary_dim even and at "
            f"most head_dim = {x.shape[-1]}, got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    layout = _LAYOUTS[sequence_dim]
    if use_real_unbind_dim == -2:  # cat(freqs, freqs): the first half is the table the kernel reads
        return _rotate(x, cos, sin, layout, interleaved=False, rotary_dim=width)
    cos, sin = _every_other_column(cos, sin)
    return _rotate(x, cos, sin, layout, interleaved=True, rotary_dim=width)


def _rotate(x, cos, sin, layout, *, interleaved, rotary_dim):
    cos, sin = cos.to(x.device), sin.to(x.device)
    out, _ = apply_rotary(x, None, cos, sin, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim)
    return out


def _every_other_column(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (seq, R/2) tables of repeat-interleaved (seq, R) ones, packed for the kernel (which reads
    consecutive columns).

    A diffusers model builds its tables once per forward and rotates q and k of every block with them, so
    the packed copy is kept on ``cos`` itself and made once per forward, not once per call (it lives as
    long as the tables do, and is rebuilt if either table is written in place). Under ``torch.compile``
    the copy is traced instead.
    """
    if torch.compiler.is_compiling():
        return cos[:, ::2].contiguous(), sin[:, ::2].contiguous()
    memo = cos.__dict__.get("_rope_triton_pairs")
    if memo is not None and memo[0] is sin and memo[1] == (cos._version, sin._version):
        return memo[2], memo[3]
    packed = cos[:, ::2].contiguous(), sin[:, ::2].contiguous()
    cos.__dict__["_rope_triton_pairs"] = (sin, (cos._version, sin._version), *packed)
    return packed


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ---- patching ----------------------------------------------------------------------------------------

_PATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (names, finalizer)


def patch(model: nn.Module) -> list[str]:
    """Make a diffusers model rotate with rope-triton; undo with :func:`unpatch`.

    Swaps ``apply_rotary_emb`` in ``diffusers.models.embeddings`` and in every module of the model's
    classes and attention processors that imported diffusers' function (``transformer_flux``, ...).

    Parameters
    ----------
    model : torch.nn.Module
        A diffusers model, e.g. ``FluxTransformer2DModel``, or any module containing one.

    Returns
    -------
    list of str
        The swapped functions. Patching a patched model again changes nothing and returns the same list.

    Raises
    ------
    TypeError
        ``model`` is not a module or holds no diffusers class that uses diffusers' ``apply_rotary_emb``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    with _swap.LOCK:
        done = _PATCHES.get(model)
        if done is not None:
            return list(done[0])
        modules = _modules_using_it(model)
        names = [_swap.acquire(m, _FUNCTION, apply_rotary_emb) for m in modules]
        release = weakref.finalize(model, _swap.release, list(names))
        release.atexit = False
        _PATCHES[model] = (names, release)
        return list(names)


def unpatch(model: nn.Module) -> list[str]:
    """Undo :func:`patch`; returns what it had changed (an empty list for a model that is not patched)."""
    with _swap.LOCK:
        done = _PATCHES.pop(model, None)
        if done is None:
            return []
        done[1]()
        return list(done[0])


def _modules_using_it(model: nn.Module) -> list[types.ModuleType]:
    embeddings = sys.modules.get(_EMBEDDINGS)
    shared = None if embeddings is None else _original(embeddings)
    found: dict[str, types.ModuleType] = {}
    if shared is not None:
        for m in model.modules():
            for cls in (type(m), type(getattr(m, "processor", None))):
                module = sys.modules.get(cls.__module__)
                if (
                    module is not None
                    and module.__name__.startswith("diffusers.")
                    and (_original(module) is shared)
                ):
                    found.setdefault(module.__name__, module)
    if not found:
        raise TypeError(
            f"{type(model).__name__}: no diffusers class found that rotates with {_EMBEDDINGS}.{_FUNCTION}"
        )
    # Some processors import the function inside their __call__: the embeddings module serves them.
    return [embeddings] + [m for name, m in sorted(found.items()) if name != _EMBEDDINGS]


def _original(module: types.ModuleType):
    """``module``'s apply_rotary_emb as diffusers defines it (also while it is swapped)."""
    fn = getattr(module, _FUNCTION, None)
    return _swap.original(module, _FUNCTION) if fn is apply_rotary_emb else fn
