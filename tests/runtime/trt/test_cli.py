"""``build`` / ``selftest`` verbs: argument validation and the clear failure without TensorRT."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from runtime import errors as E
from runtime.trt import cli, compat, cuda

from .conftest import FIXTURES
from .fakes import FakeCuda, make_fake_trt

REPO = Path(__file__).resolve().parents[3]
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture
def onnx(tmp_path):
    path = tmp_path / "m.int8.onnx"
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--batch", "8:1:32"], "min <= opt <= max"),
        (["--batch", "1:x:3"], "integers"),
        (["--precision", "fp8"], "invalid choice: 'fp8'"),
        (["--typing", "weak"], "invalid choice: 'weak'"),
        (["--min-precision-share", "2"], "in \\[0, 1\\]"),
        (["--workspace-mib", "-5"], ">= 0"),
    ],
)
def test_bad_arguments_are_usage_errors(onnx, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        cli.build_main(["--onnx", str(onnx), *argv])
    assert exc.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_onnx_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.build_main([])
    assert exc.value.code == 2 and "--onnx" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--onnx", "absent.onnx"], "ONNX model not found: absent.onnx"),
        (["--opt-level", "9"], "opt_level must be an integer 0..5"),
        (["--workspace-mib", "0"], "workspace_mib must be an integer >= 1"),
    ],
)
def test_invalid_configuration_exits_2_before_tensorrt(onnx, caplog, argv, message, monkeypatch):
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: pytest.fail("TensorRT touched"))
    if "--onnx" not in argv:
        argv = ["--onnx", str(onnx), *argv]
    assert cli.build_main(argv) == E.EXIT_USAGE
    assert message in caplog.text


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_build_without_tensorrt_exits_3_naming_the_extra(onnx, caplog):
    assert cli.build_main(["--onnx", str(onnx), "--flavour", "tensorrt"]) == E.EXIT_MISSING
    assert "TensorRT is not importable" in caplog.text and "pip install '.[trt]'" in caplog.text


def test_build_with_fake_tensorrt(onnx, monkeypatch, capsys, tmp_path):
    fake_cuda = FakeCuda("Orin", "8.7")
    fake = make_fake_trt("10.3.0", inspector=(FIXTURES / "inspector_trt10_lanmsff_int8.json").read_text())
    monkeypatch.setattr(compat, "import_tensorrt", lambda lean=False, **_: fake)
    monkeypatch.setattr(cuda, "get_cuda", lambda prefer=None, device_index=0: fake_cuda)
    out = tmp_path / "custom.engine"
    argv = ["--onnx", str(onnx), "--batch", "2:4:8", "--timing-cache", str(tmp_path / "t.cache"), "--out", str(out)]
    assert cli.build_main(argv) == E.EXIT_OK
    assert out.is_file() and "int8 realized in 67% of 6 conv/GEMM layers" in capsys.readouterr().out
    assert cli.build_main(argv) == E.EXIT_OK and "reused" in capsys.readouterr().out
    # A precision the engine does not realize fails the build (exit 1), with the reason logged.
    assert cli.build_main([*argv, "--precision", "fp16", "--out", str(tmp_path / "f.engine")]) == E.EXIT_ERROR


def test_selftest_without_tensorrt_says_what_is_missing(tmp_path, capsys, monkeypatch):
    def missing(lean=False, **_):
        raise compat.MissingDependencyError(
            "TensorRT is not importable (no module); install TensorRT with pip install '.[trt]'"
        )

    monkeypatch.setattr(compat, "import_tensorrt", missing)
    code = cli.selftest_main(["--models", str(tmp_path / "models"), "--work", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert code == E.EXIT_MISSING
    assert "[MISSING] TensorRT: TensorRT is not importable" in out and "pip install '.[trt]'" in out
    assert "[MISSING] ONNX models: missing" in out and "lanmsff.int8.onnx" in out and "manet.fp16.onnx" in out
    assert "[ok] onnxruntime" in out
    assert "selftest cannot run: missing TensorRT" in err
    assert not (tmp_path / "w").exists()  # nothing written when it cannot run


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_selftest_entry_point_in_a_fresh_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.trt.cli", "selftest", "--models", str(tmp_path), "--flavour", "tensorrt"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == E.EXIT_MISSING
    assert "[MISSING] TensorRT" in proc.stdout and "[MISSING] CUDA Python + GPU" in proc.stdout
    assert "selftest cannot run" in proc.stderr


def test_selftest_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.selftest_main(["--bench-batches", "0,8"])
    assert (
        exc.value.code == 2 and "--bench-batches must be comma-separated positive integers" in capsys.readouterr().err
    )


def test_verb_registration_targets_resolve():
    import argparse
    import importlib

    for verb, target in cli.VERB_TARGETS.items():
        module, fn = target.split(":")
        assert callable(getattr(importlib.import_module(module), fn)) and verb in cli.VERB_HELP
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "--onnx", "x.onnx", "--batch", "1:2:3"])
    assert args.func is cli.run_build and str(args.batch) == "1:2:3"


def test_format_rows_shows_failures():
    row = cli.SelftestRow(
        "lanmsff",
        "int8",
        "cuda-python",
        typing="strong",
        realized_share=0.67,
        parity_passed=False,
        max_abs_diff=0.5,
        latency={"b1": {"p50_ms": 1.0, "device_p50_ms": 0.4}},
        error="",
    )
    text = cli.format_rows([row, cli.SelftestRow("manet", "fp16", "pycuda", error="TensorRT could not build")])
    assert "FAIL" in text and "0.400" in text and "67%" in text and "error: TensorRT could not build" in text
    assert not row.passed


def test_logging_of_library_goes_through_logging_not_print(onnx, capsys, caplog):
    caplog.set_level(logging.INFO)
    cli.build_main(["--onnx", str(onnx), "--opt-level", "7"])
    assert capsys.readouterr().out == ""
