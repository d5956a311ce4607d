#!/usr/bin/env python3
"""Reproduce the built-in simulator prior: gan3d's default recipe trained on simulated FLAIR/T1 pairs only.

It is a starting point for fine-tuning on real scans (`modalsynth train --init builtin:sim-flair-t1`), not a model to
predict with: it has seen no real scan, so no real subject leaks into a cross-validation that starts from it.

    OMP_NUM_THREADS=1 python scripts/build_sim_prior.py --work runs/sim-prior --steps 1321
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from build_builtin_model import SEED, export_builtin  # the same generator-only float16 export as the default model

NAME = "sim-flair-t1"
SUBJECTS, SIM_SEED, SIM_GRID = 24, 26, ("144", "230", "192")  # about 1 mm, the real scans' resolution


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="folder for the simulated data (WORK/sim) and the run (WORK/run)"
    )
    ap.add_argument("--steps", type=int, default=1321, help="training steps (the shipped prior's count is in its card)")
    ap.add_argument("--export-only", action="store_true")
    args = ap.parse_args()
    data, run = args.work / "sim", args.work / "run"
    modalsynth = [sys.executable, "-m", "modalsynth"]
    if not args.export_only:
        if not data.is_dir():
            subprocess.run(
                [
                    *modalsynth,
                    "simulate",
                    "--out",
                    str(data),
                    "--subjects",
                    str(SUBJECTS),
                    "--seed",
                    str(SIM_SEED),
                    "--grid",
                    " ".join(SIM_GRID),
                ],
                check=True,
            )
        subprocess.run(
            [
                *modalsynth,
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--method",
                "gan3d",
                "--holdout",
                "none",
                "--seed",
                str(SEED),
                "--device",
                "cpu",
                "--steps",
                str(args.steps),
            ],
            check=True,
        )
    export_builtin(run, NAME)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    main()
