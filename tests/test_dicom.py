"""DICOM folders as input: series generated with pydicom from a real-dev volume (at 2 mm, for speed), converted by
dcm2niix, picked by description and acquisition parameters; nothing identifying in what is written or printed, no
temporary files left; every bad folder one line and exit 2."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np
import pytest

from modalsynth.io import load_volume

from .test_settings import run_cli

pytest.importorskip("pydicom")
pytest.importorskip("dcm2niix")

from .dicom_maker import PATIENT, STUDY_DATE, downsampled, write_enhanced, write_report, write_series  # noqa: E402

SUBJECT = "brats2023-gli-00000"
SECRETS = [*PATIENT.values(), STUDY_DATE, "Doe", "General Hospital", "Smith", "ACC998877"]
FLAIR = {"tr_ms": 9000.0, "te_ms": 81.0, "ti_ms": 2500.0}
T2 = {"tr_ms": 5000.0, "te_ms": 96.0}


@pytest.fixture(scope="module")
def volumes():
    from .conftest import REAL_DEV

    if not REAL_DEV.is_dir():
        pytest.skip(f"real-dev data not found at {REAL_DEV}")
    return {name: downsampled(load_volume(REAL_DEV / SUBJECT / f"{name}.nii.gz")) for name in ("flair", "t2")}


def _leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("modalsynth-dicom-*")}


def _assert_anonymous(*texts: str, files: list[Path] = ()) -> None:
    for path in files:
        raw = path.read_bytes()
        raw = gzip.decompress(raw) if path.name.endswith(".gz") else raw
        texts = (*texts, raw.decode("latin-1"))
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, secret


def _world_corr(a, b) -> float:
    """Correlation of two volumes compared in world space (b resampled onto a's grid)."""
    from modalsynth.data.datasets import resample_like

    moved = resample_like(b, a)
    inside = (a.data > 0) | (moved.data > 0)
    return float(np.corrcoef(a.data[inside], moved.data[inside])[0, 1])


def test_a_single_series_folder_predicts_a_t1_on_the_series_grid_and_leaves_nothing(
    volumes, tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "dicom"
    write_series(volumes["flair"], folder, 3, "AX FLAIR", **FLAIR)
    before = _leftovers()
    code, out, err = run_cli(
        monkeypatch, capsys, "predict", "--input", str(folder), "--output", str(tmp_path / "t1.nii.gz")
    )
    assert code == 0, err
    assert "series 3 'AX FLAIR' (FLAIR)" in out and _leftovers() == before
    predicted = load_volume(tmp_path / "t1.nii.gz")
    assert predicted.shape == volumes["flair"].shape and np.allclose(predicted.spacing, 2.0)
    # the same prediction as from the NIfTI the series was made of, compared in world space (orientation kept)
    save = tmp_path / "flair.nii.gz"
    from modalsynth.io import save_volume

    save_volume(volumes["flair"], save)
    code, _, err = run_cli(
        monkeypatch, capsys, "predict", "--input", str(save), "--output", str(tmp_path / "ref.nii.gz")
    )
    assert code == 0, err
    assert _world_corr(load_volume(tmp_path / "ref.nii.gz"), predicted) > 0.98
    _assert_anonymous(out, err, files=[tmp_path / "t1.nii.gz"])


def test_a_multi_series_folder_picks_flair_by_description_and_parameters(volumes, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "session"
    write_series(volumes["flair"], folder / "a", 1, "localizer", 8.6, 4.0)
    write_series(volumes["t2"], folder / "b", 4, "t2_tse_tra", **T2)
    write_series(volumes["flair"], folder / "c", 5, "tirm_tra_dark-fluid", **FLAIR)  # Siemens' name for a FLAIR
    write_series(volumes["t2"], folder / "d", 6, "t2_tse_tra_MPR", **T2, image_type=("DERIVED", "SECONDARY", "MPR"))
    write_report(folder / "e")  # a non-image DICOM object mixed in
    code, out, err = run_cli(
        monkeypatch, capsys, "predict", "--input", str(folder), "--output", str(tmp_path / "t1.nii.gz")
    )
    assert code == 0, err
    assert "series 5 'tirm_tra_dark-fluid' (FLAIR) read as flair" in out
    assert load_volume(tmp_path / "t1.nii.gz").shape == volumes["flair"].shape
    _assert_anonymous(out, err, files=[tmp_path / "t1.nii.gz"])
    # inspect lists what it read; with two image series left it asks for one
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(folder))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--series" in err
    assert "4 't2_tse_tra' (T2)" in err and "5 'tirm_tra_dark-fluid' (FLAIR)" in err and "skipped: 1" in err
    assert "(localiser)" in err and "(derived)" in err
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(folder), "--series", "4")
    assert code == 0 and "120 x 120 x 78" in out, err
    _assert_anonymous(out, err)


def test_several_series_of_one_kind_ask_for_series_and_series_picks_one(volumes, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "session"
    write_series(volumes["flair"], folder, 7, "FLAIR ax", **FLAIR)
    write_series(downsampled(volumes["flair"], 1), folder, 8, "FLAIR ax repeat", **FLAIR)
    args = ["predict", "--input", str(folder), "--output", str(tmp_path / "t1.nii.gz")]
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "t1.nii.gz").exists()
    assert "2 image series for a FLAIR series" in err and "--series" in err
    code, out, err = run_cli(monkeypatch, capsys, *args, "--series", "8")
    assert code == 0 and "series 8 'FLAIR ax repeat'" in out, err


def test_an_enhanced_multi_frame_series_is_read(volumes, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "enhanced"
    write_enhanced(volumes["flair"], folder, 3, "FLAIR 3D", 4800.0, 300.0, 1650.0)
    code, out, err = run_cli(
        monkeypatch, capsys, "predict", "--input", str(folder), "--output", str(tmp_path / "t1.nii.gz")
    )
    assert code == 0, err
    predicted = load_volume(tmp_path / "t1.nii.gz")
    assert predicted.shape == volumes["flair"].shape
    from modalsynth.io import save_volume

    save_volume(volumes["flair"], tmp_path / "flair.nii.gz")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(tmp_path / "flair.nii.gz"),
        "--output",
        str(tmp_path / "r.nii.gz"),
    )
    assert _world_corr(load_volume(tmp_path / "r.nii.gz"), predicted) > 0.98


def test_bad_folders_are_one_line_errors_with_exit_2(volumes, tmp_path, monkeypatch, capsys):
    gap = tmp_path / "gap"
    write_series(volumes["flair"], gap, 4, "FLAIR", **FLAIR, skip=(30,))
    report_only = tmp_path / "report"
    write_report(report_only)
    before = _leftovers()
    for folder, expected in ((gap, "missing or unevenly spaced slices"), (report_only, "no image series")):
        code, out, err = run_cli(
            monkeypatch, capsys, "predict", "--input", str(folder), "--output", str(tmp_path / "t1.nii.gz")
        )
        assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
        assert not (tmp_path / "t1.nii.gz").exists() and _leftovers() == before  # the conversion is removed
        _assert_anonymous(out, err)
    code, _, err = run_cli(monkeypatch, capsys, "inspect", str(gap), "--series", "4")
    assert code == 2 and "missing or unevenly spaced slices" in err


def test_strip_reads_a_dicom_folder(volumes, tmp_path, monkeypatch, capsys):
    from modalsynth.data import skullstrip

    folder = tmp_path / "dicom"
    write_series(volumes["flair"], folder, 3, "FLAIR", **FLAIR)
    monkeypatch.setattr(skullstrip, "brain_mask", lambda volume: volume.data > 0)  # deepbet's part is tested elsewhere
    code, out, err = run_cli(monkeypatch, capsys, "strip", "--input", str(folder), "--mask", str(tmp_path / "m.nii.gz"))
    assert code == 0, err
    mask = load_volume(tmp_path / "m.nii.gz", allow_constant=True)
    assert mask.shape == volumes["flair"].shape and mask.data.max() == 1


def test_sequences_are_told_by_description_and_parameters_together():
    from modalsynth.data.dicom import kind_of

    assert kind_of({"SeriesDescription": "tirm_tra_dark-fluid", "RepetitionTime": 9, "EchoTime": 0.08}) == "flair"
    assert (
        kind_of({"SeriesDescription": "ax 2", "RepetitionTime": 9, "EchoTime": 0.08, "InversionTime": 2.5}) == "flair"
    )
    assert (
        kind_of({"SeriesDescription": "MPRAGE", "RepetitionTime": 2.3, "EchoTime": 0.003, "InversionTime": 0.9}) == "t1"
    )
    assert kind_of({"SeriesDescription": "t2_tse", "RepetitionTime": 5, "EchoTime": 0.1}) == "t2"
    assert kind_of({"SeriesDescription": "FLAIR", "RepetitionTime": 0.5, "EchoTime": 0.01}) is None  # they disagree
    assert kind_of({"SeriesDescription": "ep2d"}) is None


def test_a_missing_dcm2niix_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    import shutil
    import sys

    from modalsynth.data import dicom
    from modalsynth.errors import UserError

    write_report(tmp_path / "d")
    monkeypatch.setitem(sys.modules, "dcm2niix", None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"pip install 'modalsynth\[dicom\]'"):
        dicom.convert(tmp_path / "d", tmp_path / "work")


def test_the_folder_rule(tmp_path):
    from modalsynth.data.dicom import is_dicom_folder

    write_report(tmp_path / "dicom")
    assert is_dicom_folder(tmp_path / "dicom")
    (tmp_path / "dicom" / "flair.nii.gz").write_bytes(b"")  # any NIfTI file makes it a NIfTI data folder
    assert not is_dicom_folder(tmp_path / "dicom")
    assert not is_dicom_folder(tmp_path / "dicom" / "SR0001")


def test_flair_and_t2_of_one_session_register_and_predict_one_file(volumes, tmp_path, monkeypatch, capsys):
    pytest.importorskip("SimpleITK")
    from .test_register import moved

    t2_moved, _ = moved(volumes["t2"])  # the head moved before the T2, acquired on a grid of its own
    folder = tmp_path / "session"
    write_series(volumes["flair"], folder, 5, "tirm_tra_dark-fluid", **FLAIR)
    write_series(t2_moved, folder, 6, "t2_tse_tra", **T2)
    model = _multi_model(tmp_path)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(model),
        "--input",
        str(folder),
        "--output",
        str(tmp_path / "t1.nii.gz"),
        "--source",
        "flair,t2",
        "--register",
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert "read as flair" in out and "read as t2" in out and "registered" in out
    assert load_volume(tmp_path / "t1.nii.gz").shape == volumes["flair"].shape
    _assert_anonymous(out, err, files=[tmp_path / "t1.nii.gz"])


def _multi_model(tmp_path: Path) -> Path:
    """A 3-step FLAIR + T2 -> T1 gan3d run on simulated subjects (tiny grid)."""
    import yaml
    from typer.testing import CliRunner

    from modalsynth.cli import app
    from modalsynth.data.simulate import simulate_dataset

    from .conftest import TINY_GRID, TINY_MODEL

    simulate_dataset(tmp_path / "sim", subjects=2, seed=3, grid=TINY_GRID, sequences=("flair", "t1", "t2"))
    settings = tmp_path / "settings.yaml"
    settings.write_text(yaml.safe_dump({"model": TINY_MODEL, "patch": None, "log_every": 1000}))
    args = ["train", "--data", str(tmp_path / "sim"), "--source", "flair,t2", "--target", "t1", "--out"]
    args += [str(tmp_path / "run"), "--steps", "2", "--grid", "x".join(map(str, TINY_GRID)), "--holdout", "none"]
    result = CliRunner().invoke(app, [*args, "--device", "cpu", "--config", str(settings), "--workers", "0"])
    assert result.exit_code == 0, result.output
    return tmp_path / "run" / "best.pt"


def test_a_jpeg_2000_series_reads_as_the_uncompressed_one(volumes, tmp_path):
    from PIL import features

    from modalsynth.data import dicom

    if not features.check("jpg_2000"):
        pytest.skip("this Pillow cannot write JPEG 2000")

    write_series(volumes["flair"], tmp_path / "plain", 3, "FLAIR", **FLAIR)
    write_series(volumes["flair"], tmp_path / "j2k", 3, "FLAIR", **FLAIR, jpeg2000=True)
    import pydicom

    stored = pydicom.dcmread(sorted((tmp_path / "j2k").iterdir())[0])
    assert stored.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless  # compressed indeed
    plain, j2k = (dicom.convert(tmp_path / name, tmp_path / f"work-{name}") for name in ("plain", "j2k"))
    assert len(plain) == len(j2k) == 1 and not j2k[0].skipped and j2k[0].kind == "flair"
    import nibabel as nib

    a, b = (nib.load(s[0].nifti) for s in (plain, j2k))
    assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj)) and np.allclose(a.affine, b.affine)
