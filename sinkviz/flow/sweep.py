"""Context-length sweep: sink mass per layer as the same text grows.

Each length is the first n tokens of the text (raw, no chat template), analysed through the
store, so a repeated sweep, or one that was interrupted, recomputes nothing it has.
"""

from dataclasses import dataclass, replace

from pathlib import Path

import numpy as np

from sinkviz.flow.analysis import Analysis, Progress, Settings, analyze, token_limit
from sinkviz.errors import BadPrompt
from sinkviz.flow.models import ModelInfo, get_model
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
    check_prompt(text)
    loaded = get_model(settings.model, settings.device, settings.dtype)
    tokenizer = loaded.tokenizer
    extra = tokenizer.num_special_tokens_to_add()                 # analyze() adds them again
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    limit = min(len(ids) + extra, token_limit(settings, loaded.info) or len(ids) + extra)
    return [tokenizer.decode(ids[:n - extra]) for n in sweep_lengths(limit)]


def run_sweep(text: str, settings: Settings, *, max_tokens: int | None = None,
              store: ResultStore | None = None, progress: Progress | None = None) -> list[SweepPoint]:
    """Analyse every prefix of ``text``; ``progress`` gets 'n/total: tokens' before each."""
    settings = replace(settings, use_template=False, max_tokens=max_tokens or settings.max_tokens)
    prompts = prefix_prompts(text, settings)
    points = []
    for i, prompt in enumerate(prompts, start=1):
        if progress:
            progress(f"{i}/{len(prompts)}")
        points.append(sweep_point(analyze(prompt, settings, store=store)))
    return points


def sweep_point(result: Analysis) -> SweepPoint:
    """The sweep's reading of one prefix's analysis (also a stored one, reopened by key)."""
    return SweepPoint(result.stats.n_tokens, result.key, result.stats.sink_mass.mean(axis=1), result.cached,
                      result.model)
