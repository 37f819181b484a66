"""GPU benchmark: plain SDPA forward vs eager output_attentions vs sinkviz capture, by length.

    python3 bench/gpu_long_context.py [--shapes llama3-8b smollm2-135m] [--lengths 1024 ... 131072]

Random-weight models of real shapes, bf16, built from configs in code (no weights needed).
For each length: median time and peak allocated GPU memory of a plain SDPA forward
(prefill, no cache, one logit row), of eager with output_attentions (until it runs out of
memory), of sinkviz's capture (fused Triton path) and, up to --blockwise-max tokens, of the
block-wise PyTorch path (SINKVIZ_FUSED=0). Prints one table; asserts nothing.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from sinkviz.engine import capture  # noqa: E402

SHAPES = {
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      rope_theta=500000.0),
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
}


def build(shape: str) -> LlamaForCausalLM:
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=262144)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    return model.eval()


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median seconds, peak GiB allocated) of fn(); 'OOM' raises through."""
    fn()
    torch.cuda.synchronize()
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), torch.cuda.max_memory_allocated() / 2**30


def run_shape(shape: str, lengths: list[int], blockwise_max: int, eager_max: int) -> list[str]:
    capture.register()
    model = build(shape)
    rows, eager_ok = [], True
    for n in lengths:
        ids = torch.randint(10, model.config.vocab_size, (1, n), device="cuda")
        repeats = 3 if n <= 32768 else 1
        cells = {}

        def plain():
            with torch.no_grad():
                model(input_ids=ids, **capture.forward_kwargs(model))
        model.set_attn_implementation("sdpa")
        cells["sdpa"] = attempt(lambda: timed(plain, repeats))

        def eager():
            with torch.no_grad():
                model(input_ids=ids, output_attentions=True, **capture.forward_kwargs(model))
        if eager_ok and n <= eager_max:
            model.set_attn_implementation("eager")
            cells["eager"] = attempt(lambda: timed(eager, 1))
            eager_ok = cells["eager"] != "OOM"
        model.set_attn_implementation(capture.ATTN_NAME)
        cells["capture"] = attempt(lambda: timed(lambda: capture.capture(model, ids), repeats))
        if n <= blockwise_max:
            os.environ["SINKVIZ_FUSED"] = "0"
            cells["blockwise"] = attempt(lambda: timed(lambda: capture.capture(model, ids), 1))
            os.environ.pop("SINKVIZ_FUSED")
        rows.append(format_row(shape, n, cells))
        print(rows[-1], flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def attempt(fn):
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"


def cell(value) -> str:
    if value is None:
        return f"{'-':>17}"
    if value == "OOM":
        return f"{'OOM':>17}"
    return f"{value[0]:>8.3f}s {value[1]:>6.1f}G"


def format_row(shape, n, cells) -> str:
    ratio = (f"{cells['capture'][0] / cells['sdpa'][0]:>6.2f}"
             if isinstance(cells.get("capture"), tuple) and isinstance(cells.get("sdpa"), tuple) else f"{'-':>6}")
    mem = (f"{cells['capture'][1] / cells['sdpa'][1]:>6.2f}"
           if isinstance(cells.get("capture"), tuple) and isinstance(cells.get("sdpa"), tuple) else f"{'-':>6}")
    return (f"{shape:<13} {n:>7} {cell(cells.get('sdpa'))} {cell(cells.get('eager'))} "
            f"{cell(cells.get('capture'))} {ratio} {mem} {cell(cells.get('blockwise'))}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--lengths", type=int, nargs="+",
                        default=[1024, 4096, 8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--blockwise-max", type=int, default=16384)
    parser.add_argument("--eager-max", type=int, default=16384)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, random weights")
    header = (f"{'shape':<13} {'tokens':>7} {'sdpa time  peak':>17} {'eager time  peak':>17} "
              f"{'capture time peak':>17} {'x time':>6} {'x mem':>6} {'blockwise (torch)':>17}")
    print(header, flush=True)
    rows = []
    for shape in args.shapes:
        rows += run_shape(shape, args.lengths, args.blockwise_max, args.eager_max)
    print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
