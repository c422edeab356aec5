"""The deploy report: ``deploy_report.json`` (machine-readable) and ``deploy_report.md`` (for people)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from export.deploy.model import ModelSource
from runtime.artifacts import atomic_write_json, atomic_write_text, library_versions, sha256_file
from runtime.report import md_table

REPORT_FORMAT = "ferdeploy-deploy/1"


def base_report(src: ModelSource, cfg: Any, name: str, target: str) -> dict[str, Any]:
    """The fields every target's report has."""
    c = src.contract
    engine = None
    if src.engine is not None:
        e = src.engine
        engine = {
            "tensorrt_version": e.tensorrt_version,
            "gpu_name": e.gpu_name,
            "compute_capabilities": list(e.compute_capabilities),
            "flavour": e.flavour,
            "profile": list(e.profile) if e.profile else None,
            "version_compatible": e.version_compatible,
        }
    return {
        "format": REPORT_FORMAT,
        "target": target,
        "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "model": {
            "path": str(src.path),
            "kind": src.kind,
            "sha256": src.sha256,
            "onnx": str(src.onnx),
            "precision": src.precision,
            "precision_source": src.precision_source,
            "input": {"name": src.input.name, "dtype": src.input.dtype.name, "shape": list(src.input.shape)},
            "outputs": [{"name": o.name, "dtype": o.dtype.name, "shape": list(o.shape)} for o in src.outputs],
        },
        "engine": engine,
        "contract": {
            "model_name": c.model_name,
            "class_names": list(c.class_names),
            "preprocess": c.preprocess.to_dict(),
        },
        "versions": library_versions(),
    }


def write_report(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write both report files into ``folder`` (the hashes of the other files written there included)."""
    report["files"] = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("deploy_report.")
    }
    j = atomic_write_json(folder / "deploy_report.json", report)
    m = atomic_write_text(folder / "deploy_report.md", markdown(report))
    return j, m


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def markdown(r: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    v = r["emulation"]["verdict"]
    exact = r.get("exact", True)
    lines = [
        f"# Deploy report: `{r['name']}` for {r['target']}",
        "",
        f"- model: `{r['model']['path']}` ({r['model']['kind']}, {r['model']['precision']} from "
        f"{r['model']['precision_source']}, sha256 `{r['model']['sha256'][:16]}...`)",
        f"- contract: `{r['contract']['model_name']}`, classes {', '.join(r['contract']['class_names'])}; "
        f"preprocess `{r['contract']['preprocess']}`",
        f"- written: {r['created']} by `{r['command'] or 'python -m export deploy'}`",
        "",
    ]
    if r.get("engine"):
        e = r["engine"]
        lines += [
            f"- engine: TensorRT {e['tensorrt_version']} ({e['flavour']}), built on {e['gpu_name'] or '?'} "
            f"(compute capability {', '.join(e['compute_capabilities']) or '?'}), profile {e['profile']}; "
            f"{r.get('gpu_check', '')}",
            "",
        ]
    verdict = "**matches the contract**" if v["matches"] else "**does NOT match the contract**"
    lines += [
        "## Check",
        "",
        f"{r['emulation']['method']}.",
        "",
        f"Result on the sets that count: {verdict}: max |input diff| {v['max_abs_input_diff']:.3g} "
        f"(tolerance {v['tolerance']:g}), top-1 agreement {_pct(v['top1_agreement'])}.",
        "",
    ]
    if not exact:
        m = r.get("mapping", {})
        lines += ["**Approximate contract** (written because of `--allow-approximate`):", ""]
        lines += [f"- {a}" for a in m.get("approximations", [])]
        lines += [
            f"- worst-case input error from the single net-scale-factor: "
            f"{m.get('worst_case_normalisation_error', 0.0):.4g}",
            "",
        ]
    lines += md_table(
        [
            "sample set",
            "images",
            "max abs input diff",
            "mean abs input diff",
            "top-1 agreement",
            "unlabelled",
            "counts",
        ],
        [
            [
                f"{s['set']}: {s['description']}",
                s["images"],
                f"{s['max_abs_input_diff']:.3g}",
                f"{s['mean_abs_input_diff']:.3g}",
                _pct(s["top1_agreement"]),
                s["unlabelled"],
                "yes" if s["counts_for_verdict"] else "no (informative)",
            ]
            for s in r["emulation"]["sets"]
        ],
        align="lrrrrrl",
    )
    lines += [""]
    if r.get("schema"):
        lines += ["## Config", "", f"- {r['schema']}"]
    else:
        lines += ["## Config", ""]
    cfg = r.get("config", {})
    for k, val in cfg.items():
        lines.append(f"- `{k}`: `{val}`")
    if r.get("engine_file"):
        lines.append(f"- engine file nvinfer writes and reuses: `{r['engine_file']}`")
    lines += ["", "## Files", ""] + [f"- `{k}` sha256 `{h[:16]}...`" for k, h in r.get("files", {}).items()]
    lines += ["", "## Not checked here (needs the device)", ""] + [f"- {x}" for x in r.get("needs_device", [])]
    return "\n".join(lines) + "\n"
