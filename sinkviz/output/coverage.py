"""Which architectures sinkviz captures exactly: the committed sweep table, read and printed.

``data/coverage.json`` is written by ``tests/coverage_sweep.py`` (tiny random configs of every
model type in transformers' causal-LM and masked-LM mappings, captured on CPU against a
float64 eager reference). Nothing here builds a model. Statuses:
exact (float64 within 1e-12, float32 within max(1e-4, twice float32 eager's own error)),
refused (sinkviz says why), skipped (needs inputs other than token ids), wrong, crash.
"""

import json
from collections import Counter
from pathlib import Path

TABLE = Path(__file__).resolve().parent.parent / "data" / "coverage.json"
STATUSES = ("exact", "refused", "skipped", "wrong", "crash")


def load_table(path: Path = TABLE) -> dict:
    """{"meta": {...}, "rows": [{"type", "mapping", "status", "reason"?, ...}]}."""
    return json.loads(Path(path).read_text())


def counts(table: dict) -> dict[str, Counter]:
    """mapping -> Counter of statuses."""
    out: dict[str, Counter] = {}
    for row in table["rows"]:
        out.setdefault(row["mapping"], Counter())[row["status"]] += 1
    return out


def summary(table: dict) -> str:
    """One line per mapping: total and the count of each status."""
    lines = []
    for mapping, c in counts(table).items():
        parts = ", ".join(f"{c[s]} {s}" for s in STATUSES if c[s])
        lines.append(f"{mapping}: {sum(c.values())} model types: {parts}")
    return "\n".join(lines)


def markdown(table: dict, statuses=("refused", "skipped", "wrong", "crash")) -> str:
    """The README section's body: the versions, the counts, and one row per non-exact type."""
    meta = table.get("meta", {})
    head = (f"transformers {meta.get('transformers', '?')}, torch {meta.get('torch', '?')}, "
            f"{meta.get('tokens', 40)} random tokens, CPU, swept {meta.get('date', '?')}"
            + "".join(f"; {len(r['rows'])} rows re-swept {r['date']}" for r in meta.get("resweeps", ())) + ".")
    rows = [r for r in table["rows"] if r["status"] in statuses]
    body = ["| model type | mapping | status | reason |", "|---|---|---|---|"]
    body += [f"| `{r['type']}` | {r['mapping']} | {r['status']} | {_cell(r.get('reason', ''))} |" for r in rows]
    exact = sorted(r["type"] for r in table["rows"] if r["status"] == "exact")
    return "\n".join([head, "", *(f"- {line}" for line in summary(table).splitlines()), "", *body, "",
                      f"Exact ({len(exact)}): " + ", ".join(f"`{t}`" for t in exact)])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")[:240]


def render(table: dict, show_all: bool = False) -> str:
    """Plain-text table for the terminal: every type (show_all) or the non-exact ones."""
    meta = table.get("meta", {})
    lines = [f"architecture coverage, transformers {meta.get('transformers', '?')} ({meta.get('date', '?')})",
             summary(table), ""]
    for r in table["rows"]:
        if show_all or r["status"] != "exact":
            lines.append(f"{r['mapping']:<6}  {r['type']:<28} {r['status']:<8} {r.get('reason', '')}")
    return "\n".join(lines)


README_START, README_END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def update_readme(readme: Path, table: dict) -> None:
    """Replace the README text between the coverage markers with ``markdown(table)``."""
    text = Path(readme).read_text()
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    Path(readme).write_text(f"{head}{README_START}\n{markdown(table)}\n{README_END}{tail}")
