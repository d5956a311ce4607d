"""Shared fixtures: tiny synthetic NIfTI files and the optional real-dev folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from modalsynth.cli import log_to_console

# One thread per test process: on a shared 2-core machine, two threads per process are several times slower.
torch.set_num_threads(1)
# The library's log reaches the console as the command line shows it, so tests see what a user sees.
log_to_console()

REAL_DEV = Path(
    os.environ.get("MODALSYNTH_REAL_DEV", Path(__file__).resolve().parents[2] / "shared" / "data" / "real-dev")
)


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


TINY_GRID = (16, 48, 40)
TINY_MODEL = {"base_channels": 8, "depth": 2, "disc_channels": 8, "disc_layers": 2}


@pytest.fixture(scope="session")
def tiny_sim(tmp_path_factory) -> Path:
    """Six simulated FLAIR/T1 subjects on a tiny grid, made once per test session."""
    from modalsynth.data.simulate import simulate_dataset

    root = tmp_path_factory.mktemp("tiny-sim")
    simulate_dataset(root, subjects=6, seed=0, grid=TINY_GRID)
    return root


def tiny_config(**overrides):
    """A resolved training config small enough for a CPU test: tiny grid, tiny networks, no logging noise."""
    from modalsynth.config import resolve_config
    from modalsynth.methods import method_class

    values = {
        "steps": 4,
        "model": dict(TINY_MODEL),
        "device": "cpu",
        "log_every": 1000,
        "augment": "light",
        "preprocess": {"grid": list(TINY_GRID)},
        "patch": None,
        "batch_size": 1,
    }
    values.update(overrides)
    return resolve_config([("the test", values)], method_class)
