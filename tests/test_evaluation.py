"""`evaluate_folders` end to end on tiny folders: report files, numbers, bad input, FID fallbacks; report figures."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import matplotlib.image as mpimg
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from modalsynth import fid as fidlib
from modalsynth.errors import UserError
from modalsynth.evaluation import EvaluationOptions, evaluate_folders
from modalsynth.report import centre_slice, figure4_montage, markdown_table, summarise, table1_markdown

from .conftest import REAL_DEV  # noqa: E402  (one place says where the real data lives)

AFFINE = np.diag([1.2, 1.0, 1.0, 1.0])
QUIET = EvaluationOptions(fid=False, figures=False, progress=False)
SHAPE = (20, 24, 22)


def head(seed: int) -> np.ndarray:
    """A smooth textured ellipsoid on a zero background, like a skull-stripped scan."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    inside = ((z - 10) / 8.5) ** 2 + ((y - 12) / 10) ** 2 + ((x - 11) / 9.5) ** 2 < 1
    texture = ndimage.gaussian_filter(rng.random(SHAPE), 1.2)
    return np.where(inside, 100 + 400 * texture, 0).astype(np.float32)


def save(array: np.ndarray, path: Path, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.float32), affine), str(path))


def make_folders(root: Path, subjects=("s1", "s2", "s3"), noise=30.0, lesion=True) -> tuple[Path, Path]:
    ref, pred = root / "ref", root / "pred"
    for i, subject in enumerate(subjects):
        t1 = head(i)
        save(t1, ref / subject / "t1.nii.gz")
        save(np.where(t1 > 0, 700 - t1, 0), ref / subject / "flair.nii.gz")
        if lesion:
            mask = np.zeros(SHAPE)
            mask[8:12, 10:14, 9:13] = 1
            save(mask, ref / subject / "lesion.nii.gz")
        rng = np.random.default_rng(100 + i)
        save(np.where(t1 > 0, t1 + noise * rng.standard_normal(SHAPE), 0), pred / subject / "t1.nii.gz")
    return pred, ref


def test_report_files_and_numbers(tmp_path, capsys):
    pred, ref = make_folders(tmp_path)
    out = tmp_path / "report"
    summary = evaluate_folders(pred, ref, "t1", out, EvaluationOptions(fid=False, progress=False))
    assert summary["subjects"] == ["s1", "s2", "s3"]
    for name in (
        "per_subject.csv",
        "summary.json",
        "summary.md",
        "figure4_axial.png",
        "figure4_coronal.png",
        "figure4_sagittal.png",
        "metric_distributions.png",
        "through_plane.png",
    ):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "per_subject.csv").open()))
    assert [r["subject"] for r in rows] == ["s1", "s2", "s3"]
    ssim_brain = [float(r["ssim_brain"]) for r in rows]
    assert summary["metrics"]["ssim_brain"]["mean"] == pytest.approx(np.mean(ssim_brain))
    assert summary["metrics"]["ssim_brain"]["median"] == pytest.approx(np.median(ssim_brain))
    assert summary["metrics"]["ssim_brain"]["sd"] == pytest.approx(np.std(ssim_brain, ddof=1))
    assert 0.2 < np.mean(ssim_brain) < 0.99  # noisy prediction: neither perfect nor unrelated
    assert summary["metrics"]["ssim_lesion"]["n"] == 3
    saved = json.loads((out / "summary.json").read_text())
    assert saved["fid"]["reason"].startswith("not requested")
    text = (out / "summary.md").read_text()
    assert text.index("SSIM 3D, brain") < text.index("SSIM 3D, whole volume")
    assert "SSIM 2D slice-averaged" in text
    assert "| SSIM 3D, brain |" in capsys.readouterr().out


def test_self_evaluation_is_perfect(tmp_path):
    _, ref = make_folders(tmp_path, lesion=False)
    summary = evaluate_folders(ref, ref, "t1", tmp_path / "out", QUIET)
    metrics = summary["metrics"]
    assert metrics["ssim_brain"]["mean"] == pytest.approx(1.0) and metrics["ssim_volume"]["mean"] == pytest.approx(1.0)
    assert metrics["mae_brain"]["mean"] == 0.0 and metrics["rmse_volume"]["mean"] == 0.0
    assert metrics["psnr_brain"]["mean"] == math.inf
    assert metrics["ssim_lesion"]["n"] == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["metrics"]["psnr_brain"]["mean"] == "inf"


def test_report_carries_calibration_and_tissue_agreement(tmp_path):
    pred, ref = make_folders(tmp_path)
    washed = tmp_path / "washed"
    for subject in ("s1", "s2", "s3"):  # the brain's upper half pushed to the top of the range: washed out
        t1 = nib.load(str(ref / subject / "t1.nii.gz")).get_fdata()
        inside = t1 > 0
        save(np.where(inside, np.minimum(t1, np.median(t1[inside])), 0), washed / subject / "t1.nii.gz")
    out = tmp_path / "report"
    summary = evaluate_folders(washed, ref, "t1", out, QUIET)
    names = ("calibration_ratio", "tissue_dice_csf", "tissue_dice_gm", "tissue_dice_wm")
    saved = json.loads((out / "summary.json").read_text())
    rows = list(csv.DictReader((out / "per_subject.csv").open()))
    for name in names:
        assert saved["metrics"][name]["n"] == 3 and name in saved["metric_labels"]
        assert saved["metrics"][name]["median"] == pytest.approx(np.median([float(r[name]) for r in rows]))
    assert summary["metrics"]["calibration_ratio"]["median"] > 5  # about half the brain at 1 against the top 0.5 %
    assert 0 <= summary["metrics"]["tissue_dice_wm"]["mean"] < 1
    assert "calibration: share of brain >= 0.9" in (out / "summary.md").read_text()
    assert "Tissue agreement" in saved["protocol"]
    perfect = evaluate_folders(ref, ref, "t1", tmp_path / "self", QUIET)["metrics"]
    assert all(perfect[name]["mean"] == 1.0 for name in names)


def test_partial_overlap_evaluates_matches_and_lists_the_rest(tmp_path, capsys):
    pred, ref = make_folders(tmp_path)
    save(head(9), pred / "extra" / "t1.nii.gz")
    for f in (pred / "s2").iterdir():
        f.unlink()
    (pred / "s2").rmdir()
    summary = evaluate_folders(pred, ref, "t1", tmp_path / "out", QUIET)
    assert summary["subjects"] == ["s1", "s3"]
    assert summary["unmatched"] == {"missing_prediction": ["s2"], "missing_reference": ["extra"]}
    err = capsys.readouterr().err
    assert "s2" in err and "extra" in err
    assert "no prediction: s2" in (tmp_path / "out" / "summary.md").read_text()
    only = evaluate_folders(pred, ref, "t1", tmp_path / "o2", replace(QUIET, subjects=["s3", "s2"]))
    assert only["subjects"] == ["s3"]
    assert only["unmatched"] == {"missing_prediction": ["s2"], "missing_reference": []}


def test_bad_input_is_one_clear_user_error(tmp_path):
    pred, ref = make_folders(tmp_path, subjects=("s1",))
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    save(head(0), other / "zz" / "t1.nii.gz")
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    cases = [
        (lambda: None, empty, ref, "t1", "predictions folder is empty"),
        (lambda: None, pred, tmp_path / "nowhere", "t1", "references folder does not exist"),
        (lambda: None, pred, ref, "t2", "no t2 predictions"),
        (lambda: None, other, ref, "t1", "no subject has both a prediction and a reference"),
        (
            lambda: save(head(0)[:, :, :-2], pred / "s1" / "t1.nii.gz"),
            pred,
            ref,
            "t1",
            r"s1: grid \(20, 24, 20\) in .*t1.nii.gz but \(20, 24, 22\)",
        ),
        (
            lambda: save(head(0), pred / "s1" / "t1.nii.gz", shifted),
            pred,
            ref,
            "t1",
            r"s1: affines of .* differ by up to",
        ),
    ]
    for prepare, pred_dir, ref_dir, target, message in cases:
        prepare()
        with pytest.raises(UserError, match=message) as caught:
            evaluate_folders(pred_dir, ref_dir, target, tmp_path / "o", EvaluationOptions(fid=False, figures=False))
        assert "\n" not in str(caught.value)


def test_each_file_is_read_once_and_a_late_bad_file_leaves_no_report(tmp_path, monkeypatch):
    from modalsynth import evaluation

    pred, ref = make_folders(tmp_path, subjects=("s1", "s2"))
    reads: list[str] = []
    real_load = evaluation.load_volume
    monkeypatch.setattr(evaluation, "load_volume", lambda path, **kw: reads.append(str(path)) or real_load(path, **kw))
    evaluate_folders(pred, ref, "t1", tmp_path / "out", replace(QUIET, source="flair"))
    files = sorted(str(f) for f in (*pred.rglob("*.nii.gz"), *ref.rglob("*.nii.gz")))
    assert sorted(reads) == files  # prediction, reference, lesion and source of each subject, each once
    broken = head(1)
    broken[5, 5, 5] = np.nan  # a voxel-level problem, seen only when the voxels are read
    save(broken, pred / "s2" / "t1.nii.gz")
    with pytest.raises(UserError, match=r"s2/t1.nii.gz: 1 voxel\(s\) are NaN"):
        evaluate_folders(pred, ref, "t1", tmp_path / "late", QUIET)
    assert not (tmp_path / "late").exists()


def test_brasyn_columns_are_the_challenge_scores_of_the_stored_volumes(tmp_path):
    from modalsynth.metrics import BRASYN_LABELS, brasyn_metrics

    pred, ref = make_folders(tmp_path, subjects=("s1",))
    summary = evaluate_folders(pred, ref, "t1", tmp_path / "out", QUIET)
    row = next(csv.DictReader((tmp_path / "out" / "per_subject.csv").open()))
    volumes = [
        nib.load(str(d / "s1" / name)).get_fdata()
        for d, name in ((pred, "t1.nii.gz"), (ref, "t1.nii.gz"), (ref, "lesion.nii.gz"))
    ]
    expected = brasyn_metrics(*volumes)  # the stored (x, y, z) arrays: SSIM does not depend on the axis order
    for name, label in BRASYN_LABELS.items():
        assert float(row[name]) == pytest.approx(expected[name], abs=1e-9)
        assert summary["metrics"][name]["n"] == 1
        assert label in (tmp_path / "out" / "summary.md").read_text()
    assert expected["brasyn_ssim_tumour"] != pytest.approx(float(row["ssim_lesion"]), abs=1e-3)


def test_fid_unavailable_keeps_the_other_metrics(tmp_path, monkeypatch):
    pred, ref = make_folders(tmp_path, subjects=("s1",))
    monkeypatch.setattr(fidlib, "default_weights_path", lambda: None)
    summary = evaluate_folders(pred, ref, "t1", tmp_path / "out", replace(QUIET, fid=True))
    assert "not installed" in summary["fid"]["reason"]
    assert summary["metrics"]["ssim_brain"]["n"] == 1
    assert "FID, 2D slices | unavailable" in (tmp_path / "out" / "summary.md").read_text()


class MeanPool(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 3).flatten(1)


def test_fid_with_a_user_network(tmp_path):
    pred, ref = make_folders(tmp_path, subjects=("s1", "s2"))
    weights = tmp_path / "net.pt"
    torch.jit.save(torch.jit.script(MeanPool()), str(weights))
    options = EvaluationOptions(fid_weights=weights, fid_max_slices=3, figures=False, progress=False)
    summary = evaluate_folders(pred, ref, "t1", tmp_path / "out", options)
    axial, pooled = summary["fid"]["axial"], summary["fid"]["2.5d"]
    assert axial["n_pred_slices"] == 6 and pooled["n_pred_slices"] == 18
    assert "user-supplied" in axial["network"]
    assert "not a 3D FID" in (tmp_path / "out" / "summary.md").read_text()
    # the FID orders predictions: the references against themselves 0, noisy predictions above that, and five
    # times the noise clearly higher still (a wrong formula, or one side's features used twice, breaks this)
    same = evaluate_folders(ref, ref, "t1", tmp_path / "same", options)["fid"]
    noisier = evaluate_folders(
        make_folders(tmp_path / "noisier", ("s1", "s2"), noise=150.0)[0], ref, "t1", tmp_path / "out2", options
    )["fid"]
    for plane, entry in (("axial", axial), ("2.5d", pooled)):
        assert same[plane]["value"] == pytest.approx(0.0, abs=1e-9)
        assert entry["value"] > 1e-3
        assert noisier[plane]["value"] > 3 * entry["value"]


def test_montage_one_column_per_method(tmp_path):
    volume = np.zeros((16, 20, 24), np.float32)
    volume[4:12, 5:15, 6:18] = 1.0
    columns = {"real": volume, "method a": volume * 0.5, "method b": np.zeros_like(volume), "|error a|": volume * 0.25}
    png = figure4_montage(columns, tmp_path / "m.png", plane="coronal", row_labels=["s1"], spacing=(3.0, 1.0, 1.0))
    image = mpimg.imread(png)
    assert image.shape[1] > 2 * image.shape[0]  # one row, four columns
    with pytest.raises(ValueError):
        figure4_montage([], tmp_path / "none.png")


def test_centre_slice_cuts_through_a_lesion_mask():
    lesion = np.zeros((16, 20, 24), bool)
    lesion[10:13, 2:5, 17:22] = True  # off-centre: the montage must cut through it, not through the volume's middle
    assert [centre_slice(lesion, p) for p in ("axial", "coronal", "sagittal")] == [11, 3, 19]
    assert centre_slice(np.zeros((16, 20, 24), bool), "axial") == 8  # empty: the middle


def test_summary_skips_undefined_and_table_orders_brain_first():
    rows = [
        {"ssim_brain": 0.5, "ssim_lesion": math.nan, "ssim_volume": 0.9},
        {"ssim_brain": 0.7, "ssim_lesion": 0.2, "ssim_volume": 0.95},
    ]
    summary = summarise(rows, ["ssim_brain", "ssim_lesion", "ssim_volume"])
    assert summary["ssim_lesion"]["n"] == 1 and summary["ssim_lesion"]["mean"] == pytest.approx(0.2)
    assert summary["ssim_brain"]["sd"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    table = markdown_table(summary)
    assert table.index("brain") < table.index("whole volume")
    assert "0.6000 ± 0.1414" in table


def test_table1_bolds_the_contrast_ratio_closest_to_one():
    def row(method: str, ratio: float) -> dict:
        return {
            "method": method,
            "metrics": {"gw_contrast_ratio": {"mean": ratio, "sd": 0.1}},
            "fid": {},
            "train_steps": 1,
            "train_s": 1.0,
            "infer_s_per_volume": 1.0,
            "device": "cpu",
            "params": 1e6,
        }

    table = table1_markdown([row("washed", 0.6), row("close", 0.95), row("exaggerated", 1.2)], "1 step", 3)
    assert "grey/white contrast kept →1" in table
    assert "**0.950 ± 0.100**" in table and "**0.600" not in table and "**1.200" not in table


def _strided_copy(subject: str, root: Path) -> Path:
    """Every other voxel of a real subject (affine adjusted), to keep the smoke test fast."""
    for name in ("t1", "flair", "lesion"):
        img = nib.load(str(REAL_DEV / subject / f"{name}.nii.gz"))
        affine = img.affine.copy()
        affine[:3, :3] *= 2
        save(
            np.asarray(img.dataobj[::2, ::2, ::2], dtype=np.float32), root / "ref" / subject / f"{name}.nii.gz", affine
        )
    return root / "ref"


@pytest.mark.skipif(not REAL_DEV.exists(), reason="real-dev data absent")
def test_real_dev_self_is_perfect_and_flair_as_t1_scores_low(tmp_path):
    ref = _strided_copy("brats2018-case0", tmp_path)
    self_eval = evaluate_folders(ref, ref, "t1", tmp_path / "self", QUIET)["metrics"]
    assert self_eval["ssim_brain"]["mean"] == pytest.approx(1.0) and self_eval["mae_brain"]["mean"] == 0.0
    flair_pred = tmp_path / "flair_as_t1" / "brats2018-case0" / "t1.nii.gz"
    flair_pred.parent.mkdir(parents=True)
    flair_pred.symlink_to(ref / "brats2018-case0" / "flair.nii.gz")
    flair_dir = flair_pred.parent.parent
    wrong = evaluate_folders(flair_dir, ref, "t1", tmp_path / "flair", QUIET)["metrics"]
    assert wrong["ssim_brain"]["mean"] < 0.2
    assert wrong["ssim_volume"]["mean"] > wrong["ssim_brain"]["mean"] + 0.4  # the background inflation
