#!/usr/bin/env python3
"""Reproduce a built-in model: train a recipe on every real subject given, then export it as `--name`.

The export keeps what prediction needs (generator weights in half precision, the resolved settings, the target
intensities) and drops the discriminator and optimiser states, then prints the sha256 for the model card.

    OMP_NUM_THREADS=1 python scripts/build_builtin_model.py --data DATA --run runs/builtin --steps 1000
    python scripts/build_builtin_model.py --export-only --run runs/builtin      # export an existing run
    python scripts/build_builtin_model.py --name flair-t2-t1 ...                # another built-in model
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import torch

from modalsynth import builtin
from modalsynth.checkpoints import Checkpoint
from modalsynth.config import config_from_checkpoint
from modalsynth.io import file_digest
from modalsynth.methods import method_class
from modalsynth.methods.gan3d import GAN3D

SEED = 0


def export(run: Path, destination: Path) -> str:
    """RUN/last.pt -> a generator-only, float16 checkpoint at `destination`; returns its sha256."""
    ckpt = Checkpoint.load(run / "last.pt")
    config = config_from_checkpoint(ckpt.config, ckpt.format_version, method_class, str(run / "last.pt"))
    # prediction settings follow gan3d's current default (they do not change the weights)
    config = dataclasses.replace(config, inference=GAN3D.inference_defaults)
    generator = {k: (v.half() if v.is_floating_point() else v) for k, v in ckpt.state["nets"]["generator"].items()}
    slim = Checkpoint(
        config=config.to_dict(),
        state={"nets": {"generator": generator}, "optimizers": {}, "extra": {}},
        step=ckpt.step,
        best_val_mae=ckpt.best_val_mae,
        target_intensity=ckpt.target_intensity,
        split=ckpt.split,
        elapsed_s=0.0,  # the training time is the card's, not the file's: a rebuild writes the same bytes
    )
    slim.save(destination)
    return file_digest(destination)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="the real subjects (the card says which); needed unless --export-only")
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, help="training steps (the shipped model's count is in its card)")
    ap.add_argument("--minutes", type=float, help="or a time budget instead")
    ap.add_argument("--export-only", action="store_true")
    ap.add_argument("--name", default=builtin.DEFAULT, choices=sorted(builtin.MODELS), help="the built-in model")
    ap.add_argument(
        "--config",
        type=Path,
        help="a training YAML over the default recipe (e.g. the recipe a shipped model was trained with)",
    )
    args = ap.parse_args()
    if not args.export_only:
        if args.data is None:
            ap.error("--data is needed to train (or pass --export-only)")
        budget = ["--steps", str(args.steps)] if args.steps else ["--minutes", str(args.minutes or 40)]
        extra = ["--config", str(args.config)] if args.config else []
        subprocess.run(
            [
                sys.executable,
                "-m",
                "modalsynth",
                "train",
                "--data",
                str(args.data),
                "--out",
                str(args.run),
                "--holdout",
                "none",
                "--seed",
                str(SEED),
                "--device",
                "cpu",
                *budget,
                *extra,
            ],
            check=True,
        )
    export_builtin(args.run, args.name)


def export_builtin(run: Path, name: str) -> None:
    """Export RUN into the built-in model NAME's weights file and print what the model card needs."""
    model = builtin.MODELS[name]
    digest = export(run, model.path)
    size = model.path.stat().st_size / 2**20
    print(f"wrote {model.path} ({size:.1f} MiB, step {Checkpoint.load(model.path).step}); sha256 {digest}")
    print("put this sha256 in src/modalsynth/builtin/__init__.py and in the model card")


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
