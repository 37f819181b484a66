"""Where a short capture's time goes on a GPU: the capture with its parts switched off one by one.

    python3 bench/capture_overhead.py [--shapes llama3-8b smollm2-135m] [--lengths 1024 4096]
                                      [--batch 8] [--profile]

Random weights of real shapes, bf16 (bench/gpu_long_context.py builds them). For each length,
medians of 5 of: the plain SDPA forward; the capture (statistics deferred to one sweep after
the forward where it fits, deferred.py); and the capture layer by layer (deferral off). With
--batch B, the same for B prompts of that length in one padded batch. --profile prints the
host ops with the most CPU time in one capture. Asserts nothing.
"""

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from gpu_long_context import SHAPES, build  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sinkviz.engine import capture, deferred  # noqa: E402


def median_seconds(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(model, ids: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    """Median seconds of the plain forward, the capture, and the capture layer by layer."""
    kwargs = capture.forward_kwargs(model)
    batch = [ids[b].tolist() for b in range(ids.shape[0])] if ids.shape[0] > 1 else None

    def plain():
        model.set_attn_implementation("sdpa")
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, **kwargs)

    def captured():
        model.set_attn_implementation(capture.ATTN_NAME)
        if batch:
            capture.capture_batch(model, batch)
        else:
            capture.capture(model, ids)

    out = {"sdpa": median_seconds(plain), "capture": median_seconds(captured)}
    with mock.patch.object(deferred, "fits", lambda *a: False):
        out["per-layer"] = median_seconds(captured)
    return out


def phases(model, ids) -> str:
    """Seconds spent in the capture's phases (each synchronised), for the capture of ``ids``."""
    from sinkviz.engine import fused, invariants
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            torch.cuda.synchronize()
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out
        return wrapper
    targets = [(deferred.DeferredRecorder, "result"), (fused, "statistics_many"), (capture, "_to_stats"),
               (invariants, "check"), (capture, "_run")]
    model.set_attn_implementation(capture.ATTN_NAME)
    capture.capture(model, ids)
    with contextlib.ExitStack() as stack:
        for owner, name in targets:
            stack.enter_context(mock.patch.object(owner, name, timed(name, getattr(owner, name))))
        total = median_seconds(lambda: capture.capture(model, ids), repeats=1)
    return f"  total {total * 1e3:.1f} ms: " + ", ".join(f"{k} {v / 2 * 1e3:.1f} ms" for k, v in spent.items())


def host_profile(model, ids, count: int = 18) -> list[str]:
    model.set_attn_implementation(capture.ATTN_NAME)
    capture.capture(model, ids)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        capture.capture(model, ids)
        torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:count]
    return [f"  {e.self_cpu_time_total / 1e3:8.1f} ms  {e.count:5d}x  {e.key[:80]}" for e in events]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    capture.register()
    for shape in args.shapes:
        model = build(shape)
        for n in args.lengths:
            ids = torch.randint(10, model.config.vocab_size, (1, n), device="cuda")
            times = run(model, ids, None)
            line = "  ".join(f"{k} {v * 1e3:7.1f} ms ({v / times['sdpa']:.2f}x)" for k, v in times.items())
            print(f"{shape:13s} {n:6d}  {line}", flush=True)
            if args.batch:
                many = torch.randint(10, model.config.vocab_size, (args.batch, n), device="cuda")
                times = run(model, many, torch.ones_like(many))
                print(f"{shape:13s} {args.batch}x{n:<5d} " + "  ".join(
                    f"{k} {v * 1e3:7.1f} ms ({v / times['sdpa']:.2f}x)" for k, v in times.items()), flush=True)
            if args.profile:
                print(phases(model, ids), flush=True)
                print("\n".join(host_profile(model, ids)), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
