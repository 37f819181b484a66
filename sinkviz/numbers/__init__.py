"""sinkviz.numbers: see the README's Layout."""
