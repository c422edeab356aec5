"""runtime.backends: registry, the Backend protocol, ONNX Runtime and PyTorch reference backends."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from harness_util import CLASSES, linear_model, weights
from onnx import TensorProto

from runtime.backends import available_backends, backend_names, get_backend, random_feeds, register_backend
from runtime.backends.base import Backend, TensorSpec, check_feeds
from runtime.backends.ort import OrtBackend, OrtCudaBackend, default_threads
from runtime.errors import ArtifactError, ConfigError, DataError, MissingDependencyError, PipelineError

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("ort") / "model.onnx")


def test_registry_lists_and_rejects():
    assert {"ort", "ort-cuda", "ort-trt", "torch", "trt"} <= set(backend_names())
    assert get_backend("ort") is OrtBackend
    with pytest.raises(ConfigError, match="valid"):
        get_backend("nosuch")
    with pytest.raises(ConfigError, match="already registered"):
        register_backend("ort", "x:Y")
    avail = available_backends()
    assert avail["ort"] == ""  # onnxruntime is a core dependency
    if importlib.util.find_spec("runtime.backends.trt") is None:
        assert "trt" in avail["trt"]
        with pytest.raises(MissingDependencyError, match="trt"):
            get_backend("trt")


def test_ort_infer_matches_numpy_and_records_threads(model):
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    w, b = weights()
    be = OrtBackend(model, threads=1)
    assert not be.loaded  # the constructor does no heavy work
    with be:
        assert be.input_specs == (TensorSpec("input", np.float32, ("batch", 1, 8, 8)),)
        assert be.output_names == ("logits",)
        out = be.infer({"input": x})
        assert set(out) == {"logits"}
        np.testing.assert_allclose(out["logits"], x.reshape(5, -1) @ w + b, rtol=1e-5, atol=1e-5)
        d = be.describe()
        assert d["threads"] == 1 and d["providers_used"][0] == "CPUExecutionProvider" and d["onnxruntime"]
        # Dynamic batch: any batch size works.
        assert be.infer({"input": x[:1]})["logits"].shape == (1, 7)
    assert not be.loaded
    be.close()  # twice is fine


def test_spinning_off_is_applied_and_reported(model):
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    with OrtBackend(model, threads=2, spinning=False) as be:
        assert be.describe()["spinning"] is False
        assert be.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        ref = OrtBackend(model, threads=2).load()
        np.testing.assert_array_equal(be.infer({"input": x})["logits"], ref.infer({"input": x})["logits"])
        assert ref.describe()["spinning"] is True
        ref.close()


def test_default_threads_follow_omp(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads() == 2 and OrtBackend("x.onnx").threads == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads() == 1


@pytest.mark.parametrize(
    "feeds, match",
    [
        ({"image": np.zeros((1, 1, 8, 8), np.float32)}, r"missing \['input'\], unexpected \['image'\]"),
        ({"input": np.zeros((1, 1, 8, 8), np.float64)}, "dtype float64, expected float32"),
        ({"input": np.zeros((1, 1, 8, 9), np.float32)}, "dimension 3 is 9, expected 8"),
        ({"input": np.zeros((1, 8, 8), np.float32)}, "rank 3"),
        ({"input": np.zeros((0, 1, 8, 8), np.float32)}, "must be >= 1"),
        ({"input": [[0.0]]}, "not a numpy array"),
        ({}, "missing"),
    ],
)
def test_bad_feeds_raise_clear_data_errors(model, feeds, match):
    with OrtBackend(model) as be, pytest.raises(DataError, match=match) as err:
        be.infer(feeds)
    assert "Expected inputs" in str(err.value) or "expected" in str(err.value)


def test_check_feeds_symbolic_dims_must_agree():
    specs = (TensorSpec("a", np.float32, ("batch", 3)), TensorSpec("b", np.int64, ("batch",)))
    check_feeds({"a": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.int64)}, specs)
    with pytest.raises(DataError, match="batch"):
        check_feeds({"a": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.int64)}, specs)
    assert TensorSpec("x", "float32", (-1, 3)).shape == (None, 3)


def test_infer_before_load_and_bad_files(tmp_path, model):
    with pytest.raises(PipelineError, match="not loaded"):
        OrtBackend(model).infer({"input": np.zeros((1, 1, 8, 8), np.float32)})
    with pytest.raises(ArtifactError, match="not found"):
        OrtBackend(tmp_path / "missing.onnx").load()
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    with pytest.raises(ArtifactError, match="cannot load"):
        OrtBackend(bad).load()
    with pytest.raises(ConfigError, match="provider"):
        OrtBackend(model, provider="rocm")
    with pytest.raises(ConfigError, match="option"):
        OrtBackend(model, thread=2)


def test_unavailable_provider_is_reported_not_silently_replaced(model):
    if OrtCudaBackend.is_available():
        pytest.skip("CUDAExecutionProvider is installed here")
    assert "CUDAExecutionProvider" in OrtCudaBackend.unavailable_reason()
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        OrtBackend(model, provider="cuda").load()


def test_fp16_io_model_needs_fp16_feeds(tmp_path):
    m = linear_model(tmp_path / "io16.onnx", io_dtype=TensorProto.FLOAT16)
    with OrtBackend(m) as be:
        assert be.input_specs[0].dtype == np.float16
        with pytest.raises(DataError, match="float16"):
            be.infer({"input": np.zeros((1, 1, 8, 8), np.float32)})
        assert be.infer(random_feeds(be.input_specs, 3))["logits"].dtype == np.float16


def test_random_feeds_are_seeded():
    specs = (TensorSpec("x", np.float32, ("batch", 2)),)
    a, b = random_feeds(specs, 4, seed=1), random_feeds(specs, 4, seed=1)
    assert a["x"].shape == (4, 2) and np.array_equal(a["x"], b["x"])


def test_bench_fn_hook_defaults_to_none(model):
    with OrtBackend(model) as be:
        assert be.bench_fn(1) is None


def test_subclass_contract_is_enforced(tmp_path):
    class Broken(Backend):
        name = "broken"

        @classmethod
        def _probe(cls):
            raise RuntimeError("driver exploded")

        def _load(self):
            pass  # forgets to set input_specs/output_names

        def _infer(self, feeds):
            return {}

    assert not Broken.is_available() and "driver exploded" in Broken.unavailable_reason()
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    with pytest.raises(PipelineError, match="input_specs"):
        Broken(f).load()
    assert Broken.accepts("a.onnx") and not Broken.accepts("a.pt")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (the reference backend needs the train extra)")
def test_torch_reference_backend(tmp_path):
    import torch

    from train.backend import TorchBackend
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    torch.manual_seed(0)
    net = create_model("lanmsff_tiny").eval()
    spec = get_model_info("lanmsff_tiny").preprocess
    ck = save_checkpoint(
        tmp_path / "checkpoint.pt", net, model_name="lanmsff_tiny", class_names=CLASSES, preprocess=spec
    )
    assert get_backend("torch") is TorchBackend and TorchBackend.is_available()
    assert TorchBackend.accepts(ck) and not TorchBackend.accepts("m.onnx")
    x = np.random.default_rng(0).random((2, *spec.input_shape), dtype=np.float32)
    with TorchBackend(ck, threads=1) as be:
        assert be.input_specs[0].shape == ("batch", *spec.input_shape)
        assert be.output_names[0] == "logits"
        out = be.infer({"input": x})
        with torch.no_grad():
            expect = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(out["logits"], expect, rtol=1e-5, atol=1e-6)
        with pytest.raises(DataError, match="dimension"):
            be.infer({"input": np.zeros((1, 1, 32, 32), np.float32)})
        assert be.describe()["torch"]
    with pytest.raises(ArtifactError):
        TorchBackend(tmp_path / "none.pt").load()


def test_validation_cache_never_lets_a_changed_feed_through(model):
    good = {"input": np.zeros((2, 1, 8, 8), np.float32)}
    with OrtBackend(model) as be:
        be.infer(good)
        be.infer(good)  # cached signature: fast path
        with pytest.raises(DataError, match="dtype"):
            be.infer({"input": good["input"].astype(np.float64)})
        with pytest.raises(DataError, match="dimension 2"):
            be.infer({"input": np.zeros((2, 1, 9, 8), np.float32)})
        with pytest.raises(DataError, match="unexpected"):
            be.infer({**good, "extra": good["input"]})
        assert be.infer({"input": np.zeros((5, 1, 8, 8), np.float32)})["logits"].shape == (5, 7)
