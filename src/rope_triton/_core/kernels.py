"""The Triton kernel: rotate q and k in one launch.

A program takes a block of tokens and either one chunk of their heads (``SPLIT_HEADS``: the launcher's
rule, programs of a few KB like the fastest copies; ``QK_MAJOR``: all of q's programs before k's, each
tensor with its own block shape) or all of their q and k heads, chunk after chunk.

Every tensor is addressed as a strided (batch, seq, head, dim) view; ``thd`` is batch 1. All index
arithmetic is int64, so tensors past 2**31 elements and strides past 2**31 are safe. The backward pass
is the same kernel with ``CONJUGATE`` flipped (the inverse of a rotation is the rotation by -theta).

Positions come in three modes (``POS_MODE``): 0, index in sequence + the scalar ``offset``; 1, index in
sequence + a per-sequence tensor offset; 2, explicit per-token positions. A position outside the table
is never read: its cos/sin load as NaN, so the token's output is NaN rather than silently unrotated.
"""

import math

import triton
import triton.language as tl

from ..angles.fixed_point import FREQ_CHUNK_BITS, FREQ_CHUNKS, FREQ_FRAC_BITS

_CHUNK_BITS = tl.constexpr(FREQ_CHUNK_BITS)
_CHUNK_MASK = tl.constexpr((1 << FREQ_CHUNK_BITS) - 1)
_TURN_MASK = tl.constexpr((1 << FREQ_FRAC_BITS) - 1)  # turns modulo 1, in units of 2**-48
_QUARTER_BITS = tl.constexpr(FREQ_FRAC_BITS - 2)
_EIGHTH = tl.constexpr(1 << (FREQ_FRAC_BITS - 3))
# 2 pi / 2**48 as a float32 pair (hi + lo): turns in units of 2**-48 to radians.
_RAD_HI = tl.constexpr(2.2322359008431457e-14)
_RAD_LO = tl.constexpr(2 * math.pi / 2**FREQ_FRAC_BITS - 2.2322359008431457e-14)
assert FREQ_CHUNKS == 3  # _freq_cos_sin sums three chunks


@triton.jit
def _to_storage(y, Y, ROUND_BY_HAND: tl.constexpr):
    """Cast float32 ``y`` to Y's element type, rounding to nearest even."""
    if ROUND_BY_HAND:
        # Triton's CPU interpreter truncates float32 -> bfloat16; round the bits to nearest even first
        # so that the cast is exact. Compiled GPU code rounds correctly and never takes this branch.
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = bits.to(tl.float32, bitcast=True)
    return y.to(Y.dtype.element_ty)


@triton.jit
def _angle_sum(cos, sin, cos_lo, sin_lo, LO_BITS: tl.constexpr):
    """cos and sin of each token's angle; with split tables, angle(p) = angle(high bits) + angle(low bits):
    both tables were built from float64 angles, so the angle-addition formulas give cos/sin within a few
    float32 ulps at any position."""
    if LO_BITS > 0:
        return cos * cos_lo - sin * sin_lo, sin * cos_lo + cos * sin_lo
    return cos, sin


@triton.jit
def _rotate_pair(x1, x2, c, s, CONJUGATE: tl.constexpr):
    """(x1 c - x2 s, x2 c + x1 s); the conjugate rotation flips the signs of the s terms (not of s
    itself: an instruction on a loaded value before the q/k loads are issued would stall them)."""
    if CONJUGATE:
        return x1 * c + x2 * s, x2 * c - x1 * s
    return x1 * c - x2 * s, x2 * c + x1 * s


@triton.jit
def _chunk(x_row, y_row, tok_ok, h_first, n_heads, sx_h, sy_h, BLOCK_H: tl.constexpr):
    """Element offsets of heads h_first .. h_first + BLOCK_H - 1 of each token in X and Y, and which
    (token, head) pairs exist: ([BLOCK_T, BLOCK_H] int64, int64, bool)."""
    h = h_first + tl.arange(0, BLOCK_H).to(tl.int64)
    ok = tok_ok[:, None] & (h < n_heads)[None, :]
    return x_row[:, None] + h[None, :] * sx_h, y_row[:, None] + h[None, :] * sy_h, ok


@triton.jit
def _load_chunk(
    X, xh, ok, sx_d,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, INTERLEAVED: tl.constexpr, EVICT: tl.constexpr,
):
    """Issue one chunk's loads, in the storage dtype: the (x1, x2) halves, or the interleaved span twice
    (split into even/odd lanes by _finish_chunk)."""
    if INTERLEAVED:
        jj = tl.arange(0, 2 * BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (jj < 2 * HALF)[None, None, :]
        xa = tl.load(X + xh[:, :, None] + jj[None, None, :] * sx_d, mask=m, other=0.0, eviction_policy=EVICT)
        xb = xa
    else:
        j = tl.arange(0, BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (j < HALF)[None, None, :]
        xa = tl.load(X + xh[:, :, None] + j[None, None, :] * sx_d, mask=m, other=0.0, eviction_policy=EVICT)
        xb = tl.load(X + xh[:, :, None] + (j + HALF)[None, None, :] * sx_d, mask=m, other=0.0,
                     eviction_policy=EVICT)
    return xa, xb


@triton.jit
def _finish_chunk(
    X, Y, xh, yh, ok, xa, xb,
    cos, sin, cos_lo, sin_lo,  # [BLOCK_T, BLOCK_HALF] as loaded by _tables
    sx_d, sy_d,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, TAIL: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    INTERLEAVED: tl.constexpr, COPY_TAIL: tl.constexpr, ROUND_BY_HAND: tl.constexpr,
    LO_BITS: tl.constexpr, CONJUGATE: tl.constexpr,
):
    """Rotate a chunk loaded by _load_chunk and store it (and copy its pass-through tail)."""
    ca, sa = _angle_sum(cos, sin, cos_lo, sin_lo, LO_BITS)
    c = ca[:, None, :]
    s = sa[:, None, :]
    if INTERLEAVED:
        jj = tl.arange(0, 2 * BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (jj < 2 * HALF)[None, None, :]
        x1, x2 = tl.split(tl.reshape(xa.to(c.dtype), (xa.shape[0], xa.shape[1], BLOCK_HALF, 2)))
        y1, y2 = _rotate_pair(x1, x2, c, s, CONJUGATE)
        y = tl.reshape(tl.join(y1, y2), (xa.shape[0], xa.shape[1], 2 * BLOCK_HALF))
        tl.store(Y + yh[:, :, None] + jj[None, None, :] * sy_d, _to_storage(y, Y, ROUND_BY_HAND), mask=m)
    else:
        j = tl.arange(0, BLOCK_HALF).to(tl.int64)
        m = ok[:, :, None] & (j < HALF)[None, None, :]
        y1, y2 = _rotate_pair(xa.to(c.dtype), xb.to(c.dtype), c, s, CONJUGATE)
        tl.store(Y + yh[:, :, None] + j[None, None, :] * sy_d, _to_storage(y1, Y, ROUND_BY_HAND), mask=m)
        tl.store(Y + yh[:, :, None] + (j + HALF)[None, None, :] * sy_d, _to_storage(y2, Y, ROUND_BY_HAND),
                 mask=m)
    if COPY_TAIL:
        t = tl.arange(0, BLOCK_TAIL).to(tl.int64)
        mt = ok[:, :, None] & (t < TAIL)[None, None, :]
        tail = tl.load(X + xh[:, :, None] + (2 * HALF + t)[None, None, :] * sx_d, mask=mt)
        tl.store(Y + yh[:, :, None] + (2 * HALF + t)[None, None, :] * sy_d, tail, mask=mt)


@triton.jit
def _freq_cos_sin(F, sf_r, sf_c, pos, pos_ok, j, mj):
    """cos and sin, times the attention factor, of each token's angles from a ``freq_table`` (see
    :func:`rope_triton.angles.freq_table`): [BLOCK_T, BLOCK_HALF] float32, NaN where not ``pos_ok``.

    The turns modulo 1 are an exact int64 sum of position chunks times the table's fixed-point rows; the
    nearest quarter turn is taken off exactly, and the rest (|angle| <= pi / 4) goes through Taylor
    polynomials (truncation below 2e-9). Integer arithmetic: the same on the GPU and in the interpreter
    (which has no fused multiply-add to build exact products from floats)."""
    f0 = tl.load(F + j * sf_c, mask=mj, other=0)
    f1 = tl.load(F + sf_r + j * sf_c, mask=mj, other=0)
    f2 = tl.load(F + 2 * sf_r + j * sf_c, mask=mj, other=0)
    amp = tl.load(F + 3 * sf_r + j * sf_c, mask=mj, other=0).to(tl.int32).to(tl.float32, bitcast=True)
    p = pos[:, None]
    acc = ((p & _CHUNK_MASK) * f0[None, :] + ((p >> _CHUNK_BITS) & _CHUNK_MASK) * f1[None, :]
           + ((p >> (2 * _CHUNK_BITS)) & _CHUNK_MASK) * f2[None, :])
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
    ok = pos_ok[:, None] & mj[None, :]
    return tl.where(ok, c, float("nan")), tl.where(ok, s, float("nan"))


@triton.jit
def _tables(
    tok, tok_ok, b, s, COS, SIN, COS_LO, SIN_LO, POS, CU, n_seqs, table_rows, offset,
    scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c, slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_T: tl.constexpr, POS_MODE: tl.constexpr,
    LO_BITS: tl.constexpr, VARLEN: tl.constexpr, SEARCH_STEPS: tl.constexpr, TABLE_EVICT: tl.constexpr,
    FP64: tl.constexpr, FREQS: tl.constexpr, TABLE_BATCH: tl.constexpr,
):
    """Each token's position and its table rows: (cos, sin, cos_lo, sin_lo), [BLOCK_T, BLOCK_HALF] in
    float32 (float64 for float64 data); cos/sin NaN for positions off the table; without split tables
    cos_lo/sin_lo are cos/sin (unused). FREQS: computed from a freq_table in COS instead of read."""
    if VARLEN:
        # Sequence of each token: the last i with cu[i] <= token, by a branch-free binary search.
        lo = tl.zeros((BLOCK_T,), dtype=tl.int64)
        hi = tl.zeros((BLOCK_T,), dtype=tl.int64) + (n_seqs - 1)
        for _ in tl.static_range(SEARCH_STEPS):
            active = lo < hi
            mid = (lo + hi + 1) // 2
            start = tl.load(CU + mid, mask=active, other=0).to(tl.int64)
            go_right = active & (start <= tok)
            lo = tl.where(go_right, mid, lo)
            hi = tl.where(active & (start > tok), mid - 1, hi)
        seq_id = lo
        in_seq = tok - tl.load(CU + seq_id).to(tl.int64)
    else:
        seq_id = b
        in_seq = s
    if POS_MODE == 2:
        if VARLEN:
            pos = tl.load(POS + tok * spos_s, mask=tok_ok, other=0).to(tl.int64)
        else:
            pos = tl.load(POS + b * spos_b + s * spos_s, mask=tok_ok, other=0).to(tl.int64)
    elif POS_MODE == 1:
        pos = in_seq + tl.load(POS + seq_id * spos_b, mask=tok_ok, other=0).to(tl.int64)
    else:
        pos = in_seq + offset
    pos_ok = tok_ok & (pos >= 0) & (pos < table_rows)
    j = tl.arange(0, BLOCK_HALF).to(tl.int64)
    mc = pos_ok[:, None] & (j < HALF)[None, :]
    # float32 math (float64 for float64 data): never the storage dtype of bf16/fp16 inputs.
    ct: tl.constexpr = tl.float64 if FP64 else tl.float32
    if FREQS:
        cos, sin = _freq_cos_sin(COS, scos_r, scos_c, pos, pos_ok, j, j < HALF)
        return cos, sin, cos, sin
    row = pos >> LO_BITS
    if TABLE_BATCH:
        # Per-sequence tables: each batch row (thd: sequence) reads its own (cos, sin); stride 0 broadcasts.
        cos_row = seq_id * scos_b + row * scos_r
        sin_row = seq_id * ssin_b + row * ssin_r
    else:
        cos_row = row * scos_r
        sin_row = row * ssin_r
    cos = tl.load(COS + cos_row[:, None] + j[None, :] * scos_c, mask=mc, other=float("nan"),
                  eviction_policy=TABLE_EVICT).to(ct)
    sin = tl.load(SIN + sin_row[:, None] + j[None, :] * ssin_c, mask=mc, other=float("nan"),
                  eviction_policy=TABLE_EVICT).to(ct)
    if LO_BITS > 0:
        low = pos & ((1 << LO_BITS) - 1)
        cl = tl.load(COS_LO + low[:, None] * slcos_r + j[None, :] * slcos_c, mask=mc, other=0.0,
                     eviction_policy=TABLE_EVICT).to(ct)
        sl = tl.load(SIN_LO + low[:, None] * slsin_r + j[None, :] * slsin_c, mask=mc, other=0.0,
                     eviction_policy=TABLE_EVICT).to(ct)
    else:
        cl = cos
        sl = sin
    return cos, sin, cl, sl


@triton.jit
def _tokens(blk, n_tokens, seqlen, BLOCK_T: tl.constexpr, VARLEN: tl.constexpr):
    """Token indices of block ``blk``, which exist, and their (batch, seq) coordinates (thd: batch 0, seq =
    token): where each token's rows are needs no load, unlike its position."""
    tok = blk.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T).to(tl.int64)
    if VARLEN:
        return tok, tok < n_tokens, tl.zeros((BLOCK_T,), dtype=tl.int64), tok
    return tok, tok < n_tokens, tok // seqlen, tok % seqlen


@triton.jit
def _split_program(
    X, Y, blk, chunk, n_heads, sx_b, sx_s, sx_h, sx_d, sy_b, sy_s, sy_h, sy_d,
    COS, SIN, COS_LO, SIN_LO, POS, CU, n_tokens, seqlen, n_seqs, table_rows, offset,
    scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c, slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
    HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, TAIL: tl.constexpr, BLOCK_TAIL: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, INTERLEAVED: tl.constexpr, CONJUGATE: tl.constexpr,
    COPY_TAIL: tl.constexpr, POS_MODE: tl.constexpr, LO_BITS: tl.constexpr, VARLEN: tl.constexpr,
    SEARCH_STEPS: tl.constexpr, ROUND_BY_HAND: tl.constexpr, EVICT: tl.constexpr, TABLE_EVICT: tl.constexpr,
    LOADS_FIRST: tl.constexpr, FREQS: tl.constexpr, TABLE_BATCH: tl.constexpr,
    cos, sin, cl, sl, HAVE_TABLES: tl.constexpr,
):
    """Rotate heads chunk * BLOCK_H .. + BLOCK_H - 1 of token block ``blk`` of one tensor (X into Y);
    HAVE_TABLES: with the tokens' (cos, sin, cos_lo, sin_lo) as given (loaded before the q/k branch).

    A warp issues in order and waits at the first use of a pending load. LOADS_FIRST issues the q/k loads
    before the position (a search or a load) and the table rows it addresses: the programs of a decode step
    then wait for one round trip instead of two. Otherwise the table rows go first, as one batch of loads:
    measured best for the dense shapes (loads first splits them around the first multiplies there,
    -0.3-0.6 points; NOTES.md v0.6)."""
    FP64: tl.constexpr = X.dtype.element_ty == tl.float64
    tok, tok_ok, b, s = _tokens(blk, n_tokens, seqlen, BLOCK_T, VARLEN)
    xh, yh, ok = _chunk(b * sx_b + s * sx_s, b * sy_b + s * sy_s, tok_ok, chunk * BLOCK_H, n_heads,
                        sx_h, sy_h, BLOCK_H)
    if not LOADS_FIRST and not HAVE_TABLES:
        cos, sin, cl, sl = _tables(
            tok, tok_ok, b, s, COS, SIN, COS_LO, SIN_LO, POS, CU, n_seqs, table_rows, offset,
            scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
            slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
            HALF, BLOCK_HALF, BLOCK_T, POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, TABLE_EVICT, FP64, FREQS,
            TABLE_BATCH,
        )
    xa, xb = _load_chunk(X, xh, ok, sx_d, HALF, BLOCK_HALF, INTERLEAVED, EVICT)
    if LOADS_FIRST:
        cos, sin, cl, sl = _tables(
            tok, tok_ok, b, s, COS, SIN, COS_LO, SIN_LO, POS, CU, n_seqs, table_rows, offset,
            scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
            slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
            HALF, BLOCK_HALF, BLOCK_T, POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, TABLE_EVICT, FP64, FREQS,
            TABLE_BATCH,
        )
    _finish_chunk(X, Y, xh, yh, ok, xa, xb, cos, sin, cl, sl, sx_d, sy_d, HALF, BLOCK_HALF, TAIL, BLOCK_TAIL,
                  INTERLEAVED, COPY_TAIL, ROUND_BY_HAND, LO_BITS, CONJUGATE)


@triton.jit
def rotary_kernel(
    XQ, XK, YQ, YK,  # q, k in; q, k out (out may be in: in place). XK/YK unused without HAS_K
    COS, SIN,  # tables (rows, >= HALF), any strides; with LO_BITS, the tables of the high position bits
    COS_LO, SIN_LO,  # with LO_BITS: tables (2**LO_BITS, >= HALF) of the low position bits
    POS,  # positions (mode 2) or per-sequence offsets (mode 1); unused in mode 0
    CU,  # cu_seqlens (n_seqs + 1,), only with VARLEN
    n_tokens,  # batch * seqlen (thd: total tokens)
    seqlen,  # tokens per batch row (thd: total tokens)
    n_seqs,  # thd: number of packed sequences
    table_rows,  # positions the tables cover; positions at or past it read NaN
    offset,  # scalar position offset (mode 0)
    sxq_b, sxq_s, sxq_h, sxq_d,
    sxk_b, sxk_s, sxk_h, sxk_d,
    syq_b, syq_s, syq_h, syq_d,
    syk_b, syk_s, syk_h, syk_d,
    scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,  # (sequence, row, column); sequence only with TABLE_BATCH
    slcos_r, slcos_c, slsin_r, slsin_c,
    spos_b, spos_s,  # POS strides: (batch, seq) for positions, (seq,) for offsets in spos_b
    HEADS_Q: tl.constexpr,
    HEADS_K: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    TAIL: tl.constexpr,
    BLOCK_TAIL: tl.constexpr,
    BLOCK_T: tl.constexpr,  # tokens per program
    BLOCK_H: tl.constexpr,  # heads per inner step
    INTERLEAVED: tl.constexpr,
    CONJUGATE: tl.constexpr,
    HAS_K: tl.constexpr,
    COPY_TAIL: tl.constexpr,
    POS_MODE: tl.constexpr,
    LO_BITS: tl.constexpr,  # 0: one table row per position; else split tables (exact angles, small)
    VARLEN: tl.constexpr,
    SEARCH_STEPS: tl.constexpr,  # >= ceil(log2(n_seqs)): binary-search steps over cu_seqlens
    ROUND_BY_HAND: tl.constexpr,  # bfloat16 output under the CPU interpreter (see _to_storage)
    EVICT: tl.constexpr = "",
    SPLIT_HEADS: tl.constexpr = False,  # one program per (token block, chunk of BLOCK_H heads)
    TABLE_EVICT: tl.constexpr = "",  # eviction hint for cos/sin loads ("" or "evict_last": reused)
    LOADS_FIRST: tl.constexpr = False,  # SPLIT_HEADS: q/k loads before the position and table loads
    FREQS: tl.constexpr = False,  # COS is a freq_table: cos/sin computed, not read (SIN unused)
    QK_MAJOR: tl.constexpr = False,  # SPLIT_HEADS: every q program first, then every k program
    BLOCK_T_K: tl.constexpr = 1,  # QK_MAJOR: tokens and heads of a k program
    BLOCK_H_K: tl.constexpr = 1,
    TABLE_BATCH: tl.constexpr = False,  # COS/SIN per sequence (batch or sequences, rows, >= HALF)
):
    if SPLIT_HEADS:
        # One program per (token block, chunk of heads). QK_MAJOR: every q program, then every k program,
        # each tensor with its own block shape (a k program as many bytes as a q program even when k has
        # fewer heads than a q chunk): the programs in flight then read one tensor and write one, as a
        # copy's do (see _launch.config). Otherwise the chunks of a token block are adjacent in the grid,
        # q's then k's (k's chunks index from q_chunks).
        pid = tl.program_id(0).to(tl.int64)
        bt_k: tl.constexpr = BLOCK_T_K if QK_MAJOR else BLOCK_T
        bh_k: tl.constexpr = BLOCK_H_K if QK_MAJOR else BLOCK_H
        q_chunks: tl.constexpr = (HEADS_Q + BLOCK_H - 1) // BLOCK_H
        k_chunks: tl.constexpr = (HEADS_K + bh_k - 1) // bh_k
        if QK_MAJOR:
            # (divisors of at least 1: a tensor without heads has no programs, but both sides are computed)
            q_div: tl.constexpr = q_chunks if q_chunks > 0 else 1
            k_div: tl.constexpr = k_chunks if k_chunks > 0 else 1
            # q's programs, in int64 (a token count near 2**31 times the chunks; pid * 0 makes the int64
            # even where Triton passes n_tokens as a constant 1)
            n_q = (pid * 0 + (n_tokens - 1) // BLOCK_T + 1) * q_chunks
            is_q = pid < n_q
            blk = tl.where(is_q, pid // q_div, (pid - n_q) // k_div)
            chunk = tl.where(is_q, pid % q_div, (pid - n_q) % k_div + q_chunks)
        else:
            blk = pid // (q_chunks + k_chunks)
            chunk = pid % (q_chunks + k_chunks)
            is_q = chunk < q_chunks
        # Same-shaped q and k programs load their table rows before branching: the rows are then issued
        # before the q/k loads (measured best for the dense shapes; inside a branch the compiler moves the
        # q/k loads first, -0.3-0.6 points, NOTES.md v0.6). Otherwise each branch loads its own.
        same: tl.constexpr = bt_k == BLOCK_T and bh_k == BLOCK_H and not LOADS_FIRST
        if same:
            tok, tok_ok, b, s = _tokens(blk, n_tokens, seqlen, BLOCK_T, VARLEN)
            cos, sin, cl, sl = _tables(
                tok, tok_ok, b, s, COS, SIN, COS_LO, SIN_LO, POS, CU, n_seqs, table_rows, offset,
                scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
                slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
                HALF, BLOCK_HALF, BLOCK_T, POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, TABLE_EVICT,
                XQ.dtype.element_ty == tl.float64, FREQS, TABLE_BATCH,
            )
        else:
            cos, sin, cl, sl = 0.0, 0.0, 0.0, 0.0
        if is_q:
            _split_program(
                XQ, YQ, blk, chunk, HEADS_Q, sxq_b, sxq_s, sxq_h, sxq_d, syq_b, syq_s, syq_h, syq_d,
                COS, SIN, COS_LO, SIN_LO, POS, CU, n_tokens, seqlen, n_seqs, table_rows, offset,
                scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
                slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
                HALF, BLOCK_HALF, TAIL, BLOCK_TAIL, BLOCK_T, BLOCK_H, INTERLEAVED, CONJUGATE, COPY_TAIL,
                POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, ROUND_BY_HAND, EVICT, TABLE_EVICT, LOADS_FIRST,
                FREQS, TABLE_BATCH, cos, sin, cl, sl, same,
            )
        else:
            _split_program(
                XK, YK, blk, chunk - q_chunks, HEADS_K,
                sxk_b, sxk_s, sxk_h, sxk_d, syk_b, syk_s, syk_h, syk_d,
                COS, SIN, COS_LO, SIN_LO, POS, CU, n_tokens, seqlen, n_seqs, table_rows, offset,
                scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
                slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
                HALF, BLOCK_HALF, TAIL, BLOCK_TAIL, bt_k, bh_k, INTERLEAVED, CONJUGATE, COPY_TAIL,
                POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, ROUND_BY_HAND, EVICT, TABLE_EVICT, LOADS_FIRST,
                FREQS, TABLE_BATCH, cos, sin, cl, sl, same,
            )
    else:
        # All heads of the block of tokens, chunk after chunk (a launch-rule option): the tables once.
        q_chunks_all: tl.constexpr = (HEADS_Q + BLOCK_H - 1) // BLOCK_H
        k_chunks_all: tl.constexpr = (HEADS_K + BLOCK_H - 1) // BLOCK_H
        FP64: tl.constexpr = XQ.dtype.element_ty == tl.float64
        tok, tok_ok, b, s = _tokens(tl.program_id(0), n_tokens, seqlen, BLOCK_T, VARLEN)
        xq_row, yq_row = b * sxq_b + s * sxq_s, b * syq_b + s * syq_s
        xk_row, yk_row = b * sxk_b + s * sxk_s, b * syk_b + s * syk_s
        cos, sin, cl, sl = _tables(
            tok, tok_ok, b, s, COS, SIN, COS_LO, SIN_LO, POS, CU, n_seqs, table_rows, offset,
            scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c,
            slcos_r, slcos_c, slsin_r, slsin_c, spos_b, spos_s,
            HALF, BLOCK_HALF, BLOCK_T, POS_MODE, LO_BITS, VARLEN, SEARCH_STEPS, TABLE_EVICT, FP64, FREQS,
            TABLE_BATCH,
        )
        for step in range(q_chunks_all):
            xh, yh, ok = _chunk(xq_row, yq_row, tok_ok, step * BLOCK_H, HEADS_Q, sxq_h, syq_h, BLOCK_H)
            xa, xb = _load_chunk(XQ, xh, ok, sxq_d, HALF, BLOCK_HALF, INTERLEAVED, EVICT)
            _finish_chunk(XQ, YQ, xh, yh, ok, xa, xb, cos, sin, cl, sl, sxq_d, syq_d, HALF, BLOCK_HALF,
                          TAIL, BLOCK_TAIL, INTERLEAVED, COPY_TAIL, ROUND_BY_HAND, LO_BITS, CONJUGATE)
        if HAS_K:
            for step in range(k_chunks_all):
                xh, yh, ok = _chunk(xk_row, yk_row, tok_ok, step * BLOCK_H, HEADS_K, sxk_h, syk_h, BLOCK_H)
                xa, xb = _load_chunk(XK, xh, ok, sxk_d, HALF, BLOCK_HALF, INTERLEAVED, EVICT)
                _finish_chunk(XK, YK, xh, yh, ok, xa, xb, cos, sin, cl, sl, sxk_d, syk_d, HALF, BLOCK_HALF,
                              TAIL, BLOCK_TAIL, INTERLEAVED, COPY_TAIL, ROUND_BY_HAND, LO_BITS, CONJUGATE)
