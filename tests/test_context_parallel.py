"""Context parallelism (``cp_size``/``cp_rank``): a rank's zigzag shard rotated by its global positions
equals the same tokens of the full-sequence call, forward and backward, dense and packed, kernel, CPU path
and module; and two processes (gloo) that each rotate their shard reassemble the full call.

The oracle is the full-sequence call itself, sharded by an independent construction of the zigzag layout
(the sequence cut into 2 * cp_size chunks, rank r holding chunks r and 2 * cp_size - 1 - r): each token's
arithmetic is the same in both calls, so the results must be equal bit for bit.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import random_tables

import rope_triton
from rope_triton import angles
from rope_triton._core import op as _ops
from rope_triton.context_parallel import rank_positions


def zigzag_index(length: int, cp_size: int, rank: int) -> torch.Tensor:
    """Indices of rank ``rank``'s tokens in a sequence of ``length`` tokens."""
    chunks = torch.arange(length).chunk(2 * cp_size)
    return torch.cat((chunks[rank], chunks[2 * cp_size - 1 - rank]))


def packed_zigzag(lengths: list[int], cp_size: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(global token indices, local cu_seqlens) of a rank's shard of packed sequences."""
    starts = torch.tensor([0, *lengths]).cumsum(0)
    idx = [
        zigzag_index(n, cp_size, rank) + int(s) for n, s in zip(lengths, starts[:-1].tolist(), strict=True)
    ]
    local = torch.tensor([0, *[n // cp_size for n in lengths]]).cumsum(0)
    return torch.cat(idx), local


@pytest.mark.parametrize("cp_size", [1, 2, 3])
def test_rank_positions_are_the_zigzag_chunks(cp_size):
    for rank in range(cp_size):
        assert torch.equal(rank_positions(12 // cp_size, cp_size, rank), zigzag_index(12, cp_size, rank))
    lengths = [4 * cp_size, 2 * cp_size]
    cu_global = torch.tensor([0, *lengths]).cumsum(0)
    for rank in range(cp_size):
        idx, cu = packed_zigzag(lengths, cp_size, rank)
        seq = torch.searchsorted(cu_global, idx, right=True) - 1
        assert torch.equal(rank_positions(int(cu[-1]), cp_size, rank, cu_seqlens=cu), idx - cu_global[seq])


def _full_and_shards(layout, cp_size, device, source, offsets=None):
    """Full-sequence (q, k, kwargs) and, per rank, (index of its tokens, its kwargs)."""
    torch.manual_seed(0)
    if layout == "thd":
        lengths = [4 * cp_size, 8 * cp_size]
        total = sum(lengths)
        q, k = torch.randn(total, 4, 16, device=device), torch.randn(total, 2, 16, device=device)
        cu = torch.tensor([0, *lengths], device=device).cumsum(0)
        full_kw = dict(layout="thd", cu_seqlens=cu, max_seqlen=max(lengths))
        shards = []
        for r in range(cp_size):
            idx, local = packed_zigzag(lengths, cp_size, r)
            shards.append((idx.to(device), dict(layout="thd", cu_seqlens=local.to(device),
                                                  max_seqlen=max(lengths) // cp_size)))  # fmt: skip
    else:
        seqlen = 8 * cp_size
        q, k = torch.randn(2, seqlen, 4, 16, device=device), torch.randn(2, seqlen, 2, 16, device=device)
        full_kw = dict(layout="bshd")
        shards = [(zigzag_index(seqlen, cp_size, r).to(device), dict(layout="bshd")) for r in range(cp_size)]
    if source == "freqs":
        tables = dict(freqs=angles.freq_table(angles.inv_freq_and_scale(16)[0], device=device))
    else:
        cos, sin = random_tables(200, 8, device)
        tables = dict(cos=cos, sin=sin)
    if offsets is not None:
        full_kw["offsets"] = offsets
        for _, kw in shards:
            kw["offsets"] = offsets
    return q, k, tables, full_kw, shards


def _take(x, idx, layout):
    return x[idx] if layout == "thd" else x[:, idx]


@pytest.mark.parametrize("offsets", [None, 5], ids=["no-offset", "offset"])
@pytest.mark.parametrize("source", ["tables", "freqs"])
@pytest.mark.parametrize("layout", ["bshd", "thd"])
@pytest.mark.parametrize("cp_size", [2, 4])
def test_shard_equals_full_call(cp_size, layout, source, offsets, device):
    q, k, tables, full_kw, shards = _full_and_shards(layout, cp_size, device, source, offsets)
    fq, fk = rope_triton.apply_rotary(q, k, **tables, **full_kw)
    for rank, (idx, kw) in enumerate(shards):
        oq, ok = rope_triton.apply_rotary(
            _take(q, idx, layout), _take(k, idx, layout), **tables, **kw, cp_size=cp_size, cp_rank=rank
        )
        assert torch.equal(oq, _take(fq, idx, layout)) and torch.equal(ok, _take(fk, idx, layout))


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_shard_backward_equals_full_backward(layout, device):
    cp_size = 2
    q, k, tables, full_kw, shards = _full_and_shards(layout, cp_size, device, "tables")
    gq, gk = torch.randn_like(q), torch.randn_like(k)
    leaves = [t.detach().requires_grad_() for t in (q, k)]
    full_grads = torch.autograd.grad(rope_triton.apply_rotary(*leaves, **tables, **full_kw), leaves, (gq, gk))
    for rank, (idx, kw) in enumerate(shards):
        local = [_take(t, idx, layout).detach().requires_grad_() for t in (q, k)]
        out = rope_triton.apply_rotary(*local, **tables, **kw, cp_size=cp_size, cp_rank=rank)
        grads = torch.autograd.grad(out, local, (_take(gq, idx, layout), _take(gk, idx, layout)))
        for g, full in zip(grads, full_grads, strict=True):
            assert torch.equal(g, _take(full, idx, layout))


def test_cpu_path_shards(monkeypatch):
    """Without the interpreter the CPU path takes the zigzag positions as explicit ones."""
    monkeypatch.setattr(_ops, "triton_runs_on", lambda device: False)
    for layout in ("bshd", "thd"):
        q, k, tables, full_kw, shards = _full_and_shards(layout, 2, torch.device("cpu"), "tables", 3)
        fq, _ = rope_triton.apply_rotary(q, k, **tables, **full_kw)
        for rank, (idx, kw) in enumerate(shards):
            oq, _ = rope_triton.apply_rotary(
                _take(q, idx, layout), _take(k, idx, layout), **tables, **kw, cp_size=2, cp_rank=rank
            )
            assert torch.equal(oq, _take(fq, idx, layout))


def test_module_covers_the_global_sequence(device):
    """RotaryEmbedding grows its tables to the global length (cp_size local sequences)."""
    rope = rope_triton.RotaryEmbedding(16, max_positions=8, compute_cos_sin=False).to(device)
    q, k = torch.randn(1, 32, 4, 16, device=device), torch.randn(1, 32, 2, 16, device=device)
    fq, fk = rope(q, k)
    fresh = rope_triton.RotaryEmbedding(16, max_positions=8, compute_cos_sin=False).to(device)
    for rank in range(4):
        idx = zigzag_index(32, 4, rank).to(device)
        oq, ok = fresh(q[:, idx], k[:, idx], cp_size=4, cp_rank=rank)
        assert fresh.max_positions >= 32
        assert torch.equal(oq, fq[:, idx]) and torch.equal(ok, fk[:, idx])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cp_size=0), "cp_size: expected an int >= 1, got 0"),
        (dict(cp_size=2, cp_rank=2), r"cp_rank: expected an int in \[0, cp_size=2\), got 2"),
        (dict(cp_size=2, cp_rank=-1), r"cp_rank: expected an int in \[0, cp_size=2\)"),
        (dict(cp_size=2, positions=torch.arange(6)), "positions: cp_size/cp_rank compute"),
        (dict(cp_size=2, q=torch.randn(1, 5, 2, 16)), "q: with cp_size=2 the local sequence must split"),
        (dict(cp_size=2, layout="thd", q=torch.randn(6, 2, 16), cu_seqlens=torch.tensor([0, 3, 6])),
         r"cu_seqlens: with cp_size=2 every local sequence .* got lengths \[3, 3\]"),
        (dict(cp_size=4, cos=torch.ones(20, 8), sin=torch.ones(20, 8)), "need a table of at least 24 rows"),
    ],
)
@pytest.mark.usefixtures("cpu_modes")
def test_errors(kwargs, match):
    args = dict(q=torch.randn(1, 6, 2, 16), k=None, cos=torch.ones(64, 8), sin=torch.ones(64, 8)) | kwargs
    with pytest.raises(ValueError, match=match):
        rope_triton.apply_rotary(**args)


@pytest.mark.gpu
def test_odd_device_side_length_gives_nan():
    """A device-side cu_seqlens is not read on the host: an odd local length comes out NaN, not wrong."""
    q = torch.randn(10, 2, 16, device="cuda")
    cos, sin = random_tables(64, 8, "cuda")
    cu = torch.tensor([0, 4, 7, 10], device="cuda")
    out, _ = rope_triton.apply_rotary(q, None, cos, sin, layout="thd", cu_seqlens=cu, cp_size=2, cp_rank=0)
    assert not out[:4].isnan().any() and out[4:7].isnan().all() and out[7:].isnan().all()


# ---- two processes ---------------------------------------------------------------------------------------


def _rank_main(rank: int, world: int, init: str, layout: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        q, k, tables, full_kw, shards = _full_and_shards(layout, world, device, "tables")
        gq, gk = torch.randn_like(q), torch.randn_like(k)  # (seeded: the same on every rank)
        idx, kw = shards[rank]
        local = [_take(t, idx, layout).detach().requires_grad_() for t in (q, k)]
        out = rope_triton.apply_rotary(*local, **tables, **kw, cp_size=world, cp_rank=rank)
        grads = torch.autograd.grad(out, local, (_take(gq, idx, layout), _take(gk, idx, layout)))
        # Reassemble the full sequence from every rank's shard, as a gather after attention would.
        pieces = [o.detach().contiguous() for o in (*out, *grads)]
        gathered = [[torch.empty_like(p) for _ in range(world)] for p in pieces]
        for g, p in zip(gathered, pieces, strict=True):
            dist.all_gather(g, p)
        leaves = [t.detach().requires_grad_() for t in (q, k)]
        full = rope_triton.apply_rotary(*leaves, **tables, **full_kw)
        want = (*full, *torch.autograd.grad(full, leaves, (gq, gk)))
        for parts, w in zip(gathered, want, strict=True):
            got = torch.empty_like(w)
            for r, part in enumerate(parts):
                if layout == "thd":
                    got[shards[r][0]] = part
                else:
                    got[:, shards[r][0]] = part
            assert torch.equal(got, w.detach()), f"rank {rank}: reassembled shards differ from the full call"
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("layout", ["bshd", "thd"])
def test_two_processes_reassemble_the_full_call(layout):
    """Two gloo processes each rotate (and backpropagate through) their zigzag shard; gathered, the
    outputs and gradients are the single-process full-sequence call's."""
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.start_processes(_rank_main, args=(2, init, layout), nprocs=2, join=True, start_method="spawn")


def _dtensor_main(rank: int, world: int, init: str) -> None:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        torch.manual_seed(0)
        q, k = torch.randn(2, 12, 4, 16), torch.randn(2, 12, 2, 16)
        gq, gk = torch.randn_like(q), torch.randn_like(k)
        cos, sin = random_tables(40, 8, "cpu")
        leaves = [t.detach().requires_grad_() for t in (q, k)]
        full = rope_triton.apply_rotary(*leaves, cos, sin, offsets=3)
        want = (*full, *torch.autograd.grad(full, leaves, (gq, gk)))
        # batch, sequence (contiguous chunks: each rank's tokens start at its chunk), heads, replicated
        for placement in (Shard(0), Shard(1), Shard(2), Replicate()):
            dq, dk = (distribute_tensor(t, mesh, [placement]).detach().requires_grad_() for t in (q, k))
            out = rope_triton.apply_rotary(dq, dk, cos, sin, offsets=3)
            assert all(o.placements == (placement,) for o in out), placement
            grads = torch.autograd.grad(
                out, (dq, dk), [distribute_tensor(g, mesh, [placement]) for g in (gq, gk)]
            )
            for got, w in zip((*out, *grads), want, strict=True):
                assert torch.equal(got.full_tensor(), w.detach()), f"rank {rank}: {placement}"
    finally:
        dist.destroy_process_group()


def test_dtensors_stay_sharded():
    """DTensor q and k sharded on batch, sequence or heads (2 gloo processes): each shard is rotated where
    it lies, the outputs keep the placement, and outputs and gradients equal the single-process call."""
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.start_processes(_dtensor_main, args=(2, init), nprocs=2, join=True, start_method="spawn")


# ---- torch's context parallelism (CUDA: its ring attention has no CPU kernel) --------------------------


def _block_main(rank: int, world: int, init: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=init, rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank)
        torch.manual_seed(0)
        batch, seqlen, heads, head_dim = 2, 64, 4, 32
        width = heads * head_dim
        proj = torch.nn.Linear(width, 3 * width, device=device)
        cos, sin = random_tables(seqlen, head_dim // 2, device)
        x = torch.randn(batch, seqlen, width, device=device)
        grad = torch.randn(batch, seqlen, heads, head_dim, device=device)

        def block(h, **cp):
            q, k, v = proj(h).view(*h.shape[:2], 3, heads, head_dim).unbind(2)
            q, k = rope_triton.apply_rotary(q, k, cos, sin, **cp)
            out = torch.nn.functional.scaled_dot_product_attention(
                *(t.transpose(1, 2) for t in (q, k, v)), is_causal=True
            )
            return out.transpose(1, 2)

        full = block(x)
        (full * grad).sum().backward()
        want = [p.grad.clone() for p in proj.parameters()]
        proj.zero_grad()
        mesh = init_device_mesh("cuda", (world,))
        local_x, local_grad = x.clone(), grad.clone()
        # torch shards the buffers in place, load-balanced: rank r holds chunks r and 2 world - 1 - r.
        with context_parallel(mesh, buffers=[local_x, local_grad], buffer_seq_dims=[1, 1]):
            out = block(local_x, cp_size=world, cp_rank=rank)
            (out * local_grad).sum().backward()
            idx = zigzag_index(seqlen, world, rank).to(device)
            torch.testing.assert_close(out, full[:, idx], rtol=2e-5, atol=2e-5)
        for p, w in zip(proj.parameters(), want, strict=True):
            dist.all_reduce(p.grad)
            torch.testing.assert_close(p.grad, w, rtol=1e-4, atol=1e-4)
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_attention_block_under_torch_context_parallel():
    """q/k/v projections, rope-triton with cp_size/cp_rank, SDPA, under torch's context_parallel across 2
    GPUs: outputs and the projection's gradients equal the single-process block on the full sequence."""
    with tempfile.TemporaryDirectory() as tmp:
        init = f"file://{os.path.join(tmp, 'rendezvous')}"
        mp.start_processes(_block_main, args=(2, init), nprocs=2, join=True, start_method="spawn")


@pytest.mark.parametrize("plain", [False, True], ids=["kernel", "plain"])
def test_fused_norm_shards(plain, device, monkeypatch):
    """qk_norm_rotary with cp_size/cp_rank: a rank's shard, normalized and rotated, is the full call's."""
    from rope_triton._core import norm_op

    if plain:
        device = torch.device("cpu")
        monkeypatch.setattr(norm_op, "triton_runs_on", lambda d: False)
    q, k, tables, full_kw, shards = _full_and_shards("bshd", 2, device, "tables")
    wq, wk = torch.randn(16, device=device), torch.randn(16, device=device)
    fq, fk = rope_triton.qk_norm_rotary(q, k, wq, wk, **tables, **full_kw)
    for rank, (idx, kw) in enumerate(shards):
        oq, ok = rope_triton.qk_norm_rotary(
            q[:, idx], k[:, idx], wq, wk, **tables, **kw, cp_size=2, cp_rank=rank
        )
        torch.testing.assert_close(oq, fq[:, idx], rtol=0, atol=0)
        torch.testing.assert_close(ok, fk[:, idx], rtol=0, atol=0)
