"""The results table of docs/performance.md from a benchmark's results.json (markdown on stdout), and the
cells where a peer's device time beats a rope-triton row.

Usage: python3 scripts/dev/perf_table.py benchmarks/results/h200-2026-11-30-s6/results.json
"""

import json
import sys

PEERS = ("liger", "torch-compile", "hf-eager")


def _cell(row):
    if row is None or row.get("time_us") is None:
        return "-"
    return f"{row['time_us']:.1f} ({row['pct_copy']:.1f}%) / {row['wall_us']:.0f}"


def main():
    rows = json.load(open(sys.argv[1]))["rows"]
    by = {(r["shape"], r["provider"], r["pass"]): r for r in rows}
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    print("| shape | pass | copy us | rope-triton | rope-triton-inplace | other cos/sin mode (out of place) "
          "| liger | torch-compile | hf-eager |")
    print("|---|---|---|---|---|---|---|---|---|")
    slower = []
    for shape in shapes:
        mode = (by.get((shape, "rope-triton", "fwd")) or {}).get("cos_sin", "")
        other = "rope-triton-freqs" if mode == "tables" else "rope-triton-tables"
        dims = by[(shape, "copy", "copy")]["dims"]
        label = f"{shape} {dims}" + (" (rope-triton: freqs)" if mode == "freqs" else "")
        for i, pass_ in enumerate(("fwd", "bwd", "fwdbwd")):
            copy = by[(shape, "copy", "copy")]["time_us"] * (2 if pass_ == "fwdbwd" else 1)
            alt = by.get((shape, other, pass_))
            alt_cell = _cell(alt) + (f" {alt['cos_sin']}" if alt and alt.get("time_us") else "")
            cells = [_cell(by.get((shape, p, pass_))) for p in ("rope-triton", "rope-triton-inplace")]
            cells += [alt_cell] + [_cell(by.get((shape, p, pass_))) for p in PEERS]
            print(f"| {label if i == 0 else ''} | {pass_} | {copy:.1f} | " + " | ".join(cells) + " |")
            for ours in ("rope-triton", "rope-triton-inplace"):
                mine = by.get((shape, ours, pass_))
                for peer in PEERS:
                    theirs = by.get((shape, peer, pass_))
                    if mine and theirs and theirs.get("time_us") and theirs["time_us"] < mine["time_us"]:
                        slower.append(f"{shape} {pass_}: {peer} {theirs['time_us']:.2f} us < {ours} "
                                      f"{mine['time_us']:.2f} us")
    launch = [f"{r['shape']} {r['wall_us']:.1f} us" for r in rows if r["provider"] == "empty-launch"]
    print("\nempty-launch wall: " + ", ".join(launch))
    print("\n".join(["\npeer faster (device time):"] + slower) if slower else "\nno peer faster on device time")


if __name__ == "__main__":
    main()
