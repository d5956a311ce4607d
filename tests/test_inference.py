"""Volume -> volume inference: sliding windows, slice loops, and `modalsynth predict` on files and folders."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from modalsynth.data.pairs import discover_subjects
from modalsynth.errors import UserError
from modalsynth.inferers import SliceInferer, SlidingWindowInferer, spread_overlaps
from modalsynth.io import load_volume
from modalsynth.predict_jobs import predict_path
from modalsynth.runtime import resolve_device
from modalsynth.threads import split_across_threads
from modalsynth.training import train

from .conftest import tiny_config


def test_sliding_window_of_a_pointwise_net_equals_whole_volume():
    net = torch.nn.Conv3d(1, 1, 1)
    volume = torch.randn(1, 1, 20, 36, 28)
    with torch.no_grad():
        whole = net(volume)
    windowed = SlidingWindowInferer(window=(8, 16, 16), overlap=0.5, windows_per_batch=1, sigma=0.125)(net, volume)
    assert windowed.shape == volume.shape
    torch.testing.assert_close(windowed, whole, atol=1e-5, rtol=1e-5)


def test_split_across_threads_runs_chunks_on_one_thread_each_and_matches_the_plain_call():
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4), torch.nn.Conv3d(4, 1, 1)
    )
    seen: list[tuple[int, int]] = []  # (items in the call, torch threads inside it)

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append((x.shape[0], torch.get_num_threads()))
        return conv(x)

    batch = torch.randn(5, 1, 12, 12, 12)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            expected = conv(batch)
        out = split_across_threads(net)(batch)
        assert torch.get_num_threads() == 2  # the caller's thread count is given back
        assert sorted(seen) == [(2, 1), (3, 1)]  # two chunks, one thread each
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        seen.clear()
        torch.set_num_threads(4)
        split_across_threads(net)(batch[:4])
        assert seen == [(2, 2), (2, 2)]  # chunks of two items at least, each with its share of the threads
        seen.clear()
        split_across_threads(net)(batch[:3])
        assert seen == [(3, 4)]  # not two chunks of two: the plain call
        seen.clear()
        torch.set_num_threads(1)
        split_across_threads(net)(batch)
        assert seen == [(5, 1)]  # one thread: the plain call
    finally:
        torch.set_num_threads(before)


def test_slice_loop_applies_the_2d_net_to_every_axial_slice():
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    volume = torch.randn(1, 1, 7, 12, 10)
    out = SliceInferer(slices_per_batch=3)(net, volume)
    with torch.no_grad():
        expected = torch.stack([net(volume[:, :, d]) for d in range(7)], dim=2)
    torch.testing.assert_close(out, expected)


def test_cuda_request_without_cuda_is_a_user_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")


def test_predict_folder_and_file_keep_the_input_grid(tiny_sim, tmp_path):
    best = train(tiny_config(steps=2, patch=(16, 32, 32)), tiny_sim, tmp_path / "run", progress=False)
    written = predict_path(best, tiny_sim, tmp_path / "pred", device="cpu", split="test")
    test_subjects = json.loads((tmp_path / "run" / "split.json").read_text())["test"]
    assert sorted(p.parent.name for p in written) == test_subjects and len(test_subjects) < len(
        discover_subjects(tiny_sim)
    )
    for path in written:
        pred, src = load_volume(path), load_volume(tiny_sim / path.parent.name / "flair.nii.gz")
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
    single = tmp_path / "one.nii.gz"
    predict_path(best, tiny_sim / "sim-000" / "flair.nii.gz", single, device="cpu")
    assert load_volume(single).shape == load_volume(tiny_sim / "sim-000" / "t1.nii.gz").shape
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "modalsynth",
            "predict",
            "--checkpoint",
            str(tmp_path / "nope.pt"),
            "--input",
            str(single),
            "--output",
            str(single),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "nope.pt: checkpoint not found" in run.stderr


@pytest.mark.parametrize("shape", [(144, 176, 144), (96, 200, 64), (65, 130, 250)])
def test_spread_windows_are_as_many_as_monais_and_evenly_spaced(shape):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    roi = (64, 64, 64)
    packed = dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, 3, (0.25,) * 3))
    overlaps = spread_overlaps(shape, roi, 0.25)
    spread = dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, 3, overlaps))
    assert len(spread) == len(packed)  # no more work
    for axis, size in enumerate(shape):
        starts = sorted({s[axis].start for s in spread})
        steps = np.diff(starts)
        if size > 64:
            assert starts[0] == 0 and starts[-1] == size - 64  # the axis is covered edge to edge
            assert steps.max() - steps.min() <= 1 + (size - 64) % max(len(steps), 1)  # even, bar the last clamp
            assert overlaps[axis] >= 0.25 - 1e-9  # never less overlap than asked


def test_sliding_window_blend_width_changes_the_result_not_the_shape():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 1, 3, padding=1)
    source = torch.rand(1, 1, 40, 40, 40)
    narrow = SlidingWindowInferer(window=(16, 16, 16), overlap=0.25, windows_per_batch=4, sigma=0.125)(net, source)
    wide = SlidingWindowInferer(window=(16, 16, 16), overlap=0.25, windows_per_batch=4, sigma=0.25)(net, source)
    assert narrow.shape == wide.shape == source.shape
    # a translation-equivariant net's windows agree away from their borders, so both blends are close, not equal
    assert 0 < float((narrow - wide).abs().max()) < 0.2
