"""Settings resolved once (config.py), resume conflicts, grid rules, the checkpoint schema and the one predictor."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch
import yaml

from modalsynth import cli
from modalsynth.checkpoints import FORMAT_VERSION, Checkpoint
from modalsynth.config import config_from_checkpoint, resolve_config
from modalsynth.errors import TrainingStopped, UserError
from modalsynth.inference import Predictor
from modalsynth.io import load_volume
from modalsynth.methods import method_class
from modalsynth.predict_jobs import folder_jobs, output_path
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


def test_grid_that_does_not_divide_is_refused_before_loading_with_the_nearest_sizes(
    tiny_sim, tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(
        "modalsynth.training.require_pairs", lambda *a, **k: pytest.fail("data loaded before the check")
    )
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--data",
        str(tiny_sim),
        "--out",
        str(tmp_path / "run"),
        "--grid",
        "30",
        "96",
        "80",
        "--steps",
        "1",
        "--device",
        "cpu",
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert (
        "--grid 30 96 80" in err
        and "divisible by 16 x 16 x 16" in err
        and "--grid 32 96 80" in err
        and "--grid 16 96 80" in err
    )
    assert not (tmp_path / "run").exists()  # nothing made
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--data",
        str(tiny_sim),
        "--out",
        str(tmp_path / "run"),
        "--patch",
        "20",
        "20",
        "20",
        "--steps",
        "1",
    )
    assert code == 2 and "--patch 32 32 32" in err and "--patch 16 16 16" in err
    # 2D methods only constrain H and W; 30 slices are fine for pix2pix2d
    config = resolve_config([("t", {"method": "pix2pix2d", "preprocess": {"grid": [30, 96, 80]}})], method_class)
    assert config.preprocess.grid == (30, 96, 80)


def test_auto_grid_pads_to_what_a_deeper_network_needs():
    config = resolve_config([("t", {"preprocess": {"grid": "auto"}, "model": {"depth": 5}})], method_class)
    assert 2**config.preprocess.depth % 32 == 0


def test_resume_refuses_conflicting_settings_but_allows_device_and_budget(
    tiny_sim, tiny_run, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "split.json"):
        (run / name).write_bytes((tiny_run / name).read_bytes())
    base = ["train", "--data", str(tiny_sim), "--out", str(run), "--resume"]
    for option, value, saved in (
        ("--method", "pix2pix2d", "gan3d"),
        ("--source", "t1", "flair"),
        ("--target", "flair", "t1"),
    ):
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
    jobs = folder_jobs(predictor, tiny_sim, "test")
    assert [s for s, _ in jobs] == Checkpoint.load(best).split["test"]
    assert output_path(predictor, tmp_path, "sub") == tmp_path / "sub" / "t1.nii.gz"


def test_predict_never_overwrites_its_input(tiny_sim, tiny_run, tmp_path, monkeypatch, capsys):
    flair = tmp_path / "flair.nii.gz"
    flair.write_bytes((tiny_sim / "sim-000" / "flair.nii.gz").read_bytes())
    before = flair.read_bytes()
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(tiny_run / "best.pt"),
        "--input",
        str(flair),
        "--output",
        str(flair),
        "--device",
        "cpu",
    )
    assert code == 2 and "is an input" in err and str(flair) in err and flair.read_bytes() == before
    # a folder predicted into itself would replace the real targets, and a rerun would take the predictions for
    # inputs: refused, nothing written
    mtimes = {p: p.stat().st_mtime_ns for p in tiny_sim.rglob("*.nii.gz")}
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(tiny_run / "best.pt"),
        "--input",
        str(tiny_sim),
        "--output",
        str(tiny_sim),
        "--device",
        "cpu",
    )
    assert code == 2 and "is inside" in err and {p: p.stat().st_mtime_ns for p in tiny_sim.rglob("*.nii.gz")} == mtimes
    # a missing output folder is created; the prediction lands on the input's grid and says how long it took
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(tiny_run / "best.pt"),
        "--input",
        str(flair),
        "--output",
        str(tmp_path / "new" / "deeper" / "t1.nii.gz"),
        "--device",
        "cpu",
    )
    assert code == 0 and " s on cpu" in out
    assert load_volume(tmp_path / "new" / "deeper" / "t1.nii.gz").shape == load_volume(flair).shape


def test_checkpoint_of_another_format_version_names_both_versions(tiny_run, tmp_path):
    ckpt = Checkpoint.load(tiny_run / "last.pt")
    payload = {"format": "modalsynth-checkpoint", **vars(ckpt), "format_version": FORMAT_VERSION + 7}
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(
        UserError, match=rf"format version {FORMAT_VERSION + 7} .* reads version\(s\) 1, 2, 3, {FORMAT_VERSION}"
    ):
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
    gen = ResUNet(
        spatial_dims=3,
        base_channels=model["base_channels"],
        depth=model["depth"],
        stem=model["stem"],
        full_res_channels=model["full_res_channels"],
        upsample="transposed",
    )
    state = {**ckpt.state, "nets": {"generator": gen.state_dict()}}
    for version, expected in ((2, "transposed"), (3, "linear")):
        payload = {
            "format": "modalsynth-checkpoint",
            **vars(ckpt),
            "config": {**ckpt.config, "model": model},
            "state": state,
            "format_version": version,
        }
        torch.save(payload, tmp_path / f"v{version}.pt")
        loaded = Checkpoint.load(tmp_path / f"v{version}.pt")
        assert config_from_checkpoint(loaded.config, version, method_class, "t").model.upsample == expected
    predictor = Predictor.from_checkpoint(tmp_path / "v2.pt", "cpu")  # an old run's weights still fit its network
    assert torch.equal(
        predictor.method.nets["generator"].state_dict()["head.upsample.conv.weight"],
        gen.state_dict()["head.upsample.conv.weight"],
    )


def test_yaml_settings_are_checked_for_names_and_types(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: ten\n")
    with pytest.raises(UserError, match=r"bad.yaml: setting steps should be a whole number, got 'ten'"):
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


def test_every_layer_lands_in_the_resolved_tree_the_checkpoint_stores_and_the_run_uses(tiny_sim, tiny_run, tmp_path):
    """method defaults < preset < --init < YAML < command line, then --resume: the checkpoint holds the resolved tree,
    and the networks, optimisers and predictor the run built follow it."""
    import dataclasses

    from modalsynth.config import read_settings_file

    paper = resolve_config([("cli", {"preset": "paper"})], method_class)
    assert paper.lr == 1e-4 and paper.inference.windows_per_batch == 1 and paper.model.base_channels == 32  # preset
    assert resolve_config([], method_class).lr == 5e-4  # gan3d's recipe over TrainConfig's paper default
    settings = tmp_path / "run.yaml"
    settings.write_text("lr: 0.0007\ninference: {overlap: 0.3}\nbetas: [0.6, 0.99]\n")
    layers = [
        ("--init", {"init": str(tiny_run / "best.pt")}),
        (str(settings), read_settings_file(settings)),
        (
            "the command line",
            {
                "steps": 2,
                "l1_weight": 50.0,
                "device": "cpu",
                "val_every": 2,
                "preprocess": {"grid": list(TINY_GRID)},
                "patch": None,
                "batch_size": 1,
            },
        ),
    ]
    config = resolve_config(layers, method_class)
    assert config.model.base_channels == TINY_MODEL["base_channels"]  # from the --init checkpoint
    assert config.betas == (0.6, 0.99) and config.lr == 7e-4 and config.inference.overlap == 0.3  # YAML
    assert config.l1_weight == 50.0 and config.steps == 2  # command line
    assert config.inference.windows_per_batch == 4  # gan3d's own inference default, untouched by the layers
    used = {}

    def record(method):
        used["lr"] = {g["initial_lr"] for o in method.optimizers.values() for g in o.param_groups}
        used["betas"] = {g["betas"] for o in method.optimizers.values() for g in o.param_groups}
        used["gen_params"] = sum(p.numel() for p in method.nets["generator"].parameters())

    out = tmp_path / "run"
    train(config, tiny_sim, out, progress=False, on_finish=record)
    stored = Checkpoint.load(out / "last.pt")
    assert stored.config == config.to_dict()
    assert config_from_checkpoint(stored.config, stored.format_version, method_class, "t") == config
    assert used["lr"] == {7e-4} and used["betas"] == {(0.6, 0.99)}
    reference = build_method_for(config)
    assert used["gen_params"] == sum(p.numel() for p in reference.nets["generator"].parameters())
    assert Predictor.from_checkpoint(out / "last.pt", "cpu").inference == config.inference
    resumed = dataclasses.replace(config, steps=3)
    train(resumed, tiny_sim, out, resume=True, progress=False)
    assert Checkpoint.load(out / "last.pt").config == resumed.to_dict()  # the one allowed change, stored


def build_method_for(config):
    from modalsynth.methods import build_method

    return build_method(config)


def test_settings_are_frozen_and_other_inference_settings_make_another_predictor(tiny_run):
    import dataclasses

    config = resolve_config([], method_class)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.inference.overlap = 0.1  # type: ignore[misc]
    predictor = Predictor.from_checkpoint(tiny_run / "best.pt", "cpu")
    other = predictor.with_inference(overlap=0.25, flip_average=True)
    assert (other.inference.overlap, other.inference.flip_average) == (0.25, True)
    assert predictor.inference == predictor.config.inference and other.method is predictor.method
    with pytest.raises(UserError, match="--overlap 1.5"):
        predictor.with_inference(overlap=1.5)


@pytest.mark.parametrize(
    "setting, value",
    [
        ("ssim_weight", 30.0),
        ("adversarial", "lsgan"),
        ("model.ema", 0.999),
        ("model.consistency", 10.0),
        ("preprocess.scaling", "zscore"),
    ],
)
def test_a_deleted_setting_is_one_line_naming_it_and_the_last_release(
    setting, value, tiny_run, tmp_path, monkeypatch, capsys
):
    section, _, key = setting.rpartition(".")
    layer = {section: {key: value}} if section else {key: value}
    settings = tmp_path / "old.yaml"
    settings.write_text(yaml.safe_dump(layer))
    code, _, err = run_cli(
        monkeypatch, capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--config", str(settings)
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"setting {setting} = {value!r} was removed after modalsynth 0.1.0" in err and "old.yaml" in err
    # a checkpoint written before the deletion holds the setting at its 'off' value and still loads ...
    ckpt = Checkpoint.load(tiny_run / "last.pt")
    old = {
        **ckpt.config,
        "ssim_weight": 0.0,
        "adversarial": "bce",
        "model": {**ckpt.config["model"], "ema": None, "consistency": 0.0, "overlap": 0.5},
        "preprocess": {**ckpt.config["preprocess"], "scaling": "percentile"},
    }
    old.pop("inference")
    loaded = config_from_checkpoint(old, 3, method_class, "old.pt")
    assert loaded.inference.overlap == 0.5  # a format-3 prediction setting moved to the inference tree
    # ... while one trained with it on names it
    target = old[section] if section else old
    target[key] = value
    with pytest.raises(UserError, match=f"old.pt: setting {setting} = .* use modalsynth 0.1.0"):
        config_from_checkpoint(old, 3, method_class, "old.pt")


@pytest.mark.parametrize(
    "method, extra", [("gan3d", {}), ("pix2pix2d", {"model": {**TINY_MODEL, "slices_per_step": 2}})]
)
def test_a_finished_linear_decay_run_is_not_extended_but_an_unfinished_one_resumes_exactly(
    method, extra, tiny_sim, tmp_path, monkeypatch, capsys
):
    """Six steps of linear decay end at a third of the rate; twelve would put it back to the full rate at step 6, so
    the extension is refused with one line saying how to train longer; the same six steps of a twelve-step run,
    resumed, end where twelve straight steps end."""
    settings = dict(method=method, lr=1e-3, lr_schedule="linear-decay", val_every=100, **extra)
    train(tiny_config(steps=6, **settings), tiny_sim, tmp_path / "six", progress=False)
    with pytest.raises(UserError, match=r"decayed to 0.33 .* step 6 .*would raise it to 1.00.*--init .*last.pt"):
        train(tiny_config(steps=12, **settings), tiny_sim, tmp_path / "six", resume=True, progress=False)
    assert Checkpoint.load(tmp_path / "six" / "last.pt").step == 6  # nothing trained, nothing lost
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--data",
        str(tiny_sim),
        "--out",
        str(tmp_path / "six"),
        "--resume",
        "--steps",
        "12",
    )
    assert code == 2 and err.count("\n") == 1 and "would raise it" in err
    straight = tiny_config(steps=12, **settings)
    _terminate_after_steps(monkeypatch, method_class(method), 6)
    with pytest.raises(TrainingStopped, match="stopped by SIGTERM at step 6"):
        train(straight, tiny_sim, tmp_path / "straight", progress=False)
    train(straight, tiny_sim, tmp_path / "straight", resume=True, progress=False)
    train(straight, tiny_sim, tmp_path / "unbroken", progress=False)
    a = Checkpoint.load(tmp_path / "straight" / "last.pt")
    b = Checkpoint.load(tmp_path / "unbroken" / "last.pt")
    assert a.step == b.step == 12
    assert all(
        torch.equal(a.state["nets"]["generator"][k], b.state["nets"]["generator"][k])
        for k in a.state["nets"]["generator"]
    )


def _terminate_after_steps(monkeypatch, cls, count: int) -> None:
    """Send this process SIGTERM during training step `count` (the run stops at that step's end, as a killed job)."""
    original, calls = cls.training_step, {"n": 0}

    def step(self, batch, gen):
        calls["n"] += 1
        if calls["n"] == count:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, gen)

    monkeypatch.setattr(cls, "training_step", step)


def test_the_builtin_model_stores_the_tree_its_pinned_recipe_resolves_to_and_the_default_run_shares_its_network():
    """builtin:flair-t1 holds the settings it was trained with (format 3, migrated): the pinned recipe of its card,
    resolved as the build script resolves it, gives the same training settings; today's default run the same network
    and inference settings."""
    from pathlib import Path

    from modalsynth import builtin
    from modalsynth.config import read_settings_file

    ckpt = Checkpoint.load(builtin.resolve("builtin:flair-t1"))
    stored = config_from_checkpoint(ckpt.config, ckpt.format_version, method_class, "builtin:flair-t1")
    recipe = Path(__file__).resolve().parents[1] / "scripts" / "builtin" / "flair-t1-recipe.yaml"
    card_command = {"holdout": "none", "seed": 0, "device": "cpu", "steps": 1565}
    rebuilt = resolve_config(
        [(str(recipe), read_settings_file(recipe)), ("the card's command", card_command)], method_class
    )
    assert stored == rebuilt
    default = resolve_config([], method_class)
    assert default.model == stored.model and default.inference == stored.inference
    assert (default.patch, default.batch_size, default.preprocess, default.lr, default.lr_schedule) == (
        stored.patch,
        stored.batch_size,
        stored.preprocess,
        stored.lr,
        stored.lr_schedule,
    )
    card = builtin.MODELS["flair-t1"].card.read_text()
    assert "1565 steps" in card and "lr 5e-4" in card and "two random 64³ patches" in card


def test_no_module_reads_a_setting_with_a_fallback():
    """Settings are read as attributes of the resolved tree: no `.get(key, default)` on a config, model, inference or
    preprocess object, and no `options()` re-merging of defaults, anywhere in the package."""
    import ast
    from pathlib import Path

    import modalsynth

    settings_names = {"config", "model", "inference", "preprocess", "options", "settings"}
    found = []
    for path in Path(modalsynth.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                receiver = node.func.value
                name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(receiver, "id", "")
                if name in settings_names or (
                    isinstance(receiver, ast.Call) and getattr(receiver.func, "attr", "") == "options"
                ):
                    found.append(f"{path.name}:{node.lineno}")
    assert found == []


def test_inspect_prints_the_resolved_settings_a_checkpoint_holds(tiny_run, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "inspect", str(tiny_run / "last.pt"))
    assert code == 0, err
    ckpt = Checkpoint.load(tiny_run / "last.pt")
    assert yaml.safe_load(out) == ckpt.config and "step 2" in out.splitlines()[0]
    code, out, _ = run_cli(monkeypatch, capsys, "inspect", "builtin:flair-t1")
    assert code == 0 and yaml.safe_load(out)["model"]["head_kernel"] == 3  # an older format, shown fully resolved


def test_predict_takes_a_csv_manifest_as_its_input(tiny_sim, tiny_run, tmp_path, monkeypatch, capsys):
    rows = [f"{s},{tiny_sim / s / 'flair.nii.gz'},{tiny_sim / s / 't1.nii.gz'}" for s in ("sim-000", "sim-001")]
    manifest = tmp_path / "list.csv"
    manifest.write_text("subject,source,target\n" + "\n".join(rows) + "\n")
    args = ["--checkpoint", str(tiny_run / "best.pt"), "--input", str(manifest), "--output", str(tmp_path / "preds")]
    code, out, err = run_cli(monkeypatch, capsys, "predict", *args, "--device", "cpu")
    assert code == 0, err
    assert sorted(p.parent.name for p in (tmp_path / "preds").glob("*/t1.nii.gz")) == ["sim-000", "sim-001"]
