"""Hard to break: odd prompts, faults, operator limits, and properties over random input."""

import shutil

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from conftest import random_words, save_tiny_model
from sinkviz.engine import capture
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.errors import BadPrompt, ModelNotFound, OutOfMemory, UnsupportedArchitecture
from sinkviz.flow.models import load_model
from sinkviz.flow.store import ResultStore

ODD_PROMPTS = {
    "right-to-left": "مرحبا بالعالم. שלום עולם. Hello world.",
    "emoji": "Rate this 🚀🔥 launch: 👍 or 👎? 🧑‍🚀",
    "combining marks": "Ame\u0301lie na\u0308ive cafe\u0301 Z\u0336a\u0337l\u0338g\u0335o",
    "control characters": "tab\there\x07bell\x1bescape\rreturn\x7fdel",
}


def assert_valid(stats):
    for name in ("entropy", "received", "maps", "hidden_norm", "value_norm"):
        assert np.isfinite(getattr(stats, name)).all(), name
    valid = stats.sink_mass[np.isfinite(stats.sink_mass)]
    assert ((valid >= -1e-6) & (valid <= 1 + 1e-6)).all()
    assert ((stats.received >= -1e-6) & (stats.received <= 1 + 1e-6)).all()
    np.testing.assert_allclose(stats.maps.sum(-1), 1.0, atol=1e-5)   # every map row is a distribution


@pytest.mark.parametrize("name", list(ODD_PROMPTS))
def test_odd_prompts_analyse_on_the_default_model(name, store, default_model_dir):
    result = analyze(ODD_PROMPTS[name], Settings(), store=store)
    assert result.tokens.tokens[0] == "<|im_start|>"
    assert_valid(result.stats)


def test_only_special_tokens(store, default_model_dir):
    with pytest.raises(BadPrompt, match="the prompt has 1 token"):
        analyze("<|im_start|>", Settings(use_template=False), store=store)
    result = analyze("<|im_start|><|im_end|>", Settings(use_template=False), store=store)
    assert result.tokens.special == (True, True)
    assert_valid(result.stats)


def test_errors_leave_nothing_in_the_store(store, tiny_models, monkeypatch):
    settings = Settings(model=tiny_models["llama-gqa"], max_tokens=20)
    for prompt in ["", "w1 " * 30, "\x00"]:
        with pytest.raises(BadPrompt):
            analyze(prompt, settings, store=store)
    monkeypatch.setattr(capture, "capture", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("x")))
    with pytest.raises(OutOfMemory):
        analyze("w1 w2 w3", settings, store=store)
    assert store.metas() == []


def test_out_of_memory_is_a_message_and_the_next_request_works(store, tiny_models, monkeypatch):
    settings = Settings(model=tiny_models["llama-gqa"])
    real = capture.capture
    monkeypatch.setattr(capture, "capture", lambda *a, **k: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(OutOfMemory) as info:
        analyze("w1 w2 w3 w4", settings, store=store)
    assert str(info.value) == "cpu ran out of memory on a 5-token prompt; memory was released, try a shorter prompt"
    monkeypatch.setattr(capture, "capture", real)
    assert_valid(analyze("w1 w2 w3 w4", settings, store=store).stats)


def test_store_folder_deleted_while_running(tiny_models, tmp_path):
    folder = tmp_path / "store"
    store = ResultStore(folder)
    settings = Settings(model=tiny_models["llama-gqa"], map_size=16)
    prompt = random_words(30)
    first = analyze(prompt, settings, store=store)
    shutil.rmtree(folder)
    again = analyze(prompt, settings, store=store)
    assert not again.cached
    np.testing.assert_array_equal(again.stats.maps, first.stats.maps)
    assert ResultStore(folder).get(first.key) is not None     # the new store persists


def test_allowlist(tiny_models, monkeypatch):
    monkeypatch.setenv("SINKVIZ_ALLOWED_MODELS", f"smollm2-135m-instruct, {tiny_models['gpt2']}")
    with pytest.raises(ModelNotFound) as info:
        load_model(tiny_models["llama-gqa"])
    assert str(info.value) == f"model {tiny_models['llama-gqa']!r} is not in this server's allowlist"
    assert load_model(tiny_models["gpt2"]).info.architecture == "GPT2LMHeadModel"


def test_planted_remote_code_is_not_run(tmp_path):
    """A folder whose config asks for custom code gets refused while trust_remote_code is off."""
    from conftest import tiny_configs
    folder = save_tiny_model(tiny_configs()["llama-gqa"], tmp_path / "remote")
    marker = tmp_path / "ran"
    (tmp_path / "remote" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = (tmp_path / "remote" / "config.json")
    cfg.write_text(cfg.read_text().replace('"model_type": "llama"', '"model_type": "evil", '
                                           '"auto_map": {"AutoConfig": "evil.Config"}'))
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(folder)
    assert not marker.exists()
    assert str(info.value) == (f"{folder} needs its own Python code to load; sinkviz runs it only "
                               "if the operator sets SINKVIZ_TRUST_REMOTE_CODE=1")


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=300).filter(lambda s: s.strip() and "\x00" not in s),
       heads=st.sampled_from([(2, 1), (4, 2), (4, 4)]), layers=st.integers(1, 3),
       map_size=st.sampled_from([8, 16, 128]))
def test_property_random_text_and_models(text, heads, layers, map_size, tmp_path_factory):
    import transformers as T
    config = T.LlamaConfig(vocab_size=120, hidden_size=8 * heads[0], intermediate_size=32,
                           num_hidden_layers=layers, num_attention_heads=heads[0],
                           num_key_value_heads=heads[1], max_position_embeddings=512)
    folder = save_tiny_model(config, tmp_path_factory.mktemp("prop"), seed=len(text))
    store = ResultStore(tmp_path_factory.mktemp("prop-store"))
    try:
        result = analyze(text, Settings(model=folder, map_size=map_size), store=store)
    except BadPrompt as err:          # one-token prompts are refused, with that message
        assert str(err) == "the prompt has 1 token; sink statistics need at least 2"
        return
    assert result.stats.n_layers == layers and result.stats.n_heads == heads[0]
    assert_valid(result.stats)
