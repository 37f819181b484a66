"""Downloads hold the engine's numbers: CSV rows, npz arrays, metadata."""

import csv
import io
import json

import numpy as np
import pytest

from conftest import random_words
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.output.export import layers_csv, metadata, npz_bytes
from sinkviz.numbers.metrics import layer_sinks
from sinkviz.output.report import report_dict


@pytest.fixture
def result(tiny_models, store):
    return analyze(random_words(40), Settings(model=tiny_models["llama-gqa"], map_size=16), store=store)


def test_csv_rows_equal_the_report(result):
    rows = list(csv.DictReader(io.StringIO(layers_csv(report_dict(result, first_n=2)))))
    sinks = layer_sinks(result.stats, 2)
    assert [int(r["layer"]) for r in rows] == list(range(result.stats.n_layers))
    np.testing.assert_allclose([float(r["sink_mass"]) for r in rows], sinks.sink_mass, rtol=1e-12)
    np.testing.assert_allclose([[float(r[f"head{h}_sink_mass"]) for h in range(4)] for r in rows],
                               sinks.heads_sink_mass, rtol=1e-12)
    assert [r["severity"] for r in rows] == list(sinks.severity)


def test_npz_round_trip_without_pickle(result):
    with np.load(io.BytesIO(npz_bytes(result)), allow_pickle=False) as npz:
        for name in ("sink_mass", "entropy", "received", "maps", "hidden_norm", "value_norm"):
            np.testing.assert_array_equal(npz[name], getattr(result.stats, name))
        assert npz["token_ids"].tolist() == list(result.tokens.token_ids)
        meta = json.loads(str(npz["metadata_json"]))
    assert meta == json.loads(json.dumps(metadata(result)))
    assert meta["model"]["n_layers"] == 3 and meta["settings"]["map_size"] == 16
    assert meta["tokens"] == list(result.tokens.tokens)
