"""The default prediction path against the yardstick, side by side in one process on the same real volumes.

For one trained gan3d checkpoint: `modalsynth predict`'s whole path (Predictor.predict_volume: preprocessing, the
foreground crop, the network as its settings say, postprocessing; on a CPU with native bfloat16 that is bf16
autocast), the same checkpoint in float32 with the previous default's windows (64^3, overlap 0.25, 4 per batch) and on
the slow path (float32, 64^3 windows, overlap 0.5, one per batch: the quality reference), and optionally the default's
windows with intra-op threads only (each layer split over the threads, as before split_across_threads); `--overlap`
sets the default row's overlap as `modalsynth predict --overlap` does (e.g. a checkpoint trained before the default
changed). For the yardstick, its own path (percentile scaling, MONAI UNet 16-128 with two residual units over the whole
volume in 64^3 Gaussian windows, overlap 0.25, 4 per batch; untrained: speed does not depend on the weights). Rows run
round-robin; the minimum over --repeats passes is reported. GFLOP/volume is counted by torch's FlopCounterMode on one
real single-thread pass (also the quality pass); the floor is that count over the 2048^3 matmul rate measured in the
same run, in float32, or in bfloat16 for a row that predicts in bf16. Brain SSIM/MAE of the project rows are scored
against the real T1 with the evaluation's protocol.

    python benchmarks/bench_default_vs_yardstick.py --checkpoint RUN/best.pt --json /tmp/bench_default.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import statistics
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from torch.utils.flop_counter import FlopCounterMode

from modalsynth.data.preprocess import foreground_mask
from modalsynth.inference import Predictor
from modalsynth.io import load_volume
from modalsynth.metrics import subject_metrics

SLOW_PATH = {"window": (64, 64, 64), "overlap": 0.5, "windows_per_batch": 1, "precision": "float32"}
PREVIOUS_DEFAULT = {"overlap": 0.25, "windows_per_batch": 4, "precision": "float32"}


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def yardstick_predict(net: torch.nn.Module, data: np.ndarray) -> np.ndarray:
    """The yardstick's own prediction path (its scaling, its windows), as ../shared/yardsticks/monai_unet_l1.py does."""
    mask = data > 0
    lo, hi = np.percentile(data[mask], [0.5, 99.5])
    scaled = (np.clip((data - lo) / max(hi - lo, 1e-8), 0, 1) * mask).astype(np.float32)
    with torch.no_grad():
        out = sliding_window_inference(
            torch.from_numpy(scaled)[None, None], (64, 64, 64), 4, net, overlap=0.25, mode="gaussian"
        )
    return np.clip(out[0, 0].numpy(), 0, 1) * mask


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=pathlib.Path, required=True)
    ap.add_argument("--subjects", default="brats2018-case0,ms-patient07", help="real subjects (FLAIR in, T1 scored)")
    ap.add_argument("--data", type=pathlib.Path, required=True, help="folder of real subjects, one folder each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-slow", action="store_true", help="skip the slow path (its time and quality)")
    ap.add_argument("--intra-op", action="store_true", help="add the default with intra-op threads only")
    ap.add_argument("--overlap", type=float, default=None, help="the default row's overlap (default: the checkpoint's)")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench_default_vs_yardstick.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    default = Predictor.from_checkpoint(args.checkpoint, "cpu").with_inference(overlap=args.overlap)
    slow = default.with_inference(**SLOW_PATH)
    previous = default.with_inference(**PREVIOUS_DEFAULT)
    yardstick = UNet(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2
    ).eval()
    how = default.method.application(default.inference)
    precision = "bf16" if default.method.predicts_in_bf16(default.inference) else "float32"
    windows = f"{how.window[0]}^3 / {how.overlap} / {how.windows_per_batch}" if hasattr(how, "window") else "volume"
    rows = {
        f"gan3d default ({precision}, {windows})": ("project", default),
        "yardstick MONAI UNet (64^3 / 0.25 / 4, whole volume)": ("yardstick", yardstick),
        "gan3d same checkpoint, previous default (float32, 64^3 / 0.25 / 4)": ("project", previous),
    }
    if not args.no_slow:
        rows["gan3d same checkpoint, slow path (float32, 64^3 / 0.5 / 1)"] = ("project", slow)
    if args.intra_op:  # the default's windows without split_across_threads: every layer split over the threads
        intra_op = Predictor.from_checkpoint(args.checkpoint, "cpu")
        intra_op.method.application = lambda inference: dataclasses.replace(how, parallel=False)  # type: ignore[method-assign]
        rows["gan3d default, intra-op threads (windows not split across threads)"] = ("project", intra_op)

    results = []
    rate, rate_bf16 = matmul_gflops(), matmul_gflops(torch.bfloat16)
    for subject in args.subjects.split(","):
        flair = load_volume(args.data / subject / "flair.nii.gz")
        t1 = load_volume(args.data / subject / "t1.nii.gz")
        brain = foreground_mask(t1.data)
        per_row: dict[str, dict] = {}
        default_out = None
        for label, (kind, runner) in rows.items():  # one untimed pass: warm-up, FLOPs and quality
            counter = FlopCounterMode(display=False)
            torch.set_num_threads(1)  # the counter sees only this thread: no window split while counting
            with counter:
                out = runner.predict_volume(flair).data if kind == "project" else yardstick_predict(runner, flair.data)
            torch.set_num_threads(args.threads)
            bf16 = kind == "project" and runner.method.predicts_in_bf16(runner.inference)
            entry = {
                "label": label,
                "subject": subject,
                "shape": list(flair.shape),
                "times": [],
                "gflop": counter.get_total_flops() / 1e9,
                "bf16": bf16,
            }
            if kind == "project":
                m = subject_metrics(out, t1.data, brain)
                entry.update(ssim_brain=m["ssim_brain"], mae_brain=m["mae_brain"])
                default_out = out if default_out is None else default_out
                entry["max_abs_diff_vs_default"] = float(np.abs(out - default_out).max())  # in the T1's units
            per_row[label] = entry
        for _ in range(args.repeats):  # round-robin timed passes
            for label, (kind, runner) in rows.items():
                start = time.perf_counter()
                runner.predict_volume(flair) if kind == "project" else yardstick_predict(runner, flair.data)
                per_row[label]["times"].append(time.perf_counter() - start)
        for entry in per_row.values():
            entry["s"] = min(entry["times"])
            entry["floor_s"] = entry["gflop"] / (rate_bf16 if entry["bf16"] else rate)
            results.append(entry)

    header = "| subject | path | s/volume | GFLOP/volume | GFLOP/s | × FLOP floor | brain SSIM | brain MAE |"
    print(
        f"\nmatmul rate float32 {rate:.0f}, bfloat16 {rate_bf16:.0f} GFLOP/s, {args.threads} threads, "
        f"min of {args.repeats} passes\n"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for e in results:
        quality = f"{e['ssim_brain']:.4f} | {e['mae_brain']:.4f}" if "ssim_brain" in e else "– | –"
        print(
            f"| {e['subject']} | {e['label']} | {e['s']:.2f} | {e['gflop']:.0f} | {e['gflop'] / e['s']:.0f} | "
            f"{e['s'] / e['floor_s']:.1f} | {quality} |"
        )
    for subject in args.subjects.split(","):
        mine = [e for e in results if e["subject"] == subject]
        ratio = mine[0]["s"] / mine[1]["s"]
        diffs = "; ".join(f"{e['label']}: {e['max_abs_diff_vs_default']:.3g}" for e in mine[2:])
        print(f"{subject}: default / yardstick time = {ratio:.2f}; max abs diff to the default (T1 units): {diffs}")
    args.json.write_text(
        json.dumps(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "matmul_gflops": rate,
                "matmul_gflops_bf16": rate_bf16,
                "checkpoint": str(args.checkpoint),
                "rows": results,
                "median_default_over_yardstick": statistics.median(
                    [results[i]["s"] / results[i + 1]["s"] for i in range(0, len(results), len(rows))]
                ),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
