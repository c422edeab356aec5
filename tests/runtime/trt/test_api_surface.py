"""The TensorRT names the code uses exist in the 10.3, 10.13 and 11.4 bindings and in the installed
TensorRT for RTX module, per branch.

Wheels come from the package registry once (conftest.fetch_wheel; skipped with pip's reason when
unreachable). `introspect` imports the real extension module against stub libraries (exact names per
class); `strings` reads its NUL-terminated strings (weaker; used where no C compiler exists).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runtime.trt import api_surface
from runtime.trt.api_surface import API_SURFACE, REMOVED_IN_11, check_branch, check_removed, names_for

from .conftest import surface

REPO = Path(__file__).resolve().parents[3]
FULL = ("10.3", "10.13", "11.4")


@pytest.mark.parametrize("label", FULL)
def test_declared_names_exist_in_that_versions_wheel(label):
    s = surface(label)
    assert s.branch == ("10" if label.startswith("10") else "11")
    assert check_branch(s) == []


@pytest.mark.parametrize("label", FULL)
def test_strings_fallback_agrees_on_declared_names(label):
    assert check_branch(surface(label, "strings")) == []


def test_lean_runtime_names_exist_in_lean_wheel():
    s = surface("lean-11.4")
    assert s.module == "tensorrt_lean"
    assert check_branch(s, lean=True) == []
    # The lean runtime has no builder: the build path's names must not be needed there.
    assert "Builder" not in s and "OnnxParser" not in s


def test_names_removed_in_11_are_declared_on_the_10_branch_only():
    assert check_removed() == []
    assert set(API_SURFACE["10"]) <= REMOVED_IN_11 | set(API_SURFACE["10"])
    assert not (names_for("11") & REMOVED_IN_11)


def test_removed_names_are_really_absent_from_11_and_present_in_10():
    s11 = surface("11.4")
    if not s11.exact:
        pytest.skip("needs the exact (introspect) surface: no C compiler here")
    assert sorted(n for n in REMOVED_IN_11 if n in s11) == []
    for label in ("10.3", "10.13"):
        s10 = surface(label)
        assert {
            "BuilderFlag.FP16",
            "BuilderFlag.INT8",
            "IInt8EntropyCalibrator2",
            "IBuilderConfig.int8_calibrator",
        } <= {n for n in REMOVED_IN_11 if n in s10}


def _planted(section: str, name: str) -> dict:
    declared = {k: set(v) for k, v in API_SURFACE.items()}
    declared[section].add(name)
    return declared


@pytest.mark.parametrize("method", ["auto", "strings"])
def test_check_fails_on_a_10_only_flag_planted_on_the_11_branch(method):
    bad = _planted("11", "BuilderFlag.FP16")
    assert any("BuilderFlag.FP16" in p and "'11'" in p for p in check_removed(bad))
    problems = check_branch(surface("11.4", method), declared=bad)
    assert len(problems) == 1 and problems[0].startswith("BuilderFlag.FP16")
    # The 10.x wheels are unaffected: the planted name is on the 11 branch only.
    assert check_branch(surface("10.3", method), declared=bad) == []


def test_check_fails_on_a_member_of_the_wrong_class():
    s = surface("10.3")
    if not s.exact:
        pytest.skip("class membership needs the exact (introspect) surface")
    # STRONGLY_TYPED is a NetworkDefinitionCreationFlag, not a BuilderFlag.
    problems = check_branch(s, declared=_planted("common", "BuilderFlag.STRONGLY_TYPED"))
    assert [p.split()[0] for p in problems] == ["BuilderFlag.STRONGLY_TYPED"]


def test_wheel_version_from_file_name():
    assert api_surface.wheel_version("tensorrt_cu12_bindings-10.3.0-cp310-none-manylinux_2_17_aarch64.whl") == "10.3.0"
    assert api_surface.wheel_version("tensorrt_cu13_bindings-11.4.0.106-cp311-none-x.whl") == "11.4.0.106"
    with pytest.raises(Exception, match="not a TensorRT"):
        api_surface.wheel_version("numpy-2.0.0-cp311-none-x.whl")


def _is_trt(receiver: ast.AST, path: Path) -> bool:
    """``trt.x(...)``, ``self.trt.x(...)``, or ``self.x(...)`` inside compat.Trt."""
    if isinstance(receiver, ast.Name):
        return receiver.id == "trt" or (receiver.id == "self" and path.name == "compat.py")
    return isinstance(receiver, ast.Attribute) and receiver.attr == "trt"


def _literal_uses(path: Path) -> set[tuple[str, str]]:
    """(dotted TensorRT name, get|call|read|write) passed as literals to the Trt gate in ``path``."""
    tree = ast.parse(path.read_text())
    uses = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "call", "read", "write")
            and _is_trt(node.func.value, path)
        ):
            index = 0 if node.func.attr == "get" else 1
            if (
                len(node.args) > index
                and isinstance(node.args[index], ast.Constant)
                and isinstance(node.args[index].value, str)
            ):
                value = node.args[index].value
                if value[:1].isupper() and all(part.isidentifier() for part in value.split(".")):
                    uses.add((value, node.func.attr))
    return uses


CODE = sorted((REPO / "runtime" / "trt").glob("*.py")) + [REPO / "runtime" / "backends" / "trt.py"]
USES = set().union(*(_literal_uses(f) for f in CODE))


def test_every_literal_tensorrt_name_in_the_code_is_declared():
    used = {name for name, _op in USES}
    assert len(used) > 40  # the scan really sees the code
    declared = set(API_SURFACE["common"]) | set(API_SURFACE["10"]) | set(API_SURFACE["11"]) | set(API_SURFACE["rtx"])
    assert sorted(used - declared) == []
    # Literal 10-only names appear nowhere; the flags are spelled only inside compat's 10-only path.
    assert not (used & REMOVED_IN_11)


def rtx_surface():
    try:
        return api_surface.read_module_surface("tensorrt_rtx")
    except ImportError as exc:
        pytest.skip(f"TensorRT for RTX is not installed ({exc}); pip install '.[rtx]'")


def _surface_of(label):
    return rtx_surface() if label == "rtx" else surface(label)


def test_declared_rtx_names_exist_in_the_installed_tensorrt_rtx():
    s = rtx_surface()
    assert s.branch == "rtx" and s.exact and s.version.startswith("1.")
    assert check_branch(s) == []
    # The 10-only precision flags, calibrators and EXPLICIT_BATCH are absent from RTX too.
    assert sorted(n for n in REMOVED_IN_11 if n in s) == []
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in s and "ComputeCapability.SM86" in s


def test_check_fails_on_a_10_only_flag_planted_on_the_rtx_branch():
    s = rtx_surface()
    bad = _planted("rtx", "BuilderFlag.INT8")
    assert any("BuilderFlag.INT8" in p and "'rtx'" in p for p in check_removed(bad))
    problems = check_branch(s, declared=bad)
    assert [p.split()[0] for p in problems] == ["BuilderFlag.INT8"]


def test_rtx_only_names_are_absent_from_full_tensorrt():
    s11 = surface("11.4")
    if not s11.exact:
        pytest.skip("needs the exact (introspect) surface")
    assert sorted(n for n in API_SURFACE["rtx"] if n in s11) == []


@pytest.mark.parametrize("label", FULL + ("rtx",))
def test_methods_are_called_and_properties_read(label):
    """``trt.call`` on a property (or ``trt.read`` of a method) would fail only on a real GPU."""
    s = _surface_of(label)
    if not s.exact:
        pytest.skip("member kinds need the exact (introspect) surface")
    expected = {"call": {"method"}, "read": {"property"}, "write": {"property"}, "get": {"class", "value", "function"}}
    wrong = sorted(
        f"{op}({name}) but it is a {s.kinds.get(name)}"
        for name, op in USES
        if name in s.kinds and s.kinds[name] not in expected[op]
    )
    assert wrong == []
