"""Tests for ``rope_triton.bench.precision``: the numbers it prints are right and show what they claim."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from rope_triton.bench import precision

SMALL = ["--tokens", "4", "--heads", "2"]
# The real kernel: on the GPU when there is one, else under the interpreter (tests/conftest.py).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """main() on a small config: (stdout, JSON rows)."""
    import contextlib
    import io

    path = tmp_path_factory.mktemp("precision") / "out.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert precision.main([*SMALL, "--device", DEVICE, "--json", str(path)]) == 0
    return buf.getvalue(), json.loads(path.read_text())["rows"]


def test_rows_cover_every_base_dtype_and_position(small_run):
    _, rows = small_run
    keys = {(r["base"], r["dtype"], r["position"]) for r in rows}
    assert keys == {
        (b, d, p)
        for b in precision.DEFAULT_BASES
        for d in ("fp32", "bf16")
        for p in precision.DEFAULT_POSITIONS
    }
    assert all((r["floor"] is None) == (r["dtype"] == "fp32") for r in rows)


def test_printed_table_matches_json(small_run):
    out, rows = small_run
    lines = out.splitlines()
    header = lines[1].split()
    assert header == ["base", "dtype", "position", "rope-triton", "hf", "floor"]
    body = [line.split() for line in lines[3:]]
    assert len(body) == len(rows)
    for cells, r in zip(body, rows, strict=True):
        assert cells[:3] == [f"{r['base']:g}", r["dtype"], f"{r['position']}..{r['position'] + 3}"]
        # 'max_abs / rel' per method, printed to 3 significant digits.
        for i, method in enumerate(precision.METHODS):
            got = cells[3 + 3 * i : 6 + 3 * i] if r[method] is not None else None
            if got is None:
                assert cells[3 + 3 * i] == "-"
                continue
            assert float(got[0]) == pytest.approx(r[method]["max_abs"], rel=5e-3)
            assert float(got[2]) == pytest.approx(r[method]["rel"], rel=5e-3)


def test_ours_is_exact_and_hf_is_not_at_1m(small_run):
    _, rows = small_run
    for r in rows:
        if r["dtype"] == "fp32":
            assert r["rope-triton"]["rel"] <= 1e-6, r
        else:
            # One rounding to bf16 of a float32 result within ~1e-7 of exact: the floor, up to ties.
            assert r["rope-triton"]["rel"] <= 1.01 * r["floor"]["rel"] + 1e-6, r
    at_1m = [r for r in rows if r["position"] == max(precision.DEFAULT_POSITIONS)]
    for r in at_1m:
        # float32 angles are off by ~0.06 rad at 1M: far above our float32 error, and above bf16's floor.
        factor = 10 if r["dtype"] == "fp32" else 2
        assert r["hf"]["rel"] > factor * r["rope-triton"]["rel"], r
        assert r["hf"]["max_abs"] > factor * r["rope-triton"]["max_abs"], r


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_hf_rotation_is_transformers_bit_for_bit(dtype):
    """The 'hf' column is what transformers' Llama modules compute, exactly."""
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_theta=500000.0)
    pos = torch.arange(131072, 131072 + 5)
    x = torch.randn(1, 5, 2, 128).to(dtype)  # (B, S, H, D)
    cos, sin = LlamaRotaryEmbedding(config)(x, pos[None])
    want, _ = apply_rotary_pos_emb(x, x, cos, sin, unsqueeze_dim=2)
    assert torch.equal(precision.hf_rotation(x, pos, 500000.0), want)


def test_exact_rotation_is_a_rotation_by_p_inv_freq():
    # Pair (i, i + 64) at position p turns by p * base**(-2i/128): check one pair against math.cos/sin.
    import math

    x = torch.randn(1, 1, 1, 128, dtype=torch.float64)
    p, i, base = 1048575, 5, 10000.0
    y = precision.exact_rotation(x, torch.tensor([p]), base)
    theta = p * base ** (-2 * i / 128)
    c, s = math.cos(theta), math.sin(theta)
    x1, x2 = x[0, 0, 0, i].item(), x[0, 0, 0, 64 + i].item()
    assert y[0, 0, 0, i].item() == pytest.approx(x1 * c - x2 * s, abs=1e-12)
    assert y[0, 0, 0, 64 + i].item() == pytest.approx(x2 * c + x1 * s, abs=1e-12)


def test_command_line_without_interpreter_and_no_triton_at_import():
    """`python -m rope_triton.bench.precision` on the PyTorch path; importing the module loads no Triton."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import sys, rope_triton.bench.precision as p; assert 'triton' not in sys.modules; "
        "sys.exit(p.main(sys.argv[1:]))"
    )
    args = ["--positions", "1048512", "--bases", "10000", "--dtypes", "fp32", "--device", "cpu", *SMALL]
    res = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    (row,) = [line.split() for line in res.stdout.splitlines() if line.startswith("10000")]
    assert float(row[5]) <= 1e-6 < float(row[8])  # ours vs hf relative error at 1M


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        precision.main(["--head-dim", "7"])
    assert exc.value.code == 2 and "--head-dim" in capsys.readouterr().err
