"""OpenVINO CPU backend (``openvino``): FP32 ONNX, OpenVINO's own default precision, and Q/DQ INT8 ONNX.

    with get_backend("openvino")("model.int8.onnx", threads=1) as be:
        logits = be.infer({"input": batch})["logits"]

OpenVINO reads ONNX files directly, Q/DQ INT8 files included (it fuses the QuantizeLinear /
DequantizeLinear pairs into INT8 kernels itself), so the project's files run unchanged.

Two settings are always explicit and recorded in `describe()`, because OpenVINO's defaults make
numbers from a shared machine hard to read (docs/measured-facts.md, section 6.1):

- ``threads`` -> ``INFERENCE_NUM_THREADS`` (default ``OMP_NUM_THREADS`` or 1, like the ORT backend),
  with one stream and the LATENCY hint.
- the inference precision. OpenVINO runs float layers in bf16 on CPUs that have it (AVX-512 BF16,
  AMX), which changes the numbers a parity row compares. `describe()` reads the compiled model's
  ``INFERENCE_PRECISION_HINT`` and says which it chose; ``precision="f32"`` forces FP32
  (``"bf16"``/``"f16"`` ask for those; ``"default"`` leaves OpenVINO's choice).

- the shapes. A model with a dynamic batch is compiled once per batch size it is called with
  (reshaped to that static batch, up to 8 sizes kept), as a deployment compiles it for the batch it
  runs: with a dynamic batch the project's INT8 files ran 8-20 % slower on OpenVINO (the demo
  model and MA-Net, BENCHMARKS.md). ``static_batch=False`` keeps the one dynamic compilation.

``profile=True`` turns on OpenVINO's per-layer counters (``PERF_COUNT``); `profile_records()` then
returns the last inference's per-layer times (runtime/profile.py makes the tables).

Install: ``pip install '.[openvino]'``. No torch here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import ArtifactError, ConfigError, require

log = logging.getLogger(__name__)

PRECISIONS = ("default", "f32", "bf16", "f16")
_OPTIONS = ("threads", "precision", "device", "profile", "static_batch")
_MAX_SHAPES = 8  # compiled static-batch models kept per backend


def _ov_precision(value: Any) -> str:
    """OpenVINO's element type (or its string) -> a short name: ``f32``, ``bf16``, ``f16``..."""
    text = str(getattr(value, "get_type_name", lambda: value)())
    return {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}.get(text, text)


class OpenVinoBackend(Backend):
    """OpenVINO compiled model on the CPU.

    Options:
        threads: ``INFERENCE_NUM_THREADS`` (default ``OMP_NUM_THREADS`` or 1).
        precision: ``default`` (OpenVINO's choice: bf16 on CPUs that have it), ``f32``, ``bf16``, ``f16``.
        device: OpenVINO device (default ``CPU``).
        profile: Enable per-layer counters (``PERF_COUNT``) for `profile_records()`.
    """

    name: ClassVar[str] = "openvino"
    extra: ClassVar[str] = "openvino"
    default_sweep: ClassVar[bool] = False  # opt-in: name it in --backends (a second CPU runtime doubles a sweep)

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path, **options)
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown openvino backend option(s) {sorted(unknown)}; valid: {', '.join(_OPTIONS)}")
        from runtime.backends.ort import default_threads

        threads = options.get("threads")
        self.threads = default_threads() if threads in (None, 0) else int(threads)
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}")
        self.precision = str(options.get("precision") or "default").lower()
        if self.precision not in PRECISIONS:
            raise ConfigError(f"openvino precision must be one of {PRECISIONS}, got {self.precision!r}")
        self.device = str(options.get("device") or "CPU")
        self.profile = bool(options.get("profile", False))
        self.static_batch = bool(options.get("static_batch", True))
        self.compiled = None
        self.request = None
        self._core = None
        self._model = None
        self._by_batch: dict[int, tuple[Any, Any, list[Any]]] = {}  # batch -> (compiled, request, output ports)
        self._per_batch = False
        self.inference_precision = ""
        self._ports: list[Any] = []

    @classmethod
    def _probe(cls) -> str | None:
        try:
            import openvino  # noqa: F401 - imported for its side effect (registration) or to probe availability
        except ImportError as exc:
            return f"openvino is not installed ({exc}); pip install '.[openvino]'"
        return None

    def config(self) -> dict[str, Any]:
        """The ``compile_model`` properties this backend sets."""
        cfg: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if self.precision != "default":
            cfg["INFERENCE_PRECISION_HINT"] = self.precision
        if self.profile:
            cfg["PERF_COUNT"] = True
        return cfg

    def _load(self) -> None:
        ov = require("openvino", "openvino")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError/its own types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise ArtifactError(
                f"{self.path}: OpenVINO cannot read the model ({type(exc).__name__}: {first}); "
                "check the file is a complete ONNX model (re-export or re-quantize it)"
            ) from exc
        self._core, self._model = core, model
        self.compiled = self._compile(model)
        self.request = self.compiled.create_infer_request()
        self.inference_precision = _ov_precision(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        specs = []
        for port in self.compiled.inputs:
            dims = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
            specs.append(TensorSpec(port.get_any_name(), port.get_element_type().to_dtype(), dims))
        self._input_specs = tuple(specs)
        # Decided once here, not per call: whether calls go to a model compiled for their batch size.
        self._per_batch = self.static_batch and any(spec.is_dynamic(0) for spec in specs)
        self._ports = list(self.compiled.outputs)
        self._output_names = tuple(p.get_any_name() for p in self._ports)
        log.info(
            "openvino %s: %d thread(s), inference precision %s (%s)",
            self.path.name,
            self.threads,
            self.inference_precision,
            "forced" if self.precision != "default" else "OpenVINO's choice",
        )

    def _compile(self, model) -> Any:
        try:
            return self._core.compile_model(model, self.device, self.config())
        except Exception as exc:  # noqa: BLE001 - any failure of an optional component reads as 'unavailable', not a crash
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise ArtifactError(
                f"{self.path}: OpenVINO cannot compile the model for {self.device} "
                f"with {self.config()} ({type(exc).__name__}: {first})"
            ) from exc

    def _for_batch(self, batch: int) -> tuple[Any, list[Any]]:
        """(infer request, output ports) of the model compiled for a static ``batch`` (compiled on first use)."""
        hit = self._by_batch.get(batch)
        if hit is None:
            import openvino as ov

            model = self._model.clone()
            model.reshape(
                {
                    port.get_any_name(): ov.PartialShape([batch, *list(port.get_partial_shape())[1:]])
                    for port in model.inputs
                    if port.get_partial_shape().rank.is_static and port.get_partial_shape()[0].is_dynamic
                }
            )
            compiled = self._compile(model)
            if len(self._by_batch) >= _MAX_SHAPES:
                self._by_batch.pop(next(iter(self._by_batch)))
            hit = self._by_batch[batch] = (compiled, compiled.create_infer_request(), list(compiled.outputs))
        self.request = hit[1]  # profile_records reads the last request used
        return hit[1], hit[2]

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request, ports = self.request, self._ports
        if self._per_batch:
            request, ports = self._for_batch(int(next(iter(feeds.values())).shape[0]))
        res = request.infer(dict(feeds))
        return {name: np.asarray(res[port]) for name, port in zip(self._output_names, ports)}

    def profile_records(self) -> list[dict[str, Any]]:
        """Per-layer times of the last inference (needs ``profile=True``): name, type, exec type, status, ms."""
        if not self.profile:
            raise ConfigError("openvino per-layer times need the backend created with profile=True")
        self._require_loaded()
        out = []
        for info in self.request.get_profiling_info():
            out.append(
                {
                    "name": info.node_name,
                    "op_type": info.node_type,
                    "exec_type": info.exec_type,
                    "status": str(info.status).rsplit(".", 1)[-1],
                    "ms": info.real_time.total_seconds() * 1e3,
                }
            )
        return out

    def _close(self) -> None:
        self.request = None
        self.compiled = None
        self._by_batch.clear()
        self._model = self._core = None

    def describe(self) -> dict[str, Any]:
        import openvino as ov

        return {
            "backend": self.name,
            "path": str(self.path),
            "device": self.device,
            "threads": self.threads,
            "streams": 1,
            "hint": "LATENCY",
            "shapes": "compiled per batch size (static)" if self.static_batch else "as read (dynamic batch)",
            "precision_requested": self.precision,
            "inference_precision": self.inference_precision,
            "precision_note": (
                f"OpenVINO chose {self.inference_precision} for float layers"
                if self.precision == "default"
                else f"forced {self.precision}"
            ),
            "openvino": ov.__version__.split("-")[0],
        }
