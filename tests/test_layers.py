"""Layers import downward only (DESIGN: pipeline/ on top; train/, export/, quantize/ on runtime/).

Every module's imports, module level and function level (ast walk), are checked against the layer
table. ``runtime`` is the torch-free foundation that ships to a device: it imports no project
package above it and never torch. ``pipeline`` is the only package that may import all others.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> project packages it may import (besides itself)
ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset(),
    "train": frozenset({"runtime"}),
    "export": frozenset({"runtime", "train"}),  # export reads checkpoints and builds the model to trace
    "quantize": frozenset({"runtime", "export"}),  # quantize writes through export's artifact gate
    "pipeline": frozenset({"runtime", "train", "export", "quantize"}),
}
PROJECT = frozenset(ALLOWED)
FORBIDDEN_THIRD_PARTY = {"runtime": frozenset({"torch", "torchvision"})}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for pkg, allowed in ALLOWED.items():
        for path in sorted((root / pkg).rglob("*.py")) if (root / pkg).is_dir() else []:
            rel = path.relative_to(root).as_posix()
            for line, mod in imports_of(path):
                if mod in PROJECT and mod != pkg and mod not in allowed:
                    found.append(
                        f"{rel}:{line} imports {mod} (a {pkg} module may import {sorted(allowed) or 'nothing'} of the project)"
                    )
                if mod in FORBIDDEN_THIRD_PARTY.get(pkg, ()):
                    found.append(f"{rel}:{line} imports {mod} ({pkg} must stay {mod}-free)")
    return found


def test_layers_import_downward_only():
    assert violations() == []


@pytest.mark.parametrize(
    ("package", "source", "needle"),
    [
        ("runtime", "def f():\n    from train.checkpoint import load_checkpoint\n", "runtime/bad.py:2 imports train"),
        ("runtime", "import torch\n", "runtime/bad.py:1 imports torch"),
        ("runtime", "import pipeline.cli\n", "runtime/bad.py:1 imports pipeline"),
        ("train", "from quantize.orchestrate import run_int8\n", "train/bad.py:1 imports quantize"),
        ("quantize", "import train.loop\n", "quantize/bad.py:1 imports train"),
        ("export", "from pipeline import run_pipeline\n", "export/bad.py:1 imports pipeline"),
    ],
)
def test_a_planted_upward_import_is_caught(tmp_path, package, source, needle):
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(needle), found


def test_downward_and_plugin_imports_are_allowed(tmp_path):
    for pkg in ALLOWED:
        (tmp_path / pkg).mkdir()
    (tmp_path / "pipeline" / "ok.py").write_text("import train.loop\nfrom quantize.orchestrate import run_int8\n")
    (tmp_path / "quantize" / "ok.py").write_text(
        "from export.gate import write_onnx\nfrom runtime.errors import ConfigError\n"
    )
    # The backend registry names a module above runtime as a string: not an import statement.
    (tmp_path / "runtime" / "ok.py").write_text('REGISTRY = {"torch": "train.backend:TorchBackend"}\n')
    assert violations(tmp_path) == []
