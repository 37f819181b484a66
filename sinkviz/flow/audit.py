"""Batch prompt audit: one row per prompt with its first tokens, worst layer and flags.

Every prompt goes through the result store, so a re-run is instant and an interrupted audit
resumes where it stopped. A prompt that fails gets its reason in its row; the others go on.
"""

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sinkviz.flow.analysis import Analysis, Progress, Settings, analyze_many, load_stored
from sinkviz.errors import BadPrompt, SinkvizError
from sinkviz.output.export import csv_row
from sinkviz.numbers.metrics import Thresholds, layer_sinks
from sinkviz.numbers.readings import audit_columns
from sinkviz.flow.store import ResultStore

SURROGATES = re.compile("[\ud800-\udfff]")   # not text: shown as U+FFFD in rows and CSV
MAX_FILE_BYTES = 5 * 2**20
MAX_ROWS = 500                 # the page's limit; the CLI streams files of any size
CHUNK = 256                    # prompts analysed together (store hits, then batches)
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
    return _checked(list(parse_prompts(io.StringIO(text), filename)), filename)


def parse_prompts(lines: Iterable[str], filename: str) -> Iterator[str | BadRow]:
    """Prompts, one by one, from the lines of a CSV or JSONL file (read_prompts' formats)."""
    is_jsonl = filename.lower().endswith((".jsonl", ".json"))
    return _jsonl(lines, filename) if is_jsonl else _csv(lines, filename)


def stream_prompts(path: str) -> Iterator[str | BadRow]:
    """The prompts of a file of any size, read as they are audited (the CLI's path: no size or
    row limit, memory flat). BadPrompt, as read_prompts would, where it is not UTF-8 (naming the
    line) or holds no readable prompt (unreadable rows wait for the first readable one)."""
    name, waiting, readable = Path(path).name, [], False
    try:
        with open(path, "rb") as raw:
            for prompt in parse_prompts(_decoded(raw, name), name):
                if readable or not isinstance(prompt, BadRow):
                    yield from waiting
                    waiting, readable = [], True
                    yield prompt
                else:
                    waiting.append(prompt)
    except OSError as err:
        raise BadPrompt(f"cannot read {path}: {err.strerror}") from None
    if not readable:
        raise BadPrompt(f"{name} holds no readable prompt ({waiting[0].error})" if waiting else f"{name} holds no prompts")


def _decoded(raw: Iterable[bytes], filename: str) -> Iterator[str]:
    for number, line in enumerate(raw, start=1):
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            raise BadPrompt(f"{filename} is not UTF-8 text (line {number})") from None


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


def _csv_records(lines: Iterable[str], filename: str) -> Iterator[tuple[int, list[str] | BadRow]]:
    """(first line, fields or BadRow) per record; an unclosed quote is a BadPrompt naming its line."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FILE_BYTES + 1))
    reader = csv.reader(lines, strict=True)
    while True:
        line = reader.line_num + 1
        try:
            yield line, next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            if "unexpected end of data" in str(err):
                raise BadPrompt(f"{filename} line {line}: a quoted field is never closed "
                                "(the rest of the file would be one prompt)") from None
            yield line, BadRow(f"line {line}: {err}")


def _csv(lines: Iterable[str], filename: str) -> Iterator[str | BadRow]:
    column = None                                # of the prompt, once the first record is seen
    for line, row in _csv_records(lines, filename):
        if row == []:
            continue
        if column is None:
            has_header = isinstance(row, list) and "prompt" in row
            column = row.index("prompt") if has_header else 0
            if has_header:
                continue
        if isinstance(row, BadRow) or len(row) > column:
            yield row if isinstance(row, BadRow) else row[column]
        else:
            yield BadRow(f"line {line} has no column {column + 1}")


def _jsonl(lines: Iterable[str], filename: str) -> Iterator[str | BadRow]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            yield BadRow(f"line {number} is not JSON")
            continue
        prompt = item.get("prompt") if isinstance(item, dict) else item
        yield prompt if isinstance(prompt, str) else BadRow(f"line {number} has no 'prompt' string")


def audit_row(index: int, prompt: str | BadRow, settings: Settings, first_n: int, thresholds: Thresholds,
              store: ResultStore | None) -> AuditRow:
    """One prompt's row, on its own (audit_rows batches many)."""
    return next(audit_rows([prompt], settings, first_n, thresholds, store=store, start=index))


def row_of(index: int, prompt: str | BadRow, result: "Analysis | SinkvizError", first_n: int,
           thresholds: Thresholds) -> AuditRow:
    """The row of one prompt from its analysis, or its error."""
    if isinstance(prompt, BadRow):
        return AuditRow(index, "", error=prompt.error)
    if isinstance(result, SinkvizError):
        return AuditRow(index, SURROGATES.sub("\ufffd", prompt), error=str(result))
    try:
        sinks = layer_sinks(result.stats, first_n, thresholds)
    except SinkvizError as err:
        return AuditRow(index, prompt, error=str(err))
    ids = np.array(result.stats.layer_ids)                        # model layers (hybrids: attention ones)
    worst = int(np.where(ids >= thresholds.shallow_layers, sinks.sink_mass, -1.0).argmax())
    return replace(AuditRow(index, prompt, " · ".join(repr(t) for t in result.tokens.tokens[:4]),
                    result.stats.n_tokens, int(ids[worst]), float(sinks.sink_mass[worst]), float(sinks.ratio[worst]),
                    int(sinks.flagged.sum()), sinks.severity[worst], result.key),
                   **audit_columns(result, first_n, thresholds))


def audit_rows(prompts: Iterable[str | BadRow], settings: Settings, first_n: int = 3,
               thresholds: Thresholds = Thresholds(), *, store: ResultStore | None = None,
               chunk: int = CHUNK, start: int = 1) -> Iterator[AuditRow]:
    """One row per prompt, in order (numbered from ``start``), yielded as each chunk of
    ``chunk`` prompts completes: analyze_many answers stored prompts from the store and batches
    the rest, so memory stays flat however many prompts stream in, and a re-run after an
    interruption recomputes only prompts whose rows were never finished."""
    for rows in audit_chunks(prompts, settings, first_n, thresholds, store=store, chunk=chunk, start=start):
        yield from rows


def audit_chunks(prompts: Iterable[str | BadRow], settings: Settings, first_n: int = 3,
                 thresholds: Thresholds = Thresholds(), *, store: ResultStore | None = None,
                 chunk: int = CHUNK, start: int = 1) -> Iterator[list[AuditRow]]:
    """audit_rows' rows, a chunk's rows at a time, each list yielded once its chunk is stored."""
    for offset, part in enumerate(_chunks(prompts, chunk)):
        texts = [(i, p) for i, p in enumerate(part) if not isinstance(p, BadRow)]
        found = dict(analyze_many([p for _, p in texts], settings, store=store, head_maps=False))
        results = {i: found[k] for k, (i, _) in enumerate(texts)}
        yield [row_of(start + offset * chunk + i, prompt, results.get(i), first_n, thresholds)
               for i, prompt in enumerate(part)]


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    part = []
    for item in items:
        part.append(item)
        if len(part) == size:
            yield part
            part = []
    if part:
        yield part


def audit(prompts: list[str | BadRow], settings: Settings, first_n: int = 3, thresholds: Thresholds = Thresholds(),
          *, store: ResultStore | None = None, progress: Progress | None = None) -> list[AuditRow]:
    """One row per prompt; ``progress`` gets 'i/total' as row i is done."""
    rows = []
    for row in audit_rows(prompts, settings, first_n, thresholds, store=store):
        rows.append(row)
        if progress:
            progress(f"{row.row}/{len(prompts)}")
    return rows


def audited_model(rows: Iterable[AuditRow], store: ResultStore | None = None):
    """The models.ModelInfo the rows were computed with (from the first stored row), None if no row
    has numbers."""
    for row in rows:
        found = load_stored(store or ResultStore(), row.key) if row.key else None
        if found is not None:
            return found.model
    return None


def audit_csv(rows: Iterable[AuditRow]) -> str:
    """The table as CSV; text cells that a spreadsheet would run as formulas are neutralised."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerows(csv_cells(row) for row in rows)
    return out.getvalue()


def csv_cells(row: AuditRow) -> list:
    """One row's CSV cells, in COLUMNS order, formula-safe."""
    return csv_row(asdict(row)[c] for c in COLUMNS)
