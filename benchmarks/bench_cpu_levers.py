"""`modalsynth predict`'s whole path per CPU lever, beside the yardstick, side by side in one run on real volumes.

Every project row runs what `modalsynth predict` runs for one file (load the .nii.gz, Predictor.predict_volume, write
the .nii.gz), the built-in model (or --checkpoint) with one lever changed: float32 or bfloat16 autocast (channels-last,
as gan3d predicts in bf16), float32 channels-last, the sliding windows' overlap, ONNX Runtime (float32, the exported
generator, the same windows) and the output's gzip writer. "today" is the path before this benchmark's changes on a
CPU without AMX: float32, 64^3 windows at overlap 0.4, four per batch, written through nibabel's zlib. "default" is
the Predictor as it is now, on this CPU. The yardstick (../shared/yardsticks/monai_unet_l1.py's network, untrained:
speed does not depend on the weights) is timed on its sliding-window loop alone (as its script runs it) and on the
same whole path (load, predict, write). Rows run round-robin; the minimum over --repeats passes is reported, in wall
seconds and in CPU seconds of all threads (on a loaded shared machine the idle wall time lies between CPU / threads
and CPU: the serial parts' wall time is their CPU time). Brain
SSIM and MAE are scored against the real T1 with the evaluation's protocol; delta is to "today" on the same volume.
The CPU's model and bf16/AMX flags are printed with the table and saved in the JSON.

    python benchmarks/bench_cpu_levers.py --threads 2 --json /tmp/bench_cpu_levers.json
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import pathlib
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from bench_default_vs_yardstick import yardstick_predict as yardstick_loop  # the yardstick's own path
from monai.networks.nets import UNet

from modalsynth import builtin, io
from modalsynth.data.preprocess import foreground_mask
from modalsynth.inference import Predictor
from modalsynth.metrics import subject_metrics
from modalsynth.nets.cpu_bf16 import cpu_bf16_copy

SUBJECTS = "brats2018-case1,brats2018-case4,ms-patient07"


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and the flags that decide the precision (from /proc/cpuinfo and torch)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = {
        name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: False)())
        for name in ("avx512", "avx512_bf16", "amx_tile", "vnni")
    }
    return {"model": model, "flags": flags, "torch": torch.__version__}


def with_precision(predictor: Predictor, bf16: bool) -> Predictor:
    """float32, or CPU bfloat16 autocast (gan3d's channels-last bf16 copy) even where 'auto' would not choose it."""
    if not bf16:
        return predictor.with_inference(precision="float32")
    predictor = predictor.with_inference(precision="auto")
    predictor.method.predicts_in_bf16 = lambda inference: True  # type: ignore[method-assign]
    return predictor


def with_float32_channels_last(predictor: Predictor) -> Predictor:
    """float32 prediction through the channels-last copy gan3d uses for bf16 (layout only, no bf16)."""
    predictor = with_precision(predictor, False)
    generator = predictor.method.nets["generator"]

    def function(inference: Any, gen: torch.Generator | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        fast = cpu_bf16_copy(generator)
        return lambda x: fast(x.contiguous(memory_format=torch.channels_last_3d))

    predictor.method.inference_function = function  # type: ignore[method-assign]
    return predictor


def onnxruntime_predictor(predictor: Predictor, onnx_path: pathlib.Path) -> Predictor:
    """`modalsynth predict --onnx` on the predictor's model: exported, then each window batch run by ONNX Runtime."""
    from modalsynth.export import export_onnx, onnx_predictor

    export_onnx(predictor, onnx_path)
    return onnx_predictor(onnx_path)


def save_with_zlib(volume: io.Volume, path: pathlib.Path) -> pathlib.Path:
    """`io.save_volume` through Python's zlib gzip (nibabel's own writer, level 1), as before the ISA-L writer."""
    fast, io.GZIP_WRITER = io.GZIP_WRITER, gzip.GzipFile
    try:
        return io.save_volume(volume, path)
    finally:
        io.GZIP_WRITER = fast


def build_rows(spec: str | None, workdir: pathlib.Path, wanted: list[str]) -> dict[str, tuple[str, Any, Any]]:
    """label -> (kind, runner, writer) for the `wanted` row keys (ROWS): kind 'project' runs Predictor.predict_volume,
    'yardstick' its own loop."""

    def fresh() -> Predictor:  # as `modalsynth predict` builds it for a built-in model (its input checks included)
        return Predictor.from_checkpoint(checkpoint, "cpu", check_input=builtin.is_builtin(spec))

    def at_overlap(predictor: Predictor, overlap: float) -> Predictor:
        return predictor.with_inference(overlap=overlap)

    checkpoint = pathlib.Path(builtin.resolve(spec))
    yardstick = UNet(
        spatial_dims=3, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2
    ).eval()
    makers: dict[str, tuple[str, Callable[[], tuple[str, Any, Any]]]] = {
        "today": (
            "today: float32, 64^3/0.4/4, zlib write",
            lambda: ("project", with_precision(fresh(), False), save_with_zlib),
        ),
        "default": ("default (as predict runs now on this CPU)", lambda: ("project", fresh(), io.save_volume)),
        "f32": ("float32, 0.4, fast write", lambda: ("project", with_precision(fresh(), False), io.save_volume)),
        "f32-cl": (
            "float32 channels-last, 0.4, fast write",
            lambda: ("project", with_float32_channels_last(fresh()), io.save_volume),
        ),
        "bf16": ("bf16, 0.4, fast write", lambda: ("project", with_precision(fresh(), True), io.save_volume)),
        "0.375": (
            "default precision, overlap 0.375 (fewer windows)",
            lambda: ("project", at_overlap(fresh(), 0.375), io.save_volume),
        ),
        "bf16-0.35": (
            "bf16, 0.35, fast write",
            lambda: ("project", at_overlap(with_precision(fresh(), True), 0.35), io.save_volume),
        ),
        "f32-0.35": (
            "float32, 0.35, fast write",
            lambda: ("project", at_overlap(with_precision(fresh(), False), 0.35), io.save_volume),
        ),
        "bf16-0.25": (
            "bf16, 0.25, fast write",
            lambda: ("project", at_overlap(with_precision(fresh(), True), 0.25), io.save_volume),
        ),
        "onnx": (
            "ONNX Runtime float32, 0.4, fast write (predict --onnx)",
            lambda: ("project", onnxruntime_predictor(fresh(), workdir / "model.onnx"), io.save_volume),
        ),
        "yardstick-loop": ("yardstick MONAI UNet, its window loop alone", lambda: ("yardstick", yardstick, None)),
        "yardstick-path": (
            "yardstick MONAI UNet, load + loop + write",
            lambda: ("yardstick", yardstick, io.save_volume),
        ),
    }
    unknown = [key for key in wanted if key not in makers]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {list(makers)}")
    return {makers[key][0]: makers[key][1]() for key in wanted}


ROWS = "today,default,0.375,f32,f32-cl,bf16,bf16-0.35,f32-0.35,bf16-0.25,onnx,yardstick-loop,yardstick-path"


def run_row(
    kind: str, runner: Any, writer: Any, source: pathlib.Path, out: pathlib.Path
) -> tuple[float, float, np.ndarray]:
    """One timed pass of a row; returns (wall seconds, CPU seconds of every thread, the predicted array)."""
    if kind == "yardstick" and writer is None:
        data = io.load_volume(source).data
        start, cpu = time.perf_counter(), time.process_time()
        pred = yardstick_loop(runner, data)
        return time.perf_counter() - start, time.process_time() - cpu, pred
    start, cpu = time.perf_counter(), time.process_time()
    volume = io.load_volume(source)
    if kind == "project":
        result = runner.predict_volume(volume)
    else:
        result = io.Volume(yardstick_loop(runner, volume.data).astype(np.float32), volume.affine, volume.header)
    writer(result, out)
    return time.perf_counter() - start, time.process_time() - cpu, result.data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a gan3d checkpoint (default: builtin:flair-t1)")
    ap.add_argument("--subjects", default=SUBJECTS, help="real subjects (FLAIR in, T1 scored)")
    ap.add_argument("--data", type=pathlib.Path, required=True, help="folder of real subjects, one folder each")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=ROWS, help="the rows to run, the first being the quality reference")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench_cpu_levers.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu = cpu_description()
    print(f"CPU: {cpu}", flush=True)
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="bench-cpu-levers-"))
    rows = build_rows(args.checkpoint, workdir, args.rows.split(","))
    results: list[dict[str, Any]] = []
    for subject in args.subjects.split(","):
        source = args.data / subject / "flair.nii.gz"
        t1 = io.load_volume(args.data / subject / "t1.nii.gz")
        brain = foreground_mask(t1.data)
        per_row: dict[str, dict[str, Any]] = {}
        for label, (kind, runner, writer) in rows.items():  # one untimed pass: warm-up and quality
            _, _, pred = run_row(kind, runner, writer, source, workdir / "out.nii.gz")
            entry: dict[str, Any] = {"label": label, "subject": subject, "times": [], "cpu_times": []}
            if kind == "project":
                m = subject_metrics(pred, t1.data, brain)
                entry.update(ssim_brain=m["ssim_brain"], mae_brain=m["mae_brain"], finite=bool(np.isfinite(pred).all()))
            per_row[label] = entry
        for _ in range(args.repeats):  # round-robin timed passes
            for label, (kind, runner, writer) in rows.items():
                wall, cpu_s, _ = run_row(kind, runner, writer, source, workdir / "out.nii.gz")
                per_row[label]["times"].append(wall)
                per_row[label]["cpu_times"].append(cpu_s)
        today = next(iter(per_row.values()))
        for entry in per_row.values():
            entry["s"], entry["cpu_s"] = min(entry["times"]), min(entry["cpu_times"])
            if "ssim_brain" in entry:
                entry["ssim_delta"] = entry["ssim_brain"] - today["ssim_brain"]
            results.append(entry)
            quality = f"SSIM {entry['ssim_brain']:.4f} ({entry['ssim_delta']:+.4f})" if "ssim_brain" in entry else ""
            print(
                f"{subject} | {entry['label']} | {entry['s']:.2f} s | CPU {entry['cpu_s']:.2f} s | {quality}",
                flush=True,
            )

    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    print(
        f"\nCPU: {cpu['model']} ({flags}); torch {cpu['torch']}; {args.threads} threads; min of {args.repeats} passes\n"
    )
    header = (
        "| path | " + " | ".join(f"{s} s" for s in args.subjects.split(",")) + " | median s | median CPU s "
        "| brain SSIM Δ (per volume) |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    summary = []
    for label in rows:
        mine = [e for e in results if e["label"] == label]
        median, cpu_median = statistics.median(e["s"] for e in mine), statistics.median(e["cpu_s"] for e in mine)
        deltas = ", ".join(f"{e['ssim_delta']:+.4f}" for e in mine) if "ssim_delta" in mine[0] else "–"
        summary.append(
            {
                "label": label,
                "median_s": median,
                "median_cpu_s": cpu_median,
                "ssim_deltas": [e.get("ssim_delta") for e in mine],
            }
        )
        print(
            f"| {label} | "
            + " | ".join(f"{e['s']:.2f}" for e in mine)
            + f" | {median:.2f} | {cpu_median:.2f} | {deltas} |"
        )
    args.json.write_text(
        json.dumps(
            {
                "cpu": cpu,
                "threads": args.threads,
                "repeats": args.repeats,
                "checkpoint": str(args.checkpoint or "builtin:flair-t1"),
                "rows": results,
                "summary": summary,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
