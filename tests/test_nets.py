"""Tests of the generator, the discriminator, the GAN losses and the FLOP counter (tiny shapes, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modalsynth.flops import count_flops, count_parameters
from modalsynth.losses import (
    adversarial_loss,
    discriminator_loss,
    generator_loss,
    gradient_loss,
    l1_loss,
    tail_loss,
)
from modalsynth.nets import PatchDiscriminator, ResUNet
from modalsynth.nets.resunet import FullResHead, UpBlock


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [
        (2, (2, 1, 32, 48), 1),
        (2, (2, 1, 32, 48), 2),
        (2, (1, 1, 32, 32), 4),
        (3, (1, 1, 16, 32, 32), 1),
        (3, (1, 1, 16, 32, 32), 3),
        (3, (1, 1, 16, 32, 32), 4),
    ],
)
def test_resunet_output_shape_and_range(spatial_dims: int, shape: tuple[int, ...], depth: int) -> None:
    torch.manual_seed(0)
    net = ResUNet(spatial_dims=spatial_dims, base_channels=4, depth=depth)
    out = net(torch.randn(shape) * 50)  # a large input, so the tanh saturates somewhere
    assert out.shape == shape
    assert out.min() >= -1 and out.max() <= 1


def test_resunet_channels_double_and_cap() -> None:
    net = ResUNet(spatial_dims=2, base_channels=4, depth=5)
    assert net.channels == [4, 8, 16, 32, 32, 32]
    assert net.num_parameters == sum(p.numel() for p in net.parameters()) > 0


def test_resunet_rejects_indivisible_size_with_clear_error() -> None:
    net = ResUNet(spatial_dims=3, base_channels=4, depth=3)
    with pytest.raises(ValueError, match=r"divisible by 8.*\(12, 32, 32\)"):
        net(torch.zeros(1, 1, 12, 32, 32))
    with pytest.raises(ValueError, match="expects a tensor"):
        net(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize(
    ("spatial_dims", "shape", "depth"),
    [(2, (2, 1, 32, 48), 1), (2, (2, 1, 32, 48), 3), (3, (1, 1, 16, 32, 32), 1), (3, (2, 1, 16, 32, 48), 4)],
)
def test_strided_resunet_output_shape_equals_input_shape(spatial_dims: int, shape: tuple[int, ...], depth: int) -> None:
    torch.manual_seed(0)
    net = ResUNet(spatial_dims=spatial_dims, base_channels=4, depth=depth, stem="strided")
    out = net(torch.randn(shape) * 50)
    assert out.shape == shape
    assert out.min() >= -1 and out.max() <= 1
    assert net.size_multiple == 2**depth


def test_strided_resunet_rejects_indivisible_size_with_the_rule() -> None:
    net = ResUNet(spatial_dims=3, base_channels=4, depth=3, stem="strided")
    with pytest.raises(ValueError, match=r"divisible by 8.*\(12, 32, 32\)"):
        net(torch.zeros(1, 1, 12, 32, 32))
    net(torch.zeros(1, 1, 8, 16, 24))  # multiples of 2**depth pass, as in the paper's layout
    with pytest.raises(ValueError, match="stem must be one of"):
        ResUNet(stem="conv")
    with pytest.raises(ValueError, match="full_res_channels applies to stem='strided'"):
        ResUNet(stem="residual", full_res_channels=8)


def test_strided_resunet_channels_and_parameter_count() -> None:
    net = ResUNet(spatial_dims=2, base_channels=4, depth=2, stem="strided", full_res_channels=3)
    assert net.channels == [3, 4, 8]
    stem = 4 * 1 * 9 + 4 * 4 * 9 + 4 * 1  # UnetResBlock 1 -> 4, stride 2: conv1, conv2, 1x1 shortcut (no biases)
    encoder = 8 * 4 * 9 + 8 * 8 * 9 + 8 * 4  # 4 -> 8, stride 2
    bottleneck = 2 * 8 * 8 * 9  # 8 -> 8, identity shortcut
    decoder = (8 * 4 * 4 + 4) + (4 * 8 * 9 + 4 * 4 * 9 + 4 * 8)  # transposed conv 8 -> 4 (+bias), block 8 -> 4
    head = (4 * 3 * 4 + 3) + 3 * (3 + 1) * 9 + (3 * 1 + 1)  # transposed 4 -> 3, fuse (3 + source) -> 3, 1x1 3 -> 1
    assert net.num_parameters == stem + encoder + bottleneck + decoder + head == 2991
    assert ResUNet(spatial_dims=3, base_channels=16, depth=4, stem="strided").channels == [8, 16, 32, 64, 128]
    assert ResUNet(spatial_dims=3, base_channels=16, depth=4).channels == [16, 32, 64, 128, 128]


@pytest.mark.parametrize("stem", ["residual", "strided"])
def test_gradient_reaches_every_parameter(stem: str) -> None:
    torch.manual_seed(0)
    net = ResUNet(spatial_dims=3, base_channels=4, depth=2, stem=stem)
    net(torch.randn(2, 1, 8, 16, 16)).square().mean().backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_strided_stem_costs_far_fewer_flops_than_the_papers_layout() -> None:
    shape = (1, 1, 32, 32, 32)
    paper = count_flops(ResUNet(spatial_dims=3, base_channels=8, depth=3), shape)
    strided = count_flops(ResUNet(spatial_dims=3, base_channels=8, depth=3, stem="strided"), shape)
    thin = count_flops(ResUNet(spatial_dims=3, base_channels=8, depth=3, stem="strided", full_res_channels=2), shape)
    assert strided * 4 < paper  # measured ratio about 6 at these widths
    assert thin < strided


def test_strided_checkpointing_gives_same_output() -> None:
    torch.manual_seed(0)
    plain = ResUNet(spatial_dims=3, base_channels=4, depth=2, stem="strided")
    checkpointed = ResUNet(spatial_dims=3, base_channels=4, depth=2, stem="strided", checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 8, 16, 16)
    torch.testing.assert_close(plain(x), checkpointed(x), rtol=0, atol=0)


def _learn_pixelwise_map(steps: int, stem: str = "residual") -> float:
    """Train a tiny 2D ResUNet to output -x for fresh noise x each step; return the L1 on unseen noise."""
    torch.manual_seed(0)
    net = ResUNet(spatial_dims=2, base_channels=8, depth=2, stem=stem)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        source = torch.rand(4, 1, 16, 16) * 1.6 - 0.8
        optimizer.zero_grad()
        (net(source) + source).abs().mean().backward()
        optimizer.step()
    source = torch.rand(4, 1, 16, 16) * 1.6 - 0.8
    with torch.no_grad():
        return float((net(source) + source).abs().mean())


def test_skip_connections_carry_fine_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pixel noise cannot pass the 4x4 bottleneck (from 16x16), so only the skip connections let it through;
    # predicting zero everywhere scores E|x| = 0.4.
    with_skips = _learn_pixelwise_map(steps=40)
    # Ablation: the same network with the skip features replaced by zeros.
    original_forward = UpBlock.forward
    monkeypatch.setattr(UpBlock, "forward", lambda self, x, skip: original_forward(self, x, torch.zeros_like(skip)))
    without_skips = _learn_pixelwise_map(steps=40)
    assert with_skips < 0.15
    assert without_skips > 0.3


def test_strided_head_source_skip_carries_fine_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    # The strided layout has no full-resolution features but the source, concatenated in the head.
    with_skip = _learn_pixelwise_map(steps=80, stem="strided")
    original_forward = FullResHead.forward
    monkeypatch.setattr(
        FullResHead,
        "forward",
        lambda self, features, source: original_forward(self, features, torch.zeros_like(source)),
    )
    without_skip = _learn_pixelwise_map(steps=80, stem="strided")
    # measured 0.06 vs 0.26: the half-resolution stem alone passes some detail, the source skip the rest
    assert with_skip < 0.1
    assert without_skip > 0.2


def _count_saved_tensors(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = net(x)
    return out, saved


def test_checkpointing_gives_same_output_and_gradients_and_saves_less() -> None:
    torch.manual_seed(0)
    plain = ResUNet(spatial_dims=3, base_channels=4, depth=2)
    checkpointed = ResUNet(spatial_dims=3, base_channels=4, depth=2, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(1, 1, 8, 16, 16)
    results = []
    for net in (plain, checkpointed):
        out, saved = _count_saved_tensors(net, x)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()], saved))
    (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = results
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for grad_a, grad_b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(grad_a, grad_b, rtol=1e-5, atol=1e-7)
    assert saved_b < saved_a / 3


def test_patch_discriminator_receptive_field_is_70_in_2d_default() -> None:
    assert PatchDiscriminator(spatial_dims=2).receptive_field == 70
    assert PatchDiscriminator(spatial_dims=3).receptive_field == 70
    assert PatchDiscriminator(spatial_dims=2, n_layers=1).receptive_field == 16


def test_patch_discriminator_receptive_field_matches_gradient_support() -> None:
    # Without norm layers (which couple all positions) one logit's input support is its receptive field.
    torch.manual_seed(0)
    net = PatchDiscriminator(spatial_dims=2, base_channels=4, norm="none")
    x = torch.randn(1, 2, 128, 128, requires_grad=True)
    out = net(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows, cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == net.receptive_field == 70
    assert int(cols.max() - cols.min() + 1) == 70


@pytest.mark.parametrize(
    ("spatial_dims", "spatial", "expected"),
    [(2, (64, 64), (6, 6)), (2, (256, 256), (30, 30)), (3, (32, 48, 64), (2, 4, 6))],
)
def test_patch_discriminator_output_is_a_shrunk_logit_map(
    spatial_dims: int, spatial: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    net = PatchDiscriminator(spatial_dims=spatial_dims, base_channels=4)
    assert net.output_shape(spatial) == expected
    if spatial_dims == 3 or max(spatial) <= 64:
        out = net(torch.randn(2, 1, *spatial), torch.randn(2, 1, *spatial))
        assert out.shape == (2, 1, *expected)
        assert out.min() < 0 < out.max()  # logits, not probabilities


def test_patch_discriminator_depends_on_source_and_target() -> None:
    torch.manual_seed(0)
    net = PatchDiscriminator(spatial_dims=3, base_channels=4).eval()
    source, target = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        reference = net(source, target)
        assert not torch.allclose(net(torch.randn_like(source), target), reference)
        assert not torch.allclose(net(source, torch.randn_like(target)), reference)
        torch.testing.assert_close(net(torch.cat([source, target], dim=1)), reference)


def test_patch_discriminator_rejects_too_small_input() -> None:
    net = PatchDiscriminator(spatial_dims=3, base_channels=4)
    with pytest.raises(ValueError, match="too small"):
        net(torch.zeros(1, 2, 16, 32, 32))


def test_adversarial_loss_is_the_log_terms_of_eq_1() -> None:
    logits = torch.randn(2, 1, 4, 5, 6)
    torch.testing.assert_close(
        adversarial_loss(logits, True), F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    )
    torch.testing.assert_close(
        adversarial_loss(logits, False), F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))
    )
    # BCE against 1 is -log(sigmoid(logit)), the log D term of eq. (1).
    torch.testing.assert_close(adversarial_loss(logits, True), -torch.log(torch.sigmoid(logits)).mean())


def test_generator_loss_is_adv_plus_weighted_l1() -> None:
    torch.manual_seed(0)
    logits, fake, real = torch.randn(1, 1, 3, 3, 3), torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4)
    total, parts = generator_loss(logits, fake, real, l1_weight=100.0)
    expected_adv = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    expected_l1 = (fake - real).abs().mean()
    torch.testing.assert_close(parts["adv"], expected_adv)
    torch.testing.assert_close(parts["l1"], expected_l1)
    torch.testing.assert_close(total, expected_adv + 100.0 * expected_l1)


def test_gradient_loss_against_a_hand_computed_step() -> None:
    flat, step = torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)
    step[..., 2:] = 1.0  # one unit edge across W: 16 of the 48 W-differences differ by 1, the D and H ones not at all
    torch.testing.assert_close(gradient_loss(flat, step), torch.tensor((16 / 48) / 3))
    torch.testing.assert_close(gradient_loss(step + 0.3, step), torch.tensor(0.0))  # an offset has no edges


def test_tail_loss_compares_only_the_brightest_voxels_against_numpy() -> None:
    gen = np.random.default_rng(0)
    fake, real = gen.random((2, 1, 6, 6, 5)), gen.random((2, 1, 6, 6, 5))
    k = round(0.05 * 180)  # 9 of each item's 180 voxels
    expected = np.mean([np.abs(np.sort(f.ravel())[-k:] - np.sort(r.ravel())[-k:]).mean() for f, r in zip(fake, real)])
    got = tail_loss(torch.from_numpy(fake), torch.from_numpy(real))
    np.testing.assert_allclose(float(got), expected, rtol=1e-12)
    dimmed = real.copy()
    dimmed[real < np.quantile(real, 0.5)] -= 0.5  # the darker half moves; the tail does not
    assert float(tail_loss(torch.from_numpy(dimmed), torch.from_numpy(real))) == 0.0


@pytest.mark.parametrize(
    ("weight", "part", "term"), [("gradient_weight", "grad", gradient_loss), ("tail_weight", "tail", tail_loss)]
)
def test_generator_loss_adds_each_weighted_extra_term(weight, part, term) -> None:
    torch.manual_seed(0)
    logits, fake, real = torch.randn(1, 1, 3, 3, 3), torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8)
    plain, _ = generator_loss(logits, fake, real, l1_weight=100.0)
    total, parts = generator_loss(logits, fake, real, l1_weight=100.0, **{weight: 50.0})
    torch.testing.assert_close(parts[part], term(fake, real))
    torch.testing.assert_close(total, plain + 50.0 * term(fake, real))


def test_l1_is_the_mean_absolute_error_over_every_voxel() -> None:
    fake, real = torch.rand(1, 1, 4, 4, 4), torch.rand(1, 1, 4, 4, 4)
    torch.testing.assert_close(l1_loss(fake, real), torch.nn.functional.l1_loss(fake, real))


def test_discriminator_loss_is_half_the_sum() -> None:
    real_logits, fake_logits = torch.randn(2, 1, 3, 3), torch.randn(2, 1, 3, 3)
    total, parts = discriminator_loss(real_logits, fake_logits)
    torch.testing.assert_close(parts["real"], adversarial_loss(real_logits, True))
    torch.testing.assert_close(parts["fake"], adversarial_loss(fake_logits, False))
    torch.testing.assert_close(total, 0.5 * (parts["real"] + parts["fake"]))


def test_count_flops_of_conv3d_matches_formula() -> None:
    conv = torch.nn.Conv3d(3, 5, kernel_size=3, padding=1)
    flops = count_flops(conv, (2, 3, 4, 6, 8))
    assert flops == 2 * (2 * 4 * 6 * 8) * 5 * (3 * 27)  # 2 x output voxels x out ch x (in ch x kernel)
    assert conv.weight.device.type == "cpu"  # the model itself is untouched
    assert count_parameters(conv) == 5 * 3 * 27 + 5


def test_count_flops_of_generator_scales_with_volume() -> None:
    net = ResUNet(spatial_dims=3, base_channels=4, depth=2)
    small = count_flops(net, (1, 1, 8, 16, 16))
    assert count_flops(net, (1, 1, 16, 16, 16)) == 2 * small > 0


def test_pointwise_head_has_no_full_resolution_spatial_convolution() -> None:
    shape = (1, 1, 16, 32, 32)
    net = ResUNet(spatial_dims=3, base_channels=8, depth=2, stem="strided", full_res_channels=4, head_kernel=1)
    three = ResUNet(spatial_dims=3, base_channels=8, depth=2, stem="strided", full_res_channels=4, head_kernel=3)
    assert net.head.fuse.conv.kernel_size == (1, 1, 1) and three.head.fuse.conv.kernel_size == (3, 3, 3)
    assert net(torch.rand(shape) * 2 - 1).shape == shape
    # the fuse is the only difference: 26 of every 27 of its weights (4 + 1 in, 4 out) are gone
    assert three.num_parameters - net.num_parameters == 26 * 5 * 4
    assert count_flops(net, shape) < count_flops(three, shape)
    with pytest.raises(ValueError, match="head_kernel must be 1 or 3"):
        ResUNet(stem="strided", head_kernel=5)
    with pytest.raises(ValueError, match="head_kernel applies to stem='strided'"):
        ResUNet(stem="residual", head_kernel=1)


def test_linear_upsampling_mixes_channels_then_interpolates_and_leaves_no_checkerboard():
    import torch.nn.functional as F

    from modalsynth.nets.resunet import upsample_2x

    torch.manual_seed(0)
    linear, transposed = upsample_2x(3, 4, 2, "linear"), upsample_2x(3, 4, 2, "transposed")
    x = torch.randn(1, 4, 4, 6, 6)
    conv = linear[0].conv
    # 1x1 convolution at low resolution then trilinear = trilinear then the same 1x1 convolution (both linear)
    expected = F.conv3d(F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False), conv.weight, conv.bias)
    assert torch.allclose(linear(x), expected, atol=1e-5)
    flat = torch.ones(1, 4, 4, 4, 4)  # a constant feature map
    assert linear(flat).std(dim=(2, 3, 4)).max() < 1e-5  # stays constant
    assert transposed(flat).std(dim=(2, 3, 4)).min() > 1e-3  # a period-2 pattern: one weight set per voxel parity
    net = ResUNet(spatial_dims=3, base_channels=8, depth=2, stem="strided", full_res_channels=4, upsample="linear")
    assert net(torch.randn(1, 1, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    assert (
        net.num_parameters
        < ResUNet(spatial_dims=3, base_channels=8, depth=2, stem="strided", full_res_channels=4).num_parameters
    )
    with pytest.raises(ValueError, match="upsample must be one of"):
        ResUNet(upsample="nearest")


def test_channels_last_instance_norm_matches_instance_norm_and_keeps_the_layout() -> None:
    from modalsynth.nets.cpu_bf16 import ChannelsLastInstanceNorm

    torch.manual_seed(0)
    x = (torch.randn(3, 5, 6, 7, 8) * torch.arange(1.0, 6.0)[None, :, None, None, None] + 2.0).contiguous(
        memory_format=torch.channels_last_3d
    )
    out = ChannelsLastInstanceNorm(1e-5)(x)
    torch.testing.assert_close(out, torch.nn.InstanceNorm3d(5)(x.contiguous()), atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert ChannelsLastInstanceNorm(1e-5)(x[:1]).is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_cpu_bf16_copy_computes_the_same_function_in_channels_last_and_leaves_the_network_alone(norm: str) -> None:
    from modalsynth.nets.cpu_bf16 import ChannelsLastInstanceNorm, Float32Upsample, cpu_bf16_copy

    torch.manual_seed(0)
    net = ResUNet(3, base_channels=8, depth=2, stem="strided", upsample="linear", norm=norm).eval()
    fast = cpu_bf16_copy(net)
    kinds = {type(m) for m in fast.modules()}
    assert Float32Upsample in kinds and torch.nn.Upsample in kinds  # wrapped, not removed
    assert (ChannelsLastInstanceNorm in kinds) == (norm == "instance")
    assert (torch.nn.BatchNorm3d in kinds) == (norm == "batch")  # a batch-norm net keeps its norms as they are
    assert torch.nn.InstanceNorm3d not in kinds
    assert all(p.is_contiguous() for p in net.parameters())  # the original is untouched
    assert not any(isinstance(m, ChannelsLastInstanceNorm) for m in net.modules())
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = net(x)
        out = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(out, expected, atol=2e-4, rtol=1e-4)
