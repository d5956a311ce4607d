"""Same-session registration (`--register`): a T2 moved by a known rigid motion and resampled onto its own grid is
brought back onto its FLAIR's grid (the recovered transform checked against the motion), in time; `predict --register`
on a subject folder gives what the unmoved pair gives; a failed or implausible registration is one line, exit 2, and
nothing is written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from modalsynth.io import Volume, load_volume, save_volume

from .conftest import TINY_GRID, TINY_MODEL
from .test_settings import run_cli

sitk = pytest.importorskip("SimpleITK")

from modalsynth.data import register  # noqa: E402  (after the skip: it needs SimpleITK at run time)

SUBJECT = "brats2023-gli-00000"  # one of the real subjects with a T2


def moved(volume: Volume, angle_deg: float = 5.0, shift_mm: float = 6.0) -> tuple[Volume, object]:
    """`volume`'s anatomy moved by a rigid motion (a rotation about an oblique axis through the grid's centre and a
    shift, in world space), resampled onto a new grid of its own (1.1 x 1.1 x 1.3 mm, turned 3 degrees, shifted)."""
    image = register.to_itk(volume)
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    shift = np.array([3.0, -4.0, 2.9])
    motion = sitk.VersorRigid3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    motion.SetRotation(axis.tolist(), float(np.radians(angle_deg)))
    motion.SetTranslation((shift * shift_mm / np.linalg.norm(shift)).tolist())
    c, s = np.cos(np.radians(3.0)), np.sin(np.radians(3.0))
    grid = np.eye(4)
    grid[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.1, 1.1, 1.3])
    grid[:3, :3] *= np.sign(np.diag(volume.affine[:3, :3]))
    grid[:3, 3] = volume.affine[:3, 3] + [4.0, -5.0, 6.0]
    reference = register.to_itk(Volume(np.zeros((220, 220, 120), np.float32), grid, volume.header))
    out = sitk.Resample(image, reference, motion.GetInverse(), sitk.sitkLinear, 0.0)
    data = np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose(2, 1, 0), dtype=np.float32)
    return Volume(data, grid, volume.header.copy()), motion


def transform_errors(found, motion, fixed: Volume) -> tuple[float, float]:
    """The largest distance (mm) between where `found` and `motion` take a brain voxel of `fixed`, and the angle
    (degrees) of the rotation between them."""
    image = register.to_itk(fixed)
    points = [image.TransformContinuousIndexToPhysicalPoint([float(x) for x in p]) for p in np.argwhere(fixed.data > 0)]
    found_matrix = np.asarray(found.GetMatrix()).reshape(3, 3)
    motion_matrix = np.asarray(motion.GetMatrix()).reshape(3, 3)
    found_points = np.array([found.TransformPoint(p) for p in points[::7]])
    true_points = np.array([motion.TransformPoint(p) for p in points[::7]])
    cos = (np.trace(found_matrix @ motion_matrix.T) - 1.0) / 2.0
    return float(np.linalg.norm(found_points - true_points, axis=1).max()), float(np.degrees(np.arccos(min(cos, 1.0))))


@pytest.fixture(scope="module")
def pair():
    from .conftest import REAL_DEV

    if not REAL_DEV.is_dir():
        pytest.skip(f"real-dev data not found at {REAL_DEV}")
    real = REAL_DEV / SUBJECT
    flair, t2 = load_volume(real / "flair.nii.gz"), load_volume(real / "t2.nii.gz")
    return flair, t2, *moved(t2)


@pytest.mark.slow
def test_a_known_motion_is_recovered_within_a_millimetre_and_a_degree_in_ten_seconds(pair, tmp_path):
    import time

    flair, t2, moving, motion = pair
    assert flair.shape == (240, 240, 155)
    start = time.perf_counter()
    found = register.register_rigid(flair, moving)
    seconds = time.perf_counter() - start
    displacement, rotation = transform_errors(found.transform(), motion, flair)
    assert displacement <= 1.0 and rotation <= 1.0, (displacement, rotation)
    assert seconds <= 10.0, seconds
    assert found.metric_after < found.metric_before and abs(found.rotation_deg - 5.0) < 1.0
    # the ITK transform file holds the same transform
    again = sitk.ReadTransform(str(found.save(tmp_path / "t2_to_flair.tfm")))
    assert transform_errors(again, motion, flair)[0] == pytest.approx(displacement, abs=1e-3)
    # the moved T2, brought back, matches the T2 as acquired inside the brain as well as the true motion brings it
    back = register.resample_onto(moving, flair, found)
    ideal = sitk.Resample(register.to_itk(moving), register.to_itk(flair), motion, sitk.sitkLinear, 0.0)
    ideal = sitk.GetArrayFromImage(ideal).transpose(2, 1, 0)
    brain = flair.data > 0
    assert back.shape == flair.shape and np.array_equal(back.affine, flair.affine)
    unregistered = sitk.Resample(register.to_itk(moving), register.to_itk(flair), sitk.Euler3DTransform())
    unregistered = sitk.GetArrayFromImage(unregistered).transpose(2, 1, 0)
    images = (back.data, ideal, unregistered)
    correlations = [np.corrcoef(image[brain], t2.data[brain])[0, 1] for image in images]
    assert correlations[1] - 0.02 <= correlations[0] and correlations[2] < correlations[0] - 0.1, correlations


@pytest.fixture(scope="module")
def multi_model(tmp_path_factory):
    """A 3-step gan3d FLAIR + T2 -> T1 run on simulated subjects (tiny grid)."""
    import yaml
    from typer.testing import CliRunner

    from modalsynth.cli import app
    from modalsynth.data.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("multi")
    simulate_dataset(root / "data", subjects=3, seed=3, grid=TINY_GRID, sequences=("flair", "t1", "t2"))
    settings = root / "settings.yaml"
    settings.write_text(yaml.safe_dump({"model": TINY_MODEL, "patch": None, "log_every": 1000}))
    grid = "x".join(map(str, TINY_GRID))
    args = ["train", "--data", str(root / "data"), "--source", "flair,t2", "--target", "t1", "--out", str(root / "run")]
    args += ["--steps", "3", "--grid", grid, "--holdout", "none", "--device", "cpu", "--config", str(settings)]
    result = CliRunner().invoke(app, [*args, "--workers", "0"])
    assert result.exit_code == 0, result.output
    return root / "run" / "best.pt"


@pytest.mark.slow
def test_predict_with_register_gives_what_the_unmoved_pair_gives(
    pair, multi_model, real_dev, tmp_path, monkeypatch, capsys
):
    from modalsynth.metrics import scale_to_unit, ssim3d

    flair, t2, moving, motion = pair
    for name, t2_volume in (("unmoved", t2), ("moved", moving)):
        folder = tmp_path / name / SUBJECT
        folder.mkdir(parents=True)
        shutil.copy(real_dev / SUBJECT / "flair.nii.gz", folder / "flair.nii.gz")
        save_volume(t2_volume, folder / "t2.nii.gz")
    common = ["--checkpoint", str(multi_model), "--source", "flair,t2", "--device", "cpu", "--skull-strip", "never"]
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(tmp_path / "unmoved" / SUBJECT),
        "--output",
        str(tmp_path / "out-unmoved"),
        *common,
    )
    assert code == 0, err
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(tmp_path / "moved" / SUBJECT),
        "--output",
        str(tmp_path / "out-moved"),
        *common,
        "--register",
        "--save-transform",
        str(tmp_path / "transforms"),
    )
    assert code == 0, err
    assert "registered" in out and "t2.nii.gz onto" in out and "Mattes MI" in out  # the log line says what was done
    assert f"wrote {tmp_path / 'transforms' / SUBJECT / 't2_to_flair.tfm'}" in out
    saved = sitk.ReadTransform(str(tmp_path / "transforms" / SUBJECT / "t2_to_flair.tfm"))
    displacement, rotation = transform_errors(saved, motion, flair)
    assert displacement <= 1.0 and rotation <= 1.0
    reference = load_volume(real_dev / SUBJECT / "t1.nii.gz").data
    brain = reference > 0
    scores = []
    for name in ("unmoved", "moved"):
        pred = load_volume(tmp_path / f"out-{name}" / SUBJECT / "t1.nii.gz").data
        assert pred.shape == flair.shape
        scores.append(ssim3d(scale_to_unit(pred, brain), scale_to_unit(reference, brain), brain))
    assert abs(scores[0] - scores[1]) <= 0.01, scores


def test_an_implausible_registration_is_one_line_naming_both_files_and_writes_nothing(
    tmp_path, monkeypatch, capsys, multi_model
):
    from modalsynth.data.simulate import SMALL_GRID, simulate_subject, write_subject

    folder = write_subject(simulate_subject(5, SMALL_GRID, sequences=("flair", "t1", "t2")), tmp_path / "data" / "s")
    t2 = load_volume(folder / "t2.nii.gz")
    shifted = t2.affine.copy()
    shifted[:3, 3] += [30.0, 0.0, 0.0]  # the T2's head 30 mm away: more than a head moves within one session
    save_volume(Volume(t2.data, shifted, t2.header), folder / "t2.nii.gz")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_model),
        "--input",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--source",
        "flair,t2",
        "--device",
        "cpu",
        "--register",
        "--save-transform",
        str(tmp_path / "transforms"),
    )
    errors = [line for line in err.splitlines() if "error" in line]  # the rest is the progress bar's
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: registering"), err
    assert "t2.nii.gz onto" in errors[0] and "flair.nii.gz" in errors[0] and "more than the 20 mm" in errors[0]
    assert not (tmp_path / "out" / "s").exists() and not (tmp_path / "transforms").exists()
    # without --register the grids are still refused, as before
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_model),
        "--input",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--source",
        "flair,t2",
        "--device",
        "cpu",
    )
    assert code == 2 and "register the sequences" in err


def test_a_missing_simpleitk_is_one_line_naming_the_extra(monkeypatch):
    import sys

    from modalsynth.errors import UserError

    monkeypatch.setitem(sys.modules, "SimpleITK", None)
    volume = Volume(np.ones((4, 4, 4), np.float32), np.eye(4), None)
    with pytest.raises(UserError, match=r"pip install 'modalsynth\[register\]'"):
        register.register_rigid(volume, volume)


def _rigid_ras(angle_deg: float, shift_mm: tuple[float, float, float], centre: np.ndarray) -> np.ndarray:
    """A 4x4 rigid motion in RAS mm: a turn about the z axis through `centre`, then a shift."""
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    motion = np.eye(4)
    motion[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    motion[:3, 3] = centre - motion[:3, :3] @ centre + np.asarray(shift_mm)
    return motion


def test_prepare_with_register_moves_target_and_its_mask_and_records_it(tmp_path, monkeypatch, capsys):
    import json

    from modalsynth.data.datasets import prepare_pair
    from modalsynth.data.pairs import Pair
    from modalsynth.data.preprocess import PreprocessConfig
    from modalsynth.data.simulate import SMALL_GRID, simulate_subject, write_subject

    subject = simulate_subject(5, SMALL_GRID)
    plain = write_subject(subject, tmp_path / "plain" / "s")
    (plain / "labels.nii.gz").rename(plain / "mask.nii.gz")  # the brain's labels as its mask
    folder = tmp_path / "data" / "s"
    folder.mkdir(parents=True)
    for name in ("flair", "t1", "mask"):
        shutil.copy(plain / f"{name}.nii.gz", folder / f"{name}.nii.gz")
    t1 = load_volume(plain / "t1.nii.gz")
    # the T1 (and the mask drawn on it) acquired after the head turned 4 degrees and moved 5 mm
    centre = (t1.affine @ np.append(np.array(t1.shape) / 2, 1.0))[:3]
    motion = _rigid_ras(4.0, (3.0, -4.0, 0.0), centre)
    for name in ("t1", "mask"):
        image = load_volume(plain / f"{name}.nii.gz", allow_constant=True)
        save_volume(Volume(image.data, motion @ image.affine, image.header), folder / f"{name}.nii.gz")
    config = PreprocessConfig(grid=SMALL_GRID, register=True)
    pair = Pair("s", (folder / "flair.nii.gz",), folder / "t1.nii.gz", mask=folder / "mask.nii.gz")
    moved = prepare_pair(pair, config)
    reference = prepare_pair(
        Pair("s", (plain / "flair.nii.gz",), plain / "t1.nii.gz", mask=plain / "mask.nii.gz"),
        PreprocessConfig(grid=SMALL_GRID),
    )
    (record,) = moved.registrations
    assert record["moving"].endswith("t1.nii.gz") and abs(record["rotation_deg"] - 4.0) < 0.5
    assert record["mattes_mi_after"] < record["mattes_mi_before"]
    # the target and its mask (nearest neighbour: still a mask) land where the unmoved ones are
    inside = reference.mask
    assert np.corrcoef(moved.target[inside], reference.target[inside])[0, 1] > 0.95
    assert (moved.mask != reference.mask).mean() < 0.01
    # the command line: without --register the grids are a problem; with it, the manifest records the transform
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "prepare",
        "--data",
        str(tmp_path / "data"),
        "--cache",
        str(tmp_path / "c0"),
        "--grid",
        "x".join(map(str, SMALL_GRID)),
    )
    assert code == 2 and "register" in err
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "prepare",
        "--data",
        str(tmp_path / "data"),
        "--cache",
        str(tmp_path / "cache"),
        "--grid",
        "x".join(map(str, SMALL_GRID)),
        "--register",
        "--workers",
        "1",
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["settings"]["preprocess"]["register"] is True
    (entry,) = manifest["subjects"]["s"]["registration"]
    assert abs(entry["rotation_deg"] - 4.0) < 0.5 and entry["moving"].endswith("t1.nii.gz")


def test_train_with_register_writes_what_it_did_beside_the_run(tmp_path, monkeypatch, capsys):
    import json

    from modalsynth.data.simulate import SMALL_GRID, simulate_subject, write_subject

    for index in range(2):
        folder = write_subject(simulate_subject(index, SMALL_GRID), tmp_path / "data" / f"s{index}")
        t1 = load_volume(folder / "t1.nii.gz")
        centre = (t1.affine @ np.append(np.array(t1.shape) / 2, 1.0))[:3]
        save_volume(
            Volume(t1.data, _rigid_ras(3.0, (2.0, 1.0, 0.0), centre) @ t1.affine, t1.header), folder / "t1.nii.gz"
        )
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "run"),
        "--steps",
        "1",
        "--grid",
        "x".join(map(str, SMALL_GRID)),
        "--holdout",
        "none",
        "--device",
        "cpu",
        "--register",
        "--workers",
        "0",
        "--init",
        "none",
        "--cache",
        str(tmp_path / "cache"),
    )
    assert code == 0, err
    assert "registered 2 image(s) of 2 subject(s)" in out
    records = json.loads((tmp_path / "run" / "registration.json").read_text())
    assert all(abs(r[0]["rotation_deg"] - 3.0) < 0.5 for r in records.values()) and len(records) == 2
