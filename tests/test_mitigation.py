"""Mitigation lab: gamma = 1 is the identity, the scaled path is right, windows behave."""

import os

import numpy as np
import pytest
import torch

from conftest import random_words
from sinkviz.engine import capture
from sinkviz.flow.analysis import Settings
from sinkviz.cli import main
from sinkviz.errors import BadSetting, UnsupportedArchitecture
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.flow.mitigation import attention_scaling, cached_window_losses, full_losses, sink_token_experiment
from sinkviz.flow.models import load_model

STATS = ("sink_mass", "entropy", "received", "maps")


def test_gamma_one_changes_nothing(tiny_models):
    r = attention_scaling(random_words(40), Settings(model=tiny_models["llama-gqa"]), 10, 1.0)
    assert float(np.abs(r.kl).max()) == 0.0 and r.perplexity_before == r.perplexity_after
    assert r.top5_before == r.top5_after
    for name in STATS:
        np.testing.assert_array_equal(getattr(r.before, name), getattr(r.after, name))


def test_scaled_path_with_no_key_scaled_equals_sdpa(tiny_models):
    """K = 0 sends every layer through the block-wise scaled path with nothing scaled."""
    loaded = load_model(tiny_models["llama-gqa"], device="cpu")
    ids = torch.randint(4, 120, (1, 70))
    plain, logits = capture.capture_with_logits(loaded.model, ids, 16)
    with capture.scaled_first_keys(0, 0.5):
        scaled, logits_scaled = capture.capture_with_logits(loaded.model, ids, 16)
    torch.testing.assert_close(logits_scaled, logits, atol=1e-5, rtol=1e-5)
    for name in STATS:
        np.testing.assert_allclose(getattr(scaled, name), getattr(plain, name), atol=1e-5, equal_nan=True)


def test_scaled_attention_matches_a_hand_computation():
    torch.manual_seed(int.from_bytes(os.urandom(2), "little"))
    q, k, v = (torch.randn(1, 2, 9, 4) for _ in range(3))
    out, _ = capture._blockwise_attention(None, q, k, v, None, {"scaling": 0.5}, capture.Softmax(first_key_scale=(3, 0.7)), None)
    scores = (q[0] @ k[0].transpose(-1, -2)) * 0.5
    scores[..., :3] *= 0.7
    scores = scores.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), -torch.inf)
    expected = (torch.softmax(scores, -1) @ v[0]).transpose(0, 1)[None]
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_window_as_long_as_the_text_equals_full_attention(tiny_models):
    loaded = load_model(tiny_models["llama-gqa"], device="cpu")
    ids = torch.randint(4, 120, (60,))
    full = full_losses(loaded.model, ids)
    np.testing.assert_allclose(cached_window_losses(loaded.model, ids, 60, 0), full, atol=1e-4)
    np.testing.assert_allclose(cached_window_losses(loaded.model, ids, 60, 4), full, atol=1e-4)
    short = cached_window_losses(loaded.model, ids, 20, 4)
    np.testing.assert_allclose(short[:20], full[:20], atol=1e-4)      # the cache is not full yet
    assert np.abs(short[25:] - full[25:]).max() > 1e-3                 # then evictions change the losses


def test_bad_lab_settings():
    with pytest.raises(BadSetting):
        attention_scaling("hi there", Settings(), 0, 0.85)
    with pytest.raises(BadSetting):
        sink_token_experiment("hi there", Settings(), window=4, sinks=4)


def test_cli_lab_scale_json(tiny_models, capsys):
    import json
    assert main(["lab", "scale", "--prompt", random_words(30), "--model", tiny_models["gpt2"], "--k", "3",
                 "--gamma", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 3 and out["gamma"] == 0.5 and len(out["sink_mass_after"]) == 3
    assert out["kl_max"] >= out["kl_mean"] >= 0


def test_lab_page_plots_the_engine_numbers(app_test):
    from plotly_json import array, by_title
    at = app_test()
    at.switch_page("pages/lab.py").run()
    at.number_input(key="lab_k").set_value(4)
    at.button[0].click().run()
    assert not at.exception and not at.error
    r = attention_scaling("You are a helpful assistant. Answer concisely.", Settings(), 4, 0.85)
    bars = by_title(at, "Sink mass per layer (first 3 tokens), before and after")
    np.testing.assert_allclose(array(bars["data"][0]["y"]), layer_sinks(r.before, 3).sink_mass, rtol=1e-6)
    np.testing.assert_allclose(array(bars["data"][1]["y"]), layer_sinks(r.after, 3).sink_mass, rtol=1e-6)
    np.testing.assert_allclose(array(by_title(at, "KL(before")["data"][0]["y"]), r.kl, atol=1e-9)


def test_encoder_is_refused_with_a_reason():
    settings = Settings(model="all-minilm-l6-v2")
    message = ("all-MiniLM-L6-v2 (embedded, offline; encoder, bidirectional) (BertModel) has no language-model "
               "head: these experiments measure next-token loss, so they need a causal language model")
    for run in (lambda: attention_scaling("The sink.", settings), lambda: sink_token_experiment("a b c d e", settings)):
        with pytest.raises(UnsupportedArchitecture) as err:
            run()
        assert str(err.value) == message


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "mistral-window"])
def test_no_deprecated_transformers_argument(tiny_models, name):
    """A capture and the window decode pass transformers only current arguments: no FutureWarning
    such as "`past_key_values` is deprecated and will be removed in version 5.40.0"."""
    import warnings

    from sinkviz.flow.analysis import analyze
    loaded = load_model(tiny_models[name], device="cpu")
    ids = torch.randint(4, 120, (12,))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        analyze(random_words(12), Settings(model=tiny_models[name], use_template=False, device="cpu"))
        losses = cached_window_losses(loaded.model, ids, 8, 2)
    assert [str(w.message) for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
    np.testing.assert_allclose(losses[:7], full_losses(loaded.model, ids)[:7], atol=1e-4)  # the cache was used
