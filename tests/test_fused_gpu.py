"""The Triton kernels equal the block-wise reference path (GPU only; skipped elsewhere).

Tolerances: float32 inputs use IEEE dot products, so 2e-5 absolute; bfloat16 inputs give
exact products in both paths and differ only in float32 summation order, so 2e-4.
"""

import os

import numpy as np
import pytest
import torch

from sinkviz import fused
from sinkviz.capture import _Recorder, capture
from sinkviz.models import load_model

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fused.triton is not None),
                                reason="needs a CUDA GPU with Triton (run on the device machine)")
NAMES = ("sink_mass", "entropy", "received", "maps")


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-4)])
@pytest.mark.parametrize("heads,kv_heads,length,dim,window,map_size", [
    (8, 2, 1000, 64, None, 128),     # bins of 8 tokens
    (4, 4, 4099, 128, None, 64),     # ragged last tile, bins of 128
    (6, 3, 2000, 64, 300, 128),      # sliding window
    (2, 1, 9000, 64, None, 128),     # bins of 128 (a multiple of the tile)
])
def test_kernel_matches_blockwise(dtype, atol, heads, kv_heads, length, dim, window, map_size):
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = (torch.randn(1, heads, length, dim, device="cuda", generator=gen) * 2).to(dtype)
    k = (torch.randn(1, kv_heads, length, dim, device="cuda", generator=gen) * 2).to(dtype)
    scaling = dim ** -0.5
    assert fused.usable(q, k, None, causal=True, bias=None, map_size=map_size)
    got = fused.layer_statistics(q, k, scaling, window, map_size)
    ref = _Recorder(map_size)._blockwise(q, k, None, scaling, None, True, window)
    for name in NAMES:
        torch.testing.assert_close(got[name], ref[name], atol=atol, rtol=0, equal_nan=True,
                                   msg=lambda m: f"{name}, seed {seed}: {m}")


def test_model_capture_on_gpu_matches_eager_float64(tiny_models):
    from reference import eager_attentions, reference_stats
    seed = int.from_bytes(os.urandom(4), "little")
    ids = torch.randint(4, 120, (1, 700), generator=torch.Generator().manual_seed(seed))
    loaded = load_model(tiny_models["llama-gqa"], device="cuda", dtype="float32")
    stats = capture(loaded.model, ids.cuda(), 128)
    assert stats.bin_width == 8
    att, _ = eager_attentions(tiny_models["llama-gqa"], ids)
    ref = reference_stats(att, 128, width=stats.bin_width)
    for name in NAMES:
        np.testing.assert_allclose(getattr(stats, name), ref[name], atol=1e-5, rtol=0, err_msg=f"{name} {seed}")
