"""The top layer: the only package that imports all the others (DESIGN, docs/architecture.md).

    pipeline/config.py    the YAML: stages, one section per stage, model variants, stage code
    pipeline/runner.py    artifacts layout, steps, stamps, the runner that reuses what is current
    pipeline/context.py   what the stages share: run context, TensorRT status, engine bookkeeping
    pipeline/stages.py    the plan and the stage adapters (library calls of each stage's API)
    pipeline/report.py    report.json assembly and plots
    pipeline/markdown.py  report.md
    pipeline/cli.py       ``ferdeploy pipeline`` / ``python -m pipeline``; `ferdeploy` itself is pipeline/console.py

Importing this package does not import torch.
"""

from __future__ import annotations

from pipeline.cli import build_parser, pipeline_main, run_pipeline
from pipeline.config import (
    STAGES,
    PipelineConfig,
    Stage,
    StageError,
    Variant,
    config_from_mapping,
    load_pipeline_config,
    parse_stages,
    quantize_variants,
    stage_code,
)
from pipeline.runner import Layout, PipelineResult, StepResult
from runtime.errors import EXIT_OK, EXIT_PARITY, EXIT_USAGE  # the one table; exit codes of pipeline_main

__all__ = [
    "EXIT_OK",
    "EXIT_PARITY",
    "EXIT_USAGE",
    "STAGES",
    "Layout",
    "PipelineConfig",
    "PipelineResult",
    "Stage",
    "StageError",
    "StepResult",
    "Variant",
    "build_parser",
    "config_from_mapping",
    "load_pipeline_config",
    "parse_stages",
    "pipeline_main",
    "quantize_variants",
    "run_pipeline",
    "stage_code",
]
