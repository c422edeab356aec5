"""PyTorch reference backend: runs a ``checkpoint.pt`` exactly as training evaluated it.

It lives with train/ (it needs torch to run) and reaches the runtime only through the backend
registry (``runtime.backends``: ``"torch": "train.backend:TorchBackend"``), the documented plug-in
point. torch is imported inside `load()` only (and `_probe`), so importing this module needs no
torch; on a torch-free Jetson this backend simply reports itself unavailable. Outputs carry the same
names as the exported ONNX: ``logits`` first, then any auxiliary heads of ``forward_heads``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from runtime.backends.base import Backend, TensorSpec
from runtime.errors import ConfigError, require

INPUT_NAME = "input"  # export/exporter.py's INPUT_NAME: the reference and the ONNX take the same feeds
LOGITS_NAME = "logits"


class TorchBackend(Backend):
    """Eval-mode PyTorch model rebuilt from a checkpoint (CPU).

    Options:
        threads: torch intra-op threads (default: ``OMP_NUM_THREADS`` or 1).
    """

    name: ClassVar[str] = "torch"
    extra: ClassVar[str] = "train"
    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth")

    def __init__(self, path: str | os.PathLike, **options: Any) -> None:
        super().__init__(path, **options)
        unknown = set(options) - {"threads"}
        if unknown:
            raise ConfigError(f"unknown torch backend option(s) {sorted(unknown)}; valid: threads")
        from runtime.backends.ort import default_threads

        self.threads = int(options.get("threads") or default_threads())
        self.model = None
        self.meta = None
        self._heads = False

    @classmethod
    def _probe(cls) -> str | None:
        # find_spec does not import torch (importing it costs seconds and the torch-free check).
        try:
            found = importlib.util.find_spec("torch") is not None
        except (ValueError, ImportError):
            found = False
        return None if found else "torch is not installed; pip install '.[train]'"

    @classmethod
    def read_model_info(cls, path: str | os.PathLike) -> dict[str, Any]:
        """A checkpoint's deployment facts (model_name, class_names, preprocess, dataset) without building it."""
        require("torch", "train")  # a checkpoint needs torch: say which extra, not a bare ImportError
        from train.checkpoint import read_checkpoint

        payload = read_checkpoint(path)
        return {k: payload.get(k) for k in ("model_name", "class_names", "preprocess", "dataset")}

    def _load(self) -> None:
        torch = require("torch", "train")
        from train.checkpoint import load_checkpoint

        torch.set_num_threads(self.threads)
        model, meta = load_checkpoint(self.path)
        self.model, self.meta = model.eval(), meta
        self._heads = hasattr(model, "forward_heads")
        names = [LOGITS_NAME]
        if self._heads:
            with torch.no_grad():
                x = torch.zeros((1, *meta.preprocess.input_shape), dtype=torch.float32)
                keys = list(model.forward_heads(x).keys())
            names += [k for k in keys if k != LOGITS_NAME]
        self._input_specs = (TensorSpec(INPUT_NAME, np.float32, ("batch", *meta.preprocess.input_shape)),)
        self._output_names = tuple(names)

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(feeds[INPUT_NAME]))
            if self._heads:
                out = self.model.forward_heads(x)
                return {k: out[k].float().numpy() for k in self._output_names}
            return {LOGITS_NAME: self.model(x).float().numpy()}

    def _close(self) -> None:
        self.model = None

    def describe(self) -> dict[str, Any]:
        import torch

        return {
            "backend": self.name,
            "path": str(self.path),
            "threads": self.threads,
            "torch": torch.__version__,
            "checkpoint_sha256": getattr(self.meta, "sha256", ""),
        }
