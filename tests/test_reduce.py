"""The block reducer gives the same sums whatever the block size, on random distributions."""

import os

import numpy as np
import pytest
import torch

from reference import reference_stats
from sinkviz.engine.reduce import LayerReducer, bin_width, row_entropy


def random_causal_attention(heads, L, gen):
    scores = torch.randn(heads, L, L, generator=gen, dtype=torch.float64) * 3
    scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -torch.inf)
    return torch.softmax(scores, -1)


@pytest.mark.parametrize("L,map_size,block", [(5, 128, 2), (100, 16, 7), (257, 64, 64), (64, 64, 1)])
def test_blocks_sum_to_reference(L, map_size, block):
    seed = int.from_bytes(os.urandom(4), "little")
    att = random_causal_attention(3, L, torch.Generator().manual_seed(seed))
    reducer = LayerReducer(3, L, map_size, causal=True, device=att.device, dtype=att.dtype)
    for start in range(0, L, block):
        reducer.add(att[:, start:start + block], start)
    got = reducer.finish()
    ref = reference_stats(att[None].numpy(), map_size, width=bin_width(L, map_size))
    for name in ("sink_mass", "entropy", "received", "maps"):
        np.testing.assert_allclose(got[name].numpy(), ref[name][0], atol=1e-12, err_msg=f"{name} {seed}")


@pytest.mark.parametrize("L,size,width", [(1, 128, 1), (128, 128, 1), (129, 128, 2), (1000, 128, 8),
                                          (300, 64, 8), (20000, 128, 192), (131072, 128, 1024)])
def test_bin_width(L, size, width):
    assert bin_width(L, size) == width
    assert -(-L // width) <= size


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_row_entropy_equals_minus_p_log_p(dtype, rtol):
    """sum p (M - x) - ln p_max against -sum p ln p in float64: masked keys (-inf), a row with
    one key, logits in the hundreds (massive activations), a finite large-negative mask."""
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    logits = torch.randn(3, 6, 50, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 30.0, 300.0])[:, None, None]
    logits[:, :, 40:] = -torch.inf                   # keys no query sees
    logits[:, 0, 1:] = -torch.inf                    # a row that sees one key: entropy 0
    logits[:, 1, 20:40] = torch.finfo(torch.float64).min / 2   # an additive mask's finite minimum
    want = -torch.special.xlogy(*(torch.softmax(logits, -1),) * 2).sum(-1)
    x = logits.to(dtype)
    got = row_entropy(x.clone(), torch.softmax(x, -1)).double()
    assert torch.all(want[:, 0] == 0) and torch.all(got[:, 0].abs() <= 1e-6)
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol)
