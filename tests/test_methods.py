"""The baselines as methods: 2D Pix2Pix, the conditional DDPM and the intensity look-up table."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalsynth.checkpoints import Checkpoint
from modalsynth.config import TrainConfig, resolve_config
from modalsynth.data.datasets import PreparedSubject, prepare_pair, step_generator
from modalsynth.data.pairs import require_pairs
from modalsynth.errors import UserError
from modalsynth.inference import Predictor, apply_method
from modalsynth.inferers import SlidingWindowInferer, VolumeInferer
from modalsynth.io import load_volume
from modalsynth.methods import build_method, method_class
from modalsynth.methods.lut import fit_table
from modalsynth.predict_jobs import predict_path
from modalsynth.training import train

from .conftest import TINY_GRID, TINY_MODEL, tiny_config

TINY_DDPM = {"channels": (8, 16, 16), "num_head_channels": 8, "sample_steps": 2, "slices_per_step": 2}


def _built(config: TrainConfig):
    return build_method(config).to(torch.device("cpu"))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def _val_subject(tiny_sim, run_dir, config):
    split = json.loads((run_dir / "split.json").read_text())
    pairs = [p for p in require_pairs(tiny_sim, "flair", "t1") if p.subject in split["val"]]
    return prepare_pair(pairs[0], config.preprocess)


# ---------------------------------------------------------------- pix2pix2d


def _resolved(*layers):
    return resolve_config([(f"layer {i}", layer) for i, layer in enumerate(layers)], method_class)


def test_gan_recipes_decay_the_learning_rate_and_the_paper_preset_does_not():
    default, paper = _resolved({}), _resolved({"preset": "paper"})
    assert (default.lr, default.lr_schedule) == (5e-4, "linear-decay")
    assert (paper.lr, paper.lr_schedule) == (1e-4, "constant")  # the paper's Adam 1e-4, nothing said about a decay
    assert _resolved({"method": "pix2pix2d"}).lr_schedule == "linear-decay"  # the official pix2pix code's rule
    assert _resolved({"lr_schedule": "constant"}).lr_schedule == "constant"  # the user's choice wins
    assert _resolved({"method": "ddpm"}).lr_schedule == "constant"


def test_pix2pix2d_uses_its_own_recipe_unless_the_user_sets_one():
    config = _resolved({"method": "pix2pix2d"})
    method = _built(config)
    assert method.spatial_dims == 2 and method.nets["generator"].spatial_dims == 2
    disc = method.nets["discriminator"]
    assert disc.spatial_dims == 2 and disc.receptive_field == 70  # the 70x70 PatchGAN
    for opt in method.optimizers.values():
        group = opt.param_groups[0]
        assert group["lr"] == 2e-4 and tuple(group["betas"]) == (0.5, 0.999)
    assert method.config.l1_weight == 100.0
    set_on_top = _built(_resolved({"method": "pix2pix2d", "lr": 5e-4, "l1_weight": 10.0, "model": dict(TINY_MODEL)}))
    assert set_on_top.optimizers["discriminator"].param_groups[0]["lr"] == 5e-4 and set_on_top.config.l1_weight == 10.0
    # the bug the old recipe had: an explicit lr equal to TrainConfig's default (1e-4) was replaced by 2e-4
    explicit_default = _resolved({"method": "pix2pix2d"}, {"lr": 1e-4})
    assert (
        explicit_default.lr == 1e-4 and _built(explicit_default).optimizers["generator"].param_groups[0]["lr"] == 1e-4
    )
    # a later layer wins over an earlier one; the YAML's model options merge key by key with the recipe's
    layered = _resolved({"method": "pix2pix2d", "lr": 3e-4, "model": {"depth": 3}}, {"lr": 7e-4})
    assert layered.lr == 7e-4 and layered.model.depth == 3 and layered.model.slices_per_step == 8


def test_prediction_build_has_no_discriminator_or_optimisers():
    method = build_method(tiny_config(), training=False)
    assert set(method.nets) == {"generator"} and method.optimizers == {}


def test_pix2pix2d_model_batch_gives_foreground_slices_of_the_volume():
    method = _built(tiny_config(method="pix2pix2d", model={**TINY_MODEL, "slices_per_step": 3}))
    source = torch.randn(2, 1, 6, 8, 8)
    target = torch.randn(2, 1, 6, 8, 8)
    mask = torch.zeros(2, 1, 6, 8, 8)
    mask[0, 0, 2:5, 3:5, 3:5] = 1  # volume 0: foreground in slices 2, 3, 4
    mask[1, 0, 5, 0, 0] = 1  # volume 1: only slice 5
    batch = {"source": source, "target": target, "mask": mask}
    out = method.model_batch(batch, torch.Generator().manual_seed(3))
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: (6, 1, 8, 8) for k in batch}
    picked = []
    for i in range(6):
        matches = [(n, d) for n in range(2) for d in range(6) if torch.equal(out["source"][i, 0], source[n, 0, d])]
        assert len(matches) == 1, "every slice must be a slice of the source volume"
        n, d = matches[0]
        assert torch.equal(out["target"][i, 0], target[n, 0, d]) and torch.equal(out["mask"][i, 0], mask[n, 0, d])
        picked.append((n, d))
    assert sorted(picked[:3]) == [(0, 2), (0, 3), (0, 4)]  # distinct foreground slices while there are enough
    assert picked[3:] == [(1, 5)] * 3  # then repeated
    again = method.model_batch(batch, torch.Generator().manual_seed(3))
    assert all(torch.equal(out[k], again[k]) for k in out)  # the step generator decides


def test_pix2pix2d_trains_and_predicts_whole_volumes(tiny_sim, tmp_path):
    config = tiny_config(method="pix2pix2d", steps=2, model={**TINY_MODEL, "slices_per_step": 4})
    torch.manual_seed(config.seed)
    initial = copy.deepcopy(build_method(config).nets["generator"].state_dict())
    best = train(config, tiny_sim, tmp_path / "run", progress=False)
    payload = Checkpoint.load(best)
    assert _changed(initial, payload.state["nets"]["generator"])
    group = payload.state["optimizers"]["generator"]["param_groups"][0]
    assert group["lr"] == 2e-4 and tuple(group["betas"]) == (0.5, 0.999)
    predictor = Predictor.from_checkpoint(best, "cpu")
    method, cfg = predictor.method, predictor.config
    subject = _val_subject(tiny_sim, tmp_path / "run", cfg)
    pred = apply_method(method, torch.from_numpy(subject.source)[None], method.config.inference)
    assert pred.shape == (1, 1, *TINY_GRID) and pred.min() >= -1 and pred.max() <= 1
    out = predict_path(best, tiny_sim / "sim-000" / "flair.nii.gz", tmp_path / "pred.nii.gz", device="cpu")[0]
    assert load_volume(out).shape == load_volume(tiny_sim / "sim-000" / "flair.nii.gz").shape


# ---------------------------------------------------------------- ddpm


def test_ddpm_loss_is_the_mse_between_predicted_and_drawn_noise():
    method = _built(tiny_config(method="ddpm", model=dict(TINY_DDPM)))
    source = torch.rand(1, 1, 4, 16, 16) * 2 - 1
    batch = {"source": source, "target": -source, "mask": torch.ones_like(source)}
    net_before = copy.deepcopy(method.nets["generator"])
    loss = method.training_step(batch, step_generator(0, 5))
    # redo the step's draws with the same generator and recompute the loss without the inferer
    gen = step_generator(0, 5)
    slices = method.model_batch(batch, gen)
    noise, timesteps = method.draw_noise(slices["target"], gen)
    assert noise.shape == (2, 1, 16, 16) and 0 <= int(timesteps.min()) and int(timesteps.max()) < 1000
    abar = method.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * slices["target"] + (1 - abar).sqrt() * noise
    with torch.no_grad():
        predicted = net_before(torch.cat([noisy, slices["source"]], 1), timesteps=timesteps)
    assert loss["loss"] == pytest.approx(float(F.mse_loss(predicted, noise)), rel=1e-5)
    assert _changed(net_before.state_dict(), method.nets["generator"].state_dict())


@pytest.mark.parametrize("sampler, extra", [("ddim", {"sample_steps": 3}), ("ddpm", {"num_train_timesteps": 12})])
def test_ddpm_sampling_is_reproducible_from_its_seed(sampler, extra):
    method = _built(tiny_config(method="ddpm", model={**TINY_DDPM, "sampler": sampler, **extra}))
    method.train_mode(False)
    steps = len(method.sampling_scheduler().timesteps)
    assert steps == (3 if sampler == "ddim" else 12)
    source = torch.rand(1, 1, 3, 12, 20) * 2 - 1  # 12 x 20: padded to the UNet's multiple of 4 and cropped back
    first = apply_method(method, source, method.config.inference, torch.Generator().manual_seed(1))
    assert first.shape == source.shape and first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, apply_method(method, source, method.config.inference, torch.Generator().manual_seed(1)))
    assert not torch.allclose(
        first, apply_method(method, source, method.config.inference, torch.Generator().manual_seed(2)), atol=1e-3
    )
    before = torch.get_num_threads()
    try:  # the network calls split over two threads; the draws stay in one order: the same sample
        four_slices = torch.cat([source, source[:, :, :1]], dim=2)  # two chunks of two slices
        torch.set_num_threads(2)
        two_threads = apply_method(method, four_slices, method.config.inference, torch.Generator().manual_seed(1))
        torch.set_num_threads(1)
        one_thread = apply_method(method, four_slices, method.config.inference, torch.Generator().manual_seed(1))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(two_threads, one_thread, atol=1e-5, rtol=1e-5)


def test_ddpm_trains_and_predicts_whole_volumes(tiny_sim, tmp_path):
    config = tiny_config(method="ddpm", steps=2, model=dict(TINY_DDPM))
    torch.manual_seed(config.seed)
    initial = copy.deepcopy(build_method(config).nets["generator"].state_dict())
    best = train(config, tiny_sim, tmp_path / "run", progress=False)
    assert _changed(initial, Checkpoint.load(best).state["nets"]["generator"])
    predictor = Predictor.from_checkpoint(best, "cpu")
    method, cfg = predictor.method, predictor.config
    subject = _val_subject(tiny_sim, tmp_path / "run", cfg)
    pred = apply_method(
        method, torch.from_numpy(subject.source)[None], method.config.inference, torch.Generator().manual_seed(0)
    )
    assert pred.shape == (1, 1, *TINY_GRID) and pred.min() >= -1 and pred.max() <= 1
    out = predict_path(best, tiny_sim / "sim-000" / "flair.nii.gz", tmp_path / "pred.nii.gz", device="cpu")[0]
    assert load_volume(out).shape == load_volume(tiny_sim / "sim-000" / "flair.nii.gz").shape


def test_ddpm_unknown_sampler_is_a_user_error():
    with pytest.raises(UserError, match="model.sampler"):
        build_method(tiny_config(method="ddpm", model={**TINY_DDPM, "sampler": "euler"}))


# ---------------------------------------------------------------- lut


def _subject(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> PreparedSubject:
    return PreparedSubject("s", source.astype(np.float32)[None], target.astype(np.float32), mask, None, None)  # type: ignore[arg-type]


def test_lut_recovers_a_monotone_mapping_inside_the_foreground():
    rng = np.random.default_rng(0)
    mapping = lambda x: 0.8 * np.tanh(2 * x) - 0.1  # noqa: E731
    source = rng.uniform(-1, 1, (20, 30, 30))
    mask = np.zeros(source.shape, bool)
    mask[:, 5:25, 5:25] = True
    target = np.where(mask, mapping(source), 5.0)  # the background holds garbage that must be ignored
    method = _built(_resolved({"method": "lut"}))
    assert method.nets == {} and method.reported_network() is None and not method.trainable
    method.fit_closed_form([_subject(source, target, mask)])
    query = torch.from_numpy(rng.uniform(-0.99, 0.99, (1, 1, 4, 10, 10)).astype(np.float32))
    pred = apply_method(method, query, method.config.inference)
    assert pred.shape == query.shape
    assert float((pred - torch.from_numpy(mapping(query.numpy()))).abs().max()) < 2e-3


def test_lut_fills_empty_bins_by_interpolation():
    rng = np.random.default_rng(1)
    source = np.concatenate([rng.uniform(-1, -0.2, 5000), rng.uniform(0.4, 1, 5000)])  # no voxel in (-0.2, 0.4)
    table = fit_table([source], [0.5 * source + 0.2])
    assert table.shape == (2, 256) and np.all(np.diff(table[0]) > 0)
    gap = np.linspace(-0.15, 0.35, 11)
    assert np.allclose(np.interp(gap, table[0], table[1]), 0.5 * gap + 0.2, atol=1e-6)


def test_lut_table_survives_a_checkpoint(tmp_path):
    rng = np.random.default_rng(2)
    source = rng.uniform(-1, 1, (8, 8, 8))
    method = _built(_resolved({"method": "lut"}))
    method.fit_closed_form([_subject(source, source**3, np.ones(source.shape, bool))])
    Checkpoint(config={}, state=method.state()).save(tmp_path / "lut.pt")
    restored = _built(_resolved({"method": "lut"}))
    restored.load_state(Checkpoint.load(tmp_path / "lut.pt").state)
    query = torch.linspace(-1, 1, 50).view(1, 1, 2, 5, 5)
    assert torch.equal(
        apply_method(method, query, method.config.inference), apply_method(restored, query, restored.config.inference)
    )
    assert not torch.equal(apply_method(method, query, method.config.inference), query)  # it is not the identity


def test_lut_trains_from_the_command_line(tiny_sim, tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "modalsynth",
            "train",
            "--data",
            str(tiny_sim),
            "--out",
            str(tmp_path / "run"),
            "--method",
            "lut",
            "--grid",
            " ".join(map(str, TINY_GRID)),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    best = tmp_path / "run" / "best.pt"
    predictor = Predictor.from_checkpoint(best, "cpu")
    method, cfg = predictor.method, predictor.config
    # the stored table is the one fitted on the recorded training subjects
    pairs = [p for p in require_pairs(tiny_sim, "flair", "t1") if p.subject in predictor.split["train"]]
    again = _built(cfg)
    subjects = [prepare_pair(p, cfg.preprocess) for p in pairs]
    for s in subjects:  # training reads them from the float16 cache
        s.source, s.target = (a.astype(np.float16).astype(np.float32) for a in (s.source, s.target))
    again.fit_closed_form(subjects)
    assert torch.allclose(method.table, again.table)
    subject = _val_subject(tiny_sim, tmp_path / "run", cfg)
    pred = apply_method(method, torch.from_numpy(subject.source)[None], method.config.inference).numpy()[0, 0]
    assert pred.shape == TINY_GRID and pred.min() >= -1 and pred.max() <= 1
    # a pointwise map fitted on FLAIR -> T1 inverts the contrast: it beats copying the source inside the brain
    inside = subject.mask > 0
    assert np.abs(pred - subject.target)[inside].mean() < np.abs(subject.source[0] - subject.target)[inside].mean()


def test_batch_norm_generator_keeps_an_instance_norm_discriminator_and_can_predict_whole_volumes():
    config = tiny_config(model={**TINY_MODEL, "norm": "batch", "window": "volume"})
    method = build_method(config)
    norms = lambda net: {type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__}  # noqa: E731
    assert norms(method.nets["generator"]) == {"BatchNorm3d"}
    assert norms(method.nets["discriminator"]) == {"InstanceNorm3d"}
    assert isinstance(method.application(method.config.inference), VolumeInferer)
    windowed = build_method(tiny_config(inference={"window": [16, 16, 16]}))
    inferer = windowed.application(windowed.config.inference)
    assert isinstance(inferer, SlidingWindowInferer) and inferer.window == (16, 16, 16)


@pytest.mark.parametrize("amp", [True, False])
def test_cpu_mixed_precision_needs_native_bf16_and_covers_prediction_only_where_the_method_measured_it(
    amp, monkeypatch
):
    """amp on a CPU: bfloat16 autocast around training steps when the CPU has AMX tiles; in prediction (precision
    'auto') with AMX or AVX512-BF16, only for methods that set `cpu_bf16_inference` (gan3d, not pix2pix2d); nothing when
    the CPU would only emulate bf16, amp is off (training) or the precision is float32 (prediction)."""
    from modalsynth import runtime as base

    method = _built(tiny_config(amp=amp))
    flat = _built(tiny_config(method="pix2pix2d", amp=amp, model={"base_channels": 8, "depth": 2}))
    assert type(method).cpu_bf16_inference and not type(flat).cpu_bf16_inference
    for native, predicts_natively in ((True, True), (False, True), (False, False)):  # AMX; AVX512-BF16 alone; neither
        monkeypatch.setattr(base, "cpu_has_native_bf16", lambda native=native: native)
        monkeypatch.setattr(base, "cpu_bf16_predicts_natively", lambda native=predicts_natively: native)
        with method.autocast():
            assert torch.is_autocast_enabled("cpu") == (amp and native)
            if amp and native:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        with method.inference_autocast(method.config.inference):  # precision 'auto': amp is about training steps
            assert torch.is_autocast_enabled("cpu") == predicts_natively
        with method.inference_autocast(dataclasses.replace(method.config.inference, precision="float32")):
            assert not torch.is_autocast_enabled("cpu")
        with flat.inference_autocast(flat.config.inference):
            assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setattr(base, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(base, "cpu_bf16_predicts_natively", lambda: True)
    source = torch.rand(1, 1, *TINY_GRID) * 2 - 1
    seen: list[torch.dtype] = []
    hook = method.nets["generator"].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    out = apply_method(method, source, method.config.inference)
    assert out.dtype == torch.float32
    assert seen == [torch.bfloat16]  # the prediction's generator pass
    seen.clear()
    method.make_optimizers()
    method.train_mode(True)
    method.training_step({"source": source, "target": source.flip(-1)}, torch.Generator().manual_seed(0))
    hook.remove()
    assert seen == [torch.bfloat16 if amp else torch.float32]  # the training step's generator pass


def test_cpu_bf16_prediction_runs_in_bf16_on_every_worker_thread_and_stays_close_to_float32(monkeypatch):
    """gan3d's CPU bfloat16 prediction: the windows that `split_across_threads` sends to worker threads run under
    autocast too (a per-thread state), in channels-last memory; the training generator's own weights keep their
    layout; the output stays within bf16 rounding of the float32 path."""
    from modalsynth import runtime as base

    monkeypatch.setattr(base, "cpu_bf16_predicts_natively", lambda: True)
    config = tiny_config(inference={"window": [16, 16, 16], "overlap": 0.25, "windows_per_batch": 4})
    method = _built(config)
    method.train_mode(False)
    source = torch.rand(1, 1, *TINY_GRID) * 2 - 1
    calls: list[tuple[torch.dtype, bool, int]] = []  # (output dtype, channels-last input, items) per window batch

    def record(module, args, out):
        calls.append((out.dtype, args[0].is_contiguous(memory_format=torch.channels_last_3d), args[0].shape[0]))

    hook = method.nets["generator"].register_forward_hook(record)  # the prediction's copy keeps it
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        bf16 = apply_method(method, source, config.inference)
        fp32 = apply_method(method, source, dataclasses.replace(config.inference, precision="float32"))
    finally:
        torch.set_num_threads(before)
        hook.remove()
    fp32_calls = [call for call in calls if call[0] == torch.float32]
    calls = [call for call in calls if call[0] != torch.float32]
    assert len(calls) == len(fp32_calls) > 0  # every window batch ran in bf16, on every worker thread
    assert {dtype for dtype, _, _ in calls} == {torch.bfloat16}
    assert all(channels_last for _, channels_last, _ in calls)
    assert max(items for _, _, items in calls) == 2  # 4 windows a batch, split 2 + 2 over the two threads
    assert all(p.is_contiguous() for p in method.nets["generator"].parameters())
    assert bf16.dtype == fp32.dtype == torch.float32
    difference = (bf16 - fp32).abs()
    assert 0 < difference.max() < 0.1  # bf16 rounding, not another model (the output spans [-1, 1])


@pytest.mark.parametrize(
    "avx512_bf16, amx, train, predict",
    [(True, False, False, True), (True, True, True, True), (False, True, True, True), (False, False, False, False)],
)
def test_cpu_bf16_training_needs_amx_tiles_and_prediction_avx512_bf16(monkeypatch, avx512_bf16, amx, train, predict):
    """AVX512-BF16 alone (an AMD EPYC) gave NaN losses and inexact resumes in training steps under CPU bf16, so only
    AMX counts there; its predictions are finite and within 0.0005 brain SSIM of float32 (RESULTS.md §13), so it
    counts for prediction. Decided by the CPU's flags as torch reads them, never by vendor."""
    from modalsynth import runtime as base

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    base.cpu_has_native_bf16.cache_clear()
    base.cpu_bf16_predicts_natively.cache_clear()
    try:
        assert base.cpu_has_native_bf16() is train and base.cpu_bf16_predicts_natively() is predict
    finally:
        monkeypatch.undo()
        base.cpu_has_native_bf16.cache_clear()
        base.cpu_bf16_predicts_natively.cache_clear()
