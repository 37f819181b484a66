"""Does a prompt's length move the calibrated readings? Sink mass per layer against length.

    .venv/bin/python bench/calibration_length.py [--lengths 32 64 128 256 512 1024 1536]

The shipped Declaration of Independence cut to each length (whole words, chat template on, the
default model), analysed into a temporary store; prints the deep-layer mean (layers >= 2) of the
two calibrated readings ('sequence': m_3, 'user': your text's first 3 tokens) and, where the
default model's calibration is in $SINKVIZ_STORE_DIR, each one's percentile against it. Asserts
nothing; CPU is fine.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sinkviz.flow import models  # noqa: E402
from sinkviz.flow.analysis import Settings, analyze  # noqa: E402
from sinkviz.flow.store import ResultStore  # noqa: E402
from sinkviz.numbers.calibration import calibrate, judge  # noqa: E402
from sinkviz.numbers.metrics import deep_mean  # noqa: E402
from sinkviz.numbers.readings import per_layer_reading  # noqa: E402

TEXT = Path(__file__).resolve().parent.parent / "sinkviz/data/declaration_of_independence.txt"


def cut(text: str, tokenizer, n_tokens: int) -> str:
    """The longest prefix of whole words of ``text`` with at most ``n_tokens`` tokens."""
    words = text.split(" ")
    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer(" ".join(words[:mid]))["input_ids"]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024, 1536])
    parser.add_argument("--calibrate", action="store_true", help="make the calibration (timed) if missing")
    args = parser.parse_args()
    settings = Settings(map_size=32)
    cal = None
    if args.calibrate:
        start = time.perf_counter()
        cal = calibrate(settings, ResultStore())
        print(f"calibration: {cal.n_prompts} prompts, {time.perf_counter() - start:.1f} s "
              f"(lengths {cal.n_tokens.min()}-{cal.n_tokens.max()} tokens)")
    tokenizer = models.load_model(settings.model).tokenizer
    text = TEXT.read_text("utf-8")
    print("tokens  sequence m_3 (pct)   user first 3 (pct)   per layer m_3 (layers 2, 10, 20, 29)")
    with tempfile.TemporaryDirectory() as tmp:
        store = ResultStore(tmp)
        for n in args.lengths:
            result = analyze(cut(text, tokenizer, n), settings, store=store)
            out = [f"{result.stats.n_tokens:6d}"]
            for reading in ("sequence", "user"):
                values = per_layer_reading(result, 3, reading)
                pct = f"{judge(cal, values, reading).percentile:5.1f}" if cal else "  -  "
                out.append(f"{float(deep_mean(values)):.3f} ({pct})")
            m3 = per_layer_reading(result, 3, "sequence")
            out.append(" ".join(f"{m3[i]:.2f}" for i in (2, 10, 20, min(29, len(m3) - 1))))
            print("   ".join(out), flush=True)


if __name__ == "__main__":
    main()
