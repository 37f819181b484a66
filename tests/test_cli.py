"""The CLI: a table, one JSON object with the documented fields, exit 2 on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sinkviz.flow.analysis import Settings, analyze
from sinkviz.cli import main
from sinkviz.numbers.metrics import layer_sinks

PROMPT = "You are a helpful assistant. Answer concisely."


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))


def test_json_holds_the_engine_numbers(capsys, default_model_dir):
    assert main(["analyze", "--prompt", PROMPT, "--json", "--first", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    engine = analyze(PROMPT, Settings())
    sinks = layer_sinks(engine.stats, 5)
    assert out["model"]["model_id"] == "smollm2-135m-instruct"
    assert out["token_ids"] == list(engine.tokens.token_ids)
    assert out["tokens"][0] == "<|im_start|>" and out["special"][0] is True
    assert [row["layer"] for row in out["layers"]] == list(range(30))
    np.testing.assert_allclose([r["sink_mass"] for r in out["layers"]], sinks.sink_mass, rtol=1e-12)
    np.testing.assert_allclose([r["heads_sink_mass"] for r in out["layers"]], sinks.heads_sink_mass)
    assert all(len(r["heads_sink_mass"]) == 9 for r in out["layers"])


def test_json_csv_and_npz_carry_the_learned_sink(capsys, sink_models, tmp_path):
    """gpt-oss: learned_sink per layer and head in the JSON equals the capture; the CSV has its
    column and the NPZ its arrays; a model without one says null."""
    import io
    from conftest import random_words
    from sinkviz.output.export import layers_csv, npz_bytes
    from sinkviz.output.report import report_dict
    prompt, folder = random_words(50), sink_models["gpt-oss"]
    assert main(["analyze", "--model", folder, "--prompt", prompt, "--no-template", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    engine = analyze(prompt, Settings(model=folder, use_template=False))
    assert out["learned_sink"] is True
    np.testing.assert_allclose([r["heads_learned_sink"] for r in out["layers"]], engine.stats.learned_sink, rtol=1e-6)
    np.testing.assert_allclose([r["learned_sink"] for r in out["layers"]], engine.stats.learned_sink.mean(1), rtol=1e-6)
    rows = layers_csv(report_dict(engine)).splitlines()
    column = rows[0].split(",").index("learned_sink")
    assert float(rows[1].split(",")[column]) == pytest.approx(engine.stats.learned_sink[0].mean(), rel=1e-6)
    arrays = np.load(io.BytesIO(npz_bytes(engine)))
    np.testing.assert_array_equal(arrays["learned_sink_map"], engine.stats.learned_sink_map)
    assert main(["analyze", "--model", sink_models["gemma2"], "--prompt", prompt, "--no-template", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"][0]["learned_sink"] is None
    assert main(["analyze", "--model", folder, "--prompt", prompt, "--no-template"]) == 0     # the table
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("layer"))
    assert header.split()[:3] == ["layer", "sink", "mass"] and "learned" in header.split()
    first_row = next(line.split() for line in lines if line[:5].strip() == "0")
    assert float(first_row[2]) == pytest.approx(out["layers"][0]["learned_sink"], abs=5e-4)


def test_table_and_template_switch(capsys, default_model_dir):
    assert main(["analyze", "--prompt", PROMPT, "--no-template"]) == 0
    text = capsys.readouterr().out
    assert "position 0 = 'You'" in text
    assert len([line for line in text.splitlines() if line[:5].strip().isdigit()]) == 30


@pytest.mark.parametrize("argv,message", [
    (["analyze", "--prompt", "   "], "sinkviz: the prompt is empty"),
    (["analyze", "--prompt", "x", "--first", "9"], "sinkviz: first N must be between 1 and 8, not 9"),
    (["analyze", "--prompt", "x", "--device", "tpu"], "sinkviz: device 'tpu' is not available here"),
    (["analyze", "--prompt", "x", "--model", "./missing-model"], "sinkviz: no model folder at ./missing-model"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_module_entry_point_exit_code():
    done = subprocess.run([sys.executable, "-m", "sinkviz", "analyze", "--prompt", ""],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "sinkviz: the prompt is empty\n" and done.stdout == ""


def test_a_reader_that_stops_early_gets_no_traceback():
    """`python -m sinkviz models --coverage | head -1`: the pipe closes; exit quietly."""
    import subprocess
    import sys
    done = subprocess.run(f"{sys.executable} -m sinkviz models --coverage | head -1", shell=True,
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("architecture coverage") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


@pytest.mark.parametrize("flag", ["--json", "--all"])
def test_models_flags_that_belong_to_coverage_are_refused_alone(capsys, flag):
    from sinkviz.cli import EXIT_BAD_INPUT, main
    assert main(["models", flag]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == ("sinkviz: --all and --json go with --coverage "
                                       "(models --coverage [--all] [--json])\n")
