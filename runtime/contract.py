"""The deployment contract stored in an ONNX model's ``metadata_props``, read without torch.

``python -m export onnx`` writes it (`DeploymentContract.to_metadata`); every runtime backend reads
it back (`read_contract`, or `DeploymentContract.from_metadata` on an ONNX Runtime session's
``get_modelmeta().custom_metadata_map``), so class order, input size, colour mode, scaling,
mean/std and resize policy travel with the model instead of being retyped on the device.

Imports: numpy/onnx/OpenCV only (the Jetson side has no torch).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.errors import ArtifactError, PipelineError
from runtime.preprocess import PreprocessSpec

CONTRACT_FORMAT = "ferdeploy-contract/1"

# metadata_props keys (all values are strings; structured values are JSON).
KEY_FORMAT = "ferdeploy.format"
KEY_MODEL_NAME = "model_name"
KEY_CLASS_NAMES = "class_names"  # JSON list, in logit order
KEY_PREPROCESS = "preprocess"  # PreprocessSpec.to_metadata(): size, colour mode, scale, mean/std, resize
KEY_INPUT_NAME = "input_name"
KEY_OUTPUT_NAMES = "output_names"  # JSON list; "logits" is the (fused) prediction
KEY_DATASET = "dataset"  # JSON: the checkpoint's dataset config (load_dataset(**dataset))
KEY_CHECKPOINT_SHA256 = "checkpoint_sha256"
KEY_EXPORTER = "exporter"
KEY_VERSIONS = "versions"  # JSON: library versions at export time

REQUIRED_KEYS: tuple[str, ...] = (
    KEY_FORMAT,
    KEY_MODEL_NAME,
    KEY_CLASS_NAMES,
    KEY_PREPROCESS,
    KEY_INPUT_NAME,
    KEY_OUTPUT_NAMES,
    KEY_DATASET,
    KEY_CHECKPOINT_SHA256,
    KEY_EXPORTER,
    KEY_VERSIONS,
)
_REEXPORT = "re-export the model with `python -m export onnx --checkpoint RUN/checkpoint.pt --out RUN/model.onnx`"


@dataclass(frozen=True)
class DeploymentContract:
    """What a deployed model promises about its inputs and outputs.

    Attributes:
        model_name: Registry name of the architecture (``lanmsff``, ``manet``, ...).
        class_names: Class names in logit order.
        preprocess: The input contract; feed `runtime.preprocess.preprocess` with it.
        dataset: The checkpoint's dataset config (for validation/calibration images).
        checkpoint_sha256: sha256 of the checkpoint the model was exported from.
        exporter: How the graph was written (e.g. ``torchscript``, with the torch version).
        versions: Library versions at export time.
        input_name: Name of the image input tensor.
        output_names: Output tensor names; ``logits`` is the (fused) prediction.
        source: The file the contract was read from ("" when built in memory).
    """

    model_name: str
    class_names: tuple[str, ...]
    preprocess: PreprocessSpec
    dataset: dict[str, Any] = field(default_factory=dict, hash=False)
    checkpoint_sha256: str = ""
    exporter: str = ""
    versions: dict[str, Any] = field(default_factory=dict, hash=False)
    input_name: str = "input"
    output_names: tuple[str, ...] = ("logits",)
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "output_names", tuple(str(o) for o in self.output_names))
        if len(self.class_names) < 2:
            raise ArtifactError(f"{self._where()}contract needs at least 2 class names, got {list(self.class_names)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ArtifactError(f"{self._where()}contract has duplicate class names {list(self.class_names)}")
        if not self.model_name:
            raise ArtifactError(f"{self._where()}contract has an empty model name")

    def _where(self) -> str:
        return f"{self.source}: " if self.source else ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed sample."""
        return self.preprocess.input_shape

    def to_metadata(self) -> dict[str, str]:
        """String key/values for ONNX ``metadata_props``."""
        props = {
            KEY_FORMAT: CONTRACT_FORMAT,
            KEY_MODEL_NAME: self.model_name,
            KEY_CLASS_NAMES: json.dumps(list(self.class_names)),
            KEY_INPUT_NAME: self.input_name,
            KEY_OUTPUT_NAMES: json.dumps(list(self.output_names)),
            KEY_DATASET: json.dumps(self.dataset, sort_keys=True, default=str),
            KEY_CHECKPOINT_SHA256: self.checkpoint_sha256,
            KEY_EXPORTER: self.exporter,
            KEY_VERSIONS: json.dumps(self.versions, sort_keys=True, default=str),
        }
        props.update(self.preprocess.to_metadata())
        return props

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: str = "") -> DeploymentContract:
        """Rebuild the contract from ``metadata_props`` (a key -> string mapping).

        Raises:
            ArtifactError: naming the missing or malformed keys and how to fix them.
        """
        where = f"{source}: " if source else ""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            present = sorted(props) or "none"
            raise ArtifactError(
                f"{where}ONNX metadata lacks deployment-contract key(s) {missing} (present: {present}); {_REEXPORT}"
            )
        if props[KEY_FORMAT] != CONTRACT_FORMAT:
            raise ArtifactError(
                f"{where}deployment contract format {props[KEY_FORMAT]!r} is not {CONTRACT_FORMAT!r}; {_REEXPORT}"
            )

        def load(key: str, kind: type) -> Any:
            try:
                value = json.loads(props[key])
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{where}metadata key {key!r} is not valid JSON ({exc}); {_REEXPORT}") from exc
            if not isinstance(value, kind):
                raise ArtifactError(
                    f"{where}metadata key {key!r} should hold a JSON {kind.__name__}, got {type(value).__name__}; {_REEXPORT}"
                )
            return value

        try:
            spec = PreprocessSpec.from_metadata(props)
        except (PipelineError, json.JSONDecodeError, TypeError) as exc:
            raise ArtifactError(f"{where}metadata key 'preprocess' is invalid ({exc}); {_REEXPORT}") from exc
        return cls(
            model_name=props[KEY_MODEL_NAME],
            class_names=tuple(load(KEY_CLASS_NAMES, list)),
            preprocess=spec,
            dataset=load(KEY_DATASET, dict),
            checkpoint_sha256=props[KEY_CHECKPOINT_SHA256],
            exporter=props[KEY_EXPORTER],
            versions=load(KEY_VERSIONS, dict),
            input_name=props[KEY_INPUT_NAME],
            output_names=tuple(load(KEY_OUTPUT_NAMES, list)),
            source=source,
        )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict (external weight files are not read).

    Raises:
        ArtifactError: when the file is missing or is not an ONNX model.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: ONNX model not found; export one with `python -m export onnx`")
    if p.stat().st_size == 0:
        raise ArtifactError(
            f"{p}: the file is empty (0 bytes), not an ONNX model; an interrupted copy or download "
            "leaves this: copy it again or re-export with `python -m export onnx`"
        )
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-like errors, ValueError...
        raise ArtifactError(
            f"{p}: not an ONNX model, or a truncated one ({type(exc).__name__}: {exc}); copy it "
            "again or re-export it with `python -m export onnx`"
        ) from exc
    # Random bytes sometimes parse as an (empty) protobuf message: require the parts every model has.
    if model.ir_version <= 0 or not model.opset_import or not model.graph.output:
        raise ArtifactError(f"{p}: not an ONNX model (no IR version, opset or graph outputs)")
    check_opset(model, p)
    return {prop.key: prop.value for prop in model.metadata_props}


#: Oldest default-domain opset the runtime loads: onnxruntime runs opset 7 and newer.
MIN_OPSET = 7


def check_opset(model, path: str | os.PathLike) -> int:
    """Return the model's default-domain opset; raise `ArtifactError` outside what can run here.

    The newest opset is the installed onnx package's (onnxruntime lags onnx by at most one release);
    TensorRT's narrower range is checked by the export preflight (export/preflight.py).
    """
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    newest = onnx.defs.onnx_opset_version()
    if opset and not MIN_OPSET <= opset <= newest:
        raise ArtifactError(
            f"{path}: ONNX opset {opset} is not supported: this runtime loads opsets {MIN_OPSET}..{newest} "
            f"(onnx {onnx.__version__}), and TensorRT 10.3 and 11 parse 9..20. Re-export with the pipeline's "
            "default: python -m export onnx --checkpoint RUN/checkpoint.pt --out RUN/model.onnx --opset 17"
        )
    return opset


def read_contract(path: str | os.PathLike) -> DeploymentContract:
    """Read the deployment contract of an exported ONNX model.

    Args:
        path: ``model.onnx`` written by ``python -m export onnx``.

    Returns:
        The frozen `DeploymentContract`.

    Raises:
        ArtifactError: for a missing file, a non-ONNX file, or missing/malformed contract keys.
    """
    return DeploymentContract.from_metadata(read_metadata(path), source=str(path))


# --------------------------------------------------------------------------------------------
# The contract file: the same promises, written by hand for a model from outside the project
# --------------------------------------------------------------------------------------------
#: Keys of a contract YAML file (docs/contract.md); anything else is a typo and is refused.
CONTRACT_FILE_KEYS: tuple[str, ...] = (
    "classes",
    "input_size",
    "color_mode",
    "scale",
    "mean",
    "std",
    "resize",
    "interpolation",
    "model_name",
    "input_name",
    "output_name",
    "layout",
)
_REQUIRED_FILE_KEYS = ("classes", "input_size", "color_mode")
_LAYOUTS = ("NCHW",)


@dataclass(frozen=True)
class ContractFile:
    """A validated contract file (``docs/contract.md``).

    Attributes:
        contract: The deployment contract it describes, with the pipeline's tensor names
            (``input``/``logits``) that ``export adopt`` and ``export onnx --model`` give the graph.
        input_name: Name of the image input in the user's graph (None: its only input).
        output_name: Name of the logits output in the user's graph (None: its first output).
        layout: Tensor layout of the input (``NCHW``).
        path: The file it was read from ("" when built from a mapping).
    """

    contract: DeploymentContract
    input_name: str | None = None
    output_name: str | None = None
    layout: str = "NCHW"
    path: str = ""


def contract_from_dict(data: Mapping[str, Any], *, source: str = "", default_name: str = "external") -> ContractFile:
    """Validate a contract mapping (the parsed YAML) and build the `ContractFile`.

    Raises:
        ConfigError: naming the key, what was received, what is expected and how to fix it.
    """
    from runtime.errors import ConfigError
    from runtime.preprocess import ColorMode

    where = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{where}a contract file holds a mapping of keys (classes, input_size, ...), got {type(data).__name__}"
        )
    unknown = sorted(str(k) for k in set(data) - set(CONTRACT_FILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}unknown contract key(s) {unknown}; valid keys: {list(CONTRACT_FILE_KEYS)} (docs/contract.md)"
        )
    missing = [k for k in _REQUIRED_FILE_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{where}contract lacks required key(s) {missing}; see docs/contract.md for an example")
    classes = data["classes"]
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise ConfigError(f"{where}classes must be a list of class names in logit order, got {classes!r}")
    if not classes:
        raise ConfigError(f"{where}classes is empty; list the class names in the order of the model's outputs")
    if len(classes) < 2:
        raise ConfigError(f"{where}classes lists {len(classes)} name ({list(classes)}); a classifier needs at least 2")
    bad = [c for c in classes if not isinstance(c, (str, int)) or isinstance(c, bool) or not str(c).strip()]
    if bad:
        raise ConfigError(f"{where}classes must be non-empty names, got {bad}")
    names = [str(c).strip() for c in classes]
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise ConfigError(f"{where}classes names {dupes} more than once; each output needs its own name")
    size = data["input_size"]
    if isinstance(size, bool) or not isinstance(size, (list, tuple)) or len(size) != 2:
        raise ConfigError(f"{where}input_size must be [height, width] in pixels, got {size!r}")
    mode = str(data["color_mode"]).lower()
    valid_modes = [m.value for m in ColorMode]
    if mode not in valid_modes:
        raise ConfigError(f"{where}color_mode must be one of {valid_modes}, got {data['color_mode']!r}")
    channels = 1 if mode == ColorMode.GRAY.value else 3
    spec_args: dict[str, Any] = {"input_size": tuple(size), "color_mode": mode}
    for key in ("mean", "std"):
        if key not in data:
            continue
        value = data[key]
        value = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(value, (list, tuple)) or len(value) not in (1, channels):
            n = len(value) if isinstance(value, (list, tuple)) else "a non-list"
            raise ConfigError(
                f"{where}{key} has {n} value(s) for color_mode {mode} ({channels} channel(s)); give 1 value or {channels}"
            )
        spec_args[key] = tuple(value)
    for key in ("scale", "resize", "interpolation"):
        if key in data:
            spec_args[key] = data[key]
    spec_args.setdefault("mean", (0.0,) * channels)
    spec_args.setdefault("std", (1.0,) * channels)
    try:
        spec = PreprocessSpec(**spec_args)
    except PipelineError as exc:
        raise ConfigError(f"{where}{exc}") from None
    layout = str(data.get("layout", "NCHW")).upper()
    if layout not in _LAYOUTS:
        raise ConfigError(
            f"{where}layout {data.get('layout')!r} is not supported; the pipeline feeds {_LAYOUTS[0]} "
            "(batch, channels, height, width): export the model with an NCHW input (add a transpose in front)"
        )
    opt: dict[str, str | None] = {}
    for key in ("input_name", "output_name", "model_name"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{where}{key} must be a non-empty string, got {value!r}")
        opt[key] = value.strip() if isinstance(value, str) else None
    try:
        contract = DeploymentContract(
            model_name=opt["model_name"] or default_name, class_names=tuple(names), preprocess=spec, source=source
        )
    except PipelineError as exc:
        raise ConfigError(str(exc)) from None
    return ContractFile(contract, opt["input_name"], opt["output_name"], layout, source)


def load_contract_file(path: str | os.PathLike) -> ContractFile:
    """Read and validate a contract YAML file (``docs/contract.md``).

    Raises:
        ConfigError: the file is missing, not YAML, or fails validation (the message says which key).
    """
    from runtime.configs import load_yaml

    p = Path(path)
    data = load_yaml(p)
    return contract_from_dict(data, source=str(p), default_name=p.stem.removesuffix(".contract") or "external")
