"""Command line: ``python -m sinkviz analyze --prompt TEXT [--json]``, ``models --coverage`` and friends.

Bad input exits with status 2 and one line on stderr; the table or JSON goes to stdout.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from sinkviz.errors import BadSetting, SinkvizError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line on stderr (exit 2), no usage block."""

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"sinkviz: {message}\n")


def _token_count(text: str) -> int:
    """--max-tokens: a whole number of at least 2 (a sink statistic needs two tokens)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:40]!r}") from None
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, not {value}")
    return value


def _fraction(text: str) -> float:
    """--epsilon: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, not {text[:40]!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from sinkviz.flow.embedded import DEFAULT_MODEL
    from sinkviz.numbers.segments import BLOCK_RULES
    parser = _Parser(prog="python -m sinkviz",
                                     description="See attention sinks in transformer models.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("analyze", help="sink statistics of one prompt")
    src = run.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    run.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"embedded name, local folder or Hugging Face id (default {DEFAULT_MODEL})")
    run.add_argument("--first", type=int, default=3, metavar="N",
                     help="sink mass over the first N tokens, 1..8 (default 3)")
    run.add_argument("--no-template", action="store_true", help="do not apply the chat template")
    run.add_argument("--system", help="system turn for the chat template")
    run.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    run.add_argument("--dtype", help="float32, bfloat16, float16 or float64 (default: auto)")
    run.add_argument("--max-tokens", type=_token_count, help="refuse prompts longer than this")
    run.add_argument("--epsilon", type=_fraction, default=0.3, help="sink-rate threshold (default 0.3)")
    run.add_argument("--blocks", choices=sorted(BLOCK_RULES), metavar="RULE",
                     help="split the user's text into blocks for the segment shares: "
                          + "; ".join(f"'{k}': {v}" for k, v in BLOCK_RULES.items()))
    run.add_argument("--calibrate", action="store_true",
                     help="judge against this model: run the shipped calibration prompts once (kept), "
                          "and add each reading's percentile")
    run.add_argument("--json", action="store_true", help="one JSON object on stdout")
    run.add_argument("--report", metavar="OUT.html",
                     help="also write a one-file HTML report (every chart, opens offline) to OUT.html")
    sweep = sub.add_parser("sweep", help="sink mass per layer as the context grows")
    text = sweep.add_mutually_exclusive_group()
    text.add_argument("--text", help="the text (default: the shipped Declaration of Independence)")
    text.add_argument("--file", help="read the text from this file ('-' for stdin)")
    sweep.add_argument("--model", default=DEFAULT_MODEL, help="as for analyze")
    sweep.add_argument("--first", type=int, default=3, metavar="N", help="sink = the first N tokens (1..8)")
    sweep.add_argument("--max-tokens", type=_token_count, help="longest prefix to analyse")
    sweep.add_argument("--device", help="cuda, mps or cpu (default: best available)")
    sweep.add_argument("--dtype", help="as for analyze")
    sweep.add_argument("--json", action="store_true", help="one JSON object on stdout")
    audit = sub.add_parser("audit", help="audit every prompt of a CSV or JSONL file")
    audit.add_argument("file", help="CSV (column 'prompt', else the first) or JSONL (field 'prompt')")
    audit.add_argument("--model", default=DEFAULT_MODEL, help="as for analyze")
    audit.add_argument("--first", type=int, default=3, metavar="N", help="sink = the first N tokens (1..8)")
    audit.add_argument("--no-template", action="store_true", help="do not apply the chat template")
    audit.add_argument("--csv", metavar="OUT", help="also write the table as CSV to OUT")
    audit.add_argument("--report", metavar="OUT.html",
                       help="also write a one-file HTML report (summary and table, most unusual first) to OUT.html")
    audit.add_argument("--calibrate", action="store_true",
                       help="with --report: judge each prompt against this model (runs the shipped calibration "
                            "prompts once, kept) and give its percentile")
    audit.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                       help="spread the work over a Ray cluster (ADDRESS, e.g. ray://host:10001 or auto; "
                            "none: a local one); needs requirements-ray.txt")
    audit.add_argument("--workers", type=int, metavar="N",
                       help="with --ray: model replicas (default: one per GPU, else 2; more than the GPUs share them)")
    lab = sub.add_parser("lab", help="mitigation lab: attention scaling, sink tokens")
    lab_sub = lab.add_subparsers(dest="experiment", required=True)
    scale = lab_sub.add_parser("scale", help="scale the attention logits of the first K keys")
    scale.add_argument("--prompt", required=True)
    scale.add_argument("--k", type=int, default=10, help="keys to scale (default 10)")
    scale.add_argument("--gamma", type=float, default=0.85, help="logit factor (default 0.85)")
    window = lab_sub.add_parser("window", help="windowed attention with and without sink tokens")
    window.add_argument("--text", help="the text (default: the shipped Declaration of Independence)")
    window.add_argument("--file", help="read the text from this file")
    window.add_argument("--window", type=int, default=256)
    window.add_argument("--sinks", type=int, default=4)
    window.add_argument("--max-tokens", type=_token_count, help="tokens of the text to decode")
    for p in (scale, window):
        p.add_argument("--model", default=DEFAULT_MODEL, help="as for analyze")
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    sub.add_parser("prepare", help="convert the embedded default model once (about 20 s)")
    models = sub.add_parser("models", help="the embedded models; --coverage: which architectures work")
    models.add_argument("--coverage", action="store_true",
                        help="the committed sweep of every transformers architecture: exact, refused (why), ...")
    models.add_argument("--all", action="store_true", help="with --coverage: list the exact ones too")
    models.add_argument("--json", action="store_true", help="with --coverage: the table as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command not in ("prepare", "models"):
            from transformers.utils import logging as hf_logging

            from sinkviz.numbers.metrics import check_first_n
            hf_logging.set_verbosity_error()
            if getattr(args, "first", None) is not None:
                check_first_n(args.first, 10**9)  # range check before any model work
        if args.command == "prepare":
            return _prepare()
        if args.command == "models":
            return _models(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "audit":
            return _audit(args)
        if args.command == "lab":
            return _lab(args)
        return _analyze(args)
    except SinkvizError as err:
        print(f"sinkviz: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _prepare() -> int:
    from sinkviz.flow.embedded import DEFAULT_MODEL, MARKER, converted_dir, ensure_converted
    if not (converted_dir(DEFAULT_MODEL) / MARKER).exists():
        print("sinkviz: converting the embedded default model once (about 20 s) ...", file=sys.stderr)
    print(ensure_converted(DEFAULT_MODEL))
    return 0


def _models(args) -> int:
    """The embedded models, or the committed architecture-coverage table (no model is built)."""
    if (args.all or args.json) and not args.coverage:
        raise BadSetting("--all and --json go with --coverage (models --coverage [--all] [--json])")
    if args.coverage:
        from sinkviz.output.coverage import load_table, render
        table = load_table()
        print(json.dumps(table) if args.json else render(table, show_all=args.all))
        return 0
    from sinkviz.flow.embedded import DEFAULT_MODEL, EMBEDDED
    for name, entry in EMBEDDED.items():
        print(f"{name:<28} {entry.label}" + ("  (default)" if name == DEFAULT_MODEL else ""))
    return 0


def _read_text(text: str | None, path: str | None) -> str:
    if text is not None:
        return text
    from sinkviz.errors import BadPrompt
    try:
        if path == "-":
            stream = getattr(sys.stdin, "buffer", None)
            data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as err:
        raise BadPrompt(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadPrompt(f"cannot read {path}: not UTF-8 text (byte {err.start:,})") from None


def _report_target(path: str | None) -> Path | None:
    """--report's file, checked before any work (so a long run is never lost to a bad path)."""
    if path is None:
        return None
    target = Path(path)
    if target.is_dir():
        raise BadSetting(f"cannot write the report to {path}: it is a folder")
    if not target.parent.is_dir():
        raise BadSetting(f"cannot write the report to {path}: there is no folder {target.parent}")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise BadSetting(f"cannot write the report to {path}: permission denied")
    return target


def _write_report(target: Path, text: str) -> None:
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as err:
        raise BadSetting(f"cannot write the report to {target}: {err.strerror or err}") from None
    print(f"sinkviz: report written to {target} ({len(text.encode()) / 1e6:.1f} MB)", file=sys.stderr)


def _sweep(args) -> int:
    from sinkviz.flow.analysis import Settings
    from sinkviz.flow.sweep import run_sweep, shipped_text

    text = shipped_text() if args.text is None and args.file is None else _read_text(args.text, args.file)
    settings = Settings(model=args.model, use_template=False, device=args.device, dtype=args.dtype)
    points = run_sweep(text, settings, max_tokens=args.max_tokens,
                       progress=lambda tick: print(f"sinkviz: sweep {tick.text}", file=sys.stderr))
    n = args.first - 1
    if args.json:
        print(json.dumps({"first_n": args.first, "points": [
            {"n_tokens": p.n_tokens, "key": p.key, "cached": p.cached,
             "sink_mass": [None if m != m else float(m) for m in p.sink_mass[:, n]]} for p in points]}))
        return 0
    print(f"sink mass (first {args.first} tokens, mean over heads) by context length")
    print(f"{'tokens':>7}  {'mean':>6}  {'max':>6} {'layer':>5}")
    for p in points:
        mass = p.sink_mass[:, n]
        print(f"{p.n_tokens:>7}  {np.nanmean(mass):>6.3f}  {np.nanmax(mass):>6.3f} {int(np.nanargmax(mass)):>5}"
              + ("  (store)" if p.cached else ""))
    return 0


def _audit(args) -> int:
    """Stream the file's prompts through the audit: each row printed, and written to --csv, as
    it completes; a progress line (prompts/s) on stderr. Nothing is printed or written before
    the first row, so a file refused outright leaves one line on stderr and no CSV."""
    import time

    from sinkviz.flow.analysis import Settings
    from sinkviz.flow.audit import audit_rows, stream_prompts

    settings = Settings(model=args.model, use_template=not args.no_template)
    target = _report_target(args.report)
    if args.ray:
        from sinkviz.flow.ray_audit import ray_audit_rows
        rows = ray_audit_rows(stream_prompts(args.file), settings, args.first,
                              address=None if args.ray == "local" else args.ray, workers=args.workers)
    else:
        rows = audit_rows(stream_prompts(args.file), settings, args.first)
    table, start, done = _AuditOutput(args.csv), time.perf_counter(), []
    try:
        for r in rows:
            table.write(r)
            if target:
                done.append(r)
            print(f"sinkviz: audit {r.row} done, {r.row / (time.perf_counter() - start):.1f} prompts/s",
                  file=sys.stderr)
    finally:
        table.close()
    if target:
        _write_report(target, _audit_report(args, settings, done))
    return 0


def _audit_report(args, settings, rows) -> str:
    """The audit's HTML report: the file's own columns kept, judged against the model with --calibrate."""
    from sinkviz.flow.audit import audited_model
    from sinkviz.flow.audit_table import file_columns
    from sinkviz.numbers.calibration import calibrate
    from sinkviz.output.html_report import audit_report
    extras = file_columns(Path(args.file).read_bytes(), Path(args.file).name)
    cal = calibrate(settings, progress=lambda step: print(f"sinkviz: calibration {step}", file=sys.stderr)) \
        if args.calibrate else None
    return audit_report(rows, extras, settings, args.first, calibration=cal, model=audited_model(rows))


class _AuditOutput:
    """The audit's table on stdout and in the --csv file, both begun at the first row."""

    def __init__(self, csv_path: str | None):
        self.csv_path, self.out, self.writer = csv_path, None, None

    def write(self, r) -> None:
        import csv

        from sinkviz.flow.audit import COLUMNS, csv_cells
        if self.writer is None:
            print(f"{'row':>4}  {'worst':>5}  {'sink mass':>9}  {'x uniform':>9}  {'severity':<9} first tokens / error")
            self.out = open(self.csv_path, "w", newline="", encoding="utf-8") if self.csv_path else None
            self.writer = csv.writer(self.out) if self.out else False
            if self.writer:
                self.writer.writerow(COLUMNS)
        if self.writer:
            self.writer.writerow(csv_cells(r))
            self.out.flush()
        print(f"{r.row:>4}  {r.worst_layer:>5}  {r.worst_sink_mass:>9.3f}  {r.ratio_to_uniform:>8.1f}x  "
              f"{r.severity:<9} {r.error or r.first_tokens}", flush=True)

    def close(self) -> None:
        if self.out:
            self.out.close()


def _lab(args) -> int:
    from sinkviz.flow.analysis import Settings
    from sinkviz.numbers.metrics import layer_sinks
    from sinkviz.flow.mitigation import WindowResult, attention_scaling, sink_token_experiment
    from sinkviz.flow.sweep import shipped_text

    if args.experiment == "scale":
        r = attention_scaling(args.prompt, Settings(model=args.model), args.k, args.gamma)
        report = {"k": r.first_keys, "gamma": r.gamma, "perplexity_before": r.perplexity_before,
                  "perplexity_after": r.perplexity_after, "kl_max": float(r.kl.max()),
                  "kl_mean": float(r.kl.mean()), "top5_before": r.top5_before, "top5_after": r.top5_after,
                  "sink_mass_before": layer_sinks(r.before, 3).sink_mass.tolist(),
                  "sink_mass_after": layer_sinks(r.after, 3).sink_mass.tolist()}
    else:
        text = shipped_text() if args.text is None and args.file is None else _read_text(args.text, args.file)
        r = sink_token_experiment(text, Settings(model=args.model), args.window, args.sinks, args.max_tokens)
        report = {"window": r.window, "sinks": r.sinks, "tokens": len(r.loss_full) + 1,
                  "perplexity_full": WindowResult.perplexity(r.loss_full),
                  "perplexity_with_sinks": WindowResult.perplexity(r.loss_sinks),
                  "perplexity_without_sinks": WindowResult.perplexity(r.loss_no_sinks)}
    if args.json:
        print(json.dumps(report, allow_nan=False))
    else:
        for name, value in report.items():
            if not name.startswith("sink_mass"):
                print(f"{name:>26}: {value}")
    return 0


def _analyze(args) -> int:
    from sinkviz.flow.analysis import Settings, analyze
    from sinkviz.output.report import report_dict

    prompt = _read_text(args.prompt, args.prompt_file)
    settings = Settings(model=args.model, use_template=not args.no_template, system=args.system,
                        device=args.device, dtype=args.dtype, max_tokens=args.max_tokens)
    target = _report_target(args.report)
    analysis = analyze(prompt, settings)
    report = report_dict(analysis, args.first, args.epsilon, blocks=args.blocks)
    cal = None
    if args.calibrate:
        from sinkviz.numbers.calibration import calibrate
        cal = calibrate(analysis.settings, progress=lambda step: print(f"sinkviz: calibration {step}", file=sys.stderr))
        report["against_model"] = _against_model(analysis, args.first, cal)
    print(json.dumps(report, allow_nan=False) if args.json else _table(report))
    if target:
        from sinkviz.output.html_report import analysis_report
        _write_report(target, analysis_report(analysis, args.first, args.epsilon, blocks=args.blocks, calibration=cal))
    return 0


def _against_model(analysis, first_n: int, cal) -> dict:
    """Each reading's deep-layer mean, percentile and label against the model's calibration ``cal``."""
    from sinkviz.numbers.calibration import judge, sentences
    from sinkviz.numbers.readings import READINGS, per_layer_reading
    out = {"n_prompts": cal.n_prompts, "sentences": sentences(cal, analysis, first_n)}
    for reading in READINGS:
        j = judge(cal, per_layer_reading(analysis, first_n, reading), reading, first_n)
        out[reading] = {"value": j.value, "percentile": j.percentile, "label": j.label,
                        "layer_percentiles": [None if p != p else float(p) for p in j.layer_percentiles]}
    return out


def _table(report: dict) -> str:
    n, rows = report["first_n"], report["layers"]
    learned = report["learned_sink"]
    windows = sorted({row["window"] for row in rows if row["window"] and row["window"] < len(report["token_ids"])})
    lines = [f"model {report['model']['label']} on {report['model']['device']} "
             f"({report['model']['dtype']}), {len(report['token_ids'])} tokens, "
             f"position 0 = {report['tokens_readable'][0]!r}",
             f"sink mass = attention on the first {n} tokens, mean over queries i >= {n} and heads; "
             f"uniform baseline {report['baseline']:.3f}"
             + (f" (sliding-window layers, window {', '.join(map(str, windows))}: their own, column 'uniform')"
                if windows else ""),
             f"{'layer':>5}  {'sink mass':>9}  " + (f"{'learned':>7}  " if learned else "")
             + (f"{'uniform':>7}  " if windows else "")
             + f"{'x uniform':>9}  {'severity':<9} top sink (position, token, received)"]
    for row in rows:
        flag = " *" if row["flagged"] else ""
        lines.append(f"{row['layer']:>5}  {row['sink_mass']:>9.3f}  "
                     + (f"{row['learned_sink']:>7.3f}  " if learned else "")
                     + (f"{row['uniform_baseline']:>7.3f}  " if windows else "")
                     + f"{row['ratio_to_uniform']:>8.1f}x  {row['severity']:<9} {row['top_sink_position']:>4} "
                     f"{report['tokens_readable'][row['top_sink_position']]!r} {row['top_sink_received']:.3f}{flag}")
    others = [f"{i} {kind}" for i, kind in enumerate(report["layer_kinds"]) if kind != "attention"]
    if others:
        lines.append("layers without softmax attention (not in the table): " + ", ".join(others))
    if learned:
        lines.append("learned = the learned sink's share: a softmax column no token owns (mean over queries and heads)")
    lines += report.get("against_model", {}).get("sentences", [])
    flagged = sum(row["flagged"] for row in rows)
    lines.append((f"* over {report['thresholds']['ratio_flag']:g}x uniform.  " if flagged else "")
                 + f"Sink rate (Gu et al., eps={report['epsilon']:g}): {report['sink_rate']:.1f}%"
                 + ("  (from the result store)" if report["cached"] else ""))
    return "\n".join(lines)
