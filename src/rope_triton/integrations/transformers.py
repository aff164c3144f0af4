"""Hugging Face transformers integration: drop-in ``apply_rotary_pos_emb`` functions, and :func:`patch`,
which makes a loaded model use them.

>>> from rope_triton.integrations.transformers import patch, unpatch
>>> patch(model)  # doctest: +SKIP
['transformers.models.llama.modeling_llama.apply_rotary_pos_emb']

transformers is never imported here: :func:`patch` works on the modeling modules that the model's own
classes come from.

Scope of a patch. The attention layers of a model family look up ``apply_rotary_pos_emb`` (the vision
towers of Qwen-VL ``apply_rotary_pos_emb_vision``, Llama 4's text attention ``apply_rotary_emb``) in their
modeling module (``transformers.models.llama.modeling_llama``, ...) on every call, so those module
attributes are what :func:`patch` swaps. While at least one model of a family is patched, **every** model of
that family in the process uses rope-triton (with the same results up to rounding); the last
:func:`unpatch` of the family (or the garbage collection of the last patched model) puts the original
function back. What ``fp32_tables=True`` changes (the rotary embedding modules) belongs to the patched
model alone.
"""

from __future__ import annotations

import re
import sys
import types
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..functional import apply_rotary, qk_norm_rotary
from . import _fused_norms, _swap

__all__ = [
    "SUPPORTED_FAMILIES",
    "apply_multimodal_rotary_pos_emb",
    "apply_rotary_emb_llama4",
    "apply_rotary_pos_emb",
    "apply_rotary_pos_emb_gptj",
    "apply_rotary_pos_emb_vision",
    "patch",
    "unpatch",
]

_FUNCTION = "apply_rotary_pos_emb"
_LAYOUTS = {1: "bhsd", 2: "bshd"}


# ---- drop-in functions -------------------------------------------------------------------------------


def apply_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    unsqueeze_dim: int = 1,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop-in for transformers' ``apply_rotary_pos_emb`` (Llama, Mistral, Qwen, Gemma, Phi-3, GPT-NeoX, ...).

    Parameters
    ----------
    q, k : torch.Tensor
        (batch, heads, seq, head_dim) for ``unsqueeze_dim=1``, (batch, seq, heads, head_dim) for
        ``unsqueeze_dim=2``; any strides (slices of a fused qkv projection are read in place); the number of
        heads may differ (GQA).
    cos, sin : torch.Tensor
        Hugging Face tables of shape (batch or 1, seq, R) (or (seq, R)), any float dtype, holding
        ``cat(freqs, freqs)``: only their first R/2 columns are read. R < head_dim rotates the first R dims
        and passes the others through (partial rotary, as in GPT-NeoX and Phi-3).
    position_ids : ignored
        Accepted for older callers, and ignored, as transformers does. An int in this place is taken as
        ``unsqueeze_dim`` (``apply_rotary_pos_emb(q, k, cos, sin, 2)`` in the current signature).
    unsqueeze_dim : {1, 2}

    Returns
    -------
    (q_embed, k_embed)
        New tensors of q's shape and dtype (k_embed is None when k is None). Unlike transformers, the math
        is float32 whatever the dtypes, rounded once: as accurate as the given tables allow.
    """
    if isinstance(position_ids, int) and not isinstance(position_ids, bool):
        unsqueeze_dim = position_ids
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q: expected a 4-D tensor, got {getattr(q, 'shape', type(q).__name__)}")
    axis = unsqueeze_dim + 4 if isinstance(unsqueeze_dim, int) and unsqueeze_dim < 0 else unsqueeze_dim
    if axis not in _LAYOUTS:
        raise ValueError(
            "unsqueeze_dim: expected 1 (batch, heads, seq, dim) or 2 (batch, seq, heads, dim), "
            f"got {unsqueeze_dim!r}"
        )
    _check_table_types(cos, sin)
    width = cos.shape[-1]
    if width % 2 or width > q.shape[-1]:
        raise ValueError(
            f"cos: expected an even width cat(freqs, freqs) of at most head_dim = {q.shape[-1]}, "
            f"got shape {tuple(cos.shape)}"
        )
    # rotary_dim = the tables' width: the kernel reads their first half (no slice views on the host).
    return _rotate(q, k, cos, sin, _LAYOUTS[axis], interleaved=False, rotary_dim=width,
                   norms=_fused_norms.take(q, k))


def apply_rotary_pos_emb_gptj(tensor: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Drop-in for ``transformers.models.gptj.modeling_gptj.apply_rotary_pos_emb`` (GPT-J, CodeGen).

    ``tensor`` is (batch, seq, heads, R) (or wider: dims past R pass through), ``sin`` and ``cos`` are
    GPT-J's half-width tables (batch or 1, seq, R/2); note the order (sin before cos). Pairs are adjacent
    dims (2i, 2i + 1) (``rotate_every_two``). Returns a new tensor, computed in float32.
    """
    out, _ = _rotate(tensor, None, cos, sin, "bshd", interleaved=True)
    return out


def apply_rotary_emb_llama4(
    xq: torch.Tensor, xk: torch.Tensor | None, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop-in for ``transformers.models.llama4.modeling_llama4.apply_rotary_emb`` (Llama 4 text attention).

    Parameters
    ----------
    xq, xk : torch.Tensor
        (batch, seq, heads, head_dim), any strides; the numbers of heads may differ (GQA). ``xk`` may be
        None (q alone).
    freqs_cis : torch.Tensor
        Complex (batch or 1, seq, head_dim / 2) tensor of ``attention_scaling * exp(i angle)``, as Llama 4's
        rotary embedding builds it (its rope scaling included): pairs are adjacent dims (2i, 2i + 1). Its
        real and imaginary parts are the cos and sin tables, copied once into the layout the kernel reads
        and kept with ``freqs_cis`` for the other layers of the forward.

    Returns
    -------
    (xq_out, xk_out)
        New tensors of xq's and xk's shapes and dtypes, computed in float32 and rounded once (transformers
        rounds once too). In a patched Llama 4 attention layer whose ``qk_norm`` follows the rotation,
        also normalized in the same call (``qk_norm`` then passes them on as they are).
    """
    for name, t in (("xq", xq), ("xk", xk)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 4):
            raise ValueError(
                f"{name}: expected a 4-D (batch, seq, heads, head_dim) tensor, "
                f"got {getattr(t, 'shape', type(t).__name__)}"
            )
    batch, seqlen, _, head_dim = xq.shape
    if not (
        isinstance(freqs_cis, torch.Tensor) and freqs_cis.is_complex() and freqs_cis.dim() == 3
        and freqs_cis.shape[0] in (1, batch) and freqs_cis.shape[1:] == (seqlen, head_dim // 2)
        and head_dim % 2 == 0
    ):  # fmt: skip
        got = (
            f"{freqs_cis.dtype} of shape {tuple(freqs_cis.shape)}"
            if isinstance(freqs_cis, torch.Tensor)
            else type(freqs_cis).__name__
        )
        raise ValueError(
            f"freqs_cis: expected a complex tensor of shape (batch={batch} or 1, seq={seqlen}, "
            f"head_dim / 2 = {head_dim // 2}), got {got}"
        )
    cos, sin = _cos_sin_of(freqs_cis.to(xq.device))
    norm = _fused_norms.norm_after(xk)
    out = _rotate(xq, xk, cos, sin, "bshd", interleaved=True, rotary_dim=head_dim, norm_after=norm)
    if norm is not None:
        _fused_norms.normalized(norm, out)
    return out


def _cos_sin_of(freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The real and imaginary parts of ``freqs_cis`` as two tables of consecutive columns (the kernel
    reads those; the parts are views of every other float).

    A Llama 4 model builds ``freqs_cis`` once per forward and rotates every layer with it, so the copy is
    kept on the tensor itself, made once per forward and rebuilt if it is written in place. Under
    ``torch.compile`` the copy is traced instead.
    """
    if torch.compiler.is_compiling():
        parts = torch.view_as_real(freqs_cis).movedim(-1, 0).contiguous()
        return parts[0], parts[1]
    memo = freqs_cis.__dict__.get("_rope_triton_cos_sin")
    if memo is not None and memo[0] == freqs_cis._version:
        return memo[1], memo[2]
    parts = torch.view_as_real(freqs_cis).movedim(-1, 0).contiguous()
    freqs_cis.__dict__["_rope_triton_cos_sin"] = (freqs_cis._version, parts[0], parts[1])
    return parts[0], parts[1]


def apply_rotary_pos_emb_vision(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``apply_rotary_pos_emb_vision`` of the Qwen2-VL, Qwen2.5-VL and Qwen3-VL vision towers.

    Parameters
    ----------
    q, k : torch.Tensor
        (tokens, heads, head_dim), any strides (the unbound views of the tower's fused qkv are read in place).
    cos, sin : torch.Tensor
        (tokens, R) tables holding ``cat(freqs, freqs)`` of the 2-D (h, w) angles, as the tower's rotary
        module builds them; R < head_dim passes the last dims through.

    Returns
    -------
    (q_embed, k_embed)
        New tensors of q's and k's shape and dtype, computed in float32 and rounded once, as transformers
        does.
    """
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(
                f"{name}: expected a 3-D (tokens, heads, head_dim) tensor, "
                f"got {getattr(t, 'shape', type(t).__name__)}"
            )
    _check_table_types(cos, sin)
    width = cos.shape[-1]
    if width % 2 or width > q.shape[-1]:
        raise ValueError(
            f"cos: expected an even width cat(freqs, freqs) of at most head_dim = {q.shape[-1]}, "
            f"got shape {tuple(cos.shape)}"
        )
    q_embed, k_embed = _rotate(q[None], k[None], cos, sin, "bshd", interleaved=False, rotary_dim=width)
    return q_embed[0], k_embed[0]


def apply_multimodal_rotary_pos_emb(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mrope_section: list[int],
    unsqueeze_dim: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for Qwen2-VL / Qwen2.5-VL's ``apply_multimodal_rotary_pos_emb`` (transformers before 4.57).

    ``cos`` and ``sin`` are (3, batch, seq, R) per-axis tables of ``cat(freqs, freqs)``; pair ``i`` of the
    j-th block of ``mrope_section`` turns by axis ``j % 3``. The tables are composed into one (batch, seq,
    R/2) table (a gather; transformers concatenates the same blocks) and the rotation is the kernel's.
    """
    if cos.dim() != 4 or sin.shape != cos.shape:
        raise ValueError(
            "cos, sin: expected (3, batch, seq, rotary_dim) tables, "
            f"got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    half = cos.shape[-1] // 2
    if sum(mrope_section) != half:
        raise ValueError(f"mrope_section: expected sections summing to {half}, got {list(mrope_section)}")
    if unsqueeze_dim not in (1, 2):  # it says where the heads dim is in q and k
        raise ValueError(f"unsqueeze_dim: expected 1 or 2, got {unsqueeze_dim!r}")
    axis = torch.repeat_interleave(
        torch.arange(len(mrope_section), device=cos.device) % cos.shape[0],
        torch.tensor(list(mrope_section), device=cos.device),
    )
    index = axis.expand(*cos.shape[1:-1], half)[None]
    cos, sin = (t[..., :half].gather(0, index)[0] for t in (cos, sin))
    return _rotate(q, k, cos, sin, _LAYOUTS[unsqueeze_dim], interleaved=False, rotary_dim=2 * half)


def _check_table_types(cos, sin) -> None:
    # (before their widths are read: a missing or 0-D table is named, not an IndexError)
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name}: expected shape (batch or 1, seq, rotary_dim) or (seq, rotary_dim), "
                             f"got {tuple(t.shape)}")


def _rotate(
    q, k, cos, sin, layout: str, *, interleaved: bool, rotary_dim: int | None = None, norms=None,
    norm_after=None,
):
    """Rotate by per-token tables ``cos``/``sin`` of shape (batch or 1, seq, >= R/2) or (seq, >= R/2);
    with ``norms`` (the layer's deferred q_norm and k_norm modules) normalize first, in the same call;
    with ``norm_after`` (the layer's weightless norm that follows the rotation) normalize after it.

    The tables are handed to the kernel as they are, without a copy: one sequence's rows when the batch
    shares them, else as per-sequence tables (batch, seq, >= R/2), each batch row reading its own. A
    decode step or a training step makes one view at most (each of them costs a microsecond of host time).
    """
    batch, seqlen = q.shape[0], q.shape[2 if layout == "bhsd" else 1]
    same = sin.shape == cos.shape  # (the common case: one shape check)
    for name, t in (("cos", cos),) if same else (("cos", cos), ("sin", sin)):
        if not (t.dim() == 2 and t.shape[0] == seqlen) and not (
            t.dim() == 3 and t.shape[1] == seqlen and t.shape[0] in (1, batch)
        ):
            raise ValueError(
                f"{name}: expected shape (batch={batch} or 1, seq={seqlen}, rotary_dim), got {tuple(t.shape)}"
            )
    if not same and cos.shape[-1] != sin.shape[-1]:
        raise ValueError(f"sin: expected the width of cos ({cos.shape[-1]}), got shape {tuple(sin.shape)}")
    per_batch = batch > 1 and (
        cos.dim() == 3 and cos.shape[0] > 1 and cos.stride(0) != 0
        or sin.dim() == 3 and sin.shape[0] > 1 and sin.stride(0) != 0
    )
    if not per_batch:
        # (an empty batch's (0, S, R) tables have no row to take: any (S, R) table will do, none is read)
        if cos.dim() == 3:
            cos = cos[0] if cos.shape[0] else cos.new_zeros(cos.shape[1:])
        if sin.dim() == 3:
            sin = sin[0] if sin.shape[0] else sin.new_zeros(sin.shape[1:])
    elif not same:  # one of them shared: views of batch rows (stride 0)
        cos, sin = ((t if t.dim() == 3 else t[None]).expand(batch, -1, -1) for t in (cos, sin))
    if norm_after is not None:
        eps, _ = norm_after._rope_triton_norm
        return qk_norm_rotary(
            q, k, None, None, cos, sin, eps=eps, norm="l2", norm_after_rope=True, layout=layout,
            interleaved=interleaved, rotary_dim=rotary_dim,
        )
    if norms is None:
        return apply_rotary(q, k, cos, sin, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim)
    q_norm, k_norm = norms
    eps, offset = q_norm._rope_triton_norm
    head_dim = q.shape[-1]
    return qk_norm_rotary(
        q, k, q_norm.weight, k_norm.weight, cos, sin, eps=eps, weight_offset=offset,
        norm="rms" if q_norm.weight.numel() == head_dim else "rms_heads", layout=layout,
        interleaved=interleaved, rotary_dim=rotary_dim,
    )


# ---- patching ----------------------------------------------------------------------------------------

_STANDARD = (
    "gemma", "gemma2", "gemma3", "gpt_neox", "granite", "granitemoe", "llama", "mistral", "mixtral", "olmo",
    "olmo2", "olmoe", "phi", "phi3", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "stablelm", "starcoder2",
)  # fmt: skip
# Vision-language families: the text attention rotates by per-token tables that the model's rotary module
# composed from the (3, B, S) positions once per forward (apply_multimodal_rotary_pos_emb in transformers
# before 4.57 composes them in every layer); the vision tower rotates by 2-D tables with
# apply_rotary_pos_emb_vision.
_VISION_LANGUAGE = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
_DROP_INS: dict[str, dict[str, Callable]] = {
    **{f: {_FUNCTION: apply_rotary_pos_emb} for f in _STANDARD},
    **{
        f: {
            _FUNCTION: apply_rotary_pos_emb,
            "apply_multimodal_rotary_pos_emb": apply_multimodal_rotary_pos_emb,
            "apply_rotary_pos_emb_vision": apply_rotary_pos_emb_vision,
        }
        for f in _VISION_LANGUAGE
    },
    "gptj": {_FUNCTION: apply_rotary_pos_emb_gptj},
    # Llama 4's text attention; its vision tower rotates with vision_apply_rotary_emb, left to it.
    "llama4": {"apply_rotary_emb": apply_rotary_emb_llama4},
}
# The drop-ins that fuse a layer's q/k norms into the rotation, and whether that layer normalizes after
# the rotation (Llama 4) rather than before it.
_FUSING: dict[Callable, bool] = {apply_rotary_pos_emb: False, apply_rotary_emb_llama4: True}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_DROP_INS))
"""transformers model types whose rotary functions :func:`patch` replaces."""

_MODELING = re.compile(r"transformers\.models\.(\w+)\.modeling_\1")


@dataclass
class _Patch:
    names: list[str]
    fp32_tables: bool
    fuse_qk_norm: bool = True
    rotary: list[tuple[nn.Module, dict[str, torch.Tensor]]] = field(default_factory=list)
    fused: list[dict[str, nn.Module]] = field(default_factory=list)
    release: weakref.finalize | None = None


_PATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> _Patch


def patch(model: nn.Module, *, fp32_tables: bool = False, fuse_qk_norm: bool = True) -> list[str]:
    """Make a transformers model compute its rotary embedding with rope-triton; undo with :func:`unpatch`.

    Parameters
    ----------
    model : torch.nn.Module
        A model (or any module containing one) of a family in :data:`SUPPORTED_FAMILIES`, e.g. a
        ``LlamaForCausalLM``; wrappers (PEFT, ``torch.compile``, DDP) are fine.
    fp32_tables : bool
        Keep cos/sin in float32 instead of letting the model's rotary embedding cast them to the
        activations' dtype (bfloat16 tables carry a relative error of 2**-9): this model then rotates with
        float32 tables and float32 math, more accurately than the unpatched model. Frequency buffers that a
        ``model.to(torch.bfloat16)`` rounded are rebuilt in float32 from the config (and put back by
        :func:`unpatch`).
    fuse_qk_norm : bool
        Attention layers that RMS-normalize q and k right before the rotation (Qwen3, Qwen3-MoE, Qwen3-VL,
        Gemma 3, OLMo 2, OLMoE) or right after it (Llama 4's weightless ``qk_norm``, on the layers that
        rotate) normalize and rotate them in one :func:`rope_triton.qk_norm_rotary` call: q and k are read
        and written once instead of three times, forward and backward, and the norm weights get their
        gradients from it. The layers' own code runs unchanged (see
        :mod:`rope_triton.integrations._fused_norms`); under ``torch.compile`` they run unfused.

    Returns
    -------
    list of str
        What changed: the swapped functions
        (``transformers.models.llama.modeling_llama.apply_rotary_pos_emb``) and, with ``fp32_tables``,
        the rotary embedding modules (``model.rotary_emb.forward``), and the attention layers whose norms
        are fused (``model.layers.0.self_attn.forward``, ``...q_norm.forward``, ``...k_norm.forward``;
        Llama 4: ``...qk_norm.forward``).
        Patching a patched model again with the same options changes nothing and returns the same list.

    Raises
    ------
    TypeError
        No supported family in ``model``.
    ValueError
        Patched already with other options, or ``fp32_tables`` asked of a model whose attention computes its
        own tables (GPT-J in transformers 5.17 and older).

    Notes
    -----
    The swapped function is a module attribute: while any model of a family is patched, all models of that
    family in the process use it (see the module docstring). Autograd, ``generate()`` with a KV cache and
    ``torch.compile`` work as with the original function.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    with _swap.LOCK:
        done = _PATCHES.get(model)
        if done is not None:
            if (done.fp32_tables, done.fuse_qk_norm) != (fp32_tables, fuse_qk_norm):
                raise ValueError(
                    f"{type(model).__name__} is patched already with fp32_tables={done.fp32_tables}, "
                    f"fuse_qk_norm={done.fuse_qk_norm}; unpatch it first"
                )
            return list(done.names)
        families = _families(model)
        rotary = [
            (n, m)
            for n, m in model.named_modules()
            if _family_of(m) and type(m).__name__.endswith("RotaryEmbedding")
        ]
        if fp32_tables:
            lacking = sorted(set(families) - {_family_of(m) for _, m in rotary})
            if lacking:
                raise ValueError(
                    f"fp32_tables: {type(model).__name__} ({', '.join(lacking)}) computes its cos/sin inside "
                    "the attention in this transformers version, with no rotary embedding module to keep in "
                    "float32"
                )
        record = _Patch(names=[], fp32_tables=fp32_tables, fuse_qk_norm=fuse_qk_norm)
        for family, module in families.items():
            for name, replacement in _DROP_INS[family].items():
                if callable(getattr(module, name, None)):
                    record.names.append(_swap.acquire(module, name, replacement))
        record.release = weakref.finalize(model, _swap.release, list(record.names))
        record.release.atexit = False
        if fp32_tables:
            for name, m in rotary:
                record.rotary.append((m, _fp32_buffers(m)))
                m.forward = types.MethodType(_fp32_rotary_forward, m)
                record.names.append(f"{name}.forward" if name else "forward")
        if fuse_qk_norm:
            for name, m in model.named_modules():
                after = _norm_after_rope(m)
                if after is None:
                    continue
                fused = _fused_norms.install(m, after_rope=after)
                if fused is not None:
                    record.fused.append(fused)
                    prefix = f"{name}." if name else ""
                    record.names += [f"{prefix}{sub}{'.' if sub else ''}forward" for sub in fused]
        _PATCHES[model] = record
        return list(record.names)


def unpatch(model: nn.Module) -> list[str]:
    """Undo :func:`patch`; returns what it had changed (an empty list for a model that is not patched).

    The family's original function comes back when no other patched model of that family is left.
    """
    with _swap.LOCK:
        record = _PATCHES.pop(model, None)
        if record is None:
            return []
        for m, buffers in record.rotary:
            m.__dict__.pop("forward", None)
            for name, old in buffers.items():
                setattr(m, name, old)
        for modules in record.fused:
            _fused_norms.uninstall(modules)
        record.release()
        return list(record.names)


def _norm_after_rope(module: nn.Module) -> bool | None:
    """Whether a layer of ``module``'s class would normalize q and k after the rotation (True) or before
    it (False), as its family's fusing drop-in is swapped in now; None: its rotation fuses no norm."""
    family = _family_of(module)
    if family is None:
        return None
    modeling = sys.modules.get(type(module).__module__)
    for name, replacement in _DROP_INS[family].items():
        if replacement in _FUSING and getattr(modeling, name, None) is replacement:
            return _FUSING[replacement]
    return None


def _family_of(module: nn.Module) -> str | None:
    match = _MODELING.fullmatch(type(module).__module__)
    return match[1] if match and match[1] in _DROP_INS else None


def _families(model: nn.Module) -> dict[str, types.ModuleType]:
    """The supported families whose classes ``model`` is made of, with their modeling modules."""
    found: dict[str, types.ModuleType] = {}
    for m in model.modules():
        family = _family_of(m)
        if family and family not in found:
            module = sys.modules[type(m).__module__]
            if not any(callable(getattr(module, name, None)) for name in _DROP_INS[family]):
                raise TypeError(
                    f"{type(model).__name__}: {module.__name__} has none of "
                    f"{', '.join(_DROP_INS[family])} to replace"
                )
            found[family] = module
    if not found:
        raise TypeError(
            f"{type(model).__name__}: no supported transformers model family found. "
            f"Supported: {', '.join(SUPPORTED_FAMILIES)}"
        )
    return found


def _fp32_rotary_forward(self: nn.Module, x: torch.Tensor, *args, **kwargs):
    # transformers' rotary embeddings read x only for its device and dtype, and cast cos/sin to that
    # dtype: an empty float32 stand-in keeps them in float32.
    return type(self).forward(self, x.new_empty(0, dtype=torch.float32), *args, **kwargs)


def _fp32_buffers(m: nn.Module) -> dict[str, torch.Tensor]:
    """Rebuild frequency buffers that were cast below float32 (``model.to(torch.bfloat16)``) from the
    config, in float32. Returns the replaced buffers."""
    stale = {
        n: b for n, b in m.named_buffers(recurse=False) if b.is_floating_point() and b.element_size() < 4
    }
    if not stale:
        return {}
    try:
        fresh = dict(type(m)(config=m.config).named_buffers(recurse=False))
    except Exception as e:  # noqa: BLE001 (an older rotary class, or one without a config attribute)
        warnings.warn(
            f"fp32_tables: could not rebuild the {', '.join(stale)} buffers of {type(m).__name__} in float32 "
            f"({type(e).__name__}: {e}); they keep their {next(iter(stale.values())).dtype} frequencies",
            stacklevel=3,
        )
        return {}
    replaced = {}
    for n, old in stale.items():
        if n in fresh and fresh[n].shape == old.shape and fresh[n].dtype == torch.float32:
            setattr(m, n, fresh[n].to(old.device))
            replaced[n] = old
    return replaced
