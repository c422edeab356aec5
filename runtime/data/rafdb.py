"""RAF-DB basic emotions (Li et al., CVPR 2017): a label list plus aligned 100×100 face crops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes
from runtime.data.folder import checked_utf8_lines, line_error, parse_int, reject_unknown_options
from runtime.data.registry import register_dataset
from runtime.errors import DataError

# RAF-DB label (1-based, as in list_patition_label.txt) -> canonical class.
RAF_LABELS: dict[int, str] = {
    1: "surprise",
    2: "fear",
    3: "disgust",
    4: "happy",
    5: "sad",
    6: "angry",
    7: "neutral",
}
LABEL_INDEX = {code: CANONICAL_CLASSES.index(name) for code, name in RAF_LABELS.items()}

# File-name prefix -> split. RAF-DB has no validation split.
RAF_SPLITS: dict[str, str] = {"train_": "train", "test_": "test"}
LABEL_FILE = Path("EmoLabel/list_patition_label.txt")  # sic: the dataset's own spelling
IMAGE_DIRS = {"aligned": Path("Image/aligned"), "original": Path("Image/original")}


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _image_path(root: Path, name: str, images: str) -> Path:
    # Aligned crops are stored as train_00001_aligned.jpg; originals keep the listed name.
    if images == "aligned":
        name = f"{Path(name).stem}_aligned{Path(name).suffix}"
    return root / IMAGE_DIRS[images] / name


@register_dataset("rafdb")
def load_rafdb(root: Path, *, images: str = "aligned", **unknown: Any) -> DatasetIndex:
    """Load RAF-DB basic (7 classes; 12,271 train / 3,068 test in the full set).

    Args:
        root: The ``basic`` folder holding ``EmoLabel/`` and ``Image/``.
        images: ``"aligned"`` (``Image/aligned/*_aligned.jpg``) or ``"original"`` (``Image/original/``).

    Raises:
        DataError: for a malformed label line (naming file and line) or a listed image missing on disk.
    """
    reject_unknown_options(load_rafdb, "rafdb", unknown)
    if images not in IMAGE_DIRS:
        raise DataError(f"rafdb option images must be one of {', '.join(IMAGE_DIRS)}, got {images!r}")
    path = root / LABEL_FILE
    try:
        # Split on \n, \r\n and \r only (str.splitlines also splits on \x0b, \x85, \u2028..., which
        # would shift the line numbers in messages); an undecodable byte is reported with its line.
        with path.open(encoding="utf-8-sig", errors="surrogateescape") as f:
            lines = list(checked_utf8_lines(f, path))
    except OSError as exc:
        raise DataError(f"{path}: cannot read the RAF-DB label list ({exc})") from exc
    records = []
    for line_no, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise line_error(path, line_no, f"expected '<image name> <label 1..7>', got {line!r}")
        name, code = fields[0], parse_int(fields[1], path, line_no, "label")
        if code not in RAF_LABELS:
            raise line_error(path, line_no, f"label must be 1..7, got {code}")
        split = next((s for prefix, s in RAF_SPLITS.items() if name.startswith(prefix)), None)
        if split is None:
            raise line_error(path, line_no, f"image name {name!r} must start with train_ or test_")
        image = _image_path(root, name, images)
        if Path(name).name != name:
            raise line_error(path, line_no, f"expected an image file name such as train_00001.jpg, got {name!r}")
        if not _is_file(image):
            raise DataError(f"{image}: image listed in {path} line {line_no} not found")
        records.append(Record(image.relative_to(root).as_posix(), LABEL_INDEX[code], split, path=image))
    return DatasetIndex("rafdb", canonical_classes(7), records, info={"images": images})
