"""Hugging Face transformers integration: the drop-in functions against transformers' own, and patched tiny
models (random weights, built from their config classes: nothing is downloaded) against unpatched ones.

How results are compared. Patched and unpatched models differ only in how the rotary step rounds, so
neither is "the" answer: both are compared with a float64 run of the unpatched model, and the patched
error must be of the unpatched error's size (``_assert_as_accurate``). The drop-in functions are compared
with the exact (float64) rotation by the same tables, within the kernel's float32 bound (helpers).
"""

from __future__ import annotations

import copy
import gc
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import assert_as_accurate as _assert_as_accurate  # noqa: E402
from helpers import assert_rotary_close  # noqa: E402
from transformers.models.gpt_neox import modeling_gpt_neox as hf_neox  # noqa: E402
from transformers.models.gptj import modeling_gptj as hf_gptj  # noqa: E402
from transformers.models.llama import modeling_llama as hf_llama  # noqa: E402
from transformers.models.llama4 import modeling_llama4 as hf_llama4  # noqa: E402
from transformers.models.qwen2_vl import modeling_qwen2_vl as hf_qwen2_vl  # noqa: E402

from rope_triton.integrations import transformers as rope_transformers  # noqa: E402
from rope_triton.integrations.transformers import (  # noqa: E402
    SUPPORTED_FAMILIES,
    apply_multimodal_rotary_pos_emb,
    apply_rotary_emb_llama4,
    apply_rotary_pos_emb,
    apply_rotary_pos_emb_gptj,
    apply_rotary_pos_emb_vision,
    patch,
    unpatch,
)

# transformers' own functions, taken before any test patches anything.
HF_STANDARD = hf_llama.apply_rotary_pos_emb
HF_PARTIAL = hf_neox.apply_rotary_pos_emb
HF_GPTJ = hf_gptj.apply_rotary_pos_emb
HF_VISION = hf_qwen2_vl.apply_rotary_pos_emb_vision
HF_LLAMA4 = hf_llama4.apply_rotary_emb

# ---- tiny models ----------------------------------------------------------------------------------------

_TOKENS = dict(vocab_size=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_COMMON = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=64, **_TOKENS,
)  # fmt: skip
_MOE = dict(num_experts_per_tok=1)
_GEMMA3_LAYERS = ["sliding_attention", "full_attention"]  # a local-base layer and a global one
_LLAMA4 = dict(
    head_dim=16, num_hidden_layers=2,
    no_rope_layers=[1, 0],  # layer 0 rotates (then normalizes q and k: qk_norm), layer 1 is NoPE
    floor_scale=2,  # the NoPE layer's temperature tuning scales q from the first positions on
    intermediate_size=32, intermediate_size_mlp=128, moe_layers=[1], num_local_experts=2, **_MOE,
    # Llama 3.1 scaling with pairs in all three bands (kept, blended, divided by the factor) at head_dim 16
    rope_parameters=dict(
        rope_type="llama3", rope_theta=100.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32,
    ),
)  # fmt: skip

# family -> (config class, model class, config arguments)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=2, **_MOE)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(num_experts=2, moe_intermediate_size=32, shared_expert_intermediate_size=32, **_MOE),
    ),  # fmt: skip
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16)),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(head_dim=16, num_experts=2, moe_intermediate_size=32, **_MOE),
    ),  # fmt: skip
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(head_dim=16)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16)),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(head_dim=16, num_hidden_layers=2, sliding_window=4, layer_types=_GEMMA3_LAYERS),
    ),  # fmt: skip
    "phi": ("PhiConfig", "PhiForCausalLM", dict(partial_rotary_factor=0.5)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(partial_rotary_factor=0.5)),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {}),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", dict(num_local_experts=2, **_MOE)),
    "llama4": ("Llama4TextConfig", "Llama4ForCausalLM", _LLAMA4),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", {}),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=2, **_MOE)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", dict(partial_rotary_factor=0.25)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(rotary_pct=0.25)),
    "gptj": (
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(n_embd=64, n_layer=1, n_head=4, n_positions=64, rotary_dim=8, **_TOKENS),
    ),  # fmt: skip
}


# Vision-language families: a tiny text model with M-RoPE sections [2, 3, 3] (head_dim 16) and a one-block
# vision tower of 2 x 2 patches merged 2 x 2. Their inputs: see _vl_inputs.
_VL_TEXT = dict(_COMMON, vocab_size=160, max_position_embeddings=256, head_dim=16)
_VL_VISION = dict(
    depth=1, num_heads=2, patch_size=2, spatial_merge_size=2, temporal_patch_size=2, in_channels=3
)  # fmt: skip
_VL_TOKENS = dict(image_token_id=150, video_token_id=151, vision_start_token_id=152, vision_end_token_id=153)
_VL_SECTIONS = dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])
_QWEN25_VISION = dict(
    hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=8, fullatt_block_indexes=[0]
)  # fmt: skip
_QWEN3_VISION = dict(
    hidden_size=32, intermediate_size=64, out_hidden_size=64, num_position_embeddings=16,
    deepstack_visual_indexes=[0],
)  # fmt: skip
_QWEN3_TEXT = dict(rope_parameters=dict(_VL_SECTIONS, mrope_interleaved=True))
# family -> (config class, model class, text config, vision config)
VL_FAMILIES = {
    "qwen2_vl": (
        "Qwen2VLConfig", "Qwen2VLForConditionalGeneration", dict(rope_parameters=_VL_SECTIONS),
        dict(embed_dim=32, hidden_size=64, mlp_ratio=2),
    ),
    "qwen2_5_vl": (
        "Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration", dict(rope_parameters=_VL_SECTIONS),
        _QWEN25_VISION,
    ),
    "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration", _QWEN3_TEXT, _QWEN3_VISION),
    "qwen3_vl_moe": (
        "Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration",
        dict(_QWEN3_TEXT, num_experts=2, moe_intermediate_size=32, **_MOE), _QWEN3_VISION,
    ),
}  # fmt: skip


def build_vl(family: str, device) -> torch.nn.Module:
    """A seeded tiny vision-language model of ``family`` in float32, eval mode."""
    config_cls, model_cls, text, vision = VL_FAMILIES[family]
    config = getattr(transformers, config_cls)(
        text_config={**_VL_TEXT, **text}, vision_config={**_VL_VISION, **vision}, **_VL_TOKENS
    )
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    if "moe" in family:
        model.set_experts_implementation("eager")
    return model.to(device)


def _vl_inputs(device, dtype=torch.float32) -> dict:
    """Two text tokens, an image of 4 x 4 patches (4 tokens after the 2 x 2 merge) and two text tokens."""
    ids = torch.tensor([[5, 6, 152, 150, 150, 150, 150, 153, 7, 8]], device=device)
    torch.manual_seed(1)
    return dict(
        input_ids=ids,
        mm_token_type_ids=(ids == 150).long(),
        pixel_values=torch.randn(16, 3 * 2 * 2 * 2, device=device, dtype=dtype),
        image_grid_thw=torch.tensor([[1, 4, 4]], device=device),
    )


def build(family: str, device, **overrides) -> torch.nn.Module:
    """A seeded tiny model of ``family`` in float32, eval mode (no dropout)."""
    config_cls, model_cls, kwargs = FAMILIES[family]
    kwargs = {**kwargs, **overrides} if family == "gptj" else {**_COMMON, **kwargs, **overrides}
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config).eval()
    if "moe" in family or family in ("mixtral", "olmoe"):
        # The grouped-matmul experts have no float64 kernel; the eager loop does.
        model.set_experts_implementation("eager")
    return model.to(device)


def _logits_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


# ---- import hygiene ---------------------------------------------------------------------------------------


def test_importing_rope_triton_does_not_import_transformers():
    code = (
        "import sys, rope_triton, rope_triton.integrations.transformers as t\n"
        "rope_triton.apply_rotary, rope_triton.RotaryEmbedding, t.patch\n"
        "assert 'transformers' not in sys.modules, 'transformers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_every_supported_family_is_tested():
    assert sorted({**FAMILIES, **VL_FAMILIES}) == sorted(SUPPORTED_FAMILIES)


# ---- drop-in functions ----------------------------------------------------------------------------------

B, S, HQ, HK, D = 2, 5, 4, 2, 16


def _hf_tables(batch, rotary_dim, dtype, device, offset=3):
    """Tables as transformers' rotary embeddings build them: cat(freqs, freqs), per batch row."""
    inv = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    pos = torch.arange(S, device=device, dtype=torch.float64) + offset
    pos = pos + 7 * torch.arange(batch, device=device)[:, None]  # another position range per batch row
    freqs = pos[..., None] * inv
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _exact(hf_fn, q, k, cos, sin, **kw):
    """The float64 rotation by the given tables (transformers' formula, in float64)."""
    return hf_fn(q.double(), k.double(), cos.double(), sin.double(), **kw)


@pytest.mark.parametrize("cos_batch", [1, B], ids=["cos_b1", "cos_bB"])
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_drop_in_matches_hf(dtype, unsqueeze_dim, cos_batch, device):
    layout = "bhsd" if unsqueeze_dim == 1 else "bshd"
    shape = (lambda h: (B, h, S, D)) if unsqueeze_dim == 1 else (lambda h: (B, S, h, D))
    q, k = torch.randn(shape(HQ), device=device).to(dtype), torch.randn(shape(HK), device=device).to(dtype)
    cos, sin = _hf_tables(cos_batch, D, dtype, device)
    q_out, k_out = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    q_ref, k_ref = _exact(HF_STANDARD, q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    for out, ref, x in ((q_out, q_ref, q), (k_out, k_ref, k)):
        assert_rotary_close(out, ref, x, layout=layout, rotary_dim=D, interleaved=False)
    # transformers rounds in the input dtype: in float32 it agrees with us to float32 rounding.
    q_hf, _ = HF_STANDARD(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    assert q_hf.dtype == q_out.dtype
    if dtype == torch.float32:
        torch.testing.assert_close(q_out, q_hf)


def test_drop_in_per_batch_tables_need_no_extra_work(device, monkeypatch):
    """Per-row tables (left-padded batches) go to the kernel as they are: no index tensor is built (an
    earlier version allocated an arange per call: one more launch per layer and step)."""
    q, k = torch.randn(B, S, HQ, D, device=device), torch.randn(B, S, HK, D, device=device)
    cos, sin = _hf_tables(B, D, torch.float32, device)
    want = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.arange called")

    monkeypatch.setattr(torch, "arange", refuse)
    got = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    monkeypatch.undo()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    q_ref, _ = _exact(HF_STANDARD, q, k, cos, sin, unsqueeze_dim=2)
    assert_rotary_close(got[0], q_ref, q, layout="bshd", rotary_dim=D, interleaved=False)


@pytest.mark.parametrize("forms", ["2d-3d", "b1-bB"])
def test_drop_in_mixed_table_forms(forms, device):
    """cos and sin of different batch forms (one shared, one per row): each read as given."""
    q, k = torch.randn(B, HQ, S, D, device=device), torch.randn(B, HK, S, D, device=device)
    cos, sin = _hf_tables(B, D, torch.float32, device)
    sin = sin[0] if forms == "2d-3d" else sin[:1]
    q_out, k_out = apply_rotary_pos_emb(q, k, cos, sin)
    q_ref, k_ref = _exact(HF_STANDARD, q, k, cos, sin.expand(B, S, D))
    assert_rotary_close(q_out, q_ref, q, layout="bhsd", rotary_dim=D, interleaved=False)
    assert_rotary_close(k_out, k_ref, k, layout="bhsd", rotary_dim=D, interleaved=False)


def test_drop_in_reads_strided_views(device):
    """q and k sliced from one fused qkv projection and transposed (as Phi-3 does), cos/sin columns of a
    wider buffer, and a batch-expanded (stride 0) table: all read in place."""
    qkv = torch.randn(B, S, (HQ + 2 * HK) * D, device=device)
    q = qkv[..., : HQ * D].view(B, S, HQ, D).transpose(1, 2)
    k = qkv[..., HQ * D : (HQ + HK) * D].view(B, S, HK, D).transpose(1, 2)
    cos1, sin1 = _hf_tables(1, D, torch.float32, device)
    wide = torch.cat((cos1, sin1), dim=-1)  # (1, S, 2D): cos and sin are column slices
    cos, sin = wide[..., :D].expand(B, S, D), wide[..., D:].expand(B, S, D)
    q_out, k_out = apply_rotary_pos_emb(q, k, cos, sin)
    q_ref, k_ref = _exact(HF_STANDARD, q, k, cos, sin)
    assert_rotary_close(q_out, q_ref, q, layout="bhsd", rotary_dim=D, interleaved=False)
    assert_rotary_close(k_out, k_ref, k, layout="bhsd", rotary_dim=D, interleaved=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_drop_in_partial_rotary(dtype, device):
    """cos narrower than head_dim (GPT-NeoX, Phi): the first R dims rotate, the others pass through."""
    r = D // 4
    q = torch.randn(B, HQ, S, D, device=device).to(dtype)
    k = torch.randn(B, HK, S, D, device=device).to(dtype)
    cos, sin = _hf_tables(B, r, dtype, device)
    q_out, k_out = apply_rotary_pos_emb(q, k, cos, sin)
    q_ref, k_ref = _exact(HF_PARTIAL, q, k, cos, sin)
    assert_rotary_close(q_out, q_ref, q, layout="bhsd", rotary_dim=r, interleaved=False)
    assert_rotary_close(k_out, k_ref, k, layout="bhsd", rotary_dim=r, interleaved=False)


@pytest.mark.parametrize("cos_batch", [1, B], ids=["cos_b1", "cos_bB"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_drop_in_gptj(dtype, cos_batch, device):
    """GPT-J: (batch, seq, heads, R) slices of a wider key, half-width (sin, cos), adjacent pairs."""
    r = D // 2
    key = torch.randn(B, S, HQ, D, device=device).to(dtype)
    x = key[..., :r]
    cos, sin = (t[..., : r // 2] for t in _hf_tables(cos_batch, r, dtype, device))
    out = apply_rotary_pos_emb_gptj(x, sin, cos)
    ref = HF_GPTJ(x.double(), sin.double(), cos.double())
    assert_rotary_close(out, ref, x, layout="bshd", rotary_dim=r, interleaved=True)
    if dtype == torch.float32:
        torch.testing.assert_close(out, HF_GPTJ(x, sin, cos))


@pytest.mark.usefixtures("cpu_modes")
def test_drop_in_signature(device):
    q, k = torch.randn(1, S, HQ, D, device=device), torch.randn(1, S, HK, D, device=device)
    cos, sin = _hf_tables(1, D, torch.float32, device)
    expected = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    # The older signature's position_ids are ignored; an int in their place is unsqueeze_dim.
    ignored = apply_rotary_pos_emb(q, k, cos, sin, torch.arange(S, device=device)[None] + 40, 2)
    positional = apply_rotary_pos_emb(q, k, cos, sin, 2)
    for got in (ignored, positional):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    q_only, none = apply_rotary_pos_emb(q, None, cos[0], sin[0], unsqueeze_dim=-2)  # (seq, R) tables
    assert none is None and torch.equal(q_only, expected[0])
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=3)
    with pytest.raises(ValueError, match="cos: expected shape"):
        apply_rotary_pos_emb(q, k, cos[:, :-1], sin[:, :-1], unsqueeze_dim=2)
    with pytest.raises(ValueError, match="4-D"):
        apply_rotary_pos_emb(q[0], k[0], cos, sin)
    wide = torch.cat((cos, cos), dim=-1)  # tables wider than head_dim
    with pytest.raises(ValueError, match=f"cos: expected an even width .* at most head_dim = {D}"):
        apply_rotary_pos_emb(q, k, wide, wide, unsqueeze_dim=2)
    with pytest.raises(ValueError, match="cos: expected an even width"):
        apply_rotary_pos_emb(q, k, cos[..., :-1], sin[..., :-1], unsqueeze_dim=2)
    with pytest.raises(ValueError, match=r"sin: expected the width of cos \(16\), got shape \(1, 5, 8\)"):
        apply_rotary_pos_emb(q, k, cos[0], sin[..., :8], unsqueeze_dim=2)
    with pytest.raises(ValueError, match=r"cos: expected shape .* got \(\)"):
        apply_rotary_pos_emb(q, k, cos[0, 0, 0], sin, unsqueeze_dim=2)
    with pytest.raises(TypeError, match="sin: expected a torch.Tensor, got NoneType"):
        apply_rotary_pos_emb(q, k, cos, None, unsqueeze_dim=2)
    # An empty batch: nothing to rotate, no error.
    q0, k0 = apply_rotary_pos_emb(q[:0], k[:0], cos[:0], sin[:0], unsqueeze_dim=2)
    assert q0.shape == q[:0].shape and k0.shape == k[:0].shape


# ---- patched models -------------------------------------------------------------------------------------


QK_NORM_FAMILIES = {"gemma3", "olmo2", "olmoe", "qwen3", "qwen3_moe"}  # q_norm and k_norm, then the rotation
_ROTATION = {"llama4": "apply_rotary_emb"}  # the swapped function, where it is not apply_rotary_pos_emb


def _fused_layers(family: str, config) -> tuple[int, int]:
    """(layers whose q/k norms are fused into the rotation, names each adds to patch's list)."""
    if family == "llama4":  # the layers that rotate, each with its one weightless qk_norm
        return sum(config.no_rope_layers), 2
    return (config.num_hidden_layers if family in QK_NORM_FAMILIES else 0), 3


def _count_fused_calls(monkeypatch) -> list:
    calls = []
    fused = rope_transformers.qk_norm_rotary

    def counted(*args, **kwargs):
        calls.append(kwargs.get("norm"))
        return fused(*args, **kwargs)

    monkeypatch.setattr(rope_transformers, "qk_norm_rotary", counted)
    return calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_model_parity_fp32(family, device, monkeypatch):
    """Logits and every parameter's gradient of a patched float32 model are as accurate as the unpatched
    model's (both against a float64 run)."""
    model = build(family, device)
    ref_model = copy.deepcopy(model).double()
    ids = torch.randint(3, 128, (2, 4), device=device)
    ref_logits, ref_grads = _logits_and_grads(ref_model, ids)
    base_logits, base_grads = _logits_and_grads(model, ids)
    fused = _count_fused_calls(monkeypatch)
    changed = patch(model)
    try:
        ours_logits, ours_grads = _logits_and_grads(model, ids)
    finally:
        unpatch(model)
    rotation = _ROTATION.get(family, "apply_rotary_pos_emb")
    assert changed[0] == f"transformers.models.{family}.modeling_{family}.{rotation}"
    layers, names = _fused_layers(family, model.config)
    # Layers with q/k norms normalize and rotate in one call (norm weights' gradients included below).
    assert len(changed) == 1 + names * layers and len(fused) == layers
    _assert_as_accurate(ours_logits, base_logits, ref_logits, "logits")
    assert ours_grads.keys() == base_grads.keys() == ref_grads.keys()
    for name, g in ours_grads.items():
        _assert_as_accurate(g, base_grads[name], ref_grads[name], f"grad of {name}")


@pytest.mark.parametrize("family", ["llama", *sorted(QK_NORM_FAMILIES)])
def test_cpu_path_model_parity(family, monkeypatch):
    """A patched model on a CPU without the interpreter (the CPU path, fused norms included, replays from
    the second layer on): logits as accurate as the unpatched model's, and the same greedy tokens."""
    from rope_triton._core import norm_op
    from rope_triton._core import op as _ops

    for module in (_ops, norm_op):
        monkeypatch.setattr(module, "triton_runs_on", lambda device: False)
        monkeypatch.setattr(module, "_INTERPRETED", False)
    cpu_rotations = []
    rotate, norm_rotate = _ops.cpu.rotate, norm_op.cpu.norm_rotate
    monkeypatch.setattr(_ops.cpu, "rotate", lambda *a: cpu_rotations.append("rotate") or rotate(*a))
    monkeypatch.setattr(
        norm_op.cpu, "norm_rotate", lambda *a: cpu_rotations.append("norm") or norm_rotate(*a)
    )
    model = build(family, torch.device("cpu"))
    ref_model = copy.deepcopy(model).double()
    ids = torch.randint(3, 128, (2, 5))
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    kw = dict(attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        ref, base = ref_model(ids).logits, model(ids).logits
        base_tokens = model.generate(ids, **kw)
        patch(model)
        try:
            ours = model(ids).logits
            ours_tokens = model.generate(ids, **kw)
        finally:
            unpatch(model)
    assert set(cpu_rotations) == {"norm" if family in QK_NORM_FAMILIES else "rotate"}
    _assert_as_accurate(ours, base, ref, "logits")
    assert torch.equal(ours_tokens, base_tokens)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gptj", "llama4"])
def test_model_parity_bf16(family, device):
    """bfloat16 model: the rotary step rounds once (ours) instead of three times (transformers; Llama 4:
    once after the rotation, once after its norm); logits stay within the same bfloat16 error of a
    float64 run."""
    model = build(family, device)
    ref_model = copy.deepcopy(model).double()
    model = model.to(torch.bfloat16)
    ids = torch.randint(3, 128, (2, 4), device=device)
    with torch.no_grad():
        ref, base = ref_model(ids).logits, model(ids).logits
        patch(model)
        try:
            ours = model(ids).logits
        finally:
            unpatch(model)
    _assert_as_accurate(ours, base, ref, "bf16 logits", max_ratio=2.0, rms_ratio=1.25)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_generate_same_tokens(family, device):
    """Greedy generation with a KV cache, batch of two with left padding (per-row positions)."""
    model = build(family, device)
    ids = torch.randint(3, 128, (2, 5), device=device)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0
    kw = dict(attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = model.generate(ids, **kw)
        patch(model)
        try:
            ours = model.generate(ids, **kw)
        finally:
            unpatch(model)
    assert torch.equal(ours, base)


def _vl_logits_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs, labels=inputs["input_ids"])
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("family", sorted(VL_FAMILIES))
def test_vl_model_parity_fp32(family, device):
    """A patched vision-language model with an image: the text attention (M-RoPE tables) and the vision
    tower (2-D tables) both rotate with rope-triton; logits and every gradient (vision tower included) are
    as accurate as the unpatched model's against a float64 run."""
    model = build_vl(family, device)
    ref_model = copy.deepcopy(model).double()
    ref_logits, ref_grads = _vl_logits_and_grads(ref_model, _vl_inputs(device, torch.float64))
    base_logits, base_grads = _vl_logits_and_grads(model, _vl_inputs(device))
    changed = patch(model)
    try:
        ours_logits, ours_grads = _vl_logits_and_grads(model, _vl_inputs(device))
    finally:
        unpatch(model)
    module = f"transformers.models.{family}.modeling_{family}"
    assert f"{module}.apply_rotary_pos_emb" in changed and f"{module}.apply_rotary_pos_emb_vision" in changed
    _assert_as_accurate(ours_logits, base_logits, ref_logits, "logits")
    assert ours_grads.keys() == base_grads.keys() == ref_grads.keys()
    assert any(name.startswith("model.visual") for name in ours_grads)  # the tower is on the gradient path
    for name, g in ours_grads.items():
        _assert_as_accurate(g, base_grads[name], ref_grads[name], f"grad of {name}")


@pytest.mark.parametrize("family", sorted(VL_FAMILIES))
def test_vl_generate_same_tokens(family, device):
    """Greedy generation with an image and a KV cache (decode steps continue the M-RoPE positions)."""
    model = build_vl(family, device)
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = model.generate(**_vl_inputs(device), **kw)
        patch(model)
        try:
            ours = model.generate(**_vl_inputs(device), **kw)
        finally:
            unpatch(model)
    assert torch.equal(ours, base)


@pytest.mark.usefixtures("cpu_modes")
def test_vision_drop_in_matches_hf(device):
    """The vision drop-in against the float64 rotation by the same tables, on the strided (tokens, heads,
    dim) views that the towers unbind from their fused qkv."""
    torch.manual_seed(0)
    tokens, heads, dim = 12, 2, 16
    qkv = torch.randn(tokens, 3, heads, dim, device=device, dtype=torch.bfloat16)
    q, k, _ = qkv.permute(1, 0, 2, 3).unbind(0)
    hw = torch.stack((torch.arange(tokens) // 4, torch.arange(tokens) % 4), -1).to(device)
    inv = 10000.0 ** (-torch.arange(0, dim // 2, 2, dtype=torch.float64, device=device) / (dim // 2))
    freqs = (hw[..., None] * inv).flatten(1)  # (tokens, dim / 2): h pairs, then w pairs
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    before = qkv.clone()
    ours = apply_rotary_pos_emb_vision(q, k, cos, sin)
    exact = _exact(HF_VISION, q, k, cos, sin)
    assert torch.equal(qkv, before)  # out of place
    for o, e, x in zip(ours, exact, (q, k), strict=True):
        assert_rotary_close(o, e, x, layout="thd", rotary_dim=dim, interleaved=False)
    with pytest.raises(ValueError, match="q: expected a 3-D"):
        apply_rotary_pos_emb_vision(q[None], k, cos, sin)


def _llama4_freqs_cis(batch, dim, device, offset=3):
    """Complex tables as Llama 4's rotary embedding builds them: exp(i angle) of float32 angles, per batch
    row (batch, seq, dim / 2)."""
    inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    pos = torch.arange(S, device=device, dtype=torch.float64) + offset
    pos = pos + 7 * torch.arange(batch, device=device)[:, None]
    angle = (pos[..., None] * inv).float()
    return torch.polar(torch.ones_like(angle), angle)


def _exact_llama4(x, freqs_cis):
    """x (batch, seq, heads, dim) turned by freqs_cis, adjacent pairs as complex numbers, in float64."""
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * freqs_cis.to(torch.complex128)[:, :, None]).flatten(3)


@pytest.mark.parametrize("freqs_batch", [1, B], ids=["freqs_b1", "freqs_bB"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_drop_in_llama4(dtype, freqs_batch, device):
    """Llama 4's rotation, a complex multiply of adjacent pairs by freqs_cis, on q viewed from its
    projection (as the attention does) and GQA k: the exact rotation by the same tables, within the
    kernel's float32 bound; in float32 transformers' own result up to rounding."""
    q = torch.randn(B, S, HQ * D, device=device).to(dtype).view(B, S, HQ, D)
    k = torch.randn(B, S, HK, D, device=device).to(dtype)
    freqs_cis = _llama4_freqs_cis(freqs_batch, D, device)
    q_out, k_out = apply_rotary_emb_llama4(q, k, freqs_cis)
    for out, x in ((q_out, q), (k_out, k)):
        exact = _exact_llama4(x, freqs_cis)
        assert_rotary_close(out, exact, x, layout="bshd", rotary_dim=D, interleaved=True)
    q_hf, k_hf = HF_LLAMA4(q, k, freqs_cis)
    assert (q_hf.dtype, k_hf.dtype) == (q_out.dtype, k_out.dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(q_out, q_hf)
        torch.testing.assert_close(k_out, k_hf)


def test_drop_in_llama4_tables_once_per_freqs_cis(device):
    """Every layer of a forward rotates with the same freqs_cis: its cos/sin tables are made on the first
    call and reused, and made again once freqs_cis is written in place."""
    q, k = torch.randn(1, S, HQ, D, device=device), torch.randn(1, S, HK, D, device=device)
    freqs_cis = _llama4_freqs_cis(1, D, device)
    first = apply_rotary_emb_llama4(q, k, freqs_cis)
    memo = freqs_cis.__dict__["_rope_triton_cos_sin"]
    again = apply_rotary_emb_llama4(q, k, freqs_cis)
    assert freqs_cis.__dict__["_rope_triton_cos_sin"] is memo
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    freqs_cis.copy_(freqs_cis.conj())  # the inverse rotation now
    q_out, _ = apply_rotary_emb_llama4(q, None, freqs_cis)
    assert_rotary_close(q_out, _exact_llama4(q, freqs_cis), q, layout="bshd", rotary_dim=D, interleaved=True)


@pytest.mark.usefixtures("cpu_modes")
def test_drop_in_llama4_errors(device):
    q, k = torch.randn(1, S, HQ, D, device=device), torch.randn(1, S, HK, D, device=device)
    freqs_cis = _llama4_freqs_cis(1, D, device)
    with pytest.raises(ValueError, match=r"xq: expected a 4-D \(batch, seq, heads, head_dim\)"):
        apply_rotary_emb_llama4(q[0], k, freqs_cis)
    want = r"freqs_cis: expected a complex tensor of shape \(batch=1 or 1, seq=5, head_dim / 2 = 8\), got "
    with pytest.raises(ValueError, match=want + r"torch.float32 of shape \(1, 5, 8, 2\)"):
        apply_rotary_emb_llama4(q, k, torch.view_as_real(freqs_cis))
    with pytest.raises(ValueError, match=want + r"torch.complex64 of shape \(1, 5, 4\)"):
        apply_rotary_emb_llama4(q, k, freqs_cis[..., :4])
    with pytest.raises(ValueError, match=want + r"torch.complex64 of shape \(1, 4, 8\)"):
        apply_rotary_emb_llama4(q, k, freqs_cis[:, :4])
    with pytest.raises(ValueError, match=want + "tuple"):
        apply_rotary_emb_llama4(q, k, (freqs_cis.real, freqs_cis.imag))


_LAYOUT_OF = {1: "bhsd", 2: "bshd"}


@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
def test_multimodal_drop_in_composes_sections(unsqueeze_dim, device):
    """transformers before 4.57 passes per-axis (3, B, S, R) tables and the sections to every layer: block
    j of the sections turns by axis j % 3. Checked against that rule spelled out in float64."""
    torch.manual_seed(0)
    sections, dim = [2, 3, 3], 16
    pos = torch.randint(0, 50, (3, B, S), device=device, dtype=torch.float64)
    inv = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
    freqs = pos[..., None] * inv  # (3, B, S, dim/2)
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    shape = (B, HQ, S, dim) if unsqueeze_dim == 1 else (B, S, HQ, dim)
    q, k = torch.randn(shape, device=device), torch.randn(shape, device=device)
    axis_of_pair = [j % 3 for j, n in enumerate(sections) for _ in range(n)]
    angle = torch.stack([freqs[a, ..., i] for i, a in enumerate(axis_of_pair)], -1)
    angle = torch.cat((angle, angle), -1).unsqueeze(unsqueeze_dim)
    ours = apply_multimodal_rotary_pos_emb(q, k, cos, sin, sections, unsqueeze_dim)
    for o, x in zip(ours, (q, k), strict=True):
        x64 = x.double()
        rotated = torch.cat((-x64[..., dim // 2 :], x64[..., : dim // 2]), -1)
        exact = x64 * angle.cos() + rotated * angle.sin()
        assert_rotary_close(o, exact, x, layout=_LAYOUT_OF[unsqueeze_dim], rotary_dim=dim, interleaved=False)
    with pytest.raises(ValueError, match="mrope_section: expected sections summing to 8"):
        apply_multimodal_rotary_pos_emb(q, k, cos, sin, [2, 2, 2], unsqueeze_dim)


@pytest.mark.parametrize("family", sorted(QK_NORM_FAMILIES))
def test_fused_qk_norm_forms_and_opt_out(family, device, monkeypatch):
    """The norm's form is read off the module (Gemma's 1 + weight, OLMo 2's per-token norm over all
    heads); fuse_qk_norm=False leaves the norms to the model."""
    model = build(family, device)
    fused = _count_fused_calls(monkeypatch)
    attn = next(m for m in model.modules() if hasattr(m, "q_norm"))
    patch(model)
    try:
        model(torch.randint(3, 128, (1, 4), device=device))
        assert attn.q_norm._rope_triton_norm[1] == (1.0 if family == "gemma3" else 0.0)
    finally:
        unpatch(model)
    assert "forward" not in attn.__dict__ and "forward" not in attn.q_norm.__dict__
    assert set(fused) == {"rms_heads" if family.startswith("olmo") else "rms"}
    fused.clear()
    assert patch(model, fuse_qk_norm=False) == [
        f"transformers.models.{family}.modeling_{family}.apply_rotary_pos_emb"
    ]
    try:
        model(torch.randint(3, 128, (1, 4), device=device))
    finally:
        unpatch(model)
    assert fused == []


def test_deferred_norm_that_misses_the_rotation_raises(device, monkeypatch):
    """A layer whose deferred norms do not reach the patched rotation fails loudly, never returns
    unnormalized q and k."""
    model = build("qwen3", device)
    patch(model)
    module = sys.modules[type(model).__module__]
    try:
        monkeypatch.setattr(module, "apply_rotary_pos_emb", HF_STANDARD)  # someone swapped it back
        with pytest.raises(RuntimeError, match="did not pass them to apply_rotary_pos_emb"):
            model(torch.randint(3, 128, (1, 4), device=device))
    finally:
        monkeypatch.undo()
        unpatch(model)


# ---- Llama 4: the norm after the rotation -----------------------------------------------------------------


def _left_on(*modules) -> list[str]:
    """Instance attributes a patch set on these modules (none may be left after unpatch)."""
    return [n for m in modules for n in m.__dict__ if n == "forward" or n.startswith("_rope_triton")]


def test_llama4_fused_norm_after_rope(device, monkeypatch):
    """The layer that rotates normalizes q and k right after the rotation, in the same qk_norm_rotary call
    (weightless L2 norm after the rope, adjacent pairs), and its qk_norm computes nothing more; the NoPE
    layer (no rotation, no qk_norm, its own temperature tuning) is left alone; fuse_qk_norm=False leaves
    qk_norm to the model."""
    model = build("llama4", device)
    rope_attn, nope_attn = (layer.self_attn for layer in model.model.layers)
    assert rope_attn.use_rope and not nope_attn.use_rope and not hasattr(nope_attn, "qk_norm")
    calls, norms = [], []
    fused, plain_norm = rope_transformers.qk_norm_rotary, type(rope_attn.qk_norm).forward

    def spy(q, k, q_weight, k_weight, *args, **kwargs):
        calls.append((q_weight, k_weight, kwargs["norm"], kwargs["norm_after_rope"], kwargs["interleaved"]))
        return fused(q, k, q_weight, k_weight, *args, **kwargs)

    monkeypatch.setattr(rope_transformers, "qk_norm_rotary", spy)
    def counted_norm(self, x):
        norms.append(x)
        return plain_norm(self, x)

    monkeypatch.setattr(type(rope_attn.qk_norm), "forward", counted_norm)
    ids = torch.randint(3, 128, (1, 4), device=device)
    module = "transformers.models.llama4.modeling_llama4"
    changed = patch(model)
    norms.clear()  # (patch ran the norm once on a probe)
    try:
        assert changed == [
            f"{module}.apply_rotary_emb", "model.layers.0.self_attn.forward",
            "model.layers.0.self_attn.qk_norm.forward",
        ]  # fmt: skip
        assert rope_attn.qk_norm._rope_triton_norm == (model.config.rms_norm_eps, None)
        assert "forward" not in nope_attn.__dict__
        model(ids)
    finally:
        unpatch(model)
    assert calls == [(None, None, "l2", True, True)] and norms == []
    assert _left_on(rope_attn, rope_attn.qk_norm) == []
    calls.clear()
    assert patch(model, fuse_qk_norm=False) == [f"{module}.apply_rotary_emb"]
    try:
        model(ids)
    finally:
        unpatch(model)
    assert calls == [] and len(norms) == 2  # q and k, by the model's qk_norm


def test_llama4_rotation_that_misses_the_norm_raises(device, monkeypatch):
    """q and k normalized with the rotation must reach the layer's qk_norm (which then passes them on);
    if they do not (here qk_norm's forward was replaced after the patch), the layer fails loudly rather
    than return q and k normalized where the model's code did not normalize them."""
    model = build("llama4", device)
    norm = model.model.layers[0].self_attn.qk_norm
    patch(model)
    try:
        monkeypatch.setitem(norm.__dict__, "forward", lambda x: x * 1.0)
        with pytest.raises(RuntimeError, match="with its qk_norm fused .* did not pass them to qk_norm"):
            model(torch.randint(3, 128, (1, 4), device=device))
    finally:
        monkeypatch.undo()
        unpatch(model)


def test_llama4_unfused_rotation_leaves_the_norm_to_the_model(device, monkeypatch):
    """With transformers' own apply_rotary_emb swapped back in (by someone else), the wrapped layer's
    qk_norm normalizes as it does unpatched: the same logits, bit for bit."""
    model = build("llama4", device)
    ids = torch.randint(3, 128, (2, 5), device=device)
    with torch.no_grad():
        before = model(ids).logits
        patch(model)
        try:
            monkeypatch.setattr(hf_llama4, "apply_rotary_emb", HF_LLAMA4)
            got = model(ids).logits
        finally:
            monkeypatch.undo()
            unpatch(model)
    assert torch.equal(got, before)


def test_llama4_unpatch_restores_bitwise(device):
    """bf16 Llama 4 patched with fp32 tables (its frequency buffers rounded by .to() are rebuilt): unpatch
    puts back the function, the rotary module's forward and buffers, the fused layer's and its norm's
    forward; the logits are bitwise those from before."""
    model = build("llama4", device).to(torch.bfloat16)
    rotary, attn = model.model.rotary_emb, model.model.layers[0].self_attn
    inv_freq = rotary.inv_freq
    ids = torch.randint(3, 128, (1, 6), device=device)
    with torch.no_grad():
        before = model(ids).logits
        changed = patch(model, fp32_tables=True)
        assert changed == [
            f"{hf_llama4.__name__}.apply_rotary_emb", "model.rotary_emb.forward",
            "model.layers.0.self_attn.forward", "model.layers.0.self_attn.qk_norm.forward",
        ]  # fmt: skip
        assert hf_llama4.apply_rotary_emb is apply_rotary_emb_llama4
        assert rotary.inv_freq.dtype == torch.float32
        patched = model(ids).logits
        assert unpatch(model) == changed
        after = model(ids).logits
    assert hf_llama4.apply_rotary_emb is HF_LLAMA4
    assert rotary.inv_freq is inv_freq
    assert _left_on(rotary, attn, attn.qk_norm) == []
    assert torch.equal(after, before)
    assert not torch.equal(patched, before)  # the patch did change something


# ---- patch mechanics --------------------------------------------------------------------------------------


def test_unpatch_restores_bitwise(device):
    """bf16 model (its frequency buffers rounded by .to()), patched with fp32 tables: unpatch puts back
    the function, the rotary module's forward and its buffers; the logits are bitwise those from before."""
    model = build("llama", device).to(torch.bfloat16)
    rotary = model.model.rotary_emb
    inv_freq = rotary.inv_freq
    ids = torch.randint(3, 128, (1, 6), device=device)
    with torch.no_grad():
        before = model(ids).logits
        changed = patch(model, fp32_tables=True)
        assert changed == [f"{hf_llama.__name__}.apply_rotary_pos_emb", "model.rotary_emb.forward"]
        assert hf_llama.apply_rotary_pos_emb is apply_rotary_pos_emb
        assert rotary.inv_freq.dtype == torch.float32  # rebuilt from the config
        patched = model(ids).logits
        assert unpatch(model) == changed
        after = model(ids).logits
    assert hf_llama.apply_rotary_pos_emb is HF_STANDARD
    assert "forward" not in rotary.__dict__ and rotary.inv_freq is inv_freq
    assert torch.equal(after, before)
    assert not torch.equal(patched, before)  # the patch did change something
    assert unpatch(model) == []


def test_patch_is_per_family_and_counted(device):
    """The swapped function is shared by a family's models: it stays while one is patched."""
    a, b, other = build("llama", device), build("llama", device), build("qwen2", device)
    patch(a)
    assert patch(a) == ["transformers.models.llama.modeling_llama.apply_rotary_pos_emb"]  # again: no-op
    with pytest.raises(ValueError, match="fp32_tables"):
        patch(a, fp32_tables=True)
    patch(b)
    qwen2 = sys.modules[type(other).__module__]
    assert qwen2.apply_rotary_pos_emb is not apply_rotary_pos_emb  # another family: untouched
    unpatch(a)
    assert hf_llama.apply_rotary_pos_emb is apply_rotary_pos_emb  # b still patched
    unpatch(b)
    assert hf_llama.apply_rotary_pos_emb is HF_STANDARD


def test_patch_released_when_model_is_collected(device):
    model = build("llama", device)
    patch(model)
    del model
    gc.collect()
    assert hf_llama.apply_rotary_pos_emb is HF_STANDARD


def test_unsupported_model_raises():
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=16, **_TOKENS)
    with pytest.raises(TypeError, match=r"GPT2LMHeadModel.*Supported: .*llama"):
        patch(transformers.GPT2LMHeadModel(config))
    with pytest.raises(TypeError, match="Linear"):
        patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        patch("llama")


def test_fp32_tables_more_accurate(device, monkeypatch):
    """bf16 model: with float32 tables, the rotated q and k that reach the attention are closer to a
    float64 run's than transformers' (bf16 tables, bf16 math). They are captured at the eager attention
    function, whose inputs before the rotary step are identical in both bfloat16 runs."""
    seen = []
    eager = hf_llama.eager_attention_forward

    def spy(module, query, key, *args, **kwargs):
        seen.append((query.detach().double(), key.detach().double()))
        return eager(module, query, key, *args, **kwargs)

    monkeypatch.setattr(hf_llama, "eager_attention_forward", spy)
    model = build("llama", device, attn_implementation="eager")
    ref_model = copy.deepcopy(model).double()
    model = model.to(torch.bfloat16)
    ids = torch.randint(3, 128, (1, 16), device=device)
    positions = torch.arange(16, device=device)[None] + 40
    with torch.no_grad():
        for m in (ref_model, model):
            m(ids, position_ids=positions)
        patch(model, fp32_tables=True)
        try:
            model(ids, position_ids=positions)
        finally:
            unpatch(model)
    (q_ref, k_ref), (q_hf, k_hf), (q_ours, k_ours) = seen
    for ours, hf, ref in ((q_ours, q_hf, q_ref), (k_ours, k_hf, k_ref)):
        rms_ours, rms_hf = ((ours - ref).pow(2).mean().sqrt(), (hf - ref).pow(2).mean().sqrt())
        assert rms_ours < 0.8 * rms_hf, f"fp32 tables RMS error {rms_ours:.3e} vs transformers' {rms_hf:.3e}"


# ---- GPU only -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gptj", "qwen3", "olmo2"])
def test_larger_model_bf16_gpu(family):
    """A model of a realistic head size (128) and sequence (512) in bfloat16 on the GPU (Qwen3 and OLMo 2:
    their q/k norms fused with the rotation)."""
    sizes = dict(hidden_size=1024, intermediate_size=2048, num_attention_heads=8, num_key_value_heads=8,
                 num_hidden_layers=2, max_position_embeddings=1024, head_dim=128)  # fmt: skip
    if family == "gptj":
        sizes = dict(n_embd=1024, n_head=8, n_layer=2, n_positions=1024, rotary_dim=64)
    model = build(family, "cuda", **sizes)
    ref_model = copy.deepcopy(model).double()
    model = model.to(torch.bfloat16)
    ids = torch.randint(3, 128, (2, 512), device="cuda")
    with torch.no_grad():
        ref, base = ref_model(ids).logits, model(ids).logits
        patch(model)
        try:
            ours = model(ids).logits
        finally:
            unpatch(model)
    _assert_as_accurate(ours, base, ref, "bf16 logits", max_ratio=2.0, rms_ratio=1.1)


@pytest.mark.gpu
def test_compiled_patched_model_gpu():
    """torch.compile of a patched model traces the rotary op (no graph break) and matches eager."""
    model = build("llama", "cuda")
    ids = torch.randint(3, 128, (2, 64), device="cuda")
    patch(model)
    try:
        with torch.no_grad():
            eager = model(ids).logits
            compiled = torch.compile(model, fullgraph=True)(ids).logits
    finally:
        unpatch(model)
    torch.testing.assert_close(compiled, eager)
