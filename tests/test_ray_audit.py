"""The Ray audit on a two-worker local cluster (CPU) equals the local audit, row for row.

Same rows, same store keys, numbers read back from the store identical to a local audit's;
a re-run takes every row from the store (no worker computes); an unreachable cluster is one
clear sentence. Skipped where Ray is not installed (requirements-ray.txt).
"""

import csv
import io
from dataclasses import asdict

import numpy as np
import pytest

from conftest import random_words
from sinkviz.flow.analysis import Settings, analyze_many
from sinkviz.flow.audit import BadRow, audit_rows
from sinkviz.errors import BadSetting
from sinkviz.flow.store import ResultStore

ray = pytest.importorskip("ray")


def same_cell(a, b) -> bool:
    """Equal; numbers within float32 rounding (1e-6 relative): a Ray worker runs torch on its own
    thread count, which changes the summation order."""
    try:
        return float(a) == pytest.approx(float(b), rel=1e-6, abs=1e-9, nan_ok=True)
    except (TypeError, ValueError):
        return a == b


def assert_same_rows(got, want):
    """Every cell equal (store keys included), numbers within float32 rounding."""
    assert len(got) == len(want)
    for a, b in zip(got, want):
        a, b = (x if isinstance(x, dict) else asdict(x) for x in (a, b))
        assert a.keys() == b.keys() and all(same_cell(a[k], b[k]) for k in a), (a, b)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_workers_equal_the_local_audit(tiny_models, tmp_path, cluster, monkeypatch):
    from sinkviz.flow import ray_audit
    settings = Settings(model=tiny_models["llama-gqa"], map_size=32)
    prompts = [random_words(n) for n in (12, 40, 7, 90, 25, 3, 60)] + [BadRow("line 9 is not JSON"), "", random_words(30)]
    local = list(audit_rows(prompts, settings, store=ResultStore(tmp_path / "local"), chunk=3))  # the same batches
    store = ResultStore(tmp_path / "ray")
    rows = list(ray_audit.ray_audit_rows(prompts, settings, workers=2, store=store, chunk=3))
    assert_same_rows(rows, local)
    assert [r.error for r in rows][-3:] == ["line 9 is not JSON", "the prompt is empty", ""]
    ours, theirs = (dict(analyze_many([p for p in prompts if isinstance(p, str) and p], settings, store=s))
                    for s in (store, ResultStore(tmp_path / "local")))
    for i in ours:
        assert ours[i].cached and theirs[i].cached                 # both stores hold every prompt
        for name in ("sink_mass", "received", "maps", "entropy"):
            np.testing.assert_allclose(getattr(ours[i].stats, name), getattr(theirs[i].stats, name), atol=1e-6, rtol=0)
    monkeypatch.setattr(ray_audit.AuditWorker, "run", lambda self, work: pytest.fail("recomputed a stored row"))
    again = list(ray_audit.ray_audit_rows(prompts, settings, workers=2, store=store, chunk=3))
    assert_same_rows(again, local)


def test_cli_audit_on_ray_writes_the_same_csv(tiny_models, tmp_path, cluster, monkeypatch, capsys):
    from sinkviz.cli import main
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store"))
    src = tmp_path / "prompts.csv"
    src.write_text("id,prompt\n" + "".join(f"{i},{random_words(10 + i)}\n" for i in range(5)))
    assert main(["audit", str(src), "--model", tiny_models["gpt2"], "--csv", str(tmp_path / "ray.csv"),
                 "--ray", "--workers", "2"]) == 0
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(tmp_path / "store-local"))
    assert main(["audit", str(src), "--model", tiny_models["gpt2"], "--csv", str(tmp_path / "local.csv")]) == 0
    ray_rows, local_rows = (list(csv.DictReader(io.StringIO((tmp_path / f"{name}.csv").read_text())))
                            for name in ("ray", "local"))
    assert len(ray_rows) == 5 and [r["key"] for r in ray_rows] == [r["key"] for r in local_rows]
    assert_same_rows(ray_rows, local_rows)


def test_unreachable_cluster_is_one_sentence():
    from sinkviz.flow.ray_audit import connect
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(BadSetting, match="cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"):
        connect("127.0.0.1:1", 2)
