"""Short prompts on a GPU: every layer's statistics in one sweep after the forward pass.

A short forward pass is bound by the host: each torch call costs tens of microseconds, and
the per-layer statistics (fused.layer_statistics and its finishing) add ~60 of them to a layer
whose attention is one. Here each layer only keeps its queries, keys and log-sum-exp (which
the attention kernel returns anyway) and two norms; after the forward, ``fused.statistics_many``
computes every layer of every prompt of the batch with one kernel launch per bin-width class
and one finishing pass, and the host gets one copy per statistic. The kernel and the divisions
are the per-layer path's, so the numbers are the same. It holds the queries and keys of every
layer until then, so it runs only where that fits (``fits``); any layer it cannot take raises
``Undeferrable`` and the capture runs the per-layer path instead.
"""

import os

import numpy as np
import torch

from sinkviz.engine import fused, invariants
from sinkviz.engine.masks import is_causal, padded_batch_mask_ok, row_norms
from sinkviz.engine.reduce import bin_width

MAX_SHARE_OF_FREE = 0.25   # the kept queries and keys may use at most this share of free GPU memory


class Undeferrable(Exception):
    """A layer this path does not compute exactly as the per-layer path would."""


def fits(model, input_ids: torch.Tensor) -> bool:
    """True where this path may run: one GPU, Triton, the fused path on, and every layer's queries
    and keys (estimated from the config) within MAX_SHARE_OF_FREE of the free GPU memory."""
    if not (input_ids.is_cuda and fused.triton is not None and os.environ.get("SINKVIZ_FUSED", "1") != "0"):
        return False
    if len({str(d) for d in (getattr(model, "hf_device_map", None) or {}).values()}) > 1:
        return False   # layers on several GPUs: statistics_many addresses one device
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    per_token = config.num_hidden_layers * (heads + kv_heads) * dim * model.dtype.itemsize
    free, _ = torch.cuda.mem_get_info(input_ids.device)
    return input_ids.numel() * per_token <= MAX_SHARE_OF_FREE * free


class DeferredRecorder:
    """Attention for a right-padded causal batch (B >= 1) that keeps what the statistics need."""

    def __init__(self, lengths: list[int], map_size: int, tokens: int, head_maps: bool = True):
        self.lengths, self.map_size, self.head_maps = lengths, map_size, head_maps
        self.tokens = tokens                                   # the padded length (capture.over_prompt)
        self.n_recorded = 0
        self.queries, self.keys, self.lses = [], [], []      # per layer: [B, heads, L, D], [B, kv, L, D], [B, heads, L]
        self.value_norms, self.hidden_norms = [], []         # per layer: [B, L]
        self.windows: list[int | None] = []
        self.masks_checked: list[torch.Tensor] = []
        self.scaling: float | None = None

    def attend(self, module, query, key, value, attention_mask, kwargs) -> torch.Tensor:
        """SDPA's causal attention, output [B, L, heads, D], through the op that also gives the lse."""
        window = kwargs.get("sliding_window")
        if window is not None and window < max(self.lengths):
            raise Undeferrable("a sliding window shorter than the prompt")
        if not is_causal(module, kwargs) or kwargs.get("position_bias") is not None or kwargs.get(
                "indices") is not None or kwargs.get("dropout"):   # the caller rules out Softmax variants
            raise Undeferrable(f"{type(module).__name__} is not plain causal attention")
        if key.shape[2] != query.shape[2] or min(self.lengths) < fused.MAX_FIRST_N:
            raise Undeferrable("keys other than the prompt's, or a prompt shorter than 8 tokens")
        self._check(attention_mask, window)
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        if self.scaling not in (None, scaling):
            raise Undeferrable("layers with different score scales")
        self.scaling = scaling
        got = fused.attention_with_lse(query, key, value, scaling)
        if got is None or not fused.same_layout([*self.queries[:1], query]) or not fused.same_layout([*self.keys[:1], key]):
            raise Undeferrable("no fused attention kernel with its log-sum-exp, or layers of different shapes")
        self.queries.append(query)
        self.keys.append(key)
        self.lses.append(got[1])
        self.value_norms.append(row_norms(value).mean(1))                  # [B, L]
        self.windows.append(window)
        self.n_recorded += 1
        return got[0]

    def _check(self, attention_mask, window) -> None:
        """With B = 1, no mask (the fused path's rule); in a batch, each prompt's own causal mask."""
        if attention_mask is None or any(m is attention_mask for m in self.masks_checked):
            return
        if len(self.lengths) == 1 or not padded_batch_mask_ok(attention_mask, self.lengths, True, window):
            raise Undeferrable("a mask other than each prompt's causal mask")
        self.masks_checked.append(attention_mask)

    def keep_hidden(self, _index, output) -> None:
        """A layer hook: the hidden-state norms of an attention layer, [B, L]."""
        hidden = output[0] if isinstance(output, (tuple, list)) else output   # [B, L, d]
        self.hidden_norms.append(row_norms(hidden))

    def result(self) -> list[tuple[dict[str, np.ndarray], bool]]:
        """Each prompt's statistics as host arrays [layers, ...], cut to its own tokens and bins
        (one copy to the host per statistic), with True where the GPU's screen of the invariants
        flags it (``invariants.screen_batch``: then the host checks it in full); lets go of the
        kept queries and keys."""
        if not self.queries:
            raise Undeferrable("no attention layer ran")
        device = self.queries[0].device
        stats = fused.statistics_many(self.queries, self.keys, self.lses, self.lengths, self.scaling, self.map_size)
        self.queries, self.keys, self.lses = [], [], []
        stats |= {"value_norm": torch.stack(self.value_norms), "hidden_norm": torch.stack(self.hidden_norms)}
        widths = [bin_width(n, self.map_size) for n in self.lengths]
        stats["flagged"] = invariants.screen_batch(stats, *(torch.tensor(v, device=device) for v in (self.lengths, widths)))
        every_head = stats["maps"]                                              # [layers, B, heads, bins, bins]
        if not self.head_maps:                                # an audit's rows: the head mean crosses to the host
            stats["maps"] = every_head.sum(2, keepdim=True, dtype=torch.float64).div_(every_head.shape[2]).float()
        host = _to_host(stats, device)                                          # [layers, B, ...]
        flagged = host.pop("flagged")                                           # [B]
        if flagged.any() and not self.head_maps:              # the host check names the head: give it every one
            host["maps"] = _to_host({"maps": every_head}, device)["maps"]
        out = []
        for b, (n, width) in enumerate(zip(self.lengths, widths)):
            bins = -(-n // width)
            cut = {"received": (slice(None), slice(None, n)), "maps": (slice(None), slice(None, bins), slice(None, bins)),
                   "value_norm": (slice(None, n),), "hidden_norm": (slice(None, n),)}
            # a copy where prompt b is a strided part of the batch; the buffer itself for a batch of one
            out.append(({name: np.ascontiguousarray(array[(slice(None), b, *cut.get(name, ()))])
                         for name, array in host.items()}, bool(flagged[b])))
        return out


def _to_host(stats: dict[str, torch.Tensor], device: torch.device) -> dict[str, np.ndarray]:
    """One copy to the host per tensor, page-locked on CUDA (15x pageable's speed), then waited for."""
    cuda = device.type == "cuda"
    host = {name: torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=cuda).copy_(tensor, non_blocking=cuda)
            for name, tensor in stats.items()}
    if cuda:
        torch.cuda.current_stream(device).synchronize()
    return {name: tensor.numpy() for name, tensor in host.items()}
