"""What every method's training shares: device, seeding, DDP under torchrun, the step loop, validation, logs,
checkpoints.

Resuming is exact on the same number of ranks: the batch of step k comes from the cache through data/stream.py
(a DistributedSampler re-seeded per epoch, patches and augmentation from `data_generator(seed, step, rank)`) and the
method's own random choices from `step_generator(seed, step, rank)`, so k steps + resume + k steps equals 2k steps
straight, for any number of loader workers.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .checkpoints import Checkpoint
from .config import Layer, TrainConfig, config_from_checkpoint, read_settings_file, resolve_config, resume_config
from .data.cache import (
    CachedSubject,
    CacheSettings,
    LoadedSubjects,
    build_cache,
    cache_size_bytes,
    default_cache_dir,
    open_subjects,
    read_manifest,
)
from .data.datasets import PreparedSubject, step_generator, typical_intensity
from .data.pairs import Pair, load_or_make_split, require_pairs, source_list
from .data.preprocess import IntensityRecord
from .data.stream import BatchPlan, StepBatches, default_workers, steps_per_epoch, stream_batches
from .errors import TrainingStopped, UserError
from .inference import Predictor
from .methods import Method, build_method, method_class
from .metrics import mae, ssim2d_masked, ssim3d
from .runlock import RunLock
from .runtime import Launch, join_process_group, resolve_device
from .writeguard import check_run_folders

log = logging.getLogger(__name__)

#: without `val_every`/`val_minutes`, validation is scheduled so that it takes at most this share of training time
VAL_SHARE = 0.1
#: validation scores at most this many of the split's validation subjects (evenly spread), read one at a time
VAL_SUBJECTS = 16


@contextmanager
def _stop_on_signals(flag: dict):
    """SIGINT/SIGTERM set `flag['signal']`; the loop stops at the next step boundary. Old handlers come back after."""

    def handler(signum, frame):  # noqa: ARG001
        if flag.get("signal"):  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: no handlers
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _finite_weights(method: Method) -> bool:
    return all(bool(torch.isfinite(p).all()) for net in method.nets.values() for p in net.parameters())


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (network initialisation is then identical on every rank)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def validate(predictor: Predictor, subjects: Sequence[PreparedSubject] | LoadedSubjects) -> dict[str, float]:
    """Mean MAE and SSIM on [0, 1] inside the foreground over the validation subjects.

    Whole volumes (3D SSIM), unless the method asks for `validation_slices` (a slow sampler such as the DDPM): then
    that many evenly spaced foreground axial slices per subject (2D SSIM), so validation stays cheap.
    """
    if not subjects:
        return {}
    maes, ssims = [], []
    limit = predictor.method.validation_slices
    for s in subjects:
        source, target, mask = s.source, s.target, s.mask
        if target is None:
            raise ValueError(f"{s}: validation needs a target")
        if limit:
            chosen = _foreground_slices(mask, limit)
            source, target, mask = source[:, chosen], target[chosen], mask[chosen]
        present = s.present or None
        pred01, ref01 = (predictor.predict_array(source, present=present) + 1) / 2, (target + 1) / 2
        maes.append(mae(pred01, ref01, mask))
        ssims.append(ssim2d_masked(pred01, ref01, mask, "axial") if limit else ssim3d(pred01, ref01, mask))
    return {"val_mae": float(np.mean(maes)), "val_ssim": float(np.mean(ssims))}


def training_pairs(data: Path, config: TrainConfig) -> list[Pair]:
    """The pairs `train` and `prepare` use, from headers only (voxels are checked when a subject is cached, so a warm
    start stays fast at scale); with several sources a subject may lack any but the first, and the log says how many
    lack which."""
    pairs = require_pairs(
        data,
        config.source,
        config.target,
        resample_target=config.resample_target,
        check_data=False,
        register=config.preprocess.register,
        optional_sources=len(config.sources) > 1,
    )
    for i, name in enumerate(config.sources[1:], start=1):
        lacking = [p.subject for p in pairs if p.sources[i] is None]
        if lacking:
            log.info(f"{len(lacking)} of {len(pairs)} subject(s) have no {name}; they train with it absent")
    return pairs


def _foreground_slices(mask: np.ndarray, count: int) -> np.ndarray:
    """`count` evenly spaced axial slice indices among those holding foreground (all of them when fewer)."""
    holding = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if holding.size == 0:
        holding = np.arange(mask.shape[0])
    if holding.size <= count:
        return holding
    return holding[np.linspace(0, holding.size - 1, count).round().astype(int)]


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


def _checkpoint(
    method: Method,
    config: TrainConfig,
    step: int,
    best: float,
    intensity: IntensityRecord,
    split: dict,
    elapsed_s: float,
    world: int = 1,
) -> Checkpoint:
    return Checkpoint(
        config=config.to_dict(),
        state=method.state(),
        step=step,
        best_val_mae=best,
        elapsed_s=elapsed_s,
        target_intensity={"low": intensity.low, "high": intensity.high, "background": intensity.background},
        split=split,
        world=world,
    )


def train(
    config: TrainConfig,
    data: Path,
    out: Path,
    resume: bool = False,
    progress: bool = True,
    on_finish: Callable[[Method], None] | None = None,
) -> Path:
    """Train `config.method` (a resolved config) on the pairs under `data`; writes
    OUT/{split.json,last.pt,best.pt,log.csv}.

    Stops after `steps` (or `epochs`) or at the first step boundary past `minutes` of training, validation included;
    `resume` continues OUT/last.pt exactly, time budget included. Returns best.pt. `on_finish`, if given, is called
    with the trained method on every rank (e.g. to compare ranks in a test).
    """
    out = Path(out)
    check_run_folders(data, [(out, "--out"), (Path(config.cache) if config.cache else None, "--cache")])
    ctx = join_process_group(config.device)
    device = resolve_device(config.device)
    if device.type == "cuda" and ctx.world > 1:
        device = torch.device("cuda", ctx.local_rank)
    saved = None
    if resume:
        saved = _last_checkpoint(out)
        saved_config = _saved_config(saved, out / "last.pt")
        resume_config(saved_config, [("the resumed settings", config.to_dict())], out / "last.pt", method_class)
        per_epoch = steps_per_epoch(len(saved.split.get("train", [])), ctx.world, config.batch_size)
        check_schedule_extension(saved_config, config, per_epoch, saved, out)
    pairs = training_pairs(data, config)
    with ExitStack() as stack:
        if ctx.is_main:
            stack.enter_context(RunLock(out))  # one run per folder (a killed run's stale lock is taken over)
        flag: dict[str, int] = {}
        with _stop_on_signals(flag):
            _train_in_folder(config, out, ctx, device, pairs, saved, progress, on_finish, flag, data)
    return out / "best.pt"


def _train_in_folder(
    config: TrainConfig,
    out: Path,
    ctx: Launch,
    device: torch.device,
    pairs: list,
    saved: Checkpoint | None,
    progress: bool,
    on_finish: Callable[[Method], None] | None,
    stop: dict,
    data: Path,
) -> None:
    """The body of `train` once the inputs are checked and the run folder is ours."""
    if saved is not None and saved.world != ctx.world:
        raise UserError(
            f"{out / 'last.pt'}: the run was trained on {saved.world} rank(s), this one has {ctx.world}; resume "
            f"with torchrun --nproc_per_node {saved.world} (or that many ranks over the nodes), or start a new "
            f"run from its weights with --init {out / 'last.pt'}"
        )
    show = progress and ctx.is_main
    cache, manifest = _update_cache(config, ctx, data, out, pairs, show)  # before the run folder gets anything
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        split = load_or_make_split(out, [p.subject for p in pairs], config.seed, config.holdout)
    if ctx.world > 1:
        dist.barrier()
    if not ctx.is_main:
        split = load_or_make_split(out, [p.subject for p in pairs], config.seed, config.holdout)
    train_set, val_entries = _split_subjects(cache, manifest, split)
    run = RunFolder(out, data, split, ctx)
    trainer = Trainer(config, run, device, train_set, LoadedSubjects(val_entries), saved)
    if not trainer.method.trainable:
        trainer.fit_closed_form()
        return
    trainer.run(progress=show, stop=stop)
    if on_finish is not None:
        on_finish(trainer.method)


@dataclass(frozen=True)
class RunFolder:
    """Where a run lives and who it is: its folder, its data, its split and this process's rank."""

    out: Path
    data: Path
    split: dict
    ctx: Launch


class Trainer:
    """One training run's state in one place: the method, its predictor for validation, the step, the training time
    used and the best validation score; `run` is the step loop, `save` the only writer of checkpoints."""

    def __init__(
        self,
        config: TrainConfig,
        run: RunFolder,
        device: torch.device,
        train_set: list[CachedSubject],
        val_set: LoadedSubjects,
        saved: Checkpoint | None,
    ):
        self.config, self.folder, self.device = config, run, device
        self.train_set, self.val_set = train_set, val_set
        self.intensity = typical_intensity(train_set)  # type: ignore[arg-type]  # CachedSubject is a Subject
        seed_everything(config.seed)
        self.method = build_method(config).to(device)
        self.predictor = Predictor(self.method, config, self.intensity, config.inference, run.split)
        if run.ctx.is_main:
            config.write_yaml(run.out / "config.yaml")
        self.method.make_optimizers()
        self.step, self.best, self.elapsed = 0, math.inf, 0.0
        if saved is not None:
            self.method.load_state(saved.state)
            self.step, self.best, self.elapsed = saved.step, float(saved.best_val_mae), float(saved.elapsed_s)
        elif config.init:
            _load_init(self.method, config.init)
        self.saved_step = self.step

    @property
    def ctx(self) -> Launch:
        return self.folder.ctx

    def save(self, metrics: dict[str, float], elapsed: float) -> None:
        """last.pt always; best.pt when validation improved (or none exists yet), recording `elapsed` seconds of
        training. Never a diverged state."""
        if not _finite_weights(self.method):
            self.diverged("the weights")
        improved = bool(metrics) and metrics["val_mae"] < self.best
        if improved:
            self.best = metrics["val_mae"]
        ckpt = _checkpoint(
            self.method, self.config, self.step, self.best, self.intensity, self.folder.split, elapsed, self.ctx.world
        )
        out = self.folder.out
        if improved or not self.val_set or not (out / "best.pt").exists():  # without validation, best is the latest
            ckpt.save(out / "best.pt")
        ckpt.save(out / "last.pt")
        self.saved_step = self.step

    def diverged(self, what: str) -> None:
        """Stop the run (exit 3), keeping the last good checkpoint."""
        last = self.folder.out / "last.pt"
        kept = f"{last} (step {self.saved_step}) is kept" if last.exists() else "no checkpoint was written"
        raise TrainingStopped(
            f"step {self.step}: training diverged ({what} not finite); {kept}; lower the learning rate (lr) or the L1 "
            "weight and start again",
            exit_code=3,
        )

    def fit_closed_form(self) -> None:
        """A method fitted without optimiser steps (the look-up table): fit, validate, write both checkpoints."""
        self.method.fit_closed_form(LoadedSubjects(self.train_set))
        if not self.ctx.is_main:
            return
        metrics = validate(self.predictor, self.val_set)
        self.best = metrics.get("val_mae", math.nan)
        for name in ("last.pt", "best.pt"):
            _checkpoint(self.method, self.config, 0, self.best, self.intensity, self.folder.split, 0.0).save(
                self.folder.out / name
            )
        log.info(f"fitted {self.config.method}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))

    def run(self, progress: bool, stop: dict) -> None:
        """Optimiser steps until the budget is used or a signal arrives; validation and checkpoints on schedule."""
        config, ctx, device = self.config, self.ctx, self.device
        if ctx.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.method.wrap(lambda m: DistributedDataParallel(m, device_ids=ids))
        plan = BatchPlan(config.seed, ctx.rank, ctx.world, config.batch_size, config.patch, config.augment)
        workers = config.workers if config.workers is not None else default_workers(ctx.local_world)
        batches = StepBatches(self.train_set, plan)
        stream = stream_batches(batches, self.step, workers, pin_memory=device.type == "cuda")
        budget = Budget.of(config, batches.steps_per_epoch)
        logger = RunLogger(self.folder.out, ctx.is_main)
        self.method.train_mode(True)
        bar = tqdm(
            total=budget.steps,
            initial=self.step,
            desc=f"train {config.method}",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        clock = time.perf_counter()
        last_val_s, since_val = 0.0, 0.0
        (finished,) = _agree(ctx, device, budget.done(self.step, self.elapsed))
        while not finished:
            losses = self.take_step(next(stream), budget)
            now = time.perf_counter()
            self.elapsed, since_val, clock = self.elapsed + now - clock, since_val + now - clock, now
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items() if k in ("g_loss", "d_loss", "loss", "g_l1")})
            if ctx.is_main and self.step % config.log_every == 0:
                logger.log(self.step, {**losses, "s_per_step": self.elapsed / max(1, self.step)})
            due = _validation_due(config, self.step, batches.steps_per_epoch, since_val, last_val_s)
            finished, validate_now = _agree(ctx, device, budget.done(self.step, self.elapsed), due)
            if validate_now or finished:
                last_val_s = self.validate_and_save(logger, bar)
                now = time.perf_counter()
                self.elapsed, since_val, clock = self.elapsed + now - clock, 0.0, now
            (stopping,) = _agree(
                ctx, device, bool(stop.get("signal"))
            )  # after validation: a signal during it counts now
            if stopping and not finished:
                bar.close()
                self.stop_on_signal(stop)
                break
        del stream  # stops the loader's workers
        bar.close()
        logger.close()

    def take_step(self, batch: dict[str, torch.Tensor], budget: Budget) -> dict[str, float]:
        """One optimiser step at the schedule's learning rate; a non-finite loss stops the run."""
        config, ctx = self.config, self.ctx
        if config.lr_schedule != "constant":  # rank 0's progress: a time share could differ by process
            (progress,) = _agree_values(ctx, self.device, budget.progress(self.step, self.elapsed))
            set_lr_factor(self.method, lr_factor(config.lr_schedule, progress))
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        losses = self.method.training_step(batch, step_generator(config.seed, self.step, ctx.rank))
        self.step += 1
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            if not all(bool(torch.isfinite(v).all()) for v in batch.values()):  # the data, not the learning rate
                for subject in self.train_set:
                    subject.check_values()
            self.diverged(f"loss {bad[0]} = {losses[bad[0]]}")
        return losses

    def validate_and_save(self, logger: RunLogger, bar: tqdm) -> float:
        """Validate and checkpoint on rank 0 (the others wait); returns the seconds validation took."""
        seconds = 0.0
        if self.ctx.is_main:
            started = time.perf_counter()
            metrics = validate(self.predictor, self.val_set)
            seconds = time.perf_counter() - started
            logger.log(self.step, {**metrics, "val_s": seconds})
            self.save(metrics, self.elapsed + seconds)
            if metrics:
                bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if self.ctx.world > 1:
            dist.barrier()
        return seconds

    def stop_on_signal(self, stop: dict) -> None:
        """Ctrl-C or SIGTERM: save the step reached (rank 0) and stop with the command that resumes it."""
        if not self.ctx.is_main:
            return
        if self.saved_step != self.step:
            self.save({}, self.elapsed)
        name = signal.Signals(stop["signal"]).name if stop.get("signal") else "a signal"
        out = self.folder.out
        raise TrainingStopped(
            f"stopped by {name} at step {self.step}; {out / 'last.pt'} holds it; continue with: "
            f"modalsynth train --data {self.folder.data} --out {out} --resume",
            exit_code=128 + int(stop.get("signal") or 2),
        )


def _saved_config(saved: Checkpoint, path: Path) -> TrainConfig:
    return config_from_checkpoint(saved.config, saved.format_version, method_class, str(path))


def check_schedule_extension(
    saved_config: TrainConfig, config: TrainConfig, steps_per_epoch: int, saved: Checkpoint, out: Path
) -> None:
    """A decaying learning rate is laid over the budget a run started with. `--resume` with another budget is allowed
    while the rate goes on from where it was (it never rises above the rate of the last step taken); a finished run
    whose rate has begun to decay is not extended: a `UserError` says how to train longer."""
    if config.lr_schedule == "constant":
        return
    before, budget = Budget.of(saved_config, steps_per_epoch), Budget.of(config, steps_per_epoch)
    if before == budget or saved.step == 0:
        return
    last = lr_factor(config.lr_schedule, before.progress(saved.step - 1, saved.elapsed_s))
    new = lr_factor(config.lr_schedule, budget.progress(saved.step, saved.elapsed_s))
    if new <= last + 1e-9:
        return
    raise UserError(
        f"{out / 'last.pt'}: its learning rate ({config.lr_schedule}) had decayed to {last:.2f} of its start by step "
        f"{saved.step} of its budget ({before}); the new budget ({budget}) would raise it to {new:.2f}; keep the "
        f"budget, or train longer as a new run: modalsynth train --init {out / 'last.pt'} --out NEW_FOLDER ..."
    )


def _update_cache(
    config: TrainConfig, ctx: Launch, data: Path, out: Path, pairs: list, show: bool
) -> tuple[Path, dict[str, Any]]:
    """Bring the cache of every subject up to date (test ones too: each is read, and its voxels checked, before
    training starts): rank 0 first, then the first rank of each other node, which finds it ready on a shared
    filesystem and builds its own on node-local disk. Returns the cache folder and its manifest."""
    cache = Path(config.cache) if config.cache else default_cache_dir(data, out, config.source, config.target)
    settings = CacheSettings(config.source, config.target, config.resample_target, config.preprocess)
    manifest = build_cache(pairs, settings, cache, progress=show) if ctx.is_main else None
    if ctx.world > 1:
        dist.barrier()
        if ctx.local_rank == 0 and not ctx.is_main:
            build_cache(pairs, settings, cache, progress=False)
        dist.barrier()
        manifest = read_manifest(cache)
    assert manifest is not None  # every rank has read it
    if config.preprocess.register and ctx.is_main:  # what --register did, beside the run's other logs
        from .data.register import record_registrations

        record_registrations({p.subject: manifest["subjects"][p.subject] for p in pairs}, out)
    return cache, manifest


def _split_subjects(
    cache: Path, manifest: dict[str, Any], split: dict
) -> tuple[list[CachedSubject], list[CachedSubject]]:
    """The split's train subjects and at most VAL_SUBJECTS of its validation subjects, as checked cache entries."""
    val_names = split["val"]
    if len(val_names) > VAL_SUBJECTS:
        val_names = [val_names[i] for i in np.linspace(0, len(val_names) - 1, VAL_SUBJECTS).round().astype(int)]
    train_set, val_set = open_subjects(cache, manifest, split["train"]), open_subjects(cache, manifest, val_names)
    for subject in train_set + val_set:
        subject.check()
    return train_set, val_set


def _last_checkpoint(out: Path) -> Checkpoint:
    """OUT/last.pt for `--resume`; a `UserError` when there is none."""
    last = out / "last.pt"
    if not last.exists():
        raise UserError(f"{last}: nothing to resume; drop --resume to start a new run")
    return Checkpoint.load(last)


def _load_init(method: Method, init: str) -> None:
    """Fine-tuning: start from another run's (or a built-in model's) network weights; optimisers start fresh."""
    from . import builtin

    checkpoint = Checkpoint.load(builtin.resolve(init))
    try:
        method.load_init_weights(checkpoint.state["nets"], source_list(checkpoint.config["source"]))
    except RuntimeError as exc:
        raise UserError(
            f"--init {init}: its network does not match this run's ({str(exc).splitlines()[0][:100]}); "
            "drop the model settings that differ from it"
        ) from exc


def _agree(ctx: Launch, device: torch.device, *flags: bool) -> tuple[bool, ...]:
    """Rank 0's decisions, on every rank, in one broadcast (time-based decisions could otherwise differ by process)."""
    return tuple(v > 0.5 for v in _agree_values(ctx, device, *(1.0 if f else 0.0 for f in flags)))


def _agree_values(ctx: Launch, device: torch.device, *values: float) -> tuple[float, ...]:
    """Rank 0's numbers, on every rank, in one broadcast."""
    if ctx.world <= 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(tensor, src=0)
    return tuple(tensor.tolist())


@dataclass(frozen=True)
class Budget:
    """When training stops: a step count (from `steps` or `epochs`), a time limit (`minutes`), or both."""

    steps: int | None
    seconds: float | None

    def __str__(self) -> str:
        parts = ([f"{self.steps} steps"] if self.steps is not None else []) + (
            [f"{self.seconds / 60:g} minutes"] if self.seconds is not None else []
        )
        return " or ".join(parts) or "none"

    @classmethod
    def of(cls, config: TrainConfig, steps_per_epoch: int) -> Budget:
        if config.steps is not None:
            steps = config.steps
        elif config.minutes is not None:
            steps = None  # time alone decides
        else:
            steps = config.epochs * steps_per_epoch
        return cls(steps, None if config.minutes is None else config.minutes * 60.0)

    def done(self, step: int, elapsed_s: float) -> bool:
        return (self.steps is not None and step >= self.steps) or (
            self.seconds is not None and elapsed_s >= self.seconds
        )

    def progress(self, step: int, elapsed_s: float) -> float:
        """The share of the budget used, 0 to 1: the larger of the step and the time share."""
        shares = [0.0]
        if self.steps:
            shares.append(step / self.steps)
        if self.seconds:
            shares.append(elapsed_s / self.seconds)
        return min(1.0, max(shares))


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate's multiplier at `progress` (0 to 1) through the budget: 'linear-decay' is pix2pix's rule
    (constant for the first half, then linearly to 0), tied to the budget so that a minutes budget decays too."""
    if schedule == "linear-decay":
        return min(1.0, 2.0 * (1.0 - progress))
    return 1.0


def set_lr_factor(method: Method, factor: float) -> None:
    """Scale every optimiser's learning rate to `factor` times the one it started with (kept as 'initial_lr', which
    travels in the optimiser's state, so a resumed run scales the same base)."""
    for optimizer in method.optimizers.values():
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def _validation_due(
    config: TrainConfig, step: int, steps_per_epoch: int, since_val_s: float, last_val_s: float
) -> bool:
    """Every `val_every` steps; else every `val_minutes`; else (the default) when training since the last validation
    has taken (1 - VAL_SHARE) / VAL_SHARE times as long as that validation did, and at least one epoch has passed."""
    if config.val_every:
        return step % config.val_every == 0
    if config.val_minutes:
        return since_val_s >= config.val_minutes * 60.0
    return step % steps_per_epoch == 0 and since_val_s * VAL_SHARE >= last_val_s * (1 - VAL_SHARE)


def train_from_cli(
    data: Path,
    out: Path,
    options: dict[str, Any],
    config: Path | None,
    resume: bool,
) -> Path:
    """`modalsynth train`: settings resolved once (config.py) from the YAML file and the options the user gave."""
    layers: list[Layer] = []
    if config:
        layers.append((str(config), read_settings_file(config)))
    given = {k: v for k, v in options.items() if v is not None}
    if given:
        layers.append(("the command line", given))
    if resume:
        last = Path(out) / "last.pt"
        cfg = resume_config(_saved_config(_last_checkpoint(Path(out)), last), layers, last, method_class)
    else:
        cfg = resolve_config(layers, method_class)
        if cfg.init and not any("init" in layer for _, layer in layers):
            widened = "; the sources it was not trained on start at zero weight" if len(cfg.sources) > 1 else ""
            log.info(
                f"starting from {cfg.init}'s weights, the default start of this method and pair{widened} "
                "(--init none: random)"
            )
    best = train(cfg, data, out, resume=resume)
    log.info(f"best checkpoint: {best}")
    return best


def prepare_from_cli(
    data: Path, cache: Path, options: dict[str, Any], config: Path | None, workers: int | None
) -> None:
    """`modalsynth prepare`: the settings resolved as `train` resolves them, then the cache brought up to date."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers {workers}: give at least 1 process")
    layers: list[Layer] = [(str(config), read_settings_file(config))] if config else []
    layers.append(("the command line", {k: v for k, v in options.items() if v is not None}))
    cfg = resolve_config(layers, method_class)
    check_run_folders(data, [(cache, "--cache")])
    pairs = training_pairs(data, cfg)
    settings = CacheSettings(cfg.source, cfg.target, cfg.resample_target, cfg.preprocess)
    manifest = build_cache(pairs, settings, cache, workers=workers)
    for subject in open_subjects(cache, manifest, sorted(manifest["subjects"])):  # what train would reject
        subject.check()
        subject.check_values()
    log.info(f"{cache}: {len(manifest['subjects'])} subject(s) cached, {cache_size_bytes(cache) / 1e9:.2f} GB")
