"""The preprocessed-array cache and the streamed batches: rebuilt when its inputs or settings change, never trusted
when damaged or half-written, and the batch of step k the same for any number of loader workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from modalsynth.data.cache import CacheSettings, build_cache, open_subjects, read_manifest
from modalsynth.data.datasets import prepare_pair
from modalsynth.data.pairs import require_pairs
from modalsynth.data.preprocess import PreprocessConfig
from modalsynth.data.stream import BatchPlan, StepBatches, stream_batches
from modalsynth.errors import UserError

from .conftest import TINY_GRID

SETTINGS = CacheSettings("flair", "t1", False, PreprocessConfig(grid=TINY_GRID))


def _data(tiny_sim, tmp_path, count=3):
    data = tmp_path / "data"
    for folder in sorted(p for p in tiny_sim.iterdir() if p.is_dir())[:count]:
        shutil.copytree(folder, data / folder.name)
    return data


def _stamps(cache):
    return {p.relative_to(cache): p.stat().st_mtime_ns for p in cache.glob("subjects/*/*.npy")}


def test_cache_holds_float16_arrays_within_half_a_step_and_rebuilds_only_what_changed(tiny_sim, tmp_path, capsys):
    data, cache = _data(tiny_sim, tmp_path), tmp_path / "cache"
    pairs = require_pairs(data, "flair", "t1")
    build_cache(pairs, SETTINGS, cache, workers=2, progress=False)
    subject = open_subjects(cache, read_manifest(cache), [pairs[0].subject])[0]
    reference = prepare_pair(pairs[0], SETTINGS.preprocess)
    # float16 keeps 11 significant bits: in [-1, 1] an error of at most 2**-11 (half a step at 1.0)
    assert np.abs(subject.source.astype(np.float32) - reference.source).max() <= 2**-11
    assert np.array_equal(subject.mask, reference.mask) and subject.grid == reference.grid
    first = _stamps(cache)
    assert len(first) == 9
    os.utime(pairs[1].sources[0])  # a new mtime, the same content: hashed, found unchanged, not rebuilt
    build_cache(pairs, SETTINGS, cache, progress=False)
    assert _stamps(cache) == first
    entry = read_manifest(cache)["subjects"][pairs[1].subject]["files"]["source"]
    assert entry["mtime_ns"] == os.stat(pairs[1].sources[0]).st_mtime_ns  # the new stat is recorded
    shutil.copy(pairs[2].sources[0], pairs[0].sources[0])  # other content: that subject alone is rebuilt
    capsys.readouterr()
    build_cache(pairs, SETTINGS, cache, progress=False)
    assert "1 subject(s) changed" in capsys.readouterr().err
    now = _stamps(cache)
    assert {k for k in now if now[k] != first[k]} == {k for k in first if k.parts[1] == pairs[0].subject}
    other = CacheSettings("flair", "t1", False, PreprocessConfig(grid=(16, 48, 48)))
    build_cache(pairs, other, cache, progress=False)
    err = capsys.readouterr().err
    assert "other settings (preprocess); rebuilding" in err and len(err.strip().splitlines()) == 1
    assert open_subjects(cache, read_manifest(cache), [pairs[1].subject])[0].shape == (16, 48, 48)


def test_repeated_volumes_under_new_names_are_separate_entries(tiny_sim, tmp_path):
    data = _data(tiny_sim, tmp_path, count=1)
    shutil.copytree(next(data.iterdir()), data / "again")
    pairs = require_pairs(data, "flair", "t1")
    manifest = build_cache(pairs, SETTINGS, tmp_path / "cache", progress=False)
    assert sorted(manifest["subjects"]) == sorted(p.subject for p in pairs) and len(pairs) == 2
    assert len(list((tmp_path / "cache" / "subjects").iterdir())) == 2


def test_an_interrupted_build_counts_only_finished_entries(tiny_sim, tmp_path):
    data, cache = _data(tiny_sim, tmp_path), tmp_path / "cache"
    pairs = require_pairs(data, "flair", "t1")
    broken = pairs[1].target
    good = broken.read_bytes()
    broken.write_bytes(good[:200])  # this subject's preprocessing fails part-way through the build
    with pytest.raises(UserError):  # the truncated file is named, the build stops
        build_cache(pairs, SETTINGS, cache, workers=1, progress=False)
    assert pairs[1].subject not in read_manifest(cache)["subjects"]
    broken.write_bytes(good)
    build_cache(pairs, SETTINGS, cache, progress=False)
    assert set(read_manifest(cache)["subjects"]) == {p.subject for p in pairs}
    assert not list((cache / "subjects").glob(".tmp-*"))


def test_a_corrupt_entry_is_one_line_naming_it_and_exit_2(tiny_sim, tmp_path):
    data, cache = _data(tiny_sim, tmp_path), tmp_path / "cache"
    build_cache(require_pairs(data, "flair", "t1"), SETTINGS, cache, progress=False)
    damaged = next(cache.glob("subjects/*/target.npy"))
    damaged.write_bytes(damaged.read_bytes()[:500])
    with pytest.raises(UserError, match="corrupt cache entry"):
        open_subjects(cache, read_manifest(cache), [damaged.parent.name])[0].check()
    grid = [str(g) for g in TINY_GRID]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "modalsynth",
            "train",
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--cache",
            str(cache),
            "--grid",
            *grid,
            "--method",
            "lut",
            "--holdout",
            "none",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(damaged) in lines[0] and f"delete {damaged.parent}" in lines[0], lines


def test_the_batch_of_step_k_is_the_same_for_0_and_2_workers_and_after_a_resume(tiny_sim, tmp_path):
    data, cache = _data(tiny_sim, tmp_path), tmp_path / "cache"
    pairs = require_pairs(data, "flair", "t1")
    manifest = build_cache(pairs, SETTINGS, cache, progress=False)
    subjects = open_subjects(cache, manifest, [p.subject for p in pairs])
    batches = StepBatches(subjects, BatchPlan(seed=3, rank=0, world=1, batch_size=2, patch=(8, 16, 16), augment="mri"))

    def take(start, workers, count):
        stream = stream_batches(batches, start, workers, pin_memory=False)
        return [next(stream) for _ in range(count)]

    serial, parallel, resumed = take(0, 0, 6), take(0, 2, 6), take(4, 2, 2)
    for a, b in zip(serial, parallel):
        assert all(torch.equal(a[k], b[k]) for k in a)
    for a, b in zip(serial[4:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(serial[0]["source"], serial[1]["source"])  # the steps really differ


def test_a_cache_of_an_older_format_is_rebuilt_by_prepare_and_refused_when_read_directly(tiny_sim, tmp_path, capsys):
    import json

    data, cache = _data(tiny_sim, tmp_path, count=2), tmp_path / "cache"
    pairs = require_pairs(data, "flair", "t1")
    build_cache(pairs, SETTINGS, cache, workers=1, progress=False)
    manifest = json.loads((cache / "manifest.json").read_text())
    manifest["format"] = "modalsynth-cache-1"  # before sources had a channel axis
    (cache / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="another version of modalsynth.*rebuild"):
        open_subjects(cache, read_manifest(cache), [pairs[0].subject])
    capsys.readouterr()
    manifest = build_cache(pairs, SETTINGS, cache, workers=1, progress=False)
    assert "made by another version of modalsynth (modalsynth-cache-1); rebuilding it" in capsys.readouterr().err
    assert open_subjects(cache, manifest, [pairs[0].subject])[0].source.shape == (1, *TINY_GRID)
