"""Capture for models whose attention bypasses transformers' AttentionInterface (BLOOM, Falcon,
GPT-Neo, XGLM, RoFormer, ...): the model runs its own eager attention and returns every layer's
probabilities (``output_attentions``); each layer's [heads, L, L] map is reduced with the same
``LayerReducer`` as the interface path, so the statistics are exact. All maps exist at once, so
memory grows with layers x heads x L^2 and the memory guard bounds the prompt length. Value
norms are not seen on this path (NaN).
"""

import torch

from sinkviz.engine import invariants
from sinkviz.errors import UnsupportedArchitecture
from sinkviz.engine.host_copy import LayerArrays
from sinkviz.engine.reduce import LayerReducer, bin_width
from sinkviz.numbers.stats import AttentionStats

EAGER = "eager"


def is_eager(model) -> bool:
    return model.config._attn_implementation == EAGER


def captured_forward(model, input_ids, map_size: int, kwargs: dict, layers,
                     on_layer=None) -> tuple[AttentionStats, object]:
    """One forward with output_attentions; (statistics, model output). ``on_layer(done, total)``
    after each layer, where given."""
    host, ran = LayerArrays(len(layers)), []

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, (tuple, list)) else output   # [1, L, d]
        host.add(len(ran), {"hidden_norm": torch.linalg.vector_norm(hidden[0].to(_acc(hidden)), dim=-1)})
        ran.append(len(ran))
        if on_layer is not None:
            on_layer(min(len(ran), len(layers)), len(layers))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_attentions=True, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    maps = _maps(model, out, len(layers), input_ids.shape[1], len(ran))
    tol = max(1e-4, torch.finfo(maps[0].dtype).eps)  # the maps' precision (float32 softmax, or the model's dtype)
    _check_rows(model, maps, tol)
    causal = all(bool((a[0].triu(1) == 0).all()) for a in maps)
    for index, att in enumerate(maps):
        host.add(index, {**reduce_map(att[0], map_size, causal),
                         "value_norm": torch.full(att.shape[-1:], float("nan"), dtype=_acc(att))})
    arrays = host.result()
    stats = AttentionStats(
        sink_mass=arrays["sink_mass"], entropy=arrays["entropy"], received=arrays["received"],
        maps=arrays["maps"], hidden_norm=arrays["hidden_norm"], value_norm=arrays["value_norm"],
        bin_width=bin_width(input_ids.shape[1], map_size), causal=causal,
        windows=(None,) * len(layers))
    invariants.check(stats, tol=tol)
    return stats, out


def _maps(model, out, n_layers: int, n_tokens: int, n_run: int) -> list[torch.Tensor]:
    """The returned attention maps [1, heads, L, L], one per layer, or UnsupportedArchitecture."""
    name = type(model).__name__
    att = getattr(out, "attentions", None) or getattr(out, "decoder_attentions", None)
    if not att or any(a is None for a in att):
        raise UnsupportedArchitecture(f"{name} does not return its attention weights, and its attention "
                                      "does not go through transformers' AttentionInterface")
    if isinstance(att[0], (tuple, list)):  # e.g. XLNet's two streams
        raise UnsupportedArchitecture(f"{name} returns several attention maps per layer; sinkviz "
                                      "captures one softmax attention per layer")
    shapes = {tuple(a.shape) for a in att}
    if len(att) != n_layers or n_run != n_layers or shapes != {(1, att[0].shape[1], n_tokens, n_tokens)}:
        raise UnsupportedArchitecture(
            f"{name} returns attention of shape {sorted(shapes)[0]} for {len(att)} of its {n_layers} layers "
            f"({n_run} ran), not one [heads, L, L] map per layer (chunked, pooled or shared layers)")
    return list(att)


def _check_rows(model, maps: list[torch.Tensor], tol: float) -> None:
    """UnsupportedArchitecture unless every row of every map sums to 1 (within ``tol``): a map that
    leaves out some of the keys a token attended to (CPM-Ant's learned prompt tokens, which its
    returned attention crops) is not a distribution over the prompt's tokens."""
    sums = torch.stack([a[0].sum(-1, dtype=_acc(a)) for a in maps]).flatten()     # [layers x heads x L]
    worst = int((sums - 1).abs().argmax())
    if abs(float(sums[worst]) - 1) > tol:
        raise UnsupportedArchitecture(
            f"{type(model).__name__}'s attention maps leave out keys its tokens attend to (a row of layer "
            f"{worst // maps[0][0].shape[:2].numel()} sums to {float(sums[worst]):.3g}, not 1: attention to "
            "positions before the prompt, such as learned prompt tokens)")


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def reduce_map(att: torch.Tensor, map_size: int, causal: bool, rows: int = 128) -> dict:
    """One layer's full map [heads, L, L] through LayerReducer, ``rows`` queries at a time."""
    heads, n = att.shape[0], att.shape[-1]
    reducer = LayerReducer(heads, n, map_size, causal=causal, device=att.device, dtype=_acc(att))
    for start in range(0, n, rows):
        reducer.add(att[:, start:start + rows].to(_acc(att)), start)
    return reducer.finish()
