"""`modalsynth demo`: the main job on built-in data, small enough for a CPU in minutes: simulate, train, predict,
evaluate."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .config import TrainConfig, resolve_config
from .data.simulate import SMALL_GRID, simulate_dataset
from .methods import method_class
from .predict_jobs import predict_path
from .training import train

log = logging.getLogger(__name__)

DEMO_SUBJECTS = 10
DEMO_STEPS = 100
DEMO_MODEL = {
    "stem": "residual",
    "base_channels": 16,
    "full_res_channels": None,
    "depth": 4,
    "disc_channels": 32,
    "disc_layers": 3,
}
DEMO_INFERENCE = {"window": None, "overlap": 0.5, "windows_per_batch": 1}


def demo_config(steps: int = DEMO_STEPS) -> TrainConfig:
    """The paper's GAN with a smaller generator and the small grid, trained briefly with a higher learning rate."""
    settings = {
        "method": "gan3d",
        "steps": steps,
        "lr": 5e-4,
        "model": dict(DEMO_MODEL),
        "inference": dict(DEMO_INFERENCE),
        "val_every": 50,
        "device": "auto",
        "preprocess": {"grid": list(SMALL_GRID)},
        "patch": None,
        "batch_size": 1,
    }
    return resolve_config([("the demo", settings)], method_class)


def run_demo(out: Path, subjects: int = DEMO_SUBJECTS, steps: int = DEMO_STEPS) -> dict:
    """Simulate `subjects` pairs, train the 3D GAN for `steps`, predict the test split, evaluate it; returns the
    summary."""
    from .evaluation import EvaluationOptions, evaluate_folders

    out = Path(out)
    started = time.perf_counter()
    data, run, pred, report = out / "data", out / "run", out / "predictions", out / "report"
    log.info(f"[1/4] simulating {subjects} FLAIR/T1 subjects on the small grid {SMALL_GRID} -> {data}")
    simulate_dataset(data, subjects=subjects, seed=0, grid=SMALL_GRID, progress=True)
    log.info(f"[2/4] training the 3D GAN for {steps} steps -> {run}")
    best = train(demo_config(steps), data, run)
    log.info(f"[3/4] predicting the held-out test subjects -> {pred}")
    predict_path(best, data, pred, device="auto", split="test")
    log.info(f"[4/4] evaluating -> {report}")
    summary = evaluate_folders(pred, data, "t1", report, EvaluationOptions(source="flair", fid=True))
    minutes = (time.perf_counter() - started) / 60
    log.info(f"demo finished in {minutes:.1f} min: synthetic T1 in {pred}, report in {report}/summary.md")
    return summary
