"""report.json: the pipeline report assembled from the stages' reports and sidecars, plus its PNG plots."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import _SECTIONS, STAGES, Variant, quantize_variants
from pipeline.context import (
    Context,
    _engine_summaries,
    _read_optional,
    tensorrt_build_status,
    tensorrt_status,
)
from pipeline.markdown import _row_name
from pipeline.runner import Layout, _jsonable
from runtime.configs import to_dict

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The report a person reads: report.json (ferdeploy-report/1, kind "pipeline") + report.md + PNGs
# --------------------------------------------------------------------------------------------
_PARITY_COLUMNS = (
    "accuracy",
    "macro_f1",
    "top1_agreement",
    "max_abs_diff",
    "mean_abs_diff",
    "p99_abs_diff",
    "kl_mean",
    "accuracy_drop_pts",
    "passed",
    "verdict",
    "bounds",
    "max_prob_diff",
    "top1_agreement_ci",
    "notes",
)
_BACKEND_ORDER = {"torch": 0, "ort": 1, "openvino": 2, "ort-cuda": 3, "ort-trt": 4, "trt": 5}


def _titles(L: Layout, variants: Sequence[Variant]) -> dict[str, tuple[int, str]]:
    """File name -> (report order, human title)."""
    out = {L.checkpoint.name: (0, "PyTorch FP32 (reference)"), L.onnx.name: (1, "ONNX FP32")}
    for i, v in enumerate(variants, 2):
        out[v.file] = (i, v.title)
    return out


def join_rows(
    bench_rows: Sequence[Mapping[str, Any]], parity_rows: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Pure: bench rows with the parity columns of the same file on the same backend (sha256, backend)."""
    index = {(r.get("sha256"), r.get("backend")): r for r in parity_rows if r.get("sha256")}
    out = []
    for r in bench_rows:
        row = dict(r)
        p = index.get((r.get("sha256"), r.get("backend")))
        if p is not None:
            for k in _PARITY_COLUMNS:
                row[k] = p.get(k)
            row["is_reference"] = bool(p.get("is_reference"))
            row["reasons"] = list(p.get("reasons") or [])
            if p.get("error") and not row.get("error"):
                row["error"] = p["error"]
        out.append(row)
    return out


def build_report(ctx: Context, trt_ok: bool, trt_reason: str) -> dict[str, Any]:
    """Everything report.json holds (plots are added by `write_plots`)."""
    from runtime.report import SCHEMA, load_report

    L = ctx.layout
    variants = quantize_variants(ctx.cfg.quantize)
    parity = load_report(L.parity_dir / "parity.json")
    bench = load_report(L.bench_dir / "bench.json")
    titles = _titles(L, variants)
    rows = join_rows(bench.get("rows", []), parity.get("rows", []))
    for r in rows:
        name = Path(r["model"]).name
        order, title = titles.get(name, (99, name))
        r["file"] = name
        r["title"] = title
        r["order"] = order
        p = L.out / name
        r["file_size_bytes"] = p.stat().st_size if p.is_file() else None
    rows.sort(key=lambda r: (r.get("batch") or 0, r["order"], _BACKEND_ORDER.get(r["backend"], 9), r["backend"]))
    parity_rows = [
        dict(
            r,
            file=Path(r["model"]).name,
            title=titles.get(Path(r["model"]).name, (99, r["label"]))[1],
            order=titles.get(Path(r["model"]).name, (99, ""))[0],
        )
        for r in parity.get("rows", [])
    ]
    parity_rows.sort(key=lambda r: (r["order"], _BACKEND_ORDER.get(r["backend"], 9)))

    ckpt = _read_optional(L.checkpoint_json)
    training = (
        {
            k: ckpt.get(k)
            for k in (
                "model",
                "dataset",
                "metrics",
                "epochs_run",
                "stop_reason",
                "train_seconds",
                "device",
                "torch_threads",
                "history",
            )
        }
        if ckpt
        else {}
    )
    exp = _read_optional(L.onnx_sidecar)
    export = (
        {
            "opset": (exp.get("exporter") or {}).get("opset"),
            "exporter": (exp.get("exporter") or {}).get("name"),
            "preflight": exp.get("preflight"),
            "parity": exp.get("parity"),
            "file_size_bytes": exp.get("file_size_bytes"),
            "export_time_s": exp.get("export_time_s"),
        }
        if exp
        else {}
    )
    quantized = []
    for v in variants:
        side = _read_optional(L.out / (v.file + ".json"))
        p = L.quantized(v)
        quantized.append(
            {
                "file": v.file,
                "title": v.title,
                "kind": v.kind,
                "method": v.method,
                "target": v.target,
                "file_size_bytes": p.stat().st_size if p.is_file() else None,
                "sidecar": {
                    k: side[k]
                    for k in (
                        "precision",
                        "method",
                        "target",
                        "calibration",
                        "settings",
                        "quantize_s",
                        "lint",
                        "runtime",
                    )
                    if k in side
                },
            }
        )
    engines = _engine_summaries(L, variants)
    stages = []
    for stamp_file in sorted(L.stamps.glob("*.json")) if L.stamps.is_dir() else []:
        s = _read_optional(stamp_file)
        if s:
            stages.append(
                {
                    "step": s.get("step"),
                    "stage": s.get("stage"),
                    "seconds": s.get("seconds"),
                    "finished_at": s.get("finished_at"),
                    "outputs": sorted(s.get("outputs") or {}),
                }
            )
    stage_order = {s.value: i for i, s in enumerate(STAGES)}
    stages.sort(key=lambda s: (stage_order.get(s["stage"], 99), s.get("finished_at") or "", s["step"] or ""))
    failing = list(parity.get("failing", [])) + list(bench.get("failing", []))
    tensorrt = {
        "available": trt_ok,
        "reason": trt_reason,
        "reasons": list(tensorrt_status(ctx.cfg.tensorrt)[2]),
        "engines": engines,
        "built": bool(engines),
    }
    if not engines:
        tensorrt["build_reason"] = tensorrt_build_status(ctx.cfg.tensorrt)[1]
    if not trt_ok:
        tensorrt["how_to"] = (
            "on a machine with TensorRT and an NVIDIA GPU that runs the engines (a Jetson: docs/jetson.md; "
            "RTX engines: an RTX-class GPU of their target compute capabilities) run "
            f"`python -m runtime pipeline --config {ctx.cfg.source or 'CONFIG'} --stages tensorrt,parity,bench,report`"
        )
    return {
        "schema": SCHEMA,
        "kind": "pipeline",
        "measurement": _measurement(ctx, parity, bench, quantized),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ctx.command,
        "config": {
            "source": ctx.cfg.source,
            "fit": _jsonable(ctx.cfg.fit),
            **{name: to_dict(getattr(ctx.cfg, name)) for name in _SECTIONS},
        },
        "passed": bool(parity.get("passed")) and bool(bench.get("passed")),
        "failing": failing,
        "dataset": parity.get("dataset", ""),
        "reference": parity.get("reference", {}),
        "class_names": parity.get("class_names", []),
        "rows": rows,
        "parity_rows": parity_rows,
        "training": training,
        "export": export,
        "quantized": quantized,
        "tensorrt": tensorrt,
        "stages": stages,
        "environment": bench.get("environment", {}),
        "skipped_backends": {**parity.get("skipped", {}), **bench.get("skipped", {})},
        "reports": {"parity": "parity/parity.md", "bench": "bench/bench.md"},
        "deploy": _deploy_summaries(ctx),
    }


def _deploy_summaries(ctx: Context) -> list[dict[str, Any]]:
    """One line of facts per deploy target that has a report (the deploy: section)."""
    d = ctx.cfg.deploy
    if not d.targets:
        return []
    from export.deploy import pipeline_report_path

    out = []
    for target in d.targets:
        rep = pipeline_report_path(ctx.layout.out / d.out, target, d.options.get("name"))
        body = _read_optional(rep)
        if not body:
            continue
        sets = [s for s in (body.get("emulation") or {}).get("sets", []) if s.get("counts_for_verdict")]
        out.append(
            {
                "target": target,
                "folder": ctx.layout.rel(rep.parent),
                "report": ctx.layout.rel(rep.with_suffix(".md")),
                "exact": body.get("exact"),
                "model": Path(str((body.get("model") or {}).get("path", ""))).name,  # export/deploy/report.py
                "max_abs_input_diff": max((s.get("max_abs_input_diff") or 0.0 for s in sets), default=None),
                "top1_agreement": min(
                    (s.get("top1_agreement") for s in sets if s.get("top1_agreement") is not None), default=None
                ),
                "images": sum(int(s.get("images") or 0) for s in sets),
            }
        )
    return out


def _git_commit() -> str | None:
    """The project's commit (with ``-dirty`` when the work tree has changes), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def _measurement(
    ctx: Context, parity: Mapping[str, Any], bench: Mapping[str, Any], quantized: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """How the report's numbers were measured: threads per backend, batches, data, calibration, commit."""
    bcfg = bench.get("config") or {}
    threads: dict[str, Any] = {}
    for d in parity.get("details", []):
        info = d.get("backend_info") or {}
        if info.get("threads") is not None:
            threads.setdefault(d.get("backend"), info.get("threads"))
    for backend in sorted({r.get("backend") for r in bench.get("rows", []) if r.get("backend")}):
        if backend in ("ort", "torch", "openvino") and bcfg.get("threads") is not None:
            threads[backend] = bcfg.get("threads")  # bench's explicit setting is what the latency used
    calibration = {
        q["file"]: (q.get("sidecar") or {}).get("calibration")
        for q in quantized
        if (q.get("sidecar") or {}).get("calibration")
    }
    return {
        "bench_threads": bcfg.get("threads"),
        "threads_per_backend": threads,
        "batches": bcfg.get("batches"),
        "seconds_per_measurement": bcfg.get("seconds"),
        "parity_set": parity.get("dataset"),
        "parity_count": (parity.get("reference") or {}).get("count"),
        "calibration": calibration,
        "commit": _git_commit(),
    }


def write_plots(body: Mapping[str, Any], L: Layout) -> dict[str, str]:
    """The report's own PNGs (latency vs accuracy per batch, latency bars, training curve); name -> file.

    matplotlib is optional (the Jetson side may lack it): without it the report has tables only.
    """
    try:
        from runtime.report import ReportRow, _pyplot, plot_pareto

        _pyplot()
    except ImportError as exc:
        log.warning("matplotlib is not installed (%s): report plots skipped; pip install '.[dev]'", exc)
        return {}
    names = {f.name for f in dataclasses.fields(ReportRow)}
    rows = [
        ReportRow(**{k: (tuple(v) if k == "reasons" else v) for k, v in r.items() if k in names}) for r in body["rows"]
    ]
    plots: dict[str, str] = {}
    for batch in sorted({r.batch for r in rows if r.batch is not None}):
        path = plot_pareto(rows, L.out / f"report.pareto.b{batch}.png", batch=batch)
        if path is not None:
            plots[f"pareto_b{batch}"] = path.name
    path = plot_latency_bars(body["rows"], L.out / "report.latency.png")
    if path is not None:
        plots["latency"] = path.name
    path = plot_training(body.get("training") or {}, L.out / "report.training.png")
    if path is not None:
        plots["training"] = path.name
    for name, rel in (
        ("confusion", "parity/parity.confusion.png"),
        ("latency_distributions", "bench/bench.latency.png"),
    ):
        if (L.out / rel).is_file():
            plots[name] = rel
    return plots


def plot_latency_bars(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per model: p50 per call with its 95% CI, one panel per batch size (horizontal bars)."""
    from runtime.report import _pyplot, _save

    measured = [r for r in rows if r.get("latency_ms") and r.get("batch") is not None]
    if not measured:
        return None
    batches = sorted({r["batch"] for r in measured})
    plt = _pyplot()
    names = list(dict.fromkeys(_row_name(r) for r in measured))
    fig, axes = plt.subplots(
        1, len(batches), figsize=(5.2 * len(batches) + 1.5, 0.45 * len(names) + 1.6), squeeze=False
    )
    for ax, batch in zip(axes[0], batches):
        by = {_row_name(r): r for r in measured if r["batch"] == batch}
        ys, vals, lo, hi, colors = [], [], [], [], []
        for i, n in enumerate(names):
            r = by.get(n)
            if r is None:
                continue
            lat = r["latency_ms"]
            ci = lat.get("p50_ci") or [lat["p50"], lat["p50"]]
            ys.append(i)
            vals.append(lat["p50"])
            lo.append(max(0.0, lat["p50"] - ci[0]))
            hi.append(max(0.0, ci[1] - lat["p50"]))
            prec = str(r.get("precision") or "").split(" ")[0]  # "fp32 (ran bf16)" -> fp32
            colors.append({"fp32": "#4c72b0", "fp16": "#55a868", "int8": "#c44e52"}.get(prec, "grey"))
        ax.barh(ys, vals, xerr=[lo, hi], color=colors, capsize=3)
        for y, v, up, r in zip(ys, vals, hi, [by[names[i]] for i in ys]):
            ips = r.get("throughput_ips")
            ax.annotate(
                f"{v:.2f} ms" + (f"  {ips:.0f} img/s" if ips else ""),
                (v + up, y),
                xytext=(5, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
            )
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        # Log scale: the PyTorch reference and INT8 on a CPU can differ by 100x from the fastest row.
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 2, max(v + u for v, u in zip(vals, hi)) * 8)
        ax.set_xlabel("p50 latency per call (ms, log scale; bars: 95% CI)")
        ax.set_title(f"batch {batch}")
    fig.suptitle("Latency per model and backend (blue FP32, green FP16, red INT8)")
    return _save(fig, plt, path)


def plot_training(training: Mapping[str, Any], path: Path) -> Path | None:
    """Training and validation loss, and validation accuracy, per epoch."""
    from runtime.report import _pyplot, _save

    hist = training.get("history") or []
    if not hist:
        return None
    plt = _pyplot()
    ep = [h["epoch"] for h in hist]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [h["train_loss"] for h in hist], "o-", label="train loss")
    a1.plot(ep, [h["val_loss"] for h in hist], "s-", label="val loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.legend(fontsize=8)
    a2.plot(ep, [100 * h["val_accuracy"] for h in hist], "o-", label="accuracy")
    a2.plot(ep, [100 * h["val_macro_f1"] for h in hist], "s--", label="macro-F1")
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation (%)")
    a2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Training (PyTorch)")
    return _save(fig, plt, path)
