"""Tests for the ``nn.Module`` front ends: :class:`RotaryEmbedding` and the tutorial's :class:`TritonRotary`.

Parity with Hugging Face uses real model configs built offline from transformers' config classes (random
weights, nothing downloaded), each model's own rotary class and ``apply_rotary_pos_emb``, in float32.

Every tolerance is derived, never picked. Both implementations are compared with a float64 rotation by the
exact angles ``p * inv_freq`` (float64 frequencies of :mod:`rope_triton.angles`, float64 cos/sin). With
u = 2**-24 (float32 unit roundoff), A the attention factor and m = |x1| + |x2| of an element's pair:

- ours: every table entry is a float32 rounding of a float64 value (error u each); the kernel's
  angle-addition ``cos = ch * cl - sh * sl`` adds 3u per product and u for the difference, i.e. at most
  4uA (since |ch cl| + |sh sl| <= A); the rotation ``x1 c - x2 s`` then adds 2uA m. So |err| <= 6uA m:
  ``helpers.assert_rotary_close`` with ``table_bound = 3 A`` (its bound is 2u * table_bound * m, plus
  half an ulp of the result).
- ours with ``freqs=`` (cos/sin computed in the kernel): cos/sin within 3uA of the exact values (measured
  1.6u at A = 1, 2.9u at A = 1.2; test_kernel), plus the rotation's 2uA: within the same 6uA m for A >= 1.
- Hugging Face: its float32 angle ``fl(p * inv_hf)`` is off the exact ``p * inv`` by
  ``dtheta = p |inv_hf - inv| + u p inv_hf`` (p itself is exact in float32 below 2**24); then float32
  cos/sin (<= 2 ulp <= 2u below 1), the product with A (u) and the rotation (2u):
  |err| <= A m (dtheta + 5u), plus half an ulp of the result.

``inv_hf`` is HF's own float32 frequency vector; a guard first checks that it is within 16 float32 ulps of
ours (their pow/divide in float32), so the HF bound is rounding of the same frequencies, not a different
formula. (Frequency and attention-factor values themselves are tested in test_freqs.py.)
"""

from __future__ import annotations

import pytest
import torch
from helpers import LAYOUTS, assert_rotary_close, make_qk, pair_magnitude, ulp
from transformers import GPTJConfig, GPTNeoXConfig, Llama4TextConfig, LlamaConfig, Phi3Config, Qwen2Config
from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox
from transformers.models.gptj import modeling_gptj as hf_gptj
from transformers.models.llama import modeling_llama as hf_llama
from transformers.models.llama4 import modeling_llama4 as hf_llama4
from transformers.models.phi3 import modeling_phi3 as hf_phi3
from transformers.models.qwen2 import modeling_qwen2 as hf_qwen2

import rope_triton
from rope_triton import RotaryEmbedding, TritonRotary, reference
from rope_triton._core.op import triton_runs_on
from rope_triton.angles import inv_freq_and_scale, parse_hf_config

U = 2.0**-24
TABLES = ("cos_hi", "sin_hi", "cos_lo", "sin_lo")

from hf_factors import PHI3_LONG_FACTOR, PHI3_SHORT_FACTOR  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Real configs, shrunk to 2 heads (head_dim and every rope parameter as published). Factories, because
# transformers standardizes (mutates) a config's rope dict when a rotary module reads it.
# ------------------------------------------------------------------------------------------------


def llama31_8b():
    return LlamaConfig(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        max_position_embeddings=131072, rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    )  # fmt: skip


def qwen25_yarn():
    # Qwen2.5-7B-Instruct with the YaRN block its model card gives for 128k contexts.
    return Qwen2Config(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32768,
        rope_theta=1000000.0,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    )  # fmt: skip


def phi3_mini_128k():
    return Phi3Config(
        hidden_size=192, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=131072,
        original_max_position_embeddings=4096, rope_theta=10000.0,
        rope_scaling={"type": "longrope", "short_factor": list(PHI3_SHORT_FACTOR),
                      "long_factor": list(PHI3_LONG_FACTOR)},
    )  # fmt: skip


def llama_dynamic():
    return LlamaConfig(
        hidden_size=256, num_attention_heads=2, max_position_embeddings=4096,
        rope_scaling={"type": "dynamic", "factor": 2.0},
    )  # fmt: skip


def llama_dynamic_original_2048():
    # original_max_position_embeddings differs from max_position_embeddings: HF's reset threshold is the
    # latter.
    return LlamaConfig(
        hidden_size=256, num_attention_heads=2, max_position_embeddings=4096,
        rope_scaling={"type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 2048},
    )  # fmt: skip


def llama_linear4():
    return LlamaConfig(
        hidden_size=256, num_attention_heads=2, max_position_embeddings=16384,
        rope_scaling={"type": "linear", "factor": 4.0},
    )  # fmt: skip


def pythia():
    # GPT-NeoX / Pythia: rotary_pct 0.25 of head_dim 128 -> 32 rotated dims.
    return GPTNeoXConfig(
        hidden_size=256, num_attention_heads=2, rotary_pct=0.25, max_position_embeddings=2048
    )


def llama2_7b():
    return LlamaConfig(hidden_size=256, num_attention_heads=2, max_position_embeddings=4096)


def llama4_scout():
    # Llama 4 Scout's text attention: llama3 scaling with low_freq_factor == high_freq_factor (a step at
    # 8192, no blended band), adjacent pairs.
    return Llama4TextConfig(
        hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128,
        max_position_embeddings=10485760,
        rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 16.0, "low_freq_factor": 1.0,
            "high_freq_factor": 1.0, "original_max_position_embeddings": 8192,
        },
    )  # fmt: skip


def gptj_6b():
    # GPT-J-6B: head_dim 4096 / 16 = 256, rotary_dim 64, interleaved pairs.
    return GPTJConfig(n_embd=512, n_head=2, n_layer=1, rotary_dim=64, n_positions=2048)


# ------------------------------------------------------------------------------------------------
# References and bounds
# ------------------------------------------------------------------------------------------------


def exact_rotary(x, pos, inv64, scale, *, layout="bhsd", interleaved=False):
    """float64 rotation of ``x`` by the exact angles ``pos * inv64`` (times ``scale``); autograd-friendly.

    ``pos``: positions of each token as (B, S) (``thd``: (1, T)). Pairs (i, i + R/2), or (2i, 2i + 1).
    """
    xb = reference.to_bshd(x, layout).to(torch.float64)
    half = inv64.numel()
    theta = pos.to(torch.float64)[..., None] * inv64.to(device=x.device, dtype=torch.float64)
    c = (torch.cos(theta) * scale)[:, :, None, :]
    s = (torch.sin(theta) * scale)[:, :, None, :]
    rot = xb[..., : 2 * half]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., :half], rot[..., half:])
    y1, y2 = x1 * c - x2 * s, x2 * c + x1 * s
    y = torch.stack((y1, y2), -1).flatten(-2) if interleaved else torch.cat((y1, y2), -1)
    return reference.from_bshd(torch.cat((y, xb[..., 2 * half :]), -1), layout)


def assert_ours_close(out, ref, x, *, scale, rotary_dim, layout="bhsd", interleaved=False):
    """Our kernel with split tables: |err| <= 6 u A m (see the module docstring)."""
    assert_rotary_close(
        out, ref, x, layout=layout, rotary_dim=rotary_dim, interleaved=interleaved, table_bound=3.0 * scale
    )


def assert_hf_close(out, ref, x, pos, inv64, inv_hf, scale, *, interleaved=False):
    """HF's float32 pipeline (bhsd): |err| <= A m (p |inv_hf - inv| + u p inv_hf + 5u) + ulp/2."""
    inv_hf = inv_hf.to(device=x.device, dtype=torch.float64)
    inv64 = inv64.to(device=x.device, dtype=torch.float64)
    p = pos.to(torch.float64)[..., None]  # (B, S, 1)
    dtheta = p * (inv_hf - inv64).abs() + U * p * inv_hf  # (B, S, R/2)
    per_pair = scale * (dtheta + 5 * U)
    half = inv64.numel()
    per_dim = torch.stack((per_pair, per_pair), -1).flatten(-2) if interleaved else per_pair.repeat(1, 1, 2)
    tail = torch.zeros(*per_dim.shape[:2], x.shape[-1] - 2 * half, dtype=torch.float64, device=x.device)
    per_dim = torch.cat((per_dim, tail), -1)[:, None]  # (B, 1, S, D): bhsd
    tol = pair_magnitude(x, "bhsd", 2 * half, interleaved) * per_dim
    tol = tol + 0.5 * ulp(ref.abs() + tol, torch.float32)
    err = (out.double() - ref).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"HF error {err.max().item():.3e} is {worst:.2f}x its derived float32 bound"


def assert_hf_frequencies_are_ours_rounded(inv_hf, inv64):
    """Guard for the HF bound: HF's float32 frequencies are ours up to float32 rounding of its formula."""
    rel = ((inv_hf.double().cpu() - inv64.cpu()).abs() / inv64.cpu()).max().item()
    assert rel <= 16 * U, f"HF frequencies differ from ours by {rel / U:.1f} float32 ulps: not rounding"


def _hf_llama_style(rotary_cls, apply_fn):
    """HF pipeline of Llama-family models: RotaryEmbedding(config)(x, position_ids) + apply_rotary_pos_emb."""

    def run(config, q, k, pos):
        rotary = rotary_cls(config).to(q.device)
        cos, sin = rotary(q, pos)
        q_hf, k_hf = apply_fn(q, k, cos, sin)
        return q_hf, k_hf, rotary.inv_freq, rotary.attention_scaling

    return run


def _hf_llama4(config, q, k, pos):
    """Llama 4's pipeline: complex freqs_cis from its rotary embedding, multiplied into adjacent pairs of q
    and k in (batch, seq, heads, dim) order by its apply_rotary_emb."""
    rotary = hf_llama4.Llama4TextRotaryEmbedding(config).to(q.device)
    freqs_cis = rotary(q, pos)
    q_hf, k_hf = hf_llama4.apply_rotary_emb(q.transpose(1, 2), k.transpose(1, 2), freqs_cis)
    return q_hf.transpose(1, 2), k_hf.transpose(1, 2), rotary.inv_freq, rotary.attention_scaling


def _hf_gptj(config, q, k, pos):
    """GPT-J's own pipeline: its sin/cos table lookup, and its attention's rotation of q[..., :rotary_dim]
    in (batch, seq, heads, dim) order by apply_rotary_pos_emb (rotate_every_two)."""
    r = config.rotary_dim
    if hasattr(hf_gptj, "GPTJRotaryEmbedding"):  # transformers >= 5.2x
        sin, cos = hf_gptj.GPTJRotaryEmbedding(config).to(q.device)(q, pos)
    else:  # older: GPTJAttention looks rows of create_sinusoidal_positions up itself
        sincos = hf_gptj.create_sinusoidal_positions(config.max_position_embeddings, r).to(q.device)[pos]
        sin, cos = torch.split(sincos, sincos.shape[-1] // 2, dim=-1)

    def one(x):
        xb = x.transpose(1, 2)
        rot = hf_gptj.apply_rotary_pos_emb(xb[..., :r], sin, cos)
        return torch.cat((rot, xb[..., r:]), -1).transpose(1, 2)

    # The float32 frequencies create_sinusoidal_positions builds its table from (not kept by the module).
    inv_hf = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.int64) / r))
    return one(q), one(k), inv_hf, 1.0


LLAMA_HF = _hf_llama_style(hf_llama.LlamaRotaryEmbedding, hf_llama.apply_rotary_pos_emb)

PARITY_CASES = [
    # id, config factory, HF pipeline, positions (batch 2), overrides of from_hf_config
    ("llama3.1-8b", llama31_8b, LLAMA_HF, [[0, 1, 2, 3], [8191, 8192, 65536, 131071]], {}),
    (
        "qwen2.5-yarn",
        qwen25_yarn,
        _hf_llama_style(hf_qwen2.Qwen2RotaryEmbedding, hf_qwen2.apply_rotary_pos_emb),
        [[0, 1, 2, 3], [4096, 32767, 65536, 131071]],
        # config.max_position_embeddings is the original 32768; yarn x4 serves 131072.
        {"max_positions": 131072},
    ),
    (
        "phi3-128k-short",
        phi3_mini_128k,
        _hf_llama_style(hf_phi3.Phi3RotaryEmbedding, hf_phi3.apply_rotary_pos_emb),
        [[0, 1, 2, 3], [100, 1000, 4000, 4095]],
        {},
    ),
    (
        "phi3-128k-long",
        phi3_mini_128k,
        _hf_llama_style(hf_phi3.Phi3RotaryEmbedding, hf_phi3.apply_rotary_pos_emb),
        [[0, 1, 2, 3], [4096, 5000, 70000, 131071]],
        {},
    ),
    ("linear-4", llama_linear4, LLAMA_HF, [[0, 1, 2, 3], [100, 4096, 10000, 16383]], {}),
    (
        "gpt-neox-partial",
        pythia,
        _hf_llama_style(hf_neox.GPTNeoXRotaryEmbedding, hf_neox.apply_rotary_pos_emb),
        [[0, 1, 2, 3], [100, 1000, 2000, 2047]],
        {},
    ),
    ("llama2-default", llama2_7b, LLAMA_HF, [[0, 1, 2, 3], [1000, 2000, 4000, 4095]], {}),
    ("gpt-j-interleaved", gptj_6b, _hf_gptj, [[0, 1, 2, 3], [100, 1000, 2000, 2047]], {"interleaved": True}),
    (
        "llama4-scout",
        llama4_scout,
        _hf_llama4,
        [[0, 1, 2, 3], [8191, 8192, 65536, 1048575]],
        {"interleaved": True},
    ),
]


# ------------------------------------------------------------------------------------------------
# 1. Parity with Hugging Face
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, hf_run, positions, overrides", [c[1:] for c in PARITY_CASES], ids=[c[0] for c in PARITY_CASES]
)
def test_parity_with_hf(factory, hf_run, positions, overrides, device):
    pos = torch.tensor(positions, device=device)
    kw = parse_hf_config(factory())
    head_dim = kw["head_dim"]
    q = torch.randn(2, 2, pos.shape[1], head_dim, device=device)
    k = torch.randn(2, 1, pos.shape[1], head_dim, device=device)

    rope = RotaryEmbedding.from_hf_config(factory(), **overrides).to(device)
    q_out, k_out = rope(q, k, positions=pos, layout="bhsd")
    q_hf, k_hf, inv_hf, scale_hf = hf_run(factory(), q, k, pos)

    # The exact reference: float64 frequencies for the longest position, as HF selects them.
    inv64, scale = inv_freq_and_scale(**kw, seq_len=int(max(map(max, positions))) + 1)
    rotary_dim = 2 * inv64.numel()
    interleaved = overrides.get("interleaved", False)
    assert rope.rotary_dim == rotary_dim and rope.interleaved == interleaved
    assert_hf_frequencies_are_ours_rounded(inv_hf, inv64)
    assert scale_hf == pytest.approx(scale, rel=1e-12)
    for out, out_hf, x in ((q_out, q_hf, q), (k_out, k_hf, k)):
        ref = exact_rotary(x, pos, inv64, scale, interleaved=interleaved)
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=rotary_dim, interleaved=interleaved)
        assert_hf_close(out_hf, ref, x, pos, inv64, inv_hf, scale, interleaved=interleaved)


def gemma3_4b():
    # transformers 5.x nests its rope_parameters by layer type: sliding layers base 10k, unscaled; full
    # attention layers base 1M, linear x8.
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        hidden_size=512, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
        max_position_embeddings=131072, rope_scaling={"rope_type": "linear", "factor": 8.0},
    )  # fmt: skip


@pytest.mark.parametrize("layer_type", ["sliding_attention", "full_attention"])
def test_parity_with_hf_per_layer_type(layer_type, device):
    from transformers.models.gemma3 import modeling_gemma3 as hf_gemma3

    pos = torch.tensor([[0, 1, 2, 3], [1000, 8191, 65536, 131071]], device=device)
    kw = parse_hf_config(gemma3_4b(), layer_type=layer_type)
    q = torch.randn(2, 2, pos.shape[1], 256, device=device)
    k = torch.randn(2, 1, pos.shape[1], 256, device=device)

    rope = RotaryEmbedding.from_hf_config(gemma3_4b(), layer_type=layer_type).to(device)
    q_out, k_out = rope(q, k, positions=pos, layout="bhsd")
    hf = hf_gemma3.Gemma3RotaryEmbedding(gemma3_4b()).to(device)
    cos, sin = hf(q, pos, layer_type)
    q_hf, k_hf = hf_gemma3.apply_rotary_pos_emb(q, k, cos, sin)
    inv_hf, scale_hf = getattr(hf, f"{layer_type}_inv_freq"), getattr(hf, f"{layer_type}_attention_scaling")

    inv64, scale = inv_freq_and_scale(**kw)
    assert rope.base == (10000.0 if layer_type == "sliding_attention" else 1e6)
    assert_hf_frequencies_are_ours_rounded(inv_hf, inv64)
    assert scale_hf == pytest.approx(scale, rel=1e-12)
    for out, out_hf, x in ((q_out, q_hf, q), (k_out, k_hf, k)):
        ref = exact_rotary(x, pos, inv64, scale)
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=256)
        assert_hf_close(out_hf, ref, x, pos, inv64, inv_hf, scale)


@pytest.mark.parametrize("factory", [llama_dynamic, llama_dynamic_original_2048])
def test_dynamic_ntk_follows_hf_module_state(factory, device):
    """HF's dynamic NTK module regrows its base past max_position_embeddings and resets below it; the same
    call sequence through both (positions tensors, and host-known lengths via offsets) must agree."""
    hf = hf_llama.LlamaRotaryEmbedding(factory()).to(device)
    rope = RotaryEmbedding.from_hf_config(factory()).to(device)
    kw = parse_hf_config(factory())
    head_dim = kw["head_dim"]
    states = set()
    # (length the call needs, whether our module sees it on the host (offsets) or in a positions tensor)
    for length, host in [(16, True), (4096, False), (4097, False), (6000, True), (9000, False),
                         (5000, False), (3000, True), (100, True), (4500, True)]:  # fmt: skip
        if host:
            pos = torch.arange(length - 4, length, device=device)[None]
            call = {"offsets": length - 4}
        else:
            pos = torch.tensor([[0, 1, length // 2, length - 1]], device=device)
            call = {"positions": pos}
        q = torch.randn(1, 2, 4, head_dim, device=device)
        q_out, _ = rope(q, layout="bhsd", **call)
        cos, sin = hf(q, pos)
        (q_hf, _) = hf_llama.apply_rotary_pos_emb(q, q, cos, sin)

        # HF's frequencies are those of its cached length (max_position_embeddings after a reset).
        cached = int(hf.max_seq_len_cached)  # a tensor once HF has grown it
        inv64, scale = inv_freq_and_scale(**kw, seq_len=cached)
        assert_hf_frequencies_are_ours_rounded(hf.inv_freq, inv64)
        states.add(cached)
        ref = exact_rotary(q, pos, inv64, scale)
        assert_ours_close(q_out, ref, q, scale=scale, rotary_dim=head_dim)
        assert_hf_close(q_hf, ref, q, pos, inv64, hf.inv_freq, scale)
    assert states == {4096, 4097, 6000, 9000, 4500}  # the sequence did grow, hold and reset


@pytest.mark.parametrize(
    "factory, rotary_cls, positions",
    [
        (qwen25_yarn, hf_qwen2.Qwen2RotaryEmbedding, [[0, 1, 5]]),
        (phi3_mini_128k, hf_phi3.Phi3RotaryEmbedding, [[0, 9000, 131071]]),
    ],
    ids=["yarn", "longrope"],
)
def test_attention_factor_applied_once(factory, rotary_cls, positions, device):
    """A rotation keeps each pair's norm, so output pair norm / input pair norm is the factor A (about 1.14
    and 1.19 here), and so is HF's sqrt(cos^2 + sin^2); not 1 (missing) or A^2 (applied twice)."""
    pos = torch.tensor(positions, device=device)
    rope = RotaryEmbedding.from_hf_config(factory(), max_positions=131072).to(device)
    half = rope.rotary_dim // 2
    x = torch.randn(1, 2, pos.shape[1], rope.head_dim, device=device)
    out, _ = rope(x, positions=pos, layout="bhsd")
    cos, sin = rotary_cls(factory()).to(device)(x, pos)
    hf_scale = (cos.double() ** 2 + sin.double() ** 2).sqrt()
    xd, od = x.double(), out.double()
    ratio = ((od[..., :half] ** 2 + od[..., half:] ** 2) / (xd[..., :half] ** 2 + xd[..., half:] ** 2)).sqrt()
    _, scale = inv_freq_and_scale(**parse_hf_config(factory()))
    assert abs(scale - 1) > 0.1
    # Ours: each element within 6uA m and m <= sqrt(2) |pair|, so the pair norm within 12uA |pair|.
    # HF: cos and sin each within 3uA (2 ulp, then the product with A), so the norm within 3 sqrt(2) uA.
    torch.testing.assert_close(ratio, torch.full_like(ratio, scale), rtol=12 * U, atol=0)
    torch.testing.assert_close(hf_scale, torch.full_like(hf_scale, scale), rtol=5 * U, atol=0)


# ------------------------------------------------------------------------------------------------
# 2. Module behaviour
# ------------------------------------------------------------------------------------------------

YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}


def _yarn_rope(**kw):
    return RotaryEmbedding(16, rotary_dim=12, base=10000.0, scaling=YARN, **kw)


def _exact_for(rope, x, pos, *, layout):
    inv64, scale = inv_freq_and_scale(rope.head_dim, rotary_dim=rope.rotary_dim, scaling=YARN)
    return exact_rotary(x, pos, inv64, scale, layout=layout), scale


def test_tables_are_non_persistent_buffers():
    rope = _yarn_rope(max_positions=64)
    assert set(TABLES) <= {name for name, _ in rope.named_buffers()}
    assert rope.state_dict() == {}
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), rope)
    assert sorted(model.state_dict()) == ["0.bias", "0.weight"]
    model.load_state_dict(model.state_dict())  # strict: no missing table keys


def test_to_device_moves_tables(device):
    rope = _yarn_rope(max_positions=64).to(device)
    assert all(getattr(rope, name).device.type == device.type for name in TABLES)
    tables = [getattr(rope, name) for name in TABLES]
    x = torch.randn(1, 3, 2, 16, device=device)
    out, _ = rope(x, offsets=5)
    # Moved tables are still right: used as they are, not rebuilt.
    assert all(getattr(rope, name) is t for name, t in zip(TABLES, tables, strict=True))
    ref, scale = _exact_for(rope, x, torch.arange(5, 8, device=device)[None], layout="bshd")
    assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")
    # Moved away (here to meta, where no values exist), the next forward rebuilds them where q is.
    rope.to("meta")
    assert all(getattr(rope, name).is_meta for name in TABLES)
    again, _ = rope(x, offsets=5)
    assert torch.equal(again, out) and all(getattr(rope, n).device.type == device.type for n in TABLES)


@pytest.mark.parametrize("how", ["forward", "to_empty"])
def test_meta_construction_builds_on_first_forward(how, device):
    rope = _yarn_rope(max_positions=64, device="meta")
    assert all(getattr(rope, name).is_meta for name in TABLES)
    if how == "to_empty":
        rope.to_empty(device=device)  # uninitialized memory: must not be used as tables
    x = torch.randn(1, 3, 2, 16, device=device)
    out, _ = rope(x, offsets=2)
    fresh = _yarn_rope(max_positions=64, device=device)
    for name in TABLES:
        t = getattr(rope, name)
        assert t.device.type == device.type and t.dtype == torch.float32
        assert torch.equal(t, getattr(fresh, name))
    ref, scale = _exact_for(rope, x, torch.arange(2, 5, device=device)[None], layout="bshd")
    assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


@pytest.mark.parametrize("init", ["to_empty", "reset_parameters"])
@pytest.mark.parametrize("cls", ["RotaryEmbedding", "TritonRotary"])
def test_deferred_init_under_a_meta_device_context(cls, init, device):
    # FSDP2 / torchtitan build the model under `with torch.device("meta")`, then to_empty() (and
    # reset_parameters()): the tables must come out as those of a module built on the device.
    def build():
        return _yarn_rope(max_positions=64) if cls == "RotaryEmbedding" else TritonRotary(16, max_seq_len=64)

    names = TABLES if cls == "RotaryEmbedding" else ("cos", "sin")
    with torch.device("meta"):
        rope = build()
    assert all(getattr(rope, name).is_meta for name in names)
    rope.to_empty(device=device)
    if init == "reset_parameters":
        rope.reset_parameters()
    with torch.device(device):
        fresh = build()
    if cls == "RotaryEmbedding":
        x = torch.randn(1, 3, 2, 16, device=device)
        out, _ = rope(x, offsets=2)
        want, _ = fresh(x, offsets=2)
        ref, scale = _exact_for(rope, x, torch.arange(2, 5, device=device)[None], layout="bshd")
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")
    else:
        x = torch.randn(1, 2, 3, 16, device=device)
        out, _ = rope(x)
        want, _ = fresh(x)
        assert_tutorial_close(out, tutorial_rotary64(x, 16), x)
    assert torch.equal(out, want)
    for name in names:
        t = getattr(rope, name)
        assert t.device.type == device.type and t.dtype == torch.float32
        assert torch.equal(t, getattr(fresh, name))


@pytest.mark.parametrize("cast", [torch.bfloat16, torch.float16, torch.float64], ids=str)
def test_model_dtype_cast_does_not_degrade_tables(cast, device):
    model = torch.nn.Sequential(_yarn_rope(max_positions=64)).to(device)
    model.to(cast)
    rope = model[0]
    fp32_rope = _yarn_rope(max_positions=64, device=device)
    x = torch.randn(2, 3, 2, 16, device=device).to(torch.bfloat16)
    out, _ = rope(x, offsets=7)
    want, _ = fp32_rope(x, offsets=7)
    assert torch.equal(out, want)
    for name in TABLES:
        assert getattr(rope, name).dtype == torch.float32
        assert torch.equal(getattr(rope, name), getattr(fp32_rope, name))


@pytest.mark.parametrize("call", ["offsets", "long-seq"])
def test_grows_past_max_positions_when_length_is_known_on_host(call, device):
    rope = _yarn_rope(max_positions=16, device=device)
    covered = rope.cos_hi.shape[0] * rope.cos_lo.shape[0]
    seqlen, offsets = (8, 20) if call == "offsets" else (40, 0)
    x = torch.randn(1, seqlen, 2, 16, device=device)
    out, _ = rope(x, offsets=offsets)
    assert rope.max_positions >= seqlen + offsets
    assert rope.cos_hi.shape[0] * rope.cos_lo.shape[0] >= seqlen + offsets > covered
    ref, scale = _exact_for(
        rope, x, torch.arange(offsets, offsets + seqlen, device=device)[None], layout="bshd"
    )
    assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


def test_device_positions_past_tables_give_nan(device):
    rope = _yarn_rope(max_positions=16, device=device)
    covered = rope.cos_hi.shape[0] * rope.cos_lo.shape[0]
    x = torch.randn(1, 4, 2, 16, device=device)
    pos = torch.tensor([[0, covered - 1, covered, covered + 1000]], device=device)
    out, _ = rope(x, positions=pos)
    assert rope.max_positions == 16 and rope.cos_hi.shape[0] * rope.cos_lo.shape[0] == covered  # no growth
    assert out[:, 2:, :, :12].isnan().all() and not out[:, :2].isnan().any()
    ref, scale = _exact_for(rope, x[:, :2], pos[:, :2], layout="bshd")
    assert_ours_close(out[:, :2], ref, x[:, :2], scale=scale, rotary_dim=12, layout="bshd")
    # A device-side offset past the end too: the first token fits, the second does not.
    out, _ = rope(x[:, :2], offsets=torch.tensor([covered - 1], device=device))
    assert not out[:, 0].isnan().any() and out[:, 1, :, :12].isnan().all()


def test_inplace_returns_the_inputs(device):
    rope = _yarn_rope(max_positions=64, device=device)
    q, k = make_qk("bshd", 2, 3, 4, 2, 16, torch.float32, device, "packed")
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = rope(q, k, offsets=3, inplace=True)
    assert q_out is q and k_out is k
    pos = torch.arange(3, 6, device=device).expand(2, 3)
    for out, x in ((q, q0), (k, k0)):
        ref, scale = _exact_for(rope, x, pos, layout="bshd")
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


def test_gradients_match_float64_reference(device):
    rope = _yarn_rope(max_positions=64, device=device)
    q, k = make_qk("bhsd", 2, 3, 4, 2, 16, torch.float32, device, "transposed")
    q.requires_grad_()
    k.requires_grad_()
    pos = torch.tensor([[0, 9, 40], [1, 2, 63]], device=device)
    outs = rope(q, k, positions=pos, layout="bhsd")
    grads = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, (q, k), grads)
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    refs = [_exact_for(rope, t, pos, layout="bhsd")[0] for t in (q64, k64)]
    want = torch.autograd.grad(refs, (q64, k64), [g.double() for g in grads])
    scale = rope.attention_factor
    for g, w, g_in in zip(got, want, grads, strict=True):
        # The gradient is the inverse rotation of the incoming gradient: the forward's error model.
        assert_ours_close(g, w, g_in, scale=scale, rotary_dim=12, layout="bhsd")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_through_the_module(layout, device):
    rope = _yarn_rope(max_positions=64, device=device)
    if layout == "thd":
        q, k = make_qk("thd", 1, 5, 3, 1, 16, torch.float32, device, "packed")
        call = {"cu_seqlens": torch.tensor([0, 2, 5], device=device), "max_seqlen": 3}
        pos = torch.tensor([[0, 1, 0, 1, 2]], device=device)
    else:
        q, k = make_qk(layout, 2, 4, 3, 1, 16, torch.float32, device, "packed")
        offsets = torch.tensor([3, 50], device=device)
        call = {"offsets": offsets}
        pos = offsets[:, None] + torch.arange(4, device=device)
    q_out, k_out = rope(q, k, layout=layout, **call)
    for out, x in ((q_out, q), (k_out, k)):
        ref, scale = _exact_for(rope, x, pos, layout=layout)
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout=layout)


def _spy_on_apply(monkeypatch, *, run=True):
    """Record whether each module call passed freqs= (cos/sin computed in the kernel) or tables; with
    ``run=False`` the rotation itself is skipped (for choices on shapes too large for the interpreter)."""
    import rope_triton.modules as modules

    calls = []
    real_apply = modules.apply_rotary

    def spy(*args, **kwargs):
        calls.append("freqs" if kwargs.get("freqs") is not None else "tables")
        return real_apply(*args, **kwargs) if run else (args[0], args[1])

    monkeypatch.setattr(modules, "apply_rotary", spy)
    return calls


@pytest.mark.parametrize("compute_cos_sin", [True, False], ids=["freqs", "tables"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_compute_cos_sin_modes(compute_cos_sin, dtype, monkeypatch, device):
    calls = _spy_on_apply(monkeypatch)
    rope = _yarn_rope(max_positions=512, device=device, compute_cos_sin=compute_cos_sin)
    q, k = make_qk("bshd", 2, 5, 2, 1, 16, dtype, device, "packed")
    q_out, k_out = rope(q, k, offsets=200)
    assert calls == ["freqs" if compute_cos_sin else "tables"]
    pos = torch.arange(200, 205, device=device).expand(2, 5)
    for out, x in ((q_out, q), (k_out, k)):
        ref, scale = _exact_for(rope, x, pos, layout="bshd")
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


@pytest.mark.parametrize(
    "layout, batch, seqlen, heads, call, want",
    [
        ("bshd", 1, 32768, (32, 8), {}, "freqs"),  # long-32k: rows 2.5% of the bytes, read once
        ("bhsd", 1, 8192, (32, 8), {"offsets": 100}, "freqs"),
        ("bshd", 4, 4096, (32, 8), {}, "tables"),  # llama3-8b: each row shared by 4 sequences
        ("bshd", 64, 1, (32, 8), {"offsets": 5000}, "tables"),  # decode: latency-bound
        ("bshd", 1, 256, (32, 8), {}, "tables"),  # few tokens
        ("thd", 1, 131072, (32, 8), {"cu": 64}, "tables"),  # 64 packed sequences share low positions
        ("thd", 1, 32768, (32, 8), {"cu": 1}, "freqs"),
        ("thd", 1, 32768, (32, 8), {"positions": True}, "freqs"),  # reuse unknown: counted once
        # Narrower rotations compute at a higher cost (d64: ~4 points): rows 3.1% of the bytes keep tables.
        ("bshd", 1, 32768, (16, 16), {"head_dim": 64}, "tables"),
        ("bshd", 1, 32768, (4, 1), {"head_dim": 64}, "freqs"),  # rows 10% of the bytes
        # Split tables (past max_table_bytes): any large call computes, decode steps read them.
        ("bshd", 4, 4096, (32, 8), {"split": True}, "freqs"),
        ("bshd", 64, 1, (32, 8), {"offsets": 5000, "split": True}, "tables"),
    ],
)
def test_auto_choice_follows_the_table_share(layout, batch, seqlen, heads, call, want, monkeypatch):
    calls = _spy_on_apply(monkeypatch, run=False)
    d = call.get("head_dim", 128)
    rope = RotaryEmbedding(d, base=500000.0, max_positions=64, device="meta")
    if call.get("split"):
        rope.cos_lo = torch.empty(256, d // 2, device="meta")
    shape = {"bshd": (batch, seqlen, heads[0], d), "bhsd": (batch, heads[0], seqlen, d),
             "thd": (seqlen, heads[0], d)}[layout]
    k_shape = {"bshd": (batch, seqlen, heads[1], d), "bhsd": (batch, heads[1], seqlen, d),
               "thd": (seqlen, heads[1], d)}[layout]
    q, k = torch.empty(shape, device="meta", dtype=torch.bfloat16), torch.empty(k_shape, device="meta",
                                                                                 dtype=torch.bfloat16)
    kw = {"offsets": call["offsets"]} if "offsets" in call else {}
    if "cu" in call:
        kw = {"cu_seqlens": torch.empty(call["cu"] + 1, device="meta", dtype=torch.int32), "max_seqlen": 64}
    if "positions" in call:
        kw = {"positions": torch.empty(seqlen, device="meta", dtype=torch.int64)}
    monkeypatch.setattr(RotaryEmbedding, "_build_tables", lambda self, positions, device: None)
    rope(q, k, layout=layout, **kw)
    assert calls == [want]


def test_compute_cos_sin_past_the_tables(device):
    # Computed cos/sin cover every position up to 2**31 - 2, where device-side positions fall off tables.
    rope = _yarn_rope(max_positions=16, device=device, compute_cos_sin=True)
    x = torch.randn(1, 3, 2, 16, device=device)
    pos = torch.tensor([[0, 1000, 2**31 - 2]], device=device)
    out, _ = rope(x, positions=pos)
    ref, scale = _exact_for(rope, x, pos, layout="bshd")
    assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


def test_compute_cos_sin_float64_reads_tables(monkeypatch, device):
    calls = _spy_on_apply(monkeypatch)
    rope = _yarn_rope(max_positions=64, device=device, compute_cos_sin=True)
    x = torch.randn(1, 5, 2, 16, device=device, dtype=torch.float64)
    out, _ = rope(x, offsets=3)
    assert calls == ["tables"]
    ref, scale = _exact_for(rope, x, torch.arange(3, 8, device=device)[None], layout="bshd")
    # float32 tables promoted to float64: the table entries' float32 rounding (u each) dominates.
    err = (out[..., :12] - ref[..., :12]).abs().max().item()
    assert err <= 2 * U * scale * pair_magnitude(x, "bshd", 12, False).max().item()


def test_type_cast_of_integer_buffers_rebuilds_the_freq_table(device):
    # nn.Module.type() casts integer buffers too (.to(dtype) and .half() do not): the fixed-point freq
    # table must not be used as cast, but rebuilt.
    rope = _yarn_rope(max_positions=64, device=device, compute_cos_sin=True)
    x = torch.randn(1, 5, 2, 16, device=device)
    want, _ = rope(x, offsets=3)
    rope.type(torch.float32)
    assert rope.freq_table.dtype == torch.float32
    got, _ = rope(x, offsets=3)
    assert rope.freq_table.dtype == torch.int64 and torch.equal(got, want)


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("rebuild", ["to_empty", "grow", "half"])
def test_compiled_forward_rebuilds_tables_without_graph_break(rebuild, dynamic):
    # The freq table is built on the host when the frequencies change; a table rebuild inside a compiled
    # region only moves it, so the region stays one graph.
    rope = _yarn_rope(max_positions=16, device="meta" if rebuild == "to_empty" else None)
    if rebuild == "to_empty":
        rope.to_empty(device="cpu")
    elif rebuild == "half":
        rope.half()
    x = torch.randn(1, 40 if rebuild == "grow" else 8, 2, 16)
    # Dynamic shapes: the length and the attention factor are symbolic (past the tables, the compiled
    # call computes cos/sin instead of growing them).
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: rope(t)[0], fullgraph=True, backend="eager", dynamic=dynamic)
    out = compiled(x)
    ref, scale = _exact_for(rope, x, torch.arange(x.shape[1])[None], layout="bshd")
    assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")


@pytest.mark.parametrize("compute_cos_sin", [None, False], ids=["auto", "tables"])
def test_compiled_dynamic_forward_past_the_tables(compute_cos_sin):
    # Dynamic shapes (a decode loop under automatic dynamic shapes gets there after one recompile): the
    # length is symbolic. Past the tables the compiled call computes cos/sin in the kernel (exact at any
    # position), or, when told to read tables, grows them as eager does (bit for bit).
    torch._dynamo.reset()
    rope = _yarn_rope(max_positions=16, compute_cos_sin=compute_cos_sin)
    eager = _yarn_rope(max_positions=16, compute_cos_sin=compute_cos_sin)
    compiled = torch.compile(
        lambda t, o: rope(t, offsets=o)[0], fullgraph=True, dynamic=True, backend="aot_eager"
    )
    for seqlen, offset in ((8, 0), (40, 0), (1, 60), (1, 61), (2, 3)):
        x = torch.randn(1, seqlen, 2, 16)
        out = compiled(x, offset)
        want, _ = eager(x, offsets=offset)
        ref, scale = _exact_for(rope, x, torch.arange(offset, offset + seqlen)[None], layout="bshd")
        assert_ours_close(out, ref, x, scale=scale, rotary_dim=12, layout="bshd")
        assert_ours_close(want, ref, x, scale=scale, rotary_dim=12, layout="bshd")
        if compute_cos_sin is False and triton_runs_on(x.device):
            # The same kernel on the same rows (the CPU path differs from its traced formulation in the
            # last bit of some elements: both are within one rounding, checked above).
            assert torch.equal(out, want)
    assert type(rope.max_positions) is int


def _length_dependent_rope(rope_type):
    scaling = SYNCING_SCALINGS.get(rope_type)
    return RotaryEmbedding(16, scaling=scaling, max_positions=16, max_position_embeddings=8)


FRONT_END_CASES = [
    # id, module, call arguments (q: bshd (1, 3, 2, 16), or thd (3, 2, 16) with layout="thd")
    ("layout-case", "default", {"layout": "BSHD"}),
    ("layout-list", "dynamic", {"layout": ["bshd"]}),
    ("q-none", "default", {"q": None}),
    ("q-none-dynamic", "dynamic", {"q": None}),
    ("k-list", "default", {"k": [1.0]}),
    ("offsets-str", "default", {"offsets": "1"}),
    ("offsets-float", "longrope", {"offsets": 1.5}),
    ("max-seqlen-str", "default", {"layout": "thd", "cu_seqlens": torch.tensor([0, 3]), "max_seqlen": "3"}),
    ("thd-without-cu-dynamic", "dynamic", {"layout": "thd"}),
    ("thd-without-cu-longrope", "longrope", {"layout": "thd"}),
    ("cu-one-element", "dynamic", {"layout": "thd", "cu_seqlens": torch.tensor([0])}),
    ("cu-list", "dynamic", {"layout": "thd", "cu_seqlens": [0, 3]}),
    ("cu-float", "longrope", {"layout": "thd", "cu_seqlens": torch.tensor([0.0, 3.0])}),
    ("positions-list", "dynamic", {"positions": [0, 1, 2]}),
    ("positions-list-default", "default", {"positions": [0, 1, 2]}),
    ("offsets-list", "dynamic", {"offsets": [1]}),
    ("triton-rotary-q-none", "triton", {"q": None}),
    ("triton-rotary-k-str", "triton", {"k": "k"}),
]


@pytest.mark.parametrize(
    "module, call", [c[1:] for c in FRONT_END_CASES], ids=[c[0] for c in FRONT_END_CASES]
)
@pytest.mark.usefixtures("cpu_modes")
def test_module_errors_are_apply_rotarys(module, call):
    # A bad argument to a module is named as apply_rotary names it (same exception, same message), before
    # the module computes anything from it.
    call = dict(call)
    thd = call.get("layout") == "thd"
    q = call.pop("q", torch.randn(3, 2, 16) if thd else torch.randn(1, 3, 2, 16))
    k = call.pop("k", None)
    if module == "triton":
        rope, call = TritonRotary(16, max_seq_len=8), {**call, "layout": "bhsd", "conjugate": True}
    elif module == "default":
        rope = RotaryEmbedding(16, max_positions=16)
    else:
        rope = _length_dependent_rope(module)
    tables = torch.ones(16, 8), torch.zeros(16, 8)
    with pytest.raises((TypeError, ValueError)) as want:
        rope_triton.apply_rotary(q, k, *tables, **call)
    name = str(want.value).split(":")[0]
    assert name in ("q", "k", "layout", "offsets", "max_seqlen", "cu_seqlens", "positions"), want.value
    if module == "triton":
        call = {}
    with pytest.raises(want.type) as got:
        rope(q, k, **call)
    assert str(got.value) == str(want.value)


def test_growth_is_atomic_across_threads(monkeypatch):
    # Thread A grows the tables to 40 positions; while it builds them, thread B asks for 30. B must see
    # either the old tables (and grow them itself) or the new ones, never the new max_positions with the
    # old tables ("need a table of at least 30 rows").
    import threading

    from rope_triton import modules
    from rope_triton._core import op as _ops

    if not torch.cuda.is_available():  # Triton's CPU interpreter is not thread-safe: the PyTorch path
        monkeypatch.setattr(_ops, "triton_runs_on", lambda device: False)
    rope = _yarn_rope(max_positions=16, compute_cos_sin=False)
    building, b_done = threading.Event(), threading.Event()
    real_split_tables = modules._split_tables

    def slow_split_tables(*args, **kwargs):
        if threading.current_thread().name == "A":
            building.set()
            b_done.wait(timeout=0.5)  # B's whole call fits here, unless growth keeps it out
        return real_split_tables(*args, **kwargs)

    monkeypatch.setattr(modules, "_split_tables", slow_split_tables)
    x_a, x_b = torch.randn(1, 40, 2, 16), torch.randn(1, 30, 2, 16)
    results, errors = {}, []

    def call(name, x):
        try:
            if name == "B":
                assert building.wait(timeout=5)
            results[name] = rope(x)[0]
        except Exception as e:  # reported below, with the thread's name
            errors.append((name, e))
        finally:
            if name == "B":
                b_done.set()

    threads = [threading.Thread(target=call, args=(n, x), name=n) for n, x in (("A", x_a), ("B", x_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    for name, x in (("A", x_a), ("B", x_b)):
        ref, scale = _exact_for(rope, x, torch.arange(x.shape[1])[None], layout="bshd")
        assert_ours_close(results[name], ref, x, scale=scale, rotary_dim=12, layout="bshd")
    assert rope.max_positions == 40 and rope.cos_hi.shape[0] * rope.cos_lo.shape[0] >= 40


def test_module_deep_copies_and_pickles():
    # The growth lock is not part of the state: each copy gets its own, and works.
    import copy
    import io

    rope = _yarn_rope(max_positions=16)
    buf = io.BytesIO()
    torch.save(rope, buf)
    buf.seek(0)
    x = torch.randn(1, 20, 2, 16)
    want, _ = rope(x)
    for other in (copy.deepcopy(rope), torch.load(buf, weights_only=False)):
        assert other._lock is not rope._lock
        got, _ = other(x)
        assert torch.equal(got, want) and other.max_positions == 20


@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_compute_cos_sin_must_be_bool_or_none(bad):
    with pytest.raises(TypeError, match=r"compute_cos_sin: expected True, False or None, got"):
        _yarn_rope(compute_cos_sin=bad)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"scaling": {"rope_type": "llama3", "factor": 8.0, "high_freq_factor": 4.0}}, "low_freq_factor"),
        ({"scaling": {"rope_type": "yarn", "original_max_position_embeddings": 4096}}, "factor"),
    ],
    ids=["llama3-missing-low_freq_factor", "yarn-missing-factor"],
)
def test_bad_config_raises_value_error_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        RotaryEmbedding(128, **kwargs)
    # A config.json read as a dict (transformers' own config class would refuse it with a KeyError).
    config = {"hidden_size": 256, "num_attention_heads": 2, "rope_scaling": kwargs["scaling"]}
    with pytest.raises(ValueError, match=key):
        RotaryEmbedding.from_hf_config(config)


# ------------------------------------------------------------------------------------------------
# 3. No device-to-host sync in forward
# ------------------------------------------------------------------------------------------------

NO_SYNC_SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256},
}  # fmt: skip
SYNCING_SCALINGS = {
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "longrope": {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
                 "original_max_position_embeddings": 256},
}  # fmt: skip
# Every way Python code reads a tensor's value on the host.
_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy")


class _HostRead(Exception):
    pass


def _forbid_host_reads(monkeypatch):
    def fail(self, *args, **kwargs):
        raise _HostRead("device-to-host read in forward")

    for name in _READS:
        monkeypatch.setattr(torch.Tensor, name, fail)


def _device_inputs(device):
    q = torch.randn(2, 4, 2, 16, device=device)
    pos = torch.tensor([[0, 1, 2, 3], [200, 201, 1000, 1023]], device=device)
    offsets = torch.tensor([0, 900], device=device)
    return pos, offsets, q


@pytest.mark.parametrize("name", list(NO_SYNC_SCALINGS))
def test_no_host_read_in_forward(name, monkeypatch):
    rope = RotaryEmbedding(
        16, scaling=NO_SYNC_SCALINGS[name], max_positions=1024, max_position_embeddings=256
    )
    pos, offsets, q = _device_inputs("cpu")
    _forbid_host_reads(monkeypatch)
    out_pos, _ = rope(q, q, positions=pos)
    out_off, _ = rope(q, q, offsets=offsets)
    monkeypatch.undo()
    assert not out_pos.isnan().any() and not out_off.isnan().any()


@pytest.mark.parametrize("name", list(SYNCING_SCALINGS))
def test_host_read_detected_for_length_dependent_types(name, monkeypatch):
    """The control: dynamic and longrope read the longest position (as HF does); the patch sees it."""
    rope = RotaryEmbedding(
        16, scaling=SYNCING_SCALINGS[name], max_positions=1024, max_position_embeddings=256
    )
    pos, _, q = _device_inputs("cpu")
    _forbid_host_reads(monkeypatch)
    with pytest.raises(_HostRead):
        rope(q, q, positions=pos)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["default", "llama3", "yarn"])
def test_no_sync_in_forward_cuda(name):
    dev = torch.device("cuda")
    scaling = NO_SYNC_SCALINGS[name]
    rope = RotaryEmbedding(16, scaling=scaling, max_positions=1024, max_position_embeddings=256, device=dev)
    pos, offsets, q = _device_inputs(dev)
    rope(q, q, positions=pos)  # compile the kernel outside the checked region
    rope(q, q, offsets=offsets)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        rope(q, q, positions=pos)
        rope(q, q, offsets=offsets)
        rope(q, q, offsets=5)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    # The control: a dynamic module must sync, and this mode catches it.
    dyn = RotaryEmbedding(16, scaling=SYNCING_SCALINGS["dynamic"], max_position_embeddings=256, device=dev)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            dyn(q, q, positions=pos)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ------------------------------------------------------------------------------------------------
# 4. TritonRotary, the tutorial's module
# ------------------------------------------------------------------------------------------------


def tutorial_rotary64(x, dim):
    """The tutorial's math in float64, written out: dim // 4 frequencies (1/10000) ** linspace(0, 1, dim // 4)
    padded with zeros to dim // 2, half-split pairs, y1 = x1 cos + x2 sin, y2 = -x1 sin + x2 cos."""
    inv = torch.zeros(dim // 2, dtype=torch.float64)
    inv[: dim // 4] = (1 / 10000) ** torch.linspace(0, 1, dim // 4, dtype=torch.float64)
    theta = torch.arange(x.shape[2], dtype=torch.float64)[:, None] * inv  # (S, dim/2)
    c, s = theta.cos().to(x.device), theta.sin().to(x.device)
    x = x.to(torch.float64)
    x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
    return torch.cat((x1 * c + x2 * s, -x1 * s + x2 * c), -1)


def assert_tutorial_close(out, ref, x):
    # Full float32 tables (one rounding, u) and the rotation (2u): 3u m, table_bound 1.5.
    assert_rotary_close(
        out, ref, x, layout="bhsd", rotary_dim=x.shape[-1], interleaved=False, table_bound=1.5
    )


@pytest.mark.parametrize("dim", [16, 64])
def test_triton_rotary_matches_tutorial_math(dim, device):
    rotary = TritonRotary(dim, max_seq_len=32).to(device)
    q = torch.randn(2, 3, 6, dim, device=device)
    k = torch.randn(2, 3, 6, dim, device=device)
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = rotary(q, k)
    assert torch.equal(q, q0) and torch.equal(k, k0)  # new tensors; the tutorial overwrote its inputs
    for out, x in ((q_out, q), (k_out, k)):
        assert_tutorial_close(out, tutorial_rotary64(x, dim), x)
    # Half the pairs have frequency 0 (the tutorial's padding): they pass through unchanged.
    assert torch.equal(q_out[..., dim // 4 : dim // 2], q[..., dim // 4 : dim // 2])


def test_triton_rotary_autograd_strided_and_gqa(device):
    dim = 16
    rotary = TritonRotary(dim, max_seq_len=8).to(device)
    # (batch, seq, heads, dim) memory viewed as (batch, heads, seq, dim); k with fewer heads (GQA).
    q = torch.randn(2, 5, 4, dim, device=device).transpose(1, 2).requires_grad_()
    k = torch.randn(2, 5, 1, dim, device=device).transpose(1, 2).requires_grad_()
    assert not q.is_contiguous()
    outs = rotary(q, k)
    for out, x in zip(outs, (q, k), strict=True):
        assert out.shape == x.shape
        assert_tutorial_close(out, tutorial_rotary64(x.detach(), dim), x.detach())
    grads = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, (q, k), grads)
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    want = torch.autograd.grad(
        [tutorial_rotary64(q64, dim), tutorial_rotary64(k64, dim)], (q64, k64), [g.double() for g in grads]
    )
    for g, w, g_in in zip(got, want, grads, strict=True):
        assert_tutorial_close(g, w, g_in)


def test_triton_rotary_explains_usage_mistakes():
    rotary = TritonRotary(dim=16, max_seq_len=8)
    x3 = torch.randn(2, 4, 64)  # (batch, seq, model_dim): the tutorial's Attention passed projections
    with pytest.raises(ValueError, match=r"\(batch, seq, model_dim\).*split into heads"):
        rotary(x3, x3)
    # The tutorial's TritonRotary(dim=n_heads): 4 heads of 16 dims given to a module built for dim=4.
    with pytest.raises(ValueError, match="head dimension.*not the number of heads"):
        TritonRotary(dim=4, max_seq_len=8)(torch.randn(1, 4, 3, 16), torch.randn(1, 4, 3, 16))
    with pytest.raises(ValueError, match="sequence length 9.*max_seq_len=8"):
        rotary(torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 16))
    with pytest.raises(ValueError, match=r"^k: .*head_dim"):
        rotary(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 8))


@pytest.mark.parametrize("dim", [0, 2, 6, 30, -8, 16.0, True, "16"])
def test_triton_rotary_rejects_bad_dim(dim):
    with pytest.raises(ValueError, match="dim"):
        TritonRotary(dim, max_seq_len=8)


# ------------------------------------------------------------------------------------------------
# 5. Exact angles at any length
# ------------------------------------------------------------------------------------------------

LONG_POSITIONS = {"4k": 4096, "128k": 131072, "1M": 2**20 - 1}


def _long_positions(device):
    # Four tokens around each: p - 2 .. p + 1, the last group ending at 2**20 - 1.
    starts = [min(p - 2, 2**20 - 4) for p in LONG_POSITIONS.values()]
    return torch.tensor([s + i for s in starts for i in range(4)], device=device)


def _rel_errors(out, ref):
    err = out.double() - ref
    return (err.norm() / ref.norm()).item(), (err.abs().max() / ref.abs().max()).item()


def test_exact_angles_at_a_million_positions(device):
    rope = RotaryEmbedding(128, base=10000.0, max_positions=2**20, device=device)
    table_bytes = sum(getattr(rope, n).numel() * getattr(rope, n).element_size() for n in TABLES)
    assert table_bytes <= 16 * 2**20
    assert rope.cos_hi.shape[0] * rope.cos_lo.shape[0] >= 2**20
    pos = _long_positions(device)
    x = torch.randn(1, 2, pos.numel(), 128, device=device)
    out, _ = rope(x, positions=pos, layout="bhsd")
    inv64 = 10000.0 ** (-torch.arange(0, 128, 2, dtype=torch.float64) / 128)
    ref = exact_rotary(x, pos[None], inv64, 1.0)

    # HF's way: float32 angles position * inv_freq, float32 cos/sin, rotate_half.
    inv32 = 1.0 / (10000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32, device=device) / 128))
    emb = (pos.float()[:, None] * inv32).repeat(1, 2)
    hf = x * emb.cos() + torch.cat((-x[..., 64:], x[..., :64]), -1) * emb.sin()

    for i, name in enumerate(LONG_POSITIONS):
        tokens = slice(4 * i, 4 * i + 4)
        rel, rel_max = _rel_errors(out[:, :, tokens], ref[:, :, tokens])
        assert rel <= 1e-6 and rel_max <= 1e-6, (name, rel, rel_max)
    # The same measure fails for float32 angles at 1M (errors of ~0.06 rad): the test can fail.
    hf_rel, hf_rel_max = _rel_errors(hf[:, :, 8:], ref[:, :, 8:])
    assert hf_rel > 1e-6 and hf_rel_max > 1e-6


@pytest.mark.parametrize("budget", [64 * 2**20, 0], ids=["full", "split"])
def test_full_tables_within_the_budget_split_beyond(budget, device):
    positions = 3000
    rope = RotaryEmbedding(64, base=10000.0, max_positions=positions, max_table_bytes=budget, device=device)
    if budget:
        # 2 x 3000 x 32 x 4 bytes fit: one row per position, no low table in use.
        assert rope.cos_hi.shape[0] == positions and rope.cos_lo.shape[0] == 1
    else:
        assert (
            1 < rope.cos_lo.shape[0] < positions
            and rope.cos_hi.shape[0] * rope.cos_lo.shape[0] >= positions
        )
    pos = torch.tensor([0, 1, 1023, 1024, 2047, 2999], device=device)
    x = torch.randn(1, 2, pos.numel(), 64, device=device)
    out, _ = rope(x, positions=pos, layout="bhsd")
    ref = exact_rotary(x, pos[None], 10000.0 ** (-torch.arange(0, 64, 2, dtype=torch.float64) / 64), 1.0)
    rel, rel_max = _rel_errors(out, ref)
    assert rel <= 1e-6 and rel_max <= 1e-6, (rel, rel_max)


def test_split_tables_share_one_storage_also_after_a_move(device):
    # The kernel reads split tables' high and low rows through one pointer: the module keeps the low rows
    # right after the high rows (no copy per call), also after its buffers were moved one by one.
    from rope_triton._core.launch import stacked_rows

    rope = RotaryEmbedding(64, base=10000.0, max_positions=3000, max_table_bytes=0, device=device)
    assert stacked_rows(rope.cos_hi, rope.cos_lo) and stacked_rows(rope.sin_hi, rope.sin_lo)
    before = [getattr(rope, name).clone() for name in TABLES]
    rope._apply(torch.clone)  # what .to(other device) does: each buffer copied on its own
    assert stacked_rows(rope.cos_hi, rope.cos_lo) and stacked_rows(rope.sin_hi, rope.sin_lo)
    assert all(torch.equal(getattr(rope, name), t) for name, t in zip(TABLES, before, strict=True))
    # Separate tables are not read as stacked: the launcher stacks a copy.
    assert not stacked_rows(before[0], before[2])


def test_max_table_bytes_is_validated():
    for bad in (-1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="max_table_bytes"):
            RotaryEmbedding(64, max_table_bytes=bad)


def test_module_edge_cases():
    # Empty input through a length-dependent type, GPT-J pairing from its config, default coverage of a
    # scaled model, and a bad max_positions.
    from transformers import GPTJConfig

    rope = RotaryEmbedding.from_hf_config(phi3_mini_128k())
    q_out, _ = rope(torch.randn(1, 0, 2, rope.head_dim))
    assert q_out.shape == (1, 0, 2, rope.head_dim)
    assert RotaryEmbedding.from_hf_config(GPTJConfig(n_embd=256, n_head=4, rotary_dim=32)).interleaved
    assert not RotaryEmbedding.from_hf_config(llama2_7b()).interleaved
    assert RotaryEmbedding.from_hf_config(llama4_scout()).interleaved
    assert RotaryEmbedding.from_hf_config(qwen25_yarn()).max_positions >= 4 * 32768
    with pytest.raises(ValueError, match="max_positions"):
        RotaryEmbedding(64, max_positions=0)
