"""Fused GPU statistics (Triton): one layer's attention statistics without L x L tensors.

Pass 1 computes each query row's log-sum-exp (base 2) with an online softmax. Pass 2
recomputes the scores tile by tile, p = 2^(s - lse), and accumulates in the same sweep:
- the first 8 columns of every row        FIRST [heads, L, 8]   (sink mass for N = 1..8)
- column sums                              COLS  [heads, L]      (received attention)
- sum_ij p s per head, so that the entropy summed over rows is ln2 (sum_i lse_i - sum_ij p s)
- the pooled map                           MAP   [heads, bins, bins]
Pass 2 runs one program per key block, so column sums need no atomics.
``finish_sums`` then turns the sums into the same means as the CPU path (reduce.py).
Used for causal prefill on CUDA with no explicit mask; everything else takes reduce.py
(SINKVIZ_FUSED=0 forces that path, for comparison).
"""

import math
import os

import torch

from .reduce import MAX_FIRST_N, bin_width, finish_sums

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the fused path is simply unavailable
    triton = None

# Tile shape and launch settings; BLOCK_M and BLOCK_N are powers of two, so with bin widths
# that are powers of two or multiples of TILE (reduce.bin_width), gcd(width, block) tokens of a
# tile always share one bin.
CONFIG = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
NO_WINDOW = 1 << 30
LOG2E = 1.0 / math.log(2.0)


def usable(query, key, attention_mask, *, causal: bool, bias, map_size: int) -> bool:
    """True where the fused kernels compute exactly what reduce.py would."""
    n_q, dim = query.shape[-2:]
    return (triton is not None and os.environ.get("SINKVIZ_FUSED", "1") != "0" and query.is_cuda and query.shape[0] == 1
            and attention_mask is None and causal and bias is None
            and n_q == key.shape[-2] and dim in (16, 32, 64, 128, 256)
            and query.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and bin_width(n_q, map_size) > 1)


if triton is not None:

    @triton.jit
    def _visible(rows, cols, L, WINDOW):
        """[rows, cols] True where query row sees key col: causal, inside the window, in range."""
        return (cols[None, :] <= rows[:, None]) & (rows[:, None] < L) & (rows[:, None] - cols[None, :] < WINDOW)

    @triton.jit
    def _scores(q, K, kv_head, skh, skn, start, rows, L, WINDOW, scale_log2,
                BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        """Scores of one tile in log2 units, -inf where causality or the window hides the key."""
        cols = start + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        k = tl.load(K + kv_head * skh + cols[:, None] * skn + dims[None, :], mask=cols[:, None] < L, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
        return tl.where(_visible(rows, cols, L, WINDOW), s, float("-inf"))

    @triton.jit
    def _row_lse(Q, K, LSE, sqh, sqm, skh, skn, L, GROUPS, WINDOW, scale_log2,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        head = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        q = tl.load(Q + head * sqh + rows[:, None] * sqm + dims[None, :], mask=rows[:, None] < L, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        lo = tl.maximum(0, pid_m * BLOCK_M - WINDOW + 1) // BLOCK_N * BLOCK_N
        hi = tl.minimum((pid_m + 1) * BLOCK_M, L)
        for start in range(lo, hi, BLOCK_N):
            s = _scores(q, K, head // GROUPS, skh, skn, start, rows, L, WINDOW, scale_log2, BLOCK_N, D, PREC)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp2(m_i - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
            m_i = m_new
        tl.store(LSE + head * L + rows, m_i + tl.log2(l_i), mask=rows < L)

    @triton.jit
    def _stats(Q, K, LSE, FIRST, COLS, PS, MAP, sqh, sqm, skh, skn, L, GROUPS, WINDOW, scale_log2,
               WIDTH, BINS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               PREC: tl.constexpr, RW: tl.constexpr, CW: tl.constexpr, NFIRST: tl.constexpr):
        """One program per (key block, head), sweeping the query blocks that can see it: column
        sums stay in registers; sum p*s over the sweep is one atomic per program."""
        pid_n = tl.program_id(0)
        head = tl.program_id(1)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        k = tl.load(K + (head // GROUPS) * skh + cols[:, None] * skn + dims[None, :],
                    mask=cols[:, None] < L, other=0.0)
        col_sum = tl.zeros([BLOCK_N], tl.float32)
        p_dot_s = tl.zeros([BLOCK_M], tl.float32)
        col_bins = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N // CW) * CW) // WIDTH
        lo = pid_n * BLOCK_N // BLOCK_M * BLOCK_M
        hi = tl.minimum(L, pid_n * BLOCK_N + BLOCK_N + WINDOW - 1)
        for start in range(lo, hi, BLOCK_M):
            rows = start + tl.arange(0, BLOCK_M)
            q = tl.load(Q + head * sqh + rows[:, None] * sqm + dims[None, :], mask=rows[:, None] < L, other=0.0)
            lse = tl.load(LSE + head * L + rows, mask=rows < L, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale_log2
            ok = _visible(rows, cols, L, WINDOW)
            p = tl.where(ok, tl.exp2(s - lse[:, None]), 0.0)
            p_dot_s += tl.sum(tl.where(ok, p * s, 0.0), 1)
            col_sum += tl.sum(p, 0)
            if pid_n == 0:
                tl.store(FIRST + (head * L + rows[:, None]) * NFIRST + cols[None, :], p,
                         mask=(rows[:, None] < L) & (cols[None, :] < NFIRST))
            pooled = tl.sum(tl.sum(tl.reshape(p, [BLOCK_M // RW, RW, BLOCK_N // CW, CW]), 3), 1)
            row_bins = (start + tl.arange(0, BLOCK_M // RW) * RW) // WIDTH
            tl.atomic_add(MAP + head * BINS * BINS + row_bins[:, None] * BINS + col_bins[None, :], pooled,
                          mask=(row_bins[:, None] < BINS) & (col_bins[None, :] < BINS))
        tl.store(COLS + head * L + cols, col_sum, mask=cols < L)
        tl.atomic_add(PS + head, tl.sum(p_dot_s, 0).to(tl.float64))


def layer_statistics(query: torch.Tensor, key: torch.Tensor, scaling: float, window: int | None,
                     map_size: int) -> dict[str, torch.Tensor]:
    """query [1, heads, L, D], key [1, kv_heads, L, D] -> the dict of reduce.finish_sums."""
    q, k = query[0], key[0]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    heads, n, dim = q.shape
    width = bin_width(n, map_size)
    bins = -(-n // width)
    f32 = dict(device=q.device, dtype=torch.float32)
    lse, cols = torch.empty(heads, n, **f32), torch.empty(heads, n, **f32)
    first = torch.zeros(heads, n, MAX_FIRST_N, **f32)
    p_dot_s = torch.zeros(heads, device=q.device, dtype=torch.float64)
    maps = torch.zeros(heads, bins, bins, **f32)
    block_m, block_n = CONFIG["BLOCK_M"], CONFIG["BLOCK_N"]
    common = dict(sqh=q.stride(0), sqm=q.stride(1), skh=k.stride(0), skn=k.stride(1), L=n,
                  GROUPS=heads // k.shape[0], WINDOW=window or NO_WINDOW, scale_log2=scaling * LOG2E,
                  BLOCK_M=block_m, BLOCK_N=block_n, D=dim,
                  PREC="ieee" if q.dtype == torch.float32 else "tf32",
                  num_warps=CONFIG["num_warps"], num_stages=CONFIG["num_stages"])
    _row_lse[(triton.cdiv(n, block_m), heads)](q, k, lse, **common)
    _stats[(triton.cdiv(n, block_n), heads)](
        q, k, lse, first, cols, p_dot_s, maps, **common, WIDTH=width, BINS=bins,
        RW=math.gcd(width, block_m), CW=math.gcd(width, block_n), NFIRST=MAX_FIRST_N)
    positions = torch.arange(n, device=q.device)
    valid = (positions[:, None] >= torch.arange(1, MAX_FIRST_N + 1, device=q.device)[None, :])
    sink_sum = (first.cumsum(-1) * valid).sum(1)                                # [heads, 8]
    entropy_sum = (math.log(2.0) * (lse.double().sum(-1) - p_dot_s)).float()  # sum_i -sum_j p ln p, nats
    return finish_sums(sink_sum, entropy_sum, cols, maps, causal=True, width=width)
