"""runtime.latency: warm-up and stopping rules on a fake clock, percentiles and CIs against numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from runtime.errors import ConfigError, DataError
from runtime.latency import LatencyStats, bootstrap_ci, cis_overlap, measure_latency, summarize


class FakeClock:
    """A nanosecond clock that only moves when a fake inference 'runs' for a scripted duration."""

    def __init__(self, durations_ms):
        self.now = 0
        self.durations = iter(durations_ms)
        self.calls = 0

    def timer(self) -> int:
        return self.now

    def run(self):
        self.now += int(round(next(self.durations) * 1e6))
        self.calls += 1


def test_samples_are_exact_calls_after_warmup():
    warm = [5.0] * 3
    timed = [1.0, 2.0, 3.0, 4.0, 10.0]
    clock = FakeClock(warm + timed + [99.0] * 10)
    s = measure_latency(
        clock.run, batch=4, warmup_s=0.0, warmup_iterations=3, min_iterations=5, min_seconds=0.0, timer=clock.timer
    )
    assert s.samples_ms == tuple(timed)
    assert s.warmup_iterations == 3 and s.warmup_s == pytest.approx(0.015)
    assert s.count == 5 and s.min_ms == 1.0 and s.max_ms == 10.0 and s.mean_ms == pytest.approx(4.0)
    assert s.p50_ms == pytest.approx(np.percentile(timed, 50))
    assert s.p99_ms == pytest.approx(np.percentile(timed, 99))
    assert s.throughput_ips == pytest.approx(4 * 5 / 0.020)
    assert s.total_s == pytest.approx(0.020)


def test_warmup_needs_both_time_and_iterations():
    # 10 warm-up iterations of 1 ms do not reach 50 ms: warm-up continues to 50 calls.
    clock = FakeClock([1.0] * 1000)
    s = measure_latency(
        clock.run, batch=1, warmup_s=0.05, warmup_iterations=10, min_iterations=5, min_seconds=0.0, timer=clock.timer
    )
    assert s.warmup_iterations == 50
    # Slow calls: time is reached after 1 call, but 10 iterations are still run.
    clock = FakeClock([100.0] * 1000)
    s = measure_latency(
        clock.run, batch=1, warmup_s=0.05, warmup_iterations=10, min_iterations=5, min_seconds=0.0, timer=clock.timer
    )
    assert s.warmup_iterations == 10


def test_measurement_needs_both_iterations_and_seconds():
    clock = FakeClock([1.0] * 10_000)
    s = measure_latency(
        clock.run, batch=1, warmup_s=0, warmup_iterations=0, min_iterations=50, min_seconds=0.2, timer=clock.timer
    )
    assert s.count == 200  # 0.2 s of 1 ms calls outlasts 50 iterations
    clock = FakeClock([10.0] * 10_000)
    s = measure_latency(
        clock.run, batch=1, warmup_s=0, warmup_iterations=0, min_iterations=50, min_seconds=0.2, timer=clock.timer
    )
    assert s.count == 50  # 50 iterations outlast 0.2 s
    clock = FakeClock([1.0] * 10_000)
    s = measure_latency(
        clock.run,
        batch=1,
        warmup_s=0,
        warmup_iterations=0,
        min_iterations=50,
        min_seconds=10.0,
        max_iterations=60,
        timer=clock.timer,
    )
    assert s.count == 60  # the cap wins over min_seconds


def test_device_times_are_summarised_when_the_callable_returns_them():
    clock = FakeClock([2.0] * 100)
    dev = itertools.cycle([0.5, 1.5])

    def run():
        clock.run()
        return next(dev)

    s = measure_latency(
        run, batch=2, warmup_s=0, warmup_iterations=0, min_iterations=10, min_seconds=0, timer=clock.timer
    )
    assert s.device is not None and s.device.count == 10 and s.device.mean_ms == pytest.approx(1.0)
    assert s.p50_ms == pytest.approx(2.0)
    assert s.to_dict()["device"]["mean_ms"] == pytest.approx(1.0)
    # A callable returning anything else (ORT returns a list) has no device stats.
    clock = FakeClock([2.0] * 100)
    s = measure_latency(
        lambda: (clock.run(), [1.0])[1],
        batch=1,
        warmup_s=0,
        warmup_iterations=0,
        min_iterations=3,
        min_seconds=0,
        timer=clock.timer,
    )
    assert s.device is None


def test_summarize_matches_numpy_on_known_samples():
    x = np.random.default_rng(3).lognormal(0.0, 0.4, 501)
    s = summarize(x, batch=8)
    for q, v in zip((50, 90, 95, 99), (s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms)):
        assert v == pytest.approx(np.percentile(x, q), rel=1e-12)
    assert s.mean_ms == pytest.approx(x.mean()) and s.std_ms == pytest.approx(x.std(ddof=1))
    assert s.throughput_ips == pytest.approx(8 * 501 / (x.sum() / 1e3))
    assert s.p50_ci_ms[0] <= s.p50_ms <= s.p50_ci_ms[1]
    assert s.p99_ci_ms[0] <= s.p99_ms <= s.p99_ci_ms[1]
    d = s.to_dict()
    assert "samples_ms" not in d and d["count"] == 501 and d["p50_ci_ms"] == list(s.p50_ci_ms)
    assert isinstance(s, LatencyStats)


def test_bootstrap_ci_is_the_numpy_percentile_bootstrap():
    x = np.arange(1.0, 101.0)
    lo, hi = bootstrap_ci(x, 50, n_boot=500, seed=7)
    rng = np.random.default_rng(7)
    idx = rng.integers(0, 100, size=(500, 100))
    meds = np.percentile(x[idx], 50, axis=1)
    assert (lo, hi) == pytest.approx(tuple(np.percentile(meds, [2.5, 97.5])))
    assert lo < 50.5 < hi
    assert bootstrap_ci(x, 50, n_boot=500, seed=7) == (lo, hi)  # seeded: reproducible
    assert bootstrap_ci(x, 50, n_boot=500, seed=8) != (lo, hi)
    assert bootstrap_ci([3.0], 99) == (3.0, 3.0)
    # The CI narrows with more samples of the same distribution.
    rng = np.random.default_rng(0)
    small, big = rng.normal(10, 1, 50), rng.normal(10, 1, 5000)
    w_small = np.diff(bootstrap_ci(small, 50))[0]
    w_big = np.diff(bootstrap_ci(big, 50))[0]
    assert w_big < w_small


def test_bad_arguments_raise():
    with pytest.raises(DataError):
        bootstrap_ci([], 50)
    with pytest.raises(DataError):
        bootstrap_ci([1.0, float("nan")], 50)
    with pytest.raises(ConfigError):
        bootstrap_ci([1.0], 101)
    with pytest.raises(DataError):
        summarize([], batch=1)
    with pytest.raises(DataError):
        summarize([1.0, -2.0], batch=1)
    with pytest.raises(ConfigError):
        summarize([1.0], batch=0)
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, batch=1, min_iterations=0)
    with pytest.raises(ConfigError):
        measure_latency(lambda: None, batch=1, min_iterations=10, max_iterations=5)


def test_cis_overlap():
    assert cis_overlap((1, 2), (2, 3)) and cis_overlap((1, 5), (2, 3))
    assert not cis_overlap((1, 2), (2.5, 3))


def test_real_clock_smoke():
    s = measure_latency(
        lambda: sum(range(100)), batch=1, warmup_s=0.01, warmup_iterations=2, min_iterations=20, min_seconds=0.01
    )
    assert s.count >= 20 and 0 < s.min_ms <= s.p50_ms <= s.p99_ms <= s.max_ms


def test_interleaved_rounds_alternate_the_callables_and_warm_only_the_first_round():
    from runtime.latency import interleaved_rounds

    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    out = interleaved_rounds(fns, batch=2, rounds=3, seconds_per_round=0.0, min_iterations=2, warmup_s=0.0)
    assert set(out) == {"a", "b"} and all(len(v) == 3 for v in out.values())
    # round 1: 3 warm-up + 2 timed per callable; later rounds: 1 warm-up + 2 timed; always a, then b
    blocks = [("a", 5), ("b", 5)] + [("a", 3), ("b", 3)] * 2
    want = [k for k, n in blocks for _ in range(n)]
    assert calls == want
    assert [st.warmup_iterations for st in out["a"]] == [3, 1, 1] and all(st.count == 2 for st in out["b"])
    with pytest.raises(ConfigError, match="rounds"):
        interleaved_rounds(fns, batch=1, rounds=0, seconds_per_round=0.0)


def test_tile_batch_cycles_the_samples_into_one_contiguous_float32_batch():
    from runtime.latency import tile_batch

    s = np.arange(3 * 2, dtype=np.float64).reshape(3, 2)
    out = tile_batch(s, 7)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"] and out.shape == (7, 2)
    np.testing.assert_array_equal(out, s[[0, 1, 2, 0, 1, 2, 0]].astype(np.float32))
    np.testing.assert_array_equal(tile_batch(s, 2), s[:2].astype(np.float32))
    with pytest.raises(ConfigError, match="batch"):
        tile_batch(s[:0], 1)
