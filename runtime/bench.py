"""Latency sweep: every model × backend × batch size, measured apart from parity.

    python -m runtime bench --models RUN/model.onnx RUN/model.int8.onnx --batch 1,8,32

Each (model, backend, batch) is timed with `runtime.latency.measure_latency` on a fixed,
seeded random feed (latency does not depend on pixel values for these CNNs). A backend that
offers `bench_fn(batch)` (TensorRT: CUDA events around pre-staged device buffers) is timed through
it, so host and device times are reported apart; the CPU backends are timed through `infer()`,
i.e. exactly what an application calling the harness pays.

The harness's own overhead (feed validation, dict plumbing) is measured against a bare
``session.run`` loop on the same ONNX Runtime session, *interleaved* call by call (ABBA order)
so that drifts of a shared machine (other jobs, frequency changes) hit both sides alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import random_feeds
from runtime.compare import Precision
from runtime.errors import ConfigError, PipelineError
from runtime.latency import LatencyStats, cis_overlap, measure_latency, summarize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    """Options of one latency sweep.

    Attributes:
        models: Model files.
        batches: Batch sizes.
        backends: Backend names (None = every available one that runs the file, except ``torch``).
        seconds: Minimum timed seconds per measurement.
        iterations: Minimum timed calls per measurement.
        warmup_s: Minimum warm-up seconds.
        warmup_iterations: Minimum warm-up calls.
        threads: Intra-op threads of CPU backends (None = OMP_NUM_THREADS or 1).
        overhead_batches: Batches at which harness overhead vs bare ``session.run`` is measured.
        repeat: Run the whole sweep this many times back to back (run-to-run spread is reported).
        seed: Seed of the random feeds and bootstrap.
        profile: Also write per-node / per-op-type time tables for ORT and OpenVINO rows (runtime/profile.py).
        profile_runs: Profiled calls per (model, backend, batch).
        roofline: Count each ONNX model's multiply-accumulates and, for models with INT8 MACs on
            ``ort``/``openvino``, time a large INT8 GEMM in the same runtime and thread count first
            (runtime/roofline.py, ~2 s per runtime): rows get achieved GMAC/s and % of that INT8 peak.
    """

    models: tuple[str, ...]
    batches: tuple[int, ...] = (1, 8, 32)
    backends: tuple[str, ...] | None = None
    seconds: float = 2.0
    iterations: int = 50
    warmup_s: float = 1.0
    warmup_iterations: int = 10
    threads: int | None = None
    overhead_batches: tuple[int, ...] = (1,)
    repeat: int = 1
    seed: int = 0
    profile: bool = False
    profile_runs: int = 20
    roofline: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("bench needs at least one model (--models A.onnx ...)")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.seconds < 0 or self.iterations < 1 or self.warmup_s < 0:
            raise ConfigError("seconds and warmup_s must be >= 0 and iterations >= 1")
        if self.repeat < 1:
            raise ConfigError(f"repeat must be >= 1, got {self.repeat}")


@dataclass(frozen=True)
class BenchRow:
    """Latency of one (model, backend, batch, repeat).

    Attributes:
        model, label, backend, precision, precision_source, sha256: What ran.
        batch: Samples per call.
        repeat: Index of the back-to-back run (0 first).
        stats: Host wall-clock latency (and device time in ``stats.device`` for GPU backends).
        timed: ``bench_fn`` (backend hook) or ``infer`` (the harness call).
        backend_info: What the backend ran with.
        error: Why the row could not run ("" when it ran).
        roofline: `runtime.roofline.roofline_figures` of the row (MACs, achieved GMAC/s, % of the
            INT8 peak) plus ``peak`` (the `Peak.to_dict()` it was held to, or None); None when not counted.
    """

    model: str
    label: str
    backend: str
    precision: Precision
    precision_source: str
    sha256: str
    batch: int
    repeat: int
    stats: LatencyStats | None
    timed: str = "infer"
    backend_info: dict[str, Any] = field(default_factory=dict, hash=False)
    error: str = ""
    roofline: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class OverheadResult:
    """Harness ``infer()`` vs a bare ``session.run`` loop on the same session, interleaved.

    Attributes:
        model, backend, batch: What was measured.
        harness, bare: Pooled latency of each side.
        overhead_pct: 100 * (harness p50 - bare p50) / bare p50.
        overhead_us: harness p50 - bare p50, in microseconds.
        paired_diff_ms: Median of per-pair (harness - bare) differences with its 95% CI (low, high).
        within_2pct: abs(overhead_pct) <= 2.
    """

    model: str
    backend: str
    batch: int
    harness: LatencyStats
    bare: LatencyStats
    overhead_pct: float
    overhead_us: float
    paired_diff_ms: tuple[float, float, float]

    @property
    def within_2pct(self) -> bool:
        return abs(self.overhead_pct) <= 2.0


@dataclass(frozen=True)
class SpreadResult:
    """Run-to-run agreement of one (model, backend, batch) over ``repeat`` sweeps.

    Attributes:
        p50_ms: p50 of each run.
        p50_ci_ms: 95% CI of each run's p50.
        spread_pct: 100 * (max - min) / min of the p50s.
        agree: Every pair of CIs overlaps.
    """

    model: str
    backend: str
    batch: int
    p50_ms: tuple[float, ...]
    p50_ci_ms: tuple[tuple[float, float], ...]
    spread_pct: float
    agree: bool


@dataclass(frozen=True)
class BenchRun:
    """The whole sweep."""

    rows: tuple[BenchRow, ...]
    overhead: tuple[OverheadResult, ...]
    spread: tuple[SpreadResult, ...]
    config: BenchConfig
    skipped: dict[str, str] = field(default_factory=dict, hash=False)
    elapsed_s: float = 0.0
    profiles: tuple[dict[str, Any], ...] = field(default=(), hash=False)  # runtime/profile.py tables (--profile)


def measure_overhead(
    harness: Callable[[], Any],
    bare: Callable[[], Any],
    *,
    batch: int,
    seconds: float = 2.0,
    iterations: int = 50,
    warmup_s: float = 0.5,
    timer: Callable[[], int] = time.perf_counter_ns,
    seed: int = 0,
) -> tuple[LatencyStats, LatencyStats, tuple[float, float, float]]:
    """Time ``harness`` and ``bare`` call by call, interleaved in ABBA order.

    Alternating single calls (harness, bare, bare, harness, ...) puts both sides in the same
    moments of a shared machine, so drifts (other jobs, clock changes) cancel; the ABBA order
    cancels "who goes first" effects. Runs until each side has ``iterations`` calls and the pair
    has used ``seconds``.

    Returns:
        (harness stats, bare stats, (median paired difference ms, CI low, CI high)), where the
        paired difference is harness_i - bare_i of neighbouring calls, with a bootstrap 95% CI.
    """
    from runtime.latency import bootstrap_ci

    for fn in (harness, bare):  # shared warm-up so neither side pays first-call costs
        measure_latency(
            fn,
            batch=batch,
            warmup_s=warmup_s,
            warmup_iterations=5,
            min_iterations=1,
            min_seconds=0.0,
            max_iterations=1,
            timer=timer,
            n_boot=1,
        )
    h_ns: list[int] = []
    b_ns: list[int] = []
    total = 0
    limit = int(seconds * 1e9)
    i = 0
    while len(h_ns) < iterations or total < limit:
        order = ((harness, h_ns), (bare, b_ns)) if i % 4 in (0, 3) else ((bare, b_ns), (harness, h_ns))
        for fn, sink in order:
            t0 = timer()
            fn()
            t1 = timer()
            sink.append(t1 - t0)
            total += t1 - t0
        i += 1
    h = np.asarray(h_ns, dtype=np.float64) / 1e6
    b = np.asarray(b_ns, dtype=np.float64) / 1e6
    diff = h - b
    lo, hi = bootstrap_ci(diff, 50, seed=seed)
    return summarize(h, batch=batch, seed=seed), summarize(b, batch=batch, seed=seed), (float(np.median(diff)), lo, hi)


def _make_backend(name: str, path: str, threads: int | None):
    from runtime.backends import get_backend

    opts = {"threads": threads} if threads and name in ("ort", "torch", "openvino") else {}
    return get_backend(name)(path, **opts)


def spread_of(rows: Sequence[BenchRow]) -> tuple[SpreadResult, ...]:
    """Pure: run-to-run spread of rows grouped by (model, backend, batch) over repeats."""
    groups: dict[tuple[str, str, int], list[BenchRow]] = {}
    for r in rows:
        if r.stats is not None:
            groups.setdefault((r.model, r.backend, r.batch), []).append(r)
    out = []
    for (model, backend, batch), rs in groups.items():
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r.repeat)
        p50 = tuple(r.stats.p50_ms for r in rs)
        cis = tuple(r.stats.p50_ci_ms for r in rs)
        agree = all(cis_overlap(a, b) for i, a in enumerate(cis) for b in cis[i + 1 :])
        out.append(SpreadResult(model, backend, batch, p50, cis, 100.0 * (max(p50) - min(p50)) / min(p50), agree))
    return tuple(out)


def _describe(path: str, describe_model: Callable[[str], Any]) -> Any:
    """`runtime.parity.describe_model`, or for an ONNX file without a deployment contract a bare
    description: latency needs no contract (the feeds are random, shaped from the graph input)."""
    from runtime.contract import REQUIRED_KEYS, read_metadata
    from runtime.errors import ArtifactError

    try:
        return describe_model(path)
    except ArtifactError:
        if not str(path).lower().endswith(".onnx"):
            raise
        meta = read_metadata(path)  # re-raises for a missing or corrupt file
        if all(k in meta for k in REQUIRED_KEYS):
            raise  # a contract that is there but broken is an error, not "no contract"
    from runtime.artifacts import sha256_file
    from runtime.parity import ModelInfo, detect_precision
    from runtime.preprocess import PreprocessSpec

    log.warning(
        "%s has no deployment contract: benchmarking it on random inputs shaped from its graph input "
        "(latency only; `python -m export adopt` adds a contract for parity, quantization and inference)",
        path,
    )
    precision, source, method = detect_precision(path)
    return ModelInfo(
        path=str(path),
        kind="onnx",
        model_name="(no contract)",
        class_names=(),
        preprocess=PreprocessSpec(),
        precision=precision,
        precision_source=source,
        method=method,
        sha256=sha256_file(path),
    )


def run_bench(cfg: BenchConfig, *, progress: bool = False) -> BenchRun:
    """Run the latency sweep described by ``cfg``.

    Raises:
        ArtifactError: a model file is missing or corrupt (before any timing).
    """
    from runtime.parity import backends_for, describe_model

    t_start = time.perf_counter()
    infos = [_describe(m, describe_model) for m in cfg.models]
    skipped: dict[str, str] = {}
    plan: list[tuple[Any, str]] = []
    for info in infos:
        names, skip = backends_for(info.path, cfg.backends)
        if cfg.backends is None:  # the PyTorch reference is not a deployment target
            names = [n for n in names if n != "torch"]
        skipped.update(skip)
        plan.extend((info, n) for n in names)
    if not plan:
        why = "; ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none accepts these files"
        raise ConfigError(f"no available backend runs {[i.label for i in infos]} ({why})")
    macs, peaks = _roofline_prepass(plan, cfg) if cfg.roofline else ({}, {})
    rows: list[BenchRow] = []
    overhead: list[OverheadResult] = []
    profiles: list[dict[str, Any]] = []
    total = len(plan) * len(cfg.batches) * cfg.repeat
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="bench", unit="row")
    for rep in range(cfg.repeat):
        for info, name in plan:
            try:
                be = _make_backend(name, info.path, cfg.threads).load()
            except PipelineError as exc:
                rows += [_row(info, name, b, rep, None, error=f"{type(exc).__name__}: {exc}") for b in cfg.batches]
                continue
            try:
                desc = be.describe()
                fixed = (
                    be.input_specs[0].shape[0]
                    if be.input_specs and isinstance(be.input_specs[0].shape[0], int)
                    else None
                )
                for b in cfg.batches:
                    if fixed is not None and b != fixed:  # a fixed-batch graph would silently run its own batch
                        error = (
                            f"the model has a fixed batch of {fixed}; "
                            f"bench it with --batch {fixed} (or make the batch dynamic: export adopt)"
                        )
                        rows.append(_row(info, name, b, rep, None, error=error))
                        continue
                    feeds = random_feeds(be.input_specs, b, seed=cfg.seed)
                    hook = be.bench_fn(b)
                    fn = hook if hook is not None else (lambda be=be, feeds=feeds: be.infer(feeds))
                    stats = measure_latency(
                        fn,
                        batch=b,
                        warmup_s=cfg.warmup_s,
                        warmup_iterations=cfg.warmup_iterations,
                        min_iterations=cfg.iterations,
                        min_seconds=cfg.seconds,
                        seed=cfg.seed,
                    )
                    rows.append(
                        _row(
                            info,
                            name,
                            b,
                            rep,
                            stats,
                            timed="bench_fn" if hook else "infer",
                            backend_info=desc,
                            roofline=_roofline_of(macs.get((info.path, b)), stats, peaks.get(name)),
                        )
                    )
                    log.info(
                        "%-40s %-8s b=%-3d p50 %.3f ms [%.3f, %.3f] p99 %.3f ms  %.1f img/s",
                        info.label,
                        name,
                        b,
                        stats.p50_ms,
                        *stats.p50_ci_ms,
                        stats.p99_ms,
                        stats.throughput_ips,
                    )
                    if bar is not None:
                        bar.update(1)
                    if cfg.profile and rep == 0:
                        _profile(profiles, name, info.path, feeds, cfg)
                    session = getattr(be, "session", None)
                    if rep == 0 and b in cfg.overhead_batches and session is not None and hook is None:
                        bare_feeds = dict(feeds)
                        h, bare, paired = measure_overhead(
                            lambda be=be, feeds=feeds: be.infer(feeds),
                            lambda s=session, f=bare_feeds: s.run(None, f),
                            batch=b,
                            seconds=cfg.seconds,
                            iterations=cfg.iterations,
                            warmup_s=min(cfg.warmup_s, 0.5),
                            seed=cfg.seed,
                        )
                        pct = 100.0 * (h.p50_ms - bare.p50_ms) / bare.p50_ms
                        overhead.append(
                            OverheadResult(info.path, name, b, h, bare, pct, (h.p50_ms - bare.p50_ms) * 1e3, paired)
                        )
                        log.info(
                            "harness overhead %s b=%d: p50 %.4f vs bare %.4f ms (%+.2f%%)",
                            info.label,
                            b,
                            h.p50_ms,
                            bare.p50_ms,
                            pct,
                        )
            finally:
                be.close()
    if bar is not None:
        bar.close()
    return BenchRun(
        tuple(rows), tuple(overhead), spread_of(rows), cfg, skipped, time.perf_counter() - t_start, tuple(profiles)
    )


def _row(info: Any, backend: str, batch: int, repeat: int, stats: LatencyStats | None, **extra: Any) -> BenchRow:
    """A `BenchRow` of model ``info`` (a `runtime.parity.ModelInfo`) on ``backend``."""
    return BenchRow(
        info.path,
        info.label,
        backend,
        info.precision,
        info.precision_source,
        info.sha256,
        batch,
        repeat,
        stats,
        **extra,
    )


def _roofline_prepass(plan: Sequence[tuple[Any, str]], cfg: BenchConfig) -> tuple[dict, dict]:
    """MAC counts of every (ONNX model, batch), and the INT8 peak of every CPU runtime that runs a
    model with INT8 MACs, measured before any row is timed (runtime/roofline.py).

    Returns:
        ({(path, batch): MacCount or None}, {backend name: Peak or None}). A model whose MACs
        cannot be counted (not ONNX, dynamic spatial size) or a peak that cannot be measured is
        logged and left out: the roofline columns are informative, never a failing row.
    """
    from runtime.backends.ort import default_threads
    from runtime.roofline import PEAK_RUNTIMES, count_macs, measure_peak

    macs: dict[tuple[str, int], Any] = {}
    for info in {info.path: info for info, _ in plan}.values():
        if not str(info.path).lower().endswith(".onnx"):
            continue
        for b in cfg.batches:
            try:
                macs[info.path, b] = count_macs(info.path, b)
            except PipelineError as exc:
                log.warning("roofline: no MAC count for %s at batch %d: %s", info.label, b, exc)
                macs[info.path, b] = None
    peaks: dict[str, Any] = {}
    threads = default_threads() if cfg.threads in (None, 0) else cfg.threads
    for info, name in plan:
        if name in peaks or name not in PEAK_RUNTIMES:
            continue
        if not any(m is not None and m.int8_macs for (p, _), m in macs.items() if p == info.path):
            continue
        try:
            peaks[name] = measure_peak(name, threads)
        except PipelineError as exc:
            log.warning("roofline: INT8 peak on %s not measured: %s", name, exc)
            peaks[name] = None
    return macs, peaks


def _roofline_of(count: Any, stats: LatencyStats, peak: Any) -> dict[str, Any] | None:
    """A row's roofline columns, with the peak it is held to (None without a MAC count)."""
    from runtime.roofline import roofline_figures

    if count is None or stats.p50_ms <= 0:
        return None
    out = roofline_figures(count, stats.p50_ms, peak)
    out["peak"] = peak.to_dict() if peak is not None and count.int8_macs else None
    return out


def _profile(sink: list[dict[str, Any]], backend: str, path: str, feeds: dict, cfg: BenchConfig) -> None:
    """Append the per-node time tables of one (model, backend, batch) when the backend has counters."""
    from runtime.profile import PROFILED_BACKENDS, profile_row

    if backend not in PROFILED_BACKENDS:
        log.info("--profile: no per-node counters for backend %s (covered: %s)", backend, PROFILED_BACKENDS)
        return
    try:
        sink.append(profile_row(backend, path, feeds, threads=cfg.threads, runs=cfg.profile_runs))
    except PipelineError as exc:
        log.warning("--profile %s on %s failed: %s", path, backend, exc)


def samples_array(stats: LatencyStats) -> np.ndarray:
    """Raw samples as a float64 array (for plots)."""
    return np.asarray(stats.samples_ms, dtype=np.float64)


def model_labels(paths: Sequence[str]) -> dict[str, str]:
    """Path -> short label (parent/name)."""
    return {p: f"{Path(p).parent.name}/{Path(p).name}" for p in paths}
