"""Widgets and glue shared by the pages. Only calls sinkviz and renders."""

import logging
import os
import re
from dataclasses import replace

import streamlit as st

from sinkviz.flow.analysis import Analysis, Settings, analyze, load_stored
from sinkviz.flow.devices import DTYPES, available_devices
from sinkviz.flow.embedded import DEFAULT_MODEL, EMBEDDED
from sinkviz.errors import SinkvizError
from sinkviz.numbers.metrics import Thresholds
from sinkviz.output.intro import intro_heatmap, load_intro_example
from sinkviz.flow.models import check_allowed, offered_models
from sinkviz.flow.progress import Eta, count_line
from sinkviz.flow.store import ResultStore

log = logging.getLogger("sinkviz.app")

OTHER_MODEL = "Other: a Hugging Face id or a local folder"
URL_PROMPT_LIMIT = 4000  # longer prompts are shared by store key only
EXAMPLES = {
    "Helpful assistant": "You are a helpful assistant. Answer concisely.",
    "Helpful assistant, a role line first": "Assistant: helpful and concise.\nYou are a helpful assistant. Answer concisely.",
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


def threshold_inputs(key: str, start: Thresholds = Thresholds()) -> Thresholds:
    c1, c2, c3 = st.columns(3)
    warning = c1.number_input("Warning at", 0.0, 1.0, start.warning, 0.05, key=f"{key}_warn", format="%.2f")
    critical = c2.number_input("Critical at", 0.0, 1.0, start.critical, 0.05, key=f"{key}_crit", format="%.2f")
    ratio = c3.number_input("Flag above × uniform", 1.0, 100.0, start.ratio_flag, 0.5, key=f"{key}_ratio")
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


def open_in_analyze(settings: Settings, key: str, first_n: int | None = None) -> None:
    """Switch to Analyze on a stored analysis, through the same URL a shared link uses."""
    params = {**settings_params(settings), "key": key, "n": first_n}
    st.switch_page("pages/analyze.py",
                   query_params={k: param_text(v) for k, v in params.items() if v is not None})


def open_stored(key: str) -> Analysis | None:
    """A stored analysis (marked as served by the store), or None. The sidebar then names its model."""
    found = load_stored(store(), key)
    if found is None:
        return None
    show_model_in_sidebar(found.model)
    return replace(found, cached=True)


PAGES = (("analyze", "Analyze", ":material/search:"), ("compare", "Compare", ":material/compare_arrows:"),
         ("sweep", "Sweep", ":material/show_chart:"), ("audit", "Audit", ":material/checklist:"),
         ("lab", "Lab", ":material/science:"), ("history", "History", ":material/history:"),
         ("method", "Method", ":material/functions:"))
ROUTED = "routed_by_app"   # set by app.py once it has run a page of this session


def app_pages() -> list:
    """The dashboard's pages (``pages/<name>.py``), Analyze the default."""
    return [st.Page(f"pages/{name}.py", title=title, icon=icon, default=name == "analyze")
            for name, title, icon in PAGES]


def through_app() -> None:
    """Call first on every page. Because a pages/ folder exists, Streamlit runs the very first
    request after the server starts straight from that folder (its own page list in the sidebar,
    "app" and "common" included, and app.py skipped); then run it again through app.py."""
    if not st.session_state.get(ROUTED) and not st.session_state.get("rerouted"):
        st.session_state.rerouted = True     # once: never a loop, whatever Streamlit does
        st.navigation(app_pages(), position="hidden")   # ends the folder mode for the server
        st.rerun()


MISSING = object()
INT = re.compile(r"-?[0-9]{1,9}")
FLOAT = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,12})?")


def parse_param(raw: str, kind: type):
    """A URL value as ``kind`` (bool: '0' is False, anything else True), or None if it is not
    one. Only ASCII digits count ('٣' and '²' are not numbers here)."""
    if kind is bool:
        return raw != "0"
    if kind is int:
        return int(raw) if INT.fullmatch(raw) else None
    if kind is float:
        return float(raw) if FLOAT.fullmatch(raw) else None
    return raw


def param_text(value) -> str:
    """How a value is written in the URL: bools as 1/0, floats without float noise."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)


class PageUrl:
    """One page's state in the address bar, so a copied URL opens the same page anywhere.

    Widgets take their default value from ``get`` (never through st.session_state: Streamlit
    drops widget keys the browser did not report when it sees a page change). ``keep`` writes the
    page's state back at the end of a run, leaving out values equal to the defaults; names it is
    not given keep the value the URL had (a widget not drawn this run, such as the layer of a
    closed tab). The last state of each page is remembered in the session, and the sidebar's link
    to a page carries it, so going back to a page finds it as it was left."""

    def __init__(self, page: str, **defaults):
        self.page, self.defaults = page, defaults
        self.params = st.query_params.to_dict()

    def get(self, name: str, default=MISSING, *, choices=None, lo=None, hi=None, kind: type | None = None):
        """The URL's value of ``name``; the default when absent, malformed, out of [lo, hi] or not
        in ``choices``. Its type is ``kind``, else the default's (str when the default is None)."""
        default = self.defaults.get(name) if default is MISSING else default
        raw = self.params.get(name)
        if raw is None:
            return default
        value = parse_param(raw, kind or (str if default is None else type(default)))
        if (value is None or (choices is not None and value not in choices)
                or (lo is not None and value < lo) or (hi is not None and value > hi)):
            return default
        return value

    def keep(self, **values) -> None:
        """Write the page's state to the URL: ``values`` over what the URL had; None, or a value
        equal to its default, removes a name. What the URL had beyond this page's names is dropped."""
        params = {k: v for k, v in self.params.items() if k in self.defaults}
        for name, value in values.items():
            if value is None or (name in self.defaults and value == self.defaults[name]
                                 and type(value) is type(self.defaults[name])):
                params.pop(name, None)
            else:
                params[name] = param_text(value)
        if params != st.query_params.to_dict():
            st.query_params.from_dict(params)
        self.params = params
        st.session_state[f"url_{self.page}"] = params


def remembered_url(page: str) -> dict:
    """The URL state ``page`` had when this session last left it (for the sidebar's link)."""
    return st.session_state.get(f"url_{page}", {})


def url_model(url: PageUrl) -> str:
    """The URL's model; served to others, one that is not offered falls back to the default,
    with a message that reads the same whether or not such a path exists on the server."""
    model = url.get("model") or DEFAULT_MODEL
    if served_to_others() and model not in offered_models():
        st.warning(f"This server loads only the models it offers ({', '.join(offered_models())}); "
                   f"the link's model was not loaded, {DEFAULT_MODEL} is used instead.")
        model = DEFAULT_MODEL
    return model


def url_settings(url: PageUrl) -> Settings:
    """Settings named in the URL (bad values fall back to the defaults)."""
    base = Settings()
    try:
        return replace(base, model=url_model(url), use_template=url.get("template", True),
                       system=url.get("system") or None, map_size=url.get("map", base.map_size, lo=8, hi=512),
                       device=url.get("device"), dtype=url.get("dtype"))
    except SinkvizError:
        return replace(base, model=url_model(url))


def settings_params(settings: Settings) -> dict:
    """What of ``settings`` goes into a URL (see url_settings)."""
    return {"model": settings.model, "template": settings.use_template, "system": settings.system,
            "map": settings.map_size, "device": settings.device, "dtype": settings.dtype}


def url_thresholds(url: PageUrl) -> Thresholds:
    base = Thresholds()
    try:
        return Thresholds(warning=url.get("warn", base.warning, lo=0.0, hi=1.0),
                          critical=url.get("crit", base.critical, lo=0.0, hi=1.0),
                          ratio_flag=url.get("ratio", base.ratio_flag, lo=1.0, hi=100.0))
    except SinkvizError:
        return base


def thresholds_params(thresholds: Thresholds) -> dict:
    return {"warn": thresholds.warning, "crit": thresholds.critical, "ratio": thresholds.ratio_flag}


KEY = re.compile(r"[0-9a-f]{32}")


def analysis_by_key(key: str) -> Analysis | None:
    """The stored analysis a link names, or None (also for a text that is not a key)."""
    return open_stored(key) if KEY.fullmatch(key) else None


def stored_from_url(url: PageUrl, name: str) -> tuple[list[str], list[Analysis | None]]:
    """The keys a URL's ``name`` lists (comma-separated) and their stored analyses (or None)."""
    keys = [k for k in (url.get(name) or "").split(",") if k]
    return keys, [analysis_by_key(k) for k in keys]


def named_key(key: str) -> str:
    """A key from a link, as a message may quote it."""
    return f"the key {key}" if KEY.fullmatch(key) else "the link's key"


def not_found(what: str, then: str = "Press the button above to compute it again.") -> None:
    """Plainly: the link names a stored result (``what``) this server does not have."""
    st.error(f"Not found: this server's result store has no {what}. The link was made on another server, "
             f"or the store was cleared since. {then}")


def sink_intro(expanded: bool) -> None:
    """'What is an attention sink?': four sentences and the engine's numbers on one sentence."""
    example = load_intro_example()
    with st.expander("What is an attention sink?", expanded=expanded, icon=":material/help:"):
        text, picture = st.columns([2, 3])
        text.markdown(
            "Attention lets every token of a prompt look back at the tokens before it. In most layers of "
            "most language models, a large share of that attention lands on the very first tokens, whatever "
            "they say: an **attention sink**, where a head parks attention it has no other use for. "
            f"On the right, in layer {example.layer} of {example.model}, the later tokens of one sentence give "
            f"on average **{example.first_token_share:.0%}** of their attention to its first word, "
            f"{example.tokens[0]!r} (the bright left column). sinkviz measures this for your prompt, layer "
            "by layer and head by head.")
        text.page_link("pages/method.py", label="How each number is defined: Method", icon=":material/functions:")
        picture.plotly_chart(intro_heatmap(example), key="intro_map")
