"""Every TensorRT name the project uses, per branch, and the check against real bindings.

TensorRT's Python API differs between 10.x (JetPack 6 ships 10.3) and 11.x (pip): 11 removed the
implicit-precision builder flags, INT8 calibrators and ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``.
TensorRT for RTX (``tensorrt_rtx``, versions 1.x, the ``"rtx"`` branch) has the same builder,
parser and runtime names as 11, no precision flags either, plus the target compute capabilities
of an ahead-of-time build (``IBuilderConfig.set_compute_capability``, ``ComputeCapability.SM86``).
`runtime.trt.compat.Trt` refuses any name not declared here for the active branch, so this table
*is* the list of names the code touches; `check_branch` verifies it against the names a real
bindings wheel exports, and `check_removed` that names removed in 11 sit on the 10 branch only.

How names are read from a wheel without the TensorRT libraries (which cannot be installed here):

- ``introspect`` (exact): compile tiny stub ``libnvinfer*.so.N`` files with the system C compiler,
  load them with RTLD_GLOBAL in a child process, import the wheel's extension module and list
  ``dir()`` of the module and of every class. The bindings only call into libnvinfer when a
  builder/runtime is created, so import succeeds with stubs.
- ``strings`` (fallback when no C compiler or another Python): every NUL-terminated string of the
  extension module. Weaker: the linker merges a string into the tail of a longer one (``INT8``
  lives inside ``UINT8``), so a member counts as present when it ends any string, and the class a
  member belongs to cannot be checked.

The RTX bindings come with real libraries on the registry (``pip install '.[rtx]'``), so the
installed module is introspected directly (`read_module_surface`) instead of a stubbed wheel.

Names are dotted: ``Builder`` (module level), ``BuilderFlag.FP16`` (class member). Python-level
names (``__version__``) come from the wheel's ``__init__.py``.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.errors import ArtifactError

log = logging.getLogger(__name__)

BRANCHES: tuple[str, ...] = ("10", "11", "rtx")

# ---- what the code uses --------------------------------------------------------------------------
# Runtime side: what a device with only the lean runtime (tensorrt_lean) must offer.
_RUNTIME: frozenset[str] = frozenset(
    {
        "__version__",
        "Logger",
        "Logger.WARNING",
        "ILogger",
        "ILogger.INTERNAL_ERROR",
        "ILogger.ERROR",
        "ILogger.WARNING",
        "ILogger.INFO",
        "ILogger.VERBOSE",
        "Runtime",
        "Runtime.deserialize_cuda_engine",
        "Runtime.engine_host_code_allowed",
        "ICudaEngine.num_io_tensors",
        "ICudaEngine.get_tensor_name",
        "ICudaEngine.get_tensor_mode",
        "ICudaEngine.get_tensor_dtype",
        "ICudaEngine.get_tensor_shape",
        "ICudaEngine.get_tensor_profile_shape",
        "ICudaEngine.create_execution_context",
        "TensorIOMode.INPUT",
        "TensorIOMode.OUTPUT",
        "DataType.FLOAT",
        "DataType.HALF",
        "DataType.INT8",
        "DataType.UINT8",
        "DataType.INT32",
        "DataType.INT64",
        "DataType.BOOL",
        "IExecutionContext.set_input_shape",
        "IExecutionContext.set_tensor_address",
        "IExecutionContext.get_tensor_shape",
        "IExecutionContext.execute_async_v3",
    }
)

# Builder side (full TensorRT only), identical on 10 and 11.
_BUILDER: frozenset[str] = frozenset(
    {
        "Builder",
        "Builder.create_network",
        "Builder.create_builder_config",
        "Builder.create_optimization_profile",
        "Builder.build_serialized_network",
        "Builder.num_DLA_cores",
        "NetworkDefinitionCreationFlag.STRONGLY_TYPED",
        "INetworkDefinition.num_inputs",
        "INetworkDefinition.get_input",
        "ITensor.name",
        "ITensor.shape",
        "OnnxParser",
        "OnnxParser.parse_from_file",
        "OnnxParser.num_errors",
        "OnnxParser.get_error",
        "ParserError.desc",
        "ParserError.node_name",
        "IBuilderConfig.set_memory_pool_limit",
        "MemoryPoolType.WORKSPACE",
        "IBuilderConfig.builder_optimization_level",
        "IBuilderConfig.max_aux_streams",
        "IBuilderConfig.profiling_verbosity",
        "ProfilingVerbosity.DETAILED",
        "IBuilderConfig.add_optimization_profile",
        "IOptimizationProfile.set_shape",
        "IBuilderConfig.create_timing_cache",
        "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.get_timing_cache",
        "ITimingCache.serialize",
        "IBuilderConfig.set_flag",
        "BuilderFlag.VERSION_COMPATIBLE",
        "BuilderFlag.GPU_FALLBACK",
        "IBuilderConfig.default_device_type",
        "DeviceType.DLA",
        "IBuilderConfig.DLA_core",
        "ICudaEngine.create_engine_inspector",
        "EngineInspector.get_engine_information",
        "LayerInformationFormat.JSON",
    }
)

#: Declared surface: names every branch uses ("common"), names one branch only uses, and the
#: names the lean runtime path uses (checked against the tensorrt-lean bindings wheel).
API_SURFACE: Mapping[str, frozenset[str]] = {
    "common": _RUNTIME | _BUILDER,
    # Weakly typed fallback on 10.x only: precision from builder flags (Q/DQ still decides INT8
    # scales; there is no calibrator anywhere in this project).
    "10": frozenset({"BuilderFlag.FP16", "BuilderFlag.INT8"}),
    "11": frozenset(),
    # TensorRT for RTX: the targets of an ahead-of-time build (no GPU needed to build).
    "rtx": frozenset(
        {
            "IBuilderConfig.num_compute_capabilities",
            "IBuilderConfig.set_compute_capability",
            "IBuilderConfig.get_compute_capability",
            "ComputeCapability.SM75",
            "ComputeCapability.SM80",
            "ComputeCapability.SM86",
            "ComputeCapability.SM89",
            "ComputeCapability.SM120",
            "ComputeCapability.SM121",
        }
    ),
    "lean": _RUNTIME,
}

#: Names TensorRT 11 removed. They may appear on the 10 branch only (verified against the 11.4
#: bindings: none of them exists there).
REMOVED_IN_11: frozenset[str] = frozenset(
    {
        "BuilderFlag.FP16",
        "BuilderFlag.INT8",
        "BuilderFlag.BF16",
        "BuilderFlag.FP8",
        "BuilderFlag.INT4",
        "BuilderFlag.OBEY_PRECISION_CONSTRAINTS",
        "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
        "IInt8Calibrator",
        "IInt8EntropyCalibrator",
        "IInt8EntropyCalibrator2",
        "IInt8MinMaxCalibrator",
        "IInt8LegacyCalibrator",
        "CalibrationAlgoType",
        "IBuilderConfig.int8_calibrator",
        "Builder.platform_has_fast_fp16",
        "Builder.platform_has_fast_int8",
        "NetworkDefinitionCreationFlag.EXPLICIT_BATCH",
    }
)


def names_for(
    branch: str, *, lean: bool = False, declared: Mapping[str, Iterable[str]] = API_SURFACE
) -> frozenset[str]:
    """Names the code may use on ``branch`` ("10", "11" or "rtx"); ``lean`` narrows to the lean runtime's."""
    if branch not in BRANCHES:
        raise ValueError(f"unknown TensorRT branch {branch!r}; valid: {list(BRANCHES)}")
    if lean:
        if branch == "rtx":
            raise ValueError("TensorRT for RTX has no lean runtime")
        return frozenset(declared["lean"])
    return frozenset(declared["common"]) | frozenset(declared.get(branch, ()))


def check_removed(declared: Mapping[str, Iterable[str]] = API_SURFACE) -> list[str]:
    """Names removed in TensorRT 11 that are declared outside the 10 branch (empty list = fine)."""
    problems = []
    for section in ("common", "11", "rtx", "lean"):
        for name in sorted(set(declared.get(section, ())) & REMOVED_IN_11):
            problems.append(
                f"{name} is declared in {section!r} but TensorRT 11 removed it: use it on the '10' branch only"
            )
    return problems


# ---- what a wheel offers --------------------------------------------------------------------------
_WHEEL_RE = re.compile(r"^(?P<dist>tensorrt[a-z0-9_]*?)-(?P<version>\d+(?:\.\d+)+)-(?P<py>cp\d+)-")
_STUB_SYMBOLS = (
    # Every libnvinfer* symbol the 10.3/10.13/11.4 and lean bindings import (nm -D --undefined-only).
    "createInferBuilder_INTERNAL",
    "createInferRefitter_INTERNAL",
    "createInferRuntime_INTERNAL",
    "createNvOnnxParserRefitter_INTERNAL",
    "createNvOnnxParser_INTERNAL",
    "getBuilderPluginRegistry",
    "getNvOnnxParserVersion",
    "getPluginRegistry",
    "initLibNvInferPlugins",
    "getInferLibVersion",
)
_PROBE = r"""
import ctypes, importlib.machinery, importlib.util, json, os, sys
stub_dir, so_path, mod_name = sys.argv[1:4]
for f in sorted(os.listdir(stub_dir)):
    ctypes.CDLL(os.path.join(stub_dir, f), mode=ctypes.RTLD_GLOBAL)
loader = importlib.machinery.ExtensionFileLoader(mod_name, so_path)
spec = importlib.util.spec_from_file_location(mod_name, so_path, loader=loader)
mod = importlib.util.module_from_spec(spec)
loader.exec_module(mod)
import inspect
kinds = {}
for n in dir(mod):
    if n.startswith("_"):
        continue
    obj = getattr(mod, n)
    kinds[n] = "class" if isinstance(obj, type) else ("function" if callable(obj) else "value")
    if isinstance(obj, type):
        for a in dir(obj):
            if a.startswith("_"):
                continue
            raw = inspect.getattr_static(obj, a)
            kinds[f"{n}.{a}"] = "property" if isinstance(raw, property) else (
                "method" if callable(raw) or type(raw).__name__ == "instancemethod" else "value")
print(json.dumps(kinds))
"""


@dataclass(frozen=True)
class WheelSurface:
    """The names one TensorRT bindings wheel exports.

    Attributes:
        wheel: The wheel file name.
        version: TensorRT version from the file name (``10.3.0``).
        module: Extension module name (``tensorrt`` or ``tensorrt_lean``).
        method: ``introspect`` (exact) or ``strings`` (NUL-terminated strings; see module doc).
        names: Exact dotted names (``introspect``) or the raw strings (``strings``).
        python_names: Names defined in the wheel's ``__init__.py`` (``__version__``...).
        kinds: ``introspect`` only: name -> ``property`` | ``method`` | ``value`` | ``class`` |
            ``function``, so code can be checked to *call* methods and *read* properties.
    """

    wheel: str
    version: str
    module: str
    method: str
    names: frozenset[str]
    python_names: frozenset[str] = field(default=frozenset())
    kinds: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def branch(self) -> str:
        if self.module.startswith("tensorrt_rtx"):
            return "rtx"
        return "10" if int(self.version.split(".")[0]) == 10 else "11"

    @property
    def exact(self) -> bool:
        return self.method == "introspect"

    def __contains__(self, name: str) -> bool:
        if name in self.python_names:
            return True
        if self.exact:
            return name in self.names
        return all(part in self._tails for part in name.split("."))

    @functools.cached_property
    def _tails(self) -> frozenset[str]:
        # A string the linker merged into the end of a longer one is still a valid C string.
        return frozenset(s[i:] for s in self.names if len(s) <= 64 for i in range(len(s)))


def check_branch(
    surface: WheelSurface, *, lean: bool = False, declared: Mapping[str, Iterable[str]] = API_SURFACE
) -> list[str]:
    """Declared names of the wheel's branch that the wheel does not export (empty list = fine)."""
    wanted = names_for(surface.branch, lean=lean, declared=declared)
    return [
        f"{name} (declared for TensorRT {surface.branch}.x{' lean' if lean else ''}) is not in {surface.wheel} "
        f"[{surface.method}]"
        for name in sorted(wanted)
        if name not in surface
    ]


def wheel_version(wheel: str | os.PathLike) -> str:
    """``tensorrt_cu12_bindings-10.3.0-cp311-...whl`` -> ``10.3.0``."""
    m = _WHEEL_RE.match(Path(wheel).name)
    if not m:
        raise ArtifactError(f"{wheel}: not a TensorRT bindings wheel name (expected tensorrt*-VERSION-cpXY-...whl)")
    return m.group("version")


def read_wheel_surface(wheel: str | os.PathLike, cache_dir: str | os.PathLike, *, method: str = "auto") -> WheelSurface:
    """Extract (and cache as JSON beside the unpacked wheel) the names ``wheel`` exports.

    Args:
        wheel: A ``tensorrt*-bindings`` wheel file.
        cache_dir: Folder for the unpacked module, stub libraries and the cached name list.
        method: ``introspect``, ``strings`` or ``auto`` (introspect when a C compiler and the
            wheel's Python tag fit this interpreter, else strings).

    Returns:
        The wheel's `WheelSurface`.
    """
    wheel = Path(wheel)
    if not wheel.is_file():
        raise ArtifactError(f"{wheel}: wheel not found")
    m = _WHEEL_RE.match(wheel.name)
    if not m:
        raise ArtifactError(f"{wheel}: not a TensorRT bindings wheel name")
    version, py_tag = m.group("version"), m.group("py")
    here = Path(cache_dir) / wheel.name.removesuffix(".whl")
    here.mkdir(parents=True, exist_ok=True)
    so_path, init_path = _unpack(wheel, here)
    module = so_path.name.split(".")[0]
    same_python = py_tag == f"cp{sys.version_info.major}{sys.version_info.minor}"
    compiler = _c_compiler()
    if method == "auto":
        method = "introspect" if (compiler and same_python) else "strings"
    cached = here / f"surface.{method}.json"
    if cached.is_file() and cached.stat().st_mtime >= wheel.stat().st_mtime:
        data = json.loads(cached.read_text())
        names, kinds = data["names"], data.get("kinds", {})
    else:
        kinds = {}
        if method == "introspect":
            if not compiler or not same_python:
                raise ArtifactError(
                    f"{wheel.name}: introspection needs a C compiler (found {compiler!r}) and Python {py_tag} "
                    f"(running cp{sys.version_info.major}{sys.version_info.minor}); use method='strings'"
                )
            kinds = _introspect(so_path, module, here, compiler)
            names = sorted(kinds)
        elif method == "strings":
            names = _strings(so_path)
        else:
            raise ValueError(f"unknown method {method!r}; valid: auto, introspect, strings")
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps({"wheel": wheel.name, "method": method, "names": names, "kinds": kinds}))
        os.replace(tmp, cached)
    return WheelSurface(
        wheel=wheel.name,
        version=version,
        module=module,
        method=method,
        names=frozenset(names),
        python_names=_python_names(init_path),
        kinds=kinds,
    )


def read_module_surface(name: str = "tensorrt_rtx") -> WheelSurface:
    """The names an *installed* TensorRT module exports (``dir()`` of the module and its classes).

    For TensorRT for RTX, whose real libraries install from the registry: no stub libraries needed.

    Raises:
        ImportError: the module is not installed (callers skip or name the extra).
    """
    import importlib
    import inspect

    mod = importlib.import_module(name)
    kinds: dict[str, str] = {}
    for n in dir(mod):
        if n.startswith("_"):
            continue
        obj = getattr(mod, n)
        kinds[n] = "class" if isinstance(obj, type) else ("function" if callable(obj) else "value")
        if isinstance(obj, type):
            for a in dir(obj):
                if a.startswith("_"):
                    continue
                raw = inspect.getattr_static(obj, a)
                kinds[f"{n}.{a}"] = (
                    "property"
                    if isinstance(raw, property)
                    else ("method" if callable(raw) or type(raw).__name__ == "instancemethod" else "value")
                )
    python_names = frozenset(n for n in ("__version__",) if hasattr(mod, n))
    return WheelSurface(
        wheel=f"{name} (installed)",
        version=str(getattr(mod, "__version__", "0")),
        module=name,
        method="introspect",
        names=frozenset(kinds),
        python_names=python_names,
        kinds=kinds,
    )


def _unpack(wheel: Path, dest: Path) -> tuple[Path, Path]:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if re.fullmatch(r"tensorrt[a-z_]*/(tensorrt[a-z_]*\.so|__init__\.py)", n)]
        so = [n for n in members if n.endswith(".so")]
        init = [n for n in members if n.endswith("__init__.py")]
        if len(so) != 1 or len(init) != 1:
            raise ArtifactError(f"{wheel.name}: expected one extension module and one __init__.py, found {members}")
        for n in members:
            target = dest / Path(n).name
            if not target.is_file() or target.stat().st_size != zf.getinfo(n).file_size:
                target.write_bytes(zf.read(n))
    return dest / Path(so[0]).name, dest / "__init__.py"


def _c_compiler() -> str | None:
    for cand in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _needed_libraries(so_path: Path) -> list[str]:
    # The DT_NEEDED entries are plain strings in .dynstr; the nvinfer ones are all we stub.
    data = so_path.read_bytes()
    found = {m.decode() for m in re.findall(rb"(?<=\x00)(libnv(?:infer|onnxparser)[a-z_]*\.so\.\d+)(?=\x00)", data)}
    return sorted(found)


def _introspect(so_path: Path, module: str, work: Path, compiler: str) -> dict[str, str]:
    stub_dir = work / "stubs"
    stub_dir.mkdir(exist_ok=True)
    source = work / "stub.c"
    source.write_text("".join(f"void *{s}(void) {{ return 0; }}\n" for s in _STUB_SYMBOLS))
    for lib in _needed_libraries(so_path):
        target = stub_dir / lib
        if not target.is_file():
            subprocess.run(
                [compiler, "-shared", "-fPIC", "-o", str(target), f"-Wl,-soname,{lib}", str(source)],
                check=True,
                capture_output=True,
                timeout=120,
            )
    with tempfile.TemporaryDirectory() as tmp:
        # Run from an empty folder so nothing on the path shadows the extension module.
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _PROBE, str(stub_dir), str(so_path), module],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp,
        )
    if proc.returncode != 0:
        raise ArtifactError(f"introspecting {so_path} failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _strings(so_path: Path) -> list[str]:
    data = so_path.read_bytes()
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
    out = set()
    for raw in data.split(b"\x00"):
        try:
            s = raw.decode("ascii")
        except UnicodeDecodeError:
            continue
        # The tail of a merged string is itself a valid C string; keep the identifier tail.
        m = re.search(r"[A-Za-z_][A-Za-z0-9_]*$", s)
        if m and ident.fullmatch(m.group(0)):
            out.add(m.group(0))
    return sorted(out)


def _python_names(init_path: Path) -> frozenset[str]:
    tree = ast.parse(init_path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return frozenset(names)
