"""MTCNN's three face-detection networks (Zhang et al. 2016), for export to ONNX only.

The runtime never imports this module: ``runtime/detectors/mtcnn.py`` runs the cascade on the
ONNX files that ``scripts/export_mtcnn.py`` writes from these modules. The layer names match the
state dicts that the ``facenet-pytorch`` wheel ships (``facenet_pytorch/data/{pnet,rnet,onet}.pt``,
MIT; the weights are the authors' Caffe release, ported through TensorFlow), so
``load_state_dict(strict=True)`` checks every tensor.

Architecture (paper, Fig. 2; Caffe release):

- P-Net, fully convolutional, 12×12 receptive field, stride 2: conv3 (10) → PReLU → max-pool 2/2
  → conv3 (16) → PReLU → conv3 (32) → PReLU → 1×1 conv to face/non-face (softmax) and to the four
  box offsets.
- R-Net, 24×24 crops: conv3 (28) → pool 3/2 → conv3 (48) → pool 3/2 → conv2 (64) → FC 128 →
  face softmax + four offsets.
- O-Net, 48×48 crops: conv3 (32) → pool 3/2 → conv3 (64) → pool 3/2 → conv3 (64) → pool 2/2 →
  conv2 (128) → FC 256 → face softmax, four offsets, five landmarks (x1..x5, y1..y5).

Pools use ceil mode (Caffe's rounding). The ported fully connected weights expect feature maps
flattened in (W, H, C) order, so R-Net and O-Net permute before their first fully connected layer.
"""

from __future__ import annotations

import torch
from torch import nn


class PNet(nn.Module):
    """Proposal network: (N, 3, H, W) -> face probability (N, 2, h, w), offsets (N, 4, h, w)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, 3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, 3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return torch.softmax(self.conv4_1(x), dim=1), self.conv4_2(x)


class RNet(nn.Module):
    """Refinement network: (N, 3, 24, 24) -> face probability (N, 2), offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, 3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, 3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, 2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).flatten(1)  # the ported weights flatten in (W, H, C) order
        x = self.prelu4(self.dense4(x))
        return torch.softmax(self.dense5_1(x), dim=1), self.dense5_2(x)


class ONet(nn.Module):
    """Output network: (N, 3, 48, 48) -> face probability (N, 2), offsets (N, 4), landmarks (N, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


NETS: dict[str, type[nn.Module]] = {"pnet": PNet, "rnet": RNet, "onet": ONet}
