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
import torch

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
                 else np.zeros(stats.entropy.shape + stats.maps.shape[2:3]))          # [l, h, bins]
    if not stats.head_maps:                   # the head-mean maps of an audit row: rows sum to 1 - mean sink
        sink_rows = sink_rows.mean(axis=1, keepdims=True)                             # [l, 1, bins]
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


def screen_batch(stats: dict[str, torch.Tensor], lengths: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """The laws above on the GPU, for a right-padded causal batch before it is copied: stats as
    ``fused.statistics_many`` gives them ([layers, B, ...]) plus value_norm and hidden_norm
    [layers, B, L]; lengths and widths [B] int tensors. Returns [B] bool, True where prompt b
    may break a law. It screens with half the float32 tolerance, so a prompt it passes also
    passes ``check`` (min, max and ranges see the same values; sums differ only in rounding);
    a prompt it flags gets the full ``check`` on the host, which names what broke."""
    tol = 0.5e-4
    n = lengths.to(torch.int64)                                                     # [B]
    tokens = torch.arange(stats["received"].shape[-1], device=n.device)
    token_ok = tokens < n[:, None]                                                  # [B, L]
    bins = torch.arange(stats["maps"].shape[-1], device=n.device) < (-(-n // widths))[:, None]   # [B, bins]
    defined = torch.arange(1, stats["sink_mass"].shape[-1] + 1, device=n.device) < n[:, None]   # [B, 8]

    def outside(values, where, low, high):         # values [layers, B, ...]; where, high: broadcast to [B, ...]
        bad = ~torch.isfinite(values) | (values < low - tol) | (values > high + tol)
        return (bad & where).transpose(0, 1).flatten(1).any(1)                      # [B]

    sink = stats["sink_mass"]                                                       # [layers, B, heads, 8]
    seen_by = (n[:, None] - tokens).clamp(min=0).double()                           # [B, L], 0 past the prompt
    received = stats["received"].where(token_ok[:, None], 0.0)                      # [layers, B, heads, L]
    total = (received.double() * seen_by[:, None]).sum(-1)                          # [layers, B, heads]
    in_map = bins[:, None, :, None] & bins[:, None, None, :]                        # [B, 1, bins, bins]
    maps = stats["maps"].where(in_map, 0.0)                                         # [layers, B, heads, bins, bins]
    everywhere = torch.ones((), dtype=torch.bool, device=n.device)
    flags = [outside(sink, defined[:, None], 0.0, 1.0),
             (torch.isfinite(sink) & ~defined[:, None]).transpose(0, 1).flatten(1).any(1),
             outside(received, token_ok[:, None], 0.0, 1.0),
             ~(abs(total - n[:, None]) <= tol * n[:, None]).transpose(0, 1).flatten(1).all(1),
             outside(maps, in_map, 0.0, 1.0),
             outside(maps.sum(-1), bins[:, None], 1.0, 1.0),
             outside(stats["entropy"].double(), everywhere, 0.0, torch.log(n.double())[:, None]),   # [B, 1]: ln L
             outside(stats["hidden_norm"], token_ok, 0.0, math.inf),
             outside(stats["value_norm"], token_ok, 0.0, math.inf)]
    return torch.stack(flags).any(0)
