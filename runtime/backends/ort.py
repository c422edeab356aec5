"""ONNX Runtime backends: CPU (``ort``), CUDA EP (``ort-cuda``) and TensorRT EP (``ort-trt``).

`make_session` is the project's one onnxruntime session factory: the backends, export's
preflight and rewrite checks, quantization and the TensorRT tools all get their sessions from it
(tests/runtime/test_session_factory.py keeps it so).

The execution provider is an option (``provider="cpu"|"cuda"|"tensorrt"``); the registry also
lists one name per provider so a parity sweep can try each where it is installed. The intra-op
thread count is always set explicitly (``threads``; default ``OMP_NUM_THREADS`` or 1) and
recorded in `describe()`, because ORT's own default (all physical cores, spinning) makes numbers
from a shared machine meaningless.

A provider ORT silently falls back from (CUDA libraries missing at session creation) is detected
by comparing the session's providers with the requested one, and raised: a benchmark labelled
"cuda" that ran on the CPU is worse than no benchmark.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import ArtifactError, ConfigError, MissingDependencyError, require

log = logging.getLogger(__name__)

# ONNX Runtime type strings -> numpy dtypes.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}

PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

OPT_LEVELS = ("disable", "basic", "extended", "all")


def env_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else 0 (onnxruntime's own default)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    except ValueError:
        n = 0
    return max(n, 0)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else 1 (machines here are shared)."""
    return env_threads() or 1


def make_session(
    model: str | os.PathLike | bytes | Any,
    *,
    threads: int | None = None,
    optimization: str = "all",
    provider: str = "cpu",
    provider_options: Mapping[str, Any] | None = None,
    spinning: bool = True,
    profile_prefix: str | None = None,
    optimized_model_path: str | os.PathLike | None = None,
    log_severity: int = 3,
):
    """An onnxruntime ``InferenceSession``: the one place the project makes one.

    Args:
        model: A path, a ``ModelProto`` or its serialized bytes.
        threads: Intra-op threads, with one inter-op thread. None: `env_threads()`; 0: onnxruntime's
            own default (all physical cores), thread options left unset.
        optimization: Graph optimisation level: ``disable``, ``basic``, ``extended`` or ``all``
            (onnxruntime's default). ``disable`` runs the graph as written (comparisons of two graphs).
        provider: ``cpu``, ``cuda`` or ``tensorrt`` (`PROVIDERS`, with their fallbacks listed).
        provider_options: Extra options for the first provider (e.g. ``{"device_id": 0}``).
        spinning: Let idle intra-op threads spin-wait (onnxruntime's default); False for several
            sessions used in turn on few cores.
        profile_prefix: Write an onnxruntime profile with this file prefix.
        optimized_model_path: Save the graph as onnxruntime optimised it (what its kernels run).
        log_severity: onnxruntime's own log level (3: errors only; 2: its default, warnings too).

    Raises:
        MissingDependencyError: onnxruntime or the provider is missing, or onnxruntime fell back
            from the provider asked for to another one.
        ArtifactError: onnxruntime cannot load the model.
        ConfigError: an unknown provider or optimisation level.
    """
    ort = require("onnxruntime", "runtime")
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown ONNX Runtime provider {provider!r}; valid: {sorted(PROVIDERS)}")
    if optimization not in OPT_LEVELS:
        raise ConfigError(f"optimization must be one of {OPT_LEVELS}, got {optimization!r}")
    want = list(PROVIDERS[provider])
    if want[0] not in ort.get_available_providers():
        raise MissingDependencyError(
            f"ONNX Runtime provider {want[0]} is not available (have {ort.get_available_providers()}); "
            "install onnxruntime-gpu with matching CUDA/TensorRT libraries, or use provider='cpu'"
        )
    so = ort.SessionOptions()
    n = env_threads() if threads is None else int(threads)
    if n > 0:
        so.intra_op_num_threads = n
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    so.log_severity_level = log_severity
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if optimized_model_path:
        so.optimized_model_filepath = str(optimized_model_path)
    providers: list[Any] = list(want)
    if provider_options:
        providers[0] = (want[0], dict(provider_options))
    if isinstance(model, (str, os.PathLike)):
        src, label, fix = (
            str(model),
            str(model),
            "check the file is a complete ONNX model (re-export or re-quantize it)",
        )
    else:
        src = model if isinstance(model, bytes) else model.SerializeToString()
        label, fix = "in-memory model", "the graph is not one onnxruntime accepts"
    try:
        sess = ort.InferenceSession(src, so, providers=providers)
    except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph, NotImplemented...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ArtifactError(
            f"{label}: onnxruntime cannot load the model ({type(exc).__name__}: {first}); {fix}"
        ) from exc
    used = list(sess.get_providers())
    if used[0] != want[0]:
        raise MissingDependencyError(
            f"{label}: asked for {want[0]} but onnxruntime fell back to {used} "
            "(CUDA/TensorRT libraries missing or mismatched); fix the GPU install or use provider='cpu'"
        )
    return sess


def predict(session, x: np.ndarray, *, batch: int = 64) -> np.ndarray:
    """First output of an onnxruntime ``session`` on ``x`` (first input), in batches, as float32."""
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def _available_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OrtBackend(Backend):
    """ONNX Runtime inference session.

    Options:
        provider: ``cpu`` (default for ``ort``), ``cuda`` or ``tensorrt``.
        threads: Intra-op threads (default `default_threads()`); inter-op is 1 (sequential).
        optimization: Graph optimisation level: ``disable``, ``basic``, ``extended`` or ``all``.
        provider_options: Extra options for the first provider (e.g. ``{"device_id": 0}``).
        spinning: Let idle intra-op threads spin-wait (ORT's default, True); False for several
            sessions used in turn on few cores.
    """

    name: ClassVar[str] = "ort"
    extra: ClassVar[str] = ""  # onnxruntime is a core dependency
    default_provider: ClassVar[str] = "cpu"

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path, **options)
        unknown = set(options) - {"provider", "threads", "optimization", "provider_options", "spinning"}
        if unknown:
            raise ConfigError(
                f"unknown ort backend option(s) {sorted(unknown)}; valid: provider, threads, optimization, provider_options, spinning"
            )
        self.provider = str(options.get("provider", self.default_provider))
        if self.provider not in PROVIDERS:
            raise ConfigError(f"unknown ONNX Runtime provider {self.provider!r}; valid: {sorted(PROVIDERS)}")
        threads = options.get("threads")
        self.threads = default_threads() if threads in (None, 0) else int(threads)
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        # Intra-op threads spin-wait between calls by default. Off: several sessions used in turn
        # (the detector's three networks + the classifier) stop stealing each other's cores
        # (measured 156 -> 40 ms per 640x480 frame at 2 threads, BENCHMARKS.md). On (the default)
        # keeps a lone session's latency lowest.
        self.spinning = bool(options.get("spinning", True))
        self.optimization = str(options.get("optimization", "all"))
        if self.optimization not in OPT_LEVELS:
            raise ConfigError(f"optimization must be one of {OPT_LEVELS}, got {self.optimization!r}")
        self.session = None
        self._providers_used: list[str] = []

    @classmethod
    def _probe(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401 - imported for its side effect (registration) or to probe availability
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime"
        want = PROVIDERS[cls.default_provider][0]
        have = _available_providers()
        if want not in have:
            return f"{want} is not in this onnxruntime build (available: {have}); install onnxruntime-gpu"
        return None

    def _load(self) -> None:
        sess = make_session(
            self.path,
            threads=self.threads,
            optimization=self.optimization,
            provider=self.provider,
            provider_options=self.options.get("provider_options"),
            spinning=self.spinning,
        )
        used = list(sess.get_providers())
        self.session = sess
        self._providers_used = used
        self._input_specs = tuple(
            TensorSpec(i.name, _ORT_DTYPES.get(i.type, np.float32), tuple(i.shape)) for i in sess.get_inputs()
        )
        unknown = [i.type for i in sess.get_inputs() if i.type not in _ORT_DTYPES]
        if unknown:
            raise ArtifactError(f"{self.path}: unsupported input type(s) {unknown}")
        self._output_names = tuple(o.name for o in sess.get_outputs())
        self._run_names = list(self._output_names)  # built once: infer() is on the latency path

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self._run_names, feeds if type(feeds) is dict else dict(feeds))
        return dict(zip(self._output_names, outs))

    def _close(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.name,
            "path": str(self.path),
            "provider": self.provider,
            "providers_used": list(self._providers_used),
            "threads": self.threads,
            "spinning": self.spinning,
            "inter_op_threads": 1,
            "optimization": self.optimization,
            "onnxruntime": ort.__version__,
        }


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime with the CUDA execution provider."""

    name: ClassVar[str] = "ort-cuda"
    default_provider: ClassVar[str] = "cuda"


class OrtTensorrtBackend(OrtBackend):
    """ONNX Runtime with the TensorRT execution provider."""

    name: ClassVar[str] = "ort-trt"
    default_provider: ClassVar[str] = "tensorrt"
