"""runtime.contract: the deployment contract in ONNX metadata_props, read back without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from runtime.contract import (
    KEY_CLASS_NAMES,
    KEY_DATASET,
    KEY_PREPROCESS,
    REQUIRED_KEYS,
    DeploymentContract,
    read_contract,
    read_metadata,
)
from runtime.errors import ArtifactError
from runtime.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _contract() -> DeploymentContract:
    return DeploymentContract(
        model_name="manet",
        class_names=CLASSES,
        preprocess=PreprocessSpec(
            input_size=(224, 224), color_mode="rgb", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), resize="letterbox"
        ),
        dataset={"kind": "folder", "root": "/data/raf", "val_fraction": 0.1},
        checkpoint_sha256="ab" * 32,
        exporter="torch.onnx.export(dynamo=False) torch 2.13.0",
        versions={"onnx": "1.23.2", "torch": "2.13.0"},
        output_names=("logits", "local", "global"),
    )


def _write_model(path: Path, props: dict[str, str] | None) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"], name="relu")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for k, v in (props or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_metadata_round_trip_keeps_every_field():
    c = _contract()
    props = c.to_metadata()
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props[KEY_CLASS_NAMES]) == list(CLASSES)
    back = DeploymentContract.from_metadata(props)
    assert back == c
    assert back.num_classes == 7 and back.input_shape == (3, 224, 224)
    assert back.preprocess.mean == (0.5, 0.4, 0.3) and back.preprocess.resize.value == "letterbox"


def test_read_contract_from_file_and_from_onnxruntime_session(tmp_path):
    path = _write_model(tmp_path / "model.onnx", _contract().to_metadata())
    c = read_contract(path)
    assert c.class_names == CLASSES and c.dataset["root"] == "/data/raf" and c.source == str(path)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert DeploymentContract.from_metadata(sess.get_modelmeta().custom_metadata_map) == c


def test_contract_is_read_without_importing_torch(tmp_path):
    path = _write_model(tmp_path / "model.onnx", _contract().to_metadata())
    code = (
        "import sys; from runtime.contract import read_contract; "
        f"c = read_contract({str(path)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'; "
        "print(c.model_name, len(c.class_names), c.preprocess.input_size)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["manet", "7", "(224,", "224)"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        read_contract(tmp_path / "nope.onnx")


@pytest.mark.parametrize(
    "content", [b"this is not a protobuf \xff\xfe" * 10, b"", np.arange(300, dtype=np.uint8).tobytes()]
)
def test_non_onnx_file_is_a_clear_error(tmp_path, content):
    p = tmp_path / "model.onnx"
    p.write_bytes(content)
    with pytest.raises(ArtifactError, match="not an ONNX model"):
        read_contract(p)


def test_missing_keys_are_named(tmp_path):
    props = _contract().to_metadata()
    del props[KEY_CLASS_NAMES], props[KEY_PREPROCESS]
    path = _write_model(tmp_path / "model.onnx", props)
    with pytest.raises(ArtifactError) as err:
        read_contract(path)
    msg = str(err.value)
    assert "class_names" in msg and "preprocess" in msg and "python -m export onnx" in msg


def test_model_without_any_metadata(tmp_path):
    path = _write_model(tmp_path / "model.onnx", None)
    assert read_metadata(path) == {}
    with pytest.raises(ArtifactError, match="lacks deployment-contract key"):
        read_contract(path)


def test_malformed_values_are_clear_errors():
    props = _contract().to_metadata()
    with pytest.raises(ArtifactError, match="dataset.*not valid JSON"):
        DeploymentContract.from_metadata({**props, KEY_DATASET: "{oops"})
    with pytest.raises(ArtifactError, match="class_names.*JSON list"):
        DeploymentContract.from_metadata({**props, KEY_CLASS_NAMES: '"angry"'})
    with pytest.raises(ArtifactError, match="preprocess"):
        DeploymentContract.from_metadata({**props, KEY_PREPROCESS: json.dumps({"input_size": [0, 0]})})
    with pytest.raises(ArtifactError, match="format"):
        DeploymentContract.from_metadata({**props, "ferdeploy.format": "other/9"})
    with pytest.raises(ArtifactError, match="duplicate"):
        DeploymentContract.from_metadata({**props, KEY_CLASS_NAMES: json.dumps(["a", "a"])})
    assert set(REQUIRED_KEYS) <= set(props)
