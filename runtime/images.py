"""A folder of the user's own images, labelled or not: found recursively, decoded without torch.

``--data DIR`` of ``quantize int8``/``fp16`` and ``runtime parity`` accepts any folder of images.
A folder laid out as an ImageFolder (``DIR/<class>/*``, optionally under ``train``/``val``/``test``)
keeps its labels through the dataset loaders (`train.data.load_dataset`); any other folder is read
here: every image below it (``.png .jpg .jpeg .bmp .tif .tiff .webp``, hidden folders skipped) in
sorted order, and an image whose path passes through a folder named after one of the model's
classes (or a known alias, case-insensitive) carries that class as its label; the others are
unlabelled (label ``-1``). Calibration needs no labels, and parity on unlabelled images measures
agreement with the reference instead of accuracy.

Imports: numpy/OpenCV and the torch-free `train.data` helpers (no torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import DataError

log = logging.getLogger(__name__)

UNLABELLED = -1
_SAID: set[str] = set()


@dataclass(frozen=True)
class ImageFolder:
    """The images found under a folder.

    Attributes:
        root: The folder.
        paths: Image files, sorted.
        ids: Paths relative to ``root`` (POSIX form): the sample ids.
        labels: int64 (N,) index into ``class_names``, or ``UNLABELLED`` (-1).
        class_names: The model's class names the labels index.
    """

    root: Path
    paths: tuple[Path, ...]
    ids: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled_count(self) -> int:
        return int((self.labels >= 0).sum())

    def describe(self) -> str:
        n, k = len(self), self.labelled_count
        what = "unlabelled" if k == 0 else ("all labelled by class folder" if k == n else f"{k} labelled by class folder")
        return f"image folder {self.root} ({n} images, {what})"

    def subset(self, indices: Sequence[int]) -> ImageFolder:
        idx = list(indices)
        return ImageFolder(self.root, tuple(self.paths[i] for i in idx), tuple(self.ids[i] for i in idx),
                           self.labels[idx] if idx else self.labels[:0], self.class_names)


def _class_table(class_names: Sequence[str]) -> dict[str, int]:
    """Lower-case folder name -> index into ``class_names`` (exact names first, then known aliases)."""
    table = {str(c).lower(): i for i, c in enumerate(class_names)}
    try:
        from train.data.folder import FOLDER_ALIASES  # torch-free; absent on a bare device install
    except ImportError:
        return table
    for alias, canonical in FOLDER_ALIASES.items():
        if canonical in table and alias not in table:
            table[alias] = table[canonical]
    return table


def scan_image_folder(root: str | os.PathLike, class_names: Sequence[str] = ()) -> ImageFolder:
    """Find the images under ``root`` (recursively) and the labels their folders give.

    Raises:
        DataError: when ``root`` is not a folder or holds no image file.
    """
    from train.data.base import IMAGE_SUFFIXES

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"--data {base}: not a folder; give a folder of images (any layout, searched recursively)")
    paths = sorted(
        p for p in base.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )  # fmt: skip
    if not paths:
        raise DataError(
            f"--data {base}: no image files found below it (searched recursively for {', '.join(IMAGE_SUFFIXES)}); "
            "point --data at the folder that holds your images"
        )
    table = _class_table(class_names)
    labels = np.full(len(paths), UNLABELLED, dtype=np.int64)
    for i, p in enumerate(paths):
        for part in reversed(p.relative_to(base).parts[:-1]):
            if part.lower() in table:
                labels[i] = table[part.lower()]
                break
    ids = tuple(p.relative_to(base).as_posix() for p in paths)
    return ImageFolder(base, tuple(paths), ids, labels, tuple(class_names))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Decode one image file to uint8 gray (H×W) or RGB (H×W×3) (`train.data.base.read_image_file`).

    Raises:
        DataError: naming the file when it is empty, missing or cannot be decoded.
    """
    from train.data.base import read_image_file  # numpy/OpenCV only

    return read_image_file(path)


def load_images(folder: ImageFolder) -> tuple[ImageFolder, list[np.ndarray]]:
    """Decode every image of ``folder``; unreadable files are skipped with a warning.

    Returns:
        (the folder restricted to the readable images, their decoded pixels).

    Raises:
        DataError: when no image can be decoded (the first problems are named).
    """
    images: list[np.ndarray] = []
    keep: list[int] = []
    problems: list[str] = []
    for i, p in enumerate(folder.paths):
        try:
            images.append(read_image(p))
            keep.append(i)
        except DataError as exc:
            problems.append(str(exc))
    if not images:
        shown = "; ".join(problems[:3]) + (f"; ... {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DataError(
            f"--data {folder.root}: none of its {len(folder)} image file(s) can be decoded ({shown}); "
            "replace them with intact images"
        )
    if problems:
        log.warning("%s: skipped %d unreadable image(s): %s", folder.root, len(problems), "; ".join(problems[:3]))
    return (folder.subset(keep) if problems else folder), images


def is_class_folder_tree(root: str | os.PathLike) -> bool:
    """True when ``root`` loads as a labelled ImageFolder (``root/<class>/*``, optionally split folders)."""
    try:
        from train.data.folder import load_folder
    except ImportError:
        return False
    try:
        load_folder(Path(root))
    except DataError as exc:
        if str(root) not in _SAID:  # once per folder and process (quantize and parity each ask)
            _SAID.add(str(root))
            log.info("%s is read as a folder of images, labelled only where a folder is named after one of the "
                     "model's classes (%s)", root, str(exc).split(";")[0])
        return False
    return True
