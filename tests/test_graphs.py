"""CapturedRotary: a rotation recorded in a CUDA graph and replayed on new data and positions."""

from __future__ import annotations

import pytest
import torch
from helpers import FREQS_TABLE_BOUND, assert_rotary_close, make_qk, random_tables, ref64

import rope_triton
from rope_triton import angles


@pytest.mark.gpu
@pytest.mark.parametrize("view", ["contiguous", "packed"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_replays_on_new_data_and_positions(inplace, view, device):
    q, k = make_qk("bshd", 8, 1, 8, 2, 128, torch.bfloat16, device, view=view)
    cos, sin = random_tables(4096, 64, device)
    offsets = torch.zeros(8, dtype=torch.int64, device=device)
    before = (q.clone(), k.clone())
    rotate = rope_triton.CapturedRotary(q, k, cos, sin, offsets=offsets, inplace=inplace)
    torch.cuda.synchronize()
    # Capturing runs nothing on the caller's buffers.
    assert torch.equal(q, before[0]) and torch.equal(k, before[1])
    for _ in range(3):
        offsets.copy_(torch.randint(0, 4095, (8,), device=device))
        q.copy_(torch.randn_like(q))
        k.copy_(torch.randn_like(k))
        q_in, k_in = q.clone(), k.clone()
        q_out, k_out = rotate.replay()
        torch.cuda.synchronize()
        if inplace:
            assert q_out is q and k_out is k
        else:
            assert torch.equal(q, q_in) and torch.equal(k, k_in)  # inputs untouched
        rq, rk = ref64(q_in, k_in, cos, sin, offsets=offsets)
        assert_rotary_close(q_out, rq, q_in, layout="bshd", rotary_dim=128, interleaved=False)
        assert_rotary_close(k_out, rk, k_in, layout="bshd", rotary_dim=128, interleaved=False)


@pytest.mark.gpu
def test_replays_computed_cos_sin_with_explicit_positions(device):
    q, _ = make_qk("bshd", 2, 4, 4, None, 64, torch.float32, device)
    ft = angles.freq_table(angles.inv_freq_and_scale(64)[0], device=device)
    positions = torch.zeros(2, 4, dtype=torch.int64, device=device)
    rotate = rope_triton.CapturedRotary(q, None, freqs=ft, positions=positions)
    positions.copy_(torch.randint(0, 1 << 20, (2, 4), device=device))
    q_in = q.clone()
    q_out, k_out = rotate()
    assert k_out is None
    theta = angles.freq_table_angles(ft.cpu(), positions.cpu()).to(device)
    # One table row per token: (B, S, R/2) tables read by each token's index in its sequence.
    rq, _ = ref64(q_in, None, theta.cos(), theta.sin())
    assert_rotary_close(q_out, rq, q_in, layout="bshd", rotary_dim=64, interleaved=False,
                        table_bound=FREQS_TABLE_BOUND)


def test_refuses_what_a_graph_cannot_replay():
    q = torch.zeros(2, 1, 4, 64)
    cos = sin = torch.zeros(8, 32)
    with pytest.raises(ValueError, match=r"offsets: .*device tensor.*got int 3"):
        rope_triton.CapturedRotary(q, None, cos, sin, offsets=3)
    with pytest.raises(ValueError, match=r"q: .*needs a CUDA tensor, got cpu"):
        rope_triton.CapturedRotary(q, None, cos, sin)
