"""What the invariant checks (sinkviz/engine/invariants.py) cost: capture time with and without them.

    python3 bench/invariants_cost.py [--shape llama3-8b] [--lengths 8192 32768]

Random-weight model of a real shape (bench/gpu_long_context.py's), bf16 on CUDA (float32 on CPU);
per length, the median of 3 captures with the checks and 3 with them replaced by a no-op, in
one run, and the time of one check on that capture's statistics. Prints a table; asserts nothing.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.gpu_long_context import SHAPES  # noqa: E402
from sinkviz.engine import capture  # noqa: E402
from sinkviz.engine import invariants  # noqa: E402


def median_time(fn, repeats=3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama3-8b", choices=SHAPES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    capture.register()
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**SHAPES[args.shape], max_position_embeddings=262144),
                                              dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                              attn_implementation=capture.ATTN_NAME).eval()
    print(f"{args.shape} on {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}")
    print("| tokens | capture with checks | without | ratio | one check alone |")
    print("| --- | --- | --- | --- | --- |")
    real = invariants.check
    for n in args.lengths:
        ids = torch.randint(10, model.config.vocab_size, (1, n), device=device)
        with_checks = median_time(lambda: capture.capture(model, ids))
        invariants.check = lambda stats: None
        try:
            without = median_time(lambda: capture.capture(model, ids))
            stats = capture.capture(model, ids)
        finally:
            invariants.check = real
        alone = median_time(lambda: real(stats))
        print(f"| {n // 1024}K | {with_checks:.3f} s | {without:.3f} s | {with_checks / without:.3f} | "
              f"{alone * 1e3:.1f} ms |", flush=True)


if __name__ == "__main__":
    main()
