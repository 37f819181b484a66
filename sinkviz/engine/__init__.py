"""sinkviz.engine: see the README's Layout."""
