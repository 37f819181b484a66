"""sinkviz: see attention sinks. The engine; it never imports streamlit (see README)."""
