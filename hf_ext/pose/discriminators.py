"""Discriminators of progressive pose transfer.

- `MultiScalePatchDiscriminator`: the global critic. K patch discriminators (PatchGAN: strided
  convolutions ending in a map of real/fake logits, one per receptive field) see the image and
  the target-pose heatmaps at full, 1/2, ..., 1/2^(K-1) resolution, judging coarse layout and
  fine texture at once.
- `LocalPatchDiscriminator`: one small patch discriminator per body part (face, hands, feet,
  torso) on the crops cut around the target keypoints, so details of small parts get a critic
  of their own.

Both are `ModelMixin`s, so checkpoints are safetensors + JSON config.
"""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _patch_discriminator(in_channels: int, base_channels: int, num_layers: int, spectral_norm: bool) -> nn.Sequential:
    """PatchGAN: `num_layers` stride-2 4x4 convolutions (channels doubling up to 8x) and a 1-channel logit map."""
    wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda module: module)
    layers, channels = [], in_channels
    for index in range(num_layers):
        out = base_channels * min(2**index, 8)
        layers += [wrap(nn.Conv2d(channels, out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        channels = out
    layers += [
        wrap(nn.Conv2d(channels, channels, 3, padding=1)),
        nn.LeakyReLU(0.2),
        wrap(nn.Conv2d(channels, 1, 3, padding=1)),
    ]
    return nn.Sequential(*layers)


class MultiScalePatchDiscriminator(ModelMixin, ConfigMixin):
    r"""
    Global multi-scale patch discriminator on (image, target-pose heatmaps).

    Args:
        in_channels (`int`, *optional*, defaults to 3): image channels.
        condition_channels (`int`, *optional*, defaults to 18): pose heatmap channels concatenated to the image
            (0 for an unconditional critic).
        base_channels (`int`, *optional*, defaults to 64): channels of the first convolution.
        num_layers (`int`, *optional*, defaults to 3): stride-2 convolutions per scale.
        num_scales (`int`, *optional*, defaults to 2): scales; scale k sees the input average-pooled k times.
        spectral_norm (`bool`, *optional*, defaults to `True`): spectral normalisation on every convolution.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        condition_channels: int = 18,
        base_channels: int = 64,
        num_layers: int = 3,
        num_scales: int = 2,
        spectral_norm: bool = True,
    ):
        super().__init__()
        if num_scales < 1 or num_layers < 1:
            raise ValueError(f"num_scales={num_scales} and num_layers={num_layers} must be >= 1")
        self.discriminators = nn.ModuleList(
            _patch_discriminator(in_channels + condition_channels, base_channels, num_layers, spectral_norm)
            for _ in range(num_scales)
        )

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> list[torch.Tensor]:
        """
        Args:
            image (`torch.Tensor`): (batch, in_channels, height, width) in [-1, 1].
            condition (`torch.Tensor`, *optional*): (batch, condition_channels, height, width) heatmaps.

        Returns:
            `list[torch.Tensor]`: one logit map per scale, finest first.
        """
        if self.config.condition_channels:
            if condition is None or condition.shape[1] != self.config.condition_channels:
                raise ValueError(
                    f"condition must be (batch, {self.config.condition_channels}, height, width) pose heatmaps, got "
                    f"{None if condition is None else tuple(condition.shape)}"
                )
            image = torch.cat([image, condition], dim=1)
        logits = []
        for index, discriminator in enumerate(self.discriminators):
            logits.append(discriminator(image))
            if index + 1 < len(self.discriminators):
                image = F.avg_pool2d(image, 3, stride=2, padding=1, count_include_pad=False)
        return logits


class LocalPatchDiscriminator(ModelMixin, ConfigMixin):
    r"""
    One patch discriminator per body part, applied to the part's crops.

    Args:
        parts (`Sequence[str]`, *optional*, defaults to the six crop parts): part names, as in
            `hf_ext.pose.keypoints.CROP_PARTS`.
        in_channels (`int`, *optional*, defaults to 3): image channels.
        base_channels (`int`, *optional*, defaults to 32): channels of the first convolution.
        num_layers (`int`, *optional*, defaults to 2): stride-2 convolutions.
        spectral_norm (`bool`, *optional*, defaults to `True`): spectral normalisation on every convolution.
    """

    @register_to_config
    def __init__(
        self,
        parts: Sequence[str] = ("face", "left_hand", "right_hand", "left_foot", "right_foot", "torso"),
        in_channels: int = 3,
        base_channels: int = 32,
        num_layers: int = 2,
        spectral_norm: bool = True,
    ):
        super().__init__()
        if not parts or len(set(parts)) != len(parts):
            raise ValueError(f"parts={list(parts)} must be a non-empty list of distinct part names")
        self.discriminators = nn.ModuleDict(
            {part: _patch_discriminator(in_channels, base_channels, num_layers, spectral_norm) for part in parts}
        )

    def forward(self, crops: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """
        Args:
            crops (`dict[str, torch.Tensor]`): part -> (batch, in_channels, side, side) crops.

        Returns:
            `dict[str, torch.Tensor]`: part -> logit map.
        """
        unknown = [part for part in crops if part not in self.discriminators]
        if unknown:
            raise ValueError(
                f"crops has parts {unknown} without a discriminator; expected {list(self.discriminators)}"
            )
        return {part: self.discriminators[part](crop) for part, crop in crops.items()}
