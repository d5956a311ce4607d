"""`--skull-strip auto` on heads of every size and on partial slabs: the built-in model from each simulated head
against the same brain given skull-stripped.

A real skull-stripped FLAIR and its T1 (at 1 mm, or every `--step`-th voxel) are scaled (their affines times
`scale`, so the brain and the head around it change size while the head's layers keep their thicknesses in mm);
`simulate.with_head` puts a head around the FLAIR; slabs of 20-40 mm are cut from one head. For each: whether `auto`
strips it, its head cues, and the brain SSIM of the T1 predicted from the head (auto: deepbet, then the model) and from
the stripped brain (auto: used as it is), against the reference T1.

    PYTHONPATH=src python benchmarks/bench_head_sizes.py --data DATA --subject ms-patient07 --json /tmp/heads.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from modalsynth import builtin
from modalsynth.data.simulate import with_head
from modalsynth.data.skullstrip import SkullStrip, head_cues, looks_skull_stripped, outline_ml
from modalsynth.inference import Predictor
from modalsynth.io import Volume, load_volume

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_skull_strip import brain_ssim  # noqa: E402

SCALES = (0.8, 0.85, 0.917, 0.931, 1.0, 1.1, 1.2, 1.27)
SLABS_MM = (20, 30, 40)


def scaled(volume: Volume, scale: float, step: int = 1) -> Volume:
    """Every `step`-th voxel of `volume`, its affine scaled by `scale` (and by the step)."""
    affine = volume.affine @ np.diag([step * scale] * 3 + [1.0])
    return Volume(np.ascontiguousarray(volume.data[::step, ::step, ::step]), affine, volume.header)


def slab(volume: Volume, start: int, stop: int) -> Volume:
    """Slices start:stop along the third axis, with the affine moved to the first of them."""
    affine = volume.affine.copy()
    affine[:3, 3] = (volume.affine @ np.array([0, 0, start, 1.0]))[:3]
    return Volume(np.ascontiguousarray(volume.data[:, :, start:stop]), affine, volume.header)


def row(predictor: Predictor, name: str, head: Volume, brain: Volume, t1: Volume) -> dict:
    start = time.perf_counter()
    from_head = predictor.predict_volume(head)
    head_s = time.perf_counter() - start
    from_brain = predictor.predict_volume(brain)
    cues = head_cues(head)
    result = {
        "case": name,
        "outline_l": outline_ml(head) / 1000,
        "rim_contrast": cues.rim_contrast,
        "auto_strips": not looks_skull_stripped(head),
        "auto_keeps_brain": looks_skull_stripped(brain),
        "ssim_head": brain_ssim(from_head, t1),
        "ssim_brain": brain_ssim(from_brain, t1),
        "predict_head_s": head_s,
    }
    print(json.dumps(result), file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--subject", default="ms-patient07")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", type=int, default=1, help="take every STEP-th voxel (2: 2 mm volumes)")
    parser.add_argument(
        "--only",
        choices=("heads", "slabs"),
        help="run only the whole heads, or only the slabs (cut from the x1.0 head)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    predictor = dataclasses.replace(Predictor.from_checkpoint(builtin.resolve(None), "cpu"), skull=SkullStrip("auto"))
    flair = load_volume(args.data / args.subject / "flair.nii.gz")
    t1 = load_volume(args.data / args.subject / "t1.nii.gz")
    rows = []
    for scale in SCALES if args.only != "slabs" else (1.0,):
        brain, reference = scaled(flair, scale, args.step), scaled(t1, scale, args.step)
        head = with_head(brain, "flair", seed=1)[0]
        if args.only != "slabs":
            rows.append(row(predictor, f"head x{scale}", head, brain, reference))
        if scale == 1.0 and args.only != "heads":
            middle = head.shape[2] // 2
            for mm in SLABS_MM:
                n = int(round(mm / head.spacing[2]))
                cut = (middle - n // 2, middle + n - n // 2)
                rows.append(row(predictor, f"slab {mm} mm", slab(head, *cut), slab(brain, *cut), slab(reference, *cut)))
    lines = [
        "| case | outline L | rim contrast | auto strips head | auto keeps brain | SSIM head | SSIM brain | diff |"
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['outline_l']:.2f} | {r['rim_contrast']:.2f} | {r['auto_strips']} | "
            f"{r['auto_keeps_brain']} | {r['ssim_head']:.4f} | {r['ssim_brain']:.4f} | "
            f"{r['ssim_head'] - r['ssim_brain']:+.4f} |"
        )
    print("\n".join(lines))
    args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
