"""A rotation captured in a CUDA graph: the host cost of a decode step's RoPE becomes one graph launch.

An eager Triton launch costs microseconds of Python and driver time, which at decode is longer than the
rotation itself. Serving engines capture their whole decode step in CUDA graphs; :func:`apply_rotary` can
be captured there as it is (it makes no host synchronisation when positions and offsets are device
tensors). :class:`CapturedRotary` is the same for one rotation on its own, for decode loops that keep q
and k in fixed buffers.
"""

from __future__ import annotations

import torch

from .functional import apply_rotary


def _scratch_like(x: torch.Tensor) -> torch.Tensor:
    # Same shape, strides and 16-byte alignment as x (what decides the compiled kernel), other memory:
    # the warm-up launch must not rotate the caller's buffers.
    extent = 1 + sum((n - 1) * s for n, s in zip(x.shape, x.stride(), strict=True)) if x.numel() else 0
    shift = (x.data_ptr() % 16) // x.element_size()
    buffer = torch.zeros(extent + shift, dtype=x.dtype, device=x.device)
    return buffer.as_strided(x.shape, x.stride(), shift)


class CapturedRotary:
    """:func:`rope_triton.apply_rotary` recorded once in a CUDA graph and replayed.

    Each :meth:`replay` rotates whatever the buffers ``q``, ``k`` (and the ``offsets`` or ``positions``
    tensors) hold at that moment: write a decode step's queries, keys and positions into them (in place,
    e.g. ``q.copy_(...)`` or as the ``out=`` of a projection), then replay. The host pays one graph
    launch (about 2.4 us on an H100, against about 10 us for a bare Triton launch). No autograd: for
    inference.

    Parameters
    ----------
    q, k : torch.Tensor
        CUDA tensors that stay allocated as long as this object (``k`` may be None), any layout and strides
        :func:`~rope_triton.apply_rotary` accepts.
    cos, sin, freqs, cos_lo, sin_lo, cu_seqlens, layout, interleaved, rotary_dim, conjugate, max_seqlen
        As in :func:`~rope_triton.apply_rotary`; tensors are read at each replay from the same memory.
    positions, offsets : torch.Tensor, optional
        Device tensors updated in place between replays. A Python int offset would be frozen into the
        graph, so it is refused (pass a (B,) tensor).
    inplace : bool
        Rotate q and k in place (default), or into :attr:`q_out` / :attr:`k_out`, buffers owned by the graph
        and overwritten by each replay.

    Attributes
    ----------
    q_out, k_out : torch.Tensor
        Where each replay writes (``q`` and ``k`` themselves when ``inplace``).

    Examples
    --------
    >>> import torch, rope_triton  # doctest: +SKIP
    >>> from rope_triton.angles import cos_sin_tables, inv_freq_and_scale  # doctest: +SKIP
    >>> cos, sin = cos_sin_tables(inv_freq_and_scale(128)[0], 4096)  # doctest: +SKIP
    >>> cos, sin = cos.cuda(), sin.cuda()  # doctest: +SKIP
    >>> q = torch.zeros(64, 1, 32, 128, dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    >>> k = torch.zeros(64, 1, 8, 128, dtype=torch.bfloat16, device="cuda")  # doctest: +SKIP
    >>> step = torch.zeros(64, dtype=torch.int64, device="cuda")  # doctest: +SKIP
    >>> rotate = rope_triton.CapturedRotary(q, k, cos, sin, offsets=step)  # doctest: +SKIP
    >>> q.copy_(torch.randn_like(q)); step += 1  # each step: new data, new positions  # doctest: +SKIP
    >>> q_rot, k_rot = rotate.replay()  # doctest: +SKIP
    """

    def __init__(
        self,
        q: torch.Tensor,
        k: torch.Tensor | None,
        cos: torch.Tensor | None = None,
        sin: torch.Tensor | None = None,
        *,
        inplace: bool = True,
        offsets: torch.Tensor | None = None,
        **options,
    ) -> None:
        if offsets is not None and not isinstance(offsets, torch.Tensor):
            raise ValueError(
                "offsets: a captured rotation would replay a Python int forever; pass a device tensor of "
                f"shape (B,) updated in place between replays, got {type(offsets).__name__} {offsets!r}"
            )
        if not isinstance(q, torch.Tensor) or not q.is_cuda:
            where = q.device if isinstance(q, torch.Tensor) else type(q).__name__
            raise ValueError(f"q: CapturedRotary records a CUDA graph and needs a CUDA tensor, got {where}")
        for name in ("positions", "cu_seqlens"):
            value = options.get(name)
            if value is not None and isinstance(value, torch.Tensor) and not value.is_cuda:
                raise ValueError(f"{name}: a captured rotation reads it on the GPU, got a {value.device} "
                                 "tensor")
        self.q, self.k = q, k

        def call(q_, k_):
            return apply_rotary(q_, k_, cos, sin, inplace=inplace, offsets=offsets, **options)

        with torch.no_grad():
            # Validation, compilation and the launch plan happen outside the capture (and on scratch
            # buffers: a warm-up must not rotate the caller's data).
            side = torch.cuda.Stream(device=q.device)
            side.wait_stream(torch.cuda.current_stream(q.device))
            with torch.cuda.stream(side):
                call(_scratch_like(q), None if k is None else _scratch_like(k))
            torch.cuda.current_stream(q.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.q_out, self.k_out = call(q, k)

    def replay(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rotate the buffers' current contents; returns ``(q_out, k_out)``."""
        self.graph.replay()
        return self.q_out, self.k_out

    __call__ = replay
