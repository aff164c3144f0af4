"""Does rich's redraw thread slow the benchmark's host wall loops? The benchmark's empty launch ran at
11.4-12.7 us and the in-place decode call at 16.3-20.8 us, against 9.7-10.1 and 12.6-13.3 us in
overhead.py (another process, same host, same run). Runs the decode shapes through ``rope_triton.bench``
with rich redrawing from its thread (as before session 6) and from the main thread between measurements,
alternating, and prints the wall columns.

Usage: PYTHONPATH=src python3 scripts/dev/progress_wall.py OUTDIR
"""

import csv
import sys

from rope_triton import bench, bench_report


def main():
    out = sys.argv[1]
    for rnd in range(2):
        for auto in (True, False):
            bench_report._RichProgress.AUTO_REFRESH = auto
            d = f"{out}/auto{int(auto)}-{rnd}"
            bench.main(["--shapes", "decode,decode-1", "--providers", "rope-triton-inplace,rope-triton",
                        "--out", d, "--no-plot"])
            for r in csv.DictReader(open(f"{d}/results.csv")):
                if r["pass"] in ("fwd", "launch"):
                    print(f"round {rnd} auto_refresh={auto!s:5s} {r['shape']:9s} {r['provider']:20s} "
                          f"wall {float(r['wall_us']):6.1f} us", flush=True)


if __name__ == "__main__":
    main()
