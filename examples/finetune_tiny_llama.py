"""Train a tiny Llama twice from the same weights on the same data, with transformers' rotary embedding and
with rope-triton's (``rope_triton.integrations.transformers.patch``), and print both loss curves side by
side, the step times and, from ``torch.profiler``, the time spent in RoPE (forward and backward). On a GPU
the unpatched run is repeated: its own run-to-run differences (nondeterministic kernels, amplified by
training) show how closely two runs can match at all.

The task is synthetic and seeded: memorize a fixed pool of random token sequences (two batches' worth).
A token's successor is ambiguous from the token alone, so the model has to use its context and positions.

    python examples/finetune_tiny_llama.py                                # CPU: 50 steps, float32
    python examples/finetune_tiny_llama.py --device cuda --dtype bfloat16  # GPU: 300 steps, bf16 autocast

The GPU defaults (batch 64 x 1024 tokens) keep the GPU, not the Python host, the bottleneck, so that the
step time shows what RoPE costs. On the CPU rope-triton runs its PyTorch path (the Triton kernel needs a
GPU, or ``TRITON_INTERPRET=1``, which is very slow); the loss curves match either way, the timings mean
something on a GPU only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import sys
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile, record_function
from transformers import LlamaConfig, LlamaForCausalLM

from rope_triton.integrations.transformers import patch, unpatch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, help="training steps per run (default: 300 on a GPU, 50 on the CPU)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16: autocast (float32 weights and optimizer), as mixed-precision training")
    p.add_argument("--batch", type=int, help="sequences per step (default: 64 on a GPU, 8 on the CPU)")
    p.add_argument("--seq", type=int, help="sequence length (default: 1024 on a GPU, 64 on the CPU)")
    p.add_argument("--hidden", type=int, help="hidden size (default: 512 on a GPU, 128 on the CPU)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, help="attention heads (default: hidden // 64)")
    p.add_argument("--every", type=int, help="print the losses every this many steps")
    p.add_argument("--profile-steps", type=int, default=3, help="steps profiled for the RoPE time (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    gpu = args.device.startswith("cuda")
    args.steps = args.steps or (300 if gpu else 50)
    args.batch = args.batch or (64 if gpu else 8)
    args.seq = args.seq or (1024 if gpu else 64)
    args.hidden = args.hidden or (512 if gpu else 128)
    args.heads = args.heads or max(1, args.hidden // 64)
    args.every = args.every or max(1, args.steps // 10)
    return args


def make_batches(args, vocab: int) -> list[torch.Tensor]:
    """One batch per step, drawn from a fixed pool of random sequences; seeded, the same for both runs."""
    g = torch.Generator().manual_seed(args.seed + 1)
    pool = torch.randint(3, vocab, (2 * args.batch, args.seq), generator=g)
    picks = torch.randint(0, pool.shape[0], (args.steps + args.profile_steps, args.batch), generator=g)
    return [pool[i].to(args.device) for i in picks]


def train_step(model, opt, ids, autocast) -> torch.Tensor:
    with autocast():
        loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def run(args, model, batches, autocast) -> tuple[list[float], list[float]]:
    """Train ``model`` on ``batches[:steps]``; returns the losses and the step times (seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses, times = [], []
    for ids in batches[: args.steps]:
        sync(args.device)
        t0 = time.perf_counter()
        loss = train_step(model, opt, ids, autocast)
        sync(args.device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    return losses, times


@contextlib.contextmanager
def rope_ranges(module):
    """Wrap ``module.apply_rotary_pos_emb`` (whichever it is now) in a profiler range named "rope"."""
    fn = module.apply_rotary_pos_emb

    def ranged(*args, **kwargs):
        with record_function("rope"):
            return fn(*args, **kwargs)

    module.apply_rotary_pos_emb = ranged
    try:
        yield
    finally:
        module.apply_rotary_pos_emb = fn


def rope_time(args, model, batches, autocast, module) -> tuple[float, float]:
    """Milliseconds per step spent in RoPE, forward and backward, from torch.profiler.

    Forward: the device (CPU: host) time of everything inside the "rope" ranges. Backward: the autograd
    nodes whose forward ops ran inside those ranges (matched by sequence number), which is how the
    backward of transformers' mul/cat/neg and of rope-triton's op are found alike.
    """
    gpu = args.device.startswith("cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # profile without changing the weights much
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    steps = batches[args.steps : args.steps + args.profile_steps]
    train_step(model, opt, steps[0], autocast)  # warm-up outside the profile
    with rope_ranges(module), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes about its own cycles
        with profile(activities=activities) as prof:
            for ids in steps:
                train_step(model, opt, ids, autocast)
            sync(args.device)

    def spent(e) -> float:
        return e.device_time_total if gpu else e.cpu_time_total

    events = prof.events()
    ranges = [e for e in events if e.name == "rope" and not e.is_async]
    forward_ops, stack = set(), list(ranges)
    while stack:
        e = stack.pop()
        if e.sequence_nr >= 0:
            forward_ops.add(e.sequence_nr)
        stack.extend(e.cpu_children)
    backward = [
        e for e in events
        if e.name.startswith("autograd::engine::evaluate_function") and e.sequence_nr in forward_ops
    ]  # fmt: skip
    per_step = 1e-3 / len(steps)  # microseconds -> milliseconds per step
    return sum(map(spent, ranges)) * per_step, sum(map(spent, backward)) * per_step


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=args.seq,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    initial = LlamaForCausalLM(config).to(args.device)
    batches = make_batches(args, config.vocab_size)
    amp = args.dtype == "bfloat16"
    device_type = torch.device(args.device).type

    def autocast():
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp)

    print(
        f"device {args.device}, {args.dtype}{' autocast' if amp else ''}, torch {torch.__version__}, "
        f"Llama {args.layers}x{args.hidden} ({args.heads} heads of {args.hidden // args.heads}), "
        f"batch {args.batch} x seq {args.seq}, {args.steps} steps"
    )
    module = sys.modules[type(initial).__module__]
    names = ["transformers", "rope-triton"] + (["transformers again"] if device_type == "cuda" else [])
    results = {}
    for name in names:
        model = copy.deepcopy(initial).train()
        if name == "rope-triton":
            print("patched:", ", ".join(patch(model)))
        losses, times = run(args, model, batches, autocast)
        profiled = args.profile_steps and name != "transformers again"
        rope = rope_time(args, model, batches, autocast, module) if profiled else None
        if name == "rope-triton":
            unpatch(model)
        results[name] = (losses, times, rope)

    (base, base_t, base_rope), (ours, ours_t, ours_rope) = results["transformers"], results["rope-triton"]
    again = results.get("transformers again", (None,))[0]
    header = f"{'step':>6}  {'loss transformers':>18}  {'loss rope-triton':>17}  {'difference':>11}"
    print("\n" + header + ("  transformers again: difference" if again else ""))
    for i in sorted({*range(0, args.steps, args.every), args.steps - 1}):
        line = f"{i + 1:>6}  {base[i]:>18.6f}  {ours[i]:>17.6f}  {ours[i] - base[i]:>+11.2e}"
        print(line + (f"  {again[i] - base[i]:>+31.2e}" if again else ""))

    def worst(other):
        return max(abs(a - b) for a, b in zip(base, other, strict=True))

    print(f"max |difference| over {args.steps} steps: {worst(ours):.2e}", end="")
    print(f" (transformers run twice: {worst(again):.2e})" if again else "")

    skip = min(5, args.steps // 2)  # warm-up steps (allocator, autotuning, first launches)
    mb, mo = (1e3 * statistics.median(t[skip:]) for t in (base_t, ours_t))
    print(f"\nmedian step time: transformers {mb:.2f} ms, rope-triton {mo:.2f} ms ({mb / mo:.2f}x)")
    if base_rope:
        where = "GPU kernel" if args.device.startswith("cuda") else "CPU (host)"
        print(f"RoPE {where} time per step (torch.profiler, {args.profile_steps} steps):")
        for name, (fwd, bwd) in (("transformers", base_rope), ("rope-triton", ours_rope)):
            print(f"  {name:<13} forward {fwd:8.3f} ms  backward {bwd:8.3f} ms  total {fwd + bwd:8.3f} ms")


if __name__ == "__main__":
    main()
