"""report.md from report.json's content (pure functions)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.report import agreement_text, md_table, verdict_text

log = logging.getLogger(__name__)


def _ran(r: Mapping[str, Any]) -> str:
    """`` (ran bf16)`` when the runtime chose another float precision than the file's (OpenVINO on a
    CPU with AVX-512 BF16 / AMX runs FP32 files in bf16; `runtime.report.ran_as` writes it), else ""."""
    prec = str(r.get("precision") or "")
    return prec[prec.index(" (ran ") :] if " (ran " in prec else ""


def _backend_text(r: Mapping[str, Any]) -> str:
    """The runtime of a row, with the float precision it chose when that differs: ``openvino (ran bf16)``."""
    return f"{r.get('backend')}{_ran(r)}"


def _row_name(r: Mapping[str, Any]) -> str:
    return f"{r.get('title', r.get('label'))} [{_backend_text(r)}]"


def _precision_note(rows: list[Mapping[str, Any]]) -> list[str]:
    """A sentence under a table that has rows whose runtime chose a 16-bit float precision (pure)."""
    ran = sorted({f"`{r.get('backend')}`{_ran(r)}" for r in rows if _ran(r)})
    if not ran:
        return []
    return [
        "",
        f"Rows marked *ran bf16* / *ran f16* ({', '.join(ran)}): the runtime chose that float precision itself for "
        "a float file (OpenVINO does on CPUs with AVX-512 BF16 or AMX), so their latency is not FP32 math and their "
        "parity is judged with that precision's bounds (bf16: agreement ≥ 0.99, Δprob ≤ 0.08; f16: the FP16 bounds; "
        "docs/tolerances.md).",
    ]


def _skipped_lines(skipped: Mapping[str, str], config: Mapping[str, Any]) -> list[str]:
    """Runtimes not run here: the listed ``cpu_backends`` first, by name, with the reason and the fix (pure)."""
    if not skipped:
        return []
    listed = {
        name
        for section in ("parity", "bench")
        for name in ((config.get(section) or {}).get("cpu_backends") or ())
        if name in skipped
    }
    out = []
    for name in sorted(listed):
        out += [
            "",
            f"**`{name}` rows skipped** (listed in `cpu_backends`, not usable on this machine): {skipped[name]}.",
        ]
    rest = {k: v for k, v in skipped.items() if k not in listed}
    if rest:
        out += [
            "",
            "Backends not available on this machine: "
            + "; ".join(f"`{k}`: {v}" for k, v in sorted(rest.items()))
            + ".",
        ]
    return out


def _roofline_lines(rows: list[Mapping[str, Any]], bench_md: str) -> list[str]:
    """How close each INT8 row comes to this CPU's INT8 limit (the bench stage's roofline figures)."""
    shown = [r for r in rows if (r.get("roofline") or {}).get("pct_of_int8_peak") is not None]
    if not shown:
        return []
    cells = "; ".join(
        f"{_row_name(r)} b{r.get('batch')}: {_fmt(r['roofline'].get('achieved_int8_gmacs'), '.0f')} GMAC/s, "
        f"**{_fmt(r['roofline']['pct_of_int8_peak'], '.0f')}%**"
        for r in shown
    )
    return [
        "",
        f"INT8 rows against this CPU's INT8 limit (achieved INT8 multiply-accumulates per second / a large INT8 "
        f"GEMM timed in the same runtime and thread count): {cells}. How each peak was measured: "
        f"[{bench_md}]({bench_md}), section Roofline.",
    ]


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _mb(n: Any) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} MB"


def _measurement_lines(m: Mapping[str, Any]) -> list[str]:
    """The "how it was measured" paragraph of report.md (pure)."""
    if not m:
        return []
    out = ["", "### How this was measured", ""]
    threads = m.get("threads_per_backend") or {}
    if threads:
        out.append(
            "- threads: "
            + ", ".join(f"`{b}` {t} intra-op" for b, t in sorted(threads.items()))
            + " (set explicitly; OMP_NUM_THREADS is not relied on)"
        )
    if m.get("batches"):
        out.append(
            f"- batch sizes: {', '.join(str(b) for b in m['batches'])}; "
            f"{_fmt(m.get('seconds_per_measurement'), 'g')} s per measurement after warm-up"
        )
    if m.get("parity_set"):
        out.append(f"- parity set: {m['parity_set']}")
    for file, cal in sorted((m.get("calibration") or {}).items()):
        counts = cal.get("class_counts") or {}
        balance = f"; per class {min(counts.values())}–{max(counts.values())}" if counts else ""
        out.append(
            f"- INT8 calibration of `{file}`: {cal.get('source')} ({cal.get('size')} images, seed "
            f"{cal.get('seed')}{balance})"
        )
    out.append(f"- code: commit `{m.get('commit') or 'unknown (not a git checkout)'}`")
    return out


def _engine_lines(trt: Mapping[str, Any]) -> list[str]:
    """The TensorRT section's engine table and what ran them (pure)."""
    rows = []
    for e in trt.get("engines", []):
        if e.get("ahead_of_time"):
            where = f"{', '.join(e.get('targets') or [])}{' (default)' if e.get('targets_default') else ''}"
        else:
            where = f"{e.get('gpu')} (sm {e.get('compute_capability')})"
        r = e.get("realized") or {}
        if r:
            counts = ", ".join(f"{k} {v}" for k, v in sorted((r.get("counts") or {}).items()))
            realized = (
                f"{r.get('requested')} in {_fmt(r.get('share'), '.0%')} of {r.get('compute_layers')} conv/GEMM "
                f"({counts}; need {_fmt(r.get('min_share'), '.0%')}): {'ok' if r.get('passed') else '**FAILED**'}"
            )
        else:
            realized = "–"
        table = f"[layers]({e['layers_md']})" if e.get("layers_md") else "–"
        rows.append(
            [
                f"`{Path(e.get('engine', '')).name}`",
                e.get("precision"),
                e.get("tensorrt"),
                where,
                _mb(e.get("size_bytes")),
                _fmt(e.get("build_s"), ".1f"),
                realized,
                table,
            ]
        )
    out = md_table(
        [
            "engine",
            "precision",
            "built by",
            "runs on (compute capability)",
            "size",
            "build s",
            "realized precision",
            "per layer",
        ],
        rows,
    )
    short = [
        e
        for e in trt.get("engines", [])
        if (e.get("realized") or {}).get("requested") == "int8"
        and (e.get("realized") or {}).get("share") is not None
        and e["realized"]["share"] < 0.9
    ]
    for e in short:
        names = ", ".join(f"`{o}`" for o in e["realized"].get("offenders") or [])
        out += ["", f"`{Path(e['engine']).name}`: conv/GEMM layers not in INT8: {names or 'none listed'}."]
    if trt.get("available"):
        out += ["", "The `trt` rows above ran these engines (CUDA-event device times are in the bench report)."]
    else:
        out += [
            "",
            "These engines were built here but **not run**: the parity and latency tables have no `trt` rows, because:",
            "",
        ]
        out += [f"- {part}" for part in trt.get("reasons") or [trt.get("reason", "")]]
        if trt.get("how_to"):
            out += ["", f"To run them, {trt['how_to']}."]
    return out


def render_report(body: Mapping[str, Any]) -> str:
    """report.md from report.json's content (pure)."""
    from runtime.env import summary_line

    rows = body.get("rows", [])
    tr = body.get("training") or {}
    m = tr.get("metrics") or {}
    model = tr.get("model") or {}
    ds = tr.get("dataset") or {}
    classes = body.get("class_names") or []
    plots = body.get("plots") or {}
    out = [f"# FER deployment report: `{body.get('config', {}).get('source') or 'pipeline'}`", ""]
    if model:
        out += [
            f"Model `{model.get('name')}` ({len(classes)} classes: {', '.join(classes)}), trained on "
            f"`{ds.get('name')}` ({ds.get('train')} training / {ds.get('val')} validation images), exported to "
            "ONNX, quantized, and measured on this machine.",
            "",
        ]
    if body.get("command"):
        out += [f"Command: `{body['command']}` ({body.get('created_at', '')})", ""]
    if body.get("environment"):
        out += [f"Machine: {summary_line(body['environment'])}", ""]

    # ---- summary
    out += ["## Summary", ""]
    summary: list[list[str]] = []
    if m:
        summary.append(
            [
                "validation accuracy (PyTorch)",
                f"{_fmt(m.get('val_accuracy'))} (macro-F1 {_fmt(m.get('val_macro_f1'))}, "
                f"best epoch {m.get('best_epoch')} of {tr.get('epochs_run')}, stopped by {tr.get('stop_reason')}, "
                f"{_fmt(tr.get('train_seconds'), '.0f')} s)",
            ]
        )
    prow = [r for r in body.get("parity_rows", []) if not r.get("is_reference")]
    if prow:
        ok = sum(1 for r in prow if r.get("passed"))
        unsure = [r for r in prow if r.get("passed") and r.get("verdict") == "uncertain"]
        summary.append(
            [
                "parity vs the reference",
                f"{ok} of {len(prow)} rows pass"
                + (f" ({len(unsure)} uncertain: too few samples to tell)" if unsure else "")
                + (
                    f"; **failing: {', '.join(_row_name(r) for r in prow if not r.get('passed'))}**"
                    if ok < len(prow)
                    else ""
                ),
            ]
        )
    for batch in sorted({r["batch"] for r in rows if r.get("batch") is not None and r.get("latency_ms")}):
        at = [r for r in rows if r.get("batch") == batch and r.get("latency_ms")]
        best = min(at, key=lambda r: r["latency_ms"]["p50"])
        summary.append(
            [
                f"fastest at batch {batch}",
                f"{_row_name(best)}: p50 {_fmt(best['latency_ms']['p50'], '.3f')} ms, "
                f"{_fmt(best.get('throughput_ips'), '.0f')} img/s",
            ]
        )
    for q in body.get("quantized") or []:
        pick = (q.get("sidecar") or {}).get("runtime")
        if pick:
            summary.append([f"x86 runtime for `{q['file']}`", f"**{pick['fastest']}** ({pick['note']})"])
    trt = body.get("tensorrt") or {}
    if trt.get("engines"):
        built = ", ".join(f"`{Path(e.get('engine', '')).name}`" for e in trt["engines"])
        runs = (
            "parity and latency rows below"
            if trt.get("available")
            else "**not run here** (details under [TensorRT](#tensorrt))"
        )
        summary.append(["TensorRT", f"{len(trt['engines'])} engines ({built}); {runs}"])
    elif trt.get("available"):
        summary.append(["TensorRT", "engines: none"])
    else:
        missing = [name for name in ("TensorRT", "CUDA/GPU") if any(r.startswith(name) for r in trt.get("reasons", []))]
        short = f"missing {' and '.join(missing)}" if missing else str(trt.get("reason", ""))
        summary.append(["TensorRT", f"**no engines built here** ({short}; details under [TensorRT](#tensorrt))"])
    out += md_table(["", ""], summary)

    # ---- accuracy × latency
    out += [
        "",
        "## Accuracy and latency",
        "",
        "One row per model × backend × batch. Latency is the host wall time of one call (p50 with its 95% bootstrap "
        "confidence interval; p99 is the tail), measured apart from accuracy on a fixed random batch. Accuracy and "
        "agreement are on the labelled split below; *acc. drop* is in points against the reference (positive = "
        "less accurate), *top-1 agree* the share of images whose top-1 class equals the reference's, *max Δprob* "
        "the largest change of any class probability. Each verdict names the bounds it was held to (the "
        "per-precision policy of docs/tolerances.md): a bound on a count fails only when its whole 95% interval "
        "misses it.",
        "",
    ]
    body_rows = []
    for r in rows:
        lat = r.get("latency_ms") or {}
        ci = lat.get("p50_ci") or [None, None]
        verdict = verdict_text(r)
        body_rows.append(
            [
                r.get("title"),
                f"`{r.get('file')}`",
                _backend_text(r),
                r.get("batch"),
                f"{_fmt(lat.get('p50'), '.3f')} [{_fmt(ci[0], '.3f')}, {_fmt(ci[1], '.3f')}]",
                _fmt(lat.get("p99"), ".3f"),
                _fmt(r.get("throughput_ips"), ".0f"),
                _fmt(r.get("accuracy")),
                _fmt(r.get("accuracy_drop_pts"), "+.2f"),
                _fmt(r.get("top1_agreement")),
                _fmt(r.get("max_prob_diff"), ".3g"),
                _mb(r.get("file_size_bytes")),
                verdict,
                r.get("error") or "",
            ]
        )
    out += md_table(
        [
            "model",
            "file",
            "backend",
            "batch",
            "p50 ms [95% CI]",
            "p99 ms",
            "img/s",
            "accuracy",
            "acc. drop (pts)",
            "top-1 agree",
            "max Δprob",
            "size",
            "parity (bounds)",
            "error",
        ],
        body_rows,
    )
    out += _precision_note(rows)
    out += _roofline_lines(rows, body.get("reports", {}).get("bench", ""))
    if body.get("dataset"):
        out += ["", f"Labelled set: {body['dataset']}."]
    out += _measurement_lines(body.get("measurement") or {})
    for key, title in sorted(
        ((k, v) for k, v in plots.items() if k.startswith("pareto_b")), key=lambda kv: int(kv[0][8:])
    ):
        out += ["", f"![Latency vs accuracy at batch {key[8:]}]({title})"]
    if "latency" in plots:
        out += ["", f"![Latency per model and backend]({plots['latency']})"]
    if "latency_distributions" in plots:
        out += [
            "",
            f"Per-call latency distributions: [{plots['latency_distributions']}]({plots['latency_distributions']})"
            f" (box: quartiles, whiskers p1–p99); the full latency report is [{body['reports']['bench']}]"
            f"({body['reports']['bench']}).",
        ]

    # ---- parity
    failing = [r for r in prow if not r.get("passed")]
    out += ["", "## Parity", ""]
    out += md_table(
        ["model", "backend", "verdict", "top-1 agree [95% CI]", "acc. drop (pts)", "max Δprob", "bounds"],
        [
            [
                _row_name(r),
                _backend_text(r),
                verdict_text({**r, "bounds": ""}),
                agreement_text(r.get("top1_agreement"), r.get("top1_agreement_ci")),
                _fmt(r.get("accuracy_drop_pts"), "+.2f"),
                _fmt(r.get("max_prob_diff"), ".3g"),
                r.get("bounds") or "–",
            ]
            for r in prow
        ],
    )
    out.append("")
    if failing:
        out += ["Rows outside their tolerance (the reasons name the bound that was missed):", ""]
        out += [f"- **{_row_name(r)}**: {'; '.join(r.get('reasons') or []) or r.get('error')}" for r in failing]
        out.append("")
    unsure = [r for r in prow if r.get("passed") and r.get("notes")]
    if unsure:
        out += ["Rows that pass but whose point estimate misses a bound (too few samples to tell):", ""]
        out += [f"- {_row_name(r)}: {'; '.join(r.get('notes') or [])}" for r in unsure]
        out.append("")
    out += [f"Per-class deltas and the flipped samples: [{body['reports']['parity']}]({body['reports']['parity']})."]
    if "confusion" in plots:
        out += ["", f"![Confusion-matrix delta of each candidate against the reference]({plots['confusion']})"]

    # ---- training
    if tr:
        out += ["", "## Training", ""]
        views = m.get("per_view_accuracy") or {}
        if views:
            out += md_table(["head pose", *views.keys()], [["val accuracy", *(_fmt(v, ".3f") for v in views.values())]])
        occl = m.get("per_occlusion_accuracy") or {}
        if occl:
            out += ["", "Occlusion: " + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in occl.items()) + "."]
        if "training" in plots:
            out += ["", f"![Training curves]({plots['training']})"]

    # ---- models
    exp = body.get("export") or {}
    out += ["", "## Models", ""]
    mrows = []
    if exp:
        pf = exp.get("preflight") or {}
        mrows.append(
            [
                "ONNX FP32",
                "`model.onnx`",
                _mb(exp.get("file_size_bytes")),
                f"{exp.get('exporter')} exporter, opset {exp.get('opset')}; preflight "
                f"{'passed' if pf.get('passed') else 'FAILED'} ({pf.get('errors')} errors, {pf.get('warnings')} warnings)",
            ]
        )
    for q in body.get("quantized", []):
        s = q.get("sidecar") or {}
        detail = ", ".join(f"{k} {s[k]}" for k in ("precision", "method", "target") if s.get(k)) or "–"
        mrows.append([q["title"], f"`{q['file']}`", _mb(q.get("file_size_bytes")), detail])
    out += md_table(["model", "file", "size", "how it was made"], mrows)

    # ---- TensorRT
    out += ["", "## TensorRT", ""]
    if trt.get("engines"):
        out += _engine_lines(trt)
    elif trt.get("available"):
        out += ["TensorRT is available but no engine was built (is the tensorrt stage in --stages?)."]
    else:
        out += ["No TensorRT engines were built on this machine, so the table has no `trt` rows. What is missing:", ""]
        out += [f"- {part}" for part in trt.get("reasons") or [trt.get("reason", "")]]
        out += ["", f"To add them, {trt.get('how_to', '')}; the other stages are reused."]

    # ---- deploy
    deploy = body.get("deploy") or []
    if deploy:
        out += [
            "",
            "## Deployment configs",
            "",
            "Generated from the model's contract and checked by re-doing the target's preprocessing in numpy from "
            "the written config (docs/deploy.md):",
            "",
        ]
        out += md_table(
            ["target", "folder", "model", "preprocessing", "max input diff", "top-1 agreement", "images", "report"],
            [
                [
                    d["target"],
                    f"`{d['folder']}`",
                    f"`{d['model']}`",
                    "exact" if d.get("exact") else "approximate",
                    _fmt(d.get("max_abs_input_diff"), ".3g"),
                    _fmt(d.get("top1_agreement")),
                    d.get("images"),
                    f"[{d['report']}]({d['report']})",
                ]
                for d in deploy
            ],
        )

    # ---- stages
    stages = body.get("stages") or []
    if stages:
        out += [
            "",
            "## Stages",
            "",
            "When each artifact was produced and how long it took. A rerun reuses every step whose inputs "
            "(sha256), config and library versions are unchanged (docs/pipeline.md).",
            "",
        ]
        out += md_table(
            ["step", "seconds", "finished (UTC)", "outputs"],
            [
                [
                    s["step"],
                    _fmt(s.get("seconds"), ".1f"),
                    s.get("finished_at"),
                    ", ".join(f"`{o}`" for o in s.get("outputs", [])),
                ]
                for s in stages
            ],
        )
    out += _skipped_lines(body.get("skipped_backends") or {}, body.get("config") or {})
    out.append("")
    return "\n".join(out)
