"""``python -m runtime infer``: faces in images, folders, videos or a camera -> expressions, annotated.

    python -m runtime infer --model runs/demo/model.onnx --source photo.jpg|DIR|clip.mp4|0 [--out DIR]
    python -m runtime infer --model runs/demo/model.int8.engine --source 0 --max-frames 300     # Jetson camera

For every frame: detect faces (`runtime.detect`: MTCNN by default, on a working copy at most
``--detect-size`` pixels long, boxes mapped back; Haar, YuNet, or ``--no-detect`` for pre-cropped
faces), grow each box by ``--margin``, preprocess the crops with the model's own contract (the same
`runtime.preprocess.preprocess` training evaluated with), classify them in one batch, and draw the
label and confidence. Written to ``--out``:

- ``annotated/<relative path>``: annotated images under the source's own name and extension
  (folder structure kept; ``face.png`` and ``face.webp`` give two files). A format OpenCV cannot
  write gets ``.png`` appended (``scan.pgm`` -> ``scan.pgm.png``), and a name already written in
  this run gets ``.2``, ``.3``... before its extension, so no output is ever overwritten by another;
- ``<relative path>.annotated.mp4`` (or ``.avi`` with MJPG where the mp4v encoder is missing) for
  videos (``clips/a.mp4`` -> ``clips/a.mp4.annotated.mp4``) and cameras (``camera0.annotated.mp4``);
- ``predictions.csv``: one row per face (source, frame, box, label, confidence, every class probability);
- ``frames.csv``: one row per frame (image size, faces, detect / preprocess / inference / total
  milliseconds);
- ``predictions.json``: the model, contract, detector, per-source status and the latency summary.

Images without a face, unreadable files and empty folders are reported (log and JSON) and the run
goes on with the rest. Exit codes: 0 done; 1 error (model, source or output unusable); 2 bad usage;
3 a dependency is missing (no face detector here, TensorRT for an .engine); 4 done, but some inputs
were unreadable; 5 nothing was classified (empty folder, no readable input, no face anywhere).

Torch-free: numpy, OpenCV and the runtime backends (ONNX Runtime, TensorRT) only.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime.artifacts import atomic_write, atomic_write_json, atomic_write_text, read_json, sha256_file
from runtime.cli import add_common_flags, cli_entry, setup_logging
from runtime.contract import DeploymentContract, read_contract
from runtime.detect import (
    DETECTORS,
    HUGE_PIXELS,
    MIN_FACE,
    WORK_SIDE,
    Box,
    Detector,
    check_min_face,
    make_detector,
    working_scale,
)
from runtime.errors import (
    EXIT_NOTHING,
    EXIT_OK,
    EXIT_PARTIAL,
    ArtifactError,
    ConfigError,
    DataError,
    MissingDependencyError,
    exit_codes_help,
)
from runtime.lock import output_lock
from runtime.preprocess import preprocess

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})
# Annotations on a tiny image (a 64×64 crop) are unreadable: draw on a copy upscaled to this short side.
MIN_ANNOTATED_SIDE = 256
# Annotated images keep the source's extension when OpenCV writes that format; others get ".png" appended.
WRITABLE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class InferConfig:
    """Options of one inference run (the CLI builds it).

    Attributes:
        model: ``.onnx`` (ONNX Runtime by default) or ``.engine`` (TensorRT).
        source: Image file, folder (searched recursively), video file, or camera index (``0``).
        out: Output folder.
        detector: ``auto`` (= ``mtcnn`` unless a YuNet model is given), ``mtcnn``, ``haar``, ``yunet``
            or ``none`` (see `runtime.detect`).
        detector_model: YuNet ONNX file (``yunet``).
        cascade: Haar cascade XML (``haar``; default OpenCV's frontal-face cascade).
        margin: Each face box grows by this fraction of its size on every side before cropping.
            Match the framing of the training crops: OpenCV's Haar boxes span about brow to chin
            (on the synthetic faces, the whole rendered face: margin 0 frames them as in training).
        min_face: Smallest face the detector reports: below 1 a fraction of the image's shorter
            side (default 0.04), from 1 up pixels of the original image.
        detect_size: Detection runs on a copy whose longer side is at most this (boxes mapped back).
        detector_backend: Backend of the MTCNN networks (``ort``; ``ort-cuda``/``ort-trt`` on a GPU).
        backend: Runtime backend (default ``ort`` for .onnx, ``trt`` for .engine).
        threads: CPU intra-op threads (default OMP_NUM_THREADS or 1).
        contract: ONNX file whose deployment contract an ``.engine`` uses (default: the ONNX
            named in the engine's sidecar).
        max_frames: Stop a video or camera after this many processed frames (None: to the end;
            a camera needs it or Ctrl-C).
        every: Process every N-th video frame (the others are skipped, not written).
        codec: FourCC of the annotated video (``mp4v``; falls back to ``MJPG`` in an .avi).
        annotate: Write annotated images/videos.
    """

    model: str
    source: str
    out: str = "runs/infer"
    detector: str = "auto"
    detector_model: str | None = None
    cascade: str | None = None
    margin: float = 0.1
    min_face: float = MIN_FACE
    detect_size: int = WORK_SIDE
    detector_backend: str = "ort"
    backend: str | None = None
    threads: int | None = None
    contract: str | None = None
    max_frames: int | None = None
    every: int = 1
    codec: str = "mp4v"
    annotate: bool = True

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(f"--detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if self.margin < 0 or self.margin > 2:
            raise ConfigError(f"--margin must be in [0, 2], got {self.margin}")
        check_min_face(self.min_face)
        if self.detect_size < 64:
            raise ConfigError(f"--detect-size must be >= 64 pixels, got {self.detect_size}")
        if self.every < 1:
            raise ConfigError(f"--every must be >= 1, got {self.every}")
        if self.max_frames is not None and self.max_frames < 1:
            raise ConfigError(f"--max-frames must be >= 1, got {self.max_frames}")
        if len(self.codec) != 4:
            raise ConfigError(f"--codec must be a four-character code like mp4v or MJPG, got {self.codec!r}")


@dataclass(frozen=True)
class FacePrediction:
    """One classified face."""

    source: str
    frame: int
    face: int
    box: Box
    label: str
    confidence: float
    probs: tuple[float, ...]


@dataclass(frozen=True)
class FrameRecord:
    """Timing of one processed frame (milliseconds)."""

    source: str
    frame: int
    faces: int
    detect_ms: float
    preprocess_ms: float
    infer_ms: float
    total_ms: float
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class SourceResult:
    """What happened to one input.

    Attributes:
        status: ``ok``, ``no_face``, ``unreadable`` or ``error``.
        message: Why, for anything but ``ok``.
        annotated: The annotated image or video written ("" when none).
    """

    source: str
    kind: str
    status: str
    message: str = ""
    frames: int = 0
    faces: int = 0
    annotated: str = ""


@dataclass(frozen=True)
class InferResult:
    """The whole run."""

    sources: tuple[SourceResult, ...]
    predictions: tuple[FacePrediction, ...]
    frames: tuple[FrameRecord, ...]
    outputs: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if not self.predictions:
            return EXIT_NOTHING
        if any(s.status in ("unreadable", "error") for s in self.sources):
            return EXIT_PARTIAL
        return EXIT_OK


# --------------------------------------------------------------------------------------------
# The classifier: backend + contract
# --------------------------------------------------------------------------------------------
def contract_for(model: Path, contract: str | os.PathLike | None = None) -> DeploymentContract:
    """The deployment contract of ``model``: its own (ONNX), or for an engine the ONNX it was built from.

    Raises:
        ArtifactError: no contract can be found, naming what was tried and the ``--contract`` fix.
    """
    if contract:
        return read_contract(contract)
    if model.suffix.lower() == ".onnx":
        return read_contract(model)
    tried = []
    side = model.with_name(model.name + ".json")
    if side.is_file():
        body = read_json(side)
        onnx = body.get("onnx")
        if onnx:
            want = (body.get("key") or {}).get("onnx_sha256")
            for cand in (Path(onnx), model.parent / Path(onnx).name):
                tried.append(str(cand))
                if cand.is_file():
                    if want and sha256_file(cand) != want:
                        log.warning(
                            "%s differs from the ONNX the engine was built from (sha256); using its contract anyway",
                            cand,
                        )
                    return read_contract(cand)
    stem = model.name[: -len(model.suffix)]
    for cand in (model.with_name(stem + ".onnx"),):
        tried.append(str(cand))
        if cand.is_file():
            return read_contract(cand)
    raise ArtifactError(
        f"{model}: a TensorRT engine carries no deployment contract and none was found (tried {tried or [str(side)]}); "
        "pass --contract MODEL.onnx (the ONNX the engine was built from)"
    )


class Classifier:
    """A loaded backend plus the model's contract: crops in, probabilities out."""

    def __init__(
        self,
        model: str | os.PathLike,
        *,
        backend: str | None = None,
        threads: int | None = None,
        contract: str | os.PathLike | None = None,
    ) -> None:
        from runtime.backends import get_backend

        self.path = Path(model)
        if not self.path.is_file():
            raise ArtifactError(f"--model {self.path}: file not found")
        self.contract = contract_for(self.path, contract)
        name = backend or ("trt" if self.path.suffix.lower() in (".engine", ".plan") else "ort")
        cls = get_backend(name)
        reason = cls.unavailable_reason()
        if reason:
            raise MissingDependencyError(f"backend {name!r} is not available here: {reason}")
        opts = {"threads": threads} if threads and name in ("ort", "ort-cuda", "ort-trt") else {}
        if name in ("ort", "ort-cuda", "ort-trt"):
            from runtime.detectors.mtcnn import make_backend

            self.backend = make_backend(cls, self.path, opts).load()  # no spin-waiting beside the detector
        else:
            self.backend = cls(self.path, **opts).load()
        spec = self.backend.input_specs[0]
        self.input_name, self.dtype = spec.name, spec.dtype
        self.fixed_batch = spec.shape[0] if isinstance(spec.shape[0], int) else None
        outs = self.backend.output_names
        self.output = "logits" if "logits" in outs else outs[0]
        self.class_names = self.contract.class_names
        self.backend_name = name

    def classify(self, crops_rgb: Sequence[np.ndarray]) -> tuple[np.ndarray, float, float]:
        """(probabilities (N, C), preprocess ms, inference ms) for RGB (or gray) uint8 crops."""
        t0 = time.perf_counter()
        x = preprocess(list(crops_rgb), self.contract.preprocess)
        t1 = time.perf_counter()
        step = self.fixed_batch or len(x)
        outs = []
        for s in range(0, len(x), step):
            xb = x[s : s + step]
            n = len(xb)
            if self.fixed_batch and n < self.fixed_batch:  # fixed-batch engine: pad, drop the padding
                xb = np.concatenate([xb, np.repeat(xb[-1:], self.fixed_batch - n, axis=0)])
            y = self.backend.infer({self.input_name: np.ascontiguousarray(xb, dtype=self.dtype)})[self.output]
            outs.append(np.asarray(y, dtype=np.float32)[:n])
        t2 = time.perf_counter()
        logits = np.concatenate(outs)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True), (t1 - t0) * 1e3, (t2 - t1) * 1e3

    def describe(self) -> dict[str, Any]:
        return {
            "model": str(self.path),
            "sha256": sha256_file(self.path),
            "backend": self.backend.describe(),
            "model_name": self.contract.model_name,
            "class_names": list(self.class_names),
            "preprocess": self.contract.preprocess.to_dict(),
        }

    def close(self) -> None:
        self.backend.close()


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
_PALETTE = [
    (60, 76, 231),
    (113, 204, 46),
    (219, 152, 52),
    (15, 196, 241),
    (182, 89, 155),
    (0, 128, 255),
    (160, 160, 160),
    (34, 126, 230),
]  # BGR, one per class


def annotation_scale(shape: Sequence[int]) -> float:
    """Upscale factor that brings a small image's short side to `MIN_ANNOTATED_SIDE` (1 when large enough)."""
    short = min(int(shape[0]), int(shape[1]))
    return max(1.0, MIN_ANNOTATED_SIDE / max(1, short))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def label_layout(
    boxes: Sequence[tuple[int, int, int, int]], sizes: Sequence[tuple[int, int]], shape: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Where to draw each face's label: (x0, y0, x1, y1) rectangles inside the image, not overlapping.

    Args:
        boxes: Face boxes (x0, y0, x1, y1) in the drawn image's pixels.
        sizes: Each label's (width, height) in pixels, background included.
        shape: The drawn image's shape.

    A label goes just above its box, else just below it, else inside its top edge; it is shifted
    left to stay inside the image, and moved down (then up) past labels already placed, in order of
    the boxes' top edges. A label that cannot fit anywhere without overlap (more labels than the
    image can hold) keeps its first position.
    """
    H, W = int(shape[0]), int(shape[1])
    placed: list[tuple[int, int, int, int] | None] = [None] * len(boxes)
    done: list[tuple[int, int, int, int]] = []
    for i in sorted(range(len(boxes)), key=lambda k: (boxes[k][1], boxes[k][0])):
        x0, y0, x1, y1 = boxes[i]
        tw, th = min(W, sizes[i][0]), min(H, sizes[i][1])
        lx = min(max(0, x0), W - tw)
        cands = [y for y, fits in ((y0 - th, y0 - th >= 0), (y1 + 1, y1 + 1 + th <= H)) if fits]
        cands.append(min(max(0, y0), H - th))  # inside the box's top edge
        step = max(1, th // 2)
        cands += list(range(cands[0], H - th + 1, step)) + list(range(cands[0], -1, -step))
        first = (lx, cands[0], lx + tw, cands[0] + th)
        chosen = next(
            ((lx, y, lx + tw, y + th) for y in cands if not any(_overlaps((lx, y, lx + tw, y + th), d) for d in done)),
            first,
        )
        placed[i] = chosen
        done.append(chosen)
    return [p for p in placed if p is not None]


def annotate(image_bgr: np.ndarray, faces: Sequence[tuple[Box, str, float, int]], scale: float = 1.0) -> np.ndarray:
    """A copy of ``image_bgr`` (upscaled by ``scale``) with a box and ``label confidence`` per face.

    Labels stay inside the image and do not overlap each other (`label_layout`).
    """
    img = image_bgr if image_bgr.ndim == 3 else cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    if scale != 1.0:
        img = cv2.resize(
            img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_NEAREST
        )
    else:
        img = img.copy()
    thick = max(1, round(min(img.shape[:2]) / 200))
    font_scale = max(0.4, min(img.shape[:2]) / 600)
    boxes, sizes, texts = [], [], []
    for box, label, conf, cls in faces:
        x0, y0 = round(box.x * scale), round(box.y * scale)
        x1, y1 = round((box.x + box.w) * scale) - 1, round((box.y + box.h) * scale) - 1
        cv2.rectangle(img, (x0, y0), (x1, y1), _PALETTE[cls % len(_PALETTE)], thick)
        text = f"{label} {conf:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        boxes.append((x0, y0, x1, y1))
        sizes.append((tw + 4, th + base + 4))
        texts.append((text, base))
    for (lx0, ly0, lx1, ly1), (text, base), (_, _, _, cls) in zip(label_layout(boxes, sizes, img.shape), texts, faces):
        cv2.rectangle(img, (lx0, ly0), (lx1 - 1, ly1 - 1), _PALETTE[cls % len(_PALETTE)], -1)
        cv2.putText(
            img,
            text,
            (lx0 + 2, ly1 - 2 - base),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (255, 255, 255),
            thick,
            cv2.LINE_AA,
        )
    return img


def annotated_name(rel: str | os.PathLike, used: set[str]) -> Path:
    """The annotated image's path (relative to ``annotated/``) for a source at ``rel``; never one in ``used``.

    The source's own name when OpenCV writes its format (``face.webp`` -> ``face.webp``), else the
    name with ``.png`` appended (``scan.pgm`` -> ``scan.pgm.png``); ``.2``, ``.3``... before the
    extension if that name was already taken in this run. Records the name in ``used``.
    """
    rel = Path(rel)
    name = rel if rel.suffix.lower() in WRITABLE_EXTS else rel.with_name(rel.name + ".png")
    cand, k = name, 1
    while str(cand).lower() in used:  # case-insensitive: safe on case-insensitive file systems too
        k += 1
        cand = name.with_name(f"{name.stem}.{k}{name.suffix}")
    used.add(str(cand).lower())
    return cand


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One input: ``kind`` is ``image``, ``video``, ``camera`` or ``unknown`` (a file of another type)."""

    path: str
    kind: str
    rel: str  # name relative to the --source folder (output names keep the folder structure)


def list_sources(source: str) -> list[Source]:
    """Expand ``--source`` into inputs.

    Raises:
        DataError: the path does not exist.
    """
    if source.isdigit():
        return [Source(source, "camera", f"camera{source}")]
    p = Path(source)
    if p.is_dir():
        out = []
        for f in sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith(".")):
            ext = f.suffix.lower()
            kind = "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "unknown"
            out.append(Source(str(f), kind, str(f.relative_to(p))))
        return out
    if p.is_file():
        ext = p.suffix.lower()
        kind = "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "unknown"
        return [Source(str(p), kind, p.name)]
    raise DataError(f"--source {source}: no such file or folder (a camera is given by its index, e.g. 0)")


def read_image(path: str) -> np.ndarray | None:
    """Decode an image as 8-bit BGR (None when OpenCV cannot decode it). Reads bytes first so that
    non-ASCII paths work and a directory or a permission problem reads as 'unreadable'."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
class _Run:
    def __init__(self, cfg: InferConfig, classifier: Classifier, detector: Detector, out: Path, progress: bool) -> None:
        self.cfg, self.clf, self.det, self.out, self.progress = cfg, classifier, detector, out, progress
        self.predictions: list[FacePrediction] = []
        self.frames: list[FrameRecord] = []
        self.sources: list[SourceResult] = []
        self.used_names: set[str] = set()

    def process(self, name: str, index: int, frame_bgr: np.ndarray) -> list[tuple[Box, str, float, int]]:
        H, W = frame_bgr.shape[:2]
        if index == 0 and H * W > HUGE_PIXELS and self.cfg.detector != "none":
            s = working_scale(frame_bgr.shape, self.cfg.detect_size)
            log.warning(
                "%s: %d×%d input (%.0f MP): faces are detected on a %d×%d copy and mapped back",
                name,
                W,
                H,
                H * W / 1e6,
                round(W * s),
                round(H * s),
            )
        t0 = time.perf_counter()
        boxes = self.det.detect(frame_bgr)
        t1 = time.perf_counter()
        faces: list[tuple[Box, str, float, int]] = []
        pre_ms = inf_ms = 0.0
        crops = []
        kept = []
        for b in boxes:
            g = b.expand(self.cfg.margin, frame_bgr.shape)
            if g.w < 2 or g.h < 2:
                continue
            kept.append(g)
            crops.append(cv2.cvtColor(g.crop(frame_bgr), cv2.COLOR_BGR2RGB))
        if crops:
            probs, pre_ms, inf_ms = self.clf.classify(crops)
            for i, (g, p) in enumerate(zip(kept, probs)):
                k = int(np.argmax(p))
                label = self.clf.class_names[k]
                self.predictions.append(
                    FacePrediction(name, index, i, g, label, float(p[k]), tuple(float(v) for v in p))
                )
                faces.append((g, label, float(p[k]), k))
        total = (time.perf_counter() - t0) * 1e3
        self.frames.append(FrameRecord(name, index, len(kept), (t1 - t0) * 1e3, pre_ms, inf_ms, total, W, H))
        return faces

    def image(self, src: Source) -> SourceResult:
        img = read_image(src.path)
        if img is None:
            try:
                size = f"{Path(src.path).stat().st_size} bytes"
            except OSError:
                size = "size unknown"
            msg = (
                f"OpenCV cannot decode this file ({size}: empty, truncated, corrupt or not an image); replace it "
                "with an intact copy or remove it from --source"
            )
            log.warning("%s: unreadable: %s", src.path, msg)
            return SourceResult(src.path, "image", "unreadable", msg)
        faces = self.process(src.path, 0, img)
        written = ""
        if self.cfg.annotate:
            dst = self.out / "annotated" / annotated_name(src.rel, self.used_names)
            vis = annotate(img, faces, annotation_scale(img.shape))
            ok, buf = cv2.imencode(dst.suffix.lower(), vis)
            if not ok:
                raise ArtifactError(f"could not encode the annotated image for {src.path}")
            # One per input image, on the inference path: atomic but not fsynced (re-creatable).
            atomic_write(dst, lambda p, b=buf: p.write_bytes(b.tobytes()), durable=False)
            written = str(dst)
        if not faces:
            log.info("%s: no face found", src.path)
            return SourceResult(src.path, "image", "no_face", "no face found", 1, 0, written)
        return SourceResult(src.path, "image", "ok", "", 1, len(faces), written)

    def _video_base(self, src: Source) -> Path:
        """``<out>/<relative path>.annotated`` (the container suffix is added by `_writer`), unique in this run."""
        rel = Path(src.rel)
        base, k = rel.with_name(rel.name + ".annotated"), 1
        while str(base).lower() in self.used_names:
            k += 1
            base = rel.with_name(f"{rel.name}.{k}.annotated")
        self.used_names.add(str(base).lower())
        return self.out / base

    def _writer(self, base: Path, fps: float, size: tuple[int, int]) -> tuple[Any, Path, Path]:
        """An open video writer, the final path and the temporary path it writes (renamed when done)."""
        tries = [(self.cfg.codec, ".mp4" if self.cfg.codec.lower() in ("mp4v", "avc1", "h264") else ".avi")]
        if self.cfg.codec != "MJPG":
            tries.append(("MJPG", ".avi"))  # every OpenCV build writes Motion-JPEG
        for codec, ext in tries:
            path = base.with_name(base.name + ext)
            tmp = base.with_name(f".{base.name}.partial{ext}")  # same folder, same container suffix
            path.parent.mkdir(parents=True, exist_ok=True)
            w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, size)
            if w.isOpened():
                return w, path, tmp
            w.release()
            tmp.unlink(missing_ok=True)
            log.warning("cannot write %s with codec %s; trying the next codec", path, codec)
        raise ArtifactError(f"OpenCV cannot write a video here (tried {[c for c, _ in tries]}); use --no-annotate")

    def stream(self, src: Source) -> SourceResult:
        cap = cv2.VideoCapture(int(src.path) if src.kind == "camera" else src.path)
        if not cap.isOpened():
            cap.release()
            msg = (
                "cannot open the camera"
                if src.kind == "camera"
                else "OpenCV cannot open this video (corrupt or unsupported)"
            )
            log.warning("%s: unreadable: %s", src.path, msg)
            return SourceResult(src.path, src.kind, "unreadable", msg)
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        fps = fps if 1.0 <= fps <= 240.0 else 25.0
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if src.kind == "video" else 0
        limit = self.cfg.max_frames
        bar = None
        if self.progress:
            from tqdm import tqdm

            n = total // self.cfg.every if total > 0 else None
            bar = tqdm(
                total=min(n, limit) if n and limit else (n or limit), desc=Path(src.rel).name, unit="frame", leave=False
            )
        writer, written, scale, tmp_video = None, "", 1.0, None
        index = done = faces_total = 0
        finished = False
        try:
            while limit is None or done < limit:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                index += 1
                if (index - 1) % self.cfg.every:
                    continue
                faces = self.process(src.path, index - 1, frame)
                faces_total += len(faces)
                done += 1
                if self.cfg.annotate:
                    if writer is None:
                        scale = annotation_scale(frame.shape)
                        size = (round(frame.shape[1] * scale), round(frame.shape[0] * scale))
                        writer, path, tmp_video = self._writer(self._video_base(src), fps / self.cfg.every, size)
                        written = str(path)
                    writer.write(annotate(frame, faces, scale))
                if bar is not None:
                    bar.update(1)
            finished = True
        except KeyboardInterrupt:
            log.warning("%s: interrupted after %d frames; writing what was processed", src.path, done)
            finished = True
        finally:
            cap.release()
            if writer is not None:
                writer.release()
                # The annotated video appears under its name only once complete (or cut by Ctrl-C on
                # purpose); an error mid-stream leaves any earlier video of that name as it was.
                if finished:
                    os.replace(tmp_video, written)
                else:
                    tmp_video.unlink(missing_ok=True)
            if bar is not None:
                bar.close()
        if done == 0:
            msg = "no frame could be read"
            log.warning("%s: unreadable: %s", src.path, msg)
            return SourceResult(src.path, src.kind, "unreadable", msg, 0, 0, written)
        if faces_total == 0:
            log.info("%s: no face found in %d frames", src.path, done)
            return SourceResult(src.path, src.kind, "no_face", f"no face found in {done} frames", done, 0, written)
        return SourceResult(src.path, src.kind, "ok", "", done, faces_total, written)


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def run_infer(cfg: InferConfig, *, detector: Detector | None = None, progress: bool = True) -> InferResult:
    """Run inference as described in the module docstring.

    Args:
        cfg: What to run on what.
        detector: A ready detector (tests inject one); default `runtime.detect.make_detector`.
        progress: Show progress bars.

    Raises:
        DataError: the source does not exist.
        ArtifactError / MissingDependencyError: the model, its contract, the backend or the
            detector cannot be loaded (before anything is written).
    """
    sources = list_sources(cfg.source)
    own_detector = detector is None
    if detector is None:
        detector = make_detector(
            cfg.detector,
            model=cfg.detector_model,
            cascade=cfg.cascade,
            min_face=cfg.min_face,
            work_side=cfg.detect_size,
            backend=cfg.detector_backend,
            threads=cfg.threads,
        )
    try:
        clf = Classifier(cfg.model, backend=cfg.backend, threads=cfg.threads, contract=cfg.contract)
    except BaseException:
        if own_detector and hasattr(detector, "close"):
            detector.close()
        raise
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(cfg, clf, detector, out, progress)
    t_start = time.perf_counter()
    try:
        if not sources:
            log.warning("%s: the folder holds no files; nothing to classify", cfg.source)
        usable = [s for s in sources if s.kind != "unknown"]
        for s in sources:
            if s.kind == "unknown":
                # Not an image or video by its name: try it as an image, and say so if it is not one.
                img = read_image(s.path)
                if img is None:
                    msg = f"not an image or video (extension {Path(s.path).suffix or 'none'})"
                    log.warning("%s: skipped: %s", s.path, msg)
                    run.sources.append(SourceResult(s.path, "unknown", "unreadable", msg))
                    continue
                usable.append(Source(s.path, "image", s.rel))
        if sources and not usable:
            log.warning("%s: no images or videos found among %d file(s)", cfg.source, len(sources))
        images = [s for s in usable if s.kind == "image"]
        iterator: Any = images
        if progress and len(images) > 1:
            from tqdm import tqdm

            iterator = tqdm(images, desc="images", unit="img")
        for s in iterator:
            run.sources.append(run.image(s))
        for s in (s for s in usable if s.kind in ("video", "camera")):
            run.sources.append(run.stream(s))
    finally:
        clf_info = clf.describe()
        det_info = detector.describe()
        clf.close()
        if own_detector and hasattr(detector, "close"):
            detector.close()
    elapsed = time.perf_counter() - t_start

    names = list(clf.class_names)
    outputs = {
        "predictions_csv": str(
            atomic_write_text(
                out / "predictions.csv",
                _csv_text(
                    [
                        "source",
                        "frame",
                        "face",
                        "x",
                        "y",
                        "w",
                        "h",
                        "detector_score",
                        "label",
                        "confidence",
                        *[f"p_{c}" for c in names],
                    ],
                    [
                        [
                            p.source,
                            p.frame,
                            p.face,
                            p.box.x,
                            p.box.y,
                            p.box.w,
                            p.box.h,
                            round(p.box.score, 4),
                            p.label,
                            round(p.confidence, 5),
                            *(round(v, 5) for v in p.probs),
                        ]
                        for p in run.predictions
                    ],
                ),
            )
        ),
        "frames_csv": str(
            atomic_write_text(
                out / "frames.csv",
                _csv_text(
                    [
                        "source",
                        "frame",
                        "faces",
                        "detect_ms",
                        "preprocess_ms",
                        "infer_ms",
                        "total_ms",
                        "width",
                        "height",
                        "detector",
                    ],
                    [
                        [
                            f.source,
                            f.frame,
                            f.faces,
                            round(f.detect_ms, 3),
                            round(f.preprocess_ms, 3),
                            round(f.infer_ms, 3),
                            round(f.total_ms, 3),
                            f.width,
                            f.height,
                            detector.name,
                        ]
                        for f in run.frames
                    ],
                ),
            )
        ),
    }
    summary = _summary(run, elapsed)
    body = {
        "format": "ferdeploy-infer/1",
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "model": clf_info,
        "detector": det_info,
        "summary": summary,
        "sources": [s.__dict__ for s in run.sources],
        "predictions": [
            {
                "source": p.source,
                "frame": p.frame,
                "face": p.face,
                "box": p.box.to_dict(),
                "label": p.label,
                "confidence": round(p.confidence, 5),
            }
            for p in run.predictions
        ],
        "outputs": outputs,
    }
    outputs["predictions_json"] = str(out / "predictions.json")
    atomic_write_json(out / "predictions.json", body)
    result = InferResult(tuple(run.sources), tuple(run.predictions), tuple(run.frames), outputs, summary)
    log.info(
        "%d face(s) classified in %d frame(s) from %d input(s) in %.1f s; per-frame latency p50 %s ms; outputs in %s",
        len(run.predictions),
        len(run.frames),
        len(run.sources),
        elapsed,
        f"{summary['latency_ms']['p50']:.2f}" if summary.get("latency_ms") else "–",
        out,
    )
    return result


def _summary(run: _Run, elapsed: float) -> dict[str, Any]:
    status: dict[str, int] = {}
    for s in run.sources:
        status[s.status] = status.get(s.status, 0) + 1
    labels: dict[str, int] = {}
    for p in run.predictions:
        labels[p.label] = labels.get(p.label, 0) + 1
    out: dict[str, Any] = {
        "inputs": len(run.sources),
        "status": status,
        "frames": len(run.frames),
        "faces": len(run.predictions),
        "labels": labels,
        "elapsed_s": round(elapsed, 3),
    }
    if run.frames:
        from runtime.latency import summarize

        for key, attr in (("latency_ms", "total_ms"), ("detect_ms", "detect_ms"), ("infer_ms", "infer_ms")):
            st = summarize(np.array([getattr(f, attr) for f in run.frames], dtype=np.float64), batch=1)
            out[key] = {
                "p50": st.p50_ms,
                "p90": st.p90_ms,
                "p99": st.p99_ms,
                "mean": st.mean_ms,
                "max": st.max_ms,
                "p50_ci": list(st.p50_ci_ms),
                "count": st.count,
            }
    return out


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime infer",
        description="Detect faces, classify their expressions with an ONNX model or TensorRT engine, and write "
        "annotated images/videos plus per-face predictions and per-frame latency.",
        epilog=exit_codes_help("infer"),
    )
    p.add_argument("--model", required=True, help="model.onnx (ONNX Runtime) or model.engine (TensorRT)")
    p.add_argument("--source", required=True, help="image, folder (recursive), video file, or camera index (0)")
    p.add_argument("--out", default="runs/infer", help="output folder (default runs/infer)")
    p.add_argument(
        "--detector",
        default="auto",
        choices=DETECTORS,
        help="face detector (default auto: yunet with --detector-model, else mtcnn, the shipped CNN; "
        "haar is OpenCV's cascade, a fallback)",
    )
    p.add_argument("--no-detect", action="store_true", help="inputs are pre-cropped faces (same as --detector none)")
    p.add_argument("--detector-model", default=None, help="YuNet face_detection_yunet_*.onnx for --detector yunet")
    p.add_argument("--cascade", default=None, help="Haar cascade XML (default OpenCV's frontal-face cascade)")
    p.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="grow each face box by this fraction per side to match the training crops' framing (default 0.1)",
    )
    p.add_argument(
        "--min-face",
        type=float,
        default=MIN_FACE,
        help=f"smallest face: below 1 a fraction of the image's shorter side, from 1 up pixels of the "
        f"original image (default {MIN_FACE})",
    )
    p.add_argument(
        "--detect-size",
        type=int,
        default=WORK_SIDE,
        help=f"detection runs on a copy whose longer side is at most this many pixels, boxes mapped back "
        f"(default {WORK_SIDE}; bounds time and memory on any image size)",
    )
    p.add_argument(
        "--detector-backend",
        default="ort",
        help="backend of the mtcnn networks: ort (CPU, default), ort-cuda or ort-trt on a GPU",
    )
    p.add_argument("--backend", default=None, help="runtime backend (default ort for .onnx, trt for .engine)")
    p.add_argument(
        "--contract", default=None, help="for an .engine: the ONNX whose contract it uses (default: from its sidecar)"
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop a video/camera after N processed frames")
    p.add_argument("--every", type=int, default=1, help="process every N-th video frame (default 1)")
    p.add_argument("--codec", default="mp4v", help="FourCC of annotated videos (default mp4v; falls back to MJPG .avi)")
    p.add_argument("--no-annotate", action="store_true", help="write predictions only, no annotated images/videos")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_flags(p, threads=True)
    return p


@cli_entry(argv_start=2)
def infer_main(argv: list[str]) -> int:
    """``python -m runtime infer ...`` (``argv`` excludes the verb); exit codes in docs/errors.md."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = InferConfig(
        model=args.model,
        source=args.source,
        out=args.out,
        detector="none" if args.no_detect else args.detector,
        detector_model=args.detector_model,
        cascade=args.cascade,
        margin=args.margin,
        min_face=args.min_face,
        detect_size=args.detect_size,
        detector_backend=args.detector_backend,
        backend=args.backend,
        threads=args.threads,
        contract=args.contract,
        max_frames=args.max_frames,
        every=args.every,
        codec=args.codec,
        annotate=not args.no_annotate,
    )
    with output_lock(cfg.out, "inference run"):
        result = run_infer(cfg, progress=not args.no_progress)
    code = result.exit_code
    if code == EXIT_NOTHING:
        log.error(
            "nothing was classified (%s); see %s",
            ", ".join(f"{k}: {v}" for k, v in result.summary["status"].items()) or "no inputs",
            result.outputs.get("predictions_json"),
        )
    elif code == EXIT_PARTIAL:
        bad = [s.source for s in result.sources if s.status in ("unreadable", "error")]
        log.warning(
            "%d input(s) could not be read: %s", len(bad), ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else "")
        )
    return code
