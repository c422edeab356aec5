"""Issue 15: contract files, ``export adopt`` of plain ONNX files, ``export onnx --model``, model plugins.

The two outside architectures (MobileNet-style 1×64×64 gray, Xception-style 3×112×112 RGB) live
in tests/e2e/own_archs.py and are exported with a plain ``torch.onnx.export``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.__main__ import main as export_cli
from runtime.contract import contract_from_dict, load_contract_file, read_contract
from runtime.errors import ConfigError
from runtime.preprocess import ColorMode, PreprocessSpec, preprocess

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import own_archs as A  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
GOOD = {"classes": list(A.CLASSES), "input_size": [64, 64], "color_mode": "gray"}


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


# --- the contract file ---------------------------------------------------------------------------


def test_contract_file_round_trips_into_the_metadata_contract(tmp_path):
    path = A.write_contract("xception_rgb", tmp_path / "c.yaml", color_mode="bgr")
    cf = load_contract_file(path)
    c = cf.contract
    assert c.class_names == A.CLASSES and c.preprocess.input_size == (112, 112)
    assert c.preprocess.color_mode is ColorMode.BGR and c.preprocess.channels == 3
    assert c.model_name == "xception_rgb" and cf.layout == "NCHW" and cf.input_name is None
    # bgr really swaps the channels relative to rgb
    img = np.zeros((4, 4, 3), np.uint8)
    img[..., 0] = 200  # red
    rgb = preprocess([img], PreprocessSpec(input_size=(4, 4), color_mode="rgb", mean=(0,), std=(1,)))
    bgr = preprocess([img], PreprocessSpec(input_size=(4, 4), color_mode="bgr", mean=(0,), std=(1,)))
    assert rgb[0, 0].max() > 0.7 and bgr[0, 2].max() > 0.7 and bgr[0, 0].max() == 0


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"colour": "gray"}, "unknown contract key(s) ['colour']"),
        ({"classes": []}, "classes is empty"),
        ({"classes": ["a", "a", "b"]}, "more than once"),
        ({"mean": [0.5, 0.5, 0.5]}, "mean has 3 value(s) for color_mode gray (1 channel(s)); give 1 value or 1"),
        ({"color_mode": "rgb", "std": [0.2, 0.2]}, "std has 2 value(s) for color_mode rgb"),
        ({"color_mode": "hsv"}, "color_mode must be one of ['gray', 'rgb', 'bgr']"),
        ({"input_size": 64}, "input_size must be [height, width]"),
        ({"layout": "NHWC"}, "layout 'NHWC' is not supported"),
        ({"resize": "fit"}, "resize must be one of"),
        ({"output_name": ""}, "output_name must be a non-empty string"),
    ],
)
def test_contract_validator_names_the_problem(change, fragment):
    with pytest.raises(ConfigError) as exc:
        contract_from_dict({**GOOD, **change}, source="c.yaml")
    assert fragment in str(exc.value) and str(exc.value).startswith("c.yaml: ")


def test_contract_file_missing_keys_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"lacks required key\(s\) \['input_size', 'color_mode'\]"):
        contract_from_dict({"classes": ["a", "b"]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a, b\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_contract_file(bad)


# --- export adopt --------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(A.ARCHS))
def test_adopt_plain_fixed_batch_onnx(tmp_path, arch):
    plain = A.plain_onnx(arch, tmp_path / "plain" / "m.onnx", batch=1)
    contract = A.write_contract(arch, tmp_path / "contract.yaml")
    out = tmp_path / "run" / "model.onnx"
    assert export_cli(["adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(out)]) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert {"model.onnx", "model.onnx.json", "model.preflight.json"} <= _files(out.parent)
    c = read_contract(out)
    assert c.class_names == A.CLASSES and c.input_name == "input" and c.output_names == ("logits",)
    assert c.preprocess == load_contract_file(contract).contract.preprocess
    m = onnx.load(str(out))
    assert not m.graph.input[0].type.tensor_type.shape.dim[0].HasField("dim_value")  # batch made dynamic
    x = np.random.default_rng(0).random((5, *A.ARCHS[arch][1]), dtype=np.float32)
    want = np.concatenate([_run(plain, x[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(_run(out, x), want, atol=1e-5, rtol=0)


def test_adopt_keeps_a_batch_the_graph_bakes_in(tmp_path):
    """A Reshape to a literal [1, -1] breaks at other batches: the batch stays fixed, and says why."""

    class Baked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, 2, 1)
            self.fc = torch.nn.Linear(4 * 32 * 32, 7)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(1, -1))

    plain = tmp_path / "baked.onnx"
    torch.onnx.export(Baked().eval(), (torch.rand(1, 1, 64, 64),), str(plain), dynamo=False, opset_version=17)
    from export.adopt import adopt_onnx

    res = adopt_onnx(plain, A.write_contract("mobilenet_gray", tmp_path / "c.yaml"), tmp_path / "out" / "m.onnx")
    assert not res.dynamic_batch and "kept fixed at 1" in res.batch_note
    onnx.checker.check_model(str(res.model), full_check=True)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ({"input_size": [48, 48]}, "is 64×64 (shape [1, 1, 64, 64]) but the contract"),
        ({"color_mode": "rgb", "mean": None, "std": None}, "has 1 channel(s) (shape [1, 1, 64, 64]) but the contract"),
        ({"classes": ["happy", "sad", "neutral"]}, "has 7 classes (shape [1, 7]) but the contract"),
        ({"input_name": "pixels"}, "the contract's input_name 'pixels' is not an input of the model"),
    ],
)
def test_adopt_mismatch_is_a_clear_error_and_writes_nothing(tmp_path, caplog, override, fragment):
    plain = A.plain_onnx("mobilenet_gray", tmp_path / "plain" / "m.onnx")
    contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml", **override)
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    with caplog.at_level(logging.ERROR):
        code = export_cli(
            ["adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(out_dir / "m.onnx")]
        )
    assert code != 0
    assert fragment in caplog.text
    assert [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] == []  # nothing but the lock file


def test_adopt_refuses_external_data_outside_the_model_folder(tmp_path):
    plain = A.plain_onnx("mobilenet_gray", tmp_path / "m" / "plain.onnx")
    model = onnx.load(str(plain))
    onnx.save_model(
        model,
        str(tmp_path / "m" / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    moved = onnx.load(str(tmp_path / "m" / "ext.onnx"), load_external_data=False)
    for t in moved.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secrets/ext.onnx.data"
    (tmp_path / "secrets").mkdir()
    (tmp_path / "m" / "ext.onnx.data").rename(tmp_path / "secrets" / "ext.onnx.data")
    evil = tmp_path / "m" / "evil.onnx"
    onnx.save_model(moved, str(evil))
    contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml")
    from export.adopt import adopt_onnx
    from runtime.errors import ExportError

    with pytest.raises(ExportError, match="outside the model's folder"):
        adopt_onnx(evil, contract, tmp_path / "out" / "m.onnx")
    assert not (tmp_path / "out" / "m.onnx").exists()


def test_adopt_inlines_external_data_beside_the_model(tmp_path):
    plain = A.plain_onnx("mobilenet_gray", tmp_path / "m" / "plain.onnx")
    onnx.save_model(
        onnx.load(str(plain)),
        str(tmp_path / "m" / "ext.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=0,
    )
    from onnx.external_data_helper import uses_external_data

    from export.adopt import adopt_onnx

    res = adopt_onnx(
        tmp_path / "m" / "ext.onnx",
        A.write_contract("mobilenet_gray", tmp_path / "c.yaml"),
        tmp_path / "out" / "m.onnx",
    )
    written = onnx.load(str(res.model), load_external_data=False)
    assert not any(uses_external_data(t) for t in written.graph.initializer)
    x = np.random.default_rng(1).random((1, 1, 64, 64), dtype=np.float32)
    np.testing.assert_allclose(_run(res.model, x), _run(plain, x), atol=1e-5, rtol=0)


def test_adopt_rejects_a_file_that_is_not_onnx(tmp_path, caplog):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not onnx at all" * 10)
    contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml")
    with caplog.at_level(logging.ERROR):
        assert (
            export_cli(["adopt", "--onnx", str(junk), "--contract", str(contract), "--out", str(tmp_path / "o.onnx")])
            != 0
        )
    assert "not an ONNX model" in caplog.text and not (tmp_path / "o.onnx").exists()


# --- export onnx --model MODULE:CALLABLE ---------------------------------------------------------


@pytest.fixture
def in_e2e(monkeypatch):
    """Run from tests/e2e, as a user runs from the folder that holds their model file."""
    monkeypatch.chdir(REPO / "tests" / "e2e")


def test_export_module_with_weights_matches_pytorch(tmp_path, in_e2e):
    model = A.xception_rgb()
    with torch.no_grad():  # other weights than the callable's own, so --weights visibly matters
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    contract = A.write_contract("xception_rgb", tmp_path / "c.yaml")
    out = tmp_path / "run" / "model.onnx"
    argv = [
        "onnx",
        "--model",
        "own_archs:xception_rgb",
        "--weights",
        str(tmp_path / "sd.pt"),
        "--contract",
        str(contract),
        "--out",
        str(out),
        "--parity-batches",
        "1,4",
    ]
    assert export_cli(argv) == 0
    onnx.checker.check_model(str(out), full_check=True)
    assert read_contract(out).model_name == "xception_rgb"
    x = np.random.default_rng(3).random((6, 3, 112, 112), dtype=np.float32)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    diff = float(np.abs(_run(out, x) - ref).max())
    assert diff <= 1e-4, diff


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("not_module", "returned dict, not a torch.nn.Module"),
        ("no_attr", "has no attribute 'nope'"),
        ("no_module", "cannot import module 'no_such_models'"),
        ("bad_spec", "expected MODULE:CALLABLE"),
        ("wrong_weights", "do not fit the model: missing"),
        ("pickled", "refused: the file holds pickled Python objects"),
        ("not_weights", "expected a state_dict"),
        ("no_contract", "--model needs --contract"),
        ("contract_channels", "fails on an input of shape [2, 3, 64, 64]"),
        ("contract_classes", "returns [2, 7] for a batch of 2, but the contract"),
    ],
)
def test_export_module_bad_inputs(tmp_path, in_e2e, caplog, case, fragment):
    contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml")
    spec, extra = "own_archs:mobilenet_gray", []
    if case == "not_module":
        spec = "own_archs:not_a_module"
    elif case == "no_attr":
        spec = "own_archs:nope"
    elif case == "no_module":
        spec = "no_such_models:build"
    elif case == "bad_spec":
        spec = "own_archs:"
    elif case == "wrong_weights":
        torch.save(A.xception_rgb().state_dict(), tmp_path / "w.pt")
        extra = ["--weights", str(tmp_path / "w.pt")]
    elif case == "pickled":
        torch.save(A.mobilenet_gray(), tmp_path / "w.pt")  # a whole pickled module, not a state_dict
        extra = ["--weights", str(tmp_path / "w.pt")]
    elif case == "not_weights":
        torch.save({"epoch": 3}, tmp_path / "w.pt")
        extra = ["--weights", str(tmp_path / "w.pt")]
    elif case == "contract_channels":
        contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml", color_mode="rgb", mean=None, std=None)
    elif case == "contract_classes":
        contract = A.write_contract("mobilenet_gray", tmp_path / "c.yaml", classes=["a", "b", "c"])
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    argv = ["onnx", "--model", spec, *extra, "--out", str(out_dir / "m.onnx")]
    if case != "no_contract":
        argv += ["--contract", str(contract)]
    with caplog.at_level(logging.ERROR):
        assert export_cli(argv) != 0
    assert fragment in caplog.text
    assert not (out_dir / "m.onnx").exists() and not (out_dir / "m.onnx.json").exists()


def test_export_registered_model_through_model_flag(tmp_path):
    """MA-Net through the same route: a registered name + a contract file."""
    from train.models import get_model_info

    spec = get_model_info("manet_tiny").preprocess
    contract = tmp_path / "c.yaml"
    contract.write_text(
        "classes: [angry, disgust, fear, happy, sad, surprise, neutral]\n"
        f"input_size: {list(spec.input_size)}\ncolor_mode: {spec.color_mode.value}\nscale: {spec.scale}\n"
        f"mean: {list(spec.mean)}\nstd: {list(spec.std)}\nmodel_name: manet_tiny\n"
    )
    out = tmp_path / "run" / "model.onnx"
    assert (
        export_cli(
            ["onnx", "--model", "manet_tiny", "--contract", str(contract), "--out", str(out), "--parity-batches", "1,2"]
        )
        == 0
    )
    c = read_contract(out)
    assert c.model_name == "manet_tiny" and c.output_names[0] == "logits" and len(c.output_names) > 1


def test_models_register_through_the_entry_point_group(tmp_path):
    """A package declaring [project.entry-points."ferdeploy.models"] adds its models to the registry."""
    site = tmp_path / "site"
    (site / "fer_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "fer_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fer-plugin\nVersion: 0.1\n"
    )
    (site / "fer_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[ferdeploy.models]\nfer_plugin = fer_plugin_models\nbroken = no_such_plugin_module\n"
    )
    (site / "fer_plugin_models.py").write_text(
        textwrap.dedent("""
        from torch import nn
        from runtime.preprocess import PreprocessSpec
        from train.models import register_model

        @register_model("plugin_net", family="plugin", preprocess=PreprocessSpec(input_size=(48, 48)))
        def plugin_net(num_classes=7):
            return nn.Sequential(nn.Flatten(), nn.Linear(48 * 48, num_classes))
    """)
    )
    code = "from train.models import list_models, create_model; print(list_models()); print(create_model('plugin_net'))"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": f"{site}:{REPO}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert res.returncode == 0, res.stderr
    assert "'plugin_net'" in res.stdout and "'lanmsff'" in res.stdout and "Linear" in res.stdout
    assert "model plugin broken (no_such_plugin_module) failed to load" in res.stderr
