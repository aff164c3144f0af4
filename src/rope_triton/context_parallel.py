"""Context parallelism: the global positions of a rank's tokens under load-balanced ("zigzag") sharding.

With ``cp_size`` ranks, each sequence is cut into ``2 * cp_size`` equal chunks and rank ``r`` holds chunks
``r`` and ``2 * cp_size - 1 - r`` (the early chunk, cheap under a causal mask, paired with a late one),
as Transformer Engine and Megatron shard. Packed sequences (``thd``) are cut the same way, each on its own.
``apply_rotary(..., cp_size=, cp_rank=)`` computes these positions in the kernel; this module states them
for the reference, the CPU path and users who shard otherwise (they pass the positions they computed).
No Triton here.
"""

from __future__ import annotations

import torch


def zigzag_positions(
    local_positions: torch.Tensor, local_lengths: torch.Tensor | int, cp_size: int, cp_rank: int
) -> torch.Tensor:
    """Global positions of local positions ``local_positions`` (0-based within each local sequence of
    length ``local_lengths``, broadcast against it) on rank ``cp_rank`` of ``cp_size``.

    The first half of a local sequence (length L) is global chunk ``cp_rank``, the second half chunk
    ``2 * cp_size - 1 - cp_rank``, each chunk L/2 long. Odd local lengths have no such split: -1 (the
    kernel then yields NaN for the token).

    Examples
    --------
    >>> zigzag_positions(torch.arange(4), 4, cp_size=2, cp_rank=0).tolist()
    [0, 1, 6, 7]
    >>> zigzag_positions(torch.arange(4), 4, cp_size=2, cp_rank=1).tolist()
    [2, 3, 4, 5]
    """
    lengths = torch.as_tensor(local_lengths, device=local_positions.device)
    half = lengths // 2
    first = local_positions < half
    late_chunk = 2 * cp_size - 1 - cp_rank
    pos = torch.where(first, cp_rank * half + local_positions, late_chunk * half + local_positions - half)
    return torch.where(lengths % 2 == 0, pos, torch.full_like(pos, -1))


def rank_positions(
    seqlen: int,
    cp_size: int,
    cp_rank: int,
    *,
    cu_seqlens: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Global positions of rank ``cp_rank``'s tokens: shape (seqlen,) for a dense local sequence of
    ``seqlen`` tokens, or (T,) for packed local sequences with boundaries ``cu_seqlens`` (T = seqlen).

    Pass them as ``positions=`` where a model shards its sequence in this layout but needs the positions
    themselves (attention masks, other position encodings); ``apply_rotary`` takes ``cp_size``/``cp_rank``
    directly.

    Examples
    --------
    >>> rank_positions(4, cp_size=2, cp_rank=1).tolist()
    [2, 3, 4, 5]
    >>> rank_positions(6, 2, 0, cu_seqlens=torch.tensor([0, 2, 6])).tolist()
    [0, 3, 0, 1, 6, 7]
    """
    device = torch.device(device) if device is not None else (
        cu_seqlens.device if cu_seqlens is not None else torch.device("cpu")
    )
    token = torch.arange(seqlen, device=device)
    if cu_seqlens is None:
        return zigzag_positions(token, seqlen, cp_size, cp_rank)
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    seq = (torch.searchsorted(cu, token, right=True) - 1).clamp(0, cu.numel() - 2)
    return zigzag_positions(token - cu[seq], (cu[1:] - cu[:-1])[seq], cp_size, cp_rank)
