"""The float64 oracle itself, checked against independent formulations (no Triton involved)."""

from __future__ import annotations

import pytest
import torch
from helpers import LAYOUTS, make_qk, random_tables

from rope_triton import reference


def _complex_rotation(x_bshd, angle, rotary_dim, interleaved):
    """Rotation as multiplication by e^{i theta} on complex numbers built from the pairs."""
    half = rotary_dim // 2
    rot = x_bshd[..., :rotary_dim]
    if interleaved:
        z = torch.complex(rot[..., 0::2], rot[..., 1::2])
    else:
        z = torch.complex(rot[..., :half], rot[..., half:])
    w = z * torch.polar(torch.ones_like(angle), angle)[:, :, None, :]
    out = torch.stack((w.real, w.imag), -1).flatten(-2) if interleaved else torch.cat((w.real, w.imag), -1)
    return torch.cat((out, x_bshd[..., rotary_dim:]), -1)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("layout", ["bshd", "bhsd", "sbhd"])
def test_matches_complex_multiplication(layout, interleaved):
    b, s, h, d, r = 2, 6, 3, 12, 8
    q, _ = make_qk(layout, b, s, h, None, d, torch.float64, torch.device("cpu"))
    pos = torch.randint(0, 20, (b, s))
    angle = torch.rand(20, r // 2, dtype=torch.float64) * 6.3
    out, _ = reference.apply_rotary(
        q, None, angle.cos(), angle.sin(), positions=pos, layout=layout, interleaved=interleaved,
        rotary_dim=r, compute_dtype=torch.float64,
    )
    want = _complex_rotation(reference.to_bshd(q, layout), angle[pos], r, interleaved)
    torch.testing.assert_close(reference.to_bshd(out, layout), want, rtol=1e-14, atol=1e-14)


def test_matches_hugging_face_rotate_half():
    b, h, s, d = 2, 4, 7, 16
    q = torch.randn(b, h, s, d, dtype=torch.float64)
    cos, sin = random_tables(s, d // 2, torch.device("cpu"), torch.float64)
    out, _ = reference.apply_rotary(q, None, cos, sin, layout="bhsd", compute_dtype=torch.float64)
    x1, x2 = q.chunk(2, -1)
    hf = q * torch.cat((cos, cos), -1) + torch.cat((-x2, x1), -1) * torch.cat((sin, sin), -1)
    torch.testing.assert_close(out, hf, rtol=1e-15, atol=1e-15)


def test_conjugate_inverts():
    q = torch.randn(2, 5, 3, 8, dtype=torch.float64)
    cos, sin = random_tables(5, 4, torch.device("cpu"), torch.float64)
    y, _ = reference.apply_rotary(q, None, cos, sin, compute_dtype=torch.float64)
    back, _ = reference.apply_rotary(y, None, cos, sin, conjugate=True, compute_dtype=torch.float64)
    torch.testing.assert_close(back, q, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_views_round_trip(layout):
    x = torch.randn(2 if layout != "thd" else 1, 3, 4, 5)
    assert torch.equal(reference.to_bshd(reference.from_bshd(x, layout), layout), x)


def test_token_positions():
    cu = torch.tensor([0, 2, 2, 5])
    pos = reference.token_positions(
        1, 5, torch.device("cpu"), cu_seqlens=cu, offsets=torch.tensor([10, 20, 30])
    )
    assert pos.tolist() == [[10, 11, 30, 31, 32]]
    pos = reference.token_positions(2, 3, torch.device("cpu"), offsets=torch.tensor([0, 4]))
    assert pos.tolist() == [[0, 1, 2], [4, 5, 6]]
    assert reference.token_positions(2, 2, torch.device("cpu"), offsets=3).tolist() == [[3, 4], [3, 4]]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_sequence_tables_are_each_sequence_alone(layout):
    # (B, P, R/2) tables (thd: (num_seqs, P, R/2)) rotate sequence i exactly as table i alone would.
    cpu = torch.device("cpu")
    lengths = [2, 0, 3, 4]
    n_seqs = len(lengths) if layout == "thd" else 3
    seqlen = sum(lengths) if layout == "thd" else 4
    q, _ = make_qk(layout, 1 if layout == "thd" else n_seqs, seqlen, 2, None, 8, torch.float64, cpu)
    angle = torch.rand(n_seqs, 6, 4, dtype=torch.float64) * 6.3
    kw = {"offsets": torch.tensor([2, 0, 1, 2][:n_seqs])}
    if layout == "thd":
        kw["cu_seqlens"] = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    out, _ = reference.apply_rotary(
        q, None, angle.cos(), angle.sin(), layout=layout, compute_dtype=torch.float64, **kw
    )
    out_b, q_b = reference.to_bshd(out, layout), reference.to_bshd(q, layout)
    starts = kw["cu_seqlens"].tolist() if layout == "thd" else None
    for i in range(n_seqs):
        part = q_b[:, starts[i]:starts[i + 1]] if layout == "thd" else q_b[i:i + 1]
        want, _ = reference.apply_rotary(part, None, angle[i].cos(), angle[i].sin(),
                                         offsets=int(kw["offsets"][i]), compute_dtype=torch.float64)
        got = out_b[:, starts[i]:starts[i + 1]] if layout == "thd" else out_b[i:i + 1]
        assert torch.equal(got, want), i
    # A first dim of 1 is one table for every sequence.
    one, _ = reference.apply_rotary(q, None, angle[:1].cos(), angle[:1].sin(), layout=layout,
                                    compute_dtype=torch.float64, **kw)
    two_d, _ = reference.apply_rotary(q, None, angle[0].cos(), angle[0].sin(), layout=layout,
                                      compute_dtype=torch.float64, **kw)
    assert torch.equal(one, two_d)


def test_rows_off_the_table_are_nan():
    table = torch.arange(6.0).reshape(3, 2)
    rows = reference.gather_rows(table, torch.tensor([[0, 2, 3, -1]]), 2, torch.float64)
    assert rows[0, :2].tolist() == [[0.0, 1.0], [4.0, 5.0]]
    assert rows[0, 2:].isnan().all()


def test_inplace_writes_input():
    q = torch.randn(1, 3, 2, 8)
    cos, sin = random_tables(3, 4, torch.device("cpu"))
    out, _ = reference.apply_rotary(q.clone(), None, cos, sin)
    q_out, _ = reference.apply_rotary(q, None, cos, sin, inplace=True)
    assert q_out is q and torch.equal(q, out)


def test_reference_imports_no_triton():
    import subprocess
    import sys

    code = "import sys, rope_triton.reference, rope_triton._core.checks; print('triton' in sys.modules)"
    assert subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip() == "False"
