"""ONNX Runtime backends: CPU (``ort``), CUDA EP (``ort-cuda``) and TensorRT EP (``ort-trt``).

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

_OPT_LEVELS = ("disable", "basic", "extended", "all")


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set to a positive integer, else 1 (machines here are shared)."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    except ValueError:
        n = 0
    return n if n > 0 else 1


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
        if self.optimization not in _OPT_LEVELS:
            raise ConfigError(f"optimization must be one of {_OPT_LEVELS}, got {self.optimization!r}")
        self.session = None
        self._providers_used: list[str] = []

    @classmethod
    def _probe(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime"
        want = PROVIDERS[cls.default_provider][0]
        have = _available_providers()
        if want not in have:
            return f"{want} is not in this onnxruntime build (available: {have}); install onnxruntime-gpu"
        return None

    def _load(self) -> None:
        ort = require("onnxruntime", "runtime")
        want = list(PROVIDERS[self.provider])
        if want[0] not in ort.get_available_providers():
            raise MissingDependencyError(
                f"ONNX Runtime provider {want[0]} is not available (have {ort.get_available_providers()}); "
                "install onnxruntime-gpu with matching CUDA/TensorRT libraries, or use provider='cpu'"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.optimization]
        so.log_severity_level = 3  # warnings from the graph optimiser are noise here
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers: list[Any] = list(want)
        if self.options.get("provider_options"):
            providers[0] = (want[0], dict(self.options["provider_options"]))
        try:
            sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph, NotImplemented...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise ArtifactError(
                f"{self.path}: onnxruntime cannot load the model ({type(exc).__name__}: {first}); "
                "check the file is a complete ONNX model (re-export or re-quantize it)"
            ) from exc
        used = list(sess.get_providers())
        if used[0] != want[0]:
            raise MissingDependencyError(
                f"{self.path}: asked for {want[0]} but onnxruntime fell back to {used} "
                "(CUDA/TensorRT libraries missing or mismatched); fix the GPU install or use provider='cpu'"
            )
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
