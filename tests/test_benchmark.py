"""`modalsynth benchmark` on a tiny data set: Table 1 with all four rows, and --resume re-uses finished methods."""

from __future__ import annotations

import json

import pytest
import yaml

from modalsynth.benchmark import BenchmarkPlan, run_benchmark

from .conftest import TINY_GRID, TINY_MODEL

TINY_METHODS = {
    "gan3d": {"model": TINY_MODEL},
    "pix2pix2d": {"model": {"base_channels": 8, "depth": 3, "disc_channels": 8, "slices_per_step": 2}},
    "ddpm": {"model": {"channels": [8, 16, 16, 16], "num_head_channels": 8, "sample_steps": 2, "slices_per_step": 2}},
}


@pytest.mark.slow
def test_benchmark_writes_table_with_four_rows_and_resumes(tiny_sim, tmp_path, capsys):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(TINY_METHODS))
    out = tmp_path / "bench"
    kwargs = dict(
        methods=("lut", "gan3d", "pix2pix2d", "ddpm"),
        steps=2,
        grid=TINY_GRID,
        device="cpu",
        fid=False,
        config=config,
        timing_repeats=1,
    )
    table = run_benchmark(tiny_sim, out, BenchmarkPlan(**kwargs))
    assert [r["method"] for r in table["rows"]] == ["lut", "gan3d", "pix2pix2d", "ddpm"]
    markdown = (out / "table1.md").read_text()
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert [r.split("|")[1].strip() for r in rows] == ["lut", "gan3d", "pix2pix2d", "ddpm"]
    saved = json.loads((out / "table1.json").read_text())
    test_subjects = saved["split"]["test"]
    for row in saved["rows"]:
        assert row["test_subjects"] == test_subjects  # one split for every method
        assert row["train_steps"] == (0 if row["method"] == "lut" else 2)
        assert 0 < row["metrics"]["ssim_brain"]["mean"] <= 1 and row["infer_s_per_volume"] > 0
    assert {r["method"]: r["params"] > 0 for r in saved["rows"]} == {
        "lut": False,
        "gan3d": True,
        "pix2pix2d": True,
        "ddpm": True,
    }
    assert all((out / f"figure4_{p}.png").stat().st_size > 1000 for p in ("axial", "coronal", "sagittal"))
    capsys.readouterr()
    before = (out / "runs" / "gan3d" / "last.pt").stat().st_mtime_ns
    again = run_benchmark(tiny_sim, out, BenchmarkPlan(resume=True, **kwargs))
    assert (out / "runs" / "gan3d" / "last.pt").stat().st_mtime_ns == before  # not retrained
    assert "finished earlier" in capsys.readouterr().out
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in saved["rows"]]


def test_benchmark_cross_validation_tests_every_subject_once(tiny_sim, tmp_path):
    plan = BenchmarkPlan(methods=("lut",), folds=3, grid=TINY_GRID, device="cpu", fid=False, timing_repeats=1)
    table = run_benchmark(tiny_sim, tmp_path / "cv", plan)
    tests = [s for split in table["splits"] for s in split["test"]]
    subjects = sorted(p.name for p in tiny_sim.iterdir() if p.is_dir())
    assert sorted(tests) == subjects and len(tests) == len(set(tests))  # each subject tested exactly once
    for split in table["splits"]:
        assert not set(split["train"]) & set(split["test"]) and split["val"] == []
    row = table["rows"][0]
    assert sorted(r["subject"] for r in row["per_subject"]) == subjects and row["metrics"]["mae_brain"]["n"] == len(
        subjects
    )


def test_final_model_trains_on_every_subject(tiny_sim, tmp_path):
    from modalsynth.checkpoints import Checkpoint
    from modalsynth.training import train

    from .conftest import tiny_config

    train(tiny_config(method="lut", holdout="none", model={}), tiny_sim, tmp_path, progress=False)
    split = Checkpoint.load(tmp_path / "best.pt").split
    assert (
        split["val"] == []
        and split["test"] == []
        and len(split["train"]) == len([p for p in tiny_sim.iterdir() if p.is_dir()])
    )


def test_benchmark_resume_extends_a_shorter_budget_exactly(tiny_sim, tmp_path, capsys, monkeypatch):
    import torch

    import modalsynth.benchmark as benchmark
    from modalsynth.checkpoints import Checkpoint

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"gan3d": TINY_METHODS["gan3d"]}))
    kwargs = dict(methods=("gan3d",), grid=TINY_GRID, device="cpu", fid=False, config=config, timing_repeats=1, folds=2)
    run_benchmark(tiny_sim, tmp_path / "ext", BenchmarkPlan(steps=1, **kwargs))
    first_half_s = [
        Checkpoint.load(tmp_path / "ext" / "runs" / "gan3d" / f / "last.pt").elapsed_s for f in ("fold-0", "fold-1")
    ]
    capsys.readouterr()
    resumed, real_train = [], benchmark.train
    monkeypatch.setattr(benchmark, "train", lambda *a, **k: resumed.append(k.get("resume")) or real_train(*a, **k))
    extended = run_benchmark(tiny_sim, tmp_path / "ext", BenchmarkPlan(steps=2, resume=True, **kwargs))
    assert "continuing its runs" in capsys.readouterr().out and resumed == [True, True]  # each fold from its last.pt
    straight = run_benchmark(tiny_sim, tmp_path / "straight", BenchmarkPlan(steps=2, **kwargs))
    assert extended["rows"][0]["train_steps"] == straight["rows"][0]["train_steps"] == 2
    elapsed = [
        Checkpoint.load(tmp_path / "ext" / "runs" / "gan3d" / f / "last.pt").elapsed_s for f in ("fold-0", "fold-1")
    ]
    assert all(e > s for e, s in zip(elapsed, first_half_s))  # the time budget carried over the resume
    assert extended["rows"][0]["train_s"] == pytest.approx(sum(elapsed) / 2)  # both halves count, not the resumed one
    for fold in ("fold-0", "fold-1"):
        a = Checkpoint.load(tmp_path / "ext" / "runs" / "gan3d" / fold / "last.pt").state["nets"]["generator"]
        b = Checkpoint.load(tmp_path / "straight" / "runs" / "gan3d" / fold / "last.pt").state["nets"]["generator"]
        assert all(torch.equal(a[k], b[k]) for k in a)  # continued from step 1, not restarted
