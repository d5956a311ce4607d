"""One-file checkpoints as a versioned dataclass: weights, optimiser state, step, config, split, intensities.

Written atomically and read with `torch.load(weights_only=True)`; this module is the only place that knows the keys.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import UserError
from .io import atomic_write

FORMAT = "modalsynth-checkpoint"
FORMAT_VERSION = 4
#: versions this code reads; version 1 lacked `elapsed_s` (training seconds used), read as 0. The settings of older
#: versions are brought up to date by `config.migrate_settings` (version 4: the inference settings are their own tree)
READABLE_VERSIONS = (1, 2, 3, 4)


@dataclass
class Checkpoint:
    """What a training run leaves behind. `state` holds `{"nets": ..., "optimizers": ..., "extra": ...}`."""

    config: dict[str, Any]
    state: dict[str, Any]
    step: int = 0
    best_val_mae: float = float("inf")
    target_intensity: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[str]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # training wall-clock seconds used so far (a `--minutes` budget continues from it)
    world: int = 1  # the number of ranks that trained it (a resume needs as many)
    package_version: str = __version__
    format_version: int = FORMAT_VERSION

    def save(self, path: Path) -> Path:
        """Write atomically (temporary file in the same folder, then rename): a crash never leaves half a file."""
        payload = {"format": FORMAT, **asdict(self)}
        payload["format_version"] = FORMAT_VERSION
        return atomic_write(Path(path), ".pt", lambda tmp: _save_bytes(payload, tmp))

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        """Read a checkpoint; a missing, corrupt, foreign or other-version file is a one-line `UserError`."""
        payload = _read_payload(Path(path))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in payload.items() if k in known})


def _save_bytes(payload: dict[str, Any], tmp: str | Path) -> None:
    """torch.save through a file object: the archive's inner folder is then always 'archive', not the (random)
    temporary file's name, so the same checkpoint always has the same bytes (a built-in model's sha256 reproduces)."""
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)


def _read_payload(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found; train one with `modalsynth train` or check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the checkpoint file inside it (e.g. {path}/best.pt)")
    if not zipfile.is_zipfile(path):
        raise UserError(
            f"{path}: corrupt, truncated or not a checkpoint at all; use the .pt file `modalsynth train` wrote"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"{path}: holds objects other than weights and settings; refusing to unpickle it; use a checkpoint "
            f"written by `modalsynth train` that you trust"
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(
            f"{path}: corrupt or truncated checkpoint ({str(exc).splitlines()[0][:80]}); use another copy"
        ) from exc
    if not isinstance(payload, dict):
        raise UserError(f"{path}: not a modalsynth checkpoint; pass a file written by `modalsynth train`")
    if payload.get("format") == "modalsynth-checkpoint-1":  # version 1 named its version inside the format string
        payload = {**payload, "format": FORMAT, "format_version": 1}
        payload.setdefault("package_version", payload.pop("version", "?"))
    if payload.get("format") != FORMAT or "config" not in payload or "state" not in payload:
        raise UserError(
            f"{path}: not a modalsynth checkpoint (a plain state_dict or another program's file?); "
            "pass a file written by `modalsynth train`"
        )
    version = payload.get("format_version")
    if version not in READABLE_VERSIONS:
        raise UserError(
            f"{path}: checkpoint format version {version} (written by modalsynth "
            f"{payload.get('package_version', '?')}); this modalsynth {__version__} reads version(s) "
            f"{', '.join(map(str, READABLE_VERSIONS))}: use the matching modalsynth release"
        )
    return payload
