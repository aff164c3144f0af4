"""The kernel (through the public function) against the float64 reference: every layout, view and option."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    DTYPES,
    FREQS_TABLE_BOUND,
    LAYOUTS,
    VIEWS,
    assert_rotary_close,
    check_against_reference,
    make_qk,
    random_tables,
    ref64,
)

import rope_triton
from rope_triton._core import kernels


def _batch(layout: str, batch: int) -> int:
    return 1 if layout == "thd" else batch


def _thd_kwargs(layout: str, seqlen: int, device, lengths=None) -> dict:
    """For thd: uneven packed sequences (one of length 1) covering ``seqlen`` tokens."""
    if layout != "thd":
        return {}
    lengths = lengths or [1, seqlen // 3, seqlen - 1 - seqlen // 3]
    assert sum(lengths) == seqlen
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device=device, dtype=torch.int32)
    return {"cu_seqlens": cu, "max_seqlen": max(lengths)}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_and_views(layout, view, dtype, device):
    seqlen = 7
    q, k = make_qk(layout, _batch(layout, 2), seqlen, 4, 2, 16, dtype, device, view)
    cos, sin = random_tables(seqlen, 8, device)
    check_against_reference(q, k, cos, sin, layout=layout, **_thd_kwargs(layout, seqlen, device))


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("rotary_dim", [24, 12], ids=["full", "partial"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_options(layout, interleaved, rotary_dim, conjugate, inplace, device):
    # head_dim 24 and rotary half 6 are not powers of two: masked tiles.
    dtype = (torch.bfloat16, torch.float16, torch.float32)[(rotary_dim + conjugate + 2 * inplace) % 3]
    seqlen = 6
    q, k = make_qk(layout, _batch(layout, 2), seqlen, 3, 1, 24, dtype, device, "packed")
    cos, sin = random_tables(seqlen + 3, rotary_dim // 2, device)
    check_against_reference(
        q, k, cos, sin, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim,
        conjugate=conjugate, inplace=inplace, **_thd_kwargs(layout, seqlen, device),
    )


def _position_kwargs(mode: str, layout: str, batch: int, seqlen: int, rows: int, device) -> dict:
    n_seqs = 3 if layout == "thd" else batch
    if mode == "default":
        return {}
    if mode == "int-offset":
        return {"offsets": rows - seqlen}
    if mode == "tensor-offset":
        return {"offsets": torch.randint(0, rows - seqlen, (n_seqs,), device=device)}
    shape = (seqlen,) if layout == "thd" else (batch, seqlen)
    if mode == "broadcast-positions":
        shape = (seqlen,) if layout == "thd" else (1, seqlen)
    dtype = torch.int32 if mode == "positions-int32" else torch.int64
    return {"positions": torch.randint(0, rows, shape, device=device, dtype=dtype)}


@pytest.mark.parametrize(
    "mode",
    ["default", "int-offset", "tensor-offset", "positions-int32", "positions-int64", "broadcast-positions"],
)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions(layout, mode, device):
    seqlen, rows = 9, 40
    batch = _batch(layout, 3)
    q, k = make_qk(
        layout, batch, seqlen, 2, 2, 8, torch.float32, device, "transposed" if layout != "thd" else "packed"
    )
    cos, sin = random_tables(rows, 4, device)
    kw = _thd_kwargs(layout, seqlen, device)
    kw.update(_position_kwargs(mode, layout, batch, seqlen, rows, device))
    check_against_reference(q, k, cos, sin, layout=layout, **kw)


@pytest.mark.parametrize(
    "heads_q,heads_k", [(1, 1), (4, 1), (3, None), (7, 3), (2, 6)],
    ids=["single", "mqa", "q-only", "gqa", "more-k"],
)
@pytest.mark.parametrize("seqlen", [1, 5])
def test_heads_and_short_sequences(heads_q, heads_k, seqlen, device):
    q, k = make_qk("bshd", 2, seqlen, heads_q, heads_k, 32, torch.bfloat16, device)
    cos, sin = random_tables(seqlen, 16, device)
    check_against_reference(q, k, cos, sin, layout="bshd")


@pytest.mark.parametrize(
    "head_dim,rotary_dim",
    [(72, 72), (80, 80), (96, 96), (96, 48), (160, 160), (192, 96), (256, 256), (128, 64), (8, 2)],
)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_head_dims(head_dim, rotary_dim, interleaved, device):
    q, k = make_qk("bhsd", 1, 3, 2, 1, head_dim, torch.float16, device, "padded")
    cos, sin = random_tables(3, rotary_dim // 2, device)
    check_against_reference(q, k, cos, sin, layout="bhsd", rotary_dim=rotary_dim, interleaved=interleaved)


@pytest.mark.parametrize(
    "table_dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str
)
@pytest.mark.parametrize("table_view", ["dense", "strided", "wide"])
def test_tables(table_dtype, table_view, device):
    seqlen, half = 5, 8
    q, k = make_qk("bshd", 2, seqlen, 2, 1, 16, torch.float32, device)
    cos, sin = random_tables(seqlen, half, device, table_dtype)
    kw = {}
    if table_view == "strided":  # every other column of a wider buffer, then transposed twice
        cos = torch.stack((cos, torch.full_like(cos, 9.0)), dim=-1).flatten(-2)[:, ::2]
        sin = sin.t().contiguous().t()
    elif table_view == "wide":  # more columns than rotary_dim // 2: only the first ones are read
        cos = torch.cat((cos, torch.full_like(cos, 9.0)), dim=1)
        sin = torch.cat((sin, torch.full_like(sin, 9.0)), dim=1)
        kw["rotary_dim"] = 2 * half
    check_against_reference(q, k, cos, sin, layout="bshd", **kw)


@pytest.mark.parametrize("lengths", [[1, 1, 1], [5, 1, 3, 1], [0, 4, 0, 2], [6]], ids=str)
def test_varlen_lengths(lengths, device):
    total = sum(lengths)
    q, k = make_qk("thd", 1, total, 3, 1, 16, torch.bfloat16, device, "packed")
    cos, sin = random_tables(8, 8, device)
    kw = _thd_kwargs("thd", total, device, lengths)
    check_against_reference(
        q, k, cos, sin, layout="thd", offsets=torch.tensor([1] * len(lengths), device=device), **kw
    )


def test_many_packed_sequences(device):
    # More sequences than one binary-search step covers, with the last one long.
    lengths = [1] * 37 + [2, 3, 50]
    total = sum(lengths)
    q, k = make_qk("thd", 1, total, 2, 2, 8, torch.float32, device)
    cos, sin = random_tables(64, 4, device)
    check_against_reference(q, k, cos, sin, layout="thd", **_thd_kwargs("thd", total, device, lengths))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape", [(0, 4, 2, 16), (2, 0, 2, 16), (2, 4, 0, 16)], ids=["no-batch", "no-tokens", "no-heads"]
)
def test_empty(shape, layout, device):
    b, s, h, d = shape
    if layout == "thd":
        if b == 0:
            pytest.skip("thd has no batch dim")
        b = 1
    q, k = make_qk(layout, b, s, h, h, d, torch.float32, device)
    cos, sin = random_tables(4, 8, device)
    kw = {"cu_seqlens": torch.tensor([0, s], device=device)} if layout == "thd" else {}
    q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin, layout=layout, **kw)
    assert q_out.shape == q.shape and k_out.shape == k.shape


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_device_positions_off_the_table_give_nan(layout, device):
    # Device-side positions are not checked on the host (that would sync); the kernel must not read
    # past the table, and the affected tokens must not pass for rotated ones.
    rows, seqlen = 4, 6
    q, k = make_qk(layout, 1, seqlen, 2, 1, 8, torch.float32, device)
    cos, sin = random_tables(rows, 4, device)
    shape = (seqlen,) if layout == "thd" else (1, seqlen)
    positions = torch.tensor([0, 3, 4, -1, 1_000_000, 2], device=device).reshape(shape)
    kw = {"cu_seqlens": torch.tensor([0, seqlen], device=device)} if layout == "thd" else {}
    q_out, k_out = check_against_reference(q, k, cos, sin, layout=layout, positions=positions, **kw)
    bad = torch.tensor([False, False, True, True, True, False])
    assert q_out.reshape(seqlen, -1).isnan().all(dim=1).cpu().equal(bad)


def test_matches_hugging_face_formula(device):
    # layout bhsd, NeoX pairing: out == q * cos_full + rotate_half(q) * sin_full (transformers' formula).
    b, h, s, d = 2, 3, 11, 64
    q = torch.randn(b, h, s, d, device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64, device=device) / d))
    angle = torch.arange(s, dtype=torch.float64, device=device)[:, None] * inv_freq
    cos, sin = angle.cos().float(), angle.sin().float()
    out, _ = rope_triton.apply_rotary(q, None, cos, sin, layout="bhsd")

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    cos_full = torch.cat((cos, cos), dim=-1).double()
    sin_full = torch.cat((sin, sin), dim=-1).double()
    hf = q.double() * cos_full + rotate_half(q.double()) * sin_full
    assert_rotary_close(out, hf, q, layout="bhsd", rotary_dim=d, interleaved=False)


def test_deterministic(device):
    q, k = make_qk("bshd", 2, 33, 4, 2, 64, torch.bfloat16, device)
    cos, sin = random_tables(33, 32, device)
    a = rope_triton.apply_rotary(q, k, cos, sin)
    b = rope_triton.apply_rotary(q, k, cos, sin)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_float64(device):
    q, k = make_qk("sbhd", 2, 4, 2, 2, 16, torch.float64, device, "transposed")
    cos, sin = random_tables(4, 8, device, torch.float64)
    check_against_reference(q, k, cos, sin, layout="sbhd", interleaved=True)


@pytest.mark.gpu
def test_noncontiguous_last_dim(device):
    # A head_dim stride other than 1 still works (slow path: element-wise loads), never a copy.
    q = torch.randn(2, 5, 3, 16, device=device).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert q.stride(-1) != 1
    cos, sin = random_tables(5, 8, device)
    check_against_reference(q, None, cos, sin, layout="bshd")


@pytest.mark.parametrize("layout", ["bshd", "thd"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_split_tables(layout, interleaved, device):
    # Tables of the high and low position bits, combined in the kernel by the angle-addition formulas.
    from rope_triton import angles as freqs

    seqlen, low_bits = 6, 4
    inv_freq, _ = freqs.inv_freq_and_scale(16, base=10000.0)
    ch, sh, cl, sl = (t.to(device) for t in freqs.split_tables(inv_freq, 2**20, low_bits=low_bits))
    q, k = make_qk(layout, 1, seqlen, 2, 1, 16, torch.float32, device, "packed")
    shape = (seqlen,) if layout == "thd" else (1, seqlen)
    positions = torch.tensor([0, 15, 16, 2**20 - 1, 777_777, 2**20], device=device).reshape(shape)
    kw = {"cu_seqlens": torch.tensor([0, seqlen], device=device)} if layout == "thd" else {}
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = rope_triton.apply_rotary(
        q, k, ch, sh, cos_lo=cl, sin_lo=sl, positions=positions, layout=layout, interleaved=interleaved, **kw
    )
    rq, rk = ref64(
        q0, k0, ch, sh, cos_lo=cl, sin_lo=sl, positions=positions, layout=layout, interleaved=interleaved,
        **kw
    )
    # Combining the tables costs two more float32 roundings per cos/sin: twice the table error bound.
    for out, ref, x in ((q_out, rq, q0), (k_out, rk, k0)):
        assert_rotary_close(
            out, ref, x, layout=layout, rotary_dim=16, interleaved=interleaved, table_bound=2.0
        )
    # Position 2**20 is past the tables: NaN, never an out-of-bounds read.
    assert q_out.reshape(seqlen, -1)[-1].isnan().all() and not q_out.reshape(seqlen, -1)[:-1].isnan().any()


_RULES = {
    # Launch rules forced on any size (tests are small: the decode rule would take them all).
    # PROGRAM: (order, tokens and heads of a q program, tokens and heads of a k program).
    # Decode: one token per program, q/k loads before the angle loads.
    "decode": lambda cfg: dict(cfg, PROGRAM=(kernels.ORDER_DECODE, 1, 2, 1, 2), num_warps=1),
    # A token block's q and k chunks side by side: blocks of 2 tokens (the last one partial), and of 4
    # tokens of one head each.
    "tokens": lambda cfg: dict(cfg, PROGRAM=(kernels.ORDER_TOKENS, 2, 2, 2, 2), num_warps=1),
    "tokens-4x1": lambda cfg: dict(cfg, PROGRAM=(kernels.ORDER_TOKENS, 4, 1, 4, 1), num_warps=2),
    # Every q program before every k program: the same block shape (angles loaded before the q/k
    # branch), or k's own (1 token x 2 heads for q, 4 tokens x 1 head for k: angles loaded in each branch).
    "q-first": lambda cfg: dict(cfg, PROGRAM=(kernels.ORDER_Q_FIRST, 2, 2, 2, 2), num_warps=1),
    "q-first-k-blocks": lambda cfg: dict(cfg, PROGRAM=(kernels.ORDER_Q_FIRST, 1, 2, 4, 1), num_warps=1),
}


@pytest.fixture(params=list(_RULES))
def rule(request, monkeypatch):
    """Every launch under one of _RULES instead of the launcher's choice."""
    from rope_triton._core import launch as _launch
    from rope_triton._core import op as _ops

    base = _launch.config
    monkeypatch.setattr(
        _launch, "config", lambda p, itemsize=2, **kw: _RULES[request.param](base(p, itemsize, **kw))
    )
    monkeypatch.setattr(_ops.PLANS, "_plans", {})  # no replay of a launch recorded under another rule
    return request.param


@pytest.mark.parametrize("positions", ["default", "tensor-offset", "positions"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_launch_rules(rule, layout, inplace, positions, device):
    # 3 q heads and 1 k head in chunks of 2: a partial chunk in each;
    # 5 tokens in blocks of 2: a partial block.
    seqlen = 5
    q, k = make_qk(layout, _batch(layout, 2), seqlen, 3, 1, 24, torch.bfloat16, device, "packed")
    cos, sin = random_tables(seqlen + 4, 8, device)
    kw = _position_kwargs(positions, layout, _batch(layout, 2), seqlen, seqlen + 4, device)
    check_against_reference(
        q, k, cos, sin, layout=layout, rotary_dim=16, inplace=inplace, **kw,
        **_thd_kwargs(layout, seqlen, device)
    )


def per_sequence_tables(n_seqs: int, rows: int, half: int, device, form: str):
    """cos/sin of shape (n_seqs, rows, half), each sequence its own random angles; ``form`` "shared": one
    table (first dim 1), "expanded": one table expanded to n_seqs (stride 0), "strided": every other
    sequence of a larger batch of tables with transposed rows and columns."""
    cos, sin = random_tables(2 * n_seqs * rows, half, device)
    cos, sin = cos.reshape(2 * n_seqs, rows, half), sin.reshape(2 * n_seqs, rows, half)
    if form == "shared":
        return cos[:1], sin[:1]
    if form == "expanded":
        return cos[:1].expand(n_seqs, -1, -1), sin[:1].expand(n_seqs, -1, -1)
    if form == "strided":
        return cos.transpose(1, 2).contiguous().transpose(1, 2)[::2], sin[::2]
    return cos[:n_seqs].contiguous(), sin[:n_seqs].contiguous()


@pytest.mark.parametrize("positions", ["default", "tensor-offset", "positions"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_launch_rules_per_sequence_tables(rule, layout, positions, device):
    # cos/sin per batch row (thd: per packed sequence), as Hugging Face's rotary embedding returns them.
    seqlen, rows = 5, 9
    batch = _batch(layout, 2)
    n_seqs = 3 if layout == "thd" else batch
    q, k = make_qk(layout, batch, seqlen, 3, 1, 24, torch.bfloat16, device, "packed")
    cos, sin = per_sequence_tables(n_seqs, rows, 8, device, "own")
    kw = _position_kwargs(positions, layout, batch, seqlen, rows, device)
    check_against_reference(
        q, k, cos, sin, layout=layout, rotary_dim=16, inplace=positions == "default", **kw,
        **_thd_kwargs(layout, seqlen, device),
    )


@pytest.mark.parametrize("form", ["shared", "expanded", "strided"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_sequence_table_forms(layout, form, device):
    # One table for all (first dim 1, or expanded: stride 0), or strided views of several.
    seqlen, rows = 6, 8
    batch = _batch(layout, 3)
    n_seqs = 3
    q, k = make_qk(
        layout, batch, seqlen, 2, 2, 16, torch.float16, device, "transposed" if layout != "thd" else "packed"
    )
    cos, sin = per_sequence_tables(n_seqs, rows, 8, device, form)
    kw = _position_kwargs("tensor-offset", layout, batch, seqlen, rows, device)
    check_against_reference(q, k, cos, sin, layout=layout, **kw, **_thd_kwargs(layout, seqlen, device))


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_launch_rules_q_only(rule, layout, device):
    # No k: the grid holds q programs only.
    q, _ = make_qk(layout, _batch(layout, 2), 5, 3, 1, 16, torch.bfloat16, device, "packed")
    cos, sin = random_tables(9, 8, device)
    check_against_reference(q, None, cos, sin, layout=layout, **_thd_kwargs(layout, 5, device))


@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_launch_rules_split_tables(rule, interleaved, conjugate, device):
    # The other code paths of each rule: interleaved pairs, the conjugate rotation (the backward) and
    # split tables (two more table loads).
    from rope_triton import angles as freqs

    inv_freq, _ = freqs.inv_freq_and_scale(16, base=10000.0)
    ch, sh, cl, sl = (t.to(device) for t in freqs.split_tables(inv_freq, 4096, low_bits=4))
    q, k = make_qk("bshd", 2, 5, 3, 1, 16, torch.float32, device, "packed")
    positions = torch.tensor([[0, 15, 16, 4095, 777], [1, 2, 3, 2048, 31]], device=device)
    check_against_reference(q, k, ch, sh, cos_lo=cl, sin_lo=sl, positions=positions, layout="bshd",
                            interleaved=interleaved, conjugate=conjugate, table_bound=2.0)



# --------------------------------------------------------------------------------------------------
# freqs=: cos/sin computed in the kernel from a freq_table.
# --------------------------------------------------------------------------------------------------


def _freq_table(dim: int, device, attention_factor: float = 1.0):
    from rope_triton import angles as freqs

    inv_freq, _ = freqs.inv_freq_and_scale(dim, base=10000.0)
    return freqs.freq_table(inv_freq, attention_factor=attention_factor, device=device)




@pytest.mark.parametrize("mode", ["default", "int-offset", "tensor-offset", "positions-int64"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_freqs_positions(layout, mode, device):
    seqlen, rows = 7, 40
    batch = _batch(layout, 2)
    q, k = make_qk(
        layout, batch, seqlen, 3, 1, 20, torch.float32, device, "transposed" if layout != "thd" else "packed"
    )
    kw = _position_kwargs(mode, layout, batch, seqlen, rows, device) | _thd_kwargs(layout, seqlen, device)
    check_against_reference(q, k, None, None, freqs=_freq_table(16, device), layout=layout, rotary_dim=16,
                            table_bound=FREQS_TABLE_BOUND, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_freqs_far_positions(interleaved, conjugate, dtype, device):
    # Exact angles up to 2**31 - 2; 2**31 - 1 and negative positions are off the range: NaN, as off a table.
    q, k = make_qk("bshd", 2, 6, 2, 1, 16, dtype, device, "packed")
    positions = torch.tensor([[0, 4095, 4096, 2**24 + 7, 2**31 - 2, 2**31 - 1],
                              [123_456_789, 1, 2**30, 99_999, 2**31 - 4096, -1]], device=device)
    ft = _freq_table(16, device, attention_factor=1.2)
    q_out, _ = check_against_reference(q, k, None, None, freqs=ft, positions=positions, layout="bshd",
                                       interleaved=interleaved, conjugate=conjugate,
                                       table_bound=FREQS_TABLE_BOUND)
    off = torch.tensor([[0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 1]], dtype=torch.bool, device=device)
    assert torch.equal(q_out.isnan().all(-1).all(-1), off) and not q_out.isnan()[~off].any()


def test_freqs_agree_with_tables(device):
    # The same rotation as float32 tables of the same frequencies, within both tables' rounding.
    from rope_triton import angles as freqs

    inv_freq, scale = freqs.inv_freq_and_scale(32, base=500000.0)
    cos, sin = (t.to(device) for t in freqs.cos_sin_tables(inv_freq, 70_000, attention_factor=scale))
    ft = freqs.freq_table(inv_freq, attention_factor=scale, device=device)
    q, k = make_qk("bshd", 1, 5, 2, 2, 32, torch.float32, device, "packed")
    positions = torch.tensor([[0, 17, 4096, 65_535, 69_999]], device=device)
    by_tables = rope_triton.apply_rotary(q, k, cos, sin, positions=positions)
    by_freqs = rope_triton.apply_rotary(q, k, freqs=ft, positions=positions)
    for a, b, x in zip(by_tables, by_freqs, (q, k), strict=True):
        tol = 8 * 2.0**-24 * (x.abs().amax(-1, keepdim=True) + 1)
        assert ((a - b).abs() <= tol).all()


def test_freqs_cos_sin_accuracy(device):
    # Rotating (1, 0) pairs returns (cos, sin) themselves: the kernel's values against the exact ones, at
    # positions spread over [0, 2**31) and at every pair's frequency. Bound: the reduced angle rounds to
    # 0.5 u (|angle| <= pi / 4), the polynomials' last additions 0.5 u and their small terms under 0.5 u.
    from rope_triton import angles as freqs

    gen = torch.Generator().manual_seed(0)
    n, dim = 256, 128
    positions = torch.cat([torch.randint(0, 2**31 - 1, (n // 2,), generator=gen),
                           torch.randint(0, 70_000, (n // 2,), generator=gen)]).reshape(1, n).to(device)
    ft = _freq_table(dim, device)
    q = torch.zeros(1, n, 1, dim, device=device)
    q[..., : dim // 2] = 1.0
    out, _ = rope_triton.apply_rotary(q, None, freqs=ft, positions=positions)
    theta = freqs.freq_table_angles(ft.cpu(), positions[0].cpu())
    err_cos = (out[0, :, 0, : dim // 2].double().cpu() - theta.cos()).abs().max().item()
    err_sin = (out[0, :, 0, dim // 2:].double().cpu() - theta.sin()).abs().max().item()
    assert max(err_cos, err_sin) <= 2 * 2.0**-24, (err_cos / 2.0**-24, err_sin / 2.0**-24)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_launch_rules_freqs(rule, interleaved, device):
    # freqs= under every program shape: split chunks, whole tokens (its rule for 2-byte data), token blocks.
    q, k = make_qk("bshd", 2, 5, 3, 1, 16, torch.bfloat16, device, "packed")
    positions = torch.tensor([[0, 15, 4096, 2**31 - 2, 777], [1, 2, 3, 2048, 2**24 + 1]], device=device)
    check_against_reference(q, k, None, None, freqs=_freq_table(16, device), positions=positions,
                            layout="bshd", interleaved=interleaved, conjugate=True,
                            table_bound=FREQS_TABLE_BOUND)
