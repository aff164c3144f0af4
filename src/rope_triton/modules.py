"""``nn.Module`` front ends: :class:`RotaryEmbedding` (any model family), :class:`MultiAxisRotaryEmbedding`
(positions along several axes: vision-language and diffusion models) and the seed's :class:`TritonRotary`.

Both build their cos/sin tables from float64 angles (:mod:`rope_triton.angles`) and keep them as float32,
non-persistent buffers: ``.to(device)`` moves them, ``state_dict()`` does not contain them, and casting the
model to bf16 does not degrade them (they are rebuilt in float32).
"""

from __future__ import annotations

import operator
import threading

import torch
from torch import nn

from . import angles
from ._core.layouts import BSHD_AXES
from ._core.op import check_call, check_tensor, is_int, prefers_freqs, triton_runs_on
from .angles.tables import _split_tables
from .functional import apply_rotary

_TABLES = ("cos_hi", "sin_hi", "cos_lo", "sin_lo")


def _freq_table_off(module: nn.Module, device: torch.device) -> bool:
    # nn.Module.type() casts integer buffers too: a float freq_table has lost its fixed-point turns.
    table = getattr(module, "freq_table", None)
    return table is not None and (table.dtype != torch.int64 or table.device != device)


def _tables_need_rebuild(module: nn.Module, names: tuple[str, ...], device: torch.device) -> bool:
    first = getattr(module, names[0])
    return (
        not module._tables_valid or first.device != device or first.dtype != torch.float32
        or _freq_table_off(module, device)
    )


def _mark_tables_after_apply(module: nn.Module, names: tuple[str, ...], was_meta: bool) -> None:
    # After .to()/.cuda()/to_empty(): values moved from a real device are still right; a meta module
    # (or a cast to another dtype, e.g. model.bfloat16()) needs fresh float32 tables at the next call.
    first = getattr(module, names[0])
    if was_meta or first.is_meta or first.dtype != torch.float32 or _freq_table_off(module, first.device):
        module._tables_valid = False


def _plain_call(q, layout, offsets, max_seqlen) -> bool:
    # What the module reads before apply_rotary validates: a tensor q of its layout's rank, int lengths.
    return (
        isinstance(q, torch.Tensor) and type(layout) is str and layout in BSHD_AXES
        and q.dim() == (3 if layout == "thd" else 4)
        and (offsets is None or isinstance(offsets, torch.Tensor) or is_int(offsets))
        and (max_seqlen is None or is_int(max_seqlen))
    )


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for a model family, applied by the fused rope-triton kernel.

    Angles are exact at any context length: never the float32 ``position * inv_freq`` product, whose error
    reaches 0.06 rad at 1M positions. Two representations, both from float64 angles:

    - float32 cos/sin tables: one row per position up to ``max_table_bytes`` (the fastest path for most
      shapes); beyond, the cos/sin of the high and of the low bits of a position (a few MB at a million
      positions), combined in the kernel with the angle-addition formulas (1-13 points of a same-bytes copy
      slower on large shapes). cos/sin within half a float32 ulp (one rounding).
    - a :func:`rope_triton.angles.freq_table` (``freqs=``): the kernel computes cos/sin itself, with no
      table bytes to read, at any position up to 2**31 - 2; cos/sin within ~2 float32 ulps.

    By default (``compute_cos_sin=None``) each call takes the faster one for its shape
    (:func:`rope_triton._core.launch.prefers_freqs`, measured on H100 and H200 GPUs): tables for decode
    steps and for batches that share each row, computed cos/sin for long sequences few share and for any
    large call once the tables are split; on the CPU path (CPU tensors without the Triton interpreter)
    always the tables, whose rows it reads as a slice or one gather, while computing cos/sin costs
    trigonometry on every call. Set ``compute_cos_sin`` to True or False for results that do not depend on
    the call's shape to the last bit (batch invariance). float64 inputs always read the tables.

    Parameters
    ----------
    head_dim : int
        Size of one attention head (D).
    rotary_dim : int, optional
        Rotated dims R (even, <= D); default from ``scaling["partial_rotary_factor"]``, else D.
    base : float
        ``rope_theta``.
    max_positions : int, optional
        Positions the tables cover up front (default ``max_position_embeddings`` or 4096). Longer inputs
        whose length is known on the host grow them (atomically: threads sharing the module see old or
        new tables, whole); device-side positions past them give NaN in calls that read the tables, and
        their exact rotation in calls that compute cos/sin (which cover every position up to 2**31 - 2).
        Under ``torch.compile``, where lengths may be symbolic, a call past the tables computes cos/sin
        instead of growing them inside the graph (with ``compute_cos_sin=False`` or float64 inputs it
        grows them for that length, specialized).
    scaling : dict, optional
        A Hugging Face ``rope_scaling`` / ``rope_parameters`` dict (``rope_type`` ``linear``,
        ``dynamic``, ``yarn``, ``longrope``, ``llama3``, ``proportional``, ...).
    interleaved : bool
        Pairs (2i, 2i+1) (GPT-J) instead of (i, i + R/2) (NeoX, Llama).
    max_position_embeddings : int, optional
        The model's ``max_position_embeddings`` (used by ``dynamic``, ``longrope`` and some ``yarn``).
    device : torch.device, optional
        Where to build the tables (default: the current default device). ``"meta"``, or building under
        ``with torch.device("meta")`` (deferred init), works: after ``to_empty(device=...)`` the tables are
        built on first use, or by ``reset_parameters()``.
    max_table_bytes : int
        Largest size of full cos/sin tables (float32, ``2 * positions * rotary_dim / 2 * 4`` bytes;
        default 64 MiB: 131072 positions at rotary_dim 128); larger ones are split (see above).
    compute_cos_sin : bool or None
        True: always compute cos/sin in the kernel; False: always read tables; None (default): per
        call, whichever is faster for its shape (see above).

    Examples
    --------
    >>> rope = RotaryEmbedding(64, base=500000.0, scaling={"rope_type": "llama3", "factor": 8.0,
    ...     "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    >>> q, k = torch.randn(2, 16, 8, 64), torch.randn(2, 16, 2, 64)  # (batch, seq, heads, head_dim)
    >>> q, k = rope(q, k)
    """

    def __init__(
        self,
        head_dim: int,
        *,
        rotary_dim: int | None = None,
        base: float = 10000.0,
        max_positions: int | None = None,
        scaling: dict | None = None,
        interleaved: bool = False,
        max_position_embeddings: int | None = None,
        device: torch.device | str | None = None,
        max_table_bytes: int = 64 * 2**20,
        compute_cos_sin: bool | None = None,
    ) -> None:
        super().__init__()
        if compute_cos_sin is not None and type(compute_cos_sin) is not bool:
            raise TypeError(f"compute_cos_sin: expected True, False or None, got {compute_cos_sin!r}")
        self.compute_cos_sin = compute_cos_sin
        if isinstance(max_table_bytes, bool) or not isinstance(max_table_bytes, int) or max_table_bytes < 0:
            raise ValueError(f"max_table_bytes: expected a non-negative int, got {max_table_bytes!r}")
        self.max_table_bytes = max_table_bytes
        self.head_dim = head_dim
        self.base = base
        self.scaling = dict(scaling) if scaling else None
        self.interleaved = interleaved
        self.max_position_embeddings = max_position_embeddings
        self._rotary_dim_arg = rotary_dim
        self.rope_type = angles.rope_type_of(self.scaling)
        # The frequencies at init, as Hugging Face computes them (validates the config too).
        inv_freq, self.attention_factor = self._frequencies(seq_len=None)
        self.rotary_dim = 2 * inv_freq.numel()
        bad_max = isinstance(max_positions, bool) or not isinstance(max_positions, int) or max_positions < 1
        if max_positions is not None and bad_max:
            raise ValueError(f"max_positions: expected a positive int or None, got {max_positions!r}")
        self.max_positions = max_positions or self._default_positions()
        self._set_frequencies(inv_freq, self.attention_factor)
        self._dynamic_len = self._dynamic_threshold()  # HF's max_seq_len_cached for dynamic NTK
        if self.rope_type == "dynamic" and self._dynamic_len is None:
            raise ValueError(
                "max_position_embeddings: rope_type 'dynamic' needs max_position_embeddings (or "
                "original_max_position_embeddings in scaling), got neither"
            )
        self._tables_valid = False
        # Serializes table growth with the calls that read the tables: a call sees old or new tables, whole.
        self._lock = threading.RLock()
        empty = torch.empty(0, self.rotary_dim // 2, device=device)
        for name in _TABLES:
            self.register_buffer(name, empty.clone(), persistent=False)
        no_freqs = torch.empty(0, self.rotary_dim // 2, dtype=torch.int64, device=device)
        self.register_buffer("freq_table", no_freqs, persistent=False)
        self._build_tables(self.max_positions, torch.device(device) if device is not None else empty.device)

    @classmethod
    def from_hf_config(
        cls, config, *, layer_type: str | None = None, max_positions: int | None = None, device=None,
        **overrides,
    ) -> RotaryEmbedding:
        """Build from a transformers config (``head_dim``, ``rope_theta``, ``partial_rotary_factor``,
        ``rope_scaling`` / ``rope_parameters``, ``max_position_embeddings``).

        The text configs of Qwen2-VL, Qwen2.5-VL and Qwen3-VL (M-RoPE: ``mrope_section``) give a
        :class:`MultiAxisRotaryEmbedding`, whose forward takes positions of shape (3, B, S).

        ``layer_type`` picks the layers' RoPE in configs whose layer types rotate differently (Gemma 3:
        ``"sliding_attention"`` or ``"full_attention"``; see :func:`rope_triton.angles.parse_hf_config`):
        one module per layer type. ``overrides`` replace what the config gives (``interleaved``,
        ``compute_cos_sin``, ...).

        Examples
        --------
        >>> from transformers import LlamaConfig
        >>> rope = RotaryEmbedding.from_hf_config(LlamaConfig(hidden_size=256, num_attention_heads=4))
        >>> rope.head_dim, rope.rotary_dim
        (64, 64)
        """
        if _is_mrope_config(config):
            return MultiAxisRotaryEmbedding.from_hf_config(config, device=device, **overrides)
        kw = angles.parse_hf_config(config, layer_type=layer_type)
        # GPT-J, CodeGen and Llama 4 rotate interleaved pairs; the other families rotate half-split pairs.
        if isinstance(config, dict):
            model_type = config.get("model_type")
        else:
            model_type = getattr(config, "model_type", None)
        kw["interleaved"] = model_type in ("gptj", "codegen", "llama4_text")
        kw.update(overrides)
        return cls(
            kw.pop("head_dim"),
            rotary_dim=kw.pop("rotary_dim", None),
            base=kw.pop("base"),
            scaling=kw.pop("scaling", None),
            max_position_embeddings=kw.pop("max_position_embeddings", None),
            max_positions=max_positions,
            device=device,
            **kw,
        )

    # ---- frequencies and tables ------------------------------------------------------------------
    def _default_positions(self) -> int:
        # What the model serves: max_position_embeddings, or factor x the pretraining length for the
        # scaled types (a YaRN x4 model of 32k serves 128k even where its config says 32k).
        positions = self.max_position_embeddings or 4096
        factor, original = (self.scaling or {}).get("factor"), self._original_max()
        if isinstance(factor, (int, float)) and not isinstance(factor, bool) and original:
            positions = max(positions, int(factor * original))
        return positions

    def _dynamic_threshold(self) -> int | None:
        # HF's dynamic NTK compares lengths with config.max_position_embeddings first.
        return self.max_position_embeddings or self._original_max()

    def _original_max(self) -> int | None:
        if self.scaling and self.scaling.get("original_max_position_embeddings"):
            return int(self.scaling["original_max_position_embeddings"])
        return self.max_position_embeddings

    def _frequencies(self, seq_len: int | None) -> tuple[torch.Tensor, float]:
        return angles.inv_freq_and_scale(
            self.head_dim,
            base=self.base,
            rotary_dim=self._rotary_dim_arg,
            scaling=self.scaling,
            seq_len=seq_len,
            max_position_embeddings=self.max_position_embeddings,
        )

    def _build_tables(self, positions: int, device: torch.device) -> None:
        # Built first, then published with max_positions: never a max_positions the tables do not cover
        # (also when building fails, e.g. out of memory).
        n = max(self.max_positions, positions)
        if device.type == "meta":
            self.max_positions, self._tables_valid = n, False
            return
        full_bytes = 2 * n * self._inv_freq.numel() * 4
        # low_bits 0: one row per position, and a one-row low table (angle 0) that is not passed on.
        low_bits = 0 if full_bytes <= self.max_table_bytes else angles.default_low_bits(n)
        # (Checked values: _split_tables does not check them again, which torch.compile could not trace.)
        tables = _split_tables(self._inv_freq, n, low_bits, self.attention_factor, device)
        # Built on the host when the frequencies change (exact rational arithmetic: untraceable, and ~4 ms);
        # here only moved, so that a table rebuild inside torch.compile stays traceable.
        freq_table = self._freq_table_host.to(device)
        for name, t in zip(_TABLES, tables, strict=True):
            setattr(self, name, t)
        self._stack_split_tables()
        self.freq_table = freq_table
        self.max_positions, self._tables_valid = n, True

    def _set_frequencies(self, inv_freq: torch.Tensor, attention_factor: float) -> None:
        self._inv_freq, self.attention_factor = inv_freq, attention_factor
        self._freq_table_host = angles.freq_table(inv_freq, attention_factor=attention_factor, device="cpu")

    def _update_frequencies(self, length: int) -> bool:
        """Length-dependent rope types, exactly as Hugging Face updates them; True if they changed."""
        if self.rope_type == "dynamic":
            original = self._dynamic_threshold()
            if length > self._dynamic_len:
                self._dynamic_len = length
            elif length < original and self._dynamic_len > original:
                self._dynamic_len = original
            else:
                return False
            inv_freq, factor = self._frequencies(seq_len=self._dynamic_len)
        elif self.rope_type == "longrope":
            inv_freq, factor = self._frequencies(seq_len=length)
        else:
            return False
        changed = not torch.equal(inv_freq, self._inv_freq) or factor != self.attention_factor
        if changed:
            self._set_frequencies(inv_freq, factor)
        return changed

    def reset_parameters(self) -> None:
        """Rebuild the tables (e.g. after ``to_empty``)."""
        with self._lock:
            self._build_tables(self.max_positions, self.cos_hi.device)

    def _apply(self, fn, recurse=True):
        was_meta = self.cos_hi.is_meta
        out = super()._apply(fn, recurse)
        _mark_tables_after_apply(self, _TABLES, was_meta)
        if self._tables_valid:
            self._stack_split_tables()  # (moved one by one, they no longer share a storage)
        return out

    def _stack_split_tables(self) -> None:
        # Split tables' low rows right after the high rows in one storage: the kernel reads both through
        # one pointer, with no copy per call.
        if self.cos_lo.shape[0] > 1:
            rows = self.cos_hi.shape[0]
            for hi, lo in (("cos_hi", "cos_lo"), ("sin_hi", "sin_lo")):
                both = torch.cat([getattr(self, hi), getattr(self, lo)])
                setattr(self, hi, both[:rows])
                setattr(self, lo, both[rows:])

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_lock", None)  # a lock neither pickles nor deep-copies; each copy gets its own
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.RLock()

    # ---- forward ----------------------------------------------------------------------------------
    @staticmethod
    def _host_length(q, layout, positions, offsets, max_seqlen, cp_size=1) -> int | None:
        """Positions needed, when the host knows it without reading device memory (context parallel: the
        global sequence, cp_size local ones)."""
        if positions is not None or isinstance(offsets, torch.Tensor):
            return None
        if layout == "thd":
            return None if max_seqlen is None else max_seqlen * cp_size + (offsets or 0)
        return q.shape[BSHD_AXES[layout][1]] * cp_size + (offsets or 0)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        offsets: int | torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        layout: str = "bshd",
        inplace: bool = False,
        cp_size: int = 1,
        cp_rank: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate q and k; arguments as in :func:`rope_triton.apply_rotary` (``cp_size``/``cp_rank``: the
        tables cover the global sequence).

        No device-to-host sync when the tables already cover the positions, except for ``dynamic`` and
        ``longrope`` scaling with device-side positions or offsets: their frequencies depend on the
        longest position, which Hugging Face reads with a sync too.
        """
        if (
            self.rope_type in ("dynamic", "longrope") or not _plain_call(q, layout, offsets, max_seqlen)
            or type(cp_size) is not int or cp_size != 1
        ):
            # A bad argument is named as apply_rotary names it, before a length is computed from it.
            check_call(
                q, k, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen,
                layout=layout, inplace=inplace, cp_size=cp_size, cp_rank=cp_rank,
            )
        if torch.compiler.is_compiling():
            # (Dynamo traces no lock; growth inside a graph is avoided anyway, see _prepare.)
            use_freqs, tables = self._prepare(
                q, k, layout, positions, offsets, cu_seqlens, max_seqlen, True, cp_size
            )
        else:
            with self._lock:
                use_freqs, tables = self._prepare(
                    q, k, layout, positions, offsets, cu_seqlens, max_seqlen, False, cp_size
                )
        cos_hi, sin_hi, cos_lo, sin_lo, freq_table = tables
        cp = {} if cp_size == 1 else {"cp_size": cp_size, "cp_rank": cp_rank}
        if use_freqs:
            return apply_rotary(
                q, k, freqs=freq_table, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens,
                max_seqlen=max_seqlen, layout=layout, interleaved=self.interleaved,
                rotary_dim=self.rotary_dim, inplace=inplace, **cp,
            )
        return apply_rotary(
            q, k, cos_hi, sin_hi,
            cos_lo=cos_lo if cos_lo.shape[0] > 1 else None,
            sin_lo=sin_lo if sin_lo.shape[0] > 1 else None,
            positions=positions,
            offsets=offsets,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
            layout=layout,
            interleaved=self.interleaved,
            rotary_dim=self.rotary_dim,
            inplace=inplace,
            **cp,
        )

    def _prepare(self, q, k, layout, positions, offsets, cu_seqlens, max_seqlen, compiling: bool, cp_size=1):
        """Bring frequencies and tables up to this call; returns (use_freqs, the tables read together)."""
        length = self._host_length(q, layout, positions, offsets, max_seqlen, cp_size)
        rebuild = _tables_need_rebuild(self, _TABLES, q.device)
        if self.rope_type in ("dynamic", "longrope"):
            if length is None:
                length = self._device_length(q, layout, positions, offsets, cu_seqlens, cp_size)
            elif compiling:
                # Their frequencies follow the exact length: a symbolic one is specialized (index() guards
                # on its value; int() keeps it symbolic).
                length = operator.index(length)
            if length > 0:
                rebuild |= self._update_frequencies(length)
        grow = length is not None and length > self.max_positions
        computed = False
        if grow and compiling:
            if self.compute_cos_sin is not False and q.dtype != torch.float64:
                # No growth inside a graph, where the length may be symbolic (dynamic shapes): past the
                # tables the kernel computes cos/sin, exact at any position; eager calls grow the tables.
                grow, computed = False, True
            else:
                length = operator.index(length)  # tables only: grown as in eager, for this length
        if rebuild or grow:
            self._build_tables(length if grow else self.max_positions, q.device)
        use_freqs = computed or self._use_freqs(q, k, layout, positions, cu_seqlens)
        return use_freqs, (self.cos_hi, self.sin_hi, self.cos_lo, self.sin_lo, self.freq_table)

    def _use_freqs(self, q, k, layout, positions, cu_seqlens) -> bool:
        if not isinstance(q, torch.Tensor) or q.dtype == torch.float64:
            return False  # float64 needs float64 cos/sin (the float32 tables are promoted exactly)
        if self.compute_cos_sin is not None:
            return self.compute_cos_sin
        if q.device.type == "cpu" and not triton_runs_on(q.device):
            return False  # the CPU path: no table bytes to save, and cos/sin would cost trigonometry
        if type(layout) is not str or layout not in BSHD_AXES:
            return False  # apply_rotary explains what is wrong
        axes = BSHD_AXES[layout]
        if q.dim() != (3 if layout == "thd" else 4) or (isinstance(k, torch.Tensor) and k.dim() != q.dim()):
            return False
        heads_q = q.shape[axes[2]]
        heads = heads_q + (k.shape[axes[2]] if isinstance(k, torch.Tensor) else 0)
        n_tokens = q.numel() // max(1, heads_q * q.shape[-1])
        if layout == "thd":
            # Packed sequences share their low positions; explicit positions: reuse unknown.
            packed = isinstance(cu_seqlens, torch.Tensor) and cu_seqlens.dim() == 1 and positions is None
            shared = cu_seqlens.shape[0] - 1 if packed else 1
        else:
            shared = q.shape[axes[0]]
        return prefers_freqs(
            n_tokens, shared, heads, q.shape[-1], self.rotary_dim, q.element_size(),
            split_tables=self.cos_lo.shape[0] > 1,
        )

    @staticmethod
    def _device_length(q, layout, positions, offsets, cu_seqlens, cp_size=1) -> int:
        # One sync, as in transformers' dynamic/longrope update: max position + 1.
        if positions is not None:
            return int(positions.max().item()) + 1 if positions.numel() else 0
        if layout == "thd":
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item())
        else:
            longest = q.shape[BSHD_AXES[layout][1]]
        return longest * cp_size + int(
            offsets.max().item() if isinstance(offsets, torch.Tensor) else offsets or 0
        )

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"rope_type={self.rope_type!r}, max_positions={self.max_positions}, "
            f"interleaved={self.interleaved}, compute_cos_sin={self.compute_cos_sin}"
        )


class TritonRotary(nn.Module):
    """The tutorial's module (``../shared/seed``), made to work: ``TritonRotary(dim, max_seq_len)``.

    It keeps the tutorial's math: ``dim // 4`` frequencies ``(1/10000) ** linspace(0, 1, dim // 4)``
    padded with zeros to ``dim // 2`` (so half of the pairs rotate and the rest keep angle 0),
    half-split pairs (i, i + dim/2), and its rotation direction y1 = x1 cos + x2 sin,
    y2 = -x1 sin + x2 cos. Unlike the tutorial it supports autograd, strided inputs and GQA, returns new
    tensors instead of overwriting its inputs, and explains bad shapes.

    Parameters
    ----------
    dim : int
        The attention head dimension (``model_dim // n_heads``), not the number of heads.
    max_seq_len : int
        Longest sequence it accepts.

    Examples
    --------
    >>> rotary = TritonRotary(dim=64, max_seq_len=2048)
    >>> q, k = torch.randn(2, 8, 128, 64), torch.randn(2, 8, 128, 64)  # (batch, heads, seq, head_dim)
    >>> q, k = rotary(q, k)
    """

    def __init__(self, dim: int, max_seq_len: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 4:
            raise ValueError(f"dim: expected the head dimension, a multiple of 4 (>= 4), got {dim!r}")
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise ValueError(f"max_seq_len: expected a positive int, got {max_seq_len!r}")
        self.dim = dim
        self.max_seq_len = max_seq_len
        self._tables_valid = False
        self.register_buffer("cos", torch.empty(0, dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(0, dim // 2), persistent=False)
        self._build(self.cos.device)

    def _build(self, device: torch.device) -> None:
        inv_freq = angles.seed_inv_freq(self.dim)
        self.cos, self.sin = angles.cos_sin_tables(inv_freq, self.max_seq_len, device=device)
        self._tables_valid = device.type != "meta"  # meta tables hold no values: build at first use

    def reset_parameters(self) -> None:
        """Rebuild the tables (e.g. after ``to_empty``)."""
        self._build(self.cos.device)

    def _apply(self, fn, recurse=True):
        was_meta = self.cos.is_meta
        out = super()._apply(fn, recurse)
        _mark_tables_after_apply(self, ("cos",), was_meta)
        return out

    def _check(self, name: str, x: torch.Tensor) -> None:
        check_tensor(name, x)
        if x.dim() != 4:
            hint = ""
            if x.dim() == 3:
                hint = (
                    " A 3-D (batch, seq, model_dim) projection must be split into heads first, e.g. "
                    "x.view(batch, seq, n_heads, model_dim // n_heads).transpose(1, 2), with "
                    f"model_dim // n_heads == dim == {self.dim}."
                )
            raise ValueError(
                f"{name}: TritonRotary expects (batch, heads, seq, head_dim={self.dim}), got shape "
                f"{tuple(x.shape)}.{hint}"
            )
        if x.shape[-1] != self.dim:
            raise ValueError(
                f"{name}: expected head_dim {self.dim} as the last dim, got shape {tuple(x.shape)}. "
                f"TritonRotary(dim=...) takes the attention head dimension (model_dim // n_heads), "
                f"not the number of heads."
            )
        if x.shape[2] > self.max_seq_len:
            raise ValueError(
                f"{name}: sequence length {x.shape[2]} (dim 2 of (batch, heads, seq, head_dim)) exceeds "
                f"max_seq_len={self.max_seq_len}; build TritonRotary with a larger max_seq_len."
            )

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate (batch, heads, seq, head_dim) q and k; returns new tensors."""
        self._check("q", q)
        if k is not None:
            self._check("k", k)
        if _tables_need_rebuild(self, ("cos",), q.device):
            self._build(q.device)
        # The tutorial's direction (x1 cos + x2 sin, -x1 sin + x2 cos) is the rotation by -theta.
        return apply_rotary(q, k, self.cos, self.sin, layout="bhsd", conjugate=True)


def _is_mrope_config(config) -> bool:
    if isinstance(config, dict):
        get = config.get
    else:
        def get(key, default=None):
            return getattr(config, key, default)
    text = get("text_config", None)
    if text is not None and (get("model_type", "") or "").endswith("_vl"):
        return True
    for key in ("rope_parameters", "rope_scaling"):
        params = get(key, None)
        if isinstance(params, dict) and ("mrope_section" in params or params.get("type") == "mrope"):
            return True
    return (get("model_type", "") or "").startswith(("qwen2_vl", "qwen2_5_vl", "qwen3_vl"))


class MultiAxisRotaryEmbedding(nn.Module):
    """Multi-axis rotary embedding: every pair turns by the position along its own axis (M-RoPE of Qwen2-VL /
    Qwen2.5-VL / Qwen3-VL, 2-D RoPE of vision towers, N-D RoPE of diffusion transformers).

    The angles are computed in the kernel from the positions (no cos/sin tables are built per call): the
    module holds a :class:`rope_triton.angles.MultiAxis` and its fixed-point frequency table per device.

    Parameters
    ----------
    multi_axis : rope_triton.angles.MultiAxis
        A preset (:func:`~rope_triton.angles.mrope`, :func:`~rope_triton.angles.vision_2d`,
        :func:`~rope_triton.angles.flux`, ...) or your own.

    Examples
    --------
    >>> import torch
    >>> from rope_triton import MultiAxisRotaryEmbedding
    >>> from rope_triton.angles import mrope
    >>> rope = MultiAxisRotaryEmbedding(mrope(64, [8, 12, 12]))
    >>> q, k = torch.randn(1, 5, 4, 64), torch.randn(1, 5, 2, 64)
    >>> positions = torch.arange(5).expand(3, 1, 5)  # text: (t, h, w) all at the token index
    >>> q_rot, k_rot = rope(q, k, positions=positions)
    >>> q_rot.shape
    torch.Size([1, 5, 4, 64])
    """

    def __init__(self, multi_axis: angles.MultiAxis) -> None:
        super().__init__()
        if not isinstance(multi_axis, angles.MultiAxis):
            raise TypeError(
                f"multi_axis: expected a rope_triton.angles.MultiAxis, got {type(multi_axis).__name__}"
            )
        self.multi_axis = multi_axis
        self.rotary_dim = multi_axis.rotary_dim
        self.interleaved = multi_axis.interleaved

    @classmethod
    def from_hf_config(cls, config, *, device=None, **overrides) -> MultiAxisRotaryEmbedding:
        """M-RoPE of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL (text) config, see
        :func:`rope_triton.angles.from_hf_config`. ``device`` is accepted for symmetry with
        :meth:`RotaryEmbedding.from_hf_config` (tables are built on the device of each call's q)."""
        if overrides:
            raise TypeError(f"from_hf_config: unexpected arguments for M-RoPE: {', '.join(overrides)}")
        # Host math, whatever default device is in effect (e.g. a meta device for deferred init).
        with torch.device("cpu"):
            return cls(angles.from_hf_config(config))

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        offsets: int | torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
        layout: str = "bshd",
        inplace: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate q and k. ``positions``: (n_axes, B, S) (or (n_axes, 1, S), (n_axes, S)), (n_axes, T) for
        ``thd``; without them every axis is at the token's index plus ``offsets`` (text tokens, decode).
        Other arguments as in :func:`rope_triton.apply_rotary`."""
        return apply_rotary(
            q, k, multi_axis=self.multi_axis, positions=positions, offsets=offsets, cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen, layout=layout, inplace=inplace,
        )

    def extra_repr(self) -> str:
        n_axes = self.multi_axis.n_axes
        return f"rotary_dim={self.rotary_dim}, n_axes={n_axes}, interleaved={self.interleaved}"
