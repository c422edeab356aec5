"""AffectNet (Mollahosseini et al., 2017), manually annotated part: two csv lists plus face images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes
from runtime.data.folder import find_file, line_error, parse_int, read_csv_rows, reject_unknown_options
from runtime.data.registry import register_dataset
from runtime.errors import DataError

# AffectNet expression code -> canonical class; codes 8 None, 9 Uncertain, 10 No-Face are dropped.
AFFECTNET_LABELS: dict[int, str | None] = {
    0: "neutral",
    1: "happy",
    2: "sad",
    3: "surprise",
    4: "fear",
    5: "disgust",
    6: "angry",
    7: "contempt",
    8: None,
    9: None,
    10: None,
}

# List file -> split. The official validation list is the test set (as in MA-Net).
AFFECTNET_LISTS: dict[str, str] = {"training.csv": "train", "validation.csv": "test"}
LIST_DIR = "Manually_Annotated_file_lists"
COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)


def _parse_float(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise line_error(path, line, f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise line_error(path, line, f"{what} must be a finite number, got {text!r}")
    return value


def _read_list(path: Path, split: str, images: Path, class_names: tuple[str, ...]) -> list[Record]:
    """Records of one list file, which may or may not start with a header row."""
    records = []
    for i, (line, row) in enumerate(read_csv_rows(path)):
        if i == 0 and row[0].strip() == COLUMNS[0]:
            continue  # training.csv has a header, validation.csv (in most copies) does not
        if len(row) != len(COLUMNS):
            raise line_error(path, line, f"expected {len(COLUMNS)} fields ({','.join(COLUMNS)}), got {len(row)}")
        sub_path = row[0].strip()
        x, y, w, h = (parse_int(v, path, line, name) for v, name in zip(row[1:5], COLUMNS[1:5]))
        if not sub_path or w <= 0 or h <= 0:
            raise line_error(path, line, f"need an image path and a positive face size, got {row[:5]}")
        code = parse_int(row[6], path, line, "expression")
        if code not in AFFECTNET_LABELS:
            raise line_error(path, line, f"expression must be 0..10, got {code}")
        meta = {what: _parse_float(v, path, line, what) for v, what in zip(row[7:], COLUMNS[7:])}
        name = AFFECTNET_LABELS[code]
        if name in class_names:
            label = CANONICAL_CLASSES.index(name)
            records.append(Record(sub_path, label, split, path=images / sub_path, bbox=(x, y, w, h), meta=meta))
    return records


@register_dataset("affectnet")
def load_affectnet(
    root: Path, *, num_classes: int = 7, images_dir: str = "Manually_Annotated_Images", **unknown: Any
) -> DatasetIndex:
    """Load AffectNet-7 or -8 (MA-Net test sizes: 3,499 / 3,999 images).

    Images are not checked at load time (290 k files); `load_image` names any that are missing.

    Args:
        root: Folder holding ``Manually_Annotated_file_lists/`` and the image folder.
        num_classes: 7 (drops contempt) or 8.
        images_dir: Image folder relative to ``root``.

    Raises:
        DataError: for missing lists or image folder, or a malformed row (naming file and line).
    """
    reject_unknown_options(load_affectnet, "affectnet", unknown)
    class_names = canonical_classes(num_classes)
    images = root / images_dir
    if not images.is_dir():
        raise DataError(f"{images}: AffectNet image folder not found; set the images_dir option")
    records = []
    for name, split in AFFECTNET_LISTS.items():
        records += _read_list(find_file(root / LIST_DIR, name), split, images, class_names)
    return DatasetIndex("affectnet", class_names, records, info={"num_classes": num_classes})
