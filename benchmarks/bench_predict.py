"""Seconds to predict one 240x240x155 volume, side by side in one process: windows, overlap, batch, dtype, runtimes.

Untrained generators (speed does not depend on the weights). The volume is the FLAIR given by --flair (RESULTS uses
BraTS 2018 case 0's) scaled to [-1, 1], else noise. Sliding windows are MONAI's sliding_window_inference with
Gaussian blending; "whole" pads the volume to a multiple of 16 (value -1) and runs it in one forward.

Rows run round-robin (--repeats passes after one warm-up pass; the minimum is reported), each pass time-bounded.
GFLOP/volume = windows x forward FLOPs of one window (modalsynth.flops); the machine's float32 2048^3 matmul rate
is measured in the same run as the ceiling. max|diff| compares a row with the plain float32 path of the same
network and window (bf16, channels_last_3d, torch.compile, ONNX Runtime rows).

    python benchmarks/bench_predict.py --json /tmp/bench_predict.json [--quick] [--threads 2] [--extra-path /tmp/ortlib]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import pathlib
import platform
import signal
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

SHAPE = (240, 240, 155)


class TimeBound(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float):
    def handler(signum, frame):
        raise TimeBound()

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_volume(flair: pathlib.Path | None) -> tuple[torch.Tensor, str]:
    """The FLAIR scaled to [-1, 1] inside its brain (-1 outside), or uniform noise when none is given."""
    if flair is not None:
        import nibabel as nib

        data = np.asarray(nib.load(flair).dataobj, dtype=np.float32)
        mask = data > 0
        lo, hi = np.percentile(data[mask], [0.5, 99.5])
        scaled = np.clip((data - lo) / max(hi - lo, 1e-8), 0, 1) * mask * 2 - 1
        return torch.from_numpy(scaled.astype(np.float32))[None, None], str(flair.name)
    return torch.rand(1, 1, *SHAPE) * 2 - 1, "noise"


def matmul_gflops() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def build_nets() -> dict[str, torch.nn.Module]:
    from monai.networks.nets import UNet

    from modalsynth.nets import ResUNet

    torch.manual_seed(0)
    nets = {
        "today (residual b16)": ResUNet(base_channels=16, depth=4),
        "strided b16 f8": ResUNet(base_channels=16, depth=4, stem="strided", full_res_channels=8),
        "strided b24 f12": ResUNet(base_channels=24, depth=4, stem="strided", full_res_channels=12),
        "yardstick UNet": UNet(3, 1, 1, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2),
    }
    return {k: v.eval() for k, v in nets.items()}


@dataclass
class Row:
    net: str
    window: int | str  # an edge length, or "whole"
    overlap: float = 0.0
    batch: int = 1
    mode: str = "no_grad"  # no_grad | inference_mode | channels_last | bf16 | compile | onnx
    slow: bool = False  # run once only (no repeat)
    times: list[float] = field(default_factory=list)
    windows: int = 0
    gflop: float = 0.0
    first: float = math.nan  # the warm-up pass (compile/export included for those modes)
    error: str = ""
    output: torch.Tensor | None = None

    @property
    def label(self) -> str:
        if self.window == "whole":
            return f"{self.net} | whole 240x240x160 | - | 1 | {self.mode}"
        return f"{self.net} | {self.window}^3 | {self.overlap} | {self.batch} | {self.mode}"

    @property
    def reference_key(self) -> tuple:
        return (self.net, self.window, self.overlap, self.batch)


def rows_for(quick: bool) -> list[Row]:
    today, fast, wide, yard = "today (residual b16)", "strided b16 f8", "strided b24 f12", "yardstick UNet"
    rows = [
        Row(today, 64, 0.5, 1, slow=True),  # what predict does today
        Row(yard, 64, 0.25, 4),  # the yardstick's own setting
        Row(today, 128, 0.125, 4, "inference_mode", slow=True),
        Row(fast, 64, 0.5, 1, slow=True),
        Row(fast, 64, 0.25, 4),
        Row(fast, 96, 0.25, 4),
        Row(fast, 96, 0.125, 4),
        Row(fast, 128, 0.25, 4),
        Row(fast, 128, 0.125, 1),
        Row(fast, 128, 0.125, 4),
        Row(fast, 128, 0.125, 4, "inference_mode"),
        Row(fast, 128, 0.125, 4, "channels_last"),
        Row(fast, 128, 0.125, 4, "bf16"),
        Row(fast, 128, 0.125, 4, "compile"),
        Row(fast, 128, 0.125, 4, "onnx"),
        Row(fast, "whole", mode="inference_mode"),
        Row(fast, "whole", mode="bf16"),
        Row(wide, 128, 0.125, 4, "inference_mode"),
        Row(wide, 64, 0.25, 4),
    ]
    if not quick:
        rows += [
            Row(fast, 64, 0.5, 4),
            Row(fast, 64, 0.25, 1),
            Row(fast, 96, 0.25, 1),
            Row(yard, 128, 0.125, 4, "inference_mode"),
            Row(yard, "whole", mode="inference_mode"),
        ]
    return rows


def make_predictor(row: Row, net: torch.nn.Module, roi: tuple[int, ...]):
    """(predictor for sliding_window_inference, context manager to run it in) for the row's mode."""
    if row.mode == "channels_last":
        net = net.to(memory_format=torch.channels_last_3d)

        def predictor(x):
            return net(x.contiguous(memory_format=torch.channels_last_3d)).contiguous()

        return predictor, torch.inference_mode
    if row.mode == "bf16":

        def predictor(x):
            return net(x).float()

        return predictor, lambda: _stack(torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16))
    if row.mode == "compile":
        compiled = torch.compile(net)
        return compiled, torch.no_grad
    if row.mode == "onnx":
        import onnxruntime as ort

        path = pathlib.Path(tempfile.mkdtemp()) / "net.onnx"
        with torch.no_grad():
            torch.onnx.export(
                net,
                torch.zeros(row.batch, 1, *roi),
                str(path),
                input_names=["x"],
                output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
                dynamo=False,
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

        def predictor(x):
            return torch.from_numpy(session.run(None, {"x": x.numpy()})[0])

        return predictor, torch.no_grad
    return net, (torch.inference_mode if row.mode == "inference_mode" else torch.no_grad)


@contextlib.contextmanager
def _stack(*managers):
    with contextlib.ExitStack() as stack:
        for m in managers:
            stack.enter_context(m)
        yield


def predict_once(row: Row, predictor, context, volume: torch.Tensor) -> tuple[torch.Tensor, int]:
    from monai.inferers import sliding_window_inference

    count = 0

    def counted(x):
        nonlocal count
        count += x.shape[0]
        return predictor(x)

    with context():
        if row.window == "whole":
            pad = [(-s) % 16 for s in volume.shape[2:]]
            padded = F.pad(volume, (0, pad[2], 0, pad[1], 0, pad[0]), value=-1.0)
            out = counted(padded)[..., : volume.shape[2], : volume.shape[3], : volume.shape[4]]
        else:
            roi = (row.window,) * 3
            out = sliding_window_inference(volume, roi, row.batch, counted, overlap=row.overlap, mode="gaussian")
    return out.float(), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="bench_predict.json")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flair", type=pathlib.Path, default=None, help="a skull-stripped FLAIR (default: noise)")
    parser.add_argument("--repeats", type=int, default=1, help="timed passes after the warm-up (0: report the warm-up)")
    parser.add_argument("--quick", action="store_true", help="fewer rows")
    parser.add_argument("--bound", type=float, default=90.0, help="seconds allowed per pass of one row")
    parser.add_argument("--only", default="", help="';'-separated substrings: keep rows whose label contains one")
    parser.add_argument("--extra-path", default="", help="a folder appended to sys.path (onnxruntime installed aside)")
    args = parser.parse_args()
    if args.extra_path:
        import sys

        sys.path.append(args.extra_path)
    torch.set_num_threads(args.threads)

    from modalsynth.flops import count_flops

    volume, origin = load_volume(args.flair)
    nets = build_nets()
    rows = rows_for(args.quick)
    if args.only:
        rows = [r for r in rows if any(k in r.label for k in args.only.split(";"))]
    floor_before = matmul_gflops()
    predictors = {}
    for row in rows:  # build + warm-up pass (also the correctness outputs); compile/export happen here
        net = nets[row.net]
        roi = tuple(s + (-s) % 16 for s in volume.shape[2:]) if row.window == "whole" else (row.window,) * 3
        try:
            with time_bound(60 if row.mode in ("compile", "onnx") else args.bound):
                start = time.perf_counter()
                predictor, context = make_predictor(row, net, roi)
                row.output, row.windows = predict_once(row, predictor, context, volume)
                first = time.perf_counter() - start
            predictors[id(row)] = (predictor, context)
            row.first = first
            if row.slow or args.repeats == 0:
                row.times.append(first)
            flops = count_flops(net, (1, 1, *roi)) * row.windows
            row.gflop = flops / 1e9
        except TimeBound:
            row.error = f"over {60 if row.mode in ('compile', 'onnx') else args.bound:.0f} s (warm-up)"
        except Exception as exc:  # noqa: BLE001 - a variant that does not work here is a result
            row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
        if row.mode == "channels_last":  # give the shared net back its default layout for later rows
            nets[row.net] = net.to(memory_format=torch.contiguous_format)
        print(f"warm-up {row.label}: {row.error or f'{row.first:.2f} s, {row.gflop:.0f} GFLOP'}", flush=True)
    for _ in range(args.repeats):
        for row in rows:
            if row.error or row.slow:
                continue
            predictor, context = predictors[id(row)]
            if row.mode == "channels_last":
                nets[row.net].to(memory_format=torch.channels_last_3d)
            try:
                with time_bound(args.bound):
                    start = time.perf_counter()
                    predict_once(row, predictor, context, volume)
                    row.times.append(time.perf_counter() - start)
            except TimeBound:
                row.error = f"over {args.bound:.0f} s"
            if row.mode == "channels_last":
                nets[row.net].to(memory_format=torch.contiguous_format)
    floor = max(floor_before, matmul_gflops())

    references = {
        r.reference_key: r.output for r in rows if r.mode in ("no_grad", "inference_mode") and r.output is not None
    }
    results = []
    print(
        "\n| net | window | overlap | per batch | mode | s/volume | windows | GFLOP/vol | GFLOP/s | % of matmul "
        "| max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row.error and not row.times:
            print(f"| {row.label} | {row.error} |")
            results.append({"row": row.label, "error": row.error})
            continue
        s = min(row.times)
        ref = references.get(row.reference_key)
        diff = (
            float((row.output - ref).abs().max())
            if ref is not None and row.mode not in ("no_grad", "inference_mode")
            else math.nan
        )
        rate = row.gflop / s
        results.append(
            {
                "row": row.label,
                "s_per_volume": s,
                "times": row.times,
                "windows": row.windows,
                "gflop_per_volume": row.gflop,
                "gflop_per_s": rate,
                "fraction_of_matmul": rate / floor,
                "max_abs_diff_vs_fp32": diff,
                "error": row.error,
            }
        )
        diff_text = "-" if math.isnan(diff) else f"{diff:.1e}"
        print(
            f"| {row.label} | {s:.2f} | {row.windows} | {row.gflop:.0f} | {rate:.0f} | "
            f"{100 * rate / floor:.0f}% | {diff_text} |"
        )
    print(
        f"\nfloat32 matmul 2048^3: {floor:.0f} GFLOP/s ({args.threads} threads); volume "
        f"{tuple(volume.shape[2:])} from {origin};"
        f" s/volume = min of {args.repeats} timed passes (slow rows: 1); JSON in {args.json}"
    )
    with open(args.json, "w") as fh:
        json.dump(
            {
                "machine": platform.processor() or platform.machine(),
                "threads": args.threads,
                "volume": origin,
                "matmul_gflops_per_s": floor,
                "rows": results,
            },
            fh,
            indent=1,
        )


if __name__ == "__main__":
    main()
