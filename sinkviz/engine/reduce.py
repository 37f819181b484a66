"""Reduce one layer's attention probabilities to statistics, one query block at a time.

Nothing here ever holds more than one block ``[heads, block, keys]`` of probabilities.
All sums are over query positions; ``finish`` turns them into means (see ``stats.py``).
"""

import math

import torch

MAX_FIRST_N = 8  # sink mass is kept for the first N = 1..8 keys


TILE = 64  # bins wider than this are whole multiples of it, so GPU tiles never straddle two bins


def bin_width(n_tokens: int, map_size: int) -> int:
    """Tokens per map bin: 1 (the full L x L map) while L <= map_size; else ceil(L / map_size)
    rounded up to a power of two, or to a multiple of TILE above TILE. Never more than
    map_size bins."""
    width = math.ceil(n_tokens / map_size)
    if width <= 1:
        return 1
    if width <= TILE:
        return 1 << (width - 1).bit_length()
    return math.ceil(width / TILE) * TILE


def row_entropy(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Each row's entropy in nats, H = sum_j p_j (M - x_j) - ln p_max, M the row's largest logit:
    -sum_j p_j ln p_j with ln p_j = x_j - M + ln p_max (the softmax's own normalisation), so no
    log per element, and every term >= 0 (no cancellation). logits [..., keys] (masked keys -inf)
    are overwritten; probs = softmax(logits) [..., keys] -> [...]."""
    top = logits.amax(-1, keepdim=True)
    gap = torch.sub(top, logits, out=logits).nan_to_num_(posinf=0.0)   # M - x >= 0; masked keys (p = 0): 0
    return torch.linalg.vecdot(probs, gap) - torch.log(probs.amax(-1))


class LayerReducer:
    """Running sums of one layer's statistics; ``add`` each query block, then ``finish``."""

    def __init__(self, heads: int, n_keys: int, map_size: int, *, causal: bool,
                 device: torch.device, dtype: torch.dtype, learned_sink: bool = False):
        self.n_keys, self.causal = n_keys, causal
        self.width = bin_width(n_keys, map_size)
        self.n_bins = math.ceil(n_keys / self.width)
        zeros = lambda *shape: torch.zeros(*shape, device=device, dtype=dtype)  # noqa: E731
        self.sink_sum = zeros(heads, MAX_FIRST_N)          # [heads, N]
        self.entropy_sum = zeros(heads)                    # [heads]
        self.column_sum = zeros(heads, n_keys)             # [heads, keys]
        self.map_sum = zeros(heads, self.n_bins, self.n_bins)  # [heads, q bins, k bins]
        self.learned_sink_sum = zeros(heads) if learned_sink else None          # [heads]
        self.learned_sink_map_sum = zeros(heads, self.n_bins) if learned_sink else None  # [heads, q bins]

    def add(self, probs: torch.Tensor, q_start: int, sink: torch.Tensor | None = None,
            entropy: torch.Tensor | None = None) -> None:
        """probs: [heads, block, keys] for the first ``keys`` <= n_keys keys (the later ones get
        nothing from this block), rows sum to 1 - sink (sink [heads, block]: the learned-sink
        column, where the model has one); query positions q_start .. q_start+block-1. entropy
        [heads, block]: each row's, the sink column included, where the caller has it (row_entropy);
        else -sum p ln p here."""
        heads, block, keys = probs.shape
        q_pos = torch.arange(q_start, q_start + block, device=probs.device)  # [block]
        # sink mass: sum_{j<N} a[i, j] for queries i >= N, for every N = 1..8
        first = probs[..., :MAX_FIRST_N].cumsum(-1)                          # [heads, block, <=8]
        if first.shape[-1] < MAX_FIRST_N:
            pad = first[..., -1:].expand(heads, block, MAX_FIRST_N - first.shape[-1])
            first = torch.cat([first, pad], dim=-1)
        n_idx = torch.arange(1, MAX_FIRST_N + 1, device=probs.device)
        valid = (q_pos[:, None] >= n_idx[None, :]).to(probs.dtype)           # [block, N]
        self.sink_sum += (first * valid).sum(1)
        # entropy of each row, in nats (0 log 0 = 0)
        if entropy is None:
            entropy = -torch.special.xlogy(probs, probs).sum(-1)
            if sink is not None:   # the learned sink is a column of the softmax: in the entropy too
                entropy = entropy - torch.special.xlogy(sink, sink)
        self.entropy_sum += entropy.sum(-1)
        # received attention: column sums
        self.column_sum[:, :keys] += probs.sum(1)
        # pooled map: sum over key bins (whole ones as a view, then the partial last), then add
        # rows into their query bin
        whole = keys // self.width
        by_key_bin = probs[..., :whole * self.width].unflatten(-1, (whole, self.width)).sum(-1)  # [heads, block, whole]
        if keys > whole * self.width:
            by_key_bin = torch.cat([by_key_bin, probs[..., whole * self.width:].sum(-1, keepdim=True)], -1)
        self.map_sum[:, :, :by_key_bin.shape[-1]].index_add_(1, q_pos // self.width, by_key_bin)
        if sink is not None:
            self.learned_sink_sum += sink.sum(-1)
            self.learned_sink_map_sum.index_add_(1, q_pos // self.width, sink)

    def finish(self) -> dict[str, torch.Tensor]:
        return finish_sums(self.sink_sum, self.entropy_sum, self.column_sum, self.map_sum,
                           causal=self.causal, width=self.width, learned_sink_sum=self.learned_sink_sum,
                           learned_sink_map_sum=self.learned_sink_map_sum)


def finish_sums(sink_sum, entropy_sum, column_sum, map_sum, *, causal: bool, width: int,
                learned_sink_sum=None, learned_sink_map_sum=None) -> dict:
    """Sums over queries -> means: sink mass over queries i >= N, entropy and learned sink over
    all queries, received over i >= j (all i when bidirectional), map rows (and the learned
    sink's map column) over the queries of their bin. sink_sum [heads, 8], entropy_sum [heads],
    column_sum [heads, L], map_sum [heads, bins, bins]; learned_sink_sum [heads] and
    learned_sink_map_sum [heads, bins] where the model has a learned sink."""
    n = column_sum.shape[-1]
    n_idx = torch.arange(1, MAX_FIRST_N + 1, device=sink_sum.device)
    n_queries = (n - n_idx).to(sink_sum.dtype)                                # queries i >= N
    sink_mass = torch.where(n_queries > 0, sink_sum / n_queries.clamp(min=1), math.nan)
    j = torch.arange(n, device=column_sum.device)
    seen_by = (n - j) if causal else torch.full_like(j, n)                    # queries that see j
    bin_start = torch.arange(map_sum.shape[-1], device=map_sum.device) * width
    bin_rows = (n - bin_start).clamp(max=width).to(map_sum.dtype)            # queries per bin (no sync)
    out = {
        "sink_mass": sink_mass,                                    # [heads, N]
        "entropy": entropy_sum / n,                                # [heads]
        "received": column_sum / seen_by.to(column_sum.dtype),     # [heads, keys]
        "maps": map_sum / bin_rows[None, :, None],                 # [heads, bins, bins]
    }
    if learned_sink_sum is not None:
        out["learned_sink"] = learned_sink_sum / n                          # [heads]
        out["learned_sink_map"] = learned_sink_map_sum / bin_rows[None, :]  # [heads, bins]
    return out
