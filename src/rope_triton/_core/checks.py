"""Argument checks for :func:`rope_triton.apply_rotary`, done on the host before any kernel runs.

Every error names the argument, what was expected and what was given. Nothing here reads device memory
(no sync): positions held in device tensors are bounded inside the kernel instead.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import FakeTensor

from ..angles.fixed_point import FREQ_AXIS_ROW, FREQ_MAX_POSITION, FREQ_ROWS
from .layouts import BSHD_AXES, LAYOUTS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int32, torch.int64)

# Position modes understood by the kernel and the launcher.
POS_DEFAULT, POS_OFFSETS, POS_EXPLICIT = 0, 1, 2


class Problem(NamedTuple):
    """What the launcher needs besides the tensors, derived once from the arguments."""

    layout: str
    batch: int  # thd: 1
    seqlen: int  # thd: total tokens
    heads_q: int
    heads_k: int
    head_dim: int
    rotary_dim: int
    n_seqs: int  # thd: packed sequences, else batch
    pos_mode: int
    offset: int  # scalar offset (POS_DEFAULT)
    table_rows: int  # positions the tables cover
    lo_bits: int  # split tables: log2 of the low table's rows; 0 for one table
    max_offset: float  # largest scalar offset the tables allow (inf when the host cannot tell)
    freqs: bool = False  # cos is a freq_table (cos/sin computed in the kernel), sin is the same tensor
    # Sequences known to read the same table rows (default positions, or positions broadcast over the
    # batch): each row comes from DRAM once and from the L2 for the others. 1 when unknown.
    rows_shared: int = 1
    # cos/sin given per sequence, (batch or num_seqs, rows, columns): each sequence reads its own rows.
    table_batch: bool = False
    # Multi-axis positions (n_axes, ...) read through the axis row of a multi-axis freq table; 0: one axis.
    n_axes: int = 0
    # Context parallelism: (cp_size, cp_rank) of zigzag-sharded sequences; (1, 0) for none.
    cp: tuple = (1, 0)


def _dim_names(layout: str) -> str:
    # thd has no batch axis; its sequence axis holds the total tokens of the packed batch.
    roles = ("batch", "total_tokens" if layout == "thd" else "seq", "heads", "head_dim")
    pairs = zip(BSHD_AXES[layout], roles, strict=True)
    return "(" + ", ".join(role for _, role in sorted((a, r) for a, r in pairs if a is not None)) + ")"


# Each layout's dims in tensor order, for messages: "(batch, heads, seq, head_dim)" for 'bhsd'.
_DIMS = {layout: _dim_names(layout) for layout in LAYOUTS}


def _shape(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}"


def _bshd_sizes(x: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    shape = x.shape
    return tuple(1 if axis is None else shape[axis] for axis in BSHD_AXES[layout])


def check_tensor(name: str, x: object) -> None:
    """Raise the TypeError naming ``name`` unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")


def _check_qk(name: str, x: object, layout: str) -> None:
    check_tensor(name, x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    rank = 3 if layout == "thd" else 4
    if x.dim() != rank:
        hint = ""
        if x.dim() == 3 and rank == 4:
            hint = (
                ": split a (batch, seq, heads * head_dim) projection into heads first, e.g. "
                "x.unflatten(-1, (heads, head_dim)) is in layout 'bshd'"
            )
        raise ValueError(
            f"{name}: layout {layout!r} expects a {rank}-D tensor {_DIMS[layout]}, got {_shape(x)}{hint}"
        )


def is_int(x: object) -> bool:
    """An int argument: a Python int (not a bool) or, under torch.compile / export with dynamic shapes, a
    SymInt (sizes and the ints derived from them)."""
    return isinstance(x, (int, torch.SymInt)) and not isinstance(x, bool)


def _check_index(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected an int32 or int64 tensor, got {type(t).__name__}")
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}: expected dtype int32 or int64, got {t.dtype}")
    return t


def _check_flags(interleaved, inplace, conjugate) -> None:
    for name, flag in (("interleaved", interleaved), ("inplace", inplace), ("conjugate", conjugate)):
        if not isinstance(flag, (bool, torch.SymBool)):
            raise TypeError(f"{name}: expected a bool, got {type(flag).__name__} {flag!r}")


def _check_layout(layout: object) -> None:
    if type(layout) is not str or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")


def _check_q_and_k(q: object, k: object, layout: str) -> tuple[int, int, int, int, int]:
    """(batch, seqlen, heads_q, heads_k, head_dim); heads_k is 0 without k."""
    _check_qk("q", q, layout)
    batch, seqlen, heads_q, head_dim = _bshd_sizes(q, layout)
    heads_k = 0
    if k is not None:
        _check_qk("k", k, layout)
        if k.dtype != q.dtype:
            raise TypeError(f"k: expected the dtype of q ({q.dtype}), got {k.dtype}")
        kb, ks, heads_k, kd = _bshd_sizes(k, layout)
        for what, a, b in (("batch", batch, kb), ("sequence length", seqlen, ks), ("head_dim", head_dim, kd)):
            if a != b:
                raise ValueError(
                    f"k: expected the {what} of q ({a}) in "
                    f"layout {layout!r}, got {b} ({_shape(k)})"
                )
    return batch, seqlen, heads_q, heads_k, head_dim


def _check_devices(q: torch.Tensor, named: list) -> None:
    # Everything on q's device (a table on another GPU would be an illegal address).
    for name, t in named:
        if isinstance(t, torch.Tensor) and t.device != q.device:
            raise ValueError(f"{name}: expected a tensor on q's device {q.device}, got {t.device}")


def _check_cu_seqlens(cu_seqlens: object, layout: str, batch: int, total_tokens: int) -> int:
    """The number of sequences: packed ones (thd), else the batch."""
    if layout != "thd":
        if cu_seqlens is not None:
            raise ValueError(f"cu_seqlens: only used with layout 'thd', got a tensor with layout {layout!r}")
        return batch
    if cu_seqlens is None:
        raise ValueError("cu_seqlens: layout 'thd' needs cu_seqlens of shape (num_seqs + 1,), got None")
    _check_index("cu_seqlens", cu_seqlens)
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(
            "cu_seqlens: expected shape (num_seqs + 1,) "
            f"with num_seqs >= 1, got {_shape(cu_seqlens)}"
        )
    if cu_seqlens.stride(0) != 1:
        # The kernel's binary search reads the boundaries as consecutive elements.
        raise ValueError(
            f"cu_seqlens: expected consecutive elements (stride 1), got stride {cu_seqlens.stride(0)}: "
            "pass cu_seqlens.contiguous()"
        )
    # Boundaries held on the host cost no device sync to read: out-of-order ones would make positions
    # up. (Device tensors are not read; fake and functional tensors under tracing have no values.)
    on_host = cu_seqlens.device.type == "cpu" and type(cu_seqlens) is torch.Tensor
    if on_host and not torch.compiler.is_compiling():
        _check_host_boundaries(cu_seqlens, total_tokens)
    return cu_seqlens.shape[0] - 1


def _check_host_boundaries(cu_seqlens: torch.Tensor, total_tokens: int) -> None:
    first, last = int(cu_seqlens[0]), int(cu_seqlens[-1])
    if first != 0:
        raise ValueError(f"cu_seqlens: expected 0 as the first boundary, got {first}")
    if last != total_tokens:
        raise ValueError(
            f"cu_seqlens: expected total_tokens = {total_tokens} (dim 0 of q) as the last boundary, "
            f"got {last}"
        )
    drops = (cu_seqlens[1:] < cu_seqlens[:-1]).nonzero()
    if drops.numel():
        i = int(drops[0, 0])
        raise ValueError(
            f"cu_seqlens: expected non-decreasing boundaries, got {int(cu_seqlens[i])} then "
            f"{int(cu_seqlens[i + 1])} (elements {i} and {i + 1})"
        )


def _check_max_seqlen(max_seqlen: object, layout: str) -> None:
    if max_seqlen is not None:
        if not is_int(max_seqlen):
            raise TypeError(f"max_seqlen: expected an int or None, got {type(max_seqlen).__name__}")
        if max_seqlen < 0:
            raise ValueError(f"max_seqlen: expected a non-negative int or None, got {max_seqlen}")
        if layout != "thd":
            raise ValueError(f"max_seqlen: only used with layout 'thd', got it with layout {layout!r}")


def _check_positions_or_offsets(positions, offsets, layout: str, batch: int, seqlen: int, n_seqs: int) -> int:
    """The position mode (POS_*) of valid ``positions`` / ``offsets``."""
    if positions is not None:
        if offsets is not None:
            raise ValueError("offsets: positions and offsets are mutually exclusive, got both")
        _check_index("positions", positions)
        if layout == "thd":
            if tuple(positions.shape) != (seqlen,):
                raise ValueError(
                    "positions: layout 'thd' expects shape (total_tokens,) "
                    f"= ({seqlen},), got {_shape(positions)}"
                )
        elif positions.dim() not in (1, 2) or not _broadcasts(tuple(positions.shape), (batch, seqlen)):
            raise ValueError(
                f"positions: expected shape (batch, seq) = ({batch}, {seqlen}) (or (1, seq), (seq,)), "
                f"got {_shape(positions)}"
            )
        return POS_EXPLICIT
    if isinstance(offsets, torch.Tensor):
        _check_index("offsets", offsets)
        if tuple(offsets.shape) != (n_seqs,):
            what = "(num_seqs,)" if layout == "thd" else "(batch,)"
            raise ValueError(f"offsets: expected shape {what} = ({n_seqs},), got {_shape(offsets)}")
        return POS_OFFSETS
    if offsets is not None:
        if not is_int(offsets):
            raise TypeError(
                "offsets: expected an int, an int tensor "
                f"or None, got {type(offsets).__name__}"
            )
        if offsets < 0:
            raise ValueError(f"offsets: expected a non-negative int, got {offsets}")
    return POS_DEFAULT


# Position axes the kernel unrolls (M-RoPE has 3, video diffusion 3, 2-D vision 2).
MAX_AXES = 8


def _check_axis_positions(positions, offsets, layout: str, batch: int, seqlen: int) -> int:
    """The number of axes of valid multi-axis ``positions``: (n_axes, batch, seq), (n_axes, 1, seq) or
    (n_axes, seq) shared by the batch, (n_axes, total_tokens) for ``thd``; integers, or floats for
    fractional coordinates."""
    if offsets is not None:
        raise ValueError("offsets: positions and offsets are mutually exclusive, got both")
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions: expected a tensor, got {type(positions).__name__}")
    if positions.dtype not in INDEX_DTYPES and not positions.is_floating_point():
        raise TypeError(f"positions: expected an integer or floating-point tensor, got {positions.dtype}")
    if layout == "thd":
        ok, want = positions.dim() == 2 and positions.shape[1] == seqlen, f"(n_axes, total_tokens={seqlen})"
    else:
        ok = (positions.dim() == 3 and positions.shape[1] in (1, batch) and positions.shape[2] == seqlen) or (
            positions.dim() == 2 and positions.shape[1] == seqlen
        )
        want = f"(n_axes, batch={batch}, seq={seqlen}) (or (n_axes, 1, seq), (n_axes, seq))"
    if not ok:
        raise ValueError(
            f"positions: a multi-axis freqs table needs positions with a leading axis dim, {want}, got "
            f"{_shape(positions)}"
        )
    n_axes = positions.shape[0]
    if not 1 <= n_axes <= MAX_AXES:
        raise ValueError(f"positions: expected 1 to {MAX_AXES} axes in dim 0, got {_shape(positions)}")
    return n_axes


def check_call(
    q: torch.Tensor,
    k: torch.Tensor | None,
    *,
    positions: torch.Tensor | None,
    offsets: int | torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    layout: str,
    inplace: bool = False,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> None:
    """The checks of :func:`check` that need no tables, with the same errors: what the modules run before
    they compute anything (lengths, frequencies) from their arguments."""
    _check_flags(False, inplace, False)
    _check_layout(layout)
    batch, seqlen, *_ = _check_q_and_k(q, k, layout)
    named = [("k", k), ("positions", positions), ("cu_seqlens", cu_seqlens)]
    _check_devices(q, named + ([("offsets", offsets)] if isinstance(offsets, torch.Tensor) else []))
    n_seqs = _check_cu_seqlens(cu_seqlens, layout, batch, seqlen)
    _check_max_seqlen(max_seqlen, layout)
    _check_positions_or_offsets(positions, offsets, layout, batch, seqlen, n_seqs)
    _check_context_parallel(cp_size, cp_rank, positions, layout, seqlen, cu_seqlens)


def check(
    q: torch.Tensor,
    k: torch.Tensor | None,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    positions: torch.Tensor | None,
    offsets: int | torch.Tensor | None,
    cu_seqlens: torch.Tensor | None,
    max_seqlen: int | None,
    layout: str,
    rotary_dim: int | None,
    inplace: bool,
    cos_lo: torch.Tensor | None = None,
    sin_lo: torch.Tensor | None = None,
    interleaved: bool = False,
    conjugate: bool = False,
    freqs: bool = False,
    cp_size: int = 1,
    cp_rank: int = 0,
) -> Problem:
    """Validate the arguments of ``apply_rotary`` and derive the :class:`Problem`. With ``freqs``, ``cos``
    is the ``freqs`` argument (a :func:`rope_triton.angles.freq_table`) and ``sin`` the same tensor."""
    _check_flags(interleaved, inplace, conjugate)
    _check_layout(layout)
    batch, seqlen, heads_q, heads_k, head_dim = _check_q_and_k(q, k, layout)

    if freqs:
        _check_freq_table(cos, q, cos_lo)
    tables = [("freqs", cos)] if freqs else [("cos", cos), ("sin", sin)]
    if (cos_lo is None) != (sin_lo is None):
        given, missing = ("cos_lo", "sin_lo") if sin_lo is None else ("sin_lo", "cos_lo")
        raise ValueError(f"{missing}: {given} and {missing} go together, got only {given}")
    if cos_lo is not None:
        tables += [("cos_lo", cos_lo), ("sin_lo", sin_lo)]
    for name, t in tables:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point() and not freqs:  # (a freq table is int64, checked above)
            raise TypeError(f"{name}: expected a floating-point table, got dtype {t.dtype}")
        per_sequence = name in ("cos", "sin") and cos_lo is None
        if t.dim() != 2 and not (per_sequence and t.dim() == 3):
            also = " or 3-D per sequence (batch, num_positions, rotary_dim // 2)" if per_sequence else ""
            raise ValueError(
                f"{name}: expected a 2-D table (num_positions, rotary_dim // 2){also}, got {_shape(t)}"
                + (" (split tables take 2-D cos/sin)" if name in ("cos", "sin") and t.dim() == 3 else "")
            )
    if cos.shape != sin.shape:
        raise ValueError(f"sin: expected the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}")
    lo_bits = 0
    if cos_lo is not None:
        if cos_lo.shape != sin_lo.shape:
            raise ValueError(
                "sin_lo: expected the shape of cos_lo "
                f"{tuple(cos_lo.shape)}, got {tuple(sin_lo.shape)}"
            )
        rows_lo = cos_lo.shape[0]
        if rows_lo < 1 or rows_lo & (rows_lo - 1):
            raise ValueError(f"cos_lo: expected a power-of-two number of rows, got {_shape(cos_lo)}")
        if cos_lo.shape[1] != cos.shape[-1]:
            raise ValueError(
                "cos_lo: expected the width of cos "
                f"({cos.shape[-1]} columns), got {_shape(cos_lo)}"
            )
        lo_bits = rows_lo.bit_length() - 1

    if rotary_dim is None:
        width = cos.shape[-1]
        if 2 * width > head_dim:
            # The caller gave no rotary_dim: the table's width is what is wrong (R/2 columns are read).
            hint = ""
            if not freqs and width <= head_dim and width % 2 == 0:
                hint = (
                    f"; Hugging Face's full-width tables (cat(freqs, freqs), width rotary_dim) are read with "
                    f"rotary_dim={width}"
                )
            raise ValueError(
                f"{tables[0][0]}: expected at most head_dim // 2 = {head_dim // 2} columns, "
                f"got {_shape(cos)} (rotary_dim defaults to twice the width){hint}"
            )
        rotary_dim = 2 * width
    elif not is_int(rotary_dim):
        raise TypeError(f"rotary_dim: expected an int or None, got {type(rotary_dim).__name__}")
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: expected an even int in (0, head_dim={head_dim}], got {rotary_dim}")
    if cos.shape[-1] < rotary_dim // 2:
        raise ValueError(
            f"{tables[0][0]}: expected at least rotary_dim // 2 = {rotary_dim // 2} columns, "
            f"got {_shape(cos)}"
        )

    named = [("k", k), *tables, ("positions", positions), ("cu_seqlens", cu_seqlens)]
    _check_devices(q, named + ([("offsets", offsets)] if isinstance(offsets, torch.Tensor) else []))
    n_seqs = _check_cu_seqlens(cu_seqlens, layout, batch, seqlen)
    _check_max_seqlen(max_seqlen, layout)

    table_batch = cos.dim() == 3
    if table_batch and cos.shape[0] not in (1, n_seqs):
        what = "num_seqs" if layout == "thd" else "batch"
        raise ValueError(
            f"cos: per-sequence tables need a first dim of {what} = {n_seqs} (or 1), got {_shape(cos)}"
        )
    table_rows = FREQ_MAX_POSITION + 1 if freqs else cos.shape[-2] << lo_bits
    n_axes = 0
    if freqs and cos.shape[0] == FREQ_AXIS_ROW + 1 and positions is not None:
        n_axes = _check_axis_positions(positions, offsets, layout, batch, seqlen)
        pos_mode = POS_EXPLICIT
    else:
        pos_mode = _check_positions_or_offsets(positions, offsets, layout, batch, seqlen, n_seqs)
    cp = _check_context_parallel(cp_size, cp_rank, positions, layout, seqlen, cu_seqlens)
    offset = 0
    max_offset = float("inf")
    if pos_mode == POS_DEFAULT:
        offset = 0 if offsets is None else offsets
        longest = seqlen if layout != "thd" else max_seqlen
        if longest is not None:
            longest *= cp[0]  # the global sequence
        if longest:
            max_offset = table_rows - longest
        if longest is not None and longest > 0 and offset + longest > table_rows:
            if freqs:
                raise ValueError(
                    f"offsets: positions up to {offset + longest - 1} (offset {offset} + sequence length "
                    f"{longest}) exceed the largest position freqs support, {FREQ_MAX_POSITION}"
                )
            raise ValueError(
                f"cos: positions up to {offset + longest - 1} (offset {offset} + sequence length {longest}) "
                f"need a table of at least {offset + longest} rows, got {table_rows}"
                + (" (split tables: cos rows x cos_lo rows)" if lo_bits else "")
            )
    # (Dynamo cannot trace the overlap query; under torch.compile the mutation is functionalized anyway.)
    if inplace and not torch.compiler.is_compiling():
        for name, t in (("q", q), ("k", k)):
            if t is not None and torch._debug_has_internal_overlap(t) == 1:
                raise ValueError(
                    f"{name}: inplace=True needs a tensor whose "
                    "elements do not overlap (e.g. not expanded)"
                )
        # The kernel writes q before it reads k: memory in both would be rotated twice.
        if k is not None and k.numel() and q.numel() and _may_share_elements(q, k):
            raise ValueError(
                "k: inplace=True needs q and k in separate memory, got k sharing elements with q "
                f"(q: {_shape(q)}, strides {q.stride()}; k: {_shape(k)}, strides {k.stride()}, "
                f"{k.data_ptr() - q.data_ptr():+d} bytes from q)"
            )
    broadcast = pos_mode == POS_EXPLICIT and not n_axes and (
        positions.dim() == 1 or positions.shape[0] == 1 or positions.stride(0) == 0
    )
    own_rows = table_batch and cos.shape[0] > 1 and (cos.stride(0) != 0 or sin.stride(0) != 0)
    rows_shared = batch if layout != "thd" and (pos_mode == POS_DEFAULT or broadcast) and not own_rows else 1
    return Problem(
        layout, batch, seqlen, heads_q, heads_k, head_dim, rotary_dim, n_seqs, pos_mode, offset, table_rows,
        lo_bits, max_offset, freqs, rows_shared, table_batch, n_axes, cp,
    )


def _check_context_parallel(cp_size, cp_rank, positions, layout, seqlen, cu_seqlens) -> tuple[int, int]:
    if not is_int(cp_size) or cp_size < 1:
        raise ValueError(f"cp_size: expected an int >= 1, got {cp_size!r}")
    if not is_int(cp_rank) or not 0 <= cp_rank < cp_size:
        raise ValueError(f"cp_rank: expected an int in [0, cp_size={cp_size}), got {cp_rank!r}")
    if cp_size == 1:
        return (1, 0)
    if positions is not None:
        raise ValueError(
            "positions: cp_size/cp_rank compute each token's global position; with explicit positions "
            "leave them out (rope_triton.context_parallel.rank_positions gives the zigzag ones)"
        )
    if layout != "thd" and seqlen % 2:
        raise ValueError(
            f"q: with cp_size={cp_size} the local sequence must split into two equal zigzag chunks, got "
            f"{seqlen} tokens"
        )
    if layout == "thd" and cu_seqlens is not None and cu_seqlens.device.type == "cpu":
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        if bool((lengths % 2).any()):
            raise ValueError(
                f"cu_seqlens: with cp_size={cp_size} every local sequence must split into two equal zigzag "
                f"chunks, got lengths {lengths.tolist()}"
            )
    return (int(cp_size), int(cp_rank))


def _check_freq_table(freqs: object, q: torch.Tensor, cos_lo: torch.Tensor | None) -> None:
    if not isinstance(freqs, torch.Tensor):
        raise TypeError(
            f"freqs: expected a torch.Tensor from rope_triton.angles.freq_table, got {type(freqs).__name__}"
        )
    if freqs.dtype != torch.int64 or freqs.dim() != 2 or freqs.shape[0] not in (FREQ_ROWS, FREQ_AXIS_ROW + 1):
        raise ValueError(
            f"freqs: expected an int64 tensor of shape ({FREQ_ROWS}, rotary_dim // 2) from "
            f"rope_triton.angles.freq_table (or ({FREQ_AXIS_ROW + 1}, rotary_dim // 2) from "
            f"MultiAxis.freq_table), got dtype {freqs.dtype} and {_shape(freqs)}"
        )
    if q.dtype == torch.float64:
        raise TypeError(
            "freqs: computes cos/sin in float32, not enough for float64 q and k: pass float64 cos/sin "
            "tables (rope_triton.angles.cos_sin_tables) instead"
        )
    if cos_lo is not None:
        raise ValueError("cos_lo: split tables and freqs are exclusive, got both")


# Search nodes after which _may_share_elements gives up and answers "may overlap" (strides no view of a
# real layout has); the views slicing and striding make need a handful.
_OVERLAP_SEARCH_BUDGET = 256


def _may_share_elements(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether non-empty ``a`` and ``b`` (same dtype) may have an element at the same address, from their
    addresses, sizes and strides alone (no device access).

    Exact for the views that slicing, striding and transposing make (fused qkv slices, even/odd heads: no
    overlap); conservative (True) for stride patterns whose search exceeds a small budget.
    """
    # Fake tensors (torch.compile, opcheck) answer data_ptr() with 0 for all: they have no address.
    if isinstance(a, FakeTensor) or isinstance(b, FakeTensor):
        return False
    try:
        pa, pb = a.data_ptr(), b.data_ptr()
    except RuntimeError:  # functional tensors while tracing have no address
        return False
    size = a.element_size()
    end_a = pa + size * (1 + sum((n - 1) * st for n, st in zip(a.shape, a.stride(), strict=True)))
    end_b = pb + size * (1 + sum((n - 1) * st for n, st in zip(b.shape, b.stride(), strict=True)))
    if end_a <= pb or end_b <= pa:
        return False  # disjoint address spans: the common case of separate tensors
    if (pb - pa) % size:
        return True  # elements not aligned to each other: they straddle, cannot tell cheaply
    # Element i of a (index i_d along dim d) and element j of b coincide when
    # sum_d i_d * stride_a[d] - sum_d j_d * stride_b[d] = (pb - pa) / size. Terms of one stride merge into
    # a coefficient c in [-(size_b - 1), size_a - 1] (a sum of integer ranges is an integer range).
    ranges: dict[int, list[int]] = {}
    for sign, t in ((1, a), (-1, b)):
        for n, st in zip(t.shape, t.stride(), strict=True):
            if n > 1 and st:
                lo_hi = ranges.setdefault(st, [0, 0])
                lo_hi[0 if sign < 0 else 1] += sign * (n - 1)
    terms = sorted(ranges.items(), reverse=True)
    return _representable((pb - pa) // size, terms, [_OVERLAP_SEARCH_BUDGET])


def _representable(target: int, terms: list[tuple[int, list[int]]], budget: list[int]) -> bool:
    """Whether ``target = sum(c_t * w_t)`` with integers ``lo_t <= c_t <= hi_t`` (``terms``: (w_t, [lo_t,
    hi_t]), w_t > 0, largest first); True too once ``budget`` nodes are spent (conservative)."""
    if not terms:
        return target == 0
    (w, (lo, hi)), rest = terms[0], terms[1:]
    rest_lo = sum(wr * lr for wr, (lr, _) in rest)
    rest_hi = sum(wr * hr for wr, (_, hr) in rest)
    # The smaller strides reach target - c * w only within [rest_lo, rest_hi]: few c are left.
    first = max(lo, -((rest_hi - target) // w))  # ceil((target - rest_hi) / w)
    last = min(hi, (target - rest_lo) // w)
    for c in range(first, last + 1):
        budget[0] -= 1
        if budget[0] < 0 or _representable(target - c * w, rest, budget):
            return True
    return False


def _broadcasts(shape: tuple[int, ...], target: tuple[int, int]) -> bool:
    if len(shape) == 1:
        shape = (1, *shape)
    return all(a in (1, b) for a, b in zip(shape, target, strict=True)) and shape[-1] == target[-1]


# Fused norms: name -> the kernel's kind (1: over each head's head_dim, 2: over all heads of a token).
NORM_KINDS = {"rms": 1, "l2": 1, "rms_heads": 2}


def check_norm(
    p: Problem, q: torch.Tensor, k: torch.Tensor | None, q_weight, k_weight, norm, eps, weight_offset,
    norm_after_rope,
) -> tuple[int, float, float, bool]:
    """Validate the norm arguments of ``qk_norm_rotary`` against the validated problem ``p``; returns the
    kernel's (kind, eps, weight offset, after rope)."""
    if not isinstance(norm, str) or norm not in NORM_KINDS:
        raise ValueError(f"norm: expected one of {', '.join(map(repr, NORM_KINDS))}, got {norm!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite number > 0, got {eps!r}")
    if (
        isinstance(weight_offset, bool) or not isinstance(weight_offset, (int, float))
        or not math.isfinite(weight_offset)
    ):
        raise ValueError(f"weight_offset: expected a finite number, got {weight_offset!r}")
    if not isinstance(norm_after_rope, bool):
        raise TypeError(f"norm_after_rope: expected a bool, got {type(norm_after_rope).__name__}")
    for name, w, heads, x in (("q_weight", q_weight, p.heads_q, q), ("k_weight", k_weight, p.heads_k, k)):
        if w is None:
            continue
        if norm == "l2":
            raise ValueError(f"{name}: norm='l2' (Llama 4's L2Norm) takes no weight, got a tensor")
        if x is None:
            raise ValueError(f"{name}: given without {name[0]}")
        check_tensor(name, w)
        size = heads * p.head_dim if norm == "rms_heads" else p.head_dim
        what = f"heads * head_dim = {heads} * {p.head_dim}" if norm == "rms_heads" else "head_dim"
        if w.dim() != 1 or w.shape[0] != size:
            raise ValueError(f"{name}: expected shape ({size},) ({what}) for norm={norm!r}, got {_shape(w)}")
        if w.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: expected a floating-point weight, got dtype {w.dtype}")
        if w.device != x.device:
            raise ValueError(f"{name}: expected device {x.device} (that of {name[0]}), got {w.device}")
    return NORM_KINDS[norm], float(eps), float(weight_offset), norm_after_rope
