"""A method's own optimiser recipe (e.g. pix2pix's lr 2e-4), and how a user's settings take precedence over it."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import TrainConfig

_DEFAULTS = TrainConfig()


def with_recipe(config: TrainConfig, recipe: dict[str, Any]) -> TrainConfig:
    """A copy of `config` whose recipe keys (lr, betas, l1_weight) take the method's values unless the user set them.

    Precedence: `config.model[key]`, then a top-level setting that differs from `TrainConfig`'s default (the user
    changed it), then the recipe. The caller's config is left untouched.
    """
    values = {}
    for key, value in recipe.items():
        if key in config.model:
            value = config.model[key]
        elif getattr(config, key) != getattr(_DEFAULTS, key):
            value = getattr(config, key)
        values[key] = tuple(value) if key == "betas" else value
    return dataclasses.replace(config, **values)
