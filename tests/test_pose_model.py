"""PoseTransferGenerator, discriminators and losses: shapes, growth state, fade-in math, formulas, weights IO."""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hf_ext.pose.discriminators import LocalPatchDiscriminator, MultiScalePatchDiscriminator
from hf_ext.pose.losses import VGG19_LAYERS, PerceptualLoss, PoseTransferLoss, VGG19Features, adversarial_loss
from hf_ext.pose.modeling_pose_transfer import PoseTransferGenerator


def tiny_generator(**overrides):
    config = dict(start_resolution=16, final_resolution=64, base_channels=4, max_channels=8, bottleneck_depth=2)
    return PoseTransferGenerator(**{**config, **overrides})


def inputs(batch, height, width, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(batch, 3, height, width, generator=g) * 2 - 1,
        torch.rand(batch, 18, height, width, generator=g),
        torch.rand(batch, 18, height, width, generator=g),
    )


@pytest.mark.parametrize("output_mode", ["residual", "replace"])
@pytest.mark.parametrize("bottleneck_depth", [0, 2])
def test_runs_at_every_grown_stage_and_only_there(output_mode, bottleneck_depth):
    model = tiny_generator(output_mode=output_mode, bottleneck_depth=bottleneck_depth)
    assert model.resolutions == [(16, 16), (32, 32), (64, 64)]
    for stage in range(3):
        if stage:
            model.grow(fade_in_alpha=0.5)
        for height, width in model.available_resolutions:
            out = model(*inputs(2, height, width)).sample
            assert out.shape == (2, 3, height, width)
            assert out.abs().max() <= 1
    model.set_stage(1)
    with pytest.raises(ValueError, match=r"\(64, 64\).*not available.*\[\(16, 16\), \(32, 32\)\]"):
        model(*inputs(1, 64, 64))


def test_aspect_ratio_stages():
    model = PoseTransferGenerator(
        start_resolution=(16, 11), final_resolution=(64, 44), base_channels=4, max_channels=8, bottleneck_depth=0
    )
    model.set_stage(2)
    assert model.resolutions == [(16, 11), (32, 22), (64, 44)]
    assert model(*inputs(1, 64, 44)).sample.shape == (1, 3, 64, 44)


def test_only_active_stages_receive_gradients():
    model = tiny_generator()
    model.grow(fade_in_alpha=1.0)  # stage 1 of 3
    model(*inputs(1, 32, 32)).sample.mean().backward()
    assert all(p.grad is None for p in model.to_rgb[2].parameters())
    assert all(p.grad is None for p in model.encoder_stems[2].parameters())
    assert all(p.grad is not None for p in model.to_rgb[1].parameters())


@pytest.mark.parametrize("output_mode", ["residual", "replace"])
def test_fade_in_at_alpha_zero_is_the_upsampled_previous_stage(output_mode):
    # x_s = up(x_{s-1}) + alpha * rgb_s (residual) or (1 - alpha) up(rgb_{s-1}) + alpha rgb_s (replace):
    # at alpha = 0 the grown model reproduces the previous stage run on the downsampled inputs.
    model = tiny_generator(final_resolution=32, output_activation="none", output_mode=output_mode)
    image, reference_pose, target_pose = inputs(2, 32, 32)
    previous = model(*(F.avg_pool2d(t, 2) for t in (image, reference_pose, target_pose))).sample
    model.grow(fade_in_alpha=0.0)
    grown = model(image, reference_pose, target_pose).sample
    torch.testing.assert_close(grown, F.interpolate(previous, scale_factor=2, mode="nearest"), atol=1e-5, rtol=1e-5)
    model.set_fade_in_alpha(1.0)
    assert (model(image, reference_pose, target_pose).sample - grown).abs().max() > 1e-4


def test_residual_mode_keeps_the_low_resolution_path_after_fade_in():
    # With alpha = 1 the residual output is up(x_{s-1}) + rgb_s(h_s): zeroing the new head leaves the old image.
    model = tiny_generator(final_resolution=32, output_activation="none")
    image, reference_pose, target_pose = inputs(1, 32, 32)
    model.grow(fade_in_alpha=1.0)
    with torch.no_grad():
        model.to_rgb[1].weight.zero_()
        model.to_rgb[1].bias.zero_()
    grown = model(image, reference_pose, target_pose).sample
    # What is left is up(x_0): non-zero and constant on every 2x2 block (nearest upsampling).
    assert grown.abs().max() > 0
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        assert torch.equal(grown[..., ::2, ::2], grown[..., dy::2, dx::2])


def test_growth_state_is_saved_and_restored(tmp_path):
    model = tiny_generator()
    model.grow(fade_in_alpha=0.25)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["stage"] == 1 and config["fade_in_alpha"] == 0.25
    reloaded = PoseTransferGenerator.from_pretrained(tmp_path)
    assert reloaded.stage == 1 and reloaded.fade_in_alpha == 0.25 and reloaded.resolution == (32, 32)
    batch = inputs(2, 32, 32)
    torch.testing.assert_close(reloaded(*batch).sample, model(*batch).sample, atol=0, rtol=0)


def test_bad_configuration_and_growth_raise():
    with pytest.raises(ValueError, match="final_resolution"):
        PoseTransferGenerator(start_resolution=16, final_resolution=48)
    with pytest.raises(ValueError, match="bottleneck_depth"):
        PoseTransferGenerator(start_resolution=(16, 12), final_resolution=(32, 24), bottleneck_depth=3)
    with pytest.raises(ValueError, match="output_mode"):
        tiny_generator(output_mode="blend")
    model = tiny_generator(final_resolution=32)
    with pytest.raises(ValueError, match="fade_in_alpha"):
        model.set_stage(0, 0.5)
    with pytest.raises(ValueError, match="stage=2"):
        model.set_stage(2)
    model.grow()
    with pytest.raises(ValueError, match="cannot grow"):
        model.grow()
    with pytest.raises(ValueError, match="target_pose must be a \\(batch, 18"):
        model(torch.zeros(1, 3, 32, 32), torch.zeros(1, 18, 32, 32), torch.zeros(1, 17, 32, 32))
    with pytest.raises(ValueError, match="share batch size"):
        model(torch.zeros(2, 3, 32, 32), torch.zeros(1, 18, 32, 32), torch.zeros(1, 18, 32, 32))


# ---------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------
def test_multiscale_discriminator_scales_and_condition(tmp_path):
    model = MultiScalePatchDiscriminator(base_channels=4, num_layers=2, num_scales=3)
    logits = model(torch.zeros(2, 3, 32, 32), torch.zeros(2, 18, 32, 32))
    assert [tuple(l.shape) for l in logits] == [(2, 1, 8, 8), (2, 1, 4, 4), (2, 1, 2, 2)]
    with pytest.raises(ValueError, match="condition must be"):
        model(torch.zeros(2, 3, 32, 32))
    model.save_pretrained(tmp_path)
    reloaded = MultiScalePatchDiscriminator.from_pretrained(tmp_path).eval()
    x, c = torch.randn(1, 3, 32, 32), torch.rand(1, 18, 32, 32)
    torch.testing.assert_close(reloaded(x, c)[0], model.eval()(x, c)[0])


def test_local_discriminator_one_critic_per_part():
    model = LocalPatchDiscriminator(parts=("face", "torso"), base_channels=4)
    logits = model({"face": torch.zeros(3, 3, 16, 16)})
    assert list(logits) == ["face"] and logits["face"].shape == (3, 1, 4, 4)
    with pytest.raises(ValueError, match="left_hand"):
        model({"left_hand": torch.zeros(1, 3, 16, 16)})


# ---------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------
def test_vgg19_relu_indices_match_torchvision_layout():
    # torchvision's vgg19().features: relu1_1 at 1, relu2_1 at 6, relu3_1 at 11, relu4_1 at 20, relu5_1 at 29.
    assert [VGG19_LAYERS[f"relu{b}_1"] for b in range(1, 6)] == [1, 6, 11, 20, 29]
    assert len(VGG19Features(["relu5_4"]).features) == 36


def test_vgg19_loads_timm_style_safetensors(tmp_path):
    reference = VGG19Features(["relu2_1"])
    state = {f"features.{k}": torch.randn_like(v) for k, v in VGG19Features(["relu5_4"]).features.state_dict().items()}
    state["pre_logits.fc1.weight"] = torch.zeros(2, 2)  # classifier keys are ignored
    save_file(state, tmp_path / "model.safetensors")
    loaded = VGG19Features.from_pretrained(tmp_path, layers=["relu2_1"])
    assert torch.equal(loaded.features[0].weight, state["features.0.weight"])
    assert not torch.equal(loaded.features[0].weight, reference.features[0].weight)
    assert not any(p.requires_grad for p in loaded.parameters())
    save_file({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="not a VGG19 checkpoint"):
        VGG19Features.from_pretrained(tmp_path / "bad.safetensors")


def test_vgg19_unavailable_weights_warn_and_stay_random(caplog):
    with caplog.at_level(logging.WARNING):
        model = VGG19Features.from_pretrained("no-such-org/no-such-vgg", layers=["relu1_1"])
    assert "RANDOM VGG19 weights" in caplog.text
    assert model(torch.zeros(1, 3, 8, 8))["relu1_1"].shape == (1, 64, 8, 8)


def test_adversarial_losses_match_formulas():
    logits = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    assert adversarial_loss(logits, True, "hinge") == torch.relu(1 - logits).mean()
    assert adversarial_loss(logits, False, "hinge") == torch.relu(1 + logits).mean()
    assert adversarial_loss(logits, True, "hinge", for_discriminator=False) == -logits.mean()
    assert adversarial_loss(logits, True, "lsgan") == ((logits - 1) ** 2).mean()
    assert adversarial_loss(logits, False, "lsgan") == (logits**2).mean()
    assert adversarial_loss(logits, True, "lsgan", for_discriminator=False) == ((logits - 1) ** 2).mean()
    mask = torch.tensor([True, False, False, True])
    assert adversarial_loss(logits, True, "lsgan", mask=mask) == ((logits[mask] - 1) ** 2).mean()
    with pytest.raises(ValueError, match="wgan"):
        adversarial_loss(logits, True, "wgan")


def _pose_batch(batch, size):
    keypoints = torch.rand(batch, 18, 2) * (size - 8) + 4
    return keypoints


def test_generator_loss_terms():
    torch.manual_seed(0)
    perceptual = PerceptualLoss(VGG19Features(["relu1_1", "relu2_1"]))
    loss_fn = PoseTransferLoss(perceptual, crop_size=8, l1_weight=2.0)
    real = torch.rand(2, 3, 32, 32) * 2 - 1
    pose = torch.rand(2, 18, 32, 32)
    keypoints = _pose_batch(2, 32)
    zero, terms = loss_fn.generator_loss(real.clone(), real, pose, keypoints)
    assert set(terms) == {"l1", "perceptual", "local_l1", "local_perceptual"} and zero.item() == pytest.approx(
        0, abs=1e-6
    )

    fake = (real + 0.1 * torch.randn_like(real)).requires_grad_(True)
    total, terms = loss_fn.generator_loss(fake, real, pose, keypoints)
    assert terms["l1"] == pytest.approx(2.0 * (fake - real).abs().mean().item(), rel=1e-5)
    total.backward()
    assert fake.grad.abs().sum() > 0

    # Local L1 = mean over present parts of the mean over examples having the part: with only the face of
    # example 0 present (nose, eyes, ears), it is the L1 of that one crop.
    from hf_ext.pose.keypoints import crop_keypoint_regions

    face_only = torch.full((2, 18, 2), float("nan"))
    face_only[0, [0, 14, 15, 16, 17]] = keypoints[0, [0, 14, 15, 16, 17]]
    _, terms = loss_fn.generator_loss(fake, real, pose, face_only)
    crops = crop_keypoint_regions(torch.cat([fake, real], 1).detach(), face_only, parts=["face"], output_size=8)[
        "face"
    ][0]
    assert terms["local_l1"] == pytest.approx((crops[0, :3] - crops[0, 3:]).abs().mean().item(), rel=1e-5)

    # Every joint missing: the local terms are zero (but still computed, so every process runs the same graph).
    total, terms = loss_fn.generator_loss(fake, real, pose, torch.full((2, 18, 2), float("nan")))
    assert terms["local_l1"] == 0 and terms["local_perceptual"] == 0
    assert total.item() == pytest.approx(terms["l1"] + terms["perceptual"], rel=1e-5)


def test_adversarial_terms_use_the_critics():
    loss_fn = PoseTransferLoss(None, perceptual_weight=0, local_perceptual_weight=0, crop_size=8)
    discriminator = MultiScalePatchDiscriminator(base_channels=4, num_layers=2)
    local = LocalPatchDiscriminator(base_channels=4)
    real, fake = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32, requires_grad=True)
    pose, keypoints = torch.rand(2, 18, 32, 32), _pose_batch(2, 32)
    _, terms = loss_fn.generator_loss(fake, real, pose, keypoints, discriminator, local)
    assert {"adversarial", "local_adversarial"} <= set(terms)
    d_total, d_terms = loss_fn.discriminator_loss(fake, real, pose, keypoints, discriminator, local)
    assert set(d_terms) == {"d_global", "d_local"}
    d_total.backward()
    assert fake.grad is None  # the critics' loss does not reach the generator
    assert discriminator.discriminators[0][0].parametrizations.weight.original.grad is not None
    # The critics see real and generated images in one batch; the loss equals separate hinge terms.
    discriminator.eval()  # fixed spectral-norm estimate, so separate calls see the same weights
    _, d_terms = loss_fn.discriminator_loss(fake, real, pose, keypoints, discriminator)
    with torch.no_grad():
        real_logits, fake_logits = discriminator(real, pose), discriminator(fake, pose)
    expected = sum(torch.relu(1 - r).mean() + torch.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)) / 2
    assert d_terms["d_global"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="perceptual must be"):
        PoseTransferLoss(None)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        PoseTransferLoss(None, perceptual_weight=0, local_perceptual_weight=0, l1_weight=-1)
