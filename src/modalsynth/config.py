"""A run's settings: one frozen, typed tree (`TrainConfig`), resolved once by `resolve_config` from layers.

Layers, lowest first: the method's defaults (its `recipe`, its `network_settings` and `inference_defaults`) < a
`--preset` < the `--init` checkpoint's network < a YAML file < the command line. The resolved tree is saved whole in
every checkpoint and `config.yaml`; nothing reads a setting with a fallback afterwards. Settings of older checkpoints
and files pass through `migrate_settings` first.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import yaml

from .data.augment import AUGMENTATIONS
from .data.pairs import HOLDOUTS, canonical_modality, source_list
from .data.preprocess import PreprocessConfig
from .errors import UserError
from .io import plain

Schedule = Literal["constant", "linear-decay"]  # 'linear-decay': pix2pix's rule over the run's budget
Augmentation = Literal[AUGMENTATIONS]  # type: ignore[valid-type]
Holdout = Literal[HOLDOUTS]  # type: ignore[valid-type]
Precision = Literal["auto", "float32"]

#: the release that last accepted the deleted settings below
LAST_RELEASE_WITH_DELETED = "0.1.0"
#: settings deleted after their ablations (benchmarks/RESULTS.md §8, §9), with the values that meant "off":
#: an older checkpoint that holds one of those still loads; any other value is refused with one line
DELETED_SETTINGS: dict[str, tuple[Any, ...]] = {
    "ssim_weight": (0, 0.0),
    "adversarial": ("bce",),
    "model.ema": (None, 0, 0.0),
    "model.consistency": (None, 0, 0.0),
    "preprocess.scaling": ("percentile",),
}
#: `model` options of checkpoint format <= 3 that are inference settings now
MOVED_TO_INFERENCE = {
    "window": "window",
    "overlap": "overlap",
    "windows_per_batch": "windows_per_batch",
    "window_sigma": "sigma",
    "predict_batch": "slices_per_batch",
}
#: methods whose generator is the ResUNet: checkpoints before format 3 upsample with transposed convolutions
RESUNET_METHODS = ("gan3d", "pix2pix2d")


@dataclass(frozen=True)
class Rule:
    """A condition resolved settings must meet: `broken(section)` says when they do not; the message names each of
    `settings` with its value, then `fix`. Checked by `check_rules` before any data is read."""

    settings: tuple[str, ...]
    broken: Callable[[Any], bool]
    fix: str


def _positive(value: Any) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _unset_or_positive(value: Any) -> bool:
    return value is None or _positive(value)


@dataclass(frozen=True)
class NetworkSettings:
    """A method's network options (`model:` in YAML); each method subclasses it with its own fields and defaults."""

    #: the rules these options must meet (names relative to `model.`)
    rules: ClassVar[tuple[Rule, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


@dataclass(frozen=True)
class InferenceConfig:
    """How a trained network is applied to a whole volume: held by the `Predictor`, never changed in place."""

    window: tuple[int, int, int] | Literal["volume"] | None = (
        None  # 3D windows (D, H, W); 'volume': one pass; None: the training patch
    )
    overlap: float = 0.5  # sliding windows at least this far apart (a fraction of the window)
    windows_per_batch: int = 1
    sigma: float = 0.125  # the Gaussian blend's sigma, a fraction of the window
    slices_per_batch: int = 16  # 2D methods: axial slices per network call
    flip_average: bool = False  # also predict the left-right mirrored source and average (2x the time)
    precision: Precision = "auto"  # 'auto': bfloat16 where the device runs it natively and the method allows it

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("overlap",), lambda i: not 0.0 <= i.overlap < 1.0, "give a fraction of the window in [0, 1), e.g. 0.5"),
        Rule(
            ("window",),
            lambda i: isinstance(i.window, tuple) and min(i.window) < 1,
            "give three positive sizes D H W, 'volume', or leave it out (the training patch)",
        ),
        Rule(("windows_per_batch",), lambda i: i.windows_per_batch < 1, "give at least 1"),
        Rule(("sigma",), lambda i: not _positive(i.sigma), "give a positive fraction of the window, e.g. 0.125"),
        Rule(("slices_per_batch",), lambda i: i.slices_per_batch < 1, "give at least 1"),
    )

    def to_dict(self) -> dict[str, Any]:
        return plain(asdict(self))


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs, fully resolved; saved whole inside every checkpoint."""

    method: str = "gan3d"
    source: str = "flair"  # the input sequence, or several comma-separated ('flair,t2'): one network channel each
    target: str = "t1"
    # budget
    epochs: int = 100  # the paper's
    steps: int | None = None  # when set, stop after this many optimiser steps instead of `epochs`
    minutes: float | None = None  # when set, also stop at the first step boundary past this many minutes of training
    # optimiser and objective
    lr: float = 1e-4  # the paper's Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # the paper does not state them; pix2pix's choice
    lr_schedule: Schedule = "constant"  # 'linear-decay': constant for the first half of the budget, then linearly to 0
    l1_weight: float = 100.0  # lambda in L = adv + lambda * L1
    gradient_weight: float = 0.0  # weight of the gradient-difference term (losses.gradient_loss); 0: off
    tail_weight: float = 0.0  # weight of the upper-tail term (losses.tail_loss); 0: off
    amp: bool = True  # bfloat16 autocast for training steps where the device runs it natively (CUDA, CPUs with AMX)
    checkpointing: bool = False  # gradient checkpointing in the generator
    # data
    batch_size: int = 1  # the paper's (one whole volume per step)
    patch: tuple[int, int, int] | None = None  # random training patch (D, H, W); None = whole grid
    # 'light': x flips, small intensity scale/shift; 'bias': light + one smooth field shading source and target alike;
    # 'mri': light + MONAI bias field, gamma, noise (source only), small affine
    augment: Augmentation = "light"
    holdout: Holdout = (
        "val+test"  # subjects kept out of training: 'val+test', 'val' (no test) or 'none' (a final model)
    )
    resample_target: bool = False  # allow targets on another grid: resampled onto the source grid via the affines
    source_dropout: float = (
        0.3  # several sources: the chance each is left out of a training example (at least one stays)
    )
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # where the weights start
    preset: str | None = None  # a method's named settings over its defaults, e.g. 'paper' for gan3d
    init: str | None = (
        None  # start from this checkpoint's weights (a path or builtin:NAME); its network settings are taken
    )
    # running
    seed: int = 0
    device: str = "auto"
    val_every: int | None = (
        None  # validate every N steps; None: `val_minutes`, else at epoch ends, at most ~10 % of the time
    )
    val_minutes: float | None = None  # validate every N minutes of training (when `val_every` is not set)
    log_every: int = 10
    workers: int | None = None  # DataLoader worker processes per rank; None: from the CPU count (data/stream.py)
    cache: str | None = (
        None  # folder of the preprocessed-array cache; None: $MODALSYNTH_CACHE or beside the run (data/cache.py)
    )
    model: NetworkSettings = field(default_factory=NetworkSettings)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(("epochs",), lambda c: c.epochs < 1, "give at least 1 epoch"),
        Rule(("steps",), lambda c: c.steps is not None and c.steps < 1, "give at least 1 step, or leave it out"),
        Rule(("minutes",), lambda c: not _unset_or_positive(c.minutes), "give a positive number of minutes"),
        Rule(("lr",), lambda c: not _positive(c.lr), "give a positive learning rate, e.g. 1e-4"),
        Rule(("betas",), lambda c: not all(0.0 <= b < 1.0 for b in c.betas), "give two numbers in [0, 1)"),
        Rule(("l1_weight",), lambda c: not (math.isfinite(c.l1_weight) and c.l1_weight >= 0), "give 0 or more"),
        Rule(
            ("gradient_weight",),
            lambda c: not (math.isfinite(c.gradient_weight) and c.gradient_weight >= 0),
            "give 0 (off) or more",
        ),
        Rule(
            ("tail_weight",),
            lambda c: not (math.isfinite(c.tail_weight) and c.tail_weight >= 0),
            "give 0 (off) or more",
        ),
        Rule(("batch_size",), lambda c: c.batch_size < 1, "give at least 1"),
        Rule(
            ("batch_size", "patch", "preprocess.grid"),
            lambda c: c.batch_size > 1 and c.patch is None and c.preprocess.grid == "auto",
            "whole 'auto' grids differ per subject and cannot share a batch; set a patch or batch_size 1",
        ),
        Rule(("source_dropout",), lambda c: not 0.0 <= c.source_dropout < 1.0, "give a chance in [0, 1)"),
        Rule(("log_every",), lambda c: c.log_every < 1, "give at least 1 step"),
        Rule(("val_every",), lambda c: c.val_every is not None and c.val_every < 1, "give at least 1 step"),
        Rule(("val_minutes",), lambda c: not _unset_or_positive(c.val_minutes), "give a positive number of minutes"),
        Rule(
            ("workers",), lambda c: c.workers is not None and c.workers < 0, "give 0 (load in the main process) or more"
        ),
        Rule(
            ("preprocess.lower_percentile", "preprocess.upper_percentile"),
            lambda c: not 0.0 <= c.preprocess.lower_percentile < c.preprocess.upper_percentile <= 100.0,
            "give 0 <= lower < upper <= 100",
        ),
        Rule(("preprocess.margin",), lambda c: c.preprocess.margin < 0, "give 0 or more voxels"),
        Rule(("preprocess.depth",), lambda c: c.preprocess.depth < 0, "give 0 or more"),
    )

    @property
    def sources(self) -> tuple[str, ...]:
        """The input sequences in channel order (the first one sets the geometry)."""
        return source_list(self.source)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the settings travel in a `weights_only` checkpoint and in YAML."""
        return plain(asdict(self))

    def write_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def check_rules(config: TrainConfig, origin: str) -> None:
    """Every `Rule` of the settings tree (the run's, its network's, its inference's): the first broken one is a
    one-line `UserError` naming each setting involved with its value, before any data is read."""
    sections: list[tuple[Any, str]] = [(config, ""), (config.model, "model."), (config.inference, "inference.")]
    for holder, prefix in sections:
        for rule in type(holder).rules:
            if rule.broken(holder):
                named = ", ".join(f"{prefix}{name} = {_value_of(holder, name)!r}" for name in rule.settings)
                raise UserError(f"{origin}: {named}: {rule.fix}")


def _value_of(holder: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        holder = getattr(holder, part)
    return plain(holder)


def check_sources(config: TrainConfig, multi_source: bool, origin: str) -> TrainConfig:
    """The config with its source list in canonical form; an empty or repeated name, the target among the sources,
    several sources for a method without them, or a dropout outside [0, 1) is a one-line `UserError`."""
    sources = source_list(config.source)
    if any(not s for s in sources) or len(set(sources)) < len(sources):
        raise UserError(
            f"{origin}: source {config.source!r}: give distinct sequence names separated by commas, e.g. flair,t2"
        )
    if canonical_modality(config.target) in sources:
        raise UserError(f"{origin}: {config.target} is the target and one of the sources; drop it from --source")
    if len(sources) > 1 and not multi_source:
        raise UserError(f"{origin}: {config.method} takes one source; use --method gan3d or pix2pix2d for several")
    return dataclasses.replace(config, source=",".join(sources))


class MethodDefaults(Protocol):
    """What settings resolution needs from a method class (see `methods.base.Method`)."""

    recipe: Mapping[str, Any]
    presets: Mapping[str, Mapping[str, Any]]
    priors: Mapping[tuple[str, str], str]
    network_settings: type[NetworkSettings]
    inference_defaults: InferenceConfig
    network_keys: tuple[str, ...]
    multi_source: bool

    def size_multiple(self, config: TrainConfig) -> tuple[int, int, int]: ...


Methods = Callable[[str], MethodDefaults]
Layer = tuple[
    str, Mapping[str, Any]
]  # (where the settings come from, e.g. "run.yaml" or "the command line"; the settings)

#: settings that may differ from the saved run on `--resume`: where it runs, how long, how often it logs
RESUMABLE_CHANGES = frozenset(
    {"device", "steps", "epochs", "minutes", "log_every", "val_every", "val_minutes", "workers", "cache"}
)
#: settings that are mappings merged key by key across layers (a YAML `model: {depth: 3}` keeps the other options)
_NESTED = ("model", "preprocess", "inference")
#: what a fine-tuning run takes from its --init checkpoint, so that the network and its input match the weights
INHERITED_BY_INIT = ("method", "source", "target", "model", "patch", "preprocess")


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


def read_settings_file(path: Path) -> dict[str, Any]:
    """The settings a YAML file sets, in today's names (a deleted setting is a `UserError`)."""
    return migrate_settings(read_yaml_mapping(path, "config file", "'epochs: 10'"), str(path))


def merge_settings(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """`layer` over `base`; the nested `model`, `preprocess` and `inference` mappings are merged key by key."""
    out = dict(base)
    for key, value in layer.items():
        if key in _NESTED and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


# --- migration: older checkpoints and files -------------------------------------------------------------------------


def migrate_settings(values: Mapping[str, Any], origin: str, format_version: int | None = None) -> dict[str, Any]:
    """Settings written by an older modalsynth, in today's names. `format_version`: the checkpoint format they come
    from (None: a YAML file or the command line, where a deleted setting is always refused)."""
    values = {k: (dict(v) if k in _NESTED and isinstance(v, Mapping) else v) for k, v in values.items()}
    if isinstance(values.get("augment"), bool):  # before the levels: true was today's 'light'
        values["augment"] = "light" if values["augment"] else "none"
    _drop_deleted(values, origin, saved=format_version is not None)
    model = values.get("model")
    if isinstance(model, dict) and any(k in model for k in MOVED_TO_INFERENCE):
        inference = values.setdefault("inference", {})
        for old, new in MOVED_TO_INFERENCE.items():
            if old in model:
                inference[new] = model.pop(old)
    if format_version is None:
        return values
    if format_version < 4 and values.get("amp") is False:  # amp used to switch bfloat16 prediction off too
        values.setdefault("inference", {})["precision"] = "float32"
    if format_version < 3 and values.get("method") in RESUNET_METHODS:
        values["model"] = {"upsample": "transposed", **(values.get("model") or {})}
    return values


def _drop_deleted(values: dict[str, Any], origin: str, saved: bool) -> None:
    for name, off in DELETED_SETTINGS.items():
        section, _, key = name.rpartition(".")
        holder = values.get(section) if section else values
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder.pop(key)
        if saved and value in off:
            continue
        fix = ("it was trained with it: use modalsynth " + LAST_RELEASE_WITH_DELETED) if saved else "delete it"
        raise UserError(
            f"{origin}: setting {name} = {value!r} was removed after modalsynth {LAST_RELEASE_WITH_DELETED} "
            f"(benchmarks/RESULTS.md says why); {fix}"
        )


# --- building a typed tree from plain values -------------------------------------------------------------------------


def build_config(values: Mapping[str, Any], methods: Methods, origin: str) -> TrainConfig:
    """A `TrainConfig` from plain values (today's names); an unknown name or a wrong value is a `UserError`."""
    values = dict(values)
    method_class = methods(str(values.get("method", TrainConfig.method)))
    nested: dict[str, type] = {
        "preprocess": PreprocessConfig,
        "model": method_class.network_settings,
        "inference": InferenceConfig,
    }
    # where each name is known, so a setting given in the wrong section is pointed to the right one
    homes = {f.name: f.name for f in fields(TrainConfig)}
    homes.update({f.name: f"{key}.{f.name}" for key, cls in nested.items() for f in fields(cls)})
    for key, cls in nested.items():
        given = values.get(key, {})
        if isinstance(given, cls):
            continue
        if not isinstance(given, Mapping):
            raise UserError(f"{origin}: '{key}' must be a mapping of settings, e.g. '{key}: {{...}}'")
        values[key] = _build(cls, given, origin, f"{key}.", homes)
    return _build(TrainConfig, values, origin, "", homes)


def _build(
    cls: type, values: Mapping[str, Any], origin: str, prefix: str, homes: Mapping[str, str] | None = None
) -> Any:
    """`cls(**values)` with every name and value checked against the dataclass's fields and type hints; an unknown
    name that another section knows (`homes`: name -> its place) is pointed there."""
    known, homes = {f.name for f in fields(cls)}, homes or {}
    unknown = set(values) - known
    moved = [f"{prefix}{k} belongs at {homes[k]}" for k in sorted(unknown) if homes.get(k, prefix + k) != prefix + k]
    if moved:
        raise UserError(f"{origin}: {'; '.join(moved)}; move it there")
    if unknown:
        raise UserError(
            f"{origin}: unknown setting(s) {', '.join(prefix + k for k in sorted(unknown))}; "
            f"known: {', '.join(prefix + k for k in sorted(known))}"
        )
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(value):
            checked[key] = value
            continue
        ok, converted = _fits(value, hints[key])
        if not ok:
            raise UserError(f"{origin}: setting {prefix}{key} should be {_describe(hints[key])}, got {value!r}")
        checked[key] = converted
    return cls(**checked)


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether a plain value fits a type hint, and the value converted to it (lists to tuples, ints to floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, converted = _fits(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in args, value
    if hint is type(None):
        return value is None, value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * (len(value) if isinstance(value, (list, tuple)) else 0)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            return False, value
        parts = [_fits(v, a) for v, a in zip(value, args)]
        return all(ok for ok, _ in parts), tuple(v for _, v in parts)
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        return whole and not isinstance(value, bool), int(value) if whole and not isinstance(value, bool) else value
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), float(value) if isinstance(
            value, (int, float)
        ) else value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return "a list" if Ellipsis in args else f"a list of {len(args)} values"
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(hint, str(hint))


# --- resolution
# --------------------------------------------------------------------------------------------------------


def method_defaults(method_class: MethodDefaults) -> dict[str, Any]:
    """The bottom layer: the shared defaults under the method's recipe, network and inference defaults."""
    values = merge_settings(TrainConfig().to_dict(), plain(dict(method_class.recipe)))
    values["model"] = method_class.network_settings().to_dict()
    values["inference"] = method_class.inference_defaults.to_dict()
    return values


def resolve_config(layers: list[Layer], methods: Methods) -> TrainConfig:
    """The one place settings are resolved: the method's defaults < preset < `--init` network < each layer in order.

    Whatever a layer sets wins, even when it equals a default. Grid and patch sizes are checked against the method's
    network here, before any data loads. When no layer names `init` (`--init none` names it too: random weights), a
    run starts from the method's shipped prior for its source/target pair if its network is the prior's.
    """
    layers = [(origin, migrate_settings(layer, origin)) for origin, layer in layers]
    layers = [
        (origin, {**layer, "init": None}) if str(layer.get("init", "")).lower() == "none" else (origin, layer)
        for origin, layer in layers
    ]
    config = _resolve_layers(layers, methods)
    prior = _default_prior(config, layers, methods(config.method))
    if prior is not None:
        spec, inherited = prior
        config = _resolve_layers([("the default start", {"init": spec})] + layers, methods, inherited)
    return config


def _default_prior(
    config: TrainConfig, layers: list[Layer], method_class: MethodDefaults
) -> tuple[str, dict[str, Any]] | None:
    """The shipped prior a run starts from when nothing names `init` (its spec and the settings it passes on): the
    method's one for this source/target pair (for several sources: the first source that has one), if the run's
    network (`network_keys`) is the prior's and no preset is asked for."""
    if any("init" in layer for _, layer in layers) or config.preset is not None:
        return None
    pairs = [(source, config.target) for source in config.sources]  # a multi-source run: the first with a prior
    prior = next((method_class.priors[pair] for pair in pairs if pair in method_class.priors), None)
    if prior is None:
        return None
    inherited = _inherited_from(prior)
    theirs = _build(method_class.network_settings, inherited.get("model", {}), prior, "model.")
    if any(getattr(config.model, k) != getattr(theirs, k) for k in method_class.network_keys):
        return None
    return prior, inherited


def _resolve_layers(layers: list[Layer], methods: Methods, inherited: dict[str, Any] | None = None) -> TrainConfig:
    """`resolve_config` without the default prior: method defaults, preset, the init checkpoint's settings
    (`inherited` when the caller has read them already) and the layers."""
    init = None
    for _, layer in layers:
        init = layer.get("init", init)
    if init:
        inherited = inherited if inherited is not None else _inherited_from(str(init))
        _check_init_pair(str(init), inherited, layers)
        layers = [(f"--init {init}", inherited)] + list(layers)
    name, preset = TrainConfig.method, None
    for _, layer in layers:
        name, preset = layer.get("method", name), layer.get("preset", preset)
    method_class = methods(str(name))
    values = {**method_defaults(method_class), "method": name}
    if preset is not None:
        if preset not in method_class.presets:
            known = ", ".join(method_class.presets) or "none"
            raise UserError(f"--preset {preset}: {name} has no such preset (its presets: {known})")
        values = merge_settings(values, plain(dict(method_class.presets[preset])))
    for origin, layer in layers:
        build_config(merge_settings(values, plain(dict(layer))), methods, origin)  # names the origin of a bad setting
        values = merge_settings(values, plain(dict(layer)))
    origin = " + ".join(o for o, _ in layers) or "defaults"
    config = check_sources(build_config(values, methods, origin), method_class.multi_source, origin)
    check_rules(config, origin)
    return fit_sizes(config, method_class.size_multiple(config))


def _check_init_pair(init: str, inherited: Mapping[str, Any], layers: list[Layer]) -> None:
    """The --init model must map this run's sources to its target; a single-source model may start a multi-source
    run that includes its source (`Method.load_init_weights` widens its input)."""
    for _, layer in layers:
        for key in ("source", "target"):
            if key not in layer or key not in inherited or layer[key] == inherited[key]:
                continue
            asked, theirs = source_list(str(layer[key])), source_list(str(inherited[key]))
            if asked == theirs or (key == "source" and len(theirs) == 1 and theirs[0] in asked):
                continue
            raise UserError(
                f"--init {init}: that model maps {inherited['source']} -> {inherited['target']}, but "
                f"--{key} {layer[key]} was asked; fine-tune from a {key} {layer[key]} model or drop --{key}"
            )


def _inherited_from(init: str) -> dict[str, Any]:
    from . import builtin
    from .checkpoints import Checkpoint

    ckpt = Checkpoint.load(builtin.resolve(init))
    saved = migrate_settings(ckpt.config, f"--init {init}", ckpt.format_version)
    return {k: saved[k] for k in INHERITED_BY_INIT if k in saved}


def config_from_checkpoint(saved: Mapping[str, Any], format_version: int, methods: Methods, origin: str) -> TrainConfig:
    """The settings a checkpoint holds, migrated from its format version and checked."""
    return build_config(migrate_settings(saved, origin, format_version), methods, origin)


def resume_config(saved: TrainConfig, layers: list[Layer], checkpoint: Path, methods: Methods) -> TrainConfig:
    """The saved run's settings with the changes `--resume` allows; any other setting that differs is a `UserError`."""
    values = saved.to_dict()
    for origin, layer in layers:
        layer = plain(migrate_settings(layer, origin))
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
    config = build_config(values, methods, str(checkpoint))
    check_rules(config, " + ".join(origin for origin, _ in layers) or str(checkpoint))
    return config


def fit_sizes(config: TrainConfig, multiple: tuple[int, int, int]) -> TrainConfig:
    """The config with an `auto` grid padded to what the network needs; a fixed grid or a patch that does not divide
    by the network's size multiple is a `UserError` naming the nearest valid sizes."""
    grid, patch = config.preprocess.grid, config.patch
    if patch is not None:
        _check_triplet("--patch", tuple(patch), multiple, config)
    if grid != "auto":
        _check_triplet("--grid", tuple(grid), multiple, config)
        return config
    need = max(multiple)
    if 2**config.preprocess.depth % need == 0:
        return config
    return dataclasses.replace(config, preprocess=dataclasses.replace(config.preprocess, depth=int(math.log2(need))))


def _check_triplet(option: str, sizes: tuple[int, ...], multiple: tuple[int, int, int], config: TrainConfig) -> None:
    if len(sizes) != 3 or any(int(s) < 1 for s in sizes):
        raise UserError(f"{option} {' '.join(map(str, sizes))}: give three positive integers D H W")
    if all(s % m == 0 for s, m in zip(sizes, multiple)):
        return
    down = [max(m, s // m * m) for s, m in zip(sizes, multiple)]
    up = [-(-s // m) * m for s, m in zip(sizes, multiple)]
    rule = " x ".join(map(str, multiple))
    model = ", ".join(f"{k} {getattr(config.model, k)}" for k in ("depth", "stem") if hasattr(config.model, k))
    raise UserError(
        f"{option} {' '.join(map(str, sizes))}: the {config.method} network (model {model or 'defaults'}) needs sizes "
        f"divisible by {rule} per axis; use {option} {' '.join(map(str, up))} or {option} {' '.join(map(str, down))}"
    )


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
    return plain(a) == plain(b)
