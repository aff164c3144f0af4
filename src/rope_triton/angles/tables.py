"""Angles to what the kernel reads: cos/sin tables, split tables, and the fixed-point frequency table.

Every table is built from float64 angles, so it stays exact at any position. No Triton.
"""

import math
from fractions import Fraction

import torch

from ._args import _as_int, _as_real, _positive_int
from .fixed_point import FREQ_CHUNK_BITS, FREQ_CHUNKS, FREQ_FRAC_BITS, FREQ_ROWS

_F64 = torch.float64


def angles(inv_freq: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotation angles ``positions[..., None] * inv_freq`` in float64.

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, any float dtype (upcast to float64).
    positions : torch.Tensor
        Any shape, integer or float.

    Returns
    -------
    torch.Tensor
        float64, shape ``(*positions.shape, n)``, on ``positions.device``.

    Examples
    --------
    >>> angles(torch.tensor([1.0, 0.5]), torch.arange(3))
    tensor([[0.0000, 0.0000],
            [1.0000, 0.5000],
            [2.0000, 1.0000]], dtype=torch.float64)
    """
    positions = torch.as_tensor(positions)
    inv = inv_freq.to(device=positions.device, dtype=_F64)
    return positions.to(_F64).unsqueeze(-1) * inv


def _cos_sin(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # No `theta % 2 pi` first: float64 cos/sin (CPU and CUDA) reduce their argument
    # exactly, whereas subtracting k * fl(2 pi) adds k * 2.4e-16 of error (3e-12 rad at
    # 7e4 rad), i.e. pre-reduction would make the tables less exact, not more.
    return torch.cos(theta), torch.sin(theta)


def _check_num_positions(num_positions) -> int:
    return _positive_int(num_positions, "num_positions")


def cos_sin_tables(
    inv_freq: torch.Tensor,
    num_positions: int,
    *,
    attention_factor: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full cos/sin tables for positions ``0 .. num_positions - 1``.

    Built from float64 angles, scaled by ``attention_factor`` in float64 and rounded
    to ``dtype`` once, so every entry is the correctly rounded value (up to float64
    error, ~1e-16).

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, as from :func:`inv_freq_and_scale`.
    num_positions : int
        Number of table rows.
    attention_factor : float, default 1.0
        Multiplied into both tables (HF's ``attention_scaling``).
    dtype : torch.dtype, default torch.float32
        Output dtype.
    device : torch.device or str, optional
        Where to build and return the tables; defaults to ``inv_freq.device``.

    Returns
    -------
    cos, sin : torch.Tensor
        Each of shape ``(num_positions, n)`` and dtype ``dtype``.

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(64)
    >>> cos, sin = cos_sin_tables(inv_freq, 4096, attention_factor=scale, dtype=torch.bfloat16)
    >>> cos.shape, cos.dtype
    (torch.Size([4096, 32]), torch.bfloat16)
    """
    num_positions = _check_num_positions(num_positions)
    attention_factor = _as_real(attention_factor, "attention_factor")
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.to(device=device, dtype=_F64).reshape(-1)
    cos = torch.empty(num_positions, inv.numel(), dtype=dtype, device=device)
    sin = torch.empty_like(cos)
    # Chunk rows so the float64 intermediates stay ~32 MB however long the table is.
    rows = max(1, (1 << 22) // max(1, inv.numel()))
    for start in range(0, num_positions, rows):
        stop = min(num_positions, start + rows)
        c, s = _cos_sin(angles(inv, torch.arange(start, stop, device=device)))
        cos[start:stop] = c * attention_factor
        sin[start:stop] = s * attention_factor
    return cos, sin


def default_low_bits(num_positions: int) -> int:
    """The ``low_bits`` for :func:`split_tables` that minimizes total table rows.

    Total rows are ``ceil(num_positions / 2**b) + 2**b``, smallest near ``b =
    log2(num_positions) / 2``; ties go to the smaller ``b`` (smaller low table).

    Parameters
    ----------
    num_positions : int
        Number of positions the tables must cover.

    Returns
    -------
    int

    Examples
    --------
    >>> default_low_bits(2**20)
    10
    """
    n = _check_num_positions(num_positions)
    best_bits, best_rows = 0, n + 1
    for bits in range(1, max(1, (n - 1).bit_length()) + 1):
        rows = -(-n // (1 << bits)) + (1 << bits)
        if rows < best_rows:
            best_bits, best_rows = bits, rows
    return best_bits


def split_tables(
    inv_freq: torch.Tensor,
    num_positions: int,
    *,
    low_bits: int,
    attention_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two small fp32 table pairs whose angle sum gives any position's angle.

    Position ``p = hi * 2**low_bits + lo`` has ``angle(p) = angle_hi(hi) +
    angle_lo(lo)`` with ``angle_hi(hi) = (hi * 2**low_bits) * inv_freq`` and
    ``angle_lo(lo) = lo * inv_freq``, each computed in float64 and rounded once. A
    kernel recombines them with the angle-addition formulas::

        cos = ch * cl - sh * sl
        sin = sh * cl + ch * sl

    where ``ch, sh = cos_hi[hi], sin_hi[hi]`` and ``cl, sl = cos_lo[lo], sin_lo[lo]``.
    Because the float64 angle is exact before rounding, the result is within ~2 fp32
    ulps of the true cos/sin at any position, unlike ``fp32(p) * fp32(inv_freq)``
    whose error grows with ``p``. For 2**20 positions and 64 pairs the four tables
    take 1 MiB instead of 512 MiB for full fp32 cos/sin tables.

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``.
    num_positions : int
        Positions ``0 .. num_positions - 1`` must be covered.
    low_bits : int
        ``0 <= low_bits <= 30``; see :func:`default_low_bits`.
    attention_factor : float, default 1.0
        Multiplied into the hi tables only, so the recombined product carries it once.
    device : torch.device or str, optional
        Defaults to ``inv_freq.device``.

    Returns
    -------
    cos_hi, sin_hi : torch.Tensor
        float32, shape ``(ceil(num_positions / 2**low_bits), n)``.
    cos_lo, sin_lo : torch.Tensor
        float32, shape ``(2**low_bits, n)``.

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(128, base=500000.0)
    >>> ch, sh, cl, sl = split_tables(inv_freq, 2**20, low_bits=default_low_bits(2**20))
    >>> ch.shape, cl.shape
    (torch.Size([1024, 64]), torch.Size([1024, 64]))
    >>> p = 123456; hi, lo = p >> 10, p & 1023
    >>> cos_p = ch[hi] * cl[lo] - sh[hi] * sl[lo]
    """
    num_positions = _check_num_positions(num_positions)
    low_bits = _as_int(low_bits, "low_bits")
    if not 0 <= low_bits <= 30:
        raise ValueError(f"low_bits must be in [0, 30], got {low_bits}")
    attention_factor = _as_real(attention_factor, "attention_factor")
    return _split_tables(inv_freq, num_positions, low_bits, attention_factor, device)


def _split_tables(inv_freq, num_positions, low_bits, attention_factor, device):
    # split_tables past its argument checks: tensor math only, which torch.compile traces also where the
    # attention factor (a float attribute) is symbolic under dynamic shapes.
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.to(device=device, dtype=_F64).reshape(-1)
    block = 1 << low_bits
    num_hi = -(-num_positions // block)

    hi_pos = torch.arange(num_hi, dtype=_F64, device=device) * block
    cos_hi, sin_hi = _cos_sin(angles(inv, hi_pos))
    cos_lo, sin_lo = _cos_sin(angles(inv, torch.arange(block, device=device)))
    f32 = torch.float32
    return (
        (cos_hi * attention_factor).to(f32),
        (sin_hi * attention_factor).to(f32),
        cos_lo.to(f32),
        sin_lo.to(f32),
    )


# 1 / (2 pi) to 2**-190: pi's first 60 digits.
_INV_TWO_PI = 1 / (2 * Fraction("3.14159265358979323846264338327950288419716939937510582097494459"))


def freq_table(
    inv_freq: torch.Tensor,
    *,
    attention_factor: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """What the kernel needs to compute each position's cos/sin itself: no table rows to read.

    ``apply_rotary(q, k, freqs=freq_table(inv_freq))`` rotates as full cos/sin tables do, at any position
    up to 2**31 - 2, without their bytes (float32 tables of a 32k context and 64 pairs are 16 MiB, read on
    every call: 2.5% of long-context traffic; split tables cost extra loads). Row k holds, for each
    frequency f = inv_freq / (2 pi) in turns per position, frac(2**(12 k) f) as an integer multiple of
    2**-48, computed exactly from the float64 ``inv_freq``. The kernel splits a position into 12-bit
    chunks p_k and sums p_k * row_k in int64 (exact), which is the angle's turns modulo 1 to 2**-37, then
    evaluates cos and sin in float32 (within ~2 ulps, against 0.5 for rounded float64 tables).

    Parameters
    ----------
    inv_freq : torch.Tensor
        Shape ``(n,)``, as from :func:`inv_freq_and_scale` (rotary_dim = 2 n).
    attention_factor : float, default 1.0
        Multiplied into cos and sin (HF's ``attention_scaling``).
    device : torch.device or str, optional
        Defaults to ``inv_freq.device``.

    Returns
    -------
    torch.Tensor
        int64, shape ``(4, n)``: the three rows of fixed-point turns, then the attention factor's float32
        bits (the kernel reads integers, with no float64 conversion per element).

    Examples
    --------
    >>> inv_freq, scale = inv_freq_and_scale(128, base=500000.0)
    >>> freq_table(inv_freq, attention_factor=scale).shape
    torch.Size([4, 64])
    """
    if not isinstance(inv_freq, torch.Tensor):
        raise TypeError(f"inv_freq: expected a 1-D floating-point tensor, got {type(inv_freq).__name__}")
    if inv_freq.dim() != 1 or not inv_freq.is_floating_point():
        raise TypeError(
            f"inv_freq: expected a 1-D floating-point tensor, got {inv_freq.dtype} of shape "
            f"{tuple(inv_freq.shape)}"
        )
    attention_factor = _as_real(attention_factor, "attention_factor")
    device = inv_freq.device if device is None else torch.device(device)
    inv = inv_freq.detach().to(device="cpu", dtype=_F64).tolist()
    if not all(math.isfinite(v) for v in inv):
        raise ValueError("inv_freq: expected finite values, got NaN or infinity")
    one = 1 << FREQ_FRAC_BITS
    rows = []
    for k in range(FREQ_CHUNKS):
        scale = 1 << (FREQ_CHUNK_BITS * k)
        row = []
        for value in inv:
            # Exact rational arithmetic on the float64 value: turns = inv / (2 pi) needs pi, to 2**-100.
            turns = Fraction(value) * scale * _INV_TWO_PI
            row.append(round((turns - math.floor(turns)) * one) % one)
        rows.append(row)
    # Built on the host whatever default device is in effect, then moved.
    host = torch.device("cpu")
    table = torch.empty(FREQ_ROWS, len(inv), dtype=torch.int64, device=host)
    table[:FREQ_CHUNKS] = torch.tensor(rows, dtype=torch.int64, device=host).reshape(FREQ_CHUNKS, len(inv))
    factor_bits = torch.full((len(inv),), attention_factor, dtype=torch.float32, device=host)
    factor_bits = factor_bits.view(torch.int32)
    table[FREQ_CHUNKS] = factor_bits.to(torch.int64)
    return table.to(device)


def freq_table_factor(freqs: torch.Tensor) -> torch.Tensor:
    """The attention factor of each pair stored in a :func:`freq_table` (float32, ``(n,)``)."""
    return freqs[FREQ_CHUNKS].to(torch.int32).view(torch.float32)


def freq_table_angles(freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The angles, in [0, 2 pi), that a :func:`freq_table` stands for at ``positions`` (float64).

    Parameters
    ----------
    freqs : torch.Tensor
        ``(4, n)`` from :func:`freq_table`.
    positions : torch.Tensor
        Integers in [0, 2**31 - 2], any shape.

    Returns
    -------
    torch.Tensor
        float64, ``(*positions.shape, n)``: 2 pi times the exact sum of the chunk products modulo 1.
    """
    f = freqs[:FREQ_CHUNKS].to(positions.device)
    pos = positions.to(torch.int64).unsqueeze(-1)
    mask = (1 << FREQ_CHUNK_BITS) - 1
    acc = sum(((pos >> (FREQ_CHUNK_BITS * k)) & mask) * f[k] for k in range(FREQ_CHUNKS))
    acc = acc & ((1 << FREQ_FRAC_BITS) - 1)
    # Two float64 parts: acc has 48 bits, float64 53; the scaling by 2**-48 is exact.
    return (2 * math.pi) * (acc.to(_F64) / float(1 << FREQ_FRAC_BITS))
