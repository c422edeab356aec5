"""``build`` and ``selftest`` verbs of ``python -m runtime`` (also runnable as ``python -m runtime.trt.cli``).

    python -m runtime build --onnx X.onnx --precision fp32|fp16|int8 [--batch 1:8:32] [--workspace-mib N]
                            [--timing-cache FILE] [--opt-level N] [--dla-core N] [--out X.engine]
                            [--typing auto|strong|flags] [--version-compatible] [--aux-streams N]
                            [--min-precision-share F] [--force] [--flavour auto|tensorrt|rtx]
                            [--compute-capability 8.6,8.9,12.0]
    python -m runtime selftest [--models DIR] [--work DIR] [--batch 1:8:32] [--bench-batches 1,8]
                               [--seconds S] [--cuda cuda-python|pycuda|all] [--cuda-graph]
                               [--flavour auto|tensorrt|rtx]

With TensorRT for RTX (``pip install '.[rtx]'``; auto-detected when full TensorRT is absent, or
``--flavour rtx``) ``build`` needs no GPU: the plan is built ahead of time for the target compute
capabilities (default 8.0, 8.6, 8.9, 12.0).

Exit codes: 0 success; 1 a pipeline error (build failed, parity or precision missed); 2 bad
command-line usage or configuration; 3 TensorRT, CUDA or the self-test's models are missing (the
message says exactly which and how to get them).

Hooking into ``python -m runtime``: its ``VERBS`` registry maps a verb to ``"module:function(argv)"``;
`VERB_TARGETS` holds the two entries (``runtime.trt.cli:build_main``, ``runtime.trt.cli:selftest_main``).
For an argparse sub-parser style main, `register(subparsers)` adds both verbs and sets ``args.func``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import add_common_flags, cli_entry, int_list_arg, setup_logging
from runtime.errors import EXIT_ERROR, EXIT_MISSING, EXIT_OK, ConfigError, PipelineError
from runtime.lock import output_lock

log = logging.getLogger("runtime.trt")

PRECISIONS = ("fp32", "fp16", "int8")
FLAVOURS = ("auto", "tensorrt", "rtx")
SELFTEST_MODELS = ("lanmsff", "manet")


# ---- argument types (argparse turns ArgumentTypeError into a usage error, exit 2) --------------------
def _batch_arg(text: str):
    from runtime.trt.cache import BatchProfile

    try:
        return BatchProfile.parse(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _share_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value}")
    return value


# ---- build -------------------------------------------------------------------------------------------
BUILD_HELP = (
    "ONNX -> TensorRT engine (+ sidecar, layer precision report); TensorRT 10.x and 11.x on a GPU, "
    "TensorRT for RTX ahead of time without one"
)
SELFTEST_HELP = (
    "on a GPU with TensorRT: build FP32/FP16/INT8 engines of both models, check parity and latency, "
    "print the table; without them, say exactly what is missing (exit 3)"
)


def add_build_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``build`` verb to an ``add_subparsers()`` group."""
    return _add_build_args(sub.add_parser("build", help=BUILD_HELP, description=BUILD_HELP))


def build_build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser of ``python -m runtime build``."""
    return _add_build_args(argparse.ArgumentParser(prog="python -m runtime build", description=BUILD_HELP))


def _add_build_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_flags(p, verbose_help="debug logging (TensorRT's log included)")
    p.add_argument("--onnx", required=True, help="model.onnx, model.fp16.onnx or model.int8.onnx")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="precision the engine must realize (default: from the file name, .fp16./.int8., else fp32)",
    )
    p.add_argument(
        "--batch", type=_batch_arg, default="1:8:32", help="optimization profile MIN:OPT:MAX (default 1:8:32)"
    )
    p.add_argument("--workspace-mib", type=_positive_int, default=None, help="workspace memory-pool limit in MiB")
    p.add_argument("--timing-cache", default=None, help="timing cache file, reused across builds")
    p.add_argument(
        "--opt-level", type=_positive_int, default=None, help="builder optimization level 0..5 (TensorRT default 3)"
    )
    p.add_argument("--dla-core", type=_positive_int, default=None, help="DLA core (Jetson AGX/NX), with GPU fallback")
    p.add_argument("--out", default=None, help="engine path (default: beside the ONNX, MODEL.PRECISION.engine)")
    p.add_argument(
        "--typing",
        choices=("auto", "strong", "flags"),
        default="auto",
        help="strong: precision from the ONNX; flags: TensorRT 10 FP16/INT8 builder flags; auto: strong, "
        "falling back to flags on TensorRT 10 only (default)",
    )
    p.add_argument("--version-compatible", action="store_true", help="build a version-compatible plan (lean runtime)")
    p.add_argument("--aux-streams", type=_positive_int, default=None, help="max auxiliary streams (parallel branches)")
    p.add_argument(
        "--min-precision-share",
        type=_share_arg,
        default=None,
        help="fail unless this share of conv/GEMM layers runs in --precision (default fp32 .9, fp16 .8, int8 .5)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a matching cached engine exists")
    p.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="auto",
        help="tensorrt (10.x/11.x, builds on its GPU), rtx (TensorRT for RTX, builds without a GPU) or auto: "
        "tensorrt when importable, else rtx (default)",
    )
    p.add_argument(
        "--compute-capability",
        default=None,
        metavar="CC[,CC...]",
        help="TensorRT for RTX: compute capabilities the plan must run on, e.g. 8.6,8.9,12.0 (default: "
        "8.0,8.6,8.9,12.0; 7.5 for Turing must be asked for)",
    )
    p.set_defaults(func=run_build)
    return p


def build_config_from_args(args: argparse.Namespace):
    """The `BuildConfig` the ``build`` verb's arguments describe (raises `ConfigError`)."""
    from runtime.backends.trt import _precision_from_name
    from runtime.trt.build import BuildConfig

    precision = args.precision or _precision_from_name(Path(args.onnx))
    return BuildConfig(
        onnx=Path(args.onnx),
        precision=precision,
        out=Path(args.out) if args.out else None,
        batch=args.batch,
        workspace_mib=args.workspace_mib,
        timing_cache=Path(args.timing_cache) if args.timing_cache else None,
        opt_level=args.opt_level,
        dla_core=args.dla_core,
        typing=args.typing,
        version_compatible=args.version_compatible,
        aux_streams=args.aux_streams,
        min_precision_share=args.min_precision_share,
        force=args.force,
        flavour=getattr(args, "flavour", None),
        targets=getattr(args, "compute_capability", None) or (),
    )


def run_build(args: argparse.Namespace) -> int:
    from runtime.trt.build import build_engine

    cfg = build_config_from_args(args)  # validated before TensorRT is touched (ConfigError: exit 2)
    with output_lock(cfg.engine_path.parent, "TensorRT build"):
        result = build_engine(cfg)
    print(result.summary())
    return EXIT_OK


# ---- selftest ------------------------------------------------------------------------------------------
def add_selftest_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``selftest`` verb to an ``add_subparsers()`` group."""
    return _add_selftest_args(sub.add_parser("selftest", help=SELFTEST_HELP, description=SELFTEST_HELP))


def build_selftest_parser() -> argparse.ArgumentParser:
    """Stand-alone parser of ``python -m runtime selftest``."""
    return _add_selftest_args(argparse.ArgumentParser(prog="python -m runtime selftest", description=SELFTEST_HELP))


def _add_selftest_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add_common_flags(p, verbose_help="debug logging (TensorRT's log included)")
    p.add_argument(
        "--models",
        default="runs/selftest/models",
        help="folder with lanmsff.onnx, lanmsff.fp16.onnx, lanmsff.int8.onnx, manet.onnx, manet.fp16.onnx, "
        "manet.int8.onnx (see docs/tensorrt.md for how to make them)",
    )
    p.add_argument("--work", default="runs/selftest", help="engines, timing cache and the report go here")
    p.add_argument("--batch", type=_batch_arg, default="1:8:32", help="optimization profile MIN:OPT:MAX")
    p.add_argument(
        "--bench-batches",
        type=int_list_arg("--bench-batches"),
        default=(1, 8),
        help="latency batch sizes (default 1,8)",
    )
    p.add_argument("--parity-samples", type=_positive_int, default=64, help="random images for parity (default 64)")
    p.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per latency figure")
    p.add_argument(
        "--cuda",
        choices=("auto", "cuda-python", "pycuda", "all"),
        default="all",
        help="CUDA library for the engines; all: also re-run FP32 parity through every installed one",
    )
    p.add_argument("--cuda-graph", action="store_true", help="bench with CUDA-graph replay as well")
    p.add_argument("--json", default=None, help="report path (default WORK/selftest.json)")
    p.add_argument(
        "--flavour",
        choices=FLAVOURS,
        default="auto",
        help="which TensorRT: tensorrt, rtx (TensorRT for RTX: needs an RTX-class GPU, compute capability "
        "8.0/8.6/8.9/12.0, to run) or auto (default)",
    )
    p.set_defaults(func=run_selftest_cli)
    return p


@dataclass(frozen=True)
class Requirement:
    """One thing the self-test needs, whether it is here, and how to get it."""

    name: str
    ok: bool
    detail: str


@dataclass
class SelftestRow:
    model: str
    precision: str
    cuda: str
    engine: str = ""
    typing: str = ""
    realized_share: float | None = None
    parity_passed: bool | None = None
    max_abs_diff: float | None = None
    top1_agreement: float | None = None
    latency: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.parity_passed)


def selftest_requirements(models_dir: Path, cuda_choice: str = "all", flavour: str | None = None) -> list[Requirement]:
    """Check TensorRT, CUDA Python + GPU, onnxruntime and the six ONNX files; never raises."""
    from runtime.trt.compat import Trt
    from runtime.trt.cuda import IMPLEMENTATIONS, get_cuda

    reqs: list[Requirement] = []
    try:
        trt = Trt.load(flavour=flavour)
        reqs.append(Requirement("TensorRT", True, f"{trt.label} ({trt.branch} branch)"))
    except PipelineError as exc:
        reqs.append(Requirement("TensorRT", False, str(exc)))
    except Exception as exc:  # noqa: BLE001 - a broken install is "missing" too
        reqs.append(Requirement("TensorRT", False, f"import failed: {type(exc).__name__}: {exc}"))
    impls = IMPLEMENTATIONS if cuda_choice in ("all", "auto") else (cuda_choice,)
    found = []
    problems = []
    for impl in impls:
        try:
            api = get_cuda(impl)
        except PipelineError as exc:
            problems.append(f"{impl}: {exc}")
            continue
        dev = api.device()
        api.close()
        found.append(f"{impl} -> {dev.name} (sm {dev.compute_capability})")
    ok = bool(found) if cuda_choice in ("all", "auto") else len(found) == len(impls)
    reqs.append(Requirement("CUDA Python + GPU", ok, "; ".join(found + problems)))
    try:
        import onnxruntime

        reqs.append(Requirement("onnxruntime (reference)", True, onnxruntime.__version__))
    except ImportError as exc:
        reqs.append(Requirement("onnxruntime (reference)", False, f"{exc}; pip install onnxruntime"))
    missing = [str(p) for p in _model_files(models_dir).values() if not p.is_file()]
    reqs.append(
        Requirement(
            "ONNX models",
            not missing,
            f"all 6 in {models_dir}"
            if not missing
            else f"missing {missing}; make them with the commands in docs/tensorrt.md ('Self-test models') and pass --models",
        )
    )
    return reqs


def _model_files(models_dir: Path) -> dict[tuple[str, str], Path]:
    out = {}
    for model in SELFTEST_MODELS:
        for precision in PRECISIONS:
            name = f"{model}.onnx" if precision == "fp32" else f"{model}.{precision}.onnx"
            out[(model, precision)] = Path(models_dir) / name
    return out


def run_selftest(args: argparse.Namespace, progress: Callable[[str], None] = lambda _m: None) -> list[SelftestRow]:
    """Build, check parity and time every (model, precision); returns one row each (plus CUDA rows)."""
    from runtime.backends.trt import TrtBackend
    from runtime.compare import compare_outputs
    from runtime.latency import measure_latency
    from runtime.trt.cuda import IMPLEMENTATIONS, cuda_unavailable_reason

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    timing_cache = work / "timing.cache"
    primary = None if args.cuda in ("auto", "all") else args.cuda
    extra_impls = [i for i in IMPLEMENTATIONS if args.cuda == "all" and not cuda_unavailable_reason(i)]
    rows: list[SelftestRow] = []
    rng = np.random.default_rng(0)
    for (model, precision), onnx in _model_files(Path(args.models)).items():
        fp32 = _model_files(Path(args.models))[(model, "fp32")]
        row = SelftestRow(model, precision, primary or "auto")
        rows.append(row)
        progress(f"{model} {precision}: building")
        engine = work / f"{model}.{precision}.engine"
        build = {"out": engine, "timing_cache": timing_cache, "flavour": getattr(args, "flavour", None)}
        try:
            with TrtBackend(onnx, precision=precision, batch=str(args.batch), build=build, cuda=primary) as backend:
                from runtime.artifacts import read_sidecar

                side = read_sidecar(engine)
                row.engine, row.typing = str(engine), side.get("typing_used", "")
                row.realized_share = side.get("precision_check", {}).get("share")
                row.cuda = backend.cuda.name
                spec = backend.input_specs[0]
                images = rng.random(spec.concrete_shape(args.parity_samples), dtype=np.float32).astype(spec.dtype)
                ref = _ort_logits(fp32, spec.name, images.astype(np.float32))
                cand = _batched(backend, spec.name, images, args.batch.max)
                parity = compare_outputs(
                    ref,
                    cand,
                    ref.argmax(1),
                    precision=precision,
                    class_names=[str(i) for i in range(ref.shape[1])],
                    sample_ids=[f"r{i}" for i in range(len(ref))],
                )
                row.parity_passed, row.max_abs_diff = parity.passed, parity.max_abs_diff
                row.top1_agreement = getattr(parity, "top1_agreement", None)
                for batch in args.bench_batches:
                    if not args.batch.min <= batch <= args.batch.max:
                        continue
                    progress(f"{model} {precision}: timing batch {batch}")
                    stats = measure_latency(backend.bench_fn(batch), batch=batch, min_seconds=args.seconds)
                    row.latency[f"b{batch}"] = _latency_summary(stats)
                    if args.cuda_graph:
                        backend.options["cuda_graph"] = True
                        stats = measure_latency(backend.bench_fn(batch), batch=batch, min_seconds=args.seconds)
                        row.latency[f"b{batch}_graph"] = _latency_summary(stats)
                        backend.options["cuda_graph"] = False
        except PipelineError as exc:
            row.error = str(exc)
            continue
        if precision == "fp32":
            # The same FP32 engine through every other installed CUDA library: copies, stream, events.
            for impl in extra_impls:
                if impl == row.cuda:
                    continue
                other = SelftestRow(
                    model, precision, impl, engine=str(engine), typing=row.typing, realized_share=row.realized_share
                )
                rows.append(other)
                try:
                    with TrtBackend(engine, cuda=impl) as backend:
                        spec = backend.input_specs[0]
                        images = rng.random(spec.concrete_shape(min(8, args.batch.max)), dtype=np.float32)
                        ref = _ort_logits(fp32, spec.name, images)
                        cand = backend.infer({spec.name: images.astype(spec.dtype)})[backend.output_names[0]]
                        other.max_abs_diff = float(np.max(np.abs(ref - cand)))
                        other.parity_passed = bool(
                            np.array_equal(ref.argmax(1), cand.argmax(1)) and other.max_abs_diff < 1e-3
                        )
                        stats = measure_latency(backend.bench_fn(1), batch=1, min_seconds=args.seconds)
                        other.latency["b1"] = _latency_summary(stats)
                except PipelineError as exc:
                    other.error = str(exc)
    return rows


def _ort_logits(onnx: Path, input_name: str, images: np.ndarray) -> np.ndarray:
    from runtime.backends.ort import make_session

    session = make_session(onnx, threads=0, log_severity=2)  # onnxruntime's defaults: the FP32 reference
    out = session.run(None, {input_name: images})[0]
    return np.asarray(out, dtype=np.float32)


def _batched(backend: Any, name: str, images: np.ndarray, max_batch: int) -> np.ndarray:
    outs = []
    for start in range(0, len(images), max_batch):
        res = backend.infer({name: images[start : start + max_batch]})
        outs.append(np.asarray(res[backend.output_names[0]], dtype=np.float32))
    return np.concatenate(outs)


def _latency_summary(stats: Any) -> dict[str, Any]:
    d = {
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
        "p50_ci_ms": list(stats.p50_ci_ms),
        "throughput_ips": stats.throughput_ips,
        "count": stats.count,
    }
    if getattr(stats, "device", None) is not None:
        d["device_p50_ms"] = stats.device.p50_ms
        d["device_p50_ci_ms"] = list(stats.device.p50_ci_ms)
    return d


def format_requirements(reqs: Sequence[Requirement]) -> str:
    lines = ["TensorRT self-test requirements:"]
    for r in reqs:
        lines.append(f"  [{'ok' if r.ok else 'MISSING'}] {r.name}: {r.detail}")
    return "\n".join(lines)


def format_rows(rows: Sequence[SelftestRow]) -> str:
    head = (
        f"{'model':8} {'prec':5} {'cuda':11} {'typing':6} {'realized':8} {'parity':6} {'max|d|':9} "
        f"{'b1 dev p50 ms':13} {'b8 dev p50 ms':13} {'b8 img/s':9}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def dev(b: str, r=r) -> str:
            lat = r.latency.get(b, {})
            v = lat.get("device_p50_ms", lat.get("p50_ms"))
            return f"{v:.3f}" if v is not None else "-"

        share = f"{r.realized_share:.0%}" if r.realized_share is not None else "-"
        parity = "-" if r.parity_passed is None else ("pass" if r.parity_passed else "FAIL")
        diff = f"{r.max_abs_diff:.2e}" if r.max_abs_diff is not None else "-"
        ips = r.latency.get("b8", {}).get("throughput_ips")
        lines.append(
            f"{r.model:8} {r.precision:5} {r.cuda:11} {r.typing or '-':6} {share:8} {parity:6} {diff:9} "
            f"{dev('b1'):13} {dev('b8'):13} {(f'{ips:.0f}' if ips else '-'):9}"
        )
        if r.error:
            lines.append(f"    error: {r.error}")
    return "\n".join(lines)


def run_selftest_cli(args: argparse.Namespace) -> int:
    reqs = selftest_requirements(Path(args.models), args.cuda, getattr(args, "flavour", None))
    print(format_requirements(reqs))
    missing = [r for r in reqs if not r.ok]
    if missing:
        print(
            f"selftest cannot run: missing {', '.join(r.name for r in missing)}. "
            "See docs/tensorrt.md ('Running the self-test').",
            file=sys.stderr,
        )
        return EXIT_MISSING
    started = time.time()
    rows = run_selftest(args, progress=lambda m: log.info("%s", m))
    print(format_rows(rows))
    report = Path(args.json) if args.json else Path(args.work) / "selftest.json"
    from runtime.artifacts import atomic_write_json

    atomic_write_json(
        report,
        {
            "requirements": [asdict(r) for r in reqs],
            "rows": [asdict(r) for r in rows],
            "seconds": round(time.time() - started, 1),
        },
    )
    print(f"report: {report}")
    return EXIT_OK if rows and all(r.passed for r in rows) else EXIT_ERROR


# ---- registration ---------------------------------------------------------------------------------------
@cli_entry(argv_start=2)
def build_main(argv: list[str]) -> int:
    """``python -m runtime build ...`` (``argv`` excludes the verb); errors map to docs/errors.md."""
    args = build_build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_build(args)


@cli_entry(argv_start=2)
def selftest_main(argv: list[str]) -> int:
    """``python -m runtime selftest ...`` (``argv`` excludes the verb); errors map to docs/errors.md."""
    args = build_selftest_parser().parse_args(argv)
    setup_logging(args.verbose)
    return run_selftest_cli(args)


#: verb -> "module:function(argv) -> int", the form runtime/__main__.py's VERBS registry takes.
VERB_TARGETS: dict[str, str] = {"build": "runtime.trt.cli:build_main", "selftest": "runtime.trt.cli:selftest_main"}
VERB_HELP: dict[str, str] = {"build": BUILD_HELP, "selftest": SELFTEST_HELP}
#: verb -> (add a sub-parser to an add_subparsers() group, run parsed args) for subparser-style mains.
VERBS: dict[str, tuple[Callable[[Any], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "build": (add_build_parser, run_build),
    "selftest": (add_selftest_parser, run_selftest_cli),
}


def register(sub: Any) -> None:
    """Add ``build`` and ``selftest`` to an ``add_subparsers()`` group; each sets ``args.func``."""
    for add, _run in VERBS.values():
        add(sub)


def build_parser() -> argparse.ArgumentParser:
    """``python -m runtime.trt.cli build|selftest ...`` (the same verbs without runtime/__main__.py)."""
    parser = argparse.ArgumentParser(
        prog="python -m runtime.trt.cli", description="TensorRT engines: build and self-test."
    )
    register(parser.add_subparsers(dest="command", required=True))
    return parser


@cli_entry
def main(argv: list[str]) -> int:
    """``python -m runtime.trt.cli build|selftest``; errors map to docs/errors.md."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
