"""Memory guard: estimate what a capture needs beyond the loaded weights, before running it.

The estimate (bytes) for L tokens, hidden size h, MLP size m, H heads of size D, layers n:
  forward, one layer live at a time:  L (6h + 3m + 3 H D) x dtype bytes
  capture scratch per layer:          CPU block-wise: 5 x H x 128 x L x 4;  CUDA fused: 12 x H x L x 4
  statistics kept for every layer:    n (H L + H B^2 + 2 L) x 4      (B = map bins)
  eager path (output_attentions):     + (n + 1) H L^2 x dtype bytes  (every map at once, one being made)
It is a planning number (within a factor of about 2), used to refuse a run that cannot fit.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from sinkviz.errors import BadPrompt
from sinkviz.engine.reduce import bin_width

HEADROOM = 0.9  # plan to use at most this share of the free memory


@dataclass(frozen=True)
class Shape:
    layers: int
    hidden: int
    mlp: int
    heads: int
    head_dim: int
    dtype_bytes: int
    eager: bool = False  # attention maps from output_attentions, all layers at once

    @classmethod
    def of(cls, model) -> "Shape":
        from sinkviz.flow.models import config_value
        c = model.config.get_text_config()
        heads = c.num_attention_heads
        return cls(c.num_hidden_layers, c.hidden_size, config_value(c, "intermediate_size") or 4 * c.hidden_size,
                   heads, config_value(c, "head_dim") or c.hidden_size // heads, model.dtype.itemsize,
                   model.config._attn_implementation == "eager")


def estimate_bytes(shape: Shape, n_tokens: int, map_size: int, device_type: str) -> int:
    return forward_bytes(shape, n_tokens, device_type) + kept_bytes(shape, n_tokens, map_size)


def forward_bytes(shape: Shape, n_tokens: int, device_type: str) -> int:
    """The forward with one layer live, plus one layer's capture scratch, for L tokens."""
    L, s = n_tokens, shape
    forward = L * (6 * s.hidden + 3 * s.mlp + 3 * s.heads * s.head_dim) * s.dtype_bytes
    eager = (s.layers + 1) * s.heads * L * L * s.dtype_bytes if s.eager else 0
    return forward + eager + ((12 * s.heads * L * 4) if device_type == "cuda" else (5 * s.heads * 128 * L * 4))


def kept_bytes(shape: Shape, n_tokens: int, map_size: int) -> int:
    """The statistics kept for every layer of an L-token prompt."""
    L, s = n_tokens, shape
    bins = -(-L // bin_width(L, map_size))
    return s.layers * (s.heads * L + s.heads * bins * bins + 2 * L) * 4


def free_bytes(device: torch.device) -> int | None:
    """Free memory on the device (CUDA: driver's count; CPU: MemAvailable), or None if unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        meminfo = Path("/proc/meminfo")
        if meminfo.exists():
            for line in meminfo.read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def longest_fitting(shape: Shape, budget: int, map_size: int, device_type: str) -> int:
    """The largest L whose estimate stays within budget (0 if none)."""
    lo, hi = 0, 1 << 24
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if estimate_bytes(shape, mid, map_size, device_type) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def fits_together(model, lengths: list[int], map_size: int) -> bool:
    """Whether one padded batch of these prompt lengths fits: the forward of count x longest
    tokens, one prompt's capture scratch at a time, and every prompt's kept statistics."""
    free = free_bytes(model.device)
    if free is None:
        return True
    shape = Shape.of(model)
    need = forward_bytes(shape, max(lengths) * len(lengths), model.device.type) + \
        sum(kept_bytes(shape, n, map_size) for n in lengths)
    return need <= free * HEADROOM


def check_fits(model, n_tokens: int, map_size: int) -> None:
    """Raise BadPrompt, naming the longest length that fits, if the capture would not fit."""
    device = model.device
    free = free_bytes(device)
    if free is None:
        return
    shape, budget = Shape.of(model), int(free * HEADROOM)
    need = estimate_bytes(shape, n_tokens, map_size, device.type)
    if need > budget:
        fit = longest_fitting(shape, budget, map_size, device.type)
        raise BadPrompt(f"a {n_tokens:,}-token prompt needs about {need / 2**30:.1f} GiB on {device.type}, "
                        f"but {free / 2**30:.1f} GiB is free; the longest that fits is about {fit:,} tokens")
