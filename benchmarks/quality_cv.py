"""The quality protocol of issue 40: training recipes side by side on 4 fixed folds of the eleven real subjects.

Every subject is tested once (`FOLDS`, balanced by origin). For each recipe and fold: `modalsynth train` on the fold's
training subjects (its split.json written first; no validation subject, the last weights are kept), then `modalsynth
predict --split test`; then `modalsynth evaluate` of each recipe's predictions and one table: brain SSIM, whole SSIM,
brain MAE, PSNR, lesion SSIM, the BraSyn columns, calibration (median per-subject ratio) and tissue Dice.
Every subprocess runs on one thread (OMP_NUM_THREADS=1, so torch takes one; data loading in the training process).
A rerun skips what is finished: a fold with its predictions, an evaluation newer than them; an interrupted
training run continues from its last.pt (`train --resume`).

    python benchmarks/quality_cv.py --data ../shared/data/real-dev --out runs/quality --recipes v1,v2 --jobs 2

A recipe is `v1` or `v2` (the built-in model's, `RECIPES`), a name of benchmarks/recipes/NAME.yaml or a path to a
training YAML; a YAML's budget is its own `steps:` or `minutes:`. `--steps`/`--minutes` replace every recipe's budget
(e.g. `--steps 2 --only brats2018-case0,brats2018-case2` checks the plumbing in a few minutes). `--scored-with t2`
trains on the whole folds but scores only the test subjects that have a T2 (the FLAIR + T2 comparison: each of the five
is tested once). NAME+simN trains NAME's recipe with N simulated subjects (the simulator's, with the recipe's sources
and T1) added to every fold's training set. Under the table, each subject's brain SSIM per recipe, against the first
recipe.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE_DIR = ROOT / "benchmarks" / "recipes"
#: simulated subjects (NAME+simN): another seed than the simulation prior's 24, on its grid of about 1 mm
SIM_SEED, SIM_GRID = 40, ("144", "230", "192")

#: the protocol's folds: test subjects per fold (folder names of the real-data folder), each subject tested once;
#: BraTS 2018 ×6 as 2/2/1/1, BraTS 2023 ×3 one per fold, the BrainLesion case and the Ljubljana MS patient apart
FOLDS: tuple[tuple[str, ...], ...] = (
    ("brats2018-case0", "brats2018-case1", "brats2023-gli-00000"),
    ("brats2018-case2", "brats2018-case3", "brats2023-gli-00027"),
    ("brats2018-case4", "brats2023-gli-00028"),
    ("brats2018-case5", "brats-brainles-case", "ms-patient07"),
)
#: how user-facing text names each subject: by origin
ORIGINS: dict[str, str] = {
    **{f"brats2018-case{k}": f"BraTS 2018 case {k}" for k in range(6)},
    **{f"brats2023-gli-{n}": f"BraTS 2023 GLI-{n}" for n in ("00000", "00027", "00028")},
    "brats-brainles-case": "the BrainLesion BraTS-style case",
    "ms-patient07": "Ljubljana MS patient 07",
}


@dataclass(frozen=True)
class Recipe:
    """A training recipe: a YAML of settings over gan3d's defaults and the budget each fold's run gets."""

    name: str
    config: Path
    budget: dict[str, float]  # {"steps": N} or {"minutes": M}
    reads: str | None = None  # NAME@SOURCES: NAME's fold models predicting from these sources only
    simulated: int = 0  # NAME+simN: N simulated subjects join every fold's training set

    @property
    def trained_as(self) -> str:
        """The recipe whose runs this one uses (itself, unless it is a reading NAME@SOURCES)."""
        return self.name.split("@")[0]

    @property
    def budget_text(self) -> str:
        return ", ".join(f"{value:g} {key}" for key, value in self.budget.items())

    def record(self) -> dict[str, Any]:
        """What the output says of the recipe: its file, that file's sha256 and the budget."""
        text = self.config.read_bytes()
        return {
            "config": _shown(self.config),
            "sha256": hashlib.sha256(text).hexdigest(),
            "budget": self.budget,
        }


#: named recipes: what builtin:flair-t1 v1 and v2 and builtin:flair-t2-t1 were trained with, at their cards' steps
RECIPES: dict[str, Recipe] = {
    "v1": Recipe("v1", ROOT / "scripts" / "builtin" / "flair-t1-v1-recipe.yaml", {"steps": 1565}),
    "v2": Recipe("v2", ROOT / "scripts" / "builtin" / "flair-t1-recipe.yaml", {"steps": 1565}),
    "flair-t2": Recipe("flair-t2", ROOT / "scripts" / "builtin" / "flair-t2-t1-recipe.yaml", {"steps": 1565}),
}
BUDGET_KEYS = ("steps", "minutes")

#: the table's columns: (summary key, heading, statistic); mean ± sd over subjects unless the statistic says median
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("ssim_brain", "brain SSIM ↑", "mean"),
    ("ssim_volume", "whole SSIM ↑", "mean"),
    ("mae_brain", "brain MAE ↓", "mean"),
    ("psnr_brain", "PSNR brain ↑", "mean"),
    ("ssim_lesion", "lesion SSIM ↑", "mean"),
    ("brasyn_ssim_tumour", "BraSyn tumour ↑", "mean"),
    ("brasyn_ssim_non_tumour", "BraSyn non-tumour ↑", "mean"),
    ("brasyn_ssim_whole", "BraSyn whole ↑", "mean"),
    ("calibration_ratio", "calibration →1", "median"),
    ("tissue_dice_gm", "tissue Dice GM ↑", "mean"),
    ("tissue_dice_wm", "tissue Dice WM ↑", "mean"),
    ("tissue_dice_csf", "tissue Dice CSF ↑", "mean"),
)


def resolve_recipe(name: str, steps: int | None = None, minutes: float | None = None) -> Recipe:
    """`v1`, benchmarks/recipes/NAME.yaml or a YAML path; `steps`/`minutes` replace the recipe's own budget.
    NAME@SOURCES (e.g. flair-t2@flair) is NAME's fold models predicting from those sources alone."""
    if "@" in name:
        base, reads = name.split("@", 1)
        recipe = resolve_recipe(base, steps, minutes)
        return Recipe(f"{recipe.name}@{reads}", recipe.config, recipe.budget, reads, recipe.simulated)
    if "+sim" in name:
        base, count = name.rsplit("+sim", 1)
        if not count.isdigit() or int(count) < 1:
            raise SystemExit(f"{name}: write NAME+simN with N ≥ 1 simulated subjects, e.g. flair-t2+sim8")
        recipe = resolve_recipe(base, steps, minutes)
        return Recipe(name, recipe.config, recipe.budget, simulated=int(count))
    override = {k: v for k, v in (("steps", steps), ("minutes", minutes)) if v is not None}
    if name in RECIPES:
        recipe = RECIPES[name]
        return Recipe(recipe.name, recipe.config, override or recipe.budget)
    path = RECIPE_DIR / f"{name}.yaml" if (RECIPE_DIR / f"{name}.yaml").is_file() else Path(name)
    if not path.is_file():
        known = sorted([*RECIPES, *(p.stem for p in RECIPE_DIR.glob("*.yaml"))])
        raise SystemExit(f"--recipes: {name} is neither a known recipe ({', '.join(known)}) nor a YAML file")
    settings = yaml.safe_load(path.read_text()) or {}
    budget = override or {k: settings[k] for k in BUDGET_KEYS if settings.get(k) is not None}
    if not budget:
        raise SystemExit(f"{path}: give the recipe a budget (steps: or minutes:), or pass --steps / --minutes")
    return Recipe(path.stem, path.resolve(), budget)


def fold_splits(folds: tuple[tuple[str, ...], ...] = FOLDS, only: set[str] | None = None) -> list[dict[str, Any]]:
    """Per fold: its index, train subjects (every other fold's) and test subjects; with `only`, just those subjects
    (folds left without a test or a train subject are dropped)."""
    everyone = [s for fold in folds for s in fold]
    if len(set(everyone)) != len(everyone):
        raise ValueError("a subject appears in two folds")
    keep = set(everyone) if only is None else set(only)
    splits = []
    for k, fold in enumerate(folds):
        test = sorted(s for s in fold if s in keep)
        train = sorted(s for s in everyone if s in keep and s not in fold)
        if test and train:
            splits.append({"fold": k, "train": train, "val": [], "test": test})
    return splits


def describe(subjects: list[str]) -> str:
    """Subjects by origin, for text a user reads."""
    return "; ".join(ORIGINS.get(s, s) for s in subjects)


class Protocol:
    """One protocol run: where it writes, on which data, with which thread settings; each step skips finished work."""

    def __init__(self, data: Path, out: Path, device: str) -> None:
        self.data, self.out, self.device = data, out, device
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
        }

    def modalsynth(self, args: list[str], log: Path) -> None:
        """Run `python -m modalsynth ARGS` on one thread, appending its output to LOG (a failure names the log)."""
        command = [sys.executable, "-m", "modalsynth", *args]
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as fh:
            fh.write("$ " + " ".join(command) + "\n")
            fh.flush()
            done = subprocess.run(command, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{' '.join(args[:1])} failed (exit {done.returncode}); see {log}")

    def cache(self, recipe: Recipe) -> Path:
        return self.out / "cache" / recipe.trained_as

    def training_data(self, recipe: Recipe) -> Path:
        """The folder the recipe trains from: the real subjects, plus its simulated ones (NAME+simN) in a folder of
        links beside them."""
        if not recipe.simulated:
            return self.data
        folder = self.out / "data" / recipe.trained_as
        for subject in [*_subject_dirs(self.data), *_subject_dirs(self.simulated(recipe))]:
            link = folder / subject.name
            if not link.is_symlink():
                folder.mkdir(parents=True, exist_ok=True)
                link.symlink_to(subject, target_is_directory=True)
        return folder

    def simulated(self, recipe: Recipe) -> Path:
        """The recipe's simulated subjects (sim-000, ...) with its sources and T1, made once and shared by the
        recipes that ask for as many with the same sequences."""
        sources = str(yaml.safe_load(recipe.config.read_text()).get("source", "flair"))
        sequences = ",".join(dict.fromkeys([*sources.split(","), "t1"]))
        folder = self.out / "sim" / f"{sequences.replace(',', '-')}-{recipe.simulated}"
        if not (folder / f"sim-{recipe.simulated - 1:03d}" / "t1.nii.gz").exists():
            self.modalsynth(
                [
                    *("simulate", "--out", str(folder), "--subjects", str(recipe.simulated)),
                    *("--seed", str(SIM_SEED), "--grid", *SIM_GRID, "--sequences", sequences),
                ],
                self.out / "logs" / f"simulate-{folder.name}.txt",
            )
        return folder

    def prepare(self, recipe: Recipe) -> None:
        """Build the recipe's preprocessed cache once, before runs that share it start side by side."""
        self.modalsynth(
            [
                "prepare",
                "--data",
                str(self.training_data(recipe)),
                "--cache",
                str(self.cache(recipe)),
                "--config",
                str(recipe.config),
                "--workers",
                "1",
            ],
            self.out / "logs" / f"prepare-{recipe.name}.txt",
        )

    def run_dir(self, recipe: Recipe, fold: int) -> Path:
        return self.out / "runs" / recipe.trained_as / f"fold-{fold}"

    def predictions(self, recipe: Recipe) -> Path:
        return self.out / "predictions" / recipe.name

    def fold(self, recipe: Recipe, split: dict[str, Any]) -> dict[str, Any]:
        """Train one recipe on one fold and predict its test subjects, or re-use a finished fold."""
        run = self.run_dir(recipe, split["fold"])
        done_file = run / "done.json"
        wanted = {"budget": recipe.budget, "split": split, "recipe_sha256": recipe.record()["sha256"]}
        if done_file.exists():
            done = json.loads(done_file.read_text())
            if self.predicted(recipe, split) and all(done.get(k) == v for k, v in wanted.items()):
                print(f"[{recipe.name} fold {split['fold']}] finished earlier; re-using {done_file}", flush=True)
                return done
        if recipe.reads:  # a reading of fold models trained by its own recipe's runs
            if not done_file.exists():
                raise SystemExit(f"{recipe.name}: no finished {recipe.trained_as} run in {run}; add it to --recipes")
            if not self.predicted(recipe, split):
                self.predict(recipe, run, split)
            return json.loads(done_file.read_text())
        split_file = run / "split.json"
        saved_split = {k: split[k] for k in ("train", "val", "test")}
        if recipe.simulated:
            saved_split["train"] = [*split["train"], *(p.name for p in _subject_dirs(self.simulated(recipe)))]
        if split_file.exists() and json.loads(split_file.read_text()) != saved_split:
            raise SystemExit(f"{split_file}: another split than this fold's; use another --out")
        run.mkdir(parents=True, exist_ok=True)
        split_file.write_text(json.dumps(saved_split, indent=1))
        budget = [x for key, value in recipe.budget.items() for x in (f"--{key}", str(value))]
        resume = ["--resume"] if (run / "last.pt").exists() else []
        print(
            f"[{recipe.name} fold {split['fold']}] training {recipe.budget_text} on "
            + f"{len(saved_split['train'])} subjects"
            + (" (resuming)" if resume else ""),
            flush=True,
        )
        log = run / "log.txt"
        self.modalsynth(
            [
                "train",
                "--data",
                str(self.training_data(recipe)),
                "--out",
                str(run),
                "--config",
                str(recipe.config),
                *budget,
                "--device",
                self.device,
                "--cache",
                str(self.cache(recipe)),
                "--workers",
                "0",
                *resume,
            ],
            log,
        )
        self.predict(recipe, run, split)
        done = {**wanted, **_run_record(run)}
        done_file.write_text(json.dumps(done, indent=1))
        return done

    def predicted(self, recipe: Recipe, split: dict[str, Any]) -> bool:
        """Whether every test subject of the fold has the recipe's prediction (for a reading: every one that has
        one of the sources it reads)."""
        readable = subjects_with(self.data, recipe.reads) if recipe.reads else set(split["test"])
        return all((self.predictions(recipe) / s / "t1.nii.gz").exists() for s in split["test"] if s in readable)

    def predict(self, recipe: Recipe, run: Path, split: dict[str, Any]) -> None:
        """The fold model's predictions of its test subjects (from `recipe.reads` only, for a reading)."""
        print(f"[{recipe.name} fold {split['fold']}] predicting {len(split['test'])} test subject(s)", flush=True)
        sources = ["--source", recipe.reads] if recipe.reads else []
        self.modalsynth(
            [
                "predict",
                *("--checkpoint", str(run / "last.pt"), "--input", str(self.data)),
                *("--output", str(self.predictions(recipe)), "--split", "test", "--device", self.device),
                *("--skull-strip", "never", *sources),
            ],
            run / "log.txt",
        )

    def report(self, recipe: Recipe, folds: list[int]) -> Path:
        """Where the evaluation of a recipe's predictions on `folds` goes (one per set of folds)."""
        return self.out / "evaluation" / recipe.name / folds_name(folds)

    def view(self, recipe: Recipe, folds: list[int], tested: list[str]) -> Path:
        """A folder of links to the recipe's predictions of `tested` only: other folds' predictions stay out."""
        view = self.out / "views" / recipe.name / folds_name(folds)
        view.mkdir(parents=True, exist_ok=True)
        for stale in view.iterdir():  # an earlier call may have scored other subjects
            if stale.is_symlink() and stale.name not in tested:
                stale.unlink()
        for subject in tested:
            link = view / subject
            if not link.is_symlink():
                link.symlink_to(self.predictions(recipe) / subject, target_is_directory=True)
        return view

    def evaluate(self, recipe: Recipe, folds: list[int], tested: list[str]) -> dict[str, Any]:
        """Score the recipe's predictions of `tested` (re-using an evaluation newer than every prediction)."""
        report = self.report(recipe, folds)
        summary_file = report / "summary.json"
        newest = max((self.predictions(recipe) / s / "t1.nii.gz").stat().st_mtime for s in tested)
        if summary_file.exists() and summary_file.stat().st_mtime > newest:
            summary = json.loads(summary_file.read_text())
            if sorted(summary["subjects"]) == sorted(tested):
                print(f"[{recipe.name}] evaluated earlier; re-using {summary_file}", flush=True)
                return summary
        print(f"[{recipe.name}] evaluating {len(tested)} subjects", flush=True)
        self.modalsynth(
            [
                "evaluate",
                "--pred",
                str(self.view(recipe, folds, tested)),
                "--ref",
                str(self.data),
                "--target",
                "t1",
                "--out",
                str(report),
                "--no-fid",
            ],
            self.out / "logs" / f"evaluate-{recipe.name}.txt",
        )
        return json.loads(summary_file.read_text())


def folds_name(folds: list[int]) -> str:
    """A set of folds as a folder name: folds-0-1."""
    return "folds-" + "-".join(str(k) for k in sorted(folds))


def _run_record(run: Path) -> dict[str, Any]:
    """Steps and training seconds (across resumes) of a finished run, from its last.pt."""
    from modalsynth.checkpoints import Checkpoint

    last = Checkpoint.load(run / "last.pt")
    return {"steps": int(last.step), "train_s": float(last.elapsed_s or 0.0)}


def per_subject(report: Path) -> list[dict[str, Any]]:
    """An evaluation's per_subject.csv as rows of floats (NaN for an empty cell)."""
    with (report / "per_subject.csv").open(newline="") as fh:
        return [
            {k: (v if k == "subject" else float(v) if v else math.nan) for k, v in row.items()}
            for row in csv.DictReader(fh)
        ]


def cell(key: str, stats: dict[str, Any] | None, statistic: str, values: list[float]) -> str:
    """A table cell: mean ± sd, or median [min–max], over the subjects where the measure is defined."""
    if not stats or not stats.get("n"):
        return "n/a"
    if statistic == "median":
        finite = [v for v in values if not math.isnan(v)]
        return f"{stats['median']:.2f} [{min(finite):.2f}–{max(finite):.2f}]"
    digits = 2 if key.startswith("psnr") else 4
    sd = stats.get("sd")
    return f"{stats['mean']:.{digits}f} ± " + ("n/a" if sd is None or math.isnan(sd) else f"{sd:.{digits}f}")


def table(rows: list[dict[str, Any]], splits: list[dict[str, Any]], only: bool) -> str:
    """The protocol's Markdown table, one row per recipe, with the folds by origin under it."""
    tested = sum(len(s["test"]) for s in splits)
    lines = [
        f"{len(splits)} fixed fold(s), {tested} subject(s) each tested once"
        + (" (a subset: --only)" if only else "")
        + "; one thread per run; mean ± sd over subjects (calibration: median [min–max] of the per-subject ratio "
        "prediction / real share of brain voxels ≥ 0.9); intensities on [0, 1] after each volume's 0.5–99.5 % "
        "scaling inside the brain",
        "",
        "| recipe | budget per fold | steps per fold | n | " + " | ".join(h for _, h, _ in COLUMNS) + " |",
        "|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = []
        for key, _, statistic in COLUMNS:
            values = [r.get(key, math.nan) for r in row["per_subject"]]
            cells.append(cell(key, row["metrics"].get(key), statistic, values))
        steps = "/".join(str(f["steps"]) for f in row["folds"])
        lines.append(
            f"| {row['recipe']} | {row['budget']} | {steps} | {len(row['per_subject'])} | " + " | ".join(cells)
        )
        lines[-1] += " |"
    lines += ["", "Folds (test subjects; each fold trains on the others):", ""]
    lines += [f"- fold {s['fold']}: {describe(s['test'])}" for s in splits]
    return "\n".join(lines) + "\n"


def by_subject(rows: list[dict[str, Any]]) -> str:
    """Each subject's brain SSIM per recipe, the others against the first recipe, and on how many each is ahead."""
    first, *others = rows
    head = "| subject | " + " | ".join(r["recipe"] for r in rows) + " |"
    lines = ["Brain SSIM per subject (Δ against the first recipe):", "", head, "|---|" + "---|" * len(rows)]
    scores = [{r["subject"]: r["ssim_brain"] for r in row["per_subject"]} for row in rows]
    for subject in sorted(scores[0]):
        cells = [f"{scores[0][subject]:.4f}"]
        cells += [f"{s[subject]:.4f} ({s[subject] - scores[0][subject]:+.4f})" for s in scores[1:]]
        lines.append(f"| {ORIGINS.get(subject, subject)} | " + " | ".join(cells) + " |")
    for row, s in zip(others, scores[1:]):
        ahead = sum(s[k] > scores[0][k] for k in scores[0])
        lines.append(f"\n{row['recipe']} is ahead of {first['recipe']} on {ahead} of {len(scores[0])} subjects.")
    return "\n".join(lines) + "\n"


def subjects_with(data: Path, sources: str) -> set[str]:
    """The subjects of the data folder that have a file of at least one of `sources` ('t2', or 'flair,t2')."""
    from modalsynth.data.pairs import discover_subjects, source_list

    wanted = set(source_list(sources))
    return {subject for subject, files in discover_subjects(data).items() if wanted & set(files)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="the real subjects, one folder each")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", default="v1", help="comma-separated: v1, a name in benchmarks/recipes/, or a YAML")
    ap.add_argument("--steps", type=int, help="every recipe's budget in steps instead of its own")
    ap.add_argument("--minutes", type=float, help="every recipe's budget in minutes instead of its own")
    ap.add_argument("--folds", help="comma-separated fold indices to run (default all four), e.g. 0,1 to screen")
    ap.add_argument("--only", help="comma-separated subjects: restrict every fold to them (a plumbing check)")
    ap.add_argument("--jobs", type=int, default=1, help="runs side by side, one thread each (default 1)")
    ap.add_argument("--scored-with", help="score only the test subjects that have this sequence (e.g. t2)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    from modalsynth.report import write_json

    recipes = [resolve_recipe(name.strip(), args.steps, args.minutes) for name in args.recipes.split(",")]
    if len({r.name for r in recipes}) != len(recipes):
        raise SystemExit("--recipes: two recipes share a name")
    only = None if args.only is None else {s.strip() for s in args.only.split(",")}
    splits = fold_splits(FOLDS, only)
    if args.folds is not None:
        wanted = {int(k) for k in args.folds.split(",")}
        splits = [s for s in splits if s["fold"] in wanted]
    if not splits:
        raise SystemExit("no fold left to run (check --folds and --only)")
    missing = sorted({s for split in splits for s in split["train"] + split["test"]} - _subjects(args.data))
    if missing:
        raise SystemExit(f"{args.data}: no folder for {', '.join(missing)}; the folds name the eleven real subjects")

    started = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    protocol = Protocol(args.data.resolve(), args.out.resolve(), args.device)
    for recipe in recipes:
        if not recipe.reads:
            protocol.prepare(recipe)
    # recipes alternate, side by side per fold; the readings (NAME@SOURCES) after every training, whose runs they use
    trained = [(recipe, split) for split in splits for recipe in recipes if not recipe.reads]
    readings = [(recipe, split) for split in splits for recipe in recipes if recipe.reads]
    jobs = trained + readings
    tested = sorted(s for split in splits for s in split["test"])
    if args.scored_with:
        tested = sorted(set(tested) & subjects_with(args.data, args.scored_with))
        if not tested:
            raise SystemExit(f"--scored-with {args.scored_with}: no test subject has that sequence")
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        finished = list(pool.map(lambda job: protocol.fold(*job), trained))
        finished += list(pool.map(lambda job: protocol.fold(*job), readings))
        fold_ids = [split["fold"] for split in splits]
        summaries = list(pool.map(lambda recipe: protocol.evaluate(recipe, fold_ids, tested), recipes))
    rows = []
    for recipe, summary in zip(recipes, summaries):
        folds = [f for (r, _), f in zip(jobs, finished) if r is recipe]
        rows.append(
            {
                "recipe": recipe.name,
                **recipe.record(),
                "budget": recipe.budget_text,
                "folds": [{k: f[k] for k in ("split", "steps", "train_s")} for f in folds],
                "mean_train_minutes": statistics.mean(f["train_s"] for f in folds) / 60,
                "metrics": {key: summary["metrics"].get(key) for key, _, _ in COLUMNS},
                "per_subject": per_subject(protocol.report(recipe, fold_ids)),
            }
        )
    text = table(rows, splits, only is not None)
    if args.scored_with:
        text += f"\nScored: the {len(tested)} test subjects with {args.scored_with}: {describe(tested)}\n"
    if len(rows) > 1:
        text += "\n" + by_subject(rows)
    text += f"\n(this call: {(time.time() - started) / 60:.1f} min)\n"
    (args.out / "quality_cv.md").write_text(text)
    record = {
        "protocol": "issue 40: fixed folds, one thread per run, evaluate's protocol",
        "data": str(args.data),
        "folds": [list(f) for f in FOLDS],
        "splits": splits,
        "only": sorted(only) if only else None,
        "scored": tested,
        "rows": rows,
    }
    write_json(record, args.out / "quality_cv.json")
    print(text)


def _subject_dirs(data: Path) -> list[Path]:
    return sorted(p for p in Path(data).iterdir() if p.is_dir())


def _subjects(data: Path) -> set[str]:
    return {p.name for p in _subject_dirs(data)}


def _shown(path: Path) -> str:
    """A path relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
