"""The plan and the stage adapters: each step is a library call of its stage's own API.

Stages, in order (each a list of *steps*; a step is the unit that is skipped or rerun)::

    train      fit: section          -> checkpoint.pt + checkpoint.json
    export     checkpoint.pt         -> model.onnx (+ sidecar, preflight report)
    quantize   model.onnx            -> model.nncf.int8.onnx, model.ort.int8.onnx   (TensorRT Q/DQ form)
                                        model.fp16.onnx
                                        model.ort.cpu.int8.onnx (x86 onnxruntime form)
    tensorrt   the TensorRT-ready ONNX files -> *.engine (+ sidecar and per-layer precision)
    parity     checkpoint.pt + every model   -> parity/parity.{json,md,png}
    bench      every model                   -> bench/bench.{json,md,png}
    report     the above                     -> report.md, report.json, report.*.png
    deploy     (optional) model -> Triton model repository / DeepStream config

Importing this module does not import torch: stages import what they need when they run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import (
    CPU_BACKEND_INSTALL,
    Stage,
    StageError,
    Variant,
    fp16_config,
    int8_config,
    quantize_variants,
)
from pipeline.context import (
    Context,
    _dataset_fingerprint,
    _engine_files,
    _engines_wanted,
    _machine,
    _torch_available,
    tensorrt_build_status,
    tensorrt_status,
)
from pipeline.markdown import render_report
from pipeline.report import build_report, write_plots
from pipeline.runner import Layout, Step, _jsonable
from runtime.artifacts import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    sha256_file,
)
from runtime.configs import to_dict
from runtime.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)


def build_plan(ctx: Context, stages: Sequence[Stage]) -> tuple[list[Step], dict[str, str]]:
    """The steps of ``stages`` (in order) and the steps skipped here with the reason."""
    cfg, L = ctx.cfg, ctx.layout
    variants = quantize_variants(cfg.quantize)
    steps: list[Step] = []
    skipped: dict[str, str] = {}
    trt_ok, trt_reason, _ = tensorrt_status(cfg.tensorrt)
    engines_wanted = _engines_wanted(L, variants)
    models = [L.onnx] + [L.quantized(v) for v in variants]
    src = cfg.model_source
    if Stage.TRAIN in stages and src.kind:
        skipped["train"] = f"source: {src.kind} {src.path} (the pipeline starts from the given model)"
    elif Stage.TRAIN in stages:
        if not cfg.fit:
            raise ConfigError(f"{cfg.source}: the train stage needs a `fit:` section (or leave train out of --stages)")
        fit_dict = to_dict(ctx.fit_config)
        fit_dict.pop("out", None)  # where it is written does not change what is trained
        steps.append(
            Step(
                "train",
                Stage.TRAIN,
                lambda: run_train(ctx),
                (),
                (L.checkpoint, L.checkpoint_json),
                fit_dict,
                ("torch", "numpy", "cv2"),
                {"dataset": _dataset_fingerprint(fit_dict.get("data", {}))},
            )
        )
    if Stage.EXPORT in stages and src.kind:
        given = [Path(p) for p in (src.path if src.kind != "module" else None, src.contract, src.weights) if p]
        outs = (
            (L.checkpoint, L.onnx, L.onnx_sidecar, L.preflight)
            if src.kind == "checkpoint"
            else (L.onnx, L.onnx_sidecar, L.preflight)
        )
        steps.append(
            Step(
                "export",
                Stage.EXPORT,
                lambda: run_source_export(ctx),
                tuple(given),
                outs,
                {**to_dict(cfg.export), "source": to_dict(src)},
                ("torch", "onnx", "onnxslim", "onnxruntime"),
            )
        )
    elif Stage.EXPORT in stages:
        steps.append(
            Step(
                "export",
                Stage.EXPORT,
                lambda: run_export(ctx),
                (L.checkpoint,),
                (L.onnx, L.onnx_sidecar, L.preflight),
                to_dict(cfg.export),
                ("torch", "onnx", "onnxslim", "onnxruntime"),
            )
        )
    if Stage.QUANTIZE in stages:
        for v in variants:
            qcfg = to_dict(quantize_config(ctx, v))
            for path_key in ("onnx", "out"):  # where files live does not change what is made
                qcfg.pop(path_key, None)
            steps.append(
                Step(
                    f"quantize.{v.name}",
                    Stage.QUANTIZE,
                    lambda v=v: run_quantize(ctx, v),
                    (L.onnx,),
                    (L.quantized(v),),
                    {"kind": v.kind, **qcfg},
                    ("onnx", "onnxruntime", "nncf", "numpy"),
                )
            )
    if Stage.TENSORRT in stages:
        # TensorRT for RTX builds without a GPU; the engines' parity/latency rows need one (trt_ok).
        build_ok, build_reason = (True, "") if trt_ok else tensorrt_build_status(cfg.tensorrt)
        if build_ok:
            for onnx, precision in engines_wanted:
                steps.append(
                    Step(
                        f"tensorrt.{onnx.name}",
                        Stage.TENSORRT,
                        lambda o=onnx, p=precision: run_tensorrt(ctx, o, p),
                        (onnx,),
                        stamped=False,
                    )
                )
        else:
            skipped["tensorrt"] = build_reason
    # With TensorRT here, parity and bench add `trt` rows; the trt backend reuses the engines the
    # tensorrt stage built (same build defaults) or builds them through the same cache.
    use_trt = trt_ok
    reference = L.checkpoint if _torch_available() and src.has_checkpoint else L.onnx
    if Stage.PARITY in stages:
        steps.append(
            Step(
                "parity",
                Stage.PARITY,
                lambda: run_parity(ctx, reference, use_trt),
                (reference, *([] if reference == L.onnx else [L.onnx]), *models[1:]),
                (L.parity_dir / "parity.json", L.parity_dir / "parity.md"),
                {
                    **to_dict(cfg.parity),
                    "reference": L.rel(reference),
                    "tensorrt": use_trt,
                    **({"data": src.data} if src.data else {}),
                },
                ("torch", "onnxruntime", "numpy", "cv2", *_extra_libraries(cfg.parity.cpu_backends)),
                {"tensorrt": _trt_identity() if use_trt else None},
            )
        )
    if Stage.BENCH in stages:
        bench_inputs = (
            [L.checkpoint] if cfg.bench.torch and _torch_available() and src.has_checkpoint else []
        ) + models
        steps.append(
            Step(
                "bench",
                Stage.BENCH,
                lambda: run_bench(ctx, use_trt),
                tuple(bench_inputs),
                (L.bench_dir / "bench.json", L.bench_dir / "bench.md"),
                {**to_dict(cfg.bench), "tensorrt": use_trt},
                ("torch", "onnxruntime", "numpy", *_extra_libraries(cfg.bench.cpu_backends)),
                {"machine": _machine(), "tensorrt": _trt_identity() if use_trt else None},
            )
        )
    deploy_reports: list[Path] = []
    if Stage.DEPLOY in stages and cfg.deploy.targets:
        from export.deploy import pipeline_report_path

        d = cfg.deploy
        for target in d.targets:
            rep = pipeline_report_path(L.out / d.out, target, d.options.get("name"))
            deploy_reports.append(rep)
            steps.append(
                Step(
                    f"deploy.{target}",
                    Stage.DEPLOY,
                    lambda t=target: run_deploy(ctx, t),
                    (L.out / d.model,),
                    (rep,),
                    {**to_dict(d), "target": target},
                    ("onnx", "onnxruntime", "numpy", "cv2"),
                )
            )
    if Stage.REPORT in stages:
        report_inputs = [L.parity_dir / "parity.json", L.bench_dir / "bench.json", *deploy_reports]
        steps.append(
            Step(
                "report",
                Stage.REPORT,
                lambda: run_report(ctx, trt_ok, trt_reason),
                tuple(report_inputs),
                (L.report_md, L.report_json),
                {"tensorrt": trt_reason or "available", "variants": [v.file for v in variants]},
                ("matplotlib",),
                # The renderer (this module, runtime/report.py) is in STAGE_CODE[REPORT].
                lambda: {"context": _report_context_hash(L, variants)},
            )
        )
    return steps, skipped


def _extra_libraries(cpu_backends: Sequence[str]) -> tuple[str, ...]:
    """Libraries of the extra CPU runtimes whose version goes into the stamp (installing one reruns the stage)."""
    return tuple(name for name in cpu_backends if name == "openvino")


def _trt_identity() -> dict[str, Any] | None:
    try:
        from runtime.trt.build import current_gpu
        from runtime.trt.compat import Trt

        gpu = current_gpu()
        trt = Trt.load()
        return {"tensorrt": trt.version, "flavour": trt.flavour.value, "gpu": _jsonable(gpu)}
    except Exception as exc:  # noqa: BLE001 - identity is best effort; the engine cache checks again
        return {"error": f"{type(exc).__name__}: {exc}"}


def _report_context_hash(L: Layout, variants: Sequence[Variant]) -> dict[str, str | None]:
    """Hashes of the small files the report quotes (training metrics, export and quantize sidecars)."""
    files = [L.checkpoint_json, L.onnx_sidecar] + [L.out / (v.file + ".json") for v in variants]
    from runtime.artifacts import sidecar_path

    files += [sidecar_path(engine) for engine, _onnx, _p in _engine_files(L, variants)]  # rebuilt engines re-render
    return {L.rel(p): (sha256_file(p) if p.is_file() else None) for p in files}


# --------------------------------------------------------------------------------------------
# Stage functions (module-level so tests can replace them)
# --------------------------------------------------------------------------------------------
def run_train(ctx: Context) -> dict[str, Any]:
    """Train with `train.loop.fit` into the output folder; resume an interrupted run of the same config."""
    from train.loop import STATE_FILE, fit

    out = ctx.layout.out
    state = out / STATE_FILE
    cfg = ctx.fit_config
    if state.exists() and Stage.TRAIN in ctx.force:
        state.unlink()
    if state.exists():
        try:
            result = fit(cfg, out=out, resume=True, progress=ctx.progress)
        except ConfigError as exc:
            # Training state from another config (the config changed): start over.
            log.info("training state %s is from another config (%s); training from scratch", state, exc)
            state.unlink()
            result = fit(cfg, out=out, resume=False, progress=ctx.progress)
    else:
        result = fit(cfg, out=out, resume=False, progress=ctx.progress)
    m = result.metrics
    log.info(
        "trained %s: val accuracy %.4f, macro-F1 %.4f, %d epochs, %.0f s",
        result.checkpoint,
        m["val_accuracy"],
        m["val_macro_f1"],
        result.epochs_run,
        result.train_seconds,
    )
    return {
        "val_accuracy": m["val_accuracy"],
        "val_macro_f1": m["val_macro_f1"],
        "epochs": result.epochs_run,
        "train_seconds": result.train_seconds,
    }


def run_export(ctx: Context) -> dict[str, Any]:
    """`export.exporter.export_onnx` with the ``export:`` section (preflight included)."""
    from export.config import ExportConfig
    from export.exporter import export_onnx

    e = ctx.cfg.export
    cfg = ExportConfig(
        checkpoint=ctx.layout.checkpoint,
        out=ctx.layout.onnx,
        opset=e.opset,
        exporter=e.exporter,
        slim=e.slim,
        parity_batches=e.parity_batches,
        parity_atol=e.parity_atol,
    )
    res = export_onnx(cfg, force=Stage.EXPORT in ctx.force)
    return {
        "exporter": res.exporter if hasattr(res, "exporter") else "",
        "skipped_by_export": res.skipped,
        "size_bytes": ctx.layout.onnx.stat().st_size,
    }


def run_source_export(ctx: Context) -> dict[str, Any]:
    """The export stage of a ``source:`` model: copy + export a checkpoint, export a module, or adopt an ONNX."""
    from export.config import ExportConfig

    src, L, e = ctx.cfg.model_source, ctx.layout, ctx.cfg.export
    if src.kind == "onnx":
        from export.adopt import adopt_onnx

        res = adopt_onnx(src.path, src.contract, L.onnx)
        return {"adopted": src.path, "batch": res.batch_note, "size_bytes": L.onnx.stat().st_size}
    cfg = ExportConfig(
        checkpoint=Path(src.weights or src.path) if src.kind == "module" else L.checkpoint,
        out=L.onnx,
        opset=e.opset,
        exporter=e.exporter,
        slim=e.slim,
        parity_batches=e.parity_batches,
        parity_atol=e.parity_atol,
    )
    if src.kind == "module":
        from export.exporter import export_module

        res = export_module(src.path, src.contract, cfg, weights=src.weights)
    else:  # checkpoint: a copy in the run folder is the PyTorch reference of parity and bench
        import shutil

        from export.exporter import export_onnx
        from runtime.artifacts import atomic_write

        if not Path(src.path).is_file():
            raise StageError(f"export: source.path {src.path} not found; point it at the checkpoint.pt to deploy")
        atomic_write(L.checkpoint, lambda p: shutil.copyfile(src.path, p))
        res = export_onnx(cfg, force=True)
    return {"exporter": res.exporter, "source": src.path, "size_bytes": L.onnx.stat().st_size}


def quantize_config(ctx: Context, v: Variant) -> Any:
    """The quantize stage's own config (`Int8Config` / `Fp16Config`) of one variant."""
    L, q = ctx.layout, ctx.cfg.quantize
    data = ctx.cfg.model_source.data or None  # a source: section's images
    if v.kind == "fp16":
        return fp16_config(q, L.onnx, L.quantized(v), data)
    return int8_config(q, L.onnx, L.quantized(v), str(v.method), str(v.target), data)


def run_quantize(ctx: Context, v: Variant) -> dict[str, Any]:
    """One quantize stage call (`quantize.orchestrate.run_int8` / `run_fp16`): its config in, its result out."""
    try:
        from quantize.orchestrate import run_fp16, run_int8
    except ImportError as exc:
        raise StageError(
            f"quantize.{v.name}: the quantize package cannot be imported ({exc}); it needs the quantize extra: "
            "pip install '.[quantize]'"
        ) from exc
    qcfg = quantize_config(ctx, v)
    force = Stage.QUANTIZE in ctx.force
    try:
        result = run_fp16(qcfg, force=force) if v.kind == "fp16" else run_int8(qcfg, force=force)
    except PipelineError as exc:
        raise StageError(f"quantize.{v.name}: {exc}") from exc
    if result.report is not None:
        log.info("wrote %s, sidecar %s, report %s", result.out, result.sidecar, result.report_paths[1])
        if not result.report.parity.passed:
            log.warning("quantize.%s parity: %s", v.name, "; ".join(result.report.parity.reasons))
    info: dict[str, Any] = {
        "config": to_dict(qcfg),
        "size_bytes": ctx.layout.quantized(v).stat().st_size,
        "skipped": bool(getattr(result, "skipped", False)),
    }
    side = ctx.layout.out / (v.file + ".json")
    if side.is_file():
        try:
            body = read_json(side)
            info.update({k: body[k] for k in ("precision", "method", "target") if k in body})
        except PipelineError:
            pass
    return info


def run_tensorrt(ctx: Context, onnx: Path, precision: str) -> dict[str, Any]:
    """Build (or reuse) one engine with the same defaults the ``trt`` backend uses, so parity and bench reuse it."""
    from runtime.trt.build import BuildConfig, build_engine

    t = ctx.cfg.tensorrt
    cache = ctx.layout.out / t.timing_cache if t.timing_cache else None
    res = build_engine(
        BuildConfig(
            onnx=onnx,
            precision=precision,
            batch=t.batch,
            workspace_mib=t.workspace_mib,
            timing_cache=cache,
            force=Stage.TENSORRT in ctx.force,
            flavour=t.flavour,
            targets=t.compute_capabilities,
        )
    )
    log.info("%s", res.summary())
    return {
        "engine": ctx.layout.rel(res.engine),
        "reused": res.reused,
        "reason": res.reason,
        "build_s": res.build_s,
        "typing": res.typing,
        "flavour": res.flavour,
        "targets": list(res.targets),
    }


def cpu_backends_here(names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The listed CPU runtimes usable on this machine, and the others -> why not and how to install."""
    from runtime.backends import available_backends

    reasons = available_backends(tuple(names))
    skipped = {}
    for name in names:
        why = reasons.get(name, "")
        if why:
            fix = CPU_BACKEND_INSTALL.get(name, "")
            skipped[name] = why if (not fix or fix in why) else f"{why}; {fix}"
            log.warning("%s rows skipped: %s", name, skipped[name])
    return tuple(n for n in names if n not in skipped), skipped


def _groups(
    ctx: Context, use_trt: bool, *, torch_ref: bool, cpu_backends: Sequence[str] = ("ort",)
) -> list[tuple[list[Path], tuple[str, ...]]]:
    """(files, backends) groups. The x86 forms (``model.onnx`` and the cpu-target INT8 files) run on
    each CPU runtime in ``cpu_backends`` (the caller keeps only those usable here); the files made for
    TensorRT (its INT8 form, FP16) on onnxruntime, the reference CPU runtime, and on ``trt`` when it
    runs here. The cpu-target INT8 form never runs on TensorRT (asymmetric UINT8), and the TensorRT
    forms not on OpenVINO: it runs their Q/DQ pairs its own way, and the demo's lost 1.6-2.3 points of
    agreement there (BENCHMARKS.md) - a combination nobody deploys, reported as a failure."""
    L = ctx.layout
    variants = quantize_variants(ctx.cfg.quantize)
    cpu = tuple(cpu_backends)
    trt = ("trt",) if use_trt else ()
    for_trt = [L.quantized(v) for v in variants if v.tensorrt_ready]
    cpu_only = [L.quantized(v) for v in variants if not v.tensorrt_ready]
    groups: list[tuple[list[Path], tuple[str, ...]]] = []
    if torch_ref:
        groups.append(([L.checkpoint], ("torch",)))
    groups.append(([L.onnx], cpu + trt))
    if for_trt:
        groups.append((for_trt, tuple(b for b in cpu if b == "ort") + trt))
    if cpu_only and cpu:
        groups.append((cpu_only, cpu))
    return [(files, backends) for files, backends in groups if backends]


def parity_jobs(
    ctx: Context, reference: Path, use_trt: bool, cpu_backends: Sequence[str]
) -> list[tuple[list[Path], tuple[str, ...]]]:
    """(candidates, backends) of each parity call: every group without the reference file, plus the
    reference file itself on the runtimes other than its own (OpenVINO reading ``model.onnx`` when
    ``model.onnx`` on onnxruntime is the reference)."""
    ref_backend = "ort" if reference.suffix == ".onnx" else "torch"
    jobs: list[tuple[list[Path], tuple[str, ...]]] = []
    for files, backends in _groups(ctx, use_trt, torch_ref=False, cpu_backends=cpu_backends):
        cands = [f for f in files if f != reference]
        if cands:
            jobs.append((cands, backends))
        others = tuple(b for b in backends if b != ref_backend)
        if reference in files and others:
            jobs.append(([reference], others))
    return jobs


def run_parity(ctx: Context, reference: Path, use_trt: bool) -> dict[str, Any]:
    """Parity matrix of every model against the reference; parity/parity.{json,md,png}."""
    from runtime.env import capture_environment
    from runtime.parity import (
        ParityConfig,
        ParityRun,
        describe_model,
        load_labelled_set,
    )
    from runtime.parity import run_parity as _parity
    from runtime.report import parity_report, write_report

    p = ctx.cfg.parity
    ref = describe_model(reference)
    labelled = load_labelled_set(
        ref.dataset, ref.class_names, split=p.split, limit=p.limit, data=ctx.cfg.model_source.data
    )
    cpu, not_here = cpu_backends_here(p.cpu_backends)
    runs: list[ParityRun] = []
    for cands, backends in parity_jobs(ctx, reference, use_trt, cpu):
        cfg = ParityConfig(
            reference=str(reference),
            candidates=tuple(str(f) for f in cands),
            split=p.split,
            backends=backends,
            batch_size=p.batch_size,
            threads=p.threads,
            limit=p.limit,
        )
        runs.append(_parity(cfg, labelled=labelled, progress=ctx.progress))
    if not runs:
        raise StageError(
            f"parity: nothing to compare with the reference {reference.name}: no quantized model and no other "
            f"runtime (parity.cpu_backends {list(p.cpu_backends)}); add a quantize: method or [ort, openvino]"
        )
    # One reference row, then every group's candidate rows; the runtimes skipped here with their reasons.
    run = dataclasses.replace(
        runs[0],
        rows=runs[0].rows + tuple(r for x in runs[1:] for r in x.rows if not r.is_reference),
        skipped={**not_here, **{k: v for x in runs for k, v in x.skipped.items()}},
        elapsed_s=sum(x.elapsed_s for x in runs),
    )
    report = parity_report(
        run, command=ctx.command, environment=capture_environment(), config={**to_dict(p), "reference": str(reference)}
    )
    write_report(report, ctx.layout.parity_dir, plots=True)
    failing = [r.name for r in run.failing]
    for r in run.failing:
        why = "; ".join(r.result.reasons) if r.result else r.error
        log.warning("parity FAIL %s: %s", r.name, why)
    return {"passed": report.passed, "rows": len(run.rows), "failing": failing, "count": run.count}


def run_bench(ctx: Context, use_trt: bool) -> dict[str, Any]:
    """Latency of every model × backend × batch; bench/bench.{json,md,png}."""
    from runtime.bench import BenchConfig, BenchRun, spread_of
    from runtime.bench import run_bench as _bench
    from runtime.env import capture_environment
    from runtime.report import bench_report, write_report

    b = ctx.cfg.bench
    torch_ref = b.torch and _torch_available() and ctx.cfg.model_source.has_checkpoint
    cpu, not_here = cpu_backends_here(b.cpu_backends)
    runs: list[BenchRun] = []
    for files, backends in _groups(ctx, use_trt, torch_ref=torch_ref, cpu_backends=cpu):
        cfg = BenchConfig(
            models=tuple(str(f) for f in files),
            batches=b.batches,
            backends=backends,
            seconds=b.seconds,
            iterations=b.iterations,
            warmup_s=b.warmup_s,
            warmup_iterations=b.warmup_iterations,
            threads=b.threads,
            overhead_batches=b.overhead_batches,
            repeat=b.repeat,
            roofline=b.roofline,
        )
        runs.append(_bench(cfg, progress=ctx.progress))
    rows = tuple(r for x in runs for r in x.rows)
    run = BenchRun(
        rows=rows,
        overhead=tuple(o for x in runs for o in x.overhead),
        spread=spread_of(rows),
        config=dataclasses.replace(runs[0].config, models=tuple(m for x in runs for m in x.config.models)),
        skipped={**not_here, **{k: v for x in runs for k, v in x.skipped.items()}},
        elapsed_s=sum(x.elapsed_s for x in runs),
    )
    report = bench_report(run, command=ctx.command, environment=capture_environment(), config=to_dict(b))
    write_report(report, ctx.layout.bench_dir, plots=True)
    return {"passed": report.passed, "rows": len(report.rows), "failing": list(report.failing)}


def run_deploy(ctx: Context, target: str) -> dict[str, Any]:
    """One deploy target (`export.deploy.pipeline_step`): a Triton repository or a DeepStream config, checked."""
    from export.deploy import pipeline_step

    d = ctx.cfg.deploy
    return pipeline_step(ctx.layout.out / d.model, ctx.layout.out / d.out, target, d.options)


def run_report(ctx: Context, trt_ok: bool, trt_reason: str) -> dict[str, Any]:
    """report.md + report.json + plots from the parity and bench reports (see `build_report`)."""
    body = build_report(ctx, trt_ok, trt_reason)
    L = ctx.layout
    body["plots"] = write_plots(body, L)
    atomic_write_json(L.report_json, body)
    atomic_write_text(L.report_md, render_report(body))
    return {"rows": len(body["rows"]), "passed": body["passed"], "plots": sorted(body["plots"].values())}
