import os
import sys

from sinkviz.cli import main

try:
    code = main()
    sys.stdout.flush()
except BrokenPipeError:   # `python -m sinkviz models --coverage | head`: the reader left, no traceback
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    code = 0
sys.exit(code)
