"""What a prompt auditor reads off one analysis: the user's opening tokens, each kind of segment's
share of attention and the user's opening mass, as plain values for a table row.

Layer values are averaged with ``metrics.deep_mean`` (layers beyond the first two), the same mean
Analyze and Compare state.
"""

import numpy as np

from .metrics import Thresholds, deep_mean
from .readable import quoted
from .segments import LEARNED_SINK, opening_positions, openings, segment_shares, segments_of

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
    """Extra audit-row fields of an Analysis: the user's first tokens, the sequence's first tokens,
    the user's opening mass (first ``first_n`` tokens of the user's text; deep-layer mean) and each
    kind's share of attention (deep-layer mean; NaN where the sequence has no such part)."""
    stats, tokens = result.stats, result.tokens
    segs = segments_of(tokens)
    opens = openings(stats, segs, first_n)
    user = opens.names.index("user text") if "user text" in opens.names else None
    shares = kind_shares(stats, tokens)
    return {"first_tokens": opening_tokens(tokens), "sequence_first_tokens": opening_tokens(tokens, user=False),
            "user_opening_mass": float(deep_mean(opens.mass[:, user], thresholds)) if user is not None else float("nan"),
            **{f"share_{k.replace(' ', '_')}": float(deep_mean(shares[k], thresholds)) if k in shares else float("nan")
               for k in KINDS}}
