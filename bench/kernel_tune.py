"""Time the fused kernels alone on one Llama-3-8B-shaped layer against SDPA, per launch config.

    python3 bench/kernel_tune.py [--length 32768]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import triton  # noqa: E402

from sinkviz import fused  # noqa: E402

CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 2)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--length", type=int, default=32768)
    n = parser.parse_args().length
    q = torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sdpa = triton.testing.do_bench(lambda: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, is_causal=True, enable_gqa=True), return_mode="median")
    print(f"{n} tokens, 32 heads, 8 KV heads, D=128, bf16: SDPA (flash) {sdpa:.2f} ms per layer")
    reference = None
    for bm, bn, warps, stages in CONFIGS:
        fused.CONFIG.update(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)
        try:
            out = fused.layer_statistics(q, k, 128 ** -0.5, None, 128)
            ms = triton.testing.do_bench(lambda: fused.layer_statistics(q, k, 128 ** -0.5, None, 128),
                                         return_mode="median")
        except Exception as err:  # a config the compiler rejects is reported, not fatal
            print(f"BLOCK_M={bm:>3} BLOCK_N={bn:>3} warps={warps} stages={stages}: {type(err).__name__}")
            continue
        reference = reference or out
        diff = max(float((out[k2] - reference[k2]).abs().nan_to_num().max()) for k2 in out)
        print(f"BLOCK_M={bm:>3} BLOCK_N={bn:>3} warps={warps} stages={stages}: {ms:8.2f} ms "
              f"= {ms / sdpa:5.2f} x SDPA; max diff to first config {diff:.1e}")


if __name__ == "__main__":
    main()
