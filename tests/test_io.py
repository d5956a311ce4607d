"""NIfTI reading and writing, and the one-line errors for every bad input the foundation issue lists."""

from __future__ import annotations

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from modalsynth.errors import UserError
from modalsynth.io import load_volume, save_array, save_volume

from .conftest import blob_volume


def _write(path, data, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
def test_roundtrip_keeps_data_affine_and_header(tmp_path, name):
    affine = np.array([[-1.2, 0, 0, 90], [0, 0.9, 0.1, -120], [0, 0, 3.0, -60], [0, 0, 0, 1]])
    data = blob_volume()
    src = _write(tmp_path / ("in_" + name), data, affine)
    img = nib.load(str(src), mmap=False)
    img = nib.Nifti1Image(np.asarray(img.dataobj), img.affine, img.header)
    img.header["descrip"] = b"keep me"
    nib.save(img, str(src))
    vol = load_volume(src)
    assert vol.data.dtype == np.float32 and vol.shape == data.shape
    out = save_volume(vol, tmp_path / name)
    again = load_volume(out)
    np.testing.assert_array_equal(again.data, data)
    np.testing.assert_allclose(again.affine, affine, atol=1e-5)
    assert again.header["descrip"].tobytes().startswith(b"keep me")
    assert vol.spacing == pytest.approx((1.2, 0.9, np.hypot(0.1, 3.0)), abs=1e-5)


def test_singleton_fourth_axis_is_accepted(tmp_path):
    vol = load_volume(_write(tmp_path / "a.nii.gz", blob_volume()[..., None]))
    assert vol.shape == (20, 24, 28)


def _message(path, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_volume(path, **kwargs)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_bad_inputs_give_one_line_naming_the_file(tmp_path):
    assert "not found" in _message(tmp_path / "missing.nii.gz")
    (tmp_path / "text.nii.gz").write_text("hello")
    assert "not a readable NIfTI" in _message(tmp_path / "text.nii.gz")
    (tmp_path / "plain.txt").write_text("hello")
    assert "NIfTI" in _message(tmp_path / "plain.txt")
    good = _write(tmp_path / "good.nii.gz", blob_volume((30, 30, 30)))
    raw = good.read_bytes()
    (tmp_path / "trunc.nii.gz").write_bytes(raw[: len(raw) // 2])
    assert "corrupt or truncated" in _message(tmp_path / "trunc.nii.gz")
    assert "4D" in _message(_write(tmp_path / "four.nii.gz", np.ones((4, 4, 4, 3))))
    assert "not a 3D volume" in _message(_write(tmp_path / "flat.nii.gz", np.ones((8, 8))))
    nan = blob_volume()
    nan[3, 3, 3] = np.nan
    nan[4, 4, 4] = np.inf
    assert "2 voxel(s) are NaN or Inf" in _message(_write(tmp_path / "nan.nii.gz", nan))
    assert "every voxel has the value 7" in _message(_write(tmp_path / "const.nii.gz", np.full((5, 5, 5), 7.0)))
    assert load_volume(tmp_path / "const.nii.gz", allow_constant=True).data.max() == 7.0


def test_header_checks_need_no_voxel_read(tmp_path):
    """What the header alone shows is refused by `read_header` (the cheap check every pair gets), one line each."""
    from modalsynth.io import read_header

    plain = _write(tmp_path / "plain.nii", blob_volume((30, 30, 30)))
    raw = plain.read_bytes()
    (tmp_path / "cut.nii").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(UserError, match=r"cut.nii: the header describes \d+ bytes .* holds \d+; the file is truncated"):
        read_header(tmp_path / "cut.nii")
    with pytest.raises(UserError, match="complex-valued voxels .complex64.; save the magnitude"):
        read_header(_write(tmp_path / "c.nii.gz", blob_volume().astype(np.complex64)))
    flat = np.eye(4)
    flat[:3, 2] = flat[:3, 0]
    with pytest.raises(UserError, match="affine .* singular"):
        read_header(_write(tmp_path / "flat.nii.gz", blob_volume(), flat))
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(UserError, match="broken symbolic link"):
        read_header(tmp_path / "dangling.nii.gz")
    (tmp_path / "loop.nii.gz").symlink_to("loop.nii.gz")
    with pytest.raises(UserError, match="loops back on itself"):
        read_header(tmp_path / "loop.nii.gz")


def test_zero_voxel_size_is_refused_without_nibabel_noise(tmp_path, capfd):
    img = nib.Nifti1Image(blob_volume(), None)
    img.header.set_sform(None, code=0)
    img.header.set_qform(None, code=0)
    nib.save(img, str(tmp_path / "z.nii"))
    raw = bytearray((tmp_path / "z.nii").read_bytes())
    raw[76 + 4 : 76 + 8] = np.float32(0).tobytes()  # pixdim[1] = 0
    (tmp_path / "z.nii").write_bytes(bytes(raw))
    assert "voxel sizes (0.0, 1.0, 1.0)" in _message(tmp_path / "z.nii")
    assert capfd.readouterr().err == ""  # nibabel's 'setting 0 dims to 1' stays off stderr
    assert not nib.imageglobals.logger.disabled


def test_corrupt_gzip_body(tmp_path):
    good = _write(tmp_path / "good.nii", blob_volume((30, 30, 30)))
    payload = bytearray(gzip.compress(good.read_bytes()))
    payload[len(payload) // 2 : len(payload) // 2 + 64] = b"\x00" * 64
    (tmp_path / "bad.nii.gz").write_bytes(bytes(payload))
    assert "corrupt" in _message(tmp_path / "bad.nii.gz") or "not a readable" in _message(tmp_path / "bad.nii.gz")


def test_save_is_atomic_and_writes_labels_as_integers(tmp_path):
    path = save_array((blob_volume() > 0), np.eye(4), tmp_path / "sub" / "mask.nii.gz", dtype=np.uint8)
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    assert [p.name for p in path.parent.iterdir()] == ["mask.nii.gz"]
    with pytest.raises(UserError):
        save_array(blob_volume(), np.eye(4), tmp_path / "x.png")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    bad = _write(tmp_path / "four.nii.gz", np.ones((4, 4, 4, 2)))
    run = subprocess.run([sys.executable, "-m", "modalsynth.cli", "inspect", str(bad)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "four.nii.gz" in run.stderr and "Traceback" not in run.stderr
