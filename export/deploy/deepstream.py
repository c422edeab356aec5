"""DeepStream: a Gst-nvinfer secondary-classifier config derived from the deployment contract.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on uint8 pixels, with ONE scale for
every channel and one offset per channel. The contract computes ``y = (x * scale - mean[c]) /
std[c]``. So ``offsets[c] = mean[c] / scale`` and ``net-scale-factor = scale / std`` are exact when
every channel has the same std; per-channel std has no exact form (`map_contract` picks the scale
with the smallest worst-case error and says how large it is). Colour: ``model-color-format`` 0
RGB, 1 BGR, 2 GRAY. Resize: ``stretch`` -> ``maintain-aspect-ratio=0``; ``letterbox`` ->
``maintain-aspect-ratio=1`` + ``symmetric-padding=1`` (nvinfer truncates the scaled size where the
contract rounds it: approximate); ``center_crop`` has no nvinfer equivalent. Interpolation:
``scaling-filter`` 0 nearest, 1 bilinear; OpenCV's ``area`` has none.

nvinfer's default classifier parser reads a softmax output (probabilities in [0, 1]) and keeps
the top class when its probability exceeds ``classifier-threshold`` (which must be >= 0), so the
deployed ONNX is the model with a Softmax appended (`softmax_model`); the arg-max is unchanged.
The engine nvinfer builds from ``onnx-file`` is written as ``<onnx-file>_b<batch>_gpu<id>_<mode>.engine``
(nvdsinfer's naming); ``model-engine-file`` names exactly that file, so the engine is built at the
first start and reused afterwards.

Key names and value ranges follow nvinfer's config parser (gstnvinfer_property_parser.h/.cpp);
tests/export/test_deploy.py checks the written file against that table.
"""

from __future__ import annotations

import configparser
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ConfigError, ExportError
from runtime.preprocess import PreprocessSpec

NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}
MODE_NAME = {0: "fp32", 1: "int8", 2: "fp16"}  # nvdsinfer's networkMode2Str, used in the engine file name
COLOR_FORMAT = {"rgb": 0, "bgr": 1, "gray": 2}
SCALING_FILTER = {"nearest": 0, "linear": 1}
CONFIG_NAME = "nvinfer_config.txt"
LABELS_NAME = "labels.txt"
PROBS_NAME = "probabilities"


@dataclass(frozen=True)
class NvinferPreprocess:
    """nvinfer's preprocessing keys for one contract, and how faithful they are.

    Attributes:
        color_format: ``model-color-format``.
        net_scale_factor: ``net-scale-factor``.
        offsets: ``offsets`` (one per channel).
        maintain_aspect_ratio: ``maintain-aspect-ratio`` (0/1).
        symmetric_padding: ``symmetric-padding`` (0/1).
        scaling_filter: ``scaling-filter``.
        approximations: What nvinfer cannot express exactly (empty: exact).
        worst_case_normalisation_error: Largest |y_nvinfer - y_contract| over every pixel value 0..255
            and channel from the single scale (0.0 when the std is uniform).
    """

    color_format: int
    net_scale_factor: float
    offsets: tuple[float, ...]
    maintain_aspect_ratio: int
    symmetric_padding: int
    scaling_filter: int
    approximations: tuple[str, ...] = field(default=())
    worst_case_normalisation_error: float = 0.0

    @property
    def exact(self) -> bool:
        return not self.approximations


def _single_scale(a: Sequence[float], spans: Sequence[float]) -> float:
    """The k minimising max_c |a_c - k| * span_c (a piecewise-linear convex function: check its kinks)."""
    candidates = list(a)
    for i, j in itertools.combinations(range(len(a)), 2):
        if spans[i] + spans[j] > 0:
            candidates.append((a[i] * spans[i] + a[j] * spans[j]) / (spans[i] + spans[j]))
    return min(candidates, key=lambda k: max(abs(ai - k) * s for ai, s in zip(a, spans)))


def map_contract(spec: PreprocessSpec) -> NvinferPreprocess:
    """The nvinfer keys reproducing ``spec``, with every approximation named.

    Raises:
        ConfigError: a contract nvinfer cannot run at all (a zero scale, an unknown colour mode).
    """
    mode = getattr(spec.color_mode, "value", str(spec.color_mode))
    if mode not in COLOR_FORMAT:
        raise ConfigError(f"colour mode {mode!r} has no nvinfer model-color-format (valid: {sorted(COLOR_FORMAT)})")
    if spec.scale == 0:
        raise ConfigError("the contract's scale is 0: every pixel maps to the same value; nvinfer cannot express it")
    c = spec.channels
    mean = list(spec.mean) * (c if len(spec.mean) == 1 else 1)
    std = list(spec.std) * (c if len(spec.std) == 1 else 1)
    a = [spec.scale / s for s in std]  # per-channel multiplier on (x - offset)
    offsets = [m / spec.scale for m in mean]
    spans = [max(abs(0.0 - o), abs(255.0 - o)) for o in offsets]  # largest |x - offset| over uint8 x
    approximations: list[str] = []
    if max(a) - min(a) <= 1e-12 * max(abs(v) for v in a):
        k, worst = a[0], 0.0
    else:
        k = _single_scale(a, spans)
        worst = max(abs(ai - k) * s for ai, s in zip(a, spans))
        approximations.append(
            f"per-channel std {tuple(spec.std)}: nvinfer has one net-scale-factor for all channels; "
            f"{k!r} (the scale with the smallest worst case) is off by up to {worst:.4g} in the model's input units "
            f"(channel multipliers should be {[float(v) for v in a]})"
        )
    resize = getattr(spec.resize, "value", str(spec.resize))
    if resize == "stretch":
        mar, sym = 0, 0
    elif resize == "letterbox":
        mar, sym = 1, 1
        approximations.append(
            "letterbox: nvinfer (maintain-aspect-ratio=1, symmetric-padding=1) truncates the scaled "
            "size where the contract rounds it, so some crop shapes differ by one row or column"
        )
    else:
        mar, sym = 0, 0
        approximations.append(
            f"resize {resize!r}: nvinfer has no centre crop; it stretches the crop to the network size "
            "(maintain-aspect-ratio=0) instead"
        )
    if spec.interpolation in SCALING_FILTER:
        filt = SCALING_FILTER[spec.interpolation]
    else:
        filt = SCALING_FILTER["linear"]
        approximations.append(
            f"interpolation {spec.interpolation!r}: nvinfer has no area filter; bilinear "
            "(scaling-filter=1) is used instead"
        )
    return NvinferPreprocess(
        COLOR_FORMAT[mode],
        float(k),
        tuple(float(o) for o in offsets),
        mar,
        sym,
        filt,
        tuple(approximations),
        float(worst),
    )


def engine_file_name(onnx_name: str, batch: int, gpu_id: int, mode: int) -> str:
    """The engine nvinfer writes after building from ``onnx_name`` (nvdsinfer_model_builder's suggestedPathName)."""
    return f"{onnx_name}_b{batch}_gpu{gpu_id}_{MODE_NAME[mode]}.engine"


def label_line(class_names: Sequence[str]) -> str:
    """nvinfer's classifier label format: one line per output layer, labels separated by ';'."""
    bad = [n for n in class_names if ";" in n or "\n" in n or "\r" in n or not n.strip()]
    if bad:
        raise ConfigError(
            f"class names {bad} cannot go into an nvinfer label file (';' separates labels, a newline "
            "separates output layers); rename the classes and re-export the model"
        )
    return ";".join(class_names) + "\n"


def parse_labels(text: str) -> list[list[str]]:
    """Read a label file the way nvdsinfer's parseLabelsFile does (non-empty lines split on ';')."""
    return [line.split(";") for line in text.split("\n") if line]


def _fmt(v: float) -> str:
    return repr(float(v)) if not float(v).is_integer() else str(int(v)) if abs(v) < 1e15 else repr(float(v))


@dataclass(frozen=True)
class NvinferSettings:
    """The non-preprocessing keys of a secondary face classifier."""

    onnx_file: str
    batch_size: int
    network_mode: int
    input_dims: tuple[int, int, int]
    gpu_id: int = 0
    gie_unique_id: int = 2
    operate_on_gie_id: int = 1
    operate_on_class_ids: tuple[int, ...] = (0,)
    classifier_threshold: float = 0.0
    output_blob: str = PROBS_NAME

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(
                f"--batch-size must be in 1..1024 (nvinfer's NVDSINFER_MAX_BATCH_SIZE), got {self.batch_size}"
            )
        if self.gie_unique_id <= 0 or self.operate_on_gie_id <= 0:
            raise ConfigError(
                f"gie ids must be > 0, got gie-unique-id {self.gie_unique_id}, detector {self.operate_on_gie_id}"
            )
        if self.gie_unique_id == self.operate_on_gie_id:
            raise ConfigError(
                f"--gie-id {self.gie_unique_id} is the face detector's id too; give the classifier its own id"
            )
        if self.gpu_id < 0 or any(i < 0 for i in self.operate_on_class_ids):
            raise ConfigError("--gpu-id and --face-class-id must be >= 0")
        if not (math.isfinite(self.classifier_threshold) and 0.0 <= self.classifier_threshold < 1.0):
            raise ConfigError(
                f"--classifier-threshold is a softmax probability in [0, 1), got {self.classifier_threshold}"
            )


def config_text(pre: NvinferPreprocess, s: NvinferSettings, *, header: Sequence[str] = ()) -> str:
    """The ``[property]`` group nvinfer reads (paths relative to the config file)."""
    c, h, w = s.input_dims
    lines = [f"# {line}" for line in header]
    keys: list[tuple[str, str, str]] = [
        ("gpu-id", str(s.gpu_id), ""),
        ("onnx-file", s.onnx_file, "the contract-carrying model with a Softmax appended"),
        (
            "model-engine-file",
            engine_file_name(s.onnx_file, s.batch_size, s.gpu_id, s.network_mode),
            "the name nvinfer gives the engine it builds from onnx-file: built at the first start, reused after",
        ),
        ("labelfile-path", LABELS_NAME, "class names in logit order"),
        ("batch-size", str(s.batch_size), "faces per inference call"),
        ("network-mode", str(s.network_mode), "0 FP32, 1 INT8 (Q/DQ graph), 2 FP16"),
        ("network-type", "1", "classifier"),
        ("process-mode", "2", "secondary: runs on the objects of the primary GIE"),
        ("gie-unique-id", str(s.gie_unique_id), ""),
        ("operate-on-gie-id", str(s.operate_on_gie_id), "the face detector's gie-unique-id"),
        ("operate-on-class-ids", ";".join(map(str, s.operate_on_class_ids)), "the detector's face class"),
        ("classifier-threshold", _fmt(s.classifier_threshold), "0: always report the top-1 class"),
        ("output-blob-names", s.output_blob, ""),
        ("infer-dims", f"{c};{h};{w}", "C;H;W"),
        ("network-input-order", "0", "NCHW"),
        ("model-color-format", str(pre.color_format), "0 RGB, 1 BGR, 2 GRAY"),
        ("net-scale-factor", repr(float(pre.net_scale_factor)), "y = net-scale-factor * (x - offsets)"),
        ("offsets", ";".join(repr(float(o)) for o in pre.offsets), ""),
        ("maintain-aspect-ratio", str(pre.maintain_aspect_ratio), ""),
        ("symmetric-padding", str(pre.symmetric_padding), ""),
        ("scaling-filter", str(pre.scaling_filter), "0 nearest, 1 bilinear"),
        ("scaling-compute-hw", "0", "platform default (VIC on Jetson, GPU on dGPU)"),
    ]
    lines.append("[property]")
    for key, value, note in keys:
        if note:
            lines.append(f"# {note}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def parse_config(text: str) -> dict[str, str]:
    """The ``[property]`` group of an nvinfer config file, as written (GKeyFile-like: ``key=value``, ``#`` comments)."""
    cp = configparser.ConfigParser(
        delimiters=("=",), comment_prefixes=("#",), inline_comment_prefixes=None, interpolation=None, strict=True
    )
    cp.optionxform = str  # type: ignore[assignment,method-assign]  # nvinfer keys are case-sensitive
    try:
        cp.read_string(text)
    except configparser.Error as exc:
        raise ExportError(f"the written nvinfer config does not parse ({exc}); this is a bug") from exc
    if "property" not in cp:
        raise ExportError("the written nvinfer config has no [property] group; this is a bug")
    return dict(cp["property"])


@dataclass(frozen=True)
class ParsedNvinfer:
    """The preprocessing nvinfer will apply, read back from a written config (`from_config`)."""

    color_format: int
    net_scale_factor: float
    offsets: tuple[float, ...]
    infer_dims: tuple[int, int, int]
    maintain_aspect_ratio: bool
    symmetric_padding: bool
    scaling_filter: int
    classifier_threshold: float
    output_blob: str
    labels_file: str

    @classmethod
    def from_config(cls, props: Mapping[str, str]) -> ParsedNvinfer:
        def b(key: str) -> bool:
            return props.get(key, "0").strip().lower() in ("1", "true")

        dims = tuple(int(v) for v in props["infer-dims"].split(";") if v)
        if len(dims) != 3:
            raise ExportError(f"infer-dims {props['infer-dims']!r} is not C;H;W")
        return cls(
            color_format=int(props.get("model-color-format", "0")),
            net_scale_factor=float(props.get("net-scale-factor", "1")),
            offsets=tuple(float(v) for v in props.get("offsets", "").split(";") if v),
            infer_dims=dims,  # type: ignore[arg-type]
            maintain_aspect_ratio=b("maintain-aspect-ratio"),
            symmetric_padding=b("symmetric-padding"),
            scaling_filter=int(props.get("scaling-filter", "0")),
            classifier_threshold=float(props.get("classifier-threshold", "0")),
            output_blob=props.get("output-blob-names", "").split(";")[0],
            labels_file=props.get("labelfile-path", ""),
        )


def softmax_model(
    onnx_path: Path, out: Path, logits: str, extra_props: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Write ``onnx_path`` with ``Softmax(logits)`` as its only output (``probabilities``, float32).

    The contract in ``metadata_props`` is kept (plus ``extra_props``). Returns what changed.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    g = model.graph
    out_vi = next((o for o in g.output if o.name == logits), None)
    if out_vi is None:
        raise ExportError(f"{onnx_path}: no output named {logits!r}")
    names = {n for node in g.node for n in (*node.input, *node.output)} | {i.name for i in g.input}
    probs = PROBS_NAME
    while probs in names:
        probs = "_" + probs
    src = logits
    elem = out_vi.type.tensor_type.elem_type
    if elem != TensorProto.FLOAT:  # nvinfer's default classifier parser reads FP32 outputs only
        cast = logits + "_fp32"
        g.node.append(helper.make_node("Cast", [logits], [cast], to=TensorProto.FLOAT, name="deploy_cast_fp32"))
        src = cast
    rank = len(out_vi.type.tensor_type.shape.dim) or 2
    g.node.append(
        helper.make_node("Softmax", [src], [probs], axis=rank - 1 if rank == 2 else -1, name="deploy_softmax")
    )
    dims = [d.dim_param or d.dim_value or "batch" for d in out_vi.type.tensor_type.shape.dim] or ["batch", 0]
    dropped = [o.name for o in g.output]
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(probs, TensorProto.FLOAT, dims))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(extra_props or {})
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    from export.gate import write_onnx

    # The one artifact gate (onnx.checker full check + preflight); nothing is written on failure.
    write_onnx(model, out, stage="export deploy (deepstream)", target="tensorrt")
    return {"appended": f"Softmax({src}) -> {probs}", "outputs_replaced": dropped, "output": probs}
