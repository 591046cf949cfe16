"""Keypoint files, keypoint crops for the local losses, and an optional pose estimator.

- OpenPose JSON (`people[i].pose_keypoints_2d`, COCO-18 or BODY_25 layout) and the
  DeepFashion PATN annotation CSV (`name:keypoints_y:keypoints_x`, -1 = missing) and
  pair CSV (`from,to`), read and written.
- `keypoint_crops`: square boxes around the face, hands, feet and torso, derived from the
  keypoints; `crop_keypoint_regions` cuts them out of a batch of image tensors at a fixed
  size, for the local perceptual loss, the local discriminators and local-crop SSIM.
- `estimate_keypoints`: COCO-18 keypoints from a person image with mediapipe's legacy
  pose solution (the `pose` extra), whose model files ship with the wheel.

The COCO-18 definition and the pose renderings live in `pose_encoding` and are re-exported here.
"""

import csv
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.utils import logging

from .pose_encoding import (
    COCO18_LIMBS,
    COCO18_NAMES,
    JOINT_COLORS,
    LIMB_COLORS,
    NUM_KEYPOINTS,
    default_sigma,
    keypoints_from_skeleton,
    normalize_keypoints,
    render_heatmaps,
    render_skeleton,
    rescale_keypoints,
)


logger = logging.get_logger(__name__)

__all__ = [
    "COCO18_LIMBS",
    "COCO18_NAMES",
    "JOINT_COLORS",
    "LIMB_COLORS",
    "NUM_KEYPOINTS",
    "CROP_PARTS",
    "CROP_FRACTIONS",
    "default_sigma",
    "keypoints_from_skeleton",
    "normalize_keypoints",
    "render_heatmaps",
    "render_skeleton",
    "rescale_keypoints",
    "read_openpose_json",
    "write_openpose_json",
    "read_patn_annotations",
    "write_patn_annotations",
    "read_patn_pairs",
    "write_patn_pairs",
    "keypoint_crops",
    "crop_keypoint_regions",
    "estimate_keypoints",
]

# OpenPose BODY_25 index of each COCO-18 joint (BODY_25 adds mid-hip at 8 and six foot points).
_BODY25_TO_COCO18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)


# ---------------------------------------------------------------------------------------
# OpenPose JSON
# ---------------------------------------------------------------------------------------


def read_openpose_json(source, person: int = 0) -> np.ndarray:
    """Reads one person's body keypoints from an OpenPose JSON file or its parsed dict.

    Args:
        source (`str`, `os.PathLike` or `dict`): path to the `*_keypoints.json` file, or its content.
        person (`int`, *optional*, defaults to 0): index into `people`.

    Returns:
        `np.ndarray`: float32 (18, 2) (x, y) pixels, NaN for joints with confidence 0. BODY_25 files
        are mapped to COCO-18 (mid-hip and foot points dropped).
    """
    label = "the OpenPose dict"
    if isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        try:
            with open(source, encoding="utf-8") as file:
                source = json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"OpenPose file {label!r} is not valid JSON: {error}") from None
    if not isinstance(source, Mapping) or not isinstance(source.get("people"), list):
        raise ValueError(f"{label} must be an OpenPose result with a 'people' list")
    people = source["people"]
    if not -len(people) <= person < len(people):
        raise ValueError(f"person={person} is out of range: {label} holds {len(people)} people")
    flat = np.asarray(people[person].get("pose_keypoints_2d", []), dtype=np.float64)
    if flat.size == 3 * NUM_KEYPOINTS:
        triples = flat.reshape(NUM_KEYPOINTS, 3)
    elif flat.size == 3 * 25:
        triples = flat.reshape(25, 3)[list(_BODY25_TO_COCO18)]
    else:
        raise ValueError(
            f"pose_keypoints_2d in {label} must hold 54 (COCO-18) or 75 (BODY_25) numbers, got {flat.size}"
        )
    points = triples[:, :2].copy()
    points[~(triples[:, 2] > 0)] = np.nan
    return points.astype(np.float32)


def write_openpose_json(keypoints, path=None, confidence=None) -> dict:
    """Writes a COCO-18 pose as an OpenPose JSON result with one person.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`): (18, 2) pose, NaN or -1 for missing joints.
        path (`str` or `os.PathLike`, *optional*): file to write; the dict is returned either way.
        confidence (`array-like`, *optional*): (18,) confidences; defaults to 1 for present joints.
            Missing joints are written as (0, 0, 0), as OpenPose does.

    Returns:
        `dict`: the OpenPose result.
    """
    points = normalize_keypoints(keypoints, None, None)
    present = ~np.isnan(points).any(axis=1)
    scores = np.ones(NUM_KEYPOINTS) if confidence is None else np.asarray(confidence, dtype=np.float64)
    if scores.shape != (NUM_KEYPOINTS,):
        raise ValueError(f"confidence must have shape ({NUM_KEYPOINTS},), got {scores.shape}")
    triples = np.zeros((NUM_KEYPOINTS, 3))
    triples[present, :2] = points[present]
    triples[present, 2] = scores[present]
    result = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": triples.ravel().tolist()}]}
    if path is not None:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(result, file)
    return result


# ---------------------------------------------------------------------------------------
# DeepFashion PATN annotation and pair CSVs
# ---------------------------------------------------------------------------------------


def read_patn_annotations(path) -> dict[str, np.ndarray]:
    """Reads a PATN keypoint annotation CSV (`fasion-resize-annotation-{train,test}.csv`).

    The file is ':'-separated with the header `name:keypoints_y:keypoints_x`; each coordinate
    column is a JSON list of 18 integers, -1 for a missing joint.

    Args:
        path (`str` or `os.PathLike`): the CSV file.

    Returns:
        `dict[str, np.ndarray]`: image name -> float32 (18, 2) (x, y) pixels, NaN for missing joints.
    """
    annotations = {}
    with open(path, encoding="utf-8", newline="") as file:
        rows = csv.reader(file, delimiter=":")
        header = [column.strip() for column in next(rows, [])]
        if header != ["name", "keypoints_y", "keypoints_x"]:
            raise ValueError(f"{os.fspath(path)!r} must start with the header 'name:keypoints_y:keypoints_x', got {header}")
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            try:
                name, ys, xs = (column.strip() for column in row)
                points = np.stack([json.loads(xs), json.loads(ys)], axis=1).astype(np.float32)
            except (ValueError, json.JSONDecodeError) as error:
                raise ValueError(f"{os.fspath(path)!r} line {line}: expected 'name: [18 ys]: [18 xs]' ({error})") from None
            if points.shape != (NUM_KEYPOINTS, 2):
                raise ValueError(f"{os.fspath(path)!r} line {line}: expected 18 y and 18 x values, got {points.shape}")
            points[(points == -1).any(axis=1)] = np.nan
            annotations[name] = points
    return annotations


def write_patn_annotations(path, annotations: Mapping) -> None:
    """Writes a PATN keypoint annotation CSV; coordinates are rounded to whole pixels as in the original files.

    Args:
        path (`str` or `os.PathLike`): the CSV file to write.
        annotations (`Mapping[str, array-like]`): image name -> (18, 2) (x, y) pose, NaN or -1 for missing.
    """
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write("name:keypoints_y:keypoints_x\n")
        for name, keypoints in annotations.items():
            points = normalize_keypoints(keypoints, None, None, name=f"annotations[{name!r}]")
            rounded = np.where(np.isnan(points), -1, np.round(np.nan_to_num(points))).astype(int)
            file.write(f"{name}: {rounded[:, 1].tolist()}: {rounded[:, 0].tolist()}\n")


def read_patn_pairs(path) -> list[tuple[str, str]]:
    """Reads a PATN pair CSV (`fasion-resize-pairs-{train,test}.csv`, header `from,to`).

    Returns:
        `list[tuple[str, str]]`: (reference image name, target image name) pairs.
    """
    with open(path, encoding="utf-8", newline="") as file:
        rows = csv.DictReader(file)
        if rows.fieldnames is None or not {"from", "to"} <= set(rows.fieldnames):
            raise ValueError(f"{os.fspath(path)!r} must have the header 'from,to', got {rows.fieldnames}")
        return [(row["from"], row["to"]) for row in rows]


def write_patn_pairs(path, pairs: Sequence) -> None:
    """Writes (reference name, target name) pairs as a PATN pair CSV."""
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["from", "to"])
        writer.writerows((source, target) for source, target in pairs)


# ---------------------------------------------------------------------------------------
# Crops for the local losses
# ---------------------------------------------------------------------------------------

CROP_PARTS = ("face", "left_hand", "right_hand", "left_foot", "right_foot", "torso")

# Side of each square crop as a fraction of the image height (DeepFashion at 256x176: a face
# spans ~35 px, a hand or foot ~30 px, the torso ~80 px).
CROP_FRACTIONS = {
    "face": 0.15,
    "left_hand": 0.125,
    "right_hand": 0.125,
    "left_foot": 0.125,
    "right_foot": 0.125,
    "torso": 0.3,
}

# (joints whose mean is the centre, (from, to) joints to extrapolate along, or None)
_PART_JOINTS = {
    "face": ((0, 14, 15, 16, 17), None),
    "right_hand": ((4,), (3, 4)),
    "left_hand": ((7,), (6, 7)),
    "right_foot": ((10,), (9, 10)),
    "left_foot": ((13,), (12, 13)),
    "torso": ((1, 2, 5, 8, 11), None),
}
# A hand (foot) lies beyond the wrist (ankle): shift the centre along the forearm (shin) by this fraction.
_EXTREMITY_SHIFT = 0.25


def _crop_sides(parts, height, width, size):
    sides = {}
    for part in parts:
        if isinstance(size, Mapping):
            side = size.get(part, round(CROP_FRACTIONS[part] * height))
        elif size is None:
            side = round(CROP_FRACTIONS[part] * height)
        else:
            side = size
        if not isinstance(side, (int, np.integer)) or isinstance(side, bool) or side < 1:
            raise ValueError(f"size for part {part!r} must be a positive integer number of pixels, got {side!r}")
        sides[part] = int(min(side, height, width))
    return sides


def _check_parts(parts):
    if isinstance(parts, str) or not all(part in CROP_PARTS for part in parts):
        raise ValueError(f"parts must be a sequence of names from {CROP_PARTS}, got {parts!r}")


def keypoint_crops(keypoints, height: int, width: int, parts=CROP_PARTS, size=None) -> dict:
    """Square boxes around body parts, derived from the keypoints.

    Each box is centred on its part (face: mean of nose, eyes and ears; hand / foot: the wrist /
    ankle moved a quarter of the forearm / shin outwards; torso: mean of neck, shoulders and hips)
    and shifted, not shrunk, to stay inside the image, so every box of a part has the same size
    and crops batch together.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`): (18, 2) pose in pixels of the image.
        height (`int`), width (`int`): image size.
        parts (`Sequence[str]`, *optional*, defaults to `CROP_PARTS`): names from `CROP_PARTS`.
        size (`int` or `dict[str, int]`, *optional*): side of the boxes in pixels, for all parts or per part;
            defaults to `CROP_FRACTIONS[part] * height`. Capped at the image's height and width.

    Returns:
        `dict[str, tuple[int, int, int, int] | None]`: part -> (x0, y0, x1, y1) (x1, y1 exclusive), or None
        when all of the part's joints are missing.
    """
    _check_parts(parts)
    points = normalize_keypoints(keypoints, height, width)
    present = ~np.isnan(points).any(axis=1)
    boxes = {}
    for part, side in _crop_sides(parts, height, width, size).items():
        joints, extend = _PART_JOINTS[part]
        joints = [j for j in joints if present[j]]
        if not joints:
            boxes[part] = None
            continue
        center = points[joints].mean(axis=0)
        if extend is not None and present[extend[0]]:
            center = center + _EXTREMITY_SHIFT * (points[extend[1]] - points[extend[0]])
        x0 = int(np.clip(round(center[0] - side / 2), 0, width - side))
        y0 = int(np.clip(round(center[1] - side / 2), 0, height - side))
        boxes[part] = (x0, y0, x0 + side, y0 + side)
    return boxes


def crop_keypoint_regions(images, keypoints, parts=CROP_PARTS, size=None, output_size=None) -> dict:
    """Cuts the body-part crops of `keypoint_crops` out of a batch of images, differentiably.

    Args:
        images (`torch.Tensor`): (batch, channels, height, width).
        keypoints (`torch.Tensor` or `np.ndarray`): (batch, 18, 2) poses in pixels of `images`.
        parts (`Sequence[str]`, *optional*, defaults to `CROP_PARTS`): names from `CROP_PARTS`.
        size (`int` or `dict[str, int]`, *optional*): box side, as in `keypoint_crops`.
        output_size (`int`, *optional*): resize every crop to this side (bilinear); defaults to the box side.

    Returns:
        `dict[str, tuple[torch.Tensor, torch.Tensor]]`: part -> (crops of shape (batch, channels, side, side),
        bool mask of shape (batch,) that is False where the part is missing and its crop is zeros).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"images must be a (batch, channels, height, width) tensor, got {getattr(images, 'shape', type(images))}")
    if hasattr(keypoints, "detach"):
        keypoints = keypoints.detach().cpu().numpy()
    keypoints = np.asarray(keypoints, dtype=np.float32)
    batch, _, height, width = images.shape
    if keypoints.shape != (batch, NUM_KEYPOINTS, 2):
        raise ValueError(f"keypoints must have shape ({batch}, {NUM_KEYPOINTS}, 2) to match images, got {keypoints.shape}")
    if output_size is not None and (not isinstance(output_size, int) or output_size < 1):
        raise ValueError(f"output_size must be a positive integer, got {output_size!r}")
    boxes = [keypoint_crops(keypoints[i], height, width, parts, size) for i in range(batch)]
    regions = {}
    for part, side in _crop_sides(parts, height, width, size).items():
        # Every box of a part has the same side, so one gather cuts all of them (and its backward is one
        # scatter, where per-image slices would each allocate a gradient of the whole batch).
        valid = torch.tensor([boxes[i][part] is not None for i in range(batch)], device=images.device)
        origins = torch.tensor([(boxes[i][part] or (0, 0))[:2] for i in range(batch)], device=images.device)
        offsets = torch.arange(side, device=images.device)
        rows = (origins[:, 1, None] + offsets)[:, :, None]  # (batch, side, 1)
        columns = (origins[:, 0, None] + offsets)[:, None, :]  # (batch, 1, side)
        batch_index = torch.arange(batch, device=images.device)[:, None, None]
        crops = images[batch_index, :, rows, columns].permute(0, 3, 1, 2)  # (batch, channels, side, side)
        crops = crops * valid[:, None, None, None].to(crops.dtype)  # a missing part's crop is zeros
        out = output_size or side
        if out != side:
            crops = F.interpolate(crops, size=(out, out), mode="bilinear", align_corners=False, antialias=out < side)
        regions[part] = (crops, valid)
    return regions


# ---------------------------------------------------------------------------------------
# Optional estimator (`pip install "hf-ext[pose]"`)
# ---------------------------------------------------------------------------------------

# BlazePose landmark index of each COCO-18 joint; the neck is the mean of both shoulders (11, 12).
_BLAZEPOSE_TO_COCO18 = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7)


def _coco18_from_blazepose(landmarks, height: int, width: int, min_visibility: float) -> np.ndarray:
    """Maps 33 BlazePose landmarks (normalised x, y in [0, 1], visibility) to COCO-18 pixels."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    # Normalised coordinates put pixel centres at (i + 0.5) / size.
    pixels = landmarks[:, :2] * np.array([width, height]) - 0.5
    visible = landmarks[:, 2] >= min_visibility
    keypoints = np.full((NUM_KEYPOINTS, 2), np.nan, dtype=np.float32)
    for joint, index in enumerate(_BLAZEPOSE_TO_COCO18):
        if index is None:
            if visible[11] and visible[12]:
                keypoints[joint] = (pixels[11] + pixels[12]) / 2
        elif visible[index]:
            keypoints[joint] = pixels[index]
    return keypoints


def estimate_keypoints(image, min_visibility: float = 0.5) -> np.ndarray:
    """Estimates COCO-18 keypoints of the (single) person in an image, offline.

    Uses mediapipe's legacy BlazePose solution (model complexity 1), whose model files ship with
    mediapipe 0.10.21, and maps its 33 landmarks to COCO-18 (neck = mean of the shoulders).

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): the person image (any mode; converted to RGB).
        min_visibility (`float`, *optional*, defaults to 0.5): landmarks less visible than this are missing.

    Returns:
        `np.ndarray`: float32 (18, 2) (x, y) pixels, NaN for missing joints (all NaN if no person is found).

    Raises:
        `ImportError`: when mediapipe is not installed.
    """
    try:
        from mediapipe.python.solutions import pose as mp_pose
    except ImportError as error:
        raise ImportError(
            "estimate_keypoints needs mediapipe's legacy pose solution: install the pose extra with "
            "`pip install \"hf-ext[pose]\"` (mediapipe==0.10.21), or pass keypoints instead of a person image"
        ) from error
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    pixels = np.asarray(image.convert("RGB"))
    with mp_pose.Pose(static_image_mode=True, model_complexity=1) as estimator:
        result = estimator.process(pixels)
    if result.pose_landmarks is None:
        logger.warning("estimate_keypoints found no person in the image; all joints are missing")
        return np.full((NUM_KEYPOINTS, 2), np.nan, dtype=np.float32)
    landmarks = [(mark.x, mark.y, mark.visibility) for mark in result.pose_landmarks.landmark]
    return _coco18_from_blazepose(landmarks, pixels.shape[0], pixels.shape[1], min_visibility)
