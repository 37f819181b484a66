"""What a layer's attention may see: causality as applied, masks as booleans, and the check
that a padded batch's mask is each prompt's own; plus row norms (hidden states, values)."""

import torch


def is_causal(module, kwargs: dict) -> bool:
    """The layer's causality: the call's ``is_causal``, else the module's (default causal)."""
    causal = kwargs.get("is_causal")
    return getattr(module, "is_causal", True) if causal is None else bool(causal)


def visible(mask: torch.Tensor) -> torch.Tensor:
    """A mask as booleans, True where the key is seen (bool masks as they are; additive float
    masks block at <= -1e4)."""
    return mask if mask.dtype == torch.bool else mask > -1e4


def mask_hides_future(attention_mask, n_q: int, n_k: int, rows: int = 1024) -> bool:
    """True when the mask [1, 1 or heads, Lq or 1, Lk] blocks every key j > i + (Lk - Lq) from
    query i (bool: False blocks; float: <= -1e4 blocks), checked ``rows`` queries at a time."""
    mask = attention_mask[0].expand(attention_mask.shape[1], n_q, n_k)
    for start in range(0, n_q, rows):
        block = mask[:, start:start + rows]
        allowed = visible(block)
        q_pos = torch.arange(start, start + block.shape[1], device=block.device)[:, None] + n_k - n_q
        future = torch.arange(n_k, device=block.device)[None, :] > q_pos
        if bool((allowed & future).any()):
            return False
    return True


def shows_causal_window(attention_mask, n: int, window: int | None, rows: int = 1024) -> bool:
    """True when the mask [1, 1 or heads, L or 1, L] shows query i exactly the keys
    i - window < j <= i (all j <= i without a window): nothing else hidden, nothing later shown,
    and an additive mask adds exactly 0 where it shows (a bias in the mask is not the rule).
    Checked ``rows`` queries at a time (one host sync each)."""
    mask = attention_mask[0].expand(attention_mask.shape[1], n, n)
    j = torch.arange(n, device=mask.device)[None, :]
    for start in range(0, n, rows):
        i = torch.arange(start, min(start + rows, n), device=mask.device)[:, None]
        rule = (j <= i) & (i - j < (window or n))                                  # [rows, L]
        block = mask[:, start:start + rows]
        same = visible(block) == rule
        if block.dtype != torch.bool:
            same &= (block == 0) | ~rule
        if not bool(same.all()):
            return False
    return True


def row_norms(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last dim, accumulated in float32 (float64 for float64), without an
    upcast copy of x: [..., d] -> [...]."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def padded_batch_mask_ok(attention_mask, lengths: list[int], causal: bool, window: int | None) -> bool:
    """True when each prompt b's rows of the mask [B, 1 or heads, L, L] show exactly its own
    first lengths[b] tokens, causally (within ``window``) or all of them (one host sync)."""
    allowed = visible(attention_mask)
    length = allowed.shape[-1]
    i = torch.arange(length, device=allowed.device)[:, None]
    j = torch.arange(length, device=allowed.device)[None, :]
    rule = ((j <= i) & (i - j < (window or length))) if causal else torch.ones_like(i == j)
    same = [(allowed[b, :, :n] == (rule[:n] & (j < n))).all() for b, n in enumerate(lengths)]
    return bool(torch.stack(same).all())
