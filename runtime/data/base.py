"""Dataset records, the canonical class order, image loading and stratified splits.

Every loader turns its dataset's own format into a `DatasetIndex`: a list of `Record`s whose
``label`` indexes the *canonical* class order below (each loader keeps an explicit mapping from
its native labels). Images are decoded lazily by `load_image`, except for datasets that store
pixels inline (FER-2013 csv, the synthetic set), whose records carry the pixels.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import DataError

# One canonical order for every dataset (FER-2013's, plus contempt for 8-class sets).
CANONICAL_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def canonical_classes(num_classes: int) -> tuple[str, ...]:
    """The first 7 (basic expressions) or all 8 (with contempt) canonical class names."""
    if num_classes not in (7, 8):
        raise DataError(f"canonical class sets have 7 or 8 classes, got {num_classes}")
    return CANONICAL_CLASSES[:num_classes]


@dataclass(frozen=True, eq=False)
class Record:
    """One labelled sample.

    Attributes:
        id: Stable unique id (relative path, or ``file:line`` for inline datasets).
        label: Index into the dataset's ``class_names``.
        split: ``train``, ``val`` or ``test``.
        path: Image file, or None when ``pixels`` is set.
        pixels: Inline uint8 image (H×W gray or H×W×3 RGB), or None.
        bbox: Optional face box (x, y, w, h) in pixels, cropped by `load_image`.
        meta: Free-form attributes used for sub-set reports (``view``, ``subject``, ...).
    """

    id: str
    label: int
    split: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    bbox: tuple[int, int, int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetIndex:
    """A dataset in canonical form: its name, class names in label order, and records."""

    name: str
    class_names: tuple[str, ...]
    records: list[Record]
    info: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of {SPLITS}")
        return [r for r in self.records if r.split == name]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        recs = self.records if split is None else self.split(split)
        counts = Counter(r.label for r in recs)
        return {c: counts.get(i, 0) for i, c in enumerate(self.class_names)}

    def validate(self) -> DatasetIndex:
        """Raise `DataError` when the index is empty or a label is out of range."""
        if not self.records:
            raise DataError(f"dataset {self.name!r} has no samples; check its root folder and annotation files")
        n = len(self.class_names)
        for r in self.records:
            if not 0 <= r.label < n:
                raise DataError(f"dataset {self.name!r}: sample {r.id} has label {r.label}, expected 0..{n - 1}")
            if r.split not in SPLITS:
                raise DataError(f"dataset {self.name!r}: sample {r.id} has split {r.split!r}, expected {SPLITS}")
        return self


def load_image(record: Record) -> np.ndarray:
    """Decode a record's image to uint8 (H×W gray or H×W×3 RGB), cropped to its bbox.

    Raises:
        DataError: naming the file when it is missing or cannot be decoded.
    """
    if record.pixels is not None:
        img = record.pixels
    else:
        img = read_image_file(record.path)
    if record.bbox is not None:
        x, y, w, h = record.bbox
        H, W = img.shape[:2]
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1, y1 = min(W, int(x + w)), min(H, int(y + h))
        if x1 <= x0 or y1 <= y0:
            raise DataError(f"{record.id}: face box {record.bbox} lies outside the {W}×{H} image")
        img = img[y0:y1, x0:x1]
    return img


def read_image_file(path: str | os.PathLike | None) -> np.ndarray:
    """Decode an image file with OpenCV into uint8 gray (H×W) or RGB (H×W×3)."""
    import cv2

    if path is None:
        raise DataError("record has neither a path nor inline pixels")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: image file not found")
    data = np.fromfile(p, dtype=np.uint8)
    if not data.size:
        raise DataError(
            f"{p}: empty file (0 bytes); expected an image ({', '.join(IMAGE_SUFFIXES)}). "
            "Remove the file or replace it with the complete image"
        )
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(
            f"{p}: cannot decode image ({data.size} bytes; truncated, corrupt or not an image at all); expected an "
            f"image ({', '.join(IMAGE_SUFFIXES)}) that OpenCV can read. Remove the file or replace it with an intact copy"
        )
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(img.max())))
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] in (1, 2):  # gray, or gray + alpha
        img = img[:, :, 0]
    return img


def stratified_split(
    records: Sequence[Record], val_fraction: float, seed: int, source: str = "train", target: str = "val"
) -> list[Record]:
    """Move a class-stratified, seeded fraction of ``source`` records into ``target``.

    Each class contributes ``round(n_c * val_fraction)`` samples (at least one when it has two or
    more). Records of other splits are returned unchanged; order is preserved.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, r in enumerate(records):
        if r.split == source:
            by_class.setdefault(r.label, []).append(i)
    moved: set[int] = set()
    for label in sorted(by_class):
        idx = by_class[label]
        k = int(np.floor(len(idx) * val_fraction + 0.5))  # half up, not Python's half-to-even
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        moved.update(int(j) for j in rng.permutation(idx)[:k])
    return [replace(r, split=target) if i in moved else r for i, r in enumerate(records)]


def iter_image_files(folder: Path) -> Iterable[Path]:
    """Image files under ``folder`` (recursively), sorted for determinism."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        # skip hidden folders such as .ipynb_checkpoints
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
