"""The kernel's multi-axis angle source: every pair turns by the position along its own axis, computed in
the kernel from a multi-axis freq table, against the float64 oracle
(``reference.apply_rotary(multi_axis=)``)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FREQS_TABLE_BOUND, LAYOUTS, assert_rotary_close, check_against_reference, make_qk, ref64

import rope_triton
from rope_triton import reference
from rope_triton.angles import MultiAxis, mrope, nd_rope, vision_2d

PRESETS = {
    "mrope": lambda: mrope(16, [2, 3, 3], base=1000000.0),
    "mrope-interleaved": lambda: mrope(16, [4, 2, 2], interleaved_sections=True),
    "vision-pixtral": lambda: vision_2d(16, order="pixtral"),
    "nd-float": lambda: nd_rope([4, 6, 6], theta=256.0),
}


def _positions(ma: MultiAxis, layout: str, batch: int, seqlen: int, device, top: int = 1 << 20, shared=False):
    shape = (ma.n_axes, seqlen) if shared else (ma.n_axes, batch, seqlen)
    if layout == "thd":
        shape = (ma.n_axes, seqlen)
    if ma.integer_positions:
        return torch.randint(0, top, shape, device=device)
    # Fractional coordinates (diffusion ids), float32.
    return (torch.rand(shape, device=device) * top).float()


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_multi_axis_every_layout(layout, preset, inplace, device):
    ma = PRESETS[preset]()
    batch = 1 if layout == "thd" else 2
    # Partial rotary (head_dim 20, 16 rotated), GQA (3 query heads, 1 kv head), packed qkv views.
    q, k = make_qk(layout, batch, 5, 3, 1, 20, torch.bfloat16, device, "packed")
    positions = _positions(ma, layout, batch, 5, device)
    cu = {"cu_seqlens": torch.tensor([0, 2, 5], device=device, dtype=torch.int32)} if layout == "thd" else {}
    check_against_reference(
        q, k, None, None, multi_axis=ma, positions=positions, layout=layout, inplace=inplace,
        rotary_dim=ma.rotary_dim, interleaved=ma.interleaved, table_bound=FREQS_TABLE_BOUND, **cu,
    )


@pytest.mark.parametrize("shape", ["(n_axes, S)", "(n_axes, 1, S)", "expanded"])
def test_positions_shared_by_the_batch(shape, device):
    ma = PRESETS["mrope"]()
    q, k = make_qk("bshd", 3, 4, 2, 2, 16, torch.float32, device)
    row = torch.randint(0, 5000, (3, 4), device=device)
    positions = {
        "(n_axes, S)": row, "(n_axes, 1, S)": row[:, None], "expanded": row[:, None].expand(3, 3, 4)
    }[shape]
    check_against_reference(q, k, None, None, multi_axis=ma, positions=positions, layout="bshd",
                            rotary_dim=16, table_bound=FREQS_TABLE_BOUND)


def test_freqs_table_is_the_same_call(device):
    # apply_rotary(multi_axis=ma) and apply_rotary(freqs=ma.freq_table(device)) are one call.
    ma = PRESETS["mrope-interleaved"]()
    q, k = make_qk("bshd", 2, 4, 2, 1, 16, torch.bfloat16, device)
    positions = _positions(ma, "bshd", 2, 4, device)
    a = rope_triton.apply_rotary(q, k, multi_axis=ma, positions=positions)
    b = rope_triton.apply_rotary(q, k, freqs=ma.freq_table(device), positions=positions)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("preset", ["mrope", "nd-float"])
def test_cos_sin_accuracy_at_large_positions(preset, device):
    # fp32: cos/sin of every pair within 2 float32 ulps of the float64 value, positions up to 2**20 on
    # every axis (and to 2**30 for integer ones).
    ma = PRESETS[preset]()
    top = 1 << (20 if not ma.integer_positions else 30)
    n = 64
    positions = _positions(ma, "bshd", 1, n, device, top=top)
    q = torch.zeros(1, n, 1, 16, device=device)
    q[..., 0::2] = 1.0 if ma.interleaved else 0.0
    if not ma.interleaved:
        q[..., :8] = 1.0
    out, _ = rope_triton.apply_rotary(q, None, multi_axis=ma, positions=positions)
    theta = reference.multi_axis_angles(ma, positions.cpu()).reshape(n, 8)
    if ma.interleaved:
        got_c, got_s = out[0, :, 0, 0::2].cpu().double(), out[0, :, 0, 1::2].cpu().double()
    else:
        got_c, got_s = out[0, :, 0, :8].cpu().double(), out[0, :, 0, 8:].cpu().double()
    assert (got_c - theta.cos()).abs().max().item() <= 2 * 2.0**-24
    assert (got_s - theta.sin()).abs().max().item() <= 2 * 2.0**-24


@pytest.mark.parametrize("preset", ["mrope", "nd-float"])
def test_backward_is_the_conjugate_rotation(preset, device):
    ma = PRESETS[preset]()
    q, k = make_qk("bshd", 2, 3, 2, 1, 16, torch.float32, device)
    positions = _positions(ma, "bshd", 2, 3, device)
    q, k = q.requires_grad_(), k.requires_grad_()
    q_out, k_out = rope_triton.apply_rotary(q, k, multi_axis=ma, positions=positions)
    gq, gk = torch.randn_like(q_out), torch.randn_like(k_out)
    dq, dk = torch.autograd.grad((q_out, k_out), (q, k), (gq, gk))
    rq, rk = ref64(gq, gk, None, None, multi_axis=ma, positions=positions, conjugate=True)
    close = dict(layout="bshd", rotary_dim=16, interleaved=ma.interleaved, table_bound=FREQS_TABLE_BOUND)
    assert_rotary_close(dq, rq, gq, **close)
    assert_rotary_close(dk, rk, gk, **close)


def test_decode_offsets_put_every_axis_at_the_same_position(device):
    # Text tokens after an image (decode): every axis at index + offset, as Qwen2-VL's position ids.
    ma = PRESETS["mrope"]()
    q, k = make_qk("bshd", 3, 1, 4, 2, 16, torch.bfloat16, device)
    offsets = torch.tensor([7, 300, 4095], device=device)
    positions = offsets.view(1, 3, 1).expand(3, 3, 1)
    q_out, k_out = rope_triton.apply_rotary(q, k, multi_axis=ma, offsets=offsets)
    rq, rk = ref64(q, k, None, None, multi_axis=ma, positions=positions)
    close = dict(layout="bshd", rotary_dim=16, interleaved=False, table_bound=FREQS_TABLE_BOUND)
    assert_rotary_close(q_out, rq, q, **close)
    assert_rotary_close(k_out, rk, k, **close)


def test_axis_without_positions_gives_nan_not_a_wrong_rotation(device):
    # A hand-made table naming axis 3 with positions of 3 axes: those pairs are NaN, the others rotate.
    ma = MultiAxis(torch.tensor([0, 1, 2, 2]), torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64), 3)
    table = ma.freq_table(device).clone()
    table[-1, 3] = 3
    q = torch.randn(1, 2, 1, 8, device=device)
    positions = torch.randint(0, 50, (3, 1, 2), device=device)
    out, _ = rope_triton.apply_rotary(q, None, freqs=table, positions=positions)
    assert out[..., [3, 7]].isnan().all()
    ref, _ = ref64(q, None, None, None, multi_axis=ma, positions=positions)
    finite = [0, 1, 2, 4, 5, 6]
    assert (out[..., finite].double() - ref[..., finite]).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"positions": "2-D"}, ValueError, r"positions: expected a leading axis dim of n_axes = 3"),
        ({"positions": "2 axes"}, ValueError, r"positions: expected a leading axis dim of n_axes = 3"),
        ({"positions": "float"}, ValueError, r"positions: this MultiAxis takes integer positions"),
        ({"interleaved": True}, ValueError, r"interleaved: the MultiAxis pairs dims half-split"),
        ({"rotary_dim": 8}, ValueError, r"rotary_dim: expected the MultiAxis's 16"),
        ({"cos": "table"}, ValueError, r"multi_axis: cos/sin tables, freqs and multi_axis are exclusive"),
        ({"offsets": 3}, ValueError, r"offsets: positions and offsets are mutually exclusive"),
        ({"positions": "wrong seq"}, ValueError, r"positions: a multi-axis freqs table needs positions"),
        ({"multi_axis": "preset"}, TypeError, r"multi_axis: expected a rope_triton.angles.MultiAxis"),
    ],
)
@pytest.mark.usefixtures("cpu_modes")
def test_errors_name_the_argument(kwargs, error, match):
    ma = PRESETS["mrope"]()
    q = torch.randn(2, 4, 2, 16)
    good = torch.randint(0, 9, (3, 2, 4))
    values = {
        "2-D": torch.randint(0, 9, (2, 4)), "2 axes": torch.randint(0, 9, (2, 2, 4)), "float": good.float(),
        "wrong seq": torch.randint(0, 9, (3, 2, 5)), "table": torch.ones(8, 8), "preset": "mrope",
    }
    call = {"multi_axis": ma, "positions": good}
    for name, value in kwargs.items():
        call[name] = values.get(value, value) if isinstance(value, str) else value
    if "cos" in call:
        call["sin"] = call["cos"]
    with pytest.raises(error, match=match):
        rope_triton.apply_rotary(q, None, **call)


def test_fractional_positions_need_frequencies_below_one_turn():
    ma = MultiAxis(
        torch.tensor([0]), torch.tensor([2 * math.pi], dtype=torch.float64), 1, integer_positions=False
    )
    with pytest.raises(
        ValueError, match="inv_freq: fractional positions need every inverse frequency below 2 pi"
    ):
        ma.freq_table()


@pytest.mark.parametrize("model", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_module_from_hf_config_takes_three_axis_positions(model, device):
    # RotaryEmbedding.from_hf_config on a Qwen-VL text config gives the multi-axis module (built even under
    # a meta default device, as deferred initialization does); its forward takes (3, B, S) positions.
    transformers = pytest.importorskip("transformers")
    configs = {
        "qwen2_vl": transformers.Qwen2VLTextConfig, "qwen2_5_vl": transformers.Qwen2_5_VLTextConfig,
        "qwen3_vl": transformers.Qwen3VLTextConfig,
    }
    params = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}
    cfg = configs[model](hidden_size=32, num_attention_heads=2, head_dim=16, rope_parameters=params)
    with torch.device("meta"):
        rope = rope_triton.RotaryEmbedding.from_hf_config(cfg)
    assert isinstance(rope, rope_triton.MultiAxisRotaryEmbedding) and rope.multi_axis.n_axes == 3
    q, k = make_qk("bshd", 2, 5, 2, 1, 16, torch.bfloat16, device)
    positions = torch.randint(0, 5000, (3, 2, 5), device=device)
    q_out, k_out = rope(q, k, positions=positions)
    ma = rope.multi_axis
    assert ma.axis.tolist()[:8] == (
        [0, 1, 2, 0, 1, 2, 0, 1] if model == "qwen3_vl" else [0, 0, 1, 1, 1, 2, 2, 2]
    )
    rq, rk = ref64(q, k, None, None, multi_axis=ma, positions=positions)
    close = dict(layout="bshd", rotary_dim=16, interleaved=False, table_bound=FREQS_TABLE_BOUND)
    assert_rotary_close(q_out, rq, q, **close)
    assert_rotary_close(k_out, rk, k, **close)


@pytest.mark.parametrize("preset", ["mrope", "flux"])
def test_compile_fullgraph(preset, device, monkeypatch):
    """torch.compile(fullgraph=True) of a multi-axis call: the registered op on a GPU, the CPU path's
    formulation on a CPU (the plain one has no multi-axis positions); same results as eager."""
    from rope_triton._core import op as _ops

    if device.type == "cpu":
        monkeypatch.setattr(_ops, "triton_runs_on", lambda d: d.type == "cuda")  # compiled CPU: no kernel
    ma = mrope(32, [4, 6, 6]) if preset == "mrope" else nd_rope([8, 12, 12])
    q, k = make_qk("bshd", 2, 8, 4, 2, 32, torch.float32, device)
    pos = torch.randint(0, 50, (3, 2, 8), device=device)
    if preset == "flux":
        pos = pos + torch.rand(3, 2, 8, device=device)

    def fn(q, k, pos):
        return rope_triton.apply_rotary(q, k, multi_axis=ma, positions=pos)

    torch._dynamo.reset()
    eager, compiled = fn(q, k, pos), torch.compile(fn, fullgraph=True)(q, k, pos)
    for a, b, x in zip(compiled, eager, (q, k), strict=True):
        assert_rotary_close(a, ref64(x, None, None, None, multi_axis=ma, positions=pos)[0], x, layout="bshd",
                            rotary_dim=32, interleaved=ma.interleaved, table_bound=FREQS_TABLE_BOUND)
        torch.testing.assert_close(a, b)
