"""x86 INT8 against OpenVINO (issue 17, deliverables 2 and 5): one process, interleaved rounds.

    python scripts/bench_x86_int8.py --fp32 D/model.onnx --int8 D/model.ort.cpu.int8.onnx \
        --threads 1,2 --batches 1,32 --rounds 5 --repeats 3
    python scripts/bench_x86_int8.py --manet /tmp/manet --threads 1,2 --batches 1,8 --rounds 3 --repeats 3

Rows (per thread count, per batch): onnxruntime FP32; the project's INT8 file on onnxruntime; the
same file read by OpenVINO; OpenVINO FP32 as read (OpenVINO's default precision: bf16 on CPUs that
have it); OpenVINO INT8 made by ``nncf.quantize`` with its defaults from the FP32 ONNX.

Threads are explicit in both runtimes: onnxruntime ``intra_op_num_threads`` (`make_session`) and
OpenVINO ``INFERENCE_NUM_THREADS`` (the `OpenVinoBackend` compile properties: one stream, LATENCY
hint). Each OpenVINO model is reshaped to a fixed batch and compiled once per (threads, batch);
onnxruntime keeps the dynamic batch. A round times every engine once per batch; a repeat is
``--rounds`` rounds, giving one p50 per cell; the tables show median [min-max] over ``--repeats``.

``--manet DIR`` exports a random-init full ``manet`` into DIR (if missing), quantizes its x86 INT8
file with ``python -m quantize int8 --method ort --target cpu`` and times it (speed only: no
agreement figures for random weights). The Markdown tables go to stdout and ``--out`` (JSON beside).

``--nncf-int8 FILE`` adds the project's other x86 file (``--method nncf --target cpu``) on both
runtimes, and ``--ov-rewritten`` adds ``nncf.quantize`` on OpenVINO's reading of the cpu target's
rewritten FP32 graph with its classifier in float: the forms issue 17 asked to measure against each
other. "Project best" is the fastest row among the files ``python -m quantize int8 --target cpu``
makes; the rewritten-graph NNCF row (not a file the project writes) gets its own ratio line.

Roofline (``--no-roofline`` skips it): each INT8 engine's achieved multiply-accumulates per second
(MACs of the model at that batch, counted from the ONNX shapes by `runtime.roofline.count_macs`,
over its p50) against the INT8 peak of the same runtime and thread count (a 1024^3 uint8 x int8
Q/DQ GEMM, `runtime.roofline.measure_peak`, timed after the rounds). The project's file counts its
INT8 nodes; the NNCF model is an OpenVINO graph, so its row uses all MACs of the FP32 ONNX.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quantize.calibration import build_calibration_set, build_validation_set  # noqa: E402
from runtime.backends.openvino import OpenVinoBackend, _ov_precision  # noqa: E402
from runtime.backends.ort import make_session  # noqa: E402
from runtime.cli import parse_int_list  # noqa: E402
from runtime.contract import read_contract  # noqa: E402
from runtime.latency import measure_latency, summarize, tile_batch  # noqa: E402
from runtime.report import md_table  # noqa: E402
from runtime.roofline import count_macs, measure_peak  # noqa: E402

ENGINES = (
    ("ort_fp32", "onnxruntime FP32"),
    ("ort_int8", "project x86 INT8 on onnxruntime"),
    ("ov_int8", "project x86 INT8 read by OpenVINO"),
    ("ov_fp32", "OpenVINO FP32 as read (default precision: {prec})"),
    ("ov_nncf", "OpenVINO INT8, nncf.quantize defaults"),
)
# Other x86 INT8 forms (issue 17, deliverable 2: "measured, not assumed"), with --nncf-int8 / --ov-rewritten.
CANDIDATES = (
    ("ort_nncfcpu", "project nncf x86 INT8 on onnxruntime"),
    ("ov_nncfcpu", "project nncf x86 INT8 read by OpenVINO"),
    ("ov_nncf_rw", "OpenVINO INT8, nncf.quantize on the cpu-rewritten FP32 (classifier float)"),
)
INT8 = ("ort_int8", "ov_int8", "ov_nncf")
PROJECT = ("ort_int8", "ov_int8", "ort_nncfcpu", "ov_nncfcpu")  # files `python -m quantize int8 --target cpu` makes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp32", type=Path, help="FP32 ONNX with its contract sidecar")
    p.add_argument("--int8", type=Path, help="the project's x86 INT8 file (--target cpu)")
    p.add_argument("--manet", type=Path, help="folder for a random-init manet (export + quantize if missing)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,32")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seconds-per-round", type=float, default=0.3)
    p.add_argument("--min-iterations", type=int, default=5, help="timed calls per engine per round, at least")
    p.add_argument("--calib-size", type=int, default=300, help="images given to nncf.quantize")
    p.add_argument("--val-limit", type=int, default=0, help="validation images for agreement (0: all)")
    p.add_argument("--ov-dynamic", action="store_true", help="OpenVINO keeps the dynamic batch (no reshape)")
    p.add_argument("--out", type=Path, help="write the Markdown here (and .json beside)")
    p.add_argument("--no-roofline", action="store_true", help="skip the MAC/s vs INT8-GEMM-peak table")
    p.add_argument(
        "--ov-profile",
        type=int,
        default=0,
        metavar="CALLS",
        help="also print OpenVINO per-layer counters (CALLS profiled calls) per thread count and batch",
    )
    p.add_argument("--nncf-int8", type=Path, help="also time the project's --method nncf --target cpu file")
    p.add_argument(
        "--ov-rewritten",
        action="store_true",
        help="also time nncf.quantize (OpenVINO) on the cpu target's rewritten FP32, classifier in float",
    )
    return p


def prepare_manet(folder: Path) -> tuple[Path, Path]:
    """Random-init full manet in ``folder`` (tests/quantize/conftest.py export_tiny style) + its x86 INT8."""
    onnx = folder / "model.onnx"
    if not onnx.exists():
        sys.path.insert(0, str(ROOT / "tests" / "quantize"))
        from conftest import export_tiny

        export_tiny(folder, "manet", per_class=5)
    int8 = folder / "model.cpu.int8.onnx"
    if not int8.exists():
        cmd = [sys.executable, "-m", "quantize", "int8", "--onnx", str(onnx), "--out", str(int8)]
        cmd += ["--method", "ort", "--target", "cpu", "--ignore", "none"]
        cmd += ["--calib-size", "32", "--min-calib-size", "16", "--no-latency"]
        subprocess.run(cmd, check=True, cwd=ROOT)
    return onnx, int8


def nncf_default_int8(fp32, calib: np.ndarray, ignored: list[str] | None = None):
    """``nncf.quantize(ov_model, nncf.Dataset(tensors))`` with every setting left at its default.

    ``fp32``: a path or an ONNX ModelProto; ``ignored``: node names kept in float (the only change).
    """
    import nncf
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(fp32)) if isinstance(fp32, (str, Path)) else core.read_model(fp32.SerializeToString())
    name = model.inputs[0].get_any_name()
    data = nncf.Dataset([{name: calib[i : i + 1]} for i in range(len(calib))])
    kwargs = {"ignored_scope": nncf.IgnoredScope(names=ignored, validate=False)} if ignored else {}
    return nncf.quantize(model, data, **kwargs)


def ov_rewritten_int8(fp32: Path, calib: np.ndarray):
    """nncf.quantize (OpenVINO) on the cpu target's rewritten FP32 graph, its classifier kept in float."""
    import onnx

    from quantize.targets.cpu import before_quantization

    model, _, head = before_quantization(onnx.load(str(fp32)), calib[:16])
    return nncf_default_int8(model, calib, ignored=head)


def ov_compile(model_or_path, threads: int, batch: int | None, *, profile: bool = False):
    """Compile with `OpenVinoBackend`'s properties (threads, 1 stream, LATENCY); fixed batch if given."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path.clone()
    if batch is not None:
        shape = model.inputs[0].get_partial_shape()
        shape[0] = batch
        model.reshape({model.inputs[0].get_any_name(): shape})
    cfg = OpenVinoBackend("unused.onnx", threads=threads, profile=profile).config()
    compiled = core.compile_model(model, "CPU", cfg)
    return compiled, _ov_precision(compiled.get_property("INFERENCE_PRECISION_HINT"))


def ov_runner(compiled, x: np.ndarray):
    req = compiled.create_infer_request()
    feed = {compiled.inputs[0].get_any_name(): x}
    return lambda: req.infer(feed)


def predict_top1(engine: str, models: dict, x: np.ndarray, threads: int, batch: int = 32) -> np.ndarray:
    """Top-1 of ``engine`` over ``x`` (OpenVINO: fixed batch, last batch padded)."""
    out = []
    if engine.startswith("ort"):
        sess = make_session(models[engine], threads=threads)
        name = sess.get_inputs()[0].name
        for i in range(0, len(x), batch):
            out.append(sess.run(None, {name: x[i : i + batch]})[0])
    else:
        compiled, _ = ov_compile(models[engine], threads, batch)
        req = compiled.create_infer_request()
        name = compiled.inputs[0].get_any_name()
        for i in range(0, len(x), batch):
            chunk = x[i : i + batch]
            pad = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)]) if len(chunk) < batch else chunk
            out.append(np.asarray(req.infer({name: pad})[compiled.outputs[0]])[: len(chunk)])
    return np.concatenate(out).argmax(1)


def time_threads(models: dict, inputs: np.ndarray, threads: int, batches, args, prec: dict, engines) -> dict:
    """p50 per (engine, batch) for each repeat: {engine: {batch: [p50 per repeat]}}."""
    runners: dict[tuple[str, int], object] = {}
    for engine, _ in engines:
        if engine.startswith("ort"):
            sess = make_session(models[engine], threads=threads)
            name = sess.get_inputs()[0].name
            for b in batches:
                x = tile_batch(inputs, b)
                runners[engine, b] = lambda s=sess, n=name, x=x: s.run(None, {n: x})
        else:
            for b in batches:
                compiled, prec[engine] = ov_compile(models[engine], threads, None if args.ov_dynamic else b)
                runners[engine, b] = ov_runner(compiled, tile_batch(inputs, b))
    p50: dict = {e: {b: [] for b in batches} for e, _ in engines}
    for rep in range(args.repeats):
        samples: dict = {key: [] for key in runners}
        for r in range(args.rounds):
            for b in batches:
                for engine, _ in engines:
                    st = measure_latency(
                        runners[engine, b],
                        batch=b,
                        warmup_s=0.5 if (rep, r) == (0, 0) else 0.0,
                        warmup_iterations=3 if r == 0 else 1,
                        min_iterations=args.min_iterations,
                        min_seconds=args.seconds_per_round,
                        n_boot=10,
                    )
                    samples[engine, b].extend(st.samples_ms)
        for (engine, b), s in samples.items():
            p50[engine][b].append(summarize(s, batch=b, n_boot=10).p50_ms)
        line = ", ".join(f"{e} b{b} {p50[e][b][-1]:.2f}" for b in batches for e, _ in engines)
        print(f"# {threads} thread(s), repeat {rep + 1}: p50 ms {line}", file=sys.stderr, flush=True)
    return p50


def ov_layer_profile(models: dict, engines, inputs: np.ndarray, threads: int, batch: int, calls: int) -> list[str]:
    """OpenVINO's per-layer counters (PERF_COUNT) for every OpenVINO INT8 row, side by side (Markdown).

    Mean µs per call over ``calls`` profiled calls per engine, taken round-robin across the engines
    (one call each in turn, after >= 0.5 s and >= 3 untimed calls each) so that all see the same load;
    by layer type + kernel, then the layers whose time differs most between the project's file and
    NNCF's defaults.
    """
    reqs: dict[str, tuple] = {}
    for e, _ in engines:
        if not e.startswith("ov_") or e == "ov_fp32":
            continue
        compiled, _ = ov_compile(models[e], threads, batch, profile=True)
        req = compiled.create_infer_request()
        feed = {compiled.inputs[0].get_any_name(): tile_batch(inputs, batch)}
        n, t_end = 0, time.perf_counter() + 0.5
        while n < 3 or time.perf_counter() < t_end:
            req.infer(feed)
            n += 1
        reqs[e] = (req, feed)
    acc: dict[str, dict[str, list]] = {e: {} for e in reqs}
    for _ in range(calls):
        for e, (req, feed) in reqs.items():
            req.infer(feed)
            for info in req.get_profiling_info():
                if str(info.status).rsplit(".", 1)[-1] == "EXECUTED":
                    rec = acc[e].setdefault(info.node_name, [f"{info.node_type} ({info.exec_type})", 0.0])
                    rec[1] += info.real_time.total_seconds() * 1e6 / calls
    per = {e: {k: (v[0], v[1]) for k, v in recs.items()} for e, recs in acc.items()}
    names = list(per)
    label = dict(engines)
    kinds = sorted({k for e in names for k, _ in per[e].values()})
    tot = {e: {k: 0.0 for k in kinds} for e in names}
    cnt = {e: {k: 0 for k in kinds} for e in names}
    for e in names:
        for k, us in per[e].values():
            tot[e][k] += us
            cnt[e][k] += 1
    kinds.sort(key=lambda k: -max(tot[e][k] for e in names))
    head = ["layer type (kernel)", *(f"{label[e]}: µs (layers)" for e in names)]
    rows = [[k, *(f"{tot[e][k]:.0f} ({cnt[e][k]})" if cnt[e][k] else "–" for e in names)] for k in kinds]
    rows.append(["**all executed layers**", *(f"**{sum(tot[e].values()):.0f}**" for e in names)])
    lines = [
        f"OpenVINO per-layer counters, {threads} thread(s), batch {batch}, mean over {calls} calls "
        "(counters add overhead per layer: read shares, not latencies):",
        "",
        *md_table(head, rows),
        "",
    ]
    if "ov_int8" in per and "ov_nncf" in per:
        a, b = per["ov_int8"], per["ov_nncf"]
        diff = sorted(set(a) | set(b), key=lambda n: -abs(a.get(n, ("", 0.0))[1] - b.get(n, ("", 0.0))[1]))
        rows = [
            [
                n[:70],
                (a.get(n) or b.get(n))[0],
                f"{a[n][1]:.0f}" if n in a else "–",
                f"{b[n][1]:.0f}" if n in b else "–",
            ]
            for n in diff[:15]
        ]
        lines += ["Layers whose time differs most (same layer names where OpenVINO kept them):", ""]
        lines += [*md_table(["layer", "type (kernel)", "project file on OpenVINO µs", "NNCF defaults µs"], rows), ""]
    return lines


def mr(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{np.median(v):.2f}× [{v.min():.2f}–{v.max():.2f}]"


def render(results: dict, threads, batches, prec: dict, accuracy: dict | None, engines=ENGINES) -> list[str]:
    cells = [(t, b) for t in threads for b in batches]
    head = ["engine", *(f"{t} thr b{b}" for t, b in cells)]
    lat_rows, sp_rows = [], []
    for engine, label in engines:
        label = label.format(prec=prec.get("ov_fp32", "?"))
        lat, sp = [label], [label]
        for t, b in cells:
            p = np.asarray(results[t][engine][b])
            ref = np.asarray(results[t]["ort_fp32"][b])
            lat.append(f"{np.median(p):.2f} [{p.min():.2f}–{p.max():.2f}]")
            sp.append(mr(ref / p))
        lat_rows.append(lat)
        sp_rows.append(sp)
    best, ratio = ["project best INT8 (engine)"], ["project best INT8 / OpenVINO NNCF defaults"]
    present = [e for e in PROJECT if e in dict(engines)]
    for t, b in cells:
        med = {e: float(np.median(results[t][e][b])) for e in present}
        e = min(med, key=med.get)
        best.append(f"{med[e]:.2f} ms ({dict(engines)[e].removeprefix('project ')})")
        ratio.append(mr(np.asarray(results[t]["ov_nncf"][b]) / np.asarray(results[t][e][b])))
    extra = []
    if "ov_nncf_rw" in dict(engines):
        extra = [["OpenVINO NNCF on the rewritten FP32 / NNCF defaults"]]
        extra[0] += [
            mr(np.asarray(results[t]["ov_nncf"][b]) / np.asarray(results[t]["ov_nncf_rw"][b])) for t, b in cells
        ]
    lines = ["p50 ms, median [min–max] over repeats:", "", *md_table(head, lat_rows), ""]
    lines += ["Speed-up over onnxruntime FP32 (per repeat, same thread count and batch), median [min–max]:", ""]
    lines += [*md_table(head, [*sp_rows, best, ratio, *extra]), ""]
    if accuracy:
        rows = [[k, f"{v['agreement'] * 100:.2f} %", f"{v['top1'] * 100:.2f} %"] for k, v in accuracy.items()]
        lines += ["Top-1 agreement with FP32 (onnxruntime) and top-1 accuracy on the validation images:", ""]
        lines += [*md_table(["engine", "agreement with FP32", "top-1"], rows), ""]
    return lines


def roofline(fp32: Path, int8: Path, results: dict, threads, batches) -> dict:
    """Achieved GMAC/s and % of the same runtime's INT8 GEMM peak per (INT8 engine, threads, batch)."""
    macs = {b: {"int8": count_macs(int8, b), "fp32": count_macs(fp32, b)} for b in batches}
    peaks = {(rt, t): measure_peak(rt, t) for t in threads for rt in ("ort", "openvino")}
    cells: dict = {}
    for t in threads:
        for e in INT8:
            peak = peaks["ort" if e.startswith("ort") else "openvino", t]
            for b in batches:
                n = macs[b]["fp32"].total_macs if e == "ov_nncf" else macs[b]["int8"].int8_macs
                g = [n / (p50 / 1e3) / 1e9 for p50 in results[t][e][b]]  # one figure per repeat
                cells[e, t, b] = {"gmacs": g, "pct": [100 * x / peak.gmacs for x in g], "peak": peak.key}
    return {
        "macs": {b: {k: v.to_dict() for k, v in m.items()} for b, m in macs.items()},
        "peaks": {p.key: p.to_dict() for p in peaks.values()},
        "cells": cells,
    }


def render_roofline(roof: dict, threads, batches) -> list[str]:
    cells = [(t, b) for t in threads for b in batches]
    head = ["engine", *(f"{t} thr b{b}" for t, b in cells)]
    rows = []
    for e in INT8:
        row = [dict(ENGINES)[e]]
        for t, b in cells:
            c = roof["cells"][e, t, b]
            g, pct = np.asarray(c["gmacs"]), np.asarray(c["pct"])
            row.append(f"{np.median(g):.0f} GMAC/s, {np.median(pct):.0f}% [{pct.min():.0f}–{pct.max():.0f}]")
        rows.append(row)
    m = roof["macs"]
    lines = [
        "Roofline: achieved INT8 MAC/s (median over repeats) and % of the INT8 peak of the same runtime and "
        "thread count, median [min–max] over repeats:",
        "",
        *md_table(head, rows),
        "",
        "MACs per call: "
        + ", ".join(
            f"b{b} {m[b]['int8']['total_macs'] / 1e9:.3f} G ({100 * m[b]['int8']['int8_fraction']:.1f}% INT8 in the project's file)"
            for b in batches
        )
        + "; the NNCF row counts all MACs of the FP32 graph (its INT8 placement is OpenVINO's)",
        "",
        "INT8 peaks (1024^3 uint8 x int8 Q/DQ GEMM, the faster of MatMul and 1x1-conv forms):",
        "",
        *(f"- {p['description']}" for p in roof["peaks"].values()),
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    threads = parse_int_list(args.threads, "--threads")
    batches = parse_int_list(args.batches, "--batches")
    speed_only = args.manet is not None
    if speed_only:
        args.fp32, args.int8 = prepare_manet(args.manet)
    if not (args.fp32 and args.int8):
        raise SystemExit("give --fp32 and --int8, or --manet DIR")
    contract = read_contract(args.fp32)
    t0 = time.time()
    calib = build_calibration_set(contract, size=args.calib_size, seed=0, data=None, min_size=16)
    ov_nncf = nncf_default_int8(args.fp32, calib.tensors)
    print(f"# nncf.quantize defaults on {len(calib)} images: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    models = {
        "ort_fp32": args.fp32,
        "ort_int8": args.int8,
        "ov_int8": args.int8,
        "ov_fp32": args.fp32,
        "ov_nncf": ov_nncf,
    }
    engines = list(ENGINES)
    if args.nncf_int8:
        models["ort_nncfcpu"] = models["ov_nncfcpu"] = args.nncf_int8
        engines += CANDIDATES[:2]
    if args.ov_rewritten:
        models["ov_nncf_rw"] = ov_rewritten_int8(args.fp32, calib.tensors)
        engines.append(CANDIDATES[2])
    int8_engines = [e for e, _ in engines if e not in ("ort_fp32", "ov_fp32")]
    accuracy = None
    if not speed_only:
        val = build_validation_set(contract, data=None, limit=args.val_limit)
        ref = predict_top1("ort_fp32", models, val.tensors, max(threads))
        accuracy = {"FP32 (onnxruntime)": {"agreement": 1.0, "top1": float((ref == val.labels).mean())}}
        for e in int8_engines:
            top = predict_top1(e, models, val.tensors, max(threads))
            label = dict(engines)[e]
            accuracy[label] = {"agreement": float((top == ref).mean()), "top1": float((top == val.labels).mean())}
        print(f"# accuracy on {len(val)} images: {accuracy}", file=sys.stderr, flush=True)
    inputs = calib.tensors[: max(batches)]
    prec: dict = {}
    results = {t: time_threads(models, inputs, t, batches, args, prec, engines) for t in threads}
    import onnxruntime
    import openvino

    from runtime.env import cpu_info

    head = [
        f"Date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_info().get('model')}; "
        f"onnxruntime {onnxruntime.__version__}, openvino {openvino.__version__.split('-')[0]}; "
        f"{args.rounds} rounds x {args.repeats} repeats, >= {args.seconds_per_round} s and "
        f">= {args.min_iterations} calls per engine per round; OpenVINO "
        f"{'dynamic batch (no reshape)' if args.ov_dynamic else 'fixed batch per compiled model'}; "
        f"nncf.quantize defaults on {len(calib)} calibration images.",
        "",
    ]
    lines = head + render(results, threads, batches, prec, accuracy, engines)
    roof = None
    if not args.no_roofline:
        roof = roofline(args.fp32, args.int8, results, threads, batches)
        lines += render_roofline(roof, threads, batches)
    if args.ov_profile:
        for t in threads:
            for b in batches:
                lines += ov_layer_profile(models, engines, inputs, t, b, args.ov_profile)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
        blob = {"threads": threads, "batches": batches, "p50_ms": results, "accuracy": accuracy, "precision": prec}
        if roof is not None:
            blob["roofline"] = {**roof, "cells": {f"{e}|{t}|{b}": c for (e, t, b), c in roof["cells"].items()}}
        args.out.with_suffix(".json").write_text(json.dumps(blob, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
