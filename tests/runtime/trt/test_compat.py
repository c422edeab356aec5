"""Version parsing, the 10/11 branch, the name gate and every version difference in compat.py."""

from __future__ import annotations

import importlib.util
import logging
import sys
import types

import numpy as np
import pytest

from runtime.errors import ConfigError, MissingDependencyError
from runtime.trt import compat
from runtime.trt.api_surface import names_for
from runtime.trt.compat import Trt, TrtError, TrtVersion, Typing, branch_for, import_tensorrt

from .fakes import make_fake_trt

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.parametrize("text,branch", [("10.3.0", "10"), ("10.13.3.9", "10"), ("11.4.0.106", "11"), ("11.0", "11")])
def test_branch_for(text, branch):
    assert branch_for(text) == branch
    assert TrtVersion.parse(text).branch == branch


def test_version_parse_and_order():
    v = TrtVersion.parse("10.13.3.9")
    assert (v.major, v.minor, v.patch, v.build) == (10, 13, 3, 9)
    assert str(v) == "10.13.3.9" and str(TrtVersion.parse("10.3")) == "10.3.0"
    assert TrtVersion.parse("10.3.0") < TrtVersion.parse("10.13.3.9") < TrtVersion.parse("11.4.0")


def test_old_and_garbage_versions_are_refused():
    with pytest.raises(ConfigError, match="not supported.*TensorRT 10"):
        branch_for("8.6.1")
    with pytest.raises(ConfigError, match="cannot parse"):
        TrtVersion.parse("eleven")


def test_future_major_uses_11_branch_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        assert branch_for("12.1.0") == "11"
    assert "newer than the newest version" in caplog.text


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_names_the_extra():
    with pytest.raises(MissingDependencyError) as err:
        import_tensorrt(flavour="tensorrt")
    assert "pip install '.[trt]'" in str(err.value) and "import tensorrt:" in str(err.value)
    assert "pip install '.[trt]'" in compat.tensorrt_unavailable_reason(flavour="tensorrt")


def test_missing_lean_runtime_says_how_to_install(monkeypatch):
    for name in compat._LEAN_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes import fail
    with pytest.raises(MissingDependencyError, match="lean runtime.*tensorrt-lean"):
        import_tensorrt(lean=True)


def test_lean_bindings_module_is_found_when_the_meta_package_is_absent(monkeypatch):
    fake = make_fake_trt("11.4.0.106")
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    monkeypatch.setitem(sys.modules, "tensorrt_lean_bindings", fake)
    trt = Trt.load(lean=True)
    assert trt.lean and trt.branch == "11" and trt.module is fake
    # The lean gate allows runtime names only.
    assert trt.get("Runtime") is fake.Runtime
    with pytest.raises(TrtError, match="not declared for the 11.x branch \\(lean runtime\\)"):
        trt.get("Builder")


def test_gate_refuses_10_only_flags_on_11():
    trt10, trt11 = Trt(make_fake_trt("10.3.0")), Trt(make_fake_trt("11.4.0.106"))
    assert repr(trt10.get("BuilderFlag.FP16")) == "BuilderFlag.FP16"
    with pytest.raises(TrtError, match="'BuilderFlag.FP16' is not declared for the 11.x branch"):
        trt11.get("BuilderFlag.FP16")
    with pytest.raises(TrtError, match="not declared"):
        trt10.get("IInt8EntropyCalibrator2")  # no calibrator anywhere, not even on 10
    assert trt11.allows("NetworkDefinitionCreationFlag.STRONGLY_TYPED")


def test_module_without_version_is_rejected():
    with pytest.raises(TrtError, match="no __version__"):
        Trt(types.ModuleType("tensorrt"))


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_networks_are_strongly_typed_on_both_branches(version):
    trt = Trt(make_fake_trt(version))
    assert trt.network_flags(Typing.STRONG) == 1 << 1  # STRONGLY_TYPED = 1
    assert trt.network_flags(Typing.AUTO) == 1 << 1


def test_flags_typing_exists_on_10_only():
    trt10, trt11 = Trt(make_fake_trt("10.3.0")), Trt(make_fake_trt("11.4.0.106"))
    assert trt10.network_flags(Typing.FLAGS) == 0
    assert trt10.typings_to_try(Typing.AUTO) == (Typing.STRONG, Typing.FLAGS)
    assert trt11.typings_to_try(Typing.AUTO) == (Typing.STRONG,)
    assert trt11.typings_to_try(Typing.STRONG) == (Typing.STRONG,)
    with pytest.raises(ConfigError, match="removed the precision builder flags"):
        trt11.network_flags(Typing.FLAGS)
    with pytest.raises(ConfigError, match="--typing strong"):
        trt11.typings_to_try(Typing.FLAGS)


def test_precision_flags_only_for_weak_typing_on_10():
    fake = make_fake_trt("10.3.0")
    trt = Trt(fake)
    config = fake.Builder(None).create_builder_config()
    assert trt.apply_precision_flags(config, "int8", Typing.STRONG) == []
    assert fake.state["flags"] == []
    assert trt.apply_precision_flags(config, "int8", Typing.FLAGS) == ["BuilderFlag.FP16", "BuilderFlag.INT8"]
    assert fake.state["flags"] == ["BuilderFlag.FP16", "BuilderFlag.INT8"]
    assert trt.apply_precision_flags(config, "fp32", Typing.FLAGS) == []
    fake11 = make_fake_trt("11.4.0.106")
    with pytest.raises(ConfigError):
        Trt(fake11).apply_precision_flags(fake11.Builder(None).create_builder_config(), "fp16", Typing.FLAGS)


def test_numpy_dtypes():
    fake = make_fake_trt("11.4.0.106")
    trt = Trt(fake)
    assert trt.numpy_dtype(fake.DataType.FLOAT) == np.float32
    assert trt.numpy_dtype(fake.DataType.HALF) == np.float16
    assert trt.numpy_dtype(fake.DataType.INT64) == np.int64
    with pytest.raises(TrtError, match="no numpy equivalent"):
        trt.numpy_dtype(fake.DataType.BF16)


def test_logger_bridges_to_python_logging(caplog):
    fake = make_fake_trt("10.3.0")
    logger = Trt(fake).logger()
    assert isinstance(logger, fake.ILogger)
    with caplog.at_level(logging.DEBUG, logger="runtime.trt.tensorrt"):
        logger.log(fake.ILogger.ERROR, "Error Code 4: bad network")
        logger.log(fake.ILogger.INFO, "tactic chosen")
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels == {"Error Code 4: bad network": logging.ERROR, "tactic chosen": logging.DEBUG}


def test_gate_tables_match_the_branch():
    assert "BuilderFlag.FP16" in Trt(make_fake_trt("10.13.3.9"))._allowed
    assert Trt(make_fake_trt("11.4.0.106"))._allowed == names_for("11")
