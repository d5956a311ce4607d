"""Shared fixtures: tiny synthetic NIfTI files and the optional real-dev folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REAL_DEV = Path(os.environ.get("MODALSYNTH_REAL_DEV", Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev"))


@pytest.fixture
def real_dev() -> Path:
    """The real paired subjects; tests that use it are skipped where the folder is absent."""
    if not REAL_DEV.is_dir():
        pytest.skip(f"real-dev data not found at {REAL_DEV}")
    return REAL_DEV


def blob_volume(shape=(20, 24, 28), seed=0) -> np.ndarray:
    """A smooth positive 'head' in a zero background, for I/O and preprocessing tests."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = sum(g**2 for g in grids)
    head = (radius < 0.6).astype(np.float32)
    return (head * (100 + 50 * grids[0] + 10 * rng.standard_normal(shape))).astype(np.float32)
