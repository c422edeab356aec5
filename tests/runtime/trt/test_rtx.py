"""TensorRT for RTX, for real: engines built ahead of time on this machine, without a GPU.

Everything here uses the installed ``tensorrt_rtx`` (``pip install '.[rtx]'``; `make setup` installs
it on x86-64 Linux) and is skipped, with the reason, only where it is not importable. What only a
GPU can show (deserializing, running, timing a plan) stays with the fakes (test_backend.py,
test_build.py) and test_gpu.py.

Models: a hand-made Conv/Conv/GAP/Gemm graph (no torch: milliseconds to make) for the cache and
error paths, and an exported ``lanmsff_tiny`` with its FP16, NNCF INT8, onnxruntime INT8 and x86
CPU-form INT8 files, made once per session with the project's own quantizers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from runtime import errors as E
from runtime.artifacts import read_sidecar
from runtime.errors import ConfigError
from runtime.trt import cli
from runtime.trt.build import BuildConfig, build_engine, layers_markdown_path, layers_report_path
from runtime.trt.compat import RTX_DEFAULT_TARGETS, Flavour, Trt, TrtError, parse_targets, target_unsupported_reason
from runtime.trt.engine_layers import PrecisionNotRealizedError

HAVE_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.skipif(
        not HAVE_RTX, reason="TensorRT for RTX is not installed (pip install '.[rtx]'; x86-64 Linux only)"
    ),
]
BATCH = "1:4:8"


@pytest.fixture(scope="module")
def rtx() -> Trt:
    return Trt.load(flavour="rtx")


def _small_model(path: Path) -> Path:
    """input (N,1,16,16) -> Conv 4 -> Relu -> Conv 8 -> GlobalAveragePool -> Flatten -> Gemm 7 (dynamic batch)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name, shape):
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="/c1/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/r1/Relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="/c2/Conv"),
        helper.make_node("GlobalAveragePool", ["c2"], ["g"], name="/gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="/flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1, name="/fc/Gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 7])],
        [
            init("w1", (4, 1, 3, 3)),
            init("b1", (4,)),
            init("w2", (8, 4, 3, 3)),
            init("b2", (8,)),
            init("wf", (7, 8)),
            init("bf", (7,)),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def small(tmp_path) -> Path:
    return _small_model(tmp_path / "small.onnx")


# ---- flavour ------------------------------------------------------------------------------------------
def test_rtx_flavour_is_detected_and_builds_ahead_of_time(rtx):
    assert rtx.flavour is Flavour.RTX and rtx.branch == "rtx" and rtx.aot and not rtx.uses_timing_cache
    assert rtx.version.major >= 1 and rtx.label.startswith("TensorRT for RTX 1.")
    assert rtx.resolve_targets(None) == (RTX_DEFAULT_TARGETS, True)
    assert rtx.resolve_targets("12.0,86") == (("8.6", "12.0"), False)
    if importlib.util.find_spec("tensorrt") is None:  # auto picks RTX when full TensorRT is absent
        assert Trt.load().flavour is Flavour.RTX


def test_target_parsing_and_support():
    assert parse_targets("sm_89, 8.6,8.6") == ("8.6", "8.9")
    with pytest.raises(ConfigError, match="cannot be targeted by TensorRT for RTX; valid: 7.5, 8.0"):
        parse_targets("9.0")
    assert target_unsupported_reason("8.6") == ""
    assert "does not support" in target_unsupported_reason("9.0", gpu_name="NVIDIA H200")
    assert "--compute-capability 7.5" in target_unsupported_reason("7.5", ("8.6",))


# ---- builds, sidecar, cache -----------------------------------------------------------------------------
def test_fp32_build_without_a_gpu_writes_plan_sidecar_and_layer_tables(rtx, small):
    res = build_engine(BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx"))
    assert not res.reused and res.engine.is_file() and res.engine.stat().st_size == res.plan_bytes > 10_000
    side = read_sidecar(res.engine)
    key = side["key"]
    assert key["flavour"] == "rtx" and key["tensorrt_version"] == str(rtx.version) and key["targets"] == "default"
    assert key["gpu_name"] == "" and key["compute_capability"] == ""  # no GPU name for an ahead-of-time build
    assert side["target_compute_capabilities"] == list(RTX_DEFAULT_TARGETS) and side["targets_default"] is True
    assert side["ahead_of_time"] is True and side["tensorrt"] == rtx.label
    check = side["precision_check"]
    # Two convolutions and the Gemm, all in FP32 (the realized precision comes from the build log).
    assert check["passed"] and check["compute_layers"] == 3 and check["counts"] == {"fp32": 3}
    layers = json.loads(layers_report_path(res.engine).read_text())
    assert layers["schema"] == "rtx-log" and layers["precision_check"]["share"] == 1.0
    types = [layer["layer_type"] for layer in layers["layers"] if layer["compute"]]
    # Convolutions are "correlation" layers; the Gemm is a "gemm" or, fused with its bias, a "runtime_fusion".
    assert types.count("correlation") == 2 and set(types) - {"correlation"} <= {"gemm", "runtime_fusion"}
    md = layers_markdown_path(res.engine).read_text()
    assert "| **fp32** |" in md and "/fc/Gemm" in md


def test_cache_reuses_and_rebuilds_when_targets_or_profile_change(rtx, small, caplog):
    first = build_engine(BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx"))
    again = build_engine(BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx"))
    assert again.reused and "cached engine matches" in again.reason
    with caplog.at_level(logging.INFO, logger="runtime.trt.build"):
        narrowed = build_engine(
            BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx", targets=("8.6", "12.0"))
        )
    assert not narrowed.reused and "targets: default -> 8.6,12.0" in narrowed.reason
    assert "ahead of time for compute capabilities 8.6, 12.0" in caplog.text
    side = read_sidecar(narrowed.engine)
    assert side["key"]["targets"] == "8.6,12.0" and side["target_compute_capabilities"] == ["8.6", "12.0"]
    assert side["artifact_sha256"] != read_sidecar(narrowed.engine)["key"]["onnx_sha256"]
    assert build_engine(
        BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx", targets=("12.0", "8.6"))
    ).reused  # same set, other order
    wider = build_engine(
        BuildConfig(onnx=small, precision="fp32", batch="1:8:16", flavour="rtx", targets=("8.6", "12.0"))
    )
    assert not wider.reused and "profile: 1:4:8 -> 1:8:16" in wider.reason
    # A plan changed on disk is rebuilt, not trusted (no GPU needed to tell).
    wider.engine.write_bytes(wider.engine.read_bytes()[:-16])
    healed = build_engine(
        BuildConfig(onnx=small, precision="fp32", batch="1:8:16", flavour="rtx", targets=("8.6", "12.0"))
    )
    assert not healed.reused and "sha256 mismatch" in healed.reason
    assert first.engine == healed.engine


def test_options_rtx_cannot_honour_are_refused_before_building(rtx, small):
    with pytest.raises(ConfigError, match="no DLA"):
        build_engine(BuildConfig(onnx=small, precision="fp32", dla_core=0, flavour="rtx"))
    with pytest.raises(ConfigError, match="no lean runtime"):
        build_engine(BuildConfig(onnx=small, precision="fp32", version_compatible=True, flavour="rtx"))
    with pytest.raises(ConfigError, match="--typing flags needs TensorRT 10"):
        build_engine(BuildConfig(onnx=small, precision="fp16", typing="flags", flavour="rtx"))
    with pytest.raises(ConfigError, match="cannot be targeted"):
        BuildConfig(onnx=small, precision="fp32", targets=("9.0",))
    assert not list(small.parent.glob("*.engine"))


def test_malformed_onnx_gives_the_parsers_errors(rtx, tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(TrtError) as err:
        build_engine(BuildConfig(onnx=bad, precision="fp32", flavour="rtx"))
    message = str(err.value)
    assert "TensorRT for RTX 1." in message and "ONNX parser rejected" in message and str(bad) in message
    assert "Failed to parse the ONNX model" in message and "python -m export check" in message
    assert not (tmp_path / "broken.fp32.engine").exists()


def test_a_node_the_parser_cannot_import_is_named(rtx, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["input"], ["r"], name="/ok/Relu"),
            helper.make_node("NoSuchOp", ["r"], ["logits"], name="/odd/NoSuchOp", domain="ferdeploy.test"),
        ],
        "odd",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ferdeploy.test", 1)]
    )
    model.ir_version = 8
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TrtError) as err:
        build_engine(BuildConfig(onnx=path, precision="fp32", batch=BATCH, flavour="rtx"))
    assert "ONNX parser rejected" in str(err.value) and "NoSuchOp" in str(err.value)


def test_a_target_without_kernels_fails_with_tensorrts_reason(rtx, small):
    # Turing (7.5) has no FP32 GEMM in TensorRT for RTX: the build fails and says so.
    with pytest.raises(TrtError, match=r"targets 7\.5.*TensorRT said: .*(Turing|SM75)"):
        build_engine(BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx", targets=("7.5",)))


def test_cli_builds_for_chosen_compute_capabilities(rtx, small, capsys):
    out = small.with_name("small.cli.engine")
    argv = [
        "--onnx",
        str(small),
        "--precision",
        "fp32",
        "--batch",
        BATCH,
        "--compute-capability",
        "8.6,8.9,12.0",
        "--flavour",
        "rtx",
        "--out",
        str(out),
    ]
    assert cli.build_main(argv) == E.EXIT_OK
    printed = capsys.readouterr().out
    assert (
        "for compute capabilities 8.6,8.9,12.0" in printed and "fp32 realized in 100% of 3 conv/GEMM layers" in printed
    )
    assert cli.build_main(argv) == E.EXIT_OK and "reused" in capsys.readouterr().out
    assert cli.build_main([*argv[:-2], "--out", str(out), "--compute-capability", "6.1"]) == E.EXIT_USAGE


# ---- lanmsff_tiny at every precision ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """model.onnx (exported lanmsff_tiny), model.fp16.onnx, model.nncf.int8.onnx, model.ort.int8.onnx, model.ort.cpu.int8.onnx."""
    pytest.importorskip("torch", reason="exporting lanmsff_tiny needs torch (pip install '.[train]')")
    pytest.importorskip("nncf", reason="NNCF INT8 needs pip install '.[quantize]'")
    import onnx
    import torch

    from export.__main__ import main as export_cli
    from quantize.fp16 import convert_fp16
    from quantize.methods.nncf_ptq import quantize_nncf
    from quantize.methods.ort_ptq import quantize_ort
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    folder = tmp_path_factory.mktemp("rtx_lanmsff_tiny")
    torch.manual_seed(0)
    spec = get_model_info("lanmsff_tiny").preprocess
    classes = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    ckpt = save_checkpoint(
        folder / "checkpoint.pt",
        create_model("lanmsff_tiny").eval(),
        model_name="lanmsff_tiny",
        class_names=classes,
        preprocess=spec,
        dataset={"kind": "synthetic"},
    )
    fp32 = folder / "model.onnx"
    assert export_cli(["onnx", "--checkpoint", str(ckpt), "--out", str(fp32), "--parity-batches", "1"]) == 0
    model = onnx.load(str(fp32))
    h, w = spec.input_size
    calib = np.random.default_rng(0).normal(0, 1, (16, spec.channels, h, w)).astype(np.float32)
    files = {"fp32": fp32}
    converted = convert_fp16(model)
    onnx.save(converted[0] if isinstance(converted, tuple) else converted, str(folder / "model.fp16.onnx"))
    files["fp16"] = folder / "model.fp16.onnx"
    for name, q in (
        ("nncf", lambda: quantize_nncf(model, calib, target="tensorrt")),
        ("ort", lambda: quantize_ort(model, calib, target="tensorrt")),
        ("ort.cpu", lambda: quantize_ort(model, calib, target="cpu")),
    ):
        qmodel, _info = q()
        files[name] = folder / f"model.{name}.int8.onnx"
        onnx.save(qmodel, str(files[name]))
    return files


@pytest.mark.slow
def test_lanmsff_tiny_engines_at_every_precision_and_both_int8_methods(rtx, tiny_models):
    realized = {}
    for label, precision in (("fp32", "fp32"), ("fp16", "fp16"), ("nncf", "int8"), ("ort", "int8")):
        res = build_engine(BuildConfig(onnx=tiny_models[label], precision=precision, batch="1:8:32", flavour="rtx"))
        check = res.precision_check
        assert res.engine.is_file() and check.passed, (label, check.summary())
        realized[label] = check
        assert layers_markdown_path(res.engine).is_file()
    assert realized["fp32"].share == 1.0 and realized["fp16"].share == 1.0
    for label in ("nncf", "ort"):
        check = realized[label]
        # Most convolutions take Int8 inputs; whatever does not is named (ConvTransposes stay float).
        assert check.counts.get("int8", 0) >= 0.5 * check.compute_layers
        assert len(check.offenders) == check.compute_layers - check.counts["int8"]
        assert all("(fp32)" in o or "(fp16)" in o for o in check.offenders)
    # The same conv/GEMM layers are there at every precision (the Q/DQ graph fuses a few more).
    assert realized["fp32"].compute_layers == realized["fp16"].compute_layers


@pytest.mark.slow
def test_cpu_form_int8_is_refused_by_the_lint_before_the_parser(rtx, tiny_models, monkeypatch):
    parsed = []
    original = rtx.call

    def spy(obj, name, *args, **kwargs):
        parsed.append(name)
        return original(obj, name, *args, **kwargs)

    monkeypatch.setattr(rtx, "call", spy)
    with pytest.raises(TrtError) as err:
        build_engine(BuildConfig(onnx=tiny_models["ort.cpu"], precision="int8", flavour="rtx"), trt=rtx)
    message = str(err.value)
    assert "refused before TensorRT's parser" in message and "Q/DQ lint FAILED" in message
    assert "quantized-bias" in message and "--target tensorrt" in message
    assert "OnnxParser.parse_from_file" not in parsed


@pytest.mark.slow
def test_int8_requested_from_a_float_graph_fails_the_precision_check_and_keeps_the_evidence(rtx, tiny_models, tmp_path):
    out = tmp_path / "wrong.int8.engine"
    with pytest.raises(PrecisionNotRealizedError) as err:
        build_engine(BuildConfig(onnx=tiny_models["fp32"], precision="int8", out=out, flavour="rtx"))
    assert err.value.check.share == 0.0 and "requested int8 but int8 realized in 0%" in str(err.value)
    assert not out.exists() and layers_report_path(out).is_file()
    assert "Conv/GEMM layers not in int8" in layers_markdown_path(out).read_text()


# ---- loading an RTX plan: only on a GPU of its targets -----------------------------------------------------
@pytest.mark.parametrize(
    "gpu,cc,expect",
    [
        ("NVIDIA H200", "9.0", "does not support"),  # what the lent GPU machines have: not an RTX target
        ("NVIDIA GeForce RTX 3090", "8.6", "not among the engine's targets 8.9, 12.0"),
        ("NVIDIA GeForce RTX 4090", "8.9", None),  # passes the check; then needs the real GPU to deserialize
    ],
)
def test_rtx_plan_loads_only_on_a_gpu_of_its_targets(rtx, small, monkeypatch, gpu, cc, expect):
    from runtime.backends.trt import TrtBackend
    from runtime.errors import ArtifactError, EngineError
    from runtime.trt import cuda

    from .fakes import FakeCuda

    plan = build_engine(
        BuildConfig(onnx=small, precision="fp32", batch=BATCH, flavour="rtx", targets=("8.9", "12.0"))
    ).engine
    fake_cuda = FakeCuda(gpu, cc)
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: fake_cuda)
    with pytest.raises(EngineError if expect is None else ArtifactError) as err:
        TrtBackend(plan).load()
    if expect is None:
        assert "TensorRT cannot load this plan" in str(err.value)  # no CUDA driver here
    else:
        assert expect in str(err.value) and "--flavour rtx --compute-capability " + cc in str(err.value)
