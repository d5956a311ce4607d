"""The 3D GAN's training: it learns, resumes exactly, runs under DDP, and its checkpoints are safe to load."""

from __future__ import annotations

import os
import socket
import zipfile

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from modalsynth.checkpoints import Checkpoint
from modalsynth.data.datasets import prepare_pair
from modalsynth.data.pairs import require_pairs
from modalsynth.data.preprocess import IntensityRecord
from modalsynth.errors import UserError
from modalsynth.inference import Predictor
from modalsynth.methods import build_method
from modalsynth.metrics import mae
from modalsynth.training import Budget, lr_factor, seed_everything, train, validate

from .conftest import tiny_config


def _weights(path):
    return Checkpoint.load(path).state["nets"]


def _assert_same_weights(a, b):
    for net in a:
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"


def test_gan_learns_beyond_untrained_and_copying_the_source(tiny_sim, tmp_path):
    config = tiny_config(steps=25, lr=1e-3)
    pairs = require_pairs(tiny_sim, "flair", "t1")
    best = train(config, tiny_sim, tmp_path, progress=False)
    split = Checkpoint.load(best).split
    val = [prepare_pair(p, config.preprocess) for p in pairs if p.subject in split["val"]]
    torch.manual_seed(0)
    intensity = IntensityRecord(0.0, 1.0, 0.0)  # validation scores on the network grid: the record is not used
    untrained = validate(Predictor(build_method(config), config, intensity, config.inference), val)["val_mae"]
    copy = float(np.mean([mae((s.source[0] + 1) / 2, (s.target + 1) / 2, s.mask) for s in val]))
    trained = Checkpoint.load(best).best_val_mae
    assert trained < 0.5 * untrained, (trained, untrained)
    assert trained < copy, (trained, copy)


def test_resume_continues_exactly(tiny_sim, tmp_path):
    straight = tiny_config(steps=4, val_every=2)
    train(straight, tiny_sim, tmp_path / "straight", progress=False)
    first = tiny_config(steps=2, val_every=2)
    train(first, tiny_sim, tmp_path / "resumed", progress=False)
    second = tiny_config(steps=4, val_every=2)
    train(second, tiny_sim, tmp_path / "resumed", resume=True, progress=False)
    assert Checkpoint.load(tmp_path / "resumed" / "last.pt").step == 4
    _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt"))
    # and a different seed really gives other weights (so the comparison above can fail)
    train(tiny_config(steps=4, val_every=2, seed=1), tiny_sim, tmp_path / "other", progress=False)
    with pytest.raises(AssertionError):
        _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "other" / "last.pt"))


def test_resume_without_a_run_is_a_user_error(tiny_sim, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config(), tiny_sim, tmp_path, resume=True, progress=False)


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    ckpt = Checkpoint(config={"lr": 1e-4}, state={"w": torch.arange(100.0)}, step=3)
    first, second = ckpt.save(tmp_path / "a.pt"), ckpt.save(tmp_path / "b" / "a.pt")
    assert first.read_bytes() == second.read_bytes()  # a built-in model's sha256 reproduces from the same weights
    assert torch.equal(Checkpoint.load(second).state["w"], ckpt.state["w"])


def test_bad_checkpoints_give_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Checkpoint.load(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="corrupt, truncated or not a checkpoint"):
        Checkpoint.load(tmp_path / "text.pt")
    good = Checkpoint(config={}, state={"w": torch.ones(1000)}).save(tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:700])
    with pytest.raises(UserError, match="corrupt"):
        Checkpoint.load(tmp_path / "cut.pt")
    torch.save({"some": "dict"}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not a modalsynth checkpoint"):
        Checkpoint.load(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "modalsynth-checkpoint-1", "x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to unpickle"):
        Checkpoint.load(tmp_path / "evil.pt")
    assert zipfile.is_zipfile(good)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SETTINGS = dict(steps=3, val_every=3, augment="light")


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from pathlib import Path

    import torch.distributed as dist

    def save_weights(method):
        nets = {k: {n: t.detach().cpu().clone() for n, t in v.state_dict().items()} for k, v in method.nets.items()}
        torch.save(nets, Path(out) / f"rank{rank}.pt")

    train(tiny_config(**DDP_SETTINGS), Path(data), Path(out), progress=False, on_finish=save_weights)
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_processes_hold_identical_weights(tiny_sim, tmp_path):
    port = _free_port()
    mp.spawn(_ddp_worker, args=(2, port, str(tiny_sim), str(tmp_path)), nprocs=2, join=True)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "last.pt" in files and "best.pt" in files
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    _assert_same_weights(rank0, rank1)
    _assert_same_weights(rank0, _weights(tmp_path / "last.pt"))
    # the ranks saw different subjects (a DistributedSampler), yet training moved the weights away from the ones it
    # started from (built after the same seeding as in `train`, so an untrained generator would compare equal)
    config = tiny_config(**DDP_SETTINGS)
    seed_everything(config.seed)
    initial = build_method(config).nets["generator"].state_dict()
    assert any(not torch.equal(initial[k], rank0["generator"][k]) for k in initial)
    assert Checkpoint.load(tmp_path / "last.pt").step == 3


def test_linear_decay_schedule_follows_the_budget_and_resumes_exactly(tiny_sim, tmp_path):
    """pix2pix's rule on the budget's share: full rate for the first half, then linearly to 0; a minutes budget
    counts its share of the time; resuming continues the same schedule."""
    assert [lr_factor("linear-decay", p) for p in (0.0, 0.5, 0.75, 1.0)] == [1.0, 1.0, 0.5, 0.0]
    assert lr_factor("constant", 0.9) == 1.0
    assert Budget(steps=8, seconds=None).progress(2, 1e9) == 0.25
    assert Budget(steps=None, seconds=60.0).progress(1000, 45.0) == 0.75
    assert Budget(steps=8, seconds=60.0).progress(2, 45.0) == 0.75  # whichever ends the run first
    straight = tiny_config(steps=4, val_every=2, lr=1e-3, lr_schedule="linear-decay")
    train(straight, tiny_sim, tmp_path / "straight", progress=False)
    state = Checkpoint.load(tmp_path / "straight" / "last.pt").state["optimizers"]
    for optimizer in state.values():  # the last step (step 3 of 4, progress 0.75) ran at half the rate
        assert optimizer["param_groups"][0]["lr"] == pytest.approx(0.5e-3)
    train(
        tiny_config(steps=2, val_every=2, lr=1e-3, lr_schedule="linear-decay"),
        tiny_sim,
        tmp_path / "resumed",
        progress=False,
    )
    train(straight, tiny_sim, tmp_path / "resumed", resume=True, progress=False)
    _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt"))
    constant = tiny_config(steps=4, val_every=2, lr=1e-3, lr_schedule="constant")
    train(constant, tiny_sim, tmp_path / "constant", progress=False)
    with pytest.raises(AssertionError):  # the schedule changed the weights
        _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "constant" / "last.pt"))


def test_unknown_lr_schedule_is_a_user_error():
    with pytest.raises(UserError, match="setting lr_schedule should be one of constant, linear-decay, got 'cosine'"):
        tiny_config(lr_schedule="cosine")
