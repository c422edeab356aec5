"""Engine cache: what a plan was built from, and whether an existing plan may be reused.

A TensorRT plan is only valid for the TensorRT version and GPU that built it (version-compatible
plans relax the version, not the GPU). The key therefore holds the ONNX sha256, the TensorRT
flavour and version, GPU name and compute capability, precision, the optimization profile and every
build option that changes the plan. A TensorRT for RTX plan is built ahead of time without a GPU:
its key has no GPU name and records the *target* compute capabilities instead (``targets``:
``"default"`` or ``"8.6,8.9,12.0"``). It is written as a JSON sidecar beside the plan (``model.engine.json``);
`decide` compares it with what a build would produce now and says, in words, why a rebuild is
needed. Nothing is loaded blindly: a plan without a matching sidecar is rebuilt, and a plan that
fails to deserialize is rebuilt too (`runtime.trt.build.build_engine`).

No TensorRT import here: pure data and file checks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runtime.artifacts import read_sidecar, sha256_file, sidecar_path, write_sidecar
from runtime.errors import ArtifactError, ConfigError

SIDECAR_FORMAT = "ferdeploy-trt-engine/1"


@dataclass(frozen=True)
class BatchProfile:
    """Optimization profile of the dynamic batch axis: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"batch profile {name} must be an integer >= 1, got {v!r}")
        if not self.min <= self.opt <= self.max:
            raise ConfigError(
                f"batch profile must satisfy min <= opt <= max, got {self.min}:{self.opt}:{self.max}; "
                "e.g. --batch 1:8:32"
            )

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"1:8:32"`` -> BatchProfile(1, 8, 32); ``"8"`` -> a fixed batch of 8."""
        parts = str(text).strip().split(":")
        if len(parts) == 1:
            parts = parts * 3
        if len(parts) != 3:
            raise ConfigError(f"--batch takes MIN:OPT:MAX (e.g. 1:8:32) or one size, got {text!r}")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"--batch takes integers MIN:OPT:MAX (e.g. 1:8:32), got {text!r}") from None
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class GpuIdentity:
    """The device a plan is built for."""

    name: str
    compute_capability: str  # "8.7" (Orin), "9.0" (H100)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("GPU name is empty")


@dataclass(frozen=True)
class EngineKey:
    """Everything that decides a plan's content; equal keys mean a plan may be reused.

    Attributes:
        onnx_sha256: sha256 of the ONNX file.
        tensorrt_version: ``trt.__version__`` that builds (or built) the plan.
        gpu_name: CUDA device name.
        compute_capability: ``"major.minor"``.
        precision: ``fp32``, ``fp16`` or ``int8`` as requested.
        profile: Batch optimization profile ``min:opt:max``.
        options: Other build options that change the plan (typing, workspace, optimization level,
            DLA core, version compatibility, aux streams).
        flavour: ``tensorrt`` (10.x/11.x) or ``rtx`` (TensorRT for RTX); sidecars written before
            the flavour existed read as ``tensorrt``.
        targets: Ahead-of-time builds (RTX): the target compute capabilities, ``"default"`` for the
            flavour's portable default; ``""`` for a build for the GPU it ran on. ``gpu_name`` and
            ``compute_capability`` are ``""`` for an ahead-of-time build.
    """

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: str
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    flavour: str = "tensorrt"
    targets: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["options"] = dict(sorted(self.options.items()))
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineKey:
        try:
            return cls(
                **{
                    k: data[k]
                    for k in (
                        "onnx_sha256",
                        "tensorrt_version",
                        "gpu_name",
                        "compute_capability",
                        "precision",
                        "profile",
                    )
                },
                options=dict(data.get("options", {})),
                flavour=str(data.get("flavour", "tensorrt")),
                targets=str(data.get("targets", "")),
            )
        except KeyError as exc:
            raise ArtifactError(f"engine key is missing field {exc}") from None

    def digest(self) -> str:
        """Short stable hash of the key (file names, logs)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def key_differences(old: EngineKey, new: EngineKey) -> list[str]:
    """Human-readable differences, e.g. ``tensorrt_version: 10.3.0 -> 11.4.0``."""
    a, b = old.to_dict(), new.to_dict()
    out = []
    for k in (
        "flavour",
        "onnx_sha256",
        "tensorrt_version",
        "gpu_name",
        "compute_capability",
        "targets",
        "precision",
        "profile",
    ):
        if a[k] != b[k]:
            out.append(f"{k}: {a[k]} -> {b[k]}")
    for k in sorted(set(a["options"]) | set(b["options"])):
        if a["options"].get(k) != b["options"].get(k):
            out.append(f"options.{k}: {a['options'].get(k)!r} -> {b['options'].get(k)!r}")
    return out


@dataclass(frozen=True)
class CacheDecision:
    """Whether to reuse the plan on disk, and why (logged and stored in the build result)."""

    reuse: bool
    reason: str


def decide(plan: str | os.PathLike, key: EngineKey) -> CacheDecision:
    """Reuse ``plan`` only if its sidecar exists, matches ``key`` and still describes the file.

    Reasons to rebuild: no plan; no or unreadable sidecar; a sidecar of another format; a key
    difference (listed field by field: another TensorRT version, another GPU, another ONNX...);
    a plan whose sha256 is not the one the sidecar recorded (overwritten or truncated).
    """
    plan = Path(plan)
    if not plan.is_file():
        return CacheDecision(False, f"no engine at {plan}")
    if not sidecar_path(plan).is_file():
        return CacheDecision(False, f"{plan} has no sidecar {sidecar_path(plan).name}: cannot tell what built it")
    try:
        side = read_sidecar(plan)
    except ArtifactError as exc:
        return CacheDecision(False, f"sidecar unreadable ({exc})")
    if side.get("format") != SIDECAR_FORMAT:
        return CacheDecision(False, f"sidecar format {side.get('format')!r} is not {SIDECAR_FORMAT!r}")
    try:
        old = EngineKey.from_dict(side.get("key", {}))
    except ArtifactError as exc:
        return CacheDecision(False, f"sidecar key invalid ({exc})")
    diffs = key_differences(old, key)
    if diffs:
        return CacheDecision(False, "built with different inputs: " + "; ".join(diffs))
    recorded = side.get("artifact_sha256")
    if recorded and recorded != sha256_file(plan):
        return CacheDecision(False, f"{plan.name} changed since its sidecar was written (sha256 mismatch)")
    return CacheDecision(True, f"cached engine matches (key {key.digest()})")


def write_engine_sidecar(plan: str | os.PathLike, key: EngineKey, extra: Mapping[str, Any]) -> Path:
    """Write ``plan``'s sidecar: format, key, key digest and ``extra`` (timing, precision report...)."""
    payload = {"format": SIDECAR_FORMAT, "key": key.to_dict(), "key_digest": key.digest(), **dict(extra)}
    return write_sidecar(plan, payload)


def read_engine_key(plan: str | os.PathLike) -> EngineKey:
    """The key recorded beside ``plan`` (raises `ArtifactError` when missing or invalid)."""
    side = read_sidecar(plan)
    if side.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"{sidecar_path(plan)}: not a TensorRT engine sidecar (format {side.get('format')!r})")
    return EngineKey.from_dict(side.get("key", {}))
