"""Is the distance to the copy a fixed cost or a share of the bytes? After session 6, llama3-8b (82.5 us of
copy), llama2-7b (131 us) and long-32k (161 us) all ran ~1.7 us behind their same-bytes copy, while d64
(33 us) ran 0.6 us behind: if the gap is a fixed cost per launch (ramp-up, the last wave), it stays in
microseconds as the batch grows; if it is bandwidth (table rows, stalls), it grows with the batch.

For llama3-8b's heads at batch 1, 2, 4, 8 (and llama2-7b's at 4): the public call out of place and in
place, the same with table rows of stride 0 (every token reads one row: an upper bound of removing the
table traffic, wrong numbers), q alone beside a copy of q's bytes, and, at batch 4, k programs of another
shape. Interleaved rounds against the same-bytes copy; the gap in microseconds is printed beside the %.

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/gap_probe.py [--batches 1,2,4,8] [--rounds 3]
"""

import argparse
import statistics

import torch
from rounds import copy_jobs, time_rounds

from rope_triton import apply_rotary
from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch


def _report(title, times, pairs):
    print(f"== {title}")
    for key, copy_key in pairs:
        t, c = statistics.median(times[key]), statistics.median(times[copy_key])
        print(f"   {key:34s} {t:8.2f} us {100 * c / t:6.1f}%  gap {t - c:+6.2f} us  (copy {c:.2f})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    dev, dt, s, d = torch.device("cuda"), torch.bfloat16, 4096, 128
    ang = torch.rand(s, d // 2, device=dev, dtype=torch.float64) * 6.28
    cos, sin = ang.cos().float(), ang.sin().float()
    cos0, sin0 = cos[:1].expand(s, d // 2), sin[:1].expand(s, d // 2)
    for hq, hk, batches in ((32, 8, args.batches), (32, 32, "4")):
        for b in map(int, batches.split(",")):
            sets = [(torch.randn(b, s, hq, d, device=dev, dtype=dt), torch.randn(b, s, hk, d, device=dev, dtype=dt))
                    for _ in range(2)]
            jobs, pairs = {}, []

            def add(label, fns, copy_key="copy_"):
                jobs[label] = fns
                pairs.append((label, copy_key))

            add("out", [lambda q=q, k=k: apply_rotary(q, k, cos, sin) for q, k in sets])
            add("in place", [lambda q=q, k=k: apply_rotary(q, k, cos, sin, inplace=True) for q, k in sets])
            add("out, table stride 0", [lambda q=q, k=k: apply_rotary(q, k, cos0, sin0) for q, k in sets])
            add("in place, table stride 0",
                [lambda q=q, k=k: apply_rotary(q, k, cos0, sin0, inplace=True) for q, k in sets])
            add("q alone, out", [lambda q=q: apply_rotary(q, None, cos, sin) for q, _ in sets], "copy_ q")
            if b == 4 and hq != hk:
                q0, k0 = sets[0]
                p = check(q0, k0, cos, sin, positions=None, offsets=None, cu_seqlens=None, max_seqlen=None,
                          layout="bshd", rotary_dim=None, inplace=False)
                rule = config(p, 2)
                outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in sets]
                for name, upd in (("k 1x8", {"BLOCK_T_K": 1, "BLOCK_H_K": 8}),
                                  ("k 4x8 w4", {"BLOCK_T_K": 4, "BLOCK_H_K": 8}),
                                  ("old order", {"QK_MAJOR": False}),
                                  ("tables no evict hint", {"TABLE_EVICT": ""})):
                    cfg = {**rule, **upd}
                    add(f"out, {name}", [lambda q=q, k=k, qo=qo, ko=ko, cfg=cfg: launch(
                        rotary_kernel, p, q, k, qo, ko, cos, sin, None, None, None, None, None,
                        interleaved=False, conjugate=False, inplace=False, cfg=cfg)
                        for (q, k), (qo, ko) in zip(sets, outs)])
            q0, k0 = sets[0]
            jobs["copy_"] = copy_jobs(q0, k0, 2)
            jobs["copy_ q"] = copy_jobs(q0, q0[..., :0], 2)
            pairs += [("copy_", "copy_")]
            times = time_rounds(jobs, args.rounds, rep_ms=20, rotate=True)
            _report(f"batch {b} x {s} x {hq}/{hk} heads x {d}", times, pairs)
            del sets, jobs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
