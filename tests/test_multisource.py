"""Several input sequences: the network input, source dropout, the simulator's T2/PD, training and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modalsynth.data.cache import CacheSettings, build_cache, open_subjects, read_manifest
from modalsynth.data.pairs import find_pairs
from modalsynth.data.preprocess import PreprocessConfig
from modalsynth.data.simulate import simulate_dataset, simulate_subject
from modalsynth.errors import UserError
from modalsynth.inference import Predictor
from modalsynth.io import load_volume, save_array
from modalsynth.methods.sources import draw_presence, input_channels, network_input

from .conftest import TINY_GRID, TINY_MODEL, tiny_config
from .test_settings import run_cli


@pytest.fixture(scope="module")
def tiny_multi(tmp_path_factory):
    """Four simulated subjects with FLAIR, T1 and T2 on the tiny grid."""
    root = tmp_path_factory.mktemp("tiny-multi")
    simulate_dataset(root, subjects=4, seed=3, grid=TINY_GRID, sequences=("flair", "t1", "t2"))
    return root


@pytest.fixture(scope="module")
def multi_run(tiny_multi, tmp_path_factory):
    """A 3-step gan3d run on FLAIR + T2 -> T1, started as a user does: `modalsynth train --source flair,t2`."""
    import yaml
    from typer.testing import CliRunner

    from modalsynth.cli import app

    from .conftest import TINY_MODEL

    out = tmp_path_factory.mktemp("multi-run")
    settings = out.parent / f"{out.name}.yaml"
    settings.write_text(yaml.safe_dump({"model": TINY_MODEL, "patch": None, "log_every": 1000}))
    result = CliRunner().invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_multi),
            "--source",
            "flair,t2",
            "--target",
            "t1",
            "--out",
            str(out),
            "--steps",
            "3",
            "--grid",
            "x".join(map(str, TINY_GRID)),
            "--holdout",
            "none",
            "--device",
            "cpu",
            "--config",
            str(settings),
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def test_network_input_zeroes_missing_sources_and_appends_presence_flags():
    sources = torch.rand(2, 3, 4, 5, 6) + 1.0
    present = torch.tensor([[True, False, True], [False, False, True]])
    x = network_input(sources, present)
    assert x.shape == (2, 6, 4, 5, 6) and input_channels(3) == 6
    for n in range(2):
        for s in range(3):
            assert torch.equal(x[n, s], sources[n, s] if present[n, s] else torch.zeros(4, 5, 6))
            assert torch.all(x[n, 3 + s] == float(present[n, s]))
    one = torch.rand(1, 1, 4, 5, 6)
    assert network_input(one) is one and input_channels(1) == 1  # single-source models keep one channel


def test_source_dropout_keeps_at_least_one_and_drops_at_the_asked_rate():
    present = draw_presence(20000, 2, 0.3, torch.Generator().manual_seed(0))
    assert present.any(dim=1).all()
    # each dropped with 0.3, but both dropped (0.09) is turned into one kept: P(dropped) = 0.3 - 0.09 / 2
    assert abs(float((~present).float().mean()) - 0.255) < 0.01
    assert draw_presence(50, 3, 0.0, torch.Generator()).all()


def test_source_dropout_never_turns_on_a_source_an_example_lacks():
    available = torch.tensor([[True, False], [False, True], [True, True]]).repeat(2000, 1)
    present = draw_presence(6000, 2, 0.3, torch.Generator().manual_seed(1), available)
    assert not (present & ~available).any() and present.any(dim=1).all()
    assert present[0::3, 0].all() and present[1::3, 1].all()  # a lone source is always kept
    both = present[2::3]
    assert abs(float((~both).float().mean()) - 0.255) < 0.02  # the usual rate where both are there


def test_simulator_t2_and_pd_come_from_the_same_tissues_and_leave_flair_t1_unchanged():
    plain = simulate_subject(5, TINY_GRID)
    more = simulate_subject(5, TINY_GRID, sequences=("flair", "t1", "t2", "pd"))
    assert np.array_equal(plain.flair, more.flair) and np.array_equal(plain.t1, more.t1)
    labels = more.labels
    t2, pd = more.more["t2"], more.more["pd"]
    # T2-weighted: CSF brightest, then grey, then white matter; proton density: grey above white matter, and CSF far
    # less bright than on T2 (its long T1 is not recovered at a PD's TR)
    assert np.median(t2[labels == 1]) > np.median(t2[labels == 2]) > np.median(t2[labels == 3])
    assert np.median(pd[labels == 2]) > np.median(pd[labels == 3])
    assert np.median(t2[labels == 1]) / np.median(t2[labels == 3]) > np.median(pd[labels == 1]) / np.median(
        pd[labels == 3]
    )
    with pytest.raises(UserError, match="t1ce"):
        simulate_subject(5, TINY_GRID, sequences=("flair", "t1", "t1ce"))


def test_pairs_and_cache_hold_one_channel_per_source(tiny_multi, tmp_path):
    pairs = find_pairs(tiny_multi, "flair,t2", "t1").pairs
    assert len(pairs) == 4 and all(p.sources[1].name == "t2.nii.gz" for p in pairs)
    settings = CacheSettings("flair,t2", "t1", False, PreprocessConfig(grid=TINY_GRID))
    manifest = build_cache(pairs, settings, tmp_path / "cache", workers=1, progress=False)
    subject = open_subjects(tmp_path / "cache", manifest, [pairs[0].subject])[0]
    assert subject.source.shape == (2, *TINY_GRID)
    flair, t2 = (np.asarray(a, np.float32) for a in subject.source)
    assert np.corrcoef(flair.ravel(), t2.ravel())[0, 1] < 0.99  # two different images, not one copied
    assert set(read_manifest(tmp_path / "cache")["subjects"][pairs[0].subject]["files"]) == {
        "source",
        "source1",
        "target",
    }


@pytest.fixture(scope="module")
def partly_t2(tiny_multi, tmp_path_factory):
    """tiny_multi with the T2 of two of its four subjects removed."""
    import shutil

    root = tmp_path_factory.mktemp("partly-t2")
    for k, subject in enumerate(sorted(p for p in tiny_multi.iterdir() if p.is_dir())):
        shutil.copytree(subject, root / subject.name)
        if k < 2:
            (root / subject.name / "t2.nii.gz").unlink()
    return root


def test_subjects_without_a_later_source_train_with_it_absent(partly_t2, tmp_path, monkeypatch, capsys, caplog):
    from modalsynth.data.datasets import make_batch

    assert len(find_pairs(partly_t2, "flair,t2", "t1").problems) == 2  # prediction-style pairing still asks for both
    pairs = find_pairs(partly_t2, "flair,t2", "t1", optional_sources=True).pairs
    assert [p.sources[1] is None for p in pairs] == [True, True, False, False]
    assert len(find_pairs(partly_t2, "t2,flair", "t1", optional_sources=True).problems) == 2  # the first is required
    settings = CacheSettings("flair,t2", "t1", False, PreprocessConfig(grid=TINY_GRID))
    manifest = build_cache(pairs, settings, tmp_path / "cache", workers=1, progress=False)
    subjects = open_subjects(tmp_path / "cache", manifest, [p.subject for p in pairs])
    assert [s.present for s in subjects] == [(True, False), (True, False), (), ()]
    assert np.all(np.asarray(subjects[0].source[1]) == -1.0) and subjects[0].load().present == (True, False)
    batch = make_batch(subjects, [0, 2], None, "none", torch.Generator().manual_seed(0))
    assert batch["present"].tolist() == [[True, False], [True, True]]

    import yaml

    out, settings = tmp_path / "run", tmp_path / "tiny.yaml"
    settings.write_text(yaml.safe_dump({"model": TINY_MODEL, "patch": None, "log_every": 1000}))
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        *("--data", str(partly_t2), "--source", "flair,t2", "--target", "t1", "--out", str(out)),
        *("--steps", "2", "--grid", "x".join(map(str, TINY_GRID)), "--holdout", "none", "--device", "cpu"),
        *("--workers", "0", "--config", str(settings)),
    )
    assert code == 0, err
    assert "2 of 4 subject(s) have no t2" in caplog.text
    assert (out / "last.pt").is_file()


def test_a_source_on_another_grid_is_a_problem_naming_both_files(tiny_multi, tmp_path):
    import shutil

    folder = tmp_path / "s"
    shutil.copytree(tiny_multi / "sim-000", folder)
    t2 = load_volume(folder / "t2.nii.gz")
    save_array(t2.data[:, :, :-2], t2.affine, folder / "t2.nii.gz")
    problem = find_pairs(tmp_path, "flair,t2", "t1").problems["s"]
    assert "t2.nii.gz" in problem and "flair.nii.gz" in problem and "register" in problem


def test_bad_source_lists_are_one_line_errors():
    with pytest.raises(UserError, match="distinct"):
        tiny_config(source="flair,flair")
    with pytest.raises(UserError, match="target and one of the sources"):
        tiny_config(source="flair,t1")
    with pytest.raises(UserError, match="takes one source"):
        tiny_config(source="flair,t2", method="lut", model={})
    assert tiny_config(source="FLAIR, T2w").source == "flair,t2"


def test_a_multi_source_model_predicts_from_any_subset_and_says_which(
    multi_run, tiny_multi, tmp_path, monkeypatch, capsys
):
    predictor = Predictor.from_checkpoint(multi_run / "best.pt", "cpu")
    assert predictor.config.sources == ("flair", "t2")
    assert predictor.method.nets["generator"].in_channels == 4
    volumes = {name: load_volume(tiny_multi / "sim-000" / f"{name}.nii.gz") for name in ("flair", "t2")}
    both = predictor.predict_sources(volumes).data
    flair_only = predictor.predict_sources({"flair": volumes["flair"]}).data
    t2_only = predictor.predict_sources({"t2": volumes["t2"]}).data
    assert both.shape == flair_only.shape == t2_only.shape == volumes["flair"].shape
    assert not np.allclose(both, flair_only) and not np.allclose(both, t2_only)

    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_run / "best.pt"),
        "--input",
        str(tiny_multi),
        "--output",
        str(tmp_path / "both"),
        "--device",
        "cpu",
    )
    assert code == 0 and "predicting from flair+t2 (4 subject(s))" in out
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_run / "best.pt"),
        "--input",
        str(tiny_multi),
        "--output",
        str(tmp_path / "flair"),
        "--device",
        "cpu",
        "--source",
        "flair",
    )
    assert code == 0 and "predicting from flair (4 subject(s))" in out
    np.testing.assert_allclose(load_volume(tmp_path / "flair" / "sim-000" / "t1.nii.gz").data, flair_only, atol=1e-4)
    np.testing.assert_allclose(load_volume(tmp_path / "both" / "sim-000" / "t1.nii.gz").data, both, atol=1e-4)
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_run / "best.pt"),
        "--input",
        str(tiny_multi / "sim-001" / "t2.nii.gz"),
        "--output",
        str(tmp_path / "one.nii.gz"),
        "--device",
        "cpu",
        "--source",
        "t2",
    )
    assert code == 0 and "from t2 only" in out
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_run / "best.pt"),
        "--input",
        str(tiny_multi),
        "--output",
        str(tmp_path / "pd"),
        "--device",
        "cpu",
        "--source",
        "pd",
    )
    assert code == 2 and "takes flair,t2" in err and len(err.strip().splitlines()) == 1


def test_single_source_models_keep_one_input_channel(tiny_sim):
    from modalsynth.methods import build_method

    method = build_method(tiny_config())
    assert method.nets["generator"].in_channels == 1 and method.nets["discriminator"].in_channels == 2


def test_a_multi_source_model_exports_to_onnx_with_its_channels(multi_run, tiny_multi, tmp_path):
    pytest.importorskip("onnxruntime")
    from modalsynth.export import export_onnx, onnx_predictor

    predictor = Predictor.from_checkpoint(multi_run / "best.pt", "cpu").with_inference(precision="float32")
    export_onnx(predictor, tmp_path / "m.onnx")
    exported = onnx_predictor(tmp_path / "m.onnx")
    assert exported.method.input_channels == 4
    volumes = {name: load_volume(tiny_multi / "sim-002" / f"{name}.nii.gz") for name in ("flair", "t2")}
    for given in ({"flair": volumes["flair"]}, volumes):
        reference = predictor.predict_sources(given).data
        np.testing.assert_allclose(
            exported.predict_sources(given).data, reference, atol=1e-3 * float(np.ptp(reference))
        )


def test_the_benchmark_runs_a_multi_source_model(tiny_multi, tmp_path):
    import yaml

    from modalsynth.benchmark import BenchmarkPlan, run_benchmark

    from .conftest import TINY_MODEL

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"gan3d": {"model": TINY_MODEL}}))
    plan = BenchmarkPlan(
        methods=("gan3d",),
        source="flair,t2",
        steps=2,
        grid=TINY_GRID,
        device="cpu",
        fid=False,
        config=config,
        timing_repeats=1,
    )
    table = run_benchmark(tiny_multi, tmp_path / "bench", plan)
    assert table["source"] == "flair,t2" and 0 < table["rows"][0]["metrics"]["ssim_brain"]["mean"] <= 1
    assert (tmp_path / "bench" / "figure4_axial.png").stat().st_size > 1000


def test_sources_on_different_grids_are_refused_before_anything_runs(
    multi_run, tiny_multi, tmp_path, monkeypatch, capsys
):
    import shutil

    folder = tmp_path / "data" / "s"
    shutil.copytree(tiny_multi / "sim-000", folder)
    t2 = load_volume(folder / "t2.nii.gz")
    save_array(t2.data[:, :, :-2], t2.affine, folder / "t2.nii.gz")
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "predict",
        "--checkpoint",
        str(multi_run / "best.pt"),
        "--input",
        str(tmp_path / "data"),
        "--output",
        str(tmp_path / "out"),
        "--device",
        "cpu",
        "--skull-strip",
        "always",
    )
    assert code == 2 and "t2.nii.gz" in err and "flair.nii.gz" in err and "register the sequences" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out" / "s").exists()
    with pytest.raises(UserError, match="register the sequences"):  # the library call checks too, before stripping
        Predictor.from_checkpoint(multi_run / "best.pt", "cpu").predict_sources(
            {name: load_volume(folder / f"{name}.nii.gz") for name in ("flair", "t2")}
        )


@pytest.mark.parametrize("method,stem", [("gan3d", "residual"), ("gan3d", "strided"), ("pix2pix2d", "residual")])
def test_a_single_source_model_starts_a_multi_source_one_that_computes_the_same(method, stem):
    from modalsynth.methods import build_method

    torch.manual_seed(0)
    model = {**TINY_MODEL, "stem": stem, "full_res_channels": 4 if stem == "strided" else None}
    single = build_method(tiny_config(method=method, model=model))
    multi = build_method(tiny_config(method=method, model=model, source="t2,flair"))  # flair is the second channel
    multi.load_init_weights(single.state()["nets"], ("flair",))
    shape = (2, 1, *TINY_GRID) if method == "gan3d" else (2, 1, *TINY_GRID[1:])
    flair, t2, target = torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1, torch.rand(shape) * 2 - 1
    both = network_input(torch.cat([t2, flair], dim=1))
    with torch.no_grad():
        for name in ("generator", "discriminator"):
            single_net, multi_net = single.nets[name].eval(), multi.nets[name].eval()
            args = ((flair,), (both,)) if name == "generator" else ((flair, target), (both, target))
            torch.testing.assert_close(multi_net(*args[1]), single_net(*args[0]), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(
            multi.nets["generator"](network_input(torch.cat([t2, -flair], dim=1))), single.nets["generator"](flair)
        )  # the FLAIR channel is read, not ignored


def test_a_multi_source_run_starts_from_the_prior_of_one_of_its_sources():
    from modalsynth.config import resolve_config
    from modalsynth.methods import method_class

    config = resolve_config([("the test", {"source": "t2,flair", "target": "t1"})], method_class)
    assert config.init == "builtin:sim-flair-t1" and config.sources == ("t2", "flair")
    assert resolve_config([("t", {"source": "t2,pd", "target": "t1"})], method_class).init is None
    with pytest.raises(
        UserError, match=r"--init builtin:sim-flair-t1: that model maps flair -> t1, but --source t2,pd"
    ):
        resolve_config([("t", {"source": "t2,pd", "target": "t1", "init": "builtin:sim-flair-t1"})], method_class)


def test_2d_slices_repeat_each_volumes_presence_flags():
    from modalsynth.methods.slices import sample_axial_slices

    mask = torch.zeros(2, 1, 6, 4, 4)
    mask[:, :, 2:5] = 1
    batch = {"source": torch.rand(2, 2, 6, 4, 4), "mask": mask, "present": torch.tensor([[True, False], [True, True]])}
    sliced = sample_axial_slices(batch, 3, torch.Generator().manual_seed(0))
    assert sliced["source"].shape == (6, 2, 4, 4) and sliced["mask"].all()
    assert sliced["present"].tolist() == [[True, False]] * 3 + [[True, True]] * 3
