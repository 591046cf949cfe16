"""Losses of progressive pose transfer: L1, VGG19 perceptual (whole image and keypoint crops), adversarial.

The generator's objective (weights are `PoseTransferLossWeights`):

    L_G = w_l1 |G - I_t|_1 + w_perc sum_l c_l |phi_l(G) - phi_l(I_t)|_1
        + sum_parts [w_local_l1 |G_p - I_t,p|_1 + w_local_perc sum_l c_l |phi_l(G_p) - phi_l(I_t,p)|_1]
        + w_adv L_adv(D(G, P_t)) + w_local_adv sum_parts L_adv(D_p(G_p))

where phi_l are VGG19 activations (relu1_1 ... relu5_1), G_p the crop of part p (face, hands,
feet, torso) around the target keypoints, D the global multi-scale patch discriminator and D_p
the local ones. L_adv is the hinge or least-squares GAN loss.
"""

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging

from .keypoints import CROP_PARTS, crop_keypoint_regions


logger = logging.get_logger(__name__)

# VGG19's convolutional part: channels per 3x3 convolution (each followed by a ReLU), "M" a 2x2 max-pool.
_VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
ADVERSARIAL_LOSSES = ("hinge", "lsgan")


def _vgg19_layer_names() -> dict[str, int]:
    """Maps 'reluB_C' (block B, convolution C) to the index of that ReLU in the `features` sequence."""
    names, block, conv, index = {}, 1, 0, 0
    for item in _VGG19_LAYOUT:
        if item == "M":
            block, conv, index = block + 1, 0, index + 1
        else:
            conv += 1
            names[f"relu{block}_{conv}"] = index + 1
            index += 2
    return names


VGG19_LAYERS = _vgg19_layer_names()


class VGG19Features(nn.Module):
    """Frozen VGG19 convolutional layers returning the activations of chosen ReLUs.

    The layer indices match torchvision's and timm's `features.<i>` keys, so their VGG19 checkpoints load directly.

    Args:
        layers (`Sequence[str]`, *optional*, defaults to `("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")`):
            ReLUs to return, named `relu<block>_<conv>`; the network is cut after the deepest one.
    """

    def __init__(self, layers: Sequence[str] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")):
        super().__init__()
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if not layers or unknown:
            raise ValueError(f"layers={list(layers)} must be a non-empty list of {list(VGG19_LAYERS)}")
        self.layers = tuple(layers)
        self._indices = {VGG19_LAYERS[name]: name for name in layers}
        modules, in_channels = [], 3
        for item in _VGG19_LAYOUT:
            if item == "M":
                modules.append(nn.MaxPool2d(2, 2))
            else:
                modules += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                in_channels = item
        self.features = nn.Sequential(*modules[: max(self._indices) + 1])
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike | None = "timm/vgg19.tv_in1k", layers=None, **hub_kwargs):
        """Builds the extractor and loads ImageNet weights.

        Args:
            weights (`str` or `os.PathLike`, *optional*, defaults to `"timm/vgg19.tv_in1k"`): a `.safetensors` file,
                a folder holding `model.safetensors`, or a Hub repository id. `None` keeps random weights. When the
                weights cannot be found (offline, no such repository) the weights stay random and a warning says
                so: the perceptual loss then compares random features.
            layers (`Sequence[str]`, *optional*): as in the constructor.
            **hub_kwargs: passed to `hf_hub_download` (`revision`, `cache_dir`, `token`, ...).
        """
        model = cls() if layers is None else cls(layers)
        if weights is None:
            return model
        weights = os.fspath(weights)
        path = os.path.join(weights, "model.safetensors") if os.path.isdir(weights) else weights
        if not os.path.isfile(path):
            try:
                path = hf_hub_download(weights, "model.safetensors", **hub_kwargs)
            except Exception as error:  # offline, missing repository or file: all leave the weights random
                logger.warning(
                    f"VGG19 weights {weights!r} are unavailable ({type(error).__name__}); the perceptual losses use "
                    "RANDOM VGG19 weights. Pass a local safetensors file or go online for ImageNet weights."
                )
                return model
        state = {k.removeprefix("features."): v for k, v in load_file(path).items() if k.startswith("features.")}
        own = model.features.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(
                f"{path} is not a VGG19 checkpoint: it lacks features.{missing[0]} (and {len(missing) - 1} more)"
            )
        model.features.load_state_dict({k: state[k] for k in own})
        return model

    def train(self, mode: bool = True):
        # Always in eval mode: a frozen feature extractor.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Activations of `self.layers` for images in [-1, 1]."""
        hidden = ((images + 1) / 2 - self.mean) / self.std
        outputs = {}
        for index, module in enumerate(self.features):
            hidden = module(hidden)
            if index in self._indices:
                outputs[self._indices[index]] = hidden
        return outputs


class PerceptualLoss(nn.Module):
    """sum_l c_l * mean |phi_l(x) - phi_l(y)| over VGG19 ReLU layers.

    Args:
        features (`VGG19Features`): the frozen extractor.
        layer_weights (`Sequence[float]`, *optional*): c_l per layer of `features.layers`; defaults to 1 each.
    """

    def __init__(self, features: VGG19Features, layer_weights: Sequence[float] | None = None):
        super().__init__()
        self.features = features
        layer_weights = [1.0] * len(features.layers) if layer_weights is None else list(layer_weights)
        if len(layer_weights) != len(features.layers):
            raise ValueError(
                f"layer_weights has {len(layer_weights)} values for {len(features.layers)} layers {features.layers}"
            )
        self.layer_weights = dict(zip(features.layers, layer_weights))

    def per_example(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each example, shape (batch,)."""
        # One pass over both images; the target's features carry no gradient.
        batch = prediction.shape[0]
        features = self.features(torch.cat([prediction, target.detach()]))
        return sum(
            weight * (features[name][:batch] - features[name][batch:]).abs().flatten(1).mean(1)
            for name, weight in self.layer_weights.items()
        )

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss averaged over the batch, or over the examples where the bool `mask` (batch,) is True."""
        return masked_mean(self.per_example(prediction, target), mask)


def adversarial_loss(
    logits: torch.Tensor,
    real: bool,
    mode: str = "hinge",
    for_discriminator: bool = True,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """GAN loss on discriminator logits.

    hinge: D minimises relu(1 - D(x)) on real and relu(1 + D(G)) on fake; G minimises -D(G).
    lsgan: D minimises (D(x) - 1)^2 on real and D(G)^2 on fake; G minimises (D(G) - 1)^2.

    Args:
        logits (`torch.Tensor`): discriminator output (batch, ...), averaged.
        real (`bool`): whether the logits are of real images (for the generator's loss, pass `True`).
        mode (`str`, *optional*, defaults to `"hinge"`): `"hinge"` or `"lsgan"`.
        for_discriminator (`bool`, *optional*, defaults to `True`): the discriminator's loss, or the generator's.
        mask (`torch.Tensor`, *optional*): bool (batch,); average only over the examples where it is True.
    """
    if mode not in ADVERSARIAL_LOSSES:
        raise ValueError(f"mode={mode!r} is not an adversarial loss; expected one of {list(ADVERSARIAL_LOSSES)}")
    if mode == "hinge":
        if not for_discriminator:
            values = -logits
        else:
            values = F.relu(1 - logits) if real else F.relu(1 + logits)
    else:
        values = (logits - 1) ** 2 if real else logits**2
    return masked_mean(values.reshape(values.shape[0], -1).mean(1), mask)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of per-example `values` (batch,) over the examples where `mask` is True (all when None); 0 when none is."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)


class PoseTransferLoss(nn.Module):
    """The generator's and the discriminators' objectives (the equations in the module docstring).

    Args:
        perceptual (`PerceptualLoss`, *optional*): VGG19 perceptual loss; required when a perceptual weight is > 0.
        l1_weight, perceptual_weight (`float`, *optional*, defaults to 1.0): whole-image terms.
        local_l1_weight, local_perceptual_weight (`float`, *optional*, defaults to 1.0): terms on the keypoint
            crops, each averaged over the parts present.
        adversarial_weight, local_adversarial_weight (`float`, *optional*, defaults to 0.1): generator's GAN terms
            against the global and the local discriminators.
        adversarial_mode (`str`, *optional*, defaults to `"hinge"`): `"hinge"` or `"lsgan"`.
        parts (`Sequence[str]`, *optional*): body parts for the local terms (`hf_ext.pose.keypoints.CROP_PARTS`).
        crop_size (`int`, *optional*, defaults to 32): side every crop is resized to, so parts batch together.
    """

    def __init__(
        self,
        perceptual: PerceptualLoss | None = None,
        l1_weight: float = 1.0,
        perceptual_weight: float = 1.0,
        local_l1_weight: float = 1.0,
        local_perceptual_weight: float = 1.0,
        adversarial_weight: float = 0.1,
        local_adversarial_weight: float = 0.1,
        adversarial_mode: str = "hinge",
        parts: Sequence[str] = CROP_PARTS,
        crop_size: int = 32,
    ):
        super().__init__()
        weights = dict(
            l1_weight=l1_weight,
            perceptual_weight=perceptual_weight,
            local_l1_weight=local_l1_weight,
            local_perceptual_weight=local_perceptual_weight,
            adversarial_weight=adversarial_weight,
            local_adversarial_weight=local_adversarial_weight,
        )
        negative = {k: v for k, v in weights.items() if not v >= 0}
        if negative:
            raise ValueError(f"loss weights must be >= 0, got {negative}")
        if perceptual is None and (perceptual_weight > 0 or local_perceptual_weight > 0):
            raise ValueError(
                "perceptual must be a PerceptualLoss when perceptual_weight or local_perceptual_weight > 0"
            )
        if adversarial_mode not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial_mode={adversarial_mode!r}; expected one of {list(ADVERSARIAL_LOSSES)}")
        self.perceptual = perceptual
        self.weights = weights
        self.adversarial_mode = adversarial_mode
        self.parts = tuple(parts)
        self.crop_size = crop_size

    @property
    def uses_local_terms(self) -> bool:
        w = self.weights
        return w["local_l1_weight"] > 0 or w["local_perceptual_weight"] > 0 or w["local_adversarial_weight"] > 0

    def crops(self, fake: torch.Tensor, real: torch.Tensor, target_keypoints: torch.Tensor) -> dict:
        """part -> (fake crops, real crops, present), every part for every example (zeros where the part is
        missing, `present` False). Both images are cut in one call, stacked on the channel axis, so they share
        boxes. Keeping every crop keeps the computation the same on every process whatever the poses."""
        channels = fake.shape[1]
        regions = crop_keypoint_regions(
            torch.cat([fake, real], dim=1), target_keypoints, parts=self.parts, output_size=self.crop_size
        )
        return {
            part: (crops[:, :channels], crops[:, channels:], present) for part, (crops, present) in regions.items()
        }

    @staticmethod
    def _mean_over_parts(per_part: dict, crops: dict) -> torch.Tensor:
        """Mean of per-part losses (each already averaged over the examples having the part, 0 for none) over the
        parts present in at least one example."""
        parts_present = sum(int(present.any()) for _, _, present in crops.values())
        return sum(per_part.values()) / max(parts_present, 1)

    @staticmethod
    def _split_by_part(values: torch.Tensor, crops: dict) -> dict:
        """Per-example losses of the concatenated crops -> part -> mean over the examples having the part."""
        return {
            part: masked_mean(chunk, present)
            for chunk, (part, (_, _, present)) in zip(values.chunk(len(crops)), crops.items())
        }

    def generator_loss(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        target_pose: torch.Tensor,
        target_keypoints: torch.Tensor,
        discriminator=None,
        local_discriminator=None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """L_G for generated images `fake` against ground truth `real`.

        Args:
            fake, real (`torch.Tensor`): (batch, 3, H, W) in [-1, 1].
            target_pose (`torch.Tensor`): (batch, 18, H, W) heatmaps (the global discriminator's condition).
            target_keypoints (`torch.Tensor`): (batch, 18, 2) pixels at (H, W), NaN = missing (for the crops).
            discriminator (`MultiScalePatchDiscriminator`, *optional*): global critic; its term is skipped when None.
            local_discriminator (`LocalPatchDiscriminator`, *optional*): local critics; skipped when None.

        Returns:
            `tuple[torch.Tensor, dict[str, float]]`: the total loss and each weighted term, for logging.
        """
        w = self.weights
        terms = {}
        if w["l1_weight"] > 0:
            terms["l1"] = w["l1_weight"] * F.l1_loss(fake, real)
        if w["perceptual_weight"] > 0:
            terms["perceptual"] = w["perceptual_weight"] * self.perceptual(fake, real)
        if discriminator is not None and w["adversarial_weight"] > 0:
            logits = discriminator(fake, target_pose)
            terms["adversarial"] = (
                w["adversarial_weight"]
                * sum(adversarial_loss(l, True, self.adversarial_mode, for_discriminator=False) for l in logits)
                / len(logits)
            )
        if self.uses_local_terms:
            crops = self.crops(fake, real, target_keypoints)
            fake_crops = torch.cat([f for f, _, _ in crops.values()])
            real_crops = torch.cat([r for _, r, _ in crops.values()])
            if w["local_l1_weight"] > 0:
                l1 = (fake_crops - real_crops).abs().flatten(1).mean(1)
                terms["local_l1"] = w["local_l1_weight"] * self._mean_over_parts(self._split_by_part(l1, crops), crops)
            if w["local_perceptual_weight"] > 0:
                # All parts' crops through VGG19 in one pass.
                perceptual = self.perceptual.per_example(fake_crops, real_crops)
                terms["local_perceptual"] = w["local_perceptual_weight"] * self._mean_over_parts(
                    self._split_by_part(perceptual, crops), crops
                )
            if local_discriminator is not None and w["local_adversarial_weight"] > 0:
                logits = local_discriminator({p: f for p, (f, _, _) in crops.items()})
                adversarial = {
                    p: adversarial_loss(logits[p], True, self.adversarial_mode, False, mask=m)
                    for p, (_, _, m) in crops.items()
                }
                terms["local_adversarial"] = w["local_adversarial_weight"] * self._mean_over_parts(adversarial, crops)
        total = sum(terms.values()) if terms else fake.sum() * 0
        return total, {name: float(value.detach()) for name, value in terms.items()}

    def discriminator_loss(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        target_pose: torch.Tensor,
        target_keypoints: torch.Tensor,
        discriminator=None,
        local_discriminator=None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The critics' loss: real images scored real, generated ones (detached) fake, globally and per part.

        Args: as in `generator_loss`.

        Returns:
            `tuple[torch.Tensor, dict[str, float]]`: the total loss and its terms.
        """
        fake = fake.detach()
        terms = {}
        # Real and generated images go through each critic in one batch: one forward per critic and step.
        if discriminator is not None:
            logits = discriminator(torch.cat([real, fake]), torch.cat([target_pose, target_pose]))
            terms["d_global"] = sum(
                adversarial_loss(r, True, self.adversarial_mode) + adversarial_loss(f, False, self.adversarial_mode)
                for r, f in (scale.chunk(2) for scale in logits)
            ) / len(logits)
        if local_discriminator is not None:
            crops = self.crops(fake, real, target_keypoints)
            logits = local_discriminator({p: torch.cat([r, f]) for p, (f, r, _) in crops.items()})
            losses = {}
            for part, (_, _, present) in crops.items():
                real_logits, fake_logits = logits[part].chunk(2)
                losses[part] = adversarial_loss(
                    real_logits, True, self.adversarial_mode, mask=present
                ) + adversarial_loss(fake_logits, False, self.adversarial_mode, mask=present)
            terms["d_local"] = self._mean_over_parts(losses, crops)
        total = sum(terms.values()) if terms else real.sum() * 0
        return total, {name: float(value.detach()) for name, value in terms.items()}
