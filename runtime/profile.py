"""Where the time goes: per-node and per-op-type time tables for ORT and OpenVINO bench rows.

    python -m runtime bench --models RUN/model.onnx RUN/model.int8.onnx --backends ort,openvino --profile

For each (model, backend, batch) the bench times, `profile_row` runs the model ``runs`` more times
with the runtime's own per-node counters on:

- onnxruntime: ``SessionOptions.enable_profiling`` (through `runtime.backends.ort.make_session`'s
  ``profile_prefix``); the JSON trace's ``Node`` events named ``<node>_kernel_time`` give each
  kernel's duration. Names and op types are those of the *optimised* graph (fused nodes such as
  ``FusedConv`` or ``QLinearConv`` appear as onnxruntime runs them).
- OpenVINO: ``PERF_COUNT`` on the compiled model and ``get_profiling_info()`` of the infer request
  after each call (layers OpenVINO fused away report ``NOT_RUN`` and are left out).

`profile_tables` turns the records into the top nodes and every op type with its total ms per call
and share of the profiled time; `write_profile` writes them as JSON + Markdown (atomic writes).
The profiled runs are separate from the timed ones: counters cost time, so the latency table stays
the un-instrumented figure and the shares here say where it goes.

No torch here.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import ConfigError

log = logging.getLogger(__name__)

PROFILED_BACKENDS = ("ort", "openvino")
TOP_NODES = 20


def ort_records(trace: Iterable[Mapping[str, Any]], runs: int) -> list[dict[str, Any]]:
    """Pure: onnxruntime profile events -> per-node records (median ms per call over the ``runs`` calls).

    The median, not the mean: one slow call (a page fault, a preempted thread) would otherwise move
    a node's figure by its whole excess divided by ``runs``. A node with fewer events than ``runs``
    (it did not run every call) counts the missing calls as zero.
    """
    acc: dict[str, dict[str, Any]] = {}
    for ev in trace:
        name = str(ev.get("name", ""))
        if ev.get("cat") != "Node" or not name.endswith("_kernel_time"):
            continue
        node = name[: -len("_kernel_time")]
        args = ev.get("args") or {}
        rec = acc.setdefault(
            node, {"name": node, "op_type": args.get("op_name", "?"), "provider": args.get("provider", ""), "us": []}
        )
        rec["us"].append(float(ev.get("dur", 0)))
    return [
        {"name": r["name"], "op_type": r["op_type"], "provider": r["provider"], "ms": _median_ms(r["us"], runs)}
        for r in acc.values()
    ]


def _median_ms(us: list[float], runs: int) -> float:
    """Median of per-call microseconds in ms, with calls where the node did not run as zeros."""
    values = list(us) + [0.0] * max(0, runs - len(us))
    return float(np.median(values)) / 1e3 if values else 0.0


def profile_ort(
    path: str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    runs: int = 20,
    warmup: int = 3,
) -> list[dict[str, Any]]:
    """Per-node median ms per call of ``path`` on onnxruntime CPU (``runs`` profiled calls after ``warmup``)."""
    from runtime.backends.ort import default_threads, make_session

    with tempfile.TemporaryDirectory(prefix="ferdeploy-prof-") as tmp:
        # Warm-up outside the profiled session would not help (a new session starts cold): the
        # warm-up calls are profiled too and dropped by count below.
        sess = make_session(path, threads=threads or default_threads(), profile_prefix=str(Path(tmp) / "ort"))
        feeds = dict(feeds)
        for _ in range(warmup + runs):
            sess.run(None, feeds)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    # Drop the warm-up calls: keep each node's last `runs` kernel events.
    per_node: dict[str, list[Mapping[str, Any]]] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and str(ev.get("name", "")).endswith("_kernel_time"):
            per_node.setdefault(ev["name"], []).append(ev)
    kept = [ev for evs in per_node.values() for ev in evs[-runs:]]
    return ort_records(kept, runs)


def profile_openvino(
    path: str | os.PathLike,
    feeds: Mapping[str, np.ndarray],
    *,
    threads: int | None = None,
    precision: str = "default",
    runs: int = 20,
    warmup: int = 3,
) -> tuple[list[dict[str, Any]], str]:
    """Per-layer median ms per call on OpenVINO CPU, and the inference precision it ran float layers in."""
    from runtime.backends.openvino import OpenVinoBackend

    acc: dict[str, dict[str, Any]] = {}
    with OpenVinoBackend(path, threads=threads, precision=precision, profile=True) as be:
        for i in range(warmup + runs):
            be.infer(feeds)
            if i < warmup:
                continue
            for r in be.profile_records():
                if r["status"] != "EXECUTED":
                    continue
                rec = acc.setdefault(
                    r["name"], {"name": r["name"], "op_type": r["op_type"], "exec_type": r["exec_type"], "us": []}
                )
                rec["us"].append(r["ms"] * 1e3)
        chosen = be.inference_precision
    for rec in acc.values():
        rec["ms"] = _median_ms(rec.pop("us"), runs)
    return list(acc.values()), chosen


def profile_tables(records: list[dict[str, Any]], *, top: int = TOP_NODES) -> dict[str, Any]:
    """Pure: per-node records -> {"total_ms", "nodes": top ``top`` by time, "op_types": all, by time}.

    Every entry carries ``ms`` (median per call) and ``share`` (percent of the profiled total), so the
    op-type shares sum to 100.
    """
    total = float(sum(r["ms"] for r in records))

    def share(ms: float) -> float:
        return 100.0 * ms / total if total > 0 else 0.0

    nodes = sorted(records, key=lambda r: -r["ms"])
    types: dict[str, dict[str, Any]] = {}
    for r in records:
        t = types.setdefault(r["op_type"], {"op_type": r["op_type"], "count": 0, "ms": 0.0})
        t["count"] += 1
        t["ms"] += r["ms"]
    return {
        "total_ms": total,
        "node_count": len(records),
        "nodes": [{**r, "share": share(r["ms"])} for r in nodes[:top]],
        "op_types": [{**t, "share": share(t["ms"])} for t in sorted(types.values(), key=lambda t: -t["ms"])],
    }


def profile_row(
    backend: str, path: str, feeds: Mapping[str, np.ndarray], *, threads: int | None, runs: int = 20
) -> dict[str, Any]:
    """Profile one (model, backend) on ``feeds``: the tables plus what ran."""
    batch = int(next(iter(feeds.values())).shape[0])
    info: dict[str, Any] = {"model": str(path), "backend": backend, "batch": batch, "runs": runs, "threads": threads}
    if backend == "ort":
        records = profile_ort(path, feeds, threads=threads, runs=runs)
        info["source"] = "onnxruntime profiling (SessionOptions.enable_profiling), optimised graph"
    elif backend == "openvino":
        records, chosen = profile_openvino(path, feeds, threads=threads, runs=runs)
        info["source"] = "OpenVINO PERF_COUNT (get_profiling_info), executed layers"
        info["inference_precision"] = chosen
    else:
        raise ConfigError(f"--profile covers backends {PROFILED_BACKENDS}, not {backend!r}")
    return {**info, **profile_tables(records)}


def profile_stem(model: str, backend: str, batch: int) -> str:
    """File stem of one profile: ``<model folder>.<model file stem>.<backend>.b<batch>.profile``
    (the folder keeps two ``model.int8.onnx`` of one sweep apart)."""
    path = Path(model)
    stem = path.name[: -len(".onnx")] if path.name.endswith(".onnx") else path.name
    return f"{path.parent.name}.{stem}.{backend}.b{batch}.profile"


def render_profile(p: Mapping[str, Any]) -> str:
    """Pure: one profile as Markdown."""
    from runtime.report import md_table

    out = [
        f"# Profile: `{Path(p['model']).name}` on {p['backend']}, batch {p['batch']}",
        "",
        f"{p['source']}; per-node median of {p['runs']} calls, {p.get('threads') or 'default'} thread(s)"
        + (f"; float layers in {p['inference_precision']}" if p.get("inference_precision") else "")
        + f". Profiled total {p['total_ms']:.3f} ms per call over {p['node_count']} nodes "
        "(counters cost time: the latency report is the un-instrumented figure).",
        "",
        "## Op types",
        "",
    ]
    out += md_table(
        ["op type", "nodes", "ms per call", "share"],
        [[t["op_type"], t["count"], f"{t['ms']:.4f}", f"{t['share']:.1f}%"] for t in p["op_types"]],
    )
    out += ["", f"## Top {len(p['nodes'])} nodes", ""]
    out += md_table(
        ["node", "op type", "ms per call", "share"],
        [[f"`{n['name']}`", n["op_type"], f"{n['ms']:.4f}", f"{n['share']:.1f}%"] for n in p["nodes"]],
    )
    return "\n".join(out) + "\n"


def write_profile(p: Mapping[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write one profile as ``OUT/profile/<stem>.json`` and ``.md``; returns both paths."""
    from runtime.artifacts import atomic_write_json, atomic_write_text

    folder = Path(out) / "profile"
    folder.mkdir(parents=True, exist_ok=True)
    stem = profile_stem(p["model"], p["backend"], p["batch"])
    return (
        atomic_write_json(folder / f"{stem}.json", dict(p)),
        atomic_write_text(folder / f"{stem}.md", render_profile(p)),
    )
