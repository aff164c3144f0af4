"""Launcher: strides, block sizes and grid for :func:`rope_triton._core.kernels.rotary_kernel`.

Arguments arrive validated (:mod:`rope_triton._core.checks`); this module only maps them onto the kernel.
"""

from __future__ import annotations

import torch
import triton

try:  # the launch-hook registry the replay honours (Triton >= 3.4); without it, no replays
    from triton import knobs
except ImportError:  # pragma: no cover
    knobs = None

from .checks import POS_EXPLICIT, POS_OFFSETS, Problem
from .kernels import rotary_kernel
from .layouts import BSHD_AXES

# q/k bytes one program reads (both halves of BLOCK_T x BLOCK_H heads), one 16-byte vector per thread and
# half: the shape of the fastest flat Triton copies on the H200 (2-4 KB per program at 16 B per thread run at
# 99.7-100.4% of cudaMemcpy, 16 KB programs at 95%; scripts/dev/copy_sweep.py, NOTES.md v0.5). Since the
# q-major order, 2 KB programs (2 warps) beat 4 KB (4 warps) by 0.3-0.8 points on llama2-7b, llama3-8b and
# varlen, level on d64 and float32 (H200, session 7, variants-2k.txt).
_PROGRAM_BYTES = 2048
# With cos/sin computed in the kernel (freqs=): 4 KB programs at half the warps (2-byte data); 2 KB programs
# of one warp ran 2-3 points slower (freqs-probe-qk.txt: long-32k 96.6 vs 98.9%, llama3-8b 94.9 vs 98.0%).
_FREQS_PROGRAM_BYTES = 4096
# At most this many tokens (a decode step), each program takes one token and one chunk of heads of about
# _DECODE_CHUNK_BYTES per half, with _DECODE_WARPS warps: all chunks in flight at once.
_FEW_TOKENS = 256
_THD_TOKENS = 4
_DECODE_CHUNK_BYTES = 1024
_DECODE_WARPS = 4


# Computing cos/sin in the kernel (freqs=) costs about 1.3 points of a same-bytes copy on large shapes with
# 128-wide rotations; reading table rows costs about their share of the bytes moved when nothing reuses them
# from the L2 (H200, session 5: llama3-8b, rows 0.6% of the bytes, tables 97.7% / freqs 97.0%; long-32k,
# rows 2.5% read once, tables 96.7% / freqs 97.9%). Break-even near a 1.3% share. Narrower rotations pay
# more (d64, 32 pairs: freqs 92.8-93.1% against tables 96.8-97.2%, about 4 points): measured at 128 and 64
# only, so narrower ones than 128 take the 64-wide figure.
FREQS_MIN_TABLE_SHARE = 0.013
FREQS_MIN_TABLE_SHARE_NARROW = 0.04


def prefers_freqs(
    n_tokens: int,
    n_sequences: int,
    heads: int,
    head_dim: int,
    rotary_dim: int,
    itemsize: int,
    *,
    split_tables: bool = False,
) -> bool:
    """Whether computing cos/sin in the kernel (``freqs=``) is expected to beat reading float32 table rows.

    Parameters
    ----------
    n_tokens : int
        Tokens of the call (batch x sequence, or packed tokens).
    n_sequences : int
        How many sequences share the same positions (the batch for dense layouts): each table row is read
        from DRAM once and reused from the L2 by the others.
    heads : int
        q heads plus k heads.
    head_dim, rotary_dim : int
    itemsize : int
        Bytes per element of q and k.
    split_tables : bool
        The alternative is split tables (``cos_lo``/``sin_lo``), whose angle sum costs more than computing
        cos/sin (H200: 85.6 / 90.4 / 95.6% of a copy on long-32k / llama3-8b / llama2-7b against 98.4 /
        97.1 / 97.5% for freqs).

    Returns
    -------
    bool
        False for a decode step (at most 256 tokens: latency-bound, and the table path is shorter there:
        5.3 against 6.4 us for batch 64 on the H200); otherwise True against split tables, and against full
        tables when the rows' share of the bytes moved exceeds :data:`FREQS_MIN_TABLE_SHARE`
        (:data:`FREQS_MIN_TABLE_SHARE_NARROW` for rotary_dim < 128).

    Examples
    --------
    >>> prefers_freqs(32768, 1, 40, 128, 128, 2)  # long-32k: rows are 2.5% of the bytes
    True
    >>> prefers_freqs(4 * 4096, 4, 40, 128, 128, 2)  # llama3-8b: rows shared by the 4 sequences
    False
    """
    if n_tokens <= _FEW_TOKENS or heads <= 0 or rotary_dim <= 0:
        return False
    if split_tables:
        return True
    row_bytes = rotary_dim // 2 * 2 * 4  # float32 cos and sin
    token_bytes = 2 * heads * head_dim * itemsize  # read and written
    threshold = FREQS_MIN_TABLE_SHARE if rotary_dim >= 128 else FREQS_MIN_TABLE_SHARE_NARROW
    return row_bytes > threshold * max(1, n_sequences) * token_bytes


def _qk_major(p: Problem, itemsize: int) -> bool:
    """Whether a large call's programs go q first, then k (see :func:`config`). Not for packed sequences
    (varlen 98.4% with a token block's chunks together against 97.2%), nor when table rows that no other
    sequence shares are past FREQS_MIN_TABLE_SHARE of the bytes: the k programs would read them again,
    after the q programs pushed them out of the L2 (long-32k with tables 94.4-94.9% against 95.9-96.9%).
    Rows count as shared by the batch for default positions and positions broadcast over it."""
    if p.layout == "thd" or p.heads_k == 0:  # (q alone: nothing to order; q-major measured level)
        return False
    if p.freqs:
        return True
    shared = p.rows_shared
    row_bytes = p.rotary_dim // 2 * 2 * 4
    token_bytes = 2 * (p.heads_q + p.heads_k) * p.head_dim * itemsize
    return row_bytes <= FREQS_MIN_TABLE_SHARE * shared * token_bytes


def _table_strides(cos: torch.Tensor, sin: torch.Tensor, per_sequence: bool) -> tuple[int, ...]:
    """(scos_b, ssin_b, scos_r, scos_c, ssin_r, ssin_c): the sequence strides of per-sequence tables (0 for a
    first dim of 1: one table for all), then each table's row and column strides."""
    if per_sequence:
        return (
            cos.stride(0) if cos.shape[0] > 1 else 0, sin.stride(0) if sin.shape[0] > 1 else 0,
            cos.stride(1), cos.stride(2), sin.stride(1), sin.stride(2),
        )
    return (0, 0, cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1))


def bshd_strides(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """Strides of ``x`` in (batch, seq, head, dim) order; ``thd`` has batch stride 0."""
    st = x.stride()
    return tuple(0 if axis is None else st[axis] for axis in BSHD_AXES[layout])


def config(p: Problem, itemsize: int = 2) -> dict[str, int]:
    """Block sizes and warps for a problem: a fixed rule measured on the H200, no autotuning
    (deterministic, and no seconds of benchmarking at the first call)."""
    block_half = triton.next_power_of_2(p.rotary_dim // 2)
    heads = max(p.heads_q, p.heads_k)
    n_tokens = p.batch * p.seqlen
    if n_tokens <= _FEW_TOKENS:
        # Decode: one token per program, small chunks of heads (a single wave: latency, not bandwidth).
        return {
            "BLOCK_HALF": block_half,
            "BLOCK_H": min(
                triton.next_power_of_2(heads), max(1, _DECODE_CHUNK_BYTES // (itemsize * block_half))
            ),
            "BLOCK_T": 1,
            "num_warps": _DECODE_WARPS,
            "SPLIT_HEADS": True,
            # q/k loads leave before the position and table loads: one round trip less per program
            # (decode 5.3 -> 5.1 us on the H200; the dense shapes lose 0.3-0.6 points with it).
            "LOADS_FIRST": True,
        }
    # Split programs (one chunk of heads of a block of tokens each) of about _PROGRAM_BYTES, and 16 bytes
    # per thread in each half-tile (freqs=: see _FREQS_PROGRAM_BYTES).
    program_bytes = _FREQS_PROGRAM_BYTES if p.freqs else _PROGRAM_BYTES
    per_program = max(1, program_bytes // (2 * block_half * itemsize))
    # Keep the grid many waves deep when tokens are few.
    waves_cap = max(1, triton.next_power_of_2(max(1, n_tokens // 2048)))

    def dense_block(n_heads: int) -> tuple[int, int]:
        # All heads of a token first, then more tokens (measured best on llama3-8b, llama2-7b, d64, fp32).
        block_h = min(triton.next_power_of_2(max(1, n_heads)), per_program)
        return min(max(1, per_program // block_h), waves_cap), block_h

    cfg = {"BLOCK_HALF": block_half, "SPLIT_HEADS": True}
    if p.layout == "thd" and not p.freqs:
        # Packed sequences: blocks of _THD_TOKENS tokens, fewer heads each (varlen 98.4-98.7% of a copy
        # against 94.7-96.9% for one token and 16 heads; scripts/dev/probe_s3.py --sweep, NOTES.md v0.5).
        # Not with freqs=: each thread would compute the cos/sin of several tokens (varlen 79% at 4 tokens
        # x 4 heads, 99.0% at 1 token x 16 heads, 2 warps; one 32k-token sequence 97.9 vs 98.3%;
        # freqs-probe-thd.txt). At 2 KB: 4 tokens x 2 heads, 98.5 / 98.1% out of / in place against 97.9 /
        # 97.4 for 4 KB programs of 4 x 4 (variants-2k.txt).
        block_t = min(_THD_TOKENS, per_program)
        block_h = min(triton.next_power_of_2(heads), max(1, per_program // block_t))
        cfg.update(BLOCK_T=min(block_t, waves_cap), BLOCK_H=block_h)
        elements = cfg["BLOCK_T"] * block_h
    elif _qk_major(p, itemsize):
        # Every q program, then every k program, k's chunks of heads sized for k: each tensor's programs
        # take its contiguous slices, and the programs in flight read one tensor and write one, as a
        # copy's do (H200, session 6, variants-qk.txt: llama2-7b 97.5 -> 98.4% of a copy out of place and
        # 96.9 -> 98.7% in place, d64 97.3 -> 97.9 / 99.3, fp32 98.1 -> 98.5 / 99.0, llama3-8b 97.6 -> 98.0 /
        # 98.3). k's programs must be full: chunks of q's width on 8 kv heads cost 3-4 points.
        (block_t, block_h), (block_t_k, block_h_k) = dense_block(p.heads_q), dense_block(p.heads_k)
        elements = max(block_t * block_h, block_t_k * block_h_k)
        if p.heads_k < p.heads_q:
            # k narrower than q (GQA, MQA): k's programs take twice the tokens at the same warps, 0.2-1.0
            # points closer to the copy on every GQA / MQA shape measured (H200, session 7,
            # kblock-probe.txt, 4 KB rule: llama3-8b 98.3 -> 98.9% out of place, 4 tokens x 8 heads;
            # long-32k with computed cos/sin 99.1 -> 99.7; 28/4 and 64/8 heads +0.3-0.7; one kv head 16
            # tokens +0.2-0.8; float32 level; variants-2k.txt, 2 KB rule: llama3-8b's 2 x 8 98.9-99.0%,
            # 1 x 8 at 2 warps with 4 x 8 k programs 95.5%). Four times the tokens loses 2-7 points.
            block_t_k *= 2
        cfg.update(BLOCK_T=block_t, BLOCK_H=block_h, QK_MAJOR=True, BLOCK_T_K=block_t_k, BLOCK_H_K=block_h_k)
    else:
        # q's and k's chunks of a token block adjacent in the grid, all of one width.
        block_t, block_h = dense_block(heads)
        cfg.update(BLOCK_T=block_t, BLOCK_H=block_h)
        elements = block_t * block_h
    warps = max(1, min(8, elements * block_half * itemsize // 512))
    if p.freqs and itemsize < 4:
        # cos/sin computed in the kernel: every thread computes the pairs of its own 16-byte slices, and the
        # threads covering other heads repeat them (16x at 4 warps). Half the warps, two vectors per thread
        # and half (SASS per program: 504 warp-instructions at 2 warps, 1536 at 4, tables 720): 97.0 /
        # 97.9% of a copy on llama3-8b / long-32k against 38% at 4 warps (H200, freqs-probe-s5.txt).
        warps = max(1, warps // 2)
    # The cos/sin rows come back for every chunk and batch row: keep them in the L2 (+0.1-0.5 points).
    cfg.update(num_warps=warps, TABLE_EVICT="evict_last")
    return cfg


def launch(
    kernel,
    p: Problem,
    q: torch.Tensor,
    k: torch.Tensor | None,
    q_out: torch.Tensor,
    k_out: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cos_lo: torch.Tensor | None,
    sin_lo: torch.Tensor | None,
    positions: torch.Tensor | None,
    offsets: torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    *,
    interleaved: bool,
    conjugate: bool,
    inplace: bool,
    cfg: dict[str, int] | None = None,
    plans: LaunchPlans | None = None,
    plan_key: tuple | None = None,
):
    """Rotate ``q`` (and ``k``) into ``q_out`` (and ``k_out``), which may be the inputs themselves.

    Returns what the launch returns (the compiled kernel for a direct launch), or None if there was
    nothing to do. ``cfg`` overrides :func:`config` (for tuning scripts). With ``plans`` and ``plan_key``
    the launch is recorded for :meth:`LaunchPlans.replay`.

    ``kernel`` is :data:`rotary_kernel` for eager calls or its ``torch.library.wrap_triton`` wrapper
    inside the registered op (so that torch.compile can trace it).
    """
    n_tokens = p.batch * p.seqlen
    if n_tokens == 0 or p.head_dim == 0 or (p.heads_q == 0 and p.heads_k == 0):
        return None
    cfg = dict(cfg or config(p, q.element_size()))
    half = p.rotary_dim // 2
    tail = p.head_dim - p.rotary_dim
    has_k = k is not None and p.heads_k > 0
    kk, kko = (k, k_out) if has_k else (q, q_out)
    spos_b = spos_s = 0
    if p.pos_mode == POS_EXPLICIT and positions.dim() == 2:
        spos_b = positions.stride(0) if positions.shape[0] > 1 else 0
        spos_s = positions.stride(1)
    elif p.pos_mode == POS_EXPLICIT:
        spos_s = positions.stride(0)
    elif p.pos_mode == POS_OFFSETS:
        spos_b = offsets.stride(0)
    varlen = p.layout == "thd"
    args = [
        *tensor_args(
            q, k if has_k else None, q_out, kko, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens
        ),
        n_tokens, p.seqlen, p.n_seqs,
        p.table_rows, p.offset,
        *bshd_strides(q, p.layout),
        *bshd_strides(kk, p.layout),
        *bshd_strides(q_out, p.layout),
        *bshd_strides(kko, p.layout),
        *_table_strides(cos, sin, p.table_batch),
        *((0, 0, 0, 0) if cos_lo is None else (*cos_lo.stride(), *sin_lo.stride())),
        spos_b, spos_s,
    ]
    consts = {
        "HEADS_Q": p.heads_q,
        "HEADS_K": p.heads_k if has_k else 0,
        "HALF": half,
        "BLOCK_HALF": cfg["BLOCK_HALF"],
        "TAIL": tail,
        "BLOCK_TAIL": triton.next_power_of_2(max(tail, 1)),
        "BLOCK_T": cfg["BLOCK_T"],
        "BLOCK_H": cfg["BLOCK_H"],
        "INTERLEAVED": interleaved,
        "CONJUGATE": conjugate,
        "HAS_K": has_k,
        "COPY_TAIL": tail > 0 and not inplace,
        "POS_MODE": p.pos_mode,
        "LO_BITS": p.lo_bits,
        "VARLEN": varlen,
        "SEARCH_STEPS": max(1, (p.n_seqs - 1).bit_length()) if varlen else 1,
        "ROUND_BY_HAND": q.device.type == "cpu" and q.dtype == torch.bfloat16,
        "EVICT": cfg.pop("EVICT", ""),
        "SPLIT_HEADS": cfg.pop("SPLIT_HEADS", False),
        "TABLE_EVICT": cfg.pop("TABLE_EVICT", ""),
        "LOADS_FIRST": cfg.pop("LOADS_FIRST", False),
        "FREQS": p.freqs,
        "QK_MAJOR": cfg.pop("QK_MAJOR", False),
        "BLOCK_T_K": cfg.pop("BLOCK_T_K", 1),
        "BLOCK_H_K": cfg.pop("BLOCK_H_K", 1),
        "TABLE_BATCH": p.table_batch,
    }
    n_blocks = triton.cdiv(n_tokens, cfg["BLOCK_T"])
    q_chunks = triton.cdiv(p.heads_q, cfg["BLOCK_H"])
    if not consts["SPLIT_HEADS"]:
        grid = (n_blocks, 1)
    elif consts["QK_MAJOR"]:
        k_programs = triton.cdiv(n_tokens, consts["BLOCK_T_K"]) * triton.cdiv(p.heads_k, consts["BLOCK_H_K"])
        grid = (n_blocks * q_chunks + (k_programs if has_k else 0), 1)
    else:
        grid = (n_blocks * (q_chunks + (triton.cdiv(p.heads_k, cfg["BLOCK_H"]) if has_k else 0)), 1)
    compiled = kernel[grid](*args, **consts, num_warps=cfg["num_warps"])
    if plans is not None and plan_key is not None:
        plans.record(plan_key, compiled, grid, args, consts, p.max_offset, p)
    return compiled


def tensor_args(q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens) -> tuple:
    """The kernel's ten pointer arguments; unused ones get a harmless stand-in (never dereferenced)."""
    return (
        q, q if k is None else k, q_out, q_out if k is None else k_out,
        cos, sin,
        cos if cos_lo is None else cos_lo,
        sin if sin_lo is None else sin_lo,
        positions if positions is not None else offsets if offsets is not None else q,
        cu_seqlens if cu_seqlens is not None else q,
    )


def addresses(q, k, q_out, k_out, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens) -> tuple:
    """:func:`tensor_args` as device addresses, 0 for the unused ones. Passing ints spares Triton's launcher
    a ``data_ptr()`` call and a driver query per pointer: the recorded launch already validated them."""
    return (
        q.data_ptr(), 0 if k is None else k.data_ptr(),
        q_out.data_ptr(), 0 if k is None else k_out.data_ptr(),
        cos.data_ptr(), sin.data_ptr(),
        0 if cos_lo is None else cos_lo.data_ptr(),
        0 if sin_lo is None else sin_lo.data_ptr(),
        positions.data_ptr() if positions is not None else offsets.data_ptr() if offsets is not None else 0,
        0 if cu_seqlens is None else cu_seqlens.data_ptr(),
    )


_N_TENSOR_ARGS = 10
_OFFSET_ARG = rotary_kernel.arg_names.index("offset")


def _direct_entry(compiled):
    """The C function behind ``compiled.run`` when calling it directly is what ``run`` would do: Triton
    3.6's launcher with no scratch buffers to allocate (its Python wrapper costs microseconds per call).
    None for other Triton versions, whose entry points take other arguments."""
    run = compiled.run
    if not triton.__version__.startswith("3.6."):
        return None
    needed = (
        "launch", "launch_cooperative_grid", "launch_pdl", "global_scratch_size", "profile_scratch_size"
    )
    if not all(hasattr(run, a) for a in needed) or run.global_scratch_size or run.profile_scratch_size:
        return None
    return run.launch


class Plan:
    """One recorded launch: everything but the pointers and the int offset, ready to launch again."""

    __slots__ = ("compiled", "grid", "head", "tail", "max_offset", "problem", "device", "entry", "fixed")

    def __init__(
        self, compiled, grid: tuple[int, int], values: list, max_offset: float, problem, device: int
    ) -> None:
        self.compiled, self.grid, self.max_offset = compiled, grid, max_offset
        self.problem, self.device = problem, device
        self.head = tuple(values[_N_TENSOR_ARGS:_OFFSET_ARG])
        self.tail = tuple(values[_OFFSET_ARG + 1:])
        self.entry = _direct_entry(compiled)
        run = compiled.run
        self.fixed = (
            (run.launch_cooperative_grid, run.launch_pdl, None, None, compiled.packed_metadata,
             None, None, None)
            if self.entry is not None else None
        )

    def launch(self, pointers: tuple, offset: int) -> None:
        """Launch with new device addresses (see :func:`addresses`) and int offset."""
        compiled, (gx, gy) = self.compiled, self.grid
        stream = torch._C._cuda_getCurrentRawStream(self.device)
        enter = knobs.runtime.launch_enter_hook
        if self.entry is not None and not getattr(enter, "calls", enter):
            self.entry(
                gx, gy, 1, stream, compiled.function, *self.fixed, *pointers, *self.head, offset, *self.tail
            )
            return
        # Launch hooks installed (a profiler) or another Triton: the general entry, hooks honoured.
        values = (*pointers, *self.head, offset, *self.tail)
        leave = knobs.runtime.launch_exit_hook
        if enter is not None and getattr(enter, "calls", True):
            meta = compiled.launch_metadata((gx, gy, 1), stream, *values)
        else:
            meta, enter, leave = None, None, None
        compiled.run(
            gx, gy, 1, stream, compiled.function, compiled.packed_metadata, meta, enter, leave, *values
        )


class LaunchPlans:
    """Replays of compiled launches, keyed by everything that decides one (shapes, strides, dtypes,
    devices, alignment, options): a repeat call skips validation and Triton's argument binding, which
    is what a decode step (microseconds of GPU work) pays for. Only used on CUDA, outside torch.compile;
    an entry is made only after the full path validated and launched the same signature.
    Bounded: when full, it is cleared.
    """

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._plans: dict = {}

    def get(self, key) -> Plan | None:
        return self._plans.get(key)

    def __len__(self) -> int:
        return len(self._plans)

    def record(
        self, key, compiled, grid: tuple[int, int], args: list, consts: dict, max_offset: float, problem
    ) -> None:
        """Remember a launch; ``max_offset`` is the largest int offset the host check allows."""
        if knobs is None or not all(hasattr(compiled, a) for a in ("run", "function", "packed_metadata")):
            return
        if len(self._plans) >= self.capacity:
            self._plans.clear()
        values = dict(zip(rotary_kernel.arg_names, args, strict=False))  # the constexprs come next
        values.update(consts)
        device = args[0].get_device()
        ordered = [values[n] for n in rotary_kernel.arg_names]
        self._plans[key] = Plan(compiled, grid, ordered, max_offset, problem, device)

    @staticmethod
    def problem_if_valid(plan: Plan, offsets) -> Problem | None:
        """The validated problem of ``plan`` if ``offsets`` passes its host check, else None."""
        offset = offsets if type(offsets) is int else 0
        if not 0 <= offset <= plan.max_offset:
            return None
        problem = plan.problem
        # The recorded problem carries the int offset of the call that recorded it.
        return problem if problem.offset == offset else problem._replace(offset=offset)


def signature(
    q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, options: tuple
) -> tuple[tuple | None, list | None]:
    """The plan key of a call (what decides a launch besides the data: see :class:`LaunchPlans`) and the
    device addresses of its tensors (q, k, cos, sin, cos_lo, sin_lo, positions, cu_seqlens, offsets; 0 for
    None), read once for both. ``offsets`` as an int enters the key only through what Triton specializes
    on (== 1, multiple of 16). (None, None) for arguments of unusual types (they take the validating path,
    which explains what is wrong)."""
    # The current device: a recorded launch belongs to its context.
    key = [torch._C._cuda_getDevice(), options]
    pointers = []
    for t in (q, k, cos, sin, cos_lo, sin_lo, positions, cu_seqlens, offsets):
        if t is None:
            key.append(None)
            pointers.append(0)
        elif isinstance(t, torch.Tensor):
            ptr = t.data_ptr()
            # get_device() (an int, -1 for the CPU) is cheaper than building a torch.device.
            key.append((t.shape, t.stride(), t.dtype, t.get_device(), ptr % 16))
            pointers.append(ptr)
        else:
            break
    else:
        return tuple(key), pointers
    if len(pointers) == 8 and type(offsets) is int:
        # The int offset (only the last slot may be one): what Triton specializes an int on, == 1,
        # divisible by 16, and i32 or i64.
        key.append((offsets == 1, offsets % 16 == 0, offsets >= 2**31))
        pointers.append(0)
        return tuple(key), pointers
    return None, None


def plan_key(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, options: tuple) -> tuple | None:
    """The key half of :func:`signature`."""
    return signature(q, k, cos, sin, cos_lo, sin_lo, positions, offsets, cu_seqlens, options)[0]
