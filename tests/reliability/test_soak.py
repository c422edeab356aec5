"""Memory soak (scripts/soak.py): no RSS or Python-object growth through the CPU backends.

The soak itself is marked ``slow`` but runs in CI (`make test` deselects nothing) with
``SOAK_COUNT`` inferences per backend (default 1000: about 10 s of CPU for the four backends on a
2-core machine with ``lanmsff_tiny``). The full 10,000-inference figures for LANMSFF are in
BENCHMARKS.md (``python scripts/soak.py --count 10000``). The fast tests check the arithmetic
and that the soak does flag a backend that leaks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "runtime"))  # harness_util: the runtime tests' tiny ONNX models

from harness_util import linear_model  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

from runtime.backends.ort import OrtBackend  # noqa: E402 - imported after sys.path / environment set-up at the top of the file


def _load_soak():
    spec = importlib.util.spec_from_file_location("ferdeploy_soak", REPO / "scripts" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


soak = _load_soak()
MIB = soak.MIB


# ---- arithmetic -------------------------------------------------------------------------------
def test_least_squares_recovers_a_line_and_rejects_bad_input() -> None:
    xs = [0, 100, 200, 300, 400]
    slope, r2 = soak.least_squares(xs, [5.0 + 0.25 * x for x in xs])
    assert slope == pytest.approx(0.25)
    assert r2 == pytest.approx(1.0)
    assert soak.least_squares(xs, [7.0] * 5) == (0.0, 0.0)
    with pytest.raises(ValueError):
        soak.least_squares([1, 2], [1.0])
    with pytest.raises(ValueError):
        soak.least_squares([3, 3, 3], [1.0, 2.0, 3.0])


def _series(count: int, every: int, fn) -> list[tuple[int, int]]:
    return [(n, int(400 * MIB + fn(n))) for n in range(0, count + 1, every)]


def test_a_steady_leak_is_flagged_as_a_slope() -> None:
    # 4 KiB kept per inference: 7.8 MiB over 2000 inferences, 39 MiB over 10,000.
    rng = np.random.default_rng(0)
    samples = _series(10_000, 100, lambda n: 4096 * n + rng.integers(-65536, 65536))
    g = soak.analyse_rss(samples, max_growth_mib=8.0)
    assert g.over_bound
    assert g.shape == "slope"
    assert g.growth_mib == pytest.approx(39.06, abs=0.2)
    assert g.slope_per_1k_mib == pytest.approx(4096 * 1000 / MIB, rel=0.01)
    assert g.growth_per_1k_mib == pytest.approx(g.growth_mib / 10.0)
    assert g.r2 > 0.99
    assert g.start_mib == pytest.approx(samples[0][1] / MIB)
    assert g.max_mib == pytest.approx(max(r for _, r in samples) / MIB)


def test_a_flat_series_passes_and_a_small_step_reads_as_a_step() -> None:
    rng = np.random.default_rng(1)
    flat = soak.analyse_rss(_series(10_000, 100, lambda n: rng.integers(-100_000, 100_000)), max_growth_mib=8.0)
    assert not flat.over_bound
    assert flat.shape == "flat"
    assert abs(flat.growth_mib) < 0.2

    # An allocator settling: +3 MiB once, early, then flat. Under the bound, and not a slope.
    step = soak.analyse_rss(_series(10_000, 100, lambda n: 3 * MIB if n >= 1000 else 0), max_growth_mib=8.0)
    assert not step.over_bound
    assert step.shape == "step"
    assert step.growth_mib == pytest.approx(3.0)
    # The same step, larger than the bound, fails: the bound is on growth, whatever its shape.
    big = soak.analyse_rss(_series(10_000, 100, lambda n: 12 * MIB if n >= 1000 else 0), max_growth_mib=8.0)
    assert big.over_bound


def test_analyse_rss_needs_two_samples() -> None:
    with pytest.raises(ValueError):
        soak.analyse_rss([(0, 100)], 8.0)


# ---- the soak flags real leaks ----------------------------------------------------------------
class _HoardingBackend(OrtBackend):
    """The ORT backend, plus a planted leak: every call keeps 64 KiB of touched memory.

    The memory comes straight from the OS (an anonymous mmap, every page written): a malloc'd
    array could reuse pages an earlier test freed, which are already counted in RSS, and then the
    leak would not show after a long test session.
    """

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import mmap

        block = mmap.mmap(-1, 65536)
        block.write(b"\x01" * 65536)
        self.__dict__.setdefault("hoard", []).append(block)
        return super()._infer(feeds)


class _SteppingBackend(OrtBackend):
    """The ORT backend, plus a one-off step: the 100th call keeps 12 MiB of touched memory, once."""

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import mmap

        n = self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        if n == 100:
            block = mmap.mmap(-1, 12 * MIB)
            block.write(b"\x01" * (12 * MIB))
            self.__dict__["step"] = block
        return super()._infer(feeds)


class _ObjectLeakBackend(OrtBackend):
    """The ORT backend, plus a planted Python leak: every call keeps a small dict (~1 KiB)."""

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super()._infer(feeds)
        self.__dict__.setdefault("kept", []).append({"outputs": dict(out)})
        return out


@pytest.fixture(scope="module")
def linear_onnx(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("soak") / "linear.onnx")


def test_clean_backend_passes_on_a_tiny_model(linear_onnx: Path) -> None:
    r = soak.soak_backend("ort", "ort", linear_onnx, count=1000, warmup=50, sample_every=50)
    assert r.passed, r.failures
    assert len(r.samples) == 1000 // 50 + 1
    assert r.samples[0][0] == 0 and r.samples[-1][0] == 1000
    assert all(rss > 0 for _, rss in r.samples)
    assert r.output_drift == 0.0
    assert r.objects_per_1k <= soak.DEFAULT_MAX_OBJECTS_PER_1K


def test_rss_leak_is_flagged(linear_onnx: Path) -> None:
    # 300 × 64 KiB = 18.75 MiB kept; the bound is 8 MiB.
    r = soak.soak_backend("hoard", _HoardingBackend, linear_onnx, count=300, warmup=20, sample_every=10)
    assert not r.passed
    assert r.growth.over_bound
    assert r.growth.growth_mib > 15
    assert r.growth.shape == "slope"
    assert any("RSS grew" in f for f in r.failures)
    # The confirmation window saw the leak go on (another 300 × 64 KiB).
    assert r.confirm_growth_mib is not None and r.confirm_growth_mib > 15
    assert "more over 300 further inferences" in " ".join(r.failures)


def test_a_one_off_step_over_the_bound_is_reported_not_failed(linear_onnx: Path) -> None:
    # 12 MiB once (call 100, inside the soak window), then nothing: over the 8 MiB bound in the
    # soak window, flat in the confirmation window.
    r = soak.soak_backend("step", _SteppingBackend, linear_onnx, count=300, warmup=20, sample_every=10)
    assert r.growth.over_bound and r.growth.growth_mib > 11
    assert r.confirm_growth_mib is not None and abs(r.confirm_growth_mib) < 1
    assert r.passed, r.failures
    head, _, row = soak.format_table([r]).splitlines()
    cells = dict(zip([c.strip() for c in head.split("|")], [c.strip() for c in row.split("|")]))
    assert float(cells["confirm window MiB"]) == pytest.approx(r.confirm_growth_mib, abs=0.01)
    assert cells["result"] == "pass"


def test_python_object_leak_is_flagged(linear_onnx: Path) -> None:
    r = soak.soak_backend("objects", _ObjectLeakBackend, linear_onnx, count=500, warmup=20, sample_every=50)
    assert not r.passed
    # At least one tracked object per call (the inner dict holds only arrays, which the gc does not track).
    assert r.objects_end - r.objects_start >= 500
    assert any("Python objects grew" in f for f in r.failures)


def test_cli_rejects_unknown_backends(capsys) -> None:
    assert soak.main(["--backends", "ort,tensorflow"]) == 2
    assert "tensorflow" in capsys.readouterr().err


# ---- the soak ---------------------------------------------------------------------------------
SOAK_COUNT = int(os.environ.get("SOAK_COUNT", "1000"))


@pytest.mark.slow
def test_soak_no_memory_growth(tmp_path: Path) -> None:
    results, skipped = soak.run_soak(
        SOAK_COUNT, soak.ALL_BACKENDS, model="lanmsff_tiny", threads=1, warmup=200, workdir=tmp_path
    )
    ran = [r.backend for r in results]
    # onnxruntime is a core dependency: its three soaks always run; torch only where installed.
    assert ran == [b for b in soak.ALL_BACKENDS if b not in skipped]
    assert {"ort", "ort-int8", "ort-fp16"} <= set(ran)
    table = soak.format_table(results)
    for r in results:
        g = r.growth
        assert r.count == SOAK_COUNT
        assert g.inferences == SOAK_COUNT
        assert len(r.samples) >= 2
        assert g.growth_mib <= soak.DEFAULT_MAX_GROWTH_MIB, f"{r.backend}: {r.failures}\n{table}"
        assert r.objects_per_1k <= soak.DEFAULT_MAX_OBJECTS_PER_1K, f"{r.backend}: {r.failures}\n{table}"
        assert r.output_drift <= soak.OUTPUT_DRIFT_ATOL, f"{r.backend}: {r.failures}\n{table}"
        assert r.passed, f"{r.backend}: {r.failures}\n{table}"


@pytest.mark.slow
def test_soak_cli_writes_json(tmp_path: Path, capsys) -> None:
    out = tmp_path / "soak.json"
    code = soak.main(
        [
            "--count",
            "300",
            "--warmup",
            "50",
            "--backends",
            "ort",
            "--model",
            "lanmsff_tiny",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| ort | 300 |" in printed
    body = json.loads(out.read_text())
    assert body["count"] == 300
    [r] = body["results"]
    assert r["backend"] == "ort" and r["passed"] is True
    assert r["samples"][0][0] == 0 and r["samples"][-1][0] == 300
