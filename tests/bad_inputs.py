"""The bad-input corpus (issue 11): every kind of broken input a user can hand modalsynth, made on the fly.

No binary file is kept in git: each case is a function that writes its broken input under a temporary folder and
says which commands read it. `tests/test_bad_inputs.py` runs every case through every one of those commands and
checks the answer: exit status 2, one line on stderr naming the file and the fix, no traceback, nothing written.
README's troubleshooting table lists the same cases.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

#: array shape as stored (x, y, z): after reorienting to RAS this is conftest's TINY_GRID (16, 48, 40) in (z, y, x)
SHAPE = (40, 48, 16)
GRID_ARGS = ["--grid", "16", "48", "40"]


def head(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """A smooth positive 'head' in a zero background."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = (sum(g**2 for g in grids) < 0.6).astype(np.float32)
    return (inside * (100 + 50 * grids[0] + 10 * rng.standard_normal(shape))).astype(np.float32)


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def good_pair(folder: Path, seed: int = 0) -> None:
    save(folder / "flair.nii.gz", head(seed))
    save(folder / "t1.nii.gz", head(seed + 100))


# ---------------------------------------------------------------- broken NIfTI files: each writes one file at `path`


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_nifti(path: Path) -> None:
    path.write_text("subject,age\n01,42\n")  # a CSV someone renamed


def _gzip_garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(np.random.default_rng(0).bytes(4000)))


def _truncated_gzip(path: Path) -> None:
    save(path, head())
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _array(data: np.ndarray) -> Callable[[Path], None]:
    return lambda path: save(path, data)


def _constant(value: float) -> Callable[[Path], None]:
    return _array(np.full(SHAPE, value, np.float32))


def _with_value(value: float) -> Callable[[Path], None]:
    data = head()
    data[20, 24, 8] = value
    return _array(data)


def _complex(path: Path) -> None:
    save(path, head().astype(np.complex64) * (1 + 0.5j))


def _rgb(path: Path) -> None:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"] = rgb["G"] = rgb["B"] = np.clip(head(), 0, 255).astype("u1")
    save(path, rgb)


def _header_claims_more(path: Path) -> None:
    """An uncompressed .nii whose header says 40x48x16 but whose data stops after a third of it."""
    plain = path.with_name(path.name.replace(".nii.gz", ".tmp.nii"))
    save(plain, head())
    blob = plain.read_bytes()
    plain.unlink()
    cut = blob[: 352 + (len(blob) - 352) // 3]
    path.write_bytes(gzip.compress(cut) if path.name.endswith(".gz") else cut)


def _voxel_size(size: float) -> Callable[[Path], None]:
    """No sform or qform, so the voxel sizes (pixdim) alone give the grid; pixdim[2] patched in the bytes (nibabel
    refuses to write a zero or negative one)."""

    def make(path: Path) -> None:
        img = nib.Nifti1Image(head(), None)
        img.header.set_sform(None, code=0)
        img.header.set_qform(None, code=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(img, str(path))
        raw = bytearray(gzip.decompress(path.read_bytes()))
        raw[76 + 4 * 2 : 76 + 4 * 3] = np.float32(size).tobytes()  # pixdim[2]: the header's field at byte 76
        path.write_bytes(gzip.compress(bytes(raw)))

    return make


def _degenerate_affine(path: Path) -> None:
    affine = np.eye(4)
    affine[:3, 2] = affine[:3, 1]  # the third axis points where the second does: a flat grid
    save(path, head(), affine)


def _analyze(path: Path) -> None:
    """An Analyze 7.5 .hdr/.img pair where the NIfTI file should be (the NIfTI name is left absent)."""
    stem = path.name.split(".")[0]
    nib.save(nib.AnalyzeImage(head(), np.eye(4)), str(path.with_name(stem + ".hdr")))


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop-" + path.name)
    os.symlink(other.name, path)
    os.symlink(path.name, other)


def _folder_named_like_file(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "readme.txt").write_text("a folder, not a volume")


# ---------------------------------------------------------------- the case table


@dataclass
class Case:
    """One bad input. `build(root)` writes it and returns the paths the commands use (see `commands`).

    Keys a build may return: file (a bad volume), data (a data folder or manifest), pred/ref (evaluate's folders),
    checkpoint, config, extra (options per command). `names`: strings one of which the message must hold (the file or
    folder at fault); `hint`: a word of the fix the message must give; `xfail`: command -> what the lead must change.
    """

    name: str
    kind: str
    commands: tuple[str, ...]
    build: Callable[[Path], dict]
    hint: str
    names: Callable[[dict], list[str]] = lambda p: [p["bad"]]
    xfail: dict[str, str] = field(default_factory=dict)
    readme: str = ""


def _volume_case(make: Callable[[Path], None]) -> Callable[[Path], dict]:
    """A data folder with a good subject `a` and a subject `b` whose flair and t1 are both the bad file."""

    def build(root: Path) -> dict:
        data = root / "data"
        good_pair(data / "a")
        (data / "b").mkdir(parents=True)
        for name in ("flair.nii.gz", "t1.nii.gz"):
            make(data / "b" / name)
        preds = root / "preds"
        for subject in ("a", "b"):
            save(preds / subject / "t1.nii.gz", head(7))
        file = data / "b" / "flair.nii.gz"
        if not os.path.lexists(file) and file.with_name("flair.hdr").exists():  # the Analyze case: pass its .hdr
            return {
                "file": file.with_name("flair.hdr"),
                "data": data,
                "pred": preds,
                "ref": data,
                "bad": str(Path("b") / "flair.hdr"),
                "bad2": str(Path("b") / "t1.hdr"),
            }
        return {
            "file": file,
            "data": data,
            "pred": preds,
            "ref": data,
            "bad": str(Path("b") / "flair.nii.gz"),
            "bad2": str(Path("b") / "t1.nii.gz"),
        }

    return build


def _folder_case(make: Callable[[Path], dict]) -> Callable[[Path], dict]:
    def build(root: Path) -> dict:
        paths = make(root)
        preds = root / "preds"
        for subject in paths.pop("pred_subjects", ("a", "b")):
            save(preds / subject / "t1.nii.gz", head(7))
        paths.setdefault("pred", preds)
        paths.setdefault("ref", paths["data"])
        return paths

    return build


def _missing_modality(root: Path) -> dict:
    data = root / "data"
    good_pair(data / "a")
    save(data / "b" / "flair.nii.gz", head(3))
    return {"data": data, "bad": str(data / "b")}


def _grid(shape: bool) -> Callable[[Path], dict]:
    def make(root: Path) -> dict:
        data = root / "data"
        good_pair(data / "a")
        save(data / "b" / "flair.nii.gz", head(3))
        if shape:
            save(data / "b" / "t1.nii.gz", head(4, (40, 48, 18)))
        else:
            affine = np.eye(4)
            affine[:3, 3] = (5.0, 0.0, 0.0)  # shifted by 5 mm
            save(data / "b" / "t1.nii.gz", head(4), affine)
        return {"data": data, "bad": str(Path("b") / "t1.nii.gz")}

    return make


def _empty_folder(root: Path) -> dict:
    data = root / "data"
    data.mkdir(parents=True)
    return {"data": data, "ref": data, "pred": data, "bad": str(data), "pred_subjects": ()}


def _bids_two_runs(root: Path) -> dict:
    data = root / "bids"
    for subject in ("sub-01", "sub-02"):
        anat = data / subject / "anat"
        save(anat / f"{subject}_FLAIR.nii.gz", head(1))
        save(anat / f"{subject}_T1w.nii.gz", head(2))
    anat = data / "sub-02" / "anat"
    (anat / "sub-02_T1w.nii.gz").rename(anat / "sub-02_run-1_T1w.nii.gz")
    save(anat / "sub-02_run-2_T1w.nii.gz", head(5))
    return {"data": data, "bad": "sub-02_run-1_T1w.nii.gz", "pred_subjects": ("sub-01", "sub-02")}


def _manifest(text: str) -> Callable[[Path], dict]:
    def make(root: Path) -> dict:
        data = root / "data"
        good_pair(data / "a")
        good_pair(data / "b", seed=1)
        manifest = root / "pairs.csv"
        manifest.write_text(text)
        return {"data": manifest, "bad": "pairs.csv"}

    return make


def _missing_path(root: Path) -> dict:
    return {
        "file": root / "nowhere" / "flair.nii.gz",
        "data": root / "nowhere",
        "pred": root / "nowhere",
        "ref": root / "nowhere",
        "bad": "nowhere",
    }


def _unknown_modality(root: Path) -> dict:
    data = root / "data"
    good_pair(data / "a")
    good_pair(data / "b", seed=1)
    return {
        "data": data,
        "bad": "flare",
        "extra": {
            "train": ["--source", "flare"],
            "benchmark": ["--source", "flare"],
            "inspect": ["--source", "flare"],
            "evaluate": ["--target", "t11"],
        },
        "bad_evaluate": "t11",
    }


def _config(text: str, bad: str) -> Callable[[Path], dict]:
    def make(root: Path) -> dict:
        data = root / "data"
        good_pair(data / "a")
        good_pair(data / "b", seed=1)
        config = root / "settings.yaml"
        config.write_text(text)
        return {"data": data, "config": config, "bad": bad}

    return make


def _checkpoint(kind: str) -> Callable[[Path], dict]:
    """`kind` names how the checkpoint is broken; a `good` one is copied from CHECKPOINT (set by the test module)."""

    def make(root: Path) -> dict:
        import torch

        data = root / "data"
        good_pair(data / "a")
        good_pair(data / "b", seed=1)
        path = root / "model.pt"
        if kind == "missing":
            pass
        elif kind == "corrupt":
            path.write_bytes(np.random.default_rng(1).bytes(5000))
        elif kind == "truncated":
            blob = CHECKPOINT["path"].read_bytes()
            path.write_bytes(blob[: len(blob) // 2])
        elif kind == "state_dict":
            torch.save(torch.nn.Conv3d(1, 4, 3).state_dict(), path)
        elif kind == "pickle":
            torch.save({"format": "modalsynth-checkpoint", "config": {}, "state": {}, "payload": Payload()}, path)
        elif kind == "other_pair":
            from modalsynth.checkpoints import Checkpoint

            ckpt = Checkpoint.load(CHECKPOINT["path"])
            ckpt.config = {**ckpt.config, "source": "t2", "target": "pd"}
            ckpt.save(path)
        return {
            "data": data,
            "file": data / "a" / "flair.nii.gz",
            "checkpoint": path,
            "bad": "model.pt",
            "extra": {"train": ["--init", str(path), "--source", "flair", "--target", "t1"]},
        }

    return make


class Payload:
    """An object a pickle would rebuild (and run code for): a checkpoint holding it must be refused unread."""

    def __reduce__(self):
        return (print, ("pickle payload executed",))


#: filled by the test module: {"path": Path of a good tiny checkpoint}
CHECKPOINT: dict[str, Path] = {}

FILE_COMMANDS = ("inspect", "train", "predict", "evaluate", "benchmark")


def volume(name: str, make, hint: str, readme: str) -> Case:
    return Case(name, "volume", FILE_COMMANDS, _volume_case(make), hint, lambda p: [p["bad"], p["bad2"]], {}, readme)


CASES: list[Case] = [
    Case("missing", "path", FILE_COMMANDS, _missing_path, "check", readme="no such file or folder → check the path"),
    volume("empty", _empty, "export", "empty file (0 bytes) → export or copy it again"),
    volume("not_nifti", _not_nifti, "re-export", "not NIfTI → re-export as .nii.gz"),
    volume("gzip_garbage", _gzip_garbage, "re-export", "gzip of something else → re-export as .nii.gz"),
    volume("truncated_gzip", _truncated_gzip, "again", "truncated download/copy → copy it again"),
    volume("two_d", _array(head()[:, :, 8]), "3D", "2D image → pass the whole 3D volume"),
    volume("single_slice", _array(head()[:, :, 8:9]), "3D", "one slice → pass the whole 3D volume"),
    volume("four_d", _array(np.stack([head(), head(1)], -1)), "split", "4D series → split it and pass one volume"),
    volume(
        "five_d", _array(head()[..., None, None].repeat(3, -1)), "split", "5D (vector/RGB) → pass one scalar 3D volume"
    ),
    volume("rgb", _rgb, "grey", "RGB voxels → save a single-channel (grey) image"),
    volume("complex", _complex, "magnitude", "complex-valued → save the magnitude image"),
    volume("nan", _with_value(np.nan), "replace", "NaN voxels → replace them (fslmaths -nan)"),
    volume("inf", _with_value(np.inf), "replace", "Inf voxels → replace them"),
    volume("constant", _constant(7.0), "blank", "every voxel equal → the image is blank: export it again"),
    volume("all_zero", _constant(0.0), "blank", "all zero → the image is blank: export it again"),
    volume(
        "header_claims_more",
        _header_claims_more,
        "again",
        "header claims more voxels than the file holds → copy it again",
    ),
    volume("zero_voxel_size", _voxel_size(0.0), "voxel size", "voxel size 0 → fix the header's voxel sizes"),
    volume(
        "negative_voxel_size", _voxel_size(-1.0), "voxel size", "negative voxel size → fix the header's voxel sizes"
    ),
    volume("degenerate_affine", _degenerate_affine, "affine", "singular affine → fix the orientation (sform/qform)"),
    volume("analyze_pair", _analyze, "convert", "Analyze .hdr/.img → convert to NIfTI"),
    volume("symlink_loop", _symlink_loop, "link", "symlink loop → point the link at the real file"),
    volume("folder_named_like_file", _folder_named_like_file, "folder", "a folder named x.nii.gz → pass the file"),
    Case(
        "empty_data_folder",
        "folder",
        ("inspect", "train", "predict", "evaluate", "benchmark"),
        _folder_case(_empty_folder),
        "expected",
        readme="empty data folder → use ROOT/<subject>/<modality>.nii.gz",
    ),
    Case(
        "missing_modality",
        "folder",
        ("inspect", "train", "benchmark"),
        _folder_case(_missing_modality),
        "add",
        readme="a subject lacks the target → add it, remove the subject, or use a CSV manifest",
    ),
    Case(
        "grid_shape",
        "folder",
        ("inspect", "train", "evaluate", "benchmark"),
        _folder_case(_grid(True)),
        "resample",
        readme="source/target shapes differ → register them, or --resample-target",
    ),
    Case(
        "grid_affine",
        "folder",
        ("inspect", "train", "evaluate", "benchmark"),
        _folder_case(_grid(False)),
        "resample",
        readme="source/target affines differ → register them, or --resample-target",
    ),
    Case(
        "bids_two_runs",
        "folder",
        ("inspect", "train", "predict", "benchmark"),
        _folder_case(_bids_two_runs),
        "manifest",
        readme="two runs of one suffix → keep one run or list pairs in a CSV manifest",
    ),
    Case(
        "csv_missing_file",
        "manifest",
        ("inspect", "train", "benchmark"),
        _folder_case(
            _manifest(
                "subject,source,target\na,data/a/flair.nii.gz,data/a/t1.nii.gz\n"
                "b,data/b/flair.nii.gz,data/b/T1.nii.gz\n"
            )
        ),
        "path",
        names=lambda p: ["T1.nii.gz"],
        readme="manifest names a missing file → fix the path in the CSV",
    ),
    Case(
        "csv_missing_column",
        "manifest",
        ("inspect", "train", "benchmark"),
        _folder_case(_manifest("subject,source\na,data/a/flair.nii.gz\n")),
        "header",
        readme="manifest lacks a column → header subject,source,target[,mask]",
    ),
    Case(
        "unknown_modality",
        "option",
        ("inspect", "train", "evaluate", "benchmark"),
        _folder_case(_unknown_modality),
        "choose",
        names=lambda p: ["flare", "t11"],
        readme="unknown modality name → use a name the files carry (flair, t1, ...)",
    ),
    Case(
        "bad_yaml",
        "config",
        ("train", "benchmark"),
        _config("steps: [1, 2\n", "settings.yaml"),
        "fix",
        readme="config is not YAML → fix the syntax",
    ),
    Case(
        "unknown_setting",
        "config",
        ("train",),
        _config("stepz: 3\n", "stepz"),
        "setting",
        readme="unknown setting → use a field of TrainConfig",
    ),
    Case(
        "wrong_type",
        "config",
        ("train",),
        _config("steps: many\n", "steps"),
        "number",
        readme="wrong type → give the right type (e.g. steps: 200)",
    ),
    Case(
        "missing_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("missing"),
        "train",
        readme="checkpoint not found → check the path",
    ),
    Case(
        "corrupt_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("corrupt"),
        "modalsynth train",
        readme="corrupt checkpoint → use the .pt file modalsynth train wrote",
    ),
    Case(
        "truncated_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("truncated"),
        "modalsynth train",
        readme="truncated checkpoint → use another copy",
    ),
    Case(
        "state_dict_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("state_dict"),
        "modalsynth train",
        readme="plain state_dict from another program → use a modalsynth checkpoint",
    ),
    Case(
        "pickle_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("pickle"),
        "modalsynth train",
        readme="pickled objects in the checkpoint → refused unread; use a trusted file",
    ),
    Case(
        "other_pair_checkpoint",
        "checkpoint",
        ("predict", "train"),
        _checkpoint("other_pair"),
        "t2",
        readme="checkpoint for another source/target → use the model trained for your pair",
    ),
]


# ------------------------------------------------- whole command lines: writes, budgets, settings, caches, records
# Each build returns "argv" (a function of the command's output folder), the names the one line must hold and
# "keep": files whose bytes must not change (what a careless write would have replaced).


def _data(root: Path) -> Path:
    data = root / "data"
    good_pair(data / "a")
    good_pair(data / "b", seed=1)
    good_pair(data / "c", seed=2)
    return data


def _train_argv(data: Path, out: Path, *extra: str, method: str = "lut") -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--method", method, "--device", "cpu", *GRID_ARGS, *extra]


def _command(make: Callable[[Path, Path], tuple[Callable[[Path], list[str]], list[str], list[Path]]]):
    """A case from `make(root, data) -> (argv(out), names, files to keep)`."""

    def build(root: Path) -> dict:
        data = _data(root)
        argv, names, keep = make(root, data)
        return {"argv": argv, "bad": names[0], "names": names, "keep": keep}

    return build


def _names(p: dict) -> list[str]:
    return p["names"]


def _export_onto_checkpoint(root: Path, data: Path):
    model = root / "model.pt"
    model.write_bytes(CHECKPOINT["path"].read_bytes())
    return lambda out: ["export", "--checkpoint", str(model), "--onnx", str(model)], ["model.pt"], [model]


def _export_to_nifti(root: Path, data: Path):
    target = data / "a" / "t1.nii.gz"
    return (
        lambda out: ["export", "--checkpoint", str(CHECKPOINT["path"]), "--onnx", str(target)],
        ["t1.nii.gz"],
        [target],
    )


def _strip_one_path_twice(root: Path, data: Path):
    def argv(out: Path) -> list[str]:
        return ["strip", "--input", str(data / "a" / "flair.nii.gz"), "--output", str(out / "x.nii.gz"),
                "--mask", str(out / "x.nii.gz")]  # fmt: skip

    return argv, ["x.nii.gz"], [data / "a" / "flair.nii.gz"]


def _predict_into_its_data(root: Path, data: Path):
    def argv(out: Path) -> list[str]:
        return ["predict", "--checkpoint", str(CHECKPOINT["path"]), "--input", str(data), "--output", str(data)]

    return argv, [str(data)], [data / "a" / "t1.nii.gz"]


def _predict_onto_its_input(root: Path, data: Path):
    flair = data / "a" / "flair.nii.gz"
    argv = ["predict", "--checkpoint", str(CHECKPOINT["path"]), "--input", str(flair), "--output", str(flair)]
    return lambda out: argv, ["flair.nii.gz"], [flair]


def _run_inside_data(root: Path, data: Path):
    return lambda out: _train_argv(data, data / "run", "--steps", "1"), [str(data)], [data / "a" / "t1.nii.gz"]


def _report_into_references(root: Path, data: Path):
    def argv(out: Path) -> list[str]:
        return ["evaluate", "--pred", str(data), "--ref", str(data), "--out", str(data), "--no-fid"]

    return argv, [str(data)], [data / "a" / "t1.nii.gz"]


def _cache_inside_data(root: Path, data: Path):
    return lambda out: ["prepare", "--data", str(data), "--cache", str(data / "cache")], [str(data)], []


def _budget(*options: str):
    def make(root: Path, data: Path):
        return lambda out: _train_argv(data, out / "run", *options), [options[0].lstrip("-")], []

    return make


def _yaml_settings(text: str, *names: str, method: str = "lut"):
    def make(root: Path, data: Path):
        config = root / "run.yaml"
        config.write_text(text)
        argv = ["--steps", "1", "--config", str(config)]
        return lambda out: _train_argv(data, out / "run", *argv, method=method), list(names), []

    return make


def _predict_same_source_twice(root: Path, data: Path):
    def argv(out: Path) -> list[str]:
        return ["predict", "--input", str(data), "--output", str(out / "preds"), "--source", "flair,flair"]

    return argv, ["flair,flair"], []


def _cache_at(kind: str):
    """A cache that cannot hold entries: a file in its place, or a place nobody can create folders in."""

    def make(root: Path, data: Path):
        cache = root / "cache-file" if kind == "file" else Path("/proc/modalsynth-cache")
        if kind == "file":
            cache.write_text("not a folder")
        return lambda out: ["prepare", "--data", str(data), "--cache", str(cache)], [str(cache)], []

    return make


def _damaged_cache(edit: Callable[[dict, Path], None]):
    """A cache built by prepare, then damaged by `edit(manifest, cache)` (the manifest is written back after)."""

    def make(root: Path, data: Path):
        import json

        from modalsynth.cli import main as cli_main

        cache = root / "cache"
        argv = ["prepare", "--data", str(data), "--cache", str(cache), "--method", "lut", *GRID_ARGS]
        saved = sys.argv
        sys.argv = ["modalsynth", *argv]
        try:
            cli_main()
        except SystemExit as exc:
            assert not exc.code, f"prepare failed ({exc.code})"
        finally:
            sys.argv = saved
        manifest = json.loads((cache / "manifest.json").read_text())
        edit(manifest, cache)
        (cache / "manifest.json").write_text(json.dumps(manifest))
        return lambda out: argv, [str(cache)], []

    return make


def _settings_a_list(manifest: dict, cache: Path) -> None:
    manifest["settings"] = [1, 2]


def _no_subjects(manifest: dict, cache: Path) -> None:
    del manifest["subjects"]


def _entry_without_files(manifest: dict, cache: Path) -> None:
    del next(iter(manifest["subjects"].values()))["files"]


def _nan_in_entry(manifest: dict, cache: Path) -> None:
    path = next(cache.glob("subjects/*/target.npy"))
    array = np.load(path)
    array[0, 0, 0] = np.nan
    np.save(path, array)


def _truncated_entry(manifest: dict, cache: Path) -> None:
    path = next(cache.glob("subjects/*/source.npy"))
    path.write_bytes(path.read_bytes()[:300])


def _split_file(text: str):
    def make(root: Path, data: Path):
        run = root / "run"
        run.mkdir()
        (run / "split.json").write_text(text)
        return lambda out: _train_argv(data, run, "--steps", "1"), ["split.json"], [run / "split.json"]

    return make


def _onnx_metadata(root: Path, data: Path):
    """An ONNX file that says it comes from modalsynth but whose settings are not JSON."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["source"], ["target"])],
        "g",
        [helper.make_tensor_value_info("source", TensorProto.FLOAT, [None, 1, 16, 16, 16])],
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [None, 1, 16, 16, 16])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in {
        "modalsynth.config": "[1, 2",
        "modalsynth.format_version": "4",
        "modalsynth.intensity": "{}",
    }.items():
        model.metadata_props.add(key=key, value=value)
    path = root / "model.onnx"
    onnx.save_model(model, str(path))
    argv = ["predict", "--onnx", str(path), "--input", str(data / "a" / "flair.nii.gz")]
    return lambda out: [*argv, "--output", str(out / "t1.nii.gz")], ["model.onnx"], []


def command(name: str, commands: tuple[str, ...], make, hint: str, readme: str) -> Case:
    return Case(name, "command", commands, _command(make), hint, _names, readme=readme)


CASES += [
    command(
        "export_onto_checkpoint",
        ("export",),
        _export_onto_checkpoint,
        "choose another",
        "export --onnx naming the checkpoint → refused: choose another path",
    ),
    command("export_to_nifti", ("export",), _export_to_nifti, ".onnx", "export --onnx x.nii.gz → name it .onnx"),
    command(
        "strip_one_path_twice",
        ("strip",),
        _strip_one_path_twice,
        "own path",
        "strip --output X --mask X → give each output its own path",
    ),
    command(
        "predict_into_its_data",
        ("predict",),
        _predict_into_its_data,
        "outside",
        "predict a folder into itself → choose an output folder outside the data",
    ),
    command(
        "predict_onto_its_input",
        ("predict",),
        _predict_onto_its_input,
        "choose another",
        "predict a file onto itself → choose another --output",
    ),
    command(
        "run_inside_data",
        ("train",),
        _run_inside_data,
        "outside",
        "train --out inside the data → choose a folder outside it",
    ),
    command(
        "report_into_references",
        ("evaluate",),
        _report_into_references,
        "choose another",
        "evaluate --out naming the references → choose another --out",
    ),
    command(
        "cache_inside_data",
        ("prepare",),
        _cache_inside_data,
        "outside",
        "prepare --cache inside the data → choose a folder outside it",
    ),
    command("steps_zero", ("train",), _budget("--steps", "0"), "at least 1", "--steps 0 or less → at least 1"),
    command("steps_negative", ("train",), _budget("--steps", "-5"), "at least 1", "--steps -5 → at least 1"),
    command("minutes_zero", ("train",), _budget("--minutes", "0"), "positive", "--minutes 0 or less → positive"),
    command("minutes_negative", ("train",), _budget("--minutes", "-1"), "positive", "--minutes -1 → positive"),
    command("minutes_nan", ("train",), _budget("--minutes", "nan"), "positive", "--minutes nan → a positive number"),
    command(
        "epochs_negative",
        ("train",),
        _yaml_settings("epochs: -3\n", "epochs"),
        "at least 1",
        "epochs: -3 in the YAML → at least 1",
    ),
    command("workers_negative", ("train",), _budget("--workers", "-1"), "0", "--workers -1 → 0 or more"),
    command(
        "conflicting_stem",
        ("train",),
        _yaml_settings("model: {stem: residual}\n", "model.stem", "model.full_res_channels", method="gan3d"),
        "strided",
        "model: {stem: residual} with the default head → set model.full_res_channels to null",
    ),
    command(
        "inference_out_of_range",
        ("train",),
        _yaml_settings("inference: {overlap: 1.5, window: [0, 64, 64]}\n", "inference.overlap"),
        "[0, 1)",
        "inference.overlap 1.5 → a fraction in [0, 1)",
    ),
    command(
        "setting_in_wrong_section",
        ("train",),
        _yaml_settings("overlap: 0.3\n", "inference.overlap"),
        "move it",
        "overlap at the top level → move it under inference",
    ),
    command(
        "same_source_twice",
        ("predict",),
        _predict_same_source_twice,
        "distinct",
        "predict --source flair,flair → distinct names",
    ),
    command("cache_is_a_file", ("prepare",), _cache_at("file"), "folder", "--cache names a file → give a folder"),
    command(
        "cache_not_writable",
        ("prepare",),
        _cache_at("proc"),
        "writable",
        "--cache where nothing can be written → a writable folder",
    ),
    command(
        "manifest_settings_not_mapping",
        ("prepare", "train"),
        _damaged_cache(_settings_a_list),
        "delete",
        "cache manifest of the wrong shape → delete the cache and run again",
    ),
    command(
        "manifest_without_subjects",
        ("prepare",),
        _damaged_cache(_no_subjects),
        "delete",
        "cache manifest without subjects → delete the cache and run again",
    ),
    command(
        "manifest_entry_without_files",
        ("prepare",),
        _damaged_cache(_entry_without_files),
        "delete",
        "cache entry without its files → delete the cache and run again",
    ),
    command(
        "nan_in_cache_entry",
        ("prepare",),
        _damaged_cache(_nan_in_entry),
        "not finite",
        "values that are not finite in a cache entry → delete it and run again",
    ),
    command(
        "truncated_cache_entry",
        ("prepare",),
        _damaged_cache(_truncated_entry),
        "corrupt",
        "truncated cache entry → delete it and run again",
    ),
    command(
        "split_not_a_mapping", ("train",), _split_file("[1, 2]"), "delete", "split.json of the wrong shape → delete it"
    ),
    command("split_not_json", ("train",), _split_file("{train: "), "delete", "split.json not JSON → delete it"),
    command(
        "onnx_metadata_damaged",
        ("predict",),
        _onnx_metadata,
        "export",
        "ONNX file with damaged modalsynth metadata → export it again",
    ),
]
