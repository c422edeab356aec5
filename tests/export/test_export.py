"""python -m export onnx: tiny LANMSFF and MA-Net with a dynamic batch, the contract, traps, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from export import preflight as pf
from export.__main__ import main as cli
from export.config import ExportConfig, parse_batch
from export.exporter import EXPORTER_BY_FAMILY, export_model
from runtime.artifacts import read_sidecar, sha256_file
from runtime.errors import ConfigError, ExportError
from runtime.preprocess import PreprocessSpec
from train.checkpoint import CheckpointMeta, save_checkpoint
from train.models import create_model, get_model_info

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _folder_dataset(root: Path, spec: PreprocessSpec, per_class: int = 2) -> Path:
    """A tiny ImageFolder (train/ and val/, canonical class folders) of random images."""
    rng = np.random.default_rng(0)
    h, w = spec.input_size
    for split in ("train", "val"):
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                shape = (h + 6, w + 10) if spec.channels == 1 else (h + 6, w + 10, 3)
                cv2.imwrite(str(d / f"{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
    return root


def _checkpoint(folder: Path, name: str) -> Path:
    torch.manual_seed(0)
    spec = get_model_info(name).preprocess
    data = _folder_dataset(folder / "data", spec)
    return save_checkpoint(
        folder / "checkpoint.pt",
        create_model(name),
        model_name=name,
        class_names=CLASSES,
        preprocess=spec,
        dataset={"kind": "folder", "root": str(data)},
    )


@pytest.fixture(scope="module")
def lanmsff_run(tmp_path_factory):
    """lanmsff_tiny exported once through the CLI with the default (dynamic) batch."""
    run = tmp_path_factory.mktemp("lanmsff")
    ckpt = _checkpoint(run, "lanmsff_tiny")
    assert cli(["onnx", "--checkpoint", str(ckpt), "--out", str(run / "model.onnx")]) == 0
    return run


@pytest.fixture(scope="module")
def manet_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("manet")
    ckpt = _checkpoint(run, "manet_tiny")
    assert cli(["onnx", "--checkpoint", str(ckpt), "--out", str(run / "model.onnx")]) == 0
    return run


def _contract_in_subprocess(model: Path) -> dict:
    """Read the contract in a fresh interpreter and prove torch was never imported."""
    code = (
        "import json, sys; from runtime.contract import read_contract; "
        f"c = read_contract({str(model)!r}); "
        "assert 'torch' not in sys.modules, 'runtime.contract imported torch'; "
        "print(json.dumps({'model_name': c.model_name, 'class_names': list(c.class_names), "
        "'preprocess': c.preprocess.to_dict(), 'dataset': c.dataset, 'sha': c.checkpoint_sha256, "
        "'outputs': list(c.output_names), 'exporter': c.exporter, 'versions': c.versions}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _dims(vi) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_lanmsff_tiny_exports_with_dynamic_batch(lanmsff_run):
    model_path = lanmsff_run / "model.onnx"
    model = onnx.load(str(model_path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["logits"]
    assert _dims(model.graph.input[0]) == ["batch", 1, 64, 64]
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert not list(lanmsff_run.glob("*.data")) and not list(
        lanmsff_run.glob(".model.onnx.*")
    )  # self-contained, no temp left
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        assert sess.run(None, {"input": np.zeros((n, 1, 64, 64), np.float32)})[0].shape == (n, 7)


def test_lanmsff_tiny_preflight_report_and_sidecar(lanmsff_run):
    report = json.loads((lanmsff_run / "model.preflight.json").read_text())
    assert report["passed"] is True
    assert [p["batch"] for p in report["parity"]] == [1, 32]
    assert all(p["max_abs_diff"]["logits"] <= 1e-4 and p["top1_agreement"]["logits"] == 1.0 for p in report["parity"])
    assert "val images" in report["parity_inputs"]  # real validation images from the checkpoint's dataset
    assert not [f for f in report["findings"] if f["severity"] == "error"]

    side = read_sidecar(lanmsff_run / "model.onnx")
    assert side["checkpoint"]["sha256"] == sha256_file(lanmsff_run / "checkpoint.pt")
    assert side["artifact_sha256"] == sha256_file(lanmsff_run / "model.onnx")
    assert side["file_size_bytes"] == (lanmsff_run / "model.onnx").stat().st_size
    assert side["exporter"]["name"] == EXPORTER_BY_FAMILY["lanmsff"].value == "torchscript"
    assert side["slim"]["applied"] and side["slim"]["max_abs_diff"] <= 1e-6
    assert side["slim"]["nodes_after"] < side["slim"]["nodes_before"]
    assert side["config"]["batch"] is None and side["config"]["opset"] == 17
    assert side["versions"]["onnx"] == onnx.__version__ and side["export_time_s"] > 0
    assert len(side["parity"]) == 2


def test_lanmsff_tiny_contract_round_trips_without_torch(lanmsff_run):
    c = _contract_in_subprocess(lanmsff_run / "model.onnx")
    assert c["model_name"] == "lanmsff_tiny" and c["class_names"] == list(CLASSES)
    assert c["preprocess"] == get_model_info("lanmsff_tiny").preprocess.to_dict()
    assert c["dataset"]["kind"] == "folder" and c["sha"] == sha256_file(lanmsff_run / "checkpoint.pt")
    assert c["outputs"] == ["logits"] and "dynamo=False" in c["exporter"] and c["versions"]["onnx"] == onnx.__version__


def test_manet_tiny_exports_three_named_outputs(manet_run):
    model_path = manet_run / "model.onnx"
    model = onnx.load(str(model_path))
    assert [o.name for o in model.graph.output] == ["logits", "local", "global"]
    assert _dims(model.graph.input[0]) == ["batch", 3, 224, 224]
    report = json.loads((manet_run / "model.preflight.json").read_text())
    assert report["passed"] is True
    for p in report["parity"]:  # both heads and the fused logits are compared
        assert set(p["max_abs_diff"]) == {"logits", "local", "global"} and max(p["max_abs_diff"].values()) <= 1e-4
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((3, 3, 224, 224), dtype=np.float32)
    fused, local, glob = sess.run(None, {"input": x})
    np.testing.assert_allclose(fused, 0.6 * local + 0.4 * glob, atol=1e-5)  # 'logits' is the fused output
    c = _contract_in_subprocess(model_path)
    assert c["model_name"] == "manet_tiny" and c["outputs"] == ["logits", "local", "global"]
    assert c["preprocess"]["input_size"] == [224, 224] and c["preprocess"]["color_mode"] == "rgb"


def test_up_to_date_export_is_skipped_and_check_cli_passes(lanmsff_run, caplog):
    before = (lanmsff_run / "model.onnx").stat().st_mtime_ns
    caplog.set_level("INFO")
    assert (
        cli(["onnx", "--checkpoint", str(lanmsff_run / "checkpoint.pt"), "--out", str(lanmsff_run / "model.onnx")]) == 0
    )
    assert "up to date" in caplog.text and (lanmsff_run / "model.onnx").stat().st_mtime_ns == before
    report = lanmsff_run / "check.json"
    assert (
        cli(
            [
                "check",
                str(lanmsff_run / "model.onnx"),
                "--checkpoint",
                str(lanmsff_run / "checkpoint.pt"),
                "--batches",
                "1,4",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    assert [p["batch"] for p in json.loads(report.read_text())["parity"]] == [1, 4]


# --- the MA-Net CBAM trap and other traps in tiny modules ----------------------------------------


class _CbamTrap(nn.Module):
    """A channel gate pooling with a kernel taken from x.size(): MA-Net's original CBAM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.mlp = nn.Sequential(nn.Flatten(), nn.Linear(8, 8))
        self.fc = nn.Linear(8, 7)

    def forward(self, x):
        x = self.conv(x)
        k = (x.size(2), x.size(3))
        att = self.mlp(F.avg_pool2d(x, k, stride=k)) + self.mlp(F.max_pool2d(x, k, stride=k))
        x = x * torch.sigmoid(att)[:, :, None, None]
        return self.fc(x.mean((2, 3)))


def _meta(name: str = "cbam_trap") -> CheckpointMeta:
    return CheckpointMeta(name, 7, CLASSES, PreprocessSpec(input_size=(16, 16)), sha256="0" * 64)


def test_cbam_trap_fails_dynamic_export_with_the_fix(tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as err:
        export_model(_CbamTrap().eval(), _meta(), ExportConfig(checkpoint="unused.pt", out=out))
    msg = str(err.value)
    assert "SymbolicValueError" in msg and "x.mean((2, 3), keepdim=True)" in msg and "amax" in msg
    assert {f.code for f in err.value.findings} == {pf.POOL_KERNEL_FROM_SHAPE}
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no temp folder left


def test_cbam_trap_static_export_is_flagged_by_preflight(tmp_path):
    res = export_model(
        _CbamTrap().eval(),
        _meta(),
        ExportConfig(checkpoint="unused.pt", out=tmp_path / "model.onnx", batch=2, parity_batches=(2,)),
    )
    codes = res.report.codes
    assert pf.GLOBAL_POOL_FIXED_KERNEL in codes and pf.POOL_KERNEL_FROM_SHAPE in codes and pf.STATIC_BATCH in codes
    assert _dims(onnx.load(str(res.model)).graph.input[0]) == [2, 1, 16, 16]


def test_non_divisible_adaptive_pool_export_error_names_the_trap(tmp_path):
    class Adaptive(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.head_pool = nn.AdaptiveAvgPool2d(3)
            self.fc = nn.Linear(36, 7)

        def forward(self, x):
            return self.fc(torch.flatten(self.head_pool(self.conv(x)), 1))

    with pytest.raises(ExportError) as err:
        export_model(
            Adaptive().eval(), _meta("adaptive"), ExportConfig(checkpoint="unused.pt", out=tmp_path / "model.onnx")
        )
    assert [f.code for f in err.value.findings] == [pf.ADAPTIVE_POOL_NON_DIVISIBLE]
    assert "head_pool" in str(err.value) and "16×16" in str(err.value)


# --- bad inputs -----------------------------------------------------------------------------------


def test_missing_checkpoint(tmp_path, caplog):
    assert cli(["onnx", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "model.onnx")]) == 1
    assert "checkpoint not found" in caplog.text and not (tmp_path / "model.onnx").exists()


def test_corrupt_checkpoint_leaves_an_existing_model_alone(tmp_path, caplog):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good model")
    assert cli(["onnx", "--checkpoint", str(bad), "--out", str(out)]) == 1
    assert "corrupt or truncated" in caplog.text and out.read_bytes() == b"previous good model"


def test_existing_model_survives_an_export_that_fails_preflight(lanmsff_run, tmp_path, caplog):
    out = tmp_path / "model.onnx"
    good = (lanmsff_run / "model.onnx").read_bytes()
    out.write_bytes(good)
    (tmp_path / "model.preflight.json").write_text("{}")
    # An impossible tolerance makes the parity check fail after the candidate was written.
    rc = cli(
        [
            "onnx",
            "--checkpoint",
            str(lanmsff_run / "checkpoint.pt"),
            "--out",
            str(out),
            "--atol",
            "1e-30",
            "--parity-batches",
            "1",
        ]
    )
    assert rc == 1
    assert out.read_bytes() == good and (tmp_path / "model.preflight.json").read_text() == "{}"
    assert "PARITY_MAX_ABS" in caplog.text and "unchanged" in caplog.text
    assert json.loads((tmp_path / "model.rejected.preflight.json").read_text())["passed"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model.onnx",
        "model.preflight.json",
        "model.rejected.preflight.json",
    ]


@pytest.mark.parametrize("batch", ["abc", "0", "-3", "1.5", "99999"])
def test_invalid_batch_value(tmp_path, caplog, batch):
    assert (
        cli(["onnx", "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "m.onnx"), "--batch", batch]) == 2
    )  # bad usage
    assert "--batch must be 'dynamic' or" in caplog.text


def test_config_validation():
    assert parse_batch("dynamic") is None and parse_batch("8") == 8 and parse_batch(None) is None
    with pytest.raises(ConfigError, match="opset 21"):
        ExportConfig(checkpoint="c.pt", out="m.onnx", opset=21)
    with pytest.raises(ConfigError, match=".onnx"):
        ExportConfig(checkpoint="c.pt", out="model.bin")
    with pytest.raises(ConfigError, match="exporter"):
        ExportConfig(checkpoint="c.pt", out="m.onnx", exporter="magic")
    with pytest.raises(ConfigError, match=r"ExportConfig: unknown key\(s\) \['batchsize'\]"):
        ExportConfig.from_dict({"checkpoint": "c.pt", "out": "m.onnx", "batchsize": 3})
    cfg = ExportConfig.from_dict({"checkpoint": "c.pt", "out": "m.onnx", "batch": "4"})
    assert cfg.batch == 4 and not cfg.dynamic_batch and cfg.to_dict()["exporter"] == "auto"


def test_fixed_batch_export(tmp_path):
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4, 7)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1))

    res = export_model(
        Small().eval(), _meta("small"), ExportConfig(checkpoint="unused.pt", out=tmp_path / "m.onnx", batch=3)
    )
    assert res.report.passed and [p.batch for p in res.report.parity] == [3]
    assert _dims(onnx.load(str(res.model)).graph.input[0]) == [3, 1, 16, 16]
    assert os.path.getsize(res.model) == res.file_size_bytes
