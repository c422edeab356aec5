"""Dataset loader registry: ``@register_dataset(kind)`` on ``loader(root, **options) -> DatasetIndex``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runtime.data.base import DatasetIndex, stratified_split
from runtime.errors import DataError

Loader = Callable[..., DatasetIndex]
_LOADERS: dict[str, Loader] = {}


def register_dataset(kind: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``kind``; a duplicate kind raises."""

    def deco(fn: Loader) -> Loader:
        if kind in _LOADERS:
            raise DataError(f"dataset kind {kind!r} is already registered")
        _LOADERS[kind] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    _load_all()
    return sorted(_LOADERS)


def load_dataset(
    kind: str, root: str | Path | None = None, *, val_fraction: float = 0.1, seed: int = 0, **options
) -> DatasetIndex:
    """Load dataset ``kind`` from ``root`` into canonical form.

    When the dataset has no validation split of its own, a class-stratified, seeded
    ``val_fraction`` of its training split becomes ``val``.
    """
    _load_all()
    if kind not in _LOADERS:
        raise DataError(f"unknown dataset kind {kind!r}; valid kinds: {', '.join(sorted(_LOADERS))}")
    if kind != "synthetic":
        if root is None:
            raise DataError(f"dataset kind {kind!r} needs a root folder or file (data.root in the config)")
        if not Path(root).exists():
            raise DataError(f"dataset root {root} does not exist; point data.root at the unpacked {kind} dataset")
    index = _LOADERS[kind](root, seed=seed, **options) if kind == "synthetic" else _LOADERS[kind](Path(root), **options)
    index.validate()
    if not index.split("val") and val_fraction > 0:
        index.records = stratified_split(index.records, val_fraction, seed)
        index.info["val_split"] = f"stratified {val_fraction:.2f} of train, seed {seed}"
    return index


def _load_all() -> None:
    import importlib
    import pkgutil

    import runtime.data as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in ("base", "registry", "torch_data"):
            importlib.import_module(f"runtime.data.{mod.name}")
