"""Why the benchmark's decode host wall (in place 16.5-22.0 us) sits above overhead.py's (14.2-14.4 us) on
the same host: the same in-place call and an empty Triton launch, timed as the benchmark times them
(``bench.wall_time_us`` through ``Cycle``), in a fresh process, then after each peer the benchmark builds
(Liger, torch.compile) has been built and run, with the launch hooks and profilers that are set.

Usage: PYTHONPATH=src python3 scripts/dev/decode_wall.py [--shapes decode,decode-1]
"""

import argparse
import cProfile
import io
import pstats
import statistics
import sys

import torch
import triton

from rope_triton.bench import Cycle, Timing, _launch_calls, wall_time_us
from rope_triton.bench_providers import PROVIDERS, InplaceImpl
from rope_triton.bench_shapes import SHAPES, build_workload


def _walls(jobs, timing, n=7):
    return {name: statistics.median(wall_time_us(job, timing, 5.0) for _ in range(n)) for name, job in jobs.items()}


def _hooks():
    rt = getattr(getattr(triton, "knobs", None), "runtime", None)
    return (f"launch_enter_hook={getattr(rt, 'launch_enter_hook', '?')} "
            f"launch_exit_hook={getattr(rt, 'launch_exit_hook', '?')} profile={sys.getprofile()} "
            f"trace={sys.gettrace()}")


def _profile(job, calls=2000):
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        job()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(12)
    return s.getvalue()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="decode,decode-1")
    args = ap.parse_args()
    dev = torch.device("cuda")
    timing = Timing(True, 1)
    for name in args.shapes.split(","):
        wl = build_workload(SHAPES[name], dev, n_sets=2)
        impl = InplaceImpl(wl)
        q, k = wl.sets[0]
        direct = impl.timed("fwd", q, k)
        jobs = {"empty launch": Cycle(_launch_calls(wl)),
                "in place (Cycle)": Cycle([impl.timed("fwd", a, b) for a, b in wl.sets]),
                "in place (direct)": direct}
        for job in jobs.values():
            job()
        stages = [("fresh", None), ("after liger", "liger"), ("after torch-compile", "torch-compile"),
                  ("after hf-eager", "hf-eager"), ("after rope-triton (autograd)", "rope-triton")]
        prof_fresh = None
        for stage, provider in stages:
            if provider:
                try:
                    peer = PROVIDERS[provider].build(wl)
                    for p in ("fwd", "bwd", "fwdbwd"):
                        peer.timed(p, q.clone(), k.clone())()
                except Exception as err:  # noqa: BLE001
                    print(f"{name}: {provider} failed: {type(err).__name__}: {err}"[:200])
            torch.cuda.synchronize()
            walls = _walls(jobs, timing)
            print(f"{name:9s} {stage:30s} " + "  ".join(f"{k} {v:5.1f} us" for k, v in walls.items()))
            if prof_fresh is None:
                prof_fresh = _profile(direct)
        print(_hooks())
        print("== cProfile, fresh\n" + prof_fresh)
        print("== cProfile, after all peers\n" + _profile(direct))


if __name__ == "__main__":
    main()
