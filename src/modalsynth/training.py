"""What every method's training shares: device, seeding, DDP under torchrun, the step loop, validation, logs, checkpoints.

Resuming is exact: data order comes from a DistributedSampler re-seeded per epoch and every other random choice
from a generator seeded by (seed, step, rank), so k steps + resume + k steps equals 2k steps straight.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .checkpoints import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data.datasets import PreparedSubject, make_batch, prepare_pairs, step_generator, typical_intensity
from .data.pairs import load_or_make_split, require_pairs
from .errors import UserError
from .inference import resolve_device
from .methods import Method, build_method
from .metrics import mae, ssim3d


@dataclass
class DistContext:
    """Rank and world size; world 1 when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistContext:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); a single process needs nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return DistContext(rank, world, local)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (network initialisation is then identical on every rank)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def validate(method: Method, subjects: list[PreparedSubject]) -> dict[str, float]:
    """Mean MAE and SSIM on [0, 1] inside the foreground over the validation subjects (whole-volume prediction)."""
    if not subjects:
        return {}
    method.train_mode(False)
    maes, ssims = [], []
    for s in subjects:
        source = torch.from_numpy(s.source)[None, None].to(method.device)
        pred = method.predict(source, torch.Generator().manual_seed(0)).cpu().numpy()[0, 0]
        pred01, ref01 = (np.clip(pred, -1, 1) + 1) / 2, (s.target + 1) / 2
        maes.append(mae(pred01, ref01, s.mask))
        ssims.append(ssim3d(pred01, ref01, s.mask))
    method.train_mode(True)
    return {"val_mae": float(np.mean(maes)), "val_ssim": float(np.mean(ssims))}


class RunLogger:
    """CSV and TensorBoard logs of a run, written by rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.csv_path = out / "log.csv"
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional at run time
                self.writer = None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "key", "value"])
            for key, value in values.items():
                writer.writerow([step, key, f"{value:.6g}"])
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def _payload(method: Method, config: TrainConfig, step: int, best: float, intensity, split: dict) -> dict[str, Any]:
    return {
        "method": config.method,
        "config": config.to_dict(),
        "step": step,
        "best_val_mae": best,
        "target_intensity": {"low": intensity.low, "high": intensity.high, "background": intensity.background},
        "split": split,
        "state": method.state(),
    }


def train(
    config: TrainConfig,
    data: Path,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    on_finish: Callable[[Method], None] | None = None,
) -> Path:
    """Train `config.method` on the pairs under `data`; writes OUT/{split.json,last.pt,best.pt,log.csv}; returns best.pt.

    `on_finish`, if given, is called with the trained method on every rank (e.g. to compare ranks in a test).
    """
    out = Path(out)
    ctx = init_distributed(config.device)
    device = resolve_device(config.device)
    if device.type == "cuda" and ctx.world > 1:
        device = torch.device("cuda", ctx.local_rank)
    pairs = require_pairs(data, config.source, config.target, resample_target=config.resample_target)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        split = load_or_make_split(out, [p.subject for p in pairs], config.seed)
    if ctx.world > 1:
        dist.barrier()
    if not ctx.is_main:
        split = load_or_make_split(out, [p.subject for p in pairs], config.seed)
    by_name = {p.subject: p for p in pairs}
    show = progress and ctx.is_main
    train_set = prepare_pairs([by_name[s] for s in split["train"]], config.preprocess, show, "loading train")
    val_set = prepare_pairs([by_name[s] for s in split["val"]], config.preprocess, show, "loading val")
    intensity = typical_intensity(train_set)

    seed_everything(config.seed)
    method = build_method(config).to(device)
    config = method.config  # with the method's own recipe filled in (e.g. pix2pix's lr 2e-4): what actually runs
    if ctx.is_main:
        config.write_yaml(out / "config.yaml")
    method.make_optimizers()
    step, best = 0, math.inf
    if resume:
        last = out / "last.pt"
        if not last.exists():
            raise UserError(f"{last}: nothing to resume; drop --resume to start a new run")
        payload = load_checkpoint(last)
        if payload["method"] != config.method:
            raise UserError(f"{last}: was trained with --method {payload['method']}, not {config.method}")
        method.load_state(payload["state"])
        step, best = int(payload["step"]), float(payload["best_val_mae"])
    if not method.trainable:
        method.fit_closed_form(train_set)
        if ctx.is_main:
            metrics = validate(method, val_set)
            payload = _payload(method, config, 0, metrics.get("val_mae", math.nan), intensity, split)
            save_checkpoint(out / "last.pt", payload)
            save_checkpoint(out / "best.pt", payload)
            print(f"fitted {config.method}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return out / "best.pt"
    if ctx.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        method.wrap(lambda m: DistributedDataParallel(m, device_ids=ids))

    sampler = DistributedSampler(range(len(train_set)), num_replicas=ctx.world, rank=ctx.rank, shuffle=True, seed=config.seed)
    steps_per_epoch = max(1, math.ceil(len(sampler) / config.batch_size))
    total = config.steps if config.steps is not None else config.epochs * steps_per_epoch
    val_every = config.val_every or steps_per_epoch
    logger = RunLogger(out, ctx.is_main)
    method.train_mode(True)
    bar = tqdm(total=total, initial=step, desc=f"train {config.method}", unit="step", disable=not show, dynamic_ncols=True)
    started = time.perf_counter()
    while step < total:
        epoch, within = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        order = list(sampler)
        indices = order[within * config.batch_size : (within + 1) * config.batch_size] or order[: config.batch_size]
        gen = step_generator(config.seed, step, ctx.rank)
        batch = make_batch(train_set, indices, config.patch, config.augment, gen)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        losses = method.training_step(batch, gen)
        step += 1
        bar.update(1)
        bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("g_loss", "d_loss", "loss", "g_l1")})
        if ctx.is_main and step % config.log_every == 0:
            logger.log(step, {**losses, "steps_per_s": step / max(1e-9, time.perf_counter() - started)})
        if step % val_every == 0 or step == total:
            if ctx.is_main:
                metrics = validate(method, val_set)
                logger.log(step, metrics)
                payload = _payload(method, config, step, best, intensity, split)
                if metrics and metrics["val_mae"] < best:
                    best = metrics["val_mae"]
                    payload["best_val_mae"] = best
                    save_checkpoint(out / "best.pt", payload)
                elif not (out / "best.pt").exists():
                    save_checkpoint(out / "best.pt", payload)
                save_checkpoint(out / "last.pt", payload)
                if metrics:
                    bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            if ctx.world > 1:
                dist.barrier()
    bar.close()
    logger.close()
    if on_finish is not None:
        on_finish(method)
    return out / "best.pt"


def train_from_cli(
    data: Path,
    out: Path,
    source: str,
    target: str,
    method: str,
    epochs: int | None,
    steps: int | None,
    grid: Any,
    patch: tuple[int, int, int] | None,
    device: str,
    config: Path | None,
    resume: bool,
    seed: int | None,
    resample_target: bool = False,
) -> Path:
    """`modalsynth train`: YAML config (if any), then command-line options on top."""
    cfg = TrainConfig.from_yaml(config) if config else TrainConfig()
    cfg.method, cfg.source, cfg.target, cfg.device = method, source, target, device
    if resume and (Path(out) / "config.yaml").exists() and config is None:
        cfg = TrainConfig.from_yaml(Path(out) / "config.yaml")
    if epochs is not None:
        cfg.epochs = epochs
    if steps is not None:
        cfg.steps = steps
    if grid is not None:
        cfg.preprocess.grid = grid
    if patch is not None:
        cfg.patch = patch
    if seed is not None:
        cfg.seed = seed
    if resample_target:
        cfg.resample_target = True
    best = train(cfg, data, out, resume=resume)
    print(f"best checkpoint: {best}")
    return best
