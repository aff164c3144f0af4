"""Shapes of ``rope-triton bench`` and the workloads built from them (inputs, tables, references).

A :class:`ShapeSpec` names a problem size; :func:`build_workload` turns it into tensors on a device,
all outside any timed region: the input sets the timings cycle through, the rope-triton and Hugging Face
tables, fresh check inputs and their float64 references.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from .. import angles, reference
from .._core.launch import prefers_freqs
from .._core.op import triton_runs_on

THETA = 10000.0
DEFAULT_L2_BYTES = 60 * 2**20  # H200
MAX_SETS = 1024
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
NORM_EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Shapes.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeSpec:
    """A named benchmark shape.

    Attributes
    ----------
    name : str
    batch, seqlen : int
        Sequences and tokens per sequence; for ``kind="varlen"`` batch is 1 and seqlen is the total
        number of packed tokens.
    heads_q, heads_k, head_dim : int
    dtype : torch.dtype
    kind : {"dense", "varlen", "decode"}
        ``dense``: positions 0..S-1, layout bshd. ``varlen``: ``n_seqs`` packed sequences of seeded
        random uneven lengths, layout thd with cu_seqlens. ``decode``: per-sequence offsets drawn below
        ``max_offset``, as a device tensor, layout bshd.
    n_seqs, max_offset : int
    rotary_dim : int
        Rotated dims (0: all of head_dim); the rest pass through.
    interleaved : bool
        GPT-J pairs (2i, 2i + 1) instead of (i, i + rotary_dim / 2).
    multi_axis : str
        A key of :data:`MULTI_AXIS`: multi-axis positions (n_axes, B, S) built per model (vision-language
        text with an image block, a diffusion image with its prompt, a vision tower's patch grid).
    norm : str
        A fused q/k norm before the rotation (:func:`rope_triton.qk_norm_rotary`): ``"rms"`` per head
        (Qwen3), ``"rms_heads"`` per token over all heads (OLMo 2); weights of the shape's dtype.
    """

    name: str
    batch: int
    seqlen: int
    heads_q: int
    heads_k: int
    head_dim: int
    dtype: torch.dtype = torch.bfloat16
    kind: str = "dense"
    n_seqs: int = 0
    max_offset: int = 0
    rotary_dim: int = 0
    interleaved: bool = False
    multi_axis: str = ""
    norm: str = ""

    @property
    def rotated(self) -> int:
        """The rotated dims."""
        return self.rotary_dim or self.head_dim

    def describe(self) -> str:
        """Dimensions as batch x seq x heads of q / heads of k x head_dim, e.g. ``4x4096x32/8x128``."""
        heads = f"{self.heads_q}/{self.heads_k}x{self.head_dim}"
        if self.kind == "varlen":
            return f"{self.n_seqs} seqs, {self.seqlen} tok x{heads}"
        extra = f" off<{self.max_offset}" if self.kind == "decode" else ""
        if self.rotary_dim:
            extra += f" rot{self.rotary_dim}" + (" interleaved" if self.interleaved else "")
        if self.multi_axis:
            extra += f" {self.multi_axis} positions"
        if self.norm:
            extra += f" {self.norm} norm"
        return f"{self.batch}x{self.seqlen}x{heads}{extra}"

    def cpu_variant(self) -> ShapeSpec:
        """The shape with sequences shortened 64-fold (at least 16 tokens), for a CPU run."""
        seqlen = max(min(self.seqlen, 16), self.seqlen // 64)
        if seqlen == self.seqlen:
            return self
        return replace(self, name=f"{self.name}-cpu", seqlen=seqlen, n_seqs=min(self.n_seqs, seqlen))


SHAPES: dict[str, ShapeSpec] = {
    s.name: s
    for s in (
        ShapeSpec("llama3-8b", 4, 4096, 32, 8, 128),
        ShapeSpec("llama2-7b", 4, 4096, 32, 32, 128),
        ShapeSpec("long-32k", 1, 32768, 32, 8, 128),
        ShapeSpec("d64", 8, 2048, 16, 16, 64),
        # Batch 2: the same bytes as llama3-8b in bf16.
        ShapeSpec("fp32", 2, 4096, 32, 8, 128, dtype=torch.float32),
        ShapeSpec("varlen", 1, 131072, 32, 8, 128, kind="varlen", n_seqs=64),
        ShapeSpec("decode", 64, 1, 32, 8, 128, kind="decode", max_offset=8192),
        ShapeSpec("decode-1", 1, 1, 32, 8, 128, kind="decode", max_offset=8192),
        # GPT-J 6B: interleaved pairs on the first 64 of 256 dims, the rest copied through.
        ShapeSpec("gptj", 4, 2048, 16, 16, 256, rotary_dim=64, interleaved=True),
        # Multi-axis positions, rotated from the positions (no tables given): Qwen2-VL-7B text with a
        # 64 x 64 image block in the middle, Qwen3-VL-8B, FLUX.1 (512 prompt + 4096 image tokens), and
        # Qwen2-VL's vision tower on a 64 x 64 patch grid.
        ShapeSpec("qwen2-vl", 2, 8192, 28, 4, 128, multi_axis="qwen2-vl"),
        ShapeSpec("qwen3-vl", 2, 8192, 32, 8, 128, multi_axis="qwen3-vl"),
        ShapeSpec("flux", 1, 4608, 24, 24, 128, multi_axis="flux"),
        ShapeSpec("vit", 1, 4096, 16, 16, 80, multi_axis="vit"),
        # q/k norm fused with the rotation: Qwen3-8B (RMSNorm per head) and OLMo 2 7B (RMSNorm per token
        # over all heads).
        ShapeSpec("qwen3-8b", 4, 4096, 32, 8, 128, norm="rms"),
        ShapeSpec("olmo2-7b", 4, 4096, 32, 32, 128, norm="rms_heads"),
        # Tiny shapes for smoke tests (the Triton interpreter takes ~50 ms a program).
        ShapeSpec("tiny", 2, 4, 4, 2, 32),
        ShapeSpec("tiny-varlen", 1, 10, 4, 2, 32, kind="varlen", n_seqs=3),
        ShapeSpec("tiny-decode", 3, 1, 4, 2, 32, kind="decode", max_offset=64),
        ShapeSpec("tiny-gptj", 2, 4, 4, 4, 32, rotary_dim=8, interleaved=True),
        ShapeSpec("tiny-mrope", 2, 24, 4, 2, 32, multi_axis="tiny-mrope"),
        ShapeSpec("tiny-flux", 1, 20, 2, 2, 32, multi_axis="tiny-flux"),
        ShapeSpec("tiny-qwen3", 2, 8, 4, 2, 32, norm="rms"),
        ShapeSpec("tiny-olmo2", 2, 8, 4, 4, 32, norm="rms_heads"),
    )
}
DEFAULT_SHAPES = (
    "llama3-8b", "llama2-7b", "long-32k", "d64", "fp32", "gptj", "varlen", "decode", "decode-1", "qwen2-vl",
    "qwen3-vl", "flux", "vit", "qwen3-8b", "olmo2-7b",
)
QUICK_SHAPES = ("llama3-8b", "varlen", "decode")
# Without CUDA: a decode step (64 sequences x 1 token) and a 512-token prefill (long-32k-cpu), the shapes
# where the CPU path is measured against Hugging Face's eager RoPE.
QUICK_SHAPES_CPU = ("decode", "long-32k")


def _vl_text_positions(batch: int, seqlen: int, grid: int) -> torch.Tensor:
    """Qwen-VL's M-RoPE positions (3, B, S) of text with one image of grid x grid tokens in the middle:
    text at (i, i, i); the image at (t0, t0 + row, t0 + col); text after it resumes past the largest."""
    grid = min(grid, math.isqrt(seqlen))  # (shortened CPU variants)
    start = (seqlen - grid * grid) // 2
    before = torch.arange(start).expand(3, start)
    rows = torch.arange(grid).repeat_interleave(grid)
    cols = torch.arange(grid).repeat(grid)
    image = torch.stack((torch.zeros_like(rows), rows, cols)) + start
    after_len = seqlen - start - grid * grid
    after = (torch.arange(after_len) + start + grid).expand(3, after_len)
    return torch.cat((before, image, after), dim=1)[:, None].expand(3, batch, seqlen)


def _grid_positions(seqlen: int, prefix: int = 0) -> torch.Tensor:
    """(h, w) of a square patch grid (seqlen - prefix patches, the last row partial when they are not a
    square), after ``prefix`` tokens at (0, 0)."""
    side = max(1, math.isqrt(seqlen - prefix))
    patch = torch.arange(seqlen - prefix)
    rows, cols = patch // side, patch % side
    return torch.cat((torch.zeros(2, prefix, dtype=torch.int64), torch.stack((rows, cols))), dim=1)


def _flux_ids(seqlen: int, prompt: int) -> torch.Tensor:
    """FLUX's ids transposed, (3, S) float32: the prompt at (0, 0, 0), then the image at (0, h, w)."""
    hw = _grid_positions(seqlen, prompt)
    return torch.cat((torch.zeros(1, seqlen, dtype=torch.int64), hw)).float()


# name: (MultiAxis builder, positions builder (spec) -> (n_axes, B or 1, S) or (n_axes, S))
MULTI_AXIS: dict[str, tuple[Callable, Callable]] = {
    "qwen2-vl": (lambda: angles.mrope(128, [16, 24, 24], base=1000000.0),
                 lambda spec: _vl_text_positions(spec.batch, spec.seqlen, 64)),
    "qwen3-vl": (lambda: angles.mrope(128, [24, 20, 20], base=5000000.0, interleaved_sections=True),
                 lambda spec: _vl_text_positions(spec.batch, spec.seqlen, 64)),
    # (512 prompt tokens of 4608: a ninth, also in the shortened CPU variant)
    "flux": (angles.flux, lambda spec: _flux_ids(spec.seqlen, spec.seqlen // 9)),
    "vit": (lambda: angles.vision_2d(80), lambda spec: _grid_positions(spec.seqlen)),
    "tiny-mrope": (lambda: angles.mrope(32, [4, 6, 6]),
                   lambda spec: _vl_text_positions(spec.batch, spec.seqlen, 4)),
    "tiny-flux": (lambda: angles.nd_rope([8, 12, 12]), lambda spec: _flux_ids(spec.seqlen, 4)),
}


# --------------------------------------------------------------------------------------------------
# Workloads: a shape's inputs, tables and references, on the device.
# --------------------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Everything a provider needs for one shape, built once outside any timed region.

    Attributes
    ----------
    spec : ShapeSpec
        With the dtype actually used.
    device : torch.device
    dtype : torch.dtype
    layout : str
        Canonical layout of q and k: ``"bshd"`` or ``"thd"``.
    rope_kwargs : dict
        Positions arguments of :func:`rope_triton.apply_rotary` (layout, offsets, cu_seqlens, ...).
    cos64, sin64 : torch.Tensor
        (rows, D/2) float64 tables from float64 angles (theta 10000), used by the reference.
    cos32, sin32 : torch.Tensor
        The same rounded to float32, for rope-triton.
    freqs : torch.Tensor
        :func:`rope_triton.angles.freq_table` of the same frequencies, for rope-triton-freqs.
    cos_sin_mode : {"tables", "freqs"}
        What :class:`rope_triton.RotaryEmbedding` reads for this shape by default
        (:func:`rope_triton._core.launch.prefers_freqs`): what the rope-triton providers time.
    hf_cos, hf_sin : torch.Tensor
        Full-width (B or 1, S, D) tables in the input dtype, gathered per token, as Hugging Face's
        rotary module hands them to every layer (float32 for diffusion shapes, as diffusers keeps them).
    sets : list of (q, k)
        Timed input sets in the canonical layout.
    check_inputs : (q, k, gq, gk)
        Fresh random inputs and output gradients for the correctness check.
    ref_fwd, ref_bwd : (q, k)
        float64 references: the rotation of (q, k) and the conjugate rotation of (gq, gk).
    gen : torch.Generator
        Seeded generator on the device, for gradients drawn by providers.
    position_ids : torch.Tensor
        (B or 1, S) int64 position of every token, Hugging Face's ``position_ids``.
    inv_freq : torch.Tensor
        (D/2,) float32 inverse frequencies, as Hugging Face's rotary module holds them.
    multi_axis, axis_positions : MultiAxis and torch.Tensor, optional
        Multi-axis shapes: the preset and its positions (n_axes, B or 1, S), which rope-triton rotates
        from (``rope_kwargs`` holds them); cos64 / hf_cos then hold the per-token angles' rows.
    norm_weights : (torch.Tensor, torch.Tensor), optional
        Norm shapes: q's and k's norm weights (they require grad: the backward computes theirs); the
        references are then norm-then-rotate and its gradient.
    """

    spec: ShapeSpec
    device: torch.device
    dtype: torch.dtype
    layout: str
    rope_kwargs: dict
    cos64: torch.Tensor
    sin64: torch.Tensor
    cos32: torch.Tensor
    sin32: torch.Tensor
    freqs: torch.Tensor
    cos_sin_mode: str
    hf_cos: torch.Tensor
    hf_sin: torch.Tensor
    sets: list = field(repr=False)
    check_inputs: tuple = field(repr=False)
    ref_fwd: tuple = field(repr=False)
    ref_bwd: tuple = field(repr=False)
    gen: torch.Generator = field(repr=False)
    position_ids: torch.Tensor | None = field(default=None, repr=False)
    inv_freq: torch.Tensor | None = field(default=None, repr=False)
    multi_axis: angles.MultiAxis | None = field(default=None, repr=False)
    axis_positions: torch.Tensor | None = field(default=None, repr=False)
    norm_weights: tuple | None = field(default=None, repr=False)

    @property
    def bytes_per_pass(self) -> int:
        """Bytes one pass must move: read q and k, write q and k (tables ignored)."""
        q, k = self.sets[0]
        return 2 * (q.numel() + k.numel()) * q.element_size()

    def pass_bytes(self, pass_: str) -> int:
        """Bytes ``pass_`` must move (the copy ceiling: one pass). The backward of a fused norm reads the
        saved q and k besides the output gradients: three passes over q and k's size where a rotation's
        backward needs two."""
        bwd = self.bytes_per_pass * (3 if self.spec.norm else 2) // 2
        return {"bwd": bwd, "fwdbwd": self.bytes_per_pass + bwd}.get(pass_, self.bytes_per_pass)


def _qk_shapes(spec: ShapeSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if spec.kind == "varlen":
        return (spec.seqlen, spec.heads_q, spec.head_dim), (spec.seqlen, spec.heads_k, spec.head_dim)
    return (
        (spec.batch, spec.seqlen, spec.heads_q, spec.head_dim),
        (spec.batch, spec.seqlen, spec.heads_k, spec.head_dim),
    )


def _positions(
    spec: ShapeSpec, device: torch.device, host: torch.Generator
) -> tuple[dict, torch.Tensor, int]:
    """(rope_kwargs, per-token positions (B or 1, S) for the HF tables, table rows)."""
    if spec.kind == "decode":
        offsets = torch.randint(0, spec.max_offset, (spec.batch,), generator=host, dtype=torch.int32)
        offsets = offsets.to(device)
        kwargs = {"layout": "bshd", "offsets": offsets}
        pos = offsets.long()[:, None] + torch.arange(spec.seqlen, device=device)
        return kwargs, pos, spec.max_offset + spec.seqlen - 1
    if spec.kind == "varlen":
        # n - 1 distinct cut points among the T - 1 gaps between tokens: uneven lengths, all >= 1.
        cuts = torch.randperm(spec.seqlen - 1, generator=host)[: spec.n_seqs - 1].sort().values + 1
        cu = torch.cat((torch.tensor([0]), cuts, torch.tensor([spec.seqlen])))
        max_len = int((cu[1:] - cu[:-1]).max())
        cu = cu.to(device=device, dtype=torch.int32)
        kwargs = {"layout": "thd", "cu_seqlens": cu, "max_seqlen": max_len}
        pos = reference.token_positions(1, spec.seqlen, device, cu_seqlens=cu)
        return kwargs, pos, max_len
    return {"layout": "bshd"}, torch.arange(spec.seqlen, device=device)[None], spec.seqlen


def n_input_sets(set_bytes: int, device: torch.device) -> int:
    """How many input sets to rotate through so that together they hold over 3x the L2 cache.

    Parameters
    ----------
    set_bytes : int
        Bytes of q and k of one set.
    device : torch.device

    Returns
    -------
    int
        At least 2, at most :data:`MAX_SETS`; 2 on the CPU.
    """
    if device.type != "cuda":
        return 2
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or DEFAULT_L2_BYTES
    return min(MAX_SETS, max(2, math.ceil(3 * l2 / max(set_bytes, 1))))


def cos_sin_mode(spec: ShapeSpec, device: torch.device | None = None) -> str:
    """``"freqs"`` where :class:`rope_triton.RotaryEmbedding` computes cos/sin in the kernel for this shape
    by default (on ``device``; default a GPU), else ``"tables"`` (always on the CPU path);
    ``"multi-axis"`` for multi-axis shapes (angles computed from the positions)."""
    if spec.multi_axis:
        return "multi-axis"
    if device is not None and device.type == "cpu" and not triton_runs_on(device):
        return "tables"
    itemsize = torch.empty(0, dtype=spec.dtype).element_size()
    shared = spec.n_seqs if spec.kind == "varlen" else spec.batch
    use = prefers_freqs(
        spec.batch * spec.seqlen, shared, spec.heads_q + spec.heads_k, spec.head_dim, spec.rotated, itemsize
    )
    return "freqs" if use else "tables"


def build_workload(
    spec: ShapeSpec, device: torch.device, *, seed: int = 0, n_sets: int | None = None
) -> Workload:
    """Build a shape's inputs, tables and float64 references on ``device``.

    Parameters
    ----------
    spec : ShapeSpec
    device : torch.device
    seed : int
        Seeds lengths, offsets and every random tensor.
    n_sets : int, optional
        Input sets to time on; default :func:`n_input_sets`.

    Returns
    -------
    Workload
    """
    host = torch.Generator().manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = spec.dtype
    kwargs, pos, rows = _positions(spec, device, host)
    if spec.rotary_dim:
        kwargs.update(rotary_dim=spec.rotary_dim, interleaved=spec.interleaved)
    inv_freq, _ = angles.inv_freq_and_scale(spec.rotated, base=THETA)
    ma = axis_positions = None
    if spec.multi_axis:
        make_ma, make_positions = MULTI_AXIS[spec.multi_axis]
        ma, axis_positions = make_ma(), make_positions(spec).to(device)
        kwargs.update(multi_axis=ma, positions=axis_positions)
        # One row per token (B or 1, S, R/2): the float64 angles of its positions.
        theta = angles.multi_axis_angles(ma, axis_positions)
        theta = theta.reshape(-1, spec.seqlen, theta.shape[-1])
        cos64, sin64 = theta.cos() * ma.attention_factor, theta.sin() * ma.attention_factor
        pos = torch.arange(spec.seqlen, device=device)[None]
        interleaved = ma.interleaved
    else:
        cos64, sin64 = angles.cos_sin_tables(inv_freq, rows, dtype=torch.float64, device=device)
        interleaved = spec.interleaved
    # Hugging Face's full-width tables: each angle twice, side by side (NeoX) or in adjacent dims (GPT-J).
    if ma is not None:
        if interleaved:  # diffusers' tables: float32
            hf_cos, hf_sin = (t.repeat_interleave(2, dim=-1).float() for t in (cos64, sin64))
        else:
            hf_cos, hf_sin = (torch.cat((t, t), dim=-1).to(dtype) for t in (cos64, sin64))
    elif spec.interleaved:
        hf_cos = cos64.repeat_interleave(2, dim=-1)[pos].to(dtype)
        hf_sin = sin64.repeat_interleave(2, dim=-1)[pos].to(dtype)
    else:
        hf_cos = torch.cat((cos64, cos64), dim=-1)[pos].to(dtype)
        hf_sin = torch.cat((sin64, sin64), dim=-1)[pos].to(dtype)

    q_shape, k_shape = _qk_shapes(spec)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    set_bytes = (math.prod(q_shape) + math.prod(k_shape)) * itemsize
    n_sets = n_sets or n_input_sets(set_bytes, device)

    def randn(*shape):
        return torch.randn(shape, generator=gen, device=device, dtype=dtype)

    # One allocation per tensor kind: each set is a contiguous slice of it.
    q_all, k_all = randn(n_sets, *q_shape), randn(n_sets, *k_shape)
    sets = [(q_all[i], k_all[i]) for i in range(n_sets)]
    check_inputs = (randn(*q_shape), randn(*k_shape), randn(*q_shape), randn(*k_shape))
    weights = None
    if spec.norm:
        per_token = spec.norm == "rms_heads"
        # Around 1, as trained norm weights are (a weight of 0 would hide a wrong normalization).
        weights = tuple(
            (1 + 0.2 * randn(spec.head_dim * (h if per_token else 1))).requires_grad_()
            for h in (spec.heads_q, spec.heads_k)
        )
        ref_fwd, ref_bwd = norm_references(cos64, sin64, kwargs, spec.norm, weights, check_inputs)
    else:
        ref = partial_reference(None if ma else cos64, None if ma else sin64, kwargs)
        ref_fwd, ref_bwd = ref(*check_inputs[:2], conjugate=False), ref(*check_inputs[2:], conjugate=True)
    return Workload(
        spec=spec,
        device=device,
        dtype=dtype,
        layout=kwargs["layout"],
        rope_kwargs=kwargs,
        cos64=cos64,
        sin64=sin64,
        cos32=cos64.float(),
        sin32=sin64.float(),
        freqs=ma.freq_table(device) if ma else angles.freq_table(inv_freq, device=device),
        cos_sin_mode=cos_sin_mode(spec, device),
        hf_cos=hf_cos,
        hf_sin=hf_sin,
        sets=sets,
        check_inputs=check_inputs,
        ref_fwd=ref_fwd,
        ref_bwd=ref_bwd,
        gen=gen,
        position_ids=pos.expand(-1, spec.seqlen).long(),
        inv_freq=inv_freq.to(device=device, dtype=torch.float32),
        multi_axis=ma,
        axis_positions=axis_positions,
        norm_weights=weights,
    )


def partial_reference(cos64: torch.Tensor, sin64: torch.Tensor, kwargs: dict) -> Callable:
    """``f(q, k, conjugate=...) -> (q_ref, k_ref)``: the float64 oracle with the workload's positions."""

    def ref(q, k, *, conjugate):
        return reference.apply_rotary(
            q, k, cos64, sin64, conjugate=conjugate,
            compute_dtype=torch.float64, out_dtype=torch.float64, **kwargs,
        )

    return ref


def norm_references(cos64, sin64, kwargs: dict, norm: str, weights: tuple, check_inputs: tuple) -> tuple:
    """float64 norm-then-rotate of the check inputs (q, k), and its gradient wrt (q, k) for the check
    output gradients (gq, gk)."""
    q, k, gq, gk = (t.double() for t in check_inputs)
    q, k = q.requires_grad_(), k.requires_grad_()
    wq, wk = (w.detach().double() for w in weights)
    out = reference.qk_norm_rotary(
        q, k, wq, wk, cos64, sin64, norm=norm, eps=NORM_EPS, compute_dtype=torch.float64, **kwargs
    )
    grads = torch.autograd.grad(out, (q, k), (gq, gk))
    return tuple(o.detach() for o in out), grads
