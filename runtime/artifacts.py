"""Atomic writes, content hashes, library versions and JSON sidecars.

Every artifact the pipeline writes goes through `atomic_write_*`: the bytes land in a temporary
file in the same folder and are renamed over the target, so an interrupted run never leaves a
half-written file and never destroys the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError, storage_error

SIDECAR_SUFFIX = ".json"
_LIBRARIES = ("numpy", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "nncf", "tensorrt", "cv2", "PIL")


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None], *, durable: bool = True) -> Path:
    """Call ``writer(tmp_path)`` then rename the temporary file onto ``path``.

    The temporary file is in the same folder, so the rename is atomic on POSIX. The data is flushed
    to the disk (fsync) before the rename and the folder entry after it, so a power cut leaves
    either the old or the new file, never an empty one. On any error the temporary file is removed
    and the previous content of ``path`` (if any) is untouched. The file gets the usual permissions
    (0666 less the umask), not the owner-only ones of a temporary file.

    ``durable=False`` skips the two fsyncs (about 1 ms per file here, more on eMMC) for many small,
    re-creatable outputs such as per-frame annotated images; the rename stays atomic.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise _as_storage_error(exc, path) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        writer(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        if durable:
            _fsync(tmp_path)
        os.replace(tmp_path, path)
        if durable:
            _fsync(path.parent)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _as_storage_error(exc, path) from exc
        raise
    return path


TMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask is process-wide and not thread-safe


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's) data to the disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def leftover_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files (and export's temporary folders) an interrupted writer left in ``folder``.

    Names follow `atomic_write`: ``.NAME.<random>.tmp``; annotated videos ``.NAME.partial.EXT``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(".") and (p.name.endswith(TMP_SUFFIX) or ".partial." in p.name)
    )


def _as_storage_error(exc: OSError, path: Path) -> BaseException:
    """`StorageError` naming ``path`` for "cannot write here" errors (disk full, read-only...), else ``exc``."""
    if exc.filename is None or Path(exc.filename).name.startswith(f".{path.name}."):
        exc.filename = str(path)  # name the artifact, not its temporary file
    return storage_error(exc) or exc


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and isinstance(obj.value, str):  # str Enums
        return obj.value
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising `ArtifactError` with the path when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}); delete it and rerun the stage that writes it") from exc


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries that decide an artifact's content; None for absent ones.

    Only modules already importable are reported; nothing is installed and torch is imported only
    if it is already loaded (so the torch-free runtime stays torch-free).
    """
    import importlib
    import importlib.metadata as md
    import sys

    versions: dict[str, str | None] = {"python": platform.python_version()}
    dist_names = {"cv2": "opencv-python-headless", "PIL": "pillow"}
    for name in _LIBRARIES:
        if name == "torch" and "torch" not in sys.modules:
            try:
                versions[name] = md.version("torch")
            except md.PackageNotFoundError:
                versions[name] = None
            continue
        try:
            versions[name] = md.version(dist_names.get(name, name))
        except md.PackageNotFoundError:
            try:
                mod = importlib.import_module(name) if name in sys.modules else None
                versions[name] = getattr(mod, "__version__", None) if mod else None
            except ImportError:
                versions[name] = None
    return versions


def sidecar_path(artifact: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + SIDECAR_SUFFIX)


def write_sidecar(artifact: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus the artifact's own sha256 and the library versions) beside it."""
    artifact = Path(artifact)
    body = dict(payload)
    body.setdefault("versions", library_versions())
    if artifact.is_file():
        body["artifact_sha256"] = sha256_file(artifact)
    return atomic_write_json(sidecar_path(artifact), body)


def read_sidecar(artifact: str | os.PathLike) -> dict[str, Any]:
    """Read the JSON sidecar of ``artifact``."""
    return read_json(sidecar_path(artifact))
