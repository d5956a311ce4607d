"""The command line: option parsing, `inspect` on files and folders, one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from modalsynth.cli import _grid_option, _join_triplets
from modalsynth.errors import UserError
from modalsynth.inspection import inspect_path

from .conftest import blob_volume


def _run(*args):
    return subprocess.run([sys.executable, "-m", "modalsynth", *args], capture_output=True, text=True)


def test_grid_parsing():
    assert _join_triplets(["train", "--grid", "48", "288", "240", "--steps", "3"]) == [
        "train",
        "--grid",
        "48 288 240",
        "--steps",
        "3",
    ]
    assert _grid_option("48 288 240") == (48, 288, 240)
    assert _grid_option("32x96x80") == (32, 96, 80)
    assert _grid_option("auto") == "auto"
    with pytest.raises(UserError, match="three positive integers"):
        _grid_option("48 288")
    with pytest.raises(UserError, match="--patch"):
        _grid_option("auto", name="--patch")


def _save(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def test_inspect_folder_lists_every_problem_and_exits_2(tmp_path, capsys):
    _save(tmp_path / "good" / "flair.nii.gz", blob_volume())
    _save(tmp_path / "good" / "t1.nii.gz", blob_volume(seed=1))
    _save(tmp_path / "lonely" / "flair.nii.gz", blob_volume())
    _save(tmp_path / "shifted" / "flair.nii.gz", blob_volume())
    _save(tmp_path / "shifted" / "t1.nii.gz", blob_volume((10, 10, 10)))
    _save(tmp_path / "nan" / "flair.nii.gz", np.full((6, 6, 6), np.nan, np.float32))
    _save(tmp_path / "nan" / "t1.nii.gz", blob_volume((6, 6, 6)))
    assert inspect_path(tmp_path) == 2
    text = capsys.readouterr().out
    assert "4 subject(s), 1 usable flair->t1 pair(s)" in text
    assert "missing t1" in text and "grid (20, 24, 28)" in text and "NaN or Inf" in text
    with pytest.raises(UserError, match="pass its parent folder"):
        inspect_path(tmp_path / "good")  # a subject folder, not a data folder


def test_inspect_file_and_folder_exit_codes(tmp_path):
    _save(tmp_path / "a" / "flair.nii.gz", blob_volume())
    _save(tmp_path / "a" / "t1.nii.gz", blob_volume(seed=2))
    ok = _run("inspect", str(tmp_path))
    assert ok.returncode == 0 and "1 usable" in ok.stdout
    one = _run("inspect", str(tmp_path / "a" / "t1.nii.gz"))
    assert one.returncode == 0 and "20 x 24 x 28" in one.stdout and "RAS" in one.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    run = _run("inspect", str(empty))
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "no subjects found" in run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_every_command_has_help_with_an_example():
    for command in ("simulate", "inspect", "train", "predict", "evaluate", "benchmark", "demo"):
        run = _run(command, "--help")
        assert run.returncode == 0 and "Example: modalsynth " + command in run.stdout, command


def test_help_shows_the_extras_to_install():
    """Rich markup would swallow `[strip]` and `[onnx]` in the install hints unless they are escaped."""
    for command, extra in (("strip", "modalsynth[strip]"), ("predict", "modalsynth[onnx]")):
        run = subprocess.run(
            [sys.executable, "-m", "modalsynth", command, "--help"],
            capture_output=True,
            text=True,
            env={**__import__("os").environ, "COLUMNS": "300"},
        )
        assert extra in run.stdout, run.stdout


def test_under_torchrun_only_rank_0_prints_the_error_and_every_rank_exits_2(tmp_path):
    import os

    missing = tmp_path / "nowhere.nii.gz"
    lines = {}
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
        argv = ["predict", "--input", str(missing), "--output", str(tmp_path / "t1.nii.gz")]
        run = subprocess.run([sys.executable, "-m", "modalsynth", *argv], capture_output=True, text=True, env=env)
        assert run.returncode == 2, run.stderr
        lines[rank] = run.stderr.strip().splitlines()
    assert len(lines[0]) == 1 and "nowhere.nii.gz" in lines[0][0] and lines[1] == []
