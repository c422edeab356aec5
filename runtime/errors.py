"""One error hierarchy for the whole pipeline.

Messages say what was received, what was expected and how to fix it. CLIs catch
`PipelineError`, log its message and exit non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """A configuration file or command-line option is invalid."""


class DataError(PipelineError):
    """A dataset, image or annotation file is missing, corrupt or malformed."""


class ModelError(PipelineError):
    """A model name, input shape or state dict does not fit the architecture."""


class CheckpointError(PipelineError):
    """A checkpoint or its sidecar is missing, corrupt or from an incompatible run."""


class ArtifactError(PipelineError):
    """An artifact (ONNX, engine, report) or its JSON sidecar is missing or inconsistent."""


class ExportError(PipelineError):
    """Export or preflight found a problem; the message names the trap and its fix.

    Attributes:
        findings: Preflight findings behind the error (possibly empty).
    """

    def __init__(self, message: str, findings: tuple = ()) -> None:
        super().__init__(message)
        self.findings = tuple(findings)


class QuantizationError(PipelineError):
    """Quantization (calibration set, NNCF/onnxruntime PTQ, FP16 conversion, Q/DQ lint) failed."""


class InferenceError(DataError):
    """An inference input does not fit the model's inputs (name, rank, dtype, size) or holds NaN/Inf."""


class EngineError(PipelineError):
    """A TensorRT engine or its sidecar is corrupt, or was built by another TensorRT or GPU."""


class MissingDependencyError(PipelineError):
    """An optional dependency is not installed; the message names the extra to install."""


class StorageError(PipelineError):
    """An output cannot be written: the folder is not writable or the disk is full.

    Whatever was already at the target path is left untouched.
    """


class LockedError(PipelineError):
    """Another run holds the lock on the output folder; two runs must not interleave there."""


# Exit codes shared by every CLI (docs/errors.md): 0 done; 1 a pipeline error (bad input, a failed
# check); 2 bad usage or config; 3 a missing optional dependency (TensorRT, a face detector);
# 74 an output that cannot be written (permissions, disk full); 75 the output folder is locked by
# another run; 130 interrupted (Ctrl-C / SIGINT); 143 terminated (SIGTERM).
EXIT_ERROR, EXIT_USAGE, EXIT_MISSING = 1, 2, 3
EXIT_STORAGE, EXIT_LOCKED = 74, 75  # sysexits EX_IOERR, EX_TEMPFAIL (4 and 5 mean other things to `infer`)
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143


def exit_code_for(exc: PipelineError) -> int:
    """The CLI exit code for a pipeline error (config 2, missing dependency 3, storage 74, lock 75, other 1)."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, MissingDependencyError):
        return EXIT_MISSING
    if isinstance(exc, StorageError):
        return EXIT_STORAGE
    if isinstance(exc, LockedError):
        return EXIT_LOCKED
    return EXIT_ERROR


def require(module: str, extra: str):
    """Import an optional dependency or raise an error that names the extra to install.

    Args:
        module: Importable module name, e.g. ``"torch"``.
        extra: The project extra that provides it, e.g. ``"train"``.

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - exercised only where the module is absent
        raise MissingDependencyError(
            f"'{module}' is not installed ({exc}). Install it with: pip install '.[{extra}]'"
        ) from exc


# errno values that mean "this output cannot be written here", whatever the command.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device: free some space or choose an output folder on another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose an output folder on another disk",
    errno.EFBIG: "file too large for this file system or the process's file-size limit (ulimit -f): free space, "
                 "raise the limit or choose another disk",
    errno.EACCES: "permission denied: choose a writable output folder or fix its permissions",
    errno.EPERM: "operation not permitted: choose a writable output folder or fix its permissions",
    errno.EROFS: "read-only file system: choose an output folder on a writable disk",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another output path",
    errno.EISDIR: "the path is a folder, not a file: choose another output path",
}


def storage_error(exc: OSError, action: str = "write") -> StorageError | None:
    """The `StorageError` for an `OSError` that means "cannot write here", else None."""
    hint = _STORAGE_ERRNOS.get(exc.errno if exc.errno is not None else -1)
    if hint is None:
        return None
    where = exc.filename or "the output"
    return StorageError(f"cannot {action} {where}: {hint}. Anything already at that path was left untouched.")
