"""Axial slices for the 2D methods: a volume (or patch) batch becomes a batch of foreground slices."""

from __future__ import annotations

import torch


def sample_axial_slices(
    batch: dict[str, torch.Tensor], per_volume: int, gen: torch.Generator
) -> dict[str, torch.Tensor]:
    """Turn (N, C, D, H, W) tensors into (N * per_volume, C, H, W): slices drawn with `gen` among those holding
    foreground.

    Slices are drawn without replacement while there are enough foreground slices, then repeated; a volume with no
    foreground slice (a background patch) contributes any of its slices. The same slices are taken from every key;
    a per-volume key of two axes (`present`) is repeated for each of its slices.
    """
    mask = batch["mask"]
    volumes, slices = [], []
    for n in range(mask.shape[0]):
        holds = mask[n].sum(dim=(0, 2, 3)) > 0  # (D,): does the slice hold foreground?
        candidates = torch.nonzero(holds).flatten().cpu()
        if candidates.numel() == 0:
            candidates = torch.arange(mask.shape[2])
        order = candidates[torch.randperm(candidates.numel(), generator=gen)]
        chosen = order[torch.arange(per_volume) % order.numel()]
        volumes.append(torch.full_like(chosen, n))
        slices.append(chosen)
    vol_idx = torch.cat(volumes).to(mask.device)
    slice_idx = torch.cat(slices).to(mask.device)
    # advanced indices on axes 0 and 2 around a plain slice: the indexed axis comes first -> (M, C, H, W)
    return {key: value[vol_idx, :, slice_idx] if value.dim() > 2 else value[vol_idx] for key, value in batch.items()}
