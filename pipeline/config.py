"""The pipeline's configuration: stages, the YAML sections, model variants (docs/pipeline.md).

One YAML, one section per stage; the ``fit:`` section belongs to `train.config`. Unknown sections
or keys are an error. `STAGE_CODE` names the project source files whose sha256 goes into each
stage's stamp, so a code update reruns what it affects.
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.artifacts import (
    sha256_file,
)
from runtime.configs import from_mapping, load_yaml
from runtime.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

STAMP_DIR = "stamps"
STAMP_FORMAT = "ferdeploy-stamp/1"
RUN_LOG = "pipeline.json"


class StageError(PipelineError):
    """A pipeline stage could not run or failed; the message names the stage and the fix."""


class Stage(str, enum.Enum):
    TRAIN = "train"
    EXPORT = "export"
    QUANTIZE = "quantize"
    TENSORRT = "tensorrt"
    PARITY = "parity"
    BENCH = "bench"
    DEPLOY = "deploy"  # optional: only when the deploy: section names targets
    REPORT = "report"


STAGES: tuple[Stage, ...] = tuple(Stage)

# The project's own source files that decide each stage's output (paths relative to the folder
# holding the packages). Their sha256 goes into the stamp, so a code update reruns what it affects
# (a changed quantizer re-quantizes; a changed report template only rewrites the report).
STAGE_CODE: dict[Stage, tuple[str, ...]] = {
    Stage.TRAIN: ("train", "runtime/data", "runtime/preprocess.py"),
    Stage.EXPORT: ("export", "runtime/contract.py"),
    Stage.QUANTIZE: (
        "quantize",
        "export/gate.py",
        "runtime/qdq_lint.py",
        "runtime/data",
        "runtime/preprocess.py",
        "runtime/contract.py",
        "runtime/images.py",
    ),
    Stage.TENSORRT: ("runtime/trt", "runtime/backends/trt.py", "runtime/qdq_lint.py"),
    Stage.PARITY: (
        "runtime/parity.py",
        "runtime/compare.py",
        "runtime/metrics.py",
        "runtime/preprocess.py",
        "runtime/backends",
        "runtime/images.py",
        "runtime/data",
        "train/backend.py",
    ),
    Stage.BENCH: (
        "runtime/bench.py",
        "runtime/latency.py",
        "runtime/roofline.py",
        "runtime/backends",
        "train/backend.py",
    ),
    Stage.REPORT: ("runtime/report.py", "pipeline/report.py", "pipeline/markdown.py"),
    Stage.DEPLOY: ("export/deploy", "runtime/preprocess.py", "runtime/contract.py"),
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


# Fields of the quantize stage's own configs that the pipeline fills in itself.
_QUANTIZE_OWNED = ("onnx", "out", "method", "target", "data")
# The bench stage measures latency of every model; the quantize stage's own side-by-side latency
# would only repeat it (about 12 s per file on a 2-core machine).
_NO_LATENCY = {"latency": {"enabled": False}}


@dataclass(frozen=True)
class QuantizeSection:
    """``quantize:`` section.

    Attributes:
        methods: INT8 methods producing the TensorRT Q/DQ form (target ``tensorrt``).
        cpu_methods: INT8 methods producing the x86 onnxruntime form (target ``cpu``): the
            TensorRT form is a poor CPU format (docs/measured-facts.md), so CPU latency is measured on these.
        fp16: Produce ``model.fp16.onnx``.
        int8: Settings of every INT8 file: the fields of `quantize.config.Int8Config` (``ignore``,
            ``max_drop_pts``, ``calibration: {size, seed, min_size}``, ``latency: {...}``...) except
            the ones the pipeline sets (``onnx``, ``out``, ``method``, ``target``, ``data``). Unless
            set here, the stage's own side-by-side latency is off (the bench stage times every model).
        fp16_settings: The same for `quantize.config.Fp16Config` (``keep_fp32``, ``val_limit``, ``latency``).
    """

    methods: tuple[str, ...] = ("nncf", "ort")
    cpu_methods: tuple[str, ...] = ("ort",)
    fp16: bool = True
    int8: Mapping[str, Any] = field(default_factory=dict)
    fp16_settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = sorted((set(self.methods) | set(self.cpu_methods)) - {"nncf", "ort"})
        if bad:
            raise ConfigError(f"quantize: unknown INT8 method(s) {bad}; valid: nncf, ort")
        for name, settings in (("int8", self.int8), ("fp16_settings", self.fp16_settings)):
            owned = sorted(set(settings) & set(_QUANTIZE_OWNED))
            if owned:
                raise ConfigError(
                    f"quantize.{name}: {owned} are set by the pipeline (file names, method, target, "
                    "source.data); remove them"
                )
        # Validate now (unknown keys, wrong types), not when the stage runs minutes later.
        int8_config(self, "model.onnx", "model.int8.onnx", "nncf", "tensorrt", None)
        fp16_config(self, "model.onnx", "model.fp16.onnx", None)


def int8_config(section: QuantizeSection, onnx: Any, out: Any, method: str, target: str, data: str | None) -> Any:
    """The `quantize.config.Int8Config` of one INT8 file: the section's settings plus the pipeline's paths."""
    from quantize.config import Int8Config

    return from_mapping(
        Int8Config,
        {
            **_NO_LATENCY,
            **section.int8,
            "onnx": str(onnx),
            "out": str(out),
            "method": method,
            "target": target,
            "data": data,
        },
        where="quantize.int8",
    )


def fp16_config(section: QuantizeSection, onnx: Any, out: Any, data: str | None) -> Any:
    """The `quantize.config.Fp16Config` of the FP16 file."""
    from quantize.config import Fp16Config

    return from_mapping(
        Fp16Config,
        {**_NO_LATENCY, **section.fp16_settings, "onnx": str(onnx), "out": str(out), "data": data},
        where="quantize.fp16_settings",
    )


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


# CPU runtimes the parity and bench stages can run the ONNX files on (``cpu_backends``). onnxruntime
# is always one of them: it is the baseline every speed-up and agreement is read against.
CPU_BACKENDS = ("ort", "openvino")
# How to get each one when it is missing here (the backend's own reason usually says it too).
CPU_BACKEND_INSTALL = {"ort": "pip install onnxruntime", "openvino": "pip install '.[openvino]'"}


def check_cpu_backends(names: Sequence[str], where: str) -> None:
    """``cpu_backends`` names: known, listed once, onnxruntime among them; else `ConfigError`."""
    bad = [n for n in names if n not in CPU_BACKENDS]
    if bad:
        raise ConfigError(f"{where}.cpu_backends: unknown CPU runtime(s) {bad}; valid: {list(CPU_BACKENDS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.cpu_backends: each runtime once, got {list(names)}")
    if "ort" not in names:
        raise ConfigError(
            f"{where}.cpu_backends must include ort (the onnxruntime rows are the baseline), got {list(names)}; "
            "e.g. [ort, openvino]"
        )


@dataclass(frozen=True)
class ParitySection:
    """``parity:`` section.

    Attributes:
        split: Dataset split scored.
        batch_size: Inference batch.
        limit: Score at most this many samples (None: the whole split).
        threads: CPU intra-op threads (None: OMP_NUM_THREADS or 1).
        gate: Exit with code 4 when a parity row fails (the report is written either way).
        cpu_backends: CPU runtimes every ONNX file runs on: ``ort`` (always) and optionally
            ``openvino`` (``pip install '.[openvino]'``; missing here -> its rows are skipped with the reason).
    """

    split: str = "val"
    batch_size: int = 32
    limit: int | None = None
    threads: int | None = None
    gate: bool = False
    cpu_backends: tuple[str, ...] = ("ort",)

    def __post_init__(self) -> None:
        check_cpu_backends(self.cpu_backends, "parity")


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
        cpu_backends: CPU runtimes the x86 forms are timed on, as ``parity.cpu_backends``.
        roofline: Achieved MAC/s of each row against a large INT8 GEMM timed in the same runtime
            and thread count (``runtime/roofline.py``; about 2.5 s per runtime).
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
    cpu_backends: tuple[str, ...] = ("ort",)
    roofline: bool = True

    def __post_init__(self) -> None:
        check_cpu_backends(self.cpu_backends, "bench")


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
            raise ConfigError(
                f"source.kind must be one of {list(SOURCE_KINDS)} (or left out to train), got {self.kind!r}"
            )
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


DEPLOY_TARGETS = ("triton", "deepstream")


@dataclass(frozen=True)
class DeploySection:
    """``deploy:`` section (optional last stage; docs/deploy.md).

    Attributes:
        targets: ``triton`` and/or ``deepstream``; empty (the default): no deploy stage.
        model: The model file deployed, relative to the output folder (``model.onnx``,
            ``model.ort.int8.onnx``...).
        out: Folder (inside the output folder) for the Triton model repository / DeepStream config.
        options: `export.deploy.DeployConfig` fields (``name``, ``allow_approximate``, ``gpu``,
            ``batch``, ``samples``...).
    """

    targets: tuple[str, ...] = ()
    model: str = "model.onnx"
    out: str = "deploy"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = sorted(set(self.targets) - set(DEPLOY_TARGETS))
        if bad:
            raise ConfigError(f"deploy.targets: unknown target(s) {bad}; valid: {list(DEPLOY_TARGETS)}")
        if Path(self.model).is_absolute() or ".." in Path(self.model).parts:
            raise ConfigError(
                f"deploy.model names a file inside the output folder (e.g. model.onnx), got {self.model!r}"
            )


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
    deploy: DeploySection = field(default_factory=DeploySection)
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
    "deploy": DeploySection,
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
