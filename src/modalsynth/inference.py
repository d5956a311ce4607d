"""Volume -> volume: the one place a method's network is applied to volumes, and the one `Predictor`.

A method hands over a function and an `Inferer` (`inferers.py`); the `Predictor` (nnU-Net's idea) adds preprocessing
and postprocessing, and is used alike by `modalsynth predict` (whose file and folder jobs are `predict_jobs.py`), by
validation during training and by the benchmark.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import builtin
from .checkpoints import Checkpoint
from .config import InferenceConfig, TrainConfig, config_from_checkpoint
from .data.pairs import require_same_grid, source_list
from .data.preprocess import IntensityRecord, foreground_mask, postprocess, preprocess
from .data.register import Aligner
from .data.skullstrip import SkullStrip
from .errors import UserError
from .inferers import SlidingWindowInferer
from .input_checks import input_warnings
from .io import Volume, file_digest, file_identity
from .methods import Method, build_method, method_class
from .methods.sources import network_input
from .runtime import resolve_device

log = logging.getLogger(__name__)


@torch.no_grad()
def apply_method(
    method: Method, source: torch.Tensor, inference: InferenceConfig, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Synthesise a whole (1, C, D, H, W) source in [-1, 1] with a method, as its `Inferer` for these inference
    settings says; float32 in [-1, 1]."""
    network, inferer = method.inference_function(inference, gen), method.application(inference)

    def function(batch: torch.Tensor) -> torch.Tensor:
        # the autocast is entered per call, not around the loop: `split_across_threads` runs calls on worker threads,
        # and autocast is a per-thread state
        with method.inference_autocast(inference):
            return network(batch).float()

    out = inferer(function, source)
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
        if not isinstance(method.application(inference), SlidingWindowInferer):
            raise UserError(f"--overlap: {origin} is not applied in sliding windows; leave --overlap out")
    return dataclasses.replace(inference, **changes)  # type: ignore[arg-type]  # typer typed each option


@dataclass(frozen=True)
class Synthesis:
    """A synthetic image and what made it: the predictor whose network predicted it (a built-in's twin for a brain
    stripped here) and whether the brain was skull-stripped here."""

    image: Volume
    model: Predictor
    stripped_here: bool


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
    raw: Predictor | None = None  # the built-in twin for brains stripped here from raw scans (None: this one)

    def with_sources(self, text: str | None) -> Predictor:
        """This predictor reading only the sources named in `text` ('flair' or 'flair,t2'; None: all the model's);
        a name the model does not take is a `UserError`."""
        if text is None:
            return dataclasses.replace(self, sources=None)
        asked = source_list(text)
        if len(set(asked)) < len(asked):
            raise UserError(f"--source {text}: give distinct sequence names separated by commas, e.g. flair,t2")
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

    @classmethod
    def load(cls, spec: str | Path | None, device: str | torch.device = "auto") -> Predictor:
        """A checkpoint file or `builtin:NAME` (None: the default built-in) ready to predict: a built-in checks its
        inputs and brings its twin for raw scans (`raw`), if it has one."""
        predictor = cls.from_checkpoint(builtin.resolve(spec), device, check_input=builtin.is_builtin(spec))
        twin = builtin.raw_twin(spec)
        if twin is None:
            return predictor
        return dataclasses.replace(predictor, raw=cls.from_checkpoint(twin, predictor.device))

    def for_stripped_brains(self) -> Predictor:
        """The predictor for brains skull-stripped here from raw scans: the twin's network and intensities (deepbet's
        mask keeps a rim the stripped training brains lack) with this one's settings; this one when it has no twin."""
        if self.raw is None:
            return self
        twin = self.raw
        return dataclasses.replace(
            self, method=twin.method, config=twin.config, intensity=twin.intensity, origin=twin.origin, raw=None
        )

    def model_files(self) -> dict[str, object]:
        """The model files this predictor reads, as a rerun compares them (`io.file_identity`): its checkpoint and its
        twin for raw scans (None where there is none)."""
        twin = self.raw.origin if self.raw is not None else None
        return {
            name: file_identity(path) if path else None
            for name, path in (("checkpoint", self.origin), ("raw_twin", twin))
        }

    def model_record(self) -> dict[str, object]:
        """The model as a sidecar names it: name, sha256, method, what it maps, and the modalsynth version."""
        from . import __version__

        return {
            "Name": builtin.spec_of(self.origin),
            "Sha256": file_digest(self.origin) if self.origin else None,
            "Method": self.config.method,
            "Sources": list(self.config.sources),
            "Target": self.config.target,
            "ModalsynthVersion": __version__,
        }

    def model_records(self) -> dict[Path | None, dict[str, object]]:
        """`model_record` of this predictor and of its twin for raw scans, by model file: made once per run, so that
        each image's record does not hash its model file again."""
        return {model.origin: model.model_record() for model in (self, self.for_stripped_brains())}

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
        """Predict the target from the sources given (sequence -> volume: any non-empty subset of the model's); see
        `synthesise`."""
        return self.synthesise(volumes, seed).image

    def synthesise(self, volumes: Mapping[str, Volume], seed: int = 0) -> Synthesis:
        """Predict the target from the sources given, skull-stripped first as `self.skull` says (the brain found on
        the first, then predicted by `for_stripped_brains`); the image is on the first source's grid, affine and
        header, and comes with the predictor that made it."""
        order = [name for name in self.config.sources if name in volumes]
        if not order or len(order) < len(volumes):
            raise UserError(
                f"{self.origin or 'the model'} takes {self.config.source}; got {', '.join(volumes) or 'nothing'}"
            )
        first, others = volumes[order[0]], [volumes[name] for name in order[1:]]
        if self.align is not None:
            others = self.align.onto(first, others)
        for other in others:
            require_same_grid(first, other)
        skull = self.skull or SkullStrip(self.config.preprocess.skull_strip)
        checked = skull.mode != "never"
        made_by, stripped_here = self, False  # what `skull.around` chose

        def predict(brain: Volume, other_brains: list[Volume], stripped: bool) -> Volume:
            nonlocal made_by, stripped_here
            if stripped:
                made_by, stripped_here = self.for_stripped_brains(), True
                log.info(f"{first.path or 'the input'}: skull-stripped, predicted by {builtin.spec_of(made_by.origin)}")
            return made_by._predict_brain(dict(zip(order, [brain, *other_brains])), seed, checked)

        image = skull.around(first, predict, others)
        return Synthesis(image, made_by, stripped_here)

    def _predict_brain(self, volumes: dict[str, Volume], seed: int, whole_head_checked: bool) -> Volume:
        """Predict the target from skull-stripped sources, the first setting the grid (`whole_head_checked`: skull
        stripping has looked at them already)."""
        name, volume = next(iter(volumes.items()))
        foreground = foreground_mask(volume.data)  # once: the checks, the grid, the intensity scaling and the output
        if self.check_input:
            for warning in input_warnings(volume, name, foreground, check_whole_head=not whole_head_checked):
                log.warning(f"{volume.path}: {warning}")
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
