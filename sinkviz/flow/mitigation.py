"""Mitigation lab: what attention scaling and StreamingLLM-style sink tokens do to a model.

- Attention scaling: multiply the attention logits of the first K keys by gamma
  in every layer; compare sink mass, per-position KL divergence of the next-token
  distributions, prompt perplexity and the top-5 next tokens, before and after.
- Sink tokens for windowed attention (Xiao et al. 2023, StreamingLLM): per-token loss on a long
  text decoded with a KV cache of W entries, with and without the first S tokens kept, against
  full attention.
"""

import contextlib
import inspect
from dataclasses import dataclass

import numpy as np
import torch

from sinkviz.engine import capture

from sinkviz.flow import memory
from sinkviz.flow.analysis import Settings, token_limit
from sinkviz.errors import BadPrompt, BadSetting, UnsupportedArchitecture
from sinkviz.flow.models import get_model
from sinkviz.flow.progress import Eta, Tick, Ticks, left_text, line
from sinkviz.flow.prompts import TokenizedPrompt, tokenize
from sinkviz.numbers.stats import AttentionStats


@dataclass(frozen=True)
class ScalingResult:
    first_keys: int
    gamma: float
    tokens: TokenizedPrompt
    before: AttentionStats
    after: AttentionStats
    kl: np.ndarray                    # [L] KL(p_before || p_after) of each position's next token, nats
    perplexity_before: float          # exp(mean NLL of tokens 1..L-1 of the prompt)
    perplexity_after: float
    top5_before: tuple[tuple[str, float], ...]   # next token after the prompt, with probability
    top5_after: tuple[tuple[str, float], ...]


def perplexity(logits: torch.Tensor, ids: torch.Tensor) -> float:
    """exp(mean_{t>=1} -log p(ids[t] | ids[:t])) from logits [L, vocab] and ids [L]."""
    nll = -torch.log_softmax(logits[:-1].double(), -1).gather(1, ids[1:, None])
    return float(torch.exp(nll.mean()))


def top5(tokenizer, logits: torch.Tensor) -> tuple[tuple[str, float], ...]:
    probs, ids = torch.softmax(logits.double(), -1).topk(5)
    return tuple((tokenizer.decode([int(i)]), float(p)) for p, i in zip(probs, ids))


def language_model(settings: Settings):
    """The loaded model, refused unless it predicts next tokens (both experiments need logits)."""
    loaded = get_model(settings.model, settings.device, settings.dtype)
    if loaded.model.get_output_embeddings() is None:
        raise UnsupportedArchitecture(f"{loaded.info.label} ({loaded.info.architecture}) has no language-model "
                                      "head: these experiments measure next-token loss, so they need a "
                                      "causal language model")
    return loaded


def check_lab_fits(loaded, n_tokens: int, map_size: int) -> None:
    """Analyze's memory guard, plus the float64 logits and log-softmaxes the lab keeps
    (about 4 x tokens x vocabulary x 8 bytes); BadPrompt naming the cause when it won't fit."""
    memory.check_fits(loaded.model, n_tokens, map_size)
    free = memory.free_bytes(loaded.model.device)
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    need = 4 * n_tokens * vocab * 8
    if free is not None and need > free * memory.HEADROOM:
        raise BadPrompt(f"the next-token distributions of {n_tokens:,} tokens need about {need / 2**30:.1f} GiB "
                        f"on {loaded.model.device.type}, but {free / 2**30:.1f} GiB is free; try a shorter text")


def _limited(loaded, settings: Settings, token_ids, what: str) -> torch.Tensor:
    """The ids on the model's device, refused past Analyze's token limit or memory guard."""
    limit = token_limit(settings, loaded.info)
    if limit is not None and len(token_ids) > limit:
        raise BadPrompt(f"{what} has {len(token_ids):,} tokens; the limit is {limit:,}")
    if len(token_ids) < 2:
        raise BadPrompt(f"{what} has 1 token; a next-token loss needs at least 2")
    check_lab_fits(loaded, len(token_ids), settings.map_size)
    return torch.tensor(token_ids, device=loaded.model.device)


def attention_scaling(prompt: str, settings: Settings = Settings(), first_keys: int = 10,
                      gamma: float = 0.85, progress: Ticks | None = None) -> ScalingResult:
    """Run the prompt twice, plain and with the first ``first_keys`` keys' logits times gamma.
    Same token limit and memory guard as Analyze; the model lock is held one pass at a time.
    ``progress`` gets a Tick after each layer of each pass ('after · layer 17/30 · ~3 s left')."""
    if first_keys < 1 or not 0.0 < gamma <= 4.0:
        raise BadSetting("K must be at least 1 and gamma between 0 and 4")
    loaded = language_model(settings)
    if loaded.info.eager_attention:
        raise UnsupportedArchitecture(f"{loaded.info.label} ({loaded.info.architecture}) computes attention "
                                      "its own way, so sinkviz cannot scale its attention logits")
    tokens = tokenize(loaded.tokenizer, prompt, settings.use_template, settings.system)
    ids = _limited(loaded, settings, tokens.token_ids, "the prompt")[None]
    eta = Eta()
    with loaded.lock:
        before, logits_b = capture.capture_with_logits(loaded.model, ids, settings.map_size,
                                                       _pass_ticks(progress, 0, eta))
    with loaded.lock, capture.scaled_first_keys(first_keys, gamma):
        after, logits_a = capture.capture_with_logits(loaded.model, ids, settings.map_size,
                                                      _pass_ticks(progress, 1, eta))
    log_b, log_a = torch.log_softmax(logits_b.double(), -1), torch.log_softmax(logits_a.double(), -1)
    kl = (log_b.exp() * (log_b - log_a)).sum(-1)
    return ScalingResult(first_keys, gamma, tokens, before, after, kl.cpu().numpy(),
                         perplexity(logits_b, ids[0]), perplexity(logits_a, ids[0]),
                         top5(loaded.tokenizer, logits_b[-1]), top5(loaded.tokenizer, logits_a[-1]))


def _pass_ticks(progress: Ticks | None, index: int, eta: Eta) -> capture.OnLayer | None:
    """The on_layer of pass ``index`` (0: before, 1: after) of the two, as Ticks of both passes."""
    if progress is None:
        return None

    def on_layer(done: int, total: int) -> None:
        fraction = (index + done / total) / 2
        progress(Tick(fraction, line(("before", "after")[index], f"layer {done}/{total}",
                                     left_text(eta.left(fraction, 1.0)))))
    return on_layer


@dataclass(frozen=True)
class WindowResult:
    window: int                 # KV-cache entries each prediction may see, sink tokens included
    sinks: int                  # first tokens always kept in the cache
    loss_full: np.ndarray       # [T-1] NLL of tokens 1..T-1, full attention
    loss_sinks: np.ndarray      # [T-1] window with the first `sinks` tokens kept
    loss_no_sinks: np.ndarray   # [T-1] window alone

    @staticmethod
    def perplexity(loss: np.ndarray) -> float:
        return float(np.exp(loss.mean()))


def full_losses(model, ids: torch.Tensor) -> np.ndarray:
    """[T-1] NLL of ids[1:] with full attention (one forward pass)."""
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0, :-1].double()
    return (-torch.log_softmax(logits, -1).gather(1, ids[1:, None])[:, 0]).cpu().numpy()


def cache_argument(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` since transformers renamed it (5.x;
    ``past_key_values`` is deprecated, to be removed in 5.40), ``past_key_values`` before that."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cached_window_losses(model, ids: torch.Tensor, window: int, sinks: int,
                         progress=None, lock=None) -> np.ndarray:
    """[T-1] NLL of ids[1:], decoding token by token with a KV cache that holds at most ``window``
    entries: the first ``sinks`` tokens and the most recent ones (StreamingLLM's cache; keys keep
    their original positions). Entries are evicted, never recomputed. ``lock`` is held one token
    step at a time, so other sessions' requests run between steps."""
    from transformers import DynamicCache
    cache = DynamicCache(config=model.config)
    cache_arg = cache_argument(model)
    losses = np.empty(ids.shape[0] - 1)
    lock = lock or contextlib.nullcontext()
    with torch.no_grad():
        for t in range(ids.shape[0] - 1):
            with lock:
                out = model(input_ids=ids[None, t:t + 1], position_ids=torch.tensor([[t]], device=ids.device),
                            use_cache=True, **{cache_arg: cache})
            if t == 0 and cache.get_seq_length() != 1:   # a name the model ignored: no cache, wrong losses
                raise RuntimeError(f"{type(model).__name__} did not fill the KV cache passed as {cache_arg!r}")
            losses[t] = float(-torch.log_softmax(out.logits[0, -1].double(), -1)[ids[t + 1]])
            if progress and t % 32 == 0:
                progress(t / (ids.shape[0] - 1))
            for layer in cache.layers:
                if layer.keys.shape[-2] > window:          # evict the oldest non-sink entry
                    keep = lambda x: torch.cat([x[..., :sinks, :], x[..., sinks + 1:, :]], dim=-2)  # noqa: E731
                    layer.keys, layer.values = keep(layer.keys), keep(layer.values)
    return losses


def sink_token_experiment(text: str, settings: Settings = Settings(), window: int = 256, sinks: int = 4,
                          max_tokens: int | None = None, progress=None) -> WindowResult:
    """Per-token loss with full attention, a window KV cache with sink tokens, and one without."""
    if not 0 <= sinks < window:
        raise BadSetting("need 0 <= sinks < window")
    if max_tokens is not None and max_tokens < 2:
        raise BadSetting(f"max tokens must be at least 2, not {max_tokens}")
    loaded = language_model(settings)
    tokens = tokenize(loaded.tokenizer, text, use_template=False)
    ids = _limited(loaded, settings, tokens.token_ids[:max_tokens] if max_tokens else tokens.token_ids,
                   "the text")
    with loaded.lock:
        full = full_losses(loaded.model, ids)
    with_sinks = cached_window_losses(loaded.model, ids, window, sinks,
                                      progress and (lambda f: progress(f / 2)), loaded.lock)
    without = cached_window_losses(loaded.model, ids, window, 0,
                                   progress and (lambda f: progress(0.5 + f / 2)), loaded.lock)
    return WindowResult(window, sinks, full, with_sinks, without)
