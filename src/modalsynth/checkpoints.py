"""One-file checkpoints: weights, optimiser state, step, config, preprocessing, version; atomic and `weights_only`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import UserError
from .io import atomic_write

FORMAT = "modalsynth-checkpoint-1"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then rename): a crash never leaves half a file."""
    payload = {"format": FORMAT, "version": __version__, **payload}
    return atomic_write(Path(path), ".pt", lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with `weights_only=True` (no arbitrary unpickling); a missing, corrupt or foreign file is a `UserError`."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found; train one with `modalsynth train` or check the path")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; pass the checkpoint file inside it (e.g. {path}/best.pt)")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: corrupt, truncated or not a checkpoint at all; use the .pt file `modalsynth train` wrote")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: holds objects other than weights and settings; refusing to unpickle it") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({str(exc).splitlines()[0][:80]}); use another copy") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a modalsynth checkpoint; pass a file written by `modalsynth train`")
    return payload
