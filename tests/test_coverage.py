"""Architecture coverage (issue 12 item 4): each architecture is exact, refused for a stated
reason, or skipped for inputs it needs; never a wrong number or an unexplained crash.

Exact: the float64 capture within 1e-12 of the float64 eager reference on every statistic and
the causal flag, the model's float64 output unchanged (1e-9 relative), and the float32 capture
within max(1e-4, 2 x float32 eager's own error); see tests/coverage_sweep.py.

The quick subset (one architecture per attention kind) runs by default. The whole sweep
(about 250 model types, minutes on 2 cores) runs with SINKVIZ_FULL_COVERAGE=1 and rewrites
sinkviz/data/coverage.json, the table that README and ``python -m sinkviz models --coverage`` show.
"""

import json
import os

import numpy as np
import pytest
import torch

from coverage_sweep import model_types, run_all
from sinkviz.engine.capture import indexed_keys_mask
from sinkviz.engine.masks import mask_hides_future, shows_causal_window
from sinkviz.output.coverage import TABLE, counts, load_table, markdown, render

QUICK = {  # model type, mapping -> expected status (one per attention kind, the families run most)
    ("llama", "causal"): "exact",            # GQA, RoPE, the causal mask skipped for SDPA
    ("gpt2", "causal"): "exact",             # multi-head, learned positions
    ("mistral", "causal"): "exact",          # sliding window
    ("gemma3_text", "causal"): "exact",      # sliding and global layers mixed
    ("deepseek_v3", "causal"): "exact",      # multi-head latent attention, mixture of experts (float64 eager experts)
    ("deepseek_v32", "causal"): "exact",     # sparse attention: the indexer's keys
    ("bigbird_pegasus", "causal"): "exact",  # no SDPA in transformers: eager's materialized mask
    ("gemma4_text", "causal"): "exact",      # per-layer head sizes
    ("qwen3_next", "causal"): "exact",       # hybrid: gated-delta-net (linear attention) and attention layers
    ("jamba", "causal"): "exact",            # hybrid: Mamba and attention layers
    ("recurrent_gemma", "causal"): "exact",  # hybrid: RG-LRU recurrent blocks (its config says "linear_attention")
    ("bert", "masked"): "exact",             # bidirectional encoder, checkpoint without a pooler
    ("layoutlm", "masked"): "exact",         # bidirectional by its mask, no is_causal attribute
    ("falcon", "causal"): "exact",           # attention classes from its own table: eager output_attentions
    ("bloom", "causal"): "exact",            # ALiBi computed outside the interface: eager output_attentions
    ("inkling2_text", "causal"): "exact",    # per-query learned sinks, position bias, attention over depth
    ("xlnet", "causal"): "exact",            # weights loading leaves in float32: cast for float64
    ("mamba", "causal"): "refused",          # no attention at all
    ("squeezebert", "masked"): "refused",    # layers called without module hooks
    ("dots3_note_text", "causal"): "refused",  # head count differs by layer
    ("cpmant", "causal"): "refused",         # its returned maps crop the learned prompt tokens it attends to
}


def assert_clean(rows):
    bad = [f"{r['mapping']} {r['type']}: {r['status']}: {r.get('reason')}" for r in rows
           if r["status"] in ("wrong", "crash")]
    assert not bad, "\n".join(bad)


def test_quick_subset_is_exact_or_refused_as_expected():
    rows = run_all(list(QUICK), jobs=1, timeout=240, progress=lambda _line: None)
    got = {(r["type"], r["mapping"]): r["status"] for r in rows}
    assert_clean(rows)
    assert got == QUICK, {k: (got[k], v) for k, v in QUICK.items() if got[k] != v}
    reasons = {r["type"]: r.get("reason", "") for r in rows}
    assert "no attention heads" in reasons["mamba"]
    assert "without calling them as modules" in reasons["squeezebert"]
    assert "differ in head count (4, then 2 in attention layer 2)" in reasons["dots3_note_text"]
    assert "CpmAntForCausalLM's attention maps leave out keys its tokens attend to" in reasons["cpmant"]
    for r in rows:
        if r["status"] == "exact":
            assert max(r["err64"].values()) <= 1e-12 and r["output_rel_err"] <= 1e-9, r
    kinds = {r["type"]: r.get("layer_kinds") for r in rows}
    assert kinds["qwen3_next"] == ["linear attention", "attention"] and kinds["jamba"] == ["mamba", "attention"]
    assert kinds["recurrent_gemma"][:2] == ["recurrent", "recurrent"] and "attention" in kinds["recurrent_gemma"]
    assert kinds["llama"] is None


def test_hybrid_rows_are_the_attention_layers_everywhere(tmp_path):
    """qwen3_next's tiny model: layer 0 is linear attention, layer 1 attention. One row, named
    layer 1 in the statistics, the store's arrays, the report and the charts."""
    from coverage_sweep import build
    from sinkviz.engine.capture import capture
    from sinkviz.output.figures import sink_bars
    from sinkviz.numbers.metrics import layer_sinks
    from sinkviz.flow.models import load_model
    from sinkviz.numbers.stats import AttentionStats
    loaded = load_model(build("qwen3_next", "causal", tmp_path / "m"), device="cpu", dtype="float32")
    stats = capture(loaded.model, torch.randint(4, 120, (1, 20)))
    assert (stats.n_layers, stats.layers, stats.layer_ids) == (1, (1,), (1,))
    assert stats.layer_kinds == ("linear attention", "attention")
    again = AttentionStats.from_arrays(stats.to_arrays())
    assert (again.layers, again.layer_kinds) == (stats.layers, stats.layer_kinds)
    sinks = layer_sinks(stats, 3)
    assert sinks.severity == ("shallow",) and list(sink_bars(sinks).data[0].x) == [1]
    from sinkviz.numbers.segments import openings, segment_shares
    from sinkviz.output import segment_figures
    from sinkviz.output.figures import position_heatmap
    from sinkviz.numbers.segments import Segment
    parts = (Segment("user", "user turn", ((0, 20),)),)
    assert list(segment_figures.segment_share_bars(segment_shares(stats, parts), stats.layer_ids).data[0].x) == [1]
    assert list(segment_figures.opening_lines(openings(stats, parts, 3), stats.layer_ids).data[0].x) == [1]
    assert list(position_heatmap(stats, 0, "w").data[0].y) == [1]
    old = {k: v for k, v in stats.to_arrays().items() if k not in ("layers", "layer_kinds")}
    assert AttentionStats.from_arrays(old).layer_ids == (0,)   # results stored before hybrids


@pytest.mark.skipif(os.environ.get("SINKVIZ_FULL_COVERAGE") != "1",
                    reason="the whole sweep takes minutes: SINKVIZ_FULL_COVERAGE=1 to run it")
def test_full_sweep_has_no_wrong_number_or_crash_and_keeps_every_exact_type():
    import coverage_sweep
    before = load_table()
    start = __import__("time").perf_counter()
    rows = run_all(model_types(), jobs=int(os.environ.get("SINKVIZ_COVERAGE_JOBS", "2")), timeout=300,
                   progress=lambda line: print(line, flush=True))
    rows.sort(key=lambda r: (r["mapping"] != "causal", r["type"]))
    table = {"meta": coverage_sweep.meta(__import__("time").perf_counter() - start, 2), "rows": rows}
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    assert_clean(rows)
    now = {(r["type"], r["mapping"]) for r in rows if r["status"] == "exact"}
    lost = {(r["type"], r["mapping"]) for r in before["rows"] if r["status"] == "exact"} - now
    assert not lost, f"exact in the committed table, not any more: {sorted(lost)}"


def test_committed_table_is_complete_and_printed_as_counted(capsys):
    from sinkviz.cli import main
    table = load_table()
    assert {(r["type"], r["mapping"]) for r in table["rows"]} == set(model_types())
    assert_clean(table["rows"])
    c = counts(table)
    assert main(["models", "--coverage"]) == 0
    out = capsys.readouterr().out
    assert f"causal: {sum(c['causal'].values())} model types: {c['causal']['exact']} exact" in out
    refused = [r for r in table["rows"] if r["status"] == "refused"]
    assert all(f"{r['type']:<28} refused" in out for r in refused)
    assert all(r.get("reason") for r in refused)
    assert markdown(table).count("| refused |") == len(refused)
    assert render(table, show_all=True).count(" exact") >= c["causal"]["exact"] + c["masked"]["exact"]
    from sinkviz.flow.embedded import DEFAULT_MODEL, EMBEDDED
    assert main(["models"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(EMBEDDED) and f"{DEFAULT_MODEL} " in listed[0] + " "
    assert [line for line in listed if line.endswith("(default)")][0].startswith(DEFAULT_MODEL)


def test_causality_is_read_from_the_mask():
    causal = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]
    assert mask_hides_future(causal, 5, 5) and not mask_hides_future(torch.ones(1, 1, 5, 5, dtype=torch.bool), 5, 5)
    float_mask = torch.zeros(1, 1, 5, 5).masked_fill(~causal, torch.finfo(torch.float32).min)
    assert mask_hides_future(float_mask, 5, 5)
    assert not mask_hides_future(torch.zeros(1, 1, 1, 5), 5, 5)         # padding-only mask, broadcast
    assert mask_hides_future(causal[..., 2:, :], 3, 5)                   # queries 2..4 of 5 keys
    assert mask_hides_future(causal, 5, 5, rows=2)                       # in row blocks alike
    leak = causal.clone()
    leak[0, 0, 3, 4] = True                                              # one later key seen
    assert not mask_hides_future(leak, 5, 5, rows=2)


def test_a_mask_is_plain_causal_only_when_it_shows_exactly_the_causal_window():
    """masks.shows_causal_window: what lets a masked layer take the fused kernels, which apply the
    causal (window) rule themselves; one key hidden or shown beyond the rule refuses it."""
    i, j = torch.arange(7)[:, None], torch.arange(7)[None, :]
    causal, window = (j <= i)[None, None], ((j <= i) & (i - j < 3))[None, None]
    assert shows_causal_window(causal, 7, None) and shows_causal_window(window, 7, 3, rows=2)
    assert not shows_causal_window(causal, 7, 3) and not shows_causal_window(window, 7, None)
    float_window = torch.zeros(1, 1, 7, 7).masked_fill(~window, torch.finfo(torch.float32).min)
    assert shows_causal_window(float_window.expand(1, 4, 7, 7), 7, 3)            # per-head, additive
    for cell, seen in [((5, 1), True), ((4, 4), False), ((0, 0), False)]:
        changed = window.clone()
        changed[0, 0, cell[0], cell[1]] = seen                                   # one key shown or hidden
        assert not shows_causal_window(changed, 7, 3, rows=3), cell
    assert not shows_causal_window(torch.ones(1, 1, 1, 7, dtype=torch.bool), 7, None)   # padding-only, broadcast
    biased = float_window.clone()
    biased[0, 0, 5, 4] = -0.5                                                    # a bias where it shows (ALiBi-like)
    assert not shows_causal_window(biased, 7, 3)


def test_indexed_keys_fold_into_the_mask_as_eager_does():
    mask = torch.ones(1, 1, 3, 4, dtype=torch.bool).tril(1)              # 3 queries, 4 keys
    indices = torch.tensor([[[0, 1], [1, 2], [0, 3]]])                   # [1, Lq, topk]
    kept = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(indexed_keys_mask(mask, indices, 4)[0, 0], kept & mask[0, 0])
    folded = indexed_keys_mask(torch.zeros(1, 1, 3, 4), indices, 4)[0, 0]  # additive: 0 kept, min blocked
    np.testing.assert_array_equal(folded.numpy(), np.where(kept, 0.0, np.finfo(np.float32).min))
    assert indexed_keys_mask(mask, None, 4) is mask


def test_attention_outside_the_interface_comes_from_eager_maps(tmp_path):
    """Falcon picks its attention class from its own table: load_model falls back to its eager
    path, says so in ModelInfo, and the memory guard counts every layer's L x L map."""
    from coverage_sweep import build
    from sinkviz.engine.capture import capture
    from sinkviz.flow.memory import Shape, estimate_bytes
    from sinkviz.flow.models import load_model
    folder = build("falcon", "causal", tmp_path / "m")
    loaded = load_model(folder, device="cpu", dtype="float32")
    assert loaded.info.eager_attention and loaded.model.config._attn_implementation == "eager"
    stats = capture(loaded.model, torch.randint(4, 120, (1, 30)))
    assert stats.causal and np.isnan(stats.value_norm).all() and np.isfinite(stats.hidden_norm).all()
    np.testing.assert_allclose(stats.maps.sum(-1), 1.0, rtol=1e-5)       # every query row sums to 1
    shape = Shape.of(loaded.model)
    assert shape.eager and estimate_bytes(shape, 1000, 128, "cpu") - estimate_bytes(
        Shape(**{**shape.__dict__, "eager": False}), 1000, 128, "cpu") == (shape.layers + 1) * shape.heads * 10**6 * 4
    from sinkviz.flow.analysis import Settings
    from sinkviz.errors import UnsupportedArchitecture
    from sinkviz.flow.mitigation import attention_scaling
    with pytest.raises(UnsupportedArchitecture, match="computes attention its own way"):
        attention_scaling("w1 w2 w3 w4", Settings(model=folder, device="cpu", use_template=False))



def test_only_attention_over_the_prompts_tokens_is_recorded():
    """Token attention [B, heads, L, D] is recorded, also where it attends to more keys than tokens
    (then refused as such); Inkling 2's attention over a token's residual blocks, [B, L, queries,
    hidden] against [B, L, blocks, hidden], is not, whatever the prompt's length."""
    from sinkviz.engine.capture import over_prompt
    q = lambda *shape: torch.zeros(shape)  # noqa: E731
    assert over_prompt(q(1, 4, 40, 16), q(1, 2, 40, 16), 40)              # GQA self-attention
    assert over_prompt(q(1, 4, 40, 16), q(1, 2, 50, 16), 40)              # extra memory keys
    assert over_prompt(q(1, 2, 2, 16), q(1, 2, 2, 16), 2)                 # the load probe, 2 heads
    assert not over_prompt(q(1, 40, 1, 64), q(1, 40, 2, 64), 40)          # over residual blocks
    assert not over_prompt(q(1, 40, 3, 64), q(1, 40, 3, 64), 40)          # three queries, three blocks
    assert not over_prompt(q(1, 2, 1, 64), q(1, 2, 2, 64), 2)             # the probe's
    assert not over_prompt(q(1, 1, 1, 64), q(1, 1, 2, 64), 1)             # a 1-token prompt's
    assert over_prompt(q(1, 40, 1, 64), q(1, 40, 2, 64), None)            # no prompt length given


@pytest.mark.parametrize("model_type", ["xlnet", "bloom"])
def test_eager_path_models_load_in_bfloat16(tmp_path, model_type):
    """bfloat16 is the default on CUDA. XLNet makes its attention weights as float32 whatever the
    dtype (its own code then fails on bfloat16 activations): they are cast. The eager path's
    statistics are the model's own bfloat16 maps reduced, each map row within bfloat16's epsilon of 1."""
    from coverage_sweep import build
    from sinkviz.engine.capture import capture
    from sinkviz.flow.models import load_model
    loaded = load_model(build(model_type, "causal", tmp_path / "m"), device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    stats = capture(loaded.model, torch.randint(4, 120, (1, 30)))
    rows = stats.maps.sum(-1)
    assert np.abs(rows - 1).max() <= torch.finfo(torch.bfloat16).eps and np.abs(rows - 1).max() > 1e-4


def test_a_resweep_replaces_its_rows_only():
    from coverage_sweep import merged
    meta = {"transformers": "5.24.0", "torch": "2.13.0", "tokens": 40, "date": "2026-11-25"}
    old = {"meta": meta, "rows": [{"type": "xglm", "mapping": "causal", "status": "refused"},
                                  {"type": "llama", "mapping": "causal", "status": "exact"},
                                  {"type": "xmod", "mapping": "masked", "status": "refused"}]}
    new = {"meta": {**meta, "date": "2026-11-26"}, "rows": [{"type": "xglm", "mapping": "causal", "status": "exact"},
                                                            {"type": "xmod", "mapping": "masked", "status": "exact"}]}
    table = merged(old, new)
    assert sorted((r["type"], r["status"]) for r in table["rows"]) == [("llama", "exact"), ("xglm", "exact"),
                                                                      ("xmod", "exact")]
    assert table["meta"]["resweeps"] == [{"date": "2026-11-26", "rows": ["xglm (causal)", "xmod (masked)"]}]
    assert table["meta"]["date"] == "2026-11-25" and "; 2 rows re-swept 2026-11-26." in markdown(table)
    with pytest.raises(SystemExit, match="swept with transformers 5.24.0, this sweep with 5.25.0"):
        merged(old, {**new, "meta": {**new["meta"], "transformers": "5.25.0"}})
