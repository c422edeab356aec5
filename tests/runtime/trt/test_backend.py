"""The TensorRT backend's memory, shapes, CUDA-graph replay and plan checks, on fakes (CPU).

The fake execution context computes ``logits = input @ W`` from fake device memory, so wrong
addresses, copies or shapes show up as wrong numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from runtime.artifacts import sidecar_path
from runtime.backends import get_backend
from runtime.backends.trt import TrtBackend, _precision_from_name
from runtime.errors import ArtifactError, ConfigError, DataError
from runtime.trt import compat, cuda
from runtime.trt.build import BuildConfig, build_engine
from runtime.trt.cache import GpuIdentity
from runtime.trt.compat import Trt

from .conftest import FIXTURES
from .fakes import WEIGHTS, FakeCuda, make_fake_trt

INT8_10 = (FIXTURES / "inspector_trt10_lanmsff_int8.json").read_text()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A fake TensorRT 10.3 + fake CUDA installed where the backend looks for them."""
    fake_cuda = FakeCuda("Orin", "8.7")
    fake = make_fake_trt("10.3.0", inspector=INT8_10, cuda=fake_cuda)
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: fake)
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: fake_cuda)
    onnx = tmp_path / "lanmsff.int8.onnx"
    onnx.write_bytes(b"x")
    engine = build_engine(
        BuildConfig(onnx=onnx, precision="int8", batch="1:2:4"), trt=Trt(fake), gpu=GpuIdentity("Orin", "8.7")
    ).engine
    return fake, fake_cuda, onnx, engine


def test_registry_returns_this_backend():
    assert get_backend("trt") is TrtBackend


def test_infer_matches_reference_for_every_batch(env):
    fake, fake_cuda, _onnx, engine = env
    rng = np.random.default_rng(0)
    with TrtBackend(engine) as b:
        assert [s.describe() for s in b.input_specs] == ["input: float32[?, 1, 4, 4]"]
        assert b.output_names == ("logits",)
        for batch in (1, 3, 4, 2):
            x = rng.standard_normal((batch, 1, 4, 4)).astype(np.float32)
            out = b.infer({"input": x})["logits"]
            assert out.shape == (batch, 3)
            np.testing.assert_allclose(out, x.reshape(batch, -1) @ WEIGHTS, rtol=1e-6)
        info = b.describe()
        assert info["tensorrt"] == "10.3.0" and info["gpu"] == "Orin" and info["batch_range"] == [1, 4]
    assert fake_cuda.closed and fake_cuda.freed == 4  # two device + two pinned buffers


def test_cuda_graph_replays_per_shape(env):
    fake, fake_cuda, _onnx, engine = env
    with TrtBackend(engine, cuda_graph=True) as b:
        for batch in (2, 2, 3, 2):
            x = np.full((batch, 1, 4, 4), batch, dtype=np.float32)
            np.testing.assert_allclose(b.infer({"input": x})["logits"], x.reshape(batch, -1) @ WEIGHTS, rtol=1e-6)
        assert len(b._graphs) == 2 and fake_cuda.graph_launches == 4


def test_bench_fn_returns_device_milliseconds(env):
    _fake, _cuda, _onnx, engine = env
    with TrtBackend(engine) as b:
        run = b.bench_fn(4)
        assert run() == 0.25 and run() == 0.25


def test_batch_outside_profile_is_a_clear_error(env):
    with TrtBackend(env[3]) as b, pytest.raises(DataError, match="batch 5 .* outside the engine's profile 1..4"):
        b.infer({"input": np.zeros((5, 1, 4, 4), np.float32)})


def test_onnx_path_builds_then_loads(env):
    _fake, _cuda, onnx, _engine = env
    with TrtBackend(onnx, batch="1:2:4") as b:
        assert b.plan_path.name == "lanmsff.int8.engine"
        x = np.ones((2, 1, 4, 4), np.float32)
        np.testing.assert_allclose(b.infer({"input": x})["logits"], x.reshape(2, -1) @ WEIGHTS, rtol=1e-6)


def test_plan_without_sidecar_is_not_loaded_blindly(env):
    engine = env[3]
    sidecar_path(engine).unlink()
    with pytest.raises(ArtifactError, match="no sidecar.*python -m runtime build"):
        TrtBackend(engine).load()
    with TrtBackend(engine, verify=False) as b:
        assert b.infer({"input": np.zeros((1, 1, 4, 4), np.float32)})["logits"].shape == (1, 3)


def test_plan_from_another_gpu_or_version_is_refused(env, monkeypatch):
    fake, _cuda, _onnx, engine = env
    other = FakeCuda("NVIDIA GeForce RTX 4090", "8.9")
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: other)
    with pytest.raises(
        ArtifactError, match="built on Orin \\(sm 8.7\\), this is NVIDIA GeForce RTX 4090.*Rebuild it here"
    ):
        TrtBackend(engine).load()
    assert other.closed  # resources released on a failed load
    newer = make_fake_trt("10.13.3.9", cuda=env[1])
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: newer)
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: env[1])
    with pytest.raises(ArtifactError, match="built by TensorRT 10.3.0, this is 10.13.3.9"):
        TrtBackend(engine).load()


def test_lean_runtime_needs_a_version_compatible_plan(env, monkeypatch):
    fake, fake_cuda, onnx, engine = env
    lean_module = make_fake_trt("11.4.0.106", cuda=fake_cuda)
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: lean_module)
    with pytest.raises(ArtifactError, match="lean runtime loads version-compatible plans only"):
        TrtBackend(engine, lean=True).load()
    vc = build_engine(
        BuildConfig(
            onnx=onnx, precision="int8", batch="1:2:4", version_compatible=True, out=onnx.with_name("vc.engine")
        ),
        trt=Trt(fake),
        gpu=GpuIdentity("Orin", "8.7"),
    ).engine
    with TrtBackend(vc, lean=True) as b:  # a 10.3-built version-compatible plan on an 11.4 lean runtime
        assert b.trt.lean and b.describe()["lean"] is True
        assert b.infer({"input": np.ones((1, 1, 4, 4), np.float32)})["logits"].shape == (1, 3)


def test_precision_from_file_name():
    from pathlib import Path

    assert _precision_from_name(Path("m.int8.onnx")) == "int8"
    assert _precision_from_name(Path("m_fp16.onnx")) == "fp16"
    assert _precision_from_name(Path("m.onnx")) == "fp32"
    with pytest.raises(ConfigError):
        _precision_from_name(Path("m.engine"))


def test_unavailable_reason_without_tensorrt(monkeypatch):
    def missing(lean=False, **_):
        raise compat.MissingDependencyError(
            "TensorRT is not importable (...); install TensorRT with pip install '.[trt]'"
        )

    monkeypatch.setattr(compat, "import_tensorrt", missing)
    reason = TrtBackend.unavailable_reason()
    assert "pip install '.[trt]'" in reason and not TrtBackend.is_available()
