"""``python -m quantize int8|fp16|lint``: thin CLI over `quantize.orchestrate.run_int8` / `run_fp16` and `runtime.qdq_lint`.

    python -m quantize int8 --onnx RUN/model.onnx --method nncf|ort --out RUN/model.int8.onnx
        [--target tensorrt|cpu] [--max-drop PTS] [--calib-size N] [--data CONFIG_OR_DIR]
        [--ignore auto|none|gates,pwfs,heads,stem,type:OpType,NODE]
    python -m quantize fp16 --onnx RUN/model.onnx --out RUN/model.fp16.onnx
    python -m quantize lint RUN/model.int8.onnx

Exit codes: `runtime.errors.EXIT_CODES` (docs/errors.md); a failed gate (``lint`` errors,
``--fail-on-parity``) is ``EXIT_ERROR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from runtime.cli import add_debug_flag, cli_entry
from runtime.errors import EXIT_ERROR, EXIT_OK, PipelineError, exit_codes_help
from runtime.lock import output_lock

log = logging.getLogger("quantize")


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return values


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="FP32 model.onnx written by python -m export onnx")
    p.add_argument("--out", required=True, help="output model (written atomically, with a JSON sidecar and a report)")
    p.add_argument("--data", default=None,
                   help="dataset YAML (a data: section or a training config), an ImageFolder, or any folder of images (labels not needed); default: the model contract's dataset")  # fmt: skip
    p.add_argument("--val-limit", type=int, default=0, help="score on at most N validation samples (default: all)")
    from runtime.images import add_detect_options

    add_detect_options(p)  # --detect: --data holds whole photos, faces are cropped first
    p.add_argument("--no-latency", action="store_true", help="skip the side-by-side CPU latency measurement")
    p.add_argument("--latency-batches", type=_batches, default=(1, 32), help="batch sizes (default 1,32)")
    p.add_argument("--latency-rounds", type=int, default=6, help="interleaved FP32/candidate rounds (default 6)")
    p.add_argument("--latency-seconds", type=float, default=0.5, help="timed seconds per model per round (default 0.5)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads for latency (default: OMP_NUM_THREADS)")
    p.add_argument("--force", action="store_true", help="redo the work even if the sidecar says it is up to date")
    p.add_argument("--fail-on-parity", action="store_true", help="exit 1 when parity misses the precision's tolerances")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quantize", description="INT8 (Q/DQ) and FP16 models for TensorRT and onnxruntime.",
                                     epilog=exit_codes_help())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("int8", help="post-training INT8 quantization to Q/DQ ONNX")
    _add_common(p)
    p.add_argument("--method", choices=("nncf", "ort"), default="nncf", help="NNCF PTQ (default) or onnxruntime quantize_static")
    p.add_argument("--target", choices=("tensorrt", "cpu"), default="tensorrt",
                   help="tensorrt: S8S8 symmetric, zero points 0 (default); cpu: U8S8 for x86 onnxruntime")  # fmt: skip
    p.add_argument("--max-drop", type=float, default=None, metavar="PTS",
                   help="NNCF accuracy control: revert layers to float until the top-1 drop is <= PTS percentage points")  # fmt: skip
    p.add_argument("--calib-size", type=int, default=300, help="calibration samples, class-balanced (default 300)")
    p.add_argument("--calib-seed", type=int, default=0, help="calibration selection seed (default 0)")
    p.add_argument("--min-calib-size", type=int, default=32, help="refuse calibration sets smaller than this (default 32)")
    p.add_argument("--ignore", default="auto",
                   help="keep in float: auto (sensitive groups where it measurably helps; default), none, or a comma list of "
                        "groups (gates, pwfs, heads, stem), type:OpType, node names")  # fmt: skip
    p.add_argument("--bias-correction", action="store_true", help="NNCF fast bias correction (off by default)")

    f = sub.add_parser("fp16", help="FP16 graph with FP32 inputs and outputs")
    _add_common(f)
    f.add_argument("--keep-fp32", default="", help="comma list of op types kept in FP32 (default: reductions and exp/log/pow)")

    lint = sub.add_parser("lint", help="check a Q/DQ model against TensorRT's explicit-quantization rules")
    lint.add_argument("model", help="Q/DQ model.onnx")
    lint.add_argument("--json", action="store_true", help="print the full report as JSON")
    for each in (parser, p, f, lint):
        add_debug_flag(each)
    return parser


def _latency(args):
    from quantize.config import LatencyConfig

    return LatencyConfig(
        enabled=not args.no_latency, batches=args.latency_batches, rounds=args.latency_rounds,
        seconds_per_round=args.latency_seconds, threads=args.threads,
    )  # fmt: skip


def _lint(path: str, as_json: bool) -> int:
    from runtime.qdq_lint import lint_qdq
    from runtime.artifacts import read_sidecar, sidecar_path

    expected: list[str] = []
    if sidecar_path(path).is_file():
        try:
            expected = list(read_sidecar(path).get("float_nodes") or [])
        except PipelineError:
            expected = []
    report = lint_qdq(Path(path), expected_float=expected)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for finding in report.findings:
            print(finding)
        print(report.summary())
    return EXIT_OK if report.passed else EXIT_ERROR


@cli_entry
def main(argv: Sequence[str]) -> int:
    """``python -m quantize``; errors become a message and an exit code (runtime.cli, docs/errors.md)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("nncf").setLevel(logging.WARNING)
    if args.command == "lint":
        return _lint(args.model, args.json)
    from quantize.config import CalibrationConfig, Fp16Config, Int8Config
    from quantize.orchestrate import run_fp16, run_int8

    data = args.data
    if args.detect:  # faces cropped from the photos into <out stem>.faces/ beside the output
        from runtime.images import detected_data

        out = Path(args.out)
        with output_lock(out.parent, "quantization"):
            data = detected_data(args, out.with_name(out.name.removesuffix(".onnx") + ".faces"))
    if args.command == "int8":
        cfg = Int8Config(
            onnx=args.onnx, out=args.out, method=args.method, target=args.target, max_drop_pts=args.max_drop,
            data=data, ignore=(args.ignore,), bias_correction=args.bias_correction, val_limit=args.val_limit,
            calibration=CalibrationConfig(size=args.calib_size, seed=args.calib_seed, min_size=args.min_calib_size),
            latency=_latency(args),
        )  # fmt: skip
        with output_lock(Path(args.out).parent, "quantization"):
            result = run_int8(cfg, force=args.force)
    else:
        keep = tuple(t.strip() for t in args.keep_fp32.split(",") if t.strip())
        cfg = Fp16Config(onnx=args.onnx, out=args.out, keep_fp32=keep, data=data, val_limit=args.val_limit,
                         latency=_latency(args))  # fmt: skip
        with output_lock(Path(args.out).parent, "quantization"):
            result = run_fp16(cfg, force=args.force)
    if result.report is not None:
        log.info("wrote %s, sidecar %s, report %s", result.out, result.sidecar, result.report_paths[1])
        if not result.report.parity.passed:
            log.warning("parity: %s", "; ".join(result.report.parity.reasons))
            if args.fail_on_parity:
                return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
