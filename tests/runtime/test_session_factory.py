"""One onnxruntime session factory: `runtime.backends.ort.make_session`.

Every ``InferenceSession(...)`` call in the project's code and scripts is found by an AST walk and
must sit in the factory's module, so thread defaults, optimisation levels, provider checks and load
errors are decided in one place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("runtime", "train", "export", "quantize", "pipeline", "scripts")

# path -> why it may build a session itself
ALLOWED = {
    "runtime/backends/ort.py": "the factory itself (make_session)",
}
# Not scanned: tests/. They load what the project wrote with plain onnxruntime on purpose, as a
# check independent of the code under test.


def session_builders(root: Path = ROOT) -> list[str]:
    """``path:line`` of every ``InferenceSession(...)`` call outside `ALLOWED`."""
    found = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*.py")) if (root / top).is_dir() else []:
            rel = path.relative_to(root).as_posix()
            if rel in ALLOWED:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), rel)):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    if name == "InferenceSession":
                        found.append(f"{rel}:{node.lineno}")
    return found


def test_sessions_come_from_the_factory():
    assert session_builders() == [], "build onnxruntime sessions with runtime.backends.ort.make_session"


def test_a_planted_session_builder_is_found(tmp_path):
    (tmp_path / "quantize").mkdir()
    (tmp_path / "quantize" / "bad.py").write_text(
        "def f(p):\n    import onnxruntime as ort\n\n    return ort.InferenceSession(p)\n"
    )
    (tmp_path / "runtime" / "backends").mkdir(parents=True)
    (tmp_path / "runtime" / "backends" / "ort.py").write_text(
        "from onnxruntime import InferenceSession\nInferenceSession('x')\n"
    )
    assert session_builders(tmp_path) == ["quantize/bad.py:4"]


def _tiny_model():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
            helper.make_node("Flatten", ["g"], ["logits"], name="flatten"),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_make_session_options(tmp_path):
    import onnx

    from runtime.backends.ort import make_session, predict

    model = _tiny_model()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(1).random((3, 3, 8, 8), dtype=np.float32)
    from_path = predict(make_session(path, threads=1), x, batch=2)
    opt = tmp_path / "opt.onnx"
    from_proto = predict(make_session(model, threads=1, optimization="disable", optimized_model_path=opt), x)
    from_bytes = predict(make_session(model.SerializeToString(), threads=1, spinning=False), x)
    assert from_path.shape == (3, 4) and from_path.dtype == np.float32
    np.testing.assert_allclose(from_proto, from_path, atol=1e-5)
    np.testing.assert_allclose(from_bytes, from_path, atol=1e-5)
    assert opt.is_file()


def test_make_session_errors(tmp_path):
    from runtime.backends.ort import make_session
    from runtime.errors import ArtifactError, ConfigError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"bad\.onnx: onnxruntime cannot load the model"):
        make_session(bad)
    with pytest.raises(ArtifactError, match="in-memory model: onnxruntime cannot load"):
        make_session(b"not a model")
    with pytest.raises(ConfigError, match="optimization must be one of"):
        make_session(bad, optimization="max")
    with pytest.raises(ConfigError, match="unknown ONNX Runtime provider"):
        make_session(bad, provider="npu")
