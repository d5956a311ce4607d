"""The paper's generator: a UNet whose encoder and decoder are made of residual blocks (2D or 3D)."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution, UnetResBlock
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn
from torch.utils.checkpoint import checkpoint

from modalsynth.flops import count_parameters

NORMS = ("instance", "batch")
MAX_CHANNEL_FACTOR = 8  # channels double per level up to 8 x base_channels
STEMS = ("residual", "strided")
LRELU = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})  # UnetResBlock's activation


UPSAMPLES = ("transposed", "linear")


def upsample_2x(spatial_dims: int, in_channels: int, out_channels: int, kind: str) -> nn.Module:
    """2x upsampling that also maps in -> out channels.

    'transposed': a stride-2 transposed convolution with kernel 2 (the paper's UNet; every output voxel parity has its
    own weights, which can leave a period-2 checkerboard). 'linear': a 1x1 convolution at the low resolution, then
    (bi/tri)linear interpolation; the same as interpolating first and then mixing channels (both are linear and the
    interpolation weights sum to one), at an eighth of the cost in 3D, and free of checkerboards.
    """
    if kind == "transposed":
        return Convolution(
            spatial_dims,
            in_channels,
            out_channels,
            strides=2,
            kernel_size=2,
            is_transposed=True,
            conv_only=True,
            padding=0,
            output_padding=0,
        )
    mode = "trilinear" if spatial_dims == 3 else "bilinear"
    return nn.Sequential(
        Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True, bias=True),
        nn.Upsample(scale_factor=2, mode=mode, align_corners=False),
    )


class UpBlock(nn.Module):
    """Decoder level: 2x upsampling (`upsample_2x`), concatenation of the encoder skip, a residual block."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str,
        upsample: str = "transposed",
    ):
        super().__init__()
        self.upsample = upsample_2x(spatial_dims, in_channels, out_channels, upsample)
        self.block = UnetResBlock(
            spatial_dims,
            2 * out_channels,
            out_channels,
            kernel_size=3,
            stride=1,
            norm_name=norm,
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([self.upsample(x), skip], dim=1))


class FullResHead(nn.Module):
    """Full-resolution output stage of the strided layout: 2x upsampling (c_1 -> f, `upsample_2x`), concatenation of
    the source image (the full-resolution skip), one k x k(x k) conv-norm-lrelu (f + in -> f; k = `kernel_size`, 3 or
    a pointwise 1) and a 1x1 conv (f -> out)."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        source_channels: int,
        channels: int,
        out_channels: int,
        norm: str,
        kernel_size: int = 3,
        upsample: str = "transposed",
    ):
        super().__init__()
        self.upsample = upsample_2x(spatial_dims, in_channels, channels, upsample)
        self.fuse = Convolution(
            spatial_dims, channels + source_channels, channels, kernel_size=kernel_size, conv_only=True, bias=False
        )
        self.norm = get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=channels)
        self.act = get_act_layer(LRELU)
        self.out = Convolution(spatial_dims, channels, out_channels, kernel_size=1, conv_only=True, bias=True)

    def forward(self, features: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([self.upsample(features), source], dim=1))
        return self.out(self.act(self.norm(fused)))


class ResUNet(nn.Module):
    """Residual UNet generator mapping a source image to a target image in [-1, 1] (tanh output).

    Layout (``depth`` = number of 2x downsamplings, channels ``c_l = base * min(2**l, 8)``):
    stem residual block (in -> c_0) at full resolution; per encoder level a residual block with
    stride 2 (c_{l-1} -> c_l); a residual bottleneck block at the lowest level; per decoder level a
    transposed convolution (c_l -> c_{l-1}), concatenation with the encoder features of that level
    (the skip connection) and a residual block (2 c_{l-1} -> c_{l-1}); a 1x1 convolution and tanh.
    Residual blocks are MONAI's ``UnetResBlock`` (conv-norm-lrelu-conv-norm + shortcut, lrelu).
    This is ``stem="residual"``, the paper's layout and the default.

    ``stem="strided"`` (MONAI UNet style): no residual block runs at full resolution (where the paper's
    layout spends about half of its FLOPs, and level 1 another quarter). Widths are shifted one level
    down, ``c_l = base * min(2**(l-1), 8)`` for l >= 1: the stem is a residual block with stride 2
    (in -> c_1 = base, at half resolution), then depth - 1 stride-2 encoder blocks (c_{l-1} -> c_l), the
    bottleneck, depth - 1 up blocks back to level 1, and a full-resolution head (``FullResHead``): a 2x
    transposed conv (c_1 -> f), concatenation of the source image (the full-resolution skip), one
    3x3(x3) conv-norm-lrelu (f + in -> f) and a 1x1 conv; tanh. ``f = c_0 = full_res_channels``
    (default ``base_channels // 2``) is the width of the only full-resolution 3x3(x3) convolution; ``head_kernel=1``
    makes that convolution pointwise (no full-resolution spatial convolution at all).

    ``upsample``: how every 2x upsampling is done, ``"transposed"`` (kernel-2 transposed convolutions, the paper's
    UNet and the default) or ``"linear"`` (1x1 convolution, then linear interpolation: no checkerboard pattern).
    ``channels[l]`` is the width at level l (resolution 2**-l) in both layouts.

    Size rule, both layouts: every spatial size must be a multiple of ``2**depth`` (``size_multiple``).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        depth: int = 4,
        norm: str = "instance",
        checkpointing: bool = False,
        stem: str = "residual",
        full_res_channels: int | None = None,
        head_kernel: int = 3,
        upsample: str = "transposed",
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {list(STEMS)}, got {stem!r}")
        if full_res_channels is not None and stem != "strided":
            raise ValueError("full_res_channels applies to stem='strided' only (the residual stem uses base_channels)")
        if full_res_channels is not None and full_res_channels < 1:
            raise ValueError(f"full_res_channels must be positive, got {full_res_channels}")
        if head_kernel not in (1, 3):
            raise ValueError(f"head_kernel must be 1 or 3, got {head_kernel}")
        if head_kernel != 3 and stem != "strided":
            raise ValueError(
                "head_kernel applies to stem='strided' only (the residual stem has no full-resolution head)"
            )
        if upsample not in UPSAMPLES:
            raise ValueError(f"upsample must be one of {list(UPSAMPLES)}, got {upsample!r}")
        self.stem_kind = stem
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.depth = depth
        # With batch norm, checkpointing recomputes the forward and so updates running stats twice.
        self.checkpointing = checkpointing
        # channels[l]: the width at level l (resolution 2**-l); level 0 is full resolution
        if stem == "residual":
            channels = [base_channels * min(2**level, MAX_CHANNEL_FACTOR) for level in range(depth + 1)]
        else:
            f = max(base_channels // 2, 1) if full_res_channels is None else full_res_channels
            channels = [f] + [
                base_channels * min(2 ** (level - 1), MAX_CHANNEL_FACTOR) for level in range(1, depth + 1)
            ]
        self.channels = channels
        self.full_res_channels = channels[0]

        def res_block(c_in: int, c_out: int, stride: int) -> UnetResBlock:
            return UnetResBlock(spatial_dims, c_in, c_out, kernel_size=3, stride=stride, norm_name=norm)

        # the level the stem works at (0 = full resolution); the decoder comes back up to the same level
        first = 0 if stem == "residual" else 1
        self.stem = res_block(in_channels, channels[first], 2 if first else 1)
        self.encoder = nn.ModuleList(res_block(channels[lv - 1], channels[lv], 2) for lv in range(first + 1, depth + 1))
        self.bottleneck = res_block(channels[depth], channels[depth], 1)
        self.decoder = nn.ModuleList(
            UpBlock(spatial_dims, channels[lv], channels[lv - 1], norm, upsample) for lv in range(depth, first, -1)
        )
        self.head: nn.Module
        if stem == "residual":
            self.head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True, bias=True)
        else:
            self.head = FullResHead(
                spatial_dims, channels[1], in_channels, channels[0], out_channels, norm, head_kernel, upsample
            )

    def input_weights(self) -> dict[str, int]:
        """The weights that read the network input, each with the index of the input's first channel among the
        channels that weight reads (the full-resolution head reads the upsampled features first)."""
        offsets = {name: 0 for name in ("stem.conv1.conv.weight", "stem.conv3.conv.weight")}
        if self.stem_kind == "strided":
            offsets["head.fuse.conv.weight"] = self.channels[0]
        return {name: offset for name, offset in offsets.items() if name in self.state_dict()}

    @property
    def size_multiple(self) -> int:
        """Every spatial size of the input must be a multiple of this (2**depth, in both stem layouts)."""
        return 2**self.depth

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return count_parameters(self)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError with the fix if x is not (N, in_channels, *spatial) with sizes divisible by 2**depth."""
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"ResUNet expects a tensor (N, {self.in_channels}, {'D, H, W' if self.spatial_dims == 3 else 'H, W'}),"
                f" got shape {tuple(x.shape)}"
            )
        spatial = tuple(x.shape[2:])
        if any(size % self.size_multiple for size in spatial):
            raise ValueError(
                f"ResUNet with depth {self.depth} needs every spatial size divisible by {self.size_multiple},"
                f" got {spatial}: pad or crop the input (or the patch size) to a multiple of {self.size_multiple},"
                " or use a smaller depth"
            )

    def _run(self, block: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
        """Run a block, through activation checkpointing when enabled and gradients are being recorded."""
        if self.checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *inputs, use_reentrant=False)
        return block(*inputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self._run(self.stem, x)
        skips = [features]
        for block in self.encoder:
            features = self._run(block, features)
            skips.append(features)
        features = self._run(self.bottleneck, skips.pop())
        for block in self.decoder:
            features = self._run(block, features, skips.pop())
        if self.stem_kind == "residual":
            return torch.tanh(self.head(features))
        return torch.tanh(self._run(self.head, features, x))
