"""Is the loader the bottleneck of paper-width gan3d on a GPU? Loader rate vs the step rate without a loader.

Over a cache made by `bench_gpu_data.sh` it measures, side by side in one run: the streaming loader's whole-grid
batches per second (48x288x240, default 'light' augmentation) with 0 workers and with the default, and the
paper-width training step on the GPU fed one batch already on the device (no loader at all). If the training run's
steps per second with the default workers equals the no-loader rate, the loader never holds a step back.

    python benchmarks/bench_gpu_loader.py --cache /tmp/bench-gpu-work/cache --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_data_scale import batches_per_second

from modalsynth.config import resolve_config
from modalsynth.data.cache import open_subjects, read_manifest
from modalsynth.data.stream import BatchPlan, StepBatches, default_workers, stream_batches
from modalsynth.methods import build_method, method_class

GRID = (48, 288, 240)


def loader_rate(cache: Path, workers: int, batches: int) -> float:
    """Whole-grid batches a second from the streaming loader (after 3 warm-up batches)."""
    manifest = read_manifest(cache)
    subjects = open_subjects(cache, manifest, sorted(manifest["subjects"]))
    stream = stream_batches(StepBatches(subjects, BatchPlan(0, 0, 1, 1, None, "light")), 0, workers, True)
    return batches_per_second(stream, batches)


def step_rate_without_loader(steps: int) -> float:
    """Paper-width gan3d training steps a second on the GPU, one whole-grid batch resident on the device."""
    config = resolve_config([("bench", {"device": "cuda", "init": "none", "preset": "paper"})], method_class)
    method = build_method(config).to(torch.device("cuda"))
    method.make_optimizers()
    method.train_mode(True)
    batch = {k: (torch.rand(1, 1, *GRID) * 2 - 1).cuda() for k in ("source", "target")}
    batch["mask"] = torch.ones(1, 1, *GRID, device="cuda")
    for i in range(10):
        method.training_step(batch, torch.Generator().manual_seed(i))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(steps):
        method.training_step(batch, torch.Generator().manual_seed(i))
    torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    result = {"default_workers": default_workers(), "loader": {}}
    for workers in (0, default_workers()):
        result["loader"][workers] = loader_rate(args.cache, workers, args.batches)
        print(f"loader, {workers} workers: {result['loader'][workers]:.1f} whole-grid batches/s", flush=True)
    result["steps_per_s_without_loader"] = step_rate_without_loader(args.steps)
    print(f"paper-width step, batch on the GPU: {result['steps_per_s_without_loader']:.2f} steps/s", flush=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
