"""Sink metrics: pure functions of ``AttentionStats`` (see stats.py for a[l, h, i, j]).

Sources: sink mass, uniform baseline, thresholds and the 5x flag follow seed document 000
and design.md section 3; sink rate follows Gu et al., "When Attention Sink Emerges in
Language Models" (ICLR 2025, sail-sg/Attention-Sink).
"""

import warnings
from dataclasses import dataclass

import numpy as np

from sinkviz.errors import BadPrompt, BadSetting
from sinkviz.engine.reduce import MAX_FIRST_N
from sinkviz.numbers.stats import AttentionStats

DEFAULT_FIRST_N = 3
SINK_RATE_EPSILON = 0.3


@dataclass(frozen=True)
class Thresholds:
    warning: float = 0.35      # sink mass (fraction) that earns a warning in deep layers
    critical: float = 0.50     # ... and a critical
    ratio_flag: float = 5.0    # flag layers whose sink mass exceeds this multiple of uniform
    shallow_layers: int = 2    # the first layers are exempt from flags and severities

    def __post_init__(self):
        if not 0 <= self.warning <= self.critical <= 1:
            raise BadSetting("thresholds need 0 <= warning <= critical <= 1")


@dataclass(frozen=True)
class LayerSinks:
    first_n: int
    heads_sink_mass: np.ndarray  # [layers, heads]  m_N[l, h]
    sink_mass: np.ndarray        # [layers]         mean over heads
    baseline: float              # uniform-attention value of m_N in a layer without a sliding window
    baselines: np.ndarray        # [layers]         each layer's uniform value, its sliding window respected
    max_ratio: float             # max over layers of 1 / baselines: the ratio when all attention goes to the first N
    ratio: np.ndarray            # [layers]         sink_mass / baselines
    flagged: np.ndarray          # [layers] bool    ratio > ratio_flag, deep layers only
    severity: tuple[str, ...]    # per layer: "shallow", "ok", "warning", "critical"
    heads_learned_sink: np.ndarray | None = None  # [layers, heads] mean over queries of the learned sink
    learned_sink: np.ndarray | None = None        # [layers] mean over heads (None: the model has none)
    layer_ids: tuple = ()        # model layer of each row (hybrids: attention layers only); () = 0..n-1


def check_first_n(first_n: int, n_tokens: int) -> None:
    if not 1 <= first_n <= MAX_FIRST_N:
        raise BadSetting(f"first N must be between 1 and {MAX_FIRST_N}, not {first_n}")
    if n_tokens <= first_n:
        raise BadPrompt(f"the prompt has {n_tokens} token(s); sink mass over the first {first_n} needs at least "
                        f"{first_n + 1}: " + (f"set N to {n_tokens - 1} or less, or " if n_tokens > 1 else "")
                        + "use a longer prompt")


def uniform_baseline(n_tokens: int, first_n: int, causal: bool = True, window: int | None = None) -> float:
    """m_N if every query spread attention evenly over the keys it sees.
    Causal: mean_{i=N}^{L-1} N / (i + 1); with a sliding window W, query i sees the
    min(i + 1, W) keys i-W+1..i, of which max(0, N - max(0, i - W + 1)) are among the first N.
    Bidirectional: N / L."""
    check_first_n(first_n, n_tokens)
    if not causal:
        return first_n / n_tokens
    i = np.arange(first_n, n_tokens)
    if window is None:
        return float(np.mean(first_n / (i + 1)))
    return float(np.mean(np.maximum(0, first_n - np.maximum(0, i - window + 1)) / np.minimum(i + 1, window)))


def severity(mass: float, layer: int, t: Thresholds) -> str:
    if layer < t.shallow_layers:
        return "shallow"
    return "critical" if mass >= t.critical else "warning" if mass >= t.warning else "ok"


def layer_sinks(stats: AttentionStats, first_n: int = DEFAULT_FIRST_N,
                thresholds: Thresholds = Thresholds()) -> LayerSinks:
    """Sink mass of the first ``first_n`` tokens per layer (head mean), its ratio to uniform,
    the ratio flag and the warning / critical severity."""
    baseline = uniform_baseline(stats.n_tokens, first_n, stats.causal)
    baselines = np.array([uniform_baseline(stats.n_tokens, first_n, stats.causal, w) for w in stats.windows])
    heads = stats.sink_mass[:, :, first_n - 1]
    mass = heads.mean(axis=1)
    ratio = mass / baselines
    ids = np.array(stats.layer_ids, dtype=int)          # shallow = the model's first layers
    deep = ids >= thresholds.shallow_layers
    return LayerSinks(
        first_n=first_n, heads_sink_mass=heads, sink_mass=mass, baseline=baseline, baselines=baselines,
        max_ratio=float(1.0 / baselines.min()), ratio=ratio,
        flagged=(ratio > thresholds.ratio_flag) & deep,
        severity=tuple(severity(float(m), int(l), thresholds) for l, m in zip(ids, mass)),
        layer_ids=stats.layers,
        heads_learned_sink=stats.learned_sink,
        learned_sink=None if stats.learned_sink is None else stats.learned_sink.mean(axis=1))


def sink_rate(stats: AttentionStats, epsilon: float = SINK_RATE_EPSILON) -> float:
    """Gu et al.'s Sink_1: 100 x fraction of (layer, head) pairs with alpha_0 > epsilon,
    alpha_0[l, h] = mean_{i >= 0} a[l, h, i, 0] (= received[l, h, 0])."""
    return float(100.0 * np.mean(stats.received[:, :, 0] > epsilon))


def uniform_entropy(n_tokens: int, causal: bool = True, window: int | None = None) -> float:
    """Mean row entropy (nats) if every query spread attention evenly over the keys it sees.
    Causal: mean_{i=0}^{L-1} ln(min(i + 1, W)) (W: the sliding window, else no limit).
    Bidirectional: ln L."""
    if not causal:
        return float(np.log(n_tokens))
    return float(np.mean(np.log(np.minimum(np.arange(1, n_tokens + 1), window or n_tokens))))


def uniform_entropies(stats: AttentionStats) -> np.ndarray:
    """[layers] uniform_entropy of each layer, its sliding window respected."""
    return np.array([uniform_entropy(stats.n_tokens, stats.causal, w) for w in stats.windows])


def layer_entropy(stats: AttentionStats) -> np.ndarray:
    """[layers] mean over heads and queries of -sum_j a log a, in nats."""
    return stats.entropy.mean(axis=1)


def top_sink(stats: AttentionStats) -> tuple[np.ndarray, np.ndarray]:
    """Per layer, the key that receives the most attention from the queries that see it (head
    mean) and that amount: ([layers] positions, [layers] values). Causal: key j is seen by
    s_j = min(L - j, W) queries (W: the layer's sliding window), so the amount is
    received_j (L - j) / s_j (``received`` averages over all L - j queries at or after j), and
    only keys seen by at least half as many queries as the best-seen key compete: a late key's
    mean over a handful of queries (the last one's: that query's attention to itself) never wins."""
    received = stats.received.mean(axis=1)                                    # [layers, L]
    n = stats.n_tokens
    if stats.causal:
        after = n - np.arange(n)                                              # [L] queries at or after j
        seen_by = np.minimum(after[None, :], np.array([[w or n] for w in stats.windows]))   # [layers, L]
        received = np.where(seen_by * 2 >= seen_by.max(axis=1, keepdims=True), received * after / seen_by, -1.0)
    position = received.argmax(axis=1)
    return position, received[np.arange(stats.n_layers), position]


def norm_vs_median(norms: np.ndarray, positions: int = 5) -> np.ndarray:
    """[layers, positions] norm of each of the first positions / median norm of its layer."""
    return norms[:, :positions] / np.median(norms, axis=1, keepdims=True)


def deep_mean(values: np.ndarray, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """Mean over the layers beyond the first ``shallow_layers`` (all layers if there are no
    others) of values [layers, ...]: the one "mean over layers" every page uses."""
    deep = values[thresholds.shallow_layers:] if len(values) > thresholds.shallow_layers else values
    with warnings.catch_warnings():   # all-NaN (e.g. m_N where L <= N) gives NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(deep, axis=0)
