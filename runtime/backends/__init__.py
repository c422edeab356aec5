"""Backend registry: names -> lazily imported classes.

`get_backend("ort")` imports ``runtime.backends.ort`` only when asked, so a machine without
TensorRT (or torch) can still use the others. The TensorRT backend lives in
``runtime/backends/trt.py`` (class ``TrtBackend``); it is listed here and imported on demand.
Other modules may add theirs with `register_backend`.
"""

from __future__ import annotations

import importlib

from runtime.backends.base import Backend, TensorSpec, check_feeds, random_feeds
from runtime.errors import ConfigError, MissingDependencyError

__all__ = [
    "Backend",
    "TensorSpec",
    "available_backends",
    "backend_names",
    "check_feeds",
    "get_backend",
    "random_feeds",
    "register_backend",
]

# name -> "module:Class"; imported lazily so optional libraries are touched only when used.
_REGISTRY: dict[str, str] = {
    "ort": "runtime.backends.ort:OrtBackend",
    "ort-cuda": "runtime.backends.ort:OrtCudaBackend",
    "ort-trt": "runtime.backends.ort:OrtTensorrtBackend",
    # The PyTorch reference lives with train/ (it needs torch); reached by name, the registry is the
    # documented plug-in point through which runtime uses a layer above it.
    "torch": "train.backend:TorchBackend",
    "trt": "runtime.backends.trt:TrtBackend",
    "openvino": "runtime.backends.openvino:OpenVinoBackend",  # the `openvino` extra; only when named
}


def register_backend(name: str, target: str) -> None:
    """Register ``"module:Class"`` under ``name``; a duplicate name raises `ConfigError`."""
    if name in _REGISTRY:
        raise ConfigError(f"backend {name!r} is already registered as {_REGISTRY[name]}")
    if ":" not in target:
        raise ConfigError(f"backend target must be 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def backend_names() -> tuple[str, ...]:
    """Registered backend names."""
    return tuple(_REGISTRY)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered as ``name`` (its module imported now).

    Raises:
        ConfigError: for an unknown name (listing the valid ones).
        MissingDependencyError: when the backend's module is not present in this checkout.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown backend {name!r}; valid: {sorted(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise MissingDependencyError(f"backend {name!r}: module {module_name} is not part of this install") from exc
        raise
    try:
        return getattr(module, cls_name)
    except AttributeError:
        raise MissingDependencyError(f"backend {name!r}: {module_name} defines no {cls_name}") from None


def available_backends(names: tuple[str, ...] | None = None) -> dict[str, str]:
    """name -> "" when usable here, else the reason it is not (never raises)."""
    out: dict[str, str] = {}
    for name in names or backend_names():
        try:
            out[name] = get_backend(name).unavailable_reason()
        except Exception as exc:  # noqa: BLE001 - a broken optional module only makes it unavailable
            out[name] = f"{type(exc).__name__}: {exc}"
    return out
