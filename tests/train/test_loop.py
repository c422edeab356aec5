"""Training loop: checkpoint contents, exact resume after a kill, multi-head training, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from runtime.configs import from_mapping
from runtime.errors import ConfigError
from train import loop
from train.checkpoint import load_checkpoint
from train.config import FitConfig, load_fit_config

REPO = Path(__file__).resolve().parents[2]


def tiny_cfg(**train) -> FitConfig:
    return from_mapping(
        FitConfig,
        {
            "model": {"name": "lanmsff_tiny", "num_classes": 7, "kwargs": {"bn_momentum": 0.1}},
            "data": {"kind": "synthetic", "val_fraction": 0.25, "seed": 3, "options": {"count": 56, "size": 32}},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "lr": 0.003,
                "scheduler": "onecycle",
                "seed": 5,
                "num_threads": 1,
                **train,
            },
        },
    )


def test_fit_writes_checkpoint_and_sidecar(tmp_path: Path) -> None:
    result = loop.fit(tiny_cfg(epochs=2), out=tmp_path, progress=False)
    side = json.loads((tmp_path / "checkpoint.json").read_text())
    m = side["metrics"]
    assert 0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["val_macro_f1"] <= 1.0
    views = {"full_left", "half_left", "frontal", "half_right", "full_right"}
    assert set(m["per_view_accuracy"]) <= views and len(m["per_view_accuracy"]) >= 3
    assert set(m["per_occlusion_accuracy"]) <= {"clear", "occluded"}
    assert side["class_names"] == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert side["input_contract"]["input_size"] == [64, 64] and side["input_contract"]["color_mode"] == "gray"
    assert side["epochs_run"] == 2 and len(side["history"]) == 2
    assert side["versions"]["torch"].startswith("2.")
    assert sum(map(sum, m["confusion"])) == m["val_count"] == 14
    model, meta = load_checkpoint(result.checkpoint)
    assert meta.model_name == "lanmsff_tiny" and meta.dataset["kind"] == "synthetic"
    assert meta.sha256 == side["checkpoint_sha256"]
    # The saved model reproduces the reported validation accuracy through the shared preprocessing.
    from runtime.data import load_dataset

    val = load_dataset(**meta.dataset).split("val")
    x = loop.preprocess_records(val, meta.preprocess)
    ev = loop.evaluate(model, x, val, meta.class_names, 64, torch.device("cpu"))
    assert ev.metrics["accuracy"] == pytest.approx(m["val_accuracy"])
    # Per-view accuracies are consistent with the overall one (weighted by samples per view).
    per_view_n = {v: sum(r.meta["view"] == v for r in val) for v in m["per_view_accuracy"]}
    weighted = sum(m["per_view_accuracy"][v] * n for v, n in per_view_n.items()) / len(val)
    assert weighted == pytest.approx(m["val_accuracy"])


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg()
    full = loop.fit(cfg, out=tmp_path / "full", progress=False)

    real_evaluate = loop.evaluate
    calls = {"n": 0}

    def killed_in_epoch_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill during epoch 3")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        loop.fit(cfg, out=tmp_path / "killed", progress=False)
    assert not (tmp_path / "killed" / "checkpoint.pt").exists()
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    resumed = loop.fit(cfg, out=tmp_path / "killed", resume=True, progress=False)

    assert resumed.epochs_run == full.epochs_run == 3
    assert resumed.metrics == full.metrics
    a, _ = load_checkpoint(full.checkpoint)
    b, _ = load_checkpoint(resumed.checkpoint)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    hist_full = json.loads((tmp_path / "full" / "checkpoint.json").read_text())["history"]
    hist_res = json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["history"]
    assert [h["val_loss"] for h in hist_full] == [h["val_loss"] for h in hist_res]


def test_existing_run_needs_resume_and_same_config(tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=1)
    loop.fit(cfg, out=tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        loop.fit(cfg, out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different config"):
        loop.fit(replace(cfg, train=replace(cfg.train, lr=0.1)), out=tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_class_count_mismatch_is_config_error(tmp_path: Path) -> None:
    cfg = tiny_cfg()
    cfg = replace(cfg, model=replace(cfg.model, num_classes=8))
    with pytest.raises(ConfigError, match="num_classes: 7"):
        loop.fit(cfg, out=tmp_path, progress=False)


@pytest.mark.slow
def test_manet_trains_through_fit_with_both_heads(tmp_path: Path) -> None:
    cfg = from_mapping(
        FitConfig,
        {
            "model": {"name": "manet_tiny", "num_classes": 7},
            "data": {"kind": "synthetic", "val_fraction": 0.25, "options": {"count": 28, "size": 64, "mode": "rgb"}},
            "train": {
                "epochs": 2,
                "batch_size": 7,
                "optimizer": "sgd",
                "lr": 0.01,
                "scheduler": "step",
                "num_threads": 1,
                "augment": "none",
            },
        },
    )
    loop.fit(cfg, out=tmp_path, progress=False)
    hist = json.loads((tmp_path / "checkpoint.json").read_text())["history"]
    assert hist[1]["train_loss"] < hist[0]["train_loss"]
    _, meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert meta.preprocess.input_size == (224, 224) and meta.preprocess.color_mode.value == "rgb"


def test_all_shipped_training_configs_parse() -> None:
    import yaml

    seen = 0
    for path in sorted((REPO / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        if "fit" not in raw and not {"model", "data", "train"} & set(raw):
            continue  # a pipeline that starts from the user's model (source:) or a contract: tests/pipeline checks those
        cfg = load_fit_config(path)
        assert cfg.model.name in ("lanmsff", "manet"), path
        seen += 1
    assert seen >= 6


def test_cli_rejects_unknown_config_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("fit:\n  train: {epochs: 1, learning_rate: 0.1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "train", "fit", "--config", str(bad), "--out", str(tmp_path / "o")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2  # a config error is bad usage (docs/errors.md)
    assert "learning_rate" in proc.stderr and "valid keys" in proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_torchrun_ddp_two_processes(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2` trains with DistributedDataParallel (gloo on CPU)."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(
        "fit:\n"
        "  model: {name: lanmsff_tiny, num_classes: 7}\n"
        "  data: {kind: synthetic, val_fraction: 0.25, options: {count: 28, size: 32}}\n"
        "  train: {epochs: 1, batch_size: 7, num_threads: 1, scheduler: none}\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            "-m",
            "train",
            "fit",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "o"),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    side = json.loads((tmp_path / "o" / "checkpoint.json").read_text())
    # Each of the two ranks saw half of the 21 training images (DistributedSampler pads to 22).
    assert side["history"][0]["train_images_per_s"] > 0
    assert side["epochs_run"] == 1
