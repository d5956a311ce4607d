"""Synthesis methods, one file each, registered by name (`gan3d`, `pix2pix2d`, `ddpm`, `lut`)."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import UserError
from .base import REGISTRY, Method, register

__all__ = ["Method", "build_method", "method_class", "method_names", "register"]


def _load_builtin() -> None:
    """Import the built-in methods (each registers itself); done lazily to keep `import modalsynth` light."""
    from . import ddpm, gan3d, lut, pix2pix2d  # noqa: F401


def method_names() -> list[str]:
    """Names of the registered methods."""
    _load_builtin()
    return sorted(REGISTRY)


def method_class(name: str) -> type[Method]:
    """The registered class of a method name (a `UserError` lists the known names otherwise)."""
    _load_builtin()
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def build_method(config: TrainConfig, training: bool = True) -> Method:
    """Instantiate the method a resolved config names; `training=False` builds only what prediction needs."""
    return method_class(config.method)(config, training=training)
