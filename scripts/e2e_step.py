"""Time the forward + backward of a training step of a model built from a config, unpatched and patched.

Usage: PYTHONPATH=src python3 scripts/e2e_step.py [--family qwen3] [--layers 4] [--batch 2] [--seq 8192]
A Qwen3-8B-shaped (or OLMo 2 7B-shaped) causal LM of a few layers with random weights, bf16, SDPA
attention, on one GPU. Three runs of the same batch: transformers as is, ``patch(model,
fuse_qk_norm=False)`` (RoPE only) and ``patch(model)`` (q/k norms fused into the rotation). Prints the
median milliseconds per step (forward, loss, backward; no optimizer) and each run's saving against the
unpatched model. Needs transformers.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # the checkout's package first

from rope_triton.integrations.transformers import patch, unpatch  # noqa: E402

# Hidden sizes of the full models; the layer count comes from --layers.
SHAPES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, vocab_size=151936, rope_theta=1000000.0, max_position_embeddings=40960)),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
        vocab_size=100352, rope_theta=500000.0, max_position_embeddings=4096 * 8)),
}


def step_times(model, ids: torch.Tensor, steps: int) -> list[float]:
    times = []
    for i in range(steps + 2):  # two warm-up steps (kernel compilation, allocator)
        torch.cuda.synchronize()
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(1e3 * (time.perf_counter() - start))
        model.zero_grad(set_to_none=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=sorted(SHAPES), default="qwen3")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    import transformers

    config_name, model_name, sizes = SHAPES[args.family]
    config = getattr(transformers, config_name)(num_hidden_layers=args.layers, **sizes)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = getattr(transformers, model_name)(config).to(torch.bfloat16)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), device="cuda")
    runs = {}
    runs["transformers"] = step_times(model, ids, args.steps)
    patch(model, fuse_qk_norm=False)
    runs["patch, RoPE only"] = step_times(model, ids, args.steps)
    unpatch(model)
    patch(model)
    runs["patch, q/k norms fused"] = step_times(model, ids, args.steps)
    unpatch(model)
    base = statistics.median(runs["transformers"])
    print(f"{args.family}: {args.layers} layers, batch {args.batch} x {args.seq} tokens, bf16, "
          f"{torch.cuda.get_device_name()}; forward + backward, median of {args.steps} steps")
    for name, times in runs.items():
        ms = statistics.median(times)
        print(f"  {name:24} {ms:8.1f} ms  ({100 * (base - ms) / base:+.1f}% time saved)")


if __name__ == "__main__":
    main()
