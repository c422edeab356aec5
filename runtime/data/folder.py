"""ImageFolder datasets (``root/<class>/*.jpg``, optionally under ``train``/``val``/``test``).

Also holds the helpers the other real-dataset loaders share: option checking, csv reading with
line numbers, locating an annotation file and indexing per-class folders.
"""

from __future__ import annotations

import csv
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.data.base import (
    CANONICAL_CLASSES,
    IMAGE_SUFFIXES,
    DatasetIndex,
    Record,
    canonical_classes,
    iter_image_files,
)
from runtime.data.registry import register_dataset
from runtime.errors import DataError

log = logging.getLogger(__name__)

# Folder name (lower-case) -> canonical class. Covers the spellings used by public FER folders.
FOLDER_ALIASES: dict[str, str] = {
    "angry": "angry",
    "anger": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "afraid": "fear",
    "fearful": "fear",
    "happy": "happy",
    "happiness": "happy",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
    "neutral": "neutral",
    "contempt": "contempt",
}

# Split folder name (lower-case) -> split.
SPLIT_ALIASES: dict[str, str] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


# --- helpers shared by the real-dataset loaders ---------------------------------------------------


def reject_unknown_options(loader: Callable[..., Any], kind: str, unknown: Mapping[str, Any]) -> None:
    """Raise `DataError` for options ``loader`` does not take, listing the ones it does."""
    if unknown:
        params = inspect.signature(loader).parameters.values()
        valid = [p.name for p in params if p.kind is p.KEYWORD_ONLY]
        raise DataError(
            f"unknown option(s) {sorted(unknown)} for dataset kind {kind!r}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )


LINE_FIX = "correct that line or delete it"
HEADER_FIX = "the file must start with that header row; is this the right file?"


def line_error(path: Path, line: int, message: str, fix: str = LINE_FIX) -> DataError:
    """A `DataError` that points at ``path:line`` so the offending entry can be found, plus how to fix it."""
    return DataError(f"{path}:{line}: {message}; {fix}")


def find_file(root: Path, name: str) -> Path:
    """``root`` itself when it is a file, else ``root/name``; raise when that does not exist."""
    path = root if root.is_file() else root / name
    if not path.is_file():
        raise DataError(f"{path} not found; point the dataset root at the folder that holds {name}")
    return path


def read_csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for each non-blank row of a csv file.

    Raises:
        DataError: naming the file and line when it cannot be decoded or parsed (or the file when it
            cannot be opened).
    """
    try:
        # utf-8-sig: annotation files saved by Excel start with a BOM that would corrupt the header.
        # surrogateescape: an undecodable byte is reported with its line below instead of a
        # UnicodeDecodeError from a decoder that runs ahead of the csv reader in blocks.
        with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(checked_utf8_lines(f, path))
            try:
                for row in reader:
                    if any(field.strip() for field in row):
                        yield reader.line_num, row
            except csv.Error as exc:
                raise line_error(path, reader.line_num, f"not valid csv ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from exc


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that surrogateescape could not decode


def checked_utf8_lines(lines: Iterable[str], path: Path) -> Iterator[str]:
    """Pass lines decoded with ``errors="surrogateescape"`` through; raise at the first bad byte."""
    for number, line in enumerate(lines, start=1):
        if not line.isascii():
            bad = _UNDECODED.search(line)
            if bad:
                byte = ord(bad.group()) - 0xDC00
                raise line_error(
                    path,
                    number,
                    f"not UTF-8 text (byte 0x{byte:02x} at column {bad.start() + 1})",
                    fix="save the file as UTF-8; is this the right file?",
                )
        yield line


def parse_int(text: str, path: Path, line: int, what: str) -> int:
    """``int(text)``, or a `DataError` naming the file, line and field."""
    try:
        return int(text)
    except ValueError:
        raise line_error(path, line, f"{what} must be an integer, got {text!r}") from None


def classes_for(labels: Sequence[int]) -> tuple[str, ...]:
    """Seven canonical classes, or eight when any label is contempt."""
    return canonical_classes(8 if CANONICAL_CLASSES.index("contempt") in labels else 7)


def index_class_folders(
    name: str, root: Path, splits: Mapping[Path, str], resolve: Callable[[Path], str]
) -> DatasetIndex:
    """Index ``<split folder>/<class folder>/**/<image>`` trees.

    Args:
        name: Dataset name for the index and messages.
        root: Dataset root; record ids are paths relative to it.
        splits: Split folder -> split name (``root`` itself for a dataset without splits).
        resolve: Class folder -> canonical class name; raises `DataError` for unknown folders.

    Raises:
        DataError: when a split folder has no class folders or a class folder has no images.
    """
    records: list[Record] = []
    for split_dir, split in splits.items():
        # Hidden folders (.ipynb_checkpoints, .git) are tool litter, not classes.
        class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not class_dirs:
            raise DataError(f"{split_dir}: no class folders found; expected {split_dir}/<class name>/<images>")
        for class_dir in class_dirs:
            label = CANONICAL_CLASSES.index(resolve(class_dir))
            images = iter_image_files(class_dir)
            if not images:
                raise DataError(
                    f"{class_dir}: class folder contains no images (suffixes {', '.join(IMAGE_SUFFIXES)}); "
                    "add its images or delete the empty folder"
                )
            records += [Record(p.relative_to(root).as_posix(), label, split, path=p) for p in images]
    class_names = classes_for([r.label for r in records])
    return DatasetIndex(name, class_names, records, info={"root": str(root)})


def find_split_dirs(root: Path, expected: Mapping[str, str]) -> dict[Path, str]:
    """Locate the split folders ``expected`` names (lower-case folder name -> split) under ``root``.

    Folder names match case-insensitively. A missing split is logged, since partial downloads are
    common; no split at all raises `DataError`.
    """
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected split folders {', '.join(expected)}")
    found = {p: expected[p.name.lower()] for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() in expected}
    if not found:
        raise DataError(f"{root}: none of the split folders {', '.join(expected)} found")
    missing = sorted(set(expected.values()) - set(found.values()))
    if missing:
        log.warning("%s: no folder for split(s) %s; loading the others", root, ", ".join(missing))
    return found


def folder_resolver(table: Mapping[str, str], hint: str = "") -> Callable[[Path], str]:
    """A ``resolve`` for `index_class_folders` looking folder names up case-insensitively in ``table``."""

    def resolve(folder: Path) -> str:
        try:
            return table[folder.name.lower()]
        except KeyError:
            raise DataError(
                f"{folder}: unknown class folder {folder.name!r}; valid names (case-insensitive): "
                f"{', '.join(sorted(table))}{hint}. Rename the folder to one of them, or move it out of the dataset"
            ) from None

    return resolve


# --- the ImageFolder loader ------------------------------------------------------------------------


def _numeric_table(class_order: Sequence[str]) -> dict[str, str]:
    """Folder names ``0..n-1`` -> canonical class, from a list of class names (aliases allowed)."""
    table: dict[str, str] = {}
    for i, name in enumerate(class_order):
        canonical = FOLDER_ALIASES.get(str(name).lower())
        if canonical is None:
            raise DataError(f"class_order entry {name!r} is not a class name; valid: {', '.join(CANONICAL_CLASSES)}")
        if canonical in table.values():
            raise DataError(f"class_order names {canonical!r} twice: {list(class_order)}")
        table[str(i)] = canonical
    return table


@register_dataset("folder")
def load_folder(root: Path, *, class_order: Sequence[str] | None = None, **unknown: Any) -> DatasetIndex:
    """Load an ImageFolder tree: ``root/<class>/*`` or ``root/{train,val,test}/<class>/*``.

    Class folders are matched case-insensitively against canonical names and `FOLDER_ALIASES`.

    Args:
        root: Dataset folder.
        class_order: Canonical class of numeric folders ``0, 1, ...`` in order, e.g. MA-Net's
            ``["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]``.

    Raises:
        DataError: for an unknown class folder, an empty folder or mixed split/class folders.
    """
    reject_unknown_options(load_folder, "folder", unknown)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; the folder dataset root holds one folder per class")
    table = dict(FOLDER_ALIASES)
    hint = "; numeric folders 0, 1, ... need the class_order option"
    if class_order is not None:
        table.update(_numeric_table(class_order))
        hint = ""
    subdirs = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    split_dirs = {p: SPLIT_ALIASES[p.name.lower()] for p in subdirs if p.name.lower() in SPLIT_ALIASES}
    if split_dirs and len(split_dirs) != len(subdirs):
        others = [p.name for p in subdirs if p not in split_dirs]
        raise DataError(f"{root}: mixes split folders {[p.name for p in split_dirs]} with other folders {others}")
    if len(set(split_dirs.values())) != len(split_dirs):
        raise DataError(f"{root}: two folders name the same split: {[p.name for p in split_dirs]}")
    index = index_class_folders("folder", root, split_dirs or {root: "train"}, folder_resolver(table, hint))
    index.info["class_folders"] = "numeric via class_order" if class_order is not None else "by name"
    return index
