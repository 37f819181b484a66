"""Architecture coverage: every model type of transformers' causal-LM and masked-LM mappings,
as a new user would meet it. For each: a tiny random config (``tiny_configs``), saved as
safetensors with the word-level test tokenizer, ``load_model`` then ``capture`` of 40 random
tokens in float64 and float32 on CPU, each against the float64 eager reference.

Exact means: the float64 capture is within ATOL_FLOAT64 = 1e-12 of the reference on every
statistic (sink mass, entropy, received attention, maps, learned-sink mass: 0 where none is
captured) and on the causal flag, the model's own float64 output under sinkviz equals eager's
to 1e-9 (relative), and the float32 capture is within max(1e-4, 2 x floor) of the reference,
floor = the largest error of float32 eager itself. Both bounds were measured: minicpm3's float32
capture missed by 4.6e-5 where eager missed by 4.5e-5 (two independent float32 roundings),
gemma4_text's by 5.1e-5 where eager missed by 1.0e-5 while its float64 capture matched to 6e-17:
the float32 forward's own rounding, which one eager run only samples (on the same float32 inputs
sinkviz's attention and eager's miss alike, 2.0e-5 at gemma4_text's logits of 735). A
float32-specific bug (a half-precision sum, a lost mask) misses by far more. The float64
reference keeps float64 where eager would round a float64 model to float32 (a
softmax(dtype=float32); attention's .float() upcasts: GPT-J's scores, XLM's and MPT's softmax,
Inkling 2's learned sink), and so does the float64 capture (``float64_kept``).

    python tests/coverage_sweep.py [--readme]      # the whole sweep, writes sinkviz/data/coverage.json
    python tests/coverage_sweep.py --types llama,bert [--readme]   # re-sweeps those, replaces their rows
    python tests/coverage_sweep.py --types llama,bert --out /tmp/c.json  # (a new file: those rows alone)

Each architecture runs in a forked child with a timeout; the table records every outcome.
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, os.environ.get("SINKVIZ_SRC", str(Path(__file__).resolve().parent.parent)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

ATOL_FLOAT64 = 1e-12
ATOL_FLOAT32_MIN = 1e-4
FLOOR_FACTOR = 2
RTOL_OUTPUT = 1e-9
N_TOKENS, SEED = 40, 1234
STATS = ("sink_mass", "entropy", "received", "maps", "learned_sink")
TABLE = Path(__file__).resolve().parent.parent / "sinkviz" / "data" / "coverage.json"
# model type -> the inputs it needs beyond input_ids (such architectures are skipped, not failed)
NEEDS_INPUTS: dict[str, str] = {
    "musicgen": "audio codebook ids (num_codebooks rows per prompt)",
    "musicgen_melody": "audio codebook ids (num_codebooks rows per prompt)",
    "gemma4_assistant": "the target model's shared KV states (a speculative-decoding drafter)",
    "gemma4_unified_assistant": "the target model's shared KV states (a speculative-decoding drafter)",
}
# Types whose own code cannot run in float64 as transformers ships it: the float64 phase (capture
# and reference) runs with float64 as torch's default dtype. A user's float64 load is refused.
OWN_CODE_DEFAULT_DTYPE = {
    "xglm": "its attention clamps scores at torch.full((), finfo(float64).min) without a dtype: float32 overflows",
}
# Eager attention that returns weights renormalised over the tokens and applies the learned sink
# to the output instead (x sigmoid(lse - sink)): the reference rescales those weights the same way.
SINK_SCALED_EAGER = ("granite_swa", "granitemoe_swa")


@contextlib.contextmanager
def sink_in_weights(model_type: str):
    """Within this block, SINK_SCALED_EAGER models' eager weights are the softmax's share of each
    token, learned sink included: weights x sigmoid(lse - sink) (rows sum to 1 - sink)."""
    if model_type not in SINK_SCALED_EAGER:
        yield
        return
    import importlib
    from transformers.integrations.sdpa_attention import repeat_kv
    module = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    real = module.eager_attention_forward

    def scaled(mod, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        out, weights = real(mod, query, key, value, attention_mask, scaling, dropout, **kwargs)
        logits = query @ repeat_kv(key, mod.num_key_value_groups).transpose(2, 3) * scaling
        if attention_mask is not None:
            logits = logits + attention_mask
        keep = torch.sigmoid(torch.logsumexp(logits, -1) - mod.sinks.view(1, -1, 1).to(logits.dtype))
        return out, weights * keep.unsqueeze(-1).to(weights.dtype)
    module.eager_attention_forward = scaled
    try:
        yield
    finally:
        module.eager_attention_forward = real


def model_types() -> list[tuple[str, str]]:
    """(model type, mapping) for the causal-LM mapping, then the masked-LM mapping."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return ([(t, "causal") for t in sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)]
            + [(t, "masked") for t in sorted(MODEL_FOR_MASKED_LM_MAPPING_NAMES)])


def first_line(err: BaseException) -> str:
    """The error's type and first line; a last sentence that only announces the next line (ends
    in ':', e.g. "You can install it with pip:") left out."""
    line = (str(err).strip().splitlines() or [""])[0]
    if line.endswith(":") and ". " in line:
        line = line.rsplit(". ", 1)[0] + "."
    return f"{type(err).__name__}: " + line[:160]


def build(model_type: str, mapping: str, folder: Path) -> str:
    """Save the tiny random model of ``model_type`` into ``folder``; returns the folder."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from conftest import save_tiny_model
    from tiny_configs import tiny_config
    auto = AutoModelForCausalLM if mapping == "causal" else AutoModelForMaskedLM
    return save_tiny_model(tiny_config(model_type, mapping), folder, model_class=auto)


@contextlib.contextmanager
def float64_kept(model):
    """Where eager attention would round a float64 model to float32 (its softmax, its casts), it
    stays float64: around the reference, and around the float64 capture alike (an eager-path
    capture runs that code; a router's softmax(dtype=float32) too)."""
    from reference import float64_attention_casts, float64_softmax
    with float64_softmax(), float64_attention_casts(model):
        yield


@contextlib.contextmanager
def float64_by_default(model_type: str):
    """torch's default dtype float64 within this block, for the types of OWN_CODE_DEFAULT_DTYPE."""
    if model_type not in OWN_CODE_DEFAULT_DTYPE:
        yield
        return
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def eager(model_class, folder, ids, dtype, like=None):
    """Eager forward of the saved model: (attentions [layers, heads, L, L] float64, output). With
    ``like`` (the captured model), each weight in the dtype it has there: where loading left
    weights in float32, sinkviz casts them (``models.cast_stray_weights``: XLNet), eager alike."""
    model = model_class.from_pretrained(folder, dtype=dtype, attn_implementation="eager",
                                        experts_implementation="eager").eval()
    dtypes = {name: p.dtype for name, p in like.named_parameters()} if like is not None else {}
    for name, p in model.named_parameters():
        p.data = p.data.to(dtypes.get(name, p.dtype))
    with torch.no_grad(), float64_kept(model), sink_in_weights(model.config.model_type):
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    att = getattr(out, "attentions", None) or getattr(out, "decoder_attentions", None)
    if not att:
        return None, out
    return [None if a is None else a.to(torch.float64)[0].numpy() for a in att], out


def rows_of(att: list, stats) -> np.ndarray | None:
    """The reference maps [rows, heads, L, L] of the captured rows: eager returns one entry per
    layer, or (some hybrids) one per attention layer."""
    rows, kinds = getattr(stats, "layers", ()), getattr(stats, "layer_kinds", ())  # () before hybrids
    if rows and len(att) == len(kinds):
        att = [att[i] for i in rows]
    if len(att) != stats.n_layers or any(a is None or a.shape != att[0].shape for a in att):
        return None
    return np.stack(att)


def reference(att: np.ndarray, stats) -> dict:
    """Every statistic from the definitions; causal when eager's own maps are causal."""
    from reference import reference_stats
    causal = bool(np.all(np.triu(att, 1) == 0))
    return {**reference_stats(att, 128, causal=causal, width=stats.bin_width), "causal": causal}


def errors(stats, ref: dict) -> dict:
    """Largest absolute error per statistic (NaN where both are NaN counts as equal)."""
    out = {}
    for name in STATS:
        got, want = getattr(stats, name), ref[name]
        if got is None:  # no learned sink captured: the reference's rows must give it nothing
            got = np.zeros_like(want)
        if got.shape != want.shape:
            out[name] = float("inf")
            continue
        diff = np.abs(np.where(np.isnan(want) & np.isnan(got), 0.0, got - want))
        out[name] = float(np.nan_to_num(diff, nan=np.inf).max())
    out["causal"] = 0.0 if stats.causal == ref["causal"] else 1.0
    return out


def first_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else next(v for v in out.values() if torch.is_tensor(v))


def check(model_type: str, mapping: str, workdir: Path) -> dict:
    """One architecture: exact / refused / skipped / wrong / crash, with what was measured."""
    from sinkviz.engine.capture import capture
    from sinkviz.errors import SinkvizError
    from sinkviz.flow.models import load_model
    row = {"type": model_type, "mapping": mapping}
    if model_type in NEEDS_INPUTS:
        return {**row, "status": "skipped", "reason": f"needs {NEEDS_INPUTS[model_type]}"}
    ids = torch.randint(4, 120, (1, N_TOKENS), generator=torch.Generator().manual_seed(SEED))
    phase, folder = "build", workdir / f"{model_type}-{mapping}"   # both mappings of a type may run at once
    try:
        folder = build(model_type, mapping, folder)
        phase = "float32"
        stats32 = capture(load_model(folder, device="cpu", dtype="float32").model, ids)
        phase = "float64"
        if model_type in OWN_CODE_DEFAULT_DTYPE:
            row["note"] = "float64 checked with torch's default dtype float64: " + OWN_CODE_DEFAULT_DTYPE[model_type]
        with float64_by_default(model_type):
            loaded = load_model(folder, device="cpu", dtype="float64")
            row["class"] = type(loaded.model).__name__
            with float64_kept(loaded.model):
                stats = capture(loaded.model, ids)
            phase = "reference"
            att, out64 = eager(type(loaded.model), folder, ids, torch.float64, like=loaded.model)
            att = None if att is None else rows_of(att, stats)
            if att is None:
                return {**row, "status": "crash", "reason": "eager returns no attention weights to compare with"}
            ref = reference(att, stats)
            row["err64"] = errors(stats, ref)
            with torch.no_grad(), float64_kept(loaded.model):
                mine = first_output(loaded.model(input_ids=ids, use_cache=False))
        if getattr(stats, "layer_kinds", ()):
            row["layer_kinds"] = list(stats.layer_kinds)
        want = first_output(out64)
        row["output_rel_err"] = float((mine - want).abs().max() / want.abs().max().clamp(min=1e-300))
        att32 = rows_of(eager(type(loaded.model), folder, ids, torch.float32)[0], stats)
        row["err32"] = errors(stats32, ref)
        floor = errors(_AsStats(att32, stats32, ref["causal"]), ref)
        row["floor32"] = max(v for k, v in floor.items() if k != "causal")
    except SinkvizError as err:
        reason = str(err).replace(str(folder), model_type)
        return {**row, "status": "refused", "reason": ("in float64: " if phase == "float64" else "") + reason,
                "phase": phase}
    except Exception as err:  # noqa: BLE001  (every other failure is recorded, never hidden)
        status = "skipped" if phase == "build" else "crash"
        reason = ("no tiny model: " if phase == "build" else f"{phase}: ") + first_line(err)
        return {**row, "status": status, "reason": reason, "trace": traceback.format_exc()[-1500:]}
    return {**row, **verdict(row)}


class _AsStats:
    """Float32 eager attention reduced like a capture, to measure the float32 floor."""

    def __init__(self, att, like, causal):
        from reference import reference_stats
        ref = reference_stats(att, 128, causal=causal, width=like.bin_width)
        self.__dict__.update({name: ref[name] for name in STATS}, causal=causal)


def verdict(row: dict) -> dict:
    """exact, or wrong with the statistics that missed."""
    tol32 = max(ATOL_FLOAT32_MIN, FLOOR_FACTOR * row["floor32"])
    missed = [f"{k} {v:.2g} (float64)" for k, v in row["err64"].items()
              if not v <= (0.0 if k == "causal" else ATOL_FLOAT64)]
    missed += [f"{k} {v:.2g} (float32, tolerance {tol32:.2g})" for k, v in row["err32"].items()
               if not v <= (0.0 if k == "causal" else tol32)]
    if not row["output_rel_err"] <= RTOL_OUTPUT:
        missed.append(f"model output changed by {row['output_rel_err']:.2g} (relative)")
    return {"status": "wrong", "reason": "; ".join(missed)} if missed else {"status": "exact"}


def _child(model_type, mapping, workdir, conn):
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    row = check(model_type, mapping, Path(workdir))
    conn.send({**row, "seconds": round(time.perf_counter() - start, 1)})


def run_all(types: list[tuple[str, str]], jobs: int, timeout: float, progress=print) -> list[dict]:
    """Each (type, mapping) in a forked child, ``jobs`` at a time; a child past ``timeout``
    seconds is killed and recorded as a timeout (a crash). The code under test is imported
    once, before the first fork, so every child runs the same code."""
    import conftest, reference, tiny_configs  # noqa: E401,F401
    import sinkviz.engine.capture, sinkviz.flow.models  # noqa: E401,F401
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    ctx = multiprocessing.get_context("fork")
    pending, running, rows = list(types), {}, []
    with tempfile.TemporaryDirectory(prefix="sinkviz-coverage-") as workdir:
        while pending or running:
            while pending and len(running) < jobs:
                model_type, mapping = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_child, args=(model_type, mapping, workdir, child), daemon=True)
                proc.start()
                running[proc] = (model_type, mapping, parent, time.monotonic())
            time.sleep(0.05)
            for proc, (model_type, mapping, parent, started) in list(running.items()):
                row = _collect(proc, model_type, mapping, parent, started, timeout)
                if row is not None:
                    del running[proc]
                    rows.append(row)
                    progress(f"{len(rows):>3}/{len(types)} {mapping:<6} {model_type:<28} {row['status']:<8} "
                             f"{row.get('reason', '')[:110]}")
    return rows


def _collect(proc, model_type, mapping, parent, started, timeout) -> dict | None:
    """The child's row once it is done, a timeout / crash row, or None while it runs."""
    if parent.poll():
        row = parent.recv()
        proc.join()
        return row
    if proc.is_alive() and time.monotonic() - started < timeout:
        return None
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"type": model_type, "mapping": mapping, "status": "crash",
                "reason": f"timeout after {timeout:.0f} s", "seconds": timeout}
    proc.join()
    return {"type": model_type, "mapping": mapping, "status": "crash",
            "reason": f"the process died (exit code {proc.exitcode})"}


def meta(seconds: float, jobs: int) -> dict:
    import transformers
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
            "seconds": round(seconds), "jobs": jobs, "tokens": N_TOKENS,
            "atol_float64": ATOL_FLOAT64, "atol_float32_min": ATOL_FLOAT32_MIN, "floor_factor": FLOOR_FACTOR}


def merged(old: dict, new: dict) -> dict:
    """``old``'s table with ``new``'s rows in place of its rows of the same (type, mapping), the
    re-sweep listed in meta["resweeps"]; both must come from the same transformers, torch and prompt."""
    for key in ("transformers", "torch", "tokens"):
        if old["meta"].get(key) != new["meta"][key]:
            raise SystemExit(f"the table was swept with {key} {old['meta'].get(key)}, this sweep with "
                             f"{new['meta'][key]}: sweep every type (no --types) to replace it")
    swept = {(r["type"], r["mapping"]) for r in new["rows"]}
    rows = [r for r in old["rows"] if (r["type"], r["mapping"]) not in swept] + new["rows"]
    resweep = {"date": new["meta"]["date"], "rows": sorted(f"{t} ({m})" for t, m in swept)}
    return {"meta": {**old["meta"], "resweeps": [*old["meta"].get("resweeps", ()), resweep]}, "rows": rows}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help="comma-separated model types (default: both mappings, all); their rows "
                        "replace those in an existing --out table")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--out", default=str(TABLE))
    parser.add_argument("--readme", action="store_true", help="also rewrite README's coverage section")
    args = parser.parse_args(argv)
    types = model_types()
    if args.types:
        wanted = set(args.types.split(","))
        unknown = wanted - {t for t, _ in types}
        if unknown:
            parser.error(f"not a model type of either mapping: {', '.join(sorted(unknown))}")
        types = [t for t in types if t[0] in wanted]
    start = time.perf_counter()
    rows = run_all(types, args.jobs, args.timeout, progress=lambda line: print(line, flush=True))
    table = {"meta": meta(time.perf_counter() - start, args.jobs), "rows": rows}
    from sinkviz.output.coverage import load_table, summary, update_readme
    print(summary(table))
    if args.types and Path(args.out).exists():
        table = merged(load_table(Path(args.out)), table)
    table["rows"].sort(key=lambda r: (r["mapping"] != "causal", r["type"]))
    Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    if args.readme:
        update_readme(Path(__file__).resolve().parent.parent / "README.md", load_table(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
