"""Two FER classifiers the project does not define, as a new user would bring them.

- `MobileNetGray`: MobileNet-style depthwise-separable CNN, 1×64×64 gray input.
- `XceptionRGB`: Xception-style separable CNN with residual blocks, 3×112×112 RGB input.

Both are exported with a plain ``torch.onnx.export`` (`plain_onnx`), as an outside model would be,
and described by a contract file (`write_contract`). ``--model own_archs:mobilenet_gray`` imports them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def _dw_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU6(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class MobileNetGray(nn.Module):
    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True))
        self.blocks = nn.Sequential(_dw_block(16, 32, 1), _dw_block(32, 64, 2), _dw_block(64, 96, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(96, num_classes)

    def forward(self, x):
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class _SepConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )


class _XBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        self.body = nn.Sequential(
            nn.ReLU(), _SepConv(cin, cout), nn.ReLU(), _SepConv(cout, cout), nn.MaxPool2d(3, 2, 1)
        )

    def forward(self, x):
        return self.body(x) + self.skip(x)


class XceptionRGB(nn.Module):
    def __init__(self, num_classes: int = 7) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.blocks = nn.Sequential(_XBlock(16, 32), _XBlock(32, 64), _XBlock(64, 96))
        self.head = nn.Linear(96, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.blocks(self.stem(x))).mean(dim=(2, 3)))


def _init(model: nn.Module, seed: int) -> nn.Module:
    """Random weights with non-trivial BatchNorm statistics (so folding them is actually tested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def mobilenet_gray() -> nn.Module:
    torch.manual_seed(0)
    return _init(MobileNetGray(), 0)


def xception_rgb() -> nn.Module:
    torch.manual_seed(1)
    return _init(XceptionRGB(), 1)


def not_a_module():
    return {"weights": [1, 2, 3]}


ARCHS = {
    # name: (factory, input shape C×H×W, color mode, mean, std)
    "mobilenet_gray": (mobilenet_gray, (1, 64, 64), "gray", [0.5], [0.5]),
    "xception_rgb": (xception_rgb, (3, 112, 112), "rgb", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}


def plain_onnx(
    name: str, path: Path, *, batch: int | None = 1, input_name: str = "image", output_name: str = "scores"
) -> Path:
    """Export with a plain torch.onnx.export (fixed batch 1 by default, the exporter's usual default)."""
    factory, shape, *_ = ARCHS[name]
    model = factory()
    x = torch.rand(batch or 2, *shape)
    kwargs = {} if batch else {"dynamic_axes": {input_name: {0: "n"}, output_name: {0: "n"}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=[input_name],
        output_names=[output_name],
        opset_version=17,
        dynamo=False,
        **kwargs,
    )
    return path


def write_contract(name: str, path: Path, **override) -> Path:
    import yaml

    _, (c, h, w), mode, mean, std = ARCHS[name]
    body = {
        "classes": list(CLASSES),
        "input_size": [h, w],
        "color_mode": mode,
        "scale": 1 / 255,
        "mean": mean,
        "std": std,
        "resize": "stretch",
        "model_name": name,
    }
    body.update(override)
    body = {k: v for k, v in body.items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


def face_folder(root: Path, n: int, *, seed: int = 0, nested: bool = True, size: tuple[int, int] = (80, 72)) -> Path:
    """Unlabelled face-like crops (ellipse face, eyes, mouth), some in a sub-folder, mixed formats."""
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        img = np.full((h, w, 3), rng.integers(20, 90), np.uint8)
        skin = tuple(int(v) for v in rng.integers(120, 230, 3))
        cv2.ellipse(img, (w // 2, h // 2), (w // 3, h // 2 - 4), 0, 0, 360, skin, -1)
        for ex in (w // 3, 2 * w // 3):
            cv2.circle(img, (ex + int(rng.integers(-2, 3)), h // 2 - 8), 3, (30, 30, 30), -1)
        mouth = int(rng.integers(-6, 7))
        cv2.ellipse(
            img, (w // 2, h // 2 + 14), (10, max(1, abs(mouth))), 0, 0, 180 if mouth > 0 else -180, (60, 20, 20), 2
        )
        img = np.clip(img.astype(np.int16) + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        sub = root / ("batch2" if nested and i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        ext = (".jpg", ".png", ".bmp")[i % 3]
        cv2.imwrite(str(sub / f"face_{i:03d}{ext}"), img[:, :, ::-1])
    return root
