"""ONNX -> TensorRT plan, one code path for TensorRT 10.x, 11.x and TensorRT for RTX.

    result = build_engine(BuildConfig(onnx="runs/x/model.int8.onnx", precision="int8",
                                      batch=BatchProfile(1, 8, 32), timing_cache="runs/trt.cache"))

What a build does, in order:

1. Resolve the engine key (`runtime.trt.cache.EngineKey`: ONNX sha256, TensorRT flavour and
   version, GPU name and compute capability, or for an ahead-of-time RTX build the target compute
   capabilities, precision, profile, options) and reuse the plan on disk only when its sidecar
   matches and the plan deserializes (RTX without a GPU: when its sha256 matches the sidecar's);
   otherwise log why and rebuild.
2. A Q/DQ graph is linted first (`runtime.qdq_lint`): a file TensorRT refuses (UINT8, asymmetric zero
   points, INT32 bias DequantizeLinear: the x86 CPU form) fails with the lint's reasons before the
   parser sees it. Parse the ONNX into a strongly typed network (precision comes from the graph: an FP16-cast graph
   for FP16, Q/DQ for INT8). On TensorRT 10 only, ``Typing.AUTO`` falls back to a weakly typed
   network with BuilderFlag.FP16/INT8 when the strongly typed build fails or misses the precision;
   there is never an INT8 calibrator (TensorRT 11 removed them).
3. Configure: optimization profile for the dynamic batch (min:opt:max), workspace pool limit,
   builder optimization level, aux streams, DLA core with GPU fallback, version compatibility (for
   the lean runtime), detailed profiling verbosity (for the inspector), and a timing cache file
   that is read before and written back after the build.
4. Build, read the per-layer information (TensorRT 10/11: the engine inspector of the deserialized
   plan; TensorRT for RTX: the build's ``Layers:`` log, no GPU needed), and fail when the requested
   precision covers less than the threshold share of conv/GEMM layers (`runtime.trt.engine_layers`).
5. Write the plan atomically, the layer report beside it (``.layers.json`` and the ``.layers.md``
   table) and the JSON sidecar.

Every TensorRT call goes through `runtime.trt.compat.Trt`; this module has no version branches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.artifacts import atomic_write_bytes, atomic_write_json, sha256_file
from runtime.compare import Precision, as_precision
from runtime.errors import ArtifactError, ConfigError, PipelineError
from runtime.trt.cache import BatchProfile, EngineKey, GpuIdentity, decide, write_engine_sidecar
from runtime.trt.compat import Trt, TrtError, Typing, parse_flavour, parse_targets
from runtime.trt.engine_layers import (
    PrecisionCheck,
    PrecisionNotRealizedError,
    PrecisionReport,
    parse_build_log,
    parse_engine_information,
    precision_table_markdown,
    require_precision,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH = BatchProfile(1, 8, 32)
MAX_OPT_LEVEL = 5  # IBuilderConfig.builder_optimization_level accepts 0..5 (3 is TensorRT's default)


def default_engine_path(onnx: str | os.PathLike, precision: str | Precision) -> Path:
    """``model.onnx`` + fp16 -> ``model.fp16.engine``; ``model.int8.onnx`` + int8 -> ``model.int8.engine``."""
    onnx = Path(onnx)
    p = as_precision(precision).value
    stem = onnx.stem if onnx.stem.endswith(f".{p}") else f"{onnx.stem}.{p}"
    return onnx.with_name(f"{stem}.engine")


@dataclass(frozen=True)
class BuildConfig:
    """Everything `build_engine` needs; validated on construction (bad values raise `ConfigError`).

    Attributes:
        onnx: The ONNX model (its precision is the graph's: FP32, FP16-cast or Q/DQ INT8).
        precision: What the engine must realize: ``fp32``, ``fp16`` or ``int8``.
        out: Plan path (default `default_engine_path`).
        batch: Optimization profile of the dynamic batch axis.
        workspace_mib: Workspace memory-pool limit in MiB (None: TensorRT's default, the device memory).
        timing_cache: Timing cache file, read if present and written back after the build.
        opt_level: Builder optimization level 0..5 (None: TensorRT's default, 3).
        dla_core: DLA core for Jetson AGX/NX (GPU fallback enabled); None: GPU only.
        typing: `Typing` (AUTO: strongly typed; flags fallback on TensorRT 10 only).
        version_compatible: Build a version-compatible plan (loadable by the lean runtime).
        aux_streams: ``max_aux_streams`` (None: TensorRT's heuristic; MA-Net's parallel branches
            may gain from more, docs/models.md §5).
        min_precision_share: Threshold of the precision check (None: `DEFAULT_MIN_SHARE`).
        force: Rebuild even when a matching cached plan exists.
        flavour: ``tensorrt``, ``rtx`` or None/``auto`` (full TensorRT when importable, else RTX).
        targets: Compute capabilities an ahead-of-time (RTX) plan must run on, e.g. ``("8.6",
            "12.0")``; empty: the flavour's default (RTX: 8.0, 8.6, 8.9, 12.0).
    """

    onnx: Path
    precision: Precision
    out: Path | None = None
    batch: BatchProfile = DEFAULT_BATCH
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    opt_level: int | None = None
    dla_core: int | None = None
    typing: Typing = Typing.AUTO
    version_compatible: bool = False
    aux_streams: int | None = None
    min_precision_share: float | None = None
    force: bool = False
    flavour: str | None = None
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "onnx", Path(self.onnx))
        flavour = parse_flavour(self.flavour)
        object.__setattr__(self, "flavour", flavour.value if flavour else None)
        object.__setattr__(self, "targets", parse_targets(self.targets))
        object.__setattr__(self, "precision", as_precision(self.precision))
        if isinstance(self.batch, str):
            object.__setattr__(self, "batch", BatchProfile.parse(self.batch))
        try:
            object.__setattr__(self, "typing", Typing(getattr(self.typing, "value", self.typing)))
        except ValueError:
            raise ConfigError(f"unknown typing {self.typing!r}; valid: {[t.value for t in Typing]}") from None
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))
        if self.onnx.suffix.lower() != ".onnx":
            raise ConfigError(f"--onnx must be an .onnx file, got {self.onnx}")
        if not self.onnx.is_file():
            raise ConfigError(f"ONNX model not found: {self.onnx}; export it with `python -m export onnx` first")
        _check_int("workspace_mib", self.workspace_mib, 1)
        _check_int("opt_level", self.opt_level, 0, MAX_OPT_LEVEL)
        _check_int("dla_core", self.dla_core, 0)
        _check_int("aux_streams", self.aux_streams, 0)
        if self.min_precision_share is not None and not 0.0 <= float(self.min_precision_share) <= 1.0:
            raise ConfigError(f"min_precision_share must be in [0, 1], got {self.min_precision_share}")
        if self.out is not None and self.out.resolve() == self.onnx.resolve():
            raise ConfigError(f"--out {self.out} would overwrite the ONNX model")

    @property
    def engine_path(self) -> Path:
        return self.out if self.out is not None else default_engine_path(self.onnx, self.precision)

    def key_options(self) -> dict[str, Any]:
        """Build options that change the plan (part of the cache key). The timing cache is not:
        it only speeds tactic selection up."""
        return {
            "typing": self.typing.value,
            "workspace_mib": self.workspace_mib,
            "opt_level": self.opt_level,
            "dla_core": self.dla_core,
            "version_compatible": self.version_compatible,
            "aux_streams": self.aux_streams,
        }


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")


@dataclass(frozen=True)
class BuildResult:
    """What `build_engine` did.

    Attributes:
        engine: Plan path.
        key: The engine key.
        reused: True when a cached plan was reused.
        reason: Why it was reused or (re)built.
        build_s: Seconds spent building (0 when reused).
        typing: Typing mode that produced the plan.
        flags: Precision builder flags set (10.x weakly typed fallback only).
        precision_check: The realized-precision check (None when reused: see the sidecar).
    """

    engine: Path
    key: EngineKey
    reused: bool
    reason: str
    build_s: float = 0.0
    typing: str = ""
    flags: tuple[str, ...] = ()
    precision_check: PrecisionCheck | None = None
    attempts: tuple[str, ...] = field(default=())
    flavour: str = "tensorrt"
    targets: tuple[str, ...] = ()
    plan_bytes: int = 0

    def summary(self) -> str:
        if self.reused:
            return f"{self.engine}: reused ({self.reason})"
        check = self.precision_check.summary() if self.precision_check else "precision not checked"
        where = f", for compute capabilities {','.join(self.targets)}" if self.targets else ""
        return (
            f"{self.engine}: built in {self.build_s:.1f}s ({self.plan_bytes / 1e6:.1f} MB{where}), "
            f"{self.typing} typing; {check}"
        )


def current_gpu(cuda: Any = None) -> GpuIdentity:
    """Name and compute capability of the CUDA device (through `runtime.trt.cuda`)."""
    from runtime.trt.cuda import get_cuda

    api = cuda or get_cuda()
    try:
        dev = api.device()
    finally:
        if cuda is None:
            api.close()
    return GpuIdentity(dev.name, dev.compute_capability)


def engine_key(cfg: BuildConfig, trt: Trt, gpu: GpuIdentity | None, targets: str = "") -> EngineKey:
    """The key of ``cfg``'s plan; ``gpu`` None (and ``targets``) for an ahead-of-time build."""
    return EngineKey(
        onnx_sha256=sha256_file(cfg.onnx),
        tensorrt_version=str(trt.version),
        gpu_name=gpu.name if gpu else "",
        compute_capability=gpu.compute_capability if gpu else "",
        precision=cfg.precision.value,
        profile=str(cfg.batch),
        options=cfg.key_options(),
        flavour=trt.flavour.value,
        targets=targets,
    )


def lint_before_parse(onnx: Path) -> dict[str, Any] | None:
    """Lint a Q/DQ graph with `runtime.qdq_lint` before TensorRT's parser sees it.

    Returns:
        The lint summary (for the sidecar), or None when the file has no Q/DQ node or is not
        readable as ONNX (the parser then reports what is wrong with it).

    Raises:
        TrtError: the lint finds errors: TensorRT would refuse the graph (the x86 CPU form:
            UINT8, asymmetric zero points, INT32 bias DequantizeLinear) or build another precision.
    """
    import onnx as onnx_lib  # a core dependency

    from runtime.qdq_lint import lint_qdq

    try:
        model = onnx_lib.load(str(onnx), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - a malformed file is the parser's to report
        log.debug("Q/DQ lint skipped: %s does not load as ONNX (%s)", onnx, exc)
        return None
    if not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return None
    report = dataclasses.replace(lint_qdq(model), model=str(onnx))
    if not report.passed:
        first: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for f in report.errors:
            first.setdefault(f.code, f)
            counts[f.code] = counts.get(f.code, 0) + 1
        shown = "; ".join(f"{code} x{counts[code]} (e.g. [{f.node}]: {f.message})" for code, f in first.items())
        raise TrtError(
            f"{onnx} is not a TensorRT Q/DQ graph, so it is refused before TensorRT's parser: "
            f"{report.summary()}. Errors by kind: {shown}. This looks like the x86 CPU form (python -m quantize int8 "
            "--target cpu); build the engine from the TensorRT form (--target tensorrt, model.nncf.int8.onnx "
            "or model.ort.int8.onnx); `python -m quantize lint FILE` lists every finding"
        )
    return {
        "passed": True,
        "errors": 0,
        "warnings": len(report.warnings),
        "int8_ops": len(report.int8_ops),
        "float_ops": len(report.float_ops),
    }


def deserialize(trt: Trt, plan: bytes, *, version_compatible: bool = False, logger: Any = None) -> tuple[Any, Any]:
    """Deserialize ``plan``; returns ``(ICudaEngine, Runtime)`` (keep the runtime alive as long as the
    engine) or raises `TrtError` saying why."""
    runtime = trt.get("Runtime")(logger or trt.logger())
    if version_compatible:
        # A version-compatible plan embeds the lean runtime's host code; the full runtime runs it
        # only when allowed to.
        trt.write(runtime, "Runtime.engine_host_code_allowed", True)
    try:
        engine = trt.call(runtime, "Runtime.deserialize_cuda_engine", plan)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises plain RuntimeError/TypeError
        raise TrtError(f"deserialize_cuda_engine raised {type(exc).__name__}: {exc}") from exc
    if engine is None:
        raise TrtError(
            "deserialize_cuda_engine returned None (plan from another TensorRT version or GPU, "
            "or a truncated file; see the TensorRT log above)"
        )
    return engine, runtime


def build_engine(cfg: BuildConfig, *, trt: Trt | None = None, gpu: GpuIdentity | None = None) -> BuildResult:
    """Build (or reuse) the plan described by ``cfg``. See the module docstring for the steps.

    Args:
        cfg: The build configuration.
        trt: TensorRT wrapper (default: `Trt.load(flavour=cfg.flavour)`).
        gpu: Device identity for the key (default: the current CUDA device; unused for an
            ahead-of-time RTX build, which needs no GPU).

    Raises:
        MissingDependencyError: TensorRT or CUDA Python is missing.
        ConfigError: options TensorRT cannot honour (DLA core absent, flags typing on 11...).
        TrtError: parsing or building failed; `PrecisionNotRealizedError` when the engine misses
            the requested precision (nothing is written at ``cfg.engine_path`` then).
    """
    trt = trt or Trt.load(flavour=cfg.flavour)
    trt.check_build_options(dla_core=cfg.dla_core, version_compatible=cfg.version_compatible)
    targets, default_targets = trt.resolve_targets(cfg.targets)
    if trt.aot:
        gpu = None  # built ahead of time: the targets, not the machine's GPU, decide the plan
        target_label = "default" if default_targets else ",".join(targets)
    else:
        gpu = gpu or current_gpu()
        target_label = ""
    out = cfg.engine_path
    key = engine_key(cfg, trt, gpu, target_label)
    decision = decide(out, key)
    if decision.reuse and not cfg.force and trt.aot:
        # No GPU needed or assumed: the plan's sha256 matched its sidecar in `decide`.
        log.info("%s: %s", out, decision.reason)
        return BuildResult(
            engine=out, key=key, reused=True, reason=decision.reason, flavour=trt.flavour.value, targets=targets
        )
    if decision.reuse and not cfg.force:
        try:
            deserialize(trt, out.read_bytes(), version_compatible=cfg.version_compatible)
        except TrtError as exc:
            log.warning("rebuilding %s: the cached plan failed to deserialize (%s)", out, exc)
            reason = f"cached plan failed to deserialize: {exc}"
        else:
            log.info("%s: %s", out, decision.reason)
            return BuildResult(engine=out, key=key, reused=True, reason=decision.reason, flavour=trt.flavour.value)
    else:
        reason = "forced rebuild" if (decision.reuse and cfg.force) else decision.reason
    where = (
        f"ahead of time for compute capabilities {', '.join(targets)}{' (default)' if default_targets else ''}"
        if gpu is None
        else f"{gpu.name} {gpu.compute_capability}"
    )
    log.info("building %s (%s, %s): %s", out, trt.label, where, reason)
    lint = lint_before_parse(cfg.onnx) if cfg.precision.value == "int8" else None

    attempts: list[str] = []
    typings = trt.typings_to_try(cfg.typing)
    for i, typing in enumerate(typings):
        last = i == len(typings) - 1
        try:
            plan, report, check, flags, seconds = _build_once(cfg, trt, typing, targets if not default_targets else ())
        except (TrtError, PrecisionNotRealizedError) as exc:
            attempts.append(f"{typing.value}: {exc}")
            if last:
                if len(attempts) > 1:
                    raise type(exc)(*_error_args(exc, attempts)) from exc
                raise
            log.warning(
                "strongly typed build did not give %s (%s); TensorRT %s: retrying weakly typed with precision flags",
                cfg.precision.value,
                exc,
                trt.version,
            )
            continue
        atomic_write_bytes(out, plan)
        _write_layer_reports(out, report, check, cfg)
        write_engine_sidecar(
            out,
            key,
            {
                "onnx": str(cfg.onnx),
                "flavour": trt.flavour.value,
                "tensorrt": trt.label,
                "tensorrt_branch": trt.branch,
                "ahead_of_time": trt.aot,
                "target_compute_capabilities": list(targets),
                "targets_default": default_targets,
                "plan_bytes": len(plan),
                "layers_json": layers_report_path(out).name,
                "layers_md": layers_markdown_path(out).name,
                "qdq_lint": lint,
                "typing_used": typing.value,
                "precision_flags": flags,
                "version_compatible": cfg.version_compatible,
                "build_s": round(seconds, 3),
                "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "reason": reason,
                "precision_check": check.to_dict(),
                "timing_cache": str(cfg.timing_cache) if (cfg.timing_cache and trt.uses_timing_cache) else None,
                "attempts": attempts,
            },
        )
        log.info("%s: %s", out, check.summary())
        return BuildResult(
            engine=out,
            key=key,
            reused=False,
            reason=reason,
            build_s=seconds,
            typing=typing.value,
            flags=tuple(flags),
            precision_check=check,
            attempts=tuple(attempts),
            flavour=trt.flavour.value,
            targets=targets,
            plan_bytes=len(plan),
        )
    raise TrtError("no typing mode to try")  # pragma: no cover - typings_to_try is never empty


def _error_args(exc: Exception, attempts: list[str]) -> tuple:
    message = "every typing mode failed: " + " | ".join(attempts)
    if isinstance(exc, PrecisionNotRealizedError):
        return (message, exc.check)
    return (message,)


def layers_report_path(plan: str | os.PathLike) -> Path:
    """``model.int8.engine`` -> ``model.int8.engine.layers.json`` (the per-layer precision report)."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".layers.json")


def layers_markdown_path(plan: str | os.PathLike) -> Path:
    """``model.int8.engine`` -> ``model.int8.engine.layers.md`` (the per-layer precision table)."""
    plan = Path(plan)
    return plan.with_name(plan.name + ".layers.md")


def _write_layer_reports(plan: Path, report: PrecisionReport, check: PrecisionCheck | None, cfg: BuildConfig) -> None:
    body = report.to_dict()
    if check is not None:
        body["precision_check"] = check.to_dict()
    atomic_write_json(layers_report_path(plan), body)
    from runtime.artifacts import atomic_write_text

    title = f"{plan.name}: realized precision per layer ({cfg.onnx.name}, requested {cfg.precision.value})"
    atomic_write_text(layers_markdown_path(plan), precision_table_markdown(report, check, title=title))


def _serialize(
    cfg: BuildConfig, trt: Trt, typing: Typing, targets: tuple[str, ...], logger: Any
) -> tuple[bytes, list[str], float]:
    """Parse, configure and build; returns (plan bytes, precision flags set, build seconds).

    Every TensorRT object is released here, in reverse order of creation, however this ends, and a
    `PipelineError` leaves without the frames that held them: a builder freed later from a kept
    traceback (by the garbage collector, possibly inside another TensorRT call that logs) can
    deadlock TensorRT for RTX 1.7 on its global mutex (seen in the test suite).
    """
    builder = network = parser = config = plan = err = None
    failure: BaseException | None = None
    try:
        builder = trt.get("Builder")(logger)
        network = trt.call(builder, "Builder.create_network", trt.network_flags(typing))
        parser = trt.get("OnnxParser")(network, logger)
        if not trt.call(parser, "OnnxParser.parse_from_file", str(cfg.onnx)):
            errors = []
            for i in range(int(trt.read(parser, "OnnxParser.num_errors"))):
                err = trt.call(parser, "OnnxParser.get_error", i)
                node, desc = (
                    trt.call(err, "ParserError.node_name"),
                    str(trt.call(err, "ParserError.desc")).strip().rstrip("."),
                )
                errors.append(f"{node}: {desc}" if node else desc)
            raise TrtError(
                f"{trt.label}'s ONNX parser rejected {cfg.onnx}: {'; '.join(errors) or 'no detail'}. "
                "Run `python -m export check` on it (op support, dynamic shapes, INT64 traps)"
            )

        config = trt.call(builder, "Builder.create_builder_config")
        if cfg.workspace_mib is not None:
            trt.call(
                config,
                "IBuilderConfig.set_memory_pool_limit",
                trt.get("MemoryPoolType.WORKSPACE"),
                cfg.workspace_mib << 20,
            )
        if cfg.opt_level is not None:
            trt.write(config, "IBuilderConfig.builder_optimization_level", cfg.opt_level)
        if cfg.aux_streams is not None:
            trt.write(config, "IBuilderConfig.max_aux_streams", cfg.aux_streams)
        trt.write(config, "IBuilderConfig.profiling_verbosity", trt.get("ProfilingVerbosity.DETAILED"))
        flags = trt.apply_precision_flags(config, cfg.precision.value, typing)
        if cfg.version_compatible:
            trt.call(config, "IBuilderConfig.set_flag", trt.get("BuilderFlag.VERSION_COMPATIBLE"))
        if cfg.dla_core is not None:
            available = int(trt.read(builder, "Builder.num_DLA_cores"))
            if cfg.dla_core >= available:
                raise ConfigError(
                    f"--dla-core {cfg.dla_core} requested but this device has {available} DLA core(s) "
                    "(Jetson AGX Orin has 2, Orin NX 1 or 2, Orin Nano and desktop GPUs 0)"
                )
            trt.write(config, "IBuilderConfig.default_device_type", trt.get("DeviceType.DLA"))
            trt.write(config, "IBuilderConfig.DLA_core", cfg.dla_core)
            # Layers DLA cannot run (and batch sizes it cannot take) fall back to the GPU instead of failing.
            trt.call(config, "IBuilderConfig.set_flag", trt.get("BuilderFlag.GPU_FALLBACK"))
        trt.set_targets(config, targets)
        _add_batch_profile(cfg, trt, builder, network, config)
        _load_timing_cache(cfg, trt, config)

        start = time.perf_counter()
        plan = trt.call(builder, "Builder.build_serialized_network", network, config)
        seconds = time.perf_counter() - start
        if plan is None:
            errors = [e.strip() for e in getattr(logger, "errors", []) if e.strip()]
            why = ("TensorRT said: " + " | ".join(errors[-3:])) if errors else "the TensorRT log above says why"
            hint = (
                f" (targets {', '.join(targets)}: an op may have no kernel for one of them, e.g. Turing 7.5 has no "
                "FP32 GEMM)"
                if targets
                else ""
            )
            raise TrtError(
                f"{trt.label} could not build an engine from {cfg.onnx} ({typing.value} typing){hint}; {why}"
            )
        _save_timing_cache(cfg, trt, config)
        return bytes(memoryview(plan)), flags, seconds
    except PipelineError as exc:
        failure = exc.with_traceback(None)
    finally:
        err = plan = parser = config = None
        network = None
        builder = None
    raise failure


def _build_once(
    cfg: BuildConfig, trt: Trt, typing: Typing, targets: tuple[str, ...] = ()
) -> tuple[bytes, PrecisionReport, PrecisionCheck, list[str], float]:
    logger = trt.logger()
    plan_bytes, flags, seconds = _serialize(cfg, trt, typing, targets, logger)

    if trt.layers_from_build_log:
        report = parse_build_log(getattr(logger, "layer_log", []))
    else:
        engine, _runtime = deserialize(trt, plan_bytes, version_compatible=cfg.version_compatible, logger=logger)
        inspector = trt.call(engine, "ICudaEngine.create_engine_inspector")
        info = trt.call(inspector, "EngineInspector.get_engine_information", trt.get("LayerInformationFormat.JSON"))
        engine = inspector = _runtime = None  # released before anything can raise (see `_serialize`)
        report = parse_engine_information(info)
    try:
        check = require_precision(report, cfg.precision.value, cfg.min_precision_share)
    except PrecisionNotRealizedError as exc:
        # Keep the evidence even though no plan is written.
        _write_layer_reports(cfg.engine_path, report, exc.check, cfg)
        raise
    return plan_bytes, report, check, flags, seconds


def _add_batch_profile(cfg: BuildConfig, trt: Trt, builder: Any, network: Any, config: Any) -> None:
    profile = trt.call(builder, "Builder.create_optimization_profile")
    dynamic = False
    for i in range(int(trt.read(network, "INetworkDefinition.num_inputs"))):
        tensor = trt.call(network, "INetworkDefinition.get_input", i)
        name = trt.read(tensor, "ITensor.name")
        shape = tuple(int(d) for d in trt.read(tensor, "ITensor.shape"))
        if any(d < 0 for d in shape[1:]):
            raise TrtError(
                f"input {name!r} has dynamic non-batch dimensions {shape}; only the batch axis may be "
                "dynamic: re-export with a fixed image size"
            )
        if shape and shape[0] < 0:
            dynamic = True
            rest = shape[1:]
            trt.call(
                profile,
                "IOptimizationProfile.set_shape",
                name,
                (cfg.batch.min, *rest),
                (cfg.batch.opt, *rest),
                (cfg.batch.max, *rest),
            )
        elif shape and (cfg.batch.min, cfg.batch.max) != (shape[0], shape[0]):
            raise ConfigError(
                f"input {name!r} has a fixed batch of {shape[0]} but --batch is {cfg.batch}; use --batch "
                f"{shape[0]} or re-export with `python -m export onnx --batch dynamic`"
            )
    if dynamic:
        trt.call(config, "IBuilderConfig.add_optimization_profile", profile)


def _load_timing_cache(cfg: BuildConfig, trt: Trt, config: Any) -> None:
    if cfg.timing_cache is None:
        return
    if not trt.uses_timing_cache:
        log.info("timing cache %s not used: %s ignores timing caches", cfg.timing_cache, trt.label)
        return
    data = b""
    if cfg.timing_cache.is_file():
        data = cfg.timing_cache.read_bytes()
    try:
        cache = trt.call(config, "IBuilderConfig.create_timing_cache", data)
    except Exception as exc:  # noqa: BLE001 - a corrupt cache must not stop the build
        log.warning("timing cache %s unreadable (%s); starting an empty one", cfg.timing_cache, exc)
        cache = trt.call(config, "IBuilderConfig.create_timing_cache", b"")
    # ignore_mismatch=False: a cache from another GPU/TensorRT is rejected, not used.
    if not trt.call(config, "IBuilderConfig.set_timing_cache", cache, False):
        log.warning("timing cache %s does not fit this GPU/TensorRT; building without it", cfg.timing_cache)
    else:
        log.info("timing cache %s: %s", cfg.timing_cache, f"{len(data)} bytes reused" if data else "new")


def _save_timing_cache(cfg: BuildConfig, trt: Trt, config: Any) -> None:
    if cfg.timing_cache is None or not trt.uses_timing_cache:
        return
    cache = trt.call(config, "IBuilderConfig.get_timing_cache")
    if cache is None:
        return
    data = bytes(memoryview(trt.call(cache, "ITimingCache.serialize")))
    atomic_write_bytes(cfg.timing_cache, data)


def read_layers_report(plan: str | os.PathLike) -> Mapping[str, Any]:
    """The ``.layers.json`` written beside a plan."""
    from runtime.artifacts import read_json

    path = layers_report_path(plan)
    if not path.is_file():
        raise ArtifactError(f"{path}: no layer report (the plan was not built by runtime.trt.build)")
    return read_json(path)
