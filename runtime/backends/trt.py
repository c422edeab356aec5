"""TensorRT backend: a plan (or an ONNX file built on the spot) run through named tensors.

    with TrtBackend("runs/x/model.int8.engine") as b:            # or the .onnx, with precision=...
        logits = b.infer({"input": batch})["logits"]

- ``load()`` refuses a plan whose sidecar says another TensorRT version (unless version-compatible)
  or another GPU built it (never load blindly); given an ``.onnx`` it builds or reuses the engine
  through `runtime.trt.build.build_engine` first.
- Memory: pinned host buffers and device buffers sized for the profile's largest batch, one
  non-blocking stream, CUDA events for device timing, all through `runtime.trt.cuda` (cuda-python
  or pycuda, whichever is installed, or ``cuda="pycuda"``).
- Execution: ``set_input_shape`` per call, ``set_tensor_address`` once per buffer,
  ``execute_async_v3`` on the stream; with ``cuda_graph=True`` the enqueue is captured once per
  input shape and replayed as a CUDA graph.
- ``flavour="rtx"`` (or a plan whose sidecar says TensorRT for RTX) loads with ``tensorrt_rtx``;
  such a plan was built ahead of time for target compute capabilities and loads only on a GPU
  of one of them (the sidecar's ``target_compute_capabilities``).
- ``lean=True`` loads with ``tensorrt_lean`` (a device with only the lean runtime); the plan must
  have been built version-compatible (``python -m runtime build --version-compatible``).
- ``bench_fn(batch)`` returns a callable timing one enqueue with CUDA events (device ms).

Options (constructor keywords): precision, batch ("1:8:32"), build (dict of other
`BuildConfig` fields), cuda, device, lean, flavour, cuda_graph, verify (default True).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import ArtifactError, ConfigError, DataError, EngineError

log = logging.getLogger(__name__)


class TrtBackend(Backend):
    """TensorRT engine runner (see the module docstring)."""

    name = "trt"
    extra = "trt"

    @classmethod
    def _probe(cls) -> str | None:
        from runtime.trt.compat import tensorrt_unavailable_reason
        from runtime.trt.cuda import cuda_unavailable_reason

        reasons = [r for r in (tensorrt_unavailable_reason(), cuda_unavailable_reason()) if r]
        return "; ".join(reasons) or None

    # ---- load -----------------------------------------------------------------------------------
    def _load(self) -> None:
        from runtime.trt.compat import Trt
        from runtime.trt.cuda import get_cuda

        opts = self.options
        self.trt = Trt.load(lean=bool(opts.get("lean", False)), flavour=self._flavour())
        self.cuda = get_cuda(opts.get("cuda"), int(opts.get("device", 0)))
        self._buffers: list[Any] = []
        self._graphs: dict[tuple, Any] = {}
        self.stream = 0
        try:
            self._load_engine()
        except BaseException:
            self._release()
            raise

    def _load_engine(self) -> None:
        from runtime.trt.build import deserialize
        from runtime.trt.compat import TrtError

        trt = self.trt
        plan_path = self._plan_path()
        version_compatible = self._verify(plan_path)
        try:
            self.engine, self.runtime = deserialize(trt, plan_path.read_bytes(), version_compatible=version_compatible)
        except TrtError as exc:
            raise EngineError(
                f"{plan_path}: TensorRT cannot load this plan ({exc}); it is corrupt or was built by an "
                "incompatible TensorRT. Rebuild it here: python -m runtime build --onnx MODEL.onnx"
            ) from exc
        self.plan_path = plan_path
        self.context = trt.call(self.engine, "ICudaEngine.create_execution_context")
        if self.context is None:
            raise ArtifactError(f"{plan_path}: could not create an execution context (out of device memory?)")

        engine = self.engine
        inputs, outputs = [], []
        self._dtypes: dict[str, np.dtype] = {}
        self._max_shapes: dict[str, tuple[int, ...]] = {}
        self._min_batch = 1
        self._max_batch = None
        in_mode = trt.get("TensorIOMode.INPUT")
        for i in range(int(trt.read(engine, "ICudaEngine.num_io_tensors"))):
            name = trt.call(engine, "ICudaEngine.get_tensor_name", i)
            dtype = trt.numpy_dtype(trt.call(engine, "ICudaEngine.get_tensor_dtype", name))
            shape = tuple(int(d) for d in trt.call(engine, "ICudaEngine.get_tensor_shape", name))
            self._dtypes[name] = dtype
            if trt.call(engine, "ICudaEngine.get_tensor_mode", name) == in_mode:
                inputs.append(TensorSpec(name, dtype, shape))
                if any(d < 0 for d in shape):
                    lo, _opt, hi = (
                        tuple(int(d) for d in s)
                        for s in trt.call(engine, "ICudaEngine.get_tensor_profile_shape", name, 0)
                    )
                    self._max_shapes[name] = hi
                    self._min_batch = max(self._min_batch, lo[0])
                    self._max_batch = hi[0] if self._max_batch is None else min(self._max_batch, hi[0])
                else:
                    self._max_shapes[name] = shape
                    self._max_batch = shape[0] if self._max_batch is None else min(self._max_batch, shape[0])
            else:
                outputs.append(name)
        self._input_specs, self._output_names = tuple(inputs), tuple(outputs)

        # Output sizes at the largest batch: set every input to its max shape and ask the context.
        for spec in inputs:
            trt.call(self.context, "IExecutionContext.set_input_shape", spec.name, self._max_shapes[spec.name])
        for name in outputs:
            self._max_shapes[name] = tuple(
                int(d) for d in trt.call(self.context, "IExecutionContext.get_tensor_shape", name)
            )
        self.stream = self.cuda.create_stream()
        self._device: dict[str, Any] = {}
        self._host: dict[str, Any] = {}
        for name, shape in self._max_shapes.items():
            count = int(np.prod(shape, dtype=np.int64))
            self._device[name] = self.cuda.alloc_device(count * self._dtypes[name].itemsize)
            self._host[name] = self.cuda.alloc_pinned((count,), self._dtypes[name])
            self._buffers += [self._device[name], self._host[name]]
            # Addresses never change (buffers are sized for the largest batch): set them once.
            trt.call(self.context, "IExecutionContext.set_tensor_address", name, self._device[name].ptr)
        log.info(
            "trt: %s on %s via %s (TensorRT %s%s), batch %d..%d%s",
            plan_path.name,
            self.cuda.device().name,
            self.cuda.name,
            trt.version,
            ", lean" if trt.lean else "",
            self._min_batch,
            self._max_batch or 0,
            ", CUDA graphs" if self.options.get("cuda_graph") else "",
        )

    def _flavour(self) -> str | None:
        """The ``flavour`` option, else (for a plan) the flavour its sidecar records, else auto."""
        flavour = self.options.get("flavour") or (self.options.get("build") or {}).get("flavour")
        if flavour or self.path.suffix.lower() == ".onnx":
            return flavour
        from runtime.artifacts import read_sidecar, sidecar_path

        if sidecar_path(self.path).is_file():
            try:
                return read_sidecar(self.path).get("flavour")
            except Exception:  # noqa: BLE001 - _verify reports an unreadable sidecar
                return None
        return None

    def _plan_path(self) -> Path:
        if self.path.suffix.lower() != ".onnx":
            return self.path
        from runtime.trt.build import BuildConfig, build_engine

        opts = self.options
        precision = opts.get("precision") or _precision_from_name(self.path)
        extra = dict(opts.get("build") or {})
        extra.setdefault("flavour", self.trt.flavour.value)
        cfg = BuildConfig(onnx=self.path, precision=precision, batch=opts.get("batch", "1:8:32"), **extra)
        result = build_engine(cfg, trt=self.trt)
        log.info("%s", result.summary())
        return result.engine

    def _verify(self, plan: Path) -> bool:
        """Check the sidecar against this TensorRT and GPU; returns whether the plan is version-compatible."""
        from runtime.artifacts import read_sidecar, sidecar_path
        from runtime.trt.cache import read_engine_key

        if not sidecar_path(plan).is_file():
            if self.options.get("verify", True):
                raise ArtifactError(
                    f"{plan} has no sidecar, so nothing says which TensorRT and GPU built it; rebuild it with "
                    "`python -m runtime build --onnx MODEL.onnx` or pass verify=False to load it anyway"
                )
            log.warning("loading %s without a sidecar (verify=False)", plan)
            return bool(self.options.get("version_compatible", False))
        key = read_engine_key(plan)
        side = read_sidecar(plan)
        version_compatible = bool(side.get("version_compatible", False))
        dev = self.cuda.device()
        problems = []
        recorded = side.get("artifact_sha256")
        if recorded and self.options.get("verify", True):
            from runtime.artifacts import sha256_file

            actual = sha256_file(plan)
            if actual != recorded:
                problems.append(
                    f"the plan's sha256 {actual[:12]}... differs from the {recorded[:12]}... its sidecar "
                    f"recorded at build time ({plan.stat().st_size} bytes now): the file is corrupt, "
                    "truncated or was replaced"
                )
        from runtime.trt.compat import target_unsupported_reason

        if key.flavour != self.trt.flavour.value:
            problems.append(
                f"built by {'TensorRT for RTX' if key.flavour == 'rtx' else 'TensorRT'} "
                f"{key.tensorrt_version}, this is {self.trt.label}"
            )
        elif key.tensorrt_version != str(self.trt.version) and not version_compatible:
            problems.append(f"built by TensorRT {key.tensorrt_version}, this is {self.trt.version}")
        if key.targets:  # built ahead of time: runs on any GPU of its target compute capabilities
            targets = tuple(side.get("target_compute_capabilities") or ())
            why = (
                target_unsupported_reason(dev.compute_capability, targets, dev.name)
                if targets
                else "its sidecar lists no target compute capabilities"
            )
            if why:
                problems.append(why)
        elif (key.gpu_name, key.compute_capability) != (dev.name, dev.compute_capability):
            problems.append(
                f"built on {key.gpu_name} (sm {key.compute_capability}), this is {dev.name} "
                f"(sm {dev.compute_capability})"
            )
        if self.trt.lean and not version_compatible:
            problems.append("the lean runtime loads version-compatible plans only")
        if problems and self.options.get("verify", True):
            raise ArtifactError(
                f"{plan}: {'; '.join(problems)}. Rebuild it here: python -m runtime build --onnx "
                f"{side.get('onnx', 'MODEL.onnx')} --precision {key.precision} --batch {key.profile}"
                f"{' --version-compatible' if self.trt.lean else ''}"
                f"{' --flavour rtx --compute-capability ' + dev.compute_capability if key.targets else ''}"
            )
        return version_compatible

    # ---- inference ------------------------------------------------------------------------------
    def _set_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        batch = None
        for name, shape in shapes.items():
            batch = shape[0] if batch is None else batch
            if not self._min_batch <= shape[0] <= (self._max_batch or shape[0]):
                raise DataError(
                    f"trt {self.path.name}: batch {shape[0]} of {name!r} is outside the engine's profile "
                    f"{self._min_batch}..{self._max_batch}; rebuild with a wider --batch"
                )
            if not self.trt.call(self.context, "IExecutionContext.set_input_shape", name, tuple(shape)):
                raise DataError(f"trt {self.path.name}: TensorRT rejected shape {tuple(shape)} for {name!r}")
        return int(batch or 0)

    def _enqueue(self, shapes_key: tuple) -> None:
        if not self.options.get("cuda_graph"):
            self._execute()
            return
        graph = self._graphs.get(shapes_key)
        if graph is None:
            # One plain enqueue first: TensorRT defers some shape-dependent setup to the first
            # execute after set_input_shape, which must not land inside the capture.
            self._execute()
            self.cuda.synchronize(self.stream)
            self.cuda.begin_capture(self.stream)
            try:
                self._execute()
            finally:
                graph = self.cuda.end_capture(self.stream)
            self._graphs[shapes_key] = graph
        self.cuda.launch_graph(graph, self.stream)

    def _execute(self) -> None:
        from runtime.trt.compat import TrtError

        if not self.trt.call(self.context, "IExecutionContext.execute_async_v3", self.stream):
            raise TrtError(f"execute_async_v3 failed for {self.path.name} (see the TensorRT log)")

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = {spec.name: tuple(feeds[spec.name].shape) for spec in self._input_specs}
        self._set_shapes(shapes)
        for spec in self._input_specs:
            arr = np.ascontiguousarray(feeds[spec.name])
            host = self._host[spec.name].array[: arr.size]
            host[...] = arr.reshape(-1)
            self.cuda.copy_htod_async(self._device[spec.name], host, self.stream)
        self._enqueue(tuple(sorted(shapes.items())))
        out: dict[str, np.ndarray] = {}
        views = {}
        for name in self._output_names:
            shape = tuple(int(d) for d in self.trt.call(self.context, "IExecutionContext.get_tensor_shape", name))
            host = self._host[name].array[: int(np.prod(shape, dtype=np.int64))]
            self.cuda.copy_dtoh_async(host, self._device[name], self.stream)
            views[name] = (host, shape)
        self.cuda.synchronize(self.stream)
        for name, (host, shape) in views.items():
            out[name] = host.reshape(shape).copy()
        return out

    def bench_fn(self, batch: int) -> Callable[[], float] | None:
        """One enqueue of ``batch`` samples on inputs staged once on the device; returns device ms."""
        self._require_loaded()
        from runtime.backends.base import random_feeds

        feeds = random_feeds(self._input_specs, batch)
        shapes = {name: tuple(a.shape) for name, a in feeds.items()}
        self._set_shapes(shapes)
        for name, arr in feeds.items():
            self.cuda.copy_htod_async(self._device[name], arr, self.stream)
        self.cuda.synchronize(self.stream)
        key = tuple(sorted(shapes.items()))

        def run() -> float:
            return self.cuda.time_ms(lambda: self._enqueue(key), self.stream)

        return run

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if self.loaded:
            dev = self.cuda.device()
            info.update(
                {
                    "tensorrt": str(self.trt.version),
                    "tensorrt_flavour": self.trt.flavour.value,
                    "tensorrt_branch": self.trt.branch,
                    "lean": self.trt.lean,
                    "cuda": self.cuda.name,
                    "gpu": dev.name,
                    "compute_capability": dev.compute_capability,
                    "engine": str(self.plan_path),
                    "cuda_graph": bool(self.options.get("cuda_graph")),
                    "batch_range": [self._min_batch, self._max_batch],
                }
            )
        return info

    # ---- close ----------------------------------------------------------------------------------
    def _close(self) -> None:
        self._release()

    def _release(self) -> None:
        cuda = getattr(self, "cuda", None)
        if cuda is None:
            return
        for graph in getattr(self, "_graphs", {}).values():
            cuda.destroy_graph(graph)
        self._graphs = {}
        for buf in getattr(self, "_buffers", []):
            buf.free()
        self._buffers = []
        self.context = self.engine = self.runtime = None
        if getattr(self, "stream", 0):
            cuda.destroy_stream(self.stream)
            self.stream = 0
        cuda.close()
        self.cuda = None


def _precision_from_name(path: Path) -> str:
    for p in ("int8", "fp16", "fp32"):
        if f".{p}." in path.name or path.stem.endswith(f".{p}") or path.stem.endswith(f"_{p}"):
            return p
    if path.suffix.lower() == ".onnx":
        return "fp32"
    raise ConfigError(f"cannot tell the precision of {path.name}; pass precision='fp32'|'fp16'|'int8'")
