"""``python -m runtime pipeline --config configs/demo.yaml``: every stage, one command, reusing what is current.

Stages, in order (each a list of *steps*; a step is the unit that is skipped or rerun)::

    train      fit: section          -> checkpoint.pt + checkpoint.json
    export     checkpoint.pt         -> model.onnx (+ sidecar, preflight report)
    quantize   model.onnx            -> model.nncf.int8.onnx, model.ort.int8.onnx   (TensorRT Q/DQ form)
                                        model.fp16.onnx
                                        model.nncf.cpu.int8.onnx, model.ort.cpu.int8.onnx (x86 onnxruntime form)
    tensorrt   the TensorRT-ready ONNX files -> *.engine (TensorRT 10/11 on its GPU; TensorRT for RTX on
               any x86-64 machine, built ahead of time without a GPU)
    parity     checkpoint.pt + every model   -> parity/parity.{json,md,png}
    bench      every model                   -> bench/bench.{json,md,png}
    report     the above                     -> report.md, report.json, report.*.png

Reuse: after a step runs, ``stamps/<step>.json`` records the sha256 of its input files, its resolved
config, the versions of the libraries that decide its output (and for bench the machine), the
sha256 of the project's own source files that implement it (`STAGE_CODE`), and the sha256 of its
outputs. The next run reruns a step only when one of those differs or an output is
missing or was modified, and says which (``--dry-run`` only says). Because a rerun step changes
its output bytes, exactly the steps downstream of a change rerun; a step whose output came out
byte-identical stops the cascade. The TensorRT stage defers to `runtime.trt.build.build_engine`'s
own engine cache, which also keys on the GPU and the TensorRT version (an engine built elsewhere is
rebuilt, never loaded blindly). See docs/pipeline.md.

Library code: no prints, logging only; the CLI (`pipeline_main`) prints where the report is.
Importing this module does not import torch (stages import what they need when they run).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import enum
import json
import logging
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.artifacts import atomic_write_json, atomic_write_text, library_versions, read_json, sha256_file
from runtime.configs import from_mapping, load_yaml, to_dict
from runtime.cli import Terminated, add_debug_flag, cli_entry
from runtime.errors import ConfigError, LockedError, PipelineError
from runtime.lock import output_lock

log = logging.getLogger(__name__)

STAMP_DIR = "stamps"
STAMP_FORMAT = "ferdeploy-stamp/1"
RUN_LOG = "pipeline.json"

# Exit codes of `pipeline_main` (scripts rely on them).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PARITY, EXIT_INTERRUPTED = 0, 1, 2, 4, 130


class StageError(PipelineError):
    """A pipeline stage could not run or failed; the message names the stage and the fix."""


class Stage(str, enum.Enum):
    TRAIN = "train"
    EXPORT = "export"
    QUANTIZE = "quantize"
    TENSORRT = "tensorrt"
    PARITY = "parity"
    BENCH = "bench"
    REPORT = "report"


STAGES: tuple[Stage, ...] = tuple(Stage)

# The project's own source files that decide each stage's output (paths relative to the folder
# holding the packages). Their sha256 goes into the stamp, so a code update reruns what it affects
# (a changed quantizer re-quantizes; a changed report template only rewrites the report).
STAGE_CODE: dict[Stage, tuple[str, ...]] = {
    Stage.TRAIN: ("train", "runtime/preprocess.py"),
    Stage.EXPORT: ("export", "runtime/contract.py"),
    Stage.QUANTIZE: ("quantize", "runtime/preprocess.py", "runtime/contract.py", "runtime/images.py"),
    Stage.TENSORRT: ("runtime/trt", "runtime/backends/trt.py"),
    Stage.PARITY: ("runtime/parity.py", "runtime/compare.py", "runtime/metrics.py", "runtime/preprocess.py",
                   "runtime/backends", "runtime/images.py"),
    Stage.BENCH: ("runtime/bench.py", "runtime/latency.py", "runtime/backends"),
    Stage.REPORT: ("runtime/report.py", "runtime/pipeline.py"),
}
_code_cache: dict[Stage, dict[str, str]] = {}


def stage_code(stage: Stage) -> dict[str, str]:
    """sha256 of every source file in `STAGE_CODE` for ``stage`` (relative path -> digest), cached per process."""
    if stage not in _code_cache:
        root = Path(__file__).resolve().parent.parent
        files: list[Path] = []
        for rel in STAGE_CODE.get(stage, ()):
            p = root / rel
            files += sorted(p.rglob("*.py")) if p.is_dir() else ([p] if p.is_file() else [])
        _code_cache[stage] = {f.relative_to(root).as_posix(): sha256_file(f) for f in files}
    return _code_cache[stage]


# --------------------------------------------------------------------------------------------
# Configuration: one YAML, one section per stage (the `fit:` section belongs to train/config.py)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PipelineSection:
    """``pipeline:`` section.

    Attributes:
        out: Output folder of every artifact (default: ``fit.out``, else ``runs/pipeline``).
        stages: Stages run by default (``--stages`` overrides).
    """

    out: str | None = None
    stages: tuple[str, ...] = tuple(s.value for s in STAGES)


@dataclass(frozen=True)
class ExportSection:
    """``export:`` section (the fields of `export.config.ExportConfig` other than paths)."""

    opset: int = 17
    exporter: str = "auto"
    slim: bool = True
    parity_batches: tuple[int, ...] = (1, 32)
    parity_atol: float = 1e-4


@dataclass(frozen=True)
class QuantizeSection:
    """``quantize:`` section.

    Attributes:
        methods: INT8 methods producing the TensorRT Q/DQ form (``--target tensorrt``).
        cpu_methods: INT8 methods producing the x86 onnxruntime form (``--target cpu``): the
            TensorRT form is a poor CPU format (traps.md), so CPU latency is measured on these.
        fp16: Produce ``model.fp16.onnx``.
        int8_args: Extra arguments passed verbatim to ``python -m quantize int8``.
        fp16_args: Extra arguments passed verbatim to ``python -m quantize fp16``.
    """

    methods: tuple[str, ...] = ("nncf", "ort")
    cpu_methods: tuple[str, ...] = ("ort",)
    fp16: bool = True
    # The bench stage measures latency of every model; the quantize CLI's own side-by-side
    # latency would only repeat it (about 12 s per file on a 2-core machine).
    int8_args: tuple[str, ...] = ("--no-latency",)
    fp16_args: tuple[str, ...] = ("--no-latency",)

    def __post_init__(self) -> None:
        bad = sorted((set(self.methods) | set(self.cpu_methods)) - {"nncf", "ort"})
        if bad:
            raise ConfigError(f"quantize: unknown INT8 method(s) {bad}; valid: nncf, ort")


@dataclass(frozen=True)
class TensorrtSection:
    """``tensorrt:`` section. TensorRT 10/11 build engines only where a CUDA GPU is present; TensorRT
    for RTX (``pip install '.[rtx]'``, installed by ``make setup`` on x86-64 Linux) builds them
    ahead of time on any machine. Parity and latency rows for the engines run only on a GPU that
    can run them.

    Attributes:
        enabled: Build engines at all.
        batch: Optimization profile MIN:OPT:MAX of the dynamic batch axis.
        workspace_mib: Workspace limit (None: TensorRT's default).
        timing_cache: Timing-cache file name inside the output folder ("" = none; TensorRT for
            RTX ignores it).
        flavour: ``auto`` (full TensorRT when importable, else TensorRT for RTX), ``tensorrt`` or ``rtx``.
        compute_capabilities: TensorRT for RTX: compute capabilities the engines must run on
            (e.g. ``["8.6", "8.9", "12.0"]``); empty: its default 8.0, 8.6, 8.9, 12.0.
    """

    enabled: bool = True
    batch: str = "1:8:32"
    workspace_mib: int | None = None
    timing_cache: str = "trt.timing.cache"
    flavour: str = "auto"
    compute_capabilities: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParitySection:
    """``parity:`` section.

    Attributes:
        split: Dataset split scored.
        batch_size: Inference batch.
        limit: Score at most this many samples (None: the whole split).
        threads: CPU intra-op threads (None: OMP_NUM_THREADS or 1).
        gate: Exit with code 4 when a parity row fails (the report is written either way).
    """

    split: str = "val"
    batch_size: int = 32
    limit: int | None = None
    threads: int | None = None
    gate: bool = False


@dataclass(frozen=True)
class BenchSection:
    """``bench:`` section (see `runtime.bench.BenchConfig`).

    Attributes:
        batches: Batch sizes measured.
        seconds, iterations: Each measurement runs at least this long and this many calls.
        warmup_s, warmup_iterations: Warm-up before each measurement.
        threads: CPU intra-op threads (None: OMP_NUM_THREADS or 1).
        torch: Include the PyTorch reference (checkpoint.pt) rows.
        overhead_batches: Batches at which harness overhead vs bare ``session.run`` is measured.
        repeat: Back-to-back sweeps (>1 reports run-to-run spread).
    """

    batches: tuple[int, ...] = (1, 32)
    seconds: float = 2.0
    iterations: int = 10
    warmup_s: float = 0.5
    warmup_iterations: int = 2
    threads: int | None = None
    torch: bool = True
    overhead_batches: tuple[int, ...] = ()
    repeat: int = 1


SOURCE_KINDS = ("checkpoint", "module", "onnx")


@dataclass(frozen=True)
class ModelSourceSection:
    """``source:`` section: start from the user's model instead of training one (docs/contract.md).

    Attributes:
        kind: ``""`` (train from ``fit:``), ``checkpoint``, ``module`` or ``onnx``; the stages before
            it are skipped (no train; the export stage copies/exports/adopts the model).
        path: The checkpoint.pt, ``MODULE:CALLABLE`` (or a registered model name), or the ONNX file.
        contract: Contract YAML (``module`` and ``onnx``).
        weights: ``state_dict`` file (``module``; loaded with ``weights_only=True``).
        data: Calibration and parity data: any folder of images (labels optional) or a dataset
            YAML; None = the model's own dataset.
    """

    kind: str = ""
    path: str = ""
    contract: str | None = None
    weights: str | None = None
    data: str | None = None

    def __post_init__(self) -> None:
        if self.kind and self.kind not in SOURCE_KINDS:
            raise ConfigError(f"source.kind must be one of {list(SOURCE_KINDS)} (or left out to train), got {self.kind!r}")
        if self.kind and not self.path:
            raise ConfigError(f"source.path is required for source.kind {self.kind!r}")
        if self.kind in ("module", "onnx") and not self.contract:
            raise ConfigError(f"source.kind {self.kind!r} needs source.contract (a contract YAML, docs/contract.md)")
        if self.weights and self.kind != "module":
            raise ConfigError("source.weights goes with source.kind module")

    @property
    def has_checkpoint(self) -> bool:
        """Whether a PyTorch checkpoint exists (trained here or given): the reference of parity/bench."""
        return self.kind in ("", "checkpoint")


@dataclass(frozen=True)
class PipelineConfig:
    """The whole pipeline config: the raw ``fit:`` section (resolved by `train.config`) plus ours."""

    fit: Mapping[str, Any] = field(default_factory=dict)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    export: ExportSection = field(default_factory=ExportSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    tensorrt: TensorrtSection = field(default_factory=TensorrtSection)
    parity: ParitySection = field(default_factory=ParitySection)
    bench: BenchSection = field(default_factory=BenchSection)
    source: str = ""
    model_source: ModelSourceSection = field(default_factory=ModelSourceSection)  # the YAML's ``source:``

    @property
    def out(self) -> Path:
        return Path(self.pipeline.out or self.fit.get("out") or "runs/pipeline")


_SECTIONS: dict[str, type] = {
    "pipeline": PipelineSection,
    "export": ExportSection,
    "quantize": QuantizeSection,
    "tensorrt": TensorrtSection,
    "parity": ParitySection,
    "bench": BenchSection,
}


def config_from_mapping(data: Mapping[str, Any], source: str = "config") -> PipelineConfig:
    """Build a `PipelineConfig`; unknown sections or keys raise `ConfigError`."""
    unknown = sorted(set(data) - set(_SECTIONS) - {"fit", "source"})
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; valid: {['fit', 'source', *_SECTIONS]}")
    fit = data.get("fit") or {}
    if not isinstance(fit, Mapping):
        raise ConfigError(f"{source}: fit: expected a mapping, got {type(fit).__name__}")
    kwargs = {name: from_mapping(cls, data.get(name), where=f"{source}: {name}") for name, cls in _SECTIONS.items()}
    model_source = from_mapping(ModelSourceSection, data.get("source"), where=f"{source}: source")
    cfg = PipelineConfig(fit=dict(fit), source=source, model_source=model_source, **kwargs)
    parse_stages(cfg.pipeline.stages)  # validate names early
    return cfg


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    """Read a pipeline YAML (``fit:``, ``pipeline:``, ``export:``, ``quantize:``, ``tensorrt:``, ``parity:``, ``bench:``)."""
    return config_from_mapping(load_yaml(path), source=str(path))


def parse_stages(names: str | Sequence[str] | None) -> tuple[Stage, ...]:
    """``"export,quantize"`` (or a list; ``all``) -> stages in pipeline order."""
    if names is None:
        return STAGES
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if str(n).strip()]
    if not items or items == ["all"]:
        return STAGES
    valid = [s.value for s in STAGES]
    bad = [n for n in items if n not in valid]
    if bad:
        raise ConfigError(f"unknown stage(s) {bad}; valid: {', '.join(valid)} (or all)")
    return tuple(s for s in STAGES if s.value in items)


# --------------------------------------------------------------------------------------------
# Artifacts: names fixed by the config, so the whole plan is known before anything runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One quantized model.

    Attributes:
        name: Step suffix (``int8-nncf``, ``int8-ort-cpu``, ``fp16``).
        kind: ``int8`` or ``fp16`` (the quantize CLI verb).
        method: ``nncf``/``ort`` for INT8, None for FP16.
        target: ``tensorrt``/``cpu`` for INT8, None for FP16.
        file: File name in the output folder.
    """

    name: str
    kind: str
    method: str | None
    target: str | None
    file: str

    @property
    def tensorrt_ready(self) -> bool:
        """Whether TensorRT takes this file (the cpu-target INT8 form is asymmetric UINT8: it does not)."""
        return self.target != "cpu"

    @property
    def title(self) -> str:
        if self.kind == "fp16":
            return "FP16"
        return f"INT8 {self.method.upper() if self.method == 'ort' else 'NNCF'} ({'x86 CPU' if self.target == 'cpu' else 'TensorRT Q/DQ'} form)"


def quantize_variants(q: QuantizeSection) -> tuple[Variant, ...]:
    """The quantized models the config asks for, in report order."""
    out: list[Variant] = []
    if q.fp16:
        out.append(Variant("fp16", "fp16", None, None, "model.fp16.onnx"))
    out += [Variant(f"int8-{m}", "int8", m, "tensorrt", f"model.{m}.int8.onnx") for m in q.methods]
    out += [Variant(f"int8-{m}-cpu", "int8", m, "cpu", f"model.{m}.cpu.int8.onnx") for m in q.cpu_methods]
    return tuple(out)


@dataclass(frozen=True)
class Layout:
    """Where every artifact lives inside the output folder."""

    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def checkpoint_json(self) -> Path:
        return self.out / "checkpoint.json"

    @property
    def onnx(self) -> Path:
        return self.out / "model.onnx"

    @property
    def onnx_sidecar(self) -> Path:
        return self.out / "model.onnx.json"

    @property
    def preflight(self) -> Path:
        return self.out / "model.preflight.json"

    @property
    def parity_dir(self) -> Path:
        return self.out / "parity"

    @property
    def bench_dir(self) -> Path:
        return self.out / "bench"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def stamps(self) -> Path:
        return self.out / STAMP_DIR

    def quantized(self, v: Variant) -> Path:
        return self.out / v.file

    def rel(self, p: Path) -> str:
        try:
            return str(Path(p).relative_to(self.out))
        except ValueError:
            return str(p)


# --------------------------------------------------------------------------------------------
# Steps, stamps and the runner
# --------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One unit of work.

    Attributes:
        name: Unique name (``quantize.int8-nncf``); its stamp is ``stamps/<name>.json``.
        stage: The stage it belongs to.
        run: Does the work; returns facts recorded in the stamp (JSON-able).
        inputs: Files whose content decides the output.
        outputs: Files the step writes (checked to exist after it ran; hashed into the stamp).
        config: The resolved config that decides the output.
        versions: Library names whose versions decide the output.
        extra: Anything else that decides it (dataset fingerprint, machine), or a callable giving it
            when the step is reached (files written by earlier steps of the same run).
        stamped: False for steps whose own cache decides reuse (TensorRT engines).
    """

    name: str
    stage: Stage
    run: Callable[[], Mapping[str, Any] | None]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    versions: tuple[str, ...] = ()
    extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(default_factory=dict)
    stamped: bool = True


@dataclass(frozen=True)
class StepResult:
    """What happened to one step in this run.

    Attributes:
        name, stage: The step.
        status: ``ran``, ``reused``, ``skipped`` (not available here) or ``failed``.
        reason: Why it ran (what changed), was reused, or skipped.
        seconds: Wall time of this run's work (0 when reused).
        info: Facts the step returned (or the stamp's, when reused).
    """

    name: str
    stage: str
    status: str
    reason: str
    seconds: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stage": self.stage, "status": self.status, "reason": self.reason,
                "seconds": round(self.seconds, 3), "info": _jsonable(self.info)}


@dataclass(frozen=True)
class PipelineResult:
    """The outcome of one `run_pipeline` call."""

    out: Path
    steps: tuple[StepResult, ...]
    seconds: float
    report: Path | None = None
    parity_passed: bool | None = None

    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "ran"]

    def reused(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "reused"]


def _jsonable(obj: Any) -> Any:
    """Normalise to what a JSON round trip gives (tuples -> lists, Paths/Enums -> str)."""
    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return to_dict(o)
        if isinstance(o, enum.Enum):
            return o.value
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, sort_keys=True, default=default))


def _versions(names: Sequence[str]) -> dict[str, str | None]:
    allv = library_versions()
    out: dict[str, str | None] = {}
    for n in names:
        if n in allv:
            out[n] = allv[n]
        else:
            import importlib.metadata as md

            try:
                out[n] = md.version(n)
            except md.PackageNotFoundError:
                out[n] = None
    return out


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (for "why did this rerun" messages)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


class Runner:
    """Runs steps in order, reusing those whose stamp matches (see the module docstring)."""

    def __init__(self, layout: Layout, *, force: Sequence[Stage] = (), dry_run: bool = False) -> None:
        self.layout = layout
        self.force = set(force)
        self.dry_run = dry_run
        self._hashes: dict[Path, tuple[int, int, str]] = {}
        self._will_write: set[Path] = set()  # dry run: outputs of the steps planned so far

    def sha(self, path: Path) -> str:
        # Cache by (size, mtime) within one run: parity and bench hash the same files again.
        st = path.stat()
        hit = self._hashes.get(path)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        digest = sha256_file(path)
        self._hashes[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def stamp_path(self, step: Step) -> Path:
        return self.layout.stamps / f"{step.name}.json"

    def key(self, step: Step) -> dict[str, Any]:
        return _jsonable({
            "inputs": {self.layout.rel(p): self.sha(p) for p in step.inputs},
            "config": step.config,
            "versions": _versions(step.versions),
            "code": stage_code(step.stage),
            "extra": step.extra() if callable(step.extra) else step.extra,
        })

    def stale_reason(self, step: Step, key: Mapping[str, Any]) -> str | None:
        """None when the step's stamp matches ``key`` and its outputs are intact, else why not."""
        path = self.stamp_path(step)
        if not path.is_file():
            return "no stamp (first run)"
        try:
            stamp = read_json(path)
        except PipelineError:
            return "stamp unreadable"
        if stamp.get("format") != STAMP_FORMAT:
            return "stamp from another pipeline version"
        for part, what in (("inputs", "input changed"), ("config", "config changed"),
                           ("versions", "library version changed"), ("code", "code changed"),
                           ("extra", "context changed")):
            if part == "code" and part not in stamp:
                return "code changed: the stamp was written by a version that did not record code"
            if stamp.get(part) != key[part]:
                return f"{what}: {', '.join(_diff_keys(stamp.get(part), key[part])[:6])}"
        for rel, digest in (stamp.get("outputs") or {}).items():
            p = self.layout.out / rel
            if not p.is_file():
                return f"output missing: {rel}"
            if self.sha(p) != digest:
                return f"output modified since it was written: {rel}"
        expected = {self.layout.rel(p) for p in step.outputs}
        if not expected <= set(stamp.get("outputs") or {}):
            return "outputs differ from the stamp's"
        return None

    def execute(self, step: Step, index: int, total: int) -> StepResult:
        where = f"[{index}/{total}] {step.name}"
        missing = [p for p in step.inputs if not p.is_file()]
        if self.dry_run:
            # A dry run prints the plan for any folder: inputs that an earlier planned step writes are
            # not missing, and a step whose input will be rewritten would rerun (unless that rewrite
            # comes out byte-identical, which only running can tell).
            upstream = [p for p in step.inputs if p in self._will_write]
            blocked = [p for p in missing if p not in self._will_write]
            if blocked:
                names = ", ".join(self.layout.rel(p) for p in blocked)
                why = f"blocked: needs {names}, which no stage in this run writes (add its stage to --stages)"
                log.warning("%s: %s", where, why)
                return StepResult(step.name, step.stage.value, "blocked", why)
            if upstream:
                names = ", ".join(self.layout.rel(p) for p in upstream)
                log.info("%s: would run (after an earlier step writes %s)", where, names)
                self._will_write.update(step.outputs)
                return StepResult(step.name, step.stage.value, "would-run", f"an earlier step writes {names}")
        if missing:
            names = ", ".join(self.layout.rel(p) for p in missing)
            raise StageError(
                f"{step.name}: input(s) {names} not found in {self.layout.out}; run the stage that writes them "
                f"first (run the whole pipeline, or add that stage to --stages)"
            )
        if not step.stamped:
            if self.dry_run:
                log.info("%s: would run (its own cache decides reuse)", where)
                self._will_write.update(step.outputs)
                return StepResult(step.name, step.stage.value, "would-run", "decided by its own cache")
            log.info("%s: running (its own cache decides reuse)", where)
            t0 = time.perf_counter()
            info = dict(step.run() or {})
            return StepResult(step.name, step.stage.value, "ran", "own cache", time.perf_counter() - t0, info)
        key = self.key(step)
        reason = self.stale_reason(step, key)
        if reason is None and step.stage in self.force:
            reason = f"--force {step.stage.value}"
        if reason is None:
            stamp = read_json(self.stamp_path(step))
            log.info("%s: up to date, reused (%s)", where, ", ".join(self.layout.rel(p) for p in step.outputs) or "-")
            return StepResult(step.name, step.stage.value, "reused", "stamp matches", 0.0, stamp.get("info") or {})
        if self.dry_run:
            log.info("%s: would run (%s)", where, reason)
            self._will_write.update(step.outputs)
            return StepResult(step.name, step.stage.value, "would-run", reason)
        log.info("%s: running (%s)", where, reason)
        t0 = time.perf_counter()
        info = dict(step.run() or {})
        seconds = time.perf_counter() - t0
        absent = [self.layout.rel(p) for p in step.outputs if not p.is_file()]
        if absent:
            raise StageError(f"{step.name} finished but did not write {absent}")
        # Inputs are re-hashed: a step must not change its own inputs, and if one was edited
        # meanwhile, the stamp must not claim the output came from the new content.
        self._hashes.clear()
        after = self.key(step)
        if after["inputs"] != key["inputs"]:
            raise StageError(f"{step.name}: inputs changed while it ran ({_diff_keys(key['inputs'], after['inputs'])}); rerun")
        stamp = {
            "format": STAMP_FORMAT,
            "step": step.name,
            "stage": step.stage.value,
            **key,
            "outputs": {self.layout.rel(p): self.sha(p) for p in step.outputs},
            "seconds": round(seconds, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "info": _jsonable(info),
        }
        atomic_write_json(self.stamp_path(step), stamp)
        log.info("%s: done in %.1f s", where, seconds)
        return StepResult(step.name, step.stage.value, "ran", reason, seconds, info)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------
@dataclass
class Context:
    """What the stage functions share."""

    cfg: PipelineConfig
    layout: Layout
    progress: bool = True
    force: frozenset[Stage] = frozenset()
    command: str = ""
    _fit: Any = None

    @property
    def fit_config(self) -> Any:
        """The resolved `train.config.FitConfig` (imported lazily: torch-free, but train/ may be absent)."""
        if self._fit is None:
            from train.config import FitConfig

            self._fit = from_mapping(FitConfig, self.cfg.fit, where=f"{self.cfg.source}: fit")
        return self._fit


def tensorrt_status(cfg: TensorrtSection) -> tuple[bool, str, tuple[str, ...]]:
    """(engines can *run* here, why not as one line, why not per missing part).

    TensorRT importable, a CUDA device opened and, for TensorRT for RTX, a GPU of one of the
    engines' target compute capabilities (an H100/H200, 9.0, is not one). Whether engines can be
    *built* is `tensorrt_build_status`.
    """
    if not cfg.enabled:
        return False, "disabled in the config (tensorrt.enabled: false)", ("disabled in the config (tensorrt.enabled: false)",)
    reasons = []
    try:
        from runtime.trt.compat import Trt, target_unsupported_reason
        from runtime.trt.cuda import cuda_unavailable_reason

        trt, why = _load_trt(cfg)
        if why:
            reasons.append(f"TensorRT: {why}")
        cuda = cuda_unavailable_reason()
        if cuda:
            reasons.append(f"CUDA/GPU: {cuda}")
        elif isinstance(trt, Trt) and trt.aot:
            from runtime.trt.build import current_gpu

            gpu = current_gpu()
            targets, _default = trt.resolve_targets(cfg.compute_capabilities)
            unsupported = target_unsupported_reason(gpu.compute_capability, targets, gpu.name)
            if unsupported:
                reasons.append(f"CUDA/GPU: {unsupported}")
    except Exception as exc:  # noqa: BLE001 - a broken optional install reads as unavailable
        reasons.append(f"TensorRT probe failed: {type(exc).__name__}: {exc}")
    return (not reasons), "; ".join(reasons), tuple(reasons)


def _load_trt(cfg: TensorrtSection) -> tuple[Any, str]:
    """(the `Trt` of the configured flavour, "") or (None, why not); never raises."""
    try:
        from runtime.trt.compat import Trt

        return Trt.load(flavour=cfg.flavour), ""
    except PipelineError as exc:
        return None, str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken install reads as "unavailable"
        return None, f"TensorRT import failed: {type(exc).__name__}: {exc}"


def tensorrt_build_status(cfg: TensorrtSection) -> tuple[bool, str]:
    """(engines can be *built* here, why not): TensorRT for RTX needs no GPU; TensorRT 10/11 do."""
    if not cfg.enabled:
        return False, "disabled in the config (tensorrt.enabled: false)"
    trt, why = _load_trt(cfg)
    if trt is None:
        return False, f"TensorRT: {why}"
    try:
        trt.resolve_targets(cfg.compute_capabilities)
        trt.check_build_options(dla_core=None, version_compatible=False)
    except PipelineError as exc:
        return False, f"TensorRT: {exc}"
    if trt.aot:
        return True, ""
    try:
        from runtime.trt.cuda import cuda_unavailable_reason

        cuda = cuda_unavailable_reason()
    except Exception as exc:  # noqa: BLE001
        cuda = f"{type(exc).__name__}: {exc}"
    return (not cuda), (f"CUDA/GPU: {cuda} ({trt.label} builds on the GPU it runs on; TensorRT for RTX, "
                        "pip install '.[rtx]', builds without one)" if cuda else "")


def _torch_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def _machine() -> dict[str, Any]:
    """What decides latency numbers besides the model: CPU, usable cores, thread settings."""
    from runtime.env import cpu_info

    cpu = cpu_info()
    return {"cpu": cpu.get("model"), "machine": cpu.get("machine"), "usable_cores": cpu.get("usable_cores"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}


def _dataset_fingerprint(data: Mapping[str, Any]) -> dict[str, Any]:
    """A cheap content fingerprint of a file-backed dataset (relative path, size, mtime of every file).

    Procedural datasets (``synthetic``) are fully described by their config: empty fingerprint.
    """
    root = data.get("root")
    if not root:
        return {}
    import hashlib

    p = Path(root)
    if not p.exists():
        return {"root": str(root), "missing": True}
    digest, count = hashlib.sha256(), 0
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    for q in files:
        st = q.stat()
        digest.update(f"{q.relative_to(p) if q != p else q.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count += 1
    return {"root": str(root), "files": count, "sha256": digest.hexdigest()}


def build_plan(ctx: Context, stages: Sequence[Stage]) -> tuple[list[Step], dict[str, str]]:
    """The steps of ``stages`` (in order) and the steps skipped here with the reason."""
    cfg, L = ctx.cfg, ctx.layout
    variants = quantize_variants(cfg.quantize)
    steps: list[Step] = []
    skipped: dict[str, str] = {}
    trt_ok, trt_reason, _ = tensorrt_status(cfg.tensorrt)
    engines_wanted = _engines_wanted(L, variants)
    models = [L.onnx] + [L.quantized(v) for v in variants]
    src = cfg.model_source
    if Stage.TRAIN in stages and src.kind:
        skipped["train"] = f"source: {src.kind} {src.path} (the pipeline starts from the given model)"
    elif Stage.TRAIN in stages:
        if not cfg.fit:
            raise ConfigError(f"{cfg.source}: the train stage needs a `fit:` section (or leave train out of --stages)")
        fit_dict = to_dict(ctx.fit_config)
        fit_dict.pop("out", None)  # where it is written does not change what is trained
        steps.append(Step("train", Stage.TRAIN, lambda: run_train(ctx), (), (L.checkpoint, L.checkpoint_json),
                          fit_dict, ("torch", "numpy", "cv2"), {"dataset": _dataset_fingerprint(fit_dict.get("data", {}))}))
    if Stage.EXPORT in stages and src.kind:
        given = [Path(p) for p in (src.path if src.kind != "module" else None, src.contract, src.weights) if p]
        outs = (L.checkpoint, L.onnx, L.onnx_sidecar, L.preflight) if src.kind == "checkpoint" else (
            L.onnx, L.onnx_sidecar, L.preflight)
        steps.append(Step("export", Stage.EXPORT, lambda: run_source_export(ctx), tuple(given), outs,
                          {**to_dict(cfg.export), "source": to_dict(src)}, ("torch", "onnx", "onnxslim", "onnxruntime")))
    elif Stage.EXPORT in stages:
        steps.append(Step("export", Stage.EXPORT, lambda: run_export(ctx), (L.checkpoint,),
                          (L.onnx, L.onnx_sidecar, L.preflight), to_dict(cfg.export),
                          ("torch", "onnx", "onnxslim", "onnxruntime")))
    if Stage.QUANTIZE in stages:
        for v in variants:
            args = cfg.quantize.fp16_args if v.kind == "fp16" else cfg.quantize.int8_args
            if src.data:
                args = [*args, "--data", src.data]
            steps.append(Step(f"quantize.{v.name}", Stage.QUANTIZE, lambda v=v: run_quantize(ctx, v), (L.onnx,),
                              (L.quantized(v),), {"kind": v.kind, "method": v.method, "target": v.target, "args": list(args)},
                              ("onnx", "onnxruntime", "nncf", "numpy")))
    if Stage.TENSORRT in stages:
        # TensorRT for RTX builds without a GPU; the engines' parity/latency rows need one (trt_ok).
        build_ok, build_reason = (True, "") if trt_ok else tensorrt_build_status(cfg.tensorrt)
        if build_ok:
            for onnx, precision in engines_wanted:
                steps.append(Step(f"tensorrt.{onnx.name}", Stage.TENSORRT,
                                  lambda o=onnx, p=precision: run_tensorrt(ctx, o, p), (onnx,), stamped=False))
        else:
            skipped["tensorrt"] = build_reason
    # With TensorRT here, parity and bench add `trt` rows; the trt backend reuses the engines the
    # tensorrt stage built (same build defaults) or builds them through the same cache.
    use_trt = trt_ok
    reference = L.checkpoint if _torch_available() and src.has_checkpoint else L.onnx
    if Stage.PARITY in stages:
        steps.append(Step("parity", Stage.PARITY, lambda: run_parity(ctx, reference, use_trt),
                          (reference, *([] if reference == L.onnx else [L.onnx]), *models[1:]),
                          (L.parity_dir / "parity.json", L.parity_dir / "parity.md"),
                          {**to_dict(cfg.parity), "reference": L.rel(reference), "tensorrt": use_trt,
                           **({"data": src.data} if src.data else {})},
                          ("torch", "onnxruntime", "numpy", "cv2"),
                          {"tensorrt": _trt_identity() if use_trt else None}))
    if Stage.BENCH in stages:
        bench_inputs = ([L.checkpoint] if cfg.bench.torch and _torch_available() and src.has_checkpoint else []) + models
        steps.append(Step("bench", Stage.BENCH, lambda: run_bench(ctx, use_trt), tuple(bench_inputs),
                          (L.bench_dir / "bench.json", L.bench_dir / "bench.md"),
                          {**to_dict(cfg.bench), "tensorrt": use_trt}, ("torch", "onnxruntime", "numpy"),
                          {"machine": _machine(), "tensorrt": _trt_identity() if use_trt else None}))
    if Stage.REPORT in stages:
        report_inputs = [L.parity_dir / "parity.json", L.bench_dir / "bench.json"]
        steps.append(Step("report", Stage.REPORT, lambda: run_report(ctx, trt_ok, trt_reason), tuple(report_inputs),
                          (L.report_md, L.report_json),
                          {"tensorrt": trt_reason or "available", "variants": [v.file for v in variants]},
                          ("matplotlib",),
                          # The renderer (this module, runtime/report.py) is in STAGE_CODE[REPORT].
                          lambda: {"context": _report_context_hash(L, variants)}))
    return steps, skipped


def _trt_identity() -> dict[str, Any] | None:
    try:
        from runtime.trt.build import current_gpu
        from runtime.trt.compat import Trt

        gpu = current_gpu()
        trt = Trt.load()
        return {"tensorrt": trt.version, "flavour": trt.flavour.value, "gpu": _jsonable(gpu)}
    except Exception as exc:  # noqa: BLE001 - identity is best effort; the engine cache checks again
        return {"error": f"{type(exc).__name__}: {exc}"}


def _report_context_hash(L: Layout, variants: Sequence[Variant]) -> dict[str, str | None]:
    """Hashes of the small files the report quotes (training metrics, export and quantize sidecars)."""
    files = [L.checkpoint_json, L.onnx_sidecar] + [L.out / (v.file + ".json") for v in variants]
    from runtime.artifacts import sidecar_path

    files += [sidecar_path(engine) for engine, _onnx, _p in _engine_files(L, variants)]  # rebuilt engines re-render
    return {L.rel(p): (sha256_file(p) if p.is_file() else None) for p in files}


# --------------------------------------------------------------------------------------------
# Stage functions (module-level so tests can replace them)
# --------------------------------------------------------------------------------------------
def run_train(ctx: Context) -> dict[str, Any]:
    """Train with `train.loop.fit` into the output folder; resume an interrupted run of the same config."""
    from train.loop import STATE_FILE, fit

    out = ctx.layout.out
    state = out / STATE_FILE
    cfg = ctx.fit_config
    if state.exists() and Stage.TRAIN in ctx.force:
        state.unlink()
    if state.exists():
        try:
            result = fit(cfg, out=out, resume=True, progress=ctx.progress)
        except ConfigError as exc:
            # Training state from another config (the config changed): start over.
            log.info("training state %s is from another config (%s); training from scratch", state, exc)
            state.unlink()
            result = fit(cfg, out=out, resume=False, progress=ctx.progress)
    else:
        result = fit(cfg, out=out, resume=False, progress=ctx.progress)
    m = result.metrics
    log.info("trained %s: val accuracy %.4f, macro-F1 %.4f, %d epochs, %.0f s", result.checkpoint,
             m["val_accuracy"], m["val_macro_f1"], result.epochs_run, result.train_seconds)
    return {"val_accuracy": m["val_accuracy"], "val_macro_f1": m["val_macro_f1"], "epochs": result.epochs_run,
            "train_seconds": result.train_seconds}


def run_export(ctx: Context) -> dict[str, Any]:
    """`export.onnx.export_onnx` with the ``export:`` section (preflight included)."""
    from export.config import ExportConfig
    from export.onnx import export_onnx

    e = ctx.cfg.export
    cfg = ExportConfig(checkpoint=ctx.layout.checkpoint, out=ctx.layout.onnx, opset=e.opset, exporter=e.exporter,
                       slim=e.slim, parity_batches=e.parity_batches, parity_atol=e.parity_atol)
    res = export_onnx(cfg, force=Stage.EXPORT in ctx.force)
    return {"exporter": res.exporter if hasattr(res, "exporter") else "", "skipped_by_export": res.skipped,
            "size_bytes": ctx.layout.onnx.stat().st_size}


def run_source_export(ctx: Context) -> dict[str, Any]:
    """The export stage of a ``source:`` model: copy + export a checkpoint, export a module, or adopt an ONNX."""
    from export.config import ExportConfig

    src, L, e = ctx.cfg.model_source, ctx.layout, ctx.cfg.export
    if src.kind == "onnx":
        from export.adopt import adopt_onnx

        res = adopt_onnx(src.path, src.contract, L.onnx)
        return {"adopted": src.path, "batch": res.batch_note, "size_bytes": L.onnx.stat().st_size}
    cfg = ExportConfig(checkpoint=Path(src.weights or src.path) if src.kind == "module" else L.checkpoint, out=L.onnx,
                       opset=e.opset, exporter=e.exporter, slim=e.slim, parity_batches=e.parity_batches,
                       parity_atol=e.parity_atol)
    if src.kind == "module":
        from export.onnx import export_module

        res = export_module(src.path, src.contract, cfg, weights=src.weights)
    else:  # checkpoint: a copy in the run folder is the PyTorch reference of parity and bench
        import shutil

        from export.onnx import export_onnx
        from runtime.artifacts import atomic_write

        if not Path(src.path).is_file():
            raise StageError(f"export: source.path {src.path} not found; point it at the checkpoint.pt to deploy")
        atomic_write(L.checkpoint, lambda p: shutil.copyfile(src.path, p))
        res = export_onnx(cfg, force=True)
    return {"exporter": res.exporter, "source": src.path, "size_bytes": L.onnx.stat().st_size}


def quantize_argv(ctx: Context, v: Variant) -> list[str]:
    """The ``python -m quantize`` arguments of one variant (``--force`` when the stage is forced)."""
    L = ctx.layout
    force = ["--force"] if Stage.QUANTIZE in ctx.force else []
    data = ["--data", ctx.cfg.model_source.data] if ctx.cfg.model_source.data else []  # a source: section's images
    if v.kind == "fp16":
        return ["fp16", "--onnx", str(L.onnx), "--out", str(L.quantized(v)), *ctx.cfg.quantize.fp16_args, *data, *force]
    return ["int8", "--onnx", str(L.onnx), "--method", str(v.method), "--out", str(L.quantized(v)),
            "--target", str(v.target), *ctx.cfg.quantize.int8_args, *data, *force]


def run_quantize(ctx: Context, v: Variant) -> dict[str, Any]:
    """One ``python -m quantize int8|fp16 ...`` call, in-process (its CLI is the stable contract)."""
    try:
        from quantize.__main__ import main as quantize_main
    except ImportError as exc:
        raise StageError(
            f"quantize.{v.name}: the quantize CLI cannot be imported ({exc}); it needs the quantize extra: "
            "pip install '.[quantize]'"
        ) from exc
    argv = quantize_argv(ctx, v)
    try:
        code = int(quantize_main(argv) or 0)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code) if isinstance(exc.code, int) else 2
    if code != 0:
        raise StageError(f"quantize.{v.name}: `python -m quantize {shlex.join(argv)}` exited {code}; its log above says why")
    side = ctx.layout.out / (v.file + ".json")
    info: dict[str, Any] = {"argv": argv, "size_bytes": ctx.layout.quantized(v).stat().st_size}
    if side.is_file():
        try:
            body = read_json(side)
            info.update({k: body[k] for k in ("precision", "method", "target") if k in body})
        except PipelineError:
            pass
    return info


def _engines_wanted(L: Layout, variants: Sequence[Variant]) -> list[tuple[Path, str]]:
    """(ONNX, precision) of every engine the tensorrt stage builds: FP32, FP16 and the TensorRT-form INT8 files."""
    return [(L.onnx, "fp32")] + [(L.quantized(v), v.kind) for v in variants if v.tensorrt_ready]


def _engine_files(L: Layout, variants: Sequence[Variant]) -> list[tuple[Path, Path, str]]:
    """(engine, ONNX, precision) for `_engines_wanted` (engines sit beside their ONNX)."""
    from runtime.trt.build import default_engine_path

    return [(default_engine_path(onnx, p), onnx, p) for onnx, p in _engines_wanted(L, variants)]


def run_tensorrt(ctx: Context, onnx: Path, precision: str) -> dict[str, Any]:
    """Build (or reuse) one engine with the same defaults the ``trt`` backend uses, so parity and bench reuse it."""
    from runtime.trt.build import BuildConfig, build_engine

    t = ctx.cfg.tensorrt
    cache = ctx.layout.out / t.timing_cache if t.timing_cache else None
    res = build_engine(BuildConfig(onnx=onnx, precision=precision, batch=t.batch, workspace_mib=t.workspace_mib,
                                   timing_cache=cache, force=Stage.TENSORRT in ctx.force, flavour=t.flavour,
                                   targets=t.compute_capabilities))
    log.info("%s", res.summary())
    return {"engine": ctx.layout.rel(res.engine), "reused": res.reused, "reason": res.reason, "build_s": res.build_s,
            "typing": res.typing, "flavour": res.flavour, "targets": list(res.targets)}


def _engine_summaries(L: Layout, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """What report.json says of each engine, from the engine sidecars (never imports TensorRT)."""
    from runtime.artifacts import sidecar_path

    out = []
    for engine, onnx, precision in _engine_files(L, variants):
        if not engine.is_file() or not sidecar_path(engine).is_file():
            continue
        side = _read_optional(sidecar_path(engine))
        key = side.get("key") or {}
        check = side.get("precision_check") or {}
        out.append({
            "engine": L.rel(engine), "onnx": L.rel(onnx), "precision": precision,
            "flavour": side.get("flavour") or key.get("flavour") or "tensorrt",
            "tensorrt": side.get("tensorrt") or f"TensorRT {key.get('tensorrt_version')}",
            "ahead_of_time": bool(side.get("ahead_of_time")),
            "targets": side.get("target_compute_capabilities") or [],
            "targets_default": side.get("targets_default"),
            "gpu": key.get("gpu_name") or None, "compute_capability": key.get("compute_capability") or None,
            "size_bytes": engine.stat().st_size, "build_s": side.get("build_s"), "built_at": side.get("built_at"),
            "typing": side.get("typing_used"),
            "realized": {k: check.get(k) for k in ("requested", "share", "min_share", "passed", "compute_layers",
                                                   "counts", "offenders")} if check else None,
            "layers_md": L.rel(engine.with_name(side["layers_md"])) if side.get("layers_md") else None,
        })
    return out


def _groups(ctx: Context, use_trt: bool, *, torch_ref: bool) -> list[tuple[list[Path], tuple[str, ...]]]:
    """(files, backends) groups: the cpu-target INT8 form runs on onnxruntime CPU only."""
    L = ctx.layout
    variants = quantize_variants(ctx.cfg.quantize)
    gpu_backends = ("ort", "trt") if use_trt else ("ort",)
    ready = [L.onnx] + [L.quantized(v) for v in variants if v.tensorrt_ready]
    cpu_only = [L.quantized(v) for v in variants if not v.tensorrt_ready]
    groups: list[tuple[list[Path], tuple[str, ...]]] = []
    if torch_ref:
        groups.append(([L.checkpoint], ("torch",)))
    groups.append((ready, gpu_backends))
    if cpu_only:
        groups.append((cpu_only, ("ort",)))
    return groups


def run_parity(ctx: Context, reference: Path, use_trt: bool) -> dict[str, Any]:
    """Parity matrix of every model against the reference; parity/parity.{json,md,png}."""
    from runtime.env import capture_environment
    from runtime.parity import ParityConfig, ParityRun, describe_model, load_labelled_set, run_parity as _parity
    from runtime.report import parity_report, write_report

    p = ctx.cfg.parity
    ref = describe_model(reference)
    labelled = load_labelled_set(ref.dataset, ref.class_names, split=p.split, limit=p.limit,
                                 data=ctx.cfg.model_source.data)
    runs: list[ParityRun] = []
    for files, backends in _groups(ctx, use_trt, torch_ref=False):
        cands = [f for f in files if f != reference]
        if not cands:
            continue
        cfg = ParityConfig(reference=str(reference), candidates=tuple(str(f) for f in cands), split=p.split,
                           backends=backends, batch_size=p.batch_size, threads=p.threads, limit=p.limit)
        runs.append(_parity(cfg, labelled=labelled, progress=ctx.progress))
    run = runs[0]
    if len(runs) > 1:  # one reference row, then every group's candidate rows
        run = dataclasses.replace(run, rows=run.rows + tuple(r for x in runs[1:] for r in x.rows if not r.is_reference),
                                  skipped={k: v for x in runs for k, v in x.skipped.items()},
                                  elapsed_s=sum(x.elapsed_s for x in runs))
    report = parity_report(run, command=ctx.command, environment=capture_environment(),
                           config={**to_dict(p), "reference": str(reference)})
    write_report(report, ctx.layout.parity_dir, plots=True)
    failing = [r.name for r in run.failing]
    for r in run.failing:
        why = "; ".join(r.result.reasons) if r.result else r.error
        log.warning("parity FAIL %s: %s", r.name, why)
    return {"passed": report.passed, "rows": len(run.rows), "failing": failing, "count": run.count}


def run_bench(ctx: Context, use_trt: bool) -> dict[str, Any]:
    """Latency of every model × backend × batch; bench/bench.{json,md,png}."""
    from runtime.bench import BenchConfig, BenchRun, run_bench as _bench, spread_of
    from runtime.env import capture_environment
    from runtime.report import bench_report, write_report

    b = ctx.cfg.bench
    torch_ref = b.torch and _torch_available() and ctx.cfg.model_source.has_checkpoint
    runs: list[BenchRun] = []
    for files, backends in _groups(ctx, use_trt, torch_ref=torch_ref):
        cfg = BenchConfig(models=tuple(str(f) for f in files), batches=b.batches, backends=backends,
                          seconds=b.seconds, iterations=b.iterations, warmup_s=b.warmup_s,
                          warmup_iterations=b.warmup_iterations, threads=b.threads,
                          overhead_batches=b.overhead_batches, repeat=b.repeat)
        runs.append(_bench(cfg, progress=ctx.progress))
    rows = tuple(r for x in runs for r in x.rows)
    run = BenchRun(rows=rows, overhead=tuple(o for x in runs for o in x.overhead), spread=spread_of(rows),
                   config=dataclasses.replace(runs[0].config, models=tuple(m for x in runs for m in x.config.models)),
                   skipped={k: v for x in runs for k, v in x.skipped.items()}, elapsed_s=sum(x.elapsed_s for x in runs))
    report = bench_report(run, command=ctx.command, environment=capture_environment(), config=to_dict(b))
    write_report(report, ctx.layout.bench_dir, plots=True)
    return {"passed": report.passed, "rows": len(report.rows), "failing": list(report.failing)}


def run_report(ctx: Context, trt_ok: bool, trt_reason: str) -> dict[str, Any]:
    """report.md + report.json + plots from the parity and bench reports (see `build_report`)."""
    body = build_report(ctx, trt_ok, trt_reason)
    L = ctx.layout
    body["plots"] = write_plots(body, L)
    atomic_write_json(L.report_json, body)
    atomic_write_text(L.report_md, render_report(body))
    return {"rows": len(body["rows"]), "passed": body["passed"], "plots": sorted(body["plots"].values())}


# --------------------------------------------------------------------------------------------
# The report a person reads: report.json (ferdeploy-report/1, kind "pipeline") + report.md + PNGs
# --------------------------------------------------------------------------------------------
_PARITY_COLUMNS = ("accuracy", "macro_f1", "top1_agreement", "max_abs_diff", "mean_abs_diff", "p99_abs_diff", "kl_mean",
                   "accuracy_drop_pts", "passed", "verdict", "bounds", "max_prob_diff", "top1_agreement_ci", "notes")
_BACKEND_ORDER = {"torch": 0, "ort": 1, "ort-cuda": 2, "ort-trt": 3, "trt": 4}


def _titles(L: Layout, variants: Sequence[Variant]) -> dict[str, tuple[int, str]]:
    """File name -> (report order, human title)."""
    out = {L.checkpoint.name: (0, "PyTorch FP32 (reference)"), L.onnx.name: (1, "ONNX FP32")}
    for i, v in enumerate(variants, 2):
        out[v.file] = (i, v.title)
    return out


def join_rows(bench_rows: Sequence[Mapping[str, Any]], parity_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Pure: bench rows with the parity columns of the same file on the same backend (sha256, backend)."""
    index = {(r.get("sha256"), r.get("backend")): r for r in parity_rows if r.get("sha256")}
    out = []
    for r in bench_rows:
        row = dict(r)
        p = index.get((r.get("sha256"), r.get("backend")))
        if p is not None:
            for k in _PARITY_COLUMNS:
                row[k] = p.get(k)
            row["is_reference"] = bool(p.get("is_reference"))
            row["reasons"] = list(p.get("reasons") or [])
            if p.get("error") and not row.get("error"):
                row["error"] = p["error"]
        out.append(row)
    return out


def _read_optional(path: Path) -> dict[str, Any]:
    try:
        body = read_json(path)
    except PipelineError:
        return {}
    return body if isinstance(body, dict) else {}


def build_report(ctx: Context, trt_ok: bool, trt_reason: str) -> dict[str, Any]:
    """Everything report.json holds (plots are added by `write_plots`)."""
    from runtime.report import SCHEMA, load_report

    L = ctx.layout
    variants = quantize_variants(ctx.cfg.quantize)
    parity = load_report(L.parity_dir / "parity.json")
    bench = load_report(L.bench_dir / "bench.json")
    titles = _titles(L, variants)
    rows = join_rows(bench.get("rows", []), parity.get("rows", []))
    for r in rows:
        name = Path(r["model"]).name
        order, title = titles.get(name, (99, name))
        r["file"] = name
        r["title"] = title
        r["order"] = order
        p = L.out / name
        r["file_size_bytes"] = p.stat().st_size if p.is_file() else None
    rows.sort(key=lambda r: (r.get("batch") or 0, r["order"], _BACKEND_ORDER.get(r["backend"], 9), r["backend"]))
    parity_rows = [dict(r, file=Path(r["model"]).name, title=titles.get(Path(r["model"]).name, (99, r["label"]))[1],
                        order=titles.get(Path(r["model"]).name, (99, ""))[0]) for r in parity.get("rows", [])]
    parity_rows.sort(key=lambda r: (r["order"], _BACKEND_ORDER.get(r["backend"], 9)))

    ckpt = _read_optional(L.checkpoint_json)
    training = {k: ckpt.get(k) for k in ("model", "dataset", "metrics", "epochs_run", "stop_reason", "train_seconds",
                                          "device", "torch_threads", "history")} if ckpt else {}
    exp = _read_optional(L.onnx_sidecar)
    export = {"opset": (exp.get("exporter") or {}).get("opset"), "exporter": (exp.get("exporter") or {}).get("name"),
              "preflight": exp.get("preflight"), "parity": exp.get("parity"), "file_size_bytes": exp.get("file_size_bytes"),
              "export_time_s": exp.get("export_time_s")} if exp else {}
    quantized = []
    for v in variants:
        side = _read_optional(L.out / (v.file + ".json"))
        p = L.quantized(v)
        quantized.append({"file": v.file, "title": v.title, "kind": v.kind, "method": v.method, "target": v.target,
                          "file_size_bytes": p.stat().st_size if p.is_file() else None,
                          "sidecar": {k: side[k] for k in ("precision", "method", "target", "calibration", "settings",
                                                           "quantize_s", "lint") if k in side}})
    engines = _engine_summaries(L, variants)
    stages = []
    for stamp_file in sorted(L.stamps.glob("*.json")) if L.stamps.is_dir() else []:
        s = _read_optional(stamp_file)
        if s:
            stages.append({"step": s.get("step"), "stage": s.get("stage"), "seconds": s.get("seconds"),
                           "finished_at": s.get("finished_at"), "outputs": sorted(s.get("outputs") or {})})
    stage_order = {s.value: i for i, s in enumerate(STAGES)}
    stages.sort(key=lambda s: (stage_order.get(s["stage"], 99), s.get("finished_at") or "", s["step"] or ""))
    failing = list(parity.get("failing", [])) + list(bench.get("failing", []))
    tensorrt = {"available": trt_ok, "reason": trt_reason, "reasons": list(tensorrt_status(ctx.cfg.tensorrt)[2]),
                "engines": engines, "built": bool(engines)}
    if not engines:
        tensorrt["build_reason"] = tensorrt_build_status(ctx.cfg.tensorrt)[1]
    if not trt_ok:
        tensorrt["how_to"] = ("on a machine with TensorRT and an NVIDIA GPU that runs the engines (a Jetson: docs/jetson.md; "
                              "RTX engines: an RTX-class GPU of their target compute capabilities) run "
                              f"`python -m runtime pipeline --config {ctx.cfg.source or 'CONFIG'} --stages tensorrt,parity,bench,report`")
    return {
        "schema": SCHEMA,
        "kind": "pipeline",
        "measurement": _measurement(ctx, parity, bench, quantized),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ctx.command,
        "config": {"source": ctx.cfg.source, "fit": _jsonable(ctx.cfg.fit),
                   **{name: to_dict(getattr(ctx.cfg, name)) for name in _SECTIONS}},
        "passed": bool(parity.get("passed")) and bool(bench.get("passed")),
        "failing": failing,
        "dataset": parity.get("dataset", ""),
        "reference": parity.get("reference", {}),
        "class_names": parity.get("class_names", []),
        "rows": rows,
        "parity_rows": parity_rows,
        "training": training,
        "export": export,
        "quantized": quantized,
        "tensorrt": tensorrt,
        "stages": stages,
        "environment": bench.get("environment", {}),
        "skipped_backends": {**parity.get("skipped", {}), **bench.get("skipped", {})},
        "reports": {"parity": "parity/parity.md", "bench": "bench/bench.md"},
    }


def _git_commit() -> str | None:
    """The project's commit (with ``-dirty`` when the work tree has changes), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def _measurement(ctx: Context, parity: Mapping[str, Any], bench: Mapping[str, Any],
                 quantized: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How the report's numbers were measured: threads per backend, batches, data, calibration, commit."""
    bcfg = bench.get("config") or {}
    threads: dict[str, Any] = {}
    for d in parity.get("details", []):
        info = d.get("backend_info") or {}
        if info.get("threads") is not None:
            threads.setdefault(d.get("backend"), info.get("threads"))
    for backend in sorted({r.get("backend") for r in bench.get("rows", []) if r.get("backend")}):
        if backend in ("ort", "torch") and bcfg.get("threads") is not None:
            threads[backend] = bcfg.get("threads")  # bench's explicit setting is what the latency used
    calibration = {q["file"]: (q.get("sidecar") or {}).get("calibration") for q in quantized
                   if (q.get("sidecar") or {}).get("calibration")}
    return {
        "bench_threads": bcfg.get("threads"),
        "threads_per_backend": threads,
        "batches": bcfg.get("batches"),
        "seconds_per_measurement": bcfg.get("seconds"),
        "parity_set": parity.get("dataset"),
        "parity_count": (parity.get("reference") or {}).get("count"),
        "calibration": calibration,
        "commit": _git_commit(),
    }


def write_plots(body: Mapping[str, Any], L: Layout) -> dict[str, str]:
    """The report's own PNGs (latency vs accuracy per batch, latency bars, training curve); name -> file.

    matplotlib is optional (the Jetson side may lack it): without it the report has tables only.
    """
    try:
        from runtime.report import ReportRow, _pyplot, plot_pareto

        _pyplot()
    except ImportError as exc:
        log.warning("matplotlib is not installed (%s): report plots skipped; pip install '.[dev]'", exc)
        return {}
    names = {f.name for f in dataclasses.fields(ReportRow)}
    rows = [ReportRow(**{k: (tuple(v) if k == "reasons" else v) for k, v in r.items() if k in names}) for r in body["rows"]]
    plots: dict[str, str] = {}
    for batch in sorted({r.batch for r in rows if r.batch is not None}):
        path = plot_pareto(rows, L.out / f"report.pareto.b{batch}.png", batch=batch)
        if path is not None:
            plots[f"pareto_b{batch}"] = path.name
    path = plot_latency_bars(body["rows"], L.out / "report.latency.png")
    if path is not None:
        plots["latency"] = path.name
    path = plot_training(body.get("training") or {}, L.out / "report.training.png")
    if path is not None:
        plots["training"] = path.name
    for name, rel in (("confusion", "parity/parity.confusion.png"), ("latency_distributions", "bench/bench.latency.png")):
        if (L.out / rel).is_file():
            plots[name] = rel
    return plots


def _row_name(r: Mapping[str, Any]) -> str:
    return f"{r.get('title', r.get('label'))} [{r.get('backend')}]"


def plot_latency_bars(rows: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Per model: p50 per call with its 95% CI, one panel per batch size (horizontal bars)."""
    from runtime.report import _pyplot, _save

    measured = [r for r in rows if r.get("latency_ms") and r.get("batch") is not None]
    if not measured:
        return None
    batches = sorted({r["batch"] for r in measured})
    plt = _pyplot()
    names = list(dict.fromkeys(_row_name(r) for r in measured))
    fig, axes = plt.subplots(1, len(batches), figsize=(5.2 * len(batches) + 1.5, 0.45 * len(names) + 1.6), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        by = {_row_name(r): r for r in measured if r["batch"] == batch}
        ys, vals, lo, hi, colors = [], [], [], [], []
        for i, n in enumerate(names):
            r = by.get(n)
            if r is None:
                continue
            lat = r["latency_ms"]
            ci = lat.get("p50_ci") or [lat["p50"], lat["p50"]]
            ys.append(i)
            vals.append(lat["p50"])
            lo.append(max(0.0, lat["p50"] - ci[0]))
            hi.append(max(0.0, ci[1] - lat["p50"]))
            prec = r.get("precision")
            colors.append({"fp32": "#4c72b0", "fp16": "#55a868", "int8": "#c44e52"}.get(prec, "grey"))
        ax.barh(ys, vals, xerr=[lo, hi], color=colors, capsize=3)
        for y, v, up, r in zip(ys, vals, hi, [by[names[i]] for i in ys]):
            ips = r.get("throughput_ips")
            ax.annotate(f"{v:.2f} ms" + (f"  {ips:.0f} img/s" if ips else ""), (v + up, y), xytext=(5, 0),
                        textcoords="offset points", va="center", fontsize=7)
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.invert_yaxis()
        # Log scale: the PyTorch reference and INT8 on a CPU can differ by 100x from the fastest row.
        ax.set_xscale("log")
        ax.set_xlim(min(vals) / 2, max(v + u for v, u in zip(vals, hi)) * 8)
        ax.set_xlabel("p50 latency per call (ms, log scale; bars: 95% CI)")
        ax.set_title(f"batch {batch}")
    fig.suptitle("Latency per model and backend (blue FP32, green FP16, red INT8)")
    return _save(fig, plt, path)


def plot_training(training: Mapping[str, Any], path: Path) -> Path | None:
    """Training and validation loss, and validation accuracy, per epoch."""
    from runtime.report import _pyplot, _save

    hist = training.get("history") or []
    if not hist:
        return None
    plt = _pyplot()
    ep = [h["epoch"] for h in hist]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [h["train_loss"] for h in hist], "o-", label="train loss")
    a1.plot(ep, [h["val_loss"] for h in hist], "s-", label="val loss")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.legend(fontsize=8)
    a2.plot(ep, [100 * h["val_accuracy"] for h in hist], "o-", label="accuracy")
    a2.plot(ep, [100 * h["val_macro_f1"] for h in hist], "s--", label="macro-F1")
    a2.set_xlabel("epoch")
    a2.set_ylabel("validation (%)")
    a2.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in (a1, a2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle("Training (PyTorch)")
    return _save(fig, plt, path)


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "–"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _md_table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in body]
    return lines


def _mb(n: Any) -> str:
    return "–" if n is None else f"{n / 1e6:.2f} MB"


def _agree_ci(r: Mapping[str, Any]) -> str:
    ci = r.get("top1_agreement_ci")
    a = r.get("top1_agreement")
    if a is None:
        return "–"
    return f"{a:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{a:.4f}"


def _measurement_lines(m: Mapping[str, Any]) -> list[str]:
    """The "how it was measured" paragraph of report.md (pure)."""
    if not m:
        return []
    out = ["", "### How this was measured", ""]
    threads = m.get("threads_per_backend") or {}
    if threads:
        out.append("- threads: " + ", ".join(f"`{b}` {t} intra-op" for b, t in sorted(threads.items()))
                   + " (set explicitly; OMP_NUM_THREADS is not relied on)")
    if m.get("batches"):
        out.append(f"- batch sizes: {', '.join(str(b) for b in m['batches'])}; "
                   f"{_fmt(m.get('seconds_per_measurement'), 'g')} s per measurement after warm-up")
    if m.get("parity_set"):
        out.append(f"- parity set: {m['parity_set']}")
    for file, cal in sorted((m.get("calibration") or {}).items()):
        counts = cal.get("class_counts") or {}
        balance = (f"; per class {min(counts.values())}–{max(counts.values())}" if counts else "")
        out.append(f"- INT8 calibration of `{file}`: {cal.get('source')} ({cal.get('size')} images, seed "
                   f"{cal.get('seed')}{balance})")
    out.append(f"- code: commit `{m.get('commit') or 'unknown (not a git checkout)'}`")
    return out


def _engine_lines(trt: Mapping[str, Any]) -> list[str]:
    """The TensorRT section's engine table and what ran them (pure)."""
    rows = []
    for e in trt.get("engines", []):
        if e.get("ahead_of_time"):
            where = f"{', '.join(e.get('targets') or [])}{' (default)' if e.get('targets_default') else ''}"
        else:
            where = f"{e.get('gpu')} (sm {e.get('compute_capability')})"
        r = e.get("realized") or {}
        if r:
            counts = ", ".join(f"{k} {v}" for k, v in sorted((r.get("counts") or {}).items()))
            realized = (f"{r.get('requested')} in {_fmt(r.get('share'), '.0%')} of {r.get('compute_layers')} conv/GEMM "
                        f"({counts}; need {_fmt(r.get('min_share'), '.0%')}): {'ok' if r.get('passed') else '**FAILED**'}")
        else:
            realized = "–"
        table = f"[layers]({e['layers_md']})" if e.get("layers_md") else "–"
        rows.append([f"`{Path(e.get('engine', '')).name}`", e.get("precision"), e.get("tensorrt"), where,
                     _mb(e.get("size_bytes")), _fmt(e.get("build_s"), ".1f"), realized, table])
    out = _md_table(["engine", "precision", "built by", "runs on (compute capability)", "size", "build s",
                     "realized precision", "per layer"], rows)
    short = [e for e in trt.get("engines", []) if (e.get("realized") or {}).get("requested") == "int8"
             and (e.get("realized") or {}).get("share") is not None and e["realized"]["share"] < 0.9]
    for e in short:
        names = ", ".join(f"`{o}`" for o in e["realized"].get("offenders") or [])
        out += ["", f"`{Path(e['engine']).name}`: conv/GEMM layers not in INT8: {names or 'none listed'}."]
    if trt.get("available"):
        out += ["", "The `trt` rows above ran these engines (CUDA-event device times are in the bench report)."]
    else:
        out += ["", "These engines were built here but **not run**: the parity and latency tables have no `trt` rows, "
                "because:", ""]
        out += [f"- {part}" for part in trt.get("reasons") or [trt.get("reason", "")]]
        if trt.get("how_to"):
            out += ["", f"To run them, {trt['how_to']}."]
    return out


def render_report(body: Mapping[str, Any]) -> str:
    """report.md from report.json's content (pure)."""
    from runtime.env import summary_line
    from runtime.report import verdict_text

    rows = body.get("rows", [])
    tr = body.get("training") or {}
    m = tr.get("metrics") or {}
    model = tr.get("model") or {}
    ds = tr.get("dataset") or {}
    classes = body.get("class_names") or []
    plots = body.get("plots") or {}
    out = [f"# FER deployment report: `{body.get('config', {}).get('source') or 'pipeline'}`", ""]
    if model:
        out += [f"Model `{model.get('name')}` ({len(classes)} classes: {', '.join(classes)}), trained on "
                f"`{ds.get('name')}` ({ds.get('train')} training / {ds.get('val')} validation images), exported to "
                "ONNX, quantized, and measured on this machine.", ""]
    if body.get("command"):
        out += [f"Command: `{body['command']}` ({body.get('created_at', '')})", ""]
    if body.get("environment"):
        out += [f"Machine: {summary_line(body['environment'])}", ""]

    # ---- summary
    out += ["## Summary", ""]
    summary: list[list[str]] = []
    if m:
        summary.append(["validation accuracy (PyTorch)",
                        f"{_fmt(m.get('val_accuracy'))} (macro-F1 {_fmt(m.get('val_macro_f1'))}, "
                        f"best epoch {m.get('best_epoch')} of {tr.get('epochs_run')}, stopped by {tr.get('stop_reason')}, "
                        f"{_fmt(tr.get('train_seconds'), '.0f')} s)"])
    prow = [r for r in body.get("parity_rows", []) if not r.get("is_reference")]
    if prow:
        ok = sum(1 for r in prow if r.get("passed"))
        unsure = [r for r in prow if r.get("passed") and r.get("verdict") == "uncertain"]
        summary.append(["parity vs the reference", f"{ok} of {len(prow)} rows pass"
                        + (f" ({len(unsure)} uncertain: too few samples to tell)" if unsure else "")
                        + (f"; **failing: {', '.join(_row_name(r) for r in prow if not r.get('passed'))}**" if ok < len(prow) else "")])
    for batch in sorted({r["batch"] for r in rows if r.get("batch") is not None and r.get("latency_ms")}):
        at = [r for r in rows if r.get("batch") == batch and r.get("latency_ms")]
        best = min(at, key=lambda r: r["latency_ms"]["p50"])
        summary.append([f"fastest at batch {batch}", f"{_row_name(best)}: p50 {_fmt(best['latency_ms']['p50'], '.3f')} ms, "
                        f"{_fmt(best.get('throughput_ips'), '.0f')} img/s"])
    trt = body.get("tensorrt") or {}
    if trt.get("engines"):
        built = ", ".join(f"`{Path(e.get('engine', '')).name}`" for e in trt["engines"])
        runs = "parity and latency rows below" if trt.get("available") else \
            "**not run here** (details under [TensorRT](#tensorrt))"
        summary.append(["TensorRT", f"{len(trt['engines'])} engines ({built}); {runs}"])
    elif trt.get("available"):
        summary.append(["TensorRT", "engines: none"])
    else:
        missing = [name for name in ("TensorRT", "CUDA/GPU") if any(r.startswith(name) for r in trt.get("reasons", []))]
        short = f"missing {' and '.join(missing)}" if missing else str(trt.get("reason", ""))
        summary.append(["TensorRT", f"**no engines built here** ({short}; details under [TensorRT](#tensorrt))"])
    out += _md_table(["", ""], summary)

    # ---- accuracy × latency
    out += ["", "## Accuracy and latency", "",
            "One row per model × backend × batch. Latency is the host wall time of one call (p50 with its 95% bootstrap "
            "confidence interval; p99 is the tail), measured apart from accuracy on a fixed random batch. Accuracy and "
            "agreement are on the labelled split below; *acc. drop* is in points against the reference (positive = "
            "less accurate), *top-1 agree* the share of images whose top-1 class equals the reference's, *max Δprob* "
            "the largest change of any class probability. Each verdict names the bounds it was held to (the "
            "per-precision policy of docs/tolerances.md): a bound on a count fails only when its whole 95% interval "
            "misses it.", ""]
    body_rows = []
    for r in rows:
        lat = r.get("latency_ms") or {}
        ci = lat.get("p50_ci") or [None, None]
        verdict = verdict_text(r)
        body_rows.append([r.get("title"), f"`{r.get('file')}`", r.get("backend"), r.get("batch"),
                          f"{_fmt(lat.get('p50'), '.3f')} [{_fmt(ci[0], '.3f')}, {_fmt(ci[1], '.3f')}]",
                          _fmt(lat.get("p99"), ".3f"), _fmt(r.get("throughput_ips"), ".0f"), _fmt(r.get("accuracy")),
                          _fmt(r.get("accuracy_drop_pts"), "+.2f"), _fmt(r.get("top1_agreement")),
                          _fmt(r.get("max_prob_diff"), ".3g"), _mb(r.get("file_size_bytes")), verdict,
                          r.get("error") or ""])
    out += _md_table(["model", "file", "backend", "batch", "p50 ms [95% CI]", "p99 ms", "img/s", "accuracy", "acc. drop (pts)",
                      "top-1 agree", "max Δprob", "size", "parity (bounds)", "error"], body_rows)
    if body.get("dataset"):
        out += ["", f"Labelled set: {body['dataset']}."]
    out += _measurement_lines(body.get("measurement") or {})
    for key, title in sorted(((k, v) for k, v in plots.items() if k.startswith("pareto_b")), key=lambda kv: int(kv[0][8:])):
        out += ["", f"![Latency vs accuracy at batch {key[8:]}]({title})"]
    if "latency" in plots:
        out += ["", f"![Latency per model and backend]({plots['latency']})"]
    if "latency_distributions" in plots:
        out += ["", f"Per-call latency distributions: [{plots['latency_distributions']}]({plots['latency_distributions']})"
                f" (box: quartiles, whiskers p1–p99); the full latency report is [{body['reports']['bench']}]"
                f"({body['reports']['bench']})."]

    # ---- parity
    failing = [r for r in prow if not r.get("passed")]
    out += ["", "## Parity", ""]
    out += _md_table(["model", "backend", "verdict", "top-1 agree [95% CI]", "acc. drop (pts)", "max Δprob", "bounds"],
                     [[_row_name(r), r.get("backend"), verdict_text({**r, "bounds": ""}),
                       _agree_ci(r), _fmt(r.get("accuracy_drop_pts"), "+.2f"), _fmt(r.get("max_prob_diff"), ".3g"),
                       r.get("bounds") or "–"] for r in prow])
    out.append("")
    if failing:
        out += ["Rows outside their tolerance (the reasons name the bound that was missed):", ""]
        out += [f"- **{_row_name(r)}**: {'; '.join(r.get('reasons') or []) or r.get('error')}" for r in failing]
        out.append("")
    unsure = [r for r in prow if r.get("passed") and r.get("notes")]
    if unsure:
        out += ["Rows that pass but whose point estimate misses a bound (too few samples to tell):", ""]
        out += [f"- {_row_name(r)}: {'; '.join(r.get('notes') or [])}" for r in unsure]
        out.append("")
    out += [f"Per-class deltas and the flipped samples: [{body['reports']['parity']}]({body['reports']['parity']})."]
    if "confusion" in plots:
        out += ["", f"![Confusion-matrix delta of each candidate against the reference]({plots['confusion']})"]

    # ---- training
    if tr:
        out += ["", "## Training", ""]
        views = m.get("per_view_accuracy") or {}
        if views:
            out += _md_table(["head pose", *views.keys()], [["val accuracy", *(_fmt(v, ".3f") for v in views.values())]])
        occl = m.get("per_occlusion_accuracy") or {}
        if occl:
            out += ["", "Occlusion: " + ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in occl.items()) + "."]
        if "training" in plots:
            out += ["", f"![Training curves]({plots['training']})"]

    # ---- models
    exp = body.get("export") or {}
    out += ["", "## Models", ""]
    mrows = []
    if exp:
        pf = exp.get("preflight") or {}
        mrows.append(["ONNX FP32", "`model.onnx`", _mb(exp.get("file_size_bytes")),
                      f"{exp.get('exporter')} exporter, opset {exp.get('opset')}; preflight "
                      f"{'passed' if pf.get('passed') else 'FAILED'} ({pf.get('errors')} errors, {pf.get('warnings')} warnings)"])
    for q in body.get("quantized", []):
        s = q.get("sidecar") or {}
        detail = ", ".join(f"{k} {s[k]}" for k in ("precision", "method", "target") if s.get(k)) or "–"
        mrows.append([q["title"], f"`{q['file']}`", _mb(q.get("file_size_bytes")), detail])
    out += _md_table(["model", "file", "size", "how it was made"], mrows)

    # ---- TensorRT
    out += ["", "## TensorRT", ""]
    if trt.get("engines"):
        out += _engine_lines(trt)
    elif trt.get("available"):
        out += ["TensorRT is available but no engine was built (is the tensorrt stage in --stages?)."]
    else:
        out += ["No TensorRT engines were built on this machine, so the table has no `trt` rows. What is missing:", ""]
        out += [f"- {part}" for part in trt.get("reasons") or [trt.get("reason", "")]]
        out += ["", f"To add them, {trt.get('how_to', '')}; the other stages are reused."]

    # ---- stages
    stages = body.get("stages") or []
    if stages:
        out += ["", "## Stages", "",
                "When each artifact was produced and how long it took. A rerun reuses every step whose inputs "
                "(sha256), config and library versions are unchanged (docs/pipeline.md).", ""]
        out += _md_table(["step", "seconds", "finished (UTC)", "outputs"],
                         [[s["step"], _fmt(s.get("seconds"), ".1f"), s.get("finished_at"),
                           ", ".join(f"`{o}`" for o in s.get("outputs", []))] for s in stages])
    skipped = body.get("skipped_backends") or {}
    if skipped:
        out += ["", "Backends not available on this machine: " + "; ".join(f"`{k}`: {v}" for k, v in sorted(skipped.items())) + "."]
    out.append("")
    return "\n".join(out)


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


def _run_pipeline(cfg: PipelineConfig, stages: Sequence[Stage] | None, force: Sequence[Stage], out: Path,
                  progress: bool, dry_run: bool, command: str) -> PipelineResult:
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
    result = PipelineResult(layout.out, tuple(results), seconds,
                            layout.report_md if layout.report_md.is_file() else None,
                            parity_info.get("passed") if parity_info else None)
    if not dry_run:
        atomic_write_json(layout.out / RUN_LOG, {
            "command": command, "config": cfg.source, "stages": [s.value for s in stages],
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3), "steps": [r.to_dict() for r in results],
            "error": f"{type(error).__name__}: {error}" if error else None,
        })
    if error is not None:
        raise error
    log.info("pipeline finished in %.1f s: %d step(s) ran, %d reused%s", seconds, len(result.ran()), len(result.reused()),
             f", {len(skipped)} skipped" if skipped else "")
    return result


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m runtime pipeline",
        description="Train -> export -> quantize -> TensorRT -> parity -> bench -> report, reusing every artifact "
                    "whose inputs, config and library versions are unchanged.",
        epilog="exit codes: 0 done; 1 a stage failed (the log names it and the fix); 2 bad usage or config; "
               "3 a missing optional dependency; 4 a parity row failed and parity.gate is true (the report is "
               "written either way); 74 an output cannot be written; 75 the output folder is used by another "
               "run; 130 interrupted; 143 terminated (docs/errors.md)",
    )
    p.add_argument("--config", required=True, help="pipeline YAML (configs/demo.yaml): fit/export/quantize/... sections")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated stages to run (default: the config's pipeline.stages): {','.join(s.value for s in STAGES)}")
    p.add_argument("--force", default="", help="comma-separated stages to rerun even when up to date (or 'all')")
    p.add_argument("--out", default=None, help="output folder (default: the config's pipeline.out or fit.out)")
    p.add_argument("--dry-run", action="store_true", help="say which steps would run and why; run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_debug_flag(p)
    return p


@cli_entry(argv_start=2)
def pipeline_main(argv: list[str]) -> int:
    """``python -m runtime pipeline ...`` (``argv`` excludes the verb); exit codes in docs/errors.md."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_pipeline_config(args.config)
    stages = parse_stages(args.stages) if args.stages else None
    force = parse_stages(args.force) if args.force else ()
    command = "python -m runtime " + shlex.join(["pipeline", *argv])
    try:
        result = run_pipeline(cfg, stages=stages, force=force, out=args.out, progress=not args.no_progress,
                              dry_run=args.dry_run, command=command)
    except (PipelineError, KeyboardInterrupt, Terminated) as exc:
        if not isinstance(exc, (ConfigError, LockedError)):
            log.error("pipeline stopped; what finished before is kept (training resumes from state.pt): fix the "
                      "cause and rerun the same command to continue")
        raise
    if args.dry_run:
        for s in result.steps:
            print(f"{s.name:32} {s.status:10} {s.reason}")
        return EXIT_OK
    L = Layout(result.out)
    if L.report_md.is_file():
        plots = sorted(str(p) for p in result.out.glob("report.*.png"))
        print(f"report:   {L.report_md}\njson:     {L.report_json}\nplots:    {', '.join(plots) or '(none)'}\n"
              f"pipeline: {result.out / RUN_LOG} ({len(result.ran())} step(s) ran, {len(result.reused())} reused, "
              f"{result.seconds:.1f} s)")
    if result.parity_passed is False and cfg.parity.gate:
        log.error("parity failed for at least one row (parity.gate is true); see %s", L.report_md)
        return EXIT_PARITY
    return EXIT_OK
