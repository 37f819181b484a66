"""One statistics launch (8B shape, bf16) for ncu: bench/ncu_stalls.sh runs it per config.

    CONFIG=64,128,8,3,128 python3 bench/ncu_one.py   # BLOCK_M, BLOCK_N, warps, stages[, maxnreg]
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from sinkviz.engine import fused  # noqa: E402

n, heads, kv_heads, dim = int(os.environ.get("N", 32768)), 32, 8, 128
fused.OVERRIDE.update(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages", "maxnreg"),
                          (int(x) for x in os.environ["CONFIG"].split(","))))
q = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16)
k = torch.randn(1, kv_heads, n, dim, device="cuda", dtype=torch.bfloat16)
lse = fused.attention_with_lse(q, k, torch.randn_like(k), dim ** -0.5)[1]
for _ in range(2):  # ncu skips the first launch (compilation) and profiles the second
    fused.layer_statistics(q, k, dim ** -0.5, None, 128, lse)
torch.cuda.synchronize()
