"""Output of ``rope-triton bench``: progress, the final table, results.csv / .json / .png, run metadata.

rich (progress bar and table) and matplotlib (plot) are optional: without rich, tqdm or plain prints
and a plain-text table are used; without matplotlib the plot is skipped, and the closing lines say so.

On a CPU the times are host times (``time.perf_counter``), reported with their spread over the repeats
(min and max); no "% of copy" is computed there: a CPU ``copy_`` shares the cores with everything else on
the machine, and its time moved from 0.19 to 9 ms between two runs of the same command, which made a
ratio to it meaningless.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

COLUMNS = (
    "shape", "dims", "dtype", "provider", "pass", "status",
    "time_us", "time_min_us", "time_max_us", "gbps", "pct_copy", "copy_us", "wall_us",
    "max_abs_err", "max_ulp_err", "bytes", "n_sets", "repeats", "cos_sin", "note",
)
PASS_ORDER = {"copy": 0, "launch": 1, "fwd": 2, "bwd": 3, "fwdbwd": 4}
# The host-cost reference row's provider (pass "launch"): a Triton launch of an empty kernel.
EMPTY_LAUNCH = "empty-launch"


# --------------------------------------------------------------------------------------------------
# Console and progress.
# --------------------------------------------------------------------------------------------------


class Console:
    """rich's console when rich is installed, else ``print``; text is never parsed as markup."""

    def __init__(self) -> None:
        try:
            from rich.console import Console as RichConsole
        except ImportError:
            self.rich = None
        else:
            self.rich = RichConsole()
            # Piped output would get rich's default 80 columns and a table squeezed into ellipses.
            if not self.rich.is_terminal:
                self.rich = RichConsole(width=160)

    def print(self, obj: object = "") -> None:
        """Print text (or a rich renderable when rich is installed)."""
        if self.rich is None:
            print(obj, flush=True)
        else:
            self.rich.print(obj, markup=False, highlight=False)


class _PlainProgress:
    """Progress as a printed line every few seconds, for when neither rich nor tqdm is installed."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.last = total, 0, 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        print(f"[{self.done}/{self.total}] done", flush=True)

    def update(self, description: str) -> None:
        if time.monotonic() - self.last > 2.0:
            self.last = time.monotonic()
            print(f"[{self.done}/{self.total}] {description}", flush=True)

    def advance(self, n: int) -> None:
        self.done += n

    def add_total(self, n: int) -> None:
        self.total += n


class _TqdmProgress:
    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def update(self, description: str) -> None:
        self.bar.set_description_str(description)

    def advance(self, n: int) -> None:
        self.bar.update(n)

    def add_total(self, n: int) -> None:
        self.bar.total += n
        self.bar.refresh()


class _RichProgress:
    # rich redraws from a thread of its own by default, which takes the GIL in the middle of the host
    # wall-time loops; redrawn here from the main thread instead, between measurements, at most this often.
    # (No difference was measurable on a host whose own launch cost moves by 1.5x within a minute; kept so
    # that no thread runs in the timed loops.)
    AUTO_REFRESH = False
    REDRAW_S = 0.2

    def __init__(self, total: int, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=self.AUTO_REFRESH,
        )
        self.task = self.progress.add_task("bench", total=total)
        self.drawn = 0.0

    def _redraw(self) -> None:
        now = time.monotonic()
        if not self.AUTO_REFRESH and now - self.drawn >= self.REDRAW_S:
            self.drawn = now
            self.progress.refresh()

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def update(self, description: str) -> None:
        self.progress.update(self.task, description=description)
        self._redraw()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)
        self._redraw()

    def add_total(self, n: int) -> None:
        self.progress.update(self.task, total=self.progress.tasks[0].total + n)


def make_progress(total: int, console: Console):
    """A progress context: ``update(description)``, ``advance(n)``, ``add_total(n)``.

    rich's progress bar if rich is installed, else tqdm's, else occasional printed lines.
    """
    if console.rich is not None:
        return _RichProgress(total, console.rich)
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return _PlainProgress(total)
    return _TqdmProgress(total)


# --------------------------------------------------------------------------------------------------
# Metadata.
# --------------------------------------------------------------------------------------------------


def cpu_path() -> str:
    """What ``apply_rotary`` runs on the CPU in this process."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return "the Triton kernel in Triton's interpreter (TRITON_INTERPRET=1)"
    threads = torch.get_num_threads()
    return (
        "plain PyTorch (rope_triton._core.cpu, float32 math; TRITON_INTERPRET is not set), "
        f"{threads} thread{'s' if threads != 1 else ''}"
    )


def device_banner(device: torch.device) -> str:
    """The first line printed: which device, and a warning when it is not a GPU."""
    if device.type == "cuda":
        return f"CUDA device: {torch.cuda.get_device_name(device)}"
    return (
        "NO CUDA DEVICE: these are CPU numbers and say nothing about GPU performance.\n"
        "Running small CPU variants of the shapes (sequences 64x shorter, named '<shape>-cpu'; by default "
        "decode, 64 x 1 token, and long-32k-cpu, 1 x 512 tokens) through "
        f"rope-triton's CPU path: {cpu_path()}.\n"
        "Times are host times, median over the repeats with their min-max spread; no % of a copy (a CPU "
        "copy's time is not stable enough to divide by)."
    )


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout holding this file, or None; ``ROPE_TRITON_GIT_COMMIT`` when
    set (a copy of a working tree run elsewhere can carry a stale ``.git``)."""
    if os.environ.get("ROPE_TRITON_GIT_COMMIT"):
        return os.environ["ROPE_TRITON_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def metadata(argv: Sequence[str], options: dict, device: torch.device, timing, elapsed_s: float) -> dict:
    """Run metadata for results.json.

    Parameters
    ----------
    argv : sequence of str
        The arguments ``bench.main`` was given.
    options : dict
        The parsed options.
    device : torch.device
    timing : bench.Timing
    elapsed_s : float
        Wall time of the whole run.

    Returns
    -------
    dict
    """
    import triton

    from .. import __version__
    from .providers import ULP_TOLERANCE

    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "CPU (no CUDA device)",
        "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None) if cuda else None,
        "cpu_path": None if cuda else cpu_path(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton.__version__,
        "rope_triton": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": shlex.join(sys.argv),
        "argv": list(argv),
        "options": options,
        "timing": asdict(timing),
        "ulp_tolerance": ULP_TOLERANCE,
        "elapsed_s": round(elapsed_s, 2),
        "method": _METHOD_CUDA if cuda else _METHOD_CPU,
    }


_METHOD_CUDA = (
    "device time: median of CUDA-event timings of single calls (L2 cleared before each, as do_bench; "
    "host share hidden behind a spin kernel queued first) per repeat, "
    "median over round-robin repeats; wall: back-to-back loop synchronised at both ends / calls; "
    "bytes = 2*(numel(q)+numel(k))*itemsize per pass (a fused norm's backward: 3*); "
    "pct_copy = same-bytes copy_ time / time"
)
_METHOD_CPU = (
    "host time (CPU): median of single calls timed with time.perf_counter per repeat, median over "
    "round-robin repeats, time_min_us/time_max_us = min/max over the repeats; wall: median of back-to-back "
    "loops / calls; bytes = 2*(numel(q)+numel(k))*itemsize per pass; no pct_copy: a CPU copy's time is "
    "not stable enough to be a ceiling"
)


# --------------------------------------------------------------------------------------------------
# Files.
# --------------------------------------------------------------------------------------------------


def _is_missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _csv_value(v: object) -> object:
    if _is_missing(v):
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v


def write_csv(rows: Sequence[dict], path: Path) -> None:
    """Write one line per row with the columns :data:`COLUMNS` (missing values empty)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in sort_rows(rows):
            writer.writerow({c: _csv_value(row.get(c)) for c in COLUMNS})


def _json_clean(obj: object) -> object:
    # JSON has no NaN or inf: missing numbers become null.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_clean(v) for v in obj]
    return obj


def write_json(rows: Sequence[dict], meta: dict, path: Path) -> None:
    """Write ``{"metadata": meta, "columns": COLUMNS, "rows": rows}``."""
    table = [{c: r.get(c) for c in COLUMNS} for r in sort_rows(rows)]
    doc = {"metadata": meta, "columns": list(COLUMNS), "rows": table}
    path.write_text(json.dumps(_json_clean(doc), indent=1, default=str) + "\n")


PLOT_PASSES = (("fwd", "fwd"), ("bwd", "bwd"), ("fwdbwd", "fwd+bwd"))


def plot_figure(rows: Sequence[dict], title: str = "", cuda: bool = True):
    """The figure of :func:`write_plot`: one panel per pass timed (fwd, bwd, fwd+bwd), a bar per shape and
    provider. On CUDA the bars are % of the same-bytes copy; on a CPU host times in microseconds with their
    min-max spread over the repeats (log scale). None when there is nothing to plot.

    Raises ImportError when matplotlib is missing.
    """
    from matplotlib.figure import Figure  # no pyplot: no global figure or backend state

    key = "pct_copy" if cuda else "time_us"
    ok = [
        r for r in sort_rows(rows)
        if r["status"] == "ok" and r["pass"] in dict(PLOT_PASSES) and not _is_missing(r.get(key))
    ]
    passes = [(p, label) for p, label in PLOT_PASSES if any(r["pass"] == p for r in ok)]
    if not passes:
        return None
    shapes = list(dict.fromkeys(r["shape"] for r in ok))
    providers = list(dict.fromkeys(r["provider"] for r in ok))
    fig_width = max(6.0, 1.6 * len(shapes) + 2)
    fig = Figure(figsize=(fig_width, 3.6 * len(passes)), layout="constrained")
    axes = fig.subplots(len(passes), 1, squeeze=False)[:, 0]
    width = 0.8 / len(providers)
    for ax, (pass_, label) in zip(axes, passes, strict=True):
        by = {(r["shape"], r["provider"]): r for r in ok if r["pass"] == pass_}
        for j, prov in enumerate(providers):
            xs = [i + (j - (len(providers) - 1) / 2) * width for i in range(len(shapes))]
            got = [by.get((s, prov)) for s in shapes]
            # (no bar where a provider did not run: zero on a linear axis, nothing on a log one)
            heights = [r[key] if r else (0.0 if cuda else float("nan")) for r in got]
            if cuda:
                ax.bar(xs, heights, width, label=prov)
                continue
            low = [r[key] - r.get("time_min_us", r[key]) if r else 0.0 for r in got]
            high = [r.get("time_max_us", r[key]) - r[key] if r else 0.0 for r in got]
            ax.bar(xs, heights, width, label=prov, yerr=[low, high], capsize=2)
        if cuda:
            ax.axhline(100.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_ylabel("% of same-bytes copy")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("host time, us (min-max)")
        ax.set_xticks(range(len(shapes)), shapes, rotation=20)
        ax.set_title(f"{label} {('- ' + title) if title else ''}")
    # One legend below the panels (inside them it covered the bars), in as many rows as the width needs.
    handles, labels = axes[0].get_legend_handles_labels()
    ncols = min(len(providers), max(1, int(fig_width / 2.0)))
    fig.legend(handles, labels, loc="outside lower center", fontsize="small", ncols=ncols)
    return fig


def write_plot(rows: Sequence[dict], path: Path, title: str = "", cuda: bool = True) -> str | None:
    """Write :func:`plot_figure` to ``path``.

    Returns None when written, else why not (matplotlib missing, nothing to plot): the closing lines print
    it.
    """
    try:
        fig = plot_figure(rows, title, cuda)
    except ImportError:
        return "matplotlib is not installed (pip install 'rope-triton[bench]', or pip install matplotlib)"
    if fig is None:
        return "no timed rows to plot"
    fig.savefig(path, dpi=120)
    return None


# --------------------------------------------------------------------------------------------------
# Table.
# --------------------------------------------------------------------------------------------------


def sort_rows(rows: Sequence[dict]) -> list[dict]:
    """Rows by shape (in run order), then pass (copy, fwd, bwd, fwdbwd), then provider (run order)."""
    shapes = {s: i for i, s in enumerate(dict.fromkeys(r["shape"] for r in rows))}
    provs = {p: i for i, p in enumerate(dict.fromkeys(r["provider"] for r in rows))}
    return sorted(
        rows, key=lambda r: (shapes[r["shape"]], PASS_ORDER.get(r["pass"], 9), provs[r["provider"]])
    )


def _fmt(v: object, spec: str) -> str:
    if _is_missing(v):
        return ""
    if spec == "~":  # three significant digits without exponents for the usual range
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return format(v, spec)


TABLE = (
    ("shape", "shape", "s"), ("dtype", "dtype", "s"), ("provider", "provider", "s"), ("pass", "pass", "s"),
    ("status", "status", "s"), ("time us", "time_us", ".1f"), ("GB/s", "gbps", "~"),
    ("% copy", "pct_copy", ".1f"), ("wall us", "wall_us", ".1f"), ("max abs err", "max_abs_err", ".2e"),
    ("max ulp", "max_ulp_err", ".2f"),
)
# On a CPU: host times with their spread over the repeats, and no % of a copy.
TABLE_CPU = (
    ("shape", "shape", "s"), ("dtype", "dtype", "s"), ("provider", "provider", "s"), ("pass", "pass", "s"),
    ("status", "status", "s"), ("host us", "time_us", ".1f"), ("min-max us", "spread", "s"),
    ("GB/s", "gbps", "~"), ("wall us", "wall_us", ".1f"), ("max abs err", "max_abs_err", ".2e"),
    ("max ulp", "max_ulp_err", ".2f"),
)
TABLE_TITLE = "rope-triton bench (device time: median over repeats)"
TABLE_TITLE_CPU = "rope-triton bench on the CPU (host time: median over repeats, min-max spread)"


def _spread(row: dict) -> str:
    lo, hi = row.get("time_min_us"), row.get("time_max_us")
    if _is_missing(lo) or _is_missing(hi):
        return ""
    return f"{_fmt(lo, '~')}-{_fmt(hi, '~')}"


def table_columns(cuda: bool = True) -> tuple[tuple[str, str, str], ...]:
    """(header, key, format) of the printed table's columns: :data:`TABLE`, or :data:`TABLE_CPU`."""
    return TABLE if cuda else TABLE_CPU


def table_cells(rows: Sequence[dict], cuda: bool = True) -> list[list[str]]:
    """The printed table's cells, one list per row, in :func:`table_columns` order.

    SKIPPED rows are left out (the footer lists them once per provider).
    """
    shown = [dict(r, spread=_spread(r)) for r in sort_rows(rows) if r["status"] != "SKIPPED"]
    return [[_fmt(r.get(key), spec) for _, key, spec in table_columns(cuda)] for r in shown]


def print_table(rows: Sequence[dict], console: Console, cuda: bool = True) -> None:
    """Print the results table (rich's table, or aligned plain text) under its title."""
    columns = table_columns(cuda)
    cells = table_cells(rows, cuda)
    headers = [h for h, _, _ in columns]
    title = TABLE_TITLE if cuda else TABLE_TITLE_CPU
    if console.rich is not None:
        from rich.table import Table

        table = Table(title=title)
        for h, _, spec in columns:
            table.add_column(h, justify="left" if spec == "s" and h != "min-max us" else "right")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(headers)]
    console.print(title)
    console.print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        console.print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def footer(
    rows: Sequence[dict], out: Path, plotted: bool, elapsed_s: float, cuda: bool, plot_note: str | None = None
) -> str:
    """Closing lines: where the files went (and why no plot, ``plot_note``), failures, skips, and decode host
    overhead."""
    files = ["results.csv", "results.json"] + (["results.png"] if plotted else [])
    lines = [f"Wrote {', '.join(files)} to {out}/ in {elapsed_s:.1f} s."]
    if not plotted and plot_note:
        lines.append(f"No results.png: {plot_note}.")
    for status in ("FAILED", "ERROR", "SKIPPED"):
        shapes: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            if r["status"] == status:
                names = shapes.setdefault((r["provider"], r["note"]), [])
                if r["shape"] not in names:
                    names.append(r["shape"])
        for (prov, note), names in shapes.items():
            lines.append(f"{status}: {prov} on {', '.join(names)}: {note}")
    computed = [r["shape"] for r in rows if r["provider"] == "rope-triton" and r["pass"] == "fwd"
                and r.get("cos_sin") == "freqs"]
    if computed:
        shapes = ", ".join(computed)
        lines.append(f"rope-triton computes cos/sin in the kernel (freqs=, as RotaryEmbedding) on: {shapes}")
    bare = {r["shape"]: r["wall_us"] for r in rows if r["provider"] == EMPTY_LAUNCH}
    for r in rows:
        ours = r["provider"] in ("rope-triton", "rope-triton-inplace")
        if ours and r["pass"] == "fwd" and r["shape"].startswith("decode"):
            if r["status"] == "ok":
                target = "target <= 15 us" if cuda else "CPU: not comparable to the GPU target"
                if r["shape"] in bare:
                    target += f"; an empty Triton launch: {bare[r['shape']]:.1f} us in this run"
                wall = f"{r['wall_us']:.1f} us per call"
                lines.append(f"{r['shape']}: {r['provider']} fwd host wall {wall} ({target})")
    return "\n".join(lines)
