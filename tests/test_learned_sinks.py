"""Learned sinks (gpt-oss's ``s_aux``) and soft caps (Gemma 2) are captured exactly.

Tiny random configs with a sliding window shorter than the prompt, on both layer kinds, sink
logits and caps large enough to matter; every statistic, the learned-sink mass and the model's
own logits against the float64 eager reference. Exact means: float32 within 1e-5 (the float32
floor of these models), float64 within 1e-10.
"""

import os

import numpy as np
import pytest
import torch

from conftest import VOCAB
from reference import eager_attentions, reference_stats
from sinkviz.engine.capture import capture, capture_with_logits
from sinkviz.flow.models import load_model

NAMES = ("sink_mass", "entropy", "received", "maps")


@pytest.fixture(scope="module")
def folders(sink_models) -> dict:
    return sink_models


def fresh_ids(length):
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.randint(4, VOCAB, (1, length), generator=torch.Generator().manual_seed(seed)), seed


def check(stats, att, map_size, atol, seed, learned_sink):
    ref = reference_stats(att, map_size, width=stats.bin_width)
    for name in NAMES:
        np.testing.assert_allclose(getattr(stats, name), ref[name], atol=atol, rtol=0, err_msg=f"{name}, seed {seed}")
    if learned_sink:
        np.testing.assert_allclose(stats.learned_sink, ref["learned_sink"], atol=atol, rtol=0, err_msg=str(seed))
        np.testing.assert_allclose(stats.learned_sink_map, ref["learned_sink_map"], atol=atol, rtol=0)
        assert ref["learned_sink"].max() > 0.2, "the sink logits should matter in this test"
    else:
        assert stats.learned_sink is None and np.abs(ref["learned_sink"]).max() < 1e-12


@pytest.mark.parametrize("name", ["gpt-oss", "gemma2"])
@pytest.mark.parametrize("length,map_size", [(40, 128), (150, 32)])
def test_float32_capture_and_logits_match_eager_float64(folders, name, length, map_size):
    ids, seed = fresh_ids(length)
    loaded = load_model(folders[name], device="cpu", dtype="float32")
    stats, logits = capture_with_logits(loaded.model, ids, map_size)
    att, _, want_logits = eager_attentions(folders[name], ids, with_logits=True, experts_implementation="eager")
    check(stats, att, map_size, 1e-5, seed, learned_sink=name == "gpt-oss")
    torch.testing.assert_close(logits.double(), want_logits, atol=1e-4, rtol=1e-4)  # the model's output is its own
    assert set(stats.windows) == {6, None}                                          # both layer kinds ran


@pytest.mark.parametrize("name", ["gpt-oss", "gemma2"])
def test_float64_capture_is_exact(folders, name):
    from transformers import AutoModelForCausalLM
    from sinkviz.engine import capture as cap
    cap.register()
    ids, seed = fresh_ids(90)
    model = AutoModelForCausalLM.from_pretrained(folders[name], dtype=torch.float64, attn_implementation=cap.ATTN_NAME,
                                                 experts_implementation="eager").eval()
    stats = capture(model, ids, 32)
    att, _ = eager_attentions(folders[name], ids, experts_implementation="eager")
    check(stats, att, 32, 1e-10, seed, learned_sink=name == "gpt-oss")


def test_learned_sink_sums_with_the_tokens_to_one(folders):
    """Per row, the tokens and the learned sink share all the attention: in the maps (the sink a
    column of its own) and summed over received attention."""
    ids, _ = fresh_ids(60)
    stats = capture(load_model(folders["gpt-oss"], device="cpu", dtype="float32").model, ids, 16)
    np.testing.assert_allclose(stats.maps.sum(-1) + stats.learned_sink_map, 1.0, atol=1e-5)
    total = (stats.received * (60 - np.arange(60))).sum(-1)
    np.testing.assert_allclose(total, 60 * (1 - stats.learned_sink), atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
def test_on_gpu_a_soft_cap_steps_aside_and_stays_exact(folders, monkeypatch):
    """On CUDA, a prompt longer than the map takes the block-wise path for a soft cap (it changes
    every score, which the fused kernels do not know): still exact, kernels never called."""
    from sinkviz.engine import fused
    monkeypatch.setattr(fused, "layer_statistics", lambda *a, **k: pytest.fail("fused path used"))
    ids, seed = fresh_ids(300)
    loaded = load_model(folders["gemma2"], device="cuda", dtype="float32")
    stats = capture(loaded.model, ids.cuda(), 128)
    assert stats.bin_width == 4
    att, _ = eager_attentions(folders["gemma2"], ids, experts_implementation="eager")
    check(stats, att, 128, 1e-5, seed, learned_sink=False)


@pytest.fixture(scope="module")
def fusable_folders(tmp_path_factory) -> dict:
    """gpt-oss (learned sinks, a mask on every layer) and Mistral, 16-dim heads (the fused kernels'
    smallest), a 40-token window on the sliding layers, weights x2, sink logits ~ N(0, 2)."""
    import transformers as T
    from conftest import save_scaled
    small = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, sliding_window=40, max_position_embeddings=512)
    return {name: save_scaled(config, tmp_path_factory.mktemp(name), 2.0)
            for name, config in {"gpt-oss": T.GptOssConfig(**small, num_local_experts=4, num_experts_per_tok=2),
                                 "mistral": T.MistralConfig(**small)}.items()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device machine)")
@pytest.mark.parametrize("name", ["gpt-oss", "mistral"])
def test_on_gpu_learned_sinks_and_masked_windows_take_the_fused_path_exactly(fusable_folders, name, monkeypatch):
    """A learned sink (lse' = logaddexp(lse, sink), output x exp(lse - lse')) and a mask that is
    exactly the causal window rule go through the fused kernels on every layer, sliding and full;
    every statistic, the learned sink and the model's logits against the float64 eager reference."""
    from sinkviz.engine import fused
    from sinkviz.engine.capture import capture_with_logits
    real, calls = fused.layer_statistics, []
    monkeypatch.setattr(fused, "layer_statistics", lambda *a, **k: calls.append(a[6] is not None) or real(*a, **k))
    ids, seed = fresh_ids(300)
    loaded = load_model(fusable_folders[name], device="cuda", dtype="float32")
    stats, logits = capture_with_logits(loaded.model, ids.cuda(), 128)
    assert calls == [name == "gpt-oss"] * 2 and stats.windows == ((40, None) if name == "gpt-oss" else (40, 40))
    att, _, want = eager_attentions(fusable_folders[name], ids, with_logits=True, experts_implementation="eager")
    check(stats, att, 128, 1e-5, seed, learned_sink=name == "gpt-oss")
    torch.testing.assert_close(logits.double().cpu(), want, atol=1e-4, rtol=1e-4)


def test_a_learned_sink_scales_the_output_as_its_softmax_column_would():
    """fused.with_learned_sink on attention over the keys equals the softmax with the sink column
    (dropped before the values), and returns that softmax's log-sum-exp. float64, CPU."""
    from sinkviz.engine.fused import with_learned_sink
    g = torch.Generator().manual_seed(0)
    heads, n, dim = 3, 7, 4
    scores = torch.randn(heads, n, n, generator=g, dtype=torch.float64).masked_fill(
        torch.ones(n, n, dtype=torch.bool).triu(1), -torch.inf)
    v, sink = torch.randn(heads, n, dim, generator=g, dtype=torch.float64), 2 * torch.randn(heads, n, generator=g)
    plain = (torch.softmax(scores, -1) @ v).transpose(0, 1)[None]                       # [1, L, heads, D]
    out, lse = with_learned_sink(plain, torch.logsumexp(scores, -1), sink.double())
    joint = torch.cat([scores, sink.double()[..., None]], -1)
    want = (torch.softmax(joint, -1)[..., :n] @ v).transpose(0, 1)[None]
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)             # lse' is kept in float32
    torch.testing.assert_close(lse.double(), torch.logsumexp(joint, -1), atol=1e-6, rtol=1e-6)
