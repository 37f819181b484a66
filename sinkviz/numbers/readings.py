"""What a prompt auditor reads off one analysis: the user's opening tokens, each kind of segment's
share of attention and the user's opening mass, as plain values for a table row.

Layer values are averaged with ``metrics.deep_mean`` (layers beyond the first two), the same mean
Analyze and Compare state.
"""

from dataclasses import dataclass

import numpy as np

from sinkviz.numbers.metrics import Thresholds, deep_mean, layer_sinks
from sinkviz.output.readable import quoted
from sinkviz.numbers.segments import LEARNED_SINK, opening_positions, openings, segment_shares, segments_of

KINDS = ("template", "system", "user", LEARNED_SINK)
SHOWN_TOKENS = 4


def kind_shares(stats, tokens) -> dict[str, np.ndarray]:
    """kind -> [layers] summed share of the segments of that kind (blocks count as 'user');
    a kind the sequence lacks is absent."""
    segs = segments_of(tokens)
    shares = segment_shares(stats, segs)
    kinds = [("user" if s.kind == "block" else s.kind) for s in segs] + \
        ([LEARNED_SINK] if stats.learned_sink is not None else [])
    return {k: shares.share[:, [i for i, x in enumerate(kinds) if x == k]].sum(-1) for k in KINDS if k in kinds}


def opening_tokens(tokens, first_n: int = SHOWN_TOKENS, user: bool = True) -> str:
    """The first tokens of the user's text (``user``; falls back to the sequence's where the user's
    text is not located) or of the sequence, as readable labels joined by ' · '."""
    found = opening_positions(segments_of(tokens), len(tokens.token_ids), first_n)
    pos = found.get("user text", found["sequence"]) if user else found["sequence"]
    return " · ".join(quoted(tokens.shown[p]) for p in pos)


def audit_columns(result, first_n: int, thresholds: Thresholds = Thresholds()) -> dict:
    """Extra audit-row fields of an Analysis: the user's first tokens and the sequence's; the two
    readings of ``per_layer_reading`` (m_N of the sequence, the user's opening mass) and each kind's
    share of attention (NaN where the sequence has no such part), each a deep-layer mean."""
    stats, tokens = result.stats, result.tokens
    shares = kind_shares(stats, tokens)
    def mean(reading: str) -> float:
        return float(deep_mean(per_layer_reading(result, first_n, reading, thresholds), thresholds))
    return {"first_tokens": opening_tokens(tokens), "sequence_first_tokens": opening_tokens(tokens, user=False),
            "mean_sink_mass": mean("sequence"), "user_opening_mass": mean("user"),
            **{f"share_{k.replace(' ', '_')}": float(deep_mean(shares[k], thresholds)) if k in shares else float("nan")
               for k in KINDS}}


READINGS = {"user": "your text's first N tokens (opening mass)",
            "sequence": "the sequence's first N tokens (sink mass, from position 0)"}


def reading_title(reading: str, first_n: int) -> str:
    """The reading's short name for chart titles: "Your text's first 3 tokens"."""
    return READINGS[reading].split(" (")[0].replace("N", str(first_n)).capitalize()


def per_layer_reading(result, first_n: int, reading: str, thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """[layers] the chosen reading: 'user', the opening mass of the user's text (the sequence's
    opening where the user's text is not located); 'sequence', m_N of ``metrics.layer_sinks``."""
    if reading == "sequence":
        return layer_sinks(result.stats, first_n, thresholds).sink_mass
    opens = openings(result.stats, segments_of(result.tokens), first_n)
    return opens.mass[:, opens.names.index("user text") if "user text" in opens.names else 0]


@dataclass(frozen=True)
class VariantReading:
    label: str             # "A", "B", ...
    opening: str           # the first tokens the reading measures, readable
    per_layer: np.ndarray  # [layers]
    mean: float            # deep_mean of per_layer
    diff: float            # mean - A's mean (a fraction: x 100 for points)
    ratio: float           # mean / A's mean (NaN when A's is 0)


def compare_readings(results, first_n: int, reading: str = "user",
                     thresholds: Thresholds = Thresholds()) -> list[VariantReading]:
    """One reading per variant, in input order; rank with ``sorted(..., key=lambda v: -v.mean)``."""
    per_layer = [per_layer_reading(r, first_n, reading, thresholds) for r in results]
    means = [float(deep_mean(p, thresholds)) for p in per_layer]
    base = means[0]
    return [VariantReading(chr(65 + i), opening_tokens(r.tokens, first_n, user=reading == "user"), p, m,
                           m - base, m / base if base > 0 else float("nan"))
            for i, (r, p, m) in enumerate(zip(results, per_layer, means))]
