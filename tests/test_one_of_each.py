"""One of each concept: a second copy of a shared helper or type fails here.

Every module of the project is parsed (no import needed); the test names the file and line of a
copy and says where the one definition lives.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "train", "export", "quantize", "pipeline", "scripts")


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            out.append((path.relative_to(REPO).as_posix(), ast.parse(path.read_text(encoding="utf-8"))))
    return out


MODULES = _modules()

# name of a function or class -> the one module allowed to define it
ONE_DEFINITION = {
    "Finding": "runtime/findings.py",
    "Severity": "runtime/findings.py",
    "compare_outputs": "runtime/compare.py",  # the one comparator, with the tolerance policy
    "ParityResult": "runtime/compare.py",
}
# class names ending like this are a second finding type
FINDING_SUFFIXES = ("Finding", "Severity")


def test_the_modules_were_found() -> None:
    names = {rel for rel, _ in MODULES}
    assert len(names) > 50 and "runtime/findings.py" in names


@pytest.mark.parametrize("name", sorted(ONE_DEFINITION))
def test_defined_once(name: str) -> None:
    where = [
        f"{rel}:{node.lineno}"
        for rel, tree in MODULES
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name
    ]
    assert [w.split(":")[0] for w in where] == [ONE_DEFINITION[name]], (
        f"{name} must be defined once, in {ONE_DEFINITION[name]} (import it from there); found: {where}"
    )


def test_one_finding_type() -> None:
    copies = [
        f"{rel}:{node.lineno} class {node.name}"
        for rel, tree in MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and node.name.endswith(FINDING_SUFFIXES) and rel != "runtime/findings.py"
    ]
    assert not copies, f"a second finding/severity type (use runtime.findings.Finding/Severity): {copies}"


def test_preflight_and_lint_report_the_same_type() -> None:
    from export import preflight
    from runtime import findings, qdq_lint

    assert preflight.Finding is findings.Finding is qdq_lint.Finding
    assert preflight.Severity is findings.Severity is qdq_lint.Severity
    f = findings.Finding("warning", "CODE", "what was found", "what to do", "node_1")
    assert f.severity is findings.Severity.WARNING
    assert f.to_dict() == {
        "severity": "warning",
        "code": "CODE",
        "node": "node_1",
        "message": "what was found",
        "fix": "what to do",
    }
    assert str(f) == "WARNING CODE [node_1]: what was found Fix: what to do"


def _is_table_rule(text: str) -> bool:
    """A Markdown table's header rule (``|---|``, ``---:``) or the ``---`` cell a renderer joins."""
    return "|---" in text or "|:--" in text or text.strip() in ("---", "---:", ":---")


def test_one_markdown_table_renderer() -> None:
    copies = [
        f"{rel}:{node.lineno}"
        for rel, tree in MODULES
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _is_table_rule(node.value)
        and rel != "runtime/report.py"
    ]
    assert not copies, f"Markdown table rules written by hand (use runtime.report.md_table): {copies}"


def test_md_table_renders_escapes_and_aligns() -> None:
    from runtime.report import md_table

    lines = md_table(["a", "b"], [[1, "x|y"], ["two\nlines", None]], align="lr")
    assert lines == ["| a | b |", "|---|---:|", "| 1 | x\\|y |", "| two lines | None |"]
    with pytest.raises(ValueError, match="cells"):
        md_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="align"):
        md_table(["a"], [], align="c")


def _int_list_parsers(tree: ast.Module) -> list[int]:
    """Lines where integers are parsed out of a comma list by hand (``int(t) for t in s.split(",")``)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.GeneratorExp, ast.ListComp, ast.SetComp)):
            splits = any(
                isinstance(g.iter, ast.Call)
                and isinstance(g.iter.func, ast.Attribute)
                and g.iter.func.attr == "split"
                and [ast.unparse(a) for a in g.iter.args] == ["','"]
                for g in node.generators
            )  # comma lists; "C;H;W", "8.6", "1:8:32" are formats
            ints = any(
                isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "int"
                for n in ast.walk(node.elt)
            )
            if splits and ints:
                out.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "map"
            and node.args
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id == "int"
        ):
            out.append(node.lineno)
    return out


def test_one_int_list_parser() -> None:
    copies = [f"{rel}:{line}" for rel, tree in MODULES if rel != "runtime/cli.py" for line in _int_list_parsers(tree)]
    assert not copies, f"integer lists parsed by hand (use runtime.cli.parse_int_list / int_list_arg): {copies}"


def test_parse_int_list() -> None:
    import argparse

    from runtime.cli import int_list_arg, parse_int_list
    from runtime.errors import ConfigError

    assert parse_int_list(" 1, 8,32 ") == (1, 8, 32) and parse_int_list([2, "4"]) == (2, 4)
    assert parse_int_list("0,2", "class ids", minimum=0) == (0, 2)
    for bad in ("", "1,x", "0", "1,-2"):
        with pytest.raises(ConfigError, match=r"--batch must be comma-separated (positive )?integers .*got"):
            parse_int_list(bad, "--batch")
    parser = argparse.ArgumentParser()
    parser.add_argument("--b", type=int_list_arg("--b"))
    assert parser.parse_args(["--b", "1,2"]).b == (1, 2)
    with pytest.raises(SystemExit):
        parser.parse_args(["--b", "1,y"])


def test_one_config_loader() -> None:
    """Every YAML config is read by runtime.configs.load_yaml (clear errors for a missing or malformed file)."""
    readers = [
        f"{rel}:{node.lineno}"
        for rel, tree in MODULES
        if rel != "runtime/configs.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("safe_load", "load", "full_load", "unsafe_load", "safe_load_all", "load_all")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "yaml"
    ]
    assert not readers, f"YAML read outside runtime/configs.py (use load_yaml and from_mapping): {readers}"


def test_export_configs_load_through_runtime_configs(tmp_path) -> None:
    from export.config import ExportConfig, PreflightConfig
    from runtime.errors import ConfigError

    path = tmp_path / "export.yaml"
    path.write_text("checkpoint: c.pt\nout: m.onnx\nbatch: dynamic\nparity_batches: [1, 2]\n", encoding="utf-8")
    cfg = ExportConfig.from_yaml(path)
    assert cfg.dynamic_batch and cfg.parity_batches == (1, 2)
    assert ExportConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="config file not found"):
        ExportConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"PreflightConfig.atol: expected float"):
        PreflightConfig.from_dict({"model": "m.onnx", "atol": "small"})


def test_one_logging_setup_and_one_verbose_flag() -> None:
    """Only runtime/cli.py configures logging (setup_logging) and defines -v/--verbose (add_common_flags)."""
    configs, flags = [], []
    for rel, tree in MODULES:
        if rel == "runtime/cli.py":
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr == "basicConfig":
                configs.append(f"{rel}:{node.lineno}")
            if node.func.attr == "add_argument" and any(
                isinstance(a, ast.Constant) and a.value in ("-v", "--verbose", "--debug") for a in node.args
            ):
                flags.append(f"{rel}:{node.lineno}")
    assert not configs, f"logging.basicConfig outside runtime/cli.py (call runtime.cli.setup_logging): {configs}"
    assert not flags, f"-v/--verbose/--debug defined by hand (use runtime.cli.add_common_flags): {flags}"


def test_common_flags_work_before_and_after_a_sub_command() -> None:
    import argparse

    from runtime.cli import add_common_flags

    parser = argparse.ArgumentParser()
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    add_common_flags(sub.add_parser("run"), sub=True, threads=True)
    assert parser.parse_args(["-v", "run"]).verbose and parser.parse_args(["run", "-v"]).verbose
    plain = parser.parse_args(["run", "--threads", "3"])
    assert not plain.verbose and not plain.debug and plain.threads == 3


@pytest.mark.parametrize(
    "module",
    [
        "train.__main__",
        "export.__main__",
        "quantize.__main__",
        "runtime.__main__",
        "runtime.infer",
        "runtime.trt.cli",
        "pipeline.cli",
    ],
)
def test_every_cli_uses_the_shared_flags(module: str) -> None:
    import importlib

    source = Path(importlib.import_module(module).__file__).read_text(encoding="utf-8")
    assert "add_common_flags(" in source and "setup_logging(" in source
