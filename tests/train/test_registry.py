"""train.models registry: registration, lookup errors, listing and the `python -m train models` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

import train.models as models
from runtime.errors import ModelError
from runtime.preprocess import PreprocessSpec
from train.models import ModelInfo, create_model, get_model_info, list_models, register_model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> dict:
    """A copy of the registry so test registrations do not leak into other tests."""
    list_models()  # load the families first
    reg = dict(models._REGISTRY)
    monkeypatch.setattr(models, "_REGISTRY", reg)
    return reg


def test_list_models_includes_families_sorted() -> None:
    names = list_models()
    assert {"lanmsff", "lanmsff_tiny", "manet", "manet_tiny"} <= set(names)
    assert names == sorted(names)


def test_duplicate_registration_raises(isolated_registry: dict) -> None:
    before = dict(isolated_registry)
    with pytest.raises(ModelError) as exc:

        @register_model("lanmsff", family="x", preprocess=PreprocessSpec())
        def again(num_classes: int = 7) -> nn.Module:  # pragma: no cover - never registered
            return nn.Identity()

    assert str(exc.value) == "model name 'lanmsff' is already registered (by train.models.lanmsff)"
    assert isolated_registry == before
    assert isolated_registry["lanmsff"].family == "lanmsff"


def test_register_and_create_passes_kwargs(isolated_registry: dict) -> None:
    spec = PreprocessSpec(input_size=(32, 32))
    calls = []

    @register_model("dummy_linear", family="dummy", preprocess=spec, description="test only")
    def dummy(num_classes: int = 7, hidden: int = 3) -> nn.Module:
        calls.append((num_classes, hidden))
        return nn.Linear(hidden, num_classes)

    assert dummy.__name__ == "dummy"  # the decorator returns the factory unchanged
    info = get_model_info("dummy_linear")
    assert info == ModelInfo("dummy_linear", "dummy", dummy, spec, "test only")
    model = create_model("dummy_linear", num_classes=4, hidden=5)
    assert isinstance(model, nn.Linear) and (model.in_features, model.out_features) == (5, 4)
    assert calls == [(4, 5)]
    assert "dummy_linear" in list_models()


def test_registration_does_not_leak() -> None:
    assert "dummy_linear" not in list_models()


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ModelError) as exc:
        get_model_info("resnet18")
    msg = str(exc.value)
    assert msg.startswith("unknown model 'resnet18'; valid names: ")
    assert "lanmsff, lanmsff_tiny, manet, manet_tiny" in msg
    with pytest.raises(ModelError, match="unknown model 'resnet18'"):
        create_model("resnet18")


@pytest.mark.parametrize("num_classes", [1, 0, -3, 7.0, "7", True])
def test_bad_num_classes(num_classes) -> None:
    with pytest.raises(ModelError) as exc:
        create_model("lanmsff_tiny", num_classes=num_classes)
    assert f"num_classes must be an integer >= 2, got {num_classes!r}" in str(exc.value)


def test_model_infos() -> None:
    assert get_model_info("manet").family == "manet"
    assert get_model_info("manet_tiny").preprocess.input_shape == (3, 224, 224)
    assert get_model_info("lanmsff").preprocess.input_shape == (1, 64, 64)
    assert get_model_info("lanmsff").description.startswith("LANMSFF")


@pytest.mark.slow
def test_cli_models_table() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "train", "models"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "356,294" in out
    assert "50,547,214" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.strip()}
    assert set(lines) >= {"lanmsff", "lanmsff_tiny", "manet", "manet_tiny"}
    assert "356,294" in lines["lanmsff"] and "300.6" in lines["lanmsff"] and "1×64×64" in lines["lanmsff"]
    assert "50,547,214" in lines["manet"] and "3×224×224" in lines["manet"]
