"""onnxruntime static QDQ quantization (``quantize_static``): the second method and a baseline.

Two forms (`quantize.config.Target`):

- ``tensorrt``: S8S8: symmetric signed INT8 activations (zero point 0), per-channel symmetric
  INT8 weights, float biases (``QuantizeBias=False``: TensorRT takes no INT32 bias), only ops
  TensorRT runs in INT8 get Q/DQ (ORT's default list adds Sigmoid, Mul, ... which TensorRT runs in
  float anyway).
- ``cpu``: U8S8: unsigned asymmetric activations and signed per-channel weights with INT32
  biases, the form x86 onnxruntime's VNNI kernels (QLinearConv, u8×s8 dot products) run fastest.
  The FP32 graph is first rewritten (exactly, checked on calibration inputs) so that the INT8
  graph stays channels-last and integer between convolutions, ConvTranspose stays float, and the
  classifier (Concat + Gemm) stays float: those graph rewrites are the cpu target's
  (`quantize.targets.cpu`), applied before and after ``quantize_static``.

ORT 1.32 defaults differ from both (read in ``onnxruntime/quantization/quantize.py``):
``per_channel=False`` and ``ActivationSymmetric=False`` with QInt8 activations, so everything
is set explicitly here.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantize.targets import cpu
from runtime.errors import QuantizationError

log = logging.getLogger(__name__)

# Ops quantized per target. TensorRT: compute ops plus what it runs in INT8 and ORT handles in QDQ
# (pooling, concat, residual add); Sigmoid/Mul/Min/Max/Reduce* stay float in TensorRT anyway.
TRT_OP_TYPES = (
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "MaxPool",
    "Concat",
    "Add",
    "AveragePool",
    "GlobalAveragePool",
)
# CPU: onnxruntime's own default (every op it has a QDQ/QLinear handler for) except ConvTranspose.
# Measured on the dev LANMSFF, 1 thread, interleaved: the default list gives 2.15x FP32 at batch 1
# and 2.53x at batch 32, against 2.01x/2.24x for Conv/Gemm/MatMul/pooling/Concat only: integer
# Add/Mul/Concat keep the graph in INT8 between convolutions, so fewer Quantize/Dequantize and
# layout Transposes run. onnxruntime's CPU EP has no integer ConvTranspose: a quantized one runs in
# float after DequantizeLinear of its weights and bias on every call (4 tiny ConvTransposes in
# LANMSFF's MassAtt: 10 DQ and 2 Q nodes fewer without).
CPU_OP_TYPES_DROPPED = ("ConvTranspose",)
CPU_OP_TYPES: tuple[str, ...] = ()  # () = onnxruntime's default list minus CPU_OP_TYPES_DROPPED


def cpu_op_types() -> tuple[str, ...]:
    """The op types the cpu form quantizes: onnxruntime's default list minus `CPU_OP_TYPES_DROPPED`."""
    if CPU_OP_TYPES:
        return CPU_OP_TYPES
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return tuple(sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(CPU_OP_TYPES_DROPPED)))


class ArrayReader:
    """`onnxruntime.quantization.CalibrationDataReader` over a preprocessed array, in batches."""

    def __init__(self, input_name: str, tensors: np.ndarray, batch: int = 32) -> None:
        self.input_name = input_name
        self.tensors = tensors
        self.batch = batch
        self._pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._pos >= len(self.tensors):
            return None
        x = self.tensors[self._pos : self._pos + self.batch]
        self._pos += self.batch
        return {self.input_name: np.ascontiguousarray(x)}

    def rewind(self) -> None:
        self._pos = 0

    def __len__(self) -> int:
        return -(-len(self.tensors) // self.batch)


@dataclass(frozen=True)
class OrtSettings:
    """The quantize_static arguments used (recorded in the sidecar)."""

    quant_format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    op_types: tuple[str, ...]
    extra_options: dict[str, Any]
    calibrate_method: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "quant_format": self.quant_format,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "per_channel": self.per_channel,
            "op_types_to_quantize": list(self.op_types) or "onnxruntime default",
            "extra_options": dict(self.extra_options),
            "calibrate_method": self.calibrate_method,
        }


def ort_settings(target: str, op_types: Sequence[str] | None = None) -> OrtSettings:
    """quantize_static settings for ``target`` (``tensorrt`` or ``cpu``)."""
    target = str(getattr(target, "value", target))
    if target == "tensorrt":
        return OrtSettings(
            "QDQ",
            "QInt8",
            "QInt8",
            True,
            tuple(op_types or TRT_OP_TYPES),
            {
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                # MinMax over an unpadded per-channel range; TensorRT reads scales from the graph.
                "AddQDQPairToWeight": False,
                "DedicatedQDQPair": False,
            },
            "MinMax",
        )
    if target == "cpu":
        return OrtSettings(
            "QDQ",
            "QUInt8",
            "QInt8",
            True,
            tuple(op_types or cpu_op_types()),
            {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True},
            "MinMax",
        )
    raise QuantizationError(f"unknown target {target!r}; valid: tensorrt, cpu")


def quantize_ort(
    model,
    calibration: np.ndarray,
    *,
    target: str,
    nodes_to_exclude: Iterable[str] = (),
    op_types: Sequence[str] | None = None,
    input_name: str | None = None,
    cpu_rewrites: Sequence[str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Quantize an ONNX ModelProto with ``onnxruntime.quantization.quantize_static``.

    Args:
        model: The FP32 ModelProto (left unchanged).
        calibration: Preprocessed calibration tensors (N, C, H, W).
        target: ``tensorrt`` (S8S8, float bias) or ``cpu`` (U8S8, INT32 bias).
        nodes_to_exclude: Node names kept in float.
        op_types: Override the op types to quantize.
        input_name: Graph input to feed (default: the first).
        cpu_rewrites: cpu target: which graph rewrites of `quantize.targets.cpu.CPU_REWRITES` to
            apply first (None: all of them).

    Returns:
        (quantized ModelProto, info dict with the settings and the time taken).
    """
    settings = ort_settings(target, op_types)
    input_name = input_name or next(i.name for i in model.graph.input)
    t0 = time.perf_counter()
    exclude = list(nodes_to_exclude)
    extra_info: dict[str, Any] = {}
    is_cpu = str(getattr(target, "value", target)) == "cpu"
    if is_cpu:  # the cpu target rewrites the FP32 graph first and keeps its classifier in float
        model, cpu_info, keep_float = cpu.before_quantization(
            model, calibration[:16], input_name=input_name, rewrites=cpu_rewrites
        )
        extra_info.update(cpu_info)
        exclude += [n for n in keep_float if n not in exclude]
    root = logging.getLogger()
    hush = _DropPreprocessHint()
    root.addFilter(hush)
    try:
        with tempfile.TemporaryDirectory(prefix="ferdeploy-ortq-") as tmp:
            quantized = _quantize_static_file(model, tmp, calibration, settings, exclude, input_name, target)
    finally:
        root.removeFilter(hush)
    stripped = strip_output_qdq(quantized)
    if is_cpu:
        extra_info.update(cpu.after_quantization(quantized))
    info = {
        "settings": settings.to_dict(),
        "nodes_excluded": list(nodes_to_exclude),
        "quantize_s": time.perf_counter() - t0,
    }
    info["output_qdq_removed"] = stripped
    info.update(extra_info)
    return quantized, info


def strip_output_qdq(model) -> int:
    """Remove Q/DQ pairs that sit directly on graph outputs (in place); returns how many.

    quantize_static quantizes the classifier's output too: LANMSFF's logits span about ±8, so INT8
    rounds them to steps of 0.06 and flips close calls for no speed gain (nothing consumes them).
    Measured on the 15-epoch dev model (ORT, tensorrt form): top-1 agreement 93.6% with the pair,
    96.4% without.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    drop: set[int] = set()
    count = 0
    for out in model.graph.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            continue
        src = producer.get(q.input[0])
        consumers = [n for n in model.graph.node if q.input[0] in n.input and n is not q]
        if src is None or consumers:
            continue  # the float tensor feeds something else too: leave the pair
        for i, name in enumerate(src.output):
            if name == q.input[0]:
                src.output[i] = out.name
        drop.update({id(q), id(dq)})
        count += 1
    if drop:
        keep = [n for n in model.graph.node if id(n) not in drop]
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return count


class _DropPreprocessHint(logging.Filter):
    """Quiet quantize_static's root-logger chatter while it runs.

    It logs a 'consider pre-processing' hint at every call.

    Pre-processing (symbolic shape inference + ORT graph optimization) renames and fuses nodes,
    which would break ``nodes_to_exclude``; the export already folded BatchNorm and slimmed the graph.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        # quantize_static also logs every bias copy at INFO on the root logger ("Created a copy of
        # bias input ..."): hundreds of lines for MA-Net.
        if record.name == "root" and record.levelno < logging.WARNING:
            return False
        return "pre-process" not in record.getMessage()


def _quantize_static_file(model, tmp, calibration, settings, nodes_to_exclude, input_name, target):
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
    onnx.save(model, str(src))
    try:
        quantize_static(
            str(src),
            str(dst),
            ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(settings.op_types) or None,
            per_channel=settings.per_channel,
            reduce_range=False,  # this CPU has VNNI; TensorRT uses the full range
            activation_type=getattr(QuantType, settings.activation_type),
            weight_type=getattr(QuantType, settings.weight_type),
            nodes_to_exclude=list(nodes_to_exclude),
            calibrate_method=CalibrationMethod.MinMax,
            extra_options=dict(settings.extra_options),
        )
    except Exception as exc:  # ORT raises ValueError/RuntimeError/its own types
        raise QuantizationError(
            f"onnxruntime quantize_static failed for target {target}: {type(exc).__name__}: {exc}"
        ) from exc
    quantized = onnx.load(str(dst))
    return quantized
