"""A process that has served a page exits cleanly (no abort from the background model load),
tested with the warm-up on (SINKVIZ_WARM unset)."""

import os
import subprocess
import sys

import pytest

from conftest import APP

SCRIPT = """
import sys, time
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=300)
at.run()
assert not at.exception, at.exception
time.sleep(float(sys.argv[2]))   # exit while the default model may still be loading
"""


@pytest.mark.parametrize("delay", ["0.6", "1.2"])
def test_exit_after_a_page_view_is_clean(tmp_path, default_model_dir, delay):
    env = {k: v for k, v in os.environ.items() if k != "SINKVIZ_WARM"}
    env["SINKVIZ_STORE_DIR"] = str(tmp_path / "store")
    done = subprocess.run([sys.executable, "-c", SCRIPT, APP, delay], capture_output=True, text=True,
                          env=env, cwd=os.path.dirname(APP), timeout=600)
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr[-2000:]
