"""A model too large for one GPU, spread over all of them: capture vs plain SDPA forward.

    python3 bench/multi_gpu_70b.py [--shape llama3-70b] [--lengths 8192 32768] [--check-layers 20 60]

A Llama-3-70B-shaped model with random bf16 weights (about 141 GB) is built in code, each
layer made directly on its GPU, and placed the way ``device_map="auto"`` would (embeddings and
the first layers on cuda:0, ..., the last layers and the LM head on the last GPU; accelerate's
hooks move the hidden states). Per length: median time and peak allocated memory per GPU of a
plain SDPA forward (prefill, one logit row) and of sinkviz's capture (whose statistics pass the
invariant checks of sinkviz/engine/invariants.py, or it raises), side by side in one run. Then, for
each --check-layers index, the layer's statistics in the spread capture are compared with the
same layer captured alone on cuda:0 from the same inputs (a fresh copy of the layer there).
``--shape tiny --device cpu`` runs the whole script on a small model on the CPU (a smoke test).
Prints one table; asserts nothing.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402

from sinkviz.engine import capture as cap  # noqa: E402

SHAPES = {
    "llama3-70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                       num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000, rope_theta=500000.0),
}
STATS = ("sink_mass", "entropy", "received", "maps", "value_norm")


def layer_devices(n_layers: int, devices: list[str]) -> list[str]:
    """Equal runs of layers per device, in order (what "auto" gives for equal-sized layers)."""
    return [devices[i * len(devices) // n_layers] for i in range(n_layers)]


def build(shape: str, devices: list[str]) -> LlamaForCausalLM:
    """Random-weight model (std 0.02, norms 1), each part made on its device, then dispatched."""
    from accelerate import dispatch_model
    config = LlamaConfig(**SHAPES[shape], max_position_embeddings=131072)
    with torch.device("meta"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16, attn_implementation="sdpa")
    where = layer_devices(config.num_hidden_layers, devices)
    device_map = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0], "model.norm": devices[-1],
                  "lm_head": devices[-1], **{f"model.layers.{i}": d for i, d in enumerate(where)}}
    for name, device in device_map.items():
        module = model.get_submodule(name)
        module.to_empty(device=device)
        for pname, p in module.named_parameters():
            with torch.no_grad():
                p.fill_(1.0) if "norm" in pname else p.normal_(0.0, 0.02)
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(devices[0])   # its buffers, recomputed
    if devices[0] != "cpu":
        model = dispatch_model(model, device_map=device_map)
    return model.eval()


def sync(devices):
    for d in devices:
        if d != "cpu":
            torch.cuda.synchronize(d)


def timed(fn, repeats: int, devices: list[str]) -> tuple[float, list[float]]:
    """(median seconds, peak GiB allocated per GPU) of fn(), after one warm-up call."""
    fn()
    sync(devices)
    for d in devices:
        if d != "cpu":
            torch.cuda.reset_peak_memory_stats(d)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(devices)
        times.append(time.perf_counter() - start)
    peaks = [torch.cuda.max_memory_allocated(d) / 2**30 for d in devices if d != "cpu"]
    return statistics.median(times), peaks


def inputs_of(model, indices: list[int]):
    """Context manager-free recorder: forward pre-hooks keep (hidden, kwargs) of chosen layers."""
    saved, handles = {}, []
    for i in indices:
        def hook(_module, args, kwargs, i=i):
            hidden = args[0] if args else kwargs["hidden_states"]
            saved[i] = (hidden.detach().clone(), {k: v for k, v in kwargs.items() if k != "hidden_states"})
        handles.append(model.model.layers[i].register_forward_pre_hook(hook, with_kwargs=True))
    return saved, handles


def to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to(v, device) for v in value)
    return value


def layer_alone(model, index: int, hidden, kwargs, device: str, map_size: int) -> dict:
    """Statistics of one decoder layer run on its own on ``device`` (a fresh copy of its weights)."""
    with torch.device(device):
        layer = LlamaDecoderLayer(model.config, index).to(torch.bfloat16)
    layer.load_state_dict({k: v.to(device) for k, v in model.model.layers[index].state_dict().items()})
    recorder = cap._Recorder(map_size, 1)
    token = cap._recorder.set(recorder)
    try:
        with torch.no_grad():
            layer(hidden.to(device), **{k: to(v, device) for k, v in kwargs.items()})
    finally:
        cap._recorder.reset(token)
    arrays = recorder.host.result()
    return {name: arrays[name][0] for name in STATS}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="llama3-70b", choices=SHAPES)
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--check-layers", type=int, nargs="+", default=[20, 60])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = parser.parse_args()
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if args.device == "cuda" else ["cpu"]
    cap.register()
    start = time.perf_counter()
    model = build(args.shape, devices)
    where = layer_devices(model.config.num_hidden_layers, devices)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.1f}B parameters over {devices} "
          f"(built in {time.perf_counter() - start:.0f} s); {torch.__version__}, "
          f"{torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu'}", flush=True)
    print("| tokens | SDPA forward | sinkviz capture | time x | peak memory per GPU (forward -> capture) |")
    print("| --- | --- | --- | --- | --- |")
    checks = []
    for n in args.lengths:
        ids = torch.randint(10, model.config.vocab_size, (1, n), device=devices[0])

        def plain():
            with torch.no_grad():
                model(input_ids=ids, **cap.forward_kwargs(model))
        model.set_attn_implementation("sdpa")
        t_plain, m_plain = timed(plain, args.repeats, devices)
        model.set_attn_implementation(cap.ATTN_NAME)
        t_cap, m_cap = timed(lambda: cap.capture(model, ids), args.repeats, devices)
        memory = ", ".join(f"{a:.1f} -> {b:.1f} GiB ({b / a:.3f}x)" for a, b in zip(m_plain, m_cap))
        print(f"| {n // 1024}K | {t_plain:.2f} s | {t_cap:.2f} s | {t_cap / t_plain:.2f} | {memory} |", flush=True)
        saved, handles = inputs_of(model, args.check_layers)
        try:
            stats = cap.capture(model, ids)
        finally:
            for handle in handles:
                handle.remove()
        for i in args.check_layers:
            alone = layer_alone(model, i, *saved.pop(i), devices[0], 128)
            errors = {name: float(abs(getattr(stats, name)[i] - alone[name]).max()) for name in STATS}
            checks.append(f"{n // 1024}K, layer {i} (spread: {where[i]}, alone: {devices[0]}): "
                          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    print("\nmax |spread - one layer alone| per statistic:")
    print("\n".join(checks))


if __name__ == "__main__":
    main()
