"""The quantize stage: `run_int8` and `run_fp16`, the API its CLI and the pipeline call.

`run_int8` does issue 5 end to end: contract -> calibration set (+ manifest) -> ignored scope
(``auto``: measured by `auto_scope`) -> NNCF or onnxruntime quantization (`quantize.methods`,
with the target's rewrites of `quantize.targets`) -> contract copied -> Q/DQ lint (must pass for
the TensorRT form) -> parity against FP32 on the validation split (`runtime.compare.compare_outputs`)
-> onnxruntime CPU latency FP32 vs INT8 side by side (`compare_latency`, interleaved rounds) ->
atomic writes of the model, the manifest, the sidecar and the report (`quantize.report`, JSON +
Markdown). `run_fp16` does the same for FP16 (`quantize.fp16`).

Outputs beside ``RUN/model.int8.onnx``: ``model.int8.onnx.json`` (sidecar),
``model.int8.calibration.json`` (manifest), ``model.int8.report.json`` and ``.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantize.calibration import (
    LabelledSet,
    build_calibration_set,
    build_holdout_set,
    build_validation_set,
    with_reference_labels,
    write_manifest,
)
from quantize.config import Fp16Config, Int8Config, LatencyConfig, Method, Target
from quantize.report import LatencyComparison, LatencyRow, QuantReport, report_paths, write_report
from runtime.artifacts import library_versions, read_sidecar, sha256_file, sidecar_path, write_sidecar
from runtime.backends.ort import env_threads, make_session, predict
from runtime.compare import Tolerance, compare_outputs, tolerance_for
from runtime.configs import to_dict
from runtime.contract import read_contract
from runtime.errors import ArtifactError
from runtime.latency import interleaved_rounds, summarize, tile_batch
from runtime.qdq_lint import GROUPS, flatten_scope, lint_qdq, resolve_ignore, sensitive_scopes

log = logging.getLogger(__name__)

KEY_PRECISION = "ferdeploy.precision"  # metadata_props: fp32 | fp16 | int8
KEY_QUANTIZATION = "ferdeploy.quantization"  # metadata_props: JSON {method, target, form}


# --- latency -------------------------------------------------------------------------------------


def compare_latency(
    reference,
    candidate,
    inputs: np.ndarray,
    cfg: LatencyConfig,
    *,
    input_name: str = "input",
    progress: Callable[[str], None] | None = None,
) -> LatencyComparison:
    """Time two models on onnxruntime CPU in alternating rounds (never across runs).

    Args:
        reference, candidate: Paths or ModelProtos.
        inputs: Preprocessed samples; tiled to each batch size.
        cfg: Rounds, seconds, batches, threads.
        input_name: Graph input name.
    """
    threads = cfg.threads or env_threads()
    sessions = {
        "reference": make_session(reference, threads=threads),
        "candidate": make_session(candidate, threads=threads),
    }
    rows = []
    for batch in cfg.batches:
        x = tile_batch(inputs, batch)
        per_round = interleaved_rounds(
            {k: (lambda sess=sess, x=x: sess.run(None, {input_name: x})) for k, sess in sessions.items()},
            batch=batch,
            rounds=cfg.rounds,
            seconds_per_round=cfg.seconds_per_round,
            min_iterations=cfg.min_iterations_per_round,
            warmup_s=cfg.warmup_s,
        )
        stats = {
            k: summarize(
                [ms for st in sts for ms in st.samples_ms],
                batch=batch,
                warmup_iterations=sts[0].warmup_iterations,
                warmup_s=sts[0].warmup_s,
            )
            for k, sts in per_round.items()
        }
        row = LatencyRow(batch, stats["reference"], stats["candidate"])
        if progress:
            progress(
                f"batch {batch}: FP32 p50 {row.reference.p50_ms:.3f} ms, candidate {row.candidate.p50_ms:.3f} ms ({row.speedup_p50:.2f}×)"
            )
        rows.append(row)
    return LatencyComparison(tuple(rows), threads, cfg.rounds)


# --- shared helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    """What a run wrote (or found up to date)."""

    out: Path
    sidecar: Path
    report: QuantReport | None
    report_paths: tuple[Path, Path] | None
    manifest: Path | None = None
    skipped: bool = False


def name_nodes(model) -> int:
    """Give every unnamed node a unique name (ignored scopes and NNCF address nodes by name)."""
    seen = {n.name for n in model.graph.node if n.name}
    count = 0
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
            count += 1
    return count


def copy_contract(src, dst, extra: Mapping[str, str]) -> None:
    """Replace ``dst``'s metadata_props with ``src``'s (the deployment contract) plus ``extra``."""
    props = {p.key: p.value for p in src.metadata_props}
    props.update(extra)
    del dst.metadata_props[:]
    for k, v in props.items():
        entry = dst.metadata_props.add()
        entry.key, entry.value = k, v


def _fingerprint(cfg, input_sha: str) -> dict[str, Any]:
    return {"input_sha256": input_sha, "config": to_dict(cfg), "versions": library_versions()}


def _up_to_date(out: Path, fingerprint: Mapping[str, Any]) -> dict[str, Any] | None:
    if not out.is_file() or not sidecar_path(out).is_file():
        return None
    try:
        side = read_sidecar(out)
    except ArtifactError:
        return None
    if side.get("fingerprint") != json.loads(json.dumps(fingerprint, default=str)):
        return None
    if side.get("artifact_sha256") != sha256_file(out):
        return None
    return side


def _save_model(model, out: Path, *, stage: str, target: str) -> None:
    """Write through the artifact gate (onnx.checker full check + structural preflight)."""
    from export.gate import write_onnx

    write_onnx(model, out, stage=stage, target=target)


def _fidelity(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    return {
        "top1_agreement": float((ref.argmax(1) == out.argmax(1)).mean()),
        "mean_abs_diff": float(np.abs(out - ref).mean()),
        "max_abs_diff": float(np.abs(out - ref).max()),
    }


# --- INT8 ----------------------------------------------------------------------------------------


def _quantizer(cfg: Int8Config, model, calib: np.ndarray, input_name: str):
    """``fn(ignored, max_drop_pts=None, validation=None) -> (ModelProto, info)`` for the method."""
    from quantize.methods.nncf_ptq import quantize_nncf
    from quantize.methods.ort_ptq import quantize_ort

    def run(ignored: Sequence[str], max_drop_pts: float | None = None, validation=None):
        if cfg.method is Method.NNCF:
            return quantize_nncf(
                model,
                calib,
                target=cfg.target.value,
                ignored=ignored,
                max_drop_pts=max_drop_pts,
                validation=validation,
                input_name=input_name,
                bias_correction=cfg.bias_correction,
            )
        # onnxruntime's accuracy control (`ranked_accuracy_control`) runs in run_int8, beside the
        # validation set and the FP32 outputs it needs.
        return quantize_ort(model, calib, target=cfg.target.value, nodes_to_exclude=ignored, input_name=input_name)

    return run


def ranked_accuracy_control(
    cfg: Int8Config, model, q, val, ref_logits: np.ndarray, max_drop_pts: float
) -> tuple[Any, dict[str, Any]]:
    """Accuracy control for the onnxruntime method, driven by `quantize.explain`'s ranking.

    If ``q`` loses more than ``max_drop_pts`` of top-1 accuracy on ``val`` (the validation set,
    whose FP32 outputs are ``ref_logits``), the quantized nodes are returned to float greedily in
    the order of the agreement their return recovers (``explain``'s recommendation) until top-1
    agreement with FP32 reaches ``1 - max_drop_pts/100``. That agreement bounds the drop: an image
    can only lose its correct label by changing its top-1 class, so the rule is sufficient, and
    conservative where flips also correct mistakes. The nodes are returned to float in the INT8
    graph as it is (`explain.float_variant`), as explain scored them. Returns (model, info) with
    ``reverted_to_float``, the drop before and whether the bound was reached.
    """
    from quantize.explain import ExplainConfig, explain, float_variant

    acc_ref = float((ref_logits.argmax(1) == val.labels).mean())
    drop = 100.0 * (acc_ref - float((predict(make_session(q), val.tensors).argmax(1) == val.labels).mean()))
    info: dict[str, Any] = {
        "max_drop_pts": max_drop_pts,
        "metric": "top-1 accuracy",
        "validation_size": len(val),
        "how": "explain ranking: nodes back to float until top-1 agreement >= 1 - max_drop/100 (bounds the drop)",
        "drop_before_pts": round(drop, 4),
        "reverted_to_float": [],
        "reached": drop <= max_drop_pts,
    }
    if drop <= max_drop_pts:
        return q, info
    target = max(1e-9, 1.0 - max_drop_pts / 100.0)
    log.info(
        "accuracy control: INT8 drops %.2f pts (bound %.2f): ranking nodes to reach %.2f%% agreement",
        drop,
        max_drop_pts,
        100 * target,
    )
    ecfg = ExplainConfig(fp32=str(cfg.onnx), int8=str(cfg.out), data=cfg.data, target_agreement=target)
    res = explain(ecfg, int8_model=q, validation=val, reference=ref_logits)
    info["reached"] = bool(res.reached)
    info["explain"] = res.message
    if res.recommended:
        q, _ = float_variant(q, model, res.recommended)
        info["reverted_to_float"] = list(res.recommended)
    return q, info


@contextlib.contextmanager
def _step_bar(label: str, total: int, what: str):
    """One labelled progress display for a multi-pass step: ``tick(text)`` starts the next pass.

    A tqdm bar (count and ETA) on stderr, plus a log line per pass so a log file shows progress too.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="trial", leave=False, dynamic_ncols=True)
    state = {"n": 0}
    log.info("%s: %d trial(s), %s", label, total, what)

    def tick(text: str) -> None:
        if state["n"] > 0:
            bar.update(1)
        state["n"] += 1
        if state["n"] > bar.total:
            bar.total = state["n"]
            bar.refresh()
        bar.set_postfix_str(text)
        log.debug("%s: trial %d/%d: %s", label, state["n"], bar.total, text)

    try:
        yield tick
        if state["n"]:
            bar.update(1)
    finally:
        bar.close()


def auto_scope(
    quantize: Callable[..., tuple[Any, dict]],
    groups: Mapping[str, Sequence[str]],
    samples: np.ndarray,
    reference: np.ndarray,
    *,
    min_gain: float,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Keep a sensitive group in float only where it measurably helps.

    Quantizes once with nothing ignored and once per group ignored, scores fidelity to FP32 on
    ``samples``, and keeps the groups that cut the mean |Δlogit| by at least ``min_gain`` without
    lowering top-1 agreement. When several qualify their union is measured too and used only if it
    is at least as good as the best single group.

    Returns:
        (chosen group names, {"measurements": {label: fidelity}, "chosen": [...]}).
    """

    def measure(names: Sequence[str], label: str) -> dict[str, float]:
        if progress:
            progress(label)
        q, _ = quantize(list(names))
        return _fidelity(reference, predict(make_session(q), samples))

    meas = {"none": measure([], "everything quantized")}
    base = meas["none"]
    for g, names in groups.items():
        if names:
            meas[g] = measure(names, f"{g} kept in float")
    helpful = [
        g
        for g in groups
        if g in meas
        and meas[g]["mean_abs_diff"] <= (1.0 - min_gain) * base["mean_abs_diff"]
        and meas[g]["top1_agreement"] >= base["top1_agreement"]
    ]
    chosen = helpful
    if len(helpful) > 1:
        label = "+".join(helpful)
        meas[label] = measure(flatten_scope({g: groups[g] for g in helpful}), f"{label} kept in float")
        best = min(helpful, key=lambda g: (-meas[g]["top1_agreement"], meas[g]["mean_abs_diff"]))
        u, b = meas[label], meas[best]
        if (u["top1_agreement"], -u["mean_abs_diff"]) < (b["top1_agreement"], -b["mean_abs_diff"]):
            chosen = [best]
    return chosen, {"measurements": meas, "chosen": chosen, "min_gain": min_gain}


def run_int8(cfg: Int8Config, *, force: bool = False, progress: Callable[[str], None] | None = None) -> StageResult:
    """Quantize ``cfg.onnx`` to INT8 Q/DQ and write the model, manifest, sidecar and report.

    Raises:
        ArtifactError: bad input model, or a tensorrt-target model that fails the Q/DQ lint
            (nothing is written then).
        DataError / ConfigError: calibration or validation data problems.
        QuantizationError: the quantizer failed.
    """
    import onnx

    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    contract = read_contract(cfg.onnx)
    input_sha = sha256_file(cfg.onnx)
    fingerprint = _fingerprint(cfg, input_sha)
    if not force and (side := _up_to_date(cfg.out, fingerprint)) is not None:
        say(f"{cfg.out} is up to date (same input, config and library versions); use --force to redo it")
        jpath, mpath = report_paths(cfg.out)
        return StageResult(cfg.out, sidecar_path(cfg.out), None, (jpath, mpath), None, skipped=True)

    model = onnx.load(str(cfg.onnx))
    name_nodes(model)
    input_name = (
        contract.input_name if contract.input_name in {i.name for i in model.graph.input} else model.graph.input[0].name
    )

    t = time.perf_counter()
    say(
        f"int8 {cfg.method.value}/{cfg.target.value}: reading {cfg.calibration.size} calibration images and the validation set"
    )
    calib = build_calibration_set(
        contract, size=cfg.calibration.size, seed=cfg.calibration.seed, data=cfg.data, min_size=cfg.calibration.min_size
    )
    val = build_validation_set(contract, data=cfg.data, limit=cfg.val_limit)
    timing["data_s"] = time.perf_counter() - t
    say(f"calibration: {calib.source}; validation: {val.source}")
    ref_session = make_session(model)
    ref_val = predict(ref_session, val.tensors)
    val = with_reference_labels(val, ref_val)  # an unlabelled image folder: judged against FP32 top-1
    quantize = _quantizer(cfg, model, calib.tensors, input_name)

    # Which nodes stay in float.
    t = time.perf_counter()
    scopes = sensitive_scopes(model)
    scope_info: dict[str, Any] = {"groups_found": {g: len(scopes.group(g)) for g in GROUPS}}
    if cfg.ignore == ("none",):
        ignored: list[str] = []
        scope_info.update(mode="none", chosen=[])
    elif cfg.ignore == ("auto",):
        say("ignored scope 'auto': reading up to 300 held-out images to score each trial on")
        holdout = build_holdout_set(contract, exclude_ids=calib.ids, data=cfg.data, size=300, min_size=32)
        sel: LabelledSet = holdout if holdout is not None else val
        groups = {g: scopes.group(g) for g in GROUPS}
        trials = 1 + sum(1 for g in groups.values() if g)
        with _step_bar(
            f"int8 {cfg.method.value}/{cfg.target.value}: ignored-scope search",
            trials,
            f"keeping {', '.join(g for g in GROUPS if scopes.group(g))} in float one at a time; "
            f"each trial calibrates on {len(calib)} images and scores on {sel.source}",
        ) as tick:
            chosen, details = auto_scope(
                quantize,
                groups,
                sel.tensors,
                predict(ref_session, sel.tensors),
                min_gain=cfg.auto_min_gain,
                progress=tick,
            )
        ignored = flatten_scope({g: groups[g] for g in chosen})
        scope_info.update(mode="auto", measured_on=sel.source, **details)
    else:
        resolved = resolve_ignore(cfg.ignore, model, scopes)
        ignored = flatten_scope(resolved)
        scope_info.update(mode="explicit", chosen=list(resolved))
    scope_info["nodes"] = ignored
    timing["scope_s"] = time.perf_counter() - t

    t = time.perf_counter()
    say(
        f"quantizing with {cfg.method.value} for {cfg.target.value} ({len(ignored)} node(s) kept in float"
        + (f", accuracy control: drop <= {cfg.max_drop_pts} pts" if cfg.max_drop_pts is not None else "")
        + ")"
    )
    nncf_drop = cfg.max_drop_pts if cfg.method is Method.NNCF else None
    q, qinfo = quantize(ignored, nncf_drop, (val.tensors, val.labels))
    if cfg.max_drop_pts is not None and cfg.method is Method.ORT:
        q, qinfo["accuracy_control"] = ranked_accuracy_control(cfg, model, q, val, ref_val, cfg.max_drop_pts)
    timing["quantize_s"] = time.perf_counter() - t
    quant_meta = {"method": cfg.method.value, "target": cfg.target.value, "form": cfg.form}
    copy_contract(model, q, {KEY_PRECISION: "int8", KEY_QUANTIZATION: json.dumps(quant_meta, sort_keys=True)})
    accuracy_control = qinfo.get("accuracy_control")
    reverted = (accuracy_control or {}).get("reverted_to_float", [])

    lint = lint_qdq(q, expected_float=list(ignored) + list(reverted))
    if cfg.target is Target.TENSORRT and not lint.passed:
        first = "; ".join(str(f) for f in lint.errors[:3])
        raise ArtifactError(
            f"the {cfg.method.value} output fails the TensorRT Q/DQ lint ({len(lint.errors)} error(s): {first}); nothing written"
        )
    if cfg.target is Target.TENSORRT and lint.warnings:
        # Advisory findings (e.g. Q/DQ around ops TensorRT runs in float anyway): they cost a little
        # speed, not correctness, and stay in the file's report; a warning per finding on every
        # demo run trained users to ignore warnings.
        log.info(
            "lint: %d advisory finding(s) (%s); details in the quantization report",
            len(lint.warnings),
            ", ".join(sorted({f.code for f in lint.warnings})),
        )
        for f in lint.warnings:
            log.debug("lint: %s", f)

    t = time.perf_counter()
    say(f"scoring the INT8 model against FP32 on {len(val)} validation images")
    cand_val = predict(make_session(q), val.tensors)
    tol = tolerance_for("int8")
    if cfg.max_drop_pts is not None:
        tol = Tolerance(min_top1_agreement=tol.min_top1_agreement, max_accuracy_drop_pts=cfg.max_drop_pts)
    parity = compare_outputs(
        ref_val,
        cand_val,
        val.labels,
        precision="int8",
        class_names=contract.class_names,
        sample_ids=val.ids,
        tolerance=tol,
    )
    timing["evaluate_s"] = time.perf_counter() - t
    say(
        f"INT8 vs FP32 on {len(val)} samples: accuracy {parity.reference_accuracy:.4f} -> {parity.accuracy:.4f} "
        f"(drop {parity.accuracy_drop_pts:.2f} pts), agreement {100 * parity.top1_agreement:.2f}%"
    )

    latency = None
    if cfg.latency.enabled:
        t = time.perf_counter()
        latency = compare_latency(model, q, val.tensors, cfg.latency, input_name=input_name, progress=say)
        timing["latency_s"] = time.perf_counter() - t

    _save_model(
        q, cfg.out, stage=f"quantize int8 ({cfg.method.value}, {cfg.target.value} form)", target=cfg.target.value
    )
    runtime = None
    if cfg.target is Target.CPU and cfg.runtime_pick.enabled:
        from quantize.runtime_pick import pick_runtime

        t = time.perf_counter()
        runtime = pick_runtime(cfg.out, val.tensors, ref_val, val.labels, cfg.runtime_pick, progress=say)
        timing["runtime_pick_s"] = time.perf_counter() - t
    manifest, manifest_sha = write_manifest(cfg.out, calib)
    calib_summary = {k: calib.manifest[k] for k in ("source", "size", "seed", "class_counts", "tensor_sha256")}
    calib_summary.update(manifest=str(manifest), manifest_sha256=manifest_sha)
    explained = None
    if cfg.explain.enabled:
        t = time.perf_counter()
        explained = explain_file(cfg, say)
        timing["explain_s"] = time.perf_counter() - t
    timing["total_s"] = time.perf_counter() - t_start
    report = QuantReport(
        precision="int8",
        model=str(cfg.out),
        reference=str(cfg.onnx),
        method=cfg.method.value,
        target=cfg.target.value,
        form=cfg.form,
        validation=val.source,
        parity=parity,
        lint=lint,
        latency=latency,
        ignored_scope=scope_info,
        accuracy_control=accuracy_control,
        calibration=calib_summary,
        conversion=qinfo,
        timing=timing,
        runtime=runtime,
        explain=explained,
    )
    paths = write_report(report, cfg.out)
    side = write_sidecar(
        cfg.out,
        {
            "stage": "quantize",
            "precision": "int8",
            "method": cfg.method.value,
            "target": cfg.target.value,
            "form": cfg.form,
            "input": {"path": str(cfg.onnx), "sha256": input_sha},
            "calibration": calib_summary,
            "ignored_scope": scope_info,
            "accuracy_control": accuracy_control,
            "float_nodes": sorted(set(ignored) | set(reverted)),
            "settings": qinfo.get("settings"),
            "runtime": None
            if runtime is None
            else {
                "fastest": runtime.fastest,
                "description": runtime.runtime,
                "note": runtime.note,
                "fastest_by_batch": {str(b): lab for b, lab in runtime.fastest_by_batch.items()},
            },
            "lint": {
                "passed": lint.passed,
                "errors": len(lint.errors),
                "warnings": len(lint.warnings),
                "int8_ops": len(lint.int8_ops),
                "float_ops": len(lint.float_ops),
            },
            "parity": {
                k: parity.to_dict()[k]
                for k in (
                    "passed",
                    "accuracy",
                    "reference_accuracy",
                    "accuracy_drop_pts",
                    "top1_agreement",
                    "max_abs_diff",
                    "mean_abs_diff",
                )
            },
            "report": [str(p) for p in paths],
            "config": to_dict(cfg),
            "fingerprint": fingerprint,
            "timing": timing,
            "versions": fingerprint["versions"],
        },
    )
    return StageResult(cfg.out, side, report, paths, manifest)


def explain_file(cfg: Int8Config, say: Callable[[str], None]) -> dict[str, Any]:
    """`quantize.explain` on the file just written: its folder beside it, a summary for the report."""
    from quantize.explain import ExplainConfig, explain, render_markdown, write_explain

    e = cfg.explain
    ecfg = ExplainConfig(
        fp32=str(cfg.onnx),
        int8=str(cfg.out),
        data=cfg.data,
        target_agreement=e.target_agreement,
        limit=e.limit,
        max_float=e.max_float,
        threads=cfg.latency.threads or None,
    )
    say(f"explain: scoring the INT8 file with each quantized node returned to float ({ecfg.out_dir()})")
    res = explain(ecfg)
    paths = write_explain(res, ecfg.out_dir(), command="quantize int8 (explain: enabled)")
    say(f"explain: {res.message}")
    return {
        "folder": str(ecfg.out_dir()),
        "paths": {k: str(v) for k, v in paths.items()},
        "agreement": res.baseline.agreement,
        "recommended": list(res.recommended),
        "reached": res.reached,
        "message": res.message,
        "markdown": render_markdown(res, top=10),
    }


# --- FP16 ----------------------------------------------------------------------------------------


def run_fp16(cfg: Fp16Config, *, force: bool = False, progress: Callable[[str], None] | None = None) -> StageResult:
    """Convert ``cfg.onnx`` to an FP16 graph (FP32 I/O) and write the model, sidecar and report."""
    import onnx

    from quantize.fp16 import DEFAULT_KEEP_FP32, convert_fp16, fp16_weight_overflow

    say = progress or (lambda msg: log.info("%s", msg))
    t_start = time.perf_counter()
    contract = read_contract(cfg.onnx)
    input_sha = sha256_file(cfg.onnx)
    fingerprint = _fingerprint(cfg, input_sha)
    if not force and _up_to_date(cfg.out, fingerprint) is not None:
        say(f"{cfg.out} is up to date (same input, config and library versions); use --force to redo it")
        return StageResult(cfg.out, sidecar_path(cfg.out), None, report_paths(cfg.out), None, skipped=True)
    model = onnx.load(str(cfg.onnx))
    overflow = fp16_weight_overflow(model)
    if overflow:
        raise ArtifactError(
            f"weights {overflow[:5]} exceed the float16 range (65504); keep those nodes in FP32 or retrain"
        )
    keep = cfg.keep_fp32 or DEFAULT_KEEP_FP32
    half, info = convert_fp16(model, keep_fp32_ops=keep)
    copy_contract(model, half, {KEY_PRECISION: "fp16", KEY_QUANTIZATION: json.dumps({"form": "fp16 graph, fp32 I/O"})})
    val = build_validation_set(contract, data=cfg.data, limit=cfg.val_limit)
    say(f"fp16: scoring the FP16 model against FP32 on {len(val)} validation images")
    ref = predict(make_session(model), val.tensors)
    val = with_reference_labels(val, ref)
    out = predict(make_session(half), val.tensors)
    parity = compare_outputs(
        ref, out, val.labels, precision="fp16", class_names=contract.class_names, sample_ids=val.ids
    )
    say(
        f"FP16 vs FP32 on {len(val)} samples: agreement {100 * parity.top1_agreement:.2f}%, max |Δ| {parity.max_abs_diff:.3g}"
    )
    input_name = contract.input_name
    latency = (
        compare_latency(model, half, val.tensors, cfg.latency, input_name=input_name, progress=say)
        if cfg.latency.enabled
        else None
    )
    _save_model(half, cfg.out, stage="quantize fp16", target="tensorrt")
    timing = {"total_s": time.perf_counter() - t_start}
    report = QuantReport(
        precision="fp16",
        model=str(cfg.out),
        reference=str(cfg.onnx),
        method="onnxconverter-common float16",
        target="tensorrt (strongly typed)",
        form="FP16 tensors and weights, FP32 inputs/outputs; kept in FP32: "
        + (", ".join(info["keep_fp32_ops_present"]) or "none"),
        validation=val.source,
        parity=parity,
        lint=None,
        latency=latency,
        conversion=info,
        timing=timing,
    )
    paths = write_report(report, cfg.out)
    side = write_sidecar(
        cfg.out,
        {
            "stage": "quantize",
            "precision": "fp16",
            "input": {"path": str(cfg.onnx), "sha256": input_sha},
            "conversion": info,
            "parity": {k: parity.to_dict()[k] for k in ("passed", "top1_agreement", "max_abs_diff", "mean_abs_diff")},
            "report": [str(p) for p in paths],
            "config": to_dict(cfg),
            "fingerprint": fingerprint,
            "timing": timing,
            "versions": fingerprint["versions"],
        },
    )
    return StageResult(cfg.out, side, report, paths, None)
