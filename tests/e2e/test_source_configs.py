"""Issue 15: the pipeline starts where the user is: configs/own_onnx.yaml and configs/folder.yaml, on small data.

Each example config is loaded as shipped; only its file paths (and the sizes that keep the test
fast) are pointed at files written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import own_archs as A
import pytest
import yaml

import pipeline as P
import pipeline.stages as S
from runtime.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
FAST = {"int8": {"calibration": {"size": 20, "min_size": 16}}}
BENCH = {"batches": [1], "seconds": 0.05, "iterations": 2, "warmup_s": 0.0, "warmup_iterations": 1}


@pytest.fixture(autouse=True)
def _no_tensorrt(monkeypatch):
    monkeypatch.setattr(S, "tensorrt_status", lambda cfg: (False, "no TensorRT in tests", ("TensorRT: not in tests",)))
    monkeypatch.setattr(S, "tensorrt_build_status", lambda cfg: (False, "TensorRT: not in tests"))


def _config(name: str, tmp: Path, **source) -> Path:
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    raw["source"].update(source)
    raw["pipeline"]["out"] = str(tmp / "run")
    raw["quantize"].update(FAST)
    raw["quantize"]["methods"] = ["ort"]  # one TensorRT-form method keeps the test short; nncf runs in test_own_model
    raw["bench"].update(BENCH)
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _steps(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "pipeline.json").read_text())["steps"]}


@pytest.mark.slow
def test_own_onnx_config(tmp_path):
    plain = A.plain_onnx("mobilenet_gray", tmp_path / "my_fer.onnx")
    photos = A.face_folder(tmp_path / "my_photos", 24, seed=3)
    cfg = _config(
        "own_onnx.yaml",
        tmp_path,
        path=str(plain),
        data=str(photos),
        contract=str(REPO / "configs" / "own_model.contract.yaml"),
    )
    assert P.pipeline_main(["--config", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "run"
    steps = _steps(run)
    assert steps["train"] == "skipped" and steps["export"] == "ran" and steps["report"] == "ran"
    parity = json.loads((run / "parity" / "parity.json").read_text())
    assert "24 images, unlabelled" in parity["dataset"] and parity["reference"]["model"].endswith("model.onnx")
    assert all(r["accuracy"] is None for r in parity["rows"]) and len(parity["rows"]) == 4  # ref + ort, cpu, fp16
    calib = json.loads((run / "model.ort.int8.calibration.json").read_text())
    assert calib["dataset"] == {"kind": "images", "root": str(photos)}
    # Second run: everything reused.
    assert P.pipeline_main(["--config", str(cfg), "--no-progress"]) == 0
    assert {v for k, v in _steps(run).items() if k not in ("train", "tensorrt")} == {"reused"}


@pytest.mark.slow
def test_folder_config_with_a_checkpoint(tmp_path):
    import torch

    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    torch.manual_seed(0)
    spec = get_model_info("lanmsff_tiny").preprocess
    ckpt = save_checkpoint(
        tmp_path / "trained" / "checkpoint.pt",
        create_model("lanmsff_tiny").eval(),
        model_name="lanmsff_tiny",
        class_names=A.CLASSES,
        preprocess=spec,
        dataset={"kind": "synthetic", "seed": 0, "count": 70, "size": 64},
    )
    photos = A.face_folder(tmp_path / "my_photos", 20, seed=4)
    cfg = _config("folder.yaml", tmp_path, path=str(ckpt), data=str(photos))
    assert P.pipeline_main(["--config", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").read_bytes() == ckpt.read_bytes()
    parity = json.loads((run / "parity" / "parity.json").read_text())
    assert parity["reference"]["model"].endswith("checkpoint.pt") and "20 images, unlabelled" in parity["dataset"]
    bench = json.loads((run / "bench" / "bench.json").read_text())
    assert any(r["backend"] == "torch" for r in bench["rows"])


def test_source_section_validation():
    with pytest.raises(ConfigError, match="source.kind must be one of"):
        P.config_from_mapping({"source": {"kind": "tflite", "path": "m.tflite"}}, "x.yaml")
    with pytest.raises(ConfigError, match="needs source.contract"):
        P.config_from_mapping({"source": {"kind": "onnx", "path": "m.onnx"}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown"):
        P.config_from_mapping(
            {"source": {"kind": "onnx", "path": "m.onnx", "contract": "c.yaml", "labels": 1}}, "x.yaml"
        )
    for name in ("own_onnx.yaml", "folder.yaml"):
        cfg = P.load_pipeline_config(REPO / "configs" / name)
        assert cfg.model_source.kind and cfg.model_source.data
