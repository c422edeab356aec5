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


# The one exit-code table. Every CLI returns these names, never a bare number; docs/errors.md is
# tested against `EXIT_CODES` (tests/reliability/test_errors_doc.py). Codes 4 and 5 are outcomes of
# one command each (infer, pipeline), not errors; 74/75/70 follow sysexits (EX_IOERR, EX_TEMPFAIL,
# EX_SOFTWARE); 130/143 are the shell's 128 + SIGINT/SIGTERM.
EXIT_OK = 0
EXIT_ERROR = 1  # a pipeline error: bad input, a failed check (preflight, parity, lint), a failed stage
EXIT_USAGE = 2  # bad usage or config (argparse uses 2 as well)
EXIT_MISSING = 3  # a missing optional dependency
EXIT_PARTIAL = 4  # infer: done, but some inputs were unreadable
EXIT_PARITY = 4  # pipeline: a parity row failed and parity.gate is true (the report is written)
EXIT_NOTHING = 5  # infer: nothing was classified
EXIT_BUG = 70  # an internal error (a bug, not the user's input)
EXIT_STORAGE = 74  # an output cannot be written
EXIT_LOCKED = 75  # the output folder is locked by another run
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT
EXIT_TERMINATED = 143  # SIGTERM

#: code -> meaning, for help texts and docs/errors.md.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_ERROR: "a pipeline error (bad input, a failed check or stage; the message says what to fix)",
    EXIT_USAGE: "bad usage or config",
    EXIT_MISSING: "a missing optional dependency (the message names the extra to install)",
    EXIT_PARTIAL: "infer: done, but some inputs were unreadable; pipeline: a parity row failed and parity.gate is true",
    EXIT_NOTHING: "infer: nothing was classified (no readable input, no face)",
    EXIT_BUG: "an internal error (a bug): rerun with --debug and report it",
    EXIT_STORAGE: "an output cannot be written (permissions, read-only, disk full)",
    EXIT_LOCKED: "the output folder is in use by another run",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_TERMINATED: "terminated (SIGTERM)",
}
_GENERAL = (
    EXIT_OK,
    EXIT_ERROR,
    EXIT_USAGE,
    EXIT_MISSING,
    EXIT_BUG,
    EXIT_STORAGE,
    EXIT_LOCKED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
)
_OWN = {
    "infer": {
        EXIT_PARTIAL: "done, but some inputs were unreadable",
        EXIT_NOTHING: "nothing was classified (no readable input, no face)",
    },
    "pipeline": {EXIT_PARITY: "a parity row failed and parity.gate is true (the report is written)"},
}


def exit_codes_help(command: str | None = None) -> str:
    """The exit codes a command returns, as one line for an argparse epilog (from `EXIT_CODES`).

    Args:
        command: ``"infer"`` or ``"pipeline"`` add their own outcome codes (4, 5), ``"all"`` lists every
            code (a dispatcher's help); others get the general ones.
    """
    meanings = {code: EXIT_CODES[code].split(" (")[0] for code in (EXIT_CODES if command == "all" else _GENERAL)}
    meanings.update(_OWN.get(command or "", {}))
    return "exit codes: " + "; ".join(f"{c} {m}" for c, m in sorted(meanings.items())) + " (docs/errors.md)"


def exit_code_for(exc: PipelineError) -> int:
    """The CLI exit code for a pipeline error (`ConfigError` usage, missing dependency, storage, lock, else error)."""
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
