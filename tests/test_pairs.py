"""Pair discovery (folder, BIDS, CSV), grid checks and the deterministic split."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from modalsynth.data.pairs import discover_subjects, find_pairs, load_or_make_split, require_pairs, split_subjects
from modalsynth.errors import UserError
from modalsynth.io import load_volume

from .conftest import blob_volume


def _save(path, data=None, affine=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(
        nib.Nifti1Image(blob_volume() if data is None else data, np.eye(4) if affine is None else affine), str(path)
    )


def test_folder_layout_lists_missing_and_mismatched(tmp_path):
    _save(tmp_path / "a" / "flair.nii.gz")
    _save(tmp_path / "a" / "t1.nii.gz")
    _save(tmp_path / "a" / "lesion.nii.gz")
    _save(tmp_path / "b" / "FLAIR.nii.gz")  # no target
    _save(tmp_path / "c" / "flair.nii.gz")
    _save(tmp_path / "c" / "t1.nii.gz", blob_volume((20, 24, 30)))  # other shape
    _save(tmp_path / "d" / "flair.nii.gz")
    _save(tmp_path / "d" / "t1.nii.gz", affine=np.diag([1, 1, 1.01, 1]))  # affine off by 0.01 mm per voxel
    report = find_pairs(tmp_path, "flair", "t1")
    assert [p.subject for p in report.pairs] == ["a"]
    assert report.pairs[0].lesion.name == "lesion.nii.gz"
    assert "missing t1" in report.problems["b"]
    assert "(20, 24, 28)" in report.problems["c"] and "--resample-target" in report.problems["c"]
    assert "affines" in report.problems["d"]
    resampled = find_pairs(tmp_path, "flair", "t1", resample_target=True)
    assert {p.subject for p in resampled.pairs} == {"a", "c", "d"}
    assert [p.resample_target for p in resampled.pairs] == [False, True, True]


def test_bids_tree_with_sessions(tmp_path):
    _save(tmp_path / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz")
    _save(tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _save(tmp_path / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_FLAIR.nii.gz")
    _save(tmp_path / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_run-1_T1w.nii.gz")
    subjects = discover_subjects(tmp_path)
    assert set(subjects) == {"sub-01", "sub-02_ses-1"}
    assert set(subjects["sub-02_ses-1"]) == {"flair", "t1"}
    assert len(find_pairs(tmp_path, "FLAIR", "T1w").pairs) == 2


def test_csv_manifest_relative_paths(tmp_path):
    _save(tmp_path / "imgs" / "x_src.nii.gz")
    _save(tmp_path / "imgs" / "x_tgt.nii.gz")
    (tmp_path / "list.csv").write_text(
        "subject,source,target\nx,imgs/x_src.nii.gz,imgs/x_tgt.nii.gz\ny,imgs/nope.nii.gz,imgs/x_tgt.nii.gz\n"
    )
    report = find_pairs(tmp_path / "list.csv", "flair", "t1")
    assert [p.subject for p in report.pairs] == ["x"]
    assert "not found" in report.problems["y"]


def test_empty_folder_and_no_pairs_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no subjects found"):
        discover_subjects(tmp_path)
    _save(tmp_path / "a" / "flair.nii.gz")
    with pytest.raises(UserError, match="no subject in .* has a t1 file .found: flair.; choose --target"):
        require_pairs(tmp_path, "flair", "t1")


def test_require_pairs_refuses_a_data_set_with_any_unusable_subject(tmp_path):
    _save(tmp_path / "a" / "flair.nii.gz")
    _save(tmp_path / "a" / "t1.nii.gz")
    _save(tmp_path / "b" / "flair.nii.gz")
    assert [p.subject for p in find_pairs(tmp_path, "flair", "t1").pairs] == [
        "a"
    ]  # inspect still lists the usable ones
    with pytest.raises(UserError, match=r"subject b: .*b: missing t1 .*CSV manifest.*modalsynth inspect"):
        require_pairs(tmp_path, "flair", "t1")
    _save(tmp_path / "b" / "t1.nii.gz", np.full((20, 24, 28), np.nan, np.float32))  # header fine, voxels not
    assert len(find_pairs(tmp_path, "flair", "t1").pairs) == 2
    with pytest.raises(UserError, match=r"subject b: .*t1.nii.gz: .*NaN"):
        require_pairs(tmp_path, "flair", "t1")


def test_two_files_for_one_modality_are_named(tmp_path):
    anat = tmp_path / "sub-01" / "anat"
    _save(anat / "sub-01_FLAIR.nii.gz")
    _save(anat / "sub-01_run-1_T1w.nii.gz")
    _save(anat / "sub-01_run-2_T1w.nii.gz")
    _save(anat / "sub-01_run-1_T2w.nii.gz")
    _save(anat / "sub-01_run-2_T2w.nii.gz")
    assert set(discover_subjects(tmp_path, ("flair", "pd"))["sub-01"]) == {
        "flair",
        "t1",
        "t2",
    }  # t2/t1 runs not asked for
    with pytest.raises(
        UserError, match="sub-01 has 2 t1 files .sub-01_run-1_T1w.nii.gz, sub-01_run-2_T1w.nii.gz.; keep one"
    ):
        find_pairs(tmp_path, "flair", "t1")
    _save(tmp_path / "plain" / "x" / "flair.nii")
    _save(tmp_path / "plain" / "x" / "flair.nii.gz")
    with pytest.raises(UserError, match="x has 2 flair files .flair.nii, flair.nii.gz."):
        discover_subjects(tmp_path / "plain", ("flair",))


def test_a_folder_named_like_a_file_and_an_analyze_pair(tmp_path):
    (tmp_path / "flair.nii.gz").mkdir()
    with pytest.raises(UserError, match="folder named like a NIfTI file"):
        discover_subjects(tmp_path / "flair.nii.gz")
    (tmp_path / "s").mkdir()
    nib.save(nib.AnalyzeImage(blob_volume(), np.eye(4)), str(tmp_path / "s" / "flair.hdr"))
    _save(tmp_path / "s" / "t1.nii.gz")
    report = find_pairs(tmp_path, "flair", "t1")
    assert "Analyze" in report.problems["s"] and "flair.hdr" in report.problems["s"]


def test_split_is_deterministic_disjoint_and_reused(tmp_path):
    names = [f"s{i:02d}" for i in range(20)]
    split = split_subjects(names, seed=3)
    assert split == split_subjects(list(reversed(names)), seed=3)
    assert split != split_subjects(names, seed=4)
    assert sorted(sum(split.values(), [])) == names and (
        len(split["train"]),
        len(split["val"]),
        len(split["test"]),
    ) == (14, 3, 3)
    written = load_or_make_split(tmp_path, names, seed=3)
    assert json.loads((tmp_path / "split.json").read_text()) == written == split
    assert load_or_make_split(tmp_path, names, seed=99) == split  # the file wins over a new seed


def test_real_dev_pairs_load_on_matching_grids(real_dev):
    # eleven subjects: eight with a lesion mask, five with T2 (the data's SOURCES.md)
    pairs = require_pairs(real_dev, "flair", "t1")
    assert len(pairs) == 11
    for pair in pairs:
        src, tgt = load_volume(pair.sources[0]), load_volume(pair.target)
        assert src.shape == tgt.shape and np.allclose(src.affine, tgt.affine, atol=1e-3)
    assert sum(pair.lesion is not None for pair in pairs) == 8
    assert len(find_pairs(real_dev, "flair,t2", "t1").pairs) == 5


def test_csv_manifest_with_a_column_per_sequence_gives_several_sources(tmp_path):
    for name in ("flair", "t2", "t1", "seg"):
        _save(tmp_path / "imgs" / f"x_{name}.nii.gz")
    (tmp_path / "list.csv").write_text(
        "subject,FLAIR,T2w,T1w,lesion\nx,imgs/x_flair.nii.gz,imgs/x_t2.nii.gz,imgs/x_t1.nii.gz,imgs/x_seg.nii.gz\n"
    )
    (pair,) = require_pairs(tmp_path / "list.csv", "flair,t2", "t1")
    assert [p.name for p in pair.sources] == ["x_flair.nii.gz", "x_t2.nii.gz"]
    assert (pair.target.name, pair.lesion.name) == ("x_t1.nii.gz", "x_seg.nii.gz")


def test_a_generic_source_column_is_never_reused_as_a_second_source(tmp_path):
    _save(tmp_path / "imgs" / "x_src.nii.gz")
    _save(tmp_path / "imgs" / "x_tgt.nii.gz")
    (tmp_path / "list.csv").write_text("subject,source,target\nx,imgs/x_src.nii.gz,imgs/x_tgt.nii.gz\n")
    assert require_pairs(tmp_path / "list.csv", "flair", "t1")[0].sources[0].name == "x_src.nii.gz"
    with pytest.raises(UserError, match=r"--source t2: no subject in .*list.csv has a t2 file"):
        find_pairs(tmp_path / "list.csv", "flair,t2", "t1")
    (tmp_path / "one.csv").write_text("subject,flair,lesion\nx,imgs/x_src.nii.gz,imgs/x_tgt.nii.gz\n")
    with pytest.raises(UserError, match=r"one.csv: a manifest needs the header"):
        find_pairs(tmp_path / "one.csv", "flair", "t1")
