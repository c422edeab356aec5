"""Regenerate the shipped MTCNN detector ONNX files (runtime/detectors/mtcnn/) from the trained weights.

    .venv/bin/python -m pip download facenet-pytorch==2.6.0 --no-deps -d /tmp/fp   # the wheel only
    .venv/bin/python scripts/export_mtcnn.py --weights /tmp/fp/facenet_pytorch-2.6.0-py3-none-any.whl

Only the wheel's three state dicts (facenet_pytorch/data/{pnet,rnet,onet}.pt) are read; the package
is never installed or imported. See export/mtcnn.py for the exported contract and docs/jetson.md
for the licences.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.mtcnn import main  # noqa: E402 - imported after sys.path / environment set-up at the top of the file

if __name__ == "__main__":
    sys.exit(main())
