"""The captured statistics of one prompt: plain numpy arrays, read-only once built.

For layer l, head h, query i, key j and attention a[l, h, i, j] (L tokens):
- sink_mass[l, h, N-1] = mean_{i >= N} sum_{j < N} a[l, h, i, j]   (N = 1..8; NaN if L <= N)
- entropy[l, h]        = mean_i  -sum_j a log a                     (nats)
- received[l, h, j]    = mean_{i >= j} a[l, h, i, j]                (all i when bidirectional)
- maps[l, h, b, c]     = mean_{i in bin b} sum_{j in bin c} a[l, h, i, j]
                         (bins of ``bin_width`` tokens; width 1 is the full L x L map). An
                         audit keeps the head mean only, maps[l, 0, b, c] = mean_h maps[l, h, b, c]
                         (``head_maps`` False): per-head maps are most of an analysis's bytes.
- hidden_norm[l, j]    = ||output of decoder layer l at position j||_2
- value_norm[l, j]     = mean over KV heads of ||v[l, kv, j]||_2
- learned_sink[l, h]   = mean_i s[l, h, i]: the probability a row gives to the learned sink, a
                         softmax column no token owns (gpt-oss: s = exp(sink logit - LSE_i)).
                         None for models without one. Every other statistic keeps the same,
                         un-renormalised probabilities, so a row's tokens sum to 1 - s.
- learned_sink_map[l, h, b] = mean_{i in bin b} s[l, h, i]: the heatmaps' sink column
"""

import functools
from dataclasses import dataclass, fields, replace

import numpy as np

ARRAY_FIELDS = ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm")
OPTIONAL_FIELDS = ("learned_sink", "learned_sink_map")


@dataclass(frozen=True)
class AttentionStats:
    sink_mass: np.ndarray    # [layers, heads, 8]
    entropy: np.ndarray      # [layers, heads]
    received: np.ndarray     # [layers, heads, L]
    maps: np.ndarray         # [layers, heads, B, B], or [layers, 1, B, B] the head mean (head_maps False)
    hidden_norm: np.ndarray  # [layers, L]
    value_norm: np.ndarray   # [layers, L]
    bin_width: int
    causal: bool
    windows: tuple           # per layer: sliding-window length, or None for full attention
    learned_sink: np.ndarray | None = None      # [layers, heads]
    learned_sink_map: np.ndarray | None = None  # [layers, heads, B]
    # Hybrids (attention among Mamba / linear-attention / convolution layers): the arrays hold the
    # attention layers only; ``layers`` gives each row's model layer, ``layer_kinds`` what every
    # model layer is ("attention", "mamba", ...). Both empty: row l is model layer l, all attention.
    layers: tuple = ()
    layer_kinds: tuple = ()

    def __post_init__(self):
        for name in ARRAY_FIELDS + OPTIONAL_FIELDS:
            if getattr(self, name) is not None:
                getattr(self, name).setflags(write=False)

    @property
    def n_layers(self) -> int:
        return self.sink_mass.shape[0]

    @property
    def n_heads(self) -> int:
        return self.sink_mass.shape[1]

    @property
    def layer_ids(self) -> tuple:
        """The model layer of each row."""
        return self.layers or tuple(range(self.n_layers))

    @property
    def n_tokens(self) -> int:
        return self.received.shape[-1]

    @property
    def head_maps(self) -> bool:
        """Whether ``maps`` holds every head's map (False: the head mean only, from an audit)."""
        return self.maps.shape[1] == self.n_heads

    def head_mean_maps(self) -> np.ndarray:
        """[layers, 1, B, B] the mean over heads of the maps (float64 sum, stored dtype)."""
        return self.maps.mean(axis=1, keepdims=True, dtype=np.float64).astype(self.maps.dtype)

    def without_head_maps(self) -> "AttentionStats":
        """These statistics with the head-mean maps only (an audit's row); itself if so already."""
        return self if not self.head_maps else replace(self, maps=self.head_mean_maps())

    def to_arrays(self, pack_maps: bool = False) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez`` (no pickled objects). With ``pack_maps`` (the store),
        maps whose cells above the diagonal are all exactly 0 (causal attention) keep only the
        cells on and below it, ``maps_lower`` [layers, heads, B (B + 1) / 2]: half the bytes,
        nothing lost; ``from_arrays`` unpacks them."""
        out = {name: getattr(self, name) for name in ARRAY_FIELDS + OPTIONAL_FIELDS
               if getattr(self, name) is not None}
        if pack_maps:
            lower, upper = _triangles(self.maps.shape[-1])
            cells = self.maps.reshape(*self.maps.shape[:-2], -1)                # [layers, heads, B * B]
            if not np.take(cells, upper, axis=-1).any():
                out["maps_lower"] = np.take(cells, lower, axis=-1)
                del out["maps"]
        out["bin_width"] = np.array(self.bin_width)
        out["causal"] = np.array(self.causal)
        out["windows"] = np.array([-1 if w is None else w for w in self.windows])
        out["layers"] = np.array(self.layers, dtype=np.int64)
        out["layer_kinds"] = np.array(self.layer_kinds, dtype=np.str_)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> "AttentionStats":
        names = {f.name for f in fields(cls)} - set(OPTIONAL_FIELDS) - {"layers", "layer_kinds"}
        if "maps_lower" in arrays and "maps" not in arrays:
            arrays = {**{name: arrays[name] for name in arrays.keys()}, "maps": _from_lower(arrays["maps_lower"])}
        missing = names - set(arrays.keys())  # (older results lack layers, layer_kinds: all attention)
        if missing:
            raise KeyError(f"stored statistics lack {sorted(missing)}")
        optional = {name: np.array(arrays[name]) for name in OPTIONAL_FIELDS if name in arrays}
        return cls(**{name: np.array(arrays[name]) for name in ARRAY_FIELDS}, **optional,
                   bin_width=int(arrays["bin_width"]), causal=bool(arrays["causal"]),
                   windows=tuple(None if w < 0 else int(w) for w in arrays["windows"]),
                   layers=tuple(int(i) for i in arrays.get("layers", ())),
                   layer_kinds=tuple(str(k) for k in arrays.get("layer_kinds", ())))


@functools.lru_cache(maxsize=8)
def _triangles(bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into a [bins, bins] map of the cells on and below the diagonal, and above it."""
    rows, cols = np.indices((bins, bins)).reshape(2, -1)
    return np.flatnonzero(cols <= rows), np.flatnonzero(cols > rows)


def _from_lower(lower: np.ndarray) -> np.ndarray:
    """[..., B (B + 1) / 2] cells on and below the diagonal -> [..., B, B] with zeros above."""
    bins = int((np.sqrt(8 * lower.shape[-1] + 1) - 1) / 2)
    if bins * (bins + 1) // 2 != lower.shape[-1]:
        raise ValueError(f"{lower.shape[-1]} cells are not the lower triangle of a square map")
    maps = np.zeros((*lower.shape[:-1], bins * bins), dtype=lower.dtype)
    maps[..., _triangles(bins)[0]] = lower
    return maps.reshape(*lower.shape[:-1], bins, bins)
