"""Nothing lost: kill-and-resume of a real process, signals, failed writes, diverging runs, one run per folder."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from modalsynth.checkpoints import Checkpoint
from modalsynth.errors import TrainingStopped, UserError
from modalsynth.io import Volume, save_volume
from modalsynth.methods.gan3d import GAN3D
from modalsynth.runlock import LOCK_NAME, RunLock
from modalsynth.training import train

from .conftest import TINY_GRID, TINY_MODEL, tiny_config

STEPS = 8


def _weights(path):
    return Checkpoint.load(path).state["nets"]


def _same(a, b) -> bool:
    return all(torch.equal(a[n][k], b[n][k]) for n in a for k in a[n])


def _train_command(data, out, config, *extra):
    return [
        sys.executable,
        "-m",
        "modalsynth",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        *extra,
    ]


@pytest.fixture
def run_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "steps": STEPS,
                "val_every": 1,
                "log_every": 1000,
                "device": "cpu",
                "model": TINY_MODEL,
                "preprocess": {"grid": list(TINY_GRID)},
            }
        )
    )
    return path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigkill_at_random_moments_then_resume_gives_bit_identical_weights(tiny_sim, tmp_path, run_config):
    started = time.perf_counter()
    straight = subprocess.run(
        _train_command(tiny_sim, tmp_path / "straight", run_config), env=_env(), capture_output=True, text=True
    )
    assert straight.returncode == 0, straight.stderr
    one_run_s = time.perf_counter() - started
    rng = random.Random(7)
    out = tmp_path / "killed"
    kills = 0
    for _attempt in range(12):
        resume = ["--resume"] if (out / "last.pt").exists() else []
        proc = subprocess.Popen(
            _train_command(tiny_sim, out, run_config, *resume),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if kills < 3:
            # import takes most of a run; kill somewhere in the second half, where steps and checkpoint writes happen
            time.sleep(rng.uniform(0.45, 0.95) * one_run_s)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
    assert proc.returncode == 0 and kills >= 1
    assert not list(out.glob(".tmp-*")), "a half-written temporary file was left behind"
    assert Checkpoint.load(out / "last.pt").step == STEPS
    assert _same(_weights(tmp_path / "straight" / "last.pt"), _weights(out / "last.pt"))


def test_sigterm_stops_at_a_step_boundary_writes_last_and_prints_the_resume_command(tiny_sim, tmp_path, run_config):
    config = tmp_path / "long.yaml"
    config.write_text(
        run_config.read_text().replace(f"steps: {STEPS}", "steps: 100000").replace("val_every: 1", "val_every: 1000")
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _train_command(tiny_sim, out, config), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 90
    while not (out / "log.csv").exists() and time.time() < deadline:  # the first logged step (log_every 1000)...
        if (out / "config.yaml").exists():
            break
        time.sleep(0.2)
    time.sleep(2.0)  # ...then some steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    last_line = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM" in last_line and f"--out {out} --resume" in last_line and "Traceback" not in err
    step = Checkpoint.load(out / "last.pt").step
    assert step >= 1 and not (out / LOCK_NAME).exists()


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = Checkpoint(config={}, state={"w": torch.ones(3)}, step=1).save(tmp_path / "last.pt")
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file "
            "write failed"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match=r"last.pt: could not be written .*free disk space.*previous file is intact"):
        Checkpoint(config={}, state={"w": torch.zeros(3)}, step=2).save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_failed_nifti_write_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import nibabel as nib

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import modalsynth.io

    monkeypatch.setattr(modalsynth.io, "write_nifti", no_space)  # nibabel's save, or its .nii.gz through ISA-L
    volume = Volume(np.ones((4, 4, 4), np.float32), np.eye(4), nib.Nifti1Header(), None)
    with pytest.raises(
        UserError, match=r"out.nii.gz: could not be written \(\[Errno 28\] No space left on device\); free disk space"
    ):
        save_volume(volume, tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_diverging_run_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_sim, tmp_path, monkeypatch):
    original = GAN3D.training_step
    calls = {"n": 0}

    def explode_at_step_3(self, batch, gen):
        calls["n"] += 1
        losses = original(self, batch, gen)
        if calls["n"] == 3:
            with torch.no_grad():
                for p in self.nets["generator"].parameters():
                    p.fill_(float("nan"))
            losses["g_loss"] = float("nan")
        return losses

    monkeypatch.setattr(GAN3D, "training_step", explode_at_step_3)
    with pytest.raises(
        TrainingStopped,
        match=r"step 3: training diverged \(loss g_loss = nan not finite\); .*last.pt \(step 2\) is kept",
    ) as stop:
        train(tiny_config(steps=6, val_every=1), tiny_sim, tmp_path, progress=False)
    assert stop.value.exit_code != 0
    for name in ("last.pt", "best.pt"):
        ckpt = Checkpoint.load(tmp_path / name)
        assert ckpt.step <= 2 and all(torch.isfinite(t).all() for t in ckpt.state["nets"]["generator"].values())


def test_one_run_per_folder_and_a_stale_lock_is_taken_over(tiny_sim, tmp_path):
    (tmp_path / LOCK_NAME).write_text(f'{{"host": "{os.uname().nodename}", "pid": {os.getpid()}}}')
    with pytest.raises(
        UserError, match=rf"another training run \(process {os.getpid()} on .*\) is writing this folder"
    ):
        train(tiny_config(steps=1), tiny_sim, tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / LOCK_NAME).write_text(f'{{"host": "{os.uname().nodename}", "pid": {gone.pid}}}')
    (tmp_path / ".tmp-half.pt").write_bytes(b"PK half a checkpoint")  # what a SIGKILL during a save leaves
    train(tiny_config(steps=1), tiny_sim, tmp_path, progress=False)  # the killed run's lock is taken over
    assert Checkpoint.load(tmp_path / "last.pt").step == 1 and not (tmp_path / LOCK_NAME).exists()
    assert not list(tmp_path.glob(".tmp-*"))  # and its half-written temporary file removed
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
