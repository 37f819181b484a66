"""Severity against the model's own baseline: a shipped set of varied prompts, run once per model
and settings, gives each reading's distribution; a prompt is reported by its percentile in it.

The set (``data/calibration_prompts.jsonl``, 51 prompts written for sinkviz and dedicated to the
public domain, some quoting the US Declaration of Independence) mixes questions, instructions,
system-style prompts, blank-line / '---' / '###' blocks, code, German, Spanish, Japanese, Chinese,
emoji, chat and a short policy excerpt (40 prompts of 31-110 tokens with the template), and 11 long
ones of 214-1,750 tokens (a support-assistant system prompt, a policy, code, German, a story,
excerpts of the Declaration), because the sink mass falls with length (bench/calibration_length.py).

Readings (per prompt p and layer l; see readings.py and segments.py):
- 'sequence': m_N, the sink mass of the sequence's first N tokens         [P, layers, 8]
- 'user':     the opening mass of the user's text's first N tokens        [P, layers, 8]
- 'share_<kind>': each kind's share of attention (template, system, user, learned sink) [P, layers, 4]
Percentile of x among values v_1..v_P (NaNs dropped): 100 x (#{v < x} + #{v = x} / 2) / P,
non-decreasing in x. The headline uses the deep-layer mean (``metrics.deep_mean``) of a reading,
judged against the calibration prompts' deep-layer means; per layer, against that layer's values.
"""

import hashlib
import json
import os
import threading
from dataclasses import dataclass, replace
from importlib import resources

import numpy as np

from sinkviz.errors import BadPrompt
from sinkviz.flow import models
from sinkviz.flow.analysis import Progress, Settings, analyze_many, env_max_tokens
from sinkviz.numbers.metrics import Thresholds, deep_mean
from sinkviz.numbers.readings import KINDS, kind_shares, per_layer_reading
from sinkviz.engine.reduce import MAX_FIRST_N
from sinkviz.numbers.segments import openings, segments_of
from sinkviz.flow.store import ResultStore

VERSION = 3            # 2: the prompts' lengths kept; 3: long prompts added
MAP_SIZE = 32          # maps are not calibrated; small ones keep the calibration store small
TYPICAL = (5.0, 95.0)  # percentiles outside this band are 'unusual'


@dataclass(frozen=True)
class Calibration:
    key: str
    n_prompts: int
    sink_mass: np.ndarray     # [P, layers, 8]  m_N, layer mean over heads (NaN where L <= N)
    user_opening: np.ndarray  # [P, layers, 8]  opening mass of the user's text, N = 1..8
    shares: np.ndarray        # [P, layers, 4]  KINDS' shares of attention (NaN where absent)
    n_tokens: np.ndarray      # [P]             each prompt's length, template included

    def values(self, reading: str, first_n: int = 3) -> np.ndarray:
        """[P, layers] the calibration prompts' values of ``reading``."""
        if reading == "sequence":
            return self.sink_mass[..., first_n - 1]
        if reading == "user":
            return self.user_opening[..., first_n - 1]
        return self.shares[..., KINDS.index(reading.removeprefix("share_").replace("_", " "))]


def calibration_prompts() -> list[str]:
    text = resources.files("sinkviz").joinpath("data/calibration_prompts.jsonl").read_text("utf-8")
    return [json.loads(line)["prompt"] for line in text.splitlines() if line.strip()]


def calibration_settings(settings: Settings) -> Settings:
    return replace(settings, map_size=MAP_SIZE)


def calibration_key(settings: Settings) -> str:
    """sha256 of the model's identity, the template choice, the system turn, the token limits (they
    decide which prompts are left out) and the prompt set."""
    payload = {"version": VERSION, "model": models.identity(settings.model, settings.device, settings.dtype),
               "limits": [settings.max_tokens, env_max_tokens()],
               "template": settings.use_template, "system": settings.system or None,
               "prompts": hashlib.sha256("\0".join(calibration_prompts()).encode()).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


_stores: dict[str, ResultStore] = {}
_stores_lock = threading.Lock()


def calibration_store(store: ResultStore) -> ResultStore:
    """A store beside the results (one per folder, opened once), so the calibration prompts never
    appear in History."""
    directory = os.path.normpath(store.directory) + "-calibration"
    with _stores_lock:
        if directory not in _stores or not os.path.isdir(directory):
            _stores[directory] = ResultStore(directory)
        return _stores[directory]


def prompt_values(result) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One analysed prompt's ([layers, 8] m_N, [layers, 8] user opening mass, [layers, 4] shares)."""
    stats = result.stats
    sink = stats.sink_mass.mean(axis=1)                                          # [layers, 8] (NaN where L <= N)
    segs = segments_of(result.tokens)
    opening = np.stack([_user_opening(stats, segs, n) for n in range(1, MAX_FIRST_N + 1)], -1)
    found = kind_shares(stats, result.tokens)
    shares = np.stack([found.get(k, np.full(stats.n_layers, np.nan)) for k in KINDS], -1)
    return sink, opening, shares


def _user_opening(stats, segs, first_n: int) -> np.ndarray:
    """[layers] opening mass of the user's text (of the sequence where it is not located)."""
    opens = openings(stats, segs, first_n)
    return opens.mass[:, opens.names.index("user text") if "user text" in opens.names else 0]


def calibrate(settings: Settings, store: ResultStore | None = None,
              progress: Progress | None = None) -> Calibration:
    """The calibration of ``settings``' model: from the calibration store if made before, else
    every calibration prompt analysed once, in length-sorted batches, and kept (``progress`` gets
    'i/total' as the i-th starts: after i - 1 are ready).
    Prompts longer than the model takes are left out (``n_prompts`` counts those used)."""
    store = store or ResultStore()
    found = load_calibration(settings, store)
    if found is not None:
        return found
    cal_store, prompts = calibration_store(store), calibration_prompts()
    found_by_index: dict[int, tuple] = {}
    if progress:
        progress(f"1/{len(prompts)}")
    # length-sorted batches, as an audit runs them
    for done, (index, result) in enumerate(analyze_many(prompts, calibration_settings(settings),
                                                         store=cal_store, head_maps=False), start=1):
        if progress and done < len(prompts):
            progress(f"{done + 1}/{len(prompts)}")
        if isinstance(result, BadPrompt):   # longer than the model's context (or $SINKVIZ_MAX_TOKENS): left out
            continue
        if isinstance(result, Exception):
            raise result
        found_by_index[index] = (prompt_values(result), result.stats.n_tokens)
    values = [found_by_index[i][0] for i in sorted(found_by_index)]
    lengths = [found_by_index[i][1] for i in sorted(found_by_index)]
    if not values:
        raise BadPrompt("none of the calibration prompts fits this model's token limit")
    sink, opening, shares = (np.stack(v) for v in zip(*values))
    cal = Calibration(calibration_key(settings), len(values), sink, opening, shares, np.array(lengths))
    cal_store.put(cal.key, {"schema": VERSION, "key": cal.key, "n_prompts": cal.n_prompts},
                  {"sink_mass": sink, "user_opening": opening, "shares": shares, "n_tokens": cal.n_tokens})
    return cal


def load_calibration(settings: Settings, store: ResultStore | None = None) -> Calibration | None:
    """The kept calibration of ``settings``' model, or None when it has not been made."""
    key = calibration_key(settings)
    stored = calibration_store(store or ResultStore()).get(key)
    if stored is None:
        return None
    meta, arrays = stored
    try:
        names = ("sink_mass", "user_opening", "shares", "n_tokens")
        return Calibration(key, int(meta["n_prompts"]), *(np.array(arrays[k]) for k in names))
    except (KeyError, TypeError, ValueError):
        return None


def percentile(values: np.ndarray, x: float) -> float:
    """100 x (#{v < x} + #{v = x} / 2) / #v over the finite values [P]; NaN if x or all are NaN."""
    v = values[np.isfinite(values)]
    if not v.size or not np.isfinite(x):
        return float("nan")
    return float(100.0 * (np.sum(v < x) + 0.5 * np.sum(v == x)) / v.size)


@dataclass(frozen=True)
class Judgement:
    reading: str
    value: float                 # the prompt's deep-layer mean of the reading
    percentile: float            # ... among the calibration prompts' deep-layer means
    label: str                   # 'typical for this model', 'unusual: above the 95th percentile', ...
    layer_values: np.ndarray     # [layers]
    layer_percentiles: np.ndarray  # [layers] each layer against the same layer's calibration values
    n_prompts: int


def label(pct: float, value: float, values: np.ndarray) -> str:
    """'typical for this model' inside TYPICAL; 'unusual: above/below the 95th/5th percentile'
    outside it; 'beyond every calibration prompt' past the extremes."""
    finite = values[np.isfinite(values)]
    if not np.isfinite(pct):
        return "no calibration value"
    if finite.size and value > finite.max():
        return "unusual: above every calibration prompt"
    if finite.size and value < finite.min():
        return "unusual: below every calibration prompt"
    if pct > TYPICAL[1]:
        return f"unusual: above the {TYPICAL[1]:.0f}th percentile"
    if pct < TYPICAL[0]:
        return f"unusual: below the {TYPICAL[0]:.0f}th percentile"
    return "typical for this model"


def judge(cal: Calibration, layer_values: np.ndarray, reading: str, first_n: int = 3,
          thresholds: Thresholds = Thresholds()) -> Judgement:
    """A prompt's per-layer reading [layers] against the calibration (module docstring)."""
    values = cal.values(reading, first_n)                                          # [P, layers]
    means = np.array([deep_mean(v, thresholds) for v in values])                   # [P]
    value = float(deep_mean(layer_values, thresholds))
    pct = percentile(means, value)
    per_layer = np.array([percentile(values[:, l], float(x)) for l, x in enumerate(layer_values)])
    return Judgement(reading, value, pct, label(pct, value, means), np.asarray(layer_values), per_layer, cal.n_prompts)


def ordinal(pct: float) -> str:
    """55.0 -> '55th', 1 -> '1st', 92.5 -> '92nd' (rounded); NaN -> 'no'."""
    if not np.isfinite(pct):
        return "no"
    n = int(round(pct))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def sentences(cal: Calibration, result, first_n: int, thresholds: Thresholds = Thresholds()) -> list[str]:
    """The calibrated headline of an analysis: the user's opening (with a template) and the
    sequence's strongest deep layer, each with its percentile among the calibration prompts."""
    from sinkviz.numbers.metrics import layer_sinks
    from sinkviz.numbers.readings import per_layer_reading
    out = []
    if result.tokens.templated and result.tokens.user_span:
        j = judge(cal, per_layer_reading(result, first_n, "user", thresholds), "user", first_n, thresholds)
        out.append(f"Your text's first {first_n} tokens receive {j.value:.1%} of the attention of the queries that "
                   f"see them (mean over layers ≥ {thresholds.shallow_layers}): {ordinal(j.percentile)} percentile "
                   f"of {cal.n_prompts} calibration prompts, {j.label}.")
    sinks = layer_sinks(result.stats, first_n, thresholds)
    j = judge(cal, sinks.sink_mass, "sequence", first_n, thresholds)
    deep = np.arange(len(sinks.sink_mass)) >= thresholds.shallow_layers
    worst = int(np.where(deep, sinks.sink_mass, -1.0).argmax())
    out.append(f"Layer {worst}: {sinks.sink_mass[worst]:.0%} on the sequence's first {first_n} tokens, "
               f"{ordinal(j.layer_percentiles[worst])} percentile of this model's layer {worst}; over layers "
               f"≥ {thresholds.shallow_layers}, {j.value:.0%}, {ordinal(j.percentile)} percentile, {j.label}.")
    n = result.stats.n_tokens
    near = comparable_lengths(cal, n)
    if near < MIN_COMPARABLE:
        out.append(f"Read these percentiles with care: this prompt has {n:,} tokens and only {near} of the "
                   f"{cal.n_prompts} calibration prompts ({int(cal.n_tokens.min())}–{int(cal.n_tokens.max()):,} "
                   "tokens) have between half and twice as many; the sink mass falls as prompts grow (Sweep page), "
                   "so a long prompt tends to rank low.")
    return out


MIN_COMPARABLE = 10   # calibration prompts within a factor of 2 in length for a percentile to go unqualified


def comparable_lengths(cal: Calibration, n_tokens: int) -> int:
    """How many calibration prompts have between n/2 and 2n tokens."""
    return int(np.sum((cal.n_tokens >= n_tokens / 2) & (cal.n_tokens <= 2 * n_tokens)))


def judge_readings(cal: Calibration, result, first_n: int, thresholds: Thresholds = Thresholds()) -> dict:
    """Label -> Judgement of each reading an analysis has (Analyze's percentile chart): your text's
    opening where a template locates it, then the sequence's first N (sink mass)."""
    names = {"sequence": f"sequence's first {first_n} (sink mass)"}
    if result.tokens.templated and result.tokens.user_span:
        names = {"user": f"your text's first {first_n}", **names}
    return {label: judge(cal, per_layer_reading(result, first_n, r, thresholds), r, first_n, thresholds)
            for r, label in names.items()}


def judge_value(cal: Calibration, value: float, reading: str, first_n: int = 3,
                thresholds: Thresholds = Thresholds()) -> tuple[float, str]:
    """(percentile, label) of a deep-layer mean ``value`` of ``reading`` against the calibration."""
    means = np.array([deep_mean(v, thresholds) for v in cal.values(reading, first_n)])   # [P]
    pct = percentile(means, value)
    return pct, label(pct, value, means)
