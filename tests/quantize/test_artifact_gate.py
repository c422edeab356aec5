"""The artifact gate: every ONNX writer's output passes onnx.checker (full) and the preflight.

`test_every_writer_output_passes_the_gate` walks every writer the project has (export, INT8 of
both methods and both targets, FP16) on a tiny LANMSFF and checks each file as a consumer would.
`test_no_onnx_write_bypasses_the_gate` makes sure no library module saves an ONNX file any other
way. The rest plant invalid graphs and check that nothing is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest

from export.gate import ArtifactGateError, check_onnx_file, write_onnx
from export.preflight import Severity, check_graph
from quantize.__main__ import main as cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

FAST = ["--calib-size", "14", "--min-calib-size", "8", "--no-latency", "--ignore", "none"]
ROOT = Path(__file__).resolve().parents[2]


def _assert_valid(path: Path) -> None:
    onnx.checker.check_model(str(path), full_check=True)  # raises on an invalid model
    errors = [f for f in check_graph(path)[0] if f.severity is Severity.ERROR]
    assert not errors, [str(f) for f in errors]


@pytest.fixture(scope="module")
def written(lanmsff_tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("gate")
    out = {"export": lanmsff_tiny_onnx}
    for method in ("nncf", "ort"):
        for target in ("tensorrt", "cpu"):
            p = d / f"model.{method}.{target}.int8.onnx"
            assert (
                cli(
                    [
                        "int8",
                        "--onnx",
                        str(lanmsff_tiny_onnx),
                        "--out",
                        str(p),
                        "--method",
                        method,
                        "--target",
                        target,
                        *FAST,
                    ]
                )
                == 0
            )
            out[f"int8-{method}-{target}"] = p
    p = d / "model.fp16.onnx"
    assert cli(["fp16", "--onnx", str(lanmsff_tiny_onnx), "--out", str(p), "--no-latency"]) == 0
    out["fp16"] = p
    return out


@pytest.mark.parametrize(
    "writer", ["export", "int8-nncf-tensorrt", "int8-ort-tensorrt", "int8-nncf-cpu", "int8-ort-cpu", "fp16"]
)
def test_every_writer_output_passes_the_gate(written, writer):
    _assert_valid(written[writer])


def test_fp16_graph_is_topologically_sorted(written):
    model = onnx.load(str(written["fp16"]))
    produced = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        missing = [i for i in node.input if i not in produced]
        assert not missing, f"{node.name} reads {missing} before they are produced"
        produced.update(node.output)


def _unsorted(src: Path):
    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))  # valid ops, invalid order: what the FP16 converter used to write
    return model


def test_gate_refuses_an_unsorted_graph_and_keeps_the_old_file(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good file")
    with pytest.raises(ArtifactGateError, match=r"quantize fp16: .*CHECKER_FAILED.*topologically sorted") as exc:
        write_onnx(_unsorted(lanmsff_tiny_onnx), out, stage="quantize fp16")
    assert exc.value.stage == "quantize fp16" and exc.value.check == "CHECKER_FAILED"
    assert "Nothing was written" in str(exc.value) and "Fix:" in str(exc.value)
    assert out.read_bytes() == b"previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left behind


def test_gate_refuses_a_shape_error(lanmsff_tiny_onnx, tmp_path):
    model = onnx.load(str(lanmsff_tiny_onnx))
    gemm = next(i for i in model.graph.initializer if len(i.dims) == 2)  # the classifier weight
    arr = onnx.numpy_helper.to_array(gemm)
    gemm.CopyFrom(onnx.numpy_helper.from_array(np.zeros((arr.shape[0] + 3, arr.shape[1] + 5), arr.dtype), gemm.name))
    with pytest.raises(ArtifactGateError) as exc:
        write_onnx(model, tmp_path / "bad.onnx", stage="export")
    assert exc.value.check in ("CHECKER_FAILED", "SHAPE_INFERENCE_FAILED")
    assert not (tmp_path / "bad.onnx").exists()


def test_tensorrt_only_findings_do_not_block_the_cpu_form(tmp_path):
    """An op outside TensorRT's table is fine for the CPU form, not for a TensorRT file."""
    from onnx import TensorProto, helper

    node = helper.make_node("Det", ["x"], ["y"])  # in the onnx-tensorrt "unsupported" list
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    codes = {f.code for f in check_graph(path)[0] if f.severity is Severity.ERROR}
    assert codes == {"OP_UNSUPPORTED"}
    check_onnx_file(path, stage="quantize int8 (ort, cpu form)", target="cpu")
    with pytest.raises(ArtifactGateError, match="OP_UNSUPPORTED"):
        check_onnx_file(path, stage="quantize int8 (ort, tensorrt form)", target="tensorrt")


# Library modules allowed to call onnx.save / save_model directly, and why.
ALLOWED_SAVES = {
    "export/gate.py": "the gate itself",
    "export/exporter.py": "export writes into a private folder and runs the full preflight (a superset of the gate) before its rename",
    "export/adopt.py": "adopt, like export, writes into a private folder and runs the full preflight before its rename",
    "quantize/methods/ort_ptq.py": "a temporary FP32 input for onnxruntime's quantize_static, never an artifact",
    "runtime/roofline.py": "a temporary INT8 GEMM timed for the roofline peak, never an artifact",
}


def test_no_onnx_write_bypasses_the_gate():
    offenders = []
    for pkg in ("train", "export", "quantize", "runtime", "pipeline"):
        for path in sorted((ROOT / pkg).rglob("*.py")) if (ROOT / pkg).is_dir() else []:
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("save", "save_model")
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "onnx"
                ):
                    if rel not in ALLOWED_SAVES:
                        offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, f"ONNX files written without export.gate.write_onnx: {offenders}"
