"""docs/errors.md stays true: every catalogued case names a test that exists, and every exit code
the code defines is documented."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "errors.md"


def _catalogue_tests() -> list[str]:
    names, in_catalogue = [], False
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if line.startswith("| case"):
            in_catalogue = line.rstrip(" |").split("|")[-1].strip() in ("test", "test name")
            continue
        if not line.startswith("|"):
            in_catalogue = False
            continue
        if in_catalogue and not line.startswith("|---"):
            last = line.rstrip(" |").split("|")[-1]
            for ref in re.findall(r"`([^`]+)`", last):
                name = ref.split("[")[0]
                if not name.startswith("…"):
                    names.append(name if name.startswith("test_") else f"test_{name}")
    return names


def test_every_catalogued_case_names_an_existing_test() -> None:
    names = _catalogue_tests()
    assert len(names) >= 60  # the catalogue tables were found and parsed
    sources = "".join(p.read_text(encoding="utf-8") for p in (REPO / "tests").rglob("test_*.py"))
    missing = sorted({n for n in names if f"def {n}(" not in sources})
    assert not missing, f"docs/errors.md names tests that do not exist: {missing}"


def test_every_exit_code_is_documented() -> None:
    from runtime import errors
    from runtime.cli import EXIT_BUG

    text = DOC.read_text(encoding="utf-8")
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)} | {EXIT_BUG}
    table = {int(m) for m in re.findall(r"^\| (\d+)(?:, \d+)? \|", text, flags=re.M)}
    table |= {int(m) for m in re.findall(r"^\| \d+, (\d+) \|", text, flags=re.M)}
    assert codes <= table, f"exit codes missing from docs/errors.md: {sorted(codes - table)}"
