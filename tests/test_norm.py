"""Fused QK-norm + rotation (``qk_norm_rotary``) against the float64 reference of norm-then-rotate:
outputs, input gradients and weight gradients, every norm, order, layout, pairing and angle source, in
place and on views of a fused qkv activation, and the errors.

Tolerances follow the float32 arithmetic: the mean square of N values carries at most N u (u = 2**-24) of
relative error, which reaches every output of the head (or token) through the root; the rotation adds 2u
of the pair magnitude; the output then rounds once (half an ulp of its dtype).
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_qk, pair_magnitude, random_tables, ulp

import rope_triton
from rope_triton import angles, reference
from rope_triton._core import cpu, norm_op

U = 2.0**-24
B, S, HQ, HK, D = 2, 5, 4, 2, 16


def _heads_axis(layout: str) -> int:
    return {"bshd": 2, "bhsd": 1, "sbhd": 2, "thd": 1}[layout]


def _magnitudes(x, w, norm, offset, layout, rotary_dim, interleaved):
    """float64: the normalized input u, the per-head (per-token) 1/rms r, and |w| bounds."""
    xb = reference.to_bshd(x, layout).double()
    dims = (-2, -1) if norm == "rms_heads" else (-1,)
    r = torch.rsqrt(xb.pow(2).mean(dims, keepdim=True) + 1e-6)
    u = reference.from_bshd(xb * r, layout)
    wmax = 1.0 if w is None else (w.double() + offset).abs().max().item()
    return u, reference.from_bshd(r.expand_as(xb), layout), wmax


def _value_magnitude(u, layout, rotary_dim, interleaved):
    """|u1| + |u2| of each element's pair, |u| past rotary_dim."""
    pairs = pair_magnitude(u, layout, rotary_dim, interleaved)
    ub = reference.to_bshd(u, layout).abs()
    tail = torch.zeros_like(ub)
    tail[..., rotary_dim:] = ub[..., rotary_dim:]
    return pairs + reference.from_bshd(tail, layout)


def _n(norm, heads):
    return heads * D if norm == "rms_heads" else D


def assert_forward_close(out, want, x, w, *, norm, offset=0.0, layout, rotary_dim, interleaved):
    assert out.shape == want.shape and out.dtype == x.dtype
    u, _, wmax = _magnitudes(x, w, norm, offset, layout, rotary_dim, interleaved)
    heads = x.shape[_heads_axis(layout)]
    slop = (_n(norm, heads) / 2 + 8) * U * wmax * _value_magnitude(u, layout, rotary_dim, interleaved)
    tol = slop + 0.5 * ulp(want.abs() + slop, out.dtype)
    err = (out.double() - want).abs()
    assert torch.isfinite(out).all()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"error {worst:.2f} times the bound (max abs error {err.max():.3e})"


def assert_grad_close(gx, want, x, g, w, *, norm, offset=0.0, layout, rotary_dim, interleaved):
    """gx = r (gu - u <gu, u> / N), gu the (rotated back) gradient times w."""
    u, r, wmax = _magnitudes(x, w, norm, offset, layout, rotary_dim, interleaved)
    heads = x.shape[_heads_axis(layout)]
    gmag = _value_magnitude(g.double(), layout, rotary_dim, interleaved) * wmax
    dims = (_heads_axis(layout), -1) if norm == "rms_heads" else (-1,)
    gmax = gmag.amax(dims, keepdim=True)
    umax = u.abs().amax(dims, keepdim=True)
    slop = (_n(norm, heads) + 10) * U * r * gmax * (1 + umax * umax)
    tol = slop + 0.5 * ulp(want.abs() + slop, gx.dtype)
    err = (gx.double() - want).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"input gradient error {worst:.2f} times the bound (max abs {err.max():.3e})"


def assert_weight_grad_close(dw, want, x, g, w, *, norm, layout, rotary_dim, interleaved):
    """dw = sum over tokens (and heads) of v u: float32 summation of n terms."""
    u, _, _ = _magnitudes(x, w, norm, 0.0, layout, rotary_dim, interleaved)
    terms = _value_magnitude(g.double(), layout, rotary_dim, interleaved) * _value_magnitude(
        u, layout, rotary_dim, interleaved
    )
    tb = reference.to_bshd(terms, layout)  # (B, S, H, D)
    bound = tb.sum((0, 1)).flatten() if norm == "rms_heads" else tb.sum((0, 1, 2))
    n = tb.shape[0] * tb.shape[1] * (1 if norm == "rms_heads" else tb.shape[2])
    tol = (n + 8) * U * bound + 0.5 * ulp(want.abs(), dw.dtype)
    err = (dw.double() - want).abs()
    worst = (err / tol).max().item()
    assert worst <= 1.0, f"weight gradient error {worst:.2f} times the bound (max abs {err.max():.3e})"


def _weights(norm, device, dtype=torch.float32, heads=(HQ, HK)):
    if norm == "l2":
        return None, None
    sizes = [h * D if norm == "rms_heads" else D for h in heads]
    return tuple(torch.randn(n, device=device).to(dtype) for n in sizes)


def _ref(q, k, wq, wk, cos, sin, **kw):
    return reference.qk_norm_rotary(
        q.double(), None if k is None else k.double(), None if wq is None else wq.double(),
        None if wk is None else wk.double(), cos, sin, compute_dtype=torch.float64, **kw,
    )


def _thd(layout, device):
    if layout != "thd":
        return {}
    return {"cu_seqlens": torch.tensor([0, 2, S], device=device), "max_seqlen": 3}


# ---- forward ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["q", "k"])
@pytest.mark.parametrize("norm", ["rms", "rms_heads"])
def test_one_weight_missing(norm, missing, device):
    # One weight given, the other None: the kernel's one weight operand holds ones for the missing one,
    # which the offset (Gemma's 1 + w) does not touch: that tensor is normalized, not scaled.
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.bfloat16, device, "packed")
    wq, wk = _weights(norm, device, torch.bfloat16)
    wq, wk = (None, wk) if missing == "q" else (wq, None)
    cos, sin = random_tables(S, 6, device)
    kw = dict(norm=norm, layout="bshd", weight_offset=1.0)
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, **kw)
    rq, rk = _ref(q, k, wq, wk, cos, sin, rotary_dim=12, **kw)
    for out, want, x, w in ((qo, rq, q, wq), (ko, rk, k, wk)):
        assert_forward_close(out, want, x, w, norm=norm, offset=0.0 if w is None else 1.0, layout="bshd",
                             rotary_dim=12, interleaved=False)  # fmt: skip


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("norm", ["rms", "rms_heads", "l2"])
@pytest.mark.parametrize("layout", ["bshd", "bhsd", "thd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "adjacent"])
def test_forward(interleaved, dtype, layout, norm, after, device):
    batch = 1 if layout == "thd" else B
    q, k = make_qk(layout, batch, S, HQ, HK, D, dtype, device, "packed")
    wq, wk = _weights(norm, device, dtype)
    cos, sin = random_tables(S, 6, device)  # rotary_dim 12 < head_dim: the tail is normalized too
    kw = dict(norm=norm, norm_after_rope=after, layout=layout, interleaved=interleaved, weight_offset=0.5,
              **_thd(layout, device))  # fmt: skip
    q0, k0 = q.clone(), k.clone()
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, **kw)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    rq, rk = _ref(q, k, wq, wk, cos, sin, rotary_dim=12, **kw)
    for out, want, x, w in ((qo, rq, q, wq), (ko, rk, k, wk)):
        assert_forward_close(out, want, x, w, norm=norm, offset=0.5, layout=layout, rotary_dim=12,
                             interleaved=interleaved)  # fmt: skip


def test_norm_is_unit_rms(device):
    """Without weights every head comes out of unit RMS, at any input scale (independent of the
    reference)."""
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.float32, device)
    cos, sin = random_tables(S, D // 2, device)
    qo, ko = rope_triton.qk_norm_rotary(q * 1e3, k * 1e-3, None, None, cos, sin, eps=1e-12)
    for out in (qo, ko):
        torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(out.shape[:-1], device=device))


@pytest.mark.parametrize(
    "source", ["freqs", "split", "positions", "offsets", "multi_axis", "sbhd", "q-only"]
)
def test_angle_sources(source, device):
    """Every angle source of the core op, normalized and rotated in the same launch."""
    layout = "sbhd" if source == "sbhd" else "bshd"
    q, k = make_qk(layout, B, S, HQ, HK, D, torch.bfloat16, device)
    wq, wk = _weights("rms", device)
    if source == "q-only":
        k, wk = None, None
    cos, sin = random_tables(40, D // 2, device)
    kw: dict = dict(layout=layout)
    tables = dict(cos=cos, sin=sin)
    if source == "freqs":
        tables = dict(freqs=angles.freq_table(angles.inv_freq_and_scale(D)[0], device=device))
        kw["offsets"] = 1000
    elif source == "split":
        ch, sh, cl, sl = angles.split_tables(angles.inv_freq_and_scale(D)[0], 64, low_bits=3, device=device)
        tables = dict(cos=ch, sin=sh, cos_lo=cl, sin_lo=sl)
        kw["offsets"] = 17
    elif source == "positions":
        kw["positions"] = torch.randint(0, 40, (B, S), device=device)
    elif source == "offsets":
        kw["offsets"] = torch.tensor([3, 30], device=device)
    elif source == "multi_axis":
        tables = {}
        kw["multi_axis"] = angles.mrope(D, [2, 3, 3])
        kw["positions"] = torch.randint(0, 50, (3, B, S), device=device)
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, **tables, **kw)
    if "multi_axis" in kw:
        want = _ref(q, k, wq, wk, None, None, layout=layout, multi_axis=kw["multi_axis"],
                    positions=kw["positions"])  # fmt: skip
    else:
        rest = {n: v for n, v in kw.items() if n != "layout"}
        want = _ref(q, k, wq, wk, **tables, layout=layout, **rest) if "freqs" not in tables else _ref(
            q, k, wq, wk, None, None, freqs=tables["freqs"], layout=layout, **rest
        )
    for out, ref, x, w in ((qo, want[0], q, wq), (ko, want[1], k, wk)):
        if x is None:
            assert out is None
            continue
        # (computed and split angles are within a few float32 ulps: 3x the rotation's share)
        assert_forward_close(out, ref, x, w, norm="rms", layout=layout, rotary_dim=D, interleaved=False)


def test_zero_head_gives_zeros(device):
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.float32, device)
    q[0, 1, 2] = 0
    wq, wk = _weights("rms", device)
    q.requires_grad_()
    cos, sin = random_tables(S, D // 2, device)
    qo, _ = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin)
    assert torch.equal(qo[0, 1, 2], torch.zeros(D, device=device))
    qo.sum().backward()
    assert torch.isfinite(q.grad).all()


# ---- backward ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("norm", ["rms", "rms_heads", "l2"])
@pytest.mark.parametrize("layout", ["bshd", "thd"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "adjacent"])
def test_backward(interleaved, layout, norm, after, device):
    batch = 1 if layout == "thd" else B
    q, k = make_qk(layout, batch, S, HQ, HK, D, torch.float32, device, "packed")
    wq, wk = _weights(norm, device)
    leaves = [t.detach().requires_grad_() for t in (q, k)]
    wleaves = [None if w is None else w.detach().requires_grad_() for w in (wq, wk)]
    cos, sin = random_tables(S, 6, device)
    kw = dict(norm=norm, norm_after_rope=after, layout=layout, interleaved=interleaved, weight_offset=0.25,
              **_thd(layout, device))  # fmt: skip
    outs = rope_triton.qk_norm_rotary(*leaves, *wleaves, cos, sin, **kw)
    grads_out = [torch.randn_like(o) for o in outs]
    wanted = [t for t in leaves + wleaves if t is not None]
    got = torch.autograd.grad(outs, wanted, grads_out)
    ref_in = [t.detach().double().requires_grad_() for t in wanted]
    rq, rk = reference.qk_norm_rotary(
        ref_in[0], ref_in[1], *(ref_in[2:] if norm != "l2" else (None, None)), cos, sin,
        compute_dtype=torch.float64, rotary_dim=12, **kw,
    )  # fmt: skip
    want = torch.autograd.grad((rq, rk), ref_in, [g.double() for g in grads_out])
    for i, (x, g, w) in enumerate(((q, grads_out[0], wq), (k, grads_out[1], wk))):
        assert_grad_close(got[i], want[i], x, g, w, norm=norm, offset=0.25, layout=layout, rotary_dim=12,
                          interleaved=interleaved)  # fmt: skip
        if w is not None:
            assert got[2 + i].dtype == w.dtype
            assert_weight_grad_close(got[2 + i], want[2 + i], x, g, w, norm=norm, layout=layout,
                                     rotary_dim=12, interleaved=interleaved)  # fmt: skip


@pytest.mark.parametrize("norm", ["rms", "rms_heads"])
def test_backward_block_cut_short(norm, device, monkeypatch):
    # Blocks of 2 tokens over 13: the last block's second token does not exist, and its angles are NaN
    # (a masked table load); it must add nothing to the weight gradients (large inputs with few, narrow
    # heads get such blocks from the launch rule).
    monkeypatch.setattr(norm_op, "norm_config", lambda *a, **kw: {"PROGRAM": (0, 2, 4, 2, 4), "num_warps": 1})
    seq = 13
    q, k = make_qk("bshd", 1, seq, HQ, HK, D, torch.float32, device)
    wq, wk = _weights(norm, device)
    cos, sin = random_tables(seq, D // 2, device)
    leaves = [t.detach().requires_grad_() for t in (q, k, wq, wk)]
    outs = rope_triton.qk_norm_rotary(*leaves, cos, sin, norm=norm)
    grads_out = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, leaves, grads_out)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, wq, wk)]
    rq, rk = reference.qk_norm_rotary(*ref_in, cos, sin, norm=norm, compute_dtype=torch.float64)
    want = torch.autograd.grad((rq, rk), ref_in, [g.double() for g in grads_out])
    for i, (x, g, w) in enumerate(((q, grads_out[0], wq), (k, grads_out[1], wk))):
        assert_grad_close(got[i], want[i], x, g, w, norm=norm, offset=0.0, layout="bshd", rotary_dim=D,
                          interleaved=False)  # fmt: skip
        assert_weight_grad_close(got[2 + i], want[2 + i], x, g, w, norm=norm, layout="bshd", rotary_dim=D,
                                 interleaved=False)  # fmt: skip


@pytest.mark.parametrize("loop, warps", [(1, 1), (3, 1), (16, 4)])  # (16: more blocks than the call has)
@pytest.mark.parametrize(
    "program",
    [(1, 2, 4, 4, 2), (0, 2, 4, 2, 4)],
    ids=["q-first-k-own-blocks", "token-blocks"],
)
@pytest.mark.parametrize("norm", ["rms", "rms_heads"])
def test_backward_program_shapes(norm, program, loop, warps, device):
    # Programs other than the few-token rule's, as large inputs get them: q's programs first with k's of
    # their own block shape, several token blocks per program (NORM_LOOP) and a last group cut short
    # (13 tokens in groups of 6): each program's weight-gradient row lands where the host sums it.
    from rope_triton._core.checks import check
    from rope_triton._core.kernels import rotary_kernel
    from rope_triton._core.launch import launch
    from rope_triton._core.operands import NormOperands, Operands

    seq = 13
    q, k = make_qk("bshd", 1, seq, HQ, HK, D, torch.float32, device)
    wq, wk = _weights(norm, device)
    cos, sin = random_tables(seq, D // 2, device)
    grads_out = [torch.randn_like(q), torch.randn_like(k)]
    p = check(q, k, cos, sin, positions=None, offsets=None, cu_seqlens=None, max_seqlen=None,
              layout="bshd", rotary_dim=D, inplace=False)  # fmt: skip
    nrm = NormOperands({"rms": 1, "rms_heads": 2}[norm], 1e-6, 0.0, False, wq, wk)
    cfg = {"PROGRAM": program, "num_warps": warps, "NORM_LOOP": loop}
    ops = Operands(q, k, cos, sin)
    got = norm_op._backward(launch, rotary_kernel, p, ops, nrm, *grads_out, False, cfg=cfg)
    ref_in = [t.detach().double().requires_grad_() for t in (q, k, wq, wk)]
    rq, rk = reference.qk_norm_rotary(*ref_in, cos, sin, norm=norm, compute_dtype=torch.float64)
    want = torch.autograd.grad((rq, rk), ref_in, [g.double() for g in grads_out])
    for i, (x, g, w) in enumerate(((q, grads_out[0], wq), (k, grads_out[1], wk))):
        assert_grad_close(got[i], want[i], x, g, w, norm=norm, offset=0.0, layout="bshd", rotary_dim=D,
                          interleaved=False)  # fmt: skip
        assert_weight_grad_close(got[2 + i], want[2 + i], x, g, w, norm=norm, layout="bshd", rotary_dim=D,
                                 interleaved=False)  # fmt: skip


@pytest.mark.parametrize("empty", ["batch", "seq", "heads"])
@pytest.mark.parametrize("norm", ["rms", "rms_heads"])
def test_backward_of_nothing(norm, empty, device):
    # Nothing to launch: the input gradients are empty and the weight gradients zero, no launch rule
    # arithmetic on zero bytes.
    batch, seq, heads = (0, S, (HQ, HK)) if empty == "batch" else (B, 0, (HQ, HK)) if empty == "seq" else (
        B, S, (0, 0))  # fmt: skip
    q, k = (torch.randn(batch, seq, h, D, device=device) for h in heads)
    wq, wk = _weights(norm, device, heads=heads if norm == "rms_heads" else (HQ, HK))
    leaves = [t.requires_grad_() for t in (q, k, wq, wk)]
    cos, sin = random_tables(max(seq, 1), D // 2, device)
    outs = rope_triton.qk_norm_rotary(*leaves, cos, sin, norm=norm)
    got = torch.autograd.grad(outs, leaves, [torch.ones_like(o) for o in outs], allow_unused=True)
    assert got[0].shape == q.shape and got[1].shape == k.shape
    for dw, w in zip(got[2:], (wq, wk), strict=True):
        assert dw is None or (dw.shape == w.shape and not dw.any())


def test_backward_is_deterministic(device):
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.bfloat16, device)
    wq, wk = (w.requires_grad_() for w in _weights("rms", device))
    cos, sin = random_tables(S, D // 2, device)
    q.requires_grad_()
    runs = []
    for _ in range(2):
        qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin)
        runs.append(torch.autograd.grad((qo.float().square().sum(), ko.float().sum()), (q, wq, wk)))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


# ---- in place -----------------------------------------------------------------------------------------


def test_inplace_without_autograd(device):
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.bfloat16, device, "packed")
    wq, wk = _weights("rms", device)
    cos, sin = random_tables(S, D // 2, device)
    want = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin)
    v0 = q.clone()
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, inplace=True)
    assert qo is q and ko is k
    assert q._version > 0 and not torch.equal(q, v0)
    assert torch.equal(q, want[0]) and torch.equal(k, want[1])


def test_inplace_on_fused_qkv_views_with_autograd(device):
    """q and k sliced from one qkv activation, normalized and rotated in place: the gradient is the
    out-of-place one, v's part of the activation is untouched."""
    leaf = torch.randn(B, S, HQ + 2 * HK, D, device=device, requires_grad=True)
    wq, wk = (w.requires_grad_() for w in _weights("rms", device))
    cos, sin = random_tables(S, D // 2, device)
    g = torch.randn(B, S, HQ + 2 * HK, D, device=device)
    qkv = leaf * 1.0
    q, k = qkv[:, :, :HQ], qkv[:, :, HQ : HQ + HK]
    rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, inplace=True)
    inplace = torch.autograd.grad(qkv, (leaf, wq, wk), g)
    qkv2 = leaf * 1.0
    qo, ko = rope_triton.qk_norm_rotary(qkv2[:, :, :HQ], qkv2[:, :, HQ : HQ + HK], wq, wk, cos, sin)
    out = torch.cat((qo, ko, qkv2[:, :, HQ + HK :]), 2)
    assert torch.equal(qkv[:, :, HQ + HK :], leaf[:, :, HQ + HK :].detach())
    assert torch.equal(qkv.detach(), out.detach())
    for a, b in zip(inplace, torch.autograd.grad(out, (leaf, wq, wk), g), strict=True):
        torch.testing.assert_close(a, b)


# ---- the plain path and compile -------------------------------------------------------------------------


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("seqlen", [S, 1], ids=["prefill", "decode"])
@pytest.mark.parametrize("after", [False, True], ids=["before", "after"])
@pytest.mark.parametrize("norm", ["rms", "rms_heads", "l2"])
@pytest.mark.parametrize("layout", ["bshd", "bhsd", "sbhd", "thd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["halves", "adjacent"])
def test_cpu_path(interleaved, dtype, layout, norm, after, seqlen, inplace, monkeypatch):
    """Eager inference on the CPU without the interpreter: the CPU path (normalized in float32, rotated,
    rounded once), against the float64 reference; partial rotary (the tail is normalized too), transposed
    views, per-sequence offsets."""
    monkeypatch.setattr(norm_op, "triton_runs_on", lambda device: False)
    calls = []
    norm_rotate = cpu.norm_rotate
    monkeypatch.setattr(cpu, "norm_rotate", lambda *args: calls.append(1) or norm_rotate(*args))
    cpu_dev = torch.device("cpu")
    batch = 1 if layout == "thd" else B
    q, k = make_qk(layout, batch, seqlen, HQ, HK, D, dtype, cpu_dev, "transposed")
    wq, wk = _weights(norm, cpu_dev, dtype)
    if after:
        wq = wk = None  # (after the rotation with weights: the plain formulation, checked elsewhere)
    cos, sin = random_tables(S + 9, 6, cpu_dev)
    kw = dict(norm=norm, norm_after_rope=after, layout=layout, interleaved=interleaved, weight_offset=0.5)
    if layout == "thd":
        kw |= {"cu_seqlens": torch.tensor([0, seqlen // 2, seqlen]), "offsets": torch.tensor([3, 9])}
    else:
        kw["offsets"] = torch.tensor([3, 9][:batch])
    q0, k0 = q.clone(), k.clone()
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, inplace=inplace, **kw)
    assert calls == [1]
    if inplace:
        assert qo is q and ko is k and q._version > 0
    else:
        assert torch.equal(q, q0) and torch.equal(k, k0)
    rq, rk = _ref(q0, k0, wq, wk, cos, sin, rotary_dim=12, **kw)
    for out, want, x, w in ((qo, rq, q0, wq), (ko, rk, k0, wk)):
        assert_forward_close(out, want, x, w, norm=norm, offset=0.5, layout=layout, rotary_dim=12,
                             interleaved=interleaved)  # fmt: skip


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_cpu_path_replays_validated_calls(inplace, monkeypatch):
    """A repeat of a validated call (a decode step) skips validation, with new data and offsets: same
    results as a validated call, inputs untouched out of place, versions bumped in place, an offset past
    the table still refused."""
    monkeypatch.setattr(norm_op, "triton_runs_on", lambda device: False)
    monkeypatch.setattr(norm_op, "_INTERPRETED", False)  # (the suite runs the kernel in the interpreter)
    monkeypatch.setattr(norm_op, "PROBLEMS", {})
    checks = []
    check = norm_op.check
    monkeypatch.setattr(norm_op, "check", lambda *a, **kw: checks.append(1) or check(*a, **kw))
    cpu_dev = torch.device("cpu")
    cos, sin = random_tables(12, D // 2, cpu_dev)
    wq, wk = _weights("rms", cpu_dev)
    q, k = make_qk("bhsd", B, 1, HQ, HK, D, torch.bfloat16, cpu_dev, "transposed")
    for offsets in (3, torch.tensor([5, 9]), 11):
        q.copy_(torch.randn_like(q))  # (new data in the same tensors: one key for the int offsets)
        k.copy_(torch.randn_like(k))
        q0, k0 = q.clone(), k.clone()
        v0 = q._version
        qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, offsets=offsets, layout="bhsd",
                                            inplace=inplace)  # fmt: skip
        rq, rk = _ref(q0, k0, wq, wk, cos, sin, offsets=offsets, layout="bhsd")
        for out, want, x, w in ((qo, rq, q0, wq), (ko, rk, k0, wk)):
            assert_forward_close(out, want, x, w, norm="rms", layout="bhsd", rotary_dim=D, interleaved=False)
        if inplace:
            assert qo is q and ko is k and q._version > v0
        else:
            assert torch.equal(q, q0) and torch.equal(k, k0)
    # int offsets share a key; the tensor one has its own: two validations for three calls
    assert len(checks) == 2 and len(norm_op.PROBLEMS) == 2
    with pytest.raises(ValueError, match="at least 13 rows, got 12"):
        rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, offsets=12, layout="bhsd")


@pytest.mark.parametrize("source", ["freqs", "split", "positions", "multi_axis", "q-only"])
def test_cpu_path_angle_sources(source, monkeypatch):
    monkeypatch.setattr(norm_op, "triton_runs_on", lambda device: False)
    cpu_dev = torch.device("cpu")
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.bfloat16, cpu_dev)
    wq, wk = _weights("rms", cpu_dev)
    if source == "q-only":
        k, wk = None, None
    cos, sin = random_tables(40, D // 2, cpu_dev)
    tables, kw = dict(cos=cos, sin=sin), {}
    if source == "freqs":
        tables = dict(freqs=angles.freq_table(angles.inv_freq_and_scale(D)[0]))
        kw["offsets"] = 1000
    elif source == "split":
        ch, sh, cl, sl = angles.split_tables(angles.inv_freq_and_scale(D)[0], 64, low_bits=3)
        tables = dict(cos=ch, sin=sh, cos_lo=cl, sin_lo=sl)
        kw["offsets"] = 17
    elif source == "positions":
        kw["positions"] = torch.randint(0, 40, (B, S))
    elif source == "multi_axis":
        tables = {}
        kw = dict(multi_axis=angles.mrope(D, [2, 3, 3]), positions=torch.randint(0, 50, (3, B, S)))
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, **tables, **kw)
    ref_tables = dict(tables) if "freqs" not in tables else dict(cos=None, sin=None, **tables)
    if not ref_tables:
        ref_tables = dict(cos=None, sin=None)
    want = _ref(q, k, wq, wk, **ref_tables, **kw)
    for out, ref, x, w in ((qo, want[0], q, wq), (ko, want[1], k, wk)):
        if x is None:
            assert out is None
            continue
        assert_forward_close(out, ref, x, w, norm="rms", layout="bshd", rotary_dim=D, interleaved=False)


def test_plain_path_multi_axis_without_positions(monkeypatch, device):
    """Without positions every axis is at the token's index plus offsets: kernel and plain path agree."""
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.float32, torch.device("cpu"))
    kw = dict(multi_axis=angles.mrope(D, [2, 3, 3]), offsets=torch.tensor([4, 9]))
    kernel = rope_triton.qk_norm_rotary(q, k, None, None, **kw)
    monkeypatch.setattr(norm_op, "triton_runs_on", lambda device: False)
    plain = rope_triton.qk_norm_rotary(q, k, None, None, **kw)
    for a, b in zip(kernel, plain, strict=True):
        torch.testing.assert_close(a, b)


def test_plain_path_matches_reference(monkeypatch):
    """On the CPU without the interpreter: the reference formula in float32, differentiable."""
    monkeypatch.setattr(norm_op, "triton_runs_on", lambda device: False)
    q, k = make_qk("bhsd", B, S, HQ, HK, D, torch.bfloat16, torch.device("cpu"))
    wq, wk = (w.requires_grad_() for w in _weights("rms_heads", "cpu"))
    cos, sin = random_tables(S, D // 2, "cpu")
    qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, norm="rms_heads", layout="bhsd")
    rq, rk = _ref(q, k, wq, wk, cos, sin, norm="rms_heads", layout="bhsd")
    for out, want, x, w in ((qo, rq, q, wq), (ko, rk, k, wk)):
        assert_forward_close(
            out, want, x, w, norm="rms_heads", layout="bhsd", rotary_dim=D, interleaved=False
        )
    (qo.float().sum() + ko.float().sum()).backward()
    assert wq.grad is not None and wk.grad is not None


@pytest.mark.gpu
def test_compile_fullgraph_gpu():
    q, k = make_qk("bshd", B, 64, HQ, HK, D, torch.bfloat16, torch.device("cuda"))
    wq, wk = (w.requires_grad_() for w in _weights("rms", "cuda"))
    q.requires_grad_()
    cos, sin = random_tables(64, D // 2, "cuda")

    def step(q, k, wq, wk):
        qo, ko = rope_triton.qk_norm_rotary(q, k, wq, wk, cos, sin, weight_offset=1.0)
        return qo.float().square().sum() + ko.float().sum()

    eager = torch.autograd.grad(step(q, k, wq, wk), (q, wq, wk))
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(q, k, wq, wk), (q, wq, wk))
    assert torch.equal(eager[0], compiled[0])  # the same kernel both ways
    # The weight gradients' last sum over the programs' rows is inductor's reduction when compiled, in
    # another order: equal within float32 summation error.
    for a, b in zip(eager[1:], compiled[1:], strict=True):
        torch.testing.assert_close(a, b)


# ---- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(norm="layer"), ValueError, "norm: expected one of 'rms', 'l2', 'rms_heads', got 'layer'"),
        (dict(eps=0.0), ValueError, "eps: expected a finite number > 0, got 0.0"),
        (dict(eps=-1e-6), ValueError, "eps: expected a finite number > 0"),
        (dict(weight_offset=float("nan")), ValueError, "weight_offset: expected a finite number"),
        (dict(q_weight=torch.ones(D + 1)), ValueError, r"q_weight: expected shape \(16,\) \(head_dim\)"),
        (dict(norm="rms_heads"), ValueError,
         r"q_weight: expected shape \(64,\) \(heads \* head_dim = 4 \* 16\)"),
        (dict(k_weight=torch.ones(D, dtype=torch.int64)), TypeError, "k_weight: expected a floating-point"),
        (dict(norm="l2"), ValueError, "q_weight: norm='l2' .* takes no weight"),
        (dict(norm_after_rope=1), TypeError, "norm_after_rope: expected a bool"),
        (dict(q_weight=[1.0] * D), TypeError, "q_weight: expected a torch.Tensor, got list"),
    ],
)
@pytest.mark.usefixtures("cpu_modes")
def test_errors(kwargs, error, match):
    q, k = make_qk("bshd", B, S, HQ, HK, D, torch.float32, torch.device("cpu"))
    cos, sin = random_tables(S, D // 2, "cpu")
    args = dict(q=q, k=k, q_weight=torch.ones(D), k_weight=torch.ones(D), cos=cos, sin=sin) | kwargs
    before = q.clone()
    with pytest.raises(error, match=match):
        rope_triton.qk_norm_rotary(**args, inplace=True)
    assert torch.equal(q, before)
