"""Training configuration: frozen dataclasses loaded from YAML (unknown keys are an error)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.configs import from_mapping, load_yaml
from runtime.errors import ConfigError


class Optimizer(str, enum.Enum):
    ADAM = "adam"
    SGD = "sgd"


class Scheduler(str, enum.Enum):
    NONE = "none"
    PLATEAU = "plateau"  # ReduceLROnPlateau on validation loss (LANMSFF recipe)
    STEP = "step"  # StepLR (MA-Net recipe)
    ONECYCLE = "onecycle"  # short fixed budgets (the demo)


class Augment(str, enum.Enum):
    NONE = "none"
    ONLINE = "online"  # one of the paper's four variants drawn per sample per epoch
    OFFLINE_X4 = "offline_x4"  # the LANMSFF notebook: every training image four times


@dataclass(frozen=True)
class ModelConfig:
    name: str = "lanmsff"
    num_classes: int = 7
    kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # MA-Net: the MS-Celeb checkpoint (heads replaced)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how to split it; ``options`` go to the dataset's loader."""

    kind: str = "synthetic"
    root: str | None = None
    val_fraction: float = 0.2
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def loader_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `runtime.data.load_dataset` (also stored in checkpoints)."""
        return {
            "kind": self.kind,
            "root": self.root,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            **self.options,
        }


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 32
    optimizer: Optimizer = Optimizer.ADAM
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_eps: float = 1e-7  # Keras' Adam epsilon
    scheduler: Scheduler = Scheduler.PLATEAU
    plateau_factor: float = 0.1
    plateau_patience: int = 9
    step_size: int = 15
    step_gamma: float = 0.1
    early_stop_patience: int = 0  # epochs without val-loss improvement; 0 disables
    augment: Augment = Augment.ONLINE
    time_budget_s: float = 0.0  # skip epochs that would pass this training time; 0 = no budget
    seed: int = 0
    num_threads: int = 0  # torch intra-op threads; 0 = all cores
    amp: bool = True  # mixed precision, on CUDA only
    channels_last: bool = False
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"train.epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class FitConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/train"


def load_fit_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FitConfig:
    """Load a `FitConfig` from YAML (a ``fit:`` section is used when present) plus overrides."""
    data = load_yaml(path) if path else {}
    where = f"{path}: config" if path else "config"
    if "fit" in data:  # the pipeline config keeps one section per stage
        data, where = data["fit"], f"{path}: fit"
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of sections (model, data, train, out), got {type(data).__name__}"
        )
    data = dict(data)
    for key, value in (overrides or {}).items():
        data[key] = value
    return from_mapping(FitConfig, data, where=where)
