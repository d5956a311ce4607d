"""Synthesis methods, one file each, registered by name (`gan3d`, `pix2pix2d`, `ddpm`, `lut`)."""

from .base import Application, Method, build_method, method_class, method_names, register

__all__ = ["Application", "Method", "build_method", "method_class", "method_names", "register"]
