"""Reading Hugging Face transformers configs into :func:`rope_triton.angles.inv_freq_and_scale` arguments."""

from ._args import _as_real, _positive_int
from .rope_types import DEFAULT_BASE, NEEDS_ORIGINAL_MAX, inv_freq_and_scale  # noqa: F401 (doctest)


def _config_get(config, name: str):
    # PretrainedConfig, SimpleNamespace and plain dicts (config.json) all work.
    if isinstance(config, dict):
        return config.get(name)
    return getattr(config, name, None)


def _check_layer_type(layer_type, known: list, why: str) -> None:
    if layer_type is None:
        raise ValueError(f"layer_type: {why}, expected one of {known}, got None")
    if layer_type not in known:
        raise ValueError(f"layer_type: expected one of {known}, got {layer_type!r}")


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
        For configs whose layer types rotate differently, which layers' RoPE to read,
        e.g. ``"sliding_attention"``; required for those: ``rope_parameters`` nested by
        layer type (transformers 5.x Gemma 3, Gemma 4, LFM3), and transformers 4.x
        Gemma 3 configs (``rope_local_base_freq`` for sliding layers, unscaled;
        ``rope_theta`` and ``rope_scaling`` for full attention). Ignored by the others.
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
        missing or unknown for a config whose layer types differ.

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
        _check_layer_type(layer_type, sorted(params), "rope_parameters is nested by layer type")
        if params[layer_type] is None:
            raise ValueError(f"layer_type: {layer_type!r} has no RoPE (its rope_parameters entry is None)")
        params = dict(params[layer_type])
    elif _config_get(config, "rope_local_base_freq") is not None:
        # transformers 4.x Gemma 3: rope_theta and rope_scaling are the full-attention layers'; sliding
        # layers rotate by rope_local_base_freq, unscaled (its rotary_emb_local).
        kinds = {"full_attention", "sliding_attention"} | set(_config_get(config, "layer_types") or ())
        kinds = sorted(kinds)
        _check_layer_type(layer_type, kinds, "rope_local_base_freq gives sliding layers their own base")
        if layer_type == "sliding_attention":
            params = {"rope_type": "default", "rope_theta": _config_get(config, "rope_local_base_freq")}
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
    base = DEFAULT_BASE if base is None else _as_real(base, "rope_theta")

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
    if rope_type in NEEDS_ORIGINAL_MAX:
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
