"""CPU benchmark of the default model: plain forward vs sinkviz capture, and end to end.

    .venv/bin/python bench/cpu_capture.py [--lengths 128 512 2048] [--repeats 3]

Prints, per prompt length: plain SDPA forward time, capture time, their ratio, and the peak
resident memory each adds over the loaded model; then a 512-token analyze() end to end
(fresh store, model loaded) and the time to get the model ready in a fresh process.
Times are medians over repeats; CPU timings swing when other work shares the cores.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sinkviz.engine import capture  # noqa: E402
from sinkviz.flow.models import get_model  # noqa: E402


def rss_peak_reset() -> int:
    """Reset the kernel's peak-RSS counter; return current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _status("VmRSS")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def measure(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak RSS added in MiB) of fn()."""
    fn()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        base = rss_peak_reset()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        peaks.append((_status("VmHWM") - base) / 2**20)
    return statistics.median(times), max(peaks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = get_model("smollm2-135m-instruct", device="cpu")
    model = loaded.model
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{loaded.info.label}, {loaded.info.dtype}")
    print(f"{'tokens':>6} {'plain s':>8} {'capture s':>9} {'ratio':>6} {'plain MiB':>9} {'capture MiB':>11}")
    for n in args.lengths:
        ids = torch.randint(10, 49152, (1, n))
        ids[0, 0] = 1

        def plain():
            with torch.no_grad():
                model(input_ids=ids, **capture.forward_kwargs(model))
        t_plain, m_plain = measure(plain, args.repeats)
        t_cap, m_cap = measure(lambda: capture.capture(model, ids), args.repeats)
        print(f"{n:>6} {t_plain:>8.3f} {t_cap:>9.3f} {t_cap / t_plain:>6.2f} {m_plain:>9.0f} {m_cap:>11.0f}")
    end_to_end(args.repeats)
    print(f"model ready in a fresh process (converted model): {fresh_load_seconds():.2f} s")


def end_to_end(repeats: int) -> None:
    from sinkviz.flow.analysis import Settings, analyze
    from sinkviz.flow.store import ResultStore
    words = "the quick brown fox jumps over the lazy dog and keeps running far away".split()
    prompt = " ".join(words[i % len(words)] for i in range(470))  # ~512 tokens with the template
    times = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = analyze(prompt, Settings(), store=ResultStore(tmp))
            times.append(time.perf_counter() - start)
    print(f"analyze() end to end, {len(result.tokens.token_ids)} tokens, model loaded, "
          f"fresh store: {statistics.median(times):.2f} s")


def fresh_load_seconds() -> float:
    code = ("import time; t = time.perf_counter(); from sinkviz.flow.models import get_model; "
            "get_model('smollm2-135m-instruct', device='cpu'); print(time.perf_counter() - t)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, env={**os.environ, "TQDM_DISABLE": "1"})
    return float(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
