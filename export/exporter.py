"""Checkpoint -> ``model.onnx`` with a dynamic batch axis, the deployment contract and a preflight.

``python -m export onnx --checkpoint RUN/checkpoint.pt --out RUN/model.onnx`` runs `export_onnx`:

1. rebuild the model from the checkpoint (eval mode) and lint it for pooling traps;
2. ``torch.onnx.export`` into a temporary folder beside ``--out`` (exporter chosen per family,
   see `EXPORTER_BY_FAMILY`), tensors named ``input`` and ``logits`` (+ every extra head);
3. clean the graph with onnxslim and prove the cleanup changed no output (ONNX Runtime before vs
   after, max abs difference <= 1e-6);
4. write the deployment contract into ``metadata_props`` (`runtime.contract`);
5. preflight the candidate (checker, TensorRT ops, traps, parity vs PyTorch at batch 1 and 32 on
   validation images); only a passing candidate is renamed onto ``--out``, so an existing good
   model is never replaced by a bad or half-written one;
6. write ``model.preflight.json`` and the ``model.onnx.json`` sidecar.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.config import PROTOBUF_LIMIT_BYTES, ExportConfig, Exporter
from export.preflight import (
    ADAPTIVE_POOL_NON_DIVISIBLE,
    OPSET_NOT_DEFAULT,
    POOL_KERNEL_FROM_SHAPE,
    Finding,
    PreflightReport,
    Reference,
    Severity,
    lint_module,
    load_val_images,
    report_path,
    run_preflight,
    write_report,
)
from runtime.artifacts import library_versions, read_sidecar, sha256_file, sidecar_path, write_sidecar
from runtime.contract import DeploymentContract
from runtime.errors import ExportError, PipelineError
from runtime.latency import tile_batch

log = logging.getLogger(__name__)

INPUT_NAME = "input"
LOGITS_NAME = "logits"

# Which torch.onnx exporter writes each model family, and why.
#
# Both families use the TorchScript-based exporter (dynamo=False) at opset 17:
# - MA-Net: the dynamo exporter (torch 2.13) emits opset 18 (its down-conversion to 17 fails on
#   this graph) and writes the 202 MB of weights to an external ``.onnx.data`` file (docs/models.md
#   §1.7.2), i.e. neither a TensorRT-10.3-safe opset nor a self-contained file. The legacy exporter
#   at opset 17 with a dynamic batch axis is clean once CBAM pools with mean/amax instead of
#   F.avg_pool2d(x, x.size()[2:]) (§1.7.1; train/models/manet.py does).
# - LANMSFF: both exporters work (§2.6); the legacy one keeps opset 17 and inline weights, and the
#   Shape/Gather/Slice chains it writes for torch.chunk and the channel shuffle are folded away by
#   onnxslim, which leaves a graph of plain Conv/Gemm/Reduce/Min/Max ops.
# Unknown families default to the legacy exporter for the same opset/inline-weights reasons; pass
# --exporter dynamo to override.
EXPORTER_BY_FAMILY: dict[str, Exporter] = {
    "lanmsff": Exporter.TORCHSCRIPT,
    "manet": Exporter.TORCHSCRIPT,
}
_DEFAULT_EXPORTER = Exporter.TORCHSCRIPT


@dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` produced.

    Attributes:
        model: The written ``model.onnx``.
        sidecar: Its JSON sidecar.
        report_path: The preflight report (``model.preflight.json``).
        report: The preflight report itself.
        exporter: The exporter used (``torchscript`` or ``dynamo``).
        export_time_s: Wall time of the whole export including preflight.
        file_size_bytes: Size of ``model.onnx``.
        skipped: True when an up-to-date export was found and nothing was redone.
    """

    model: Path
    sidecar: Path
    report_path: Path
    report: PreflightReport | None
    exporter: str
    export_time_s: float
    file_size_bytes: int
    skipped: bool = False


def choose_exporter(model_name: str, requested: Exporter) -> Exporter:
    """The exporter for ``model_name`` (its registry family decides when ``requested`` is AUTO)."""
    if requested is not Exporter.AUTO:
        return requested
    try:
        from train.models import get_model_info

        family = get_model_info(model_name).family
    except PipelineError:
        family = model_name
    return EXPORTER_BY_FAMILY.get(family, _DEFAULT_EXPORTER)


def _heads_module(model, example):
    """Wrap ``model`` so that forward returns a tuple of named outputs; returns (module, names)."""
    import torch
    from torch import nn

    if not hasattr(model, "forward_heads"):
        return model, [LOGITS_NAME]
    with torch.no_grad():
        keys = list(model.forward_heads(example[:1]).keys())
    if LOGITS_NAME not in keys:
        raise ExportError(
            f"{type(model).__name__}.forward_heads returns {keys}; it must include the fused {LOGITS_NAME!r}"
        )
    names = [LOGITS_NAME] + [k for k in keys if k != LOGITS_NAME]

    class _Heads(nn.Module):
        # Outputs in a fixed order with "logits" (the fused prediction) first.
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            out = self.inner.forward_heads(x)
            return tuple(out[n] for n in names)

    return _Heads(model).eval(), names


def _example_input(meta, batch: int, images: np.ndarray | None):
    import torch

    if images is not None and len(images):
        x = tile_batch(images, batch)
    else:
        rng = np.random.default_rng(0)
        x = rng.random((batch, *meta.preprocess.input_shape), dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def _explain_failure(exc: BaseException, lint: list[Finding], exporter: Exporter, cfg: ExportConfig) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
    traps = [f for f in lint if f.code in (POOL_KERNEL_FROM_SHAPE, ADAPTIVE_POOL_NON_DIVISIBLE)]
    batch = "dynamic" if cfg.dynamic_batch else cfg.batch
    head = (
        f"torch.onnx.export ({exporter.value}, opset {cfg.opset}, batch {batch}) failed: {type(exc).__name__}: {first}"
    )
    if traps:
        lines = [f"- {f.code} in {f.node}: {f.message}. Fix: {f.fix}" for f in traps]
        return head + "\nCause found by the export lint:\n" + "\n".join(lines)
    return head + (
        "\nNo known trap was found by the lint. Try --exporter dynamo, or --batch N for a fixed batch, "
        "and check the model's forward() for Python control flow on tensor values or shapes."
    )


def _torch_export(module, example, path: Path, names: list[str], cfg: ExportConfig, exporter: Exporter) -> None:
    import torch

    axes_names = [INPUT_NAME, *names]
    if exporter is Exporter.TORCHSCRIPT:
        kwargs: dict[str, Any] = dict(dynamo=False, do_constant_folding=True)
        if cfg.dynamic_batch:
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in axes_names}
    else:
        # external_data=False: weights inside the file (protobuf allows up to 2 GB; larger fails loudly).
        kwargs = dict(dynamo=True, external_data=False, optimize=True, verbose=False)
        if cfg.dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    with warnings.catch_warnings(record=True) as caught, _stdout_to_log():
        warnings.simplefilter("always")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            opset_version=cfg.opset,
            **kwargs,
        )
    for w in caught:
        log.debug("torch.onnx.export: %s", w.message)


@contextlib.contextmanager
def _stdout_to_log():
    """Send what the exporter writes to file descriptor 1 to the debug log.

    On failure the TorchScript exporter's C++ side dumps the whole TorchScript graph to stdout
    ("Torch IR graph at exception"), hundreds of lines that bury the error; the Python-level
    redirect cannot catch it, so fd 1 itself is pointed at a temporary file for the call.
    """
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no usable fd 1 (embedded interpreters): leave it alone
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace").strip()
            if text:
                log.debug("exporter output:\n%s", text[:20000])


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from runtime.backends.ort import make_session

    sess = make_session(path, optimization="disable", log_severity=2)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def _verify_same(before: Path, after: Path, batches: list[int], spec, atol: float) -> float:
    """Max abs output change between two ONNX files on seeded inputs (ORT, optimizations off)."""
    worst = 0.0
    rng = np.random.default_rng(1)
    for b in batches:
        x = rng.random((b, *spec.input_shape), dtype=np.float32)
        a, c = _run(before, {INPUT_NAME: x}), _run(after, {INPUT_NAME: x})
        if list(a) != list(c):
            raise ExportError(f"graph cleanup changed the outputs: {list(a)} -> {list(c)}; re-run with --no-slim")
        for k in a:
            worst = max(worst, float(np.max(np.abs(a[k].astype(np.float64) - c[k]))))
    if worst > atol:
        raise ExportError(
            f"graph cleanup (onnxslim) changed the outputs by up to {worst:.3g} > {atol:g}; "
            "re-run with --no-slim and report the onnxslim version"
        )
    return worst


def _io_signature(model) -> tuple:
    def dims(vi) -> list:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]

    def sig(vis) -> list:
        return [(v.name, dims(v)) for v in vis]

    inits = {t.name for t in model.graph.initializer}
    return sig([i for i in model.graph.input if i.name not in inits]), sig(model.graph.output)


def _save(model, path: Path) -> None:
    import onnx

    if model.ByteSize() > PROTOBUF_LIMIT_BYTES:
        # Above protobuf's 2 GB limit the weights must live beside the model.
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )
    else:
        onnx.save_model(model, str(path))


# Test-only (tests/reliability/test_interrupt.py): when set to a file path, the export writes that
# file and waits there for up to 60 s, just before the finished candidate is renamed onto --out, so
# a test can deliver a real SIGKILL/SIGTERM/SIGINT at the worst moment. Never set outside tests.
HOLD_ENV = "FER_EXPORT_HOLD_BEFORE_REPLACE"


def _test_hold_before_replace() -> None:
    marker = os.environ.get(HOLD_ENV)
    if not marker:
        return
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)


def _up_to_date(cfg: ExportConfig, ckpt_sha: str) -> dict | None:
    """The sidecar of an earlier identical export whose model is intact, else None."""
    out = cfg.out
    if not out.is_file() or not sidecar_path(out).is_file() or not report_path(out).is_file():
        return None
    try:
        side = read_sidecar(out)
    except PipelineError:
        return None
    now = library_versions()
    same = (
        side.get("checkpoint", {}).get("sha256") == ckpt_sha
        and side.get("config") == _config_for_sidecar(cfg)
        and all(side.get("versions", {}).get(k) == now.get(k) for k in ("torch", "onnx", "onnxslim", "onnxruntime"))
        and side.get("preflight", {}).get("passed") is True
        and side.get("artifact_sha256") == sha256_file(out)
    )
    return side if same else None


def _config_for_sidecar(cfg: ExportConfig) -> dict:
    d = cfg.to_dict()
    d.pop("checkpoint")
    d["out"] = Path(d["out"]).name
    return d


def export_onnx(cfg: ExportConfig, *, force: bool = False) -> ExportResult:
    """Export ``cfg.checkpoint`` to ``cfg.out`` (see the module docstring).

    Args:
        cfg: The resolved export config.
        force: Redo the export even when the sidecar says an identical one is already there.

    Raises:
        CheckpointError: missing, corrupt or mismatched checkpoint.
        ExportError: the exporter failed (the message names the trap and its fix), the cleanup
            changed outputs, or preflight failed. ``cfg.out`` is untouched in every case.
    """
    from train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(cfg.checkpoint)
    if not force:
        side = _up_to_date(cfg, meta.sha256)
        if side is not None:
            log.info("%s is up to date (same checkpoint, config and library versions); use --force to redo it", cfg.out)
            name = side.get("exporter", {}).get("name", "")
            size = cfg.out.stat().st_size
            return ExportResult(
                cfg.out, sidecar_path(cfg.out), report_path(cfg.out), None, name, 0.0, size, skipped=True
            )
    images, desc, problem = load_val_images(meta, max(max(cfg.parity_batches), 2))
    if problem:
        log.warning("parity will use random inputs: %s", problem)
    return export_model(model, meta, cfg, reference=Reference(model, meta, images, desc or problem))


def export_model(model, meta, cfg: ExportConfig, *, reference: Reference | None = None) -> ExportResult:
    """Export an in-memory model whose contract is ``meta`` (a `train.checkpoint.CheckpointMeta`).

    `export_onnx` calls this after loading the checkpoint; tests call it with tiny modules.
    """
    import onnx
    import torch

    t0 = time.perf_counter()
    model = model.eval()
    reference = reference or Reference(model, meta, None, "no validation images given")
    exporter = choose_exporter(meta.model_name, cfg.exporter)
    batch = cfg.batch or 2  # a dynamic export traces with 2 so no axis is specialised to 1
    example = _example_input(meta, batch, reference.images)
    module, names = _heads_module(model, example)
    lint = lint_module(module, example)
    for f in lint:
        log.warning("%s", f)

    out = cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        raw = work / "raw.onnx"
        log.info(
            "exporting %s with the %s exporter (opset %d, batch %s)",
            meta.model_name,
            exporter.value,
            cfg.opset,
            "dynamic" if cfg.dynamic_batch else cfg.batch,
        )
        try:
            with torch.no_grad():
                _torch_export(module, example, raw, names, cfg, exporter)
        except PipelineError:
            raise
        except Exception as exc:
            raise ExportError(_explain_failure(exc, lint, exporter, cfg), lint) from exc
        proto = onnx.load(str(raw))
        written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if written != cfg.opset:
            # dynamo implements opset >= 18 and keeps 18 when its down-conversion fails (docs/models.md §1.7.2)
            msg = f"asked for opset {cfg.opset}, the {exporter.value} exporter wrote opset {written}"
            fix = "use --exporter torchscript for opset 17, or accept it if every target TensorRT parses this opset"
            lint.append(Finding(Severity.WARNING, OPSET_NOT_DEFAULT, msg, fix))
            log.warning("%s", lint[-1])
        nodes_before = len(proto.graph.node)
        slim_info: dict[str, Any] = {"applied": False, "nodes_before": nodes_before, "nodes_after": nodes_before}
        if cfg.slim:
            import onnxslim

            slimmed = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
            if slimmed is None:
                raise ExportError("onnxslim returned no model; re-run with --no-slim")
            if _io_signature(slimmed) != _io_signature(proto):
                before, after = _io_signature(proto), _io_signature(slimmed)
                raise ExportError(
                    f"onnxslim changed the model's inputs/outputs {before} -> {after}; re-run with --no-slim"
                )
            slim_path = work / "slim.onnx"
            _save(slimmed, slim_path)
            checks = [1, 3] if cfg.dynamic_batch else [cfg.batch]
            diff = _verify_same(raw, slim_path, checks, meta.preprocess, cfg.slim_atol)
            log.info(
                "onnxslim: %d -> %d nodes, outputs unchanged (max |Δ| %.1e at batch %s)",
                nodes_before,
                len(slimmed.graph.node),
                diff,
                checks,
            )
            slim_info = {
                "applied": True,
                "nodes_before": nodes_before,
                "nodes_after": len(slimmed.graph.node),
                "max_abs_diff": diff,
                "atol": cfg.slim_atol,
                "checked_batches": checks,
            }
            proto = slimmed

        exporter_desc = f"torch.onnx.export(dynamo={exporter is Exporter.DYNAMO}) torch {torch.__version__}" + (
            f" + onnxslim {onnxslim.__version__}" if cfg.slim else ""
        )
        contract = DeploymentContract(
            model_name=meta.model_name,
            class_names=tuple(meta.class_names),
            preprocess=meta.preprocess,
            dataset=dict(meta.dataset),
            checkpoint_sha256=meta.sha256,
            exporter=exporter_desc,
            versions=library_versions(),
            input_name=INPUT_NAME,
            output_names=tuple(names),
        )
        del proto.metadata_props[:]
        for k, v in contract.to_metadata().items():
            proto.metadata_props.add(key=k, value=v)
        candidate = work / out.name
        _save(proto, candidate)

        report = run_preflight(
            candidate,
            reference=reference,
            batches=cfg.parity_batches,
            atol=cfg.parity_atol,
            extra_findings=lint,
            lint=False,
            display_path=out,
        )
        if not report.passed:
            rejected = out.with_name(out.stem + ".rejected" + report_path(out).name[len(out.stem) :])
            write_report(report, rejected)
            errors = "\n".join(f"- {f}" for f in report.errors)
            kept = f"; the existing {out} is unchanged" if out.exists() else ""
            msg = f"preflight failed for the exported {meta.model_name} (report: {rejected}){kept}:\n{errors}"
            raise ExportError(msg, report.findings)

        _test_hold_before_replace()
        data = candidate.with_name(candidate.name + ".data")
        if data.exists():
            os.replace(data, out.with_name(out.name + ".data"))
        os.replace(candidate, out)  # atomic: same folder
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rpath = write_report(report, report_path(out))
    elapsed = time.perf_counter() - t0
    size = out.stat().st_size
    payload = {
        "stage": "export",
        "model_name": meta.model_name,
        "checkpoint": {"path": str(getattr(meta, "path", "")), "sha256": meta.sha256},
        "config": _config_for_sidecar(cfg),
        "exporter": {
            "name": exporter.value,
            "description": exporter_desc,
            "opset": report.opset,
            "reason": "per family, see EXPORTER_BY_FAMILY in export/exporter.py"
            if cfg.exporter is Exporter.AUTO
            else "requested",
        },
        "inputs": report.inputs,
        "outputs": report.outputs,
        "slim": slim_info,
        "parity": [asdict(p) for p in report.parity],
        "parity_inputs": report.parity_inputs,
        "preflight": {
            "passed": report.passed,
            "report": rpath.name,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
        },
        "export_time_s": round(elapsed, 3),
        "exported_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "file_size_bytes": size,
        "versions": library_versions(),
    }
    side = write_sidecar(out, payload)
    log.info("wrote %s (%.2f MB) in %.1f s; %s", out, size / 1e6, elapsed, report.summary())
    return ExportResult(out, side, rpath, report, exporter.value, round(elapsed, 3), size)


# --------------------------------------------------------------------------------------------
# Any PyTorch module: python -m export onnx --model MODULE:CALLABLE [--weights SD.pt] --contract C.yaml
# --------------------------------------------------------------------------------------------
def import_callable(spec: str):
    """The object named ``MODULE:CALLABLE`` (``pkg.mod:factory`` or ``pkg.mod:Class.attr``).

    The current directory is searched first (as ``python -c`` does), then installed packages.

    Raises:
        ConfigError: a malformed spec, a module that cannot be imported, or a missing attribute.
    """
    import importlib

    from runtime.errors import ConfigError

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(
            f"--model {spec!r}: expected MODULE:CALLABLE, e.g. my_models:build_net (a function or class "
            "in my_models.py, in the current folder or an installed package)"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"--model {spec!r}: cannot import module {module_name!r} ({exc}); run from the folder that "
            f"holds {module_name.replace('.', '/')}.py or install its package"
        ) from None
    except Exception as exc:  # the user's module raised while importing
        raise ConfigError(f"--model {spec!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}") from None
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
            raise ConfigError(
                f"--model {spec!r}: module {module_name!r} has no attribute {attr!r} (it defines: {', '.join(public)})"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"--model {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable returning an nn.Module"
        )
    return obj


def load_weights(path: str | os.PathLike) -> dict:
    """A state_dict read with ``torch.load(weights_only=True)``: tensors only, never pickled code.

    Accepts a bare state_dict, ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and a
    ferdeploy checkpoint.

    Raises:
        CheckpointError: a missing file, a file holding pickled objects (refused), or no tensors.
    """
    import pickle

    import torch

    from runtime.errors import CheckpointError

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"--weights {p}: file not found")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"--weights {p}: refused: the file holds pickled Python objects, not only tensors (torch.load with "
            "weights_only=True will not unpickle them). Loading it "
            "would run code from the file. Save the weights alone with torch.save(model.state_dict(), PATH) and pass that"
        ) from None
    except Exception as exc:  # truncated zip, not a torch file at all, ...
        raise CheckpointError(
            f"--weights {p}: cannot read it as a PyTorch file ({type(exc).__name__}: "
            f"{str(exc)[:200]}); save it with torch.save(model.state_dict(), PATH)"
        ) from None
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        got = type(payload).__name__ if not isinstance(payload, dict) else f"a dict with keys {list(payload)[:8]}"
        raise CheckpointError(
            f"--weights {p}: expected a state_dict (parameter name -> tensor), got {got}; save it "
            "with torch.save(model.state_dict(), PATH)"
        )
    return payload


def build_module(spec: str, num_classes: int):
    """``MODULE:CALLABLE`` called with no arguments, or a registered model name built for ``num_classes``.

    Raises:
        ConfigError / ModelError: the callable cannot be found or does not return an ``nn.Module``.
    """
    from torch import nn

    from runtime.errors import ModelError

    if ":" not in spec:
        from train.models import create_model

        return create_model(spec, num_classes=num_classes)
    factory = import_callable(spec)
    try:
        model = factory()
    except Exception as exc:
        raise ModelError(
            f"--model {spec!r}: calling it raised {type(exc).__name__}: {str(exc)[:300]}; it must build "
            "the model with no arguments"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"--model {spec!r} returned {type(model).__name__}, not a torch.nn.Module; point --model at a "
            "function or class that returns the model"
        )
    return model


def fit_weights(model, state: dict, source: str) -> None:
    """``model.load_state_dict(state)``, strictly; a mismatch names the missing/unexpected/mis-shaped keys."""
    from runtime.errors import CheckpointError

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s) {unexpected[:5]}")
        if shaped:
            parts.append(f"{len(shaped)} of another shape: {shaped[:3]}")
        raise CheckpointError(
            f"--weights {source} do not fit the model: {'; '.join(parts)}. Use the weights saved "
            "from this architecture (with the same number of classes), or fix the callable"
        )
    model.load_state_dict(state, strict=True)


def export_module(
    spec: str, contract_path: str | os.PathLike, cfg: ExportConfig, weights: str | os.PathLike | None = None
) -> ExportResult:
    """Export the module ``spec`` builds (``MODULE:CALLABLE`` or a registered name) under a contract file.

    The same export, cleanup check, parity vs PyTorch (batch 1 and 32, random images built from the
    contract) and preflight as a checkpoint export.

    Raises:
        ConfigError / ModelError / CheckpointError / ExportError: with what to fix; ``cfg.out`` is untouched.
    """
    import torch

    from runtime.contract import load_contract_file
    from train.checkpoint import CheckpointMeta

    cf = load_contract_file(contract_path)
    contract = cf.contract
    model = build_module(spec, contract.num_classes)
    if weights is not None:
        fit_weights(model, load_weights(weights), str(weights))
    model.eval()
    x = torch.from_numpy(np.random.default_rng(0).random((2, *contract.input_shape), dtype=np.float32))
    try:
        with torch.no_grad():
            y = model(x)
    except Exception as exc:
        raise ExportError(
            f"--model {spec!r} fails on an input of shape {list(x.shape)} built from the contract "
            f"{contract_path} (color_mode {contract.preprocess.color_mode.value}, input_size "
            f"{list(contract.preprocess.input_size)}): {type(exc).__name__}: {str(exc)[:300]}; fix the "
            "contract or the model"
        ) from None
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[1] != contract.num_classes:
        got = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ExportError(
            f"--model {spec!r} returns {got} for a batch of 2, but the contract {contract_path} lists "
            f"{contract.num_classes} classes: forward must return logits (N, {contract.num_classes})"
        )
    meta = CheckpointMeta(
        model_name=contract.model_name,
        num_classes=contract.num_classes,
        class_names=contract.class_names,
        preprocess=contract.preprocess,
        dataset={},
        sha256=sha256_file(weights) if weights is not None else "",
        path=str(weights or spec),
    )
    reference = Reference(model, meta, None, "no dataset: random images built from the contract")
    return export_model(model, meta, cfg, reference=reference)
