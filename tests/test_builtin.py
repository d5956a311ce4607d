"""The built-in FLAIR->T1 model, presets and fine-tuning from a checkpoint."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from modalsynth import builtin
from modalsynth.checkpoints import Checkpoint
from modalsynth.config import resolve_config
from modalsynth.errors import UserError
from modalsynth.inference import Predictor
from modalsynth.input_checks import input_warnings
from modalsynth.io import Volume, file_digest, load_volume
from modalsynth.methods import method_class
from modalsynth.training import train

from .conftest import REAL_DEV, blob_volume, tiny_config
from .test_settings import run_cli

MODEL = builtin.MODELS[builtin.DEFAULT]
ROOT = Path(__file__).resolve().parents[1]


def _small_flair(path, shape=(40, 48, 40)):
    nib.save(nib.Nifti1Image(blob_volume(shape), np.diag([1.2, 1.0, 1.0, 1.0])), str(path))
    return path


@pytest.mark.parametrize("name", sorted(builtin.MODELS))
def test_builtin_weights_match_the_card_and_fit_the_size_limit(name):
    model = builtin.MODELS[name]
    assert model.path.stat().st_size <= 10 * 2**20
    assert file_digest(model.path) == model.sha256
    card = model.card.read_text()
    scripts = re.findall(r"scripts/build_\w+\.py", card)
    assert model.sha256 in card and scripts and all((ROOT / s).is_file() for s in scripts)
    ckpt = Checkpoint.load(builtin.resolve(f"builtin:{model.name}"))
    assert set(ckpt.state["nets"]) == {"generator"} and not ckpt.state.get("optimizers")
    assert all(t.dtype == torch.float16 for t in ckpt.state["nets"]["generator"].values() if t.is_floating_point())
    assert ckpt.config["source"] == model.source and model.source.split(",")[0] == "flair"
    assert ckpt.config["target"] == model.target == "t1"
    assert ckpt.elapsed_s == 0.0  # no training time in the file (the card has it): a rebuild writes the same bytes


def test_builtin_predicts_a_small_volume_onto_its_grid(tmp_path):
    flair = _small_flair(tmp_path / "flair.nii.gz")
    predictor = Predictor.from_checkpoint(builtin.resolve(None), "cpu")
    out = predictor.predict_volume(load_volume(flair))
    source = load_volume(flair)
    assert out.shape == source.shape and np.allclose(out.affine, source.affine) and np.isfinite(out.data).all()
    inside = source.data > 0
    assert out.data[inside].std() > 0  # not a constant


def test_the_flair_t2_model_predicts_a_subject_folder_from_every_source_it_has(tmp_path, monkeypatch, capsys):
    subject = tmp_path / "patient-1"
    subject.mkdir()
    flair = _small_flair(subject / "flair.nii.gz")
    image = nib.load(flair)
    data = np.asarray(image.dataobj, dtype=np.float32)
    t2 = np.where(data > 0, 1.2 * data.max() - data, 0).astype(np.float32)  # bright where the FLAIR is dark
    nib.save(nib.Nifti1Image(t2, image.affine), str(subject / "t2.nii.gz"))
    outputs = {}
    for sources in ("flair,t2", "flair", "t2"):
        out = tmp_path / f"out-{sources.replace(',', '-')}"
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            *("predict", "--checkpoint", "builtin:flair-t2-t1", "--input", str(subject), "--output", str(out)),
            *("--source", sources, "--device", "cpu"),
        )
        assert code == 0, err
        (written,) = out.rglob("t1.nii.gz")
        outputs[sources] = load_volume(written)
        assert outputs[sources].shape == data.shape and np.allclose(outputs[sources].affine, image.affine)
        assert np.isfinite(outputs[sources].data).all() and outputs[sources].data[data > 0].std() > 0
    both, alone = outputs["flair,t2"].data, outputs["flair"].data
    assert np.abs(both - alone)[data > 0].mean() > 1e-3  # the T2 is read, not ignored
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0 and "builtin:flair-t2-t1" in out and "flair,t2 -> t1" in out


def test_predict_with_no_checkpoint_uses_the_builtin_model_and_says_how_long(tmp_path, monkeypatch, capsys):
    flair = _small_flair(tmp_path / "flair.nii.gz")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(flair),
        "--output",
        str(tmp_path / "t1.nii.gz"),
        "--device",
        "cpu",
    )
    assert code == 0, err
    assert re.search(r"wrote .*t1.nii.gz \(\d+\.\d s on cpu\)", out)
    assert load_volume(tmp_path / "t1.nii.gz").shape == load_volume(flair).shape
    code, out, _ = run_cli(monkeypatch, capsys, "models")
    assert code == 0 and "builtin:flair-t1 (default)" in out and "flair -> t1" in out


def test_predict_overlap_changes_the_windows_and_bad_values_are_one_line_errors(tmp_path, monkeypatch, capsys):
    flair = _small_flair(
        tmp_path / "flair.nii.gz", shape=(120, 70, 40)
    )  # grid 48 x 64 x 112: 2 windows at 0.25, 3 at 0.4
    outputs = {}
    for overlap in ("0.25", "0.4"):
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "predict",
            "--input",
            str(flair),
            "--output",
            str(tmp_path / f"t1-{overlap}.nii.gz"),
            "--device",
            "cpu",
            "--overlap",
            overlap,
        )
        assert code == 0, err
        outputs[overlap] = load_volume(tmp_path / f"t1-{overlap}.nii.gz").data
    default = Predictor.from_checkpoint(builtin.resolve(None), "cpu").predict_volume(load_volume(flair)).data
    np.testing.assert_allclose(outputs["0.4"], default, atol=1e-3)  # the model's own overlap is 0.4
    assert np.abs(outputs["0.25"] - default).max() > 1e-2  # fewer windows, another blend
    for bad in ("1.0", "-0.1"):
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "predict",
            "--input",
            str(flair),
            "--output",
            str(tmp_path / "x.nii.gz"),
            "--device",
            "cpu",
            "--overlap",
            bad,
        )
        assert code == 2 and "--overlap" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nii.gz").exists()


def test_flip_average_makes_prediction_mirror_symmetric_and_is_a_predict_option(tmp_path, monkeypatch, capsys):
    predictor = Predictor.from_checkpoint(builtin.resolve(None), "cpu")
    source = np.clip(blob_volume((48, 64, 80), seed=3) / 50.0 - 1.0, -1, 1).astype(np.float32)
    mirrored = np.ascontiguousarray(source[..., ::-1])
    plain = predictor.predict_array(source)
    assert np.abs(predictor.predict_array(mirrored)[..., ::-1] - plain).max() > 1e-2  # one network is not symmetric
    flipping = predictor.with_inference(flip_average=True)
    averaged = flipping.predict_array(source)
    np.testing.assert_allclose(flipping.predict_array(mirrored)[..., ::-1], averaged, atol=2e-2)
    assert not predictor.inference.flip_average  # the first predictor is unchanged
    np.testing.assert_allclose(averaged, 0.5 * (plain + predictor.predict_array(mirrored)[..., ::-1]), atol=1e-5)
    flair = _small_flair(tmp_path / "flair.nii.gz")
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(flair),
        "--output",
        str(tmp_path / "t1.nii.gz"),
        "--device",
        "cpu",
        "--flip-average",
    )
    assert code == 0, err
    expected = flipping.predict_volume(load_volume(flair)).data
    np.testing.assert_allclose(load_volume(tmp_path / "t1.nii.gz").data, expected, atol=1e-2 * np.ptp(expected))


def test_a_damaged_builtin_file_is_refused(monkeypatch, tmp_path):
    monkeypatch.setitem(builtin.MODELS, MODEL.name, dataclasses.replace(MODEL, sha256="0" * 64))
    with pytest.raises(UserError, match="does not match the model card"):
        builtin.resolve(None)
    with pytest.raises(UserError, match="no such built-in model"):
        builtin.resolve("builtin:t2-ct")


def test_a_whole_head_gets_a_skull_stripping_warning():
    grids = np.meshgrid(*[np.arange(n) - n / 2 for n in (200, 200, 200)], indexing="ij")
    head = (sum(g**2 for g in grids) < 90**2).astype(np.float32) * 100  # a 3-litre ball at 1 mm
    found = input_warnings(Volume(head, np.eye(4), nib.Nifti1Header(), None), "flair")
    assert len(found) == 1 and "skull-stripped" in found[0]
    brain = (sum(g**2 for g in grids) < 65**2).astype(np.float32) * 100  # 1.15 litres
    assert input_warnings(Volume(brain, np.eye(4), nib.Nifti1Header(), None), "flair") == []


def test_paper_preset_and_unknown_preset():
    paper = resolve_config([("cli", {"preset": "paper"})], method_class)
    assert paper.preprocess.grid == (48, 288, 240) and paper.patch is None and paper.model.stem == "residual"
    assert paper.model.base_channels == 32 and paper.lr == 1e-4
    default = resolve_config([("cli", {})], method_class)
    assert default.model.stem == "strided" and default.patch == (64, 64, 64)
    with pytest.raises(UserError, match="--preset fast: gan3d has no such preset .its presets: paper"):
        resolve_config([("cli", {"preset": "fast"})], method_class)


def test_init_fine_tunes_from_a_checkpoint_with_its_network(tiny_sim, tmp_path):
    first = train(tiny_config(steps=2, val_every=2), tiny_sim, tmp_path / "first", progress=False)
    start = Checkpoint.load(first).state["nets"]["generator"]
    # the network and grid settings come from the init checkpoint; a near-zero lr keeps the weights near it
    config = resolve_config(
        [("cli", {"init": str(first), "steps": 1, "lr": 1e-12, "device": "cpu", "val_every": 1})], method_class
    )
    assert config.model.to_dict() == Checkpoint.load(first).config["model"] and config.init == str(first)
    train(config, tiny_sim, tmp_path / "tuned", progress=False)
    tuned = Checkpoint.load(tmp_path / "tuned" / "last.pt").state["nets"]["generator"]
    assert all(torch.allclose(start[k], tuned[k], atol=1e-6) for k in start)
    torch.manual_seed(0)
    fresh = train(tiny_config(steps=1, val_every=1, lr=1e-12), tiny_sim, tmp_path / "fresh", progress=False)
    assert not all(
        torch.allclose(start[k], Checkpoint.load(fresh).state["nets"]["generator"][k], atol=1e-6) for k in start
    )


def test_the_simulator_prior_fits_the_default_network_and_is_the_fine_tuning_start(tmp_path):
    prior = Checkpoint.load(builtin.resolve("builtin:sim-flair-t1"))
    default = resolve_config([("cli", {"device": "cpu", "init": "none"})], method_class)  # the recipe alone
    tuned = resolve_config([("cli", {"init": "builtin:sim-flair-t1", "device": "cpu"})], method_class)
    # fine-tuning from the prior changes nothing but the start: the network, patch and grid are today's default
    assert tuned.model == default.model and tuned.patch == default.patch and tuned.preprocess == default.preprocess
    method = method_class(default.method)(default, training=True)
    method.load_state({"nets": prior.state["nets"]}, with_optimizers=False)  # strict: a changed default network fails
    loaded = method.nets["generator"].state_dict()
    assert all(
        torch.equal(loaded[k], v.float()) for k, v in prior.state["nets"]["generator"].items() if v.is_floating_point()
    )
    assert "generator_ema" not in method.nets or torch.equal(
        next(iter(method.nets["generator_ema"].parameters())), next(iter(method.nets["generator"].parameters()))
    )


def test_a_flair_t1_gan3d_run_starts_from_the_prior_unless_told_or_its_network_differs():
    def start(**layer):
        return resolve_config([("cli", {"device": "cpu", **layer})], method_class).init

    assert start() == "builtin:sim-flair-t1"
    assert start(init="none") is None and start(init="None") is None  # --init none: random weights
    assert start(init="builtin:flair-t1") == "builtin:flair-t1"
    assert start(model={"base_channels": 8}) is None and start(model={"upsample": "transposed"}) is None
    assert (
        start(model={"disc_channels": 16, "overlap": 0.5}) == "builtin:sim-flair-t1"
    )  # D and prediction: not the prior's
    assert start(preset="paper") is None and start(method="pix2pix2d") is None
    assert start(source="t1", target="t2") is None


def test_a_tiny_or_noise_volume_gets_one_head_scan_warning_and_no_library_warning(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    tiny = Volume((rng.random((8, 8, 8)) * 100).astype(np.float32), np.eye(4), nib.Nifti1Header(), None)
    noise = Volume(
        (rng.random((96, 96, 96)) * 100).astype(np.float32), np.eye(4) * [1.5, 1.5, 1.5, 1], nib.Nifti1Header(), None
    )
    for volume in (tiny, noise):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # scikit-image's RGB-shape UserWarning once leaked out of an 8x8x8 input
            found = input_warnings(volume, "flair")
        assert len(found) == 1 and "does not look like a head scan" in found[0]
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(tiny.data, np.eye(4)), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "predict",
            "--input",
            str(path),
            "--output",
            str(tmp_path / "t1.nii.gz"),
            "--device",
            "cpu",
        )
    assert code == 0, err
    assert err.count("warning:") == 1 and "does not look like a head scan" in err


@pytest.mark.skipif(not REAL_DEV.is_dir(), reason="needs ../shared/data/real-dev")
@pytest.mark.parametrize("subject", ["brats2018-case1", "ms-patient07"])
def test_real_flairs_and_t1s_get_no_warning(subject):
    """No contrast check (it flagged FLAIRs out of sample, RESULTS.md §13): a real brain MRI of either kind is a
    head."""
    for kind in ("flair", "t1"):
        assert input_warnings(load_volume(REAL_DEV / subject / f"{kind}.nii.gz"), "flair") == []


def test_noise_and_slabs_are_flagged_even_where_a_mask_keeps_part_of_them():
    """The head-scan check looks at the brain's own texture: noise that skull stripping cut to a blob (zero around it)
    is still noise, and a two-slice slab is not a volume, whatever its anatomy."""
    rng = np.random.default_rng(0)
    noise = rng.random((120, 120, 120)).astype(np.float32) * 100
    kept = np.zeros(noise.shape, dtype=bool)
    kept[20:100, 20:100, 20:100] = rng.random((80, 80, 80)) > 0.3  # what a mask keeps of noise: a ragged blob
    blob = Volume(np.where(kept, noise, 0.0).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), nib.Nifti1Header())
    found = input_warnings(blob, "flair")
    assert len(found) == 1 and "does not look like a head scan" in found[0]
    brain = blob_volume((64, 72, 60))
    slab = Volume(brain[:, :, 30:32].copy(), np.diag([1.0, 1.0, 5.0, 1.0]), nib.Nifti1Header())
    assert "2 slice(s)" in input_warnings(slab, "flair")[0]
    assert input_warnings(Volume(brain, np.diag([2.5, 2.5, 2.5, 1.0]), nib.Nifti1Header()), "flair") == []


@pytest.mark.parametrize("strip", ["never", "always"])
def test_predicting_noise_warns_whatever_the_skull_strip_mode(strip, tmp_path, monkeypatch, capsys):
    noise = np.random.default_rng(1).random((96, 96, 64)).astype(np.float32) * 100
    path = tmp_path / "noise.nii.gz"
    nib.save(nib.Nifti1Image(noise, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--input",
        str(path),
        "--output",
        str(tmp_path / "t1.nii.gz"),
        "--skull-strip",
        strip,
    )
    assert code == 0 and "warning:" in err and "does not look like a head scan" in err


def test_the_default_model_gives_the_brains_it_strips_itself_to_its_raw_twin(tmp_path, monkeypatch, caplog):
    """A raw scan that `predict` skull-strips is predicted by builtin:flair-t1-raw (trained for deepbet's looser
    mask); a skull-stripped brain stays with builtin:flair-t1."""
    from modalsynth.data import skullstrip
    from modalsynth.data.skullstrip import SkullStrip

    brain = load_volume(_small_flair(tmp_path / "flair.nii.gz"))
    mask = brain.data > 0
    monkeypatch.setattr(skullstrip, "brain_mask", lambda volume: mask)  # deepbet stand-in: the blob is the brain
    predictor = Predictor.load(None, "cpu")
    assert predictor.check_input and predictor.raw is not None
    assert builtin.spec_of(predictor.raw.origin) == "builtin:flair-t1-raw"
    assert builtin.spec_of(predictor.origin) == "builtin:flair-t1"
    with caplog.at_level("INFO"):
        stripped_here = dataclasses.replace(predictor, skull=SkullStrip("always")).predict_volume(brain)
    assert "predicted by builtin:flair-t1-raw" in caplog.text
    as_given = dataclasses.replace(predictor, skull=SkullStrip("never"))
    by_twin = as_given.for_stripped_brains().predict_volume(brain)  # the blob's outside is 0: stripping keeps it all
    np.testing.assert_array_equal(stripped_here.data, by_twin.data)
    assert np.abs(as_given.predict_volume(brain).data - by_twin.data)[mask].mean() > 1e-3  # two models, not one


@pytest.mark.parametrize("strip", ["always", "never"])
def test_a_folder_prediction_records_and_reports_the_model_that_made_it(tmp_path, monkeypatch, strip):
    """Beside each folder prediction `predict` writes <target>.json naming the model that predicted it (the twin for
    a brain stripped here), and the QC page shows that model, not the one the command was given."""
    import json

    from modalsynth.data import skullstrip
    from modalsynth.data.skullstrip import SkullStrip
    from modalsynth.predict_jobs import predict_path
    from modalsynth.qc_report import model_summary, report_predictions

    (tmp_path / "data" / "s1").mkdir(parents=True)
    brain = load_volume(_small_flair(tmp_path / "data" / "s1" / "flair.nii.gz"))
    monkeypatch.setattr(skullstrip, "brain_mask", lambda volume: brain.data > 0)  # deepbet stand-in
    out = tmp_path / "pred"
    predict_path(None, tmp_path / "data", out, device="cpu", skull=SkullStrip(strip))
    record = json.loads((out / "s1" / "t1.json").read_text())
    made_by = "builtin:flair-t1-raw" if strip == "always" else "builtin:flair-t1"
    assert record["Model"]["Name"] == made_by and record["SkullStrippedHere"] == (strip == "always")
    assert record["Model"]["Sha256"] == builtin.MODELS[made_by.removeprefix("builtin:")].sha256
    assert record["Sources"] == {"flair": str(tmp_path / "data" / "s1" / "flair.nii.gz")}
    report_predictions(out, tmp_path / "data", model=model_summary("builtin:flair-t1"))
    page = (out / "s1.html").read_text()
    assert ("builtin:flair-t1-raw" in page) == (strip == "always")
