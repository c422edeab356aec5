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


def _doc_exit_rows() -> dict[int, set[str]]:
    """code -> the constant names its row of the exit-code table gives."""
    rows: dict[int, set[str]] = {}
    for m in re.finditer(r"^\| (\d+) \| ([^|]*) \|", DOC.read_text(encoding="utf-8"), flags=re.M):
        rows[int(m.group(1))] = set(re.findall(r"`(EXIT_[A-Z]+)`", m.group(2)))
    return rows


def test_exit_code_table_and_docs_agree() -> None:
    from runtime import errors

    constants = {k: v for k, v in vars(errors).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert len(constants) >= 10  # the table was found
    unexplained = {k: v for k, v in constants.items() if v not in errors.EXIT_CODES}
    assert not unexplained, f"EXIT_* constants without a meaning in EXIT_CODES: {unexplained}"
    rows = _doc_exit_rows()
    assert set(rows) == set(errors.EXIT_CODES), (
        f"docs/errors.md lists codes {sorted(rows)}; runtime.errors.EXIT_CODES has {sorted(errors.EXIT_CODES)}"
    )
    by_code: dict[int, set[str]] = {}
    for name, code in constants.items():
        by_code.setdefault(code, set()).add(name)
    wrong = {c: (sorted(rows[c]), sorted(by_code[c])) for c in rows if rows[c] != by_code[c]}
    assert not wrong, f"docs/errors.md names other constants than runtime/errors.py for codes (doc, code): {wrong}"


def test_cli_exit_code_of_the_wrapper_is_in_the_table() -> None:
    from runtime import cli, errors

    assert cli.EXIT_BUG is errors.EXIT_BUG  # one table: the wrapper re-uses it
    help_text = errors.exit_codes_help("all")
    assert all(f"{c} " in help_text for c in errors.EXIT_CODES)


def _project_modules() -> list[Path]:
    files = [p for pkg in ("runtime", "train", "export", "quantize", "pipeline") for p in (REPO / pkg).rglob("*.py")]
    # scripts/run_tests.py returns pytest's own exit codes (5 = nothing collected), not the pipeline's.
    return files + [p for p in (REPO / "scripts").glob("*.py") if p.name != "run_tests.py"]


def test_exit_codes_are_defined_once_and_never_written_as_numbers() -> None:
    """Only runtime/errors.py binds EXIT_* names; CLI entry points return those names, not literals."""
    import ast

    defined, literal = [], []
    for path in _project_modules():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and rel != "runtime/errors.py":
                names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                if any(n.startswith("EXIT_") for n in names):
                    defined.append(f"{rel}:{node.lineno}")
            if isinstance(node, ast.FunctionDef) and (
                node.name.endswith("main") or any("cli_entry" in ast.unparse(d) for d in node.decorator_list)
            ):
                for ret in ast.walk(node):
                    value = getattr(ret, "value", None) if isinstance(ret, ast.Return) else None
                    consts = (
                        [value]
                        if isinstance(value, ast.Constant)
                        else ([value.body, value.orelse] if isinstance(value, ast.IfExp) else [])
                    )
                    if any(isinstance(c, ast.Constant) and type(c.value) is int and c.value != 0 for c in consts):
                        literal.append(f"{rel}:{ret.lineno} ({node.name})")
    assert not defined, f"EXIT_* bound outside runtime/errors.py (import them from there): {defined}"
    assert not literal, f"entry points returning a bare exit-code number (use runtime.errors.EXIT_*): {literal}"
