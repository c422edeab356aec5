"""MA-Net: global multi-scale and local attention network for FER (Zhao, Liu, Wang, TIP 2021).

A re-implementation of the official PyTorch code as described in `docs/models.md` §1:

* feature pre-extractor: ResNet-18 stem + layer1 + layer2 (224×224 RGB -> 128×28×28);
* local branch: the 28×28 map is cut into four 14×14 patches, each fed to its own (separately
  weighted) sub-network of 2× AttentionBlock(256, first stride 2) + 2× AttentionBlock(512,
  first stride 1; CBAM r=16 in every block); the four 512×7×7 outputs are stitched back 2×2,
  globally average-pooled and classified by ``fc_1``;
* global branch: 2× MulScaleBlock(256, s2) + 2× MulScaleBlock(512, s2), GAP, ``fc_2``;
* late fusion of the logits: ``beta·local + (1-beta)·global`` with beta = 0.6.

Module and parameter names follow the official ``model/manet.py`` so its state-dict keys (e.g. the
MS-Celeb pre-trained checkpoint, after stripping ``module.``) load without renaming. The CBAM
sub-module names (``ChannelGate.mlp``, ``SpatialGate.spatial.conv``/``.bn``) are not given in
docs/models.md (the official ``attention.py`` was not available); they follow the common CBAM
reference layout that the official code imports, and the parameter counts match §1.6 exactly.

Deviations that do not change the numbers: CBAM's channel pooling uses ``mean``/``amax`` over
(H, W) instead of ``avg_pool2d``/``max_pool2d`` with a kernel taken from ``x.size()`` (the latter
breaks dynamic-batch ONNX export, docs/models.md §1.7); ``forward`` returns the fused logits and
``forward_heads`` the individual heads (the official forward returns the tuple (local, global)).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from runtime.errors import CheckpointError, ModelError
from runtime.preprocess import PreprocessSpec
from train.models import register_model

#: The only input shape (C, H, W) the model accepts: the local branch slices the layer2 map at
#: hard-coded 14-pixel boundaries, which is only correct for a 28×28 map, i.e. a 224×224 input.
INPUT_SHAPE: tuple[int, int, int] = (3, 224, 224)
_PATCH = 14  # half of the 28×28 layer2 map

VARIANTS = ("2021", "2023")
#: Names accepted for ``variant`` and the canonical variant they select ("head" = the repo's HEAD).
_VARIANT_ALIASES = {"2021": "2021", "2023": "2023", "head": "2023"}

#: Number of identities of the MS-Celeb subset the published checkpoint's heads classify.
MSCELEB_NUM_CLASSES = 12666
_HEAD_PREFIXES = ("fc_1.", "fc_2.")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    # 1×1 conv + BN projection when the residual changes shape (torchvision ResNet layout, keys
    # downsample.0 / downsample.1).
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """ResNet-18 basic block: conv3×3(s)-BN-ReLU-conv3×3-BN, residual add, ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(inplanes, planes, stride)

    def _residual(self, out: torch.Tensor) -> torch.Tensor:
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self._residual(self.bn2(self.conv2(out)))
        return F.relu(out + identity)


class Flatten(nn.Module):
    """``torch.flatten(x, 1)``: keeps the batch axis symbolic in a traced export.

    (``x.view(x.size(0), -1)``, as in the CBAM reference code, adds Shape/Gather chains.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP on the spatial average and maximum, summed, sigmoid.

    Attribute ``mlp`` = (Flatten, Linear(C, C/r), ReLU, Linear(C/r, C)), keys ``mlp.1``/``mlp.3``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        if hidden < 1:
            raise ModelError(f"CBAM needs at least {reduction} channels for reduction {reduction}, got {channels}")
        self.mlp = nn.Sequential(Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Trap: the reference pools with F.avg_pool2d(x, (x.size(2), x.size(3))); a kernel taken
        # from a runtime shape makes the legacy ONNX exporter fail with a dynamic batch axis.
        # mean/amax over (H, W) are numerically identical and export as ReduceMean/ReduceMax.
        att = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(x.amax((2, 3), keepdim=True))
        return x * torch.sigmoid(att)[:, :, None, None]


class BasicConv(nn.Module):
    """Conv (no bias) + BN(eps 1e-5, momentum 0.01), no activation: CBAM's spatial conv."""

    def __init__(self, cin: int, cout: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=1, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SpatialGate(nn.Module):
    """CBAM spatial attention: (max, mean) over channels -> 7×7 conv 2->1 + BN -> sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.spatial = BasicConv(2, 1, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Order matters for weight compatibility: channel 0 = max, channel 1 = mean.
        pooled = torch.cat((x.amax(1, keepdim=True), x.mean(1, keepdim=True)), dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention module: channel gate then spatial gate."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels, reduction)  # noqa: N815 - official key name
        self.SpatialGate = SpatialGate()  # noqa: N815 - official key name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class AttentionBlock(BasicBlock):
    """Basic block with CBAM(planes, 16) applied after bn2, before the residual add."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__(inplanes, planes, stride)
        self.cbam = CBAM(planes, 16)

    def _residual(self, out: torch.Tensor) -> torch.Tensor:
        return self.cbam(out)


class MulScaleBlock(nn.Module):
    """MA-Net's multi-scale block: conv3×3(s) then two Res2Net-style hierarchical paths.

    After conv1-bn1-ReLU the map is split into four groups x1..x4 of ``planes/4`` channels. Path A
    (``conv1_2_k``/``bn1_2_k``) goes ascending: ``a1 = bn(conv(x1))``, ``ak = bn(conv(relu(a_{k-1})
    + xk))``. Path B (``conv2_2_k``/``bn2_2_k``, group k always uses index k) goes ascending in the
    2021 code that produced the published logs and descending (b4 first, from x4) in the repo's
    2023 HEAD. Both paths are concatenated in group order *before* any ReLU, summed with each
    other and the shortcut, then ReLU.

    Trap: the ReLUs must not be in-place: ``a1`` is both concatenated raw and fed through ReLU into
    the next group; an in-place ReLU silently concatenates ``relu(a1)`` instead.
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1, variant: str = "2021") -> None:
        super().__init__()
        if planes % 4:
            raise ModelError(f"MulScaleBlock needs planes divisible by 4, got {planes}")
        self.variant = _canonical_variant(variant)
        self.scale_width = planes // 4
        w = self.scale_width
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        for path in (1, 2):
            for k in range(1, 5):
                setattr(self, f"conv{path}_2_{k}", _conv3x3(w, w))
                setattr(self, f"bn{path}_2_{k}", nn.BatchNorm2d(w))
        self.downsample = _downsample(inplanes, planes, stride)

    def _group(self, path: int, k: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"bn{path}_2_{k}")(getattr(self, f"conv{path}_2_{k}")(x))

    def _path(self, path: int, groups: tuple[torch.Tensor, ...], order: tuple[int, ...]) -> torch.Tensor:
        outs: dict[int, torch.Tensor] = {}
        prev: torch.Tensor | None = None
        for k in order:
            inp = groups[k - 1] if prev is None else F.relu(prev) + groups[k - 1]  # non-inplace, see trap
            prev = outs[k] = self._group(path, k, inp)
        return torch.cat([outs[k] for k in (1, 2, 3, 4)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        groups = torch.split(out, self.scale_width, dim=1)
        path_a = self._path(1, groups, (1, 2, 3, 4))
        path_b = self._path(2, groups, (1, 2, 3, 4) if self.variant == "2021" else (4, 3, 2, 1))
        return F.relu(path_a + path_b + identity)


def _canonical_variant(variant: str) -> str:
    try:
        return _VARIANT_ALIASES[str(variant)]
    except KeyError:
        raise ModelError(
            f"unknown MA-Net variant {variant!r}; valid: '2021' (published logs, path B ascending) "
            "or '2023' (repo HEAD, path B descending)"
        ) from None


def _stage(block: type[nn.Module], inplanes: int, planes: int, stride: int, **kwargs) -> nn.Sequential:
    # Two blocks per stage ([2, 2, 2, 2] as in ResNet-18); only the first one strides/projects.
    return nn.Sequential(block(inplanes, planes, stride, **kwargs), block(planes, planes, 1, **kwargs))


class MANet(nn.Module):
    """MA-Net with late logit fusion.

    Args:
        num_classes: Outputs of each head (7 for basic expressions, 12666 for MS-Celeb).
        beta: Weight of the local head in the fused logits (and its CE loss weight).
        variant: ``"2021"`` (path B ascending, the code behind the published logs) or ``"2023"``
            (repo HEAD, path B descending); both have identical state-dict keys.
        width: Channels of the stem; stages use width × (1, 2, 4, 8). 64 is the published model;
            smaller widths give the same topology for fast tests.

    Attributes:
        loss_weights: Per-head CE weights ``{"local": beta, "global": 1 - beta}``.
    """

    def __init__(self, num_classes: int = 7, beta: float = 0.6, variant: str = "2021", width: int = 64) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if not isinstance(beta, (int, float)) or not 0.0 <= float(beta) <= 1.0:
            raise ModelError(f"beta must be a number in [0, 1], got {beta!r}")
        if not isinstance(width, int) or width < 8 or width % 8:
            # 4·width must split into 4 groups and 4·width/16 >= 1 CBAM hidden units.
            raise ModelError(f"width must be a positive multiple of 8, got {width!r}")
        self.num_classes = num_classes
        self.beta = float(beta)
        self.variant = _canonical_variant(variant)
        self.loss_weights: dict[str, float] = {"local": self.beta, "global": 1.0 - self.beta}
        c1, c2, c3, c4 = width, 2 * width, 4 * width, 8 * width

        # Feature pre-extractor: ResNet-18 conv1 ... conv3_x, shared by both branches.
        self.conv1 = nn.Conv2d(3, c1, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(BasicBlock, c1, c1, 1)
        self.layer2 = _stage(BasicBlock, c1, c2, 2)

        # Local branch: four separately weighted patch sub-networks. layer4 keeps stride 1, so the
        # 14×14 patches end at 7×7 and stitch back to 14×14.
        for p in range(1, 5):
            setattr(self, f"layer3_1_p{p}", _stage(AttentionBlock, c2, c3, 2))
            setattr(self, f"layer4_1_p{p}", _stage(AttentionBlock, c3, c4, 1))

        # Global branch: multi-scale blocks on the whole 28×28 map.
        self.layer3_2 = _stage(MulScaleBlock, c2, c3, 2, variant=self.variant)
        self.layer4_2 = _stage(MulScaleBlock, c3, c4, 2, variant=self.variant)

        self.fc_1 = nn.Linear(c4, num_classes)
        self.fc_2 = nn.Linear(c4, num_classes)

        # Official init; Linear layers keep PyTorch's default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _check_input(self, x: torch.Tensor) -> None:
        # Only dims 1..3 are compared: they are static, so the check adds nothing to a traced
        # graph and a dynamic batch axis stays dynamic. Under the legacy ONNX tracer the sizes
        # are traced tensors and comparing them warns that the result becomes a trace constant,
        # which is exactly what is meant for static dims; that warning is silenced here only.
        if torch.jit.is_tracing():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                bad = x.dim() != 4 or tuple(int(d) for d in x.shape[1:]) != INPUT_SHAPE
        else:
            bad = x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE
        if bad:
            raise ModelError(
                f"MA-Net expects input N×{INPUT_SHAPE[0]}×{INPUT_SHAPE[1]}×{INPUT_SHAPE[2]} (RGB in [0, 1]), "
                f"got {tuple(x.shape)}; the local branch's patch slicing is hard-coded for 224×224, "
                "resize images to 224×224 first"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-extractor output (N, 2·width, 28, 28) for a checked (N, 3, 224, 224) input."""
        self._check_input(x)
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    def local_branch(self, feat: torch.Tensor) -> torch.Tensor:
        """Local logits from the 28×28 pre-extractor map."""
        s = _PATCH
        patches = (
            feat[:, :, 0:s, 0:s],  # p1 top-left
            feat[:, :, 0:s, s : 2 * s],  # p2 top-right
            feat[:, :, s : 2 * s, 0:s],  # p3 bottom-left
            feat[:, :, s : 2 * s, s : 2 * s],  # p4 bottom-right
        )
        outs = [
            getattr(self, f"layer4_1_p{p}")(getattr(self, f"layer3_1_p{p}")(patch))
            for p, patch in enumerate(patches, start=1)
        ]
        stitched = torch.cat((torch.cat(outs[0:2], dim=3), torch.cat(outs[2:4], dim=3)), dim=2)
        return self.fc_1(torch.flatten(F.adaptive_avg_pool2d(stitched, 1), 1))

    def global_branch(self, feat: torch.Tensor) -> torch.Tensor:
        """Global (multi-scale) logits from the 28×28 pre-extractor map."""
        out = self.layer4_2(self.layer3_2(feat))
        return self.fc_2(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    def forward_heads(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All outputs: ``{"logits": fused, "local": fc_1 logits, "global": fc_2 logits}``.

        Raises:
            ModelError: If ``x`` is not N×3×224×224.
        """
        feat = self.features(x)
        local = self.local_branch(feat)
        glob = self.global_branch(feat)
        fused = self.beta * local + (1.0 - self.beta) * glob
        return {"logits": fused, "local": local, "global": glob}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fused logits ``beta·local + (1-beta)·global``, shape (N, num_classes).

        Raises:
            ModelError: If ``x`` is not N×3×224×224.
        """
        return self.forward_heads(x)["logits"]


# ---------------------------------------------------------------------------------------------
# MS-Celeb pre-trained checkpoint


@dataclass(frozen=True)
class PretrainedLoadReport:
    """What `load_msceleb_pretrained` did.

    Attributes:
        loaded: Number of state-dict entries copied into the model.
        dropped: Checkpoint keys deliberately not loaded (the 12666-way ``fc_1``/``fc_2`` heads).
        missing: Model keys the checkpoint lacked and that were left as initialised (only
            BN ``num_batches_tracked`` counters in strict mode).
        unexpected: Checkpoint keys the model has no place for (empty in strict mode).
    """

    loaded: int
    dropped: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()


def _first(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _read_state_dict(path_or_state_dict: str | Path | Mapping) -> Mapping:
    if isinstance(path_or_state_dict, Mapping):
        obj: object = path_or_state_dict
        source = "the given state dict"
    else:
        path = Path(path_or_state_dict)
        source = str(path)
        if not path.is_file():
            raise CheckpointError(f"pre-trained checkpoint {path} does not exist or is not a file")
        try:
            # weights_only: never unpickle arbitrary objects from a downloaded file.
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
            raise CheckpointError(
                f"cannot read pre-trained checkpoint {path} with torch.load(weights_only=True): {exc}"
            ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{source} holds no state dict: expected {{'state_dict': {{name: tensor}}}} or a bare {{name: tensor}} "
            f"mapping, got {type(obj).__name__}"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: state-dict entries that are not name -> tensor: {_first(bad)}")
    return obj


def load_msceleb_pretrained(
    model: nn.Module, path_or_state_dict: str | Path | Mapping, strict: bool = True
) -> PretrainedLoadReport:
    """Load the published MS-Celeb pre-trained MA-Net weights, keeping the model's own heads.

    The official checkpoint (``Pretrained_on_MSCeleb.pth.tar``) was saved from a ``DataParallel``
    model built with 12666 classes: ``{"state_dict": {"module.conv1.weight": ..., ...}}``. The
    ``module.`` prefixes are stripped and the 12666-way ``fc_1``/``fc_2`` heads are always dropped,
    so the model keeps its freshly initialised ``num_classes`` heads (what the official
    fine-tuning does by replacing them after loading).

    Args:
        model: An `MANet` (or a ``DataParallel`` wrapping one) of any ``num_classes``.
        path_or_state_dict: A file written by ``torch.save`` holding ``{"state_dict": {...}}`` or a
            bare state dict, or such a mapping already in memory.
        strict: If true, every backbone key of the model must be present in the checkpoint (BN
            ``num_batches_tracked`` counters excepted: checkpoints from old PyTorch lack them) and
            the checkpoint may hold no keys the model lacks. Shape mismatches always raise.

    Returns:
        A `PretrainedLoadReport` with the loaded-entry count and the dropped keys.

    Raises:
        CheckpointError: On an unreadable file, a content that is not a state dict, backbone
            shape mismatches, or (strict) missing/unexpected backbone keys; the message names the
            first offending keys and shapes.
    """
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    raw = _read_state_dict(path_or_state_dict)

    ckpt: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        name = key
        while name.startswith("module."):
            name = name[len("module.") :]
        if name.startswith(_HEAD_PREFIXES):
            dropped.append(key)
        else:
            ckpt[name] = value

    target = {k: v for k, v in model.state_dict().items() if not k.startswith(_HEAD_PREFIXES)}
    mismatched = [
        f"{k} checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
        for k, v in ckpt.items()
        if k in target and v.shape != target[k].shape
    ]
    missing = [k for k in target if k not in ckpt]
    unexpected = [k for k in ckpt if k not in target]
    hard_missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    problems = []
    if mismatched:
        problems.append(f"shape mismatches: {_first(mismatched)}")
    if strict and hard_missing:
        problems.append(f"missing backbone keys: {_first(hard_missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_first(unexpected)}")
    if problems:
        raise CheckpointError(
            "pre-trained MA-Net checkpoint does not fit the model (is it the MS-Celeb MA-Net checkpoint, "
            "and is the model the full-width 'manet'?): " + "; ".join(problems)
        )

    to_load = {k: v for k, v in ckpt.items() if k in target}
    # strict=False: the heads (and possibly num_batches_tracked) are intentionally absent.
    model.load_state_dict(to_load, strict=False)
    return PretrainedLoadReport(
        loaded=len(to_load), dropped=tuple(dropped), missing=tuple(missing), unexpected=tuple(unexpected)
    )


# ---------------------------------------------------------------------------------------------
# Registry

# The official pipeline is ToTensor() only: RGB scaled to [0, 1], no mean/std normalisation.
_SPEC = PreprocessSpec(
    input_size=(224, 224), color_mode="rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale=1.0 / 255.0
)


@register_model(
    "manet",
    family="manet",
    preprocess=_SPEC,
    description="MA-Net (TIP 2021), 224×224 RGB, ResNet-18 pre-extractor, 4 CBAM patch nets + multi-scale global net",
)
def manet(num_classes: int = 7, beta: float = 0.6, variant: str = "2021") -> MANet:
    """Full-size MA-Net (50,547,214 parameters for 7 classes)."""
    return MANet(num_classes=num_classes, beta=beta, variant=variant, width=64)


@register_model(
    "manet_tiny",
    family="manet",
    preprocess=_SPEC,
    description="MA-Net topology at 1/8 width (stem 8 channels) for fast tests; same 224×224 input contract",
)
def manet_tiny(num_classes: int = 7, beta: float = 0.6, variant: str = "2021") -> MANet:
    """MA-Net with every channel count divided by 8: same topology, for fast tests."""
    return MANet(num_classes=num_classes, beta=beta, variant=variant, width=8)
