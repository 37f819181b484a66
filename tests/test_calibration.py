"""Calibration: percentiles monotone in the reading, stable for a fixed set, and a calibration
prompt judged against its own set lands at its rank."""

import numpy as np
import pytest

from sinkviz.numbers import calibration
from sinkviz.flow.analysis import Settings, analyze, analyze_many
from sinkviz.numbers.calibration import calibrate, calibration_prompts, judge, load_calibration, percentile
from sinkviz.numbers.metrics import deep_mean
from sinkviz.numbers.readings import kind_shares, per_layer_reading


@pytest.fixture
def settings(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16)


def test_percentile_definition_and_monotone():
    values = np.array([0.1, 0.2, 0.2, 0.4, np.nan])
    assert [percentile(values, x) for x in (0.0, 0.1, 0.15, 0.2, 0.4, 0.9)] == [0.0, 12.5, 25.0, 50.0, 87.5, 100.0]
    xs = np.linspace(-0.1, 0.6, 71)
    assert np.all(np.diff([percentile(values, x) for x in xs]) >= 0)


def test_calibration_is_kept_stable_and_monotone(settings, store):
    steps = []
    cal = calibrate(settings, store, progress=steps.append)
    total = len(calibration_prompts())
    assert total == 51 and steps == [f"{i}/{total}" for i in range(1, total + 1)]
    fits = [p for p in calibration_prompts() if len(p.split()) + 1 <= 512]     # the tiny model's context
    n = len(fits)
    assert cal.n_prompts == n < total                        # the longest prompts are left out, not cut
    assert list(cal.n_tokens) == [len(p.split()) + 1 for p in fits]   # word-level tokenizer, plus <s>
    assert cal.sink_mass.shape == (n, 3, 8) and cal.user_opening.shape == (n, 3, 8) and cal.shares.shape == (n, 3, 4)
    assert cal.n_tokens.shape == (n,) and cal.n_tokens.min() >= 2
    again = load_calibration(settings, store)
    for name in ("sink_mass", "user_opening", "shares", "n_tokens"):
        np.testing.assert_array_equal(getattr(again, name), getattr(cal, name))
    assert calibrate(settings, store, progress=pytest.fail).key == cal.key     # kept: nothing runs again
    np.testing.assert_allclose(np.nansum(cal.shares, -1), 1.0, atol=1e-5)      # template + user = all
    base = per_layer_reading(analyze("w1 w2 w3 w4 w5 w6", settings, store=store), 3, "sequence")
    judged = [judge(cal, base * s, "sequence") for s in np.linspace(0.0, 1.5, 16)]
    assert np.all(np.diff([j.percentile for j in judged]) >= 0)
    assert np.all(np.diff([j.layer_percentiles for j in judged], axis=0) >= 0)


@pytest.mark.parametrize("reading", ["sequence", "user", "share_user"])
def test_a_calibration_prompt_lands_at_its_rank(settings, store, reading):
    cal = calibrate(settings, store)
    means = np.array([deep_mean(v) for v in cal.values(reading)])                # [P]
    for k in (0, 12, 35):
        (_, result), = analyze_many([calibration_prompts()[k]], calibration.calibration_settings(settings),
                                    store=calibration.calibration_store(store), head_maps=False)   # the stored row
        assert result.cached
        values = (per_layer_reading(result, 3, reading) if reading != "share_user"
                  else kind_shares(result.stats, result.tokens)["user"])
        j = judge(cal, values, reading)
        finite = means[np.isfinite(means)]                                      # 'Hello' has no m_3
        want = 100 * (np.sum(finite < means[k]) + 0.5 * np.sum(finite == means[k])) / len(finite)
        assert j.value == pytest.approx(means[k], rel=1e-9) and j.percentile == pytest.approx(want)
        assert j.label == calibration.label(want, means[k], finite)


def test_cli_judges_against_the_model(settings, store, capsys, monkeypatch):
    import json

    from sinkviz.cli import main
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(store.directory))
    prompt = "w3 w1 w4 w1 w5 w9 w2 w6"
    assert main(["analyze", "--prompt", prompt, "--model", settings.model, "--calibrate", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["against_model"]
    cal = calibrate(Settings(model=settings.model), store, progress=pytest.fail)   # kept by the CLI's run
    result = analyze(prompt, Settings(model=settings.model), store=store)
    for reading in ("user", "sequence"):
        j = judge(cal, per_layer_reading(result, 3, reading), reading)
        assert (report[reading]["percentile"], report[reading]["label"]) == (j.percentile, j.label)
    assert report["n_prompts"] == cal.n_prompts and len(report["sentences"]) >= 1


def test_the_shipped_set_reaches_long_prompts_and_its_key_follows_it(settings, monkeypatch):
    """Users audit 50-2,000-token prompts, and the sink mass falls with length: the set holds long
    prompts; a changed set (or version) gives another calibration key, so no old calibration is reused."""
    from transformers import AutoTokenizer

    from sinkviz.flow.embedded import DEFAULT_MODEL, ensure_converted
    tokenizer = AutoTokenizer.from_pretrained(ensure_converted(DEFAULT_MODEL))
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in calibration_prompts())
    assert lengths[0] < 10 and lengths[-1] > 1500 and sum(n > 200 for n in lengths) == 11
    key = calibration.calibration_key(settings)
    monkeypatch.setattr(calibration, "calibration_prompts", lambda: calibration_prompts()[:40])
    assert calibration.calibration_key(settings) != key
    monkeypatch.undo()
    monkeypatch.setattr(calibration, "VERSION", calibration.VERSION - 1)
    assert calibration.calibration_key(settings) != key


def test_a_prompt_without_calibration_prompts_of_its_length_is_qualified(settings, store):
    """The headline warns where fewer than MIN_COMPARABLE calibration prompts have between half and
    twice the prompt's tokens (percentiles of long prompts sit low by length alone), and only there."""
    from conftest import random_words
    from sinkviz.numbers.calibration import MIN_COMPARABLE, comparable_lengths, sentences
    cal = calibrate(settings, store)
    for words, warned in ((12, False), (400, True)):
        result = analyze(random_words(words), settings, store=store)
        n = result.stats.n_tokens
        near = int(np.sum((cal.n_tokens >= n / 2) & (cal.n_tokens <= 2 * n)))
        assert comparable_lengths(cal, n) == near and (near < MIN_COMPARABLE) == warned
        caveat = [s for s in sentences(cal, result, 3) if s.startswith("Read these percentiles with care")]
        assert caveat == ([f"Read these percentiles with care: this prompt has {n:,} tokens and only {near} of the "
                           f"{cal.n_prompts} calibration prompts ({cal.n_tokens.min()}–{cal.n_tokens.max():,} tokens) "
                           "have between half and twice as many; the sink mass falls as prompts grow (Sweep page), "
                           "so a long prompt tends to rank low."] if warned else [])


def test_no_calibration_prompt_fits_a_tiny_token_limit(settings, store, monkeypatch):
    from sinkviz.errors import BadPrompt
    monkeypatch.setattr(calibration, "calibration_prompts", lambda: ["w1 w2 w3 w4", "w5 w6 w7"])
    limited = Settings(model=settings.model, map_size=16, max_tokens=3)
    with pytest.raises(BadPrompt, match="^none of the calibration prompts fits this model's token limit$"):
        calibrate(limited, store)
    assert load_calibration(limited, store) is None
    assert calibration.calibration_key(limited) != calibration.calibration_key(settings)   # limits in the key
    before = calibration.calibration_key(settings)
    monkeypatch.setenv("SINKVIZ_MAX_TOKENS", "100")                  # the operator's limit too
    assert calibration.calibration_key(settings) != before
