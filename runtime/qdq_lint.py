"""Q/DQ lint for TensorRT, plus the graph inspection the quantizers share.

TensorRT consumes INT8 as *explicit* quantization: QuantizeLinear/DequantizeLinear pairs in the
ONNX graph, which it fuses into the neighbouring layers. Its rules (onnx-tensorrt
``docs/operators.md``; TensorRT "Working with quantized types"):

- zero points are 0 (symmetric) and the quantized type is INT8 (UINT8 is rejected);
- scales are constant and positive; activations are quantized **per tensor** (a per-channel
  activation quantizer, which NNCF's ONNX default puts on depthwise-conv inputs, is rejected by
  TensorRT and breaks onnxruntime's optimized session: docs/measured-facts.md);
- weights may be per channel, along the *output-channel* axis: 0 for Conv and Gemm(transB=1),
  1 for ConvTranspose (weights are (C_in, C_out/group, kH, kW)) and Gemm(transB=0)/MatMul;
- biases stay float (an INT32 DequantizeLinear bias is an onnxruntime/QOperator idiom);
- Conv/ConvTranspose/Gemm/MatMul run in INT8 only when *both* their data and weight inputs come
  from DequantizeLinear. Q/DQ in front of an op TensorRT has no INT8 kernel for (Min, Max, Mul,
  Sub, Reduce*, Softmax, ...) only adds rounding and a reformat: a warning.

`lint_qdq` returns a `LintReport` of `runtime.findings.Finding`s (the type preflight reports too); `python -m quantize lint X.onnx`
prints it. The module also holds the graph helpers the quantizers share: `GraphIndex`,
`sensitive_scopes` (the parts docs/models.md §5 suggests keeping in float) and `quantized_ops`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ArtifactError
from runtime.findings import Finding, Severity

QUANT_OPS = ("QuantizeLinear", "DequantizeLinear")
# Ops TensorRT runs in INT8 when their inputs are dequantized (the compute ops of the lint).
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# onnx-tensorrt's support matrix lists INT8 for these (plus the compute ops above); Add is listed
# FP32/FP16/INT32 but TensorRT fuses a dequantized residual Add into the preceding convolution.
TRT_INT8_OPS = frozenset(
    {
        *COMPUTE_OPS,
        "Add",
        "AveragePool",
        "Cast",
        "Clip",
        "Concat",
        "Elu",
        "Flatten",
        "Gather",
        "GatherElements",
        "GatherND",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "HardSigmoid",
        "Identity",
        "LeakyRelu",
        "LpPool",
        "MaxPool",
        "Pad",
        "PRelu",
        "Relu",
        "Reshape",
        "Round",
        "Selu",
        "Shape",
        "Sigmoid",
        "Sign",
        "Size",
        "Slice",
        "Softplus",
        "Softsign",
        "Squeeze",
        "Tanh",
        "ThresholdedRelu",
        "Transpose",
        "Unsqueeze",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
# Ops through which TensorRT moves Q/DQ (they commute with per-tensor quantization).
_PASS_THROUGH = frozenset(
    {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather", "MaxPool", "Pad"}
)
_INT8 = 3  # onnx.TensorProto.INT8
_UINT8 = 2  # onnx.TensorProto.UINT8
_DTYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 10: "FLOAT16", 17: "FLOAT8E4M3FN", 22: "INT4"}


@dataclass(frozen=True)
class LintReport:
    """All findings of one model and a small inventory of its quantization.

    Attributes:
        model: Where the model came from ("" for an in-memory model).
        findings: Every finding, errors first (codes such as ``asymmetric-zero-point``; the message
            says what was found, what TensorRT expects and how to fix it).
        quantize_nodes, dequantize_nodes: Q and DQ node counts.
        int8_ops: Compute ops (Conv/ConvTranspose/Gemm/MatMul) whose data and weight are dequantized.
        float_ops: Compute ops left in float.
    """

    model: str
    findings: tuple[Finding, ...]
    quantize_nodes: int
    dequantize_nodes: int
    int8_ops: tuple[str, ...]
    float_ops: tuple[str, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def passed(self) -> bool:
        return not self.errors

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity is severity}

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (
            f"Q/DQ lint {verdict} for {self.model or 'model'}: {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s); {len(self.int8_ops)} INT8 compute op(s), "
            f"{len(self.float_ops)} in float; {self.quantize_nodes} Q / {self.dequantize_nodes} DQ nodes"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "passed": self.passed,
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "quantize_nodes": self.quantize_nodes,
            "dequantize_nodes": self.dequantize_nodes,
            "int8_ops": list(self.int8_ops),
            "float_ops": list(self.float_ops),
            "findings": [f.to_dict() for f in self.findings],
        }


# --- graph helpers -------------------------------------------------------------------------------


class GraphIndex:
    """Producers, consumers and constant values of an ONNX graph (main graph only)."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        self.model = model
        graph = model.graph
        self.nodes = list(graph.node)
        self.constants: dict[str, np.ndarray] = {}
        self.const_dtypes: dict[str, int] = {}
        for init in graph.initializer:
            self.constants[init.name] = numpy_helper.to_array(init)
            self.const_dtypes[init.name] = init.data_type
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in self.nodes:
            for out in node.output:
                self.producer[out] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:
                    if attr.name == "value" and attr.HasField("t"):
                        self.constants[node.output[0]] = numpy_helper.to_array(attr.t)
                        self.const_dtypes[node.output[0]] = attr.t.data_type
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.constants]
        self.graph_outputs = [o.name for o in graph.output]

    def is_constant(self, name: str) -> bool:
        """A tensor with a fixed value: an initializer, a Constant, or a DQ/Q/Cast/Identity of one."""
        seen = 0
        while name not in self.constants:
            node = self.producer.get(name)
            if node is None or node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Cast", "Identity"):
                return False
            name = node.input[0]
            seen += 1
            if seen > 8:
                return False
        return True

    def dq_source(self, name: str, _depth: int = 0) -> Any | None:
        """The DequantizeLinear whose value reaches ``name`` through data-movement ops, or None.

        TensorRT propagates Q/DQ through ops that only move or select values (Reshape, Transpose,
        Slice, MaxPool, Concat of dequantized inputs, ...), so a convolution behind them still
        runs in INT8.
        """
        node = self.producer.get(name)
        if node is None or _depth > 8:
            return None
        if node.op_type == "DequantizeLinear":
            return node
        if node.op_type in _PASS_THROUGH:
            return self.dq_source(node.input[0], _depth + 1)
        if node.op_type == "Concat":
            srcs = [self.dq_source(i, _depth + 1) for i in node.input]
            return srcs[0] if srcs and all(s is not None for s in srcs) else None
        return None

    def attr(self, node, name: str, default: Any = None) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def load_model(model_or_path) -> tuple[Any, str]:
    """(ModelProto, source) from a path or a ModelProto; a clear error for a bad file."""
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        path = Path(model_or_path)
        if not path.is_file():
            raise ArtifactError(f"{path}: ONNX model not found")
        try:
            return onnx.load(str(path)), str(path)
        except Exception as exc:  # protobuf DecodeError and friends
            raise ArtifactError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    return model_or_path, ""


def _qtype(g: GraphIndex, node) -> int | None:
    """The integer type a Q produces / a DQ consumes (None when it cannot be told)."""
    if len(node.input) > 2 and node.input[2]:
        return g.const_dtypes.get(node.input[2])
    if node.op_type == "QuantizeLinear":
        return g.attr(node, "output_dtype", 0) or _UINT8  # ONNX default without zero point: uint8
    src = node.input[0]
    if src in g.const_dtypes:
        return g.const_dtypes[src]
    prod = g.producer.get(src)
    if prod is not None and prod.op_type == "QuantizeLinear":
        return _qtype(g, prod)
    return None


def _is_weight_quantizer(g: GraphIndex, node) -> bool:
    return g.is_constant(node.input[0])


def quantized_ops(model) -> dict[str, list[str]]:
    """Names of compute ops (Conv/ConvTranspose/Gemm/MatMul) by status: ``int8``, ``float``, ``partial``."""
    g = model if isinstance(model, GraphIndex) else GraphIndex(model)
    out: dict[str, list[str]] = {"int8": [], "float": [], "partial": []}
    for node in g.nodes:
        if node.op_type not in COMPUTE_OPS:
            continue
        data_dq = g.dq_source(node.input[0]) is not None
        weight_dq = len(node.input) > 1 and g.dq_source(node.input[1]) is not None
        key = "int8" if data_dq and weight_dq else ("float" if not data_dq and not weight_dq else "partial")
        out[key].append(node.name)
    return out


def _weight_axis(g: GraphIndex, node, input_index: int, rank: int) -> tuple[int | None, str]:
    """Expected per-channel axis of a weight feeding ``node`` at ``input_index``, and why."""
    op = node.op_type
    if op == "Conv" and input_index == 1:
        return 0, "Conv weights are (C_out, C_in/group, kH, kW): output channels on axis 0"
    if op == "ConvTranspose" and input_index == 1:
        if int(g.attr(node, "group", 1)) != 1:
            return None, "grouped ConvTranspose has no single output-channel axis"
        return 1, "ConvTranspose weights are (C_in, C_out, kH, kW): output channels on axis 1"
    if op == "Gemm" and input_index == 1:
        if int(g.attr(node, "transB", 0)):
            return 0, "Gemm(transB=1) weights are (N, K): output features on axis 0"
        return 1, "Gemm(transB=0) weights are (K, N): output features on axis 1"
    if op == "Gemm" and input_index == 0:
        return (1, "Gemm(transA=1) A is (K, M)") if int(g.attr(node, "transA", 0)) else (None, "")
    if op == "MatMul" and input_index == 1:
        return rank - 1, "MatMul B is (..., K, N): output features on the last axis"
    return None, ""


def _names(nodes: Iterable[str], n: int = 5) -> str:
    nodes = list(nodes)
    head = ", ".join(nodes[:n])
    return head + (f" and {len(nodes) - n} more" if len(nodes) > n else "")


def lint_qdq(model_or_path, *, expected_float: Iterable[str] = ()) -> LintReport:
    """Check a Q/DQ model against TensorRT's explicit-quantization rules.

    Args:
        model_or_path: An ONNX ModelProto or a path to one.
        expected_float: Names of compute ops deliberately kept in float (the ignored scope);
            they are listed as info instead of a warning.

    Returns:
        A `LintReport`; ``passed`` is False when any finding is an error.

    Raises:
        ArtifactError: when the path is missing or not an ONNX model.
    """
    model, source = load_model(model_or_path)
    g = GraphIndex(model)
    findings: list[Finding] = []
    expected_float = set(expected_float)

    def add(sev: Severity, code: str, node: str, msg: str) -> None:
        findings.append(Finding(sev, code, msg, node=node))

    qnodes = [n for n in g.nodes if n.op_type == "QuantizeLinear"]
    dqnodes = [n for n in g.nodes if n.op_type == "DequantizeLinear"]
    for node in qnodes + dqnodes:
        name = node.name or f"{node.op_type}({node.input[0]})"
        is_weight = _is_weight_quantizer(g, node)
        # A DQ fed by a Q is one quantizer: judge activation pairs on the Q only.
        paired = (
            node.op_type == "DequantizeLinear"
            and (p := g.producer.get(node.input[0])) is not None
            and (p.op_type == "QuantizeLinear")
        )
        domain = node.domain or ""
        if domain not in ("", "ai.onnx"):
            add(
                Severity.ERROR,
                "custom-domain-qdq",
                name,
                f"{node.op_type} in domain {domain!r}: TensorRT parses only the default-domain Q/DQ ops; "
                "quantize without UseQDQContribOps",
            )
        scale_name = node.input[1] if len(node.input) > 1 else ""
        if scale_name not in g.constants:
            add(
                Severity.ERROR,
                "non-constant-scale",
                name,
                f"scale {scale_name!r} is not an initializer/Constant; TensorRT needs constant scales",
            )
            continue
        scale = np.asarray(g.constants[scale_name])
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            add(
                Severity.ERROR,
                "bad-scale",
                name,
                f"scale has non-positive or non-finite values (min {scale.min():.3g})",
            )
        qtype = _qtype(g, node)
        if qtype is not None and qtype != _INT8:
            tname = _DTYPE_NAMES.get(qtype, str(qtype))
            add(
                Severity.ERROR,
                "non-int8-type",
                name,
                f"quantized type is {tname}; TensorRT's INT8 Q/DQ needs signed INT8 (S8S8). "
                "Quantize with --target tensorrt (ORT: QuantType.QInt8 for activations and weights)",
            )
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if zp_name:
            if zp_name not in g.constants:
                add(Severity.ERROR, "non-constant-zero-point", name, f"zero point {zp_name!r} is not constant")
            else:
                zp = np.asarray(g.constants[zp_name])
                if np.any(zp != 0) and not paired:
                    add(
                        Severity.ERROR,
                        "asymmetric-zero-point",
                        name,
                        f"zero point is not 0 (values {np.unique(zp)[:5].tolist()}); TensorRT quantization is "
                        "symmetric: use symmetric activations (NNCF preset PERFORMANCE, ORT "
                        "ActivationSymmetric=True)",
                    )
                if zp.size != scale.size:
                    add(
                        Severity.ERROR, "zero-point-shape", name, f"zero point has {zp.size} values, scale {scale.size}"
                    )
        if not is_weight and scale.size > 1 and not paired:
            add(
                Severity.ERROR,
                "per-channel-activation",
                name,
                f"activation quantizer on {node.input[0]!r} has {scale.size} scales (axis "
                f"{g.attr(node, 'axis', 1)}); TensorRT and onnxruntime's optimized CPU session take per-tensor "
                "activation scales only. NNCF: AdvancedQuantizationParameters(activations_quantization_params="
                "QuantizationParameters(per_channel=False))",
            )
        if paired:
            q = g.producer[node.input[0]]
            same_scale = q.input[1] == node.input[1] or (
                q.input[1] in g.constants and np.array_equal(g.constants[q.input[1]], scale)
            )
            qz = q.input[2] if len(q.input) > 2 else ""
            same_zp = qz == zp_name or (
                qz in g.constants and zp_name in g.constants and np.array_equal(g.constants[qz], g.constants[zp_name])
            )
            if not (same_scale and same_zp):
                add(
                    Severity.ERROR,
                    "mismatched-pair",
                    name,
                    f"DequantizeLinear does not use the scale/zero point of its QuantizeLinear {q.name!r}",
                )

    # Consumers of dequantized tensors: bias, weight axes, ops TensorRT runs in float.
    float_only: dict[str, list[str]] = {}
    for dq in dqnodes:
        name = dq.name or f"DequantizeLinear({dq.input[0]})"
        scale = np.asarray(g.constants.get(dq.input[1], np.ones(1)))
        is_weight = _is_weight_quantizer(g, dq)
        for consumer, idx in g.consumers.get(dq.output[0], []):
            op = consumer.op_type
            if op in ("Conv", "ConvTranspose") and idx == 2 or op == "Gemm" and idx == 2:
                add(
                    Severity.ERROR,
                    "quantized-bias",
                    consumer.name,
                    f"bias {consumer.input[2]!r} is dequantized from {_DTYPE_NAMES.get(_qtype(g, dq) or 0, '?')}; "
                    "TensorRT takes a float bias (ORT: extra_options QuantizeBias=False)",
                )
                continue
            if is_weight and op in COMPUTE_OPS and scale.size > 1:
                w = g.constants.get(dq.input[0])
                if w is None and (p := g.producer.get(dq.input[0])) is not None:
                    w = g.constants.get(p.input[0])
                rank = w.ndim if w is not None else 4
                axis = int(g.attr(dq, "axis", 1))
                axis = axis + rank if axis < 0 else axis
                want, why = _weight_axis(g, consumer, idx, rank)
                if want is not None and axis != want:
                    add(
                        Severity.ERROR,
                        "weight-axis",
                        consumer.name,
                        f"per-channel weight scales on axis {axis}, expected {want} ({why})",
                    )
                elif w is not None and axis < w.ndim and w.shape[axis] != scale.size:
                    add(
                        Severity.ERROR,
                        "weight-axis",
                        consumer.name,
                        f"{scale.size} weight scales for {w.shape[axis]} channels on axis {axis}",
                    )
            if not is_weight and op not in TRT_INT8_OPS and consumer.name not in float_only.get(op, []):
                float_only.setdefault(op, []).append(consumer.name)
    for op, nodes in sorted(float_only.items()):
        add(
            Severity.WARNING,
            "float-only-op-quantized",
            op,
            f"{len(nodes)} {op} node(s) take dequantized inputs ({_names(nodes)}), but TensorRT has no INT8 {op}: "
            "it runs them in float, so those Q/DQ pairs only add rounding and a reformat; keep them out of "
            "the quantized scope",
        )

    status = quantized_ops(g)
    for n in status["partial"]:
        add(
            Severity.WARNING,
            "partially-quantized",
            n,
            "only one of data/weight is dequantized: TensorRT runs it in float; quantize both or neither",
        )
    unexpected = [n for n in status["float"] if n not in expected_float]
    if unexpected and status["int8"]:
        add(
            Severity.INFO,
            "float-compute-op",
            "",
            f"{len(status['float'])} compute op(s) stay in float ({_names(status['float'])})",
        )
    if not status["int8"]:
        add(
            Severity.ERROR,
            "no-int8-ops",
            "",
            "no Conv/ConvTranspose/Gemm/MatMul has dequantized data and weight inputs: not an INT8 Q/DQ model",
        )
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    findings.sort(key=lambda f: order[f.severity])
    return LintReport(
        model=source,
        findings=tuple(findings),
        quantize_nodes=len(qnodes),
        dequantize_nodes=len(dqnodes),
        int8_ops=tuple(status["int8"]),
        float_ops=tuple(status["float"]),
    )


# --- sensitive parts (docs/models.md §5) --------------------------------------------------------------

REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "GlobalAveragePool", "GlobalMaxPool")
GROUPS = ("gates", "pwfs", "heads", "stem")


@dataclass(frozen=True)
class SensitiveScopes:
    """Node names of the numerically sensitive parts, by group.

    Attributes:
        gates: Attention gates: every node from a Reduce*/global pool up to a Sigmoid (MassAtt's
            GAP-SE Gemms and tiny strided conv/ConvT; CBAM's MLP and 7×7 2→1 conv), the Sigmoid
            and the Mul(s) applying it.
        pwfs: Point-wise feature selection (Min/Max and the Add/Sub/Mul combining them).
        heads: The compute op(s) producing each graph output (classifier heads).
        stem: The compute op(s) reading the graph input (LANMSFF's 1→66 conv).
    """

    gates: tuple[str, ...] = ()
    pwfs: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    stem: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def group(self, name: str) -> tuple[str, ...]:
        return getattr(self, name) if name in GROUPS else self.extra.get(name, ())

    def to_dict(self) -> dict[str, list[str]]:
        return {g: list(self.group(g)) for g in GROUPS}


def sensitive_scopes(model, *, max_depth: int = 10) -> SensitiveScopes:
    """Find the parts docs/models.md §5 suggests keeping in float, by graph structure (no names)."""
    g = model if isinstance(model, GraphIndex) else GraphIndex(model)
    gates: dict[str, None] = {}
    for sig in (n for n in g.nodes if n.op_type in ("Sigmoid", "HardSigmoid")):
        # Walk back to the reductions that start the gate; give up past max_depth (not a gate).
        path: dict[str, None] = {}
        frontier, found, depth = [sig], False, 0
        while frontier and depth < max_depth:
            nxt = []
            for node in frontier:
                path[node.name] = None
                if node.op_type in REDUCE_OPS:
                    found = True
                    continue
                for inp in node.input:
                    prod = g.producer.get(inp)
                    if prod is not None and not g.is_constant(inp) and prod.op_type not in QUANT_OPS:
                        nxt.append(prod)
            frontier, depth = nxt, depth + 1
        if not found or frontier:
            continue
        gates.update(path)
        # The Mul(s) applying the gate, through shape ops.
        outs, hops = [sig.output[0]], 0
        while outs and hops < 4:
            nxt_outs = []
            for t in outs:
                for consumer, _ in g.consumers.get(t, []):
                    if consumer.op_type in ("Mul",):
                        gates[consumer.name] = None
                        nxt_outs.extend(consumer.output)
                    elif consumer.op_type in ("Unsqueeze", "Reshape", "Expand", "Identity"):
                        nxt_outs.extend(consumer.output)
            outs, hops = nxt_outs, hops + 1
    pwfs: dict[str, None] = {}
    for node in g.nodes:
        if node.op_type in ("Min", "Max"):
            pwfs[node.name] = None
            for consumer, _ in g.consumers.get(node.output[0], []):
                if consumer.op_type in ("Sub", "Add", "Min", "Max"):
                    pwfs[consumer.name] = None
    # Sub/Add chains between Min/Max belong to PWFS too (sum - min - max).
    for node in g.nodes:
        if node.op_type == "Sub" and any((p := g.producer.get(i)) is not None and p.name in pwfs for i in node.input):
            pwfs[node.name] = None
            for consumer, _ in g.consumers.get(node.output[0], []):
                if consumer.op_type in ("Sub", "Add", "Mul"):
                    pwfs[consumer.name] = None
    heads: dict[str, None] = {}
    for out in g.graph_outputs:
        node, hops = g.producer.get(out), 0
        while node is not None and node.op_type not in COMPUTE_OPS and hops < 6:
            node = g.producer.get(node.input[0]) if node.input else None
            hops += 1
        if node is not None and node.op_type in COMPUTE_OPS:
            heads[node.name] = None
    stem: dict[str, None] = {}
    for inp in g.graph_inputs:
        for consumer, _ in g.consumers.get(inp, []):
            if consumer.op_type in COMPUTE_OPS:
                stem[consumer.name] = None
    return SensitiveScopes(tuple(gates), tuple(pwfs), tuple(heads), tuple(stem))


def resolve_ignore(tokens: Iterable[str], model, scopes: SensitiveScopes | None = None) -> dict[str, tuple[str, ...]]:
    """Turn ``--ignore`` tokens into node names, grouped by token.

    Tokens: a group name (``gates``, ``pwfs``, ``heads``, ``stem``), ``type:OpType`` (every node
    of that type) or a node name. ``none`` and ``auto`` are handled by the caller.

    Raises:
        ConfigError: for a token that matches nothing (listing the groups and a few node names).
    """
    from runtime.errors import ConfigError

    g = model if isinstance(model, GraphIndex) else GraphIndex(model)
    scopes = scopes or sensitive_scopes(g)
    names = {n.name for n in g.nodes}
    out: dict[str, tuple[str, ...]] = {}
    for tok in tokens:
        tok = tok.strip()
        if not tok:
            continue
        if tok in GROUPS:
            out[tok] = scopes.group(tok)
        elif tok.startswith("type:"):
            op = tok.split(":", 1)[1]
            found = tuple(n.name for n in g.nodes if n.op_type == op)
            if not found:
                raise ConfigError(f"--ignore {tok}: the model has no {op} node")
            out[tok] = found
        elif tok in names:
            out[tok] = (tok,)
        else:
            sample = _names(sorted(names), 3)
            raise ConfigError(
                f"--ignore token {tok!r} is neither a group ({', '.join(GROUPS)}), 'type:OpType', 'auto', 'none' "
                f"nor a node name (e.g. {sample})"
            )
    return out


def flatten_scope(groups: Mapping[str, Iterable[str]]) -> list[str]:
    """Unique node names of several groups, in first-seen order."""
    return list(dict.fromkeys(n for names in groups.values() for n in names))
