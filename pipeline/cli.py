"""``ferdeploy pipeline --config configs/demo.yaml`` (also ``python -m pipeline``): every stage, one command.

Library code: no prints, logging only; `pipeline_main` prints where the report is.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from pipeline.config import (
    RUN_LOG,
    STAGES,
    PipelineConfig,
    Stage,
    load_pipeline_config,
    parse_stages,
)
from pipeline.context import Context
from pipeline.runner import Layout, PipelineResult, Runner, StepResult
from pipeline.stages import build_plan
from runtime.artifacts import (
    atomic_write_json,
)
from runtime.cli import Terminated, add_common_flags, cli_entry, setup_logging
from runtime.errors import EXIT_OK, EXIT_PARITY, ConfigError, LockedError, PipelineError, exit_codes_help
from runtime.lock import output_lock

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def run_pipeline(
    cfg: PipelineConfig,
    *,
    stages: Sequence[Stage] | None = None,
    force: Sequence[Stage] = (),
    out: str | os.PathLike | None = None,
    progress: bool = True,
    dry_run: bool = False,
    command: str = "",
) -> PipelineResult:
    """Run ``stages`` (default: the config's ``pipeline.stages``) of ``cfg``.

    Raises:
        StageError / PipelineError: a stage failed (the message names it); what finished before is
            kept and stamped, so the next run resumes after it.
    """
    target = Path(out) if out is not None else Path(cfg.out)
    # One run per output folder (runtime/lock.py); a dry run writes nothing and needs no lock.
    with contextlib.nullcontext() if dry_run else output_lock(target, "pipeline run"):
        return _run_pipeline(cfg, stages, force, target, progress, dry_run, command)


def _run_pipeline(
    cfg: PipelineConfig,
    stages: Sequence[Stage] | None,
    force: Sequence[Stage],
    out: Path,
    progress: bool,
    dry_run: bool,
    command: str,
) -> PipelineResult:
    t0 = time.perf_counter()
    stages = tuple(stages) if stages is not None else parse_stages(cfg.pipeline.stages)
    layout = Layout(out)
    ctx = Context(cfg, layout, progress=progress, force=frozenset(force), command=command)
    steps, skipped = build_plan(ctx, stages)
    runner = Runner(layout, force=force, dry_run=dry_run)
    results: list[StepResult] = []
    log.info("pipeline: %s -> %s; stages %s", cfg.source or "config", layout.out, ",".join(s.value for s in stages))
    for name, why in skipped.items():
        log.warning("%s: skipped: %s", name, why)
        results.append(StepResult(name, name, "skipped", why))
    error: BaseException | None = None
    for i, step in enumerate(steps, 1):
        try:
            results.append(runner.execute(step, i, len(steps)))
        except BaseException as exc:
            results.append(StepResult(step.name, step.stage.value, "failed", f"{type(exc).__name__}: {exc}"))
            error = exc
            break
    seconds = time.perf_counter() - t0
    parity_info = next((r.info for r in results if r.name == "parity" and r.status in ("ran", "reused")), None)
    result = PipelineResult(
        layout.out,
        tuple(results),
        seconds,
        layout.report_md if layout.report_md.is_file() else None,
        parity_info.get("passed") if parity_info else None,
    )
    if not dry_run:
        atomic_write_json(
            layout.out / RUN_LOG,
            {
                "command": command,
                "config": cfg.source,
                "stages": [s.value for s in stages],
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 3),
                "steps": [r.to_dict() for r in results],
                "error": f"{type(error).__name__}: {error}" if error else None,
            },
        )
    if error is not None:
        raise error
    log.info(
        "pipeline finished in %.1f s: %d step(s) ran, %d reused%s",
        seconds,
        len(result.ran()),
        len(result.reused()),
        f", {len(skipped)} skipped" if skipped else "",
    )
    return result


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferdeploy pipeline",
        description="Train -> export -> quantize -> TensorRT -> parity -> bench -> report, reusing every artifact "
        "whose inputs, config and library versions are unchanged.",
        epilog=exit_codes_help("pipeline"),
    )
    p.add_argument(
        "--config", required=True, help="pipeline YAML (configs/demo.yaml): fit/export/quantize/... sections"
    )
    p.add_argument(
        "--stages",
        default=None,
        help=f"comma-separated stages to run (default: the config's pipeline.stages): {','.join(s.value for s in STAGES)}",
    )
    p.add_argument("--force", default="", help="comma-separated stages to rerun even when up to date (or 'all')")
    p.add_argument("--out", default=None, help="output folder (default: the config's pipeline.out or fit.out)")
    p.add_argument("--dry-run", action="store_true", help="say which steps would run and why; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_common_flags(p)
    return p


@cli_entry(argv_start=2)
def pipeline_main(argv: list[str]) -> int:
    """``ferdeploy pipeline ...`` (``argv`` excludes the verb); exit codes in docs/errors.md."""
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, timestamps=True)
    cfg = load_pipeline_config(args.config)
    stages = parse_stages(args.stages) if args.stages else None
    force = parse_stages(args.force) if args.force else ()
    command = "ferdeploy " + shlex.join(["pipeline", *argv])
    try:
        result = run_pipeline(
            cfg,
            stages=stages,
            force=force,
            out=args.out,
            progress=not args.no_progress,
            dry_run=args.dry_run,
            command=command,
        )
    except (PipelineError, KeyboardInterrupt, Terminated) as exc:
        if not isinstance(exc, (ConfigError, LockedError)):
            log.error(
                "pipeline stopped; what finished before is kept (training resumes from state.pt): fix the "
                "cause and rerun the same command to continue"
            )
        raise
    if args.dry_run:
        for s in result.steps:
            print(f"{s.name:32} {s.status:10} {s.reason}")
        return EXIT_OK
    L = Layout(result.out)
    if L.report_md.is_file():
        plots = sorted(str(p) for p in result.out.glob("report.*.png"))
        print(
            f"report:   {L.report_md}\njson:     {L.report_json}\nplots:    {', '.join(plots) or '(none)'}\n"
            f"pipeline: {result.out / RUN_LOG} ({len(result.ran())} step(s) ran, {len(result.reused())} reused, "
            f"{result.seconds:.1f} s)"
        )
    if result.parity_passed is False and cfg.parity.gate:
        log.error("parity failed for at least one row (parity.gate is true); see %s", L.report_md)
        return EXIT_PARITY
    return EXIT_OK
