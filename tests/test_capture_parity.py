"""Every captured statistic equals the float64 eager ``output_attentions`` reference."""

import os

import numpy as np
import pytest
import torch

from conftest import VOCAB, save_tiny_model, tiny_configs
from reference import eager_attentions, float64_softmax, reference_stats
from sinkviz.engine.capture import capture
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.flow.models import load_model
from sinkviz.engine.reduce import bin_width

ATOL_FLOAT32 = 1e-5
ATOL_DEFAULT_MODEL = 1e-6  # still 10x tighter than the 1e-5 asked for; see the default-model test
ATOL_FLOAT64 = 1e-10  # the reference keeps eager's softmax in float64 (reference.float64_softmax)


def fresh_ids(length: int, vocab: int = VOCAB) -> tuple[torch.Tensor, int]:
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (1, length), generator=gen), seed


def assert_matches_reference(stats, att, hidden, map_size, atol, seed):
    ref = reference_stats(att, map_size, causal=stats.causal, width=stats.bin_width)
    assert stats.bin_width == bin_width(att.shape[-1], map_size)
    for name in ("sink_mass", "entropy", "received", "maps"):
        np.testing.assert_allclose(getattr(stats, name), ref[name], atol=atol, rtol=0,
                                   err_msg=f"{name}, seed {seed}")
    # hidden_states[l + 1] is layer l's output, except the last, which HF returns after the final norm
    hidden_ref = np.stack([np.linalg.norm(h, axis=-1) for h in hidden[1:-1]])
    np.testing.assert_allclose(stats.hidden_norm[:-1], hidden_ref, rtol=1e-5, err_msg=f"seed {seed}")


@pytest.mark.parametrize("arch", list(tiny_configs()))
@pytest.mark.parametrize("length,map_size", [(37, 128), (300, 64)])
def test_tiny_models_match_eager_float64(tiny_models, arch, length, map_size):
    ids, seed = fresh_ids(length)
    loaded = load_model(tiny_models[arch], device="cpu", dtype="float32")
    stats = capture(loaded.model, ids, map_size)
    att, hidden = eager_attentions(tiny_models[arch], ids)
    assert stats.maps.shape[-1] == min(length, map_size) or stats.bin_width > 1
    assert_matches_reference(stats, att, hidden, map_size, ATOL_FLOAT32, seed)


@pytest.mark.parametrize("output_from_blocks", [True, False], ids=["cpu-path", "gpu-blockwise-branch"])
@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "mistral-window"])
def test_float64_capture_is_exact(tiny_models, arch, output_from_blocks, monkeypatch):
    """Both block-wise branches: the CPU's (the output from the statistics' blocks) and the one a
    GPU takes where the fused kernels cannot serve a layer (statistics only, SDPA's output)."""
    from sinkviz.engine import capture as capture_module
    monkeypatch.setattr(capture_module, "output_from_blocks", lambda device: output_from_blocks)
    ids, seed = fresh_ids(150)
    loaded = load_model(tiny_models[arch], device="cpu", dtype="float64")
    stats = capture(loaded.model, ids, 32)
    att, hidden = eager_attentions(tiny_models[arch], ids)
    assert_matches_reference(stats, att, hidden, 32, ATOL_FLOAT64, seed)


@pytest.mark.parametrize("dtype,atol", [("float32", ATOL_FLOAT32), ("float64", ATOL_FLOAT64)])
def test_bidirectional_encoder_matches_eager(tmp_path, dtype, atol):
    """A BERT-style encoder (all-MiniLM's architecture): every query sees every key."""
    from transformers import AutoModel, BertConfig
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                        num_attention_heads=4, max_position_embeddings=512)
    folder = save_tiny_model(config, tmp_path / "bert", model_class=AutoModel)
    ids, seed = fresh_ids(300)
    loaded = load_model(folder, device="cpu", dtype=dtype)
    stats = capture(loaded.model, ids, 64)
    assert (loaded.info.architecture, stats.causal) == ("BertModel", False)
    att, hidden = eager_attentions(folder, ids, AutoModel)
    assert_matches_reference(stats, att, hidden, 64, atol, seed)
    assert layer_sinks(stats, 3).baseline == pytest.approx(3 / 300)


def test_embedded_encoder_matches_eager_float64():
    """all-MiniLM-L6-v2 from its PyPI package: [CLS] first, [SEP] last, bidirectional statistics."""
    from transformers import AutoModel
    from sinkviz.flow.embedded import ensure_converted
    folder = ensure_converted("all-minilm-l6-v2")
    loaded = load_model("all-minilm-l6-v2", device="cpu", dtype="float64")
    ids = loaded.tokenizer("Attention sinks soak up attention in encoders too.", return_tensors="pt")["input_ids"]
    stats = capture(loaded.model, ids, 32)
    tokens = loaded.tokenizer.convert_ids_to_tokens(ids[0])
    assert (tokens[0], tokens[-1], stats.causal, loaded.info.n_layers) == ("[CLS]", "[SEP]", False, 6)
    att, hidden = eager_attentions(folder, ids, AutoModel)
    assert_matches_reference(stats, att, hidden, 32, ATOL_FLOAT64, "fixed prompt")


def test_lse_attention_steps_aside_where_torch_cannot_run_it(monkeypatch):
    """No kernel for the device (here the CPU), or a torch without the private ops: None, so the
    fused path computes the log-sum-exp itself instead of failing."""
    from sinkviz.engine import fused
    q, k = torch.randn(1, 4, 10, 16), torch.randn(1, 2, 10, 16)
    assert fused.attention_with_lse(q, k, k, 0.25) is None
    monkeypatch.delattr(torch, "_fused_sdp_choice")
    assert fused.attention_with_lse(q, k, k, 0.25) is None


def test_sliding_window_is_recorded(tiny_models):
    ids, _ = fresh_ids(40)
    stats = capture(load_model(tiny_models["gemma3-window"], device="cpu").model, ids)
    config = tiny_configs()["gemma3-window"]
    expected = tuple(6 if kind == "sliding_attention" else None for kind in config.layer_types)
    assert stats.windows == expected


@pytest.mark.parametrize("arch", ["llama-gqa", "qwen2-gqa", "mistral-window"])
def test_value_norms_match_v_proj(tiny_models, arch):
    ids, seed = fresh_ids(50)
    loaded = load_model(tiny_models[arch], device="cpu", dtype="float32")
    cfg = loaded.model.config
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out[0].detach()))
             for name, m in loaded.model.named_modules() if name.endswith("v_proj")]
    try:
        stats = capture(loaded.model, ids)
    finally:
        for h in hooks:
            h.remove()
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected = np.stack([v.view(v.shape[0], -1, head_dim).norm(dim=-1).mean(-1).numpy() for v in seen])
    np.testing.assert_allclose(stats.value_norm, expected, rtol=1e-5, err_msg=f"seed {seed}")


def lm_head_outputs(model, ids, implementation: str) -> torch.Tensor:
    """The LM head's output of one forward pass under ``implementation`` ("sinkviz" = a capture)."""
    outputs = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda _m, _i, out: outputs.append(out.detach().clone()))
    try:
        if implementation == "sinkviz":
            capture(model, ids)
        else:
            model.set_attn_implementation(implementation)
            with torch.no_grad(), float64_softmax():
                model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        hook.remove()
        model.set_attn_implementation("sinkviz")
    return outputs[0]


@pytest.mark.parametrize("arch", ["llama-gqa", "gpt2", "mistral-window"])
def test_capture_output_is_the_models_own_eager_output(tiny_models, arch):
    """On the CPU a capture computes each layer's output from the probabilities its statistics come
    from (probs @ V, as transformers' eager attention does) instead of a second pass through SDPA:
    in float64 the model's output equals the eager forward's (softmax kept in float64) to rounding, and in float32 it stays
    within float32 rounding of the plain SDPA forward."""
    ids, seed = fresh_ids(150)
    wide = load_model(tiny_models[arch], device="cpu", dtype="float64").model
    torch.testing.assert_close(lm_head_outputs(wide, ids, "sinkviz"), lm_head_outputs(wide, ids, "eager"),
                               atol=1e-12, rtol=1e-12, msg=f"seed {seed}")
    model = load_model(tiny_models[arch], device="cpu").model
    torch.testing.assert_close(lm_head_outputs(model, ids, "sinkviz"), lm_head_outputs(model, ids, "sdpa"),
                               atol=1e-5, rtol=1e-5, msg=f"seed {seed}")


@pytest.mark.parametrize("window", [None, 24])
def test_recorder_blockwise_branch_leaves_the_output_to_sdpa_with_the_same_statistics(window):
    """Where the fused kernels cannot serve a GPU layer, record() reduces it block by block and
    leaves the output to SDPA (returns None). Run here on the CPU, its statistics equal those of
    the CPU path, which computes the output from the same blocks: and that output is SDPA's to
    float32 rounding."""
    from types import SimpleNamespace
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from sinkviz.engine.capture import Softmax, _blockwise_attention, _Recorder
    gen = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    q, k, v = (torch.randn(1, heads, 70, 16, generator=gen) for heads in (4, 2, 2))   # GQA: 4 heads, 2 KV heads
    module, kwargs = SimpleNamespace(is_causal=True, num_key_value_groups=2), {"scaling": 0.25, "sliding_window": window}
    only_statistics, with_output = _Recorder(32, n_layers=1), _Recorder(32, n_layers=1)
    assert only_statistics.record(module, q, k, v, None, kwargs) is None
    out, _ = _blockwise_attention(module, q, k, v, None, kwargs, Softmax(), with_output)
    a, b = only_statistics.host.result(), with_output.host.result()
    assert sorted(a) == sorted(b) == ["entropy", "maps", "received", "sink_mass", "value_norm"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    mask = torch.ones(70, 70, dtype=torch.bool).tril()
    if window:
        mask &= ~torch.ones(70, 70, dtype=torch.bool).tril(-window)
    sdpa, _ = sdpa_attention_forward(module, q, k, v, mask[None, None], scaling=0.25)
    torch.testing.assert_close(out, sdpa, atol=1e-6, rtol=1e-5)


def test_default_model_matches_eager_float64(default_model_dir):
    """Capture in float64 against the float64 reference, to ATOL_DEFAULT_MODEL. Even in float64 the
    SDPA and eager forwards of this model differ by rounding that its massive activations amplify
    through 30 layers: measured up to 2.2e-7 (maps) over 25 seeds, so 1e-10 failed on a few
    percent of seeds. (In float32 the same amplification reaches ~4e-5.)"""
    ids, seed = fresh_ids(48, vocab=49152)
    ids[0, 0] = 1  # <|im_start|>, the default model's BOS
    loaded = load_model("smollm2-135m-instruct", device="cpu", dtype="float64")
    stats = capture(loaded.model, ids, 128)
    att, hidden = eager_attentions(default_model_dir, ids)
    assert stats.n_layers == 30 and stats.n_heads == 9
    assert_matches_reference(stats, att, hidden, 128, ATOL_DEFAULT_MODEL, seed)
