#!/usr/bin/env python3
"""Usage: python3 scripts/tune.py [--shapes llama3-8b,d64] [--quick] [--top N] [--list]

Sweep the launch rule's program shapes on a CUDA GPU. For each benchmark shape (``rope-triton bench``'s
shapes), the kernel runs out of place, forward, under the rule's config
(``rope_triton._core.launch.config``) and under variants of it: tokens x heads per program (1-8 KB of
q/k; decode steps 256 B-4 KB), warps (8, 16 or 32 bytes per thread in each half-tile), the token-block or
the q-major program order, and k programs with once or twice the bytes of a q program. Every
config is checked against the float64 reference first, then timed (median of ``triton.testing.do_bench``,
rotating over input sets that together exceed the L2) against a same-bytes ``copy_`` timed in the same
round. Prints, per shape, the rule's figure and the best variants in % of the copy, one per round.

The rule was measured on an H200 (docs/design.md): use this to check it, or re-derive it, on another GPU.
``--list`` prints each shape's configs without running anything (no GPU needed).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout

import torch  # noqa: E402
import triton  # noqa: E402

from rope_triton._core.checks import check  # noqa: E402
from rope_triton._core.kernels import rotary_kernel  # noqa: E402
from rope_triton._core.launch import config, launch  # noqa: E402
from rope_triton.bench.shapes import DEFAULT_SHAPES, SHAPES, build_workload  # noqa: E402

_TUNED = ("BLOCK_T", "BLOCK_H", "num_warps", "QK_MAJOR", "BLOCK_T_K", "BLOCK_H_K")


def _problem(spec, device, cos_sin: str):
    """The validated problem of a shape (on ``device``; the meta device needs no memory)."""
    q_shape = (spec.batch, spec.seqlen, spec.heads_q, spec.head_dim)
    k_shape = (spec.batch, spec.seqlen, spec.heads_k, spec.head_dim)
    kw = {"layout": "bshd", "offsets": None, "cu_seqlens": None, "max_seqlen": None}
    if spec.kind == "varlen":
        q_shape, k_shape = q_shape[1:], k_shape[1:]
        cu = torch.linspace(0, spec.seqlen, spec.n_seqs + 1, device=device).to(torch.int32)
        kw.update(layout="thd", cu_seqlens=cu, max_seqlen=spec.seqlen)
    elif spec.kind == "decode":
        kw["offsets"] = torch.zeros(spec.batch, dtype=torch.int32, device=device)
    q = torch.empty(q_shape, dtype=spec.dtype, device=device)
    k = torch.empty(k_shape, dtype=spec.dtype, device=device)
    rows = spec.seqlen + spec.max_offset
    if cos_sin == "freqs":
        table = torch.empty(4, spec.head_dim // 2, dtype=torch.int64, device=device)
        return check(q, k, table, table, positions=None, rotary_dim=None, inplace=False, freqs=True, **kw)
    table = torch.empty(rows, spec.head_dim // 2, dtype=torch.float32, device=device)
    return check(q, k, table, table, positions=None, rotary_dim=None, inplace=False, **kw)


def variants(p, itemsize: int, quick: bool = False) -> list[tuple[str, dict]]:
    """The rule's config, then its variants, as (label, config) pairs."""
    base = config(p, itemsize)
    out = [("rule", base)]
    half = base["BLOCK_HALF"]
    head_bytes = 2 * half * itemsize  # one head of one token, both halves
    heads_max = triton.next_power_of_2(max(p.heads_q, p.heads_k, 1))
    decode = base.get("LOADS_FIRST", False)
    lo, hi = (256, 4096) if decode else (1024, 8192)
    orders = ["token"]
    if p.layout != "thd" and p.heads_k > 0:
        orders += ["qk", "qk-k2"] if p.heads_k < p.heads_q else ["qk"]
    if quick:
        orders = ["qk-k2" if base.get("QK_MAJOR") and base["BLOCK_T_K"] > base["BLOCK_T"] else
                  "qk" if base.get("QK_MAJOR") else "token"]
    seen = {tuple(base.get(k) for k in _TUNED)}
    # Bytes per thread in each half-tile: the rule's alone with --quick.
    rule_bytes = base["BLOCK_T"] * base["BLOCK_H"] * head_bytes // 2 // (32 * base["num_warps"])
    for bt, bh, per_thread, order in itertools.product(
        (1,) if decode else (1, 2, 4, 8), (1, 2, 4, 8, 16, 32, 64), (rule_bytes,) if quick else (8, 16, 32),
        orders,
    ):
        program = bt * bh * head_bytes
        warps = program // 2 // (32 * per_thread)
        if bh > heads_max or not lo <= program <= hi or warps not in (1, 2, 4, 8, 16):
            continue
        cfg = {k: v for k, v in base.items() if k not in _TUNED}
        cfg.update(BLOCK_T=bt, BLOCK_H=bh, num_warps=warps)
        if order != "token":
            bh_k = min(bh, triton.next_power_of_2(p.heads_k))
            bt_k = bt * bh // bh_k * (2 if order == "qk-k2" else 1)
            cfg.update(QK_MAJOR=True, BLOCK_T_K=bt_k, BLOCK_H_K=bh_k)
        key = tuple(cfg.get(k) for k in _TUNED)
        if key not in seen:
            seen.add(key)
            out.append((f"{order} {bt}x{bh} {warps}w", cfg))
    return out


def _short(cfg: dict) -> str:
    return " ".join(f"{k}={cfg[k]}" for k in _TUNED if k in cfg)


def tune(name: str, args) -> None:
    from triton.testing import do_bench

    spec = SHAPES[name]
    device = torch.device("cuda")
    wl = build_workload(spec, device)
    cos_sin = wl.cos_sin_mode if args.cos_sin == "auto" else args.cos_sin
    freqs = cos_sin == "freqs"
    cos, sin = (wl.freqs, wl.freqs) if freqs else (wl.cos32, wl.sin32)
    kw = wl.rope_kwargs
    q0, k0 = wl.sets[0]
    p = check(q0, k0, cos, sin, positions=None, offsets=kw.get("offsets"), cu_seqlens=kw.get("cu_seqlens"),
              max_seqlen=kw.get("max_seqlen"), layout=kw["layout"], rotary_dim=None, inplace=False,
              freqs=freqs)
    outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]

    def run(cfg, q, k, qo, ko):
        launch(rotary_kernel, p, q, k, qo, ko, cos, sin, None, None, None, kw.get("offsets"),
               kw.get("cu_seqlens"), interleaved=False, conjugate=False, inplace=False, cfg=dict(cfg))

    # Correctness first: every config against the float64 reference (a bad config is reported, not timed).
    cq, ck = wl.check_inputs[:2]
    rq, rk = wl.ref_fwd
    bound = 2 * torch.finfo(spec.dtype).eps * (1 + max(rq.abs().max().item(), rk.abs().max().item()))
    good = []
    for label, cfg in variants(p, q0.element_size(), args.quick):
        oq, ok = torch.empty_like(cq), torch.empty_like(ck)
        run(cfg, cq, ck, oq, ok)
        err = max((oq.double() - rq).abs().max().item(), (ok.double() - rk).abs().max().item())
        if err <= bound:
            good.append((label, cfg))
        else:
            print(f"   WRONG RESULT ({err:.3g} > {bound:.3g}): {label} {_short(cfg)}")

    n = sum(q.numel() + k.numel() for q, k in wl.sets[:1])
    src = torch.randn(n, device=device, dtype=spec.dtype)
    dst = torch.empty_like(src)
    pct = {label: [] for label, _ in good}
    copy_us = []
    for _ in range(args.rounds):
        tc = do_bench(lambda: dst.copy_(src), warmup=25, rep=100, return_mode="median")
        copy_us.append(tc * 1e3)
        for label, cfg in good:
            i = [0]

            def f(cfg=cfg, i=i):
                i[0] = (i[0] + 1) % len(wl.sets)
                (q, k), (qo, ko) = wl.sets[i[0]], outs[i[0]]
                run(cfg, q, k, qo, ko)

            pct[label].append(100 * tc / do_bench(f, warmup=25, rep=100, return_mode="median"))
    cfgs = dict(good)
    print(f"== {name} {spec.describe()} {str(spec.dtype).replace('torch.', '')}, {cos_sin}; "
          f"copy {' / '.join(f'{t:.1f}' for t in copy_us)} us; % of copy per round")
    ranked = sorted(pct, key=lambda label: -min(pct[label]))
    for label in ["rule"] + [x for x in ranked if x != "rule"][: args.top]:
        if label in pct:
            figures = " / ".join(f"{x:.1f}" for x in pct[label])
            print(f"   {label:<18} {figures:<14} {_short(cfgs[label])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--shapes", default=",".join(s for s in DEFAULT_SHAPES),
                        help=f"comma-separated, of: {','.join(SHAPES)} (default: {','.join(DEFAULT_SHAPES)})")
    parser.add_argument("--cos-sin", choices=("auto", "tables", "freqs"), default="auto",
                        help="cos/sin source (default auto: what RotaryEmbedding picks for the shape)")
    parser.add_argument("--quick", action="store_true", help="the rule's order and bytes per thread only")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds (default 2)")
    parser.add_argument("--top", type=int, default=6, help="variants to print per shape (default 6)")
    parser.add_argument("--list", action="store_true", help="print the configs and exit (no GPU needed)")
    args = parser.parse_args(argv)
    names = args.shapes.split(",")
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes: {', '.join(unknown)}")
    if args.list:
        from rope_triton.bench.shapes import cos_sin_mode

        for name in names:
            spec = SHAPES[name]
            cos_sin = cos_sin_mode(spec) if args.cos_sin == "auto" else args.cos_sin
            p = _problem(spec, torch.device("meta"), cos_sin)
            configs = variants(p, torch.empty(0, dtype=spec.dtype).element_size(), args.quick)
            print(f"== {name} {spec.describe()}, {cos_sin}: {len(configs)} configs")
            for label, cfg in configs:
                print(f"   {label:<18} {_short(cfg)}")
        return 0
    if not torch.cuda.is_available():
        parser.error("timing needs a CUDA GPU (--list runs anywhere)")
    for name in names:
        tune(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
