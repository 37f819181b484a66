"""Batch audit: known rows for a known file, resume without recompute, limits, CLI and page."""

import csv
import io
import json
from dataclasses import asdict
import numpy as np
import pytest

from conftest import random_words
from sinkviz.engine import capture
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.flow.audit import MAX_ROWS, BadRow, audit, audit_csv, prompts_from_lines, read_prompts
from sinkviz.cli import main
from sinkviz.errors import BadPrompt
from sinkviz.numbers.metrics import layer_sinks


@pytest.fixture
def settings(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16)


def test_known_file_gives_known_rows(settings, store):
    prompts = [random_words(20), "   ", random_words(35)]
    data = ("prompt\n" + "\n".join(f'"{p}"' for p in prompts)).encode()
    rows = audit(read_prompts(data, "p.csv"), settings, 2, store=store)
    assert [r.row for r in rows] == [1, 2, 3] and rows[1].error == "the prompt is empty"
    for row, prompt in zip([rows[0], rows[2]], [prompts[0], prompts[2]]):
        result = analyze(prompt, settings, store=store)
        mass = layer_sinks(result.stats, 2).sink_mass
        assert row.key == result.key and row.n_tokens == len(prompt.split()) + 1
        assert row.worst_layer == 2 + int(mass[2:].argmax()) and row.worst_sink_mass == pytest.approx(mass[row.worst_layer])
    table = list(csv.DictReader(io.StringIO(audit_csv(rows))))
    assert [t["error"] for t in table] == ["", "the prompt is empty", ""]
    assert float(table[0]["worst_sink_mass"]) == pytest.approx(rows[0].worst_sink_mass)


def test_interrupted_audit_resumes_without_recomputing(settings, store, monkeypatch):
    """Killed after row 3 of 5 in chunks of 2: rows 1-4 were finished (their chunks completed and
    were stored), so the re-run computes prompt 5 alone, and its rows equal a fresh audit's."""
    from sinkviz.flow import analysis
    from sinkviz.flow.audit import audit_rows
    prompts = [random_words(15 + i) for i in range(5)]
    computed, real = [], analysis._capture_many
    monkeypatch.setattr(analysis, "_capture_many", lambda loaded, seqs, *a: computed.extend(seqs) or real(loaded, seqs, *a))
    with pytest.raises(KeyboardInterrupt):
        for row in audit_rows(prompts, settings, store=store, chunk=2):
            if row.row == 3:
                raise KeyboardInterrupt
    assert len(computed) == 4
    computed.clear()
    rows = audit(prompts, settings, store=store)
    assert len(computed) == 1 and all(r.key for r in rows)
    fresh = audit(prompts, settings, store=type(store)(store.directory + "-fresh"))
    for got, want in zip(rows, fresh):    # floats within the rounding of another batch's matmuls
        for name, value in asdict(got).items():
            expected = getattr(want, name)
            assert value == (pytest.approx(expected, rel=1e-6, nan_ok=True) if isinstance(value, float) else expected)


@pytest.mark.parametrize("data,name,message", [
    (b"x" * (5 * 2**20 + 1), "big.csv", "big.csv has 5,242,881 bytes; the limit is 5,242,880"),
    (("\n".join(["p"] * (MAX_ROWS + 1))).encode(), "many.csv", f"many.csv has {MAX_ROWS + 1} prompts; the limit is {MAX_ROWS}"),
    (b'not json\n', "bad.jsonl", "bad.jsonl holds no readable prompt (line 1 is not JSON)"),
    (b'{"text": "a"}\n', "bad.jsonl", "bad.jsonl holds no readable prompt (line 1 has no 'prompt' string)"),
    (b"\xff\xfe", "bin.csv", "bin.csv is not UTF-8 text (line 1)"),
    (b"prompt\nw1 w2\nw3\n\"w4 w5\nw6\n", "q.csv",
     "q.csv line 4: a quoted field is never closed (the rest of the file would be one prompt)"),
    (b"", "empty.csv", "empty.csv holds no prompts"),
])
def test_file_limits_and_errors(data, name, message):
    with pytest.raises(BadPrompt) as info:
        read_prompts(data, name)
    assert str(info.value) == message


def test_pasted_lines_keep_commas():
    assert prompts_from_lines("a, b\n\n  \nc") == ["a, b", "c"]


def test_jsonl_and_headerless_csv():
    assert read_prompts(b'{"prompt": "a b"}\n"c d"\n\n', "x.jsonl") == ["a b", "c d"]
    assert read_prompts(b"first,other\nsecond,x\n", "x.csv") == ["first", "second"]


def test_cli_audit_writes_csv(tiny_models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))
    src = tmp_path / "prompts.jsonl"
    prompts = [random_words(12), random_words(18)]
    src.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    out = tmp_path / "audit.csv"
    assert main(["audit", str(src), "--model", tiny_models["gpt2"], "--csv", str(out)]) == 0
    table = list(csv.DictReader(out.open()))
    assert [t["prompt"] for t in table] == prompts
    assert main(["audit", str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.endswith("sinkviz: cannot read " + str(tmp_path / "missing.csv") +
                                            ": No such file or directory\n")


def test_audit_page_rows_equal_engine(app_test):
    at = app_test()
    at.switch_page("pages/audit.py").run()
    prompts = ["You are a helpful assistant.", "Assistant: be brief, and then, be kind."]  # commas kept
    at.text_area(key="au_text").set_value("\n".join(prompts))
    at.toggle(key="au_calibrate").set_value(False)           # the calibration has its own tests
    at.button[0].click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value.sort_values("row")
    for prompt, (_, row) in zip(prompts, table.iterrows()):
        mass = layer_sinks(analyze(prompt, Settings()).stats, 3).sink_mass
        assert row["worst layer"] == 2 + int(np.argmax(mass[2:]))
        assert row["sink mass (worst layer)"] == pytest.approx(mass[2:].max())


FORMULAS = [start + " w1 w2 w3 w4" for start in ["=cmd|' /C calc'!A0", "+w1", "-w1", "@SUM(A1)", "\tw1", "\rw1"]]


def test_formula_cells_are_neutralised_in_the_cli_csv(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))
    src = tmp_path / "prompts.jsonl"
    src.write_text("\n".join(json.dumps({"prompt": p}) for p in FORMULAS + ["w1 w2 = w3 w4"]))
    out = tmp_path / "audit.csv"
    assert main(["audit", str(src), "--model", tiny_models["gpt2"], "--csv", str(out)]) == 0
    table = list(csv.DictReader(out.open(newline="")))
    assert [t["prompt"] for t in table] == ["'" + p for p in FORMULAS] + ["w1 w2 = w3 w4"]
    assert all(not t["prompt"].startswith(("=", "+", "-", "@", "\t", "\r")) for t in table)
    rows = audit(FORMULAS, Settings(model=tiny_models["gpt2"]), store=None)
    assert [float(t["worst_sink_mass"]) for t in table[:6]] == pytest.approx([r.worst_sink_mass for r in rows])


def test_layers_csv_neutralises_text_but_keeps_negative_numbers():
    from sinkviz.output.export import csv_cell, layers_csv
    assert [csv_cell(v) for v in ["=1+1", "-x", "ok", -0.5, 3, None]] == ["'=1+1", "'-x", "ok", -0.5, 3, None]
    report = {"layers": [{"layer": 0, "sink_mass": -0.25, "ratio_to_uniform": 1.0, "flagged": False,
                          "severity": "=HYPERLINK(\"x\")", "entropy_nats": 1.0, "position0_received": 0.5,
                          "top_sink_position": 0, "top_sink_received": 0.5, "window": None,
                          "learned_sink": None, "heads_sink_mass": [-0.125]}]}
    header, row = list(csv.reader(io.StringIO(layers_csv(report))))
    cell = dict(zip(header, row))
    assert (cell["sink_mass"], cell["severity"], row[-1]) == ("-0.25", "'=HYPERLINK(\"x\")", "-0.125")


def test_one_bad_row_gets_its_own_error_and_the_rest_are_audited(settings, store):
    big = "w1 " * 70_000                      # a 210 KB field, over csv's default field limit
    data = ('prompt\nw1 w2 w3 w4\n"' + big + '"\n"w5 "x" w6\nw7 w8 w9\n').encode()
    prompts = read_prompts(data, "p.csv")
    assert prompts == ["w1 w2 w3 w4", big, BadRow("line 4: ',' expected after '\"'"), "w7 w8 w9"]
    rows = audit(prompts, settings, store=store)
    assert [r.error for r in rows] == ["", "the prompt has 70,001 tokens; the limit is 512", "line 4: ',' expected after '\"'", ""]
    assert rows[0].key and rows[3].key and rows[2].prompt == ""


def test_lone_surrogate_in_one_jsonl_row(settings, store):
    data = b'{"prompt": "w1 w2 w3 w4"}\n{"prompt": "w1 \\ud800 w2"}\nnot json\n{"prompt": "w5 w6 w7 w8"}\n'
    rows = audit(read_prompts(data, "p.jsonl"), settings, store=store)
    assert [r.error for r in rows] == [
        "", "the prompt is not valid text: character 4 is a lone surrogate (U+D800), e.g. from bytes that are not UTF-8",
        "line 3 is not JSON", ""]
    assert rows[0].key and rows[3].key
    assert rows[1].prompt == "w1 \ufffd w2"
    assert list(csv.DictReader(io.StringIO(audit_csv(rows))))[1]["prompt"] == "w1 \ufffd w2"


def test_rows_stream_with_at_most_a_chunk_read_ahead(settings, monkeypatch):
    """100,000 prompts: rows come out in order while the input is read at most one chunk ahead,
    so memory stays flat in the number of prompts (no model work: analyze_many is stubbed)."""
    from sinkviz.flow import audit as audit_module
    consumed = []

    def prompts():
        for i in range(100_000):
            consumed.append(i)
            yield f"w{i % 100} w1"
    monkeypatch.setattr(audit_module, "analyze_many",
                        lambda texts, *a, **k: ((i, BadPrompt(f"stub {t}")) for i, t in enumerate(texts)))
    count = 0
    for count, row in enumerate(audit_module.audit_rows(prompts(), settings, chunk=256), start=1):
        assert row.row == count and row.error == f"stub w{(count - 1) % 100} w1"
        assert len(consumed) <= count + 256
    assert count == 100_000


def test_stream_prompts_reads_lazily_and_names_bad_lines(tmp_path):
    from sinkviz.flow.audit import stream_prompts
    path = tmp_path / "big.csv"
    path.write_bytes(b"id,prompt\n" + b"".join(b"%d,w%d w1\n" % (i, i) for i in range(50_000)) + b"9,\xff\n")
    stream = stream_prompts(str(path))
    assert [next(stream) for _ in range(3)] == ["w0 w1", "w1 w1", "w2 w1"]
    with pytest.raises(BadPrompt, match="big.csv is not UTF-8 text \\(line 50002\\)"):
        list(stream)
    with pytest.raises(BadPrompt, match="cannot read .*missing.csv"):
        list(stream_prompts(str(tmp_path / "missing.csv")))
