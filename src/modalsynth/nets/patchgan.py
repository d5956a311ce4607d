"""Conditional PatchGAN discriminator (Isola et al. 2017), 2D or 3D: one real/fake logit per patch."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import PatchDiscriminator as MonaiPatchDiscriminator
from torch import nn

from modalsynth.flops import count_parameters

NORMS = ("instance", "batch", "none")
KERNEL_SIZE = 4


class PatchDiscriminator(nn.Module):
    """PatchGAN fed the source and a (real or generated) target concatenated on the channel axis.

    Layers (MONAI's ``PatchDiscriminator``, which follows pix2pix): a 4^d conv with stride 2 and
    LeakyReLU(0.2) without norm, ``n_layers - 1`` more stride-2 convs and one stride-1 conv with norm
    and LeakyReLU, channels doubling from ``base_channels``, then a stride-1 conv to one channel.
    The output is a map of logits (no sigmoid), each seeing ``receptive_field`` voxels per axis:
    70 for the default ``n_layers=3`` (the classic 70x70 PatchGAN in 2D, 70^3 in 3D).
    Unlike pix2pix, channels are not capped at 8 x base (identical for n_layers <= 3).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 2,
        base_channels: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {n_layers}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.net = MonaiPatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=base_channels,
            in_channels=in_channels,
            out_channels=1,
            num_layers_d=n_layers,
            kernel_size=KERNEL_SIZE,
            norm=None if norm == "none" else norm,  # type: ignore[arg-type]  # MONAI takes None: no norm
            bias=norm == "none",  # a bias before a norm layer is redundant
        )

    def _convs(self) -> list[nn.Conv2d | nn.Conv3d]:
        """The convolutions in the order the input goes through them."""
        return [m for m in self.net.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]

    def input_weights(self) -> dict[str, int]:
        """The weight that reads the input (the conditioning channels first, the target or fake last), with the index
        of the input's first channel."""
        return {"net.initial_conv.conv.weight": 0}

    @property
    def receptive_field(self) -> int:
        """Input voxels per axis that one output logit depends on (same on every axis)."""
        field = 1
        for conv in reversed(self._convs()):
            field = (field - 1) * conv.stride[0] + conv.kernel_size[0]
        return field

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)

    def output_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial shape of the logit map for an input of the given spatial shape."""
        shape = list(spatial_shape)
        for conv in self._convs():
            pad, kernel, stride = int(conv.padding[0]), int(conv.kernel_size[0]), int(conv.stride[0])
            shape = [(size + 2 * pad - kernel) // stride + 1 for size in shape]
        return tuple(shape)

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Logit map for x = source and target concatenated on channels, or for (source, target) given apart."""
        if target is not None:
            x = torch.cat([x, target], dim=1)
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"PatchDiscriminator expects (N, {self.in_channels}, *spatial) with {self.spatial_dims} spatial axes"
                f" (source and target concatenated on channels), got shape {tuple(x.shape)}"
            )
        out_shape = self.output_shape(x.shape[2:])
        if min(out_shape) < 1:
            raise ValueError(
                f"input spatial shape {tuple(x.shape[2:])} is too small for this PatchDiscriminator"
                f" (logit map would be {out_shape}): use larger patches or fewer n_layers"
            )
        return self.net(x)[-1]
