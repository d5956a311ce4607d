"""Training configuration: a dataclass whose defaults reproduce the paper, loadable from YAML, overridable by options."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .data.preprocess import PreprocessConfig
from .errors import UserError


@dataclass
class TrainConfig:
    """Everything a training run needs; saved whole inside every checkpoint."""

    method: str = "gan3d"
    source: str = "flair"
    target: str = "t1"
    epochs: int = 100  # the paper's
    steps: int | None = None  # when set, stop after this many optimiser steps instead of `epochs`
    batch_size: int = 1  # the paper's (one whole volume per step)
    lr: float = 1e-4  # the paper's Adam learning rate
    betas: tuple[float, float] = (0.5, 0.999)  # the paper does not state them; pix2pix's choice
    l1_weight: float = 100.0  # lambda in L = adv + lambda * L1; 100 beat the paper's 1 on simulated data (DESIGN.md)
    adversarial: str = "bce"  # 'bce' (eq. 1's log terms) or 'lsgan'
    patch: tuple[int, int, int] | None = None  # random training patch (D, H, W); None = whole grid
    augment: bool = True  # random flips along x and small intensity scaling/shift
    amp: bool = True  # mixed precision (bfloat16) on CUDA; ignored on CPU
    checkpointing: bool = False  # gradient checkpointing in the generator
    seed: int = 0
    device: str = "auto"
    resample_target: bool = False  # allow targets on another grid: resampled onto the source grid via the affines
    val_every: int | None = None  # validate every N steps; None = once per epoch
    log_every: int = 10
    model: dict[str, Any] = field(default_factory=dict)  # network options of the method (base_channels, depth, ...)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the config travels in a `weights_only` checkpoint and in YAML."""
        values = asdict(self)
        values["preprocess"] = self.preprocess.to_dict()
        return _plain(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any], origin: str = "config") -> "TrainConfig":
        """Build from a dict (YAML or checkpoint); unknown keys are a `UserError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise UserError(f"{origin}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        values = dict(values)
        pre = values.pop("preprocess", None)
        for key in ("patch", "betas"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        config = cls(**values)
        if pre is not None:
            pre_known = {f.name for f in fields(PreprocessConfig)}
            bad = set(pre) - pre_known
            if bad:
                raise UserError(f"{origin}: unknown preprocess setting(s) {', '.join(sorted(bad))}")
            config.preprocess = PreprocessConfig.from_dict(pre)
        return config

    @classmethod
    def from_yaml(cls, path: Path) -> "TrainConfig":
        """Read a YAML file of settings (any subset of the fields)."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a mapping of settings, e.g. 'epochs: 10'")
        return cls.from_dict(values, origin=str(path))

    def write_yaml(self, path: Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
