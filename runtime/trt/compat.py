"""The one module where TensorRT 10, TensorRT 11 and TensorRT for RTX differ.

JetPack 6 on Orin ships TensorRT 10.3 (Python 3.10); desktop pip ships 11.x. TensorRT 11 removed
the implicit-precision builder flags (``BuilderFlag.FP16``/``INT8``...), the INT8 calibrators and
``EXPLICIT_BATCH``: precision lives in the ONNX (Q/DQ for INT8, an FP16-cast graph for FP16) and the
network is built strongly typed. On 10.x the network is strongly typed too; the old flags remain
only as a *fallback* (`Typing.FLAGS`, or `Typing.AUTO` after a strongly typed build fails).

Every TensorRT name goes through a `Trt` object, which refuses names that
`runtime.trt.api_surface` does not declare for the active branch. That keeps the declared table
equal to what the code uses, and the API-surface test checks the table against the real 10.3,
10.13 and 11.4 bindings wheels.

TensorRT for RTX (``tensorrt_rtx``, versions 1.x; the ``rtx`` flavour, ``"rtx"`` branch) is the
third flavour: NVIDIA's TensorRT for RTX GPUs, installable from the registry (``pip install
'.[rtx]'``, x86-64 Linux/Windows). Same Builder/OnnxParser/strongly-typed API as 11, plus:

- builds are *ahead of time*: no GPU is needed to build; the plan targets a set of compute
  capabilities (default 8.0, 8.6, 8.9, 12.0; 7.5 on request) instead of the GPU that builds it;
- the realized precision per layer comes from the build log (the engine inspector needs a
  deserialized engine, which needs a supported GPU);
- no timing cache (a no-op since RTX 1.2), no DLA, no version-compatible/lean plans, no aarch64.

The flavour is chosen automatically (full TensorRT when importable, else TensorRT for RTX) or
explicitly (``flavour="tensorrt"|"rtx"``, the CLI's ``--flavour``). Everything that differs is a
`Trt` property or method here; the build code asks (``trt.aot``, ``trt.uses_timing_cache``...)
instead of testing versions.

TensorRT is imported inside functions (`import_tensorrt`); a missing install raises
`MissingDependencyError` naming ``pip install '.[trt]'`` (or ``'.[rtx]'``).
"""

from __future__ import annotations

import enum
import importlib
import logging
import re
from collections.abc import Sequence
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
RTX_INSTALL_HINT = (
    "install TensorRT for RTX with pip install '.[rtx]' (x86-64 Linux; `make setup` does it there); "
    "it builds engines without a GPU"
)
LEAN_INSTALL_HINT = (
    "install the lean runtime with pip install tensorrt-lean-cu13 (or JetPack's python3-libnvinfer-lean)"
)

# Import names, most specific first: the pip meta-package and JetPack install `tensorrt`; the bare
# bindings wheel installs `tensorrt_bindings` (same for the lean runtime).
_FULL_MODULES = ("tensorrt", "tensorrt_bindings")
_LEAN_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings")
_RTX_MODULES = ("tensorrt_rtx",)
MIN_MAJOR = 10
NEWEST_KNOWN_MAJOR = 11
RTX_MIN = (1, 0)


class Flavour(str, enum.Enum):
    """Which TensorRT: the full library (10.x / 11.x) or TensorRT for RTX (1.x)."""

    TENSORRT = "tensorrt"
    RTX = "rtx"


FLAVOUR_CHOICES = ("auto", Flavour.TENSORRT.value, Flavour.RTX.value)

#: Compute capabilities an RTX plan runs on when no target is set (TensorRT-RTX's portable default).
RTX_DEFAULT_TARGETS: tuple[str, ...] = ("8.0", "8.6", "8.9", "12.0")
#: Compute capability -> ``ComputeCapability`` member (TensorRT for RTX 1.7).
RTX_TARGETS: dict[str, str] = {
    "7.5": "SM75",
    "8.0": "SM80",
    "8.6": "SM86",
    "8.9": "SM89",
    "12.0": "SM120",
    "12.1": "SM121",
}


def parse_flavour(value: str | Flavour | None) -> Flavour | None:
    """``None``/``"auto"`` -> None (detect), else the `Flavour` (raises `ConfigError` when unknown)."""
    if value is None or isinstance(value, Flavour):
        return value
    text = str(value).strip().lower()
    if text in ("", "auto"):
        return None
    try:
        return Flavour(text)
    except ValueError:
        raise ConfigError(f"unknown TensorRT flavour {value!r}; valid: {list(FLAVOUR_CHOICES)}") from None


def parse_targets(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"8.6,8.9,12.0"`` (or ``["86", "sm_89", "12.0"]``) -> ``("8.6", "8.9", "12.0")``, sorted, unique.

    An empty value means the flavour's default. Raises `ConfigError` for a capability TensorRT for
    RTX cannot target (the message lists the valid ones).
    """
    if value is None:
        return ()
    items = [p for p in (value.split(",") if isinstance(value, str) else value)]
    out = []
    for item in items:
        text = str(item).strip().lower().removeprefix("sm_").removeprefix("sm")
        if not text:
            continue
        if "." not in text and text.isdigit() and len(text) >= 2:
            text = f"{text[:-1]}.{text[-1]}"
        if text not in RTX_TARGETS:
            raise ConfigError(
                f"compute capability {item!r} cannot be targeted by TensorRT for RTX; valid: "
                f"{', '.join(RTX_TARGETS)} (e.g. --compute-capability 8.6,8.9,12.0)"
            )
        out.append(text)
    return tuple(sorted(set(out), key=lambda t: tuple(int(x) for x in t.split("."))))


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
        log.warning(
            "TensorRT %s is newer than the newest version this code knows (%d.x); using the 11 branch",
            v,
            NEWEST_KNOWN_MAJOR,
        )
    return "11"


def import_tensorrt(*, lean: bool = False, flavour: str | Flavour | None = None):
    """Import the TensorRT Python module (full, lean runtime, or TensorRT for RTX).

    Args:
        lean: The lean runtime (full TensorRT only).
        flavour: ``tensorrt``, ``rtx`` or None/``auto``: full TensorRT when importable, else RTX.

    Returns:
        The module.

    Raises:
        MissingDependencyError: when no candidate imports; the message lists every attempt and
            how to install.
        ConfigError: ``lean`` with the RTX flavour (it has no lean runtime).
    """
    flavour = parse_flavour(flavour)
    if lean and flavour is Flavour.RTX:
        raise ConfigError("TensorRT for RTX has no lean runtime; drop lean=True or use --flavour tensorrt")
    if lean:
        candidates, hint = _LEAN_MODULES, LEAN_INSTALL_HINT
    elif flavour is Flavour.TENSORRT:
        candidates, hint = _FULL_MODULES, INSTALL_HINT
    elif flavour is Flavour.RTX:
        candidates, hint = _RTX_MODULES, RTX_INSTALL_HINT
    else:
        candidates, hint = _FULL_MODULES + _RTX_MODULES, f"{INSTALL_HINT}; or {RTX_INSTALL_HINT}"
    attempts = []
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ImportError as exc:  # also OSError-like failures from missing libnvinfer
            attempts.append(f"import {name}: {exc}")
        except OSError as exc:
            attempts.append(f"import {name}: {exc}")
    what = "TensorRT lean runtime" if lean else ("TensorRT for RTX" if flavour is Flavour.RTX else "TensorRT")
    raise MissingDependencyError(f"{what} is not importable ({'; '.join(attempts)}); {hint}")


def target_unsupported_reason(
    compute_capability: str, targets: Sequence[str] = RTX_DEFAULT_TARGETS, gpu_name: str = "this GPU"
) -> str:
    """ "" when an ahead-of-time plan for ``targets`` runs on a GPU of ``compute_capability``, else why not.

    TensorRT for RTX supports RTX-class GPUs only (Turing 7.5 on request, Ampere 8.0/8.6, Ada 8.9,
    Blackwell 12.0/12.1); data-centre Hopper (H100/H200, 9.0) is not in its support matrix.
    """
    cc = str(compute_capability).strip()
    if cc in targets:
        return ""
    if cc not in RTX_TARGETS:
        return (
            f"{gpu_name} has compute capability {cc}, which TensorRT for RTX does not support (it targets "
            f"{', '.join(RTX_TARGETS)}; H100/H200 are 9.0): RTX engines cannot run here"
        )
    return (
        f"{gpu_name} has compute capability {cc}, not among the engine's targets {', '.join(targets)}; rebuild with "
        f"--compute-capability {cc}"
    )


def flavour_of(module: Any) -> Flavour:
    """The flavour of an imported module, from its name (``tensorrt_rtx`` -> RTX)."""
    return Flavour.RTX if str(getattr(module, "__name__", "")).startswith("tensorrt_rtx") else Flavour.TENSORRT


def tensorrt_unavailable_reason(*, lean: bool = False, flavour: str | Flavour | None = None) -> str:
    """ "" when TensorRT imports here and is a supported version, else why not (never raises)."""
    try:
        trt = Trt.load(lean=lean, flavour=flavour)
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
        flavour: `Flavour.TENSORRT` or `Flavour.RTX` (from the module's name unless given).
        branch: ``"10"``, ``"11"`` or ``"rtx"``.
        lean: True for the lean runtime (runtime names only).
    """

    def __init__(
        self,
        module: Any,
        version: str | TrtVersion | None = None,
        *,
        lean: bool = False,
        flavour: str | Flavour | None = None,
    ) -> None:
        self.module = module
        raw = version if version is not None else getattr(module, "__version__", None)
        if raw is None:
            raise TrtError(f"{getattr(module, '__name__', module)!r} has no __version__; is it really TensorRT?")
        self.version = raw if isinstance(raw, TrtVersion) else TrtVersion.parse(str(raw))
        self.flavour = parse_flavour(flavour) or flavour_of(module)
        if self.flavour is Flavour.RTX:
            if lean:
                raise ConfigError("TensorRT for RTX has no lean runtime; drop lean=True or use --flavour tensorrt")
            if (self.version.major, self.version.minor) < RTX_MIN:
                raise ConfigError(
                    f"TensorRT for RTX {self.version} is too old: this project needs 1.0 or newer; pip install '.[rtx]'"
                )
            self.branch = "rtx"
        else:
            self.branch = branch_for(self.version)
        self.lean = lean
        self._allowed = api_surface.names_for(self.branch, lean=lean)

    @classmethod
    def load(cls, *, lean: bool = False, flavour: str | Flavour | None = None) -> Trt:
        """Import TensorRT (`import_tensorrt`) and wrap it."""
        module = import_tensorrt(lean=lean, flavour=flavour)
        return cls(module, lean=lean, flavour=flavour_of(module))

    def __repr__(self) -> str:
        return f"Trt({self.flavour.value} {self.version}, branch={self.branch}{', lean' if self.lean else ''})"

    @property
    def label(self) -> str:
        """``TensorRT 10.3.0`` or ``TensorRT for RTX 1.7.1.116`` (logs, reports)."""
        return f"{'TensorRT for RTX' if self.flavour is Flavour.RTX else 'TensorRT'} {self.version}"

    # ---- flavour differences ----------------------------------------------------------------------
    @property
    def aot(self) -> bool:
        """True when a plan is built ahead of time, without a GPU, for target compute capabilities
        (TensorRT for RTX); False when the building GPU decides the plan (TensorRT 10/11)."""
        return self.flavour is Flavour.RTX

    @property
    def uses_timing_cache(self) -> bool:
        """TensorRT for RTX ignores timing caches (a deprecated no-op since RTX 1.2)."""
        return self.flavour is not Flavour.RTX

    @property
    def layers_from_build_log(self) -> bool:
        """Where the per-layer precision comes from: the build log (RTX: no GPU needed) or the
        engine inspector of the deserialized plan (10/11: needs the GPU that built it)."""
        return self.flavour is Flavour.RTX

    def resolve_targets(self, targets: Sequence[str] | str | None) -> tuple[tuple[str, ...], bool]:
        """(compute capabilities the plan will run on, whether they are the flavour's default).

        TensorRT 10/11 build for the GPU they run on: asking for targets there is a `ConfigError`.
        """
        targets = parse_targets(targets)
        if self.flavour is not Flavour.RTX:
            if targets:
                raise ConfigError(
                    f"--compute-capability needs TensorRT for RTX (ahead-of-time builds); {self.label} "
                    "builds for the GPU it runs on. Use --flavour rtx (pip install '.[rtx]') or drop it"
                )
            return (), False
        if not targets:
            return RTX_DEFAULT_TARGETS, True
        return targets, False

    def set_targets(self, config: Any, targets: Sequence[str]) -> None:
        """Set explicit target compute capabilities on a builder config (RTX; nothing for the default)."""
        if not targets:
            return
        if self.flavour is not Flavour.RTX:
            raise ConfigError(f"{self.label} cannot build for other compute capabilities; use --flavour rtx")
        self.write(config, "IBuilderConfig.num_compute_capabilities", len(targets))
        for i, target in enumerate(targets):
            member = self.get(f"ComputeCapability.{RTX_TARGETS[target]}")
            if not self.call(config, "IBuilderConfig.set_compute_capability", member, i):
                raise TrtError(f"{self.label} refused compute capability {target} at index {i}")

    def check_build_options(self, *, dla_core: int | None, version_compatible: bool) -> None:
        """Refuse options this flavour cannot honour, before anything is built."""
        if self.flavour is not Flavour.RTX:
            return
        if dla_core is not None:
            raise ConfigError(
                "--dla-core: TensorRT for RTX has no DLA support (Jetson DLA needs TensorRT 10.3 "
                "from JetPack); drop --dla-core or use --flavour tensorrt"
            )
        if version_compatible:
            raise ConfigError(
                "--version-compatible: TensorRT for RTX has no lean runtime to load such a plan "
                "(the build fails looking for libnvinfer_lean); drop it or use --flavour tensorrt"
            )

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
        """A TensorRT logger that forwards to Python logging (``runtime.trt.tensorrt``).

        It also keeps, in ``logger.errors``, every ERROR/INTERNAL_ERROR message (so a failed build can
        say why) and, in ``logger.layer_log``, the build's per-layer listing (``Layers:`` message,
        printed with detailed profiling verbosity at VERBOSE severity).
        """
        base = self.get("ILogger")
        levels = {}
        for sev, level in (
            ("INTERNAL_ERROR", logging.CRITICAL),
            ("ERROR", logging.ERROR),
            ("WARNING", logging.WARNING),
            ("INFO", logging.INFO),
            ("VERBOSE", logging.DEBUG),
        ):
            levels[self.get(f"ILogger.{sev}")] = level
        trt_log = logging.getLogger("runtime.trt.tensorrt")

        def __init__(self_):  # noqa: N807 - pybind trampolines need the base __init__ called
            base.__init__(self_)

        def log_(self_, severity, msg):
            # TensorRT's INFO is chatty (tactic choices); keep it at DEBUG unless asked.
            level = levels.get(severity, logging.INFO)
            text = str(msg)
            if level >= logging.ERROR:
                self_.errors.append(text)
            if text.startswith("Layers:"):
                self_.layer_log.append(text)
                if not trt_log.isEnabledFor(logging.DEBUG):
                    return
            trt_log.log(logging.DEBUG if level == logging.INFO else level, "%s", text)

        logger = type("FerdeployTrtLogger", (base,), {"__init__": __init__, "log": log_})()
        logger.errors = []
        logger.layer_log = []
        return logger

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
                f"--typing flags needs TensorRT 10: {self.label} removed the precision builder "
                "flags (FP16/INT8) and INT8 calibrators (TensorRT for RTX never had them); precision must come from the ONNX (FP16-cast or "
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
        raise TrtError(
            f"TensorRT data type {trt_dtype!r} has no numpy equivalent here (BF16/FP8/INT4 I/O "
            "is not supported by this harness); export the model with float32/float16 I/O"
        )
