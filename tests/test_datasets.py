"""Preparing pairs for training: resampling a target on another grid, and the stateless per-step sampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from modalsynth.data.augment import augment_item
from modalsynth.data.datasets import make_batch, prepare_pair, sample_item, step_generator
from modalsynth.data.pairs import find_pairs
from modalsynth.data.preprocess import PreprocessConfig

from .conftest import blob_volume


def test_target_on_another_grid_is_resampled_onto_the_source(tmp_path):
    data = blob_volume((20, 24, 28))
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    (tmp_path / "s").mkdir()
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "s" / "flair.nii.gz"))
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -1.0, 19.0  # the same world positions, stored with the x axis reversed
    nib.save(nib.Nifti1Image(data[::-1].copy(), flipped), str(tmp_path / "s" / "t1.nii.gz"))
    assert "affines" in find_pairs(tmp_path, "flair", "t1").problems["s"]
    pair = find_pairs(tmp_path, "flair", "t1", resample_target=True).pairs[0]
    prepared = prepare_pair(pair, PreprocessConfig(grid="auto", spacing=(1.0, 1.0, 1.0), depth=2))
    np.testing.assert_allclose(prepared.target, prepared.source[0], atol=1e-4)


def _subject(shape=(8, 16, 16)):
    from modalsynth.data.datasets import PreparedSubject

    rng = np.random.default_rng(0)
    src = rng.uniform(-1, 1, shape).astype(np.float32)
    return PreparedSubject("x", src[None], -src, np.ones(shape, bool), None, None)


def test_sampling_depends_only_on_seed_and_step():
    subject = _subject()
    a = sample_item(subject, (4, 8, 8), "light", step_generator(0, 5))
    b = sample_item(subject, (4, 8, 8), "light", step_generator(0, 5))
    c = sample_item(subject, (4, 8, 8), "light", step_generator(0, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    src, tgt, _ = sample_item(subject, (4, 8, 8), "none", step_generator(0, 5))
    np.testing.assert_array_equal(tgt, -src[0])  # the patch is the same window of source and target


def test_batch_shapes():
    batch = make_batch([_subject(), _subject()], [0, 1], None, "none", step_generator(1, 0))
    assert batch["source"].shape == (2, 1, 8, 16, 16) and batch["mask"].dtype.is_floating_point


def test_mri_augmentation_is_reproducible_and_changes_the_source_not_the_target_intensities():
    rng = np.random.default_rng(1)
    src = rng.uniform(-1, 1, (24, 24, 24)).astype(np.float32)
    tgt = np.full_like(src, 0.3)  # a constant target: any geometric move leaves it 0.3, any intensity change would not
    mask = np.ones_like(src)
    runs = [[augment_item(src[None], tgt, mask, "mri", step_generator(0, s)) for s in range(12)] for _ in range(2)]
    assert all(np.array_equal(a, b) for x, y in zip(*runs) for a, b in zip(x, y))  # resumed runs draw the same
    for s, t, m in runs[0]:
        assert (
            s.shape == (1, *src.shape)
            and t.shape == m.shape == src.shape
            and s.dtype == t.dtype == m.dtype == np.float32
        )
        assert s.min() >= -1.0 and s.max() <= 1.0
        np.testing.assert_allclose(t, 0.3, atol=1e-5)
        assert set(np.unique(m)) <= {0.0, 1.0}
    light = [augment_item(src[None], tgt, mask, "light", step_generator(0, s))[0] for s in range(12)]
    mri = [item[0] for item in runs[0]]
    # beyond the light level's scale/shift (|change| <= 0.1 + flip), MONAI's bias field, gamma and noise move the source
    assert max(float(np.abs(a - b).max()) for a, b in zip(light, mri)) > 0.2
    none = augment_item(src, tgt, mask, "none", step_generator(0, 0))
    assert all(a is b for a, b in zip(none, (src, tgt, mask)))
    with pytest.raises(ValueError, match="'strong'"):  # a typo never falls back to some level silently
        augment_item(src, tgt, mask, "strong", step_generator(0, 0))


def test_bias_augmentation_shades_source_and_target_with_one_smooth_field():
    rng = np.random.default_rng(2)
    src = rng.uniform(-0.6, 0.2, (1, 20, 20, 20)).astype(np.float32)
    tgt = rng.uniform(-0.6, 0.2, (20, 20, 20)).astype(np.float32)
    src[..., :3], tgt[..., :3] = -1.0, -1.0  # air
    mask = np.ones_like(tgt)
    shaded = 0
    for step in range(10):
        light = augment_item(src, tgt, mask, "light", step_generator(0, step))
        bias = augment_item(src, tgt, mask, "bias", step_generator(0, step))
        np.testing.assert_array_equal(bias[2], light[2])  # no geometric change
        # in [0, 1] terms each voxel of source and target is multiplied by the same factor, air stays air
        source_factor, target_factor = ((b + 1.0) / (a + 1.0 + 1e-12) for a, b in zip(light[:2], bias[:2]))
        tissue = (light[1] > -1.0) & (light[0][0] > -1.0) & (bias[1] < 1.0) & (bias[0][0] < 1.0)  # unclipped
        np.testing.assert_allclose(source_factor[0][tissue], target_factor[tissue], rtol=1e-4)
        assert np.all(bias[0][light[0] == -1.0] == -1.0) and np.all(bias[1][light[1] == -1.0] == -1.0)
        if np.ptp(target_factor[tissue]) > 0.02:
            shaded += 1  # a field was drawn: it varies across the patch
    assert 5 <= shaded <= 10  # drawn with probability 0.8


def test_rim_augmentation_draws_a_dark_shell_around_the_brain_in_the_sources_only():
    src = np.full((2, 24, 24, 24), -1.0, np.float32)
    src[:, 6:18, 6:18, 6:18] = np.linspace(-0.8, 0.8, 12, dtype=np.float32)  # a brain in two sources, air around
    tgt, mask = src[0].copy(), np.ones((24, 24, 24), np.float32)
    brain = src[0] > -1.0
    grown = 0
    for step in range(20):
        light = augment_item(src, tgt, mask, "light", step_generator(0, step))
        rim = augment_item(src, tgt, mask, "rim", step_generator(0, step))
        np.testing.assert_array_equal(rim[1], light[1])  # the target keeps its background
        inside = np.broadcast_to(brain, src.shape)
        np.testing.assert_array_equal(rim[0][inside], light[0][inside])  # the brain is untouched
        shell = (rim[0][0] != light[0][0]) & ~brain
        if shell.any():
            grown += 1
            depth = ndimage.distance_transform_edt(~brain)[shell]
            assert depth.max() <= 4.0  # at most 4 voxels out
            for channel, light_channel in zip(rim[0], light[0]):
                low, high = np.percentile(light_channel[brain], (1.0, 10.0))
                assert low - 0.1 <= float(np.median(channel[shell])) <= high + 0.1  # dark: the brain's low decile
        else:
            np.testing.assert_array_equal(rim[0], light[0])
    assert 5 <= grown <= 15  # drawn half the time


def test_mri_augmentation_moves_source_target_and_mask_together():
    src = np.zeros((24, 24, 24), np.float32) - 1.0
    src[8:16, 8:16, 8:16] = 1.0  # a bright cube in source, target and mask alike
    tgt, mask = src.copy(), (src > 0).astype(np.float32)
    moved = 0
    for s in range(30):
        a, b, m = augment_item(src[None], tgt, mask, "mri", step_generator(3, s))
        a = a[0]
        if not np.array_equal(b, tgt) and not np.array_equal(b, tgt[..., ::-1]):
            moved += 1  # a rotation/scaling was drawn: the mask follows the target's cube
            assert np.mean((b > 0) == (m > 0.5)) > 0.99
            assert np.mean((a > 0) == (m > 0.5)) > 0.95
    assert moved > 0


def test_old_configs_with_a_yes_no_augment_still_load_and_unknown_levels_are_refused():
    from modalsynth.config import resolve_config
    from modalsynth.errors import UserError
    from modalsynth.methods import method_class

    assert resolve_config([("old.yaml", {"augment": True})], method_class).augment == "light"
    assert resolve_config([("old.yaml", {"augment": False})], method_class).augment == "none"
    with pytest.raises(UserError, match="setting augment should be one of none, light, bias, mri, rim, got 'strong'"):
        resolve_config([("run.yaml", {"augment": "strong"})], method_class)
