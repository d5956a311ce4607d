"""The built-in simulator: MR physics of the contrasts, labels that line up with the images, lesion T1 looks that
vary, reproducible bytes, correct NIfTI geometry and a data folder that refuses to overwrite foreign data."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from modalsynth.data.simulate import (
    FIELD_OF_VIEW_MM,
    PAPER_GRID,
    PAPER_SPACING,
    SMALL_GRID,
    grid_spacing,
    inversion_recovery,
    null_inversion_time,
    simulate_dataset,
    simulate_subject,
    spin_echo,
    subject_seed,
)
from modalsynth.errors import UserError

TINY_GRID = (16, 48, 40)
BACKGROUND, CSF, GM, WM, LESION = range(5)


@pytest.fixture(scope="module")
def subjects():
    """Three subjects on the small grid, shared by the physics tests."""
    return [simulate_subject(seed, SMALL_GRID) for seed in range(3)]


def _bias_flattened(image: np.ndarray, wm: np.ndarray, spacing) -> np.ndarray:
    """Divide by the local white-matter level (normalised convolution, 20 mm) to take out the bias field."""
    sigma = [20.0 / s for s in spacing]
    local = ndimage.gaussian_filter(image * wm, sigma) / np.maximum(ndimage.gaussian_filter(wm * 1.0, sigma), 1e-3)
    return image / np.maximum(local, 1e-3)


def _lesion_contrasts(subject, image: np.ndarray) -> list[float]:
    """Mean of each lesion (3+ voxels) over the mean of the white matter in a 2-voxel ring around it."""
    components, count = ndimage.label(subject.labels == LESION)
    contrasts = []
    for index in range(1, count + 1):
        lesion = components == index
        ring = ndimage.binary_dilation(lesion, iterations=2) & ~lesion & (subject.labels == WM)
        if lesion.sum() >= 3 and ring.sum() >= 5:
            contrasts.append(float(image[lesion].mean() / image[ring].mean()))
    return contrasts


def test_grids_cover_the_paper_field_of_view():
    assert grid_spacing(PAPER_GRID) == pytest.approx(PAPER_SPACING)
    assert all(n % 16 == 0 for n in SMALL_GRID)
    for grid in (SMALL_GRID, TINY_GRID):
        assert np.multiply(grid, grid_spacing(grid)) == pytest.approx(FIELD_OF_VIEW_MM)


def test_signal_equations():
    tr = 9000.0
    ti = null_inversion_time(4000.0, tr)
    assert inversion_recovery(1.0, 4000.0, 2000.0, tr, 100.0, ti) == pytest.approx(0.0, abs=1e-9)
    assert ti == pytest.approx(4000.0 * np.log(2.0), rel=0.2)
    # short TR spin echo: the shorter T1 (white matter) gives the brighter signal
    assert spin_echo(0.7, 830.0, 75.0, 500.0, 10.0) > spin_echo(0.8, 1330.0, 110.0, 500.0, 10.0)


def test_flair_nulls_csf_and_shows_lesions_bright(subjects):
    for subject in subjects:
        labels, flair = subject.labels, subject.flair
        wm = flair[labels == WM].mean()
        # CSF away from other tissue (label eroded by one voxel: mostly the ventricles); the CSF label as a whole
        # carries partial volume with the brighter grey matter at this coarse grid
        pure_csf = ndimage.binary_erosion(labels == CSF)
        assert pure_csf.sum() > 50
        assert flair[pure_csf].mean() < 0.2 * wm
        assert flair[labels == CSF].mean() < 0.6 * wm
        assert flair[labels == LESION].mean() > 1.2 * wm
        assert flair[labels == GM].mean() > 0.95 * wm  # grey matter is the brighter tissue on FLAIR


def test_t1_orders_white_grey_csf(subjects):
    for subject in subjects:
        means = [subject.t1[subject.labels == label].mean() for label in (WM, GM, CSF)]
        assert means[0] > 1.05 * means[1] > 1.05 * 1.3 * means[2], means


def test_every_lesion_is_brighter_than_its_white_matter_in_flair(subjects):
    contrasts = [c for subject in subjects for c in _lesion_contrasts(subject, subject.flair)]
    assert len(contrasts) >= 10
    assert min(contrasts) > 1.1


def test_brain_labels_match_where_the_image_rises_above_the_noise_floor(subjects):
    for subject in subjects:
        # the noise sigma from the background corners: Rayleigh mean = sigma sqrt(pi / 2)
        corners = np.concatenate([subject.t1[:, :4, :4].ravel(), subject.t1[:, -4:, -4:].ravel()])
        sigma = corners.mean() / np.sqrt(np.pi / 2)
        above = subject.t1 > 5 * sigma
        brain = subject.labels > BACKGROUND
        dice = 2 * (above & brain).sum() / (above.sum() + brain.sum())
        assert dice > 0.93
        assert subject.t1[subject.labels == BACKGROUND].mean() < 3 * sigma  # background is only noise
        np.testing.assert_array_equal(subject.lesion, (subject.labels == LESION).astype(np.uint8))


def test_lesion_t1_is_not_a_pointwise_function_of_flair(subjects):
    flair_lesion, t1_lesion, flair_wm, t1_wm = [], [], [], []
    for subject in subjects:
        wm = (subject.labels == WM).astype(np.float32)
        spacing = grid_spacing(SMALL_GRID)
        flair = _bias_flattened(subject.flair, wm, spacing)
        t1 = _bias_flattened(subject.t1, wm, spacing)
        lesion = subject.labels == LESION
        flair_lesion.append(flair[lesion]), t1_lesion.append(t1[lesion])
        flair_wm.append(flair[wm > 0]), t1_wm.append(t1[wm > 0])
    flair_lesion, t1_lesion, flair_wm, t1_wm = map(np.concatenate, (flair_lesion, t1_lesion, flair_wm, t1_wm))
    in_bin = np.abs(flair_lesion - np.median(flair_lesion)) < 0.1  # a narrow FLAIR bin of lesion voxels
    wm_bin = np.abs(flair_wm - 1.0) < 0.1  # the same width around white matter
    assert in_bin.sum() > 100
    assert t1_lesion[in_bin].std() > 1.5 * t1_wm[wm_bin].std()
    # per lesion: some are dark on T1 and some nearly invisible
    t1_contrasts = [c for subject in subjects for c in _lesion_contrasts(subject, subject.t1)]
    assert min(t1_contrasts) < 0.88 and max(t1_contrasts) > 0.97


def test_same_seed_same_subject_and_seeds_differ(subjects):
    again = simulate_subject(0, SMALL_GRID)
    for name in ("flair", "t1", "labels", "lesion"):
        np.testing.assert_array_equal(getattr(again, name), getattr(subjects[0], name))
    assert again.params == subjects[0].params
    other = subjects[1]
    assert np.abs(other.flair - subjects[0].flair).mean() > 10
    assert (other.labels != subjects[0].labels).mean() > 0.02  # different pose and deformation
    assert other.params["lesions"] != subjects[0].params["lesions"]


def test_dataset_files_are_reproducible_and_ras(tmp_path: Path, capsys):
    first = simulate_dataset(tmp_path / "a", subjects=2, seed=7, grid=TINY_GRID, progress=True)
    assert "simulate" in capsys.readouterr().err  # the tqdm bar
    second = simulate_dataset(tmp_path / "b", subjects=2, seed=7, grid=TINY_GRID)
    assert [p.name for p in first] == ["sim-000", "sim-001"]
    for a, b in zip(first, second):
        names = sorted(f.name for f in a.iterdir())
        assert {"flair.nii.gz", "t1.nii.gz", "labels.nii.gz", "lesion.nii.gz"} <= set(names)
        assert names == sorted(f.name for f in b.iterdir())
        for name in names:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name

    expected = simulate_subject(subject_seed(7, 1), TINY_GRID)
    for name in ("flair", "t1", "labels", "lesion"):
        img = nib.load(first[1] / f"{name}.nii.gz")
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert img.header.get_zooms() == pytest.approx(grid_spacing(TINY_GRID)[::-1])
        assert img.shape == TINY_GRID[::-1]
        data = np.asanyarray(nib.as_closest_canonical(img).dataobj).transpose(2, 1, 0)
        np.testing.assert_array_equal(data, getattr(expected, name))
    assert nib.load(first[1] / "labels.nii.gz").get_data_dtype() == np.uint8
    # subject 0 and 1 of one data set are different subjects
    assert (first[0] / "flair.nii.gz").read_bytes() != (first[1] / "flair.nii.gz").read_bytes()


def test_dataset_refuses_foreign_data_but_rewrites_its_own(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds"):
        simulate_dataset(foreign, subjects=1, grid=TINY_GRID)
    assert (foreign / "notes.txt").read_text() == "keep me"

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        simulate_dataset(a_file, subjects=1, grid=TINY_GRID)

    out = tmp_path / "sim"
    simulate_dataset(out, subjects=2, grid=TINY_GRID)
    (out / "sim-001" / "extra.nii.gz").write_bytes(b"not ours")
    with pytest.raises(UserError, match="did not write"):
        simulate_dataset(out, subjects=1, grid=TINY_GRID)
    (out / "sim-001" / "extra.nii.gz").unlink()
    simulate_dataset(out, subjects=1, grid=TINY_GRID)  # our own folder: rewritten, the stale subject removed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["sim-000"]


@pytest.mark.parametrize("grid", [(4, 48, 40), (16, 48)])
def test_bad_grid_is_a_user_error(grid, tmp_path: Path):
    with pytest.raises(UserError, match="grid"):
        simulate_dataset(tmp_path / "out", subjects=1, grid=grid)
