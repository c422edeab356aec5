"""One run per output folder: an advisory lock that two runs cannot both hold.

`output_lock(folder)` takes an exclusive, non-blocking ``flock`` on ``folder/.lock`` and writes the
holder's pid, command and start time into it; the file is removed on release. Whoever takes the
lock first deletes the temporary files a killed run left behind (``.NAME.*.tmp``), since no other
run can be writing there. A second run on the same folder fails at once with
`LockedError` (exit code 75, `EXIT_LOCKED`) naming the holder, instead of interleaving writes with it. The kernel
drops the lock when the holder exits, however it exits (crash, SIGKILL, power cut on a local
disk), so there is never a stale lock to delete by hand. The lock is re-entrant within a process:
the pipeline holds its run folder while stages it calls in-process take their own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import LockedError, StorageError, storage_error

try:  # POSIX (Linux desktops, Jetson). Elsewhere the lock degrades to a no-op with a warning.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
log = logging.getLogger("runtime.lock")
_held: dict[Path, tuple[int, int]] = {}  # resolved folder -> (fd, depth) held by this process
_guard = threading.Lock()


def _holder_text(fd: int) -> str:
    try:
        raw = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        info = json.loads(raw)
        return f"pid {info.get('pid')}, started {info.get('started')}, command: {info.get('command')}"
    except (OSError, ValueError):
        return "holder unknown"


@contextmanager
def output_lock(folder: str | os.PathLike, purpose: str = "run") -> Iterator[Path]:
    """Hold the exclusive lock on ``folder`` (created if missing) for the duration of the block.

    Raises:
        LockedError: another process holds it; the message names the holder.
        StorageError: the folder cannot be created or the lock file cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _storage(exc, "create the output folder") from exc
    key = folder.resolve()
    if fcntl is None:  # pragma: no cover
        yield folder
        return
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield folder
        finally:
            with _guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return
    path = folder / LOCK_NAME
    fd = _acquire(path, folder, purpose)
    try:
        info = {
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:500],
            "purpose": purpose,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # the lock itself is held; the holder note is a courtesy
    with _guard:
        _held[key] = (fd, 1)
    _remove_leftovers(folder)
    try:
        yield folder
    finally:
        with _guard:
            _held.pop(key, None)
        try:
            path.unlink(missing_ok=True)  # while still locked: a waiter then sees a stale inode and retries
        except OSError:
            pass
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _acquire(path: Path, folder: Path, purpose: str) -> int:
    """Open and lock ``path``; retry when the file was replaced (a holder unlinks it on release)."""
    for _ in range(20):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _storage(exc, "write the lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(fd)
            os.close(fd)
            raise LockedError(
                f"{folder} is in use by another {purpose} ({holder}). Two runs writing one output folder would "
                "interleave their files: wait for that run to finish, or choose another output folder. The lock "
                "is released automatically when that process exits."
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # locked a file its holder had just unlinked: take the new one
    raise LockedError(f"{folder}: could not take the lock {path} after 20 tries; another process keeps replacing it")


def _storage(exc: OSError, action: str) -> StorageError:
    return storage_error(exc, action) or StorageError(
        f"cannot {action} {exc.filename}: {exc.strerror or exc}. Choose a writable output folder."
    )


def _remove_leftovers(folder: Path) -> None:
    """Delete temporary files a killed run left here; safe because this process now holds the folder."""
    import shutil

    from runtime.artifacts import leftover_temporaries

    stale = leftover_temporaries(folder)
    for p in stale:
        try:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except OSError as exc:
            log.warning("cannot remove %s, left by an interrupted run: %s", p, exc)
    if stale:
        log.info(
            "%s: removed %d temporary file(s) left by an interrupted run: %s",
            folder,
            len(stale),
            ", ".join(p.name for p in stale[:5]) + (" ..." if len(stale) > 5 else ""),
        )
