"""``rope-triton bench``: check, then time, rope-triton against its peers on named shapes.

For every shape: build the inputs and tables, check every provider against the float64 reference
(a provider that is wrong is reported FAILED and not timed), then time every (provider, pass) and a
same-bytes ``copy_`` round-robin, several repeats, and report medians across repeats.

How each pass is timed (per call, one input set per call, cycling through the sets):

- ``fwd``: the forward alone, on inputs that do not require grad.
- ``bwd``: the backward alone. Autograd providers record the forward graph of every input set once,
  outside the timed region; the timed call is ``torch.autograd.grad(outputs, (q, k), grads,
  retain_graph=True)``. ``rope-triton-inplace`` times ``apply_rotary(gq, gk, cos, sin, conjugate=True,
  inplace=True)``, the conjugate rotation of the gradients in place.
- ``fwdbwd``: forward on leaves that require grad, then ``torch.autograd.grad`` (in place: both calls).
  Its bytes and its copy ceiling count twice (two passes over q and k). Shapes with a fused norm: the
  backward also reads the saved q and k, so its bytes and ceiling count 1.5 passes (fwdbwd 2.5).

On CUDA the device time is the median of CUDA-event timings of single calls, as in
``triton.testing.do_bench`` (warm-up first, L2 cleared before every call), with the host's share hidden
behind a spin kernel queued first (:func:`cuda_device_time_us`): host cost is its own column. The input sets
together hold more than three times the L2 (decode-1 would need more than the 1024 sets allowed), so that
back-to-back calls, as in the wall time loop, do not find their inputs in cache either. Host wall time is
the median over 5 loops of back-to-back calls (up to 200 in all), each synchronised at both ends, with the
garbage collector paused; an ``empty-launch`` row (a Triton launch of an empty kernel) is its ceiling.
On a machine without CUDA, small variants of the shapes run through the CPU path (plain PyTorch, or the
Triton interpreter under ``TRITON_INTERPRET=1``) and both numbers are host times from
``time.perf_counter``, reported with their min-max spread over the repeats and without a % of the copy
(whose CPU time is not stable enough to be a ceiling: see :mod:`rope_triton.bench.report`).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import report as bench_report
from .providers import PASSES, PROVIDERS, CheckResult, Impl, check_impl, cos_sin_read
from .report import EMPTY_LAUNCH
from .shapes import (
    DEFAULT_SHAPES,
    DTYPE_NAMES,
    DTYPES,
    QUICK_SHAPES,
    QUICK_SHAPES_CPU,
    SHAPES,
    ShapeSpec,
    Workload,
    build_workload,
)

__all__ = [
    "SHAPES", "Timing", "bench_shape", "build_parser", "cuda_device_time_us", "device_time_us", "main",
    "wall_time_us",
]


# --------------------------------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How to time: the device, the repeats and how long each measurement runs."""

    cuda: bool
    repeats: int
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    cpu_calls: int = 10
    wall_calls: int = 200
    wall_budget_ms: float = 50.0


class Cycle:
    """Calls per-set callables in turn, so that consecutive calls touch different memory."""

    __slots__ = ("calls", "i")

    def __init__(self, calls: Sequence[Callable[[], object]]) -> None:
        self.calls, self.i = list(calls), 0

    def __call__(self) -> object:
        fn = self.calls[self.i]
        self.i = (self.i + 1) % len(self.calls)
        return fn()


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def device_time_us(fn: Callable[[], object], timing: Timing) -> float:
    """Median device time of one call of ``fn``, in microseconds.

    Parameters
    ----------
    fn : callable
    timing : Timing
        On CUDA: :func:`cuda_device_time_us` with ``timing.warmup_ms`` / ``timing.rep_ms``. On the CPU:
        one warm-up call, then the median of ``timing.cpu_calls`` calls timed with ``perf_counter``.

    Returns
    -------
    float
    """
    if timing.cuda:
        return cuda_device_time_us(fn, warmup_ms=timing.warmup_ms, rep_ms=timing.rep_ms)
    fn()
    times = []
    for _ in range(timing.cpu_calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


# Bytes written before every timed call to push the previous call's data out of the L2 (as Triton's
# do_bench does), and SM cycles per microsecond assumed for the spin (H100/H200 boost: 1.98).
_FLUSH_BYTES = 256 * 2**20
_CYCLES_PER_US = 2000


def cuda_device_time_us(fn: Callable[[], object], *, warmup_ms: float = 25.0, rep_ms: float = 100.0) -> float:
    """Median device time of one call of ``fn`` on CUDA, in microseconds, with the host's share hidden.

    Each timed call is preceded, as in ``triton.testing.do_bench``, by a write of 256 MiB that clears the
    L2, and then by a spin kernel (``torch.cuda._sleep``) longer than the call's host time: the host queues
    the whole call while the device spins, so the CUDA events around the call time its device work only,
    gaps between its kernels included. Without the spin, a call that costs more host time than device
    time (an autograd backward, a decode step) would be timed at its host speed; that cost is reported
    separately as host wall time (:func:`wall_time_us`).

    Parameters
    ----------
    fn : callable
    warmup_ms, rep_ms : float
        Device time spent on warm-up calls and on timed calls (each at least 5 / 10 calls).

    Returns
    -------
    float
    """
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        fn()
    host_us = 1e6 * (time.perf_counter() - start) / 5
    torch.cuda.synchronize()
    flush = torch.empty(_FLUSH_BYTES, dtype=torch.int8, device="cuda")
    spin = getattr(torch.cuda, "_sleep", None)
    cycles = int(1.5 * host_us * _CYCLES_PER_US) + 20_000

    def timed_calls(n: int) -> list[float]:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)
        ]
        for begin, end in events:
            flush.zero_()
            if spin is not None:
                spin(cycles)
            begin.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [1e3 * begin.elapsed_time(end) for begin, end in events]

    estimate = statistics.median(timed_calls(5))
    flush_us = _FLUSH_BYTES / 2e6  # at about 2 TB/s of writes
    per_call = estimate + flush_us + cycles / _CYCLES_PER_US
    timed_calls(max(5, min(1000, int(1e3 * warmup_ms / per_call))))
    return statistics.median(timed_calls(max(10, min(2000, int(1e3 * rep_ms / per_call)))))


def wall_time_us(fn: Callable[[], object], timing: Timing, device_us: float, chunks: int = 5) -> float:
    """Host wall time per call of ``fn`` in back-to-back loops, in microseconds.

    ``timing.wall_calls`` calls (fewer when the device time says that would take longer than
    ``timing.wall_budget_ms``, at least 5) run in ``chunks`` loops, each synchronised at both ends; the
    median of the loops' per-call times is returned, so that one interruption of the host (another
    thread, the OS) does not move it. The garbage collector is paused meanwhile, as :mod:`timeit` does:
    a collection is the process's cost, not the call's (the benchmark's process holds every provider's
    compiled graphs, which makes its full collections long).
    """
    budget = int(1e3 * timing.wall_budget_ms / max(device_us, 1e-3))
    n = max(min(timing.wall_calls, budget), min(5, timing.wall_calls))
    chunks = max(1, min(chunks, n))
    per_chunk = max(1, n // chunks)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        times = []
        for _ in range(chunks):
            _sync(timing.cuda)
            start = time.perf_counter()
            for _ in range(per_chunk):
                fn()
            _sync(timing.cuda)
            times.append(1e6 * (time.perf_counter() - start) / per_chunk)
    finally:
        if gc_was_enabled:
            gc.enable()
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# One shape: check, prepare, time round-robin, summarise.
# --------------------------------------------------------------------------------------------------


def _row(wl: Workload, provider: str, pass_: str, status: str, note: str = "", **values) -> dict:
    row = {
        "shape": wl.spec.name,
        "dims": wl.spec.describe(),
        "dtype": DTYPE_NAMES.get(wl.dtype, str(wl.dtype)),
        "provider": provider,
        "pass": pass_,
        "status": status,
        "bytes": wl.pass_bytes(pass_),
        "n_sets": len(wl.sets),
        "cos_sin": cos_sin_read(provider, wl),
        "note": note,
    }
    row.update(values)
    return row


def _build_impls(
    wl, providers, requested, passes
) -> tuple[dict[str, Impl], dict[str, dict[str, CheckResult]], list[dict]]:
    """Build and check every provider: (passing impls, their check results, rows for the others)."""
    impls, checks, rows = {}, {}, []
    for name in providers:
        prov = PROVIDERS[name]
        reason = prov.skip_reason(wl, name in requested)
        if reason:
            rows += [_row(wl, name, p, "SKIPPED", reason) for p in passes]
            continue
        try:
            impl = prov.build(wl)
            result = check_impl(impl, wl, passes)
        except Exception as err:  # a peer that crashes on a shape is a result, not a bench failure
            rows += [_row(wl, name, p, "ERROR", f"{type(err).__name__}: {err}"[:300]) for p in passes]
            continue
        if all(r.ok for r in result.values()):
            impls[name], checks[name] = impl, result
            continue
        for p in passes:
            c = _pass_check(result, p)
            rows.append(_row(wl, name, p, "FAILED", c.note, max_abs_err=c.max_abs, max_ulp_err=c.max_ulp))
    return impls, checks, rows


def _pass_check(checks: dict[str, CheckResult], pass_: str) -> CheckResult:
    if pass_ == "fwdbwd":
        return CheckResult.worst([checks["fwd"], checks["bwd"]])
    return checks[pass_]


def _copy_calls(wl: Workload) -> list[Callable[[], object]]:
    q, k = wl.sets[0]
    n = q.numel() + k.numel()
    calls = []
    for _ in wl.sets:
        src = torch.randn(n, generator=wl.gen, device=wl.device, dtype=wl.dtype)
        calls.append(partial_copy(torch.empty_like(src), src))
    return calls


def _launch_calls(wl: Workload) -> list[Callable[[], object]]:
    """The host-cost reference: launches of a Triton kernel that does nothing (one program), timed like
    the providers, so that every host wall column can be read against a bare launch in the same run."""
    from .empty_launch import noop_kernel

    x = torch.empty(1, device=wl.device)
    grid = (1,)

    def empty_launch():
        return noop_kernel[grid](x)

    return [empty_launch]


def partial_copy(dst: torch.Tensor, src: torch.Tensor) -> Callable[[], object]:
    """The ceiling's timed call: one device-to-device ``dst.copy_(src)``."""

    def copy():
        return dst.copy_(src)

    return copy


def _summarise(wl, name, pass_, samples, copy_us, check) -> dict:
    times = [t for t, _ in samples]
    time_us = statistics.median(times)
    # The copy moves one pass's bytes of q and k: a pass that moves more is held to that much more copy.
    ceiling = copy_us * wl.pass_bytes(pass_) / wl.bytes_per_pass
    # On a CPU no % of the copy: its time is not stable enough (see rope_triton.bench.report).
    cuda = wl.device.type == "cuda"
    values = {
        "time_us": time_us,
        "time_min_us": min(times),
        "time_max_us": max(times),
        "wall_us": statistics.median(w for _, w in samples),
        "copy_us": ceiling,
        "pct_copy": 100.0 * ceiling / time_us if time_us > 0 and cuda else float("nan"),
        "repeats": len(samples),
    }
    values["gbps"] = wl.pass_bytes(pass_) / time_us / 1e3
    if check is not None:
        values.update(max_abs_err=check.max_abs, max_ulp_err=check.max_ulp)
    return _row(wl, name, pass_, "ok" if check is not None else "ceiling", **values)


def bench_shape(
    spec: ShapeSpec,
    *,
    device: torch.device,
    providers: Sequence[str],
    requested: Sequence[str],
    passes: Sequence[str],
    timing: Timing,
    seed: int,
    progress,
) -> list[dict]:
    """Check every provider on one shape, then time the passing ones and the same-bytes copy.

    Parameters
    ----------
    spec : ShapeSpec
    device : torch.device
    providers : sequence of str
        Names in :data:`rope_triton.bench.providers.PROVIDERS`.
    requested : sequence of str
        Providers the user named explicitly (some are skipped on the CPU unless named).
    passes : sequence of str
        Among ``"fwd"``, ``"bwd"``, ``"fwdbwd"``.
    timing : Timing
    seed : int
    progress
        A :func:`rope_triton.bench.report.make_progress` context.

    Returns
    -------
    list of dict
        One row per (provider, pass) and one for the copy, with the columns of
        :data:`rope_triton.bench.report.COLUMNS`; status ``ok``, ``ceiling``, ``FAILED`` (wrong result, not
        timed), ``ERROR`` (raised) or ``SKIPPED``.
    """
    progress.update(f"{spec.name}: building inputs and references")
    wl = build_workload(spec, device, seed=seed)
    progress.update(f"{spec.name}: checking against float64")
    impls, checks, rows = _build_impls(wl, providers, requested, passes)

    jobs: dict[tuple[str, str], Cycle] = {("copy", "copy"): Cycle(_copy_calls(wl))}
    if timing.cuda:
        jobs[(EMPTY_LAUNCH, "launch")] = Cycle(_launch_calls(wl))
    for name, impl in impls.items():
        for p in passes:
            try:
                jobs[(name, p)] = Cycle([impl.timed(p, q, k) for q, k in wl.sets])
                jobs[(name, p)]()  # compile / autotune / first-call work stays out of the timings
            except Exception as err:
                rows.append(_row(wl, name, p, "ERROR", f"{type(err).__name__}: {err}"[:300]))
                jobs.pop((name, p), None)
    _sync(timing.cuda)
    progress.advance(1)
    progress.add_total(timing.repeats * len(jobs))

    samples: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in jobs}
    keys = list(jobs)
    for r in range(timing.repeats):
        # Round-robin, starting one job later each repeat, so no provider always follows the same one.
        for key in keys[r % len(keys):] + keys[: r % len(keys)]:
            progress.update(f"{spec.name}: {key[0]} {key[1]} (repeat {r + 1}/{timing.repeats})")
            if key in jobs:
                try:
                    dev = device_time_us(jobs[key], timing)
                    samples[key].append((dev, wall_time_us(jobs[key], timing, dev)))
                except Exception as err:
                    rows.append(_row(wl, key[0], key[1], "ERROR", f"{type(err).__name__}: {err}"[:300]))
                    del jobs[key]
            progress.advance(1)

    copy_us = statistics.median(t for t, _ in samples[("copy", "copy")])
    timed = [_summarise(wl, "copy", "copy", samples[("copy", "copy")], copy_us, None)]
    launch = samples.get((EMPTY_LAUNCH, "launch"))
    if launch:
        timed.append(_row(
            wl, EMPTY_LAUNCH, "launch", "ceiling", "host-cost reference: a Triton launch of an empty kernel",
            time_us=statistics.median(t for t, _ in launch), wall_us=statistics.median(w for _, w in launch),
            repeats=len(launch), bytes=0,
        ))
    for (name, p), s in samples.items():
        if name not in ("copy", EMPTY_LAUNCH) and (name, p) in jobs and s:
            timed.append(_summarise(wl, name, p, s, copy_us, _pass_check(checks[name], p)))
    del jobs, impls, wl
    gc.collect()
    if timing.cuda:
        torch.cuda.empty_cache()
    return timed + rows


# --------------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------------


def _shape_error_row(spec: ShapeSpec, err: Exception) -> dict:
    return {
        "shape": spec.name, "dims": spec.describe(), "dtype": DTYPE_NAMES.get(spec.dtype, str(spec.dtype)),
        "provider": "(all)", "pass": "", "status": "ERROR", "note": f"{type(err).__name__}: {err}"[:300],
    }


def _csv_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            unknown = ", ".join(bad) or "(empty)"
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return names

    return parse


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``rope-triton bench``."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check rope-triton and its peers against a float64 reference, then time forward, "
        "backward and forward+backward against a same-bytes copy.",
    )
    parser.add_argument(
        "--shapes", type=_csv_list(list(SHAPES)), metavar="NAME[,NAME]",
        help=f"default: {','.join(DEFAULT_SHAPES)} (--quick: {','.join(QUICK_SHAPES)}; without CUDA: "
        f"{','.join(QUICK_SHAPES_CPU)}, shrunk); all: {','.join(SHAPES)}",
    )
    parser.add_argument(
        "--providers", type=_csv_list(list(PROVIDERS)), metavar="NAME[,NAME]",
        help=f"default: {','.join(PROVIDERS)}",
    )
    parser.add_argument("--dtype", choices=list(DTYPES), help="override every shape's dtype")
    parser.add_argument(
        "--passes", type=_csv_list(PASSES), default=list(PASSES), metavar="PASS[,PASS]",
        help="default: fwd,bwd,fwdbwd",
    )
    parser.add_argument("--quick", action="store_true", help="fewer shapes, fewer repeats, shorter timings")
    parser.add_argument(
        "--repeats", type=int, help="round-robin repeats (default 5, --quick 2; on a CPU 5, --quick 3)"
    )
    parser.add_argument("--out", default="bench-out", help="output directory (default: bench-out/)")
    parser.add_argument("--no-plot", action="store_true", help="do not write results.png")
    parser.add_argument("--seed", type=int, default=0, help="seed of lengths, offsets and inputs")
    return parser


def _timing(args: argparse.Namespace, cuda: bool) -> Timing:
    if cuda:
        repeats = args.repeats or (2 if args.quick else 5)
        return Timing(True, repeats, *((10.0, 40.0) if args.quick else (25.0, 100.0)))
    # Host times on a shared CPU move from repeat to repeat: enough repeats for a median and a spread,
    # with the whole run well under a minute.
    repeats = args.repeats or (3 if args.quick else 5)
    calls = 5 if args.quick else 9
    return Timing(False, repeats, cpu_calls=calls, wall_calls=calls)


def _shape_specs(args: argparse.Namespace, cuda: bool) -> list[ShapeSpec]:
    if args.shapes:
        names = args.shapes
    elif not cuda:
        names = QUICK_SHAPES_CPU
    else:
        names = QUICK_SHAPES if args.quick else DEFAULT_SHAPES
    specs = [SHAPES[n] for n in names]
    if args.dtype:
        specs = [replace(s, dtype=DTYPES[args.dtype]) for s in specs]
    return specs if cuda else [s.cpu_variant() for s in specs]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the benchmark.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default ``sys.argv[1:]``); see ``--help``.
    prog : str, optional
        Program name shown in usage.

    Returns
    -------
    int
        0, or 1 when a provider failed its correctness check or rope-triton raised.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    timing = _timing(args, cuda)
    specs = _shape_specs(args, cuda)
    requested = args.providers or []
    providers = args.providers or list(PROVIDERS)
    console = bench_report.Console()
    console.print(bench_report.device_banner(device))

    rows: list[dict] = []
    start = time.perf_counter()
    with bench_report.make_progress(total=len(specs), console=console) as progress:
        for spec in specs:
            try:
                rows += bench_shape(
                    spec, device=device, providers=providers, requested=requested, passes=args.passes,
                    timing=timing, seed=args.seed, progress=progress,
                )
            except Exception as err:  # e.g. out of memory building one shape: report it, go on
                rows.append(_shape_error_row(spec, err))
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
    elapsed = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = bench_report.metadata(argv, vars(args), device, timing, elapsed)
    bench_report.write_csv(rows, out / "results.csv")
    bench_report.write_json(rows, meta, out / "results.json")
    plot_note = None
    if not args.no_plot:
        plot_note = bench_report.write_plot(rows, out / "results.png", meta["device_name"], cuda=cuda)
    bench_report.print_table(rows, console, cuda=cuda)
    plotted = not args.no_plot and plot_note is None
    console.print(bench_report.footer(rows, out, plotted, elapsed, cuda, plot_note=plot_note))
    failed = any(
        r["status"] == "FAILED"
        or (r["status"] == "ERROR" and r["provider"].startswith(("rope-triton", "(all)")))
        for r in rows
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m rope_triton.bench"))
