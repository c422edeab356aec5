"""The cpu target's runtime pick (quantize.runtime_pick): measured fastest at equal accuracy.

Candidates here are the onnxruntime backend and subclasses of it with planted behaviour (slower,
wrong, unavailable, broken), so every rule is exercised without depending on which optional
runtimes are installed; the OpenVINO candidate runs in the cpu-target end-to-end test
(tests/quantize/test_int8_pipeline.py) where it is installed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "runtime"))  # harness_util: the runtime tests' tiny ONNX models

from harness_util import linear_model  # noqa: E402 - after the sys.path line

from quantize.runtime_pick import RuntimePickConfig, pick_runtime, render_markdown  # noqa: E402 - after sys.path
from runtime.backends.ort import OrtBackend, make_session  # noqa: E402 - after the sys.path line
from runtime.errors import ConfigError  # noqa: E402 - after the sys.path line

FAST = RuntimePickConfig(batches=(1, 4), rounds=2, seconds_per_round=0.05, threads=1)


class _SlowOrt(OrtBackend):
    """onnxruntime, 3 ms slower per call."""

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.003)
        return super()._infer(feeds)


class _WrongOrt(OrtBackend):
    """onnxruntime with the classes rolled by one: fast, and wrong on every sample."""

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.roll(v, 1, axis=-1) for k, v in super()._infer(feeds).items()}


class _SlowAtBatch1(OrtBackend):
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if next(iter(feeds.values())).shape[0] == 1:
            time.sleep(0.003)
        return super()._infer(feeds)


class _SlowAtBatch4(OrtBackend):
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if next(iter(feeds.values())).shape[0] == 4:
            time.sleep(0.003)
        return super()._infer(feeds)


class _Missing(OrtBackend):
    @classmethod
    def _probe(cls) -> str | None:
        return "planted: not installed (pip install '.[missing]')"


class _Broken(OrtBackend):
    def _load(self) -> None:
        raise RuntimeError("planted: cannot read this file")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("pick") / "linear.onnx")


@pytest.fixture(scope="module")
def data(model: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32)
    ref = make_session(model).run(None, {"input": x})[0]
    labels = ref.argmax(axis=1)
    labels[:4] = (labels[:4] + 1) % 7  # a model that is not perfect
    return x, ref, labels


def test_the_faster_runtime_is_named_with_its_speedup(model, data) -> None:
    x, ref, labels = data
    cands = [("slow", _SlowOrt, {}, "onnxruntime + 3 ms"), ("ort", "ort", {}, "onnxruntime CPU")]
    pick = pick_runtime(model, x, ref, labels, FAST, candidates=cands)
    assert pick.fastest == "ort"
    slow, fast = pick.candidates
    assert slow.eligible and fast.eligible
    assert all(slow.p50_ms[b] > fast.p50_ms[b] + 2.0 for b in FAST.batches)  # 3 ms sleep per call
    assert pick.speedup_vs_onnxruntime > 1.5  # against the first candidate, the baseline
    assert "not separable" not in pick.note  # 3 ms apart: the rounds' ranges do not overlap
    assert pick.fastest_by_batch == {1: "ort", 4: "ort"} and "differs by batch" not in pick.note
    assert fast.agreement == 1.0 and fast.accuracy == pytest.approx(0.9)
    for c in pick.candidates:
        assert set(c.p50_ms) == set(FAST.batches)
        assert all(lo <= c.p50_ms[b] <= hi for b, (lo, hi) in c.p50_range_ms.items())


def test_a_faster_but_less_accurate_runtime_is_not_eligible(model, data) -> None:
    x, ref, labels = data
    cands = [("slow", _SlowOrt, {}, "onnxruntime + 3 ms"), ("wrong", _WrongOrt, {}, "fast and wrong")]
    pick = pick_runtime(model, x, ref, labels, FAST, candidates=cands)
    assert pick.fastest == "slow"
    wrong = pick.candidates[1]
    assert not wrong.eligible
    assert "agreement" in wrong.why_not and "accuracy" in wrong.why_not
    assert wrong.agreement < 0.5
    md = render_markdown(pick)
    assert "**slow**" in md and "pts below slow's" in md


def test_missing_and_broken_runtimes_are_reported_not_fatal(model, data) -> None:
    x, ref, labels = data
    cands = [
        ("ort", "ort", {}, "onnxruntime CPU"),
        ("missing", _Missing, {}, "not here"),
        ("broken", _Broken, {}, "cannot load"),
    ]
    pick = pick_runtime(model, x, ref, None, FAST, candidates=cands)
    assert pick.fastest == "ort"
    by = {c.label: c for c in pick.candidates}
    assert not by["missing"].available and "pip install '.[missing]'" in by["missing"].reason
    assert not by["broken"].available and "cannot read this file" in by["broken"].reason
    assert by["ort"].accuracy is None  # no labels: accuracy is not compared
    assert "not measured: missing" in pick.note and "broken" in pick.note
    md = render_markdown(pick)
    assert "did not run: RuntimeError: planted: cannot read this file" in md
    body = pick.to_dict()
    assert body["fastest"] == "ort" and set(body["candidates"][0]["p50_ms"]) == {"1", "4"}


def test_no_runnable_candidate_is_a_clear_error(model, data) -> None:
    x, ref, labels = data
    with pytest.raises(ConfigError, match="no candidate runtime could run"):
        pick_runtime(model, x, ref, labels, FAST, candidates=[("missing", _Missing, {}, "not here")])


@pytest.mark.parametrize(
    "kwargs",
    [{"batches": ()}, {"batches": (0,)}, {"rounds": 0}, {"threads": -1}, {"max_agreement_loss_pts": -1}],
)
def test_bad_config_is_refused(kwargs) -> None:
    with pytest.raises(ConfigError, match="runtime_pick"):
        RuntimePickConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"target_agreement": 0.0}, {"target_agreement": 1.5}, {"limit": -1}, {"max_float": 0}]
)
def test_bad_explain_settings_are_refused(kwargs) -> None:
    from quantize.config import ExplainSettings

    with pytest.raises(ConfigError, match="explain"):
        ExplainSettings(**kwargs)


def test_a_runtime_fastest_only_at_some_batches_is_named_per_batch(model, data) -> None:
    x, ref, labels = data
    cands = [("a", _SlowAtBatch1, {}, "slow at batch 1"), ("b", _SlowAtBatch4, {}, "slow at batch 4")]
    pick = pick_runtime(model, x, ref, labels, FAST, candidates=cands)
    assert pick.fastest_by_batch == {1: "b", 4: "a"}
    assert "the fastest differs by batch: batch 1: b, batch 4: a" in pick.note
    assert pick.to_dict()["fastest_by_batch"] == {"1": "b", "4": "a"}
