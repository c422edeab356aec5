"""Bad-input catalogue, TensorRT engines (docs/errors.md), through the real ``build`` command on fakes.

The fake TensorRT module and fake CUDA (fakes.py) stand in for the libraries that cannot be
installed here; the command, the cache decisions, the sidecar checks and the messages are the
project's own code.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from runtime import errors as E
from runtime.artifacts import sidecar_path
from runtime.backends.trt import TrtBackend
from runtime.errors import ArtifactError
from runtime.trt import cli, compat, cuda

from .conftest import FIXTURES
from .fakes import FakeCuda, make_fake_trt

INT8_10 = (FIXTURES / "inspector_trt10_lanmsff_int8.json").read_text()
INT8_11 = (FIXTURES / "inspector_trt11_lanmsff_int8.json").read_text()


def _install(monkeypatch, version: str, gpu: tuple[str, str], inspector: str = INT8_10):
    fake_cuda = FakeCuda(*gpu)
    fake = make_fake_trt(version, inspector=inspector, cuda=fake_cuda)
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: fake)
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: fake_cuda)
    return fake


@pytest.fixture
def built(tmp_path, monkeypatch, capsys):
    onnx = tmp_path / "lanmsff.int8.onnx"
    onnx.write_bytes(b"x")
    engine = tmp_path / "lanmsff.int8.engine"
    argv = ["--onnx", str(onnx), "--batch", "1:2:4", "--out", str(engine)]
    _install(monkeypatch, "10.3.0", ("Orin", "8.7"))
    assert cli.build_main(argv) == E.EXIT_OK
    capsys.readouterr()
    return argv, engine


@pytest.mark.parametrize(
    ("version", "gpu", "inspector", "reason"),
    [
        ("11.4.0.106", ("Orin", "8.7"), INT8_11, "tensorrt_version: 10.3.0 -> 11.4.0.106"),
        ("10.3.0", ("NVIDIA H100 80GB HBM3", "9.0"), INT8_10, "gpu_name: Orin -> NVIDIA H100 80GB HBM3"),
    ],
)
def test_engine_from_another_tensorrt_or_gpu_is_rebuilt_with_the_reason_logged(
    built, monkeypatch, caplog, capsys, version, gpu, inspector, reason
):
    argv, engine = built
    # Loading it as it is is refused with the fix named ...
    _install(monkeypatch, version, gpu, inspector)
    with pytest.raises(ArtifactError, match="Rebuild it here"):
        TrtBackend(engine).load()
    # ... and the build command rebuilds it, logging why.
    caplog.set_level(logging.INFO)
    assert cli.build_main(argv) == E.EXIT_OK
    assert reason in caplog.text and "building" in caplog.text
    assert "reused" not in capsys.readouterr().out
    with TrtBackend(engine) as backend:
        assert backend.infer({"input": np.ones((1, 1, 4, 4), np.float32)})["logits"].shape == (1, 3)


def test_corrupt_engine_is_refused_at_load_and_rebuilt_by_build(built, monkeypatch, caplog, capsys):
    argv, engine = built
    engine.write_bytes(engine.read_bytes()[:7])  # truncated: a copy cut short
    with pytest.raises(ArtifactError) as info:
        TrtBackend(engine).load()
    msg = str(info.value)
    assert engine.name in msg and "sha256" in msg and "corrupt, truncated or was replaced" in msg
    assert "Rebuild it here: python -m runtime build" in msg
    caplog.set_level(logging.INFO)
    assert cli.build_main(argv) == E.EXIT_OK
    assert "building" in caplog.text and "reused" not in capsys.readouterr().out
    assert engine.read_bytes().startswith(b"PLAN") and len(engine.read_bytes()) > 7
    with TrtBackend(engine) as backend:
        assert backend.infer({"input": np.ones((2, 1, 4, 4), np.float32)})["logits"].shape == (2, 3)


def test_corrupt_engine_sidecar_is_rebuilt(built, caplog, capsys):
    argv, engine = built
    sidecar_path(engine).write_text("{ not json")
    caplog.set_level(logging.INFO)
    assert cli.build_main(argv) == E.EXIT_OK
    assert "building" in caplog.text and "reused" not in capsys.readouterr().out
