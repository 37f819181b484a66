"""Store faults: planted rows never run code or touch files, bad entries heal, a store that
cannot be written (full disk, read-only) still answers and leaves no orphan file."""

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import diskcache
import numpy as np
import pytest

from conftest import random_words
from sinkviz.engine import capture
from sinkviz.numbers.stats import AttentionStats
from sinkviz.flow.analysis import Settings, analyze, history, load_stored, result_key
from sinkviz.flow.audit import audit
from sinkviz.flow.store import ResultStore

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def llama(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16)


@pytest.fixture
def big(tiny_models):
    """Settings whose arrays (about 0.8 MB) are kept in a .val file, not inside SQLite."""
    return Settings(model=tiny_models["llama-gqa"], map_size=128)


@pytest.fixture
def captures(monkeypatch):
    """One entry per prompt captured, alone or in a batch."""
    calls, real, batch = [], capture.capture, capture.capture_batch
    monkeypatch.setattr(capture, "capture", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(capture, "capture_batch", lambda m, seqs, *a, **k: calls.extend([1] * len(seqs)) or batch(m, seqs, *a, **k))
    return calls


def val_files(folder) -> list[Path]:
    return sorted(Path(folder).rglob("*.val"))


def quarantine_rows(folder) -> int:
    with contextlib.closing(sqlite3.connect(Path(folder) / "cache.db")) as con:
        return con.execute("SELECT count(*) FROM Quarantine").fetchone()[0]


def plant_row(folder, key: str, mode: int, filename: str) -> None:
    """A Cache row written by someone else: ``key`` whose value is the file ``filename``."""
    with contextlib.closing(sqlite3.connect(Path(folder) / "cache.db")) as con, con:
        con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
                    " tag, size, mode, filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 10, ?, ?, NULL)",
                    (key, mode, filename))


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("when", ["before opening", "while open"])
def test_planted_pickled_key_is_never_unpickled(tmp_path, when):
    marker = tmp_path / "pwned"
    folder = tmp_path / "store"
    store = ResultStore(folder) if when == "while open" else None
    diskcache.Cache(str(folder)).set(Payload(marker), b"x")   # default Disk: the key row has raw=0
    store = store or ResultStore(folder)
    assert store.metas() == [] and history(store) == []
    assert not marker.exists()
    assert store.quarantined[0].endswith(": a pickled key") and len(store.quarantined) == 1
    assert quarantine_rows(folder) == 1
    assert list(diskcache.Cache(str(folder)).iterkeys()) == []  # the row left the Cache table


@pytest.mark.parametrize("name", ["outside", "absolute", "symlink"])
def test_planted_filename_is_never_read_or_deleted(tmp_path, name):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "store"
    store = ResultStore(folder)
    filename = {"outside": "../victim.txt", "absolute": str(victim),
                "symlink": "ab/cd/" + "e" * 28 + ".val"}[name]
    if name == "symlink":
        (folder / "ab" / "cd").mkdir(parents=True)
        (folder / filename).symlink_to(victim)
    plant_row(folder, f"meta:{KEY}", diskcache.core.MODE_TEXT, filename)
    plant_row(folder, f"data:{KEY}", diskcache.core.MODE_BINARY, filename)
    assert store.get(KEY) is None
    store.delete(KEY)
    store.discard(KEY, ValueError("test"))
    assert ResultStore(folder).metas() == []
    assert victim.read_text() == "precious"
    assert len(store.quarantined) == 2 and quarantine_rows(folder) == 2
    kind = "a file outside the store" if name == "symlink" else "a file name this store does not write"
    assert store.quarantined[0].endswith(f"{kind} ({filename!r})")


def test_truncated_value_file_is_recomputed(big, store, captures, caplog):
    prompt = random_words(200)
    first = analyze(prompt, big, store=store)
    ran = len(captures)
    (value,) = val_files(store.directory)
    value.write_bytes(value.read_bytes()[:1000])
    again = analyze(prompt, big, store=store)
    assert not again.cached and len(captures) == ran + 1
    np.testing.assert_array_equal(again.stats.maps, first.stats.maps)
    assert f"discarding unreadable store entry {first.key}: " in caplog.text
    assert analyze(prompt, big, store=store).cached and len(val_files(store.directory)) == 1


@pytest.mark.parametrize("meta", ["[1, 2]", '"text"', "null", '{"schema": 1}', "not json"])
def test_malformed_meta_is_recomputed_and_history_skips_it(llama, store, captures, meta):
    prompt = random_words(20)
    first = analyze(prompt, llama, store=store)
    other = analyze(random_words(21), llama, store=store)
    ran = len(captures)
    store._cache.set(f"meta:{first.key}", meta)
    assert [m["key"] for m in history(store)] == [other.key]
    assert first.key not in store
    store._cache.set(f"meta:{first.key}", meta)
    rows = audit([prompt, "w1 w2 w3"], llama, store=store)
    assert [r.error for r in rows] == ["", ""] and rows[0].key == first.key
    assert len(captures) == ran + 2 and load_stored(store, first.key).key == first.key   # the audit stored it again


def test_meta_with_wrong_fields_is_dropped_from_history(llama, store):
    good = analyze(random_words(20), llama, store=store)
    bad = analyze(random_words(22), llama, store=store)
    meta, arrays = store.get(bad.key)
    store.put(bad.key, {**meta, "worst_layer_by_n": "x", "created": meta["created"] + 1}, arrays)
    assert [m["key"] for m in history(store)] == [good.key]
    assert bad.key not in store


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    """A tmpfs of ``size`` at ``folder`` (root only); pytest.skip where mounting is not allowed."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here; test_disk_full_simulated covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    with contextlib.suppress(OSError), open(folder / "filler", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def test_full_disk_saves_nothing_leaves_no_orphan_and_serves_stored(big, tmp_path, caplog):
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        folder = disk / "store"
        stored_prompt = random_words(20)
        stored = analyze(stored_prompt, big, store=ResultStore(folder))
        fill(disk)
        store = ResultStore(folder)
        result = analyze(random_words(200), big, store=store)
        assert result.stats.n_tokens == 201 and result.key not in store
        assert val_files(folder) == []
        again = ResultStore(folder)
        assert analyze(stored_prompt, big, store=again).cached
        np.testing.assert_array_equal(AttentionStats.from_arrays(again.get(stored.key)[1]).maps, stored.stats.maps)
        analyze(random_words(150), big, store=store)
        warnings = [r for r in caplog.records if "cannot be written" in r.getMessage()]
        assert len(warnings) == 1 and "results are computed but not saved" in store.warning


def test_disk_full_simulated(big, store, monkeypatch):
    real = diskcache.Disk._write

    def half_then_full(self, full_path, iterator, mode, encoding=None):
        real(self, full_path, iter([b"x" * 1000]), mode, encoding)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(diskcache.Disk, "_write", half_then_full)
    result = analyze(random_words(200), big, store=store)
    assert result.key not in store and val_files(store.directory) == []
    assert store.warning == (f"the result store {store.directory} cannot be written "
                             "(No space left on device); results are computed but not saved")


def test_sqlite_failure_after_the_file_leaves_no_orphan(big, store, monkeypatch):
    real = diskcache.Cache._row_insert

    def fails(self, *a, **k):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(diskcache.Cache, "_row_insert", fails)
    result = analyze(random_words(200), big, store=store)
    assert result.key not in store and val_files(store.directory) == []
    monkeypatch.setattr(diskcache.Cache, "_row_insert", real)


@contextlib.contextmanager
def read_only_view(source: Path, view: Path):
    """``source`` seen read-only at ``view`` (a bind mount; root only, else pytest.skip)."""
    view.mkdir()
    for args in (["--bind", str(source), str(view)], ["-o", "remount,ro,bind", str(view)]):
        if subprocess.run(["mount", *args], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(view)], capture_output=True)
            pytest.skip("cannot bind-mount read-only here")
    try:
        yield view
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_read_only_store_serves_what_it_has(big, tmp_path, caplog):
    prompt = random_words(200)
    first = analyze(prompt, big, store=ResultStore(tmp_path / "rw" / "store"))
    with read_only_view(tmp_path / "rw", tmp_path / "ro") as view:
        folder = view / "store"
        store = ResultStore(folder)
        again = analyze(prompt, big, store=store)
        assert again.cached and again.key == first.key
        fresh = analyze(random_words(30), big, store=store)
        assert fresh.key not in store and not fresh.cached
        assert store.warning.startswith(f"the result store {folder} cannot be written (")
        assert store.metas()[0]["key"] == first.key
        assert len([r for r in caplog.records if "cannot be written" in r.getMessage()]) == 1
        assert not (folder / "cache.db-journal").exists() and len(val_files(folder)) == 1


def test_scan_keeps_every_row_the_store_wrote(tmp_path):
    """5,000 rows written by diskcache as sinkviz writes them: none quarantined (cost: README)."""
    folder = tmp_path / "many"
    cache = diskcache.Cache(str(folder))
    for i in range(2500):
        key = result_key({"i": i}, Settings(), "p")
        cache.set(f"meta:{key}", "{}")
        cache.set(f"data:{key}", b"x" * 40_000)
    cache.close()
    store = ResultStore(folder)
    assert store.quarantined == [] and len(store._scan(store._cache)) == 5000


def test_history_page_with_planted_and_malformed_rows(app_test, tmp_path, llama):
    marker = tmp_path / "pwned"
    folder = tmp_path / "page-store"
    good = analyze(random_words(20), llama, store=ResultStore(folder))
    bad = analyze(random_words(21), llama, store=ResultStore(folder))
    ResultStore(folder)._cache.set(f"meta:{bad.key}", "[]")
    diskcache.Cache(str(folder)).set(Payload(marker), b"x")
    at = app_test()
    at.switch_page("pages/history.py").run()
    assert not at.exception and not marker.exists()
    assert at.warning[0].value.startswith("1 row(s) of the result store were not written by sinkviz")
    assert list(at.dataframe[0].value["prompt"]) == [good.prompt[:80]]
