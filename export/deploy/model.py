"""What is being deployed: the model file, its contract, precision, tensors and (for a plan) engine.

`load_source` reads an ``.onnx`` (its contract from ``metadata_props``) or a TensorRT ``.engine``
(its sidecar, written by ``python -m runtime build``, names the TensorRT version, the GPU and the
ONNX it was built from; the contract is read from that ONNX, whose sha256 must be the one the
sidecar recorded). Nothing is written and no TensorRT is imported: the plan itself is not opened.

`check_engine_gpu` refuses a plan built for another GPU than the one it will be served on: a
TensorRT plan only runs on the GPU model (compute capability) that built it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import read_json, sha256_file, sidecar_path
from runtime.contract import DeploymentContract, read_contract
from runtime.errors import ArtifactError, ConfigError, EngineError

log = logging.getLogger(__name__)

# ONNX TensorProto element types -> numpy dtypes (the ones a classifier's I/O can have).
_ONNX_DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
}


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: name, numpy dtype and shape (None for a dynamic dimension)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...]

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.shape) and self.shape[0] is None


@dataclass(frozen=True)
class EngineInfo:
    """What an engine's sidecar says about the plan (read defensively: older and newer sidecars differ).

    Attributes:
        tensorrt_version: TensorRT (or TensorRT-for-RTX) version that built the plan.
        gpu_name: CUDA device name the plan was built on ("" when the sidecar has none).
        compute_capabilities: Compute capabilities the plan runs on (``"8.7"``...).
        flavour: ``tensorrt`` (the standard runtime) or ``tensorrt-rtx``.
        profile: Batch optimization profile ``(min, opt, max)`` (None when not recorded).
        version_compatible: Whether the plan was built version-compatible.
        sidecar: The sidecar file.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capabilities: tuple[str, ...]
    flavour: str
    profile: tuple[int, int, int] | None
    version_compatible: bool
    sidecar: Path


@dataclass(frozen=True)
class ModelSource:
    """A model ready to be deployed.

    Attributes:
        path: The file given (``.onnx`` or ``.engine``).
        kind: ``onnx`` or ``engine``.
        onnx: The ONNX that carries the contract (``path`` itself, or the engine's source).
        contract: The deployment contract.
        precision: ``fp32``, ``fp16`` or ``int8`` (quantize sidecar, else the graph; the engine's key).
        precision_source: Where the precision came from.
        input: The image input tensor.
        outputs: Every graph output; ``logits`` is the prediction.
        engine: Engine details (None for an ONNX).
        sha256: Content hash of ``path``.
    """

    path: Path
    kind: str
    onnx: Path
    contract: DeploymentContract
    precision: str
    precision_source: str
    input: Tensor
    outputs: tuple[Tensor, ...]
    engine: EngineInfo | None = None
    sha256: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def logits(self) -> Tensor:
        """The prediction output: ``logits`` when present, else the first output."""
        by_name = {t.name: t for t in self.outputs}
        for name in ("logits", *self.contract.output_names):
            if name in by_name:
                return by_name[name]
        return self.outputs[0]


def graph_io(path: Path) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """(inputs, outputs) of an ONNX graph, initializers excluded; external weights are not read."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends
        raise ArtifactError(f"{path}: not an ONNX model ({type(exc).__name__}: {exc})") from exc
    inits = {i.name for i in model.graph.initializer}

    def tensor(v) -> Tensor:
        tt = v.type.tensor_type
        dtype = _ONNX_DTYPES.get(tt.elem_type)
        if dtype is None:
            raise ArtifactError(
                f"{path}: tensor {v.name!r} has ONNX element type {tt.elem_type}, which no deploy "
                f"target here maps; expected float32/float16/integer tensors"
            )
        dims = tuple((d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None) for d in tt.shape.dim)
        return Tensor(v.name, np.dtype(dtype), dims)

    return (
        tuple(tensor(v) for v in model.graph.input if v.name not in inits),
        tuple(tensor(v) for v in model.graph.output),
    )


def _precision_of(path: Path) -> tuple[str, str]:
    from runtime.parity import detect_precision

    precision, source, _method = detect_precision(path)
    return precision.value, source


def load_source(path: str | os.PathLike, *, onnx: str | os.PathLike | None = None) -> ModelSource:
    """Read the model to deploy; raise a `PipelineError` saying what is wrong and how to fix it.

    Args:
        path: ``model.onnx`` (any precision) or a TensorRT ``.engine`` with its sidecar.
        onnx: For an engine, the ONNX it was built from (default: the path its sidecar records).

    Raises:
        ArtifactError: missing file, no contract, no or unreadable engine sidecar, an ONNX that is
            not the one the engine was built from.
        ConfigError: a file that is neither ``.onnx`` nor ``.engine``/``.plan``.
    """
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(
            f"{p}: model file not found; give an exported model.onnx (python -m export onnx) or a "
            "TensorRT engine built by python -m runtime build"
        )
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        if onnx is not None and Path(onnx).resolve() != p.resolve():
            raise ConfigError(f"--onnx is only for an .engine model; {p} is itself an ONNX model")
        return _load_onnx(p, kind="onnx", sha=sha256_file(p))
    if suffix in (".engine", ".plan"):
        info, side = _read_engine_sidecar(p)
        src = _engine_onnx(p, side, onnx)
        base = _load_onnx(src, kind="engine", sha=sha256_file(p))
        key = side.get("key") if isinstance(side.get("key"), Mapping) else {}
        precision = str(key.get("precision") or base.precision)
        return ModelSource(
            path=p,
            kind="engine",
            onnx=src,
            contract=base.contract,
            precision=precision,
            precision_source="engine sidecar" if key.get("precision") else base.precision_source,
            input=base.input,
            outputs=base.outputs,
            engine=info,
            sha256=base.sha256,
        )
    raise ConfigError(
        f"--model {p}: expected an .onnx model or a TensorRT .engine/.plan, got a {suffix or 'suffix-less'} file"
    )


def _load_onnx(p: Path, *, kind: str, sha: str) -> ModelSource:
    contract = read_contract(p)  # ArtifactError naming the missing keys and how to re-export
    inputs, outputs = graph_io(p)
    if len(inputs) != 1:
        raise ArtifactError(
            f"{p}: the graph has {len(inputs)} inputs {[t.name for t in inputs]}; a deployed "
            "classifier takes exactly one image input"
        )
    if inputs[0].name != contract.input_name:
        raise ArtifactError(
            f"{p}: the contract names input {contract.input_name!r} but the graph's input is "
            f"{inputs[0].name!r}; re-export the model with python -m export onnx"
        )
    want = (*contract.input_shape,)
    got = inputs[0].shape
    if len(got) != 4 or tuple(got[1:]) != want:
        raise ArtifactError(
            f"{p}: input {got} does not match the contract's (batch, {', '.join(map(str, want))}); "
            "the model and its contract disagree: re-export it"
        )
    if not outputs:
        raise ArtifactError(f"{p}: the graph has no outputs")
    precision, source = _precision_of(p)
    src = ModelSource(
        path=p,
        kind=kind,
        onnx=p,
        contract=contract,
        precision=precision,
        precision_source=source,
        input=inputs[0],
        outputs=outputs,
        sha256=sha,
    )
    n = src.logits.shape[-1] if src.logits.shape else None
    if n is not None and n != contract.num_classes:
        raise ArtifactError(
            f"{p}: output {src.logits.name!r} has {n} classes but the contract lists "
            f"{contract.num_classes} ({list(contract.class_names)}); re-export the model"
        )
    return src


def _read_engine_sidecar(plan: Path) -> tuple[EngineInfo, dict[str, Any]]:
    side_path = sidecar_path(plan)
    if not side_path.is_file():
        raise ArtifactError(
            f"{plan}: no sidecar {side_path.name} beside it, so nothing says which TensorRT version "
            "and GPU built it (a plan only runs there); rebuild it with python -m runtime build, "
            "which writes the sidecar, or deploy the ONNX instead"
        )
    side = read_json(side_path)
    if not isinstance(side, Mapping):
        raise ArtifactError(f"{side_path}: expected a JSON object (the engine sidecar), got {type(side).__name__}")
    key = side.get("key") if isinstance(side.get("key"), Mapping) else {}
    options = key.get("options") if isinstance(key.get("options"), Mapping) else {}
    version = str(key.get("tensorrt_version") or side.get("tensorrt_version") or "")
    if not version:
        raise ArtifactError(
            f"{side_path}: the sidecar records no TensorRT version (key.tensorrt_version); it is "
            "not an engine sidecar of python -m runtime build: rebuild the engine"
        )
    ccs: list[str] = []
    for holder in (key, side, options):
        for name in ("compute_capability", "target_compute_capabilities", "compute_capabilities", "targets"):
            value = holder.get(name)
            if isinstance(value, str) and "," in value:  # TensorRT-for-RTX key: "8.9,12.0"
                value = value.split(",")
            values = value if isinstance(value, (list, tuple)) else [value]
            ccs += [_norm_cc(v) for v in values if v not in (None, "")]
    flavour = str(
        side.get("flavour") or side.get("flavor") or key.get("flavour") or options.get("flavour") or "tensorrt"
    ).lower()
    profile = None
    raw = key.get("profile") or side.get("profile")
    if raw:
        try:
            parts = [int(v) for v in str(raw).split(":")]
            profile = tuple(parts * 3 if len(parts) == 1 else parts)  # type: ignore[assignment]
        except ValueError:
            log.warning(
                "%s: unreadable batch profile %r; the Triton batch settings fall back to --batch", side_path, raw
            )
        if profile is not None and len(profile) != 3:
            profile = None
    info = EngineInfo(
        tensorrt_version=version,
        gpu_name=str(key.get("gpu_name") or side.get("gpu_name") or ""),
        compute_capabilities=tuple(dict.fromkeys(c for c in ccs if c)),
        flavour=flavour,
        profile=profile,
        version_compatible=bool(side.get("version_compatible", options.get("version_compatible", False))),
        sidecar=side_path,
    )
    return info, dict(side)


def _engine_onnx(plan: Path, side: Mapping[str, Any], given: str | os.PathLike | None) -> Path:
    """The ONNX an engine was built from, checked against the sidecar's sha256."""
    key = side.get("key") if isinstance(side.get("key"), Mapping) else {}
    want_sha = str(key.get("onnx_sha256") or "")
    if given is not None:
        candidates = [Path(given)]
    else:
        recorded = side.get("onnx")
        if not recorded and isinstance(side.get("input"), Mapping):
            recorded = side["input"].get("path")
        if not recorded:
            raise ArtifactError(
                f"{sidecar_path(plan)}: the sidecar does not name the ONNX the engine was built from; "
                "pass it with --onnx MODEL.onnx (its contract is deployed with the plan)"
            )
        r = Path(str(recorded))
        candidates = [r, plan.parent / r, plan.parent / r.name]
    for c in candidates:
        if c.is_file():
            if want_sha and sha256_file(c) != want_sha:
                raise ArtifactError(
                    f"{c}: this is not the ONNX {plan.name} was built from (sha256 differs from the "
                    f"sidecar's onnx_sha256 {want_sha[:12]}...); pass the right one with --onnx or "
                    "rebuild the engine from this ONNX with python -m runtime build"
                )
            return c
    raise ArtifactError(
        f"{plan}: the ONNX it was built from is not found (tried {[str(c) for c in candidates]}); "
        "pass it with --onnx MODEL.onnx: the engine is deployed with that ONNX's contract"
    )


def _norm_cc(value: Any) -> str:
    """``"sm_87"``, ``"87"``, ``"8.7"``, ``(8, 7)`` -> ``"8.7"``; "" when unreadable."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{int(value[0])}.{int(value[1])}"
    text = str(value).strip().lower().removeprefix("sm_").removeprefix("sm").removeprefix("compute_")
    m = re.fullmatch(r"(\d+)\.(\d+)", text)
    if m:
        return f"{int(m.group(1))}.{int(m.group(2))}"
    m = re.fullmatch(r"(\d+)(\d)", text)  # sm_87 -> 8.7, sm_120 -> 12.0
    return f"{m.group(1)}.{m.group(2)}" if m else ""


def _norm_name(name: str) -> str:
    return " ".join(name.lower().replace("nvidia", " ").split())


def check_engine_gpu(info: EngineInfo, gpu: str | None) -> str:
    """Refuse a plan that was not built for ``gpu`` (a device name or a compute capability).

    Returns:
        A one-line description of the match, for the report.

    Raises:
        ConfigError: ``gpu`` not given.
        EngineError: the sidecar names another GPU / compute capability, or records neither.
    """
    built = f"{info.gpu_name or 'unknown GPU'} (compute capability {', '.join(info.compute_capabilities) or 'unknown'})"
    if not gpu or not str(gpu).strip():
        raise ConfigError(
            f"a TensorRT plan runs only on the GPU it was built for ({built}, TensorRT "
            f"{info.tensorrt_version}); say which GPU the server has with --gpu NAME or --gpu 8.7 "
            "(compute capability) so the deploy can check it"
        )
    cc = _norm_cc(gpu)
    if cc:
        if not info.compute_capabilities:
            raise EngineError(
                f"{info.sidecar}: the sidecar records no compute capability, so the plan cannot be "
                f"checked against --gpu {gpu}; rebuild it with python -m runtime build"
            )
        if cc not in info.compute_capabilities:
            raise EngineError(
                f"the engine was built for {built}, not for compute capability {cc} (--gpu {gpu}): "
                "a TensorRT plan does not run on another GPU model. Build an engine on the target GPU "
                "(python -m runtime build --onnx MODEL.onnx) or deploy the ONNX (platform "
                "onnxruntime_onnx)"
            )
        return f"compute capability {cc} matches the plan's {built}"
    if not info.gpu_name:
        raise EngineError(
            f"{info.sidecar}: the sidecar records no GPU name; check by compute capability instead "
            f"(--gpu {', '.join(info.compute_capabilities) or 'X.Y'})"
        )
    if _norm_name(gpu) != _norm_name(info.gpu_name):
        raise EngineError(
            f"the engine was built on {built}, not on {gpu!r} (--gpu): a TensorRT plan does not run on "
            "another GPU model. Build an engine on the target GPU (python -m runtime build --onnx "
            "MODEL.onnx) or deploy the ONNX (platform onnxruntime_onnx)"
        )
    return f"GPU {gpu!r} matches the plan's {built}"
