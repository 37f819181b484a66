"""The audit table as a person reads it: the prompt first, the file's own columns kept (id, owner,
...), and a CSV of exactly the rows shown.

``file_columns`` reads the same file ``audit.read_prompts`` reads, record for record, so its i-th
dict belongs to the i-th prompt (audit row i + 1).
"""

import csv
import io
import json
import math
from dataclasses import asdict

from sinkviz.flow.audit import COLUMNS, AuditRow, _csv_records
from sinkviz.output.export import csv_row


def file_columns(data: bytes, filename: str) -> list[dict[str, str]]:
    """Per prompt of the file, its other columns (CSV with a header: every column but 'prompt';
    without one: 'column 2', ...; JSONL: every field but 'prompt', as text). Names that clash
    with the audit's own columns get a 'file_' prefix."""
    text = data.decode("utf-8-sig")
    if filename.lower().endswith((".jsonl", ".json")):
        found = [_json_fields(line) for line in text.splitlines() if line.strip()]
    else:
        found = _csv_fields(text, filename)
    return [{(f"file_{k}" if k in COLUMNS else k): v for k, v in row.items()} for row in found]


def _json_fields(line: str) -> dict[str, str]:
    try:
        item = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return {}
    if not isinstance(item, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in item.items() if k != "prompt"}


def _csv_fields(text: str, filename: str) -> list[dict[str, str]]:
    records = [r for _, r in _csv_records(io.StringIO(text), filename) if r != []]
    if not records:
        return []
    header = records[0]
    has_header = isinstance(header, list) and "prompt" in header
    column = header.index("prompt") if has_header else 0
    out = []
    for row in records[1:] if has_header else records:
        if not isinstance(row, list):
            out.append({})
            continue
        names = header if has_header else [f"column {k + 1}" for k in range(len(row))]
        out.append({names[k]: v for k, v in enumerate(row) if k != column and k < len(names)})
    return out


def extra_names(extras: list[dict[str, str]]) -> list[str]:
    """The file's column names in first-seen order."""
    names: dict[str, None] = {}
    for row in extras:
        names.update(dict.fromkeys(row))
    return list(names)


def filtered_csv(rows: list[AuditRow], extras: list[dict[str, str]], added: list[dict] | None = None) -> str:
    """``rows`` (already filtered) as CSV: the prompt first, then the file's columns, then ``added``
    (per row, e.g. the percentile), then the audit's; text a spreadsheet would run as a formula
    is neutralised."""
    names, added = extra_names(extras), added or [{} for _ in rows]
    more = list(added[0]) if added else []
    ours = [c for c in COLUMNS if c != "prompt"]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt"] + names + more + ours)
    for row, plus in zip(rows, added):
        extra = extras[row.row - 1] if row.row - 1 < len(extras) else {}
        values = asdict(row)
        writer.writerow(csv_row([values["prompt"]] + [extra.get(n, "") for n in names]
                                + [plus.get(c, "") for c in more] + [values[c] for c in ours]))
    return out.getvalue()


def judged(rows: list[AuditRow], cal, reading: str, first_n: int) -> list[dict]:
    """Per row: the reading's deep-layer mean, its percentile against ``cal`` (a Calibration, or
    None) and the label; NaN / '' where the row has no numbers or there is no calibration."""
    from sinkviz.numbers.calibration import judge_value
    out = []
    for row in rows:
        value = row.user_opening_mass if reading == "user" else row.mean_sink_mass
        pct, text = judge_value(cal, value, reading, first_n) if cal is not None and not row.error else (float("nan"), "")
        out.append({"reading": value, "percentile": pct, "against_model": text})
    return out


BANDS = ("unusual, high", "typical", "unusual, low", "not judged")


def band(pct: float) -> str:
    """Which of BANDS a row's percentile falls in (calibration.TYPICAL bounds the typical band)."""
    from sinkviz.numbers.calibration import TYPICAL
    if math.isnan(pct):
        return "not judged"
    return "unusual, high" if pct > TYPICAL[1] else "unusual, low" if pct < TYPICAL[0] else "typical"


def most_unusual_first(pairs: list[tuple[AuditRow, dict]]) -> list[tuple[AuditRow, dict]]:
    """(row, judged mark) pairs by percentile, highest first; rows not judged last, in file order."""
    return sorted(pairs, key=lambda rm: -rm[1]["percentile"] if not math.isnan(rm[1]["percentile"]) else math.inf)


def one_line(text: str) -> str:
    """A prompt on one line: newlines shown as ' ↵ '."""
    return text.replace("\r\n", "\n").replace("\n", " ↵ ")


def table_rows(pairs: list[tuple[AuditRow, dict]], extras: list[dict[str, str]], use_template: bool) -> list[dict]:
    """The audit table as the page shows it, one dict per (row, judged mark): the prompt on one line,
    the file's columns, the first tokens, the percentile and its label (next to them, so they are in
    view without scrolling), the reading, the worst layer and the shares (fractions, as computed)."""
    names = extra_names(extras)
    first = "your first tokens" if use_template else "first tokens"
    return [{"prompt": one_line(r.prompt),
             **{k: (extras[r.row - 1] if r.row - 1 < len(extras) else {}).get(k, "") for k in names},
             first: r.first_tokens, "percentile": m["percentile"], "against this model": m["against_model"],
             "reading": m["reading"], "worst layer": r.worst_layer,
             "sink mass (worst layer)": r.worst_sink_mass, "× uniform": r.ratio_to_uniform,
             "severity (fixed)": r.severity or "error", "share: template": r.share_template,
             "share: system": r.share_system, "share: your text": r.share_user,
             "tokens": r.n_tokens, "row": r.row, "error": r.error} for r, m in pairs]
