"""Where a capture's GPU time goes, op by op, next to the plain SDPA forward (torch.profiler).

    python3 bench/capture_profile.py [--shape llama3-8b|smollm2-135m] [--length 32768]

Random weights of a real shape (bench/gpu_long_context.py builds them). Prints, for each of
the two forwards, the ops and kernels with the most device time. This is how the capture's
cumsum over a [heads, L, 8] buffer (7 ms a layer) and its 0.23 s of copies to the host at the
end were found; asserts nothing.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gpu_long_context import SHAPES, build  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sinkviz.engine import capture  # noqa: E402


def top_ops(fn, count: int = 14) -> list[str]:
    """Run fn once to warm up, once profiled; the ops with the most device time, as lines."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:count]
    return [f"  {e.self_device_time_total / 1e3:9.1f} ms  {e.count:5d}x  {e.key[:90]}"
            for e in events if e.self_device_time_total > 0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=list(SHAPES), default="llama3-8b")
    parser.add_argument("--length", type=int, default=32768)
    args = parser.parse_args()
    capture.register()
    model = build(args.shape)
    ids = torch.randint(10, model.config.vocab_size, (1, args.length), device="cuda")

    def plain():
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            model(input_ids=ids, **capture.forward_kwargs(model))

    def captured():
        model.set_attn_implementation(capture.ATTN_NAME)
        capture.capture(model, ids)

    for name, fn in (("SDPA forward", plain), ("sinkviz capture", captured)):
        print(f"== {args.shape}, {args.length} tokens, {name}:")
        print("\n".join(top_ops(fn)))


if __name__ == "__main__":
    main()
