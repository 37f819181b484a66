"""The repository itself: no merge left half done (a conflict marker in README or a page once
reached main and broke every page that imports it)."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^(<{7} |>{7} |={7}$)", re.MULTILINE)


def test_no_conflict_markers_in_tracked_text_files():
    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.txt", "*.json", "*.jsonl", "*.sh"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert len(files) > 50                                       # the listing worked
    marked = [f for f in files if MARKER.search((ROOT / f).read_text(encoding="utf-8", errors="replace"))]
    assert marked == []
