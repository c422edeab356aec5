"""`import runtime` and the CPU backends, parity and bench work with torch hidden (the Jetson case)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from harness_util import linear_model

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

BLOCK_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is hidden for this test ({name})")
            return None

    sys.meta_path.insert(0, HideTorch())
    """
)


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "check.py"
    script.write_text(BLOCK_TORCH + textwrap.dedent(code), encoding="utf-8")
    env = {
        "PYTHONPATH": f"{REPO}:{HERE}",
        "OMP_NUM_THREADS": "1",
        "PATH": "/usr/bin:/bin",
        "MPLBACKEND": "Agg",
        "HOME": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env
    )


def test_runtime_imports_and_runs_without_torch(tmp_path):
    model = linear_model(tmp_path / "m" / "model.onnx")
    int8 = linear_model(tmp_path / "m" / "model.int8.onnx", qdq=True)
    res = _run(
        f"""
        import numpy as np
        try:
            import torch  # noqa: F401 - imported for its side effect (registration) or to probe availability
            raise SystemExit("torch import was not blocked")
        except ImportError:
            pass
        import runtime, runtime.latency, runtime.compare, runtime.env, runtime.report, runtime.parity, runtime.bench
        import runtime.backends.ort, train.backend, runtime.__main__
        from runtime.backends import available_backends, get_backend
        from runtime.errors import MissingDependencyError

        TorchBackend = get_backend("torch")
        assert not TorchBackend.is_available(), "torch reference should report itself unavailable"
        assert "train" in available_backends()["torch"]
        try:
            TorchBackend("x.pt").load()
        except Exception as exc:
            assert "not found" in str(exc) or isinstance(exc, MissingDependencyError), exc
        with get_backend("ort")({str(model)!r}, threads=1) as be:
            y = be.infer({{"input": np.zeros((2, 1, 8, 8), np.float32)}})["logits"]
            assert y.shape == (2, 7)
        from runtime.__main__ import main
        rc = main(["parity", "--reference", {str(model)!r}, "--candidates", {str(model)!r}, {str(int8)!r},
                   "--out", "p", "--no-progress"])
        assert rc == 0, rc
        rc = main(["bench", "--models", {str(model)!r}, "--batch", "1,2", "--seconds", "0", "--iterations", "3",
                   "--warmup", "0", "--out", "b", "--no-progress", "--parity", "p/parity.json"])
        assert rc == 0, rc
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
        print("TORCH-FREE OK")
        """,
        tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TORCH-FREE OK" in res.stdout
    assert (tmp_path / "p" / "parity.json").is_file() and (tmp_path / "b" / "bench.md").is_file()


def test_checkpoint_reference_without_torch_fails_clearly(tmp_path):
    model = linear_model(tmp_path / "model.onnx")
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"not really a checkpoint")
    res = _run(
        f"""
        from runtime.__main__ import main
        raise SystemExit(main(["parity", "--reference", {str(ck)!r}, "--candidates", {str(model)!r}, "--no-progress"]))
        """,
        tmp_path,
    )
    assert res.returncode == 3, res.stdout + res.stderr  # missing optional dependency (docs/errors.md)
    assert "pip install '.[train]'" in res.stderr and "torch" in res.stderr
    assert "Traceback" not in res.stderr
