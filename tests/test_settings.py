"""Settings resolved once (config.py), resume conflicts, grid rules, the checkpoint schema and the one predictor."""

from __future__ import annotations

import sys

import pytest
import torch

from modalsynth import cli
from modalsynth.checkpoints import FORMAT_VERSION, Checkpoint
from modalsynth.config import resolve_config
from modalsynth.errors import UserError
from modalsynth.inference import Predictor
from modalsynth.io import load_volume
from modalsynth.methods import method_class
from modalsynth.training import train

from .conftest import TINY_GRID, TINY_MODEL, tiny_config

GRID = " ".join(map(str, TINY_GRID))


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run `modalsynth ARGS` in this process; returns (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["modalsynth", *args])
    code = 0
    try:
        cli.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny_run(tiny_sim, tmp_path_factory):
    """A 2-step gan3d run on the tiny data (shared by the tests that only read it)."""
    out = tmp_path_factory.mktemp("run")
    train(tiny_config(steps=2, val_every=2), tiny_sim, out, progress=False)
    return out


def test_grid_that_does_not_divide_is_refused_before_loading_with_the_nearest_sizes(tiny_sim, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("modalsynth.training.require_pairs", lambda *a, **k: pytest.fail("data loaded before the check"))
    code, _, err = run_cli(monkeypatch, capsys, "train", "--data", str(tiny_sim), "--out", str(tmp_path / "run"),
                           "--grid", "30", "96", "80", "--steps", "1", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--grid 30 96 80" in err and "divisible by 16 x 16 x 16" in err and "--grid 32 96 80" in err and "--grid 16 96 80" in err
    assert not (tmp_path / "run").exists()  # nothing made
    code, _, err = run_cli(monkeypatch, capsys, "train", "--data", str(tiny_sim), "--out", str(tmp_path / "run"),
                           "--patch", "20", "20", "20", "--steps", "1")
    assert code == 2 and "--patch 32 32 32" in err and "--patch 16 16 16" in err
    # 2D methods only constrain H and W; 30 slices are fine for pix2pix2d
    config = resolve_config([("t", {"method": "pix2pix2d", "preprocess": {"grid": [30, 96, 80]}})], method_class)
    assert config.preprocess.grid == (30, 96, 80)


def test_auto_grid_pads_to_what_a_deeper_network_needs():
    config = resolve_config([("t", {"preprocess": {"grid": "auto"}, "model": {"depth": 5}})], method_class)
    assert 2**config.preprocess.depth % 32 == 0


def test_resume_refuses_conflicting_settings_but_allows_device_and_budget(tiny_sim, tiny_run, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "split.json"):
        (run / name).write_bytes((tiny_run / name).read_bytes())
    base = ["train", "--data", str(tiny_sim), "--out", str(run), "--resume"]
    for option, value, saved in (("--method", "pix2pix2d", "gan3d"), ("--source", "t1", "flair"), ("--target", "flair", "t1")):
        code, _, err = run_cli(monkeypatch, capsys, *base, option, value)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{option[2:]} = '{saved}'" in err and f"'{value}'" in err and "last.pt" in err
    # device and a longer budget are allowed: the run continues from step 2 to step 3 on the saved settings
    code, out, err = run_cli(monkeypatch, capsys, *base, "--device", "auto", "--steps", "3")
    assert code == 0, err
    resumed = Checkpoint.load(run / "last.pt")
    assert resumed.step == 3 and resumed.config["model"]["base_channels"] == TINY_MODEL["base_channels"]


def test_predict_split_comes_from_the_checkpoint_and_needs_only_the_generator(tiny_sim, tiny_run, tmp_path):
    best = tmp_path / "elsewhere" / "best.pt"
    best.parent.mkdir()
    best.write_bytes((tiny_run / "best.pt").read_bytes())  # no split.json beside it
    predictor = Predictor.from_checkpoint(best, "cpu")
    assert set(predictor.method.nets) == {"generator"} and predictor.method.optimizers == {}
    jobs = predictor.folder_jobs(tiny_sim, "test")
    assert [s for s, _ in jobs] == Checkpoint.load(best).split["test"]
    assert predictor.output_path(tmp_path, "sub") == tmp_path / "sub" / "t1.nii.gz"


def test_predict_never_overwrites_its_input(tiny_sim, tiny_run, tmp_path, monkeypatch, capsys):
    flair = tmp_path / "flair.nii.gz"
    flair.write_bytes((tiny_sim / "sim-000" / "flair.nii.gz").read_bytes())
    before = flair.read_bytes()
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--checkpoint", str(tiny_run / "best.pt"),
                             "--input", str(flair), "--output", str(flair), "--device", "cpu")
    assert code == 2 and "is an input" in err and str(flair) in err and flair.read_bytes() == before
    # a folder predicted into itself would replace the real targets: refused, nothing written
    mtimes = {p: p.stat().st_mtime_ns for p in tiny_sim.rglob("*.nii.gz")}
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--checkpoint", str(tiny_run / "best.pt"),
                             "--input", str(tiny_sim), "--output", str(tiny_sim), "--device", "cpu")
    assert code == 2 and "is an input" in err and {p: p.stat().st_mtime_ns for p in tiny_sim.rglob("*.nii.gz")} == mtimes
    # a missing output folder is created; the prediction lands on the input's grid and says how long it took
    code, out, err = run_cli(monkeypatch, capsys, "predict", "--checkpoint", str(tiny_run / "best.pt"),
                             "--input", str(flair), "--output", str(tmp_path / "new" / "deeper" / "t1.nii.gz"), "--device", "cpu")
    assert code == 0 and " s on cpu" in out
    assert load_volume(tmp_path / "new" / "deeper" / "t1.nii.gz").shape == load_volume(flair).shape


def test_checkpoint_of_another_format_version_names_both_versions(tiny_run, tmp_path):
    ckpt = Checkpoint.load(tiny_run / "last.pt")
    payload = {"format": "modalsynth-checkpoint", **vars(ckpt), "format_version": FORMAT_VERSION + 7}
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(UserError, match=rf"format version {FORMAT_VERSION + 7} .* reads version\(s\) 1, 2, {FORMAT_VERSION}"):
        Checkpoint.load(tmp_path / "future.pt")
    # a version-1 file (the format before the dataclass) still loads, its missing training time read as 0
    old = {k: v for k, v in vars(ckpt).items() if k not in ("format_version", "package_version", "elapsed_s")}
    torch.save({"format": "modalsynth-checkpoint-1", "version": "0.1.0", **old}, tmp_path / "v1.pt")
    loaded = Checkpoint.load(tmp_path / "v1.pt")
    assert loaded.format_version == 1 and loaded.elapsed_s == 0.0 and loaded.step == ckpt.step


def test_checkpoints_before_version_3_keep_their_transposed_upsampling(tiny_run, tmp_path):
    from modalsynth.inference import Predictor
    from modalsynth.nets import ResUNet

    ckpt = Checkpoint.load(tiny_run / "last.pt")
    assert ckpt.config["model"]["upsample"] == "linear"  # gan3d's default since version 3, recorded in the run
    model = {k: v for k, v in ckpt.config["model"].items() if k != "upsample"}
    gen = ResUNet(spatial_dims=3, base_channels=model["base_channels"], depth=model["depth"], stem=model["stem"],
                  full_res_channels=model.get("full_res_channels"), upsample="transposed")
    state = {**ckpt.state, "nets": {"generator": gen.state_dict()}}
    for version, expected in ((2, "transposed"), (3, "linear")):
        payload = {"format": "modalsynth-checkpoint", **vars(ckpt), "config": {**ckpt.config, "model": model},
                   "state": state, "format_version": version}
        torch.save(payload, tmp_path / f"v{version}.pt")
        assert Checkpoint.load(tmp_path / f"v{version}.pt").config["model"].get("upsample", "linear") == expected
    predictor = Predictor.from_checkpoint(tmp_path / "v2.pt", "cpu")  # an old run's weights still fit its network
    assert torch.equal(predictor.method.nets["generator"].state_dict()["head.upsample.conv.weight"],
                       gen.state_dict()["head.upsample.conv.weight"])


def test_yaml_settings_are_checked_for_names_and_types(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: ten\n")
    with pytest.raises(UserError, match=r"bad.yaml: setting steps should be a number, got 'ten'"):
        resolve_config([(str(bad), {"steps": "ten"})], method_class)
    with pytest.raises(UserError, match="unknown setting"):
        resolve_config([("x.yaml", {"stpes": 3})], method_class)
    with pytest.raises(UserError, match="unknown method 'gan4d'"):
        resolve_config([("x.yaml", {"method": "gan4d"})], method_class)


def test_time_budget_stops_at_a_step_boundary_and_resume_continues_it(tiny_sim, tmp_path):
    # a budget of ~0 minutes stops after the first step; the training time used is recorded in the checkpoint
    train(tiny_config(steps=None, minutes=1e-6, val_every=1000), tiny_sim, tmp_path, progress=False)
    first = Checkpoint.load(tmp_path / "last.pt")
    assert first.step == 1 and first.elapsed_s > 0
    train(tiny_config(steps=None, minutes=1e-6, val_every=1000), tiny_sim, tmp_path, resume=True, progress=False)
    assert Checkpoint.load(tmp_path / "last.pt").step == 1  # the budget was already spent: nothing more
