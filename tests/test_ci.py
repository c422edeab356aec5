"""The CI entry point must fail on failing tests and on an empty collection (pytest exit code 5)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_tests.py"), str(folder), "-q", "-p", "no:cacheprovider"],
        cwd=folder,
        capture_output=True,
        text=True,
    )


def test_failing_test_fails_the_run(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text("def test_bad():\n    assert 1 + 1 == 3\n")
    assert _run(tmp_path).returncode == 1


def test_passing_test_passes(tmp_path: Path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert 1 + 1 == 2\n")
    assert _run(tmp_path).returncode == 0


def test_no_tests_collected_fails(tmp_path: Path) -> None:
    (tmp_path / "test_empty.py").write_text("# nothing here\n")
    proc = _run(tmp_path)
    assert proc.returncode == 1
    assert "collected no tests" in proc.stderr


def test_ci_script_runs_make_test() -> None:
    text = (REPO / ".ci" / "run").read_text()
    assert "make test" in text
    assert "scripts/run_tests.py" in (REPO / "Makefile").read_text()
