"""`modalsynth bids`: the derivatives, their sidecars and description, the official validator, reruns, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modalsynth import builtin
from modalsynth.bids_app import BidsOptions, bare_label, parse_anat_name, plan_jobs, run_bids, validate_dataset
from modalsynth.errors import UserError
from modalsynth.io import Volume

from .bids_tree import make_bids_tree

QUIET = BidsOptions(skip_bids_validation=True, report=False)


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_bids_tree(tmp_path_factory.mktemp("bids") / "raw")


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def _validator_errors(folder: Path) -> list[str] | None:
    errors = validate_dataset(folder)
    if errors is None:
        if os.environ.get("MODALSYNTH_REQUIRE_TOOLS"):
            pytest.fail("bids-validator-deno is not installed, and CI requires it: ./scripts/setup.sh --test")
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno; CI installs it)")
    return errors


def test_participant_level_writes_the_derivatives_and_a_rerun_writes_nothing(raw, tmp_path):
    out = raw / "derivatives" / "modalsynth"
    shutil.rmtree(out, ignore_errors=True)
    written = run_bids(raw, out, "participant", BidsOptions(skip_bids_validation=True))
    anat = [
        "sub-01/ses-1/anat/sub-01_ses-1_desc-synthetic_T1w",
        "sub-01/ses-2/anat/sub-01_ses-2_desc-synthetic_T1w",
        "sub-03/anat/sub-03_acq-ax_run-1_desc-synthetic_T1w",  # acq and run carried; sub-02 has a T1w already
    ]
    expected = {f"{a}{ext}" for a in anat for ext in (".nii.gz", ".json")}
    expected |= {"dataset_description.json", "README.md", ".bidsignore", "sub-01.html", "sub-03.html"}
    files = {f for f in _files(out) if (out / f).is_file() and not f.startswith(".modalsynth")}
    assert files == expected
    assert {p.relative_to(out).as_posix() for p in written} == expected

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "modalsynth" and description["GeneratedBy"][0]["CodeURL"]
    assert description["DatasetLinks"] == {"raw": "../.."}
    sidecar = json.loads((out / f"{anat[2]}.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-03/anat/sub-03_acq-ax_run-1_FLAIR.nii.gz"]  # the model reads FLAIR
    assert sidecar["SkullStripped"] is True  # the inputs are skull-stripped
    assert sidecar["Model"]["Name"] == "builtin:flair-t1"
    assert sidecar["Model"]["Sha256"] == builtin.MODELS["flair-t1"].sha256
    assert sidecar["Model"]["ModalsynthVersion"] and sidecar["Settings"]["skull_strip"] == "auto"
    assert sidecar["Settings"]["inference"]["overlap"] == pytest.approx(0.4)

    errors = _validator_errors(out)
    assert errors == [], errors

    before = _files(out)
    assert run_bids(raw, out, "participant", BidsOptions(skip_bids_validation=True)) == []
    assert _files(out) == before  # nothing new, nothing rewritten
    assert run_bids(raw, out, "group", QUIET) == [out / "index.html"]
    assert "sub-01.html" in (out / "index.html").read_text()


def test_labels_sessions_and_all_subjects_choose_the_jobs(raw, tmp_path):
    out = tmp_path / "out"
    one = plan_jobs(raw, out, ("flair",), "t1", BidsOptions(participant_labels=("sub-01",), session_labels=("2",)))
    assert [job.stem for job in one] == ["sub-01_ses-2"]
    same = plan_jobs(raw, out, ("flair",), "t1", BidsOptions(participant_labels=("01",), session_labels=("ses-2",)))
    assert [job.stem for job in same] == ["sub-01_ses-2"]
    every = plan_jobs(raw, out, ("flair", "t2"), "t1", BidsOptions(all_subjects=True))
    assert [job.stem for job in every] == ["sub-01_ses-1", "sub-01_ses-2", "sub-02", "sub-03_acq-ax_run-1"]
    assert every[2].reference.path.name == "sub-02_T1w.nii.gz"
    assert list(every[3].sources) == ["flair", "t2"]  # a two-source model takes the T2w of the same acquisition
    assert bare_label("sub-07", "sub") == "07" and bare_label("07", "sub") == "07"
    parsed = parse_anat_name(Path("sub-01_ses-1_acq-3d_rec-norm_run-2_FLAIR.nii.gz"))
    assert parsed.entities == {"sub": "01", "ses": "1", "acq": "3d", "rec": "norm", "run": "2"}
    assert parsed.suffix == "FLAIR" and parse_anat_name(Path("flair.nii.gz")) is None


def test_skull_stripping_writes_a_brain_mask_with_its_sidecar(raw, tmp_path, monkeypatch):
    import modalsynth.data.skullstrip as skullstrip

    # deepbet's pass stands aside for a threshold: what is tested is what the app writes when stripping ran
    monkeypatch.setattr(skullstrip, "brain_mask", lambda volume: np.asarray(volume.data) > 0)
    out = tmp_path / "strip"
    options = BidsOptions(participant_labels=("03",), skull_strip="always", skip_bids_validation=True, report=False)
    run_bids(raw, out, "participant", options)
    anat = out / "sub-03" / "anat"
    mask = anat / "sub-03_acq-ax_run-1_desc-brain_mask.nii.gz"
    assert mask.is_file() and (anat / "sub-03_acq-ax_run-1_desc-brain_mask.json").is_file()
    sidecar = json.loads((anat / "sub-03_acq-ax_run-1_desc-brain_mask.json").read_text())
    assert sidecar["Type"] == "Brain" and sidecar["Sources"][0].startswith("bids:raw:sub-03/anat/")
    synthetic = json.loads((anat / "sub-03_acq-ax_run-1_desc-synthetic_T1w.json").read_text())
    assert synthetic["SkullStripped"] is True
    # the default built-in gives a brain it stripped itself to its twin for raw scans, and the sidecar says so
    twin = builtin.MODELS["flair-t1-raw"]
    assert synthetic["Model"]["Name"] == "builtin:flair-t1-raw" and synthetic["Model"]["Sha256"] == twin.sha256
    assert json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]["raw"].startswith("file://")
    errors = _validator_errors(out)
    assert errors == [], errors


def test_bad_input_is_one_line(raw, tmp_path):
    with pytest.raises(UserError, match="not a BIDS dataset"):
        run_bids(tmp_path, tmp_path / "out", "participant", QUIET)
    with pytest.raises(UserError, match="no participant sub-09.*--participant-label"):
        run_bids(raw, tmp_path / "out", "participant", BidsOptions(participant_labels=("09",), report=False))
    for inside in (raw, raw / "sub-01" / "derivatives", raw / "derivatives", raw / "derivatives" / "a" / "b"):
        with pytest.raises(UserError, match="inside the BIDS dataset"):
            run_bids(raw, inside, "participant", QUIET)
    with pytest.raises(UserError, match="choose participant or group"):
        run_bids(raw, tmp_path / "out", "session", QUIET)
    with pytest.raises(UserError, match="run the participant level first"):
        run_bids(raw, tmp_path / "empty", "group", QUIET)
    run = subprocess.run(
        [sys.executable, "-m", "modalsynth", "bids", str(raw), str(raw / "sub-01"), "participant"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "inside the BIDS dataset" in run.stderr


def test_the_validator_on_the_raw_tree_runs_unless_skipped(raw, tmp_path):
    errors = _validator_errors(raw)
    assert errors == [], errors  # the test tree is valid BIDS, so the default check lets it through
    broken = tmp_path / "broken"
    shutil.copytree(raw, broken, ignore=shutil.ignore_patterns("derivatives"))
    shutil.copy(broken / "sub-02" / "anat" / "sub-02_T1w.nii.gz", broken / "sub-02" / "anat" / "sub-02_T1.nii.gz")
    with pytest.raises(UserError, match="the BIDS validator reports .*--skip-bids-validation"):
        run_bids(broken, tmp_path / "out", "participant", BidsOptions(report=False))


def test_a_second_source_on_another_grid_is_left_out(tmp_path, capsys):
    import nibabel as nib

    from modalsynth.bids_app import predict_job

    from .conftest import blob_volume

    seen: list[list[str]] = []

    @dataclasses.dataclass
    class Recorder:  # stands in for a FLAIR+T2 model: records which sources reach it
        skull: object = None
        align: object = None
        origin: object = None  # its model file, by which `predict_job` picks the record its sidecar names

        def predict_sources(self, volumes):
            seen.append(list(volumes))
            return next(iter(volumes.values()))

    raw = tmp_path / "raw"
    make_bids_tree(raw)
    anat = raw / "sub-04" / "anat"
    anat.mkdir(parents=True)
    for name, shape in (("FLAIR", (20, 24, 20)), ("T2w", (20, 24, 22))):
        nib.save(nib.Nifti1Image(blob_volume(shape), np.eye(4)), str(anat / f"sub-04_{name}.nii.gz"))
    sub03, sub04 = plan_jobs(raw, tmp_path / "out", ("flair", "t2"), "t1", BidsOptions(participant_labels=("03", "04")))
    model = Recorder()
    predict_job(model, sub03, raw, "t1", {None: {}}, {})
    assert seen[-1] == ["flair", "t2"]
    predict_job(model, sub04, raw, "t1", {None: {}}, {})
    assert seen[-1] == ["flair"] and "not on the grid" in capsys.readouterr().err
    sidecar = json.loads((tmp_path / "out" / "sub-04" / "anat" / "sub-04_desc-synthetic_T1w.json").read_text())
    assert sidecar["Sources"] == ["bids:raw:sub-04/anat/sub-04_FLAIR.nii.gz"]

    class OntoFirst:  # stands in for --register's Aligner: each other source resampled onto the first's grid
        def onto(self, first, others):
            self.moved = [o.path.name for o in others]
            return [Volume(np.zeros(first.shape, np.float32), first.affine, first.header, o.path) for o in others]

    model.align = aligner = OntoFirst()
    (sub04,) = plan_jobs(raw, tmp_path / "out2", ("flair", "t2"), "t1", BidsOptions(participant_labels=("04",)))
    predict_job(model, sub04, raw, "t1", {None: {}}, {})
    assert aligner.moved == ["sub-04_T2w.nii.gz"] and seen[-1] == ["flair", "t2"]
    sidecar = json.loads((tmp_path / "out2" / "sub-04" / "anat" / "sub-04_desc-synthetic_T1w.json").read_text())
    assert sidecar["Sources"][1] == "bids:raw:sub-04/anat/sub-04_T2w.nii.gz"


def test_labels_follow_the_option_as_in_other_bids_apps():
    from modalsynth.cli import _join_labels

    argv = ["bids", "ds", "out", "participant", "--participant-label", "01", "sub-02", "--all-subjects"]
    assert _join_labels(argv) == [
        "bids",
        "ds",
        "out",
        "participant",
        "--participant-label",
        "01 sub-02",
        "--all-subjects",
    ]
    argv = ["--debug", "bids", "ds", "out", "participant", "--checkpoint", "x", "--session-label", "1", "2"]
    assert _join_labels(argv)[-2:] == ["--session-label", "1 2"]
    assert _join_labels(["predict", "--input", "a", "b"]) == ["predict", "--input", "a", "b"]


def test_a_subject_page_keeps_the_sessions_of_earlier_runs(raw, tmp_path):
    out = tmp_path / "out"
    for session in ("1", "2"):
        run_bids(raw, out, "participant", BidsOptions(participant_labels=("01",), session_labels=(session,)))
    page = (out / "sub-01.html").read_text()
    assert "<h2>ses-1</h2>" in page and "<h2>ses-2</h2>" in page


def _bids_worker(rank: int, world: int, port: int, raw: str, out: str, tag: str) -> None:
    """One rank of a torchrun-style `bids` run; records the files it wrote."""
    import os

    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    options = BidsOptions(all_subjects=True, skip_bids_validation=True, report=False, device="cpu")
    written = run_bids(Path(raw), Path(out), "participant", options)
    Path(out, f".{tag}{rank}.json").write_text(json.dumps([str(p) for p in written]))


@pytest.mark.slow
def test_two_ranks_share_the_subjects_and_a_rerun_skips_them(raw, tmp_path):
    import socket

    import torch.multiprocessing as mp

    out = tmp_path / "out"
    for tag in ("first", "again"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_bids_worker, args=(2, port, str(raw), str(out), tag), nprocs=2, join=True)
    first = [{Path(p).name for p in json.loads((out / f".first{r}.json").read_text())} for r in range(2)]
    images = [{name for name in files if name.endswith("_T1w.nii.gz")} for files in first]
    assert images[0] == {"sub-01_ses-1_desc-synthetic_T1w.nii.gz", "sub-01_ses-2_desc-synthetic_T1w.nii.gz"} | {
        "sub-03_acq-ax_run-1_desc-synthetic_T1w.nii.gz"
    }
    assert images[1] == {"sub-02_desc-synthetic_T1w.nii.gz"}  # whole subjects per rank: sub-01, sub-03 | sub-02
    assert "dataset_description.json" in first[0] and "dataset_description.json" not in first[1]
    assert [json.loads((out / f".again{r}.json").read_text()) for r in range(2)] == [[], []]
