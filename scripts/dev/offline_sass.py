"""Compile rotary_kernel for sm_90 without a GPU and write its PTX and SASS, to compare variants
(e.g. CONJUGATE True/False on long-32k's configuration). Usage:

    python scripts/dev/offline_sass.py OUTDIR [CONST=VALUE ...]
"""

import subprocess
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import importlib.util
import os

if os.environ.get("KERNEL_FILE"):  # another version of the kernel file (e.g. from a branch), standalone
    # Named inside the package, so that the copy's relative imports (``from .freqs import ...``) resolve.
    _spec = importlib.util.spec_from_file_location("rope_triton._kernels_variant", os.environ["KERNEL_FILE"])
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    rotary_kernel = _mod.rotary_kernel
else:
    from rope_triton._kernels import rotary_kernel

# long-32k's launch (bf16, 32/8 heads, D128) under the v0.5 rule; strides as the benchmark's contiguous q/k.
CONSTS = dict(HEADS_Q=32, HEADS_K=8, HALF=64, BLOCK_HALF=64, TAIL=0, BLOCK_TAIL=1, BLOCK_T=1, BLOCK_H=16,
              INTERLEAVED=False, CONJUGATE=False, HAS_K=True, COPY_TAIL=False, POS_MODE=0, LO_BITS=0,
              VARLEN=False, SEARCH_STEPS=1, ROUND_BY_HAND=False, EVICT="", SPLIT_HEADS=True,
              TABLE_EVICT="evict_last", LOADS_FIRST=False, FREQS=False, QK_MAJOR=False, BLOCK_T_K=1, BLOCK_H_K=1,
              TABLE_BATCH=False)
ONES = ("sxq_d", "sxk_d", "syq_d", "syk_d", "scos_c", "ssin_c", "slcos_c", "slsin_c")  # specialized == 1
NUM_WARPS = int(os.environ.get("NUM_WARPS", "4"))


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    consts = dict(CONSTS)
    for kv in sys.argv[2:]:
        k, v = kv.split("=")
        consts[k] = {"True": True, "False": False}.get(v, int(v) if v.lstrip("-").isdigit() else v)
    names = rotary_kernel.arg_names
    signature, constexprs, attrs = {}, {}, {}
    ptr_types = {"XQ": "*bf16", "XK": "*bf16", "YQ": "*bf16", "YK": "*bf16",
                 "COS": "*i64" if consts.get("FREQS") else "*fp32", "SIN": "*i64" if consts.get("FREQS") else "*fp32",
                 "COS_LO": "*fp32", "SIN_LO": "*fp32", "POS": "*i64", "CU": "*i32"}
    for i, n in enumerate(names):
        if n in consts:
            signature[n] = "constexpr"
            constexprs[(i,)] = consts[n]
        elif n in ONES:
            signature[n] = "constexpr"
            constexprs[(i,)] = 1
        else:
            signature[n] = ptr_types.get(n, "i32")
            if n not in ("offset", "spos_b", "spos_s", "slcos_r", "slsin_r"):
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(rotary_kernel, signature, constexprs, attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NUM_WARPS})
    (out / "kernel.ptx").write_text(k.asm["ptx"])
    (out / "kernel.cubin").write_bytes(k.asm["cubin"])
    nvdisasm = Path(triton.__file__).parent / "backends/nvidia/bin/nvdisasm"
    sass = subprocess.run([str(nvdisasm), "-c", str(out / "kernel.cubin")], capture_output=True, text=True)
    (out / "kernel.sass").write_text(sass.stdout or sass.stderr)
    print(out, "regs", k.n_regs if hasattr(k, "n_regs") else "?", "ptx lines", k.asm["ptx"].count("\n"))


if __name__ == "__main__":
    main()
