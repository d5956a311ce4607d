"""Measure the L1 weight lambda of eq. (1) (the paper writes 1, pix2pix uses 100) on simulated data.

Same data, split, seed and budget for every lambda; the held-out subjects are scored inside the brain.

    python benchmarks/lambda_sweep.py --out results/lambda --lambdas 1,10,100 --steps 150
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/lambda"))
    parser.add_argument("--lambdas", default="1,10,100")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()

    import torch

    from modalsynth.data.datasets import prepare_pairs
    from modalsynth.data.pairs import require_pairs
    from modalsynth.data.simulate import SMALL_GRID, simulate_dataset
    from modalsynth.demo import demo_config
    from modalsynth.inference import Predictor
    from modalsynth.metrics import mae, ssim3d
    from modalsynth.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.out / "data"
    if not data.exists():
        simulate_dataset(data, subjects=args.subjects, seed=123, grid=SMALL_GRID)
    rows = []
    for lam in (float(v) for v in args.lambdas.split(",")):
        config = demo_config(args.steps)
        config.l1_weight = lam
        config.val_every = args.steps
        run = args.out / f"lambda-{lam:g}"
        start = time.perf_counter()
        last = train(config, data, run, progress=False).parent / "last.pt"
        seconds = time.perf_counter() - start
        predictor = Predictor.from_checkpoint(last, "cpu")
        test = prepare_pairs([p for p in require_pairs(data, "flair", "t1") if p.subject in predictor.split["test"]], config.preprocess)
        scores = {"mae": [], "ssim": []}
        for s in test:
            pred = predictor.predict_array(s.source)
            p01, r01 = (pred + 1) / 2, (s.target + 1) / 2
            scores["mae"].append(mae(p01, r01, s.mask))
            scores["ssim"].append(ssim3d(p01, r01, s.mask))
        rows.append({"lambda": lam, "steps": args.steps, "train_s": seconds, "test_subjects": len(test),
                     "brain_mae": float(np.mean(scores["mae"])), "brain_ssim": float(np.mean(scores["ssim"]))})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "lambda_sweep.json").write_text(json.dumps(rows, indent=1))
    print("| lambda | brain SSIM | brain MAE | train s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['lambda']:g} | {r['brain_ssim']:.4f} | {r['brain_mae']:.4f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
