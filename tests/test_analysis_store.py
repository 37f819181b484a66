"""analyze() through the result store: hits never run the model, bad entries are recomputed."""

import threading
from dataclasses import replace

import diskcache
import numpy as np
import pytest

from conftest import random_words
from sinkviz.flow import analysis, models
from sinkviz.engine import capture
from sinkviz.flow.analysis import Settings, analyze, result_key


@pytest.fixture
def llama(tiny_models):
    return Settings(model=tiny_models["llama-gqa"], map_size=16)


@pytest.fixture
def count_captures(monkeypatch):
    calls = []
    real = capture.capture

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(capture, "capture", counting)
    return calls


def forbid_model_work(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("the model was used on a store hit")
    monkeypatch.setattr(capture, "capture", refuse)
    monkeypatch.setattr(models, "get_model", refuse)


def assert_same_stats(a, b):
    for name in ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm"):
        np.testing.assert_array_equal(getattr(a.stats, name), getattr(b.stats, name))


def test_store_hit_does_not_run_the_model(llama, store, monkeypatch):
    prompt = random_words(30)
    first = analyze(prompt, llama, store=store)
    assert not first.cached and first.key in store
    forbid_model_work(monkeypatch)
    again = analyze(prompt, llama, store=store)
    assert again.cached and again.key == first.key
    assert again.tokens == first.tokens and again.model == first.model
    assert_same_stats(first, again)


def test_key_covers_what_changes_the_numbers(llama):
    ident = {"model_id": "m", "fingerprint": "f", "revision": None, "device": "cpu", "dtype": "float32"}
    base = result_key(ident, llama, "p")
    changed = [result_key(ident, llama, "q"),
               result_key(ident, replace(llama, use_template=False), "p"),
               result_key(ident, replace(llama, system="be brief"), "p"),
               result_key(ident, replace(llama, map_size=32), "p"),
               result_key({**ident, "fingerprint": "g"}, llama, "p"),
               result_key({**ident, "dtype": "bfloat16"}, llama, "p")]
    assert len({base, *changed}) == 1 + len(changed)
    assert result_key(ident, replace(llama, max_tokens=10), "p") == base


def test_corrupt_entry_is_recomputed(llama, store, count_captures):
    prompt = random_words(20)
    first = analyze(prompt, llama, store=store)
    store._cache.set(f"data:{first.key}", b"not an npz file")
    again = analyze(prompt, llama, store=store)
    assert not again.cached and len(count_captures) == 2
    assert_same_stats(first, again)
    assert analyze(prompt, llama, store=store).cached


def test_wrong_schema_is_recomputed(llama, store, count_captures):
    prompt = random_words(20)
    first = analyze(prompt, llama, store=store)
    meta, arrays = store.get(first.key)
    store.put(first.key, {**meta, "schema": -1}, arrays)
    assert not analyze(prompt, llama, store=store).cached and len(count_captures) == 2


def test_planted_pickle_is_never_loaded(store, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    raw = diskcache.Cache(store.directory)   # default Disk pickles non-bytes values
    raw.set("meta:k", Payload())
    raw.set("data:k", Payload())
    assert store.get("k") is None
    assert not marker.exists()
    with pytest.raises(TypeError):
        store._cache.set("meta:j", {"a": 1})


def test_disk_full_still_returns_the_analysis(llama, store, monkeypatch, caplog):
    def full(*_a, **_k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(store._opened, "set", full)
    result = analyze(random_words(20), llama, store=store)
    assert result.stats.n_layers == 3 and result.key not in store
    assert f"the result store {store.directory} cannot be written (No space left on device)" in caplog.text


def test_same_request_at_once_is_computed_once(llama, store, count_captures):
    prompt, results = random_words(25), []
    threads = [threading.Thread(target=lambda: results.append(analyze(prompt, llama, store=store)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(count_captures) == 1
    assert sorted(r.cached for r in results) == [False, True, True]


def test_history_lists_metas_newest_first(llama, store):
    a = analyze(random_words(12), llama, store=store)
    b = analyze(random_words(14), llama, store=store)
    metas = store.metas()
    assert [m["key"] for m in metas] == [b.key, a.key]
    assert metas[0]["tokens"]["token_ids"] == list(b.tokens.token_ids)
    worst_layer, worst_mass = metas[0]["worst_layer_by_n"][2]
    from sinkviz.numbers.metrics import layer_sinks
    mass = layer_sinks(b.stats, 3).sink_mass
    assert worst_layer == int(mass.argmax()) and worst_mass == pytest.approx(mass.max())
    assert analysis.load_stored(store, a.key).prompt == a.prompt


def test_causal_maps_are_stored_as_their_lower_triangle_and_come_back_equal(store, tiny_models):
    """The store keeps causal maps' cells on and below the diagonal (the rest are exactly 0):
    half the bytes; the reopened analysis has the very same maps; the export keeps full maps."""
    import io
    from sinkviz.flow.analysis import Settings, analyze, load_stored
    from sinkviz.output.export import npz_bytes
    settings = Settings(model=tiny_models["llama-gqa"], device="cpu", dtype="float32", map_size=16)
    fresh = analyze(" ".join(["alpha beta gamma"] * 12), settings, store=store)
    meta, arrays = store.get(fresh.key)
    bins = fresh.stats.maps.shape[-1]
    assert "maps" not in arrays and arrays["maps_lower"].shape[-1] == bins * (bins + 1) // 2
    np.testing.assert_array_equal(load_stored(store, fresh.key).stats.maps, fresh.stats.maps)
    with np.load(io.BytesIO(npz_bytes(fresh)), allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["maps"], fresh.stats.maps)


def test_the_store_never_evicts_what_it_saved(tmp_path):
    """diskcache culls past its 1 GB default; an audit bigger than that must keep every row."""
    from sinkviz.flow.store import ResultStore
    store = ResultStore(tmp_path / "results")
    assert store._cache.eviction_policy == "none"
    big = {"x": np.zeros(300_000, dtype=np.float32)}              # 1.2 MB a row
    store._cache.reset("size_limit", 2_000_000)                   # as if 1 GB were 2 MB
    keys = [f"{i:032x}" for i in range(4)]
    for key in keys:
        assert store.put(key, {"schema": 0}, big)
    assert all(store.get(key) is not None for key in keys)
