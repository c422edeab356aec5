"""CAER-S (Lee et al., ICCV 2019): ``root/{train,test}/<Class>/*.png`` face-and-context stills."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runtime.data.base import DatasetIndex
from runtime.data.folder import find_split_dirs, folder_resolver, index_class_folders, reject_unknown_options
from runtime.data.registry import register_dataset

# CAER-S class folder (lower-case) -> canonical class.
CAER_S_CLASSES: dict[str, str] = {
    "anger": "angry",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprise": "surprise",
}

# Split folder (lower-case) -> split. CAER-S ships no validation split.
CAER_S_SPLITS: dict[str, str] = {"train": "train", "test": "test"}


@register_dataset("caer_s")
def load_caer_s(root: Path, **unknown: Any) -> DatasetIndex:
    """Load CAER-S (7 classes; 48,995 train / 20,987 test images in the full set).

    Raises:
        DataError: for a missing split folder set, an unknown class folder or an empty one.
    """
    reject_unknown_options(load_caer_s, "caer_s", unknown)
    splits = find_split_dirs(root, CAER_S_SPLITS)
    return index_class_folders("caer_s", root, splits, folder_resolver(CAER_S_CLASSES))
