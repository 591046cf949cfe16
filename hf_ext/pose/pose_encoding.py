"""COCO/OpenPose-18 keypoints and the two pose encodings the generator reads.

A pose is an array of 18 (x, y) pixel coordinates in the COCO/OpenPose-18 order
(`COCO18_NAMES`); a missing joint is NaN here and (-1, -1) in the annotation files.
Pixel (x, y) is the centre of column x, row y. Two encodings are rendered from it:

- 18 Gaussian heatmaps, one per joint: H_j(p) = exp(-|p - k_j|^2 / (2 sigma^2)), zero
  for a missing joint; sigma is 6 px at height 256 and scales with the height.
- a coloured skeleton on black: one colour per limb, a filled torso, and a dot per
  joint in a colour no other joint or limb uses, so `keypoints_from_skeleton` can
  read the joints back from a rendered pose image.

This file is self-contained (numpy, PIL and, optionally, torch only) because the
pipeline imports it by relative import when it is loaded as Hub remote code.
"""

import numpy as np
from PIL import Image, ImageDraw


NUM_KEYPOINTS = 18

COCO18_NAMES = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

# The 17 limbs of the OpenPose COCO-18 skeleton, as (joint, joint) index pairs.
COCO18_LIMBS = (
    (1, 2), (2, 3), (3, 4),  # right arm
    (1, 5), (5, 6), (6, 7),  # left arm
    (1, 8), (8, 9), (9, 10),  # right leg
    (1, 11), (11, 12), (12, 13),  # left leg
    (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),  # head
)

# Joints whose quadrilateral is drawn filled as the torso.
TORSO_JOINTS = (2, 5, 11, 8)

# Colours come from the grid {0, 85, 170, 255}^3: any two differ by at least 85 in one
# channel, so a pixel within 42 of a colour in every channel belongs to it alone, even
# after resizing or lossy compression has blurred the edges.
JOINT_COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
LIMB_COLORS = (
    (170, 0, 0), (170, 85, 0), (170, 170, 0),
    (85, 170, 0), (0, 170, 0), (0, 170, 85),
    (0, 170, 170), (0, 85, 170), (0, 0, 170),
    (85, 0, 170), (170, 0, 170), (170, 0, 85),
    (255, 255, 255), (255, 170, 170), (255, 170, 255), (170, 255, 170), (170, 170, 255),
)
TORSO_COLOR = (85, 85, 85)
_COLOR_TOLERANCE = 42


def _as_numpy(keypoints, name):
    if hasattr(keypoints, "detach"):  # a torch tensor, without importing torch here
        keypoints = keypoints.detach().cpu().numpy()
    try:
        return np.asarray(keypoints, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be an array, list or tensor of numbers, got {type(keypoints).__name__}: {error}"
        ) from None


def normalize_keypoints(keypoints, height: int | None, width: int | None, name: str = "keypoints") -> np.ndarray:
    """Validates a pose and returns it as float32 (18, 2) (x, y) pixels with NaN for missing joints.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`):
            (18, 2) (x, y) pixel coordinates, or (18, 3) with a confidence column (a joint with
            confidence <= 0 is missing, as in OpenPose output). -1 and NaN coordinates mean missing.
        height (`int` or `None`), width (`int` or `None`):
            Size of the image the coordinates refer to; `None` skips the range check (size not known yet).
        name (`str`, *optional*, defaults to `"keypoints"`):
            Argument name used in error messages.

    Returns:
        `np.ndarray`: float32 array of shape (18, 2).

    Raises:
        `ValueError`: on a wrong shape, or a joint outside the image by more than the image's size.
    """
    if height is not None or width is not None:
        _check_size(height, width)
    array = _as_numpy(keypoints, name)
    if array.ndim != 2 or array.shape[0] != NUM_KEYPOINTS or array.shape[1] not in (2, 3):
        raise ValueError(
            f"{name} must have shape ({NUM_KEYPOINTS}, 2) or ({NUM_KEYPOINTS}, 3) (x, y[, confidence]), "
            f"got shape {tuple(array.shape)}"
        )
    points = array[:, :2].copy()
    missing = np.isnan(points).any(axis=1) | (points == -1).any(axis=1)
    if array.shape[1] == 3:
        missing |= ~(array[:, 2] > 0)
    points[missing] = np.nan
    if height is None:
        return points.astype(np.float32)
    # A joint may lie a little outside the frame (a hand cut off by the border), but one
    # further out than the image is large means the coordinates belong to another size.
    present = ~missing
    outside = present & (
        (points[:, 0] < -width) | (points[:, 0] > 2 * width) | (points[:, 1] < -height) | (points[:, 1] > 2 * height)
    )
    outside |= present & ~np.isfinite(points).all(axis=1)
    if outside.any():
        joint = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"{name} joint {joint} ({COCO18_NAMES[joint]}) at (x={points[joint, 0]}, y={points[joint, 1]}) lies outside "
            f"the {width}x{height} (width x height) image by more than its size; expected pixel coordinates of that image"
        )
    return points.astype(np.float32)


def _check_size(height, width, name="height, width"):
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in (height, width)):
        raise ValueError(f"{name} must be positive integers, got ({height!r}, {width!r})")


def rescale_keypoints(keypoints, from_size: tuple, to_size: tuple) -> np.ndarray:
    """Maps keypoints from an image of `from_size` to the same image resized to `to_size`.

    Pixel centres map as x' = (x + 0.5) * W' / W - 0.5 (the convention of image resizing), so a
    joint stays on the same image content. Missing joints stay NaN.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`): pose of shape (18, 2) or (18, 3).
        from_size (`tuple[int, int]`): (height, width) of the image the keypoints refer to.
        to_size (`tuple[int, int]`): (height, width) of the resized image.

    Returns:
        `np.ndarray`: float32 (18, 2).
    """
    for arg, size in (("from_size", from_size), ("to_size", to_size)):
        if not isinstance(size, (tuple, list)) or len(size) != 2:
            raise ValueError(f"{arg} must be a (height, width) pair, got {size!r}")
        _check_size(*size, name=arg)
    points = normalize_keypoints(keypoints, from_size[0], from_size[1])
    scale = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]], dtype=np.float32)
    return ((points + 0.5) * scale - 0.5).astype(np.float32)


def default_sigma(height: int) -> float:
    """Heatmap standard deviation in pixels: 6 px at height 256, proportional to the height."""
    return 6.0 * height / 256


def render_heatmaps(keypoints, height: int, width: int, sigma: float | None = None) -> np.ndarray:
    """Renders one Gaussian heatmap per joint.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`): pose of shape (18, 2) or (18, 3) in pixels of a
            `height` x `width` image.
        height (`int`), width (`int`): output size.
        sigma (`float`, *optional*): standard deviation in pixels; defaults to `default_sigma(height)`.

    Returns:
        `np.ndarray`: float32 (18, height, width) in [0, 1], peak 1 at each present joint, zeros for a missing one.
    """
    points = normalize_keypoints(keypoints, height, width)
    sigma = default_sigma(height) if sigma is None else sigma
    if not sigma > 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    # The 2-D Gaussian factorises: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
    present = ~np.isnan(points).any(axis=1)
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    heatmaps = np.zeros((NUM_KEYPOINTS, height, width), dtype=np.float32)
    x, y = points[present, 0], points[present, 1]
    gx = np.exp(-((xs[None, :] - x[:, None]) ** 2) / (2 * sigma**2))
    gy = np.exp(-((ys[None, :] - y[:, None]) ** 2) / (2 * sigma**2))
    heatmaps[present] = gy[:, :, None] * gx[:, None, :]
    return heatmaps


def _stroke_width(height: int) -> int:
    return max(1, round(4 * height / 256))


def _dot_radius(height: int) -> int:
    return max(1, round(2 * height / 256))


def render_skeleton(keypoints, height: int, width: int) -> np.ndarray:
    """Draws the pose as a coloured stick figure on black.

    The torso (shoulders and hips) is filled, each limb is a line in its own colour, and each joint
    a dot in its own colour, drawn last so `keypoints_from_skeleton` can find it. No anti-aliasing,
    so the colours stay exact.

    Args:
        keypoints (`np.ndarray`, `list` or `torch.Tensor`): pose of shape (18, 2) or (18, 3).
        height (`int`), width (`int`): output size.

    Returns:
        `np.ndarray`: uint8 (height, width, 3) RGB image.
    """
    points = normalize_keypoints(keypoints, height, width)
    present = ~np.isnan(points).any(axis=1)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    line_width = _stroke_width(height)
    if present[list(TORSO_JOINTS)].all():
        draw.polygon([tuple(points[j]) for j in TORSO_JOINTS], fill=TORSO_COLOR)
    for (a, b), color in zip(COCO18_LIMBS, LIMB_COLORS):
        if present[a] and present[b]:
            draw.line([tuple(points[a]), tuple(points[b])], fill=color, width=line_width)
    # Dots thinner than the limbs, so neighbouring joints (eye and ear) do not cover each other.
    radius = _dot_radius(height)
    for joint in np.flatnonzero(present):
        x, y = points[joint]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=JOINT_COLORS[joint])
    return np.asarray(canvas, dtype=np.uint8).copy()


def keypoints_from_skeleton(image) -> np.ndarray:
    """Reads a pose back from an image drawn by `render_skeleton` (possibly resized or compressed).

    Each joint is the median position of the pixels within the colour tolerance of that joint's colour
    (the median ignores stray pixels where resizing blended two other colours into it).

    Args:
        image (`PIL.Image.Image` or `np.ndarray`): the rendered pose, RGB (H, W, 3) uint8.

    Returns:
        `np.ndarray`: float32 (18, 2) in pixels of `image`, NaN where the joint's colour is absent.
    """
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    pixels = np.asarray(image)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image must be an RGB (height, width, 3) pose image, got shape {tuple(pixels.shape)}")
    if pixels.dtype != np.uint8:
        raise ValueError(f"image must be uint8 in [0, 255] as drawn by render_skeleton, got dtype {pixels.dtype}")
    pixels = pixels.astype(np.int16)
    # Only saturated pixels can be joint dots (every joint colour has a 255 channel).
    candidates = np.flatnonzero(pixels.max(axis=2).ravel() >= 255 - _COLOR_TOLERANCE)
    flat = pixels.reshape(-1, 3)[candidates]
    keypoints = np.full((NUM_KEYPOINTS, 2), np.nan, dtype=np.float32)
    width = pixels.shape[1]
    # Tiny blobs are blurred edges between two other colours, not a dot.
    min_pixels = max(1, _dot_radius(pixels.shape[0]))
    for joint, color in enumerate(JOINT_COLORS):
        hits = candidates[(np.abs(flat - np.array(color)) <= _COLOR_TOLERANCE).all(axis=1)]
        if hits.size >= min_pixels:
            keypoints[joint] = (np.median(hits % width), np.median(hits // width))
    return keypoints
