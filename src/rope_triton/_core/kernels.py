"""The Triton kernel: rotate q and k in one launch.

Each program rotates one chunk of heads of a block of tokens of q or of k. ``PROGRAM`` (chosen by
:func:`rope_triton._core.launch.config`) says in which order the programs go and how many tokens and heads
each takes. Every tensor is a strided (batch, seq, head, dim) view with dim stride 1; ``thd`` is batch 1.
Index arithmetic is int64, so tensors past 2**31 elements are safe. The backward pass is the same kernel
with the angles' sign flipped (``ANGLES[2]``: the inverse of a rotation is the rotation by -theta).

The angles of a token come from one of three sources (``ANGLES[0]``), each a helper below: rows of cos/sin
tables (:func:`_table_rows`), split tables whose rows are combined by the angle-addition formulas
(:func:`_split_rows`), or a fixed-point frequency table from which cos/sin are computed (:func:`_computed`).
A position outside what the source covers is never read: its cos/sin are NaN, so the token comes out NaN
rather than silently unrotated.
"""

import math
import os

import triton
import triton.language as tl

from ..angles.fixed_point import FREQ_AXIS_ROW, FREQ_CHUNK_BITS, FREQ_CHUNKS, FREQ_FRAC_BITS

# PROGRAM[0], the order of the programs in the grid.
ORDER_TOKENS = 0  # the q and k chunks of a token block side by side
ORDER_Q_FIRST = 1  # every q program, then every k program, each tensor with its own block shape
ORDER_DECODE = 2  # as ORDER_TOKENS, but q/k loads are issued before the position and its angles

# POS_MODE[0]: where a token's position comes from. POS_MODE[1]: its axes (0: one position per token; n:
# multi-axis positions (n, ...) read with POS_TOKENS or POS_SHARED, each pair by its axis). POS_MODE[2:4]:
# (cp_size, cp_rank) of zigzag context-parallel sharding, (1, 0) for none. POS_MODE[4]: "thd", at least
# ceil(log2(n_seqs)) steps of the binary search that finds a token's sequence in cu_seqlens.
POS_OFFSET = 0  # index in its sequence + the scalar ``offset``
POS_OFFSETS = 1  # index in its sequence + POS[sequence] (per-sequence offsets)
POS_TOKENS = 2  # POS[token]: explicit positions, (batch, seq) contiguous or (total_tokens,)
POS_SHARED = 3  # POS[index in sequence]: one row of explicit positions for the whole batch
# (the kernel reads module globals only as constexprs)
_TOKENS, _Q_FIRST = tl.constexpr(ORDER_TOKENS), tl.constexpr(ORDER_Q_FIRST)
_DECODE = tl.constexpr(ORDER_DECODE)
_OFFSETS = tl.constexpr(POS_OFFSETS)
_TOKEN_POS, _SHARED_POS = tl.constexpr(POS_TOKENS), tl.constexpr(POS_SHARED)

# ANGLES[0]: where a token's cos/sin come from. ANGLES[1]: split tables' low bits. ANGLES[2]: conjugate
# (rotate by -theta: the backward pass).
ANGLES_ROWS = 0  # row ``position`` of cos/sin tables (rows, >= R/2) shared by every sequence
ANGLES_SEQ_ROWS = 1  # per-sequence tables (sequences, rows, >= R/2), table_rows * table_stride apart
ANGLES_SPLIT = 2  # split tables: table_rows >> LO_BITS rows of high bits, then 2**LO_BITS rows of low bits
ANGLES_COMPUTED = 3  # a freq table (SIN None), cos/sin computed; multi-axis where POS_MODE[1] > 0
_SEQ_ROWS, _SPLIT = tl.constexpr(ANGLES_SEQ_ROWS), tl.constexpr(ANGLES_SPLIT)
_COMPUTED = tl.constexpr(ANGLES_COMPUTED)

_AXIS_ROW = tl.constexpr(FREQ_AXIS_ROW)
_CHUNK_BITS = tl.constexpr(FREQ_CHUNK_BITS)
_CHUNK_MASK = tl.constexpr((1 << FREQ_CHUNK_BITS) - 1)
_TURN_MASK = tl.constexpr((1 << FREQ_FRAC_BITS) - 1)  # turns modulo 1, in units of 2**-48
_QUARTER_BITS = tl.constexpr(FREQ_FRAC_BITS - 2)
_EIGHTH = tl.constexpr(1 << (FREQ_FRAC_BITS - 3))
# 2 pi / 2**48 as a float32 pair (hi + lo): turns in units of 2**-48 to radians.
_RAD_HI = tl.constexpr(2.2322359008431457e-14)
_RAD_LO = tl.constexpr(2 * math.pi / 2**FREQ_FRAC_BITS - 2.2322359008431457e-14)
assert FREQ_CHUNKS == 3  # _computed sums three chunks


# Whether the kernel runs in Triton's CPU interpreter (which is decided before triton is imported).
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _to_storage(y, Y):
    """Cast float32 ``y`` to Y's element type, rounding to nearest even."""
    if _INTERPRETED and Y.dtype.element_ty == tl.bfloat16:
        # The interpreter truncates float32 -> bfloat16: round the bits to nearest even first so that the
        # cast is exact. Compiled code rounds correctly.
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    return y.to(Y.dtype.element_ty)


@triton.jit
def _rotate_pair(x1, x2, c, s, CONJUGATE: tl.constexpr):
    """(x1 c - x2 s, x2 c + x1 s); the conjugate rotation flips the signs of the s terms (not of s
    itself: an instruction on a loaded value before the q/k loads are issued would stall them)."""
    if CONJUGATE:
        return x1 * c + x2 * s, x2 * c - x1 * s
    return x1 * c - x2 * s, x2 * c + x1 * s


# ----------------------------------------------------------------------------------------------------------
# Tokens and positions
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _n_tokens(seqlen, n_seqs, LAYOUT: tl.constexpr):
    if LAYOUT == "thd":
        return seqlen
    return n_seqs * seqlen


@triton.jit
def _tokens(blk, n_tokens, seqlen, BLOCK_T: tl.constexpr, LAYOUT: tl.constexpr):
    """Token indices of block ``blk``, which exist, and their (batch, seq) coordinates (thd: batch 0,
    seq = token): where a token's rows are needs no load, unlike its position."""
    tok = blk * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    if LAYOUT == "thd":
        return tok, tok < n_tokens, tl.zeros((BLOCK_T,), dtype=tl.int64), tok
    return tok, tok < n_tokens, tok // seqlen, tok % seqlen


@triton.jit
def _positions(tok, tok_ok, b, s, POS, CU, sizes, LAYOUT: tl.constexpr, POS_MODE: tl.constexpr):
    """Each token's position and its sequence (the batch row, or for ``thd`` the packed sequence, found by
    a branch-free binary search of cu_seqlens: the last i with cu[i] <= token). With context parallelism
    (CP_SIZE > 1) a default position is global: the local sequence is global chunks CP_RANK and
    2 CP_SIZE - 1 - CP_RANK (zigzag); a local sequence of odd length has no such split: -1 (NaN)."""
    seqlen, n_seqs, offset = sizes
    MODE: tl.constexpr = POS_MODE[0]
    CP_SIZE: tl.constexpr = POS_MODE[2]
    CP_RANK: tl.constexpr = POS_MODE[3]
    SEARCH_STEPS: tl.constexpr = POS_MODE[4]
    if LAYOUT == "thd":
        lo = tl.zeros_like(tok)
        hi = lo + (n_seqs - 1)
        for _ in tl.static_range(SEARCH_STEPS):
            active = lo < hi
            mid = (lo + hi + 1) // 2
            start = tl.load(CU + mid, mask=active, other=0).to(tl.int64)
            lo = tl.where(active & (start <= tok), mid, lo)
            hi = tl.where(active & (start > tok), mid - 1, hi)
        seq = lo
        in_seq = tok - tl.load(CU + seq).to(tl.int64)
    else:
        seq = b
        in_seq = s
    if CP_SIZE > 1 and MODE != _TOKEN_POS and MODE != _SHARED_POS:
        if LAYOUT == "thd":
            local = tl.load(CU + seq + 1, mask=tok_ok, other=0).to(tl.int64) - (tok - in_seq)
        else:
            local = seqlen + tok * 0
        half = local // 2
        early = in_seq < half
        in_seq = tl.where(early, CP_RANK * half + in_seq, (2 * CP_SIZE - 1 - CP_RANK) * half + in_seq - half)
        split = local % 2 == 0
    if MODE == _TOKEN_POS:
        pos = tl.load(POS + b * seqlen + s, mask=tok_ok, other=0).to(tl.int64)
    elif MODE == _SHARED_POS:
        pos = tl.load(POS + s, mask=tok_ok, other=0).to(tl.int64)
    elif MODE == _OFFSETS:
        pos = in_seq + tl.load(POS + seq, mask=tok_ok, other=0).to(tl.int64)
    else:
        pos = in_seq + offset
    if CP_SIZE > 1 and MODE != _TOKEN_POS and MODE != _SHARED_POS:
        pos = tl.where(split, pos, -1)
    return pos, seq


# ----------------------------------------------------------------------------------------------------------
# Angle sources: (cos, sin, cos_lo, sin_lo) of each token, [BLOCK_T, BLOCK_HALF]; cos_lo/sin_lo are only
# used by split tables (the others return cos/sin there). float32, or float64 for float64 data.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _table_rows(COS, SIN, row, ok, j, stride_r, ct: tl.constexpr):
    """Rows ``row`` of cos/sin tables."""
    at = (row * stride_r)[:, None] + j[None, :]
    cos = tl.load(COS + at, mask=ok, other=float("nan"), eviction_policy="evict_last").to(ct)
    sin = tl.load(SIN + at, mask=ok, other=float("nan"), eviction_policy="evict_last").to(ct)
    return cos, sin


@triton.jit
def _split_rows(COS, SIN, table_rows, stride_r, pos, ok, j, LO_BITS: tl.constexpr, ct: tl.constexpr):
    """Split tables: the rows of the position's high bits and, after the table_rows >> LO_BITS high rows,
    of its low bits. Both come from float64 angles, so angle(high) + angle(low) by the angle-addition
    formulas (in :func:`_combine`) gives cos/sin within a few float32 ulps at any position."""
    cos, sin = _table_rows(COS, SIN, pos >> LO_BITS, ok, j, stride_r, ct)
    low = (table_rows >> LO_BITS) + (pos & ((1 << LO_BITS) - 1))
    # (other=0: the high rows already carry the NaN of a position off the tables)
    at = (low * stride_r)[:, None] + j[None, :]
    cos_lo = tl.load(COS + at, mask=ok, other=0.0, eviction_policy="evict_last").to(ct)
    sin_lo = tl.load(SIN + at, mask=ok, other=0.0, eviction_policy="evict_last").to(ct)
    return cos, sin, cos_lo, sin_lo


@triton.jit
def _computed(F, stride_r, p, ok, frac, j, mj, FRACTIONAL: tl.constexpr):
    """cos and sin, times the attention factor, of the angles from a ``freq_table`` (see
    :func:`rope_triton.angles.freq_table`) at int64 positions ``p`` ([BLOCK_T, 1], or one per pair):
    float32, NaN where not ``ok``. ``FRACTIONAL``: ``frac`` holds the fractional part of each position
    (float64).

    The turns modulo 1 are an exact int64 sum of position chunks times the table's fixed-point rows; the
    nearest quarter turn is taken off exactly, and the rest (|angle| <= pi / 4) goes through Taylor
    polynomials (truncation below 2e-9). Integer arithmetic: the same on the GPU and in the interpreter
    (which has no fused multiply-add to build exact products from floats)."""
    f0 = tl.load(F + j, mask=mj, other=0)
    f1 = tl.load(F + stride_r + j, mask=mj, other=0)
    f2 = tl.load(F + 2 * stride_r + j, mask=mj, other=0)
    amp = tl.load(F + 3 * stride_r + j, mask=mj, other=0).to(tl.int32).to(tl.float32, bitcast=True)
    acc = ((p & _CHUNK_MASK) * f0[None, :] + ((p >> _CHUNK_BITS) & _CHUNK_MASK) * f1[None, :]
           + ((p >> (2 * _CHUNK_BITS)) & _CHUNK_MASK) * f2[None, :])
    if FRACTIONAL:
        # A fractional coordinate's turns: frac * (the first row, inv_freq / 2 pi below one turn), in
        # float64 (frac and the row are exact there; the product is off by far less than one unit).
        acc += (frac * f0[None, :].to(tl.float64) + 0.5).to(tl.int64)
    acc = acc & _TURN_MASK
    quarter = (acc + _EIGHTH) >> _QUARTER_BITS
    rest = acc - (quarter << _QUARTER_BITS)  # within 1/8 turn, exact
    # Two exact float32 parts of rest (it has up to 46 bits; each part fits int32), then radians.
    hi = (rest >> 22).to(tl.int32).to(tl.float32) * 4194304.0  # * 2**22, exact
    lo = (rest & 4194303).to(tl.int32).to(tl.float32)
    a = hi * _RAD_HI + (lo * _RAD_HI + hi * _RAD_LO)
    a2 = a * a
    sin_a = a + a * a2 * (-1.0 / 6 + a2 * (1.0 / 120 + a2 * (-1.0 / 5040 + a2 * (1.0 / 362880))))
    cos_a = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24 + a2 * (-1.0 / 720 + a2 * (1.0 / 40320
                                                                          + a2 * (-1.0 / 3628800)))))
    q = quarter & 3
    swap = (q & 1) == 1
    c = tl.where(swap, sin_a, cos_a)
    s = tl.where(swap, cos_a, sin_a)
    c = tl.where((q == 1) | (q == 2), -c, c) * amp[None, :]
    s = tl.where(q >= 2, -s, s) * amp[None, :]
    ok = ok & mj[None, :]
    return tl.where(ok, c, float("nan")), tl.where(ok, s, float("nan"))


@triton.jit
def _pair_positions(POS, row, axis_stride, axis, tok_ok, N_AXES: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_HALF: tl.constexpr):
    """Multi-axis positions: for every token and pair, the position along the pair's axis (``axis``, the
    table's axis row), [BLOCK_T, BLOCK_HALF] int64, -1 (NaN downstream) for an axis id the positions do
    not have; and the fractional parts (float64) of float positions, else 0.0."""
    pos = tl.full((BLOCK_T, BLOCK_HALF), -1, tl.int64)
    FRACTIONAL: tl.constexpr = POS.dtype.element_ty.is_floating()
    if FRACTIONAL:
        frac = tl.zeros((BLOCK_T, BLOCK_HALF), tl.float64)
    else:
        frac = 0.0  # (Triton passes no None inside a tuple)
    for a in tl.static_range(N_AXES):
        v = tl.load(POS + a * axis_stride + row, mask=tok_ok, other=0)
        on_axis = axis[None, :] == a
        if FRACTIONAL:
            v = v.to(tl.float64)
            whole = tl.floor(v)
            pos = tl.where(on_axis, whole.to(tl.int64)[:, None], pos)
            frac = tl.where(on_axis, (v - whole)[:, None], frac)
        else:
            pos = tl.where(on_axis, v.to(tl.int64)[:, None], pos)
    return pos, frac


@triton.jit
def _angles(tok, tok_ok, b, s, POS, CU, sizes, COS, SIN, table, ROTARY_DIM: tl.constexpr,
            LAYOUT: tl.constexpr, POS_MODE: tl.constexpr, ANGLES: tl.constexpr, BLOCK_HALF: tl.constexpr,
            ct: tl.constexpr):
    """The angles of tokens ``tok`` from the call's angle source: (cos, sin, cos_lo, sin_lo), BLOCK_HALF
    pairs wide (NaN past rotary_dim / 2). ``sizes``: (seqlen, n_seqs, offset); ``table``: (table_rows,
    table_stride)."""
    table_rows, stride_r = table
    SOURCE: tl.constexpr = ANGLES[0]
    MODE: tl.constexpr = POS_MODE[0]
    N_AXES: tl.constexpr = POS_MODE[1]
    HALF: tl.constexpr = ROTARY_DIM // 2
    j = tl.arange(0, BLOCK_HALF).to(tl.int64)
    if N_AXES > 0:
        # Multi-axis positions (n_axes, tokens) or (n_axes, seq): each pair turns by its own axis's.
        seqlen, n_seqs, _ = sizes
        zero = tl.program_id(0).to(tl.int64) * 0  # (int64 strides even where a size arrives as 1)
        if MODE == _SHARED_POS:
            row, axis_stride = s, zero + seqlen
        else:
            row, axis_stride = b * seqlen + s, _n_tokens(zero + seqlen, zero + n_seqs, LAYOUT)
        axis = tl.load(COS + _AXIS_ROW * stride_r + j, mask=j < HALF, other=-1)
        p, frac = _pair_positions(POS, row, axis_stride, axis, tok_ok, N_AXES, tok.shape[0], BLOCK_HALF)
        ok = tok_ok[:, None] & (p >= 0) & (p < table_rows)
        cos, sin = _computed(COS, stride_r, p, ok, frac, j, j < HALF, POS.dtype.element_ty.is_floating())
        cos_lo, sin_lo = cos, sin
    else:
        pos, seq = _positions(tok, tok_ok, b, s, POS, CU, sizes, LAYOUT, POS_MODE)
        pos_ok = tok_ok & (pos >= 0) & (pos < table_rows)
        ok = pos_ok[:, None] & (j < HALF)[None, :]
        if SOURCE == _COMPUTED:
            cos, sin = _computed(COS, stride_r, pos[:, None], pos_ok[:, None], 0.0, j, j < HALF, False)
            cos_lo, sin_lo = cos, sin
        elif SOURCE == _SPLIT:
            cos, sin, cos_lo, sin_lo = _split_rows(COS, SIN, table_rows, stride_r, pos, ok, j, ANGLES[1], ct)
        elif SOURCE == _SEQ_ROWS:
            cos, sin = _table_rows(COS, SIN, seq * table_rows + pos, ok, j, stride_r, ct)
            cos_lo, sin_lo = cos, sin
        else:
            cos, sin = _table_rows(COS, SIN, pos, ok, j, stride_r, ct)
            cos_lo, sin_lo = cos, sin
    return cos, sin, cos_lo, sin_lo


@triton.jit
def _combine(cos, sin, cos_lo, sin_lo, ANGLES: tl.constexpr):
    """Split tables: angle(p) = angle(high bits) + angle(low bits). At the point of use, so that the
    multiplies wait for the table loads after the q/k loads have been issued, not before."""
    if ANGLES[0] == _SPLIT:
        return cos * cos_lo - sin * sin_lo, sin * cos_lo + cos * sin_lo
    return cos, sin


# ----------------------------------------------------------------------------------------------------------
# One program: a chunk of heads of a block of tokens of one tensor
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _out_strides(seqlen, n_seqs, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, LAYOUT: tl.constexpr):
    """Strides (batch, seq, head) of an out-of-place output, which the op allocates contiguous in its
    layout: derived here instead of passed. ``seqlen`` and ``n_seqs`` in int64."""
    one = seqlen * 0 + 1  # every stride int64
    if LAYOUT == "bhsd":
        out_b, out_s, out_h = HEADS * seqlen * HEAD_DIM, one * HEAD_DIM, seqlen * HEAD_DIM
    elif LAYOUT == "sbhd":
        out_b, out_s, out_h = one * (HEADS * HEAD_DIM), n_seqs * HEADS * HEAD_DIM, one * HEAD_DIM
    else:  # bshd; thd: batch 0
        out_b, out_s, out_h = seqlen * HEADS * HEAD_DIM, one * (HEADS * HEAD_DIM), one * HEAD_DIM
    return out_b, out_s, out_h


@triton.jit
def _block(blk, chunk, sizes, strides, INPLACE: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
           BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, LAYOUT: tl.constexpr):
    """A program's tokens (and their batch, seq coordinates), heads, which of them exist, and where each
    head starts in the input and in the output (the input itself in place)."""
    seqlen, n_seqs, offset = sizes
    seqlen64 = blk * 0 + seqlen  # int64 even where seqlen arrives as the constant 1
    n_seqs64 = blk * 0 + n_seqs
    tok, tok_ok, b, s = _tokens(blk, _n_tokens(seqlen64, n_seqs64, LAYOUT), seqlen64, BLOCK_T, LAYOUT)
    stride_b, stride_s, stride_h = strides
    if INPLACE:
        out_b, out_s, out_h = strides
    else:
        out_b, out_s, out_h = _out_strides(seqlen64, n_seqs64, HEADS, HEAD_DIM, LAYOUT)
    h = chunk * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
    ok = tok_ok[:, None] & (h < HEADS)[None, :]
    xh = (b * stride_b + s * stride_s)[:, None] + h[None, :] * stride_h
    yh = (b * out_b + s * out_s)[:, None] + h[None, :] * out_h
    return tok, tok_ok, b, s, h, ok, xh, yh


@triton.jit
def _program(X, Y, strides, blk, chunk, POS, CU, sizes, COS, SIN, table, have_angles, SHAPE: tl.constexpr,
             HEADS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, INTERLEAVED: tl.constexpr,
             LAYOUT: tl.constexpr, ANGLES: tl.constexpr, POS_MODE: tl.constexpr, ORDER: tl.constexpr,
             BLOCK_HALF: tl.constexpr, HAVE_ANGLES: tl.constexpr):
    """Rotate heads ``chunk * BLOCK_H ..`` of token block ``blk`` of X into Y (X itself when Y is None).
    HAVE_ANGLES: the tokens' angles are given (loaded before the q/k branch).

    A warp issues in order and waits at the first use of a pending load. _DECODE issues the q/k loads
    before the position (a search or a load) and the angles it addresses: the programs of a decode step
    then wait for one round trip instead of two. Otherwise the angles go first, as one batch of loads (the
    faster order for large calls, whose q/k loads are not on a single program's critical path).

    BLOCK_HALF: pairs per head taken, a power of two >= rotary_dim / 2; wider than that (interleaved pairs,
    out of place, rotary_dim < head_dim): the whole head is one span, its pairs past rotary_dim / 2 pass
    through, and the head moves as one stream of full vectors, as in a copy."""
    HEAD_DIM: tl.constexpr = SHAPE[2]
    ROTARY_DIM: tl.constexpr = SHAPE[3]
    HALF: tl.constexpr = ROTARY_DIM // 2
    WHOLE: tl.constexpr = BLOCK_HALF > triton.next_power_of_2(HALF)
    TAIL: tl.constexpr = 0 if WHOLE else HEAD_DIM - ROTARY_DIM
    SPAN: tl.constexpr = HEAD_DIM if WHOLE else ROTARY_DIM
    ct: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    INPLACE: tl.constexpr = Y is None
    if INPLACE:
        Y = X
    tok, tok_ok, b, s, h, ok, xh, yh = _block(blk, chunk, sizes, strides, INPLACE, HEADS, HEAD_DIM, BLOCK_T,
                                              BLOCK_H, LAYOUT)
    if not HAVE_ANGLES and ORDER != _DECODE:
        cos, sin, cos_lo, sin_lo = _angles(tok, tok_ok, b, s, POS, CU, sizes, COS, SIN, table, ROTARY_DIM,
                                           LAYOUT, POS_MODE, ANGLES, BLOCK_HALF, ct)
    elif HAVE_ANGLES:
        cos, sin, cos_lo, sin_lo = have_angles
    # Loads, in the storage dtype: the (x1, x2) halves, or the interleaved span (split in lanes below).
    if INTERLEAVED:
        jj = tl.arange(0, 2 * BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (jj < SPAN)[None, None, :]
        xa = tl.load(X + xh[:, :, None] + jj[None, None, :], mask=m, other=0.0)
        xb = xa
    else:
        j = tl.arange(0, BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (j < HALF)[None, None, :]
        xa = tl.load(X + xh[:, :, None] + j[None, None, :], mask=m, other=0.0)
        xb = tl.load(X + xh[:, :, None] + (j + HALF)[None, None, :], mask=m, other=0.0)
    if ORDER == _DECODE:
        cos, sin, cos_lo, sin_lo = _angles(tok, tok_ok, b, s, POS, CU, sizes, COS, SIN, table, ROTARY_DIM,
                                           LAYOUT, POS_MODE, ANGLES, BLOCK_HALF, ct)
    c, sn = _combine(cos, sin, cos_lo, sin_lo, ANGLES)
    c = c[:, None, :]
    sn = sn[:, None, :]
    if INTERLEAVED:
        x1, x2 = tl.split(tl.reshape(xa.to(ct), (BLOCK_T, BLOCK_H, BLOCK_HALF, 2)))
        y1, y2 = _rotate_pair(x1, x2, c, sn, ANGLES[2])
        if WHOLE:
            rotated = (tl.arange(0, BLOCK_HALF) < HALF)[None, None, :]
            y1 = tl.where(rotated, y1, x1)
            y2 = tl.where(rotated, y2, x2)
        y = tl.reshape(tl.join(y1, y2), (BLOCK_T, BLOCK_H, 2 * BLOCK_HALF))
        tl.store(Y + yh[:, :, None] + jj[None, None, :], _to_storage(y, Y), mask=m)
    else:
        y1, y2 = _rotate_pair(xa.to(ct), xb.to(ct), c, sn, ANGLES[2])
        tl.store(Y + yh[:, :, None] + j[None, None, :], _to_storage(y1, Y), mask=m)
        tl.store(Y + yh[:, :, None] + (j + HALF)[None, None, :], _to_storage(y2, Y), mask=m)
    if TAIL > 0 and not INPLACE:
        # Out of place, the dims past rotary_dim pass through.
        t = tl.arange(0, triton.next_power_of_2(TAIL)).to(tl.int64)
        mt = ok[:, :, None] & (t < TAIL)[None, None, :]
        tail = tl.load(X + xh[:, :, None] + (ROTARY_DIM + t)[None, None, :], mask=mt)
        tl.store(Y + yh[:, :, None] + (ROTARY_DIM + t)[None, None, :], tail, mask=mt)


# ----------------------------------------------------------------------------------------------------------
# Fused normalization (NORM[0] != 0): a program holds whole heads (their rotated pairs and the dims past
# rotary_dim) and normalizes them before or after the rotation, statistics in float32, one rounding at the
# end. Backward (G given): X is the saved input and G the output gradient, contiguous in the layout; the
# input gradient goes to Y and each program's partial weight gradient to row ``dw_row`` of DW.
# ----------------------------------------------------------------------------------------------------------


@triton.jit
def _head_parts(X, at, ok, HALF: tl.constexpr, ROTARY_DIM: tl.constexpr, TAIL: tl.constexpr,
                INTERLEAVED: tl.constexpr, ct: tl.constexpr):
    """A head's elements at offsets ``at`` ([A, B]) as float: the pairs' first and second elements
    ([A, B, BLOCK_HALF] each) and the dims past rotary_dim ([A, B, tail width]); zeros where not ``ok``."""
    BLOCK_HALF: tl.constexpr = triton.next_power_of_2(HALF)
    if INTERLEAVED:
        jj = tl.arange(0, 2 * BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (jj < 2 * HALF)[None, None, :]
        span = tl.load(X + at[:, :, None] + jj[None, None, :], mask=m, other=0.0).to(ct)
        p1, p2 = tl.split(tl.reshape(span, (at.shape[0], at.shape[1], BLOCK_HALF, 2)))
    else:
        j = tl.arange(0, BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (j < HALF)[None, None, :]
        p1 = tl.load(X + at[:, :, None] + j[None, None, :], mask=m, other=0.0).to(ct)
        p2 = tl.load(X + at[:, :, None] + (j + HALF)[None, None, :], mask=m, other=0.0).to(ct)
    if TAIL > 0:
        t = tl.arange(0, triton.next_power_of_2(TAIL)).to(tl.int64)
        tail = tl.load(X + at[:, :, None] + (ROTARY_DIM + t)[None, None, :],
                       mask=ok[:, :, None] & (t < TAIL)[None, None, :], other=0.0).to(ct)
    else:
        tail = tl.zeros((at.shape[0], at.shape[1], 1), ct)  # nothing past rotary_dim: adds nothing
    return p1, p2, tail


@triton.jit
def _store_head(Y, at, ok, y1, y2, tail, HALF: tl.constexpr, ROTARY_DIM: tl.constexpr, TAIL: tl.constexpr,
                INTERLEAVED: tl.constexpr, TO_STORAGE: tl.constexpr):
    """The inverse of :func:`_head_parts` (rounded to Y's dtype when ``TO_STORAGE``)."""
    BLOCK_HALF: tl.constexpr = triton.next_power_of_2(HALF)
    if INTERLEAVED:
        jj = tl.arange(0, 2 * BLOCK_HALF).to(tl.int64)
        y = tl.reshape(tl.join(y1, y2), (at.shape[0], at.shape[1], 2 * BLOCK_HALF))
        if TO_STORAGE:
            y = _to_storage(y, Y)
        m = ok[:, :, None] & (jj < 2 * HALF)[None, None, :]
        tl.store(Y + at[:, :, None] + jj[None, None, :], y, mask=m)
    else:
        j = tl.arange(0, BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (j < HALF)[None, None, :]
        if TO_STORAGE:
            y1 = _to_storage(y1, Y)
            y2 = _to_storage(y2, Y)
        tl.store(Y + at[:, :, None] + j[None, None, :], y1, mask=m)
        tl.store(Y + at[:, :, None] + (j + HALF)[None, None, :], y2, mask=m)
    if TAIL > 0:
        t = tl.arange(0, triton.next_power_of_2(TAIL)).to(tl.int64)
        if TO_STORAGE:
            tail = _to_storage(tail, Y)
        tl.store(Y + at[:, :, None] + (ROTARY_DIM + t)[None, None, :], tail,
                 mask=ok[:, :, None] & (t < TAIL)[None, None, :])


@triton.jit
def _head_dot(a1, a2, at, b1, b2, bt, PER_TOKEN: tl.constexpr):
    """Sum of a * b over each head ([BT, BH, 1]), or over all heads of each token ([BT, 1, 1])."""
    d = tl.sum(a1 * b1, axis=2) + tl.sum(a2 * b2, axis=2) + tl.sum(at * bt, axis=2)
    if PER_TOKEN:
        d = tl.sum(d, axis=1)[:, None, None]
    else:
        d = d[:, :, None]
    return d


@triton.jit
def _norm_program(X, Y, G, W, strides, blk, chunk, POS, CU, sizes, COS, SIN, table, have_angles,
                  SHAPE: tl.constexpr, HEADS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                  INTERLEAVED: tl.constexpr, LAYOUT: tl.constexpr, ANGLES: tl.constexpr,
                  POS_MODE: tl.constexpr, NORM: tl.constexpr, HAVE_ANGLES: tl.constexpr):
    """Normalize and rotate heads ``chunk * BLOCK_H ..`` of token block ``blk`` of X into Y (X itself when
    Y is None); with G, the backward of that, returning the block's weight-gradient sums over its
    tokens ([BLOCK_H, pairs] for each half of the pairs, [BLOCK_H, tail] past rotary_dim). NORM = (kind,
    eps, after rope, loop): kind 1 normalizes each head over head_dim, kind 2 each token over all its heads
    (the program then holds every head: BLOCK_H >= HEADS). W: the float weight, any offset (Gemma's 1 + w)
    already added, or None."""
    HEAD_DIM: tl.constexpr = SHAPE[2]
    ROTARY_DIM: tl.constexpr = SHAPE[3]
    HALF: tl.constexpr = ROTARY_DIM // 2
    TAIL: tl.constexpr = HEAD_DIM - ROTARY_DIM
    PER_TOKEN: tl.constexpr = NORM[0] == 2
    EPS: tl.constexpr = NORM[1]
    AFTER: tl.constexpr = NORM[2]
    CONJUGATE: tl.constexpr = ANGLES[2]
    N: tl.constexpr = HEADS * HEAD_DIM if PER_TOKEN else HEAD_DIM
    BLOCK_HALF: tl.constexpr = triton.next_power_of_2(HALF)
    ct: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
    INPLACE: tl.constexpr = Y is None
    if INPLACE:
        Y = X
    tok, tok_ok, b, s, h, ok, xh, yh = _block(blk, chunk, sizes, strides, INPLACE, HEADS, HEAD_DIM, BLOCK_T,
                                              BLOCK_H, LAYOUT)
    h_ok = h < HEADS
    if HAVE_ANGLES:
        cos, sin, cos_lo, sin_lo = have_angles
    else:
        cos, sin, cos_lo, sin_lo = _angles(tok, tok_ok, b, s, POS, CU, sizes, COS, SIN, table, ROTARY_DIM,
                                           LAYOUT, POS_MODE, ANGLES, BLOCK_HALF, ct)
    x1, x2, xt = _head_parts(X, xh, ok, HALF, ROTARY_DIM, TAIL, INTERLEAVED, ct)
    if G is not None:
        # The output gradient's loads go out with the input's, before the reductions that need the input:
        # a program then waits for memory once, not twice.
        g1, g2, gt = _head_parts(G, yh, ok, HALF, ROTARY_DIM, TAIL, INTERLEAVED, ct)
    else:
        g1, g2, gt = x1, x2, xt  # (unused)
    # Weights: (head_dim,) shared by the heads, or (heads * head_dim,) per token; 1 without.
    wh = (h * HEAD_DIM if PER_TOKEN else h * 0)[None, :]
    if W is None:
        w1 = 1.0
        w2 = 1.0
        wt = 1.0
    else:
        w1, w2, wt = _head_parts(W, wh, h_ok[None, :], HALF, ROTARY_DIM, TAIL, INTERLEAVED, ct)
    c, sn = _combine(cos, sin, cos_lo, sin_lo, ANGLES)
    # The padding pairs past rotary_dim / 2 have NaN angles: zero them, the sums over the head read them.
    pad = (tl.arange(0, triton.next_power_of_2(HALF)) < HALF)[None, None, :]
    c = tl.where(pad, c[:, None, :], 0.0)
    sn = tl.where(pad, sn[:, None, :], 0.0)
    mean_square = _head_dot(x1, x2, xt, x1, x2, xt, PER_TOKEN) / N + EPS
    if ct == tl.float64:
        r = 1.0 / tl.sqrt(mean_square)
    else:
        r = 1.0 / tl.sqrt_rn(mean_square)  # (the correctly rounded root, not the approximate one)
    if G is None:
        if AFTER:
            z1, z2 = _rotate_pair(x1, x2, c, sn, CONJUGATE)
            y1 = z1 * r * w1
            y2 = z2 * r * w2
        else:
            y1, y2 = _rotate_pair(x1 * r * w1, x2 * r * w2, c, sn, CONJUGATE)
        _store_head(Y, yh, ok, y1, y2, xt * r * wt, HALF, ROTARY_DIM, TAIL, INTERLEAVED, True)
        return 0.0, 0.0, 0.0
    else:
        # y = R(u * w) (or u' * w with u' = R u), u = x r: with v the gradient at u * w (resp. at u'),
        # dw = sum v * u, and the gradient at u is r (v w - u <v w, u> / N) (rotated back after the rope).
        if AFTER:
            u1, u2 = _rotate_pair(x1 * r, x2 * r, c, sn, not CONJUGATE)
            v1 = g1
            v2 = g2
        else:
            u1 = x1 * r
            u2 = x2 * r
            v1, v2 = _rotate_pair(g1, g2, c, sn, CONJUGATE)
        ut = xt * r
        vt = gt
        if W is None:
            d1 = 0.0
            d2 = 0.0
            dt = 0.0
        else:
            # This program's share of the weight gradient, summed over its tokens (tokens past the end
            # have NaN angles: masked out, not multiplied by zero).
            tok3 = tok_ok[:, None, None]
            d1 = tl.sum(tl.where(tok3, v1 * u1, 0.0), axis=0)
            d2 = tl.sum(tl.where(tok3, v2 * u2, 0.0), axis=0)
            dt = tl.sum(tl.where(tok3, vt * ut, 0.0), axis=0)
        v1 = v1 * w1
        v2 = v2 * w2
        vt = vt * wt
        dot = _head_dot(v1, v2, vt, u1, u2, ut, PER_TOKEN) / N
        gx1 = r * (v1 - u1 * dot)
        gx2 = r * (v2 - u2 * dot)
        if AFTER:
            gx1, gx2 = _rotate_pair(gx1, gx2, c, sn, CONJUGATE)
        _store_head(Y, yh, ok, gx1, gx2, r * (vt - ut * dot), HALF, ROTARY_DIM, TAIL, INTERLEAVED, True)
        return d1, d2, dt


@triton.jit
def _norm_blocks(X, Y, G, W, DW, dw_row, strides, group, chunk, POS, CU, sizes, COS, SIN, table, have_angles,
                 SHAPE: tl.constexpr, HEADS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
                 INTERLEAVED: tl.constexpr, LAYOUT: tl.constexpr, ANGLES: tl.constexpr,
                 POS_MODE: tl.constexpr, NORM: tl.constexpr, W_ROW: tl.constexpr, HAVE_ANGLES: tl.constexpr):
    """:func:`_norm_program` on the NORM[3] token blocks of ``group`` in turn; with G and W, their summed
    weight gradient goes to row ``dw_row`` of DW (per head: also summed over the heads). Summing over
    several blocks first divides the partial rows written and summed on the host by that many: a per-token
    weight's row is as large as the program's share of q."""
    LOOP: tl.constexpr = NORM[3]
    HEAD_DIM: tl.constexpr = SHAPE[2]
    ROTARY_DIM: tl.constexpr = SHAPE[3]
    if LOOP == 1:
        d1, d2, dt = _norm_program(X, Y, G, W, strides, group, chunk, POS, CU, sizes, COS, SIN, table,
                                   have_angles, SHAPE, HEADS, BLOCK_T, BLOCK_H, INTERLEAVED, LAYOUT, ANGLES,
                                   POS_MODE, NORM, HAVE_ANGLES)
    else:
        # From zeroed sums, so that the loop body is the one copy of the program in the compiled code.
        ct: tl.constexpr = tl.float64 if X.dtype.element_ty == tl.float64 else tl.float32
        BLOCK_HALF: tl.constexpr = triton.next_power_of_2(ROTARY_DIM // 2)
        TAIL_W: tl.constexpr = triton.next_power_of_2(HEAD_DIM - ROTARY_DIM) if HEAD_DIM > ROTARY_DIM else 1
        d1 = tl.zeros((BLOCK_H, BLOCK_HALF), ct)
        d2 = tl.zeros((BLOCK_H, BLOCK_HALF), ct)
        dt = tl.zeros((BLOCK_H, TAIL_W), ct)
        for i in range(LOOP):
            e1, e2, et = _norm_program(X, Y, G, W, strides, group * LOOP + i, chunk, POS, CU, sizes, COS,
                                       SIN, table, have_angles, SHAPE, HEADS, BLOCK_T, BLOCK_H, INTERLEAVED,
                                       LAYOUT, ANGLES, POS_MODE, NORM, False)
            d1 += e1
            d2 += e2
            dt += et
    if G is not None and W is not None:
        h = chunk * BLOCK_H + tl.arange(0, BLOCK_H).to(tl.int64)
        if NORM[0] == 2:
            _store_head(DW, (dw_row * W_ROW + h * HEAD_DIM)[None, :], (h < HEADS)[None, :], d1[None, :, :],
                        d2[None, :, :], dt[None, :, :], ROTARY_DIM // 2, ROTARY_DIM, HEAD_DIM - ROTARY_DIM,
                        INTERLEAVED, False)
        else:
            at = tl.zeros((1, 1), tl.int64) + dw_row * W_ROW
            _store_head(DW, at, at >= 0, tl.sum(d1, axis=0)[None, None, :], tl.sum(d2, axis=0)[None, None, :],
                        tl.sum(dt, axis=0)[None, None, :], ROTARY_DIM // 2, ROTARY_DIM, HEAD_DIM - ROTARY_DIM,
                        INTERLEAVED, False)


@triton.jit
def rotary_kernel(
    Q, K, Q_OUT, K_OUT,  # q, k in; q, k out (None: in place). K None: q alone
    COS, SIN,  # the angle source (ANGLES[0]): cos/sin tables, or a freq table (SIN None)
    POS, CU,  # positions or per-sequence offsets (POS_MODE); cu_seqlens for "thd"; else None
    seqlen,  # tokens per batch row ("thd": all tokens)
    n_seqs,  # batch ("thd": packed sequences)
    table_rows,  # positions the angle source covers; positions at or past it give NaN
    offset,  # POS_OFFSET: the scalar offset
    q_stride_b, q_stride_s, q_stride_h,
    k_stride_b, k_stride_s, k_stride_h,
    table_stride,  # row stride of the tables (columns are contiguous)
    NORM_W,  # fused norm (NORM[0] != 0): q's weight then k's, float, or None
    NORM_G_Q, NORM_G_K,  # backward of a fused norm: the output gradients (Q, K: the saved inputs), or None
    NORM_DW,  # backward of a fused norm with weights: the partial weight gradients, a row per program
    SHAPE: tl.constexpr,  # (heads of q, heads of k, head_dim, rotary_dim)
    INTERLEAVED: tl.constexpr,  # pairs (2i, 2i + 1); else (i, i + rotary_dim / 2)
    LAYOUT: tl.constexpr,  # "bshd", "bhsd", "sbhd" (out-of-place output strides) or "thd" (packed)
    ANGLES: tl.constexpr,  # (angle source, split tables' low bits, conjugate)
    POS_MODE: tl.constexpr,  # (where positions come from, their axes, cp_size, cp_rank, search steps)
    PROGRAM: tl.constexpr,  # (order, tokens and heads of a q program, tokens and heads of a k program)
    NORM: tl.constexpr,  # (0: none, 1: per head, 2: per token over its heads; eps; after rope; token blocks
    #                      a backward program takes in turn)
):
    HEADS_Q: tl.constexpr = SHAPE[0]
    HEADS_K: tl.constexpr = SHAPE[1]
    HEAD_DIM: tl.constexpr = SHAPE[2]
    ROTARY_DIM: tl.constexpr = SHAPE[3]
    ORDER: tl.constexpr = PROGRAM[0]
    BT_Q: tl.constexpr = PROGRAM[1]
    BH_Q: tl.constexpr = PROGRAM[2]
    BT_K: tl.constexpr = PROGRAM[3]
    BH_K: tl.constexpr = PROGRAM[4]
    LOOP: tl.constexpr = NORM[3]  # (a program's tokens: LOOP blocks of BT)
    q_chunks: tl.constexpr = (HEADS_Q + BH_Q - 1) // BH_Q
    k_chunks: tl.constexpr = (HEADS_K + BH_K - 1) // BH_K if K is not None else 0
    pid = tl.program_id(0).to(tl.int64)
    # (tuples only of what is never None: Triton 3.6 passes no None inside a tuple)
    sizes = (seqlen, n_seqs, offset)
    table = (table_rows, table_stride)
    # (pid * 0: int64 even where seqlen or n_seqs arrive as the constant 1)
    n_tokens = _n_tokens(pid * 0 + seqlen, pid * 0 + n_seqs, LAYOUT)
    if ORDER == _Q_FIRST:
        # Every q program, then every k program, each tensor with its own block shape: the programs in
        # flight then read one tensor and write one, as a copy's do.
        q_div: tl.constexpr = q_chunks if q_chunks > 0 else 1
        k_div: tl.constexpr = k_chunks if k_chunks > 0 else 1
        n_q = ((n_tokens - 1) // (BT_Q * LOOP) + 1) * q_chunks
        is_q = pid < n_q
        blk = tl.where(is_q, pid // q_div, (pid - n_q) // k_div)
        chunk = tl.where(is_q, pid % q_div, (pid - n_q) % k_div + q_chunks)
    else:
        # The chunks of a token block side by side in the grid, q's then k's.
        blk = pid // (q_chunks + k_chunks)
        chunk = pid % (q_chunks + k_chunks)
        is_q = chunk < q_chunks
    # Programs of one block shape load their angles before the q/k branch: the table loads are then issued
    # before the q/k loads (inside a branch the compiler moves the q/k loads first, which is slower).
    SAME: tl.constexpr = BT_K == BT_Q and BH_K == BH_Q and ORDER != _DECODE and LOOP == 1
    # Interleaved pairs out of place with dims past rotary_dim (GPT-J): whole heads (see _program).
    WHOLE: tl.constexpr = INTERLEAVED and ROTARY_DIM < HEAD_DIM and Q_OUT is not None and NORM[0] == 0
    BLOCK_HALF: tl.constexpr = triton.next_power_of_2(HEAD_DIM if WHOLE else ROTARY_DIM) // 2
    if SAME:
        ct: tl.constexpr = tl.float64 if Q.dtype.element_ty == tl.float64 else tl.float32
        tok, tok_ok, b, s = _tokens(blk, n_tokens, pid * 0 + seqlen, BT_Q, LAYOUT)
        have = _angles(tok, tok_ok, b, s, POS, CU, sizes, COS, SIN, table, ROTARY_DIM, LAYOUT, POS_MODE,
                       ANGLES, BLOCK_HALF, ct)
    else:
        have = (0.0, 0.0, 0.0, 0.0)
    q_strides = (q_stride_b, q_stride_s, q_stride_h)
    k_strides = (k_stride_b, k_stride_s, k_stride_h)
    if NORM[0] != 0:
        PER_TOKEN: tl.constexpr = NORM[0] == 2
        # (rows of per-token weight gradients hold the wider tensor's heads)
        W_ROW: tl.constexpr = HEAD_DIM * (max(HEADS_Q, HEADS_K) if PER_TOKEN else 1)
        if NORM_W is None:
            W_K = NORM_W
        else:
            W_K = NORM_W + (HEADS_Q * HEAD_DIM if PER_TOKEN else HEAD_DIM)  # k's weight after q's
        if K is None:
            _norm_blocks(Q, Q_OUT, NORM_G_Q, NORM_W, NORM_DW, pid, q_strides, blk, chunk, POS, CU, sizes, COS,
                         SIN, table, have, SHAPE, HEADS_Q, BT_Q, BH_Q, INTERLEAVED, LAYOUT, ANGLES, POS_MODE,
                         NORM, W_ROW, SAME)
        elif is_q:
            _norm_blocks(Q, Q_OUT, NORM_G_Q, NORM_W, NORM_DW, pid, q_strides, blk, chunk, POS, CU, sizes, COS,
                         SIN, table, have, SHAPE, HEADS_Q, BT_Q, BH_Q, INTERLEAVED, LAYOUT, ANGLES, POS_MODE,
                         NORM, W_ROW, SAME)
        else:
            _norm_blocks(K, K_OUT, NORM_G_K, W_K, NORM_DW, pid, k_strides, blk, chunk - q_chunks, POS, CU,
                         sizes, COS, SIN, table, have, SHAPE, HEADS_K, BT_K, BH_K, INTERLEAVED, LAYOUT,
                         ANGLES, POS_MODE, NORM, W_ROW, SAME)
    elif K is None:
        _program(Q, Q_OUT, q_strides, blk, chunk, POS, CU, sizes, COS, SIN, table, have, SHAPE, HEADS_Q, BT_Q,
                 BH_Q, INTERLEAVED, LAYOUT, ANGLES, POS_MODE, ORDER, BLOCK_HALF, SAME)
    elif is_q:
        _program(Q, Q_OUT, q_strides, blk, chunk, POS, CU, sizes, COS, SIN, table, have, SHAPE, HEADS_Q, BT_Q,
                 BH_Q, INTERLEAVED, LAYOUT, ANGLES, POS_MODE, ORDER, BLOCK_HALF, SAME)
    else:
        _program(K, K_OUT, k_strides, blk, chunk - q_chunks, POS, CU, sizes, COS, SIN, table, have, SHAPE,
                 HEADS_K, BT_K, BH_K, INTERLEAVED, LAYOUT, ANGLES, POS_MODE, ORDER, BLOCK_HALF, SAME)
