"""`modalsynth export --onnx` and `modalsynth predict --onnx`: the ONNX file predicts what the checkpoint predicts."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from modalsynth.cli import app  # noqa: E402
from modalsynth.export import export_onnx, onnx_predictor  # noqa: E402
from modalsynth.inference import Predictor  # noqa: E402
from modalsynth.io import load_volume  # noqa: E402
from modalsynth.training import train  # noqa: E402

from .conftest import tiny_config  # noqa: E402

#: the largest difference allowed between ONNX Runtime's and PyTorch's float32 output, as a fraction of the output's
#: range (both run the same float32 graph; only the order of float additions differs)
ONNX_TOLERANCE = 1e-4


@pytest.mark.slow
def test_onnx_export_predicts_what_pytorch_predicts_with_the_contract_in_its_metadata(tiny_sim, tmp_path):
    config = tiny_config(steps=2, patch=(16, 32, 32), inference={"window": [16, 32, 32], "overlap": 0.4})
    best = train(config, tiny_sim, tmp_path / "run", progress=False)
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(best), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    contract = json.loads(meta["modalsynth.contract"])
    assert contract["source"] == "flair" and contract["windows"]["size"] == [16, 32, 32]
    assert contract["intensity_in"]["percentiles"] == [0.5, 99.5] and "RAS" in contract["orientation"]

    source = load_volume(tiny_sim / "sim-000" / "flair.nii.gz")
    torch_predictor = Predictor.from_checkpoint(best, "cpu").with_inference(precision="float32")  # the file is float32
    reference = torch_predictor.predict_volume(source).data
    exported = onnx_predictor(tmp_path / "m.onnx").predict_volume(source).data
    difference = float(np.abs(exported - reference).max())
    assert exported.shape == reference.shape and np.ptp(reference) > 0
    assert difference <= ONNX_TOLERANCE * float(np.ptp(reference))

    out = tmp_path / "t1.nii.gz"
    result = CliRunner().invoke(
        app,
        [
            "predict",
            "--onnx",
            str(tmp_path / "m.onnx"),
            "--input",
            str(tiny_sim / "sim-000" / "flair.nii.gz"),
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert np.array_equal(load_volume(out).data, exported)


@pytest.mark.slow
def test_a_builtin_exports_with_its_twin_for_raw_scans_which_predict_onnx_uses(tmp_path, monkeypatch):
    """`export` of builtin:flair-t1 writes its raw-scan twin beside it; `predict --onnx` gives the brains it strips
    itself to the twin, as `predict` does, and names it in the folder's records; without its twin a file is refused."""
    from modalsynth.data import skullstrip
    from modalsynth.errors import UserError

    from .conftest import blob_volume

    (tmp_path / "data" / "s1").mkdir(parents=True)
    flair = tmp_path / "data" / "s1" / "flair.nii.gz"
    nib.save(nib.Nifti1Image(blob_volume((40, 48, 40)), np.eye(4)), str(flair))
    monkeypatch.setattr(skullstrip, "brain_mask", lambda volume: volume.data > 0)  # deepbet stand-in
    model = tmp_path / "flair-t1.onnx"
    result = CliRunner().invoke(app, ["export", "--onnx", str(model)])
    assert result.exit_code == 0, result.output
    twin = tmp_path / "flair-t1-raw.onnx"
    meta = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    assert twin.is_file() and meta["modalsynth.raw_twin"] == twin.name
    loaded = onnx_predictor(model)
    assert loaded.raw is not None and loaded.raw.origin == twin
    for strip, made_by in (("always", twin), ("never", model)):
        out = tmp_path / f"pred-{strip}"
        args = ["predict", "--onnx", str(model), "--input", str(tmp_path / "data"), "--output", str(out)]
        result = CliRunner().invoke(app, [*args, "--skull-strip", strip])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "s1" / "t1.json").read_text())
        assert record["Model"]["Name"] == str(made_by)
    by_twin = onnx_predictor(twin).predict_volume(load_volume(flair)).data
    assert np.array_equal(load_volume(tmp_path / "pred-always" / "s1" / "t1.nii.gz").data, by_twin)
    twin.unlink()
    with pytest.raises(UserError, match="flair-t1-raw.onnx, is not beside it"):
        onnx_predictor(model)


def test_onnx_export_refuses_a_model_without_fixed_windows(tmp_path):
    from modalsynth.data.preprocess import IntensityRecord
    from modalsynth.errors import UserError
    from modalsynth.methods import build_method

    config = tiny_config(inference={"window": "volume"})
    predictor = Predictor(build_method(config, training=False), config, IntensityRecord(0.0, 1.0), config.inference)
    with pytest.raises(UserError, match="fixed windows"):
        export_onnx(predictor, tmp_path / "m.onnx")


def test_predict_onnx_on_a_file_that_is_not_onnx_is_a_user_error(tmp_path):
    from modalsynth.errors import UserError

    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(
        app, ["predict", "--onnx", str(bad), "--input", str(bad), "--output", str(tmp_path / "o.nii.gz")]
    )
    assert isinstance(result.exception, UserError) and "not a readable ONNX model" in str(result.exception)
