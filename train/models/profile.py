"""Parameter and MAC counts (multiply-accumulates of Conv, ConvTranspose and Linear layers)."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; BN running statistics are buffers and not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """MACs of one forward pass at ``input_shape`` (batch included), counting conv/linear layers.

    Conv: out_elements × (C_in / groups) × kH × kW. ConvTranspose: in_elements × C_out/groups × kH × kW.
    Linear: out_elements × in_features. Element-wise ops, pooling and BN are not counted, the
    convention of the papers' "FLOPs" tables.
    """
    total = 0

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def convt_hook(mod: nn.ConvTranspose2d, inp, out) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += inp[0].numel() * (mod.out_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(convt_hook))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(input_shape, dtype=p.dtype if p is not None else torch.float32)
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total
