"""What one stored analysis costs: bytes on disk and seconds to write and read, by model shape.

    .venv/bin/python bench/store_cost.py [--lengths 50 500 2000] [--prompts 2000]

Statistics of the right shapes with causal (lower-triangular) maps, filled with random numbers
(the bytes do not depend on the values: the store does not compress), written to a fresh
store as an audit keeps its rows (the head-mean map per layer, ``analyze_many(head_maps=False)``) and as
Analyze keeps an analysis (every head's map), both packed to the maps' lower triangle, then read
back. Prints bytes and milliseconds per analysis, and what an audit of --prompts prompts of
lengths spread evenly over --lengths costs on disk.
Asserts nothing; needs no GPU.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from sinkviz.engine.reduce import bin_width  # noqa: E402
from sinkviz.flow.store import ResultStore  # noqa: E402
from sinkviz.numbers.stats import AttentionStats  # noqa: E402

SHAPES = {"smollm2-135m (default)": (30, 9), "llama3-8b": (32, 32)}   # layers, heads
MAP_SIZE = 128


def stats_of(layers: int, heads: int, n: int, rng) -> AttentionStats:
    bins = -(-n // bin_width(n, MAP_SIZE))
    f32 = np.float32
    return AttentionStats(
        sink_mass=rng.random((layers, heads, 8), dtype=f32), entropy=rng.random((layers, heads), dtype=f32),
        received=rng.random((layers, heads, n), dtype=f32),
        maps=np.tril(rng.random((layers, heads, bins, bins), dtype=f32)),
        hidden_norm=rng.random((layers, n), dtype=f32), value_norm=rng.random((layers, n), dtype=f32),
        bin_width=bin_width(n, MAP_SIZE), causal=True, windows=(None,) * layers)


def cost(store: ResultStore, stats: AttentionStats, audit_row: bool, repeats: int = 5) -> tuple[int, float, float]:
    """(bytes on disk, ms to write, ms to read) of one analysis: as Analyze stores it (every
    head's map), or as an audit stores its row (the head mean taken, then stored)."""
    writes, reads, size = [], [], 0
    for r in range(repeats):
        key = f"{r:032x}"
        start = time.perf_counter()
        kept = stats.without_head_maps() if audit_row else stats
        store.put(key, {"schema": 0}, kept.to_arrays(pack_maps=True))
        writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        AttentionStats.from_arrays(store.get(key)[1])
        reads.append(time.perf_counter() - start)
        size = sum(f.stat().st_size for f in Path(store.directory).rglob("*.val"))
        store.delete(key)
    return size, statistics.median(writes) * 1e3, statistics.median(reads) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 500, 1000, 2000])
    parser.add_argument("--prompts", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| model shape | tokens | stored MB: audit row (analysis) | write ms: audit row (analysis) "
          "| read ms: audit row (analysis) |")
    print("| --- | --- | --- | --- | --- |")
    for shape, (layers, heads) in SHAPES.items():
        total = {True: 0, False: 0}
        for n in args.lengths:
            stats = stats_of(layers, heads, n, rng)
            with tempfile.TemporaryDirectory() as folder:
                store = ResultStore(folder)
                row, whole = cost(store, stats, True), cost(store, stats, False)
            total[True] += row[0]
            total[False] += whole[0]
            print(f"| {shape} | {n:,} | {row[0] / 1e6:.1f} ({whole[0] / 1e6:.1f}) | {row[1]:.0f} ({whole[1]:.0f}) "
                  f"| {row[2]:.0f} ({whole[2]:.0f}) |")
        per = {k: v / len(args.lengths) for k, v in total.items()}
        print(f"| {shape} | audit of {args.prompts:,} prompts | {per[True] * args.prompts / 1e9:.1f} GB "
              f"({per[False] * args.prompts / 1e9:.1f} GB) | | |")


if __name__ == "__main__":
    main()
