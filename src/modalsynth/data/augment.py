"""Training augmentations of one (source, target, mask) example, drawn from the step's seeded generator.

Levels: 'none'; 'light' (a left-right flip and a small intensity scale/shift of the source: the project's first
recipe); 'bias' (light, then one smooth multiplicative field applied alike to source and target, as a receive coil's
shading falls on every sequence of a session: the network learns to carry shading over rather than read it as a
lesion); 'mri' (light, then MONAI's scanner-like changes of the source: a smooth bias field, a gamma curve and
Gaussian noise, and a small random rotation/scaling applied alike to source, target and mask); 'rim' (light, then
half the time a dark shell of 1-4 voxels around a skull-stripped brain in the sources, the extra-axial CSF that one
skull stripper keeps and another removes, with the target's background left there: the network learns to read a
looser mask as background rather than as brain). The MONAI transforms
are seeded from the step's generator, so a resumed run draws the same augmentations as one that never stopped.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

#: augmentation levels of `TrainConfig.augment`, from none to the most
AUGMENTATIONS = ("none", "light", "bias", "mri", "rim")
#: the 'rim' level's shell: chance per example, thickness range in voxels, and where its signal sits between the
#: percentiles of each source's brain (the dark CSF of a FLAIR or T1; a T2's bright CSF is not modelled)
RIM_CHANCE, RIM_VOXELS, RIM_PERCENTILES = 0.5, (1.0, 4.0), (1.0, 10.0)


@lru_cache(maxsize=1)
def _mri_transforms():
    """MONAI's random transforms of the 'mri' level (built once; each call reseeds them)."""
    from monai.transforms import RandAdjustContrast, RandAffine, RandBiasField, RandGaussianNoise

    source_only = (
        RandBiasField(prob=0.5, coeff_range=(0.0, 0.3), degree=3),  # works on [0, 1] intensities (multiplicative)
        RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)),
        RandGaussianNoise(prob=0.3, mean=0.0, std=0.03),
    )
    geometric = RandAffine(
        prob=0.3, rotate_range=(0.15, 0.15, 0.15), scale_range=(0.1, 0.1, 0.1), mode="bilinear", padding_mode="border"
    )
    return source_only, geometric


@lru_cache(maxsize=1)
def _shared_field():
    """The 'bias' level's field: MONAI draws one set of coefficients per call, so every channel gets the same field;
    coefficients up to 0.04 shade a 64^3 patch by about 4 % (sd), the low-frequency spread of real T1 white matter."""
    from monai.transforms import RandBiasField

    return RandBiasField(prob=0.8, coeff_range=(0.0, 0.04), degree=3)


def _seed(gen: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=gen))


def _mri(
    src: np.ndarray, tgt: np.ndarray, mask: np.ndarray, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 'mri' level's MONAI transforms on arrays in [-1, 1] (sources (S, D, H, W); mask in {0, 1})."""
    source_only, geometric = _mri_transforms()
    unit = (src + 1.0) / 2.0  # bias field and gamma are defined on non-negative intensities
    for transform in source_only:
        transform.set_random_state(seed=_seed(gen))
        unit = transform(unit)
    src = np.clip(np.asarray(unit) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    geometric.set_random_state(seed=_seed(gen))
    if mask.ndim == 3 and min(mask.shape) > 1:
        moved = np.asarray(geometric(np.concatenate([src, tgt[None], mask[None]])))
        src = np.clip(moved[:-2], -1.0, 1.0).astype(np.float32)
        tgt = np.clip(moved[-2], -1.0, 1.0).astype(np.float32)
        mask = (moved[-1] > 0.5).astype(np.float32)
    return src, tgt, mask


def augment_item(
    src: np.ndarray, tgt: np.ndarray, mask: np.ndarray, level: str, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augment one example in [-1, 1] (sources (S, D, H, W), target and mask (D, H, W)) at `level` (see
    AUGMENTATIONS); the target keeps its intensities."""
    if level not in AUGMENTATIONS:
        raise ValueError(f"augmentation level {level!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if level == "none":
        return src, tgt, mask
    if bool(torch.rand((), generator=gen) < 0.5):  # left-right flip (x axis)
        src, tgt, mask = (np.ascontiguousarray(a[..., ::-1]) for a in (src, tgt, mask))
    unshifted = src  # the brain as the data marks it (background -1), before the intensity shift moves the background
    scale = 1.0 + 0.1 * (float(torch.rand((), generator=gen)) - 0.5)
    shift = 0.1 * (float(torch.rand((), generator=gen)) - 0.5)
    src = np.clip((src + 1.0) * scale - 1.0 + shift, -1.0, 1.0).astype(np.float32)
    if level == "mri":
        src, tgt, mask = _mri(src, tgt, mask, gen)
    elif level == "bias":
        src, tgt = _shaded(src, tgt, gen)
    elif level == "rim" and bool(torch.rand((), generator=gen) < RIM_CHANCE):
        src = _with_rim(src, ndimage.binary_fill_holes(unshifted[0] > -1.0 + 1e-3), gen)
    return src, tgt, mask


def _with_rim(src: np.ndarray, brain: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """Sources (S, D, H, W) in [-1, 1] with a dark shell drawn around `brain` (D, H, W): RIM_VOXELS thick, each
    source at a level between RIM_PERCENTILES of its own brain, with a little noise."""
    if not brain.any() or brain.all():
        return src
    low, high = RIM_VOXELS
    thickness = low + (high - low) * float(torch.rand((), generator=gen))
    shell = (ndimage.distance_transform_edt(~brain) <= thickness) & ~brain
    out = src.copy()
    noise = torch.randn((int(shell.sum()),), generator=gen).numpy()
    for channel in out:
        p_low, p_high = np.percentile(channel[brain], RIM_PERCENTILES)
        level = p_low + (p_high - p_low) * float(torch.rand((), generator=gen))
        channel[shell] = np.clip(level + 0.02 * noise, -1.0, 1.0)
    return out


def _shaded(src: np.ndarray, tgt: np.ndarray, gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sources (S, D, H, W) and target (D, H, W) in [-1, 1] times one smooth field (on [0, 1], so air stays dark)."""
    field = _shared_field()
    field.set_random_state(seed=_seed(gen))
    unit = np.asarray(field((np.concatenate([src, tgt[None]]) + 1.0) / 2.0))
    shaded = np.clip(unit * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    return shaded[:-1], shaded[-1]
