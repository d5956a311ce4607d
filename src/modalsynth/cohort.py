"""A folder of predictions shared by the ranks of a torchrun job, and resumable.

Each rank takes every K-th subject (K ranks over all nodes); outputs are written atomically.
OUT/.modalsynth-predict.json
records the model and the settings the outputs were made with: a rerun with the same ones skips every output that
exists and is newer than its source, so a killed job over thousands of volumes continues where it stopped; a rerun
with another model or settings redoes them all.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from .io import atomic_write, plain
from .runtime import launch

RECORD = ".modalsynth-predict.json"
T = TypeVar("T")


class Cohort:
    """This process's share of a prediction folder: rank and world from torchrun's variables (1 process without)."""

    def __init__(self, out_root: Path, identity: dict[str, Any]):
        self.out_root, self.identity = Path(out_root), plain(identity)
        self.rank, self.world = launch().rank, launch().world
        self.same = False
        self._own_group = False

    def __enter__(self) -> Cohort:
        """Read the folder's record; every rank reads it before `begin` may replace it."""
        path = self.out_root / RECORD
        try:
            self.same = path.exists() and json.loads(path.read_text()) == self.identity
        except (OSError, ValueError):
            self.same = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")  # only for this barrier: the ranks read the old record before it changes
            self._own_group = True
        if self.world > 1:
            dist.barrier()
        return self

    def begin(self) -> None:
        """Record this run's model and settings (rank 0), once the inputs are checked and outputs are about to come."""
        if self.rank == 0:
            text = json.dumps(self.identity, indent=1, sort_keys=True)
            atomic_write(self.out_root / RECORD, ".json", lambda tmp: Path(tmp).write_text(text))

    def __exit__(self, *exc: object) -> None:
        if self._own_group:
            dist.destroy_process_group()

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every `world`-th one from `rank` (disjoint across ranks, together all of them)."""
        return list(items[self.rank :: self.world])

    def finished(self, sources: Sequence[Path], output: Path) -> bool:
        """Whether `output` was written by an earlier run of this model and settings after its sources last changed."""
        return (
            self.same
            and output.exists()
            and all(output.stat().st_mtime_ns >= Path(s).stat().st_mtime_ns for s in sources)
        )
