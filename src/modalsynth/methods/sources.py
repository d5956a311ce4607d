"""Several input sequences as network channels: a missing one is a zero channel, and each has a presence flag.

With one source the network input is that source alone (one channel, as every single-source checkpoint has). With S
sources it is 2S channels: the S sources in the config's order (missing ones zero) and S constant channels saying
which are present, the input layout of the BraSyn challenge's entries that predict from any subset of sequences.
"""

from __future__ import annotations

import torch
from torch import nn


def input_channels(sources: int) -> int:
    """Channels of the network input for this many sources."""
    return 1 if sources == 1 else 2 * sources


def network_input(sources: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
    """(N, S, *spatial) sources and an (N, S) presence mask (None: all present) -> the (N, C, *spatial) input."""
    if sources.shape[1] == 1:
        return sources
    if present is None:
        present = torch.ones(sources.shape[:2], dtype=torch.bool, device=sources.device)
    flags = present.to(sources.dtype).reshape(*present.shape, *([1] * (sources.dim() - 2)))
    return torch.cat([sources * flags, flags.expand_as(sources)], dim=1)


def draw_presence(
    batch: int, sources: int, dropout: float, gen: torch.Generator, available: torch.Tensor | None = None
) -> torch.Tensor:
    """An (N, S) presence mask for training: each source the example has (`available`, (N, S) bool; None: all) kept
    with chance 1 - `dropout`, at least one kept per example (a draw that leaves none keeps one of the available
    sources chosen at random)."""
    if available is None:
        available = torch.ones(batch, sources, dtype=torch.bool)
    present = (torch.rand(batch, sources, generator=gen) >= dropout) & available
    keep = (torch.rand(batch, sources, generator=gen) * available).argmax(dim=1)
    empty = ~present.any(dim=1)
    present[empty, keep[empty]] = True
    return present


def widen_input_weights(state: dict[str, torch.Tensor], net: nn.Module, channel: int) -> dict[str, torch.Tensor]:
    """A single-source network's weights made to fit `net`, which takes several sources: the old source's weights
    read input channel `channel` and every other input channel (other sources, presence flags) starts at zero, so
    the widened network computes what the old one did whenever that source is present."""
    widened = dict(state)
    shapes = {name: tensor.shape for name, tensor in net.state_dict().items()}
    for name, start in net.input_weights().items():  # type: ignore[operator]
        old, shape = state[name], shapes[name]
        if old.shape == shape:
            continue
        inputs = shape[1] - (old.shape[1] - 1)  # the new input's channels; the weight's other channels stay
        weight = old.new_zeros(shape)
        weight[:, :start] = old[:, :start]
        weight[:, start + channel] = old[:, start]
        weight[:, start + inputs :] = old[:, start + 1 :]
        widened[name] = weight
    return widened
