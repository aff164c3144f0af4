"""Gradients: the conjugate rotation of the incoming gradient, against the float64 reference's autograd."""

from __future__ import annotations

import pytest
import torch
from helpers import FREQS_TABLE_BOUND, LAYOUTS, assert_rotary_close, make_qk, random_tables, ref64

import rope_triton


def _thd(layout, seqlen, device):
    if layout != "thd":
        return {}
    return {"cu_seqlens": torch.tensor([0, 1, seqlen], device=device)}


def _grads_against_reference(q, k, cos, sin, *, layout, inplace=False, grad_view="dense", **kw):
    """Backward of apply_rotary vs autograd through the float64 reference; returns nothing, asserts."""
    rotary_dim = kw.get("rotary_dim") or 2 * (cos if cos is not None else kw["freqs"]).shape[-1]
    interleaved = kw.get("interleaved", False)
    table_bound = kw.pop("table_bound", 1.0)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k) if t is not None]
    # In place needs a non-leaf input: rotate a copy made inside the graph.
    inputs = [t * 1 for t in leaves] if inplace else leaves
    outs = rope_triton.apply_rotary(
        inputs[0], inputs[1] if k is not None else None, cos, sin, layout=layout, inplace=inplace, **kw
    )
    outs = [o for o in outs if o is not None]
    if grad_view == "stride0":  # what out.sum().backward() sends: an expanded scalar
        grads = [torch.ones((), device=o.device, dtype=o.dtype).expand_as(o) for o in outs]
    else:
        grads = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, leaves, grads)

    ref_in = [t.detach().double().requires_grad_() for t in leaves]
    ref_out = ref64(ref_in[0], ref_in[1] if k is not None else None, cos, sin, layout=layout, **kw)
    want = torch.autograd.grad([o for o in ref_out if o is not None], ref_in, [g.double() for g in grads])
    for g, w, gin in zip(got, want, grads, strict=True):
        # The gradient is a rotation of the incoming gradient: same error model as the forward.
        assert_rotary_close(g, w, gin.contiguous(), layout=layout, rotary_dim=rotary_dim,
                            interleaved=interleaved, table_bound=table_bound)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grads(layout, interleaved, inplace, device):
    seqlen = 5
    q, k = make_qk(layout, 1 if layout == "thd" else 2, seqlen, 3, 1, 12, torch.bfloat16, device, "packed")
    cos, sin = random_tables(seqlen, 4, device)
    _grads_against_reference(
        q, k, cos, sin, layout=layout, inplace=inplace, interleaved=interleaved, rotary_dim=8,
        **_thd(layout, seqlen, device)
    )


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_stride0_grads(dtype, inplace, device):
    q, k = make_qk("bhsd", 2, 4, 2, 2, 8, dtype, device)
    cos, sin = random_tables(4, 4, device)
    _grads_against_reference(q, k, cos, sin, layout="bshd", inplace=inplace, grad_view="stride0")


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("layout", ["bhsd", "thd"])
def test_per_sequence_table_grads(layout, inplace, device):
    # cos/sin per batch row (thd: per packed sequence): the backward reads each sequence's own rows too.
    seqlen = 5
    q, k = make_qk(layout, 1 if layout == "thd" else 2, seqlen, 3, 1, 8, torch.float32, device, "packed")
    cos, sin = (t.reshape(2, seqlen, 4) for t in random_tables(2 * seqlen, 4, device))
    _grads_against_reference(q, k, cos, sin, layout=layout, inplace=inplace, **_thd(layout, seqlen, device))


def test_q_only_grads_and_positions(device):
    q, _ = make_qk("bshd", 2, 4, 2, None, 8, torch.float32, device, "transposed")
    cos, sin = random_tables(10, 4, device)
    pos = torch.randint(0, 10, (2, 4), device=device, dtype=torch.int32)
    _grads_against_reference(q, None, cos, sin, layout="bshd", positions=pos, conjugate=True)


def test_gradcheck_float64(device):
    # The real kernel in float64 (float64 math), finite differences against its backward.
    q, k = make_qk("bshd", 1, 2, 2, 1, 8, torch.float64, device)
    cos, sin = random_tables(5, 3, device, torch.float64)
    q.requires_grad_()
    k.requires_grad_()

    def f(q, k):
        return rope_triton.apply_rotary(q, k, cos, sin, offsets=2, rotary_dim=6, interleaved=True)

    # fast_mode checks random projections of the Jacobian: a few kernel calls instead of one per element.
    assert torch.autograd.gradcheck(f, (q, k), eps=1e-6, atol=1e-9, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (q, k), eps=1e-6, atol=1e-9, fast_mode=True)


def test_tables_get_no_gradient(device):
    q = torch.randn(1, 3, 2, 8, device=device, requires_grad=True)
    cos, sin = random_tables(3, 4, device)
    cos.requires_grad_()
    sin.requires_grad_()
    out, _ = rope_triton.apply_rotary(q, None, cos, sin)
    out.sum().backward()
    assert q.grad is not None and cos.grad is None and sin.grad is None


def test_inplace_marks_dirty(device):
    base = torch.randn(1, 3, 2, 8, device=device, requires_grad=True)
    q = base.exp()  # exp saves its output for backward
    cos, sin = random_tables(3, 4, device)
    out, _ = rope_triton.apply_rotary(q, None, cos, sin, inplace=True)
    assert out is q
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("view", [False, True], ids=["leaf", "view-of-leaf"])
def test_inplace_on_leaf_is_refused_before_writing(view, device):
    leaf = torch.randn(1, 3, 2, 8, device=device, requires_grad=True)
    q = leaf.transpose(1, 2).transpose(1, 2) if view else leaf
    before = leaf.detach().clone()
    cos, sin = random_tables(3, 4, device)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        rope_triton.apply_rotary(q, None, cos, sin, inplace=True)
    assert torch.equal(leaf.detach(), before), "the refused call wrote into the leaf"


def test_inplace_without_grad_bumps_version(device):
    q = torch.randn(1, 3, 2, 8, device=device)
    k = torch.randn(1, 3, 1, 8, device=device)
    cos, sin = random_tables(3, 4, device)
    vq, vk = q._version, k._version
    with torch.no_grad():
        rope_triton.apply_rotary(q, k, cos, sin, inplace=True)
    assert q._version > vq and k._version > vk


def test_inplace_under_no_grad_after_save_is_caught(device):
    base = torch.randn(1, 3, 2, 8, device=device, requires_grad=True)
    q = base.exp()
    cos, sin = random_tables(3, 4, device)
    with torch.no_grad():
        rope_triton.apply_rotary(q, None, cos, sin, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        q.sum().backward()


@pytest.mark.parametrize("which", ["q", "k"])
def test_only_requested_gradients_are_rotated(which, device, monkeypatch):
    # LoRA on q_proj alone leaves k without grad: its gradient is neither computed nor its bytes moved.
    from rope_triton._core import op as _ops

    q, k = make_qk("bshd", 2, 5, 3, 1, 16, torch.float32, device)
    cos, sin = random_tables(5, 8, device)
    q_leaf, k_leaf = q.clone().requires_grad_(which == "q"), k.clone().requires_grad_(which == "k")
    rotated = []
    real_run = _ops.run

    def spy(p, ops, **kwargs):
        rotated.append((tuple(ops.q.shape), None if ops.k is None else tuple(ops.k.shape)))
        return real_run(p, ops, **kwargs)

    monkeypatch.setattr(_ops, "run", spy)
    outs = rope_triton.apply_rotary(q_leaf, k_leaf, cos, sin)
    grads = [torch.randn_like(o) for o in outs]
    leaf = q_leaf if which == "q" else k_leaf
    (got,) = torch.autograd.grad(outs, [leaf], grads)
    assert rotated == [(tuple(q.shape), tuple(k.shape)), (tuple(leaf.shape), None)]

    i = 0 if which == "q" else 1
    ref_in = [t.detach().double().requires_grad_(t is leaf) for t in (q_leaf, k_leaf)]
    ref_out = ref64(*ref_in, cos, sin, layout="bshd")
    (want,) = torch.autograd.grad(ref_out[i], ref_in[i], grads[i].double())
    assert_rotary_close(got, want, grads[i], layout="bshd", rotary_dim=16, interleaved=False)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_freqs_grads(layout, inplace, device):
    # freqs=: the backward is the conjugate rotation by the same computed angles.
    from rope_triton import angles as freqs

    inv_freq, _ = freqs.inv_freq_and_scale(16, base=10000.0)
    ft = freqs.freq_table(inv_freq, attention_factor=1.1, device=device)
    q, k = make_qk(layout, 1 if layout == "thd" else 2, 6, 3, 1, 16, torch.float32, device)
    _grads_against_reference(q, k, None, None, freqs=ft, offsets=2**31 - 64, layout=layout, inplace=inplace,
                             table_bound=FREQS_TABLE_BOUND, **_thd(layout, 6, device))



def _views(case, device):
    """Leaves, the non-leaf activations made from them, and q and k as views into those activations (as
    attention code slices a fused projection): ``([(leaf, activation), ...], q, k, layout)``."""
    hq, hk, d = 3, 2, 16

    def activation(*shape):
        leaf = torch.randn(*shape, device=device, requires_grad=True)
        return leaf, leaf * 1.0

    if case == "transposed-q":  # (B, S, H, D) memory rotated as bhsd
        leaf, x = activation(2, 5, hq, d)
        return [(leaf, x)], x.transpose(1, 2), None, "bhsd"
    heads = hq + 2 * hk  # fused projection: q heads, k heads, then v heads
    if case == "fused-qkv-bhsd":
        leaf, x = activation(2, heads, 5, d)
        return [(leaf, x)], x[:, :hq], x[:, hq : hq + hk], "bhsd"
    leaf, x = activation(2, 5, heads, d)
    if case == "q-view-k-dense":
        k_leaf, k = activation(2, 5, hk, d)
        return [(leaf, x), (k_leaf, k)], x[:, :, :hq], k, "bshd"
    return [(leaf, x)], x[:, :, :hq], x[:, :, hq : hq + hk], "bshd"


def _as_view_of(t, x, view):
    """``t`` (shaped and strided like ``x``) seen through the view ``view`` has of ``x``."""
    return t.as_strided(
        view.shape, view.stride(), t.storage_offset() + view.storage_offset() - x.storage_offset()
    )


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("case", ["transposed-q", "fused-qkv", "fused-qkv-bhsd", "q-view-k-dense"])
def test_inplace_grads_through_views(case, interleaved, device):
    # In place on views of an activation: the rotation is written through the views, and the activation's
    # gradient is the conjugate rotation of the incoming gradient on the q and k parts and the incoming
    # gradient itself elsewhere (v passes through).
    acts, q, k, layout = _views(case, device)
    cos, sin = random_tables(5, 8, device)
    q0, k0 = q.detach().clone(), None if k is None else k.detach().clone()
    before = [x.detach().clone() for _, x in acts]
    q_out, k_out = rope_triton.apply_rotary(
        q, k, cos, sin, layout=layout, inplace=True, interleaved=interleaved
    )
    assert q_out is q and k_out is k
    for out, x0 in zip(
        ref64(q0, k0, cos, sin, layout=layout, interleaved=interleaved), (q0, k0), strict=True
    ):
        if x0 is not None:
            assert_rotary_close(
                q if x0 is q0 else k, out, x0, layout=layout, rotary_dim=16, interleaved=interleaved
            )

    grads_in = [torch.randn_like(x) for _, x in acts]
    grads = torch.autograd.grad([x for _, x in acts], [leaf for leaf, _ in acts], grads_in)
    for (_, x), g_in, g, x0 in zip(acts, grads_in, grads, before, strict=True):
        untouched = torch.ones_like(x, dtype=torch.bool)
        for view in (q, k):
            if view is None or view.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
                continue
            g_view = _as_view_of(g_in, x, view)
            want, _ = ref64(g_view, None, cos, sin, layout=layout, interleaved=interleaved, conjugate=True)
            assert_rotary_close(_as_view_of(g, x, view), want, g_view, layout=layout, rotary_dim=16,
                                interleaved=interleaved)
            _as_view_of(untouched, x, view).fill_(False)
        assert untouched.any() == (case != "transposed-q" and x is acts[0][1])
        assert torch.equal(g[untouched], g_in[untouched])  # v: passed through
        assert torch.equal(x.detach()[untouched], x0[untouched])  # and never written


@pytest.mark.parametrize("how", ["split", "no-grad-view"])
def test_inplace_on_views_autograd_cannot_track_is_refused_before_writing(how, device):
    # Views that PyTorch's own in-place ops refuse (outputs of multi-output view ops, views made under
    # no_grad): refused before anything is written, never rotated and then raised on.
    leaf = torch.randn(2, 5, 7, 16, device=device, requires_grad=True)
    qkv = leaf * 1.0
    if how == "split":
        q, k, _ = qkv.split([3, 2, 2], dim=2)
    else:  # k needs a gradient, q is a view autograd does not track
        with torch.no_grad():
            q = qkv[:, :, :3]
        k = qkv[:, :, 3:5]
    before = qkv.detach().clone()
    cos, sin = random_tables(5, 8, device)
    created = "by a function that returns several views" if how == "split" else "in no_grad mode"
    with pytest.raises(
        RuntimeError, match=f"^q: inplace=True with autograd needs a view .* created {created}"
    ):
        rope_triton.apply_rotary(q, k, cos, sin, inplace=True)
    assert torch.equal(qkv.detach(), before), "the refused call wrote into q or k"


def test_inplace_through_views_gradcheck_float64(device):
    # Finite differences through q and k sliced from one activation, first and second order.
    cos, sin = random_tables(3, 4, device, torch.float64)
    leaf = torch.randn(1, 3, 4, 8, device=device, dtype=torch.float64, requires_grad=True)

    def f(leaf):
        x = leaf * 1.0
        rope_triton.apply_rotary(x[:, :, :2], x[:, :, 2:3], cos, sin, inplace=True, interleaved=True)
        return x

    assert torch.autograd.gradcheck(f, (leaf,), eps=1e-6, atol=1e-9, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (leaf,), eps=1e-6, atol=1e-9, fast_mode=True)
