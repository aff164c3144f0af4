"""RoPE frequency and scaling math, in float64.

This module turns a rotary configuration (head size, base, and a Hugging Face style
``rope_scaling`` / ``rope_parameters`` dict) into the inverse frequencies and the
attention factor, and turns those into cos/sin tables. It has no Triton in it and
imports nothing else from ``rope_triton``, so it can be used and tested on its own.

Everything is computed in float64. Hugging Face computes in float32; our values
agree with theirs to float32 rounding (relative error <= 1e-6) and are the more
exact of the two, which matters once angles reach ``position * inv_freq`` with
positions in the millions.

Supported ``rope_type`` values: ``default``, ``linear``, ``dynamic``, ``yarn``,
``longrope``, ``llama3`` and ``proportional``. Parameter names and meanings follow
``transformers.modeling_rope_utils`` (transformers 4.45 to 5.x).

Layout convention: ``inv_freq[i]`` is the frequency of rotation pair ``i`` for
``i < rotary_dim // 2``. Whether pair ``i`` is the dims ``(i, i + rotary_dim // 2)``
(GPT-NeoX / Llama "rotate half") or ``(2 i, 2 i + 1)`` (GPT-J "interleaved") is up
to the kernel; the frequencies are the same.
"""

import math
from fractions import Fraction

import torch

__all__ = [
    "ROPE_TYPES",
    "angles",
    "cos_sin_tables",
    "default_low_bits",
    "freq_table",
    "freq_table_angles",
    "freq_table_factor",
    "inv_freq_and_scale",
    "parse_hf_config",
    "rope_type_of",
    "seed_inv_freq",
    "split_tables",
]

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")

_F64 = torch.float64
_TWO_PI = 2.0 * math.pi
_DEFAULT_BASE = 10000.0

# Rope types whose pretraining length HF's config standardization fills in from
# `max_position_embeddings` when the dict does not carry it.
_NEEDS_ORIGINAL_MAX = ("llama3", "yarn", "longrope")


# --------------------------------------------------------------------------------------
# Validation helpers. Every error names the offending key so that a bad config.json is
# easy to fix; HF itself mostly logs a warning and then fails later (or not at all).
# --------------------------------------------------------------------------------------


def _is_bool(x) -> bool:
    # bool is an int subclass; `factor=True` is a config bug, not the number 1.
    return isinstance(x, bool) or (isinstance(x, torch.Tensor) and x.dtype == torch.bool)


def _as_int(x, name: str) -> int:
    if _is_bool(x) or isinstance(x, (str, bytes)) or not hasattr(x, "__index__"):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    try:
        return int(x.__index__())
    except (TypeError, RuntimeError) as err:  # e.g. a float tensor or a multi-element tensor
        raise ValueError(f"{name} must be an integer, got {x!r}") from err


def _positive_int(x, name: str) -> int:
    value = _as_int(x, name)
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return value


def _as_real(x, name: str) -> float:
    if _is_bool(x) or isinstance(x, (str, bytes)) or not hasattr(x, "__float__"):
        raise ValueError(f"{name} must be a real number, got {x!r}")
    try:
        value = float(x)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a real number, got {x!r}") from err
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {x!r}")
    return value


def _param(params: dict, key: str, *, required: bool = False, default=None, rope_type: str = ""):
    # HF reads optional keys with `.get`, so an explicit None means "not set".
    value = params.get(key)
    if value is None:
        if required:
            raise ValueError(f"rope_type={rope_type!r} requires the scaling key {key!r}")
        return default
    return value


def _factor(params: dict, rope_type: str, *, required: bool) -> float | None:
    value = _param(params, "factor", required=required, rope_type=rope_type)
    if value is None:
        return None
    factor = _as_real(value, "factor")
    # Every scaling type treats factor as "context is this many times longer"; HF's
    # config validation documents >= 1 (and only warns). Below 1 is a config error.
    if factor < 1.0:
        raise ValueError(f"factor must be >= 1, got {value!r} (rope_type={rope_type!r})")
    return factor


def _original_max(params: dict, rope_type: str, max_position_embeddings: int | None) -> int:
    value = params.get("original_max_position_embeddings")
    if value is None:
        # HF's standardize_rope_params does the same setdefault.
        if max_position_embeddings is None:
            raise ValueError(
                f"rope_type={rope_type!r} requires the scaling key 'original_max_position_embeddings' "
                "(or max_position_embeddings to default it from)"
            )
        return max_position_embeddings
    return _positive_int(value, "original_max_position_embeddings")


def _as_params(scaling) -> dict:
    if scaling is None:
        return {}
    if not hasattr(scaling, "keys") or not hasattr(scaling, "get"):
        raise ValueError(
            f"scaling must be a dict (rope_scaling / rope_parameters), got {type(scaling).__name__}"
        )
    return dict(scaling)


def _rope_type(params: dict) -> str:
    # `type` is the pre-4.45 spelling; HF gives `rope_type` priority when both exist.
    rope_type = params.get("rope_type")
    if rope_type is None:
        rope_type = params.get("type")
    if rope_type is None:
        return "default"
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"unknown rope_type {rope_type!r}; expected one of {', '.join(ROPE_TYPES)}")
    return rope_type


def rope_type_of(scaling: dict | None) -> str:
    """The rope type a ``rope_scaling`` / ``rope_parameters`` dict names (``"default"`` for None).

    Examples
    --------
    >>> rope_type_of({"type": "linear", "factor": 2.0}), rope_type_of(None)
    ('linear', 'default')
    """
    return _rope_type(_as_params(scaling))


def _resolve_base(base, params: dict) -> float:
    explicit = _as_real(base, "base")
    theta = params.get("rope_theta")
    if theta is not None:
        theta = _as_real(theta, "rope_theta")
        # transformers 5 keeps the base only in rope_parameters, so the dict wins; a
        # *different* non-default `base` next to it is a contradiction, not a preference.
        if explicit != _DEFAULT_BASE and explicit != theta:
            raise ValueError(f"base={explicit} conflicts with scaling['rope_theta']={theta}")
        explicit = theta
    # base <= 1 makes frequencies grow with the pair index (and log(base) <= 0 breaks yarn).
    if explicit <= 1.0:
        raise ValueError(f"base (rope_theta) must be > 1, got {explicit}")
    return explicit


def _check_rotary_dim(rotary_dim, head_dim: int) -> int:
    value = _as_int(rotary_dim, "rotary_dim")
    if value <= 0 or value > head_dim or value % 2:
        raise ValueError(f"rotary_dim must be even and in (0, head_dim={head_dim}], got {rotary_dim!r}")
    return value


def _geometric_inv_freq(base: float, num_pairs: int, denom: int) -> torch.Tensor:
    # inv_freq[i] = base ** (-2 i / denom); `denom` is the rotary dim except for
    # proportional RoPE, which keeps the full head_dim's spacing.
    exponents = torch.arange(0, 2 * num_pairs, 2, dtype=_F64) / denom
    return 1.0 / (base**exponents)


# --------------------------------------------------------------------------------------
# Per-type math
# --------------------------------------------------------------------------------------


def _yarn(params: dict, base: float, dim: int, max_pos: int | None) -> tuple[torch.Tensor, float]:
    rt = "yarn"
    if "factor" not in params:
        raise ValueError("rope_type='yarn' requires the scaling key 'factor'")
    original = _original_max(params, rt, max_pos)
    factor = _factor(params, rt, required=False)
    if factor is None:
        # DeepSeek-style configs store factor=None and imply it by the two lengths.
        if max_pos is None:
            raise ValueError("yarn with factor=None needs max_position_embeddings to infer factor")
        factor = max_pos / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1.0 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = params.get("attention_factor")
    if attention_factor is not None:
        attention_factor = _as_real(attention_factor, "attention_factor")
        if attention_factor <= 0.0:
            raise ValueError(f"attention_factor must be > 0, got {attention_factor}")
    else:
        m = params.get("mscale")
        m_all = params.get("mscale_all_dim")
        m = None if m is None else _as_real(m, "mscale")
        m_all = None if m_all is None else _as_real(m_all, "mscale_all_dim")
        # HF tests truthiness: a 0 (or missing) value on either side falls back to
        # the plain paper formula, which we must reproduce to stay bit-compatible.
        if m and m_all:
            attention_factor = mscale(factor, m) / mscale(factor, m_all)
        else:
            attention_factor = mscale(factor)

    # HF uses `x or default`, so 0 also means "use the paper's default".
    beta_fast = _as_real(params.get("beta_fast") or 32, "beta_fast")
    beta_slow = _as_real(params.get("beta_slow") or 1, "beta_slow")
    if beta_fast <= 0.0 or beta_slow <= 0.0:
        raise ValueError(
            f"beta_fast and beta_slow must be > 0, got beta_fast={beta_fast}, beta_slow={beta_slow}"
        )
    if beta_fast < beta_slow:
        raise ValueError(f"beta_fast must be >= beta_slow, got beta_fast={beta_fast}, beta_slow={beta_slow}")
    truncate = params.get("truncate", True)
    if truncate is None:
        truncate = True
    if not isinstance(truncate, bool):
        raise ValueError(f"truncate must be a bool, got {truncate!r}")

    def correction_dim(num_rotations: float) -> float:
        # The (fractional) pair index whose wavelength fits `num_rotations` times in the
        # original context: below it the pair extrapolates, above it interpolates.
        return dim * math.log(original / (num_rotations * _TWO_PI)) / (2.0 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    # HF clamps against dim - 1 although the ramp runs over dim // 2 pairs; kept for parity.
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=_F64) - low) / (high - low)).clamp(0.0, 1.0)

    extrapolated = _geometric_inv_freq(base, dim // 2, dim)
    interpolated = extrapolated / factor
    # ramp = 0: fast pairs keep their frequency; ramp = 1: slow pairs are divided by factor.
    inv_freq = interpolated * ramp + extrapolated * (1.0 - ramp)
    return inv_freq, float(attention_factor)


def _longrope(
    params: dict, base: float, dim: int, seq_len: int | None, max_pos: int | None
) -> tuple[torch.Tensor, float]:
    rt = "longrope"
    original = _original_max(params, rt, max_pos)
    factors = {}
    for key in ("short_factor", "long_factor"):
        value = _param(params, key, required=True, rope_type=rt)
        if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
            raise ValueError(f"{key} must be a list of {dim // 2} numbers, got {value!r}")
        values = [_as_real(v, key) for v in value]
        if len(values) != dim // 2:
            raise ValueError(f"{key} must have rotary_dim // 2 = {dim // 2} entries, got {len(values)}")
        if any(v <= 0.0 for v in values):
            raise ValueError(f"{key} entries must be > 0")
        factors[key] = torch.tensor(values, dtype=_F64)

    factor = _factor(params, rt, required=False)
    if factor is None:
        # Phi-3 sets no factor; HF infers it from the two lengths.
        if max_pos is None:
            raise ValueError("longrope without factor needs max_position_embeddings to infer factor")
        factor = max_pos / original

    attention_factor = params.get("attention_factor")
    if attention_factor is not None:
        attention_factor = _as_real(attention_factor, "attention_factor")
        if attention_factor <= 0.0:
            raise ValueError(f"attention_factor must be > 0, got {attention_factor}")
    elif factor <= 1.0:
        attention_factor = 1.0
    else:
        attention_factor = math.sqrt(1.0 + math.log(factor) / math.log(original))

    # Strictly greater, as in HF: a sequence of exactly `original` tokens is "short".
    use_long = seq_len is not None and seq_len > original
    ext = factors["long_factor" if use_long else "short_factor"]
    return _geometric_inv_freq(base, dim // 2, dim) / ext, float(attention_factor)


def _llama3(params: dict, base: float, dim: int, max_pos: int | None) -> torch.Tensor:
    rt = "llama3"
    factor = _factor(params, rt, required=True)
    low = _as_real(_param(params, "low_freq_factor", required=True, rope_type=rt), "low_freq_factor")
    high = _as_real(_param(params, "high_freq_factor", required=True, rope_type=rt), "high_freq_factor")
    if low <= 0.0:
        raise ValueError(f"low_freq_factor must be > 0, got {low}")
    if high <= low:
        raise ValueError(f"high_freq_factor must be > low_freq_factor, got high={high}, low={low}")
    original = _original_max(params, rt, max_pos)

    inv_freq = _geometric_inv_freq(base, dim // 2, dim)
    wavelen = _TWO_PI / inv_freq
    long_wavelen = original / low  # longer than this: fully interpolated (divided by factor)
    short_wavelen = original / high  # shorter than this: untouched
    smooth = (original / wavelen - low) / (high - low)
    blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > long_wavelen, inv_freq / factor, inv_freq)
    medium = (wavelen >= short_wavelen) & (wavelen <= long_wavelen)
    return torch.where(medium, blended, out)


def _dynamic(params: dict, base: float, dim: int, seq_len: int | None, max_pos: int | None) -> torch.Tensor:
    rt = "dynamic"
    factor = _factor(params, rt, required=True)
    if dim == 2:
        # The NTK exponent dim / (dim - 2) is undefined for a single pair.
        raise ValueError("rope_type='dynamic' needs rotary_dim >= 4")
    if seq_len is not None:
        # HF compares against config.max_position_embeddings (it ignores any
        # original_max_position_embeddings); we fall back to the latter only when the
        # former is not given.
        reference = max_pos
        if reference is None and params.get("original_max_position_embeddings") is not None:
            reference = _positive_int(
                params["original_max_position_embeddings"], "original_max_position_embeddings"
            )
        if reference is None:
            raise ValueError("rope_type='dynamic' with seq_len needs max_position_embeddings")
        if seq_len > reference:
            base = base * (factor * seq_len / reference - (factor - 1.0)) ** (dim / (dim - 2))
    return _geometric_inv_freq(base, dim // 2, dim)


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def inv_freq_and_scale(
    head_dim: int,
    *,
    base: float = 10000.0,
    rotary_dim: int | None = None,
    scaling: dict | None = None,
    seq_len: int | None = None,
    max_position_embeddings: int | None = None,
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies and attention factor of a (scaled) rotary embedding.

    Parameters
    ----------
    head_dim : int
        Size of one attention head.
    base : float, default 10000.0
        RoPE base (``rope_theta``). If ``scaling`` carries ``rope_theta`` that value is
        used (transformers 5 stores it there); passing a different non-default
        ``base`` as well raises.
    rotary_dim : int, optional
        Number of rotated dims (even, ``0 < rotary_dim <= head_dim``). Defaults to
        ``int(head_dim * scaling["partial_rotary_factor"])`` (HF truncates the same
        way), or ``head_dim``. An explicit value wins over ``partial_rotary_factor``.
    scaling : dict, optional
        A Hugging Face ``rope_scaling`` / ``rope_parameters`` dict: ``rope_type`` (or
        legacy ``type``), ``factor``, ``original_max_position_embeddings``,
        ``low_freq_factor``, ``high_freq_factor``, ``beta_fast``, ``beta_slow``,
        ``mscale``, ``mscale_all_dim``, ``truncate``, ``short_factor``,
        ``long_factor``, ``attention_factor``, ``partial_rotary_factor``,
        ``rope_theta``. Unknown keys are ignored (HF only warns about them).
        ``None`` means plain RoPE.
    seq_len : int, optional
        Number of positions the tables must cover (HF's ``max(position_ids) + 1``).
        Used by ``dynamic`` (the NTK base grows once ``seq_len`` exceeds
        ``max_position_embeddings``; at or below it the unscaled frequencies are
        returned) and ``longrope`` (``long_factor`` when ``seq_len >
        original_max_position_embeddings``, else ``short_factor``). ``None`` gives
        what HF computes at model init. Other types ignore it.
    max_position_embeddings : int, optional
        The model's ``config.max_position_embeddings``. Needed by ``dynamic`` when
        ``seq_len`` is given, to infer ``factor`` for ``longrope`` (Phi-3) and for
        ``yarn`` with ``factor=None`` (DeepSeek), and as the default of
        ``original_max_position_embeddings`` for ``llama3``/``yarn``/``longrope``.

    Returns
    -------
    inv_freq : torch.Tensor
        float64, CPU, shape ``(rotary_dim // 2,)``. For ``proportional`` the shape is
        ``(head_dim // 2,)``; see Notes.
    attention_factor : float
        Factor HF multiplies into cos and sin (``attention_scaling``): yarn's mscale
        ratio, longrope's ``sqrt(1 + log(factor) / log(original))``, else 1.0.

    Raises
    ------
    ValueError
        Unknown ``rope_type``; a required key missing; a value of the wrong type or
        out of range. The message names the key.

    Notes
    -----
    ``dynamic`` is stateless here: HF's module remembers the largest length seen since
    it last dropped below ``max_position_embeddings`` and keeps those frequencies; pass
    that length as ``seq_len`` to reproduce it exactly.

    ``proportional`` (Gemma 4 style) rotates only ``int(partial_rotary_factor *
    head_dim // 2)`` pairs but spaces their frequencies as for the full head
    (exponent ``2 i / head_dim``) and sets the remaining pairs' frequency to 0, i.e.
    angle 0, an identity rotation. We return that full ``head_dim // 2`` vector with
    the zeros, exactly like HF, and the caller must rotate the whole head
    (``rotary_dim = head_dim``). Returning only the non-zero prefix would be wrong: in
    the rotate-half layout the rotated pairs are ``(i, i + head_dim // 2)``, not the
    first ``2 * n`` dims that a partial rotation of width ``2 * n`` would touch. An
    explicit ``rotary_dim`` sets the number of rotated dims (``2 * n``) instead of
    ``partial_rotary_factor``. Its attention factor is always 1, so the identity
    pairs stay exact.

    As in HF, ``attention_factor`` in the dict is only read by ``yarn`` and
    ``longrope``.

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(
    ...     128,
    ...     base=500000.0,
    ...     scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
    ...              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    ... )
    >>> inv_freq.shape, inv_freq.dtype, scale
    (torch.Size([64]), torch.float64, 1.0)
    """
    head_dim = _positive_int(head_dim, "head_dim")
    params = _as_params(scaling)
    rope_type = _rope_type(params)
    base = _resolve_base(base, params)
    seq_len = None if seq_len is None else _positive_int(seq_len, "seq_len")
    max_pos = (
        None
        if max_position_embeddings is None
        else _positive_int(max_position_embeddings, "max_position_embeddings")
    )
    partial = _as_real(_param(params, "partial_rotary_factor", default=1.0), "partial_rotary_factor")
    if not 0.0 < partial <= 1.0:
        raise ValueError(f"partial_rotary_factor must be in (0, 1], got {partial}")

    if rope_type == "proportional":
        # HF: int(partial * head_dim // 2), i.e. floor((partial * head_dim) / 2).
        rotated = _check_rotary_dim(rotary_dim, head_dim) // 2 if rotary_dim is not None else None
        if rotated is None:
            rotated = int(partial * head_dim // 2)
            if rotated == 0:
                raise ValueError(f"partial_rotary_factor={partial} rotates no pair of head_dim={head_dim}")
        factor = _factor(params, rope_type, required=False) or 1.0
        inv_freq = torch.zeros(head_dim // 2, dtype=_F64)
        inv_freq[:rotated] = _geometric_inv_freq(base, rotated, head_dim)
        return inv_freq / factor, 1.0

    if rotary_dim is None:
        rotary_dim = int(head_dim * partial)
    dim = _check_rotary_dim(rotary_dim, head_dim)

    if rope_type == "default":
        return _geometric_inv_freq(base, dim // 2, dim), 1.0
    if rope_type == "linear":
        factor = _factor(params, rope_type, required=True)
        # Dividing the frequency is the same as dividing the position (HF does this too).
        return _geometric_inv_freq(base, dim // 2, dim) / factor, 1.0
    if rope_type == "dynamic":
        return _dynamic(params, base, dim, seq_len, max_pos), 1.0
    if rope_type == "llama3":
        return _llama3(params, base, dim, max_pos), 1.0
    if rope_type == "yarn":
        return _yarn(params, base, dim, max_pos)
    return _longrope(params, base, dim, seq_len, max_pos)


def seed_inv_freq(dim: int) -> torch.Tensor:
    """The tutorial's half-truncated RoPE frequencies.

    ``dim // 4`` frequencies log-spaced from 1 down to 1/10000, ``(1/10000) **
    linspace(0, 1, dim // 4)``, followed by zeros up to ``dim // 2``. The zero pairs get
    angle 0 and so are never rotated: half the head carries no position at all.

    Parameters
    ----------
    dim : int
        Rotary (head) dim; even and >= 4.

    Returns
    -------
    torch.Tensor
        float64, shape ``(dim // 2,)``.

    Examples
    --------
    >>> seed_inv_freq(8)
    tensor([1.0000e+00, 1.0000e-04, 0.0000e+00, 0.0000e+00], dtype=torch.float64)
    """
    dim = _as_int(dim, "dim")
    if dim < 4 or dim % 2:
        raise ValueError(f"dim must be even and >= 4, got {dim}")
    out = torch.zeros(dim // 2, dtype=_F64)
    out[: dim // 4] = (1.0 / 10000.0) ** torch.linspace(0.0, 1.0, dim // 4, dtype=_F64)
    return out


def _config_get(config, name: str):
    # PretrainedConfig, SimpleNamespace and plain dicts (config.json) all work.
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


def parse_hf_config(config, *, layer_type: str | None = None) -> dict:
    """Keyword arguments for :func:`inv_freq_and_scale` from a transformers config.

    Reads transformers 4.x style configs (``rope_theta``, ``rope_scaling`` with
    ``type``, GPT-NeoX ``rotary_pct`` / ``rotary_emb_base``, Phi-3 ``"su"``) and 5.x
    style ones (everything inside ``rope_parameters``, possibly nested per layer type).

    Parameters
    ----------
    config : PretrainedConfig or object or dict
        Anything with the usual config attributes (or a ``config.json`` dict).
    layer_type : str, optional
        For configs whose ``rope_parameters`` is nested by layer type (Gemma 4,
        LFM3), which entry to use, e.g. ``"full_attention"``. Required for those.
        Per-layer ``head_dim`` overrides (Gemma 4's ``global_head_dim``) are not
        resolved; pass ``head_dim`` yourself for such layers.

    Returns
    -------
    dict
        ``head_dim`` (``config.head_dim``, else ``hidden_size // num_attention_heads``),
        ``base`` (``rope_theta``), ``scaling`` (a fresh dict with ``rope_type`` and,
        when not 1, ``partial_rotary_factor``; ``rope_theta`` is moved to ``base``),
        ``max_position_embeddings`` (may be None) and, only when the config names it
        explicitly (GPT-J, CodeGen), ``rotary_dim``.

    Raises
    ------
    ValueError
        The head size cannot be found (names ``head_dim``), or ``layer_type`` is
        missing or unknown for a nested config.

    Examples
    --------
    >>> from transformers import GPTNeoXConfig
    >>> kw = parse_hf_config(GPTNeoXConfig(hidden_size=2048, num_attention_heads=16, rotary_pct=0.25))
    >>> kw["head_dim"], kw["scaling"]["partial_rotary_factor"]
    (128, 0.25)
    >>> inv_freq_and_scale(**kw)[0].shape
    torch.Size([16])
    """
    params = _config_get(config, "rope_parameters")
    if not params:
        params = _config_get(config, "rope_scaling")
    params = dict(params) if params else {}

    # Nested: {"full_attention": {...}, "sliding_attention": {...}}.
    if params and any(isinstance(v, dict) for v in params.values()):
        if layer_type is None:
            raise ValueError(
                f"rope_parameters is nested by layer type; pass layer_type, one of {sorted(params)}"
            )
        if layer_type not in params:
            raise ValueError(
                f"layer_type {layer_type!r} not in rope_parameters, expected one of {sorted(params)}"
            )
        if params[layer_type] is None:
            raise ValueError(f"layer_type {layer_type!r} has no RoPE (rope_parameters entry is None)")
        params = dict(params[layer_type])
    # Lists are copied so that callers can't mutate the config through our dict.
    params = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in params.items()}

    head_dim = _config_get(config, "head_dim")
    if not head_dim:
        hidden = _config_get(config, "hidden_size")
        heads = _config_get(config, "num_attention_heads")
        if not hidden or not heads:
            raise ValueError("config has neither head_dim nor hidden_size and num_attention_heads")
        head_dim = _positive_int(hidden, "hidden_size") // _positive_int(heads, "num_attention_heads")
    head_dim = _positive_int(head_dim, "head_dim")

    base = params.pop("rope_theta", None)
    for name in ("rope_theta", "rotary_emb_base", "default_theta"):
        if base is None:
            base = _config_get(config, name)
    base = _DEFAULT_BASE if base is None else _as_real(base, "rope_theta")

    partial = params.get("partial_rotary_factor")
    for name in ("partial_rotary_factor", "rotary_pct"):
        if partial is None:
            partial = _config_get(config, name)
    params.pop("partial_rotary_factor", None)
    if partial is not None and _as_real(partial, "partial_rotary_factor") != 1.0:
        params["partial_rotary_factor"] = float(partial)

    rope_type = params.pop("rope_type", None) or params.get("type") or "default"
    params.pop("type", None)
    # "su" was Phi-3's first name for LongRoPE; Phi3Config also maps "yarn" to it.
    model_type = _config_get(config, "model_type")
    if rope_type == "su" or (rope_type == "yarn" and model_type == "phi3"):
        rope_type = "longrope"
    params = {"rope_type": rope_type, **params}

    max_pos = _config_get(config, "max_position_embeddings")
    max_pos = None if max_pos is None else _positive_int(max_pos, "max_position_embeddings")
    if rope_type in _NEEDS_ORIGINAL_MAX:
        # Phi-3 keeps the pretraining length as a config attribute and HF gives that
        # attribute priority over the dict; everyone else defaults it to max_pos.
        attr = _config_get(config, "original_max_position_embeddings")
        if attr is not None:
            params["original_max_position_embeddings"] = attr
        elif params.get("original_max_position_embeddings") is None and max_pos is not None:
            params["original_max_position_embeddings"] = max_pos

    out = {"head_dim": head_dim, "base": base, "scaling": params, "max_position_embeddings": max_pos}
    rotary_dim = _config_get(config, "rotary_dim")
    if isinstance(rotary_dim, int) and not isinstance(rotary_dim, bool):
        out["rotary_dim"] = rotary_dim
    return out


def angles(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotation angles ``positions[..., None] * inv_freq`` in float64.

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, any float dtype (upcast to float64).
    positions : torch.Tensor
        Any shape, integer or float.

    Returns
    -------
    torch.Tensor
        float64, shape ``(*positions.shape, n)``, on ``positions.device``.

    Examples
    --------
    >>> angles(torch.tensor([1.0, 0.5]), torch.arange(3))
    tensor([[0.0000, 0.0000],
            [1.0000, 0.5000],
            [2.0000, 1.0000]], dtype=torch.float64)
    """
    positions = torch.as_tensor(positions)
    inv = inv_freq.to(device=positions.device, dtype=_F64)
    return positions.to(_F64).unsqueeze(-1) * inv


def _cos_sin(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # No `theta % 2 pi` first: float64 cos/sin (CPU and CUDA) reduce their argument
    # exactly, whereas subtracting k * fl(2 pi) adds k * 2.4e-16 of error (3e-12 rad at
    # 7e4 rad), i.e. pre-reduction would make the tables less exact, not more.
    return torch.cos(theta), torch.sin(theta)


def _check_num_positions(num_positions) -> int:
    return _positive_int(num_positions, "num_positions")


def cos_sin_tables(
    inv_freq: torch.Tensor,
    num_positions: int,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full cos/sin tables for positions ``0 .. num_positions - 1``.

    Built from float64 angles, scaled by ``attention_factor`` in float64 and rounded
    to ``dtype`` once, so every entry is the correctly rounded value (up to float64
    error, ~1e-16).

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, as from :func:`inv_freq_and_scale`.
    num_positions : int
        Number of table rows.
    attention_factor : float, default 1.0
        Multiplied into both tables (HF's ``attention_scaling``).
    dtype : torch.dtype, default torch.float32
        Output dtype.
    device : torch.device or str, optional
        Where to build and return the tables; defaults to ``inv_freq.device``.

    Returns
    -------
    cos, sin : torch.Tensor
        Each of shape ``(num_positions, n)`` and dtype ``dtype``.

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(64)
    >>> cos, sin = cos_sin_tables(inv_freq, 4096, attention_factor=scale, dtype=torch.bfloat16)
    >>> cos.shape, cos.dtype
    (torch.Size([4096, 32]), torch.bfloat16)
    """
    num_positions = _check_num_positions(num_positions)
    attention_factor = _as_real(attention_factor, "attention_factor")
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.to(device=device, dtype=_F64).reshape(-1)
    cos = torch.empty(num_positions, inv.numel(), dtype=dtype, device=device)
    sin = torch.empty_like(cos)
    # Chunk rows so the float64 intermediates stay ~32 MB however long the table is.
    rows = max(1, (1 << 22) // max(1, inv.numel()))
    for start in range(0, num_positions, rows):
        stop = min(num_positions, start + rows)
        c, s = _cos_sin(angles(inv, torch.arange(start, stop, device=device)))
        cos[start:stop] = c * attention_factor
        sin[start:stop] = s * attention_factor
    return cos, sin


def default_low_bits(num_positions: int) -> int:
    """The ``low_bits`` for :func:`split_tables` that minimizes total table rows.

    Total rows are ``ceil(num_positions / 2**b) + 2**b``, smallest near ``b =
    log2(num_positions) / 2``; ties go to the smaller ``b`` (smaller low table).

    Parameters
    ----------
    num_positions : int
        Number of positions the tables must cover.

    Returns
    -------
    int

    Examples
    --------
    >>> default_low_bits(2**20)
    10
    """
    n = _check_num_positions(num_positions)
    best_bits, best_rows = 0, n + 1
    for bits in range(1, max(1, (n - 1).bit_length()) + 1):
        rows = -(-n // (1 << bits)) + (1 << bits)
        if rows < best_rows:
            best_bits, best_rows = bits, rows
    return best_bits


def split_tables(
    inv_freq: torch.Tensor,
    num_positions: int,
    *,
    low_bits: int,
    attention_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two small fp32 table pairs whose angle sum gives any position's angle.

    Position ``p = hi * 2**low_bits + lo`` has ``angle(p) = angle_hi(hi) +
    angle_lo(lo)`` with ``angle_hi(hi) = (hi * 2**low_bits) * inv_freq`` and
    ``angle_lo(lo) = lo * inv_freq``, each computed in float64 and rounded once. A
    kernel recombines them with the angle-addition formulas::

        cos = ch * cl - sh * sl
        sin = sh * cl + ch * sl

    where ``ch, sh = cos_hi[hi], sin_hi[hi]`` and ``cl, sl = cos_lo[lo], sin_lo[lo]``.
    Because the float64 angle is exact before rounding, the result is within ~2 fp32
    ulps of the true cos/sin at any position, unlike ``fp32(p) * fp32(inv_freq)``
    whose error grows with ``p``. For 2**20 positions and 64 pairs the four tables
    take 1 MiB instead of 512 MiB for full fp32 cos/sin tables.

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``.
    num_positions : int
        Positions ``0 .. num_positions - 1`` must be covered.
    low_bits : int
        ``0 <= low_bits <= 30``; see :func:`default_low_bits`.
    attention_factor : float, default 1.0
        Multiplied into the hi tables only, so the recombined product carries it once.
    device : torch.device or str, optional
        Defaults to ``inv_freq.device``.

    Returns
    -------
    cos_hi, sin_hi : torch.Tensor
        float32, shape ``(ceil(num_positions / 2**low_bits), n)``.
    cos_lo, sin_lo : torch.Tensor
        float32, shape ``(2**low_bits, n)``.

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(128, base=500000.0)
    >>> ch, sh, cl, sl = split_tables(inv_freq, 2**20, low_bits=default_low_bits(2**20))
    >>> ch.shape, cl.shape
    (torch.Size([1024, 64]), torch.Size([1024, 64]))
    >>> p = 123456; hi, lo = p >> 10, p & 1023
    >>> cos_p = ch[hi] * cl[lo] - sh[hi] * sl[lo]
    """
    num_positions = _check_num_positions(num_positions)
    low_bits = _as_int(low_bits, "low_bits")
    if not 0 <= low_bits <= 30:
        raise ValueError(f"low_bits must be in [0, 30], got {low_bits}")
    attention_factor = _as_real(attention_factor, "attention_factor")
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.to(device=device, dtype=_F64).reshape(-1)
    block = 1 << low_bits
    num_hi = -(-num_positions // block)

    hi_pos = torch.arange(num_hi, dtype=_F64, device=device) * block
    cos_hi, sin_hi = _cos_sin(angles(inv, hi_pos))
    cos_lo, sin_lo = _cos_sin(angles(inv, torch.arange(block, device=device)))
    f32 = torch.float32
    return (
        (cos_hi * attention_factor).to(f32),
        (sin_hi * attention_factor).to(f32),
        cos_lo.to(f32),
        sin_lo.to(f32),
    )


# freq_table: positions are split into FREQ_CHUNK_BITS-bit chunks, turns are fixed point with FREQ_FRAC_BITS
# fraction bits; chunk x row products stay below 2**60, their sum below 2**62: exact in int64.
FREQ_CHUNK_BITS = 12
FREQ_CHUNKS = 3  # positions below 2**31 (36 bits of chunks)
FREQ_FRAC_BITS = 48
FREQ_ROWS = FREQ_CHUNKS + 1  # the chunk rows, then the attention factor
# The kernel's bound check is pos < FREQ_MAX_POSITION + 1, an int32 argument: torch 2.11's inductor fails on
# int arguments past int32 (expr_fits_within_32bit on a Python int).
FREQ_MAX_POSITION = 2**31 - 2
# 1 / (2 pi) to 2**-190: pi's first 60 digits.
_INV_TWO_PI = 1 / (2 * Fraction("3.14159265358979323846264338327950288419716939937510582097494459"))


def freq_table(
    inv_freq: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """What the kernel needs to compute each position's cos/sin itself: no table rows to read.

    ``apply_rotary(q, k, freqs=freq_table(inv_freq))`` rotates as full cos/sin tables do, at any position
    up to 2**31 - 2, without their bytes (float32 tables of a 32k context and 64 pairs are 16 MiB, read on
    every call: 2.5% of long-context traffic; split tables cost extra loads). Row k holds, for each
    frequency f = inv_freq / (2 pi) in turns per position, frac(2**(12 k) f) as an integer multiple of
    2**-48, computed exactly from the float64 ``inv_freq``. The kernel splits a position into 12-bit
    chunks p_k and sums p_k * row_k in int64 (exact), which is the angle's turns modulo 1 to 2**-37, then
    evaluates cos and sin in float32 (within ~2 ulps, against 0.5 for rounded float64 tables).

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, as from :func:`inv_freq_and_scale` (rotary_dim = 2 n).
    attention_factor : float, default 1.0
        Multiplied into cos and sin (HF's ``attention_scaling``).
    device : torch.device or str, optional
        Defaults to ``inv_freq.device``.

    Returns
    -------
    torch.Tensor
        int64, shape ``(4, n)``: the three rows of fixed-point turns, then the attention factor's float32
        bits (the kernel reads integers, with no float64 conversion per element).

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(128, base=500000.0)
    >>> freq_table(inv_freq, attention_factor=scale).shape
    torch.Size([4, 64])
    """
    if not isinstance(inv_freq, torch.Tensor):
        raise TypeError(f"inv_freq: expected a 1-D floating-point tensor, got {type(inv_freq).__name__}")
    if inv_freq.dim() != 1 or not inv_freq.is_floating_point():
        raise TypeError(
            f"inv_freq: expected a 1-D floating-point tensor, got {inv_freq.dtype} of shape "
            f"{tuple(inv_freq.shape)}"
        )
    attention_factor = _as_real(attention_factor, "attention_factor")
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.detach().to(device="cpu", dtype=_F64).tolist()
    if not all(math.isfinite(v) for v in inv):
        raise ValueError("inv_freq: expected finite values, got NaN or infinity")
    one = 1 << FREQ_FRAC_BITS
    rows = []
    for k in range(FREQ_CHUNKS):
        scale = 1 << (FREQ_CHUNK_BITS * k)
        row = []
        for value in inv:
            # Exact rational arithmetic on the float64 value: turns = inv / (2 pi) needs pi, to 2**-100.
            turns = Fraction(value) * scale * _INV_TWO_PI
            row.append(round((turns - math.floor(turns)) * one) % one)
        rows.append(row)
    table = torch.empty(FREQ_ROWS, len(inv), dtype=torch.int64)
    table[:FREQ_CHUNKS] = torch.tensor(rows, dtype=torch.int64).reshape(FREQ_CHUNKS, len(inv))
    factor_bits = torch.full((len(inv),), attention_factor, dtype=torch.float32).view(torch.int32)
    table[FREQ_CHUNKS] = factor_bits.to(torch.int64)
    return table.to(device)


def freq_table_factor(freqs: torch.Tensor) -> torch.Tensor:
    """The attention factor of each pair stored in a :func:`freq_table` (float32, ``(n,)``)."""
    return freqs[FREQ_CHUNKS].to(torch.int32).view(torch.float32)


def freq_table_angles(freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The angles, in [0, 2 pi), that a :func:`freq_table` stands for at ``positions`` (float64).

    Parameters
    ----------
    freqs : torch.Tensor
        ``(4, n)`` from :func:`freq_table`.
    positions : torch.Tensor
        Integers in [0, 2**31 - 2], any shape.

    Returns
    -------
    torch.Tensor
        float64, ``(*positions.shape, n)``: 2 pi times the exact sum of the chunk products modulo 1.
    """
    f = freqs[:FREQ_CHUNKS].to(positions.device)
    pos = positions.to(torch.int64).unsqueeze(-1)
    mask = (1 << FREQ_CHUNK_BITS) - 1
    acc = sum(((pos >> (FREQ_CHUNK_BITS * k)) & mask) * f[k] for k in range(FREQ_CHUNKS))
    acc = acc & ((1 << FREQ_FRAC_BITS) - 1)
    # Two float64 parts: acc has 48 bits, float64 53; the scaling by 2**-48 is exact.
    return (2 * math.pi) * (acc.to(_F64) / float(1 << FREQ_FRAC_BITS))
