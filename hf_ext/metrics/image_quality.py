"""Image-quality metrics for pose transfer: SSIM, PSNR, SSIM on body-part crops and on the person.

SSIM follows Wang et al. (2004) with the usual settings (11x11 Gaussian window, sigma 1.5,
K1 = 0.01, K2 = 0.03, data range 1): for each window

    SSIM(x, y) = (2 mu_x mu_y + C1) (2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (sigma_x^2 + sigma_y^2 + C2)),

computed per colour channel. Only windows that lie fully inside the image count (no padding:
padding to 256x256 or zero-padding the border inflates SSIM). The image score is the mean of
the SSIM map; the local-crop and person scores are its mean over the windows centred inside the
crop boxes (`hf_ext.pose.keypoints.keypoint_crops`) or inside the person mask, so they are
defined at any resolution, even where a crop is smaller than the window.

`PoseTransferQuality` wraps `pose_transfer_metrics` as an `evaluate` metric:
`evaluate.load(hf_ext.metrics.image_quality.__file__)`.

LPIPS and FID need pretrained networks: `optional_perceptual_metrics` computes them with
torchmetrics only when their weights are already on disk and otherwise says why it skipped them.
"""

import os

import datasets
import evaluate
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.utils import logging


logger = logging.get_logger(__name__)

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03


def to_image_tensor(images, value_range=(0.0, 1.0), name: str = "images") -> torch.Tensor:
    """Converts images to a float64 (batch, channels, height, width) tensor in [0, 1].

    Args:
        images: a PIL image or a list of them; a uint8 array (H, W, C) or (B, H, W, C) (scaled by 1/255);
            a float array or tensor (C, H, W) or (B, C, H, W) with values in `value_range`.
        value_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): range of float inputs,
            e.g. `(-1.0, 1.0)` for generator outputs.
        name (`str`, *optional*, defaults to `"images"`): argument name used in error messages.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)) and images and all(isinstance(i, Image.Image) for i in images):
        images = np.stack([np.asarray(i.convert("RGB")) for i in images])
    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        array = images[None] if images.ndim == 3 else images
        if array.ndim != 4:
            raise ValueError(f"{name} as uint8 must be (H, W, C) or (B, H, W, C), got shape {images.shape}")
        return torch.from_numpy(array.astype(np.float64) / 255).permute(0, 3, 1, 2)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be PIL images, a numpy array or a tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"{name} as a tensor must be floating point in {value_range}, got dtype {images.dtype}")
    tensor = images.detach().to("cpu", torch.float64)
    tensor = tensor[None] if tensor.ndim == 3 else tensor
    if tensor.ndim != 4:
        raise ValueError(f"{name} must be (C, H, W) or (B, C, H, W), got shape {tuple(images.shape)}")
    low, high = value_range
    return ((tensor - low) / (high - low)).clamp(0, 1)


def _gaussian_window(size, sigma):
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _check_pair(prediction, target, value_range):
    prediction = to_image_tensor(prediction, value_range, "prediction")
    target = to_image_tensor(target, value_range, "target")
    if prediction.shape != target.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(prediction.shape)} and {tuple(target.shape)}")
    return prediction, target


def ssim_map(prediction, target, value_range=(0.0, 1.0), window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The SSIM of every fully-inside window, averaged over channels.

    Args:
        prediction, target: images (see `to_image_tensor`) of the same shape.
        value_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`): range of float inputs.
        window_size (`int`, *optional*, defaults to 11), sigma (`float`, *optional*, defaults to 1.5): Gaussian window.

    Returns:
        `torch.Tensor`: float64 (batch, H - window_size + 1, W - window_size + 1); entry (i, j) belongs to the window
        centred on pixel (i + window_size // 2, j + window_size // 2).
    """
    x, y = _check_pair(prediction, target, value_range)
    height, width = x.shape[-2:]
    if min(height, width) < window_size:
        raise ValueError(f"images must be at least {window_size}x{window_size} for SSIM without padding, got {height}x{width}")
    channels = x.shape[1]
    g = _gaussian_window(window_size, sigma)

    def blur(t):  # separable Gaussian, valid region only
        t = F.conv2d(t, g.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        return F.conv2d(t, g.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)

    c1, c2 = _K1**2, _K2**2  # data range 1
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim.mean(dim=1)


def ssim(prediction, target, value_range=(0.0, 1.0)) -> torch.Tensor:
    """SSIM per image (mean of `ssim_map`), without padding.

    Returns:
        `torch.Tensor`: float64 (batch,).
    """
    return ssim_map(prediction, target, value_range).mean(dim=(1, 2))


def psnr(prediction, target, value_range=(0.0, 1.0)) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(1 / MSE) on [0, 1] images (inf for identical images).

    Returns:
        `torch.Tensor`: float64 (batch,) in dB.
    """
    x, y = _check_pair(prediction, target, value_range)
    mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


def _region_ssim(ssim_values, regions, window_size=SSIM_WINDOW):
    """Mean of each SSIM map over the windows centred inside a (batch, H, W) bool region; NaN where empty."""
    r = window_size // 2
    inside = regions[:, r : regions.shape[1] - r, r : regions.shape[2] - r].to(ssim_values.dtype)
    count = inside.sum(dim=(1, 2))
    total = (ssim_values * inside).sum(dim=(1, 2))
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, float("nan")))


def masked_ssim(prediction, target, mask, value_range=(0.0, 1.0)) -> torch.Tensor:
    """SSIM on the person's region: the mean SSIM of windows centred inside `mask`.

    Args:
        prediction, target: images (see `to_image_tensor`).
        mask (`torch.Tensor` or `np.ndarray`): (batch, H, W), (batch, 1, H, W) or (H, W); nonzero = person.

    Returns:
        `torch.Tensor`: float64 (batch,), NaN for an image whose mask is empty (away from the border).
    """
    values = ssim_map(prediction, target, value_range)
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).cpu()
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask[None]
    expected = (values.shape[0], values.shape[1] + SSIM_WINDOW - 1, values.shape[2] + SSIM_WINDOW - 1)
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape {expected} (batch, height, width) to match the images, got {tuple(mask.shape)}")
    return _region_ssim(values, mask != 0)


def local_ssim(prediction, target, keypoints, parts=None, value_range=(0.0, 1.0)) -> dict:
    """SSIM on body-part crops (face, hands, feet, torso) placed from the target pose.

    Args:
        prediction, target: images (see `to_image_tensor`).
        keypoints (`np.ndarray` or `torch.Tensor`): (batch, 18, 2) target poses in pixels of the images.
        parts (`Sequence[str]`, *optional*): crop names; defaults to all of `hf_ext.pose.keypoints.CROP_PARTS`.

    Returns:
        `dict[str, torch.Tensor]`: part -> float64 (batch,) SSIM, NaN where the part is missing; and `"mean"`:
        per image, the mean over the parts present.
    """
    from hf_ext.pose.keypoints import CROP_PARTS, keypoint_crops

    parts = CROP_PARTS if parts is None else parts
    values = ssim_map(prediction, target, value_range)
    batch, height, width = values.shape[0], values.shape[1] + SSIM_WINDOW - 1, values.shape[2] + SSIM_WINDOW - 1
    keypoints = keypoints.detach().cpu().numpy() if hasattr(keypoints, "detach") else np.asarray(keypoints)
    if keypoints.shape != (batch, 18, 2):
        raise ValueError(f"keypoints must have shape ({batch}, 18, 2) to match the images, got {keypoints.shape}")
    regions = {part: torch.zeros(batch, height, width, dtype=torch.bool) for part in parts}
    for i in range(batch):
        for part, box in keypoint_crops(keypoints[i], height, width, parts).items():
            if box is not None:
                x0, y0, x1, y1 = box
                regions[part][i, y0:y1, x0:x1] = True
    scores = {part: _region_ssim(values, region) for part, region in regions.items()}
    stacked = torch.stack(list(scores.values()))
    scores["mean"] = torch.nanmean(stacked, dim=0)
    return scores


def pose_transfer_metrics(predictions, targets, keypoints=None, masks=None, value_range=(0.0, 1.0)) -> dict:
    """The benchmark's scores averaged over a set of images.

    Args:
        predictions, targets: images (see `to_image_tensor`).
        keypoints (*optional*): (batch, 18, 2) target poses, for `local_ssim`.
        masks (*optional*): (batch, H, W) target person masks, for `person_ssim`.

    Returns:
        `dict[str, float]`: `ssim`, `psnr`, and `local_ssim` / `person_ssim` when keypoints / masks are given.
    """
    scores = {
        "ssim": float(ssim(predictions, targets, value_range).mean()),
        "psnr": float(psnr(predictions, targets, value_range).mean()),
    }
    if keypoints is not None:
        scores["local_ssim"] = float(torch.nanmean(local_ssim(predictions, targets, keypoints, value_range=value_range)["mean"]))
    if masks is not None:
        scores["person_ssim"] = float(torch.nanmean(masked_ssim(predictions, targets, masks, value_range)))
    return scores


# Weight files torchmetrics would otherwise download: torch-fidelity's FID Inception and torchvision's AlexNet.
_FID_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
_LPIPS_BACKBONE_WEIGHTS = "alexnet-owt-7be5be79.pth"


def optional_perceptual_metrics(predictions, targets, reference_set=None, value_range=(0.0, 1.0)) -> dict:
    """LPIPS (AlexNet) and FID, computed with torchmetrics when their weights are already cached.

    Nothing is downloaded: when torchmetrics is missing or a weight file is not in the torch hub cache
    (`torch.hub.get_dir()/checkpoints`), the metric is skipped with a logged message and reported as None.

    Args:
        predictions, targets: images (see `to_image_tensor`).
        reference_set (*optional*): images FID compares the predictions against (the training set in the
            field's protocol); defaults to `targets`.

    Returns:
        `dict[str, float | None]`: `lpips` and `fid`, and `skipped`: a message per skipped metric.
    """
    results, skipped = {"lpips": None, "fid": None}, {}
    checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        skipped = {key: "torchmetrics is not installed" for key in ("lpips", "fid")}
    else:
        x, y = _check_pair(predictions, targets, value_range)
        if os.path.isfile(os.path.join(checkpoints, _LPIPS_BACKBONE_WEIGHTS)):
            from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

            metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
            results["lpips"] = float(metric(x.float(), y.float()))
        else:
            skipped["lpips"] = f"AlexNet weights {_LPIPS_BACKBONE_WEIGHTS} are not in {checkpoints}"
        if os.path.isfile(os.path.join(checkpoints, _FID_WEIGHTS)):
            from torchmetrics.image.fid import FrechetInceptionDistance

            real = y if reference_set is None else to_image_tensor(reference_set, value_range, "reference_set")
            metric = FrechetInceptionDistance(normalize=True)
            metric.update(real.float(), real=True)
            metric.update(x.float(), real=False)
            results["fid"] = float(metric.compute())
        else:
            skipped["fid"] = f"Inception weights {_FID_WEIGHTS} are not in {checkpoints}"
    for key, reason in skipped.items():
        logger.warning(f"{key.upper()} skipped: {reason} (no download is attempted)")
    results["skipped"] = skipped
    return results


_DESCRIPTION = (
    "Pose-transfer image quality: SSIM (11x11 Gaussian window, no padding), PSNR, SSIM on keypoint crops "
    "(face, hands, feet, torso) and SSIM on the person's region."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[PIL.Image.Image]`): generated images.
    references (`list[PIL.Image.Image]`): ground-truth images of the same sizes.
    keypoints (`array-like`, *optional*): (N, 18, 2) target poses in pixels, for `local_ssim`.
    masks (`array-like`, *optional*): (N, H, W) person masks of the references, for `person_ssim`.
Returns:
    ssim (`float`), psnr (`float`, dB), and `local_ssim` / `person_ssim` (`float`) when keypoints / masks are given:
    means over the images.
"""

_CITATION = """\
@article{wang2004ssim,
  title={Image quality assessment: from error visibility to structural similarity},
  author={Wang, Zhou and Bovik, Alan C. and Sheikh, Hamid R. and Simoncelli, Eero P.},
  journal={IEEE Transactions on Image Processing},
  year={2004}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PoseTransferQuality(evaluate.Metric):
    """`evaluate` front end of `pose_transfer_metrics`:
    `evaluate.load(hf_ext.metrics.image_quality.__file__).compute(predictions=..., references=...)`."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Image()}),
        )

    def _compute(self, predictions, references, keypoints=None, masks=None):
        if len(predictions) == 0:
            raise ValueError("predictions is empty; expected at least one image")
        if masks is not None:
            masks = np.asarray(masks)
        if keypoints is not None:
            keypoints = np.asarray(keypoints, dtype=np.float32)
        return pose_transfer_metrics(predictions, references, keypoints=keypoints, masks=masks)
