"""Parity and latency reports: frozen dataclasses -> JSON + Markdown + PNG.

One `Report` per run of ``python -m runtime parity`` or ``bench``. Its `rows` are flat (one per
model × backend × precision × batch) and always carry the same columns, so parity and latency
join into one table (``bench --parity parity.json``) and one latency-vs-accuracy Pareto plot.
The JSON layout is documented in ``docs/report-schema.md`` (``schema: ferdeploy-report/1``).

Markdown is rendered by a pure function; plots use matplotlib's Agg backend, imported inside the
plotting functions (matplotlib is a dev extra, and the Jetson side may not have it: a missing
matplotlib skips the PNGs with a warning, never the report).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import atomic_write, atomic_write_json, atomic_write_text, read_json
from runtime.compare import ran_precision
from runtime.errors import ArtifactError

log = logging.getLogger(__name__)

SCHEMA = "ferdeploy-report/1"


@dataclass(frozen=True)
class ReportRow:
    """One model × backend × precision × batch.

    Attributes:
        model: Model file path.
        label: Short display name (parent/file).
        backend: Backend name (``torch``, ``ort``, ``ort-cuda``, ``trt`` ...).
        precision: ``fp32``, ``fp16`` or ``int8``.
        batch: Batch size of the latency measurement (None for a parity-only row).
        sha256: Model file hash.
        accuracy, macro_f1: Candidate metrics on the labelled set (None when not measured).
        top1_agreement, max_abs_diff, mean_abs_diff, p99_abs_diff, kl_mean, accuracy_drop_pts:
            Parity versus the reference (None when not measured).
        passed: Parity verdict (None when parity was not run).
        latency_ms: {min, mean, p50, p90, p95, p99, max, p50_ci, p99_ci, count} (None when not measured).
        device_latency_ms: Same for device (CUDA event) time, GPU backends only.
        throughput_ips: Images per second (None when not measured).
        is_reference: The reference's own row.
        reasons: Why parity failed.
        error: Why the row could not run.
        roofline: Bench: MACs at this batch, achieved GMAC/s and % of the INT8 peak of the same
            runtime and threads (`runtime.roofline.roofline_figures`, without the peak itself,
            which is in `Report.roofline_peaks`); None when not counted.
    """

    model: str
    label: str
    backend: str
    precision: str
    batch: int | None = None
    sha256: str = ""
    accuracy: float | None = None
    macro_f1: float | None = None
    top1_agreement: float | None = None
    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    kl_mean: float | None = None
    accuracy_drop_pts: float | None = None
    passed: bool | None = None
    latency_ms: dict[str, Any] | None = field(default=None, hash=False)
    device_latency_ms: dict[str, Any] | None = field(default=None, hash=False)
    throughput_ips: float | None = None
    is_reference: bool = False
    reasons: tuple[str, ...] = ()
    error: str = ""
    verdict: str | None = None
    bounds: str = ""
    max_prob_diff: float | None = None
    top1_agreement_ci: tuple[float, float] | None = None
    notes: tuple[str, ...] = ()
    roofline: dict[str, Any] | None = field(default=None, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "label": self.label,
            "backend": self.backend,
            "precision": self.precision,
            "batch": self.batch,
            "sha256": self.sha256,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "p99_abs_diff": self.p99_abs_diff,
            "kl_mean": self.kl_mean,
            "accuracy_drop_pts": self.accuracy_drop_pts,
            "passed": self.passed,
            "latency_ms": self.latency_ms,
            "device_latency_ms": self.device_latency_ms,
            "throughput_ips": self.throughput_ips,
            "is_reference": self.is_reference,
            "reasons": list(self.reasons),
            "error": self.error,
            "verdict": self.verdict,
            "bounds": self.bounds,
            "max_prob_diff": self.max_prob_diff,
            "top1_agreement_ci": list(self.top1_agreement_ci) if self.top1_agreement_ci else None,
            "notes": list(self.notes),
            "roofline": self.roofline,
        }


def verdict_text(row: Mapping[str, Any] | ReportRow) -> str:
    """``PASS (agree ≥ 0.98, drop ≤ 1 pt)``: the verdict with the bounds it was held to."""
    get = row.get if isinstance(row, Mapping) else lambda k, d=None: getattr(row, k, d)
    if get("is_reference"):
        return "ref"
    if get("error"):
        return "**ERROR**"
    verdict = get("verdict") or ("pass" if get("passed") else "fail" if get("passed") is False else None)
    if verdict is None:
        return "–"
    word = {"pass": "PASS", "uncertain": "PASS (uncertain)", "fail": "**FAIL**"}[verdict]
    bounds = get("bounds") or ""
    return f"{word} ({bounds})" if bounds else word


@dataclass(frozen=True)
class Report:
    """A parity or bench report.

    Attributes:
        kind: ``parity`` or ``bench``.
        rows: Flat rows (see `ReportRow`).
        passed: Overall verdict (parity: every row passed; bench: every row ran).
        failing: Names of failing rows.
        command: The exact command line.
        environment: `runtime.env.capture_environment()`.
        config: The resolved run config.
        created_at: UTC ISO timestamp.
        dataset: Labelled-set description (parity).
        reference: Reference model description (parity).
        class_names: Class order (parity).
        details: Per parity row: per-class accuracy delta, confusion delta, flipped ids.
        overhead: Harness vs bare ``session.run`` results (bench).
        spread: Run-to-run spread of back-to-back repeats (bench).
        roofline_peaks: INT8 peaks the rows' roofline figures are held to, one per (runtime,
            threads): `runtime.roofline.Peak.to_dict()` (bench).
        skipped: Backend -> reason it was not available.
        elapsed_s: Wall time of the run.
        samples_ms: Row key -> raw latency samples (for plots; not written to JSON).
    """

    kind: str
    rows: tuple[ReportRow, ...]
    passed: bool
    failing: tuple[str, ...] = ()
    command: str = ""
    environment: dict[str, Any] = field(default_factory=dict, hash=False)
    config: dict[str, Any] = field(default_factory=dict, hash=False)
    created_at: str = ""
    dataset: str = ""
    reference: dict[str, Any] = field(default_factory=dict, hash=False)
    class_names: tuple[str, ...] = ()
    details: tuple[dict[str, Any], ...] = ()
    overhead: tuple[dict[str, Any], ...] = ()
    spread: tuple[dict[str, Any], ...] = ()
    skipped: dict[str, str] = field(default_factory=dict, hash=False)
    elapsed_s: float = 0.0
    roofline_peaks: tuple[dict[str, Any], ...] = ()
    samples_ms: dict[str, tuple[float, ...]] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "kind": self.kind,
            "created_at": self.created_at,
            "command": self.command,
            "passed": self.passed,
            "failing": list(self.failing),
            "dataset": self.dataset,
            "reference": self.reference,
            "class_names": list(self.class_names),
            "rows": [r.to_dict() for r in self.rows],
            "details": list(self.details),
            "overhead": list(self.overhead),
            "spread": list(self.spread),
            "roofline_peaks": list(self.roofline_peaks),
            "skipped": dict(self.skipped),
            "config": self.config,
            "environment": self.environment,
            "elapsed_s": self.elapsed_s,
        }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _lat(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {
        "min": stats.min_ms,
        "mean": stats.mean_ms,
        "p50": stats.p50_ms,
        "p90": stats.p90_ms,
        "p95": stats.p95_ms,
        "p99": stats.p99_ms,
        "max": stats.max_ms,
        "std": stats.std_ms,
        "p50_ci": list(stats.p50_ci_ms),
        "p99_ci": list(stats.p99_ci_ms),
        "count": stats.count,
    }


def row_key(row: ReportRow) -> str:
    """Stable key of a row: ``label|backend|precision|b<batch>``."""
    return f"{row.label}|{row.backend}|{row.precision}|b{row.batch if row.batch is not None else '-'}"


# --------------------------------------------------------------------------------------------
# Building reports
# --------------------------------------------------------------------------------------------
def ran_as(precision: str, backend_info: Mapping[str, Any] | None) -> str:
    """The file's precision, plus the float precision the runtime chose when it differs
    (OpenVINO picks bf16 on CPUs that have it): ``fp32 (ran bf16)``."""
    chosen = (backend_info or {}).get("inference_precision")
    return f"{precision} (ran {chosen})" if ran_precision(precision, chosen).value != precision else precision


def parity_report(
    run: Any,
    *,
    command: str = "",
    environment: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> Report:
    """`runtime.parity.ParityRun` -> `Report`."""
    rows, details = [], []
    for r in run.rows:
        res = r.result
        rows.append(
            ReportRow(
                model=r.model,
                label=r.label,
                backend=r.backend,
                precision=ran_as(r.precision.value, r.backend_info),
                batch=None,
                sha256=r.sha256,
                accuracy=res.accuracy if res else None,
                macro_f1=res.macro_f1 if res else None,
                top1_agreement=res.top1_agreement if res else None,
                max_abs_diff=res.max_abs_diff if res else None,
                mean_abs_diff=res.mean_abs_diff if res else None,
                p99_abs_diff=res.p99_abs_diff if res else None,
                kl_mean=res.kl_mean if res else None,
                accuracy_drop_pts=res.accuracy_drop_pts if res else None,
                passed=r.passed,
                is_reference=r.is_reference,
                reasons=res.reasons if res else (),
                error=r.error,
                verdict=(res.verdict.value if res else None),
                bounds=res.bound_text() if res else "",
                max_prob_diff=res.max_prob_diff if res else None,
                top1_agreement_ci=tuple(res.top1_agreement_ci) if res else None,
                notes=res.notes if res else (),
            )
        )
        details.append(
            {
                "label": r.label,
                "model": r.model,
                "backend": r.backend,
                "precision": r.precision.value,
                "precision_source": r.precision_source,
                "method": r.method,
                "is_reference": r.is_reference,
                "backend_info": r.backend_info,
                "infer_s": r.infer_s,
                "tolerance": res.tolerance.to_dict() if res else None,
                "per_class_accuracy_delta": dict(zip(run.class_names, res.per_class_accuracy_delta)) if res else None,
                "confusion_delta": [list(x) for x in res.confusion_delta] if res else None,
                "reference_confusion": [list(x) for x in res.reference_confusion] if res else None,
                "flipped_ids": list(res.flipped_ids) if res else None,
            }
        )
    ref = run.reference
    return Report(
        kind="parity",
        rows=tuple(rows),
        passed=run.passed,
        failing=tuple(r.name for r in run.failing),
        command=command,
        environment=dict(environment or {}),
        config=dict(config or {}),
        created_at=_now(),
        dataset=run.dataset,
        reference={
            "model": ref.path,
            "backend": run.reference_backend,
            "model_name": ref.model_name,
            "sha256": ref.sha256,
            "preprocess": ref.preprocess.to_dict(),
            "count": run.count,
        },
        class_names=tuple(run.class_names),
        details=tuple(details),
        skipped=dict(run.skipped),
        elapsed_s=run.elapsed_s,
    )


def _parity_index(parity: Mapping[str, Any] | None) -> dict[tuple[str, str], dict[str, Any]]:
    if not parity:
        return {}
    return {(r["sha256"], r["backend"]): r for r in parity.get("rows", []) if r.get("sha256")}


def bench_report(
    run: Any,
    *,
    command: str = "",
    environment: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    parity: Mapping[str, Any] | None = None,
) -> Report:
    """`runtime.bench.BenchRun` -> `Report`, joining accuracy columns from a parity report JSON.

    Parity rows join on (model sha256, backend): the accuracy of *that* file on *that* backend.
    """
    index = _parity_index(parity)
    rows, samples = [], {}
    peaks: dict[str, dict[str, Any]] = {}
    for r in run.rows:
        p = index.get((r.sha256, r.backend), {})
        st = r.stats
        roof = getattr(r, "roofline", None)
        if roof is not None:
            roof = dict(roof)
            peak = roof.pop("peak", None)
            if peak:
                peaks.setdefault(peak["key"], peak)
        row = ReportRow(
            model=r.model,
            label=r.label,
            backend=r.backend,
            precision=ran_as(r.precision.value, r.backend_info),
            batch=r.batch,
            sha256=r.sha256,
            accuracy=p.get("accuracy"),
            macro_f1=p.get("macro_f1"),
            top1_agreement=p.get("top1_agreement"),
            max_abs_diff=p.get("max_abs_diff"),
            mean_abs_diff=p.get("mean_abs_diff"),
            p99_abs_diff=p.get("p99_abs_diff"),
            kl_mean=p.get("kl_mean"),
            accuracy_drop_pts=p.get("accuracy_drop_pts"),
            passed=p.get("passed"),
            latency_ms=_lat(st),
            verdict=p.get("verdict"),
            bounds=p.get("bounds") or "",
            max_prob_diff=p.get("max_prob_diff"),
            top1_agreement_ci=tuple(p["top1_agreement_ci"]) if p.get("top1_agreement_ci") else None,
            notes=tuple(p.get("notes") or ()),
            device_latency_ms=_lat(st.device) if st is not None else None,
            throughput_ips=st.throughput_ips if st else None,
            error=r.error,
            roofline=roof,
        )
        if r.repeat > 0:  # repeats feed the spread table, the main table shows the first run
            samples[row_key(row) + f"|r{r.repeat}"] = st.samples_ms if st else ()
            continue
        rows.append(row)
        if st is not None:
            samples[row_key(row)] = st.samples_ms
    overhead = tuple(
        {
            "model": o.model,
            "backend": o.backend,
            "batch": o.batch,
            "harness_ms": _lat(o.harness),
            "bare_ms": _lat(o.bare),
            "overhead_pct": o.overhead_pct,
            "overhead_us": o.overhead_us,
            "paired_diff_ms": list(o.paired_diff_ms),
            "within_2pct": o.within_2pct,
        }
        for o in run.overhead
    )
    spread = tuple(
        {
            "model": s.model,
            "backend": s.backend,
            "batch": s.batch,
            "p50_ms": list(s.p50_ms),
            "p50_ci_ms": [list(c) for c in s.p50_ci_ms],
            "spread_pct": s.spread_pct,
            "agree": s.agree,
        }
        for s in run.spread
    )
    failing = tuple(f"{r.label} [{r.backend}, b={r.batch}]: {r.error}" for r in run.rows if r.error)
    return Report(
        kind="bench",
        rows=tuple(rows),
        passed=not failing,
        failing=failing,
        command=command,
        environment=dict(environment or {}),
        config=dict(config or {}),
        created_at=_now(),
        overhead=overhead,
        spread=spread,
        skipped=dict(run.skipped),
        elapsed_s=run.elapsed_s,
        roofline_peaks=tuple(peaks[k] for k in sorted(peaks)),
        samples_ms=samples,
    )


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a report JSON, checking its schema tag."""
    body = read_json(path)
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise ArtifactError(
            f"{path}: not a {SCHEMA} report (schema {body.get('schema') if isinstance(body, dict) else None!r})"
        )
    return body


# --------------------------------------------------------------------------------------------
# Markdown (pure)
# --------------------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and not np.isfinite(v):
        return str(v)
    return format(v, fmt)


def agreement_text(value: float | None, ci: Sequence[float] | None) -> str:
    """``0.9964 [0.9870, 0.9990]``: top-1 agreement with its 95% interval (``–`` when not measured)."""
    if value is None:
        return "–"
    return f"{value:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{value:.4f}"


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]], *, align: str = "") -> list[str]:
    """A Markdown table as lines: the one table renderer of every report (parity, bench, pipeline,
    quantization, deploy, TensorRT layers, scripts).

    Args:
        header: Column titles.
        rows: Cells, any value (``str()`` is applied); a ``|`` inside a cell is escaped and a
            newline becomes a space.
        align: One character per column, ``l`` (default) or ``r`` (numbers); shorter strings
            leave the remaining columns left-aligned.

    Raises:
        ValueError: when a row has another number of cells than the header, or ``align`` has
            a character other than ``l``/``r`` or more characters than columns.
    """
    if len(align) > len(header) or set(align) - {"l", "r"}:
        raise ValueError(f"align {align!r}: one of 'l'/'r' per column (at most {len(header)})")
    bad = [i for i, row in enumerate(rows) if len(row) != len(header)]
    if bad:
        raise ValueError(f"rows {bad[:5]} have other than {len(header)} cells (header {list(header)})")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align.ljust(len(header), "l")) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def render_markdown(report: Report) -> str:
    """The report as Markdown (pure; deterministic for a given report)."""
    from runtime.env import summary_line

    out = [f"# {report.kind.capitalize()} report", ""]
    verdict = "PASSED" if report.passed else "FAILED"
    out += [f"**{verdict}**" + (f" — failing: {', '.join(report.failing)}" if report.failing else ""), ""]
    if report.command:
        out += [f"Command: `{report.command}`", ""]
    if report.environment:
        out += [f"Machine: {summary_line(report.environment)}", ""]
    if report.dataset:
        out += [f"Data: {report.dataset}", ""]
    if report.reference:
        out += [f"Reference: `{report.reference.get('model')}` on {report.reference.get('backend')}", ""]
    if report.kind == "parity":
        body = [
            [
                r.label,
                r.backend,
                r.precision,
                _f(r.accuracy),
                _f(r.macro_f1),
                _f(r.accuracy_drop_pts, "+.2f"),
                agreement_text(r.top1_agreement, r.top1_agreement_ci),
                _f(r.max_prob_diff, ".3g"),
                _f(r.max_abs_diff, ".3g"),
                _f(r.kl_mean, ".3g"),
                verdict_text(r),
            ]
            for r in report.rows
        ]
        out += md_table(
            [
                "model",
                "backend",
                "precision",
                "accuracy",
                "macro-F1",
                "Δacc (pts)",
                "top-1 agree [95% CI]",
                "max Δprob",
                "max abs Δlogit",
                "KL",
                "verdict (bounds)",
            ],
            body,
        )
        out += [
            "",
            "Verdicts follow the per-precision tolerance policy (docs/tolerances.md): a bound fails only when "
            "its whole 95% interval is on the wrong side; *uncertain* means the point estimate misses but the "
            "sample is too small to tell.",
        ]
        bad = [r for r in report.rows if not r.passed and not r.is_reference]
        if bad:
            out += ["", "## Failing rows", ""]
            for r in bad:
                why = "; ".join(r.reasons) or r.error
                out.append(f"- **{r.label} [{r.backend}, {r.precision}]**: {why}")
        unsure = [r for r in report.rows if r.notes and r.passed]
        if unsure:
            out += ["", "## Uncertain rows (pass; more samples would settle them)", ""]
            out += [f"- {r.label} [{r.backend}, {r.precision}]: {'; '.join(r.notes)}" for r in unsure]
        shown = [d for d in report.details if not d.get("is_reference") and d.get("per_class_accuracy_delta")]
        if shown and report.class_names:
            out += ["", "## Per-class accuracy delta (candidate − reference, pts)", ""]
            out += md_table(
                ["model", "backend", *report.class_names],
                [
                    [
                        d["label"],
                        d["backend"],
                        *(_f(100 * d["per_class_accuracy_delta"][c], "+.1f") for c in report.class_names),
                    ]
                    for d in shown
                ],
            )
            flips = [d for d in shown if d.get("flipped_ids")]
            if flips:
                out += ["", "## Flipped samples (top-1 differs from the reference)", ""]
                for d in flips:
                    ids = d["flipped_ids"]
                    more = f" … (+{len(ids) - 20})" if len(ids) > 20 else ""
                    out.append(f"- {d['label']} [{d['backend']}]: {len(ids)}: {', '.join(ids[:20])}{more}")
    else:
        body = []
        for r in report.rows:
            lat = r.latency_ms or {}
            ci = lat.get("p50_ci") or [None, None]
            ci99 = lat.get("p99_ci") or [None, None]
            body.append(
                [
                    r.label,
                    r.backend,
                    r.precision,
                    str(r.batch),
                    f"{_f(lat.get('p50'), '.3f')} [{_f(ci[0], '.3f')}, {_f(ci[1], '.3f')}]",
                    _f(lat.get("p90"), ".3f"),
                    f"{_f(lat.get('p99'), '.3f')} [{_f(ci99[0], '.3f')}, {_f(ci99[1], '.3f')}]",
                    _f(lat.get("mean"), ".3f"),
                    str(lat.get("count", "–")),
                    _f(r.throughput_ips, ".1f"),
                    _f(r.accuracy),
                    _f(r.top1_agreement),
                    _f(r.max_abs_diff, ".3g"),
                    r.error or "",
                ]
            )
        out += md_table(
            [
                "model",
                "backend",
                "precision",
                "batch",
                "p50 ms [95% CI]",
                "p90 ms",
                "p99 ms [95% CI]",
                "mean ms",
                "n",
                "img/s",
                "accuracy",
                "top-1 agree",
                "max abs Δ",
                "error",
            ],
            body,
        )
        dev = [r for r in report.rows if r.device_latency_ms]
        if dev:
            out += ["", "## Device (CUDA event) time", ""]
            out += md_table(
                ["model", "backend", "batch", "host p50 ms", "device p50 ms", "device p99 ms"],
                [
                    [
                        r.label,
                        r.backend,
                        str(r.batch),
                        _f((r.latency_ms or {}).get("p50"), ".3f"),
                        _f(r.device_latency_ms.get("p50"), ".3f"),
                        _f(r.device_latency_ms.get("p99"), ".3f"),
                    ]
                    for r in dev
                ],
            )
        out += roofline_markdown(report)
        if report.overhead:
            out += ["", "## Harness overhead (call-by-call ABBA interleaving with a bare `session.run` loop)", ""]
            out += md_table(
                [
                    "model",
                    "backend",
                    "batch",
                    "harness p50 ms [CI]",
                    "bare p50 ms [CI]",
                    "overhead (p50s)",
                    "paired median Δ µs [CI]",
                    "within 2%",
                ],
                [
                    [
                        Path(o["model"]).name,
                        o["backend"],
                        str(o["batch"]),
                        f"{_f(o['harness_ms']['p50'], '.4f')} [{_f(o['harness_ms']['p50_ci'][0], '.4f')}, "
                        f"{_f(o['harness_ms']['p50_ci'][1], '.4f')}]",
                        f"{_f(o['bare_ms']['p50'], '.4f')} [{_f(o['bare_ms']['p50_ci'][0], '.4f')}, "
                        f"{_f(o['bare_ms']['p50_ci'][1], '.4f')}]",
                        f"{o['overhead_pct']:+.2f}% ({o['overhead_us']:+.1f} µs)",
                        f"{1e3 * o['paired_diff_ms'][0]:+.1f} [{1e3 * o['paired_diff_ms'][1]:+.1f}, "
                        f"{1e3 * o['paired_diff_ms'][2]:+.1f}]",
                        "yes" if o["within_2pct"] else "**no**",
                    ]
                    for o in report.overhead
                ],
            )
        if report.spread:
            out += ["", "## Run-to-run spread (back-to-back repeats)", ""]
            out += md_table(
                ["model", "backend", "batch", "p50 per run (ms)", "spread", "CIs overlap"],
                [
                    [
                        Path(s["model"]).name,
                        s["backend"],
                        str(s["batch"]),
                        ", ".join(_f(v, ".3f") for v in s["p50_ms"]),
                        f"{s['spread_pct']:.2f}%",
                        "yes" if s["agree"] else "**no**",
                    ]
                    for s in report.spread
                ],
            )
    if report.skipped:
        out += ["", "Backends not available here: " + "; ".join(f"{k}: {v}" for k, v in sorted(report.skipped.items()))]
    out.append("")
    return "\n".join(out)


def roofline_markdown(report: Report) -> list[str]:
    """The bench report's roofline section (pure): achieved MAC/s per row against the INT8 peak
    of the same runtime and thread count, and how each peak was measured. Empty without figures."""
    shown = [r for r in report.rows if r.roofline]
    if not shown:
        return []
    out = ["", "## Roofline: achieved MAC/s vs a large INT8 GEMM in the same runtime", ""]
    out += md_table(
        ["model", "backend", "precision", "batch", "GMAC/call (INT8 share)", "GMAC/s", "INT8 GMAC/s", "% of INT8 peak"],
        [
            [
                r.label,
                r.backend,
                r.precision,
                str(r.batch),
                f"{r.roofline['macs'] / 1e9:.3f} ({100 * r.roofline['int8_macs'] / max(r.roofline['macs'], 1):.0f}%)",
                _f(r.roofline.get("achieved_gmacs"), ".1f"),
                _f(r.roofline.get("achieved_int8_gmacs"), ".1f"),
                _f(r.roofline.get("pct_of_int8_peak"), ".1f"),
            ]
            for r in shown
        ],
        align="llllrrrr",
    )
    out += [
        "",
        "GMAC/s = multiply-accumulates of the Conv/MatMul/Gemm nodes at that batch (ONNX shapes) / p50 latency; "
        "INT8 GMAC/s counts the nodes that run as INT8 (integer ops, or Q/DQ on both inputs). % of INT8 peak "
        "compares it with a large uint8×int8 GEMM timed in the same runtime and thread count, so it is a lower "
        "bound of the INT8 kernels' efficiency: float layers, (de)quantization, memory traffic and per-call "
        "overheads are in the latency too (they dominate a small model at batch 1).",
    ]
    if report.roofline_peaks:
        out += ["", "INT8 peaks (median [min–max] over repeats; the faster of a MatMul and a 1×1-conv form):", ""]
        out += [f"- {p.get('description') or p.get('key')}" for p in report.roofline_peaks]
    return out


# --------------------------------------------------------------------------------------------
# Plots (matplotlib imported inside)
# --------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point beats on both (lower, higher)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(rows: Sequence[ReportRow], path: str | os.PathLike, batch: int | None = None) -> Path | None:
    """Latency (p50) vs accuracy at one batch size, with the Pareto front; None when no row has both.

    Per-call latencies of different batch sizes are not comparable, so one batch is plotted:
    ``batch``, else batch 1 when measured (per-frame latency, what a camera pipeline pays), else the
    smallest measured batch.
    """
    pts = [r for r in rows if r.accuracy is not None and r.latency_ms and r.batch is not None]
    if not pts:
        return None
    batches = sorted({r.batch for r in pts})
    chosen = batch if batch in batches else (1 if 1 in batches else batches[0])
    pts = [r for r in pts if r.batch == chosen]
    plt = _pyplot()
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xy = [(r.latency_ms["p50"], 100 * r.accuracy) for r in pts]
    # Points on the same accuracy (FP32 vs FP16, the INT8 files) sit side by side: alternate their
    # labels above and below the point, in latency order, so they do not print over each other.
    rank: dict[int, int] = {}
    seen: dict[float, int] = {}
    for i in sorted(range(len(xy)), key=lambda i: xy[i][0]):
        key = round(xy[i][1], 3)
        rank[i] = seen.get(key, 0)
        seen[key] = rank[i] + 1
    for i, (r, (x, y)) in enumerate(zip(pts, xy)):
        lo, hi = r.latency_ms.get("p50_ci") or (x, x)
        ax.errorbar(x, y, xerr=[[max(0.0, x - lo)], [max(0.0, hi - x)]], fmt="o", capsize=3)
        ax.annotate(
            f"{Path(r.label).name}\n{r.backend} {r.precision}",
            (x, y),
            fontsize=7,
            xytext=(4, 6 if rank[i] % 2 == 0 else -22),
            textcoords="offset points",
        )
    front = sorted(xy[i] for i in pareto_front(xy))
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", color="grey", linestyle="--", label="Pareto front")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25, y=0.15)
    ax.set_xlabel(f"p50 latency per call at batch {chosen} (ms, log scale; bars: 95% CI)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Latency vs accuracy (batch {chosen})")
    return _save(fig, plt, path)


def plot_confusion_deltas(report: Report, path: str | os.PathLike) -> Path | None:
    """One heat map of (candidate − reference) confusion counts per non-reference parity row."""
    # Unlabelled data (parity on a folder of images) has no confusion matrix: empty lists.
    shown = [d for d in report.details if not d.get("is_reference") and d.get("confusion_delta")]
    if not shown:
        return None
    plt = _pyplot()
    n = len(shown)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.9 * rows), squeeze=False)
    names = list(report.class_names)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, d in zip(axes.flat, shown):
        m = np.asarray(d["confusion_delta"], dtype=float)
        lim = max(1.0, float(np.abs(m).max()))
        im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for (i, j), v in np.ndenumerate(m):
            if v:
                ax.text(j, i, f"{int(v):+d}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{d['label']}\n{d['backend']} {d['precision']}", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("Confusion-matrix delta (candidate − reference)")
    return _save(fig, plt, path)


def plot_latency_distributions(report: Report, path: str | os.PathLike) -> Path | None:
    """Box plots of per-call latency per row (log scale), first run only."""
    keys = [row_key(r) for r in report.rows if row_key(r) in report.samples_ms and report.samples_ms[row_key(r)]]
    if not keys:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 4.5))
    data = [np.asarray(report.samples_ms[k]) for k in keys]
    ax.boxplot(data, whis=(1, 99), showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(keys) + 1), [k.replace("|", "\n") for k in keys], fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("latency per call (ms, log)")
    ax.set_title("Latency distributions (box: quartiles, whiskers: p1–p99)")
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    out = atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return out


def write_report(
    report: Report, out_dir: str | os.PathLike, *, stem: str | None = None, plots: bool = True
) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and the PNGs into ``out_dir`` (atomically).

    Returns:
        Name -> written path (``json``, ``markdown``, and ``pareto``/``confusion``/``latency``
        for plots that had data).
    """
    out = Path(out_dir)
    stem = stem or report.kind
    paths = {
        "json": atomic_write_json(out / f"{stem}.json", report.to_dict()),
        "markdown": atomic_write_text(out / f"{stem}.md", render_markdown(report)),
    }
    if plots:
        try:
            _pyplot()
        except ImportError as exc:
            log.warning("matplotlib is not installed (%s): PNG plots skipped; pip install '.[dev]'", exc)
            return paths
        for name, fn in (
            ("pareto", lambda p: plot_pareto(report.rows, p)),
            ("confusion", lambda p: plot_confusion_deltas(report, p)),
            ("latency", lambda p: plot_latency_distributions(report, p)),
        ):
            written = fn(out / f"{stem}.{name}.png")
            if written is not None:
                paths[name] = written
    return paths
