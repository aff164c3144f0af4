"""Shared test helpers: input builders for every layout and memory view, and dtype-derived tolerances."""

from __future__ import annotations

import math

import torch

from rope_triton import reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("bshd", "bhsd", "sbhd", "thd")
VIEWS = ("contiguous", "packed", "padded", "transposed")

# fp32 arithmetic of one rotated element: two products and a difference, each rounded (u = 2**-24),
# bounded by 2u times |x1 cos| + |x2 sin|. float64 math is 2**-52.
_ARITH_EPS = {torch.float64: 2.0**-52}


def _logical(shape_bshd: tuple[int, int, int, int], layout: str) -> tuple[int, ...]:
    b, s, h, d = shape_bshd
    return {"bshd": (b, s, h, d), "bhsd": (b, h, s, d), "sbhd": (s, b, h, d), "thd": (s, h, d)}[layout]


def make_qk(
    layout: str,
    batch: int,
    seqlen: int,
    heads_q: int,
    heads_k: int | None,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    view: str = "contiguous",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random q and k in ``layout`` (``thd``: batch must be 1, seqlen = total tokens), as ``view``:

    - ``contiguous``: each its own dense tensor;
    - ``packed``: slices of one qkv projection buffer (token stride (Hq + 2 Hk) * D);
    - ``padded``: heads padded to D + 8 in memory, the tensors slice off the first D;
    - ``transposed``: dense in another dim order, permuted into the layout (e.g. bshd from bhsd memory).
    """
    hk = heads_k or 0
    if layout == "thd":
        assert batch == 1
    if view == "packed":
        buf = torch.randn(batch, seqlen, heads_q + 2 * hk, head_dim, device=device).to(dtype)
        parts = [buf[:, :, :heads_q], buf[:, :, heads_q : heads_q + hk]]
    elif view == "padded":
        parts = [
            torch.randn(batch, seqlen, h, head_dim + 8, device=device).to(dtype)[..., :head_dim]
            for h in (heads_q, hk)
        ]
    elif view == "transposed":
        # Memory (S, H, B, D) then viewed as (B, S, H, D): every stride differs from the dense one.
        parts = [
            torch.randn(seqlen, h, batch, head_dim, device=device).to(dtype).permute(2, 0, 1, 3)
            for h in (heads_q, hk)
        ]
    else:
        parts = [None, None]
    out = []
    for i, h in enumerate((heads_q, hk)):
        if i == 1 and heads_k is None:
            out.append(None)
            continue
        if view == "contiguous":
            out.append(torch.randn(_logical((batch, seqlen, h, head_dim), layout), device=device).to(dtype))
        else:
            out.append(reference.from_bshd(parts[i], layout))
    return out[0], out[1]


def use_cpu_path(monkeypatch) -> None:
    """CPU tensors take the CPU path (PyTorch, with its replay of validated calls), as on a machine
    without ``TRITON_INTERPRET``, instead of the kernel in the interpreter."""
    from rope_triton._core import norm_op, op

    problems: dict = {}
    for module in (op, norm_op):
        monkeypatch.setattr(module, "_INTERPRETED", False)
        monkeypatch.setattr(module, "PROBLEMS", problems)


def random_tables(rows: int, half: int, device: torch.device, dtype=torch.float32):
    """cos/sin of random angles (independent of any frequency formula), shape (rows, half)."""
    angle = torch.rand(rows, half, dtype=torch.float64, device=device) * 2 * math.pi
    return angle.cos().to(dtype), angle.sin().to(dtype)


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` numbers at |x| (x in float64); subnormal spacing below the normal range."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(x.abs().clamp_min(fi.tiny))
    return torch.ldexp(torch.full_like(x, fi.eps), (e - 1).to(torch.int32))


def pair_magnitude(
    x: torch.Tensor, layout: str, rotary_dim: int, interleaved: bool
) -> torch.Tensor:
    """|x1| + |x2| of the pair each element belongs to (0 past rotary_dim), float64, x's shape."""
    xb = reference.to_bshd(x, layout).double().abs()
    rot = xb[..., :rotary_dim]
    if interleaved:
        s = rot[..., 0::2] + rot[..., 1::2]
        m = torch.stack((s, s), dim=-1).flatten(-2)
    else:
        a, b = rot.chunk(2, dim=-1)
        m = torch.cat((a + b, a + b), dim=-1)
    m = torch.cat((m, torch.zeros_like(xb[..., rotary_dim:])), dim=-1)
    return reference.from_bshd(m, layout)


# The kernel's cos/sin are within 3 float32 ulps (u = 2**-24) of the exact values times the attention
# factor: the angle rounds once or twice (<= 1.5 u), the polynomials add about 1 u, the factor 0.5 u
# (measured: 1.6 u at factor 1, 2.9 u at 1.2, over positions up to 2**31). With the rotation's 2 u of
# arithmetic: (2 + 3 * 1.2) / 2 < 3 times the table bound of assert_rotary_close.
FREQS_TABLE_BOUND = 3.0


def assert_rotary_close(
    out: torch.Tensor,
    ref64: torch.Tensor,
    x: torch.Tensor,
    *,
    layout: str,
    rotary_dim: int,
    interleaved: bool,
    table_bound: float = 1.0,
) -> None:
    """``out`` equals the float64 rotation ``ref64`` of input ``x`` within the rounding of out's dtype.

    Allowed error per element: the float32 (float64 for float64 data) arithmetic bound 2u * table_bound *
    (|x1| + |x2|), plus half an ulp of out's dtype at the true value: one correct rounding of a float32
    result. The pass-through tail must be bit-exact. NaN must match NaN.
    """
    assert out.shape == ref64.shape and out.dtype == x.dtype
    arith = _ARITH_EPS.get(out.dtype, 2.0**-24)
    mag = pair_magnitude(x, layout, rotary_dim, interleaved) * table_bound
    slop = 2 * arith * mag
    tol = slop + 0.5 * ulp(ref64.abs() + slop, out.dtype)
    got = out.double()
    nan_ref = ref64.isnan()
    assert torch.equal(got.isnan(), nan_ref), "NaN pattern differs from the reference"
    err = (got - ref64).abs().masked_fill(nan_ref, 0)
    worst = (err / tol.masked_fill(nan_ref, 1)).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"max error {err.max().item():.3e} is {worst:.2f}x the {out.dtype} tolerance"
    ob, xb = reference.to_bshd(out, layout), reference.to_bshd(x, layout)
    assert torch.equal(ob[..., rotary_dim:], xb[..., rotary_dim:]), "pass-through dims changed"


def ref64(q, k, cos, sin, **kw):
    """The float64 oracle: exact rotation of the given inputs by the given tables."""
    kw.pop("inplace", None)
    return reference.apply_rotary(
        q, k, cos, sin, compute_dtype=torch.float64, out_dtype=torch.float64, **kw
    )


def check_against_reference(q, k, cos, sin, *, layout, inplace=False, table_bound=1.0, apply=None, **kw):
    """Run ``apply`` (default :func:`rope_triton.apply_rotary`), compare with the float64 oracle, and check
    input handling (untouched/aliased). ``table_bound``: see assert_rotary_close (2 for split tables)."""
    import rope_triton

    apply = apply or rope_triton.apply_rotary
    q0, k0 = q.clone(), (k.clone() if k is not None else None)
    rq, rk = ref64(q0, k0, cos, sin, layout=layout, **kw)
    q_out, k_out = apply(q, k, cos, sin, layout=layout, inplace=inplace, **kw)
    rotary_dim = kw.get("rotary_dim") or 2 * (cos if cos is not None else kw["freqs"]).shape[-1]
    interleaved = kw.get("interleaved", False)
    close = dict(layout=layout, rotary_dim=rotary_dim, interleaved=interleaved, table_bound=table_bound)
    assert_rotary_close(q_out, rq, q0, **close)
    if k is None:
        assert k_out is None
    else:
        assert_rotary_close(k_out, rk, k0, **close)
    if inplace:
        assert q_out is q and (k is None or k_out is k)
    else:
        assert torch.equal(q, q0) and (k is None or torch.equal(k, k0)), "out-of-place changed an input"
        assert q_out.data_ptr() != q.data_ptr()
    return q_out, k_out


def assert_as_accurate(ours, base, ref, what: str, *, max_ratio=2.0, rms_ratio=None, scale=None):
    """``ours`` and ``base`` compute the same thing in the same dtype, rounding the rotary step
    differently (ours: once, in float32; a model library's: often in the activations' dtype). Against the
    float64 ``ref``, the whole computation's rounding error dominates and is about the same size in both:
    ours may not exceed ``max_ratio`` times base's (``rms_ratio`` for the RMS), plus 4 units of the
    dtype's rounding at ``scale`` (default: ref's magnitude) for the case where base is exact by chance.
    A gradient that is zero in exact arithmetic (a key bias under softmax) is rounding noise of the
    terms that cancel in it: pass the magnitude of the model's gradients as ``scale`` there."""
    ref = ref.double()
    floor = 4 * torch.finfo(ours.dtype).eps / 2 * (ref.abs().max().item() if scale is None else scale)
    e_ours, e_base = (ours.double() - ref).abs(), (base.double() - ref).abs()
    assert e_ours.max() <= max_ratio * e_base.max() + floor, (
        f"{what}: max error {e_ours.max():.3e} vs the unpatched model's {e_base.max():.3e}"
    )
    if rms_ratio is not None:
        rms_ours, rms_base = e_ours.pow(2).mean().sqrt(), e_base.pow(2).mean().sqrt()
        assert rms_ours <= rms_ratio * rms_base + floor, f"{what}: RMS error {rms_ours:.3e} vs {rms_base:.3e}"
