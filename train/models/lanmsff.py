"""LANMSFF: lightweight attention network with multi-scale feature fusion (Ezati et al., 2024).

A PyTorch reconstruction faithful to the authors' Keras notebooks as described in
`docs/models.md` §2: 64×64 grayscale input, four blocks of 66/72/78/84 channels, TwoPath
blocks (channel shuffle, plain vs dilation-2 paths) with MassAtt attention in blocks 2 and 4,
parameter-free PWFS on blocks 1-3, and fusion of the globally pooled outputs of all four blocks.
With Keras' conv biases kept and Keras BN settings it has exactly 356,294 trainable parameters
for 7 classes (356,451 for 8), matching the authors' printed `model.summary()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from runtime.errors import ModelError
from runtime.preprocess import PreprocessSpec
from train.models import register_model

# Keras BatchNormalization defaults: epsilon 1e-3, momentum 0.99 (PyTorch's momentum is 1 - that).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _bn(c: int, momentum: float = _BN_MOMENTUM) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=momentum)


class SepConv(nn.Module):
    """Keras SeparableConv2D: depthwise 3×3 (no bias, multiplier 1) then pointwise 1×1 (bias)."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class ConvBNReLU(nn.Sequential):
    def __init__(self, conv: nn.Module, cout: int, relu: bool = True) -> None:
        layers: list[nn.Module] = [conv, _bn(cout)]
        if relu:
            layers.append(nn.ReLU())
        super().__init__(*layers)


class PlainBlock(nn.Module):
    """Blocks 1 and 3: Conv-BN-ReLU, SepConv-BN-ReLU, Conv-BN, MaxPool 2, ReLU, Dropout."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(nn.Conv2d(cin, cout, 3, padding=1), cout),
            ConvBNReLU(SepConv(cout, cout), cout),
            ConvBNReLU(nn.Conv2d(cout, cout, 3, padding=1), cout, relu=False),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """ShuffleNet channel shuffle; for C=6, groups=2 the new order is [0, 3, 1, 4, 2, 5].

    ``unflatten``/``flatten`` keep the batch axis symbolic, so a dynamic-batch export has no
    Shape->Gather chain for it.
    """
    c = x.shape[1]
    return x.unflatten(1, (groups, c // groups)).transpose(1, 2).flatten(1, 2)


class TwoPath(nn.Module):
    """ShuffleNet-style block: shuffle, split; three stages of a plain (H) and a dilation-2 (L) path.

    Stage 1 runs H and L on the two halves; stages 2 (separable) and 3 (plain) run both paths on
    the full concatenation of the previous stage. All convs are 3×3, stride 1, 'same'.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        if cin % 2 or cout % 2:
            raise ModelError(f"TwoPath needs even channel counts, got {cin}->{cout}")
        h = cout // 2
        self.s1_high = ConvBNReLU(nn.Conv2d(cin // 2, h, 3, padding=1), h)
        self.s1_low = ConvBNReLU(nn.Conv2d(cin // 2, h, 3, padding=2, dilation=2), h)
        self.s2_high = ConvBNReLU(SepConv(cout, h), h)
        self.s2_low = ConvBNReLU(SepConv(cout, h, dilation=2), h)
        self.s3_high = ConvBNReLU(nn.Conv2d(cout, h, 3, padding=1), h)
        self.s3_low = ConvBNReLU(nn.Conv2d(cout, h, 3, padding=2, dilation=2), h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channel_shuffle(x, 2)
        a, b = torch.chunk(x, 2, dim=1)
        y = torch.cat([self.s1_high(a), self.s1_low(b)], dim=1)
        y = torch.cat([self.s2_high(y), self.s2_low(y)], dim=1)
        return torch.cat([self.s3_high(y), self.s3_low(y)], dim=1)


class MassAtt(nn.Module):
    """Attention map = channel map (SE, ratio 4) ⊙ spatial map (encoder-decoder on the channel mean).

    Returns the map A (N×C×H×W); the caller multiplies it with the input. The spatial path halves
    the map twice and doubles it twice, which is why input sides must be multiples of 32.
    """

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // ratio)
        self.fc2 = nn.Linear(channels // ratio, channels)
        self.enc1 = nn.Conv2d(1, 2, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        # Keras Conv2DTranspose(3, strides=2, padding="same") doubles the side: output_padding=1.
        self.dec1 = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(4, 1, 3, stride=2, padding=1, output_padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean over (2, 3) rather than an adaptive/global pool with a kernel from x.size():
        # the latter bakes a runtime shape into the graph (a TensorRT profile trap).
        ca = torch.sigmoid(self.fc2(self.relu(self.fc1(x.mean(dim=(2, 3))))))[:, :, None, None]
        s = x.mean(dim=1, keepdim=True)
        s = self.relu(self.enc2(self.relu(self.enc1(s))))
        sa = torch.sigmoid(self.dec2(self.relu(self.dec1(s))))
        return ca * sa


class AttentionBlock(nn.Module):
    """Blocks 2 and 4: TwoPath, MassAtt(t)·t, Conv 1×1-BN, MaxPool 2, ReLU, Dropout."""

    def __init__(self, cin: int, cout: int, dropout: float) -> None:
        super().__init__()
        self.twopath = TwoPath(cin, cout)
        self.att = MassAtt(cout)
        self.post = nn.Sequential(nn.Conv2d(cout, cout, 1), _bn(cout), nn.MaxPool2d(2), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.twopath(x)
        return self.post(self.att(t) * t)


def pwfs(x: torch.Tensor) -> torch.Tensor:
    """Parameter-free PWFS: 0.5·(max + median) over three contiguous channel groups -> C/3 channels.

    The median of three is a+b+c-min-max, which exports to plain Min/Max/Add/Sub ops.
    """
    a, b, c = torch.chunk(x, 3, dim=1)
    hi = torch.maximum(torch.maximum(a, b), c)
    lo = torch.minimum(torch.minimum(a, b), c)
    median = a + b + c - lo - hi
    return 0.5 * (hi + median)


class LANMSFF(nn.Module):
    """The full network; ``forward(x)`` returns logits (softmax is left to the loss/consumer)."""

    def __init__(
        self,
        num_classes: int = 7,
        in_channels: int = 1,
        widths: Sequence[int] = (66, 72, 78, 84),
        dropout: float = 0.4,
        bn_momentum: float = _BN_MOMENTUM,
    ) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths
        for name, w in (("block 1", w1), ("block 2", w2), ("block 3", w3)):
            if w % 3:
                raise ModelError(f"PWFS needs {name} width divisible by 3, got {w}")
        self.block1 = PlainBlock(in_channels, w1, dropout)
        self.block2 = AttentionBlock(w1, w2, dropout)
        self.block3 = PlainBlock(w2, w3, dropout)
        self.block4 = AttentionBlock(w3, w4, dropout)
        self.fc = nn.Linear(w1 // 3 + w2 // 3 + w3 // 3 + w4, num_classes)
        self.in_channels = in_channels
        self._init_keras()
        # Keras' momentum 0.99 suits 100-epoch recipes; a few-minute budget needs faster running
        # statistics (e.g. 0.1) or evaluation sees stale BN statistics.
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = bn_momentum

    def _init_keras(self) -> None:
        # Keras defaults: Conv/SeparableConv he_uniform, Dense and Conv2DTranspose glorot_uniform,
        # biases zero, BN gamma 1 beta 0.
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d) or isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=0.0, mode="fan_in", nonlinearity="relu")
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Shape checks read static dims only (channels, H, W), so they do not break tracing
        # with a dynamic batch axis.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"LANMSFF expects N×{self.in_channels}×H×W input, got {tuple(x.shape)}")
        h, w = int(x.shape[2]), int(x.shape[3])
        if h % 32 or w % 32:
            raise ModelError(
                f"LANMSFF input sides must be multiples of 32 (MassAtt in block 4 halves H/8 twice and "
                f"doubles it back), got {h}×{w}; resize to 64×64 (e.g. FER-2013's 48×48 -> 64×64)"
            )
        b1 = self.block1(x)
        b2 = self.block2(b1)
        b3 = self.block3(b2)
        b4 = self.block4(b3)
        feats = torch.cat(
            [pwfs(b1).mean(dim=(2, 3)), pwfs(b2).mean(dim=(2, 3)), pwfs(b3).mean(dim=(2, 3)), b4.mean(dim=(2, 3))],
            dim=1,
        )
        return self.fc(feats)


_SPEC = PreprocessSpec(input_size=(64, 64), color_mode="gray", scale=1 / 255, mean=(0.0,), std=(1.0,))


@register_model("lanmsff", family="lanmsff", preprocess=_SPEC, description="LANMSFF, 64×64 gray, 66/72/78/84 channels")
def lanmsff(num_classes: int = 7, dropout: float = 0.4, bn_momentum: float = _BN_MOMENTUM) -> LANMSFF:
    return LANMSFF(num_classes=num_classes, dropout=dropout, bn_momentum=bn_momentum)


@register_model(
    "lanmsff_tiny", family="lanmsff", preprocess=_SPEC, description="LANMSFF topology, 12/12/18/24 channels (tests)"
)
def lanmsff_tiny(num_classes: int = 7, dropout: float = 0.4, bn_momentum: float = _BN_MOMENTUM) -> LANMSFF:
    return LANMSFF(num_classes=num_classes, widths=(12, 12, 18, 24), dropout=dropout, bn_momentum=bn_momentum)
