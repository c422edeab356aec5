"""``python -m quantize int8|fp16|lint``: thin CLI over `quantize.orchestrate.run_int8` / `run_fp16` and `runtime.qdq_lint`.

    python -m quantize int8 --onnx RUN/model.onnx --method nncf|ort --out RUN/model.int8.onnx
        [--target tensorrt|cpu] [--max-drop PTS] [--calib-size N] [--data CONFIG_OR_DIR]
        [--ignore auto|none|gates,pwfs,heads,stem,type:OpType,NODE]
    python -m quantize fp16 --onnx RUN/model.onnx --out RUN/model.fp16.onnx
    python -m quantize lint RUN/model.int8.onnx
    python -m quantize explain --fp32 RUN/model.onnx --int8 RUN/model.int8.onnx [--data DIR]
        [--target-agreement 0.99] [--out DIR]

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

from runtime.cli import add_common_flags, cli_entry, int_list_arg, setup_logging
from runtime.errors import EXIT_ERROR, EXIT_OK, PipelineError, exit_codes_help
from runtime.lock import output_lock

log = logging.getLogger("quantize")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", required=True, help="FP32 model.onnx written by python -m export onnx")
    p.add_argument("--out", required=True, help="output model (written atomically, with a JSON sidecar and a report)")
    p.add_argument(
        "--data",
        default=None,
        help="dataset YAML (a data: section or a training config), an ImageFolder, or any folder of images (labels not needed); default: the model contract's dataset",
    )
    p.add_argument("--val-limit", type=int, default=0, help="score on at most N validation samples (default: all)")
    from runtime.images import add_detect_options

    add_detect_options(p)  # --detect: --data holds whole photos, faces are cropped first
    p.add_argument("--no-latency", action="store_true", help="skip the side-by-side CPU latency measurement")
    p.add_argument(
        "--latency-batches", type=int_list_arg("--latency-batches"), default=(1, 32), help="batch sizes (default 1,32)"
    )
    p.add_argument("--latency-rounds", type=int, default=6, help="interleaved FP32/candidate rounds (default 6)")
    p.add_argument("--latency-seconds", type=float, default=0.5, help="timed seconds per model per round (default 0.5)")
    p.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads for latency (default: OMP_NUM_THREADS)"
    )
    p.add_argument("--force", action="store_true", help="redo the work even if the sidecar says it is up to date")
    p.add_argument("--fail-on-parity", action="store_true", help="exit 1 when parity misses the precision's tolerances")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quantize",
        description="INT8 (Q/DQ) and FP16 models for TensorRT and onnxruntime.",
        epilog=exit_codes_help(),
    )
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("int8", help="post-training INT8 quantization to Q/DQ ONNX")
    _add_common(p)
    p.add_argument(
        "--method", choices=("nncf", "ort"), default="nncf", help="NNCF PTQ (default) or onnxruntime quantize_static"
    )
    p.add_argument(
        "--target",
        choices=("tensorrt", "cpu"),
        default="tensorrt",
        help="tensorrt: S8S8 symmetric, zero points 0 (default); cpu: U8S8 for x86 onnxruntime",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=None,
        metavar="PTS",
        help="accuracy control: return layers to float until the top-1 drop is <= PTS percentage points "
        "(nncf: its accuracy-aware quantization; ort: in the order of `explain`'s ranking)",
    )
    p.add_argument("--calib-size", type=int, default=300, help="calibration samples, class-balanced (default 300)")
    p.add_argument("--calib-seed", type=int, default=0, help="calibration selection seed (default 0)")
    p.add_argument(
        "--min-calib-size", type=int, default=32, help="refuse calibration sets smaller than this (default 32)"
    )
    p.add_argument(
        "--ignore",
        default="auto",
        help="keep in float: auto (sensitive groups where it measurably helps; default), none, or a comma list of "
        "groups (gates, pwfs, heads, stem), type:OpType, node names",
    )
    p.add_argument("--bias-correction", action="store_true", help="NNCF fast bias correction (off by default)")
    p.add_argument(
        "--explain",
        action="store_true",
        help="rank the nodes whose quantization costs agreement (python -m quantize explain) and put the table and "
        "plot in the report (one scoring pass per quantized node)",
    )
    p.add_argument(
        "--no-runtime-pick",
        action="store_true",
        help="cpu target: do not time the file on each installed x86 runtime (onnxruntime, OpenVINO) to name the fastest",
    )

    f = sub.add_parser("fp16", help="FP16 graph with FP32 inputs and outputs")
    _add_common(f)
    f.add_argument(
        "--keep-fp32", default="", help="comma list of op types kept in FP32 (default: reductions and exp/log/pow)"
    )

    lint = sub.add_parser("lint", help="check a Q/DQ model against TensorRT's explicit-quantization rules")
    lint.add_argument("model", help="Q/DQ model.onnx")
    lint.add_argument("--json", action="store_true", help="print the full report as JSON")
    _add_explain(sub)
    for each in (p, f, lint):  # -v/--debug before or after the sub-command
        add_common_flags(each, sub=True)
    add_common_flags(sub.choices["explain"], sub=True, threads=True)
    return parser


def _latency(args):
    from quantize.config import LatencyConfig

    return LatencyConfig(
        enabled=not args.no_latency,
        batches=args.latency_batches,
        rounds=args.latency_rounds,
        seconds_per_round=args.latency_seconds,
        threads=args.threads,
    )


def _lint(path: str, as_json: bool) -> int:
    from runtime.artifacts import read_sidecar, sidecar_path
    from runtime.qdq_lint import lint_qdq

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


def _add_explain(sub) -> None:
    e = sub.add_parser(
        "explain", help="rank the INT8 file's quantized nodes by the agreement their return to float recovers"
    )
    e.add_argument("--fp32", required=True, help="the FP32 model.onnx the INT8 file was made from")
    e.add_argument("--int8", required=True, help="the Q/DQ INT8 model.onnx")
    e.add_argument(
        "--data", default=None, help="dataset YAML, ImageFolder or image folder (default: the contract's dataset)"
    )
    e.add_argument(
        "--target-agreement", type=float, default=0.99, help="top-1 agreement with FP32 to reach (default 0.99)"
    )
    e.add_argument("--out", default=None, help="report folder (default: <int8 stem>.explain/)")
    e.add_argument("--limit", type=int, default=0, help="score at most N validation samples (default: all)")
    e.add_argument(
        "--max-float", type=int, default=12, help="most nodes the recommendation may return to float (default 12)"
    )
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plot")


def _explain(args, argv: Sequence[str]) -> int:
    import shlex

    from quantize.explain import ExplainConfig, explain, summary_table, write_explain

    cfg = ExplainConfig(
        fp32=args.fp32,
        int8=args.int8,
        data=args.data,
        target_agreement=args.target_agreement,
        out=args.out,
        limit=args.limit,
        max_float=args.max_float,
        threads=args.threads,
    )
    res = explain(cfg)
    out = cfg.out_dir()
    with output_lock(out, "explain report"):
        paths = write_explain(res, out, command="python -m quantize " + shlex.join(list(argv)), plots=not args.no_plots)
    print(summary_table(res))
    log.info("report: %s", ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


@cli_entry
def main(argv: Sequence[str]) -> int:
    """``python -m quantize``; errors become a message and an exit code (runtime.cli, docs/errors.md)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, quiet=("nncf",))
    if args.command == "lint":
        return _lint(args.model, args.json)
    if args.command == "explain":
        return _explain(args, argv)
    from quantize.config import CalibrationConfig, ExplainSettings, Fp16Config, Int8Config
    from quantize.orchestrate import run_fp16, run_int8
    from quantize.runtime_pick import RuntimePickConfig

    data = args.data
    if args.detect:  # faces cropped from the photos into <out stem>.faces/ beside the output
        from runtime.images import detected_data

        out = Path(args.out)
        with output_lock(out.parent, "quantization"):
            data = detected_data(args, out.with_name(out.name.removesuffix(".onnx") + ".faces"))
    if args.command == "int8":
        cfg = Int8Config(
            onnx=args.onnx,
            out=args.out,
            method=args.method,
            target=args.target,
            max_drop_pts=args.max_drop,
            data=data,
            ignore=(args.ignore,),
            bias_correction=args.bias_correction,
            val_limit=args.val_limit,
            calibration=CalibrationConfig(size=args.calib_size, seed=args.calib_seed, min_size=args.min_calib_size),
            latency=_latency(args),
            runtime_pick=RuntimePickConfig(enabled=not args.no_runtime_pick, threads=args.threads),
            explain=ExplainSettings(enabled=args.explain),
        )
        with output_lock(Path(args.out).parent, "quantization"):
            result = run_int8(cfg, force=args.force)
    else:
        keep = tuple(t.strip() for t in args.keep_fp32.split(",") if t.strip())
        cfg = Fp16Config(
            onnx=args.onnx, out=args.out, keep_fp32=keep, data=data, val_limit=args.val_limit, latency=_latency(args)
        )
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
