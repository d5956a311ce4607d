"""Metrics against independent references: scikit-image's SSIM and plain numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import structural_similarity

from modalsynth import metrics as M

from .conftest import REAL_DEV  # noqa: E402  (one place says where the real data lives)

SK = dict(data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=True)


def smooth_pair(shape=(22, 26, 24), noise=0.15, seed=0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.random(shape), 1.5)
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    return a, b


def test_ssim3d_matches_skimage_on_random_volumes():
    for seed in range(3):
        a, b = smooth_pair(seed=seed)
        mask = a > np.median(a)
        expected, full = structural_similarity(a, b, full=True, **SK)
        assert M.ssim3d(a, b) == pytest.approx(expected, abs=1e-4)
        assert M.ssim3d(a, b, mask=mask) == pytest.approx(full[mask].mean(), abs=1e-4)
        assert np.abs(M.ssim_map(a, b) - full).max() < 1e-8  # same formula, so equal to rounding


@pytest.mark.skipif(not REAL_DEV.exists(), reason="real-dev data absent")
def test_ssim3d_matches_skimage_on_real_volumes():
    import nibabel as nib

    box = (slice(90, 130), slice(100, 148), slice(60, 100))
    t1 = nib.load(str(REAL_DEV / "brats2018-case0" / "t1.nii.gz")).dataobj[box].astype(np.float64)
    flair = nib.load(str(REAL_DEV / "brats2018-case0" / "flair.nii.gz")).dataobj[box].astype(np.float64)
    brain = t1 > 0
    a, b = M.scale_to_unit(flair, brain), M.scale_to_unit(t1, brain)
    expected, full = structural_similarity(a, b, full=True, **SK)
    assert M.ssim3d(a, b) == pytest.approx(expected, abs=1e-4)
    assert M.ssim3d(a, b, mask=brain) == pytest.approx(full[brain].mean(), abs=1e-4)


def test_2d_ssim_per_plane_matches_skimage_slice_by_slice():
    a, b = smooth_pair(shape=(14, 18, 16), seed=4)
    mask = np.zeros(a.shape, bool)
    mask[3:11, 4:15, 2:13] = True
    for plane, axis in M.PLANE_AXES.items():
        results = [
            structural_similarity(np.take(a, i, axis), np.take(b, i, axis), full=True, **SK)
            for i in range(a.shape[axis])
        ]
        with_brain = [i for i in range(a.shape[axis]) if np.take(mask, i, axis).any()]
        assert M.ssim_slices2d(a, b, plane) == pytest.approx(np.mean([r[0] for r in results]), abs=1e-4)
        assert M.ssim_slices2d(a, b, plane, slice_mask=mask) == pytest.approx(
            np.mean([results[i][0] for i in with_brain]), abs=1e-4
        )
        full = np.stack([r[1] for r in results], axis=axis)
        assert M.ssim2d_masked(a, b, mask, plane) == pytest.approx(full[mask].mean(), abs=1e-4)


def test_mae_rmse_psnr_match_numpy_with_and_without_mask():
    a, b = smooth_pair(seed=1)
    mask = a > 0.4
    diff = a - b
    assert M.mae(a, b) == pytest.approx(np.abs(diff).mean())
    assert M.mae(a, b, mask) == pytest.approx(np.abs(diff[mask]).mean())
    assert M.rmse(a, b) == pytest.approx(np.sqrt((diff**2).mean()))
    assert M.rmse(a, b, mask) == pytest.approx(np.sqrt((diff[mask] ** 2).mean()))
    assert M.psnr(a, b) == pytest.approx(10 * np.log10(1.0 / (diff**2).mean()))
    assert M.psnr(a, b, mask) == pytest.approx(10 * np.log10(1.0 / (diff[mask] ** 2).mean()))
    assert M.psnr(a, b, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / (diff**2).mean()))
    assert M.psnr(a, a) == math.inf
    assert math.isnan(M.mae(a, b, np.zeros(a.shape, bool)))


def test_scale_to_unit_uses_brain_percentiles_only():
    rng = np.random.default_rng(2)
    volume = rng.normal(100, 10, (20, 20, 20))
    brain = np.zeros(volume.shape, bool)
    brain[4:16, 4:16, 4:16] = True
    volume[~brain] = 5000.0  # a bright outside must not move the range
    low, high = np.percentile(volume[brain], [0.5, 99.5])
    scaled = M.scale_to_unit(volume, brain)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    inside = volume[brain]
    middle = (inside > low) & (inside < high)
    assert np.allclose(scaled[brain][middle], (inside[middle] - low) / (high - low))
    assert np.all(scaled[~brain] == 1.0)  # clipped at the brain's 99.5 percentile


def test_subject_metrics_identity_regions_and_missing_lesion():
    a, b = smooth_pair(seed=3)
    brain = np.zeros(a.shape, bool)
    brain[3:-3, 3:-3, 3:-3] = True
    lesion = np.zeros(a.shape, bool)
    lesion[8:13, 9:14, 8:12] = True
    same = M.subject_metrics(a, a, brain, lesion, scale=False)
    assert same["ssim_brain"] == pytest.approx(1.0) and same["ssim_volume"] == pytest.approx(1.0)
    assert same["mae_brain"] == 0.0 and same["psnr_brain"] == math.inf
    result = M.subject_metrics(b, a, brain, lesion, scale=False)
    healthy = brain & ~lesion
    assert set(result) == set(M.METRIC_LABELS)
    assert result["ssim_lesion"] == pytest.approx(M.ssim3d(b, a, lesion))
    assert result["ssim_healthy"] == pytest.approx(M.ssim3d(b, a, healthy))
    assert result["mae_healthy"] == pytest.approx(M.mae(b, a, healthy))
    assert result["ssim_volume"] == pytest.approx(M.ssim3d(b, a))
    no_lesion = M.subject_metrics(b, a, brain, None, scale=False)
    assert math.isnan(no_lesion["ssim_lesion"]) and math.isnan(no_lesion["mae_healthy"])
    assert no_lesion["ssim_brain"] == pytest.approx(result["ssim_brain"])


def test_through_plane_numbers_flag_slice_stacking():
    rng = np.random.default_rng(5)
    ref = ndimage.gaussian_filter(rng.random((24, 28, 28)), 2.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    brain = np.ones(ref.shape, bool)
    stacked = np.clip(ref + rng.normal(0, 0.05, (24, 1, 1)), 0, 1)  # each axial slice shifted on its own
    smooth_noise = ndimage.gaussian_filter(rng.standard_normal(ref.shape), 2.0)
    smooth = np.clip(ref + smooth_noise * (0.05 / smooth_noise.std()), 0, 1)  # same error size, smooth in 3D
    s, t = M.through_plane_consistency(stacked, ref, brain), M.through_plane_consistency(smooth, ref, brain)
    assert s["gradz_ratio"] > 5 * t["gradz_ratio"]
    assert s["ssim2d_brain_coronal"] < s["ssim2d_brain_axial"] - 0.05
    profile = M.through_plane_profile(stacked, ref, brain)
    assert profile["gradz_error"].shape == (23,) and profile["inplane_error"].shape == (24,)
    assert np.nanmean(profile["gradz_error"]) > 5 * np.nanmean(profile["inplane_error"])
    assert M.through_plane_error_map(stacked, ref, brain).shape == (23, 28, 28)


def test_slice_jitter_sees_slice_offsets_and_ignores_a_smooth_drift():
    rng = np.random.default_rng(6)
    ref = ndimage.gaussian_filter(rng.random((24, 20, 20)), 2.0)
    brain = np.zeros(ref.shape, bool)
    brain[2:22, 3:17, 3:17] = True
    offsets = rng.normal(0, 0.02, (24, 1, 1))
    stacked = ref + offsets  # each axial slice shifted on its own: a slice-wise method's stripes
    drift = ref + np.linspace(0, 0.2, 24)[:, None, None]  # a larger error that changes smoothly along z
    inside = offsets[2:22, 0, 0]
    expected = np.mean(np.abs(np.diff(inside, 2))) / 2 * 1000  # the definition, by hand
    assert M.slice_jitter(stacked, ref, brain) == pytest.approx(expected)
    assert M.slice_jitter(drift, ref, brain) == pytest.approx(0.0, abs=1e-9)
    assert M.slice_jitter(ref, ref, brain) == 0.0
    assert math.isnan(M.slice_jitter(ref, ref, np.zeros(ref.shape, bool)))


def _three_tissues(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A blocky 'brain' of CSF (0.1), grey (0.5) and white matter (0.9) with a little noise, its mask and a lesion."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (6, 6, 6)).repeat(4, 0).repeat(4, 1).repeat(4, 2)
    ref = np.array([0.1, 0.5, 0.9])[labels] + rng.normal(0, 0.01, labels.shape)
    brain = np.ones(labels.shape, bool)
    lesion = np.zeros(labels.shape, bool)
    lesion[8:12, 8:12, 8:12] = True
    return ref, labels, brain, lesion


def test_gw_contrast_ratio_finds_the_classes_and_measures_the_kept_contrast():
    from skimage.filters import threshold_multiotsu

    ref, labels, brain, _ = _three_tissues()
    low, high = threshold_multiotsu(ref[brain], classes=3)
    middle, upper = M.tissue_classes(ref, brain)
    assert np.array_equal(middle, (ref > low) & (ref <= high)) and np.array_equal(upper, ref > high)
    assert np.mean(upper == (labels == 2)) > 0.999 and np.mean(middle == (labels == 1)) > 0.999
    assert M.gw_contrast_ratio(ref, ref, brain) == pytest.approx(1.0)
    # white matter drawn halfway to grey: after its percentile scaling the prediction's white-grey step is 1/3 of
    # its range; the reference's is 0.4 over its own (noisy) 0.5-99.5 percentile range
    washed = np.array([0.1, 0.5, 0.7])[labels]
    low_ref, high_ref = np.percentile(ref[brain], M.PERCENTILES)
    ratio = M.gw_contrast_ratio(M.scale_to_unit(washed, brain), M.scale_to_unit(ref, brain), brain)
    assert ratio == pytest.approx((1 / 3) / (0.4 / (high_ref - low_ref)), abs=0.005)
    inverted = np.array([0.1, 0.9, 0.5])[labels]  # grey brighter than white: the contrast has the wrong sign
    assert M.gw_contrast_ratio(inverted, ref, brain) < 0
    assert math.isnan(M.gw_contrast_ratio(ref, np.full(ref.shape, 0.3), brain))  # one level: no classes


def test_lesion_contrast_error_and_the_new_columns_of_subject_metrics():
    ref, labels, brain, lesion = _three_tissues(seed=1)
    ref[lesion] = 0.2  # a dark lesion, as a T1 shows it
    healthy = brain & ~lesion
    assert M.lesion_contrast_error(ref, ref, lesion, healthy) == pytest.approx(0.0)
    bright = ref.copy()
    bright[lesion] = 0.8  # drawn bright instead of dark
    expected = abs((0.8 - np.median(ref[healthy])) - (ref[lesion].mean() - np.median(ref[healthy])))
    assert M.lesion_contrast_error(bright, ref, lesion, healthy) == pytest.approx(expected)
    assert math.isnan(M.lesion_contrast_error(ref, ref, np.zeros_like(lesion), healthy))
    result = M.subject_metrics(bright, ref, brain, lesion, scale=False)
    assert result["lesion_contrast_error"] == pytest.approx(expected)
    assert result["gw_contrast_ratio"] == pytest.approx(M.gw_contrast_ratio(bright, ref, healthy))
    assert math.isnan(M.subject_metrics(bright, ref, brain, None, scale=False)["lesion_contrast_error"])


def test_calibration_ratio_by_hand_on_unit_volumes():
    brain = np.array([True] * 10 + [False] * 2)
    ref = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.0, 1.0])  # 1 of 10 brain voxels >= 0.9
    pred = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.89, 0.9, 0.95, 1.0, 0.0, 0.0])  # 3 of 10: 0.9 counts, 0.89 not
    assert M.bright_share(ref, brain) == pytest.approx(0.1) and M.bright_share(pred, brain) == pytest.approx(0.3)
    assert M.calibration_ratio(pred, ref, brain) == pytest.approx(3.0)
    assert M.calibration_ratio(ref, pred, brain) == pytest.approx(1 / 3)
    assert M.calibration_ratio(ref, ref, brain) == 1.0
    flat = M.scale_to_unit(np.full(brain.shape, 7.0), brain)  # a flat reference scales to zeros: no bright share
    assert math.isnan(M.calibration_ratio(pred, flat, brain))
    with pytest.raises(ValueError, match="empty"):
        M.bright_share(ref, np.zeros(brain.shape, bool))


def test_calibration_ratio_by_hand_after_the_protocols_scaling():
    # 200 brain voxels 0..199: 0.5/99.5 percentiles 0.995 and 198.005, so >= 0.9 after scaling means
    # x >= 0.995 + 0.9 * 197.01 = 178.304: the 21 voxels 179..199. The prediction saturates at 120: percentiles 0.995
    # and 120, threshold 0.995 + 0.9 * 119.005 = 108.0995: 109..119 and the 80 voxels at 120, 91 in all.
    real = np.arange(200.0)
    washed_out = np.minimum(real, 120.0)
    brain = np.ones(200, bool)
    ref, pred = M.scale_to_unit(real, brain), M.scale_to_unit(washed_out, brain)
    assert M.bright_share(ref, brain) == pytest.approx(21 / 200)
    assert M.bright_share(pred, brain) == pytest.approx(91 / 200)
    assert M.calibration_ratio(pred, ref, brain) == pytest.approx(91 / 21)


def test_tissue_dice_by_hand_each_volume_on_its_own_thresholds():
    brain = np.array([True] * 12 + [False] * 3)
    ref = np.array([0.1] * 4 + [0.5] * 4 + [0.9] * 4 + [0.0, 0.5, 1.0])  # CSF 0-3, grey 4-7, white 8-11
    # another intensity scale, one voxel of each boundary moved up: CSF 0-2, grey 3-6, white 7-11
    pred = np.array([0.0] * 3 + [0.25] * 4 + [1.0] * 5 + [0.3, 0.3, 0.3])
    assert M.tissue_map(ref, brain).tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [0] * 3
    assert M.tissue_map(pred, brain).tolist() == [1] * 3 + [2] * 4 + [3] * 5 + [0] * 3
    result = M.tissue_dice(pred, ref, brain)
    assert result == {
        "tissue_dice_csf": pytest.approx(2 * 3 / (3 + 4)),
        "tissue_dice_gm": pytest.approx(2 * 3 / (4 + 4)),
        "tissue_dice_wm": pytest.approx(2 * 4 / (5 + 4)),
    }
    assert M.tissue_dice(ref, ref, brain) == {f"tissue_dice_{name}": 1.0 for name in M.TISSUES}
    flat = np.full(ref.shape, 0.4)
    assert M.tissue_dice(flat, ref, brain) == {f"tissue_dice_{name}": 0.0 for name in M.TISSUES}
    assert all(math.isnan(v) for v in M.tissue_dice(ref, flat, brain).values())
    assert M.dice(np.array([1, 1, 0], bool), np.array([0, 1, 1], bool)) == pytest.approx(0.5)
    assert math.isnan(M.dice(np.zeros(3, bool), np.zeros(3, bool)))  # both classes empty: undefined


def test_subject_metrics_report_calibration_and_tissue_agreement():
    ref, labels, brain, lesion = _three_tissues(seed=2)
    same = M.subject_metrics(ref, ref, brain, lesion, scale=False)
    assert same["calibration_ratio"] == 1.0
    assert all(same[f"tissue_dice_{name}"] == 1.0 for name in M.TISSUES)
    washed = np.array([0.1, 0.9, 0.9])[labels]  # grey drawn as white: every grey voxel is bright, two classes left
    washed[0, 0, :2] = [0.5, 0.55]  # a few grey voxels keep three levels in the prediction
    result = M.subject_metrics(washed, ref, brain, lesion, scale=False)
    assert result["calibration_ratio"] == pytest.approx(M.calibration_ratio(washed, ref, brain))
    assert result["calibration_ratio"] > 1.5
    assert {k: result[k] for k in ("tissue_dice_csf", "tissue_dice_gm", "tissue_dice_wm")} == pytest.approx(
        M.tissue_dice(washed, ref, brain)
    )
    assert result["tissue_dice_csf"] > 0.99 and result["tissue_dice_gm"] < 0.1


def test_streak_ratio_sees_local_slice_streaks_that_in_plane_noise_hides_from_the_gradient_ratio():
    rng = np.random.default_rng(11)
    shape = (32, 40, 40)
    ref = ndimage.gaussian_filter(rng.random(shape), 2.0)
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    brain = np.zeros(shape, bool)
    brain[2:-2, 3:-3, 3:-3] = True
    # a 2D method: each axial slice's regional error drawn on its own, plus an in-plane checkerboard (same in every
    # slice) that adds in-plane gradient error only
    regional = ndimage.gaussian_filter(rng.standard_normal(shape), (0, 4, 4))
    regional *= 0.05 / regional.std()
    checker = 0.08 * (np.indices(shape[1:]).sum(0) % 2 - 0.5)
    stacked = ref + regional + checker[None]
    # a 3D method: an error of the same size, smooth along every axis
    smooth = ndimage.gaussian_filter(rng.standard_normal(shape), 4.0)
    smooth = ref + smooth * (0.05 / smooth.std())
    s, t = M.through_plane_consistency(stacked, ref, brain), M.through_plane_consistency(smooth, ref, brain)
    assert s["gradz_ratio"] < t["gradz_ratio"]  # the gradient ratio ranks the stack as the better one ...
    assert s["streak_ratio"] > 3 * t["streak_ratio"]  # ... the streak ratio sees its streaks
    assert 0.6 < t["streak_ratio"] < 1.6
    offsets = smooth + rng.normal(0, 0.05, (shape[0], 1, 1))  # and whole slices brighter or darker
    assert M.streak_ratio(offsets, ref, brain) > 3 * t["streak_ratio"]
    assert math.isnan(M.streak_ratio(ref, ref, brain)) and math.isnan(M.streak_ratio(ref, ref, np.zeros(shape, bool)))


def _challenge_ssim(gt: np.ndarray, prediction: np.ndarray, seg: np.ndarray) -> dict[str, float]:
    """The BraSyn organisers' scoring (hongweilibran/BraSyn ssim.py at ecdaf00) step by step on torch tensors, with
    torchmetrics' SSIM; its map is averaged without the 5-voxel border, as torchmetrics <= 1.4.1 (the 2023 and 2024
    challenges) did inside StructuralSimilarityIndexMeasure()."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    def percentile_clip(volume: torch.Tensor) -> torch.Tensor:
        v_min, v_max = np.percentile(volume, [0.5, 99.5])
        v_min = 0 if v_min < 0 else v_min
        return (torch.clip(volume, v_min, v_max) - v_min) / (v_max - v_min)

    def ssim(preds: torch.Tensor, target: torch.Tensor) -> float:
        _, full = structural_similarity_index_measure(preds, target, return_full_image=True)
        return float(full[..., 5:-5, 5:-5, 5:-5].mean())

    gt_t, pred_t = (percentile_clip(torch.from_numpy(v.astype(np.float32))[None, None]) for v in (gt, prediction))
    mask = torch.from_numpy(seg)[None, None]
    mask[mask > 0] = 1
    mask = mask.type(torch.int64)
    return {
        "brasyn_ssim_tumour": ssim(pred_t * mask, gt_t * mask),
        "brasyn_ssim_non_tumour": ssim(pred_t * (1 - mask), gt_t * (1 - mask)),
        "brasyn_ssim_whole": ssim(pred_t, gt_t),
    }


def test_brasyn_ssim_matches_the_challenge_script_with_torchmetrics():
    rng = np.random.default_rng(7)
    shape = (24, 28, 26)
    for seed in range(3):
        a, b = smooth_pair(shape=shape, noise=0.2, seed=seed)
        inside = np.zeros(shape, bool)
        inside[3:-3, 4:-4, 3:-3] = True  # a 'brain' on a zero background, with a negative outlier as scanners give
        gt = np.where(inside, 200 + 800 * a, 0.0)
        gt[0, 0, 0] = -50.0
        prediction = np.where(inside, 150 + 900 * b + 20 * rng.standard_normal(shape), 0.0)
        gt[17:21, 18:24, 15:21] += 3000  # a bright spot outside the tumour holds the top percentiles, so the
        prediction[17:21, 18:24, 15:21] += 2500  # tumour's data range is below 1 (torchmetrics' default range)
        seg = np.zeros(shape, np.int16)
        seg[9:15, 10:17, 8:14] = 2  # BraTS labels (1, 2, 4): any label > 0 is tumour
        seg[11:13, 12:15, 10:12] = 4
        ours = M.brasyn_metrics(prediction, gt, seg)
        expected = _challenge_ssim(gt, prediction, seg)
        assert set(ours) == set(M.BRASYN_LABELS)
        for name, value in expected.items():
            assert ours[name] == pytest.approx(value, abs=1e-4), name
        # the three regions score differently (a tumour mask that was ignored would not)
        assert len({round(v, 3) for v in ours.values()}) == 3
    assert math.isnan(M.brasyn_metrics(prediction, gt, None)["brasyn_ssim_tumour"])
    assert math.isnan(M.brasyn_metrics(prediction, gt, np.zeros(shape))["brasyn_ssim_non_tumour"])


def test_brasyn_ssim_map_is_torchmetrics_map_and_differs_from_skimage_at_the_border():
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = smooth_pair(seed=5)
    _, full = structural_similarity_index_measure(
        torch.from_numpy(b)[None, None], torch.from_numpy(a)[None, None], data_range=1.0, return_full_image=True
    )
    ours = M.ssim_map(b, a, 1.0, border="mirror", sample_covariance=False)
    assert np.abs(ours - full[0, 0].numpy()).max() < 1e-6
    assert np.abs(M.ssim_map(b, a, 1.0) - ours).max() > 1e-3  # skimage's borders and sample covariance differ


def test_brasyn_scale_uses_whole_volume_percentiles():
    rng = np.random.default_rng(3)
    volume = np.zeros((20, 20, 20))
    volume[5:15, 5:15, 5:15] = rng.normal(100, 10, (10, 10, 10))
    low, high = np.percentile(volume, [0.5, 99.5])  # background included, unlike scale_to_unit's brain percentiles
    assert low == 0.0
    scaled = M.brasyn_scale(volume)
    assert scaled.min() == 0.0 and scaled.max() == 1.0
    assert np.allclose(scaled[volume < high], volume[volume < high] / high)
    assert not np.allclose(scaled, M.scale_to_unit(volume, volume > 0))
    assert np.all(M.brasyn_scale(np.full((4, 4, 4), 3.0)) == 0.0)


def test_a_brain_region_left_as_background_does_not_rescale_the_rest():
    rng = np.random.default_rng(4)
    volume = rng.normal(100, 10, (20, 20, 20))
    brain = np.zeros(volume.shape, bool)
    brain[2:18, 2:18, 2:18] = True
    holed = volume.copy()
    holed[2:4, 2:18, 2:18] = 0.0  # 12 % of the brain left as background, as by a tighter skull-strip mask
    filled = brain.copy()
    filled[2:4] = False
    low, high = np.percentile(volume[filled], [0.5, 99.5])
    scaled = M.scale_to_unit(holed, brain)
    np.testing.assert_allclose(scaled[filled], np.clip((volume[filled] - low) / (high - low), 0, 1))
    assert np.all(scaled[2:4, 2:18, 2:18] == 0.0)  # the empty part is scored as dark where it lies
    assert np.all(M.scale_to_unit(np.zeros(volume.shape), brain) == 0.0)  # an empty prediction stays defined
