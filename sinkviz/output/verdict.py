"""A plain-language verdict a stakeholder can read, built from the metrics."""

import numpy as np

from sinkviz.numbers.metrics import LayerSinks, Thresholds, top_sink
from sinkviz.numbers.stats import AttentionStats


def verdict_layer(sinks: LayerSinks, stats: AttentionStats, thresholds: Thresholds = Thresholds()) -> int | None:
    """Row of the layer the verdict names: the layer beyond the first ``shallow_layers`` with the
    most sink mass; None where there is none."""
    deep = np.array(stats.layer_ids) >= thresholds.shallow_layers
    return int(np.where(deep, sinks.sink_mass, -1.0).argmax()) if deep.any() else None


def verdict(sinks: LayerSinks, stats: AttentionStats, tokens: tuple[str, ...],
            special: tuple[bool, ...], thresholds: Thresholds = Thresholds()) -> str:
    """Which layers send how much attention to which token, how many times uniform, severity."""
    ids = np.array(stats.layer_ids)                     # model layers (hybrids: attention layers only)
    n, deep, worst = sinks.first_n, ids >= thresholds.shallow_layers, verdict_layer(sinks, stats, thresholds)
    if worst is None:
        return "The model has no layers beyond the first two; nothing to judge."
    positions, amounts = top_sink(stats)
    top = int(positions[worst])
    counts = {s: sum(1 for l, sev in enumerate(sinks.severity) if deep[l] and sev == s)
              for s in ("critical", "warning")}
    level = "critical" if counts["critical"] else "warning" if counts["warning"] else "ok"
    kind = " (a special token)" if special[top] else ""
    lines = [
        f"Severity: {level}. In {counts['critical']} of {int(deep.sum())} layers beyond the first "
        f"{thresholds.shallow_layers}, at least {thresholds.critical:.0%} of attention goes to the "
        f"first {n} tokens; in {counts['warning']} more, at least {thresholds.warning:.0%}.",
        f"The strongest is layer {ids[worst]}: {sinks.sink_mass[worst]:.0%} of its attention lands on "
        f"the first {n} tokens, {sinks.ratio[worst]:.1f}x what uniform attention would give. "
        f"The token that receives most there is position {top}, {tokens[top]!r}{kind}, "
        f"with {amounts[worst]:.0%} of the attention of the queries that see it.",
    ]
    flagged = int(sinks.flagged.sum())
    if sinks.max_ratio <= thresholds.ratio_flag:
        lines.append(f"At {stats.n_tokens} tokens the ratio to uniform cannot exceed "
                     f"{sinks.max_ratio:.1f}x, so the {thresholds.ratio_flag:g}x flag cannot fire; "
                     "longer prompts make it meaningful.")
    else:
        lines.append(f"{flagged} layer(s) exceed {thresholds.ratio_flag:g}x uniform.")
    if sinks.learned_sink is not None:
        most = int(sinks.learned_sink.argmax())
        lines.append(f"This model also has a learned sink, a softmax column no token owns: it takes "
                     f"{sinks.learned_sink.mean():.0%} of attention on average over layers, "
                     f"{sinks.learned_sink[most]:.0%} in layer {most}.")
    return " ".join(lines)


def uniform_sentence(sinks: LayerSinks, stats: AttentionStats) -> str:
    """What uniform attention would give in the full-attention layers and in each sliding window's
    layers (each layer's ratio uses its own), and the largest ratio possible at this length."""
    values = {}                                                   # window (None: full) -> baseline
    for window, baseline in zip(stats.windows, sinks.baselines):
        values[window if baseline != sinks.baseline else None] = float(baseline)
    parts = [f"{b:.1%} in the layers with a {w}-token sliding window" if w else f"{b:.1%}"
             for w, b in sorted(values.items(), key=lambda item: item[0] or 0)]
    text = f"Uniform attention would give {parts[0]}"
    if len(parts) > 1:
        text += " (" + ", ".join(parts[1:]) + "; each layer's ratio uses its own)"
    return text + f"; the largest possible ratio at this length is {sinks.max_ratio:.1f}×."
