"""Triton Inference Server: a model repository entry written from the model and its contract.

``REPO/<name>/config.pbtxt`` (platform ``onnxruntime_onnx`` or ``tensorrt_plan``), the model in
``REPO/<name>/1/`` (``model.onnx``, or ``model.plan`` with its sidecar ``model.plan.json``), the
class names in ``labels.txt`` wired to the logits output through ``label_filename`` (Triton's
classification extension then answers ``score:index:label``), and a README saying how to start the
server and query it. Batch: a dynamic batch axis gives ``max_batch_size`` > 0, dims without the
batch, and dynamic batching with the preferred sizes of the engine's optimization profile (for an
ONNX, of ``--batch MIN:OPT:MAX``); a fixed batch gives ``max_batch_size: 0`` and the full shape.

The written text is parsed back with Triton's own protobuf schema (``model_config.proto``, shipped
as ``model_config_pb2`` in the ``tritonclient`` package: the ``deploy`` extra) and checked.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.deploy.model import ModelSource, Tensor
from runtime.errors import ExportError, MissingDependencyError

log = logging.getLogger(__name__)

LABELS_NAME = "labels.txt"
TRITON_TYPES = {
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.int16): "TYPE_INT16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.bool_): "TYPE_BOOL",
}
NUMPY_TYPES = {v: k for k, v in TRITON_TYPES.items()}
_SCHEMA: Any = None


def model_config_pb2() -> Any:
    """Triton's ``model_config_pb2`` from the installed ``tritonclient`` (loaded without its gRPC client).

    ``tritonclient/grpc/__init__.py`` needs grpcio (and a protobuf older than the one pinned here),
    but the generated schema module beside it needs only protobuf, so it is loaded by file path.

    Raises:
        MissingDependencyError: tritonclient is not installed (names the extra).
    """
    global _SCHEMA
    if _SCHEMA is not None:
        return _SCHEMA
    spec = importlib.util.find_spec("tritonclient")
    pb2 = None
    if spec is not None and spec.submodule_search_locations:
        pb2 = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if pb2 is None or not pb2.is_file():
        raise MissingDependencyError(
            "Triton's model-config schema is not installed (tritonclient ships it as grpc/model_config_pb2.py); "
            "it validates the written config.pbtxt. Install it with: pip install '.[deploy]'"
        )
    mod_spec = importlib.util.spec_from_file_location("ferdeploy_triton_model_config_pb2", pb2)
    module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
    mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    _SCHEMA = module
    return module


def parse_config(text: str) -> Any:
    """``config.pbtxt`` text -> ``inference.ModelConfig`` (ParseError on an unknown field or bad value)."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2().ModelConfig())


@dataclass(frozen=True)
class TritonSettings:
    """What the config holds besides the model's own tensors."""

    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan
    max_batch_size: int  # 0: the model's batch is fixed
    preferred_batch_sizes: tuple[int, ...]
    instance_kind: str = "KIND_GPU"
    instance_count: int = 1
    max_queue_delay_us: int = 100


def _dims(t: Tensor, batched: bool) -> list[int]:
    dims = list(t.shape[1:] if batched else t.shape)
    if any(d is None for d in dims):
        raise ExportError(
            f"tensor {t.name!r} has a dynamic dimension besides the batch {t.shape}; Triton needs "
            "fixed image dims: re-export with a fixed input size"
        )
    return [int(d) for d in dims]  # type: ignore[arg-type]


def config_text(src: ModelSource, s: TritonSettings, header: Sequence[str] = ()) -> str:
    """The ``config.pbtxt`` text (protobuf text format)."""
    batched = s.max_batch_size > 0
    logits = src.logits.name
    lines = [f"# {h}" for h in header]
    lines += [f'name: "{s.name}"', f'platform: "{s.platform}"', f"max_batch_size: {s.max_batch_size}", "input ["]
    t = src.input
    lines += [
        "  {",
        f'    name: "{t.name}"',
        f"    data_type: {TRITON_TYPES[t.dtype]}",
        f"    dims: [ {', '.join(map(str, _dims(t, batched)))} ]",
        "  }",
        "]",
        "output [",
    ]
    for i, o in enumerate(src.outputs):
        lines += [
            "  {",
            f'    name: "{o.name}"',
            f"    data_type: {TRITON_TYPES[o.dtype]}",
            f"    dims: [ {', '.join(map(str, _dims(o, batched)))} ]",
        ]
        if o.name == logits:
            lines.append(f'    label_filename: "{LABELS_NAME}"')
        lines.append("  }," if i < len(src.outputs) - 1 else "  }")
    lines.append("]")
    if batched:
        lines += [
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, s.preferred_batch_sizes))} ]",
            f"  max_queue_delay_microseconds: {s.max_queue_delay_us}",
            "}",
        ]
    lines += ["instance_group [", "  {", f"    count: {s.instance_count}", f"    kind: {s.instance_kind}", "  }", "]"]
    return "\n".join(lines) + "\n"


def check_config(
    cfg: Any, src: ModelSource, s: TritonSettings, model_dir: Path, folder_name: str | None = None
) -> list[str]:
    """Problems of a parsed config against the model and Triton's rules (empty: none).

    ``folder_name``: the name the model folder will have (``model_dir`` may be a staging folder).
    """
    pb = model_config_pb2()
    problems: list[str] = []
    folder = folder_name or model_dir.name
    if cfg.name != folder:
        problems.append(f"name {cfg.name!r} is not the model folder's name {folder!r}")
    if cfg.platform != s.platform:
        problems.append(f"platform {cfg.platform!r} is not {s.platform!r}")
    batched = cfg.max_batch_size > 0
    if len(cfg.input) != 1 or cfg.input[0].name != src.input.name:
        problems.append(f"inputs {[i.name for i in cfg.input]} are not the model's [{src.input.name!r}]")
    want = {o.name: o for o in src.outputs}
    if sorted(o.name for o in cfg.output) != sorted(want):
        problems.append(f"outputs {[o.name for o in cfg.output]} are not the model's {sorted(want)}")
    for t in (*cfg.input, *cfg.output):
        ref = src.input if t.name == src.input.name else want.get(t.name)
        if ref is None:
            continue
        if pb.DataType.Name(t.data_type) != TRITON_TYPES[ref.dtype]:
            problems.append(f"{t.name}: data_type {pb.DataType.Name(t.data_type)} is not {TRITON_TYPES[ref.dtype]}")
        if list(t.dims) != _dims(ref, batched):
            problems.append(f"{t.name}: dims {list(t.dims)} are not {_dims(ref, batched)}")
    labelled = [o for o in cfg.output if o.label_filename]
    if [o.name for o in labelled] != [src.logits.name]:
        problems.append(f"label_filename is on {[o.name for o in labelled]}, expected on [{src.logits.name!r}]")
    for o in labelled:
        path = model_dir / o.label_filename
        if not path.is_file():
            problems.append(f"label file {o.label_filename} is not in {model_dir}")
        else:
            labels = path.read_text(encoding="utf-8").splitlines()
            if labels != list(src.contract.class_names):
                problems.append(
                    f"{o.label_filename} lists {labels}, not the contract's {list(src.contract.class_names)}"
                )
    if batched:
        if not cfg.HasField("dynamic_batching"):
            problems.append("a dynamic batch axis but no dynamic_batching")
        elif any(not 1 <= b <= cfg.max_batch_size for b in cfg.dynamic_batching.preferred_batch_size):
            problems.append(
                f"preferred_batch_size {list(cfg.dynamic_batching.preferred_batch_size)} outside "
                f"1..max_batch_size {cfg.max_batch_size}"
            )
    kinds = {pb.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group}
    if s.platform == "tensorrt_plan" and kinds - {"KIND_GPU"}:
        problems.append(f"a TensorRT plan runs on the GPU only, instance_group has {sorted(kinds)}")
    version_dir = model_dir / "1"
    filename = "model.plan" if s.platform == "tensorrt_plan" else "model.onnx"
    if not (version_dir / filename).is_file():
        problems.append(f"{version_dir / filename} is missing")
    return problems


def readme_text(src: ModelSource, s: TritonSettings, gpu_check: str) -> str:
    """How to start Triton on the repository and query this model."""
    c = src.contract
    name = s.name
    lines = [
        f"# Triton model `{name}`",
        "",
        f"Written by `python -m export deploy --target triton` from `{src.path.name}` (contract of "
        f"`{c.model_name}`, {c.num_classes} classes: {', '.join(c.class_names)}).",
        "",
        "## Start the server",
        "",
        "```bash",
        "# REPO is the folder that holds this one (the model repository)",
        'docker run --gpus all --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/REPO:/models" \\',
        "    nvcr.io/nvidia/tritonserver:<yy.mm>-py3 tritonserver --model-repository=/models",
        f"curl -s localhost:8000/v2/models/{name}/ready && echo ready",
        "```",
        "",
    ]
    if s.platform == "tensorrt_plan" and src.engine is not None:
        e = src.engine
        lines += [
            f"The plan was built by TensorRT {e.tensorrt_version} for {e.gpu_name or 'compute capability'} "
            f"({', '.join(e.compute_capabilities)}); {gpu_check}. Use a Triton release whose TensorRT is "
            f"{e.tensorrt_version}"
            + (" (the plan is version-compatible: a newer TensorRT also loads it)" if e.version_compatible else "")
            + "; any other TensorRT or GPU model refuses the plan. `1/model.plan.json` is its sidecar.",
            "",
        ]
    else:
        lines += ["Without a GPU, set `kind: KIND_CPU` in `instance_group` (`--instance cpu` when deploying).", ""]
    contract_line = (
        f'contract = read_contract("{src.onnx.name}")  # the ONNX the plan was built from'
        if s.platform == "tensorrt_plan"
        else f'contract = read_contract("REPO/{name}/1/model.onnx")'
    )
    batch = (
        f"up to {s.max_batch_size} images per request; dynamic batching prefers {list(s.preferred_batch_sizes)}"
        if s.max_batch_size
        else "the fixed batch of the model"
    )
    lines += [
        "## Query it",
        "",
        f"The server expects the preprocessed tensor (`{src.input.name}`, {TRITON_TYPES[src.input.dtype]}, "
        f"NCHW, {batch}). Make it with the contract, so the client cannot drift from training:",
        "",
        "```python",
        "import cv2, numpy as np, tritonclient.http as httpclient  # pip install 'tritonclient[http]'",
        "from runtime.contract import read_contract                 # this project, torch-free",
        "from runtime.preprocess import preprocess",
        "",
        contract_line,
        'face = cv2.cvtColor(cv2.imread("face.png"), cv2.COLOR_BGR2RGB)  # a face crop, RGB uint8',
        "batch = preprocess([face], contract.preprocess)",
        'client = httpclient.InferenceServerClient("localhost:8000")',
        f'inp = httpclient.InferInput("{src.input.name}", list(batch.shape), "{TRITON_TYPES[src.input.dtype][5:]}")',
        f"inp.set_data_from_numpy(batch.astype(np.{src.input.dtype.name}))",
        f'out = httpclient.InferRequestedOutput("{src.logits.name}", class_count=1)  # labels.txt -> names',
        f'result = client.infer("{name}", [inp], outputs=[out])',
        f'print(result.as_numpy("{src.logits.name}"))  # [b"score:index:label"]',
        "```",
        "",
        "`deploy_report.md` beside this file records what was checked here (the config parsed with Triton's "
        "schema, the client's input reproducing the contract, top-1 through the model) and what needs the "
        "server.",
    ]
    return "\n".join(lines) + "\n"
