"""Audit throughput: the audit against a plain batched SDPA forward of the same prompts.

    python3 bench/audit_throughput.py --shape llama3-8b --prompts 2000 [--ray 1 2]   # a GPU
    .venv/bin/python bench/audit_throughput.py --shape default --prompts 200        # the CPU

A synthetic library: prompts whose lengths are drawn uniformly from 50-2,000 tokens (seeded):
words of a word-level tokenizer for the random-weight shapes, windows of the shipped text for
the default model. ``--shape llama3-8b`` (or another of bench/gpu_long_context.py's shapes) saves a
random-weight bf16 model of that shape with a word-level tokenizer to --folder once; ``default``
is the embedded model. In one run, each on a fresh store: the plain SDPA forward of the prompts
in the audit's own batch plan (no statistics), the capture alone (capture_batch on that plan, head-mean
maps as an audit keeps them),
the audit end to end (tokenizing, capture, store; what `python -m sinkviz audit` does), the
batch-1 audit (one prompt per forward, as before batching), and with --ray N the Ray audit with
N workers (every cell of every row compared with the first Ray run's: keys and text equal,
the largest difference of a number printed).
Prints prompts/s, tokens/s and the share of the plain forward's token throughput.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.gpu_long_context import SHAPES  # noqa: E402
from sinkviz.engine import capture  # noqa: E402
from sinkviz.flow.analysis import BATCH_TOKENS, Settings, plan_batches  # noqa: E402
from sinkviz.flow.audit import audit_rows  # noqa: E402
from sinkviz.flow.models import get_model  # noqa: E402
from sinkviz.flow.store import ResultStore  # noqa: E402

WORDS = 2000


def word_tokenizer():
    """Whitespace word-level fast tokenizer over w0..w1999 (one token per word, no specials added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, **{f"w{i}": i + 1 for i in range(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


def saved_model(shape: str, folder: Path) -> str:
    """A random-weight bf16 model of ``shape`` saved as safetensors (once), for load_model and workers."""
    from transformers import LlamaConfig, LlamaForCausalLM
    if not (folder / "config.json").exists():
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlamaForCausalLM._from_config(LlamaConfig(**SHAPES[shape], max_position_embeddings=8192),
                                                  dtype=torch.bfloat16)
        model.save_pretrained(folder)
        word_tokenizer().save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
    return str(folder)


def library(n: int, longest: int = 2000, seed: int = 0, tokenizer=None) -> list[str]:
    """n prompts of 50..longest tokens (uniform), seeded: words w0..w1999 for the word-level
    tokenizer, else windows of the shipped public-domain text cut to that many of ``tokenizer``'s
    tokens (decoded, so a prompt re-tokenizes to about that length)."""
    rng = random.Random(seed)
    if tokenizer is None:
        return [" ".join(f"w{rng.randrange(WORDS)}" for _ in range(rng.randint(50, longest))) for _ in range(n)]
    from sinkviz.flow.sweep import shipped_text
    text = tokenizer(shipped_text())["input_ids"]
    text = text * -(-(longest + 1) // len(text))
    out = []
    for _ in range(n):
        size = rng.randint(50, longest)
        start = rng.randrange(len(text) - size)
        out.append(tokenizer.decode(text[start:start + size]))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="default", choices=["default", *SHAPES])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--folder", default=str(Path(tempfile.gettempdir()) / "sinkviz-bench-model"))
    parser.add_argument("--ray", type=int, nargs="*", default=[], metavar="WORKERS")
    parser.add_argument("--skip-batch1", action="store_true")
    parser.add_argument("--skip-local", action="store_true", help="only the plain forward and the Ray runs")
    parser.add_argument("--longest", type=int, default=2000, help="longest prompt in tokens (a smoke test: 100)")
    args = parser.parse_args()
    spec = "smollm2-135m-instruct" if args.shape == "default" else saved_model(args.shape, Path(args.folder))
    # one GPU for this process (a several-GPU host would spread the model with device_map="auto");
    # a Ray worker's cuda:0 is the GPU Ray gave it
    settings = Settings(model=spec, use_template=False, device="cuda:0" if torch.cuda.is_available() else None)
    loaded = get_model(spec, settings.device)
    prompts = library(args.prompts, args.longest, tokenizer=loaded.tokenizer if args.shape == "default" else None)
    ids = [loaded.tokenizer(p)["input_ids"] for p in prompts]
    tokens = sum(len(i) for i in ids)
    device = loaded.model.device
    plan = plan_batches(ids, BATCH_TOKENS.get(device.type, BATCH_TOKENS["cpu"]), len)
    print(f"{args.shape} on {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}, {loaded.info.dtype}: "
          f"{len(prompts)} prompts, {tokens:,} tokens, {len(plan)} batches; torch {torch.__version__}", flush=True)

    def plain():
        loaded.model.set_attn_implementation("sdpa")
        try:
            for batch in plan:
                lengths = [len(s) for s in batch]
                x = torch.zeros(len(batch), max(lengths), dtype=torch.long)
                mask = torch.zeros_like(x)
                for b, s in enumerate(batch):
                    x[b, :len(s)], mask[b, :len(s)] = torch.tensor(s), 1
                with torch.no_grad():
                    loaded.model(input_ids=x.to(device), attention_mask=mask.to(device), **capture.forward_kwargs(loaded.model))
        finally:
            loaded.model.set_attn_implementation(capture.ATTN_NAME)

    def audit(store_dir, **kw):
        return list(audit_rows(prompts, settings, store=ResultStore(store_dir), **kw))

    warm = plan[:1]
    plan, cold = warm, plan
    plain()                                                       # warm-up: kernels, allocator
    capture.capture_batch(loaded.model, warm[0], 128)
    plan = cold
    runs = Runs(len(prompts), tokens)
    runs["plain SDPA forward, batched"] = timed(plain)
    if not args.skip_local:
        runs["capture only, batched (head-mean maps, as an audit)"] = timed(
            lambda: [capture.capture_batch(loaded.model, b, 128, head_maps=False) for b in plan])
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_local:
            runs["audit, batched (end to end)"] = timed(lambda: audit(Path(tmp) / "a"))
        if not args.skip_batch1 and not args.skip_local:
            from sinkviz.flow import analysis
            budget = dict(analysis.BATCH_TOKENS)
            analysis.BATCH_TOKENS.update({k: 1 for k in budget})          # one prompt per forward
            try:
                runs["audit, batch 1 (end to end)"] = timed(lambda: audit(Path(tmp) / "b"))
            finally:
                analysis.BATCH_TOKENS.update(budget)
        first = None
        for workers in args.ray:
            from sinkviz.flow.ray_audit import ray_audit_rows
            rows = []
            runs[f"Ray audit, {workers} worker(s)"] = timed(lambda: rows.extend(ray_audit_rows(
                prompts, settings, workers=workers, store=ResultStore(Path(tmp) / f"ray{workers}"))))
            first = first or rows
            same, worst = rows_agree(rows, first)
            print(f"  Ray {workers}: rows {len(rows)}, keys and text cells equal to the first Ray run's: {same}, "
                  f"max |difference| of a number cell {worst:.1e}", flush=True)


def rows_agree(rows: list, first: list) -> tuple[bool, float]:
    """(every row's key, text and whole-number cells equal, largest |difference| of a float cell)."""
    from dataclasses import astuple
    same, worst = len(rows) == len(first), 0.0
    for a, b in zip(rows, first):
        for x, y in zip(astuple(a), astuple(b)):
            if isinstance(x, float):
                worst = max(worst, 0.0 if x == y or (x != x and y != y) else abs(x - y))
            else:
                same &= x == y
    return same, worst


class Runs(dict):
    """Run name -> seconds; each printed as a table row the moment it is measured."""

    def __init__(self, prompts: int, tokens: int):
        super().__init__()
        self.prompts, self.tokens = prompts, tokens
        print("| run | seconds | prompts/s | tokens/s | share of the plain forward's tokens/s |")
        print("| --- | --- | --- | --- | --- |", flush=True)

    def __setitem__(self, name: str, seconds: float) -> None:
        super().__setitem__(name, seconds)
        base = next(iter(self.values()))
        print(f"| {name} | {seconds:.1f} | {self.prompts / seconds:.1f} | {self.tokens / seconds:,.0f} | "
              f"{base / seconds:.0%} |", flush=True)


if __name__ == "__main__":
    main()
