"""Segments: spans from the tokenizer's offsets, and shares / openings equal to a float64 eager
reference computed straight from the definitions on full attention maps."""

import shutil

import numpy as np
import pytest
import torch

from conftest import random_words
from reference import eager_attentions
from sinkviz.flow.analysis import Settings, analyze
from sinkviz.numbers.segments import find_blocks, openings, segment_shares, segments_of

CHATML = ("{% if messages[0]['role'] != 'system' %}<s> system\nw1 w2 w3 w4 </s>\n{% endif %}"
          "{% for m in messages %}<s> {{ m['role'] }}\n{{ m['content'] }} </s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s> assistant\n{% endif %}")


@pytest.fixture(scope="module")
def chat_model(tiny_models, tmp_path_factory):
    """The tiny Llama with a ChatML-like template that adds a default system turn."""
    from transformers import AutoTokenizer
    folder = tmp_path_factory.mktemp("chat") / "llama-chat"
    shutil.copytree(tiny_models["llama-gqa"], folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHATML
    tok.save_pretrained(folder)
    return str(folder)


def eager_shares(att: np.ndarray, positions: list[np.ndarray]) -> np.ndarray:
    """[l, h, S(+1)] mean_i sum_{j in S} a[i, j]; the learned sink (1 - row sum) last."""
    shares = [att[..., p].sum(-1).mean(-1) for p in positions]
    return np.stack(shares + [1.0 - att.sum(-1).mean(-1)], -1)


def check_against_eager(folder, prompt, settings, store, blocks=None, first_n=3, atol=1e-10, **load):
    result = analyze(prompt, settings, store=store)
    segs = segments_of(result.tokens, blocks)
    att, _ = eager_attentions(folder, torch.tensor([result.tokens.token_ids]), **load)     # [l, h, L, L]
    got = segment_shares(result.stats, segs)
    want = eager_shares(att, [s.positions for s in segs])
    learned = result.stats.learned_sink is not None
    np.testing.assert_allclose(got.heads_share, want if learned else want[..., :-1], atol=atol)
    np.testing.assert_allclose(got.heads_share.sum(-1), 1.0, atol=atol)
    covered = np.sort(np.concatenate([s.positions for s in segs]))
    np.testing.assert_array_equal(covered, np.arange(result.stats.n_tokens))     # a partition
    for layer in range(att.shape[0]):
        visible = (att[layer, 0] > 0).astype(float)                                # [L, L] the mask
        rows = visible / visible.sum(-1, keepdims=True)
        np.testing.assert_allclose(got.uniform[layer, :len(segs)], [rows[:, s.positions].sum(-1).mean() for s in segs])
    opens = openings(result.stats, segs, first_n)
    for k, pos in enumerate(opens.positions):
        u = pos[0]
        np.testing.assert_allclose(opens.heads_mass[..., k], att[:, :, u:, list(pos)].sum(-1).mean(-1), atol=atol)
    return result, segs, opens


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-window", "gemma3-window"])
def test_block_shares_equal_eager_reference(tiny_models, store, name):
    prompt = f"{random_words(9)}\n\n{random_words(12)}\n \n{random_words(7)}"
    settings = Settings(model=tiny_models[name], dtype="float64", map_size=16)
    result, segs, _ = check_against_eager(tiny_models[name], prompt, settings, store, blocks="blank lines")
    assert [s.name for s in segs] == ["special tokens", "block 1", "block 2", "block 3"]
    assert [s.n_tokens for s in segs] == [1, 9, 12, 7] and segs[0].spans == ((0, 1),)


def test_learned_sink_is_a_segment_and_all_sum_to_one(sink_models, store):
    prompt = f"{random_words(14)}\n---\n{random_words(10)}"
    settings = Settings(model=sink_models["gpt-oss"], dtype="float32", map_size=16)   # grouped experts: no float64
    result, segs, _ = check_against_eager(sink_models["gpt-oss"], prompt, settings, store, blocks="auto",
                                          atol=1e-5, experts_implementation="eager")
    shares = segment_shares(result.stats, segs)
    assert shares.names[-1] == "learned sink" and [s.n_tokens for s in segs] == [1, 15, 10]
    assert shares.share[..., -1].min() > 0.01


def test_template_turns_found_from_offsets(chat_model, store):
    prompt = random_words(11)
    settings = Settings(model=chat_model, dtype="float64", map_size=64)
    result, segs, opens = check_against_eager(chat_model, prompt, settings, store)
    L = result.stats.n_tokens
    assert {s.name: s.spans for s in segs} == {
        "template": ((0, 2), (6, 9), (20, L)), "system turn": ((2, 6),), "user turn": ((9, 20),)}
    assert opens.names == ("sequence", "system turn", "user text")
    assert opens.positions == ((0, 1, 2), (2, 3, 4), (9, 10, 11))
    assert [result.tokens.tokens[p] for p in opens.positions[2]] == prompt.split()[:3]
    explicit = analyze(prompt, Settings(model=chat_model, dtype="float64", map_size=64, system="w9 w8"), store=store)
    assert {s.name: s.spans for s in segments_of(explicit.tokens)}["system turn"] == ((2, 4),)


def test_default_model_turns_and_shares(default_model_dir, store):
    prompt = "Use the notes below.\n\nこんにちは 🎉 Note one.\n\nQuestion: what now?"
    result, segs, opens = check_against_eager(default_model_dir, prompt, Settings(), store, blocks="auto",
                                             atol=1e-5)
    tokens, text = result.tokens, result.tokens.text
    by_name = {s.name: s for s in segs}
    joined = lambda s: text[tokens.offsets[s.positions[0]][0]:tokens.offsets[s.positions[-1]][1]]  # noqa: E731
    assert joined(by_name["system turn"]) == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert [joined(by_name[f"block {k}"]) for k in (1, 2, 3)] == [
        "Use the notes below.\n\n", "こんにちは 🎉 Note one.\n\n", "Question: what now?"]
    assert [tokens.labels[p] for p in opens.positions[2]] == ["Use", "␣the", "␣notes"]


@pytest.mark.parametrize("rule,text,want", [
    ("blank lines", "a\n\nb\n\n\nc", ["a\n\n", "b\n\n\n", "c"]),
    ("--- lines", "intro\n---\nbody\n***\nend", ["intro\n---\n", "body\n***\n", "end"]),
    ("headings", "pre\n# One\nx\n## Two\ny", ["pre\n", "# One\nx\n", "## Two\ny"]),
    ("auto", "a\n\nb\n---\nc", ["a\n\nb\n---\n", "c"]),
    ("--- lines", "one\n\n---\n\ntwo\n===", ["one\n\n---\n\n", "two\n==="]),
    ("auto", "no boundary at all", ["no boundary at all"]),
])
def test_find_blocks(rule, text, want):
    assert [text[a:b] for a, b in find_blocks(text, rule)] == want


def test_cli_json_and_audit_columns_carry_the_segments(chat_model, store, capsys, monkeypatch):
    import json

    from sinkviz.flow.audit import audit
    from sinkviz.cli import main
    from sinkviz.numbers.metrics import deep_mean
    prompt = f"{random_words(6)}\n\n{random_words(8)}"
    settings = Settings(model=chat_model, map_size=64)
    result = analyze(prompt, settings, store=store)
    segs = segments_of(result.tokens, "blank lines")
    shares = segment_shares(result.stats, segs)
    monkeypatch.setenv("SINKVIZ_STORE_DIR", str(store.directory))
    assert main(["analyze", "--prompt", prompt, "--model", chat_model, "--blocks", "blank lines", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in report["segments"]["parts"]] == ["template", "system turn", "block 1", "block 2"]
    assert [p["n_tokens"] for p in report["segments"]["parts"]] == [8, 4, 6, 8]
    got = np.array([list(row["segment_share"].values()) for row in report["layers"]])   # [layers, S]
    np.testing.assert_allclose(got, shares.share, rtol=1e-12)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    row = audit([prompt], settings, 3, store=store)[0]
    words = prompt.split()
    assert row.first_tokens == " · ".join(f"'{w}'" for w in words[:4])           # the user's, not the template's
    assert row.sequence_first_tokens.startswith("'<s>' · '<unk>' · 'w1'")
    user = shares.share[:, 2:].sum(-1)
    assert row.share_user == pytest.approx(deep_mean(user)) and np.isnan(row.share_learned_sink)
    assert row.share_template + row.share_system + row.share_user == pytest.approx(1.0, abs=1e-5)
    opens = openings(result.stats, segs, 3)
    assert row.user_opening_mass == pytest.approx(deep_mean(opens.mass[:, 2]))


def test_without_offsets_the_whole_sequence_is_one_part(tiny_models, store):
    from dataclasses import replace

    from sinkviz.numbers.readings import audit_columns
    result = analyze(random_words(12), Settings(model=tiny_models["gpt2"], map_size=16), store=store)
    bare = replace(result, tokens=replace(result.tokens, offsets=()))       # a slow tokenizer gives none
    segs = segments_of(bare.tokens, "auto")
    assert [(s.kind, s.spans) for s in segs] == [("sequence", ((0, 13),))]
    np.testing.assert_allclose(segment_shares(bare.stats, segs).share, 1.0, atol=1e-5)
    assert openings(bare.stats, segs, 3).names == ("sequence",)
    columns = audit_columns(bare, 3)
    assert np.isnan(columns["share_user"]) and columns["first_tokens"] == columns["sequence_first_tokens"]


@pytest.mark.parametrize("rule,names,sizes", [("halves", ["first half", "second half"], [15, 15]),
                                              ("thirds", ["beginning", "middle", "end"], [10, 10, 10])])
def test_halves_and_thirds_of_the_users_tokens(chat_model, store, rule, names, sizes):
    prompt = random_words(30)
    settings = Settings(model=chat_model, dtype="float64", map_size=64)
    result, segs, _ = check_against_eager(chat_model, prompt, settings, store, blocks=rule)
    assert [s.name for s in segs] == ["template", "system turn"] + names
    assert [s.n_tokens for s in segs[2:]] == sizes and segs[2].spans[0][0] == 9
