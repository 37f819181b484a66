"""The Lab gets Analyze's limits: the token limit, the memory guard, and a model lock held one
pass (or one decode step) at a time."""

import pytest

from sinkviz.flow import memory
from sinkviz.flow.analysis import Settings
from sinkviz.errors import BadPrompt
from sinkviz.flow.mitigation import attention_scaling, language_model, sink_token_experiment

LONG = " ".join(["w1"] * 600)     # 601 tokens; the tiny models' context is 512


@pytest.fixture
def llama(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16)


def test_scaling_refuses_past_the_model_context(llama):
    with pytest.raises(BadPrompt) as info:
        attention_scaling(LONG, llama)
    assert str(info.value) == "the prompt has 601 tokens; the limit is 512"


def test_scaling_obeys_the_operator_limit(llama, monkeypatch):
    monkeypatch.setenv("SINKVIZ_MAX_TOKENS", "8")
    with pytest.raises(BadPrompt) as info:
        attention_scaling("w1 w2 w3 w4 w5 w6 w7 w8", llama)
    assert str(info.value) == "the prompt has 9 tokens; the limit is 8"


def test_window_refuses_past_the_model_context_unless_cut(llama):
    with pytest.raises(BadPrompt) as info:
        sink_token_experiment(LONG, llama, window=16, sinks=2)
    assert str(info.value) == "the text has 601 tokens; the limit is 512"
    assert len(sink_token_experiment(LONG, llama, window=16, sinks=2, max_tokens=40).loss_full) == 39


@pytest.mark.parametrize("free,message", [
    (10_000, "a 41-token prompt needs about 0.0 GiB on cpu, but 0.0 GiB is free; the longest that fits is about 0 tokens"),
])
def test_memory_guard(llama, monkeypatch, free, message):
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    for run in (lambda: attention_scaling(" ".join(["w1"] * 40), llama),
                lambda: sink_token_experiment(" ".join(["w1"] * 40), llama, window=16, sinks=2)):
        with pytest.raises(BadPrompt) as info:
            run()
        assert str(info.value) == message


def test_logits_count_in_the_guard(llama, monkeypatch):
    real = memory.check_fits
    monkeypatch.setattr(memory, "check_fits", lambda *a: None)   # the capture itself would fit
    monkeypatch.setattr(memory, "free_bytes", lambda device: 100_000)
    with pytest.raises(BadPrompt) as info:
        attention_scaling(" ".join(["w1"] * 40), llama)
    assert str(info.value) == ("the next-token distributions of 41 tokens need about 0.0 GiB on cpu, "
                               "but 0.0 GiB is free; try a shorter text")
    monkeypatch.setattr(memory, "check_fits", real)


def test_window_decode_releases_the_lock_between_steps(llama):
    lock = language_model(llama).lock
    free_at_progress = []

    def progress(_fraction):
        got = lock.acquire(blocking=False)   # what another session would need
        free_at_progress.append(got)
        if got:
            lock.release()
    sink_token_experiment(" ".join(["w1"] * 100), llama, window=16, sinks=2, progress=progress)
    assert len(free_at_progress) == 8 and all(free_at_progress)
