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

from sinkviz.engine import fused  # noqa: E402

SHAPES = {"llama3-8b": (32, 8, 128), "smollm2-135m": (9, 3, 64)}  # heads, kv heads, head dim
# Statistics time / SDPA per layer at 32K on an H100 (8B shape; SmolLM2 shape), the key-major sweep:
# 2026-11-23 a: element-wise p*log2(p), padded log-sum-exp, in-kernel sink sums
#   (64, 64, 4, 2) 0.91 (1.25)   (64, 64, 4, 3) 0.93 (1.06)   (64, 64, 4, 4) 1.16 (1.15)
#   (64, 128, 8, 3) 0.84 (1.15)  (64, 128, 8, 4) 0.84 (1.17)  (64, 256, 16, 3) 1.07 (1.44)
#   with maxnreg=128 each 3-7 % slower; prefetching the next block's lse 20-45 % slower.
# 2026-11-23 b: relaxed atomics (no MEMBAR.GPU before each bin's atomic): (64, 128, 8, 3) 0.78.
#   ncu then: 50 % issue slots used, barrier the top stall (31 %), then 16 scalar lse loads per tile.
# 2026-11-23 c: lse through the dot (a ones operand times -lse in parts, loaded like q):
#   (64, 128, 8, 3, 128) 0.74 (1.10)  without maxnreg 154 registers, 1 block per SM: 0.98
#   (64, 64, 4, 3) 0.81 (1.07)        (64, 64, 4, 2) 0.86 (1.09)
# fused.LAUNCH holds the winners: (64, 128, 8, 3, 128) for 128-dim bf16 rows, (64, 64, 4, 3) for 64-dim.
# (BLOCK_M queries, BLOCK_N keys, warps, stages[, maxnreg]); None = fused.LAUNCH's choice for the shape.
CONFIGS = [None, (64, 128, 8, 3, 128), (64, 128, 8, 4, 128), (64, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2)]


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
    for config in CONFIGS:
        fused.OVERRIDE.clear()
        if config:
            keys = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg")
            fused.OVERRIDE.update(zip(keys, config + (None,) * (len(keys) - len(config))))
        try:
            out = fused.layer_statistics(q, k, dim ** -0.5, None, 128, lse)
            ms = bench(lambda: fused.layer_statistics(q, k, dim ** -0.5, None, 128, lse))
            own = bench(lambda: fused.layer_statistics(q, k, dim ** -0.5, None, 128))
        except Exception as err:  # a config the compiler rejects is reported, not fatal
            print(f"{config or 'LAUNCH'}: {type(err).__name__}: "
                  f"{str(err)[:80]}")
            continue
        reference = reference or out
        diff = max(float((out[name] - reference[name]).abs().nan_to_num().max()) for name in out)
        print(f"{str(config or 'LAUNCH'):>18}: statistics {ms:7.2f} ms "
              f"= {ms / sdpa:5.2f} x SDPA (own LSE pass: {own / sdpa:5.2f} x); max diff to first {diff:.1e}")


if __name__ == "__main__":
    main()
