"""SFEW 2.0 (Dhall et al.): per-class folders of movie stills under ``root/Train`` and ``root/Val``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.data.base import DatasetIndex
from runtime.data.folder import find_split_dirs, folder_resolver, index_class_folders, reject_unknown_options
from runtime.data.registry import register_dataset

# SFEW class folder (lower-case) -> canonical class.
SFEW_CLASSES: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprise",
}

# Split folder (lower-case) -> split. SFEW's Test folder is unlabelled, so it is not read.
SFEW_SPLITS: dict[str, str] = {"train": "train", "val": "val"}


@register_dataset("sfew")
def load_sfew(root: Path, **unknown: Any) -> DatasetIndex:
    """Load SFEW 2.0 (7 classes; Val has 436 images, the split MA-Net reports on).

    Raises:
        DataError: for missing split folders, an unknown class folder or an empty one.
    """
    reject_unknown_options(load_sfew, "sfew", unknown)
    splits = find_split_dirs(root, SFEW_SPLITS)
    return index_class_folders("sfew", root, splits, folder_resolver(SFEW_CLASSES))
