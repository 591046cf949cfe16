"""Progressive pose-guided encoder-decoder (after Liu et al., arXiv 2008.11898).

The generator maps (reference image I_r, reference pose P_r, target pose P_t) to the
reference person in the target pose, I_t = G(I_r, P_r, P_t), in one forward pass.

- Encoder: the reference image and its 18 pose heatmaps enter at the current stage's
  resolution and are downsampled block by block to a bottleneck; the feature map of
  every scale is kept (the appearance at multiple scales).
- Decoder: from the bottleneck back up; at each scale it reads the encoder's feature of
  that scale and the target-pose heatmaps resized to that scale, so the target pose
  drives every scale.
- Output: one to-RGB head per stage. In the default `"residual"` mode the image of stage
  s is the upsampled image of stage s - 1 plus a detail image of stage s,
  x_s = up(x_{s-1}) + alpha_s * rgb_s(h_s), so growing keeps the low-resolution path and
  fades a detail branch in on top. `"replace"` is the classic progressive-GAN blend
  x_s = (1 - alpha) * up(rgb_{s-1}(h_{s-1})) + alpha * rgb_s(h_s).
- Growth: stages run from `start_resolution` to `final_resolution`, doubling each side.
  Every stage's blocks exist from construction (so the weights of a grown model load into
  a fresh one); `stage` and `fade_in_alpha` select the active part and are part of the
  config that `save_pretrained` writes. On fade-in the encoder input is blended the same
  way: (1 - alpha) * stem_{s-1}(down(x)) + alpha * down(block_s(stem_s(x))).

This file imports only torch and diffusers: it is shipped next to saved pipelines and
loaded as remote code where this package is not installed.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


_ACTIVATIONS = {"leaky_relu": lambda: nn.LeakyReLU(0.2), "relu": nn.ReLU, "silu": nn.SiLU}
_NORMS = ("group", "instance", "none")
_OUTPUT_MODES = ("residual", "replace")
_UPSAMPLE_MODES = ("nearest", "bilinear")


@dataclass
class PoseTransferGeneratorOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch_size, 3, height, width)`):
            The generated image in [-1, 1] (with `output_activation="tanh"`).
    """

    sample: torch.Tensor


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class _ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by a normalisation and an activation."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, act_fn: str):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            _norm(norm, out_channels),
            _ACTIVATIONS[act_fn](),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            _norm(norm, out_channels),
            _ACTIVATIONS[act_fn](),
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layers(hidden_states)


def _as_size(value, name: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a positive int or a (height, width) pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


class PoseTransferGenerator(ModelMixin, ConfigMixin):
    r"""
    A progressively grown encoder-decoder that renders a reference person in a target pose.

    Args:
        start_resolution (`int` or `tuple[int, int]`, *optional*, defaults to `64`):
            (height, width) of the first stage; an int means a square.
        final_resolution (`int` or `tuple[int, int]`, *optional*, defaults to `1024`):
            (height, width) of the last stage; each side must be `start_resolution` times the same power of two
            (e.g. start `(64, 44)`, final `(256, 176)` for DeepFashion's aspect ratio).
        in_channels (`int`, *optional*, defaults to 3): channels of the reference and output images.
        num_keypoints (`int`, *optional*, defaults to 18): heatmap channels per pose.
        base_channels (`int`, *optional*, defaults to 16): channels of the blocks at the final resolution; each
            coarser scale doubles them up to `max_channels`.
        max_channels (`int`, *optional*, defaults to 256): channel cap.
        bottleneck_depth (`int`, *optional*, defaults to 3): downsamplings below `start_resolution`; each side of
            the start resolution must be divisible by `2 ** bottleneck_depth`.
        norm (`str`, *optional*, defaults to `"group"`): `"group"`, `"instance"` or `"none"`.
        act_fn (`str`, *optional*, defaults to `"leaky_relu"`): `"leaky_relu"` (slope 0.2), `"relu"` or `"silu"`.
        upsample_mode (`str`, *optional*, defaults to `"nearest"`): `"nearest"` or `"bilinear"`, for features
            and images.
        output_mode (`str`, *optional*, defaults to `"residual"`): `"residual"` (each stage adds detail to the
            upsampled image of the stage below) or `"replace"` (progressive-GAN fade between to-RGB heads).
        output_activation (`str`, *optional*, defaults to `"tanh"`): `"tanh"` or `"none"`.
        stage (`int`, *optional*, defaults to 0): the stage grown to (0 = `start_resolution`).
        fade_in_alpha (`float`, *optional*, defaults to 1.0): blend weight of the newest stage; below 1 while it
            fades in, 1 once it is stable.
    """

    @register_to_config
    def __init__(
        self,
        start_resolution: int | tuple[int, int] = 64,
        final_resolution: int | tuple[int, int] = 1024,
        in_channels: int = 3,
        num_keypoints: int = 18,
        base_channels: int = 16,
        max_channels: int = 256,
        bottleneck_depth: int = 3,
        norm: str = "group",
        act_fn: str = "leaky_relu",
        upsample_mode: str = "nearest",
        output_mode: str = "residual",
        output_activation: str = "tanh",
        stage: int = 0,
        fade_in_alpha: float = 1.0,
    ):
        super().__init__()
        start, final = _as_size(start_resolution, "start_resolution"), _as_size(final_resolution, "final_resolution")
        factor = final[0] // start[0]
        if final[0] % start[0] or factor < 1 or factor & (factor - 1) or final[1] != start[1] * factor:
            raise ValueError(
                f"final_resolution={final} must be start_resolution={start} times one power of two on both sides"
            )
        if bottleneck_depth < 0 or start[0] % 2 ** bottleneck_depth or start[1] % 2**bottleneck_depth:
            raise ValueError(
                f"bottleneck_depth={bottleneck_depth} must be >= 0 with start_resolution={start} divisible by "
                f"2 ** bottleneck_depth = {2**bottleneck_depth}"
            )
        for name, value, allowed in (
            ("norm", norm, _NORMS),
            ("act_fn", act_fn, tuple(_ACTIVATIONS)),
            ("upsample_mode", upsample_mode, _UPSAMPLE_MODES),
            ("output_mode", output_mode, _OUTPUT_MODES),
            ("output_activation", output_activation, ("tanh", "none")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; expected one of {list(allowed)}")
        if base_channels < 1 or max_channels < base_channels:
            raise ValueError(
                f"base_channels={base_channels} and max_channels={max_channels} must satisfy 1 <= base <= max"
            )
        self.num_stages = factor.bit_length()
        self.resolutions = [(start[0] * 2**s, start[1] * 2**s) for s in range(self.num_stages)]
        self._check_stage(stage, fade_in_alpha)

        # Channels double at each scale below the final resolution: the stage s block works at
        # 2 ** (num_stages - 1 - s) times the final resolution's channels.
        def channels(scales_below_final: int) -> int:
            return min(max_channels, base_channels * 2**scales_below_final)

        stage_channels = [channels(self.num_stages - 1 - s) for s in range(self.num_stages)]
        core_channels = [channels(self.num_stages - 1 + d) for d in range(1, bottleneck_depth + 1)]
        # Block s ends with the channels of the next coarser scale, where its output goes after pooling.
        coarser = [core_channels[0] if bottleneck_depth else stage_channels[0], *stage_channels[:-1]]
        deeper = [core_channels[min(d + 1, bottleneck_depth - 1)] for d in range(bottleneck_depth)]

        # Encoder: a 1x1 stem per stage reads (I_r, P_r) at that stage's resolution.
        self.encoder_stems = nn.ModuleList(nn.Conv2d(in_channels + num_keypoints, c, 1) for c in stage_channels)
        self.encoder_blocks = nn.ModuleList(
            _ConvBlock(stage_channels[s], coarser[s], norm, act_fn) for s in range(self.num_stages)
        )
        self.bottleneck_encoder = nn.ModuleList(
            _ConvBlock(core_channels[d], deeper[d], norm, act_fn) for d in range(bottleneck_depth)
        )

        # Decoder: each scale reads [upsampled decoder features, encoder features, P_t at that scale].
        self.bottleneck_decoder = nn.ModuleList(
            _ConvBlock(2 * deeper[d] + num_keypoints, core_channels[d], norm, act_fn) for d in range(bottleneck_depth)
        )
        # Stage 0 reads the bottleneck's output (or its own encoder features without a bottleneck).
        decoder_in = [coarser[0], *stage_channels[:-1]]
        self.decoder_blocks = nn.ModuleList(
            _ConvBlock(decoder_in[s] + coarser[s] + num_keypoints, stage_channels[s], norm, act_fn)
            for s in range(self.num_stages)
        )
        self.to_rgb = nn.ModuleList(nn.Conv2d(c, in_channels, 1) for c in stage_channels)

    # ----------------------------------------------------------------------------------
    # Growth state
    # ----------------------------------------------------------------------------------
    def _check_stage(self, stage, alpha):
        if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < self.num_stages:
            raise ValueError(
                f"stage={stage!r} must be an int in [0, {self.num_stages - 1}] (resolutions {self.resolutions})"
            )
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"fade_in_alpha={alpha!r} must be in [0, 1]")
        if stage == 0 and alpha != 1.0:
            raise ValueError(
                f"fade_in_alpha={alpha!r} must be 1.0 at stage 0: the first stage has nothing to fade from"
            )

    @property
    def stage(self) -> int:
        """The stage grown to (0 = `start_resolution`)."""
        return self.config.stage

    @property
    def fade_in_alpha(self) -> float:
        """Blend weight of the newest stage (1.0 once it is stable)."""
        return self.config.fade_in_alpha

    @property
    def resolution(self) -> tuple[int, int]:
        """(height, width) of the current stage: the size of the generator's output."""
        return self.resolutions[self.stage]

    @property
    def available_resolutions(self) -> list[tuple[int, int]]:
        """(height, width) of every stage grown so far; `forward` runs at any of them."""
        return self.resolutions[: self.stage + 1]

    def set_stage(self, stage: int, fade_in_alpha: float = 1.0):
        """Selects the stage (and its fade-in weight); recorded in the config that `save_pretrained` writes.

        Args:
            stage (`int`): index into `resolutions`.
            fade_in_alpha (`float`, *optional*, defaults to 1.0): blend weight of that stage.
        """
        self._check_stage(stage, fade_in_alpha)
        self.register_to_config(stage=stage, fade_in_alpha=float(fade_in_alpha))

    def set_fade_in_alpha(self, fade_in_alpha: float):
        """Sets the blend weight of the current stage."""
        self.set_stage(self.stage, fade_in_alpha)

    def grow(self, fade_in_alpha: float = 0.0):
        """Adds the next stage, starting its fade-in at `fade_in_alpha`.

        Raises:
            `ValueError`: when already at `final_resolution`.
        """
        if self.stage + 1 >= self.num_stages:
            raise ValueError(f"the generator is already at its final resolution {self.resolution}; it cannot grow")
        self.set_stage(self.stage + 1, fade_in_alpha)

    def stage_for_resolution(self, resolution) -> int:
        """Index of the grown stage with this (height, width).

        Raises:
            `ValueError`: listing the available resolutions when the generator has not grown to it.
        """
        resolution = _as_size(tuple(resolution) if not isinstance(resolution, int) else resolution, "resolution")
        if resolution not in self.available_resolutions:
            raise ValueError(
                f"resolution {resolution} (height, width) is not available: the generator has grown to "
                f"{self.available_resolutions} (configured stages: {self.resolutions})"
            )
        return self.resolutions.index(resolution)

    # ----------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------
    def _resize(self, tensor: torch.Tensor, size) -> torch.Tensor:
        if tuple(tensor.shape[-2:]) == tuple(size):
            return tensor
        if tensor.shape[-1] > size[-1]:  # downsampling: average, so small heatmap peaks survive
            return F.interpolate(tensor, size=size, mode="area")
        mode = self.config.upsample_mode
        return F.interpolate(tensor, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))

    def forward(
        self,
        reference_image: torch.Tensor,
        reference_pose: torch.Tensor,
        target_pose: torch.Tensor,
        return_dict: bool = True,
    ) -> PoseTransferGeneratorOutput | tuple:
        r"""
        Args:
            reference_image (`torch.Tensor` of shape `(batch_size, 3, height, width)`): the person, in [-1, 1].
            reference_pose (`torch.Tensor` of shape `(batch_size, 18, height, width)`): heatmaps of the reference
                image's pose, in [0, 1].
            target_pose (`torch.Tensor` of shape `(batch_size, 18, height, width)`): heatmaps of the target pose.
            return_dict (`bool`, *optional*, defaults to `True`): return a `PoseTransferGeneratorOutput` instead
                of a tuple.

        The (height, width) of the inputs selects the stage: any resolution in `available_resolutions`; stages
        below the current one run fully faded in.

        Returns:
            `PoseTransferGeneratorOutput` or `tuple`: the generated image at the inputs' resolution.
        """
        expected = {"reference_image": self.config.in_channels, "reference_pose": self.config.num_keypoints}
        expected["target_pose"] = self.config.num_keypoints
        tensors = {"reference_image": reference_image, "reference_pose": reference_pose, "target_pose": target_pose}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4 or tensor.shape[1] != expected[name]:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise ValueError(f"{name} must be a (batch, {expected[name]}, height, width) tensor, got {shape}")
        if (
            len({tuple(t.shape[-2:]) for t in tensors.values()}) != 1
            or len({t.shape[0] for t in tensors.values()}) != 1
        ):
            raise ValueError(
                "reference_image, reference_pose and target_pose must share batch size and (height, width), got "
                f"{[tuple(t.shape) for t in tensors.values()]}"
            )
        stage = self.stage_for_resolution(tuple(reference_image.shape[-2:]))
        alpha = self.fade_in_alpha if stage == self.stage else 1.0

        skips = self._encode(torch.cat([reference_image, reference_pose], dim=1), stage, alpha)
        image = self._decode(skips, target_pose, stage, alpha)
        if self.config.output_activation == "tanh":
            image = torch.tanh(image)
        return PoseTransferGeneratorOutput(sample=image) if return_dict else (image,)

    def _encode(self, inputs: torch.Tensor, stage: int, alpha: float) -> list[torch.Tensor]:
        """Features of every scale, finest first: [stage `stage`, ..., stage 0, bottleneck levels...]."""
        skips = []
        hidden = self.encoder_stems[stage](inputs)
        for s in range(stage, -1, -1):
            hidden = self.encoder_blocks[s](hidden)
            skips.append(hidden)
            hidden = F.avg_pool2d(hidden, 2) if (s > 0 or self.config.bottleneck_depth) else hidden
            if s == stage and stage > 0 and alpha < 1.0:
                # Fade-in: blend with the previous stage's stem on the downsampled input.
                hidden = alpha * hidden + (1 - alpha) * self.encoder_stems[s - 1](F.avg_pool2d(inputs, 2))
        for block in self.bottleneck_encoder:
            hidden = block(hidden)
            skips.append(hidden)
            hidden = F.avg_pool2d(hidden, 2) if block is not self.bottleneck_encoder[-1] else hidden
        return skips

    def _decode(self, skips: list[torch.Tensor], target_pose: torch.Tensor, stage: int, alpha: float) -> torch.Tensor:
        """Runs the decoder from the bottleneck up, returning the (pre-activation) image of stage `stage`."""
        skips = skips[::-1]  # coarsest first
        depth = self.config.bottleneck_depth
        hidden = skips[0]
        # Bottleneck levels, deepest first; the deepest reads its own encoder features.
        for d in range(depth - 1, -1, -1):
            skip = skips[depth - 1 - d]
            hidden = self._resize(hidden, skip.shape[-2:])
            hidden = self.bottleneck_decoder[d](
                torch.cat([hidden, skip, self._resize(target_pose, skip.shape[-2:])], 1)
            )
        image = previous_rgb = None
        for s in range(stage + 1):
            skip = skips[depth + s]
            size = skip.shape[-2:]
            hidden = self.decoder_blocks[s](
                torch.cat([self._resize(hidden, size), skip, self._resize(target_pose, size)], dim=1)
            )
            rgb = self.to_rgb[s](hidden)
            weight = alpha if s == stage else 1.0
            if image is None:
                image = rgb
            elif self.config.output_mode == "residual":
                # x_s = up(x_{s-1}) + alpha_s * rgb_s(h_s): the low-resolution path stays, detail is added.
                image = self._resize(image, size) + weight * rgb
            else:
                # x_s = (1 - alpha) * up(rgb_{s-1}(h_{s-1})) + alpha * rgb_s(h_s).
                image = (1 - weight) * self._resize(previous_rgb, size) + weight * rgb
            previous_rgb = rgb
        return image
