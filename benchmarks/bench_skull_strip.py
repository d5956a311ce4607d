"""Raw scans: the built-in model on whole heads (a simulated head around real skull-stripped brains) against the
same brains given skull-stripped, side by side in one process.

Per subject: the stripped FLAIR gets a head (modalsynth.data.simulate.with_head: scalp, skull, CSF rim, eyes, neck;
brain voxels unchanged); deepbet's brain mask of the head (what `modalsynth strip --mask` writes) and the region a
prediction keeps (that mask grown by skullstrip.BRAIN_MARGIN_MM and into brain-like tissue, `kept_region`) are scored
by Dice against the stripped brain; the built-in model predicts the T1 with the default `--skull-strip auto` from the
whole head and from the stripped FLAIR, and both are scored by brain SSIM (metrics.ssim3d on the reference T1's brain,
as `modalsynth evaluate`). Seconds: the mask alone, and each prediction (the head's minus the stripped one's is what
skull handling adds). `--seeds N` draws N heads per subject (one head's draw moves a subject's difference by more than
0.01); `--models` sets recipes' fold models (from `quality_cv.py`) or checkpoint files beside each other on the same
heads. `builtin` is what `predict` does: the default built-in predicts the stripped brain, and its twin for raw scans
(builtin:flair-t1-raw) the brain it strips from the head; any other model predicts both.

    python benchmarks/bench_skull_strip.py --data DATA --json /tmp/bench_skull_strip.json [--threads 2] [--subjects A,B]
        [--seeds 3] [--models builtin,runs/quality/runs/v2,runs/quality/runs/rim]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modalsynth.data.pairs import discover_subjects
from modalsynth.data.preprocess import foreground_mask, to_zyx
from modalsynth.data.simulate import with_head
from modalsynth.data.skullstrip import SkullStrip, brain_mask, kept_region, looks_skull_stripped
from modalsynth.inference import Predictor
from modalsynth.io import Volume, load_volume
from modalsynth.metrics import scale_to_unit, ssim3d


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks."""
    return float(2.0 * np.logical_and(a, b).sum() / max(int(a.sum()) + int(b.sum()), 1))


def brain_ssim(pred: Volume, ref: Volume) -> float:
    """3D SSIM inside the reference's brain, both scaled to [0, 1] by their brain percentiles (the evaluation's)."""
    pred_zyx, ref_zyx = to_zyx(pred)[0], to_zyx(ref)[0]
    brain = foreground_mask(ref_zyx)
    return ssim3d(scale_to_unit(pred_zyx, brain), scale_to_unit(ref_zyx, brain), brain)


def cpu_name() -> str:
    """The CPU's model name and whether it has AMX tiles or AVX-512 bf16 (speed figures depend on them)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
        platform.processor() or platform.machine(),
    )
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    return f"{model} (amx_tile: {'amx_tile' in flags}, avx512_bf16: {'avx512_bf16' in flags})"


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


@dataclass(frozen=True)
class Model:
    """A model under test: the built-in one, a checkpoint file, or a quality_cv recipe's fold models (each subject
    predicted by the fold that held it out)."""

    name: str
    run: Path | None = None  # runs/quality/runs/RECIPE or a .pt file; None: the built-in models as predict runs them

    def predictor_for(self, subject: str) -> Predictor:
        """The predictor of `subject` (`--skull-strip auto`, as `predict` runs it)."""
        if self.run is None:  # as `predict` runs it: the built-in for the stripped brain, its twin for the head
            return dataclasses.replace(Predictor.load(None, "cpu"), skull=SkullStrip("auto"))
        if self.run.suffix == ".pt":
            checkpoint = self.run
        else:
            folds = [
                f
                for f in sorted(self.run.glob("fold-*"))
                if subject in json.loads((f / "split.json").read_text())["test"]
            ]
            if not folds:
                raise SystemExit(f"{self.run}: no fold tests {subject}")
            checkpoint = folds[0] / "last.pt"
        return dataclasses.replace(Predictor.from_checkpoint(checkpoint, "cpu"), skull=SkullStrip("auto"))


def parse_models(spec: str) -> list[Model]:
    """`builtin`, checkpoint files or quality_cv recipe run folders, comma-separated; a file is named by its folder."""
    models = []
    for part in spec.split(","):
        path = Path(part)
        name = "builtin" if part == "builtin" else path.parent.name if path.suffix == ".pt" else path.name
        models.append(Model(name, None if part == "builtin" else path))
    return models


def run_subject(models: list[Model], name: str, files: dict[str, Path], seeds: list[int]) -> list[dict]:
    """One subject's rows, one per head (seed) and model: auto's decisions, the mask's and the kept region's Dice, the
    mask's seconds, the predictions' brain SSIM from the head and from the stripped brain, and their seconds."""
    flair, t1 = load_volume(files["flair"]), load_volume(files["t1"])
    predictors = [m.predictor_for(name) for m in models]
    stripped = [timed(p.predict_volume, flair) for p in predictors]
    stripped_ssim = [brain_ssim(from_brain, t1) for from_brain, _ in stripped]
    auto_skips, check_s = timed(looks_skull_stripped, flair)
    rows = []
    for seed in seeds:
        head, brain = with_head(flair, "flair", seed)
        mask, strip_s = timed(brain_mask, head)
        per_head = {
            "subject": name,
            "seed": seed,
            "shape": list(flair.shape),
            "auto_strips_head": not looks_skull_stripped(head),
            "auto_skips_stripped": auto_skips,
            "auto_check_s": check_s,
            "dice": dice(mask, brain),
            "dice_kept": dice(kept_region(mask, head.spacing, head.data), brain),
            "strip_s": strip_s,
        }
        for model, predictor, (_, brain_s), ssim_stripped in zip(models, predictors, stripped, stripped_ssim):
            from_head, head_s = timed(predictor.predict_volume, head)
            row = {
                **per_head,
                "model": model.name,
                "predict_head_s": head_s,
                "predict_stripped_s": brain_s,
                "ssim_head": brain_ssim(from_head, t1),
                "ssim_stripped": ssim_stripped,
            }
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data folder of skull-stripped FLAIR/T1 subjects")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subjects", default="", help="comma-separated subject names (default: all)")
    parser.add_argument("--seeds", type=int, default=1, help="simulated heads per subject (each its own random draw)")
    parser.add_argument(
        "--models",
        default="builtin",
        help="comma-separated: builtin, checkpoint files (.pt), or quality_cv run folders (runs/quality/runs/RECIPE) "
        "whose fold models predict the subjects they held out; all predict from the same heads",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = parse_models(args.models)
    subjects = discover_subjects(args.data)
    if args.subjects:
        subjects = {name: subjects[name] for name in args.subjects.split(",")}
    n = len(subjects)
    rows = [
        row
        for index, (name, files) in enumerate(sorted(subjects.items()))
        for row in run_subject(models, name, files, [index + k * n for k in range(args.seeds)])
    ]
    header = (
        "subject",
        "head seed",
        "model",
        "auto strips head",
        "auto skips stripped",
        "auto check s",
        "mask Dice",
        "kept Dice",
        "mask s",
        "predict s (head)",
        "predict s (stripped)",
        "added s",
        "brain SSIM (head)",
        "brain SSIM (stripped)",
        "diff",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['subject']} | {r['seed']} | {r['model']} | "
            f"{r['auto_strips_head']} | {r['auto_skips_stripped']} | {r['auto_check_s']:.2f} | "
            f"{r['dice']:.4f} | {r['dice_kept']:.4f} | "
            f"{r['strip_s']:.1f} | {r['predict_head_s']:.1f} | {r['predict_stripped_s']:.1f} | "
            f"{r['predict_head_s'] - r['predict_stripped_s']:.1f} | {r['ssim_head']:.4f} | "
            f"{r['ssim_stripped']:.4f} | {r['ssim_head'] - r['ssim_stripped']:+.4f} |"
        )
    median = {
        k: float(np.median([r[k] for r in rows]))
        for k in ("auto_check_s", "dice", "dice_kept", "strip_s", "predict_head_s", "predict_stripped_s")
    }
    worst = {
        "dice": min(r["dice"] for r in rows),
        "dice_kept": min(r["dice_kept"] for r in rows),
        "ssim_diff": max(abs(r["ssim_head"] - r["ssim_stripped"]) for r in rows),
    }
    lines.append(
        f"| median / worst | | | | | {median['auto_check_s']:.2f} | {median['dice']:.4f} / {worst['dice']:.4f} | "
        f"{median['dice_kept']:.4f} / {worst['dice_kept']:.4f} | {median['strip_s']:.1f} | "
        f"{median['predict_head_s']:.1f} | {median['predict_stripped_s']:.1f} | "
        f"{median['predict_head_s'] - median['predict_stripped_s']:.1f} | | | max abs {worst['ssim_diff']:.4f} |"
    )
    lines += ["", "| model | heads | mean diff | worst diff | within 0.01 |", "|---|---|---|---|---|"]
    for model in models:
        diffs = [r["ssim_head"] - r["ssim_stripped"] for r in rows if r["model"] == model.name]
        worst_diff = max(diffs, key=abs)
        within = sum(abs(d) <= 0.01 for d in diffs)
        lines.append(
            f"| {model.name} | {len(diffs)} | {np.mean(diffs):+.4f} | {worst_diff:+.4f} | {within} of {len(diffs)} |"
        )
    print("\n".join(lines))
    print(f"{cpu_name()}, {args.threads} threads, load average {os.getloadavg()[0]:.1f} at the end")
    machine = {"cpu": cpu_name(), "threads": args.threads, "load": os.getloadavg(), "torch": torch.__version__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"machine": machine, "rows": rows, "median": median, "worst": worst}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
