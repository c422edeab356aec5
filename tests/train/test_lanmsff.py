"""LANMSFF fidelity: parameter/MAC counts, shape errors, PWFS, channel shuffle and ONNX parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from runtime.errors import ModelError
from train.models import create_model, get_model_info
from train.models.lanmsff import LANMSFF, TwoPath, channel_shuffle, pwfs
from train.models.profile import count_macs, count_params


@pytest.fixture(scope="module")
def full_model() -> LANMSFF:
    torch.manual_seed(0)
    return create_model("lanmsff", num_classes=7).eval()


def _tiny(seed: int = 0, **kwargs) -> LANMSFF:
    torch.manual_seed(seed)
    return create_model("lanmsff_tiny", **kwargs).eval()


def test_param_counts_match_keras_summary(full_model: LANMSFF) -> None:
    assert sum(p.numel() for p in full_model.parameters()) == 356_294
    assert count_params(full_model) == 356_294
    assert count_params(create_model("lanmsff", num_classes=8)) == 356_451
    # fc: (66/3 + 72/3 + 78/3 + 84) inputs = 156, so one more class adds 157 parameters.
    assert full_model.fc.in_features == 156


def test_bn_running_statistics_count(full_model: LANMSFF) -> None:
    stats = sum(b.numel() for n, b in full_model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert stats == 2_112
    bns = [m for m in full_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in bns)


def test_macs_at_64x64(full_model: LANMSFF) -> None:
    macs = count_macs(full_model, (1, 1, 64, 64))
    assert abs(macs - 300.6e6) / 300.6e6 < 0.01
    assert count_macs(full_model, (2, 1, 64, 64)) == 2 * macs


@pytest.mark.parametrize("num_classes", [7, 8])
def test_forward_shape(full_model: LANMSFF, num_classes: int) -> None:
    model = full_model if num_classes == 7 else create_model("lanmsff", num_classes=8).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()


def test_forward_at_other_multiples_of_32() -> None:
    with torch.no_grad():
        assert _tiny()(torch.randn(1, 1, 96, 128)).shape == (1, 7)


def test_48x48_input_raises_helpful_error(full_model: LANMSFF) -> None:
    with pytest.raises(ModelError) as exc:
        full_model(torch.randn(1, 1, 48, 48))
    msg = str(exc.value)
    assert "multiples of 32" in msg and "got 48×48" in msg and "resize to 64×64" in msg


@pytest.mark.parametrize("shape", [(1, 3, 64, 64), (1, 64, 64), (2, 2, 64, 64)])
def test_wrong_channels_or_rank_raise(full_model: LANMSFF, shape: tuple[int, ...]) -> None:
    with pytest.raises(ModelError) as exc:
        full_model(torch.randn(*shape))
    assert f"LANMSFF expects N×1×H×W input, got {shape}" in str(exc.value)


def test_constructor_validation() -> None:
    with pytest.raises(ModelError, match="PWFS needs block 1 width divisible by 3, got 64"):
        LANMSFF(widths=(64, 72, 78, 84))
    with pytest.raises(ModelError, match="PWFS needs block 3 width divisible by 3, got 80"):
        LANMSFF(widths=(66, 72, 80, 84))
    with pytest.raises(ModelError, match="TwoPath needs even channel counts, got 66->9"):
        TwoPath(66, 9)


def _pwfs_reference(x: np.ndarray) -> np.ndarray:
    g = x.shape[1] // 3
    stacked = np.stack([x[:, :g], x[:, g : 2 * g], x[:, 2 * g :]], axis=0)
    return 0.5 * (stacked.max(axis=0) + np.median(stacked, axis=0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pwfs_matches_numpy_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    for shape in [(2, 9, 5, 4), (1, 66, 8, 8), (3, 3, 1, 1)]:
        x = torch.randn(*shape, generator=gen, dtype=dtype)
        out = pwfs(x)
        assert out.shape == (shape[0], shape[1] // 3, *shape[2:])
        assert out.dtype == dtype
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        np.testing.assert_allclose(out.numpy(), _pwfs_reference(x.numpy()), rtol=0, atol=tol)
    # Hand example with ties: groups (1, 5, 3) -> 0.5·(5 + 3) = 4; (2, 2, 7) -> 0.5·(7 + 2) = 4.5
    x = torch.tensor([1.0, 2.0, 5.0, 2.0, 3.0, 7.0], dtype=dtype).reshape(1, 6, 1, 1)
    assert pwfs(x).flatten().tolist() == [4.0, 4.5]


def test_channel_shuffle_order() -> None:
    x = torch.arange(6, dtype=torch.float32).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]
    y = torch.arange(2 * 8 * 2 * 3, dtype=torch.float32).reshape(2, 8, 2, 3)
    out = channel_shuffle(y, 2)
    assert out.shape == y.shape
    order = [0, 4, 1, 5, 2, 6, 3, 7]
    assert torch.equal(out, y[:, order])
    assert channel_shuffle(torch.arange(6.0).reshape(1, 6, 1, 1), 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]


def test_registry_entries() -> None:
    for name in ("lanmsff", "lanmsff_tiny"):
        info = get_model_info(name)
        assert info.family == "lanmsff"
        assert info.preprocess.input_shape == (1, 64, 64)
        assert info.preprocess.scale == pytest.approx(1 / 255)
    tiny = _tiny()
    assert [tiny.block1.body[0][0].out_channels, tiny.block3.body[0][0].out_channels] == [12, 18]
    assert tiny.fc.in_features == 12 // 3 + 12 // 3 + 18 // 3 + 24


def test_eval_is_deterministic_and_dropout_active_in_train() -> None:
    model = _tiny()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert not torch.equal(a, b)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning")
def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = _tiny(seed=4)
    path = tmp_path / "lanmsff_tiny.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 1, 64, 64),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    import onnx

    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        expected = model(x).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"input": x.numpy()})
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
