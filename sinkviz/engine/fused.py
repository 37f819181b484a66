"""Fused GPU statistics (Triton): one layer's attention statistics without L x L tensors.

Each query row's log-sum-exp comes from the forward's own attention: ``attention_with_lse``
calls the kernel SDPA picks (flash, cuDNN or memory-efficient attention) through the op that
also returns it, with the same output bit for bit. Where no such kernel runs (a sliding
window, or GQA on memory-efficient attention) ``_row_lse`` computes it with an online softmax.
Then the scores are recomputed tile by tile, t = s - lse = log2 p and p = 2^t (-lse enters
each tile's accumulator through a second small dot: ``_neg_lse_parts``), into:
- column sums                                                  COLS [heads, L] (received attention,
  and with an 8 x 8 corner of P the sink sums: ``_sink_sums``)
- sum_ij p t per head: the entropy summed over rows is -ln2 sum_ij p t   PT [heads]
- the pooled map                                               MAP  [heads, bins, bins]
The sweep runs one program per key block, so column sums need no atomics.
``finish_sums`` then turns the sums into the same means as the CPU path (reduce.py).
Used for causal prefill on CUDA with no explicit mask; everything else takes reduce.py
(SINKVIZ_FUSED=0 forces that path, for comparison).
"""

import contextlib
import math
import os

import torch
from torch.nn.attention import SDPBackend

from sinkviz.engine.reduce import MAX_FIRST_N, bin_width, finish_sums

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the fused path is simply unavailable
    triton = None

# Tile shapes and launch settings by bytes per head row, the fastest measured on an H100
# (bench/kernel_tune.py): 128-key blocks halve the query traffic through L2 for 128-dim 16-bit
# heads, and maxnreg=128 keeps two 8-warp blocks per SM (154 registers unbounded: one block,
# 30 % slower); wider rows keep 64 keys to fit shared memory. BLOCK_M and BLOCK_N are powers of two,
# so with bin widths that are powers of two or multiples of TILE (reduce.bin_width),
# gcd(width, block) tokens of a tile always share one bin. OVERRIDE (for benchmarks) wins.
LAUNCH = {128: dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
          256: dict(BLOCK_M=64, BLOCK_N=128, num_warps=8, num_stages=3, maxnreg=128)}
WIDE_ROWS = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
OVERRIDE: dict = {}
NO_WINDOW = 1 << 30
LOG2E = 1.0 / math.log(2.0)
LSE_PARTS = 3  # lse in score units as a sum of 3 numbers of the queries' dtype: ~24 bits of it


def usable(query, key, attention_mask, *, causal: bool, bias, map_size: int) -> bool:
    """True where the fused kernels compute exactly what reduce.py would."""
    n_q, dim = query.shape[-2:]
    return (triton is not None and os.environ.get("SINKVIZ_FUSED", "1") != "0" and query.is_cuda and query.shape[0] == 1
            and attention_mask is None and causal and bias is None
            and n_q == key.shape[-2] >= MAX_FIRST_N and dim in (16, 32, 64, 128, 256)
            and query.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and bin_width(n_q, map_size) > 1)


if triton is not None:

    @triton.jit
    def _visible(rows, cols, L, WINDOW):
        """[rows, cols] True where query row sees key col: causal, inside the window, in range."""
        return (cols[None, :] <= rows[:, None]) & (rows[:, None] < L) & (rows[:, None] - cols[None, :] < WINDOW)

    @triton.jit
    def _query_block(Qh, sqm, start, L, BLOCK_M: tl.constexpr, D: tl.constexpr):
        """(rows, q [BLOCK_M, D]) of the head's query block that starts at ``start``; zeros past L."""
        rows = start + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        return rows, tl.load(Qh + rows[:, None] * sqm + dims[None, :], mask=rows[:, None] < L, other=0.0)

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
    def _row_lse(Q, K, LSE, sqh, sqm, skh, skn, sl, L, GROUPS, WINDOW, scale_log2,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        head = tl.program_id(1)
        rows, q = _query_block(Q + head * sqh, sqm, pid_m * BLOCK_M, L, BLOCK_M, D)
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
        tl.store(LSE + head * sl + rows, m_i + tl.log2(l_i), mask=rows < L)

    @triton.jit
    def _log2_probs_t(Qh, neg_lse, k, ones, sqm, start, key0, L, WINDOW, scale_log2, MASK: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr):
        """(p, t = log2 p) of one tile transposed, [keys, queries]. The rows' -lse (score units,
        in parts: neg_lse [BLOCK_M, 16]) enters the accumulator through a dot with ``ones``
        [BLOCK_N, 16], so it is loaded like q, through the pipeline, not as 16 scalars per thread.
        Rows past L have a huge lse, so p = 0 there without a mask; MASK applies causality and
        the window."""
        rows, q = _query_block(Qh, sqm, start, L, BLOCK_M, D)
        t = tl.dot(k, tl.trans(q), tl.dot(ones, tl.trans(neg_lse), input_precision=PREC),
                   input_precision=PREC) * scale_log2                   # (k.q - lse / scale) * scale log2 e
        if MASK:
            keys = key0 + tl.arange(0, BLOCK_N)
            ok = (keys[:, None] <= rows[None, :]) & (rows[None, :] - keys[:, None] < WINDOW)
            t = tl.where(ok, t, -1.0e30)                                # p = 0, p*t = 0
        return tl.exp2(t), t

    @triton.jit
    def _pool_tile(p, MAPh, start, key0, WIDTH, BINS, BINS_STRIDE, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   RW: tl.constexpr, CW: tl.constexpr):
        """Add one tile [keys, queries] to the head's pooled map (rows BINS_STRIDE apart), in bins
        of RW x CW within the tile."""
        pooled = tl.sum(tl.sum(tl.reshape(p, [BLOCK_N // CW, CW, BLOCK_M // RW, RW]), 3), 1)
        row_bins = (start + tl.arange(0, BLOCK_M // RW) * RW) // WIDTH
        col_bins = (key0 + tl.arange(0, BLOCK_N // CW) * CW) // WIDTH
        tl.atomic_add(MAPh + row_bins[None, :] * BINS_STRIDE + col_bins[:, None], pooled,
                      mask=(row_bins[None, :] < BINS) & (col_bins[:, None] < BINS), sem="relaxed")

    @triton.jit
    def _sweep(Qh, Kh, NEGh, COLSh, PTh, MAPh, sqm, skn, L, WINDOW, scale_log2, WIDTH, BINS, BINS_STRIDE, key0,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
               RW: tl.constexpr, CW: tl.constexpr, BIN_LOOP: tl.constexpr, HAS_WINDOW: tl.constexpr,
               PARTS: tl.constexpr):
        """One key block of one head (base pointers Qh, Kh, NEGh [rows, 16], COLSh [L], PTh, MAPh),
        sweeping the query blocks that see it, with tiles transposed ([keys, queries]) so that key
        sums reduce within a warp. Tiles on the diagonal are masked and pooled tile by tile; after
        them, with BIN_LOOP (bins a multiple of both blocks) each pooled cell is added with one
        atomic once its bin is complete, else tile by tile. Only a window needs masks past the
        diagonal. A block at or past L does nothing."""
        keys = key0 + tl.arange(0, BLOCK_N)
        dims = tl.arange(0, D)
        k = tl.load(Kh + keys[:, None] * skn + dims[None, :], mask=keys[:, None] < L, other=0.0)
        key_sum = tl.zeros([BLOCK_N], tl.float32)
        p_log2_p = tl.zeros([BLOCK_N], tl.float32)
        lo = key0 // BLOCK_M * BLOCK_M
        hi = tl.minimum(L, key0 + BLOCK_N + WINDOW - 1)
        full = tl.minimum(hi, tl.cdiv(key0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M)  # first row that sees every key
        parts = tl.arange(0, 16)
        ones = (tl.where(parts[None, :] < PARTS, 1.0, 0.0) + tl.zeros([BLOCK_N, 16], tl.float32)).to(k.dtype)
        lse_rows = NEGh + tl.arange(0, BLOCK_M)[:, None] * 16 + parts[None, :]  # padded: no mask
        for start in range(lo, full, BLOCK_M):
            p, t = _log2_probs_t(Qh, tl.load(lse_rows + start * 16), k, ones, sqm, start, key0, L, WINDOW,
                                 scale_log2, True, BLOCK_M, BLOCK_N, D, PREC)
            _pool_tile(p, MAPh, start, key0, WIDTH, BINS, BINS_STRIDE, BLOCK_M, BLOCK_N, RW, CW)
            key_sum += tl.sum(p, 1)
            p_log2_p += tl.sum(p * t, 1)
        col_bin = key0 // WIDTH
        row_bin = full // WIDTH
        bin_end = tl.minimum((row_bin + 1) * WIDTH, hi)
        in_bin = tl.zeros([BLOCK_N], tl.float32)
        for start in range(full, hi, BLOCK_M):
            p, t = _log2_probs_t(Qh, tl.load(lse_rows + start * 16), k, ones, sqm, start, key0, L, WINDOW,
                                 scale_log2, HAS_WINDOW, BLOCK_M, BLOCK_N, D, PREC)
            p_log2_p += tl.sum(p * t, 1)
            in_bin += tl.sum(p, 1)
            if BIN_LOOP:
                if start + BLOCK_M >= bin_end:                                  # the bin is complete
                    tl.atomic_add(MAPh + row_bin * BINS_STRIDE + col_bin, tl.sum(in_bin, 0), sem="relaxed")
                    key_sum += in_bin
                    in_bin = tl.zeros([BLOCK_N], tl.float32)
                    row_bin += 1
                    bin_end = tl.minimum(bin_end + WIDTH, hi)
            else:
                _pool_tile(p, MAPh, start, key0, WIDTH, BINS, BINS_STRIDE, BLOCK_M, BLOCK_N, RW, CW)
        key_sum += in_bin
        tl.store(COLSh + keys, key_sum, mask=keys < L)
        tl.atomic_add(PTh, tl.sum(p_log2_p, 0).to(tl.float64), sem="relaxed")

    @triton.jit
    def _stats(Q, K, NEG_LSE, COLS, PT, MAP, sqh, sqm, skh, skn, sl, L, GROUPS, WINDOW, scale_log2,
               WIDTH, BINS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
               PREC: tl.constexpr, RW: tl.constexpr, CW: tl.constexpr, BIN_LOOP: tl.constexpr,
               HAS_WINDOW: tl.constexpr, PARTS: tl.constexpr):
        """One layer: one program per (key block, head)."""
        pid_n = tl.program_id(0)
        head = tl.program_id(1)
        _sweep(Q + head * sqh, K + (head // GROUPS) * skh, NEG_LSE + head * sl, COLS + head * L, PT + head,
               MAP + head * BINS * BINS, sqm, skn, L, WINDOW, scale_log2, WIDTH, BINS, BINS, pid_n * BLOCK_N,
               BLOCK_M, BLOCK_N, D, PREC, RW, CW, BIN_LOOP, HAS_WINDOW, PARTS)

    @triton.jit
    def _stats_many(Q, K, QOFF, KOFF, LENS, WIDTHS, ITEMS, NEG_LSE, COLS, PT, MAP, sqb, sqh, sqm, skb, skh, skn,
                    sl, BATCH, HEADS, L_MAX, BINS_MAX, GROUPS, WINDOW, scale_log2,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
                    RW: tl.constexpr, CW: tl.constexpr, BIN_LOOP: tl.constexpr, HAS_WINDOW: tl.constexpr,
                    PARTS: tl.constexpr):
        """Many layers of a padded batch: one program per (key block, head, item), an item being
        one prompt b of one layer (ITEMS holds layer * BATCH + b). Layer l's queries and keys sit
        QOFF[l] and KOFF[l] elements from Q and K; prompt b has LENS[b] tokens, bins of WIDTHS[b]."""
        pid_n = tl.program_id(0)
        head = tl.program_id(1)
        item = tl.load(ITEMS + tl.program_id(2)).to(tl.int64)
        layer = item // BATCH
        b = item % BATCH
        L = tl.load(LENS + b)
        width = tl.load(WIDTHS + b)
        row = item * HEADS + head                                       # this item's head, flat
        _sweep(Q + tl.multiple_of(tl.load(QOFF + layer), 16) + b * sqb + head * sqh,
               K + tl.multiple_of(tl.load(KOFF + layer), 16) + b * skb + (head // GROUPS) * skh,
               NEG_LSE + row * sl, COLS + row * L_MAX, PT + row, MAP + row * BINS_MAX * BINS_MAX,
               sqm, skn, L, WINDOW, scale_log2, width, tl.cdiv(L, width), BINS_MAX, pid_n * BLOCK_N,
               BLOCK_M, BLOCK_N, D, PREC, RW, CW, BIN_LOOP, HAS_WINDOW, PARTS)


def _neg_lse_parts(lse2: torch.Tensor, scaling: float, dtype: torch.dtype, rows: int,
                   lengths: torch.Tensor | None = None) -> torch.Tensor:
    """[..., rows, 16] in the queries' dtype: -lse / scale in score units (lse2 [..., L] in
    log2 units), split over columns 0..LSE_PARTS-1 so that their sum (exact in the dot's
    float32 accumulator) carries ~24 bits; zeros after. Rows past L (past ``lengths`` [...]
    where given) get a quarter of the dtype's largest value, so their p is 0 without a mask
    (q is 0 there)."""
    n = lse2.shape[-1]
    out = torch.zeros(*lse2.shape[:-1], rows, 16, device=lse2.device, dtype=dtype)
    rest = -lse2 / (scaling * LOG2E)                                           # [..., L] float32
    for part in range(LSE_PARTS):
        out[..., :n, part] = rest.to(dtype)
        rest = rest - out[..., :n, part].float()
    past = torch.arange(rows, device=lse2.device) >= (n if lengths is None else lengths[..., None])
    out[..., 0].masked_fill_(past, -torch.finfo(dtype).max / 4)
    out[..., 1:].masked_fill_(past[..., None], 0.0)
    return out


def _sink_sums(q, k, lse2, cols, scaling: float, window: int | None) -> torch.Tensor:
    """Per N = 1..8, sum over rows i >= N of the mass on keys j < N, [..., heads, 8]: the column
    sums of keys j < N, less what rows i < N give them (the top-left N x N corner of P, in
    float64). q [..., heads, >= 8, D], k [..., kv_heads, >= 8, D], lse2 [..., heads, >= 8] in log2
    units, cols [..., heads, >= 8]."""
    f = MAX_FIRST_N
    keys = k[..., :f, :].double().repeat_interleave(q.shape[-3] // k.shape[-3], -3)   # [..., heads, 8, D]
    t = q[..., :f, :].double() @ keys.transpose(-1, -2) * (scaling * LOG2E) - lse2[..., :f, None].double()
    i = torch.arange(f, device=q.device)
    hidden = (i[None, :] > i[:, None]) | (i[:, None] - i[None, :] >= (window or NO_WINDOW))
    corner = torch.exp2(t).masked_fill(hidden, 0.0)                           # [..., heads, 8 rows, 8 keys]
    return cols[..., :f].double().cumsum(-1) - corner.cumsum(-1).cumsum(-2).diagonal(dim1=-2, dim2=-1)


# SDPA's fused kernels, called through the ops that also return the log-sum-exp (natural log).
_WITH_LSE = {
    SDPBackend.FLASH_ATTENTION.value: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, True, False, scale=scale),
    SDPBackend.CUDNN_ATTENTION.value: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_cudnn_attention(
        q, k, v, None, True, 0.0, True, False, scale=scale),
    SDPBackend.EFFICIENT_ATTENTION.value: lambda q, k, v, scale: torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, True, scale=scale),
}


def sdpa_backend(query, key, value, scaling: float) -> int:
    """The SDPBackend value SDPA picks for causal attention on these inputs."""
    gqa = query.shape[1] != key.shape[1]
    return torch._fused_sdp_choice(query, key, value, None, 0.0, True, scale=scaling, enable_gqa=gqa)


def on_device_of(tensor: torch.Tensor):
    """Make ``tensor``'s GPU the current one: Triton launches, and the streams torch hands out,
    follow the current device, not the tensors (on ``cuda:1`` of a ``device_map="auto"`` model
    while ``cuda:0`` is current, a launch would run on the wrong GPU and read another's memory)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def attention_with_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       scaling: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Causal attention from the kernel SDPA itself picks, called through the op that also
    returns its log-sum-exp: (output [B, L, heads, D] as transformers' SDPA returns it,
    lse [B, heads, L] in natural log). None where SDPA would take another path (its math
    fallback, or memory-efficient attention with GQA, which it runs on expanded keys) and where
    this torch lacks these private ops or the device lacks the kernel: then ``_row_lse`` runs."""
    with on_device_of(query):
        return _attention_with_lse(query, key, value, scaling)


def _attention_with_lse(query, key, value, scaling):
    try:
        backend = sdpa_backend(query, key, value, scaling)
        gqa = query.shape[1] != key.shape[1]
        if backend not in _WITH_LSE or (gqa and backend == SDPBackend.EFFICIENT_ATTENTION.value):
            return None
        out, lse = _WITH_LSE[backend](query, key, value, scaling)[:2]
    except (AttributeError, NotImplementedError):  # not out-of-memory: that must reach the caller
        return None
    n = query.shape[2]
    return out.transpose(1, 2).contiguous(), lse.reshape(lse.shape[0], lse.shape[1], -1)[:, :, :n]


def layer_statistics(query: torch.Tensor, key: torch.Tensor, scaling: float, window: int | None,
                     map_size: int, lse: torch.Tensor | None = None,
                     sink_logits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """query [1, heads, L, D], key [1, kv_heads, L, D] -> the dict of reduce.finish_sums.
    ``lse`` [heads, L] (natural log, from the forward's attention) saves the pass that computes it.
    With a learned sink, ``sink_logits`` [heads, L] and ``lse`` its softmax's: logaddexp of the
    keys' log-sum-exp and the sink logit (``with_learned_sink``); every p is then exp(s - lse),
    the un-renormalised probabilities, and the sink's own p = exp(sink - lse) joins the entropy."""
    with on_device_of(query):
        return _layer_statistics(query, key, scaling, window, map_size, lse, sink_logits)


def _launch(q: torch.Tensor, k: torch.Tensor, scaling: float, window: int | None) -> dict:
    """Tile shapes, strides and settings shared by _row_lse and _stats. q [heads, L, D], k [kv_heads, L, D]."""
    launch = {**LAUNCH.get(q.shape[-1] * q.element_size(), WIDE_ROWS), **OVERRIDE}
    return dict(sqh=q.stride(0), sqm=q.stride(1), skh=k.stride(0), skn=k.stride(1), L=q.shape[1],
                GROUPS=q.shape[0] // k.shape[0], WINDOW=window or NO_WINDOW, scale_log2=scaling * LOG2E,
                D=q.shape[-1], PREC="ieee" if q.dtype == torch.float32 else "tf32", BLOCK_M=launch["BLOCK_M"],
                BLOCK_N=launch["BLOCK_N"], **{key: launch[key] for key in ("num_warps", "num_stages", "maxnreg")
                                              if launch.get(key)})


def _rows_first(query, key) -> tuple[torch.Tensor, torch.Tensor]:
    """[heads, L, D] and [kv_heads, L, D] views of batch 1, contiguous along D."""
    q, k = query[0], key[0]
    return (q if q.stride(-1) == 1 else q.contiguous()), (k if k.stride(-1) == 1 else k.contiguous())


def row_lse(query: torch.Tensor, key: torch.Tensor, scaling: float, window: int | None) -> torch.Tensor:
    """[heads, L] each causal row's log-sum-exp of the scores (natural log; an online softmax in
    float32), for attention whose kernel does not return it (a window). query [1, heads, L, D]."""
    with on_device_of(query):
        q, k = _rows_first(query, key)
        return _row_lse2(q, k, _launch(q, k, scaling, window)) / LOG2E


def _row_lse2(q: torch.Tensor, k: torch.Tensor, common: dict) -> torch.Tensor:
    """[heads, L] log2-sum-exp per row from the _row_lse kernel (q, k as _rows_first gives them)."""
    lse2 = torch.empty(q.shape[:2], device=q.device, dtype=torch.float32)
    _row_lse[(triton.cdiv(q.shape[1], common["BLOCK_M"]), q.shape[0])](q, k, lse2, **common, sl=q.shape[1])
    return lse2


def with_learned_sink(output: torch.Tensor, lse: torch.Tensor, sink_logits: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the keys -> attention whose softmax also has a learned-sink column:
    lse' = logaddexp(lse, sink) and the output times exp(lse - lse') (the keys' probabilities
    shrink by that factor; the sink column has no value). output [1, L, heads, D], lse and
    sink_logits [heads, L] (natural log) -> (output in its dtype, lse' float32)."""
    lse = lse.float()
    joint = torch.logaddexp(lse, sink_logits.float())                          # [heads, L]
    scale = torch.exp(lse - joint).transpose(0, 1)[None, :, :, None]           # [1, L, heads, 1]
    return (output.float() * scale).to(output.dtype), joint


def _layer_statistics(query, key, scaling, window, map_size, lse, sink_logits):
    q, k = _rows_first(query, key)
    heads, n, _ = q.shape
    width = bin_width(n, map_size)
    bins = -(-n // width)
    f32 = dict(device=q.device, dtype=torch.float32)
    cols = torch.empty(heads, n, **f32)
    p_log2_p = torch.zeros(heads, device=q.device, dtype=torch.float64)
    maps = torch.zeros(heads, bins, bins, **f32)
    common = _launch(q, k, scaling, window)
    block_m, block_n = common["BLOCK_M"], common["BLOCK_N"]
    lse2 = _row_lse2(q, k, common) if lse is None else lse.float() * LOG2E      # log2-sum-exp per row
    neg_lse = _neg_lse_parts(lse2, scaling, q.dtype, triton.cdiv(n, block_m) * block_m)
    _stats[(triton.cdiv(n, block_n), heads)](
        q, k, neg_lse, cols, p_log2_p, maps, **common, sl=neg_lse.stride(0), WIDTH=width, BINS=bins,
        RW=math.gcd(width, block_m), CW=math.gcd(width, block_n),
        BIN_LOOP=width % block_m == 0 and width % block_n == 0, HAS_WINDOW=window is not None, PARTS=LSE_PARTS)
    entropy_sum = (-math.log(2.0) * p_log2_p).float()                          # sum_ij -p ln p, nats
    sink_sum = _sink_sums(q, k, lse2, cols, scaling, window).float()
    if sink_logits is None:
        return finish_sums(sink_sum, entropy_sum, cols, maps, causal=True, width=width)
    sink = torch.exp(sink_logits.float() - lse.float())      # [heads, L] the sink's p per row (lse given with sinks)
    by_bin = torch.nn.functional.pad(sink, (0, bins * width - n)).unflatten(-1, (bins, width)).sum(-1)
    return finish_sums(sink_sum, entropy_sum - torch.special.xlogy(sink, sink).sum(-1), cols, maps, causal=True,
                       width=width, learned_sink_sum=sink.sum(-1), learned_sink_map_sum=by_bin)


def same_layout(tensors: list[torch.Tensor]) -> bool:
    """True where ``statistics_many`` can address every tensor from the first: one shape,
    strides, dtype and device, and base pointers a multiple of 16 elements apart."""
    first = tensors[0]
    return all(t.shape == first.shape and t.stride() == first.stride() and t.dtype == first.dtype
               and t.device == first.device and t.stride(-1) == 1
               and (t.data_ptr() - first.data_ptr()) % (16 * t.element_size()) == 0 for t in tensors)


def statistics_many(queries: list[torch.Tensor], keys: list[torch.Tensor], lses: list[torch.Tensor],
                    lengths: list[int], scaling: float, map_size: int) -> dict[str, torch.Tensor]:
    """Every layer of a right-padded causal batch in one sweep: queries [B, heads, L, D] and keys
    [B, kv_heads, L, D] per layer (``same_layout``), lses [B, heads, L] (natural log, from the
    forward's attention), prompt b's tokens the first lengths[b] (each >= 8). Returns the
    finish_sums statistics as [layers, B, ...] tensors: sink_mass [.., heads, 8], entropy
    [.., heads], received [.., heads, L] (0 past lengths[b]) and maps [.., heads, bins, bins]
    (prompt b's own bins first, zeros after)."""
    with on_device_of(queries[0]):
        q0, k0 = queries[0], keys[0]
        n_layers, (batch, heads, l_max, dim) = len(queries), q0.shape
        device = q0.device
        widths = [bin_width(n, map_size) for n in lengths]
        bins_max = max(-(-n // w) for n, w in zip(lengths, widths))
        launch = {**LAUNCH.get(dim * q0.element_size(), WIDE_ROWS), **OVERRIDE}
        block_m, block_n = launch["BLOCK_M"], launch["BLOCK_N"]
        n_t = torch.tensor(lengths, dtype=torch.int32).to(device, non_blocking=True)
        lse2 = torch.stack(lses).float() * LOG2E                                # [layers, B, heads, L]
        neg_lse = _neg_lse_parts(lse2, scaling, q0.dtype, triton.cdiv(l_max, block_m) * block_m, n_t[:, None])
        f32 = dict(device=device, dtype=torch.float32)
        cols = torch.zeros(n_layers, batch, heads, l_max, **f32)
        p_log2_p = torch.zeros(n_layers, batch, heads, device=device, dtype=torch.float64)
        maps = torch.zeros(n_layers, batch, heads, bins_max, bins_max, **f32)
        offsets = torch.tensor([[(t.data_ptr() - ts[0].data_ptr()) // t.element_size() for t in ts]
                                for ts in (queries, keys)], dtype=torch.int64).to(device, non_blocking=True)
        widths_t = torch.tensor(widths, dtype=torch.int32).to(device, non_blocking=True)
        common = dict(sqb=q0.stride(0), sqh=q0.stride(1), sqm=q0.stride(2), skb=k0.stride(0), skh=k0.stride(1),
                      skn=k0.stride(2), sl=neg_lse.stride(2), BATCH=batch, HEADS=heads, L_MAX=l_max,
                      BINS_MAX=bins_max, GROUPS=heads // k0.shape[1], WINDOW=NO_WINDOW, scale_log2=scaling * LOG2E,
                      BLOCK_M=block_m, BLOCK_N=block_n, D=dim, PREC="ieee" if q0.dtype == torch.float32 else "tf32",
                      HAS_WINDOW=False, PARTS=LSE_PARTS,
                      **{key: launch[key] for key in ("num_warps", "num_stages", "maxnreg") if launch.get(key)})
        for (rw, cw, bin_loop), group in _by_tile_pooling(widths, block_m, block_n).items():
            items = torch.tensor([layer * batch + b for layer in range(n_layers) for b in group], dtype=torch.int32)
            grid = (triton.cdiv(max(lengths[b] for b in group), block_n), heads, len(items))
            _stats_many[grid](q0, k0, offsets[0], offsets[1], n_t, widths_t, items.to(device, non_blocking=True),
                              neg_lse, cols, p_log2_p, maps, **common, RW=rw, CW=cw, BIN_LOOP=bin_loop)
        q8 = torch.stack([q[:, :, :MAX_FIRST_N] for q in queries])              # [layers, B, heads, 8, D]
        k8 = torch.stack([k[:, :, :MAX_FIRST_N] for k in keys])
        sink_sum = _sink_sums(q8, k8, lse2, cols, scaling, None).float()
        entropy_sum = (-math.log(2.0) * p_log2_p).float()
        return finish_many(sink_sum, entropy_sum, cols, maps, n_t, widths_t)


def _by_tile_pooling(widths: list[int], block_m: int, block_n: int) -> dict[tuple, list[int]]:
    """The prompts (indices) by their kernel's constants: RW, CW and BIN_LOOP follow the bin width."""
    groups: dict[tuple, list[int]] = {}
    for b, width in enumerate(widths):
        key = (math.gcd(width, block_m), math.gcd(width, block_n), width % block_m == 0 and width % block_n == 0)
        groups.setdefault(key, []).append(b)
    return groups


def finish_many(sink_sum, entropy_sum, column_sum, map_sum, lengths, widths) -> dict[str, torch.Tensor]:
    """reduce.finish_sums for causal prompts of ``lengths`` [B] tokens and bins of ``widths`` [B]
    in a padded batch: sink_sum [..., B, heads, 8], entropy_sum [..., B, heads], column_sum
    [..., B, heads, L], map_sum [..., B, heads, bins, bins]; the same divisions, element by element."""
    n = lengths.to(torch.int64)[:, None]                                       # [B, 1]
    n_queries = n - torch.arange(1, MAX_FIRST_N + 1, device=n.device)           # [B, 8]: queries i >= N
    n_queries = n_queries[:, None]                                              # [B, 1, 8]
    sink_mass = torch.where(n_queries > 0, sink_sum / n_queries.clamp(min=1).to(sink_sum.dtype), math.nan)
    seen_by = (n - torch.arange(column_sum.shape[-1], device=n.device)).clamp(min=1)   # [B, L]
    bin_start = torch.arange(map_sum.shape[-1], device=n.device) * widths.to(torch.int64)[:, None]
    bin_rows = (n - bin_start).clamp(min=1).minimum(widths.to(torch.int64)[:, None])  # [B, bins]
    return {"sink_mass": sink_mass,                                              # [..., B, heads, 8]
            "entropy": entropy_sum / n.to(entropy_sum.dtype),                    # [..., B, heads]
            "received": column_sum / seen_by.to(column_sum.dtype)[:, None],      # [..., B, heads, L]
            "maps": map_sum / bin_rows.to(map_sum.dtype)[:, None, :, None]}      # [..., B, heads, bins, bins]
