"""Synthesis methods, one file each, registered by name (`gan3d`, `pix2pix2d`, `ddpm`, `lut`)."""

from .base import Method, build_method, method_names, register

__all__ = ["Method", "build_method", "method_names", "register"]
