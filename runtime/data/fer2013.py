"""FER-2013 (Goodfellow et al., 2013): ``fer2013.csv`` with inline 48×48 gray pixels."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes
from runtime.data.folder import HEADER_FIX, find_file, line_error, parse_int, read_csv_rows, reject_unknown_options
from runtime.data.registry import register_dataset

# FER-2013 emotion code -> canonical class (the canonical order is FER-2013's own).
FER2013_LABELS: dict[int, str] = {
    0: "angry",
    1: "disgust",
    2: "fear",
    3: "happy",
    4: "sad",
    5: "surprise",
    6: "neutral",
}

# Usage column -> split.
FER2013_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}

LABEL_INDEX = {code: CANONICAL_CLASSES.index(name) for code, name in FER2013_LABELS.items()}
FER2013_COLUMNS = ("emotion", "pixels", "Usage")
IMAGE_SIDE = 48


@dataclass(frozen=True)
class Fer2013Row:
    """One parsed ``fer2013.csv`` row."""

    line: int
    emotion: int
    pixels: np.ndarray
    split: str


def parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    """Turn FER-2013's 2,304 space-separated values into a 48×48 uint8 image."""
    try:
        values = np.array(text.split(), dtype=np.uint8)
    except (ValueError, OverflowError):
        raise line_error(path, line, "pixels must be integers 0..255 separated by spaces") from None
    if values.size != IMAGE_SIDE * IMAGE_SIDE:
        raise line_error(path, line, f"expected {IMAGE_SIDE * IMAGE_SIDE} pixel values, got {values.size}")
    return values.reshape(IMAGE_SIDE, IMAGE_SIDE)


def read_fer2013(path: Path) -> Iterator[Fer2013Row]:
    """Parse ``fer2013.csv`` row by row, validating every field.

    Raises:
        DataError: naming the file and line of a malformed row or a wrong header.
    """
    rows = read_csv_rows(path)
    first = next(rows, None)
    if first is None or tuple(f.strip() for f in first[1]) != FER2013_COLUMNS:
        found = None if first is None else first[1]
        raise line_error(path, 1, f"expected header {','.join(FER2013_COLUMNS)}, got {found}", HEADER_FIX)
    for line, row in rows:
        if len(row) != 3:
            raise line_error(path, line, f"expected 3 fields (emotion,pixels,Usage), got {len(row)}")
        emotion = parse_int(row[0], path, line, "emotion")
        if emotion not in FER2013_LABELS:
            raise line_error(path, line, f"emotion must be 0..6, got {emotion}")
        usage = row[2].strip()
        if usage not in FER2013_USAGE:
            raise line_error(path, line, f"Usage must be one of {', '.join(FER2013_USAGE)}, got {usage!r}")
        yield Fer2013Row(line, emotion, parse_pixels(row[1], path, line), FER2013_USAGE[usage])


@register_dataset("fer2013")
def load_fer2013(root: Path, **unknown: Any) -> DatasetIndex:
    """Load FER-2013 (7 classes; 28,709 train / 3,589 val / 3,589 test).

    Args:
        root: ``fer2013.csv`` or the folder holding it.

    Raises:
        DataError: for a missing file or a malformed row (naming file and line).
    """
    reject_unknown_options(load_fer2013, "fer2013", unknown)
    path = find_file(root, "fer2013.csv")
    records = [
        Record(f"{path.name}:{row.line}", LABEL_INDEX[row.emotion], row.split, pixels=row.pixels)
        for row in read_fer2013(path)
    ]
    return DatasetIndex("fer2013", canonical_classes(7), records, info={"source": str(path)})
