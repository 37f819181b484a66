"""Time the fused kernels alone on one layer against SDPA, per launch config.

    python3 bench/kernel_tune.py [--length 32768] [--shape llama3-8b|smollm2-135m]

Prints SDPA's time per layer, the flash call that also returns the log-sum-exp (what the
capture runs instead of SDPA), and per config the statistics kernels given that log-sum-exp,
as a ratio to SDPA. The capture's extra cost per layer is that last ratio.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402

from sinkviz import fused  # noqa: E402

SHAPES = {"llama3-8b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}  # heads, kv heads, head dim
# Statistics time / SDPA on an H100 at 32K, 2026-11-23 (8B shape; SmolLM2 shape where measured).
# fused.CONFIG is the first, the best seen:
#   (64, 64, 4, 2) 1.37-1.49 (1.92)   (64, 64, 4, 3) 1.36        (64, 64, 4, 4) 1.76 (2.05)
#   (32, 64, 4, 3) 1.50 (2.09)        (32, 64, 2, 3) 1.88 (2.17)  (64, 32, 4, 3) 2.58 (3.45)
#   (32, 32, 2, 3) 2.43 (3.13)        (128, 64, 8, 3) 2.60        (64, 128, 8, 3) 1.83
#   (128, 128, 8, 3) 1.61
# (BLOCK_M queries, BLOCK_N keys, warps, stages)
CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (32, 64, 4, 3), (128, 128, 8, 3)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--shape", choices=list(SHAPES), default="llama3-8b")
    args = parser.parse_args()
    n, (heads, kv_heads, dim) = args.length, SHAPES[args.shape]
    q = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, n, dim, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    bench = lambda fn: triton.testing.do_bench(fn, return_mode="median")  # noqa: E731
    sdpa = bench(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    backend = fused.sdpa_backend(q, k, v, dim ** -0.5)
    found = fused.attention_with_lse(q, k, v, dim ** -0.5)
    with_lse = bench(lambda: fused.attention_with_lse(q, k, v, dim ** -0.5)) if found else float("nan")
    lse = found[1] if found else None
    print(f"{args.shape}: {n} tokens, {heads} heads, {kv_heads} KV heads, D={dim}, bf16, "
          f"{torch.cuda.get_device_name()}: SDPA (backend {backend}) {sdpa:.2f} ms per layer, "
          f"its kernel with LSE {with_lse:.2f} ms" + ("" if found else " (no LSE: the own pass runs)"))
    reference = None
    for bm, bn, warps, stages in CONFIGS:
        fused.CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        try:
            out = fused.layer_statistics(q, k, dim ** -0.5, None, 128, lse)
            ms = bench(lambda: fused.layer_statistics(q, k, dim ** -0.5, None, 128, lse))
            own = bench(lambda: fused.layer_statistics(q, k, dim ** -0.5, None, 128))
        except Exception as err:  # a config the compiler rejects is reported, not fatal
            print(f"BLOCK_M={bm:>3} BLOCK_N={bn:>3} warps={warps} stages={stages}: {type(err).__name__}: "
                  f"{str(err)[:80]}")
            continue
        reference = reference or out
        diff = max(float((out[name] - reference[name]).abs().nan_to_num().max()) for name in out)
        print(f"BLOCK_M={bm:>3} BLOCK_N={bn:>3} warps={warps} stages={stages}: statistics {ms:7.2f} ms "
              f"= {ms / sdpa:5.2f} x SDPA (own LSE pass: {own / sdpa:5.2f} x); max diff to first {diff:.1e}")


if __name__ == "__main__":
    main()
