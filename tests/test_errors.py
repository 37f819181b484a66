"""Bad input gets one clear sentence naming the cause, never a traceback or a number."""

import pytest
import transformers as T

from conftest import save_tiny_model
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.errors import BadPrompt, ModelNotFound, UnsupportedArchitecture
from sinkviz.flow.models import load_model


@pytest.mark.parametrize("prompt,message", [
    ("", "the prompt is empty"),
    ("  \n\t ", "the prompt is empty"),
    ("a\x00b", "the prompt contains a NUL character"),
    ("x" * 1_000_001, "the prompt has 1,000,001 characters; the limit is 1,000,000"),
])
def test_bad_prompts(prompt, message, store, tiny_models):
    with pytest.raises(BadPrompt) as info:
        analyze(prompt, Settings(model=tiny_models["llama-gqa"]), store=store)
    assert str(info.value) == message


def test_prompt_over_the_limit(store, tiny_models):
    settings = Settings(model=tiny_models["llama-gqa"], max_tokens=10)
    with pytest.raises(BadPrompt) as info:
        analyze(" ".join(["w1"] * 10), settings, store=store)   # 10 words + <s>
    assert str(info.value) == "the prompt has 11 tokens; the limit is 10"


def test_prompt_over_the_model_context(store, tiny_models):
    with pytest.raises(BadPrompt) as info:
        analyze(" ".join(["w1"] * 600), Settings(model=tiny_models["gpt2"]), store=store)
    assert str(info.value) == "the prompt has 601 tokens; the limit is 512"


def test_one_token_prompt(store, default_model_dir):
    settings = Settings(use_template=False)
    with pytest.raises(BadPrompt) as info:
        analyze("Hi", settings, store=store)
    assert str(info.value) == "the prompt has 1 token; sink statistics need at least 2"


def test_unknown_hub_id():
    with pytest.raises(ModelNotFound) as info:
        load_model("nobody/no-such-model")
    assert str(info.value).startswith("model 'nobody/no-such-model' was not found in the local "
                                      "Hugging Face cache")


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFound) as info:
        load_model(str(tmp_path / "nothing"))
    assert str(info.value) == f"no model folder at {tmp_path / 'nothing'}"


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelNotFound) as info:
        load_model(str(tmp_path))
    assert str(info.value) == f"{tmp_path}: no safetensors or GGUF weights"


def test_pickle_weights_are_refused(tmp_path):
    from conftest import tiny_configs
    folder = save_tiny_model(tiny_configs()["llama-gqa"], tmp_path / "pickled", safe=False)
    with pytest.raises(ModelNotFound) as info:
        load_model(folder)
    assert str(info.value) == f"{folder}: no safetensors or GGUF weights (pickle weights are never loaded)"


def test_architecture_without_the_interface(tmp_path):
    """XLNet computes attention itself and returns one map per layer: its eager maps serve.
    Longformer's are [L, window] bands, not maps: refused, both reasons given."""
    from transformers import AutoModel
    config = T.XLNetConfig(vocab_size=120, d_model=32, n_layer=2, n_head=2, d_inner=64)
    assert load_model(save_tiny_model(config, tmp_path / "xlnet")).info.eager_attention
    config = T.LongformerConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, attention_window=4)
    folder = save_tiny_model(config, tmp_path / "longformer", model_class=AutoModel)
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(folder)
    assert "sent 0 of 2 layers through the attention interface" in str(info.value)
    assert "its eager path cannot serve either" in str(info.value)


def test_model_without_attention(tmp_path):
    config = T.MambaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2)
    folder = save_tiny_model(config, tmp_path / "mamba")
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(folder)
    assert str(info.value) == "mamba has no attention heads to inspect (it mixes tokens without softmax attention)"


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickle(folder, marker):
    import pickle
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Payload(marker), f)


def test_pickle_next_to_a_dummy_safetensors_is_refused(tmp_path, monkeypatch):
    import torch
    from conftest import tiny_configs
    folder = save_tiny_model(tiny_configs()["llama-gqa"], tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    plant_pickle(tmp_path / "m", tmp_path / "pwned")
    (tmp_path / "m" / "x.safetensors").write_bytes(b"dummy")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(ModelNotFound) as info:
        load_model(folder)
    assert str(info.value) == (f"{folder}: x.safetensors is not a checkpoint transformers loads "
                               "(model.safetensors or model.safetensors.index.json) (pickle weights are never loaded)")
    assert loads == [] and not (tmp_path / "pwned").exists()


def test_safetensors_win_over_a_planted_pickle(tmp_path, monkeypatch):
    import torch
    from conftest import tiny_configs
    folder = save_tiny_model(tiny_configs()["llama-gqa"], tmp_path / "m")
    plant_pickle(tmp_path / "m", tmp_path / "pwned")
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    assert load_model(folder).info.architecture == "LlamaForCausalLM"
    assert loads == [] and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("model_type,reason", [
    ("blt", "blt keeps its attention in 4 nested sub-models (patcher_config, encoder_config, decoder_config, "
            "global_config); sinkviz captures one stack of attention layers over the prompt's tokens"),
    ("perceiver", "perceiver's attention is not one stack of self-attention layers over the prompt's tokens "
                  "(num_self_attention_heads, num_cross_attention_heads); sinkviz cannot map it onto the tokens"),
    ("rwkv", "rwkv has no attention heads to inspect (it mixes tokens without softmax attention)")])
def test_a_config_without_num_attention_heads_is_refused_for_what_it_is(model_type, reason):
    """BLT and Perceiver have attention heads (nested, or under other names): never told "no attention"."""
    from transformers import AutoConfig
    from sinkviz.flow.models import _no_heads_reason
    assert _no_heads_reason(AutoConfig.for_model(model_type)) == reason
