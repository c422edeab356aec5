"""Face detectors for ``python -m runtime infer``: nothing downloaded at run time.

Four detectors behind one small interface (``detect(image) -> list[Box]``), chosen by name:

- ``mtcnn`` (the default): the MTCNN cascade of three small CNNs (Zhang et al. 2016) on the ONNX
  files shipped in ``runtime/detectors/mtcnn/`` (~2 MB, exported by ``scripts/export_mtcnn.py`` from
  the authors' trained weights), run through the project's backends: ONNX Runtime on the CPU,
  ``ort-cuda`` / ``ort-trt`` on a GPU (`runtime.detectors.mtcnn`). On the labelled public photos
  in ``tests/data/photos`` it finds all 8 hand-marked faces, a 3/4 profile among them, where
  Haar finds 6 (BENCHMARKS.md).
- ``haar`` (the fallback): Viola-Jones with ``cv2.CascadeClassifier`` and the frontal-face cascade that OpenCV 4.x
  wheels ship in ``cv2.data.haarcascades`` (constraints.txt pins opencv-python-headless 4.14 for
  this; JetPack's system OpenCV 4 ships the same files in ``/usr/share/opencv4/haarcascades``).
  **OpenCV 5 removed both** the class and the files from the main module: there the Haar detector
  reports itself unavailable, with that reason. Trained on photographs, it finds about a quarter of
  the synthetic set's cartoon frontal faces (BENCHMARKS.md), so the synthetic demo and tests feed
  pre-cropped faces (``none``).
- ``yunet``: ``cv2.FaceDetectorYN`` (OpenCV >= 4.8, present in 5.0), a small CNN detector. OpenCV
  ships the class but not its weights; pass the ``face_detection_yunet_*.onnx`` file you have
  (``--detector-model``). Nothing is downloaded.
- ``none``: the whole frame is one face (pre-cropped faces, or a camera framed on one face).

``auto`` picks yunet when a model file is given, else mtcnn (its files ship with the package and
ONNX Runtime is a core dependency), else haar when OpenCV has it, else raises
`MissingDependencyError` saying exactly that and how to proceed (``--no-detect`` for pre-cropped
faces). Detectors take BGR images (what OpenCV decodes) and return boxes in pixel coordinates of
the image they were given.

Scale independence: every detector (but ``none``) runs on a copy of the image resized so that its
longer side is at most ``work_side`` pixels (default 1280; smaller images are used as they are),
and the boxes are mapped back. Time and memory are therefore bounded whatever the input size (an
8000×6000 photo is detected like its 1280-pixel copy), and the smallest face is given relative to
the image: ``min_face`` < 1 is a fraction of the image's shorter side (default 0.04: 19 px on a
640×480 frame), ``min_face`` >= 1 is in pixels of the original image. Either way a face must be at
least the detector's own window in the working copy (MTCNN 12 px, Haar 24 px), i.e. 1 % (MTCNN) of
the working copy's longer side; raise ``work_side`` to find smaller faces in very large photos.

No torch: numpy, OpenCV and, for mtcnn, a runtime backend (ONNX Runtime).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from runtime.errors import ArtifactError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

DETECTORS = ("auto", "mtcnn", "haar", "yunet", "none")
WORK_SIDE = 1280  # detection runs on a copy whose longer side is at most this
MIN_FACE = 0.04  # default smallest face: 4 % of the image's shorter side
HUGE_PIXELS = 24_000_000  # inputs above this many pixels get a one-line notice in infer
HAAR_FILE = "haarcascade_frontalface_default.xml"
# Where system OpenCV packages put the cascades (Debian/Ubuntu/JetPack's libopencv-dev, opencv-data).
HAAR_DIRS = (
    "/usr/share/opencv4/haarcascades",
    "/usr/share/opencv/haarcascades",
    "/usr/local/share/opencv4/haarcascades",
)


@dataclass(frozen=True)
class Box:
    """An axis-aligned face box in pixels: top-left (x, y), width, height, detector score."""

    x: int
    y: int
    w: int
    h: int
    score: float = 1.0

    def expand(self, margin: float, shape: Sequence[int]) -> Box:
        """The box grown by ``margin`` × its size on every side and clipped to an image of ``shape``.

        Detectors box the inner face (brows to chin); classifiers are trained on crops with some
        context around it, hence the margin (0.25 grows a 100 px box to 150 px).
        """
        if margin < 0:
            raise ConfigError(f"margin must be >= 0, got {margin}")
        H, W = int(shape[0]), int(shape[1])
        dx, dy = self.w * margin, self.h * margin
        x0, y0 = max(0, int(round(self.x - dx))), max(0, int(round(self.y - dy)))
        x1, y1 = min(W, int(round(self.x + self.w + dx))), min(H, int(round(self.y + self.h + dy)))
        return Box(x0, y0, max(0, x1 - x0), max(0, y1 - y0), self.score)

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y : self.y + self.h, self.x : self.x + self.w]

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "score": round(float(self.score), 4)}


class Detector(Protocol):
    """``detect(bgr image) -> boxes``; ``name`` and ``describe()`` for reports."""

    name: str

    def detect(self, image: np.ndarray) -> list[Box]: ...

    def describe(self) -> dict[str, Any]: ...


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)


def _bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def check_min_face(min_face: float) -> float:
    """``min_face`` as a float, or `ConfigError` when it is not positive."""
    try:
        v = float(min_face)
    except (TypeError, ValueError):
        raise ConfigError(f"--min-face must be a number, got {min_face!r}") from None
    if not v > 0 or not np.isfinite(v):
        raise ConfigError(
            f"--min-face must be > 0 (a fraction of the shorter side below 1, or pixels from 1 up), got {min_face}"
        )
    return v


def min_face_pixels(min_face: float, shape: Sequence[int]) -> float:
    """The smallest face side in pixels of an image of ``shape``: fraction of the shorter side below 1, else pixels."""
    return float(min_face) * min(int(shape[0]), int(shape[1])) if min_face < 1 else float(min_face)


def working_scale(shape: Sequence[int], work_side: int = WORK_SIDE) -> float:
    """Factor (<= 1) that brings the longer side of ``shape`` to at most ``work_side``."""
    return min(1.0, float(work_side) / max(1, int(shape[0]), int(shape[1])))


def working_copy(image: np.ndarray, work_side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """(image resized so that its longer side is <= ``work_side``, the factor used); the image itself if small."""
    s = working_scale(image.shape, work_side)
    if s >= 1.0:
        return image, 1.0
    size = (max(1, round(image.shape[1] * s)), max(1, round(image.shape[0] * s)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), s


def boxes_to_original(xyxy: np.ndarray, scores: Sequence[float], scale: float, shape: Sequence[int]) -> list[Box]:
    """(N, 4) x1, y1, x2, y2 boxes of the working copy -> `Box` es of the original image (clipped to it)."""
    H, W = int(shape[0]), int(shape[1])
    out = []
    for (x1, y1, x2, y2), sc in zip(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) / scale, scores):
        a, b = max(0, int(round(x1))), max(0, int(round(y1)))
        c, d = min(W, int(round(x2))), min(H, int(round(y2)))
        if c - a >= 2 and d - b >= 2:
            out.append(Box(a, b, c - a, d - b, float(sc)))
    return out


class _Scaled:
    """Shared by the detectors: detect on the working copy, with ``min_face`` relative or in pixels."""

    name = "?"
    min_window = 12  # the detector's own smallest face in working pixels

    def __init__(self, min_face: float = MIN_FACE, work_side: int = WORK_SIDE) -> None:
        self.min_face = check_min_face(min_face)
        if int(work_side) < 64:
            raise ConfigError(f"--detect-size must be >= 64 pixels, got {work_side}")
        self.work_side = int(work_side)

    def detect(self, image: np.ndarray) -> list[Box]:
        work, s = working_copy(image, self.work_side)
        min_px = max(float(self.min_window), min_face_pixels(self.min_face, image.shape) * s)
        xyxy, scores = self._detect(work, min_px)
        return sorted(boxes_to_original(xyxy, scores, s, image.shape), key=lambda b: (b.x, b.y))

    def _detect(self, work: np.ndarray, min_px: float) -> tuple[np.ndarray, list[float]]:
        raise NotImplementedError

    def _describe_scale(self) -> dict[str, Any]:
        return {
            "min_face": self.min_face,
            "min_face_unit": "fraction of the shorter side" if self.min_face < 1 else "pixels",
            "work_side": self.work_side,
        }

    def close(self) -> None:
        pass


class WholeFrame:
    """``none``: the whole frame is the face (pre-cropped inputs)."""

    name = "none"

    def detect(self, image: np.ndarray) -> list[Box]:
        return [Box(0, 0, int(image.shape[1]), int(image.shape[0]))]

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, "note": "every frame is treated as one pre-cropped face"}


def find_haar_cascade(path: str | os.PathLike | None = None) -> Path | None:
    """The frontal-face cascade file: ``path``, else OpenCV's ``cv2.data.haarcascades``, else system dirs."""
    if path:
        return Path(path) if Path(path).is_file() else None
    dirs = []
    data = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if data:
        dirs.append(data)
    dirs += list(HAAR_DIRS)
    for d in dirs:
        p = Path(d) / HAAR_FILE
        if p.is_file():
            return p
    return None


def haar_unavailable_reason(cascade: str | os.PathLike | None = None) -> str:
    """ "" when the Haar detector can run here, else why not (never raises)."""
    if not hasattr(cv2, "CascadeClassifier"):
        return (
            f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar cascades out of the main "
            "module; opencv-python-headless<5 ships them)"
        )
    if find_haar_cascade(cascade) is None:
        where = cascade or f"cv2.data.haarcascades and {', '.join(HAAR_DIRS)}"
        return f"no {HAAR_FILE} in {where}"
    return ""


class HaarDetector(_Scaled):
    """Viola-Jones frontal faces (``cv2.CascadeClassifier.detectMultiScale``), the fallback detector.

    Args:
        cascade: Cascade XML (default: OpenCV's frontal-face cascade, see `find_haar_cascade`).
        scale_factor, min_neighbors: ``detectMultiScale`` settings (OpenCV's usual 1.1 and 5).
        min_face: Smallest face: fraction of the shorter side (< 1) or pixels (>= 1).
        work_side: Detection runs on a copy at most this long.
    """

    name = "haar"
    min_window = 24

    def __init__(
        self,
        cascade: str | os.PathLike | None = None,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: float = MIN_FACE,
        work_side: int = WORK_SIDE,
    ) -> None:
        super().__init__(min_face, work_side)
        reason = haar_unavailable_reason(cascade)
        if reason:
            raise MissingDependencyError(f"Haar face detector unavailable: {reason}")
        self.path = find_haar_cascade(cascade)
        self.cascade = cv2.CascadeClassifier(str(self.path))
        if self.cascade.empty():
            raise ArtifactError(f"{self.path}: OpenCV could not load this cascade file")
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def _detect(self, work: np.ndarray, min_px: float) -> tuple[np.ndarray, list[float]]:
        gray = cv2.equalizeHist(_gray(work))
        side = int(round(min_px))
        found = self.cascade.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        xywh = np.asarray(found if len(found) else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), [1.0] * len(xywh)

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "cascade": str(self.path),
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "opencv": cv2.__version__,
            **self._describe_scale(),
        }


class YuNetDetector(_Scaled):
    """``cv2.FaceDetectorYN`` with a YuNet ONNX file you provide.

    Args:
        model: ``face_detection_yunet_*.onnx``.
        score_threshold, nms_threshold: Detector thresholds.
        min_face: Boxes smaller than this are dropped: fraction of the shorter side (< 1) or pixels (>= 1).
        work_side: Detection runs on a copy at most this long.
    """

    name = "yunet"
    min_window = 10

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        score_threshold: float = 0.7,
        nms_threshold: float = 0.3,
        min_face: float = MIN_FACE,
        work_side: int = WORK_SIDE,
    ) -> None:
        super().__init__(min_face, work_side)
        if not hasattr(cv2, "FaceDetectorYN_create") and not hasattr(cv2, "FaceDetectorYN"):
            raise MissingDependencyError(f"OpenCV {cv2.__version__} has no FaceDetectorYN (needs OpenCV >= 4.8)")
        self.path = Path(model)
        if not self.path.is_file():
            raise ConfigError(f"--detector-model {self.path}: file not found (a face_detection_yunet_*.onnx)")
        try:
            create = getattr(cv2, "FaceDetectorYN_create", None) or cv2.FaceDetectorYN.create
            self.net = create(str(self.path), "", (320, 320), score_threshold, nms_threshold, 5000)
        except cv2.error as exc:
            raise ArtifactError(f"{self.path}: OpenCV cannot load it as a YuNet face detector ({exc})") from exc
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold

    def _detect(self, work: np.ndarray, min_px: float) -> tuple[np.ndarray, list[float]]:
        img = _bgr(work)
        self.net.setInputSize((int(img.shape[1]), int(img.shape[0])))
        _, faces = self.net.detect(img)
        rows, scores = [], []
        for f in faces if faces is not None else []:
            x, y, w, h = (float(v) for v in f[:4])
            if min(w, h) >= min_px:
                rows.append((x, y, x + w, y + h))
                scores.append(float(f[-1]))
        return np.asarray(rows, dtype=np.float64).reshape(-1, 4), scores

    def describe(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model": str(self.path),
            "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold,
            "opencv": cv2.__version__,
            **self._describe_scale(),
        }


class MtcnnDetector(_Scaled):
    """MTCNN on the shipped ONNX networks (`runtime.detectors.mtcnn`), the default detector.

    Args:
        model_dir: Folder with pnet/rnet/onet.onnx (default: the shipped files).
        backend: ``ort`` (default, CPU), ``ort-cuda`` or ``ort-trt``.
        threads: CPU intra-op threads (default: OMP_NUM_THREADS or 1).
        thresholds: P-Net, R-Net, O-Net face-probability thresholds.
        min_face: Smallest face: fraction of the shorter side (< 1) or pixels (>= 1).
        work_side: Detection runs on a copy at most this long.
    """

    name = "mtcnn"
    min_window = 12

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        backend: str = "ort",
        threads: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.9),
        min_face: float = MIN_FACE,
        work_side: int = WORK_SIDE,
    ) -> None:
        super().__init__(min_face, work_side)
        from runtime.detectors.mtcnn import MtcnnNets

        self.nets = MtcnnNets(model_dir, backend=backend, threads=threads, thresholds=thresholds)

    def _detect(self, work: np.ndarray, min_px: float) -> tuple[np.ndarray, list[float]]:
        if work.ndim == 2:
            rgb = cv2.cvtColor(work, cv2.COLOR_GRAY2RGB)
        else:
            rgb = cv2.cvtColor(work, cv2.COLOR_BGRA2RGB if work.shape[2] == 4 else cv2.COLOR_BGR2RGB)
        found = self.nets.detect_rgb(rgb, min_px)
        return found[:, :4], [float(v) for v in found[:, 4]]

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, **self.nets.describe(), **self._describe_scale()}

    def close(self) -> None:
        self.nets.close()


def mtcnn_unavailable_reason() -> str:
    """ "" when the shipped MTCNN detector can run here, else why not (never raises)."""
    from runtime.backends import available_backends
    from runtime.detectors.mtcnn import MODEL_DIR, NETS

    missing = [n for n in NETS if not (MODEL_DIR / f"{n}.onnx").is_file()]
    if missing:
        return f"{MODEL_DIR}: {', '.join(n + '.onnx' for n in missing)} missing from this install"
    return available_backends(("ort",)).get("ort", "")


def detector_status(cascade: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> dict[str, str]:
    """Detector name -> "" when usable here, else why not."""
    yunet = (
        "" if model else "needs --detector-model face_detection_yunet_*.onnx (OpenCV ships the class, not the weights)"
    )
    if not hasattr(cv2, "FaceDetectorYN_create") and not hasattr(cv2, "FaceDetectorYN"):
        yunet = f"OpenCV {cv2.__version__} has no FaceDetectorYN"
    return {"mtcnn": mtcnn_unavailable_reason(), "haar": haar_unavailable_reason(cascade), "yunet": yunet, "none": ""}


def make_detector(
    name: str = "auto",
    *,
    model: str | os.PathLike | None = None,
    cascade: str | os.PathLike | None = None,
    min_face: float = MIN_FACE,
    work_side: int = WORK_SIDE,
    backend: str = "ort",
    threads: int | None = None,
) -> Detector:
    """Build the detector called ``name`` (see the module docstring for ``auto``).

    Raises:
        ConfigError: an unknown name or a missing model file.
        MissingDependencyError: the detector (or, for ``auto``, every detector) is unavailable here.
    """
    if name not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    if name == "none":
        return WholeFrame()
    if name == "yunet" or (name == "auto" and model):
        if not model:
            raise ConfigError("--detector yunet needs --detector-model face_detection_yunet_*.onnx")
        return YuNetDetector(model, min_face=min_face, work_side=work_side)
    if name == "mtcnn" or (name == "auto" and not mtcnn_unavailable_reason()):
        return MtcnnDetector(backend=backend, threads=threads, min_face=min_face, work_side=work_side)
    if name == "haar" or not haar_unavailable_reason(cascade):
        return HaarDetector(cascade, min_face=min_face, work_side=work_side)
    raise MissingDependencyError(
        "no face detector is available here: "
        + "; ".join(f"{k}: {v}" for k, v in detector_status(cascade, model).items() if v)
        + ". Reinstall the package (its runtime/detectors/mtcnn/*.onnx files and onnxruntime), pass --no-detect for "
        "pre-cropped faces, --detector yunet --detector-model FILE.onnx, or install an OpenCV that ships Haar "
        "cascades (opencv-python-headless<5, or JetPack's system OpenCV 4)"
    )


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_faces(
    found: Sequence[Box], faces: Sequence[Sequence[float]], ignore: Sequence[Sequence[float]] = (), iou: float = 0.4
) -> tuple[int, int]:
    """(faces found, false boxes) of ``found`` against hand-marked ``faces`` (x0, y0, x1, y1).

    Each marked face is matched to at most one box (greedy by IoU, at least ``iou``). An unmatched
    box counts as false unless it overlaps an ``ignore`` region (a face too cut off to count) by
    ``iou`` or lies mostly (over half) inside one.
    """
    boxes = [(b.x, b.y, b.x + b.w, b.y + b.h) for b in found]
    pairs = sorted(((box_iou(bx, f), i, j) for i, bx in enumerate(boxes) for j, f in enumerate(faces)), reverse=True)
    used_b: set[int] = set()
    used_f: set[int] = set()
    for v, i, j in pairs:
        if v >= iou and i not in used_b and j not in used_f:
            used_b.add(i)
            used_f.add(j)
    false = 0
    for i, bx in enumerate(boxes):
        if i in used_b:
            continue
        area = max(1e-9, (bx[2] - bx[0]) * (bx[3] - bx[1]))
        inside = [
            max(0.0, min(bx[2], g[2]) - max(bx[0], g[0])) * max(0.0, min(bx[3], g[3]) - max(bx[1], g[1])) / area
            for g in ignore
        ]
        if not any(box_iou(bx, g) >= iou or f > 0.5 for g, f in zip(ignore, inside)):
            false += 1
    return len(used_f), false
