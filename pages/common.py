"""Widgets and glue shared by the pages. Only calls sinkviz and renders."""

import logging
import os
from dataclasses import replace

import streamlit as st

from sinkviz.flow.analysis import Analysis, Settings, analyze, load_stored
from sinkviz.flow.devices import DTYPES, available_devices
from sinkviz.flow.embedded import DEFAULT_MODEL, EMBEDDED
from sinkviz.errors import SinkvizError
from sinkviz.numbers.metrics import Thresholds
from sinkviz.flow.models import check_allowed, offered_models
from sinkviz.flow.progress import Eta, count_line
from sinkviz.flow.store import ResultStore

log = logging.getLogger("sinkviz.app")

OTHER_MODEL = "Other: a Hugging Face id or a local folder"
URL_PROMPT_LIMIT = 4000  # longer prompts are shared by store key only
EXAMPLES = {
    "Prompt A (seed 003)": "You are a helpful assistant. Answer concisely.",
    "Prompt B (seed 003)": "Assistant: helpful and concise.\nYou are a helpful assistant. Answer concisely.",
    "Capital of France": "What is the capital of France? Answer in one sentence.",
    "RAG-style context": ("Use the documents below to answer.\n\nDocument 1: The Eiffel Tower was "
                          "completed in 1889 for the World's Fair in Paris.\nDocument 2: The tower is "
                          "330 metres tall and was the tallest man-made structure until 1930.\n\n"
                          "Question: When was the Eiffel Tower completed?"),
    "Placeholder at position 0": ":\nYou are a helpful assistant. Answer concisely.",
}


@st.cache_resource
def store() -> ResultStore:
    """One store per server process (diskcache is thread- and process-safe)."""
    return ResultStore()


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def served_to_others() -> bool:
    """True when this page may be seen from another machine: SINKVIZ_SHARED=1, a server that
    listens beyond loopback, a request through a proxy, or from a remote address. Then only
    the embedded and allowlisted models can be named (in a link or the picker)."""
    if os.environ.get("SINKVIZ_SHARED") == "1":
        return True
    if (st.get_option("server.address") or "0.0.0.0") not in LOOPBACK:
        return True
    headers = st.context.headers or {}
    if any(name in headers for name in ("X-Forwarded-For", "X-Real-Ip", "Forwarded")):
        return True
    return isinstance(st.context.ip_address, str)   # None on loopback


def model_picker(key: str, default: str = DEFAULT_MODEL) -> str:
    """Embedded models first (the default preselected), then free text for any other model;
    served to others: the embedded and allowlisted models only."""
    if served_to_others():
        offered = offered_models()
        labels = [EMBEDDED[m].label if m in EMBEDDED else m for m in offered]
        start = offered.index(default) if default in offered else 0
        return offered[labels.index(st.selectbox("Model", labels, index=start, key=f"{key}_model_choice"))]
    labels = [m.label for m in EMBEDDED.values()] + [OTHER_MODEL]
    names = list(EMBEDDED) + [None]
    start = names.index(default) if default in EMBEDDED else len(names) - 1
    choice = st.selectbox("Model", labels, index=start, key=f"{key}_model_choice")
    name = names[labels.index(choice)]
    if name is not None:
        return name
    typed = st.text_input("Hugging Face id or local folder", key=f"{key}_model_text",
                          value="" if default in EMBEDDED else default,
                          placeholder="e.g. HuggingFaceTB/SmolLM2-360M-Instruct or /models/my-model")
    return typed.strip() or DEFAULT_MODEL


def device_dtype_pickers(key: str, device: str | None, dtype: str | None) -> tuple[str | None, str | None]:
    devices = ["auto"] + available_devices()
    dtypes = ["auto"] + list(DTYPES)
    c1, c2 = st.columns(2)
    dev = c1.selectbox("Device", devices, index=devices.index(device) if device in devices else 0,
                       key=f"{key}_device", help="auto: CUDA, then Apple MPS, then CPU")
    dt = c2.selectbox("Dtype", dtypes, index=dtypes.index(dtype) if dtype in dtypes else 0,
                      key=f"{key}_dtype", help="auto: bfloat16 on CUDA, float32 elsewhere")
    return (None if dev == "auto" else dev), (None if dt == "auto" else dt)


def threshold_inputs(key: str) -> Thresholds:
    c1, c2, c3 = st.columns(3)
    warning = c1.number_input("Warning at", 0.0, 1.0, 0.35, 0.05, key=f"{key}_warn", format="%.2f")
    critical = c2.number_input("Critical at", 0.0, 1.0, 0.50, 0.05, key=f"{key}_crit", format="%.2f")
    ratio = c3.number_input("Flag above × uniform", 1.0, 100.0, 5.0, 0.5, key=f"{key}_ratio")
    try:
        return Thresholds(warning=warning, critical=critical, ratio_flag=ratio)
    except SinkvizError as err:
        st.warning(f"{err}; using the defaults")
        return Thresholds()


def run_analysis(prompt: str, settings: Settings, label: str = "") -> Analysis | None:
    """analyze() with live progress and step times; errors become a message, not a crash."""
    failure = None
    with st.status(f"Analyzing {label}".strip(), expanded=False) as status:
        try:
            if served_to_others():
                check_allowed(settings.model, shared=True)
            result = analyze(prompt, settings, store=store(),
                             progress=lambda step: status.update(label=f"{label} {step} …".strip()))
        except SinkvizError as err:
            failure = str(err)
        except Exception as err:  # a bug or an out-of-memory: say so and keep the page usable
            log.exception("analysis failed")
            failure = f"Analysis failed: {type(err).__name__}: {err}"
        if failure is None:
            steps = ", ".join(f"{name} {secs:.2f} s" for name, secs in result.timings)
            source = "from the result store" if result.cached else "computed"
            status.update(label=f"{label} done ({source}): {steps}".strip(), state="complete")
        else:
            status.update(label=f"{label} failed".strip(), state="error")
    if failure is not None:
        st.error(f"{label}: {failure}" if label else failure)
        return None
    if store().warning:
        st.warning(f"Not saved: {store().warning}.")
    show_model_in_sidebar(result.model)
    return result


def show_model_in_sidebar(info) -> None:
    """app.py's sidebar, drawn after the page, names this model (``info``: models.ModelInfo):
    the one whose numbers the page shows."""
    st.session_state["last_model_info"] = info


def guarded(run, what: str):
    """run(); a SinkvizError becomes its message, anything else '<what> failed: ...' (logged).
    Returns run()'s result, or None after an error: the page stays usable."""
    try:
        return run()
    except SinkvizError as err:
        st.error(str(err))
    except Exception as err:  # out of memory or a bug
        log.exception("%s failed", what)
        st.error(f"{what} failed: {type(err).__name__}: {err}")
    return None


def step_progress(bar, noun: str):
    """A progress callback for engine steps named 'i/total' (sent as step i starts), shown on
    ``bar`` as 'noun 3/40 · ~25 s left'."""
    eta = Eta()

    def progress(step: str) -> None:
        done, total = (int(x) for x in step.split("/"))
        bar.progress((done - 1) / total, text=count_line(noun, done, total, eta.left(done - 1, total)))
    return progress


FIGURES_KEPT = 64   # figures kept for all sessions (a large heatmap is at most a few MB)


@st.cache_resource(max_entries=FIGURES_KEPT, show_spinner=False)
def _kept(builder: tuple[str, str], key: str, params: tuple, _build, _source):
    return _build(_source, *params)


def kept_figure(build, source, *params):
    """``build(source, *params)``, built once per builder, ``source.key`` (an analysis key, which
    names its numbers) and ``params``, then kept for every session: a tab switch or any other
    rerun shows the kept figure instead of building it again. ``build`` must depend on nothing
    but its arguments; the figure is never mutated."""
    return _kept((build.__code__.co_filename, build.__qualname__), source.key, params, build, source)


def open_in_analyze(settings: Settings, key: str, prompt: str, first_n: int | None = None) -> None:
    """Switch to Analyze on a stored analysis, through the same URL a shared link uses."""
    st.session_state.pop("an_ready", None)
    st.session_state.pop("an_key", None)
    params = {**settings_to_params(settings), "key": key, "prompt": prompt[:URL_PROMPT_LIMIT]}
    if first_n is not None:
        params["n"] = str(first_n)
    st.switch_page("pages/analyze.py", query_params=params)


def open_stored(key: str) -> Analysis | None:
    """A stored analysis (marked as served by the store), or None. The sidebar then names its model."""
    found = load_stored(store(), key)
    if found is None:
        return None
    show_model_in_sidebar(found.model)
    return replace(found, cached=True)


def first_n_from_params(params, default: int = 3) -> int:
    """The URL's n (1..8), or the default when absent or not a number."""
    value = params.get("n", "")
    return min(8, max(1, int(value))) if value.isascii() and value.isdigit() else default


def settings_from_params(params) -> Settings:
    """Settings named in the URL's query parameters (unknown or bad values fall back; served to
    others, a model that is not offered falls back to the default, with a message)."""
    base = Settings()
    model = params.get("model", base.model)
    if served_to_others() and model not in offered_models():
        st.warning(f"This server loads only the models it offers ({', '.join(offered_models())}); "
                   f"the link's model was not loaded, {base.model} is used instead.")
        model = base.model
    try:
        return replace(base, model=model,
                       use_template=params.get("template", "1") != "0",
                       system=params.get("system") or None,
                       map_size=int(params.get("map", base.map_size)))
    except (ValueError, SinkvizError):
        return base


def settings_to_params(settings: Settings) -> dict:
    params = {"model": settings.model, "template": "1" if settings.use_template else "0",
              "map": str(settings.map_size)}
    if settings.system:
        params["system"] = settings.system
    return params
