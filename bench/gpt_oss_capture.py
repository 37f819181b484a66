"""gpt-oss (learned sinks, a mask on every layer, 128-token windows on half the layers): the
capture on the fused kernels against the block-wise path it took before, and against the
model's own eager forward (transformers runs gpt-oss with no SDPA), by length.

    python3 bench/gpt_oss_capture.py [--layers 6] [--lengths 4096 16384 32768]

A random-weight bf16 model of gpt-oss-20b's shape (hidden 2880, 64 query heads, 8 KV heads of
64 dims, 32 experts, 4 per token), cut to --layers layers (sliding and full alternate, as in
the model: the ratios per layer are the model's), built in code. Medians of 3 (1 past 32K);
block-wise up to --blockwise-max tokens, eager until it runs out of memory. Asserts nothing.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import GptOssConfig, GptOssForCausalLM  # noqa: E402

from bench.gpu_long_context import attempt, timed  # noqa: E402
from sinkviz.engine import capture  # noqa: E402

SHAPE = dict(hidden_size=2880, intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
             num_local_experts=32, num_experts_per_tok=4, vocab_size=201088, sliding_window=128)


def build(layers: int) -> GptOssForCausalLM:
    capture.register()
    config = GptOssConfig(**SHAPE, num_hidden_layers=layers, max_position_embeddings=131072,
                          layer_types=["sliding_attention", "full_attention"] * (layers // 2))
    with torch.device("cuda"):
        model = GptOssForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=capture.ATTN_NAME)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--blockwise-max", type=int, default=16384)
    args = parser.parse_args()
    model = build(args.layers)
    print(f"gpt-oss-20b shape, {args.layers} layers, bf16, {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    print("| tokens | eager forward | capture, fused | capture, block-wise | fused x eager | block-wise x fused |")
    print("| --- | --- | --- | --- | --- | --- |", flush=True)
    eager_ok = True
    for n in args.lengths:
        ids = torch.randint(10, SHAPE["vocab_size"], (1, n), device="cuda")
        repeats = 3 if n <= 32768 else 1
        cells = {}
        if eager_ok:
            def eager():
                with torch.no_grad():
                    model(input_ids=ids, **capture.forward_kwargs(model))
            model.set_attn_implementation("eager")
            cells["eager"] = attempt(lambda: timed(eager, repeats))
            eager_ok = cells["eager"] != "OOM"
            model.set_attn_implementation(capture.ATTN_NAME)
        cells["fused"] = attempt(lambda: timed(lambda: capture.capture(model, ids), repeats))
        if n <= args.blockwise_max:
            os.environ["SINKVIZ_FUSED"] = "0"
            cells["blockwise"] = attempt(lambda: timed(lambda: capture.capture(model, ids), 1))
            os.environ.pop("SINKVIZ_FUSED")
        print(f"| {n:,} | {cell(cells.get('eager'))} | {cell(cells['fused'])} | {cell(cells.get('blockwise'))} "
              f"| {ratio(cells['fused'], cells.get('eager'))} | {ratio(cells.get('blockwise'), cells['fused'])} |",
              flush=True)


def cell(value) -> str:
    return "-" if value is None else value if isinstance(value, str) else f"{value[0]:.3f} s, {value[1]:.1f} GiB"


def ratio(a, b) -> str:
    return f"{a[0] / b[0]:.2f}" if isinstance(a, tuple) and isinstance(b, tuple) else "-"


if __name__ == "__main__":
    main()
