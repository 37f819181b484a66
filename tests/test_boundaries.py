"""sinkviz/ is the engine: it never imports streamlit."""

import pathlib
import subprocess
import sys

ENGINE = pathlib.Path(__file__).resolve().parent.parent / "sinkviz"


def test_engine_source_never_mentions_streamlit_imports():
    offenders = [str(p.relative_to(ENGINE)) for p in ENGINE.rglob("*.py")
                 if "import streamlit" in p.read_text() or "from streamlit" in p.read_text()]
    assert offenders == []


def test_importing_every_engine_module_loads_no_streamlit():
    modules = [".".join(p.relative_to(ENGINE).with_suffix("").parts) for p in ENGINE.rglob("*.py")
               if p.stem not in ("__init__", "__main__")]
    code = ("import sys\n" + "".join(f"import sinkviz.{m}\n" for m in modules) +
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ENGINE.parent, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
