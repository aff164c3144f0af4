"""diffusers integration: the drop-in ``apply_rotary_emb`` against a float64 oracle of its formula (always)
and diffusers' own function (when diffusers is installed), and patched tiny models (random weights, built
from their configs: nothing is downloaded) against unpatched ones and a float64 run."""

from __future__ import annotations

import copy
import gc

import pytest
import torch
from helpers import assert_as_accurate, assert_rotary_close

from rope_triton.functional import apply_rotary
from rope_triton.integrations import diffusers as rd

B, H, S, D = 2, 3, 7, 16


def _tables(seqlen, rotary_dim, device, *, interleave: bool):
    """diffusers-style (seq, R) float32 tables: each angle twice in a row (``interleave``) or
    ``cat(freqs, freqs)``. Returns them and the (seq, R/2) float64 angles."""
    inv = 10000.0 ** (-torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim)
    angle = (torch.arange(seqlen, dtype=torch.float64, device=device) * 3 + 1)[:, None] * inv
    tables = []
    for f in (angle.cos(), angle.sin()):
        t = f.repeat_interleave(2, -1) if interleave else torch.cat((f, f), -1)
        tables.append(t.float())
    return tables, angle


def _oracle(x, cos, sin, *, adjacent: bool, sequence_dim: int):
    """The rotation by the given (float32) tables in float64: pairs (2i, 2i + 1) or (i, i + R/2)."""
    x64, (seqlen, r) = x.double(), cos.shape
    shape = (1, 1, seqlen, r) if sequence_dim == 2 else (1, seqlen, 1, r)
    c, s = cos.double().view(shape), sin.double().view(shape)
    head, tail = x64[..., :r], x64[..., r:]
    if adjacent:
        a, b = head[..., 0::2], head[..., 1::2]
        turned = torch.stack((-b, a), -1).flatten(-2)
    else:
        a, b = head[..., : r // 2], head[..., r // 2 :]
        turned = torch.cat((-b, a), -1)
    return torch.cat((head * c + turned * s, tail), -1)


@pytest.mark.parametrize("rotary_dim", [D, D // 2], ids=["full", "partial"])
@pytest.mark.parametrize("sequence_dim", [1, 2])
@pytest.mark.parametrize("unbind", [-1, -2], ids=["adjacent", "halves"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_drop_in_matches_oracle(dtype, unbind, sequence_dim, rotary_dim, device):
    shape = (B, H, S, D) if sequence_dim == 2 else (B, S, H, D)
    x = torch.randn(shape, device=device).to(dtype)
    x0 = x.clone()
    (cos, sin), _ = _tables(S, rotary_dim, device, interleave=unbind == -1)
    out = rd.apply_rotary_emb(x, (cos, sin), use_real_unbind_dim=unbind, sequence_dim=sequence_dim)
    assert torch.equal(x, x0)
    want = _oracle(x, cos, sin, adjacent=unbind == -1, sequence_dim=sequence_dim)
    layout = "bhsd" if sequence_dim == 2 else "bshd"
    assert_rotary_close(out, want, x, layout=layout, rotary_dim=rotary_dim, interleaved=unbind == -1)


def test_drop_in_complex_freqs(device):
    """use_real=False (Lumina): a complex (seq, R/2) exp(i angle), adjacent pairs, x of (B, S, H, D)."""
    x = torch.randn(B, S, H, D, device=device)
    (cos, sin), angle = _tables(S, D, device, interleave=True)
    freqs_cis = torch.polar(torch.ones_like(angle), angle).to(torch.complex64)
    out = rd.apply_rotary_emb(x, freqs_cis, use_real=False)
    real = freqs_cis.real.repeat_interleave(2, -1), freqs_cis.imag.repeat_interleave(2, -1)
    want = _oracle(x, *real, adjacent=True, sequence_dim=1)
    assert_rotary_close(out, want, x, layout="bshd", rotary_dim=D, interleaved=True)


def test_packed_tables_made_once_per_table(device, monkeypatch):
    """The packed (seq, R/2) copy of FLUX's repeat-interleaved tables is made once for all the calls that
    share the tables, and remade when a table is written in place."""
    (cos, sin), _ = _tables(S, D, device, interleave=True)
    x = torch.randn(B, H, S, D, device=device)
    first = rd.apply_rotary_emb(x, (cos, sin))
    packed = cos.__dict__["_rope_triton_pairs"][2]
    rd.apply_rotary_emb(x * 2, (cos, sin))
    assert cos.__dict__["_rope_triton_pairs"][2] is packed
    sin.mul_(-1)  # now the conjugate rotation
    back = rd.apply_rotary_emb(first, (cos, sin))
    assert cos.__dict__["_rope_triton_pairs"][2] is not packed
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sequence_dim=3), "sequence_dim: expected 1 or 2, got 3"),
        (dict(use_real_unbind_dim=0), "use_real_unbind_dim: expected -1 or -2"),
        (dict(freqs_cis="x"), "freqs_cis: with use_real=True expected a \\(cos, sin\\) pair, got str"),
        (dict(use_real=False), "freqs_cis: with use_real=False expected a complex"),
        (dict(x=torch.zeros(3, 4)), "x: expected a 4-D tensor"),
        (dict(freqs_cis=(torch.ones(S, 2 * D), torch.ones(S, 2 * D))), "at most head_dim = 16"),
    ],
)
@pytest.mark.usefixtures("cpu_modes")
def test_drop_in_errors(kwargs, match):
    (cos, sin), _ = _tables(S, D, "cpu", interleave=True)
    args = dict(x=torch.randn(B, H, S, D), freqs_cis=(cos, sin)) | kwargs
    with pytest.raises(ValueError, match=match):
        rd.apply_rotary_emb(**args)


# ---- against diffusers --------------------------------------------------------------------------------

try:
    import diffusers
    from diffusers.models import embeddings as hf_embeddings

    DIFFUSERS_FORMULA = hf_embeddings.apply_rotary_emb  # taken before any test patches anything
except ImportError:  # the tests above still run: they need no diffusers
    diffusers = None
needs_diffusers = pytest.mark.skipif(diffusers is None, reason="needs diffusers (the [diffusers] extra)")


@needs_diffusers
@pytest.mark.parametrize("sequence_dim", [1, 2])
@pytest.mark.parametrize("unbind", [-1, -2], ids=["adjacent", "halves"])
def test_drop_in_matches_diffusers_float32(unbind, sequence_dim, device):
    """In float32 both round once per element: equal up to the last bit or two."""
    shape = (B, H, S, D) if sequence_dim == 2 else (B, S, H, D)
    x = torch.randn(shape, device=device)
    (cos, sin), _ = _tables(S, D, device, interleave=unbind == -1)
    kw = dict(use_real_unbind_dim=unbind, sequence_dim=sequence_dim)
    torch.testing.assert_close(
        rd.apply_rotary_emb(x, (cos, sin), **kw), DIFFUSERS_FORMULA(x, (cos, sin), **kw)
    )


def _flux(device):
    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=8, pooled_projection_dim=8, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    grid = torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij")
    inputs = dict(
        hidden_states=torch.randn(1, 16, 4), encoder_hidden_states=torch.randn(1, 3, 8),
        pooled_projections=torch.randn(1, 8), timestep=torch.tensor([0.5]),
        img_ids=torch.stack(grid, -1).reshape(-1, 3), txt_ids=torch.zeros(3, 3),
    )  # fmt: skip
    return model.eval().to(device), {k: v.to(device) for k, v in inputs.items()}


def _hunyuan_video(device):
    torch.manual_seed(0)
    model = diffusers.HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, text_embed_dim=8,
        pooled_projection_dim=8, rope_axes_dim=(4, 6, 6),
    )  # fmt: skip
    inputs = dict(
        hidden_states=torch.randn(1, 4, 2, 4, 4), timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 3, 8), encoder_attention_mask=torch.ones(1, 3),
        pooled_projections=torch.randn(1, 8), guidance=torch.tensor([3.0]),
    )  # fmt: skip
    return model.eval().to(device), {k: v.to(device) for k, v in inputs.items()}


MODELS = {"flux": _flux, "hunyuan_video": _hunyuan_video}


def _sample_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs).sample
    out.square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads


@needs_diffusers
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_parity(name, device, monkeypatch):
    """A patched float32 model: output and every parameter's gradient as accurate as the unpatched
    model's against a float64 run, and the rotation went through rope-triton."""
    model, inputs = MODELS[name](device)
    ref_model = copy.deepcopy(model).double()
    ref = _sample_and_grads(
        ref_model, {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    )
    base = _sample_and_grads(model, inputs)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return apply_rotary(*args, **kwargs)

    monkeypatch.setattr(rd, "apply_rotary", counted)
    changed = rd.patch(model)
    try:
        ours = _sample_and_grads(model, inputs)
    finally:
        assert rd.unpatch(model) == changed
    assert "diffusers.models.embeddings.apply_rotary_emb" in changed and calls
    assert hf_embeddings.apply_rotary_emb is DIFFUSERS_FORMULA
    assert_as_accurate(ours[0], base[0], ref[0], "sample")
    assert ours[1].keys() == base[1].keys() == ref[1].keys()
    # (the key biases' gradients are zero in exact arithmetic: noise at the scale of the other gradients)
    scale = max(g.abs().max().item() for g in ref[1].values())
    for n, g in ours[1].items():
        assert_as_accurate(g, base[1][n], ref[1][n], f"grad of {n}",
                           scale=scale if "k_proj.bias" in n or "to_k.bias" in n else None)


@needs_diffusers
def test_patch_mechanics(device):
    flux, _ = _flux(device)
    other, _ = _flux(device)
    from diffusers.models.transformers import transformer_flux

    changed = rd.patch(flux)
    assert changed == [
        "diffusers.models.embeddings.apply_rotary_emb",
        "diffusers.models.transformers.transformer_flux.apply_rotary_emb",
    ]
    assert rd.patch(flux) == changed  # again: no-op
    rd.patch(other)
    rd.unpatch(flux)
    assert transformer_flux.apply_rotary_emb is rd.apply_rotary_emb  # the other model still holds it
    del other
    gc.collect()
    assert transformer_flux.apply_rotary_emb is DIFFUSERS_FORMULA
    assert hf_embeddings.apply_rotary_emb is DIFFUSERS_FORMULA
    assert rd.unpatch(flux) == []
    with pytest.raises(TypeError, match="Linear: no diffusers class"):
        rd.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="nn.Module"):
        rd.patch("flux")
