"""analyze(): prompt + settings -> Analysis, through the result store.

Steps: look up the store (no model needed), load the model, tokenize, one hooked forward
pass, save. A repeated request is answered from the store without running the model, and
the same request made twice at once is computed once.
"""

import gc
import hashlib
import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable, Iterator

import torch

from sinkviz.engine import capture

from sinkviz.flow import models
from sinkviz.flow.embedded import DEFAULT_MODEL
from sinkviz.errors import BadPrompt, BadSetting, OutOfMemory, SinkvizError
from sinkviz.flow.memory import check_fits, fits_together
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.flow.progress import Eta, count_line
from sinkviz.flow.prompts import TokenizedPrompt, check_prompt, check_text, tokenize
from sinkviz.engine.reduce import MAX_FIRST_N
from sinkviz.numbers.stats import AttentionStats
from sinkviz.flow.store import ResultStore

SCHEMA_VERSION = 2   # 2: tokens keep offsets, turn spans and readable labels
Progress = Callable[[str], None]  # called with each step's name as it starts, and the forward pass's layers


@dataclass(frozen=True)
class Settings:
    """Everything besides the prompt that changes the captured numbers (``max_tokens`` aside)."""
    model: str = DEFAULT_MODEL
    use_template: bool = True
    system: str | None = None
    map_size: int = 128          # maps are full L x L up to this many tokens, pooled above
    device: str | None = None    # None: CUDA, then MPS, then CPU
    dtype: str | None = None     # None: bfloat16 on CUDA, float32 elsewhere
    max_tokens: int | None = None  # None: $SINKVIZ_MAX_TOKENS, else the model's context

    def __post_init__(self):
        if not 8 <= self.map_size <= 512:
            raise BadSetting(f"map size must be between 8 and 512, not {self.map_size}")
        if self.max_tokens is not None and self.max_tokens < 2:
            raise BadSetting(f"max tokens must be at least 2, not {self.max_tokens}")
        if self.system is not None:
            check_text(self.system, "the system turn")
        if not self.model.strip():
            raise BadSetting("the model name is empty")


@dataclass(frozen=True)
class Analysis:
    key: str
    prompt: str
    settings: Settings
    model: models.ModelInfo
    tokens: TokenizedPrompt
    stats: AttentionStats
    created: float                           # unix time of the capture
    timings: tuple[tuple[str, float], ...]   # (step, seconds) of the request that made it
    cached: bool = False                     # True when this request was served by the store


def result_key(identity: dict, settings: Settings, prompt: str) -> str:
    """sha256 of everything that changes the numbers, schema version included."""
    payload = {"schema": SCHEMA_VERSION, "model": identity, "prompt": prompt,
               "template": settings.use_template, "system": settings.system or None,
               "map_size": settings.map_size}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class _Steps:
    """Times named steps and reports each start to ``progress``."""

    def __init__(self, progress: Progress | None):
        self.progress, self.timings = progress, []

    def layers(self, name: str, on_layer: capture.OnLayer | None = None) -> capture.OnLayer | None:
        """A capture's on_layer that reports '<name> · layer 17/30 · ~12 s left' to ``progress``
        and calls ``on_layer`` too; None where neither is wanted (the capture then pays nothing)."""
        if not self.progress:
            return on_layer
        eta = Eta()

        def report(done: int, total: int) -> None:
            self.progress(f"{name} · {count_line('layer', done, total, eta.left(done, total))}")
            if on_layer:
                on_layer(done, total)
        return report

    @contextmanager
    def __call__(self, name: str):
        if self.progress:
            self.progress(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.append((name, time.perf_counter() - start))


_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def _key_lock(key: str) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def analyze(prompt: str, settings: Settings = Settings(), *, store: ResultStore | None = None,
            progress: Progress | None = None, on_layer: capture.OnLayer | None = None) -> Analysis:
    """Capture (or fetch from the store) the attention statistics of ``prompt``; ``progress``
    gets each step's name and, during the forward pass, 'forward pass · layer 17/30 · ~12 s left';
    ``on_layer(done, total)`` gets the forward pass's layers as numbers. The result always has
    every head's map: a stored analysis that kept the head mean only (an audit's row) is captured
    again and replaced."""
    check_prompt(prompt)
    store = store or ResultStore()
    steps = _Steps(progress)
    with steps("looking up the store"):
        key = result_key(models.identity(settings.model, settings.device, settings.dtype),
                         settings, prompt)
    with _key_lock(key):
        stored = load_stored(store, key)
        if stored is not None and stored.stats.head_maps:
            return replace(_stored_within_limit(stored, settings), timings=tuple(steps.timings))
        with steps("loading model"):
            loaded = models.get_model(settings.model, settings.device, settings.dtype)
        with steps("tokenizing"):
            tokens = _tokenized(loaded, prompt, settings)
        with steps("forward pass"):
            ids = torch.tensor([tokens.token_ids], device=loaded.model.device)
            with loaded.lock:
                stats = _capture_or_release(loaded.model, ids, settings.map_size,
                                            steps.layers("forward pass", on_layer))
        with steps("saving"):
            analysis = _saved(store, key, prompt, settings, loaded, tokens, stats)
        return replace(analysis, timings=tuple(steps.timings))


def _tokenized(loaded, prompt: str, settings: Settings) -> TokenizedPrompt:
    """The prompt's tokens, refused (BadPrompt) past the token limit, under 2 tokens, or when
    the capture would not fit in memory."""
    tokens = tokenize(loaded.tokenizer, prompt, settings.use_template, settings.system,
                      max_tokens=token_limit(settings, loaded.info))
    if len(tokens.token_ids) < 2:
        raise BadPrompt("the prompt has 1 token; sink statistics need at least 2")
    check_fits(loaded.model, len(tokens.token_ids), settings.map_size)
    return tokens


def _saved(store: ResultStore, key: str, prompt: str, settings: Settings, loaded, tokens, stats) -> Analysis:
    analysis = Analysis(key, prompt, settings, loaded.info, tokens, stats, time.time(), ())
    _store(store, analysis)
    return analysis


def _stored_within_limit(stored: Analysis, settings: Settings) -> Analysis:
    """A store hit, refused like a fresh request when it is longer than today's token limit."""
    limit = token_limit(settings, stored.model)
    if limit is not None and len(stored.tokens.token_ids) > limit:
        raise BadPrompt(f"the prompt has {len(stored.tokens.token_ids):,} tokens; the limit is {limit:,}")
    return replace(stored, cached=True)


def analyze_many(prompts: list[str], settings: Settings = Settings(), *, store: ResultStore | None = None,
                 batch_tokens: int | None = None, head_maps: bool = True
                 ) -> Iterator[tuple[int, "Analysis | SinkvizError"]]:
    """analyze() of every prompt, yielding (index, Analysis or the SinkvizError that stopped it)
    as each is ready: store hits first, then the rest in length-sorted batches of at most
    ``batch_tokens`` padded tokens (default: BATCH_TOKENS for the device, within what the memory
    guard allows). Each batch's analyses are yielded as it completes and stored by a writer
    thread while the next batch runs (all stored before this returns or is closed). Same keys,
    numbers and errors as analyze(); a prompt given twice is computed once. Without
    ``head_maps`` (audits, calibration) the store keeps the head-mean maps only (1/heads of the
    bytes; Analyze recaptures a prompt whose single heads are asked for), and so do the
    analyses yielded, so that a later store hit gives the same."""
    store = store or ResultStore()
    identity = models.identity(settings.model, settings.device, settings.dtype)
    todo: dict[str, tuple[str, list[int]]] = {}                      # key -> (prompt, indices)
    for index, prompt in enumerate(prompts):
        try:
            check_prompt(prompt)
            key = result_key(identity, settings, prompt)
            if key not in todo and (stored := load_stored(store, key)) is not None:
                yield index, _stored_within_limit(stored, settings)
                continue
        except SinkvizError as err:
            yield index, err
            continue
        todo.setdefault(key, (prompt, []))[1].append(index)
    if not todo:
        return
    loaded = models.get_model(settings.model, settings.device, settings.dtype)
    ready = []                                                       # (key, prompt, indices, tokens)
    for key, (prompt, indices) in todo.items():
        try:
            ready.append((key, prompt, indices, _tokenized(loaded, prompt, settings)))
        except SinkvizError as err:
            yield from ((i, err) for i in indices)
    budget = batch_tokens or BATCH_TOKENS.get(loaded.model.device.type, BATCH_TOKENS["cpu"])
    with ThreadPoolExecutor(1, thread_name_prefix="sinkviz-store") as writer:   # waits for its writes on exit
        writing: list[Future] = []
        for batch in plan_batches(ready, budget, lambda item: len(item[3].token_ids)):
            results = _capture_many(loaded, [item[3].token_ids for item in batch], settings.map_size, head_maps)
            for done in writing:   # the previous batch is stored while this one ran; at most one in flight
                done.result()
            writing = []
            for (key, prompt, indices, tokens), result in zip(batch, results):
                if not isinstance(result, SinkvizError):
                    result = Analysis(key, prompt, settings, loaded.info, tokens, result, time.time(), ())
                    writing.append(writer.submit(_store, store, result))
                yield from ((i, result) for i in indices)


def _store(store: ResultStore, analysis: Analysis) -> None:
    store.put(analysis.key, to_meta(analysis), analysis.stats.to_arrays(pack_maps=True))


BATCH_TOKENS = {"cuda": 16384, "cpu": 4096, "mps": 4096}  # padded tokens per forward pass


def plan_batches(items: list, budget: int, length: Callable[[object], int]) -> list[list]:
    """Items sorted by length, cut into runs whose padded size (count x longest) stays within
    ``budget`` tokens; an item longer than the budget runs alone."""
    batches: list[list] = []
    for item in sorted(items, key=length):
        if batches and (len(batches[-1]) + 1) * length(item) <= budget:
            batches[-1].append(item)
        else:
            batches.append([item])
    return batches


def _capture_many(loaded, sequences: list[tuple[int, ...]], map_size: int, head_maps: bool = True) -> list:
    """Statistics per sequence: one batched pass, or one pass each where the model's batched
    attention is not each prompt's own or the batch does not fit (then OutOfMemory per row).
    Without ``head_maps``: the head-mean maps (capture_batch's)."""
    with loaded.lock:
        if len(sequences) > 1 and fits_together(loaded.model, [len(s) for s in sequences], map_size):
            try:
                return capture.capture_batch(loaded.model, [list(s) for s in sequences], map_size,
                                             head_maps=head_maps)
            except capture.BatchUnsupported:
                pass
            except (torch.OutOfMemoryError, MemoryError):
                _release()
        results = []
        for seq in sequences:
            try:
                stats = _capture_or_release(loaded.model, torch.tensor([seq], device=loaded.model.device), map_size)
                results.append(stats if head_maps else stats.without_head_maps())
            except SinkvizError as err:
                results.append(err)
        return results


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _capture_or_release(model, ids: torch.Tensor, map_size: int, on_layer: capture.OnLayer | None = None):
    """capture(), with an out-of-memory turned into OutOfMemory after releasing what it held."""
    try:
        return capture.capture(model, ids, map_size, on_layer)
    except (torch.OutOfMemoryError, MemoryError):
        _release()
        raise OutOfMemory(f"{model.device.type} ran out of memory on a {ids.shape[1]:,}-token prompt; "
                          "memory was released, try a shorter prompt") from None


def token_limit(settings: Settings, info: models.ModelInfo) -> int | None:
    """The smallest of settings.max_tokens, $SINKVIZ_MAX_TOKENS and the model's context."""
    limits = [n for n in (settings.max_tokens, info.max_context, env_max_tokens()) if n]
    return min(limits) if limits else None


def env_max_tokens() -> int | None:
    """The operator's SINKVIZ_MAX_TOKENS (None when unset); BadSetting when it is not a count."""
    raw = os.environ.get("SINKVIZ_MAX_TOKENS", "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 2:
        raise BadSetting(f"SINKVIZ_MAX_TOKENS must be a whole number of at least 2, not {raw[:40]!r}")
    return int(raw)


def to_meta(analysis: Analysis) -> dict:
    """JSON-ready description of an analysis (everything except the arrays)."""
    worst = []
    for n in range(1, MAX_FIRST_N + 1):
        if analysis.stats.n_tokens > n:
            mass = layer_sinks(analysis.stats, n).sink_mass
            worst.append([int(mass.argmax()), float(mass.max())])
    return {"schema": SCHEMA_VERSION, "key": analysis.key, "prompt": analysis.prompt,
            "settings": asdict(analysis.settings), "model": asdict(analysis.model),
            "tokens": {f.name: getattr(analysis.tokens, f.name) for f in fields(analysis.tokens)},   # tuples as
            "created": analysis.created,                       # they are: asdict deep-copies every offset pair
            "worst_layer_by_n": worst}


def load_stored(store: ResultStore, key: str) -> Analysis | None:
    """The stored analysis under ``key``; None (and the entry dropped) if absent or unreadable."""
    stored = store.get(key)
    if stored is None:
        return None
    try:
        return from_stored(*stored)
    except MALFORMED as err:
        store.discard(key, err)
        return None


MALFORMED = (ValueError, KeyError, TypeError, AttributeError, IndexError, BadSetting)


def from_stored(meta: dict, arrays: dict) -> Analysis:
    """Rebuild an Analysis from the store's (meta, arrays)."""
    return replace(_from_meta(meta), stats=AttentionStats.from_arrays(arrays))


def _from_meta(meta: dict) -> Analysis:
    """An Analysis from a stored meta alone (stats None); raises on any malformed field."""
    if meta.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"stored schema {meta.get('schema')} is not {SCHEMA_VERSION}")
    tokens = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["tokens"].items()}
    worst = meta["worst_layer_by_n"]
    if not all(isinstance(l, int) and isinstance(m, float) for l, m in worst):
        raise ValueError("worst_layer_by_n is not a list of [layer, mass]")
    if not isinstance(meta["prompt"], str) or not isinstance(meta["created"], (int, float)):
        raise TypeError("prompt or created has the wrong type")
    if not 0 <= meta["created"] < 2.5e11:   # a time a date can show
        raise ValueError(f"created {meta['created']} is not a time")
    return Analysis(meta["key"], meta["prompt"], Settings(**meta["settings"]),
                    models.ModelInfo(**meta["model"]), TokenizedPrompt(**tokens),
                    None, meta["created"], ())


def history(store: ResultStore) -> list[dict]:
    """Stored metas, newest first; a malformed one is discarded (with a warning), never shown."""
    found = []
    for meta in store.metas():
        try:
            _from_meta(meta)
            found.append(meta)
        except MALFORMED as err:
            store.discard(meta.get("key") if isinstance(meta.get("key"), str) else "", err)
    return found
