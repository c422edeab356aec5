"""The one wrapper every command line goes through: errors become a message and an exit code.

`cli_entry` decorates a ``main(argv) -> int``. It turns

- a `PipelineError` into its one-paragraph message (what was received, what was expected, how to
  fix it) and the exit code of `runtime.errors.exit_code_for` (docs/errors.md);
- an `OSError` that means "cannot write here" (permissions, read-only file system, disk full or
  quota) into the same kind of message and exit code 74 (`EXIT_STORAGE`);
- Ctrl-C into exit 130 and SIGTERM into exit 143, after the atomic writers have discarded their
  temporary files (finished artifacts are kept; a rerun resumes or reuses them);
- any other exception (a bug) into exit 70 with a one-line summary.

Tracebacks are printed only with ``--debug`` (each command's parser accepts it; see
`add_debug_flag`).

It also holds what every command shares: the argument group `add_common_flags` (``-v/--verbose``,
``--debug``, optionally ``--threads``), the one logging setup `setup_logging` (library modules
never configure logging), and `parse_int_list` (batch sizes, thread counts: ``1,8,32``) with
`int_list_arg`, its argparse form.
"""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from runtime.errors import (
    EXIT_BUG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    ConfigError,
    PipelineError,
    exit_code_for,
    storage_error,
)

__all__ = [
    "EXIT_BUG",
    "Terminated",
    "add_common_flags",
    "add_debug_flag",
    "cli_entry",
    "int_list_arg",
    "parse_int_list",
    "setup_logging",
    "sigterm_raises",
]

DEBUG_HELP = "on an error, print the full traceback as well as the message"
THREADS_HELP = "CPU intra-op threads (default OMP_NUM_THREADS or 1)"
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so `finally` blocks and atomic writers clean up."""


def add_debug_flag(parser, *, sub: bool = False) -> None:
    """Give an argparse parser the shared ``--debug`` option (``sub``: see `add_common_flags`)."""
    parser.add_argument(
        "--debug", action="store_true", help=DEBUG_HELP, **({"default": argparse.SUPPRESS} if sub else {})
    )


def add_common_flags(
    parser,
    *,
    threads: bool = False,
    threads_default: int | None = None,
    threads_help: str = THREADS_HELP,
    verbose_help: str = "debug logging",
    sub: bool = False,
) -> None:
    """The argument group every command shares: ``-v/--verbose``, ``--debug`` and, with
    ``threads=True``, ``--threads N``.

    Args:
        parser: An argparse parser or sub-parser.
        threads: Add ``--threads`` (type int, default ``threads_default``).
        sub: ``parser`` is a sub-command whose parent has the flags too: its defaults are
            suppressed so ``cmd -v sub`` and ``cmd sub -v`` both work (a sub-parser's default
            would overwrite the parent's value).
    """
    extra = {"default": argparse.SUPPRESS} if sub else {}
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help, **extra)
    add_debug_flag(parser, sub=sub)
    if threads:
        parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)


def setup_logging(
    verbose: bool = False, *, level: int | None = None, timestamps: bool = False, quiet: Sequence[str] = ()
) -> None:
    """The one logging setup of every command line (library modules only log).

    Args:
        verbose: DEBUG instead of INFO.
        level: An explicit level (scripts that print their own tables log warnings only).
        timestamps: Prefix ``HH:MM:SS`` (long runs: training, the pipeline).
        quiet: Loggers of chatty libraries held at WARNING unless ``verbose`` (``nncf``).
    """
    chosen = level if level is not None else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=chosen, format=("%(asctime)s " if timestamps else "") + LOG_FORMAT, datefmt="%H:%M:%S")
    if not verbose:
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def loggers_held(names: Sequence[str], *, unless: logging.Logger) -> Iterator[None]:
    """Hold the chatty libraries' loggers ``names`` at WARNING for a block, unless ``unless`` logs DEBUG.

    For library calls that any entry point may reach (the pipeline as well as the command lines),
    where `setup_logging`'s ``quiet`` does not apply; the caller logs what was done instead.
    """
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    if not unless.isEnabledFor(logging.DEBUG):
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, old):
            lg.setLevel(level)


def parse_int_list(text: str | Sequence[int], what: str = "batch sizes", *, minimum: int = 1) -> tuple[int, ...]:
    """The one list-of-integers parser: ``"1,8,32"`` (or a sequence of ints) -> ``(1, 8, 32)``.

    Args:
        text: Comma-separated integers (spaces allowed), or a list/tuple of them (from YAML).
        what: What the numbers are, for the message (``"--latency-batches"``, ``"parity batches"``).
        minimum: Smallest allowed value (1 for batch sizes and thread counts, 0 for class ids).

    Raises:
        ConfigError: when an item is not an integer, is below ``minimum``, or the list is empty;
            the message quotes what was received and shows the expected form.
    """
    items = str(text).split(",") if isinstance(text, str) else list(text)
    example = ",".join(str(minimum + v) for v in (0, 7, 31))
    try:
        values = tuple(int(str(v).strip()) for v in items if str(v).strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers like {example}, got {text!r}") from None
    if not values or any(v < minimum for v in values):
        kind = "positive integers" if minimum == 1 else f"integers >= {minimum}"
        raise ConfigError(f"{what} must be comma-separated {kind} like {example}, got {text!r}")
    return values


def int_list_arg(what: str = "batch sizes", *, minimum: int = 1) -> Callable[[str], tuple[int, ...]]:
    """`parse_int_list` as an argparse ``type=``: a bad value is a usage error naming the option."""

    def convert(text: str) -> tuple[int, ...]:
        try:
            return parse_int_list(text, what, minimum=minimum)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = what
    return convert


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises `Terminated` in the main thread instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def cli_entry(fn: Callable[[list[str]], int] | None = None, *, argv_start: int = 1):
    """Wrap ``fn(argv) -> int`` with the shared error handling (module docstring).

    Use as ``@cli_entry`` or, for a verb of a dispatching command whose own arguments start at
    ``sys.argv[2]``, ``@cli_entry(argv_start=2)``. The wrapped function may be called with
    ``argv=None`` (read ``sys.argv[argv_start:]``) or with an explicit list.
    """
    if fn is None:
        return functools.partial(cli_entry, argv_start=argv_start)
    log = logging.getLogger(fn.__module__ if fn.__module__ != "__main__" else "cli")

    @functools.wraps(fn)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        args = list(sys.argv[argv_start:] if argv is None else argv)
        debug = "--debug" in args[: args.index("--")] if "--" in args else "--debug" in args
        try:
            with sigterm_raises():
                code = fn(args)
            return EXIT_OK if code is None else int(code)
        except PipelineError as exc:
            _report(log, f"error: {_message(exc)}", debug)
            return exit_code_for(exc)
        except OSError as exc:
            mapped = storage_error(exc)
            if mapped is None:
                _report(log, f"error: {type(exc).__name__}: {exc}. Rerun with --debug for the traceback.", debug)
                return EXIT_ERROR
            _report(log, f"error: {mapped}", debug)
            return exit_code_for(mapped)
        except KeyboardInterrupt:
            log.error(
                "interrupted: finished artifacts are kept and partial ones were discarded; "
                "rerun the same command to resume"
            )
            return EXIT_INTERRUPTED
        except Terminated:
            log.error(
                "terminated (SIGTERM): finished artifacts are kept and partial ones were discarded; "
                "rerun the same command to resume"
            )
            return EXIT_TERMINATED
        except SystemExit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, not bad input
            if debug:
                raise
            log.error(
                "internal error (a bug, not your input): %s: %s. Rerun with --debug for the traceback and report it.",
                type(exc).__name__,
                exc,
            )
            return EXIT_BUG

    return wrapper


def _report(log: logging.Logger, message: str, debug: bool) -> None:
    if not logging.getLogger().handlers:  # the command failed before it configured logging
        setup_logging()
    if debug:
        log.error(message, exc_info=True)
    else:
        log.error(message)
