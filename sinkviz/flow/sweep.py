"""Context-length sweep: sink mass per layer as the same text grows.

Each length is the first n tokens of the text (raw, no chat template), analysed through the
store, so a repeated sweep, or one that was interrupted, recomputes nothing it has.
"""

from dataclasses import dataclass, replace
from functools import partial

from pathlib import Path

import numpy as np

from sinkviz.flow.analysis import Analysis, Settings, analyze, token_limit
from sinkviz.errors import BadPrompt
from sinkviz.flow.models import ModelInfo, get_model
from sinkviz.flow.progress import Eta, Tick, Ticks, left_text, line
from sinkviz.flow.prompts import check_prompt
from sinkviz.flow.store import ResultStore

START = 256
SHIPPED_TEXT = Path(__file__).resolve().parent.parent / "data" / "declaration_of_independence.txt"


def shipped_text() -> str:
    """The US Declaration of Independence (1776, public domain): ~1,700 tokens of plain prose."""
    return SHIPPED_TEXT.read_text(encoding="utf-8")


@dataclass(frozen=True)
class SweepPoint:
    n_tokens: int
    key: str
    sink_mass: np.ndarray   # [layers, 8] head mean of m_N for N = 1..8
    cached: bool
    model: ModelInfo        # the model that made it


def sweep_lengths(available: int, start: int = START) -> list[int]:
    """start, 2 start, 4 start, ... below ``available``, then ``available`` itself."""
    if available < 2:
        raise BadPrompt(f"the text has {available} token(s); a sweep needs at least 2")
    lengths, n = [], min(start, available)
    while n < available:
        lengths.append(n)
        n *= 2
    return lengths + [available]


def prefix_prompts(text: str, settings: Settings) -> list[str]:
    """The text cut after each sweep length (in tokens of the model's tokenizer, counting the
    special tokens it adds, such as a BOS or [CLS] ... [SEP]), as strings; the longest is capped
    by the same limit analyze() applies."""
    return [prompt for _, prompt in prefixes(text, settings)]


def prefixes(text: str, settings: Settings) -> list[tuple[int, str]]:
    """(sweep length, prefix_prompts' string of that length) for every length."""
    check_prompt(text)
    loaded = get_model(settings.model, settings.device, settings.dtype)
    tokenizer = loaded.tokenizer
    extra = tokenizer.num_special_tokens_to_add()                 # analyze() adds them again
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = min(len(ids) + extra, token_limit(settings, loaded.info) or len(ids) + extra)
    return [(n, tokenizer.decode(ids[:n - extra])) for n in sweep_lengths(limit)]


def run_sweep(text: str, settings: Settings, *, max_tokens: int | None = None,
              store: ResultStore | None = None, progress: Ticks | None = None) -> list[SweepPoint]:
    """Analyse every prefix of ``text``; ``progress`` gets a Tick before each length and after
    each of its layers ('length 3/4 (1,024 tokens) · layer 17/30 · ~40 s left')."""
    settings = replace(settings, use_template=False, max_tokens=max_tokens or settings.max_tokens)
    todo = prefixes(text, settings)
    ticks = _SweepTicks(progress, [n for n, _ in todo]) if progress else None
    points = []
    for i, (_, prompt) in enumerate(todo):
        if ticks:
            ticks.at(i)
        points.append(sweep_point(analyze(prompt, settings, store=store, on_layer=ticks and partial(ticks.at, i))))
    return points


def sweep_point(result: Analysis) -> SweepPoint:
    """The sweep's reading of one prefix's analysis (also a stored one, reopened by key)."""
    return SweepPoint(result.stats.n_tokens, result.key, result.stats.sink_mass.mean(axis=1), result.cached,
                      result.model)


class _SweepTicks:
    """A sweep's Ticks. Its work is tokens x layers, so a length's share of the sweep is its
    share of the tokens, and layer d of L of that length has done d / L of its share."""

    def __init__(self, progress: Ticks, lengths: list[int]):
        self.progress, self.lengths, self.eta = progress, lengths, Eta()

    def at(self, i: int, done: int = 0, layers: int = 1) -> None:
        """Length ``i`` (from 0) under way, ``done`` of its ``layers`` run."""
        n = self.lengths[i]
        fraction = (sum(self.lengths[:i]) + n * done / layers) / sum(self.lengths)
        self.progress(Tick(fraction, line(f"length {i + 1}/{len(self.lengths)} ({n:,} tokens)",
                                          f"layer {done}/{layers}" if done else "",
                                          left_text(self.eta.left(fraction, 1.0)))))
