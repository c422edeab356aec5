"""Shared fixtures: TensorRT bindings wheels fetched once into a cache, their API surfaces, fakes.

The wheels (about 1 MB each) are downloaded with pip into ``$FERDEPLOY_TRT_WHEELS`` (default
``~/.cache/ferdeploy/trt-wheels``) the first time and reused; when the package registry cannot be
reached the tests that need them are skipped with pip's reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.trt.api_surface import WheelSurface, read_wheel_surface

#: label -> (pip requirement, wheel file name prefix)
WHEELS: dict[str, tuple[str, str]] = {
    "10.3": ("tensorrt-cu12-bindings==10.3.0", "tensorrt_cu12_bindings-10.3.0-"),
    "10.13": ("tensorrt-cu12-bindings==10.13.3.9", "tensorrt_cu12_bindings-10.13.3.9-"),
    "11.4": ("tensorrt-cu13-bindings==11.4.0.106", "tensorrt_cu13_bindings-11.4.0.106-"),
    "lean-11.4": ("tensorrt-lean-cu13-bindings==11.4.0.106", "tensorrt_lean_cu13_bindings-11.4.0.106-"),
}
FIXTURES = Path(__file__).parent / "fixtures"


def wheel_cache() -> Path:
    return Path(os.environ.get("FERDEPLOY_TRT_WHEELS", Path.home() / ".cache" / "ferdeploy" / "trt-wheels"))


_failures: dict[str, str] = {}


def fetch_wheel(label: str) -> Path:
    """The cached wheel for ``label``, downloading it once; skips the test when that fails."""
    requirement, prefix = WHEELS[label]
    cache = wheel_cache()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = sorted(cache.glob(f"{prefix}{tag}-*.whl")) or sorted(cache.glob(f"{prefix}*.whl"))
    if found:
        return found[0]
    if label in _failures:
        pytest.skip(_failures[label])
    cache.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                "-d",
                str(cache),
                requirement,
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        proc = None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = (proc.stderr or proc.stdout).strip().splitlines()[-1:] if proc.returncode else ""
    found = sorted(cache.glob(f"{prefix}*.whl"))
    if not found:
        _failures[label] = f"cannot fetch {requirement} from the package registry ({reason or 'no wheel saved'})"
        pytest.skip(_failures[label])
    return found[0]


_surfaces: dict[tuple[str, str], WheelSurface] = {}


def surface(label: str, method: str = "auto") -> WheelSurface:
    """The (cached) API surface of wheel ``label``."""
    key = (label, method)
    if key not in _surfaces:
        _surfaces[key] = read_wheel_surface(fetch_wheel(label), wheel_cache() / "surfaces", method=method)
    return _surfaces[key]


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
