"""Shared by the dev probes: a same-bytes copy job, interleaved timing rounds, and the report against the copy.

Each job is a list of calls (one per input set); every round times every job once per call, so that the
device's drift hits all jobs alike.
"""

import statistics

import torch

from rope_triton.bench import cuda_device_time_us


def copy_jobs(q0, k0, n_sets: int = 1) -> list:
    """``copy_`` calls over as many elements as q0 and k0 together, in their dtype (the ceiling)."""
    n = q0.numel() + k0.numel()
    pairs = [(torch.randn(n, device=q0.device).to(q0.dtype), torch.empty(n, device=q0.device, dtype=q0.dtype))
             for _ in range(n_sets)]
    return [lambda x=x, y=y: y.copy_(x) for x, y in pairs]


def time_rounds(jobs: dict, rounds: int, *, rep_ms: float = 20, rotate: bool = False) -> dict:
    """Median-ready device times per job. ``rotate``: each round starts at another job and every other
    round runs backwards (no job always follows the same one)."""
    for fns in jobs.values():
        for f in fns:
            f()
    torch.cuda.synchronize()
    times = {key: [] for key in jobs}
    keys = list(jobs)
    for r in range(rounds):
        order = keys
        if rotate:
            order = keys[r % len(keys):] + keys[:r % len(keys)]
            order = order if r % 2 == 0 else order[::-1]
        for key in order:
            times[key] += [cuda_device_time_us(f, warmup_ms=5, rep_ms=rep_ms) for f in jobs[key]]
    return times


def report(title: str, times: dict, *, width: int = 36, copy_key: str = "copy_") -> None:
    """One line per job: median us, % of the copy's median, and the spread."""
    copy_us = statistics.median(times[copy_key])
    print(f"== {title}: copy_ {copy_us:.2f} us")
    for key, ts in times.items():
        t = statistics.median(ts)
        print(f"   {key:{width}s} {t:8.2f} us {100 * copy_us / t:6.1f}%   spread {min(ts):.1f}-{max(ts):.1f}")
