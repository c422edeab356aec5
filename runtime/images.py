"""A folder of the user's own images, labelled or not: found recursively, decoded without torch.

``--data DIR`` of ``quantize int8``/``fp16`` and ``runtime parity`` accepts any folder of images.
A folder laid out as an ImageFolder (``DIR/<class>/*``, optionally under ``train``/``val``/``test``)
keeps its labels through the dataset loaders (`runtime.data.load_dataset`); any other folder is read
here: every image below it (``.png .jpg .jpeg .bmp .tif .tiff .webp``, hidden folders skipped) in
sorted order, and an image whose path passes through a folder named after one of the model's
classes (or a known alias, case-insensitive) carries that class as its label; the others are
unlabelled (label ``-1``). Calibration needs no labels, and parity on unlabelled images measures
agreement with the reference instead of accuracy.

Imports: numpy/OpenCV and the torch-free `runtime.data` helpers (no torch).
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
        what = (
            "unlabelled" if k == 0 else ("all labelled by class folder" if k == n else f"{k} labelled by class folder")
        )
        return f"image folder {self.root} ({n} images, {what})"

    def subset(self, indices: Sequence[int]) -> ImageFolder:
        idx = list(indices)
        return ImageFolder(
            self.root,
            tuple(self.paths[i] for i in idx),
            tuple(self.ids[i] for i in idx),
            self.labels[idx] if idx else self.labels[:0],
            self.class_names,
        )


def _class_table(class_names: Sequence[str]) -> dict[str, int]:
    """Lower-case folder name -> index into ``class_names`` (exact names first, then known aliases)."""
    table = {str(c).lower(): i for i, c in enumerate(class_names)}
    try:
        from runtime.data.folder import FOLDER_ALIASES  # torch-free; absent on a bare device install
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
    from runtime.data.base import IMAGE_SUFFIXES

    base = Path(root)
    if not base.is_dir():
        raise DataError(f"--data {base}: not a folder; give a folder of images (any layout, searched recursively)")
    paths = sorted(
        p
        for p in base.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
    )
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
    """Decode one image file to uint8 gray (H×W) or RGB (H×W×3) (`runtime.data.base.read_image_file`).

    Raises:
        DataError: naming the file when it is empty, missing or cannot be decoded.
    """
    from runtime.data.base import read_image_file  # numpy/OpenCV only

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
        from runtime.data.folder import load_folder
    except ImportError:
        return False
    try:
        load_folder(Path(root))
    except DataError as exc:
        if str(root) not in _SAID:  # once per folder and process (quantize and parity each ask)
            _SAID.add(str(root))
            log.info(
                "%s is read as a folder of images, labelled only where a folder is named after one of the "
                "model's classes (%s)",
                root,
                str(exc).split(";")[0],
            )
        return False
    return True


# --------------------------------------------------------------------------------------------
# --detect: faces cropped from whole photos first (the detectors of `runtime.detect`)
# --------------------------------------------------------------------------------------------
FACES_MANIFEST = "faces.json"


def crop_faces(root: str | os.PathLike, dest: str | os.PathLike, detector, *, margin: float = 0.1) -> dict:
    """Detect the faces in every image under ``root`` and write each face crop under ``dest``.

    The crops keep the source's relative folders (so class folders keep labelling them) and are
    named ``<image stem>.face<k>.png``. ``dest`` is replaced as a whole, atomically: it is built in a
    temporary folder beside it and renamed into place, with ``faces.json`` (source, detector,
    margin, counts) inside.

    Returns:
        The ``faces.json`` content.

    Raises:
        DataError: no image is readable, or no face is found in any image (nothing is written).
    """
    import json
    import shutil
    import tempfile

    import cv2

    from runtime.artifacts import atomic_write_json

    folder, images = load_images(scan_image_folder(root))
    out = Path(dest)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    faces, without = 0, []
    try:
        for rel, img in zip(folder.ids, images):
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
            boxes = detector.detect(bgr)
            if not boxes:
                without.append(rel)
            for k, box in enumerate(boxes):
                crop = box.expand(margin, bgr.shape).crop(bgr)
                target = work / Path(rel).parent / f"{Path(rel).stem}.face{k}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                ok, buf = cv2.imencode(".png", crop)
                if ok:  # the folder as a whole is renamed into place below
                    target.write_bytes(buf.tobytes())
                    faces += 1
        if faces == 0:
            raise DataError(
                f"--detect: no face found in any of the {len(folder)} image(s) under {root}; "
                "if they are face crops already, drop --detect"
            )
        info = {
            "source": str(root),
            "images": len(folder),
            "faces": faces,
            "images_without_face": len(without),
            "without_face": without[:50],
            "margin": margin,
            "detector": detector.describe(),
        }
        atomic_write_json(work / FACES_MANIFEST, json.loads(json.dumps(info, default=str)))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if without:
        log.warning("--detect: no face in %d of %d image(s) (e.g. %s)", len(without), len(folder), without[0])
    log.info("--detect: %d face(s) from %d image(s) of %s written to %s", faces, len(folder), root, out)
    return info


def add_detect_options(parser) -> None:
    """``--detect`` and the detector options of ``runtime infer``, for commands that take ``--data``."""
    from runtime.detect import DETECTORS, MIN_FACE

    parser.add_argument(
        "--detect",
        action="store_true",
        help="--data holds whole photos: crop the faces first (default: images are face crops, used as given)",
    )
    parser.add_argument(
        "--detector",
        default="auto",
        choices=[d for d in DETECTORS if d != "none"],
        help="face detector for --detect (default auto: yunet with --detector-model, else mtcnn)",
    )
    parser.add_argument("--detector-model", default=None, help="YuNet face_detection_yunet_*.onnx for --detector yunet")
    parser.add_argument(
        "--margin", type=float, default=0.1, help="--detect: grow each face box by this fraction per side (default 0.1)"
    )
    parser.add_argument(
        "--min-face",
        type=float,
        default=MIN_FACE,
        help=f"--detect: smallest face, below 1 a fraction of the shorter side (default {MIN_FACE})",
    )


def detected_data(args, dest: str | os.PathLike) -> str | None:
    """``args.data``, or with ``--detect`` the folder of face crops written to ``dest`` from it."""
    from runtime.errors import ConfigError

    if not getattr(args, "detect", False):
        return args.data
    if not args.data or not Path(args.data).is_dir():
        raise ConfigError(f"--detect needs --data FOLDER of photos, got {args.data!r}")
    if not 0 <= args.margin <= 2:
        raise ConfigError(f"--margin must be in [0, 2], got {args.margin}")
    from runtime.detect import make_detector

    detector = make_detector(args.detector, model=args.detector_model, min_face=args.min_face)
    try:
        crop_faces(args.data, dest, detector, margin=args.margin)
    finally:
        close = getattr(detector, "close", None)
        if close is not None:
            close()
    return str(dest)
