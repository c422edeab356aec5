"""``python -m train fit|models|data`` — thin CLI over the training library.

Exit codes: `runtime.errors.EXIT_CODES` (docs/errors.md).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from runtime.cli import add_common_flags, cli_entry, setup_logging
from runtime.errors import EXIT_OK, exit_codes_help

log = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train", description="Train FER models and manage datasets.", epilog=exit_codes_help()
    )
    add_common_flags(p)
    sub = p.add_subparsers(dest="verb", required=True)

    f = sub.add_parser("fit", help="train a model from a YAML config")
    f.add_argument("--config", required=True, type=Path, help="YAML config (configs/demo.yaml, ...)")
    f.add_argument("--out", type=Path, help="output folder (default: the config's `out`)")
    f.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    f.add_argument("--epochs", type=int, help="override train.epochs")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = sub.add_parser("models", help="list models with parameter count and MACs")
    m.add_argument("--num-classes", type=int, default=7)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    s = dsub.add_parser("synth", help="write the synthetic multi-view FER set as an ImageFolder")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--count", type=int, default=700)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--mode", choices=("gray", "rgb"), default="gray")
    lst = dsub.add_parser("list", help="list the dataset kinds that have loaders")
    for parser in (f, m, s, lst):  # -v/--debug before or after the sub-command
        add_common_flags(parser, sub=True)
    return p


def _models(num_classes: int) -> int:
    from train.models import create_model, get_model_info, list_models
    from train.models.profile import count_macs, count_params

    rows = []
    for name in list_models():
        info = get_model_info(name)
        model = create_model(name, num_classes=num_classes)
        shape = (1, *info.preprocess.input_shape)
        rows.append(
            (name, info.family, count_params(model), count_macs(model, shape) / 1e6, "×".join(map(str, shape[1:])))
        )
    print(f"{'model':<14}{'family':<10}{'params':>14}{'MACs (M)':>12}  input (C×H×W)")
    for name, fam, params, macs, shape in rows:
        print(f"{name:<14}{fam:<10}{params:>14,}{macs:>12.1f}  {shape}")
    return EXIT_OK


@cli_entry
def main(argv: list[str]) -> int:
    """``python -m train``; errors become a message and an exit code (runtime.cli, docs/errors.md)."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, timestamps=True)
    if args.verb == "models":
        return _models(args.num_classes)
    if args.verb == "data":
        from runtime.data import list_datasets

        if args.data_verb == "list":
            print("\n".join(list_datasets()))
            return EXIT_OK
        from runtime.data.synthetic import SynthConfig, write_image_folder

        counts = write_image_folder(
            SynthConfig(count=args.count, seed=args.seed, size=args.size, mode=args.mode), args.out
        )
        log.info("wrote %d images to %s: %s", sum(counts.values()), args.out, counts)
        return EXIT_OK
    from train.config import load_fit_config
    from train.loop import fit

    cfg = load_fit_config(args.config)
    if args.epochs is not None:
        from dataclasses import replace

        cfg = replace(cfg, train=replace(cfg.train, epochs=args.epochs))
    from runtime.lock import output_lock

    # Under torchrun every rank runs this; rank 0 writes the run folder and holds its lock.
    rank = int(os.environ.get("RANK", "0") or 0)
    with output_lock(args.out or cfg.out, "training run") if rank == 0 else contextlib.nullcontext():
        result = fit(cfg, out=args.out, resume=args.resume, progress=not args.no_progress)
    m = result.metrics
    log.info(
        "done: %s (val accuracy %.4f, macro-F1 %.4f, %d epochs, %.0f s training)",
        result.checkpoint,
        m["val_accuracy"],
        m["val_macro_f1"],
        result.epochs_run,
        result.train_seconds,
    )
    for title, key in (("per-view", "per_view_accuracy"), ("occlusion", "per_occlusion_accuracy")):
        if m.get(key):
            log.info("%s accuracy: %s", title, ", ".join(f"{k} {v:.3f}" for k, v in m[key].items()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
