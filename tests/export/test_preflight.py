"""export.preflight: each TensorRT trap planted in a tiny graph or module is named by its code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from export import preflight as pf
from export.__main__ import main as cli
from runtime.errors import ArtifactError
from runtime.preprocess import PreprocessSpec
from train.checkpoint import CheckpointMeta

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _save(tmp_path: Path, nodes, inputs, outputs, inits=(), opset: int = 17, name: str = "model.onnx") -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _vi(name, shape, dtype=FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _codes(path: Path, valid: bool = True) -> dict[str, list[pf.Finding]]:
    report = pf.run_preflight(path)
    out: dict[str, list[pf.Finding]] = {}
    for f in report.findings:
        out.setdefault(f.code, []).append(f)
    if valid:  # the planted graphs are valid ONNX: only the trap itself may be reported
        assert pf.CHECKER_FAILED not in out and pf.SHAPE_INFERENCE_FAILED not in out, [str(f) for f in report.errors]
    return out


def test_clean_graph_passes_with_op_report(tmp_path):
    path = _save(
        tmp_path,
        [
            helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
            helper.make_node("Flatten", ["p"], ["logits"], name="flat"),
        ],
        [_vi("input", ["batch", 1, 8, 8])],
        [_vi("logits", ["batch", 4])],
        [numpy_helper.from_array(np.ones((4, 1, 3, 3), np.float32), "w")],
    )
    report = pf.run_preflight(path)
    assert report.passed and not report.errors, [str(f) for f in report.findings]
    assert {f.code for f in report.warnings} == {pf.CONTRACT_MISSING}  # hand-made: no metadata_props
    assert report.op_counts == {"Conv": 1, "GlobalAveragePool": 1, "Flatten": 1}
    assert report.inputs == {"input": ["batch", 1, 8, 8]}
    op_report = next(f for f in report.findings if f.code == pf.OP_REPORT)
    assert "onnx-tensorrt" in op_report.message


def test_op_table_names_its_source_and_covers_both_model_families():
    table = pf.load_op_table()
    assert "onnx-tensorrt" in table.source and "operators.md" in table.source
    assert table.opset_min <= 17 <= table.opset_max
    # every op the LANMSFF and MA-Net exports contain (docs/models.md §1.7, §2.6)
    for op in "Conv ConvTranspose Gemm ReduceMean ReduceMax Sigmoid Mul Add Min Max Sub Split Slice Concat MaxPool Relu Reshape Transpose Expand Unsqueeze Flatten GlobalAveragePool".split():
        assert op in table.supported, op
    assert "Unique" in table.unsupported and "NonZero" in table.uncertain


def test_pool_or_resize_parameters_from_a_runtime_shape(tmp_path):
    # Shape -> Slice(2:4) -> Cast -> Div -> Concat -> Resize(scales): the scale follows the input size.
    nodes = [
        helper.make_node("Shape", ["input"], ["s"], name="shape"),
        helper.make_node("Slice", ["s", "st", "en"], ["hw"], name="hw"),
        helper.make_node("Cast", ["hw"], ["hwf"], to=FLOAT, name="cast"),
        helper.make_node("Div", ["target", "hwf"], ["sc2"], name="div"),
        helper.make_node("Concat", ["ones", "sc2"], ["scales"], axis=0, name="cat"),
        helper.make_node("Resize", ["input", "", "scales"], ["logits"], mode="linear", name="resize_from_shape"),
    ]
    inits = [
        _const("st", [2]),
        _const("en", [4]),
        _const("target", [16.0, 16.0], np.float32),
        _const("ones", [1.0, 1.0], np.float32),
    ]
    path = _save(tmp_path, nodes, [_vi("input", ["batch", 3, 8, 8])], [_vi("logits", ["batch", 3, "h", "w"])], inits)
    codes = _codes(path)
    [f] = codes[pf.POOL_KERNEL_FROM_SHAPE]
    assert f.severity is pf.Severity.ERROR and f.node == "resize_from_shape"
    assert "mean((2, 3), keepdim=True)" in f.fix


def test_global_pool_with_a_baked_whole_map_kernel(tmp_path):
    # What F.avg_pool2d(x, (x.size(2), x.size(3))) becomes in a static export (MA-Net's original CBAM).
    nodes = [
        helper.make_node("AveragePool", ["input"], ["a"], kernel_shape=[7, 7], strides=[7, 7], name="cbam_avg"),
        helper.make_node("MaxPool", ["input"], ["m"], kernel_shape=[7, 7], strides=[7, 7], name="cbam_max"),
        helper.make_node(
            "MaxPool", ["input"], ["s"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], name="stem_pool"
        ),
        helper.make_node("Add", ["a", "m"], ["logits"], name="add"),
    ]
    path = _save(
        tmp_path,
        nodes,
        [_vi("input", ["batch", 8, 7, 7])],
        [_vi("logits", ["batch", 8, 1, 1]), _vi("s", ["batch", 8, 4, 4])],
    )
    found = _codes(path)[pf.GLOBAL_POOL_FIXED_KERNEL]
    assert {f.node for f in found} == {"cbam_avg", "cbam_max"}  # the 3×3/2 stem pool is fine
    assert all("x.amax((2, 3), keepdim=True)" in f.fix for f in found)


def _reshape_graph(tmp_path, arithmetic: bool, name: str) -> Path:
    nodes = [
        helper.make_node("Shape", ["input"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="batch"),
    ]
    n = "n"
    if arithmetic:
        nodes.append(helper.make_node("Mul", ["n", "two"], ["n2"], name="times_two"))
        n = "n2"
    nodes += [
        helper.make_node("Unsqueeze", [n, "ax0"], ["n1"], name="unsq"),
        helper.make_node("Concat", ["n1", "rest"], ["shape"], axis=0, name="cat"),
        helper.make_node("Reshape", ["input", "shape"], ["logits"], name="reshape"),
    ]
    inits = [_const("zero", 0), _const("ax0", [0]), _const("rest", [-1] if not arithmetic else [32])]
    if arithmetic:
        inits.append(_const("two", 2))
    out = _vi("logits", ["n2", 32] if arithmetic else ["batch", 64])
    return _save(tmp_path, nodes, [_vi("input", ["batch", 4, 4, 4])], [out], inits, name=name)


def test_batch_shape_arithmetic_is_flagged_and_a_simple_chain_is_not(tmp_path):
    bad = _codes(_reshape_graph(tmp_path, True, "bad.onnx"))
    [f] = bad[pf.BATCH_SHAPE_ARITHMETIC]
    assert f.node == "reshape" and "torch.flatten(x, 1)" in f.fix
    good = _codes(_reshape_graph(tmp_path, False, "good.onnx"))
    assert pf.BATCH_SHAPE_ARITHMETIC not in good
    assert pf.INT64_TENSOR not in good  # int64 shape constants are fine


def test_int64_beyond_shape_tensors(tmp_path):
    nodes = [
        helper.make_node("Cast", ["input"], ["xi"], to=INT64, name="to_int64"),
        helper.make_node("Add", ["xi", "offset"], ["yi"], name="add_offset"),
        helper.make_node("Cast", ["yi"], ["logits"], to=FLOAT, name="back"),
    ]
    path = _save(
        tmp_path, nodes, [_vi("input", ["batch", 4])], [_vi("logits", ["batch", 4])], [_const("offset", [1, 2, 3, 4])]
    )
    found = _codes(path)[pf.INT64_TENSOR]
    nodes_flagged = {f.node for f in found}
    assert {"to_int64", "offset"} <= nodes_flagged
    assert all("int32" in f.fix for f in found)


def test_if_subgraph_is_flagged(tmp_path):
    then = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["t"], name="then_relu")], "then", [], [_vi("t", ["batch", 4])]
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["input"], ["e"], name="else_neg")], "else", [], [_vi("e", ["batch", 4])]
    )
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["logits"], then_branch=then, else_branch=other, name="branch"),
    ]
    path = _save(
        tmp_path, nodes, [_vi("input", ["batch", 4])], [_vi("logits", ["batch", 4])], [_const("zero", 0.0, np.float32)]
    )
    codes = _codes(path)
    [f] = codes[pf.CONTROL_FLOW]
    assert f.node == "branch" and "torch.where" in f.fix
    report = pf.run_preflight(path)
    assert report.op_counts["Relu"] == 1 and report.op_counts["Neg"] == 1  # subgraph ops are counted


def test_external_data_and_missing_external_data(tmp_path):
    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["logits"], name="mm")],
        "g",
        [_vi("input", ["batch", 64])],
        [_vi("logits", ["batch", 64])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    codes = _codes(path)
    assert pf.EXTERNAL_DATA in codes and pf.EXTERNAL_DATA_MISSING not in codes
    (tmp_path / "model.onnx.data").unlink()
    codes = _codes(path, valid=False)  # the checker also misses the file
    assert codes[pf.EXTERNAL_DATA_MISSING][0].severity is pf.Severity.ERROR


def test_ops_outside_the_list_and_custom_domains(tmp_path):
    nodes = [
        helper.make_node("Unique", ["input"], ["u"], name="unique"),
        helper.make_node("Relu", ["input"], ["logits"], name="relu"),
    ]
    path = _save(tmp_path, nodes, [_vi("input", [4])], [_vi("logits", [4]), _vi("u", ["k"])])
    report = pf.run_preflight(path)
    assert pf.CHECKER_FAILED not in report.codes
    assert not report.passed
    assert [f.node for f in report.findings if f.code == pf.OP_UNSUPPORTED] == ["unique"]

    custom = helper.make_node("FancyPool", ["input"], ["logits"], domain="com.example", name="fancy")
    graph = helper.make_graph([custom], "g", [_vi("input", [4])], [_vi("logits", [4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(tmp_path / "custom.onnx"))
    found = _codes(tmp_path / "custom.onnx", valid=False)[pf.OP_UNSUPPORTED]
    assert found[0].node == "fancy" and "plugin" in found[0].fix


def test_opset_beyond_tensorrt_10_3_and_dynamic_spatial_axes(tmp_path):
    path = _save(
        tmp_path,
        [helper.make_node("Relu", ["input"], ["logits"], name="r")],
        [_vi("input", ["batch", 3, "h", "w"])],
        [_vi("logits", ["batch", 3, "h", "w"])],
        opset=21,
    )
    codes = _codes(path)
    assert codes[pf.OPSET_UNSUPPORTED][0].severity is pf.Severity.ERROR
    assert pf.DYNAMIC_NON_BATCH_DIM in codes
    assert pf.CONTRACT_MISSING in codes  # a hand-made graph has no deployment contract


def test_checker_failure_is_an_error(tmp_path):
    # Add of float and int64: type inference and the full checker reject it.
    nodes = [helper.make_node("Add", ["input", "k"], ["logits"], name="bad_add")]
    path = _save(tmp_path, nodes, [_vi("input", [4])], [_vi("logits", [4])], [_const("k", [1, 2, 3, 4])])
    codes = _codes(path, valid=False)
    assert pf.CHECKER_FAILED in codes or pf.SHAPE_INFERENCE_FAILED in codes


def test_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        pf.run_preflight(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_text("definitely not protobuf \xff")
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        pf.run_preflight(bad)
    assert cli(["check", str(tmp_path / "nope.onnx")]) == 1
    assert cli(["check", str(bad)]) == 1


# --- PyTorch-level lint ------------------------------------------------------------------------


class _NonDivisible(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(3)  # 8×8 -> 3×3: windows overlap unevenly
        self.fc = nn.Linear(36, 7)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.conv(x)), 1))


def test_lint_names_non_divisible_adaptive_pooling_with_its_module():
    found = pf.lint_module(_NonDivisible().eval(), torch.zeros(2, 1, 8, 8))
    [f] = found
    assert f.code == pf.ADAPTIVE_POOL_NON_DIVISIBLE and f.node == "pool" and "8×8" in f.message


def test_lint_is_quiet_on_divisible_and_global_pooling():
    class Fine(nn.Module):
        def forward(self, x):
            return (
                F.adaptive_avg_pool2d(x, 4).mean((2, 3))
                + F.adaptive_max_pool2d(x, 1).flatten(1)
                + F.max_pool2d(x, 3, 2, 1).mean((2, 3))
            )

    assert pf.lint_module(Fine(), torch.zeros(2, 1, 8, 8)) == []


# --- parity and the report ---------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(6, 7)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _tiny_onnx(tmp_path: Path, model: nn.Module) -> Path:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        model.eval(),
        (torch.zeros(2, 1, 8, 8),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def _meta() -> CheckpointMeta:
    return CheckpointMeta("tiny", 7, tuple("abcdefg"), PreprocessSpec(input_size=(8, 8)))


def test_parity_passes_against_the_same_weights_and_fails_against_others(tmp_path):
    torch.manual_seed(0)
    model = _Tiny().eval()
    path = _tiny_onnx(tmp_path, model)
    images = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    ok = pf.run_preflight(path, reference=pf.Reference(model, _meta(), images, "5 test images"), batches=(1, 32))
    assert ok.passed and [p.batch for p in ok.parity] == [1, 32]
    assert ok.max_abs_diff(32) < 1e-5 and ok.parity[1].top1_agreement["logits"] == 1.0
    assert ok.parity_inputs == "5 test images"

    other = _Tiny().eval()
    with torch.no_grad():
        other.fc.bias.add_(1.0)
    bad = pf.run_preflight(path, reference=pf.Reference(other, _meta(), images, "5 test images"), batches=(1, 32))
    assert not bad.passed and pf.PARITY_MAX_ABS in bad.codes
    assert any("max |onnxruntime - PyTorch|" in f.message for f in bad.errors)


def test_parity_on_random_inputs_is_a_warning(tmp_path):
    model = _Tiny().eval()
    report = pf.run_preflight(
        _tiny_onnx(tmp_path, model),
        reference=pf.Reference(model, _meta(), None, "the checkpoint records no dataset"),
        batches=(2,),
    )
    assert report.passed and pf.PARITY_RANDOM_INPUTS in report.codes


def test_batch_parity_numbers():
    ref = {"logits": np.array([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])}
    got = {"logits": np.array([[1.0, 2.00001, 0.0], [0.0, 3.0, 0.0]])}
    r = pf.batch_parity(got, ref, batch=2, atol=1e-4)
    assert not r.passed and r.max_abs_diff["logits"] == pytest.approx(3.0) and r.top1_agreement["logits"] == 0.5
    assert r.flipped == {"logits": [1]}
    assert pf.batch_parity(ref, ref, batch=2, atol=1e-4).passed
    # the absolute logit bound: 5e-5 passes, 2e-4 fails, with no class changed
    assert pf.batch_parity({"logits": ref["logits"] + 5e-5}, ref, batch=2, atol=1e-4).passed
    near = pf.batch_parity({"logits": ref["logits"] + 2e-4}, ref, batch=2, atol=1e-4)
    assert not near.passed and near.top1_agreement["logits"] == 1.0
    # NaN in the ONNX output fails and is reported as such
    nan = pf.batch_parity({"logits": np.where(ref["logits"] > 2, np.nan, ref["logits"])}, ref, batch=2, atol=1e-4)
    assert not nan.passed and np.isnan(nan.max_abs_diff["logits"])


def test_batch_parity_numbers_come_from_the_one_comparator(monkeypatch):
    import runtime.compare as C

    calls = []
    real = C.compare_outputs

    def spy(*args, **kwargs):
        calls.append(kwargs["tolerance"])
        return real(*args, **kwargs)

    monkeypatch.setattr(C, "compare_outputs", spy)
    x = np.random.default_rng(0).normal(size=(4, 7))
    assert pf.batch_parity({"a": x, "b": x}, {"a": x, "b": x}, batch=4, atol=1e-4).passed
    assert calls == [C.Tolerance(min_top1_agreement=1.0, max_abs_diff=1e-4)] * 2


def test_report_is_frozen_json_beside_the_model(tmp_path):
    model = _Tiny().eval()
    path = _tiny_onnx(tmp_path, model)
    assert cli(["check", str(path)]) == 0
    data = json.loads((tmp_path / "tiny.preflight.json").read_text())
    assert data["passed"] is True and data["model_sha256"] and data["opset"] == 17
    assert {"severity", "code", "node", "message", "fix"} <= set(data["findings"][0])
    report = pf.run_preflight(path)
    with pytest.raises(AttributeError):
        report.passed = False  # type: ignore[misc]
