"""``python -m export deploy``: a Triton model repository entry or a DeepStream nvinfer config, checked.

    python -m export deploy --model RUN/model.onnx --target triton --out REPO/
    python -m export deploy --model RUN/model.fp16.engine --target triton --out REPO/ --gpu 8.7
    python -m export deploy --model RUN/model.onnx --target deepstream --out DS/ [--allow-approximate]

Everything is derived from the model's deployment contract (`runtime.contract`), nothing is
retyped. Steps (`deploy`): read the model (`export.deploy.model`; an engine is checked against
``--gpu``); map the contract onto the target (`export.deploy.deepstream.map_contract`); write every
file into a temporary folder beside the destination; read the written config back and check it
(Triton's own protobuf schema; nvinfer's key table); emulate what the server will feed the model
and compare it with the contract's preprocessing on synthetic face crops (`export.deploy.emulate`);
write the deploy report (JSON + Markdown); only then rename the folder into place. A refusal (no
contract, another GPU's engine, an approximate contract without ``--allow-approximate``, a check
that fails) or an unwritable destination leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.deploy.model import ModelSource, check_engine_gpu, load_source
from runtime.errors import ConfigError, storage_error

log = logging.getLogger(__name__)

TARGETS = ("triton", "deepstream")
REPORT_JSON, REPORT_MD = "deploy_report.json", "deploy_report.md"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class DeployConfig:
    """Options of ``python -m export deploy`` (see `export.__main__` for their help)."""

    model: Path
    target: str
    out: Path
    name: str | None = None
    allow_approximate: bool = False
    force: bool = False
    onnx: Path | None = None
    gpu: str | None = None
    batch: str | None = None
    instance: str = "gpu"
    precision: str | None = None
    gpu_id: int = 0
    gie_id: int = 2
    detector_gie_id: int = 1
    face_class_ids: tuple[int, ...] = (0,)
    classifier_threshold: float = 0.0
    samples: int = 48
    command: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", Path(self.model))
        object.__setattr__(self, "out", Path(self.out))
        if self.onnx is not None:
            object.__setattr__(self, "onnx", Path(self.onnx))
        if self.target not in TARGETS:
            raise ConfigError(f"--target must be one of {list(TARGETS)}, got {self.target!r}")
        if self.instance not in ("gpu", "cpu"):
            raise ConfigError(f"--instance must be gpu or cpu, got {self.instance!r}")
        if self.name is not None and not _NAME.match(self.name):
            raise ConfigError(f"--name {self.name!r}: use letters, digits, '_', '-' and '.' (a folder and model name)")
        if not 1 <= self.samples <= 4096:
            raise ConfigError(f"--samples must be in 1..4096, got {self.samples}")


@dataclass(frozen=True)
class DeployResult:
    """What `deploy` wrote: the folder, its report and the check's verdict."""

    folder: Path
    report_json: Path
    report_md: Path
    files: tuple[str, ...]
    verdict: Mapping[str, Any]
    exact: bool
    report: Mapping[str, Any] = field(default_factory=dict, hash=False)


def default_name(src: ModelSource) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.contract.model_name).strip("._-") or "model"
    return name if name[0].isalnum() else f"m{name}"


def deploy(cfg: DeployConfig) -> DeployResult:
    """Write and check one deployment target (module docstring).

    Raises:
        ArtifactError / EngineError: the model (no contract, no sidecar, another GPU's engine).
        ConfigError: options that do not fit the model or the target, an existing destination
            without ``--force``.
        ExportError: an approximate contract without ``--allow-approximate``, or a failed check.
        StorageError: the destination cannot be written.
        MissingDependencyError: Triton's schema (``tritonclient``) is not installed.
    """
    src = load_source(cfg.model, onnx=cfg.onnx)
    name = cfg.name or default_name(src)
    if cfg.target == "triton":
        from export.deploy.targets import plan_triton as plan
        from export.deploy.targets import write_triton as write

        final = cfg.out / name
    else:
        from export.deploy.targets import plan_deepstream as plan
        from export.deploy.targets import write_deepstream as write

        final = cfg.out
    planned = plan(src, cfg, name)
    _check_destination(final, cfg.force)
    with _staged(final) as stage:
        report = write(src, cfg, name, planned, stage)
        from export.deploy.report import write_report

        write_report(report, stage)
        files = sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file())
        _commit(stage, final)
    verdict = report["emulation"]["verdict"]
    log.info(
        "%s: %s target written (%s); emulated input max |diff| %.3g, top-1 agreement %.2f%%",
        final,
        cfg.target,
        "exact" if report["exact"] else "approximate",
        verdict["max_abs_input_diff"],
        100 * verdict["top1_agreement"],
    )
    return DeployResult(
        final, final / REPORT_JSON, final / REPORT_MD, tuple(files), verdict, bool(report["exact"]), report
    )


def gpu_check(src: ModelSource, gpu: str | None) -> str:
    """The engine-vs-GPU check for a plan ("" for an ONNX)."""
    return check_engine_gpu(src.engine, gpu) if src.engine is not None else ""


# ---- destination: staged in a temporary folder, renamed into place ----------------------------
def _check_destination(final: Path, force: bool) -> None:
    if final.exists() and not final.is_dir():
        raise ConfigError(f"--out {final} is a file; give a folder")
    if final.is_dir() and any(final.iterdir()) and not force:
        raise ConfigError(
            f"{final} already exists and is not empty; pass --force to replace it (it is replaced only "
            "once the new one is written and checked)"
        )


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final``; on any error it, and any parent folder made for it, is removed."""
    made: list[Path] = []
    parent = final.parent
    stage: Path | None = None
    try:
        for p in reversed([parent, *parent.parents]):
            if p.exists() and not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(p))
            if not p.exists():
                p.mkdir()
                made.append(p)
        from runtime.lock import output_lock

        with output_lock(parent, "deploy"):  # taken first: it clears the .NAME.*.tmp a killed run left
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
            yield stage
    except OSError as exc:
        mapped = storage_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
    finally:
        if stage is not None and stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not final.exists():
            for p in reversed(made):
                with contextlib.suppress(OSError):
                    p.rmdir()


def _commit(stage: Path, final: Path) -> None:
    """Rename ``stage`` onto ``final`` (replacing an existing folder only after the new one is complete)."""
    from runtime.artifacts import _UMASK  # the folder gets the usual permissions, not mkdtemp's owner-only ones

    os.chmod(stage, 0o777 & ~_UMASK)
    backup = None
    if final.exists():
        if final.is_dir() and not any(final.iterdir()):
            final.rmdir()
        else:
            backup = final.with_name(f".{final.name}.old.{os.getpid()}.tmp")
            os.rename(final, backup)
    try:
        os.rename(stage, final)
    except OSError:
        if backup is not None:
            os.rename(backup, final)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


# ---- for an optional `deploy:` stage of `python -m runtime pipeline` -----------------------------
PIPELINE_NAME = "fer"


def pipeline_report_path(root: str | os.PathLike, target: str, name: str | None = None) -> Path:
    """Where `pipeline_step` writes ``target``'s report under ``root`` (known before the model exists).

    ``root/triton/<name>/deploy_report.json`` (``root/triton`` is the model repository) or
    ``root/deepstream/deploy_report.json``.
    """
    root = Path(root)
    if target == "triton":
        return root / "triton" / (name or PIPELINE_NAME) / REPORT_JSON
    if target == "deepstream":
        return root / "deepstream" / REPORT_JSON
    raise ConfigError(f"deploy target must be one of {list(TARGETS)}, got {target!r}")


def pipeline_step(
    model: str | os.PathLike, root: str | os.PathLike, target: str, options: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Deploy ``model`` to ``target`` under ``root`` (replacing the previous output): one pipeline step.

    ``options`` are `DeployConfig` fields (``name``, ``allow_approximate``, ``gpu``, ``batch``,
    ``samples``...). Returns the facts a stamp records. Raises what `deploy` raises.
    """
    opts = dict(options or {})
    opts.setdefault("name", PIPELINE_NAME)
    unknown = sorted(set(opts) - set(DeployConfig.__dataclass_fields__) - {"targets"})
    if unknown:
        raise ConfigError(f"deploy: unknown option(s) {unknown}; valid: {sorted(DeployConfig.__dataclass_fields__)}")
    opts.pop("targets", None)
    out = pipeline_report_path(root, target, opts["name"]).parent
    out = out.parent if target == "triton" else out
    res = deploy(
        DeployConfig(
            model=Path(model),
            target=target,
            out=out,
            force=True,
            **{k: v for k, v in opts.items() if k not in ("model", "target", "out", "force")},
        )
    )
    return {
        "folder": str(res.folder),
        "exact": res.exact,
        "max_abs_input_diff": res.verdict["max_abs_input_diff"],
        "top1_agreement": res.verdict["top1_agreement"],
        "files": list(res.files),
    }
