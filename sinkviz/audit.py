"""Batch prompt audit: one row per prompt with its first tokens, worst layer and flags.

Every prompt goes through the result store, so a re-run is instant and an interrupted audit
resumes where it stopped. A prompt that fails gets its reason in its row; the others go on.
"""

import csv
import io
import json
import re
from dataclasses import asdict, dataclass, replace

import numpy as np

from .analysis import Progress, Settings, analyze
from .errors import BadPrompt, SinkvizError
from .export import csv_row
from .metrics import Thresholds, layer_sinks
from .readings import audit_columns
from .store import ResultStore

SURROGATES = re.compile("[\ud800-\udfff]")   # not text: shown as U+FFFD in rows and CSV
MAX_FILE_BYTES = 5 * 2**20
MAX_ROWS = 500
COLUMNS = ("row", "prompt", "first_tokens", "n_tokens", "worst_layer", "worst_sink_mass",
           "ratio_to_uniform", "flagged_layers", "severity", "sequence_first_tokens", "mean_sink_mass", "user_opening_mass",
           "share_template", "share_system", "share_user", "share_learned_sink", "key", "error")


@dataclass(frozen=True)
class AuditRow:
    row: int
    prompt: str
    first_tokens: str = ""           # the user's first tokens (the sequence's where there is no template)
    n_tokens: int = 0
    worst_layer: int = -1            # deep layer with the highest sink mass
    worst_sink_mass: float = float("nan")
    ratio_to_uniform: float = float("nan")
    flagged_layers: int = 0          # deep layers over the ratio flag
    severity: str = ""               # of the worst layer: ok / warning / critical
    key: str = ""                    # store key, to open the analysis
    error: str = ""                  # why this prompt has no numbers
    sequence_first_tokens: str = ""  # position 0 onwards (with a template: the template's tokens)
    mean_sink_mass: float = float("nan")      # readings.audit_columns: deep-layer means
    user_opening_mass: float = float("nan")
    share_template: float = float("nan")
    share_system: float = float("nan")
    share_user: float = float("nan")
    share_learned_sink: float = float("nan")


@dataclass(frozen=True)
class BadRow:
    """A row of a prompts file that could not be read: it gets this error, the others go on."""
    error: str


def read_prompts(data: bytes, filename: str) -> list[str | BadRow]:
    """Prompts from a CSV (column 'prompt', else the first) or JSONL (field 'prompt', or a string
    per line); an unreadable row becomes a BadRow. Raises BadPrompt past MAX_FILE_BYTES or
    MAX_ROWS, on a file that is not UTF-8 text, or where it is malformed as a whole."""
    if len(data) > MAX_FILE_BYTES:
        raise BadPrompt(f"{filename} has {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise BadPrompt(f"{filename} is not UTF-8 text (line {line})") from None
    prompts = _jsonl(text, filename) if filename.lower().endswith((".jsonl", ".json")) else _csv(text, filename)
    return _checked(prompts, filename)


def prompts_from_lines(text: str) -> list[str]:
    """Pasted prompts: one per non-blank line, taken as they are (commas included)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        raise BadPrompt(f"the pasted text has {len(text.encode('utf-8', 'surrogatepass')):,} bytes; "
                        f"the limit is {MAX_FILE_BYTES:,}")
    return _checked([line for line in text.splitlines() if line.strip()], "the pasted text")


def _checked(prompts: list, filename: str) -> list:
    if not prompts:
        raise BadPrompt(f"{filename} holds no prompts")
    if all(isinstance(p, BadRow) for p in prompts):
        raise BadPrompt(f"{filename} holds no readable prompt ({prompts[0].error})")
    if len(prompts) > MAX_ROWS:
        raise BadPrompt(f"{filename} has {len(prompts):,} prompts; the limit is {MAX_ROWS:,}")
    return prompts


def _csv_records(text: str, filename: str) -> list[tuple[int, list[str] | BadRow]]:
    """(first line, fields or BadRow) per record; an unclosed quote is a BadPrompt naming its line."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES + 1))
    reader, records = csv.reader(io.StringIO(text), strict=True), []
    while True:
        line = reader.line_num + 1
        try:
            records.append((line, next(reader)))
        except StopIteration:
            return records
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise BadPrompt(f"{filename} line {line}: a quoted field is never closed "
                                "(the rest of the file would be one prompt)") from None
            records.append((line, BadRow(f"line {line}: {err}")))


def _csv(text: str, filename: str) -> list[str | BadRow]:
    records = [(n, r) for n, r in _csv_records(text, filename) if r != []]
    if not records:
        return []
    header = records[0][1]
    has_header = isinstance(header, list) and "prompt" in header
    column = header.index("prompt") if has_header else 0
    prompts = []
    for line, row in records[1:] if has_header else records:
        if isinstance(row, BadRow) or len(row) > column:
            prompts.append(row if isinstance(row, BadRow) else row[column])
        else:
            prompts.append(BadRow(f"line {line} has no column {column + 1}"))
    return prompts


def _jsonl(text: str, filename: str) -> list[str | BadRow]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            prompts.append(BadRow(f"line {number} is not JSON"))
            continue
        prompt = item.get("prompt") if isinstance(item, dict) else item
        prompts.append(prompt if isinstance(prompt, str) else BadRow(f"line {number} has no 'prompt' string"))
    return prompts


def audit_row(index: int, prompt: str | BadRow, settings: Settings, first_n: int, thresholds: Thresholds,
              store: ResultStore | None) -> AuditRow:
    if isinstance(prompt, BadRow):
        return AuditRow(index, "", error=prompt.error)
    try:
        result = analyze(prompt, settings, store=store)
        sinks = layer_sinks(result.stats, first_n, thresholds)
    except SinkvizError as err:
        return AuditRow(index, SURROGATES.sub("\ufffd", prompt), error=str(err))
    deep = np.arange(len(sinks.sink_mass)) >= thresholds.shallow_layers
    worst = int(np.where(deep, sinks.sink_mass, -1.0).argmax())
    return replace(AuditRow(index, prompt, " · ".join(repr(t) for t in result.tokens.tokens[:4]),
                    result.stats.n_tokens, worst, float(sinks.sink_mass[worst]), float(sinks.ratio[worst]),
                    int(sinks.flagged.sum()), sinks.severity[worst], result.key),
                   **audit_columns(result, first_n, thresholds))


def audit(prompts: list[str | BadRow], settings: Settings, first_n: int = 3, thresholds: Thresholds = Thresholds(),
          *, store: ResultStore | None = None, progress: Progress | None = None) -> list[AuditRow]:
    """One row per prompt; ``progress`` gets 'i/total' before each."""
    rows = []
    for i, prompt in enumerate(prompts, start=1):
        if progress:
            progress(f"{i}/{len(prompts)}")
        rows.append(audit_row(i, prompt, settings, first_n, thresholds, store))
    return rows


def audit_csv(rows: list[AuditRow]) -> str:
    """The table as CSV; text cells that a spreadsheet would run as formulas are neutralised."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow(csv_row(asdict(row)[c] for c in COLUMNS))
    return out.getvalue()
