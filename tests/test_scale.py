"""Training and prediction over several ranks (torchrun's variables, gloo on CPU): each rank reads its own share of
an epoch's subjects, a run stopped by a signal and resumed ends bit-identical to an unbroken one, and a cohort
prediction writes each subject once and skips them all on a rerun."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from modalsynth.checkpoints import Checkpoint
from modalsynth.errors import TrainingStopped

from .conftest import TINY_GRID, tiny_config

SETTINGS = dict(steps=4, val_every=2, augment="light", workers=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)


def _train_worker(rank: int, world: int, port: int, data: str, out: str, stop_after: int, resume: bool) -> None:
    """One rank of a training run; records the subjects it samples; rank 0 sends itself SIGTERM during step
    `stop_after` (0: never)."""
    _join(rank, world, port)
    import torch.distributed as dist

    from modalsynth import training
    from modalsynth.data import datasets

    seen: list[str] = []
    sample = datasets.sample_item

    def spy(subject, *args):
        seen.append(subject.name)
        return sample(subject, *args)

    datasets.sample_item = spy
    step_generator = training.step_generator

    def signalling(seed, step, rank_):
        if rank_ == 0 and step + 1 == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)  # the run stops at the end of this step, on every rank
        return step_generator(seed, step, rank_)

    training.step_generator = signalling
    try:
        training.train(tiny_config(**SETTINGS), Path(data), Path(out), resume=resume, progress=False)
    except TrainingStopped:
        pass
    Path(out, f"seen{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


def _run(data: Path, out: Path, stop_after: int = 0, resume: bool = False) -> list[list[str]]:
    mp.spawn(_train_worker, args=(2, _free_port(), str(data), str(out), stop_after, resume), nprocs=2, join=True)
    return [json.loads((out / f"seen{r}.json").read_text()) for r in range(2)]


def _weights(path: Path) -> dict:
    return Checkpoint.load(path).state["nets"]


@pytest.mark.slow
def test_two_ranks_read_disjoint_subjects_and_a_stopped_run_resumes_bit_identical(tiny_sim, tmp_path):
    straight = _run(tiny_sim, tmp_path / "straight")
    train_names = json.loads((tmp_path / "straight" / "split.json").read_text())["train"]
    per_epoch = len(train_names) // 2  # batch 1: each rank's steps per epoch
    for epoch in range(2):
        shares = [set(seen[epoch * per_epoch : (epoch + 1) * per_epoch]) for seen in straight]
        assert not shares[0] & shares[1] and shares[0] | shares[1] == set(train_names), shares
    stopped = _run(tiny_sim, tmp_path / "resumed", stop_after=2)
    assert Checkpoint.load(tmp_path / "resumed" / "last.pt").step == 2 and [len(s) for s in stopped] == [2, 2]
    _run(tiny_sim, tmp_path / "resumed", resume=True)
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert Checkpoint.load(tmp_path / "resumed" / "last.pt").step == 4
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"


def test_a_resume_on_another_number_of_ranks_is_refused_in_one_line(tiny_sim, tmp_path):
    from modalsynth.errors import UserError
    from modalsynth.training import train

    train(tiny_config(steps=1, method="lut", model={}), tiny_sim, tmp_path, progress=False)
    ckpt = Checkpoint.load(tmp_path / "last.pt")
    ckpt.world = 2
    ckpt.save(tmp_path / "last.pt")
    with pytest.raises(UserError, match="trained on 2 rank.*this one has 1.*--nproc_per_node 2"):
        train(tiny_config(steps=2, method="lut", model={}), tiny_sim, tmp_path, resume=True, progress=False)


def _predict_worker(rank: int, world: int, port: int, checkpoint: str, data: str, out: str, tag: str) -> None:
    _join(rank, world, port)
    from modalsynth.predict_jobs import predict_path

    written = predict_path(Path(checkpoint), Path(data), Path(out), device="cpu")
    Path(out, f"{tag}{rank}.json").write_text(json.dumps([str(p) for p in written]))


@pytest.mark.slow
def test_two_rank_cohort_predict_writes_each_subject_once_and_a_rerun_skips_them(tiny_sim, tmp_path):
    from modalsynth.config import resolve_config
    from modalsynth.methods import method_class
    from modalsynth.training import train

    config = resolve_config(
        [
            (
                "the test",
                {
                    "method": "lut",
                    "device": "cpu",
                    "holdout": "none",
                    "workers": 0,
                    "preprocess": {"grid": list(TINY_GRID)},
                },
            )
        ],
        method_class,
    )
    checkpoint = train(config, tiny_sim, tmp_path / "run", progress=False)
    out = tmp_path / "pred"
    args = (2, _free_port(), str(checkpoint), str(tiny_sim), str(out))
    mp.spawn(_predict_worker, args=(*args, "first"), nprocs=2, join=True)
    first = [json.loads((out / f"first{r}.json").read_text()) for r in range(2)]
    subjects = sorted(p.name for p in tiny_sim.iterdir() if p.is_dir())
    assert not set(first[0]) & set(first[1]) and len(first[0]) + len(first[1]) == len(subjects)
    outputs = sorted(out.glob("*/t1.nii.gz"))
    assert [p.parent.name for p in outputs] == subjects
    stamps = [p.stat().st_mtime_ns for p in outputs]
    mp.spawn(_predict_worker, args=(2, _free_port(), *args[2:], "again"), nprocs=2, join=True)
    assert [json.loads((out / f"again{r}.json").read_text()) for r in range(2)] == [[], []]
    assert [p.stat().st_mtime_ns for p in outputs] == stamps
