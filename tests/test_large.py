"""64-bit indexing: tensors past 2**31 elements and strides past 2**31 (GPU only: tens of GB)."""

from __future__ import annotations

import pytest
import torch
from helpers import FREQS_TABLE_BOUND, assert_rotary_close, random_tables, ref64

import rope_triton

pytestmark = [pytest.mark.gpu, pytest.mark.large]


def _free_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@pytest.mark.parametrize("cos_sin", ["tables", "freqs"])
def test_more_than_2_31_elements(cos_sin, device):
    # Tables: one sequence's unshared rows keep a token block's q and k programs together; computed
    # cos/sin take the q-major grid (k's programs after q's, indices past 2**31 elements in both).
    from rope_triton import angles as freqs

    heads, dim = 32, 128
    seqlen = 2**31 // (heads * dim) + 3  # the last tokens sit past element 2**31
    if _free_bytes() < 3 * seqlen * heads * dim * 2:
        pytest.skip("not enough GPU memory")
    q = torch.empty(1, seqlen, heads, dim, device=device, dtype=torch.bfloat16)
    assert q.numel() > 2**31
    q.normal_()
    k = torch.randn(1, seqlen, 1, dim, device=device, dtype=torch.bfloat16)
    if cos_sin == "tables":
        tables = dict(zip(("cos", "sin"), random_tables(seqlen, dim // 2, device), strict=True))
        bound = 1.0
    else:
        inv_freq, _ = freqs.inv_freq_and_scale(dim, base=10000.0)
        tables = {"cos": None, "sin": None, "freqs": freqs.freq_table(inv_freq, device=device)}
        bound = FREQS_TABLE_BOUND
    q_out, k_out = rope_triton.apply_rotary(q, k, **tables)
    # Check the first and the last tokens (past the int32 wrap) against the reference.
    for sl in (slice(0, 4), slice(seqlen - 8, seqlen)):
        pos = torch.arange(seqlen, device=device)[sl].unsqueeze(0)
        rq, rk = ref64(q[:, sl], k[:, sl], **tables, positions=pos)
        close = dict(layout="bshd", rotary_dim=dim, interleaved=False, table_bound=bound)
        assert_rotary_close(q_out[:, sl], rq, q[:, sl], **close)
        assert_rotary_close(k_out[:, sl], rk, k[:, sl], **close)
    del q, k, q_out, k_out
    torch.cuda.empty_cache()


@pytest.mark.parametrize("inplace", [False, True])
def test_strides_past_2_31(inplace, device):
    big = 2**31 + 64
    if _free_bytes() < 3 * big * 2 + 2**30:
        pytest.skip("not enough GPU memory")
    buf = torch.zeros(3 * big, device=device, dtype=torch.bfloat16)
    # Batch stride past 2**31: each batch row lives in a different 4 GB region of one buffer.
    q = buf.as_strided((3, 4, 2, 64), (big, 128, 64, 1))
    q.copy_(torch.randn(3, 4, 2, 64, device=device))
    q0 = q.clone()
    cos, sin = random_tables(4, 32, device)
    rq, _ = ref64(q0, None, cos, sin)
    out, _ = rope_triton.apply_rotary(q, None, cos, sin, inplace=inplace)
    assert_rotary_close(out, rq, q0, layout="bshd", rotary_dim=64, interleaved=False)
    del buf
    torch.cuda.empty_cache()
