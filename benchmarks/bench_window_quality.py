"""Where the slow path's quality comes from: one gan3d checkpoint predicted with several window settings, side by side.

Every row predicts the same real-dev volumes with `Predictor.predict_volume` (preprocessing, crop, network,
postprocessing) and scores brain SSIM/MAE against the real T1 with the evaluation's protocol. Rows are window size /
overlap / Gaussian sigma (as a share of the window) / how the instance norms get their statistics:
  - "window": each window's own (how the model was trained on 64^3 patches; the default and the slow path);
  - "fixed K": statistics averaged over K random 64^3 patches of the volume itself (sampled as training samples them:
    a uniform start holding > 10 % foreground), then frozen, so every window (or the whole volume) sees the same ones;
  - "none": no normalisation at all (the frozen statistics left at mean 0, variance 1).
A row with "volume" runs the whole cropped volume in one pass; a row marked "bf16" predicts with `amp` on, i.e. the
default path on a CPU with native bfloat16 (AMX tiles: bf16 autocast, channels-last), every other row with
`amp` off (float32); a bf16 row's max abs difference to the same row in float32 is printed. Times are wall seconds
of `predict_volume` (one pass, --threads threads; noisy: a guide, not a race); --only LABEL[;LABEL...] runs just those
rows.

    python benchmarks/bench_window_quality.py --checkpoint src/modalsynth/builtin/flair-t1.pt \
        --subjects brats2018-case1,brats2018-case4,ms-patient07 --json /tmp/window_quality.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch

from modalsynth.data.preprocess import crop_window, foreground_mask
from modalsynth.inference import Predictor
from modalsynth.io import load_volume
from modalsynth.methods.base import cpu_has_native_bf16
from modalsynth.metrics import subject_metrics

REAL_DEV = pathlib.Path(__file__).resolve().parents[2] / "shared/data/real-dev"
# (label, window (None: the training patch; "volume": one pass), overlap, sigma, statistics)
ROWS = [
    ("default: 64^3 / 0.25 / sigma 0.25", None, 0.25, 0.25, "window"),
    ("slow path: 64^3 / 0.5 / sigma 0.25", None, 0.5, 0.25, "window"),
    ("64^3 / 0.5 / sigma 0.125", None, 0.5, 0.125, "window"),
    ("64^3 / 0.5 / sigma 0.05 (nearest centre)", None, 0.5, 0.05, "window"),
    ("64^3 / 0.25 / sigma 0.05", None, 0.25, 0.05, "window"),
    ("64^3 / 0.25 / sigma 0.125", None, 0.25, 0.125, "window"),
    ("80^3 / 0.25 / sigma 0.25", [80, 80, 80], 0.25, 0.25, "window"),
    ("96^3 / 0.25 / sigma 0.25", [96, 96, 96], 0.25, 0.25, "window"),
    ("whole volume", "volume", 0.0, 0.25, "window"),
    ("whole volume, fixed statistics of 16 patches", "volume", 0.0, 0.25, "fixed 16"),
    ("64^3 / 0.25 / sigma 0.25, fixed statistics of 16 patches", None, 0.25, 0.25, "fixed 16"),
    ("whole volume, no normalisation", "volume", 0.0, 0.25, "none"),
    ("64^3 / 0.4 / sigma 0.25", None, 0.4, 0.25, "window"),
    ("default: 64^3 / 0.25 / sigma 0.25, bf16", None, 0.25, 0.25, "window bf16"),
    ("slow path: 64^3 / 0.5 / sigma 0.25, bf16", None, 0.5, 0.25, "window bf16"),
    ("80^3 / 0.25 / sigma 0.25, bf16", [80, 80, 80], 0.25, 0.25, "window bf16"),
    ("64^3 / 0.4 / sigma 0.25, bf16", None, 0.4, 0.25, "window bf16"),
    ("64^3 / 0.33 / sigma 0.25, bf16", None, 0.33, 0.25, "window bf16"),
]


class FrozenNormStatistics:
    """Gives a generator's instance norms running statistics, set from patches of the volume about to be predicted."""

    def __init__(self, net: torch.nn.Module):
        self.net = net
        self.norms = [m for m in net.modules() if isinstance(m, torch.nn.InstanceNorm3d)]
        for m in self.norms:
            m.register_buffer("running_mean", torch.zeros(m.num_features))
            m.register_buffer("running_var", torch.ones(m.num_features))
            m.momentum = 1.0  # one batched pass sets them to the batch mean of the per-patch statistics

    def use(self, frozen: bool) -> None:
        for m in self.norms:
            m.track_running_stats = frozen

    def reset(self) -> None:
        for m in self.norms:
            m.running_mean.zero_()
            m.running_var.fill_(1.0)

    @torch.no_grad()
    def calibrate(self, source: np.ndarray, count: int, seed: int = 0, size: int = 64) -> None:
        rng = np.random.default_rng(seed)
        foreground = source > source.min()
        shape = (size,) * source.ndim
        patches = []
        for _ in range(1000 * count):  # bounded: a volume with too little foreground fails below instead of hanging
            start = tuple(int(rng.integers(0, max(n - size, 0) + 1)) for n in source.shape)
            if crop_window(foreground, start, shape, False).mean() > 0.1:
                patches.append(crop_window(source, start, shape, -1.0).astype(np.float32))  # training's fill
            if len(patches) == count:
                break
        else:
            raise SystemExit(f"fewer than {count} {size}^3 patches with > 10 % foreground in a {source.shape} volume")
        self.net.train()
        self.net(torch.from_numpy(np.stack(patches))[:, None])
        self.net.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=pathlib.Path, required=True)
    ap.add_argument("--subjects", default="brats2018-case1,brats2018-case4,ms-patient07")
    ap.add_argument("--data", type=pathlib.Path, default=REAL_DEV)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench_window_quality.json"))
    ap.add_argument("--only", default="", help="run only these row labels, separated by ';'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    predictor = Predictor.from_checkpoint(args.checkpoint, "cpu")
    norms = FrozenNormStatistics(predictor.method.nets["generator"])
    rows = ROWS if norms.norms else [row for row in ROWS if row[4].startswith("window")]
    if args.only:
        wanted = args.only.split(";")
        rows = [row for row in rows if row[0] in wanted]
    if any(row[4].endswith(" bf16") for row in rows) and not cpu_has_native_bf16():
        print("this CPU has no native bfloat16: the bf16 rows run in float32")
    if not norms.norms:
        print("the generator has no instance norms (model.norm is not 'instance'): the frozen-statistics rows are skipped")
    plain_predict = predictor.predict_array
    subjects = args.subjects.split(",")
    results: list[dict] = []
    for subject in subjects:
        flair = load_volume(args.data / subject / "flair.nii.gz")
        t1 = load_volume(args.data / subject / "t1.nii.gz")
        brain = foreground_mask(t1.data)
        outputs: dict[str, np.ndarray] = {}
        for label, window, overlap, sigma, statistics in rows:
            predictor.config.model.update(window=window, overlap=overlap, window_sigma=sigma)
            bf16 = statistics.endswith(" bf16")
            statistics = statistics.removesuffix(" bf16")
            predictor.config.amp = bf16  # bf16: prediction's own CPU bfloat16 path (channels-last, native bf16 only)

            def predict_array(source: np.ndarray, seed: int = 0, statistics: str = statistics) -> np.ndarray:
                norms.reset()
                norms.use(statistics != "window")
                if statistics.startswith("fixed"):
                    norms.calibrate(source, int(statistics.split()[1]))
                return plain_predict(source, seed)

            predictor.predict_array = predict_array  # type: ignore[method-assign]
            start = time.perf_counter()
            out = predictor.predict_volume(flair).data
            seconds = time.perf_counter() - start
            m = subject_metrics(out, t1.data, brain)
            results.append({"subject": subject, "label": label, "s": seconds, "ssim_brain": m["ssim_brain"],
                            "mae_brain": m["mae_brain"]})
            outputs[label] = out
            agreement = ""
            if bf16 and label.removesuffix(", bf16") in outputs:  # same settings in float32, run earlier
                diff = np.abs(out.astype(np.float64) - outputs[label.removesuffix(", bf16")]).max()
                results[-1]["max_abs_diff_vs_fp32"] = float(diff)
                agreement = f" | max abs diff vs float32 {diff:.3g} (output scale)"
            print(f"{subject} | {label} | {m['ssim_brain']:.4f} | {m['mae_brain']:.4f} | {seconds:.1f}{agreement}", flush=True)

    print(f"\n| settings | {' | '.join(subjects)} | mean brain SSIM | mean brain MAE | mean s |")
    print("|---|" + "---|" * (len(subjects) + 3))
    for label, *_ in rows:
        mine = [r for r in results if r["label"] == label]
        per = " | ".join(f"{r['ssim_brain']:.4f}" for r in mine)
        print(f"| {label} | {per} | {np.mean([r['ssim_brain'] for r in mine]):.4f} | "
              f"{np.mean([r['mae_brain'] for r in mine]):.4f} | {np.mean([r['s'] for r in mine]):.1f} |")
    args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "threads": args.threads, "rows": results},
                                    indent=2))


if __name__ == "__main__":
    main()
