"""What a quantization run reports: `QuantReport` (parity, lint, latency, ignored scope) as JSON and Markdown.

`quantize.orchestrate` fills it in; `write_report` writes ``RUN/model.int8.report.json`` and
``.md`` beside the model (`report_paths`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.artifacts import atomic_write_json, atomic_write_text
from runtime.compare import ParityResult
from runtime.latency import LatencyStats
from runtime.qdq_lint import LintReport

if TYPE_CHECKING:
    from quantize.runtime_pick import RuntimePick


@dataclass(frozen=True)
class LatencyRow:
    """FP32 and candidate latency at one batch size, measured in alternating rounds."""

    batch: int
    reference: LatencyStats
    candidate: LatencyStats

    @property
    def speedup_p50(self) -> float:
        return self.reference.p50_ms / self.candidate.p50_ms

    @property
    def speedup_throughput(self) -> float:
        return self.candidate.throughput_ips / self.reference.throughput_ips

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "reference": self.reference.to_dict(),
            "candidate": self.candidate.to_dict(),
            "speedup_p50": self.speedup_p50,
            "speedup_throughput": self.speedup_throughput,
        }


@dataclass(frozen=True)
class LatencyComparison:
    """Side-by-side CPU latency of a reference and a candidate model."""

    rows: tuple[LatencyRow, ...]
    threads: int
    rounds: int
    provider: str = "onnxruntime CPUExecutionProvider"

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "threads": self.threads,
            "rounds": self.rounds,
            "rows": [r.to_dict() for r in self.rows],
        }


@dataclass(frozen=True)
class QuantReport:
    """What a quantized/converted model costs and gains against its FP32 source."""

    precision: str
    model: str
    reference: str
    method: str
    target: str
    form: str
    validation: str
    parity: ParityResult
    lint: LintReport | None
    latency: LatencyComparison | None
    ignored_scope: dict[str, Any] = field(default_factory=dict)
    accuracy_control: dict[str, Any] | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    conversion: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    runtime: RuntimePick | None = None  # cpu target: the fastest x86 runtime for the file, measured
    explain: dict[str, Any] | None = None  # `quantize.orchestrate.explain_file`: the node ranking, when enabled

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "model": self.model,
            "reference": self.reference,
            "method": self.method,
            "target": self.target,
            "form": self.form,
            "validation": self.validation,
            "parity": self.parity.to_dict(),
            "lint": self.lint.to_dict() if self.lint else None,
            "latency": self.latency.to_dict() if self.latency else None,
            "ignored_scope": self.ignored_scope,
            "accuracy_control": self.accuracy_control,
            "calibration": self.calibration,
            "conversion": self.conversion,
            "timing": self.timing,
            "runtime": self.runtime.to_dict() if self.runtime else None,
            "explain": {k: v for k, v in self.explain.items() if k != "markdown"} if self.explain else None,
        }

    def to_markdown(self) -> str:
        from runtime.report import md_table

        p = self.parity
        lines = [
            f"# {self.precision.upper()} report: {Path(self.model).name}",
            "",
            f"- reference: `{self.reference}` (FP32)",
            f"- method: {self.method}; target: {self.target}",
            f"- form: {self.form}",
            f"- validation: {self.validation}",
        ]
        if self.calibration:
            cc = ", ".join(f"{k} {v}" for k, v in self.calibration.get("class_counts", {}).items())
            lines.append(f"- calibration: {self.calibration.get('source', '')}; classes: {cc}")
        lines += [
            "",
            "## Parity against FP32 (onnxruntime CPU)",
            "",
            *md_table(
                ["", "FP32", self.precision.upper()],
                [
                    ["top-1 accuracy", f"{p.reference_accuracy:.4f}", f"{p.accuracy:.4f}"],
                    ["macro-F1", f"{p.reference_macro_f1:.4f}", f"{p.macro_f1:.4f}"],
                ],
            ),
            "",
            f"- accuracy drop: **{p.accuracy_drop_pts:+.2f} pts**; top-1 agreement with FP32: **{100 * p.top1_agreement:.2f}%** "
            f"({len(p.flipped_ids)} of {p.count} flipped)",
            f"- logit difference: max {p.max_abs_diff:.4g}, mean {p.mean_abs_diff:.4g}, p99 {p.p99_abs_diff:.4g}; mean KL {p.kl_mean:.3g}",
            f"- verdict ({p.precision.value} tolerances {p.tolerance.to_dict()}): **{'PASSED' if p.passed else 'FAILED'}**"
            + (f": {'; '.join(p.reasons)}" if p.reasons else ""),
            "",
        ]
        lines += md_table(
            ["class", "accuracy delta (pts)"],
            [[c, f"{100 * d:+.2f}"] for c, d in zip(p.class_names, p.per_class_accuracy_delta)],
        )
        if p.flipped_ids:
            shown = ", ".join(f"`{i}`" for i in p.flipped_ids[:30])
            lines += [
                "",
                f"Flipped samples: {shown}"
                + (f" and {len(p.flipped_ids) - 30} more" if len(p.flipped_ids) > 30 else ""),
            ]
        if self.ignored_scope:
            sc = self.ignored_scope
            lines += [
                "",
                "## Kept in float (ignored scope)",
                "",
                f"- mode: {sc.get('mode')}; chosen groups: {sc.get('chosen') or 'none'}",
            ]
            lines.append(f"- nodes kept in float: {len(sc.get('nodes', []))}")
            meas = sc.get("measurements")
            if meas:
                lines += ["", f"Measured on {sc.get('measured_on', '')}:", ""]
                lines += md_table(
                    ["kept in float", "top-1 agreement", "mean abs logit diff", "max abs logit diff"],
                    [
                        [
                            name,
                            f"{100 * m['top1_agreement']:.2f}%",
                            f"{m['mean_abs_diff']:.4f}",
                            f"{m['max_abs_diff']:.4f}",
                        ]
                        for name, m in meas.items()
                    ],
                )
        if self.accuracy_control:
            ac = self.accuracy_control
            rev = ac.get("reverted_to_float", [])
            ranked = "how" in ac  # the onnxruntime method: explain's ranking (quantize.orchestrate)
            lines += [
                "",
                "## Accuracy control (" + ("explain's ranking" if ranked else "NNCF") + ")",
                "",
                f"- bound: top-1 drop <= {ac.get('max_drop_pts')} pts on {ac.get('validation_size')} validation samples",
            ]
            if ranked:
                lines += [
                    f"- drop before: {ac.get('drop_before_pts')} pts; "
                    + ("bound reached" if ac.get("reached") else "**bound not reached**"),
                    f"- how: {ac.get('how')}",
                ]
                if ac.get("explain"):
                    lines.append(f"- {ac['explain']}")
            lines.append(f"- layers reverted to float: {len(rev)}")
            lines += [f"  - `{n}`" for n in rev]
        if self.lint is not None and self.target != "tensorrt":
            lines += [
                "",
                "## Q/DQ lint (TensorRT rules)",
                "",
                f"- not applicable: this is the {self.target} form, made for onnxruntime on the CPU; its "
                f"unsigned, asymmetric activations break TensorRT's rules by design ({len(self.lint.errors)} "
                "finding(s)). For TensorRT use the file quantized with --target tensorrt.",
            ]
        elif self.lint is not None:
            lines += ["", "## Q/DQ lint (TensorRT rules)", "", f"- {self.lint.summary()}"]
            lines += [f"- {f}" for f in self.lint.findings if f.severity.value != "info"][:20]
        if self.latency:
            lat = self.latency
            lines += [
                "",
                f"## Latency ({lat.provider}, {lat.threads or 'default'} thread(s), {lat.rounds} interleaved rounds)",
                "",
            ]
            prec = self.precision.upper()
            lines += md_table(
                [
                    "batch",
                    "FP32 p50 ms [95% CI]",
                    f"{prec} p50 ms [95% CI]",
                    "FP32 img/s",
                    f"{prec} img/s",
                    "speed-up (p50)",
                    "speed-up (throughput)",
                ],
                [
                    [
                        r.batch,
                        f"{r.reference.p50_ms:.3f} [{r.reference.p50_ci_ms[0]:.3f}, {r.reference.p50_ci_ms[1]:.3f}]",
                        f"{r.candidate.p50_ms:.3f} [{r.candidate.p50_ci_ms[0]:.3f}, {r.candidate.p50_ci_ms[1]:.3f}]",
                        f"{r.reference.throughput_ips:.1f}",
                        f"{r.candidate.throughput_ips:.1f}",
                        f"{r.speedup_p50:.2f}×",
                        f"{r.speedup_throughput:.2f}×",
                    ]
                    for r in lat.rows
                ],
            )
        if self.runtime:
            from quantize.runtime_pick import render_markdown

            lines += ["", render_markdown(self.runtime).rstrip("\n")]
        if self.explain:
            lines += ["", *explain_section(self.explain, Path(self.model).parent)]
        if self.timing:
            lines += ["", "Timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timing.items())]
        return "\n".join(lines) + "\n"


def explain_section(explained: dict[str, Any], report_dir: Path) -> list[str]:
    """The explain ranking as a section of this report: its headings one level down, its plot linked."""
    lines = ["## Which nodes cost the agreement (quantize explain)", ""]
    for line in explained["markdown"].splitlines():
        if line.startswith("# ") or (not line and lines[-1] == ""):
            continue  # the explain report's own title, and the blank line it leaves
        lines.append("#" + line if line.startswith("#") else line)
    png = explained.get("paths", {}).get("png")
    if png:
        rel = Path(png).relative_to(report_dir) if Path(png).is_relative_to(report_dir) else Path(png)
        lines += ["", f"![agreement recovered per node]({rel.as_posix()})"]
    lines += ["", f"Full ranking: `{explained['folder']}` (explain.md, explain.json)."]
    return lines


def report_paths(out: str | Path) -> tuple[Path, Path]:
    """``RUN/model.int8.onnx`` -> (``model.int8.report.json``, ``model.int8.report.md``)."""
    p = Path(out)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".report.json"), p.with_name(stem + ".report.md")


def write_report(report: QuantReport, out: str | Path) -> tuple[Path, Path]:
    jpath, mpath = report_paths(out)
    atomic_write_json(jpath, report.to_dict())
    atomic_write_text(mpath, report.to_markdown())
    return jpath, mpath
