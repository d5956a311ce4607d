"""Quality per minute on real data: the project's methods and the outside yardstick on the same folds and minutes.

Runs `modalsynth benchmark --folds K --minutes M` (every subject tested once), then the yardstick of
../shared/yardsticks (a plain MONAI UNet + L1) on exactly the same folds and minutes, scores its predictions with
`modalsynth evaluate`, and prints one table (brain-masked metrics, mean ± sd over subjects) and writes JSON.
Random folds over whatever subjects DATA holds; the quality protocol of issue 40 (training recipes on 4 fixed folds of
the eleven real subjects) is `quality_cv.py`.

    python benchmarks/real_cv.py --data ../shared/data/real-dev --out bench_realcv --minutes 10 --folds 2 \
        --methods lut,gan3d,pix2pix2d --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

YARDSTICK = Path(__file__).resolve().parents[2] / "shared" / "yardsticks" / "monai_unet_l1.py"
KEYS = [
    ("ssim_brain", "SSIM brain ↑"),
    ("mae_brain", "MAE brain ↓"),
    ("rmse_brain", "RMSE brain ↓"),
    ("psnr_brain", "PSNR brain ↑"),
    ("ssim2d_brain_coronal", "SSIM coronal ↑"),
    ("ssim2d_brain_sagittal", "SSIM sagittal ↑"),
    ("streak_ratio", "slice streaks ↓"),
    ("slice_jitter", "slice jitter ×1000 ↓"),
    ("gw_contrast_ratio", "grey/white contrast kept →1"),
    ("lesion_contrast_error", "lesion contrast err ↓"),
]


def run(command: list[str], env: dict, log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with log.open("a") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        subprocess.run(command, env=env, stdout=fh, stderr=subprocess.STDOUT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--methods", default="lut,gan3d,pix2pix2d")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--config", type=Path, help="benchmark YAML: settings per method (the ablation under test)")
    ap.add_argument("--skip-yardstick", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    started = time.time()
    bench = [
        sys.executable,
        "-m",
        "modalsynth",
        "benchmark",
        "--data",
        str(args.data),
        "--out",
        str(args.out / "project"),
        "--methods",
        args.methods,
        "--minutes",
        str(args.minutes),
        "--folds",
        str(args.folds),
        "--grid",
        "auto",
        "--device",
        "cpu",
        "--resume",
    ]
    if args.config:
        bench += ["--config", str(args.config)]
    run(bench, env, log)
    table = json.loads((args.out / "project" / "table1.json").read_text())
    rows = [
        {
            "method": r["method"],
            "metrics": r["metrics"],
            "fid": r["fid"],
            "infer_s": r["infer_s_per_volume"],
            "steps_per_min": r.get("steps_per_min"),
            "patches_per_step": r["config"].get("batch_size", 1),
        }
        for r in table["rows"]
    ]
    if not args.skip_yardstick:
        pred = args.out / "yardstick" / "predictions"
        for split in table["splits"]:
            if all((pred / s / "t1.nii.gz").exists() for s in split["test"]):
                continue
            run(
                [
                    sys.executable,
                    str(YARDSTICK),
                    str(args.data),
                    str(pred),
                    str(args.minutes),
                    "--test",
                    ",".join(split["test"]),
                    "--threads",
                    str(args.threads),
                ],
                env,
                log,
            )
        report = args.out / "yardstick" / "evaluation"
        run(
            [
                sys.executable,
                "-m",
                "modalsynth",
                "evaluate",
                "--pred",
                str(pred),
                "--ref",
                str(args.data),
                "--target",
                "t1",
                "--out",
                str(report),
            ],
            env,
            log,
        )
        summary = json.loads((report / "summary.json").read_text())
        rows.append(
            {
                "method": "yardstick (MONAI UNet + L1)",
                "metrics": summary["metrics"],
                "fid": {k: v.get("value") for k, v in summary["fid"].items() if isinstance(v, dict)},
            }
        )
    lines = [
        f"{args.folds}-fold CV on {args.data} ({sum(len(s['test']) for s in table['splits'])} subjects, each tested "
        f"once), {args.minutes:g} min of training per fold and method, {args.threads} thread(s)",
        "",
        "| method | " + " | ".join(h for _, h in KEYS) + " | FID 2.5D ↓ | steps/min × patches |",
        "|---|" + "---|" * (len(KEYS) + 2),
    ]
    for r in rows:
        cells = []
        for key, _ in KEYS:
            m = r["metrics"].get(key) or {}
            cells.append(f"{m.get('mean', float('nan')):.4f} ± {m.get('sd', float('nan')):.4f}" if m else "n/a")
        fid = r["fid"].get("2.5d")
        rate = f"{r['steps_per_min']:.1f} × {r['patches_per_step']}" if r.get("steps_per_min") else ""
        lines.append(
            f"| {r['method']} | " + " | ".join(cells) + f" | {fid if fid is None else round(fid, 1)} | {rate} |"
        )
    text = "\n".join(lines) + f"\n\n(total {(time.time() - started) / 60:.0f} min)\n"
    (args.out / "real_cv.md").write_text(text)
    (args.out / "real_cv.json").write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )
    print(text)


if __name__ == "__main__":
    main()
