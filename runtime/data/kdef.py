"""KDEF (Lundqvist et al., 1998): 70 people × 7 expressions × 5 views × 2 sessions, coded in file names.

``KDEF/AF01/AF01AFS.JPG``: session ``A``/``B``, gender ``F``/``M``, person ``01``-``35``,
expression code, view code. KDEF has no official split.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from runtime.data.base import CANONICAL_CLASSES, DatasetIndex, Record, canonical_classes, iter_image_files
from runtime.data.folder import reject_unknown_options
from runtime.data.registry import register_dataset
from runtime.errors import DataError

log = logging.getLogger(__name__)

# KDEF expression code -> canonical class.
KDEF_EXPRESSIONS: dict[str, str] = {
    "AF": "fear",  # afraid
    "AN": "angry",
    "DI": "disgust",
    "HA": "happy",
    "NE": "neutral",
    "SA": "sad",
    "SU": "surprise",
}

# KDEF view code -> view name used in meta and in the ``views`` option.
KDEF_VIEWS: dict[str, str] = {
    "FL": "full_left",
    "HL": "half_left",
    "S": "frontal",  # straight
    "HR": "half_right",
    "FR": "full_right",
}

NAME_PATTERN = re.compile(
    r"(?P<session>[AB])(?P<gender>[FM])(?P<person>0[1-9]|[12]\d|3[0-5])"
    rf"(?P<expression>{'|'.join(KDEF_EXPRESSIONS)})(?P<view>{'|'.join(KDEF_VIEWS)})",
    re.ASCII,  # \d must not match other scripts' digits ("F1٠" is not person 10)
)
NAME_FORMAT = "e.g. AF01AFS.JPG: session A/B, gender F/M, person 01-35, expression, view FL/HL/S/HR/FR"
SUBJECT_PATTERN = re.compile(r"[AB]?[FM]\d\d")


def _view_names(views: Sequence[str]) -> set[str]:
    """View names from names or codes (``"frontal"`` or ``"S"``)."""
    names = set()
    for view in views:
        name = KDEF_VIEWS.get(view.upper(), view.lower())
        if name not in KDEF_VIEWS.values():
            valid = ", ".join(f"{v} ({c})" for c, v in KDEF_VIEWS.items())
            raise DataError(f"unknown KDEF view {view!r}; valid: {valid}")
        names.add(name)
    return names


def _move_test_subjects(records: list[Record], subjects: Sequence[str]) -> list[Record]:
    """Put the listed people (``"F01"``: both sessions) or sessions (``"AF01"``) into ``test``."""
    wanted = {s.upper() for s in subjects}
    for s in wanted:
        if not SUBJECT_PATTERN.fullmatch(s):
            raise DataError(f"test_subjects entry {s!r} must look like F01 (person) or AF01 (session A of F01)")
    present = {r.meta["person"] for r in records} | {r.meta["subject"] for r in records}
    if wanted - present:
        raise DataError(f"test_subjects {sorted(wanted - present)} not found among the loaded KDEF images")
    moved = [replace(r, split="test") if {r.meta["person"], r.meta["subject"]} & wanted else r for r in records]
    # A person's other session left in train would leak identity into a subject-independent test.
    people = {split: {r.meta["person"] for r in moved if r.split == split} for split in ("train", "test")}
    leaked = people["train"] & people["test"]
    if leaked:
        log.warning("KDEF people %s are in both train and test (one session each)", ", ".join(sorted(leaked)))
    return moved


@register_dataset("kdef")
def load_kdef(
    root: Path,
    *,
    views: Sequence[str] | None = None,
    on_bad_name: str = "error",
    test_subjects: Sequence[str] | None = None,
    **unknown: Any,
) -> DatasetIndex:
    """Load KDEF (7 classes, 4,900 images in full), every image in ``train`` unless moved to ``test``.

    Args:
        root: The ``KDEF`` folder (or a folder above it); images are found recursively.
        views: Keep only these views (names like ``"frontal"`` or codes like ``"S"``).
        on_bad_name: ``"error"`` raises on a file name that is not a KDEF code, ``"skip"`` logs and
            skips it (the distributed set holds a few irregular files).
        test_subjects: People (``"F01"``, both sessions) or sessions (``"AF01"``) to put in ``test``,
            for a subject-independent protocol.

    Raises:
        DataError: for a bad file name (with ``on_bad_name="error"``), bad options or no images.
    """
    reject_unknown_options(load_kdef, "kdef", unknown)
    if on_bad_name not in ("error", "skip"):
        raise DataError(f"kdef option on_bad_name must be 'error' or 'skip', got {on_bad_name!r}")
    keep_views = _view_names(views) if views is not None else set(KDEF_VIEWS.values())
    records = []
    for path in iter_image_files(root):
        # Names are upper-case in the distribution; copies on case-folding file systems may not be.
        m = NAME_PATTERN.fullmatch(path.stem.upper())
        if m is None:
            message = f"{path}: not a KDEF file name ({NAME_FORMAT})"
            if on_bad_name == "error":
                raise DataError(
                    f"{message}. Rename or remove the file, or set the dataset option on_bad_name: skip "
                    "(data.options in the config) to skip such files"
                )
            log.warning("skipping %s", message)
            continue
        view = KDEF_VIEWS[m["view"]]
        if view not in keep_views:
            continue
        meta = {
            "view": view,
            "subject": f"{m['session']}{m['gender']}{m['person']}",
            "person": f"{m['gender']}{m['person']}",
            "session": m["session"],
            "gender": m["gender"],
        }
        label = CANONICAL_CLASSES.index(KDEF_EXPRESSIONS[m["expression"]])
        records.append(Record(path.relative_to(root).as_posix(), label, "train", path=path, meta=meta))
    if test_subjects:
        records = _move_test_subjects(records, test_subjects)
    info = {"views": sorted(keep_views), "test_subjects": sorted(test_subjects or [])}
    return DatasetIndex("kdef", canonical_classes(7), records, info=info)
