"""onnxruntime static QDQ quantization (the second method and a baseline), and the cpu form's rewrites.

Two forms (`quantize.config.Target`):

- ``tensorrt``: S8S8: symmetric signed INT8 activations (zero point 0), per-channel symmetric
  INT8 weights, float biases (``QuantizeBias=False``: TensorRT takes no INT32 bias), only ops
  TensorRT runs in INT8 get Q/DQ (ORT's default list adds Sigmoid, Mul, ... which TensorRT runs in
  float anyway).
- ``cpu``: U8S8: unsigned asymmetric activations and signed per-channel weights with INT32
  biases, the form x86 onnxruntime's VNNI kernels (QLinearConv, u8×s8 dot products) run fastest.
  The FP32 graph is first rewritten (exactly, checked on calibration inputs) so that the INT8
  graph stays channels-last and integer between convolutions (`rewrite_for_cpu`), ConvTranspose
  stays float, and the classifier (Concat + Gemm) stays float.

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

from runtime.backends.ort import make_session
from runtime.errors import ArtifactError, QuantizationError

log = logging.getLogger(__name__)

# Ops quantized per target. TensorRT: compute ops plus what it runs in INT8 and ORT handles in QDQ
# (pooling, concat, residual add); Sigmoid/Mul/Min/Max/Reduce* stay float in TensorRT anyway.
TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "Concat", "Add", "AveragePool", "GlobalAveragePool")
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
            "QDQ", "QInt8", "QInt8", True, tuple(op_types or TRT_OP_TYPES),
            {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
             # MinMax over an unpadded per-channel range; TensorRT reads scales from the graph.
             "AddQDQPairToWeight": False, "DedicatedQDQPair": False},
            "MinMax",
        )  # fmt: skip
    if target == "cpu":
        return OrtSettings(
            "QDQ", "QUInt8", "QInt8", True, tuple(op_types or cpu_op_types()),
            {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True},
            "MinMax",
        )  # fmt: skip
    raise QuantizationError(f"unknown target {target!r}; valid: tensorrt, cpu")


def quantize_ort(
    model,
    calibration: np.ndarray,
    *,
    target: str,
    nodes_to_exclude: Iterable[str] = (),
    op_types: Sequence[str] | None = None,
    input_name: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Quantize an ONNX ModelProto with ``onnxruntime.quantization.quantize_static``.

    Args:
        model: The FP32 ModelProto (left unchanged).
        calibration: Preprocessed calibration tensors (N, C, H, W).
        target: ``tensorrt`` (S8S8, float bias) or ``cpu`` (U8S8, INT32 bias).
        nodes_to_exclude: Node names kept in float.
        op_types: Override the op types to quantize.
        input_name: Graph input to feed (default: the first).

    Returns:
        (quantized ModelProto, info dict with the settings and the time taken).
    """
    settings = ort_settings(target, op_types)
    input_name = input_name or next(i.name for i in model.graph.input)
    t0 = time.perf_counter()
    exclude = list(nodes_to_exclude)
    extra_info: dict[str, Any] = {}
    if str(getattr(target, "value", target)) == "cpu":  # rewrite the FP32 graph first (see rewrite_for_cpu)
        work = model.__class__()
        work.CopyFrom(model)
        extra_info["cpu_rewrites"] = rewrite_for_cpu(work, calibration[:16], input_name=input_name)
        extra_info["unshared_parameters"] = unshare_parameters(work)
        head = classifier_nodes(work)
        extra_info["float_classifier"] = head
        exclude += [n for n in head if n not in exclude]
        model = work
    root = logging.getLogger()
    hush = _DropPreprocessHint()
    root.addFilter(hush)
    try:
        with tempfile.TemporaryDirectory(prefix="ferdeploy-ortq-") as tmp:
            quantized = _quantize_static_file(model, tmp, calibration, settings, exclude, input_name, target)
    finally:
        root.removeFilter(hush)
    stripped = strip_output_qdq(quantized)
    if "cpu_rewrites" in extra_info:
        extra_info["integer_min"] = min_in_integers(quantized)
    info = {"settings": settings.to_dict(), "nodes_excluded": list(nodes_to_exclude), "quantize_s": time.perf_counter() - t0}
    info["output_qdq_removed"] = stripped
    info.update(extra_info)
    return quantized, info


def unshare_parameters(model) -> int:
    """Give every Conv/ConvTranspose/Gemm its own weight and bias initializers (in place); returns copies made.

    onnxslim merges identical initializers, e.g. the all-zero biases of an untrained model. When a
    quantized conv shares its bias with a float ConvTranspose, the float op reads the quantized
    bias through a DequantizeLinear that runs on every call.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            continue
        for k in range(1, len(node.input)):
            name = node.input[k]
            if name not in inits:
                continue
            if name in seen:
                new = f"{name}/{node.name}"
                model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[name]), new))
                node.input[k] = new
                copies += 1
            seen.add(name)
    return copies


def classifier_nodes(model) -> list[str]:
    """The cpu form keeps the classifier in float: the Gemm producing a graph output and a Concat feeding it.

    Their inputs are a few hundred pooled features per image: in INT8 they cost a Q per pooled
    feature vector plus QLinearConcat and QGemm, more than the float Concat + Gemm they replace,
    and the logits lose precision (measured on the dev LANMSFF: 7 QuantizeLinear fewer, mean
    |dlogit| 0.0276 -> 0.0259).
    """
    outputs = {o.name for o in model.graph.output}
    producer = {o: n for n in model.graph.node for o in n.output}
    names = []
    for n in model.graph.node:
        if n.op_type == "Gemm" and any(o in outputs for o in n.output):
            names.append(n.name)
            src = producer.get(n.input[0])
            if src is not None and src.op_type == "Concat":
                names.append(src.name)
    return names


def min_in_integers(model) -> list[str]:
    """Run ``Min`` on the quantized tensors where all its inputs share one scale and zero point (in place).

    ``Min`` is monotonic, so for inputs quantized alike, ``min(DQ(a), DQ(b)) == DQ(min(a, b))``
    exactly; onnxruntime's CPU Min runs on uint8/int8. PWFS's ``Min(Min(a, b), c)`` reads three
    slices of one quantized tensor: this removes their three DequantizeLinear and the float Mins,
    and (when the Min result is requantized) the Quantize/Dequantize pair after them, so the
    pooled mean reads the integer Min directly. Returns the names of the Min nodes moved.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}

    def params(dq):
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) != 3:
            return None
        if dq.input[1] not in inits or dq.input[2] not in inits:
            return None
        scale, zero = numpy_helper.to_array(inits[dq.input[1]]), numpy_helper.to_array(inits[dq.input[2]])
        return (scale, zero) if scale.size == 1 and zero.size == 1 else None

    producer, consumers = _graph_maps(model)
    moved: list[str] = []
    for node in list(model.graph.node):  # topological: an earlier Min's new DQ is seen by the next Min
        if node.op_type != "Min":
            continue
        dqs = [producer.get(i) for i in node.input]
        ps = [params(d) for d in dqs]
        if not ps or any(p is None for p in ps) or any(
                p[0].item() != ps[0][0].item() or p[1].item() != ps[0][1].item() or p[1].dtype != ps[0][1].dtype
                for p in ps):
            continue
        out = node.output[0]
        integer = f"{out}/integer"
        scale, zero = dqs[0].input[1], dqs[0].input[2]
        del node.input[:]
        node.input.extend(d.input[0] for d in dqs)
        node.output[0] = integer
        dq = helper.make_node("DequantizeLinear", [integer, scale, zero], [out], name=f"{node.name}/dq")
        model.graph.node.append(dq)
        producer[out] = dq
        # A requantization of the Min result (Q -> DQ) becomes the integer tensor with the inputs' scale:
        # its values lie within the inputs' range, so nothing is clipped and no rounding is added.
        for q in consumers.get(out, []):
            if q.op_type != "QuantizeLinear":
                continue
            for later in consumers.get(q.output[0], []):
                if later.op_type == "DequantizeLinear":
                    later.input[0], later.input[1], later.input[2] = integer, scale, zero
        moved.append(node.name)
    if moved:
        _prune(model)
        _toposort(model)
    return moved


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
        raise QuantizationError(f"onnxruntime quantize_static failed for target {target}: {type(exc).__name__}: {exc}") from exc
    quantized = onnx.load(str(dst))
    return quantized


# --- cpu form: graph rewrites before quantization ------------------------------------------------
#
# quantize_static quantizes the graph it is given, and onnxruntime's CPU session then fuses
# DQ -> op -> Q units into QLinear* kernels and runs them channels-last. Two LANMSFF patterns keep
# float islands (DQ -> float op -> Q, plus NCHW<->NHWC Transposes) in the middle of the INT8 graph:
#
# - ``Conv -> MaxPool -> Relu`` (the end of every block): the Relu after the pool cannot be folded
#   into the conv's output quantizer, so the pool runs in float between a DQ and a Q of different
#   scales. ``Relu`` and ``MaxPool`` commute exactly (max is monotonic), and ``Conv -> Relu ->
#   MaxPool`` quantizes to QLinearConv (Relu folded into its U8 output range) -> u8 MaxPool with
#   the same scale, both channels-last.
# - PWFS (0.5·(max + median) over three channel groups, then a spatial mean into the classifier):
#   0.5·(max + median) = 0.5·(a + b + c - min(a, b, c)) because median = a + b + c - min - max, and
#   the spatial mean of the linear part is a linear function of the per-channel means, which folds
#   into the classifier Gemm's weights. What is left per block is ReduceMean(x) and
#   ReduceMean(Min(Min(a, b), c)): no Max, Add, Sub or Mul, and no requantization of their results.
#
# Both rewrites are exact up to float rounding; `rewrite_for_cpu` checks the rewritten FP32 graph
# against the original on the calibration inputs and keeps the original when they differ.

CPU_REWRITES = ("relu_before_maxpool", "pwfs_into_head", "fold_channel_shuffle", "reduce_mean_as_pool_and_conv")


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _graph_maps(model):
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    return producer, consumers


def _toposort(model) -> None:
    """Order ``model.graph.node`` topologically (rewrites append nodes out of order)."""
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise QuantizationError(f"graph rewrite left a cycle or a dangling input at {rest[0].name!r}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def relu_before_maxpool(model) -> list[str]:
    """``MaxPool -> Relu`` becomes ``Relu -> MaxPool`` (in place; exact). Returns the MaxPool names moved."""
    producer, consumers = _graph_maps(model)
    outputs = {o.name for o in model.graph.output}
    moved = []
    for pool in list(model.graph.node):
        if pool.op_type != "MaxPool" or len([o for o in pool.output if o]) != 1 or pool.output[0] in outputs:
            continue
        users = consumers.get(pool.output[0], [])
        if len(users) != 1 or users[0].op_type != "Relu":
            continue
        relu = users[0]
        src, mid, dst = pool.input[0], pool.output[0], relu.output[0]
        relu.input[0], relu.output[0] = src, mid
        pool.input[0], pool.output[0] = mid, dst
        moved.append(pool.name)
    if moved:
        _toposort(model)
    return moved


def reduce_mean_as_pool_and_conv(model) -> list[str]:
    """Spatial and channel means become ops onnxruntime runs in INT8, channels-last (in place; exact).

    - ``ReduceMean(axes=[2, 3])`` becomes ``GlobalAveragePool`` (+ ``Flatten`` when keepdims=0):
      quantized as QLinearGlobalAveragePool instead of a DequantizeLinear of the whole feature map
      and a float reduction.
    - ``ReduceMean(axes=[1], keepdims=1)`` (MassAtt's channel mean) becomes a 1×1 ``Conv`` with one
      output channel and weights 1/C: a QLinearConv in the NHWC chain (1/C is exact in symmetric
      per-channel INT8: 127 × scale).

    Returns the names of the ReduceMean nodes replaced.
    """
    import onnx
    from onnx import helper, numpy_helper

    channels = _channel_counts(model)
    replaced, nodes, inits = [], [], []
    for node in model.graph.node:
        if node.op_type != "ReduceMean" or len(node.input) != 1:  # opset >= 18 takes axes as an input
            nodes.append(node)
            continue
        axes, keep = sorted(_attr(node, "axes") or []), _attr(node, "keepdims", 1)
        x, y = node.input[0], node.output[0]
        if axes == [2, 3]:
            if keep:
                nodes.append(helper.make_node("GlobalAveragePool", [x], [y], name=f"{node.name}/gap"))
            else:
                nodes += [helper.make_node("GlobalAveragePool", [x], [f"{y}/gap"], name=f"{node.name}/gap"),
                          helper.make_node("Flatten", [f"{y}/gap"], [y], name=f"{node.name}/flatten", axis=1)]
            replaced.append(node.name)
        elif axes == [1] and keep and channels.get(x):
            c = channels[x]
            w = f"{node.name}/mean_weight"
            inits.append(numpy_helper.from_array(np.full((1, c, 1, 1), 1.0 / c, np.float32), w))
            nodes.append(helper.make_node("Conv", [x, w], [y], name=f"{node.name}/conv", kernel_shape=[1, 1]))
            replaced.append(node.name)
        else:
            nodes.append(node)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        del model.graph.value_info[:]  # stale shapes; onnxruntime re-infers them
        onnx.checker.check_model(model)
    return replaced


def _pwfs_source(model, out_name, producer, consumers):
    """The tensor X that the PWFS subgraph ending at ``out_name`` reads, and its nodes, or None."""
    allowed = {"Mul", "Add", "Sub", "Min", "Max", "Slice"}
    inits = {i.name for i in model.graph.initializer}
    nodes: dict[str, Any] = {}
    sources: set[str] = set()
    frontier = [out_name]
    while frontier:
        t = frontier.pop()
        node = producer.get(t)
        if node is None or node.op_type not in allowed:
            sources.add(t)
            continue
        if node.name in nodes:
            continue
        nodes[node.name] = node
        data = node.input[:1] if node.op_type == "Slice" else node.input
        for i in data:
            if i in inits or (producer.get(i) is not None and producer[i].op_type == "Constant"):
                continue
            frontier.append(i)
    ops = [n.op_type for n in nodes.values()]
    if len(sources) != 1 or ops.count("Slice") != 3 or "Min" not in ops or "Max" not in ops:
        return None
    (x,) = sources
    # Every intermediate must stay inside the subgraph (nothing else reads max, median, ...).
    for n in nodes.values():
        for o in n.output:
            if o != out_name and any(c.name not in nodes for c in consumers.get(o, [])):
                return None
    return x, list(nodes.values())


def _check_pwfs(model, x_name, nodes, out_name, channels) -> bool:
    """Run the PWFS subgraph on random data and compare it with 0.5·(a + b + c - min(a, b, c))."""
    import onnx

    g = model.graph
    needed = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in needed]
    consts = [n for n in g.node if n.op_type == "Constant" and n.output[0] in needed]
    sub = onnx.helper.make_graph(
        consts + list(nodes), "pwfs_check",
        [onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, [2, channels, 5, 3])],
        [onnx.helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)],
        initializer=inits,
    )  # fmt: skip
    m = onnx.helper.make_model(sub, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    x = np.random.default_rng(0).normal(size=(2, channels, 5, 3)).astype(np.float32)
    try:
        got = make_session(m, threads=1, optimization="disable").run(None, {x_name: x})[0]
    except ArtifactError:
        return False
    a, b, c = np.split(x, 3, axis=1)
    want = 0.5 * (a + b + c - np.minimum(np.minimum(a, b), c))
    return got.shape == want.shape and bool(np.allclose(got, want, atol=1e-5))


def pwfs_into_head(model) -> list[str]:
    """Fold PWFS's linear part into the classifier (in place). Returns the ReduceMean names rewritten.

    Pattern: ``X -> PWFS (Slice x3, Min/Max/Add/Sub/Mul) -> ReduceMean(axes 2,3) -> Concat(axis 1) ->
    Gemm`` with constant Gemm weights. Each matched ReduceMean slot of the Concat becomes two slots,
    ``ReduceMean(X)`` (C channels) and ``ReduceMean(Min(Min(a, b), c))`` (C/3), and the Gemm's
    columns for the slot W become [W/2, W/2, W/2, -W/2].
    """
    import onnx
    from onnx import numpy_helper

    producer, consumers = _graph_maps(model)
    inits = {t.name: t for t in model.graph.initializer}
    shapes = _channel_counts(model)
    done = []
    for concat in [n for n in model.graph.node if n.op_type == "Concat" and _attr(n, "axis") == 1]:
        users = consumers.get(concat.output[0], [])
        if len(users) != 1 or users[0].op_type != "Gemm" or users[0].input[1] not in inits:
            continue
        gemm = users[0]
        if _attr(gemm, "transA", 0) or float(_attr(gemm, "alpha", 1.0)) != 1.0:
            continue
        w = numpy_helper.to_array(inits[gemm.input[1]])
        w = w.T if not _attr(gemm, "transB", 0) else w  # (classes, features)
        widths = [shapes.get(i) for i in concat.input]
        if None in widths or sum(widths) != w.shape[1]:
            continue
        new_inputs, new_cols, new_nodes, start = [], [], [], 0
        for slot, width in zip(list(concat.input), widths):
            cols = w[:, start : start + width]
            start += width
            rm = producer.get(slot)
            match = None
            if rm is not None and rm.op_type == "ReduceMean" and list(_attr(rm, "axes", [])) == [2, 3] and not _attr(rm, "keepdims", 1):
                match = _pwfs_source(model, rm.input[0], producer, consumers)
            if match is None or shapes.get(match[0]) != 3 * width or not _check_pwfs(model, match[0], match[1], rm.input[0], 3 * width):
                new_inputs.append(slot)
                new_cols.append(cols)
                continue
            x = match[0]
            p = rm.name
            split_sizes = onnx.numpy_helper.from_array(np.asarray([width] * 3, dtype=np.int64), f"{p}/pwfs_split_sizes")
            model.graph.initializer.append(split_sizes)
            abc = [f"{p}/pwfs_{k}" for k in "abc"]
            new_nodes += [
                onnx.helper.make_node("ReduceMean", [x], [f"{p}/pwfs_channel_mean"], f"{p}/pwfs_channel_mean", axes=[2, 3], keepdims=0),
                onnx.helper.make_node("Split", [x, split_sizes.name], abc, f"{p}/pwfs_split", axis=1),
                onnx.helper.make_node("Min", abc[:2], [f"{p}/pwfs_min_ab"], f"{p}/pwfs_min_ab"),
                onnx.helper.make_node("Min", [f"{p}/pwfs_min_ab", abc[2]], [f"{p}/pwfs_min"], f"{p}/pwfs_min"),
                onnx.helper.make_node("ReduceMean", [f"{p}/pwfs_min"], [f"{p}/pwfs_min_mean"], f"{p}/pwfs_min_mean", axes=[2, 3], keepdims=0),
            ]  # fmt: skip
            new_inputs += [f"{p}/pwfs_channel_mean", f"{p}/pwfs_min_mean"]
            new_cols += [np.concatenate([cols / 2] * 3, axis=1), -cols / 2]
            done.append(rm.name)
        if len(new_inputs) == len(concat.input):
            continue
        w2 = np.concatenate(new_cols, axis=1).astype(np.float32)
        w2 = w2 if _attr(gemm, "transB", 0) else w2.T
        name = f"{gemm.input[1]}/pwfs_folded"
        model.graph.initializer.append(numpy_helper.from_array(w2, name))
        gemm.input[1] = name
        del concat.input[:]
        concat.input.extend(new_inputs)
        model.graph.node.extend(new_nodes)
    if done:
        _toposort(model)
        _prune(model)
    return done


def _channel_counts(model) -> dict[str, int]:
    """Axis-1 size of every tensor whose shape onnx shape inference knows (batch may be symbolic)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField("dim_value"):
            out[vi.name] = dims[1].dim_value
    return out


def _prune(model) -> None:
    """Drop nodes and initializers nothing reads any more (in place)."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for n in reversed(list(model.graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    inits = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)


def _channel_map(model, x_name, channels, hw, region, outs) -> list[list[int]] | None:
    """Which channels of ``x_name`` each of ``outs`` holds, found by running ``region`` on a channel-coded input."""
    import onnx

    needed = {i for n in region for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in needed]
    sub = onnx.helper.make_graph(
        list(region), "channel_map",
        [onnx.helper.make_tensor_value_info(x_name, onnx.TensorProto.FLOAT, [1, channels, *hw])],
        [onnx.helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs], initializer=inits,
    )  # fmt: skip
    m = onnx.helper.make_model(sub, opset_imports=model.opset_import)
    m.ir_version = model.ir_version
    x = np.broadcast_to(np.arange(channels, dtype=np.float32)[None, :, None, None], (1, channels, *hw)).copy()
    try:
        got = make_session(m, threads=1, optimization="disable").run(None, {x_name: x})
    except ArtifactError:
        return None
    maps = []
    for y in got:
        if y.ndim != 4 or y.shape[2:] != tuple(hw) or not np.all(y == y[:, :, :1, :1]):
            return None
        maps.append([int(v) for v in y[0, :, 0, 0]])
    return maps


def fold_channel_shuffle(model) -> list[str]:
    """Fold TwoPath's channel shuffle + chunk into the producing conv's output order (in place).

    Pattern: ``Conv -> (Relu | MaxPool)* -> X``; X feeds a Reshape/Transpose/Slice region whose
    outputs only feed Convs (the shuffle and split in halves), and otherwise only the classifier
    inputs that `pwfs_into_head` made (``ReduceMean(X)`` and ``Split(X, thirds) -> Min -> Min ->
    ReduceMean``, into ``Concat -> Gemm``). The conv's output channels are permuted so that the two
    halves become a plain ``Split`` and the three PWFS groups stay aligned; the weights of every
    consumer (the two convs, the classifier columns) are permuted to match. Returns the X tensors.
    """
    import onnx
    from onnx import numpy_helper

    shapes = _full_shapes(model)
    done = []
    for x_name in list(_graph_maps(model)[1]):
        # Fresh maps each time: a fold replaces nodes (protobuf copies), so older handles go stale.
        producer, consumers = _graph_maps(model)
        inits = {t.name: t for t in model.graph.initializer}
        users = consumers.get(x_name, [])
        shape = shapes.get(x_name)
        if shape is None or len(shape) != 4 or not any(u.op_type == "Reshape" for u in users):
            continue
        c, hw = shape[1], shape[2:]
        # The conv that makes X, through channel-wise ops with single consumers.
        chain, t = [], x_name
        while (node := producer.get(t)) is not None and node.op_type in ("Relu", "MaxPool") and len(consumers.get(node.input[0], [])) == 1:
            chain.append(node)
            t = node.input[0]
        conv = producer.get(t)
        if conv is None or conv.op_type != "Conv" or int(_attr(conv, "group", 1)) != 1 or conv.input[1] not in inits \
                or (len(conv.input) > 2 and conv.input[2] not in inits) or len(consumers.get(t, [])) != 1:  # fmt: skip
            continue
        # The shuffle region: shape ops from X up to tensors read by convs only.
        region, frontier, outs, ok = {}, [u for u in users if u.op_type == "Reshape"], [], True
        while frontier and ok:
            n = frontier.pop()
            if n.name in region:
                continue
            region[n.name] = n
            for o in n.output:
                for u in consumers.get(o, []):
                    if u.op_type in ("Reshape", "Transpose", "Slice", "Split"):
                        frontier.append(u)
                    elif u.op_type == "Conv" and u.input[0] == o and u.input[1] in inits and int(_attr(u, "group", 1)) == 1:
                        if o not in outs:
                            outs.append(o)
                    else:
                        ok = False
        if not ok or len(outs) != 2 or any(producer[o].name not in region for o in outs):
            continue
        half = c // 2
        maps = _channel_map(model, x_name, c, hw, [n for n in model.graph.node if n.name in region], outs)
        if maps is None or [len(m) for m in maps] != [half, half] or sorted(maps[0] + maps[1]) != list(range(c)):
            continue
        a_order, b_order = maps
        # Other readers of X: the classifier inputs made by pwfs_into_head.
        others = [u for u in users if u.name not in region]
        mean_node = split_node = None
        for u in others:
            if u.op_type == "ReduceMean" and list(_attr(u, "axes", [])) == [2, 3] and mean_node is None:
                mean_node = u
            elif u.op_type == "Split" and int(_attr(u, "axis", 0)) == 1 and len(u.output) == 3 and split_node is None:
                split_node = u
            else:
                ok = False
        if not ok:
            continue
        perm = None
        if split_node is not None:
            w = c // 3
            min1 = [n for n in consumers.get(split_node.output[0], []) if n.op_type == "Min"]
            if c % 6 or not min1 or len(consumers.get(min1[0].output[0], [])) != 1:
                continue
            a_set = set(a_order)
            triples = [(j, j + w, j + 2 * w) for j in range(w)]
            two = [tr for tr in triples if sum(v in a_set for v in tr) == 2]
            one = [tr for tr in triples if sum(v in a_set for v in tr) == 1]
            if len(two) != w // 2 or len(one) != w // 2:
                continue
            perm = [0] * c
            for k, tr in enumerate(two):
                ins = [v for v in tr if v in a_set]
                perm[k], perm[w + k], perm[2 * w + k] = ins[0], ins[1], next(v for v in tr if v not in a_set)
            for k, tr in enumerate(one, start=w // 2):
                outs_b = [v for v in tr if v not in a_set]
                perm[k], perm[w + k], perm[2 * w + k] = next(v for v in tr if v in a_set), outs_b[0], outs_b[1]
        else:
            perm = list(a_order) + list(b_order)
        # The classifier, when X feeds it.
        head = None
        if mean_node is not None or split_node is not None:
            head = _head_columns(model, [n for n in (mean_node, split_node) if n is not None], consumers, shapes)
            if head is None:
                continue
        # Rewrite: producer conv output order.
        pa = np.asarray(perm)
        wname = conv.input[1]
        inits[wname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[wname])[pa], wname))
        if len(conv.input) > 2:
            bname = conv.input[2]
            inits[bname].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[bname])[pa], bname))
        # The two convs: input-channel order.
        for out, order, off in ((outs[0], a_order, 0), (outs[1], b_order, half)):
            where = {ch: m for m, ch in enumerate(order)}
            idx = np.asarray([where[perm[off + i]] for i in range(half)])
            for u in consumers.get(out, []):
                name = f"{u.input[1]}/shuffle_folded"
                inits[name] = numpy_helper.from_array(numpy_helper.to_array(inits[u.input[1]])[:, idx], name)
                model.graph.initializer.append(inits[name])
                u.input[1] = name
        # The classifier columns.
        if head is not None:
            gemm, w_all, slots = head
            for node_name, (start, width) in slots.items():
                cols = w_all[:, start : start + width].copy()
                if mean_node is not None and node_name == mean_node.name:
                    w_all[:, start : start + width] = cols[:, pa]
                else:
                    wdt = c // 3
                    w_all[:, start : start + width] = cols[:, pa[:wdt] % wdt]
            name = f"{gemm.input[1]}/shuffle_folded"
            arr = w_all if _attr(gemm, "transB", 0) else w_all.T
            model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
            gemm.input[1] = name
        # The shuffle becomes a Split in halves.
        sizes = numpy_helper.from_array(np.asarray([half, half], dtype=np.int64), f"{x_name}/shuffle_split_sizes")
        model.graph.initializer.append(sizes)
        keep = [n for n in model.graph.node if n.name not in region]
        del model.graph.node[:]
        model.graph.node.extend(keep)
        model.graph.node.append(onnx.helper.make_node("Split", [x_name, sizes.name], list(outs), f"{x_name}/shuffle_split", axis=1))
        done.append(x_name)
    if done:
        _toposort(model)
        _prune(model)
    return done


def _head_columns(model, starts, consumers, shapes):
    """(Gemm, its weight as (classes, features), {start node name: (first column, width)}) or None.

    Each start node must lead, through Min/ReduceMean with single consumers, to an input of one
    Concat(axis 1) whose only consumer is a Gemm with constant weights.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    found, concat = {}, None
    for s in starts:
        t = s.output[0] if s.op_type == "ReduceMean" else None
        if s.op_type == "Split":  # Split -> Min -> Min -> ReduceMean
            n = next((u for u in consumers.get(s.output[0], []) if u.op_type == "Min"), None)
            n = next((u for u in consumers.get(n.output[0], []) if u.op_type == "Min"), None) if n else None
            n = next((u for u in consumers.get(n.output[0], []) if u.op_type == "ReduceMean"), None) if n else None
            t = n.output[0] if n else None
        users = consumers.get(t, []) if t else []
        if len(users) != 1 or users[0].op_type != "Concat" or (concat is not None and users[0] is not concat):
            return None
        concat = users[0]
        found[s.name] = t
    g_users = consumers.get(concat.output[0], [])
    if len(g_users) != 1 or g_users[0].op_type != "Gemm" or g_users[0].input[1] not in inits:
        return None
    gemm = g_users[0]
    w = numpy_helper.to_array(inits[gemm.input[1]])
    w = (w if _attr(gemm, "transB", 0) else w.T).copy()
    offsets, start = {}, 0
    for i in concat.input:
        width = shapes.get(i, [None, None])[1] if shapes.get(i) else None
        if width is None:
            return None
        offsets[i] = (start, width)
        start += width
    if start != w.shape[1]:
        return None
    by_node = {s.name: offsets[found[s.name]] for s in starts}
    return gemm, w, by_node


def _full_shapes(model) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        out[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


def rewrite_for_cpu(model, samples: np.ndarray | None = None, *, rewrites: Sequence[str] = CPU_REWRITES,
                    input_name: str | None = None, rtol: float = 1e-4) -> dict[str, list[str]]:
    """Apply the cpu-form rewrites to the FP32 ``model`` in place; returns {rewrite: nodes affected}.

    With ``samples``, the rewritten graph is run against the original on them; if any output
    differs by more than ``rtol`` of its range the model is left as it was and {} is returned.
    """
    funcs = {"relu_before_maxpool": relu_before_maxpool, "pwfs_into_head": pwfs_into_head,
             "fold_channel_shuffle": fold_channel_shuffle, "reduce_mean_as_pool_and_conv": reduce_mean_as_pool_and_conv}
    unknown = [r for r in rewrites if r not in funcs]
    if unknown:
        raise QuantizationError(f"unknown cpu rewrites {unknown}; valid: {', '.join(funcs)}")
    work = model.__class__()
    work.CopyFrom(model)
    done = {}
    for r in rewrites:
        names = funcs[r](work)
        if names:
            done[r] = names
    if not done:
        return {}
    if samples is not None and len(samples):
        name = input_name or model.graph.input[0].name
        x = np.ascontiguousarray(samples, dtype=np.float32)
        want = make_session(model, threads=1).run(None, {name: x})
        got = make_session(work, threads=1).run(None, {name: x})
        for a, b in zip(want, got):
            scale = float(np.abs(a).max()) or 1.0
            if a.shape != b.shape or float(np.abs(a - b).max()) > rtol * scale:
                log.warning("cpu rewrites %s change the FP32 outputs (max |diff| %.3g); quantizing the graph as exported",
                            list(done), float(np.abs(a - b).max()) if a.shape == b.shape else float("nan"))
                return {}
    model.CopyFrom(work)
    return done
