"""Test doubles: a TensorRT module and a CUDA library that run on a CPU.

`make_fake_trt` builds a module object with the classes, enums and methods the build and runtime
paths use. Given ``surface`` (the names a real bindings wheel exports, read by
`runtime.trt.api_surface.read_wheel_surface`), every object refuses attributes that wheel does
not have, so running the real code against it proves the code touches only names that exist in
that TensorRT version.

`FakeCuda` implements `runtime.trt.cuda.CudaApi` on numpy arrays; the fake execution context
computes ``logits = input.reshape(batch, -1) @ W`` from "device" memory, so the backend's copies,
addresses, shapes and CUDA-graph replay are checked numerically.
"""

from __future__ import annotations

import itertools
import json
import types
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from runtime.trt.cuda import CudaApi, DeviceBuffer, DeviceInfo, HostBuffer

WEIGHTS = np.arange(16 * 3, dtype=np.float32).reshape(16, 3) / 100.0
INPUT_SHAPE = (-1, 1, 4, 4)


class FakeEnumValue:
    def __init__(self, cls: str, name: str, value: int) -> None:
        self.cls, self.name, self.value = cls, name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"{self.cls}.{self.name}"

    def __hash__(self) -> int:
        return hash((self.cls, self.name))


class Restricted:
    """An object of TensorRT class ``_cls`` that allows only ``_cls.attr`` names in the surface."""

    def __init__(self, fake: FakeTrt, cls: str, **attrs: Any) -> None:
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_attrs", dict(attrs))

    def _allowed(self, attr: str) -> None:
        surface = self._fake.surface
        if surface is not None and f"{self._cls}.{attr}" not in surface:
            raise AttributeError(f"{self._fake.__version__}: {self._cls} has no attribute {attr!r}")

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._allowed(attr)
        try:
            value = self._attrs[attr]
        except KeyError:
            raise AttributeError(f"fake {self._cls} does not implement {attr!r}") from None
        if callable(value) and not isinstance(value, (FakeEnumValue, Restricted)):

            def recorder(*args, _v=value, **kwargs):
                self._fake.calls.append((f"{self._cls}.{attr}", args))
                return _v(*args, **kwargs)

            return recorder
        self._fake.calls.append((f"{self._cls}.{attr}", ()))
        return value

    def __setattr__(self, attr: str, value: Any) -> None:
        self._allowed(attr)
        self._fake.calls.append((f"{self._cls}.{attr}=", (value,)))
        self._attrs[attr] = value


class FakeTrt(types.ModuleType):
    """The fake module (see `make_fake_trt`)."""

    surface: set[str] | None
    calls: list[tuple[str, tuple]]


def make_fake_trt(
    version: str = "10.3.0",
    *,
    surface: Iterable[str] | None = None,
    inspector: Callable[[FakeTrt], str] | str | None = None,
    build_ok: bool | Callable[[FakeTrt], bool] = True,
    parse_ok: bool = True,
    num_dla_cores: int = 0,
    input_shape: tuple[int, ...] = INPUT_SHAPE,
    cuda: FakeCuda | None = None,
) -> FakeTrt:
    """A fake ``tensorrt`` module of ``version``.

    Args:
        surface: Names allowed (dotted, as in api_surface); None allows whatever the fake implements.
        inspector: Inspector JSON returned by ``get_engine_information`` (or a function of the fake).
        build_ok: Whether ``build_serialized_network`` returns a plan (or a function deciding it).
        parse_ok: Whether the ONNX parser succeeds.
        num_dla_cores: ``Builder.num_DLA_cores``.
        input_shape: Network input shape (``-1`` = dynamic batch).
        cuda: The `FakeCuda` whose memory the execution context reads and writes.
    """
    fake = FakeTrt("tensorrt")
    fake.__version__ = version
    fake.surface = set(surface) if surface is not None else None
    fake.calls = []
    fake.cuda = cuda
    fake.state = {"flags": [], "network_flags": None, "timing_cache": b""}

    def enum(cls: str, *members: str) -> Any:
        ns = types.SimpleNamespace()
        for i, m in enumerate(members):
            if fake.surface is None or f"{cls}.{m}" in fake.surface:
                setattr(ns, m, FakeEnumValue(cls, m, i))
        return ns

    # Enums: every member any version has; the surface filter drops what this version lacks.
    fake.BuilderFlag = enum(
        "BuilderFlag",
        "FP16",
        "INT8",
        "DEBUG",
        "GPU_FALLBACK",
        "REFIT",
        "TF32",
        "VERSION_COMPATIBLE",
        "EXCLUDE_LEAN_RUNTIME",
        "BF16",
        "FP8",
    )
    fake.NetworkDefinitionCreationFlag = enum("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH", "STRONGLY_TYPED")
    fake.MemoryPoolType = enum("MemoryPoolType", "WORKSPACE", "DLA_MANAGED_SRAM")
    fake.ProfilingVerbosity = enum("ProfilingVerbosity", "LAYER_NAMES_ONLY", "NONE", "DETAILED")
    fake.DeviceType = enum("DeviceType", "GPU", "DLA")
    fake.LayerInformationFormat = enum("LayerInformationFormat", "ONELINE", "JSON")
    fake.TensorIOMode = enum("TensorIOMode", "NONE", "INPUT", "OUTPUT")
    fake.DataType = enum("DataType", "FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64")

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = (
            FakeEnumValue("ILogger", n, i)
            for i, n in enumerate(("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"))
        )

        def __init__(self) -> None:
            pass

    fake.ILogger = ILogger
    fake.Logger = types.SimpleNamespace(WARNING=ILogger.WARNING)

    # ---- builder side -------------------------------------------------------------------------
    def make_config() -> Restricted:
        def set_flag(flag):
            fake.state["flags"].append(repr(flag))

        def create_timing_cache(data):
            return Restricted(fake, "ITimingCache", serialize=lambda: bytes(data) + b"+tactics")

        def set_timing_cache(cache, ignore_mismatch):
            fake.state["timing_cache_set"] = cache
            return True

        return Restricted(
            fake,
            "IBuilderConfig",
            set_memory_pool_limit=lambda pool, size: fake.state.__setitem__("workspace", (repr(pool), size)),
            builder_optimization_level=3,
            max_aux_streams=-1,
            profiling_verbosity=None,
            default_device_type=None,
            DLA_core=-1,
            set_flag=set_flag,
            add_optimization_profile=lambda p: fake.state.__setitem__("profile", p) or 0,
            create_timing_cache=create_timing_cache,
            set_timing_cache=set_timing_cache,
            get_timing_cache=lambda: fake.state.get("timing_cache_set"),
        )

    def make_network(flags: int) -> Restricted:
        fake.state["network_flags"] = flags
        tensor = Restricted(fake, "ITensor", name="input", shape=tuple(input_shape))
        return Restricted(fake, "INetworkDefinition", num_inputs=1, get_input=lambda i: tensor)

    def make_profile() -> Restricted:
        def set_shape(name, lo, opt, hi):
            fake.state["shapes"] = (name, tuple(lo), tuple(opt), tuple(hi))

        return Restricted(fake, "IOptimizationProfile", set_shape=set_shape)

    def build_serialized_network(network, config):
        ok = build_ok(fake) if callable(build_ok) else build_ok
        if not ok:
            return None
        static = tuple(input_shape)
        shapes = fake.state.get("shapes") or ("input", static, static, static)
        return memoryview(b"PLAN" + json.dumps({"shapes": shapes, "version": version}).encode())

    def Builder(logger):  # noqa: N802 - mirrors the TensorRT class name
        return Restricted(
            fake,
            "Builder",
            create_network=make_network,
            create_builder_config=make_config,
            create_optimization_profile=make_profile,
            build_serialized_network=build_serialized_network,
            num_DLA_cores=num_dla_cores,
        )

    def OnnxParser(network, logger):  # noqa: N802 - mirrors TensorRT's own CamelCase factory name
        error = Restricted(fake, "ParserError", desc=lambda: "Unsupported op Foo", node_name=lambda: "/foo/Foo")
        return Restricted(
            fake,
            "OnnxParser",
            parse_from_file=lambda path: parse_ok,
            num_errors=(0 if parse_ok else 1),
            get_error=lambda i: error,
        )

    fake.Builder = Builder
    fake.OnnxParser = OnnxParser

    # ---- runtime side -------------------------------------------------------------------------
    def deserialize_cuda_engine(plan):
        data = bytes(plan)
        if not data.startswith(b"PLAN"):
            return None
        meta = json.loads(data[4:])
        if meta["version"] != version and not runtime._attrs.get("engine_host_code_allowed"):
            return None  # another version's plan, as TensorRT does
        _name, lo, opt, hi = meta["shapes"]
        return make_engine(tuple(lo), tuple(opt), tuple(hi))

    def make_engine(lo, opt, hi) -> Restricted:
        names = ["input", "logits"]
        modes = {"input": fake.TensorIOMode.INPUT, "logits": fake.TensorIOMode.OUTPUT}
        shapes = {"input": tuple(input_shape), "logits": (input_shape[0], 3)}

        def inspector_text():
            return inspector(fake) if callable(inspector) else (inspector or "{}")

        def create_engine_inspector():
            return Restricted(fake, "EngineInspector", get_engine_information=lambda fmt: inspector_text())

        return Restricted(
            fake,
            "ICudaEngine",
            num_io_tensors=2,
            get_tensor_name=lambda i: names[i],
            get_tensor_mode=lambda n: modes[n],
            get_tensor_dtype=lambda n: fake.DataType.FLOAT,
            get_tensor_shape=lambda n: shapes[n],
            get_tensor_profile_shape=lambda n, p: [lo, opt, hi],
            create_execution_context=lambda: make_context(),
            create_engine_inspector=create_engine_inspector,
        )

    def make_context() -> Restricted:
        ctx_state: dict[str, Any] = {"shapes": {}, "addresses": {}}

        def set_input_shape(name, shape):
            ctx_state["shapes"][name] = tuple(shape)
            return True

        def get_tensor_shape(name):
            if name == "logits":
                return (ctx_state["shapes"]["input"][0], 3)
            return ctx_state["shapes"][name]

        def set_tensor_address(name, ptr):
            ctx_state["addresses"][name] = int(ptr)
            return True

        def execute_async_v3(stream):
            shape = ctx_state["shapes"]["input"]
            in_ptr, out_ptr = ctx_state["addresses"]["input"], ctx_state["addresses"]["logits"]

            def compute():
                fake.state["executions"] = fake.state.get("executions", 0) + 1
                n = int(np.prod(shape))
                x = fake.cuda.device_array(in_ptr, np.float32, n).reshape(shape[0], -1)
                out = fake.cuda.device_array(out_ptr, np.float32, shape[0] * 3)
                out[:] = (x @ WEIGHTS).reshape(-1)

            fake.cuda.enqueue(stream, compute)
            return True

        return Restricted(
            fake,
            "IExecutionContext",
            set_input_shape=set_input_shape,
            get_tensor_shape=get_tensor_shape,
            set_tensor_address=set_tensor_address,
            execute_async_v3=execute_async_v3,
        )

    runtime = None

    def Runtime(logger):  # noqa: N802 - mirrors TensorRT's own CamelCase factory name
        nonlocal runtime
        runtime = Restricted(
            fake, "Runtime", deserialize_cuda_engine=deserialize_cuda_engine, engine_host_code_allowed=False
        )
        return runtime

    fake.Runtime = Runtime
    return fake


class FakeCuda(CudaApi):
    """`CudaApi` on numpy: device memory is a dict of byte arrays keyed by fake addresses."""

    name = "fake-cuda"

    def __init__(self, gpu_name: str = "Fake GPU", cc: str = "8.7") -> None:
        self._mem: dict[int, np.ndarray] = {}
        self._next = itertools.count(0x1000, 0x1000_0000)
        self._streams = itertools.count(7)
        self.capturing: dict[int, list] = {}
        self.info = DeviceInfo(0, gpu_name, cc, 1 << 30)
        self.freed = 0
        self.closed = False
        self.graph_launches = 0

    def device(self) -> DeviceInfo:
        return self.info

    def device_array(self, ptr: int, dtype: Any, count: int) -> np.ndarray:
        return self._mem[ptr].view(dtype)[:count]

    def enqueue(self, stream: int, fn: Callable[[], None]) -> None:
        if stream in self.capturing:
            self.capturing[stream].append(fn)
        else:
            fn()

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr = next(self._next)
        self._mem[ptr] = np.zeros(max(nbytes, 1), dtype=np.uint8)
        return DeviceBuffer(self, ptr, nbytes)

    def _free_device(self, buf: DeviceBuffer) -> None:
        del self._mem[buf.ptr]
        self.freed += 1

    def alloc_pinned(self, shape, dtype) -> HostBuffer:
        return HostBuffer(self, np.zeros(shape, dtype=dtype))

    def _free_host(self, buf: HostBuffer) -> None:
        self.freed += 1

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: int) -> None:
        raw = np.ascontiguousarray(src).view(np.uint8).reshape(-1)
        self._mem[dst.ptr][: raw.size] = raw

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: int) -> None:
        dst.view(np.uint8).reshape(-1)[:] = self._mem[src.ptr][: dst.nbytes]

    def create_stream(self) -> int:
        return next(self._streams)

    def destroy_stream(self, stream: int) -> None:
        pass

    def synchronize(self, stream: int) -> None:
        pass

    def create_event(self) -> Any:
        return {"t": None}

    def record_event(self, event: Any, stream: int) -> None:
        event["t"] = len(self._mem)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return 0.25

    def destroy_event(self, event: Any) -> None:
        pass

    def begin_capture(self, stream: int) -> None:
        self.capturing[stream] = []

    def end_capture(self, stream: int) -> Any:
        return self.capturing.pop(stream)

    def launch_graph(self, graph_exec: Any, stream: int) -> None:
        self.graph_launches += 1
        for fn in graph_exec:
            fn()

    def destroy_graph(self, graph_exec: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True
