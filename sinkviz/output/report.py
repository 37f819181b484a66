"""One analysis as a JSON-ready dict: what the CLI prints and the pages export."""

from dataclasses import asdict

from sinkviz.flow.analysis import Analysis
from sinkviz.numbers.metrics import Thresholds, layer_entropy, layer_sinks, sink_rate, top_sink
from sinkviz.numbers.segments import segment_report


def report_dict(analysis: Analysis, first_n: int = 3, epsilon: float = 0.3,
                thresholds: Thresholds = Thresholds(), blocks: str | None = None) -> dict:
    """Per-layer sink mass (first ``first_n`` tokens), ratio to uniform, flags and severity,
    entropy, top sink and the learned sink's mass (None for models without one); plus tokens,
    model info and Gu et al.'s sink rate at ``epsilon``; the segments (turns, or the user's blocks
    under the ``blocks`` rule) with each one's share of attention and the openings' mass per layer."""
    stats = analysis.stats
    sinks = layer_sinks(stats, first_n, thresholds)
    entropy = layer_entropy(stats)
    top_pos, top_val = top_sink(stats)
    learned = sinks.learned_sink is not None
    layers = [{
        "layer": stats.layer_ids[layer],
        "sink_mass": float(sinks.sink_mass[layer]),
        "heads_sink_mass": [float(x) for x in sinks.heads_sink_mass[layer]],
        "learned_sink": float(sinks.learned_sink[layer]) if learned else None,
        "heads_learned_sink": [float(x) for x in sinks.heads_learned_sink[layer]] if learned else None,
        "ratio_to_uniform": float(sinks.ratio[layer]),
        "uniform_baseline": float(sinks.baselines[layer]),
        "flagged": bool(sinks.flagged[layer]),
        "severity": sinks.severity[layer],
        "entropy_nats": float(entropy[layer]),
        "position0_received": float(stats.received[layer, :, 0].mean()),
        "top_sink_position": int(top_pos[layer]),
        "top_sink_received": float(top_val[layer]),
        "window": stats.windows[layer],
    } for layer in range(stats.n_layers)]
    segments, segment_layers = segment_report(stats, analysis.tokens, first_n, blocks)
    for row, extra in zip(layers, segment_layers):
        row.update(extra)
    return {
        "model": asdict(analysis.model), "key": analysis.key, "cached": analysis.cached,
        "prompt": analysis.prompt, "templated": analysis.tokens.templated,
        "token_ids": list(analysis.tokens.token_ids), "tokens": list(analysis.tokens.tokens),
        "special": list(analysis.tokens.special), "tokens_readable": list(analysis.tokens.shown),
        "segments": segments, "first_n": first_n,
        "baseline": sinks.baseline, "causal": stats.causal, "learned_sink": learned,
        "thresholds": asdict(thresholds), "epsilon": epsilon,
        "sink_rate": sink_rate(stats, epsilon), "layers": layers,
        "layer_kinds": list(stats.layer_kinds) or ["attention"] * stats.n_layers,
        "timings": dict(analysis.timings),
    }
