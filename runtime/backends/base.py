"""The one protocol every inference backend follows (Polygraphy's runner, made smaller).

    with get_backend("ort")("model.onnx", threads=1) as backend:   # __enter__ calls load()
        outputs = backend.infer({"input": batch})                   # dict name -> np.ndarray

- The constructor only stores the path and options (cheap, never fails on a missing library).
- `load()` does the heavy work (parse, build session/engine, allocate) and fills `input_specs` and
  `output_names`.
- `infer()` validates feeds against the model's inputs (names, dtypes, ranks, static dims; a
  dynamic batch dimension accepts any size) and raises a `DataError` that says what was received,
  what was expected and how to fix it, then calls the subclass's `_infer`.
- `close()` releases resources; the context manager closes on exit.
- `is_available()` / `unavailable_reason()` say whether the backend's libraries (and device) are
  present, without loading a model.
- `bench_fn(batch)` is an optional hook for latency: a zero-argument callable running one
  inference of ``batch`` samples on pre-staged inputs. GPU backends (TensorRT) return one that
  times device work with CUDA events and returns the compute time in ms (a float), so
  `runtime.latency.measure_latency` reports host and device time apart. The default returns None
  and the harness times `infer()` on a fixed random feed.

No torch here; numpy only.
"""

from __future__ import annotations

import abc
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.errors import ArtifactError, DataError, InferenceError, PipelineError

log = logging.getLogger(__name__)

Dim = int | str | None  # int: static; str/None: dynamic (symbolic name or unknown)


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one model input or output.

    Attributes:
        name: Tensor name in the graph.
        dtype: numpy dtype the backend expects.
        shape: Dimensions; an int is static, a str (symbolic name) or None is dynamic.
    """

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", np.dtype(self.dtype))
        object.__setattr__(self, "shape", tuple(_norm_dim(d) for d in self.shape))

    def is_dynamic(self, axis: int) -> bool:
        return not isinstance(self.shape[axis], int)

    def concrete_shape(self, batch: int) -> tuple[int, ...]:
        """Shape with dynamic dims filled: axis 0 by ``batch``; other dynamic dims cannot be guessed."""
        out = []
        for i, d in enumerate(self.shape):
            if isinstance(d, int):
                out.append(d)
            elif i == 0:
                out.append(batch)
            else:
                raise DataError(f"input {self.name!r} has dynamic dimension {i} ({d!r}); give a concrete shape")
        return tuple(out)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


def _norm_dim(d: Any) -> Dim:
    if d is None or isinstance(d, str):
        return d
    d = int(d)
    return d if d > 0 else None  # ONNX/TensorRT write -1 or 0 for a dynamic dimension


def check_feeds(feeds: Mapping[str, Any], specs: tuple[TensorSpec, ...], *, where: str = "") -> None:
    """Validate ``feeds`` against ``specs``; raise `InferenceError` naming every mismatch.

    Checks: the set of names, that each value is a numpy array of the expected dtype and rank,
    static dims equal, dynamic dims positive, and dynamic dims sharing a symbolic name agree across
    inputs (e.g. every input's ``batch``).
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(feeds, Mapping):
        raise InferenceError(f"{prefix}feeds must be a dict of input name -> numpy array, got {type(feeds).__name__}")
    names = {s.name for s in specs}
    missing = sorted(names - set(feeds))
    unexpected = sorted(set(feeds) - names)
    if missing or unexpected:
        raise InferenceError(
            f"{prefix}feed names do not match the model's inputs: missing {missing}, unexpected {unexpected}; "
            f"expected {[s.describe() for s in specs]}"
        )
    symbols: dict[str, tuple[str, int]] = {}
    problems: list[str] = []
    for spec in specs:
        value = feeds[spec.name]
        if not isinstance(value, np.ndarray):
            problems.append(f"{spec.name!r} is a {type(value).__name__}, not a numpy array")
            continue
        if value.dtype != spec.dtype:
            problems.append(f"{spec.name!r} has dtype {value.dtype}, expected {spec.dtype} (cast with .astype)")
        if value.ndim != len(spec.shape):
            problems.append(
                f"{spec.name!r} has shape {value.shape} (rank {value.ndim}), expected rank {len(spec.shape)}"
            )
            continue
        for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
            if isinstance(want, int):
                if got != want:
                    problems.append(f"{spec.name!r} dimension {axis} is {got}, expected {want} (shape {value.shape})")
            elif got < 1:
                problems.append(f"{spec.name!r} dimension {axis} is {got}; a dynamic dimension must be >= 1")
            elif isinstance(want, str):
                seen = symbols.setdefault(want, (spec.name, got))
                if seen[1] != got:
                    problems.append(
                        f"{spec.name!r} dimension {axis} ({want}) is {got} but {seen[0]!r} has {want}={seen[1]}"
                    )
    if problems:
        raise InferenceError(
            f"{prefix}invalid feeds: " + "; ".join(problems) + f". Expected inputs: {[s.describe() for s in specs]}"
        )


def check_finite(feeds: Mapping[str, np.ndarray], *, where: str = "") -> None:
    """Raise `InferenceError` when a floating-point feed holds NaN or Inf.

    A NaN in the input gives a plausible-looking but meaningless class, so it is refused. The fast
    path is one float64 sum per input (a few microseconds for a face crop); only a non-finite sum
    pays for the exact count.
    """
    for name, value in feeds.items():
        if value.dtype.kind != "f" or np.isfinite(value.sum(dtype=np.float64)):
            continue
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        if nan == inf == 0:  # the sum overflowed; the values themselves are finite
            continue
        first = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
        prefix = f"{where}: " if where else ""
        raise InferenceError(
            f"{prefix}input {name!r} (shape {value.shape}) holds {nan} NaN and {inf} Inf value(s), the first at index "
            f"{first}; the model would return a meaningless class. Check the image decoding and preprocessing that "
            "made this batch (np.nan_to_num if such values are expected)."
        )


class Backend(abc.ABC):
    """Base class of inference backends.

    Subclasses set ``name`` and implement `_probe`, `_load`, `_infer` and (if they hold
    resources) `_close`. In `_load` they must set ``self._input_specs`` and ``self._output_names``.

    Attributes:
        name: Registry name (``ort``, ``torch``, ``trt``).
        path: The model file (ONNX, checkpoint or engine).
        options: Backend-specific options given to the constructor.
    """

    name: ClassVar[str] = "base"
    #: The project extra that provides this backend's libraries (for error messages).
    extra: ClassVar[str] = ""
    #: File suffixes this backend runs (a parity/bench sweep pairs files with backends by them).
    suffixes: ClassVar[tuple[str, ...]] = (".onnx",)
    #: False: a sweep with no --backends leaves it out (it runs only when named, e.g. ``openvino``).
    default_sweep: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        self.path = Path(path)
        self.options: dict[str, Any] = dict(options)
        self._input_specs: tuple[TensorSpec, ...] = ()
        self._output_names: tuple[str, ...] = ()
        self._loaded = False
        self._accepted: tuple | None = None  # signature of the last feeds that passed validation

    # ---- availability -------------------------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def _probe(cls) -> str | None:
        """Return None when usable here, else a reason (missing library, no GPU...)."""

    @classmethod
    def unavailable_reason(cls) -> str:
        """Why the backend cannot run here ("" when it can)."""
        try:
            reason = cls._probe()
        except Exception as exc:  # a broken install must read as "unavailable", not crash a sweep
            reason = f"probe failed: {type(exc).__name__}: {exc}"
        return reason or ""

    @classmethod
    def accepts(cls, path: str | os.PathLike) -> bool:
        """True when this backend can run ``path`` (by suffix; override for finer checks)."""
        return Path(path).suffix.lower() in cls.suffixes

    @classmethod
    def is_available(cls) -> bool:
        """True when the backend's libraries (and device, if any) are present."""
        return not cls.unavailable_reason()

    # ---- lifecycle ----------------------------------------------------------------------------
    def load(self) -> Backend:
        """Do the heavy work (session/engine creation). Idempotent; returns self."""
        if self._loaded:
            return self
        if not self.path.exists():
            raise ArtifactError(f"{self.path}: model file not found for backend {self.name!r}")
        self._load()
        if not self._input_specs or not self._output_names:
            raise PipelineError(f"backend {self.name!r} did not set input_specs/output_names in _load()")
        self._loaded = True
        log.debug(
            "%s loaded %s: inputs %s outputs %s",
            self.name,
            self.path,
            [s.describe() for s in self._input_specs],
            list(self._output_names),
        )
        return self

    def close(self) -> None:
        """Release the session/engine. Safe to call twice."""
        if self._loaded:
            self._close()
        self._loaded = False
        self._accepted = None

    def __enter__(self) -> Backend:
        return self.load()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise PipelineError(f"backend {self.name!r} for {self.path} is not loaded; call load() or use `with`")

    @property
    def input_specs(self) -> tuple[TensorSpec, ...]:
        """The model's inputs (after `load()`)."""
        self._require_loaded()
        return self._input_specs

    @property
    def output_names(self) -> tuple[str, ...]:
        """The model's output names, in graph order (after `load()`)."""
        self._require_loaded()
        return self._output_names

    # ---- inference ----------------------------------------------------------------------------
    def check_feeds(self, feeds: Mapping[str, Any]) -> None:
        """Validate feeds against `input_specs` (raises `DataError`).

        The (name, dtype, shape) signature of the last accepted feeds is remembered, so a loop
        feeding same-shaped batches pays one tuple comparison per call instead of a full check:
        harness overhead must stay far below the model's own latency (measured by ``bench``).
        """
        try:
            sig = tuple((k, v.dtype, v.shape) for k, v in feeds.items())
        except AttributeError:  # not a mapping of arrays: the full check explains what is wrong
            sig = None
        if sig is not None and sig == self._accepted:
            return
        check_feeds(feeds, self.input_specs, where=f"{self.name} {self.path.name}")
        self._accepted = sig

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Feeds are validated first (names, dtypes, shapes, NaN/Inf); outputs keyed by name."""
        self._require_loaded()
        self.check_feeds(feeds)
        check_finite(feeds, where=f"{self.name} {self.path.name}")
        return self._infer(feeds)

    def bench_fn(self, batch: int) -> Callable[[], Any] | None:
        """Optional latency hook: a callable running one inference of ``batch`` pre-staged samples.

        GPU backends return a callable that returns the device compute time in milliseconds
        (CUDA events around the enqueue) so host and device time are reported apart. None means
        "time `infer()` on a fixed feed" (what the CPU backends do).
        """
        return None

    def describe(self) -> dict[str, Any]:
        """What the backend ran with (provider, threads, versions...) for reports."""
        return {"backend": self.name, "path": str(self.path), "options": dict(self.options)}

    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def _close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (default: nothing)."""


def random_feeds(specs: tuple[TensorSpec, ...], batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random feeds of ``batch`` samples matching ``specs`` (for benchmarks)."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = spec.concrete_shape(batch)
        if np.issubdtype(spec.dtype, np.floating):
            out[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif np.issubdtype(spec.dtype, np.integer):
            out[spec.name] = rng.integers(0, 2, size=shape).astype(spec.dtype)
        else:
            out[spec.name] = np.zeros(shape, dtype=spec.dtype)
    return out
