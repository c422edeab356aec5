"""FER+ (Barsoum et al., 2016): ten crowd votes per FER-2013 image, reduced to a majority label.

Two layouts are read:

* csv: ``fer2013new.csv`` (``Usage,Image name,<10 vote columns>``) beside ``fer2013.csv``, which
  supplies the pixels in the same row order; rows with an empty image name are not part of FER+.
* folders: ``FER2013{Train,Valid,Test}/label.csv`` (no header; ``name,"(l, t, r, b)",<10 votes>``)
  next to the png images that Microsoft/FERPlus ``generate_training_data.py`` writes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes
from runtime.data.fer2013 import read_fer2013
from runtime.data.folder import HEADER_FIX, find_file, line_error, parse_int, read_csv_rows, reject_unknown_options
from runtime.data.registry import register_dataset
from runtime.errors import DataError

log = logging.getLogger(__name__)

# Vote column -> canonical class; None marks the two columns that are not an expression.
FERPLUS_VOTES: dict[str, str | None] = {
    "neutral": "neutral",
    "happiness": "happy",
    "surprise": "surprise",
    "sadness": "sad",
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "contempt": "contempt",
    "unknown": None,
    "NF": None,  # not a face
}
VOTE_LABELS: list[int | None] = [None if c is None else CANONICAL_CLASSES.index(c) for c in FERPLUS_VOTES.values()]

# Per-split folder -> split (folders layout); Usage -> split (csv layout).
FERPLUS_FOLDERS: dict[str, str] = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
FERPLUS_USAGE: dict[str, str] = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
CSV_HEADER = ("Usage", "Image name", *FERPLUS_VOTES)


def majority_vote(votes: Sequence[int]) -> int | None:
    """Canonical label of a vote row, or None when FER+ drops the sample.

    Follows Microsoft/FERPlus ``_process_data`` in majority mode: votes of one or less are zeroed
    as outliers, the top column wins only with more than half of the remaining votes, and a win by
    ``unknown`` or ``NF`` (or no winner) drops the sample.
    """
    if len(votes) != len(VOTE_LABELS):
        raise DataError(f"expected {len(VOTE_LABELS)} vote counts ({', '.join(FERPLUS_VOTES)}), got {len(votes)}")
    # Exact Python ints: numpy's int64 sum wraps and 0.5 * sum rounds for very large counts.
    kept = [int(v) if v > 1 else 0 for v in votes]
    top = max(range(len(kept)), key=kept.__getitem__)  # the first maximum, like np.argmax
    return VOTE_LABELS[top] if 2 * kept[top] > sum(kept) else None


def _parse_votes(fields: Sequence[str], path: Path, line: int) -> list[int]:
    votes = [parse_int(v, path, line, "vote count") for v in fields]
    if any(v < 0 for v in votes):
        raise line_error(path, line, f"vote counts must be >= 0, got {votes}")
    return votes


def _parse_rect(text: str, path: Path, line: int) -> tuple[int, int, int, int]:
    """``"(left, top, right, bottom)"`` -> bbox ``(x, y, w, h)``."""
    parts = text.strip().strip("()").split(",")
    if len(parts) != 4:
        raise line_error(path, line, f'face rectangle must look like "(0, 0, 48, 48)", got {text!r}')
    left, top, right, bottom = (parse_int(p, path, line, "face rectangle value") for p in parts)
    if right <= left or bottom <= top:
        raise line_error(path, line, f"face rectangle {text!r} is empty")
    return left, top, right - left, bottom - top


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


# The readers yield records with label -1 and their votes; the loader sets the majority label.


def _read_folders(root: Path) -> Iterator[tuple[Record, list[int]]]:
    for folder, split in FERPLUS_FOLDERS.items():
        path = root / folder / "label.csv"
        if not path.is_file():
            log.warning("%s not found; FER+ split %r left empty", path, split)
            continue
        for line, row in read_csv_rows(path):
            if len(row) != 12:
                raise line_error(path, line, f'expected 12 fields (name,"(l, t, r, b)",10 votes), got {len(row)}')
            name = row[0].strip()
            if Path(name).name != name:  # "", ".", "..", "sub/x.png", "/abs.png" would leave the folder
                raise line_error(path, line, f"expected an image file name in {path.parent}, got {name!r}")
            if not _is_file(path.parent / name):
                raise line_error(path, line, f"image {name!r} not found in {path.parent}")
            bbox = _parse_rect(row[1], path, line)
            yield Record(name, -1, split, path=path.parent / name, bbox=bbox), _parse_votes(row[2:], path, line)


def _read_csv(path: Path, pixels_path: Path) -> Iterator[tuple[Record, list[int]]]:
    rows = read_csv_rows(path)
    first = next(rows, None)
    if first is None or tuple(f.strip() for f in first[1]) != CSV_HEADER:
        raise line_error(path, 1, f"expected header {','.join(CSV_HEADER)}, got {first and first[1]}", HEADER_FIX)
    # fer2013new.csv annotates fer2013.csv row by row, so the two must stay aligned.
    for labels, pixels in itertools.zip_longest(rows, read_fer2013(pixels_path)):
        if labels is None or pixels is None:
            extra, line = (path, labels[0]) if pixels is None else (pixels_path, pixels.line)
            raise line_error(
                extra,
                line,
                f"{path.name} and {pixels_path.name} have different row counts (this row has no "
                "partner in the other file)",
                fix="use the matching files",
            )
        line, row = labels
        if len(row) != 12:
            raise line_error(path, line, f"expected 12 fields (Usage,Image name,10 votes), got {len(row)}")
        if FERPLUS_USAGE.get(row[0].strip()) != pixels.split:
            raise line_error(
                path,
                line,
                f"Usage {row[0]!r} differs from {pixels_path.name} line {pixels.line}; files misaligned",
                f"use the {pixels_path.name} that {path.name} annotates, unedited",
            )
        votes = _parse_votes(row[2:], path, line)
        if row[1].strip():
            yield Record(row[1].strip(), -1, pixels.split, pixels=pixels.pixels), votes


@register_dataset("ferplus")
def load_ferplus(root: Path, *, pixels_csv: str | Path | None = None, **unknown: Any) -> DatasetIndex:
    """Load FER+ with majority-vote labels (8 classes; 25,060 / 3,199 / 3,153 samples in full).

    Args:
        root: Folder with ``FER2013{Train,Valid,Test}/label.csv`` (preferred when present) or with
            ``fer2013new.csv``; or the ``fer2013new.csv`` file itself.
        pixels_csv: ``fer2013.csv`` for the csv layout; default: next to ``fer2013new.csv``.

    Raises:
        DataError: for missing files, a malformed line (naming file and line) or a missing image.
    """
    reject_unknown_options(load_ferplus, "ferplus", unknown)
    if root.is_dir() and any((root / f / "label.csv").is_file() for f in FERPLUS_FOLDERS):
        layout, rows = "folders", _read_folders(root)
    elif root.is_file() or (root / "fer2013new.csv").is_file():
        path = find_file(root, "fer2013new.csv")
        pixels_path = find_file(Path(pixels_csv) if pixels_csv is not None else path.parent, "fer2013.csv")
        layout, rows = "csv", _read_csv(path, pixels_path)
    else:
        raise DataError(
            f"{root}: neither FER2013{{Train,Valid,Test}}/label.csv nor fer2013new.csv found; "
            "point the root at the FERPlus data folder"
        )
    records, dropped = [], 0
    for record, votes in rows:
        label = majority_vote(votes)
        if label is None:
            dropped += 1
            continue
        records.append(replace(record, label=label, meta={"votes": tuple(votes)}))
    log.info("FER+ (%s layout): %d samples, %d dropped without an expression majority", layout, len(records), dropped)
    return DatasetIndex("ferplus", canonical_classes(8), records, info={"layout": layout, "dropped": dropped})
