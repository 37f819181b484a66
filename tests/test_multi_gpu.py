"""A model spread over two GPUs gives the same statistics as on one (needs two CUDA GPUs).

The layers are split the way ``device_map="auto"`` splits a model too large for one GPU:
embeddings and the first half of the layers on cuda:0, the rest, the final norm and the LM
head on cuda:1, with accelerate's hooks moving the hidden states between them. Every
statistic, on the fused path (long prompt) and the block-wise path (SINKVIZ_FUSED=0), must
equal the same model's capture on cuda:0 alone, within the bf16 tolerance of the other GPU
tests. A spy checks that the fused kernels really ran on both GPUs.
"""

import os

import numpy as np
import pytest
import torch

from conftest import tiny_tokenizer
from sinkviz.engine import capture as cap
from sinkviz.engine import fused

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2,
    reason="needs two CUDA GPUs (the device tool's nvidia-h100-x2 or nvidia-h200-x2)")
NAMES = ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm")
LAYERS = 6
ATOL = 2e-4  # bf16 model, statistics accumulated in float32 (as tests/test_fused_gpu.py)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=120, hidden_size=256, intermediate_size=512, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192)
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    folder = tmp_path_factory.mktemp("two-gpu-llama")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)                     # peaked, sink-like attention
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def split_map() -> dict:
    """device_map="auto"'s layout for a model that fills more than one GPU."""
    half = LAYERS // 2
    return {"model.embed_tokens": 0, "model.rotary_emb": 0,
            **{f"model.layers.{i}": 0 if i < half else 1 for i in range(LAYERS)},
            "model.norm": 1, "lm_head": 1}


def load(folder: str, device_map):
    from transformers import AutoModelForCausalLM
    cap.register()
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16, device_map=device_map,
                                                attn_implementation=cap.ATTN_NAME).eval()


@pytest.mark.parametrize("path,length", [("fused", 3000), ("blockwise", 3000), ("blockwise", 100)])
def test_two_gpus_equal_one(llama_folder, monkeypatch, path, length):
    monkeypatch.setenv("SINKVIZ_FUSED", "1" if path == "fused" else "0")
    spread, single = load(llama_folder, split_map()), load(llama_folder, {"": 0})
    assert {p.device.index for p in spread.model.layers.parameters()} == {0, 1}
    seen = []
    real = fused.layer_statistics
    monkeypatch.setattr(fused, "layer_statistics", lambda q, *a, **k: seen.append(q.device.index) or real(q, *a, **k))
    seed = int.from_bytes(os.urandom(4), "little")
    ids = torch.randint(4, 120, (1, length), generator=torch.Generator().manual_seed(seed)).to("cuda:0")
    torch.cuda.set_device(0)          # the usual state: cuda:0 current while layers run on cuda:1
    got = cap.capture(spread, ids, 128)
    assert sorted(set(seen)) == ([0, 1] if path == "fused" and length > 128 else [])
    seen.clear()
    want = cap.capture(single, ids, 128)
    for name in NAMES:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=ATOL, rtol=1e-3 if "norm" in name else 0,
                                   equal_nan=True, err_msg=f"{name}, {path}, seed {seed}")
