"""Several input sequences as network channels: a missing one is a zero channel, and each has a presence flag.

With one source the network input is that source alone (one channel, as every single-source checkpoint has). With S
sources it is 2S channels: the S sources in the config's order (missing ones zero) and S constant channels saying
which are present, the input layout of the BraSyn challenge's entries that predict from any subset of sequences.
"""

from __future__ import annotations

import torch


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


def draw_presence(batch: int, sources: int, dropout: float, gen: torch.Generator) -> torch.Tensor:
    """An (N, S) presence mask for training: each source left out with chance `dropout`, at least one kept per
    example (a draw that leaves none keeps one source chosen at random)."""
    present = torch.rand(batch, sources, generator=gen) >= dropout
    keep = torch.randint(0, sources, (batch,), generator=gen)
    empty = ~present.any(dim=1)
    present[empty, keep[empty]] = True
    return present
