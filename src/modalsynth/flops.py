"""Model cost: parameter counts and forward FLOPs (via torch's own FlopCounterMode)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) scalar parameters of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass on an input of shape (N, C, *spatial).

    Counts what torch.utils.flop_counter counts: convolutions, transposed convolutions and matrix
    products (linear layers); norms, activations and additions are not counted. The model is copied
    onto the meta device, so no memory is allocated and no arithmetic is done, whatever the size.
    """
    meta_model = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta_model(torch.empty(tuple(input_shape), device="meta"))
    return int(counter.get_total_flops())
