"""What holds for any attention, checked on every capture before its numbers go anywhere.

For layer l, head h, L tokens and attention a[i, j] >= 0 whose row i sums to 1 - s_i (s_i:
the learned-sink probability of the row, 0 where the model has none):
- sink mass in [0, 1]; NaN exactly where no query qualifies (L <= N)
- received attention in [0, 1]; before normalisation it is the column sum
  C_j = sum_{i sees j} a[i, j] in [0, number of queries that see j], and sum_j C_j = L - sum_i s_i
- each map row sums to 1 minus its queries' mean learned-sink mass
- entropy (of the row's whole softmax, the learned sink a column of it) in [0, ln K],
  K = L, or L + 1 with a learned sink
- hidden-state and value norms finite and >= 0 (value norms all NaN where the path cannot see
  them: the eager output_attentions path); nothing else NaN
A violation raises ``ImpossibleStatistic`` naming layer, head and statistic: such a number
is never stored or shown. Tolerances allow float32 summation (float64: 1e-9).
"""

import math

import numpy as np

from sinkviz.errors import SinkvizError


class ImpossibleStatistic(SinkvizError):
    """A captured statistic breaks a law that every attention obeys: a capture bug, never shown."""


def tolerance(stats) -> float:
    """Slack for rounding: float32 statistics 1e-4 (times L for sums over L keys), float64 1e-9."""
    return 1e-9 if stats.received.dtype == np.float64 else 1e-4


def check(stats, tol: float | None = None) -> None:
    """Raise ``ImpossibleStatistic`` unless every statistic of ``stats`` (AttentionStats) obeys
    the laws above, within ``tol`` (default: by the arrays' dtype)."""
    n, tol = stats.n_tokens, tol or tolerance(stats)
    sink = stats.learned_sink if stats.learned_sink is not None else np.zeros(stats.entropy.shape)
    sink_rows = (stats.learned_sink_map if stats.learned_sink_map is not None
                 else np.zeros(stats.maps.shape[:3]))                                 # [l, h, bins]
    defined = np.arange(1, stats.sink_mass.shape[-1] + 1) < n                          # [8]
    _finite_within("sink mass", stats.sink_mass[..., defined], 0.0, 1.0, tol)
    if np.isfinite(stats.sink_mass[..., ~defined]).any():
        _fail("sink mass", np.argwhere(np.isfinite(stats.sink_mass[..., ~defined]))[0], "defined where L <= N")
    _finite_within("learned-sink mass", sink, 0.0, 1.0, tol)
    _finite_within("received attention", stats.received, 0.0, 1.0, tol)
    seen_by = (n - np.arange(n) if stats.causal else np.full(n, n)).astype(stats.received.dtype)  # [L]
    total = (stats.received.reshape(-1, n) @ seen_by).reshape(stats.entropy.shape)    # [l, h] (one BLAS call)
    _close("received attention summed over keys", total, n * (1.0 - sink), tol * n)
    _finite_within("map", stats.maps, 0.0, 1.0, tol)
    _close("map row sum", stats.maps.sum(-1) + sink_rows, np.ones(sink_rows.shape), tol)
    upper = math.log(n + (stats.learned_sink is not None))
    _finite_within("entropy", stats.entropy, 0.0, upper, tol)
    for name in ("hidden_norm", "value_norm"):
        norms = getattr(stats, name)
        if name == "value_norm" and np.isnan(norms).all():
            continue                                   # not seen on this path: undefined, not wrong
        _finite_within(name.replace("_", " "), norms[:, None], 0.0, math.inf, tol)


def _finite_within(name: str, values: np.ndarray, low: float, high: float, tol: float) -> None:
    """values [layers, heads, ...]: finite and inside [low - tol, high + tol]. Two reductions
    (a NaN makes both NaN) unless something is wrong; only then the search for where."""
    if values.size == 0:
        return
    lowest, highest = values.min(), values.max()
    if lowest >= low - tol and highest <= high + tol and np.isfinite(highest):
        return
    bad = ~np.isfinite(values) | (values < low - tol) | (values > high + tol)
    if bad.any():
        where = np.argwhere(bad)[0]
        _fail(name, where, f"{values[tuple(where)]:.6g} outside [{low:g}, {high:g}]")


def _close(name: str, got: np.ndarray, want: np.ndarray, tol: float) -> None:
    """got, want [layers, heads, ...] equal within tol."""
    bad = ~(np.abs(got - want) <= tol)
    if bad.any():
        where = np.argwhere(bad)[0]
        _fail(name, where, f"{got[tuple(where)]:.6g} where it must be {want[tuple(where)]:.6g}")


def _fail(name: str, where: np.ndarray, what: str) -> None:
    head = f", head {where[1]}" if len(where) > 1 and name not in ("hidden norm", "value norm") else ""
    raise ImpossibleStatistic(f"the capture produced an impossible number, so nothing was stored or shown: "
                              f"layer {where[0]}{head}, {name} {what}. Please report it with the model and prompt.")
