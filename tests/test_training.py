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
from modalsynth.data.preprocess import IntensityRecord
from modalsynth.inference import Predictor
from modalsynth.data.datasets import prepare_pairs
from modalsynth.data.pairs import require_pairs
from modalsynth.errors import UserError
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
    val = prepare_pairs([p for p in pairs if p.subject in split["val"]], config.preprocess)
    torch.manual_seed(0)
    intensity = IntensityRecord(0.0, 1.0, 0.0)  # validation scores on the network grid: the record is not used
    untrained = validate(Predictor(build_method(config), config, intensity), val)["val_mae"]
    copy = float(np.mean([mae((s.source + 1) / 2, (s.target + 1) / 2, s.mask) for s in val]))
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
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
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


def test_ema_generator_is_the_ramped_average_and_prediction_uses_it(tmp_path):
    config = tiny_config(model={**tiny_config().model, "ema": 0.999})
    method = build_method(config).to(torch.device("cpu"))
    assert set(method.optimizers) == {"generator", "discriminator"}  # the average is not trained
    start = [p.detach().clone() for p in method.nets["generator_ema"].parameters()]
    rng = torch.Generator().manual_seed(0)
    batch = {"source": torch.rand(1, 1, 16, 48, 40) * 2 - 1, "target": torch.rand(1, 1, 16, 48, 40) * 2 - 1}
    method.training_step(batch, rng)
    live = list(method.nets["generator"].parameters())
    for s, e, g in zip(start, method.nets["generator_ema"].parameters(), live):
        # first update: decay min(0.999, 1/10) = 0.1, so the average moves 90 % of the way
        torch.testing.assert_close(e, 0.1 * s + 0.9 * g.detach())
    assert any(not torch.equal(e, g) for e, g in zip(method.nets["generator_ema"].parameters(), live))
    assert method.prediction_generator() is method.nets["generator_ema"]
    # a prediction-only build from the checkpoint state runs the average, not the live generator
    predictor = build_method(config, training=False)
    predictor.load_state(method.state(), with_optimizers=False)
    for p, e in zip(predictor.nets["generator"].parameters(), method.nets["generator_ema"].parameters()):
        assert torch.equal(p, e)
    # a training build from a checkpoint without an average (a built-in model) starts the average at the generator
    fresh = build_method(config)
    fresh.load_state({"nets": {"generator": method.nets["generator"].state_dict()}}, with_optimizers=False)
    for p, e in zip(fresh.nets["generator"].parameters(), fresh.nets["generator_ema"].parameters()):
        assert torch.equal(p, e)


def test_resume_with_ema_continues_exactly(tiny_sim, tmp_path):
    extra = {"model": {**tiny_config().model, "ema": 0.99}}
    train(tiny_config(steps=4, val_every=2, **extra), tiny_sim, tmp_path / "straight", progress=False)
    train(tiny_config(steps=2, val_every=2, **extra), tiny_sim, tmp_path / "resumed", progress=False)
    train(tiny_config(steps=4, val_every=2, **extra), tiny_sim, tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert "generator_ema" in straight
    _assert_same_weights(straight, resumed)
    assert Checkpoint.load(tmp_path / "resumed" / "last.pt").state["extra"] == {"ema_updates": 4}


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
    train(tiny_config(steps=2, val_every=2, lr=1e-3, lr_schedule="linear-decay"), tiny_sim, tmp_path / "resumed", progress=False)
    train(straight, tiny_sim, tmp_path / "resumed", resume=True, progress=False)
    _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt"))
    constant = tiny_config(steps=4, val_every=2, lr=1e-3, lr_schedule="constant")
    train(constant, tiny_sim, tmp_path / "constant", progress=False)
    with pytest.raises(AssertionError):  # the schedule changed the weights
        _assert_same_weights(_weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "constant" / "last.pt"))


def test_unknown_lr_schedule_is_a_user_error():
    with pytest.raises(UserError, match="lr_schedule 'cosine'.*linear-decay"):
        tiny_config(lr_schedule="cosine")


def test_overlapping_views_share_their_voxels_and_follow_the_generator():
    from modalsynth.data.views import overlapping_views, view_region

    patch = (16, 16, 8)
    region = view_region(patch)
    assert region == (24, 24, 12)
    volume = torch.arange(2 * 24 * 24 * 12, dtype=torch.float32).reshape(2, 1, *region)
    batch = {"source": volume, "target": -volume, "mask": torch.ones_like(volume)}
    views, shared = overlapping_views(batch, patch, torch.Generator().manual_seed(3))
    assert views["source"].shape == (4, 1, *patch) and len(shared) == 2
    for i, (a, b) in enumerate(shared):
        first, second = views["source"][i][(slice(None), *a)], views["source"][2 + i][(slice(None), *b)]
        assert torch.equal(first, second)  # the same voxels of the region, wherever they sit in each view
        assert torch.equal(views["target"][i][(slice(None), *a)], -first)  # target cut with the same boxes
        assert all(s.stop - s.start >= p // 2 for s, p in zip(a, patch))  # at least half a patch shared per axis
        assert int(first.min()) // (24 * 24 * 12) == i  # both views of pair i come from region i
    again, _ = overlapping_views(batch, patch, torch.Generator().manual_seed(3))
    assert torch.equal(again["source"], views["source"])
    with pytest.raises(ValueError, match="smaller than the patch"):
        overlapping_views(batch, (32, 16, 8), torch.Generator())


def test_consistency_loss_is_zero_for_one_consistent_output_and_the_mean_difference_otherwise():
    from modalsynth.data.views import overlapping_views
    from modalsynth.losses import consistency_loss

    region = torch.rand(2, 1, 12, 12, 12)
    views, shared = overlapping_views({"source": region}, (8, 8, 8), torch.Generator().manual_seed(0))
    fake = views["source"]
    assert float(consistency_loss(fake, shared)) == 0.0
    shifted = fake.clone()
    shifted[2:] += 0.25  # the second views 0.25 brighter everywhere
    assert float(consistency_loss(shifted, shared)) == pytest.approx(0.25)


def test_consistency_term_cuts_two_patches_per_region_and_pulls_their_outputs_together(tmp_path):
    from modalsynth.data.views import view_region

    config = tiny_config(patch=[16, 16, 16], model={**tiny_config().model, "consistency": 50.0})
    method = build_method(config).to(torch.device("cpu"))
    assert method.sampling_patch() == view_region((16, 16, 16))
    assert build_method(tiny_config(patch=[16, 16, 16])).sampling_patch() == (16, 16, 16)
    region = torch.rand(1, 1, 24, 24, 24) * 2 - 1
    batch = {"source": region, "target": region.clone(), "mask": torch.ones_like(region)}
    first = method.training_step(batch, torch.Generator().manual_seed(1))["g_consistency"]
    for _ in range(15):
        method.training_step(batch, torch.Generator().manual_seed(1))  # the same two views each step
    last = method.training_step(batch, torch.Generator().manual_seed(1))["g_consistency"]
    assert 0 < last < first  # the term is computed and trained down
    with pytest.raises(UserError, match="needs 3D training patches"):
        build_method(tiny_config(model={**tiny_config().model, "consistency": 50.0}))


def test_training_with_the_consistency_term_samples_larger_regions(tiny_sim, tmp_path):
    config = tiny_config(steps=2, patch=[16, 16, 16], model={**tiny_config().model, "consistency": 10.0}, log_every=1)
    train(config, tiny_sim, tmp_path, progress=False)
    rows = [line.split(",") for line in (tmp_path / "log.csv").read_text().splitlines()[1:]]
    values = [float(value) for step, key, value in rows if key == "g_consistency"]
    assert len(values) == 2 and all(v > 0 for v in values)  # logged at both steps
