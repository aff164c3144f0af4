"""The launcher's rule (block sizes, warps) for the benchmark's shapes: the measured program shapes of
docs/design.md, pinned so that a change to the rule is a decision, not an accident."""

from __future__ import annotations

import pytest
import torch
import triton

from rope_triton._core import kernels
from rope_triton._core.checks import check
from rope_triton._core.launch import _PROGRAM_BYTES
from rope_triton._core.launch import config as kernel_config


def config(p, itemsize=2):
    """The rule's answer with its fields named: PROGRAM's order and block shapes, num_warps."""
    cfg = kernel_config(p, itemsize)
    order, bt, bh, bt_k, bh_k = cfg["PROGRAM"]
    named = dict(BLOCK_T=bt, BLOCK_H=bh, num_warps=cfg["num_warps"],
                 BLOCK_HALF=triton.next_power_of_2(p.rotary_dim // 2))
    if order == kernels.ORDER_Q_FIRST:
        named.update(QK_MAJOR=True, BLOCK_T_K=bt_k, BLOCK_H_K=bh_k)
    else:
        assert (bt_k, bh_k) == (bt, bh)  # one block shape for q and k
    if order == kernels.ORDER_DECODE:
        named["LOADS_FIRST"] = True
    return named

# name: (layout, batch, seqlen, heads_q, heads_k, head_dim, dtype), and the rule's answer.
CASES = {
    # q programs, then k programs with chunks sized for k's heads.
    # k narrower than q: k's programs of twice the tokens (twice q's bytes), at q's warps.
    "llama3-8b": (("bshd", 4, 4096, 32, 8, 128, torch.bfloat16),
                  dict(BLOCK_T=1, BLOCK_H=8, num_warps=2, QK_MAJOR=True, BLOCK_T_K=2, BLOCK_H_K=8)),
    "llama2-7b": (("bshd", 4, 4096, 32, 32, 128, torch.bfloat16),
                  dict(BLOCK_T=1, BLOCK_H=8, num_warps=2, QK_MAJOR=True, BLOCK_T_K=1, BLOCK_H_K=8)),
    # Table rows of one sequence, 2.5% of the bytes: a token block's q and k chunks together (the k
    # programs would read the rows again).
    "long-32k": (("bshd", 1, 32768, 32, 8, 128, torch.bfloat16), dict(BLOCK_T=1, BLOCK_H=8, num_warps=2)),
    "d64": (("bshd", 8, 2048, 16, 16, 64, torch.bfloat16),
            dict(BLOCK_T=1, BLOCK_H=16, num_warps=2, QK_MAJOR=True, BLOCK_T_K=1, BLOCK_H_K=16)),
    "fp32": (("bshd", 2, 4096, 32, 8, 128, torch.float32),
             dict(BLOCK_T=1, BLOCK_H=4, num_warps=2, QK_MAJOR=True, BLOCK_T_K=2, BLOCK_H_K=4)),
    "varlen": (("thd", 1, 131072, 32, 8, 128, torch.bfloat16), dict(BLOCK_T=4, BLOCK_H=2, num_warps=2)),
    "decode": (("bshd", 64, 1, 32, 8, 128, torch.bfloat16),
               dict(BLOCK_T=1, BLOCK_H=8, num_warps=4, LOADS_FIRST=True)),
}


def _problem(layout, batch, seqlen, hq, hk, d, dtype, positions=None, offsets=None):
    # The validated Problem of full-size CPU tensors (never written: their pages are not touched).
    shape = (seqlen,) if layout == "thd" else (batch, seqlen)
    q = torch.empty(*shape, hq, d, dtype=dtype)
    k = torch.empty(*shape, hk, d, dtype=dtype)
    cos = torch.empty(seqlen, d // 2)
    cu = torch.tensor([0, seqlen], dtype=torch.int32) if layout == "thd" else None
    return check(q, k, cos, cos.clone(), positions=positions, offsets=offsets, cu_seqlens=cu, max_seqlen=None,
                 layout=layout, rotary_dim=None, inplace=False)


@pytest.mark.parametrize("name", list(CASES))
def test_rule_for_benchmark_shapes(name):
    dims, want = CASES[name]
    p = _problem(*dims)
    itemsize = torch.empty((), dtype=dims[-1]).element_size()
    cfg = config(p, itemsize)
    assert {k: cfg[k] for k in want} == want
    assert cfg.get("QK_MAJOR", False) == want.get("QK_MAJOR", False)
    if name != "decode":  # decode: one token, 1 KB chunks (latency-bound, its own rule)
        # About _PROGRAM_BYTES of q/k per program, one 16-byte vector per thread and half-tile.
        half_tile = cfg["BLOCK_T"] * cfg["BLOCK_H"] * cfg["BLOCK_HALF"] * itemsize
        assert 2 * half_tile == _PROGRAM_BYTES
        assert half_tile == 16 * 32 * cfg["num_warps"]
        if cfg.get("QK_MAJOR"):  # k's programs as full as q's; twice as full when k has fewer heads
            k_tile = cfg["BLOCK_T_K"] * cfg["BLOCK_H_K"] * cfg["BLOCK_HALF"] * itemsize
            assert k_tile == half_tile * (2 if dims[4] < dims[3] else 1)
        assert not cfg.get("LOADS_FIRST", False)  # table rows first: the dense shapes' measured best


@pytest.mark.parametrize("heads_q,heads_k,head_dim", [(1, 1, 128), (2, 1, 32), (48, 8, 256), (3, 0, 96)])
def test_rule_stays_in_bounds_for_odd_shapes(heads_q, heads_k, head_dim):
    p = _problem("bshd", 2, 5000, heads_q, heads_k, head_dim, torch.bfloat16)
    cfg = config(p, 2)
    assert 1 <= cfg["num_warps"] <= 8 and cfg["BLOCK_T"] >= 1 and cfg["BLOCK_H"] >= 1
    assert cfg["BLOCK_HALF"] >= head_dim // 2
    assert cfg["BLOCK_H"] <= max(1, 2 * max(heads_q, heads_k))


@pytest.mark.parametrize("heads_q,heads_k", [(32, 8), (28, 4), (32, 1), (64, 8), (32, 32)])
def test_narrow_k_programs_take_twice_the_tokens(heads_q, heads_k):
    # GQA / MQA: k's programs have k's own chunk of heads and twice the tokens that k alone would get
    # (measured 0.2-1.0 points faster), at the warps of q alone; k as wide as q: q's blocks.
    p = _problem("bshd", 4, 4096, heads_q, heads_k, 128, torch.bfloat16)
    cfg = config(p, 2)
    q_alone = config(_problem("bshd", 4, 4096, heads_q, 0, 128, torch.bfloat16), 2)
    k_alone = config(_problem("bshd", 4, 4096, heads_k, 0, 128, torch.bfloat16), 2)
    assert cfg["QK_MAJOR"] and (cfg["BLOCK_T"], cfg["BLOCK_H"]) == (q_alone["BLOCK_T"], q_alone["BLOCK_H"])
    factor = 2 if heads_k < heads_q else 1
    assert (cfg["BLOCK_T_K"], cfg["BLOCK_H_K"]) == (factor * k_alone["BLOCK_T"], k_alone["BLOCK_H"])
    assert cfg["num_warps"] == q_alone["num_warps"]


def test_freqs_rule_halves_the_warps():
    # freqs=: programs of _FREQS_PROGRAM_BYTES with half the warps for 2-byte data (each thread computes the
    # cos/sin of its own slices: fewer threads, fewer repeats); decode keeps its rule.
    from rope_triton.angles import freq_table, inv_freq_and_scale

    def cfg(seqlen, dtype, freqs, layout="bshd"):
        shape = (4 * seqlen,) if layout == "thd" else (4, seqlen)
        q = torch.empty(*shape, 32, 128, dtype=dtype)
        k = torch.empty(*shape, 8, 128, dtype=dtype)
        ft = freq_table(inv_freq_and_scale(128)[0])
        tables = (ft, ft) if freqs else (torch.empty(seqlen, 64), torch.empty(seqlen, 64))
        cu = torch.tensor([0, seqlen, 2 * seqlen, 3 * seqlen, 4 * seqlen], dtype=torch.int32)
        packed = {"cu_seqlens": cu, "max_seqlen": seqlen} if layout == "thd" else {}
        p = check(q, k, *tables, positions=None, offsets=None, cu_seqlens=packed.get("cu_seqlens"),
                  max_seqlen=packed.get("max_seqlen"), layout=layout, rotary_dim=None, inplace=False,
                  freqs=freqs)
        return config(p, q.element_size())

    with_tables, with_freqs = cfg(4096, torch.bfloat16, False), cfg(4096, torch.bfloat16, True)
    # Tables: 2 KB programs (8 heads, 2 warps); freqs: 4 KB programs (16 heads) at the same 2 warps.
    assert (with_tables["BLOCK_H"], with_tables["num_warps"]) == (8, 2)
    assert with_freqs == {**with_tables, "BLOCK_H": 16, "BLOCK_T_K": 2 * with_tables["BLOCK_T_K"]}
    # float32: freqs keep 4 KB programs at full warps (8 heads, 4 warps), tables 2 KB (4 heads, 2 warps).
    fp32_freqs, fp32_tables = cfg(4096, torch.float32, True), cfg(4096, torch.float32, False)
    assert (fp32_freqs["BLOCK_H"], fp32_freqs["num_warps"]) == (8, 4)
    assert (fp32_tables["BLOCK_H"], fp32_tables["num_warps"]) == (4, 2)
    assert cfg(1, torch.bfloat16, True) == cfg(1, torch.bfloat16, False)
    # Packed sequences: tables take blocks of 4 tokens; freqs the dense programs (one token, 16 heads).
    thd_tables, thd_freqs = cfg(4096, torch.bfloat16, False, "thd"), cfg(4096, torch.bfloat16, True, "thd")
    assert thd_tables["BLOCK_T"] == 4
    assert (thd_freqs["BLOCK_T"], thd_freqs["BLOCK_H"]) == (1, 16) and not thd_freqs.get("QK_MAJOR")
    assert thd_freqs["num_warps"] == with_freqs["num_warps"]


def test_qk_major_follows_table_row_sharing():
    # q's programs before k's unless unshared table rows pass 1.3% of the bytes (the k programs would read
    # them from DRAM again): llama3-8b's rows are 2.5% of a sequence's bytes, shared by the batch of 4 when
    # the positions are the default or broadcast over the batch.
    llama = ("bshd", 4, 4096, 32, 8, 128, torch.bfloat16)
    arange = torch.arange(4096)
    shared = {
        "default": {},
        "int offset": {"offsets": 0},
        "positions (seq,)": {"positions": arange},
        "positions (1, seq)": {"positions": arange[None]},
        "positions expanded": {"positions": arange[None].expand(4, -1)},
    }
    for name, kw in shared.items():
        p = _problem(*llama, **kw)
        assert p.rows_shared == 4, name
        assert config(p, 2).get("QK_MAJOR"), name
    unshared = {
        "positions (batch, seq)": {"positions": arange.repeat(4, 1)},
        "tensor offsets": {"offsets": torch.zeros(4, dtype=torch.int64)},
    }
    for name, kw in unshared.items():
        p = _problem(*llama, **kw)
        assert p.rows_shared == 1, name
        assert not config(p, 2).get("QK_MAJOR"), name
    # One sequence: unshared rows; computed cos/sin read none, so long-32k goes q-major with freqs.
    from rope_triton.angles import freq_table, inv_freq_and_scale

    q, k = (torch.empty(1, 32768, 32, 128, dtype=torch.bfloat16),
            torch.empty(1, 32768, 8, 128, dtype=torch.bfloat16))
    ft = freq_table(inv_freq_and_scale(128)[0])
    p = check(q, k, ft, ft, positions=None, offsets=None, cu_seqlens=None, max_seqlen=None, layout="bshd",
              rotary_dim=None, inplace=False, freqs=True)
    cfg = config(p, 2)
    assert cfg.get("QK_MAJOR") and (cfg["BLOCK_T_K"], cfg["BLOCK_H_K"]) == (4, 8) and cfg["num_warps"] == 2
