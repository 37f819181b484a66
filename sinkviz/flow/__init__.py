"""sinkviz.flow: see the README's Layout."""
