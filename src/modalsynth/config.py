"""Training configuration: a dataclass whose defaults reproduce the paper, loadable from YAML, overridable by options."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import yaml

from .data.augment import AUGMENTATIONS
from .data.pairs import HOLDOUTS
from .data.preprocess import SCALINGS, PreprocessConfig
from .errors import UserError


#: learning-rate schedules over the run's budget (steps or minutes, whichever ends it first)
LR_SCHEDULES = ("constant", "linear-decay")


@dataclass
class TrainConfig:
    """Everything a training run needs; saved whole inside every checkpoint."""

    method: str = "gan3d"
    source: str = "flair"
    target: str = "t1"
    epochs: int = 100  # the paper's
    steps: int | None = None  # when set, stop after this many optimiser steps instead of `epochs`
    minutes: float | None = None  # when set, also stop at the first step boundary past this many minutes of training
    batch_size: int = 1  # the paper's (one whole volume per step)
    lr: float = 1e-4  # the paper's Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # the paper does not state them; pix2pix's choice
    lr_schedule: str = "constant"  # 'constant' or 'linear-decay' (pix2pix's: constant for the first half of the budget, then linearly to 0)
    l1_weight: float = 100.0  # lambda in L = adv + lambda * L1; 100 beat the paper's 1 on simulated data (DESIGN.md)
    ssim_weight: float = 0.0  # weight of a 1 - SSIM term beside eq. (1)'s L1 (the evaluation's SSIM window); 0 = off
    adversarial: str = "bce"  # 'bce' (eq. 1's log terms) or 'lsgan'
    patch: tuple[int, int, int] | None = None  # random training patch (D, H, W); None = whole grid
    augment: str = "light"  # 'none', 'light' (x flips, small intensity scale/shift) or 'mri' (light + MONAI bias field, gamma, noise, small affine)
    amp: bool = True  # bfloat16 autocast: on CUDA; on a CPU with native bf16 for training steps, and for gan3d's prediction
    checkpointing: bool = False  # gradient checkpointing in the generator
    seed: int = 0
    device: str = "auto"
    preset: str | None = None  # a method's named settings over its recipe, e.g. 'paper' for gan3d (the paper's literal ones)
    init: str | None = None  # start from this checkpoint's weights (a path or builtin:NAME); its network settings are taken
    holdout: str = "val+test"  # subjects kept out of training: 'val+test', 'val' (no test) or 'none' (a final model)
    resample_target: bool = False  # allow targets on another grid: resampled onto the source grid via the affines
    val_every: int | None = None  # validate every N steps; None: `val_minutes`, else at epoch ends, at most ~10 % of the time
    val_minutes: float | None = None  # validate every N minutes of training (when `val_every` is not set)
    log_every: int = 10
    model: dict[str, Any] = field(default_factory=dict)  # network options of the method (base_channels, depth, ...)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the config travels in a `weights_only` checkpoint and in YAML."""
        values = asdict(self)
        values["preprocess"] = self.preprocess.to_dict()
        return _plain(values)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], origin: str = "config") -> "TrainConfig":
        """Build from a dict (YAML or checkpoint); an unknown key or a value of the wrong type is a `UserError`."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"{origin}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        values = dict(values)
        if isinstance(values.get("augment"), bool):  # runs saved before the levels: true was today's 'light'
            values["augment"] = "light" if values["augment"] else "none"
        pre = values.pop("preprocess", None)
        for key, value in values.items():
            _check_type(key, value, _DEFAULTS_BY_NAME[key], origin)
        for key in ("patch", "betas"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        config = cls(**values)
        if pre is not None:
            if not isinstance(pre, Mapping):
                raise UserError(f"{origin}: 'preprocess' must be a mapping of settings, e.g. 'preprocess: {{grid: auto}}'")
            pre_known = {f.name for f in fields(PreprocessConfig)}
            bad = set(pre) - pre_known
            if bad:
                raise UserError(f"{origin}: unknown preprocess setting(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(pre_known))}")
            defaults = PreprocessConfig()
            for key, value in pre.items():
                _check_type(f"preprocess.{key}", value, getattr(defaults, key), origin)
            config.preprocess = PreprocessConfig.from_dict(dict(pre))
        return config

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        """Read a YAML file of settings (any subset of the fields) over TrainConfig's defaults, without a method recipe."""
        return cls.from_dict(cls.yaml_settings(path), origin=str(path))

    @staticmethod
    def yaml_settings(path: Path) -> dict[str, Any]:
        """The settings a YAML file sets (a mapping), checked for unknown names and wrong types."""
        values = read_yaml_mapping(path, "config file", "'epochs: 10'")
        TrainConfig.from_dict(values, origin=str(path))
        return values

    def write_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_yaml_mapping(path: Path, what: str, example: str) -> dict[str, Any]:
    """A YAML file that must hold a mapping: a missing file, a syntax error (with its line) or another shape is a
    one-line `UserError` naming the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; check the path")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where} ({str(exc).splitlines()[0]}); fix the file") from exc
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping, e.g. {example}")
    return values


#: an example value of the kind expected by each setting whose default is None
_NONE_DEFAULT_KINDS: dict[str, Any] = {"preset": "", "init": "", "steps": 1, "minutes": 1.0, "val_every": 1, "val_minutes": 1.0, "patch": (1, 1, 1), "preprocess.spacing": (1.0, 1.0, 1.0)}
_DEFAULTS_BY_NAME = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
#: settings with a fixed set of values: (field, dotted for a nested one, its values, how an error names the given value)
_CHOICES = (("holdout", HOLDOUTS, "--holdout {}"), ("augment", AUGMENTATIONS, "augment {!r}"), ("lr_schedule", LR_SCHEDULES, "lr_schedule {!r}"),
            ("preprocess.scaling", SCALINGS, "preprocess scaling {!r}"))
#: settings that may differ from the saved run on `--resume`: where it runs, how long, how often it logs
RESUMABLE_CHANGES = frozenset({"device", "steps", "epochs", "minutes", "log_every", "val_every", "val_minutes"})
#: settings that are dicts merged key by key across layers (a YAML `model: {depth: 3}` keeps the other model options)
_NESTED = ("model", "preprocess")


class MethodRecipe(Protocol):
    """What settings resolution needs from a method class (see `methods.base.Method`)."""

    recipe: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]
    priors: Mapping[tuple[str, str], str]
    network_keys: tuple[str, ...]

    def size_multiple(self, config: "TrainConfig") -> tuple[int, int, int]: ...


Layer = tuple[str, Mapping[str, Any]]  # (where the settings come from, e.g. "run.yaml" or "the command line"; the settings)


def merge_settings(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` over `base`; the nested `model` and `preprocess` mappings are merged key by key."""
    out = dict(base)
    for key, value in layer.items():
        if key in _NESTED and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def resolve_config(layers: list[Layer], recipes: Callable[[str], MethodRecipe]) -> TrainConfig:
    """The one place settings are resolved: TrainConfig's defaults < the method's recipe < each layer in order.

    Whatever a layer sets wins over the recipe, even when it equals TrainConfig's default (an explicit `lr: 1e-4` for
    pix2pix2d stays 1e-4). Grid and patch sizes are checked against the method's network here, before any data loads.
    When no layer names `init` (`--init none` names it too: random weights), a run starts from the method's shipped
    prior for its source/target pair if its network is the prior's (gan3d FLAIR -> T1: builtin:sim-flair-t1).
    """
    layers = [(origin, {**layer, "init": None}) if str(layer.get("init", "")).lower() == "none" else (origin, layer)
              for origin, layer in layers]
    config = _resolve_layers(layers, recipes)
    prior = _default_prior(config, layers, recipes(config.method))
    if prior is not None:
        spec, inherited = prior
        config = _resolve_layers([("the default start", {"init": spec})] + layers, recipes, inherited)
    return config


def _default_prior(config: TrainConfig, layers: list[Layer], method_class: MethodRecipe) -> tuple[str, dict[str, Any]] | None:
    """The shipped prior a run starts from when nothing names `init` (its spec and the settings it passes on): the
    method's one for this source/target pair, if the run's network (`network_keys`) is the prior's and no preset is
    asked for."""
    if any("init" in layer for _, layer in layers) or config.preset is not None:
        return None
    prior = method_class.priors.get((config.source, config.target))
    if prior is None:
        return None
    inherited = _inherited_from(prior)
    theirs = inherited.get("model", {})
    if any(config.model.get(k) != theirs.get(k) for k in method_class.network_keys):
        return None
    return prior, inherited


def _resolve_layers(layers: list[Layer], recipes: Callable[[str], MethodRecipe],
                    inherited: dict[str, Any] | None = None) -> TrainConfig:
    """`resolve_config` without the default prior: the init checkpoint's settings (`inherited` when the caller has
    read them already), recipe, preset and layers."""
    init = None
    for _, layer in layers:
        init = layer.get("init", init)
    if init:
        inherited = inherited if inherited is not None else _inherited_from(str(init))
        for _, layer in layers:
            for key in ("source", "target"):
                if key in layer and key in inherited and layer[key] != inherited[key]:
                    raise UserError(f"--init {init}: that model maps {inherited['source']} -> {inherited['target']}, but "
                                    f"--{key} {layer[key]} was asked; fine-tune from a {key} {layer[key]} model or drop --{key}")
        layers = [(f"--init {init}", inherited)] + list(layers)
    name = TrainConfig.method
    for _, layer in layers:
        name = layer.get("method", name)
    method_class = recipes(str(name))
    values = merge_settings(TrainConfig().to_dict(), _plain(dict(method_class.recipe)))
    preset = None
    for _, layer in layers:
        preset = layer.get("preset", preset)
    if preset is not None:
        if preset not in method_class.presets:
            known = ", ".join(method_class.presets) or "none"
            raise UserError(f"--preset {preset}: {name} has no such preset (its presets: {known})")
        values = merge_settings(values, _plain(dict(method_class.presets[preset])))
    for origin, layer in layers:
        TrainConfig.from_dict(layer, origin=origin)  # names the file or option of a bad setting
        values = merge_settings(values, _plain(dict(layer)))
    config = TrainConfig.from_dict(values, origin=" + ".join(o for o, _ in layers) or "defaults")
    for name, choices, label in _CHOICES:
        value = attrgetter(name)(config)
        if value not in choices:
            raise UserError(f"{label.format(value)}: choose one of {', '.join(choices)}")
    check_sizes(config, method_class.size_multiple(config))
    return config


#: what a fine-tuning run takes from its --init checkpoint, so that the network and its input match the weights
INHERITED_BY_INIT = ("method", "source", "target", "model", "patch", "preprocess")


def _inherited_from(init: str) -> dict[str, Any]:
    from . import builtin
    from .checkpoints import Checkpoint

    saved = Checkpoint.load(builtin.resolve(init)).config
    return {k: saved[k] for k in INHERITED_BY_INIT if k in saved}


def resume_config(saved: TrainConfig, layers: list[Layer], checkpoint: Path) -> TrainConfig:
    """The saved run's settings with the changes `--resume` allows; any other setting that differs is a `UserError`."""
    values = saved.to_dict()
    for origin, layer in layers:
        layer = _plain(dict(layer))
        current = _flatten(values)
        for key, wanted in _flatten(layer).items():
            have = current.get(key)
            if key.split(".")[0] in RESUMABLE_CHANGES or _same(wanted, have):
                continue
            raise UserError(
                f"{checkpoint}: the run was trained with {key} = {have!r}, but {origin} asks for {wanted!r}; "
                f"drop that setting to resume, or start a new run in another --out folder"
            )
        values = merge_settings(values, {k: v for k, v in layer.items() if k in RESUMABLE_CHANGES})
    return TrainConfig.from_dict(values, origin=str(checkpoint))


def check_sizes(config: TrainConfig, multiple: tuple[int, int, int]) -> None:
    """A fixed grid and a patch must divide by the network's size multiple per axis: a `UserError` names the nearest valid sizes."""
    grid, patch = config.preprocess.grid, config.patch
    if grid == "auto":
        need = max(multiple)
        if 2**config.preprocess.depth % need:  # the auto grid pads to 2**preprocess.depth
            config.preprocess.depth = int(math.log2(need))
    else:
        _check_triplet("--grid", tuple(grid), multiple, config)  # type: ignore[arg-type]
    if patch is not None:
        _check_triplet("--patch", tuple(patch), multiple, config)


def _check_triplet(option: str, sizes: tuple[int, ...], multiple: tuple[int, int, int], config: TrainConfig) -> None:
    if len(sizes) != 3 or any(int(s) < 1 for s in sizes):
        raise UserError(f"{option} {' '.join(map(str, sizes))}: give three positive integers D H W")
    if all(s % m == 0 for s, m in zip(sizes, multiple)):
        return
    down = [max(m, s // m * m) for s, m in zip(sizes, multiple)]
    up = [-(-s // m) * m for s, m in zip(sizes, multiple)]
    rule = " x ".join(map(str, multiple))
    raise UserError(
        f"{option} {' '.join(map(str, sizes))}: the {config.method} network (model {_model_text(config)}) needs sizes "
        f"divisible by {rule} per axis; use {option} {' '.join(map(str, up))} or {option} {' '.join(map(str, down))}"
    )


def _model_text(config: TrainConfig) -> str:
    keys = [k for k in ("depth", "channels", "stem") if k in config.model]
    return ", ".join(f"{k} {config.model[k]}" for k in keys) or "defaults"


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in _NESTED and isinstance(value, Mapping) and not prefix:
            out.update(_flatten(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-12)
    return _plain(a) == _plain(b)


def _check_type(key: str, value: Any, default: Any, origin: str) -> None:
    """A setting's value must have its default's kind (number, text, yes/no, list); None is allowed where the default is None."""
    if value is None:
        return
    default = _NONE_DEFAULT_KINDS.get(key, default)
    if key == "preprocess.grid":
        if not (value == "auto" or (isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value))):
            raise UserError(f"{origin}: setting {key} should be three integers [D, H, W] or 'auto', got {value!r}")
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        kind = "a number"
        if isinstance(default, int) and isinstance(value, float):
            ok, kind = ok and float(value).is_integer(), "a whole number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    elif isinstance(default, dict):
        ok, kind = isinstance(value, Mapping), "a mapping"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        kind = "a list of numbers"
    else:
        return
    if not ok:
        raise UserError(f"{origin}: setting {key} should be {kind}, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
