"""The build path against a fake TensorRT of each version (no TensorRT or GPU here).

``surface="declared"`` restricts the fake to the names api_surface declares for the branch;
``surface=<wheel>`` restricts it to the names the real 10.3 / 10.13 / 11.4 bindings export (so the
build code is proven to touch only attributes that exist in that TensorRT).
"""

from __future__ import annotations

import json
import logging

import pytest

from runtime.artifacts import read_sidecar, sidecar_path
from runtime.errors import ConfigError
from runtime.trt.api_surface import names_for
from runtime.trt.build import BuildConfig, build_engine, default_engine_path, layers_report_path
from runtime.trt.cache import GpuIdentity
from runtime.trt.compat import Trt, TrtError, TrtVersion
from runtime.trt.engine_layers import PrecisionNotRealizedError

from .conftest import FIXTURES, surface
from .fakes import make_fake_trt

GPU = GpuIdentity("Orin", "8.7")
VERSIONS = {"10.3": "10.3.0", "10.13": "10.13.3.9", "11.4": "11.4.0.106"}
INT8_10 = (FIXTURES / "inspector_trt10_lanmsff_int8.json").read_text()
INT8_11 = (FIXTURES / "inspector_trt11_lanmsff_int8.json").read_text()


def inspector_for(precision: str) -> str:
    """One-conv engine inspector JSON (10.x schema) whose conv runs in ``precision``."""
    fmt = {"fp32": "Row major linear FP32", "fp16": "Channel major FP16 format where channel % 8 == 0"}[precision]
    return json.dumps(
        {
            "Layers": [
                {
                    "Name": "w + /c/Conv",
                    "LayerType": "CaskConvolution",
                    "ParameterType": "Convolution",
                    "Inputs": [{"Name": "input", "Dimensions": [-1], "Format/Datatype": fmt}],
                    "Outputs": [],
                }
            ],
            "Bindings": ["input", "logits"],
        }
    )


@pytest.fixture
def onnx(tmp_path):
    path = tmp_path / "lanmsff.int8.onnx"
    path.write_bytes(b"not parsed by the fake")
    return path


def fake_for(label: str, restrict: str, **kw):
    version = VERSIONS[label]
    names = surface(label).names if restrict == "wheel" else names_for(TrtVersion.parse(version).branch)
    if restrict == "wheel" and not surface(label).exact:
        pytest.skip("wheel-restricted fakes need the exact (introspect) surface")
    names = set(names) | {"__version__"}
    kw.setdefault("inspector", INT8_11 if version.startswith("11") else INT8_10)
    return make_fake_trt(version, surface=names, **kw)


@pytest.mark.parametrize("restrict", ["declared", "wheel"])
@pytest.mark.parametrize("label", sorted(VERSIONS))
def test_int8_build_writes_plan_sidecar_layers_and_timing_cache(tmp_path, onnx, label, restrict):
    fake = fake_for(label, restrict)
    cache_file = tmp_path / "timing.cache"
    cfg = BuildConfig(
        onnx=onnx,
        precision="int8",
        batch="1:8:32",
        workspace_mib=256,
        opt_level=4,
        aux_streams=2,
        timing_cache=cache_file,
    )
    result = build_engine(cfg, trt=Trt(fake), gpu=GPU)

    assert not result.reused and result.typing == "strong" and result.flags == ()
    assert result.engine == tmp_path / "lanmsff.int8.engine" and result.engine.read_bytes().startswith(b"PLAN")
    assert fake.state["network_flags"] == 2  # STRONGLY_TYPED on 10 and 11 alike
    assert fake.state["shapes"] == ("input", (1, 1, 4, 4), (8, 1, 4, 4), (32, 1, 4, 4))
    assert fake.state["workspace"] == ("MemoryPoolType.WORKSPACE", 256 << 20)
    assert fake.state["flags"] == []  # no precision flag, no calibrator
    assert cache_file.read_bytes() == b"+tactics"
    calls = [c for c, _ in fake.calls]
    assert "IBuilderConfig.builder_optimization_level=" in calls and "IBuilderConfig.max_aux_streams=" in calls
    assert "IBuilderConfig.profiling_verbosity=" in calls
    side = read_sidecar(result.engine)
    assert side["key"]["tensorrt_version"] == VERSIONS[label] and side["key"]["gpu_name"] == "Orin"
    assert side["typing_used"] == "strong" and side["tensorrt_branch"] == label.split(".")[0]
    assert side["precision_check"]["passed"] and side["precision_check"]["share"] == pytest.approx(4 / 6)
    layers = json.loads(layers_report_path(result.engine).read_text())
    assert layers["counts"] == {"fp16": 2, "int8": 4}

    # Same inputs: reused, nothing rebuilt; the timing cache is read back on the next build.
    fake.calls.clear()
    again = build_engine(cfg, trt=Trt(fake), gpu=GPU)
    assert again.reused and "matches" in again.reason
    assert "Builder.build_serialized_network" not in [c for c, _ in fake.calls]


def test_option_change_and_other_gpu_rebuild_with_reason(onnx, caplog):
    caplog.set_level(logging.INFO, logger="runtime.trt.build")
    fake = make_fake_trt("10.3.0", inspector=INT8_10)
    build_engine(BuildConfig(onnx=onnx, precision="int8"), trt=Trt(fake), gpu=GPU)
    r = build_engine(BuildConfig(onnx=onnx, precision="int8", opt_level=5), trt=Trt(fake), gpu=GPU)
    assert not r.reused and "options.opt_level: None -> 5" in r.reason
    r = build_engine(
        BuildConfig(onnx=onnx, precision="int8", opt_level=5), trt=Trt(fake), gpu=GpuIdentity("RTX 4090", "8.9")
    )
    assert not r.reused and "gpu_name: Orin -> RTX 4090" in r.reason and "building" in caplog.text


def test_other_tensorrt_version_rebuilds(onnx):
    build_engine(BuildConfig(onnx=onnx, precision="int8"), trt=Trt(make_fake_trt("10.3.0", inspector=INT8_10)), gpu=GPU)
    r = build_engine(
        BuildConfig(onnx=onnx, precision="int8"), trt=Trt(make_fake_trt("11.4.0.106", inspector=INT8_11)), gpu=GPU
    )
    assert not r.reused and "tensorrt_version: 10.3.0 -> 11.4.0.106" in r.reason


def test_plan_that_fails_to_deserialize_is_rebuilt(onnx, caplog):
    fake = make_fake_trt("10.3.0", inspector=INT8_10)
    cfg = BuildConfig(onnx=onnx, precision="int8")
    first = build_engine(cfg, trt=Trt(fake), gpu=GPU)
    # Corrupt the plan *and* make its sidecar agree, so only deserialization can notice.
    first.engine.write_bytes(b"garbage")
    side = json.loads(sidecar_path(first.engine).read_text())
    side.pop("artifact_sha256")
    sidecar_path(first.engine).write_text(json.dumps(side))
    r = build_engine(cfg, trt=Trt(fake), gpu=GPU)
    assert not r.reused and "failed to deserialize" in r.reason and "failed to deserialize" in caplog.text
    assert first.engine.read_bytes().startswith(b"PLAN")


def test_force_rebuilds(onnx):
    fake = make_fake_trt("11.4.0.106", inspector=INT8_11)
    build_engine(BuildConfig(onnx=onnx, precision="int8"), trt=Trt(fake), gpu=GPU)
    r = build_engine(BuildConfig(onnx=onnx, precision="int8", force=True), trt=Trt(fake), gpu=GPU)
    assert not r.reused and r.reason == "forced rebuild"


def _fp16_only_when_weakly_typed(fake):
    return inspector_for("fp32" if fake.state["network_flags"] else "fp16")


def test_tensorrt_10_falls_back_to_precision_flags(tmp_path):
    onnx = tmp_path / "model.onnx"  # an FP32 graph asked to run in FP16
    onnx.write_bytes(b"x")
    fake = make_fake_trt("10.3.0", inspector=_fp16_only_when_weakly_typed)
    r = build_engine(BuildConfig(onnx=onnx, precision="fp16"), trt=Trt(fake), gpu=GPU)
    assert r.engine == tmp_path / "model.fp16.engine"
    assert r.typing == "flags" and r.flags == ("BuilderFlag.FP16",) and len(r.attempts) == 1
    assert fake.state["flags"] == ["BuilderFlag.FP16"]
    assert read_sidecar(r.engine)["precision_flags"] == ["BuilderFlag.FP16"]


def test_tensorrt_11_has_no_fallback_and_writes_no_plan(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    fake = make_fake_trt("11.4.0.106", inspector=_fp16_only_when_weakly_typed)
    with pytest.raises(PrecisionNotRealizedError, match="requested fp16 but fp16 realized in 0%.*FP16-cast graph"):
        build_engine(BuildConfig(onnx=onnx, precision="fp16"), trt=Trt(fake), gpu=GPU)
    assert not (tmp_path / "model.fp16.engine").exists()
    assert layers_report_path(tmp_path / "model.fp16.engine").is_file()  # the evidence is kept
    with pytest.raises(ConfigError, match="needs TensorRT 10"):
        build_engine(BuildConfig(onnx=onnx, precision="fp16", typing="flags"), trt=Trt(fake), gpu=GPU)


def test_both_typings_failing_reports_both(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    fake = make_fake_trt("10.13.3.9", inspector=inspector_for("fp32"))
    with pytest.raises(PrecisionNotRealizedError, match="every typing mode failed: strong: .* \\| flags: "):
        build_engine(BuildConfig(onnx=onnx, precision="fp16"), trt=Trt(fake), gpu=GPU)


def test_dla_core_with_gpu_fallback(onnx):
    fake = make_fake_trt("10.3.0", inspector=INT8_10, num_dla_cores=2)
    build_engine(BuildConfig(onnx=onnx, precision="int8", dla_core=1), trt=Trt(fake), gpu=GPU)
    setters = {c: a for c, a in fake.calls if c.endswith("=")}
    assert repr(setters["IBuilderConfig.default_device_type="][0]) == "DeviceType.DLA"
    assert setters["IBuilderConfig.DLA_core="] == (1,)
    assert "BuilderFlag.GPU_FALLBACK" in fake.state["flags"]
    with pytest.raises(ConfigError, match="--dla-core 0 requested but this device has 0 DLA"):
        build_engine(
            BuildConfig(onnx=onnx, precision="int8", dla_core=0, force=True),
            trt=Trt(make_fake_trt("10.3.0", inspector=INT8_10)),
            gpu=GPU,
        )


def test_version_compatible_sets_flag_and_allows_host_code(onnx):
    fake = make_fake_trt("11.4.0.106", inspector=INT8_11)
    r = build_engine(BuildConfig(onnx=onnx, precision="int8", version_compatible=True), trt=Trt(fake), gpu=GPU)
    assert "BuilderFlag.VERSION_COMPATIBLE" in fake.state["flags"]
    assert ("Runtime.engine_host_code_allowed=", (True,)) in fake.calls
    assert read_sidecar(r.engine)["version_compatible"] is True


def test_parser_and_builder_failures(onnx):
    with pytest.raises(TrtError, match="parser rejected .*/foo/Foo: Unsupported op Foo"):
        build_engine(
            BuildConfig(onnx=onnx, precision="int8"), trt=Trt(make_fake_trt("10.3.0", parse_ok=False)), gpu=GPU
        )
    with pytest.raises(TrtError, match="could not build an engine"):
        build_engine(
            BuildConfig(onnx=onnx, precision="int8", typing="strong"),
            trt=Trt(make_fake_trt("11.4.0.106", build_ok=False)),
            gpu=GPU,
        )


def test_static_batch_must_match_profile(onnx):
    fake = make_fake_trt("11.4.0.106", inspector=INT8_11, input_shape=(1, 1, 4, 4))
    with pytest.raises(ConfigError, match="fixed batch of 1 but --batch is 1:8:32"):
        build_engine(BuildConfig(onnx=onnx, precision="int8"), trt=Trt(fake), gpu=GPU)
    r = build_engine(BuildConfig(onnx=onnx, precision="int8", batch="1"), trt=Trt(fake), gpu=GPU)
    assert "IBuilderConfig.add_optimization_profile" not in [c for c, _ in fake.calls] and not r.reused
    fake = make_fake_trt("11.4.0.106", inspector=INT8_11, input_shape=(-1, 1, -1, -1))
    with pytest.raises(TrtError, match="dynamic non-batch dimensions"):
        build_engine(BuildConfig(onnx=onnx, precision="int8", force=True), trt=Trt(fake), gpu=GPU)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"opt_level": 6}, "opt_level must be an integer 0..5"),
        ({"workspace_mib": 0}, "workspace_mib must be an integer >= 1"),
        ({"dla_core": -1}, "dla_core"),
        ({"min_precision_share": 1.5}, r"\[0, 1\]"),
        ({"precision": "fp8"}, "unknown precision"),
        ({"typing": "weak"}, "unknown typing"),
        ({"batch": "8:1:32"}, "min <= opt <= max"),
    ],
)
def test_build_config_validation(onnx, kwargs, match):
    args = {"onnx": onnx, "precision": "int8", **kwargs}
    with pytest.raises(ConfigError, match=match):
        BuildConfig(**args)


def test_build_config_paths(tmp_path, onnx):
    with pytest.raises(ConfigError, match="ONNX model not found"):
        BuildConfig(onnx=tmp_path / "absent.onnx", precision="fp32")
    (tmp_path / "m.plan").write_bytes(b"")
    with pytest.raises(ConfigError, match="must be an .onnx file"):
        BuildConfig(onnx=tmp_path / "m.plan", precision="fp32")
    with pytest.raises(ConfigError, match="would overwrite the ONNX"):
        BuildConfig(onnx=onnx, precision="int8", out=onnx)
    assert default_engine_path("a/model.onnx", "fp16").as_posix() == "a/model.fp16.engine"
    assert default_engine_path("a/model.int8.onnx", "int8").as_posix() == "a/model.int8.engine"
