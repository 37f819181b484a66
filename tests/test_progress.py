"""Long work a user can follow: per-layer progress from the capture, time left, and the lines
the pages and the CLI print; the numbers never change for being watched."""

import numpy as np
import pytest

from conftest import random_words, save_tiny_model
from sinkviz.engine import capture
from sinkviz.flow import progress
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.flow.models import load_model
from sinkviz.flow.progress import Eta, count_line, fraction_line, left_text, rate_line


@pytest.fixture
def ticking_clock(monkeypatch):
    """progress.clock: 0, 2, 4, ... seconds, two more at every reading."""
    times = iter(range(0, 20_000, 2))
    monkeypatch.setattr(progress, "clock", lambda: float(next(times)))


def test_lines_read_as_the_pages_show_them():
    assert [left_text(s) for s in (None, 0.0, 0.3, 12.4, 59.4, 150, 4000)] == \
        ["", "", "~1 s left", "~12 s left", "~59 s left", "~2 min left", "~1 h 7 min left"]
    assert count_line("layer", 17, 30, 12.0) == "layer 17/30 · ~12 s left"
    assert count_line("layer", 30, 30, 0.0) == "layer 30/30"
    assert fraction_line("window KV cache", 0.42, 300) == "window KV cache 42 % · ~5 min left"
    assert rate_line("prompt", 48, 200, 15.5, "prompts") == "prompt 48/200 · 3.1 prompts/s · ~49 s left"
    assert rate_line("prompt", 200, 200, 60, "prompts") == "prompt 200/200 · 3.33 prompts/s"
    assert rate_line("prompt", 0, 200, 0.0, "prompts") == "prompt 0/200"


def test_eta_holds_the_rate_so_far(ticking_clock):
    eta = Eta()                                      # starts at 0 s
    assert eta.left(3, 30) == pytest.approx(18.0)    # read at 2 s: 3 done, 27 left at 1.5 a second
    assert eta.left(0, 30) is None
    assert eta.left(30, 30) == 0.0


@pytest.mark.parametrize("name", ["llama-gqa", "gemma3-window"])
def test_capture_reports_every_layer_and_its_numbers_do_not_change(tiny_models, name):
    model = load_model(tiny_models[name], device="cpu").model
    ids = torch_ids(model, 50)
    seen = []
    watched = capture.capture(model, ids, 32, on_layer=lambda done, total: seen.append((done, total)))
    n = model.config.num_hidden_layers
    assert seen == [(k, n) for k in range(1, n + 1)]
    plain = capture.capture(model, ids, 32)
    for field in ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm"):
        np.testing.assert_array_equal(getattr(watched, field), getattr(plain, field))
    batch_seen = []
    capture.capture_batch(model, [ids[0].tolist(), ids[0, :30].tolist()], 32, on_layer=lambda *x: batch_seen.append(x))
    assert batch_seen == seen


def test_eager_path_reports_every_layer(tmp_path):
    import transformers as T
    folder = save_tiny_model(T.BloomConfig(vocab_size=120, hidden_size=32, n_layer=2, n_head=4), tmp_path / "bloom")
    model = load_model(folder, device="cpu").model
    seen = []
    capture.capture(model, torch_ids(model, 20), 32, on_layer=lambda *x: seen.append(x))
    assert seen == [(1, 2), (2, 2)]


def torch_ids(model, n: int):
    import torch
    return torch.randint(4, 120, (1, n), generator=torch.Generator().manual_seed(n))


def test_analyze_reports_its_layers_with_the_time_left(tiny_models, store, ticking_clock):
    steps, layers = [], []
    analyze(random_words(40), Settings(model=tiny_models["llama-gqa"], map_size=16), store=store,
            progress=steps.append, on_layer=lambda *x: layers.append(x))
    assert steps == ["looking up the store", "loading model", "tokenizing", "forward pass",
                     "forward pass · layer 1/3 · ~4 s left", "forward pass · layer 2/3 · ~2 s left",
                     "forward pass · layer 3/3", "saving"]
    assert layers == [(1, 3), (2, 3), (3, 3)]


def test_sweep_ticks_count_tokens_times_layers(tiny_models, store, ticking_clock):
    from sinkviz.flow.sweep import run_sweep
    settings, text = Settings(model=tiny_models["llama-gqa"], map_size=16), random_words(600)
    ticks = []
    run_sweep(text, settings, store=store, progress=ticks.append)          # lengths 256 and 512
    assert [t.fraction for t in ticks] == pytest.approx([0, 1 / 9, 2 / 9, 3 / 9, 3 / 9, 5 / 9, 7 / 9, 1])
    assert [t.text for t in ticks] == [
        "length 1/2 (256 tokens)",                                  # read at 2 s, nothing done yet
        "length 1/2 (256 tokens) · layer 1/3 · ~32 s left",         # 4 s for 1/9: 32 s for the other 8/9
        "length 1/2 (256 tokens) · layer 2/3 · ~21 s left",
        "length 1/2 (256 tokens) · layer 3/3 · ~16 s left",
        "length 2/2 (512 tokens) · ~20 s left",
        "length 2/2 (512 tokens) · layer 1/3 · ~10 s left",         # 12 s for 5/9: 9.6 s
        "length 2/2 (512 tokens) · layer 2/3 · ~4 s left",
        "length 2/2 (512 tokens) · layer 3/3"]
    again = []
    run_sweep(text, settings, store=store, progress=again.append)          # from the store: no layers run
    assert [t.text.split(" · ")[0] for t in again] == ["length 1/2 (256 tokens)", "length 2/2 (512 tokens)"]


def test_lab_scaling_ticks_cover_both_passes(tiny_models):
    from sinkviz.flow.mitigation import attention_scaling
    ticks = []
    attention_scaling(random_words(30), Settings(model=tiny_models["llama-gqa"], use_template=False), 4, 0.5,
                      progress=ticks.append)
    assert [t.fraction for t in ticks] == pytest.approx([k / 6 for k in range(1, 7)])
    assert [t.text.rsplit(" · ~", 1)[0] for t in ticks] == [f"{p} · layer {k}/3" for p in ("before", "after")
                                                            for k in (1, 2, 3)]
