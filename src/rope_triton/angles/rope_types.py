"""RoPE frequency and scaling rules, in float64.

Turns a rotary configuration (head size, base, and a Hugging Face style ``rope_scaling`` /
``rope_parameters`` dict) into the inverse frequencies and the attention factor. No Triton.

Everything is computed in float64. Hugging Face computes in float32; our values agree with theirs to
float32 rounding (relative error <= 1e-6) and are the more exact of the two, which matters once angles
reach ``position * inv_freq`` with positions in the millions.

Supported ``rope_type`` values: ``default``, ``linear``, ``dynamic``, ``yarn``, ``longrope``, ``llama3``
and ``proportional``. Parameter names and meanings follow ``transformers.modeling_rope_utils``
(transformers 4.45 to 5.x).

Layout convention: ``inv_freq[i]`` is the frequency of rotation pair ``i`` for ``i < rotary_dim // 2``.
Whether pair ``i`` is the dims ``(i, i + rotary_dim // 2)`` (GPT-NeoX / Llama "rotate half") or
``(2 i, 2 i + 1)`` (GPT-J "interleaved") is up to the kernel; the frequencies are the same.
"""

import math

import torch

from ._args import _as_int, _as_real, _positive_int

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional")

_F64 = torch.float64
# Frequencies are host values, whatever default device is in effect (a model built under
# `with torch.device("meta")` still needs real numbers for its tables).
_HOST = torch.device("cpu")
_TWO_PI = 2.0 * math.pi
DEFAULT_BASE = 10000.0

# Rope types whose pretraining length HF's config standardization fills in from
# `max_position_embeddings` when the dict does not carry it.
NEEDS_ORIGINAL_MAX = ("llama3", "yarn", "longrope")


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
        if explicit != DEFAULT_BASE and explicit != theta:
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
    exponents = torch.arange(0, 2 * num_pairs, 2, dtype=_F64, device=_HOST) / denom
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
    ramp = ((torch.arange(dim // 2, dtype=_F64, device=_HOST) - low) / (high - low)).clamp(0.0, 1.0)

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
        factors[key] = torch.tensor(values, dtype=_F64, device=_HOST)

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
    if high < low:
        raise ValueError(f"high_freq_factor must be >= low_freq_factor, got high={high}, low={low}")
    original = _original_max(params, rt, max_pos)

    inv_freq = _geometric_inv_freq(base, dim // 2, dim)
    wavelen = _TWO_PI / inv_freq
    long_wavelen = original / low  # longer than this: fully interpolated (divided by factor)
    short_wavelen = original / high  # shorter than this: untouched
    out = torch.where(wavelen > long_wavelen, inv_freq / factor, inv_freq)
    if high == low:
        # Llama 4 Scout's published config: no band to blend over, a step at original / low (transformers
        # warns, and computes the same step: a wavelength never equals that length exactly).
        return out
    smooth = (original / wavelen - low) / (high - low)
    blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
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
        inv_freq = torch.zeros(head_dim // 2, dtype=_F64, device=_HOST)
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
        float64, CPU, shape ``(dim // 2,)``.

    Examples
    --------
    >>> seed_inv_freq(8)
    tensor([1.0000e+00, 1.0000e-04, 0.0000e+00, 0.0000e+00], dtype=torch.float64)
    """
    dim = _as_int(dim, "dim")
    if dim < 4 or dim % 2:
        raise ValueError(f"dim must be even and >= 4, got {dim}")
    out = torch.zeros(dim // 2, dtype=_F64, device=_HOST)
    out[: dim // 4] = (1.0 / 10000.0) ** torch.linspace(0.0, 1.0, dim // 4, dtype=_F64, device=_HOST)
    return out
