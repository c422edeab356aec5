"""Bad-input catalogue, model files, inference inputs and outputs (docs/errors.md).

Each case feeds the bad input to the real command (``main(argv)`` of its module, or a subprocess
where the process exit code, a signal or a resource limit is the point), asserts the exit code and
the message (what was received, what was expected, how to fix it), and that what was already
written is still there byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
from harness_util import linear_model  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

from runtime.__main__ import main as runtime_main  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
from runtime.backends.ort import OrtBackend  # noqa: E402 - imported after sys.path / environment set-up at the top of the file
from runtime.errors import EXIT_LOCKED, EXIT_STORAGE, InferenceError  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

REPO = Path(__file__).resolve().parents[2]


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A contract-carrying model, a folder of face crops, and a finished parity report folder."""
    import cv2

    d = tmp_path_factory.mktemp("catalogue_io")
    model = linear_model(d / "model.onnx")
    faces = d / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(faces / f"f{i}.png"), (rng.random((8, 8)) * 255).astype(np.uint8))
    report = d / "report"
    rc = runtime_main(
        [
            "parity",
            "--reference",
            str(model),
            "--candidates",
            str(model),
            "--out",
            str(report),
            "--no-progress",
            "--no-plots",
            "--limit",
            "8",
        ]
    )
    assert rc == 0 and (report / "parity.json").is_file()
    return {"dir": d, "model": model, "faces": faces, "report": report}


def _copy_of_report(env: dict[str, Path], out: Path) -> Path:
    """A copy of the finished parity report folder, standing for the earlier run's outputs."""
    out.mkdir()
    for p in env["report"].iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def _infer(model: Path, env: dict[str, Path], out: Path) -> int:
    return runtime_main(
        [
            "infer",
            "--model",
            str(model),
            "--source",
            str(env["faces"]),
            "--no-detect",
            "--out",
            str(out),
            "--no-progress",
        ]
    )


def _bad_model(kind: str, env: dict[str, Path]) -> Path:
    d = env["dir"] / "bad"
    d.mkdir(exist_ok=True)
    good = env["model"].read_bytes()
    path = d / f"{kind}.onnx"
    if kind == "missing":
        return path
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "not_onnx":
        path.write_bytes(b"\xff\xd8\xff\xe0 this is a JPEG header, not a model" * 4)
    elif kind in ("opset_old", "opset_new"):
        m = onnx.load(str(env["model"]))
        m.opset_import[0].version = 5 if kind == "opset_old" else 99
        onnx.save(m, str(path))
    elif kind == "no_contract":
        linear_model(path, contract=False)
    return path


@pytest.mark.parametrize(
    ("kind", "phrases"),
    [
        ("missing", ["missing.onnx", "not found"]),
        ("empty", ["empty.onnx", "empty (0 bytes)", "re-export"]),
        ("truncated", ["truncated.onnx", "truncated", "re-export"]),
        ("not_onnx", ["not_onnx.onnx", "not an ONNX model", "re-export"]),
        ("opset_old", ["opset 5 is not supported", "--opset 17"]),
        ("opset_new", ["opset 99 is not supported", "--opset 17"]),
        ("no_contract", ["lacks deployment-contract", "python -m export onnx"]),
    ],
)
def test_bad_model_file_at_inference(kind, phrases, env, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.json").write_text('{"earlier": true}')
    before = tree_digest(out)
    assert _infer(_bad_model(kind, env), env, out) == 1
    for phrase in phrases:
        assert phrase in caplog.text, (phrase, caplog.text)
    assert "Traceback" not in caplog.text
    assert tree_digest(out) == before  # the earlier predictions survive, nothing half-written beside them


@pytest.mark.parametrize("kind", ["truncated", "opset_new", "no_contract"])
def test_bad_model_file_at_quantization(kind, env, tmp_path, caplog):
    from quantize.__main__ import main as quantize_main

    out = tmp_path / "model.fp16.onnx"
    out.write_bytes(b"previous good file")
    rc = quantize_main(["fp16", "--onnx", str(_bad_model(kind, env)), "--out", str(out), "--no-latency"])
    assert rc == 1 and f"{kind}.onnx" in caplog.text
    assert out.read_bytes() == b"previous good file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fp16.onnx"]


# ---- inference inputs: the backend API the harness and user code call ---------------------------------
@pytest.mark.parametrize(
    ("feeds", "phrases"),
    [
        (lambda x: {"pixels": x}, ["feed names do not match", "missing ['input']", "unexpected ['pixels']"]),
        (lambda x: {"input": x[0]}, ["rank 3", "expected rank 4"]),
        (lambda x: {"input": x.astype(np.float64)}, ["dtype float64, expected float32", ".astype"]),
        (lambda x: {"input": x.astype(np.uint8)}, ["dtype uint8, expected float32"]),
        (lambda x: {"input": np.zeros((2, 1, 16, 8), np.float32)}, ["dimension 2 is 16, expected 8"]),
        (lambda x: {"input": np.zeros((0, 1, 8, 8), np.float32)}, ["dimension 0 is 0", ">= 1"]),
        (lambda x: {"input": [[1.0]]}, ["not a numpy array"]),
    ],
)
def test_wrong_input_at_inference(feeds, phrases, env):
    x = np.random.default_rng(1).random((2, 1, 8, 8), dtype=np.float32)
    with OrtBackend(env["model"]) as backend:
        with pytest.raises(InferenceError) as info:
            backend.infer(feeds(x))
        for phrase in phrases:
            assert phrase in str(info.value), (phrase, str(info.value))
        assert "model.onnx" in str(info.value)  # names the model it was fed to
        # The backend still works after a refused feed.
        assert backend.infer({"input": x})["logits"].shape == (2, 7)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_input_is_refused(bad, env):
    x = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    x[1, 0, 4, 5] = bad
    with OrtBackend(env["model"]) as backend:
        with pytest.raises(InferenceError) as info:
            backend.infer({"input": x})
    msg = str(info.value)
    assert "'input'" in msg and "(1, 0, 4, 5)" in msg and "meaningless" in msg
    assert ("1 NaN" in msg) == np.isnan(bad) and ("1 Inf" in msg) == np.isinf(bad)


def test_large_finite_input_is_not_mistaken_for_inf(env):
    # A float32 sum can overflow where no single value is infinite: only real NaN/Inf are refused.
    x = np.full((1, 1, 8, 8), 3e38, np.float32)
    with OrtBackend(env["model"]) as backend:
        assert backend.infer({"input": x})["logits"].shape == (1, 7)


# ---- outputs: not writable, disk full, locked ----------------------------------------------------------
def test_output_folder_that_is_a_file(env, tmp_path, caplog):
    blocker = tmp_path / "taken"
    blocker.write_text("a file where the output folder should go")
    assert _infer(env["model"], env, blocker / "out") == EXIT_STORAGE
    assert str(blocker) in caplog.text and "not a folder" in caplog.text and "choose another output" in caplog.text
    assert blocker.read_text() == "a file where the output folder should go"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so a read-only folder is writable")
def test_output_folder_without_write_permission(env, tmp_path, caplog):  # pragma: no cover - CI runs as root
    out = tmp_path / "ro"
    out.mkdir()
    (out / "predictions.json").write_text("{}")
    out.chmod(0o555)
    try:
        assert _infer(env["model"], env, out) == EXIT_STORAGE
        assert "permission denied" in caplog.text
        assert (out / "predictions.json").read_text() == "{}"
    finally:
        out.chmod(0o755)


def test_disk_full_during_report_write_keeps_the_previous_report(env, tmp_path, caplog, monkeypatch):
    out = _copy_of_report(env, tmp_path / "report")
    before = tree_digest(out)
    real_write_text = Path.write_text

    def fills_up(self, data, *args, **kwargs):
        if self.parent == out:  # half the bytes land, then the disk is full
            real_write_text(self, data[: len(data) // 2], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fills_up)
    rc = runtime_main(
        [
            "parity",
            "--reference",
            str(env["model"]),
            "--candidates",
            str(env["model"]),
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
            "--limit",
            "8",
        ]
    )
    assert rc == EXIT_STORAGE
    assert "no space left on device" in caplog.text and str(out / "parity.json") in caplog.text
    assert "left untouched" in caplog.text
    assert tree_digest(out) == before  # the previous report is intact and no temporary file is left


def _cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=120, **kwargs
    )


def test_file_size_limit_in_a_real_process_keeps_the_previous_report(env, tmp_path):
    # A real process whose writes hit a hard limit mid-file (ulimit -f): the kernel refuses the write
    # (EFBIG, SIGXFSZ ignored as the shell does with `ulimit -f`), like a disk that fills up.
    out = _copy_of_report(env, tmp_path / "report")
    before = tree_digest(out)
    limit = 256  # bytes: below parity.json's size, above nothing else this command writes

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    assert (env["report"] / "parity.json").stat().st_size > limit
    proc = _cli(
        [
            "-m",
            "runtime",
            "parity",
            "--reference",
            str(env["model"]),
            "--candidates",
            str(env["model"]),
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
            "--limit",
            "8",
        ],
        preexec_fn=limited,
    )
    assert proc.returncode == EXIT_STORAGE, proc.stderr
    assert "file too large" in proc.stderr and "Traceback" not in proc.stderr
    assert tree_digest(out) == before


def _hold_lock(folder: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from runtime.lock import output_lock
        with output_lock({str(folder)!r}, "test holder"):
            print("held", flush=True)
            time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_two_runs_on_one_output_folder_do_not_interleave(env, tmp_path):
    out = _copy_of_report(env, tmp_path / "report")
    before = tree_digest(out)
    holder = _hold_lock(out)
    try:
        args = [
            "-m",
            "runtime",
            "parity",
            "--reference",
            str(env["model"]),
            "--candidates",
            str(env["model"]),
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
            "--limit",
            "8",
        ]
        proc = _cli(args)
        assert proc.returncode == EXIT_LOCKED, proc.stderr
        assert f"pid {holder.pid}" in proc.stderr and "in use by another" in proc.stderr
        assert "choose another output folder" in proc.stderr
        assert {k: v for k, v in tree_digest(out).items() if k != ".lock"} == before
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, yet the kernel drops the lock
        holder.wait()
    proc = _cli(args)
    assert proc.returncode == 0, proc.stderr
    assert not (out / ".lock").exists()  # released and removed by the run that took it over


def test_lock_is_reentrant_in_one_process_and_exclusive_across_processes(tmp_path):
    from runtime.errors import LockedError
    from runtime.lock import output_lock

    with output_lock(tmp_path / "a"):
        with output_lock(tmp_path / "a"):  # the pipeline holds its folder while a stage takes it again
            assert (tmp_path / "a" / ".lock").is_file()
        assert json.loads((tmp_path / "a" / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "a" / ".lock").exists()
    holder = _hold_lock(tmp_path / "b")
    try:
        with pytest.raises(LockedError, match=f"pid {holder.pid}"):
            with output_lock(tmp_path / "b"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(tmp_path / "b"):  # a SIGKILLed holder leaves its file but not its lock
        pass


# ---- how errors are shown ------------------------------------------------------------------------------
def test_tracebacks_only_with_debug(env, tmp_path):
    args = [
        "-m",
        "runtime",
        "infer",
        "--model",
        str(tmp_path / "nope.onnx"),
        "--source",
        str(env["faces"]),
        "--no-detect",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    plain = _cli(args)
    debug = _cli([*args, "--debug"])
    assert plain.returncode == debug.returncode == 1
    assert "nope.onnx" in plain.stderr and "Traceback" not in plain.stderr
    assert "nope.onnx" in debug.stderr and "Traceback (most recent call last)" in debug.stderr


def test_a_bug_is_reported_as_internal_error_with_code_70(env, tmp_path, caplog, monkeypatch):
    import runtime.infer

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(runtime.infer, "run_infer", broken)
    assert _infer(env["model"], env, tmp_path / "o") == 70
    assert "internal error" in caplog.text and "planted bug" in caplog.text and "--debug" in caplog.text
    with pytest.raises(ZeroDivisionError):  # --debug lets the traceback through
        runtime_main(
            [
                "infer",
                "--model",
                str(env["model"]),
                "--source",
                str(env["faces"]),
                "--no-detect",
                "--out",
                str(tmp_path / "o"),
                "--no-progress",
                "--debug",
            ]
        )


def test_sigterm_exits_143_and_leaves_no_temporary_files(env, tmp_path):
    # A bench long enough to be inside its timing loop when SIGTERM arrives.
    out = tmp_path / "bench"
    env_vars = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "bench",
            "--models",
            str(env["model"]),
            "--batch",
            "1",
            "--seconds",
            "30",
            "--warmup",
            "0",
            "--out",
            str(out),
            "--no-progress",
            "--no-plots",
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env=env_vars,
    )
    time.sleep(5.0)  # imports and model load take ~2 s here; the timing loop then runs for 30 s
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert not any(p.name.endswith(".tmp") for p in out.rglob("*")) if out.exists() else True
