"""Shared fixtures: tiny random models of real architectures (saved as safetensors with a
word-level tokenizer built in code), the embedded default model, and a private store."""

import contextlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

VOCAB = 120


def tiny_tokenizer():
    """A word-level fast tokenizer over w0..w115 plus <s>, </s>, <unk>, <pad>; adds <s> first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{f"w{i}": i + 4 for i in range(VOCAB - 4)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def tiny_configs() -> dict:
    """Random tiny configs: GQA (Llama, Qwen2), GPT-2, and Mistral / Gemma-3 with sliding windows."""
    import transformers as T
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, max_position_embeddings=512)
    return {
        "llama-gqa": T.LlamaConfig(**common, num_key_value_heads=2),
        "qwen2-gqa": T.Qwen2Config(**common, num_key_value_heads=1),
        "gpt2": T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=512),
        "mistral-window": T.MistralConfig(**common, num_key_value_heads=2, sliding_window=7),
        "gemma3-window": T.Gemma3TextConfig(**{**common, "num_hidden_layers": 6}, num_key_value_heads=1,
                                            head_dim=8, sliding_window=6),
    }


def save_tiny_model(config, folder, seed=0, safe=True, model_class=None):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(seed)
    model = (model_class or AutoModelForCausalLM).from_config(config)
    with torch.no_grad():  # larger random weights give peaked, sink-like attention to test
        for p in model.parameters():
            p.mul_(3.0)
    model.save_pretrained(folder)
    if not safe:  # transformers 5 always writes safetensors; make a pickle-only checkpoint by hand
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict:
    """name -> folder of a saved tiny random model."""
    root = tmp_path_factory.mktemp("tiny")
    return {name: save_tiny_model(cfg, root / name) for name, cfg in tiny_configs().items()}


def sink_configs() -> dict:
    """Softmaxes SDPA cannot run: gpt-oss's learned sink (``s_aux``, MoE) and Gemma 2's soft cap,
    both alternating sliding-window (6 tokens) and full layers."""
    import transformers as T
    small = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, sliding_window=6, max_position_embeddings=512)
    return {"gpt-oss": T.GptOssConfig(**small, num_local_experts=4, num_experts_per_tok=2),
            "gemma2": T.Gemma2Config(**small, attn_logit_softcapping=2.0)}


@pytest.fixture(scope="session")
def sink_models(tmp_path_factory) -> dict:
    """name -> saved tiny model of ``sink_configs``; weights x3 and gpt-oss's sink logits
    ~ N(0, 2), so that sinks and caps matter."""
    return {name: save_scaled(config, tmp_path_factory.mktemp(name), 3.0) for name, config in sink_configs().items()}


def save_scaled(config, folder, scale: float) -> str:
    """A random model of ``config`` (seed 0), weights x ``scale``, sink logits ~ N(0, 2), saved with
    the tiny tokenizer to ``folder``."""
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            p.normal_(0.0, 2.0) if pname.endswith("sinks") else p.mul_(scale)
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    from sinkviz.flow.embedded import DEFAULT_MODEL, ensure_converted
    return str(ensure_converted(DEFAULT_MODEL))


@pytest.fixture
def store(tmp_path):
    from sinkviz.flow.store import ResultStore
    return ResultStore(tmp_path / "results")


APP = str(Path(__file__).resolve().parent.parent / "app.py")


@contextlib.contextmanager
def app_store(directory):
    """Pages use a private result store in ``directory`` (streamlit's cached store is reset)."""
    import streamlit as st
    os.environ["SINKVIZ_WARM"] = "0"
    old = os.environ.get("SINKVIZ_STORE_DIR")
    os.environ["SINKVIZ_STORE_DIR"] = str(directory)
    st.cache_resource.clear()
    try:
        yield
    finally:
        st.cache_resource.clear()
        if old is None:
            os.environ.pop("SINKVIZ_STORE_DIR")
        else:
            os.environ["SINKVIZ_STORE_DIR"] = old


def analyze_page(prompt: str, first_n: int = 3, tab: str | None = None, timeout: int = 120):
    """AppTest of the Analyze page after pressing Analyze on ``prompt`` (with ``tab`` open)."""
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(APP, default_timeout=timeout)
    if tab:
        at.session_state["an_tab"] = tab
    at.run()
    at.text_area(key="an_prompt").set_value(prompt)
    at.slider(key="an_first_n").set_value(first_n)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def app_test(tmp_path):
    """A factory of AppTests of app.py on a private store."""
    from streamlit.testing.v1 import AppTest
    with app_store(tmp_path / "page-store"):
        yield lambda: AppTest.from_file(APP, default_timeout=300)


def random_words(n: int, generator: torch.Generator | None = None) -> str:
    ids = torch.randint(0, VOCAB - 4, (n,), generator=generator)
    return " ".join(f"w{i}" for i in ids.tolist())


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (tests/browser.py), one per test module; screenshots go to test-artifacts/."""
    from playwright.sync_api import sync_playwright

    from browser import ARGS, ARTIFACTS, CHROMIUM
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, default_model_dir):
    """The dashboard on a loopback port with a private store (tests/browser.py); its URL. After
    the module's tests its log may hold no warning twice (a warning per rerun floods a log)."""
    from browser import streamlit_server, warnings_in
    folder = tmp_path_factory.mktemp("e2e")
    with streamlit_server(folder / "store", log=folder / "server.log") as url:
        yield url
    assert {line: n for line, n in warnings_in(folder / "server.log").items() if n > 1} == {}
