"""modalsynth: synthesise a missing 3D medical image modality from an acquired one."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modalsynth")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
