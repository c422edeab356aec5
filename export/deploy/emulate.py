"""Does the written config reproduce the contract? A numpy emulation, run on sample face crops.

DeepStream: `nvinfer_input` redoes nvinfer's preprocessing from the config file read back from
disk (`export.deploy.deepstream.ParsedNvinfer`): the object crop's width and height rounded down
to even numbers (nvinfer's GST_ROUND_DOWN_2), the conversion to the network's colour format (GRAY8
with the BT.601 weights OpenCV uses, or a channel swap for BGR), the scaling to ``infer-dims``
(stretched, or with the aspect ratio kept: nvinfer's truncated size, black padding on the right
and bottom or on both sides with ``symmetric-padding``), then ``net-scale-factor * (x - offsets)``
in float32. Triton: `triton_input` builds the request the client sends (the contract's tensor,
cast to the config's ``data_type`` and checked against its dims and batch limit).

Both are compared with `runtime.preprocess.preprocess` (the one implementation training used):
max |input difference|, and top-1 agreement of the model (onnxruntime, `runtime.backends`), the
emulated DeepStream side through nvinfer's classifier rule (the top softmax probability above
``classifier-threshold``, its label from the label file as nvinfer parses it).

What this cannot show: the device's resampling kernels (VIC on Jetson, CUDA on a dGPU) are
emulated with OpenCV's nearest/bilinear, and the TensorRT engine is not run. Crops at the network
size involve no resampling, so their comparison covers everything but the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.deploy.deepstream import ParsedNvinfer, parse_labels
from runtime.preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)

_CV_FILTER = {0: cv2.INTER_NEAREST, 1: cv2.INTER_LINEAR}


@dataclass(frozen=True)
class SampleSet:
    """Face crops of one kind: ``network`` size, ``even`` other sizes, ``odd`` sizes (nvinfer drops a row/column)."""

    name: str
    images: tuple[np.ndarray, ...]
    description: str
    counts_for_verdict: bool = True


def sample_sets(spec: PreprocessSpec, count: int = 48, seed: int = 0) -> tuple[SampleSet, ...]:
    """Synthetic RGB face crops (runtime.data.synthetic, torch-free): at the network size, and resized.

    The off-size crops are the rendered faces stretched to other (non-square) sizes: even sizes
    (what nvinfer scales as is) and odd sizes (nvinfer first drops the last row/column).
    """
    from runtime.data.synthetic import SynthConfig, render

    h, w = spec.input_size
    side = max(16, h, w)
    cfg = SynthConfig(count=max(count, 1), seed=seed, size=side, mode="rgb")
    faces = [render(i, cfg)[0] for i in range(count)]
    rng = np.random.default_rng(seed)

    def sized(img: np.ndarray, hh: int, ww: int) -> np.ndarray:
        return img if img.shape[:2] == (hh, ww) else cv2.resize(img, (ww, hh), interpolation=cv2.INTER_LINEAR)

    network = tuple(sized(f, h, w) for f in faces)
    n_off = max(1, count // 2)
    even, odd = [], []
    for i in range(n_off):
        eh, ew = (int(v) * 2 for v in rng.integers(max(4, h // 4), max(8, h), size=2))
        even.append(sized(faces[i], eh, ew))
        oh, ow = (int(v) * 2 + 1 for v in rng.integers(max(4, h // 4), max(8, h), size=2))
        odd.append(sized(faces[-1 - i], oh, ow))
    return (
        SampleSet("network", network, f"{count} synthetic faces at the network size {h}x{w} (no resampling)"),
        SampleSet("even", tuple(even), f"{n_off} crops of even, other sizes (resampled to {h}x{w})"),
        SampleSet(
            "odd",
            tuple(odd),
            f"{n_off} crops of odd sizes (nvinfer first drops the last row/column)",
            counts_for_verdict=False,
        ),
    )


def _to_format(img: np.ndarray, color_format: int) -> np.ndarray:
    if color_format == 2:  # GRAY8
        return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    if color_format == 1:  # BGR
        return np.ascontiguousarray(img[:, :, ::-1])
    return img


def nvinfer_input(images: Sequence[np.ndarray], cfg: ParsedNvinfer) -> np.ndarray:
    """The float32 NCHW batch nvinfer would feed the engine for these RGB object crops."""
    c, h, w = cfg.infer_dims
    interp = _CV_FILTER.get(cfg.scaling_filter, cv2.INTER_LINEAR)
    nsf = np.float32(cfg.net_scale_factor)
    offsets = np.asarray(cfg.offsets or (0.0,), dtype=np.float32)
    offsets = (np.resize(offsets, c) if offsets.size != c else offsets).reshape(c, 1, 1)
    out = np.empty((len(images), c, h, w), dtype=np.float32)
    for i, img in enumerate(images):
        sh, sw = img.shape[0] - img.shape[0] % 2, img.shape[1] - img.shape[1] % 2  # GST_ROUND_DOWN_2
        crop = _to_format(img[:sh, :sw], cfg.color_format)
        if not cfg.maintain_aspect_ratio:
            scaled = crop if crop.shape[:2] == (h, w) else cv2.resize(crop, (w, h), interpolation=interp)
        else:
            hdest = w * sh / sw
            if hdest <= h:
                dw, dh = w, int(hdest)
            else:
                dw, dh = int(h * sw / sh), h
            dw, dh = max(dw, 1), max(dh, 1)
            small = crop if crop.shape[:2] == (dh, dw) else cv2.resize(crop, (dw, dh), interpolation=interp)
            scaled = np.zeros((h, w) + crop.shape[2:], dtype=np.uint8)
            top, left = ((h - dh) // 2, (w - dw) // 2) if cfg.symmetric_padding else (0, 0)
            scaled[top : top + dh, left : left + dw] = small
        chw = scaled[None] if scaled.ndim == 2 else scaled.transpose(2, 0, 1)
        out[i] = nsf * (chw.astype(np.float32) - offsets)
    return out


def contract_input(images: Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """The reference: the project's one preprocessing function."""
    return preprocess(list(images), spec)


def run_model(path: Path, input_name: str, x: np.ndarray, output: str, *, batch: int = 32) -> np.ndarray:
    """``output`` of the ONNX model at ``path`` on ``x`` (onnxruntime, CPU, one thread), in batches.

    A model with a fixed batch N is fed N at a time, the last call padded with copies of the last sample.
    """
    from runtime.backends import get_backend

    outs = []
    with get_backend("ort")(path, provider="cpu", threads=1) as backend:
        spec = next(s for s in backend.input_specs if s.name == input_name)
        fixed = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
        step = fixed or batch
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - n, axis=0)])
            outs.append(np.asarray(backend.infer({input_name: chunk})[output], dtype=np.float32)[:n])
    return np.concatenate(outs)


def nvinfer_top1(probs: np.ndarray, threshold: float, labels: Sequence[str]) -> list[str | None]:
    """nvinfer's default classifier rule: the top class if its probability > threshold, else no label."""
    out: list[str | None] = []
    for row in probs:
        best = int(np.argmax(row))
        out.append(labels[best] if row[best] > threshold and best < len(labels) else None)
    return out


def _summary(
    name: str,
    description: str,
    ref_x: np.ndarray,
    got_x: np.ndarray,
    ref_top: Sequence[str],
    got_top: Sequence[str | None],
    counts: bool,
) -> dict[str, Any]:
    diff = np.abs(ref_x.astype(np.float64) - got_x.astype(np.float64))
    agree = sum(a == b for a, b in zip(ref_top, got_top))
    return {
        "set": name,
        "description": description,
        "images": int(len(ref_top)),
        "max_abs_input_diff": float(diff.max()) if diff.size else 0.0,
        "mean_abs_input_diff": float(diff.mean()) if diff.size else 0.0,
        "top1_agreement": agree / max(1, len(ref_top)),
        "disagreements": int(len(ref_top) - agree),
        "unlabelled": int(sum(t is None for t in got_top)),
        "counts_for_verdict": counts,
    }


def check_deepstream(
    config_file: Path,
    sets: Sequence[SampleSet],
    *,
    spec: PreprocessSpec,
    reference_onnx: Path,
    input_name: str,
    logits: str,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """Per sample set: the emulated nvinfer input vs the contract's, and top-1 agreement.

    Everything nvinfer-side comes from the written files: the config (read back), the label file
    it names and the ONNX it names.
    """
    from export.deploy.deepstream import parse_config

    props = parse_config(config_file.read_text(encoding="utf-8"))
    cfg = ParsedNvinfer.from_config(props)
    labels = parse_labels((config_file.parent / cfg.labels_file).read_text(encoding="utf-8"))
    layer_labels = labels[0] if labels else []
    deployed = config_file.parent / props["onnx-file"]
    rows = []
    for s in sets:
        ref_x = contract_input(s.images, spec)
        got_x = nvinfer_input(s.images, cfg)
        ref_top = [class_names[i] for i in run_model(reference_onnx, input_name, ref_x, logits).argmax(1)]
        probs = run_model(deployed, input_name, got_x, cfg.output_blob)
        rows.append(
            _summary(
                s.name,
                s.description,
                ref_x,
                got_x,
                ref_top,
                nvinfer_top1(probs, cfg.classifier_threshold, layer_labels),
                s.counts_for_verdict,
            )
        )
    return rows


def triton_input(images: Sequence[np.ndarray], spec: PreprocessSpec, cfg: Any) -> np.ndarray:
    """The request tensor a client sends: the contract's batch cast to the config's type, checked against its dims."""
    from export.deploy.triton import NUMPY_TYPES, model_config_pb2

    pb = model_config_pb2()
    x = contract_input(images, spec)
    inp = cfg.input[0]
    dtype = NUMPY_TYPES[pb.DataType.Name(inp.data_type)]
    dims = list(inp.dims) if cfg.max_batch_size > 0 else list(inp.dims)[1:]  # max_batch_size 0: dims hold the batch
    if list(x.shape[1:]) != dims:
        from runtime.errors import ExportError

        raise ExportError(
            f"the client's tensor {list(x.shape)} does not fit the config's dims {list(inp.dims)} "
            f"(max_batch_size {cfg.max_batch_size}); this is a bug"
        )
    return x.astype(dtype)


def check_triton(
    model_dir: Path,
    cfg: Any,
    sets: Sequence[SampleSet],
    *,
    spec: PreprocessSpec,
    reference_onnx: Path,
    run_onnx: Path,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """Per sample set: the client's request vs the contract's input, and top-1 through the model with the config's labels."""
    inp, logits = cfg.input[0].name, next(o for o in cfg.output if o.label_filename)
    labels = (model_dir / logits.label_filename).read_text(encoding="utf-8").splitlines()
    batch = cfg.max_batch_size if cfg.max_batch_size > 0 else None
    rows = []
    for s in sets:
        ref_x = contract_input(s.images, spec)
        sent = triton_input(s.images, spec, cfg)
        ref_top = [class_names[i] for i in run_model(reference_onnx, inp, ref_x, logits.name).argmax(1)]
        out = run_model(run_onnx, inp, sent, logits.name, batch=batch or 32)  # a fixed batch: padded requests
        got_top: list[str | None] = [labels[i] if i < len(labels) else None for i in out.argmax(1)]
        rows.append(
            _summary(s.name, s.description, ref_x, sent, ref_top, got_top, True)
        )  # the client resizes as the contract
    return rows


def verdict(rows: Sequence[Mapping[str, Any]], tol: float = 1e-6) -> dict[str, Any]:
    """Worst figures over the sets that count (network-size and even crops)."""
    counted = [r for r in rows if r["counts_for_verdict"]] or list(rows)
    worst = max((r["max_abs_input_diff"] for r in counted), default=0.0)
    agree = min((r["top1_agreement"] for r in counted), default=1.0)
    return {
        "max_abs_input_diff": worst,
        "top1_agreement": agree,
        "tolerance": tol,
        "matches": bool(worst <= tol and agree == 1.0),
    }
