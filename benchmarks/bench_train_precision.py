"""Seconds per training step of the default recipes in float32 and under CPU bfloat16 autocast, side by side.

Builds gan3d and pix2pix2d exactly as `modalsynth train` does (their recipes, `amp` on or off), runs one step of
each case per round on the same random batch (two 64^3 patches), and reports the median over rounds. On a CPU with
native bfloat16 (AMX tiles), `amp: true` (the default) trains under bf16 autocast; prediction stays float32.

    OMP_NUM_THREADS=1 python benchmarks/bench_train_precision.py --threads 1 --rounds 7 --json /tmp/train_precision.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import time

import torch

from modalsynth.config import resolve_config
from modalsynth.methods import build_method, method_class
from modalsynth.runtime import cpu_has_native_bf16


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--methods", default="gan3d,pix2pix2d")
    ap.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench_train_precision.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}")
    cases = {}
    for name in args.methods.split(","):
        for amp in (False, True):
            config = resolve_config([("bench", {"method": name, "device": "cpu", "amp": amp})], method_class)
            torch.manual_seed(0)
            method = build_method(config).to(torch.device("cpu"))
            method.make_optimizers()
            method.train_mode(True)
            cases[f"{name} {'bf16 autocast' if amp else 'float32'}"] = method
    patch = (64, 64, 64)
    batch = {
        "source": torch.rand(2, 1, *patch) * 2 - 1,
        "target": torch.rand(2, 1, *patch) * 2 - 1,
        "mask": torch.ones(2, 1, *patch, dtype=torch.bool),
    }
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(args.rounds):
        for label, method in cases.items():
            gen = torch.Generator().manual_seed(0)
            start = time.perf_counter()
            method.training_step(batch, gen)
            times[label].append(time.perf_counter() - start)
    print("\n| case | s/step (median) | × float32 |\n|---|---|---|")
    rows = []
    medians = {label: statistics.median(values[1:] or values) for label, values in times.items()}  # round 1 warms up
    for label, values in times.items():
        median, base = medians[label], medians[label.split()[0] + " float32"]
        rows.append({"case": label, "s_per_step": median, "speedup": base / median, "all": values})
        print(f"| {label} | {median:.3f} | {base / median:.2f} |")
    args.json.write_text(
        json.dumps({"threads": args.threads, "native_bf16": cpu_has_native_bf16(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
