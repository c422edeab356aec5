"""Model registry: one file per family, variants registered with `@register_model`.

    >>> from train.models import create_model, list_models
    >>> model = create_model("lanmsff", num_classes=7)

Every model's ``forward(x)`` returns fused logits (N, num_classes). Models with several heads
(MA-Net) also implement ``forward_heads(x) -> dict[str, Tensor]`` whose ``"logits"`` entry is the
fused output, and ``loss_weights: dict[str, float]`` naming the per-head loss weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from runtime.errors import ModelError
from runtime.preprocess import PreprocessSpec


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of a model variant."""

    name: str
    family: str
    factory: Callable[..., nn.Module]
    preprocess: PreprocessSpec
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, preprocess: PreprocessSpec, description: str = ""):
    """Decorator registering ``factory(num_classes=..., **kwargs) -> nn.Module`` under ``name``."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ModelError(f"model name {name!r} is already registered (by {_REGISTRY[name].factory.__module__})")
        _REGISTRY[name] = ModelInfo(name, family, factory, preprocess, description)
        return factory

    return deco


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    """Registry entry of ``name``; an unknown name lists the valid ones."""
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, num_classes: int = 7, **kwargs) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs (extra kwargs go to the factory)."""
    info = get_model_info(name)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return info.factory(num_classes=num_classes, **kwargs)


#: Entry-point group through which other packages register model families (docs/contract.md).
ENTRY_POINT_GROUP = "ferdeploy.models"
_plugins_loaded = False


def _load_families() -> None:
    # Importing a family module registers its variants; imported lazily so a broken family
    # does not stop the others from listing.
    from train.models import lanmsff, manet  # noqa: F401 - imported for its side effect (registration) or to probe availability

    _load_plugins()


def _load_plugins() -> None:
    """Import every module named in the ``ferdeploy.models`` entry-point group (once).

    A package registers its families by declaring, in its pyproject.toml::

        [project.entry-points."ferdeploy.models"]
        my_fer = "my_fer.models"        # a module whose import runs @register_model

    A plugin that fails to import is logged and skipped, so it cannot hide the built-in models.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import logging
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party package must not break the registry
            logging.getLogger(__name__).warning(
                "model plugin %s (%s) failed to load: %s: %s", ep.name, ep.value, type(exc).__name__, exc
            )
