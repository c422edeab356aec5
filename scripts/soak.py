"""Memory soak: many batch-1 inferences through each CPU backend, RSS watched for growth.

    python scripts/soak.py                        # 10,000 inferences per backend, LANMSFF, 1 thread
    python scripts/soak.py --count 2000 --backends ort,torch --json runs/soak.json

What runs: a freshly initialised (seed 0) model exported to a temporary folder with the project's
own code (`export.exporter.export_onnx`; `quantize.methods.ort_ptq.quantize_ort` for the INT8 model, CPU
form; `quantize.fp16.convert_fp16` for the FP16 model), then loaded through the project's backend
classes (`runtime.backends.get_backend`), i.e. the code path ``parity``, ``bench`` and ``infer``
use. Backends (``--backends``):

    ort        onnxruntime CPU, FP32 ONNX
    ort-int8   onnxruntime CPU, INT8 Q/DQ ONNX (U8S8, the x86 form)
    ort-fp16   onnxruntime CPU, FP16 ONNX (float32 I/O)
    torch      the PyTorch reference backend on the checkpoint

Each backend gets ``--warmup`` inferences first (session arenas, lazy kernel set-up, allocator
pools), then ``--count`` inferences cycling through a fixed-seed pool of random inputs, with the
process RSS sampled every ``--sample-every`` inferences. Reported per backend: RSS after warm-up
(start), at the end, the maximum, growth (end - start) in MiB and per 1000 inferences, the
least-squares slope over all samples (MiB per 1000 inferences) with its R², the growth in
Python objects tracked by the garbage collector, and whether the outputs for the pool at the end
are the ones seen during warm-up.

How to read it: a leak is growth that keeps coming, a steady slope with a high R²; an allocator or
arena settling after warm-up is a one-off step (growth with a low R², flat afterwards). The run
fails (exit 1) when a backend's RSS grows by more than ``--max-growth-mib`` after warm-up and
keeps growing: a run over the bound gets a confirmation window of another ``--count``
inferences, and only growth of more than half the bound there too fails (a leak continues at its
rate; an allocator or cache step - measured once in CI on the torch backend, +10 MiB in 1000
inferences - does not, and is reported, not failed), when
its Python object count grows by more than ``--max-objects-per-1k`` per 1000 inferences (a
Python-level leak: deterministic, so this catches small leaks in short runs), or when its outputs
drift. Exit 2: bad usage.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

from runtime.cli import setup_logging  # noqa: E402 - after the sys.path line
from runtime.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE  # noqa: E402 - after the sys.path line

MIB = 1024 * 1024
ALL_BACKENDS = ("ort", "ort-int8", "ort-fp16", "torch")
# The default bound. Measured on the 2-core dev machine (BENCHMARKS.md, memory soak): after a
# 200-inference warm-up, 10,000 LANMSFF inferences moved RSS by at most 0.03 MiB on every backend.
# 8 MiB leaves room for allocator steps on a busy machine and still catches a leak of one 64×64
# float input (16 KiB) per inference within 512 inferences.
DEFAULT_MAX_GROWTH_MIB = 8.0
# Python objects (gc-tracked) that may appear per 1000 inferences: a leak of one dict/list per call
# is 1000; logging/caches settling add a handful, independent of the count.
DEFAULT_MAX_OBJECTS_PER_1K = 20.0
# Largest |output now - output during warm-up| for the same input (the same session, same thread
# count: should be bit-identical; a small tolerance for kernels that pick algorithms at run time).
OUTPUT_DRIFT_ATOL = 1e-5
POOL_SIZE = 16

log = logging.getLogger("soak")


# ---- memory probes ----------------------------------------------------------------------------
try:
    import psutil

    _PROCESS = psutil.Process()
except ImportError:  # psutil is in the dev environment, but /proc is enough on Linux
    _PROCESS = None


def rss_bytes() -> int:
    """Resident set size of this process in bytes (psutil, else /proc/self/status VmRSS)."""
    if _PROCESS is not None:
        return int(_PROCESS.memory_info().rss)
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("cannot read the RSS: no psutil and no /proc/self/status VmRSS")


def gc_object_count() -> int:
    """Objects tracked by the garbage collector, after a full collection."""
    gc.collect()
    return len(gc.get_objects())


# ---- arithmetic -------------------------------------------------------------------------------
def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Slope of the least-squares line through (xs, ys) and its R² (0 when ys is constant)."""
    if len(xs) != len(ys):
        raise ValueError(f"xs and ys differ in length ({len(xs)} vs {len(ys)})")
    if len(xs) < 2:
        return 0.0, 0.0
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError("all xs are equal: no slope")
    slope = float(dx @ dy) / sxx
    syy = float(dy @ dy)
    r2 = (float(dx @ dy) ** 2) / (sxx * syy) if syy > 0 else 0.0
    return slope, r2


@dataclass
class Growth:
    """What an RSS series (taken after warm-up) says about memory growth."""

    inferences: int
    start_mib: float
    end_mib: float
    max_mib: float
    growth_mib: float
    growth_per_1k_mib: float
    slope_per_1k_mib: float
    r2: float
    shape: str  # "flat", "slope" (steady growth: a leak's signature) or "step" (one-off)
    over_bound: bool


def analyse_rss(samples: Sequence[tuple[int, int]], max_growth_mib: float, *, flat_mib: float = 1.0) -> Growth:
    """Growth of an RSS series ``[(inferences done, rss bytes), ...]``, first sample = after warm-up.

    growth = last - first; the slope is least squares over every sample, in MiB per 1000
    inferences. ``shape`` is "flat" when growth and the slope's projection over the run both stay
    under ``flat_mib``; otherwise "slope" when the line explains most of the variance (R² >= 0.8,
    steady growth) and "step" when it does not (a jump, then flat). Only ``growth_mib >
    max_growth_mib`` sets ``over_bound``: the shape is for the reader.
    """
    if len(samples) < 2:
        raise ValueError(f"need at least 2 RSS samples, got {len(samples)}")
    ns = [int(n) for n, _ in samples]
    mib = [r / MIB for _, r in samples]
    span = ns[-1] - ns[0]
    if span <= 0:
        raise ValueError("samples must cover a positive number of inferences")
    growth = mib[-1] - mib[0]
    slope, r2 = least_squares(ns, mib)
    slope_1k = slope * 1000.0
    projected = abs(slope) * span
    if abs(growth) < flat_mib and projected < flat_mib:
        shape = "flat"
    elif r2 >= 0.8:
        shape = "slope"
    else:
        shape = "step"
    return Growth(
        inferences=span,
        start_mib=mib[0],
        end_mib=mib[-1],
        max_mib=max(mib),
        growth_mib=growth,
        growth_per_1k_mib=growth / span * 1000.0,
        slope_per_1k_mib=slope_1k,
        r2=r2,
        shape=shape,
        over_bound=growth > max_growth_mib,
    )


@dataclass
class SoakResult:
    """One backend's soak."""

    backend: str
    model: str
    count: int
    warmup: int
    threads: int
    seconds: float
    ms_per_inference: float
    growth: Growth
    objects_start: int
    objects_end: int
    objects_per_1k: float
    output_drift: float
    samples: list[tuple[int, int]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    # RSS growth (MiB) over a confirmation window of ``count`` more inferences, run only when the
    # soak window grew past the bound; None when it did not run.
    confirm_growth_mib: float | None = None

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def judge(result: SoakResult, max_growth_mib: float, max_objects_per_1k: float) -> list[str]:
    """Why ``result`` fails (empty when it passes)."""
    out = []
    g = result.growth
    confirmed = result.confirm_growth_mib is None or result.confirm_growth_mib > max_growth_mib / 2
    if g.growth_mib > max_growth_mib and confirmed:
        more = (
            ""
            if result.confirm_growth_mib is None
            else f", then {result.confirm_growth_mib:.2f} MiB more over {result.count} further inferences"
        )
        out.append(
            f"RSS grew {g.growth_mib:.2f} MiB over {g.inferences} inferences after warm-up "
            f"{more} (bound {max_growth_mib:g} MiB; shape {g.shape}, slope {g.slope_per_1k_mib:.3f} MiB/1k, "
            f"R² {g.r2:.2f})"
        )
    if result.objects_per_1k > max_objects_per_1k:
        out.append(
            f"Python objects grew by {result.objects_end - result.objects_start} "
            f"({result.objects_per_1k:.1f} per 1000 inferences, bound {max_objects_per_1k:g})"
        )
    if not math.isfinite(result.output_drift) or result.output_drift > OUTPUT_DRIFT_ATOL:
        out.append(
            f"outputs drifted: max |Δ| {result.output_drift:.3g} for the same inputs (atol {OUTPUT_DRIFT_ATOL:g})"
        )
    return out


# ---- models -----------------------------------------------------------------------------------
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def prepare_models(model_name: str, folder: Path, backends: Sequence[str]) -> dict[str, tuple[str, Path]]:
    """Export ``model_name`` (random init, seed 0) and its variants into ``folder``.

    Returns backend label -> (registered backend name, model path).
    """
    import onnx
    import torch

    from export.config import ExportConfig
    from export.exporter import export_onnx
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    spec = get_model_info(model_name).preprocess
    ckpt = save_checkpoint(
        folder / "checkpoint.pt",
        create_model(model_name).eval(),
        model_name=model_name,
        class_names=CLASSES,
        preprocess=spec,
        dataset={},
    )
    out: dict[str, tuple[str, Path]] = {}
    if "torch" in backends:
        out["torch"] = ("torch", ckpt)
    if not {"ort", "ort-int8", "ort-fp16"} & set(backends):
        return out
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the export's parity-on-random-inputs warning is expected here
    try:
        fp32 = export_onnx(ExportConfig(checkpoint=ckpt, out=folder / "model.onnx", parity_batches=(1, 2))).model
    finally:
        root.setLevel(level)
    out["ort"] = ("ort", fp32)
    proto = onnx.load(str(fp32))
    if "ort-int8" in backends:
        from quantize.methods.ort_ptq import quantize_ort

        rng = np.random.default_rng(1)
        calib = rng.random((32, *spec.input_shape), dtype=np.float32)  # in [0, 1), like preprocessed images
        q, _ = quantize_ort(proto, calib, target="cpu")
        onnx.save(q, str(folder / "model.ort.int8.onnx"))
        out["ort-int8"] = ("ort", folder / "model.ort.int8.onnx")
    if "ort-fp16" in backends:
        from quantize.fp16 import convert_fp16

        h, _ = convert_fp16(proto)
        onnx.save(h, str(folder / "model.fp16.onnx"))
        out["ort-fp16"] = ("ort", folder / "model.fp16.onnx")
    return {k: out[k] for k in backends if k in out}


# ---- the soak ---------------------------------------------------------------------------------
def soak_backend(
    label: str,
    backend: str | type,
    path: Path,
    *,
    count: int,
    warmup: int = 200,
    threads: int = 1,
    sample_every: int = 100,
    max_growth_mib: float = DEFAULT_MAX_GROWTH_MIB,
    max_objects_per_1k: float = DEFAULT_MAX_OBJECTS_PER_1K,
    model: str = "",
    progress: bool = False,
    rss: Callable[[], int] = rss_bytes,
) -> SoakResult:
    """Warm up, then run ``count`` batch-1 inferences through one backend, sampling the RSS.

    ``backend`` is a registered backend name (``ort``, ``torch``) or a `runtime.backends.Backend`
    subclass; it is built as ``backend(path, threads=threads)``.
    """
    from runtime.backends import get_backend

    if count < 2 or warmup < 1 or sample_every < 1:
        raise ValueError(f"need count >= 2, warmup >= 1, sample_every >= 1 (got {count}, {warmup}, {sample_every})")
    cls = get_backend(backend) if isinstance(backend, str) else backend
    with cls(path, threads=threads) as runner:
        spec = runner.input_specs[0]
        shape = spec.concrete_shape(1)
        rng = np.random.default_rng(0)
        # Values in [0, 1): what the contract's preprocessing feeds (and in range for INT8 scales).
        pool = [{spec.name: rng.random(shape, dtype=np.float64).astype(spec.dtype)} for _ in range(POOL_SIZE)]
        first = [runner.infer(feeds) for feeds in pool]
        for i in range(max(0, warmup - POOL_SIZE)):
            runner.infer(pool[i % POOL_SIZE])
        rss()  # anything the probe sets up on first use belongs to the warm-up, not to the soak
        objects_start = gc_object_count()
        samples = [(0, rss())]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=count, desc=label, unit="inf", leave=False, mininterval=1.0)
        t0 = time.perf_counter()
        for i in range(1, count + 1):
            runner.infer(pool[i % POOL_SIZE])
            if i % sample_every == 0 or i == count:
                samples.append((i, rss()))
                if bar is not None:
                    bar.update(i - bar.n)
        seconds = time.perf_counter() - t0
        if bar is not None:
            bar.close()
        confirm = None
        if analyse_rss(samples, max_growth_mib).over_bound:
            # Over the bound: a leak keeps growing at its rate, a one-off step does not. Measure
            # another window of the same length before calling it a leak.
            log.info("%s: RSS grew past %g MiB; running %d more inferences to confirm", label, max_growth_mib, count)
            before = rss()
            for i in range(count):
                runner.infer(pool[i % POOL_SIZE])
            confirm = (rss() - before) / MIB
        last = [runner.infer(feeds) for feeds in pool]
        drift = 0.0
        for a, b in zip(first, last):
            for k in a:
                diff = np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))
                drift = max(drift, float(diff.max()) if diff.size else 0.0)
        del first, last
        objects_end = gc_object_count()
    growth = analyse_rss(samples, max_growth_mib)
    result = SoakResult(
        backend=label,
        model=model,
        count=count,
        warmup=warmup,
        threads=threads,
        seconds=seconds,
        ms_per_inference=seconds / count * 1000.0,
        growth=growth,
        objects_start=objects_start,
        objects_end=objects_end,
        objects_per_1k=(objects_end - objects_start) / (count if confirm is None else 2 * count) * 1000.0,
        output_drift=drift,
        samples=samples,
        confirm_growth_mib=confirm,
    )
    result.failures = judge(result, max_growth_mib, max_objects_per_1k)
    return result


def available(labels: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The labels whose backend can run here, and label -> reason for the others."""
    from runtime.backends import available_backends

    reasons = available_backends(("ort", "torch"))
    ok, skipped = [], {}
    for label in labels:
        reason = reasons["torch" if label == "torch" else "ort"]
        if reason:
            skipped[label] = reason
        else:
            ok.append(label)
    return ok, skipped


def run_soak(
    count: int = 10_000,
    backends: Sequence[str] = ALL_BACKENDS,
    *,
    model: str = "lanmsff",
    threads: int = 1,
    warmup: int = 200,
    sample_every: int | None = None,
    max_growth_mib: float = DEFAULT_MAX_GROWTH_MIB,
    max_objects_per_1k: float = DEFAULT_MAX_OBJECTS_PER_1K,
    workdir: Path | None = None,
    progress: bool = False,
) -> tuple[list[SoakResult], dict[str, str]]:
    """Soak every backend in ``backends`` that is available; returns (results, skipped label -> reason)."""
    unknown = [b for b in backends if b not in ALL_BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {unknown}; valid: {', '.join(ALL_BACKENDS)}")
    labels, skipped = available(list(dict.fromkeys(backends)))
    every = sample_every or max(1, min(100, count // 50))
    results: list[SoakResult] = []
    with tempfile.TemporaryDirectory(prefix="ferdeploy-soak-") as tmp:
        models = prepare_models(model, Path(workdir or tmp), labels)
        for label in labels:
            backend_name, path = models[label]
            results.append(
                soak_backend(
                    label,
                    backend_name,
                    path,
                    count=count,
                    warmup=warmup,
                    threads=threads,
                    sample_every=every,
                    max_growth_mib=max_growth_mib,
                    max_objects_per_1k=max_objects_per_1k,
                    model=model,
                    progress=progress,
                )
            )
            gc.collect()
    return results, skipped


def format_table(results: Sequence[SoakResult]) -> str:
    """A Markdown table of the results."""
    head = (
        "| backend | inferences | ms/inf | RSS start MiB | RSS end MiB | RSS max MiB | growth MiB | "
        "growth MiB/1k | slope MiB/1k (R²) | shape | confirm window MiB | gc objects Δ | output drift | result |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        g = r.growth
        rows.append(
            f"| {r.backend} | {r.count:,} | {r.ms_per_inference:.2f} | {g.start_mib:.1f} | {g.end_mib:.1f} | "
            f"{g.max_mib:.1f} | {g.growth_mib:+.2f} | {g.growth_per_1k_mib:+.3f} | {g.slope_per_1k_mib:+.3f} ({g.r2:.2f}) | "
            f"{g.shape} | {'-' if r.confirm_growth_mib is None else f'{r.confirm_growth_mib:+.2f}'} | "
            f"{r.objects_end - r.objects_start:+d} | {r.output_drift:.1e} | {'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(rows)


def _positive_int(text: str) -> int:
    try:
        n = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scripts/soak.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--count", type=_positive_int, default=10_000, help="inferences per backend after warm-up (default 10000)"
    )
    p.add_argument(
        "--backends",
        default=",".join(ALL_BACKENDS),
        help=f"comma-separated subset of {','.join(ALL_BACKENDS)} (default: all available)",
    )
    p.add_argument(
        "--model", default="lanmsff", help="registered model to export (default lanmsff; lanmsff_tiny is faster)"
    )
    p.add_argument("--threads", type=_positive_int, default=1, help="intra-op threads per backend (default 1)")
    p.add_argument(
        "--warmup", type=_positive_int, default=200, help="inferences before the first RSS sample (default 200)"
    )
    p.add_argument(
        "--sample-every",
        type=_positive_int,
        default=None,
        help="RSS sample interval in inferences (default min(100, count/50))",
    )
    p.add_argument(
        "--max-growth-mib",
        type=float,
        default=DEFAULT_MAX_GROWTH_MIB,
        help=f"fail when RSS grows by more than this after warm-up (default {DEFAULT_MAX_GROWTH_MIB:g})",
    )
    p.add_argument(
        "--max-objects-per-1k",
        type=float,
        default=DEFAULT_MAX_OBJECTS_PER_1K,
        help=f"fail when gc-tracked Python objects grow faster (default {DEFAULT_MAX_OBJECTS_PER_1K:g} per 1000)",
    )
    p.add_argument("--json", default=None, help="also write the results (with every RSS sample) to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in ALL_BACKENDS]
    if bad or not backends:
        print(f"soak: unknown backend(s) {bad}; valid: {', '.join(ALL_BACKENDS)}", file=sys.stderr)
        return EXIT_USAGE
    if args.count < 2:
        print("soak: --count must be >= 2 (the growth needs two RSS samples)", file=sys.stderr)
        return EXIT_USAGE
    if not args.max_growth_mib > 0 or not args.max_objects_per_1k >= 0:
        print("soak: --max-growth-mib must be > 0 and --max-objects-per-1k >= 0", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(level=logging.WARNING)
    results, skipped = run_soak(
        args.count,
        backends,
        model=args.model,
        threads=args.threads,
        warmup=args.warmup,
        sample_every=args.sample_every,
        max_growth_mib=args.max_growth_mib,
        max_objects_per_1k=args.max_objects_per_1k,
        progress=not args.no_progress and sys.stderr.isatty(),
    )
    print(
        f"soak: {args.model}, batch 1, {args.threads} thread(s), {args.warmup} warm-up inferences, "
        f"bound {args.max_growth_mib:g} MiB RSS growth / {args.max_objects_per_1k:g} gc objects per 1k"
    )
    print(format_table(results))
    for label, reason in skipped.items():
        print(f"skipped {label}: {reason}")
    for r in results:
        for f in r.failures:
            print(f"FAIL {r.backend}: {f}")
    if args.json:
        body = {
            "model": args.model,
            "count": args.count,
            "threads": args.threads,
            "warmup": args.warmup,
            "max_growth_mib": args.max_growth_mib,
            "max_objects_per_1k": args.max_objects_per_1k,
            "results": [r.to_dict() for r in results],
            "skipped": skipped,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(body, indent=2), encoding="utf-8")
    if not results:
        print("soak: no backend could run", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK if all(r.passed for r in results) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
