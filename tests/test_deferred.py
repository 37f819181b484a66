"""Deferred statistics (short work on a GPU, sinkviz/engine/deferred.py): every layer in one sweep
after the forward gives each prompt the per-layer path's numbers, alone or in a padded batch,
and steps aside (to the per-layer path) wherever it cannot compute exactly."""

import os

import numpy as np
import pytest
import torch

from conftest import VOCAB
from test_batch import assert_same, sequences
from sinkviz.engine import capture as cap
from sinkviz.engine import deferred

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")


def llama(dtype, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM
    cap.register()
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, **extra)
    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    with torch.device("cuda"):
        return LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=cap.ATTN_NAME).eval()


@pytest.fixture
def deferred_runs(monkeypatch):
    """The batch sizes the deferred path finished, in order."""
    runs, result = [], deferred.DeferredRecorder.result

    def spy(self):
        runs.append(len(self.lengths))
        return result(self)
    monkeypatch.setattr(deferred.DeferredRecorder, "result", spy)
    return runs


def per_layer(model, seq):
    """The capture with deferral off: fused.layer_statistics layer by layer."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(deferred, "fits", lambda *a: False)
        return cap.capture(model, torch.tensor([seq], device="cuda"), 128)


@pytest.mark.parametrize("dtype,atol", [(torch.float16, 2e-4), (torch.bfloat16, 2e-4)])
def test_deferred_batch_equals_the_per_layer_path(dtype, atol, deferred_runs):
    """Lengths on both sides of the map size (full maps of width 1 and pooled ones of widths 2-32).
    16-bit only: float32 has no fused attention kernel that returns its log-sum-exp (with GQA),
    so it never defers (the next test's case)."""
    model = llama(dtype)
    seqs, seed = sequences([2500, 40, 700, 129, 1500, 8, 4096])
    batch = cap.capture_batch(model, seqs, 128)
    assert deferred_runs == [len(seqs)]
    for seq, stats in zip(seqs, batch):
        assert_same(stats, per_layer(model, seq), seed, f"{dtype} L={len(seq)}", atol=atol)


def test_deferred_single_prompt_equals_the_per_layer_path_and_keeps_the_logits(deferred_runs):
    model = llama(torch.bfloat16)
    (seq,), seed = sequences([1000])
    ids = torch.tensor([seq], device="cuda")
    stats, logits = cap.capture_with_logits(model, ids, 128)
    assert deferred_runs == [1]
    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits[0].float()
    assert torch.equal(logits, plain), seed
    assert_same(stats, per_layer(model, seq), seed, "bf16 L=1000", atol=2e-4)


@pytest.mark.parametrize("case", ["window", "short prompt", "learned sink", "float32"])
def test_deferred_steps_aside_where_it_cannot_be_exact(case, deferred_runs, sink_models):
    """A sliding window shorter than the prompt (Mistral), a prompt under 8 tokens, a softmax SDPA
    does not compute (gpt-oss's learned sink), float32: the per-layer path runs (no deferred
    result) and the numbers are its own."""
    from transformers import MistralConfig, MistralForCausalLM
    from sinkviz.flow.models import load_model
    if case == "learned sink":
        model = load_model(sink_models["gpt-oss"], device="cuda", dtype="bfloat16").model
    elif case == "window":
        config = MistralConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, sliding_window=64)
        with torch.device("cuda"):
            model = MistralForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation=cap.ATTN_NAME).eval()
    else:
        model = llama(torch.bfloat16 if case == "short prompt" else torch.float32)
    seqs, seed = sequences([300, 5] if case == "short prompt" else [300, 200])
    if case == "learned sink":   # captured one prompt at a time
        first = cap.capture(model, torch.tensor([seqs[0]], device="cuda"), 128)
    else:
        first = cap.capture_batch(model, seqs, 128)[0]
    assert deferred_runs == []
    assert_same(first, per_layer(model, seqs[0]), seed, case, atol=2e-4)


def test_a_corrupt_deferred_statistic_is_caught_on_the_gpu_and_named_on_the_host(monkeypatch):
    """finish_many's received attention halved for prompt 1 of 3: the GPU screen flags that prompt
    alone, the host check names the law, and the batch's capture raises (nothing is returned)."""
    from sinkviz.engine import fused, invariants
    real, flags = fused.finish_many, []

    def halved(*args):
        out = real(*args)
        out["received"][:, 1] *= 0.5
        return out
    screen = invariants.screen_batch
    monkeypatch.setattr(fused, "finish_many", halved)
    monkeypatch.setattr(invariants, "screen_batch", lambda *a: flags.append(screen(*a).tolist()) or screen(*a))
    seqs, _ = sequences([300, 120, 64])
    with pytest.raises(invariants.ImpossibleStatistic, match="received attention summed over keys"):
        cap.capture_batch(llama(torch.bfloat16), seqs, 128)
    assert flags == [[False, True, False]]


def test_an_audits_batch_takes_the_head_mean_on_the_gpu(deferred_runs, monkeypatch):
    """capture_batch(head_maps=False), what an audit runs: the maps cross to the host as their head
    mean ([layers, 1, bins, bins], within float32 rounding of the mean of every head's), everything
    else as with every head; a prompt the GPU screen flags gets every head's map for the host check
    that names the head (a map cell of one head set to 2)."""
    from sinkviz.engine import fused, invariants
    model = llama(torch.bfloat16)
    seqs, seed = sequences([900, 130, 40])
    whole, light = cap.capture_batch(model, seqs, 128), cap.capture_batch(model, seqs, 128, head_maps=False)
    assert deferred_runs == [3, 3]
    for full, mean in zip(whole, light):
        assert full.head_maps and not mean.head_maps and mean.maps.shape[1] == 1
        np.testing.assert_allclose(mean.maps[:, 0], full.maps.mean(1), atol=1e-6, rtol=0)
        for name in ("sink_mass", "entropy", "received", "hidden_norm", "value_norm"):
            assert (getattr(mean, name) == getattr(full, name)).all(), name
    real = fused.finish_many

    def one_cell(*args):
        out = real(*args)
        out["maps"][1, 2, 3, 0, 0] = 2.0                                   # layer 1, prompt 2, head 3
        return out
    monkeypatch.setattr(fused, "finish_many", one_cell)
    with pytest.raises(invariants.ImpossibleStatistic, match="layer 1, head 3"):
        cap.capture_batch(model, seqs, 128, head_maps=False)
