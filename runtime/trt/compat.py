"""The one module where TensorRT 10 and 11 differ.

JetPack 6 on Orin ships TensorRT 10.3 (Python 3.10); desktop pip ships 11.x. TensorRT 11 removed
the implicit-precision builder flags (``BuilderFlag.FP16``/``INT8``...), the INT8 calibrators and
``EXPLICIT_BATCH``: precision lives in the ONNX (Q/DQ for INT8, an FP16-cast graph for FP16) and the
network is built strongly typed. On 10.x the network is strongly typed too; the old flags remain
only as a *fallback* (`Typing.FLAGS`, or `Typing.AUTO` after a strongly typed build fails).

Every TensorRT name goes through a `Trt` object, which refuses names that
`runtime.trt.api_surface` does not declare for the active branch. That keeps the declared table
equal to what the code uses, and the API-surface test checks the table against the real 10.3,
10.13 and 11.4 bindings wheels.

TensorRT is imported inside functions (`import_tensorrt`); a missing install raises
`MissingDependencyError` naming ``pip install '.[trt]'``.
"""

from __future__ import annotations

import enum
import importlib
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError, EngineError, MissingDependencyError, PipelineError
from runtime.trt import api_surface

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install TensorRT with pip install '.[trt]' (desktop, TensorRT 11 from NVIDIA's index) or use the "
    "JetPack 6 system package python3-libnvinfer (TensorRT 10.3)"
)
LEAN_INSTALL_HINT = "install the lean runtime with pip install tensorrt-lean-cu13 (or JetPack's python3-libnvinfer-lean)"

# Import names, most specific first: the pip meta-package and JetPack install `tensorrt`; the bare
# bindings wheel installs `tensorrt_bindings` (same for the lean runtime).
_FULL_MODULES = ("tensorrt", "tensorrt_bindings")
_LEAN_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings")
MIN_MAJOR = 10
NEWEST_KNOWN_MAJOR = 11


class TrtError(EngineError):
    """TensorRT refused a network, a build or a plan; the message says what and how to fix it."""


class Typing(str, enum.Enum):
    """How the network's precision is decided.

    STRONG: the ONNX decides (strongly typed network); the only mode on TensorRT 11.
    FLAGS: weakly typed network plus BuilderFlag.FP16/INT8 (TensorRT 10 only; no calibrator).
    AUTO: STRONG, and on TensorRT 10 retry with FLAGS when the strongly typed build fails.
    """

    AUTO = "auto"
    STRONG = "strong"
    FLAGS = "flags"


@dataclass(frozen=True, order=True)
class TrtVersion:
    """A TensorRT version such as ``10.3.0`` or ``11.4.0.106``."""

    major: int
    minor: int
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        m = re.match(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
        if not m:
            raise ConfigError(f"cannot parse TensorRT version {text!r}; expected MAJOR.MINOR[.PATCH[.BUILD]]")
        return cls(*(int(g) if g else 0 for g in m.groups()))

    @property
    def branch(self) -> str:
        """``"10"`` or ``"11"``: which side of the 10/11 split this version is on."""
        return branch_for(self)

    def __str__(self) -> str:
        parts = [self.major, self.minor, self.patch] + ([self.build] if self.build else [])
        return ".".join(str(p) for p in parts)


def branch_for(version: TrtVersion | str) -> str:
    """The API branch of ``version``: ``"10"`` for 10.x, ``"11"`` for 11.x and newer.

    Raises:
        ConfigError: for TensorRT older than 10 (named tensors and ``execute_async_v3`` are 10+).
    """
    v = version if isinstance(version, TrtVersion) else TrtVersion.parse(version)
    if v.major < MIN_MAJOR:
        raise ConfigError(
            f"TensorRT {v} is not supported: this project needs TensorRT 10 (JetPack 6) or 11; "
            "upgrade JetPack or pip install '.[trt]'"
        )
    if v.major == 10:
        return "10"
    if v.major > NEWEST_KNOWN_MAJOR:
        log.warning("TensorRT %s is newer than the newest version this code knows (%d.x); using the 11 branch",
                    v, NEWEST_KNOWN_MAJOR)
    return "11"


def import_tensorrt(*, lean: bool = False):
    """Import the TensorRT Python module (full or lean runtime).

    Returns:
        The module.

    Raises:
        MissingDependencyError: when no candidate imports; the message lists every attempt and
            how to install.
    """
    attempts = []
    for name in _LEAN_MODULES if lean else _FULL_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # also OSError-like failures from missing libnvinfer
            attempts.append(f"import {name}: {exc}")
        except OSError as exc:
            attempts.append(f"import {name}: {exc}")
    hint = LEAN_INSTALL_HINT if lean else INSTALL_HINT
    raise MissingDependencyError(f"TensorRT{' lean runtime' if lean else ''} is not importable ({'; '.join(attempts)}); {hint}")


def tensorrt_unavailable_reason(*, lean: bool = False) -> str:
    """"" when TensorRT imports here and is a supported version, else why not (never raises)."""
    try:
        trt = Trt.load(lean=lean)
    except PipelineError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a broken install reads as "unavailable"
        return f"TensorRT import failed: {type(exc).__name__}: {exc}"
    return "" if trt else "TensorRT unavailable"


class Trt:
    """The TensorRT module seen through the declared API surface of one branch.

    Every attribute TensorRT code touches is spelled as a dotted name: ``get("BuilderFlag.FP16")``
    for module-level names, ``call(obj, "IBuilderConfig.set_flag", flag)`` for methods,
    ``read``/``write`` for properties. A name not declared for the branch raises `TrtError`
    before TensorRT is touched, so a 10.x-only flag can never be used on 11.

    Attributes:
        module: The imported module (or a test double).
        version: Parsed version.
        branch: ``"10"`` or ``"11"``.
        lean: True for the lean runtime (runtime names only).
    """

    def __init__(self, module: Any, version: str | TrtVersion | None = None, *, lean: bool = False) -> None:
        self.module = module
        raw = version if version is not None else getattr(module, "__version__", None)
        if raw is None:
            raise TrtError(f"{getattr(module, '__name__', module)!r} has no __version__; is it really TensorRT?")
        self.version = raw if isinstance(raw, TrtVersion) else TrtVersion.parse(str(raw))
        self.branch = branch_for(self.version)
        self.lean = lean
        self._allowed = api_surface.names_for(self.branch, lean=lean)

    @classmethod
    def load(cls, *, lean: bool = False) -> Trt:
        """Import TensorRT (`import_tensorrt`) and wrap it."""
        return cls(import_tensorrt(lean=lean), lean=lean)

    def __repr__(self) -> str:
        return f"Trt({self.version}, branch={self.branch}{', lean' if self.lean else ''})"

    # ---- the gate -------------------------------------------------------------------------------
    def allows(self, name: str) -> bool:
        return name in self._allowed

    def _check(self, name: str) -> str:
        if name not in self._allowed:
            raise TrtError(
                f"TensorRT name {name!r} is not declared for the {self.branch}.x branch"
                f"{' (lean runtime)' if self.lean else ''} in runtime/trt/api_surface.py; "
                "declare it there (the API-surface test then checks it against the bindings wheels)"
            )
        return name.rsplit(".", 1)[-1]

    def get(self, name: str) -> Any:
        """A module-level name: ``Builder``, ``BuilderFlag.FP16``, ``Logger.WARNING``."""
        self._check(name)
        obj = self.module
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def call(self, obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call method ``Class.method`` of ``obj``."""
        return getattr(obj, self._check(name))(*args, **kwargs)

    def read(self, obj: Any, name: str) -> Any:
        """Read property ``Class.prop`` of ``obj``."""
        return getattr(obj, self._check(name))

    def write(self, obj: Any, name: str, value: Any) -> None:
        """Set property ``Class.prop`` of ``obj``."""
        setattr(obj, self._check(name), value)

    # ---- logging --------------------------------------------------------------------------------
    def logger(self) -> Any:
        """A TensorRT logger that forwards to Python logging (``runtime.trt.tensorrt``)."""
        base = self.get("ILogger")
        levels = {}
        for sev, level in (("INTERNAL_ERROR", logging.CRITICAL), ("ERROR", logging.ERROR),
                           ("WARNING", logging.WARNING), ("INFO", logging.INFO), ("VERBOSE", logging.DEBUG)):
            levels[self.get(f"ILogger.{sev}")] = level
        trt_log = logging.getLogger("runtime.trt.tensorrt")

        def __init__(self_):  # noqa: N807 - pybind trampolines need the base __init__ called
            base.__init__(self_)

        def log_(self_, severity, msg):
            # TensorRT's INFO is chatty (tactic choices); keep it at DEBUG unless asked.
            level = levels.get(severity, logging.INFO)
            trt_log.log(logging.DEBUG if level == logging.INFO else level, "%s", msg)

        return type("FerdeployTrtLogger", (base,), {"__init__": __init__, "log": log_})()

    # ---- version differences --------------------------------------------------------------------
    def network_flags(self, typing: Typing) -> int:
        """Creation flags for ``Builder.create_network``.

        Strongly typed on both branches. A weakly typed network (``Typing.FLAGS``) exists only on
        10.x; TensorRT 11 networks are always explicit-batch and ``EXPLICIT_BATCH`` is gone.
        """
        typing = Typing(typing)
        if typing is Typing.FLAGS:
            self.require_flags_fallback()
            return 0
        return 1 << int(self.get("NetworkDefinitionCreationFlag.STRONGLY_TYPED"))

    def require_flags_fallback(self) -> None:
        if self.branch != "10":
            raise ConfigError(
                f"--typing flags needs TensorRT 10: TensorRT {self.version} removed the precision builder "
                "flags (FP16/INT8) and INT8 calibrators; precision must come from the ONNX (FP16-cast or "
                "Q/DQ INT8 graph). Use --typing strong (the default)"
            )

    def typings_to_try(self, typing: Typing) -> tuple[Typing, ...]:
        """``AUTO`` -> strong, then (10.x only) flags; explicit choices are tried alone."""
        typing = Typing(typing)
        if typing is Typing.AUTO:
            return (Typing.STRONG, Typing.FLAGS) if self.branch == "10" else (Typing.STRONG,)
        if typing is Typing.FLAGS:
            self.require_flags_fallback()
        return (typing,)

    def apply_precision_flags(self, config: Any, precision: str, typing: Typing) -> list[str]:
        """Set the 10.x precision flags for a weakly typed build; nothing on a strongly typed one.

        INT8 here still takes its scales from the ONNX Q/DQ nodes: no calibrator is ever set.

        Returns:
            Names of the flags set (for the sidecar).
        """
        if Typing(typing) is not Typing.FLAGS:
            return []
        self.require_flags_fallback()
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["FP16", "INT8"]}[precision]
        for flag in flags:
            # Reachable on the 10 branch only (require_flags_fallback): the gate would refuse
            # BuilderFlag.FP16 on 11, where it does not exist.
            self.call(config, "IBuilderConfig.set_flag", self.get(f"BuilderFlag.{flag}"))
        return [f"BuilderFlag.{f}" for f in flags]

    # ---- dtypes ---------------------------------------------------------------------------------
    def numpy_dtype(self, trt_dtype: Any) -> np.dtype:
        """numpy dtype of a TensorRT ``DataType`` (our own table: ``trt.nptype`` lives in
        ``__init__.py`` and is absent from some bindings builds)."""
        table = {
            "DataType.FLOAT": np.float32,
            "DataType.HALF": np.float16,
            "DataType.INT8": np.int8,
            "DataType.UINT8": np.uint8,
            "DataType.INT32": np.int32,
            "DataType.INT64": np.int64,
            "DataType.BOOL": np.bool_,
        }
        for name, np_type in table.items():
            if trt_dtype == self.get(name):
                return np.dtype(np_type)
        raise TrtError(f"TensorRT data type {trt_dtype!r} has no numpy equivalent here (BF16/FP8/INT4 I/O "
                       "is not supported by this harness); export the model with float32/float16 I/O")
