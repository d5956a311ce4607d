"""A generator prepared for bfloat16 prediction on a CPU: a channels-last copy with two layers swapped for equivalents
that keep that layout fast. Inference only; the trained network is left as it is."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class ChannelsLastInstanceNorm(nn.Module):
    """Instance norm without affine parameters or running statistics (MONAI's "instance"), computed as a training-mode
    batch norm of each item alone. The same statistics (per item and channel, biased variance), but PyTorch's
    InstanceNorm3d reshapes a channels-last input into a contiguous copy, and the next convolution copies it back;
    batch norm runs on channels-last memory as it is. Written by hand: PyTorch has no layout-preserving instance
    norm."""

    def __init__(self, eps: float):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        items = [F.batch_norm(item, None, None, training=True, eps=self.eps) for item in x.split(1)]
        return items[0] if len(items) == 1 else torch.cat(items)


class Float32Upsample(nn.Module):
    """An upsampling layer run in float32: PyTorch's trilinear upsampling of channels-last bfloat16 tensors is slower
    than of float32 ones on a CPU (RESULTS.md §2)."""

    def __init__(self, upsample: nn.Module):
        super().__init__()
        self.upsample = upsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(x.float())


def cpu_bf16_copy(net: nn.Module) -> nn.Module:
    """A channels-last copy of `net` for CPU bfloat16 prediction, its parameter-free instance norms and its
    upsampling layers replaced by the layout-preserving versions above (same function up to float rounding)."""
    fast = copy.deepcopy(net)
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.InstanceNorm3d) and not child.affine and not child.track_running_stats:
                setattr(module, name, ChannelsLastInstanceNorm(child.eps))
            elif isinstance(child, nn.Upsample):
                setattr(module, name, Float32Upsample(child))
    return fast.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
