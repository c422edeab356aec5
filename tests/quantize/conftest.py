"""Fixtures for the quantize tests: tiny exported models with a small ImageFolder dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def write_folder_dataset(
    root: Path,
    size: tuple[int, int],
    channels: int,
    per_class: dict[str, int] | int,
    splits: tuple[str, ...] = ("train", "val"),
    seed: int = 0,
) -> Path:
    """An ImageFolder (``root/<split>/<class>/*.png``) of random images; classes as given."""
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, dict) else {c: per_class for c in CLASSES}
    h, w = size
    for split in splits:
        for cls, n in counts.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (h + 4, w + 6) if channels == 1 else (h + 4, w + 6, 3)
                # Class-dependent brightness, so the classes differ a little.
                base = 40 + 25 * (CLASSES.index(cls) if cls in CLASSES else 7)
                img = np.clip(rng.normal(base, 40, shape), 0, 255).astype(np.uint8)
                cv2.imwrite(str(d / f"{i}.png"), img)
    return root


def export_tiny(folder: Path, name: str, per_class: int = 3) -> Path:
    """Export ``name`` (random init, seed 0) with a folder dataset in its contract; returns model.onnx."""
    import torch

    from export.__main__ import main as export_cli
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    torch.manual_seed(0)
    spec = get_model_info(name).preprocess
    data = write_folder_dataset(folder / "data", spec.input_size, spec.channels, per_class)
    ckpt = save_checkpoint(
        folder / "checkpoint.pt",
        create_model(name).eval(),
        model_name=name,
        class_names=CLASSES,
        preprocess=spec,
        dataset={"kind": "folder", "root": str(data)},
    )
    out = folder / "model.onnx"
    assert export_cli(["onnx", "--checkpoint", str(ckpt), "--out", str(out), "--parity-batches", "1,2"]) == 0
    return out


@pytest.fixture(scope="session")
def lanmsff_tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("q_lanmsff"), "lanmsff_tiny")


@pytest.fixture(scope="session")
def manet_tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny(tmp_path_factory.mktemp("q_manet"), "manet_tiny", per_class=2)
