"""Which x86 runtime runs a CPU-form INT8 file fastest, at equal accuracy: measured, not assumed.

The same Q/DQ file runs on onnxruntime (U8S8 QLinearConv kernels) and on OpenVINO (which reads
Q/DQ ONNX and fuses it into its own INT8 kernels). Which is faster depends on the model and the
CPU (docs/measured-facts.md), so the ``cpu`` target measures it after quantizing:

1. every candidate that is installed scores the validation set; its top-1 agreement with the
   FP32 model and its accuracy are recorded (OpenVINO with its default precision runs the float
   parts in bf16 on CPUs that have it, so accuracy can differ from onnxruntime's);
2. the candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) at each batch, the same
   thread count for all, so all of them see the same machine load;
3. candidates whose accuracy is not equal to onnxruntime's (agreement more than
   ``max_agreement_loss_pts`` lower, or accuracy more than ``max_accuracy_loss_pts`` lower) are
   not eligible; of the rest, the one with the lowest geometric mean of p50 latency over the
   batches is named, and the fastest at each batch too when that differs (a camera at batch 1
   and a batch-32 job can want different runtimes). onnxruntime is always a candidate (it is a core dependency); OpenVINO only
   when ``pip install '.[openvino]'`` installed it, and the result says so when it did not.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

# (label, backend name, backend options, runtime named to the user)
CANDIDATES: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("onnxruntime", "ort", {}, "onnxruntime CPU"),
    ("openvino", "openvino", {}, "OpenVINO CPU (its default inference precision)"),
    ("openvino-f32", "openvino", {"precision": "f32"}, "OpenVINO CPU (float parts forced to FP32)"),
)


@dataclass(frozen=True)
class RuntimePickConfig:
    """How the cpu target picks its runtime.

    Attributes:
        enabled: Measure at all (the CPU-form INT8 only; the TensorRT form has its own runtime).
        batches: Batch sizes timed; the pick uses the geometric mean of p50 over them.
        threads: Intra-op threads for every candidate (0: OMP_NUM_THREADS or 1).
        rounds: Interleaved rounds per batch.
        seconds_per_round: Minimum timed seconds per candidate per round.
        max_agreement_loss_pts: A candidate is eligible when its top-1 agreement with FP32 is at
            most this many points below onnxruntime's ...
        max_accuracy_loss_pts: ... and its accuracy at most this many points below.
    """

    enabled: bool = True
    batches: tuple[int, ...] = (1, 32)
    threads: int = 0
    rounds: int = 3
    seconds_per_round: float = 0.4
    max_agreement_loss_pts: float = 0.5
    max_accuracy_loss_pts: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(int(b) for b in self.batches))
        if not self.batches or min(self.batches) < 1:
            raise ConfigError(f"runtime_pick.batches must be positive integers, got {list(self.batches)}")
        if self.rounds < 1 or self.seconds_per_round <= 0:
            raise ConfigError("runtime_pick.rounds must be >= 1 and runtime_pick.seconds_per_round > 0")
        if self.threads < 0:
            raise ConfigError(f"runtime_pick.threads must be >= 0 (0: OMP_NUM_THREADS or 1), got {self.threads}")
        if self.max_agreement_loss_pts < 0 or self.max_accuracy_loss_pts < 0:
            raise ConfigError("runtime_pick.max_agreement_loss_pts / max_accuracy_loss_pts must be >= 0")


@dataclass(frozen=True)
class Candidate:
    """One runtime's measurement of the file."""

    label: str
    runtime: str
    available: bool
    reason: str = ""  # why it did not run
    precision: str = ""  # what the runtime says it ran the float parts in
    agreement: float | None = None
    accuracy: float | None = None
    p50_ms: dict[int, float] = field(default_factory=dict)
    p50_range_ms: dict[int, tuple[float, float]] = field(default_factory=dict)  # min/max of the rounds' p50s
    eligible: bool = False
    why_not: str = ""

    @property
    def geomean_ms(self) -> float | None:
        if not self.p50_ms:
            return None
        return math.exp(sum(math.log(v) for v in self.p50_ms.values()) / len(self.p50_ms))


@dataclass(frozen=True)
class RuntimePick:
    """The measured candidates and the one named."""

    fastest: str  # a Candidate label
    runtime: str  # its description
    threads: int
    batches: tuple[int, ...]
    candidates: tuple[Candidate, ...]
    speedup_vs_onnxruntime: float | None
    note: str
    fastest_by_batch: dict[int, str] = field(
        default_factory=dict
    )  # batch -> label (another only where separably faster)

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["fastest_by_batch"] = {str(k): v for k, v in self.fastest_by_batch.items()}
        for c in body["candidates"]:
            c["p50_ms"] = {str(k): v for k, v in c["p50_ms"].items()}
            c["p50_range_ms"] = {str(k): list(v) for k, v in c["p50_range_ms"].items()}
        return body


def pick_runtime(
    model: str | Path,
    inputs: np.ndarray,
    reference_outputs: np.ndarray,
    labels: np.ndarray | None,
    cfg: RuntimePickConfig,
    *,
    candidates: Sequence[tuple[str, Any, dict[str, Any], str]] = CANDIDATES,
    progress: Callable[[str], None] | None = None,
) -> RuntimePick:
    """Measure ``model`` (a CPU-form INT8 file) on every installed candidate runtime; name the fastest.

    Args:
        model: The INT8 ONNX file.
        inputs: Preprocessed validation samples (also tiled into the timing batches).
        reference_outputs: FP32 outputs for ``inputs`` (top-1 agreement is judged against them).
        labels: Ground truth for ``inputs`` (None: accuracy is not compared).
        cfg: Batches, threads, rounds, eligibility bounds.
        candidates: (label, backend name or `runtime.backends.Backend` subclass, options,
            description); the first is the baseline every other is compared with (onnxruntime).
    """
    from runtime.backends import get_backend
    from runtime.backends.ort import env_threads
    from runtime.latency import interleaved_rounds, tile_batch
    from runtime.parity import run_logits

    say = progress or (lambda msg: log.info("%s", msg))
    threads = cfg.threads or env_threads() or 1
    ref_top1 = np.asarray(reference_outputs).argmax(axis=1)
    loaded: dict[str, Any] = {}
    info: dict[str, dict[str, Any]] = {}
    try:
        for label, backend, options, desc in candidates:
            cls = get_backend(backend) if isinstance(backend, str) else backend
            reason = cls.unavailable_reason()
            if reason:
                info[label] = {"runtime": desc, "available": False, "reason": reason}
                continue
            be = cls(model, threads=threads, **options)
            try:
                be.load()
                top1 = run_logits(be, inputs, batch_size=64).argmax(axis=1)
            except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the file is not a candidate
                be.close()
                info[label] = {"runtime": desc, "available": False, "reason": f"{type(exc).__name__}: {exc}"[:300]}
                log.warning("runtime pick: %s could not run %s: %s", label, model, exc)
                continue
            loaded[label] = be
            entry: dict[str, Any] = {
                "runtime": desc,
                "available": True,
                "agreement": float(np.mean(top1 == ref_top1)),
                "accuracy": None if labels is None else float(np.mean(top1 == np.asarray(labels))),
                "precision": str(be.describe().get("inference_precision") or "fp32 (int8 kernels)"),
            }
            info[label] = entry
        samples: dict[str, dict[int, list[float]]] = {k: {} for k in loaded}
        say(
            f"runtime pick: timing {', '.join(loaded)} at batch {', '.join(map(str, cfg.batches))}, "
            f"{threads} thread(s), {cfg.rounds} interleaved rounds"
        )
        for batch in cfg.batches:
            x = tile_batch(inputs, batch)
            fns = {label: (lambda be=be, x=x: be.infer({be.input_specs[0].name: x})) for label, be in loaded.items()}
            per_round = interleaved_rounds(fns, batch=batch, rounds=cfg.rounds, seconds_per_round=cfg.seconds_per_round)
            for label, sts in per_round.items():
                samples[label][batch] = [st.p50_ms for st in sts]
    finally:
        for be in loaded.values():
            be.close()

    base = candidates[0][0]
    base_info = info.get(base, {})
    out: list[Candidate] = []
    for label, _, _, _ in candidates:
        e = info.get(label)
        if e is None:
            continue
        if not e["available"]:
            out.append(Candidate(label, e["runtime"], False, reason=e["reason"], why_not="did not run"))
            continue
        p50 = {b: float(np.median(v)) for b, v in samples[label].items()}
        rng = {b: (float(min(v)), float(max(v))) for b, v in samples[label].items()}
        why = []
        if label != base and base_info.get("available"):
            loss = 100 * (base_info["agreement"] - e["agreement"])
            if loss > cfg.max_agreement_loss_pts:
                why.append(f"agreement {loss:.2f} pts below {base}'s (bound {cfg.max_agreement_loss_pts:g})")
            if e["accuracy"] is not None and base_info.get("accuracy") is not None:
                acc_loss = 100 * (base_info["accuracy"] - e["accuracy"])
                if acc_loss > cfg.max_accuracy_loss_pts:
                    why.append(f"accuracy {acc_loss:.2f} pts below {base}'s (bound {cfg.max_accuracy_loss_pts:g})")
        out.append(
            Candidate(
                label,
                e["runtime"],
                True,
                precision=e["precision"],
                agreement=e["agreement"],
                accuracy=e["accuracy"],
                p50_ms=p50,
                p50_range_ms=rng,
                eligible=not why,
                why_not="; ".join(why),
            )
        )
    eligible = [c for c in out if c.eligible]
    if not eligible:
        raise ConfigError(f"runtime pick: no candidate runtime could run {model}: {[c.reason for c in out]}")
    best = min(eligible, key=lambda c: c.geomean_ms or math.inf)
    base_c = next((c for c in out if c.label == base and c.available), None)
    speedup = base_c.geomean_ms / best.geomean_ms if base_c and best.geomean_ms else None
    missing = [c for c in out if not c.available]
    # Per batch: another candidate only when it is separably faster there (its slowest round beats
    # the named one's fastest); otherwise the named one.
    by_batch = {}
    for b in cfg.batches:
        quick = min(eligible, key=lambda c: c.p50_ms[b])
        separable = quick is not best and quick.p50_range_ms[b][1] < best.p50_range_ms[b][0]
        by_batch[b] = quick.label if separable else best.label
    # Candidates the timing cannot tell apart from the named one: their rounds' p50 ranges overlap
    # the named one's at every batch.
    ties = [
        c.label
        for c in eligible
        if c is not best
        and all(
            c.p50_range_ms[b][0] <= best.p50_range_ms[b][1] and best.p50_range_ms[b][0] <= c.p50_range_ms[b][1]
            for b in cfg.batches
        )
    ]
    note = f"{best.label} is fastest at equal accuracy"
    if speedup is not None and best.label != base:
        note += f" ({speedup:.2f}x onnxruntime, geometric mean over batch {', '.join(map(str, cfg.batches))})"
    if len(set(by_batch.values())) > 1:
        note += "; but the fastest differs by batch: " + ", ".join(f"batch {b}: {lab}" for b, lab in by_batch.items())
    if ties:
        note += f"; not separable from {', '.join(ties)} on this machine (their round ranges overlap at every batch)"
    if missing:
        note += "; not measured: " + ", ".join(f"{c.label} ({c.reason})" for c in missing)
    say(f"runtime pick: {note}")
    return RuntimePick(best.label, best.runtime, threads, cfg.batches, tuple(out), speedup, note, by_batch)


def render_markdown(pick: RuntimePick) -> str:
    """A Markdown section for the quantization report."""
    from runtime.report import md_table

    rows = []
    for c in pick.candidates:
        if not c.available:
            rows.append([c.label, "-", "-", "-", *("-" for _ in pick.batches), f"did not run: {c.reason}"])
            continue
        rows.append(
            [
                c.label,
                c.precision,
                f"{c.agreement:.2%}",
                "-" if c.accuracy is None else f"{c.accuracy:.2%}",
                *(f"{c.p50_ms[b]:.3f} [{c.p50_range_ms[b][0]:.3f}–{c.p50_range_ms[b][1]:.3f}]" for b in pick.batches),
                "yes" if c.eligible else c.why_not,
            ]
        )
    lines = [
        "## Fastest x86 runtime for this file",
        "",
        f"The same file on each installed x86 runtime, timed in interleaved rounds on {pick.threads} thread(s) "
        f"(p50 = median of the rounds' p50s; range = their min and max). Named: **{pick.fastest}** "
        f"({pick.runtime}): {pick.note}.",
        "",
        *md_table(
            [
                "runtime",
                "ran float parts as",
                "agreement with FP32",
                "accuracy",
                *(f"p50 b{b} ms [range]" for b in pick.batches),
                "eligible",
            ],
            rows,
        ),
    ]
    return "\n".join(lines) + "\n"
