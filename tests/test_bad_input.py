"""Bad input ends in one clear sentence (CLI: exit 2, one line on stderr), never a traceback,
and no setting is silently changed."""

import io
import json
import sys

import pytest

from sinkviz.flow.analysis import Settings
from sinkviz.cli import main
from sinkviz.errors import BadSetting


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))


def one_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.out == ""
    return captured.err.rstrip("\n")


SURROGATE = "sinkviz: the prompt is not valid text: character 4 is a lone surrogate (U+DCFF), e.g. from bytes that are not UTF-8"


@pytest.mark.parametrize("argv,message", [
    (["analyze", "--prompt", "w1 \udcff w2"], SURROGATE),
    (["analyze", "--prompt", "w1 w2", "--system", "\ud800"],
     "sinkviz: the system turn is not valid text: character 1 is a lone surrogate (U+D800), e.g. from bytes that are not UTF-8"),
    (["analyze", "--prompt", "w1", "--epsilon", "nan", "--json"],
     "sinkviz: argument --epsilon: must be a number between 0 and 1, not 'nan'"),
    (["analyze", "--prompt", "w1", "--epsilon", "1.5"],
     "sinkviz: argument --epsilon: must be a number between 0 and 1, not '1.5'"),
    (["analyze", "--prompt", "w1", "--model", ""], "sinkviz: the model name is empty"),
    (["analyze", "--prompt", "w1", "--model", "  "], "sinkviz: the model name is empty"),
    (["analyze", "--prompt", "w1", "--device", "cpu:99"], "sinkviz: device 'cpu:99' is not available here (available: cpu)"),
    (["analyze", "--prompt", "w1", "--max-tokens", "0"], "sinkviz: argument --max-tokens: must be at least 2, not 0"),
    (["analyze", "--prompt", "w1", "--max-tokens", "-1"], "sinkviz: argument --max-tokens: must be at least 2, not -1"),
    (["analyze", "--prompt", "w1", "--max-tokens", "x"], "sinkviz: argument --max-tokens: not a whole number: 'x'"),
    (["analyze", "--prompt", "w1", "--first", "two"], "sinkviz: argument --first: invalid int value: 'two'"),
    (["lab", "window", "--max-tokens", "-3"], "sinkviz: argument --max-tokens: must be at least 2, not -3"),
    (["sweep", "--max-tokens", "0"], "sinkviz: argument --max-tokens: must be at least 2, not 0"),
    (["nonsense"], "sinkviz: argument command: invalid choice: 'nonsense' (choose from 'analyze', 'sweep', 'audit', 'lab', 'prepare', 'models')"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, argv, message):
    assert _run(argv) == 2 and one_line(capsys) == message


def _run(argv) -> int:
    """main(argv)'s exit status, whether it returns it or argparse exits."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code


def test_undecodable_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"w1 \xff\xfe w2")))
    assert _run(["analyze", "--prompt-file", "-"]) == 2
    assert one_line(capsys) == "sinkviz: cannot read -: not UTF-8 text (byte 3)"


def test_bad_max_tokens_variable(capsys, monkeypatch, tiny_models):
    monkeypatch.setenv("SINKVIZ_MAX_TOKENS", "abc")
    assert _run(["analyze", "--prompt", "w1 w2 w3", "--model", tiny_models["gpt2"]]) == 2
    assert one_line(capsys) == "sinkviz: SINKVIZ_MAX_TOKENS must be a whole number of at least 2, not 'abc'"


def test_max_tokens_applies_to_a_stored_result(capsys, tiny_models):
    model = tiny_models["gpt2"]
    assert _run(["analyze", "--prompt", "w1 w2 w3 w4 w5", "--model", model, "--json"]) == 0
    capsys.readouterr()
    assert _run(["analyze", "--prompt", "w1 w2 w3 w4 w5", "--model", model, "--max-tokens", "3"]) == 2
    assert one_line(capsys) == "sinkviz: the prompt has 6 tokens; the limit is 3"


def test_lab_window_two_tokens_is_json(capsys, tiny_models):
    assert _run(["lab", "window", "--text", "w1 w2 w3 w4", "--model", tiny_models["llama-gqa"],
                 "--window", "16", "--max-tokens", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 2 and report["perplexity_full"] > 1.0


def test_settings_refuse_what_would_be_ignored():
    with pytest.raises(BadSetting) as info:
        Settings(max_tokens=0)
    assert str(info.value) == "max tokens must be at least 2, not 0"


@pytest.mark.parametrize("raw,kind,expected", [("²", int, None), ("٣", int, None), ("5", int, 5), ("-2", int, -2),
                                               ("", int, None), ("0.35", float, 0.35), ("1e3", float, None),
                                               ("nan", float, None), ("inf", float, None), ("0", bool, False),
                                               ("1", bool, True), ("x", str, "x")])
def test_url_values(raw, kind, expected):
    from pages.common import parse_param
    assert parse_param(raw, kind) == expected
