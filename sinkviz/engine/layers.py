"""Which decoder layers have softmax attention, in hybrids too.

Forward hooks count, per decoder layer, the attention calls the recorder saw while that layer
ran. A layer with one call is an attention layer (its statistics are a row of the result); a
layer with none is named for what it has instead (Mamba, linear attention, convolution, MLP
only), unless it holds an attention module that bypassed the interface, which is refused.
"""

import contextlib

import torch

from sinkviz.errors import AttentionOutsideInterface, UnsupportedArchitecture

ATTENTION = "attention"
# (token in a module class name or in the config's per-layer type, what the layer is)
# (RecurrentGemma's RG-LRU blocks hold a Conv1d and its config calls them "linear_attention":
# "recurrent" comes before "conv", and module class names before the config's word)
NON_SOFTMAX = (("mamba", "mamba"), ("mixer", "mamba"), ("deltanet", "linear attention"),
               ("deltaattention", "linear attention"), ("lightning", "linear attention"),
               ("linear_attention", "linear attention"), ("recurrent", "recurrent"), ("shortconv", "convolution"),
               ("conv", "convolution"), ("rwkv", "rwkv"), ("ssm", "state space"))


class LayerTrace:
    """Per decoder layer, in run order: (layer index, attention calls made while it ran)."""

    def __init__(self):
        self.runs: list[tuple[int, int]] = []

    def attention_layers(self) -> list[int]:
        return [i for i, calls in self.runs if calls == 1]


@contextlib.contextmanager
def traced(layers: torch.nn.ModuleList, recorder, on_layer, progress=None):
    """Hooks on every layer: ``on_layer(index, output)`` after an attention layer ran (its row is
    ``recorder.n_recorded - 1``), ``progress(layers run, len(layers))`` after every layer where
    given; yields the LayerTrace."""
    trace, started = LayerTrace(), {}

    def pre(index):
        def hook(_module, _inputs):
            started[index] = recorder.n_recorded
        return hook

    def post(index):
        def hook(_module, _inputs, output):
            calls = recorder.n_recorded - started.pop(index, recorder.n_recorded)
            trace.runs.append((index, calls))
            if calls == 1:
                on_layer(index, output)
            if progress is not None:
                progress(min(len(trace.runs), len(layers)), len(layers))
        return hook

    handles = [h for i, layer in enumerate(layers)
               for h in (layer.register_forward_pre_hook(pre(i)), layer.register_forward_hook(post(i)))]
    try:
        yield trace
    finally:
        for handle in handles:
            handle.remove()


def layer_kind(model, layers: torch.nn.ModuleList, index: int) -> str:
    """What a layer that made no attention call is: from its modules' class names, else the
    config's per-layer type; ATTENTION if it holds an attention module (that bypassed the
    interface); "MLP (no token mixing)" otherwise."""
    names = [type(m).__name__.lower() for m in layers[index].modules()]
    text = model.config.get_text_config()
    per_layer = getattr(text, "layer_types", None) or getattr(text, "layers_block_type", None) or ()
    declared = str(per_layer[index]).lower() if index < len(per_layer) else ""
    for token, kind in NON_SOFTMAX:
        if any(token in name for name in names):
            return kind
    for token, kind in NON_SOFTMAX:
        if token in declared:
            return kind
    if any(name.endswith("attention") for name in names):
        return ATTENTION
    return "MLP (no token mixing)"


def check(model, layers, trace: LayerTrace, n_recorded: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(model layer index of each recorded row, kind of every layer), or UnsupportedArchitecture
    where the layers' attention cannot all be accounted for."""
    name, n = type(model).__name__, len(layers)
    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedArchitecture(f"{name} is an encoder-decoder model (its decoder needs decoder "
                                      "inputs and cross-attention); sinkviz captures decoder-only and "
                                      "encoder-only models")
    if not trace.runs:
        raise UnsupportedArchitecture(f"{name} runs its {n} layers without calling them as modules, "
                                      "so sinkviz cannot follow them layer by layer")
    if len(trace.runs) > n:
        raise UnsupportedArchitecture(f"{name} runs its {n} layers {len(trace.runs)} times in all "
                                      "(a looped model); sinkviz shows each layer once")
    many = [(i, calls) for i, calls in trace.runs if calls > 1]
    if many:
        raise UnsupportedArchitecture(
            f"{name} makes {many[0][1]} attention calls in layer {many[0][0]} (cross-attention or several "
            "attention maps per layer); sinkviz captures one softmax attention per layer")
    rows = trace.attention_layers()
    kinds = tuple(ATTENTION if i in rows else layer_kind(model, layers, i) for i in range(n))
    bypass = [i for i in range(n) if i not in rows and kinds[i] == ATTENTION]
    if not rows or bypass or n_recorded != len(rows):
        raise AttentionOutsideInterface(
            f"{name} sent {n_recorded} of {n} layers through the attention interface; "
            "its attention cannot be captured exactly")
    return tuple(rows), kinds
