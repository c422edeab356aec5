"""Device memory, streams, events and CUDA graphs behind one small interface.

Two implementations, chosen by what is installed (`get_cuda`):

- `CudaPythonApi`: NVIDIA's cuda-python (``cuda.bindings.runtime``; ``cuda.cudart`` on older
  releases), what TensorRT's own samples use now. Every call returns ``(err, value...)``; errors
  are raised as `CudaError` with the CUDA error name.
- `PyCudaApi`: pycuda (``pycuda.driver``). It *retains the device's primary context* instead of
  ``pycuda.autoinit``'s new context: TensorRT and the CUDA runtime use the primary context, and two
  contexts on one device mean pointers that are invalid in the other (a classic TensorRT+pycuda
  trap).

The interface is deliberately small: pinned host buffers, device buffers, host<->device copies on a
non-default stream, events with elapsed time, and stream capture into an executable graph. Handles
are plain ints (device pointers, stream handles) so they can go straight to TensorRT's
``set_tensor_address`` and ``execute_async_v3``.

Nothing is imported at module level: cuda-python/pycuda are optional (``pip install '.[trt]'``).
"""

from __future__ import annotations

import abc
import ctypes
import importlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import MissingDependencyError, PipelineError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install '.[trt]' (brings cuda-python) or pip install pycuda"
IMPLEMENTATIONS = ("cuda-python", "pycuda")


class CudaError(PipelineError):
    """A CUDA call failed; the message names the call and CUDA's error."""


@dataclass(frozen=True)
class DeviceInfo:
    """The GPU the interface talks to."""

    index: int
    name: str
    compute_capability: str  # "8.7"
    total_memory_bytes: int = 0


class DeviceBuffer:
    """Device memory of ``nbytes``; ``ptr`` is the raw device address (an int)."""

    def __init__(self, api: CudaApi, ptr: int, nbytes: int, handle: Any = None) -> None:
        self.api, self.ptr, self.nbytes, self._handle = api, int(ptr), int(nbytes), handle

    def free(self) -> None:
        if self.ptr:
            self.api._free_device(self)
            self.ptr = 0

    def __repr__(self) -> str:
        return f"DeviceBuffer(0x{self.ptr:x}, {self.nbytes} bytes)"


class HostBuffer:
    """Page-locked host memory viewed as a numpy array (``array``)."""

    def __init__(self, api: CudaApi, array: np.ndarray, handle: Any = None) -> None:
        self.api, self.array, self._handle = api, array, handle

    @property
    def ptr(self) -> int:
        return int(self.array.ctypes.data)

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def free(self) -> None:
        if self.array is not None:
            self.api._free_host(self)
            self.array = None


class CudaApi(abc.ABC):
    """What the TensorRT backend needs from CUDA. Subclasses wrap one Python CUDA library."""

    name: str = "abstract"

    # ---- device -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def device(self) -> DeviceInfo: ...

    # ---- memory -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def alloc_device(self, nbytes: int) -> DeviceBuffer: ...

    @abc.abstractmethod
    def alloc_pinned(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer: ...

    @abc.abstractmethod
    def _free_device(self, buf: DeviceBuffer) -> None: ...

    @abc.abstractmethod
    def _free_host(self, buf: HostBuffer) -> None: ...

    @abc.abstractmethod
    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: int) -> None: ...

    @abc.abstractmethod
    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: int) -> None: ...

    # ---- streams and events -----------------------------------------------------------------------
    @abc.abstractmethod
    def create_stream(self) -> int:
        """A non-blocking stream (never the legacy default stream, which serialises everything)."""

    @abc.abstractmethod
    def destroy_stream(self, stream: int) -> None: ...

    @abc.abstractmethod
    def synchronize(self, stream: int) -> None: ...

    @abc.abstractmethod
    def create_event(self) -> Any: ...

    @abc.abstractmethod
    def record_event(self, event: Any, stream: int) -> None: ...

    @abc.abstractmethod
    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two recorded events (waits for ``end``)."""

    @abc.abstractmethod
    def destroy_event(self, event: Any) -> None: ...

    # ---- CUDA graphs ------------------------------------------------------------------------------
    @abc.abstractmethod
    def begin_capture(self, stream: int) -> None: ...

    @abc.abstractmethod
    def end_capture(self, stream: int) -> Any:
        """End capture and return an *instantiated* (executable) graph."""

    @abc.abstractmethod
    def launch_graph(self, graph_exec: Any, stream: int) -> None: ...

    @abc.abstractmethod
    def destroy_graph(self, graph_exec: Any) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook: only implementations that hold a context override it
        """Release the library's context if the implementation holds one."""

    # ---- helpers built on the primitives ----------------------------------------------------------
    def time_ms(self, fn: Any, stream: int) -> float:
        """Run ``fn()`` (which enqueues work on ``stream``) between two events; device ms."""
        start, end = self.create_event(), self.create_event()
        try:
            self.record_event(start, stream)
            fn()
            self.record_event(end, stream)
            return self.elapsed_ms(start, end)
        finally:
            self.destroy_event(start)
            self.destroy_event(end)


# ==================================================================================================
class CudaPythonApi(CudaApi):
    """cuda-python (``cuda.bindings.runtime``)."""

    name = "cuda-python"

    def __init__(self, device_index: int = 0) -> None:
        self.rt = _import_cudart()
        self.index = device_index
        self._check(self.rt.cudaSetDevice(device_index), "cudaSetDevice")

    def _check(self, result: Any, what: str) -> Any:
        if isinstance(result, tuple):
            err, rest = result[0], result[1:]
        else:
            err, rest = result, ()
        if int(err) != 0:
            try:
                name = self.rt.cudaGetErrorName(err)[1].decode()
            except Exception:  # noqa: BLE001 - best effort for the message only
                name = str(err)
            raise CudaError(f"{what} failed: {name} ({int(err)})")
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> DeviceInfo:
        props = self._check(self.rt.cudaGetDeviceProperties(self.index), "cudaGetDeviceProperties")
        raw = props.name
        name = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        return DeviceInfo(
            self.index,
            name.split("\x00", 1)[0].strip(),
            f"{props.major}.{props.minor}",
            int(getattr(props, "totalGlobalMem", 0)),
        )

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        ptr = self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), f"cudaMalloc({nbytes})")
        return DeviceBuffer(self, int(ptr), nbytes)

    def _free_device(self, buf: DeviceBuffer) -> None:
        self._check(self.rt.cudaFree(buf.ptr), "cudaFree")

    def alloc_pinned(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        dtype = np.dtype(dtype)
        nbytes = max(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, 1)
        ptr = int(self._check(self.rt.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        raw = (ctypes.c_byte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize]
        return HostBuffer(self, array.view(dtype).reshape(shape), handle=ptr)

    def _free_host(self, buf: HostBuffer) -> None:
        self._check(self.rt.cudaFreeHost(buf._handle), "cudaFreeHost")

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: int) -> None:
        src = np.ascontiguousarray(src)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            self.rt.cudaMemcpyAsync(dst.ptr, src.ctypes.data, src.nbytes, kind, stream), "cudaMemcpyAsync(HtoD)"
        )

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            self.rt.cudaMemcpyAsync(dst.ctypes.data, src.ptr, dst.nbytes, kind, stream), "cudaMemcpyAsync(DtoH)"
        )

    def create_stream(self) -> int:
        flags = self.rt.cudaStreamNonBlocking
        return int(self._check(self.rt.cudaStreamCreateWithFlags(flags), "cudaStreamCreateWithFlags"))

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def create_event(self) -> Any:
        return self._check(self.rt.cudaEventCreate(), "cudaEventCreate")

    def record_event(self, event: Any, stream: int) -> None:
        self._check(self.rt.cudaEventRecord(event, stream), "cudaEventRecord")

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._check(self.rt.cudaEventSynchronize(end), "cudaEventSynchronize")
        return float(self._check(self.rt.cudaEventElapsedTime(start, end), "cudaEventElapsedTime"))

    def destroy_event(self, event: Any) -> None:
        self._check(self.rt.cudaEventDestroy(event), "cudaEventDestroy")

    def begin_capture(self, stream: int) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
        self._check(self.rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")

    def end_capture(self, stream: int) -> Any:
        graph = self._check(self.rt.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        graph_exec = self._check(self.rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        self._check(self.rt.cudaGraphDestroy(graph), "cudaGraphDestroy")  # the exec keeps its own copy
        return graph_exec

    def launch_graph(self, graph_exec: Any, stream: int) -> None:
        self._check(self.rt.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def destroy_graph(self, graph_exec: Any) -> None:
        self._check(self.rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")


def _import_cudart() -> Any:
    attempts = []
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            attempts.append(f"import {name}: {exc}")
    raise MissingDependencyError(f"cuda-python is not installed ({'; '.join(attempts)}); {INSTALL_HINT}")


# ==================================================================================================
class PyCudaApi(CudaApi):
    """pycuda (``pycuda.driver``) on the device's primary context."""

    name = "pycuda"

    def __init__(self, device_index: int = 0) -> None:
        try:
            self.drv = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            raise MissingDependencyError(f"pycuda is not installed ({exc}); {INSTALL_HINT}") from exc
        try:
            self.drv.init()
            self._device = self.drv.Device(device_index)
            self._ctx = self._device.retain_primary_context()
            self._ctx.push()
        except self.drv.Error as exc:
            raise CudaError(f"pycuda could not open device {device_index}: {exc}") from exc
        self.index = device_index
        self._streams: dict[int, Any] = {}

    def close(self) -> None:
        if getattr(self, "_ctx", None) is not None:
            try:
                self._ctx.pop()
            finally:
                self._ctx = None

    def _stream(self, handle: int) -> Any:
        try:
            return self._streams[int(handle)]
        except KeyError:
            raise CudaError(f"stream 0x{int(handle):x} was not created by this PyCudaApi") from None

    def device(self) -> DeviceInfo:
        major, minor = self._device.compute_capability()
        return DeviceInfo(self.index, self._device.name(), f"{major}.{minor}", int(self._device.total_memory()))

    def alloc_device(self, nbytes: int) -> DeviceBuffer:
        alloc = self.drv.mem_alloc(max(int(nbytes), 1))
        return DeviceBuffer(self, int(alloc), nbytes, handle=alloc)

    def _free_device(self, buf: DeviceBuffer) -> None:
        buf._handle.free()

    def alloc_pinned(self, shape: tuple[int, ...], dtype: Any) -> HostBuffer:
        return HostBuffer(self, self.drv.pagelocked_empty(tuple(shape), np.dtype(dtype)))

    def _free_host(self, buf: HostBuffer) -> None:
        base = getattr(buf.array, "base", None)
        if hasattr(base, "free"):
            base.free()

    def copy_htod_async(self, dst: DeviceBuffer, src: np.ndarray, stream: int) -> None:
        self.drv.memcpy_htod_async(dst.ptr, np.ascontiguousarray(src), self._stream(stream))

    def copy_dtoh_async(self, dst: np.ndarray, src: DeviceBuffer, stream: int) -> None:
        self.drv.memcpy_dtoh_async(dst, src.ptr, self._stream(stream))

    def create_stream(self) -> int:
        # flags=1 is CU_STREAM_NON_BLOCKING: no implicit sync with the legacy default stream.
        s = self.drv.Stream(flags=1)
        self._streams[int(s.handle)] = s
        return int(s.handle)

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(int(stream), None)

    def synchronize(self, stream: int) -> None:
        self._stream(stream).synchronize()

    def create_event(self) -> Any:
        return self.drv.Event()

    def record_event(self, event: Any, stream: int) -> None:
        event.record(self._stream(stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def destroy_event(self, event: Any) -> None:
        pass  # freed with the Python object

    def begin_capture(self, stream: int) -> None:
        self._stream(stream).begin_capture()

    def end_capture(self, stream: int) -> Any:
        return self._stream(stream).end_capture().instantiate()

    def launch_graph(self, graph_exec: Any, stream: int) -> None:
        graph_exec.launch(self._stream(stream))

    def destroy_graph(self, graph_exec: Any) -> None:
        pass  # freed with the Python object


# ==================================================================================================
def get_cuda(prefer: str | None = None, device_index: int = 0) -> CudaApi:
    """The first CUDA implementation that works here (cuda-python, then pycuda).

    Args:
        prefer: ``"cuda-python"`` or ``"pycuda"`` to force one; None tries both in that order.
        device_index: CUDA device ordinal.

    Raises:
        MissingDependencyError: neither library is installed (the message says how to install).
        CudaError: a library is installed but the device cannot be opened (no GPU / driver).
    """
    if prefer is not None and prefer not in IMPLEMENTATIONS:
        from runtime.errors import ConfigError

        raise ConfigError(f"unknown CUDA implementation {prefer!r}; valid: {list(IMPLEMENTATIONS)}")
    order = [prefer] if prefer else list(IMPLEMENTATIONS)
    errors: list[PipelineError] = []
    for name in order:
        try:
            return CudaPythonApi(device_index) if name == "cuda-python" else PyCudaApi(device_index)
        except (MissingDependencyError, CudaError) as exc:
            errors.append(exc)
    if any(isinstance(e, CudaError) for e in errors):
        raise CudaError("; ".join(str(e) for e in errors) + " (is there an NVIDIA GPU and driver on this machine?)")
    raise MissingDependencyError("no CUDA Python library: " + "; ".join(str(e) for e in errors))


def cuda_unavailable_reason(prefer: str | None = None) -> str:
    """ "" when a CUDA implementation opens a device here, else why not (never raises)."""
    try:
        api = get_cuda(prefer)
    except PipelineError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - broken installs read as unavailable
        return f"CUDA probe failed: {type(exc).__name__}: {exc}"
    api.close()
    return ""
