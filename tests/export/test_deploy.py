"""python -m export deploy: Triton and DeepStream targets written from the contract, and checked.

Configs for LANMSFF (gray, exported), an MA-Net-like RGB contract, ``(x/255 - 0.5) * 2`` and a
per-channel-std contract (tiny hand-built ONNX models carrying a hand-set contract); Triton configs
parsed with Triton's own schema; nvinfer keys and values checked against the table below (taken
from nvinfer's config parser and its documented property table, not from the implementation);
bad inputs refused with a clear message, a non-zero exit and nothing written.
"""

from __future__ import annotations

import configparser
import errno
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.__main__ import main as cli
from runtime.contract import DeploymentContract
from runtime.errors import EXIT_ERROR, EXIT_STORAGE, EXIT_USAGE
from runtime.preprocess import PreprocessSpec

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

triton_schema = pytest.importorskip("export.deploy.triton")


def _schema_or_skip():
    from runtime.errors import MissingDependencyError

    try:
        return triton_schema.model_config_pb2()
    except MissingDependencyError as exc:  # pragma: no cover - `make setup` installs the deploy extra
        pytest.skip(f"Triton's schema is not installed: {exc}")


# ---- nvinfer's documented [property] keys and value ranges ----------------------------------------------
# From DeepStream's gstnvinfer_property_parser.h/.cpp (key names, and the values each key's parser
# accepts) and the "Gst-nvinfer configuration file properties" table of the DeepStream guide.
def _ints(v: str) -> list[int]:
    return [int(x) for x in v.split(";") if x]


def _floats(v: str) -> list[float]:
    return [float(x) for x in v.split(";") if x]


NVINFER_KEYS = {
    "gpu-id": lambda v: int(v) >= 0,
    "onnx-file": lambda v: bool(v),
    "model-engine-file": lambda v: bool(v),
    "labelfile-path": lambda v: bool(v),
    "batch-size": lambda v: 1 <= int(v) <= 1024,  # NVDSINFER_MAX_BATCH_SIZE
    "network-mode": lambda v: int(v) in (0, 1, 2),  # 0 FP32, 1 INT8, 2 FP16
    "network-type": lambda v: int(v) in (0, 1, 2, 3, 100),  # detector, classifier, segmentation, instance seg., other
    "process-mode": lambda v: int(v) in (1, 2),  # 1 primary, 2 secondary
    "gie-unique-id": lambda v: int(v) > 0,
    "operate-on-gie-id": lambda v: int(v) > 0,
    "operate-on-class-ids": lambda v: all(i >= 0 for i in _ints(v)),
    "classifier-threshold": lambda v: float(v) >= 0,  # "Negative value specified" is an error
    "output-blob-names": lambda v: all(_ for _ in v.split(";")),
    "infer-dims": lambda v: len(_ints(v)) == 3 and all(i > 0 for i in _ints(v)),  # c;h;w
    "network-input-order": lambda v: int(v) in (0, 1),  # NCHW, NHWC
    "model-color-format": lambda v: int(v) in (0, 1, 2),  # RGB, BGR, GRAY
    "net-scale-factor": lambda v: np.isfinite(float(v)),
    "offsets": lambda v: 1 <= len(_floats(v)) <= 4,  # _MAX_CHANNELS
    "maintain-aspect-ratio": lambda v: v in ("0", "1", "true", "false"),
    "symmetric-padding": lambda v: v in ("0", "1", "true", "false"),
    "scaling-filter": lambda v: int(v) in range(7),  # NvBufSurfTransformInter_Nearest..Default
    "scaling-compute-hw": lambda v: int(v) in (0, 1, 2),  # default, GPU, VIC (Jetson)
}


def read_nvinfer(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(delimiters=("=",), comment_prefixes=("#",), interpolation=None)
    cp.optionxform = str
    cp.read_string(path.read_text())
    assert cp.sections() == ["property"]
    return dict(cp["property"])


def check_nvinfer_keys(props: dict[str, str]) -> None:
    unknown = sorted(set(props) - set(NVINFER_KEYS))
    assert not unknown, f"keys nvinfer does not document: {unknown}"
    bad = {k: v for k, v in props.items() if not NVINFER_KEYS[k](v)}
    assert not bad, f"values outside nvinfer's ranges: {bad}"


# ---- models -------------------------------------------------------------------------------------------
def tiny_model(
    path: Path, spec: PreprocessSpec, *, batch: str | int = "batch", contract: bool = True, seed: int = 0
) -> Path:
    """A linear classifier (Flatten -> Gemm) over ``spec``'s input, with the contract in metadata_props."""
    c, h, w = spec.input_shape
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((c * h * w, len(CLASSES))) * 8 / np.sqrt(c * h * w)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("Gemm", ["flat", "W", "B"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, c, h, w])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, len(CLASSES)])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(np.zeros(len(CLASSES), np.float32), "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    if contract:
        helper.set_model_props(
            model,
            DeploymentContract(
                model_name="tiny", class_names=CLASSES, preprocess=spec, exporter="onnx.helper"
            ).to_metadata(),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# MA-Net's contract (train/models/manet.py): 224x224 RGB scaled to [0, 1], no mean/std.
MANET_SPEC = PreprocessSpec(
    input_size=(224, 224), color_mode="rgb", scale=1 / 255, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
)
HALF_SPEC = PreprocessSpec(input_size=(32, 32), color_mode="rgb", scale=1 / 255, mean=(0.5,), std=(0.5,))
IMAGENET_SPEC = PreprocessSpec(
    input_size=(32, 32), color_mode="rgb", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


@pytest.fixture(scope="module")
def lanmsff(tmp_path_factory) -> Path:
    """lanmsff_tiny (random init) exported through python -m export onnx: the demo's gray 1/255 contract."""
    torch = pytest.importorskip("torch")
    from train.checkpoint import save_checkpoint
    from train.models import create_model, get_model_info

    d = tmp_path_factory.mktemp("deploy_lanmsff")
    torch.manual_seed(0)
    spec = get_model_info("lanmsff_tiny").preprocess
    ckpt = save_checkpoint(
        d / "checkpoint.pt",
        create_model("lanmsff_tiny").eval(),
        model_name="lanmsff_tiny",
        class_names=CLASSES,
        preprocess=spec,
        dataset={"kind": "synthetic", "count": 14, "size": 64},
    )
    out = d / "model.onnx"
    assert cli(["onnx", "--checkpoint", str(ckpt), "--out", str(out), "--parity-batches", "1,2"]) == 0
    return out


def deploy(model: Path, target: str, out: Path, *extra: str) -> int:
    return cli(["deploy", "--model", str(model), "--target", target, "--out", str(out), "--samples", "12", *extra])


def report(folder: Path) -> dict:
    return json.loads((folder / "deploy_report.json").read_text())


def no_leftovers(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if p.name != ".lock" and p.name.endswith(".tmp")]
    assert not (folder / ".lock").exists()


# ---- LANMSFF (gray) ------------------------------------------------------------------------------------
def test_lanmsff_triton_repository(lanmsff, tmp_path):
    pb = _schema_or_skip()
    repo = tmp_path / "repo"
    assert deploy(lanmsff, "triton", repo) == 0
    d = repo / "lanmsff_tiny"
    cfg = triton_schema.parse_config((d / "config.pbtxt").read_text())  # Triton's own schema
    assert cfg.name == "lanmsff_tiny" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 32 and list(cfg.dynamic_batching.preferred_batch_size) == [8, 32]
    (inp,), (out,) = cfg.input, cfg.output
    assert (inp.name, pb.DataType.Name(inp.data_type), list(inp.dims)) == ("input", "TYPE_FP32", [1, 64, 64])
    assert (out.name, pb.DataType.Name(out.data_type), list(out.dims)) == ("logits", "TYPE_FP32", [7])
    assert out.label_filename == "labels.txt" and (d / "labels.txt").read_text().splitlines() == list(CLASSES)
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"]
    assert (d / "1" / "model.onnx").read_bytes() == lanmsff.read_bytes()
    r = report(d)
    v = r["emulation"]["verdict"]
    assert v["matches"] and v["max_abs_input_diff"] <= 1e-6 and v["top1_agreement"] == 1.0
    assert set(r["files"]) == {"1/model.onnx", "config.pbtxt", "labels.txt", "README.md"}
    assert "tritonserver --model-repository" in (d / "README.md").read_text()
    no_leftovers(repo)


def test_lanmsff_deepstream_config(lanmsff, tmp_path):
    out = tmp_path / "ds"
    assert deploy(lanmsff, "deepstream", out) == 0
    props = read_nvinfer(out / "nvinfer_config.txt")
    check_nvinfer_keys(props)
    assert (props["network-type"], props["process-mode"], props["model-color-format"]) == ("1", "2", "2")
    assert float(props["net-scale-factor"]) == pytest.approx(1 / 255, rel=1e-15) and _floats(props["offsets"]) == [0.0]
    assert props["infer-dims"] == "1;64;64" and props["network-mode"] == "0"  # FP32 file
    assert (props["maintain-aspect-ratio"], props["scaling-filter"]) == ("0", "1")  # stretch, bilinear
    # nvinfer names the engine it builds <onnx-file>_b<batch>_gpu<id>_<mode>.engine: the config must name the same
    assert props["model-engine-file"] == f"{props['onnx-file']}_b{props['batch-size']}_gpu{props['gpu-id']}_fp32.engine"
    assert (out / props["labelfile-path"]).read_text() == ";".join(CLASSES) + "\n"  # one line: one output layer
    # the deployed ONNX: the contract kept, one softmax output whose arg-max is the logits'
    import onnxruntime as ort

    deployed = onnx.load(str(out / props["onnx-file"]))
    assert [o.name for o in deployed.graph.output] == [props["output-blob-names"]]
    meta = {p.key: p.value for p in deployed.metadata_props}
    assert json.loads(meta["class_names"]) == list(CLASSES)
    x = np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32)
    probs = ort.InferenceSession(str(out / props["onnx-file"]), providers=["CPUExecutionProvider"]).run(
        None, {"input": x}
    )[0]
    logits = ort.InferenceSession(str(lanmsff), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == logits.argmax(1)).all()
    r = report(out)
    assert r["exact"] and r["emulation"]["verdict"]["matches"]
    assert (
        r["emulation"]["verdict"]["max_abs_input_diff"] <= 1e-6 and r["emulation"]["verdict"]["top1_agreement"] == 1.0
    )
    no_leftovers(tmp_path)


# ---- other contracts ---------------------------------------------------------------------------------------
def test_manet_rgb_contract_both_targets(tmp_path):
    pb = _schema_or_skip()
    model = tiny_model(tmp_path / "manet.onnx", MANET_SPEC)
    assert deploy(model, "deepstream", tmp_path / "ds") == 0
    props = read_nvinfer(tmp_path / "ds" / "nvinfer_config.txt")
    check_nvinfer_keys(props)
    assert props["model-color-format"] == "0" and _floats(props["offsets"]) == [0.0, 0.0, 0.0]
    assert props["infer-dims"] == "3;224;224"
    assert report(tmp_path / "ds")["emulation"]["verdict"]["matches"]
    assert deploy(model, "triton", tmp_path / "repo", "--name", "manet", "--batch", "1:4:16") == 0
    cfg = triton_schema.parse_config((tmp_path / "repo" / "manet" / "config.pbtxt").read_text())
    assert list(cfg.input[0].dims) == [3, 224, 224] and pb.DataType.Name(cfg.input[0].data_type) == "TYPE_FP32"
    assert cfg.max_batch_size == 16 and list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]


def test_minus_one_to_one_contract_is_exact(tmp_path):
    model = tiny_model(tmp_path / "m.onnx", HALF_SPEC)
    assert deploy(model, "deepstream", tmp_path / "ds") == 0
    props = read_nvinfer(tmp_path / "ds" / "nvinfer_config.txt")
    assert float(props["net-scale-factor"]) == pytest.approx(2 / 255, rel=1e-15)
    assert _floats(props["offsets"]) == [127.5, 127.5, 127.5]
    v = report(tmp_path / "ds")["emulation"]["verdict"]
    assert v["max_abs_input_diff"] <= 1e-6 and v["top1_agreement"] == 1.0


def test_per_channel_std_is_refused_then_flagged(tmp_path, caplog):
    model = tiny_model(tmp_path / "imagenet.onnx", IMAGENET_SPEC)
    out = tmp_path / "ds"
    assert deploy(model, "deepstream", out) == EXIT_ERROR
    assert not out.exists() and not list(tmp_path.glob(".*tmp"))  # nothing written
    assert "per-channel std" in caplog.text and "Worst-case input error" in caplog.text
    assert "--allow-approximate" in caplog.text and "top-1 agreement" in caplog.text
    caplog.clear()
    assert deploy(model, "deepstream", out, "--allow-approximate") == 0
    r = report(out)
    assert not r["exact"] and r["allow_approximate"]
    worst = r["mapping"]["worst_case_normalisation_error"]
    measured = r["emulation"]["verdict"]["max_abs_input_diff"]
    assert 0 < measured <= worst + 1e-6  # the measured error is real and within the stated worst case
    assert 0.0 <= r["emulation"]["verdict"]["top1_agreement"] <= 1.0
    assert "APPROXIMATES" in (out / "nvinfer_config.txt").read_text()
    md = (out / "deploy_report.md").read_text()
    assert "Approximate contract" in md and f"{worst:.4g}" in md
    check_nvinfer_keys(read_nvinfer(out / "nvinfer_config.txt"))
    # the same model to Triton is exact: the client sends the contract's tensor
    _schema_or_skip()
    assert deploy(model, "triton", tmp_path / "repo") == 0 and report(tmp_path / "repo" / "tiny")["exact"]


def test_single_scale_is_the_minimax_choice():
    from export.deploy.deepstream import map_contract

    pre = map_contract(IMAGENET_SPEC)
    a = [IMAGENET_SPEC.scale / s for s in IMAGENET_SPEC.std]
    spans = [max(o, 255 - o) for o in pre.offsets]

    def worst(k: float) -> float:
        return max(abs(ai - k) * s for ai, s in zip(a, spans))

    assert worst(pre.net_scale_factor) == pytest.approx(pre.worst_case_normalisation_error)
    for k in np.linspace(min(a), max(a), 201):  # no other single scale does better
        assert worst(pre.net_scale_factor) <= worst(float(k)) + 1e-12


def test_letterbox_maps_to_aspect_and_symmetric_padding(tmp_path):
    from export.deploy.deepstream import ParsedNvinfer
    from export.deploy.emulate import nvinfer_input

    spec = PreprocessSpec(input_size=(16, 16), resize="letterbox")
    model = tiny_model(tmp_path / "lb.onnx", spec)
    assert deploy(model, "deepstream", tmp_path / "refused") == EXIT_ERROR  # approximate: refused
    assert deploy(model, "deepstream", tmp_path / "ds", "--allow-approximate") == 0
    props = read_nvinfer(tmp_path / "ds" / "nvinfer_config.txt")
    assert (props["maintain-aspect-ratio"], props["symmetric-padding"]) == ("1", "1")
    # nvinfer pads with black after truncating the scaled size: an 8x16 crop fills rows 4..11 of 16
    cfg = ParsedNvinfer.from_config(props)
    x = nvinfer_input([np.full((8, 16, 3), 255, np.uint8)], cfg)[0, 0]
    assert (x[4:12] > 0).all() and (x[:4] == 0).all() and (x[12:] == 0).all()


# ---- engines (Triton tensorrt_plan) --------------------------------------------------------------------
def fake_engine(
    tmp_path: Path,
    *,
    gpu: str = "Orin",
    cc: str = "8.7",
    flavour: str | None = None,
    onnx_path: Path | None = None,
    profile: str = "1:4:16",
) -> Path:
    """A stand-in plan (bytes only) with the sidecar python -m runtime build writes."""
    from runtime.artifacts import sha256_file
    from runtime.trt.cache import EngineKey, write_engine_sidecar

    src = onnx_path or tiny_model(tmp_path / "model.onnx", PreprocessSpec(input_size=(8, 8)))
    plan = tmp_path / "model.fp16.engine"
    plan.write_bytes(b"not a real plan: its bytes are only copied")
    key = EngineKey(sha256_file(src), "10.3.0", gpu, cc, "fp16", profile, {"typing": "strong"})
    extra = {"onnx": str(src)} | ({"flavour": flavour} if flavour else {})
    write_engine_sidecar(plan, key, extra)
    return plan


def test_engine_for_the_named_gpu_becomes_a_tensorrt_plan(tmp_path):
    pb = _schema_or_skip()
    plan = fake_engine(tmp_path)
    repo = tmp_path / "repo"
    assert deploy(plan, "triton", repo, "--gpu", "8.7", "--name", "fer") == 0
    d = repo / "fer"
    cfg = triton_schema.parse_config((d / "config.pbtxt").read_text())
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]  # the engine's profile 1:4:16
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_GPU"]
    assert (d / "1" / "model.plan").read_bytes() == plan.read_bytes()
    side = json.loads((d / "1" / "model.plan.json").read_text())
    assert side["key"]["tensorrt_version"] == "10.3.0" and side["key"]["gpu_name"] == "Orin"
    r = report(d)
    assert r["engine"]["compute_capabilities"] == ["8.7"] and "matches" in r["gpu_check"]
    assert "TensorRT 10.3.0" in (d / "README.md").read_text()
    # by name too, case- and "NVIDIA"-insensitive
    assert deploy(plan, "triton", repo, "--gpu", "nvidia orin", "--name", "fer", "--force") == 0


@pytest.mark.parametrize("gpu", ["9.0", "NVIDIA H100 80GB HBM3"])
def test_engine_built_for_another_gpu_is_refused(tmp_path, caplog, gpu):
    _schema_or_skip()
    plan = fake_engine(tmp_path)
    repo = tmp_path / "repo"
    assert deploy(plan, "triton", repo, "--gpu", gpu) == EXIT_ERROR
    assert "Orin" in caplog.text and "8.7" in caplog.text and "does not run on another GPU" in caplog.text
    assert not repo.exists()


def test_engine_refusals(tmp_path, caplog):
    _schema_or_skip()
    plan = fake_engine(tmp_path)
    repo = tmp_path / "repo"
    assert deploy(plan, "triton", repo) == EXIT_USAGE and "--gpu" in caplog.text  # which GPU? say it
    assert deploy(plan, "triton", repo, "--gpu", "8.7", "--instance", "cpu") == EXIT_USAGE
    assert deploy(plan, "deepstream", tmp_path / "ds") == EXIT_USAGE and "onnx-file" in caplog.text
    rtx = fake_engine(tmp_path / "rtx", flavour="tensorrt-rtx")
    assert deploy(rtx, "triton", repo, "--gpu", "8.7") == EXIT_USAGE and "RTX" in caplog.text
    big = fake_engine(tmp_path / "big", profile="8:8:32")
    assert deploy(big, "triton", repo, "--gpu", "8.7") == EXIT_USAGE and "starts at 8" in caplog.text
    other = tiny_model(tmp_path / "other.onnx", PreprocessSpec(input_size=(8, 8)), seed=5)
    assert deploy(plan, "triton", repo, "--gpu", "8.7", "--onnx", str(other)) == EXIT_ERROR
    assert "not the ONNX" in caplog.text
    (plan.with_name(plan.name + ".json")).unlink()
    assert deploy(plan, "triton", repo, "--gpu", "8.7") == EXIT_ERROR and "no sidecar" in caplog.text
    assert not repo.exists() and not (tmp_path / "ds").exists()


# ---- bad inputs: clear error, non-zero exit, nothing written ---------------------------------------------
def test_model_without_contract_is_refused(tmp_path, caplog):
    model = tiny_model(tmp_path / "bare.onnx", PreprocessSpec(input_size=(8, 8)), contract=False)
    for target in ("deepstream", "triton"):
        out = tmp_path / target
        assert deploy(model, target, out) == EXIT_ERROR
        assert "deployment-contract" in caplog.text and "re-export" in caplog.text
        assert not out.exists()


def test_unwritable_output_folder(tmp_path, caplog, monkeypatch):
    model = tiny_model(tmp_path / "m.onnx", PreprocessSpec(input_size=(8, 8)))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    assert deploy(model, "deepstream", blocker / "ds") == EXIT_STORAGE
    assert "not a folder" in caplog.text and blocker.read_text() == "a file where a folder should be"
    # a read-only disk (root ignores permission bits, so the refusal is simulated at mkdtemp)
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    out = tmp_path / "new" / "deeper" / "ds"
    assert deploy(model, "deepstream", out) == EXIT_STORAGE and "read-only file system" in caplog.text
    assert not (tmp_path / "new").exists()  # the parents it made are removed again


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so a read-only folder is writable")
def test_output_folder_without_permission(tmp_path, caplog):  # pragma: no cover - CI runs as root
    model = tiny_model(tmp_path / "m.onnx", PreprocessSpec(input_size=(8, 8)))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert deploy(model, "deepstream", ro / "ds") == EXIT_STORAGE and "permission denied" in caplog.text
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_existing_destination_needs_force(tmp_path, caplog):
    model = tiny_model(tmp_path / "m.onnx", PreprocessSpec(input_size=(8, 8)))
    out = tmp_path / "ds"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert deploy(model, "deepstream", out) == EXIT_USAGE and "--force" in caplog.text
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert deploy(model, "deepstream", out, "--force") == 0
    assert not (out / "mine.txt").exists() and (out / "nvinfer_config.txt").is_file()
    no_leftovers(tmp_path)


def test_triton_schema_rejects_what_triton_would():
    _schema_or_skip()
    from google.protobuf.text_format import ParseError

    with pytest.raises(ParseError):
        triton_schema.parse_config('name: "m"\nmax_batch_sise: 8\n')  # a typo Triton refuses at load time
    with pytest.raises(ParseError):
        triton_schema.parse_config('name: "m"\ninput [ { name: "x" data_type: TYPE_FLOAT32 dims: [ 1 ] } ]\n')


def test_deploy_needs_no_torch(tmp_path):
    model = tiny_model(tmp_path / "m.onnx", PreprocessSpec(input_size=(8, 8)))
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class HideTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is hidden for this test")
        sys.meta_path.insert(0, HideTorch())
        from export.__main__ import main
        sys.exit(main(["deploy", "--model", {str(model)!r}, "--target", "deepstream", "--out", {str(tmp_path / "ds")!r},
                       "--samples", "4"]))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "ds" / "nvinfer_config.txt").is_file()


# ---- colour order and precision --------------------------------------------------------------------------
def test_bgr_contract_uses_color_format_1(tmp_path):
    from runtime.preprocess import ColorMode

    if "BGR" not in ColorMode.__members__:  # pragma: no cover - older checkouts
        pytest.skip("this checkout's contract has no bgr colour mode")
    model = tiny_model(tmp_path / "bgr.onnx", PreprocessSpec(input_size=(16, 16), color_mode="bgr", scale=1 / 255))
    assert deploy(model, "deepstream", tmp_path / "ds") == 0
    assert read_nvinfer(tmp_path / "ds" / "nvinfer_config.txt")["model-color-format"] == "1"
    v = report(tmp_path / "ds")["emulation"]["verdict"]
    assert v["max_abs_input_diff"] <= 1e-6 and v["top1_agreement"] == 1.0


def test_network_mode_follows_the_file_precision(tmp_path, caplog):
    spec = PreprocessSpec(input_size=(8, 8))
    q = tiny_model(tmp_path / "model.int8.onnx", spec)
    q.with_name(q.name + ".json").write_text(
        json.dumps({"stage": "quantize", "precision": "int8"})
    )  # quantize's sidecar
    assert deploy(q, "deepstream", tmp_path / "int8") == 0
    props = read_nvinfer(tmp_path / "int8" / "nvinfer_config.txt")
    assert props["network-mode"] == "1" and props["model-engine-file"].endswith("_int8.engine")
    f = tiny_model(tmp_path / "model.onnx", spec)
    assert deploy(f, "deepstream", tmp_path / "fp16", "--precision", "fp16", "--batch", "4") == 0
    props = read_nvinfer(tmp_path / "fp16" / "nvinfer_config.txt")
    assert props["network-mode"] == "2" and props["model-engine-file"] == "tiny.onnx_b4_gpu0_fp16.engine"
    assert deploy(f, "deepstream", tmp_path / "bad", "--precision", "int8") == EXIT_USAGE
    assert "Q/DQ" in caplog.text and not (tmp_path / "bad").exists()


def test_pipeline_step_writes_where_it_says(tmp_path):
    from export.deploy import pipeline_report_path, pipeline_step

    model = tiny_model(tmp_path / "model.onnx", PreprocessSpec(input_size=(8, 8)))
    for _ in range(2):  # a rerun replaces the previous output
        facts = pipeline_step(model, tmp_path / "deploy", "deepstream", {"samples": 4})
        assert pipeline_report_path(tmp_path / "deploy", "deepstream").is_file()
        assert facts["exact"] and facts["top1_agreement"] == 1.0
    if importlib.util.find_spec("tritonclient") is not None:
        pipeline_step(model, tmp_path / "deploy", "triton", {"samples": 4})
        assert pipeline_report_path(tmp_path / "deploy", "triton").is_file()
    from runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown option"):
        pipeline_step(model, tmp_path / "deploy", "deepstream", {"sample": 4})


def test_compute_capability_spellings():
    from export.deploy.model import _norm_cc

    assert [_norm_cc(v) for v in ("8.7", "sm_87", "87", "sm_120", "12.0", (9, 0), "default")] == [
        "8.7",
        "8.7",
        "8.7",
        "12.0",
        "12.0",
        "9.0",
        "",
    ]


def test_fixed_batch_model_gets_max_batch_size_zero(tmp_path):
    _schema_or_skip()
    model = tiny_model(tmp_path / "fixed.onnx", PreprocessSpec(input_size=(8, 8)), batch=4)
    assert deploy(model, "triton", tmp_path / "repo", "--batch", "1:2:4") == EXIT_USAGE  # a fixed batch cannot change
    assert deploy(model, "triton", tmp_path / "repo") == 0
    cfg = triton_schema.parse_config((tmp_path / "repo" / "tiny" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [4, 1, 8, 8]
    assert not cfg.HasField("dynamic_batching")
    assert report(tmp_path / "repo" / "tiny")["emulation"]["verdict"]["matches"]
    assert deploy(model, "deepstream", tmp_path / "ds") == 0  # nvinfer's batch-size is the fixed batch
    assert read_nvinfer(tmp_path / "ds" / "nvinfer_config.txt")["batch-size"] == "4"
