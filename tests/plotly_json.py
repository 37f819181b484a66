"""Read the figures a page sent: Plotly JSON from AppTest, with base64 arrays decoded."""

import base64
import json

import numpy as np


def decode(value):
    """Turn {"dtype", "bdata", "shape"} blobs back into arrays, recursively."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            arr = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
            shape = value.get("shape")
            if shape:
                arr = arr.reshape([int(s) for s in str(shape).split(",")])
            return arr
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


def figures(at) -> list[dict]:
    """Every plotly chart on the page, as decoded figure dicts, in page order."""
    return [decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def by_title(at, start: str) -> dict:
    found = [f for f in figures(at) if str(f["layout"].get("title", {}).get("text", "")).startswith(start)]
    assert found, f"no figure titled {start!r}"
    return found[0]


def array(trace_value) -> np.ndarray:
    """A trace's data as a float array (None -> NaN)."""
    if isinstance(trace_value, np.ndarray):
        return trace_value.astype(float)
    return np.array([[np.nan if v is None else v for v in row] if isinstance(row, list)
                     else (np.nan if row is None else row) for row in trace_value], dtype=float)


def sink_mass_bars(fig: dict) -> tuple[np.ndarray, np.ndarray]:
    """(layers, sink mass) of the sink-mass bars, gathered over their traces (one per severity
    colour) in layer order."""
    pairs = sorted((x, y) for t in fig["data"] if t["type"] == "bar" and t.get("offsetgroup") == "sink mass"
                   for x, y in zip(array(t["x"]), array(t["y"])))
    return np.array([x for x, _ in pairs]), np.array([y for _, y in pairs])
