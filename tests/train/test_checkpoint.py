"""train.checkpoint: save/load round trip and clear errors for bad checkpoint files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from runtime.errors import CheckpointError
from runtime.preprocess import PreprocessSpec
from train.checkpoint import FORMAT, CheckpointMeta, load_checkpoint, read_checkpoint, save_checkpoint
from train.models import create_model

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
SPEC = PreprocessSpec(input_size=(64, 64), color_mode="gray", scale=1 / 255)


def _trained_tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = create_model("lanmsff_tiny", num_classes=7, bn_momentum=0.5)
    model.train()
    with torch.no_grad():  # move BN running statistics away from their defaults
        model(torch.randn(4, 1, 64, 64))
    return model.eval()


def _save(path: Path, model: nn.Module, **overrides) -> Path:
    kwargs = dict(
        model_name="lanmsff_tiny",
        class_names=CLASSES,
        preprocess=SPEC,
        model_kwargs={"bn_momentum": 0.5},
        dataset={"kind": "synthetic", "count": 70},
    )
    kwargs.update(overrides)
    return save_checkpoint(path, model, **kwargs)


def test_round_trip_reproduces_outputs_exactly(tmp_path: Path) -> None:
    model = _trained_tiny()
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    path = _save(tmp_path / "run" / "checkpoint.pt", model)
    assert path == tmp_path / "run" / "checkpoint.pt"
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]  # no temp file left

    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    with torch.no_grad():
        got = loaded(x)
    assert torch.equal(got, expected)
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)

    assert isinstance(meta, CheckpointMeta)
    assert meta.model_name == "lanmsff_tiny"
    assert meta.num_classes == 7
    assert meta.class_names == CLASSES
    assert meta.preprocess == SPEC
    assert meta.model_kwargs == {"bn_momentum": 0.5}
    assert meta.dataset == {"kind": "synthetic", "count": 70}
    assert meta.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.path == str(path)
    bn = next(m for m in loaded.modules() if isinstance(m, nn.BatchNorm2d))
    assert bn.momentum == 0.5


def test_extra_fields_and_wrapped_model(tmp_path: Path) -> None:
    model = _trained_tiny()

    class Wrapper(nn.Module):  # stands in for DataParallel/DDP: the real model is in .module
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    path = _save(tmp_path / "c.pt", Wrapper(model), extra={"epoch": 3, "best_metric": 0.5})
    payload = read_checkpoint(path)
    assert payload["format"] == FORMAT == "ferdeploy-checkpoint/1"
    assert payload["epoch"] == 3 and payload["best_metric"] == 0.5
    assert payload["num_classes"] == 7
    assert payload["class_names"] == list(CLASSES)
    assert not any(k.startswith("module.") for k in payload["state_dict"])
    loaded, _ = load_checkpoint(path)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: checkpoint not found")


def test_truncated_file(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _trained_tiny())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: cannot read checkpoint (")
    assert "corrupt or truncated" in str(exc.value)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_checkpoint(garbage)


def test_format_mismatch(tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save({"format": "someone-else/2", "state_dict": {}}, other)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(other)
    assert str(exc.value) == (
        f"{other}: not a ferdeploy checkpoint (format 'someone-else/2', expected 'ferdeploy-checkpoint/1')"
    )
    bare = tmp_path / "bare.pt"
    torch.save(_trained_tiny().state_dict(), bare)  # a plain state dict, no format key
    with pytest.raises(CheckpointError, match="not a ferdeploy checkpoint \\(format None"):
        load_checkpoint(bare)
    listy = tmp_path / "list.pt"
    torch.save([1, 2], listy)
    with pytest.raises(CheckpointError, match="format 'list'"):
        read_checkpoint(listy)


def test_state_dict_of_another_model(tmp_path: Path) -> None:
    # lanmsff_tiny weights claimed to be the full lanmsff: same keys, different shapes.
    path = _save(tmp_path / "c.pt", _trained_tiny(), model_name="lanmsff", model_kwargs={})
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: weights do not fit model 'lanmsff'")

    # A different architecture altogether: missing and unexpected keys.
    class Small(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.extra = nn.Linear(2, 2)

    path = _save(tmp_path / "d.pt", Small(), model_kwargs={})
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: weights do not fit model 'lanmsff_tiny'")
    assert "missing ['block1." in msg and "unexpected ['extra.weight'" in msg


def test_unknown_model_name(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _trained_tiny(), model_name="resnet_missing", model_kwargs={})
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(path)
    assert str(exc.value).startswith(f"{path}: cannot rebuild model: unknown model 'resnet_missing'")


def test_save_over_existing_replaces_atomically(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _trained_tiny(0))
    first = path.read_bytes()
    _save(path, _trained_tiny(1))
    assert path.read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    _, meta = load_checkpoint(path)
    assert meta.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_class_list_that_disagrees_with_the_head_is_named(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _trained_tiny())
    payload = torch.load(path, weights_only=False)
    payload["class_names"] = [*CLASSES, "contempt"]  # 8 names, 7 outputs
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"lists 8 class names .* its head has 7 outputs.*python -m train fit"):
        load_checkpoint(path)


def test_weights_of_another_class_count_are_named(tmp_path: Path) -> None:
    path = _save(tmp_path / "c.pt", _trained_tiny())
    payload = torch.load(path, weights_only=False)
    payload["num_classes"] = 8
    payload["class_names"] = [*CLASSES, "contempt"]
    torch.save(payload, path)
    with pytest.raises(
        CheckpointError, match=r"do not fit model 'lanmsff_tiny' with 8 classes.*size mismatch.*retrain"
    ):
        load_checkpoint(path)
