"""Fuzz (hypothesis): CLI arguments, URL parameters and audit files end in a correct result or a
clean error (CLI: exit 2 and one line on stderr; page: a message), never a traceback."""

import contextlib
import csv
import io
import json

import pytest
from hypothesis import HealthCheck, event, given, settings as hsettings, strategies as st

from sinkviz.flow.audit import SURROGATES, BadRow, audit, audit_csv, read_prompts
from sinkviz.flow.analysis import Settings
from sinkviz.cli import main
from sinkviz.errors import BadPrompt
from sinkviz.flow.store import ResultStore

FUZZ = hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
ODD = st.sampled_from(["\ud800", "\udcff", "\x00", "\u202e", "²", "٣", "\r", "\t", "=", "\"", ",", "\n", " ",
                       "w1", "w7", "<s>", "nan", "-1", "0", "1e309"])
TEXT = st.lists(st.one_of(ODD, st.text(max_size=6)), max_size=12).map("".join)
WORDS = st.lists(st.sampled_from([f"w{i}" for i in range(30)]), min_size=5, max_size=40).map(" ".join)
PROMPT = st.one_of(WORDS, st.tuples(WORDS, ODD, WORDS).map("".join), TEXT)
NUMBERISH = st.one_of(st.sampled_from(["", "0", "1", "2", "3", "8", "9", "-1", "nan", "inf", "1e9", "²", "x", "0x10",
                                       " 3", "3.5", "99999999999999999999"]), TEXT)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gpt2"]


@pytest.fixture(autouse=True)
def private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as done:   # argparse (errors exit 2, --help exits 0)
            code = done.code
    return code, out.getvalue(), err.getvalue()


def assert_clean(code, out, err, argv):
    event(f"exit {code}" + (f": {err[9:40]}" if code == 2 else ""))
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        assert err.startswith("sinkviz: ") and err.count("\n") == 1 and out == "", (argv, err)


@FUZZ
@given(data=st.data())
def test_cli_analyze(model, data):
    argv = ["analyze", "--prompt", data.draw(PROMPT)]
    options = {"--model": st.sampled_from([model, "", " ", "./missing", "/etc", "nobody/nothing"]),
               "--first": st.one_of(st.integers(1, 8).map(str), NUMBERISH),
               "--max-tokens": st.one_of(st.integers(2, 600).map(str), NUMBERISH),
               "--epsilon": st.one_of(st.floats(0.01, 0.99).map(str), NUMBERISH),
               "--device": st.sampled_from(["cpu", "cpu:0", "cpu:99", "cuda", "cuda:0", "mps", "", "tpu", "cpu:x"]),
               "--dtype": st.sampled_from(["float32", "float64", "bfloat16", "int8", "", "auto"]),
               "--system": TEXT}
    for name in data.draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=3)):
        argv += [name, data.draw(options[name])]
    if "--model" not in argv:
        argv += ["--model", model]
    as_json = data.draw(st.booleans())
    code, out, err = run_cli(argv + (["--json"] if as_json else []))
    assert_clean(code, out, err, argv)
    if code == 0 and as_json:
        report = json.loads(out)
        assert len(report["layers"]) == 3 and report["token_ids"][0] == 1


@FUZZ
@given(data=st.data())
def test_cli_lab_and_sweep(model, data):
    command = data.draw(st.sampled_from([["lab", "window", "--window", "16"], ["lab", "scale"], ["sweep"]]))
    argv = command + ["--model", model]
    argv += (["--prompt", data.draw(PROMPT)] if command[1:2] == ["scale"] else ["--text", data.draw(PROMPT)])
    for name in data.draw(st.lists(st.sampled_from(["--max-tokens", "--k", "--gamma", "--sinks", "--first"]),
                                   unique=True, max_size=2)):
        argv += [name, data.draw(st.one_of(st.integers(1, 20).map(str), NUMBERISH))]
    code, out, err = run_cli(argv + ["--json"])
    if "unrecognized arguments" in err:   # an option another command has
        return
    assert_clean(code, out, err, argv)
    if code == 0:
        json.loads(out)


ROW = st.one_of(PROMPT, st.sampled_from(["w1 w2 w3 w4", "w5 w6 w7 w8 w9", "=cmd|' /C calc'!A0 w1 w2 w3",
                                       "\"w1, w2\" w3", "w1 \"unclosed", "x" * 140_000]))


def as_file(rows, kind: str) -> bytes:
    if kind == "jsonl":
        return "\n".join(json.dumps({"prompt": r}) if i % 3 else json.dumps(r) for i, r in enumerate(rows)).encode(
            "utf-8", "surrogatepass")
    if kind == "csv-quoted":
        out = io.StringIO()
        csv.writer(out).writerows([["prompt"]] + [[r] for r in rows])
        return out.getvalue().encode("utf-8", "surrogatepass")
    return "\n".join(rows).encode("utf-8", "surrogatepass")


@FUZZ
@given(rows=st.lists(ROW, max_size=6), kind=st.sampled_from(["jsonl", "csv-quoted", "csv-raw"]),
       name=st.sampled_from(["p.csv", "p.jsonl", "p.json", "p.txt", "P.JSONL"]), cut=st.integers(0, 40))
def test_audit_files(model, tmp_path_factory, rows, kind, name, cut):
    data = as_file(rows, kind)
    data = data[:len(data) - cut] if cut % 4 == 0 else data          # sometimes truncated mid-row
    folder = tmp_path_factory.mktemp("audit")
    (folder / name).write_bytes(data)
    code, out, err = run_cli(["audit", str(folder / name), "--model", model, "--csv", str(folder / "out.csv")])
    assert_clean(code, out, err, name)
    try:
        prompts = read_prompts(data, name)
    except BadPrompt as err:
        assert str(err).startswith(name) and "\n" not in str(err) and code == 2
        return
    assert code == 0 and len(list(csv.DictReader((folder / "out.csv").open(newline="")))) == len(prompts)
    result = audit(prompts, Settings(model=model, map_size=16), store=ResultStore(tmp_path_factory.mktemp("s")))
    assert [r.row for r in result] == list(range(1, len(prompts) + 1))
    for prompt, row in zip(prompts, result):
        assert bool(row.key) != bool(row.error)
        if isinstance(prompt, BadRow):
            assert row.error == prompt.error
    table = list(csv.DictReader(io.StringIO(audit_csv(result))))
    assert len(table) == len(result)
    assert not any(t["prompt"].startswith(("=", "+", "-", "@", "\t", "\r")) for t in table)
    audit_csv(result).encode("utf-8")                                # writable as UTF-8


@hsettings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=st.fixed_dictionaries({}, optional={
    "prompt": PROMPT, "n": NUMBERISH, "map": NUMBERISH, "template": NUMBERISH, "system": TEXT,
    "model": st.sampled_from(["", "./missing", "/etc", "nobody/nothing", "all-minilm-l6-v2"]),
    "key": st.one_of(TEXT, st.just("0" * 32))}))
def test_url_parameters(app_test_factory, params):
    """A URL cannot carry a lone surrogate (a browser decodes one to U+FFFD), so neither does this."""
    at = app_test_factory()
    at.query_params.update({k: SURROGATES.sub("\ufffd", v) for k, v in params.items()})
    at.run()
    assert not at.exception, (params, at.exception)
    if "prompt" in params or "key" in params:     # the page runs: a result or a message
        from plotly_json import figures
        assert [e.value for e in at.error] or figures(at), params


@pytest.fixture(scope="module")
def app_test_factory(tmp_path_factory, default_model_dir):
    from streamlit.testing.v1 import AppTest
    from conftest import APP, app_store
    with app_store(tmp_path_factory.mktemp("fuzz-page-store")):
        yield lambda: AppTest.from_file(APP, default_timeout=300)
