"""Multi-axis RoPE: every rotary pair turns by the position along one of several axes.

Vision-language and diffusion models give a token several coordinates (time, height, width) and rotate
pair ``i`` by ``pos[axis[i]] * inv_freq[i]``. One description covers them all: a per-pair axis id and a
per-pair inverse frequency (:class:`MultiAxis`); the presets below only differ in how they fill the two.
Positions carry a leading axis dimension, ``(n_axes, B, S)`` or ``(n_axes, T)`` for a packed batch.

Notation: R rotary_dim, R/2 the number of rotated pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._args import _as_real, _positive_int
from .fixed_point import FREQ_AXIS_ROW
from .hf_config import _config_get, parse_hf_config
from .rope_types import inv_freq_and_scale
from .tables import freq_table

_F64 = torch.float64
_HOST = torch.device("cpu")

# What the transformers modules assume when a config names no mrope_section.
_QWEN2_VL_SECTIONS = (16, 24, 24)
_QWEN3_VL_SECTIONS = (24, 20, 20)


@dataclass(frozen=True, eq=False)
class MultiAxis:
    """Per-pair axis ids and inverse frequencies of a multi-axis rotary embedding.

    Attributes
    ----------
    axis : torch.Tensor
        int64, CPU, shape ``(R/2,)``: the position axis pair ``i`` turns by, in ``[0, n_axes)``.
    inv_freq : torch.Tensor
        float64, CPU, shape ``(R/2,)``: the inverse frequency of pair ``i``.
    n_axes : int
        Number of position axes (the leading dim of the positions).
    interleaved : bool
        Pair layout of the model: ``False`` pairs ``(i, i + R/2)`` (NeoX, rotate-half), ``True`` pairs
        ``(2i, 2i + 1)`` (GPT-J).
    attention_factor : float
        Factor on cos and sin (1.0 unless the rope scaling sets one).
    integer_positions : bool
        Whether positions must be integers (token indices); ``angles`` rejects float positions then.

    Examples
    --------
    >>> ma = MultiAxis(torch.tensor([0, 1]), torch.tensor([1.0, 0.5], dtype=torch.float64), n_axes=2)
    >>> ma.rotary_dim
    4
    """

    axis: torch.Tensor
    inv_freq: torch.Tensor
    n_axes: int
    interleaved: bool = False
    attention_factor: float = 1.0
    integer_positions: bool = True

    def __post_init__(self) -> None:
        # The freq tables built so far, per device (a plain attribute: torch.compile reads it as a dict).
        object.__setattr__(self, "_tables", {})
        # Validate once here so that every consumer (oracle, later the kernel) can trust the fields.
        axis, inv_freq = self.axis, self.inv_freq
        if not torch.is_tensor(axis) or axis.dim() != 1 or axis.dtype != torch.int64:
            raise ValueError(f"axis must be a 1-D int64 tensor, got {_describe(axis)}")
        if not torch.is_tensor(inv_freq) or inv_freq.dim() != 1 or inv_freq.dtype != _F64:
            raise ValueError(f"inv_freq must be a 1-D float64 tensor, got {_describe(inv_freq)}")
        if axis.numel() != inv_freq.numel() or axis.numel() == 0:
            raise ValueError(
                f"axis and inv_freq must have the same non-zero length (one entry per pair), "
                f"got {axis.numel()} and {inv_freq.numel()}"
            )
        n_axes = _positive_int(self.n_axes, "n_axes")
        if int(axis.min()) < 0 or int(axis.max()) >= n_axes:
            raise ValueError(
                f"axis ids must lie in [0, n_axes={n_axes}), got values in "
                f"[{int(axis.min())}, {int(axis.max())}]"
            )
        if not torch.isfinite(inv_freq).all():
            raise ValueError("inv_freq must be finite")
        object.__setattr__(self, "n_axes", n_axes)
        object.__setattr__(self, "attention_factor", _as_real(self.attention_factor, "attention_factor"))
        object.__setattr__(self, "interleaved", bool(self.interleaved))
        object.__setattr__(self, "integer_positions", bool(self.integer_positions))

    @property
    def rotary_dim(self) -> int:
        """Number of rotated dims, ``2 * len(axis)``."""
        return 2 * self.axis.numel()

    def freq_table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """What the kernel computes every pair's angle from: ``apply_rotary(q, k, freqs=ma.freq_table(dev),
        positions=positions)`` with positions of shape ``(n_axes, B, S)`` (or ``(n_axes, S)`` shared by the
        batch, ``(n_axes, T)`` packed).

        The rows of :func:`rope_triton.angles.freq_table` (exact fixed-point turns, attention factor), plus
        a row of axis ids: int64, shape ``(5, R/2)``. Built once per device and kept by this object.

        Examples
        --------
        >>> from rope_triton.angles import mrope
        >>> mrope(128, [16, 24, 24]).freq_table().shape
        torch.Size([5, 64])
        """
        device = torch.device("cpu" if device is None else device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        cache = self._tables
        if device not in cache:
            if not self.integer_positions and float(self.inv_freq.abs().max()) >= 2 * math.pi:
                # The kernel takes a fractional position's turns from the first row, frac(inv_freq / 2 pi).
                raise ValueError(
                    "inv_freq: fractional positions need every inverse frequency below 2 pi, got "
                    f"{float(self.inv_freq.abs().max())}"
                )
            table = freq_table(self.inv_freq, attention_factor=self.attention_factor, device=_HOST)
            table = torch.cat((table, self.axis[None]))
            assert table.shape[0] == FREQ_AXIS_ROW + 1
            cache[device] = table.to(device)
        return cache[device]


def _describe(x) -> str:
    if torch.is_tensor(x):
        return f"a {x.dim()}-D {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x)


def _sections(sections, name: str, pairs: int) -> list[int]:
    if isinstance(sections, (str, bytes)) or not hasattr(sections, "__iter__"):
        raise ValueError(f"{name} must be a list of positive integers, got {sections!r}")
    out = [_positive_int(s, name) for s in sections]
    if not out:
        raise ValueError(f"{name} must not be empty")
    if sum(out) != pairs:
        raise ValueError(f"{name} must sum to rotary_dim/2 = {pairs}, got {out} (sum {sum(out)})")
    return out


def mrope(
    head_dim: int,
    sections,
    base: float = 10000.0,
    scaling: dict | None = None,
    interleaved_sections: bool = False,
    *,
    rotary_dim: int | None = None,
    max_position_embeddings: int | None = None,
) -> MultiAxis:
    """M-RoPE of the Qwen2-VL / Qwen2.5-VL (block sections) and Qwen3-VL (interleaved) text models.

    Parameters
    ----------
    head_dim : int
        Size of one attention head.
    sections : list of int
        ``mrope_section``: pairs per axis (t, h, w), summing to ``rotary_dim / 2``.
    base : float, default 10000.0
        ``rope_theta``.
    scaling : dict, optional
        ``rope_parameters`` / ``rope_scaling`` as for :func:`inv_freq_and_scale`; ``mrope_section`` and
        ``mrope_interleaved`` keys are ignored here and the legacy ``"mrope"`` type means default.
    interleaved_sections : bool, default False
        ``False``: consecutive blocks of ``sections[a]`` pairs use axis ``a`` (Qwen2-VL, Qwen2.5-VL).
        ``True`` (Qwen3-VL): pair ``i`` uses axis ``a = i % n`` (``n = len(sections)``) while
        ``i < n * sections[a]`` for ``a > 0``; every other pair uses axis 0. With [24, 20, 20] pairs
        0..59 cycle t, h, w and pairs 60..63 are t.
    rotary_dim, max_position_embeddings : int, optional
        Passed to :func:`inv_freq_and_scale`.

    Returns
    -------
    MultiAxis
        ``n_axes = len(sections)``, rotate-half pairs (``interleaved=False``), integer positions.

    Examples
    --------
    >>> ma = mrope(128, [16, 24, 24], base=1000000.0)
    >>> ma.axis[:17].tolist()[-2:], ma.n_axes
    ([0, 1], 3)
    >>> mrope(128, [24, 20, 20], interleaved_sections=True).axis[:6].tolist()
    [0, 1, 2, 0, 1, 2]
    """
    params = dict(scaling) if scaling else {}
    for key in ("mrope_section", "mrope_interleaved"):
        params.pop(key, None)
    if params.get("rope_type", params.get("type")) == "mrope":
        params.pop("type", None)
        params["rope_type"] = "default"
    inv_freq, factor = inv_freq_and_scale(
        head_dim,
        base=base,
        rotary_dim=rotary_dim,
        scaling=params or None,
        max_position_embeddings=max_position_embeddings,
    )
    pairs = inv_freq.numel()
    name = "mrope_section" if scaling is not None and "mrope_section" in scaling else "sections"
    secs = _sections(sections, name, pairs)
    n = len(secs)
    if interleaved_sections:
        i = torch.arange(pairs, dtype=torch.int64)
        cyc = i % n
        limit = torch.tensor(secs, dtype=torch.int64)[cyc] * n
        axis = torch.where((cyc > 0) & (i < limit), cyc, torch.zeros_like(cyc))
    else:
        axis = torch.repeat_interleave(torch.arange(n, dtype=torch.int64), torch.tensor(secs))
    return MultiAxis(axis, inv_freq, n, interleaved=False, attention_factor=factor)


def vision_2d(head_dim: int, base: float = 10000.0, order: str = "hw") -> MultiAxis:
    """2-D axial RoPE of vision towers; positions are ``(2, ...)`` = (h, w).

    Parameters
    ----------
    head_dim : int
        Size of one attention head (divisible by 4); the whole head is rotated.
    base : float, default 10000.0
        ``rope_theta`` of the vision config.
    order : {"hw", "pixtral"}
        ``"hw"`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL vision): the first ``head_dim/4`` pairs turn by h, the
        next ``head_dim/4`` by w, both with ``base ** (-2j / (head_dim/2))``, j = 0..head_dim/4-1.
        ``"pixtral"``: the full-head frequencies ``f_k = base ** (-2k / head_dim)``; the first
        ``head_dim/4`` pairs turn by h with the even ``f_{2j}``, the next by w with the odd ``f_{2j+1}``.

    Returns
    -------
    MultiAxis
        ``n_axes = 2``, rotate-half pairs (as both models apply it), integer positions.

    Examples
    --------
    >>> ma = vision_2d(8)
    >>> ma.axis.tolist(), ma.inv_freq.tolist()
    ([0, 0, 1, 1], [1.0, 0.01, 1.0, 0.01])
    """
    head_dim = _positive_int(head_dim, "head_dim")
    if head_dim % 4:
        raise ValueError(f"head_dim must be divisible by 4 for 2-D RoPE, got {head_dim}")
    base = _as_real(base, "base")
    if base <= 0:
        raise ValueError(f"base must be positive, got {base}")
    quarter = head_dim // 4
    if order == "hw":
        spatial = head_dim // 2
        f = base ** (-torch.arange(0, spatial, 2, dtype=_F64) / spatial)
        inv_freq = torch.cat((f, f))
    elif order == "pixtral":
        f = base ** (-torch.arange(0, head_dim, 2, dtype=_F64) / head_dim)
        inv_freq = torch.cat((f[0::2], f[1::2]))
    else:
        raise ValueError(f"order must be 'hw' or 'pixtral', got {order!r}")
    axis = torch.arange(2, dtype=torch.int64).repeat_interleave(quarter)
    return MultiAxis(axis, inv_freq.contiguous(), 2, interleaved=False)


def nd_rope(
    axes_dim, theta: float = 10000.0, interleaved: bool = True, *, integer_positions: bool = False
) -> MultiAxis:
    """N-D RoPE of diffusion transformers: axis ``a`` owns a block of ``axes_dim[a] / 2`` pairs.

    Within axis ``a``'s block, pair ``j`` has ``inv_freq = theta ** (-2j / axes_dim[a])``; blocks follow
    the axis order. Positions are ``(n_axes, ...)`` (a transposed FLUX ``ids`` of shape (L, 3), say).

    Parameters
    ----------
    axes_dim : list of int
        Rotated dims per axis, each even; they sum to ``rotary_dim``.
    theta : float, default 10000.0
        Base of every axis.
    interleaved : bool, default True
        Adjacent pairs ``(2i, 2i + 1)`` as the diffusion models apply them; ``False`` for rotate-half.
    integer_positions : bool, default False
        Diffusion ids are float tensors in those models; set True to require integers.

    Returns
    -------
    MultiAxis

    Examples
    --------
    >>> ma = nd_rope([4, 2])
    >>> ma.axis.tolist(), ma.inv_freq.tolist()
    ([0, 0, 1], [1.0, 0.01, 1.0])
    """
    if isinstance(axes_dim, (str, bytes)) or not hasattr(axes_dim, "__iter__"):
        raise ValueError(f"axes_dim must be a list of positive even integers, got {axes_dim!r}")
    dims = [_positive_int(d, "axes_dim") for d in axes_dim]
    if not dims or any(d % 2 for d in dims):
        raise ValueError(f"axes_dim must be a non-empty list of positive even integers, got {list(axes_dim)}")
    theta = _as_real(theta, "theta")
    if theta <= 0:
        raise ValueError(f"theta must be positive, got {theta}")
    inv_freq = torch.cat([theta ** (-torch.arange(0, d, 2, dtype=_F64) / d) for d in dims])
    axis = torch.repeat_interleave(
        torch.arange(len(dims), dtype=torch.int64), torch.tensor([d // 2 for d in dims])
    )
    return MultiAxis(
        axis, inv_freq, len(dims), interleaved=interleaved, integer_positions=integer_positions
    )


def flux() -> MultiAxis:
    """FLUX.1: ``axes_dim`` (16, 56, 56), theta 10000, adjacent pairs; head_dim 128.

    >>> flux().rotary_dim
    128
    """
    return nd_rope((16, 56, 56), 10000.0)


def hunyuan_video() -> MultiAxis:
    """HunyuanVideo: ``rope_axes_dim`` (16, 56, 56) for (t, h, w), theta 256, adjacent pairs; head_dim 128.

    >>> hunyuan_video().inv_freq[1].item() == 256.0 ** (-2 / 16)
    True
    """
    return nd_rope((16, 56, 56), 256.0)


def wan(head_dim: int = 128, theta: float = 10000.0) -> MultiAxis:
    """Wan 2.x: (t, h, w) dims ``head_dim - 4 * (head_dim // 6)``, ``2 * (head_dim // 6)`` twice.

    >>> wan(128).axis.bincount().tolist()
    [22, 21, 21]
    """
    head_dim = _positive_int(head_dim, "head_dim")
    hw = 2 * (head_dim // 6)
    return nd_rope((head_dim - 2 * hw, hw, hw), theta)


def from_hf_config(config) -> MultiAxis:
    """M-RoPE of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL text config.

    ``mrope_section`` comes from ``rope_parameters`` (or ``rope_scaling``), defaulting as transformers
    does ([16, 24, 24], or [24, 20, 20] for Qwen3-VL). Sections are interleaved for Qwen3-VL
    (``model_type`` starting with ``qwen3_vl``; transformers' module interleaves whatever the config says)
    or when ``mrope_interleaved`` is set.

    Parameters
    ----------
    config : PretrainedConfig or dict
        A text config (``config.text_config`` of the composite model, or the model config itself).

    Returns
    -------
    MultiAxis

    Examples
    --------
    >>> from transformers import Qwen2VLTextConfig
    >>> cfg = Qwen2VLTextConfig(hidden_size=256, num_attention_heads=4,
    ...                         rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12]})
    >>> from_hf_config(cfg).axis.bincount().tolist()
    [8, 12, 12]
    """
    text = _config_get(config, "text_config")
    if text is not None:
        config = text
    params = _config_get(config, "rope_parameters") or _config_get(config, "rope_scaling") or {}
    model_type = str(_config_get(config, "model_type") or "")
    qwen3 = model_type.startswith("qwen3_vl")
    sections = params.get("mrope_section")
    if sections is None:
        sections = _QWEN3_VL_SECTIONS if qwen3 else _QWEN2_VL_SECTIONS
    interleaved = qwen3 or bool(params.get("mrope_interleaved", False))
    kw = parse_hf_config(config)
    scaling = kw["scaling"]
    if scaling.get("rope_type") == "mrope":
        scaling["rope_type"] = "default"
    scaling["mrope_section"] = list(sections)
    return mrope(
        kw["head_dim"],
        sections,
        base=kw["base"],
        scaling=scaling,
        interleaved_sections=interleaved,
        rotary_dim=kw.get("rotary_dim"),
        max_position_embeddings=kw["max_position_embeddings"],
    )


def angles(ma: MultiAxis, positions: torch.Tensor) -> torch.Tensor:
    """float64 angles ``positions[axis[i]] * inv_freq[i]`` of every pair.

    Parameters
    ----------
    ma : MultiAxis
    positions : torch.Tensor
        Shape ``(n_axes, ...)``, e.g. ``(n_axes, B, S)`` or ``(n_axes, T)``; integer dtype when
        ``ma.integer_positions``.

    Returns
    -------
    torch.Tensor
        float64 of shape ``(..., R/2)`` on the positions' device. The attention factor is not in it (it
        scales cos and sin).

    Raises
    ------
    ValueError
        ``positions`` lacks the axis dimension, has the wrong number of axes, or is float where integer
        positions are required.

    Examples
    --------
    >>> ma = nd_rope([2, 2])
    >>> angles(ma, torch.tensor([[3.0], [5.0]])).tolist()
    [[3.0, 5.0]]
    """
    if not isinstance(ma, MultiAxis):
        raise TypeError(f"ma must be a MultiAxis, got {type(ma).__name__}")
    if not torch.is_tensor(positions):
        raise ValueError(f"positions must be a tensor of shape (n_axes={ma.n_axes}, ...), got {positions!r}")
    if positions.dim() < 2:
        raise ValueError(
            f"positions must have a leading axis dimension, shape (n_axes={ma.n_axes}, ...), "
            f"got shape {tuple(positions.shape)}"
        )
    if positions.shape[0] != ma.n_axes:
        raise ValueError(
            f"positions must have n_axes={ma.n_axes} rows in dim 0, got shape {tuple(positions.shape)}"
        )
    if positions.dtype == torch.bool or positions.is_complex():
        raise ValueError(f"positions must be real numbers, got dtype {positions.dtype}")
    if ma.integer_positions and positions.is_floating_point():
        raise ValueError(f"positions must be integers for this MultiAxis, got dtype {positions.dtype}")
    pos = positions.to(_F64)
    axis = ma.axis.to(pos.device)
    inv_freq = ma.inv_freq.to(pos.device)
    # (R/2, ...) -> (..., R/2): one product per pair, rounded once in float64.
    return pos[axis].movedim(0, -1) * inv_freq


__all__ = [
    "MultiAxis",
    "angles",
    "flux",
    "from_hf_config",
    "hunyuan_video",
    "mrope",
    "nd_rope",
    "vision_2d",
    "wan",
]
