"""``python -m export onnx|check``: thin CLI over `export.exporter.export_onnx` and `export.preflight.preflight`.

    python -m export onnx --checkpoint RUN/checkpoint.pt --out RUN/model.onnx [--opset 17] [--batch dynamic|N]
    python -m export onnx --model MODULE:CALLABLE [--weights SD.pt] --contract C.yaml --out M.onnx
    python -m export adopt --onnx PLAIN.onnx --contract C.yaml --out MODEL.onnx
    python -m export check RUN/model.onnx [--checkpoint RUN/checkpoint.pt] [--batches 1,32]
    python -m export deploy --model RUN/model.onnx --target triton|deepstream --out DIR [--allow-approximate]

Exit codes: `runtime.errors.EXIT_CODES` (docs/errors.md); a failed check is ``EXIT_ERROR``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from export.config import DEFAULT_OPSET, ExportConfig, Exporter, PreflightConfig
from runtime.cli import add_common_flags, cli_entry, parse_int_list, setup_logging
from runtime.errors import EXIT_ERROR, EXIT_OK, exit_codes_help
from runtime.lock import output_lock

log = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description="Export FER checkpoints to ONNX and preflight them for TensorRT.",
        epilog=exit_codes_help(),
    )
    add_common_flags(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("onnx", help="checkpoint -> model.onnx (dynamic batch, contract in metadata_props) + preflight")
    p.add_argument("--checkpoint", default=None, help="checkpoint.pt written by python -m train")
    p.add_argument(
        "--model",
        default=None,
        metavar="MODULE:CALLABLE",
        help="instead of --checkpoint: any PyTorch model: a callable returning an nn.Module (current folder "
        "or installed package), or a registered model name; needs --contract (docs/contract.md)",
    )
    p.add_argument("--weights", default=None, help="with --model: a state_dict file (loaded with weights_only=True)")
    p.add_argument("--contract", default=None, help="with --model: the contract YAML (classes, input size, scaling)")
    p.add_argument("--out", required=True, help="target model.onnx (written atomically)")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset (default {DEFAULT_OPSET}: TensorRT 10.3 and 11 parse it)",
    )
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size")
    p.add_argument(
        "--exporter",
        default=Exporter.AUTO.value,
        choices=[e.value for e in Exporter],
        help="auto = per model family (see export/exporter.py)",
    )
    p.add_argument("--no-slim", action="store_true", help="skip the onnxslim graph cleanup")
    p.add_argument("--parity-batches", default="1,32", help="batch sizes of the parity check (default 1,32)")
    p.add_argument(
        "--atol", type=float, default=1e-4, help="max abs logit difference allowed vs PyTorch (default 1e-4)"
    )
    p.add_argument("--force", action="store_true", help="redo the export even if the sidecar says it is up to date")

    a = sub.add_parser("adopt", help="a plain ONNX classifier + contract YAML -> model.onnx every stage accepts")
    a.add_argument("--onnx", required=True, help="the ONNX file to adopt (torch.onnx.export, tf2onnx, a model zoo...)")
    a.add_argument(
        "--contract", required=True, help="contract YAML: classes, input_size, color_mode, scaling (docs/contract.md)"
    )
    a.add_argument("--out", required=True, help="the adopted model.onnx (written atomically)")
    a.add_argument("--keep-batch", action="store_true", help="leave a fixed batch axis fixed")
    parsers = [p, a]

    c = sub.add_parser(
        "check", help="preflight an ONNX model for TensorRT 10.3/11 (and parity vs PyTorch with --checkpoint)"
    )
    c.add_argument("model", help="model.onnx")
    c.add_argument("--checkpoint", default=None, help="checkpoint.pt: enables parity vs PyTorch on validation images")
    c.add_argument("--batches", default="1,32", help="parity batch sizes (default 1,32)")
    c.add_argument("--atol", type=float, default=1e-4, help="max abs logit difference allowed (default 1e-4)")
    c.add_argument("--report", default=None, help="report path (default <model stem>.preflight.json beside the model)")
    parsers.append(c)
    parsers.append(_deploy_parser(sub))
    for each in parsers:  # -v/--debug before or after the sub-command
        add_common_flags(each, sub=True)
    return parser


def _deploy_parser(sub) -> argparse.ArgumentParser:
    d = sub.add_parser(
        "deploy",
        help="a Triton model repository entry or a DeepStream nvinfer config, from the contract, "
        "checked by emulation (docs/deploy.md)",
    )
    d.add_argument("--model", required=True, help="model.onnx (any precision) or a TensorRT .engine with its sidecar")
    d.add_argument("--target", required=True, choices=["triton", "deepstream"])
    d.add_argument(
        "--out",
        required=True,
        help="triton: the model repository (REPO/<name>/ is written); deepstream: the folder to write",
    )
    d.add_argument("--name", default=None, help="model name (default: the contract's model name)")
    d.add_argument(
        "--allow-approximate",
        action="store_true",
        help="deepstream: write a config that only approximates the contract (per-channel std, letterbox, "
        "centre crop, area filter); the report states the error",
    )
    d.add_argument(
        "--force", action="store_true", help="replace an existing destination (after the new one is checked)"
    )
    d.add_argument(
        "--onnx", default=None, help="for an .engine: the ONNX it was built from (default: from its sidecar)"
    )
    d.add_argument(
        "--gpu",
        default=None,
        help="triton + .engine: the server's GPU, a name or a compute capability "
        "(e.g. 8.7); a plan built for another GPU is refused",
    )
    d.add_argument(
        "--batch",
        default=None,
        help="triton + .onnx: MIN:OPT:MAX (max_batch_size, preferred sizes; "
        "default 1:8:32); deepstream: nvinfer batch-size (default 16)",
    )
    d.add_argument("--instance", default="gpu", choices=["gpu", "cpu"], help="triton instance_group kind (default gpu)")
    d.add_argument(
        "--precision",
        default=None,
        choices=["fp32", "fp16", "int8"],
        help="deepstream: network-mode (default: the file's precision; fp32 -> fp16 allowed)",
    )
    d.add_argument("--gpu-id", type=int, default=0, help="deepstream gpu-id (default 0)")
    d.add_argument("--gie-id", type=int, default=2, help="deepstream gie-unique-id of this classifier (default 2)")
    d.add_argument("--detector-gie-id", type=int, default=1, help="gie-unique-id of the face detector (default 1)")
    d.add_argument("--face-class-id", default="0", help="the detector's face class id(s), e.g. 0 or '0;2' (default 0)")
    d.add_argument(
        "--classifier-threshold",
        type=float,
        default=0.0,
        help="nvinfer classifier-threshold on the softmax (default 0: always the top-1 class)",
    )
    d.add_argument("--samples", type=int, default=48, help="synthetic face crops for the emulation check (default 48)")
    return d


def _deploy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``python -m export deploy`` (export/deploy/, docs/deploy.md)."""
    from export.deploy import DeployConfig, deploy

    face_ids = parse_int_list(str(args.face_class_id).replace(";", ","), "--face-class-id (';'-separated)", minimum=0)
    cfg = DeployConfig(
        model=args.model,
        target=args.target,
        out=args.out,
        name=args.name,
        allow_approximate=args.allow_approximate,
        force=args.force,
        onnx=args.onnx,
        gpu=args.gpu,
        batch=args.batch,
        instance=args.instance,
        precision=args.precision,
        gpu_id=args.gpu_id,
        gie_id=args.gie_id,
        detector_gie_id=args.detector_gie_id,
        face_class_ids=face_ids or (0,),
        classifier_threshold=args.classifier_threshold,
        samples=args.samples,
        command="python -m export " + " ".join(argv),
    )
    result = deploy(cfg)
    log.info("deploy report: %s", result.report_md)
    return EXIT_OK


def _check_source(args: argparse.Namespace) -> None:
    from runtime.errors import ConfigError

    if bool(args.checkpoint) == bool(args.model):
        raise ConfigError("export onnx needs exactly one of --checkpoint RUN/checkpoint.pt or --model MODULE:CALLABLE")
    if args.model and not args.contract:
        raise ConfigError(
            "--model needs --contract CONTRACT.yaml (classes, input_size, color_mode...; docs/contract.md)"
        )
    if args.checkpoint and (args.weights or args.contract):
        raise ConfigError("--weights and --contract go with --model; a checkpoint carries its own weights and contract")


@cli_entry
def main(argv: Sequence[str]) -> int:
    """``python -m export``; errors become a message and an exit code (runtime.cli, docs/errors.md)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "deploy":
        return _deploy(args, argv)
    if args.command == "adopt":
        from export.adopt import adopt_onnx

        with output_lock(Path(args.out).parent, "export"):
            res = adopt_onnx(args.onnx, args.contract, args.out, dynamic_batch=not args.keep_batch)
        log.info("model: %s  report: %s  sidecar: %s", res.model, res.report_path, res.sidecar)
        return EXIT_OK
    if args.command == "onnx":
        from export.exporter import export_module, export_onnx

        _check_source(args)
        cfg = ExportConfig(
            checkpoint=args.checkpoint or args.weights or args.model,
            out=args.out,
            opset=args.opset,
            batch=args.batch,
            exporter=args.exporter,
            slim=not args.no_slim,
            parity_batches=args.parity_batches,
            parity_atol=args.atol,
        )
        with output_lock(Path(args.out).parent, "export"):
            if args.model:
                result = export_module(args.model, args.contract, cfg, weights=args.weights)
            else:
                result = export_onnx(cfg, force=args.force)
        log.info("model: %s  report: %s  sidecar: %s", result.model, result.report_path, result.sidecar)
        return EXIT_OK
    from export.preflight import preflight

    cfg = PreflightConfig(
        model=args.model, checkpoint=args.checkpoint, batches=args.batches, atol=args.atol, report=args.report
    )
    report = preflight(cfg)
    return EXIT_OK if report.passed else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
