"""Which precision each layer of a built engine really runs in (engine inspector JSON, 10.x and 11.x;
build log, TensorRT for RTX).

A strongly typed build follows the ONNX, but "follows" is only proven by looking: an INT8 Q/DQ
graph whose convolutions ended up in FP16 (a Q/DQ pair TensorRT could not fuse, a per-channel
activation scale...) is slower and not what was asked for. After each build the engine inspector
(built with ``ProfilingVerbosity.DETAILED``) lists every layer with its input/output tensors;
`parse_engine_information` reads it and `check_precision` fails the build when the requested
precision covers less than a threshold share of the convolution/GEMM layers.

The two schemas (told apart by content, so a report can be parsed on any machine):

- TensorRT 10.x: ``{"Layers": [...], "Bindings": ["input", "logits"]}``; each layer tensor has
  one ``"Format/Datatype"`` string such as ``"Row major linear FP32"`` or ``"Channel major FP16
  format where channel % 8 == 0"``.
- TensorRT 11.x: ``"Bindings"`` is replaced by ``"I/O Tensors"`` (objects with Name, IOMode,
  DataType, Dimensions, Location, ProfileInfo); layer tensors carry a separate data type
  (``"Datatype"``/``"DataType"``: ``Float``, ``Half``, ``Int8``...) and ``"Format"``.

- TensorRT for RTX (`parse_build_log`): no inspector without a GPU, but a build with detailed
  profiling verbosity logs, at VERBOSE severity, one ``Layers:`` message with one line per engine
  layer: ``Name: ..., LayerType: correlation|deconv|gemm|kgen|..., Inputs: [ { Name: ...,
  Dimensions: [...], ..., Datatype: Int8, Format: ... }], Constants: [...], Outputs: [...],
  TacticName: ..., StreamId: 0, Metadata: [ONNX Layer: /a/Conv][ONNX Layer: ...]``. Convolutions
  are ``correlation`` layers, ConvTransposes ``deconv``, GEMMs ``gemm`` or, compiled with their
  epilogue, ``runtime_fusion`` layers named ``__myl_Fc...`` (counted); ``kgen`` layers are
  generated pointwise kernels (not counted, although their metadata names the conv whose bias or
  activation they apply).

Layers are plain strings when the engine was built without detailed verbosity; that is an error
(there is nothing to check). No TensorRT import here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.trt.compat import TrtError

#: Smallest share of conv/GEMM layers that must run in the requested precision. INT8 is lower
#: because the recipes keep attention gates, SE Gemms and the first convolution in FP16 (docs/models.md §5).
DEFAULT_MIN_SHARE: Mapping[str, float] = {"fp32": 0.9, "fp16": 0.8, "int8": 0.5}

# Tokens inside format strings / data type names -> precision. Order matters: BFloat16 before
# Float, UInt8 is not Int8 (word boundaries).
_DTYPE_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\b(BFloat16|BF16)\b", "bf16"),
    (r"\b(FP8|Float8|E4M3)\b", "fp8"),
    (r"\b(FP4|E2M1)\b", "fp4"),
    (r"\b(FP16|Half|float16)\b", "fp16"),
    (r"\b(FP32|Float|float32|TF32)\b", "fp32"),
    (r"\b(UInt8|UINT8|uint8)\b", "uint8"),
    (r"\b(Int8|INT8|int8)\b", "int8"),
    (r"\b(Int4|INT4|int4)\b", "int4"),
    (r"\b(Int32|INT32|int32)\b", "int32"),
    (r"\b(Int64|INT64|int64)\b", "int64"),
    (r"\b(Bool|BOOL|bool)\b", "bool"),
)
_COMPUTE_PARAMETER_TYPES = {"convolution", "deconvolution", "matrixmultiply", "fullyconnected", "gemm"}
_COMPUTE_TYPE_WORDS = ("conv", "gemm", "matrixmultiply", "matmul", "fullyconnected", "correlation")
_NOT_COMPUTE_WORDS = ("quantize", "reformat", "shuffle", "copy")


def dtype_of(text: str | None) -> str:
    """``"Channel major FP16 format where channel % 8 == 0"`` -> ``fp16``; unknown -> ``unknown``."""
    if not text:
        return "unknown"
    for pattern, name in _DTYPE_PATTERNS:
        if re.search(pattern, str(text)):
            return name
    return "unknown"


@dataclass(frozen=True)
class LayerInfo:
    """One engine layer as the inspector reports it.

    Attributes:
        name: Layer name (fused layers join ONNX node names with " + ").
        layer_type: ``LayerType`` (the kernel family: CaskConvolution, gemm, Reformat...).
        parameter_type: ``ParameterType`` (Convolution, MatrixMultiply...) or "".
        precision: Precision of the first input (what the kernel reads), else weights, else output.
        compute: True for convolution / GEMM layers (what the precision share counts).
        input_dtypes: Precision of every input tensor.
        constant_dtypes: Precision of the layer's constants (weights, scales; RTX build log only).
        onnx_nodes: ONNX nodes fused into the layer (RTX build log only).
    """

    name: str
    layer_type: str
    parameter_type: str
    precision: str
    compute: bool
    input_dtypes: tuple[str, ...] = ()
    constant_dtypes: tuple[str, ...] = ()
    onnx_nodes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "layer_type": self.layer_type,
            "parameter_type": self.parameter_type,
            "precision": self.precision,
            "compute": self.compute,
            "input_dtypes": list(self.input_dtypes),
        }
        if self.constant_dtypes or self.onnx_nodes:
            d["constant_dtypes"] = list(self.constant_dtypes)
            d["onnx_nodes"] = list(self.onnx_nodes)
        return d


@dataclass(frozen=True)
class PrecisionReport:
    """Realized precision of an engine.

    Attributes:
        schema: ``"10"`` or ``"11"`` (inspector JSON generation), ``"rtx-log"`` (RTX build log).
        layers: Every layer.
        io_tensors: Engine input/output names.
    """

    schema: str
    layers: tuple[LayerInfo, ...]
    io_tensors: tuple[str, ...] = ()

    @property
    def compute_layers(self) -> tuple[LayerInfo, ...]:
        return tuple(layer for layer in self.layers if layer.compute)

    def counts(self) -> dict[str, int]:
        """Compute-layer count per precision."""
        return dict(Counter(layer.precision for layer in self.compute_layers))

    def share(self, precision: str) -> float:
        """Fraction of compute layers running in ``precision`` (0.0 when there are none)."""
        compute = self.compute_layers
        if not compute:
            return 0.0
        return sum(layer.precision == precision for layer in compute) / len(compute)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "compute_layers": len(self.compute_layers),
            "counts": self.counts(),
            "io_tensors": list(self.io_tensors),
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass(frozen=True)
class PrecisionCheck:
    """Outcome of `check_precision`."""

    requested: str
    share: float
    min_share: float
    passed: bool
    compute_layers: int
    counts: Mapping[str, int]
    offenders: tuple[str, ...]  # compute layers not in the requested precision: "name (fp16)"

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.requested} realized in {self.share:.0%} of {self.compute_layers} conv/GEMM layers "
            f"(need >= {self.min_share:.0%}; by precision {dict(self.counts)}): {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "share": self.share,
            "min_share": self.min_share,
            "passed": self.passed,
            "compute_layers": self.compute_layers,
            "counts": dict(self.counts),
            "offenders": list(self.offenders),
        }


class PrecisionNotRealizedError(TrtError):
    """The engine runs too few conv/GEMM layers in the requested precision."""

    def __init__(self, message: str, check: PrecisionCheck) -> None:
        super().__init__(message)
        self.check = check


def _tensor_dtype(tensor: Any) -> str:
    if not isinstance(tensor, Mapping):
        return "unknown"
    for key in ("Datatype", "DataType", "Data Type"):
        if key in tensor:
            found = dtype_of(str(tensor[key]))
            if found != "unknown":
                return found
    for key in ("Format/Datatype", "Format"):
        if key in tensor:
            found = dtype_of(str(tensor[key]))
            if found != "unknown":
                return found
    return "unknown"


def _is_compute(layer_type: str, parameter_type: str) -> bool:
    lt, pt = layer_type.lower(), parameter_type.lower()
    if any(word in lt or word in pt for word in _NOT_COMPUTE_WORDS):
        return False
    return pt in _COMPUTE_PARAMETER_TYPES or any(word in lt for word in _COMPUTE_TYPE_WORDS)


def _layer(raw: Mapping[str, Any]) -> LayerInfo:
    layer_type = str(raw.get("LayerType", ""))
    parameter_type = str(raw.get("ParameterType", ""))
    inputs = raw.get("Inputs") or []
    outputs = raw.get("Outputs") or []
    input_dtypes = tuple(_tensor_dtype(t) for t in inputs)
    precision = input_dtypes[0] if input_dtypes else "unknown"
    if precision == "unknown" and isinstance(raw.get("Weights"), Mapping):
        precision = dtype_of(str(raw["Weights"].get("Type", "")))
    if precision == "unknown" and outputs:
        precision = _tensor_dtype(outputs[0])
    return LayerInfo(
        name=str(raw.get("Name", "")),
        layer_type=layer_type,
        parameter_type=parameter_type,
        precision=precision,
        compute=_is_compute(layer_type, parameter_type),
        input_dtypes=input_dtypes,
    )


def parse_engine_information(info: str | Mapping[str, Any] | Sequence[Any]) -> PrecisionReport:
    """Parse ``EngineInspector.get_engine_information(LayerInformationFormat.JSON)`` output.

    Args:
        info: The JSON text, or the decoded object (a dict with ``Layers``, or a list of layers).

    Returns:
        A `PrecisionReport`.

    Raises:
        TrtError: when the text is not JSON, has no layers, or has layer names only (the engine
            was built without ``ProfilingVerbosity.DETAILED``).
    """
    if isinstance(info, (str, bytes)):
        try:
            info = json.loads(info)
        except json.JSONDecodeError as exc:
            raise TrtError(f"engine inspector output is not JSON ({exc}); ask for LayerInformationFormat.JSON") from exc
    if isinstance(info, Mapping):
        layers = info.get("Layers")
        if "I/O Tensors" in info:
            schema = "11"
            io = tuple(str(t.get("Name", "")) if isinstance(t, Mapping) else str(t) for t in info["I/O Tensors"])
        elif "Bindings" in info:
            schema = "10"
            io = tuple(str(b) for b in info["Bindings"])
        else:
            schema, io = "", ()
    elif isinstance(info, Sequence):
        layers, schema, io = list(info), "", ()
    else:
        raise TrtError(f"engine inspector output must be a JSON object or list, got {type(info).__name__}")
    if not isinstance(layers, list) or not layers:
        raise TrtError("engine inspector output has no 'Layers'; is this get_engine_information(JSON) output?")
    if not all(isinstance(layer, Mapping) for layer in layers):
        raise TrtError(
            "engine inspector lists layer names only: the engine was built without detailed profiling "
            "verbosity; rebuild (runtime.trt.build sets IBuilderConfig.profiling_verbosity = DETAILED)"
        )
    if not schema:
        first = next((t for layer in layers for t in (layer.get("Inputs") or []) if isinstance(t, Mapping)), {})
        schema = "10" if "Format/Datatype" in first else "11"
    return PrecisionReport(schema=schema, layers=tuple(_layer(layer) for layer in layers), io_tensors=io)


_TENSOR_RE = re.compile(r"\{([^{}]*)\}")
_TENSOR_NAME_RE = re.compile(r"Name: (.*?), (?:Dimensions|Datatype|Format):")
_TENSOR_DTYPE_RE = re.compile(r"Datatype: ([A-Za-z0-9_]+)")
_ONNX_NODE_RE = re.compile(r"\[ONNX Layer: ([^\]]*)\]")
_FUSED_COMPUTE_NAME_RE = re.compile(r"^__myl_(Fc|Conv|Gemm|MatMul|Mm|Bmm)")
_FUSED_COMPUTE_NODE_RE = re.compile(r"(^|/)(Gemm|MatMul|Conv|ConvTranspose)(_\d+)?$")
_LAYER_HEAD_RE = re.compile(r"^Name: (?P<name>.*?), LayerType: (?P<type>[^,]*), Inputs: \[(?P<rest>.*)$")


def _log_tensors(section: str) -> list[tuple[str, str]]:
    out = []
    for body in _TENSOR_RE.findall(section):
        name = _TENSOR_NAME_RE.search(body)
        dtype = _TENSOR_DTYPE_RE.search(body)
        out.append((name.group(1).strip() if name else "", dtype_of(dtype.group(1)) if dtype else "unknown"))
    return out


def _log_layer(line: str) -> LayerInfo | None:
    m = _LAYER_HEAD_RE.match(line.strip())
    if not m:
        return None
    rest = m.group("rest")
    inputs, _, rest = rest.partition("], Constants: [")
    constants, _, rest = rest.partition("], Outputs: [")
    outputs, _, rest = rest.partition("], TacticName: ")
    _, _, metadata = rest.partition("Metadata: ")
    ins, consts, outs = _log_tensors(inputs), _log_tensors(constants), _log_tensors(outputs)
    input_dtypes = tuple(d for _n, d in ins)
    constant_dtypes = tuple(d for _n, d in consts)
    precision = input_dtypes[0] if input_dtypes else "unknown"
    if precision == "unknown" and constant_dtypes:
        precision = constant_dtypes[0]
    if precision == "unknown" and outs:
        precision = outs[0][1]
    layer_type = m.group("type").strip()
    name = m.group("name").strip()
    onnx_nodes = tuple(dict.fromkeys(n.strip() for n in _ONNX_NODE_RE.findall(metadata)))
    compute = _is_compute(layer_type, "")
    if not compute and layer_type.lower() == "runtime_fusion":
        # A GEMM compiled together with its epilogue (``__myl_FcAddRelu``): a compute layer too.
        compute = bool(_FUSED_COMPUTE_NAME_RE.match(name)) or any(_FUSED_COMPUTE_NODE_RE.search(n) for n in onnx_nodes)
    return LayerInfo(
        name=name,
        layer_type=layer_type,
        parameter_type="",
        precision=precision,
        compute=compute,
        input_dtypes=input_dtypes,
        constant_dtypes=constant_dtypes,
        onnx_nodes=onnx_nodes,
    )


def parse_build_log(messages: str | Sequence[str]) -> PrecisionReport:
    """Parse the per-layer listing a TensorRT for RTX build logs with detailed profiling verbosity.

    Args:
        messages: The ``Layers:`` message (or every message of the build; the last ``Layers:``
            listing is used).

    Returns:
        A `PrecisionReport` with schema ``"rtx-log"``.

    Raises:
        TrtError: when no listing is found (the build ran without ``ProfilingVerbosity.DETAILED`` or
            without a VERBOSE-capturing logger) or no line parses.
    """
    if isinstance(messages, str):
        messages = [messages]
    listings = [m for m in messages if str(m).lstrip().startswith("Layers:")]
    if not listings:
        raise TrtError(
            "the TensorRT for RTX build logged no 'Layers:' listing: build with "
            "IBuilderConfig.profiling_verbosity = DETAILED and a logger that receives VERBOSE messages "
            "(runtime.trt.compat.Trt.logger does)"
        )
    lines = str(listings[-1]).lstrip()[len("Layers:") :].splitlines()
    layers = [layer for layer in (_log_layer(line) for line in lines if line.strip()) if layer is not None]
    if not layers:
        raise TrtError(
            "the TensorRT for RTX 'Layers:' listing has no line of the form 'Name: ..., LayerType: ..., "
            "Inputs: [...]': has the log format changed? Look at the build log (-v)"
        )
    io: list[str] = []
    return PrecisionReport(schema="rtx-log", layers=tuple(layers), io_tensors=tuple(io))


def check_precision(report: PrecisionReport, requested: str, min_share: float | None = None) -> PrecisionCheck:
    """Does ``requested`` cover at least ``min_share`` of the engine's conv/GEMM layers?

    Args:
        report: From `parse_engine_information`.
        requested: ``fp32``, ``fp16`` or ``int8``.
        min_share: Threshold in [0, 1]; None takes `DEFAULT_MIN_SHARE`.

    Returns:
        A `PrecisionCheck` (``passed`` False also when the engine has no conv/GEMM layer at all).
    """
    requested = str(getattr(requested, "value", requested)).lower()
    if requested not in DEFAULT_MIN_SHARE:
        raise TrtError(f"unknown precision {requested!r}; valid: {sorted(DEFAULT_MIN_SHARE)}")
    threshold = DEFAULT_MIN_SHARE[requested] if min_share is None else float(min_share)
    if not 0.0 <= threshold <= 1.0:
        raise TrtError(f"precision share threshold must be in [0, 1], got {threshold}")
    compute = report.compute_layers
    share = report.share(requested)
    offenders = tuple(f"{layer.name} ({layer.precision})" for layer in compute if layer.precision != requested)
    return PrecisionCheck(
        requested=requested,
        share=share,
        min_share=threshold,
        passed=bool(compute) and share >= threshold,
        compute_layers=len(compute),
        counts=report.counts(),
        offenders=offenders,
    )


def require_precision(report: PrecisionReport, requested: str, min_share: float | None = None) -> PrecisionCheck:
    """`check_precision`, raising `PrecisionNotRealizedError` (with the offending layers) on failure."""
    check = check_precision(report, requested, min_share)
    if not check.passed:
        shown = ", ".join(check.offenders[:10]) + (" ..." if len(check.offenders) > 10 else "")
        hint = {
            "int8": "check the Q/DQ graph (quantize lint: per-tensor symmetric activations, zero-point 0) "
            "and that convolutions have Q/DQ on both input and weight",
            "fp16": "check that the ONNX is the FP16-cast graph (model.fp16.onnx), not the FP32 one",
            "fp32": "an FP32 graph should stay FP32 when strongly typed; check the typing mode",
        }[check.requested]
        raise PrecisionNotRealizedError(
            f"requested {check.requested} but {check.summary()}. Layers in another precision: {shown or 'none'}. "
            f"Fix: {hint}; or lower the threshold with --min-precision-share",
            check,
        )
    return check


def precision_table_markdown(report: PrecisionReport, check: PrecisionCheck | None = None, *, title: str = "") -> str:
    """The per-layer precision table written beside an engine (``.layers.md``).

    Compute (conv/GEMM) layers first with their precision, then the share line; every other layer
    follows in a second table so the whole engine is visible.
    """
    from runtime.report import md_table

    out = [f"# {title or 'Realized precision per layer'}", ""]
    if check is not None:
        out += [f"Requested **{check.requested}**: {check.summary()}.", ""]
        if check.offenders:
            out += [f"Conv/GEMM layers not in {check.requested}: " + ", ".join(f"`{o}`" for o in check.offenders), ""]
    counts = report.counts()
    out += [
        f"{len(report.compute_layers)} conv/GEMM layers of {len(report.layers)} engine layers; by precision: "
        + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
        + f" (source: {report.schema}).",
        "",
    ]
    out += ["## Conv/GEMM layers", ""]
    out += md_table(
        ["#", "layer", "type", "precision", "inputs", "constants", "ONNX nodes"],
        [
            [
                i,
                f"`{layer.name}`",
                layer.layer_type,
                f"**{layer.precision}**",
                ", ".join(layer.input_dtypes) or "–",
                ", ".join(layer.constant_dtypes) or "–",
                ", ".join(layer.onnx_nodes) or "–",
            ]
            for i, layer in enumerate(report.compute_layers, 1)
        ],
    )
    others = [layer for layer in report.layers if not layer.compute]
    if others:
        out += ["", "## Other layers", ""]
        out += md_table(
            ["layer", "type", "precision"], [[f"`{layer.name}`", layer.layer_type, layer.precision] for layer in others]
        )
    return "\n".join(out) + "\n"
