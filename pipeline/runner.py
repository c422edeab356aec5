"""Artifacts, steps, stamps and the runner that reuses whatever is current.

After a step runs, ``stamps/<step>.json`` records the sha256 of its input files, its resolved
config, the versions of the libraries that decide its output, the sha256 of the project's own source
files that implement it (`pipeline.config.STAGE_CODE`) and the sha256 of its outputs. The next run
reruns a step only when one of those differs or an output is missing or was modified, and says
which (``--dry-run`` only says).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import (
    STAMP_DIR,
    STAMP_FORMAT,
    Stage,
    StageError,
    Variant,
    stage_code,
)
from runtime.artifacts import (
    atomic_write_json,
    library_versions,
    read_json,
    sha256_file,
)
from runtime.configs import to_dict
from runtime.errors import PipelineError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where every artifact lives inside the output folder."""

    out: Path

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    @property
    def checkpoint_json(self) -> Path:
        return self.out / "checkpoint.json"

    @property
    def onnx(self) -> Path:
        return self.out / "model.onnx"

    @property
    def onnx_sidecar(self) -> Path:
        return self.out / "model.onnx.json"

    @property
    def preflight(self) -> Path:
        return self.out / "model.preflight.json"

    @property
    def parity_dir(self) -> Path:
        return self.out / "parity"

    @property
    def bench_dir(self) -> Path:
        return self.out / "bench"

    @property
    def report_md(self) -> Path:
        return self.out / "report.md"

    @property
    def report_json(self) -> Path:
        return self.out / "report.json"

    @property
    def stamps(self) -> Path:
        return self.out / STAMP_DIR

    def quantized(self, v: Variant) -> Path:
        return self.out / v.file

    def rel(self, p: Path) -> str:
        try:
            return str(Path(p).relative_to(self.out))
        except ValueError:
            return str(p)


# --------------------------------------------------------------------------------------------
# Steps, stamps and the runner
# --------------------------------------------------------------------------------------------
@dataclass
class Step:
    """One unit of work.

    Attributes:
        name: Unique name (``quantize.int8-nncf``); its stamp is ``stamps/<name>.json``.
        stage: The stage it belongs to.
        run: Does the work; returns facts recorded in the stamp (JSON-able).
        inputs: Files whose content decides the output.
        outputs: Files the step writes (checked to exist after it ran; hashed into the stamp).
        config: The resolved config that decides the output.
        versions: Library names whose versions decide the output.
        extra: Anything else that decides it (dataset fingerprint, machine), or a callable giving it
            when the step is reached (files written by earlier steps of the same run).
        stamped: False for steps whose own cache decides reuse (TensorRT engines).
    """

    name: str
    stage: Stage
    run: Callable[[], Mapping[str, Any] | None]
    inputs: tuple[Path, ...] = ()
    outputs: tuple[Path, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    versions: tuple[str, ...] = ()
    extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] = field(default_factory=dict)
    stamped: bool = True


@dataclass(frozen=True)
class StepResult:
    """What happened to one step in this run.

    Attributes:
        name, stage: The step.
        status: ``ran``, ``reused``, ``skipped`` (not available here) or ``failed``.
        reason: Why it ran (what changed), was reused, or skipped.
        seconds: Wall time of this run's work (0 when reused).
        info: Facts the step returned (or the stamp's, when reused).
    """

    name: str
    stage: str
    status: str
    reason: str
    seconds: float = 0.0
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stage": self.stage,
            "status": self.status,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "info": _jsonable(self.info),
        }


@dataclass(frozen=True)
class PipelineResult:
    """The outcome of one `run_pipeline` call."""

    out: Path
    steps: tuple[StepResult, ...]
    seconds: float
    report: Path | None = None
    parity_passed: bool | None = None

    def ran(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "ran"]

    def reused(self) -> list[str]:
        return [s.name for s in self.steps if s.status == "reused"]


def _jsonable(obj: Any) -> Any:
    """Normalise to what a JSON round trip gives (tuples -> lists, Paths/Enums -> str)."""

    def default(o: Any) -> Any:
        if dataclasses.is_dataclass(o):
            return to_dict(o)
        if isinstance(o, enum.Enum):
            return o.value
        if hasattr(o, "tolist"):
            return o.tolist()
        return str(o)

    return json.loads(json.dumps(obj, sort_keys=True, default=default))


def _versions(names: Sequence[str]) -> dict[str, str | None]:
    allv = library_versions()
    out: dict[str, str | None] = {}
    for n in names:
        if n in allv:
            out[n] = allv[n]
        else:
            import importlib.metadata as md

            try:
                out[n] = md.version(n)
            except md.PackageNotFoundError:
                out[n] = None
    return out


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (for "why did this rerun" messages)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _diff_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(value)"]


class Runner:
    """Runs steps in order, reusing those whose stamp matches (see the module docstring)."""

    def __init__(self, layout: Layout, *, force: Sequence[Stage] = (), dry_run: bool = False) -> None:
        self.layout = layout
        self.force = set(force)
        self.dry_run = dry_run
        self._hashes: dict[Path, tuple[int, int, str]] = {}
        self._will_write: set[Path] = set()  # dry run: outputs of the steps planned so far

    def sha(self, path: Path) -> str:
        # Cache by (size, mtime) within one run: parity and bench hash the same files again.
        st = path.stat()
        hit = self._hashes.get(path)
        if hit and hit[:2] == (st.st_size, st.st_mtime_ns):
            return hit[2]
        digest = sha256_file(path)
        self._hashes[path] = (st.st_size, st.st_mtime_ns, digest)
        return digest

    def stamp_path(self, step: Step) -> Path:
        return self.layout.stamps / f"{step.name}.json"

    def key(self, step: Step) -> dict[str, Any]:
        return _jsonable(
            {
                "inputs": {self.layout.rel(p): self.sha(p) for p in step.inputs},
                "config": step.config,
                "versions": _versions(step.versions),
                "code": stage_code(step.stage),
                "extra": step.extra() if callable(step.extra) else step.extra,
            }
        )

    def stale_reason(self, step: Step, key: Mapping[str, Any]) -> str | None:
        """None when the step's stamp matches ``key`` and its outputs are intact, else why not."""
        path = self.stamp_path(step)
        if not path.is_file():
            return "no stamp (first run)"
        try:
            stamp = read_json(path)
        except PipelineError:
            return "stamp unreadable"
        if stamp.get("format") != STAMP_FORMAT:
            return "stamp from another pipeline version"
        for part, what in (
            ("inputs", "input changed"),
            ("config", "config changed"),
            ("versions", "library version changed"),
            ("code", "code changed"),
            ("extra", "context changed"),
        ):
            if part == "code" and part not in stamp:
                return "code changed: the stamp was written by a version that did not record code"
            if stamp.get(part) != key[part]:
                return f"{what}: {', '.join(_diff_keys(stamp.get(part), key[part])[:6])}"
        for rel, digest in (stamp.get("outputs") or {}).items():
            p = self.layout.out / rel
            if not p.is_file():
                return f"output missing: {rel}"
            if self.sha(p) != digest:
                return f"output modified since it was written: {rel}"
        expected = {self.layout.rel(p) for p in step.outputs}
        if not expected <= set(stamp.get("outputs") or {}):
            return "outputs differ from the stamp's"
        return None

    def execute(self, step: Step, index: int, total: int) -> StepResult:
        where = f"[{index}/{total}] {step.name}"
        missing = [p for p in step.inputs if not p.is_file()]
        if self.dry_run:
            # A dry run prints the plan for any folder: inputs that an earlier planned step writes are
            # not missing, and a step whose input will be rewritten would rerun (unless that rewrite
            # comes out byte-identical, which only running can tell).
            upstream = [p for p in step.inputs if p in self._will_write]
            blocked = [p for p in missing if p not in self._will_write]
            if blocked:
                names = ", ".join(self.layout.rel(p) for p in blocked)
                why = f"blocked: needs {names}, which no stage in this run writes (add its stage to --stages)"
                log.warning("%s: %s", where, why)
                return StepResult(step.name, step.stage.value, "blocked", why)
            if upstream:
                names = ", ".join(self.layout.rel(p) for p in upstream)
                log.info("%s: would run (after an earlier step writes %s)", where, names)
                self._will_write.update(step.outputs)
                return StepResult(step.name, step.stage.value, "would-run", f"an earlier step writes {names}")
        if missing:
            names = ", ".join(self.layout.rel(p) for p in missing)
            raise StageError(
                f"{step.name}: input(s) {names} not found in {self.layout.out}; run the stage that writes them "
                f"first (run the whole pipeline, or add that stage to --stages)"
            )
        if not step.stamped:
            if self.dry_run:
                log.info("%s: would run (its own cache decides reuse)", where)
                self._will_write.update(step.outputs)
                return StepResult(step.name, step.stage.value, "would-run", "decided by its own cache")
            log.info("%s: running (its own cache decides reuse)", where)
            t0 = time.perf_counter()
            info = dict(step.run() or {})
            return StepResult(step.name, step.stage.value, "ran", "own cache", time.perf_counter() - t0, info)
        key = self.key(step)
        reason = self.stale_reason(step, key)
        if reason is None and step.stage in self.force:
            reason = f"--force {step.stage.value}"
        if reason is None:
            stamp = read_json(self.stamp_path(step))
            log.info("%s: up to date, reused (%s)", where, ", ".join(self.layout.rel(p) for p in step.outputs) or "-")
            return StepResult(step.name, step.stage.value, "reused", "stamp matches", 0.0, stamp.get("info") or {})
        if self.dry_run:
            log.info("%s: would run (%s)", where, reason)
            self._will_write.update(step.outputs)
            return StepResult(step.name, step.stage.value, "would-run", reason)
        log.info("%s: running (%s)", where, reason)
        t0 = time.perf_counter()
        info = dict(step.run() or {})
        seconds = time.perf_counter() - t0
        absent = [self.layout.rel(p) for p in step.outputs if not p.is_file()]
        if absent:
            raise StageError(f"{step.name} finished but did not write {absent}")
        # Inputs are re-hashed: a step must not change its own inputs, and if one was edited
        # meanwhile, the stamp must not claim the output came from the new content.
        self._hashes.clear()
        after = self.key(step)
        if after["inputs"] != key["inputs"]:
            raise StageError(
                f"{step.name}: inputs changed while it ran ({_diff_keys(key['inputs'], after['inputs'])}); rerun"
            )
        stamp = {
            "format": STAMP_FORMAT,
            "step": step.name,
            "stage": step.stage.value,
            **key,
            "outputs": {self.layout.rel(p): self.sha(p) for p in step.outputs},
            "seconds": round(seconds, 3),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "info": _jsonable(info),
        }
        atomic_write_json(self.stamp_path(step), stamp)
        log.info("%s: done in %.1f s", where, seconds)
        return StepResult(step.name, step.stage.value, "ran", reason, seconds, info)
