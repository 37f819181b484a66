"""The float64 eager reference: statistics computed from full ``output_attentions`` maps."""

import contextlib
import math
import sys

import numpy as np
import torch


@contextlib.contextmanager
def float64_softmax():
    """Eager attention calls softmax(..., dtype=float32) even for float64 models; keep float64."""
    original = torch.nn.functional.softmax

    def softmax(x, dim=None, _stacklevel=3, dtype=None):
        if x.dtype == torch.float64:
            dtype = None
        return original(x, dim=dim, dtype=dtype)
    torch.nn.functional.softmax = softmax
    try:
        yield
    finally:
        torch.nn.functional.softmax = original


@contextlib.contextmanager
def float64_attention_casts(model):
    """Where attention upcasts half precision with ``.float()`` / ``.to(torch.float32)``, a float64
    tensor stays float64, else a float64 model is rounded to float32 there: in the module's eager
    attention function (GPT-J's scores, Inkling 2's learned sink) and in the own code (not the
    submodules) of its attention modules that hold no float32 weights (XLM's and MPT's softmax;
    a module with float32 weights, such as a linear attention's convolution, casts for them)."""
    active = [False]                       # a stack: True while such attention code runs
    handles = _attention_frames(model, active)
    module = sys.modules[type(model).__module__]
    real_eager = getattr(module, "eager_attention_forward", None)

    def eager_in_float64(*args, **kwargs):
        active.append(True)
        try:
            return real_eager(*args, **kwargs)
        finally:
            active.pop()
    real_float, real_to = torch.Tensor.float, torch.Tensor.to

    def to_float(self, *args, **kwargs):
        return self if active[-1] and self.dtype == torch.float64 else real_float(self, *args, **kwargs)

    def to(self, *args, **kwargs):
        if active[-1] and self.dtype == torch.float64:
            args = tuple(torch.float64 if a is torch.float32 else a for a in args)
            kwargs = {k: torch.float64 if v is torch.float32 else v for k, v in kwargs.items()}
        return real_to(self, *args, **kwargs)
    torch.Tensor.float, torch.Tensor.to = to_float, to
    if real_eager is not None:
        module.eager_attention_forward = eager_in_float64
    try:
        yield
    finally:
        torch.Tensor.float, torch.Tensor.to = real_float, real_to
        if real_eager is not None:
            module.eager_attention_forward = real_eager
        for handle in handles:
            handle.remove()


def _attention_frames(model, active: list) -> list:
    """Hooks that push True on ``active`` while an attention module without float32 weights runs
    its own code, False while any module inside it runs; returns their handles."""
    attention = [m for m in model.modules() if type(m).__name__.endswith("Attention")
                 and all(p.dtype != torch.float32 for p in m.parameters())]
    ids = {id(m) for m in attention}
    inner = {id(c): c for m in attention for c in m.modules() if id(c) not in ids}
    handles = []

    def leave(*_):
        active.pop()                       # (returns None: the module's output stays)
    for flag, modules in ((True, attention), (False, inner.values())):
        for m in modules:
            handles.append(m.register_forward_pre_hook(lambda *_, f=flag: active.append(f)))
            handles.append(m.register_forward_hook(leave, always_call=True))
    return handles


def eager_attentions(folder, input_ids: torch.Tensor, model_class=None, with_logits=False, **load):
    """([layers, heads, L, L] float64 attention, hidden_states list[, logits [L, vocab]]) from
    eager float64, softmax included; ``load`` goes to from_pretrained (e.g. experts_implementation)."""
    from transformers import AutoModelForCausalLM
    model = (model_class or AutoModelForCausalLM).from_pretrained(
        folder, dtype=torch.float64, attn_implementation="eager", **load).eval()
    with torch.no_grad(), float64_softmax():
        out = model(input_ids=input_ids, output_attentions=True, output_hidden_states=True)
    found = torch.stack(out.attentions)[:, 0].numpy(), [h[0].numpy() for h in out.hidden_states]
    return (*found, out.logits[0]) if with_logits else found


def reference_stats(att: np.ndarray, map_size: int, causal: bool = True, width: int | None = None) -> dict:
    """Every statistic of sinkviz.numbers.stats, straight from the definitions, on a full [l, h, L, L] map;
    maps in bins of ``width`` tokens (default: ceil(L / map_size)). Rows that sum to less than 1
    give the rest to a learned sink: s = 1 - row sum, a softmax column of its own (entropy too)."""
    L = att.shape[-1]
    sink_rows = 1.0 - att.sum(-1)                                        # [l, h, L]
    sink = np.stack([att[:, :, n:, :n].sum(-1).mean(-1) if n < L
                     else np.full(att.shape[:2], np.nan) for n in range(1, 9)], axis=-1)
    xlogx = lambda x: x * np.log(np.where(x > 0, x, 1.0))  # noqa: E731
    ent = -(xlogx(att).sum(-1) + xlogx(np.clip(sink_rows, 0, None))).mean(-1)
    received = np.stack([att[:, :, (j if causal else 0):, j].mean(-1) for j in range(L)], -1)
    w = width or max(1, math.ceil(L / map_size))
    bins = math.ceil(L / w)
    maps = np.zeros(att.shape[:2] + (bins, bins))
    for b in range(bins):
        for c in range(bins):
            maps[:, :, b, c] = att[:, :, b * w:(b + 1) * w, c * w:(c + 1) * w].sum(-1).mean(-1)
    sink_map = np.stack([sink_rows[:, :, b * w:(b + 1) * w].mean(-1) for b in range(bins)], -1)
    return {"sink_mass": sink, "entropy": ent, "received": received, "maps": maps,
            "bin_width": w, "learned_sink": sink_rows.mean(-1), "learned_sink_map": sink_map}
