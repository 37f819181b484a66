"""The Triton kernels equal the block-wise reference path (GPU only; skipped elsewhere).

Tolerances: float32 inputs use IEEE dot products, so 2e-5 absolute; bfloat16 inputs give
exact products in both paths and differ only in float32 summation order, so 2e-4. The
attention output that the fused path computes for its log-sum-exp equals SDPA's bit for bit.
"""

import os

import numpy as np
import pytest
import torch

from sinkviz.engine import fused
from sinkviz.engine.capture import _Recorder, capture
from sinkviz.flow.models import load_model

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and fused.triton is not None),
                                reason="needs a CUDA GPU with Triton (run on the device machine)")
NAMES = ("sink_mass", "entropy", "received", "maps")


def random_qkv(heads, kv_heads, length, dim, dtype):
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = ((torch.randn(1, h, length, dim, device="cuda", generator=gen) * 2).to(dtype)
               for h in (heads, kv_heads, kv_heads))
    return seed, q, k, v


def reference_lse(q, k, scaling, window):
    """float64 log-sum-exp of each row's visible scaled scores: [heads, L]."""
    k = k[0].double().repeat_interleave(q.shape[1] // k.shape[1], 0)
    s = q[0].double() @ k.transpose(-1, -2) * scaling
    i = torch.arange(q.shape[2], device=q.device)
    hidden = (i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= (window or q.shape[2]))
    return torch.logsumexp(s.masked_fill(hidden, float("-inf")), -1)


@pytest.mark.parametrize("lse_given", [False, True])
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-5), (torch.bfloat16, 2e-4), (torch.float16, 2e-4)])
@pytest.mark.parametrize("heads,kv_heads,length,dim,window,map_size", [
    (8, 2, 1000, 64, None, 128),     # bins of 8 tokens
    (4, 4, 4099, 128, None, 64),     # ragged last tile, bins of 128
    (6, 3, 2000, 64, 300, 128),      # sliding window
    (3, 1, 700, 64, 5, 128),         # a window narrower than the 8 sink columns
    (2, 1, 9000, 64, None, 128),     # bins of 128 (a multiple of the tile)
    (2, 1, 1500, 256, None, 128),    # wide rows (fused.WIDE_ROWS for 16-bit, 1 KB rows in float32)
])
def test_kernel_matches_blockwise(lse_given, dtype, atol, heads, kv_heads, length, dim, window, map_size):
    seed, q, k, _ = random_qkv(heads, kv_heads, length, dim, dtype)
    scaling = dim ** -0.5
    assert fused.usable(q, k, None, causal=True, bias=None, map_size=map_size)
    lse = reference_lse(q, k, scaling, window).float() if lse_given else None
    got = fused.layer_statistics(q, k, scaling, window, map_size, lse)
    ref = _Recorder(map_size)._blockwise(q, k, None, scaling, None, True, window)
    for name in NAMES:
        torch.testing.assert_close(got[name], ref[name], atol=atol, rtol=0, equal_nan=True,
                                   msg=lambda m: f"{name}, seed {seed}: {m}")


@pytest.mark.parametrize("heads,kv_heads,length,dim,dtype", [
    (32, 8, 3000, 128, torch.bfloat16), (9, 3, 5000, 64, torch.bfloat16), (4, 4, 777, 64, torch.bfloat16),
    (8, 2, 1500, 64, torch.float16), (4, 4, 1000, 64, torch.float32)])
def test_attention_with_lse_is_sdpa_bit_for_bit(heads, kv_heads, length, dim, dtype):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    seed, q, k, v = random_qkv(heads, kv_heads, length, dim, dtype)
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, heads // kv_heads
    found = fused.attention_with_lse(q, k, v, dim ** -0.5)
    assert found is not None, f"SDPA picked backend {fused.sdpa_backend(q, k, v, dim ** -0.5)}"
    expected, _ = sdpa_attention_forward(module, q, k, v, None, scaling=dim ** -0.5)
    assert torch.equal(found[0], expected), (fused.sdpa_backend(q, k, v, dim ** -0.5), seed)
    torch.testing.assert_close(found[1][0].double(), reference_lse(q, k, dim ** -0.5, None), atol=1e-4, rtol=0,
                               msg=lambda m: f"seed {seed}: {m}")


@pytest.mark.parametrize("lse_given", [False, True])
def test_layer_statistics_never_wait_for_the_gpu(lse_given):
    """No host-device sync per layer (a bincount on CUDA was one): the CPU queues the next
    layers while this one runs. torch raises on any synchronizing call in this mode."""
    seed, q, k, v = random_qkv(8, 2, 3000, 64, torch.bfloat16)
    lse = fused.attention_with_lse(q, k, v, 64 ** -0.5)[1][0] if lse_given else None
    fused.layer_statistics(q, k, 64 ** -0.5, None, 128, lse)                  # compile first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused.layer_statistics(q, k, 64 ** -0.5, None, 128, lse)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bf16_model_capture_keeps_logits_and_matches_blockwise(monkeypatch):
    """A Llama of head dim 64 in bfloat16: capture's logits equal a plain forward's, bit for bit,
    and the fused statistics equal the block-wise path's."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from sinkviz.engine import capture as cap
    cap.register()
    config = LlamaConfig(vocab_size=120, hidden_size=256, intermediate_size=256, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=cap.ATTN_NAME)
    ids = torch.randint(0, 120, (1, 2500), device="cuda")
    stats, logits = cap.capture_with_logits(model.eval(), ids, 128)
    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits[0].float()
    assert torch.equal(logits, plain), seed
    monkeypatch.setenv("SINKVIZ_FUSED", "0")
    ref = cap.capture(model, ids, 128)
    for name in NAMES:
        np.testing.assert_allclose(getattr(stats, name), getattr(ref, name), atol=2e-4, rtol=0,
                                   err_msg=f"{name}, seed {seed}")


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
