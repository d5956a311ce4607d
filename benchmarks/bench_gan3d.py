"""Speed of the paper's 3D GAN: seconds per training step and per full-volume prediction, peak memory, parameters,
FLOPs.

Each (grid, model) case runs in a fresh process so that its peak memory is its own. Prints a table and writes JSON.
The achieved GFLOP/s is set beside the machine's own matrix-multiply rate, the floor any convolution code aims at.

    python benchmarks/bench_gan3d.py --json results/bench_gan3d.json [--device cuda] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

GRIDS = {"paper": (48, 288, 240), "small": (32, 96, 80)}
MODELS = {  # name: networks (the paper's default widths; the demo's halved widths)
    "paper": {"base_channels": 32, "depth": 4, "disc_channels": 64, "disc_layers": 3},
    "demo": {"base_channels": 16, "depth": 4, "disc_channels": 32, "disc_layers": 3},
}


def measure(grid_name: str, model_name: str, device_name: str, steps: int, checkpointing: bool) -> dict:
    """Time training steps and one prediction for one case, in this process."""
    import torch

    from modalsynth.config import resolve_config
    from modalsynth.flops import count_flops, count_parameters
    from modalsynth.inference import apply_method
    from modalsynth.methods import build_method, method_class

    grid = GRIDS[grid_name]
    settings = {
        "preset": "paper",
        "model": dict(MODELS[model_name]),
        "device": device_name,
        "checkpointing": checkpointing,
        "preprocess": {"grid": list(grid)},
    }
    config = resolve_config([("bench_gan3d", settings)], method_class)
    device = torch.device(device_name)
    method = build_method(config).to(device)
    method.make_optimizers()
    batch = {k: (torch.rand(1, 1, *grid) * 2 - 1).to(device) for k in ("source", "target", "mask")}
    gen = torch.Generator().manual_seed(0)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    method.training_step(batch, gen)  # warm-up
    sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        method.training_step(batch, gen)
        sync()
        times.append(time.perf_counter() - start)
    method.train_mode(False)
    with torch.no_grad():
        apply_method(method, batch["source"], config.inference)
        sync()
        start = time.perf_counter()
        apply_method(method, batch["source"], config.inference)
        sync()
        predict_s = time.perf_counter() - start
    g_flops = count_flops(method.nets["generator"], (1, 1, *grid))
    d_flops = count_flops(method.nets["discriminator"], (1, 2, *grid))
    step_s = sorted(times)[len(times) // 2]
    # a training step: G forward + backward (~3x forward), D forward+backward on 3 pairs (~9x D forward)
    step_flops = 3 * g_flops + 9 * d_flops
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    return {
        "grid": list(grid),
        "model": model_name,
        "device": device_name,
        "gradient_checkpointing": checkpointing,
        "threads": torch.get_num_threads(),
        "train_step_s": step_s,
        "predict_s": predict_s,
        "peak_memory_gib": peak,
        "peak_memory_kind": "CUDA max allocated" if device.type == "cuda" else "process max RSS",
        "generator_params": count_parameters(method.nets["generator"]),
        "discriminator_params": count_parameters(method.nets["discriminator"]),
        "generator_gflops_per_volume": g_flops / 1e9,
        "predict_gflops_per_s": g_flops / 1e9 / predict_s,
        "train_gflops_per_s": step_flops / 1e9 / step_s,
    }


def matmul_floor(device_name: str) -> float:
    """GFLOP/s of a large float32 matrix multiply on this device: the practical ceiling for convolutions."""
    import torch

    device = torch.device(device_name)
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    (a @ b).sum().item()
    start = time.perf_counter()
    for _ in range(5):
        c = a @ b
    c.sum().item()
    return 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="bench_gan3d.json")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--grids", default="small,paper")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing in the generator")
    parser.add_argument("--one", nargs=2, metavar=("GRID", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.device, args.steps, args.checkpointing)))
        return
    rows = []
    for grid in args.grids.split(","):
        for model in args.models.split(","):
            cmd = [sys.executable, __file__, "--one", grid, model, "--device", args.device, "--steps", str(args.steps)]
            if args.checkpointing:
                cmd.append("--checkpointing")
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                rows.append({"grid": list(GRIDS[grid]), "model": model, "error": run.stderr.strip().splitlines()[-1]})
            else:
                rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    floor = matmul_floor(args.device)
    result = {
        "machine": platform.processor() or platform.machine(),
        "device": args.device,
        "matmul_gflops_per_s": floor,
        "cases": rows,
    }
    with open(args.json, "w") as fh:
        json.dump(result, fh, indent=1)
    header = "| grid | model | train s/step | predict s/volume | peak GiB | G params | G GFLOPs/vol | predict "
    "GFLOP/s | train GFLOP/s |"
    print(header)
    print("|" + "---|" * 9)
    for r in rows:
        if "error" in r:
            print(f"| {'x'.join(map(str, r['grid']))} | {r['model']} | error: {r['error']} |")
            continue
        print(
            f"| {'x'.join(map(str, r['grid']))} | {r['model']} | {r['train_step_s']:.2f} | {r['predict_s']:.2f} | "
            f"{r['peak_memory_gib']:.1f} | {r['generator_params'] / 1e6:.2f} M | "
            f"{r['generator_gflops_per_volume']:.0f} | "
            f"{r['predict_gflops_per_s']:.0f} | {r['train_gflops_per_s']:.0f} |"
        )
    print(f"\nmatrix-multiply floor on {args.device}: {floor:.0f} GFLOP/s; JSON in {args.json}")


if __name__ == "__main__":
    main()
