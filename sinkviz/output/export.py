"""Downloads: per-layer CSV, an npz of maps and statistics, its metadata JSON."""

import csv
import io
import json
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np

from sinkviz.flow.analysis import Analysis

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

CSV_COLUMNS = ("layer", "sink_mass", "learned_sink", "ratio_to_uniform", "flagged", "severity", "entropy_nats",
               "position0_received", "top_sink_position", "top_sink_received", "window")


def csv_cell(value):
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP's
    advice), so it shows as the same text; numbers and other text are written unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(values) -> list:
    return [csv_cell(v) for v in values]


def layers_csv(report: dict) -> str:
    """One row per layer of ``report_dict``'s layers, plus one column per head's sink mass
    (learned_sink: empty for models without one)."""
    out = io.StringIO()
    heads = len(report["layers"][0]["heads_sink_mass"])
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS + tuple(f"head{h}_sink_mass" for h in range(heads)))
    for row in report["layers"]:
        writer.writerow(csv_row([row[c] for c in CSV_COLUMNS] + row["heads_sink_mass"]))
    return out.getvalue()


def metadata(analysis: Analysis) -> dict:
    """Model, tokens, settings and capture time of an analysis."""
    return {"model": asdict(analysis.model), "settings": asdict(analysis.settings),
            "prompt": analysis.prompt, "token_ids": list(analysis.tokens.token_ids),
            "tokens": list(analysis.tokens.tokens), "special": list(analysis.tokens.special),
            "templated": analysis.tokens.templated, "key": analysis.key,
            "created": datetime.fromtimestamp(analysis.created, timezone.utc).isoformat()}


def npz_bytes(analysis: Analysis) -> bytes:
    """Every statistic array, the token ids, and the metadata as a JSON string (no pickles)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **analysis.stats.to_arrays(),
                        token_ids=np.array(analysis.tokens.token_ids),
                        metadata_json=np.array(json.dumps(metadata(analysis))))
    return buffer.getvalue()
