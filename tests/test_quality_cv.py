"""The quality protocol's fixed folds, recipes and table (benchmarks/quality_cv.py), without training."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "quality_cv.py"


@pytest.fixture(scope="module")
def qcv():
    spec = importlib.util.spec_from_file_location("quality_cv", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_cv"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["quality_cv"]


def _origin(subject: str) -> str:
    return subject[:9] if subject.startswith(("brats2018", "brats2023")) else subject


def test_four_fixed_folds_test_every_real_subject_once_balanced_by_origin(qcv):
    everyone = [s for fold in qcv.FOLDS for s in fold]
    assert len(qcv.FOLDS) == 4 and len(everyone) == len(set(everyone)) == 11
    assert set(everyone) == set(qcv.ORIGINS)
    per_fold = [Counter(_origin(s) for s in fold) for fold in qcv.FOLDS]
    assert sorted(c["brats2018"] for c in per_fold) == [1, 1, 2, 2]
    assert sorted(c["brats2023"] for c in per_fold) == [0, 1, 1, 1]
    assert sum(c["brats-brainles-case"] for c in per_fold) == 1 and sum(c["ms-patient07"] for c in per_fold) == 1
    splits = qcv.fold_splits()
    assert [s["fold"] for s in splits] == [0, 1, 2, 3]
    for split, fold in zip(splits, qcv.FOLDS):
        assert split["test"] == sorted(fold) and split["val"] == []
        assert sorted(split["train"] + split["test"]) == sorted(everyone)


def test_only_restricts_every_fold_and_drops_folds_left_empty(qcv):
    splits = qcv.fold_splits(only={"brats2018-case0", "brats2018-case2"})
    assert splits == [
        {"fold": 0, "train": ["brats2018-case2"], "val": [], "test": ["brats2018-case0"]},
        {"fold": 1, "train": ["brats2018-case0"], "val": [], "test": ["brats2018-case2"]},
    ]
    with pytest.raises(ValueError, match="two folds"):
        qcv.fold_splits((("a", "b"), ("b", "c")))


def test_user_text_names_subjects_by_origin(qcv):
    text = qcv.describe(list(qcv.FOLDS[3]))
    assert text == "BraTS 2018 case 5; the BrainLesion BraTS-style case; Ljubljana MS patient 07"
    assert not any(folder in text for folder in qcv.ORIGINS)


def test_recipes_v1_at_its_card_budget_a_yaml_with_its_own_and_overrides(qcv, tmp_path):
    v1 = qcv.resolve_recipe("v1")
    assert v1.config.name == "flair-t1-v1-recipe.yaml" and v1.config.is_file() and v1.budget == {"steps": 1565}
    shipped = qcv.resolve_recipe("v2")  # the shipped model's recipe: v1's plus the gradient term
    assert shipped.config.name == "flair-t1-recipe.yaml" and shipped.budget == {"steps": 1565}
    v1_settings = yaml.safe_load(v1.config.read_text())
    assert yaml.safe_load(shipped.config.read_text()) == {**v1_settings, "gradient_weight": 100}
    assert "1565 steps" in (Path(qcv.ROOT) / "src/modalsynth/builtin/flair-t1.md").read_text().replace(",", "")
    assert qcv.resolve_recipe("v1", steps=2).budget == {"steps": 2}
    v2 = tmp_path / "v2.yaml"
    v2.write_text("augment: mri\nminutes: 150\n")
    recipe = qcv.resolve_recipe(str(v2))
    assert recipe.name == "v2" and recipe.budget == {"minutes": 150}
    assert qcv.resolve_recipe(str(v2), minutes=1.5).budget == {"minutes": 1.5}
    v2.write_text("augment: mri\n")
    with pytest.raises(SystemExit, match="budget"):
        qcv.resolve_recipe(str(v2))
    with pytest.raises(SystemExit, match="neither a known recipe"):
        qcv.resolve_recipe("no-such-recipe")


def test_table_has_the_protocols_columns_and_the_folds_by_origin(qcv):
    metrics = {key: {"mean": 0.5, "sd": 0.1, "median": 0.5, "n": 2} for key, _, _ in qcv.COLUMNS}
    metrics["ssim_lesion"] = {"mean": None, "sd": None, "median": None, "n": 0}
    metrics["calibration_ratio"] = {"mean": 2.0, "sd": 1.0, "median": 1.75, "n": 2}
    per_subject = [{"subject": "a", "calibration_ratio": 1.5}, {"subject": "b", "calibration_ratio": 2.0}]
    row = {
        "recipe": "v1",
        "budget": "2 steps",
        "folds": [{"steps": 2}, {"steps": 2}],
        "metrics": metrics,
        "per_subject": per_subject,
    }
    text = qcv.table([row], qcv.fold_splits(only={"brats2018-case0", "brats2018-case2"}), only=True)
    header = next(line for line in text.splitlines() if line.startswith("| recipe"))
    for label in ("brain SSIM", "whole SSIM", "brain MAE", "PSNR", "lesion SSIM", "BraSyn", "calibration"):
        assert label in header
    assert "tissue Dice GM" in header and "tissue Dice WM" in header and "tissue Dice CSF" in header
    line = next(line for line in text.splitlines() if line.startswith("| v1"))
    assert "| 1.75 [1.50–2.00] |" in line and "| n/a |" in line and "0.5000 ± 0.1000" in line
    assert "fold 0: BraTS 2018 case 0" in text and "fold 1: BraTS 2018 case 2" in text


def test_each_set_of_folds_is_scored_on_its_own_test_subjects_only(qcv, tmp_path):
    protocol = qcv.Protocol(tmp_path / "data", tmp_path / "out", "cpu")
    recipe = qcv.resolve_recipe("v1")
    for subject in ("a", "b", "c"):  # predictions of three folds' subjects
        (protocol.predictions(recipe) / subject).mkdir(parents=True)
    two = protocol.view(recipe, [1, 0], ["a", "b"])
    assert sorted(p.name for p in two.iterdir()) == ["a", "b"] and (two / "a").resolve().name == "a"
    assert protocol.report(recipe, [0, 1]) != protocol.report(recipe, [0, 1, 2])
    assert protocol.view(recipe, [0, 1], ["a", "b"]) == two  # a rerun re-uses the links


def test_scored_with_picks_the_subjects_that_have_the_sequence_and_the_table_compares_each(qcv, tmp_path):
    for subject, files in {"a": ("flair", "t1", "t2"), "b": ("flair", "t1"), "c": ("flair", "t1", "t2")}.items():
        (tmp_path / subject).mkdir()
        for name in files:
            (tmp_path / subject / f"{name}.nii.gz").write_bytes(b"")
    assert qcv.subjects_with(tmp_path, "t2") == {"a", "c"}
    rows = [
        {"recipe": "v2", "per_subject": [{"subject": "a", "ssim_brain": 0.5}, {"subject": "c", "ssim_brain": 0.6}]},
        {
            "recipe": "flair-t2",
            "per_subject": [{"subject": "a", "ssim_brain": 0.55}, {"subject": "c", "ssim_brain": 0.58}],
        },
    ]
    text = qcv.by_subject(rows)
    assert "| a | 0.5000 | 0.5500 (+0.0500) |" in text and "| c | 0.6000 | 0.5800 (-0.0200) |" in text
    assert "flair-t2 is ahead of v2 on 1 of 2 subjects." in text


def test_a_reading_uses_its_recipes_runs_and_predicts_from_the_sources_named(qcv, tmp_path):
    reading = qcv.resolve_recipe("flair-t2@flair")
    assert reading.name == "flair-t2@flair" and reading.reads == "flair" and reading.trained_as == "flair-t2"
    assert reading.config == qcv.resolve_recipe("flair-t2").config and reading.budget == {"steps": 1565}
    protocol = qcv.Protocol(tmp_path, tmp_path / "out", "cpu")
    assert protocol.run_dir(reading, 2) == protocol.run_dir(qcv.resolve_recipe("flair-t2"), 2)
    assert protocol.predictions(reading) != protocol.predictions(qcv.resolve_recipe("flair-t2"))
    split = {"fold": 0, "train": ["b"], "val": [], "test": ["a"]}
    with pytest.raises(SystemExit, match="no finished flair-t2 run"):
        protocol.fold(reading, split)


def test_a_recipe_plus_simulated_subjects_trains_from_the_real_ones_and_its_own_simulated_ones(qcv, tmp_path):
    recipe = qcv.resolve_recipe("flair-t2+sim3")
    assert recipe.simulated == 3 and recipe.config == qcv.resolve_recipe("flair-t2").config
    assert recipe.trained_as == "flair-t2+sim3" and qcv.resolve_recipe("flair-t2+sim3@t2").simulated == 3
    with pytest.raises(SystemExit, match="NAME\\+simN"):
        qcv.resolve_recipe("flair-t2+simx")
    data = tmp_path / "data"
    for subject in ("a", "b"):
        (data / subject).mkdir(parents=True)
    protocol = qcv.Protocol(data, tmp_path / "out", "cpu")
    assert protocol.training_data(qcv.resolve_recipe("flair-t2")) == data  # no simulated subjects: the real folder
    simulated = protocol.out / "sim" / "flair-t2-t1-3"  # flair,t2 sources and the T1 target
    for k in range(3):  # as the simulator leaves them, so none is made again
        (simulated / f"sim-{k:03d}").mkdir(parents=True)
        (simulated / f"sim-{k:03d}" / "t1.nii.gz").write_bytes(b"")
    assert protocol.simulated(recipe) == simulated
    folder = protocol.training_data(recipe)
    assert sorted(p.name for p in folder.iterdir()) == ["a", "b", "sim-000", "sim-001", "sim-002"]
    assert (folder / "a").resolve() == (data / "a").resolve()
    assert protocol.training_data(recipe) == folder  # a rerun re-uses the links
