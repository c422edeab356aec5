"""What the stage adapters share: the run context, what TensorRT can do here, engine bookkeeping."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, Stage, TensorrtSection, Variant
from pipeline.runner import Layout
from runtime.artifacts import (
    read_json,
)
from runtime.configs import from_mapping
from runtime.errors import PipelineError

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the stage functions share."""

    cfg: PipelineConfig
    layout: Layout
    progress: bool = True
    force: frozenset[Stage] = frozenset()
    command: str = ""
    _fit: Any = None

    @property
    def fit_config(self) -> Any:
        """The resolved `train.config.FitConfig` (imported lazily: torch-free, but train/ may be absent)."""
        if self._fit is None:
            from train.config import FitConfig

            self._fit = from_mapping(FitConfig, self.cfg.fit, where=f"{self.cfg.source}: fit")
        return self._fit


def tensorrt_status(cfg: TensorrtSection) -> tuple[bool, str, tuple[str, ...]]:
    """(engines can *run* here, why not as one line, why not per missing part).

    TensorRT importable, a CUDA device opened and, for TensorRT for RTX, a GPU of one of the
    engines' target compute capabilities (an H100/H200, 9.0, is not one). Whether engines can be
    *built* is `tensorrt_build_status`.
    """
    if not cfg.enabled:
        return (
            False,
            "disabled in the config (tensorrt.enabled: false)",
            ("disabled in the config (tensorrt.enabled: false)",),
        )
    reasons = []
    try:
        from runtime.trt.compat import Trt, target_unsupported_reason
        from runtime.trt.cuda import cuda_unavailable_reason

        trt, why = _load_trt(cfg)
        if why:
            reasons.append(f"TensorRT: {why}")
        cuda = cuda_unavailable_reason()
        if cuda:
            reasons.append(f"CUDA/GPU: {cuda}")
        elif isinstance(trt, Trt) and trt.aot:
            from runtime.trt.build import current_gpu

            gpu = current_gpu()
            targets, _default = trt.resolve_targets(cfg.compute_capabilities)
            unsupported = target_unsupported_reason(gpu.compute_capability, targets, gpu.name)
            if unsupported:
                reasons.append(f"CUDA/GPU: {unsupported}")
    except Exception as exc:  # noqa: BLE001 - a broken optional install reads as unavailable
        reasons.append(f"TensorRT probe failed: {type(exc).__name__}: {exc}")
    return (not reasons), "; ".join(reasons), tuple(reasons)


def _load_trt(cfg: TensorrtSection) -> tuple[Any, str]:
    """(the `Trt` of the configured flavour, "") or (None, why not); never raises."""
    try:
        from runtime.trt.compat import Trt

        return Trt.load(flavour=cfg.flavour), ""
    except PipelineError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken install reads as "unavailable"
        return None, f"TensorRT import failed: {type(exc).__name__}: {exc}"


def tensorrt_build_status(cfg: TensorrtSection) -> tuple[bool, str]:
    """(engines can be *built* here, why not): TensorRT for RTX needs no GPU; TensorRT 10/11 do."""
    if not cfg.enabled:
        return False, "disabled in the config (tensorrt.enabled: false)"
    trt, why = _load_trt(cfg)
    if trt is None:
        return False, f"TensorRT: {why}"
    try:
        trt.resolve_targets(cfg.compute_capabilities)
        trt.check_build_options(dla_core=None, version_compatible=False)
    except PipelineError as exc:
        return False, f"TensorRT: {exc}"
    if trt.aot:
        return True, ""
    try:
        from runtime.trt.cuda import cuda_unavailable_reason

        cuda = cuda_unavailable_reason()
    except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
        cuda = f"{type(exc).__name__}: {exc}"
    return (not cuda), (
        f"CUDA/GPU: {cuda} ({trt.label} builds on the GPU it runs on; TensorRT for RTX, "
        "pip install '.[rtx]', builds without one)"
        if cuda
        else ""
    )


def _torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _machine() -> dict[str, Any]:
    """What decides latency numbers besides the model: CPU, usable cores, thread settings."""
    from runtime.env import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu.get("model"),
        "machine": cpu.get("machine"),
        "usable_cores": cpu.get("usable_cores"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
    }


def _dataset_fingerprint(data: Mapping[str, Any]) -> dict[str, Any]:
    """A cheap content fingerprint of a file-backed dataset (relative path, size, mtime of every file).

    Procedural datasets (``synthetic``) are fully described by their config: empty fingerprint.
    """
    root = data.get("root")
    if not root:
        return {}
    import hashlib

    p = Path(root)
    if not p.exists():
        return {"root": str(root), "missing": True}
    digest, count = hashlib.sha256(), 0
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    for q in files:
        st = q.stat()
        digest.update(f"{q.relative_to(p) if q != p else q.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count += 1
    return {"root": str(root), "files": count, "sha256": digest.hexdigest()}


def _engines_wanted(L: Layout, variants: Sequence[Variant]) -> list[tuple[Path, str]]:
    """(ONNX, precision) of every engine the tensorrt stage builds: FP32, FP16 and the TensorRT-form INT8 files."""
    return [(L.onnx, "fp32")] + [(L.quantized(v), v.kind) for v in variants if v.tensorrt_ready]


def _engine_files(L: Layout, variants: Sequence[Variant]) -> list[tuple[Path, Path, str]]:
    """(engine, ONNX, precision) for `_engines_wanted` (engines sit beside their ONNX)."""
    from runtime.trt.build import default_engine_path

    return [(default_engine_path(onnx, p), onnx, p) for onnx, p in _engines_wanted(L, variants)]


def _engine_summaries(L: Layout, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """What report.json says of each engine, from the engine sidecars (never imports TensorRT)."""
    from runtime.artifacts import sidecar_path

    out = []
    for engine, onnx, precision in _engine_files(L, variants):
        if not engine.is_file() or not sidecar_path(engine).is_file():
            continue
        side = _read_optional(sidecar_path(engine))
        key = side.get("key") or {}
        check = side.get("precision_check") or {}
        out.append(
            {
                "engine": L.rel(engine),
                "onnx": L.rel(onnx),
                "precision": precision,
                "flavour": side.get("flavour") or key.get("flavour") or "tensorrt",
                "tensorrt": side.get("tensorrt") or f"TensorRT {key.get('tensorrt_version')}",
                "ahead_of_time": bool(side.get("ahead_of_time")),
                "targets": side.get("target_compute_capabilities") or [],
                "targets_default": side.get("targets_default"),
                "gpu": key.get("gpu_name") or None,
                "compute_capability": key.get("compute_capability") or None,
                "size_bytes": engine.stat().st_size,
                "build_s": side.get("build_s"),
                "built_at": side.get("built_at"),
                "typing": side.get("typing_used"),
                "realized": {
                    k: check.get(k)
                    for k in ("requested", "share", "min_share", "passed", "compute_layers", "counts", "offenders")
                }
                if check
                else None,
                "layers_md": L.rel(engine.with_name(side["layers_md"])) if side.get("layers_md") else None,
            }
        )
    return out


def _read_optional(path: Path) -> dict[str, Any]:
    try:
        body = read_json(path)
    except PipelineError:
        return {}
    return body if isinstance(body, dict) else {}
