"""MTCNN face detection (Zhang et al. 2016) in numpy on the shipped ONNX networks.

The three networks (``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` beside this file, ~2 MB together,
exported by ``scripts/export_mtcnn.py`` from the authors' trained weights; licences in
``mtcnn.json`` and docs/jetson.md) run through the project's backend protocol
(`runtime.backends`): ONNX Runtime on the CPU here, ``ort-cuda`` / ``ort-trt`` on a GPU. The
cascade around them is numpy and OpenCV:

1. image pyramid: scales ``12 / min_face × 0.709^k`` down to a 12-pixel image side;
2. P-Net on each level (fully convolutional, 12-pixel cells at stride 2) -> candidates scoring
   >= ``thresholds[0]``, NMS 0.5 per level, NMS 0.7 across levels, box regression, squared;
3. R-Net on 24×24 crops (zero padding outside the image) -> score >= ``thresholds[1]``, NMS 0.7,
   regression, squared;
4. O-Net on 48×48 crops -> score >= ``thresholds[2]``, regression, NMS 0.7 on the smaller area.

`MtcnnNets.detect_rgb` works on whatever image it is given; the working-size resize (bounded
memory and time on any input size) and the relative minimum face size live in
`runtime.detect.MtcnnDetector`, shared with the other detectors.

No torch; numpy, OpenCV and a runtime backend only.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from runtime.errors import ArtifactError, ConfigError, MissingDependencyError

log = logging.getLogger(__name__)

MODEL_DIR = Path(__file__).resolve().parent / "mtcnn"
NETS = ("pnet", "rnet", "onet")
PYRAMID_FACTOR = 0.709
CELL, STRIDE = 12, 2
# R-Net / O-Net batches are cut into chunks of this many crops (bounded memory whatever the count).
CHUNK = 256


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression; indices kept, best first.

    ``mode="union"``: overlap = intersection / union; ``"min"``: intersection / smaller area
    (drops a box nested in a larger one).
    """
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if mode == "min" else area[i] + area[rest] - inter
        overlap = inter / np.maximum(denom, 1e-9)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def regress(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply the networks' offsets (fractions of the box width/height) to (x1, y1, x2, y2) boxes."""
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    return boxes[:, :4] + reg[:, :4] * np.concatenate([w, h, w, h], axis=1)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre (side = the longer side)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    cx, cy = boxes[:, 0] + w / 2, boxes[:, 1] + h / 2
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def crops(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(N, 3, size, size) float32 crops of ``image`` (H, W, 3) at integer ``boxes``, zero outside."""
    H, W = image.shape[:2]
    out = np.zeros((len(boxes), 3, size, size), dtype=np.float32)
    for k, (x1, y1, x2, y2) in enumerate(np.round(boxes[:, :4]).astype(np.int64)):
        bw, bh = max(1, x2 - x1), max(1, y2 - y1)
        patch = np.zeros((bh, bw, 3), dtype=image.dtype)
        sx0, sy0, sx1, sy1 = max(0, x1), max(0, y1), min(W, x1 + bw), min(H, y1 + bh)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y1 : sy1 - y1, sx0 - x1 : sx1 - x1] = image[sy0:sy1, sx0:sx1]
        interp = cv2.INTER_AREA if bw > size else cv2.INTER_LINEAR
        out[k] = cv2.resize(patch, (size, size), interpolation=interp).transpose(2, 0, 1)
    return out


def pyramid_scales(short_side: int, min_face: float, factor: float = PYRAMID_FACTOR) -> list[float]:
    """Scales at which a ``min_face``-pixel face fills P-Net's 12-pixel cell, down to a 12-pixel image."""
    m = CELL / max(float(min_face), 1e-6)
    scales, side = [], short_side * m
    while side >= CELL:
        scales.append(m)
        m *= factor
        side *= factor
    return scales


def make_backend(cls: Any, path: str | os.PathLike, opts: dict[str, Any]) -> Any:
    """``cls(path, **opts)``; with more than one thread, ORT's intra-op spin-waiting is turned off.

    Each network has its own ORT thread pool: with spinning on (ORT's default) the pool that just
    ran keeps its threads busy-waiting while the next network runs, and on 2 cores MTCNN took
    156 ms per 640×480 frame with 2 threads against 40 ms with spinning off (BENCHMARKS.md). The
    ``spinning`` option is used where the ORT backend offers it. `runtime.infer` builds its
    classifier with this too, so that the classifier's pool does not spin while the detector runs.
    """
    from runtime.backends.ort import default_threads

    threads = int(opts.get("threads") or default_threads())
    if threads > 1:
        try:
            return cls(path, **opts, spinning=False)
        except ConfigError as exc:
            if "spinning" not in str(exc):
                raise
            log.debug("this ORT backend has no 'spinning' option; its threads spin-wait between calls")
    return cls(path, **opts)


class MtcnnNets:
    """The three loaded networks plus the cascade.

    Args:
        model_dir: Folder with ``pnet.onnx``, ``rnet.onnx``, ``onet.onnx`` (default: the shipped ones).
        backend: Backend name (`runtime.backends`): ``ort`` (default), ``ort-cuda``, ``ort-trt``.
        threads: CPU intra-op threads for the ONNX Runtime backends (default: OMP_NUM_THREADS or 1).
        thresholds: P-Net, R-Net, O-Net face-probability thresholds.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        *,
        backend: str = "ort",
        threads: int | None = None,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.8),
    ) -> None:
        from runtime.backends import get_backend

        self.dir = Path(model_dir) if model_dir else MODEL_DIR
        missing = [n for n in NETS if not (self.dir / f"{n}.onnx").is_file()]
        if missing:
            raise ArtifactError(
                f"{self.dir}: MTCNN network file(s) {missing} missing (expected pnet.onnx, rnet.onnx, "
                "onet.onnx; regenerate them with scripts/export_mtcnn.py or reinstall the package)"
            )
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise ConfigError(f"MTCNN thresholds must be three probabilities in (0, 1), got {thresholds}")
        if not backend.startswith("ort"):
            raise ConfigError(
                f"--detector-backend {backend!r}: the MTCNN networks run on ONNX Runtime backends (ort on the "
                "CPU, ort-cuda or ort-trt on a GPU); P-Net takes any image size, which a prebuilt "
                "TensorRT engine does not"
            )
        cls = get_backend(backend)
        reason = cls.unavailable_reason()
        if reason:
            raise MissingDependencyError(f"detector backend {backend!r} is not available here: {reason}")
        opts = {"threads": threads} if threads else {}
        self.backend_name = backend
        self.nets = {n: make_backend(cls, self.dir / f"{n}.onnx", opts).load() for n in NETS}
        self.thresholds = tuple(float(t) for t in thresholds)

    def _run(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.nets[net].infer({"input": np.ascontiguousarray(x, dtype=np.float32)})

    def _batched(self, net: str, x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self._run(net, x[s : s + CHUNK]) for s in range(0, len(x), CHUNK)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def detect_rgb(self, rgb: np.ndarray, min_face: float) -> np.ndarray:
        """Faces in an RGB uint8 image as an (N, 5) array: x1, y1, x2, y2, score (pixels of ``rgb``).

        ``min_face`` is the smallest face side in pixels of ``rgb`` (12 at least: P-Net's cell).
        """
        H, W = rgb.shape[:2]
        t1, t2, t3 = self.thresholds
        found = []
        for s in pyramid_scales(min(H, W), max(float(min_face), CELL)):
            hs, ws = max(CELL, int(math.ceil(H * s))), max(CELL, int(math.ceil(W * s)))
            level = cv2.resize(rgb, (ws, hs), interpolation=cv2.INTER_AREA)
            out = self._run("pnet", level.transpose(2, 0, 1)[None].astype(np.float32))
            prob, reg = out["prob"][0, 1], out["reg"][0]
            yy, xx = np.nonzero(prob >= t1)
            if yy.size == 0:
                continue
            # Each cell maps back to a 12-pixel window at stride 2 of this level.
            b = np.stack(
                [
                    STRIDE * xx / s,
                    STRIDE * yy / s,
                    (STRIDE * xx + CELL) / s,
                    (STRIDE * yy + CELL) / s,
                    prob[yy, xx],
                    *reg[:, yy, xx],
                ],
                axis=1,
            )
            found.append(b[nms(b[:, :4], b[:, 4], 0.5)])
        if not found:
            return np.zeros((0, 5), np.float32)
        b = np.concatenate(found)
        b = b[nms(b[:, :4], b[:, 4], 0.7)]
        boxes, scores = square(regress(b[:, :4], b[:, 5:9])), b[:, 4]

        # R-Net
        out = self._batched("rnet", crops(rgb, boxes, 24))
        keep = out["prob"][:, 1] >= t2
        boxes, scores, reg = boxes[keep], out["prob"][keep, 1], out["reg"][keep]
        if len(boxes) == 0:
            return np.zeros((0, 5), np.float32)
        k = nms(boxes, scores, 0.7)
        boxes, scores = square(regress(boxes[k], reg[k])), scores[k]

        # O-Net
        out = self._batched("onet", crops(rgb, boxes, 48))
        keep = out["prob"][:, 1] >= t3
        boxes, scores = regress(boxes[keep], out["reg"][keep]), out["prob"][keep, 1]
        k = nms(boxes, scores, 0.7, mode="min")
        return np.concatenate([boxes[k], scores[k, None]], axis=1).astype(np.float32)

    def describe(self) -> dict[str, Any]:
        from runtime.artifacts import sha256_file

        return {
            "nets": {
                n: {"path": str(self.dir / f"{n}.onnx"), "sha256": sha256_file(self.dir / f"{n}.onnx")} for n in NETS
            },
            "backend": self.nets["pnet"].describe(),
            "thresholds": list(self.thresholds),
        }

    def close(self) -> None:
        for n in self.nets.values():
            n.close()
