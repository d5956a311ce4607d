"""Two overlapping training patches cut out of one sampled region, for the window-consistency term (`model.consistency`).

A generator with instance norm gives a voxel a different value in each sliding window that holds it (other context,
other statistics); averaging many windows (overlap 0.5) hides that, one pass does not. Training on two shifted views of
one region, with an L1 term between their outputs on the voxels they share, asks the network for the same value in any
window. Written by hand: no library cuts paired views with their shared box.
"""

from __future__ import annotations

import torch

Box = tuple[slice, slice, slice]


def view_region(patch: tuple[int, int, int]) -> tuple[int, int, int]:
    """The region sampled per view pair: the patch plus half a patch on every axis, so two views overlap by at least half."""
    return tuple(p + p // 2 for p in patch)  # type: ignore[return-value]


def overlapping_views(
    batch: dict[str, torch.Tensor], patch: tuple[int, int, int], gen: torch.Generator
) -> tuple[dict[str, torch.Tensor], list[tuple[Box, Box]]]:
    """Cut two patches from each (N, C, *region) item at random offsets (drawn from `gen`): tensors of 2N items
    (the N first views, then the N second ones) and, per item, the shared box in the first and in the second view."""
    region = tuple(batch["source"].shape[2:])
    if any(r < p for r, p in zip(region, patch)):
        raise ValueError(f"region {region} is smaller than the patch {patch}")
    views: dict[str, list[torch.Tensor]] = {key: [] for key in batch}
    shared: list[tuple[Box, Box]] = []
    firsts, seconds = [], []
    for i in range(batch["source"].shape[0]):
        a, b = ([int(torch.randint(0, r - p + 1, (1,), generator=gen)) for r, p in zip(region, patch)] for _ in range(2))
        firsts.append(a)
        seconds.append(b)
        lo = [max(x, y) for x, y in zip(a, b)]
        hi = [min(x, y) + p for x, y, p in zip(a, b, patch)]
        shared.append(tuple(tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, view)) for view in (a, b)))  # type: ignore[arg-type]
    for offsets in (firsts, seconds):
        for i, start in enumerate(offsets):
            box = tuple(slice(s, s + p) for s, p in zip(start, patch))
            for key, tensor in batch.items():
                views[key].append(tensor[(i, slice(None), *box)])
    return {key: torch.stack(parts) for key, parts in views.items()}, shared
