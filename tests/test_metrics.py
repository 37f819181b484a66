"""Metrics on hand-built attention patterns with known answers."""

import numpy as np
import pytest

from reference import reference_stats
from sinkviz.errors import BadPrompt, BadSetting
from sinkviz.numbers.metrics import (Thresholds, layer_entropy, layer_sinks, norm_vs_median, sink_rate,
                             top_sink, uniform_baseline, uniform_entropies, uniform_entropy)
from sinkviz.numbers.stats import AttentionStats


def stats_from(att: np.ndarray, causal: bool = True, windows: tuple | None = None) -> AttentionStats:
    """AttentionStats of a hand-built [layers, heads, L, L] attention."""
    ref = reference_stats(att, map_size=128, causal=causal)
    layers, _, L, _ = att.shape
    return AttentionStats(ref["sink_mass"], ref["entropy"], ref["received"], ref["maps"],
                          np.ones((layers, L)), np.ones((layers, L)), ref["bin_width"],
                          causal, windows or (None,) * layers)


def uniform_windowed(heads, L, window):
    """[1, heads, L, L]: each query spreads its attention evenly over the ``window`` keys i-W+1..i."""
    i, j = np.indices((L, L))
    seen = (j <= i) & (i - j < window)
    return np.broadcast_to(seen / seen.sum(1, keepdims=True), (1, heads, L, L)).copy()


def test_sliding_window_layers_are_judged_against_uniform_within_their_window():
    """Gemma 2 / gpt-oss / Mistral: uniform attention in a layer with a 16-token window over 101
    tokens has ratio 1 and the uniform entropy of that window (not the full-attention values,
    which made such layers look 2x below uniform and a nat more focused)."""
    L, window = 101, 16
    att = np.concatenate([uniform_windowed(2, L, window), uniform_causal(1, 2, L)])
    stats = stats_from(att, windows=(window, None))
    for n in (1, 3, 8):
        sinks = layer_sinks(stats, n)
        np.testing.assert_allclose(sinks.sink_mass, sinks.baselines, rtol=1e-12)
        np.testing.assert_allclose(sinks.ratio, 1.0, rtol=1e-12)
        assert sinks.baselines[1] == sinks.baseline == uniform_baseline(L, n)
        assert sinks.baselines[0] == pytest.approx(uniform_baseline(L, n, window=window)) != sinks.baseline
        assert sinks.max_ratio == pytest.approx(1 / sinks.baselines.min())
    np.testing.assert_allclose(uniform_entropies(stats), layer_entropy(stats), rtol=1e-12)
    assert uniform_entropy(L, window=L) == uniform_entropy(L) and uniform_baseline(L, 3, window=L) == uniform_baseline(L, 3)


def test_top_sink_is_never_a_late_key_seen_by_a_handful_of_queries():
    """The last key's received attention is the last query's attention to itself alone: a row that
    attends to itself strongly must not make it the top sink over a key every query attends to."""
    L = 40
    att = uniform_causal(1, 1, L)
    att[..., :, 0] += 0.2
    att[..., -1, :] = 0.0
    att[..., -1, -1] = 1.0                       # received by the last key: 1.0, from one query
    att /= att.sum(-1, keepdims=True)
    position, value = top_sink(stats_from(att))
    assert position.tolist() == [0] and value[0] == pytest.approx(stats_from(att).received[0, 0, 0])


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
    (3, 3, BadPrompt, "the prompt has 3 token(s); sink mass over the first 3 needs at least 4: set N to 2 or "
                      "less, or use a longer prompt"),
    (1, 1, BadPrompt, "the prompt has 1 token(s); sink mass over the first 1 needs at least 2: use a longer prompt"),
])
def test_first_n_errors(first_n, n_tokens, error, message):
    with pytest.raises(error) as info:
        uniform_baseline(n_tokens, first_n)
    assert str(info.value) == message


def test_stats_are_read_only():
    stats = stats_from(uniform_causal(1, 1, 5))
    with pytest.raises(ValueError):
        stats.sink_mass[0, 0, 0] = 1.0


def test_top_sink_in_a_sliding_window_layer_is_averaged_over_the_queries_that_see_it():
    """In a 16-token window only 16 queries see key 0: its amount is their mean attention to it,
    not diluted over every later query; uniform-within-window attention plus a strong key 0."""
    L, window = 101, 16
    att = uniform_windowed(1, L, window)
    att[..., 1:window, 0] += 0.5                 # the queries that see key 0 give it extra attention
    att /= att.sum(-1, keepdims=True)
    stats = stats_from(att, windows=(window,))
    position, value = top_sink(stats)
    seen = att[0, 0, :window, 0]                 # the queries 0..W-1 that see key 0
    assert position.tolist() == [0] and value[0] == pytest.approx(seen.mean(), rel=1e-12)
    assert stats.received[0, 0, 0] == pytest.approx(seen.sum() / L, rel=1e-12)   # received: over all L queries


def test_uniform_sentence_and_bars_name_each_windows_own_baseline():
    from sinkviz.output.figures import sink_bars
    from sinkviz.output.verdict import uniform_sentence
    said = {}
    for windows in [(16, 16), (16, None), (None, None)]:
        att = np.concatenate([uniform_windowed(2, 101, 16) if w else uniform_causal(1, 2, 101) for w in windows])
        stats = stats_from(att, windows=windows)
        sinks = layer_sinks(stats, 3)
        said[windows] = uniform_sentence(sinks, stats)
        if len(set(windows)) == 1:   # one baseline for every layer: one labelled line, at that layer's value
            line = [a for a in sink_bars(sinks).layout.annotations if a.text.startswith("uniform baseline")]
            assert len(line) == 1 and line[0].y == pytest.approx(sinks.baselines[0])
    assert said == {
        (16, 16): "Uniform attention would give 4.9% in the layers with a 16-token sliding window; the largest "
                  "possible ratio at this length is 20.3×.",
        (16, None): "Uniform attention would give 10.3% (4.9% in the layers with a 16-token sliding window; each "
                    "layer's ratio uses its own); the largest possible ratio at this length is 20.3×.",
        (None, None): "Uniform attention would give 10.3%; the largest possible ratio at this length is 9.7×."}
