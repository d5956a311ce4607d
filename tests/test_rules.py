"""Every rule on settings is checked when settings resolve: one line naming the settings, exit 2, before any data or
cache is touched. One case per rule; a rule without a case fails `test_every_rule_has_a_case`."""

from __future__ import annotations

import pytest

from modalsynth.config import InferenceConfig, TrainConfig, resolve_config
from modalsynth.errors import UserError
from modalsynth.methods import method_class, method_names

from .test_settings import run_cli, tiny_run  # noqa: F401  (tiny_run: a fixture)

# (method, settings layer, the settings the one-line error names)
CASES = [
    ("gan3d", {"epochs": -3}, ("epochs",)),
    ("gan3d", {"steps": 0}, ("steps",)),
    ("gan3d", {"minutes": float("nan")}, ("minutes",)),
    ("gan3d", {"lr": 0.0}, ("lr",)),
    ("gan3d", {"betas": [0.5, 1.5]}, ("betas",)),
    ("gan3d", {"l1_weight": -1.0}, ("l1_weight",)),
    ("gan3d", {"gradient_weight": float("nan")}, ("gradient_weight",)),
    ("gan3d", {"tail_weight": -1.0}, ("tail_weight",)),
    ("gan3d", {"batch_size": 0}, ("batch_size",)),
    ("gan3d", {"patch": None, "batch_size": 2}, ("batch_size", "patch", "preprocess.grid")),
    ("gan3d", {"source_dropout": 1.0}, ("source_dropout",)),
    ("gan3d", {"log_every": 0}, ("log_every",)),
    ("gan3d", {"val_every": 0}, ("val_every",)),
    ("gan3d", {"val_minutes": -1.0}, ("val_minutes",)),
    ("gan3d", {"workers": -1}, ("workers",)),
    (
        "gan3d",
        {"preprocess": {"lower_percentile": 99.0, "upper_percentile": 1.0}},
        ("preprocess.lower_percentile", "preprocess.upper_percentile"),
    ),
    ("gan3d", {"preprocess": {"margin": -1}}, ("preprocess.margin",)),
    ("gan3d", {"preprocess": {"depth": -1}}, ("preprocess.depth",)),
    ("gan3d", {"inference": {"overlap": 1.5}}, ("inference.overlap",)),
    ("gan3d", {"inference": {"window": [0, 64, 64]}}, ("inference.window",)),
    ("gan3d", {"inference": {"windows_per_batch": 0}}, ("inference.windows_per_batch",)),
    ("gan3d", {"inference": {"sigma": 0.0}}, ("inference.sigma",)),
    ("pix2pix2d", {"inference": {"slices_per_batch": 0}}, ("inference.slices_per_batch",)),
    ("gan3d", {"model": {"base_channels": 0}}, ("model.base_channels",)),
    ("gan3d", {"model": {"depth": 0}}, ("model.depth",)),
    ("gan3d", {"model": {"stem": "residual"}}, ("model.full_res_channels", "model.stem")),
    ("gan3d", {"model": {"full_res_channels": 0}}, ("model.full_res_channels",)),
    ("gan3d", {"model": {"stem": "residual", "full_res_channels": None, "head_kernel": 1}}, ("model.head_kernel",)),
    ("gan3d", {"model": {"disc_channels": 0}}, ("model.disc_channels",)),
    ("gan3d", {"model": {"disc_layers": 0}}, ("model.disc_layers",)),
    ("pix2pix2d", {"model": {"slices_per_step": 0}}, ("model.slices_per_step",)),
    ("ddpm", {"model": {"channels": [32, 0]}}, ("model.channels",)),
    ("ddpm", {"model": {"attention_levels": [False]}}, ("model.attention_levels", "model.channels")),
    ("ddpm", {"model": {"num_train_timesteps": 0, "sample_steps": 1}}, ("model.num_train_timesteps",)),
    ("ddpm", {"model": {"sample_steps": 0}}, ("model.sample_steps", "model.num_train_timesteps")),
    ("ddpm", {"model": {"slices_per_step": 0}}, ("model.slices_per_step",)),
    ("lut", {"model": {"bins": 1}}, ("model.bins",)),
]


def _rules_of(method: str) -> list[tuple[str, ...]]:
    """Each rule a run of `method` is checked against, as the settings it names (with their section)."""
    cls = method_class(method)
    named = [rule.settings for rule in TrainConfig.rules]
    named += [tuple(f"inference.{s}" for s in rule.settings) for rule in InferenceConfig.rules]
    named += [tuple(f"model.{s}" for s in rule.settings) for rule in cls.network_settings.rules]
    return named


@pytest.mark.parametrize("method, layer, names", CASES, ids=[f"{m}-{'-'.join(n)}" for m, _, n in CASES])
def test_each_rule_is_one_line_naming_its_settings(method, layer, names):
    with pytest.raises(UserError) as caught:
        resolve_config([("run.yaml", {"method": method, **layer})], method_class)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("run.yaml")
    for name in names:
        assert f"{name} = " in message


def test_every_rule_has_a_case():
    covered = {(method, names[0]) for method, _, names in CASES}
    for method in method_names():
        for names in _rules_of(method):
            assert any(first == names[0] for _, first in covered), f"no test case for the rule on {names}"


def test_the_defaults_and_presets_break_no_rule():
    for method in method_names():
        resolve_config([("defaults", {"method": method})], method_class)
        for preset in method_class(method).presets:
            resolve_config([("preset", {"method": method, "preset": preset})], method_class)


def test_a_conflict_in_the_yaml_stops_before_any_cache_is_built(tiny_sim, tmp_path, monkeypatch, capsys):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("model: {stem: residual}\ninference: {overlap: 1.5}\n")
    monkeypatch.setenv("MODALSYNTH_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--data",
        str(tiny_sim),
        "--out",
        str(tmp_path / "run"),
        "--config",
        str(yaml_file),
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "model.stem = 'residual'" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "budget", [["--steps", "0"], ["--steps", "-5"], ["--minutes", "0"], ["--minutes", "-1"], ["--minutes", "nan"]]
)
def test_an_empty_or_endless_budget_is_refused_before_training(tiny_sim, tmp_path, monkeypatch, capsys, budget):
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--data", str(tiny_sim), "--out", str(tmp_path / "run"), *budget
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and budget[0].lstrip("-") in err
    assert "best checkpoint" not in out and not (tmp_path / "run").exists()


def test_resume_checks_the_new_budget_too(tiny_run, monkeypatch, capsys):  # noqa: F811
    code, out, err = run_cli(
        monkeypatch, capsys, "train", "--data", "unused", "--out", str(tiny_run), "--resume", "--steps", "-1"
    )
    assert code == 2 and "steps = -1" in err and len(err.strip().splitlines()) == 1
