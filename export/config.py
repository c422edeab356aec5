"""Configuration of the export stage: frozen dataclasses, loadable from YAML, unknown keys rejected.

YAML and dicts go through the one config loader, `runtime.configs` (`load_yaml`, `from_mapping`,
`to_dict`), like every other stage's config.

`ExportConfig` drives ``python -m export onnx`` and `PreflightConfig` drives ``python -m export
check``. Both are resolved once (paths, batch, opset validated) and saved beside every artifact.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.cli import parse_int_list
from runtime.configs import from_mapping, load_yaml, to_dict
from runtime.errors import ConfigError

# An opset both TensorRT 10.3 (JetPack 6) and TensorRT 11 parse. onnx-tensorrt documents opset 9-20
# for TensorRT 10.0 and a wider range for later releases; 17 is also what the TorchScript-based
# exporter is most tested at (LayerNorm/GroupNorm-era ops, no opset-18 Reduce* signature change).
DEFAULT_OPSET = 17
# The range the export accepts; export/tensorrt_ops.json holds the range the preflight checks.
MIN_OPSET, MAX_OPSET = 13, 20
# The largest batch a fixed-batch export accepts (larger is a typo, not a deployment).
MAX_FIXED_BATCH = 4096
# Below protobuf's 2 GiB message limit the weights stay inside model.onnx (self-contained file).
PROTOBUF_LIMIT_BYTES = 2**31 - 1


class Exporter(str, enum.Enum):
    """Which ``torch.onnx.export`` path writes the graph."""

    AUTO = "auto"  # per model family, see export.exporter.EXPORTER_BY_FAMILY
    TORCHSCRIPT = "torchscript"  # torch.onnx.export(dynamo=False)
    DYNAMO = "dynamo"  # torch.onnx.export(dynamo=True), torch.export based


def parse_batch(value: str | int | None) -> int | None:
    """``"dynamic"``/None -> None (dynamic batch axis); a positive integer -> fixed batch.

    Raises:
        ConfigError: for anything else, naming the accepted forms.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"--batch must be 'dynamic' or a positive integer, got {value!r}")
    if isinstance(value, int):
        n = value
    else:
        text = str(value).strip().lower()
        if text == "dynamic":
            return None
        try:
            n = int(text)
        except ValueError:
            raise ConfigError(f"--batch must be 'dynamic' or a positive integer, got {value!r}") from None
    if not 1 <= n <= MAX_FIXED_BATCH:
        raise ConfigError(f"--batch must be 'dynamic' or an integer in 1..{MAX_FIXED_BATCH}, got {value!r}")
    return n


def _check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise ConfigError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(
            f"opset {opset} is outside {MIN_OPSET}..{MAX_OPSET}; TensorRT 10.3 parses up to opset 20 "
            f"(use the default {DEFAULT_OPSET}, which TensorRT 10.3 and 11 both parse)"
        )
    return opset


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


class _Loadable:
    """``from_dict``/``from_yaml``/``to_dict`` of the stage configs, through `runtime.configs`."""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Unknown keys and wrong types raise `ConfigError` (`runtime.configs.from_mapping`)."""
        return from_mapping(cls, d, where=cls.__name__)

    @classmethod
    def from_yaml(cls, path: str | Path):
        """A YAML file of this config's keys (`runtime.configs.load_yaml`: clear errors for a missing file)."""
        return from_mapping(cls, load_yaml(path), where=str(path))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass(frozen=True)
class PreflightConfig(_Loadable):
    """What ``python -m export check`` checks.

    Attributes:
        model: The ONNX file.
        checkpoint: Optional checkpoint: enables PyTorch parity and the PyTorch-level trap lint.
        batches: Batch sizes of the parity check.
        atol: Largest allowed max-abs logit difference, ONNX Runtime FP32 vs PyTorch.
        report: Where the JSON report goes (default: ``<model stem>.preflight.json`` beside it).
    """

    model: Path
    checkpoint: Path | None = None
    batches: tuple[int, ...] = (1, 32)
    atol: float = 1e-4
    report: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        if self.checkpoint is not None:
            object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.report is not None:
            object.__setattr__(self, "report", Path(self.report))
        object.__setattr__(self, "batches", parse_int_list(self.batches, "parity batches"))
        object.__setattr__(self, "atol", _positive("atol", self.atol))


@dataclass(frozen=True)
class ExportConfig(_Loadable):
    """What ``python -m export onnx`` does.

    Attributes:
        checkpoint: ``checkpoint.pt`` written by ``python -m train``.
        out: Target ``model.onnx``; written atomically, an existing file survives a failed export.
        opset: ONNX opset (default 17: TensorRT 10.3 and 11 both parse it).
        batch: None for a dynamic batch axis (default), else a fixed batch size.
        exporter: ``auto`` (per model family), ``torchscript`` or ``dynamo``.
        slim: Clean the graph with onnxslim (verified to change no output).
        slim_atol: Largest output change the cleanup may cause (ONNX Runtime before vs after).
        parity_batches: Batch sizes of the preflight parity check.
        parity_atol: Largest allowed max-abs logit difference, ONNX Runtime vs PyTorch.
    """

    checkpoint: Path
    out: Path
    opset: int = DEFAULT_OPSET
    batch: int | str | None = None  # "dynamic" or an int on input; None or an int once resolved
    exporter: Exporter = Exporter.AUTO
    slim: bool = True
    slim_atol: float = 1e-6
    parity_batches: tuple[int, ...] = (1, 32)
    parity_atol: float = 1e-4

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        out = Path(self.out)
        if out.suffix.lower() != ".onnx":
            raise ConfigError(f"--out must name a .onnx file, got {str(out)!r}")
        if out.exists() and not out.is_file():
            raise ConfigError(f"--out {out} exists and is not a file")
        object.__setattr__(self, "out", out)
        object.__setattr__(self, "opset", _check_opset(self.opset))
        object.__setattr__(self, "batch", parse_batch(self.batch))
        try:
            object.__setattr__(self, "exporter", Exporter(self.exporter))
        except ValueError:
            valid = ", ".join(e.value for e in Exporter)
            raise ConfigError(f"exporter must be one of {valid}, got {self.exporter!r}") from None
        object.__setattr__(self, "parity_batches", parse_int_list(self.parity_batches, "parity batches"))
        object.__setattr__(self, "slim_atol", _positive("slim_atol", self.slim_atol))
        object.__setattr__(self, "parity_atol", _positive("parity_atol", self.parity_atol))

    @property
    def dynamic_batch(self) -> bool:
        return self.batch is None
