"""The `modalsynth` command line (typer): thin wrappers that parse options and call the library."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import typer

from .errors import TrainingStopped, UserError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Synthesise a missing 3D MRI modality (e.g. T1 from FLAIR) with the paper's 3D conditional GAN.",
)

#: the help of --series (predict, inspect, strip)
SERIES_HELP = (
    "A DICOM folder's series to read (its number or description; one per source, comma-separated), when the "
    "descriptions and acquisition parameters do not make it clear."
)

_DEBUG = {"on": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.")) -> None:
    _DEBUG["on"] = debug


def _grid_option(grid: str | None, small: bool = False, name: str = "--grid"):
    """Parse `--grid D H W` (joined by `_join_triplets`), `DxHxW` or `auto` into a tuple or the string 'auto'."""
    if small:
        from .data.simulate import SMALL_GRID

        return SMALL_GRID
    if not grid:
        return None
    if grid.strip().lower() == "auto" and name == "--grid":
        return "auto"
    parts = grid.replace("x", " ").replace(",", " ").split()
    try:
        values = tuple(int(g) for g in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        extra = " or 'auto'" if name == "--grid" else ""
        raise UserError(f"{name} {grid}: give three positive integers D H W (e.g. {name} 48 288 240){extra}")
    return values


_TRIPLET_OPTIONS = ("--grid", "--patch")


def _join_triplets(argv: list[str]) -> list[str]:
    """Let `--grid 48 288 240` work (click takes one value per option): join the three numbers into one value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        out.append(argv[i])
        values = argv[i + 1 : i + 4]
        if argv[i] in _TRIPLET_OPTIONS and len(values) == 3 and all(a.isdigit() for a in values):
            out.append(" ".join(values))
            i += 4
            continue
        i += 1
    return out


_LABEL_OPTIONS = ("--participant-label", "--session-label")
_FLAGS = ("--skip-bids-validation", "--all-subjects", "--help")


def _join_labels(argv: list[str]) -> list[str]:
    """Let `bids DS OUT participant --participant-label 01 02` work as in other BIDS Apps: the labels after the
    option (once BIDS_DIR, OUT_DIR and the level have come) become one space-separated value."""
    start = next((k for k, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    if start == len(argv) or argv[start] != "bids":
        return argv
    out, positional, i = argv[: start + 1], 0, start + 1
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        i += 1
        if arg in _LABEL_OPTIONS and positional >= 3:
            values = []
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            out.append(" ".join(values))
        elif arg.startswith("-") and "=" not in arg and arg not in _FLAGS and i < len(argv):
            out.append(argv[i])  # the option's value
            i += 1
        elif not arg.startswith("-"):
            positional += 1
    return out


@app.command()
def simulate(
    out: Path = typer.Option(..., "--out", help="Folder to write ROOT/<subject>/{flair,t1,labels,lesion}.nii.gz"),
    subjects: int = typer.Option(4, "--subjects", help="Number of paired subjects (at least 1)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same bytes."),
    grid: str | None = typer.Option(None, "--grid", help="Output grid D H W (default the paper's 48 288 240)."),
    small: bool = typer.Option(False, "--small", help="Small grid for CPU demos and tests."),
    head: bool = typer.Option(
        False,
        "--head",
        help="Whole heads (scalp, skull, CSF rim, eyes, neck around the brain), as a scanner writes them.",
    ),
    sequences: str = typer.Option(
        "flair,t1",
        "--sequences",
        help="Images per subject: flair and t1, plus t2 and/or pd (spin echoes of the same tissues), e.g. flair,t1,t2.",
    ),
) -> None:
    """Make paired FLAIR/T1 subjects (and T2, PD on request) from the MNI152 anatomy that nilearn ships.

    Example: modalsynth simulate --out data/sim --subjects 8 --small
    """
    from .data.preprocess import PAPER_GRID
    from .data.simulate import simulate_dataset

    if subjects < 1:
        raise UserError(f"--subjects {subjects}: give at least 1")
    g = _grid_option(grid, small)
    if g == "auto":
        raise UserError("--grid auto is not valid for simulate; give D H W or --small")
    wanted = tuple(dict.fromkeys(("flair", "t1", *(s.strip().lower() for s in sequences.split(",")))))
    paths = simulate_dataset(
        out, subjects=subjects, seed=seed, grid=g or PAPER_GRID, progress=True, head=head, sequences=wanted
    )
    typer.echo(f"wrote {len(paths)} subjects to {out}")


@app.command()
def inspect(
    ctx: typer.Context,
    path: str = typer.Argument(
        ..., help="A NIfTI file, a data folder, a DICOM folder, or a checkpoint (RUN/best.pt, builtin:NAME)."
    ),
    source: str = typer.Option("flair", "--source", help="Source modality name (for folders)."),
    target: str = typer.Option("t1", "--target", help="Target modality name (for folders)."),
    series: str | None = typer.Option(None, "--series", help=SERIES_HELP),
) -> None:
    """Describe a NIfTI file or a data folder (grids, orientation, intensities, pairs, problems), or print the resolved
    settings a checkpoint's run used.

    Example: modalsynth inspect data/sim; modalsynth inspect runs/gan/best.pt
    """
    from . import builtin

    if path.startswith(builtin.PREFIX) or path.endswith(".pt"):
        from .inspection import checkpoint_summary
        from .methods import method_class

        typer.echo(checkpoint_summary(builtin.resolve(path), method_class), nl=False)
        raise typer.Exit(0)
    from .inspection import inspect_path

    code = inspect_path(_dicom_input(ctx, Path(path), None, series, lambda: [None])[0], source=source, target=target)
    raise typer.Exit(code)


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Data folder, BIDS tree or CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, logs, split."),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Source modality (default flair), or several comma-separated (flair,t2): one network "
        "input each; trained with source dropout, the model predicts from any subset.",
    ),
    target: str | None = typer.Option(None, "--target", help="Target modality (default t1)."),
    method: str | None = typer.Option(None, "--method", help="gan3d | pix2pix2d | ddpm | lut (default gan3d)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs (default 100, the paper's)."),
    steps: int | None = typer.Option(None, "--steps", help="Stop after this many optimiser steps instead."),
    minutes: float | None = typer.Option(
        None, "--minutes", help="Stop at the first step past this many minutes of training (validation included)."
    ),
    grid: str | None = typer.Option(None, "--grid", help="D H W, or auto."),
    patch: str | None = typer.Option(None, "--patch", help="Random training patch D H W."),
    device: str | None = typer.Option(None, "--device", help="cpu | cuda | auto (default auto)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file; options given here override it."),
    preset: str | None = typer.Option(
        None,
        "--preset",
        help="Named settings of the method, e.g. 'paper': gan3d exactly as the paper (48x288x240, width 32).",
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Start from this checkpoint's weights (fine-tuning), e.g. builtin:flair-t1 or runs/sim/best.pt.",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from OUT/last.pt (settings that conflict with it are refused)."
    ),
    seed: int | None = typer.Option(None, "--seed"),
    holdout: str | None = typer.Option(
        None, "--holdout", help="Subjects kept out: val+test (default), val (no test) or none (a final model on all)."
    ),
    resample_target: bool = typer.Option(
        False, "--resample-target", help="Targets on another grid than their source are resampled onto it (affines)."
    ),
    skull_strip: str | None = typer.Option(
        None,
        "--skull-strip",
        help="auto | always | never (default never): raw pairs are skull-stripped first (auto: "
        "those that look like whole heads), with a subject's brain mask if it has one, else deepbet's on the source.",
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Folder of preprocessed arrays (made or updated here; default $MODALSYNTH_CACHE/<data>, "
        "else OUT/../.modalsynth-cache/<data>).",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Data-loading processes per rank (default: the CPUs per rank less one, at most 8).",
    ),
    register: bool = typer.Option(
        False,
        "--register",
        help="Sources and target of one session on their own grids: register each rigidly onto the first source "
        "before skull stripping (a mask on the target's grid follows it); recorded in the cache manifest.",
    ),
) -> None:
    """Train a method on paired volumes and write OUT/best.pt and OUT/last.pt.

    Example: modalsynth train --data data/sim --source flair --target t1 --out runs/gan --steps 200 --grid 32 64 64
    """
    from .training import train_from_cli

    grid_value = _grid_option(grid)
    options = {
        "method": method,
        "source": source,
        "target": target,
        "epochs": epochs,
        "steps": steps,
        "minutes": minutes,
        "patch": _grid_option(patch, name="--patch"),
        "device": device,
        "seed": seed,
        "holdout": holdout,
        "init": init,
        "preset": preset,
        "resample_target": True if resample_target else None,
        "preprocess": {
            k: v
            for k, v in (("grid", grid_value), ("skull_strip", skull_strip), ("register", register or None))
            if v is not None
        }
        or None,
        "cache": None if cache is None else str(cache),
        "workers": workers,
    }
    train_from_cli(data=data, out=out, options=options, config=config, resume=resume)


@app.command()
def prepare(
    data: Path = typer.Option(..., "--data", help="Data folder, BIDS tree or CSV manifest."),
    cache: Path = typer.Option(
        ..., "--cache", help="Folder for the preprocessed arrays (give train the same --cache)."
    ),
    source: str | None = typer.Option(None, "--source", help="Source modality (default flair)."),
    target: str | None = typer.Option(None, "--target", help="Target modality (default t1)."),
    method: str | None = typer.Option(None, "--method", help="The method whose preprocessing to use (default gan3d)."),
    grid: str | None = typer.Option(None, "--grid", help="D H W, or auto."),
    preset: str | None = typer.Option(None, "--preset", help="A method's named settings, e.g. 'paper'."),
    config: Path | None = typer.Option(None, "--config", help="YAML config file, as for train."),
    resample_target: bool = typer.Option(False, "--resample-target", help="As for train."),
    workers: int | None = typer.Option(None, "--workers", help="Processes (default: every CPU)."),
    register: bool = typer.Option(False, "--register", help="As for train."),
) -> None:
    """Preprocess every subject once into a cache that `train --cache` reads by memory map (run it before a large
    or multi-node training run; train also brings the cache up to date itself).

    Example: modalsynth prepare --data data/brats --cache /scratch/cache/brats --preset paper
    """
    from .training import prepare_from_cli

    options = {
        "method": method,
        "source": source,
        "target": target,
        "preset": preset,
        "init": "none",
        "resample_target": True if resample_target else None,
        "preprocess": {k: v for k, v in (("grid", _grid_option(grid)), ("register", register or None)) if v is not None}
        or None,
    }
    prepare_from_cli(data=data, cache=cache, options=options, config=config, workers=workers)


@app.command()
def predict(
    ctx: typer.Context,
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="A checkpoint written by `modalsynth train`, or builtin:NAME (default: builtin:flair-t1).",
    ),
    input: Path = typer.Option(..., "--input", help="A source NIfTI file, a data folder or a DICOM folder."),
    output: Path = typer.Option(
        ..., "--output", help="Output file (for a file) or folder OUT/<subject>/<target>.nii.gz."
    ),
    source: str | None = typer.Option(
        None,
        "--source",
        help="Which of a multi-source model's inputs to read (e.g. flair, or flair,t2; default all "
        "it takes); a single --input file is the first of them. A folder's subjects use those they have.",
    ),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto"),
    subjects_from: str | None = typer.Option(
        None, "--split", help="Only the subjects of this split (train, val, test) as recorded in the checkpoint."
    ),
    overlap: float | None = typer.Option(
        None,
        "--overlap",
        help="Sliding-window overlap instead of the model's (gan3d: 0.4); less is faster, more a "
        "little better (README, 'Commands').",
    ),
    flip_average: bool = typer.Option(
        False,
        "--flip-average",
        help="Also predict the left-right mirrored source and average the two (twice the time).",
    ),
    skull_strip: str = typer.Option(
        "auto",
        "--skull-strip",
        help="auto | always | never. auto: an input that shows more than a brain (a raw "
        "scan with skull and scalp) is skull-stripped first, a skull-stripped one is used as it is.",
    ),
    keep_head: bool = typer.Option(
        False,
        "--keep-head",
        help="Around the synthetic brain, show the input's head (scaled to the output's range) "
        "instead of zero, so the output looks like a whole scan.",
    ),
    onnx: Path | None = typer.Option(
        None,
        "--onnx",
        help="Run a model exported by `modalsynth export --onnx` through ONNX Runtime instead of a "
        "checkpoint (same windows, pre- and postprocessing; needs pip install 'modalsynth\\[onnx]').",
    ),
    report: bool = typer.Option(
        False, "--report", help="For a data folder, also write the HTML QC pages OUT/<subject>.html and OUT/index.html."
    ),
    register: bool = typer.Option(
        False,
        "--register",
        help="Several sources of one session on their own grids: register each rigidly (mutual information) onto "
        "the first source's grid before skull stripping (needs pip install 'modalsynth[register]').",
    ),
    save_transform: Path | None = typer.Option(
        None,
        "--save-transform",
        help="With --register: write each transform to FOLDER/<subject>/<moving>_to_<first>.tfm.",
    ),
    series: str | None = typer.Option(None, "--series", help=SERIES_HELP),
) -> None:
    """Synthesise the target modality for one volume or a folder of subjects (no --checkpoint: the built-in FLAIR->T1
    model).

    Example: modalsynth predict --input flair.nii.gz --output t1.nii.gz
    """
    from . import builtin
    from .data.register import Aligner
    from .data.skullstrip import SkullStrip
    from .predict_jobs import predict_path, run_predictor

    if save_transform is not None and not register:
        raise UserError("--save-transform writes the transforms of --register; add --register")
    input, output = _dicom_input(ctx, input, output, series, lambda: _sequences_read(source, checkpoint, onnx))
    align = Aligner(save_transform) if register else None
    if report and not input.is_dir():
        raise UserError(f"{input}: --report needs a data folder as --input (a page per subject); drop --report")
    changes = {"overlap": overlap, "flip_average": True if flip_average else None}
    if onnx is not None:
        if checkpoint is not None or device not in ("auto", "cpu"):
            raise UserError(
                "--onnx runs the exported model on the CPU through ONNX Runtime; leave out --checkpoint and --device"
            )
        from .export import onnx_predictor

        predictor = onnx_predictor(onnx).with_inference(**changes).with_sources(source)
        run_predictor(
            dataclasses.replace(predictor, skull=SkullStrip(skull_strip, keep_head), align=align),
            input,
            output,
            subjects_from,
        )
        if report:
            _predict_report(input, output, onnx)
        return
    predict_path(
        checkpoint,
        input,
        output,
        device=device,
        split=subjects_from,
        inference_changes=changes,
        skull=SkullStrip(skull_strip, keep_head),
        sources=source,
        align=align,
    )
    if report:
        _predict_report(input, output, builtin.resolve(checkpoint), checkpoint or f"builtin:{builtin.DEFAULT}")


def _predict_report(input: Path, output: Path, model_file: Path, name: str | None = None) -> None:
    """`predict --report`: the QC pages of a folder of predictions (a single file has none)."""
    from .io import file_digest
    from .qc_report import model_summary, report_predictions

    summary = model_summary(name or str(model_file), file_digest(model_file))
    for page in report_predictions(output, input, model=summary):
        typer.echo(f"wrote {page}")


@app.command()
def bids(
    bids_dir: Path = typer.Argument(..., help="The BIDS dataset's root folder (read only)."),
    output_dir: Path = typer.Argument(
        ..., help="Where the derivatives go: outside the dataset or BIDS_DIR/derivatives/NAME."
    ),
    analysis_level: str = typer.Argument(
        ..., help="participant (the images and each subject's page) or group (the index page)."
    ),
    participant_label: list[str] | None = typer.Option(
        None,
        "--participant-label",
        help="Subjects to process, with or without 'sub-' (several: --participant-label 01 02).",
    ),
    session_label: list[str] | None = typer.Option(
        None, "--session-label", help="Sessions to process, with or without 'ses-' (default all)."
    ),
    target: str = typer.Option("t1", "--target", help="The sequence to synthesise: t1 (T1w)."),
    source: str | None = typer.Option(
        None, "--source", help="Which of the model's sources to read (default all it takes)."
    ),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="A checkpoint or builtin:NAME (default: builtin:flair-t1)."
    ),
    skull_strip: str = typer.Option(
        "auto", "--skull-strip", help="auto | always | never, as for predict; a mask is written when it ran."
    ),
    device: str = typer.Option("auto", "--device", help="cpu | cuda | auto"),
    work_dir: Path | None = typer.Option(
        None, "--work-dir", help="Folder for intermediate files (modalsynth writes its outputs in place, atomically)."
    ),
    skip_bids_validation: bool = typer.Option(
        False, "--skip-bids-validation", help="Do not run bids-validator-deno on BIDS_DIR first."
    ),
    all_subjects: bool = typer.Option(
        False, "--all-subjects", help="Also sessions that have the target (a real one to compare with)."
    ),
    register: bool = typer.Option(
        False, "--register", help="Register a session's other sources onto the first (rigid, mutual information)."
    ),
) -> None:
    """BIDS App: fill the missing T1w of every subject/session as BIDS derivatives with sidecars and QC pages.

    Example: modalsynth bids /data/ds /data/ds/derivatives/modalsynth participant --participant-label 01
    """
    from .bids_app import BidsOptions, parse_labels, run_bids

    options = BidsOptions(
        participant_labels=parse_labels(participant_label),
        session_labels=parse_labels(session_label),
        target=target,
        source=source,
        checkpoint=checkpoint,
        skull_strip=skull_strip,
        device=device,
        work_dir=work_dir,
        skip_bids_validation=skip_bids_validation,
        all_subjects=all_subjects,
        register=register,
    )
    written = run_bids(bids_dir, output_dir, analysis_level, options)
    typer.echo(f"{analysis_level} level: wrote {len(written)} file(s) under {output_dir}")


@app.command()
def report(
    outputs: Path = typer.Argument(..., help="A folder `modalsynth bids` or `modalsynth predict` wrote."),
    data: Path | None = typer.Option(
        None, "--data", help="For a predict folder: the data folder it read (sources, real images)."
    ),
    target: str = typer.Option("t1", "--target", help="For a predict folder: the predicted sequence."),
) -> None:
    """Write the HTML QC pages (one per subject, self-contained, viewable offline) and the index page.

    Example: modalsynth report /data/ds/derivatives/modalsynth
    """
    from .bids_app import report_derivatives
    from .qc_report import report_predictions

    if (outputs / "dataset_description.json").is_file():
        pages = report_derivatives(outputs)
    else:
        pages = report_predictions(outputs, data, target)
    for page in pages:
        typer.echo(f"wrote {page}")


@app.command()
def strip(
    ctx: typer.Context,
    input: Path = typer.Option(
        ..., "--input", help="A NIfTI file of a whole head (any MRI contrast), or a DICOM folder."
    ),
    output: Path | None = typer.Option(
        None,
        "--output",
        help="The skull-stripped volume as `predict` strips it: zero outside the brain mask grown by 1 mm "
        "(at least a voxel).",
    ),
    mask: Path | None = typer.Option(None, "--mask", help="The brain mask (uint8, 1 in the brain)."),
    series: str | None = typer.Option(None, "--series", help=SERIES_HELP),
) -> None:
    """Skull-strip one volume offline with deepbet (pip install 'modalsynth\\[strip]'): the brain mask and/or the brain.

    Example: modalsynth strip --input head.nii.gz --output brain.nii.gz --mask brain_mask.nii.gz
    """
    from .data.skullstrip import strip_file

    input = _dicom_input(ctx, input, None, series, lambda: [None])[0]
    for path in strip_file(input, output, mask):
        typer.echo(f"wrote {path}")


@app.command()
def export(
    checkpoint: str | None = typer.Option(
        None,
        "--checkpoint",
        help="A gan3d checkpoint written by `modalsynth train`, or builtin:NAME (default: builtin:flair-t1).",
    ),
    onnx: Path = typer.Option(..., "--onnx", help="The ONNX file to write (e.g. model.onnx)."),
) -> None:
    """Write a gan3d model's generator as one ONNX file, its preprocessing contract in the file's metadata.

    Example: modalsynth export --checkpoint builtin:flair-t1 --onnx flair-t1.onnx
    """
    from .export import export_onnx, twin_path
    from .inference import Predictor

    predictor = Predictor.load(checkpoint, "cpu")
    written = export_onnx(predictor, onnx)
    if predictor.raw is not None:
        typer.echo(f"wrote {twin_path(written)} (for the brains predict strips from raw scans; keep it beside)")
    typer.echo(f"wrote {written} (run it with: modalsynth predict --onnx {written} --input IN --output OUT)")


@app.command()
def models() -> None:
    """List the built-in models that `modalsynth predict` can use without training.

    Example: modalsynth models
    """
    from . import builtin

    for model in builtin.MODELS.values():
        star = " (default)" if model.name == builtin.DEFAULT else ""
        typer.echo(
            f"builtin:{model.name}{star}  {model.source} -> {model.target}: {model.description}; card: {model.card}"
        )


@app.command()
def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Folder of predictions OUT/<subject>/<target>.nii.gz."),
    ref: Path = typer.Option(..., "--ref", help="Data folder with the real target volumes."),
    target: str = typer.Option("t1", "--target"),
    out: Path = typer.Option(..., "--out", help="Report folder."),
    source: str | None = typer.Option("flair", "--source", help="Source modality, shown in the figures."),
    fid: bool = typer.Option(True, "--fid/--no-fid", help="Compute FID with the offline InceptionV3 weights."),
    fid_weights: Path | None = typer.Option(None, "--fid-weights", help="Another TorchScript feature network."),
) -> None:
    """Score predictions against the real targets: SSIM, PSNR, MAE, RMSE, FID, through-plane consistency, BraSyn SSIM.

    Example: modalsynth evaluate --pred preds --ref data/sim --target t1 --out report
    """
    from .evaluation import EvaluationOptions, evaluate_folders

    evaluate_folders(pred, ref, target, out, EvaluationOptions(source=source, fid=fid, fid_weights=fid_weights))


@app.command()
def benchmark(
    data: Path = typer.Option(..., "--data"),
    out: Path = typer.Option(..., "--out"),
    source: str = typer.Option("flair", "--source"),
    target: str = typer.Option("t1", "--target"),
    methods: str = typer.Option("lut,gan3d,pix2pix2d,ddpm", "--methods", help="Comma-separated method names."),
    steps: int | None = typer.Option(None, "--steps", help="Training steps per method and run (default 200)."),
    minutes: float | None = typer.Option(
        None, "--minutes", help="Training minutes per method and run (with or instead of --steps)."
    ),
    folds: int | None = typer.Option(None, "--folds", help="K-fold cross-validation: every subject is tested once."),
    grid: str | None = typer.Option(None, "--grid", help="D H W, or auto."),
    device: str = typer.Option("auto", "--device"),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Re-use methods finished in OUT with the same budget; continue unfinished or shorter runs from "
        "their last.pt.",
    ),
    fid: bool = typer.Option(True, "--fid/--no-fid"),
    config: Path | None = typer.Option(
        None,
        "--config",
        help="YAML with one section of training settings per method, e.g. 'gan3d: {model: {base_channels: 16}}'.",
    ),
) -> None:
    """Train every method on one split with one budget, predict, evaluate, and write the paper's Table 1.

    Example: modalsynth benchmark --data data/sim --methods lut,gan3d,pix2pix2d,ddpm --out bench --steps 300
    """
    from .benchmark import BenchmarkPlan, run_benchmark

    names = tuple(m.strip() for m in methods.split(",") if m.strip())
    plan = BenchmarkPlan(
        source=source,
        target=target,
        methods=names,
        steps=steps,
        minutes=minutes,
        folds=folds,
        grid=_grid_option(grid),
        device=device,
        resume=resume,
        fid=fid,
        config=config,
    )
    run_benchmark(data, out, plan)


@app.command()
def demo(out: Path = typer.Option(Path("modalsynth-demo"), "--out", help="Folder for data, run and report.")) -> None:
    """The main job on built-in data: simulate, train the 3D GAN briefly on CPU, predict, evaluate.

    Example: modalsynth demo --out demo
    """
    from .demo import run_demo

    run_demo(out)


class ConsoleHandler(logging.Handler):
    """The library's log as the command line shows it: information on stdout, warnings and errors on stderr as
    'warning: ...' and 'error: ...'."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            print(f"error: {record.getMessage()}", file=sys.stderr)
        elif record.levelno >= logging.WARNING:
            print(f"warning: {record.getMessage()}", file=sys.stderr)
        else:
            print(record.getMessage())


def log_to_console() -> None:
    """Show the library's log on the console (once per process, however often it is called)."""
    package = logging.getLogger("modalsynth")
    if not any(isinstance(h, ConsoleHandler) for h in package.handlers):
        package.addHandler(ConsoleHandler())
    package.setLevel(logging.INFO)
    package.propagate = False


def _sequences_read(source: str | None, checkpoint: str | None, onnx: Path | None) -> list[str | None]:
    """The sequences a prediction reads from a DICOM folder: --source's, else the model's first."""
    from .data.pairs import source_list

    if source:
        return list(source_list(source))
    if onnx is not None:
        return [None]
    from . import builtin
    from .checkpoints import Checkpoint

    return [source_list(Checkpoint.load(builtin.resolve(checkpoint)).config["source"])[0]]


def _dicom_input(ctx: typer.Context, input: Path, output: Path | None, series: str | None, sequences) -> tuple:
    """`input` (and `output`) as the command reads them; a DICOM folder is converted for the command's duration
    (`sequences()`: the sequences to pick from it)."""
    from .data.dicom import is_dicom_folder, nifti_inputs

    if not is_dicom_folder(input):
        if series is not None:
            raise UserError(f"--series picks a series of a DICOM folder; {input} is not one")
        return input, output
    return nifti_inputs(input, output, sequences(), series, ctx.call_on_close)


def main() -> None:
    """Entry point: run the app; a `UserError` becomes one line on stderr and exit status 2."""
    log_to_console()
    try:
        app(args=_join_labels(_join_triplets(sys.argv[1:])), prog_name="modalsynth")
    except UserError as exc:
        if _DEBUG["on"]:
            raise
        from .runtime import launch

        if launch().is_main:  # under torchrun every rank finds the same problem: one line, from rank 0
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as exc:
        print(str(exc), file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        if _DEBUG["on"]:
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
