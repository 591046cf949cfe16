"""Synthetic people: procedurally drawn, posed figures for tests, the demo and the benchmark.

A person is an appearance (skin, hair, a solid / striped / checked shirt with short or long
sleeves, trousers or shorts, shoes) drawn front-facing around a random but plausible COCO-18
skeleton, on a plain grey background (the paper's people are segmented onto a uniform grey
background). Clothing patterns live in body coordinates (stripes follow the torso and the
sleeves), so the same person in two poses is the same person. Everything is deterministic in
(seed, index) and drawn at any resolution up to 1024 pixels.

These figures exercise the code paths and make held-out comparisons possible offline; they do
not stand in for real photographs (DeepFashion, see `hf_ext.pose.data`).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .pose_encoding import NUM_KEYPOINTS


MAX_RESOLUTION = 1024
BACKGROUND_COLOR = (128, 128, 128)
# Drawn at twice the size, then box-filtered down: smooth edges without a renderer.
_SUPERSAMPLE = 2

_SKIN_TONES = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 36))
_HAIR_COLORS = ((20, 16, 12), (60, 40, 25), (110, 70, 35), (200, 160, 90), (150, 60, 30), (170, 170, 170))

# Limb lengths and widths in body units (neck to mid-hip = 1).
_UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.6, 0.55, 0.85, 0.85
_ARM_RADIUS, _LEG_RADIUS, _HEAD_RADIUS, _NECK_TO_NOSE = 0.1, 0.13, 0.2, 0.36
# Hair to shoes of a person standing straight, in body units: sets the size of a person in the frame.
_STANDING_HEIGHT = 0.36 + _HEAD_RADIUS + 0.12 + 1 + _THIGH + _SHIN + 0.17


@dataclass
class Appearance:
    """What a synthetic person wears and looks like (colours are RGB tuples, lengths in body units)."""

    skin: tuple
    hair: tuple
    long_hair: bool
    shirt: tuple
    shirt_second: tuple
    pattern: str  # "solid", "stripes" or "checks"
    pattern_period: float
    long_sleeves: bool
    trousers: tuple
    shorts: bool
    shoes: tuple


def _unit(angle):
    """Direction at `angle` radians from straight down, turning towards +x (image right)."""
    return np.array([np.sin(angle), np.cos(angle)])


class SyntheticPeople:
    """Deterministic source of synthetic people and of pairs (same person, two poses).

    Args:
        seed (`int`, *optional*, defaults to 0): people and poses are a function of (seed, index);
            two seeds give disjoint people and poses for held-out evaluation.

    Example:
        ```python
        people = SyntheticPeople(seed=0)
        pair = people.pair(3, height=256, width=176)
        pair["reference_image"], pair["target_keypoints"]
        ```
    """

    def __init__(self, seed: int = 0):
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)

    def _rng(self, index, stream):
        return np.random.default_rng([self.seed, int(index), stream])

    def appearance(self, index: int) -> Appearance:
        """The appearance of person `index`."""
        rng = self._rng(index, 0)

        def clothing_color():
            return tuple(int(c) for c in rng.integers(20, 236, size=3))

        return Appearance(
            skin=_SKIN_TONES[rng.integers(len(_SKIN_TONES))],
            hair=_HAIR_COLORS[rng.integers(len(_HAIR_COLORS))],
            long_hair=bool(rng.random() < 0.4),
            shirt=clothing_color(),
            shirt_second=clothing_color(),
            pattern=("solid", "stripes", "checks")[rng.integers(3)],
            pattern_period=float(rng.uniform(0.1, 0.22)),
            long_sleeves=bool(rng.random() < 0.5),
            trousers=clothing_color(),
            shorts=bool(rng.random() < 0.3),
            shoes=tuple(int(c) for c in rng.integers(0, 90, size=3)),
        )

    def body_pose(self, index: int, view: int) -> np.ndarray:
        """A plausible front-facing COCO-18 skeleton in body units (neck at the origin, y down).

        Args:
            index (`int`): person index (sets the body proportions).
            view (`int`): pose number for that person (sets the joint angles).

        Returns:
            `np.ndarray`: float64 (18, 2).
        """
        build = self._rng(index, 1)
        shoulder_half, hip_half = build.uniform(0.3, 0.4), build.uniform(0.17, 0.24)
        rng = self._rng(index, 2 + view)
        points = np.zeros((NUM_KEYPOINTS, 2))
        lean = rng.normal(0, np.radians(4))
        down, across = _unit(lean), np.array([np.cos(lean), -np.sin(lean)])
        points[2], points[5] = -shoulder_half * across, shoulder_half * across
        points[8], points[11] = down - hip_half * across, down + hip_half * across
        # Arms: abduction from hanging down (0) to raised sideways (~150 deg), elbow flexion either way.
        for shoulder, elbow, wrist, side in ((2, 3, 4, -1), (5, 6, 7, 1)):
            upper = lean + side * rng.uniform(np.radians(-10), np.radians(150))
            lower = upper + rng.choice((-1, 1)) * rng.uniform(0, np.radians(110))
            points[elbow] = points[shoulder] + _UPPER_ARM * _unit(upper)
            points[wrist] = points[elbow] + _FOREARM * _unit(lower)
        for hip, knee, ankle, side in ((8, 9, 10, -1), (11, 12, 13, 1)):
            thigh = lean + side * rng.uniform(np.radians(-5), np.radians(30))
            shin = thigh + side * rng.uniform(np.radians(-25), np.radians(15))
            points[knee] = points[hip] + _THIGH * _unit(thigh)
            points[ankle] = points[knee] + _SHIN * _unit(shin)
        tilt = lean + rng.normal(0, np.radians(8))
        up, head_across = -_unit(tilt), np.array([np.cos(tilt), -np.sin(tilt)])
        points[0] = _NECK_TO_NOSE * up
        for joint, (a, u) in {14: (-0.07, 0.06), 15: (0.07, 0.06), 16: (-0.15, 0.03), 17: (0.15, 0.03)}.items():
            points[joint] = points[0] + a * head_across + u * up
        return points

    def place(self, body: np.ndarray, height: int, width: int, rng=None) -> tuple[np.ndarray, float]:
        """Scales and moves a body-unit skeleton into a `height` x `width` image.

        Returns:
            `tuple[np.ndarray, float]`: (18, 2) keypoints in pixels and the pixels per body unit.
        """
        margin = _HEAD_RADIUS + 0.12  # hair above the nose, shoes below the ankles, limb widths
        low = body.min(axis=0) - margin
        high = body.max(axis=0) + margin
        high[1] += 0.05
        extent = high - low
        # The same person has the same size in every pose, unless a wide pose would not fit.
        scale = 0.95 * height / _STANDING_HEIGHT * (1.0 if rng is None else rng.uniform(0.9, 1.0))
        scale = min(scale, 0.98 * width / extent[0], 0.98 * height / extent[1])
        slack = np.array([width, height]) - extent * scale
        offset = slack * (0.5 if rng is None else rng.uniform(0.2, 0.8, size=2))
        return (body - low) * scale + offset, scale

    def render(self, appearance: Appearance, keypoints: np.ndarray, scale: float, height: int, width: int):
        """Draws a person in the pose `keypoints` (pixels; `scale` pixels per body unit).

        Returns:
            `tuple[PIL.Image.Image, np.ndarray]`: the RGB image and the bool (height, width) person mask.
        """
        _check_resolution(height, width)
        painter = _Painter(height * _SUPERSAMPLE, width * _SUPERSAMPLE, scale * _SUPERSAMPLE)
        p = keypoints * _SUPERSAMPLE + (_SUPERSAMPLE - 1) / 2  # pixel centres of the larger canvas
        a = appearance
        up = _unit_vector(p[0] - p[1])
        head_center = p[0] + 0.04 * painter.unit * up
        if a.long_hair:
            painter.capsule(head_center, (p[2] + p[5]) / 2 + 0.15 * (p[1] - p[0]), 0.24, _Solid(a.hair, 0.6))
        skin = _Solid(a.skin)
        # Legs: trousers over the thigh (and shin unless shorts), skin below, shoes at the ankles.
        for hip, knee, ankle in ((8, 9, 10), (11, 12, 13)):
            painter.capsule(p[knee], p[ankle], _LEG_RADIUS * 0.85, skin if a.shorts else _Solid(a.trousers))
            painter.capsule(p[hip], p[knee], _LEG_RADIUS, _Solid(a.trousers))
            foot = p[ankle] + 0.06 * painter.unit * np.array([0, 1])
            painter.ellipse(foot, 0.13, 0.07, _Solid(a.shoes, 0.3))
        shirt = _pattern(a)
        torso = [p[2], p[5], p[11], p[8]]
        painter.polygon(_grow(torso, 0.06 * painter.unit), shirt, origin=p[1], axis=(p[8] + p[11]) / 2 - p[1])
        painter.capsule(p[1], p[0], 0.08, skin)  # neck
        for shoulder, elbow, wrist in ((2, 3, 4), (5, 6, 7)):
            painter.capsule(p[elbow], p[wrist], _ARM_RADIUS * 0.85, shirt if a.long_sleeves else skin)
            painter.capsule(p[shoulder], p[elbow], _ARM_RADIUS, shirt)
            hand = p[wrist] + 0.12 * (p[wrist] - p[elbow]) / max(np.linalg.norm(p[wrist] - p[elbow]), 1e-6) * painter.unit
            painter.ellipse(hand, 0.08, 0.08, skin)
        for ear in (16, 17):
            painter.ellipse(p[ear], 0.05, 0.07, skin)
        painter.ellipse(head_center, _HEAD_RADIUS * 0.8, _HEAD_RADIUS, skin)
        painter.ellipse(head_center + 0.14 * painter.unit * up, 0.17, 0.1, _Solid(a.hair, 0.5))
        for eye in (14, 15):
            painter.ellipse(p[eye], 0.03, 0.02, _Solid((30, 30, 30)), in_mask=False)
        mouth = p[0] - 0.08 * painter.unit * up
        painter.ellipse(mouth, 0.05, 0.015, _Solid((150, 60, 60)), in_mask=False)
        return painter.finish((width, height))

    def sample(self, index: int, view: int, height: int, width: int) -> dict:
        """Person `index` in pose `view`: `{"image", "keypoints", "mask"}`."""
        _check_resolution(height, width)
        keypoints, scale = self.place(self.body_pose(index, view), height, width, rng=self._rng(index, 1000 + view))
        image, mask = self.render(self.appearance(index), keypoints, scale, height, width)
        return {"image": image, "keypoints": keypoints.astype(np.float32), "mask": mask}

    def pair(self, index: int, height: int = 256, width: int = 176) -> dict:
        """Person `index` in two different poses.

        Args:
            index (`int`): person index.
            height (`int`, *optional*, defaults to 256), width (`int`, *optional*, defaults to 176): image size,
                at most 1024 each.

        Returns:
            `dict`: `reference_image`, `target_image` (RGB `PIL.Image.Image`), `reference_keypoints`,
            `target_keypoints` (float32 (18, 2) pixels), `reference_mask`, `target_mask` (bool (H, W)).
        """
        reference, target = self.sample(index, 0, height, width), self.sample(index, 1, height, width)
        return {
            "reference_image": reference["image"],
            "target_image": target["image"],
            "reference_keypoints": reference["keypoints"],
            "target_keypoints": target["keypoints"],
            "reference_mask": reference["mask"],
            "target_mask": target["mask"],
        }


def synthetic_pair_dataset(num_pairs: int, height: int = 256, width: int = 176, seed: int = 0, start: int = 0):
    """A `datasets.Dataset` of synthetic pairs, in the column layout of `hf_ext.pose.data`.

    Args:
        num_pairs (`int`): number of pairs (people `start` .. `start + num_pairs - 1`).
        height (`int`, *optional*, defaults to 256), width (`int`, *optional*, defaults to 176): image size.
        seed (`int`, *optional*, defaults to 0): `SyntheticPeople` seed; use another seed for held-out people and poses.
        start (`int`, *optional*, defaults to 0): index of the first person.

    Returns:
        `datasets.Dataset`: columns `reference_image`, `target_image`, `target_mask` (images),
        `reference_keypoints`, `target_keypoints` (float32 (18, 2), NaN = missing), `person_id`.
    """
    import datasets
    from tqdm.auto import tqdm

    from .data import pair_features

    if not isinstance(num_pairs, int) or num_pairs < 1:
        raise ValueError(f"num_pairs must be a positive integer, got {num_pairs!r}")
    _check_resolution(height, width)
    people = SyntheticPeople(seed)
    rows = {name: [] for name in ("reference_image", "target_image", "target_mask", "reference_keypoints", "target_keypoints", "person_id")}
    for index in tqdm(range(start, start + num_pairs), desc="synthetic pairs", disable=num_pairs < 200):
        pair = people.pair(index, height, width)
        for name in ("reference_image", "target_image", "reference_keypoints", "target_keypoints"):
            rows[name].append(pair[name])
        rows["target_mask"].append(Image.fromarray(pair["target_mask"].astype(np.uint8) * 255))
        rows["person_id"].append(index)
    features = pair_features(with_mask=True)
    features["person_id"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(rows, features=features)


def _check_resolution(height, width):
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 8 <= value <= MAX_RESOLUTION:
            raise ValueError(f"{name} must be an integer between 8 and {MAX_RESOLUTION}, got {value!r}")


def _unit_vector(v):
    return v / max(np.linalg.norm(v), 1e-6)


def _grow(polygon, amount):
    """Pushes each vertex of a convex polygon `amount` pixels away from its centroid."""
    center = np.mean(polygon, axis=0)
    return [v + amount * _unit_vector(v - center) for v in polygon]


def _pattern(a: Appearance):
    if a.pattern == "solid":
        return _Solid(a.shirt)
    return _Pattern(a.shirt, a.shirt_second, a.pattern_period, checks=a.pattern == "checks")


class _Solid:
    """A flat colour, shaded towards the edges of a limb (`shading` = darkening at the rim)."""

    def __init__(self, color, shading=0.25):
        self.color, self.shading = np.array(color, np.float32), shading

    def __call__(self, u, v, rim):
        return self.color[None, :] * (1 - self.shading * rim[:, None] ** 2)


class _Pattern(_Solid):
    """Stripes across the body axis (or checks) with a period in body units."""

    def __init__(self, first, second, period, checks):
        super().__init__(first)
        self.second, self.period, self.checks = np.array(second, np.float32), period, checks

    def __call__(self, u, v, rim):
        band = np.floor(v / self.period)
        if self.checks:
            band = band + np.floor(u / self.period)
        color = np.where((band % 2 == 0)[:, None], self.color[None, :], self.second[None, :])
        return color * (1 - self.shading * rim[:, None] ** 2)


class _Painter:
    """Paints layers (masks from PIL, colours from a texture in the layer's body coordinates)."""

    def __init__(self, height, width, unit):
        self.unit = unit  # pixels per body unit
        self.canvas = np.empty((height, width, 3), np.float32)
        self.canvas[:] = BACKGROUND_COLOR
        self.mask = np.zeros((height, width), bool)
        self.size = (width, height)

    def _paint(self, draw_fn, texture, origin, axis, rim_fn, in_mask=True):
        layer = Image.new("L", self.size, 0)
        draw_fn(ImageDraw.Draw(layer))
        ys, xs = np.nonzero(np.asarray(layer))
        if ys.size == 0:
            return
        pixels = np.stack([xs, ys], axis=1).astype(np.float32)
        along = _unit_vector(np.asarray(axis, np.float64))
        across = np.array([along[1], -along[0]])
        rel = pixels - origin
        # (u, v): body-unit coordinates across and along the layer's axis.
        u, v = rel @ across / self.unit, rel @ along / self.unit
        self.canvas[ys, xs] = texture(u, v, np.clip(rim_fn(u, v), 0, 1))
        if in_mask:
            self.mask[ys, xs] = True

    def capsule(self, start, end, radius, texture):
        r = radius * self.unit
        start, end = np.asarray(start), np.asarray(end)

        def draw(d):
            d.line([tuple(start), tuple(end)], fill=255, width=max(1, round(2 * r)))
            for c in (start, end):
                d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=255)

        axis = end - start if np.linalg.norm(end - start) > 1e-6 else np.array([0.0, 1.0])
        self._paint(draw, texture, start, axis, lambda u, v: np.abs(u) / radius)

    def ellipse(self, center, radius_x, radius_y, texture, in_mask=True):
        rx, ry = radius_x * self.unit, radius_y * self.unit
        center = np.asarray(center)
        self._paint(
            lambda d: d.ellipse([center[0] - rx, center[1] - ry, center[0] + rx, center[1] + ry], fill=255),
            texture, center, (0.0, 1.0), lambda u, v: np.sqrt((u / radius_x) ** 2 + (v / radius_y) ** 2), in_mask,
        )

    def polygon(self, vertices, texture, origin, axis):
        half_width = max(np.linalg.norm(vertices[1] - vertices[0]), 1e-6) / self.unit / 2
        self._paint(
            lambda d: d.polygon([tuple(v) for v in vertices], fill=255),
            texture, np.asarray(origin), axis, lambda u, v: np.abs(u) / (1.4 * half_width),
        )

    def finish(self, size):
        image = Image.fromarray(np.clip(self.canvas, 0, 255).astype(np.uint8)).resize(size, Image.BOX)
        coverage = np.asarray(Image.fromarray(self.mask.astype(np.uint8) * 255).resize(size, Image.BOX))
        return image, coverage >= 128
