"""The registered op, torch.compile, CUDA graphs, and the plain-PyTorch CPU path."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_rotary_close, make_qk, random_tables, ref64

import rope_triton
from rope_triton._core import op as _ops


def test_pure_pytorch_path_matches(monkeypatch):
    # Without the interpreter, CPU tensors go through rope_triton.reference in float32: same semantics.
    monkeypatch.setattr(_ops, "triton_runs_on", lambda device: False)
    q, k = make_qk("thd", 1, 7, 3, 1, 16, torch.bfloat16, torch.device("cpu"), "packed")
    cos, sin = random_tables(10, 6, torch.device("cpu"))
    kw = {"layout": "thd", "cu_seqlens": torch.tensor([0, 2, 7]), "offsets": torch.tensor([3, 1]),
          "rotary_dim": 12}
    rq, rk = ref64(q, k, cos, sin, interleaved=True, **kw)
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin, interleaved=True, **kw)
    assert torch.equal(q, q0) and torch.equal(k, k0)
    assert_rotary_close(q_out, rq, q0, layout="thd", rotary_dim=12, interleaved=True)
    assert_rotary_close(k_out, rk, k0, layout="thd", rotary_dim=12, interleaved=True)
    # In place, with autograd through the pure path.
    base = q.float().requires_grad_()
    x = base * 1
    out, _ = rope_triton.apply_rotary(x, None, cos, sin, inplace=True, **kw)
    assert out is x
    out.sum().backward()
    assert base.grad is not None and torch.isfinite(base.grad).all()


def test_opcheck(device):
    q, k = make_qk("bshd", 2, 3, 2, 1, 8, torch.float32, device)
    cos, sin = random_tables(6, 4, device)
    pos = torch.randint(0, 6, (2, 3), device=device)
    args = (q, k, cos, sin, None, None, pos, None, None, 0, "bshd", False, 8, False)
    # Fake-tensor tracing of a Triton launch needs compiled Triton: the CPU interpreter runs it for real.
    utils = ("test_schema", "test_faketensor") if device.type == "cuda" else ("test_schema",)
    torch.library.opcheck(torch.ops.rope_triton.rotary.default, args, test_utils=utils)
    torch.library.opcheck(
        torch.ops.rope_triton.rotary_.default, (q.clone(), k.clone(), *args[2:]), test_utils=utils
    )


def _rope_loss(q, k, cos, sin, offsets, inplace):
    q = q * 2  # something before, for a real graph (and a non-leaf for in place)
    k = k * 2
    qo, ko = rope_triton.apply_rotary(q, k, cos, sin, offsets=offsets, inplace=inplace, layout="bhsd")
    return (qo.float() ** 2).sum() + (ko.float() * 3).sum(), qo, ko


@pytest.mark.parametrize("tables", ["shared", "per-sequence"])
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_compile_fullgraph(inplace, tables, device):
    # aot_eager on the CPU (the interpreter cannot be compiled by inductor); inductor on the GPU.
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    q, k = make_qk("bhsd", 2, 5, 4, 2, 16, torch.float32, device)
    cos, sin = random_tables(24 if tables == "per-sequence" else 12, 8, device)
    if tables == "per-sequence":  # (batch, rows, R/2): each batch row its own table
        cos, sin = cos.reshape(2, 12, 8), sin.reshape(2, 12, 8)
    offsets = torch.tensor([0, 7], device=device)
    compiled = torch.compile(_rope_loss, fullgraph=True, backend=backend)
    results = []
    for fn in (_rope_loss, compiled):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        loss, qo, ko = fn(qq, kk, cos, sin, offsets, inplace)
        loss.backward()
        results.append((qo.detach(), ko.detach(), qq.grad, kk.grad))
    for eager, comp in zip(*results, strict=True):
        if device.type == "cuda":
            # Same kernel both ways: bitwise equal outputs and gradients.
            assert torch.equal(eager, comp)
        else:
            # On the CPU the compiled graph runs the PyTorch path (whose multiply-adds are fused), eager the
            # interpreted kernel: equal up to float32 rounding.
            torch.testing.assert_close(eager, comp)


@pytest.mark.gpu
def test_compile_no_recompile_across_offsets(device):
    q, k = make_qk("bshd", 2, 5, 4, 2, 16, torch.bfloat16, device)
    cos, sin = random_tables(64, 8, device)
    torch._dynamo.reset()
    fn = torch.compile(lambda q, k, o: rope_triton.apply_rotary(q, k, cos, sin, offsets=o), fullgraph=True)
    for start in range(3):
        qo, _ = fn(q, k, torch.full((2,), start * 10, device=device))
        rq, _ = ref64(q, k, cos, sin, offsets=torch.full((2,), start * 10, device=device))
        assert_rotary_close(qo, rq, q, layout="bshd", rotary_dim=16, interleaved=False)


@pytest.mark.gpu
def test_cuda_graph_replay_with_new_positions(device):
    # Serving: capture once, then change positions/offsets in place and replay.
    q, k = make_qk("bshd", 8, 1, 8, 2, 128, torch.bfloat16, device)
    cos, sin = random_tables(4096, 64, device)
    offsets = torch.zeros(8, dtype=torch.int64, device=device)
    static_out = {}

    def step():
        static_out["q"], static_out["k"] = rope_triton.apply_rotary(q, k, cos, sin, offsets=offsets)

    step()  # warm-up compiles the kernel outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for _ in range(3):
        offsets.copy_(torch.randint(0, 4095, (8,), device=device))
        q.copy_(torch.randn_like(q))
        graph.replay()
        torch.cuda.synchronize()
        rq, rk = ref64(q, k, cos, sin, offsets=offsets)
        assert_rotary_close(static_out["q"], rq, q, layout="bshd", rotary_dim=128, interleaved=False)
        assert_rotary_close(static_out["k"], rk, k, layout="bshd", rotary_dim=128, interleaved=False)


@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
def test_replayed_launches(inplace, device):
    # The second call of a signature replays the recorded launch: same results as the validating path,
    # new data and int offsets honoured, and the host check on int offsets still applies. (Offsets
    # 3, 10, 17, 24 share Triton's specialization: none is 1 or a multiple of 16.)
    from rope_triton._core import op as _ops

    cos, sin = random_tables(64, 16, device)
    for step in range(4):
        q, k = make_qk("bshd", 3, 1, 4, 2, 32, torch.bfloat16, device, "packed")
        q0, k0 = q.clone(), k.clone()
        before = len(_ops.PLANS._plans)
        offset = 3 + step * 7
        q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin, offsets=offset, inplace=inplace)
        rq, rk = ref64(q0, k0, cos, sin, offsets=offset)
        assert_rotary_close(q_out, rq, q0, layout="bshd", rotary_dim=32, interleaved=False)
        assert_rotary_close(k_out, rk, k0, layout="bshd", rotary_dim=32, interleaved=False)
        assert (q_out is q) == inplace
        if step:
            assert len(_ops.PLANS._plans) == before  # replayed, not recorded again
    with pytest.raises(ValueError, match="at least 65 rows, got 64"):
        rope_triton.apply_rotary(q, k, cos, sin, offsets=64, inplace=inplace)


def _replay_call(kind, device, dtype=torch.bfloat16):
    """Fresh inputs of one fixed signature per ``kind``: (q, k, apply_rotary kwargs, reference kwargs)."""
    heads_k = 0 if kind == "k-without-heads" else 2
    layout = "thd" if kind == "cu_seqlens" else "bshd"
    q, k = make_qk(layout, 1 if layout == "thd" else 3, 5, 4, heads_k, 32, dtype, device, "packed")
    cos, sin = random_tables(64, 16, device)
    kw = {"cos": cos, "sin": sin, "layout": layout}
    if kind in ("tensor-offsets", "k-without-heads"):
        kw["offsets"] = torch.randint(0, 59, (3,), device=device)
    elif kind == "positions":
        kw["positions"] = torch.randint(0, 64, (3, 5), device=device)
    elif kind == "cu_seqlens":
        kw |= {"cu_seqlens": torch.tensor([0, 2, 5], device=device, dtype=torch.int32), "max_seqlen": 3}
    elif kind == "split-tables":
        from rope_triton import angles as freqs

        inv_freq, _ = freqs.inv_freq_and_scale(32, base=10000.0)
        ch, sh, cl, sl = (t.to(device) for t in freqs.split_tables(inv_freq, 4096, low_bits=4))
        kw |= {"cos": ch, "sin": sh, "cos_lo": cl, "sin_lo": sl, "offsets": 4000}
    elif kind == "freqs":
        from rope_triton import angles as freqs

        inv_freq, _ = freqs.inv_freq_and_scale(32, base=10000.0)
        kw |= {"cos": None, "sin": None, "freqs": freqs.freq_table(inv_freq, device=device),
               "offsets": 123_456}
    if kind == "k-none":
        k = None
    return q, k, kw


@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize(
    "kind",
    ["tensor-offsets", "positions", "cu_seqlens", "split-tables", "freqs", "k-none", "k-without-heads"],
)
def test_replay_of_every_argument_kind(kind, inplace, device):
    # The replay takes the addresses read with the plan key: each tensor slot must land in its own
    # argument, on new tensors of the same signature (the second and third calls replay).
    table_bound = 2.0 if kind == "split-tables" else 3.0 if kind == "freqs" else 1.0
    for step in range(3):
        q, k, kw = _replay_call(kind, device)
        q0, k0 = q.clone(), (None if k is None else k.clone())
        before = len(_ops.PLANS._plans)
        q_out, k_out = rope_triton.apply_rotary(q, k, inplace=inplace, **kw)
        if step:
            assert len(_ops.PLANS._plans) == before, "not replayed"
        ref_kw = {key: v for key, v in kw.items() if key not in ("cos", "sin")}
        rq, rk = ref64(q0, k0, kw["cos"], kw["sin"], **ref_kw)
        close = dict(layout=kw["layout"], rotary_dim=32, interleaved=False, table_bound=table_bound)
        assert_rotary_close(q_out, rq, q0, **close)
        if k is None:
            assert k_out is None
        else:
            assert_rotary_close(k_out, rk, k0, **close)
            assert (k_out is k) == inplace
        assert (q_out is q) == inplace
        if not inplace:
            assert torch.equal(q, q0)


@pytest.mark.gpu
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("heads_k", [8, 16], ids=["k-blocks", "same-blocks"])
def test_replay_of_q_major_launches(heads_k, inplace, device):
    # Past 256 tokens the grid is q-major (every q program, then every k program; with fewer k heads, k's
    # programs have their own block shape): its recorded plan replays on new tensors like any other.
    from rope_triton._core import kernels
    from rope_triton._core.checks import check
    from rope_triton._core.launch import config

    cos, sin = random_tables(64, 16, device)
    for step in range(3):
        q, k = make_qk("bshd", 8, 40, 16, heads_k, 32, torch.bfloat16, device, "packed")
        if step == 0:
            p = check(q, k, cos, sin, positions=None, offsets=None, cu_seqlens=None, max_seqlen=None,
                      layout="bshd", rotary_dim=None, inplace=inplace)
            order, bt, bh, bt_k, bh_k = config(p, 2)["PROGRAM"]
            assert order == kernels.ORDER_Q_FIRST and ((bt_k, bh_k) == (bt, bh)) == (heads_k == 16)
        q0, k0 = q.clone(), k.clone()
        before = len(_ops.PLANS._plans)
        offset = 3 + step * 7  # one Triton specialization (none is 1 or a multiple of 16): one plan
        q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin, offsets=offset, inplace=inplace)
        if step:
            assert len(_ops.PLANS._plans) == before, "not replayed"
        rq, rk = ref64(q0, k0, cos, sin, offsets=offset)
        assert_rotary_close(q_out, rq, q0, layout="bshd", rotary_dim=32, interleaved=False)
        assert_rotary_close(k_out, rk, k0, layout="bshd", rotary_dim=32, interleaved=False)


def test_signature_keys_what_decides_a_launch():
    # CPU: the key logic alone.
    from rope_triton._core.launch import signature
    from rope_triton._core.operands import Operands

    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 2, 8)
    cos, sin = random_tables(16, 4, "cpu")
    offsets = torch.tensor([1, 5])

    def key(q=q, k=k, cos=cos, sin=sin, positions=None, offsets=offsets):
        tensor_offsets = offsets if isinstance(offsets, torch.Tensor) else None
        return signature(Operands(q, k, cos, sin, None, None, positions, tensor_offsets, None), offsets,
                         ("opts",))

    base = key()
    # Same signature on other tensors: same key; other strides or dtype: another key.
    assert key(q.clone(), k.clone(), cos.clone(), sin.clone(), offsets=offsets.clone()) == base
    assert key(q.transpose(1, 2)) != base
    assert key(q.half()) != base
    # An int offset: keyed by what Triton specializes on.
    assert key(offsets=7) == key(offsets=9) != key(offsets=16)
    assert key(offsets=1) != key(offsets=7)
    # Anything else that is not a tensor: no key (the validating path explains).
    assert key(positions=7, offsets=None) is None
    assert key(offsets=2.0) is None
    assert key(offsets=True) is None


@pytest.mark.gpu
def test_training_steps_replay_forward_and_backward(device):
    # A training loop repeats one signature: from the second step on, forward and backward replay
    # their recorded launches (no new plans) and the gradients stay right.
    from rope_triton._core import op as _ops

    cos, sin = random_tables(16, 8, device)
    for step in range(3):
        q, k = make_qk("bhsd", 2, 16, 4, 2, 16, torch.bfloat16, device)
        q.requires_grad_()
        k.requires_grad_()
        before = len(_ops.PLANS._plans)
        qo, ko = rope_triton.apply_rotary(q, k, cos, sin, layout="bhsd")
        gq, gk = torch.randn_like(qo), torch.randn_like(ko)
        dq, dk = torch.autograd.grad((qo, ko), (q, k), (gq, gk))
        if step:
            assert len(_ops.PLANS._plans) == before
        rq, rk = ref64(gq, gk, cos, sin, layout="bhsd", conjugate=True)
        assert_rotary_close(dq, rq, gq, layout="bhsd", rotary_dim=16, interleaved=False)
        assert_rotary_close(dk, rk, gk, layout="bhsd", rotary_dim=16, interleaved=False)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_tensors_on_a_second_gpu():
    # Triton launches on the current device; tensors on cuda:1 while cuda:0 is current must still work.
    device = torch.device("cuda", 1)
    q, k = make_qk("bshd", 2, 3, 2, 1, 16, torch.bfloat16, device)
    cos, sin = random_tables(3, 8, device)
    for _ in range(2):  # the second call must not replay a launch recorded for another device
        q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin)
        rq, rk = ref64(q, k, cos, sin)
        assert_rotary_close(q_out, rq, q, layout="bshd", rotary_dim=16, interleaved=False)
        assert_rotary_close(k_out, rk, k, layout="bshd", rotary_dim=16, interleaved=False)


@pytest.mark.gpu
def test_replay_with_grad_uses_each_calls_int_offset(device):
    # With autograd, a replayed signature takes its validated problem from the plan: the int offset
    # (forward and backward) must still be this call's.
    cos, sin = random_tables(64, 8, device)
    for offset in (3, 10, 17):  # one Triton specialization: none is 1 or a multiple of 16
        q = torch.randn(2, 4, 2, 16, device=device, requires_grad=True)
        out, _ = rope_triton.apply_rotary(q, None, cos, sin, offsets=offset)
        g = torch.randn_like(out)
        (dq,) = torch.autograd.grad(out, q, g)
        rq, _ = ref64(q.detach(), None, cos, sin, offsets=offset)
        rg, _ = ref64(g, None, cos, sin, offsets=offset, conjugate=True)
        assert_rotary_close(out, rq, q.detach(), layout="bshd", rotary_dim=16, interleaved=False)
        assert_rotary_close(dq, rg, g, layout="bshd", rotary_dim=16, interleaved=False)


def test_compile_fullgraph_freqs(device):
    # freqs= goes through the registered op too (its flag is part of the schema).
    from rope_triton import angles as freqs

    backend = "inductor" if device.type == "cuda" else "aot_eager"
    ft = freqs.freq_table(freqs.inv_freq_and_scale(16)[0], device=device)
    q, k = make_qk("bshd", 2, 5, 4, 2, 16, torch.float32, device)

    def fn(q, k):
        return rope_triton.apply_rotary(q * 2, k, freqs=ft, offsets=1000)

    eager, comp = fn(q, k), torch.compile(fn, fullgraph=True, backend=backend)(q, k)
    want = ref64(q * 2, k, None, None, freqs=ft, offsets=1000)
    for a, b, w, x in zip(eager, comp, want, (q * 2, k), strict=True):
        if device.type == "cuda":
            assert torch.equal(a, b)  # the same kernel both ways
        # On the CPU the compiled graph runs the PyTorch path (float64 angles), eager the interpreted kernel.
        for out in (a, b):
            assert_rotary_close(out, w, x, layout="bshd", rotary_dim=16, interleaved=False, table_bound=3.0)


def _hf_width_rope(q, k, cos, sin):
    # Hugging Face's (B, S, R) tables, read with rotary_dim = their width: a size, symbolic under dynamic
    # shapes.
    return rope_triton.apply_rotary(q * 2, k, cos, sin, layout="bhsd", rotary_dim=cos.shape[-1])


def _hf_width_inputs(seqlen, device):
    q, k = make_qk("bhsd", 2, seqlen, 4, 2, 16, torch.float32, device)
    cos, sin = random_tables(2 * seqlen, 8, device)
    # cat(freqs, freqs), as HF's rotary embedding returns them: (B, S, R) per sequence.
    cos, sin = (torch.cat((t, t), -1).reshape(2, seqlen, 16) for t in (cos, sin))
    return q, k, cos, sin


def test_compile_dynamic_shapes_size_derived_rotary_dim(device):
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    torch._dynamo.reset()
    compiled = torch.compile(_hf_width_rope, fullgraph=True, dynamic=True, backend=backend)
    for seqlen in (5, 7):  # one graph for both: the sizes are symbolic
        q, k, cos, sin = _hf_width_inputs(seqlen, device)
        want = ref64(q * 2, k, cos, sin, layout="bhsd", rotary_dim=16)
        for out, w, x in zip(compiled(q, k, cos, sin), want, (q * 2, k), strict=True):
            assert_rotary_close(out, w, x, layout="bhsd", rotary_dim=16, interleaved=False)


def test_symbolic_trace_size_derived_rotary_dim():
    # make_fx / non-strict export run the Python code itself on symbolic sizes: check() sees real SymInts.
    from torch.fx.experimental.proxy_tensor import make_fx

    q, k, cos, sin = _hf_width_inputs(5, "cpu")
    graph = make_fx(_hf_width_rope, tracing_mode="symbolic")(q, k, cos, sin)
    q, k, cos, sin = _hf_width_inputs(7, "cpu")
    want = ref64(q * 2, k, cos, sin, layout="bhsd", rotary_dim=16)
    for out, w, x in zip(graph(q, k, cos, sin), want, (q * 2, k), strict=True):
        assert_rotary_close(out, w, x, layout="bhsd", rotary_dim=16, interleaved=False)


def _rope_views_loss(a, cos, sin):
    x = a * 2
    # q and k sliced from one fused activation (v after them), rotated in place.
    rope_triton.apply_rotary(x[:, :, :3], x[:, :, 3:5], cos, sin, inplace=True)
    return (x.float() ** 2).sum(), x


def test_compile_fullgraph_inplace_on_views(device):
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    cos, sin = random_tables(5, 8, device)
    a = torch.randn(2, 5, 7, 16, device=device)
    compiled = torch.compile(_rope_views_loss, fullgraph=True, backend=backend)
    results = []
    for fn in (_rope_views_loss, compiled):
        leaf = a.clone().requires_grad_()
        loss, x = fn(leaf, cos, sin)
        loss.backward()
        results.append((x.detach(), leaf.grad))
    for eager, comp in zip(*results, strict=True):
        assert torch.equal(eager, comp)
    x = results[0][0]
    want, _ = ref64(a[:, :, :3] * 2, None, cos, sin)
    assert_rotary_close(x[:, :, :3], want, a[:, :, :3] * 2, layout="bshd", rotary_dim=16, interleaved=False)
    assert torch.equal(x[:, :, 5:], a[:, :, 5:] * 2)


@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("offset_kind", ["int", "tensor"])
def test_cpu_path_reuses_validated_problems(monkeypatch, offset_kind, inplace):
    # Without the interpreter, CPU calls take the PyTorch path; a repeat of a validated signature skips
    # validation (the decode step's host time) and still gives the float64 rotation, per call's offset;
    # in place, it tells autograd (version counters) as the first call does.
    from rope_triton._core import op as _ops

    monkeypatch.setattr(_ops, "_INTERPRETED", False)
    monkeypatch.setattr(_ops, "PROBLEMS", {})
    cos, sin = random_tables(40, 8, "cpu")
    for _step, offset in enumerate((3, 7, 11)):
        # (q and k of one buffer are validated on every in-place call: see the next test)
        q, k = make_qk("bshd", 2, 1, 4, 2, 16, torch.bfloat16, "cpu", "padded" if inplace else "packed")
        q0, k0 = q.clone(), k.clone()
        given = offset if offset_kind == "int" else torch.tensor([offset, 2 * offset])
        versions = q._version, k._version
        q_out, k_out = rope_triton.apply_rotary(q, k, cos, sin, offsets=given, inplace=inplace)
        assert len(_ops.PROBLEMS) == 1, "one validated problem for the three calls"
        if inplace:
            assert q_out is q and k_out is k
            assert q._version > versions[0] and k._version > versions[1]
        else:
            assert torch.equal(q, q0) and torch.equal(k, k0), "out of place: the inputs are left alone"
        rq, rk = ref64(q0, k0, cos, sin, offsets=given)
        assert_rotary_close(q_out, rq, q0, layout="bshd", rotary_dim=16, interleaved=False)
        assert_rotary_close(k_out, rk, k0, layout="bshd", rotary_dim=16, interleaved=False)
    # An offset past the tables is still refused, naming the argument.
    with pytest.raises(ValueError, match="^cos: positions up to 40"):
        rope_triton.apply_rotary(q, k, cos, sin, offsets=40)


def test_inplace_on_one_buffer_is_validated_every_call(monkeypatch):
    # q and k in one buffer: whether they overlap depends on where they lie in it, so no call skips the
    # check, even after a validated call of the same shapes and strides.
    from rope_triton._core import op as _ops

    monkeypatch.setattr(_ops, "_INTERPRETED", False)
    monkeypatch.setattr(_ops, "PROBLEMS", {})
    cos, sin = random_tables(8, 4, "cpu")
    qkv = torch.randn(1, 2, 6, 8)
    rope_triton.apply_rotary(qkv[:, :, 0:2], qkv[:, :, 2:4], cos, sin, inplace=True)
    with pytest.raises(ValueError, match="^k"):
        rope_triton.apply_rotary(qkv[:, :, 0:2], qkv[:, :, 1:3], cos, sin, inplace=True)
