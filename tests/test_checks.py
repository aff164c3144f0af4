"""Bad input: a ValueError or TypeError naming the argument, raised before any kernel runs."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rotary_close, random_tables, ref64

import rope_triton

pytestmark = pytest.mark.usefixtures("cpu_modes")  # every check on both CPU paths


def _base(device, **over):
    args = {
        "q": torch.randn(2, 5, 4, 16, device=device),
        "k": torch.randn(2, 5, 2, 16, device=device),
        "cos": torch.ones(8, 8, device=device),
        "sin": torch.zeros(8, 8, device=device),
    }
    kwargs = {}
    for key, value in over.items():
        (args if key in args else kwargs)[key] = value
    return args, kwargs


CASES = [
    # (id, overrides, exception, message fragment)
    ("layout", {"layout": "bsdh"}, ValueError, "layout"),
    ("rank", {"q": torch.randn(2, 5, 64)}, ValueError, "q: layout 'bshd' expects a 4-D"),
    ("thd-rank", {"layout": "thd", "cu_seqlens": torch.tensor([0, 5])}, ValueError,
     "q: layout 'thd' expects a 3-D"),
    ("int-q", {"q": torch.ones(2, 5, 4, 16, dtype=torch.int32)}, TypeError, "q: expected dtype"),
    ("not-tensor", {"q": [[1.0]]}, TypeError, "q: expected a torch.Tensor"),
    ("k-dtype", {"k": torch.randn(2, 5, 2, 16, dtype=torch.float16)}, TypeError,
     "k: expected the dtype of q"),
    ("k-batch", {"k": torch.randn(3, 5, 2, 16)}, ValueError, "k: expected the batch"),
    ("k-seq", {"k": torch.randn(2, 4, 2, 16)}, ValueError, "k: expected the sequence length"),
    ("k-dim", {"k": torch.randn(2, 5, 2, 8)}, ValueError, "k: expected the head_dim"),
    ("odd-rotary", {"rotary_dim": 7}, ValueError, "rotary_dim: expected an even int"),
    ("big-rotary", {"rotary_dim": 18}, ValueError,
     "rotary_dim: expected an even int in \\(0, head_dim=16\\]"),
    ("zero-rotary", {"rotary_dim": 0}, ValueError, "rotary_dim"),
    ("float-rotary", {"rotary_dim": 8.0}, TypeError, "rotary_dim"),
    ("narrow-table", {"cos": torch.ones(8, 3), "sin": torch.zeros(8, 3), "rotary_dim": 8}, ValueError,
     "cos: expected at least"),
    ("table-shape", {"sin": torch.zeros(8, 7)}, ValueError, "sin: expected the shape of cos"),
    ("table-rank", {"cos": torch.ones(1, 8, 8, 1), "sin": torch.zeros(1, 8, 8, 1)}, ValueError,
     "cos: expected a 2-D table .* or 3-D per sequence"),
    ("table-batch", {"cos": torch.ones(3, 8, 8), "sin": torch.zeros(3, 8, 8)}, ValueError,
     "cos: per-sequence tables need a first dim of batch = 2 \\(or 1\\), got shape \\(3, 8, 8\\)"),
    ("table-3d-sin-2d", {"cos": torch.ones(2, 8, 8)}, ValueError, "sin: expected the shape of cos"),
    ("short-3d-table", {"cos": torch.ones(2, 4, 8), "sin": torch.zeros(2, 4, 8)}, ValueError,
     "at least 5 rows, got 4"),
    ("int-table", {"cos": torch.ones(8, 8, dtype=torch.int64)}, TypeError, "cos: expected a floating-point"),
    ("short-table", {"cos": torch.ones(4, 8), "sin": torch.zeros(4, 8)}, ValueError,
     "at least 5 rows, got 4"),
    ("offset-past-table", {"offsets": 4}, ValueError, "at least 9 rows, got 8"),
    ("negative-offset", {"offsets": -1}, ValueError, "offsets: expected a non-negative"),
    ("float-offsets", {"offsets": torch.zeros(2)}, TypeError, "offsets: expected dtype int32 or int64"),
    ("offsets-shape", {"offsets": torch.zeros(3, dtype=torch.int64)}, ValueError,
     "offsets: expected shape \\(batch,\\)"),
    ("offsets-type", {"offsets": 1.5}, TypeError, "offsets: expected an int"),
    ("both", {"offsets": 1, "positions": torch.zeros(2, 5, dtype=torch.int64)}, ValueError,
     "mutually exclusive"),
    ("float-positions", {"positions": torch.zeros(2, 5)}, TypeError,
     "positions: expected dtype int32 or int64"),
    ("positions-shape", {"positions": torch.zeros(2, 4, dtype=torch.int64)}, ValueError,
     "positions: expected shape"),
    ("positions-list", {"positions": [0, 1]}, TypeError, "positions: expected an int32 or int64 tensor"),
    ("cu-not-thd", {"cu_seqlens": torch.tensor([0, 5])}, ValueError,
     "cu_seqlens: only used with layout 'thd'"),
    ("inplace-overlap", {"q": torch.randn(1, 1, 1, 16).expand(2, 5, 4, 16), "inplace": True}, ValueError,
     "q: inplace=True"),
]


@pytest.mark.parametrize("over,exc,msg", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(over, exc, msg):
    args, kwargs = _base("cpu", **over)
    with pytest.raises(exc, match=msg):
        rope_triton.apply_rotary(args["q"], args["k"], args["cos"], args["sin"], **kwargs)


THD_CASES = [
    ("missing-cu", {}, ValueError, "cu_seqlens: layout 'thd' needs cu_seqlens"),
    ("float-cu", {"cu_seqlens": torch.tensor([0.0, 6.0])}, TypeError, "cu_seqlens: expected dtype"),
    ("cu-shape", {"cu_seqlens": torch.tensor([[0, 6]])}, ValueError, "cu_seqlens: expected shape"),
    ("cu-one", {"cu_seqlens": torch.tensor([0])}, ValueError, "cu_seqlens: expected shape"),
    ("positions-shape", {"cu_seqlens": torch.tensor([0, 6]),
                         "positions": torch.zeros(1, 6, dtype=torch.int64)}, ValueError,
     "positions: layout 'thd' expects shape"),
    ("offsets-shape", {"cu_seqlens": torch.tensor([0, 2, 6]),
                       "offsets": torch.zeros(3, dtype=torch.int64)}, ValueError,
     "offsets: expected shape \\(num_seqs,\\)"),
    ("max-seqlen-past-table", {"cu_seqlens": torch.tensor([0, 2, 6]), "max_seqlen": 9}, ValueError,
     "at least 9 rows, got 8"),
    ("bad-max-seqlen", {"cu_seqlens": torch.tensor([0, 6]), "max_seqlen": -2}, ValueError, "max_seqlen"),
    ("table-seqs", {"cu_seqlens": torch.tensor([0, 2, 6]), "cos": torch.ones(3, 8, 8),
                    "sin": torch.zeros(3, 8, 8)},
     ValueError, "cos: per-sequence tables need a first dim of num_seqs = 2"),
    # Host boundaries are checked (no device sync): made-up positions otherwise.
    ("cu-decreasing", {"cu_seqlens": torch.tensor([0, 4, 2, 6])}, ValueError,
     "^cu_seqlens: expected non-decreasing boundaries, got 4 then 2 \\(elements 1 and 2\\)"),
    ("cu-first-not-zero", {"cu_seqlens": torch.tensor([1, 2, 6])}, ValueError,
     "^cu_seqlens: expected 0 as the first boundary, got 1"),
    ("cu-last-short", {"cu_seqlens": torch.tensor([0, 2, 5])}, ValueError,
     "^cu_seqlens: expected total_tokens = 6 \\(dim 0 of q\\) as the last boundary, got 5"),
    ("cu-last-past", {"cu_seqlens": torch.tensor([0, 2, 7], dtype=torch.int32)}, ValueError,
     "^cu_seqlens: expected total_tokens = 6 \\(dim 0 of q\\) as the last boundary, got 7"),
    # Boundaries every other element of a buffer: the kernel would read them as consecutive (wrong sequences).
    ("cu-strided", {"cu_seqlens": torch.tensor([0, 9, 2, 9, 6])[::2]}, ValueError,
     "cu_seqlens: expected consecutive elements \\(stride 1\\), got stride 2"),
]


@pytest.mark.parametrize("kw,exc,msg", [c[1:] for c in THD_CASES], ids=[c[0] for c in THD_CASES])
def test_bad_thd_input(kw, exc, msg):
    q, k = torch.randn(6, 4, 16), torch.randn(6, 2, 16)
    with pytest.raises(exc, match=msg):
        kw = dict(kw)  # (the case's dict is shared by reruns)
        tables = {"cos": kw.pop("cos", torch.ones(8, 8)), "sin": kw.pop("sin", torch.zeros(8, 8))}
        rope_triton.apply_rotary(q, k, **tables, layout="thd", **kw)


def test_host_cu_seqlens_with_an_empty_sequence_are_accepted():
    # Equal consecutive boundaries are an empty sequence, not an error.
    q = torch.randn(6, 4, 16)
    cos, sin = random_tables(8, 8, "cpu")
    cu = torch.tensor([0, 2, 2, 6])
    out, _ = rope_triton.apply_rotary(q, None, cos, sin, layout="thd", cu_seqlens=cu)
    want, _ = ref64(q, None, cos, sin, layout="thd", cu_seqlens=cu)
    assert_rotary_close(out, want, q, layout="thd", rotary_dim=16, interleaved=False)


@pytest.mark.gpu
def test_devices_differ():
    q = torch.randn(1, 2, 1, 8, device="cuda")
    with pytest.raises(ValueError, match="cos: expected a tensor on q's device"):
        rope_triton.apply_rotary(q, None, torch.ones(2, 4), torch.zeros(2, 4, device="cuda"))


def test_devices_differ_meta():
    # The same check without a GPU: the meta device stands in for a second device.
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(ValueError, match="sin: expected a tensor on q's device cpu, got meta"):
        rope_triton.apply_rotary(q, None, torch.ones(2, 4), torch.zeros(2, 4, device="meta"))


def test_errors_come_before_any_work():
    # An out-of-place call that fails validation leaves everything untouched and launches nothing.
    q = torch.randn(2, 5, 4, 16)
    q0 = q.clone()
    with pytest.raises(ValueError):
        rope_triton.apply_rotary(q, None, torch.ones(4, 8), torch.zeros(4, 8), inplace=True)
    assert torch.equal(q, q0)


SPLIT_CASES = [
    ("one-of-two", {"cos_lo": torch.ones(4, 8)}, ValueError,
     "sin_lo: cos_lo and sin_lo go together, got only cos_lo"),
    ("not-pow2", {"cos_lo": torch.ones(3, 8), "sin_lo": torch.zeros(3, 8)}, ValueError,
     "cos_lo: expected a power-of-two"),
    ("width", {"cos_lo": torch.ones(4, 6), "sin_lo": torch.zeros(4, 6)}, ValueError,
     "cos_lo: expected the width of cos"),
    ("lo-shapes", {"cos_lo": torch.ones(4, 8), "sin_lo": torch.zeros(2, 8)}, ValueError,
     "sin_lo: expected the shape of cos_lo"),
    ("too-short", {"cos_lo": torch.ones(4, 8), "sin_lo": torch.zeros(4, 8), "offsets": 30}, ValueError,
     "at least 35 rows, got 32"),
    ("per-sequence", {"cos": torch.ones(2, 8, 8), "sin": torch.zeros(2, 8, 8), "cos_lo": torch.ones(4, 8),
                      "sin_lo": torch.zeros(4, 8)}, ValueError,
     "cos: expected a 2-D table .*split tables take 2-D"),
]


@pytest.mark.parametrize("over,exc,msg", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_bad_split_tables(over, exc, msg):
    args, kwargs = _base("cpu", **over)
    with pytest.raises(exc, match=msg):
        rope_triton.apply_rotary(args["q"], args["k"], args["cos"], args["sin"], **kwargs)


FLAG_CASES = [
    ("interleaved-str", {"interleaved": "False"}, TypeError, "interleaved: expected a bool"),
    ("conjugate-int", {"conjugate": 1}, TypeError, "conjugate: expected a bool"),
    ("inplace-none", {"inplace": None}, TypeError, "inplace: expected a bool"),
    ("layout-list", {"layout": ["bshd"]}, ValueError, "layout"),
    ("max-seqlen-not-thd", {"max_seqlen": 5}, ValueError, "max_seqlen: only used with layout 'thd'"),
    ("max-seqlen-float", {"max_seqlen": 5.0}, TypeError, "max_seqlen: expected an int"),
    ("lone-sin-lo", {"sin_lo": torch.ones(4, 8)}, ValueError, "cos_lo: sin_lo and cos_lo go together"),
]


@pytest.mark.parametrize("over,exc,msg", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_bad_flags(over, exc, msg):
    args, kwargs = _base("cpu", **over)
    with pytest.raises(exc, match=msg):
        rope_triton.apply_rotary(args["q"], args["k"], args["cos"], args["sin"], **kwargs)


def test_inplace_q_and_k_in_the_same_memory_is_refused():
    x = torch.randn(2, 5, 2, 16)
    with pytest.raises(ValueError, match="k: inplace=True needs q and k in separate memory"):
        rope_triton.apply_rotary(x, x, torch.ones(8, 8), torch.zeros(8, 8), inplace=True)


def test_dynamic_module_needs_max_position_embeddings():
    with pytest.raises(ValueError, match="max_position_embeddings"):
        rope_triton.RotaryEmbedding(16, scaling={"rope_type": "dynamic", "factor": 2.0})


def _freq_table(**kw):
    from rope_triton import angles as freqs

    return freqs.freq_table(freqs.inv_freq_and_scale(16)[0], **kw)


@pytest.mark.parametrize(
    "kw, exc, msg",
    [
        ({"cos": torch.ones(8, 8)}, ValueError, "freqs: cos/sin tables and freqs are exclusive"),
        ({"freqs": _freq_table().double()}, ValueError,
         "freqs: expected an int64 tensor of shape \\(4, rotary_dim"),
        ({"freqs": _freq_table()[:3]}, ValueError, "freqs: expected an int64 tensor of shape"),
        ({"freqs": [[1.0]]}, TypeError, "freqs: expected a torch.Tensor"),
        ({"q": torch.randn(2, 5, 4, 16, dtype=torch.float64), "k": None}, TypeError,
         "freqs: computes cos/sin in float32"),
        ({"offsets": 2**31 - 3}, ValueError, "offsets: positions up to 2147483649"),
        ({"cos_lo": torch.ones(4, 8), "sin_lo": torch.ones(4, 8)}, ValueError,
         "cos_lo: split tables and freqs"),
        ({"rotary_dim": 16, "freqs": _freq_table()[:, :4]}, ValueError,
         "freqs: expected at least rotary_dim // 2"),
    ],
    ids=["with-cos", "float32", "rows", "not-tensor", "float64-q", "far-offset", "split-tables", "narrow"],
)
def test_bad_freqs(kw, exc, msg):
    args = {"q": torch.randn(2, 5, 4, 16), "k": torch.randn(2, 5, 2, 16), "freqs": _freq_table()}
    args.update(kw)
    q, k = args.pop("q"), args.pop("k")
    with pytest.raises(exc, match=msg):
        rope_triton.apply_rotary(q, k, **args)


def test_missing_tables_are_named():
    with pytest.raises(TypeError, match="sin: expected cos and sin tables \\(or freqs=...\\), got None"):
        rope_triton.apply_rotary(torch.randn(1, 2, 1, 8), None, torch.ones(4, 4))


def _symbolic(value: int, name: str, env) -> torch.SymInt:
    # A backed SymInt, as torch.compile / export with dynamic shapes hand out for sizes and ints derived
    # from them.
    from torch._dynamo.source import ConstantSource

    return env.create_symintnode(env.create_symbol(value, source=ConstantSource(name)), hint=value)


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_check_accepts_symbolic_ints(layout):
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from rope_triton._core.checks import check

    env = ShapeEnv()
    q = torch.randn(6, 4, 16) if layout == "thd" else torch.randn(2, 6, 4, 16)
    thd = {"cu_seqlens": torch.tensor([0, 2, 6]), "max_seqlen": _symbolic(4, "max_seqlen", env)}
    p = check(
        q, None, torch.ones(16, 6), torch.zeros(16, 6),
        positions=None, offsets=_symbolic(3, "offsets", env), layout=layout,
        rotary_dim=_symbolic(12, "rotary_dim", env), inplace=False,
        interleaved=_symbolic(1, "flag", env) > 0,  # a SymBool
        **(thd if layout == "thd" else {"cu_seqlens": None, "max_seqlen": None}),
    )
    assert p.rotary_dim == 12 and p.offset == 3 and p.table_rows == 16
    assert p.max_offset == 16 - (4 if layout == "thd" else 6)
    # Symbolic values are still checked: a table too short for the symbolic offset is refused.
    with pytest.raises(ValueError, match="cos: positions up to .* need a table of at least .* rows, got 16"):
        check(torch.randn(2, 6, 4, 16), None, torch.ones(16, 6), torch.zeros(16, 6),
              positions=None, offsets=_symbolic(13, "far", env), cu_seqlens=None, max_seqlen=None,
              layout="bshd", rotary_dim=None, inplace=False)


RANK_MESSAGES = {
    "bshd": "4-D tensor (batch, seq, heads, head_dim)",
    "bhsd": "4-D tensor (batch, heads, seq, head_dim)",
    "sbhd": "4-D tensor (seq, batch, heads, head_dim)",
    "thd": "3-D tensor (total_tokens, heads, head_dim)",
}


@pytest.mark.parametrize("layout", RANK_MESSAGES)
def test_rank_error_spells_out_the_layout_once(layout):
    q = torch.randn(2, 5, 4, 3, 16) if layout == "thd" else torch.randn(2, 5, 64)
    kw = {"cu_seqlens": torch.tensor([0, 5])} if layout == "thd" else {}
    with pytest.raises(ValueError) as info:
        rope_triton.apply_rotary(q, None, torch.ones(8, 8), torch.zeros(8, 8), layout=layout, **kw)
    msg = str(info.value)
    want = f"q: layout {layout!r} expects a {RANK_MESSAGES[layout]}, got shape {tuple(q.shape)}"
    assert msg.startswith(want), msg
    if layout != "thd":  # a (batch, seq, hidden) projection: the heads must be split off first
        assert "split" in msg and "heads" in msg[len(want):], msg


@pytest.mark.parametrize("width", [16, 12, 32], ids=["hf-full-width", "wider-than-half", "wider-than-head"])
def test_wide_tables_without_rotary_dim_name_cos(width):
    # The caller passed no rotary_dim: the error is about cos's width (R/2 columns are read), with the
    # hint for Hugging Face's full-width cat(freqs, freqs) tables where that width is a valid rotary_dim.
    q = torch.randn(2, 5, 4, 16)
    with pytest.raises(ValueError) as info:
        rope_triton.apply_rotary(q, None, torch.ones(8, width), torch.zeros(8, width))
    msg = str(info.value)
    assert msg.startswith(f"cos: expected at most head_dim // 2 = 8 columns, got shape (8, {width})"), msg
    assert "rotary_dim: " not in msg
    assert (f"rotary_dim={width}" in msg) == (width <= 16), msg
    # With rotary_dim=width the full-width tables are read as they are: only their first half.
    if width == 16:
        cos, sin = random_tables(8, 8, "cpu")
        cos2, sin2 = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)
        out, _ = rope_triton.apply_rotary(q, None, cos2, sin2, rotary_dim=16)
        want, _ = ref64(q, None, cos, sin)
        assert_rotary_close(out, want, q, layout="bshd", rotary_dim=16, interleaved=False)


def _overlap_pair(case):
    """(q, k) in bshd, heads of 16 dims, over memory they may share."""
    n = 2 * 3 * 2 * 16  # elements of one (2, 3, 2, 16) tensor
    flat = torch.randn(2 * n)
    if case == "same-tensor":
        x = torch.randn(2, 3, 2, 16)
        return x, x
    if case == "partial-heads":  # heads 2, 3 in both
        qkv = torch.randn(2, 3, 8, 16)
        return qkv[:, :, 0:4], qkv[:, :, 2:6]
    if case == "partial-dims":  # 16-dim windows 8 apart in 24-wide rows
        x = torch.randn(2, 3, 2, 24)
        return x[..., 0:16], x[..., 8:24]
    if case == "last-head-of-q-first-of-k":
        return flat[:n].view(2, 3, 2, 16), flat[n - 16 : 2 * n - 16].view(2, 3, 2, 16)
    if case == "same-memory-other-order":
        return flat[:n].view(2, 3, 2, 16), flat[:n].view(2, 2, 3, 16).transpose(1, 2)
    if case == "even-odd-heads":
        x = torch.randn(2, 3, 4, 16)
        return x[:, :, 0::2], x[:, :, 1::2]
    if case == "fused-qkv":
        qkv = torch.randn(2, 3, 8, 16)
        return qkv[:, :, :4], qkv[:, :, 4:6]
    if case == "even-odd-tokens":
        x = torch.randn(2, 6, 2, 16)
        return x[:, 0::2], x[:, 1::2]
    if case == "row-halves":  # q the first 16 of each 32-wide row, k the last 16
        x = torch.randn(2, 3, 2, 32)
        return x[..., :16], x[..., 16:]
    assert case == "adjacent"
    return flat[:n].view(2, 3, 2, 16), flat[n:].view(2, 3, 2, 16)


@pytest.mark.parametrize(
    "case, overlap",
    [
        ("same-tensor", True),
        ("partial-heads", True),
        ("partial-dims", True),
        ("last-head-of-q-first-of-k", True),
        ("same-memory-other-order", True),
        ("even-odd-heads", False),
        ("fused-qkv", False),
        ("even-odd-tokens", False),
        ("row-halves", False),
        ("adjacent", False),
    ],
)
def test_inplace_refuses_any_overlap_of_q_and_k(case, overlap):
    # The kernel writes q before it reads k: memory shared by both would be rotated twice.
    q, k = _overlap_pair(case)
    cos, sin = random_tables(3, 8, "cpu")
    q0, k0 = q.clone(), k.clone()
    base = q if q._base is None else q._base
    before = base.clone()
    if overlap:
        with pytest.raises(ValueError, match="^k: inplace=True needs q and k in separate memory"):
            rope_triton.apply_rotary(q, k, cos, sin, inplace=True)
        assert torch.equal(base, before), "the refused call wrote into q or k"
        return
    rope_triton.apply_rotary(q, k, cos, sin, inplace=True)
    want_q, want_k = ref64(q0, k0, cos, sin)
    assert_rotary_close(q, want_q, q0, layout="bshd", rotary_dim=16, interleaved=False)
    assert_rotary_close(k, want_k, k0, layout="bshd", rotary_dim=16, interleaved=False)


def test_overlap_test_matches_brute_force():
    # Random strided views of one buffer (any sizes, strides and offsets): the address arithmetic agrees
    # with the sets of elements each view touches.
    from rope_triton._core.checks import _may_share_elements

    gen = torch.Generator().manual_seed(1)
    buf = torch.zeros(640)

    def rand(lo, hi):
        return int(torch.randint(lo, hi, (), generator=gen))

    def view():
        shape = [rand(1, 5) for _ in range(4)]
        strides = [rand(0, 40) for _ in range(4)]
        span = sum((n - 1) * st for n, st in zip(shape, strides, strict=True))
        return buf.as_strided(shape, strides, rand(0, buf.numel() - span))

    def elements(t):
        idx = torch.arange(buf.numel()).as_strided(t.shape, t.stride(), t.storage_offset())
        return set(idx.flatten().tolist())

    seen = {False: 0, True: 0}  # among pairs whose address spans intersect
    for _ in range(1000):
        a, b = view(), view()
        want = bool(elements(a) & elements(b))
        ea, eb = max(elements(a)), max(elements(b))
        if a.storage_offset() <= eb and b.storage_offset() <= ea:
            seen[want] += 1
        assert _may_share_elements(a, b) == want, (
            a.shape, a.stride(), a.storage_offset(), b.shape, b.stride(), b.storage_offset()
        )
    assert min(seen.values()) > 50  # both answers were exercised
