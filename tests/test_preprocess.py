"""Preprocessing onto the network grid and its exact inverse."""

from __future__ import annotations

import numpy as np
import pytest

from modalsynth.data.pairs import require_pairs
from modalsynth.data.preprocess import (
    PAPER_FOV_MM,
    PreprocessConfig,
    foreground_mask,
    postprocess,
    preprocess,
    to_zyx,
)
from modalsynth.io import Volume, load_volume

from .conftest import blob_volume

# stored axes: 0 = x pointing left, 1 = z pointing down, 2 = y pointing anterior
LPS_TILTED = np.array([[-1.0, 0, 0, 50], [0, 0, 1.5, -40], [0, -1.2, 0, 30], [0, 0, 0, 1]])


def _vol(data, affine=LPS_TILTED):
    import nibabel as nib

    return Volume(data.astype(np.float32), affine, nib.Nifti1Header())


def test_zyx_axes_follow_ras():
    data = np.zeros((4, 5, 6), np.float32)
    data[3, 0, 0] = 1
    zyx, _, affine = to_zyx(_vol(data))
    assert zyx.shape == (5, 6, 4)  # stored (x=4, z=5, y=6)
    ijk = np.argwhere(zyx == 1)[0]
    assert tuple(ijk) == (4, 0, 0)  # x flipped: stored index 3 of 4 is the right-most; z flipped: 0 of 5 is the top
    world = affine @ np.array([*ijk, 1.0])
    assert np.allclose(world, LPS_TILTED @ np.array([3, 0, 0, 1.0]))
    # the (z, y, x) array axes point superior, anterior and right
    assert affine[2, 0] > 0 and affine[1, 1] > 0 and affine[0, 2] > 0


@pytest.mark.parametrize("grid", ["auto", (16, 32, 24)])
def test_roundtrip_is_exact_without_resampling(grid):
    vol = _vol(blob_volume((22, 18, 26)), np.diag([-1.0, 1.0, 1.0, 1.0]))
    config = PreprocessConfig(grid=grid, spacing=(1.0, 1.0, 1.0), clip=False, depth=3)
    pre = preprocess(vol, config)
    if grid == "auto":
        assert all(s % 8 == 0 for s in pre.array.shape)
    else:
        assert pre.array.shape == grid
    back = postprocess(pre.array, pre.grid, pre.intensity, vol.header)
    kept = postprocess(np.ones_like(pre.array), pre.grid, pre.intensity).data > pre.intensity.low + 1e-3  # the window
    assert back.data.shape == vol.data.shape and np.allclose(back.affine, vol.affine)
    np.testing.assert_allclose(back.data[kept], vol.data[kept], atol=1e-3)
    assert foreground_mask(vol.data)[~kept].sum() == 0 or grid != "auto"  # auto never cuts into the head


def test_intensity_scaling_to_minus_one_one():
    vol = _vol(blob_volume())
    pre = preprocess(vol, PreprocessConfig(grid="auto", spacing=(1.0, 1.0, 1.0)))
    inside = pre.array[pre.mask]
    assert pre.array.min() >= -1 and pre.array.max() <= 1
    assert np.mean(inside <= -1 + 1e-6) == pytest.approx(0.005, abs=0.01)
    assert np.mean(inside >= 1 - 1e-6) == pytest.approx(0.005, abs=0.01)


def test_fixed_grid_covers_paper_field_of_view():
    vol = _vol(blob_volume((40, 40, 40)), np.diag([2.0, 2.0, 2.0, 1.0]))
    pre = preprocess(vol, PreprocessConfig(grid=(12, 24, 16)))
    assert pre.array.shape == (12, 24, 16)
    assert pre.grid.spacing == pytest.approx(tuple(f / g for f, g in zip(PAPER_FOV_MM, (12, 24, 16))))
    # the array's affine puts the head centre where it is in the input
    centre_in = vol.affine @ np.array([19.5, 19.5, 19.5, 1.0])
    fg = np.argwhere(pre.mask).mean(axis=0)
    centre_out = pre.grid.affine @ np.array([*fg, 1.0])
    assert np.allclose(centre_in[:3], centre_out[:3], atol=4.0)


def test_target_reuses_source_geometry():
    # the target's head sits 4 voxels further along stored axis 0 than the source's: planned on its own it would be
    # centred like the source; on the source's grid it must appear shifted by those 4 voxels, intensities rescaled
    head = blob_volume((22, 18, 26), seed=1)
    src_data, tgt_data = np.zeros((30, 18, 26), np.float32), np.zeros((30, 18, 26), np.float32)
    src_data[:22], tgt_data[4:26] = head, 3 * head
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored axis 0 points left: it becomes the (z, y, x) x axis, reversed
    config = PreprocessConfig(grid=(32, 24, 40), spacing=(1.0, 1.0, 1.0), clip=False)
    a = preprocess(_vol(src_data, affine), config)
    b = preprocess(_vol(tgt_data, affine), config, grid=a.grid)
    assert b.array.shape == a.array.shape == (32, 24, 40)
    np.testing.assert_allclose(b.array[..., :-4], a.array[..., 4:], atol=1e-5)
    assert not np.allclose(b.array, a.array)
    own = preprocess(_vol(tgt_data, affine), config)  # what ignoring the source's geometry would give
    assert own.grid.window_start != a.grid.window_start


@pytest.mark.slow
def test_real_dev_every_pair_roundtrips(real_dev):
    pairs = require_pairs(real_dev, "flair", "t1")
    assert len(pairs) == 11
    for pair in pairs:
        for path in (*pair.sources, pair.target):
            vol = load_volume(path)
            exact = preprocess(vol, PreprocessConfig(grid="auto", clip=False))
            back = postprocess(exact.array, exact.grid, exact.intensity, vol.header)
            fg = foreground_mask(vol.data)
            np.testing.assert_allclose(back.data[fg], vol.data[fg], atol=1e-3 * float(vol.data.max()))
            assert np.allclose(back.affine, vol.affine)


def test_real_dev_paper_grid_roundtrip_is_close(real_dev):
    # the paper's grid resamples to 3 x 0.8 x 0.8 mm: the round trip is close but not exact inside the brain
    pair = require_pairs(real_dev, "flair", "t1")[-1]
    vol = load_volume(pair.target)
    fg = foreground_mask(vol.data)
    paper = preprocess(vol, PreprocessConfig())
    assert paper.array.shape == (48, 288, 240) and paper.grid.spacing == pytest.approx((3.0, 0.8, 0.8))
    approx = postprocess(paper.array, paper.grid, paper.intensity)
    covered = fg & (approx.data > paper.intensity.low)
    assert covered.sum() > 0.8 * fg.sum()
    rel = np.abs(approx.data[covered] - vol.data[covered]).mean() / vol.data[fg].mean()
    assert rel < 0.15


@pytest.mark.parametrize("seed", range(4))
def test_foreground_mask_equals_opening_and_hole_filling_of_the_whole_array(seed):
    """The mask is computed inside its bounding box for speed; scipy on the whole array is the reference."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    array = np.zeros((30, 34, 28), np.float32)
    for _ in range(4):  # blobs with holes, thin bits that opening removes, some touching the array's border
        centre, radius = rng.integers(0, (30, 34, 28)), rng.integers(3, 9)
        zz, yy, xx = np.ogrid[:30, :34, :28]
        ball = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
        array[ball] = rng.uniform(0.5, 2.0)
        array[(zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= (radius // 3) ** 2] = 0.0
    array[rng.random(array.shape) < 0.01] = 3.0  # speckle
    expected = ndimage.binary_fill_holes(ndimage.binary_opening(array != 0, iterations=1))
    assert expected.any()
    np.testing.assert_array_equal(foreground_mask(array), expected)
