"""Training augmentations of one (source, target, mask) example, drawn from the step's seeded generator.

Levels: 'none'; 'light' (a left-right flip and a small intensity scale/shift of the source: the project's first
recipe); 'mri' (light, then MONAI's scanner-like changes of the source: a smooth bias field, a gamma curve and
Gaussian noise, and a small random rotation/scaling applied alike to source, target and mask); 'scanner' (mri, and
with chance one half the source re-sampled as if acquired in thick slices of 3-6 voxels along a random axis, as a 2D
FLAIR of 3-6 mm slices is on the 1 mm grid it is predicted on). The MONAI transforms are seeded from the step's
generator, so a resumed run draws the same augmentations as one that never stopped.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

#: augmentation levels of `TrainConfig.augment`, from none to the most
AUGMENTATIONS = ("none", "light", "mri", "scanner")
#: slice thicknesses (voxels) that the 'scanner' level simulates
THICK_SLICES = (3, 6)


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


def thick_slices(src: np.ndarray, axis: int, thickness: int) -> np.ndarray:
    """Sources (S, D, H, W) as if acquired in slices `thickness` voxels thick along spatial `axis` (0-2): each slab
    of that many voxels averaged (a box slice profile), then interpolated back linearly onto the original grid."""
    volume = torch.from_numpy(np.ascontiguousarray(src))[None]  # (1, S, D, H, W)
    kernel = [1, 1, 1]
    kernel[axis] = thickness
    thick = F.avg_pool3d(volume, kernel_size=kernel, stride=kernel, ceil_mode=True, count_include_pad=False)
    back = F.interpolate(thick, size=volume.shape[2:], mode="trilinear", align_corners=False)
    return back[0].numpy().astype(np.float32)


def _thick(src: np.ndarray, gen: torch.Generator) -> np.ndarray:
    """With chance one half, `thick_slices` along a random axis at a random thickness of THICK_SLICES."""
    if bool(torch.rand((), generator=gen) < 0.5):
        return src
    axis = int(torch.randint(0, 3, (1,), generator=gen))
    thickness = int(torch.randint(THICK_SLICES[0], THICK_SLICES[1] + 1, (1,), generator=gen))
    return thick_slices(src, axis, thickness)


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
    scale = 1.0 + 0.1 * (float(torch.rand((), generator=gen)) - 0.5)
    shift = 0.1 * (float(torch.rand((), generator=gen)) - 0.5)
    src = np.clip((src + 1.0) * scale - 1.0 + shift, -1.0, 1.0).astype(np.float32)
    if level in ("mri", "scanner"):
        src, tgt, mask = _mri(src, tgt, mask, gen)
    if level == "scanner":
        src = _thick(src, gen)
    return src, tgt, mask
