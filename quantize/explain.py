"""Which quantized nodes cost the agreement: ``python -m quantize explain``.

    python -m quantize explain --fp32 RUN/model.onnx --int8 RUN/model.int8.onnx [--data DIR]
        [--target-agreement 0.99] [--out DIR] [--limit N] [--max-float K]

For every quantized compute node of the INT8 file (a Conv/ConvTranspose/Gemm/MatMul whose data and
weight inputs come through DequantizeLinear), `explain` measures:

- **its own output error**: the SQNR (dB) of the node's output in the INT8 model against the same
  tensor in the FP32 model, on the same inputs (a local figure: it includes the error arriving from
  upstream nodes);
- **what returning it alone to float recovers**: a variant of the INT8 model in which that node reads
  its activation before the QuantizeLinear (the Q/DQ pair bypassed) and its FP32 weight and bias
  (taken from the FP32 model's node of the same name; when none matches, the dequantized weight is
  kept and the report says so). The variant's top-1 agreement with FP32 and its logit SQNR against
  FP32 are compared with the INT8 file's own.

The same is measured per model-level group (stem, gates, PWFS, heads: `runtime.qdq_lint.sensitive_scopes`
on the FP32 graph). Nodes are ranked by the agreement their return to float recovers (then by logit
SQNR gain), and a greedy pass adds them in that order, keeping each one that raises agreement, until
the target agreement is reached (the recommended float set), or says it cannot be reached within
``--max-float`` nodes. The recommended set can be handed to ``python -m quantize int8 --ignore
NODE,NODE`` (the report prints the command).

SQNR uses onnxruntime's own QDQ debugging helper
(``onnxruntime.quantization.qdq_loss_debug.compute_signal_to_quantization_noice_ratio``); its activation
matching relies on onnxruntime's tensor naming of `quantize_static` outputs, which NNCF files do not
follow, so tensors are matched here by the graph's own names.

Outputs in ``--out`` (default ``<int8 stem>.explain/``): ``explain.json``, ``explain.md`` and, when
matplotlib is present, ``explain.png`` (agreement recovered per node and group).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger(__name__)

SCHEMA = "ferdeploy.explain/1"


@dataclass(frozen=True)
class ExplainConfig:
    """Options of one explain run.

    Attributes:
        fp32, int8: The float model and its Q/DQ INT8 file.
        data: Dataset YAML / ImageFolder / image folder (None: the FP32 contract's dataset).
        target_agreement: Top-1 agreement with FP32 the recommended float set must reach.
        out: Report folder (None: ``<int8 stem>.explain`` beside the INT8 file).
        limit: Score at most N validation samples (0: all).
        max_float: Most nodes the greedy recommendation may return to float.
        threads: onnxruntime intra-op threads.
        batch: Inference batch.
    """

    fp32: str
    int8: str
    data: str | None = None
    target_agreement: float = 0.99
    out: str | None = None
    limit: int = 0
    max_float: int = 12
    threads: int | None = None
    batch: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.target_agreement <= 1.0:
            raise ConfigError(f"--target-agreement must be in (0, 1], got {self.target_agreement}")
        if self.max_float < 1:
            raise ConfigError(f"--max-float must be >= 1, got {self.max_float}")

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        p = Path(self.int8)
        return p.with_name(p.name.removesuffix(".onnx") + ".explain")


@dataclass(frozen=True)
class Variant:
    """The INT8 model with some nodes returned to float, scored against FP32."""

    name: str
    kind: str  # "int8" | "node" | "group" | "greedy"
    nodes: tuple[str, ...]
    agreement: float
    logit_sqnr_db: float
    recovered_pts: float = 0.0  # 100 * (agreement - INT8 agreement)
    op_type: str = ""
    output_sqnr_db: float | None = None  # the node's own output vs FP32 (INT8 file, nothing returned)
    weight_source: str = ""  # "fp32" (float weight from the FP32 model) or "dequantized" (kept)
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExplainResult:
    """Everything `explain` found."""

    fp32: str
    int8: str
    samples: int
    source: str
    target_agreement: float
    baseline: Variant
    nodes: tuple[Variant, ...]
    groups: tuple[Variant, ...]
    greedy: tuple[Variant, ...]
    recommended: tuple[str, ...]
    reached: bool
    message: str
    elapsed_s: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["schema"] = SCHEMA
        return body


# --------------------------------------------------------------------------------------------
# graph surgery
# --------------------------------------------------------------------------------------------
def sqnr_db(reference: np.ndarray, candidate: np.ndarray) -> float:
    """SQNR of ``candidate`` against ``reference`` in dB (onnxruntime's QDQ-debug helper)."""
    from onnxruntime.quantization.qdq_loss_debug import compute_signal_to_quantization_noice_ratio

    return float(
        compute_signal_to_quantization_noice_ratio(np.asarray(reference, np.float32), np.asarray(candidate, np.float32))
    )


def _float_source(g, tensor: str) -> tuple[Any, list[Any]] | None:
    """The QuantizeLinear of the Q/DQ pair feeding ``tensor``, and the pass-through nodes between.

    ``tensor`` is a DequantizeLinear output (or reaches one through single-input data-movement ops:
    Reshape, Flatten, MaxPool...). Returns (the QuantizeLinear, the chain of
    nodes from the DequantizeLinear's consumer down to ``tensor``), or None when there is no such
    pair (a Concat of several dequantized inputs, a constant, an input already float).
    """
    chain: list[Any] = []
    name = tensor
    for _ in range(10):
        node = g.producer.get(name)
        if node is None:
            return None
        if node.op_type == "DequantizeLinear":
            q = g.producer.get(node.input[0])
            if q is None or q.op_type != "QuantizeLinear":
                return None  # a constant (weight) or an int8 graph input
            return q, list(reversed(chain))
        if node.op_type in ("Concat",) or not node.input:
            return None
        chain.append(node)
        name = node.input[0]
    return None


# A dequantized INT8 weight is within ~30-45 dB of its float original (even a poor per-tensor scale
# stays above ~10 dB); permuted or folded weights (the CPU form folds channel shuffles and PWFS into
# them) are near 0 dB: then the FP32 node of the same name holds other weights.
MIN_WEIGHT_SQNR_DB = 6.0


def _dequantize_const(g, dq) -> np.ndarray | None:
    """The float value of a DequantizeLinear of constants (per-tensor or per-axis), or None."""
    x, scale = g.constants.get(dq.input[0]), g.constants.get(dq.input[1])
    if x is None or scale is None:
        return None
    zp = g.constants.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
    zp = np.zeros_like(scale, dtype=np.float32) if zp is None else zp.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1:
        axis = int(g.attr(dq, "axis", 1)) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return ((x.astype(np.float32) - zp) * scale).astype(np.float32)


def _q_range(g, q) -> tuple[float, float] | None:
    """The float interval a per-tensor QuantizeLinear can represent, or None (per-axis, unknown)."""
    scale = g.constants.get(q.input[1])
    zp = g.constants.get(q.input[2]) if len(q.input) > 2 and q.input[2] else None
    if scale is None or scale.size != 1:
        return None
    info = np.iinfo(zp.dtype) if zp is not None and zp.dtype.kind in "iu" else np.iinfo(np.uint8)
    z = float(zp.reshape(-1)[0]) if zp is not None else 0.0
    s = float(scale.reshape(-1)[0])
    return (info.min - z) * s, (info.max - z) * s


def _fp32_params(fp32_index, node) -> dict[int, str] | None:
    """Input index -> FP32 initializer name for ``node``'s weight/bias, from the FP32 node of the same name."""
    twin = fp32_index.get(node.name)
    if twin is None or twin.op_type != node.op_type:
        return None
    return {i: name for i, name in enumerate(twin.input) if i >= 1 and name}


def float_variant(int8_model, fp32_model, names: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """A copy of ``int8_model`` where the compute nodes ``names`` run in float.

    Each node reads the float activation before its QuantizeLinear (a pass-through chain between
    the DequantizeLinear and the node is duplicated to start from the float tensor), and its weight
    and bias from the FP32 model's node of the same name (copied in as initializers). Returns the
    model and, per node, where its weight came from (``fp32`` or ``dequantized``).
    """
    from onnx import helper, numpy_helper

    from runtime.qdq_lint import GraphIndex

    model = copy.deepcopy(int8_model)
    g = GraphIndex(model)
    fp32_nodes = {n.name: n for n in fp32_model.graph.node}
    fp32_inits = {i.name: i for i in fp32_model.graph.initializer}
    have = {i.name for i in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    weight_source: dict[str, str] = {}
    new_nodes: list[tuple[Any, list[Any]]] = []
    for name in names:
        node = by_name.get(name)
        if node is None:
            raise ConfigError(f"node {name!r} is not in {int8_model.graph.name or 'the INT8 graph'}")
        found = _float_source(g, node.input[0])
        if found is not None:
            q, chain = found
            prev, clones = q.input[0], []
            bounds = _q_range(g, q)
            if bounds is not None:  # keep the quantizer's range (it may carry an absorbed ReLU/Clip)
                lo_name, hi_name = f"{q.name}__explain_lo", f"{q.name}__explain_hi"
                if lo_name not in have:
                    model.graph.initializer.extend(
                        [
                            numpy_helper.from_array(np.array(bounds[0], np.float32), lo_name),
                            numpy_helper.from_array(np.array(bounds[1], np.float32), hi_name),
                        ]
                    )
                    have.update((lo_name, hi_name))
                clip = helper.make_node(
                    "Clip",
                    [prev, lo_name, hi_name],
                    [f"{prev}__explain_clip_{name}"],
                    name=f"{q.name}__explain_clip_{name}",
                )
                prev = clip.output[0]
                clones.append(clip)
            for c in chain:
                clone = copy.deepcopy(c)
                clone.name = f"{c.name}__explain_float_{name}"
                clone.input[0] = prev
                for j, out in enumerate(clone.output):
                    clone.output[j] = f"{out}__explain_float_{name}"
                prev = clone.output[0]
                clones.append(clone)
            node.input[0] = prev
            new_nodes.append((node, clones))
        params = _fp32_params(fp32_nodes, node)
        source = "dequantized"
        if params:
            ok = True
            for i, init_name in params.items():
                if i >= len(node.input) or init_name not in fp32_inits:
                    ok = False
                    break
                dq = g.producer.get(node.input[i])
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue  # already float in the INT8 file
                deq = _dequantize_const(g, dq)
                arr = numpy_helper.to_array(fp32_inits[init_name]).astype(np.float32)
                if deq is None or deq.shape != arr.shape or sqnr_db(arr, deq) < MIN_WEIGHT_SQNR_DB:
                    ok = False  # a rewritten graph (folded/permuted weights): keep the dequantized one
                    break
            if ok:
                for i, init_name in params.items():
                    dq = g.producer.get(node.input[i])
                    if dq is None or dq.op_type != "DequantizeLinear":
                        continue
                    new = f"{init_name}__explain_fp32"
                    if new not in have:
                        tensor = copy.deepcopy(fp32_inits[init_name])
                        tensor.name = new
                        model.graph.initializer.append(tensor)
                        have.add(new)
                    node.input[i] = new
                source = "fp32"
        weight_source[name] = source
    if new_nodes:  # insert each clone chain right before its node (keeps the graph topologically sorted)
        ordered = []
        inserted = {id(n): clones for n, clones in new_nodes}
        for n in model.graph.node:
            ordered.extend(inserted.get(id(n), []))
            ordered.append(n)
        del model.graph.node[:]
        model.graph.node.extend(ordered)
    return model, weight_source


def _with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` that also returns the tensors ``names``."""
    from onnx import helper

    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    return m


# --------------------------------------------------------------------------------------------
# checks and scoring
# --------------------------------------------------------------------------------------------
def _io(model) -> tuple[list[tuple[str, tuple]], list[str]]:
    def dims(vi):
        return tuple(d.dim_value if d.HasField("dim_value") else "?" for d in vi.type.tensor_type.shape.dim)

    inits = {i.name for i in model.graph.initializer}
    return [(i.name, dims(i)) for i in model.graph.input if i.name not in inits], [o.name for o in model.graph.output]


def check_pair(fp32_path: str, int8_path: str, fp32_model, int8_model) -> list[str]:
    """Refuse an FP32/INT8 pair that do not belong together, or an INT8 file without Q/DQ.

    Returns the quantized compute nodes of the INT8 file.

    Raises:
        ArtifactError: different inputs/outputs, an INT8 file quantized from another FP32 file
            (its sidecar's ``input.sha256``), or no quantized compute node.
    """
    from runtime.artifacts import read_sidecar, sha256_file, sidecar_path
    from runtime.errors import PipelineError
    from runtime.qdq_lint import GraphIndex, quantized_ops

    fi, fo = _io(fp32_model)
    qi, qo = _io(int8_model)
    if fi != qi or fo != qo:
        raise ArtifactError(
            f"{int8_path} and {fp32_path} are not the same model: inputs {qi} vs {fi}, outputs {qo} vs {fo}; "
            "pass the FP32 file the INT8 one was quantized from"
        )
    if sidecar_path(int8_path).is_file():
        try:
            want = (read_sidecar(int8_path).get("input") or {}).get("sha256")
        except PipelineError:
            want = None
        if want and want != sha256_file(fp32_path):
            raise ArtifactError(
                f"{int8_path} was quantized from a file with sha256 {want[:12]}…, not {fp32_path} "
                f"({sha256_file(fp32_path)[:12]}…); pass the FP32 file it was made from"
            )
    status = quantized_ops(GraphIndex(int8_model))
    if not status["int8"]:
        n_q = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in int8_model.graph.node)
        raise ArtifactError(
            f"{int8_path}: no quantized compute node (Conv/ConvTranspose/Gemm/MatMul with dequantized data and "
            f"weight; {n_q} Q/DQ nodes in all): not a Q/DQ INT8 model. Make one with `python -m quantize int8`"
        )
    return list(status["int8"])


class _Runner:
    """Runs model variants on the validation tensors and scores them against the FP32 logits."""

    def __init__(self, x: np.ndarray, *, threads: int | None, batch: int) -> None:
        self.x, self.threads, self.batch = x, threads, batch
        self.input_name = ""
        self.ref: np.ndarray | None = None
        self.calls = 0

    def logits(self, model) -> np.ndarray:
        from runtime.backends.ort import make_session, predict

        sess = make_session(model, threads=self.threads, spinning=False)
        self.calls += 1
        return predict(sess, self.x, batch=self.batch)

    def score(self, model) -> tuple[float, float]:
        y = self.logits(model)
        return float((y.argmax(1) == self.ref.argmax(1)).mean()), sqnr_db(self.ref, y)


def _node_output_sqnr(
    fp32_model, int8_model, nodes: Sequence[str], x: np.ndarray, threads: int | None
) -> dict[str, float]:
    """SQNR of each quantized node's output (INT8 file) against the same tensor in the FP32 model."""
    from runtime.backends.ort import make_session

    f_out = {n.name: n.output[0] for n in fp32_model.graph.node}
    q_out = {n.name: n.output[0] for n in int8_model.graph.node}
    pairs = {n: (f_out[n], q_out[n]) for n in nodes if n in f_out and n in q_out}
    if not pairs:
        return {}
    fm = _with_outputs(fp32_model, [f for f, _ in pairs.values()])
    qm = _with_outputs(int8_model, [q for _, q in pairs.values()])
    name = fp32_model.graph.input[0].name
    out: dict[str, float] = {}
    try:
        fs = make_session(fm, threads=threads, optimization="disable", spinning=False)
        qs = make_session(qm, threads=threads, optimization="disable", spinning=False)
        fv = dict(zip([o.name for o in fs.get_outputs()], fs.run(None, {name: x})))
        qv = dict(zip([o.name for o in qs.get_outputs()], qs.run(None, {name: x})))
    except ArtifactError as exc:  # extra outputs an odd graph refuses: the ranking does not need them
        log.warning("per-node output SQNR skipped: %s", exc)
        return {}
    for node, (f, q) in pairs.items():
        if f in fv and q in qv and fv[f].shape == qv[q].shape:
            out[node] = sqnr_db(fv[f], qv[q])
    return out


# --------------------------------------------------------------------------------------------
# the analysis
# --------------------------------------------------------------------------------------------
def explain(
    cfg: ExplainConfig, *, int8_model: Any = None, validation: Any = None, reference: np.ndarray | None = None
) -> ExplainResult:
    """Rank the INT8 file's quantized nodes by the agreement their return to float recovers.

    For accuracy control during quantization (`quantize.orchestrate.ranked_accuracy_control`):
    ``int8_model`` is an INT8 ModelProto not written yet (``cfg.int8`` then only names it),
    ``validation`` the validation set already loaded (instead of reading ``cfg.data`` again) and
    ``reference`` the FP32 outputs on it already computed.

    Raises:
        ArtifactError: a missing/unreadable file, a mismatched pair, or an INT8 file without Q/DQ.
        DataError: no validation samples.
    """
    import onnx

    from quantize.calibration import build_validation_set
    from runtime.contract import read_contract
    from runtime.qdq_lint import GROUPS, GraphIndex, sensitive_scopes

    t0 = time.perf_counter()
    in_memory = int8_model is not None
    models = {"int8": int8_model} if in_memory else {}
    for key, path in (("fp32", cfg.fp32), ("int8", cfg.int8)):
        if key in models:
            continue
        if not Path(path).is_file():
            raise ArtifactError(f"--{key} {path}: file not found")
        try:
            models[key] = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - DecodeError and friends
            raise ArtifactError(f"--{key} {path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    fp32_model, int8_model = models["fp32"], models["int8"]
    # In memory: the file at cfg.int8 (and its sidecar) may be an older output, so it is not consulted.
    nodes = check_pair(cfg.fp32, f"{cfg.int8} (not written yet)" if in_memory else cfg.int8, fp32_model, int8_model)
    val = validation
    if val is None:
        val = build_validation_set(read_contract(cfg.fp32), data=cfg.data, limit=cfg.limit)
    if len(val) == 0:
        raise DataError(f"{val.source}: no samples to score")
    x = val.tensors.astype(np.float32)
    run = _Runner(x, threads=cfg.threads, batch=cfg.batch)
    run.ref = run.logits(fp32_model) if reference is None else np.asarray(reference)
    agree0, sqnr0 = run.score(int8_model)
    baseline = Variant("int8", "int8", (), agree0, sqnr0)
    log.info(
        "INT8 file: top-1 agreement %.4f with FP32 on %d samples, logit SQNR %.1f dB; %d quantized nodes",
        agree0,
        len(x),
        sqnr0,
        len(nodes),
    )
    op_types = {n.name: n.op_type for n in int8_model.graph.node}
    out_sqnr = _node_output_sqnr(fp32_model, int8_model, nodes, x[: min(len(x), 64)], cfg.threads)
    scopes = sensitive_scopes(GraphIndex(fp32_model))
    member = {n: tuple(gname for gname in GROUPS if n in scopes.group(gname)) for n in nodes}

    def measure(name: str, kind: str, names: Sequence[str], **extra: Any) -> Variant:
        variant, sources = float_variant(int8_model, fp32_model, names)
        agree, sq = run.score(variant)
        ws = ",".join(sorted(set(sources.values())))
        return Variant(name, kind, tuple(names), agree, sq, 100.0 * (agree - agree0), weight_source=ws, **extra)

    per_node = [
        measure(n, "node", [n], op_type=op_types.get(n, ""), output_sqnr_db=out_sqnr.get(n), groups=member[n])
        for n in nodes
    ]
    ranked = sorted(per_node, key=lambda v: (-v.agreement, -v.logit_sqnr_db))
    groups = []
    for gname in GROUPS:
        names = [n for n in nodes if gname in member[n]]
        if names:
            groups.append(measure(gname, "group", names))
    # Every quantized compute node in float: what remains is the error of the other Q/DQ pairs
    # (Add, Concat, pooling, outputs) and of the quantizers' ranges.
    groups.append(measure("all compute nodes", "group", nodes))
    notes = []
    kept_dq = [v.name for v in per_node if v.weight_source != "fp32"]
    if kept_dq:
        notes.append(
            f"{len(kept_dq)} node(s) have no FP32 twin with the same weight shape (rewritten graph): "
            f"returned to float with their dequantized weights ({', '.join(kept_dq[:6])}"
            f"{'…' if len(kept_dq) > 6 else ''})"
        )

    # Greedy: add nodes in rank order, keep each that raises agreement (or SQNR at equal agreement).
    chosen: list[str] = []
    greedy: list[Variant] = []
    best_agree, best_sq = agree0, sqnr0
    if agree0 >= cfg.target_agreement:
        message = (
            f"the INT8 file already agrees with FP32 on {agree0:.2%} of {len(x)} samples "
            f"(target {cfg.target_agreement:.2%}): nothing needs to return to float"
        )
        reached = True
    else:
        for v in ranked:
            if len(chosen) >= cfg.max_float or best_agree >= cfg.target_agreement:
                break
            if v.agreement < agree0 and v.logit_sqnr_db <= sqnr0:
                continue  # returning it alone made things worse: not a candidate
            trial = measure(f"+{v.name}", "greedy", [*chosen, v.name])
            if trial.agreement > best_agree or (trial.agreement == best_agree and trial.logit_sqnr_db > best_sq + 0.5):
                chosen.append(v.name)
                greedy.append(trial)
                best_agree, best_sq = trial.agreement, trial.logit_sqnr_db
        reached = best_agree >= cfg.target_agreement
        if reached:
            message = (
                f"returning {len(chosen)} node(s) to float raises agreement from {agree0:.2%} to "
                f"{best_agree:.2%} (target {cfg.target_agreement:.2%}): {', '.join(chosen)}"
            )
        else:
            every = groups[-1].agreement
            why = (
                f"even with every quantized compute node in float agreement is {every:.2%}: the rest of the error "
                "is in the other Q/DQ pairs (Add, Concat, pooling, output quantizers) and their ranges — try a "
                "larger or more representative calibration set, or another method"
                if every < cfg.target_agreement
                else "the error is spread over many nodes — raise --max-float, or use accuracy-aware "
                "quantization (--max-drop)"
            )
            message = (
                f"cannot reach {cfg.target_agreement:.2%} agreement by returning up to {cfg.max_float} node(s) to "
                f"float: the best set found ({len(chosen)} node(s)) gives {best_agree:.2%} "
                f"(INT8 file {agree0:.2%}); {why}"
            )
    log.info("%s", message)
    return ExplainResult(
        fp32=str(cfg.fp32),
        int8=str(cfg.int8),
        samples=int(len(x)),
        source=val.source,
        target_agreement=cfg.target_agreement,
        baseline=baseline,
        nodes=tuple(ranked),
        groups=tuple(groups),
        greedy=tuple(greedy),
        recommended=tuple(chosen),
        reached=reached,
        message=message,
        elapsed_s=time.perf_counter() - t0,
        notes=tuple(notes),
    )


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _sq(v: float | None) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.1f}"


def render_markdown(res: ExplainResult, *, command: str = "", top: int = 20) -> str:
    """Pure: the explain result as Markdown."""
    from runtime.report import md_table

    b = res.baseline
    out = ["# INT8 error by node", ""]
    if command:
        out += [f"Command: `{command}`", ""]
    out += [
        f"FP32 `{res.fp32}`, INT8 `{res.int8}`; {res.samples} samples ({res.source}).",
        "",
        f"INT8 file: top-1 agreement with FP32 **{b.agreement:.2%}**, logit SQNR {_sq(b.logit_sqnr_db)} dB.",
        "",
        f"**{res.message}**",
        "",
    ]
    if res.recommended:
        out += [
            "Applied: `recommended.int8.onnx` in this folder is the INT8 file with these nodes in float (the "
            "variant scored above). Re-quantizing with `python -m quantize int8 --onnx "
            + res.fp32
            + " --ignore "
            + ",".join(res.recommended)
            + " ...` also moves the other quantizers: measure its agreement again.",
            "",
        ]
    out += [
        f"## Nodes ranked by the agreement their return to float recovers (top {min(top, len(res.nodes))} "
        f"of {len(res.nodes)})",
        "",
    ]
    out += md_table(
        ["rank", "node", "op", "group", "output SQNR (dB)", "agreement if float", "recovered (pts)", "logit SQNR (dB)"],
        [
            [
                i,
                f"`{v.name}`",
                v.op_type,
                ",".join(v.groups) or "–",
                _sq(v.output_sqnr_db),
                f"{v.agreement:.2%}",
                f"{v.recovered_pts:+.2f}",
                _sq(v.logit_sqnr_db),
            ]
            for i, v in enumerate(res.nodes[:top], 1)
        ],
        align="rlllrrrr",
    )
    if res.groups:
        out += ["", "## Model-level groups returned to float", ""]
        out += md_table(
            ["group", "nodes", "agreement if float", "recovered (pts)", "logit SQNR (dB)"],
            [
                [v.name, len(v.nodes), f"{v.agreement:.2%}", f"{v.recovered_pts:+.2f}", _sq(v.logit_sqnr_db)]
                for v in res.groups
            ],
            align="lrrrr",
        )
    if res.greedy:
        out += ["", "## Greedy float set", ""]
        out += md_table(
            ["step", "node added", "agreement", "logit SQNR (dB)"],
            [[i, f"`{v.nodes[-1]}`", f"{v.agreement:.2%}", _sq(v.logit_sqnr_db)] for i, v in enumerate(res.greedy, 1)],
            align="rlrr",
        )
    if res.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in res.notes]
    out += [
        "",
        "Output SQNR: the node's output in the INT8 file against the same tensor in FP32 (includes the error "
        "arriving from upstream). Agreement if float: the INT8 file with only that node (or group) reading float "
        "activations and FP32 weights.",
    ]
    return "\n".join(out) + "\n"


def _plot(res: ExplainResult, path: Path, top: int = 20) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no explain plot (pip install '.[dev]')")
        return None
    from runtime.artifacts import atomic_write

    items = [(f"group: {v.name}", v.recovered_pts, "#c44e52") for v in res.groups]
    items += [(v.name, v.recovered_pts, "#4c72b0") for v in res.nodes[:top]]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(items) + 1.5))
    ax.barh(range(len(items)), [i[1] for i in items], color=[i[2] for i in items])
    ax.set_yticks(range(len(items)), [i[0][:48] for i in items], fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.5)
    ax.set_xlabel("top-1 agreement recovered by returning it to float (pts)")
    ax.set_title(f"INT8 agreement {res.baseline.agreement:.2%} with FP32 ({res.samples} samples)", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def write_explain(
    res: ExplainResult, out: str | os.PathLike, *, command: str = "", plots: bool = True
) -> dict[str, Path]:
    """Write ``explain.json``, ``explain.md`` (and ``explain.png``) into ``out``."""
    from runtime.artifacts import atomic_write_json, atomic_write_text

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    body = {**res.to_dict(), "command": command}
    paths = {
        "json": atomic_write_json(folder / "explain.json", body),
        "md": atomic_write_text(folder / "explain.md", render_markdown(res, command=command)),
    }
    if res.recommended:
        paths["model"] = write_recommended(res, folder / "recommended.int8.onnx")
    if plots:
        png = _plot(res, folder / "explain.png")
        if png is not None:
            paths["png"] = png
    return paths


def write_recommended(res: ExplainResult, path: str | os.PathLike) -> Path:
    """The INT8 file with the recommended nodes in float (what `explain` scored), with a sidecar.

    This applies the recommendation to the file as it is; re-quantizing with ``--ignore`` instead
    also moves the other quantizers (NNCF and onnxruntime place Q/DQ around ignored nodes
    differently), so its agreement must be measured again.
    """
    import onnx

    from runtime.artifacts import atomic_write_bytes, read_sidecar, sha256_file, sidecar_path, write_sidecar

    variant, sources = float_variant(onnx.load(res.int8), onnx.load(res.fp32), res.recommended)
    out = atomic_write_bytes(path, variant.SerializeToString())
    side = read_sidecar(res.int8) if sidecar_path(res.int8).is_file() else {"precision": "int8"}
    side.update(
        {
            "float_nodes": sorted(set(side.get("float_nodes") or []) | set(res.recommended)),
            "derived_from": {
                "path": res.int8,
                "sha256": sha256_file(res.int8),
                "by": "python -m quantize explain",
                "weights": sources,
                "expected_agreement": res.greedy[-1].agreement if res.greedy else None,
            },
        }
    )
    write_sidecar(out, side)
    return out


def summary_table(res: ExplainResult, top: int = 10) -> str:
    """A short plain-text table for the terminal (the CLI prints it)."""
    lines = [
        f"INT8 agreement with FP32: {res.baseline.agreement:.2%} ({res.samples} samples)",
        f"{'node':<40} {'op':<13} {'if float':>9} {'Δpts':>7} {'out SQNR':>9}",
    ]
    for v in res.nodes[:top]:
        lines.append(
            f"{v.name[:40]:<40} {v.op_type:<13} {v.agreement:>9.2%} {v.recovered_pts:>+7.2f} {_sq(v.output_sqnr_db):>9}"
        )
    for v in res.groups:
        lines.append(f"{'group ' + v.name:<40} {'':<13} {v.agreement:>9.2%} {v.recovered_pts:>+7.2f}")
    lines.append(res.message)
    return "\n".join(lines)
