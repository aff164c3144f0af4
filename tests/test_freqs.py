"""Tests for rope_triton.angles: parity with transformers' RoPE init functions, table accuracy, errors.

Every config is built offline from transformers' config classes with the published numbers of the
model it is named after; nothing is downloaded.
"""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPTNeoXConfig, Llama4TextConfig, LlamaConfig, Phi3Config, Qwen2Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXRotaryEmbedding
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from rope_triton.angles import (
    ROPE_TYPES,
    angles,
    cos_sin_tables,
    default_low_bits,
    freq_table,
    freq_table_angles,
    freq_table_factor,
    inv_freq_and_scale,
    parse_hf_config,
    seed_inv_freq,
    split_tables,
)

RTOL = 1e-6  # HF computes in float32; we compute in float64

from hf_factors import PHI3_LONG_FACTOR, PHI3_SHORT_FACTOR  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Real configs. Factories, because HF mutates configs (standardize_rope_params) when it reads them.
# ------------------------------------------------------------------------------------------------


def llama31_8b():
    return LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )


def llama2_7b():
    return LlamaConfig(hidden_size=4096, num_attention_heads=32, max_position_embeddings=4096)


def llama4_scout():
    # Llama 4 Scout's text config: llama3 scaling with low_freq_factor == high_freq_factor (no blended
    # band: a step at 8192), which transformers warns about and computes.
    return Llama4TextConfig(
        hidden_size=5120,
        num_attention_heads=40,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=10485760,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 16.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
        },
    )


def qwen25_7b_yarn():
    return Qwen2Config(
        hidden_size=3584,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    )


def phi3_mini_128k():
    return Phi3Config(
        hidden_size=3072,
        num_attention_heads=32,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling={
            "type": "longrope",
            "short_factor": list(PHI3_SHORT_FACTOR),
            "long_factor": list(PHI3_LONG_FACTOR),
        },
    )


def llama_dynamic():
    return LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=4096,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    )


def llama_linear():
    return LlamaConfig(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=16384,
        rope_scaling={"type": "linear", "factor": 4.0},
    )


def pythia_1b4():
    return GPTNeoXConfig(
        hidden_size=2048, num_attention_heads=16, rotary_pct=0.25, max_position_embeddings=2048
    )


def _deepseek_yarn(**overrides):
    # DeepSeek-V3's rope part: qk_rope_head_dim 64, yarn factor 40 over a 4096 pretraining length.
    params = {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 40.0,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    }
    params.update(overrides)
    return lambda: LlamaConfig(
        hidden_size=7168,
        num_attention_heads=128,
        head_dim=64,
        max_position_embeddings=163840,
        rope_parameters=params,
    )


def gemma4_global_proportional():
    # Gemma 4 full-attention layers: proportional RoPE, 1/4 of a 512-dim head, theta 1e6.
    return LlamaConfig(
        hidden_size=2048,
        num_attention_heads=8,
        head_dim=512,
        max_position_embeddings=131072,
        rope_parameters={"rope_type": "proportional", "partial_rotary_factor": 0.25, "rope_theta": 1000000.0},
    )


def proportional_with_factor():
    return LlamaConfig(
        hidden_size=1024,
        num_attention_heads=8,
        head_dim=128,
        max_position_embeddings=8192,
        rope_parameters={
            "rope_type": "proportional",
            "partial_rotary_factor": 0.5,
            "rope_theta": 10000.0,
            "factor": 8.0,
        },
    )


def _hf(config, rope_type, seq_len=None, default_fn=LlamaRotaryEmbedding.compute_default_rope_parameters):
    if rope_type == "default":
        # transformers 5 has no "default" entry in ROPE_INIT_FUNCTIONS; each model defines its own.
        return default_fn(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)


def assert_rel(ours: torch.Tensor, ref: torch.Tensor, rtol: float = RTOL):
    assert ours.dtype == torch.float64
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    # atol=0: zeros (proportional's padding) must be exactly zero.
    torch.testing.assert_close(ours, ref.to(torch.float64), rtol=rtol, atol=0.0)


PARITY_CASES = [
    # id, config factory, rope_type, seq_len, default_fn
    ("llama2-default", llama2_7b, "default", None, None),
    (
        "pythia-rotary_pct",
        pythia_1b4,
        "default",
        None,
        GPTNeoXRotaryEmbedding.compute_default_rope_parameters,
    ),
    ("llama3.1-8b", llama31_8b, "llama3", None, None),
    ("llama4-scout", llama4_scout, "llama3", None, None),
    ("qwen2.5-yarn", qwen25_7b_yarn, "yarn", None, None),
    ("deepseek-v3-yarn", _deepseek_yarn(), "yarn", None, None),
    ("yarn-mscale-ratio", _deepseek_yarn(mscale=1.0, mscale_all_dim=0.5), "yarn", None, None),
    ("yarn-factor-none", _deepseek_yarn(factor=None, mscale=0.707, mscale_all_dim=None), "yarn", None, None),
    ("yarn-attention-factor", _deepseek_yarn(attention_factor=0.75), "yarn", None, None),
    ("yarn-no-truncate", _deepseek_yarn(truncate=False, beta_fast=16, beta_slow=2), "yarn", None, None),
    ("phi3-128k-init", phi3_mini_128k, "longrope", None, None),
    ("phi3-128k-short", phi3_mini_128k, "longrope", 4096, None),
    ("phi3-128k-long", phi3_mini_128k, "longrope", 4097, None),
    ("phi3-128k-long-128k", phi3_mini_128k, "longrope", 131072, None),
    ("linear-4", llama_linear, "linear", None, None),
    *[
        (f"dynamic-{s}", llama_dynamic, "dynamic", s, None)
        for s in (None, 1, 2048, 4095, 4096, 4097, 6000, 8192, 65536)
    ],
    ("gemma4-proportional", gemma4_global_proportional, "proportional", None, None),
    ("proportional-factor", proportional_with_factor, "proportional", None, None),
]


@pytest.mark.parametrize(
    "factory, rope_type, seq_len, default_fn", [c[1:] for c in PARITY_CASES], ids=[c[0] for c in PARITY_CASES]
)
def test_parity_with_transformers(factory, rope_type, seq_len, default_fn):
    kwargs = {} if default_fn is None else {"default_fn": default_fn}
    ref_inv, ref_scale = _hf(factory(), rope_type, seq_len, **kwargs)
    cfg = parse_hf_config(factory())
    assert cfg["scaling"]["rope_type"] == rope_type
    inv, scale = inv_freq_and_scale(**cfg, seq_len=seq_len)
    assert_rel(inv, ref_inv)
    assert scale == pytest.approx(ref_scale, rel=1e-12)


def test_llama31_known_values():
    inv, scale = inv_freq_and_scale(
        128,
        base=500000.0,
        scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )
    plain = 500000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    wavelen = 2 * math.pi / plain
    assert scale == 1.0
    # High frequencies (wavelength < 8192 / 4) are untouched, low ones (> 8192) divided by 8 ...
    torch.testing.assert_close(inv[wavelen < 2048], plain[wavelen < 2048], rtol=1e-15, atol=0)
    torch.testing.assert_close(inv[wavelen > 8192], plain[wavelen > 8192] / 8, rtol=1e-15, atol=0)
    assert inv[0] == 1.0 and (wavelen < 2048).sum() == 29 and (wavelen > 8192).sum() == 29
    # ... and the 6 in between sit strictly between the two.
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    assert mid.sum() == 6
    assert bool(((inv[mid] < plain[mid]) & (inv[mid] > plain[mid] / 8)).all())


def test_llama3_equal_band_factors_step():
    # Llama 4 Scout (low_freq_factor == high_freq_factor): no blended band, every pair kept or divided by
    # the factor, at a wavelength of 8192.
    inv, scale = inv_freq_and_scale(**parse_hf_config(llama4_scout()))
    plain = 500000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    long = 2 * math.pi / plain > 8192
    assert scale == 1.0 and 0 < long.sum() < 64
    torch.testing.assert_close(inv, torch.where(long, plain / 16, plain), rtol=1e-15, atol=0)


def test_known_attention_factors():
    _, qwen = inv_freq_and_scale(**parse_hf_config(qwen25_7b_yarn()))
    assert qwen == pytest.approx(0.1 * math.log(4.0) + 1.0, rel=1e-15)
    assert qwen == pytest.approx(1.1386294361119891, rel=1e-15)
    _, phi3 = inv_freq_and_scale(**parse_hf_config(phi3_mini_128k()))
    assert phi3 == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), rel=1e-15)
    # mscale == mscale_all_dim (DeepSeek-V3): HF's rope scale is exactly 1, the mscale lives in the softmax.
    assert inv_freq_and_scale(**parse_hf_config(_deepseek_yarn()()))[1] == 1.0
    _, ratio = inv_freq_and_scale(**parse_hf_config(_deepseek_yarn(mscale=1.0, mscale_all_dim=0.5)()))
    assert ratio == pytest.approx((0.1 * math.log(40) + 1) / (0.05 * math.log(40) + 1), rel=1e-15)


def test_longrope_short_long_switch():
    kw = parse_hf_config(phi3_mini_128k())
    base = 10000.0 ** (-torch.arange(0, 96, 2, dtype=torch.float64) / 96)
    short = torch.tensor(PHI3_SHORT_FACTOR, dtype=torch.float64)
    long = torch.tensor(PHI3_LONG_FACTOR, dtype=torch.float64)
    for seq_len in (None, 1, 4095, 4096):
        torch.testing.assert_close(
            inv_freq_and_scale(**kw, seq_len=seq_len)[0], base / short, rtol=1e-15, atol=0
        )
    for seq_len in (4097, 131072, 10**6):
        torch.testing.assert_close(
            inv_freq_and_scale(**kw, seq_len=seq_len)[0], base / long, rtol=1e-15, atol=0
        )


def test_longrope_matches_hf_module_state():
    """Phi3RotaryEmbedding swaps short/long inside forward; our seq_len must pick the same set."""
    config = phi3_mini_128k()
    module = Phi3RotaryEmbedding(config)
    kw = parse_hf_config(phi3_mini_128k())
    x = torch.zeros(1, dtype=torch.float32)
    for seq_len in (16, 4096, 4097, 16, 5000):
        module(x, torch.arange(seq_len)[None])
        inv, scale = inv_freq_and_scale(**kw, seq_len=seq_len)
        assert_rel(inv, module.inv_freq)
        assert scale == pytest.approx(module.attention_scaling, rel=1e-12)


def test_dynamic_matches_hf_module_state():
    """LlamaRotaryEmbedding regrows the NTK base as the sequence grows and resets below the original max."""
    module = LlamaRotaryEmbedding(llama_dynamic())
    kw = parse_hf_config(llama_dynamic())
    original, _ = inv_freq_and_scale(**kw)
    x = torch.zeros(1, dtype=torch.float32)
    # Growing lengths (HF recomputes each time), then a drop below 4096 (HF resets).
    for seq_len in (100, 4096, 4097, 5000, 8192, 20000, 100):
        module(x, torch.arange(seq_len)[None])
        inv, _ = inv_freq_and_scale(**kw, seq_len=seq_len)
        assert_rel(inv, module.inv_freq)
        if seq_len <= 4096:
            assert torch.equal(inv, original)
        else:
            assert bool((inv[1:] < original[1:]).all())  # a larger base means slower rotations


def test_dynamic_formula():
    inv, _ = inv_freq_and_scale(
        64, scaling={"rope_type": "dynamic", "factor": 4.0}, seq_len=8192, max_position_embeddings=2048
    )
    new_base = 10000.0 * (4.0 * 8192 / 2048 - 3.0) ** (64 / 62)
    expected = new_base ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    torch.testing.assert_close(inv, expected, rtol=1e-14, atol=0)


def test_end_to_end_cos_sin_vs_hf_module():
    """Tables times attention factor reproduce HF's cos/sin (first half of HF's duplicated layout)."""
    config = qwen25_7b_yarn()
    module = LlamaRotaryEmbedding(config)
    cos_hf, sin_hf = module(torch.zeros(1, dtype=torch.float32), torch.arange(64)[None])
    inv, scale = inv_freq_and_scale(**parse_hf_config(qwen25_7b_yarn()))
    assert scale != 1.0
    cos, sin = cos_sin_tables(inv, 64, attention_factor=scale)
    # HF's float32 angles lose ~1e-7 relative; at positions < 64 that is well under 1e-5.
    torch.testing.assert_close(cos, cos_hf[0, :, :64], rtol=0, atol=1e-5)
    torch.testing.assert_close(sin, sin_hf[0, :, :64], rtol=0, atol=1e-5)
    torch.testing.assert_close(cos_hf[0, :, 64:], cos_hf[0, :, :64])


def test_proportional_layout():
    inv, scale = inv_freq_and_scale(
        512, scaling={"rope_type": "proportional", "partial_rotary_factor": 0.25}, base=1e6
    )
    assert inv.shape == (256,) and scale == 1.0
    assert bool((inv[:64] > 0).all()) and bool((inv[64:] == 0).all())
    # Spaced for the full 512-dim head, not for the 128 rotated dims.
    expected = 1e6 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 512)
    torch.testing.assert_close(inv[:64], expected, rtol=1e-15, atol=0)
    # An explicit rotary_dim overrides partial_rotary_factor for the count of rotated dims.
    inv2, _ = inv_freq_and_scale(512, base=1e6, rotary_dim=128, scaling={"rope_type": "proportional"})
    assert torch.equal(inv, inv2)
    # Zero frequency = identity rotation.
    cos, sin = cos_sin_tables(inv, 1000)
    assert bool((cos[:, 64:] == 1).all()) and bool((sin[:, 64:] == 0).all())


def test_rotary_dim_and_base_options():
    full, _ = inv_freq_and_scale(128)
    assert full.shape == (64,)
    assert full[0] == 1.0 and full[-1] == pytest.approx(10000.0 ** (-126 / 128), rel=1e-15)
    part, _ = inv_freq_and_scale(128, rotary_dim=32)
    torch.testing.assert_close(
        part, 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32), rtol=1e-15, atol=0
    )
    same, _ = inv_freq_and_scale(128, scaling={"partial_rotary_factor": 0.25})
    assert torch.equal(part, same)
    # Explicit rotary_dim wins over partial_rotary_factor.
    assert inv_freq_and_scale(128, rotary_dim=64, scaling={"partial_rotary_factor": 0.25})[0].shape == (32,)
    # rope_theta in the dict (transformers 5 style) is the base; an equal explicit base is fine.
    a, _ = inv_freq_and_scale(128, scaling={"rope_theta": 500000.0})
    b, _ = inv_freq_and_scale(128, base=500000.0)
    c, _ = inv_freq_and_scale(128, base=500000.0, scaling={"rope_theta": 500000.0})
    assert torch.equal(a, b) and torch.equal(b, c)
    # Legacy "type" key and a None rope_type mean the same as rope_type.
    d, _ = inv_freq_and_scale(128, scaling={"type": "linear", "factor": 2.0})
    torch.testing.assert_close(d, full / 2, rtol=1e-15, atol=0)
    assert torch.equal(inv_freq_and_scale(128, scaling={"rope_type": None})[0], full)
    assert set(ROPE_TYPES) == {"default", "linear", "dynamic", "yarn", "longrope", "llama3", "proportional"}


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------

_L3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
_YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
_LONG = {
    "rope_type": "longrope",
    "short_factor": [1.0] * 32,
    "long_factor": [2.0] * 32,
    "original_max_position_embeddings": 4096,
    "factor": 8.0,
}


def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


ERROR_CASES = [
    # id, kwargs for inv_freq_and_scale(64, ...), regex naming the key
    ("unknown-rope_type", {"scaling": {"rope_type": "ntk-by-parts"}}, r"rope_type"),
    ("unknown-legacy-type", {"scaling": {"type": "su"}}, r"rope_type"),
    ("scaling-not-dict", {"scaling": [("rope_type", "linear")]}, r"scaling"),
    ("linear-missing-factor", {"scaling": {"rope_type": "linear"}}, r"\bfactor\b"),
    ("linear-factor-below-1", {"scaling": {"rope_type": "linear", "factor": 0.5}}, r"\bfactor\b"),
    ("linear-factor-str", {"scaling": {"rope_type": "linear", "factor": "4"}}, r"\bfactor\b"),
    ("linear-factor-bool", {"scaling": {"rope_type": "linear", "factor": True}}, r"\bfactor\b"),
    ("linear-factor-nan", {"scaling": {"rope_type": "linear", "factor": float("nan")}}, r"\bfactor\b"),
    ("dynamic-missing-factor", {"scaling": {"rope_type": "dynamic"}}, r"\bfactor\b"),
    ("dynamic-no-max-pos", {"scaling": {"rope_type": "dynamic", "factor": 2.0}, "seq_len": 9000},
     r"max_position_embeddings"),
    ("dynamic-rotary-dim-2", {"scaling": {"rope_type": "dynamic", "factor": 2.0}, "rotary_dim": 2},
     r"rotary_dim"),
    ("yarn-missing-factor", {"scaling": _without(_YARN, "factor")}, r"\bfactor\b"),
    ("yarn-factor-none-no-max-pos", {"scaling": {**_YARN, "factor": None}}, r"max_position_embeddings"),
    ("yarn-missing-original", {"scaling": _without(_YARN, "original_max_position_embeddings")},
     r"original_max_position_embeddings"),
    ("yarn-original-float", {"scaling": {**_YARN, "original_max_position_embeddings": 4096.5}},
     r"original_max_position_embeddings"),
    ("yarn-attention-factor-negative", {"scaling": {**_YARN, "attention_factor": -1.0}}, r"attention_factor"),
    ("yarn-beta-order", {"scaling": {**_YARN, "beta_fast": 1, "beta_slow": 32}}, r"beta_fast"),
    ("yarn-beta-slow-negative", {"scaling": {**_YARN, "beta_slow": -1}}, r"beta_slow"),
    ("yarn-truncate-str", {"scaling": {**_YARN, "truncate": "yes"}}, r"truncate"),
    ("yarn-mscale-str", {"scaling": {**_YARN, "mscale": "0.7", "mscale_all_dim": 1.0}}, r"mscale"),
    ("longrope-missing-short", {"scaling": _without(_LONG, "short_factor")}, r"short_factor"),
    ("longrope-missing-long", {"scaling": _without(_LONG, "long_factor")}, r"long_factor"),
    ("longrope-long-wrong-length", {"scaling": {**_LONG, "long_factor": [2.0] * 48}}, r"long_factor"),
    ("longrope-short-zero", {"scaling": {**_LONG, "short_factor": [0.0] * 32}}, r"short_factor"),
    ("longrope-short-not-list", {"scaling": {**_LONG, "short_factor": 1.0}}, r"short_factor"),
    ("longrope-no-factor-no-max-pos", {"scaling": _without(_LONG, "factor")}, r"max_position_embeddings"),
    ("llama3-missing-low", {"scaling": _without(_L3, "low_freq_factor")}, r"low_freq_factor"),
    ("llama3-missing-high", {"scaling": _without(_L3, "high_freq_factor")}, r"high_freq_factor"),
    ("llama3-high-below-low", {"scaling": {**_L3, "high_freq_factor": 0.5}}, r"high_freq_factor"),
    ("llama3-low-zero", {"scaling": {**_L3, "low_freq_factor": 0.0}}, r"low_freq_factor"),
    ("llama3-missing-factor", {"scaling": _without(_L3, "factor")}, r"\bfactor\b"),
    ("llama3-missing-original", {"scaling": _without(_L3, "original_max_position_embeddings")},
     r"original_max_position_embeddings"),
    ("rotary-dim-odd", {"rotary_dim": 33}, r"rotary_dim"),
    ("rotary-dim-zero", {"rotary_dim": 0}, r"rotary_dim"),
    ("rotary-dim-too-big", {"rotary_dim": 66}, r"rotary_dim"),
    ("rotary-dim-float", {"rotary_dim": 32.0}, r"rotary_dim"),
    ("partial-odd-rotary-dim", {"scaling": {"partial_rotary_factor": 0.5}, "head_dim": 10}, r"rotary_dim"),
    ("partial-zero", {"scaling": {"partial_rotary_factor": 0.0}}, r"partial_rotary_factor"),
    ("partial-above-1", {"scaling": {"partial_rotary_factor": 1.5}}, r"partial_rotary_factor"),
    ("proportional-rotates-nothing",
     {"scaling": {"rope_type": "proportional", "partial_rotary_factor": 0.01}}, r"partial_rotary_factor"),
    ("head-dim-zero", {"head_dim": 0}, r"head_dim"),
    ("head-dim-str", {"head_dim": "64"}, r"head_dim"),
    ("base-one", {"base": 1.0}, r"base"),
    ("base-negative", {"base": -10000.0}, r"base"),
    ("rope-theta-str", {"scaling": {"rope_theta": "1e6"}}, r"rope_theta"),
    ("rope-theta-conflict", {"base": 500000.0, "scaling": {"rope_theta": 10000.0}}, r"rope_theta"),
    ("seq-len-zero", {"seq_len": 0}, r"seq_len"),
    ("max-pos-negative", {"max_position_embeddings": -1}, r"max_position_embeddings"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, key", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_inv_freq_and_scale_errors(kwargs, key):
    kwargs = dict(kwargs)
    head_dim = kwargs.pop("head_dim", 64)
    with pytest.raises(ValueError, match=key):
        inv_freq_and_scale(head_dim, **kwargs)


def test_table_function_errors():
    inv, _ = inv_freq_and_scale(64)
    with pytest.raises(ValueError, match="num_positions"):
        cos_sin_tables(inv, 0)
    with pytest.raises(ValueError, match="attention_factor"):
        cos_sin_tables(inv, 8, attention_factor="2")
    with pytest.raises(ValueError, match="low_bits"):
        split_tables(inv, 1024, low_bits=-1)
    with pytest.raises(ValueError, match="low_bits"):
        split_tables(inv, 1024, low_bits=31)
    with pytest.raises(ValueError, match="num_positions"):
        split_tables(inv, 0, low_bits=4)
    with pytest.raises(ValueError, match="num_positions"):
        default_low_bits(0)
    for bad in (2, 3, 7, 0, 8.0):
        with pytest.raises(ValueError, match="dim"):
            seed_inv_freq(bad)


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------


def test_angles():
    inv = torch.tensor([1.0, 0.25, 1e-4], dtype=torch.float32)
    pos = torch.tensor([[0, 1], [7, 1 << 20]])
    a = angles(inv, pos)
    assert a.dtype == torch.float64 and a.shape == (2, 2, 3)
    expected = pos.to(torch.float64)[..., None] * inv.to(torch.float64)
    assert torch.equal(a, expected)
    assert a[1, 1, 2].item() == (1 << 20) * float(inv[2])


@pytest.mark.parametrize(
    "dtype, atol, n",
    [
        (torch.float32, 1.2e-7, 70000),  # more than one internal chunk (65536 rows at 64 pairs)
        (torch.bfloat16, 2**-8, 4096),
        (torch.float64, 1e-15, 4096),
    ],
)
def test_cos_sin_tables_match_float64_math(dtype, atol, n):
    inv, scale = inv_freq_and_scale(**parse_hf_config(qwen25_7b_yarn()))
    cos, sin = cos_sin_tables(inv, n, attention_factor=scale, dtype=dtype)
    assert cos.shape == sin.shape == (n, 64) and cos.dtype == sin.dtype == dtype
    theta = torch.arange(n, dtype=torch.float64)[:, None] * inv[None, :]
    torch.testing.assert_close(cos.double(), torch.cos(theta) * scale, rtol=0, atol=atol * scale)
    torch.testing.assert_close(sin.double(), torch.sin(theta) * scale, rtol=0, atol=atol * scale)


def test_cos_sin_tables_large_positions_are_accurate():
    inv = inv_freq_and_scale(128, base=500000.0)[0][[0, 1, 17, 63]]  # 4 pairs keep this fast
    cos, sin = cos_sin_tables(inv, 2**20)
    p = 2**20 - 1
    for i in range(4):
        theta = p * float(inv[i])
        assert abs(float(cos[p, i]) - math.cos(theta)) <= 6e-8
        assert abs(float(sin[p, i]) - math.sin(theta)) <= 6e-8


def _recombine(tables, positions, low_bits):
    ch, sh, cl, sl = (t.double() for t in tables)
    hi, lo = positions >> low_bits, positions & ((1 << low_bits) - 1)
    cos = ch[hi] * cl[lo] - sh[hi] * sl[lo]
    sin = sh[hi] * cl[lo] + ch[hi] * sl[lo]
    return cos, sin


def _probe_positions(n):
    edges = torch.tensor(
        [0, 1, 2, 1023, 1024, 1025, 4095, 4096, 8191, 8192, 65535, 65536, 131071, n - 2, n - 1]
    )
    return torch.cat([edges[edges < n], torch.randint(0, n, (20000,))])


@pytest.mark.parametrize("scale", [1.0, 1.1902380714238083])
def test_split_tables_recombine_exactly(scale):
    n = 2**20
    inv, _ = inv_freq_and_scale(**parse_hf_config(llama31_8b()))
    low_bits = default_low_bits(n)
    tables = split_tables(inv, n, low_bits=low_bits, attention_factor=scale)
    cos_hi, sin_hi, cos_lo, sin_lo = tables
    assert all(t.dtype == torch.float32 for t in tables)
    assert cos_hi.shape == sin_hi.shape == (n >> low_bits, 64)
    assert cos_lo.shape == sin_lo.shape == (1 << low_bits, 64)
    assert sum(t.numel() * t.element_size() for t in tables) <= 16 * 2**20

    pos = _probe_positions(n)
    cos, sin = _recombine(tables, pos, low_bits)
    theta = pos.to(torch.float64)[:, None] * inv[None, :]
    assert (cos - scale * torch.cos(theta)).abs().max().item() <= 3e-7 * scale
    assert (sin - scale * torch.sin(theta)).abs().max().item() <= 3e-7 * scale

    # The same check fails for the naive fp32 angle, so the threshold is meaningful.
    naive = torch.cos(pos.float()[:, None] * inv.float()[None, :]).double()
    assert (naive - torch.cos(theta)).abs().max().item() > 1e-3


def test_split_tables_odd_sizes():
    inv, _ = inv_freq_and_scale(32, base=10000.0)
    tables = split_tables(inv, 1000, low_bits=5)
    assert tables[0].shape == (32, 16) and tables[2].shape == (32, 16)  # ceil(1000 / 32) = 32
    pos = torch.arange(1000)
    cos, sin = _recombine(tables, pos, 5)
    theta = pos.to(torch.float64)[:, None] * inv[None, :]
    torch.testing.assert_close(cos, torch.cos(theta), rtol=0, atol=3e-7)
    torch.testing.assert_close(sin, torch.sin(theta), rtol=0, atol=3e-7)
    # low_bits = 0: the hi table is the full table and lo is the identity row.
    ch, sh, cl, sl = split_tables(inv, 10, low_bits=0, attention_factor=2.0)
    assert ch.shape == (10, 16) and cl.shape == (1, 16)
    assert bool((cl == 1).all()) and bool((sl == 0).all())
    full_cos, full_sin = cos_sin_tables(inv, 10, attention_factor=2.0)
    assert torch.equal(ch, full_cos) and torch.equal(sh, full_sin)


def test_default_low_bits_minimizes_rows():
    assert default_low_bits(2**20) == 10
    assert default_low_bits(1) == 0
    # Ties go to the smaller low table: n = 2 (2 + 1 = 1 + 2 rows), n = 8 (4 + 2 = 2 + 4 rows).
    assert default_low_bits(2) == 0 and default_low_bits(8) == 1
    for n in (1, 2, 3, 5, 100, 1000, 4096, 5000, 131072, 10**6, 2**20 + 1):
        bits = default_low_bits(n)
        rows = -(-n // 2**bits) + 2**bits
        assert rows == min(-(-n // 2**b) + 2**b for b in range(0, 40)), n


def test_seed_inv_freq():
    for dim in (4, 6, 64, 128):
        s = seed_inv_freq(dim)
        assert s.shape == (dim // 2,) and s.dtype == torch.float64
        tutorial = (1 / 10000) ** torch.linspace(0, 1, dim // 4)  # float32, as in the tutorial
        torch.testing.assert_close(s[: dim // 4], tutorial.double(), rtol=1e-6, atol=0)
        assert torch.equal(s[: dim // 4], (1 / 10000) ** torch.linspace(0, 1, dim // 4, dtype=torch.float64))
        assert bool((s[dim // 4 :] == 0).all())
    s = seed_inv_freq(128)
    assert s[0] == 1.0 and s[31] == pytest.approx(1e-4, rel=1e-15) and int((s == 0).sum()) == 32


# ------------------------------------------------------------------------------------------------
# parse_hf_config
# ------------------------------------------------------------------------------------------------


def test_parse_llama31():
    cfg = parse_hf_config(llama31_8b())
    assert cfg == {
        "head_dim": 128,
        "base": 500000.0,
        "max_position_embeddings": 131072,
        "scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    }


def test_parse_qwen2_phi3_gptneox_llama2():
    q = parse_hf_config(qwen25_7b_yarn())
    assert q["head_dim"] == 128 and q["base"] == 1e6 and q["max_position_embeddings"] == 32768
    assert q["scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}

    p = parse_hf_config(phi3_mini_128k())
    assert p["head_dim"] == 96 and p["base"] == 10000.0 and p["max_position_embeddings"] == 131072
    assert p["scaling"]["rope_type"] == "longrope"
    assert p["scaling"]["original_max_position_embeddings"] == 4096
    assert p["scaling"]["long_factor"] == PHI3_LONG_FACTOR and len(p["scaling"]["short_factor"]) == 48

    g = parse_hf_config(pythia_1b4())
    assert g["head_dim"] == 128 and g["base"] == 10000.0
    assert g["scaling"] == {"rope_type": "default", "partial_rotary_factor": 0.25}
    assert inv_freq_and_scale(**g)[0].shape == (16,)

    d = parse_hf_config(llama2_7b())
    assert d == {
        "head_dim": 128,
        "base": 10000.0,
        "scaling": {"rope_type": "default"},
        "max_position_embeddings": 4096,
    }


def test_parse_config_with_rope_scaling():
    cfg = parse_hf_config(
        LlamaConfig(
            hidden_size=2048,
            num_attention_heads=16,
            rope_theta=20000.0,
            rope_scaling={"type": "linear", "factor": 4.0},
        )
    )
    assert cfg["scaling"] == {"rope_type": "linear", "factor": 4.0} and cfg["base"] == 20000.0
    inv, _ = inv_freq_and_scale(**cfg)
    torch.testing.assert_close(
        inv, 20000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128) / 4, rtol=1e-15, atol=0
    )


def test_parse_transformers4_style_objects():
    # transformers 4.x kept rope_theta as an attribute and rope_scaling with the legacy "type" key.
    llama = SimpleNamespace(
        hidden_size=4096,
        num_attention_heads=32,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    )
    cfg = parse_hf_config(llama)
    assert cfg == {
        "head_dim": 128,
        "base": 10000.0,
        "max_position_embeddings": 4096,
        "scaling": {"rope_type": "dynamic", "factor": 2.0},
    }
    assert_rel(inv_freq_and_scale(**cfg, seq_len=9000)[0], _hf(llama_dynamic(), "dynamic", 9000)[0])

    neox = SimpleNamespace(
        hidden_size=2048,
        num_attention_heads=16,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=2048,
        rope_scaling=None,
    )
    cfg = parse_hf_config(neox)
    assert (
        cfg["scaling"] == {"rope_type": "default", "partial_rotary_factor": 0.25} and cfg["base"] == 10000.0
    )

    # Phi-3's first configs said "su"; its pretraining length is an attribute that wins over the dict.
    phi3 = SimpleNamespace(
        hidden_size=3072,
        num_attention_heads=32,
        max_position_embeddings=131072,
        original_max_position_embeddings=4096,
        rope_theta=10000.0,
        model_type="phi3",
        rope_scaling={
            "type": "su",
            "short_factor": PHI3_SHORT_FACTOR,
            "long_factor": PHI3_LONG_FACTOR,
            "original_max_position_embeddings": 2048,
        },
    )
    cfg = parse_hf_config(phi3)
    assert (
        cfg["scaling"]["rope_type"] == "longrope"
        and cfg["scaling"]["original_max_position_embeddings"] == 4096
    )
    inv, scale = inv_freq_and_scale(**cfg, seq_len=8000)
    ref_inv, ref_scale = _hf(phi3_mini_128k(), "longrope", 8000)
    assert_rel(inv, ref_inv)
    assert scale == pytest.approx(ref_scale, rel=1e-12)

    # A plain config.json dict, with GPT-J's explicit rotary_dim.
    gptj = {
        "n_embd": 4096,
        "hidden_size": 4096,
        "num_attention_heads": 16,
        "rotary_dim": 64,
        "n_positions": 2048,
    }
    cfg = parse_hf_config(gptj)
    assert cfg["rotary_dim"] == 64 and cfg["head_dim"] == 256 and cfg["max_position_embeddings"] is None
    assert inv_freq_and_scale(**cfg)[0].shape == (32,)


def test_parse_nested_rope_parameters():
    cfg_obj = SimpleNamespace(
        head_dim=256,
        hidden_size=2048,
        num_attention_heads=8,
        max_position_embeddings=131072,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            "full_attention": {
                "rope_type": "proportional",
                "partial_rotary_factor": 0.25,
                "rope_theta": 1000000.0,
            },
        },
    )
    with pytest.raises(ValueError, match="layer_type"):
        parse_hf_config(cfg_obj)
    with pytest.raises(ValueError, match="layer_type"):
        parse_hf_config(cfg_obj, layer_type="conv")
    full = parse_hf_config(cfg_obj, layer_type="full_attention")
    assert full["base"] == 1e6 and full["scaling"] == {
        "rope_type": "proportional",
        "partial_rotary_factor": 0.25,
    }
    sliding = parse_hf_config(cfg_obj, layer_type="sliding_attention")
    assert sliding["base"] == 10000.0 and sliding["scaling"] == {"rope_type": "default"}


GEMMA3_SCALING = {"rope_type": "linear", "factor": 8.0}  # gemma-3-4b/12b/27b: global layers only


def gemma3_4b():
    """Gemma 3 4B's text config (transformers 5.x nests rope_parameters by layer type)."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=2560, num_attention_heads=8, num_key_value_heads=4, head_dim=256,
        max_position_embeddings=131072, rope_scaling=dict(GEMMA3_SCALING),
    )  # fmt: skip


def gemma3_4b_transformers4_json():
    """The same model's config.json as transformers 4.x wrote it: rope_theta and rope_scaling for the global
    layers, rope_local_base_freq for the sliding ones."""
    return {
        "model_type": "gemma3_text", "hidden_size": 2560, "num_attention_heads": 8, "head_dim": 256,
        "max_position_embeddings": 131072, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
        "rope_scaling": dict(GEMMA3_SCALING), "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
    }  # fmt: skip


@pytest.mark.parametrize("style", ["transformers5", "transformers4-json"])
def test_parse_gemma3_layer_types(style):
    config = gemma3_4b if style == "transformers5" else gemma3_4b_transformers4_json
    full = parse_hf_config(config(), layer_type="full_attention")
    sliding = parse_hf_config(config(), layer_type="sliding_attention")
    assert full == {"head_dim": 256, "base": 1e6, "scaling": GEMMA3_SCALING,
                    "max_position_embeddings": 131072}
    assert sliding == {"head_dim": 256, "base": 10000.0, "scaling": {"rope_type": "default"},
                       "max_position_embeddings": 131072}
    # Each layer type's frequencies are those of transformers' Gemma 3 rotary embedding.
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    hf = Gemma3RotaryEmbedding(gemma3_4b())
    for kw, layer_type in ((full, "full_attention"), (sliding, "sliding_attention")):
        inv, scale = inv_freq_and_scale(**kw)
        assert_rel(inv, getattr(hf, f"{layer_type}_inv_freq"))
        assert scale == getattr(hf, f"{layer_type}_attention_scaling")
    # The layers differ: without layer_type there is no answer; an unknown one is named.
    for bad, match in ((None, "^layer_type: .*expected one of .*full_attention.*sliding_attention.*got None"),
                       ("conv", "^layer_type: expected one of .*got 'conv'")):
        with pytest.raises(ValueError, match=match):
            parse_hf_config(config(), layer_type=bad)


def test_parse_does_not_alias_config():
    config = phi3_mini_128k()
    cfg = parse_hf_config(config)
    cfg["scaling"]["long_factor"][0] = 99.0
    cfg["scaling"]["rope_type"] = "linear"
    assert config.rope_parameters["long_factor"][0] == PHI3_LONG_FACTOR[0]
    assert config.rope_parameters["rope_type"] == "longrope"


def test_parse_errors():
    with pytest.raises(ValueError, match="head_dim"):
        parse_hf_config(SimpleNamespace(rope_theta=10000.0))


def test_freq_table_gives_exact_angles_at_any_position():
    # Against exact rational arithmetic on the float64 inv_freq (pi to 60 digits): the fixed-point rows
    # lose at most 3 chunks x 4095 x 2**-49 turns, i.e. ~1e-10 rad, at positions up to 2**31 - 1.
    from fractions import Fraction

    inv_freq, scale = inv_freq_and_scale(128, base=500000.0)
    table = freq_table(inv_freq, attention_factor=scale)
    assert table.shape == (4, 64) and table.dtype == torch.int64
    assert torch.equal(freq_table_factor(table), torch.full((64,), scale, dtype=torch.float32))
    positions = torch.tensor([0, 1, 4095, 4096, 2**24 - 1, 2**24, 123_456_789, 2**31 - 1])
    got = freq_table_angles(table, positions)
    two_pi = 2 * Fraction("3.14159265358979323846264338327950288419716939937510582097494459")
    worst = 0.0
    for i, p in enumerate(positions.tolist()):
        for j in range(0, 64, 7):
            exact = Fraction(p) * Fraction(float(inv_freq[j]))
            exact -= (exact // two_pi) * two_pi
            diff = abs(float(exact) - got[i, j].item())
            worst = max(worst, min(diff, 2 * math.pi - diff))
    assert worst < 2e-10


@pytest.mark.parametrize(
    "inv_freq, error, match",
    [
        ([0.5, 0.25], TypeError, "inv_freq: expected a 1-D floating-point tensor, got list"),
        (torch.ones(2, 4), TypeError, r"got torch.float32 of shape \(2, 4\)"),
        (torch.arange(4), TypeError, "inv_freq: expected a 1-D floating-point tensor, got torch.int64"),
        (torch.tensor([0.5, float("nan")]), ValueError, "inv_freq: expected finite values"),
        (torch.tensor([0.5, float("inf")]), ValueError, "inv_freq: expected finite values"),
    ],
    ids=["list", "2-d", "int", "nan", "inf"],
)
def test_freq_table_rejects_bad_inv_freq(inv_freq, error, match):
    with pytest.raises(error, match=match):
        freq_table(inv_freq)
