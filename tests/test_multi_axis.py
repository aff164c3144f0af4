"""Multi-axis RoPE angles (rope_triton.angles.multi_axis) and the float64 oracle's multi_axis path.

Each preset is checked against the model's own code where transformers has it (Qwen2-VL, Qwen2.5-VL,
Qwen3-VL text and vision, Pixtral), in float64: the model's modules compute in float32, so the tests
take the model's own axis recomposition and rotate-half application and feed them float64 angles from
the model's frequency formula. The diffusion presets (no diffusers here) are checked against formulas
written below from the published definitions.
"""

from __future__ import annotations

import pytest
import torch
from helpers import LAYOUTS, make_qk, ref64

from rope_triton import reference
from rope_triton.angles import (
    MultiAxis,
    flux,
    from_hf_config,
    hunyuan_video,
    mrope,
    multi_axis_angles,
    nd_rope,
    vision_2d,
    wan,
)

CPU = torch.device("cpu")
F64 = torch.float64
RTOL, ATOL = 1e-12, 1e-12


def _hf_default_inv_freq(base: float, dim: int) -> torch.Tensor:
    # transformers' compute_default_rope_parameters, evaluated in float64 instead of float32.
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=F64) / dim))


def _mrope_positions(batch: int, seqlen: int) -> torch.Tensor:
    # Distinct t/h/w values, so a pair reading the wrong axis shows.
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 4096, (3, batch, seqlen), generator=g)


# --- Text M-RoPE against transformers ----------------------------------------------------------------

_TEXT_CASES = [
    # (model, head_dim, mrope_section or None for the module's default, rope_theta)
    ("qwen2_vl", 32, [4, 6, 6], 10000.0),
    ("qwen2_vl", 128, None, 1000000.0),
    ("qwen2_5_vl", 32, [2, 7, 7], 1000000.0),
    ("qwen2_5_vl", 128, [16, 24, 24], 1000000.0),
    ("qwen3_vl", 32, [6, 5, 5], 5000000.0),
    ("qwen3_vl", 32, [8, 4, 4], 5000000.0),
    ("qwen3_vl", 128, None, 5000000.0),
]


def _text_model(model: str, head_dim: int, sections, theta: float):
    if model == "qwen2_vl":
        from transformers.models.qwen2_vl import configuration_qwen2_vl as c
        from transformers.models.qwen2_vl import modeling_qwen2_vl as m

        cfg_cls, rotary_cls = c.Qwen2VLTextConfig, m.Qwen2VLRotaryEmbedding
    elif model == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl as c
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        cfg_cls, rotary_cls = c.Qwen2_5_VLTextConfig, m.Qwen2_5_VLRotaryEmbedding
    else:
        from transformers.models.qwen3_vl import configuration_qwen3_vl as c
        from transformers.models.qwen3_vl import modeling_qwen3_vl as m

        cfg_cls, rotary_cls = c.Qwen3VLTextConfig, m.Qwen3VLTextRotaryEmbedding
    params = {"rope_type": "default", "rope_theta": theta}
    if sections is not None:
        params["mrope_section"] = sections
    if model == "qwen3_vl":
        params["mrope_interleaved"] = True
    cfg = cfg_cls(
        hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim, rope_parameters=params
    )
    return cfg, rotary_cls(cfg), m


@pytest.mark.parametrize(("model", "head_dim", "sections", "theta"), _TEXT_CASES)
def test_text_mrope_matches_transformers(model, head_dim, sections, theta):
    pytest.importorskip("transformers")
    cfg, rotary, m = _text_model(model, head_dim, sections, theta)
    ma = from_hf_config(cfg)
    assert ma.n_axes == 3 and not ma.interleaved and ma.rotary_dim == head_dim
    # The module's (float32) frequencies are ours to float32 rounding; the float64 check below uses
    # its formula in float64.
    inv64 = _hf_default_inv_freq(theta, head_dim)
    torch.testing.assert_close(rotary.inv_freq.to(F64), inv64, rtol=1e-6, atol=0)
    torch.testing.assert_close(ma.inv_freq, inv64, rtol=1e-15, atol=0)

    b, s, h = 2, 5, 2
    pos = _mrope_positions(b, s)
    freqs = pos[..., None].to(F64) * inv64  # (3, B, S, D/2)
    # The model's own axis assignment (block sections or Qwen3-VL's interleaving) and application.
    cos = rotary.recomposition_frequencies(freqs.cos() * rotary.attention_scaling)
    sin = rotary.recomposition_frequencies(freqs.sin() * rotary.attention_scaling)
    q = torch.randn(b, h, s, head_dim, dtype=F64)
    k = torch.randn(b, 1, s, head_dim, dtype=F64)
    want_q, want_k = m.apply_rotary_pos_emb(q, k, cos, sin)

    got_q, got_k = ref64(q, k, None, None, multi_axis=ma, positions=pos, layout="bhsd")
    torch.testing.assert_close(got_q, want_q, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got_k, want_k, rtol=RTOL, atol=ATOL)

    # Same preset from the explicit constructor.
    secs = cfg.rope_parameters.get("mrope_section") or ([24, 20, 20] if model == "qwen3_vl" else [16, 24, 24])
    direct = mrope(head_dim, secs, base=theta, interleaved_sections=model == "qwen3_vl")
    assert torch.equal(direct.axis, ma.axis) and torch.equal(direct.inv_freq, ma.inv_freq)


def test_text_mrope_full_model_path_float32():
    # The module's own forward (float32 end to end) agrees with the oracle to float32 rounding.
    pytest.importorskip("transformers")
    cfg, rotary, m = _text_model("qwen3_vl", 32, [6, 5, 5], 10000.0)
    pos = torch.randint(0, 64, (3, 1, 7))
    q = torch.randn(1, 2, 7, 32)
    cos, sin = rotary(q, pos)
    want, _ = m.apply_rotary_pos_emb(q, q, cos, sin)
    got, _ = ref64(q, None, None, None, multi_axis=from_hf_config(cfg), positions=pos, layout="bhsd")
    torch.testing.assert_close(got, want.to(F64), rtol=1e-4, atol=1e-4)


def test_qwen3_interleaving_tail_is_temporal():
    # [24, 20, 20]: pairs 0..59 cycle t, h, w; 60..63 fall back to t (the h/w sections are exhausted).
    axis = mrope(128, [24, 20, 20], interleaved_sections=True).axis
    assert axis[:60].tolist() == [0, 1, 2] * 20 and axis[60:].tolist() == [0] * 4
    assert axis.bincount().tolist() == [24, 20, 20]


def test_from_hf_config_legacy_rope_scaling_mrope_type():
    # transformers 4.x Qwen2-VL config.json: rope_scaling {"type": "mrope", "mrope_section": [...]}.
    cfg = {
        "model_type": "qwen2_vl",
        "hidden_size": 256,
        "num_attention_heads": 4,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
    }
    ma = from_hf_config(cfg)
    assert ma.axis.bincount().tolist() == [8, 12, 12]
    torch.testing.assert_close(ma.inv_freq, _hf_default_inv_freq(1000000.0, 64), rtol=1e-15, atol=0)


def test_mrope_scaling_dict_linear():
    ma = mrope(64, [8, 12, 12], base=10000.0, scaling={"rope_type": "linear", "factor": 4.0})
    torch.testing.assert_close(ma.inv_freq, _hf_default_inv_freq(10000.0, 64) / 4.0, rtol=1e-15, atol=0)


# --- Vision 2-D RoPE against transformers --------------------------------------------------------------


def _vision_module(model: str, head_dim: int, heads: int = 2):
    if model == "qwen2_vl":
        from transformers.models.qwen2_vl import configuration_qwen2_vl as c
        from transformers.models.qwen2_vl import modeling_qwen2_vl as m

        cfg = c.Qwen2VLVisionConfig(embed_dim=head_dim * heads, num_heads=heads)
        return m.Qwen2VLVisionRotaryEmbedding(cfg), m
    if model == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl import configuration_qwen2_5_vl as c
        from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as m

        cfg = c.Qwen2_5_VLVisionConfig(hidden_size=head_dim * heads, num_heads=heads)
        return m.Qwen2_5_VLVisionRotaryEmbedding(cfg), m
    if model == "qwen3_vl":
        from transformers.models.qwen3_vl import configuration_qwen3_vl as c
        from transformers.models.qwen3_vl import modeling_qwen3_vl as m

        cfg = c.Qwen3VLVisionConfig(hidden_size=head_dim * heads, num_heads=heads)
        return m.Qwen3VLVisionRotaryEmbedding(cfg), m
    from transformers.models.pixtral import configuration_pixtral as c
    from transformers.models.pixtral import modeling_pixtral as m

    cfg = c.PixtralVisionConfig(hidden_size=head_dim * heads, num_attention_heads=heads, head_dim=head_dim)
    return m.PixtralVisionRotaryEmbedding(cfg), m


def _grid_positions(h: int, w: int) -> torch.Tensor:
    # (N, 2) rows of (h, w), as the towers build them.
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack((hh.flatten(), ww.flatten()), dim=-1)


@pytest.mark.parametrize("head_dim", [16, 80])
@pytest.mark.parametrize("model", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "pixtral"])
def test_vision_2d_matches_transformers(model, head_dim):
    pytest.importorskip("transformers")
    rotary, m = _vision_module(model, head_dim)
    order = "pixtral" if model == "pixtral" else "hw"
    ma = vision_2d(head_dim, base=10000.0, order=order)
    assert ma.n_axes == 2 and not ma.interleaved and ma.rotary_dim == head_dim
    # Module frequencies (float32) against ours; for float64 we take the same formula in float64.
    if model == "pixtral":
        full = _hf_default_inv_freq(10000.0, head_dim)
        inv64 = torch.cat((full[0::2], full[1::2]))
    else:
        inv64 = _hf_default_inv_freq(10000.0, head_dim // 2)
    torch.testing.assert_close(rotary.inv_freq.to(F64), inv64, rtol=1e-6, atol=0)

    pos_n2 = _grid_positions(5, 7) * 3  # larger angles than a tiny grid gives
    n, heads = pos_n2.shape[0], 2
    freqs = pos_n2[..., None].to(F64) * inv64  # (N, 2, len(inv64))
    cos = rotary.recomposition_frequencies(freqs.cos())
    sin = rotary.recomposition_frequencies(freqs.sin())
    positions = pos_n2.T.contiguous()  # (2, N)
    if model == "pixtral":
        q = torch.randn(1, heads, n, head_dim, dtype=F64)
        want, _ = m.apply_rotary_pos_emb(q, q, cos, sin, unsqueeze_dim=0)
        got, _ = ref64(q, None, None, None, multi_axis=ma, positions=positions, layout="bhsd")
    else:
        # apply_rotary_pos_emb_vision casts to float32; this is its formula with its rotate_half in float64.
        q = torch.randn(n, heads, head_dim, dtype=F64)
        want = q * cos.unsqueeze(-2) + m.rotate_half(q) * sin.unsqueeze(-2)
        got, _ = ref64(q, None, None, None, multi_axis=ma, positions=positions, layout="thd")
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("model", ["qwen2_vl", "qwen3_vl"])
def test_vision_2d_full_model_path_float32(model):
    pytest.importorskip("transformers")
    rotary, m = _vision_module(model, 32)
    pos_n2 = _grid_positions(4, 6)
    q = torch.randn(pos_n2.shape[0], 2, 32)
    cos, sin = rotary(q, pos_n2)
    want, _ = m.apply_rotary_pos_emb_vision(q, q, cos, sin)
    got, _ = ref64(q, None, None, None, multi_axis=vision_2d(32), positions=pos_n2.T, layout="thd")
    torch.testing.assert_close(got, want.to(F64), rtol=1e-5, atol=1e-5)


# --- Diffusion N-D RoPE against the published formulas ----------------------------------------------


def _nd_formula(x: torch.Tensor, ids: torch.Tensor, axes_dim, theta: float) -> torch.Tensor:
    """FLUX / HunyuanVideo / Wan as published: per axis a, cos/sin of ids[:, a] * theta^(-2j/d_a),
    concatenated over axes, applied to adjacent pairs as complex multiplication. x: (L, H, D)."""
    parts = []
    for a, d in enumerate(axes_dim):
        omega = 1.0 / theta ** (torch.arange(0, d, 2, dtype=F64) / d)
        parts.append(torch.outer(ids[:, a].to(F64), omega))
    ang = torch.cat(parts, dim=-1)  # (L, D/2)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    w = z * torch.polar(torch.ones_like(ang), ang)[:, None, :]
    return torch.view_as_real(w).flatten(-2)


def _diffusion_ids(n: int) -> torch.Tensor:
    # FLUX: axis 0 zero for image tokens, h and w grid indices; a video model: t, h, w.
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (n, 3), generator=g).to(F64)


@pytest.mark.parametrize(
    ("preset", "axes_dim", "theta"),
    [
        (flux, (16, 56, 56), 10000.0),
        (hunyuan_video, (16, 56, 56), 256.0),
        (lambda: wan(128), (44, 42, 42), 10000.0),
        (lambda: wan(64), (24, 20, 20), 10000.0),
        (lambda: nd_rope((8, 4, 4), 10000.0), (8, 4, 4), 10000.0),
    ],
)
def test_diffusion_presets_match_formula(preset, axes_dim, theta):
    ma = preset()
    assert ma.interleaved and not ma.integer_positions and ma.rotary_dim == sum(axes_dim)
    ids = _diffusion_ids(9)
    x = torch.randn(9, 3, sum(axes_dim), dtype=F64)
    want = _nd_formula(x, ids, axes_dim, theta)
    got, _ = ref64(x, None, None, None, multi_axis=ma, positions=ids.T, layout="thd")
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_wan_split_matches_original_code_rule():
    # Wan's rope_apply splits c = head_dim / 2 pairs as [c - 2 (c // 3), c // 3, c // 3].
    for head_dim in (64, 128, 96, 80):
        c = head_dim // 2
        assert wan(head_dim).axis.bincount().tolist() == [c - 2 * (c // 3), c // 3, c // 3]


# --- The oracle's multi_axis path: layouts, pairing, partial rotary ----------------------------------


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_reference_layouts_and_partial_rotary(layout, interleaved):
    b = 1 if layout == "thd" else 2
    s, h, head_dim = 6, 3, 20
    ma = nd_rope((4, 6, 6), 100.0, interleaved=interleaved, integer_positions=True)  # rotary_dim 16
    q, k = make_qk(layout, b, s, h, 1, head_dim, F64, CPU)
    pos = torch.randint(0, 50, (3, s)) if layout == "thd" else torch.randint(0, 50, (3, b, s))
    got_q, got_k = ref64(q, k, None, None, multi_axis=ma, positions=pos, layout=layout)
    # The same rotation through the one-axis oracle: per-token cos/sin tables indexed by token.
    ang = multi_axis_angles(ma, pos).reshape(b, s, -1)
    cos, sin = torch.cos(ang), torch.sin(ang)
    tok = torch.arange(s).expand(b, s) if layout != "thd" else torch.arange(s)
    for x, got in ((q, got_q), (k, got_k)):
        xb = reference.to_bshd(x, layout)
        want = torch.empty_like(xb)
        for bi in range(b):
            one, _ = ref64(
                xb[bi : bi + 1], None, cos[bi], sin[bi], positions=tok if layout == "thd" else tok[bi],
                layout="bshd", interleaved=interleaved, rotary_dim=16,
            )
            want[bi] = one[0]
        torch.testing.assert_close(reference.to_bshd(got, layout), want, rtol=RTOL, atol=ATOL)
        # The tail beyond rotary_dim passes through.
        assert torch.equal(reference.to_bshd(got, layout)[..., 16:], xb[..., 16:])


def test_reference_positions_shared_by_batch_and_attention_factor():
    inv_freq = torch.tensor([1.0, 0.5, 0.25], dtype=F64)
    ma = MultiAxis(torch.tensor([0, 1, 1]), inv_freq, 2, attention_factor=1.5)
    q = torch.randn(2, 4, 1, 6, dtype=F64)
    pos = torch.randint(0, 9, (2, 4))
    a, _ = ref64(q, None, None, None, multi_axis=ma, positions=pos)
    b, _ = ref64(q, None, None, None, multi_axis=ma, positions=pos.unsqueeze(1).expand(2, 2, 4))
    assert torch.equal(a, b)
    unit = MultiAxis(ma.axis, ma.inv_freq, 2)
    c, _ = ref64(q, None, None, None, multi_axis=unit, positions=pos)
    torch.testing.assert_close(a, 1.5 * c, rtol=RTOL, atol=ATOL)


def test_reference_float32_compute():
    ma = flux()
    x = torch.randn(5, 2, 128)
    ids = _diffusion_ids(5)
    got, _ = reference.apply_rotary(x, None, multi_axis=ma, positions=ids.T, layout="thd")
    assert got.dtype == torch.float32
    want = _nd_formula(x.to(F64), ids, (16, 56, 56), 10000.0)
    torch.testing.assert_close(got.to(F64), want, rtol=1e-5, atol=1e-5)


def test_angles_shape_and_values():
    ma = mrope(16, [2, 3, 3])
    pos = torch.randint(0, 100, (3, 2, 5))
    ang = multi_axis_angles(ma, pos)
    assert ang.shape == (2, 5, 8) and ang.dtype == F64
    for i in range(8):
        torch.testing.assert_close(ang[..., i], pos[ma.axis[i]].to(F64) * ma.inv_freq[i], rtol=0, atol=0)


# --- Errors: ValueError whose message starts with the argument's name --------------------------------


@pytest.mark.parametrize(
    ("positions", "why"),
    [
        (torch.arange(5), "no axis dimension"),
        (torch.zeros(2, 1, 5, dtype=torch.int64), "two axes for three"),
        (torch.zeros(4, 5, dtype=torch.int64), "four axes for three"),
        (torch.zeros(3, 1, 5), "float positions, integers required"),
        (torch.zeros(3, 5, dtype=torch.bool), "bool"),
        ([[0], [0], [0]], "not a tensor"),
    ],
)
def test_angles_rejects_positions(positions, why):
    with pytest.raises(ValueError, match=r"^positions"):
        multi_axis_angles(mrope(16, [2, 3, 3]), positions)


def test_reference_rejects_positions():
    q = torch.randn(2, 5, 1, 16, dtype=F64)
    ma = mrope(16, [2, 3, 3])
    for bad in (None, torch.zeros(3, 2, 4, dtype=torch.int64), torch.zeros(3, 5)):
        with pytest.raises(ValueError, match=r"^positions"):
            ref64(q, None, None, None, multi_axis=ma, positions=bad)
    zeros = torch.zeros(3, 5, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"^rotary_dim"):
        ref64(q, None, None, None, multi_axis=ma, positions=zeros, rotary_dim=8)
    with pytest.raises(ValueError, match=r"^offsets"):
        ref64(q, None, None, None, multi_axis=ma, positions=zeros, offsets=1)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("sections", [[2, 3, 2], [4, 4, 4], [], [2, 0, 6], "238"])
def test_mrope_rejects_sections(sections, interleaved):
    with pytest.raises(ValueError, match=r"^sections"):
        mrope(16, sections, interleaved_sections=interleaved)


def test_from_hf_config_error_names_mrope_section():
    cfg = {"model_type": "qwen2_vl", "head_dim": 16, "rope_parameters": {"mrope_section": [2, 2, 2]}}
    with pytest.raises(ValueError, match=r"^mrope_section"):
        from_hf_config(cfg)


@pytest.mark.parametrize(
    ("axis", "n_axes"),
    [([0, 3], 3), ([-1, 0], 2), ([0, 1], 1)],
)
def test_multi_axis_rejects_axis_out_of_range(axis, n_axes):
    with pytest.raises(ValueError, match=r"^axis"):
        MultiAxis(torch.tensor(axis), torch.ones(2, dtype=F64), n_axes)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(axis=torch.tensor([0.0, 1.0]), inv_freq=torch.ones(2, dtype=F64), n_axes=2), "axis"),
        (dict(axis=torch.tensor([0, 1]), inv_freq=torch.ones(2), n_axes=2), "inv_freq"),
        (dict(axis=torch.tensor([0, 1]), inv_freq=torch.ones(3, dtype=F64), n_axes=2), "axis"),
        (dict(axis=torch.tensor([0, 1]), inv_freq=torch.ones(2, dtype=F64), n_axes=0), "n_axes"),
    ],
)
def test_multi_axis_rejects_fields(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        MultiAxis(**kwargs)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: vision_2d(18), "head_dim"),
        (lambda: vision_2d(16, order="wh"), "order"),
        (lambda: vision_2d(16, base=-1.0), "base"),
        (lambda: nd_rope([16, 5]), "axes_dim"),
        (lambda: nd_rope([]), "axes_dim"),
        (lambda: nd_rope([16], theta=0.0), "theta"),
    ],
)
def test_preset_argument_errors(call, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        call()


def test_multi_axis_is_frozen():
    ma = flux()
    with pytest.raises(AttributeError):
        ma.n_axes = 2


@pytest.mark.parametrize("model", ["qwen2_vl", "qwen3_vl"])
def test_from_hf_config_composite_reads_text_config(model):
    pytest.importorskip("transformers")
    if model == "qwen2_vl":
        from transformers import Qwen2VLConfig as Config
    else:
        from transformers import Qwen3VLConfig as Config
    text = {"hidden_size": 256, "num_attention_heads": 4, "head_dim": 64,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}}
    ma = from_hf_config(Config(text_config=text))
    want = mrope(64, [8, 12, 12], interleaved_sections=model == "qwen3_vl")
    assert torch.equal(ma.axis, want.axis) and torch.equal(ma.inv_freq, want.inv_freq)
