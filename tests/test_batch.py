"""Several prompts in one padded forward pass: each prompt's statistics equal its own capture.

Lengths fall on both sides of the map size (full maps and pooled ones) and of the sliding
windows (7 and 6 tokens), so the batch mixes full-mask, windowed-mask and pooled layers. Float32
within 1e-6 (the issue's bar; the padded matmuls differ from batch-1's only in rounding).
"""

import os

import numpy as np
import pytest
import torch

from conftest import VOCAB, random_words, tiny_configs
from sinkviz.engine import capture as cap
from sinkviz.flow.analysis import Settings, analyze, analyze_many, plan_batches
from sinkviz.errors import BadPrompt
from sinkviz.flow.models import load_model
from sinkviz.numbers.stats import ARRAY_FIELDS, OPTIONAL_FIELDS

LENGTHS = [37, 5, 64, 65, 130, 6, 2]
ATOL = 1e-6


def sequences(lengths):
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=gen).tolist() for n in lengths], seed


def assert_same(batched, single, seed, what, atol=ATOL):
    assert (batched.bin_width, batched.causal, batched.windows) == (single.bin_width, single.causal, single.windows)
    for name in ARRAY_FIELDS + OPTIONAL_FIELDS:
        got, want = getattr(batched, name), getattr(single, name)
        if want is None:
            assert got is None, name
            continue
        np.testing.assert_allclose(got, want, atol=atol, rtol=1e-6 if "norm" in name else 0, equal_nan=True,
                                   err_msg=f"{what}: {name}, seed {seed}")


@pytest.mark.parametrize("arch", list(tiny_configs()))
def test_batch_equals_one_at_a_time(tiny_models, arch):
    model = load_model(tiny_models[arch], device="cpu", dtype="float32").model
    seqs, seed = sequences(LENGTHS)
    batched = cap.capture_batch(model, seqs, 64)
    for seq, stats in zip(seqs, batched):
        assert stats.n_tokens == len(seq)
        assert_same(stats, cap.capture(model, torch.tensor([seq]), 64), seed, f"{arch} L={len(seq)}")


@pytest.mark.parametrize("name", ["gpt-oss", "gemma2"])
def test_batch_with_learned_sinks_and_soft_caps(sink_models, name):
    """In float64, to 1e-10: these random MoE weights (x3) put float32's batched-vs-single matmul
    rounding at ~1.3e-6 in the deepest layer's maps, which is not what this test is about."""
    model = load_model(sink_models[name], device="cpu", dtype="float64").model
    seqs, seed = sequences([40, 3, 90])
    for seq, stats in zip(seqs, cap.capture_batch(model, seqs, 32)):
        assert_same(stats, cap.capture(model, torch.tensor([seq]), 32), seed, f"{name} L={len(seq)}", atol=1e-10)


def test_batch_of_an_encoder(tmp_path):
    """Bidirectional attention: each prompt sees all of its own tokens and none of the padding."""
    from transformers import AutoModel, BertConfig
    from conftest import save_tiny_model
    folder = save_tiny_model(BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=512),
                             tmp_path / "bert", model_class=AutoModel)
    model = load_model(folder, device="cpu", dtype="float32").model
    seqs, seed = sequences([20, 70, 4])
    for seq, stats in zip(seqs, cap.capture_batch(model, seqs, 32)):
        assert not stats.causal
        assert_same(stats, cap.capture(model, torch.tensor([seq]), 32), seed, f"bert L={len(seq)}")


def test_a_mask_that_is_not_each_prompts_own_is_refused(tiny_models, monkeypatch):
    """If the model's padded mask let a prompt see another's tokens or the padding, the batch
    is refused (and analyze_many falls back to one prompt at a time)."""
    model = load_model(tiny_models["llama-gqa"], device="cpu", dtype="float32").model
    real = cap._Batch._check

    def leaky(self, mask, causal, window):
        if mask is not None:
            mask = mask.clone()
            mask[0, :, :, -1] = True            # prompt 0's rows see the last (padding) column
        return real(self, mask, causal, window)
    monkeypatch.setattr(cap._Batch, "_check", leaky)
    with pytest.raises(cap.BatchUnsupported):
        cap.capture_batch(model, sequences([10, 30])[0], 64)


def test_analyze_many_equals_analyze(tiny_models, store, tmp_path):
    """Same keys and numbers as analyze(), in the store; bad prompts get their own error; a
    prompt given twice is computed once; a second run is all store hits."""
    settings = Settings(model=tiny_models["mistral-window"], map_size=32)
    prompts = [random_words(n) for n in (30, 3, 80, 12)] + ["", random_words(700)]
    prompts.insert(2, prompts[0])
    results = dict(analyze_many(prompts, Settings(model=settings.model, map_size=32, max_tokens=400), store=store))
    assert sorted(results) == list(range(len(prompts)))
    assert isinstance(results[5], BadPrompt) and "empty" in str(results[5])
    assert isinstance(results[6], BadPrompt) and "limit is 400" in str(results[6])
    assert results[2] is results[0]
    for i in (0, 1, 3, 4):
        single = analyze(prompts[i], Settings(model=settings.model, map_size=32, max_tokens=400),
                         store=type(store)(tmp_path / f"single{i}"))
        assert results[i].key == single.key and results[i].key in store
        assert_same(results[i].stats, single.stats, 0, f"prompt {i}")
    again = dict(analyze_many(prompts[:5], Settings(model=settings.model, map_size=32, max_tokens=400), store=store))
    assert all(again[i].cached for i in range(5))


def test_plan_batches_sorts_and_respects_the_budget():
    lengths = [50, 400, 10, 200, 1200, 30]
    batches = plan_batches(lengths, 600, lambda n: n)
    assert batches == [[10, 30, 50], [200], [400], [1200]]
    assert [n for b in batches for n in b] == sorted(lengths)
    assert all(len(b) * max(b) <= 600 or len(b) == 1 for b in batches)


def test_batch_of_a_hybrid(tmp_path):
    """qwen3_next (linear-attention and attention layers): rows are the attention layers, as alone."""
    from coverage_sweep import build
    folder = build("qwen3_next", "causal", tmp_path)
    model = load_model(folder, device="cpu", dtype="float32").model
    seqs, seed = sequences([30, 9, 70])
    for seq, stats in zip(seqs, cap.capture_batch(model, seqs, 32)):
        single = cap.capture(model, torch.tensor([seq]), 32)
        assert stats.layers == single.layers and stats.layer_kinds == single.layer_kinds
        assert_same(stats, single, seed, f"qwen3_next L={len(seq)}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-4)])
def test_batch_on_gpu_equals_one_at_a_time(dtype, atol):
    """A Llama on CUDA: prompts longer than the map take the fused path inside the batch too."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cap.register()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=cap.ATTN_NAME).eval()
    seqs, seed = sequences([2500, 40, 700, 129, 1500])
    for seq, stats in zip(seqs, cap.capture_batch(model, seqs, 128)):
        assert_same(stats, cap.capture(model, torch.tensor([seq], device="cuda"), 128), seed,
                    f"{dtype} L={len(seq)}", atol=atol)
