"""Export MTCNN's P-Net, R-Net and O-Net (``train.models.mtcnn``) to the ONNX files the runtime ships.

    python scripts/export_mtcnn.py --weights facenet_pytorch-2.6.0-py3-none-any.whl --out runtime/detectors/mtcnn

``--weights`` is the ``facenet-pytorch`` wheel (only its three ``data/*.pt`` state dicts are read;
nothing of the package is imported or installed) or a folder holding ``pnet.pt``, ``rnet.pt`` and
``onet.pt``. Each network is exported with the TorchScript exporter at opset 17 (TensorRT 10
parses it) with its own contract, written into the ONNX metadata as ``ferdeploy.detector``:

- input ``input``: float32 RGB, NCHW, pixel values 0..255; the graph itself scales them to
  ``(x - 127.5) / 128`` as the networks were trained;
- P-Net: dynamic batch, height and width (>= 12); outputs ``prob`` (N, 2, h, w) softmax, channel 1
  = face, and ``reg`` (N, 4, h, w), with h = ceil((H - 2) / 2) - 4 (stride 2, 12-pixel cell);
- R-Net (24×24) and O-Net (48×48): dynamic batch; outputs ``prob`` (N, 2), ``reg`` (N, 4)
  (box offsets as fractions of the box size) and, for O-Net, ``landmarks`` (N, 10).

A JSON sidecar (``mtcnn.json``) records the source, licences and sha256 of each input and output.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NET_INPUT = {"pnet": 12, "rnet": 24, "onet": 48}
NET_OUTPUTS = {"pnet": ["prob", "reg"], "rnet": ["prob", "reg"], "onet": ["prob", "reg", "landmarks"]}
OPSET = 17
LICENCE = {
    "weights": "MTCNN weights of Zhang, Zhang, Li, Qiao (2016) 'Joint Face Detection and Alignment using "
    "Multi-task Cascaded Convolutional Networks' (kpzhang93/MTCNN_face_detection_alignment, MIT), "
    "ported to PyTorch state dicts in facenet-pytorch (Timothy Esler, MIT)",
    "source": "facenet_pytorch/data/{pnet,rnet,onet}.pt in the facenet-pytorch wheel on PyPI",
    "code": "network definitions re-implemented in train/models/mtcnn.py (this project)",
}


def read_state_dicts(weights: str | Path) -> dict[str, tuple[dict, str]]:
    """``{net: (state_dict, sha256 of the .pt bytes)}`` from the facenet-pytorch wheel or a folder."""
    import hashlib

    import torch

    from runtime.errors import ArtifactError

    src = Path(weights)
    blobs: dict[str, bytes] = {}
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            for net in NET_INPUT:
                name = f"facenet_pytorch/data/{net}.pt"
                if name not in zf.namelist():
                    raise ArtifactError(f"{src}: no {name} inside; pass the facenet-pytorch wheel or a folder of *.pt")
                blobs[net] = zf.read(name)
    elif src.is_dir():
        for net in NET_INPUT:
            p = src / f"{net}.pt"
            if not p.is_file():
                raise ArtifactError(f"{src}: no {net}.pt; expected pnet.pt, rnet.pt and onet.pt")
            blobs[net] = p.read_bytes()
    else:
        raise ArtifactError(f"--weights {src}: not the facenet-pytorch wheel (.whl) nor a folder of pnet/rnet/onet.pt")
    return {
        net: (torch.load(io.BytesIO(b), map_location="cpu", weights_only=True), hashlib.sha256(b).hexdigest())
        for net, b in blobs.items()
    }


def build_net(net: str, state_dict: dict | None = None):
    """The PyTorch module for ``net`` wrapped so that it takes 0..255 RGB (eval mode)."""
    import torch
    from torch import nn

    from train.models.mtcnn import NETS

    class Scaled(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner

        def forward(self, x: torch.Tensor):
            return self.net((x - 127.5) * 0.0078125)

    inner = NETS[net]()
    if state_dict is not None:
        inner.load_state_dict(state_dict, strict=True)
    return Scaled(inner).eval()


def export_net(module, net: str, path: Path, meta: dict[str, Any]) -> None:
    """Write ``module`` (from `build_net`) as ONNX with the contract in the metadata."""
    import onnx
    import torch

    size = NET_INPUT[net]
    outputs = NET_OUTPUTS[net]
    axes: dict[str, dict[int, str]] = {"input": {0: "batch"}}
    if net == "pnet":
        axes["input"] = {0: "batch", 2: "height", 3: "width"}
        for o in outputs:
            axes[o] = {0: "batch", 2: "out_height", 3: "out_width"}
    else:
        for o in outputs:
            axes[o] = {0: "batch"}
    example = torch.rand(1, 3, size if net != "pnet" else 64, size if net != "pnet" else 48) * 255
    buf = io.BytesIO()
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is chosen on purpose (opset 17)
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["input"],
            output_names=outputs,
            opset_version=OPSET,
            dynamic_axes=axes,
            dynamo=False,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    model.producer_name = "ferdeploy export/mtcnn.py"
    entry = model.metadata_props.add()
    entry.key = "ferdeploy.detector"
    entry.value = json.dumps(meta, sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    from runtime.artifacts import atomic_write_bytes

    atomic_write_bytes(path, model.SerializeToString())


def export_mtcnn(weights: str | Path, out: str | Path) -> dict[str, Any]:
    """Export all three networks into ``out``; returns the sidecar body (also written as ``mtcnn.json``)."""
    import torch

    from runtime.artifacts import atomic_write_json, sha256_file

    out = Path(out)
    sds = read_state_dicts(weights)
    body: dict[str, Any] = {
        "format": "ferdeploy-detector/1",
        "family": "mtcnn",
        "licence": LICENCE,
        "torch": torch.__version__,
        "opset": OPSET,
        "nets": {},
    }
    for net, (sd, digest) in sds.items():
        meta = {
            "family": "mtcnn",
            "net": net,
            "input": "float32 RGB NCHW 0..255 (scaled in-graph to (x-127.5)/128)",
            "input_size": NET_INPUT[net] if net != "pnet" else "dynamic (>= 12)",
            "outputs": NET_OUTPUTS[net],
            "prob_face_channel": 1,
            "weights_sha256": digest,
        }
        if net == "pnet":
            meta.update(stride=2, cell=12)
        path = out / f"{net}.onnx"
        export_net(build_net(net, sd), net, path, meta)
        body["nets"][net] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "weights_sha256": digest,
            "parameters": sum(int(v.numel()) for v in sd.values()),
        }
        log.info("wrote %s (%d bytes)", path, path.stat().st_size)
    atomic_write_json(out / "mtcnn.json", body)
    return body


def state_dict_from_onnx(path: str | Path, net: str) -> dict:
    """Rebuild the PyTorch state dict from an exported file's initializers (names kept by the exporter).

    Lets a test re-export the shipped networks without the facenet-pytorch wheel and compare outputs.
    """
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ref = build_net(net).state_dict()
    out = {}
    for key, tensor in ref.items():
        name = key[len("net.") :]
        if key in inits:
            arr = inits[key]
        else:  # PReLU slopes are folded to (C, 1, 1) under an anonymous name: find the PRelu node's slope
            arr = _prelu_slope(model, name, inits)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr).reshape(tuple(tensor.shape)).copy())
    return out


def _prelu_slope(model, name: str, inits: dict):
    """The slope initializer of the PRelu node that follows the layer owning ``name`` (prelu<k>.weight)."""
    from runtime.errors import ArtifactError

    layer = name.split(".")[0]
    for node in model.graph.node:
        if node.op_type == "PRelu" and layer in node.name.replace("/", ".").split("."):
            return inits[node.input[1]]
    raise ArtifactError(f"no initializer for {name} in the ONNX file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/export_mtcnn.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="facenet-pytorch wheel (.whl) or a folder with pnet/rnet/onet.pt")
    p.add_argument("--out", default="runtime/detectors/mtcnn", help="output folder (default runtime/detectors/mtcnn)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from runtime.cli import setup_logging

    setup_logging()
    body = export_mtcnn(args.weights, args.out)
    log.info("exported %s", ", ".join(f"{k}: {v['parameters']} parameters" for k, v in body["nets"].items()))
    return 0
