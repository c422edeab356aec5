"""Adopt an ONNX classifier from outside the project: ``python -m export adopt``.

    python -m export adopt --onnx PLAIN.onnx --contract CONTRACT.yaml --out MODEL.onnx

`adopt_onnx` turns a plain ONNX file (``torch.onnx.export``, tf2onnx, a model zoo...) into a model
every later stage accepts, without retraining or re-exporting it:

1. refuse external-data files outside the model's own folder (files from strangers are data,
   not a licence to read the disk), then ``onnx.checker`` (full check);
2. find the image input and the logits output (the contract's ``input_name``/``output_name``, or
   the only input and the first output) and check them against the contract: NCHW float input
   with the contract's channels and H×W, output width equal to the number of classes (checked
   statically, then by running the graph once);
3. make a fixed batch axis dynamic when that is safe: the rewritten graph must give, sample by
   sample, the outputs of the original at batch 1 and at a larger batch; otherwise keep it fixed;
4. rename the two tensors ``input``/``logits`` (the names every runtime backend feeds and reads),
   stamp the deployment contract (`runtime.contract`) into ``metadata_props``;
5. prove the rewrite changed no output (ONNX Runtime, max abs difference <= 1e-5), run the same
   preflight as ``export onnx`` (checker, TensorRT ops, traps), and only then rename the candidate
   onto ``--out`` (atomic; an existing file survives any failure), with the preflight report and
   a JSON sidecar beside it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import library_versions, sha256_file, write_sidecar
from runtime.contract import ContractFile, DeploymentContract, load_contract_file
from runtime.errors import ConfigError, ExportError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
LOGITS_NAME = "logits"
REWRITE_ATOL = 1e-5


@dataclass(frozen=True)
class AdoptResult:
    """What `adopt_onnx` wrote.

    Attributes:
        model: The adopted model.
        sidecar: Its JSON sidecar.
        report_path: The preflight report.
        dynamic_batch: True when the written model has a dynamic batch axis.
        batch_note: What happened to the batch axis, in words.
    """

    model: Path
    sidecar: Path
    report_path: Path
    dynamic_batch: bool
    batch_note: str


def check_external_data(model, folder: Path, source: Path) -> list[str]:
    """Locations of external weight files, refusing any that lie outside ``folder`` or are missing.

    Raises:
        ExportError: for an absolute path, a path that leaves the model's folder (``..``, a
            symlink out) or a missing file.
    """
    from onnx.external_data_helper import uses_external_data

    root = folder.resolve()
    found: list[str] = []
    tensors = list(model.graph.initializer)
    for node in model.graph.node:  # Constant nodes can hold external tensors too
        for a in node.attribute:
            if a.HasField("t"):
                tensors.append(a.t)
    for t in tensors:
        if not uses_external_data(t):
            continue
        loc = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (folder / loc).resolve()
        if not loc or os.path.isabs(loc) or (target != root and root not in target.parents):
            raise ExportError(
                f"{source}: tensor {t.name!r} keeps its data in {loc!r}, outside the model's folder {folder}; "
                "refused: an ONNX file may only reference weight files beside it. Put the .data file next to the "
                "model and set its location to the bare file name, or save the model with the weights inside"
            )
        if not target.is_file():
            raise ExportError(
                f"{source}: tensor {t.name!r} needs the external file {loc!r}, which is not in {folder}; "
                "copy it next to the model"
            )
        if loc not in found:
            found.append(loc)
    return found


def _dims(vi) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def _session(model: bytes | str):
    """A CPU onnxruntime session, graph optimizations off (the graph as written is what is compared)."""
    from runtime.backends.ort import make_session

    return make_session(model, optimization="disable", log_severity=2)


def _outputs(sess, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {name: x})))


def _run(model: bytes | str, name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    return _outputs(_session(model), name, x)


def _random_batch(contract: DeploymentContract, n: int, seed: int) -> np.ndarray:
    from runtime.preprocess import preprocess

    spec = contract.preprocess
    rng = np.random.default_rng(seed)
    shape = (n, *spec.input_size) + ((3,) if spec.channels == 3 else ())
    return preprocess(rng.integers(0, 256, size=shape, dtype=np.uint8), spec)


def _select_io(model, cf: ContractFile, source: Path) -> tuple[Any, Any]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names_in = [i.name for i in inputs]
    if cf.input_name is not None:
        chosen = [i for i in inputs if i.name == cf.input_name]
        if not chosen:
            raise ExportError(
                f"{source}: the contract's input_name {cf.input_name!r} is not an input of the model "
                f"(inputs: {names_in}); fix input_name in {cf.path or 'the contract'}"
            )
        if len(inputs) > 1:
            raise ExportError(
                f"{source}: the model has {len(inputs)} inputs {names_in}; the pipeline feeds one "
                "image tensor: re-export it with the image as its only input"
            )
        inp = chosen[0]
    elif len(inputs) != 1:
        raise ExportError(
            f"{source}: the model has {len(inputs)} inputs {names_in}; the pipeline feeds one image "
            "tensor (N, C, H, W): re-export it with the image as its only input"
        )
    else:
        inp = inputs[0]
    outputs = list(model.graph.output)
    if cf.output_name is not None:
        chosen = [o for o in outputs if o.name == cf.output_name]
        if not chosen:
            raise ExportError(
                f"{source}: the contract's output_name {cf.output_name!r} is not an output of the model "
                f"(outputs: {[o.name for o in outputs]}); fix output_name in {cf.path or 'the contract'}"
            )
        out = chosen[0]
    else:
        out = outputs[0]
    return inp, out


def _check_shapes(inp, out, contract: DeploymentContract, source: Path, where: str) -> None:
    from onnx import TensorProto

    spec = contract.preprocess
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
        got = TensorProto.DataType.Name(inp.type.tensor_type.elem_type)
        raise ExportError(f"{source}: input {inp.name!r} is {got}; the pipeline feeds float32 images (N, C, H, W)")
    d = _dims(inp)
    want = ["N", *spec.input_shape]
    if len(d) != 4:
        raise ExportError(
            f"{source}: input {inp.name!r} has shape {d}; expected 4 axes (N, C, H, W) = {want} "
            f"from {where} (layout NCHW)"
        )
    c, h, w = spec.input_shape
    if isinstance(d[1], int) and d[1] != c:
        hint = " (a channels-last NHWC input? export it NCHW)" if d[3] == c else ""
        raise ExportError(
            f"{source}: input {inp.name!r} has {d[1]} channel(s) (shape {d}) but {where} says color_mode "
            f"{spec.color_mode.value} = {c} channel(s){hint}; fix color_mode in the contract or use the matching model"
        )
    if any(isinstance(v, int) and v != ref for v, ref in zip(d[2:], (h, w))):
        raise ExportError(
            f"{source}: input {inp.name!r} is {d[2]}×{d[3]} (shape {d}) but {where} says input_size [{h}, {w}]; "
            "fix input_size in the contract to the model's input size"
        )
    od = _dims(out)
    k = contract.num_classes
    if len(od) != 2 and not (len(od) == 4 and od[2:] == [1, 1]):
        raise ExportError(f"{source}: output {out.name!r} has shape {od}; expected (N, {k}) class scores")
    if isinstance(od[1], int) and od[1] != k:
        raise ExportError(
            f"{source}: output {out.name!r} has {od[1]} classes (shape {od}) but {where} lists {k} classes "
            f"{list(contract.class_names)}; list one class name per model output, in output order"
        )


def _rename(model, old: str, new: str) -> None:
    if old == new:
        return
    taken = {
        v.name for v in (*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer)
    }
    taken |= {o for n in model.graph.node for o in n.output}
    if new in taken:
        _rename(model, new, new + "_orig")
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if vi.name == old:
            vi.name = new
    for node in model.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def _try_dynamic_batch(model, inp_name: str, contract: DeploymentContract) -> tuple[Any, str]:
    """A copy of ``model`` with a dynamic batch axis when that is safe, else ``model``; plus a note."""
    import onnx

    d0 = model.graph.input[[i.name for i in model.graph.input].index(inp_name)].type.tensor_type.shape.dim[0]
    if not d0.HasField("dim_value"):
        return model, "batch axis already dynamic"
    fixed = d0.dim_value
    cand = onnx.ModelProto.FromString(model.SerializeToString())
    for vi in (*cand.graph.input, *cand.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if vi.name in {i.name for i in model.graph.initializer}:
            continue
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = "batch"
    del cand.graph.value_info[:]  # intermediate shapes recorded for the fixed batch
    bigger = fixed + 2
    probe = _random_batch(contract, bigger, 7)
    try:
        orig = _session(model.SerializeToString())
        # The original, one sample at a time (repeated to its fixed batch): the per-sample truth.
        singles = [_outputs(orig, inp_name, np.repeat(probe[i : i + 1], fixed, axis=0)) for i in range(bigger)]
        dyn = _session(cand.SerializeToString())
        for batch in (probe, probe[:1]):
            got = _outputs(dyn, inp_name, batch)
            for name in singles[0]:
                want = np.concatenate([s[name][:1] for s in singles[: len(batch)]])
                if got[name].shape != want.shape or not np.allclose(got[name], want, atol=REWRITE_ATOL, rtol=0):
                    raise ValueError(f"output {name!r} differs from the per-sample outputs at batch {len(batch)}")
    except Exception as exc:  # onnxruntime raises its own types for shape clashes (Reshape to a fixed batch...)
        note = (
            f"batch axis kept fixed at {fixed}: the graph does not give the same per-sample outputs at other "
            f"batch sizes ({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}); "
            "the runtime pads to the fixed batch"
        )
        log.warning("%s", note)
        return model, note
    return cand, f"fixed batch {fixed} made dynamic (same per-sample outputs at batch 1 and {bigger})"


def adopt_onnx(
    onnx_path: str | os.PathLike,
    contract_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
) -> AdoptResult:
    """Check, convert and stamp a plain ONNX classifier (see the module docstring).

    Raises:
        ConfigError: a bad contract file or ``--out``.
        ExportError: the file is not a valid ONNX model, disagrees with the contract, references
            weight files outside its folder, or fails the preflight. Nothing is written then.
    """
    import onnx

    from export.exporter import _save
    from export.preflight import report_path, run_preflight, write_report
    from runtime.contract import read_metadata

    t0 = time.perf_counter()
    src, out = Path(onnx_path), Path(out)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out must name a .onnx file, got {str(out)!r}")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the input file; write the adopted model to another path")
    cf = load_contract_file(contract_path)
    where = f"the contract {contract_path}"
    try:
        read_metadata(src)  # clear errors for a missing, empty, truncated or unsupported-opset file
    except Exception as exc:
        raise ExportError(str(exc)) from None
    head = onnx.load(str(src), load_external_data=False)
    check_external_data(head, src.parent, src)
    try:
        onnx.checker.check_model(str(src), full_check=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
        raise ExportError(f"{src}: onnx.checker (full check) rejects the model: {first}; fix or re-export it") from None
    model = onnx.load(str(src))
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # keep the declared shapes; the run below checks the output width
        log.debug("shape inference: %s", exc)
    inp, outp = _select_io(model, cf, src)
    _check_shapes(inp, outp, cf.contract, src, where)
    orig_in, orig_out = inp.name, outp.name

    # The output width, measured: shape inference leaves symbolic widths (e.g. a Reshape to -1).
    d0 = _dims(inp)[0]
    n_probe = d0 if isinstance(d0, int) and d0 > 0 else 2
    x = _random_batch(cf.contract, n_probe, 0)
    try:
        before = _run(model.SerializeToString(), orig_in, x)
    except Exception as exc:
        exc = exc.__cause__ or exc  # make_session's ArtifactError: onnxruntime's own message
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ExportError(
            f"{src}: onnxruntime cannot run the model on a {list(x.shape)} input built from {where}: {first}"
        ) from None
    y = before[orig_out].reshape(before[orig_out].shape[0], -1)
    if y.shape != (n_probe, cf.contract.num_classes):
        raise ExportError(
            f"{src}: output {orig_out!r} has shape {list(before[orig_out].shape)} for a batch of {n_probe}, i.e. "
            f"{y.shape[1]} scores per image, but {where} lists {cf.contract.num_classes} classes; list one class name "
            "per model output, in output order"
        )

    note = "batch axis left as it is (--keep-batch)"
    if dynamic_batch:
        model, note = _try_dynamic_batch(model, orig_in, cf.contract)
    _rename(model, orig_in, INPUT_NAME)
    _rename(model, orig_out, LOGITS_NAME)
    # logits first, as `export onnx` writes them.
    outs = list(model.graph.output)
    order = [o for o in outs if o.name == LOGITS_NAME] + [o for o in outs if o.name != LOGITS_NAME]
    del model.graph.output[:]
    model.graph.output.extend(order)
    names = tuple(o.name for o in order)

    src_sha = sha256_file(src)
    producer = f"{model.producer_name} {model.producer_version}".strip() or "unknown producer"
    contract = DeploymentContract(
        model_name=cf.contract.model_name,
        class_names=cf.contract.class_names,
        preprocess=cf.contract.preprocess,
        dataset={},
        checkpoint_sha256=src_sha,
        exporter=f"export adopt of {src.name} (written by {producer})",
        versions=library_versions(),
        input_name=INPUT_NAME,
        output_names=names,
    )
    keys = set(contract.to_metadata())
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in keys]
    del model.metadata_props[:]
    for k, v in [*kept, *contract.to_metadata().items()]:
        model.metadata_props.add(key=k, value=v)

    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        candidate = work / out.name
        # export's writer: weights inside the file below protobuf's 2 GB (external weights of the source are
        # inlined, so the adopted model is self-contained), beside it above; the full preflight below is the
        # artifact gate (a superset of export.gate's checks) before the rename.
        _save(model, candidate)
        after = _run(str(candidate), INPUT_NAME, x)
        diff = max(
            float(np.max(np.abs(before[o].astype(np.float64) - after[n])))
            for o, n in zip([orig_out] + [n for n in names if n != LOGITS_NAME], names)
        )
        if diff > REWRITE_ATOL:
            raise ExportError(
                f"adopting {src} changed its outputs by up to {diff:.3g} > {REWRITE_ATOL:g}; "
                "nothing written (please report this with the model)"
            )
        report = run_preflight(candidate, reference=None, display_path=out)
        if not report.passed:
            rejected = out.with_name(out.stem + ".rejected.preflight.json")
            write_report(report, rejected)
            errors = "\n".join(f"- {f}" for f in report.errors)
            raise ExportError(
                f"preflight failed for the adopted {src.name} (report: {rejected}); {out} not written:\n{errors}",
                report.findings,
            )
        data = candidate.with_name(candidate.name + ".data")
        if data.exists():
            os.replace(data, out.with_name(out.name + ".data"))
        os.replace(candidate, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rpath = write_report(report, report_path(out))
    image_in = next(i for i in model.graph.input if i.name == INPUT_NAME)
    dynamic = not image_in.type.tensor_type.shape.dim[0].HasField("dim_value")
    side = write_sidecar(
        out,
        {
            "stage": "adopt",
            "model_name": contract.model_name,
            "source": {"path": str(src), "sha256": src_sha, "producer": producer, "input": orig_in, "output": orig_out},
            "contract": {"path": str(contract_path), "sha256": sha256_file(contract_path)},
            "batch": note,
            "rewrite_max_abs_diff": diff,
            "inputs": report.inputs,
            "outputs": report.outputs,
            "preflight": {
                "passed": report.passed,
                "report": rpath.name,
                "errors": len(report.errors),
                "warnings": len(report.warnings),
            },
            "adopt_time_s": round(time.perf_counter() - t0, 3),
            "adopted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "file_size_bytes": out.stat().st_size,
            "versions": library_versions(),
        },
    )
    log.info("adopted %s -> %s (%s; %s)", src, out, note, report.summary())
    return AdoptResult(out, side, rpath, dynamic, note)
