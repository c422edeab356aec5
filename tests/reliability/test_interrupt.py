"""Real process kills: `python -m train fit` resumes to identical results, `python -m export onnx`
never damages the model it would replace.

Every scenario runs the real CLI in a subprocess and stops it with a real signal:

- training sends itself the signal at a chosen point through the test-only hook
  ``FER_TRAIN_KILL_AT`` (train/loop.py): after a seeded random optimizer step (mid-epoch, or in the
  first epoch before any state exists), half-way through writing ``state.pt``, or just before
  ``checkpoint.pt`` is written. With SIGKILL nothing runs after the signal, so what is on disk is
  exactly what a kill -9 or the OOM killer leaves;
- export waits just before its final rename onto ``--out`` (test-only hook
  ``FER_EXPORT_HOLD_BEFORE_REPLACE``, export/exporter.py) and this test sends SIGKILL, SIGTERM or
  SIGINT from outside, the worst moment: the new model is complete in the temporary folder.

A resumed run must end with the same checkpoint metrics, history and bit-identical weights as
an uninterrupted run of the same config.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from runtime.artifacts import sha256_file
from runtime.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TERMINATED

pytestmark = pytest.mark.slow  # 18 short CLI runs, each paying the torch import

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120

EPOCHS = 3
TRAIN_COUNT, BATCH = 42, 8  # count 56 with val_fraction 0.25 -> 42 training images
STEPS_PER_EPOCH = -(-TRAIN_COUNT // BATCH)  # 6 (the last batch has 2 images)

TINY_YAML = f"""\
fit:
  model: {{name: lanmsff_tiny, num_classes: 7, kwargs: {{bn_momentum: 0.1, dropout: 0.2}}}}
  data: {{kind: synthetic, val_fraction: 0.25, seed: 3, options: {{count: 56, size: 32}}}}
  train: {{epochs: {EPOCHS}, batch_size: {BATCH}, lr: 0.003, scheduler: onecycle, seed: 5, num_threads: 1, augment: online}}
"""

# The hooks; a stray value from the environment must not leak into a run.
_HOOKS = ("FER_TRAIN_KILL_AT", "FER_EXPORT_HOLD_BEFORE_REPLACE")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _HOOKS}
    env.update(extra)
    return env


def _default_sigint() -> None:
    # A child of a non-interactive shell's background job inherits SIGINT ignored, and Python then
    # keeps ignoring it; restore the default so the child installs its KeyboardInterrupt handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_default_sigint,
    )


def _fit(config: Path, out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {"FER_TRAIN_KILL_AT": kill_at} if kill_at else {}
    return _run(["train", "fit", "--config", str(config), "--out", str(out), "--no-progress", *extra], **env)


def _temp_leftovers(folder: Path) -> list[str]:
    """Names of temporary files/folders the atomic writers use (``.<target>.<random>.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _state_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["state"]["epoch"]


def _assert_same_run(ref: Path, got: Path) -> None:
    """Same final checkpoint metrics, same per-epoch history, bit-identical weights."""
    a = json.loads((ref / "checkpoint.json").read_text())
    b = json.loads((got / "checkpoint.json").read_text())
    assert b["metrics"] == a["metrics"]  # val accuracy, macro-F1, confusion, per-view, best epoch
    assert b["epochs_run"] == a["epochs_run"] == EPOCHS
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "per_view_accuracy"):
        assert [h[key] for h in b["history"]] == [h[key] for h in a["history"]], key
    wa = torch.load(ref / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    wb = torch.load(got / "checkpoint.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert list(wa) == list(wb)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.yaml"
    path.write_text(TINY_YAML)
    return path


@pytest.fixture(scope="module")
def reference_run(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every resumed run is compared with."""
    out = tmp_path_factory.mktemp("reference")
    proc = _fit(tiny_config, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    side = json.loads((out / "checkpoint.json").read_text())
    assert len(side["history"]) == EPOCHS and side["dataset"]["train"] == TRAIN_COUNT  # the step arithmetic
    # The run must actually change from epoch to epoch, or "identical after resume" proves nothing.
    losses = [h["val_loss"] for h in side["history"]]
    assert len(set(losses)) == EPOCHS, losses
    return out


# --------------------------------------------------------------------------------------- training


def test_repeated_sigkills_resume_to_identical_run(tiny_config: Path, reference_run: Path, tmp_path: Path) -> None:
    """One run killed three times -- mid-epoch, half-way through a state.pt write, just before the
    final checkpoint.pt write -- and resumed after each kill ends exactly like the reference run."""
    out = tmp_path / "run"
    # 1. A seeded random step inside epoch 2 that is not its last: the kill loses a part-epoch.
    step = random.Random(20240611).choice([s for s in range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH)])
    proc = _fit(tiny_config, out, kill_at=f"step:{step}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert _state_epoch(out / "state.pt") == 1
    assert not (out / "checkpoint.pt").exists() and not (out / "checkpoint.json").exists()
    assert _temp_leftovers(out) == []

    # 2. Resume; killed half-way through writing epoch 3's state: the half-written bytes are in a
    # temp file, and state.pt is still epoch 2's, whole.
    proc = _fit(tiny_config, out, "--resume", kill_at="state-write:3")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resuming after epoch 1" in proc.stderr
    leftovers = _temp_leftovers(out)
    assert len(leftovers) == 1 and leftovers[0].startswith(".state.pt."), leftovers
    partial = (out / leftovers[0]).read_bytes()
    assert 0 < len(partial) < (out / "state.pt").stat().st_size
    assert _state_epoch(out / "state.pt") == 2
    assert not (out / "checkpoint.pt").exists()

    # 3. Resume; killed after the last state.pt, just before checkpoint.pt is written.
    proc = _fit(tiny_config, out, "--resume", kill_at="checkpoint")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "resuming after epoch 2" in proc.stderr
    # The run that takes the folder's lock next deletes the dead run's temp file (runtime/lock.py).
    assert "removed 1 temporary file(s) left by an interrupted run" in proc.stderr and leftovers[0] in proc.stderr
    assert _state_epoch(out / "state.pt") == EPOCHS
    assert not (out / "checkpoint.pt").exists()

    # 4. Resume to the end: nothing is retrained, only the checkpoint is written.
    proc = _fit(tiny_config, out, "--resume")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after epoch {EPOCHS}" in proc.stderr and "epoch 1:" not in proc.stderr
    _assert_same_run(reference_run, out)
    # The dead run's temp file was never read nor renamed onto state.pt, and is gone now.
    assert _temp_leftovers(out) == [] and partial


def test_sigkill_in_first_epoch_leaves_nothing_that_blocks_a_fresh_start(
    tiny_config: Path, reference_run: Path, tmp_path: Path
) -> None:
    step = random.Random(7).randrange(1, STEPS_PER_EPOCH)  # before the first state.pt exists
    out = tmp_path / "run"
    proc = _fit(tiny_config, out, kill_at=f"step:{step}")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "state.pt").exists()

    proc = _fit(tiny_config, out, "--resume")  # nothing to resume: a clear error, exit 1
    assert proc.returncode == EXIT_ERROR
    assert "nothing to resume" in proc.stderr and "without --resume" in proc.stderr
    proc = _fit(tiny_config, out)  # what that message says to do
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_run(reference_run, out)


@pytest.mark.parametrize("sig, code", [("TERM", EXIT_TERMINATED), ("INT", EXIT_INTERRUPTED)])
def test_sigterm_sigint_while_state_is_written_discard_the_temp_file(
    tiny_config: Path, tmp_path: Path, sig: str, code: int
) -> None:
    # Resuming from here is the same as after the SIGKILL above (same state.pt), so not repeated.
    out = tmp_path / "run"
    proc = _fit(tiny_config, out, kill_at=f"state-write:2:{sig}")
    assert proc.returncode == code, proc.stderr[-3000:]
    assert _temp_leftovers(out) == []
    assert _state_epoch(out / "state.pt") == 1
    assert not (out / "checkpoint.pt").exists()
    assert ("terminated" if sig == "TERM" else "interrupted") in proc.stderr


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_corrupt_state_file_fails_resume_with_a_clear_message(
    tiny_config: Path, reference_run: Path, tmp_path: Path, damage: str
) -> None:
    # An atomic writer never leaves these; a disk fault or a power cut without fsync can.
    out = tmp_path / "run"
    out.mkdir()
    good = (reference_run / "state.pt").read_bytes()
    bad = good[: len(good) // 2] if damage == "truncated" else b""
    (out / "state.pt").write_bytes(bad)

    proc = _fit(tiny_config, out, "--resume")
    assert proc.returncode == EXIT_ERROR, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err
    assert str(out / "state.pt") in err and "corrupt" in err
    assert "delete" in err and "without --resume" in err  # how to fix it
    assert (out / "state.pt").read_bytes() == bad  # left for the user to inspect
    assert not (out / "checkpoint.pt").exists()


# ----------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def other_checkpoint(tiny_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second checkpoint (one epoch): exporting it gives a model.onnx different from the first."""
    out = tmp_path_factory.mktemp("one_epoch")
    proc = _fit(tiny_config, out, "--epochs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / "checkpoint.pt"


def _export(checkpoint: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run(["export", "onnx", "--checkpoint", str(checkpoint), "--out", str(out), *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name.startswith("model.")}


def _changed(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted(n for n in set(before) | set(after) if before.get(n) != after.get(n))


@pytest.fixture(scope="module")
def good_export(reference_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a good model.onnx, its sidecar and preflight report (copied by each test)."""
    folder = tmp_path_factory.mktemp("good_export")
    proc = _export(reference_run / "checkpoint.pt", folder / "model.onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"model.onnx", "model.onnx.json", "model.preflight.json"} <= set(_snapshot(folder))  # + .data if any
    assert _temp_leftovers(folder) == []
    return folder


@pytest.mark.parametrize(
    "sig, code",
    [(signal.SIGKILL, -signal.SIGKILL), (signal.SIGTERM, EXIT_TERMINATED), (signal.SIGINT, EXIT_INTERRUPTED)],
    ids=["SIGKILL", "SIGTERM", "SIGINT"],
)
def test_export_killed_before_replace_keeps_old_model(
    good_export: Path, other_checkpoint: Path, tmp_path: Path, sig: int, code: int
) -> None:
    folder = tmp_path / "export"
    shutil.copytree(good_export, folder)
    model = folder / "model.onnx"
    before = _snapshot(folder)

    marker = tmp_path / "holding"
    child = subprocess.Popen(
        [sys.executable, "-m", "export", "onnx", "--checkpoint", str(other_checkpoint), "--out", str(model), "--force"],
        cwd=REPO,
        env=_env(FER_EXPORT_HOLD_BEFORE_REPLACE=str(marker)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not marker.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                err = child.communicate()[1]
                pytest.fail(f"export never reached the final rename (rc {child.returncode}):\n{err[-3000:]}")
            time.sleep(0.05)
        # The new model is complete in the export's temporary folder and about to be renamed.
        assert _temp_leftovers(folder)
        child.send_signal(sig)
        _, err = child.communicate(timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == code, err[-3000:]

    # model.onnx, its sidecar and preflight report (and .data, if any) byte-identical
    assert _changed(before, _snapshot(folder)) == []
    leftovers = _temp_leftovers(folder)
    if sig != signal.SIGKILL:
        assert leftovers == [], leftovers  # SIGTERM / SIGINT: the temporary folder is removed
        return

    # SIGKILL: no cleanup can run, so the temporary folder stays. A later export never reads it nor
    # renames it, succeeds, and deletes it when it takes the folder's lock.
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.onnx."), leftovers
    stale = folder / leftovers[0]
    stale_files = sorted((p.relative_to(stale), p.read_bytes()) for p in stale.rglob("*") if p.is_file())
    proc = _export(other_checkpoint, model, "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _snapshot(folder)
    # The interrupted export would have changed these: the check above is not vacuous.
    assert {"model.onnx", "model.onnx.json", "model.preflight.json"} <= set(_changed(before, after))
    side = json.loads(after["model.onnx.json"])
    assert side["checkpoint"]["sha256"] == sha256_file(other_checkpoint)
    assert side["artifact_sha256"] == sha256_file(model)
    assert stale_files and _temp_leftovers(folder) == [] and not stale.exists()
    assert "removed 1 temporary file(s) left by an interrupted run" in proc.stderr
