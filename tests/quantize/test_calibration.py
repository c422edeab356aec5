"""Calibration sets: class balance, determinism, manifest hashes, and refusals of bad sets."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import CLASSES, write_folder_dataset

from quantize.calibration import (
    build_calibration_set,
    build_holdout_set,
    build_validation_set,
    dataset_config,
    manifest_path,
    select_balanced,
    tensor_sha256,
    write_manifest,
)
from runtime.contract import DeploymentContract
from runtime.errors import ConfigError, DataError
from runtime.preprocess import PreprocessSpec


def _contract(root) -> DeploymentContract:
    return DeploymentContract(
        model_name="lanmsff_tiny",
        class_names=CLASSES,
        preprocess=PreprocessSpec(),
        dataset={"kind": "folder", "root": str(root)},
    )


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    counts = {"angry": 12, "disgust": 2, "fear": 5, "happy": 20, "sad": 8, "surprise": 6, "neutral": 9}
    return write_folder_dataset(tmp_path_factory.mktemp("unbal"), (16, 16), 1, counts)


def test_select_balanced_is_balanced_seeded_and_fills_in():
    labels = [0] * 50 + [1] * 3 + [2] * 50
    a = select_balanced(labels, 30, seed=0)
    assert a == select_balanced(labels, 30, seed=0) and a != select_balanced(labels, 30, seed=1)
    c = Counter(labels[i] for i in a)
    assert c[1] == 3 and abs(c[0] - c[2]) <= 1 and sum(c.values()) == 30  # the rare class is used up, others fill in
    assert len(set(a)) == 30


def test_calibration_set_and_manifest(unbalanced, tmp_path):
    contract = _contract(unbalanced)
    cal = build_calibration_set(contract, size=35, seed=0, min_size=8)
    assert cal.tensors.shape == (35, 1, 64, 64) and cal.tensors.dtype == np.float32
    counts = cal.class_counts()
    assert counts["disgust"] == 2 and max(counts.values()) - min(v for k, v in counts.items() if k != "disgust") <= 1
    assert all(i.startswith("train/") for i in cal.ids)
    again = build_calibration_set(contract, size=35, seed=0, min_size=8)
    assert again.ids == cal.ids and tensor_sha256(again.tensors) == cal.manifest["tensor_sha256"]
    out = tmp_path / "model.int8.onnx"
    path, sha = write_manifest(out, cal)
    assert path == manifest_path(out) == tmp_path / "model.int8.calibration.json"
    m = json.loads(path.read_text())
    assert m["sample_ids"] == list(cal.ids) and m["class_counts"] == counts and m["size"] == 35
    assert m["tensor_sha256"] == tensor_sha256(cal.tensors) and len(m["sample_sha256"]) == 35 and len(sha) == 64


def test_validation_and_holdout_sets(unbalanced):
    contract = _contract(unbalanced)
    val = build_validation_set(contract)
    assert val.split == "val" and len(val) == 62 and all(i.startswith("val/") for i in val.ids)
    cal = build_calibration_set(contract, size=40, min_size=8)
    hold = build_holdout_set(contract, exclude_ids=cal.ids, size=300, min_size=8)
    assert hold is not None and not set(hold.ids) & set(cal.ids) and len(hold) == 62 - 40
    assert build_holdout_set(contract, exclude_ids=cal.ids, min_size=100) is None


def test_too_small_request_is_refused(unbalanced):
    with pytest.raises(ConfigError, match="below the minimum"):
        build_calibration_set(_contract(unbalanced), size=10, min_size=32)


def test_too_few_samples_are_refused(unbalanced):
    with pytest.raises(DataError, match="only 62 samples"):
        build_calibration_set(_contract(unbalanced), size=300, min_size=100)


def test_single_class_set_is_refused(tmp_path):
    root = write_folder_dataset(tmp_path, (16, 16), 1, {"happy": 40})
    with pytest.raises(DataError, match="single class"):
        build_calibration_set(_contract(root), size=40, min_size=8)


def test_empty_training_split_is_refused(tmp_path):
    root = write_folder_dataset(tmp_path, (16, 16), 1, 3, splits=("val",))
    # The folder loader warns about the missing train/ folder; the split is empty.
    with pytest.raises(DataError, match="empty"):
        build_calibration_set(_contract(root), size=32, min_size=8)


def test_data_option_yaml_and_directory(unbalanced, tmp_path):
    contract = _contract(tmp_path / "nowhere")
    assert dataset_config(contract, unbalanced) == {"kind": "folder", "root": str(unbalanced)}
    yml = tmp_path / "d.yaml"
    yml.write_text(f"fit:\n  data:\n    kind: folder\n    root: {unbalanced}\n    val_fraction: 0.1\n")
    assert dataset_config(contract, yml) == {"kind": "folder", "root": str(unbalanced), "val_fraction": 0.1}
    cal = build_calibration_set(contract, size=16, min_size=8, data=yml)
    assert len(cal) == 16
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {kind: folder, colour: red}\n")
    with pytest.raises(ConfigError, match="unknown dataset key"):
        dataset_config(contract, bad)
    with pytest.raises(ConfigError, match="no such file"):
        dataset_config(contract, tmp_path / "missing.yaml.txt")


def test_dataset_classes_outside_the_model_are_refused(tmp_path):
    root = write_folder_dataset(tmp_path, (16, 16), 1, {"happy": 10, "contempt": 10})
    with pytest.raises(DataError, match="does not predict"):
        build_calibration_set(_contract(root), size=16, min_size=8)
