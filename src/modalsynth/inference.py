"""Volume -> volume. The only place a method's network is applied to volumes, and the one `Predictor`.

A method hands over a function and an `InferencePlan` (whole volume, MONAI sliding windows, or axial slices); the
`Predictor` (nnU-Net's idea) adds preprocessing, postprocessing, file naming and timing, and is used alike by
`modalsynth predict`, by validation during training and by the benchmark.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from .checkpoints import Checkpoint
from .cohort import Cohort
from .config import InferenceConfig, TrainConfig, config_from_checkpoint
from .data.pairs import canonical_modality, check_volumes, compare_grids, discover_subjects, grid_mismatch, source_list
from .data.preprocess import IntensityRecord, foreground_mask, postprocess, preprocess
from .data.register import Aligner
from .data.skullstrip import SkullStrip
from .errors import UserError
from .input_checks import input_warnings
from .io import Volume, file_identity, is_nifti, load_volume, save_volume
from .methods import Method, build_method, method_class
from .methods.sources import network_input
from .threads import split_across_threads

#: a whole-volume prediction slower than this is timed once, not `repeats` times (the table says so)
TIME_ONCE_ABOVE_S = 10.0


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a `UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


def spread_overlaps(shape: Sequence[int], roi: Sequence[int], overlap: float) -> tuple[float, ...]:
    """Per axis, the largest overlap that needs no more windows than `overlap` does: the same windows, spread evenly
    over the axis instead of packed at `overlap` with the last one pushed back from the edge (MONAI places them so).
    More overlap at no cost; written by hand because MONAI takes the overlap as given."""
    overlaps = []
    for size, window in zip(shape, roi):
        if size <= window:
            overlaps.append(0.0)
            continue
        count = math.ceil((size - window) / max(int(window * (1 - overlap)), 1)) + 1
        step = math.ceil((size - window) / (count - 1))
        overlaps.append(1.0 - (step + 0.5) / window)  # MONAI's step is int(window * (1 - overlap)) = step
    return tuple(overlaps)


@torch.no_grad()
def sliding_window_predict(
    net: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    roi: Sequence[int],
    overlap: float = 0.5,
    batch_size: int = 1,
    sigma_scale: float = 0.125,
    parallel: bool = False,
) -> torch.Tensor:
    """Run a 3D network over a (1, C, D, H, W) volume in windows at least `overlap` apart, spread evenly, blended with
    Gaussian weights of sigma `sigma_scale` x roi (MONAI's sliding_window_inference); with `parallel`, on a CPU, the
    windows of a batch run on the torch threads side by side (`split_across_threads`)."""
    if tuple(source.shape[2:]) == tuple(roi):
        return net(source)
    predictor = split_across_threads(net) if parallel else net
    return sliding_window_inference(
        source,
        tuple(roi),
        sw_batch_size=batch_size,
        predictor=predictor,
        mode="gaussian",
        overlap=spread_overlaps(source.shape[2:], roi, overlap),
        sigma_scale=sigma_scale,
    )


@torch.no_grad()
def slicewise_predict(
    net: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, batch_size: int = 16, parallel: bool = False
) -> torch.Tensor:
    """Run a 2D network over every axial slice of a (1, C, D, H, W) volume, `batch_size` slices at a time (with
    `parallel`, on a CPU, the slices of a batch run on the torch threads side by side)."""
    slices = source[0].permute(1, 0, 2, 3)  # (D, C, H, W)
    run = split_across_threads(net) if parallel else net
    outputs = [run(slices[i : i + batch_size]) for i in range(0, slices.shape[0], batch_size)]
    return torch.cat(outputs).permute(1, 0, 2, 3)[None]


@torch.no_grad()
def apply_method(
    method: Method, source: torch.Tensor, inference: InferenceConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Synthesise a whole (1, 1, D, H, W) source in [-1, 1] with a method, as its `InferencePlan` for these inference
    settings says; float32 in [-1, 1]."""
    network, how = method.inference_function(inference, gen), method.application(inference)

    def function(batch: torch.Tensor) -> torch.Tensor:
        # the autocast is entered per call, not around the loop: `split_across_threads` runs calls on worker threads,
        # and autocast is a per-thread state
        with method.inference_autocast(inference):
            return network(batch).float()

    if how.mode == "slices":
        out = slicewise_predict(function, source, how.batch_size, how.parallel)
    elif how.mode == "window" and how.roi is not None:
        out = sliding_window_predict(
            function, source, how.roi, how.overlap, how.batch_size, how.sigma_scale, how.parallel
        )
    elif how.mode in ("volume", "window"):
        out = function(source)
    else:
        raise ValueError(f"unknown application mode {how.mode!r}")
    return out.clamp(-1.0, 1.0)  # float32: `function` returns float32


def with_inference_changes(
    inference: InferenceConfig, method: Method, origin: Path | None, changes: Mapping[str, object]
) -> InferenceConfig:
    """`inference` with the changes a user asked for (None: unchanged), checked: an overlap outside [0, 1) or for a
    model not applied in sliding windows is a `UserError`."""
    changes = {k: v for k, v in changes.items() if v is not None}
    overlap = changes.get("overlap")
    if overlap is not None:
        if not 0.0 <= float(overlap) < 1.0:  # type: ignore[arg-type]
            raise UserError(f"--overlap {overlap}: give a fraction of the window, at least 0 and below 1 (e.g. 0.5)")
        how = method.application(inference)
        if how.mode != "window" or how.roi is None:
            raise UserError(
                f"--overlap: {origin} is applied to {how.mode}s, not in sliding windows; leave --overlap out"
            )
    return dataclasses.replace(inference, **changes)


@dataclass(frozen=True)
class Predictor:
    """A method ready to predict: the settings and target intensities it was trained with, and how it predicts
    (`inference`). Immutable: other inference settings make another `Predictor` (`with_inference`)."""

    method: Method
    config: TrainConfig
    intensity: IntensityRecord
    inference: InferenceConfig
    split: Mapping[str, list[str]] = field(default_factory=dict)
    origin: Path | None = None
    check_input: bool = False  # warn when a volume does not look like the model's expected input (built-in models)
    skull: SkullStrip | None = None  # brain extraction of raw inputs; None: as the model was trained (its preprocess)
    sources: tuple[str, ...] | None = (
        None  # which of the model's sources to read (None: all); a single file is the first
    )
    align: Aligner | None = None  # --register: the other sources registered onto the first (None: same grid only)

    def with_sources(self, text: str | None) -> Predictor:
        """This predictor reading only the sources named in `text` ('flair' or 'flair,t2'; None: all the model's);
        a name the model does not take is a `UserError`."""
        if text is None:
            return dataclasses.replace(self, sources=None)
        asked = source_list(text)
        unknown = [s for s in asked if s not in self.config.sources]
        if unknown or not all(asked):
            raise UserError(
                f"--source {text}: {self.origin or 'the model'} takes {self.config.source} (any of them, "
                f"for a model trained with several); choose --source from those"
            )
        return dataclasses.replace(self, sources=tuple(s for s in self.config.sources if s in asked))

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Path, device: str | torch.device = "auto", check_input: bool = False
    ) -> Predictor:
        """Rebuild only what prediction needs (no discriminator, no optimisers) from a checkpoint file."""
        ckpt = Checkpoint.load(Path(checkpoint))
        config = config_from_checkpoint(ckpt.config, ckpt.format_version, method_class, str(checkpoint))
        method = build_method(config, training=False)
        method.load_state(ckpt.state, with_optimizers=False)
        method.to(device if isinstance(device, torch.device) else resolve_device(device))
        method.train_mode(False)
        return cls(
            method,
            config,
            IntensityRecord(**ckpt.target_intensity),
            config.inference,
            ckpt.split,
            Path(checkpoint),
            check_input,
        )

    def with_inference(self, **changes: object) -> Predictor:
        """This predictor with some inference settings changed (None: unchanged), checked as the command line is."""
        inference = with_inference_changes(self.inference, self.method, self.origin, changes)
        return dataclasses.replace(self, inference=inference)

    @property
    def device(self) -> torch.device:
        return self.method.device

    def predict_array(self, source: np.ndarray, seed: int = 0, present: Sequence[bool] | None = None) -> np.ndarray:
        """Preprocessed sources (S, D, H, W), or one (D, H, W), in [-1, 1] -> the synthetic target in [-1, 1] on the
        same grid. `present`: which of the model's S sources are given (None: all; the others may hold anything)."""
        was_training = [net.training for net in self.method.nets.values()]
        self.method.train_mode(False)
        try:
            channels = torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32)).reshape(-1, *source.shape[-3:])
            flags = None if present is None else torch.tensor([list(present)])
            tensor = network_input(channels[None], flags).to(self.device)
            out = apply_method(self.method, tensor, self.inference, torch.Generator().manual_seed(seed))
            if self.inference.flip_average:  # the left-right mirror image predicted too, mirrored back and averaged
                mirrored = apply_method(
                    self.method, tensor.flip(-1), self.inference, torch.Generator().manual_seed(seed)
                )
                out = 0.5 * (out + mirrored.flip(-1))
        finally:
            for net, mode in zip(self.method.nets.values(), was_training):
                net.train(mode)
        return out.cpu().numpy()[0, 0]

    @property
    def file_source(self) -> str:
        """The sequence a single input file is taken to be: the first of the sources read."""
        return (self.sources or self.config.sources)[0]

    def predict_volume(self, volume: Volume, seed: int = 0) -> Volume:
        """Predict the target from one source volume (`file_source`); see `predict_sources`."""
        return self.predict_sources({self.file_source: volume}, seed)

    def predict_sources(self, volumes: Mapping[str, Volume], seed: int = 0) -> Volume:
        """Predict the target from the sources given (sequence -> volume: any non-empty subset of the model's),
        skull-stripped first as `self.skull` says (the brain found on the first); the result is on the first
        source's grid, affine and header."""
        order = [name for name in self.config.sources if name in volumes]
        if not order or len(order) < len(volumes):
            raise UserError(
                f"{self.origin or 'the model'} takes {self.config.source}; got {', '.join(volumes) or 'nothing'}"
            )
        first, others = volumes[order[0]], [volumes[name] for name in order[1:]]
        if self.align is not None:
            others = self.align.onto(first, others)
        for other in others:
            check_same_grid(first, other)
        skull = self.skull or SkullStrip(self.config.preprocess.skull_strip)
        checked = skull.mode != "never"

        def predict(brain: Volume, other_brains: list[Volume]) -> Volume:
            return self._predict_brain(dict(zip(order, [brain, *other_brains])), seed, checked)

        return skull.around(first, predict, others)

    def _predict_brain(self, volumes: dict[str, Volume], seed: int, whole_head_checked: bool) -> Volume:
        """Predict the target from skull-stripped sources, the first setting the grid (`whole_head_checked`: skull
        stripping has looked at them already)."""
        name, volume = next(iter(volumes.items()))
        foreground = foreground_mask(volume.data)  # once: the checks, the grid, the intensity scaling and the output
        if self.check_input:
            for warning in input_warnings(volume, name, foreground, check_whole_head=not whole_head_checked):
                print(f"warning: {volume.path}: {warning}", file=sys.stderr)
        fg = Volume(foreground.astype(np.uint8), volume.affine, volume.header)
        pre = preprocess(volume, self.config.preprocess, mask=fg)
        arrays = {name: pre.array}
        for other, image in list(volumes.items())[1:]:
            arrays[other] = preprocess(image, self.config.preprocess, grid=pre.grid, mask=fg).array
        zeros = np.zeros_like(pre.array)
        stacked = np.stack([arrays.get(s, zeros) for s in self.config.sources])
        pred = self.predict_array(stacked, seed, [s in arrays for s in self.config.sources])
        out = postprocess(pred, pre.grid, self.intensity, volume.header)
        # outside the source's foreground there is nothing to synthesise: give it the targets' background value
        background = self.intensity.low if self.intensity.background is None else self.intensity.background
        out.data[~foreground] = background
        return out

    def output_path(self, out_root: Path, subject: str) -> Path:
        """The one naming rule for a folder of predictions: OUT/<subject>/<target>.nii.gz."""
        return Path(out_root) / subject / f"{canonical_modality(self.config.target)}.nii.gz"

    def time_volume(self, volume: Volume, repeats: int = 3, measured: Sequence[float] = ()) -> tuple[float, str]:
        """Seconds to predict one whole volume (pre- and postprocessing included): the median of `repeats` runs, or
        one run when the first takes longer than TIME_ONCE_ABOVE_S; predictions already `measured` (seconds each) are
        reused instead when they are that slow. Returns (seconds, how it was timed)."""
        if measured and measured[0] > TIME_ONCE_ABOVE_S:
            return statistics.median(measured), f"median of {len(measured)} prediction(s), one run each"
        times: list[float] = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            self.predict_volume(volume)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            if times[0] > TIME_ONCE_ABOVE_S:
                break
        how = f"median of {len(times)}" if len(times) > 1 else "one run"
        return statistics.median(times), how

    def predict_file(self, source: Path, output: Path) -> Path:
        """One source file -> one output file (an existing folder as `output` gets OUT/<target>.nii.gz)."""
        source, output = Path(source), Path(output)
        if output.is_dir():
            output = output / f"{canonical_modality(self.config.target)}.nii.gz"
        if not is_nifti(output):
            raise UserError(f"{output}: for a single input file give an output file ending in .nii.gz")
        refuse_overwriting_inputs([source], [output])
        if len(self.config.sources) > 1:
            print(
                f"predicting from {self.file_source} only (the model takes {self.config.source}; give a data folder "
                "for several)"
            )
        return save_volume(self.predict_volume(load_volume(source)), output)

    def predict_folder(
        self, root: Path, out_root: Path, split: str | None = None, progress: bool = True, cohort: Cohort | None = None
    ) -> tuple[list[Path], list[float]]:
        """Every subject's source under `root` (optionally one recorded split) -> OUT/<subject>/<target>.nii.gz; with a
        `cohort`, only this rank's share, skipping the outputs an earlier run of the same model already wrote."""
        jobs = self.folder_jobs(root, split)
        outputs = [self.output_path(out_root, subject) for subject, _ in jobs]
        refuse_overwriting_inputs([p for _, files in jobs for p in files.values()] + _all_files(root), outputs)
        todo = list(zip(jobs, outputs))
        if cohort is not None:
            share = cohort.share(todo)
            todo = [(job, out) for job, out in share if not cohort.finished(list(job[1].values()), out)]
            if len(todo) < len(share):
                print(f"skipped {len(share) - len(todo)} output(s) already written by this model and settings")
        check_volumes([p for (_, files), _ in todo for p in files.values()])  # all readable before the first output
        for (_, files), _ in todo:
            first, *others = files.values()
            problem = next(filter(None, (grid_mismatch(first, other) for other in others)), None)
            if problem and self.align is None:
                raise UserError(f"{problem}; {NOT_REGISTERED}")
        if cohort is not None:
            cohort.begin()
        if len(self.config.sources) > 1:
            used = Counter("+".join(files) for (_, files), _ in todo)
            print("predicting from " + "; ".join(f"{k} ({n} subject(s))" for k, n in used.items()))
        written, times = [], []
        for (subject, files), output in tqdm(todo, desc="predicting", unit="volume", disable=not progress):
            start = time.perf_counter()
            result = self.predict_sources({name: load_volume(path) for name, path in files.items()})
            times.append(time.perf_counter() - start)
            written.append(save_volume(result, output))
        return written, times

    def folder_jobs(self, root: Path, split: str | None = None) -> list[tuple[str, dict[str, Path]]]:
        """(subject, {sequence: file}) for every subject under `root` that has at least one of the sources read (the
        model's, or those chosen by `with_sources`), restricted to a split if asked."""
        subjects = discover_subjects(root, one_subject=True)
        wanted = None
        if split:
            if split not in ("train", "val", "test"):
                raise UserError(f"--split {split}: choose train, val or test")
            wanted = set(self.split.get(split, []))
            if not wanted:
                raise UserError(f"{self.origin}: the checkpoint records no subjects in split {split!r}; drop --split")
        read = self.sources or self.config.sources
        key = " or ".join(read)
        chosen = {s: {m: f[m] for m in read if m in f} for s, f in subjects.items() if wanted is None or s in wanted}
        jobs = [(s, files) for s, files in chosen.items() if files]
        missing = [s for s, files in chosen.items() if not files]
        if missing:
            print(f"skipped {len(missing)} subject(s) without {key}: {', '.join(missing[:5])}")
        if not jobs:
            raise UserError(
                f"{root}: no {key} volumes to predict"
                + (f" in split {split!r}" if split else "")
                + f"; {self.origin or 'the model'} maps {self.config.source} -> {self.config.target}, "
                "so the data needs a file of that source modality per subject"
            )
        return jobs


NOT_REGISTERED = "register the sequences to one grid first (add --register), or predict from one (--source)"


def check_same_grid(first: Volume, other: Volume) -> None:
    """Several sources must share one voxel grid (unless `--register` moved them there): a one-line `UserError`."""
    if compare_grids(first.shape, first.affine, other.shape, other.affine) is not None:
        raise UserError(f"{other.path}: not on the grid of {first.path} (shape or affine differ); {NOT_REGISTERED}")


def checkpoint_summary(checkpoint: Path) -> str:
    """What a checkpoint holds and, as YAML, the fully resolved settings its run used (`modalsynth inspect RUN/best.pt`)."""
    ckpt = Checkpoint.load(checkpoint)
    config = config_from_checkpoint(ckpt.config, ckpt.format_version, method_class, str(checkpoint))
    head = (
        f"# {checkpoint}: step {ckpt.step}, {ckpt.elapsed_s / 60:.1f} minutes of training, checkpoint format "
        f"{ckpt.format_version}, written by modalsynth {ckpt.package_version}\n"
    )
    return head + yaml.safe_dump(config.to_dict(), sort_keys=False)


def refuse_overwriting_inputs(inputs: Sequence[Path], outputs: Sequence[Path]) -> None:
    """A `UserError` if any output would replace an input file (same path, or the same file through a link)."""
    taken = {_identity(p): Path(p) for p in inputs if Path(p).exists()}
    for output in outputs:
        key = _identity(output)
        if key in taken:
            raise UserError(
                f"{output}: is an input ({taken[key]}); writing there would overwrite it, choose another --output"
            )


def _identity(path: Path) -> tuple:
    path = Path(path)
    if path.exists():
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    return ("path", str(path.resolve()))


def _all_files(root: Path) -> list[Path]:
    root = Path(root)
    if root.is_file():
        return [root]
    return [p for p in root.rglob("*") if p.is_file()] if root.is_dir() else []


def predict_path(
    checkpoint: Path,
    input: Path,
    output: Path,
    device: str = "auto",
    split: str | None = None,
    check_input: bool = False,
    inference_changes: Mapping[str, object] | None = None,
    skull: SkullStrip | None = None,
    sources: str | None = None,
    align: Aligner | None = None,
) -> list[Path]:
    """`modalsynth predict`: one file to one file, or a data folder to OUT/<subject>/<target>.nii.gz.

    `check_input` (the built-in models): warn, without stopping, when an input does not look like what the model expects.
    `inference_changes`: inference settings instead of the checkpoint's (e.g. overlap, flip_average).
    `skull`: skull stripping of raw inputs instead of the checkpoint's training setting.
    `sources`: which of a multi-source model's inputs to read ('flair' or 'flair,t2'; None: all).
    `align`: register the other sources onto the first (`--register`).
    """
    input = Path(input)
    folder = not (input.is_file() or is_nifti(input))
    if folder and int(os.environ.get("WORLD_SIZE", "1")) > 1 and resolve_device(device).type == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per rank of a torchrun job
    predictor = Predictor.from_checkpoint(checkpoint, device, check_input).with_inference(**(inference_changes or {}))
    predictor = dataclasses.replace(predictor, skull=skull or predictor.skull, align=align).with_sources(sources)
    return run_predictor(predictor, input, output, split, model_file=checkpoint)


def run_predictor(
    predictor: Predictor, input: Path, output: Path, split: str | None = None, model_file: Path | None = None
) -> list[Path]:
    """One file to one file, or a data folder to OUT/<subject>/<target>.nii.gz (under torchrun: this rank's share; a
    rerun skips outputs already written with the same model and settings), printing the time per volume."""
    input, output = Path(input), Path(output)
    if input.is_file() or is_nifti(input):
        start = time.perf_counter()
        written = predictor.predict_file(input, output)
        print(f"wrote {written} ({time.perf_counter() - start:.1f} s on {predictor.device})")
        return [written]
    skull = None if predictor.skull is None else dataclasses.asdict(predictor.skull)
    record = {
        "checkpoint": file_identity(Path(model_file or predictor.origin)),
        "inference": predictor.inference.to_dict(),
        "skull": skull,
        "sources": list(predictor.sources or predictor.config.sources),
        "register": predictor.align is not None,
    }
    cohort = Cohort(output, record)
    with cohort:
        written, times = predictor.predict_folder(input, output, split, cohort=cohort)
    rank = f"rank {cohort.rank}: " if cohort.world > 1 else ""
    speed = f" ({np.median(times):.2f} s per volume on {predictor.device})" if times else ""
    print(f"{rank}wrote {len(written)} volume(s) to {output}{speed}")
    return written
