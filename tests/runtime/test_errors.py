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
