"""Roofline figures: how close a model's INT8 rows come to this CPU's INT8 limit.

    from runtime.roofline import count_macs, measure_peak
    macs = count_macs("model.int8.onnx", batch=32)     # MacCount: int8 / float multiply-accumulates
    peak = measure_peak("ort", threads=1)               # Peak: MAC/s of a large INT8 GEMM, same runtime
    pct = 100 * macs.int8_macs / (p50_ms / 1e3) / peak.macs_per_s

`count_macs` counts the multiply-accumulates of the compute nodes (Conv, ConvTranspose,
ConvInteger, QLinearConv, MatMul, MatMulInteger, QLinearMatMul, Gemm) from the ONNX shapes, with
the batch dimension made concrete and ``onnx.shape_inference`` run on the graph. A node counts
as INT8 when it is an integer op, or when its weight comes from a ``DequantizeLinear`` of an
8-bit constant *and* its other input comes from a ``DequantizeLinear`` too (a Q/DQ pair the
runtime fuses into an integer kernel); a weight-only quantized node runs in float and counts as
float. MACs of a convolution: ``N * Cout * Hout * Wout * (Cin / group) * kh * kw`` (the output
size times the weight's per-output-channel size, which handles grouped and depthwise convs).

`measure_peak` times a large INT8 GEMM built as a Q/DQ ONNX model (uint8 activations, int8
weights, requantized uint8 output) in the same runtime and thread count as a bench row, through
the project's backends (``ort``: `runtime.backends.ort.make_session`; ``openvino``: the
OpenVINO backend), in two forms: ``MatMul`` [M, K] x [K, N] and the same sizes as a 1x1 ``Conv``
over an M-pixel image (the kernels a CNN's pointwise convolutions use). The faster form's median
is the peak; each form's figures are kept. Peaks are cached per (runtime, threads, sizes) within
a process.

The figure is a lower bound of the INT8 kernels' efficiency: a row's latency also pays float
layers, (de)quantization, memory traffic and per-call overheads, which dominate for a small
model at batch 1. No torch here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, ConfigError, require

log = logging.getLogger(__name__)

# op type -> (activation input index, weight input index); integer ops are INT8 by construction.
MAC_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1),
    "ConvTranspose": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "Gemm": (0, 1),
}
INTEGER_OPS = frozenset({"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"})
# Ops that only move or reshape a tensor: a DequantizeLinear behind them still feeds the MAC op.
_PASS_THROUGH = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_INT8_TYPES = frozenset({2, 3})  # TensorProto.UINT8, TensorProto.INT8
# Runtimes `measure_peak` can time (the bench backends of the CPU).
PEAK_RUNTIMES = ("ort", "openvino")
FORMS = ("matmul", "conv1x1")
# The peak GEMM (M, K, N) and the seconds its timing shares out between the forms. 1024^3 is
# ~1.07 GMAC per call: milliseconds on one core, far above per-call overheads, and its operands
# (1 MiB each) fit in L2/L3 as a large layer's do. The bench reads these at call time.
PEAK_GEMM = (1024, 1024, 1024)
PEAK_SECONDS = 2.0


@dataclass(frozen=True)
class NodeMacs:
    """Multiply-accumulates of one node at the counted batch."""

    name: str
    op_type: str
    macs: int
    int8: bool


@dataclass(frozen=True)
class MacCount:
    """Multiply-accumulates of one model at one batch size.

    Attributes:
        model: What was counted (a path, or ``<ModelProto>``).
        batch: Batch the counts are for.
        int8_macs: MACs of nodes that run as INT8 (integer ops, or Q/DQ on both inputs).
        float_macs: MACs of the other counted nodes.
        nodes: Per-node counts, graph order.
    """

    model: str
    batch: int
    int8_macs: int
    float_macs: int
    nodes: tuple[NodeMacs, ...] = field(default=(), hash=False)

    @property
    def total_macs(self) -> int:
        return self.int8_macs + self.float_macs

    @property
    def int8_fraction(self) -> float:
        return self.int8_macs / self.total_macs if self.total_macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "batch": self.batch,
            "int8_macs": self.int8_macs,
            "float_macs": self.float_macs,
            "total_macs": self.total_macs,
            "int8_fraction": self.int8_fraction,
            "nodes": len(self.nodes),
        }


def _load(model: Any):
    onnx = require("onnx", "runtime")
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, "<ModelProto>"
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"count_macs takes an ONNX path or an onnx.ModelProto, got {type(model).__name__}")
    path = Path(model)
    if path.suffix.lower() != ".onnx":
        raise ArtifactError(
            f"{path}: MACs are counted from ONNX graphs (a .onnx file), got a {path.suffix or 'suffix-less'} file; "
            "count the exported ONNX model instead (TensorRT engines and checkpoints carry no ONNX shapes)"
        )
    if not path.is_file():
        raise ArtifactError(f"{path}: no such ONNX file; check the path (export the model first)")
    try:
        return onnx.load(str(path)), str(path)
    except Exception as exc:  # DecodeError and friends
        raise ArtifactError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {str(exc)[:200]}); re-export it"
        ) from exc


def _shape(vi: Any) -> tuple[int, ...] | None:
    """Concrete dims of a ValueInfoProto, or None when a dim is unknown."""
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if not d.HasField("dim_value") or d.dim_value <= 0:
            return None
        dims.append(int(d.dim_value))
    return tuple(dims)


def _concrete_batch(model: Any, batch: int | None, label: str) -> int:
    """Set axis 0 of every graph input (not an initializer) to ``batch`` where it is symbolic;
    returns the batch counted (``batch`` None: a fixed axis 0 as it is, a symbolic one as 1)."""
    seen = None
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if not dims:
            continue
        d0 = dims[0]
        if d0.HasField("dim_value") and d0.dim_value > 0:
            seen = seen or int(d0.dim_value)
            if batch is not None and d0.dim_value != batch:
                raise ConfigError(
                    f"{label}: input {inp.name!r} has a fixed batch of {d0.dim_value}, asked to count MACs at "
                    f"batch {batch}; count at batch {d0.dim_value} (or make the batch dynamic: export adopt)"
                )
            continue
        d0.Clear()
        d0.dim_value = 1 if batch is None else batch
    del model.graph.value_info[:]  # stale symbolic shapes would survive the merge with inferred ones
    for out in model.graph.output:
        if out.type.tensor_type.HasField("shape"):
            out.type.tensor_type.ClearField("shape")
    return batch if batch is not None else (seen or 1)


def count_macs(model: str | os.PathLike | Any, batch: int | None = 1) -> MacCount:
    """Multiply-accumulates of ``model`` at ``batch``, split into INT8 and float.

    Args:
        model: An ONNX path or an ``onnx.ModelProto`` (copied, not modified).
        batch: Batch size given to a symbolic axis 0 of the graph inputs (None: the graph's own
            fixed batch, or 1 where it is symbolic).

    Raises:
        ArtifactError: not an ONNX file, unreadable, or a MAC node whose shapes shape inference
            cannot make concrete (a dynamic spatial size, an op it does not know).
        ConfigError: batch < 1, or a fixed-batch model asked at another batch.
    """
    if batch is not None and int(batch) < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    batch = None if batch is None else int(batch)
    onnx = require("onnx", "runtime")
    m, label = _load(model)
    batch = _concrete_batch(m, batch, label)
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:  # InferenceError on an inconsistent graph
        raise ArtifactError(
            f"{label}: ONNX shape inference failed at batch {batch} ({type(exc).__name__}: {str(exc)[:300]}); "
            "check the model with onnx.checker / `ferdeploy export check`"
        ) from exc
    g = m.graph
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        shapes[vi.name] = _shape(vi)
    consts: dict[str, int] = {}  # name -> TensorProto data type of a constant
    for init in g.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
        consts[init.name] = init.data_type
    producer: dict[str, Any] = {}
    for node in g.node:
        for o in node.output:
            producer[o] = node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            shapes[node.output[0]] = tuple(int(d) for d in t.dims)
            consts[node.output[0]] = t.data_type

    def source(name: str) -> Any:
        node = producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH and node.input:
            node = producer.get(node.input[0])
        return node

    def dq_of_int8_const(name: str) -> bool:
        node = source(name)
        return node is not None and node.op_type == "DequantizeLinear" and consts.get(node.input[0]) in _INT8_TYPES

    def is_dq(name: str) -> bool:
        node = source(name)
        return node is not None and node.op_type == "DequantizeLinear"

    nodes: list[NodeMacs] = []
    for node in g.node:
        if node.op_type not in MAC_OPS or node.domain not in ("", "ai.onnx"):
            continue
        a_i, w_i = MAC_OPS[node.op_type]
        a, w = node.input[a_i], node.input[w_i]
        sa, sw, sy = shapes.get(a), shapes.get(w), shapes.get(node.output[0])
        missing = [n for n, s in ((a, sa), (w, sw), (node.output[0], sy)) if s is None]
        if missing:
            raise ArtifactError(
                f"{label}: node {node.name or node.op_type!r} ({node.op_type}) has no concrete shape for "
                f"{missing} at batch {batch} after ONNX shape inference; MACs need static shapes apart from "
                "the batch (fix the input's spatial size, or run onnx.shape_inference / onnxsim on the model)"
            )
        macs = _node_macs(node, sa, sw, sy)
        if node.op_type in INTEGER_OPS:
            int8 = True
        elif node.op_type in ("MatMul", "Gemm"):  # the constant operand may be either side of a MatMul
            int8 = (dq_of_int8_const(w) and is_dq(a)) or (dq_of_int8_const(a) and is_dq(w))
        else:
            int8 = dq_of_int8_const(w) and is_dq(a)
        nodes.append(NodeMacs(node.name or f"{node.op_type}_{len(nodes)}", node.op_type, macs, bool(int8)))
    i8 = sum(n.macs for n in nodes if n.int8)
    fl = sum(n.macs for n in nodes if not n.int8)
    return MacCount(label, batch, int(i8), int(fl), tuple(nodes))


def _attr(node: Any, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def _node_macs(node: Any, sa: tuple[int, ...], sw: tuple[int, ...], sy: tuple[int, ...]) -> int:
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        # Y [N, Cout, *spatial_out]; W [Cout, Cin/group, *kernel]
        return int(np.prod(sy, dtype=np.int64)) * int(np.prod(sw[1:], dtype=np.int64))
    if op == "ConvTranspose":
        # every input pixel scatters through W [Cin, Cout/group, *kernel]
        return int(np.prod(sa, dtype=np.int64)) * int(np.prod(sw[1:], dtype=np.int64))
    if op == "Gemm":
        k = sa[0] if _attr(node, "transA", 0) else sa[-1]
        return int(np.prod(sy, dtype=np.int64)) * int(k)
    # MatMul family: Y [..., M, N], K = A's last dim (a 1-D A is [K])
    return int(np.prod(sy, dtype=np.int64)) * int(sa[-1])


# --------------------------------------------------------------------------------------------
# Peak: a large INT8 GEMM in the row's runtime
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peak:
    """INT8 multiply-accumulates per second of a large Q/DQ GEMM on one runtime and thread count.

    Attributes:
        runtime: Backend name (``ort``, ``openvino``).
        threads: Intra-op threads.
        form: The faster form, kept as the peak (``matmul`` or ``conv1x1``).
        m, k, n: GEMM sizes (conv1x1: M pixels, K input and N output channels).
        macs_per_s: Median over repeats of the kept form.
        macs_per_s_min, macs_per_s_max: Range over repeats of the kept form.
        repeats: Timed repeats per form (each the median of its calls).
        forms: Form -> {"median", "min", "max", "p50_ms"} for every form measured.
        backend_info: What the backend ran with (its ``describe()``).
        seconds: Wall time the measurement took.
    """

    runtime: str
    threads: int
    form: str
    m: int
    k: int
    n: int
    macs_per_s: float
    macs_per_s_min: float
    macs_per_s_max: float
    repeats: int
    forms: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    backend_info: dict[str, Any] = field(default_factory=dict, hash=False)
    seconds: float = 0.0

    @property
    def gmacs(self) -> float:
        return self.macs_per_s / 1e9

    @property
    def key(self) -> str:
        return f"{self.runtime}/{self.threads}t"

    def describe(self) -> str:
        other = ", ".join(f"{f} {v['median'] / 1e9:.1f}" for f, v in sorted(self.forms.items()) if f != self.form)
        return (
            f"{self.runtime}, {self.threads} thread(s): {self.gmacs:.1f} GMAC/s "
            f"[{self.macs_per_s_min / 1e9:.1f}–{self.macs_per_s_max / 1e9:.1f}] over {self.repeats} repeats, "
            f"{self.form} M={self.m} K={self.k} N={self.n} (uint8 x int8 Q/DQ)"
            + (f"; other form: {other} GMAC/s" if other else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "runtime": self.runtime,
            "threads": self.threads,
            "form": self.form,
            "m": self.m,
            "k": self.k,
            "n": self.n,
            "gmacs": self.gmacs,
            "gmacs_min": self.macs_per_s_min / 1e9,
            "gmacs_max": self.macs_per_s_max / 1e9,
            "repeats": self.repeats,
            "forms": {f: {k: v for k, v in d.items()} for f, d in self.forms.items()},
            "backend_info": dict(self.backend_info),
            "seconds": self.seconds,
            "description": self.describe(),
        }


def gemm_model(m: int, k: int, n: int, form: str = "matmul", seed: int = 0):
    """A Q/DQ INT8 GEMM as an ONNX model: uint8 input -> DQ -> MatMul/Conv 1x1 (int8 weight via DQ) -> Q.

    ``matmul``: input [m, k], output [m, n]. ``conv1x1``: input [1, k, h, w] with h*w = m
    (h = w when m is a square), weight [n, k, 1, 1], output [1, n, h, w].
    """
    if form not in FORMS:
        raise ConfigError(f"unknown GEMM form {form!r}; valid: {FORMS}")
    if min(m, k, n) < 1:
        raise ConfigError(f"GEMM sizes must be >= 1, got M={m} K={k} N={n}")
    onnx = require("onnx", "runtime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if form == "matmul":
        w = rng.integers(-127, 128, size=(k, n), dtype=np.int8)
        x_shape, y_shape, op = [m, k], [m, n], "MatMul"
    else:
        h = int(np.sqrt(m))
        h = h if h * h == m else 1
        wd = m // h
        w = rng.integers(-127, 128, size=(n, k, 1, 1), dtype=np.int8)
        x_shape, y_shape, op = [1, k, h, wd], [1, n, h, wd], "Conv"
    inits = [
        numpy_helper.from_array(w, "W_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
        numpy_helper.from_array(np.array(0, np.int8), "w_zp"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_s"),
        numpy_helper.from_array(np.array(128, np.uint8), "x_zp"),
        numpy_helper.from_array(np.array(0.5, np.float32), "y_s"),
        numpy_helper.from_array(np.array(128, np.uint8), "y_zp"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_zp"], ["x"]),
        helper.make_node("DequantizeLinear", ["W_q", "w_s", "w_zp"], ["W"]),
        helper.make_node(op, ["x", "W"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "y_s", "y_zp"], ["y_q"]),
    ]
    graph = helper.make_graph(
        nodes,
        f"int8_gemm_{form}",
        [helper.make_tensor_value_info("x_q", TensorProto.UINT8, x_shape)],
        [helper.make_tensor_value_info("y_q", TensorProto.UINT8, y_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ferdeploy-roofline")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


_PEAKS: dict[tuple[Any, ...], Peak] = {}


def clear_peak_cache() -> None:
    """Forget the peaks measured in this process."""
    _PEAKS.clear()


def measure_peak(
    runtime: str,
    threads: int | None = None,
    *,
    m: int | None = None,
    k: int | None = None,
    n: int | None = None,
    forms: tuple[str, ...] = FORMS,
    seconds: float | None = None,
    repeats: int = 5,
    warmup: int = 2,
    cache: bool = True,
) -> Peak:
    """INT8 MAC/s of a large Q/DQ GEMM on ``runtime`` with ``threads`` intra-op threads.

    Sizes default to `PEAK_GEMM` and ``seconds`` to `PEAK_SECONDS`. Each form gets ``warmup``
    untimed calls, then ``repeats`` blocks of at least 3 calls, the forms alternating block by
    block and all blocks sharing ``seconds``; a block's rate is MACs / its median call time. The
    kept form is the one with the higher median rate.

    Raises:
        ConfigError: a runtime without a peak measurement (`PEAK_RUNTIMES`) or bad sizes.
        MissingDependencyError: the runtime is not installed (the error names the extra).
        ArtifactError: the runtime cannot load the GEMM model.
    """
    m, k, n = (PEAK_GEMM[i] if v is None else int(v) for i, v in enumerate((m, k, n)))
    seconds = PEAK_SECONDS if seconds is None else float(seconds)
    if runtime not in PEAK_RUNTIMES:
        raise ConfigError(f"no INT8 peak measurement for runtime {runtime!r}; measured for {PEAK_RUNTIMES}")
    if repeats < 1 or seconds < 0 or not forms:
        raise ConfigError(
            f"measure_peak needs repeats >= 1, seconds >= 0 and a form, got {repeats}, {seconds}, {forms}"
        )
    from runtime.backends import get_backend
    from runtime.backends.ort import default_threads

    threads = default_threads() if threads in (None, 0) else int(threads)
    key = (runtime, threads, m, k, n, tuple(forms), repeats)
    if cache and key in _PEAKS:
        return _PEAKS[key]
    onnx = require("onnx", "runtime")
    t_start = time.perf_counter()
    info: dict[str, Any] = {}
    block_s = seconds / len(forms) / repeats
    rates: dict[str, list[float]] = {f: [] for f in forms}
    p50s: dict[str, list[float]] = {f: [] for f in forms}
    with tempfile.TemporaryDirectory(prefix="ferdeploy-roofline-") as tmp, contextlib.ExitStack() as stack:
        runners = {}
        for form in forms:
            path = Path(tmp) / f"int8_gemm_{form}.onnx"
            onnx.save(gemm_model(m, k, n, form), str(path))
            be = stack.enter_context(get_backend(runtime)(path, threads=threads))
            info = be.describe()
            spec = be.input_specs[0]
            x = np.random.default_rng(1).integers(0, 256, size=spec.concrete_shape(1), dtype=np.uint8)
            runners[form] = (be, {spec.name: x})
            for _ in range(max(warmup, 1)):
                be.infer(runners[form][1])
        # Repeats alternate between the forms (A B B A ...), so a busy moment of a shared machine
        # hits both forms alike and does not decide which one is kept.
        for rep in range(repeats):
            for form in forms if rep % 2 == 0 else tuple(reversed(forms)):
                be, feeds = runners[form]
                t_end = time.perf_counter() + block_s
                calls: list[float] = []
                while len(calls) < 3 or time.perf_counter() < t_end:
                    t0 = time.perf_counter_ns()
                    be.infer(feeds)
                    calls.append((time.perf_counter_ns() - t0) / 1e9)
                med = float(np.median(calls))
                p50s[form].append(med * 1e3)
                rates[form].append(m * k * n / med)
    results: dict[str, dict[str, float]] = {}
    for form in forms:
        results[form] = {
            "median": float(np.median(rates[form])),
            "min": float(min(rates[form])),
            "max": float(max(rates[form])),
            "p50_ms": float(np.median(p50s[form])),
        }
        log.info(
            "INT8 peak %s %d thread(s) %s M=%d K=%d N=%d: %.1f GMAC/s [%.1f, %.1f]",
            runtime,
            threads,
            form,
            m,
            k,
            n,
            results[form]["median"] / 1e9,
            results[form]["min"] / 1e9,
            results[form]["max"] / 1e9,
        )
    best = max(results, key=lambda f: results[f]["median"])
    info.pop("path", None)
    peak = Peak(
        runtime=runtime,
        threads=threads,
        form=best,
        m=m,
        k=k,
        n=n,
        macs_per_s=results[best]["median"],
        macs_per_s_min=results[best]["min"],
        macs_per_s_max=results[best]["max"],
        repeats=repeats,
        forms=results,
        backend_info=info,
        seconds=time.perf_counter() - t_start,
    )
    if cache:
        _PEAKS[key] = peak
    return peak


def roofline_figures(macs: MacCount, p50_ms: float, peak: Peak | None) -> dict[str, Any]:
    """A bench row's roofline columns (pure).

    ``achieved_gmacs``: all counted MACs / p50; ``achieved_int8_gmacs``: INT8 MACs / p50;
    ``pct_of_int8_peak``: 100 * achieved INT8 MAC/s / the peak (None without INT8 MACs or a peak).
    """
    if p50_ms <= 0 or not np.isfinite(p50_ms):
        raise ConfigError(f"latency must be a positive finite number of ms, got {p50_ms}")
    s = p50_ms / 1e3
    achieved_i8 = macs.int8_macs / s / 1e9
    pct = 100.0 * achieved_i8 / peak.gmacs if (peak is not None and macs.int8_macs and peak.gmacs > 0) else None
    return {
        "macs": macs.total_macs,
        "int8_macs": macs.int8_macs,
        "float_macs": macs.float_macs,
        "achieved_gmacs": macs.total_macs / s / 1e9,
        "achieved_int8_gmacs": achieved_i8 if macs.int8_macs else None,
        "int8_peak_gmacs": peak.gmacs if peak is not None else None,
        "int8_peak_key": peak.key if peak is not None else None,
        "pct_of_int8_peak": pct,
    }
