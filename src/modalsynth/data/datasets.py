"""Preprocessed pairs held in memory, and the stateless per-step sampling of volumes, patches and augmentations.

Every random choice of a training step comes from a generator seeded by (seed, step, rank), so a run that is
stopped and resumed draws exactly the same batches as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import nibabel as nib
import nibabel.processing
import numpy as np
import torch

from ..io import Volume, load_volume
from .augment import augment_item
from .pairs import Pair
from .preprocess import GridRecord, IntensityRecord, PreprocessConfig, crop_window, preprocess
from .skullstrip import SkullStrip, masked


@dataclass
class Subject(Protocol):
    """What training reads of a subject, in memory (`PreparedSubject`) or memory-mapped (`data.cache.CachedSubject`)."""

    @property
    def source(self) -> np.ndarray: ...
    @property
    def target(self) -> np.ndarray | None: ...
    @property
    def mask(self) -> np.ndarray: ...
    @property
    def target_intensity(self) -> IntensityRecord | None: ...
    @property
    def present(self) -> tuple[bool, ...]: ...


@dataclass
class PreparedSubject:
    """One subject on the network grid: sources (S, D, H, W) and target (D, H, W) in [-1, 1], the foreground mask,
    and the first source's geometry."""

    name: str
    source: np.ndarray
    target: np.ndarray | None
    mask: np.ndarray
    grid: GridRecord
    target_intensity: IntensityRecord | None
    registrations: list[dict] = field(default_factory=list)  # `register`: what moved onto the first source, and how
    present: tuple[bool, ...] = ()  # which sources the subject has (empty: all); an absent one is a channel of -1


def resample_like(moving: Volume, reference: Volume, order: int = 1) -> Volume:
    """Resample `moving` onto `reference`'s voxel grid using both affines (nibabel does the interpolation)."""
    img = nib.Nifti1Image(moving.data, moving.affine)
    ref = nib.Nifti1Image(np.zeros(reference.shape, np.float32), reference.affine)
    out = nibabel.processing.resample_from_to(img, ref, order=order, mode="nearest")
    return Volume(
        np.asarray(out.dataobj, dtype=np.float32), reference.affine.copy(), reference.header.copy(), moving.path
    )


def prepare_pair(pair: Pair, config: PreprocessConfig) -> PreparedSubject:
    """Load and preprocess one pair: the geometry is planned on the first source and applied to the other sources,
    the target and the mask; each image is scaled by its own intensities."""
    source, *more = (load_volume(path) for path in pair.sources if path is not None)
    mask = load_volume(pair.mask, allow_constant=True) if pair.mask else None
    registered, registrations = None, list[dict[str, Any]]()
    if config.register:  # before skull stripping: the brain is found on the first source and applies to all
        from .register import register_subject

        target_volume = load_volume(pair.target) if pair.target is not None else None
        more, registered, (mask,), registrations = register_subject(source, more, target_volume, [mask])
    # skull stripping (raw pairs): a given brain mask, else deepbet's on the first source; every image is zeroed
    # outside it
    brain = None
    if config.skull_strip != "never":
        brain = mask.data > 0 if mask is not None else SkullStrip(config.skull_strip).region_of(source)
    if brain is not None:
        source, more = masked(source, brain), [masked(v, brain) for v in more]
        mask = mask if mask is not None else Volume(brain.astype(np.uint8), source.affine, source.header)
    pre_src = preprocess(source, config, mask=mask)
    arrays = iter([pre_src.array] + [preprocess(v, config, grid=pre_src.grid, mask=mask).array for v in more])
    present = tuple(path is not None for path in pair.sources)
    channels = [next(arrays) if there else np.full_like(pre_src.array, -1.0) for there in present]
    target = pre_tgt = None
    if pair.target is not None:
        target = registered or load_volume(pair.target)
        if pair.resample_target and registered is None:
            target = resample_like(target, source)
        if brain is not None:
            target = masked(target, brain)
        pre_tgt = preprocess(target, config, grid=pre_src.grid, mask=mask)
        pre_tgt.intensity.background = float(np.percentile(target.data, 1))  # the value of the empty background
    return PreparedSubject(
        name=pair.subject,
        source=np.stack(channels),
        target=pre_tgt.array if pre_tgt else None,
        mask=pre_src.mask,
        grid=pre_src.grid,
        target_intensity=pre_tgt.intensity if pre_tgt else None,
        registrations=registrations,
        present=() if all(present) else present,
    )


def typical_intensity(subjects: Sequence[Subject]) -> IntensityRecord:
    """The median robust range and background of the training targets: what a prediction is mapped back to."""
    records = [s.target_intensity for s in subjects if s.target_intensity]
    low, high, background = (float(np.median([getattr(r, k) for r in records])) for k in ("low", "high", "background"))
    return IntensityRecord(low, high, background)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random generator of one training step's method (stateless: depends only on seed, step and rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 97 + rank) % (2**63))


def data_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random generator of one step's batch (patches, augmentation): a stream independent of `step_generator`'s,
    so the loader's workers and the training step each draw their own numbers."""
    state = np.random.SeedSequence([seed % (2**32), step, rank, 1]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def sample_item(
    subject: Subject, patch: tuple[int, int, int] | None, augment: str, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training example: sources (S, D, H, W), target and mask (D, H, W); the whole grid or a random patch,
    augmented at level `augment`."""
    src, tgt, mask = subject.source, subject.target, subject.mask
    if tgt is None:
        raise ValueError(f"{subject}: a training example needs a target")
    if patch is not None:
        start = None
        for _ in range(10):  # prefer patches that hold some foreground
            start = tuple(
                int(torch.randint(min(0, n - p), max(0, n - p) + 1, (1,), generator=gen))
                for n, p in zip(mask.shape, patch)
            )
            if crop_window(mask, start, patch, 0.0).mean() > 0.1:
                break
        assert start is not None  # the loop runs at least once
        src = np.stack([crop_window(channel, start, patch, -1.0) for channel in src])
        tgt, mask = crop_window(tgt, start, patch, -1.0), crop_window(mask, start, patch, 0.0)
    # float32 from here on: a cached subject is memory-mapped float16 (and a whole grid is read here, once)
    src, tgt, mask = (np.asarray(a, dtype=np.float32) for a in (src, tgt, mask))
    return augment_item(src, tgt, mask, augment, gen)


def make_batch(
    subjects: Sequence[Subject],
    indices: list[int],
    patch: tuple[int, int, int] | None,
    augment: str,
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Stack sampled items into tensors: source (N, S, D, H, W), target and mask (N, 1, D, H, W), and with several
    sources `present` (N, S): which sources each subject has."""
    # one grid per batch: a patch, or a fixed grid, whenever batch_size > 1 (a rule checked when settings resolve)
    items = [sample_item(subjects[i], patch, augment, gen) for i in indices]
    sources, targets, masks = (torch.from_numpy(np.stack(parts)) for parts in zip(*items))
    batch = {"source": sources, "target": targets[:, None], "mask": masks[:, None]}
    if sources.shape[1] > 1:
        count = sources.shape[1]
        batch["present"] = torch.tensor([list(subjects[i].present or (True,) * count) for i in indices])
    return batch
