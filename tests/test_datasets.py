"""Preparing pairs for training: resampling a target on another grid, and the stateless per-step sampling."""

from __future__ import annotations

import nibabel as nib
import numpy as np

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
    np.testing.assert_allclose(prepared.target, prepared.source, atol=1e-4)


def _subject(shape=(8, 16, 16)):
    from modalsynth.data.datasets import PreparedSubject

    rng = np.random.default_rng(0)
    src = rng.uniform(-1, 1, shape).astype(np.float32)
    return PreparedSubject("x", src, -src, np.ones(shape, bool), None, None)


def test_sampling_depends_only_on_seed_and_step():
    subject = _subject()
    a = sample_item(subject, (4, 8, 8), True, step_generator(0, 5))
    b = sample_item(subject, (4, 8, 8), True, step_generator(0, 5))
    c = sample_item(subject, (4, 8, 8), True, step_generator(0, 6))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    src, tgt, _ = sample_item(subject, (4, 8, 8), False, step_generator(0, 5))
    np.testing.assert_array_equal(tgt, -src)  # the patch is the same window of source and target


def test_batch_shapes():
    batch = make_batch([_subject(), _subject()], [0, 1], None, False, step_generator(1, 0))
    assert batch["source"].shape == (2, 1, 8, 16, 16) and batch["mask"].dtype.is_floating_point
