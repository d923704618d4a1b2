"""docs/performance.md's generated tables match the JSON results in benchmarks/results/.

``benchmarks/make_performance_doc.py --check`` regenerates the tables between the
``<!-- generated: NAME ... -->`` markers and fails when the committed document differs: a
benchmark result rewritten without regenerating the document fails here.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "make_performance_doc.py"


def _check(doc: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--check", "--doc", str(doc)],
                          check=False, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_performance_doc_is_up_to_date():
    r = _check(REPO / "docs" / "performance.md")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr


def test_check_fails_on_a_stale_table(tmp_path):
    """A changed figure inside a generated block is caught, and regenerating restores the committed text."""
    doc = tmp_path / "performance.md"
    shutil.copy(REPO / "docs" / "performance.md", doc)
    text = doc.read_text()
    start = text.index("<!-- generated: mlearn ")
    end = text.index("<!-- end generated: mlearn -->")
    block = text[start:end]
    assert "| Ge |" in block
    doc.write_text(text[:start] + block.replace("| Ge |", "| Ge (stale) |") + text[end:])
    r = _check(doc)
    assert r.returncode == 1
    assert "out of date" in r.stderr
    subprocess.run([sys.executable, str(SCRIPT), "--doc", str(doc)], check=True, capture_output=True, cwd=REPO)
    assert doc.read_text() == text
