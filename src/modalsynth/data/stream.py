"""Training batches streamed by a torch DataLoader: item k is the whole batch of step k, cut from memory maps.

The batch of step k depends only on (seed, step, rank): its subjects come from a DistributedSampler re-seeded per
epoch (each rank takes its own share of the epoch's subjects) and its patches and augmentations from
`data_generator(seed, step, rank)`. So any number of workers, and a resumed run, give the same batches.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .cache import available_cpus
from .datasets import data_generator, make_batch

#: batches each worker prepares ahead of the training step
PREFETCH = 2
#: at most this many loader workers per rank by default
MAX_DEFAULT_WORKERS = 8


@dataclass(frozen=True)
class BatchPlan:
    """How a rank's batches are drawn: seed, rank and world, batch size, patch (None: whole grid), augmentation."""

    seed: int
    rank: int
    world: int
    batch_size: int
    patch: tuple[int, int, int] | None
    augment: str


def steps_per_epoch(subjects: int, world: int, batch_size: int) -> int:
    """Optimiser steps in an epoch: each rank's share of the subjects (a DistributedSampler's, padded), in batches."""
    return max(1, math.ceil(math.ceil(subjects / world) / batch_size))


class StepBatches(Dataset):
    """Map-style dataset whose item `step` is that step's batch for this rank (subjects: cache entries or arrays)."""

    def __init__(self, subjects: Sequence[Any], plan: BatchPlan):
        self.subjects, self.plan = subjects, plan
        self.sampler: DistributedSampler[int] = DistributedSampler(
            range(len(subjects)),  # type: ignore[arg-type]  # a sized sequence of indices is all it reads
            num_replicas=plan.world,
            rank=plan.rank,
            shuffle=True,
            seed=plan.seed,
        )
        self.steps_per_epoch = steps_per_epoch(len(subjects), plan.world, plan.batch_size)

    def indices(self, step: int) -> list[int]:
        """The subjects (indices into `subjects`) of this rank's batch at `step`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        order = list(self.sampler)
        size = self.plan.batch_size
        return order[within * size : (within + 1) * size] or order[:size]

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        gen = data_generator(self.plan.seed, step, self.plan.rank)
        return make_batch(self.subjects, self.indices(step), self.plan.patch, self.plan.augment, gen)


def default_workers(local_world: int = 1) -> int:
    """Loader workers per rank: the CPUs this process may use, shared by the ranks of a node, less one for the
    training process itself (at most MAX_DEFAULT_WORKERS; 0 on a single CPU)."""
    return max(0, min(MAX_DEFAULT_WORKERS, available_cpus() // max(1, local_world) - 1))


def stream_batches(
    batches: StepBatches, start: int, workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of steps start, start + 1, ... in order, prepared by `workers` processes (0: in this one)."""
    loader = DataLoader(
        batches,
        batch_size=None,
        sampler=itertools.count(start),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=PREFETCH if workers else None,
        persistent_workers=False,
    )
    return iter(loader)
