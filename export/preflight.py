"""Preflight: is this ONNX file ready for TensorRT 10.3 / 11, and does it still compute the model?

``python -m export check model.onnx [--checkpoint ckpt.pt]`` (also run by every export) checks:

* ``onnx.checker`` full check and strict shape inference;
* every op against the onnx-tensorrt support list (``export/tensorrt_ops.json``, source named inside);
* traps that parse but break or slow TensorRT, each reported with the fix it needs:
  pooling/resize kernels computed from a runtime shape, whole-map pooling with a baked kernel,
  non-divisible adaptive pooling (PyTorch-level lint), batch-dependent shape arithmetic a TensorRT
  optimization profile cannot bound, int64 beyond shape tensors, If/Loop/Scan subgraphs, external
  weight files, dynamic non-batch axes;
* the deployment contract in ``metadata_props`` (and that it matches the checkpoint);
* with a checkpoint: ONNX Runtime FP32 vs PyTorch on real validation images from the checkpoint's
  dataset at batch 1 and 32: max abs difference of every output <= atol and top-1 agreement 100 %.

The result is a frozen `PreflightReport` of `runtime.findings.Finding`s (the type the Q/DQ lint
reports too), written as JSON beside the model as ``<stem>.preflight.json``.
Graph checks need only onnx/onnxruntime; torch is imported only for the PyTorch parts.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import atomic_write_json, library_versions, sha256_file
from runtime.errors import ArtifactError, PipelineError
from runtime.findings import Finding, Severity

log = logging.getLogger(__name__)

OPS_TABLE_PATH = Path(__file__).with_name("tensorrt_ops.json")
REPORT_SUFFIX = ".preflight.json"


# Finding codes (stable: tests, reports and dashboards key on them).
CHECKER_FAILED = "CHECKER_FAILED"
SHAPE_INFERENCE_FAILED = "SHAPE_INFERENCE_FAILED"
OPSET_UNSUPPORTED = "OPSET_UNSUPPORTED"
OPSET_NOT_DEFAULT = "OPSET_NOT_DEFAULT"
OP_REPORT = "OP_REPORT"
OP_UNSUPPORTED = "OP_UNSUPPORTED"
OP_UNVERIFIED = "OP_UNVERIFIED"
OP_RESTRICTED = "OP_RESTRICTED"
POOL_KERNEL_FROM_SHAPE = "POOL_KERNEL_FROM_SHAPE"
GLOBAL_POOL_FIXED_KERNEL = "GLOBAL_POOL_FIXED_KERNEL"
ADAPTIVE_POOL_NON_DIVISIBLE = "ADAPTIVE_POOL_NON_DIVISIBLE"
BATCH_SHAPE_ARITHMETIC = "BATCH_SHAPE_ARITHMETIC"
INT64_TENSOR = "INT64_TENSOR"
CONTROL_FLOW = "CONTROL_FLOW"
EXTERNAL_DATA = "EXTERNAL_DATA"
EXTERNAL_DATA_MISSING = "EXTERNAL_DATA_MISSING"
DYNAMIC_NON_BATCH_DIM = "DYNAMIC_NON_BATCH_DIM"
STATIC_BATCH = "STATIC_BATCH"
IO_NAMES = "IO_NAMES"
CONTRACT_MISSING = "CONTRACT_MISSING"
CONTRACT_MISMATCH = "CONTRACT_MISMATCH"
CONTRACT_CHECKPOINT_SHA = "CONTRACT_CHECKPOINT_SHA"
PARITY_OK = "PARITY_OK"
PARITY_MAX_ABS = "PARITY_MAX_ABS"
PARITY_TOP1 = "PARITY_TOP1"
PARITY_OUTPUTS = "PARITY_OUTPUTS"
PARITY_RANDOM_INPUTS = "PARITY_RANDOM_INPUTS"
PARITY_SKIPPED = "PARITY_SKIPPED"

_FIX_NON_DIVISIBLE = (
    "choose an input size whose feature map is a multiple of the output size, or use a fixed AvgPool2d(kernel, stride) "
    "with kernel = stride = input // output (or output size 1 = global pooling)"
)
_FIX_PARITY = (
    "look for ops exported with different semantics (resize modes, pooling ceil_mode, eps); compare intermediate "
    "tensors to find the first diverging node"
)
_TORCH_POOLS = frozenset({"avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d"})
_MEAN_AMAX_FIX = (
    "pool with x.mean((2, 3), keepdim=True) / x.amax((2, 3), keepdim=True) (or nn.AdaptiveAvgPool2d(1)), "
    "which export as ReduceMean/ReduceMax/GlobalAveragePool and keep the batch axis dynamic"
)


@dataclass(frozen=True)
class BatchParity:
    """ONNX Runtime FP32 vs PyTorch at one batch size, every output judged by `runtime.compare`.

    Attributes:
        batch: Batch size.
        max_abs_diff: Output name -> max |onnx - torch| (NaN when the ONNX output holds NaN/inf).
        top1_agreement: Output name -> fraction of samples with the same argmax (over axis 1).
        atol: The tolerance on ``max_abs_diff``.
        passed: Every output within ``atol``, finite, and 100 % top-1 agreement.
        flipped: Output name -> sample indices whose argmax differs.
    """

    batch: int
    max_abs_diff: dict[str, float] = field(hash=False)
    top1_agreement: dict[str, float] = field(hash=False)
    atol: float
    passed: bool
    flipped: dict[str, list[int]] = field(default_factory=dict, hash=False)


def export_tolerance(atol: float):
    """The export check's bounds: an absolute logit bound against PyTorch and identical decisions.

    Stricter than the FP32 row of `runtime.compare.TOLERANCES` on purpose: the exported graph must
    compute the checkpoint's function itself, so the logits (not only the probabilities) must agree
    to ``atol`` (1e-4 by default) and no sample may change class.
    """
    from runtime.compare import Tolerance

    return Tolerance(min_top1_agreement=1.0, max_abs_diff=atol)


def batch_parity(
    onnx_out: Mapping[str, np.ndarray], torch_out: Mapping[str, np.ndarray], *, batch: int, atol: float
) -> BatchParity:
    """Compare named ONNX outputs with PyTorch's, each through `runtime.compare.compare_outputs`.

    Outputs of rank 2 are (N, C) logits; higher ranks are judged along axis 1 at every position,
    lower ranks as one value per sample (agreement 1 by definition).

    Raises:
        ArtifactError: when an ONNX output's shape differs from PyTorch's.
    """
    from runtime.compare import Verdict, compare_outputs

    tol = export_tolerance(atol)
    diffs, agree, flipped, passed = {}, {}, {}, True
    for name, ref in torch_out.items():
        got = np.asarray(onnx_out[name], dtype=np.float64)
        ref = np.asarray(ref, dtype=np.float64)
        if got.shape != ref.shape:
            raise ArtifactError(f"output {name!r}: ONNX shape {got.shape} != PyTorch shape {ref.shape}")
        if not got.size:
            diffs[name], agree[name] = 0.0, 1.0
            continue
        if got.ndim >= 2:  # classes on axis 1; (sample, position...) rows in row-major order
            got2, ref2 = (np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]) for a in (got, ref))
        else:
            got2, ref2 = got.reshape(-1, 1), ref.reshape(-1, 1)
        res = compare_outputs(
            ref2,
            got2,
            None,
            precision="fp32",
            tolerance=tol,
            class_names=[str(c) for c in range(got2.shape[1])],
            sample_ids=[str(i) for i in range(got2.shape[0])],
        )
        finite = bool(np.all(np.isfinite(got)))
        diffs[name] = res.max_abs_diff if finite else float("nan")
        agree[name] = res.top1_agreement if got.ndim >= 2 else 1.0
        flips = [int(i) for i in res.flipped_ids] if got.ndim >= 2 else []
        if flips:
            flipped[name] = flips  # row indices: the sample for (N, C) outputs
        passed = passed and res.verdict is Verdict.PASS
    return BatchParity(batch, diffs, agree, atol, passed, flipped)


@dataclass(frozen=True)
class PreflightReport:
    """Everything preflight found about one ONNX file."""

    model: str
    model_sha256: str
    passed: bool
    findings: tuple[Finding, ...]
    opset: int
    ir_version: int
    op_counts: dict[str, int] = field(hash=False)
    inputs: dict[str, list] = field(hash=False)
    outputs: dict[str, list] = field(hash=False)
    parity: tuple[BatchParity, ...] = ()
    parity_inputs: str = ""
    checkpoint: str = ""
    elapsed_s: float = 0.0
    versions: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)

    @property
    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def max_abs_diff(self, batch: int, output: str = "logits") -> float | None:
        for p in self.parity:
            if p.batch == batch:
                return p.max_abs_diff.get(output)
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        d["parity"] = [asdict(p) for p in self.parity]
        return d

    def summary(self) -> str:
        counts = Counter(f.severity.value for f in self.findings)
        parity = ", ".join(f"batch {p.batch}: max|Δ| {max(p.max_abs_diff.values()):.2e}" for p in self.parity)
        return (
            f"preflight {'PASSED' if self.passed else 'FAILED'} for {self.model}: "
            f"{counts.get('error', 0)} error(s), {counts.get('warning', 0)} warning(s)"
            + (f"; parity {parity}" if parity else "")
        )


def _first_line(exc: BaseException, limit: int = 500) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def report_path(model_path: str | os.PathLike) -> Path:
    """``RUN/model.onnx`` -> ``RUN/model.preflight.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + REPORT_SUFFIX)


def write_report(report: PreflightReport, path: str | os.PathLike) -> Path:
    """Atomically write ``report`` as JSON."""
    return atomic_write_json(path, report.to_dict())


# --------------------------------------------------------------------------------------------
# The TensorRT op table


@dataclass(frozen=True)
class OpTable:
    """The op support list in ``tensorrt_ops.json``."""

    source: str
    opset_min: int
    opset_max: int
    domains: frozenset[str]
    supported: Mapping[str, str]  # op -> restrictions ("" when none)
    uncertain: Mapping[str, str]  # op -> why support is not verified for both targets
    unsupported: frozenset[str]


@lru_cache(maxsize=4)
def load_op_table(path: str | os.PathLike = OPS_TABLE_PATH) -> OpTable:
    """Read the TensorRT op support list (raises `ArtifactError` when missing or malformed)."""
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        return OpTable(
            source=d["source"],
            opset_min=int(d["opset_min"]),
            opset_max=int(d["opset_max"]),
            domains=frozenset(d["domains"]),
            supported=dict(d["supported"]),
            uncertain=dict(d["uncertain"]),
            unsupported=frozenset(d["unsupported"]),
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{p}: cannot read the TensorRT op table ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------
# Graph analysis (onnx only)

_ARITH_OPS = frozenset(
    "Add Sub Mul Div Mod Floor Ceil Neg Abs Pow Sqrt Min Max ReduceProd ReduceSum Round Reciprocal".split()
)
# Ops that only move shape values around without changing them.
_PASS_OPS = frozenset("Gather Slice Concat Unsqueeze Squeeze Cast Identity Reshape Expand Where Tile".split())
# Inputs that carry a shape, size, index or axes rather than tensor data: {op: input slots}.
_SHAPE_SLOTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Pad": frozenset({1, 3}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "ScatterND": frozenset({1}),
    "ScatterElements": frozenset({1}),
    "OneHot": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "CumSum": frozenset({1}),
    "Trilu": frozenset({1}),
    **{f"Reduce{r}": frozenset({1}) for r in "Max Mean Min Prod Sum SumSquare L1 L2 LogSum LogSumExp".split()},
}
# Consumers whose shape input decides an output shape (what an optimization profile must bound).
_SHAPE_CONSUMERS = frozenset({"Reshape", "Expand", "Tile", "ConstantOfShape", "Resize", "Upsample", "Range", "Pad"})
_POOL_OPS = frozenset({"AveragePool", "MaxPool", "LpPool"})
_KERNEL_CONSUMERS = _POOL_OPS | {"Resize", "Upsample"} | {f"Reduce{r}" for r in "Max Mean Min".split()}
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def _attr(node, name: str, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _iter_nodes(graph, prefix: str = "") -> Iterable[tuple[Any, str]]:
    """Every node of ``graph`` and its subgraphs, with a path prefix for nested ones."""
    for node in graph.node:
        yield node, prefix
        for a in node.attribute:
            if a.g is not None and a.g.node:
                yield from _iter_nodes(a.g, f"{prefix}{node.name or node.op_type}/")
            for g in a.graphs:
                yield from _iter_nodes(g, f"{prefix}{node.name or node.op_type}/")


def _dims(vi) -> list:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


class _GraphInfo:
    """Producers, consumers, constants and inferred types of a (main) graph."""

    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.graph = g
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in g.node:
            for o in node.output:
                self.producer[o] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers.setdefault(name, []).append((node, i))
        self.initializers = {t.name: t for t in g.initializer}
        self.const: dict[str, np.ndarray] = {}
        for t in g.initializer:
            if t.data_location != 1 and np.prod(t.dims, dtype=np.int64) <= 64:  # small, inline: shape constants
                self.const[t.name] = numpy_helper.to_array(t)
        for node in g.node:
            if node.op_type == "Constant" and node.output:
                v = _attr(node, "value")
                if v is not None and np.prod(v.dims, dtype=np.int64) <= 64:
                    self.const[node.output[0]] = numpy_helper.to_array(v)
        self.vi: dict[str, Any] = {}
        for vi in list(g.value_info) + list(g.input) + list(g.output):
            self.vi[vi.name] = vi
        self.elem_type: dict[str, int] = {n: vi.type.tensor_type.elem_type for n, vi in self.vi.items()}
        for t in g.initializer:
            self.elem_type[t.name] = t.data_type

    def dims(self, name: str) -> list:
        vi = self.vi.get(name)
        return _dims(vi) if vi is not None else []

    def batch_is_dynamic(self, name: str) -> bool:
        d = self.dims(name)
        return not d or not isinstance(d[0], int) or d[0] <= 0


def _shape_tags(info: _GraphInfo) -> tuple[set[str], dict[str, str]]:
    """Forward pass over shape computations.

    Returns:
        (tensors computed from a runtime Shape/Size, tensor -> batch tag) where the tag is
        ``vec`` (a shape vector whose element 0 is a dynamic batch), ``batch`` (carries the batch
        value unchanged) or ``arith`` (the batch went through arithmetic).
    """
    derived: set[str] = set()
    tag: dict[str, str] = {}
    rank = {"vec": 1, "batch": 2, "arith": 3}
    for node in info.graph.node:
        op = node.op_type
        ins = [i for i in node.input if i]
        if op in ("Shape", "Size"):
            derived.update(node.output)
            src = node.input[0]
            start = _attr(node, "start", 0)
            if info.batch_is_dynamic(src) and start in (0, None):
                for o in node.output:
                    tag[o] = "vec" if op == "Shape" else "arith"
            continue
        if op not in _PASS_OPS and op not in _ARITH_OPS:
            continue
        # Only the value-carrying inputs propagate (e.g. Reshape's data, Gather's data).
        data_inputs = [n for k, n in enumerate(node.input) if n and k not in _SHAPE_SLOTS.get(op, frozenset())]
        if op in ("Concat", "Where") or op in _ARITH_OPS:
            data_inputs = ins
        if not any(n in derived for n in data_inputs):
            continue
        derived.update(node.output)
        in_tags = [tag[n] for n in data_inputs if n in tag]
        if not in_tags:
            continue
        best = max(in_tags, key=rank.__getitem__)
        if op in _ARITH_OPS:
            out_tag = "arith"
        elif op == "Gather" and best == "vec":
            idx = info.const.get(node.input[1]) if len(node.input) > 1 else None
            out_tag = None if idx is not None and 0 not in np.atleast_1d(idx).tolist() else "batch"
        elif op == "Slice" and best == "vec":
            starts = info.const.get(node.input[1]) if len(node.input) > 1 else None
            out_tag = None if starts is not None and int(np.atleast_1d(starts)[0]) >= 1 else "vec"
        elif op == "Concat" and best == "vec":
            out_tag = "batch"
        else:
            out_tag = best
        if out_tag:
            for o in node.output:
                tag[o] = out_tag
    return derived, tag


def _shape_context(info: _GraphInfo, derived: set[str]) -> set[str]:
    """Tensors that only serve shape computations (shape-derived, or consumed only as shapes)."""
    ctx = set(derived)
    changed = True
    names = set(info.consumers) | set(info.initializers)
    while changed:
        changed = False
        for name in names - ctx:
            cons = info.consumers.get(name, [])
            if not cons:
                continue
            ok = True
            for node, slot in cons:
                if slot in _SHAPE_SLOTS.get(node.op_type, frozenset()):
                    continue
                if (node.op_type in _PASS_OPS or node.op_type in _ARITH_OPS) and all(
                    o in ctx for o in node.output if o
                ):
                    continue
                ok = False
                break
            if ok:
                ctx.add(name)
                changed = True
    return ctx


_ERR, _WARN, _INFO = Severity.ERROR, Severity.WARNING, Severity.INFO

_FIX_UNSUPPORTED = "rewrite the layer with supported ops (see export/tensorrt_ops.json) or provide a TensorRT plugin"
_FIX_CONTROL_FLOW = (
    "remove data-dependent Python control flow from forward() (use torch.where, unroll fixed loops, "
    "move branches outside the model) and re-export"
)
_FIX_BATCH_ARITH = (
    "keep the batch a pass-through: torch.flatten(x, 1), x.reshape(x.shape[0], -1) or -1 for the batch axis, "
    "constant channel/spatial sizes; do not fold the batch into other axes"
)
_FIX_INT64 = "use int32 where values fit (x.int(), torch.int32 buffers), keep int64 only for shape tensors"


def _opset_findings(model, table: OpTable) -> list[Finding]:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not table.opset_min <= opset <= table.opset_max:
        msg = f"default-domain opset {opset} is outside {table.opset_min}..{table.opset_max}, the range TensorRT 10.3 parses"
        return [
            Finding(_ERR, OPSET_UNSUPPORTED, msg, "re-export with --opset 17 (python -m export onnx ... --opset 17)")
        ]
    if opset != 17:
        return [Finding(_INFO, OPSET_NOT_DEFAULT, f"opset {opset} (the pipeline's default is 17)")]
    return []


def _op_findings(model, table: OpTable) -> list[Finding]:
    """Every op (If/Loop bodies included) against the TensorRT list, plus If/Loop/Scan themselves."""
    out: list[Finding] = []
    counts: Counter[str] = Counter()
    for node, prefix in _iter_nodes(model.graph):
        domain = node.domain or ""
        op = node.op_type
        counts[op if domain in table.domains else f"{domain}::{op}"] += 1
        name = prefix + (node.name or op)
        if domain not in table.domains:
            msg = f"op {op} of domain {domain!r} is not a standard ONNX op; TensorRT parses it only through a plugin"
            out.append(
                Finding(
                    _ERR,
                    OP_UNSUPPORTED,
                    msg,
                    "rewrite the layer with standard ops, or register a TensorRT plugin",
                    name,
                )
            )
        elif op in table.unsupported or (op not in table.supported and op not in table.uncertain):
            listed = "listed as unsupported" if op in table.unsupported else "not in the support list"
            msg = f"op {op} is {listed} for TensorRT (onnx-tensorrt operators.md)"
            out.append(Finding(_ERR, OP_UNSUPPORTED, msg, _FIX_UNSUPPORTED, name))
        if op in _CONTROL_FLOW:
            msg = f"{op} subgraph: TensorRT runs it as a conditional/loop layer, blocks fusion across it and restricts its shapes"
            out.append(Finding(_WARN, CONTROL_FLOW, msg, _FIX_CONTROL_FLOW, name))
    for op, n in sorted(counts.items()):
        if op in table.uncertain:
            fix = "build a TensorRT 10.3 engine once to confirm, or replace the op with a verified one"
            out.append(Finding(_WARN, OP_UNVERIFIED, f"{n}× {op}: {table.uncertain[op]}", fix, op))
        elif table.supported.get(op):
            out.append(
                Finding(_INFO, OP_RESTRICTED, f"{n}× {op}: supported with restrictions: {table.supported[op]}", "", op)
            )
    ops = ", ".join(f"{op} {n}" for op, n in counts.most_common())
    out.append(Finding(_INFO, OP_REPORT, f"ops: {ops} (checked against {table.source.split('(')[0].strip()})"))
    return out


def _external_data_findings(model, model_dir: Path) -> list[Finding]:
    from onnx.external_data_helper import uses_external_data

    for t in _iter_initializers(model.graph):
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        if not (model_dir / loc).is_file():
            msg = f"initializer {t.name} points at external file {loc!r}, which is not beside the model"
            fix = f"copy {loc} next to the model, or re-export so the weights are inside the .onnx"
            return [Finding(_ERR, EXTERNAL_DATA_MISSING, msg, fix, t.name)]
        msg = (
            f"weights live in the external file {loc!r}: the model is not self-contained "
            "(TensorRT's parser needs the file beside it and must parse from a path)"
        )
        fix = "re-export with the weights inside the file (python -m export onnx keeps them inside below 2 GB)"
        return [Finding(_WARN, EXTERNAL_DATA, msg, fix, t.name)]
    return []


def _io_findings(model, info: _GraphInfo) -> list[Finding]:
    out: list[Finding] = []
    inputs = [i for i in model.graph.input if i.name not in info.initializers]
    for vi in inputs:
        d = _dims(vi)
        dyn = [k for k, v in enumerate(d) if not isinstance(v, int) or v <= 0]
        if [k for k in dyn if k != 0]:
            msg = f"input {vi.name} has dynamic non-batch axes {[k for k in dyn if k]} (shape {d}); the models need a fixed spatial size"
            fix = "export with a fixed H×W (only the batch axis dynamic) so TensorRT can pick kernels for one shape"
            out.append(Finding(_WARN, DYNAMIC_NON_BATCH_DIM, msg, fix, vi.name))
        if d and 0 not in dyn:
            msg = f"input {vi.name} has a fixed batch of {d[0]}; one engine serves only that batch"
            fix = "export with --batch dynamic for an engine with an optimization profile over batch sizes"
            out.append(Finding(_INFO, STATIC_BATCH, msg, fix, vi.name))
    names_in = [i.name for i in inputs]
    names_out = [o.name for o in model.graph.output]
    if names_in != ["input"] or "logits" not in names_out:
        msg = f"tensors are named inputs {names_in}, outputs {names_out}; the runtime expects one input 'input' and an output 'logits'"
        fix = "export with python -m export onnx (input_names=['input'], output_names=['logits', ...])"
        out.append(Finding(_WARN, IO_NAMES, msg, fix))
    return out


def _shape_findings(info: _GraphInfo, derived: set[str], tags: dict[str, str]) -> list[Finding]:
    """Pool/resize parameters from a runtime shape, whole-map pool kernels, batch shape arithmetic."""
    out: list[Finding] = []
    for node in info.graph.node:
        op = node.op_type
        name = node.name or op
        if op in _KERNEL_CONSUMERS and any(n in derived for k, n in enumerate(node.input) if k > 0 and n):
            what = "pooling" if op in _POOL_OPS or op.startswith("Reduce") else "resize"
            msg = (
                f"{op} takes its {what} parameters from a runtime Shape (Shape -> ... -> {op}): the kernel/size "
                "changes with the input and TensorRT cannot fix it at build time"
            )
            fix = f"for global pooling {_MEAN_AMAX_FIX}; for resize pass constant output sizes or scale factors"
            out.append(Finding(_ERR, POOL_KERNEL_FROM_SHAPE, msg, fix, name))
        if op in _POOL_OPS and node.input:
            k = list(_attr(node, "kernel_shape", []) or [])
            pads = list(_attr(node, "pads", []) or [])
            d = info.dims(node.input[0])
            spatial = d[2:] if len(d) >= 3 else []
            static = bool(spatial) and all(isinstance(s, int) and s > 0 for s in spatial)
            if k and static and list(spatial) == k and not any(pads) and max(k) > 1:
                msg = (
                    f"{op} kernel {k} covers the whole {'×'.join(map(str, spatial))} map: a global pool written as a pool "
                    "whose kernel was taken from x.size() (e.g. F.avg_pool2d(x, (x.size(2), x.size(3))) in a CBAM channel "
                    "gate). The kernel is baked for this resolution, and the same code fails the TorchScript exporter once "
                    "the batch axis is dynamic"
                )
                out.append(Finding(_WARN, GLOBAL_POOL_FIXED_KERNEL, msg, _MEAN_AMAX_FIX, name))
        slots = _SHAPE_SLOTS.get(op, frozenset())
        if op in _SHAPE_CONSUMERS and any(tags.get(n) == "arith" for k, n in enumerate(node.input) if k in slots and n):
            msg = (
                f"{op}'s target shape is computed with arithmetic on the dynamic batch (Shape -> Gather -> arithmetic -> "
                f"{op}); a TensorRT optimization profile bounds only the input, so the derived shape is unchecked and "
                "blocks shape-specialised kernels"
            )
            out.append(Finding(_WARN, BATCH_SHAPE_ARITHMETIC, msg, _FIX_BATCH_ARITH, name))
    return out


def _int64_findings(model, info: _GraphInfo, derived: set[str], limit: int = 20) -> list[Finding]:
    """int64 tensors that are data, not shapes/indices (those TensorRT handles natively)."""
    from onnx import TensorProto

    ctx = _shape_context(info, derived)
    candidates: dict[str, str] = {}
    for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in vis:
            if vi.type.tensor_type.elem_type == TensorProto.INT64:
                candidates[vi.name] = f"graph {kind} {vi.name} is int64"
    for t in model.graph.initializer:
        if t.data_type == TensorProto.INT64 and t.name not in ctx and t.name in info.consumers:
            candidates[t.name] = (
                f"int64 initializer {t.name} (shape {list(t.dims)}) is used as data, not as a shape/index"
            )
    for node in model.graph.node:
        if node.op_type == "Cast" and _attr(node, "to") == TensorProto.INT64 and node.output[0] not in ctx:
            candidates.setdefault(
                node.name or node.output[0], f"Cast to int64 ({node.output[0]}) feeds data computations"
            )
        elif node.op_type not in ("Cast", "Shape", "Size"):
            for o in node.output:
                if info.elem_type.get(o) == TensorProto.INT64 and o not in ctx and o not in candidates:
                    candidates.setdefault(
                        node.name or o, f"{node.op_type} output {o} is int64 and feeds data computations"
                    )
    why = "; TensorRT computes it in int64 or casts it down (slower, and clamped beyond ±2^31)"
    out = [Finding(_WARN, INT64_TENSOR, msg + why, _FIX_INT64, name) for name, msg in list(candidates.items())[:limit]]
    if len(candidates) > limit:
        out.append(Finding(_WARN, INT64_TENSOR, f"... and {len(candidates) - limit} more int64 tensors", _FIX_INT64))
    return out


def _graph_findings(model, model_dir: Path, table: OpTable) -> list[Finding]:
    info = _GraphInfo(model)
    derived, tags = _shape_tags(info)
    return (
        _opset_findings(model, table)
        + _op_findings(model, table)
        + _external_data_findings(model, model_dir)
        + _io_findings(model, info)
        + _shape_findings(info, derived, tags)
        + _int64_findings(model, info, derived)
    )


def _iter_initializers(graph) -> Iterable[Any]:
    yield from graph.initializer
    for node in graph.node:
        for a in node.attribute:
            if a.g is not None and a.g.node:
                yield from _iter_initializers(a.g)
            for g in a.graphs:
                yield from _iter_initializers(g)


def check_graph(model_path: str | os.PathLike, table: OpTable | None = None) -> tuple[list[Finding], dict[str, Any]]:
    """Structural checks of an ONNX file (no torch, no inference).

    Returns:
        (findings, facts) where facts holds ``opset``, ``ir_version``, ``op_counts``, ``inputs``,
        ``outputs`` and ``metadata``.

    Raises:
        ArtifactError: when the file is missing or not an ONNX model.
    """
    import onnx

    table = table or load_op_table()
    p = Path(model_path)
    if not p.is_file():
        raise ArtifactError(f"{p}: ONNX model not found")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:
        raise ArtifactError(f"{p}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if model.ir_version <= 0 or not model.graph.output:
        raise ArtifactError(f"{p}: not an ONNX model (no IR version or graph outputs)")

    findings: list[Finding] = []
    try:
        # A path lets the checker follow external data and models beyond 2 GB.
        onnx.checker.check_model(str(p), full_check=True)
    except Exception as exc:
        msg = f"onnx.checker (full check) rejects the model: {_first_line(exc)}"
        fix = "re-export with python -m export onnx; after a hand edit validate with onnx.checker.check_model(path, full_check=True)"
        findings.append(Finding(Severity.ERROR, CHECKER_FAILED, msg, fix))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        fix = "fix the op whose shapes disagree (often a hand-edited graph or a custom op); TensorRT's parser infers the same shapes"
        findings.append(
            Finding(Severity.ERROR, SHAPE_INFERENCE_FAILED, f"strict shape inference fails: {_first_line(exc)}", fix)
        )
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:
            inferred = model
    findings += _graph_findings(inferred, p.parent, table)
    counts = Counter(n.op_type for n, _ in _iter_nodes(model.graph))
    inits = {t.name for t in model.graph.initializer}
    facts = {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0),
        "ir_version": int(model.ir_version),
        "op_counts": dict(counts.most_common()),
        "inputs": {i.name: _dims(i) for i in model.graph.input if i.name not in inits},
        "outputs": {o.name: _dims(o) for o in model.graph.output},
        "metadata": {m.key: m.value for m in model.metadata_props},
    }
    return findings, facts


# --------------------------------------------------------------------------------------------
# PyTorch-level lint (torch imported inside)


def lint_module(module, example) -> list[Finding]:
    """Run ``module(example)`` once and report pooling calls that break export or TensorRT.

    Catches, with the module path that made the call:

    * adaptive pooling whose output size does not divide the input (``ADAPTIVE_POOL_NON_DIVISIBLE``:
      the TorchScript exporter refuses it, dynamo decomposes it into Gather chains);
    * ``avg_pool``/``max_pool`` with a kernel equal to the whole input map, i.e. a global pool whose
      kernel was taken from ``x.size()`` (``POOL_KERNEL_FROM_SHAPE``: MA-Net's CBAM trap).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    stack: list[str] = []
    found: dict[tuple[str, str], Finding] = {}
    handles = []

    def enter(name: str):
        def hook(mod, args) -> None:
            stack.append(name)

        return hook

    def leave(mod, args, output) -> None:  # must return None: a returned value replaces the output
        if stack:
            stack.pop()

    for name, sub in module.named_modules():
        handles.append(sub.register_forward_pre_hook(enter(name or "<root>")))
        handles.append(sub.register_forward_hook(leave))

    def tup(v, n: int) -> tuple:
        if isinstance(v, (list, tuple)):
            return tuple(v)
        return (v,) * n

    class _Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            fname = getattr(func, "__name__", "")
            try:
                if fname.startswith("adaptive_") and "pool" in fname and args and isinstance(args[0], torch.Tensor):
                    nd = int(fname[-2]) if fname[-2].isdigit() else 2
                    size = args[1] if len(args) > 1 else kwargs.get("output_size")
                    spatial = tuple(args[0].shape[-nd:])
                    outs = tup(size, nd)
                    bad = [(i, o) for i, o in zip(spatial, outs) if o is not None and (o <= 0 or i % o)]
                    if bad:
                        where = stack[-1] if stack else "<root>"
                        msg = (
                            f"{fname} maps a {'×'.join(map(str, spatial))} input to {'×'.join(map(str, outs))}: not divisible, "
                            "so the windows overlap unevenly; the TorchScript exporter refuses it and dynamo emits "
                            "Gather/GatherND chains that TensorRT runs slowly"
                        )
                        found[(ADAPTIVE_POOL_NON_DIVISIBLE, where + "/" + fname)] = Finding(
                            Severity.ERROR, ADAPTIVE_POOL_NON_DIVISIBLE, msg, _FIX_NON_DIVISIBLE, where
                        )
                elif fname in _TORCH_POOLS and args and isinstance(args[0], torch.Tensor):
                    nd = int(fname[-2])
                    kernel = args[1] if len(args) > 1 else kwargs.get("kernel_size")
                    padding = args[3] if len(args) > 3 else kwargs.get("padding", 0)
                    spatial = tuple(int(s) for s in args[0].shape[-nd:])
                    k = tuple(int(v) for v in tup(kernel, nd))
                    if k == spatial and max(k) > 1 and not any(tup(padding, nd)):
                        where = stack[-1] if stack else "<root>"
                        msg = (
                            f"{fname} with kernel {k} equal to the whole input map: a global pool with the kernel taken "
                            "from x.size() (the CBAM channel-gate trap). The TorchScript exporter fails on it with a "
                            "dynamic batch axis, and the kernel is baked for one resolution"
                        )
                        found[(POOL_KERNEL_FROM_SHAPE, where + "/" + fname)] = Finding(
                            Severity.WARNING, POOL_KERNEL_FROM_SHAPE, msg, _MEAN_AMAX_FIX, where
                        )
            except Exception:  # the lint must never break the forward pass it watches
                log.debug("lint could not inspect %s", fname, exc_info=True)
            return func(*args, **kwargs)

    try:
        with torch.no_grad(), _Mode():
            module(example)
    except Exception as exc:  # the exporter will fail on the same forward and say why
        log.warning("export lint: forward pass failed (%s: %s)", type(exc).__name__, exc)
    finally:
        for h in handles:
            h.remove()
    return list(found.values())


# --------------------------------------------------------------------------------------------
# Parity (torch imported inside)


@dataclass(frozen=True)
class Reference:
    """A PyTorch model to compare against, with its contract and validation inputs.

    Attributes:
        model: The eval-mode ``nn.Module`` (``forward_heads`` is used when present).
        meta: Its `train.checkpoint.CheckpointMeta`.
        images: Preprocessed float32 (N, C, H, W) validation batch, or None for random inputs.
        images_source: Where ``images`` came from (for the report).
    """

    model: Any
    meta: Any
    images: np.ndarray | None = field(default=None, compare=False, hash=False)
    images_source: str = ""


def torch_outputs(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Named outputs of a PyTorch model: ``forward_heads`` when it has one, else ``{"logits": forward}``."""
    import torch

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x))
        if hasattr(model, "forward_heads"):
            out = model.forward_heads(t)
            return {k: v.detach().cpu().numpy() for k, v in out.items()}
        return {"logits": model(t).detach().cpu().numpy()}


def load_val_images(meta, count: int) -> tuple[np.ndarray | None, str, str]:
    """Up to ``count`` preprocessed validation images of a checkpoint's dataset.

    Returns:
        (batch or None, description, problem). ``problem`` is "" on success, else why real images
        could not be used (no dataset recorded, dataset not found, ...).
    """
    if not meta.dataset:
        return None, "", "the checkpoint records no dataset"
    try:
        from runtime.data import load_dataset, load_image
        from runtime.preprocess import preprocess

        index = load_dataset(**meta.dataset)
        split = "val" if index.split("val") else ("test" if index.split("test") else "train")
        records = index.split(split)[:count]
        images = [load_image(r) for r in records]
        batch = preprocess(images, meta.preprocess)
    except PipelineError as exc:
        return None, "", f"its dataset {meta.dataset} cannot be loaded ({exc})"
    except TypeError as exc:  # dataset config with unexpected keys
        return None, "", f"its dataset config {meta.dataset} is invalid ({exc})"
    desc = f"{len(records)} {split} images of {index.name}"
    return batch, desc, ""


def _input_batch(reference: Reference, n: int, seed: int = 0) -> np.ndarray:
    imgs = reference.images
    if imgs is None or not len(imgs):
        spec = reference.meta.preprocess
        rng = np.random.default_rng(seed)
        u8 = rng.integers(0, 256, size=(n, *spec.input_shape), dtype=np.uint8).astype(np.float32)
        mean = np.asarray(spec.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(spec.std, np.float32).reshape(-1, 1, 1)
        return ((u8 * np.float32(spec.scale) - mean) / std).astype(np.float32)
    reps = -(-n // len(imgs))
    return np.ascontiguousarray(np.concatenate([imgs] * reps)[:n], dtype=np.float32)


def check_parity(
    model_path: str | os.PathLike, reference: Reference, batches: Sequence[int], atol: float
) -> tuple[list[BatchParity], list[Finding]]:
    """ONNX Runtime FP32 vs PyTorch at each batch size (fixed-batch models: their batch only)."""
    from runtime.backends.ort import make_session

    findings: list[Finding] = []
    try:
        sess = make_session(model_path, log_severity=2)  # OMP_NUM_THREADS, else onnxruntime's default
    except Exception as exc:
        msg = f"onnxruntime cannot load the model: {_first_line(exc.__cause__ or exc)}"
        return [], [
            Finding(Severity.ERROR, PARITY_OUTPUTS, msg, "fix the checker/shape-inference errors above and re-export")
        ]
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    if fixed is not None and any(b != fixed for b in batches):
        msg = f"fixed-batch model: parity runs at batch {fixed} only (asked for {list(batches)})"
        findings.append(Finding(Severity.INFO, PARITY_SKIPPED, msg))
        batches = [fixed]
    onnx_names = [o.name for o in sess.get_outputs()]
    results: list[BatchParity] = []
    for b in dict.fromkeys(batches):
        x = _input_batch(reference, b)
        ref = torch_outputs(reference.model, x)
        got = dict(zip(onnx_names, sess.run(None, {inp.name: x})))
        missing = [k for k in ref if k not in got]
        if missing:
            msg = f"PyTorch outputs {missing} have no ONNX output of the same name (ONNX: {onnx_names})"
            findings.append(
                Finding(
                    Severity.ERROR, PARITY_OUTPUTS, msg, "re-export with python -m export onnx, which names every head"
                )
            )
            ref = {k: v for k, v in ref.items() if k in got}
        if not ref:
            continue
        res = batch_parity(got, ref, batch=b, atol=atol)
        results.append(res)
        for name in ref:
            d, a = res.max_abs_diff[name], res.top1_agreement[name]
            if not d <= atol:  # NaN: the ONNX output holds NaN/inf
                msg = f"batch {b}, output {name!r}: max |onnxruntime - PyTorch| = {d:.3g} > {atol:g}"
                findings.append(Finding(Severity.ERROR, PARITY_MAX_ABS, msg, _FIX_PARITY, name))
            if a < 1.0:
                msg = f"batch {b}, output {name!r}: top-1 agreement {a:.1%} (flipped samples {res.flipped.get(name, [])[:10]})"
                fix = "the exported graph predicts differently: fix the numerical mismatch before deploying"
                findings.append(Finding(Severity.ERROR, PARITY_TOP1, msg, fix, name))
        log.info("parity batch %d: %s", b, ", ".join(f"{k} max|Δ| {v:.2e}" for k, v in res.max_abs_diff.items()))
    if results and all(r.passed for r in results):
        worst = max(max(r.max_abs_diff.values()) for r in results)
        msg = (
            f"onnxruntime FP32 matches PyTorch at batch {[r.batch for r in results]}: "
            f"max |Δ| {worst:.2e} <= {atol:g}, top-1 agreement 100%"
        )
        findings.append(Finding(Severity.INFO, PARITY_OK, msg))
    return results, findings


def _contract_findings(metadata: Mapping[str, str], reference: Reference | None, source: str) -> list[Finding]:
    from runtime.contract import DeploymentContract

    try:
        contract = DeploymentContract.from_metadata(metadata, source=source)
    except PipelineError as exc:
        fix = "export with python -m export onnx, which writes class names, preprocessing and provenance into metadata_props"
        return [
            Finding(Severity.WARNING, CONTRACT_MISSING, f"no usable deployment contract in metadata_props: {exc}", fix)
        ]
    out: list[Finding] = []
    if reference is not None:
        meta = reference.meta
        diffs = []
        if contract.model_name != meta.model_name:
            diffs.append(f"model {contract.model_name!r} vs checkpoint {meta.model_name!r}")
        if tuple(contract.class_names) != tuple(meta.class_names):
            diffs.append(f"class names {list(contract.class_names)} vs checkpoint {list(meta.class_names)}")
        if contract.preprocess != meta.preprocess:
            diffs.append(f"preprocessing {contract.preprocess.to_dict()} vs checkpoint {meta.preprocess.to_dict()}")
        if diffs:
            msg = "the model's contract disagrees with the checkpoint: " + "; ".join(diffs)
            out.append(Finding(Severity.ERROR, CONTRACT_MISMATCH, msg, "re-export the model from this checkpoint"))
        if meta.sha256 and contract.checkpoint_sha256 and contract.checkpoint_sha256 != meta.sha256:
            msg = (
                f"the model was exported from checkpoint sha256 {contract.checkpoint_sha256[:12]}…, "
                f"this checkpoint is {meta.sha256[:12]}…"
            )
            fix = "re-export if the weights changed; the parity check tells whether they did"
            out.append(Finding(Severity.WARNING, CONTRACT_CHECKPOINT_SHA, msg, fix))
    return out


def run_preflight(
    model_path: str | os.PathLike,
    *,
    reference: Reference | None = None,
    batches: Sequence[int] = (1, 32),
    atol: float = 1e-4,
    extra_findings: Sequence[Finding] = (),
    lint: bool = True,
    display_path: str | os.PathLike | None = None,
) -> PreflightReport:
    """Check one ONNX file; see the module docstring for what is checked.

    Args:
        model_path: The ONNX file.
        reference: PyTorch model + contract + validation images; enables parity and the PyTorch lint.
        batches: Parity batch sizes.
        atol: Max-abs tolerance of the parity check.
        extra_findings: Findings from an earlier step (e.g. the exporter's lint), merged in.
        lint: Run the PyTorch-level lint on ``reference.model`` (the exporter has already run it).
        display_path: Path to name in the report when ``model_path`` is a temporary file.

    Returns:
        The frozen report; ``passed`` is False when any finding is an error.

    Raises:
        ArtifactError: when the file is missing or not an ONNX model.
    """
    t0 = time.perf_counter()
    findings, facts = check_graph(model_path)
    findings += list(extra_findings)
    findings += _contract_findings(facts["metadata"], reference, str(display_path or model_path))
    parity: list[BatchParity] = []
    parity_inputs = ""
    if reference is None:
        findings.append(
            Finding(
                Severity.INFO,
                PARITY_SKIPPED,
                "no checkpoint given: PyTorch parity not checked",
                "pass --checkpoint RUN/checkpoint.pt to compare against PyTorch on validation images",
            )
        )
    else:
        if lint:
            import torch

            findings += lint_module(reference.model, torch.zeros((2, *reference.meta.preprocess.input_shape)))
        if reference.images is None or not len(reference.images):
            parity_inputs = "random uint8 images preprocessed per the contract (seed 0)"
            msg = f"parity ran on random images: {reference.images_source or 'no validation images'}"
            fix = "record the dataset in the checkpoint (python -m train does) and make it reachable, so parity uses real images"
            findings.append(Finding(Severity.WARNING, PARITY_RANDOM_INPUTS, msg, fix))
        else:
            parity_inputs = reference.images_source
        parity, pf = check_parity(model_path, reference, batches, atol)
        findings += pf
    order = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}
    findings = sorted(_dedupe(findings), key=lambda f: order[f.severity])
    p = Path(model_path)
    report = PreflightReport(
        model=str(display_path or model_path),
        model_sha256=sha256_file(p),
        passed=not any(f.severity is Severity.ERROR for f in findings),
        findings=tuple(findings),
        opset=facts["opset"],
        ir_version=facts["ir_version"],
        op_counts=facts["op_counts"],
        inputs=facts["inputs"],
        outputs=facts["outputs"],
        parity=tuple(parity),
        parity_inputs=parity_inputs,
        checkpoint=str(reference.meta.path) if reference is not None and getattr(reference.meta, "path", "") else "",
        elapsed_s=round(time.perf_counter() - t0, 3),
        versions=library_versions(),
    )
    for f in report.findings:
        if f.severity is not Severity.INFO:
            log.log(logging.ERROR if f.severity is Severity.ERROR else logging.WARNING, "%s", f)
    log.info("%s", report.summary())
    return report


def _dedupe(findings: Iterable[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        key = (f.code, f.node, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def load_reference(checkpoint: str | os.PathLike, count: int = 32) -> Reference:
    """Load a checkpoint and up to ``count`` of its validation images (torch imported here)."""
    from train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint)
    images, desc, problem = load_val_images(meta, count)
    return Reference(model, meta, images, desc or problem)


def preflight(config) -> PreflightReport:
    """``python -m export check``: run preflight per a `PreflightConfig` and write the JSON report."""
    reference = load_reference(config.checkpoint, max(config.batches)) if config.checkpoint else None
    report = run_preflight(config.model, reference=reference, batches=config.batches, atol=config.atol)
    out = config.report or report_path(config.model)
    write_report(report, out)
    log.info("preflight report written to %s", out)
    return report
