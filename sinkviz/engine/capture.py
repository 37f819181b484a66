"""One hooked forward pass that reduces attention to ``AttentionStats`` without L x L tensors.

A registered attention function computes each layer's output with SDPA and, while a recorder
is active, its attention probabilities query block by query block for a ``LayerReducer`` (on a
GPU the fused kernels instead, SDPA's output kept bit for bit; on the CPU the output is then
probs @ V from those same blocks, as eager attention computes it). Forward hooks on the
decoder layers keep the hidden-state norm of every position. Hooks are removed in ``finally``.
"""

import contextlib
import functools
import inspect
import math
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from sinkviz.engine import deferred, eager_path, fused, invariants
from sinkviz.errors import UnsupportedArchitecture
from sinkviz.engine.host_copy import LayerArrays
from sinkviz.engine.layers import check as check_layers
from sinkviz.engine.layers import traced as layer_trace
from sinkviz.engine.masks import is_causal, mask_hides_future, padded_batch_mask_ok, row_norms, shows_causal_window
from sinkviz.engine.reduce import LayerReducer, bin_width, row_entropy
from sinkviz.numbers.stats import AttentionStats

ATTN_NAME = "sinkviz"
ATTN_FULL_MASK = "sinkviz_full_mask"  # see register()
BLOCK_ELEMENTS = 1 << 24          # probabilities per block on accelerators (64 MB in float32)
CPU_BLOCK_ROWS = 128              # on CPU, 128-query blocks were twice as fast as 256

OnLayer = Callable[[int, int], None]   # (decoder layers done, all decoder layers), after each layer
_recorder: ContextVar["_Recorder | None"] = ContextVar("sinkviz_recorder", default=None)
_first_key_scale: ContextVar["tuple[int, float] | None"] = ContextVar("sinkviz_key_scale", default=None)


@contextlib.contextmanager
def scaled_first_keys(k: int, gamma: float):
    """Within this block, every layer multiplies the attention logits of keys j < k by gamma
    (a proposed mitigation). gamma = 1 is the identity and leaves SDPA in charge."""
    token = _first_key_scale.set(None if gamma == 1.0 else (k, gamma))
    try:
        yield
    finally:
        _first_key_scale.reset(token)


def register() -> None:
    """Make ``attn_implementation="sinkviz"`` available to every model (idempotent), and
    "sinkviz_full_mask" for models transformers never runs with SDPA: the same attention, given
    the mask the model asked for even where SDPA would drop it for ``is_causal`` (eager's mask)."""
    AttentionInterface.register(ATTN_NAME, sinkviz_attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)  # else the mask arrives as None
    AttentionInterface.register(ATTN_FULL_MASK, sinkviz_attention)
    AttentionMaskInterface.register(ATTN_FULL_MASK, full_mask)


def full_mask(*args, **kwargs):
    """sdpa_mask, never skipped: a causal mask stays a mask, so the module's is_causal is not consulted."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False, "allow_is_bidirectional_skip": False})


@dataclass(frozen=True, eq=False)
class Softmax:
    """What a layer's softmax has beyond SDPA's, each applied block by block:
    logits -> cap * tanh(logits / cap) (Gemma 2's soft cap), the first keys' logits times gamma
    (the lab), and a learned sink: one more logit per head (``s_aux``, gpt-oss) or per head and
    query (``sinks``) that joins the softmax as a column no token owns."""
    softcap: float | None = None
    first_key_scale: tuple[int, float] | None = None
    sink_logits: torch.Tensor | None = None   # [heads, Lq]

    @classmethod
    def of(cls, query: torch.Tensor, kwargs: dict) -> "Softmax | None":
        """The layer's variant, or None where SDPA computes it exactly. query [1, heads, Lq, D]."""
        sinks = kwargs.get("s_aux") if kwargs.get("s_aux") is not None else kwargs.get("sinks")
        if sinks is not None:      # s_aux [heads]; sinks [1, heads, Lq, 1]
            sinks = (sinks[0, ..., 0] if sinks.dim() == 4 else sinks[:, None]).expand(*query.shape[1:3])
        variant = (kwargs.get("softcap"), _first_key_scale.get(), sinks)
        return None if all(part is None for part in variant) else cls(*variant)


def sinkviz_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA's output, or the block-wise softmax where SDPA cannot compute it (``Softmax``) or,
    on the CPU, where a recorder active in this context needs every probability anyway."""
    recorder = _recorder.get()
    if recorder is not None and not over_prompt(query, key, recorder.tokens):
        recorder = None                       # computed as the model asks, not recorded
    if isinstance(recorder, deferred.DeferredRecorder) and Softmax.of(query, kwargs) is not None:
        raise deferred.Undeferrable("a softmax SDPA does not compute (learned sink, soft cap, scaled keys)")
    if isinstance(recorder, (_Batch, deferred.DeferredRecorder)):
        return recorder.attend(module, query, key, value, attention_mask, kwargs), None
    attention_mask = indexed_keys_mask(attention_mask, kwargs.pop("indices", None), key.shape[2])
    return _attend(module, query, key, value, attention_mask, kwargs, recorder), None


def over_prompt(query, key, tokens: int | None) -> bool:
    """Whether an attention call's queries are the prompt's ``tokens`` (None: any call). Attention
    over other things is not: Inkling 2 attends from each token over its earlier residual blocks,
    query [B, tokens, queries per token, hidden] and key [B, tokens, blocks, hidden]."""
    if tokens is None:
        return True
    over_blocks = query.shape[1] == tokens and key.shape[2] != query.shape[2]
    return query.shape[2] == tokens and not over_blocks


def output_from_blocks(device: torch.device) -> bool:
    """Whether a recorded layer's output is probs @ V from the statistics' own probability blocks
    (as eager attention computes it) rather than SDPA's: on the CPU, where the blocks exist anyway
    and SDPA would compute the attention a second time; on a GPU SDPA's kernels are far faster
    than a float32 probs @ V, and the fused path never has the probabilities."""
    return device.type == "cpu"


def _attend(module, query, key, value, attention_mask, kwargs, recorder) -> torch.Tensor:
    """One sequence's attention output [B, L, heads, D], recorded when ``recorder`` is set."""
    if recorder is not None and key.shape[2] != query.shape[2]:
        raise UnsupportedArchitecture(
            f"{type(module).__name__} attends to {key.shape[2]} keys for {query.shape[2]} tokens (compressed or "
            "extra memory keys); sinkviz maps attention onto the prompt's tokens")
    softmax = Softmax.of(query, kwargs)
    blockwise = (recorder is not None and output_from_blocks(query.device)) or (   # the statistics' own blocks
        softmax is not None and not (recorder is not None and recorder.fuses(module, query, key, attention_mask,
                                                                              kwargs, softmax)))  # SDPA cannot
    if blockwise:
        return _blockwise_attention(module, query, key, value, attention_mask, kwargs, softmax or Softmax(), recorder)[0]
    sinks = softmax.sink_logits if softmax is not None else None
    output = recorder.record(module, query, key, value, attention_mask, kwargs, sinks) if recorder else None
    if output is None:
        output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return output


def indexed_keys_mask(attention_mask, indices, n_k: int):
    """DeepSeek sparse attention (DSA) passes the keys its indexer kept as ``indices`` [1, Lq, topk]
    to kernels other than eager and SDPA; fold them into the mask as those two do (others blocked)."""
    if indices is None:
        return attention_mask
    blocked = torch.ones(*indices.shape[:2], n_k, dtype=torch.bool, device=indices.device)
    blocked = blocked.scatter(-1, indices.long(), False).unsqueeze(1)                 # [1, 1, Lq, Lk]
    if attention_mask is None:
        attention_mask = torch.ones_like(blocked).tril(n_k - indices.shape[1])
    if attention_mask.dtype == torch.bool:
        return attention_mask & ~blocked
    return attention_mask.masked_fill(blocked, torch.finfo(attention_mask.dtype).min)


def _blockwise_attention(module, query, key, value, attention_mask, kwargs, softmax: Softmax, recorder,
                         with_output: bool = True):
    """The layer's attention computed block by block with its own ``softmax``, and its statistics
    from the same probabilities when recording. Returns (output [1, L, heads, D] or, without
    ``with_output``, None, None)."""
    if query.shape[0] != 1:
        raise ValueError("sinkviz computes a layer block by block one prompt at a time (batch size 1)")
    heads, n_q, dim = query.shape[1:]
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    q = query[0].to(acc)                                                      # [heads, Lq, D]
    k = repeat_kv(key, heads // key.shape[1])[0].to(acc)                      # [heads, Lk, D]
    causal = (recorder.applied_causality(module, query, key, attention_mask, kwargs) if recorder
              else is_causal(module, kwargs))
    n_k, window = k.shape[1], kwargs.get("sliding_window")
    reducer = (LayerReducer(heads, n_k, recorder.map_size, causal=causal, device=q.device, dtype=acc,
                            learned_sink=softmax.sink_logits is not None) if recorder else None)
    v = repeat_kv(value, heads // value.shape[1])[0].to(acc) if with_output else None   # [heads, Lk, D]
    out = torch.empty(heads, n_q, v.shape[-1], device=q.device, dtype=acc) if with_output else None  # [heads, L, D]
    for block in probability_blocks(q, k, attention_mask, kwargs.get("scaling") or dim ** -0.5, causal=causal,
                                    window=window, bias=kwargs.get("position_bias"), softmax=softmax):
        if out is not None:
            out[:, block.start:block.stop] = torch.matmul(block.probs, v[:, :block.probs.shape[-1]])
        if reducer is not None:
            reducer.add(block.probs, block.start + n_k - n_q, block.sink, block.entropy)
    if recorder is not None:
        recorder.append(reducer.finish(), value, window, causal)
    if out is None:
        return None, None
    return out.to(query.dtype).transpose(0, 1).contiguous()[None], None      # [1, L, heads, D], as SDPA gives it


def block_rows(heads: int, keys: int, device: torch.device) -> int:
    """Query rows per block: fixed on CPU, else bounded by BLOCK_ELEMENTS probabilities."""
    if device.type == "cpu":
        return CPU_BLOCK_ROWS
    return max(1, min(keys, BLOCK_ELEMENTS // (heads * keys)))


class _Recorder:
    def __init__(self, map_size: int, n_layers: int = 0, tokens: int | None = None):
        self.map_size = map_size
        self.tokens = tokens        # the prompt's length: only calls attending from or to its tokens are recorded
        self.n_recorded = 0
        self.heads: int | None = None              # every recorded layer's head count
        self.host = LayerArrays(n_layers)          # statistics and value norms, by layer, on the host
        self.windows: list[int | None] = []
        self.learned_sink_layers: list[int] = []   # layers whose softmax has a learned sink
        self.causal = True
        self.masks_seen: list[tuple[torch.Tensor, bool]] = []  # (mask, hides the future), per capture
        self.masks_plain: list[tuple[torch.Tensor, int | None, bool]] = []   # (mask, window, causal rule exactly)

    def fuses(self, module, query, key, attention_mask, kwargs, softmax: Softmax) -> bool:
        """Whether ``record`` takes this layer's softmax on the fused path: a learned sink and
        nothing else beyond SDPA's (soft caps and scaled keys change every score: block-wise)."""
        return softmax.softcap is None and softmax.first_key_scale is None and self._fusable(
            module, query, key, attention_mask, kwargs)

    def _fusable(self, module, query, key, attention_mask, kwargs) -> bool:
        """fused.usable, where a mask that shows each query exactly its causal keys (within the
        layer's window) counts as none: the kernels apply that rule themselves. So models that
        always pass a mask (gpt-oss) and windows shorter than the prompt take the fused path
        too; each mask tensor is checked once per window."""
        causal = self.applied_causality(module, query, key, attention_mask, kwargs)
        usable = functools.partial(fused.usable, query, key, causal=causal, bias=kwargs.get("position_bias"),
                                   map_size=self.map_size)
        if attention_mask is None or not usable(None):
            return usable(attention_mask)
        window = kwargs.get("sliding_window")
        for mask, width, plain in self.masks_plain:
            if mask is attention_mask and width == window:
                return plain
        plain = shows_causal_window(attention_mask, query.shape[2], window)
        self.masks_plain.append((attention_mask, window, plain))
        return plain

    def record(self, module, query, key, value, attention_mask, kwargs,
               sink_logits: torch.Tensor | None = None) -> torch.Tensor | None:
        """Keep this layer's statistics. query: [1, heads, L, D]; key, value: [1, kv_heads, L, D]
        (not yet expanded for GQA). Returns the attention output where the fused path had to
        compute it for its log-sum-exp (the same kernel and numbers as SDPA), else None. A learned
        sink (``sink_logits`` [heads, L], only where ``fuses``): SDPA's output scaled by
        exp(lse - lse'), the statistics from the softmax with the sink column (fused.with_learned_sink)."""
        if query.shape[0] != 1:
            raise ValueError("sinkviz captures one prompt at a time (batch size 1)")
        if not self._fusable(module, query, key, attention_mask, kwargs):    # reduce.py's path; SDPA's output
            return _blockwise_attention(module, query, key, value, attention_mask, kwargs, Softmax(), self,
                                        with_output=False)[0]
        window = kwargs.get("sliding_window")
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5
        output, lse = None, None
        if window is None and attention_mask is None and not kwargs.get("dropout"):   # else SDPA's own call
            output, lse = fused.attention_with_lse(query, key, value, scaling) or (None, None)
        lse = None if lse is None else lse[0]                                 # [heads, L]
        if sink_logits is not None:
            if output is None:
                output, _ = sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
            output, lse = fused.with_learned_sink(
                output, fused.row_lse(query, key, scaling, window) if lse is None else lse, sink_logits)
        layer = fused.layer_statistics(query, key, scaling, window, self.map_size, lse, sink_logits)
        self.append(layer, value, window, self.applied_causality(module, query, key, attention_mask, kwargs))
        return output

    def applied_causality(self, module, query, key, attention_mask, kwargs) -> bool:
        """Causal as applied: without a mask, SDPA's rule (is_causal passed, else the module's,
        else True); with one, whether it hides every later key (checked once per mask tensor)."""
        if attention_mask is None:
            return is_causal(module, kwargs)
        for mask, causal in self.masks_seen:
            if mask is attention_mask:
                return causal
        causal = mask_hides_future(attention_mask, query.shape[2], key.shape[2])
        self.masks_seen.append((attention_mask, causal))
        return causal

    def append(self, layer: dict, value, window, causal: bool) -> None:
        """Keep one layer's statistics, its value norms [Lk] and its attention pattern."""
        heads = layer["entropy"].shape[0]
        if heads != self.heads:
            if self.heads is not None:
                raise UnsupportedArchitecture(
                    f"the model's attention layers differ in head count ({self.heads}, then {heads} in attention "
                    f"layer {self.n_recorded}); sinkviz's statistics hold one head count for all layers")
            self.heads = heads
        if "learned_sink" in layer:
            self.learned_sink_layers.append(self.n_recorded)
        self.host.add(self.n_recorded, {**layer, "value_norm": row_norms(value[0]).mean(0)})  # value_norm [Lk]
        self.n_recorded += 1
        self.windows.append(window)
        self.causal = causal


class BatchUnsupported(Exception):
    """This model's attention in a padded batch is not plain causal (or bidirectional) attention
    over each prompt's own tokens; its prompts are captured one at a time instead."""


class _Batch:
    """Several right-padded prompts in one forward pass: each layer's attention is computed and
    recorded prompt by prompt on that prompt's own tokens, exactly as its batch-1 capture would."""

    def __init__(self, recorders: list[_Recorder], lengths: list[int], tokens: int):
        self.recorders, self.lengths, self.tokens = recorders, lengths, tokens   # tokens: the padded length
        self.masks_checked: list[torch.Tensor] = []

    def attend(self, module, query, key, value, attention_mask, kwargs) -> torch.Tensor:
        """query [B, heads, L, D], key/value [B, kv_heads, L, D] -> output [B, L, heads, D]."""
        if kwargs.get("indices") is not None or kwargs.get("position_bias") is not None:
            raise BatchUnsupported(f"{type(module).__name__} passes per-batch attention inputs")
        causal, window = is_causal(module, kwargs), kwargs.get("sliding_window")
        self._check(attention_mask, causal, window)
        out = query.new_zeros(query.shape[0], query.shape[2], query.shape[1], value.shape[-1])
        for b, (recorder, n) in enumerate(zip(self.recorders, self.lengths)):
            # batch-1 gets a mask only where a window hides keys; elsewhere none (fused path)
            mask = attention_mask[b:b + 1, :, :n, :n] if window and n > window and attention_mask is not None else None
            one = {**kwargs, "sinks": kwargs["sinks"][b:b + 1, :, :n]} if kwargs.get("sinks") is not None else kwargs
            part = (tensor[b:b + 1, :, :n] for tensor in (query, key, value))
            out[b, :n] = _attend(module, *part, mask, one, recorder)[0]
        return out

    def _check(self, attention_mask, causal: bool, window: int | None) -> None:
        """Raise BatchUnsupported unless the mask is each prompt's own (checked once per mask tensor)."""
        if attention_mask is None or any(m is attention_mask for m in self.masks_checked):
            return
        if not padded_batch_mask_ok(attention_mask, self.lengths, causal, window):
            raise BatchUnsupported("the padded batch's mask is not each prompt's own causal mask")
        self.masks_checked.append(attention_mask)


class ProbabilityBlock(NamedTuple):
    """Attention rows start .. stop-1 of one layer."""
    start: int
    stop: int
    probs: torch.Tensor          # [heads, b, seen]: the keys' probabilities
    sink: torch.Tensor | None    # [heads, b]: the learned sink's, where the softmax has one
    entropy: torch.Tensor        # [heads, b]: each row's entropy in nats, the sink column included


def probability_blocks(q, k, attention_mask, scaling, *, causal, window, bias=None, softmax: Softmax | None = None):
    """Yield ProbabilityBlocks of attention rows, block by block: scores, the position bias,
    ``softmax``'s cap and first-key scale, the mask, then the softmax over the keys and, where
    there is one, the learned sink (whose probability is ``sink``; the keys' then sum to
    1 - sink), and each row's entropy from the same logits. q, k: [heads, L, D]. Causal blocks stop at the
    last key their last query sees (``seen`` <= Lk: the rest would be exact zeros), which halves
    the work of a causal layer; bidirectional ones see all Lk keys."""
    n_q, n_k = q.shape[1], k.shape[1]
    softmax = softmax or Softmax()
    rows = block_rows(q.shape[0], n_k, q.device)
    q_scaled = q * scaling                                                            # [heads, Lq, D]
    for start in range(0, n_q, rows):
        stop = min(n_q, start + rows)
        seen = min(n_k, stop + n_k - n_q) if causal else n_k   # keys past the block's last query: never seen
        scores = torch.matmul(q_scaled[:, start:stop], k[:, :seen].transpose(-1, -2))  # [heads, b, seen]
        if bias is not None:
            scores = scores + bias[0, :, start:stop, :seen].to(scores.dtype)
        if softmax.softcap is not None:
            scores = torch.tanh(scores / softmax.softcap) * softmax.softcap
        if softmax.first_key_scale is not None:
            scores[..., :softmax.first_key_scale[0]] *= softmax.first_key_scale[1]
        scores = _apply_mask(scores, attention_mask, start, stop, n_k - n_q, causal=causal, window=window)
        if softmax.sink_logits is None:
            probs = torch.softmax(scores, dim=-1)
            yield ProbabilityBlock(start, stop, probs, None, row_entropy(scores, probs))
            continue
        sink_logits = softmax.sink_logits[:, start:stop, None].to(scores.dtype)     # [heads, b, 1]
        logits = torch.cat([scores, sink_logits], dim=-1)                           # [heads, b, seen + 1]
        both = torch.softmax(logits, dim=-1)
        yield ProbabilityBlock(start, stop, both[..., :-1], both[..., -1], row_entropy(logits, both))


def _apply_mask(scores, attention_mask, start, stop, offset, *, causal, window):
    """Mask one block of scores [heads, b, Lk]: the model's mask, or (when it passed None)
    causal and sliding-window rules aligned bottom-right (query i sits at position i + offset)."""
    if attention_mask is not None:
        block = attention_mask[0, :, start:stop, :scores.shape[-1]]           # [1 or heads, b, seen]
        if block.dtype == torch.bool:
            return scores.masked_fill(~block, -math.inf)
        return scores + block.to(scores.dtype)
    if not causal:
        return scores
    q_pos = torch.arange(start, stop, device=scores.device)[:, None] + offset
    if window is None:     # every query sees the keys up to the first query's own: mask only after it
        first = max(start + offset + 1, 0)
        k_pos = torch.arange(first, scores.shape[-1], device=scores.device)[None, :]
        scores[..., first:].masked_fill_(k_pos > q_pos, -math.inf)
        return scores
    k_pos = torch.arange(scores.shape[-1], device=scores.device)[None, :]
    allowed = (k_pos <= q_pos) & ((q_pos - k_pos) < window)
    return scores.masked_fill(~allowed, -math.inf)


def decoder_layers(model) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks (as many as ``num_hidden_layers``)."""
    n = model.config.get_text_config().num_hidden_layers
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    for name, module in found:  # a vision or audio tower may have as many layers: the text ones
        if not any(tower in name for tower in ("vision", "visual", "audio", "image", "vq")):
            return module
    if found:
        return found[0][1]
    raise UnsupportedArchitecture(f"cannot find the {n} transformer layers of {type(model).__name__} "
                                  "as one list of modules (its layers are shared, grouped or nested)")


def forward_kwargs(model) -> dict:
    """Prefill only, no KV cache; keep one logit row when the model allows it."""
    kwargs = {"use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def capture(model, input_ids: torch.Tensor, map_size: int = 128, on_layer: OnLayer | None = None) -> AttentionStats:
    """Run one forward pass on input_ids [1, L] and return its attention statistics;
    ``on_layer(done, total)`` after each decoder layer, where given."""
    return _captured_forward(model, input_ids, map_size, forward_kwargs(model), on_layer=on_layer)[0]


def capture_with_logits(model, input_ids: torch.Tensor, map_size: int = 128,
                        on_layer: OnLayer | None = None) -> tuple[AttentionStats, torch.Tensor]:
    """capture(), plus the next-token logits of every position: [L, vocab] float32."""
    stats, out = _captured_forward(model, input_ids, map_size, {"use_cache": False}, on_layer=on_layer)
    return stats, out.logits[0].float()


def capture_batch(model, sequences: list[list[int]], map_size: int = 128,
                  on_layer: OnLayer | None = None, head_maps: bool = True) -> list[AttentionStats]:
    """Several prompts (token ids) in one forward pass, right-padded with the padding masked;
    each prompt's statistics are its own capture's. Raises BatchUnsupported where the model's
    batched attention is not each prompt's own (then capture them one by one). Without
    ``head_maps`` (an audit) the maps are the head mean, [layers, 1, B, B], taken on the GPU
    where the statistics are computed there (1/heads of the bytes to the host)."""
    device, lengths = model.device, [len(ids) for ids in sequences]
    ids = torch.zeros(len(sequences), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, seq in enumerate(sequences):
        ids[b, :len(seq)], mask[b, :len(seq)] = torch.tensor(seq), 1
    kwargs = {**forward_kwargs(model), "attention_mask": mask.to(device)}
    stats = _captured_forward(model, ids.to(device), map_size, kwargs, lengths, on_layer, head_maps)[0]
    return stats if head_maps else [s.without_head_maps() for s in stats]


def _captured_forward(model, input_ids, map_size, kwargs, lengths: list[int] | None = None,
                      on_layer: OnLayer | None = None, head_maps: bool = True):
    """(stats, model output); with ``lengths``, a batch: (a list of stats, one per prompt, output).
    Short work on a GPU defers the statistics to one sweep after the forward (deferred.py).
    ``on_layer(done, total)`` after each decoder layer, where given."""
    if eager_path.is_eager(model):  # attention outside the interface: the model's own maps
        if lengths:
            raise BatchUnsupported(f"{type(model).__name__} is captured through its own attention maps, one prompt at a time")
        return eager_path.captured_forward(model, input_ids, map_size, kwargs, decoder_layers(model), on_layer)
    if model.config._attn_implementation not in (ATTN_NAME, ATTN_FULL_MASK):
        raise UnsupportedArchitecture(f"model was not loaded with attn_implementation={ATTN_NAME!r}")
    layers, batch = decoder_layers(model), lengths or [input_ids.shape[1]]
    if deferred.fits(model, input_ids):
        try:
            recorder = deferred.DeferredRecorder(batch, map_size, input_ids.shape[1], head_maps)
            out, trace = _run(model, input_ids, kwargs, layers, recorder, recorder, recorder.keep_hidden, on_layer)
            rows, kinds = check_layers(model, layers, trace, recorder.n_recorded)
            stats = [_to_stats(arrays, tuple(recorder.windows), True, [], map_size, rows, kinds, check=flagged)
                     for arrays, flagged in recorder.result()]
            return (stats if lengths else stats[0]), out
        except deferred.Undeferrable:
            pass   # the per-layer path below computes what this one cannot
    recorders = [_Recorder(map_size, len(layers), n) for n in batch]
    try:
        out, trace = _run(model, input_ids, kwargs, layers,
                          _Batch(recorders, lengths, input_ids.shape[1]) if lengths else recorders[0],
                          recorders[0], hidden_norm_to(recorders, batch), on_layer)
    finally:
        for recorder in recorders:
            recorder.host.close()
    rows, kinds = check_layers(model, layers, trace, recorders[0].n_recorded)
    stats = [_to_stats(r.host.result(), tuple(r.windows), r.causal, r.learned_sink_layers, map_size, rows, kinds)
             for r in recorders]
    return (stats if lengths else stats[0]), out


def _run(model, input_ids, kwargs, layers, recorder, counter, keep, on_layer):
    """The forward pass with ``recorder`` active and the layers traced (``counter.n_recorded``
    counts attention calls; ``keep(index, output)`` after each attention layer, ``on_layer(done,
    total)`` after every layer where given); returns (model output, LayerTrace)."""
    token = _recorder.set(recorder)
    try:
        with layer_trace(layers, counter, keep, on_layer) as trace, torch.no_grad():
            return model(input_ids=input_ids, **kwargs), trace
    finally:
        _recorder.reset(token)


def hidden_norm_to(recorders: list[_Recorder], lengths: list[int]):
    """A hook body: the hidden-state norms of an attention layer go to its row, [lengths[b]] for
    each prompt b of the batch."""
    def keep(_index, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output   # [B, L, d]
        for b, (recorder, n) in enumerate(zip(recorders, lengths)):
            recorder.host.add(recorder.n_recorded - 1, {"hidden_norm": row_norms(hidden[b, :n])})
    return keep


def _to_stats(host: dict, windows: tuple, causal: bool, learned_sink_layers: list[int], map_size: int,
              rows: tuple, kinds: tuple, check: bool = True) -> AttentionStats:
    """Host arrays [layers, ...] as AttentionStats, checked against what every attention obeys
    (``check=False``: the GPU screened them already, invariants.screen_batch). Rows are the
    attention layers (all layers but in hybrids); ``rows`` names their layers."""
    arrays = {name: a[:len(rows)] for name, a in host.items()}
    sinks = {}
    if learned_sink_layers:                 # layers without a learned sink give it nothing
        without = np.setdiff1d(np.arange(len(rows)), learned_sink_layers)
        for name in ("learned_sink", "learned_sink_map"):
            arrays[name][without] = 0.0
            sinks[name] = arrays[name]
    hybrid = len(rows) < len(kinds)
    stats = AttentionStats(
        sink_mass=arrays["sink_mass"], entropy=arrays["entropy"], received=arrays["received"],
        maps=arrays["maps"], hidden_norm=arrays["hidden_norm"], value_norm=arrays["value_norm"],
        bin_width=bin_width(arrays["received"].shape[-1], map_size),
        causal=causal, windows=windows, **sinks,
        layers=rows if hybrid else (), layer_kinds=kinds if hybrid else ())
    if check:
        invariants.check(stats)
    return stats
