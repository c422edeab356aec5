"""Face detectors for ``python -m runtime infer``: OpenCV only, nothing downloaded.

Three detectors behind one small interface (``detect(image) -> list[Box]``), chosen by name:

- ``haar``: Viola-Jones with ``cv2.CascadeClassifier`` and the frontal-face cascade that OpenCV 4.x
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

``auto`` picks yunet when a model file is given, else haar when OpenCV has it, else raises
`MissingDependencyError` saying exactly that and how to proceed (``--no-detect`` for pre-cropped
faces). Detectors take BGR images (what OpenCV decodes) and return boxes in pixel coordinates.

No torch; numpy and OpenCV only.
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

DETECTORS = ("auto", "haar", "yunet", "none")
HAAR_FILE = "haarcascade_frontalface_default.xml"
# Where system OpenCV packages put the cascades (Debian/Ubuntu/JetPack's libopencv-dev, opencv-data).
HAAR_DIRS = ("/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades",
             "/usr/local/share/opencv4/haarcascades")


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
    """"" when the Haar detector can run here, else why not (never raises)."""
    if not hasattr(cv2, "CascadeClassifier"):
        return (f"OpenCV {cv2.__version__} has no CascadeClassifier (OpenCV 5 moved Haar cascades out of the main "
                "module; opencv-python-headless<5 ships them)")
    if find_haar_cascade(cascade) is None:
        where = cascade or f"cv2.data.haarcascades and {', '.join(HAAR_DIRS)}"
        return f"no {HAAR_FILE} in {where}"
    return ""


class HaarDetector:
    """Viola-Jones frontal faces (``cv2.CascadeClassifier.detectMultiScale``).

    Args:
        cascade: Cascade XML (default: OpenCV's frontal-face cascade, see `find_haar_cascade`).
        scale_factor, min_neighbors: ``detectMultiScale`` settings (OpenCV's usual 1.1 and 5).
        min_size: Smallest face side in pixels.
    """

    name = "haar"

    def __init__(self, cascade: str | os.PathLike | None = None, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 32) -> None:
        reason = haar_unavailable_reason(cascade)
        if reason:
            raise MissingDependencyError(f"Haar face detector unavailable: {reason}")
        self.path = find_haar_cascade(cascade)
        self.cascade = cv2.CascadeClassifier(str(self.path))
        if self.cascade.empty():
            raise ArtifactError(f"{self.path}: OpenCV could not load this cascade file")
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size

    def detect(self, image: np.ndarray) -> list[Box]:
        gray = cv2.equalizeHist(_gray(image))
        found = self.cascade.detectMultiScale(gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
                                              minSize=(self.min_size, self.min_size))
        return [Box(int(x), int(y), int(w), int(h)) for (x, y, w, h) in (found if len(found) else [])]

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, "cascade": str(self.path), "scale_factor": self.scale_factor,
                "min_neighbors": self.min_neighbors, "min_size": self.min_size, "opencv": cv2.__version__}


class YuNetDetector:
    """``cv2.FaceDetectorYN`` with a YuNet ONNX file you provide.

    Args:
        model: ``face_detection_yunet_*.onnx``.
        score_threshold, nms_threshold: Detector thresholds.
        min_size: Boxes smaller than this (pixels) are dropped.
    """

    name = "yunet"

    def __init__(self, model: str | os.PathLike, *, score_threshold: float = 0.7, nms_threshold: float = 0.3,
                 min_size: int = 32) -> None:
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
        self.score_threshold, self.nms_threshold, self.min_size = score_threshold, nms_threshold, min_size

    def detect(self, image: np.ndarray) -> list[Box]:
        img = _bgr(image)
        self.net.setInputSize((int(img.shape[1]), int(img.shape[0])))
        _, faces = self.net.detect(img)
        boxes = []
        for f in faces if faces is not None else []:
            x, y, w, h = (int(round(v)) for v in f[:4])
            if min(w, h) >= self.min_size:
                boxes.append(Box(max(0, x), max(0, y), w, h, float(f[-1])))
        return boxes

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, "model": str(self.path), "score_threshold": self.score_threshold,
                "nms_threshold": self.nms_threshold, "min_size": self.min_size, "opencv": cv2.__version__}


def detector_status(cascade: str | os.PathLike | None = None, model: str | os.PathLike | None = None) -> dict[str, str]:
    """Detector name -> "" when usable here, else why not."""
    yunet = "" if model else "needs --detector-model face_detection_yunet_*.onnx (OpenCV ships the class, not the weights)"
    if not hasattr(cv2, "FaceDetectorYN_create") and not hasattr(cv2, "FaceDetectorYN"):
        yunet = f"OpenCV {cv2.__version__} has no FaceDetectorYN"
    return {"haar": haar_unavailable_reason(cascade), "yunet": yunet, "none": ""}


def make_detector(name: str = "auto", *, model: str | os.PathLike | None = None,
                  cascade: str | os.PathLike | None = None, min_size: int = 32) -> Detector:
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
        return YuNetDetector(model, min_size=min_size)
    if name == "haar" or not haar_unavailable_reason(cascade):
        return HaarDetector(cascade, min_size=min_size)
    raise MissingDependencyError(
        "no face detector is available here: "
        + "; ".join(f"{k}: {v}" for k, v in detector_status(cascade, model).items() if v)
        + ". Pass --no-detect for pre-cropped faces, --detector yunet --detector-model FILE.onnx, or install "
        "an OpenCV that ships Haar cascades (opencv-python-headless<5, or JetPack's system OpenCV 4)"
    )
