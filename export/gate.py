"""The one gate every ONNX file passes before the project renames it into place.

Every writer of an ONNX artifact (export, INT8 of every method and target, FP16, any graph rewrite)
calls `write_onnx` (or, for a file it already wrote into a private folder, `check_onnx_file` before
its own rename). The gate runs:

1. ``onnx.checker.check_model(path, full_check=True)``: topological order, types, opset rules
   (onnxruntime loads graphs the checker rejects, so "it runs" proves nothing; other consumers,
   TensorRT's parser and Polygraphy among them, need a valid model);
2. the project's structural preflight (`export.preflight.check_graph`): strict shape inference,
   I/O names, external data, and, for files made for TensorRT, the op/opset support table.

A file that fails is not written: the temporary file is removed, the previous file at the target
path is untouched, and `ArtifactGateError` names the stage, the failed check and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runtime.artifacts import atomic_write
from runtime.errors import ArtifactError

log = logging.getLogger(__name__)

# Findings that are about TensorRT's support table, not about the file being valid ONNX: they do
# not block a file made for onnxruntime on the CPU (its Q/DQ form is not meant for TensorRT).
TENSORRT_ONLY_CODES = frozenset({"OP_UNSUPPORTED", "OP_UNVERIFIED", "OP_RESTRICTED", "OPSET_UNSUPPORTED"})


class ArtifactGateError(ArtifactError):
    """An ONNX file the project produced failed the artifact gate; nothing was written."""

    def __init__(self, message: str, *, stage: str, check: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.check = check


def check_onnx_file(
    path: str | os.PathLike, *, stage: str, target: str = "tensorrt", display: str | None = None
) -> None:
    """Raise `ArtifactGateError` unless the ONNX file at ``path`` passes the gate.

    Args:
        path: The candidate file (typically a temporary file beside its final name).
        stage: Who wrote it (``export``, ``quantize int8 (nncf, tensorrt)``, ``quantize fp16`` ...),
            named in the error.
        target: ``tensorrt`` (also enforce the TensorRT op table) or ``cpu``.
        display: The path to name in messages (the final name, not the temporary one).
    """
    from export.preflight import Severity, check_graph

    shown = display or str(path)
    findings, _facts = check_graph(path)
    errors = [
        f
        for f in findings
        if f.severity is Severity.ERROR and not (target != "tensorrt" and f.code in TENSORRT_ONLY_CODES)
    ]
    if errors:
        first = errors[0]
        more = (
            f" (and {len(errors) - 1} more: {', '.join(sorted({f.code for f in errors[1:]}))})"
            if len(errors) > 1
            else ""
        )
        raise ArtifactGateError(
            f"{stage}: the ONNX file it produced for {shown} fails the artifact gate, check {first.code}: "
            f"{first.message}{more}. Nothing was written; an existing {shown} is unchanged. "
            f"Fix: {first.fix or 'report this as a bug in ' + stage + ' (the file it makes must be valid ONNX)'}",
            stage=stage,
            check=first.code,
        )


def write_onnx(model, out: str | os.PathLike, *, stage: str, target: str = "tensorrt") -> Path:
    """Atomically write ``model`` to ``out`` if it passes the gate (`check_onnx_file`).

    Raises:
        ArtifactGateError: the model fails a check (nothing written, ``out`` untouched).
        StorageError: the folder is not writable or the disk is full.
    """
    import onnx

    out = Path(out)

    def writer(tmp: Path) -> None:
        onnx.save(model, str(tmp))
        check_onnx_file(tmp, stage=stage, target=target, display=str(out))

    atomic_write(out, writer)
    log.debug("%s: %s passed the artifact gate", stage, out)
    return out
