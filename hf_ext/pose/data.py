"""Pose-transfer pairs as `datasets.Dataset`s, and the collator that batches them for training.

Every pair dataset has the columns of `pair_features`: `reference_image`, `target_image`
(`datasets.Image(decode=False)`: a file path or encoded bytes, decoded by `load_image`, which
names the file when it cannot be read), `reference_keypoints`, `target_keypoints` (float32
(18, 2) (x, y) pixels of the stored image, NaN = missing) and, optionally, `target_mask`.

- `load_patn_pairs`: DeepFashion in the PATN layout (`<root>/<split>/` images,
  `fasion-resize-annotation-<split>.csv`, `fasion-resize-pairs-<split>.csv`).
- `pair_dataset`: any list of ((image, keypoints), (image, keypoints)) pairs.
- `hf_ext.pose.synthetic.synthetic_pair_dataset`: synthetic people.
- `PosePairCollator`: decodes, converts to RGB, resizes to one resolution and renders the
  heatmaps, producing the batch the generator and the training loop read.
"""

import io
import os
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers.utils import logging

from .keypoints import read_openpose_json, read_patn_annotations, read_patn_pairs
from .pose_encoding import NUM_KEYPOINTS, normalize_keypoints, render_heatmaps, rescale_keypoints


logger = logging.get_logger(__name__)

# Transparent pixels are composited onto the uniform grey the paper segments people onto.
_TRANSPARENT_BACKGROUND = (128, 128, 128)


def pair_features(with_mask: bool = False) -> datasets.Features:
    """The column schema shared by every pair dataset.

    Args:
        with_mask (`bool`, *optional*, defaults to `False`): add a `target_mask` image column (person region).
    """
    features = {
        "reference_image": datasets.Image(decode=False),
        "target_image": datasets.Image(decode=False),
        "reference_keypoints": datasets.Array2D(shape=(NUM_KEYPOINTS, 2), dtype="float32"),
        "target_keypoints": datasets.Array2D(shape=(NUM_KEYPOINTS, 2), dtype="float32"),
    }
    if with_mask:
        features["target_mask"] = datasets.Image(decode=False)
    return datasets.Features(features)


def load_image(image, name: str = "image") -> Image.Image:
    """Decodes an image and converts it to RGB.

    Grayscale, CMYK and 16-bit images are converted; RGBA, LA and palette images with transparency
    are composited onto mid-grey first.

    Args:
        image (`str`, `os.PathLike`, `dict`, `PIL.Image.Image` or `np.ndarray`): a file path, a `datasets.Image`
            value (`{"path", "bytes"}`), an image, or a (H, W) / (H, W, 3|4) uint8 array.
        name (`str`, *optional*, defaults to `"image"`): argument name used in error messages.

    Returns:
        `PIL.Image.Image`: RGB image.

    Raises:
        `ValueError`: naming the file when it is missing, corrupt or truncated.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"{name} as an array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    elif isinstance(image, (str, os.PathLike, Mapping)):
        path, data = (image.get("path"), image.get("bytes")) if isinstance(image, Mapping) else (os.fspath(image), None)
        source = path if data is None else io.BytesIO(data)
        label = path if path is not None else f"{name} (encoded bytes)"
        try:
            image = Image.open(source)
            image.load()  # decodes now, so a truncated file fails here and not later in a worker
        except (OSError, UnidentifiedImageError, SyntaxError) as error:
            raise ValueError(f"cannot read image file {label!r} ({name}): {error}") from None
    elif not isinstance(image, Image.Image):
        raise TypeError(f"{name} must be a PIL image, a numpy array or a file path, got {type(image).__name__}")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, _TRANSPARENT_BACKGROUND)
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    if image.mode in ("I", "I;16", "F"):
        # 16-bit / float grayscale: scale to 8 bits instead of clipping.
        pixels = np.asarray(image, dtype=np.float64)
        high = pixels.max() if pixels.max() > 0 else 1.0
        image = Image.fromarray((pixels / high * 255).astype(np.uint8))
    return image.convert("RGB")


def _keypoint_array(keypoints, name):
    """(18, 2) float32 from an array, a list, a tensor or an OpenPose JSON path/dict; checks the shape only."""
    if isinstance(keypoints, (str, os.PathLike, Mapping)):
        return read_openpose_json(keypoints)
    return normalize_keypoints(keypoints, None, None, name=name)


def _image_value(image, name):
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        if not os.path.isfile(path):
            raise ValueError(f"{name} file {path!r} does not exist")
        return {"path": path, "bytes": None}
    if isinstance(image, np.ndarray):
        return Image.fromarray(image)
    if isinstance(image, (Image.Image, Mapping)):
        return image
    raise TypeError(f"{name} must be a file path, a PIL image or a numpy array, got {type(image).__name__}")


def pair_dataset(pairs: Sequence) -> datasets.Dataset:
    """Builds a pair dataset from ((reference image, reference keypoints), (target image, target keypoints)) pairs.

    Args:
        pairs (`Sequence`): each item is `((reference_image, reference_keypoints), (target_image, target_keypoints))`;
            images are file paths, PIL images or uint8 arrays; keypoints are (18, 2) / (18, 3) arrays (pixels of
            that image, -1 or NaN = missing) or OpenPose JSON files / dicts.

    Returns:
        `datasets.Dataset`: columns of `pair_features()`. Files are checked to exist, not decoded.
    """
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence) or len(pairs) == 0:
        raise ValueError(f"pairs must be a non-empty sequence of ((image, keypoints), (image, keypoints)), got {pairs!r:.80}")
    rows = {name: [] for name in pair_features()}
    for i, pair in enumerate(pairs):
        try:
            (reference_image, reference_keypoints), (target_image, target_keypoints) = pair
        except (TypeError, ValueError):
            raise ValueError(f"pairs[{i}] must be ((image, keypoints), (image, keypoints)), got {pair!r:.80}") from None
        rows["reference_image"].append(_image_value(reference_image, f"pairs[{i}] reference image"))
        rows["target_image"].append(_image_value(target_image, f"pairs[{i}] target image"))
        rows["reference_keypoints"].append(_keypoint_array(reference_keypoints, f"pairs[{i}] reference keypoints"))
        rows["target_keypoints"].append(_keypoint_array(target_keypoints, f"pairs[{i}] target keypoints"))
    return datasets.Dataset.from_dict(rows, features=pair_features())


def load_patn_pairs(root, split: str = "train", image_dir=None, annotation_file=None, pairs_file=None) -> datasets.Dataset:
    """Loads DeepFashion pose-transfer pairs in the PATN layout.

    Args:
        root (`str` or `os.PathLike`): folder holding `<split>/` (images), `fasion-resize-annotation-<split>.csv`
            and `fasion-resize-pairs-<split>.csv` (the file names the PATN release uses).
        split (`str`, *optional*, defaults to `"train"`): `"train"` or `"test"`.
        image_dir, annotation_file, pairs_file (`str`, *optional*): override the three default locations.

    Returns:
        `datasets.Dataset`: one row per pair, columns of `pair_features()`; keypoints are in pixels of the stored
        images (256x176 in the PATN release).

    Raises:
        `ValueError`: when a file is missing, or a paired image has no annotation or no file: every listed pair is
        kept, none is skipped.
    """
    root = os.fspath(root)
    image_dir = image_dir or os.path.join(root, split)
    annotation_file = annotation_file or os.path.join(root, f"fasion-resize-annotation-{split}.csv")
    pairs_file = pairs_file or os.path.join(root, f"fasion-resize-pairs-{split}.csv")
    for label, path, check in (("image_dir", image_dir, os.path.isdir), ("annotation_file", annotation_file, os.path.isfile), ("pairs_file", pairs_file, os.path.isfile)):
        if not check(path):
            raise ValueError(f"{label} {path!r} does not exist; expected the PATN layout under root={root!r}")
    annotations = read_patn_annotations(annotation_file)
    names = read_patn_pairs(pairs_file)
    rows = {name: [] for name in pair_features()}
    for source, target in names:
        for side, image_name in (("reference", source), ("target", target)):
            if image_name not in annotations:
                raise ValueError(f"image {image_name!r} of {pairs_file!r} has no keypoints in {annotation_file!r}")
            path = os.path.join(image_dir, image_name)
            if not os.path.isfile(path):
                raise ValueError(f"image file {path!r} listed in {pairs_file!r} does not exist")
            rows[f"{side}_image"].append({"path": path, "bytes": None})
            rows[f"{side}_keypoints"].append(annotations[image_name])
    logger.info(f"Loaded {len(names)} PATN {split} pairs from {root}")
    return datasets.Dataset.from_dict(rows, features=pair_features())


class PosePairCollator:
    """Turns pair-dataset rows into a training batch at one resolution.

    Images are decoded (`load_image`), converted to RGB, resized to `height` x `width` (bicubic) and
    scaled to [-1, 1]; keypoints are validated against their image's size, rescaled to the output
    size, and rendered as 18 Gaussian heatmaps.

    Args:
        height (`int`), width (`int`): output resolution.
        sigma (`float`, *optional*): heatmap standard deviation in pixels; defaults to 6 px at height 256.

    Returns (from `__call__`):
        `dict[str, torch.Tensor]`: `reference_image`, `target_image` (B, 3, H, W) in [-1, 1];
        `reference_keypoints`, `target_keypoints` (B, 18, 2) pixels at (H, W), NaN = missing;
        `reference_heatmaps`, `target_heatmaps` (B, 18, H, W) in [0, 1]; and `target_mask` (B, 1, H, W) in {0, 1}
        when the rows have a `target_mask`.

    Example:
        ```python
        loader = torch.utils.data.DataLoader(dataset, batch_size=8, collate_fn=PosePairCollator(256, 176))
        ```
    """

    def __init__(self, height: int, width: int, sigma: float | None = None):
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if sigma is not None and not sigma > 0:
            raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
        self.height, self.width, self.sigma = height, width, sigma

    def _side(self, example, index, side):
        image = load_image(example[f"{side}_image"], name=f"{side}_image of example {index}")
        keypoints = normalize_keypoints(
            _keypoint_array(example[f"{side}_keypoints"], f"{side}_keypoints of example {index}"),
            image.height, image.width, name=f"{side}_keypoints of example {index}",
        )
        keypoints = rescale_keypoints(keypoints, (image.height, image.width), (self.height, self.width))
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
        heatmaps = torch.from_numpy(render_heatmaps(keypoints, self.height, self.width, self.sigma))
        return pixels, torch.from_numpy(keypoints), heatmaps

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        if len(examples) == 0:
            raise ValueError("examples must hold at least one row")
        batch = {key: [] for key in ("reference_image", "reference_keypoints", "reference_heatmaps", "target_image", "target_keypoints", "target_heatmaps")}
        with_mask = all(example.get("target_mask") is not None for example in examples)
        masks = []
        for index, example in enumerate(examples):
            for side in ("reference", "target"):
                image, keypoints, heatmaps = self._side(example, index, side)
                batch[f"{side}_image"].append(image)
                batch[f"{side}_keypoints"].append(keypoints)
                batch[f"{side}_heatmaps"].append(heatmaps)
            if with_mask:
                mask = load_image(example["target_mask"], name=f"target_mask of example {index}").convert("L")
                mask = mask.resize((self.width, self.height), Image.BILINEAR)
                masks.append(torch.from_numpy(np.asarray(mask) >= 128).float()[None])
        batch = {key: torch.stack(values) for key, values in batch.items()}
        if with_mask:
            batch["target_mask"] = torch.stack(masks)
        return batch
