"""Segments of a sequence (template, system turn, user turn, blocks of the prompt) and the share of
attention each receives: pure functions of the tokenizer's offsets and ``AttentionStats``.

For layer l, head h, query i, key j, attention a[l, h, i, j] over L tokens, and a segment S (a set
of token positions):
- column sum    C[l, h, j] = sum_{i sees j} a[l, h, i, j] = received[l, h, j] x (L - j)  (causal;
                x L when bidirectional), exact from the statistic the capture keeps
- share         share[l, h, S] = mean_i sum_{j in S, j <= i} a[l, h, i, j] = sum_{j in S} C[l, h, j] / L;
                with the model's learned sink as a segment of its own (mean_i s[l, h, i]) the
                shares of all segments sum to 1 in every layer and head
- uniform share mean_i |S ∩ keys i sees| / |keys i sees|: the share if every query spread its
                attention evenly (sliding windows respected)
- opening mass  of a segment whose first N tokens are P (first position u):
                open[l, h] = sum_{j in P} C[l, h, j] / (L - u): the mean, over every query that can
                see the opening (i >= u), of the attention it gives to P. For the sequence's own
                opening (u = 0) this counts the first N queries too, which m_N leaves out.
A token belongs to the segment holding most of its characters (ties: the earlier); tokens that
cover no character of the text (a BOS the tokenizer adds) belong to the template.
"""

import re
from dataclasses import dataclass

import numpy as np

from sinkviz.numbers.metrics import Thresholds, deep_mean
from sinkviz.flow.prompts import TokenizedPrompt
from sinkviz.numbers.stats import AttentionStats

BLOCK_RULES = {
    "auto": "'---' lines if the prompt has any, else blank lines",
    "blank lines": "one or more empty lines end a block",
    "--- lines": "a line of three or more '-', '=' or '*' ends a block",
    "headings": "a line starting with '#' starts a block",
    "halves": "the first and second half of your text's tokens",
    "thirds": "beginning, middle and end: thirds of your text's tokens",
}
EQUAL_PARTS = {"halves": ("first half", "second half"), "thirds": ("beginning", "middle", "end")}
RULE_LINE = re.compile(r"^[ \t]*([-=*])\1{2,}[ \t]*(?:\n\s*|\Z)", re.M)   # with the blank lines after it
BLANK = re.compile(r"\n[ \t]*\n\s*")
HEADING = re.compile(r"^#", re.M)
LEARNED_SINK = "learned sink"


@dataclass(frozen=True)
class Segment:
    kind: str                         # "template", "system", "user", "block" ("sequence": no parts found)
    name: str                         # e.g. "template", "system turn", "user turn", "block 2"
    spans: tuple[tuple[int, int], ...]  # token ranges [start, stop), in order

    @property
    def positions(self) -> np.ndarray:
        """[n] the token positions, ascending."""
        return np.concatenate([np.arange(a, b) for a, b in self.spans]) if self.spans else np.zeros(0, int)

    @property
    def n_tokens(self) -> int:
        return sum(b - a for a, b in self.spans)


@dataclass(frozen=True)
class SegmentShares:
    segments: tuple[Segment, ...]
    names: tuple[str, ...]       # segment names, then "learned sink" where the model has one
    heads_share: np.ndarray      # [layers, heads, S]  share[l, h, S]
    share: np.ndarray            # [layers, S]         mean over heads
    uniform: np.ndarray          # [layers, S]         share under uniform attention
    token_share: np.ndarray      # [S]                 |S| / L (0 for the learned sink)


@dataclass(frozen=True)
class Openings:
    first_n: int
    names: tuple[str, ...]       # "sequence", then "system turn" / "user text" where present
    positions: tuple[tuple[int, ...], ...]  # the token positions each opening covers
    heads_mass: np.ndarray       # [layers, heads, K]  open[l, h]
    mass: np.ndarray             # [layers, K]         mean over heads


def find_blocks(prompt: str, rule: str = "auto") -> list[tuple[int, int]]:
    """Character ranges [start, stop) of the blocks of ``prompt`` under ``rule`` (BLOCK_RULES). A
    block runs from its first character to the next block's first, so the blank line or marker
    line that ends it is part of it; one block when the rule finds no boundary."""
    if rule not in BLOCK_RULES:
        raise ValueError(f"unknown block rule {rule!r}; one of {sorted(BLOCK_RULES)}")
    if rule == "auto":
        rule = "--- lines" if RULE_LINE.search(prompt) else "blank lines"
    if rule == "headings":
        starts = [m.start() for m in HEADING.finditer(prompt) if m.start() > 0]
    else:
        pattern = BLANK if rule == "blank lines" else RULE_LINE
        starts = [m.end() for m in pattern.finditer(prompt) if 0 < m.end() < len(prompt)]
    bounds = [0] + sorted(set(s for s in starts if 0 < s < len(prompt))) + [len(prompt)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def token_owners(offsets: tuple, char_spans: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """[L] index into ``char_spans`` (disjoint) of the span holding most of each token's characters
    (ties: the earlier span); -1 for a token inside none or covering no character."""
    if not char_spans or not n_tokens:
        return np.full(n_tokens, -1)
    tok = np.asarray(offsets[:n_tokens], dtype=np.int64).reshape(-1, 2)            # [L, 2] characters [a, b)
    span = np.asarray(char_spans, dtype=np.int64)                                  # [K, 2]
    shared = (np.minimum(tok[:, 1:], span[None, :, 1]) - np.maximum(tok[:, :1], span[None, :, 0])).clip(min=0)
    owners = shared.argmax(-1)                                                     # [L] argmax: the earliest of ties
    return np.where(shared.max(-1) > 0, owners, -1)


def _spans(positions: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Sorted positions -> contiguous ranges [start, stop)."""
    if positions.size == 0:
        return ()
    breaks = np.flatnonzero(np.diff(positions) != 1)
    starts = np.concatenate([[positions[0]], positions[breaks + 1]])
    stops = np.concatenate([positions[breaks], [positions[-1]]]) + 1
    return tuple((int(a), int(b)) for a, b in zip(starts, stops))


def equal_parts(tokens: TokenizedPrompt, names: tuple[str, ...]) -> list[tuple[str, str, tuple[int, int]]]:
    """The user turn cut into len(names) runs of (nearly) equal token counts, as character spans:
    each part starts at the first character of its first token."""
    u0, u1 = tokens.user_span
    inside = [k for k, (a, b) in enumerate(tokens.offsets) if b > a and u0 <= a < u1]   # the user's tokens
    cuts = [inside[len(inside) * p // len(names)] for p in range(1, len(names))] if len(inside) >= len(names) else []
    bounds = [u0] + [tokens.offsets[k][0] for k in cuts] + [u1]
    return [("block", name, (a, b)) for name, a, b in zip(names, bounds, bounds[1:]) if b > a]


def segments_of(tokens: TokenizedPrompt, blocks: str | None = None) -> tuple[Segment, ...]:
    """The parts of a sequence: template (its own and special tokens), system turn, and the user
    turn, or with ``blocks`` (a BLOCK_RULES key) the user turn's blocks. Without character offsets
    or a located user turn: one segment, the whole sequence."""
    n = len(tokens.token_ids)
    if not tokens.offsets or not tokens.user_span:
        return (Segment("sequence", "whole sequence", ((0, n),)),)
    u0, u1 = tokens.user_span
    parts = [("user", "user turn", (u0, u1))]
    if blocks in EQUAL_PARTS:
        parts = equal_parts(tokens, EQUAL_PARTS[blocks])
    elif blocks is not None:
        found = find_blocks(tokens.text[u0:u1], blocks)
        parts = [("block", f"block {k + 1}", (u0 + a, u0 + b)) for k, (a, b) in enumerate(found)]
    if tokens.system_span:
        parts.insert(0, ("system", "system turn", tuple(tokens.system_span)))
    owners = token_owners(tokens.offsets, [p[2] for p in parts], n)
    found = [Segment("template", "template" if tokens.templated else "special tokens",
                     _spans(np.flatnonzero(owners == -1)))]
    found += [Segment(kind, name, _spans(np.flatnonzero(owners == k))) for k, (kind, name, _) in enumerate(parts)]
    return tuple(s for s in found if s.spans)


def column_sums(stats: AttentionStats) -> np.ndarray:
    """[layers, heads, L] C[l, h, j] = sum over the queries that see j of a[l, h, i, j]."""
    n = stats.n_tokens
    seen_by = (n - np.arange(n)) if stats.causal else np.full(n, n)                # [L]
    return stats.received.astype(np.float64) * seen_by


def uniform_shares(segments: tuple[Segment, ...], n: int, windows: tuple, causal: bool) -> np.ndarray:
    """[layers, S] mean over queries i of |S ∩ keys i sees| / |keys i sees|; query i sees
    max(0, i - w + 1) .. i under a causal sliding window w, every key when bidirectional."""
    out = np.zeros((len(windows), len(segments)))
    i = np.arange(n)                                                               # [L]
    for s, seg in enumerate(segments):
        member = np.zeros(n + 1)
        member[1:] = np.cumsum(np.isin(np.arange(n), seg.positions))              # [L+1] prefix counts
        for l, w in enumerate(windows):
            if not causal:
                out[l, s] = member[n] / n
                continue
            low = np.maximum(0, i - w + 1) if w else np.zeros(n, int)
            out[l, s] = np.mean((member[i + 1] - member[low]) / (i + 1 - low))
    return out


def segment_shares(stats: AttentionStats, segments: tuple[Segment, ...]) -> SegmentShares:
    """Each segment's share of attention per layer and head (module docstring), the learned sink
    appended as a segment of its own where the model has one."""
    col = column_sums(stats)                                                       # [l, h, L]
    heads = np.stack([col[:, :, seg.positions].sum(-1) for seg in segments], -1) / stats.n_tokens
    uniform = uniform_shares(segments, stats.n_tokens, stats.windows, stats.causal)
    tokens = np.array([seg.n_tokens / stats.n_tokens for seg in segments])
    names = tuple(seg.name for seg in segments)
    if stats.learned_sink is not None:
        heads = np.concatenate([heads, stats.learned_sink[..., None].astype(np.float64)], -1)
        uniform = np.concatenate([uniform, np.zeros((len(stats.windows), 1))], -1)
        tokens, names = np.append(tokens, 0.0), names + (LEARNED_SINK,)
    return SegmentShares(segments, names, heads, heads.mean(axis=1), uniform, tokens)


def opening_positions(segments: tuple[Segment, ...], n: int, first_n: int) -> dict[str, tuple[int, ...]]:
    """The first ``first_n`` token positions of the sequence, of the system turn and of the user's
    text (the user turn, or its blocks together), where those exist."""
    found = {"sequence": tuple(range(min(first_n, n)))}
    for kind, name in (("system", "system turn"), ("user", "user text")):
        kinds = ("user", "block") if kind == "user" else (kind,)
        pos = [seg.positions for seg in segments if seg.kind in kinds]
        if pos:
            found[name] = tuple(int(p) for p in np.sort(np.concatenate(pos))[:first_n])
    return found


def openings(stats: AttentionStats, segments: tuple[Segment, ...], first_n: int) -> Openings:
    """Opening mass (module docstring) of the sequence, the system turn and the user's text."""
    col, n = column_sums(stats), stats.n_tokens                                     # [l, h, L]
    found = opening_positions(segments, n, first_n)
    heads = np.stack([col[:, :, list(p)].sum(-1) / ((n - p[0]) if stats.causal else n)
                      for p in found.values()], -1)                                # [l, h, K]
    return Openings(first_n, tuple(found), tuple(found.values()), heads, heads.mean(axis=1))


def segment_report(stats: AttentionStats, tokens: TokenizedPrompt, first_n: int,
                   blocks: str | None = None) -> tuple[dict, list[dict]]:
    """JSON-ready (summary, per-layer fields) for report_dict: the segments with their token spans
    and token shares, the openings' positions; per layer each segment's share, its uniform share
    and each opening's mass."""
    segs = segments_of(tokens, blocks)
    shares = segment_shares(stats, segs)
    opens = openings(stats, segs, first_n)
    summary = {"rule": blocks or "turns", "parts": [
        {"name": s.name, "kind": s.kind, "spans": [list(r) for r in s.spans], "n_tokens": s.n_tokens,
         "token_share": float(t)} for s, t in zip(segs, shares.token_share)],
        "openings": {name: list(pos) for name, pos in zip(opens.names, opens.positions)}}
    layers = [{"segment_share": dict(zip(shares.names, map(float, shares.share[l]))),
               "segment_uniform": dict(zip(shares.names, map(float, shares.uniform[l]))),
               "opening_mass": dict(zip(opens.names, map(float, opens.mass[l])))}
              for l in range(stats.n_layers)]
    return summary, layers


def segment_table(shares: SegmentShares, tokens: TokenizedPrompt, shallow_layers: int = 2) -> dict[str, list]:
    """Columns of the Segments table: each part's tokens (count and ranges), its first tokens, its
    share of the tokens, and its uniform and attention shares as means over layers >= shallow_layers
    with their ratio (NaN where the uniform share is 0)."""
    deep = Thresholds(shallow_layers=shallow_layers)
    share, uniform = deep_mean(shares.share, deep), deep_mean(shares.uniform, deep)          # [S], [S]
    extra = len(shares.names) - len(shares.segments)                                       # the learned sink
    return {"part": list(shares.names),
            "tokens": [f"{s.n_tokens} ({', '.join(f'{a}–{b - 1}' for a, b in s.spans)})" for s in shares.segments]
            + ["–"] * extra,
            "starts with": [" ".join(tokens.shown[p] for p in s.positions[:4]) for s in shares.segments] + [""] * extra,
            "share of tokens": list(shares.token_share), "uniform share": list(uniform),
            "attention share": list(share),
            "× uniform": list(np.divide(share, uniform, out=np.full_like(share, np.nan), where=uniform > 0))}
