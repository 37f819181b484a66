"""Where sinkviz keeps files: ``cache/`` at the repo top, or ``$SINKVIZ_CACHE_DIR``."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """Root of converted models (``models/``) and the result store (``results/``)."""
    root = Path(os.environ.get("SINKVIZ_CACHE_DIR") or REPO_ROOT / "cache")
    root.mkdir(parents=True, exist_ok=True)
    return root
