"""freqs= (cos/sin computed in the kernel) against tables, under program shapes that compute each token's
cos/sin fewer times: split programs with fewer warps (fewer threads repeating the same pairs) and
whole-token programs (once per token).

Usage: PYTHONPATH=src:scripts/dev python3 scripts/dev/freqs_probe.py [--shapes long-32k,llama3-8b] [--more]

``--more``: also 4 KB programs of one warp, 2 tokens x 8 heads at 2 warps (GQA k chunks full), and the
rule in place for tables and freqs.
"""

import argparse

import torch
from rounds import copy_jobs, report, time_rounds

from rope_triton._checks import check
from rope_triton._kernels import rotary_kernel
from rope_triton._launch import config, launch
from rope_triton import freqs as rfreqs
from rope_triton.bench_shapes import SHAPES, THETA, ShapeSpec, build_workload

# One long packed sequence (thd, cu_seqlens [0, T]): what RotaryEmbedding's auto choice sends to freqs.
EXTRA = {"thd-1seq": ShapeSpec("thd-1seq", 1, 32768, 32, 8, 128, kind="varlen", n_seqs=1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="llama3-8b,long-32k,fp32,decode")
    ap.add_argument("--more", action="store_true")
    args = ap.parse_args()
    dev = torch.device("cuda")
    for name in args.shapes.split(","):
        wl = build_workload(SHAPES.get(name) or EXTRA[name], dev, n_sets=2)
        kw = wl.rope_kwargs
        offsets, cu = kw.get("offsets"), kw.get("cu_seqlens")
        q0, k0 = wl.sets[0]
        common = dict(positions=None, offsets=offsets, cu_seqlens=cu, max_seqlen=kw.get("max_seqlen"),
                      layout=kw["layout"], rotary_dim=None, inplace=False)
        p_tab = check(q0, k0, wl.cos32, wl.sin32, **common)
        p_freq = check(q0, k0, wl.freqs, wl.freqs, freqs=True, **common)
        base = config(p_tab, q0.element_size())
        rule = config(p_freq, q0.element_size())
        half = base["BLOCK_HALF"]
        rows = wl.cos32.shape[0]
        inv_freq, _ = rfreqs.inv_freq_and_scale(q0.shape[-1], base=THETA)
        ch, sh, cl, sl = rfreqs.split_tables(inv_freq, rows, low_bits=rfreqs.default_low_bits(rows), device=dev)
        p_split = check(q0, k0, ch, sh, cos_lo=cl, sin_lo=sl, **common)
        variants = {
            "tables, rule": (p_tab, wl.cos32, wl.sin32, base),
            "split tables, rule": (p_split, (ch, cl), (sh, sl), config(p_split, q0.element_size())),
            f"freqs, rule (w{rule['num_warps']})": (p_freq, wl.freqs, wl.freqs, rule),
            "freqs, tables' rule (w4)": (p_freq, wl.freqs, wl.freqs, base),
        }
        if not name.startswith("decode"):
            # 2 KB split programs of one warp (tables' copy equivalent: 99.3%, session 3's sweep).
            variants["freqs, split 2 KB w1"] = (p_freq, wl.freqs, wl.freqs,
                                                {**base, "BLOCK_H": max(1, base["BLOCK_H"] // 2), "num_warps": 1})
        for bh, nw in ((8, 2), (16, 4), (32, 8)):
            if bh <= 2 * max(p_tab.heads_q, p_tab.heads_k):
                variants[f"freqs, whole token H{bh} w{nw}"] = (
                    p_freq, wl.freqs, wl.freqs, {"BLOCK_HALF": half, "BLOCK_H": bh, "BLOCK_T": 1, "num_warps": nw})
        if args.more and kw["layout"] == "thd":
            for bt, bh, nw in ((1, 16, 2), (2, 8, 2), (4, 4, 1), (4, 4, 4)):
                variants[f"freqs, thd T{bt} H{bh} w{nw}"] = (
                    p_freq, wl.freqs, wl.freqs, {**rule, "BLOCK_T": bt, "BLOCK_H": bh, "num_warps": nw})
            variants["tables, thd T1 H16 w4"] = (p_tab, wl.cos32, wl.sin32, {**base, "BLOCK_T": 1, "BLOCK_H": 16,
                                                                            "num_warps": 4})
        if rule.get("QK_MAJOR") and not base.get("QK_MAJOR"):
            # Session 6: the rule runs q's programs before k's with computed cos/sin, not with tables here.
            qk = {key: rule[key] for key in ("QK_MAJOR", "BLOCK_T", "BLOCK_H", "BLOCK_T_K", "BLOCK_H_K")}
            variants["tables, q-major"] = (p_tab, wl.cos32, wl.sin32, {**base, **qk})
            variants["freqs, chunks of a token together"] = (
                p_freq, wl.freqs, wl.freqs, {**base, "num_warps": rule["num_warps"]})
        inplace = set()
        if args.more and not name.startswith("decode"):
            variants["freqs, 4 KB w1"] = (p_freq, wl.freqs, wl.freqs, {**rule, "num_warps": 1})
            if base["BLOCK_H"] >= 16:
                variants["freqs, T2 H8 w2"] = (p_freq, wl.freqs, wl.freqs,
                                               {**rule, "BLOCK_H": 8, "BLOCK_T": 2, "num_warps": 2})
                variants["tables, T2 H8 w4"] = (p_tab, wl.cos32, wl.sin32, {**base, "BLOCK_H": 8, "BLOCK_T": 2})
            for vname in ("tables, rule", f"freqs, rule (w{rule['num_warps']})"):
                variants[vname + " in place"] = variants[vname]
                inplace.add(vname + " in place")
        outs = [(torch.empty_like(q), torch.empty_like(k)) for q, k in wl.sets]
        jobs = {}
        for vname, (p, c, s, cfg) in variants.items():
            c, c_lo = c if isinstance(c, tuple) else (c, None)
            s, s_lo = s if isinstance(s, tuple) else (s, None)
            ip = vname in inplace
            jobs[vname] = [
                lambda p=p, c=c, s=s, c_lo=c_lo, s_lo=s_lo, cfg=cfg, q=q, k=k, qo=qo, ko=ko, ip=ip: launch(
                    rotary_kernel, p, q, k, q if ip else qo, k if ip else ko, c, s, c_lo, s_lo, None, offsets,
                    cu, interleaved=False, conjugate=False, inplace=ip, cfg=cfg)
                for (q, k), (qo, ko) in zip(wl.sets, outs)]
        jobs["copy_"] = copy_jobs(q0, k0)
        report(name, time_rounds(jobs, 3))

if __name__ == "__main__":
    main()
