"""Model checkpoints: weights plus the deployment contract, written atomically.

``checkpoint.pt`` holds what a later stage needs to rebuild the model without the training
config: the registry name and kwargs, class names in order, the input contract
(`PreprocessSpec`) and the dataset config (so export and quantization can regenerate validation
and calibration images). ``checkpoint.json`` beside it is the human-readable sidecar.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime.artifacts import atomic_write_bytes, sha256_file
from runtime.errors import CheckpointError, PipelineError
from runtime.preprocess import PreprocessSpec

FORMAT = "ferdeploy-checkpoint/1"


@dataclass(frozen=True)
class CheckpointMeta:
    """Everything a checkpoint says about its model, apart from the weights."""

    model_name: str
    num_classes: int
    class_names: tuple[str, ...]
    preprocess: PreprocessSpec
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    *,
    model_name: str,
    class_names: tuple[str, ...] | list[str],
    preprocess: PreprocessSpec,
    model_kwargs: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``model``'s weights and deployment contract to ``path``."""
    payload = {
        "format": FORMAT,
        "model_name": model_name,
        "num_classes": len(class_names),
        "model_kwargs": dict(model_kwargs or {}),
        "class_names": list(class_names),
        "preprocess": preprocess.to_dict(),
        "dataset": dict(dataset or {}),
        "state_dict": {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()},
        **(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the real model in .module.
    return getattr(model, "module", model)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's raw payload (tensors on CPU), with clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; train one with `python -m train fit --config ...`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt pickles
        raise CheckpointError(
            f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc}); it is corrupt or truncated"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a ferdeploy checkpoint (format {got!r}, expected {FORMAT!r})")
    return payload


def load_checkpoint(path: str | Path) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint in eval mode, with its metadata.

    Raises:
        CheckpointError: when the file is missing, corrupt, or its weights do not fit the model.
    """
    from train.models import create_model

    payload = read_checkpoint(path)
    names, n = list(payload.get("class_names") or []), int(payload.get("num_classes") or 0)
    if len(names) != n:
        raise CheckpointError(
            f"{path}: the checkpoint lists {len(names)} class names {names} but its head has {n} outputs; it was "
            "edited or written by another tool. Retrain it with `python -m train fit`, or fix class_names to "
            f"{n} entries in the order the model was trained on"
        )
    try:
        model = create_model(payload["model_name"], num_classes=int(payload["num_classes"]), **payload["model_kwargs"])
    except PipelineError as exc:
        raise CheckpointError(f"{path}: cannot rebuild model: {exc}") from exc
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(payload["state_dict"], strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{path}: weights do not fit model {payload['model_name']!r} with {n} classes "
            f"({'; '.join(line.strip() for line in first[:4])}); the checkpoint is corrupt or was edited: "
            "retrain it with `python -m train fit`"
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit model {payload['model_name']!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval()
    meta = CheckpointMeta(
        model_name=payload["model_name"],
        num_classes=int(payload["num_classes"]),
        class_names=tuple(payload["class_names"]),
        preprocess=PreprocessSpec.from_dict(payload["preprocess"]),
        model_kwargs=dict(payload["model_kwargs"]),
        dataset=dict(payload.get("dataset", {})),
        sha256=sha256_file(path),
        path=str(path),
    )
    return model, meta
