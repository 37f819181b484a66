"""sinkviz dashboard: ``streamlit run app.py`` (or ``./sinkviz.sh app``)."""

import os
import threading

import streamlit as st

from pages.common import PAGES, ROUTED, app_pages, remembered_url
from sinkviz.flow.devices import pick_device
from sinkviz.flow.embedded import DEFAULT_MODEL, EMBEDDED

st.set_page_config(page_title="sinkviz", page_icon=":material/blur_circular:", layout="wide")


@st.cache_resource
def warm_default_model() -> threading.Thread:
    """Load the default model in the background once per server, so the first run is quick."""
    from sinkviz.flow.models import get_model

    def load():
        try:
            get_model(DEFAULT_MODEL)
        except Exception:  # the page that needs it reports the error
            pass
    # Not a daemon: the interpreter waits for the load to end before it exits. A daemon thread
    # still inside torch at exit aborts the process ("terminate called ...", exit 134).
    thread = threading.Thread(target=load, daemon=False, name="sinkviz-warm")
    thread.start()
    return thread


if os.environ.get("SINKVIZ_WARM", "1") != "0":
    warm_default_model()
pages = app_pages()
# The sidebar's links are our own (client.showSidebarNavigation = false): each carries the state
# its page was left in (pages.common.PageUrl), so going back to a page finds it as it was.
page = st.navigation(pages, position="hidden")
st.session_state[ROUTED] = True
menu = st.sidebar.container()
try:
    page.run()
finally:   # drawn after the page (its link then carries this run's state), even if the page failed
    for (name, _, _), link in zip(PAGES, pages):
        menu.page_link(link, query_params=remembered_url(name))
with st.sidebar:  # after the page, so it names the model the page just used
    st.markdown("### sinkviz")
    info = st.session_state.get("last_model_info")
    if info is not None:
        st.markdown(f"**Model:** {info.label}  \n**Architecture:** {info.architecture}  \n"
                    f"**Device:** {info.device} · **dtype:** {info.dtype}  \n"
                    f"{info.n_layers} layers · {info.n_heads} heads · {info.n_kv_heads} KV heads  \n"
                    f"context {info.max_context or '?'} · "
                    + (f"BOS {info.bos_token!r}" if info.bos_token else "no BOS token"))
    else:
        st.markdown(f"**Model:** {EMBEDDED[DEFAULT_MODEL].label}  \n**Device:** {pick_device()} (auto)")
