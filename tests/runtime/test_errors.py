"""The shared CLI exit-code mapping of the error hierarchy."""

from __future__ import annotations

import pytest

from runtime.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    ExportError,
    MissingDependencyError,
    PipelineError,
    exit_code_for,
)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConfigError("bad key"), 2),
        (MissingDependencyError("no tensorrt"), 3),
        (DataError("corrupt image"), 1),
        (ArtifactError("bad sidecar"), 1),
        (ExportError("trap"), 1),
        (PipelineError("other"), 1),
    ],
)
def test_exit_code_for(exc: PipelineError, code: int) -> None:
    assert exit_code_for(exc) == code


# ---- every command goes through the one wrapper (runtime/cli.py) ------------------------------------------
def _entry_points():
    import export.__main__ as export_cli
    import quantize.__main__ as quantize_cli
    import runtime.__main__ as runtime_cli
    import train.__main__ as train_cli
    from runtime.trt import cli as trt_cli

    points = {
        "train": train_cli.main,
        "export": export_cli.main,
        "quantize": quantize_cli.main,
        "runtime.trt.cli": trt_cli.main,
    }
    for verb in runtime_cli.VERBS:
        points[f"runtime {verb}"] = runtime_cli.resolve_verb(verb)
    return points


def test_every_command_is_wrapped_and_accepts_debug() -> None:
    import argparse

    points = _entry_points()
    assert {
        "train",
        "export",
        "quantize",
        "runtime parity",
        "runtime bench",
        "runtime build",
        "runtime selftest",
        "runtime pipeline",
        "runtime infer",
    } <= set(points)
    for name, fn in points.items():
        assert hasattr(fn, "__wrapped__"), f"{name} does not go through runtime.cli.cli_entry"
        # --debug is a real option of the command (its --help lists it), not only a wrapper convention.
        module = __import__(fn.__wrapped__.__module__, fromlist=["x"])
        parsers = [
            getattr(module, n)()
            for n in (
                "build_parser",
                "build_parity_parser",
                "build_bench_parser",
                "build_build_parser",
                "build_selftest_parser",
            )
            if hasattr(module, n)
        ]
        assert any(
            "--debug" in p.format_help()
            or any(
                "--debug" in sp.format_help()
                for a in p._actions
                if isinstance(a, argparse._SubParsersAction)
                for sp in a.choices.values()
            )
            for p in parsers
        ), name


def test_wrapper_maps_each_outcome_to_its_code(caplog) -> None:
    import errno

    from runtime.cli import Terminated, cli_entry
    from runtime.errors import LockedError, StorageError

    def command(exc):
        @cli_entry
        def main(argv):
            if exc is not None:
                raise exc
            return 0

        return main

    cases = [
        (None, 0),
        (ConfigError("x"), 2),
        (DataError("x"), 1),
        (MissingDependencyError("x"), 3),
        (StorageError("x"), 74),
        (LockedError("x"), 75),
        (KeyboardInterrupt(), 130),
        (Terminated(), 143),
        (OSError(errno.ENOSPC, "No space left on device", "/out/x.json"), 74),
        (OSError(errno.ECONNRESET, "reset"), 1),
        (ValueError("a bug"), 70),
    ]
    for exc, code in cases:
        assert command(exc)([]) == code, exc
    assert "/out/x.json" in caplog.text and "no space left on device" in caplog.text
    assert "internal error (a bug, not your input): ValueError: a bug" in caplog.text
    assert "Traceback" not in caplog.text
    with pytest.raises(ValueError):
        command(ValueError("a bug"))(["--debug"])
