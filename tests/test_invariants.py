"""A statistic that breaks a law of attention never reaches the store, the CLI or a page.

Each test corrupts one statistic on purpose (the way real capture bugs looked: a sign, a
normalisation, a wrong GPU's numbers) and expects the exact error naming layer, head and
statistic.
"""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import random_words
from sinkviz.engine import capture, invariants, reduce
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.engine.invariants import ImpossibleStatistic
from sinkviz.flow.models import load_model

L = 40


@pytest.fixture(scope="module")
def good(tiny_models):
    model = load_model(tiny_models["llama-gqa"], device="cpu").model
    return capture.capture(model, torch.randint(4, 120, (1, L)), 16)


def corrupted(stats, name, index, value=None, scale=None):
    array = getattr(stats, name).copy()
    array[index] = value if scale is None else array[index] * scale
    return replace(stats, **{name: array})


def test_a_real_capture_passes(good):
    invariants.check(good)  # raises on failure; the corrupted cases below show it can


@pytest.mark.parametrize("name,index,value,scale,message", [
    ("sink_mass", (2, 1, 2), -0.0002, None, "layer 2, head 1, sink mass -0.0002 outside [0, 1]"),
    ("sink_mass", (0, 3, 0), math.nan, None, "layer 0, head 3, sink mass nan outside [0, 1]"),
    ("received", (1, 0, 5), 1.7, None, "layer 1, head 0, received attention 1.7 outside [0, 1]"),
    ("received", (1, 2), None, 0.5, "layer 1, head 2, received attention summed over keys"),
    ("maps", (0, 2, 3), None, 0.5, "layer 0, head 2, map row sum"),
    ("entropy", (1, 3), math.log(L) + 0.5, None, f"layer 1, head 3, entropy {math.log(L) + 0.5:.6g} outside [0, {math.log(L):g}]"),
    ("hidden_norm", (2, 7), math.inf, None, "layer 2, hidden norm inf outside [0, inf]"),
])
def test_each_corruption_is_named(good, name, index, value, scale, message):
    with pytest.raises(ImpossibleStatistic) as err:
        invariants.check(corrupted(good, name, index, value, scale))
    assert message in str(err.value)
    assert str(err.value).startswith("the capture produced an impossible number, so nothing was stored or shown")


LENGTHS = [40, 23, 8]   # a right-padded batch as the deferred path holds it (prompts of >= 8 tokens)


@pytest.fixture(scope="module")
def batch(tiny_models):
    model = load_model(tiny_models["llama-gqa"], device="cpu").model
    return [capture.capture(model, torch.randint(4, 120, (1, n)), 16) for n in LENGTHS]


def padded(stats_list) -> dict:
    """Per-prompt statistics as fused.statistics_many returns a batch: [layers, B, ...], zeros
    past each prompt's tokens and bins."""
    out = {}
    for name in ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm"):
        arrays = [getattr(s, name) for s in stats_list]
        shape = np.max([a.shape for a in arrays], axis=0)
        full = np.zeros((len(arrays), *shape), dtype=np.float32)                  # [B, layers, ...]
        for b, a in enumerate(arrays):
            full[(b, *(slice(0, k) for k in a.shape))] = a
        out[name] = torch.from_numpy(full).transpose(0, 1).contiguous()           # [layers, B, ...]
    return out


def screen(stats_list) -> list[bool]:
    widths = torch.tensor([s.bin_width for s in stats_list])
    return invariants.screen_batch(padded(stats_list), torch.tensor(LENGTHS), widths).tolist()


def test_the_gpu_screen_passes_real_captures_and_ignores_padding(batch):
    assert screen(batch) == [False, False, False]
    stats = padded(batch)
    stats["received"][:, 2, :, 8:] = math.nan                                     # past prompt 2's tokens
    stats["maps"][:, 2, :, -1, :] = math.nan                                      # past prompt 2's 8 bins (of 12)
    got = invariants.screen_batch(stats, torch.tensor(LENGTHS), torch.tensor([s.bin_width for s in batch]))
    assert got.tolist() == [False, False, False]


@pytest.mark.parametrize("name,index,value,scale", [
    ("sink_mass", (2, 1, 2), -0.0002, None), ("sink_mass", (0, 3, 0), math.nan, None),
    ("received", (1, 0, 5), 1.7, None), ("received", (1, 2), None, 0.5), ("maps", (0, 2, 3), None, 0.5),
    ("maps", (1, 0, 0, 0), 1.2, None), ("entropy", (1, 3), math.log(23) + 0.01, None),
    ("entropy", (0, 0), -0.01, None), ("hidden_norm", (2, 7), math.inf, None), ("value_norm", (0, 3), -1.0, None),
])
def test_the_gpu_screen_flags_each_corruption_that_check_rejects(batch, name, index, value, scale):
    """Prompt 1 (23 tokens) corrupted: the host check names it and the screen flags it alone."""
    bad = corrupted(batch[1], name, index, value, scale)
    with pytest.raises(ImpossibleStatistic):
        invariants.check(bad)
    assert screen([batch[0], bad, batch[2]]) == [False, True, False]


def test_the_gpu_screen_flags_a_sink_mass_where_no_query_qualifies(batch):
    bad = corrupted(batch[2], "sink_mass", (0, 0, 7), 0.5)                        # L = 8: m_8 has no query
    with pytest.raises(ImpossibleStatistic, match="defined where L <= N"):
        invariants.check(bad)
    assert screen([batch[0], batch[1], bad]) == [False, False, True]


def test_sink_mass_defined_where_no_query_qualifies_is_caught(tiny_models):
    model = load_model(tiny_models["llama-gqa"], device="cpu").model
    short = capture.capture(model, torch.randint(4, 120, (1, 3)), 16)     # N >= 3: no query, NaN
    assert np.isnan(short.sink_mass[..., 2:]).all()
    with pytest.raises(ImpossibleStatistic, match="layer 0, head 0, sink mass defined where L <= N"):
        invariants.check(corrupted(short, "sink_mass", (0, 0, 4), 0.5))


def test_corrupt_capture_is_neither_stored_nor_returned(tiny_models, store, monkeypatch):
    """The received attention of every layer divided by L instead of the queries that see the
    key (the bug layoutlm showed): analyze raises, the store stays empty, the CLI says why."""
    real = reduce.finish_sums

    def wrong_normalisation(*args, **kwargs):
        out = real(*args, **kwargs)
        n = out["received"].shape[-1]
        out["received"] = out["received"] * (n - torch.arange(n, device=out["received"].device)) / n
        return out
    monkeypatch.setattr(reduce, "finish_sums", wrong_normalisation)
    settings = Settings(model=tiny_models["llama-gqa"], map_size=16)
    with pytest.raises(ImpossibleStatistic, match="received attention summed over keys"):
        analyze(random_words(30), settings, store=store)
    assert store.metas() == []


def test_cli_reports_it_in_one_line(tiny_models, monkeypatch, capsys):
    from sinkviz import cli
    monkeypatch.setattr(invariants, "check", lambda stats: invariants._fail("entropy", np.array([4, 1]), "nan"))
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(__import__("tempfile").mkdtemp()))
    code = cli.main(["analyze", "--model", tiny_models["llama-gqa"], "--prompt", random_words(20), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.strip().endswith("layer 4, head 1, entropy nan. Please report it with the model and prompt.")
    assert len(err.strip().splitlines()) == 1
