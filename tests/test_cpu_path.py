"""The CPU path (:mod:`rope_triton._core.cpu`) against the float64 reference: every layout, view and option.

The suite runs with the Triton interpreter on (tests/conftest.py), so ``apply_rotary`` would run the kernel
on these CPU tensors: the CPU path is called directly here, with the arguments validated as
``apply_rotary`` validates them, or reached through ``apply_rotary`` with the interpreter switched off for
the op (``cpu_op`` fixture). Tolerances come from the output dtype's rounding (helpers.assert_rotary_close).
"""

from __future__ import annotations

import itertools

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
from rope_triton import angles, reference
from rope_triton._core import cpu
from rope_triton._core import op as _ops
from rope_triton._core.checks import check

CPU = torch.device("cpu")


def cpu_apply(q, k, cos=None, sin=None, *, freqs=None, inplace=False, **kw):
    """What ``apply_rotary`` does on the CPU without the interpreter: validate, allocate, rotate."""
    if freqs is not None:
        cos = sin = freqs
    kw.setdefault("layout", "bshd")
    p = check(
        q, k, cos, sin, inplace=inplace, freqs=freqs is not None,
        **{name: kw.get(name) for name in (
            "positions", "offsets", "cu_seqlens", "max_seqlen", "rotary_dim", "cos_lo", "sin_lo",
        )},
        layout=kw["layout"], interleaved=kw.get("interleaved", False), conjugate=kw.get("conjugate", False),
    )
    q_out = q if inplace else torch.empty_like(q)
    k_out = None if k is None else (k if inplace else torch.empty_like(k))
    offsets = kw.get("offsets")
    cpu.rotate(
        p, q, k, q_out, k_out, cos, sin, kw.get("cos_lo"), kw.get("sin_lo"), kw.get("positions"),
        offsets if isinstance(offsets, torch.Tensor) else None, kw.get("cu_seqlens"),
        kw.get("interleaved", False), kw.get("conjugate", False),
    )
    return q_out, k_out


def check_cpu(q, k, cos=None, sin=None, *, layout="bshd", inplace=False, table_bound=1.0, **kw):
    """The CPU path against the float64 oracle; inputs untouched out of place, the outputs themselves in
    place. Returns the outputs."""
    return check_against_reference(q, k, cos, sin, layout=layout, inplace=inplace, table_bound=table_bound,
                                   apply=cpu_apply, **kw)


def _batch(layout, batch):
    return 1 if layout == "thd" else batch


def _thd(layout, seqlen, lengths=None, max_seqlen=True):
    """For thd: uneven packed sequences (one of length 1) covering ``seqlen`` tokens."""
    if layout != "thd":
        return {}
    lengths = lengths or [1, seqlen // 3, seqlen - 1 - seqlen // 3]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {"cu_seqlens": cu, **({"max_seqlen": max(lengths)} if max_seqlen else {})}


def _positions(mode, layout, batch, seqlen, rows, n_seqs=3):
    n = n_seqs if layout == "thd" else batch
    if mode == "default":
        return {}
    if mode == "int-offset":
        return {"offsets": rows - seqlen}
    if mode == "tensor-offset":
        return {"offsets": torch.randint(0, rows - seqlen, (n,))}
    if mode == "tensor-offset-int32":
        return {"offsets": torch.randint(0, rows - seqlen, (n,), dtype=torch.int32)}
    if layout == "thd":
        shape = (seqlen,)
    else:
        shape = {"broadcast-positions": (1, seqlen), "1d-positions": (seqlen,)}.get(mode, (batch, seqlen))
    dtype = torch.int32 if mode == "positions-int32" else torch.int64
    positions = torch.randint(0, rows, shape, dtype=dtype)
    if mode == "expanded-positions" and layout != "thd":
        positions = positions[:1].expand(batch, seqlen)  # stride 0 over the batch
    return {"positions": positions}


_MODES = [
    "default", "int-offset", "tensor-offset", "tensor-offset-int32", "positions-int32", "positions-int64",
    "broadcast-positions", "1d-positions", "expanded-positions",
]
_SOME_MODES = ["default", "int-offset", "tensor-offset", "positions-int64", "broadcast-positions"]


# --------------------------------------------------------------------------------------------------
# Layouts, views, dtypes, options.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", (*DTYPES, torch.float64), ids=str)
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_views_dtypes(layout, view, dtype):
    seqlen = 7
    q, k = make_qk(layout, _batch(layout, 2), seqlen, 4, 2, 16, dtype, CPU, view)
    cos, sin = random_tables(seqlen, 8, CPU)
    check_cpu(q, k, cos, sin, layout=layout, **_thd(layout, seqlen))


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("rotary_dim", [24, 12], ids=["full", "partial"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_options(layout, dtype, interleaved, rotary_dim, conjugate, inplace):
    seqlen = 6
    q, k = make_qk(layout, _batch(layout, 2), seqlen, 3, 1, 24, dtype, CPU, "packed")
    cos, sin = random_tables(seqlen + 3, rotary_dim // 2, CPU)
    check_cpu(q, k, cos, sin, layout=layout, interleaved=interleaved, rotary_dim=rotary_dim,
              conjugate=conjugate, inplace=inplace, **_thd(layout, seqlen))


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("view", ["contiguous", "transposed"])
@pytest.mark.parametrize("head_dim,rotary_dim", [(24, 24), (25, 24), (26, 10)])
def test_odd_head_dims_and_complex_views(head_dim, rotary_dim, view, interleaved):
    # float32 interleaved pairs are rotated as complex numbers in place of the output when its strides
    # allow a complex view (an odd head_dim does not): both ways, and the tail passed through.
    for inplace in (False, True):
        q, k = make_qk("bshd", 2, 5, 3, 2, head_dim, torch.float32, CPU, view)
        cos, sin = random_tables(5, rotary_dim // 2, CPU)
        check_cpu(q, k, cos, sin, rotary_dim=rotary_dim, interleaved=interleaved, inplace=inplace)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_noncontiguous_last_dim(dtype, interleaved):
    # head_dim not the innermost dim in memory (a dense permutation, and a view of every other element).
    cos, sin = random_tables(5, 8, CPU)
    for inplace in (False, True):
        q = torch.randn(2, 5, 3, 16, dtype=dtype).transpose(-1, -2).contiguous().transpose(-1, -2)
        k = torch.randn(2, 5, 1, 32, dtype=dtype)[..., ::2]
        assert q.stride(-1) != 1 and k.stride(-1) != 1
        check_cpu(q, k, cos, sin, interleaved=interleaved, inplace=inplace)


@pytest.mark.parametrize(
    "heads_q,heads_k", [(1, 1), (4, 1), (3, None), (7, 3), (2, 6), (3, 0)],
    ids=["single", "mqa", "q-only", "gqa", "more-k", "k-no-heads"],
)
@pytest.mark.parametrize("seqlen", [1, 5])
def test_heads(heads_q, heads_k, seqlen):
    q, k = make_qk("bshd", 2, seqlen, heads_q, heads_k, 32, torch.bfloat16, CPU)
    cos, sin = random_tables(seqlen, 16, CPU)
    check_cpu(q, k, cos, sin)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "shape", [(0, 4, 2, 16), (2, 0, 2, 16), (2, 4, 0, 16)], ids=["no-batch", "no-tokens", "no-heads"]
)
def test_empty(shape, layout):
    b, s, h, d = shape
    if layout == "thd":
        if b == 0:
            pytest.skip("thd has no batch dim")
        b = 1
    q, k = make_qk(layout, b, s, h, h, d, torch.float32, CPU)
    cos, sin = random_tables(4, 8, CPU)
    kw = {"cu_seqlens": torch.tensor([0, s])} if layout == "thd" else {}
    q_out, k_out = cpu_apply(q, k, cos, sin, layout=layout, **kw)
    assert q_out.shape == q.shape and k_out.shape == k.shape


@pytest.mark.parametrize("table_dtype", [*DTYPES, torch.float64], ids=str)
@pytest.mark.parametrize("table_view", ["dense", "strided", "wide"])
def test_tables(table_dtype, table_view):
    seqlen, half = 5, 8
    q, k = make_qk("bshd", 2, seqlen, 2, 1, 16, torch.bfloat16, CPU)
    cos, sin = random_tables(seqlen, half, CPU, table_dtype)
    kw = {}
    if table_view == "strided":
        cos = torch.stack((cos, torch.full_like(cos, 9.0)), dim=-1).flatten(-2)[:, ::2]
        sin = sin.t().contiguous().t()
    elif table_view == "wide":  # Hugging Face's cat(freqs, freqs): only the first R/2 columns are read
        cos, sin = torch.cat((cos, cos), dim=1), torch.cat((sin, sin), dim=1)
        kw["rotary_dim"] = 2 * half
    check_cpu(q, k, cos, sin, **kw)


def test_float64_is_computed_in_float64():
    # float64 data and tables: the exact rotation up to float64 rounding (assert_rotary_close uses 2**-52).
    q, k = make_qk("bhsd", 2, 6, 3, 1, 32, torch.float64, CPU)
    angle = torch.rand(6, 16, dtype=torch.float64) * 6.3
    check_cpu(q, k, angle.cos(), angle.sin(), layout="bhsd", offsets=torch.tensor([0, 0]))


# --------------------------------------------------------------------------------------------------
# Positions and tables.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", _MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_positions(layout, mode):
    seqlen, rows = 9, 40
    batch = _batch(layout, 3)
    q, k = make_qk(layout, batch, seqlen, 2, 2, 8, torch.bfloat16, CPU,
                   "transposed" if layout != "thd" else "packed")
    cos, sin = random_tables(rows, 4, CPU)
    kw = _positions(mode, layout, batch, seqlen, rows)
    check_cpu(q, k, cos, sin, layout=layout, **_thd(layout, seqlen), **kw)


def per_sequence_tables(n_seqs, rows, half, form):
    """(n_seqs, rows, half) cos/sin; "shared": first dim 1, "expanded": stride 0, "strided": every other one
    of a larger batch with transposed rows and columns, "mixed": cos of its own, sin shared (stride 0)."""
    cos, sin = random_tables(2 * n_seqs * rows, half, CPU)
    cos, sin = cos.reshape(2 * n_seqs, rows, half), sin.reshape(2 * n_seqs, rows, half)
    if form == "shared":
        return cos[:1], sin[:1]
    if form == "expanded":
        return cos[:1].expand(n_seqs, -1, -1), sin[:1].expand(n_seqs, -1, -1)
    if form == "strided":
        return cos.transpose(1, 2).contiguous().transpose(1, 2)[::2], sin[::2]
    if form == "mixed":
        return cos[:n_seqs], sin[:1].expand(n_seqs, -1, -1)
    return cos[:n_seqs].contiguous(), sin[:n_seqs].contiguous()


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("mode", _SOME_MODES)
@pytest.mark.parametrize("form", ["own", "shared", "expanded", "strided", "mixed"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_per_sequence_tables(layout, form, mode, interleaved):
    seqlen, rows = 6, 9
    batch = _batch(layout, 3)
    q, k = make_qk(layout, batch, seqlen, 3, 1, 16, torch.float16, CPU, "packed")
    cos, sin = per_sequence_tables(3, rows, 8, form)
    check_cpu(q, k, cos, sin, layout=layout, inplace=mode == "default", interleaved=interleaved,
              **_thd(layout, seqlen), **_positions(mode, layout, batch, seqlen, rows))


@pytest.mark.parametrize("layout", ["bshd", "bhsd"])
def test_hugging_face_tables(layout):
    # What the transformers drop-in hands over: (B, S, R) tables in the model dtype holding cat(freqs,
    # freqs), per batch row (left padding, per-row offsets), read with rotary_dim = R.
    b, s, d = 3, 5, 32
    q, k = make_qk(layout, b, s, 4, 2, d, torch.bfloat16, CPU, "transposed")
    angle = torch.rand(b, s, d // 2, dtype=torch.float64) * 100
    cos = torch.cat((angle.cos(), angle.cos()), -1).to(torch.bfloat16)
    sin = torch.cat((angle.sin(), angle.sin()), -1).to(torch.bfloat16)
    check_cpu(q, k, cos, sin, layout=layout, rotary_dim=d)


@pytest.mark.parametrize("offsets_dtype", [torch.int32, torch.int64], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["bshd", "bhsd", "sbhd"])
def test_decode_step(layout, dtype, offsets_dtype, monkeypatch):
    # One token per sequence at its offset (the decode step's own path, without the general row gathering):
    # wide tables, GQA, in place too; offsets off the table give NaN for that sequence's token only.
    general = []
    cos_sin = cpu._cos_sin
    monkeypatch.setattr(cpu, "_cos_sin", lambda *args: general.append(1) or cos_sin(*args))
    cos, sin = random_tables(20, 12, CPU, torch.float64 if dtype == torch.float64 else torch.float32)
    offsets = torch.tensor([3, 0, 19, 7], dtype=offsets_dtype)
    for inplace in (False, True):
        q, k = make_qk(layout, 4, 1, 4, 2, 16, dtype, CPU, "packed")
        check_cpu(q, k, cos, sin, layout=layout, offsets=offsets, rotary_dim=16, inplace=inplace)
    assert not general
    offsets = torch.tensor([3, 20, -1, 7], dtype=offsets_dtype)
    q_out, _ = check_cpu(q, k, cos, sin, layout=layout, offsets=offsets, rotary_dim=16)
    assert general
    token = reference.to_bshd(q_out, layout)[:, 0]
    assert token.isnan().all(-1).all(-1).tolist() == [False, True, True, False]


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """The CPU path on one thread and on two (small q and k share one buffer then, index_select swaps
    pairs on one thread only)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_small_q_and_k_together(layout, interleaved, threads, monkeypatch):
    together = []
    rotate_together = cpu._rotate_together
    monkeypatch.setattr(
        cpu, "_rotate_together", lambda *args: together.append(rotate_together(*args)) or together[-1]
    )
    batch = _batch(layout, 3)
    cases = [(False, 16, "packed"), (True, 12, "transposed"), (False, 16, "padded")]
    for seqlen, (inplace, rotary_dim, view) in itertools.product((4, 1), cases):  # (1: a decode step)
        q, k = make_qk(layout, batch, seqlen, 3, 2, 16, torch.bfloat16, CPU, view)
        cos, sin = random_tables(9, rotary_dim // 2, CPU)
        kw = _positions("tensor-offset", layout, batch, seqlen, 9) | _thd(layout, seqlen)
        kw.update(rotary_dim=rotary_dim, interleaved=interleaved, inplace=inplace)
        check_cpu(q, k, cos, sin, layout=layout, **kw)
    # Together on two threads (the transposed views may have their heads outside the batch in memory: then
    # one after the other).
    assert together == [] if threads == 1 else len(together) == 6 and all(together[i] for i in (0, 2, 3, 5))


@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_half_split_formulations_agree(dtype, conjugate, threads):
    # Half-split pairs take each half's sin term straight from the other half, except data already in the
    # working dtype rotated in place, whose halves are swapped into a copy first (its first write
    # overwrites them); a decode step's q and k share one buffer on several threads. The same products and
    # sums every way: the results agree bit for bit, and with the float64 reference.
    cos, sin = random_tables(40, 8, CPU, torch.float64 if dtype == torch.float64 else torch.float32)
    kw = {"offsets": torch.tensor([3, 0, 39, 17]), "conjugate": conjugate}
    for seqlen in (1, 3):
        q, k = make_qk("bshd", 4, seqlen, 4, 2, 16, dtype, CPU, "packed")
        if seqlen > 1:
            kw["offsets"] = kw["offsets"].clamp(max=40 - seqlen)
        out = check_cpu(q, k, cos, sin, **kw)
        inplace = check_cpu(q.clone(), k.clone(), cos, sin, inplace=True, **kw)
        alone = [cpu_apply(x, None, cos, sin, **kw)[0] for x in (q, k)]
        for a, b, c in zip(out, inplace, alone, strict=True):
            assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("lengths", [[1, 1, 1], [5, 1, 3, 1], [0, 4, 0, 2], [6]], ids=str)
def test_varlen_lengths(lengths):
    total = sum(lengths)
    q, k = make_qk("thd", 1, total, 3, 1, 16, torch.bfloat16, CPU, "packed")
    cos, sin = random_tables(8, 8, CPU)
    check_cpu(q, k, cos, sin, layout="thd", offsets=torch.tensor([1] * len(lengths)),
              **_thd("thd", total, lengths))


@pytest.mark.parametrize("table", ["2d", "per-sequence", "split", "freqs"])
@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_positions_off_the_table_give_nan(layout, table):
    # Positions held in tensors are not checked by the validation: those off the table (or off the freqs
    # range) give NaN for their token, as the kernel does, and never an index error.
    rows, seqlen = 4, 6
    q, k = make_qk(layout, 1, seqlen, 2, 1, 8, torch.float32, CPU)
    cos, sin = random_tables(rows, 4, CPU)
    bad = torch.tensor([False, False, True, True, True, False])
    positions = torch.tensor([0, 3, 4, -1, 1_000_000, 2])
    kw = {}
    if table == "per-sequence":
        cos, sin = cos[None], sin[None].expand(1, -1, -1)
        cos, sin = torch.cat((cos, cos + 1)), torch.cat((sin, sin))  # (2, rows, 4): a table per sequence
        if layout != "thd":
            q, k = make_qk(layout, 2, seqlen, 2, 1, 8, torch.float32, CPU)
            positions = torch.stack((positions, positions.flip(0)))
            bad = torch.stack((bad, bad.flip(0)))
    elif table == "split":
        ch, sh, cl, sl = angles.split_tables(angles.inv_freq_and_scale(8)[0], 16, low_bits=2)
        cos, sin, kw = ch, sh, {"cos_lo": cl, "sin_lo": sl}
        positions = torch.tensor([0, 15, 16, -1, 1_000_000, 5])
    elif table == "freqs":
        kw = {"freqs": angles.freq_table(angles.inv_freq_and_scale(8)[0])}
        cos = sin = None
        positions = torch.tensor([0, 2**31 - 2, 2**31 - 1, -1, -(2**40), 5])
    if layout == "thd":
        cu = torch.tensor([0, 2, seqlen]) if table == "per-sequence" else torch.tensor([0, seqlen])
        kw["cu_seqlens"] = cu
    else:
        positions = positions.reshape(-1, seqlen)
    q_out, _ = check_cpu(q, k, cos, sin, layout=layout, positions=positions, **kw,
                         table_bound=FREQS_TABLE_BOUND if table == "freqs" else 2.0)
    assert q_out.reshape(*bad.shape, -1).isnan().all(-1).equal(bad)
    assert not q_out.reshape(*bad.shape, -1)[~bad].isnan().any()


def test_packed_sequences_past_the_table_give_nan():
    # thd with default positions and no max_seqlen: a sequence longer than the table reads NaN past it.
    q, k = make_qk("thd", 1, 9, 2, 1, 8, torch.bfloat16, CPU)
    cos, sin = random_tables(5, 4, CPU)
    q_out, _ = check_cpu(q, k, cos, sin, layout="thd", cu_seqlens=torch.tensor([0, 2, 9]), offsets=1)
    assert q_out.reshape(9, -1).isnan().all(-1).tolist() == [False] * 2 + [False] * 4 + [True] * 3


@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_split_tables(layout, interleaved, conjugate):
    inv_freq, _ = angles.inv_freq_and_scale(16, base=10000.0)
    ch, sh, cl, sl = angles.split_tables(inv_freq, 2**20, low_bits=4)
    q, k = make_qk(layout, 1, 6, 2, 1, 16, torch.bfloat16, CPU, "packed")
    shape = (6,) if layout == "thd" else (1, 6)
    positions = torch.tensor([0, 15, 16, 2**20 - 1, 777_777, 3]).reshape(shape)
    kw = {"cu_seqlens": torch.tensor([0, 6])} if layout == "thd" else {}
    # Combining the tables costs two more float32 roundings per cos/sin: twice the table error bound.
    check_cpu(q, k, ch, sh, cos_lo=cl, sin_lo=sl, positions=positions, layout=layout, interleaved=interleaved,
              conjugate=conjugate, table_bound=2.0, **kw)
    # Default positions and a scalar offset (a range of positions) too.
    check_cpu(q, k, ch, sh, cos_lo=cl, sin_lo=sl, offsets=2**20 - 6, layout=layout, interleaved=interleaved,
              conjugate=conjugate, table_bound=2.0, **kw)


# --------------------------------------------------------------------------------------------------
# freqs=: cos/sin computed from a freq_table.
# --------------------------------------------------------------------------------------------------


def _freq_table(dim, attention_factor=1.0):
    inv_freq, _ = angles.inv_freq_and_scale(dim, base=10000.0)
    return angles.freq_table(inv_freq, attention_factor=attention_factor)


@pytest.mark.parametrize("mode", _SOME_MODES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_freqs_positions(layout, mode):
    seqlen, rows = 7, 40
    batch = _batch(layout, 2)
    q, k = make_qk(layout, batch, seqlen, 3, 1, 20, torch.bfloat16, CPU, "packed")
    check_cpu(q, k, freqs=_freq_table(16), layout=layout, rotary_dim=16, **_thd(layout, seqlen),
              **_positions(mode, layout, batch, seqlen, rows))


@pytest.mark.parametrize("offset", [0, 5, 4090, 2**31 - 2 - 200], ids=["0", "5", "chunk-edge", "far"])
@pytest.mark.parametrize("seqlen", [33, 200], ids=["one-group", "groups"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_freqs_long_ranges(seqlen, offset, interleaved):
    # A range of positions longer than _FREQ_GROUP takes its angles by the angle-addition formulas (in
    # float64): still within one rounding, across the table's 12-bit chunks and at the far end of the range.
    q, k = make_qk("bshd", 2, seqlen, 2, 1, 32, torch.float32, CPU)
    ft = _freq_table(32, attention_factor=1.2)
    check_cpu(q, k, freqs=ft, offsets=offset, conjugate=True, interleaved=interleaved)


def test_freqs_angles_are_the_tables():
    # The CPU path's angles take only the 12-bit chunks the largest position needs: the same float64
    # angles as rope_triton.angles.freq_table_angles, bit for bit.
    ft = _freq_table(64, attention_factor=1.3)
    gen = torch.Generator().manual_seed(1)
    for top in (0, 1, 31, 4095, 4096, 2**24 - 1, 2**24, 2**31 - 2):
        pos = torch.randint(0, top + 1, (3, 50), generator=gen)
        pos[0, 0] = top
        assert torch.equal(cpu._angles(ft, pos, top), angles.freq_table_angles(ft, pos)), top
        assert torch.equal(cpu._angles(ft, pos, None), angles.freq_table_angles(ft, pos)), top


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("conjugate", [False, True], ids=["fwd", "conj"])
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_freqs_far_positions(interleaved, conjugate, dtype):
    # cos/sin from the float64 angles, rounded once: the table bound of cos/sin tables, at any position.
    q, k = make_qk("bshd", 2, 6, 2, 1, 16, dtype, CPU, "packed")
    positions = torch.tensor([[0, 4095, 4096, 2**24 + 7, 2**31 - 2, 3],
                              [123_456_789, 1, 2**30, 99_999, 2**31 - 4096, 0]])
    check_cpu(q, k, freqs=_freq_table(16, attention_factor=1.2), positions=positions, interleaved=interleaved,
              conjugate=conjugate)


# --------------------------------------------------------------------------------------------------
# Blocks: large tensors are rotated in blocks.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_blocks(layout, dtype, interleaved, monkeypatch):
    # Blocks of at most 3 tokens (and of single heads where a token is larger than a block): tables
    # sliced with the tokens where they vary, whole where they broadcast.
    seqlen, head_dim = 7, 16
    monkeypatch.setattr(cpu, "_BLOCK", 3 * 2 * head_dim)
    batch = _batch(layout, 3)
    for inplace, view, tables in ((False, "transposed", "2d"), (True, "packed", "per-sequence")):
        q, k = make_qk(layout, batch, seqlen, 3, 2, head_dim, dtype, CPU, view)
        if tables == "2d":
            cos, sin = random_tables(seqlen + 4, 6, CPU)
        else:
            cos, sin = per_sequence_tables(3, seqlen + 4, 6, "own")
        kw = _positions("tensor-offset", layout, batch, seqlen, seqlen + 4)
        check_cpu(q, k, cos, sin, layout=layout, rotary_dim=12, interleaved=interleaved, inplace=inplace,
                  **kw, **_thd(layout, seqlen))


def test_blocks_cover_every_element():
    shape = torch.Size((3, 5, 7, 8))
    for block in (8, 16, 40, 56, 100, 280, 10_000):
        cover = torch.zeros(shape[:3], dtype=torch.int64)
        old, cpu._BLOCK = cpu._BLOCK, block
        try:
            blocks = cpu._blocks(shape)
        finally:
            cpu._BLOCK = old
        for index in blocks:
            cover[index] += 1
            assert cover[index].numel() * shape[3] <= max(block, shape[3])
        assert cover.eq(1).all(), block


# --------------------------------------------------------------------------------------------------
# Through apply_rotary: autograd and torch.compile on the CPU path.
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def cpu_op(monkeypatch):
    """apply_rotary on CPU tensors takes the CPU path, as without TRITON_INTERPRET."""
    monkeypatch.setattr(_ops, "triton_runs_on", lambda device: device.type == "cuda")


def test_apply_rotary_takes_the_cpu_path(cpu_op, monkeypatch):
    calls = []
    rotate = cpu.rotate
    monkeypatch.setattr(cpu, "rotate", lambda *args: calls.append(1) or rotate(*args))
    q, k = make_qk("bshd", 2, 3, 2, 1, 8, torch.bfloat16, CPU)
    cos, sin = random_tables(3, 4, CPU)
    q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin)
    assert calls == [1]
    rq, rk = ref64(q, k, cos, sin)
    assert_rotary_close(q_out, rq, q, layout="bshd", rotary_dim=8, interleaved=False)


@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_gradcheck(cpu_op, interleaved):
    # float64 end to end: the backward (the conjugate rotation, through the CPU path) is the exact adjoint.
    q = torch.randn(2, 4, 3, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 4, 1, 8, dtype=torch.float64, requires_grad=True)
    angle = torch.rand(9, 3, dtype=torch.float64) * 6.3
    offsets = torch.tensor([0, 5])

    def fn(q, k):
        return rope_triton.apply_rotary(q, k, angle.cos(), angle.sin(), offsets=offsets, rotary_dim=6,
                                        interleaved=interleaved)

    assert torch.autograd.gradcheck(fn, (q, k))
    assert torch.autograd.gradgradcheck(fn, (q, k))


def test_inplace_through_autograd(cpu_op):
    q, _ = make_qk("thd", 1, 7, 3, None, 16, torch.bfloat16, CPU, "packed")
    cos, sin = random_tables(10, 6, CPU)
    kw = {"layout": "thd", "cu_seqlens": torch.tensor([0, 2, 7]), "offsets": torch.tensor([3, 1])}
    kw["rotary_dim"] = 12
    base = q.float().requires_grad_()
    x = base * 1
    out, _ = rope_triton.apply_rotary(x, None, cos, sin, inplace=True, interleaved=True, **kw)
    assert out is x
    rq, _ = ref64(base.detach(), None, cos, sin, interleaved=True, **kw)
    assert_rotary_close(out.detach(), rq, base.detach(), layout="thd", rotary_dim=12, interleaved=True)
    out.sum().backward()
    assert base.grad is not None and torch.isfinite(base.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["neox", "gptj"])
def test_compiled_cpu_path(cpu_op, interleaved, dtype):
    # Traced by torch.compile (fullgraph: no data-dependent branch, no `out=` view): positions off the table
    # still give NaN (masked, not branched on); partial rotary, in place.
    q, k = make_qk("bhsd", 2, 3, 2, 1, 12, dtype, CPU, "transposed")
    cos, sin = random_tables(6, 4, CPU)

    def fn(q, k, offsets, inplace):
        q, k = q * 1, k * 1  # (in place on a non-leaf)
        return rope_triton.apply_rotary(
            q, k, cos, sin, offsets=offsets, layout="bhsd", interleaved=interleaved, inplace=inplace
        )

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for offsets, inplace in ((torch.tensor([0, 3]), False), (torch.tensor([0, 5]), True)):
        q_out, _ = compiled(q, k, offsets, inplace)
        rq, _ = ref64(q, k, cos, sin, offsets=offsets, layout="bhsd", interleaved=interleaved)
        assert_rotary_close(q_out, rq, q, layout="bhsd", rotary_dim=8, interleaved=interleaved)
    assert q_out[1, :, 1:, :8].isnan().all() and not q_out[0].isnan().any()
    assert not q_out[..., 8:].isnan().any()  # the tail past rotary_dim passes through


def test_rotary_embedding_reads_tables_on_the_cpu_path(monkeypatch):
    # On a GPU a long sequence few share computes its cos/sin (freqs=); the CPU path reads table rows as a
    # slice instead (no bytes to save there, and cos/sin would cost trigonometry on every call), unless
    # compute_cos_sin says otherwise.
    import rope_triton.modules as modules
    from rope_triton.bench import shapes as bench_shapes

    calls = []
    real_apply = modules.apply_rotary

    def spy(*args, **kwargs):
        calls.append("freqs" if kwargs.get("freqs") is not None else "tables")
        # (the interpreted kernel would take seconds on this shape: only the CPU path runs)
        return real_apply(*args, **kwargs) if not _ops.triton_runs_on(args[0].device) else args[:2]

    monkeypatch.setattr(modules, "apply_rotary", spy)
    q = torch.randn(1, 512, 8, 128, dtype=torch.bfloat16)
    k = torch.randn(1, 512, 2, 128, dtype=torch.bfloat16)
    rope = rope_triton.RotaryEmbedding(128, base=500000.0, max_positions=512)
    rope(q, k)  # under the interpreter: the kernel's choice
    # (the first call runs the CPU path too where the suite runs CPU tensors without the interpreter)
    first = "freqs" if _ops.triton_runs_on(torch.device("cpu")) else "tables"
    monkeypatch.setattr(modules, "triton_runs_on", lambda device: device.type == "cuda")
    monkeypatch.setattr(_ops, "triton_runs_on", lambda device: device.type == "cuda")
    out, _ = rope(q, k)  # the CPU path
    forced = rope_triton.RotaryEmbedding(128, base=500000.0, max_positions=512, compute_cos_sin=True)
    forced(q, k)
    assert calls == [first, "tables", "freqs"]
    ref, _ = ref64(q, None, rope.cos_hi, rope.sin_hi)
    assert_rotary_close(out, ref, q, layout="bshd", rotary_dim=128, interleaved=False)
    # The benchmark's rope-triton rows follow it.
    long_cpu = bench_shapes.SHAPES["long-32k"].cpu_variant()
    assert bench_shapes.cos_sin_mode(long_cpu) == "freqs"
    monkeypatch.setattr(bench_shapes, "triton_runs_on", lambda device: device.type == "cuda")
    assert bench_shapes.cos_sin_mode(long_cpu, CPU) == "tables"
