"""``rope-triton bench`` on the CPU: its files and columns, and its correctness gate.

Timings are not checked here (they belong to the benchmark itself). Under this suite the Triton kernel runs
in the interpreter (tests/conftest.py), about 0.15 s a call even for the tiny shapes used here.
"""

import csv
import dataclasses
import importlib.util
import json
import types

import pytest
import torch

from rope_triton.bench import cli
from rope_triton.bench import providers as bench_providers
from rope_triton.bench import report as bench_report
from rope_triton.bench import run as bench
from rope_triton.bench import shapes as bench_shapes
from rope_triton.bench.providers import ULP_TOLERANCE, error_stats, rotate_half
from rope_triton.bench.report import COLUMNS


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = bench.main([
        "--quick", "--repeats", "1", "--shapes", "tiny-decode",
        "--providers", "rope-triton,rope-triton-inplace,rope-triton-freqs,hf-eager", "--passes", "fwd,bwd",
        "--out", str(out),
    ])
    return code, out


def test_quick_run_writes_csv_and_json(quick_run):
    code, out = quick_run
    assert code == 0
    header, rows = _read_csv(out / "results.csv")
    assert header == list(COLUMNS)
    keys = {(r["provider"], r["pass"]) for r in rows}
    providers = ("rope-triton", "rope-triton-inplace", "rope-triton-freqs", "hf-eager")
    expected = {(p, s) for p in providers for s in ("fwd", "bwd")}
    # On a GPU, the host-cost reference too: an empty Triton launch.
    launch = {(bench_report.EMPTY_LAUNCH, "launch")} if torch.cuda.is_available() else set()
    references = {("copy", "copy")} | launch
    assert expected | references == keys
    for r in rows:
        assert r["shape"] == "tiny-decode" and r["dtype"] == "bf16"
        assert r["status"] in ("ok", "ceiling"), r
        assert float(r["time_us"]) > 0 and float(r["wall_us"]) > 0
        if r["provider"] == bench_report.EMPTY_LAUNCH:
            assert int(r["bytes"]) == 0 and r["pct_copy"] == ""
            continue
        assert float(r["gbps"]) > 0
        assert int(r["bytes"]) == 2 * 3 * (4 + 2) * 32 * 2  # read + write q and k, bf16

    doc = json.loads((out / "results.json").read_text())
    meta = doc["metadata"]
    for key in ("device_name", "gpu_name", "torch", "triton", "rope_triton", "git_commit", "date_utc",
                "command_line", "argv"):
        assert key in meta
    expected_gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    assert meta["gpu_name"] == expected_gpu and "--quick" in meta["argv"]
    assert doc["columns"] == list(COLUMNS) and len(doc["rows"]) == len(rows)
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "results.png").stat().st_size > 0


def test_rope_triton_passes_the_correctness_check(quick_run):
    _, out = quick_run
    _, rows = _read_csv(out / "results.csv")
    checked = [r for r in rows if r["provider"].startswith("rope-triton")]
    assert len(checked) == 6
    for r in checked:
        assert r["status"] == "ok"
        assert float(r["max_ulp_err"]) <= ULP_TOLERANCE
        assert 0 < float(r["max_abs_err"]) < 0.1  # bf16 outputs of magnitude ~1: rounding, no more


def test_cos_sin_column_and_the_other_mode(quick_run):
    _, out = quick_run
    _, rows = _read_csv(out / "results.csv")
    read = {r["provider"]: r["cos_sin"] for r in rows}
    # tiny-decode reads tables by default; named explicitly, the freqs= row runs beside it.
    assert read["rope-triton"] == read["rope-triton-inplace"] == "tables"
    assert read["rope-triton-freqs"] == "freqs" and read["hf-eager"] == ""


def test_explicit_mode_duplicating_the_default_is_skipped():
    wl = bench_shapes.build_workload(bench_shapes.SHAPES["tiny"], torch.device("cpu"), n_sets=1)
    assert wl.cos_sin_mode == "tables"
    tables = bench_providers.PROVIDERS["rope-triton-tables"]
    freqs = bench_providers.PROVIDERS["rope-triton-freqs"]
    assert "same as rope-triton" in tables.skip_reason(wl, False)
    # Named in --providers it runs anyway; the other mode always runs.
    assert tables.skip_reason(wl, True) is None and freqs.skip_reason(wl, False) is None
    long_seq = bench_shapes.SHAPES["long-32k"]
    assert bench_shapes.cos_sin_mode(long_seq) == "freqs"
    assert bench_shapes.cos_sin_mode(bench_shapes.SHAPES["llama3-8b"]) == "tables"


def test_wrong_provider_is_failed_and_not_timed(tmp_path, monkeypatch):
    def rotates_backwards(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos - rotate_half(q) * sin, k * cos - rotate_half(k) * sin

    monkeypatch.setattr(bench_providers, "hf_apply_rotary_pos_emb", rotates_backwards)
    code = bench.main([
        "--quick", "--repeats", "1", "--shapes", "tiny", "--providers", "hf-eager",
        "--passes", "fwd,bwd", "--no-plot", "--out", str(tmp_path),
    ])
    assert code == 1
    _, rows = _read_csv(tmp_path / "results.csv")
    failed = [r for r in rows if r["provider"] == "hf-eager"]
    assert {r["pass"] for r in failed} == {"fwd", "bwd"}
    for r in failed:
        assert r["status"] == "FAILED"
        assert float(r["max_ulp_err"]) > ULP_TOLERANCE
        assert r["time_us"] == "" and r["wall_us"] == ""
    assert not (tmp_path / "results.png").exists()


def test_git_commit_can_be_given(monkeypatch):
    # A device run on a copy of the working tree may hold a stale .git: the caller names the commit.
    monkeypatch.setenv("ROPE_TRITON_GIT_COMMIT", "abc123")
    assert bench_report.git_commit() == "abc123"
    monkeypatch.delenv("ROPE_TRITON_GIT_COMMIT")
    assert bench_report.git_commit() != "abc123"


def test_error_stats_in_ulps():
    ref = torch.randn(3, 5, 2, 16, dtype=torch.float64)
    exact = ref.to(torch.bfloat16)
    assert error_stats([exact], [ref], torch.bfloat16).max_ulp <= 0.5
    off = exact.clone()
    off[0, 0, 0, 0] += 0.25
    assert not error_stats([off], [ref], torch.bfloat16).ok
    off[0, 0, 0, 0] = float("nan")
    assert not error_stats([off], [ref], torch.bfloat16).ok


def test_cli_dispatches_to_bench(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])
    assert exc.value.code == 0
    assert "rope-triton bench" in capsys.readouterr().out
    assert cli.main([]) == 2


@pytest.mark.gpu
def test_device_time_excludes_host_time(device):
    # A call that spends 2 ms on the host and microseconds on the device is timed at its device time:
    # the spin queued ahead of each timed call hides the host's share (host time is its own column).
    import time

    x = torch.zeros(1, device=device)

    def slow_host_call():
        time.sleep(0.002)
        x.add_(1)

    assert bench.cuda_device_time_us(slow_host_call, warmup_ms=1, rep_ms=5) < 200


def test_wall_time_is_the_median_loop_with_gc_paused(monkeypatch):
    # One slow loop (an interrupted host) does not move the figure; the collector is paused while timing
    # and restored afterwards.
    import gc

    calls, gc_states = [], []
    clock = iter([0.0, 5e-6, 1.0, 1.0 + 4e-6, 2.0, 2.0 + 1e-3, 3.0, 3.0 + 6e-6, 4.0, 4.0 + 5e-6])
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(clock))

    def fn():
        calls.append(1)
        gc_states.append(gc.isenabled())

    timing = bench.Timing(False, 1, wall_calls=5)
    assert gc.isenabled()
    # Five loops of one call: 5, 4, 1000, 6 and 5 us; the median is 5 us.
    assert bench.wall_time_us(fn, timing, device_us=1.0) == pytest.approx(5.0)
    assert len(calls) == 5 and not any(gc_states) and gc.isenabled()


def test_footer_reads_decode_host_wall_against_an_empty_launch(tmp_path):
    rows = [
        {"shape": "decode", "provider": "rope-triton", "pass": "fwd", "status": "ok", "wall_us": 14.25,
         "note": ""},
        {"shape": "decode", "provider": "rope-triton-inplace", "pass": "fwd", "status": "ok", "wall_us": 11.5,
         "note": ""},
        {"shape": "decode", "provider": bench_report.EMPTY_LAUNCH, "pass": "launch", "status": "ceiling",
         "wall_us": 12.0, "note": ""},
    ]
    text = bench_report.footer(rows, tmp_path, plotted=False, elapsed_s=1.0, cuda=True)
    want = ("decode: rope-triton fwd host wall 14.2 us per call (target <= 15 us; "
            "an empty Triton launch: 12.0 us")
    assert want in text
    assert "decode: rope-triton-inplace fwd host wall 11.5 us per call" in text


def test_partial_interleaved_shape_checks_every_provider(tmp_path):
    # GPT-J's shape (interleaved pairs on part of the head): rope-triton and the Hugging Face formula both
    # pass the float64 check, so the benchmark compares like with like.
    out = tmp_path / "gptj"
    assert bench.main([
        "--quick", "--repeats", "1", "--shapes", "tiny-gptj", "--providers", "rope-triton,hf-eager",
        "--out", str(out),
    ]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    checked = {
        (r["provider"], r["pass"]): r["status"] for r in rows if r["provider"] in ("rope-triton", "hf-eager")
    }
    assert checked and all(status == "ok" for status in checked.values()), checked


# --------------------------------------------------------------------------------------------------
# On a CPU: host times with their spread, no % of the copy, and the plot.
# --------------------------------------------------------------------------------------------------


def _rows(passes=("fwd", "bwd", "fwdbwd")):
    rows = [{"shape": "decode", "provider": "copy", "pass": "copy", "status": "ceiling", "time_us": 20.0,
             "time_min_us": 18.0, "time_max_us": 9000.0, "note": ""}]
    for prov, base in (("rope-triton", 200.0), ("hf-eager", 250.0)):
        for i, p in enumerate(passes):
            t = base * (i + 1)
            rows.append({"shape": "decode", "dtype": "bf16", "provider": prov, "pass": p, "status": "ok",
                         "time_us": t, "time_min_us": t - 5, "time_max_us": t + 40, "pct_copy": 100 * 20 / t,
                         "wall_us": t, "note": ""})
    return rows


def test_cpu_table_shows_host_time_and_its_spread(capsys):
    console = bench_report.Console()
    console.rich = None  # plain text: every character of the table is in the output
    bench_report.print_table(_rows(), console, cuda=False)
    text = capsys.readouterr().out
    assert "host time" in text and "device time" not in text
    header = text.splitlines()[1]
    assert "host us" in header and "min-max us" in header and "% copy" not in header
    assert "195-240" in text  # rope-triton fwd: median 200 us, 195 to 240 us over the repeats
    # On CUDA: device time and % of the copy, as before.
    bench_report.print_table(_rows(), console, cuda=True)
    text = capsys.readouterr().out
    assert "device time" in text and "% copy" in text.splitlines()[1]


def test_cpu_table_title_with_rich(capsys):
    pytest.importorskip("rich")
    console = bench_report.Console()
    bench_report.print_table(_rows(), console, cuda=False)
    text = capsys.readouterr().out
    assert "host time" in text and "device time" not in text and "% copy" not in text


def test_cpu_rows_have_no_pct_of_the_copy(quick_run):
    _, out = quick_run
    _, rows = _read_csv(out / "results.csv")
    if torch.cuda.is_available():
        pytest.skip("CPU rows only")
    for r in rows:
        assert r["pct_copy"] == "", r
        if r["status"] in ("ok", "ceiling"):
            assert float(r["time_min_us"]) <= float(r["time_us"]) <= float(r["time_max_us"])
    meta = json.loads((out / "results.json").read_text())["metadata"]
    assert meta["method"].startswith("host time") and "pct_copy" in meta["method"]


def test_missing_matplotlib_is_said(tmp_path, monkeypatch, capsys):
    import sys

    # `from matplotlib.figure import Figure` raises ImportError as when matplotlib is not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    note = bench_report.write_plot(_rows(), tmp_path / "results.png", cuda=False)
    assert "matplotlib is not installed" in note and not (tmp_path / "results.png").exists()
    code = bench.main([
        "--quick", "--repeats", "1", "--shapes", "tiny", "--providers", "hf-eager", "--passes", "fwd",
        "--out", str(tmp_path),
    ])
    assert code == 0
    text = capsys.readouterr().out
    assert "No results.png: matplotlib is not installed" in text
    assert "results.png" not in text.split("Wrote ")[1].splitlines()[0]
    assert not (tmp_path / "results.png").exists()


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda"])
def test_plot_has_a_panel_per_pass_with_fwd_bwd(cuda, tmp_path):
    pytest.importorskip("matplotlib")
    fig = bench_report.plot_figure(_rows(), "title", cuda=cuda)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split()[0] for t in titles] == ["fwd", "bwd", "fwd+bwd"]
    for ax in fig.axes:
        ylabel = ax.get_ylabel()
        assert ("% of same-bytes copy" in ylabel) if cuda else ("host time" in ylabel)
    # fwd+bwd alone (--passes fwdbwd) is plotted too.
    fig = bench_report.plot_figure(_rows(passes=("fwdbwd",)), cuda=cuda)
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["fwd+bwd"]
    assert bench_report.write_plot(_rows(), tmp_path / "results.png", cuda=cuda) is None
    assert (tmp_path / "results.png").stat().st_size > 0
    # Nothing timed: nothing written, and why.
    assert bench_report.write_plot([], tmp_path / "none.png", cuda=cuda) == "no timed rows to plot"


def test_cpu_default_shapes():
    # Without CUDA: a decode step (64 x 1 token with per-sequence offsets) and 1 x 512 tokens, 32/8 heads
    # x 128, bf16: the shapes where the CPU path is measured against Hugging Face's eager RoPE.
    args = bench.build_parser().parse_args([])
    specs = bench._shape_specs(args, cuda=False)
    dims = {(s.batch, s.seqlen, s.heads_q, s.heads_k, s.head_dim, s.dtype, s.kind) for s in specs}
    bf16 = torch.bfloat16
    assert dims == {(64, 1, 32, 8, 128, bf16, "decode"), (1, 512, 32, 8, 128, bf16, "dense")}


@pytest.mark.parametrize("shape", ["tiny", "tiny-varlen", "tiny-decode"])
def test_hugging_face_like_for_like_providers(shape):
    # hf-eager-rotary builds its cos/sin from the positions in the call, as Hugging Face's rotary module does
    # (rope-triton builds its rows in the call too); rope-triton-hf is the transformers drop-in on hf-eager's
    # tables (what a patched model runs in every layer). Both pass the float64 check; on a CPU they run by
    # default, on CUDA only when named.
    wl = bench_shapes.build_workload(bench_shapes.SHAPES[shape], torch.device("cpu"), n_sets=1)
    for name in ("hf-eager-rotary", "rope-triton-hf"):
        prov = bench_providers.PROVIDERS[name]
        assert prov.skip_reason(wl, False) is None
        result = bench_providers.check_impl(prov.build(wl), wl, ("fwd", "bwd"))
        assert all(r.ok for r in result.values()), (name, result)
    cos, sin = bench_providers.hf_rotary_cos_sin(wl.inv_freq, wl.position_ids, torch.float64)
    assert torch.allclose(cos, wl.hf_cos.double(), atol=1e-2)
    assert torch.allclose(sin, wl.hf_sin.double(), atol=1e-2)
    cuda_wl = types.SimpleNamespace(device=torch.device("cuda"), multi_axis=None, spec=wl.spec)
    assert "CPU" in bench_providers.PROVIDERS["hf-eager-rotary"].skip_reason(cuda_wl, False)
    assert bench_providers.PROVIDERS["rope-triton-hf"].skip_reason(cuda_wl, True) is None


@pytest.mark.parametrize("shape", ["tiny-mrope", "tiny-flux"])
def test_multi_axis_shapes_check_every_provider(shape):
    # Multi-axis shapes: rope-triton rotates from the positions, rope-triton-tables reads one row per token,
    # hf-eager reads HF's full-width tables, hf-eager-rotary builds them from the positions; all pass the
    # float64 check of the same multi-axis rotation (FLUX: adjacent pairs, fractional-capable float ids).
    wl = bench_shapes.build_workload(bench_shapes.SHAPES[shape], torch.device("cpu"), n_sets=1)
    assert wl.cos_sin_mode == "multi-axis" and wl.axis_positions.shape[0] == 3
    for name in ("rope-triton", "rope-triton-inplace", "rope-triton-tables", "hf-eager", "hf-eager-rotary"):
        prov = bench_providers.PROVIDERS[name]
        assert prov.skip_reason(wl, False) is None, name
        result = bench_providers.check_impl(prov.build(wl), wl, ("fwd", "bwd"))
        assert all(r.ok for r in result.values()), (name, result)
    assert "multi-axis" in bench_providers.PROVIDERS["rope-triton-freqs"].skip_reason(wl, False)


@pytest.mark.parametrize("shape", ["tiny-qwen3", "tiny-olmo2"])
def test_norm_shapes_check_every_provider(shape, monkeypatch):
    # Norm shapes: rope-triton is qk_norm_rotary, hf-eager transformers' q/k RMSNorm then RoPE (Qwen3's per
    # head, OLMo 2's per token over all heads); both pass the float64 check of norm-then-rotate, forward and
    # backward. Providers of the rotation alone are skipped; the backward moves 1.5 passes of bytes.
    wl = bench_shapes.build_workload(bench_shapes.SHAPES[shape], torch.device("cpu"), n_sets=1)
    for name in ("rope-triton", "hf-eager"):
        result = bench_providers.check_impl(bench_providers.PROVIDERS[name].build(wl), wl, ("fwd", "bwd"))
        assert all(r.ok for r in result.values()), (name, result)
    for name in ("rope-triton-inplace", "rope-triton-graph", "rope-triton-hf"):
        assert "normalizes" in bench_providers.PROVIDERS[name].skip_reason(wl, True)
    assert wl.pass_bytes("bwd") == 3 * wl.bytes_per_pass // 2
    assert wl.pass_bytes("fwdbwd") == 5 * wl.bytes_per_pass // 2
    # A provider that leaves the norm out fails the check.
    monkeypatch.setattr(bench_providers, "hf_qk_norm", lambda x, w, norm: x)
    result = bench_providers.check_impl(bench_providers.PROVIDERS["hf-eager"].build(wl), wl, ("fwd",))
    assert not result["fwd"].ok


def test_liger_mrope_takes_sectioned_m_rope_only():
    # Liger's qwen2vl_mrope covers Qwen2-VL's sectioned M-RoPE: its sections are read off the MultiAxis;
    # Qwen3-VL's interleaved sections and diffusion N-D RoPE are skipped with the reason.
    from rope_triton.angles import flux, mrope

    assert bench_providers.mrope_sections(mrope(128, [16, 24, 24])) == [16, 24, 24]
    assert bench_providers.mrope_sections(mrope(128, [24, 20, 20], interleaved_sections=True)) is None
    assert bench_providers.mrope_sections(flux()) is None
    wl = bench_shapes.build_workload(bench_shapes.SHAPES["tiny-flux"], torch.device("cpu"), n_sets=1)
    reason = bench_providers.PROVIDERS["liger"].skip_reason(wl, True)
    assert reason is not None


# --------------------------------------------------------------------------------------------------
# The ulp unit: the workload's pairing, and the normalized group of a fused norm.
# --------------------------------------------------------------------------------------------------


def _rotate(x, cos, sin, interleaved):
    """(N, H, D) x turned by per-pair (D/2,) cos/sin, pairs (2i, 2i + 1) or (i, i + D/2), in x's dtype."""
    if interleaved:
        even, odd = x[..., 0::2], x[..., 1::2]
        return torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    lo, hi = x[..., :half], x[..., half:]
    return torch.cat((lo * cos - hi * sin, hi * cos + lo * sin), dim=-1)


def _twice_rounded_rotation(x, cos, sin, interleaved, sign=1.0):
    """A correct peer that rounds twice: each product to bf16 (float32 math), then their sum."""
    x32, cos32, sin32 = x.float(), cos.float(), sin.float()
    if interleaved:
        turned = torch.stack((-x32[..., 1::2], x32[..., 0::2]), dim=-1).flatten(-2)
        wide_cos, wide_sin = cos32.repeat_interleave(2), sin32.repeat_interleave(2)
    else:
        turned = rotate_half(x32)
        wide_cos, wide_sin = torch.cat((cos32, cos32)), torch.cat((sin32, sin32))
    a = (x32 * wide_cos).to(torch.bfloat16).float()
    b = (turned * wide_sin * sign).to(torch.bfloat16).float()
    return (a + b).to(torch.bfloat16)


def test_error_stats_pairs_adjacent_dims_when_interleaved():
    # GPT-J / FLUX pair (2i, 2i + 1). A correct result rounded twice is about an ulp of that pair's norm
    # off; measured against the pair (i, i + D/2) instead, an output cancelled to near zero whose
    # half-split partner is near zero too reports hundreds of ulps.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, 16, generator=gen).to(torch.bfloat16).double()
    theta = torch.rand(8, generator=gen, dtype=torch.float64) * 6.0
    # Row 0: pair (0, 1) = (1, -1) turned by just over pi/4, so y1 = x1 cos + x0 sin cancels to ~1e-4 and
    # both bf16 products round to the same value; pair (8, 9), holding y1's half-split partner y9, is 0.
    x[0, 0] = 0.0
    x[0, 0, :2] = torch.tensor([1.0, -1.0], dtype=torch.float64)
    theta[0] = torch.pi / 4 + 1e-4
    cos, sin = theta.cos(), theta.sin()
    ref = _rotate(x, cos, sin, interleaved=True)
    out = _twice_rounded_rotation(x, cos, sin, interleaved=True)

    paired = error_stats([out], [ref], torch.bfloat16, interleaved=True)
    assert paired.ok and paired.max_ulp <= 2, paired
    half_split = error_stats([out], [ref], torch.bfloat16)
    assert not half_split.ok and half_split.max_ulp > 50, half_split
    # A wrong rotation (the sine's sign flipped) still fails with the right pairing.
    wrong = _twice_rounded_rotation(x, cos, sin, interleaved=True, sign=-1.0)
    assert not error_stats([wrong], [ref], torch.bfloat16, interleaved=True).ok
    # Half-split results keep the strict unit of before: the same twice-rounded peer, half-split, passes.
    ref_hs = _rotate(x, cos, sin, interleaved=False)
    out_hs = _twice_rounded_rotation(x, cos, sin, interleaved=False)
    assert error_stats([out_hs], [ref_hs], torch.bfloat16).max_ulp <= 2


def test_error_stats_partial_rotary_copies_are_their_own_unit():
    # rotary_dim < head_dim: pairs within the rotated dims only; a copied dim must come back exactly
    # (a bf16 rounding of its float64 value is half an ulp of itself), any width does not crash.
    x = torch.randn(4, 2, 32, dtype=torch.float64)
    out = x.to(torch.bfloat16)
    for kwargs in ({"rotary_dim": 8, "interleaved": True}, {"rotary_dim": 8}, {"rotary_dim": 64},
                   {"rotary_dim": 7, "interleaved": True}):
        assert error_stats([out], [x], torch.bfloat16, **kwargs).max_ulp <= 0.5, kwargs
    off = out.clone()
    off[..., 20] += off[..., 20].abs().clamp_min(1e-3) * 0.1  # a copied dim 10 % off
    assert not error_stats([off], [x], torch.bfloat16, rotary_dim=8, interleaved=True).ok


class _Fixed(bench_providers.Impl):
    """A provider that returns given results (the check compares them with the workload's references)."""

    def __init__(self, fwd, bwd):
        self.fwd, self.bwd = fwd, bwd

    def forward(self, q, k):
        return self.fwd

    def backward(self, q, k, gq, gk):
        return self.bwd


@pytest.mark.parametrize("shape", ["tiny-flux", "tiny-gptj"])
def test_check_uses_the_workloads_pairing(shape):
    # A result 1.5 bf16 eps of its adjacent pair's norm off (1.5 to 3 ulps, then rounded) passes the check on
    # shapes that pair adjacent dims; the same result measured with half-split pairs would not.
    wl = bench_shapes.build_workload(bench_shapes.SHAPES[shape], torch.device("cpu"), n_sets=1)
    rotated = wl.multi_axis.rotary_dim if wl.multi_axis is not None else wl.spec.rotary_dim
    assert bench_providers.check_kwargs(wl)["interleaved"]
    eps = torch.finfo(torch.bfloat16).eps

    def off(ref):
        pair = torch.hypot(ref[..., 0:rotated:2], ref[..., 1:rotated:2]).repeat_interleave(2, dim=-1)
        sign = torch.ones_like(pair)
        sign[..., 1::2] = -1
        turned = ref[..., :rotated] + 1.5 * eps * pair * sign
        return torch.cat((turned, ref[..., rotated:]), dim=-1).to(wl.dtype)

    fwd, bwd = tuple(map(off, wl.ref_fwd)), tuple(map(off, wl.ref_bwd))
    result = bench_providers.check_impl(_Fixed(fwd, bwd), wl, ("fwd", "bwd"))
    assert all(r.ok and r.max_ulp <= 4 for r in result.values()), result
    half_split = [error_stats(outs, refs, wl.dtype) for outs, refs in ((fwd, wl.ref_fwd), (bwd, wl.ref_bwd))]
    assert not all(r.ok for r in half_split), half_split


def _rms_norm(x, w, norm):
    """float64 RMSNorm of (N, H, D) x over each head ("rms") or each row's H * D values ("rms_heads")."""
    flat = x.reshape(x.shape[0], -1) if norm == "rms_heads" else x
    rms = flat.pow(2).mean(-1, keepdim=True).add(bench_shapes.NORM_EPS).sqrt()
    return flat / rms, rms


@pytest.mark.parametrize("norm", ["rms", "rms_heads"])
def test_error_stats_norm_unit_is_the_groups_scale(norm):
    # The backward of an RMSNorm, dx = (w g - xhat mean(xhat w g)) / rms, couples a group's elements: here
    # dims 0 and D/2 of one head cancel to 0 exactly. A peer that rounds w g to bf16 (float32 math after)
    # is an ulp of the group's scale off there; its own pair's scale would call that thousands of ulps.
    gen = torch.Generator().manual_seed(1)
    n, h, d = 16, 2, 32
    x = 3 * torch.randn(n, h, d, generator=gen, dtype=torch.float64)
    g = torch.randn(n, h, d, generator=gen, dtype=torch.float64)
    w = 1 + 0.2 * torch.randn(h * d if norm == "rms_heads" else d, generator=gen, dtype=torch.float64)
    shape = (n, h * d) if norm == "rms_heads" else (n, h, d)
    xhat, rms = _rms_norm(x, w, norm)
    g, wide_x = g.reshape(shape).clone(), xhat.reshape(shape)
    cancel = [0, d // 2]
    # w_e g_e = c xhat_e on the cancelled dims, with c the mean of xhat w g: dx_e = 0.
    rest = [j for j in range(shape[-1]) if j not in cancel]
    s = (wide_x[..., rest] * w[rest] * g[..., rest]).sum(-1, keepdim=True)
    c = s / (shape[-1] - wide_x[..., cancel].pow(2).sum(-1, keepdim=True))
    g[..., cancel] = c * wide_x[..., cancel] / w[cancel]

    def backward(wg):
        return (wg - wide_x * (wide_x * wg).mean(-1, keepdim=True)) / rms

    ref = backward(w * g).reshape(n, h, d)
    assert ref.reshape(shape)[..., cancel].abs().max() < 1e-12
    wg = (w.float() * g.float()).to(torch.bfloat16).double()  # the bf16-rounded intermediate
    out = backward(wg).float().to(torch.bfloat16).reshape(n, h, d)
    result = error_stats([out], [ref], torch.bfloat16, norm=norm)
    assert result.ok and result.max_ulp <= 2, result
    assert error_stats([out], [ref], torch.bfloat16).max_ulp > 1000  # the pair's unit alone
    # Rounded once from float64, the result stays within half an ulp.
    assert error_stats([ref.to(torch.bfloat16)], [ref], torch.bfloat16, norm=norm).max_ulp <= 0.5
    # Missing the normalization: forward w x instead of w xhat, backward w g instead of dx.
    fwd_ref = (w * xhat).reshape(n, h, d)
    no_norm_fwd = (w * x.reshape(shape)).reshape(n, h, d).to(torch.bfloat16)
    assert error_stats([(fwd_ref).to(torch.bfloat16)], [fwd_ref], torch.bfloat16, norm=norm).ok
    assert not error_stats([no_norm_fwd], [fwd_ref], torch.bfloat16, norm=norm).ok
    no_norm_bwd = (w * g).reshape(n, h, d).to(torch.bfloat16)
    assert not error_stats([no_norm_bwd], [ref], torch.bfloat16, norm=norm).ok


@pytest.mark.parametrize("shape", ["tiny-qwen3", "tiny-olmo2"])
def test_hf_norm_backward_passes_at_a_size_where_single_elements_cancel(shape, monkeypatch):
    # transformers' q/k norm + RoPE rounds its intermediates to bf16; over 512 tokens some gradient
    # elements cancel far below their head's scale, where the pair's own unit reported tens of ulps.
    spec = dataclasses.replace(bench_shapes.SHAPES[shape], seqlen=512)
    wl = bench_shapes.build_workload(spec, torch.device("cpu"), n_sets=1)
    impl = bench_providers.PROVIDERS["hf-eager"].build(wl)
    result = bench_providers.check_impl(impl, wl, ("fwd", "bwd"))
    assert all(r.ok for r in result.values()), result
    q, k, gq, gk = wl.check_inputs
    pair_unit = error_stats(impl.backward(q, k, gq, gk), wl.ref_bwd, wl.dtype)
    assert pair_unit.max_ulp > ULP_TOLERANCE, pair_unit
    # Without its normalization the provider still fails, forward and backward.
    monkeypatch.setattr(bench_providers, "hf_qk_norm", lambda x, w, norm: x * w.view(-1, x.shape[-1]))
    result = bench_providers.check_impl(bench_providers.PROVIDERS["hf-eager"].build(wl), wl, ("fwd", "bwd"))
    assert not result["fwd"].ok and not result["bwd"].ok, result


# --------------------------------------------------------------------------------------------------
# torch-compile: the bwd pass replays one recorded backward.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["tiny-mrope", "tiny-qwen3"])
def test_compiled_backward_replays_on_one_recorded_graph(shape):
    # The check runs a backward that frees its graph, then the bwd pass replays another with
    # retain_graph=True. A compiled backward that donates its saved buffers (cos/sin built inside the
    # multi-axis graph) refuses that; the provider compiles without donation, whatever the flag was.
    # (torch's own patch, which restores the flag: pytest's monkeypatch would delete the config entry.)
    from torch._functorch import config as functorch_config

    with functorch_config.patch(donated_buffer=True):
        wl = bench_shapes.build_workload(bench_shapes.SHAPES[shape], torch.device("cpu"), n_sets=1)
        impl = bench_providers.PROVIDERS["torch-compile"].build(wl)
        result = bench_providers.check_impl(impl, wl, ("fwd", "bwd"))
        assert all(r.ok for r in result.values()), result
        q, k = wl.sets[0]
        bwd = impl.timed("bwd", q, k)
        first = bwd()
        for _ in range(2):
            again = bwd()
            assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
        impl.timed("fwdbwd", q, k)()
