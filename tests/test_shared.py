"""Served to others: a link or the picker can name only the embedded and allowlisted models,
and what is said does not depend on whether a server path exists."""

import os

import pytest

from conftest import app_store
from sinkviz.errors import ModelNotFound
from sinkviz.flow.models import check_allowed

PROMPT = "You are a helpful assistant. Answer concisely."


@pytest.fixture
def shared(monkeypatch, tmp_path, default_model_dir):
    monkeypatch.setenv("SINKVIZ_SHARED", "1")
    monkeypatch.delenv("SINKVIZ_ALLOWED_MODELS", raising=False)
    with app_store(tmp_path / "page-store"):
        yield


def test_engine_refuses_the_same_way_for_existing_and_missing_folders(tmp_path):
    (tmp_path / "real").mkdir()
    messages = []
    for folder in (tmp_path / "real", tmp_path / "missing"):
        with pytest.raises(ModelNotFound) as info:
            check_allowed(str(folder), shared=True)
        messages.append(str(info.value).replace(folder.name, "X"))
    assert messages[0] == messages[1] == (
        f"model '{tmp_path}/X' is not offered by this server (it offers smollm2-135m-instruct, all-minilm-l6-v2)")
    check_allowed("all-minilm-l6-v2", shared=True)


def test_allowlisted_model_is_offered(monkeypatch, tiny_models):
    monkeypatch.setenv("SINKVIZ_ALLOWED_MODELS", tiny_models["gpt2"])
    check_allowed(tiny_models["gpt2"], shared=True)
    with pytest.raises(ModelNotFound):
        check_allowed(tiny_models["llama-gqa"], shared=True)


def test_link_to_a_server_folder_is_not_loaded(shared, tmp_path):
    from streamlit.testing.v1 import AppTest
    from conftest import APP
    (tmp_path / "real").mkdir()
    seen = []
    for folder in (tmp_path / "real", tmp_path / "missing"):
        at = AppTest.from_file(APP, default_timeout=120)
        at.query_params.update(prompt=PROMPT, model=str(folder))
        at.run()
        assert not at.exception and not at.error
        seen.append([w.value for w in at.warning])
        assert "model" not in at.query_params      # the default model, smollm2-135m-instruct
    assert seen[0] == seen[1] == [
        "This server loads only the models it offers (smollm2-135m-instruct, all-minilm-l6-v2); "
        "the link's model was not loaded, smollm2-135m-instruct is used instead."]
    from sinkviz.flow.embedded import EMBEDDED
    assert at.selectbox(key="an_model_choice").options == [m.label for m in EMBEDDED.values()]
