"""Calibration and validation sets for quantization, with a manifest that pins them down.

The calibration set is a class-balanced, seeded subset of the *training* split (never the
validation split the report scores on), preprocessed by `runtime.preprocess.preprocess` exactly as
the device will. Its manifest (sample ids, class counts, sha256 of the tensors) is written beside
the quantized model, so a later run can prove it calibrated on the same data.

Data default to the dataset named in the model's contract (``metadata_props["dataset"]``, i.e.
what the checkpoint was trained on); ``data`` picks another: a dataset YAML (a ``data:`` section
as in ``configs/*.yaml``, a whole training config, or a bare mapping with ``kind``) or an
ImageFolder directory, or any folder of images, with or without class folders (`runtime.images`:
unlabelled images calibrate as they are; the quantized model is then judged against FP32 top-1).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.contract import DeploymentContract
from runtime.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "ferdeploy-calibration/1"
DEFAULT_CALIB_SIZE = 300  # docs/models.md §5: calibrate on >= 300 images with per-class balance
DEFAULT_MIN_SIZE = 32


@dataclass(frozen=True)
class LabelledSet:
    """Preprocessed samples with labels in the model's class order.

    Attributes:
        tensors: float32 (N, C, H, W), preprocessed by the model's contract.
        labels: int64 (N,) indices into ``class_names``.
        ids: Sample ids (the dataset's record ids).
        class_names: The model's class names, in logit order.
        source: Human-readable origin ("val split of synthetic (140 samples)").
        dataset: The dataset config used (JSON-able).
        split: The split the samples came from.
    """

    tensors: np.ndarray
    labels: np.ndarray
    ids: tuple[str, ...]
    class_names: tuple[str, ...]
    source: str
    dataset: dict[str, Any] = field(default_factory=dict)
    split: str = ""

    def __len__(self) -> int:
        return int(self.tensors.shape[0])

    @property
    def labelled(self) -> bool:
        """True when every sample has a label (an image folder without class folders has none)."""
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def class_counts(self) -> dict[str, int]:
        known = self.labels[self.labels >= 0]
        counts = np.bincount(known, minlength=len(self.class_names))
        out = {c: int(n) for c, n in zip(self.class_names, counts)}
        if len(known) < len(self.labels):
            out["(unlabelled)"] = int(len(self.labels) - len(known))
        return out


@dataclass(frozen=True)
class CalibrationSet(LabelledSet):
    """A `LabelledSet` plus the manifest that describes it (see `build_manifest`)."""

    manifest: dict[str, Any] = field(default_factory=dict)


def tensor_sha256(array: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-ordered bytes (so equal values give equal hashes)."""
    arr = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


# --- which dataset -------------------------------------------------------------------------------


def dataset_config(contract: DeploymentContract, data: str | os.PathLike | None = None) -> dict[str, Any]:
    """The `runtime.data.load_dataset` keyword arguments for ``data`` (or the contract's dataset).

    Raises:
        ConfigError: when ``data`` is neither a YAML file nor a folder, or the YAML holds no dataset.
        DataError: when the contract names no dataset and ``data`` is not given.
    """
    if data is None:
        if not contract.dataset:
            raise DataError(
                f"{contract.source or 'the model'} names no dataset in its contract; pass --data with a dataset "
                "YAML or an ImageFolder directory"
            )
        return dict(contract.dataset)
    path = Path(data)
    if path.is_dir():
        return {"kind": "folder", "root": str(path)}
    if path.suffix.lower() in (".yaml", ".yml"):
        from runtime.configs import load_yaml

        raw = load_yaml(path)
        section: Any = raw
        if "fit" in raw and isinstance(raw["fit"], Mapping):
            section = raw["fit"]
        if "data" in section and isinstance(section["data"], Mapping):
            section = section["data"]
        if not isinstance(section, Mapping) or "kind" not in section:
            raise ConfigError(
                f"{path}: no dataset found; expected a mapping with 'kind' (and root, val_fraction, seed, options), "
                "a 'data:' section, or a training config with fit.data"
            )
        known = {"kind", "root", "val_fraction", "seed", "options"}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown dataset key(s) {unknown}; valid keys: {sorted(known)}")
        cfg = {k: section[k] for k in ("kind", "root", "val_fraction", "seed") if k in section}
        if cfg.get("root") is not None and not Path(cfg["root"]).is_absolute():
            cfg["root"] = (
                str((path.parent / cfg["root"]).resolve()) if (path.parent / cfg["root"]).exists() else cfg["root"]
            )
        cfg.update(section.get("options") or {})
        return cfg
    if not path.exists():
        raise ConfigError(f"--data {path}: no such file or folder; give a dataset YAML or an ImageFolder directory")
    raise ConfigError(f"--data {path}: expected a .yaml/.yml dataset config or an ImageFolder directory")


def _image_folder_records(contract: DeploymentContract, root: Path):
    """Every readable image under ``root`` as records (label -1 when no class folder names it), for any split.

    Decoded once here (unreadable files are skipped with a warning; none readable raises `DataError`).
    """
    from runtime.data.base import Record
    from runtime.images import load_images, scan_image_folder

    folder, images = load_images(scan_image_folder(root, contract.class_names))
    records = [Record(i, int(y), "train", pixels=img) for i, y, img in zip(folder.ids, folder.labels, images)]
    return [(r, r.label) for r in records], {"kind": "images", "root": str(root)}, folder.describe()


def _load_records(contract: DeploymentContract, data, split: str):
    """(records of ``split`` with labels remapped to the model's class order, dataset config, index name).

    A ``data`` folder that is not a class-folder tree is read as a folder of images
    (`runtime.images`): all of its images serve every split, labelled where a folder names a class.
    """
    from runtime.data import load_dataset

    if data is not None and Path(data).is_dir():
        from runtime.images import is_class_folder_tree

        if not is_class_folder_tree(data):
            return _image_folder_records(contract, Path(data))
    cfg = dataset_config(contract, data)
    try:
        index = load_dataset(**cfg)
    except TypeError as exc:  # a dataset config with keys the loader does not take
        raise ConfigError(f"dataset config {cfg} is invalid: {exc}") from exc
    records = index.split(split)
    # Map dataset labels onto the model's logit order by class name.
    model_pos = {c: i for i, c in enumerate(contract.class_names)}
    remap: dict[int, int] = {}
    for i, name in enumerate(index.class_names):
        if name in model_pos:
            remap[i] = model_pos[name]
    unknown = sorted({index.class_names[r.label] for r in records if r.label not in remap})
    if unknown:
        raise DataError(
            f"dataset {index.name!r} has class(es) {unknown} the model does not predict "
            f"(model classes: {list(contract.class_names)}); pick a dataset with the model's classes"
        )
    return [(r, remap[r.label]) for r in records], cfg, index.name


def _preprocess(contract: DeploymentContract, records: Sequence[Any]) -> np.ndarray:
    from runtime.data import load_image
    from runtime.preprocess import preprocess

    return preprocess([load_image(r) for r in records], contract.preprocess)


# --- calibration ---------------------------------------------------------------------------------


def select_balanced(labels: Sequence[int], size: int, seed: int) -> list[int]:
    """Indices of a class-balanced, seeded subset of ``size`` samples.

    Each class is shuffled with the seed, then classes are drawn round-robin (in label order), so
    every class gets ``size // k`` samples (±1) unless it has fewer, in which case the others fill
    in. Pure: the same labels, size and seed give the same indices.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    queues = {c: [idx[j] for j in rng.permutation(len(idx))] for c, idx in sorted(by_class.items())}
    picked: list[int] = []
    pos = 0
    while len(picked) < size and any(pos < len(q) for q in queues.values()):
        for c in sorted(queues):
            if pos < len(queues[c]) and len(picked) < size:
                picked.append(queues[c][pos])
        pos += 1
    return picked


def build_calibration_set(
    contract: DeploymentContract,
    *,
    size: int = DEFAULT_CALIB_SIZE,
    seed: int = 0,
    data: str | os.PathLike | None = None,
    min_size: int = DEFAULT_MIN_SIZE,
    split: str = "train",
) -> CalibrationSet:
    """A class-balanced, seeded calibration subset of the training split, preprocessed.

    Args:
        contract: The model's deployment contract (preprocessing, class names, dataset).
        size: Number of samples wanted.
        seed: Selection seed.
        data: Another dataset (YAML or ImageFolder) instead of the contract's.
        min_size: Smallest set accepted; fewer samples make calibration ranges meaningless.
        split: Split to draw from (``train``: never calibrate on the images you score on).

    Raises:
        ConfigError: when ``size`` is below ``min_size``.
        DataError: when the split is empty, holds a single class, or has fewer than ``min_size``
            samples.
    """
    if size < min_size:
        raise ConfigError(
            f"calibration size {size} is below the minimum of {min_size}; use --calib-size {max(min_size, 300)} "
            "(300 class-balanced images is the recommended size)"
        )
    pairs, cfg, name = _load_records(contract, data, split)
    if not pairs:
        raise DataError(
            f"the {split} split of dataset {name!r} ({cfg}) is empty: nothing to calibrate on; "
            "point --data at a dataset with training images"
        )
    labels = [y for _, y in pairs]
    present = sorted(set(labels))
    unlabelled = cfg.get("kind") == "images"
    if unlabelled:
        present = list(range(len(contract.class_names)))  # calibration needs no labels: no class checks
    if len(present) < 2:
        only = contract.class_names[present[0]]
        raise DataError(
            f"the {split} split of dataset {name!r} holds a single class ({only!r}, {len(pairs)} samples): "
            "calibration ranges from one class do not represent the others; use a dataset with every class"
        )
    if len(pairs) < min_size and unlabelled:
        raise DataError(
            f"{name} has only {len(pairs)} readable images; calibration needs at least {min_size} (recommended 300): "
            "add images (--min-calib-size lowers the floor, for smoke tests only)"
        )
    if len(pairs) < min_size:
        raise DataError(
            f"the {split} split of dataset {name!r} has only {len(pairs)} samples; calibration needs at least "
            f"{min_size} (recommended 300, from every class): add training images or point --data at a larger "
            "dataset (--min-calib-size lowers the floor, for smoke tests only)"
        )
    missing = [contract.class_names[i] for i in range(len(contract.class_names)) if i not in present]
    if missing:
        log.warning("calibration set has no %s samples (absent from the %s split)", ", ".join(missing), split)
    if len(pairs) < size:
        log.warning("only %d %s samples for a calibration size of %d; using all of them", len(pairs), split, size)
    picked = select_balanced(labels, size, seed)
    records = [pairs[i][0] for i in picked]
    y = np.asarray([pairs[i][1] for i in picked], dtype=np.int64)
    x = _preprocess(contract, records)
    ids = tuple(r.id for r in records)
    source = f"{split} split of {name} ({len(records)} of {len(pairs)} samples, class-balanced, seed {seed})"
    if unlabelled:
        source = f"{name}: {len(records)} of {len(pairs)} images, seeded subset (seed {seed}), used as given"
    base = LabelledSet(x, y, ids, contract.class_names, source, cfg, split)
    manifest = build_manifest(base, seed=seed, requested_size=size, contract=contract)
    return CalibrationSet(x, y, ids, contract.class_names, source, cfg, split, manifest)


def build_manifest(
    samples: LabelledSet, *, seed: int, requested_size: int, contract: DeploymentContract
) -> dict[str, Any]:
    """What pins a calibration set down: ids, class counts and tensor hashes."""
    return {
        "format": MANIFEST_FORMAT,
        "source": samples.source,
        "dataset": samples.dataset,
        "split": samples.split,
        "seed": seed,
        "requested_size": requested_size,
        "size": len(samples),
        "class_counts": samples.class_counts(),
        "preprocess": contract.preprocess.to_dict(),
        "tensor_shape": list(samples.tensors.shape),
        "tensor_dtype": str(samples.tensors.dtype),
        "tensor_sha256": tensor_sha256(samples.tensors),
        "sample_ids": list(samples.ids),
        "labels": samples.labels.tolist(),
        "sample_sha256": [hashlib.sha256(np.ascontiguousarray(t).tobytes()).hexdigest() for t in samples.tensors],
    }


def manifest_path(output: str | os.PathLike) -> Path:
    """``RUN/model.int8.onnx`` -> ``RUN/model.int8.calibration.json``."""
    p = Path(output)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".calibration.json")


def write_manifest(output: str | os.PathLike, calib: CalibrationSet) -> tuple[Path, str]:
    """Write the manifest beside ``output`` atomically; returns (path, sha256 of the file)."""
    from runtime.artifacts import atomic_write_json, sha256_file

    path = atomic_write_json(manifest_path(output), calib.manifest)
    return path, sha256_file(path)


# --- validation ----------------------------------------------------------------------------------


def build_validation_set(
    contract: DeploymentContract, *, data: str | os.PathLike | None = None, limit: int = 0
) -> LabelledSet:
    """The validation split (or test split when there is none), preprocessed, in record order.

    Raises:
        DataError: when neither split has samples.
    """
    for split in ("val", "test"):
        pairs, cfg, name = _load_records(contract, data, split)
        if pairs:
            break
    else:
        raise DataError(f"dataset {name!r} ({cfg}) has no val or test samples to score the quantized model on")
    if limit and len(pairs) > limit:
        idx = select_balanced([y for _, y in pairs], limit, 0)
        pairs = [pairs[i] for i in sorted(idx)]
    records = [r for r, _ in pairs]
    x = _preprocess(contract, records)
    y = np.asarray([lab for _, lab in pairs], dtype=np.int64)
    source = f"{split} split of {name} ({len(records)} samples)"
    if cfg.get("kind") == "images":
        source = f"{name}: all {len(records)} images (an image folder has no separate validation split)"
    return LabelledSet(x, y, tuple(r.id for r in records), contract.class_names, source, cfg, split)


def with_reference_labels(samples: LabelledSet, reference_logits: np.ndarray) -> LabelledSet:
    """``samples`` unchanged when fully labelled; else labelled with the reference's top-1 everywhere.

    Without labels, the quantized model is judged against the FP32 model's predictions: its
    "accuracy" is then its top-1 agreement with FP32 (and the FP32 "accuracy" is 1), which the
    source string says.
    """
    if samples.labelled:
        return samples
    y = np.asarray(reference_logits).argmax(axis=1).astype(np.int64)
    source = samples.source + "; unlabelled: accuracy is measured against the FP32 model's top-1"
    return LabelledSet(samples.tensors, y, samples.ids, samples.class_names, source, samples.dataset, samples.split)


def build_holdout_set(
    contract: DeploymentContract,
    *,
    exclude_ids: Sequence[str],
    data: str | os.PathLike | None = None,
    size: int = 300,
    seed: int = 1,
    min_size: int = 32,
) -> LabelledSet | None:
    """Training samples *not* used for calibration, to choose quantization settings on.

    Choosing what to keep in float on the validation split would tune on the numbers the report
    then scores; fidelity to FP32 can be measured on any images the calibration did not see.

    Returns:
        The set, or None when fewer than ``min_size`` such samples exist (the caller falls back to
        the validation split and says so).
    """
    pairs, cfg, name = _load_records(contract, data, "train")
    skip = set(exclude_ids)
    pairs = [p for p in pairs if p[0].id not in skip]
    if len(pairs) < min_size:
        return None
    picked = select_balanced([y for _, y in pairs], size, seed)
    picked.sort()
    records = [pairs[i][0] for i in picked]
    x = _preprocess(contract, records)
    y = np.asarray([pairs[i][1] for i in picked], dtype=np.int64)
    source = f"train split of {name} minus the calibration set ({len(records)} samples)"
    return LabelledSet(x, y, tuple(r.id for r in records), contract.class_names, source, cfg, "train")
