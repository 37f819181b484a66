"""Metrics on hand-built attention patterns with known answers."""

import numpy as np
import pytest

from reference import reference_stats
from sinkviz.errors import BadPrompt, BadSetting
from sinkviz.numbers.metrics import (Thresholds, layer_entropy, layer_sinks, norm_vs_median, sink_rate,
                             top_sink, uniform_baseline, uniform_entropy)
from sinkviz.numbers.stats import AttentionStats


def stats_from(att: np.ndarray, causal: bool = True) -> AttentionStats:
    """AttentionStats of a hand-built [layers, heads, L, L] attention."""
    ref = reference_stats(att, map_size=128, causal=causal)
    layers, _, L, _ = att.shape
    return AttentionStats(ref["sink_mass"], ref["entropy"], ref["received"], ref["maps"],
                          np.ones((layers, L)), np.ones((layers, L)), ref["bin_width"],
                          causal, (None,) * layers)


def uniform_causal(layers, heads, L):
    att = np.tril(np.ones((L, L))) / np.arange(1, L + 1)[:, None]
    return np.broadcast_to(att, (layers, heads, L, L)).copy()


def all_on_first(layers, heads, L):
    att = np.zeros((layers, heads, L, L))
    att[..., 0] = 1.0
    return att


def test_uniform_attention_has_ratio_one():
    stats = stats_from(uniform_causal(4, 3, 20))
    for n in (1, 3, 5):
        sinks = layer_sinks(stats, n)
        np.testing.assert_allclose(sinks.sink_mass, sinks.baseline, rtol=1e-12)
        np.testing.assert_allclose(sinks.ratio, 1.0, rtol=1e-12)
        assert not sinks.flagged.any()


def test_baseline_formula():
    assert uniform_baseline(4, 1) == pytest.approx(np.mean([1 / 2, 1 / 3, 1 / 4]))
    assert uniform_baseline(10, 3) == pytest.approx(np.mean([3 / (i + 1) for i in range(3, 10)]))
    assert uniform_baseline(10, 3, causal=False) == pytest.approx(0.3)


def test_everything_on_first_token():
    L = 100  # at 30 tokens even full mass on 3 tokens is only 4.2x uniform (baseline 0.24)
    stats = stats_from(all_on_first(5, 2, L))
    sinks = layer_sinks(stats, 3)
    np.testing.assert_allclose(sinks.sink_mass, 1.0)
    np.testing.assert_allclose(sinks.ratio, 1.0 / uniform_baseline(L, 3))
    assert sinks.flagged.tolist() == [False, False, True, True, True]   # first two layers exempt
    assert sinks.severity == ("shallow", "shallow", "critical", "critical", "critical")
    assert sink_rate(stats) == 100.0
    np.testing.assert_allclose(layer_entropy(stats), 0.0, atol=1e-12)
    position, value = top_sink(stats)
    assert position.tolist() == [0] * 5 and value.tolist() == [1.0] * 5


def test_severity_thresholds_are_inclusive():
    L, heads = 12, 2
    att = uniform_causal(5, heads, L)
    stats = stats_from(att)
    masses = {2: 0.2, 3: 0.35, 4: 0.5}      # layer -> sink mass at N = 1
    sink = stats.sink_mass.copy()
    for layer, m in masses.items():
        sink[layer, :, 0] = m
    stats = AttentionStats(sink, stats.entropy, stats.received, stats.maps, stats.hidden_norm,
                           stats.value_norm, 1, True, stats.windows)
    assert layer_sinks(stats, 1, Thresholds()).severity[2:] == ("ok", "warning", "critical")
    assert layer_sinks(stats, 1, Thresholds(warning=0.1, critical=0.2)).severity[2:] == \
        ("critical",) * 3


def test_sink_rate_epsilon_is_strict():
    L = 10
    att = uniform_causal(2, 2, L)
    att[0, 0] = 0.0
    att[0, 0, :, 0] = 1.0 / L          # not a distribution, but sets alpha_0 exactly
    stats = stats_from(att)
    alpha = stats.received[:, :, 0]
    assert alpha[0, 0] == pytest.approx(0.1)
    assert sink_rate(stats, epsilon=alpha[0, 0]) == 100.0 * np.mean(alpha > alpha[0, 0])
    assert sink_rate(stats, epsilon=0.3) == 100.0 * np.mean(alpha > 0.3)


def test_entropy_of_uniform_rows():
    L = 16
    stats = stats_from(uniform_causal(1, 1, L))
    assert layer_entropy(stats)[0] == pytest.approx(np.mean(np.log(np.arange(1, L + 1))))
    assert uniform_entropy(L) == pytest.approx(layer_entropy(stats)[0], rel=1e-12)
    bidirectional = stats_from(np.full((1, 1, L, L), 1.0 / L), causal=False)
    assert uniform_entropy(L, causal=False) == pytest.approx(layer_entropy(bidirectional)[0], rel=1e-12)
    assert uniform_entropy(L, causal=False) == pytest.approx(np.log(16))


def test_norm_vs_median():
    norms = np.array([[10.0, 1.0, 2.0, 3.0, 2.0]])
    np.testing.assert_allclose(norm_vs_median(norms, 2), [[5.0, 0.5]])


@pytest.mark.parametrize("first_n,n_tokens,error,message", [
    (0, 10, BadSetting, "first N must be between 1 and 8, not 0"),
    (9, 10, BadSetting, "first N must be between 1 and 8, not 9"),
    (3, 3, BadPrompt, "the prompt has 3 token(s); sink mass over the first 3 needs at least 4"),
])
def test_first_n_errors(first_n, n_tokens, error, message):
    with pytest.raises(error) as info:
        uniform_baseline(n_tokens, first_n)
    assert str(info.value) == message


def test_stats_are_read_only():
    stats = stats_from(uniform_causal(1, 1, 5))
    with pytest.raises(ValueError):
        stats.sink_mass[0, 0, 0] = 1.0
