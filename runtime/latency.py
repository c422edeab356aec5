"""Latency measurement, apart from parity: warm-up, then enough iterations *and* seconds.

`measure_latency` times a zero-argument callable (one inference on pre-staged inputs) with a
monotonic nanosecond clock (`time.perf_counter_ns` on the CPU). Warm-up runs until *both* a
minimum time and a minimum number of iterations have passed (first calls allocate arenas, JIT
kernels and fill caches), then at least ``min_iterations`` calls *and* ``min_seconds`` of calls are
timed one by one. Results are summarised by the pure function `summarize` into a frozen
`LatencyStats`: min/mean/p50/p90/p95/p99/max, throughput, and seeded bootstrap 95% confidence
intervals for p50 and p99 (never a lone mean).

GPU backends time device work with CUDA events: their bench callable returns the device compute
time in milliseconds (a float) for each call; `measure_latency` then summarises those too, in
``LatencyStats.device`` (host wall time stays in the top-level fields). See
`runtime.backends.base.Backend.bench_fn`.

numpy only: no torch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
CI_LEVEL = 0.95


def bootstrap_ci(
    samples: Sequence[float] | np.ndarray,
    q: float,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval for the ``q``-th percentile of ``samples``.

    Resamples ``samples`` with replacement ``n_boot`` times (seeded, so the result is
    reproducible), takes the ``q``-th percentile of each resample (numpy's default linear
    interpolation, the same as `summarize`), and returns the central ``level`` interval of those.

    Args:
        samples: 1-D latencies (any unit; the interval is in the same unit).
        q: Percentile in [0, 100] (50 for the median, 99 for the tail).
        n_boot: Number of bootstrap resamples.
        seed: Seed of the numpy generator.
        level: Coverage of the interval (0.95 for a 95% CI).

    Returns:
        (low, high). For a single sample both ends equal it.

    Raises:
        DataError: on an empty or non-1-D sample, or non-finite values.
        ConfigError: on q outside [0, 100], n_boot < 1 or level outside (0, 1).
    """
    x = np.asarray(samples, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise DataError(f"bootstrap_ci needs a non-empty 1-D sample, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise DataError("bootstrap_ci received non-finite samples (NaN or inf)")
    if not 0.0 <= q <= 100.0:
        raise ConfigError(f"percentile q must be in [0, 100], got {q}")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_boot, x.size))
    stats = np.percentile(x[idx], q, axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(stats, [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies of one model at one batch size.

    Attributes:
        samples_ms: Every timed call, in milliseconds, in the order measured.
        batch: Samples per call.
        count: Number of timed calls.
        min_ms, mean_ms, p50_ms, p90_ms, p95_ms, p99_ms, max_ms, std_ms: Summary statistics.
        throughput_ips: Images per second = batch * count / total timed seconds.
        p50_ci_ms, p99_ci_ms: Bootstrap 95% confidence intervals (low, high) of p50 and p99.
        total_s: Sum of timed calls, in seconds.
        warmup_iterations, warmup_s: What the warm-up actually ran.
        device: Device-side (CUDA event) compute times of the same calls, when the callable
            returned them; None on the CPU.
    """

    samples_ms: tuple[float, ...]
    batch: int
    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    std_ms: float
    throughput_ips: float
    p50_ci_ms: tuple[float, float]
    p99_ci_ms: tuple[float, float]
    total_s: float
    warmup_iterations: int = 0
    warmup_s: float = 0.0
    device: LatencyStats | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary without the raw samples."""
        out: dict[str, Any] = {
            "batch": self.batch,
            "count": self.count,
            "min_ms": self.min_ms,
            "mean_ms": self.mean_ms,
            "p50_ms": self.p50_ms,
            "p90_ms": self.p90_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "std_ms": self.std_ms,
            "throughput_ips": self.throughput_ips,
            "p50_ci_ms": list(self.p50_ci_ms),
            "p99_ci_ms": list(self.p99_ci_ms),
            "total_s": self.total_s,
            "warmup_iterations": self.warmup_iterations,
            "warmup_s": self.warmup_s,
            "device": self.device.to_dict() if self.device is not None else None,
        }
        return out


def summarize(
    samples_ms: Sequence[float] | np.ndarray,
    *,
    batch: int,
    n_boot: int = 1000,
    seed: int = 0,
    warmup_iterations: int = 0,
    warmup_s: float = 0.0,
    device: LatencyStats | None = None,
) -> LatencyStats:
    """Pure summary of per-call latencies (milliseconds) into `LatencyStats`.

    Raises:
        DataError: on an empty sample or non-finite/negative values.
        ConfigError: on batch < 1.
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise DataError(f"latency summary needs a non-empty 1-D sample, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise DataError("latency samples must be finite and non-negative")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(x, PERCENTILES))
    total_s = float(x.sum()) / 1e3
    return LatencyStats(
        samples_ms=tuple(float(v) for v in x),
        batch=int(batch),
        count=int(x.size),
        min_ms=float(x.min()),
        mean_ms=float(x.mean()),
        p50_ms=p50,
        p90_ms=p90,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=float(x.max()),
        std_ms=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        throughput_ips=float(batch * x.size / total_s) if total_s > 0 else float("inf"),
        p50_ci_ms=bootstrap_ci(x, 50, n_boot=n_boot, seed=seed),
        p99_ci_ms=bootstrap_ci(x, 99, n_boot=n_boot, seed=seed),
        total_s=total_s,
        warmup_iterations=int(warmup_iterations),
        warmup_s=float(warmup_s),
        device=device,
    )


def measure_latency(
    run: Callable[[], Any],
    *,
    batch: int,
    warmup_s: float = 1.0,
    warmup_iterations: int = 10,
    min_iterations: int = 50,
    min_seconds: float = 2.0,
    max_iterations: int | None = None,
    timer: Callable[[], int] = time.perf_counter_ns,
    n_boot: int = 1000,
    seed: int = 0,
) -> LatencyStats:
    """Time ``run()`` call by call after a warm-up.

    Warm-up: calls ``run`` until at least ``warmup_iterations`` calls *and* ``warmup_s`` seconds
    have passed. Measurement: times each call until at least ``min_iterations`` calls *and*
    ``min_seconds`` seconds of timed calls have passed (or ``max_iterations`` calls, a hard cap
    for very slow models). Only the call itself sits between the two clock reads.

    If every timed call returns a float, it is taken as that call's device compute time in
    milliseconds (CUDA events; see `runtime.backends.base.Backend.bench_fn`) and summarised in
    ``LatencyStats.device``.

    Args:
        run: Zero-argument callable doing one inference of ``batch`` samples.
        batch: Samples per call (for throughput).
        warmup_s: Minimum warm-up time in seconds.
        warmup_iterations: Minimum warm-up calls.
        min_iterations: Minimum timed calls.
        min_seconds: Minimum total timed seconds.
        max_iterations: Optional cap on timed calls (overrides ``min_seconds``, never
            ``min_iterations``).
        timer: Monotonic clock in integer nanoseconds (injectable for tests).
        n_boot: Bootstrap resamples for the CIs.
        seed: Bootstrap seed.

    Returns:
        `LatencyStats` of the timed calls.

    Raises:
        ConfigError: on negative or inconsistent settings.
    """
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    if warmup_s < 0 or warmup_iterations < 0 or min_seconds < 0:
        raise ConfigError(
            f"warm-up and minimum times must be >= 0, got warmup_s={warmup_s}, "
            f"warmup_iterations={warmup_iterations}, min_seconds={min_seconds}"
        )
    if min_iterations < 1:
        raise ConfigError(f"min_iterations must be >= 1, got {min_iterations}")
    if max_iterations is not None and max_iterations < min_iterations:
        raise ConfigError(f"max_iterations ({max_iterations}) must be >= min_iterations ({min_iterations})")

    warm_ns = int(warmup_s * 1e9)
    start = timer()
    n_warm = 0
    while n_warm < warmup_iterations or timer() - start < warm_ns:
        run()
        n_warm += 1
    warm_elapsed_s = (timer() - start) / 1e9

    min_ns = int(min_seconds * 1e9)
    samples_ns: list[int] = []
    device_ms: list[float] = []
    all_device = True
    total_ns = 0
    while len(samples_ns) < min_iterations or total_ns < min_ns:
        if max_iterations is not None and len(samples_ns) >= max_iterations:
            break
        t0 = timer()
        ret = run()
        t1 = timer()
        samples_ns.append(t1 - t0)
        total_ns += t1 - t0
        if all_device and isinstance(ret, float):
            device_ms.append(ret)
        else:
            all_device = False
    log.debug("timed %d calls after %d warm-up calls (%.2f s)", len(samples_ns), n_warm, warm_elapsed_s)
    device = summarize(device_ms, batch=batch, n_boot=n_boot, seed=seed) if all_device and device_ms else None
    return summarize(
        np.asarray(samples_ns, dtype=np.float64) / 1e6,
        batch=batch,
        n_boot=n_boot,
        seed=seed,
        warmup_iterations=n_warm,
        warmup_s=warm_elapsed_s,
        device=device,
    )


def cis_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when two (low, high) intervals overlap (used to say whether two runs agree)."""
    return a[0] <= b[1] and b[0] <= a[1]


def tile_batch(samples: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` samples cycled from ``samples`` (N, ...), as one contiguous float32 array: the fixed
    input a latency measurement feeds at every call."""
    if len(samples) < 1 or batch < 1:
        raise ConfigError(f"need at least one sample and batch >= 1, got {len(samples)} sample(s), batch {batch}")
    return np.ascontiguousarray(np.resize(samples, (batch, *samples.shape[1:])), dtype=np.float32)


def interleaved_rounds(
    fns: Mapping[str, Callable[[], Any]],
    *,
    batch: int,
    rounds: int,
    seconds_per_round: float,
    min_iterations: int = 5,
    warmup_s: float = 0.3,
    warmup_iterations: int = 3,
) -> dict[str, list[LatencyStats]]:
    """Time several callables in alternating rounds (A, B, C, A, B, C, ...) so all see the same load.

    The first round of each callable starts with ``warmup_s``/``warmup_iterations`` of warm-up,
    later rounds with one untimed call. Returns key -> one `LatencyStats` per round (pool their
    ``samples_ms`` for one distribution, or take each round's p50 for a spread across rounds).
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    out: dict[str, list[LatencyStats]] = {k: [] for k in fns}
    for r in range(rounds):
        for key, fn in fns.items():
            out[key].append(
                measure_latency(
                    fn,
                    batch=batch,
                    warmup_s=warmup_s if r == 0 else 0.0,
                    warmup_iterations=warmup_iterations if r == 0 else 1,
                    min_iterations=min_iterations,
                    min_seconds=seconds_per_round,
                )
            )
    return out
