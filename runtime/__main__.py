"""``python -m runtime <verb>`` — thin CLIs over the torch-free runtime.

    python -m runtime parity --reference RUN/checkpoint.pt --candidates RUN/model.onnx [...] [--out DIR]
    python -m runtime bench --models RUN/model.onnx [...] --batch 1,8,32 [--seconds S] [--out DIR]

Verbs live in `VERBS`: verb -> ``"module:function"``, where ``function(argv: list[str]) -> int``
parses its own arguments (with its own ``build_parser()``) and returns the exit code. Other
modules add theirs with one line here (``build``, ``selftest``, ``infer``, ``pipeline``) or with
`register_verb` at import time; the module is imported only when its verb runs, so a missing
optional dependency (TensorRT) never breaks the other verbs.

Every verb goes through `runtime.cli.cli_entry` and returns the exit codes of the one table,
`runtime.errors.EXIT_CODES` (docs/errors.md; a failing parity row is ``EXIT_ERROR``);
``--debug`` adds the traceback to an error message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from runtime.cli import add_common_flags, cli_entry, parse_int_list, setup_logging
from runtime.errors import EXIT_ERROR, EXIT_OK, EXIT_USAGE, ConfigError, exit_codes_help
from runtime.lock import output_lock

log = logging.getLogger("runtime")

# verb -> "module:function(argv) -> int". Keep the help text in VERB_HELP.
VERBS: dict[str, str] = {
    "parity": "runtime.__main__:parity_main",
    "bench": "runtime.__main__:bench_main",
    "build": "runtime.trt.cli:build_main",  # TensorRT (runtime/trt/cli.py VERB_TARGETS)
    "selftest": "runtime.trt.cli:selftest_main",
    "pipeline": "pipeline.cli:pipeline_main",  # the top layer, reached by name (no upward import)
    "infer": "runtime.infer:infer_main",
}
VERB_HELP: dict[str, str] = {
    "parity": "accuracy parity of candidate models × backends against a reference",
    "bench": "latency of models × backends × batch sizes (CPU perf_counter_ns; CUDA events on GPU backends)",
    "build": "ONNX -> TensorRT engine (+ sidecar), rebuilt when TensorRT version or GPU differ",
    "selftest": "TensorRT self-test on this device",
    "pipeline": "train -> export -> quantize -> TensorRT -> parity -> bench -> report, reusing up-to-date artifacts",
    "infer": "faces in images/folders/videos/a camera -> expressions: annotated outputs, predictions CSV/JSON, latency",
}


def register_verb(verb: str, target: str, help: str = "") -> None:  # noqa: A002 - argparse's word
    """Add ``verb`` -> ``"module:function"``; a duplicate raises `ConfigError`."""
    if verb in VERBS:
        raise ConfigError(f"verb {verb!r} is already registered as {VERBS[verb]}")
    VERBS[verb] = target
    VERB_HELP[verb] = help


def _command(verb: str, argv: Sequence[str]) -> str:
    return "python -m runtime " + shlex.join([verb, *argv])


def _write_locked(report, out: Path, purpose: str, *, plots: bool) -> None:
    """Write a harness report into ``out`` while holding its lock (runtime/lock.py), and say where."""
    from runtime.report import write_report

    with output_lock(out, purpose):
        paths = write_report(report, out, plots=plots)
    log.info("report: %s", ", ".join(str(p) for p in paths.values()))


def _csv(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text else None


# --------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------
def build_parity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime parity",
        description="Compare candidate models on every available backend with a reference.",
    )
    p.add_argument("--reference", required=True, help="RUN/checkpoint.pt (PyTorch) or RUN/model.onnx (ORT CPU)")
    p.add_argument("--candidates", required=True, nargs="+", help="candidate model files (.onnx)")
    p.add_argument(
        "--data",
        default=None,
        help="ImageFolder, any folder of images (labels not needed: agreement with the reference is "
        "reported), or dataset YAML (default: the reference's dataset, regenerated)",
    )
    p.add_argument("--split", default="val", choices=("train", "val", "test"), help="split to score (default val)")
    from runtime.images import add_detect_options

    add_detect_options(p)  # --detect: --data holds whole photos, faces are cropped first (into OUT/faces/)
    p.add_argument("--out", default=None, help="report folder (default: <reference folder>/parity)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: every available one)")
    p.add_argument("--reference-backend", default=None, help="default: torch for .pt, ort for .onnx")
    p.add_argument("--batch-size", type=int, default=32, help="inference batch (default 32)")
    p.add_argument("--limit", type=int, default=None, help="score at most N samples")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_flags(p, threads=True)
    return p


@cli_entry(argv_start=2)
def parity_main(argv: list[str]) -> int:
    """``python -m runtime parity``; errors become a message and an exit code (docs/errors.md)."""
    args = build_parity_parser().parse_args(argv)
    setup_logging(args.verbose)
    from runtime.configs import to_dict
    from runtime.env import capture_environment
    from runtime.parity import ParityConfig, run_parity
    from runtime.report import parity_report

    out = Path(args.out) if args.out else Path(args.reference).parent / "parity"
    data = args.data
    if args.detect:  # faces cropped from the photos into OUT/faces/ first
        from runtime.images import detected_data

        with output_lock(out, "parity report"):
            data = detected_data(args, out / "faces")
    cfg = ParityConfig(
        reference=args.reference,
        candidates=tuple(args.candidates),
        data=data,
        split=args.split,
        backends=_csv(args.backends),
        reference_backend=args.reference_backend,
        batch_size=args.batch_size,
        threads=args.threads,
        limit=args.limit,
    )
    run = run_parity(cfg, progress=not args.no_progress)
    report = parity_report(
        run, command=_command("parity", argv), environment=capture_environment(), config=to_dict(cfg)
    )
    _write_locked(report, out, "parity report", plots=not args.no_plots)
    if not report.passed:
        for r in run.failing:
            why = "; ".join(r.result.reasons) if r.result else r.error
            log.error("FAIL %s: %s", r.name, why)
        log.error(
            "%d of %d parity rows failed: %s", len(run.failing), len(run.rows), ", ".join(r.name for r in run.failing)
        )
        return EXIT_ERROR
    log.info("all %d parity rows passed", len(run.rows))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------
def build_bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime bench",
        description="Latency of models × backends × batch sizes (warm-up, then N calls and S seconds).",
    )
    p.add_argument("--models", required=True, nargs="+", help="model files (.onnx)")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes (default 1,8,32)")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per measurement (default 2)")
    p.add_argument("--iterations", type=int, default=50, help="minimum timed calls per measurement (default 50)")
    p.add_argument("--warmup", type=float, default=1.0, help="minimum warm-up seconds (default 1)")
    p.add_argument("--backends", default=None, help="comma-separated backends (default: every available one but torch)")
    p.add_argument("--overhead-batches", default="1", help="batches for the harness-vs-bare check ('' = none)")
    p.add_argument("--repeat", type=int, default=1, help="back-to-back sweeps; >1 reports run-to-run spread")
    p.add_argument("--parity", default=None, help="parity report JSON whose accuracy columns join the rows")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also write per-node and per-op-type time tables (ORT profiling, OpenVINO PERF_COUNT) into OUT/profile/",
    )
    p.add_argument(
        "--roofline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count MACs and time a large INT8 GEMM per CPU runtime (~2 s each): achieved GMAC/s and "
        "%% of INT8 peak per row (default on)",
    )
    p.add_argument("--out", default=None, help="report folder (default: <first model folder>/bench)")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common_flags(p, threads=True)
    return p


@cli_entry(argv_start=2)
def bench_main(argv: list[str]) -> int:
    """``python -m runtime bench``; errors become a message and an exit code (docs/errors.md)."""
    args = build_bench_parser().parse_args(argv)
    setup_logging(args.verbose)
    from runtime.bench import BenchConfig, run_bench
    from runtime.configs import to_dict
    from runtime.env import capture_environment
    from runtime.report import bench_report, load_report

    parity = load_report(args.parity) if args.parity else None
    cfg = BenchConfig(
        models=tuple(args.models),
        batches=parse_int_list(args.batch, "--batch"),
        backends=_csv(args.backends),
        seconds=args.seconds,
        iterations=args.iterations,
        warmup_s=args.warmup,
        threads=args.threads,
        overhead_batches=parse_int_list(args.overhead_batches, "--overhead-batches")
        if args.overhead_batches.strip()
        else (),
        repeat=args.repeat,
        profile=args.profile,
        roofline=args.roofline,
    )
    run = run_bench(cfg, progress=not args.no_progress)
    report = bench_report(
        run, command=_command("bench", argv), environment=capture_environment(), config=to_dict(cfg), parity=parity
    )
    out = Path(args.out) if args.out else Path(args.models[0]).parent / "bench"
    _write_locked(report, out, "bench report", plots=not args.no_plots)
    if run.profiles:
        from runtime.profile import write_profile

        with output_lock(out, "bench profile"):
            written = [write_profile(p, out)[1] for p in run.profiles]
        log.info("profiles: %s", ", ".join(str(w) for w in written))
    if not report.passed:
        log.error("%d bench row(s) failed: %s", len(report.failing), "; ".join(report.failing))
        return EXIT_ERROR
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Top-level parser: lists the verbs; each verb parses its own arguments."""
    p = argparse.ArgumentParser(
        prog="python -m runtime",
        description="Torch-free runtime: parity, latency, (TensorRT build, inference) on the device.",
        epilog="verbs:\n"
        + "\n".join(f"  {v:<10} {VERB_HELP.get(v, '')}" for v in VERBS)
        + "\n\n`python -m runtime VERB --help` shows a verb's options.\n"
        + exit_codes_help("all"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("verb", choices=sorted(VERBS), help="what to do")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the verb's own options")
    return p


def resolve_verb(verb: str) -> Callable[[list[str]], int]:
    """Import and return the function registered for ``verb``."""
    module_name, fn_name = VERBS[verb].split(":")
    if module_name == "runtime.__main__":  # this file, possibly running as __main__: no second copy
        return globals()[fn_name]
    return getattr(importlib.import_module(module_name), fn_name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        build_parser().print_help()
        return EXIT_OK if argv else EXIT_USAGE
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        build_parser().print_usage(sys.stderr)
        print(f"python -m runtime: error: unknown verb {verb!r}; valid: {', '.join(sorted(VERBS))}", file=sys.stderr)
        return EXIT_USAGE
    try:
        fn = resolve_verb(verb)
    except (ImportError, AttributeError) as exc:
        setup_logging()
        log.error("verb %r is registered as %s but cannot be loaded: %s", verb, VERBS[verb], exc)
        return EXIT_ERROR
    try:
        return int(fn(rest))
    except SystemExit as exc:  # argparse usage errors exit 2; keep its code
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
