"""Volume -> volume: sliding-window (MONAI) for 3D networks, a slice loop for 2D ones, and `modalsynth predict`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from tqdm import tqdm

from .checkpoints import load_checkpoint
from .config import TrainConfig
from .data.pairs import canonical_modality, discover_subjects
from .data.preprocess import IntensityRecord, foreground_mask, postprocess, preprocess
from .errors import UserError
from .io import Volume, is_nifti, load_volume, save_volume
from .methods import Method, build_method


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA on a machine without it is a `UserError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name}: use cpu, cuda, cuda:N or auto")
    return torch.device(name)


@torch.no_grad()
def sliding_window_predict(
    net: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, roi: tuple[int, int, int], overlap: float = 0.5
) -> torch.Tensor:
    """Run a 3D network over a (1, C, D, H, W) volume in overlapping windows blended with Gaussian weights (MONAI)."""
    if tuple(source.shape[2:]) == tuple(roi):
        return net(source)
    return sliding_window_inference(source, roi, sw_batch_size=1, predictor=net, overlap=overlap, mode="gaussian")


@torch.no_grad()
def slicewise_predict(
    net: Callable[[torch.Tensor], torch.Tensor], source: torch.Tensor, batch_size: int = 16
) -> torch.Tensor:
    """Run a 2D network over every axial slice of a (1, C, D, H, W) volume, `batch_size` slices at a time."""
    slices = source[0].permute(1, 0, 2, 3)  # (D, C, H, W)
    outputs = [net(slices[i : i + batch_size]) for i in range(0, slices.shape[0], batch_size)]
    return torch.cat(outputs).permute(1, 0, 2, 3)[None]


def load_method(checkpoint: Path, device: torch.device) -> tuple[Method, TrainConfig, IntensityRecord, dict]:
    """Rebuild a trained method from its checkpoint for inference."""
    payload = load_checkpoint(checkpoint)
    config = TrainConfig.from_dict(payload["config"], origin=str(checkpoint))
    method = build_method(config)
    method.load_state(payload["state"], with_optimizers=False)
    method.to(device)
    method.train_mode(False)
    intensity = IntensityRecord(**payload["target_intensity"])
    return method, config, intensity, payload


def synthesise(method: Method, volume: Volume, config: TrainConfig, intensity: IntensityRecord, seed: int = 0) -> Volume:
    """Predict the target for one source volume; the result is on the source's grid, affine and header."""
    pre = preprocess(volume, config.preprocess)
    source = torch.from_numpy(pre.array)[None, None].to(method.device)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pred = method.predict(source, gen).float().cpu().numpy()[0, 0]
    out = postprocess(np.clip(pred, -1.0, 1.0), pre.grid, intensity, volume.header)
    # outside the source's foreground there is nothing to synthesise: give it the targets' background value
    background = intensity.low if intensity.background is None else intensity.background
    out.data[~foreground_mask(volume.data)] = background
    return out


def predict_path(checkpoint: Path, input: Path, output: Path, device: str = "auto", split: str | None = None) -> list[Path]:
    """`modalsynth predict`: one file to one file, or a data folder to OUT/<subject>/<target>.nii.gz."""
    dev = resolve_device(device)
    method, config, intensity, _ = load_method(checkpoint, dev)
    input, output = Path(input), Path(output)
    if input.is_file() or is_nifti(input):
        if output.exists() and output.is_dir():
            output = output / f"{config.target}.nii.gz"
        if not is_nifti(output):
            raise UserError(f"{output}: for a single input file give an output file ending in .nii.gz")
        save_volume(synthesise(method, load_volume(input), config, intensity), output)
        print(f"wrote {output}")
        return [output]
    jobs = _folder_jobs(input, config.source, checkpoint, split)
    written = []
    times = []
    for subject, path in tqdm(jobs, desc="predicting", unit="volume"):
        start = time.perf_counter()
        result = synthesise(method, load_volume(path), config, intensity)
        times.append(time.perf_counter() - start)
        written.append(save_volume(result, output / subject / f"{canonical_modality(config.target)}.nii.gz"))
    print(f"wrote {len(written)} volume(s) to {output} ({np.median(times):.2f} s per volume on {dev})")
    return written


def _folder_jobs(root: Path, source: str, checkpoint: Path, split: str | None) -> list[tuple[str, Path]]:
    subjects = discover_subjects(root)
    wanted = None
    if split:
        split_file = Path(checkpoint).parent / "split.json"
        if not split_file.exists():
            raise UserError(f"{split_file}: no split recorded next to the checkpoint; drop --split or train first")
        wanted = set(json.loads(split_file.read_text()).get(split, []))
        if not wanted:
            raise UserError(f"{split_file}: has no subjects in split {split!r} (choose train, val or test)")
    key = canonical_modality(source)
    jobs = [(s, f[key]) for s, f in subjects.items() if key in f and (wanted is None or s in wanted)]
    missing = [s for s, f in subjects.items() if key not in f and (wanted is None or s in wanted)]
    if missing:
        print(f"skipped {len(missing)} subject(s) without {key}: {', '.join(missing[:5])}")
    if not jobs:
        raise UserError(f"{root}: no {key} volumes to predict" + (f" in split {split!r}" if split else ""))
    return jobs
