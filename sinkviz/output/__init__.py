"""sinkviz.output: see the README's Layout."""
